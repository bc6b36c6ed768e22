//! Prometheus metrics of a worker (docs/architecture.md): `sluice_` prefix, labels `query`,
//! `namespace`, `task`.
//!
//! Rates are not exported; Prometheus derives them (`rate(sluice_input_rows_total[1m])`), which is
//! what the autoscaler reads.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of every per-task series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub query: String,
    pub namespace: String,
    pub task: String,
}

/// Labels of the per-table lookup series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub query: String,
    pub namespace: String,
    pub task: String,
    pub table: String,
}

/// Labels of per-query series that belong to no task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub query: String,
    pub namespace: String,
}

type FloatCounter = Counter<f64, AtomicU64>;

/// The worker's metric families, registered in [`Metrics::registry`].
pub struct Metrics {
    pub registry: Registry,
    /// Rows read from sources.
    pub input_rows: Family<TaskLabels, Counter>,
    /// Rows that went through the query (= input rows of committed batches).
    pub processed_rows: Family<TaskLabels, Counter>,
    /// Wall time of a batch from plan to commit, seconds.
    pub batch_duration: Family<TaskLabels, Histogram>,
    /// Seconds spent running batches (busy time; busy / wall = utilization).
    pub busy_seconds: Family<TaskLabels, FloatCounter>,
    pub last_committed_batch_id: Family<TaskLabels, Gauge>,
    /// Event-time watermark, seconds since the Unix epoch.
    pub watermark_seconds: Family<TaskLabels, Gauge<f64, AtomicU64>>,
    /// Rows held in the state store.
    pub state_rows: Family<TaskLabels, Gauge>,
    pub late_rows_dropped: Family<TaskLabels, Counter>,
    pub bad_records: Family<TaskLabels, Counter>,
    /// Source offset ranges skipped because they were deleted before they were read
    /// (`failOnDataLoss: false`).
    pub data_loss: Family<TaskLabels, Counter>,
    /// Unread input (rows, or files for the file source).
    pub source_backlog: Family<TaskLabels, Gauge>,
    pub sink_rows_written: Family<TaskLabels, Counter>,
    /// Batches that failed with a retryable error and will be replayed.
    pub batch_retries: Family<TaskLabels, Counter>,
    /// Poison batches written to the bad-records location and committed as skipped
    /// (`onPoisonBatch: quarantine`).
    pub quarantined_batches: Family<TaskLabels, Counter>,
    /// Rows fetched from PostgreSQL lookup tables (committed batches).
    pub lookup_rows: Family<LookupLabels, Counter>,
    /// Distinct keys looked up in PostgreSQL lookup tables (committed batches).
    pub lookup_keys: Family<LookupLabels, Counter>,
    /// Failed background maintenance runs of the sink (Delta compaction, vacuum).
    pub sink_maintenance_failures: Family<QueryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let input_rows = Family::<TaskLabels, Counter>::default();
        let processed_rows = Family::<TaskLabels, Counter>::default();
        let batch_duration = Family::<TaskLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let busy_seconds = Family::<TaskLabels, FloatCounter>::default();
        let last_committed_batch_id = Family::<TaskLabels, Gauge>::default();
        let watermark_seconds = Family::<TaskLabels, Gauge<f64, AtomicU64>>::default();
        let state_rows = Family::<TaskLabels, Gauge>::default();
        let late_rows_dropped = Family::<TaskLabels, Counter>::default();
        let bad_records = Family::<TaskLabels, Counter>::default();
        let data_loss = Family::<TaskLabels, Counter>::default();
        let source_backlog = Family::<TaskLabels, Gauge>::default();
        let sink_rows_written = Family::<TaskLabels, Counter>::default();
        let batch_retries = Family::<TaskLabels, Counter>::default();
        let quarantined_batches = Family::<TaskLabels, Counter>::default();
        let lookup_rows = Family::<LookupLabels, Counter>::default();
        let lookup_keys = Family::<LookupLabels, Counter>::default();
        let sink_maintenance_failures = Family::<QueryLabels, Counter>::default();
        registry.register("input_rows", "Rows read from sources", input_rows.clone());
        registry.register(
            "processed_rows",
            "Rows processed in committed batches",
            processed_rows.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Batch wall time, plan to commit",
            batch_duration.clone(),
        );
        registry.register(
            "batch_busy_seconds",
            "Seconds spent running batches",
            busy_seconds.clone(),
        );
        registry.register(
            "last_committed_batch_id",
            "Last committed batch id",
            last_committed_batch_id.clone(),
        );
        registry.register(
            "watermark_seconds",
            "Event-time watermark, Unix seconds",
            watermark_seconds.clone(),
        );
        registry.register("state_rows", "Rows in the state store", state_rows.clone());
        registry.register(
            "late_rows_dropped",
            "Rows dropped as later than the watermark",
            late_rows_dropped.clone(),
        );
        registry.register(
            "bad_records",
            "Records that did not decode",
            bad_records.clone(),
        );
        registry.register(
            "data_loss",
            "Source offset ranges skipped because they were deleted before they were read (failOnDataLoss: false)",
            data_loss.clone(),
        );
        registry.register(
            "source_backlog_rows",
            "Unread input: rows (files for file sources)",
            source_backlog.clone(),
        );
        registry.register(
            "sink_rows_written",
            "Rows written to the sink",
            sink_rows_written.clone(),
        );
        registry.register(
            "batch_retries",
            "Batches failed with a retryable error",
            batch_retries.clone(),
        );
        registry.register(
            "quarantined_batches",
            "Poison batches quarantined and committed as skipped",
            quarantined_batches.clone(),
        );
        registry.register(
            "lookup_rows",
            "Rows fetched from PostgreSQL lookup tables",
            lookup_rows.clone(),
        );
        registry.register(
            "lookup_keys",
            "Distinct keys looked up in PostgreSQL lookup tables",
            lookup_keys.clone(),
        );
        registry.register(
            "sink_maintenance_failures",
            "Failed background maintenance runs of the sink (Delta compaction, vacuum)",
            sink_maintenance_failures.clone(),
        );
        Self {
            registry,
            input_rows,
            processed_rows,
            batch_duration,
            busy_seconds,
            last_committed_batch_id,
            watermark_seconds,
            state_rows,
            late_rows_dropped,
            bad_records,
            data_loss,
            source_backlog,
            sink_rows_written,
            batch_retries,
            quarantined_batches,
            lookup_rows,
            lookup_keys,
            sink_maintenance_failures,
        }
    }

    /// The Prometheus text exposition of all families.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
