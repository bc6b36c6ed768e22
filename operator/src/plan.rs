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
use sluice_crds::conditions::{self, CHECKPOINT_STALE, DEGRADED, PROGRESSING, READY};
use sluice_crds::{
    Phase, StreamingQuery, StreamingQuerySpec, StreamingQueryStatus, UpgradeMode, ValidationError,
};

use crate::checkpoint;
use crate::error::{Error, Result};

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
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: "ghcr.io/sluice/sluice-worker:latest".into(),
            default_checkpoint_location: None,
            worker_http_port: 9464,
            resync: Duration::from_secs(300),
            progress_poll: Duration::from_secs(10),
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
}

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
}

/// Everything observed before planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `None` when no worker deployment exists.
    pub workers: Option<WorkersObservation>,
    pub checkpoint: CheckpointObservation,
    pub progress: Option<ProgressObservation>,
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
    /// `suspend` became true.
    Suspend,
    /// `suspend` became false.
    Resume,
    /// The spec is invalid; the running generation is left alone.
    Invalid,
    /// The checkpoint cannot be used; the running generation is left alone.
    CheckpointUnavailable,
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
fn hash_json<T: Serialize>(value: &T) -> String {
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

fn restart_hash(sections: &BTreeMap<String, String>) -> String {
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

fn event(severity: EventSeverity, reason: &str, action: &str, note: String) -> PlannedEvent {
    PlannedEvent {
        severity,
        reason: reason.into(),
        action: action.into(),
        note,
    }
}

/// Builds the resolved query document the workers read.
fn manifest_yaml(query: &StreamingQuery, image: &str, location: &str) -> Result<String> {
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
    let spec = &query.spec;
    let previous = query.status.clone().unwrap_or_default();
    let generation = query.metadata.generation;
    let workers = observation.workers.as_ref();
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.replicas = Some(workers.map_or(0, |w| w.ready_replicas));
    if let Some(progress) = &observation.progress {
        status.input_rows_per_second = progress
            .input_rows_per_second
            .or(status.input_rows_per_second);
        status.processed_rows_per_second = progress
            .processed_rows_per_second
            .or(status.processed_rows_per_second);
        status.last_committed_batch_id = progress
            .last_committed_batch_id
            .or(status.last_committed_batch_id);
        status.lag = progress.lag.or(status.lag);
        status.watermark = progress.watermark.clone().or(status.watermark);
    }
    let mut events = Vec::new();
    let conditions = &mut status.conditions;
    let was_degraded = conditions::find(conditions, DEGRADED)
        .filter(|c| c.status == "True")
        .cloned();

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
            });
        }
        CheckpointObservation::NotChecked => {
            return Err(Error::Internal(
                "plan called for a valid spec without a checkpoint check".into(),
            ));
        }
    };
    status.checkpoint_location = Some(base_location.clone());
    conditions::set(
        conditions,
        DEGRADED,
        false,
        "AsExpected",
        "",
        generation,
        now.clone(),
    );

    // 3. Classify the change against the running deployment.
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.default_image.clone());
    let sections = section_hashes(spec, &image);
    let new_restart_hash = restart_hash(&sections);
    let wanted = wanted_replicas(spec, workers);
    let desired_replicas = if spec.suspend { 0 } else { wanted };
    let previous_generation = workers
        .map(|w| w.generation)
        .or(previous.generation)
        .unwrap_or(0);
    let (change, deploy_generation) = match workers {
        None => (SpecChange::New, previous_generation.max(1)),
        Some(running) if running.restart_hash != new_restart_hash => (
            SpecChange::Restart {
                sections: changed_sections(&running.section_hashes, &sections),
            },
            previous_generation + 1,
        ),
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
    let location = generation_location(&base_location, spec.upgrade_mode, deploy_generation);
    let desired = DesiredWorkers {
        generation: deploy_generation,
        replicas: desired_replicas,
        image: image.clone(),
        manifest_yaml: manifest_yaml(query, &image, &location)?,
        checkpoint_location: location,
        restart_hash: new_restart_hash.clone(),
        section_hashes: sections,
        env: spec.env.clone(),
        resources: spec.resources.clone(),
        storage_secret_ref: spec.storage_secret_ref.clone(),
        http_port: config.worker_http_port,
    };
    status.generation = Some(deploy_generation);

    // 4. Phase, conditions and events.
    let settled = change == SpecChange::Unchanged && workers.is_some_and(|w| w.rollout_complete);
    let phase = if spec.suspend {
        Phase::Suspended
    } else {
        match &change {
            SpecChange::New => Phase::Starting,
            SpecChange::Restart { .. } => Phase::Upgrading,
            SpecChange::Scale { .. } => Phase::Scaling,
            SpecChange::Resume => Phase::Starting,
            _ if settled => Phase::Running,
            // Still rolling out what an earlier reconcile started.
            _ => match previous.phase {
                Some(p @ (Phase::Starting | Phase::Upgrading | Phase::Scaling)) => p,
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
                now,
            );
            status.last_stable_spec_hash = Some(new_restart_hash);
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
                now,
            );
        }
        _ => {
            let note = format!(
                "rolling out generation {deploy_generation} with {desired_replicas} replica(s)"
            );
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
                now,
            );
        }
    }
    match &change {
        SpecChange::New => events.push(event(
            EventSeverity::Normal,
            "Created",
            "Rollout",
            format!("starting generation {deploy_generation} with {desired_replicas} replica(s)"),
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
        SpecChange::Scale { from, to } => events.push(event(
            EventSeverity::Normal,
            "Scaling",
            "Scale",
            format!("replicas {from} -> {to}"),
        )),
        SpecChange::Suspend => events.push(event(
            EventSeverity::Normal,
            "Suspended",
            "Suspend",
            "stopping all workers; the checkpoint is kept".into(),
        )),
        SpecChange::Resume => events.push(event(
            EventSeverity::Normal,
            "Resumed",
            "Resume",
            format!("starting {desired_replicas} replica(s) from the checkpoint"),
        )),
        _ => {}
    }
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
    })
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
