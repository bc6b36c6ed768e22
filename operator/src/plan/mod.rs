//! The pure heart of the operator: `plan(query, observation, config, now) -> Plan`.
//!
//! No I/O happens here, so every backend (Kubernetes today, local processes in issue 6) turns the
//! same inputs into the same decisions, and every kind of spec change is unit-tested below.
//! The split follows apache/flink-kubernetes-operator (observer → validator → reconciler, spec
//! diff classification, `lastStableSpec`) and kube-rs/controller-rs (idempotent reconcile, status
//! written whole with server-side apply).
//!
//! Inputs: the `StreamingQuery` (spec, metadata generation, current status), an [`Observation`] of
//! what runs (worker deployment, checkpoint claim, worker progress) and the result of
//! `sluice_crds::validate_spec`. Output: a [`Plan`] — what the worker deployment should be
//! ([`WorkersAction`]), the new status, events to publish and when to look again.
//!
//! Deployment generations: a *restart* change (any section of the spec other than `parallelism`
//! and `suspend`) bumps `status.generation`; a scale or suspend keeps it. Which sections changed
//! is known from per-section hashes stored on the running deployment, so events name them
//! (`sql, image changed`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use sluice_crds::conditions::{
    self, CHECKPOINT_STALE, DEGRADED, PAUSE_ANNOTATION, POISON_BATCH, PROGRESSING, READY,
    RECONCILIATION_PAUSED, SCALING_LIMITED,
};
use sluice_crds::{
    Phase, ScalingDecision, StreamingQuery, StreamingQuerySpec, StreamingQueryStatus, UpgradeMode,
    ValidationError,
};

use crate::checkpoint;
use crate::error::{Error, Result};

pub mod guard;
pub mod restore;
pub mod run;
pub mod scale;

pub use guard::{CheckObservation, CheckRequest, check_request};
pub use restore::{RestoreObservation, RestoreRequest, restore_request};
pub use run::{DesiredRun, RunMode, RunObservation, run_mode};
pub use scale::{AutoscaleObservation, may_scale_out, scaling_limit};

/// Operator-wide settings (chart values).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Worker image when `spec.image` is unset.
    pub default_image: String,
    /// Checkpoint base URL when `spec.checkpoint.location` is unset.
    pub default_checkpoint_location: Option<String>,
    /// Port of the worker's `/metrics`, `/healthz`, `/progress`.
    pub worker_http_port: u16,
    /// Requeue period of a steady query.
    pub resync: Duration,
    /// Requeue period while a rollout is in progress.
    pub progress_poll: Duration,
    /// A restart-type rollout not Ready within this rolls back to `status.lastStableSpec`.
    pub ready_timeout: Duration,
    /// Whether `spec.schedule.cron` may have a leading seconds field: only where the operator
    /// runs the schedule itself (local backend); a Kubernetes CronJob has minute granularity.
    pub schedule_seconds: bool,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: "ghcr.io/sluice/sluice-worker:latest".into(),
            default_checkpoint_location: None,
            worker_http_port: 9464,
            resync: Duration::from_secs(300),
            progress_poll: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(300),
            schedule_seconds: false,
        }
    }
}

/// The worker deployment as it currently runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkersObservation {
    /// Deployment generation of the running pods' template.
    pub generation: i64,
    /// Hash of the restart-relevant spec sections the template was built from.
    pub restart_hash: String,
    /// Per-section hashes (`sql`, `sources`, `image`, ...), to name what changed.
    pub section_hashes: BTreeMap<String, String>,
    /// Desired replicas of the deployment.
    pub replicas: i32,
    /// Replicas passing readiness.
    pub ready_replicas: i32,
    /// True when every replica runs the latest template and is ready (or all are gone at 0).
    pub rollout_complete: bool,
    /// Worker restarts after crashes the backend has counted for the query (local: every
    /// process exit it restarted; Kubernetes: the pods' `restartCount`), `None` when not observed.
    pub restarts: Option<i64>,
    /// Worker exits within the last [`CRASH_LOOP_WINDOW`] (Kubernetes: a pod in
    /// `CrashLoopBackOff` counts as [`CRASH_LOOP_EXITS`], kubelet's own crash-loop verdict).
    pub recent_exits: u32,
    /// How the last worker exit looked (`replica 1 exited (signal: 9)`), for messages.
    pub last_exit: Option<String>,
    /// `spec.restartNonce` the running workers were started with.
    pub restart_nonce: Option<String>,
    /// A worker stopped on a poison batch (exit code [`POISON_EXIT_CODE`]): its
    /// [`poison_line`] (`PoisonBatch: batch <id> task <t> after <n> attempts: <error>`).
    pub poison: Option<String>,
    /// The latest run of a one-shot or scheduled query (`None` for a continuous deployment).
    pub run: Option<RunObservation>,
}

/// Exit code of a worker that stopped on a poison batch (restarting it replays the same batch).
pub const POISON_EXIT_CODE: i32 = 3;

/// The poison-batch line of a stopped worker's termination message (Kubernetes) or stderr tail
/// (local): the last line containing `PoisonBatch: `, from there on, e.g.
/// `PoisonBatch: batch 7 task 2 after 3 attempts: column "amount": invalid digit`. `None` when
/// there is none.
pub fn poison_line(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        line.find("PoisonBatch: ")
            .map(|at| line[at..].trim_end().to_string())
    })
}

/// This many worker exits within [`CRASH_LOOP_WINDOW`] set `Degraded=True, WorkersCrashing`.
pub const CRASH_LOOP_EXITS: u32 = 3;
/// Window of the crash-loop count.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// Outcome of the checkpoint claim made just before planning.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckpointObservation {
    /// Not checked (the spec is invalid, so nothing will be deployed).
    NotChecked,
    /// The location is owned by this query. `claimed_now` on the first claim.
    Ready { location: String, claimed_now: bool },
    /// A user error: no location configured, bad URL, or owned by another query.
    Refused {
        location: Option<String>,
        reason: &'static str,
        message: String,
    },
    /// An external error (credentials, network); retried with backoff.
    Unreachable { location: String, message: String },
}

/// Rates and positions reported by the workers (`/progress`) or Prometheus.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressObservation {
    pub input_rows_per_second: Option<f64>,
    pub processed_rows_per_second: Option<f64>,
    pub last_committed_batch_id: Option<i64>,
    pub lag: Option<i64>,
    pub watermark: Option<String>,
    /// Commit time of the latest batch over all replicas, RFC 3339.
    pub last_batch_time: Option<String>,
    /// Last commit of the old generation → first commit of the running one (s), reported once
    /// by the backend after a stop-then-start rescale or upgrade.
    pub rescale_downtime_seconds: Option<f64>,
}

/// Everything observed before planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `None` when no worker deployment exists.
    pub workers: Option<WorkersObservation>,
    pub checkpoint: CheckpointObservation,
    pub progress: Option<ProgressObservation>,
    /// `sluice-worker check` of the spec [`check_request`] named (against the checkpoint).
    pub check: CheckObservation,
    /// The autoscaler's inputs, when the query autoscales and its metrics were read.
    pub autoscale: Option<AutoscaleObservation>,
    /// `sluice-worker checkpoint restore` of the request [`restore_request`] named.
    pub restore: RestoreObservation,
}

/// The worker deployment a backend must make real.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredWorkers {
    /// Deployment generation (`SLUICE_GENERATION`); bumped on every restart-type change.
    pub generation: i64,
    /// Replica count (`SLUICE_REPLICA_COUNT`); 0 when suspended.
    pub replicas: i32,
    pub image: String,
    /// The resolved query document workers read (`query.yaml`): checkpoint location resolved,
    /// image filled in.
    pub manifest_yaml: String,
    /// Checkpoint URL the workers of this generation use.
    pub checkpoint_location: String,
    pub restart_hash: String,
    pub section_hashes: BTreeMap<String, String>,
    pub env: Vec<EnvVar>,
    pub resources: Option<ResourceRequirements>,
    pub storage_secret_ref: Option<String>,
    pub http_port: u16,
    /// Stop every running worker (at a batch boundary) before the new generation or replica
    /// count starts, so no two workers own a task at once: set when workers run and the
    /// generation, the replica count or the restart nonce changes.
    pub stop_first: bool,
    /// `spec.restartNonce`: a change restarts the workers (stop first) in the same generation.
    pub restart_nonce: Option<String>,
    /// A one-shot or scheduled run instead of a continuous deployment (`stop_first` then stops
    /// a continuous one that still runs).
    pub run: Option<DesiredRun>,
}

/// What to do with the worker deployment.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkersAction {
    /// Make the deployment equal to this (create, update, scale, suspend).
    Apply(Box<DesiredWorkers>),
    /// Touch nothing: the running generation keeps running (invalid spec, unusable checkpoint).
    LeaveAlone,
}

/// How the spec differs from what runs.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecChange {
    /// No deployment yet.
    New,
    /// Nothing to roll out.
    Unchanged,
    /// Only the replica count differs.
    Scale { from: i32, to: i32 },
    /// Restart-relevant sections changed (names sorted), e.g. `["image", "sql"]`.
    Restart { sections: Vec<String> },
    /// Only `spec.restartNonce` changed: the workers restart at a batch boundary in the same
    /// generation (same checkpoint, state kept, also for `stateless`).
    RestartRequested,
    /// `suspend` became true.
    Suspend,
    /// `suspend` became false.
    Resume,
    /// The spec is invalid; the running generation is left alone.
    Invalid,
    /// The checkpoint cannot be used; the running generation is left alone.
    CheckpointUnavailable,
    /// The pre-upgrade check refused the spec or could not complete; the running generation is
    /// left alone.
    CheckRefused,
    /// Reconciliation is paused by [`PAUSE_ANNOTATION`]: nothing is applied.
    Paused,
    /// A worker stopped on a poison batch: the workers are stopped (not restarted, not rolled
    /// back) until the spec changes (`restartNonce` will do).
    PoisonBatch,
    /// `spec.restore` is pending: the workers are stopped until the restore has run.
    Restoring { batch_id: u64 },
}

/// Severity of a planned event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSeverity {
    Normal,
    Warning,
}

/// An event to publish about the query (PascalCase reason, as Kubernetes wants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub severity: EventSeverity,
    pub reason: String,
    /// The operation, e.g. `Reconcile`, `Rollout`.
    pub action: String,
    pub note: String,
}

/// When to reconcile again without a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    After(Duration),
    /// Only on the next change of the object (user errors: no hot loop).
    AwaitChange,
}

/// The decisions of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub change: SpecChange,
    pub workers: WorkersAction,
    /// The complete new status (written whole with server-side apply).
    pub status: StreamingQueryStatus,
    pub events: Vec<PlannedEvent>,
    pub requeue: Requeue,
    /// The autoscaler's windows after this reconcile (the caller keeps them for the next one).
    pub autoscaler_state: Option<crate::autoscaler::State>,
    /// The autoscaler's decision of this reconcile, if it made one.
    pub decision: Option<ScalingDecision>,
}

/// Whether the query's [`PAUSE_ANNOTATION`] is `"true"` (exactly, as Strimzi reads its own):
/// reconciliation leaves its children alone, and a backend neither restarts nor starts workers.
pub fn paused(query: &StreamingQuery) -> bool {
    query
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSE_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Label naming the query on every child and pod.
pub const QUERY_LABEL: &str = "sluice.dev/query";

/// Selector labels (immutable on a StatefulSet: never add to them).
pub fn selector_labels(query_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-worker".to_string(),
        ),
        (QUERY_LABEL.to_string(), query_name.to_string()),
    ])
}

/// The label selector of a query's worker pods, as `status.selector` shows it for the `/scale`
/// subresource (HPA and KEDA count pods with it).
pub fn worker_selector(query_name: &str) -> String {
    selector_labels(query_name)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Deterministic names of a query's children (all kinds share one name).
pub fn child_name(query_name: &str) -> String {
    format!("sluice-{query_name}")
}

/// The checkpoint base URL (`<location>/<namespace>/<name>/<uid>/`) a query uses.
///
/// Once resolved it is pinned in `status.checkpointLocation`, so a later change of the chart's
/// default never moves a running query's checkpoint.
///
/// # Errors
/// [`Error::CheckpointLocation`] when neither the spec nor the chart names a location, or the URL
/// is unusable; [`Error::MissingField`] without namespace/name/uid.
pub fn checkpoint_location(query: &StreamingQuery, config: &OperatorConfig) -> Result<String> {
    if let Some(pinned) = query
        .status
        .as_ref()
        .and_then(|s| s.checkpoint_location.clone())
    {
        return Ok(pinned);
    }
    let base = query
        .spec
        .checkpoint
        .location
        .clone()
        .or_else(|| config.default_checkpoint_location.clone())
        .ok_or_else(|| Error::CheckpointLocation {
            location: String::new(),
            message: "no checkpoint location: set spec.checkpoint.location or the chart's checkpoint.defaultLocation"
                .into(),
        })?;
    let namespace = query
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("namespace"))?;
    let name = query
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingField("name"))?;
    let uid = query
        .metadata
        .uid
        .as_deref()
        .ok_or(Error::MissingField("uid"))?;
    checkpoint::resolve(&base, namespace, name, uid)
}

/// The checkpoint URL of one deployment generation: the base for `lastState` (state carries
/// over), `<base>generations/<n>/` for `stateless` (every restart starts afresh).
pub fn generation_location(base: &str, mode: UpgradeMode, generation: i64) -> String {
    match mode {
        UpgradeMode::LastState => base.to_string(),
        UpgradeMode::Stateless => format!("{base}generations/{generation}/"),
    }
}

/// FNV-1a (64 bit) of a value's JSON, as 16 hex digits: stable across processes and releases.
pub(crate) fn hash_json<T: Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Hashes of the spec sections whose change needs a restart of the workers.
/// `parallelism` and `suspend` are absent: they scale instead.
pub fn section_hashes(spec: &StreamingQuerySpec, image: &str) -> BTreeMap<String, String> {
    let mut hashes = BTreeMap::new();
    let mut put = |name: &str, hash: String| {
        hashes.insert(name.to_string(), hash);
    };
    put("sources", hash_json(&spec.sources));
    put("tables", hash_json(&spec.tables));
    put("sql", hash_json(&(&spec.sql, &spec.sql_scope)));
    put("sink", hash_json(&spec.sink));
    put("outputMode", hash_json(&spec.output_mode));
    put("trigger", hash_json(&spec.trigger));
    put("checkpoint", hash_json(&spec.checkpoint));
    put("upgradeMode", hash_json(&spec.upgrade_mode));
    put("image", hash_json(&image));
    put("resources", hash_json(&spec.resources));
    put("env", hash_json(&spec.env));
    put("storageSecretRef", hash_json(&spec.storage_secret_ref));
    hashes
}

pub(crate) fn restart_hash(sections: &BTreeMap<String, String>) -> String {
    hash_json(sections)
}

/// Replicas the spec asks for (before `suspend`): `parallelism.replicas`, or with autoscaling
/// the running count clamped to `[minReplicas, maxReplicas]` (the autoscaler of issue 6 moves it).
fn wanted_replicas(spec: &StreamingQuerySpec, workers: Option<&WorkersObservation>) -> i32 {
    let fixed = i32::try_from(spec.parallelism.replicas).unwrap_or(i32::MAX);
    match &spec.parallelism.autoscale {
        Some(auto) if auto.enabled => {
            let min = i32::try_from(auto.min_replicas).unwrap_or(1);
            let max = i32::try_from(auto.max_replicas)
                .unwrap_or(i32::MAX)
                .max(min);
            let current = workers
                .map(|w| w.replicas)
                .filter(|r| *r > 0)
                .unwrap_or(fixed);
            current.clamp(min, max)
        }
        _ => fixed,
    }
}

fn changed_sections(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = new
        .iter()
        .filter(|(name, hash)| old.get(*name) != Some(*hash))
        .map(|(name, _)| name.clone())
        .chain(old.keys().filter(|name| !new.contains_key(*name)).cloned())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        // Hashes of the same sections but a different combined hash: an older operator's layout.
        names.push("spec".into());
    }
    names
}

pub(crate) fn event(
    severity: EventSeverity,
    reason: &str,
    action: &str,
    note: String,
) -> PlannedEvent {
    PlannedEvent {
        severity,
        reason: reason.into(),
        action: action.into(),
        note,
    }
}

/// Builds the resolved query document the workers read.
pub(crate) fn manifest_yaml(query: &StreamingQuery, image: &str, location: &str) -> Result<String> {
    let mut spec = query.spec.clone();
    spec.checkpoint.location = Some(location.to_string());
    spec.image = Some(image.to_string());
    let document = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamingQuery",
        "metadata": {
            "name": query.metadata.name,
            "namespace": query.metadata.namespace,
            "uid": query.metadata.uid,
        },
        "spec": spec,
    });
    serde_saphyr::to_string(&document).map_err(|e| Error::Serialization(e.to_string()))
}

/// What keeps running while a problem waits for the user, for event and condition messages.
fn running_note(workers: Option<&WorkersObservation>) -> String {
    match workers {
        Some(w) if w.replicas > 0 => format!("generation {} keeps running", w.generation),
        Some(w) => format!("generation {} stays stopped", w.generation),
        None => "nothing runs until then".into(),
    }
}

/// The next step for a refused checkpoint location, by condition reason.
pub fn checkpoint_next_step(reason: &str) -> &'static str {
    match reason {
        "CheckpointOwned" => {
            "choose another checkpoint location (spec.checkpoint.location) or delete the owning query \
             with spec.checkpoint.retention: Delete (a retained checkpoint stays owned)"
        }
        _ => {
            "set spec.checkpoint.location (or the chart's checkpoint.defaultLocation) to a usable \
             s3:// or file:// URL and apply again"
        }
    }
}

/// Rounds a rate to 3 significant digits: what a user reads, and no status write for noise.
pub fn round_rate(rate: f64) -> f64 {
    if rate == 0.0 || !rate.is_finite() {
        return rate;
    }
    let digits = 3 - 1 - rate.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (rate * scale).round() / scale
}

/// Copies the workers' progress into the status, at most once per `config.resync` (from
/// `status.progressTime`), rates rounded: a steady query's status is not rewritten per batch.
fn refresh_progress(
    status: &mut StreamingQueryStatus,
    progress: &ProgressObservation,
    config: &OperatorConfig,
    now: &Time,
) {
    let due = status.progress_time.as_ref().is_none_or(|last| {
        let age = now.0.as_millisecond() - last.0.as_millisecond();
        u128::try_from(age).unwrap_or(0) >= config.resync.as_millis()
    });
    if !due {
        return;
    }
    status.progress_time = Some(now.clone());
    status.input_rows_per_second = progress
        .input_rows_per_second
        .map(round_rate)
        .or(status.input_rows_per_second);
    status.processed_rows_per_second = progress
        .processed_rows_per_second
        .map(round_rate)
        .or(status.processed_rows_per_second);
    status.last_committed_batch_id = progress
        .last_committed_batch_id
        .or(status.last_committed_batch_id);
    status.lag = progress.lag.or(status.lag);
    status.watermark = progress.watermark.clone().or(status.watermark.take());
    status.last_batch_time = progress
        .last_batch_time
        .clone()
        .or(status.last_batch_time.take());
}

/// Plans one reconcile of a live (not deleting) query.
///
/// `validation` is `sluice_crds::validate_spec(&query.spec)`. `now` stamps condition transitions.
///
/// # Errors
/// Only internal errors (serialization, missing metadata); user and external problems are part of
/// the returned plan (conditions, events, [`WorkersAction::LeaveAlone`]).
pub fn plan(
    query: &StreamingQuery,
    validation: Result<(), ValidationError>,
    observation: &Observation,
    config: &OperatorConfig,
    now: Time,
) -> Result<Plan> {
    let validation = validation.and_then(|()| run::check_schedule(&query.spec, config));
    let previous = query.status.clone().unwrap_or_default();
    let generation = query.metadata.generation;
    let workers = observation.workers.as_ref();
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.replicas = Some(workers.map_or(0, |w| w.ready_replicas));
    status.selector = query.metadata.name.as_deref().map(worker_selector);
    if let Some(progress) = &observation.progress {
        refresh_progress(&mut status, progress, config, &now);
    }
    let mut events = Vec::new();
    if let Some(observed) = workers.and_then(|w| w.restarts) {
        let before = previous.restarts.unwrap_or(0);
        if observed > before {
            status.restarts = Some(observed);
            let last = workers
                .and_then(|w| w.last_exit.clone())
                .unwrap_or_else(|| "a worker exited".into());
            events.push(event(
                EventSeverity::Warning,
                "WorkerRestarted",
                "Recover",
                format!("{last}; restarted ({observed} restart(s) in total)"),
            ));
        }
    }
    let conditions = &mut status.conditions;
    let was_degraded = conditions::find(conditions, DEGRADED)
        .filter(|c| c.status == "True")
        .cloned();

    // 0. Paused: observe and report only; the workers stay exactly as they are.
    let was_paused = conditions::is_true(conditions, RECONCILIATION_PAUSED);
    if paused(query) {
        conditions::set(
            conditions,
            RECONCILIATION_PAUSED,
            true,
            "PauseAnnotation",
            &format!(
                "annotation {PAUSE_ANNOTATION} is \"true\": the operator creates, changes, scales \
                 and deletes nothing of this query; {}; remove the annotation to resume",
                running_note(workers)
            ),
            generation,
            now,
        );
        if !was_paused {
            events.push(event(
                EventSeverity::Normal,
                "ReconciliationPaused",
                "Pause",
                format!("{PAUSE_ANNOTATION} is \"true\": leaving the workers as they are"),
            ));
        }
        return Ok(Plan {
            change: SpecChange::Paused,
            workers: WorkersAction::LeaveAlone,
            status,
            events,
            requeue: Requeue::After(config.resync),
            autoscaler_state: None,
            decision: None,
        });
    }
    if was_paused {
        conditions::set(
            conditions,
            RECONCILIATION_PAUSED,
            false,
            "Resumed",
            "",
            generation,
            now.clone(),
        );
        events.push(event(
            EventSeverity::Normal,
            "ReconciliationResumed",
            "Pause",
            format!("{PAUSE_ANNOTATION} removed: reconciling again"),
        ));
    }

    // 1. Invalid spec: a condition and one Warning event per distinct problem; keep running.
    if let Err(invalid) = validation {
        let message = format!(
            "{invalid}; fix the manifest and apply it again; {}",
            running_note(workers)
        );
        let repeated = was_degraded
            .as_ref()
            .is_some_and(|c| c.reason == "InvalidSpec" && c.message == message);
        conditions::set(
            conditions,
            DEGRADED,
            true,
            "InvalidSpec",
            &message,
            generation,
            now.clone(),
        );
        conditions::set(
            conditions,
            PROGRESSING,
            false,
            "InvalidSpec",
            "the last valid generation keeps running",
            generation,
            now.clone(),
        );
        if !repeated {
            events.push(event(
                EventSeverity::Warning,
                "InvalidSpec",
                "Validate",
                message,
            ));
        }
        if workers.is_none() {
            status.phase = Some(Phase::Failed);
            conditions::set(
                conditions,
                READY,
                false,
                "InvalidSpec",
                "no valid spec has run yet",
                generation,
                now,
            );
        }
        return Ok(Plan {
            change: SpecChange::Invalid,
            workers: WorkersAction::LeaveAlone,
            status,
            events,
            requeue: Requeue::AwaitChange,
            autoscaler_state: None,
            decision: None,
        });
    }

    // 2. Checkpoint: must be claimed before anything runs against it.
    let base_location = match &observation.checkpoint {
        CheckpointObservation::Ready {
            location,
            claimed_now,
        } => {
            if *claimed_now {
                events.push(event(
                    EventSeverity::Normal,
                    "CheckpointClaimed",
                    "ClaimCheckpoint",
                    format!("claimed checkpoint location {location}"),
                ));
            }
            conditions::set(
                conditions,
                CHECKPOINT_STALE,
                false,
                "CheckpointVerified",
                "",
                generation,
                now.clone(),
            );
            location.clone()
        }
        CheckpointObservation::Refused {
            reason, message, ..
        } => {
            let message = &format!(
                "{message}; {}; {}",
                checkpoint_next_step(reason),
                running_note(workers)
            );
            let repeated = was_degraded
                .as_ref()
                .is_some_and(|c| c.reason == *reason && c.message == *message);
            conditions::set(
                conditions,
                CHECKPOINT_STALE,
                true,
                reason,
                message,
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                DEGRADED,
                true,
                reason,
                message,
                generation,
                now.clone(),
            );
            if !repeated {
                events.push(event(
                    EventSeverity::Warning,
                    reason,
                    "ClaimCheckpoint",
                    message.clone(),
                ));
            }
            if workers.is_none() {
                status.phase = Some(Phase::Failed);
                conditions::set(conditions, READY, false, reason, message, generation, now);
            }
            return Ok(Plan {
                change: SpecChange::CheckpointUnavailable,
                workers: WorkersAction::LeaveAlone,
                status,
                events,
                requeue: Requeue::AwaitChange,
                autoscaler_state: None,
                decision: None,
            });
        }
        CheckpointObservation::Unreachable { location, message } => {
            let stale = conditions::is_true(conditions, CHECKPOINT_STALE);
            let note = format!(
                "{location}: {message}; check the object-store credentials (spec.storageSecretRef or \
                 the chart's checkpoint.credentialsSecret) and endpoint; retrying with backoff, {}",
                running_note(workers)
            );
            conditions::set(
                conditions,
                CHECKPOINT_STALE,
                true,
                "CheckpointUnreachable",
                &note,
                generation,
                now,
            );
            if status.phase.is_none() {
                // A new query waits for its store: say so rather than show no phase.
                status.phase = Some(Phase::Pending);
            }
            if !stale {
                events.push(event(
                    EventSeverity::Warning,
                    "CheckpointUnreachable",
                    "ClaimCheckpoint",
                    note,
                ));
            }
            return Ok(Plan {
                change: SpecChange::CheckpointUnavailable,
                workers: WorkersAction::LeaveAlone,
                status,
                events,
                requeue: Requeue::After(config.progress_poll),
                autoscaler_state: None,
                decision: None,
            });
        }
        CheckpointObservation::NotChecked => {
            return Err(Error::Internal(
                "plan called for a valid spec without a checkpoint check".into(),
            ));
        }
    };
    status.checkpoint_location = Some(base_location.clone());

    // 3. The spec to deploy (the user's, or the stable one after a rollback) and its check.
    let candidate = guard::candidate(query, workers, config, &now);
    let spec = &candidate.spec;
    status.rejected_spec_hash = candidate
        .rejected
        .as_ref()
        .map(|_| guard::spec_hash(&query.spec));
    let check_needed = guard::check_request(query, observation, config, &now)?.is_some();
    let report = match (&observation.check, check_needed) {
        (CheckObservation::Passed(report), _) => Some(report.clone()),
        (CheckObservation::Refused(message), true) => {
            let note = format!(
                "upgrade refused, {}: {message}",
                running_note(workers).replace("nothing runs until then", "nothing runs")
            );
            return Ok(hold(
                query,
                status,
                events,
                workers,
                "UpgradeRefused",
                note,
                Requeue::AwaitChange,
                now,
            ));
        }
        (CheckObservation::Unavailable(message), true) => {
            let note = format!(
                "the pre-upgrade check could not complete ({message}); holding the current deployment \
                 until it can, {}",
                running_note(workers)
            );
            return Ok(hold(
                query,
                status,
                events,
                workers,
                "UpgradeCheckUnavailable",
                note,
                Requeue::After(config.progress_poll),
                now,
            ));
        }
        (CheckObservation::Pending(message), true) => {
            let conditions = &mut status.conditions;
            conditions::set(
                conditions,
                PROGRESSING,
                true,
                "UpgradeCheckRunning",
                &format!("checking the spec before it rolls out: {message}"),
                generation,
                now,
            );
            if workers.is_none() {
                status.phase = Some(Phase::Pending);
            }
            return Ok(Plan {
                change: SpecChange::CheckRefused,
                workers: WorkersAction::LeaveAlone,
                status,
                events,
                requeue: Requeue::After(config.progress_poll),
                autoscaler_state: None,
                decision: None,
            });
        }
        _ => None,
    };
    let mode = run::run_mode(spec);
    if mode != RunMode::Continuous {
        return run::plan_run(
            query,
            spec,
            mode,
            status,
            events,
            workers,
            &base_location,
            config,
            now,
        );
    }
    // A poison batch (seen now, or held since it was seen for this very spec): the workers stay
    // stopped until the spec changes; a change that restarts them anyway is a new attempt.
    let poison = {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| config.default_image.clone());
        let hash = restart_hash(&section_hashes(spec, &image));
        let retrying = workers
            .is_some_and(|w| w.restart_hash != hash || w.restart_nonce != spec.restart_nonce);
        let held = conditions::find(&status.conditions, POISON_BATCH)
            .filter(|c| c.status == "True" && c.observed_generation == generation)
            .map(|c| c.message.clone());
        let seen = workers.and_then(|w| w.poison.as_deref()).map(|line| {
            format!(
                "{line}; the workers are stopped (restarting would replay the same batch): fix \
                 the data or the sink, then change spec.restartNonce (or the spec) to retry, or \
                 set onPoisonBatch: quarantine to set the batch's input aside"
            )
        });
        if retrying { None } else { seen.or(held) }
    };
    let was_poisoned = conditions::is_true(&status.conditions, POISON_BATCH);
    let conditions = &mut status.conditions;
    match &poison {
        Some(message) => {
            conditions::set(
                conditions,
                POISON_BATCH,
                true,
                "PoisonBatch",
                message,
                generation,
                now.clone(),
            );
            if !was_poisoned {
                events.push(event(
                    EventSeverity::Warning,
                    "PoisonBatch",
                    "Recover",
                    message.clone(),
                ));
            }
        }
        None if was_poisoned => {
            conditions::set(
                conditions,
                POISON_BATCH,
                false,
                "Retrying",
                "the spec changed: the workers try the batch again",
                generation,
                now.clone(),
            );
        }
        None => {}
    }
    let degraded = candidate
        .rejected
        .as_ref()
        .map(|m| ("SpecRejected", m.clone()))
        .or_else(|| poison.clone().map(|m| ("PoisonBatch", m)))
        .or_else(|| guard::crash_loop(workers).map(|m| ("WorkersCrashing", m)));
    match &degraded {
        Some((reason, message)) => {
            let repeated = was_degraded
                .as_ref()
                .is_some_and(|c| c.reason == *reason && c.message == *message);
            conditions::set(
                conditions,
                DEGRADED,
                true,
                reason,
                message,
                generation,
                now.clone(),
            );
            if !repeated && !candidate.rolling_back && poison.is_none() {
                events.push(event(
                    EventSeverity::Warning,
                    reason,
                    "Reconcile",
                    message.clone(),
                ));
            }
        }
        None => {
            conditions::set(
                conditions,
                DEGRADED,
                false,
                "AsExpected",
                "",
                generation,
                now.clone(),
            );
        }
    }

    // 4. Replicas: the stateful limit, then the spec (or the autoscaler's running count).
    let sources: Vec<String> = spec.sources.iter().map(|s| s.name.clone()).collect();
    let limit = report
        .as_ref()
        .and_then(|r| scale::scaling_limit(r, &sources))
        .filter(|_| scale::may_scale_out(spec));
    let mut limit_event = None;
    let limited_before = conditions::find(conditions, SCALING_LIMITED)
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone());
    match &limit {
        Some((reason, message)) => {
            conditions::set(
                conditions,
                SCALING_LIMITED,
                true,
                reason,
                message,
                generation,
                now.clone(),
            );
            if limited_before.as_deref() != Some(message.as_str()) {
                limit_event = Some(event(
                    EventSeverity::Warning,
                    "ScalingLimited",
                    "Scale",
                    message.clone(),
                ));
            }
        }
        None if scale::may_scale_out(spec) || limited_before.is_some() => {
            conditions::set(
                conditions,
                SCALING_LIMITED,
                false,
                "AsExpected",
                "",
                generation,
                now.clone(),
            );
        }
        None => {}
    }
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.default_image.clone());
    let sections = section_hashes(spec, &image);
    let new_restart_hash = restart_hash(&sections);
    let wanted = if limit.is_some() {
        1
    } else {
        wanted_replicas(spec, workers)
    };
    let restoring = restore::apply(query, &observation.restore, &mut status, &mut events, &now);
    let mut desired_replicas = if spec.suspend || poison.is_some() || restoring.is_some() {
        0
    } else {
        wanted
    };
    let previous_generation = workers
        .map(|w| w.generation)
        .or(previous.generation)
        .unwrap_or(0);
    let (mut change, deploy_generation) = match workers {
        None => (SpecChange::New, previous_generation.max(1)),
        Some(running) if running.restart_hash != new_restart_hash => (
            SpecChange::Restart {
                sections: changed_sections(&running.section_hashes, &sections),
            },
            previous_generation + 1,
        ),
        Some(running)
            if running.restart_nonce != spec.restart_nonce
                && running.replicas > 0
                && desired_replicas > 0 =>
        {
            (SpecChange::RestartRequested, previous_generation)
        }
        Some(running) if running.replicas != desired_replicas => {
            let change = if desired_replicas == 0 {
                SpecChange::Suspend
            } else if running.replicas == 0 {
                SpecChange::Resume
            } else {
                SpecChange::Scale {
                    from: running.replicas,
                    to: desired_replicas,
                }
            };
            (change, previous_generation)
        }
        Some(_) => (SpecChange::Unchanged, previous_generation),
    };
    if poison.is_some() && matches!(change, SpecChange::Suspend | SpecChange::Unchanged) {
        change = SpecChange::PoisonBatch;
    }
    if let Some(batch_id) = restoring
        && !spec.suspend
        && poison.is_none()
        && matches!(change, SpecChange::Suspend | SpecChange::Unchanged)
    {
        change = SpecChange::Restoring { batch_id };
    }

    // 5. The autoscaler, on a settled query only.
    let settled = matches!(change, SpecChange::Unchanged | SpecChange::PoisonBatch)
        && workers.is_some_and(|w| w.rollout_complete);
    let mut autoscaler_state = observation.autoscale.as_ref().map(|a| a.state.clone());
    let mut decision = None;
    if let (Some(input), Some(running)) = (&observation.autoscale, workers)
        && settled
        && limit.is_none()
        && !spec.suspend
        && poison.is_none()
    {
        let current = u32::try_from(running.replicas).unwrap_or(1);
        let (state, decided) = scale::autoscale(spec, report.as_ref(), current, input);
        autoscaler_state = Some(state);
        if let Some((entry, note)) = decided {
            events.push(note);
            if entry.applied {
                desired_replicas = i32::try_from(entry.to_replicas).unwrap_or(1);
                change = SpecChange::Scale {
                    from: running.replicas,
                    to: desired_replicas,
                };
            }
            status.scaling_history.push(entry.clone());
            let excess = status
                .scaling_history
                .len()
                .saturating_sub(scale::SCALING_HISTORY);
            status.scaling_history.drain(..excess);
            decision = Some(entry);
        }
    } else if let (Some(state), Some(input)) = (autoscaler_state.as_mut(), &observation.autoscale)
        && matches!(
            change,
            SpecChange::Scale { .. }
                | SpecChange::Restart { .. }
                | SpecChange::RestartRequested
                | SpecChange::Resume
        )
    {
        // A rescale by anyone starts the cool-down.
        state.rescaled(input.now_ms);
    }
    let conditions = &mut status.conditions;

    let location = generation_location(&base_location, spec.upgrade_mode, deploy_generation);
    let mut deployed = query.clone();
    deployed.spec = spec.clone();
    let desired = DesiredWorkers {
        generation: deploy_generation,
        replicas: desired_replicas,
        image: image.clone(),
        manifest_yaml: manifest_yaml(&deployed, &image, &location)?,
        checkpoint_location: location,
        restart_hash: new_restart_hash.clone(),
        section_hashes: sections,
        env: spec.env.clone(),
        resources: spec.resources.clone(),
        storage_secret_ref: spec.storage_secret_ref.clone(),
        http_port: config.worker_http_port,
        stop_first: desired_replicas > 0
            && workers.is_some_and(|w| {
                w.generation != deploy_generation
                    || w.replicas != desired_replicas
                    || w.restart_nonce != spec.restart_nonce
            }),
        restart_nonce: spec.restart_nonce.clone(),
        run: None,
    };
    status.generation = Some(deploy_generation);
    status.restart_nonce = spec.restart_nonce.clone();
    if !matches!(change, SpecChange::Unchanged) {
        status.last_rollout_time = Some(now.clone());
    }

    // 6. Phase, conditions and events.
    let phase = if poison.is_some() {
        Phase::Failed
    } else if spec.suspend {
        Phase::Suspended
    } else if candidate.rolling_back {
        Phase::RollingBack
    } else {
        match &change {
            SpecChange::New => Phase::Starting,
            SpecChange::Restart { .. } => Phase::Upgrading,
            SpecChange::Scale { .. } => Phase::Scaling,
            SpecChange::Resume | SpecChange::RestartRequested | SpecChange::Restoring { .. } => {
                Phase::Starting
            }
            _ if settled => Phase::Running,
            // Still rolling out what an earlier reconcile started.
            _ => match previous.phase {
                Some(
                    p @ (Phase::Starting | Phase::Upgrading | Phase::Scaling | Phase::RollingBack),
                ) => p,
                _ => Phase::Starting,
            },
        }
    };
    let previous_phase = previous.phase;
    status.phase = Some(phase);
    let phase_reason = format!("{phase:?}");
    match phase {
        Phase::Running => {
            conditions::set(
                conditions,
                READY,
                true,
                "Running",
                "all replicas run the current generation",
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                PROGRESSING,
                false,
                "RolloutComplete",
                "",
                generation,
                now.clone(),
            );
            status.last_stable_spec_hash = Some(new_restart_hash);
            status.last_stable_spec = serde_json::to_string(spec).ok();
            if previous_phase != Some(Phase::Running) {
                events.push(event(
                    EventSeverity::Normal,
                    "Running",
                    "Rollout",
                    format!(
                        "generation {deploy_generation} runs with {desired_replicas} replica(s)"
                    ),
                ));
            }
        }
        Phase::Failed => {
            let done = workers.is_some_and(|w| w.replicas == 0 && w.rollout_complete);
            conditions::set(
                conditions,
                READY,
                false,
                "PoisonBatch",
                "the workers stopped on a poison batch; see condition PoisonBatch",
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                PROGRESSING,
                !done,
                if done { "PoisonBatch" } else { "Stopping" },
                "",
                generation,
                now.clone(),
            );
        }
        Phase::Suspended => {
            conditions::set(
                conditions,
                READY,
                false,
                "Suspended",
                "spec.suspend is true; the checkpoint is kept",
                generation,
                now.clone(),
            );
            let done = workers.is_some_and(|w| w.replicas == 0 && w.rollout_complete);
            conditions::set(
                conditions,
                PROGRESSING,
                !done,
                if done { "Suspended" } else { "Stopping" },
                "",
                generation,
                now.clone(),
            );
        }
        _ => {
            let note = match (&decision, &change) {
                (Some(d), SpecChange::Scale { .. }) if d.applied => {
                    format!(
                        "autoscaler: {} -> {} replica(s)",
                        d.from_replicas, d.to_replicas
                    )
                }
                _ => format!(
                    "rolling out generation {deploy_generation} with {desired_replicas} replica(s)"
                ),
            };
            conditions::set(
                conditions,
                READY,
                false,
                &phase_reason,
                &note,
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                PROGRESSING,
                true,
                &phase_reason,
                &note,
                generation,
                now.clone(),
            );
        }
    }
    if let SpecChange::Restoring { batch_id } = &change {
        let note = restore::progress_note(*batch_id, &observation.restore);
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "Restoring",
            &note,
            generation,
            now.clone(),
        );
        conditions::set(
            &mut status.conditions,
            PROGRESSING,
            true,
            "Restoring",
            &note,
            generation,
            now.clone(),
        );
    }
    if let Some(downtime) = observation
        .progress
        .as_ref()
        .and_then(|p| p.rescale_downtime_seconds)
    {
        status.last_rescale_downtime_seconds = Some(downtime);
        events.push(event(
            EventSeverity::Normal,
            "RescaleDowntime",
            "Rollout",
            format!(
                "generation {deploy_generation} committed its first batch {downtime:.3} s after the last commit of the previous one"
            ),
        ));
    }
    match &change {
        SpecChange::New => events.push(event(
            EventSeverity::Normal,
            "Created",
            "Rollout",
            format!("starting generation {deploy_generation} with {desired_replicas} replica(s)"),
        )),
        SpecChange::Restart { .. } if candidate.rolling_back => events.push(event(
            EventSeverity::Warning,
            "RolledBack",
            "Rollback",
            candidate.rejected.clone().unwrap_or_default(),
        )),
        SpecChange::Restart { sections } => events.push(event(
            EventSeverity::Normal,
            "UpgradeStarted",
            "Rollout",
            format!(
                "{} changed: rolling out generation {deploy_generation} ({:?} upgrade)",
                sections.join(", "),
                spec.upgrade_mode
            ),
        )),
        SpecChange::Scale { .. } if decision.as_ref().is_some_and(|d| d.applied) => {}
        SpecChange::Scale { from, to } => events.push(event(
            EventSeverity::Normal,
            "Scaling",
            "Scale",
            format!("replicas {from} -> {to}"),
        )),
        SpecChange::RestartRequested => events.push(event(
            EventSeverity::Normal,
            "RestartRequested",
            "Restart",
            format!(
                "spec.restartNonce changed: restarting {desired_replicas} replica(s) of generation \
                 {deploy_generation} at a batch boundary, state kept"
            ),
        )),
        SpecChange::Suspend => events.push(event(
            EventSeverity::Normal,
            "Suspended",
            "Suspend",
            "stopping all workers; the checkpoint is kept".into(),
        )),
        SpecChange::Restoring { batch_id } if workers.is_some_and(|w| w.replicas > 0) => events
            .push(event(
                EventSeverity::Normal,
                "RestoreStarted",
                "Restore",
                format!(
                    "spec.restore.batchId is {batch_id}: stopping the workers at a batch boundary \
                     to restore the checkpoint"
                ),
            )),
        SpecChange::Resume => events.push(event(
            EventSeverity::Normal,
            "Resumed",
            "Resume",
            format!("starting {desired_replicas} replica(s) from the checkpoint"),
        )),
        _ => {}
    }
    events.extend(limit_event);
    let requeue = if phase == Phase::Running || (phase == Phase::Suspended && settled) {
        Requeue::After(config.resync)
    } else {
        Requeue::After(config.progress_poll)
    };
    Ok(Plan {
        change,
        workers: WorkersAction::Apply(Box::new(desired)),
        status,
        events,
        requeue,
        autoscaler_state,
        decision,
    })
}

/// A plan that touches nothing because the spec to deploy was refused by, or could not pass, the
/// pre-upgrade check: `Degraded=True` with `reason` and `note`, one Warning event per distinct
/// note, phase `Failed` (refused) or `Pending` (check unavailable) while nothing runs yet.
#[allow(clippy::too_many_arguments)]
fn hold(
    query: &StreamingQuery,
    mut status: StreamingQueryStatus,
    mut events: Vec<PlannedEvent>,
    workers: Option<&WorkersObservation>,
    reason: &str,
    note: String,
    requeue: Requeue,
    now: Time,
) -> Plan {
    let generation = query.metadata.generation;
    let conditions = &mut status.conditions;
    let repeated = conditions::find(conditions, DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == note);
    conditions::set(
        conditions,
        DEGRADED,
        true,
        reason,
        &note,
        generation,
        now.clone(),
    );
    conditions::set(
        conditions,
        PROGRESSING,
        false,
        reason,
        "the running generation is held",
        generation,
        now.clone(),
    );
    if workers.is_none() {
        status.phase = Some(if reason == "UpgradeRefused" {
            Phase::Failed
        } else {
            Phase::Pending
        });
        conditions::set(conditions, READY, false, reason, &note, generation, now);
    }
    if !repeated {
        events.push(event(EventSeverity::Warning, reason, "Validate", note));
    }
    Plan {
        change: SpecChange::CheckRefused,
        workers: WorkersAction::LeaveAlone,
        status,
        events,
        requeue,
        autoscaler_state: None,
        decision: None,
    }
}

/// What the finalizer does when a query is deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanupPlan {
    /// The location to apply retention to; `None` when no checkpoint was ever claimed.
    pub location: Option<String>,
    pub retention: sluice_crds::Retention,
}

/// Plans the cleanup of a deleted query: retention applies to the pinned location only (a query
/// that never claimed one has nothing to clean). Children go with their owner references.
pub fn plan_cleanup(query: &StreamingQuery) -> CleanupPlan {
    CleanupPlan {
        location: query
            .status
            .as_ref()
            .and_then(|s| s.checkpoint_location.clone()),
        retention: query.spec.checkpoint.retention,
    }
}

#[cfg(test)]
mod tests;
