//! Local backend: worker *processes* on this machine behind the same [`Backend`] trait as
//! Kubernetes, driven by the same `reconcile_live` ([`crate::local_operator`]; observe → validate → plan → apply → events
//! → status). This file only supervises processes; every decision (upgrade check, rollback,
//! crash loop, `ScalingLimited`, autoscaling) is [`crate::plan::plan`]'s.
//!
//! `sluice-operator local --manifests DIR` reconciles every `DIR/*.yaml` StreamingQuery once per
//! poll (1 s). Apply runs replica `i` of `n` as `sluice-worker run <manifest> --replica i
//! --replicas n --http 127.0.0.1:<port>`, stopping the old generation at a batch boundary
//! (`POST /stop`) before the new one starts; observe restarts crashed workers (counted in
//! `status.restarts`); status goes to `DIR/<name>.status.yaml`, events to `DIR/<name>.events.log`.
//! Edits of a file are spec changes. Prometheus finds the workers through file-based service
//! discovery: `<sd-dir>/sluice-<name>.json`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::contract::{
    BatchProgress, ENV_CONTROL_TOKEN, ENV_CONTROL_TOKEN_FILE, ENV_GENERATION, FLAG_CHECKPOINT,
    FLAG_HTTP, FLAG_REPLICA, FLAG_REPLICAS, StopAnswer,
};
use sluice_crds::{StreamingQuery, StreamingQueryStatus};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::Backend;
use crate::clients::{http, http_authorized};
use crate::control_token::ControlToken;
use crate::error::{Error, Result};
use crate::plan::{
    CRASH_LOOP_WINDOW, DesiredWorkers, EventSeverity, PlannedEvent, ProgressObservation,
    RunObservation, WorkersObservation,
};
use crate::progress::WorkerProgress;
use sluice_crds::contract::RunReport;

pub use crate::progress::commit_ms;

/// Settings of the local backend.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Folder of StreamingQuery manifests (`*.yaml`; `*.status.yaml` are ours).
    pub manifests: PathBuf,
    /// The `sluice-worker` binary (a `spec.image` that is an absolute path overrides it).
    pub worker_bin: PathBuf,
    /// Prometheus base URL (`http://127.0.0.1:9090`); without it the autoscaler reads `/progress`.
    pub prometheus: Option<String>,
    /// File-SD folder Prometheus watches.
    pub sd_dir: Option<PathBuf>,
    /// Reconcile period.
    pub poll: Duration,
    /// A new generation not Ready within this rolls back to the last stable spec.
    pub ready_timeout: Duration,
    /// Window of the rates the autoscaler reads.
    pub metrics_window: Duration,
    /// How long a worker gets to finish its batch after `POST /stop` before it is killed.
    pub stop_timeout: Duration,
}

impl LocalConfig {
    pub fn new(manifests: PathBuf, worker_bin: PathBuf) -> Self {
        Self {
            manifests,
            worker_bin,
            prometheus: None,
            sd_dir: None,
            poll: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(60),
            metrics_window: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(60),
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) fn io_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{context}: {e}"))
}

struct Worker {
    replica: u32,
    port: u16,
    child: Child,
    /// How a run's worker exited (runs are not restarted).
    exit: Option<std::process::ExitStatus>,
}

/// A one-shot or scheduled run's processes: never restarted; when the last exits, the run ends.
struct LocalRun {
    start: Time,
    end: Option<Time>,
}

/// A running generation of workers.
struct Deployment {
    /// `Some` for a one-shot or scheduled run.
    run: Option<LocalRun>,
    generation: i64,
    restart_nonce: Option<String>,
    restart_hash: String,
    section_hashes: BTreeMap<String, String>,
    replicas: u32,
    checkpoint_location: String,
    manifest: PathBuf,
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Required by the workers' `POST /stop` (given to each as `SLUICE_CONTROL_TOKEN`).
    control_token: ControlToken,
    workers: Vec<Worker>,
    /// Replicas answering `/healthz` at the last observation.
    ready: u32,
    /// The `/progress` answers of the last observation.
    answers: Vec<crate::progress::Answer>,
}

/// What the supervisor knows about a query's processes at one observation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSnapshot {
    pub generation: i64,
    pub restart_hash: String,
    pub section_hashes: BTreeMap<String, String>,
    /// Worker processes of the generation.
    pub replicas: u32,
    /// Processes answering `/healthz`.
    pub healthy: u32,
    /// Processes found exited (and restarted) at this observation.
    pub restarted_now: u32,
    /// Restarts since the query was first seen.
    pub restarts: i64,
    /// Exits within [`CRASH_LOOP_WINDOW`].
    pub recent_exits: u32,
    pub last_exit: Option<String>,
    /// `spec.restartNonce` the processes were started with.
    pub restart_nonce: Option<String>,
    /// The `PoisonBatch: ...` line of a worker that exited with code 3 (not restarted).
    pub poison: Option<String>,
}

/// The [`WorkersObservation`] of a [`ProcessSnapshot`]: the rollout is complete when every
/// process is healthy and none had to be restarted just now.
pub fn processes_observation(snapshot: &ProcessSnapshot) -> WorkersObservation {
    WorkersObservation {
        generation: snapshot.generation,
        restart_hash: snapshot.restart_hash.clone(),
        section_hashes: snapshot.section_hashes.clone(),
        replicas: i32::try_from(snapshot.replicas).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(snapshot.healthy).unwrap_or(i32::MAX),
        rollout_complete: snapshot.healthy == snapshot.replicas && snapshot.restarted_now == 0,
        restarts: Some(snapshot.restarts),
        recent_exits: snapshot.recent_exits,
        last_exit: snapshot.last_exit.clone(),
        restart_nonce: snapshot.restart_nonce.clone(),
        poison: snapshot.poison.clone(),
        run: None,
    }
}

/// What the backend keeps per query between reconciles.
#[derive(Default)]
struct Supervised {
    deployment: Option<Deployment>,
    /// Worker restarts since the query was first seen (seeded from `status.restarts`).
    restarts: i64,
    /// Times and descriptions of recent worker exits (crash-loop detection).
    exits: VecDeque<(Instant, String)>,
    /// Last commit (ms) of the generation stopped by the last rescale or upgrade, until the new
    /// one commits.
    downtime_from_ms: Option<i64>,
    /// The poison-batch line of a worker of the running deployment that stopped on one.
    poison: Option<String>,
}

/// The local [`Backend`]: one [`Supervised`] set of processes per query name.
pub struct LocalBackend {
    config: LocalConfig,
    queries: Mutex<BTreeMap<String, Supervised>>,
    /// Worker ports per query name (ordinal order), for [`crate::scaling::ProgressMetrics`].
    ports: Arc<SyncMutex<HashMap<String, Vec<u16>>>>,
}

fn query_name(query: &StreamingQuery) -> Result<String> {
    query
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("name"))
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            queries: Mutex::new(BTreeMap::new()),
            ports: Arc::new(SyncMutex::new(HashMap::new())),
        }
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.config.manifests.join(".sluice").join(name)
    }

    pub(crate) fn status_path(&self, name: &str) -> PathBuf {
        self.config.manifests.join(format!("{name}.status.yaml"))
    }

    fn events_path(&self, name: &str) -> PathBuf {
        self.config.manifests.join(format!("{name}.events.log"))
    }

    /// A worker's base URL by (query name, ordinal), for the `/progress` metrics path.
    pub(crate) fn progress_url(&self) -> crate::scaling::ProgressUrl {
        let ports = self.ports.clone();
        Arc::new(move |name, _namespace, ordinal| {
            let port = ports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
                .and_then(|p| {
                    p.get(usize::try_from(ordinal).unwrap_or(usize::MAX))
                        .copied()
                })
                .unwrap_or(9);
            format!("http://127.0.0.1:{port}")
        })
    }

    fn publish_ports(&self, name: &str, deployment: Option<&Deployment>) {
        let mut ports = self
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match deployment {
            Some(d) => {
                ports.insert(name.to_string(), d.workers.iter().map(|w| w.port).collect());
            }
            None => {
                ports.remove(name);
            }
        }
    }

    /// Seeds the restart count of a query seen for the first time from its status file.
    pub(crate) async fn seed(&self, name: &str, status: Option<&StreamingQueryStatus>) {
        let mut queries = self.queries.lock().await;
        queries
            .entry(name.to_string())
            .or_insert_with(|| Supervised {
                restarts: status.and_then(|s| s.restarts).unwrap_or(0),
                ..Supervised::default()
            });
    }

    /// Stops the workers of a query whose manifest is gone (the checkpoint stays).
    pub async fn remove(&self, name: &str) {
        let supervised = self.queries.lock().await.remove(name);
        if let Some(deployment) = supervised.and_then(|s| s.deployment) {
            stop_deployment(deployment, self.config.stop_timeout).await;
        }
        self.publish_ports(name, None);
        self.remove_sd(name);
    }

    /// Stops every worker at a batch boundary.
    pub async fn shutdown(&self) {
        let mut queries = self.queries.lock().await;
        for supervised in queries.values_mut() {
            if let Some(deployment) = supervised.deployment.take() {
                stop_deployment(deployment, self.config.stop_timeout).await;
            }
        }
    }

    fn write_manifest(&self, name: &str, desired: &DesiredWorkers) -> Result<PathBuf> {
        let dir = self.state_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating state dir", e))?;
        let path = dir.join(format!("generation-{}.yaml", desired.generation));
        std::fs::write(&path, &desired.manifest_yaml)
            .map_err(|e| io_error("writing manifest", e))?;
        Ok(path)
    }

    fn start_deployment(&self, name: &str, desired: &DesiredWorkers) -> Result<Deployment> {
        let manifest = self.write_manifest(name, desired)?;
        let replicas = u32::try_from(desired.replicas).unwrap_or(0);
        let binary = if desired.image.starts_with('/') {
            PathBuf::from(&desired.image)
        } else {
            self.config.worker_bin.clone()
        };
        let mut deployment = Deployment {
            run: desired.run.as_ref().map(|_| LocalRun {
                start: Time(Timestamp::now()),
                end: None,
            }),
            generation: desired.generation,
            restart_nonce: desired.restart_nonce.clone(),
            restart_hash: desired.restart_hash.clone(),
            section_hashes: desired.section_hashes.clone(),
            replicas,
            checkpoint_location: desired.checkpoint_location.clone(),
            manifest,
            binary,
            env: desired
                .env
                .iter()
                .filter_map(|v| v.value.clone().map(|value| (v.name.clone(), value)))
                .collect(),
            control_token: ControlToken::generate()?,
            workers: Vec::new(),
            ready: 0,
            answers: Vec::new(),
        };
        for replica in 0..replicas {
            let worker = self.spawn(name, &deployment, replica)?;
            deployment.workers.push(worker);
        }
        tracing::info!(query = %name, generation = desired.generation, replicas, "started workers");
        Ok(deployment)
    }

    fn spawn(&self, name: &str, deployment: &Deployment, replica: u32) -> Result<Worker> {
        let port = free_port().map_err(|e| io_error("finding a free port", e))?;
        let log_path = self.state_dir(name).join(format!("worker-{replica}.log"));
        // A run's log starts empty: its last words (`Run: ...`, `PoisonBatch: ...`) are its own.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(deployment.run.is_none())
            .write(true)
            .truncate(deployment.run.is_some())
            .open(&log_path)
            .map_err(|e| io_error("opening worker log", e))?;
        let log_err = log.try_clone().map_err(|e| io_error("worker log", e))?;
        let mut command = Command::new(&deployment.binary);
        command
            .arg("run")
            .arg(&deployment.manifest)
            .arg(FLAG_CHECKPOINT)
            .arg(&deployment.checkpoint_location)
            .arg(FLAG_HTTP)
            .arg(format!("127.0.0.1:{port}"))
            .arg(FLAG_REPLICA)
            .arg(replica.to_string())
            .arg(FLAG_REPLICAS)
            .arg(deployment.replicas.to_string())
            .env(ENV_GENERATION, deployment.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        for (name, value) in &deployment.env {
            command.env(name, value);
        }
        // After the spec's env, so that only the operator's token can stop the workers.
        command
            .env(ENV_CONTROL_TOKEN, deployment.control_token.expose())
            .env_remove(ENV_CONTROL_TOKEN_FILE);
        let child = command
            .spawn()
            .map_err(|e| io_error(&format!("starting {}", deployment.binary.display()), e))?;
        // For operators (and the recovery test) that want to find a replica's process.
        if let Some(pid) = child.id() {
            let pid_path = self.state_dir(name).join(format!("worker-{replica}.pid"));
            if let Err(e) = std::fs::write(&pid_path, pid.to_string()) {
                tracing::warn!(path = %pid_path.display(), error = %e, "cannot write pid file");
            }
        }
        Ok(Worker {
            replica,
            port,
            child,
            exit: None,
        })
    }

    /// Restarts workers that exited without being asked to; returns how many.
    fn restart_exited(&self, name: &str, supervised: &mut Supervised) -> u32 {
        let Some(deployment) = supervised.deployment.as_mut() else {
            return 0;
        };
        if deployment.run.is_some() {
            return 0;
        }
        let mut restarted = 0;
        for index in 0..deployment.workers.len() {
            let exited = deployment.workers[index].child.try_wait().ok().flatten();
            let Some(exit) = exited else { continue };
            let replica = deployment.workers[index].replica;
            if exit.code() == Some(crate::plan::POISON_EXIT_CODE)
                && let Some(line) =
                    log_tail(&self.state_dir(name).join(format!("worker-{replica}.log")))
                        .as_deref()
                        .and_then(crate::plan::poison_line)
            {
                // Restarting would replay the same batch: leave it stopped, plan() decides.
                tracing::warn!(query = %name, replica, "{line}");
                supervised.poison = Some(line);
                continue;
            }
            match self.spawn(name, deployment, replica) {
                Ok(worker) => {
                    deployment.workers[index] = worker;
                    restarted += 1;
                    supervised.restarts += 1;
                    supervised.exits.push_back((
                        Instant::now(),
                        format!(
                            "replica {replica} exited ({exit}), log .sluice/{name}/worker-{replica}.log"
                        ),
                    ));
                }
                Err(e) => {
                    tracing::error!(query = %name, replica, error = %e, "cannot restart worker")
                }
            }
        }
        restarted
    }

    /// A run's state: exits collected (never restarted), its end when the last worker exited,
    /// the workers' `Run: ...` lines and the first failure. `None` for continuous workers.
    fn observe_run(&self, name: &str, deployment: &mut Deployment) -> Option<RunObservation> {
        let run = deployment.run.as_mut()?;
        let mut reports = Vec::new();
        let mut message = None;
        let mut ok = true;
        for worker in &mut deployment.workers {
            if worker.exit.is_none() {
                worker.exit = worker.child.try_wait().ok().flatten();
            }
            let Some(exit) = worker.exit else { continue };
            let replica = worker.replica;
            let tail = log_tail(&self.state_dir(name).join(format!("worker-{replica}.log")))
                .unwrap_or_default();
            if let Some(report) = RunReport::find(&tail) {
                reports.push(report);
            }
            if !exit.success() {
                ok = false;
                message.get_or_insert_with(|| {
                    crate::plan::poison_line(&tail).unwrap_or_else(|| {
                        format!("replica {replica} exited ({exit}), log .sluice/{name}/worker-{replica}.log")
                    })
                });
            }
        }
        let active = deployment.workers.iter().any(|w| w.exit.is_none());
        if !active && run.end.is_none() {
            run.end = Some(Time(Timestamp::now()));
        }
        Some(RunObservation {
            generation: deployment.generation,
            active,
            start: Some(run.start.clone()),
            end: run.end.clone(),
            succeeded: (!active).then_some(ok),
            report: (!reports.is_empty()).then(|| RunReport::combine(&reports)),
            message,
        })
    }

    fn sd_path(&self, name: &str) -> Option<PathBuf> {
        self.config
            .sd_dir
            .as_ref()
            .map(|d| d.join(format!("sluice-{name}.json")))
    }

    fn write_sd(&self, name: &str, namespace: &str, deployment: &Deployment) {
        let Some(path) = self.sd_path(name) else {
            return;
        };
        let targets: Vec<String> = deployment
            .workers
            .iter()
            .map(|w| format!("127.0.0.1:{}", w.port))
            .collect();
        let body = serde_json::json!([{
            "targets": targets,
            "labels": {
                "job": "sluice-worker",
                "sluice_query": name,
                "sluice_namespace": namespace,
                "sluice_generation": deployment.generation.to_string(),
            }
        }]);
        // Write then rename, so Prometheus never reads half a file.
        let tmp = path.with_extension("json.tmp");
        let result =
            std::fs::write(&tmp, body.to_string()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write Prometheus targets");
        }
    }

    fn remove_sd(&self, name: &str) {
        if let Some(path) = self.sd_path(name) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Backend for LocalBackend {
    async fn observe_workers(&self, query: &StreamingQuery) -> Result<Option<WorkersObservation>> {
        let name = query_name(query)?;
        let mut queries = self.queries.lock().await;
        let supervised = queries.entry(name.clone()).or_default();
        // Paused: an exited worker stays exited (the operator's hands are off the query).
        let restarted = if crate::plan::paused(query) {
            0
        } else {
            self.restart_exited(&name, supervised)
        };
        while supervised
            .exits
            .front()
            .is_some_and(|(at, _)| at.elapsed() > CRASH_LOOP_WINDOW)
        {
            supervised.exits.pop_front();
        }
        let recent_exits = u32::try_from(supervised.exits.len()).unwrap_or(u32::MAX);
        let last_exit = supervised.exits.back().map(|(_, what)| what.clone());
        let poison = supervised.poison.clone();
        let restarts = supervised.restarts;
        let Some(deployment) = supervised.deployment.as_mut() else {
            return Ok(None);
        };
        let mut ready = 0;
        let mut answers = Vec::new();
        for worker in &deployment.workers {
            let base = format!("http://127.0.0.1:{}", worker.port);
            let timeout = Duration::from_millis(500);
            if http("GET", &format!("{base}/healthz"), timeout)
                .await
                .is_ok()
            {
                ready += 1;
            }
            if let Ok(body) = http("GET", &format!("{base}/progress"), timeout).await
                && let Ok(value) = serde_json::from_str::<crate::progress::Answer>(&body)
            {
                answers.push(value);
            }
        }
        deployment.ready = ready;
        deployment.answers = answers;
        let run = self.observe_run(&name, deployment);
        let mut observed = processes_observation(&ProcessSnapshot {
            generation: deployment.generation,
            restart_hash: deployment.restart_hash.clone(),
            section_hashes: deployment.section_hashes.clone(),
            replicas: deployment.replicas,
            healthy: ready,
            restarted_now: restarted,
            restarts,
            recent_exits,
            last_exit,
            restart_nonce: deployment.restart_nonce.clone(),
            poison,
        });
        if run.is_some() {
            // A run has no rollout to wait for.
            observed.rollout_complete = true;
            observed.run = run;
        }
        Ok(Some(observed))
    }

    async fn observe_progress(
        &self,
        query: &StreamingQuery,
        _workers: &WorkersObservation,
    ) -> Option<WorkerProgress> {
        let name = query_name(query).ok()?;
        let mut queries = self.queries.lock().await;
        let supervised = queries.get_mut(&name)?;
        let answers = supervised.deployment.as_ref()?.answers.clone();
        let first_commit = crate::progress::first_commit_ms(&answers);
        let mut progress = crate::progress::summarize(&answers).unwrap_or_else(|| {
            // A local run starts from nothing: before any commit the rates are zero.
            WorkerProgress {
                observation: ProgressObservation {
                    input_rows_per_second: Some(0.0),
                    processed_rows_per_second: Some(0.0),
                    lag: Some(0),
                    ..ProgressObservation::default()
                },
                ..WorkerProgress::default()
            }
        });
        if let (Some(from), Some(first)) = (supervised.downtime_from_ms, first_commit) {
            supervised.downtime_from_ms = None;
            progress.observation.rescale_downtime_seconds =
                Some((first - from).max(0) as f64 / 1000.0);
        }
        Some(progress)
    }

    async fn apply_workers(&self, query: &StreamingQuery, desired: &DesiredWorkers) -> Result<()> {
        let name = query_name(query)?;
        let mut queries = self.queries.lock().await;
        let supervised = queries.entry(name.clone()).or_default();
        if let Some(run) = &desired.run {
            // Continuous workers (the trigger was changed to a one-shot one) stop first.
            let continuous = supervised
                .deployment
                .as_ref()
                .is_some_and(|d| d.run.is_none());
            if continuous && let Some(old) = supervised.deployment.take() {
                stop_deployment(old, self.config.stop_timeout).await;
            }
            // Forbid: never a second run while one is active.
            let active = supervised.deployment.as_ref().is_some_and(|d| {
                d.run.as_ref().is_some_and(|r| r.end.is_none()) && !d.workers.is_empty()
            });
            if run.start_now && !active {
                let deployment = self.start_deployment(&name, desired)?;
                self.publish_ports(&name, Some(&deployment));
                supervised.deployment = Some(deployment);
            }
            return Ok(());
        }
        let running = supervised
            .deployment
            .as_ref()
            .map(|d| (d.generation, d.replicas, d.restart_nonce.clone()));
        let wanted = (
            desired.generation,
            u32::try_from(desired.replicas).unwrap_or(0),
            desired.restart_nonce.clone(),
        );
        if running == Some(wanted) {
            return Ok(());
        }
        // At a batch boundary: the old generation commits its batch and stops before the new
        // one starts, so no two processes own a task at once.
        if let Some(old) = supervised.deployment.take() {
            let last_commit = stop_deployment(old, self.config.stop_timeout).await;
            supervised.downtime_from_ms = last_commit;
        }
        let deployment = self.start_deployment(&name, desired)?;
        supervised.poison = None;
        self.write_sd(
            &name,
            query.metadata.namespace.as_deref().unwrap_or("default"),
            &deployment,
        );
        self.publish_ports(&name, Some(&deployment));
        supervised.deployment = Some(deployment);
        Ok(())
    }

    async fn write_status(
        &self,
        query: &StreamingQuery,
        status: &StreamingQueryStatus,
    ) -> Result<()> {
        write_status(&self.status_path(&query_name(query)?), status)
    }

    async fn publish(&self, query: &StreamingQuery, event: &PlannedEvent) -> Result<()> {
        let name = query_name(query)?;
        publish(&name, &self.events_path(&name), std::slice::from_ref(event));
        Ok(())
    }
}

/// Per-file memory of the loop: the local stand-in for `metadata.generation` (bumped when the
/// file's spec changes) and the status last written.
/// Stops every worker at a batch boundary (`POST /stop` waits for the final commit), killing
/// those that do not stop within `timeout`. Returns the last commit time (ms) of the generation.
async fn stop_deployment(deployment: Deployment, timeout: Duration) -> Option<i64> {
    let bearer = deployment.control_token.bearer();
    let stops = deployment.workers.into_iter().map(|mut worker| {
        let bearer = bearer.clone();
        async move {
            let url = format!("http://127.0.0.1:{}/stop", worker.port);
            let answer = http_authorized("POST", &url, timeout, Some(&bearer)).await;
            let last = answer
                .as_ref()
                .ok()
                .and_then(|body| serde_json::from_str::<StopAnswer<BatchProgress>>(body).ok())
                .and_then(|answer| answer.latest.as_ref().and_then(commit_ms));
            match tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        replica = worker.replica,
                        "worker did not exit after /stop; killing it"
                    );
                    let _ = worker.child.kill().await;
                }
            }
            if let Err(e) = answer {
                tracing::warn!(replica = worker.replica, error = %e, "stop request failed");
            }
            last
        }
    });
    let lasts = futures::future::join_all(stops).await;
    let last = lasts.into_iter().flatten().max();
    Some(last.unwrap_or_else(now_ms))
}

fn publish(name: &str, path: &Path, events: &[PlannedEvent]) {
    if events.is_empty() {
        return;
    }
    let mut lines = String::new();
    for event in events {
        let severity = match event.severity {
            EventSeverity::Normal => "Normal",
            EventSeverity::Warning => "Warning",
        };
        match event.severity {
            EventSeverity::Normal => {
                tracing::info!(query = %name, reason = %event.reason, "{}", event.note)
            }
            EventSeverity::Warning => {
                tracing::warn!(query = %name, reason = %event.reason, "{}", event.note)
            }
        }
        lines.push_str(&format!(
            "{} {severity} {} {}: {}\n",
            Timestamp::now(),
            event.reason,
            event.action,
            event.note
        ));
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write events");
    }
}

/// The last 64 KiB of a worker's log (its stderr), where a stopped worker's last words are.
fn log_tail(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(65_536)))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn read_status(path: &Path) -> Option<StreamingQueryStatus> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_saphyr::from_str(&text).ok()
}

pub(crate) fn write_status(path: &Path, status: &StreamingQueryStatus) -> Result<()> {
    let text = serde_saphyr::to_string(status).map_err(|e| Error::Serialization(e.to_string()))?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io_error("writing status", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_time_is_trigger_start_plus_execution() {
        let progress = serde_json::json!({
            "timestamp": "2026-11-21T10:00:00.500Z",
            "durationMs": {"triggerExecution": 250}
        });
        let start: Timestamp = "2026-11-21T10:00:00.500Z".parse().expect("ts");
        let progress: BatchProgress = serde_json::from_value(progress).expect("progress");
        assert_eq!(commit_ms(&progress), Some(start.as_millisecond() + 250));
        assert_eq!(commit_ms(&BatchProgress::default()), None);
    }

    fn env_var(name: &str, value: &str) -> k8s_openapi::api::core::v1::EnvVar {
        k8s_openapi::api::core::v1::EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    /// A worker gets the deployment's control token in `SLUICE_CONTROL_TOKEN` (over any the spec
    /// sets, and without a token file that would win over it), and `/stop` is sent with it.
    #[tokio::test]
    async fn workers_get_the_control_token_and_stop_is_sent_with_it() {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().expect("tempdir");
        let seen = dir.path().join("seen");
        let script = dir.path().join("fake-worker");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv | grep '^SLUICE_CONTROL' > {seen}.tmp\nmv {seen}.tmp {seen}\nexec sleep 2\n",
                seen = seen.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let backend = LocalBackend::new(LocalConfig::new(dir.path().to_path_buf(), script.clone()));
        let desired = DesiredWorkers {
            generation: 1,
            replicas: 1,
            image: script.display().to_string(),
            manifest_yaml: "{}".into(),
            checkpoint_location: "file:///nowhere".into(),
            restart_hash: String::new(),
            section_hashes: BTreeMap::new(),
            env: vec![
                env_var(ENV_CONTROL_TOKEN, "from-the-spec"),
                env_var(ENV_CONTROL_TOKEN_FILE, "/from/the/spec"),
            ],
            resources: None,
            storage_secret_ref: None,
            http_port: 0,
            stop_first: false,
            restart_nonce: None,
            run: None,
        };
        let mut deployment = backend.start_deployment("q", &desired).expect("start");
        let token = deployment.control_token.expose().to_string();
        let started = std::time::Instant::now();
        while !seen.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "worker did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&seen).expect("seen"),
            format!("{ENV_CONTROL_TOKEN}={token}\n")
        );

        // The worker's /stop is this listener.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        deployment.workers[0].port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            socket
                .write_all(b"HTTP/1.0 200 OK\r\n\r\n{}")
                .await
                .expect("write");
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        stop_deployment(deployment, Duration::from_secs(5)).await;
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /stop "), "{request}");
        assert!(
            request.contains(&format!("\r\nAuthorization: Bearer {token}\r\n")),
            "{request}"
        );
    }

    /// A worker that exits with code 3 after a `PoisonBatch: ...` line on stderr is not restarted
    /// (it would replay the same batch): the observation carries its line for plan().
    #[tokio::test]
    async fn a_worker_stopped_on_a_poison_batch_is_not_restarted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("fake-worker");
        let starts = dir.path().join("starts");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho started >> {starts}\necho 'error: fix the manifest, SQL or data: PoisonBatch: batch 4 task 0 after 3 attempts: bad value' >&2\nexit 3\n",
                starts = starts.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let backend = LocalBackend::new(LocalConfig::new(dir.path().to_path_buf(), script.clone()));
        let query = sluice_crds::parse_manifest(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {name: q}\nspec:\n  sources: [{name: e, rate: {rowsPerSecond: 1}}]\n  sql: SELECT * FROM e\n  sink: {console: {}}\n",
        )
        .expect("manifest");
        let desired = DesiredWorkers {
            generation: 1,
            replicas: 1,
            image: script.display().to_string(),
            manifest_yaml: "{}".into(),
            checkpoint_location: "file:///nowhere".into(),
            restart_hash: String::new(),
            section_hashes: BTreeMap::new(),
            env: Vec::new(),
            resources: None,
            storage_secret_ref: None,
            http_port: 0,
            stop_first: false,
            restart_nonce: None,
            run: None,
        };
        backend
            .apply_workers(&query, &desired)
            .await
            .expect("apply");
        let started = std::time::Instant::now();
        let observed = loop {
            let observed = backend
                .observe_workers(&query)
                .await
                .expect("observe")
                .expect("deployment");
            if observed.poison.is_some() {
                break observed;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{observed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            observed.poison.as_deref(),
            Some("PoisonBatch: batch 4 task 0 after 3 attempts: bad value")
        );
        backend.observe_workers(&query).await.expect("observe");
        assert_eq!(
            std::fs::read_to_string(&starts)
                .expect("starts")
                .lines()
                .count(),
            1,
            "never restarted"
        );
        assert_eq!(observed.restarts, Some(0));
    }
}
