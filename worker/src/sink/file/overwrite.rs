//! `overwrite: partitions`: each batch of a task replaces that task's previous output, partition
//! directory by partition directory, atomically at the commit log (for `outputMode: complete`,
//! the seeds' report that rewrites its output partitions once a minute).
//!
//! **Versions.** A task's batch writes a new file only into the partition directories whose rows
//! changed (an order-independent hash of the rows, kept per directory in the log entry, tells);
//! the entry lists those files and the unchanged directories' existing files, and names in
//! `supersedes` the task's live entries it replaces (of every run: a restored or re-created query
//! replaces the old run's output too). The entry is the commit: a reader that follows the log
//! (see [`super::committed_files`]) counts an entry only when no live entry supersedes it, so it
//! sees either the old version of the task's output or the new one, never both or neither.
//!
//! **Cleanup.** After the commit the superseded entries are renamed to `<entry>.superseded`, the
//! files only they listed are deleted, then the markers. So a plain reader that ignores the log
//! (Spark, DuckDB, pyarrow reading the directory) sees exactly one version between batches, and
//! both versions of a changed partition only during that short cleanup, or until the next batch
//! of the task after a crash in it (the next write, or a replay of the batch, finishes it). Deleting
//! old files was chosen over versioned directories with a `_current` pointer because plain readers
//! know no such pointer: they would read every version forever.

use std::collections::{BTreeMap, HashSet};

use arrow::array::RecordBatch;
use arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use super::{LOG_DIR, LogEntry, read_log_entry_at};
use crate::error::{EngineError, Result};
use crate::fault::{CrashPoint, crash_point};
use crate::storage::Location;

/// The suffix of a superseded entry whose files are being deleted.
pub const SUPERSEDED: &str = ".superseded";

/// A hash of `batch`'s rows and schema that does not depend on row order; `None` for column types
/// the row format cannot encode (the partition is then always rewritten).
pub fn partition_hash(batch: &RecordBatch) -> Option<String> {
    let fields: Vec<SortField> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).ok()?;
    let rows = converter.convert_columns(batch.columns()).ok()?;
    let mut encoded: Vec<&[u8]> = rows.iter().map(|row| row.data()).collect();
    encoded.sort_unstable();
    let mut hasher = Sha256::new();
    for field in batch.schema().fields() {
        hasher.update(format!("{}:{};", field.name(), field.data_type()).as_bytes());
    }
    for row in encoded {
        hasher.update((row.len() as u64).to_le_bytes());
        hasher.update(row);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The directory of a file path relative to the output location (`""` at the top).
pub fn directory_of(file: &str) -> &str {
    file.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The task of a log entry file name `<task>-<batchId>.json[.superseded]`.
fn entry_task(name: &str) -> Option<u32> {
    name.split_once('-')?.0.parse().ok()
}

/// A log entry's name relative to the log directory: `<run>/<task>-<batchId>.json`.
pub fn entry_name(run: &str, task: u32, batch_id: u64) -> String {
    format!("{run}/{task:05}-{batch_id:020}.json")
}

/// The log entries of `task` (all runs) under `location`: live ones (name → entry) and the
/// superseded markers a cleanup has not finished.
pub async fn task_entries(
    location: &Location,
    task: u32,
) -> Result<(BTreeMap<String, LogEntry>, Vec<String>)> {
    let log = location.child(LOG_DIR);
    let paths: Vec<object_store::path::Path> = location
        .store
        .list(Some(&log))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| EngineError::storage(log.to_string(), e))?;
    let mut live = BTreeMap::new();
    let mut superseded = Vec::new();
    for path in paths {
        let Some(name) = path.filename() else {
            continue;
        };
        if entry_task(name) != Some(task) {
            continue;
        }
        let relative = path
            .as_ref()
            .strip_prefix(log.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/')
            .to_string();
        if name.ends_with(".json") {
            live.insert(relative, read_log_entry_at(location, &path).await?);
        } else if name.ends_with(SUPERSEDED) {
            superseded.push(relative);
        }
    }
    Ok((live, superseded))
}

/// The live entries no other live entry supersedes: the current version (one entry, except
/// in a directory that mixes writers).
pub fn current(live: &BTreeMap<String, LogEntry>) -> Vec<(&String, &LogEntry)> {
    let dead: HashSet<&String> = live.values().flat_map(|e| &e.supersedes).collect();
    live.iter()
        .filter(|(name, _)| !dead.contains(name))
        .collect()
}

/// Finishes the cleanup of `task`'s superseded versions: renames live entries that a live entry
/// supersedes to `<entry>.superseded`, deletes the files only they listed, then the markers.
/// Every step may be repeated after a crash. `batch_id` arms [`CrashPoint::MidSinkCleanup`].
///
/// # Errors
/// [`EngineError::Storage`] when the store fails; [`EngineError::Sink`] for an unreadable entry.
pub async fn clean_superseded(location: &Location, task: u32, batch_id: u64) -> Result<()> {
    let (live, mut superseded) = task_entries(location, task).await?;
    let current = current(&live);
    let keep: HashSet<&String> = current.iter().flat_map(|(_, e)| &e.files).collect();
    let current_names: HashSet<&String> = current.iter().map(|(name, _)| *name).collect();
    for (name, entry) in &live {
        if current_names.contains(name) {
            continue;
        }
        let marker = format!("{name}{SUPERSEDED}");
        let body = serde_json::to_vec(entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        let path = location.child(&format!("{LOG_DIR}/{marker}"));
        location
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| EngineError::storage(path.to_string(), e))?;
        delete(location, &location.child(&format!("{LOG_DIR}/{name}"))).await?;
        superseded.push(marker);
    }
    for marker in superseded {
        let path = location.child(&format!("{LOG_DIR}/{marker}"));
        let entry = read_log_entry_at(location, &path).await?;
        for file in entry.files.iter().filter(|f| !keep.contains(f)) {
            delete(location, &super::stored_path(location, file)?).await?;
        }
        crash_point(CrashPoint::MidSinkCleanup, batch_id);
        delete(location, &path).await?;
    }
    Ok(())
}

async fn delete(location: &Location, path: &object_store::path::Path) -> Result<()> {
    match location.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(EngineError::storage(path.to_string(), e)),
    }
}
