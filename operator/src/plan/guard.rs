//! Guards before a rollout, decided from observations only: the pre-upgrade check
//! (`sluice-worker check --checkpoint`, `UpgradeRefused`), rollback of a generation that is not
//! Ready within `readyTimeout` to `status.lastStableSpec` (after apache/flink-kubernetes-operator's
//! `lastStableSpec`), and crash-loop detection.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::conditions::{self, DEGRADED};
use sluice_crds::contract::CheckReport;
use sluice_crds::{StreamingQuery, StreamingQuerySpec, StreamingQueryStatus};

use super::{
    CRASH_LOOP_EXITS, CRASH_LOOP_WINDOW, CheckpointObservation, Observation, OperatorConfig,
    WorkersObservation, generation_location, hash_json, manifest_yaml, restart_hash,
    section_hashes,
};
use crate::error::Result;

/// Outcome of `sluice-worker check` for the spec a [`CheckRequest`] named.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckObservation {
    /// No check was asked for (nothing new starts), or the backend has no checker (tests).
    NotRun,
    /// The spec is valid and fits the checkpoint.
    Passed(CheckReport),
    /// The planner or the checkpoint refused it (a user error); the message says why.
    Refused(String),
    /// The check could not complete (store unreachable, Job failed to start, timeout): the
    /// running deployment is held (fail closed) until it can.
    Unavailable(String),
    /// The check is still running (a Job on Kubernetes): the running deployment is held.
    Pending(String),
}

/// What to check before a rollout: the resolved manifest, against the checkpoint it will use.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRequest {
    /// Cache key: the spec's restart hash and the checkpoint location (a result holds for as long
    /// as both do).
    pub key: String,
    /// Worker image of the spec (the check runs with the new spec's own image on Kubernetes).
    pub image: String,
    /// The resolved query document (`query.yaml`).
    pub manifest_yaml: String,
    /// `--checkpoint` for `lastState` upgrades (state carries over); `None` for `stateless`.
    pub checkpoint_location: Option<String>,
}

/// The spec to deploy: the user's, or the last stable one when the user's was rolled back.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub spec: StreamingQuerySpec,
    /// Why the user's spec is not deployed (`Degraded=True, SpecRejected`).
    pub rejected: Option<String>,
    /// True on the reconcile that starts the rollback.
    pub rolling_back: bool,
}

/// Hash of a whole spec (the identity of a user's edit).
pub fn spec_hash(spec: &StreamingQuerySpec) -> String {
    hash_json(spec)
}

fn stable_spec(status: &StreamingQueryStatus) -> Option<StreamingQuerySpec> {
    status
        .last_stable_spec
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
}

fn rollout_age(status: &StreamingQueryStatus, now: &Time) -> Option<Duration> {
    let started = status.last_rollout_time.as_ref()?;
    let ms = now.0.as_millisecond() - started.0.as_millisecond();
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Chooses the spec to deploy. A spec rolled back earlier stays out until the user edits it
/// (`status.rejectedSpecHash`); a restart-type rollout that is not Ready within
/// `config.ready_timeout` (from `status.lastRolloutTime`) goes back to `status.lastStableSpec`.
pub fn candidate(
    query: &StreamingQuery,
    workers: Option<&WorkersObservation>,
    config: &OperatorConfig,
    now: &Time,
) -> Candidate {
    let status = query.status.clone().unwrap_or_default();
    let user = Candidate {
        spec: query.spec.clone(),
        rejected: None,
        rolling_back: false,
    };
    let Some(stable) = stable_spec(&status) else {
        return user;
    };
    if status.rejected_spec_hash.as_deref() == Some(spec_hash(&query.spec).as_str()) {
        let message = conditions::find(&status.conditions, DEGRADED)
            .filter(|c| c.reason == "SpecRejected")
            .map(|c| c.message.clone())
            .unwrap_or_else(|| {
                "rolled back to the last stable spec; edit the spec to try again".into()
            });
        return Candidate {
            spec: stable,
            rejected: Some(message),
            rolling_back: false,
        };
    }
    let Some(running) = workers else {
        return user;
    };
    let stable_hash = status.last_stable_spec_hash.clone().unwrap_or_default();
    let overdue = rollout_age(&status, now).is_some_and(|age| age > config.ready_timeout);
    // A poison batch is the data's fault, not the spec's: no rollback for it.
    if running.replicas > 0
        && running.poison.is_none()
        && !running.rollout_complete
        && running.restart_hash != stable_hash
        && overdue
    {
        let message = format!(
            "generation {} was not Ready within {} s: rolling back to the last stable spec ({stable_hash}); \
             fix the spec and apply it again",
            running.generation,
            config.ready_timeout.as_secs(),
        );
        return Candidate {
            spec: stable,
            rejected: Some(message),
            rolling_back: true,
        };
    }
    user
}

/// The check to run before planning: the spec [`candidate`] chooses, when it would start new
/// workers (no deployment yet, or a restart-type change) or may run more than one replica (the
/// report decides `ScalingLimited`). `None` for an invalid spec, an unusable checkpoint, a
/// suspended or paused query, or nothing new to check.
///
/// # Errors
/// Internal errors only (serialization, missing metadata).
pub fn check_request(
    query: &StreamingQuery,
    observation: &Observation,
    config: &OperatorConfig,
    now: &Time,
) -> Result<Option<CheckRequest>> {
    let CheckpointObservation::Ready { location, .. } = &observation.checkpoint else {
        return Ok(None);
    };
    if super::paused(query) {
        return Ok(None);
    }
    let workers = observation.workers.as_ref();
    let candidate = candidate(query, workers, config, now);
    let spec = &candidate.spec;
    if spec.suspend {
        return Ok(None);
    }
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.default_image.clone());
    let hash = restart_hash(&section_hashes(spec, &image));
    let starts_new = workers.is_none_or(|w| w.restart_hash != hash);
    if !starts_new && !super::scale::may_scale_out(spec) {
        return Ok(None);
    }
    let previous = query.status.as_ref().and_then(|s| s.generation);
    let generation = match workers {
        Some(w) if w.restart_hash != hash => w.generation + 1,
        Some(w) => w.generation,
        None => previous.unwrap_or(0).max(1),
    };
    let generation_location = generation_location(location, spec.upgrade_mode, generation);
    let mut planned = query.clone();
    planned.spec = spec.clone();
    Ok(Some(CheckRequest {
        key: format!("{hash}@{location}"),
        manifest_yaml: manifest_yaml(&planned, &image, &generation_location)?,
        checkpoint_location: (spec.upgrade_mode == sluice_crds::UpgradeMode::LastState)
            .then(|| location.clone()),
        image,
    }))
}

/// `Degraded=True, WorkersCrashing` message when the workers crash-loop.
pub fn crash_loop(workers: Option<&WorkersObservation>) -> Option<String> {
    let w = workers?;
    (w.recent_exits >= CRASH_LOOP_EXITS).then(|| {
        format!(
            "{} worker exits in the last {} s (last: {}); the workers keep being restarted, see their logs",
            w.recent_exits,
            CRASH_LOOP_WINDOW.as_secs(),
            w.last_exit.as_deref().unwrap_or("unknown"),
        )
    })
}
