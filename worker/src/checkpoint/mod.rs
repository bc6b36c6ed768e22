//! The checkpoint: write-ahead offsets and commits per task on an object store
//! (docs/architecture.md).
//!
//! Layout under the checkpoint location:
//! ```text
//! metadata.json                      query id, source partition counts, created (ms)
//! tasks/<task>/offsets/<batchId>     planned input range per source, written BEFORE processing
//! tasks/<task>/sinks/<batchId>       the sink accepted the batch (rows), before the commit
//! tasks/<task>/attempts/<batchId>    failed attempts of a batch that did not commit (poison)
//! tasks/<task>/commits/<batchId>     written AFTER the sink accepted the batch
//! tasks/<task>/compacted/<batchId>   every batch up to batchId folded into one entry (retention)
//! tasks/<task>/epochs/<epoch>        the worker that owns the task (see [`epoch`])
//! bad-records/<source>/task-<task>/batch-<batchId>.jsonl
//! restores/current.json              the generation workers run on (see [`generation`])
//! exchange/<task>/<batchId>/<start>-<end>.arrow  rows for a key-group range ([`exchange`])
//! restores/<n>/                      a generation restored to a retained batch ([`restore`])
//! ```
//! Batch ids are zero-padded to 20 digits so a listing sorts numerically. Offsets and commits are
//! created with `PutMode::Create`: if the object exists, another writer owns the task and this one is
//! fenced (as Spark's `HDFSMetadataLog` refuses to overwrite a batch). On start, an offsets entry
//! without a commit is the batch that was in flight: it is replayed with exactly its recorded range,
//! and the sinks' idempotent writes make the replay overwrite identical output.

pub mod epoch;
pub mod exchange;
pub mod generation;
pub mod restore;

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::storage::Location;

pub use self::epoch::Epoch;

/// `metadata.json`: fixed when the checkpoint is created.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMetadata {
    /// Stable id of the query across restarts (Spark's `id`).
    pub query_id: String,
    /// Partition (task) count per source name; a later run must see the same counts.
    pub partitions: BTreeMap<String, u32>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Fingerprint of the stateful operators (state schema, keys, aggregates); `None` for a
    /// stateless query. A restart with a different fingerprint is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_operators: Option<String>,
    /// Number of key groups of a stateful query (`spec.parallelism.maxParallelism`), fixed for
    /// the checkpoint's life; `None` for a stateless query and for checkpoints created before key
    /// groups existed (their state files then record it, see `state::file_max_parallelism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<u32>,
}

/// One `offsets/<batchId>` entry: the exact input of a batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OffsetsEntry {
    pub batch_id: u64,
    /// When the batch was planned, ms since the Unix epoch.
    pub planned_ms: i64,
    /// Source name → source-specific range (e.g. `{"files": [...]}`, `{"start": 0, "end": 100}`).
    pub sources: BTreeMap<String, serde_json::Value>,
    /// The writer's epoch (absent in checkpoints written before epochs existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// One `commits/<batchId>` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommitEntry {
    pub batch_id: u64,
    /// When the sink accepted the batch, ms since the Unix epoch.
    pub committed_ms: i64,
    /// Rows read, rows written.
    pub input_rows: u64,
    pub output_rows: u64,
    /// The writer's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// Set when the batch was a quarantined poison batch (`onPoisonBatch: quarantine`): the
    /// error it failed with. The batch is committed as skipped: the sink never saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// Set by a source-stage task of a keyed exchange: what the batch handed to the stateful
    /// stage (docs/keyed-exchange.md, "Source task, per batch").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<exchange::ExchangeCommit>,
}

/// One `sinks/<batchId>` entry: the sink accepted the batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkRecord {
    pub batch_id: u64,
    /// Rows the sink accepted.
    pub rows: u64,
    /// The writer's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// One `attempts/<batchId>` entry: failed attempts of a batch (poison batch detection).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailedAttempts {
    pub batch_id: u64,
    pub attempts: u32,
    pub last_error: String,
}

/// What a task's log says at start-up.
#[derive(Clone, Debug, Default)]
pub struct TaskLog {
    /// The newest compacted entry: one range per source standing for every batch up to its
    /// `batch_id`, all committed (`engine/retention.rs`). `None` before the first compaction.
    pub compacted: Option<OffsetsEntry>,
    /// The offsets entries after `compacted`, in batch order.
    pub offsets: Vec<OffsetsEntry>,
    /// Highest committed batch id.
    pub last_committed: Option<u64>,
}

impl TaskLog {
    /// Every range logged for `source`, oldest first (the compacted one first): what
    /// [`crate::source::Source::open`] continues after.
    pub fn ranges(&self, source: &str) -> Vec<serde_json::Value> {
        self.compacted
            .iter()
            .chain(&self.offsets)
            .filter_map(|entry| entry.sources.get(source).cloned())
            .collect()
    }

    /// The batch to replay: the last planned batch when it has no commit.
    pub fn uncommitted(&self) -> Option<&OffsetsEntry> {
        let last = self.offsets.last()?;
        match self.last_committed {
            Some(committed) if committed >= last.batch_id => None,
            _ => Some(last),
        }
    }

    /// The id the next newly planned batch gets.
    pub fn next_batch_id(&self) -> u64 {
        let planned = self.offsets.last().map(|o| o.batch_id + 1).unwrap_or(0);
        let committed = self.last_committed.map(|c| c + 1).unwrap_or(0);
        planned.max(committed)
    }
}

/// A checkpoint location with typed reads and writes.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    location: Location,
}

fn batch_name(batch_id: u64) -> String {
    format!("{batch_id:020}")
}

impl Checkpoint {
    pub fn new(location: Location) -> Self {
        Self { location }
    }

    /// The location (for bad records and messages).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Reads `metadata.json` if it exists.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails; [`EngineError::Checkpoint`] when unreadable.
    pub async fn stored_metadata(&self) -> Result<Option<CheckpointMetadata>> {
        self.get_json::<CheckpointMetadata>(&self.location.child("metadata.json"))
            .await
    }

    /// Reads `metadata.json`, or creates it from `fresh` if absent.
    ///
    /// # Errors
    /// [`EngineError::Checkpoint`] when the stored partition counts differ from `fresh`'s (the query's
    /// partitioning changed: state and offsets would no longer line up);
    /// [`EngineError::Storage`] when the store fails.
    pub async fn open_metadata(&self, fresh: CheckpointMetadata) -> Result<CheckpointMetadata> {
        let path = self.location.child("metadata.json");
        let stored = match self.get_json::<CheckpointMetadata>(&path).await? {
            Some(stored) => stored,
            None => {
                let body = serde_json::to_vec_pretty(&fresh)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                match self.create(&path, body).await {
                    Ok(()) => return Ok(fresh),
                    // Someone created it between our read and write: use theirs.
                    Err(EngineError::Fenced(_)) => self
                        .get_json::<CheckpointMetadata>(&path)
                        .await?
                        .ok_or_else(|| self.corrupt("metadata.json vanished"))?,
                    Err(e) => return Err(e),
                }
            }
        };
        self.check_compatible(&stored, &fresh)?;
        Ok(stored)
    }

    /// Whether a query described by `fresh` may continue from a checkpoint whose metadata is
    /// `stored`: same partition counts, same stateful operators.
    ///
    /// # Errors
    /// [`EngineError::Checkpoint`] naming what changed.
    pub fn check_compatible(
        &self,
        stored: &CheckpointMetadata,
        fresh: &CheckpointMetadata,
    ) -> Result<()> {
        for (source, count) in &fresh.partitions {
            if let Some(existing) = stored.partitions.get(source)
                && existing != count
            {
                return Err(EngineError::Checkpoint {
                    location: self.location.url.clone(),
                    message: format!(
                        "source `{source}` has {count} partitions but the checkpoint was created with {existing}; \
                         partition counts are fixed for the life of a checkpoint (use a new checkpoint location)"
                    ),
                });
            }
        }
        if let (Some(stored_groups), Some(fresh_groups)) =
            (stored.max_parallelism, fresh.max_parallelism)
            && stored_groups != fresh_groups
        {
            return Err(EngineError::Checkpoint {
                location: self.location.url.clone(),
                message: format!(
                    "spec.parallelism.maxParallelism is {fresh_groups} but the checkpoint was created with {stored_groups}; \
                     the number of key groups is fixed for the life of a checkpoint, as state is kept per key group \
                     (set it back to {stored_groups}, or use a new checkpoint location)"
                ),
            });
        }
        if stored.stateful_operators != fresh.stateful_operators {
            let describe =
                |f: &Option<String>| f.clone().unwrap_or_else(|| "no stateful operator".into());
            return Err(EngineError::Checkpoint {
                location: self.location.url.clone(),
                message: format!(
                    "the query's stateful operators changed: the checkpoint was created with [{}], the query now has [{}]; \
                     state cannot be carried over (use a new checkpoint location)",
                    describe(&stored.stateful_operators),
                    describe(&fresh.stateful_operators)
                ),
            });
        }
        Ok(())
    }

    /// File names directly under `relative` (e.g. `tasks/0/state`).
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure.
    pub async fn list_names(&self, relative: &str) -> Result<Vec<String>> {
        let dir = self.location.child(relative);
        Ok(self
            .list(&dir)
            .await?
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// The bytes of `relative`, `None` when absent.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure.
    pub async fn get_relative(&self, relative: &str) -> Result<Option<bytes::Bytes>> {
        self.get_bytes(&self.location.child(relative)).await
    }

    /// Reads a task's log: the newest compacted entry, the offsets entries after it, the last
    /// committed batch.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure, [`EngineError::Checkpoint`] on unreadable entries.
    pub async fn read_task_log(&self, task: u32) -> Result<TaskLog> {
        let newest_compacted = self
            .batch_ids(&format!("tasks/{task}/compacted"))
            .await?
            .into_iter()
            .max();
        let compacted: Option<OffsetsEntry> = match newest_compacted {
            Some(batch_id) => {
                let path = self
                    .location
                    .child(&format!("tasks/{task}/compacted/{}", batch_name(batch_id)));
                let entry = self
                    .get_json(&path)
                    .await?
                    .ok_or_else(|| self.corrupt(&format!("{path} vanished")))?;
                Some(entry)
            }
            None => None,
        };
        let mut offset_ids: Vec<u64> = self
            .batch_ids(&format!("tasks/{task}/offsets"))
            .await?
            .into_iter()
            // Entries a compaction covers but could not delete yet.
            .filter(|id| newest_compacted.is_none_or(|cut| *id > cut))
            .collect();
        offset_ids.sort_unstable();
        let mut offsets = Vec::with_capacity(offset_ids.len());
        for batch_id in offset_ids {
            let path = self
                .location
                .child(&format!("tasks/{task}/offsets/{}", batch_name(batch_id)));
            let entry: OffsetsEntry = self
                .get_json(&path)
                .await?
                .ok_or_else(|| self.corrupt(&format!("{path} vanished")))?;
            offsets.push(entry);
        }
        let last_committed = self
            .batch_ids(&format!("tasks/{task}/commits"))
            .await?
            .into_iter()
            .chain(newest_compacted)
            .max();
        Ok(TaskLog {
            compacted,
            offsets,
            last_committed,
        })
    }

    /// Committed batch ids of `task` (not compacted ones), unordered.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure.
    pub async fn commit_ids(&self, task: u32) -> Result<Vec<u64>> {
        self.batch_ids(&format!("tasks/{task}/commits")).await
    }

    /// The commit entry of batch `batch_id` of `task`, if written.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure, [`EngineError::Checkpoint`] when unreadable.
    pub async fn read_commit(&self, task: u32, batch_id: u64) -> Result<Option<CommitEntry>> {
        let path = self
            .location
            .child(&format!("tasks/{task}/commits/{}", batch_name(batch_id)));
        self.get_json(&path).await
    }

    /// A sub-checkpoint rooted at `relative` (a stateful range's own task log).
    pub fn sub(&self, relative: &str) -> Checkpoint {
        Checkpoint::new(self.location.sub(relative))
    }

    /// Creates the JSON object `relative` unless it exists; returns what is stored afterwards
    /// (ours, or the value another writer created first).
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure, [`EngineError::Checkpoint`] when the stored
    /// value is unreadable.
    pub async fn create_or_read<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        relative: &str,
        value: T,
    ) -> Result<T> {
        let path = self.location.child(relative);
        let body = serde_json::to_vec(&value).map_err(|e| EngineError::Internal(e.to_string()))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .location
            .store
            .put_opts(&path, PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(value),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => self
                .get_json(&path)
                .await?
                .ok_or_else(|| self.corrupt(&format!("{path} exists but cannot be read"))),
            Err(e) => Err(EngineError::storage(path.to_string(), e)),
        }
    }

    /// Reads the JSON object `relative`, if present.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure, [`EngineError::Checkpoint`] when unreadable.
    pub async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        relative: &str,
    ) -> Result<Option<T>> {
        self.get_json(&self.location.child(relative)).await
    }

    /// The batch ids named by the files directly under `relative` (other names are skipped).
    async fn batch_ids(&self, relative: &str) -> Result<Vec<u64>> {
        Ok(self
            .list_names(relative)
            .await?
            .iter()
            .filter_map(|name| name.parse::<u64>().ok())
            .collect())
    }

    /// Writes `tasks/<task>/compacted/<batchId>`: `entry` stands for every batch up to its id.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure.
    pub async fn write_compacted(&self, task: u32, entry: &OffsetsEntry) -> Result<()> {
        let body = serde_json::to_vec(entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.put(
            &format!("tasks/{task}/compacted/{}", batch_name(entry.batch_id)),
            body,
        )
        .await
    }

    /// Deletes `relative`; an object already gone is no error.
    ///
    /// # Errors
    /// [`EngineError::Storage`] on store failure.
    pub async fn delete(&self, relative: &str) -> Result<()> {
        let path = self.location.child(relative);
        match self.location.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(EngineError::storage(path.to_string(), e)),
        }
    }

    /// Writes `tasks/<task>/offsets/<batchId>` if absent.
    ///
    /// # Errors
    /// [`EngineError::Fenced`] when the entry exists (another writer planned this batch).
    pub async fn write_offsets(&self, task: u32, entry: &OffsetsEntry) -> Result<()> {
        let path = self.location.child(&format!(
            "tasks/{task}/offsets/{}",
            batch_name(entry.batch_id)
        ));
        let body = serde_json::to_vec(entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.create(&path, body).await
    }

    /// Writes `tasks/<task>/commits/<batchId>` if absent.
    ///
    /// # Errors
    /// [`EngineError::Fenced`] when the entry exists.
    pub async fn write_commit(&self, task: u32, entry: &CommitEntry) -> Result<()> {
        let path = self.location.child(&format!(
            "tasks/{task}/commits/{}",
            batch_name(entry.batch_id)
        ));
        let body = serde_json::to_vec(entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.create(&path, body).await
    }

    /// Records that the sink accepted batch `batch_id` with `rows` rows:
    /// `tasks/<task>/sinks/<batchId>`, written after the sink and before the commit. A replay that
    /// finds it skips the sink (Kafka: no second transaction for a committed batch).
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn write_sink_record(
        &self,
        task: u32,
        batch_id: u64,
        rows: u64,
        epoch: Option<&Epoch>,
    ) -> Result<()> {
        let body = serde_json::to_vec(&SinkRecord {
            batch_id,
            rows,
            epoch: epoch.cloned(),
        })
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.put(
            &format!("tasks/{task}/sinks/{}", batch_name(batch_id)),
            body,
        )
        .await
    }

    /// The rows the sink accepted for batch `batch_id`, if [`Checkpoint::write_sink_record`]
    /// recorded it.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails, [`EngineError::Checkpoint`] when unreadable.
    pub async fn read_sink_record(&self, task: u32, batch_id: u64) -> Result<Option<u64>> {
        let path = self
            .location
            .child(&format!("tasks/{task}/sinks/{}", batch_name(batch_id)));
        Ok(self
            .get_json::<SinkRecord>(&path)
            .await?
            .map(|record| record.rows))
    }

    /// Counts one more failed attempt of batch `batch_id` of `task` in
    /// `tasks/<task>/attempts/<batchId>` (so attempts add up across worker restarts) and returns
    /// the count.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn record_failed_attempt(
        &self,
        task: u32,
        batch_id: u64,
        error: &str,
    ) -> Result<u32> {
        let relative = format!("tasks/{task}/attempts/{}", batch_name(batch_id));
        let previous = self
            .get_json::<FailedAttempts>(&self.location.child(&relative))
            .await
            .ok()
            .flatten()
            .map_or(0, |a| a.attempts);
        let attempts = FailedAttempts {
            batch_id,
            attempts: previous.saturating_add(1),
            last_error: error.to_string(),
        };
        let body =
            serde_json::to_vec(&attempts).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.put(&relative, body).await?;
        Ok(attempts.attempts)
    }

    /// Saves the learned models' state of a batch as `tasks/<task>/models/<batchId>` (before the
    /// batch's commit, so the state of every committed batch is on record).
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn write_models<T: Serialize>(
        &self,
        task: u32,
        batch_id: u64,
        state: &T,
    ) -> Result<()> {
        let body = serde_json::to_vec(state).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.put(
            &format!("tasks/{task}/models/{}", batch_name(batch_id)),
            body,
        )
        .await
    }

    /// The models' state saved with batch `batch_id`, if any.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails, [`EngineError::Checkpoint`] when unreadable.
    pub async fn read_models<T: serde::de::DeserializeOwned>(
        &self,
        task: u32,
        batch_id: u64,
    ) -> Result<Option<T>> {
        let path = self
            .location
            .child(&format!("tasks/{task}/models/{}", batch_name(batch_id)));
        self.get_json(&path).await
    }

    /// Overwrites an object (bad records: a replay writes the same content).
    pub async fn put(&self, relative: &str, body: Vec<u8>) -> Result<()> {
        let path = self.location.child(relative);
        self.location
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| EngineError::storage(path.to_string(), e))?;
        Ok(())
    }

    /// Creates `path` with `body`; if it exists with the same bytes (our own earlier write whose
    /// answer was lost), that is success too.
    async fn create(&self, path: &object_store::path::Path, body: Vec<u8>) -> Result<()> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .location
            .store
            .put_opts(path, PutPayload::from(body.clone()), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                let existing = self.get_bytes(path).await?;
                if existing.as_deref() == Some(body.as_slice()) {
                    return Ok(());
                }
                Err(EngineError::Fenced(format!(
                    "{}/{path} already exists: another worker is writing this task (or the checkpoint is shared)",
                    self.location.url
                )))
            }
            Err(e) => Err(EngineError::storage(path.to_string(), e)),
        }
    }

    async fn list(&self, dir: &object_store::path::Path) -> Result<Vec<object_store::path::Path>> {
        self.location
            .store
            .list(Some(dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| EngineError::storage(dir.to_string(), e))
    }

    async fn get_bytes(&self, path: &object_store::path::Path) -> Result<Option<bytes::Bytes>> {
        match self.location.store.get(path).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|e| EngineError::storage(path.to_string(), e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(EngineError::storage(path.to_string(), e)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &object_store::path::Path,
    ) -> Result<Option<T>> {
        let Some(bytes) = self.get_bytes(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.corrupt(&format!("{path}: {e}")))
    }

    fn corrupt(&self, message: &str) -> EngineError {
        EngineError::Checkpoint {
            location: self.location.url.clone(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch_id: u64) -> OffsetsEntry {
        OffsetsEntry {
            batch_id,
            planned_ms: 0,
            sources: BTreeMap::from([("events".to_string(), serde_json::json!({"end": batch_id}))]),
            epoch: None,
        }
    }

    #[tokio::test]
    async fn uncommitted_batch_is_found_and_second_writer_is_fenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint =
            Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
        checkpoint
            .write_offsets(0, &entry(0))
            .await
            .expect("offsets 0");
        let commit = CommitEntry {
            batch_id: 0,
            committed_ms: 1,
            input_rows: 1,
            output_rows: 1,
            epoch: None,
            quarantined: None,
            exchange: None,
        };
        checkpoint.write_commit(0, &commit).await.expect("commit 0");
        checkpoint
            .write_offsets(0, &entry(1))
            .await
            .expect("offsets 1");

        let log = checkpoint.read_task_log(0).await.expect("log");
        assert_eq!(log.last_committed, Some(0));
        assert_eq!(log.uncommitted().map(|o| o.batch_id), Some(1));
        assert_eq!(log.next_batch_id(), 2);

        // Writing the identical entry again is our own retry: fine. A different one is fenced.
        checkpoint
            .write_offsets(0, &entry(1))
            .await
            .expect("idempotent retry");
        let mut other = entry(1);
        other.planned_ms = 99;
        let again = checkpoint.write_offsets(0, &other).await;
        assert!(matches!(again, Err(EngineError::Fenced(_))), "{again:?}");
        // Another task's log is independent.
        assert_eq!(
            checkpoint
                .read_task_log(1)
                .await
                .expect("log")
                .next_batch_id(),
            0
        );
    }

    #[tokio::test]
    async fn partition_count_change_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint =
            Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
        let meta = |n| CheckpointMetadata {
            query_id: "q".into(),
            partitions: BTreeMap::from([("events".to_string(), n)]),
            created_ms: 0,
            stateful_operators: None,
            max_parallelism: None,
        };
        checkpoint.open_metadata(meta(4)).await.expect("create");
        assert_eq!(
            checkpoint
                .open_metadata(meta(4))
                .await
                .expect("reopen")
                .partitions["events"],
            4
        );
        let err = checkpoint
            .open_metadata(meta(8))
            .await
            .expect_err("changed")
            .to_string();
        assert!(
            err.contains("8 partitions") && err.contains("created with 4"),
            "{err}"
        );
    }
}
