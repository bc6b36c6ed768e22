//! Kubernetes backend: a [`DesiredWorkers`] becomes four children of the `StreamingQuery`, all
//! named `sluice-<query>` and owned by it (garbage-collected with it), applied with server-side
//! apply under the single field manager [`FIELD_MANAGER`], plus the query's control Secret:
//!
//! * `ConfigMap` with the resolved query under key `query.yaml`;
//! * headless `Service` exposing the workers' `metrics` port (9464) for Prometheus;
//! * `StatefulSet`: `replicas` pods, replica index = pod ordinal (from the pod name, which the
//!   worker reads from `POD_NAME`), env `SLUICE_REPLICA_COUNT` and `SLUICE_GENERATION`, container
//!   `sluice-worker pod --manifest /etc/sluice/query.yaml --http-port 9464`, probes on `/healthz`,
//!   non-root with a read-only root filesystem and an `emptyDir` on `/tmp`;
//! * `PodDisruptionBudget` with `maxUnavailable: 1`;
//! * `Secret` `sluice-<query>-control` with the workers' control token (key `token`, 32 random
//!   bytes in hex), mounted read-only at `/var/run/sluice/control` (`SLUICE_CONTROL_TOKEN_FILE`):
//!   `POST /stop` on a worker needs it as a bearer token. Created once (a create answered
//!   `AlreadyExists` is fine) and never applied again, so reconciles never rotate it; the
//!   operator does not read it back.
//!
//! The builders are pure functions (tested on their exact output); [`KubernetesBackend`] does
//! the I/O, including reading each worker pod's `GET /progress` through the headless Service
//! (`http://sluice-<query>-<ordinal>.sluice-<query>.<namespace>.svc:<port>`) for the status rates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretEnvSource, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use sluice_crds::contract::{
    CONTROL_TOKEN_DIR, CONTROL_TOKEN_KEY, ENV_CHECKPOINT_LOCATION, ENV_CONTROL_TOKEN_FILE,
    ENV_GENERATION, ENV_NAMESPACE, ENV_POD_NAME, ENV_QUERY, ENV_REPLICA_COUNT, JobReport,
};
use sluice_crds::{StreamingQuery, StreamingQueryStatus};

use super::Backend;
use crate::control_token::ControlToken;
use crate::error::{Error, Result};
use crate::plan::{DesiredWorkers, EventSeverity, PlannedEvent, WorkersObservation, child_name};
use crate::progress::WorkerProgress;

/// The one server-side-apply field manager of the operator.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// Annotation: deployment generation of the pod template.
pub const GENERATION_ANNOTATION: &str = "sluice.dev/generation";
/// Annotation: hash of the restart-relevant spec sections.
pub const RESTART_HASH_ANNOTATION: &str = "sluice.dev/restart-hash";
/// Annotation: `spec.restartNonce` the pods were started with (on the StatefulSet and its pod
/// template, so a change also rolls the pods).
pub const RESTART_NONCE_ANNOTATION: &str = "sluice.dev/restart-nonce";
/// Annotation: JSON map of per-section hashes.
pub const SECTIONS_ANNOTATION: &str = "sluice.dev/section-hashes";
pub use crate::plan::{QUERY_LABEL, selector_labels};
/// ConfigMap key of the resolved query.
pub const MANIFEST_KEY: &str = "query.yaml";
/// Where the ConfigMap is mounted in the worker container.
pub const MANIFEST_DIR: &str = "/etc/sluice";
/// Name of the worker HTTP port (metrics, health, progress).
pub const METRICS_PORT_NAME: &str = "metrics";
/// Non-root UID of the worker image (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;
/// Mode of the mounted control token: readable by the worker's user only.
pub const CONTROL_TOKEN_MODE: i32 = 0o400;

/// Name of a query's control Secret: `sluice-<query>-control`.
pub fn control_secret_name(query_name: &str) -> String {
    format!("{}-control", child_name(query_name))
}

fn name_and_namespace(query: &StreamingQuery) -> Result<(String, String)> {
    let name = query
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("name"))?;
    let namespace = query
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("namespace"))?;
    Ok((name, namespace))
}

fn labels(query_name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(query_name);
    labels.insert("app.kubernetes.io/instance".into(), query_name.into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

fn metadata(query: &StreamingQuery) -> Result<ObjectMeta> {
    let (name, namespace) = name_and_namespace(query)?;
    let owner = query
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))?;
    Ok(ObjectMeta {
        name: Some(child_name(&name)),
        namespace: Some(namespace),
        labels: Some(labels(&name)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

fn deployment_annotations(desired: &DesiredWorkers) -> Result<BTreeMap<String, String>> {
    let sections = serde_json::to_string(&desired.section_hashes)
        .map_err(|e| Error::Serialization(e.to_string()))?;
    let mut annotations = BTreeMap::from([
        (
            GENERATION_ANNOTATION.to_string(),
            desired.generation.to_string(),
        ),
        (
            RESTART_HASH_ANNOTATION.to_string(),
            desired.restart_hash.clone(),
        ),
        (SECTIONS_ANNOTATION.to_string(), sections),
    ]);
    if let Some(nonce) = &desired.restart_nonce {
        annotations.insert(RESTART_NONCE_ANNOTATION.to_string(), nonce.clone());
    }
    Ok(annotations)
}

/// The ConfigMap holding the resolved query.
///
/// # Errors
/// [`Error::MissingField`] when the query lacks name, namespace or uid.
pub fn config_map(query: &StreamingQuery, desired: &DesiredWorkers) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: metadata(query)?,
        data: Some(BTreeMap::from([(
            MANIFEST_KEY.to_string(),
            desired.manifest_yaml.clone(),
        )])),
        ..ConfigMap::default()
    })
}

/// The query's control Secret holding `token` (owned by the query, labelled like the other
/// children). Only ever created, never applied: see the module docs.
///
/// # Errors
/// As [`config_map`].
pub fn control_secret(query: &StreamingQuery, token: &ControlToken) -> Result<Secret> {
    let (name, _) = name_and_namespace(query)?;
    let mut metadata = metadata(query)?;
    metadata.name = Some(control_secret_name(&name));
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            CONTROL_TOKEN_KEY.to_string(),
            token.expose().to_string(),
        )])),
        ..Secret::default()
    })
}

/// The headless Service of the workers (stable DNS per pod, Prometheus target).
///
/// # Errors
/// As [`config_map`].
pub fn service(query: &StreamingQuery, desired: &DesiredWorkers) -> Result<Service> {
    let (name, _) = name_and_namespace(query)?;
    Ok(Service {
        metadata: metadata(query)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: i32::from(desired.http_port),
                target_port: Some(IntOrString::String(METRICS_PORT_NAME.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn health_probe(initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The worker StatefulSet.
///
/// # Errors
/// As [`config_map`], plus [`Error::Serialization`] for the annotations.
pub fn stateful_set(query: &StreamingQuery, desired: &DesiredWorkers) -> Result<StatefulSet> {
    let (name, namespace) = name_and_namespace(query)?;
    let child = child_name(&name);
    let annotations = deployment_annotations(desired)?;
    let mut meta = metadata(query)?;
    meta.annotations = Some(annotations.clone());
    let mut env = vec![
        env_var(ENV_QUERY, name.clone()),
        env_var(ENV_NAMESPACE, namespace),
        env_var(ENV_REPLICA_COUNT, desired.replicas.to_string()),
        env_var(ENV_GENERATION, desired.generation.to_string()),
        env_var(ENV_CHECKPOINT_LOCATION, desired.checkpoint_location.clone()),
        field_env(ENV_POD_NAME, "metadata.name"),
        env_var(
            ENV_CONTROL_TOKEN_FILE,
            format!("{CONTROL_TOKEN_DIR}/{CONTROL_TOKEN_KEY}"),
        ),
    ];
    // The spec's env cannot replace the operator's token file (the worker reads the file first).
    env.extend(
        desired
            .env
            .iter()
            .filter(|e| e.name != ENV_CONTROL_TOKEN_FILE)
            .cloned(),
    );
    let env_from = desired.storage_secret_ref.as_ref().map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    let container = Container {
        name: "worker".into(),
        image: Some(desired.image.clone()),
        command: Some(vec!["sluice-worker".into()]),
        args: Some(vec![
            "pod".into(),
            "--manifest".into(),
            format!("{MANIFEST_DIR}/{MANIFEST_KEY}"),
            "--http-port".into(),
            desired.http_port.to_string(),
        ]),
        env: Some(env),
        env_from,
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: i32::from(desired.http_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(health_probe(2, 5, 3)),
        liveness_probe: Some(health_probe(15, 10, 6)),
        resources: desired.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "query".into(),
                mount_path: MANIFEST_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "control".into(),
                mount_path: CONTROL_TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut pod_labels = labels(&name);
    pod_labels.insert(GENERATION_ANNOTATION.into(), desired.generation.to_string());
    let mut set = StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(desired.replicas),
            service_name: Some(child.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Time for the worker to finish its batch and commit after SIGTERM.
                    termination_grace_period_seconds: Some(60),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![
                        Volume {
                            name: "query".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: child,
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "control".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(control_secret_name(&name)),
                                default_mode: Some(CONTROL_TOKEN_MODE),
                                optional: Some(false),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    // A worker that stops on an error says why on `GET /report` (read instead of pod statuses).
    if let Some(pod) = set.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        reports::add_report(pod, reports::WORKER_REPORT_HOLD_SECONDS, true);
    }
    Ok(set)
}

/// The PodDisruptionBudget: voluntary evictions take at most one worker at a time.
///
/// # Errors
/// As [`config_map`].
pub fn pod_disruption_budget(query: &StreamingQuery) -> Result<PodDisruptionBudget> {
    let (name, _) = name_and_namespace(query)?;
    Ok(PodDisruptionBudget {
        metadata: metadata(query)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Reads the deployment's generation, hashes and readiness back from a StatefulSet.
pub fn observe_stateful_set(set: &StatefulSet) -> WorkersObservation {
    let annotations = set.metadata.annotations.clone().unwrap_or_default();
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = set.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let observed_current =
        status.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0);
    let revision_current = match (&status.current_revision, &status.update_revision) {
        (Some(current), Some(update)) => current == update,
        _ => true,
    };
    let rollout_complete = observed_current
        && if replicas == 0 {
            status.replicas == 0
        } else {
            ready == replicas && updated == replicas && revision_current
        };
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
        ready_replicas: ready,
        rollout_complete,
        restarts: None,
        recent_exits: 0,
        last_exit: None,
        restart_nonce: annotations.get(RESTART_NONCE_ANNOTATION).cloned(),
        poison: None,
        run: None,
    }
}

pub use crate::scaling::{PROGRESS_TIMEOUT, ProgressUrl};

/// The chart's object-store settings (`checkpoint.credentialsSecret`, `checkpoint.endpoint`,
/// `checkpoint.region`), given to the workers of queries without `spec.storageSecretRef` so they
/// reach the checkpoint the operator claimed for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStorage {
    /// Secret with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, by name: it must exist in the
    /// query's namespace (a pod reads Secrets of its own namespace only).
    pub credentials_secret: Option<String>,
    /// `AWS_ENDPOINT_URL` (MinIO, SeaweedFS).
    pub endpoint: Option<String>,
    /// `AWS_REGION`.
    pub region: Option<String>,
}

/// Adds `storage` to the worker container of `set`: the secret as `envFrom`, endpoint and
/// region as `env`. Queries with their own `spec.storageSecretRef` keep only theirs (apply
/// this only to the others).
pub fn add_worker_storage(set: &mut StatefulSet, storage: &WorkerStorage) {
    if let Some(container) = set
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        add_container_storage(container, storage);
    }
}

/// Adds `storage` to one container (a worker, or a check Job's): the secret as `envFrom`,
/// endpoint and region as `env`.
pub fn add_container_storage(container: &mut Container, storage: &WorkerStorage) {
    if let Some(secret) = &storage.credentials_secret {
        container
            .env_from
            .get_or_insert_with(Vec::new)
            .push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            });
    }
    let env = container.env.get_or_insert_with(Vec::new);
    for (name, value) in [
        ("AWS_ENDPOINT_URL", &storage.endpoint),
        ("AWS_REGION", &storage.region),
    ] {
        if let Some(value) = value
            && !env.iter().any(|e| e.name == name)
        {
            env.push(env_var(name, value.clone()));
        }
    }
}

/// Applies and observes children through the Kubernetes API.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: Client,
    recorder: Recorder,
    progress_url: ProgressUrl,
    /// Where a pod's `GET /report` is ([`reports`]).
    report_url: reports::ReportUrl,
    /// Reports of run Jobs' pods read so far (each is served only until read).
    reports: reports::ReportCache,
    /// How often the StatefulSet of a stopping generation is read.
    pub stop_poll: Duration,
    /// How long the old generation may take to stop (its pods' grace period is 60 s) before the
    /// apply fails and is retried.
    pub stop_timeout: Duration,
    /// When the last generation of a query (`namespace/name`) was stopped (ms), until the new one
    /// commits: the rescale downtime.
    stopped_at: Arc<Mutex<HashMap<String, i64>>>,
    storage: WorkerStorage,
}

/// Adds what the reports of stopped workers (`GET /report` of replicas that are not Ready) say
/// to `observed`: a `PoisonBatch: ...` line (exit code [`crate::plan::POISON_EXIT_CODE`]), the
/// last exit, the restarts (each pod counts its worker's starts) and, when a worker that failed
/// has started [`crate::plan::CRASH_LOOP_EXITS`] times or more, a crash loop.
pub fn observe_reports(observed: &mut WorkersObservation, reports: &[(i32, JobReport)]) {
    let mut restarts = None;
    for (ordinal, report) in reports {
        if let Some(starts) = report.starts {
            *restarts.get_or_insert(0) += i64::from(starts.saturating_sub(1));
        }
        if report.exit_code == 0 {
            continue;
        }
        if report.exit_code == crate::plan::POISON_EXIT_CODE
            && let Some(line) = crate::plan::poison_line(&report.message)
        {
            observed.poison = Some(line);
        }
        observed.last_exit = Some(reports::exit_line(*ordinal, report));
        if report.starts.unwrap_or(1) >= crate::plan::CRASH_LOOP_EXITS {
            observed.recent_exits = crate::plan::CRASH_LOOP_EXITS;
        }
    }
    observed.restarts = restarts;
}

fn query_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl KubernetesBackend {
    /// `reporter` names the controller (and pod) in events. Worker progress is read through the
    /// headless Service on port 9464 ([`crate::scaling::pod_url`]).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            recorder,
            progress_url: Arc::new(|name, namespace, ordinal| {
                crate::scaling::pod_url(name, namespace, ordinal, 9464)
            }),
            report_url: reports::default_report_url(),
            reports: reports::ReportCache::default(),
            stop_poll: Duration::from_secs(2),
            stop_timeout: Duration::from_secs(90),
            stopped_at: Arc::new(Mutex::new(HashMap::new())),
            storage: WorkerStorage::default(),
        }
    }

    /// Replaces where pods' `GET /report` is found (tests: local servers).
    #[must_use]
    pub fn with_report_url(mut self, report_url: reports::ReportUrl) -> Self {
        self.report_url = report_url;
        self
    }

    /// Gives workers of queries without `spec.storageSecretRef` the chart's object-store settings.
    #[must_use]
    pub fn with_worker_storage(mut self, storage: WorkerStorage) -> Self {
        self.storage = storage;
        self
    }

    /// The chart's storage settings for workers without their own `storageSecretRef`.
    fn storage_for(&self, desired: &DesiredWorkers) -> WorkerStorage {
        if desired.storage_secret_ref.is_none() {
            self.storage.clone()
        } else {
            WorkerStorage::default()
        }
    }

    /// A one-shot or scheduled query's latest run: its newest Job (and that Job's pods), the
    /// deployment fields from the CronJob (scheduled) or that Job (one-shot).
    async fn observe_runs(
        &self,
        query: &StreamingQuery,
        mode: crate::plan::RunMode<'_>,
    ) -> Result<Option<WorkersObservation>> {
        use k8s_openapi::api::batch::v1::{CronJob, Job};
        let (name, namespace) = name_and_namespace(query)?;
        let replicas = i32::try_from(query.spec.parallelism.replicas).unwrap_or(1);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let listed = jobs
            .list(&ListParams::default().labels(&format!("{}={name}", run_job::RUN_LABEL)))
            .await?
            .items;
        let newest = run_job::newest(&listed);
        let mut observed = if let crate::plan::RunMode::Scheduled(_) = mode {
            let cron_jobs: Api<CronJob> = Api::namespaced(self.client.clone(), &namespace);
            match cron_jobs.get_opt(&child_name(&name)).await? {
                Some(cron_job) => run_job::observe_annotations(&cron_job.metadata, replicas),
                None => return Ok(None),
            }
        } else {
            match newest {
                Some(job) => run_job::observe_annotations(&job.metadata, replicas),
                None => return Ok(None),
            }
        };
        if let Some(job) = newest {
            let job_name = job.metadata.name.clone().unwrap_or_default();
            // Reports of older runs are not needed again.
            self.reports
                .retain_prefix(&namespace, &child_name(&name), |host| {
                    host.starts_with(&format!("{job_name}-"))
                });
            let subdomain = reports::jobs_service_name(&name);
            let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
            let hosts: Vec<String> = (0..completions.max(0))
                .map(|index| format!("{job_name}-{index}"))
                .collect();
            let read = reports::read_all(
                &self.report_url,
                &hosts,
                &subdomain,
                &namespace,
                Some(&self.reports),
            )
            .await;
            observed.run = Some(run_job::observe_run(job, &read));
        }
        Ok(Some(observed))
    }

    /// Suspends the query's CronJob, if a schedule was removed: its runs would write to the
    /// checkpoint the continuous workers now own.
    async fn suspend_schedule(&self, name: &str, namespace: &str) -> Result<()> {
        use k8s_openapi::api::batch::v1::CronJob;
        let api: Api<CronJob> = Api::namespaced(self.client.clone(), namespace);
        let running = api
            .get_opt(&child_name(name))
            .await?
            .and_then(|c| c.spec)
            .is_some_and(|s| s.suspend != Some(true));
        if running {
            // A merge patch: an apply of this one field would drop the others the operator owns.
            let suspend = serde_json::json!({"spec": {"suspend": true}});
            api.patch(
                &child_name(name),
                &PatchParams::default(),
                &Patch::Merge(&suspend),
            )
            .await?;
        }
        Ok(())
    }

    /// Stops the running generation at a batch boundary: scales the StatefulSet to 0 (each
    /// worker commits its current batch on SIGTERM, then exits) and waits until the StatefulSet
    /// reports no pod left (`status.replicas` counts every pod it created, terminating ones
    /// included, once `status.observedGeneration` has caught up with the scale-down).
    ///
    /// # Errors
    /// [`Error::Kube`] for API errors; [`Error::Internal`] (retried) when pods remain after
    /// `stop_timeout`.
    async fn stop_workers(&self, name: &str, namespace: &str) -> Result<()> {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let scale_to_zero = serde_json::json!({"spec": {"replicas": 0}});
        let params = PatchParams::default();
        if sets
            .get_opt(&child_name(name))
            .await?
            .and_then(|s| s.spec.and_then(|s| s.replicas))
            .is_some_and(|r| r > 0)
        {
            sets.patch(&child_name(name), &params, &Patch::Merge(&scale_to_zero))
                .await?;
        }
        let started = std::time::Instant::now();
        loop {
            let remaining = sets.get_opt(&child_name(name)).await?.map_or(0, |set| {
                let generation = set.metadata.generation.unwrap_or(0);
                let status = set.status.unwrap_or_default();
                if status.observed_generation.unwrap_or(0) < generation {
                    // Not yet seen the scale-down: count the pods as still there.
                    status.replicas.max(1)
                } else {
                    status.replicas
                }
            });
            if remaining == 0 {
                break;
            }
            if started.elapsed() > self.stop_timeout {
                return Err(Error::Internal(format!(
                    "{remaining} pod(s) of the old generation still running after {} s; retrying",
                    self.stop_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.stop_poll).await;
        }
        self.stopped_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                query_key(namespace, name),
                k8s_openapi::jiff::Timestamp::now().as_millisecond(),
            );
        Ok(())
    }

    /// Replaces how a worker pod's base URL is found (the worker port, or a test server).
    #[must_use]
    pub fn with_progress_url(mut self, progress_url: ProgressUrl) -> Self {
        self.progress_url = progress_url;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the query's control Secret with a fresh token unless it exists. A create, never an
    /// apply: an apply would rotate the token on every reconcile, out of step with the running
    /// workers, which read it at start. The token is not logged nor read back.
    ///
    /// # Errors
    /// [`Error::Kube`] for API errors other than `AlreadyExists`.
    async fn ensure_control_secret(&self, query: &StreamingQuery, namespace: &str) -> Result<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = control_secret(query, &ControlToken::generate()?)?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn apply<K>(&self, namespace: &str, object: &K) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let name = object
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingField("name"))?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(object)).await?;
        Ok(())
    }
}

impl Backend for KubernetesBackend {
    async fn observe_workers(&self, query: &StreamingQuery) -> Result<Option<WorkersObservation>> {
        let (name, namespace) = name_and_namespace(query)?;
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &namespace);
        let set = api.get_opt(&child_name(&name)).await?;
        let mode = crate::plan::run_mode(&query.spec);
        // A one-shot or scheduled query: its runs, unless continuous workers still run (the
        // trigger was changed): those are stopped first.
        if mode != crate::plan::RunMode::Continuous
            && set
                .as_ref()
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.replicas)
                .is_none_or(|r| r == 0)
        {
            return self.observe_runs(query, mode).await;
        }
        let Some(mut observed) = set.as_ref().map(observe_stateful_set) else {
            return Ok(None);
        };
        // Reports are only asked for while some replica is not Ready: a worker that stopped on
        // an error serves one until read, then restarts.
        if observed.ready_replicas < observed.replicas {
            let child = child_name(&name);
            let hosts: Vec<String> = (0..observed.replicas.max(0))
                .map(|ordinal| format!("{child}-{ordinal}"))
                .collect();
            let read = reports::read_all(&self.report_url, &hosts, &child, &namespace, None).await;
            observe_reports(&mut observed, &read);
        }
        Ok(Some(observed))
    }

    async fn apply_workers(&self, query: &StreamingQuery, desired: &DesiredWorkers) -> Result<()> {
        let (name, namespace) = name_and_namespace(query)?;
        if desired.stop_first {
            self.stop_workers(&name, &namespace).await?;
        }
        if let Some(run) = &desired.run {
            self.apply(&namespace, &config_map(query, desired)?).await?;
            self.apply(&namespace, &reports::jobs_service(query)?)
                .await?;
            self.ensure_control_secret(query, &namespace).await?;
            if run.schedule.is_some() {
                let cron_job = run_job::run_cron_job(query, desired, &self.storage_for(desired))?;
                self.apply(&namespace, &cron_job).await?;
            } else if run.start_now {
                let job = run_job::run_job(query, desired, &self.storage_for(desired))?;
                self.apply(&namespace, &job).await?;
            }
            return Ok(());
        }
        // Only a query that ran on a schedule can have a CronJob to suspend: a streaming query's
        // steady state makes no extra request.
        let was_scheduled = query.status.as_ref().is_some_and(|s| {
            s.last_schedule_time.is_some()
                || s.last_run.is_some()
                || s.phase == Some(sluice_crds::Phase::Scheduled)
        });
        if was_scheduled {
            self.suspend_schedule(&name, &namespace).await?;
        }
        self.apply(&namespace, &config_map(query, desired)?).await?;
        self.apply(&namespace, &service(query, desired)?).await?;
        // Before the StatefulSet: its pods do not start without the Secret they mount.
        self.ensure_control_secret(query, &namespace).await?;
        let mut set = stateful_set(query, desired)?;
        if desired.storage_secret_ref.is_none() {
            add_worker_storage(&mut set, &self.storage);
        }
        self.apply(&namespace, &set).await?;
        self.apply(&namespace, &pod_disruption_budget(query)?)
            .await?;
        Ok(())
    }

    async fn write_status(
        &self,
        query: &StreamingQuery,
        status: &StreamingQueryStatus,
    ) -> Result<()> {
        let (name, namespace) = name_and_namespace(query)?;
        let api: Api<StreamingQuery> = Api::namespaced(self.client.clone(), &namespace);
        let body = serde_json::json!({
            "apiVersion": StreamingQuery::api_version(&()),
            "kind": StreamingQuery::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&name, &params, &Patch::Apply(body))
            .await?;
        Ok(())
    }

    async fn observe_progress(
        &self,
        query: &StreamingQuery,
        workers: &WorkersObservation,
    ) -> Option<WorkerProgress> {
        let (name, namespace) = name_and_namespace(query).ok()?;
        let answers = crate::scaling::worker_progress(
            &self.progress_url,
            &name,
            &namespace,
            workers.replicas,
        )
        .await;
        // Figures of some replicas only would understate the query: keep the last full ones.
        if answers.len() < usize::try_from(workers.replicas).unwrap_or(0) {
            tracing::debug!(query = %name, answered = answers.len(), replicas = workers.replicas, "not every worker answered /progress");
            return None;
        }
        let mut progress = crate::progress::summarize(&answers)?;
        let key = query_key(&namespace, &name);
        let mut stopped = self
            .stopped_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(from), Some(first)) = (stopped.get(&key).copied(), progress.first_commit_ms)
            && first >= from
        {
            stopped.remove(&key);
            progress.observation.rescale_downtime_seconds = Some((first - from) as f64 / 1000.0);
        }
        Some(progress)
    }

    async fn publish(&self, query: &StreamingQuery, event: &PlannedEvent) -> Result<()> {
        let reference = query.object_ref(&());
        let event = Event {
            type_: match event.severity {
                EventSeverity::Normal => EventType::Normal,
                EventSeverity::Warning => EventType::Warning,
            },
            reason: event.reason.clone(),
            note: Some(event.note.chars().take(1000).collect()),
            action: event.action.clone(),
            secondary: None,
        };
        self.recorder.publish(&event, &reference).await?;
        Ok(())
    }
}

pub mod check_job;
pub mod reports;
pub mod run_job;

#[cfg(test)]
mod tests;
