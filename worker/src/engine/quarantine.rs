//! Quarantined poison batches (`spec.onPoisonBatch: quarantine`): the input of a batch that failed
//! `maxBatchAttempts` times is written to the query's bad-records location, so that it can be
//! inspected and replayed by hand, before the batch is committed as skipped.
//!
//! One object per batch, `<bad-records>/poison-batches/task-<task>/batch-<batchId>.jsonl`, in the
//! bad-records line format ([`BadRecord`]): for each source, a line with `line: 0` whose `record`
//! is the logged range (the offsets or files the batch covered), then one line per row read for
//! that range (`line` counts the source's rows from 1, `record` is the row as a JSON object).
//! When the rows cannot be read again, the range line is all there is and its `error` says why.
//! Every line's `error` starts with the batch's error.

use arrow::record_batch::RecordBatch;
use object_store::ObjectStoreExt;

use crate::error::{EngineError, Result};
use crate::source::Range;
use crate::source::decode::{BadRecord, bad_records_jsonl};
use crate::storage::Location;

/// The input of one source in a quarantined batch.
pub struct QuarantinedInput {
    /// Source name.
    pub source: String,
    /// The range the offsets log holds for it.
    pub range: Range,
    /// The rows read again for `range`, or why they could not be.
    pub rows: std::result::Result<Vec<RecordBatch>, String>,
}

/// The object a quarantined batch's input goes to, relative to the bad-records location.
pub fn quarantine_path(task: u32, batch_id: u64) -> String {
    format!("poison-batches/task-{task}/batch-{batch_id:020}.jsonl")
}

/// The bad-record lines of a quarantined batch (see the module docs), and how many rows they
/// hold.
///
/// # Errors
/// [`EngineError::Arrow`] when a row does not encode as JSON.
pub fn quarantine_records(
    inputs: &[QuarantinedInput],
    error: &str,
) -> Result<(Vec<BadRecord>, u64)> {
    let mut records = Vec::new();
    let mut rows = 0u64;
    for input in inputs {
        let range_error = match &input.rows {
            Ok(_) => error.to_string(),
            Err(read) => format!("{error} (the rows could not be read again: {read})"),
        };
        records.push(BadRecord {
            origin: input.source.clone(),
            line: 0,
            record: input.range.to_string(),
            error: range_error,
        });
        let Ok(batches) = &input.rows else {
            continue;
        };
        for (n, line) in rows_as_json(batches)?.into_iter().enumerate() {
            rows += 1;
            records.push(BadRecord {
                origin: input.source.clone(),
                line: n as u64 + 1,
                record: line,
                error: error.to_string(),
            });
        }
    }
    Ok((records, rows))
}

/// Writes a quarantined batch's input to `location` (deterministic name: a replay rewrites the
/// same object). Returns the rows written.
///
/// # Errors
/// [`EngineError::Storage`] when the store fails; as [`quarantine_records`].
pub async fn write_quarantine(
    location: &Location,
    task: u32,
    batch_id: u64,
    inputs: &[QuarantinedInput],
    error: &str,
) -> Result<u64> {
    let (records, rows) = quarantine_records(inputs, error)?;
    let path = location.child(&quarantine_path(task, batch_id));
    location
        .store
        .put(&path, bad_records_jsonl(&records).into())
        .await
        .map_err(|e| EngineError::storage(path.to_string(), e))?;
    Ok(rows)
}

/// Each row as one JSON object (Arrow's JSON lines writer; nulls left out).
fn rows_as_json(batches: &[RecordBatch]) -> Result<Vec<String>> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn range_line_then_one_line_per_row_or_the_range_alone() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
            ],
        )
        .expect("batch");
        let inputs = vec![
            QuarantinedInput {
                source: "events".into(),
                range: serde_json::json!({"files": ["a.json"]}),
                rows: Ok(vec![batch]),
            },
            QuarantinedInput {
                source: "clicks".into(),
                range: serde_json::json!({"start": 5, "end": 9}),
                rows: Err("gone".into()),
            },
        ];
        let (records, rows) = quarantine_records(&inputs, "boom").expect("records");
        assert_eq!(rows, 2);
        let lines: Vec<(&str, u64, &str, &str)> = records
            .iter()
            .map(|r| {
                (
                    r.origin.as_str(),
                    r.line,
                    r.record.as_str(),
                    r.error.as_str(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                ("events", 0, r#"{"files":["a.json"]}"#, "boom"),
                ("events", 1, r#"{"id":1,"note":"x"}"#, "boom"),
                ("events", 2, r#"{"id":2}"#, "boom"),
                (
                    "clicks",
                    0,
                    r#"{"end":9,"start":5}"#,
                    "boom (the rows could not be read again: gone)"
                ),
            ]
        );
        assert_eq!(
            quarantine_path(3, 7),
            "poison-batches/task-3/batch-00000000000000000007.jsonl"
        );
    }
}
