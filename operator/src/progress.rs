//! The workers' `GET /progress` answers, summed into what `status` shows (shared by backends).
//!
//! A worker answers a [`sluice_crds::contract::ProgressAnswer`] (`latest`, `recent`,
//! `lastError`), read here as [`Answer`]: the batch fields the operator uses
//! ([`BatchProgress`], Spark's JSON field names). Over the replicas of a query: input and processed rows/s and backlog are sums (each
//! replica reads its own tasks), the last batch id and time are the highest, the watermark is the
//! lowest (the query's event time advances with its slowest replica).

use k8s_openapi::jiff::Timestamp;
use sluice_crds::contract::{BatchProgress, ProgressAnswer};

use crate::plan::ProgressObservation;

/// A worker's `GET /progress` answer as the operator reads it.
pub type Answer = ProgressAnswer<BatchProgress>;

/// Sum of the workers' latest progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerProgress {
    /// Rates (rows/s), backlog (rows; files for file sources), last batch id, watermark.
    pub observation: ProgressObservation,
    /// Commit time of the latest batch over all replicas, RFC 3339.
    pub last_batch_time: Option<String>,
    /// Replicas that answered.
    pub answered: usize,
    /// Earliest commit among the answers' `recent` entries (ms): the first commit of a freshly
    /// started generation, for the rescale downtime.
    pub first_commit_ms: Option<i64>,
}

/// Earliest commit (ms) among the `recent` entries of the answers.
pub fn first_commit_ms(answers: &[Answer]) -> Option<i64> {
    answers
        .iter()
        .filter_map(|a| a.recent.first().and_then(commit_ms))
        .min()
}

/// Wall-clock ms of a progress entry's commit: trigger `timestamp` + `durationMs.triggerExecution`.
pub fn commit_ms(progress: &BatchProgress) -> Option<i64> {
    let start: Timestamp = progress.timestamp.as_deref()?.parse().ok()?;
    Some(start.as_millisecond() + progress.duration_ms.trigger_execution as i64)
}

/// Sums the `/progress` answers of a query's replicas (one JSON document each). `None` when no
/// replica has committed a batch yet (the status keeps its previous figures).
pub fn summarize(answers: &[Answer]) -> Option<WorkerProgress> {
    let mut input = 0.0;
    let mut processed = 0.0;
    let mut lag = 0i64;
    let mut batch: Option<i64> = None;
    let mut last_commit: Option<i64> = None;
    let mut watermark: Option<String> = None;
    let mut with_batches = 0;
    for answer in answers {
        let Some(latest) = &answer.latest else {
            continue;
        };
        with_batches += 1;
        input += latest.input_rows_per_second;
        processed += latest.processed_rows_per_second;
        lag += latest.sources.iter().map(|s| s.backlog as i64).sum::<i64>();
        if let Some(id) = latest.batch_id {
            batch = Some(batch.map_or(id, |b| b.max(id)));
        }
        if let Some(at) = commit_ms(latest) {
            last_commit = Some(last_commit.map_or(at, |b| b.max(at)));
        }
        if let Some(mark) = latest
            .event_time
            .watermark
            .as_deref()
            .and_then(|w| w.parse::<Timestamp>().ok())
        {
            let lower = watermark
                .as_deref()
                .and_then(|w| w.parse::<Timestamp>().ok())
                .is_none_or(|current| mark < current);
            if lower {
                watermark = Some(mark.to_string());
            }
        }
    }
    if with_batches == 0 {
        return None;
    }
    let last_batch_time = last_commit
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string());
    Some(WorkerProgress {
        observation: ProgressObservation {
            input_rows_per_second: Some(input),
            processed_rows_per_second: Some(processed),
            last_committed_batch_id: batch,
            lag: Some(lag),
            watermark,
            last_batch_time: last_batch_time.clone(),
            rescale_downtime_seconds: None,
        },
        last_batch_time,
        answered: answers.len(),
        first_commit_ms: first_commit_ms(answers),
    })
}

/// Rows per backlog unit, the one place backlog becomes rows (both metrics paths use it): 1 for
/// sources that count rows; a file source counts unread *files* and, under backlog, each batch of
/// a task reads `maxFilesPerTrigger` (`files_per_batch`) files, so rows per file = rows /
/// (batches · files). `rows` and `batches` are over the same period; `learned` keeps the last
/// figure for periods in which nothing ran.
pub fn rows_per_backlog_unit(
    files_per_batch: Option<u32>,
    rows: f64,
    batches: f64,
    learned: &mut f64,
) -> f64 {
    let Some(files) = files_per_batch else {
        return 1.0;
    };
    if batches > 0.0 && rows > 0.0 {
        *learned = rows / (batches * f64::from(files));
    }
    *learned
}

/// The autoscaler's inputs from the workers' own progress, for an operator without Prometheus
/// (both backends; Flink's autoscaler likewise reads the job's metrics from the job). `recent` has
/// each replica's recent entries; the batches committed in the `window` before `now_ms` count:
/// processed rows/s = their input rows / window (s), also taken as λ (growth of the backlog is not
/// seen here: the decision then rests on the backlog and the busy ratio); busy ratio =
/// their `triggerExecution` time / window / `replicas`; backlog = the sum of each replica's latest
/// source backlogs. A file source counts its backlog in files: with `files_per_batch` (its
/// `maxFilesPerTrigger`) the files become rows at the observed rows per file, kept in
/// `rows_per_unit` between calls (the last figure while nothing ran).
pub fn autoscaler_metrics(
    recent: &[Vec<BatchProgress>],
    now_ms: i64,
    window: std::time::Duration,
    replicas: u32,
    files_per_batch: Option<u32>,
    rows_per_unit: &mut f64,
) -> crate::autoscaler::Metrics {
    let since = now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let mut rows = 0.0;
    let mut busy_ms = 0.0;
    let mut batches = 0.0;
    let mut backlog = 0.0;
    for entries in recent {
        for entry in entries {
            if commit_ms(entry).is_some_and(|c| c >= since) {
                rows += entry.num_input_rows;
                busy_ms += entry.duration_ms.trigger_execution;
                batches += if entry.tasks.is_empty() {
                    1.0
                } else {
                    entry.tasks.len() as f64
                };
            }
        }
        if let Some(last) = entries.last() {
            backlog += last.sources.iter().map(|s| s.backlog).sum::<f64>();
        }
    }
    let seconds = window.as_secs_f64().max(1.0);
    let unit = rows_per_backlog_unit(files_per_batch, rows, batches, rows_per_unit);
    crate::autoscaler::Metrics {
        input_rate: Some(rows / seconds),
        processed_rate: Some(rows / seconds),
        busy_ratio: Some(busy_ms / 1000.0 / seconds / f64::from(replicas.max(1))),
        backlog: Some(backlog * unit),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A recent entry committed at `commit_ms`: one task, `rows` rows, `busy_ms` of trigger time.
    fn entry(commit_ms: i64, rows: u64, busy_ms: i64, backlog: u64) -> BatchProgress {
        let start = Timestamp::from_millisecond(commit_ms - busy_ms).expect("time");
        parse(json!({
            "timestamp": start.to_string(),
            "numInputRows": rows,
            "durationMs": {"triggerExecution": busy_ms},
            "tasks": [{"task": 0}],
            "sources": [{"backlog": backlog}],
        }))
    }

    /// Reads JSON as the worker sends it.
    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("the contract's shape")
    }

    #[test]
    fn autoscaler_metrics_count_the_window_and_turn_file_backlog_into_rows() {
        let now = 1_800_000_000_000;
        let recent = vec![
            vec![
                entry(now - 20_000, 9_999, 900, 99), // before the 10 s window
                entry(now - 5_000, 1_000, 500, 4),
                entry(now - 1_000, 1_000, 500, 3),
            ],
            vec![entry(now - 2_000, 2_000, 1_000, 5)],
        ];
        let mut unit = 1.0;
        let window = std::time::Duration::from_secs(10);
        let rows = autoscaler_metrics(&recent, now, window, 2, None, &mut unit);
        assert_eq!(
            rows,
            crate::autoscaler::Metrics {
                input_rate: Some(400.0),
                processed_rate: Some(400.0),
                busy_ratio: Some(0.1),
                backlog: Some(8.0),
            }
        );
        // A file source: 3 batches of 2 files read 4,000 rows, so a file is ~667 rows.
        let files = autoscaler_metrics(&recent, now, window, 2, Some(2), &mut unit);
        assert!((unit - 4_000.0 / 6.0).abs() < 1e-9, "{unit}");
        assert_eq!(files.backlog, Some(8.0 * (4_000.0 / 6.0)));
        // Nothing in the window: the rows per file stay as learned.
        let idle = autoscaler_metrics(&recent, now + 60_000, window, 2, Some(2), &mut unit);
        assert_eq!(idle.processed_rate, Some(0.0));
        assert_eq!(idle.backlog, Some(8.0 * (4_000.0 / 6.0)));
    }

    fn answer(
        batch: i64,
        input: f64,
        processed: f64,
        backlog: i64,
        at: &str,
        mark: &str,
    ) -> Answer {
        parse(json!({
            "latest": {
                "timestamp": at,
                "batchId": batch,
                "inputRowsPerSecond": input,
                "processedRowsPerSecond": processed,
                "durationMs": {"triggerExecution": 250},
                "eventTime": {"watermark": mark},
                "sources": [{"description": "a", "backlog": backlog}, {"description": "b", "backlog": 1}],
            },
            "recent": [],
            "lastError": null,
        }))
    }

    #[test]
    fn replicas_are_summed_batch_and_time_are_highest_watermark_lowest() {
        let answers = [
            answer(
                7,
                100.0,
                150.0,
                40,
                "2026-11-21T10:00:00Z",
                "2026-11-21T09:59:00Z",
            ),
            answer(
                9,
                50.5,
                60.0,
                2,
                "2026-11-21T10:00:01Z",
                "2026-11-21T09:58:30Z",
            ),
            parse(json!({"latest": null, "recent": []})),
        ];
        let summary = summarize(&answers).expect("batches committed");
        assert_eq!(
            summary.observation,
            ProgressObservation {
                input_rows_per_second: Some(150.5),
                processed_rows_per_second: Some(210.0),
                last_committed_batch_id: Some(9),
                lag: Some(44),
                watermark: Some("2026-11-21T09:58:30Z".into()),
                last_batch_time: Some("2026-11-21T10:00:01.25Z".into()),
                rescale_downtime_seconds: None,
            }
        );
        assert_eq!(
            summary.last_batch_time.as_deref(),
            Some("2026-11-21T10:00:01.25Z")
        );
        assert_eq!(summary.answered, 3);
    }

    #[test]
    fn nothing_committed_is_no_summary() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[parse(json!({"latest": null}))]), None);
    }
}
