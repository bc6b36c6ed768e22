//! `StreamingQueryProgress`: what one trigger did, in Spark's JSON shape (field names as in
//! `StreamingQueryProgress.json`), plus Sluice's per-task detail.

use serde::Serialize;

/// Durations of a trigger's phases, ms (Spark's `durationMs`).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DurationMs {
    /// Whole trigger.
    pub trigger_execution: u64,
    /// Planning offsets and writing the offsets log.
    pub wal_commit: u64,
    /// Reading and decoding the source ranges (Spark's `getBatch`).
    pub get_batch: u64,
    /// Running the SQL.
    pub query_planning_and_execution: u64,
    /// Writing the sink (Spark's `addBatch`).
    pub add_batch: u64,
    /// Writing the commit log.
    pub commit: u64,
}

/// One source's share of a trigger.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    /// Unread input after this trigger (rows, or files for file sources).
    pub backlog: u64,
}

/// The sink's share of a trigger.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    pub description: String,
    pub num_output_rows: u64,
}

/// One task's batch within a trigger.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub task: u32,
    pub batch_id: u64,
    pub num_input_rows: u64,
    pub num_output_rows: u64,
    pub num_bad_records: u64,
    /// True when the batch re-ran a logged but uncommitted range.
    pub replayed: bool,
    /// Source ranges and offsets the batch skipped because they were deleted before they were
    /// read (`failOnDataLoss: false`), and what they were.
    #[serde(skip_serializing_if = "is_zero")]
    pub num_lost_ranges: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub num_lost_offsets: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_loss: Vec<String>,
    pub duration_ms: DurationMs,
}

/// Event-time figures (Spark's `eventTime`).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct EventTime {
    /// RFC 3339, when the query has a watermark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
}

/// Progress of one trigger.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryProgress {
    /// Stable query id (from the checkpoint).
    pub id: String,
    /// Id of this run of the worker.
    pub run_id: String,
    pub name: String,
    /// Trigger start, RFC 3339.
    pub timestamp: String,
    /// Highest batch id committed in this trigger.
    pub batch_id: u64,
    pub num_input_rows: u64,
    /// Input rows / seconds since the previous trigger started.
    pub input_rows_per_second: f64,
    /// Input rows / seconds this trigger took.
    pub processed_rows_per_second: f64,
    pub duration_ms: DurationMs,
    pub event_time: EventTime,
    pub state_operators: Vec<serde_json::Value>,
    pub sources: Vec<SourceProgress>,
    pub sink: SinkProgress,
    pub num_bad_records: u64,
    /// Learned models per task: `{name, task, state}` (k-means centers and weights, regression
    /// weights).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<serde_json::Value>,
    /// PostgreSQL lookup tables: `{table, numKeys, numRowsFetched}` summed over the tasks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<serde_json::Value>,
    pub tasks: Vec<TaskProgress>,
}

impl StreamingQueryProgress {
    /// One human line: `batch 12 | 600000 rows | 1.2M rows/s in | 1.5M rows/s processed | 400 ms`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "batch {} | {} rows | {} rows/s in | {} rows/s processed | {} ms",
            self.batch_id,
            self.num_input_rows,
            human(self.input_rows_per_second),
            human(self.processed_rows_per_second),
            self.duration_ms.trigger_execution
        );
        if self.num_bad_records > 0 {
            line.push_str(&format!(" | {} bad records", self.num_bad_records));
        }
        let backlog: u64 = self.sources.iter().map(|s| s.backlog).sum();
        if backlog > 0 {
            line.push_str(&format!(" | backlog {backlog}"));
        }
        line
    }
}

/// 1234567.0 → "1.23M".
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
