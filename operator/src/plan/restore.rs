//! Restore to a retained batch (`spec.restore`, issue 22): stop the workers (as a suspend
//! does, at a batch boundary), run `sluice-worker checkpoint restore --batch-id N` against the
//! query's checkpoint (a new checkpoint generation, the old one kept), then start the workers
//! again on it. Decided here from observations only; the backends run the restore (a Job on
//! Kubernetes, a process locally) and report its verdict as a [`RestoreObservation`].
//!
//! A restore runs once per distinct `spec.restore.batchId`: `status.restore` records the one
//! applied (restored or refused), so an unchanged spec never restores twice.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::conditions::{self, RESTORE_REFUSED, RESTORED};
use sluice_crds::{RestoreStatus, StreamingQuery, StreamingQueryStatus};

use super::{
    CheckpointObservation, EventSeverity, Observation, OperatorConfig, PlannedEvent, RunMode,
    event, generation_location, manifest_yaml, run_mode,
};
use crate::error::Result;

/// Longest worker verdict kept in `status.restore.message` (its CRD bound).
const MAX_VERDICT: usize = sluice_crds::status::MAX_REASON as usize;

/// Outcome of `sluice-worker checkpoint restore` for the [`RestoreRequest`] of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreObservation {
    /// No restore was run (none pending, or the workers are still stopping).
    NotRun,
    /// Still running (a Job on Kubernetes): the workers stay stopped.
    Pending(String),
    /// Exit 0: checkpoint generation `generation` is current, restored to the batch. `message`
    /// is the worker's line.
    Restored { generation: u64, message: String },
    /// Exit 2: refused; the worker's one-line reason.
    Refused(String),
    /// The restore could not complete (store unreachable, Job failed to start): tried again on
    /// the next reconcile, the workers stay stopped.
    Unavailable(String),
}

/// What to restore: run by the backend once the workers are stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreRequest {
    /// `--batch-id`.
    pub batch_id: u64,
    /// Identity of this restore (batch, checkpoint location, `metadata.generation`): names the
    /// Kubernetes Job, so a later restore to the same batch is a new Job.
    pub key: String,
    /// Worker image of the spec (the Job runs it).
    pub image: String,
    /// The resolved query document (`--manifest`).
    pub manifest_yaml: String,
    /// The checkpoint the workers run on (`--checkpoint`).
    pub checkpoint_location: String,
}

/// The batch id of `spec.restore` when `status.restore` does not record it yet.
pub fn pending(query: &StreamingQuery) -> Option<u64> {
    let wanted = query.spec.restore.as_ref()?.batch_id;
    let applied = query
        .status
        .as_ref()
        .and_then(|s| s.restore.as_ref())
        .map(|r| r.batch_id);
    (applied != Some(wanted)).then_some(wanted)
}

/// The restore to run in this reconcile: a pending `spec.restore` of a continuous query whose
/// checkpoint is claimed and whose workers are all stopped (never while one still writes to the
/// checkpoint). `None` otherwise (also while paused).
///
/// # Errors
/// Internal errors only (serialization).
pub fn restore_request(
    query: &StreamingQuery,
    observation: &Observation,
    config: &OperatorConfig,
) -> Result<Option<RestoreRequest>> {
    let Some(batch_id) = pending(query) else {
        return Ok(None);
    };
    let CheckpointObservation::Ready { location, .. } = &observation.checkpoint else {
        return Ok(None);
    };
    if super::paused(query) || run_mode(&query.spec) != RunMode::Continuous {
        return Ok(None);
    }
    let workers = observation.workers.as_ref();
    if workers.is_some_and(|w| w.replicas > 0 || !w.rollout_complete) {
        return Ok(None);
    }
    let generation = workers
        .map(|w| w.generation)
        .or(query.status.as_ref().and_then(|s| s.generation))
        .unwrap_or(1);
    let spec = &query.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.default_image.clone());
    let checkpoint_location = generation_location(location, spec.upgrade_mode, generation);
    Ok(Some(RestoreRequest {
        batch_id,
        key: format!(
            "{batch_id}@{checkpoint_location}@{}",
            query.metadata.generation.unwrap_or(0)
        ),
        image: image.clone(),
        manifest_yaml: manifest_yaml(query, &image, &checkpoint_location)?,
        checkpoint_location,
    }))
}

/// The checkpoint generation named in the worker's success line (`restored to batch 7:
/// checkpoint generation 2 (from generation 1) is current; ...` or `already restored to batch 7:
/// checkpoint generation 2 is current`).
pub fn restored_generation(line: &str) -> Option<u64> {
    let rest = &line[line.find("checkpoint generation ")? + "checkpoint generation ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_VERDICT).collect()
}

/// Records a finished restore in the status (conditions `Restored` / `RestoreRefused`, an
/// event) and returns the batch id while one is still pending: the workers must stay stopped.
pub(crate) fn apply(
    query: &StreamingQuery,
    observation: &RestoreObservation,
    status: &mut StreamingQueryStatus,
    events: &mut Vec<PlannedEvent>,
    now: &Time,
) -> Option<u64> {
    let batch_id = pending(query)?;
    if super::paused(query) || run_mode(&query.spec) != RunMode::Continuous {
        return None;
    }
    let generation = query.metadata.generation;
    let conditions = &mut status.conditions;
    match observation {
        RestoreObservation::Restored {
            generation: restored,
            message,
        } => {
            let note = format!(
                "restored to batch {batch_id}: checkpoint generation {restored} is current; the \
                 workers replay the input after batch {batch_id}"
            );
            conditions::set(
                conditions,
                RESTORED,
                true,
                "Restored",
                &note,
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                RESTORE_REFUSED,
                false,
                "Restored",
                "",
                generation,
                now.clone(),
            );
            status.restore = Some(RestoreStatus {
                batch_id,
                generation: Some(*restored),
                outcome: "Restored".into(),
                message: Some(bounded(message)),
            });
            events.push(event(EventSeverity::Normal, "Restored", "Restore", note));
            None
        }
        RestoreObservation::Refused(reason) => {
            let reason = reason.trim_start_matches("restore refused: ");
            let note = format!(
                "restore to batch {batch_id} refused: {reason}; the workers restart on the \
                 checkpoint unchanged"
            );
            conditions::set(
                conditions,
                RESTORE_REFUSED,
                true,
                "RestoreRefused",
                &note,
                generation,
                now.clone(),
            );
            conditions::set(
                conditions,
                RESTORED,
                false,
                "RestoreRefused",
                "",
                generation,
                now.clone(),
            );
            status.restore = Some(RestoreStatus {
                batch_id,
                generation: None,
                outcome: "Refused".into(),
                message: Some(bounded(reason)),
            });
            events.push(event(
                EventSeverity::Warning,
                "RestoreRefused",
                "Restore",
                note,
            ));
            None
        }
        RestoreObservation::NotRun
        | RestoreObservation::Pending(_)
        | RestoreObservation::Unavailable(_) => Some(batch_id),
    }
}

/// The `Progressing` message while a restore is pending.
pub(crate) fn progress_note(batch_id: u64, observation: &RestoreObservation) -> String {
    match observation {
        RestoreObservation::Pending(message) => {
            format!("restoring the checkpoint to batch {batch_id}: {message}")
        }
        RestoreObservation::Unavailable(message) => format!(
            "the restore to batch {batch_id} could not complete ({message}); retrying, the \
             workers stay stopped"
        ),
        _ => format!("stopping the workers to restore the checkpoint to batch {batch_id}"),
    }
}
