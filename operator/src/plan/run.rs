//! One-shot and scheduled queries: with `trigger: {availableNow: true}` or `{once: true}` the
//! workers run to the end of the available input and exit, so they are not a StatefulSet (which
//! restarts what exits) but a *run*: a Kubernetes Job (a CronJob with `spec.schedule`), locally
//! processes that are not restarted. `plan` decides when a run starts (a one-shot query once per
//! deployment generation; a scheduled one when its cron is due and no run is active, Forbid) and
//! turns the backend's [`RunObservation`] into `status.lastRun` and the `Succeeded` / `Failed`
//! conditions. Every run continues from the same checkpoint, so each reads only the input the
//! previous one did not commit, and a failed run's range is read again by the next.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::conditions::{self, FAILED, PROGRESSING, READY, SUCCEEDED};
use sluice_crds::contract::RunReport;
use sluice_crds::{
    Phase, RunStatus, ScheduleSpec, StreamingQuery, StreamingQuerySpec, StreamingQueryStatus,
    ValidationError,
};

use super::{
    DesiredWorkers, EventSeverity, OperatorConfig, Plan, PlannedEvent, Requeue, SpecChange,
    WorkersAction, WorkersObservation, event, generation_location, manifest_yaml, restart_hash,
    section_hashes,
};
use crate::error::Result;

/// How a query's workers run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunMode<'a> {
    /// Continuously (a StatefulSet / supervised processes).
    Continuous,
    /// Once per deployment generation (a Job / processes not restarted).
    OneShot,
    /// Repeatedly on a cron schedule (a CronJob / the operator's timer).
    Scheduled(&'a ScheduleSpec),
}

/// The run mode of a spec: a bounded trigger makes a run, `schedule` makes it repeat.
pub fn run_mode(spec: &StreamingQuerySpec) -> RunMode<'_> {
    let bounded = spec.trigger.once == Some(true) || spec.trigger.available_now == Some(true);
    match (&spec.schedule, bounded) {
        (_, false) => RunMode::Continuous,
        (Some(schedule), true) => RunMode::Scheduled(schedule),
        (None, true) => RunMode::OneShot,
    }
}

/// What the backend saw of the latest run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunObservation {
    /// Deployment generation the run runs.
    pub generation: i64,
    /// Some worker of the run still runs.
    pub active: bool,
    pub start: Option<Time>,
    /// When the last worker of the run exited (`None` while active).
    pub end: Option<Time>,
    /// `None` while active; `Some(true)` when every worker exited 0.
    pub succeeded: Option<bool>,
    /// The workers' `Run: ...` lines, combined.
    pub report: Option<RunReport>,
    /// Why it failed: a worker's `PoisonBatch: ...` line or its exit status.
    pub message: Option<String>,
}

/// A run the backend must make real (instead of a continuous deployment).
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRun {
    /// Kubernetes: a CronJob with this schedule; local: `start_now` says when.
    pub schedule: Option<ScheduleSpec>,
    /// No new run (`spec.suspend`; a CronJob's `suspend`).
    pub suspend: bool,
    /// Start a run now (a one-shot Job of this generation, or a due scheduled run locally; a
    /// CronJob starts its own).
    pub start_now: bool,
}

/// A 6-field cron on a backend that cannot run seconds (Kubernetes) is a spec error there.
///
/// # Errors
/// The [`ValidationError`] naming `spec.schedule.cron`.
pub fn check_schedule(
    spec: &StreamingQuerySpec,
    config: &OperatorConfig,
) -> std::result::Result<(), ValidationError> {
    match &spec.schedule {
        Some(schedule) => {
            sluice_crds::schedule::parse_cron(&schedule.cron, config.schedule_seconds)
                .map(|_| ())
                .map_err(|message| ValidationError {
                    path: "spec.schedule.cron".into(),
                    message,
                })
        }
        None => Ok(()),
    }
}

fn ms(time: &Time) -> i64 {
    time.0.as_millisecond()
}

fn time_of(ms: i64) -> Option<Time> {
    Timestamp::from_millisecond(ms).ok().map(Time)
}

/// The status of an observed run.
fn run_status(run: &RunObservation) -> RunStatus {
    let report = run.report;
    RunStatus {
        generation: Some(run.generation),
        start: run.start.clone(),
        end: run.end.clone(),
        succeeded: run.succeeded,
        rows: report.map(|r| r.rows),
        first_batch_id: report.and_then(|r| r.first_batch_id),
        last_batch_id: report.and_then(|r| r.last_batch_id),
        batches: report.map(|r| match (r.first_batch_id, r.last_batch_id) {
            (Some(first), Some(last)) => format!("{first}..{last}"),
            _ => "none".into(),
        }),
        message: run.message.clone(),
    }
}

/// Plans a one-shot or scheduled query (after validation, checkpoint claim and check).
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_run(
    query: &StreamingQuery,
    spec: &StreamingQuerySpec,
    mode: RunMode<'_>,
    mut status: StreamingQueryStatus,
    mut events: Vec<PlannedEvent>,
    workers: Option<&WorkersObservation>,
    base_location: &str,
    config: &OperatorConfig,
    now: Time,
) -> Result<Plan> {
    let generation = query.metadata.generation;
    let previous = query.status.clone().unwrap_or_default();
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.default_image.clone());
    let sections = section_hashes(spec, &image);
    let hash = restart_hash(&sections);
    let deploy_generation = match workers {
        None => previous.generation.unwrap_or(0).max(1),
        Some(w) if w.restart_hash != hash => w.generation + 1,
        Some(w) => w.generation,
    };
    let run = workers.and_then(|w| w.run.clone());
    let active = run.as_ref().is_some_and(|r| r.active);
    // A continuous deployment (the trigger was changed to a one-shot one) stops first.
    let continuous_running = workers.is_some_and(|w| w.run.is_none() && w.replicas > 0);

    // 1. The observed run into status.lastRun; its end into the conditions, once.
    let mut finished_now = false;
    if let Some(run) = run.as_ref().filter(|r| r.start.is_some()) {
        let observed = run_status(run);
        let before = previous.last_run.as_ref();
        finished_now = observed.succeeded.is_some()
            && before.is_none_or(|b| b.succeeded.is_none() || b.start != observed.start);
        if finished_now {
            let ok = observed.succeeded == Some(true);
            let range = format!(
                "batches {}, {} rows",
                observed.batches.as_deref().unwrap_or("unknown"),
                observed
                    .rows
                    .map_or_else(|| "unknown".to_string(), |r| r.to_string())
            );
            let why = observed.message.clone().unwrap_or_default();
            let conditions = &mut status.conditions;
            if ok {
                conditions::set(
                    conditions,
                    SUCCEEDED,
                    true,
                    "RunSucceeded",
                    &range,
                    generation,
                    now.clone(),
                );
                conditions::set(
                    conditions,
                    FAILED,
                    false,
                    "RunSucceeded",
                    "",
                    generation,
                    now.clone(),
                );
                events.push(event(EventSeverity::Normal, "RunSucceeded", "Run", range));
            } else {
                let message = format!(
                    "{why}; the next run reads the same input again (nothing of this run was \
                     committed past its last batch)"
                );
                conditions::set(
                    conditions,
                    SUCCEEDED,
                    false,
                    "RunFailed",
                    &range,
                    generation,
                    now.clone(),
                );
                conditions::set(
                    conditions,
                    FAILED,
                    true,
                    "RunFailed",
                    &message,
                    generation,
                    now.clone(),
                );
                events.push(event(EventSeverity::Warning, "RunFailed", "Run", message));
            }
        }
        status.last_run = Some(observed);
    }

    // 2. Whether a run starts now.
    let mut start_now = false;
    let mut next_run_ms = None;
    match mode {
        RunMode::OneShot => {
            let ran =
                status.last_run.as_ref().and_then(|r| r.generation) == Some(deploy_generation);
            start_now = !active && !spec.suspend && !ran;
        }
        RunMode::Scheduled(schedule) => match status.last_schedule_time.clone() {
            // First sight: the schedule counts from now (a CronJob does not run at creation).
            None => status.last_schedule_time = Some(now.clone()),
            Some(last) => {
                let next = sluice_crds::schedule::next_after(
                    &schedule.cron,
                    schedule.time_zone.as_deref(),
                    config.schedule_seconds,
                    ms(&last),
                )
                .ok();
                next_run_ms = next;
                let due = next.is_some_and(|n| n <= ms(&now));
                if due && spec.suspend {
                    // Suspended: missed runs are skipped, not made up later.
                    status.last_schedule_time = Some(now.clone());
                } else if due && !active && !finished_now {
                    // (Not in the reconcile that saw a run end: its lastRun is shown first.)
                    start_now = true;
                    status.last_schedule_time = Some(now.clone());
                }
                // Due while a run is active (Forbid): it starts when that one ends.
            }
        },
        RunMode::Continuous => {}
    }
    if start_now {
        status.last_run = Some(RunStatus {
            generation: Some(deploy_generation),
            start: Some(now.clone()),
            ..RunStatus::default()
        });
        events.push(event(
            EventSeverity::Normal,
            "RunStarted",
            "Run",
            format!(
                "run of generation {deploy_generation} started, continuing from the checkpoint"
            ),
        ));
    }

    // 3. What to apply.
    let location = generation_location(base_location, spec.upgrade_mode, deploy_generation);
    let mut deployed = query.clone();
    deployed.spec = spec.clone();
    let replicas = i32::try_from(spec.parallelism.replicas).unwrap_or(1).max(1);
    let desired = DesiredWorkers {
        generation: deploy_generation,
        replicas,
        image: image.clone(),
        manifest_yaml: manifest_yaml(&deployed, &image, &location)?,
        checkpoint_location: location,
        restart_hash: hash,
        section_hashes: sections,
        env: spec.env.clone(),
        resources: spec.resources.clone(),
        storage_secret_ref: spec.storage_secret_ref.clone(),
        http_port: config.worker_http_port,
        stop_first: continuous_running,
        restart_nonce: spec.restart_nonce.clone(),
        run: Some(DesiredRun {
            schedule: match mode {
                RunMode::Scheduled(schedule) => Some(schedule.clone()),
                _ => None,
            },
            suspend: spec.suspend,
            start_now,
        }),
    };
    status.generation = Some(deploy_generation);

    // 4. Phase and conditions.
    let last = status.last_run.clone().unwrap_or_default();
    let running = active || start_now;
    let phase = if running {
        Phase::Running
    } else if spec.suspend {
        Phase::Suspended
    } else {
        match (mode, last.succeeded) {
            (RunMode::Scheduled(_), _) => Phase::Scheduled,
            (_, Some(true)) => Phase::Succeeded,
            (_, Some(false)) => Phase::Failed,
            _ => Phase::Starting,
        }
    };
    status.phase = Some(phase);
    let next = next_run_ms
        .and_then(time_of)
        .map(|t| format!("; next run at {}", t.0))
        .unwrap_or_default();
    let (ready_reason, ready_note) = match phase {
        Phase::Running => ("RunActive", "a run is active".to_string()),
        Phase::Scheduled => ("Scheduled", format!("waiting for the schedule{next}")),
        Phase::Succeeded => ("RunSucceeded", "the run finished".to_string()),
        Phase::Failed => (
            "RunFailed",
            "the run failed; see condition Failed".to_string(),
        ),
        Phase::Suspended => (
            "Suspended",
            "spec.suspend is true: no new run starts".to_string(),
        ),
        _ => ("Starting", String::new()),
    };
    let conditions = &mut status.conditions;
    conditions::set(
        conditions,
        READY,
        matches!(phase, Phase::Running | Phase::Scheduled | Phase::Succeeded),
        ready_reason,
        &ready_note,
        generation,
        now.clone(),
    );
    conditions::set(
        conditions,
        PROGRESSING,
        running,
        if running { "RunActive" } else { "Idle" },
        "",
        generation,
        now.clone(),
    );
    if previous.phase != Some(phase) && phase == Phase::Scheduled && previous.phase.is_none() {
        events.push(event(
            EventSeverity::Normal,
            "Scheduled",
            "Run",
            format!("runs on schedule{next}"),
        ));
    }
    let requeue = Requeue::After(if running {
        config.progress_poll
    } else {
        config.resync
    });
    Ok(Plan {
        change: if workers.is_none() && start_now {
            SpecChange::New
        } else {
            SpecChange::Unchanged
        },
        workers: WorkersAction::Apply(Box::new(desired)),
        status,
        events,
        requeue,
        autoscaler_state: None,
        decision: None,
    })
}
