//! The state store of one task: per-group partial aggregate state, in memory, checkpointed with
//! each batch as an Arrow IPC delta, with a full snapshot every [`SNAPSHOT_EVERY`] batches
//! (docs/architecture.md; Spark's HDFS-backed state store does the same with delta and snapshot
//! files).
//!
//! State table shape (Arrow): the grouping keys, then the accumulator state columns of each
//! aggregate, exactly as DataFusion's `AggregateExec` in `Partial` mode produces them, e.g. for
//! `GROUP BY window(ts, '1 minute'), deviceId` with `avg(t), count(*)`:
//! `window: Struct{start, end}, deviceId: Utf8, avg(t)[count]: UInt64, avg(t)[sum]: Float64,
//! count(*)[count]: Int64`. Files add `__sluice_deleted: Boolean` (true: the key was evicted) and
//! carry the watermark in the schema metadata.
//!
//! Every group belongs to a key group (`hash(key) % maxParallelism`, see [`key_group`]); files
//! carry each row's key group in `__sluice_key_group` and `maxParallelism` in their metadata, so a
//! restore can load exactly the key groups of a range (docs/keyed-exchange.md). Files written
//! before key groups existed have neither; their rows get their key groups on load.
//!
//! Layout: `tasks/<task>/state/<batchId>.delta.arrow` and `<batchId>.snapshot.arrow`, written
//! BEFORE the batch's commit entry. A restart loads the state as of the last committed batch (the
//! newest snapshot at or below it, then the deltas after it), so replaying an uncommitted batch never
//! applies its changes twice. Changes of a running batch are held in a [`StateDelta`] and applied
//! to memory only after the commit.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StructArray, UInt16Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::row::{OwnedRow, RowConverter, SortField};
// DataFusion's hash map (hashbrown with foldhash): state keys are hashed once per group and batch,
// and SipHash showed up in profiles.
use datafusion::common::{HashMap, HashSet, ScalarValue};

use crate::checkpoint::Checkpoint;
use crate::error::{EngineError, Result};
pub use crate::state_file::{EventTimeState, file_event_time, file_max_parallelism, state_file_id};
use crate::state_file::{
    META_MAX_EVENT, META_MAX_PARALLELISM, META_USED_WATERMARK, META_WATERMARK, event_time_of,
    state_file,
};

use crate::key_group;

use self::key_group::{DEFAULT_MAX_PARALLELISM, KeyGroupRange};

/// A full snapshot is written when `batchId % SNAPSHOT_EVERY == 0`.
pub const SNAPSHOT_EVERY: u64 = 10;
const DELETED_COLUMN: &str = "__sluice_deleted";
const KEY_GROUP_COLUMN: &str = "__sluice_key_group";

/// One group of the state table: its full row (keys, then accumulator states) in Arrow's row
/// format, and the group's event time. Row-encoded so that a batch's groups convert to and from
/// Arrow columns in one vectorised call (`RowConverter`) instead of one `ScalarValue` per cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    pub row: OwnedRow,
    /// Event time of the group, ms since the epoch: the window's `end` or the watermarked
    /// timestamp key; `None` without an event-time key (or a null one).
    pub event_ms: Option<i64>,
    /// The group's key group, `0..maxParallelism` ([`key_group::key_groups`]).
    pub key_group: u16,
}

/// Changes of one batch, applied by [`StateStore::apply`] after the commit.
#[derive(Clone, Debug, Default)]
pub struct StateDelta {
    pub upserts: HashMap<OwnedRow, StateEntry>,
    pub deletes: Vec<OwnedRow>,
    pub event_time: EventTimeState,
}

/// In-memory state of one task's aggregation.
pub struct StateStore {
    schema: SchemaRef,
    num_keys: usize,
    /// Encodes the key columns (the map's keys).
    key_converter: RowConverter,
    /// Encodes whole state rows (keys and states).
    row_converter: RowConverter,
    /// Key column holding the event time (a timestamp, or a window/session struct whose `end`
    /// is one).
    event_column: Option<usize>,
    /// Key columns (indices among the first `num_keys`) whose values decide the key group.
    key_group_columns: Vec<usize>,
    /// Number of key groups, fixed for the checkpoint's life.
    max_parallelism: u32,
    groups: HashMap<OwnedRow, StateEntry>,
    /// Event-time bookkeeping as of the last committed batch.
    pub event_time: EventTimeState,
}

impl StateStore {
    /// An empty store for state rows of `schema` whose first `num_keys` columns are the key and
    /// whose key column `event_column` (if any) carries the group's event time.
    ///
    /// # Errors
    /// [`EngineError::Arrow`] when a column type cannot be row-encoded.
    pub fn new(schema: SchemaRef, num_keys: usize, event_column: Option<usize>) -> Result<Self> {
        let key_converter = RowConverter::new(key_sort_fields(&schema, num_keys))?;
        let row_converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            schema,
            num_keys,
            key_converter,
            row_converter,
            event_column,
            key_group_columns: Vec::new(),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            groups: HashMap::default(),
            event_time: EventTimeState::default(),
        })
    }

    /// Sets which key columns (indices among the first `num_keys`) decide a group's key group,
    /// and the number of key groups. Call before the store holds groups. Without it every group
    /// is in key group 0 of [`DEFAULT_MAX_PARALLELISM`].
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for `max_parallelism` out of `1..=32768`;
    /// [`EngineError::Internal`] for a column that is not a key column.
    pub fn set_key_groups(&mut self, columns: Vec<usize>, max_parallelism: u32) -> Result<()> {
        key_group::check_max_parallelism(max_parallelism)?;
        if let Some(bad) = columns.iter().find(|c| **c >= self.num_keys) {
            return Err(EngineError::Internal(format!(
                "key-group column {bad} is not one of the {} key columns",
                self.num_keys
            )));
        }
        self.key_group_columns = columns;
        self.max_parallelism = max_parallelism;
        Ok(())
    }

    /// Number of key groups.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// Key columns deciding the key group (indices among the key columns).
    pub fn key_group_columns(&self) -> &[usize] {
        &self.key_group_columns
    }

    /// Key group of each row whose key columns are `keys` (the state's key columns, `rows` rows).
    ///
    /// # Errors
    /// As [`key_group::key_groups`].
    pub fn key_groups_of(&self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u16>> {
        let columns: Vec<ArrayRef> = self
            .key_group_columns
            .iter()
            .filter_map(|c| keys.get(*c).cloned())
            .collect();
        key_group::key_groups(&columns, rows, self.max_parallelism)
    }

    /// The state table's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
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
    pub fn get(&self, key: &OwnedRow) -> Option<&StateEntry> {
        self.groups.get(key)
    }

    /// All committed groups.
    pub fn iter(&self) -> impl Iterator<Item = (&OwnedRow, &StateEntry)> {
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
        let encoded = self.key_converter.convert_columns(&columns)?;
        Ok(encoded.iter().map(|r| r.owned()).collect())
    }

    /// Entries of full state rows given as columns (keys then states, the state schema's types).
    ///
    /// # Errors
    /// [`EngineError::Arrow`] on a type mismatch.
    pub fn entries(&self, columns: &[ArrayRef]) -> Result<Vec<StateEntry>> {
        let times = match self.event_column.and_then(|c| columns.get(c)) {
            Some(column) => Some(event_millis(column)?),
            None => None,
        };
        let rows = columns.first().map_or(0, |c| c.len());
        let key_groups = self.key_groups_of(columns, rows)?;
        let encoded = self.row_converter.convert_columns(columns)?;
        Ok(encoded
            .iter()
            .zip(key_groups)
            .enumerate()
            .map(|(r, (row, key_group))| StateEntry {
                row: row.owned(),
                event_ms: times
                    .as_ref()
                    .and_then(|t| t.is_valid(r).then(|| t.value(r))),
                key_group,
            })
            .collect())
    }

    /// The columns (keys then states) of `entries`, in order.
    ///
    /// # Errors
    /// [`EngineError::Arrow`] when the rows do not decode.
    pub fn columns<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a StateEntry>,
    ) -> Result<Vec<ArrayRef>> {
        Ok(self
            .row_converter
            .convert_rows(entries.into_iter().map(|e| e.row.row()))?)
    }

    /// One entry's values (keys then states), for the rare per-group work (session merges).
    ///
    /// # Errors
    /// [`EngineError::Arrow`] when the row does not decode.
    pub fn scalars(&self, entry: &StateEntry) -> Result<Vec<ScalarValue>> {
        self.columns([entry])?
            .iter()
            .map(|column| Ok(ScalarValue::try_from_array(column, 0)?))
            .collect()
    }

    /// The entry of one row of values (keys then states).
    ///
    /// # Errors
    /// [`EngineError::Arrow`] on a type mismatch.
    pub fn entry_of(&self, values: &[ScalarValue]) -> Result<StateEntry> {
        let columns = single_row_arrays(values)?;
        self.entries(&columns)?
            .pop()
            .ok_or_else(|| EngineError::Internal("state row of one group".into()))
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
            let deleted: HashSet<&OwnedRow> = delta.deletes.iter().collect();
            let mut rows: Vec<&StateEntry> = self
                .groups
                .iter()
                .filter(|(k, _)| !delta.upserts.contains_key(*k) && !deleted.contains(k))
                .map(|(_, entry)| entry)
                .collect();
            rows.extend(delta.upserts.values());
            ("snapshot", self.encode(&rows, &[], &delta.event_time)?)
        } else {
            let rows: Vec<&StateEntry> = delta.upserts.values().collect();
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

    /// Loads, as of batch `last`, the groups of `range` from the state of several tasks: the
    /// key-group ranges a rescale splits or merges (docs/keyed-exchange.md, "Rescale"). Each
    /// group is moved whole with its key group, never re-hashed; the ranges of one parallelism are
    /// disjoint, so no group comes twice. The event time is the first source's (every range of a
    /// stateful plan runs with the same watermark).
    ///
    /// # Errors
    /// As [`StateStore::restore_range`].
    pub async fn restore_from(
        &mut self,
        sources: &[(Checkpoint, u32)],
        last: u64,
        range: KeyGroupRange,
    ) -> Result<()> {
        let mut groups = HashMap::default();
        let mut event_time = None;
        for (checkpoint, task) in sources {
            self.restore_range(checkpoint, *task, Some(last), Some(range))
                .await?;
            groups.extend(self.groups.drain());
            event_time.get_or_insert_with(|| self.event_time.clone());
        }
        self.groups = groups;
        self.event_time = event_time.unwrap_or_default();
        Ok(())
    }

    /// Writes the whole state as the snapshot of batch `batch_id` (a rescaled range's first state
    /// file, so its restores never go back to the old ranges' files). Returns its size, bytes.
    ///
    /// # Errors
    /// Storage or encoding failures.
    pub async fn write_snapshot(
        &self,
        checkpoint: &Checkpoint,
        task: u32,
        batch_id: u64,
    ) -> Result<u64> {
        let rows: Vec<&StateEntry> = self.groups.values().collect();
        let body = self.encode(&rows, &[], &self.event_time)?;
        let size = body.len() as u64;
        checkpoint
            .put(&state_file(task, batch_id, "snapshot"), body)
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
        self.restore_range(checkpoint, task, last_committed, None)
            .await
    }

    /// Loads the state of task `task` as of `last_committed`, keeping only the groups whose key
    /// group is in `range` (every group when `None`): what a task taking over a key-group range
    /// loads (docs/keyed-exchange.md, "Rescale").
    ///
    /// # Errors
    /// [`EngineError::Checkpoint`] when a needed state file is missing or unreadable, or was
    /// written with another `maxParallelism`.
    pub async fn restore_range(
        &mut self,
        checkpoint: &Checkpoint,
        task: u32,
        last_committed: Option<u64>,
        range: Option<KeyGroupRange>,
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
            .filter_map(|name| state_file_id(name))
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
            let written_with = file_max_parallelism(&body)
                .map_err(|e| corrupt(checkpoint, task, &format!("{path} is unreadable: {e}")))?;
            if let Some(written_with) = written_with
                && written_with != self.max_parallelism
            {
                return Err(corrupt(
                    checkpoint,
                    task,
                    &format!(
                        "{path} was written with spec.parallelism.maxParallelism {written_with}, the query now has {}; \
                         the number of key groups is fixed for the life of a checkpoint (use a new checkpoint location)",
                        self.max_parallelism
                    ),
                ));
            }
            let delta = self
                .decode(&body, range)
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
        fields.push(Field::new(KEY_GROUP_COLUMN, DataType::UInt16, false));
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(
            META_MAX_PARALLELISM.to_string(),
            self.max_parallelism.to_string(),
        );
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
        upserts: &[&StateEntry],
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
            self.key_converter
                .convert_rows(deletes.iter().map(|r| r.row()))?
        };
        let upserted = self.columns(upserts.iter().copied())?;
        for (c, field) in self.schema.fields().iter().enumerate() {
            let upserted = upserted
                .get(c)
                .cloned()
                .unwrap_or_else(|| arrow::array::new_empty_array(field.data_type()));
            let deleted = match deleted_keys.get(c) {
                Some(key) if c < self.num_keys => key.clone(),
                _ => arrow::array::new_null_array(field.data_type(), deletes.len()),
            };
            columns.push(arrow::compute::concat(&[&upserted, &deleted])?);
        }
        let mut flags = vec![false; upserts.len()];
        flags.extend(std::iter::repeat_n(true, deletes.len()));
        columns.push(Arc::new(BooleanArray::from(flags)));
        let mut key_groups: Vec<u16> = upserts.iter().map(|e| e.key_group).collect();
        key_groups.extend(self.key_groups_of(&deleted_keys, deletes.len())?);
        columns.push(Arc::new(UInt16Array::from(key_groups)));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let mut out = Vec::new();
        {
            let mut writer = FileWriter::try_new(&mut out, &schema)?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Ok(out)
    }

    /// Decodes a state file, keeping only the rows of `range` (all when `None`).
    fn decode(&self, body: &[u8], range: Option<KeyGroupRange>) -> Result<StateDelta> {
        let reader = FileReader::try_new(Cursor::new(body), None)?;
        let metadata = reader.schema().metadata().clone();
        let mut delta = StateDelta {
            event_time: event_time_of(&metadata),
            ..StateDelta::default()
        };
        let width = self.schema.fields().len();
        for batch in reader {
            let batch = batch?;
            // Files written before key groups existed have no key-group column.
            let with_key_groups = batch.num_columns() == width + 2
                && batch.schema().field(width + 1).name() == KEY_GROUP_COLUMN;
            if batch.num_columns() != width + 1 && !with_key_groups {
                return Err(EngineError::Internal(format!(
                    "state file has {} columns, the query's state has {}",
                    batch.num_columns(),
                    width + 1
                )));
            }
            let batch = match range {
                None => batch,
                Some(range) => {
                    let key_groups: Vec<u16> = if with_key_groups {
                        batch
                            .column(width + 1)
                            .as_any()
                            .downcast_ref::<UInt16Array>()
                            .ok_or_else(|| EngineError::Internal("key groups".into()))?
                            .values()
                            .to_vec()
                    } else {
                        let keys: Vec<ArrayRef> = (0..self.num_keys)
                            .map(|c| {
                                arrow::compute::cast(
                                    batch.column(c),
                                    self.schema.field(c).data_type(),
                                )
                            })
                            .collect::<std::result::Result<_, _>>()?;
                        self.key_groups_of(&keys, batch.num_rows())?
                    };
                    let keep: BooleanArray = key_groups
                        .iter()
                        .map(|g| Some(range.contains(*g)))
                        .collect();
                    arrow::compute::filter_record_batch(&batch, &keep)?
                }
            };
            let deleted = batch
                .column(width)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| EngineError::Internal("deleted flags".into()))?
                .clone();
            // Deleted keys carry null states: encode keys from all rows, entries from the rest.
            let columns: Vec<ArrayRef> = (0..width)
                .map(|c| arrow::compute::cast(batch.column(c), self.schema.field(c).data_type()))
                .collect::<std::result::Result<_, _>>()?;
            let key_columns = columns.get(..self.num_keys).ok_or_else(|| {
                EngineError::Internal(format!(
                    "state store: {} key columns but only {width} columns in the batch",
                    self.num_keys
                ))
            })?;
            let keys = self.keys(key_columns, batch.num_rows())?;
            let live = arrow::compute::not(&deleted)?;
            let upserted: Vec<ArrayRef> = columns
                .iter()
                .map(|c| arrow::compute::filter(c, &live))
                .collect::<std::result::Result<_, _>>()?;
            let mut entries = self.entries(&upserted)?.into_iter();
            for (r, key) in keys.into_iter().enumerate() {
                if deleted.value(r) {
                    delta.deletes.push(key);
                } else {
                    let entry = entries
                        .next()
                        .ok_or_else(|| EngineError::Internal("state file rows".into()))?;
                    delta.upserts.insert(key, entry);
                }
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

/// The state files of a task (`names` as listed under `tasks/<task>/state`) that no restore can
/// need once every batch up to `through` is committed: those older than the newest snapshot at or
/// below `through`. A later restore starts at that snapshot or a newer one.
pub fn prunable_state_files(names: &[String], through: u64) -> Vec<String> {
    let Some(floor) = names
        .iter()
        .filter_map(|name| state_file_id(name))
        .filter(|(id, snapshot)| *snapshot && *id <= through)
        .map(|(id, _)| id)
        .max()
    else {
        return Vec::new();
    };
    names
        .iter()
        .filter(|name| state_file_id(name).is_some_and(|(id, _)| id < floor))
        .cloned()
        .collect()
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

/// Timestamps (any unit) as ms since the epoch.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when the column is not a timestamp.
pub fn timestamp_millis(array: &ArrayRef) -> Result<Int64Array> {
    let ms = match array.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => array.clone(),
        DataType::Timestamp(_, tz) => arrow::compute::cast(
            array,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )?,
        other => {
            return Err(EngineError::InvalidQuery(format!(
                "the watermark column must be a timestamp, not {other}"
            )));
        }
    };
    let ints = arrow::compute::cast(&ms, &DataType::Int64)?;
    ints.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| EngineError::Internal("timestamp as int64".into()))
}

/// Event time (ms) of each value of an event-time column: a timestamp, or a window/session
/// struct `{start, end}` whose `end` counts (Spark compares a window's end with the watermark).
///
/// # Errors
/// [`EngineError::InvalidQuery`] when the column is neither.
pub fn event_millis(array: &ArrayRef) -> Result<Int64Array> {
    match array.as_any().downcast_ref::<StructArray>() {
        Some(windows) if windows.num_columns() >= 2 => timestamp_millis(windows.column(1)),
        _ => timestamp_millis(array),
    }
}

/// Whether an array is a struct column (a window).
pub fn is_struct(array: &dyn Array) -> bool {
    matches!(array.data_type(), DataType::Struct(_))
}

#[cfg(test)]
mod tests;
