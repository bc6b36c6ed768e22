//! Sinks: where a batch's result rows go.
//!
//! Every sink write is **idempotent per (task, batch id)**: a batch replayed after a crash writes the
//! same rows to the same place or nothing (file names and a commit log per run, keyed rows, a
//! commits table), so output stays exactly-once even though the checkpoint commit is written after
//! the sink. The engine also records in the checkpoint that the sink accepted a batch
//! (`tasks/<p>/sinks/<batchId>`), so a batch retried after that point skips the sink. Each sink
//! lives in its own folder.

pub mod console;
pub mod delta;
pub mod file;
pub mod kafka;
pub mod memory;
pub mod noop;
pub mod postgres;
pub mod replay;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_crds::SinkSpec;

use crate::error::{EngineError, Result};

/// A configured sink.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Writes the result rows of batch `batch_id` of task `task`; returns rows written.
    ///
    /// # Errors
    /// Retryable ([`EngineError::Storage`], [`EngineError::Sink`]) when the target failed; the engine
    /// then does not commit the batch and replays it.
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64>;
}

/// What a sink may need to know about its query.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// `namespace/name` of the query (Kafka header `sluice-query`).
    pub query: String,
    /// The checkpoint's query id (a UUID kept in `metadata.json`, Spark's query `id`): a new
    /// checkpoint is a new query, so batch ids restarting at 0 do not collide with old ones.
    pub query_id: String,
    /// The query's output mode.
    pub output_mode: sluice_crds::OutputMode,
    /// The query's grouping columns when it aggregates (the Delta sink MERGEs on them).
    pub grouping_columns: Option<Vec<String>>,
    /// Tasks of the query (all replicas).
    pub tasks: u32,
    /// Counts failed background maintenance of the sink (Delta compaction and vacuum).
    pub maintenance_failures: Option<prometheus_client::metrics::counter::Counter>,
    /// Batches the checkpoint retains (`checkpoint.minBatchesToRetain`): a restore may take back
    /// that many, so the file sink does not compact their files.
    pub min_batches_to_retain: u64,
}

/// Builds the sink a spec describes.
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a sink kind this build does not support or a bad path.
pub fn build(spec: &SinkSpec, context: &SinkContext) -> Result<Box<dyn Sink>> {
    if let Some(kafka) = &spec.kafka {
        return Ok(Box::new(kafka::KafkaSink::new(
            kafka,
            &context.query,
            &context.query_id,
        )?));
    }
    if let Some(postgres) = &spec.postgres {
        return Ok(Box::new(postgres::PostgresSink::new(
            postgres,
            &format!("{}#{}", context.query, context.query_id),
        )?));
    }
    if let Some(console) = &spec.console {
        return Ok(Box::new(console::ConsoleSink::new(
            console.num_rows,
            console.truncate,
        )));
    }
    if let Some(file) = &spec.file {
        return Ok(Box::new(
            file::FileSink::new(file, &context.query_id)?.retaining(context.min_batches_to_retain),
        ));
    }
    if let Some(delta) = &spec.delta {
        return Ok(Box::new(delta::DeltaSink::new(
            delta,
            &delta::DeltaContext {
                query_id: context.query_id.clone(),
                output_mode: context.output_mode,
                grouping_columns: context.grouping_columns.clone(),
                tasks: context.tasks,
                maintenance_failures: context.maintenance_failures.clone(),
            },
        )?));
    }
    if let Some(memory) = &spec.memory {
        return Ok(Box::new(memory::MemorySink::new(&memory.name)));
    }
    if spec.noop.is_some() {
        return Ok(Box::new(noop::NoopSink));
    }
    Err(EngineError::InvalidQuery(
        "this sink kind is not supported yet".into(),
    ))
}
