//! The state store of one task: per-group partial aggregate state, in memory, checkpointed with
//! each batch as an Arrow IPC delta, with a full snapshot every [`SNAPSHOT_EVERY`] batches
//! (DESIGN §4; Spark's HDFS-backed state store does the same with delta and snapshot files).
//!
//! State table shape (Arrow): the grouping keys, then the accumulator state columns of each
//! aggregate, exactly as DataFusion's `AggregateExec` in `Partial` mode produces them, e.g. for
//! `GROUP BY window(ts, '1 minute'), deviceId` with `avg(t), count(*)`:
//! `window: Struct{start, end}, deviceId: Utf8, avg(t)[count]: UInt64, avg(t)[sum]: Float64,
//! count(*)[count]: Int64`. Files add `__sluice_deleted: Boolean` (true: the key was evicted) and
//! carry the watermark in the schema metadata.
//!
//! Layout: `tasks/<task>/state/<batchId>.delta.arrow` and `<batchId>.snapshot.arrow`, written
//! BEFORE the batch's commit entry. A restart loads the state as of the last committed batch (the
//! newest snapshot at or below it, then the deltas after it), so replaying an uncommitted batch never
//! applies its changes twice. Changes of a running batch are held in a [`StateDelta`] and applied
//! to memory only after the commit.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;

use crate::checkpoint::Checkpoint;
use crate::error::{EngineError, Result};

/// A full snapshot is written when `batchId % SNAPSHOT_EVERY == 0`.
pub const SNAPSHOT_EVERY: u64 = 10;
const DELETED_COLUMN: &str = "__sluice_deleted";
const META_WATERMARK: &str = "sluice.watermarkMs";
const META_USED_WATERMARK: &str = "sluice.usedWatermarkMs";
const META_MAX_EVENT: &str = "sluice.maxEventMs";

/// One group's row of the state table: key values then state values.
pub type StateRow = Vec<ScalarValue>;

/// Event-time bookkeeping kept with the state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventTimeState {
    /// Watermark for the NEXT batch, ms since the epoch (Spark: computed at the end of a batch).
    pub watermark_ms: Option<i64>,
    /// Watermark the last batch ran with.
    pub used_watermark_ms: Option<i64>,
    /// Max event time seen per source, ms.
    pub max_event_ms: BTreeMap<String, i64>,
}

/// Changes of one batch, applied by [`StateStore::apply`] after the commit.
#[derive(Clone, Debug, Default)]
pub struct StateDelta {
    pub upserts: HashMap<OwnedRow, StateRow>,
    pub deletes: Vec<OwnedRow>,
    pub event_time: EventTimeState,
}

/// In-memory state of one task's aggregation.
pub struct StateStore {
    schema: SchemaRef,
    num_keys: usize,
    converter: RowConverter,
    groups: HashMap<OwnedRow, StateRow>,
    /// Event-time bookkeeping as of the last committed batch.
    pub event_time: EventTimeState,
}

impl StateStore {
    /// An empty store for state rows of `schema` whose first `num_keys` columns are the key.
    ///
    /// # Errors
    /// [`EngineError::Arrow`] when a key type cannot be row-encoded.
    pub fn new(schema: SchemaRef, num_keys: usize) -> Result<Self> {
        let converter = RowConverter::new(key_sort_fields(&schema, num_keys))?;
        Ok(Self {
            schema,
            num_keys,
            converter,
            groups: HashMap::new(),
            event_time: EventTimeState::default(),
        })
    }

    /// Number of key columns.
    pub fn num_keys(&self) -> usize {
        self.num_keys
    }

    /// State rows held.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether the store holds no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The committed row of `key`.
    pub fn get(&self, key: &OwnedRow) -> Option<&StateRow> {
        self.groups.get(key)
    }

    /// All committed groups.
    pub fn iter(&self) -> impl Iterator<Item = (&OwnedRow, &StateRow)> {
        self.groups.iter()
    }

    /// Row-encoded keys of `columns` (the key columns of a batch, or no column for a global
    /// aggregation, then `rows` gives the row count).
    ///
    /// # Errors
    /// [`EngineError::Arrow`] on a type mismatch.
    pub fn keys(&self, columns: &[ArrayRef], rows: usize) -> Result<Vec<OwnedRow>> {
        let columns: Vec<ArrayRef> = if self.num_keys == 0 {
            vec![Arc::new(BooleanArray::from(vec![true; rows]))]
        } else {
            columns.to_vec()
        };
        let encoded = self.converter.convert_columns(&columns)?;
        Ok(encoded.iter().map(|r| r.owned()).collect())
    }

    /// Applies a committed batch's delta.
    pub fn apply(&mut self, delta: StateDelta) {
        for key in delta.deletes {
            self.groups.remove(&key);
        }
        self.groups.extend(delta.upserts);
        self.event_time = delta.event_time;
    }

    /// Writes the batch's state file (a snapshot of the state after `delta` every
    /// [`SNAPSHOT_EVERY`] batches, else the delta).
    ///
    /// # Errors
    /// Storage or encoding failures; the batch must then not be committed.
    pub async fn write(
        &self,
        checkpoint: &Checkpoint,
        task: u32,
        batch_id: u64,
        delta: &StateDelta,
    ) -> Result<u64> {
        let (kind, body) = if batch_id.is_multiple_of(SNAPSHOT_EVERY) {
            let mut rows: Vec<(&OwnedRow, &StateRow)> = self
                .groups
                .iter()
                .filter(|(k, _)| !delta.upserts.contains_key(*k) && !delta.deletes.contains(k))
                .collect();
            rows.extend(delta.upserts.iter());
            ("snapshot", self.encode(&rows, &[], &delta.event_time)?)
        } else {
            let rows: Vec<(&OwnedRow, &StateRow)> = delta.upserts.iter().collect();
            (
                "delta",
                self.encode(&rows, &delta.deletes, &delta.event_time)?,
            )
        };
        let size = body.len() as u64;
        checkpoint
            .put(&state_file(task, batch_id, kind), body)
            .await?;
        Ok(size)
    }

    /// Loads the state as of `last_committed` (nothing when `None`).
    ///
    /// # Errors
    /// [`EngineError::Checkpoint`] when a needed state file is missing or unreadable.
    pub async fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        task: u32,
        last_committed: Option<u64>,
    ) -> Result<()> {
        self.groups.clear();
        self.event_time = EventTimeState::default();
        let Some(last) = last_committed else {
            return Ok(());
        };
        let files = checkpoint
            .list_names(&format!("tasks/{task}/state"))
            .await?;
        let mut parsed: Vec<(u64, bool)> = files
            .iter()
            .filter_map(|name| {
                let (id, kind) = name.split_once('.')?;
                Some((id.parse::<u64>().ok()?, kind.starts_with("snapshot")))
            })
            .filter(|(id, _)| *id <= last)
            .collect();
        parsed.sort();
        let start = parsed
            .iter()
            .rev()
            .find(|(_, snapshot)| *snapshot)
            .map(|(id, _)| *id);
        let Some(start) = start else {
            return Err(corrupt(
                checkpoint,
                task,
                "no state snapshot at or below the last committed batch",
            ));
        };
        for id in start..=last {
            let kind = if id == start { "snapshot" } else { "delta" };
            let path = state_file(task, id, kind);
            let body = checkpoint
                .get_relative(&path)
                .await?
                .ok_or_else(|| corrupt(checkpoint, task, &format!("{path} is missing")))?;
            let delta = self
                .decode(&body)
                .map_err(|e| corrupt(checkpoint, task, &format!("{path} is unreadable: {e}")))?;
            self.apply(delta);
        }
        Ok(())
    }

    fn file_schema(&self, event_time: &EventTimeState) -> Result<SchemaRef> {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
        let mut metadata = std::collections::HashMap::new();
        if let Some(w) = event_time.watermark_ms {
            metadata.insert(META_WATERMARK.to_string(), w.to_string());
        }
        if let Some(w) = event_time.used_watermark_ms {
            metadata.insert(META_USED_WATERMARK.to_string(), w.to_string());
        }
        metadata.insert(
            META_MAX_EVENT.to_string(),
            serde_json::to_string(&event_time.max_event_ms)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
        );
        Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
    }

    fn encode(
        &self,
        upserts: &[(&OwnedRow, &StateRow)],
        deletes: &[OwnedRow],
        event_time: &EventTimeState,
    ) -> Result<Vec<u8>> {
        let schema = self.file_schema(event_time)?;
        let width = self.schema.fields().len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(width + 1);
        // Deleted keys: decode their key values back from the row format.
        let deleted_keys: Vec<ArrayRef> = if deletes.is_empty() || self.num_keys == 0 {
            Vec::new()
        } else {
            self.converter
                .convert_rows(deletes.iter().map(|r| r.row()))?
        };
        for (c, field) in self.schema.fields().iter().enumerate() {
            let upserted = if upserts.is_empty() {
                arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(upserts.iter().map(|(_, row)| row[c].clone()))?
            };
            let deleted = if c < self.num_keys && !deleted_keys.is_empty() {
                deleted_keys[c].clone()
            } else {
                arrow::array::new_null_array(field.data_type(), deletes.len())
            };
            columns.push(arrow::compute::concat(&[&upserted, &deleted])?);
        }
        let mut flags = vec![false; upserts.len()];
        flags.extend(std::iter::repeat_n(true, deletes.len()));
        columns.push(Arc::new(BooleanArray::from(flags)));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let mut out = Vec::new();
        {
            let mut writer = FileWriter::try_new(&mut out, &schema)?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Ok(out)
    }

    fn decode(&self, body: &[u8]) -> Result<StateDelta> {
        let reader = FileReader::try_new(Cursor::new(body), None)?;
        let metadata = reader.schema().metadata().clone();
        let mut delta = StateDelta {
            event_time: EventTimeState {
                watermark_ms: metadata.get(META_WATERMARK).and_then(|v| v.parse().ok()),
                used_watermark_ms: metadata
                    .get(META_USED_WATERMARK)
                    .and_then(|v| v.parse().ok()),
                max_event_ms: metadata
                    .get(META_MAX_EVENT)
                    .and_then(|v| serde_json::from_str(v).ok())
                    .unwrap_or_default(),
            },
            ..StateDelta::default()
        };
        let width = self.schema.fields().len();
        for batch in reader {
            let batch = batch?;
            if batch.num_columns() != width + 1 {
                return Err(EngineError::Internal(format!(
                    "state file has {} columns, the query's state has {}",
                    batch.num_columns(),
                    width + 1
                )));
            }
            let deleted = batch
                .column(width)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| EngineError::Internal("deleted flags".into()))?
                .clone();
            let key_columns: Vec<ArrayRef> = (0..self.num_keys)
                .map(|c| arrow::compute::cast(batch.column(c), self.schema.field(c).data_type()))
                .collect::<std::result::Result<_, _>>()?;
            let keys = self.keys(&key_columns, batch.num_rows())?;
            for (r, key) in keys.into_iter().enumerate() {
                if deleted.value(r) {
                    delta.deletes.push(key);
                    continue;
                }
                let row = (0..width)
                    .map(|c| ScalarValue::try_from_array(batch.column(c), r))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                delta.upserts.insert(key, row);
            }
        }
        Ok(delta)
    }
}

fn key_sort_fields(schema: &Schema, num_keys: usize) -> Vec<SortField> {
    if num_keys == 0 {
        return vec![SortField::new(DataType::Boolean)];
    }
    schema
        .fields()
        .iter()
        .take(num_keys)
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

fn state_file(task: u32, batch_id: u64, kind: &str) -> String {
    format!("tasks/{task}/state/{batch_id:020}.{kind}.arrow")
}

fn corrupt(checkpoint: &Checkpoint, task: u32, message: &str) -> EngineError {
    EngineError::Checkpoint {
        location: checkpoint.location().url.clone(),
        message: format!("state of task {task}: {message}"),
    }
}

/// Builds 1-row arrays from state values (for `Accumulator::merge_batch`).
///
/// # Errors
/// [`EngineError::Sql`] when a value cannot become an array.
pub fn single_row_arrays(values: &[ScalarValue]) -> Result<Vec<ArrayRef>> {
    Ok(values
        .iter()
        .map(|v| v.to_array_of_size(1))
        .collect::<std::result::Result<_, _>>()?)
}

/// Whether an array is a struct column (a window).
pub fn is_struct(array: &dyn Array) -> bool {
    matches!(array.data_type(), DataType::Struct(_))
}

#[cfg(test)]
mod tests;
