//! How the operator learns how a worker command ended without reading pods (the chart grants no
//! `pods` permission): the worker serves its exit code and outcome line as a
//! [`JobReport`] on `GET /report` (port [`REPORT_PORT`]) until read (worker `report.rs`), and the
//! operator reaches the pod by its stable DNS name `<host>.<subdomain>.<namespace>.svc`:
//!
//! - worker pods of the StatefulSet: `sluice-<q>-<ordinal>.sluice-<q>` (the query's headless
//!   Service, which publishes not-ready pods: a crashed worker is not Ready while it reports);
//! - check, restore and run Jobs: their pods carry [`REPORT_LABEL`] and the subdomain
//!   `sluice-<q>-jobs`, a headless Service of the query ([`jobs_service`]); a check or restore
//!   pod's hostname is its Job's name, an Indexed run pod's is `<job>-<index>` (set by Kubernetes).
//!
//! A report is read once: the pod exits shortly after, so readers keep what they read
//! ([`ReportCache`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerPort, EmptyDirVolumeSource, PodSpec, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::StreamingQuery;
use sluice_crds::contract::{ENV_REPORT_HOLD_SECONDS, JobReport, REPORT_PORT, STARTS_FILE};

use super::{env_var, metadata, name_and_namespace};
use crate::error::Result;
use crate::plan::child_name;

/// Label on the pods of a query's check, restore and run Jobs (value: the query's name): the
/// selector of [`jobs_service`].
pub const REPORT_LABEL: &str = "sluice.dev/report";
/// Name of the container port of `GET /report`.
pub const REPORT_PORT_NAME: &str = "report";
/// How long a Job's pod keeps its report for the operator (s). The operator reads Jobs at least
/// every few seconds while they run; this covers an operator restart.
pub const JOB_REPORT_HOLD_SECONDS: u64 = 120;
/// How long a crashed continuous worker keeps its report (s) before its container exits and is
/// restarted: the report is read within one reconcile (at most a minute apart while a replica is
/// not Ready), and the wait doubles as a restart backoff.
pub const WORKER_REPORT_HOLD_SECONDS: u64 = 60;
/// How a worker that reported a non-zero exit ended, for conditions and `status.lastRun`:
/// `replica <index> exited with code <code>[: <last line of its message>]`.
pub fn exit_line(index: i32, report: &JobReport) -> String {
    match report.message.lines().last().filter(|l| !l.is_empty()) {
        Some(line) => format!(
            "replica {index} exited with code {}: {line}",
            report.exit_code
        ),
        None => format!("replica {index} exited with code {}", report.exit_code),
    }
}

/// Reads the reports of `hosts` under `subdomain` at once (each within [`REPORT_TIMEOUT`]):
/// `(index in hosts, report)` of those that answered. With a `cache`, reports read before are
/// taken from it and new ones kept there.
pub async fn read_all(
    url: &ReportUrl,
    hosts: &[String],
    subdomain: &str,
    namespace: &str,
    cache: Option<&ReportCache>,
) -> Vec<(i32, JobReport)> {
    let reads = hosts.iter().enumerate().map(|(index, host)| async move {
        let report = match cache {
            Some(cache) => cache.read(url, host, subdomain, namespace).await,
            None => fetch(url, host, subdomain, namespace).await,
        };
        report.map(|r| (i32::try_from(index).unwrap_or(i32::MAX), r))
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How long one `GET /report` may take.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Base URL (`http://host:port`) of the report of pod `host` under headless Service `subdomain`
/// in `namespace`; tests point it at local servers.
pub type ReportUrl = Arc<dyn Fn(&str, &str, &str) -> String + Send + Sync>;

/// `http://<host>.<subdomain>.<namespace>.svc:9465`.
pub fn default_report_url() -> ReportUrl {
    Arc::new(|host, subdomain, namespace| {
        format!("http://{host}.{subdomain}.{namespace}.svc:{REPORT_PORT}")
    })
}

/// Name of the headless Service of a query's Job pods: `sluice-<q>-jobs`.
pub fn jobs_service_name(query_name: &str) -> String {
    format!("{}-jobs", child_name(query_name))
}

/// The headless Service giving the pods of a query's Jobs DNS names (no cluster IP, not-ready
/// pods published: a Job pod has no readiness probe).
///
/// # Errors
/// [`Error::MissingField`] without name, namespace or uid.
pub fn jobs_service(query: &StreamingQuery) -> Result<Service> {
    let (name, _) = name_and_namespace(query)?;
    // The query's children's metadata (namespace, labels, owner), under this Service's name.
    let mut metadata = metadata(query)?;
    metadata.name = Some(jobs_service_name(&name));
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(REPORT_LABEL.to_string(), name)])),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(REPORT_PORT_NAME.into()),
                port: i32::from(REPORT_PORT),
                target_port: Some(IntOrString::String(REPORT_PORT_NAME.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Makes every container of `spec` keep its report for `hold_seconds` on port
/// [`REPORT_PORT`] (replacing an earlier hold), and (with `starts`) count its starts in an
/// `emptyDir` at [`STARTS_FILE`]'s directory (added once).
pub fn add_report(spec: &mut PodSpec, hold_seconds: u64, starts: bool) {
    let run_dir = std::path::Path::new(STARTS_FILE)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let has_run_volume = spec.volumes.iter().flatten().any(|v| v.name == "run");
    let starts = starts && !has_run_volume;
    for container in &mut spec.containers {
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != ENV_REPORT_HOLD_SECONDS);
        env.push(env_var(ENV_REPORT_HOLD_SECONDS, hold_seconds.to_string()));
        let ports = container.ports.get_or_insert_with(Vec::new);
        if !ports
            .iter()
            .any(|p| p.name.as_deref() == Some(REPORT_PORT_NAME))
        {
            ports.push(ContainerPort {
                name: Some(REPORT_PORT_NAME.into()),
                container_port: i32::from(REPORT_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            });
        }
        if starts {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: "run".into(),
                    mount_path: run_dir.clone(),
                    ..VolumeMount::default()
                });
        }
    }
    if starts {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "run".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
}

/// Makes a Job's pod template reachable under [`jobs_service`]: its label, its subdomain and
/// (for a non-indexed Job) `hostname`, and its report held [`JOB_REPORT_HOLD_SECONDS`].
pub fn add_job_report(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    query_name: &str,
    hostname: Option<String>,
) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REPORT_LABEL.to_string(), query_name.to_string());
    spec.subdomain = Some(jobs_service_name(query_name));
    spec.hostname = hostname;
    add_report(spec, JOB_REPORT_HOLD_SECONDS, false);
}

/// Reads the report of pod `host` under `subdomain`; `None` while it has none (still running,
/// already gone, not reachable).
pub async fn fetch(
    url: &ReportUrl,
    host: &str,
    subdomain: &str,
    namespace: &str,
) -> Option<JobReport> {
    let url = format!("{}/report", url(host, subdomain, namespace));
    match crate::clients::http("GET", &url, REPORT_TIMEOUT).await {
        Ok(body) => serde_json::from_str(&body)
            .map_err(|e| tracing::debug!(%url, error = %e, "unreadable report"))
            .ok(),
        Err(e) => {
            tracing::debug!(%url, error = %e, "no report");
            None
        }
    }
}

/// Reports read so far, by `namespace/host`: a pod serves its report only until it was read.
/// Entries of a query are dropped with [`ReportCache::retain_prefix`] when its Jobs change.
#[derive(Clone, Default)]
pub struct ReportCache(Arc<Mutex<HashMap<String, JobReport>>>);

impl ReportCache {
    /// The report of `host`: the one read before, else read now (and kept).
    pub async fn read(
        &self,
        url: &ReportUrl,
        host: &str,
        subdomain: &str,
        namespace: &str,
    ) -> Option<JobReport> {
        let key = format!("{namespace}/{host}");
        if let Some(found) = self.lock().get(&key) {
            return Some(found.clone());
        }
        let report = fetch(url, host, subdomain, namespace).await?;
        self.lock().insert(key, report.clone());
        Some(report)
    }

    /// The report of `host` read before, if any (no request).
    pub fn cached(&self, namespace: &str, host: &str) -> Option<JobReport> {
        self.lock().get(&format!("{namespace}/{host}")).cloned()
    }

    /// Forgets the report of `host` (its Job is gone: a Job of the same name is a new one).
    pub fn forget(&self, namespace: &str, host: &str) {
        self.lock().remove(&format!("{namespace}/{host}"));
    }

    /// Forgets the reports of hosts starting with `prefix` in `namespace` except those `keep`
    /// accepts (the hosts of a query's older Jobs).
    pub fn retain_prefix(&self, namespace: &str, prefix: &str, keep: impl Fn(&str) -> bool) {
        let start = format!("{namespace}/{prefix}");
        self.lock().retain(|key, _| {
            !key.starts_with(&start) || keep(key.split_once('/').map_or("", |(_, h)| h))
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobReport>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
