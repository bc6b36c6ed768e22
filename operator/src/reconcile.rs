//! One reconcile of a live query, independent of the backend:
//! observe → validate → claim checkpoint → plan (pure) → apply → events → status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::conditions::{self, SCALING_LIMITED};
use sluice_crds::{StreamingQuery, validate_spec};

use crate::backend::Backend;
use crate::checkpoint::{CheckpointManager, Claim, Owner};
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{self, CheckpointObservation, Observation, OperatorConfig, Plan, WorkersAction};
use crate::scaling::{self, Scaler, scaling_limit};

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

/// Reconciles a live (not deleting) query with `backend` and returns the plan that was carried
/// out. The workers' `/progress` fills the status rates; `scaler` (when given) holds stateful
/// queries that cannot be split at one replica and runs the autoscaler. Events are published
/// best-effort (a failed event never fails the reconcile); status is written last so it
/// describes what was applied.
///
/// # Errors
/// External errors from the backend (retried by the caller with backoff) and internal errors.
pub async fn reconcile_live<B: Backend>(
    backend: &B,
    checkpoints: &CheckpointManager,
    query: &StreamingQuery,
    config: &OperatorConfig,
    scaler: Option<&Scaler>,
) -> Result<Plan> {
    let workers = backend.observe_workers(query).await?;
    let progress = match &workers {
        Some(running) => backend.observe_progress(query, running).await,
        None => None,
    };
    let validation = validate_spec(&query.spec);
    let checkpoint = if validation.is_ok() {
        observe_checkpoint(query, config, checkpoints).await?
    } else {
        CheckpointObservation::NotChecked
    };
    let observation = Observation {
        workers,
        checkpoint,
        progress: progress.as_ref().map(|p| p.observation.clone()),
    };
    let now = Time(Timestamp::now());
    let mut plan = plan::plan(query, validation, &observation, config, now.clone())?;
    if let Some(progress) = &progress {
        plan.status.last_batch_time = progress
            .last_batch_time
            .clone()
            .or(plan.status.last_batch_time.take());
    }
    if scaler.is_some()
        && matches!(plan.workers, WorkersAction::Apply(_))
        && !scaling::may_scale_out(query)
        && conditions::is_true(&plan.status.conditions, SCALING_LIMITED)
    {
        // Back to one replica: nothing is limited any more.
        scaling::mark_limit(&mut plan, None, query.metadata.generation, now.clone());
    }
    if let Some(scaler) = scaler
        && let WorkersAction::Apply(desired) = &plan.workers
        && let Some(report) = scaler.report(query, desired).await
    {
        let sources: Vec<String> = query.spec.sources.iter().map(|s| s.name.clone()).collect();
        let limit = scaling_limit(&report, &sources);
        if limit.is_some() {
            // Plan again as if one replica were asked for, so phase, events and the rollout
            // agree with what runs.
            let mut held = query.clone();
            held.spec.parallelism.replicas = 1;
            held.spec.parallelism.autoscale = None;
            let last_batch_time = plan.status.last_batch_time.clone();
            plan = plan::plan(&held, Ok(()), &observation, config, now.clone())?;
            plan.status.last_batch_time = last_batch_time;
        }
        scaling::mark_limit(
            &mut plan,
            limit.as_deref(),
            query.metadata.generation,
            now.clone(),
        );
        if limit.is_none() {
            scaler
                .autoscale(query, &mut plan, observation.workers.as_ref(), &report)
                .await;
        }
    }
    if let WorkersAction::Apply(desired) = &plan.workers {
        backend.apply_workers(query, desired).await?;
    }
    for event in &plan.events {
        if let Err(e) = backend.publish(query, event).await {
            tracing::warn!(reason = %event.reason, error = %e, "could not publish event");
        }
    }
    if query.status.as_ref() != Some(&plan.status) {
        backend.write_status(query, &plan.status).await?;
    }
    if let CheckpointObservation::Unreachable { location, message } = observation.checkpoint {
        return Err(Error::CheckpointUnreachable { location, message });
    }
    Ok(plan)
}
