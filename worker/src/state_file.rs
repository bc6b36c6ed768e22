//! The state store's files: their names (`tasks/<task>/state/<batchId>.delta.arrow` and
//! `<batchId>.snapshot.arrow`, batch id zero-padded to 20 digits) and what their Arrow schema
//! metadata records (the watermark after the batch that wrote them, `maxParallelism`), read without
//! decoding rows. The state store writes and loads these files; checkpoint restore reads them to
//! find a retained batch's event time, without depending on the store.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use arrow::ipc::reader::FileReader;

use crate::error::Result;

pub(crate) const META_MAX_PARALLELISM: &str = "sluice.maxParallelism";
pub(crate) const META_WATERMARK: &str = "sluice.watermarkMs";
pub(crate) const META_USED_WATERMARK: &str = "sluice.usedWatermarkMs";
pub(crate) const META_MAX_EVENT: &str = "sluice.maxEventMs";

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

/// `(batch id, is a snapshot)` of a state file name (`<batchId>.delta.arrow`,
/// `<batchId>.snapshot.arrow`); `None` for other names.
pub fn state_file_id(name: &str) -> Option<(u64, bool)> {
    let (id, kind) = name.split_once('.')?;
    Some((id.parse().ok()?, kind.starts_with("snapshot")))
}

/// The event-time bookkeeping a state file records in its schema metadata (the watermark after
/// the batch that wrote it), read without decoding its rows.
///
/// # Errors
/// [`crate::error::EngineError::Arrow`] when `body` is not an Arrow IPC file.
pub fn file_event_time(body: &[u8]) -> Result<EventTimeState> {
    let reader = FileReader::try_new(Cursor::new(body), None)?;
    Ok(event_time_of(reader.schema().metadata()))
}

/// The event-time bookkeeping in a state file's schema `metadata` (absent keys: none recorded).
pub(crate) fn event_time_of(metadata: &HashMap<String, String>) -> EventTimeState {
    EventTimeState {
        watermark_ms: metadata.get(META_WATERMARK).and_then(|v| v.parse().ok()),
        used_watermark_ms: metadata
            .get(META_USED_WATERMARK)
            .and_then(|v| v.parse().ok()),
        max_event_ms: metadata
            .get(META_MAX_EVENT)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default(),
    }
}

/// The `maxParallelism` a state file was written with (`None` for files written before key
/// groups existed), read without decoding its rows.
///
/// # Errors
/// [`crate::error::EngineError::Arrow`] when `body` is not an Arrow IPC file.
pub fn file_max_parallelism(body: &[u8]) -> Result<Option<u32>> {
    let reader = FileReader::try_new(Cursor::new(body), None)?;
    Ok(reader
        .schema()
        .metadata()
        .get(META_MAX_PARALLELISM)
        .and_then(|v| v.parse().ok()))
}

/// The object path of a task's state file of `batch_id`; `kind` is `delta` or `snapshot`.
pub(crate) fn state_file(task: u32, batch_id: u64, kind: &str) -> String {
    format!("tasks/{task}/state/{batch_id:020}.{kind}.arrow")
}
