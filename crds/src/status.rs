//! `StreamingQuery` status: what the operator observed, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bounds::MAX_PATH;

/// Most conditions (one per type; nine types today).
pub const MAX_CONDITIONS: u32 = 16;
/// Most entries of `scalingHistory` (the operator keeps fewer).
pub const MAX_SCALING_HISTORY: u32 = 32;
/// Longest resolved checkpoint URL: the location plus `<namespace>/<name>/<uid>/`.
pub const MAX_CHECKPOINT_URL: u32 = MAX_PATH + 512;
/// Longest RFC 3339 timestamp text.
pub const MAX_TIMESTAMP: u32 = 64;
/// Longest spec hash.
pub const MAX_HASH: u32 = 128;
/// Longest `lastStableSpec` (a spec as JSON).
pub const MAX_STABLE_SPEC: u32 = 262_144;
/// Longest scaling decision reason.
pub const MAX_REASON: u32 = 1024;

/// Observed state of a `StreamingQuery`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, CheckpointStale, ScalingLimited, ReconciliationPaused,
    /// PoisonBatch, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONDITIONS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Worker replicas currently running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Label selector of the query's worker pods (the `/scale` subresource's, for HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub selector: Option<String>,
    /// Resolved checkpoint URL (`<location>/<namespace>/<name>/<uid>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CHECKPOINT_URL))]
    pub checkpoint_location: Option<String>,
    /// Deployment generation of the running workers (bumped on each restart-type upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_committed_batch_id: Option<i64>,
    /// Event-time watermark, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub watermark: Option<String>,
    /// rows/s arriving at the sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rows_per_second: Option<f64>,
    /// rows/s processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_rows_per_second: Option<f64>,
    /// Unread rows at the sources (Kafka lag, rows in unread files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Hash of the last spec that became Ready (the rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_HASH))]
    pub last_stable_spec_hash: Option<String>,
    /// The last spec that became Ready, as JSON: what a rollout that is not Ready within the
    /// operator's `readyTimeout` goes back to. Specs carry no secrets (only Secret names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_STABLE_SPEC))]
    pub last_stable_spec: Option<String>,
    /// Hash of the user's spec that was rolled back; it stays out until the spec is edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_HASH))]
    pub rejected_spec_hash: Option<String>,
    /// When the current rollout (create, upgrade, rescale, resume, rollback) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub last_rollout_time: Option<Time>,
    /// When the progress figures (rates, lag, batch id, watermark) were last refreshed; they are
    /// refreshed at most once per resync so a steady query's status stays quiet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub progress_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCALING_HISTORY))]
    pub scaling_history: Vec<ScalingDecision>,
    /// Last commit of the old generation → first commit of the new one, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescale_downtime_seconds: Option<f64>,
    /// Worker restarts after crashes, since the query was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
    /// The latest one-shot or scheduled run (`trigger: once / availableNow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunStatus>,
    /// When the schedule last fired (a run started or, while one still ran, was due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub last_schedule_time: Option<Time>,
    /// The `spec.restartNonce` the running workers were started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::MAX_RESTART_NONCE))]
    pub restart_nonce: Option<String>,
    /// Commit time of the latest batch (RFC 3339), from the workers' `/progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub last_batch_time: Option<String>,
    /// The last `spec.restore` the operator applied (restored or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// Outcome of one `spec.restore`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The `spec.restore.batchId` this records.
    pub batch_id: u64,
    /// The new checkpoint generation, when restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `Restored` or `Refused`.
    #[schemars(length(max = 16))]
    pub outcome: String,
    /// The worker's one-line verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_REASON))]
    pub message: Option<String>,
}

/// One run of a one-shot or scheduled query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Deployment generation the run ran (a one-shot query runs once per generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub start: Option<Time>,
    /// Unset while the run runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub end: Option<Time>,
    /// Unset while the run runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Rows written by the run (all replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_batch_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch_id: Option<i64>,
    /// `first..last` (for `kubectl get`), `none` when the run found no new input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub batches: Option<String>,
    /// Why a failed run failed (exit status, `PoisonBatch: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_REASON))]
    pub message: Option<String>,
}

/// Lifecycle phase of a query.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Upgrading,
    Scaling,
    Suspended,
    Failed,
    RollingBack,
    /// A one-shot query's run finished.
    Succeeded,
    /// A scheduled query waits for its next run.
    Scheduled,
}

/// One autoscaler decision with the inputs that led to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// RFC 3339.
    #[schemars(length(max = MAX_TIMESTAMP))]
    pub time: String,
    pub from_replicas: u32,
    pub to_replicas: u32,
    /// Input rate λ, rows/s.
    pub input_rate: f64,
    /// Processed rate, rows/s.
    pub processed_rate: f64,
    /// Busy ratio (batch time / wall time), 0..1.
    pub busy_ratio: f64,
    /// Unread rows.
    pub backlog: f64,
    /// True processing rate per replica, rows/s.
    pub true_processing_rate: f64,
    /// Whether it was applied (false in `recommend` mode or when clamped to the current count).
    pub applied: bool,
    #[schemars(length(max = MAX_REASON))]
    pub reason: String,
}
