//! `compaction`: merging a task's small files of closed partition directories (append mode),
//! under the commit log.
//!
//! **When.** Every `closedAfterBatches` batches, after the batch's own entry, a task looks at its
//! own run's files: a directory is closed when none of the task's last `closedAfterBatches`
//! batches wrote into it (without `partitionBy`, age alone closes a file). Files of batches the
//! checkpoint retains are left alone: a restore takes those batches back file by file
//! ([`super::retract`]), which a merged file would make impossible.
//!
//! **How.** A round writes, in order: a `<task>-c<batchId>.pending` marker holding the planned
//! entry; the merged files (`part-<task>-c<lastBatch>-<run>.<ext>`, oldest files first, each up to
//! `targetFileSize`); the entry `<task>-c<batchId>.json`, which lists the merged files in `files`
//! and the originals in `replaces`; then deletes the originals and the marker. The entry is the
//! commit: a reader following the log ([`super::committed_files`]) counts the originals before it
//! and the merged files after it, never both. A crash before the entry leaves the originals (the
//! next round or the batch's replay deletes the merged files the marker names); a crash after it
//! leaves the merged files (the same deletes the originals). Parquet files are rewritten; JSON
//! lines are concatenated; CSV files are concatenated without the repeated header lines.

use std::collections::{BTreeMap, HashSet};

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use sluice_crds::FileFormat;

use super::overwrite::directory_of;
use super::{FileSink, LOG_DIR, LogEntry, read_log_entry_at, stored_path};
use crate::error::{EngineError, Result};
use crate::fault::{CrashPoint, crash_point};

/// The parsed `sink.file.compaction` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Closed files a directory needs before it is compacted.
    pub min_files: usize,
    /// Merged files stop growing at this many bytes.
    pub target_bytes: u64,
    /// Batches without a write that close a directory; also the rounds' period.
    pub closed_after: u64,
}

const PENDING: &str = ".pending";

/// The batch id of a batch entry name `<task>-<batchId>.json` (not a compaction entry).
fn batch_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.split_once('-')?.1.parse().ok()
}

fn task_of(name: &str) -> Option<u32> {
    name.split_once('-')?.0.parse().ok()
}

impl FileSink {
    /// Runs a compaction round for `task` after its batch `batch_id` if one is due, first finishing
    /// any round a crash interrupted. Returns the number of original files merged away.
    ///
    /// # Errors
    /// [`EngineError::Storage`] / [`EngineError::Sink`] when the store fails or a file or an
    /// entry does not read back; the batch is then retried, and the round with it.
    pub(super) async fn compact(&self, task: u32, batch_id: u64) -> Result<usize> {
        let Some(settings) = self.compaction else {
            return Ok(0);
        };
        let dir = self.location.child(&format!("{LOG_DIR}/{}", self.run));
        let paths: Vec<object_store::path::Path> = self
            .location
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| EngineError::storage(dir.to_string(), e))?;
        let mut entries = BTreeMap::new();
        for path in &paths {
            let Some(name) = path.filename() else {
                continue;
            };
            if task_of(name) != Some(task) {
                continue;
            }
            if let Some(stem) = name.strip_suffix(PENDING) {
                self.finish_round(path, &dir.clone().join(format!("{stem}.json")))
                    .await?;
            } else if name.ends_with(".json") {
                entries.insert(
                    name.to_string(),
                    read_log_entry_at(&self.location, path).await?,
                );
            }
        }
        if !batch_id.is_multiple_of(settings.closed_after) {
            return Ok(0);
        }
        let replaced: HashSet<&String> = entries.values().flat_map(|e| &e.replaces).collect();
        let recent = batch_id.saturating_sub(settings.closed_after);
        let horizon = batch_id.saturating_sub(settings.closed_after.max(self.retain));
        let open: HashSet<&str> = if self.partition_by.is_empty() {
            HashSet::new()
        } else {
            entries
                .iter()
                .filter(|(name, _)| batch_of(name).is_some_and(|b| b > recent))
                .flat_map(|(_, e)| e.files.iter().map(|f| directory_of(f)))
                .collect()
        };
        // Directory → its closed files, oldest batch first.
        let mut closed: BTreeMap<&str, Vec<(u64, &String)>> = BTreeMap::new();
        for (name, entry) in &entries {
            let Some(batch) = batch_of(name) else {
                continue;
            };
            if batch > horizon {
                continue;
            }
            for file in &entry.files {
                let directory = directory_of(file);
                if !replaced.contains(file) && !open.contains(directory) {
                    closed.entry(directory).or_default().push((batch, file));
                }
            }
        }
        let mut planned = LogEntry {
            run: self.run.clone(),
            task,
            batch_id,
            rows: 0,
            files: Vec::new(),
            supersedes: Vec::new(),
            partitions: BTreeMap::new(),
            replaces: Vec::new(),
        };
        let mut groups = Vec::new();
        for (directory, mut files) in closed {
            if files.len() < settings.min_files {
                continue;
            }
            files.sort();
            let mut group: Vec<(u64, &String)> = Vec::new();
            let mut bytes = 0;
            for (batch, file) in files {
                let size = self
                    .location
                    .store
                    .head(&stored_path(&self.location, file)?)
                    .await
                    .map_err(|e| EngineError::storage(file.clone(), e))?
                    .size;
                if !group.is_empty() && bytes + size > settings.target_bytes {
                    groups.push((directory, std::mem::take(&mut group)));
                    bytes = 0;
                }
                group.push((batch, file));
                bytes += size;
            }
            groups.push((directory, group));
        }
        groups.retain(|(_, group)| group.len() > 1);
        if groups.is_empty() {
            return Ok(0);
        }
        for (directory, group) in &groups {
            let last = group.last().map_or(0, |(b, _)| *b);
            let name = format!(
                "part-{task:05}-c{last:020}-{}.{}",
                self.run,
                self.extension()
            );
            planned.files.push(if directory.is_empty() {
                name
            } else {
                format!("{directory}/{name}")
            });
            planned
                .replaces
                .extend(group.iter().map(|(_, f)| (*f).clone()));
        }
        let stem = format!("{task:05}-c{batch_id:020}");
        let marker = dir.clone().join(format!("{stem}{PENDING}"));
        self.put_entry(&marker, &planned).await?;
        let mut rows = 0;
        for ((_, group), merged) in groups.iter().zip(&planned.files) {
            let originals: Vec<&String> = group.iter().map(|(_, f)| *f).collect();
            rows += self.merge(&originals, merged).await?;
            crash_point(CrashPoint::MidCompaction, batch_id);
        }
        planned.rows = rows;
        let entry = dir.clone().join(format!("{stem}.json"));
        self.put_entry(&entry, &planned).await?;
        self.finish_round(&marker, &entry).await?;
        Ok(planned.replaces.len())
    }

    async fn put_entry(&self, path: &object_store::path::Path, entry: &LogEntry) -> Result<()> {
        let body = serde_json::to_vec(entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.location
            .store
            .put(path, PutPayload::from(body))
            .await
            .map_err(|e| EngineError::storage(path.to_string(), e))?;
        Ok(())
    }

    /// Completes a round from its marker: committed (`entry` exists) deletes the originals,
    /// otherwise the merged files; then the marker.
    async fn finish_round(
        &self,
        marker: &object_store::path::Path,
        entry: &object_store::path::Path,
    ) -> Result<()> {
        let planned = read_log_entry_at(&self.location, marker).await?;
        let committed = match self.location.store.head(entry).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(EngineError::storage(entry.to_string(), e)),
        };
        let doomed = if committed {
            &planned.replaces
        } else {
            &planned.files
        };
        for (i, file) in doomed.iter().enumerate() {
            delete(&self.location, &stored_path(&self.location, file)?).await?;
            if i == 0 && committed {
                crash_point(CrashPoint::MidSinkCleanup, planned.batch_id);
            }
        }
        delete(&self.location, marker).await
    }

    /// Writes the rows of `originals` (stored paths, in order) as the file `merged` (a stored
    /// path); returns the rows for Parquet, 0 for text formats (not parsed).
    async fn merge(&self, originals: &[&String], merged: &str) -> Result<u64> {
        let mut bodies = Vec::with_capacity(originals.len());
        for file in originals {
            let path = stored_path(&self.location, file)?;
            let bytes = self
                .location
                .store
                .get(&path)
                .await
                .map_err(|e| EngineError::storage(path.to_string(), e))?
                .bytes()
                .await
                .map_err(|e| EngineError::storage(path.to_string(), e))?;
            bodies.push(bytes);
        }
        let target = stored_path(&self.location, merged)?;
        match self.format {
            FileFormat::Parquet => {
                let mut batches: Vec<RecordBatch> = Vec::new();
                for body in bodies {
                    let reader =
                        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                            body,
                        )?
                        .build()?;
                    for batch in reader {
                        batches.push(batch?);
                    }
                }
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                self.write_parquet(target, &batches).await?;
                Ok(rows)
            }
            FileFormat::Json | FileFormat::Csv => {
                let mut out = Vec::new();
                for (i, body) in bodies.iter().enumerate() {
                    let mut body: &[u8] = body;
                    if self.format == FileFormat::Csv && i > 0 {
                        // Every file starts with the same header line.
                        body = memchr::memchr(b'\n', body)
                            .and_then(|n| body.get(n + 1..))
                            .unwrap_or_default();
                    }
                    out.extend_from_slice(body);
                }
                self.location
                    .store
                    .put(&target, PutPayload::from(out))
                    .await
                    .map_err(|e| EngineError::storage(target.to_string(), e))?;
                Ok(0)
            }
        }
    }
}

async fn delete(
    location: &crate::storage::Location,
    path: &object_store::path::Path,
) -> Result<()> {
    match location.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(EngineError::storage(path.to_string(), e)),
    }
}
