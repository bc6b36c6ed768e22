//! File sink: Parquet, JSON lines or CSV files under a directory (local or `s3://`), with a commit
//! log.
//!
//! **Names.** Each (run, task, batch) writes its rows to
//! `part-<task>-<batchId>-<run>-000.<ext>` (task and batch zero-padded), where `run` is the
//! checkpoint's query id. A re-created query or a `stateless` upgrade starts a new checkpoint (a new
//! query id) whose batch ids restart at 0, so its files never overwrite an earlier run's. With
//! `partitionBy`, rows are split into Hive-style directories `col=value/` (values percent-escaped as
//! Spark does; null is `__HIVE_DEFAULT_PARTITION__`) and the partition columns are left out of the
//! files. A batch with no rows writes nothing. Object stores publish an object only when it is
//! complete (local: rename, S3: multipart complete), so readers never see half a file.
//!
//! **Commit log.** After a batch's files are written, and before the engine commits the batch in
//! its checkpoint, the sink writes `_sluice_log/<run>/<task>-<batchId>.json` ([`LogEntry`]) listing
//! the batch's files. The files of an output directory that count are exactly those listed in
//! the log ([`committed_files`]); Sluice's own file source reads only those when the directory has
//! a log. A batch replayed after its entry was written is not written again (the entry's files
//! stand). A batch replayed before that first deletes the files an earlier attempt left under its
//! names (with `partitionBy`, a replay whose rows land in other partitions would otherwise leave
//! orphans), then writes and logs anew. Names starting with `_` are skipped by Spark, DuckDB's Hive
//! reader and pyarrow datasets, so the log never mixes with the data.
//!
//! **Output modes.** Append only, as Spark's file sink; `complete` only with
//! `overwrite: partitions` ([`overwrite`]), where an entry replaces the entries it `supersedes`.

pub mod compaction;
pub mod overwrite;
pub mod retract;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::Schema;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sluice_crds::{FileFormat, FileOverwrite, FileSinkSpec};

use crate::error::{EngineError, Result};
use crate::fault::{CrashPoint, crash_point};
use crate::sink::Sink;
use crate::storage::Location;

/// Hive's name for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The directory of the commit log under the output location.
pub const LOG_DIR: &str = "_sluice_log";

/// One commit-log entry: the files of one (run, task, batch), written once they are all complete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// The checkpoint's query id.
    pub run: String,
    pub task: u32,
    pub batch_id: u64,
    /// Rows written by the batch.
    pub rows: u64,
    /// The batch's files, relative to the output location (`a=1/part-....parquet`).
    pub files: Vec<String>,
    /// `overwrite: partitions`: the live entries this one replaces (names under `_sluice_log/`,
    /// `<run>/<task>-<batchId>.json`); a reader following the log skips them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<String>,
    /// `overwrite: partitions`: per partition directory as the files list spells it (`""`
    /// without `partitionBy`), a hash of its rows ([`overwrite::partition_hash`]), so the next batch keeps an unchanged one's files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, String>,
    /// A compaction entry (`<task>-c<batchId>.json`): the files its merged `files` replace; a
    /// reader following the log skips them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

/// The configured file sink.
pub struct FileSink {
    location: Location,
    format: FileFormat,
    partition_by: Vec<String>,
    /// `overwrite: partitions`: each batch replaces the task's previous output.
    overwrite: bool,
    /// `compaction`: merging closed partitions' small files.
    compaction: Option<compaction::Compaction>,
    /// Batches the checkpoint retains: their files are never compacted.
    retain: u64,
    /// The checkpoint's query id: names files and log entries.
    run: String,
    /// Per task, the batch this process last started and whether it was written and logged: the
    /// batch after a logged one cannot be a replay, so only other writes (a task's first in this
    /// process, a retry) check the log.
    written: Mutex<HashMap<u32, (u64, bool)>>,
}

impl FileSink {
    /// A sink for `spec` whose files and log entries carry `run` (the checkpoint's query id).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unusable path.
    pub fn new(spec: &FileSinkSpec, run: &str) -> Result<Self> {
        Ok(Self {
            location: Location::parse(&spec.path)?,
            format: spec.format,
            partition_by: spec.partition_by.clone(),
            overwrite: spec.overwrite == Some(FileOverwrite::Partitions),
            compaction: spec
                .compaction
                .as_ref()
                .map(|c| {
                    let target_bytes =
                        sluice_crds::size::parse_size(&c.target_file_size).map_err(|m| {
                            EngineError::InvalidQuery(format!(
                                "sink.file.compaction.targetFileSize: {m}"
                            ))
                        })?;
                    Ok::<_, EngineError>(compaction::Compaction {
                        min_files: c.min_files.max(2) as usize,
                        target_bytes,
                        closed_after: u64::from(c.closed_after_batches.max(1)),
                    })
                })
                .transpose()?,
            retain: retention_default(),
            run: run.to_string(),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// The same sink, never compacting the files of the last `batches` batches (the checkpoint's
    /// `minBatchesToRetain`, which a restore may take back).
    pub fn retaining(mut self, batches: u64) -> Self {
        self.retain = batches;
        self
    }

    /// The data file name of (task, batch) of this run.
    pub fn file_name(&self, task: u32, batch_id: u64) -> String {
        format!(
            "{}-000.{}",
            self.file_stem(task, batch_id),
            self.extension()
        )
    }

    fn file_stem(&self, task: u32, batch_id: u64) -> String {
        format!("part-{task:05}-{batch_id:020}-{}", self.run)
    }

    fn log_path(&self, task: u32, batch_id: u64) -> object_store::path::Path {
        self.location.child(&format!(
            "{LOG_DIR}/{}/{task:05}-{batch_id:020}.json",
            self.run
        ))
    }

    async fn read_log_entry(&self, task: u32, batch_id: u64) -> Result<Option<LogEntry>> {
        let path = self.log_path(task, batch_id);
        match self.location.store.get(&path).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| EngineError::storage(path.to_string(), e))?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    EngineError::Sink(format!("unreadable commit-log entry {path}: {e}"))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(EngineError::storage(path.to_string(), e)),
        }
    }

    /// Deletes the files an earlier, unlogged attempt of (task, batch) left behind.
    async fn remove_unlogged(&self, task: u32, batch_id: u64) -> Result<()> {
        let stem = self.file_stem(task, batch_id);
        let prefix = (!self.location.prefix.as_ref().is_empty()).then_some(&self.location.prefix);
        let leftovers: Vec<object_store::path::Path> = self
            .location
            .store
            .list(prefix)
            .map_ok(|meta| meta.location)
            .try_filter(|path| {
                futures::future::ready(path.filename().is_some_and(|n| n.starts_with(&stem)))
            })
            .try_collect()
            .await
            .map_err(|e| EngineError::storage(self.location.url.clone(), e))?;
        for path in leftovers {
            match self.location.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(EngineError::storage(path.to_string(), e)),
            }
        }
        Ok(())
    }

    /// Writes `batches` (one schema) as a Parquet file at `path`, batch by batch.
    async fn write_parquet(
        &self,
        path: object_store::path::Path,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let fail = |e: &dyn std::fmt::Display| EngineError::Sink(format!("writing {path}: {e}"));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = BufWriter::new(self.location.store.clone(), path.clone());
        let mut writer = AsyncArrowWriter::try_new(writer, first.schema(), Some(props))?;
        for batch in batches {
            writer.write(batch).await.map_err(|e| fail(&e))?;
        }
        writer.close().await.map_err(|e| fail(&e))?;
        Ok(())
    }

    /// `relative` (a path under the output location) as the store spells it, e.g. `%` in a
    /// partition value percent-encoded once more: what the commit log lists.
    fn stored(&self, relative: &str) -> String {
        let path = self.location.child(relative);
        path.as_ref()
            .strip_prefix(self.location.prefix.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/')
            .to_string()
    }

    fn extension(&self) -> &'static str {
        match self.format {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
            FileFormat::Csv => "csv",
        }
    }

    /// Writes `batches` (one schema, at least one batch) as one file, batch by batch: no
    /// concatenated copy of the rows is made.
    /// Returns the file's path relative to the output location as the store spells it (what the
    /// commit log lists).
    async fn write_file(&self, relative: &str, batches: &[RecordBatch]) -> Result<String> {
        let path = self.location.child(relative);
        let stored = self.stored(relative);
        if batches.is_empty() {
            return Ok(stored);
        }
        let store = self.location.store.clone();
        let fail = |e: &dyn std::fmt::Display| EngineError::Sink(format!("writing {path}: {e}"));
        match self.format {
            FileFormat::Parquet => self.write_parquet(path.clone(), batches).await?,
            FileFormat::Json => {
                let mut buffer = Vec::new();
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                store
                    .put(&path, PutPayload::from(buffer))
                    .await
                    .map_err(|e| fail(&e))?;
            }
            FileFormat::Csv => {
                let mut buffer = Vec::new();
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buffer);
                for batch in batches {
                    writer.write(batch)?;
                }
                drop(writer);
                store
                    .put(&path, PutPayload::from(buffer))
                    .await
                    .map_err(|e| fail(&e))?;
            }
        }
        Ok(stored)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let follows_own_write = match self.written.lock() {
            Ok(mut written) => {
                let previous = written.insert(task, (batch_id, false));
                previous.is_some_and(|(last, done)| done && last.checked_add(1) == Some(batch_id))
            }
            Err(_) => false,
        };
        if !follows_own_write {
            // Possibly a replay: a logged batch stands as written; an unlogged one starts clean.
            if let Some(entry) = self.read_log_entry(task, batch_id).await? {
                if self.overwrite {
                    overwrite::clean_superseded(&self.location, task, batch_id).await?;
                }
                self.compact(task, batch_id).await?;
                self.remember(task, batch_id);
                return Ok(entry.rows);
            }
            self.remove_unlogged(task, batch_id).await?;
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let file_name = self.file_name(task, batch_id);
        let mut files = Vec::new();
        let mut supersedes = Vec::new();
        let mut partitions = BTreeMap::new();
        if self.overwrite {
            let (live, _) = overwrite::task_entries(&self.location, task).await?;
            let own = overwrite::entry_name(&self.run, task, batch_id);
            let current = overwrite::current(&live);
            // Unchanged partitions keep their files only when the previous version is one entry.
            let previous = match current.as_slice() {
                [(_, entry)] => Some(*entry),
                _ => None,
            };
            let batch = concat_batches(&first.schema(), &batches)?;
            let parts = if self.partition_by.is_empty() {
                vec![(String::new(), batch)]
            } else {
                split_by_partition(&batch, &self.partition_by)?
            };
            for (directory, part) in parts {
                let hash = overwrite::partition_hash(&part);
                let relative = if directory.is_empty() {
                    file_name.clone()
                } else {
                    format!("{directory}/{file_name}")
                };
                let directory = overwrite::directory_of(&self.stored(&relative)).to_string();
                let unchanged = previous
                    .filter(|p| hash.is_some() && p.partitions.get(&directory) == hash.as_ref());
                match unchanged {
                    Some(previous) => files.extend(
                        previous
                            .files
                            .iter()
                            .filter(|f| overwrite::directory_of(f) == directory)
                            .cloned(),
                    ),
                    None => files.push(self.write_file(&relative, &[part]).await?),
                }
                if let Some(hash) = hash {
                    partitions.insert(directory, hash);
                }
            }
            supersedes = live.into_keys().filter(|name| *name != own).collect();
        } else if self.partition_by.is_empty() {
            files.push(self.write_file(&file_name, &batches).await?);
        } else {
            let batch = concat_batches(&first.schema(), &batches)?;
            for (directory, part) in split_by_partition(&batch, &self.partition_by)? {
                files.push(
                    self.write_file(&format!("{directory}/{file_name}"), &[part])
                        .await?,
                );
            }
        }
        crash_point(CrashPoint::MidSinkWrite, batch_id);
        let entry = LogEntry {
            run: self.run.clone(),
            task,
            batch_id,
            rows,
            files,
            supersedes,
            partitions,
            replaces: Vec::new(),
        };
        let body = serde_json::to_vec(&entry).map_err(|e| EngineError::Internal(e.to_string()))?;
        let path = self.log_path(task, batch_id);
        self.location
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| EngineError::storage(path.to_string(), e))?;
        if self.overwrite {
            overwrite::clean_superseded(&self.location, task, batch_id).await?;
        }
        self.compact(task, batch_id).await?;
        self.remember(task, batch_id);
        Ok(rows)
    }
}

fn retention_default() -> u64 {
    sluice_crds::DEFAULT_MIN_BATCHES_TO_RETAIN
}

impl FileSink {
    fn remember(&self, task: u32, batch_id: u64) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(task, (batch_id, true));
        }
    }
}

/// The committed data files under an output `location` (relative paths, sorted, each once): those
/// listed in its commit log's live entries that no live entry supersedes (`overwrite:
/// partitions`). `None` when the directory has no commit log (not written by Sluice's file sink).
///
/// # Errors
/// [`EngineError::Storage`] when the store fails; [`EngineError::Sink`] for an unreadable entry.
pub async fn committed_files(location: &Location) -> Result<Option<Vec<String>>> {
    let log = location.child(LOG_DIR);
    let entries: Vec<object_store::path::Path> = location
        .store
        .list(Some(&log))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| EngineError::storage(location.url.clone(), e))?;
    if entries.is_empty() {
        return Ok(None);
    }
    let mut live = Vec::new();
    for path in entries {
        if !path.as_ref().ends_with(".json") {
            continue;
        }
        let name = path
            .as_ref()
            .strip_prefix(log.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/')
            .to_string();
        live.push((name, read_log_entry_at(location, &path).await?));
    }
    let dead: HashSet<&String> = live.iter().flat_map(|(_, e)| &e.supersedes).collect();
    let current: Vec<&LogEntry> = live
        .iter()
        .filter(|(name, _)| !dead.contains(name))
        .map(|(_, e)| e)
        .collect();
    let replaced: HashSet<&String> = current.iter().flat_map(|e| &e.replaces).collect();
    let mut files: Vec<String> = current
        .iter()
        .flat_map(|e| e.files.iter())
        .filter(|f| !replaced.contains(f))
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    Ok(Some(files))
}

/// The full path of `stored`, a file path relative to `location` as the commit log lists it
/// (already in the store's encoding: not encoded again).
///
/// # Errors
/// [`EngineError::Sink`] for a path the store cannot parse (a damaged log entry).
pub fn stored_path(location: &Location, stored: &str) -> Result<object_store::path::Path> {
    let prefix = location.prefix.as_ref();
    let full = if prefix.is_empty() {
        stored.to_string()
    } else {
        format!("{prefix}/{stored}")
    };
    object_store::path::Path::parse(&full)
        .map_err(|e| EngineError::Sink(format!("commit log names a bad path `{stored}`: {e}")))
}

/// Reads the commit-log entry at `path` (a full path under `location`).
///
/// # Errors
/// As [`committed_files`].
pub async fn read_log_entry_at(
    location: &Location,
    path: &object_store::path::Path,
) -> Result<LogEntry> {
    let bytes = location
        .store
        .get(path)
        .await
        .map_err(|e| EngineError::storage(path.to_string(), e))?
        .bytes()
        .await
        .map_err(|e| EngineError::storage(path.to_string(), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Sink(format!("unreadable commit-log entry {path}: {e}")))
}

/// Splits `batch` by the values of `columns`: `("a=1/b=x", rows without a and b)` per distinct
/// combination, in sorted order.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when a column is not in the result.
pub fn split_by_partition(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<Vec<(String, RecordBatch)>> {
    let schema = batch.schema();
    let mut key_columns: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for name in columns {
        let column = batch.column_by_name(name).ok_or_else(|| {
            EngineError::InvalidQuery(format!(
                "sink.file.partitionBy: column `{name}` is not in the query result ({})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        key_columns.push(column.clone());
    }
    let sort: Vec<SortColumn> = key_columns
        .iter()
        .map(|values| SortColumn {
            values: values.clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(batch, &lexsort_to_indices(&sort, None)?)?;
    let sorted_keys: Vec<ArrayRef> = columns
        .iter()
        .filter_map(|name| sorted.column_by_name(name).cloned())
        .collect();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !columns.contains(schema.field(*i).name()))
        .collect();
    let data = sorted.project(&keep)?;
    let data = RecordBatch::try_new(
        Arc::new(Schema::new(data.schema().fields().clone())),
        data.columns().to_vec(),
    )?;
    let ranges = arrow::compute::partition(&sorted_keys)?;
    let options = FormatOptions::default();
    let formatters = sorted_keys
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for range in ranges.ranges() {
        let directory = columns
            .iter()
            .zip(formatters.iter().zip(&sorted_keys))
            .map(|(name, (formatter, key))| {
                let value = if key.is_null(range.start) {
                    NULL_PARTITION.to_string()
                } else {
                    escape_partition_value(&formatter.value(range.start).to_string())
                };
                format!("{name}={value}")
            })
            .collect::<Vec<_>>()
            .join("/");
        out.push((directory, data.slice(range.start, range.end - range.start)));
    }
    Ok(out)
}

/// Percent-escapes characters that cannot appear in a path segment, as Spark's
/// `ExternalCatalogUtils.escapePathName` does (`/`, `=`, `%`, `:`, control characters, ...).
pub fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let needs_escape = c.is_control()
            || matches!(
                c,
                '"' | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\u{7f}'
                    | '{'
                    | '['
                    | ']'
                    | '^'
            );
        if needs_escape {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}
