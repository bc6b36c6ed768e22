//! The pre-upgrade check on Kubernetes: `sluice-worker check --checkpoint ...` runs as a Job with
//! the new spec's own image (no version skew between the checker and the workers, user SQL never
//! runs in the operator's pod, the Job gets the workers' storage credentials rather than the
//! operator's), and reports its verdict (`contract::CheckOutcomeReport`) in its termination
//! message and on `GET /report`, where the operator reads it ([`super::reports`]: no `pods`
//! permission needed).
//!
//! Each check is a ConfigMap with the resolved manifest and a Job, both named
//! `sluice-<query>-check-<hash>` after the spec's check key and owned by the query: a check that
//! is still running is found again on the next reconcile, and a verdict once read is kept in
//! memory. A Job that ended without its report being read (an operator restart in between) is
//! gone after [`CHECK_TTL_SECONDS`] and then runs again. A Job that cannot finish within
//! [`CHECK_DEADLINE_SECONDS`] (image pull failure, unschedulable) fails, and the operator holds the
//! running deployment with a condition saying why.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvFromSource, PodSpec, PodTemplateSpec,
    SecretEnvSource, Service, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use sluice_crds::StreamingQuery;
use sluice_crds::contract::{CheckOutcomeReport, FLAG_CHECKPOINT, FLAG_TERMINATION_LOG};

use super::reports::{self, ReportCache, ReportUrl};
use super::{FIELD_MANAGER, MANIFEST_KEY, QUERY_LABEL, WorkerStorage, add_container_storage};
use crate::clients::CheckOutcome;
use crate::error::{Error, Result};
use crate::plan::{CheckRequest, RestoreObservation, RestoreRequest, child_name, hash_json};
use crate::scaling::QueryInspector;

/// A check that has not finished within this fails (Job `activeDeadlineSeconds`).
pub const CHECK_DEADLINE_SECONDS: i64 = 300;
/// A finished check or restore Job is kept this long (s); one whose report was not read runs
/// again once it is gone.
pub const CHECK_TTL_SECONDS: i32 = 60;
/// Label naming the check key's hash on the check's ConfigMap and Job.
pub const CHECK_LABEL: &str = "sluice.dev/check";
/// Where the check container writes its verdict (the Kubernetes default termination path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Name of the check Job (and its ConfigMap) of `request` for `query_name`.
pub fn check_name(query_name: &str, request: &CheckRequest) -> String {
    let hash = hash_json(&request.key);
    format!("{}-check-{}", child_name(query_name), &hash[..10])
}

fn metadata(query: &StreamingQuery, name: &str, hash: &str) -> Result<ObjectMeta> {
    let owner = query
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))?;
    let query_name = query
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("name"))?;
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: query.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([
            (QUERY_LABEL.to_string(), query_name),
            (CHECK_LABEL.to_string(), hash.to_string()),
            ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        ])),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// The ConfigMap and Job of a check (pure, tested on their output).
///
/// # Errors
/// [`Error::MissingField`] without name, namespace or uid.
/// `storage` (the chart's object-store settings) goes to checks of queries without
/// `spec.storageSecretRef`, as to their workers.
pub fn check_objects(
    query: &StreamingQuery,
    request: &CheckRequest,
    storage: &WorkerStorage,
) -> Result<(ConfigMap, Job)> {
    let query_name = query
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("name"))?;
    let name = check_name(&query_name, request);
    let mut args = vec![
        "check".to_string(),
        format!("/etc/sluice/{MANIFEST_KEY}"),
        FLAG_TERMINATION_LOG.to_string(),
        TERMINATION_LOG.to_string(),
    ];
    if let Some(location) = &request.checkpoint_location {
        args.push(FLAG_CHECKPOINT.to_string());
        args.push(location.clone());
    }
    let job = JobTemplate {
        name,
        container: "check",
        image: &request.image,
        manifest_yaml: &request.manifest_yaml,
        args,
    };
    job_objects(query, &query_name, job, storage)
}

/// What differs between the check Job and the restore Job.
struct JobTemplate<'a> {
    name: String,
    container: &'static str,
    image: &'a str,
    manifest_yaml: &'a str,
    args: Vec<String>,
}

/// The ConfigMap (the manifest) and Job running `sluice-worker <args>` with the query's image,
/// env and storage credentials, reporting through its termination message and `GET /report`.
fn job_objects(
    query: &StreamingQuery,
    query_name: &str,
    template: JobTemplate<'_>,
    storage: &WorkerStorage,
) -> Result<(ConfigMap, Job)> {
    let JobTemplate {
        name,
        container: container_name,
        image,
        manifest_yaml,
        args,
    } = template;
    let query_name = query_name.to_string();
    let hash = name.rsplit('-').next().unwrap_or_default().to_string();
    let config_map = ConfigMap {
        metadata: metadata(query, &name, &hash)?,
        data: Some(BTreeMap::from([(
            MANIFEST_KEY.to_string(),
            manifest_yaml.to_string(),
        )])),
        ..ConfigMap::default()
    };
    let env_from = query.spec.storage_secret_ref.as_ref().map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    let mut container = Container {
        name: container_name.into(),
        image: Some(image.to_string()),
        command: Some(vec!["sluice-worker".into()]),
        args: Some(args),
        env: Some(query.spec.env.clone()),
        env_from,
        termination_message_path: Some(TERMINATION_LOG.into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "query".into(),
            mount_path: "/etc/sluice".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    if query.spec.storage_secret_ref.is_none() {
        add_container_storage(&mut container, storage);
    }
    let mut pod_meta = ObjectMeta {
        labels: Some(BTreeMap::from([
            (QUERY_LABEL.to_string(), query_name.clone()),
            (CHECK_LABEL.to_string(), hash.clone()),
            // The NetworkPolicy's worker selector: only the operator reaches `GET /report`.
            (
                "app.kubernetes.io/name".to_string(),
                "sluice-worker".to_string(),
            ),
        ])),
        ..ObjectMeta::default()
    };
    let mut pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "query".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    reports::add_job_report(
        &mut pod_meta,
        &mut pod_spec,
        &query_name,
        Some(job_host(&name)),
    );
    let job = Job {
        metadata: metadata(query, &name, &hash)?,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(CHECK_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(CHECK_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    Ok((config_map, job))
}

/// The hostname of a check or restore Job's pod: the Job's name, or its last 63 characters (a
/// DNS label; the name ends with the check's hash).
pub fn job_host(job_name: &str) -> String {
    let start = job_name.len().saturating_sub(63);
    job_name
        .get(start..)
        .unwrap_or(job_name)
        .trim_start_matches('-')
        .to_string()
}

/// A restore that could not complete says when it runs again.
fn retry_later(name: &str, verdict: RestoreObservation) -> RestoreObservation {
    match verdict {
        RestoreObservation::Unavailable(message) => RestoreObservation::Unavailable(format!(
            "restore Job {name} failed: {message}; it runs again once the Job expires \
             ({CHECK_TTL_SECONDS} s) or after any edit of the spec"
        )),
        verdict => verdict,
    }
}

/// Why a Job that ended has no verdict: its report was not read while its pod served it.
fn lost(name: &str, failure: Option<String>) -> String {
    format!(
        "Job {name} ended before the operator read its report{}; it runs again once the Job \
         expires ({CHECK_TTL_SECONDS} s)",
        failure.map(|f| format!(" ({f})")).unwrap_or_default()
    )
}

/// The verdict of a finished check from its report (the pod's termination message).
pub fn verdict(message: Option<&str>, job_failure: Option<&str>) -> CheckOutcome {
    match message.map(serde_json::from_str::<CheckOutcomeReport>) {
        Some(Ok(CheckOutcomeReport::Valid { report })) => CheckOutcome::Valid(report),
        Some(Ok(CheckOutcomeReport::Refused { message })) => CheckOutcome::Refused(message),
        Some(Ok(CheckOutcomeReport::Failed { message })) => CheckOutcome::Unknown(message),
        Some(Err(e)) => CheckOutcome::Unknown(format!("unreadable check report: {e}")),
        None => CheckOutcome::Unknown(format!(
            "the check Job ended without a report ({})",
            job_failure.unwrap_or("no pod found")
        )),
    }
}

/// Name of the restore Job (and its ConfigMap) of `request` for `query_name`.
pub fn restore_name(query_name: &str, request: &RestoreRequest) -> String {
    let hash = hash_json(&request.key);
    format!("{}-restore-{}", child_name(query_name), &hash[..10])
}

/// The ConfigMap and Job of a restore: `sluice-worker checkpoint restore --manifest ...
/// --batch-id N --checkpoint LOC` with the query's image and credentials (pure).
///
/// # Errors
/// [`Error::MissingField`] without name, namespace or uid.
pub fn restore_objects(
    query: &StreamingQuery,
    request: &RestoreRequest,
    storage: &WorkerStorage,
) -> Result<(ConfigMap, Job)> {
    let query_name = query
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("name"))?;
    let args = vec![
        "checkpoint".to_string(),
        "restore".to_string(),
        "--manifest".to_string(),
        format!("/etc/sluice/{MANIFEST_KEY}"),
        "--batch-id".to_string(),
        request.batch_id.to_string(),
        FLAG_CHECKPOINT.to_string(),
        request.checkpoint_location.clone(),
    ];
    let job = JobTemplate {
        name: restore_name(&query_name, request),
        container: "restore",
        image: &request.image,
        manifest_yaml: &request.manifest_yaml,
        args,
    };
    job_objects(query, &query_name, job, storage)
}

/// The verdict of a finished restore Job: its pod's exit code and termination message (the
/// worker's one line).
pub fn restore_job_verdict(
    exit: Option<(i32, Option<String>)>,
    job_failure: Option<&str>,
) -> RestoreObservation {
    match exit {
        Some((code, message)) => {
            let line = message.unwrap_or_default();
            crate::clients::restore_verdict(Some(code), &line, &line)
        }
        None => RestoreObservation::Unavailable(format!(
            "the restore Job ended without a report ({})",
            job_failure.unwrap_or("no pod found")
        )),
    }
}

/// Runs checks and restores as Jobs (see the module docs).
pub struct JobCheck {
    pub client: Client,
    /// The chart's object-store settings for queries without `spec.storageSecretRef`.
    pub storage: WorkerStorage,
    /// Where a Job pod's `GET /report` is (its DNS name; a local server in tests).
    pub report_url: ReportUrl,
    /// Verdicts read so far (a Job's pod serves its report only until read).
    pub reports: ReportCache,
}

/// Where a check or restore Job stands (see [`JobCheck::start_or_read`]).
enum JobState {
    /// Not there: its ConfigMap and Job were just applied.
    Started,
    /// Running, its report not yet served.
    Running,
    /// Its pod's report: exit code and termination message.
    Reported(sluice_crds::contract::JobReport),
    /// Ended without a report the operator read: the Job's `Failed` condition
    /// (`reason: message`), if any.
    Lost(Option<String>),
}

impl JobCheck {
    /// Checks and restores with `client`, giving Jobs `storage`; reports read by DNS name.
    pub fn new(client: Client, storage: WorkerStorage) -> Self {
        Self {
            client,
            storage,
            report_url: reports::default_report_url(),
            reports: ReportCache::default(),
        }
    }

    /// Reads Job reports from `report_url` instead (tests).
    #[must_use]
    pub fn with_report_url(mut self, report_url: ReportUrl) -> Self {
        self.report_url = report_url;
        self
    }

    /// Applies `config_map` and `job` (and the query's Job Service) if the Job does not exist yet;
    /// otherwise reads its pod's report. The check and the restore share this; they differ only
    /// in how they read the verdict.
    async fn start_or_read(
        &self,
        query: &StreamingQuery,
        namespace: &str,
        config_map: &ConfigMap,
        job: &Job,
    ) -> Result<JobState> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let host = job_host(&name);
        let query_name = query.metadata.name.clone().unwrap_or_default();
        let subdomain = reports::jobs_service_name(&query_name);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let Some(found) = jobs.get_opt(&name).await? else {
            if let Some(report) = self.reports.cached(namespace, &host) {
                // Read before its Job expired: a verdict stands; a check or restore that could
                // not complete runs again.
                if report.exit_code == 0
                    || report.exit_code == sluice_crds::contract::CHECK_EXIT_REFUSED
                {
                    return Ok(JobState::Reported(report));
                }
                self.reports.forget(namespace, &host);
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
            services
                .patch(
                    &subdomain,
                    &params,
                    &Patch::Apply(&reports::jobs_service(query)?),
                )
                .await?;
            let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            maps.patch(&name, &params, &Patch::Apply(config_map))
                .await?;
            jobs.patch(&name, &params, &Patch::Apply(job)).await?;
            return Ok(JobState::Started);
        };
        if let Some(report) = self
            .reports
            .read(&self.report_url, &host, &subdomain, namespace)
            .await
        {
            return Ok(JobState::Reported(report));
        }
        let status = found.status.unwrap_or_default();
        if status.succeeded.unwrap_or(0) == 0 && status.failed.unwrap_or(0) == 0 {
            return Ok(JobState::Running);
        }
        let failure = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                )
            });
        Ok(JobState::Lost(failure))
    }

    async fn run(&self, query: &StreamingQuery, request: &CheckRequest) -> Result<CheckOutcome> {
        let namespace = query
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingField("namespace"))?;
        let (config_map, job) = check_objects(query, request, &self.storage)?;
        let name = job.metadata.name.clone().unwrap_or_default();
        Ok(
            match self
                .start_or_read(query, &namespace, &config_map, &job)
                .await?
            {
                JobState::Started => CheckOutcome::Pending(format!("check Job {name} started")),
                JobState::Running => CheckOutcome::Pending(format!("check Job {name} is running")),
                JobState::Reported(report) => verdict(Some(&report.message), None),
                JobState::Lost(failure) => verdict(None, Some(&lost(&name, failure))),
            },
        )
    }

    /// Creates the restore Job, or reads its verdict once it finished. A Job that failed without
    /// a refusal (store error, deadline) answers `Unavailable` until it expires
    /// ([`CHECK_TTL_SECONDS`]) or the spec is edited (a new Job name): the operator needs no
    /// `delete` on Jobs.
    async fn run_restore(
        &self,
        query: &StreamingQuery,
        request: &RestoreRequest,
    ) -> Result<RestoreObservation> {
        let namespace = query
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingField("namespace"))?;
        let (config_map, job) = restore_objects(query, request, &self.storage)?;
        let name = job.metadata.name.clone().unwrap_or_default();
        Ok(
            match self
                .start_or_read(query, &namespace, &config_map, &job)
                .await?
            {
                JobState::Started => {
                    RestoreObservation::Pending(format!("restore Job {name} started"))
                }
                JobState::Running => {
                    RestoreObservation::Pending(format!("restore Job {name} is running"))
                }
                JobState::Reported(report) => retry_later(
                    &name,
                    restore_job_verdict(Some((report.exit_code, Some(report.message))), None),
                ),
                JobState::Lost(failure) => retry_later(
                    &name,
                    restore_job_verdict(None, Some(&lost(&name, failure))),
                ),
            },
        )
    }
}

impl QueryInspector for JobCheck {
    fn inspect<'a>(
        &'a self,
        query: &'a StreamingQuery,
        request: &'a CheckRequest,
    ) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            match self.run(query, request).await {
                Ok(outcome) => outcome,
                Err(e) => CheckOutcome::Unknown(format!("cannot run the check Job: {e}")),
            }
        })
    }

    fn restore<'a>(
        &'a self,
        query: &'a StreamingQuery,
        request: &'a RestoreRequest,
    ) -> BoxFuture<'a, RestoreObservation> {
        Box::pin(async move {
            match self.run_restore(query, request).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    RestoreObservation::Unavailable(format!("cannot run the restore Job: {e}"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::contract::CheckReport;

    use super::*;

    fn query() -> StreamingQuery {
        sluice_crds::parse_manifest(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {name: q, namespace: prod, uid: uid-1}\nspec:\n  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 2}\n  sql: SELECT * FROM events\n  sink: {console: {}}\n  storageSecretRef: s3-credentials\n",
        )
        .expect("manifest")
    }

    fn request(location: Option<&str>) -> CheckRequest {
        CheckRequest {
            key: "abc@s3://ckpt/prod/q/uid-1/".into(),
            image: "registry.example/sluice-worker:2.0".into(),
            manifest_yaml: "kind: StreamingQuery\n".into(),
            checkpoint_location: location.map(String::from),
        }
    }

    #[test]
    fn the_job_runs_the_new_image_against_the_checkpoint_with_the_workers_credentials() {
        let (config_map, job) = check_objects(
            &query(),
            &request(Some("s3://ckpt/prod/q/uid-1/")),
            &WorkerStorage::default(),
        )
        .expect("objects");
        let name = check_name("q", &request(None));
        assert!(name.starts_with("sluice-q-check-"), "{name}");
        assert_eq!(config_map.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(
            config_map.data.expect("data")[MANIFEST_KEY],
            "kind: StreamingQuery\n"
        );
        let spec = job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(CHECK_DEADLINE_SECONDS));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example/sluice-worker:2.0")
        );
        assert_eq!(
            container.args.clone().expect("args"),
            [
                "check",
                "/etc/sluice/query.yaml",
                "--termination-log",
                "/dev/termination-log",
                "--checkpoint",
                "s3://ckpt/prod/q/uid-1/"
            ]
        );
        assert_eq!(
            container.env_from.clone().expect("envFrom")[0]
                .secret_ref
                .as_ref()
                .map(|s| s.name.clone()),
            Some("s3-credentials".to_string())
        );
        assert_eq!(
            job.metadata.owner_references.expect("owner")[0].uid,
            "uid-1"
        );
    }

    #[test]
    fn the_termination_message_is_the_verdict() {
        let report = CheckReport {
            stateful: true,
            tasks: 4,
            ..CheckReport::default()
        };
        let valid = serde_json::to_string(&CheckOutcomeReport::Valid {
            report: report.clone(),
        })
        .expect("json");
        assert_eq!(verdict(Some(&valid), None), CheckOutcome::Valid(report));
        let refused = serde_json::to_string(&CheckOutcomeReport::Refused {
            message: "partitions changed from 2 to 4".into(),
        })
        .expect("json");
        assert_eq!(
            verdict(Some(&refused), None),
            CheckOutcome::Refused("partitions changed from 2 to 4".into())
        );
        assert_eq!(
            verdict(None, Some("DeadlineExceeded: Job was active longer than specified deadline")),
            CheckOutcome::Unknown(
                "the check Job ended without a report (DeadlineExceeded: Job was active longer than specified deadline)".into()
            )
        );
    }
}
