//! Sources: where a stream's rows come from.
//!
//! A source is split into partitions; the engine runs one *task* per partition
//! (docs/architecture.md, "Tasks"). For each task it asks the source to **plan** the next range
//! (offsets), writes that range to the checkpoint, then asks it to **read** exactly that range.
//! Reading the same range twice must give the same rows: that is what makes a replay after a crash
//! exactly-once.
//!
//! Each source lives in its own folder (`file/`, `rate/`, `socket/`, ...) with its implementation and
//! tests; the manifest types are in `sluice_crds`.

pub mod decode;
pub mod exchange;
pub mod file;
pub mod kafka;
pub mod nexmark;
pub mod parquet;
pub mod rate;
pub mod reference;
pub mod scan;
pub mod socket;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_crds::SourceSpec;

use crate::error::{EngineError, Result};
use crate::source::decode::BadRecord;

/// A range of a source partition, as stored in the offsets log. Source-specific JSON.
pub type Range = serde_json::Value;

/// How far a plan may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanLimit {
    /// Respect the source's per-trigger limit (`maxFilesPerTrigger`, ...).
    PerTrigger,
    /// Take everything available (the `once` trigger).
    Unbounded,
}

/// Rows read for one range, plus the records that did not decode.
#[derive(Debug, Default)]
pub struct ReadOutput {
    /// Rows in the source's [`Source::schema`].
    pub batches: Vec<RecordBatch>,
    /// Records that did not decode, with their origin.
    pub bad_records: Vec<BadRecord>,
    /// Input the source had to skip because it no longer exists (Kafka offsets deleted before they
    /// were read, with `failOnDataLoss: false`): what was lost, how many ranges, and how many
    /// offsets where known (a partition whose offsets went back counts a range, no offsets).
    pub data_loss: Vec<String>,
    pub lost_ranges: u64,
    pub lost_offsets: u64,
    /// Valid rows read and dropped by the query's filter pushed into the scan
    /// ([`Source::set_pushdown`]); input rows all the same.
    pub filtered_rows: u64,
    /// The watermark an upstream stage fixed for this batch (the keyed exchange's stateful
    /// plan), ms since the epoch; `None` for sources whose rows carry event time themselves.
    pub upstream_watermark_ms: Option<i64>,
}

impl ReadOutput {
    /// Input rows read: the rows returned and the rows the pushed filter dropped.
    pub fn input_rows(&self) -> u64 {
        self.batches
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>()
            + self.filtered_rows
    }
}

/// A configured source: knows its schema and partition count, opens one reader per task.
#[async_trait]
pub trait Source: Send + Sync {
    /// The table name in SQL.
    fn name(&self) -> &str;
    /// Arrow schema of the rows [`SourceTask::read`] returns.
    fn schema(&self) -> SchemaRef;
    /// Number of partitions (= tasks); fixed for the life of the checkpoint.
    fn partitions(&self) -> u32;
    /// The checkpoint was created with `tasks` tasks for this source; a source whose partitions can
    /// grow (Kafka) keeps that task count and spreads the new partitions over the tasks. Others
    /// ignore it (the checkpoint then refuses a changed count).
    fn fit_task_count(&mut self, _tasks: u32) {}
    /// What the query needs of this source's rows (`source::scan`); called before any
    /// [`Source::open`]. A source that cannot use it ignores it and returns whole rows.
    fn set_pushdown(&mut self, _pushdown: scan::ScanPushdown) {}
    /// `bytes`: this source's share of the worker's memory budget (`--memory-budget`) for one
    /// task's batch, in bytes; called before any [`Source::open`]. A source that sizes its batches
    /// by it (the file source) keeps each batch's input within it; others ignore it.
    fn set_memory_budget(&mut self, _bytes: u64) {}
    /// Opens the reader of partition `task`, given every range already logged for it (in batch
    /// order), so that it can continue after them.
    async fn open(&self, task: u32, logged: &[Range]) -> Result<Box<dyn SourceTask>>;
}

/// The reader of one partition.
#[async_trait]
pub trait SourceTask: Send {
    /// Remembers what is available now; later plans never go past it (`availableNow`, `once`).
    async fn freeze(&mut self) -> Result<()>;
    /// The next range after everything planned so far, or `None` when there is nothing new.
    async fn plan(&mut self, limit: PlanLimit) -> Result<Option<Range>>;
    /// Reads exactly `range` (planned now or logged before a crash).
    async fn read(&mut self, range: &Range) -> Result<ReadOutput>;
    /// As [`SourceTask::read`], with every column of every row, whatever the pushdown (a
    /// quarantined batch's input is kept whole).
    async fn read_whole(&mut self, range: &Range) -> Result<ReadOutput> {
        self.read(range).await
    }
    /// The range was committed: resources for it may be released.
    fn committed(&mut self, _range: &Range) {}
    /// One range covering `earlier` and the range planned right after it; `None` when the source
    /// cannot merge. The merged range must read as both did (the `continuous` trigger checkpoints
    /// one merged range per epoch) and, given to [`Source::open`] in their place, continue after
    /// both (checkpoint retention folds old batches this way, `engine/retention.rs`).
    fn merge(&self, _earlier: &Range, _later: &Range) -> Option<Range> {
        None
    }
    /// Rows (or files) available but not planned yet, for lag metrics; `None` when unknown.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// A source's typed range as the JSON stored in the offsets log.
///
/// # Errors
/// [`EngineError::Internal`] when it does not serialize (a bug).
pub fn encode_range<T: serde::Serialize>(range: &T) -> Result<Range> {
    serde_json::to_value(range).map_err(|e| EngineError::Internal(format!("range: {e}")))
}

/// A range from the offsets log as the source's typed range.
///
/// # Errors
/// [`EngineError::Checkpoint`]-like source error when the logged JSON is not this source's range
/// (a checkpoint written by another source kind or a corrupt log).
pub fn decode_range<T: serde::de::DeserializeOwned>(source: &str, range: &Range) -> Result<T> {
    serde_json::from_value(range.clone()).map_err(|e| EngineError::Source {
        source_name: source.to_string(),
        message: format!("unreadable range in the offsets log: {e}"),
    })
}

/// Builds the source a spec describes.
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a source kind this build does not support.
pub fn build(spec: &SourceSpec) -> Result<Box<dyn Source>> {
    if let Some(file) = &spec.file {
        return Ok(Box::new(file::FileSource::new(spec, file)?));
    }
    if let Some(rate) = &spec.rate {
        return Ok(Box::new(rate::RateSource::new(&spec.name, rate)));
    }
    if let Some(kafka) = &spec.kafka {
        return Ok(Box::new(kafka::KafkaSource::new(spec, kafka)?));
    }
    if let Some(nexmark) = &spec.nexmark {
        return Ok(Box::new(nexmark::NexmarkSource::new(&spec.name, nexmark)));
    }
    if let Some(socket) = &spec.socket {
        return Ok(Box::new(socket::SocketSource::new(&spec.name, socket)));
    }
    Err(EngineError::InvalidQuery(format!(
        "source `{}`: this source kind is not supported yet",
        spec.name
    )))
}
