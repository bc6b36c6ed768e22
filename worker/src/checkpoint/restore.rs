//! Listing a checkpoint's retained batches and restoring a query to one of them
//! (`sluice-worker checkpoint list|show|restore`, the worker side of `spec.restore`).
//!
//! A batch N is *retained* in a task when its log can still be rebuilt as of N: N is the newest
//! compacted batch or an offsets entry after it (retention folds and deletes older ones, see
//! `engine/retention.rs`), it is committed, and a state snapshot at or below N with every delta up
//! to N is still on record. Restoring to N (all tasks) writes a new checkpoint generation
//! ([`super::generation`]) that holds a copy of the current generation's log, sink records,
//! models, state files and bad records up to N, and `metadata.json` with a new query id. A worker
//! starting on it loads the state as of N and plans batch N+1 from N's end offsets, so the input
//! after N is read again (Spark's recovery from an older checkpoint does the same by deleting the
//! later `offsets`/`commits` entries; here the old generation is kept untouched instead).
//!
//! Steps, each safe to repeat: write the new generation's record (`complete: false`), copy, point
//! `restores/current.json` at it, prepare the sink ([`crate::sink::replay`]; the file sink's
//! later entries are retracted), mark the record complete. A worker refuses an incomplete current
//! generation; running the restore again finishes it. Restoring to the batch the current
//! generation was already restored to changes nothing.
//!
//! The query must be stopped while it runs (the operator suspends the workers first): a worker
//! still running on the old generation would not see the switch.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde::Serialize;
use sluice_crds::SinkSpec;

use super::generation::{Generations, RESTORES_DIR, RestoreRecord};
use super::{Checkpoint, CheckpointMetadata, CommitEntry, OffsetsEntry, SinkRecord, TaskLog};
use crate::error::{EngineError, Result};
use crate::sink::replay::{ReplayVerdict, replay_verdict};
use crate::state_file::{file_event_time, state_file_id};
use crate::storage::Location;

/// One retained batch of a task, as `checkpoint list` shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    pub batch_id: u64,
    /// The batch stands for every batch up to it (retention's compacted entry).
    pub compacted: bool,
    pub committed: bool,
    /// When the batch was planned / committed, ms since the Unix epoch.
    pub planned_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_rows: Option<u64>,
    /// Rows the sink accepted (the commit's figure, else the sink record's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_rows: Option<u64>,
    /// The watermark after the batch (its state file's), ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Source name → the batch's end offsets, summarised ([`summarize_range`]).
    pub offsets: BTreeMap<String, String>,
}

/// A task's retained batches.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskBatches {
    pub task: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_committed: Option<u64>,
    /// Oldest first; the restorable ones are those with `committed`.
    pub batches: Vec<BatchSummary>,
}

/// What `checkpoint list` reports.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointListing {
    /// The checkpoint location as given.
    pub location: String,
    /// The current generation (0: the location itself).
    pub generation: u32,
    pub query_id: String,
    /// What the current generation was restored from, if it is a restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<RestoreRecord>,
    pub tasks: Vec<TaskBatches>,
}

/// A state file of a batch.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    pub name: String,
    pub bytes: u64,
}

/// Everything on record about one batch of one task (`checkpoint show`).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchDetail {
    pub task: u32,
    pub batch_id: u64,
    /// The offsets entry (the compacted one when the batch is the newest compacted batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetsEntry>,
    pub compacted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkRecord>,
    /// The batch's own state files (delta or snapshot).
    pub state_files: Vec<StateFile>,
    /// The watermark after the batch, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Learned models' state saved with the batch.
    pub models: bool,
    /// Whether the query can be restored to this batch in this task (else the reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_restorable: Option<String>,
}

/// What a restore did.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreOutcome {
    /// The generation the query now runs on.
    pub generation: u32,
    pub from_generation: u32,
    pub batch_id: u64,
    /// False when the current generation already was the restore of this batch.
    pub created: bool,
    /// Rows the batches after `batch_id` had written (what the replay writes again).
    pub rows_replayed: u64,
    /// File sink: commit-log entries of the old run taken back.
    pub retracted_entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn batch_name(batch_id: u64) -> String {
    format!("{batch_id:020}")
}

/// The metadata of `checkpoint`, or a refusal when there is none.
async fn metadata(checkpoint: &Checkpoint) -> Result<CheckpointMetadata> {
    checkpoint.stored_metadata().await?.ok_or_else(|| {
        EngineError::RestoreRefused(format!(
            "{} has no metadata.json: the query never ran with this checkpoint",
            checkpoint.location().url
        ))
    })
}

/// Task count of a checkpoint (the engine's: the largest partition count of its sources).
fn task_count(metadata: &CheckpointMetadata) -> u32 {
    metadata
        .partitions
        .values()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1)
}

async fn read<T: serde::de::DeserializeOwned>(
    checkpoint: &Checkpoint,
    relative: &str,
) -> Result<Option<T>> {
    let Some(bytes) = checkpoint.get_relative(relative).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EngineError::Checkpoint {
            location: checkpoint.location().url.clone(),
            message: format!("{relative}: {e}"),
        })
}

async fn commit_of(
    checkpoint: &Checkpoint,
    task: u32,
    batch_id: u64,
) -> Result<Option<CommitEntry>> {
    read(
        checkpoint,
        &format!("tasks/{task}/commits/{}", batch_name(batch_id)),
    )
    .await
}

async fn sink_record_of(
    checkpoint: &Checkpoint,
    task: u32,
    batch_id: u64,
) -> Result<Option<SinkRecord>> {
    read(
        checkpoint,
        &format!("tasks/{task}/sinks/{}", batch_name(batch_id)),
    )
    .await
}

/// The task's state file names with their batch ids.
async fn state_files(checkpoint: &Checkpoint, task: u32) -> Result<Vec<(String, u64, bool)>> {
    Ok(checkpoint
        .list_names(&format!("tasks/{task}/state"))
        .await?
        .into_iter()
        .filter_map(|name| state_file_id(&name).map(|(id, snapshot)| (name, id, snapshot)))
        .collect())
}

async fn watermark_of(checkpoint: &Checkpoint, task: u32, batch_id: u64) -> Result<Option<i64>> {
    for (name, id, _) in state_files(checkpoint, task).await? {
        if id != batch_id {
            continue;
        }
        let relative = format!("tasks/{task}/state/{name}");
        if let Some(body) = checkpoint.get_relative(&relative).await? {
            return Ok(file_event_time(&body)
                .map_err(|e| EngineError::Checkpoint {
                    location: checkpoint.location().url.clone(),
                    message: format!("{relative}: {e}"),
                })?
                .watermark_ms);
        }
    }
    Ok(None)
}

/// A short text for a source range: file lists by count and last file, Kafka partitions by their
/// end offsets, anything else as compact JSON.
pub fn summarize_range(range: &serde_json::Value) -> String {
    if let Some(files) = range.get("files").and_then(|f| f.as_array()) {
        let last = files
            .last()
            .and_then(|f| {
                f.as_str()
                    .or_else(|| f.get("path").and_then(|p| p.as_str()))
            })
            .map(str::to_string)
            .unwrap_or_default();
        let last = last.rsplit('/').next().unwrap_or_default().to_string();
        return match files.len() {
            0 => "no files".into(),
            1 => format!("1 file ({last})"),
            n => format!("{n} files (last {last})"),
        };
    }
    if let Some(partitions) = range.get("partitions").and_then(|p| p.as_object()) {
        return partitions
            .iter()
            .map(|(p, r)| match r.get(1) {
                Some(end) => format!("{p}@{end}"),
                None => format!("{p}@{r}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let text = range.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(79).collect::<String>())
    } else {
        text
    }
}

/// The retained batches of every task of the current generation.
///
/// # Errors
/// [`EngineError::RestoreRefused`] when the checkpoint has no metadata (never ran); storage and
/// checkpoint errors.
pub async fn list(generations: &Generations) -> Result<CheckpointListing> {
    let generation = generations.current().await?;
    let checkpoint = generations.checkpoint(generation);
    let metadata = metadata(&checkpoint).await?;
    let mut tasks = Vec::new();
    for task in 0..task_count(&metadata) {
        let log = checkpoint.read_task_log(task).await?;
        let mut batches = Vec::new();
        let entries = log
            .compacted
            .iter()
            .map(|e| (e, true))
            .chain(log.offsets.iter().map(|e| (e, false)));
        for (entry, compacted) in entries {
            let commit = commit_of(&checkpoint, task, entry.batch_id).await?;
            let sink_rows = sink_record_of(&checkpoint, task, entry.batch_id)
                .await?
                .map(|r| r.rows);
            batches.push(BatchSummary {
                batch_id: entry.batch_id,
                compacted,
                committed: compacted || log.last_committed.is_some_and(|c| entry.batch_id <= c),
                planned_ms: entry.planned_ms,
                committed_ms: commit.as_ref().map(|c| c.committed_ms),
                input_rows: commit.as_ref().map(|c| c.input_rows),
                output_rows: commit.as_ref().map(|c| c.output_rows).or(sink_rows),
                watermark_ms: watermark_of(&checkpoint, task, entry.batch_id).await?,
                offsets: entry
                    .sources
                    .iter()
                    .map(|(source, range)| (source.clone(), summarize_range(range)))
                    .collect(),
            });
        }
        tasks.push(TaskBatches {
            task,
            last_committed: log.last_committed,
            batches,
        });
    }
    Ok(CheckpointListing {
        location: generations.base().url.clone(),
        generation,
        query_id: metadata.query_id,
        restored_from: generations.record(generation).await?,
        tasks,
    })
}

/// Everything on record about batch `batch_id` in each task of the current generation.
///
/// # Errors
/// As [`list`].
pub async fn show(generations: &Generations, batch_id: u64) -> Result<Vec<BatchDetail>> {
    let checkpoint = generations.checkpoint(generations.current().await?);
    let metadata = metadata(&checkpoint).await?;
    let mut details = Vec::new();
    for task in 0..task_count(&metadata) {
        let log = checkpoint.read_task_log(task).await?;
        let compacted = log
            .compacted
            .as_ref()
            .is_some_and(|c| c.batch_id == batch_id);
        let offsets = log
            .compacted
            .iter()
            .chain(&log.offsets)
            .find(|e| e.batch_id == batch_id)
            .cloned();
        let files = state_files(&checkpoint, task).await?;
        let mut own = Vec::new();
        for (name, id, _) in &files {
            if *id == batch_id {
                let bytes = checkpoint
                    .get_relative(&format!("tasks/{task}/state/{name}"))
                    .await?
                    .map_or(0, |b| b.len() as u64);
                own.push(StateFile {
                    name: name.clone(),
                    bytes,
                });
            }
        }
        details.push(BatchDetail {
            task,
            batch_id,
            offsets,
            compacted,
            commit: commit_of(&checkpoint, task, batch_id).await?,
            sink: sink_record_of(&checkpoint, task, batch_id).await?,
            state_files: own,
            watermark_ms: watermark_of(&checkpoint, task, batch_id).await?,
            models: checkpoint
                .get_relative(&format!("tasks/{task}/models/{}", batch_name(batch_id)))
                .await?
                .is_some(),
            not_restorable: restorable(&log, &files, task, batch_id).err(),
        });
    }
    Ok(details)
}

/// Whether task `task`'s log and state files allow a restore to `batch_id`; else the reason.
fn restorable(
    log: &TaskLog,
    state_files: &[(String, u64, bool)],
    task: u32,
    batch_id: u64,
) -> std::result::Result<(), String> {
    let first = log
        .compacted
        .as_ref()
        .or(log.offsets.first())
        .map(|e| e.batch_id);
    let last = log
        .offsets
        .last()
        .or(log.compacted.as_ref())
        .map(|e| e.batch_id);
    let (Some(first), Some(last)) = (first, last) else {
        return Err(format!(
            "batch {batch_id} is not retained: task {task} has no batch yet"
        ));
    };
    let committed = log.last_committed.filter(|c| *c >= first);
    let retained = match committed {
        Some(c) => format!("task {task} retains batches {first}..={c}"),
        None => format!("task {task} has no committed batch"),
    };
    if batch_id < first || batch_id > last {
        return Err(format!(
            "batch {batch_id} is not retained: {retained} (spec.checkpoint.minBatchesToRetain)"
        ));
    }
    if committed.is_none_or(|c| batch_id > c) {
        return Err(format!("batch {batch_id} is not committed: {retained}"));
    }
    // Stateful: a snapshot at or below the batch and every delta after it up to the batch.
    if !state_files.is_empty() {
        let floor = state_files
            .iter()
            .filter(|(_, id, snapshot)| *snapshot && *id <= batch_id)
            .map(|(_, id, _)| *id)
            .max();
        let Some(floor) = floor else {
            return Err(format!(
                "batch {batch_id} is not retained: task {task} has no state snapshot at or below it"
            ));
        };
        for id in floor + 1..=batch_id {
            if !state_files.iter().any(|(_, i, s)| *i == id && !*s) {
                return Err(format!(
                    "batch {batch_id} is not retained: task {task} lacks the state delta of batch {id}"
                ));
            }
        }
    }
    Ok(())
}

/// Restores the query whose checkpoint is `generations` and whose sink is `sink` to batch
/// `batch_id` (see the module docs).
///
/// # Errors
/// [`EngineError::RestoreRefused`] naming the reason: the batch is not retained or not committed
/// in some task, or the sink cannot take the replay ([`replay_verdict`]); storage errors (the
/// restore can then be run again).
pub async fn restore(
    generations: &Generations,
    sink: &SinkSpec,
    batch_id: u64,
) -> Result<RestoreOutcome> {
    let current = generations.current().await?;
    if let Some(record) = generations.record(current).await?
        && record.batch_id == batch_id
    {
        // Already the restore of this batch: finish it if a previous run stopped half-way.
        let retracted = if record.complete {
            0
        } else {
            let retracted = prepare_sink(sink, &record).await?;
            generations
                .write_record(&RestoreRecord {
                    complete: true,
                    ..record.clone()
                })
                .await?;
            retracted
        };
        return Ok(RestoreOutcome {
            generation: current,
            from_generation: record.from_generation,
            batch_id,
            created: false,
            rows_replayed: 0,
            retracted_entries: retracted,
            warning: None,
        });
    }

    let source = generations.checkpoint(current);
    let metadata = metadata(&source).await?;
    let mut rows_after = 0u64;
    for task in 0..task_count(&metadata) {
        let log = source.read_task_log(task).await?;
        let files = state_files(&source, task).await?;
        restorable(&log, &files, task, batch_id).map_err(EngineError::RestoreRefused)?;
        for entry in log.offsets.iter().filter(|e| e.batch_id > batch_id) {
            let committed = commit_of(&source, task, entry.batch_id)
                .await?
                .map_or(0, |c| c.output_rows);
            let accepted = sink_record_of(&source, task, entry.batch_id)
                .await?
                .map_or(0, |r| r.rows);
            rows_after += committed.max(accepted);
        }
    }
    let warning = match replay_verdict(sink, rows_after) {
        ReplayVerdict::Refused(reason) => return Err(EngineError::RestoreRefused(reason)),
        ReplayVerdict::AllowedWithWarning(warning) => Some(warning),
        ReplayVerdict::Allowed => None,
    };

    // A previous attempt that stopped before switching generations is reused.
    let mut target = None;
    let existing = generations.restored().await?;
    for n in &existing {
        if let Some(record) = generations.record(*n).await?
            && !record.complete
            && record.from_generation == current
            && record.batch_id == batch_id
        {
            target = Some(*n);
        }
    }
    let generation = match target {
        Some(n) => n,
        None => existing.iter().max().copied().unwrap_or(0).max(current) + 1,
    };
    let record = RestoreRecord {
        generation,
        from_generation: current,
        batch_id,
        from_query_id: metadata.query_id.clone(),
        created_ms: chrono::Utc::now().timestamp_millis(),
        complete: false,
    };
    generations.write_record(&record).await?;
    let destination = generations.checkpoint(generation);
    copy_generation(&source, &destination, &metadata, batch_id, current == 0).await?;
    generations.set_current(generation).await?;
    let retracted = prepare_sink(sink, &record).await?;
    generations
        .write_record(&RestoreRecord {
            complete: true,
            ..record
        })
        .await?;
    Ok(RestoreOutcome {
        generation,
        from_generation: current,
        batch_id,
        created: true,
        rows_replayed: rows_after,
        retracted_entries: retracted,
        warning,
    })
}

/// Makes the sink ready for the replay; returns the file sink's retracted entries.
async fn prepare_sink(sink: &SinkSpec, record: &RestoreRecord) -> Result<u64> {
    match &sink.file {
        Some(file) => Ok(crate::sink::file::retract::retract_after(
            &Location::parse(&file.path)?,
            &record.from_query_id,
            record.batch_id,
        )
        .await?
        .entries),
        None => Ok(0),
    }
}

/// Copies what a worker needs to continue after `batch_id` from `source` to `destination`:
/// offsets, compacted entries, commits, sink records, models, state files and bad records up to
/// the batch, and `metadata.json` with a new query id (kept when an earlier attempt wrote one).
/// Epoch claims and failed attempts stay behind; so do other generations when `source` is the
/// base location.
async fn copy_generation(
    source: &Checkpoint,
    destination: &Checkpoint,
    metadata: &CheckpointMetadata,
    batch_id: u64,
    source_is_base: bool,
) -> Result<()> {
    let location = source.location();
    let prefix = (!location.prefix.as_ref().is_empty()).then_some(&location.prefix);
    let paths: Vec<object_store::path::Path> = location
        .store
        .list(prefix)
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| EngineError::storage(location.url.clone(), e))?;
    for path in paths {
        let relative = path
            .as_ref()
            .strip_prefix(location.prefix.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/')
            .to_string();
        if source_is_base && relative.starts_with(&format!("{RESTORES_DIR}/")) {
            continue;
        }
        if !carried_over(&relative, batch_id) {
            continue;
        }
        if let Some(body) = source.get_relative(&relative).await? {
            destination.put(&relative, body.to_vec()).await?;
        }
    }
    let query_id = match destination.stored_metadata().await? {
        Some(written) => written.query_id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let fresh = CheckpointMetadata {
        query_id,
        ..metadata.clone()
    };
    let body =
        serde_json::to_vec_pretty(&fresh).map_err(|e| EngineError::Internal(e.to_string()))?;
    destination.put("metadata.json", body).await
}

/// Whether the object at `relative` belongs in a generation restored to `batch_id`.
fn carried_over(relative: &str, batch_id: u64) -> bool {
    let parts: Vec<&str> = relative.split('/').collect();
    match parts.as_slice() {
        [
            "tasks",
            _,
            "offsets" | "commits" | "sinks" | "models" | "compacted",
            name,
        ] => name.parse::<u64>().is_ok_and(|id| id <= batch_id),
        ["tasks", _, "state", name] => state_file_id(name).is_some_and(|(id, _)| id <= batch_id),
        ["bad-records", .., name] => name
            .strip_prefix("batch-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|id| id <= batch_id),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
