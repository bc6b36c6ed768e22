//! File source: new files under a directory (local or `s3://`), JSON lines, CSV or Parquet.
//!
//! As Spark's `FileStreamSource`: every file is read once, whole; which files were read is the
//! offsets log itself (each range lists its files). Files are hashed by their path (FNV-1a, stable
//! across versions and machines) into `partitions` virtual partitions, one task each, so several
//! replicas split a directory without coordination. Within a task, new files are taken oldest first
//! (by modification time, then path), at most `maxFilesPerTrigger` per batch.
//!
//! With a memory budget ([`Source::set_memory_budget`], the worker's `--memory-budget`), a batch
//! also takes at most [`crate::memory::ReadSizes::batch_bytes`] of input, at least one file: a
//! JSON-lines file larger than that is read in pieces, one batch each, which the offsets log lists
//! with their byte offsets (`split.rs`); CSV and Parquet files are taken whole.
//!
//! Names starting with `.` or `_` are ignored, so writers can create a file under a hidden name and
//! rename it when complete (the usual way to publish files atomically). A directory written by
//! Sluice's file sink has a commit log (`_sluice_log/`): then only the files its entries list are
//! read, so a query reading another query's output never sees a batch that is not committed.

mod split;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetResultPayload, ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sluice_crds::{FileFormat, FileSourceSpec, SourceSpec};

use crate::error::{EngineError, Result};
use crate::memory::ReadSizes;
use crate::schema::arrow_schema;
use crate::source::decode::{BadRecord, TextFileDecoder, TextFormat, decode_parquet};
use crate::source::parquet::ObjectChunkReader;
use crate::source::scan::ScanPushdown;
use crate::source::{PlanLimit, Range, ReadOutput, Source, SourceTask, decode_range, encode_range};
use crate::storage::Location;
use split::{LineSplit, Pending, reaches_end, take_batch};

/// One file of a range, by its path relative to the source directory, or a piece of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileEntry {
    pub path: String,
    /// Size of the whole file, bytes.
    pub size: u64,
    /// A piece of a JSON-lines file: the lines that begin at byte offsets `start..end`
    /// (`split.rs`). Both absent (and not written to the offsets log) for the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// End of the piece (exclusive), bytes; see `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
}

/// A file source range: the files of one batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FileRange {
    pub files: Vec<FileEntry>,
}

/// The configured file source.
pub struct FileSource {
    config: Arc<FileConfig>,
}

/// What the source and each of its tasks read by.
struct FileConfig {
    name: String,
    location: Location,
    format: FileFormat,
    text_format: TextFormat,
    schema: SchemaRef,
    partitions: u32,
    max_files_per_trigger: Option<usize>,
    /// Longest JSON/CSV record (`maxRecordBytes`).
    max_record_bytes: usize,
    /// What the query needs of the rows (JSON lines only; `source::scan`).
    pushdown: Option<ScanPushdown>,
    /// Input bytes one batch of a task takes (from the memory budget; `None`: no cap).
    max_batch_bytes: Option<u64>,
    /// Bytes the text decoder buffers before decoding a run of lines.
    chunk_bytes: usize,
    /// Files of one range decoded at the same time.
    files_at_once: usize,
}

impl FileSource {
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a bad path or schema.
    pub fn new(spec: &SourceSpec, file: &FileSourceSpec) -> Result<Self> {
        let delimiter = file
            .delimiter
            .as_deref()
            .and_then(|d| d.bytes().next())
            .unwrap_or(b',');
        let config = FileConfig {
            name: spec.name.clone(),
            location: Location::parse(&file.path)?,
            format: file.format,
            text_format: match file.format {
                FileFormat::Csv => TextFormat::Csv {
                    header: file.header,
                    delimiter,
                },
                _ => TextFormat::Json,
            },
            schema: arrow_schema(&spec.schema)?,
            partitions: file.partitions,
            max_files_per_trigger: file.max_files_per_trigger.map(|n| n as usize),
            max_record_bytes: file
                .max_record_bytes
                .map_or(TextFileDecoder::MAX_RECORD_BYTES, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            pushdown: None,
            max_batch_bytes: None,
            chunk_bytes: TextFileDecoder::CHUNK_BYTES,
            files_at_once: cores(),
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// FNV-1a, 64 bit: the partition of a relative path is `fnv1a(path) % partitions`.
pub fn partition_of(path: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

#[async_trait]
impl Source for FileSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    fn set_pushdown(&mut self, pushdown: ScanPushdown) {
        // Before `open`, the config is not shared yet.
        if let Some(config) = Arc::get_mut(&mut self.config)
            && config.format == FileFormat::Json
            && !pushdown.is_everything()
        {
            config.pushdown = Some(pushdown);
        }
    }

    /// Sizes each batch's input, the decoder's chunk and the files decoded at once by `bytes`, a
    /// task's share of the memory budget for this source (bytes; [`ReadSizes::for_share`]).
    fn set_memory_budget(&mut self, bytes: u64) {
        // Before `open`, the config is not shared yet.
        if let Some(config) = Arc::get_mut(&mut self.config) {
            let sizes = ReadSizes::for_share(bytes, cores(), TextFileDecoder::CHUNK_BYTES);
            config.max_batch_bytes = Some(sizes.batch_bytes);
            config.chunk_bytes = sizes.chunk_bytes;
            config.files_at_once = sizes.files_at_once;
        }
    }

    async fn open(&self, task: u32, logged: &[Range]) -> Result<Box<dyn SourceTask>> {
        let mut reader = FileTask {
            source: self.config.clone(),
            task,
            seen: HashSet::new(),
            partial: HashMap::new(),
            frozen: None,
            backlog: 0,
            committed: HashSet::new(),
            log_entries_read: HashSet::new(),
        };
        for range in logged {
            let range: FileRange = decode_range(&self.config.name, range)?;
            for entry in &range.files {
                reader.planned(entry);
            }
        }
        Ok(Box::new(reader))
    }
}

struct FileTask {
    source: Arc<FileConfig>,
    task: u32,
    /// Relative paths planned to their end (from the log and from this run).
    seen: HashSet<String>,
    /// Files planned in part (pieces of JSON lines): the offset the next piece starts at, bytes.
    partial: HashMap<String, u64>,
    /// Files available when frozen (`availableNow` / `once`).
    frozen: Option<Vec<FileEntryWithTime>>,
    backlog: u64,
    /// Files listed in the directory's commit log (a Sluice file sink's output), if it has one.
    committed: HashSet<String>,
    /// Commit-log entries already read (entries never change once written).
    log_entries_read: HashSet<String>,
}

#[derive(Clone)]
struct FileEntryWithTime {
    entry: FileEntry,
    modified_ms: i64,
}

impl FileTask {
    /// Notes a planned or logged entry: its file is done, or continues at the piece's end.
    fn planned(&mut self, entry: &FileEntry) {
        match entry.end {
            Some(end) if !reaches_end(entry) => {
                let next = self.partial.entry(entry.path.clone()).or_default();
                *next = (*next).max(end);
            }
            _ => {
                self.partial.remove(&entry.path);
                self.seen.insert(entry.path.clone());
            }
        }
    }

    fn relative(&self, meta: &ObjectMeta) -> Option<String> {
        let prefix = self.source.location.prefix.as_ref();
        let full = meta.location.as_ref();
        let relative = if prefix.is_empty() {
            full
        } else {
            full.strip_prefix(prefix)?.trim_start_matches('/')
        };
        let hidden = relative
            .split('/')
            .any(|part| part.starts_with('.') || part.starts_with('_'));
        (!hidden && !relative.is_empty()).then(|| relative.to_string())
    }

    /// Reads the commit-log entries under `metas` not read yet into `committed`; whether the
    /// directory has a commit log.
    async fn read_commit_log(&mut self, metas: &[ObjectMeta]) -> Result<bool> {
        let location = &self.source.location;
        let log_prefix = location.child(crate::sink::file::LOG_DIR);
        let mut has_log = false;
        for meta in metas {
            if !meta.location.prefix_matches(&log_prefix) {
                continue;
            }
            has_log = true;
            let key = meta.location.as_ref().to_string();
            if !key.ends_with(".json") || self.log_entries_read.contains(&key) {
                continue;
            }
            let entry = crate::sink::file::read_log_entry_at(location, &meta.location)
                .await
                .map_err(|e| EngineError::Source {
                    source_name: self.source.name.clone(),
                    message: e.to_string(),
                })?;
            self.committed.extend(entry.files);
            self.log_entries_read.insert(key);
        }
        Ok(has_log)
    }

    /// This task's files in the directory now, oldest first (only committed ones in a directory
    /// with a commit log).
    async fn list(&mut self) -> Result<Vec<FileEntryWithTime>> {
        let location = &self.source.location;
        let prefix = (!location.prefix.as_ref().is_empty()).then_some(&location.prefix);
        let metas: Vec<ObjectMeta> = location
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| EngineError::storage(location.url.clone(), e))?;
        let has_log = self.read_commit_log(&metas).await?;
        let mut files: Vec<FileEntryWithTime> = metas
            .iter()
            .filter_map(|meta| {
                let path = self.relative(meta)?;
                if has_log && !self.committed.contains(&path) {
                    return None;
                }
                (partition_of(&path, self.source.partitions) == self.task).then(|| {
                    FileEntryWithTime {
                        entry: FileEntry {
                            path,
                            size: meta.size,
                            start: None,
                            end: None,
                        },
                        modified_ms: meta.last_modified.timestamp_millis(),
                    }
                })
            })
            .collect();
        files.sort_by(|a, b| (a.modified_ms, &a.entry.path).cmp(&(b.modified_ms, &b.entry.path)));
        Ok(files)
    }
}

impl FileTask {
    /// Decodes the range's files a few at a time (see [`cores`]); batches and
    /// bad records come out in the range's file order whatever order the files finish in.
    async fn read_files(&self, range: &Range, pushdown: bool) -> Result<ReadOutput> {
        let range: FileRange = decode_range(&self.source.name, range)?;
        let reads = range.files.into_iter().map(|file| {
            let config = Arc::clone(&self.source);
            async move { read_file(&config, &file, pushdown).await }
        });
        let decoded: Vec<_> = futures::stream::iter(reads)
            .buffered(self.source.files_at_once.max(1))
            .try_collect()
            .await?;
        let mut output = ReadOutput::default();
        for (batches, bad, filtered) in decoded {
            output.batches.extend(batches);
            output.bad_records.extend(bad);
            output.filtered_rows += filtered;
        }
        Ok(output)
    }
}

#[async_trait]
impl SourceTask for FileTask {
    async fn freeze(&mut self) -> Result<()> {
        let files = self.list().await?;
        self.backlog = files
            .iter()
            .filter(|f| !self.seen.contains(&f.entry.path))
            .count() as u64;
        self.frozen = Some(files);
        Ok(())
    }

    async fn plan(&mut self, limit: PlanLimit) -> Result<Option<Range>> {
        let available = match &self.frozen {
            Some(frozen) => frozen.clone(),
            None => self.list().await?,
        };
        let pending: Vec<Pending> = available
            .into_iter()
            .filter(|f| !self.seen.contains(&f.entry.path))
            .map(|f| Pending {
                from: self.partial.get(&f.entry.path).copied().unwrap_or(0),
                file: f.entry,
            })
            .collect();
        // `once` takes everything in one batch, as in Spark (the budget cannot bound it).
        let (max_files, max_bytes) = match limit {
            PlanLimit::PerTrigger => (
                self.source.max_files_per_trigger,
                self.source.max_batch_bytes,
            ),
            PlanLimit::Unbounded => (None, None),
        };
        let splittable = self.source.format == FileFormat::Json;
        let files = take_batch(&pending, max_files, max_bytes, splittable);
        let finished = files.iter().filter(|f| reaches_end(f)).count();
        self.backlog = pending.len().saturating_sub(finished) as u64;
        if files.is_empty() {
            return Ok(None);
        }
        for file in &files {
            self.planned(file);
        }
        encode_range(&FileRange { files }).map(Some)
    }

    /// Decodes the range's files a few at a time (see [`cores`]); batches and
    /// bad records come out in the range's file order whatever order the files finish in.
    async fn read(&mut self, range: &Range) -> Result<ReadOutput> {
        self.read_files(range, true).await
    }

    async fn read_whole(&mut self, range: &Range) -> Result<ReadOutput> {
        self.read_files(range, false).await
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.backlog)
    }

    /// The files of both ranges, in order (a path repeats only for consecutive pieces of one file,
    /// which read in order as they did apart).
    fn merge(&self, earlier: &Range, later: &Range) -> Option<Range> {
        let mut merged: FileRange = serde_json::from_value(earlier.clone()).ok()?;
        let later: FileRange = serde_json::from_value(later.clone()).ok()?;
        merged.files.extend(later.files);
        encode_range(&merged).ok()
    }
}

/// How many files of one range a task decodes at the same time without a memory budget: the cores
/// this process may use (at most 4). A task with `maxFilesPerTrigger` > 1 then uses idle cores,
/// e.g. a stateful query, which runs as one task (README, "Stateful streaming"). Memory grows by
/// one read buffer per extra file; the decoded batches are held until the batch's SQL runs either
/// way. A budget may lower it ([`ReadSizes::files_at_once`]).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Batches, bad records and the count of rows the pushed filter dropped, of one file.
type Decoded = (Vec<RecordBatch>, Vec<BadRecord>, u64);

/// Reads and decodes one file of a range into batches of the source schema and bad records
/// (with the query's pushdown when `pushdown`).
async fn read_file(config: &FileConfig, file: &FileEntry, pushdown: bool) -> Result<Decoded> {
    let location = &config.location;
    let path = location.child(&file.path);
    let schema = config.schema.clone();
    let mut origin = format!("{}/{}", location.url.trim_end_matches('/'), file.path);
    // A piece's bad records count lines from the piece's first line.
    let split = match (file.start, file.end) {
        (None, None) => None,
        (Some(start), Some(end)) if config.format == FileFormat::Json => {
            if start > 0 {
                origin = format!("{origin} from byte {start}");
            }
            Some(LineSplit::new(start, end))
        }
        _ => {
            // A checkpoint written while the source's format was JSON lines.
            return Err(EngineError::Checkpoint {
                location: origin,
                message: format!(
                    "the offsets log of source `{}` names a piece ({:?}..{:?}) of this file, \
                     which only a JSON-lines source reads",
                    config.name, file.start, file.end
                ),
            });
        }
    };
    // Decoding is CPU-bound: keep it off the async worker threads.
    if config.format == FileFormat::Parquet {
        // A row group at a time, fetched as the reader reaches it (`source/parquet.rs`).
        let reader = ObjectChunkReader::new(
            Arc::clone(&location.store),
            path.clone(),
            file.size,
            tokio::runtime::Handle::current(),
        );
        let failure = reader.failure();
        let (batches, bad) = blocking(move || decode_parquet(&schema, &origin, reader)).await?;
        // A store that failed mid-file is an outage to retry, not a bad file.
        if let Some(error) = ObjectChunkReader::take_failure(&failure, path.as_ref()) {
            return Err(error);
        }
        return Ok((batches, bad, 0));
    }
    let object = match &split {
        None => location.store.get(&path).await,
        Some(split) => {
            let options = GetOptions::new().with_range(Some(split.read_from()..));
            location.store.get_opts(&path, options).await
        }
    }
    .map_err(|e| EngineError::storage(path.to_string(), e))?;
    // Text is decoded a run of lines at a time as it arrives, never whole.
    let decoder = TextFileDecoder::new(schema, config.text_format.clone(), origin)
        .with_chunk_bytes(config.chunk_bytes.max(1))
        .with_max_record_bytes(config.max_record_bytes)
        .with_pushdown(config.pushdown.as_ref().filter(|_| pushdown));
    let range = object.range.clone();
    match object.payload {
        GetResultPayload::File(file, _) => {
            let name = path.to_string();
            let chunk_bytes = config.chunk_bytes.max(1);
            blocking(move || decode_local_file(decoder, file, range, split, chunk_bytes, &name))
                .await
        }
        GetResultPayload::Stream(pieces) => {
            decode_stream(decoder, pieces, split, path.as_ref()).await
        }
    }
}

/// Decodes a local file with large reads on the calling (blocking) thread: object_store's own
/// stream of a local file hops threads every 8 KiB, which cost more than the decoding.
/// With `split`, only the lines of that piece (`range` then starts at its
/// [`LineSplit::read_from`]).
fn decode_local_file(
    mut decoder: TextFileDecoder,
    mut file: std::fs::File,
    range: std::ops::Range<u64>,
    mut split: Option<LineSplit>,
    chunk_bytes: usize,
    name: &str,
) -> Result<Decoded> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| {
        let error = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        };
        EngineError::storage(name.to_string(), error)
    };
    file.seek(SeekFrom::Start(range.start)).map_err(io)?;
    let mut remaining = range.end.saturating_sub(range.start);
    let mut buffer = vec![0u8; chunk_bytes.min(remaining as usize)];
    while remaining > 0 {
        let want = buffer.len().min(remaining as usize);
        let Some(window) = buffer.get_mut(..want) else {
            break;
        };
        let read = file.read(window).map_err(io)?;
        if read == 0 {
            break;
        }
        remaining -= read as u64;
        let bytes = buffer.get(..read).unwrap_or_default();
        match &mut split {
            Some(split) => decoder.push(split.take(bytes))?,
            None => decoder.push(bytes)?,
        }
        if decoder.ready() {
            decoder.decode_ready()?;
        }
        if split.as_ref().is_some_and(LineSplit::done) {
            break;
        }
    }
    decoder.finish_counted()
}

/// Decodes a streamed object (S3): pieces are buffered, whole lines decoded on the blocking pool.
/// With `split`, only the lines of that piece (the stream then starts at its
/// [`LineSplit::read_from`]) and the stream is dropped once they are read.
async fn decode_stream(
    mut decoder: TextFileDecoder,
    mut pieces: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    mut split: Option<LineSplit>,
    name: &str,
) -> Result<Decoded> {
    while let Some(piece) = pieces
        .try_next()
        .await
        .map_err(|e| EngineError::storage(name.to_string(), e))?
    {
        match &mut split {
            Some(split) => decoder.push(split.take(&piece))?,
            None => decoder.push(&piece)?,
        }
        if decoder.ready() {
            decoder = blocking(move || {
                decoder.decode_ready()?;
                Ok(decoder)
            })
            .await?;
        }
        if split.as_ref().is_some_and(LineSplit::done) {
            break;
        }
    }
    blocking(move || decoder.finish_counted()).await
}

/// Runs CPU-bound decoding on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EngineError::Internal(format!("decoder task failed: {e}")))?
}
