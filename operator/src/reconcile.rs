//! One reconcile of a live query, independent of the backend:
//! observe → validate → claim checkpoint → plan (pure) → apply → events → status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::{StreamingQuery, validate_spec};

use crate::backend::Backend;
use crate::checkpoint::{CheckpointManager, Claim, Owner};
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{
    self, CheckObservation, CheckpointObservation, Observation, OperatorConfig, Plan,
    RestoreObservation, WorkersAction,
};
use crate::scaling::Scaler;

/// Claims the query's checkpoint location and reports the outcome as an observation.
///
/// User problems (no location, bad URL, owned by another query) become `Refused`; store failures
/// become `Unreachable`; internal errors are returned.
///
/// # Errors
/// Internal errors only (missing metadata, serialization).
pub async fn observe_checkpoint(
    query: &StreamingQuery,
    config: &OperatorConfig,
    checkpoints: &CheckpointManager,
) -> Result<CheckpointObservation> {
    let location = match plan::checkpoint_location(query, config) {
        Ok(location) => location,
        Err(e @ Error::CheckpointLocation { .. }) => {
            return Ok(CheckpointObservation::Refused {
                location: None,
                reason: "CheckpointLocationInvalid",
                message: e.to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    let owner = Owner {
        namespace: query
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingField("namespace"))?,
        name: query
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingField("name"))?,
        uid: query
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingField("uid"))?,
        claimed_at: Timestamp::now().to_string(),
    };
    Ok(match checkpoints.claim(&location, &owner).await {
        Ok(claim) => CheckpointObservation::Ready {
            location,
            claimed_now: claim == Claim::Created,
        },
        Err(e @ Error::CheckpointOwned { .. }) => CheckpointObservation::Refused {
            location: Some(location),
            reason: "CheckpointOwned",
            message: e.to_string(),
        },
        Err(e @ Error::CheckpointLocation { .. }) => CheckpointObservation::Refused {
            location: Some(location),
            reason: "CheckpointLocationInvalid",
            message: e.to_string(),
        },
        Err(e) if e.kind() == ErrorKind::External => CheckpointObservation::Unreachable {
            location,
            message: e.to_string(),
        },
        Err(e) => return Err(e),
    })
}

/// Reconciles a live (not deleting) query with `backend` at `now` and returns the plan that was
/// carried out: observe (workers, progress, checkpoint claim, the pre-upgrade check, autoscaler
/// metrics) → validate → plan (once, pure) → apply → events → status. `scaler` (when given) runs
/// the check and reads the metrics; without it nothing is checked (tests) and nothing
/// autoscales. Events are published best-effort (a failed event never fails the reconcile), also
/// when the apply fails (a claimed checkpoint is news either way); status is written last, and
/// only when it changed.
///
/// # Errors
/// External errors from the backend (retried by the caller with backoff) and internal errors.
pub async fn reconcile_live<B: Backend>(
    backend: &B,
    checkpoints: &CheckpointManager,
    query: &StreamingQuery,
    config: &OperatorConfig,
    scaler: Option<&Scaler>,
    now: Time,
) -> Result<Plan> {
    let workers = backend.observe_workers(query).await?;
    let progress = match &workers {
        Some(running) => backend.observe_progress(query, running).await,
        None => None,
    };
    let validation = validate_spec(&query.spec);
    // A paused query is only observed: no claim, no check Job, no metrics for the autoscaler.
    let paused = plan::paused(query);
    let checkpoint = if validation.is_ok() && !paused {
        observe_checkpoint(query, config, checkpoints).await?
    } else {
        CheckpointObservation::NotChecked
    };
    let mut observation = Observation {
        workers,
        checkpoint,
        progress: progress.map(|p| p.observation),
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    };
    if validation.is_ok()
        && !paused
        && let Some(scaler) = scaler
    {
        if let Some(request) = plan::check_request(query, &observation, config, &now)? {
            observation.check = scaler.check(query, &request).await;
        }
        // Only once every worker has stopped (the request says so): nothing writes to the
        // checkpoint while it is rolled back.
        if let Some(request) = plan::restore_request(query, &observation, config)? {
            observation.restore = scaler.restore(query, &request).await;
        }
        observation.autoscale = scaler
            .autoscale_input(query, observation.workers.as_ref())
            .await;
    }
    let plan = plan::plan(query, validation, &observation, config, now)?;
    if let Some(scaler) = scaler {
        if let Some(state) = &plan.autoscaler_state {
            scaler.put_state(query, state.clone());
        }
        if let Some(decision) = &plan.decision {
            scaler.counters.count_scaling_decision(
                query.metadata.namespace.as_deref().unwrap_or_default(),
                query.metadata.name.as_deref().unwrap_or_default(),
                decision.from_replicas,
                decision.to_replicas,
                decision.applied,
            );
        }
    }
    let applied = match &plan.workers {
        WorkersAction::Apply(desired) => backend.apply_workers(query, desired).await,
        WorkersAction::LeaveAlone => Ok(()),
    };
    for event in &plan.events {
        if applied.is_err() && event.action != "ClaimCheckpoint" {
            continue;
        }
        if let Err(e) = backend.publish(query, event).await {
            tracing::warn!(reason = %event.reason, error = %e, "could not publish event");
        }
    }
    applied?;
    if query.status.as_ref() != Some(&plan.status) {
        backend.write_status(query, &plan.status).await?;
    }
    if let CheckpointObservation::Unreachable { location, message } = observation.checkpoint {
        return Err(Error::CheckpointUnreachable { location, message });
    }
    Ok(plan)
}
