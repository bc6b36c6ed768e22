//! Checkpoint retention: a task's log keeps its last `minBatchesToRetain` batches (Spark's
//! `spark.sql.streaming.minBatchesToRetain`, default 100); older ones are folded and deleted.
//!
//! Without it the offsets, commits, state and model files of a long-running query accumulate for
//! ever, and every restart reads all offsets entries (the file source rebuilds its set of read
//! files from them). Every `minBatchesToRetain` batches, once twice that many are on record, the
//! oldest are folded into one compacted entry, `tasks/<task>/compacted/<batchId>`, which stands for
//! all of them when the task reopens its sources: each source merges its ranges
//! ([`SourceTask::merge`](crate::source::SourceTask::merge): the file source lists every file read, Kafka keeps the last offset of
//! every partition), as Spark's `CompactibleFileStreamLog` folds the file source's log. Then the
//! folded batches' offsets, commits and models, older compacted entries and the state files no
//! restore can need ([`crate::state::prunable_state_files`]) are deleted.
//!
//! Crash safety: the compacted entry is written before anything is deleted, and the log reader
//! ignores offsets entries at or below it, so a crash between the steps leaves a log that reads
//! the same; leftovers are deleted by the next compaction. Only committed batches are folded.
//!
//! Fencing (`PutMode::Create` on offsets and commits) covers the retained batches: a stale writer
//! more than `minBatchesToRetain` batches behind would no longer find its batch ids taken.

use std::collections::VecDeque;

use crate::checkpoint::{Checkpoint, OffsetsEntry, TaskLog};
use crate::error::Result;
use crate::source::Range;
use crate::state::prunable_state_files;

/// Batches kept in a task's log when the manifest does not say (Spark's default).
pub use sluice_crds::DEFAULT_MIN_BATCHES_TO_RETAIN;

/// Folds and prunes one task's log as its batches commit.
pub struct LogRetention {
    task: u32,
    min_batches: u64,
    /// The newest compacted entry written or read.
    compacted: Option<OffsetsEntry>,
    /// Committed entries after `compacted`, oldest first.
    recent: VecDeque<OffsetsEntry>,
    /// Cleared when a source cannot merge its ranges: its log is then kept whole.
    enabled: bool,
}

impl LogRetention {
    /// Retention for `task`, continuing from the log read at start-up.
    pub fn new(task: u32, min_batches: u64, log: &TaskLog) -> Self {
        let committed = log.last_committed;
        Self {
            task,
            min_batches: min_batches.max(1),
            compacted: log.compacted.clone(),
            recent: log
                .offsets
                .iter()
                .filter(|entry| committed.is_some_and(|c| entry.batch_id <= c))
                .cloned()
                .collect(),
            enabled: true,
        }
    }

    /// Records that `entry`'s batch is committed; returns the compaction due when
    /// `2 × minBatchesToRetain` batches are on record. `merge(source, earlier, later)` is the
    /// source's [`SourceTask::merge`](crate::source::SourceTask::merge). (Separate from
    /// [`Self::compact`] so that the sources are not borrowed across the writes.)
    pub fn record(
        &mut self,
        entry: &OffsetsEntry,
        merge: impl Fn(&str, &Range, &Range) -> Option<Range>,
    ) -> Option<Compaction> {
        if !self.enabled {
            return None;
        }
        self.recent.push_back(entry.clone());
        if (self.recent.len() as u64) < 2 * self.min_batches {
            return None;
        }
        let folded = self.recent.len() - self.min_batches as usize;
        match fold_entries(
            self.compacted.as_ref(),
            self.recent.iter().take(folded),
            merge,
        ) {
            Some(entry) => Some(Compaction { entry, folded }),
            None => {
                tracing::warn!(
                    task = self.task,
                    "a source cannot merge its ranges: this task's checkpoint log is kept whole"
                );
                self.enabled = false;
                self.recent.clear();
                None
            }
        }
    }

    /// Writes the compacted entry, then deletes what it covers. Never fails the batch: a failed
    /// write is logged and tried again after the next commit, failed deletes at the next
    /// compaction.
    pub async fn compact(&mut self, checkpoint: &Checkpoint, due: Compaction) {
        if let Err(e) = checkpoint.write_compacted(self.task, &due.entry).await {
            tracing::warn!(task = self.task, error = %e, "checkpoint compaction failed; retried after the next batch");
            return;
        }
        let through = due.entry.batch_id;
        // The batch id of a retention crash point is the last batch the compacted entry folds.
        crate::fault::crash_point(crate::fault::CrashPoint::MidRetention, through);
        self.recent.drain(..due.folded);
        self.compacted = Some(due.entry);
        if let Err(e) = prune(checkpoint, self.task, through).await {
            tracing::warn!(task = self.task, error = %e, "deleting compacted checkpoint entries failed; retried at the next compaction");
        }
    }
}

/// A compaction due: the folded entry and how many recorded batches it covers.
pub struct Compaction {
    entry: OffsetsEntry,
    folded: usize,
}

impl Compaction {
    /// The last batch id the compaction folds.
    pub fn through(&self) -> u64 {
        self.entry.batch_id
    }
}

/// One entry standing for `compacted` (if any) and then `entries` (committed, in batch order):
/// per source, the fold of its ranges with `merge`; the batch id and time of the last entry.
/// `None` when there is nothing to fold or `merge` refuses a pair.
pub fn fold_entries<'a>(
    compacted: Option<&OffsetsEntry>,
    entries: impl Iterator<Item = &'a OffsetsEntry>,
    merge: impl Fn(&str, &Range, &Range) -> Option<Range>,
) -> Option<OffsetsEntry> {
    let mut folded = compacted.cloned();
    for entry in entries {
        let Some(into) = folded.as_mut() else {
            folded = Some(entry.clone());
            continue;
        };
        for (source, range) in &entry.sources {
            let merged = match into.sources.get(source) {
                Some(earlier) => merge(source, earlier, range)?,
                None => range.clone(),
            };
            into.sources.insert(source.clone(), merged);
        }
        into.batch_id = entry.batch_id;
        into.planned_ms = entry.planned_ms;
        // The newest writer epoch of the folded batches: it keeps fencing older writers after
        // their entries are deleted.
        into.epoch = entry.epoch.clone().max(into.epoch.take());
    }
    folded
}

/// Deletes what the compacted entry of batch `through` made unnecessary.
async fn prune(checkpoint: &Checkpoint, task: u32, through: u64) -> Result<()> {
    for dir in ["offsets", "commits", "sinks", "attempts", "models"] {
        delete_ids(checkpoint, task, dir, |id| id <= through).await?;
    }
    delete_ids(checkpoint, task, "compacted", |id| id < through).await?;
    let state_dir = format!("tasks/{task}/state");
    let names = checkpoint.list_names(&state_dir).await?;
    for name in prunable_state_files(&names, through) {
        checkpoint.delete(&format!("{state_dir}/{name}")).await?;
    }
    Ok(())
}

/// Deletes the entries of `tasks/<task>/<dir>` whose batch id satisfies `doomed`.
async fn delete_ids(
    checkpoint: &Checkpoint,
    task: u32,
    dir: &str,
    doomed: impl Fn(u64) -> bool,
) -> Result<()> {
    let relative = format!("tasks/{task}/{dir}");
    for name in checkpoint.list_names(&relative).await? {
        if name.parse::<u64>().is_ok_and(&doomed) {
            checkpoint.delete(&format!("{relative}/{name}")).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::source::kafka::merge_ranges;

    fn entry(batch_id: u64, sources: &[(&str, Range)]) -> OffsetsEntry {
        OffsetsEntry {
            batch_id,
            planned_ms: batch_id as i64 * 1000,
            sources: sources
                .iter()
                .map(|(name, range)| (name.to_string(), range.clone()))
                .collect::<BTreeMap<_, _>>(),
            epoch: None,
        }
    }

    fn kafka(partitions: &[(&str, i64, i64)]) -> Range {
        let partitions: serde_json::Map<String, serde_json::Value> = partitions
            .iter()
            .map(|(p, from, until)| (p.to_string(), json!([from, until])))
            .collect();
        json!({ "partitions": partitions })
    }

    #[test]
    fn folding_keeps_every_partitions_last_offset_and_the_last_batch_id() {
        let compacted = entry(1, &[("events", kafka(&[("t:0", 0, 10), ("t:1", 0, 5)]))]);
        // Partition 1 had no records after the compacted batches: its offset must survive.
        let later = [
            entry(2, &[("events", kafka(&[("t:0", 10, 20)]))]),
            entry(3, &[]),
            entry(4, &[("events", kafka(&[("t:0", 20, 25), ("t:2", 0, 3)]))]),
        ];
        let folded = fold_entries(Some(&compacted), later.iter(), |_, a, b| merge_ranges(a, b))
            .expect("folded");
        assert_eq!(folded.batch_id, 4);
        assert_eq!(folded.planned_ms, 4000);
        assert_eq!(
            folded.sources["events"],
            kafka(&[("t:0", 0, 25), ("t:1", 0, 5), ("t:2", 0, 3)])
        );
    }

    #[test]
    fn folding_starts_from_the_first_entry_and_stops_when_a_source_cannot_merge() {
        let entries = [entry(0, &[("a", json!(1))]), entry(1, &[("b", json!(2))])];
        let folded = fold_entries(None, entries.iter(), |_, _, _| None).expect("nothing to merge");
        assert_eq!(folded.batch_id, 1);
        assert_eq!(
            folded.sources.len(),
            2,
            "a source new in a later batch is added"
        );
        let again = [entry(2, &[("a", json!(3))])];
        assert!(fold_entries(Some(&folded), again.iter(), |_, _, _| None).is_none());
        assert!(fold_entries(None, [].iter(), |_, _, _| None).is_none());
    }
}
