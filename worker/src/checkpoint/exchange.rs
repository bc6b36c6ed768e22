//! The object-store exchange between the source stage and the stateful stage
//! (docs/keyed-exchange.md, "The object-store exchange").
//!
//! A source task writes its batch's rows as one Arrow IPC object per target key-group range,
//! `exchange/<sourceTask>/<batchId>/<start>-<end>.arrow`, each row with its key group in
//! `__sluice_key_group`, BEFORE its commit; the commit lists the objects ([`ExchangeObject`]).
//! A consumer reads only listed objects and keeps only the rows of its own range, so objects split
//! for another parallelism (before a rescale) are read correctly, and objects of a failed attempt
//! that the commit does not list are never read.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt16Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use super::Checkpoint;
use crate::error::{EngineError, Result};
use crate::key_group::KeyGroupRange;

/// Column holding each exchanged row's key group.
pub const KEY_GROUP_COLUMN: &str = "__sluice_key_group";

/// One object a source batch wrote for a key-group range: listed in the source task's commit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeObject {
    /// First key group of the range.
    pub start: u16,
    /// Last key group of the range (inclusive).
    pub end: u16,
    /// Rows in the object.
    pub rows: u64,
}

impl ExchangeObject {
    /// The object's key-group range.
    pub fn range(&self) -> KeyGroupRange {
        KeyGroupRange {
            start: self.start,
            end: self.end,
        }
    }
}

/// What a source-stage batch handed to the stateful stage: the `exchange` field of its commit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeCommit {
    /// The objects written, one per key-group range that got rows.
    pub objects: Vec<ExchangeObject>,
    /// Max event time (ms) per watermarked source in the batch's rows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_event_ms: BTreeMap<String, i64>,
    /// The task had read everything available when the batch committed (its sources' backlog
    /// was 0, or unknown): only such a task can become idle. A task that is behind is slow, not
    /// idle, however long since its last rows (a restart, a busy machine).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
    /// The task read everything it will ever read in this run (a bounded trigger drained it):
    /// it no longer holds the watermark back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// Path of stateful plan `batch_id` (docs/keyed-exchange.md, "Stateful plans").
pub fn plan_path(batch_id: u64) -> String {
    format!("stateful/plans/{batch_id:020}")
}

/// The sub-checkpoint holding the task log, sink records and state of the stateful task that
/// owns `range`: `stateful/ranges/<start>-<end>/`.
pub fn range_checkpoint(checkpoint: &Checkpoint, range: KeyGroupRange) -> Checkpoint {
    checkpoint.sub(&format!("stateful/ranges/{range}"))
}

/// Directory of the objects of batch `batch_id` of source task `source_task`.
pub fn batch_dir(source_task: u32, batch_id: u64) -> String {
    format!("exchange/{source_task}/{batch_id:020}")
}

/// Path of the object of `range` for batch `batch_id` of source task `source_task`.
pub fn object_path(source_task: u32, batch_id: u64, range: KeyGroupRange) -> String {
    format!("{}/{range}.arrow", batch_dir(source_task, batch_id))
}

/// Writes `rows` (whose key groups are `key_groups`, one per row) as one object per range of
/// `ranges` that gets rows, rows sorted by key group (stable, so a replay writes the same
/// bytes). Returns the objects to list in the batch's commit.
///
/// # Errors
/// [`EngineError::Internal`] when `key_groups` does not match `rows` or a row's key group is in no
/// range; storage and encoding failures (the batch must then not be committed).
pub async fn write_batch(
    checkpoint: &Checkpoint,
    source_task: u32,
    batch_id: u64,
    rows: &RecordBatch,
    key_groups: &[u16],
    ranges: &[KeyGroupRange],
) -> Result<Vec<ExchangeObject>> {
    if key_groups.len() != rows.num_rows() {
        return Err(EngineError::Internal(format!(
            "{} key groups for {} exchanged rows",
            key_groups.len(),
            rows.num_rows()
        )));
    }
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.sort_by_key(|r| key_groups.get(*r as usize).copied().unwrap_or(u16::MAX));
    let mut objects = Vec::new();
    let mut next = 0usize;
    for range in ranges {
        let start = next;
        while let Some(group) = order
            .get(next)
            .and_then(|r| key_groups.get(*r as usize))
            .copied()
            && range.contains(group)
        {
            next += 1;
        }
        let Some(taken) = order.get(start..next).filter(|t| !t.is_empty()) else {
            continue;
        };
        let indices = UInt32Array::from(taken.to_vec());
        let mut columns: Vec<ArrayRef> = rows
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let groups: Vec<u16> = taken
            .iter()
            .filter_map(|r| key_groups.get(*r as usize).copied())
            .collect();
        columns.push(Arc::new(UInt16Array::from(groups)));
        let batch = RecordBatch::try_new(with_key_group(rows.schema().as_ref()), columns)?;
        checkpoint
            .put(&object_path(source_task, batch_id, *range), encode(&batch)?)
            .await?;
        objects.push(ExchangeObject {
            start: range.start,
            end: range.end,
            rows: taken.len() as u64,
        });
    }
    if next != order.len() {
        return Err(EngineError::Internal(format!(
            "{} exchanged rows have key groups outside the ranges {ranges:?}",
            order.len() - next
        )));
    }
    Ok(objects)
}

/// The rows of batch `batch_id` of source task `source_task` whose key group is in `range`,
/// read from the listed `objects` that overlap it, without the key-group column.
///
/// # Errors
/// [`EngineError::Checkpoint`] when a listed object is missing or unreadable.
pub async fn read_batch(
    checkpoint: &Checkpoint,
    source_task: u32,
    batch_id: u64,
    objects: &[ExchangeObject],
    range: KeyGroupRange,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for object in objects.iter().filter(|o| o.range().overlaps(&range)) {
        let path = object_path(source_task, batch_id, object.range());
        let corrupt = |message: String| EngineError::Checkpoint {
            location: checkpoint.location().url.clone(),
            message: format!("exchange object {path}: {message}"),
        };
        let body = checkpoint
            .get_relative(&path)
            .await?
            .ok_or_else(|| corrupt("listed in the source commit but missing".into()))?;
        let reader = FileReader::try_new(Cursor::new(body), None)
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(format!("unreadable: {e}")))?;
            let width = batch.num_columns().saturating_sub(1);
            let groups = batch
                .columns()
                .last()
                .and_then(|c| c.as_any().downcast_ref::<UInt16Array>())
                .ok_or_else(|| corrupt(format!("no {KEY_GROUP_COLUMN} column")))?;
            let keep: BooleanArray = groups
                .values()
                .iter()
                .map(|g| Some(range.contains(*g)))
                .collect();
            let rows = batch.project(&(0..width).collect::<Vec<_>>())?;
            let rows = arrow::compute::filter_record_batch(&rows, &keep)?;
            if rows.num_rows() > 0 {
                out.push(rows);
            }
        }
    }
    Ok(out)
}

fn with_key_group(schema: &Schema) -> Arc<Schema> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(KEY_GROUP_COLUMN, DataType::UInt16, false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = FileWriter::try_new(&mut out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_group::{key_groups, range_for_task};
    use crate::storage::Location;
    use arrow::array::{Int64Array, StringArray};

    fn rows() -> RecordBatch {
        let devices: Vec<String> = (0..40).map(|i| format!("device-{i}")).collect();
        RecordBatch::try_from_iter(vec![
            ("deviceId", Arc::new(StringArray::from(devices)) as ArrayRef),
            (
                "n",
                Arc::new(Int64Array::from_iter_values(0..40)) as ArrayRef,
            ),
        ])
        .expect("batch")
    }

    fn sorted(batches: &[RecordBatch]) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let d = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("d");
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n");
            for r in 0..b.num_rows() {
                out.push((d.value(r).to_string(), n.value(r)));
            }
        }
        out.sort();
        out
    }

    /// Rows split for 3 ranges are read back by 2 ranges (a rescale between write and read):
    /// every row reaches exactly the task owning its key group, none lost or doubled; an object
    /// the commit does not list is never read.
    #[tokio::test]
    async fn rows_written_for_one_parallelism_are_read_exactly_by_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint =
            Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
        let batch = rows();
        let groups = key_groups(&[batch.column(0).clone()], batch.num_rows(), 16).expect("kg");
        let written: Vec<KeyGroupRange> = (0..3)
            .map(|t| range_for_task(16, 3, t).expect("range"))
            .collect();
        let objects = write_batch(&checkpoint, 5, 7, &batch, &groups, &written)
            .await
            .expect("write");
        assert_eq!(objects.iter().map(|o| o.rows).sum::<u64>(), 40);
        // A failed earlier attempt's object, not listed: must not be read.
        checkpoint
            .put(
                &object_path(5, 7, KeyGroupRange { start: 0, end: 15 }),
                encode(
                    &RecordBatch::try_new(
                        with_key_group(batch.schema().as_ref()),
                        batch
                            .columns()
                            .iter()
                            .cloned()
                            .chain([Arc::new(UInt16Array::from(groups.clone())) as ArrayRef])
                            .collect(),
                    )
                    .expect("stale"),
                )
                .expect("encode"),
            )
            .await
            .expect("stale object");
        let mut union = Vec::new();
        for task in 0..2 {
            let range = range_for_task(16, 2, task).expect("range");
            let read = read_batch(&checkpoint, 5, 7, &objects, range)
                .await
                .expect("read");
            for (device, _) in sorted(&read) {
                let column: ArrayRef = Arc::new(StringArray::from(vec![device.as_str()]));
                let group = key_groups(&[column], 1, 16).expect("kg");
                assert!(range.contains(group[0]), "{device} read by task {task}");
            }
            union.extend(sorted(&read));
        }
        union.sort();
        assert_eq!(union, sorted(&[batch]));
    }
}
