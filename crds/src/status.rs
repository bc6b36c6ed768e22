//! `StreamingQuery` status: what the operator observed, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a `StreamingQuery`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, CheckpointStale, ScalingLimited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    pub checkpoint_location: Option<String>,
    /// Deployment generation of the running workers (bumped on each restart-type upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_committed_batch_id: Option<i64>,
    /// Event-time watermark, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[schemars(length(max = 64))]
    pub last_stable_spec_hash: Option<String>,
    /// The last spec that became Ready, as JSON: what a rollout that is not Ready within the
    /// operator's `readyTimeout` goes back to. Specs carry no secrets (only Secret names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub last_stable_spec: Option<String>,
    /// Hash of the user's spec that was rolled back; it stays out until the spec is edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rejected_spec_hash: Option<String>,
    /// When the current rollout (create, upgrade, rescale, resume, rollback) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_time: Option<Time>,
    /// When the progress figures (rates, lag, batch id, watermark) were last refreshed; they are
    /// refreshed at most once per resync so a steady query's status stays quiet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaling_history: Vec<ScalingDecision>,
    /// Last commit of the old generation → first commit of the new one, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescale_downtime_seconds: Option<f64>,
    /// Worker restarts after crashes, since the query was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
    /// Commit time of the latest batch (RFC 3339), from the workers' `/progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch_time: Option<String>,
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
}

/// One autoscaler decision with the inputs that led to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// RFC 3339.
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
    pub reason: String,
}
