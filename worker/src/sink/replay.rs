//! Whether a sink can take the replay a checkpoint restore causes.
//!
//! Restoring a query to batch N ([`crate::checkpoint::restore`]) starts a new checkpoint
//! generation with a new query id whose batches N+1, N+2, … read the input after N's end offsets
//! again and write their output again. That output was already written once by the old
//! generation, so a sink may take the replay only when writing it again leaves the same result:
//!
//! - **PostgreSQL `upsert`**: the replayed rows overwrite the same keys. The commit table
//!   (`sluice_commits`) is keyed by the query id, which the new generation does not share, so the
//!   replayed batches are really written rather than skipped as already done.
//! - **File sink**: the restore retracts the old generation's commit-log entries of the batches
//!   after N (`.json.retracted`) and deletes their files; the replay writes and logs its own.
//! - **Memory** (tests): output is keyed by (task, batch id); a replay replaces it.
//! - **Console**: allowed with a warning: the replayed batches are printed again.
//! - **PostgreSQL `insert` / `accumulate`** and **Kafka**: appended rows, added-up counters and
//!   produced records cannot be taken back; refused unless no batch after N wrote a row.
//!
//! - **Delta** with `mode: merge` or `mode: overwrite` set: the replay MERGEs the same keys again
//!   or replaces the table with the same result. Otherwise (appending, or the mode left to the
//!   output mode, which the sink spec alone does not tell) refused unless no batch after N wrote
//!   a row: the new generation's `txn` app ids are new, so appended batches would be appended
//!   again.

use sluice_crds::{DeltaWriteMode, PostgresWriteMode, SinkSpec};

/// What a restore may do with a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// The replay leaves the sink's content as an uninterrupted run would.
    Allowed,
    /// Allowed, but the user sees output twice (the message says how).
    AllowedWithWarning(String),
    /// The replay would duplicate output; the message is the reason.
    Refused(String),
}

/// Whether `sink` can take a replay of the batches after the restored one, which wrote
/// `rows_after` rows in the generation being left (0: nothing to take back, any sink qualifies).
pub fn replay_verdict(sink: &SinkSpec, rows_after: u64) -> ReplayVerdict {
    const WHICH: &str = "restore works with sinks that rewrite a replayed batch in place: \
                         PostgreSQL in upsert mode, the file sink, memory; console with a warning";
    if let Some(postgres) = &sink.postgres {
        return match postgres.mode {
            PostgresWriteMode::Upsert => ReplayVerdict::Allowed,
            _ if rows_after == 0 => ReplayVerdict::Allowed,
            PostgresWriteMode::Insert => ReplayVerdict::Refused(format!(
                "the PostgreSQL sink (mode insert) already holds the {rows_after} rows the later \
                 batches wrote; replaying them would insert them again ({WHICH})"
            )),
            PostgresWriteMode::Accumulate => ReplayVerdict::Refused(format!(
                "the PostgreSQL sink (mode accumulate) already added the {rows_after} rows the \
                 later batches wrote; replaying them would add them again ({WHICH})"
            )),
        };
    }
    if sink.kafka.is_some() {
        if rows_after == 0 {
            return ReplayVerdict::Allowed;
        }
        return ReplayVerdict::Refused(format!(
            "the Kafka sink already produced the {rows_after} records of the later batches; \
             records cannot be taken back and consumers would read them twice ({WHICH})"
        ));
    }
    if let Some(delta) = &sink.delta {
        return match delta.mode {
            Some(DeltaWriteMode::Merge | DeltaWriteMode::Overwrite) => ReplayVerdict::Allowed,
            _ if rows_after == 0 => ReplayVerdict::Allowed,
            _ => ReplayVerdict::Refused(format!(
                "the Delta sink already appended the {rows_after} rows of the later batches; the \
                 restored generation's txn app ids are new, so the replay would append them again \
                 (Delta takes a replay with mode merge or overwrite set)"
            )),
        };
    }
    if sink.console.is_some() && rows_after > 0 {
        return ReplayVerdict::AllowedWithWarning(format!(
            "the console sink prints the {rows_after} rows of the replayed batches again"
        ));
    }
    ReplayVerdict::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(yaml: &str) -> SinkSpec {
        serde_saphyr::from_str(yaml).expect("sink")
    }

    fn postgres(mode: &str) -> SinkSpec {
        sink(&format!(
            "postgres: {{connection: {{host: h, database: d, user: u}}, table: t, mode: {mode}, keyColumns: [k]}}"
        ))
    }

    #[test]
    fn sinks_that_rewrite_in_place_allow_a_replay_and_appending_ones_refuse() {
        assert_eq!(
            replay_verdict(&postgres("upsert"), 10),
            ReplayVerdict::Allowed
        );
        let insert = replay_verdict(&postgres("insert"), 10);
        assert!(
            matches!(&insert, ReplayVerdict::Refused(m) if m.contains("mode insert") && m.contains("10 rows")),
            "{insert:?}"
        );
        let accumulate = replay_verdict(&postgres("accumulate"), 3);
        assert!(
            matches!(&accumulate, ReplayVerdict::Refused(m) if m.contains("mode accumulate")),
            "{accumulate:?}"
        );
        let kafka = replay_verdict(&sink("kafka: {bootstrapServers: 'b:9092', topic: t}"), 5);
        assert!(
            matches!(&kafka, ReplayVerdict::Refused(m) if m.contains("Kafka")),
            "{kafka:?}"
        );
        assert_eq!(
            replay_verdict(&sink("file: {path: /tmp/out, format: parquet}"), 5),
            ReplayVerdict::Allowed
        );
        assert!(matches!(
            replay_verdict(&sink("console: {}"), 5),
            ReplayVerdict::AllowedWithWarning(_)
        ));
        // Nothing written after the batch: nothing to duplicate.
        assert_eq!(
            replay_verdict(&postgres("insert"), 0),
            ReplayVerdict::Allowed
        );
        assert_eq!(
            replay_verdict(&sink("kafka: {bootstrapServers: 'b:9092', topic: t}"), 0),
            ReplayVerdict::Allowed
        );
    }
}
