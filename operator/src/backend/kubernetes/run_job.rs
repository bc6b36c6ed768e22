//! One-shot and scheduled queries on Kubernetes: a run is an Indexed `Job` (`completions =
//! parallelism = replicas`, the completion index is the replica index), named
//! `sluice-<query>-run-<generation>` for a one-shot query (it runs once per deployment
//! generation), or the `jobTemplate` of the `CronJob` `sluice-<query>` (`concurrencyPolicy:
//! Forbid`, `timeZone`, `suspend` from the spec). The pods are the worker pods of the
//! StatefulSet (same container, mounts, security context) with `restartPolicy: Never` and
//! `--termination-log /dev/termination-log`, where the worker leaves its `Run: batches ...`
//! line (or a `PoisonBatch: ...` line); the pod then serves that line on `GET /report` until the
//! operator has read it ([`super::reports`]): the operator reads the run's batch range and rows
//! there, never from pod statuses.
//!
//! Run pods carry the label `sluice.dev/run=<query>` instead of `sluice.dev/query`, so a
//! finished run's pods are never taken for continuous workers (the stop-first wait, crash loops).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use sluice_crds::StreamingQuery;
use sluice_crds::contract::{ENV_REPLICA_INDEX, FLAG_TERMINATION_LOG, JobReport, RunReport};

use super::{
    FIELD_MANAGER, GENERATION_ANNOTATION, RESTART_HASH_ANNOTATION, SECTIONS_ANNOTATION,
    WorkerStorage, add_worker_storage, deployment_annotations, name_and_namespace, stateful_set,
};
use crate::error::{Error, Result};
use crate::plan::{DesiredWorkers, RunObservation, WorkersObservation, child_name, poison_line};

/// Label on a run's Job and pods naming the query.
pub const RUN_LABEL: &str = "sluice.dev/run";
/// Where a run's worker writes its `Run: ...` line (the Kubernetes default termination path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Finished Jobs a CronJob keeps (the latest tells the last run's outcome).
pub const JOB_HISTORY: i32 = 3;

/// Name of the Job of a one-shot query's run of `generation`.
pub fn job_name(query_name: &str, generation: i64) -> String {
    format!("{}-run-{generation}", child_name(query_name))
}

fn run_labels(query_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-worker".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
        (RUN_LABEL.to_string(), query_name.to_string()),
    ])
}

/// The Job spec of one run: the worker pod of [`stateful_set`] made a run's pod.
fn job_spec(
    query: &StreamingQuery,
    desired: &DesiredWorkers,
    storage: &WorkerStorage,
) -> Result<JobSpec> {
    let (name, _) = name_and_namespace(query)?;
    let mut set = stateful_set(query, desired)?;
    if desired.storage_secret_ref.is_none() {
        add_worker_storage(&mut set, storage);
    }
    let mut template: PodTemplateSpec = set
        .spec
        .map(|s| s.template)
        .ok_or_else(|| Error::Internal("worker template missing".into()))?;
    let mut labels = run_labels(&name);
    labels.insert(GENERATION_ANNOTATION.into(), desired.generation.to_string());
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels = Some(labels);
    if let Some(pod) = template.spec.as_mut() {
        // An Indexed Job's pod is `<job>-<index>` in DNS by itself: no hostname to set.
        super::reports::add_job_report(meta, pod, &name, None);
        pod.restart_policy = Some("Never".into());
        if let Some(container) = pod.containers.first_mut() {
            container.args.get_or_insert_with(Vec::new).extend([
                FLAG_TERMINATION_LOG.to_string(),
                TERMINATION_LOG.to_string(),
            ]);
            // The replica index is the Job's completion index (no pod ordinal in a Job).
            container.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: ENV_REPLICA_INDEX.into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path:
                            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                                .into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
            // A run ends: no liveness restarts of a pod that is finishing its last batch.
            container.liveness_probe = None;
        }
    }
    Ok(JobSpec {
        completions: Some(desired.replicas),
        parallelism: Some(desired.replicas),
        completion_mode: Some("Indexed".into()),
        // A failed run is reported; the next run (or a new generation) reads its input again.
        backoff_limit: Some(0),
        template,
        ..JobSpec::default()
    })
}

fn meta(query: &StreamingQuery, name: String, desired: &DesiredWorkers) -> Result<ObjectMeta> {
    let (query_name, namespace) = name_and_namespace(query)?;
    let owner = query
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(run_labels(&query_name)),
        annotations: Some(deployment_annotations(desired)?),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

use kube::Resource;

/// The Job of a one-shot query's run.
///
/// # Errors
/// [`Error::MissingField`] without name, namespace or uid.
pub fn run_job(
    query: &StreamingQuery,
    desired: &DesiredWorkers,
    storage: &WorkerStorage,
) -> Result<Job> {
    let (name, _) = name_and_namespace(query)?;
    Ok(Job {
        metadata: meta(query, job_name(&name, desired.generation), desired)?,
        spec: Some(job_spec(query, desired, storage)?),
        ..Job::default()
    })
}

/// The CronJob of a scheduled query.
///
/// # Errors
/// As [`run_job`]; [`Error::Internal`] without a schedule.
pub fn run_cron_job(
    query: &StreamingQuery,
    desired: &DesiredWorkers,
    storage: &WorkerStorage,
) -> Result<CronJob> {
    let (name, _) = name_and_namespace(query)?;
    let run = desired
        .run
        .as_ref()
        .ok_or_else(|| Error::Internal("a CronJob without a run".into()))?;
    let schedule = run
        .schedule
        .as_ref()
        .ok_or_else(|| Error::Internal("a CronJob without a schedule".into()))?;
    let metadata = meta(query, child_name(&name), desired)?;
    Ok(CronJob {
        spec: Some(CronJobSpec {
            schedule: schedule.cron.clone(),
            time_zone: schedule.time_zone.clone(),
            concurrency_policy: Some("Forbid".into()),
            suspend: Some(run.suspend),
            successful_jobs_history_limit: Some(JOB_HISTORY),
            failed_jobs_history_limit: Some(JOB_HISTORY),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels.clone(),
                    annotations: metadata.annotations.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(query, desired, storage)?),
            },
            ..CronJobSpec::default()
        }),
        metadata,
        ..CronJob::default()
    })
}

/// The deployment fields (generation, hashes) of a Job or CronJob's annotations.
pub fn observe_annotations(meta: &ObjectMeta, replicas: i32) -> WorkersObservation {
    let annotations = meta.annotations.clone().unwrap_or_default();
    WorkersObservation {
        generation: annotations
            .get(GENERATION_ANNOTATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        restart_hash: annotations
            .get(RESTART_HASH_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        section_hashes: annotations
            .get(SECTIONS_ANNOTATION)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default(),
        replicas,
        ready_replicas: replicas,
        // A run has no rollout to wait for.
        rollout_complete: true,
        ..WorkersObservation::default()
    }
}

/// The newest of a query's run Jobs (highest generation, then latest creation).
pub fn newest(jobs: &[Job]) -> Option<&Job> {
    jobs.iter().max_by_key(|job| {
        let generation: i64 = job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GENERATION_ANNOTATION))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let created = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond());
        (generation, created)
    })
}

/// What a run Job and its pods' reports (`(completion index, report)`, see [`super::reports`])
/// say about the run: active or finished, its time span, the workers' `Run: ...` lines combined,
/// and why it failed.
pub fn observe_run(job: &Job, read: &[(i32, JobReport)]) -> RunObservation {
    let generation = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GENERATION_ANNOTATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let status = job.status.clone().unwrap_or_default();
    let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    let succeeded = if status.succeeded.unwrap_or(0) >= completions {
        Some(true)
    } else if failed.is_some() {
        Some(false)
    } else {
        None
    };
    let mut reports = Vec::new();
    let mut message = None;
    for (index, report) in read {
        if let Some(found) = RunReport::find(&report.message) {
            reports.push(found);
        }
        if report.exit_code != 0 && message.is_none() {
            message = Some(
                poison_line(&report.message)
                    .unwrap_or_else(|| super::reports::exit_line(*index, report)),
            );
        }
    }
    if succeeded == Some(false) && message.is_none() {
        message = failed.and_then(|c| c.message.clone());
    }
    let end: Option<Time> = status
        .completion_time
        .clone()
        .or_else(|| failed.and_then(|c| c.last_transition_time.clone()));
    RunObservation {
        generation,
        active: status.active.unwrap_or(0) > 0 || (succeeded.is_none() && end.is_none()),
        start: status
            .start_time
            .clone()
            .or_else(|| job.metadata.creation_timestamp.clone()),
        end: succeeded.and(end),
        succeeded,
        report: (!reports.is_empty()).then(|| RunReport::combine(&reports)),
        message,
    }
}
