//! The workers' `GET /progress` answers, summed into what `status` shows (shared by backends).
//!
//! A worker answers `{"latest": StreamingQueryProgress | null, "recent": [...], "lastError": ...}`
//! (worker/src/http.rs; `StreamingQueryProgress` in worker/src/progress.rs, Spark's JSON field
//! names). Over the replicas of a query: input and processed rows/s and backlog are sums (each
//! replica reads its own tasks), the last batch id and time are the highest, the watermark is the
//! lowest (the query's event time advances with its slowest replica).

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::plan::ProgressObservation;

/// Sum of the workers' latest progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerProgress {
    /// Rates (rows/s), backlog (rows; files for file sources), last batch id, watermark.
    pub observation: ProgressObservation,
    /// Commit time of the latest batch over all replicas, RFC 3339.
    pub last_batch_time: Option<String>,
    /// Replicas that answered.
    pub answered: usize,
}

/// Wall-clock ms of a progress entry's commit: trigger `timestamp` + `durationMs.triggerExecution`.
pub fn commit_ms(progress: &Value) -> Option<i64> {
    let start: Timestamp = progress.get("timestamp")?.as_str()?.parse().ok()?;
    let took = progress
        .pointer("/durationMs/triggerExecution")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Some(start.as_millisecond() + took)
}

/// Sums the `/progress` answers of a query's replicas (one JSON document each). `None` when no
/// replica has committed a batch yet (the status keeps its previous figures).
pub fn summarize(answers: &[Value]) -> Option<WorkerProgress> {
    let mut input = 0.0;
    let mut processed = 0.0;
    let mut lag = 0i64;
    let mut batch: Option<i64> = None;
    let mut last_commit: Option<i64> = None;
    let mut watermark: Option<String> = None;
    let mut with_batches = 0;
    for answer in answers {
        let Some(latest) = answer.get("latest").filter(|l| !l.is_null()) else {
            continue;
        };
        with_batches += 1;
        let number = |field: &str| latest.get(field).and_then(Value::as_f64).unwrap_or(0.0);
        input += number("inputRowsPerSecond");
        processed += number("processedRowsPerSecond");
        lag += latest
            .get("sources")
            .and_then(Value::as_array)
            .map_or(0, |sources| {
                sources
                    .iter()
                    .filter_map(|s| s.get("backlog").and_then(Value::as_i64))
                    .sum()
            });
        if let Some(id) = latest.get("batchId").and_then(Value::as_i64) {
            batch = Some(batch.map_or(id, |b| b.max(id)));
        }
        if let Some(at) = commit_ms(latest) {
            last_commit = Some(last_commit.map_or(at, |b| b.max(at)));
        }
        if let Some(mark) = latest
            .pointer("/eventTime/watermark")
            .and_then(Value::as_str)
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
    Some(WorkerProgress {
        observation: ProgressObservation {
            input_rows_per_second: Some(input),
            processed_rows_per_second: Some(processed),
            last_committed_batch_id: batch,
            lag: Some(lag),
            watermark,
        },
        last_batch_time: last_commit
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
        answered: answers.len(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(batch: i64, input: f64, processed: f64, backlog: i64, at: &str, mark: &str) -> Value {
        json!({
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
        })
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
            json!({"latest": null, "recent": []}),
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
        assert_eq!(summarize(&[json!({"latest": null})]), None);
    }
}
