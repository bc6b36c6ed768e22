//! Local backend: the operator's plan applied to worker *processes* on this machine (DESIGN §5).
//!
//! `sluice-operator local --manifests DIR` reconciles every `DIR/*.yaml` StreamingQuery once per
//! poll (1 s): it runs replica `i` of `n` as `sluice-worker run <manifest> --replica i --replicas n
//! --http 127.0.0.1:<port>`, restarts crashed workers (`status.restarts`), treats edits of the
//! file as spec changes, and writes the status (the same [`StreamingQueryStatus`] as on
//! Kubernetes) to `DIR/<name>.status.yaml`, events to `DIR/<name>.events.log`. Prometheus finds
//! the workers through file-based service discovery: `<sd-dir>/sluice-<name>.json`.
//!
//! On top of the shared [`plan`](crate::plan::plan) the loop adds what needs live processes:
//! the autoscaler ([`crate::autoscaler`]), stop-at-a-batch-boundary rescales and upgrades with the
//! measured downtime, the upgrade guard (`sluice-worker check` against the checkpoint before the
//! old workers stop), rollback of a generation that does not become Ready in time, and the
//! `ScalingLimited` rule for stateful queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::conditions::{self, DEGRADED, READY, SCALING_LIMITED};
use sluice_crds::{
    AutoscaleMode, Phase, StreamingQuery, StreamingQuerySpec, StreamingQueryStatus, validate_spec,
};
use tokio::process::{Child, Command};

use crate::autoscaler::{self, Action, Policy};
use crate::checkpoint::CheckpointManager;
use crate::error::{Error, Result};
use crate::plan::{
    self, DesiredWorkers, EventSeverity, Observation, OperatorConfig, PlannedEvent, SpecChange,
    WorkersAction, WorkersObservation,
};
use crate::reconcile::observe_checkpoint;

/// This many worker exits within [`CRASH_LOOP_WINDOW`] set `Degraded=True, WorkersCrashing`.
pub const CRASH_LOOP_EXITS: usize = 3;
/// Window of the crash-loop count.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// Entries kept in `status.scalingHistory`.
pub const SCALING_HISTORY: usize = 20;

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

use crate::clients::{CheckOutcome, http, prometheus_scalar, run_check};
pub use crate::scaling::CheckReport;

pub use crate::scaling::scaling_limit;

/// `query` as the shared plan must see it when [`scaling_limit`] holds it at one replica (known
/// from the cached `check` report of its spec): `parallelism.replicas` 1 and no autoscaling.
/// Planned with the count it asks for, a held query would look like a rollout that never
/// finishes (phase `Scaling`, never `Running`, no stable spec to roll back to).
fn held_at_one(query: &StreamingQuery, checks: &BTreeMap<String, CheckReport>) -> StreamingQuery {
    let mut planned = query.clone();
    let sources: Vec<String> = query.spec.sources.iter().map(|s| s.name.clone()).collect();
    let held = checks
        .get(&spec_hash(&query.spec))
        .is_some_and(|report| scaling_limit(report, &sources).is_some());
    if held {
        planned.spec.parallelism.replicas = 1;
        planned.spec.parallelism.autoscale = None;
    }
    planned
}

pub use crate::progress::commit_ms;

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn io_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{context}: {e}"))
}

struct Worker {
    replica: u32,
    port: u16,
    child: Child,
}

/// A running generation of workers.
struct Deployment {
    generation: i64,
    restart_hash: String,
    section_hashes: BTreeMap<String, String>,
    replicas: u32,
    checkpoint_location: String,
    manifest: PathBuf,
    spec: StreamingQuerySpec,
    binary: PathBuf,
    workers: Vec<Worker>,
    started: Instant,
    /// A restart-type rollout that has not been Ready yet (rollback candidate).
    upgrading: bool,
    /// Last commit of the previous generation (ms), until the first commit of this one is seen.
    downtime_from_ms: Option<i64>,
    ready: u32,
}

/// Per-query memory of the loop.
struct QueryRuntime {
    name: String,
    status: StreamingQueryStatus,
    /// Local stand-in for `metadata.generation`: bumped when the file's spec changes.
    generation: i64,
    file_spec_hash: String,
    deployment: Option<Deployment>,
    /// The last spec that became Ready (rollback target).
    stable_spec: Option<StreamingQuerySpec>,
    /// A spec (by hash) that was refused or rolled back, with the reason: kept out until the
    /// file changes again.
    rejected: Option<(String, String)>,
    autoscaler: autoscaler::State,
    /// `check` report per spec hash.
    checks: BTreeMap<String, CheckReport>,
    rows_per_unit: f64,
    /// Times and descriptions of recent worker exits (crash-loop detection).
    crashes: std::collections::VecDeque<(Instant, String)>,
}

/// The local operator: owns the worker processes of every query in the folder.
pub struct LocalOperator {
    config: LocalConfig,
    operator: OperatorConfig,
    checkpoints: CheckpointManager,
    queries: BTreeMap<String, QueryRuntime>,
    metrics: crate::metrics::Metrics,
}

fn spec_hash(spec: &StreamingQuerySpec) -> String {
    let text = serde_json::to_string(spec).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl LocalOperator {
    /// The operator's metrics (`sluice_scaling_decisions_total`, ...), to serve on `/metrics`.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.metrics.clone()
    }

    pub fn new(config: LocalConfig, checkpoints: CheckpointManager) -> Self {
        let operator = OperatorConfig {
            default_image: config.worker_bin.display().to_string(),
            progress_poll: config.poll,
            resync: config.poll,
            ..OperatorConfig::default()
        };
        Self {
            config,
            operator,
            checkpoints,
            queries: BTreeMap::new(),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.config.manifests.join(".sluice").join(name)
    }

    /// Reconciles until `shutdown` resolves, then stops every worker at a batch boundary.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.reconcile_all().await {
                tracing::error!(error = %e, "reconcile failed");
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
        let names: Vec<String> = self.queries.keys().cloned().collect();
        for name in names {
            if let Some(runtime) = self.queries.get_mut(&name)
                && let Some(deployment) = runtime.deployment.take()
            {
                stop_deployment(deployment, self.config.stop_timeout).await;
            }
        }
    }

    /// One pass over the folder.
    ///
    /// # Errors
    /// Only when the folder cannot be read.
    pub async fn reconcile_all(&mut self) -> Result<()> {
        let mut files = BTreeMap::new();
        let entries = std::fs::read_dir(&self.config.manifests)
            .map_err(|e| io_error("reading the manifests folder", e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if file_name.ends_with(".yaml") && !file_name.ends_with(".status.yaml") {
                let stem = file_name.trim_end_matches(".yaml").to_string();
                files.insert(stem, path);
            }
        }
        let mut seen = Vec::new();
        for (stem, path) in files {
            match self.reconcile_file(&stem, &path).await {
                Ok(name) => seen.push(name),
                Err(e) => {
                    seen.push(stem);
                    tracing::warn!(file = %path.display(), error = %e, "reconcile failed");
                }
            }
        }
        // Queries whose file is gone: stop their workers, keep the checkpoint.
        let gone: Vec<String> = self
            .queries
            .keys()
            .filter(|name| !seen.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut runtime) = self.queries.remove(&name) {
                tracing::info!(query = %name, "manifest removed: stopping workers");
                if let Some(deployment) = runtime.deployment.take() {
                    stop_deployment(deployment, self.config.stop_timeout).await;
                }
                self.remove_sd(&name);
            }
        }
        Ok(())
    }

    /// Reconciles one manifest file; returns the query's name.
    async fn reconcile_file(&mut self, stem: &str, path: &Path) -> Result<String> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error("reading manifest", e))?;
        let status_path = path.with_file_name(format!("{stem}.status.yaml"));
        let mut query = match sluice_crds::parse_manifest(&text) {
            Ok(query) => query,
            Err(e) => {
                // Not a StreamingQuery we can read: report it, touch nothing that runs.
                let runtime = self.queries.get_mut(stem);
                let mut status = runtime
                    .as_ref()
                    .map(|r| r.status.clone())
                    .unwrap_or_default();
                let message = e.to_string();
                conditions::set(
                    &mut status.conditions,
                    DEGRADED,
                    true,
                    "InvalidSpec",
                    &message,
                    status.observed_generation,
                    Time(Timestamp::now()),
                );
                if runtime.as_ref().is_none_or(|r| r.deployment.is_none()) {
                    status.phase = Some(Phase::Failed);
                }
                if let Some(runtime) = runtime {
                    runtime.status = status.clone();
                }
                write_status(&status_path, &status)?;
                return Ok(stem.to_string());
            }
        };
        let name = query
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| stem.to_string());
        query.metadata.name = Some(name.clone());
        if query.metadata.namespace.is_none() {
            query.metadata.namespace = Some("default".into());
        }
        query.metadata.uid = Some(format!("local-{name}"));
        let file_hash = spec_hash(&query.spec);
        if !self.queries.contains_key(&name) {
            let status = read_status(&status_path).unwrap_or_default();
            self.queries.insert(
                name.clone(),
                QueryRuntime {
                    name: name.clone(),
                    generation: status.observed_generation.unwrap_or(0) + 1,
                    status,
                    file_spec_hash: file_hash.clone(),
                    deployment: None,
                    stable_spec: None,
                    rejected: None,
                    autoscaler: autoscaler::State::default(),
                    checks: BTreeMap::new(),
                    rows_per_unit: 1.0,
                    crashes: std::collections::VecDeque::new(),
                },
            );
        }
        let mut runtime = self
            .queries
            .remove(&name)
            .ok_or_else(|| Error::Internal("query runtime vanished".into()))?;
        let result = self
            .reconcile_query(&mut runtime, query, file_hash, &status_path)
            .await;
        self.queries.insert(name.clone(), runtime);
        result.map(|()| name)
    }

    #[allow(clippy::too_many_lines)]
    async fn reconcile_query(
        &mut self,
        runtime: &mut QueryRuntime,
        mut query: StreamingQuery,
        file_hash: String,
        status_path: &Path,
    ) -> Result<()> {
        let name = runtime.name.clone();
        let events_path = status_path.with_file_name(format!("{name}.events.log"));
        let mut events: Vec<PlannedEvent> = Vec::new();
        if file_hash != runtime.file_spec_hash {
            runtime.file_spec_hash = file_hash.clone();
            runtime.generation += 1;
            if runtime
                .rejected
                .as_ref()
                .is_some_and(|(h, _)| *h != file_hash)
            {
                runtime.rejected = None;
            }
        }
        query.metadata.generation = Some(runtime.generation);
        // A refused or rolled-back spec stays out until the file changes: plan the running one.
        let rejected = runtime
            .rejected
            .clone()
            .filter(|(hash, _)| *hash == file_hash);
        if rejected.is_some()
            && let Some(running) = runtime
                .deployment
                .as_ref()
                .map(|d| d.spec.clone())
                .or_else(|| runtime.stable_spec.clone())
        {
            query.spec = running;
        }
        // Default checkpoint: `<DIR>/.checkpoints/<name>/`, pinned in status like on Kubernetes.
        if runtime.status.checkpoint_location.is_none() && query.spec.checkpoint.location.is_none()
        {
            let dir = self.config.manifests.join(".checkpoints").join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| io_error("creating checkpoint dir", e))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| io_error("checkpoint dir", e))?;
            let url = url::Url::from_directory_path(&dir)
                .map_err(|()| io_error("checkpoint dir", dir.display()))?;
            runtime.status.checkpoint_location = Some(url.to_string());
        }
        query.status = Some(runtime.status.clone());

        // Observe.
        let restarted = self.restart_crashed(runtime, &mut events).await;
        let progress = self.observe_progress(runtime).await;
        if let Some(deployment) = runtime.deployment.as_mut()
            && let Some(from) = deployment.downtime_from_ms
            && let Some(first) = progress.first_commit_ms
        {
            let downtime = (first - from).max(0) as f64 / 1000.0;
            deployment.downtime_from_ms = None;
            runtime.status.last_rescale_downtime_seconds = Some(downtime);
            events.push(PlannedEvent {
                severity: EventSeverity::Normal,
                reason: "RescaleDowntime".into(),
                action: "Rollout".into(),
                note: format!(
                    "generation {} committed its first batch {downtime:.3} s after the last commit of the previous one",
                    deployment.generation
                ),
            });
            query.status = Some(runtime.status.clone());
        }
        query.status = Some(runtime.status.clone());
        let workers = runtime.deployment.as_ref().map(|d| WorkersObservation {
            generation: d.generation,
            restart_hash: d.restart_hash.clone(),
            section_hashes: d.section_hashes.clone(),
            replicas: i32::try_from(d.replicas).unwrap_or(i32::MAX),
            ready_replicas: i32::try_from(d.ready).unwrap_or(i32::MAX),
            rollout_complete: d.ready == d.replicas && restarted == 0,
        });
        let validation = validate_spec(&query.spec);
        let checkpoint = if validation.is_ok() {
            observe_checkpoint(&query, &self.operator, &self.checkpoints).await?
        } else {
            plan::CheckpointObservation::NotChecked
        };
        let observation = Observation {
            workers,
            checkpoint,
            progress: Some(progress.observation.clone()),
        };
        let mut planned = plan::plan(
            &held_at_one(&query, &runtime.checks),
            validation,
            &observation,
            &self.operator,
            Time(Timestamp::now()),
        )?;
        let now = Time(Timestamp::now());
        let generation = Some(runtime.generation);

        // Rollback: a restart-type rollout that is not Ready in time goes back to the stable spec.
        if let Some(deployment) = runtime.deployment.as_ref()
            && deployment.upgrading
            && deployment.ready < deployment.replicas
            && deployment.started.elapsed() > self.config.ready_timeout
            && let Some(stable) = runtime.stable_spec.clone()
        {
            let message = format!(
                "generation {} was not Ready within {} s: rolling back to the last stable spec ({})",
                deployment.generation,
                self.config.ready_timeout.as_secs(),
                runtime
                    .status
                    .last_stable_spec_hash
                    .clone()
                    .unwrap_or_default()
            );
            tracing::warn!(query = %name, "{message}");
            runtime.rejected = Some((file_hash.clone(), message.clone()));
            let mut rollback = query.clone();
            rollback.spec = stable;
            planned = plan::plan(
                &held_at_one(&rollback, &runtime.checks),
                validate_spec(&rollback.spec),
                &observation,
                &self.operator,
                now.clone(),
            )?;
            planned.status.phase = Some(Phase::RollingBack);
            events.push(PlannedEvent {
                severity: EventSeverity::Warning,
                reason: "RolledBack".into(),
                action: "Rollback".into(),
                note: message,
            });
        }
        let effective_spec = match &planned.workers {
            WorkersAction::Apply(_)
                if runtime
                    .rejected
                    .as_ref()
                    .is_some_and(|(h, _)| *h == file_hash) =>
            {
                runtime
                    .stable_spec
                    .clone()
                    .or_else(|| runtime.deployment.as_ref().map(|d| d.spec.clone()))
                    .unwrap_or_else(|| query.spec.clone())
            }
            _ => query.spec.clone(),
        };
        let mut status = planned.status.clone();

        // Facts about the SQL from the worker's planner (cached per spec).
        let effective_hash = spec_hash(&effective_spec);
        let mut check_refusal = None;
        if let WorkersAction::Apply(desired) = &mut planned.workers {
            let manifest = self.write_manifest(&name, desired)?;
            let needs_check = !runtime.checks.contains_key(&effective_hash)
                || matches!(planned.change, SpecChange::Restart { .. } | SpecChange::New);
            if needs_check {
                let location = (effective_spec.upgrade_mode == sluice_crds::UpgradeMode::LastState)
                    .then_some(desired.checkpoint_location.as_str());
                match run_check(&self.config.worker_bin, &manifest, location).await {
                    CheckOutcome::Valid(report) => {
                        runtime.checks.insert(effective_hash.clone(), report);
                    }
                    CheckOutcome::Refused(message) => check_refusal = Some(message),
                    CheckOutcome::Unknown(message) => {
                        tracing::warn!(query = %name, %message, "could not check the spec; retrying");
                        return write_status(status_path, &runtime.status);
                    }
                }
            }
        }
        if let Some(message) = check_refusal {
            // Refused before anything stops: the running generation keeps running.
            let note = format!("upgrade refused, the running generation keeps running: {message}");
            let repeated = runtime
                .rejected
                .as_ref()
                .is_some_and(|(h, m)| *h == file_hash && *m == note);
            runtime.rejected = Some((file_hash.clone(), note.clone()));
            let mut status = runtime.status.clone();
            status.observed_generation = generation;
            conditions::set(
                &mut status.conditions,
                DEGRADED,
                true,
                "UpgradeRefused",
                &note,
                generation,
                now.clone(),
            );
            if runtime.deployment.is_none() {
                status.phase = Some(Phase::Failed);
                conditions::set(
                    &mut status.conditions,
                    READY,
                    false,
                    "UpgradeRefused",
                    &note,
                    generation,
                    now,
                );
            }
            if !repeated {
                events.push(PlannedEvent {
                    severity: EventSeverity::Warning,
                    reason: "UpgradeRefused".into(),
                    action: "Validate".into(),
                    note,
                });
            }
            runtime.status = status;
            publish(&name, &events_path, &events);
            return write_status(status_path, &runtime.status);
        }
        while runtime
            .crashes
            .front()
            .is_some_and(|(at, _)| at.elapsed() > CRASH_LOOP_WINDOW)
        {
            runtime.crashes.pop_front();
        }
        if runtime.crashes.len() >= CRASH_LOOP_EXITS
            && let Some((_, last)) = runtime.crashes.back()
        {
            let message = format!(
                "{} worker exits in the last {} s (last: {last}); see .sluice/{name}/worker-*.log",
                runtime.crashes.len(),
                CRASH_LOOP_WINDOW.as_secs()
            );
            conditions::set(
                &mut status.conditions,
                DEGRADED,
                true,
                "WorkersCrashing",
                &message,
                generation,
                now.clone(),
            );
        }
        if let Some((_, message)) = runtime.rejected.as_ref().filter(|(h, _)| *h == file_hash) {
            conditions::set(
                &mut status.conditions,
                DEGRADED,
                true,
                "SpecRejected",
                message,
                generation,
                now.clone(),
            );
        }

        // Replica count: the stateful rule, then the autoscaler.
        if let WorkersAction::Apply(desired) = &mut planned.workers {
            let report = runtime
                .checks
                .get(&effective_hash)
                .cloned()
                .unwrap_or_default();
            let source_names: Vec<String> = effective_spec
                .sources
                .iter()
                .map(|s| s.name.clone())
                .collect();
            let limit = scaling_limit(&report, &source_names);
            match &limit {
                Some(reason) => {
                    conditions::set(
                        &mut status.conditions,
                        SCALING_LIMITED,
                        true,
                        "StatefulWithoutPartitionKey",
                        reason,
                        generation,
                        now.clone(),
                    );
                    if desired.replicas > 1 {
                        desired.replicas = 1;
                    }
                }
                None => {
                    conditions::set(
                        &mut status.conditions,
                        SCALING_LIMITED,
                        false,
                        "AsExpected",
                        "",
                        generation,
                        now.clone(),
                    );
                }
            }
            let settled = runtime.deployment.as_ref().is_some_and(|d| {
                d.ready == d.replicas
                    && !d.upgrading
                    && d.replicas == u32::try_from(desired.replicas).unwrap_or(0)
            }) && planned.change == SpecChange::Unchanged;
            if let Some(auto) = effective_spec
                .parallelism
                .autoscale
                .as_ref()
                .filter(|a| a.enabled)
                && limit.is_none()
                && settled
                && !effective_spec.suspend
            {
                match Policy::from_spec(auto, report.tasks.max(1)) {
                    Ok(policy) => {
                        let current = u32::try_from(desired.replicas).unwrap_or(1);
                        let metrics = self
                            .autoscaler_metrics(runtime, &effective_spec, current, &progress)
                            .await;
                        let evaluation = autoscaler::evaluate(
                            &policy,
                            &mut runtime.autoscaler,
                            now_ms(),
                            current,
                            &metrics,
                        );
                        tracing::debug!(query = %name, ?metrics, ?evaluation, "autoscaler");
                        if let Action::Scale(to) = evaluation.action {
                            let applied = auto.mode == AutoscaleMode::Apply;
                            let (decision, event) = crate::scaling::decision(
                                current,
                                to,
                                applied,
                                &evaluation,
                                &metrics,
                                Timestamp::now().to_string(),
                            );
                            events.push(event);
                            self.metrics.count_scaling_decision(
                                query.metadata.namespace.as_deref().unwrap_or("default"),
                                &name,
                                current,
                                to,
                                applied,
                            );
                            status.scaling_history.push(decision);
                            let excess =
                                status.scaling_history.len().saturating_sub(SCALING_HISTORY);
                            status.scaling_history.drain(..excess);
                            if applied {
                                desired.replicas = i32::try_from(to).unwrap_or(1);
                                status.phase = Some(Phase::Scaling);
                            }
                        }
                    }
                    Err(message) => {
                        tracing::warn!(query = %name, %message, "bad autoscale settings")
                    }
                }
            }
        }

        // Apply.
        if let WorkersAction::Apply(desired) = &planned.workers {
            let restart = matches!(planned.change, SpecChange::Restart { .. });
            let running = runtime
                .deployment
                .as_ref()
                .map(|d| (d.generation, d.replicas));
            let wanted = (
                desired.generation,
                u32::try_from(desired.replicas).unwrap_or(0),
            );
            if running != Some(wanted) {
                let manifest = self.write_manifest(&name, desired)?;
                let mut downtime_from = None;
                if let Some(old) = runtime.deployment.take() {
                    downtime_from = Some(stop_deployment(old, self.config.stop_timeout).await);
                }
                if running.is_some() {
                    runtime.autoscaler.rescaled(now_ms());
                }
                let deployment = self
                    .start_deployment(
                        &name,
                        desired,
                        &effective_spec,
                        manifest,
                        restart || running.is_none(),
                    )
                    .await?;
                let mut deployment = deployment;
                deployment.downtime_from_ms = downtime_from.flatten();
                self.write_sd(&name, &query, &deployment);
                runtime.deployment = Some(deployment);
            }
        }
        if status.phase == Some(Phase::Running) {
            runtime.stable_spec = Some(effective_spec.clone());
            if let Some(deployment) = runtime.deployment.as_mut() {
                deployment.upgrading = false;
            }
        }
        status.replicas = runtime
            .deployment
            .as_ref()
            .map(|d| i32::try_from(d.ready).unwrap_or(0));
        events.extend(planned.events.iter().cloned());
        publish(&name, &events_path, &events);
        if status != runtime.status {
            runtime.status = status;
            write_status(status_path, &runtime.status)?;
        }
        Ok(())
    }

    fn write_manifest(&self, name: &str, desired: &DesiredWorkers) -> Result<PathBuf> {
        let dir = self.state_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating state dir", e))?;
        let path = dir.join(format!("generation-{}.yaml", desired.generation));
        std::fs::write(&path, &desired.manifest_yaml)
            .map_err(|e| io_error("writing manifest", e))?;
        Ok(path)
    }

    async fn start_deployment(
        &self,
        name: &str,
        desired: &DesiredWorkers,
        spec: &StreamingQuerySpec,
        manifest: PathBuf,
        upgrading: bool,
    ) -> Result<Deployment> {
        let replicas = u32::try_from(desired.replicas).unwrap_or(0);
        let binary = match spec.image.as_deref() {
            Some(image) if image.starts_with('/') => PathBuf::from(image),
            _ => self.config.worker_bin.clone(),
        };
        let mut deployment = Deployment {
            generation: desired.generation,
            restart_hash: desired.restart_hash.clone(),
            section_hashes: desired.section_hashes.clone(),
            replicas,
            checkpoint_location: desired.checkpoint_location.clone(),
            manifest,
            spec: spec.clone(),
            binary,
            workers: Vec::new(),
            started: Instant::now(),
            upgrading,
            downtime_from_ms: None,
            ready: 0,
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error("opening worker log", e))?;
        let log_err = log.try_clone().map_err(|e| io_error("worker log", e))?;
        let mut command = Command::new(&deployment.binary);
        command
            .arg("run")
            .arg(&deployment.manifest)
            .arg("--checkpoint")
            .arg(&deployment.checkpoint_location)
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--replica")
            .arg(replica.to_string())
            .arg("--replicas")
            .arg(deployment.replicas.to_string())
            .env("SLUICE_GENERATION", deployment.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        for var in &deployment.spec.env {
            if let Some(value) = &var.value {
                command.env(&var.name, value);
            }
        }
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
        })
    }

    /// Restarts workers that exited without being asked to; returns how many.
    async fn restart_crashed(
        &self,
        runtime: &mut QueryRuntime,
        events: &mut Vec<PlannedEvent>,
    ) -> u32 {
        let Some(deployment) = runtime.deployment.as_mut() else {
            return 0;
        };
        let mut restarted = 0;
        for index in 0..deployment.workers.len() {
            let exited = deployment.workers[index].child.try_wait().ok().flatten();
            let Some(exit) = exited else { continue };
            let replica = deployment.workers[index].replica;
            match self.spawn(&runtime.name, deployment, replica) {
                Ok(worker) => {
                    deployment.workers[index] = worker;
                    restarted += 1;
                    runtime.status.restarts = Some(runtime.status.restarts.unwrap_or(0) + 1);
                    runtime
                        .crashes
                        .push_back((Instant::now(), format!("replica {replica} exited ({exit})")));
                    events.push(PlannedEvent {
                        severity: EventSeverity::Warning,
                        reason: "WorkerRestarted".into(),
                        action: "Recover".into(),
                        note: format!("replica {replica} exited ({exit}); restarted"),
                    });
                }
                Err(e) => {
                    tracing::error!(query = %runtime.name, replica, error = %e, "cannot restart worker")
                }
            }
        }
        if restarted > 0 {
            deployment.ready = 0;
        }
        restarted
    }

    async fn observe_progress(&self, runtime: &mut QueryRuntime) -> ProgressSummary {
        let mut summary = ProgressSummary::default();
        let Some(deployment) = runtime.deployment.as_mut() else {
            return summary;
        };
        let mut ready = 0;
        let mut answers = Vec::new();
        for worker in &deployment.workers {
            let base = format!("http://127.0.0.1:{}", worker.port);
            if http(
                "GET",
                &format!("{base}/healthz"),
                Duration::from_millis(500),
            )
            .await
            .is_ok()
            {
                ready += 1;
            }
            let Ok(body) = http(
                "GET",
                &format!("{base}/progress"),
                Duration::from_millis(500),
            )
            .await
            else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            answers.push(value);
        }
        deployment.ready = ready;
        summary.first_commit_ms = answers
            .iter()
            .filter_map(|a| a.pointer("/recent/0").and_then(commit_ms))
            .min();
        summary.recent = answers
            .iter()
            .filter_map(|a| a.get("recent").and_then(|r| r.as_array()).cloned())
            .collect();
        // The same sums as the Kubernetes backend's status; before any commit the local status
        // shows zero rates (a local run starts from nothing, there are no earlier figures to keep).
        summary.observation = crate::progress::summarize(&answers)
            .map(|p| p.observation)
            .unwrap_or(plan::ProgressObservation {
                input_rows_per_second: Some(0.0),
                processed_rows_per_second: Some(0.0),
                last_committed_batch_id: None,
                lag: Some(0),
                watermark: None,
            });
        summary
    }

    /// The autoscaler's inputs: from Prometheus over the metrics window, else from `/progress`.
    async fn autoscaler_metrics(
        &self,
        runtime: &mut QueryRuntime,
        spec: &StreamingQuerySpec,
        replicas: u32,
        progress: &ProgressSummary,
    ) -> autoscaler::Metrics {
        // Backlog units → rows: a file source reports unread *files*; under backlog each batch of
        // a task reads `maxFilesPerTrigger` files, so rows per file = rows / (batches · files).
        let files_per_batch = spec
            .sources
            .iter()
            .find_map(|s| s.file.as_ref())
            .map(|f| f.max_files_per_trigger.unwrap_or(1).max(1));
        let window = format!("{}s", self.config.metrics_window.as_secs().max(2));
        if let Some(base) = &self.config.prometheus {
            let namespace = "default";
            let query = |q: String| async move { prometheus_scalar(base, &q).await };
            // The Kubernetes backend's four queries, plus the batch rate for the file backlog unit.
            let [processed, busy, backlog, growth] =
                crate::scaling::prometheus_queries(namespace, &runtime.name, &window);
            let processed = query(processed).await;
            let busy = query(busy).await;
            let backlog = query(backlog).await;
            let growth = query(growth).await;
            let selector = format!("query=\"{}\",namespace=\"{namespace}\"", runtime.name);
            let batches = query(format!(
                "sum(rate(sluice_batch_duration_seconds_count{{{selector}}}[{window}]))"
            ))
            .await;
            match (processed, busy, backlog, growth, batches) {
                (Ok(processed), Ok(busy), Ok(backlog), Ok(growth), Ok(batches)) => {
                    if let (Some(files), Some(p), Some(b)) = (files_per_batch, processed, batches)
                        && b > 0.0
                        && p > 0.0
                    {
                        runtime.rows_per_unit = p / (b * f64::from(files));
                    }
                    let unit = if files_per_batch.is_some() {
                        runtime.rows_per_unit
                    } else {
                        1.0
                    };
                    let input = processed.map(|p| (p + growth.unwrap_or(0.0) * unit).max(0.0));
                    return autoscaler::Metrics {
                        input_rate: input,
                        processed_rate: processed,
                        busy_ratio: busy.map(|b| b / f64::from(replicas.max(1))),
                        backlog: backlog.map(|b| b * unit),
                    };
                }
                (p, b, l, g, n) => {
                    tracing::warn!(query = %runtime.name, ?p, ?b, ?l, ?g, ?n, "prometheus query failed");
                    return autoscaler::Metrics::default();
                }
            }
        }
        // Fallback: the workers' recent progress over the window.
        crate::progress::autoscaler_metrics(
            &progress.recent,
            now_ms(),
            self.config.metrics_window,
            replicas,
            files_per_batch,
            &mut runtime.rows_per_unit,
        )
    }

    fn sd_path(&self, name: &str) -> Option<PathBuf> {
        self.config
            .sd_dir
            .as_ref()
            .map(|d| d.join(format!("sluice-{name}.json")))
    }

    fn write_sd(&self, name: &str, query: &StreamingQuery, deployment: &Deployment) {
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
                "sluice_namespace": query.metadata.namespace.clone().unwrap_or_default(),
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

/// Progress of a deployment's workers, summed.
#[derive(Clone, Debug, Default)]
struct ProgressSummary {
    observation: plan::ProgressObservation,
    /// Earliest commit among the workers' recent progress (ms).
    first_commit_ms: Option<i64>,
    /// Each worker's `recent` progress entries.
    recent: Vec<Vec<serde_json::Value>>,
}

/// Stops every worker at a batch boundary (`POST /stop` waits for the final commit), killing
/// those that do not stop within `timeout`. Returns the last commit time (ms) of the generation.
async fn stop_deployment(deployment: Deployment, timeout: Duration) -> Option<i64> {
    let stops = deployment.workers.into_iter().map(|mut worker| async move {
        let url = format!("http://127.0.0.1:{}/stop", worker.port);
        let answer = http("POST", &url, timeout).await;
        let last = answer
            .as_ref()
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok())
            .and_then(|v| v.get("latest").and_then(commit_ms));
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

fn read_status(path: &Path) -> Option<StreamingQueryStatus> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_saphyr::from_str(&text).ok()
}

fn write_status(path: &Path, status: &StreamingQueryStatus) -> Result<()> {
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
    fn scaling_limit_needs_partition_key_in_group_by() {
        let sources = vec!["events".to_string()];
        let stateless = CheckReport {
            stateful: false,
            tasks: 8,
            ..CheckReport::default()
        };
        assert_eq!(scaling_limit(&stateless, &sources), None);
        let mut stateful = CheckReport {
            stateful: true,
            group_by: vec!["deviceId".into(), "window".into()],
            tasks: 8,
            ..CheckReport::default()
        };
        let reason = scaling_limit(&stateful, &sources).expect("no key: limited");
        assert!(reason.contains("without a partitionKey"), "{reason}");
        stateful
            .partition_keys
            .insert("events".into(), "region".into());
        let reason = scaling_limit(&stateful, &sources).expect("key not grouped: limited");
        assert!(reason.contains("`region`"), "{reason}");
        stateful
            .partition_keys
            .insert("events".into(), "deviceId".into());
        assert_eq!(scaling_limit(&stateful, &sources), None);
    }

    #[test]
    fn a_held_query_is_planned_with_one_replica() {
        let query = sluice_crds::parse_manifest(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {name: q}
spec:
  sources:
    - name: events
      file: {path: "/tmp/in", format: json, partitions: 1}
      partitionKey: deviceId
      schema: [{name: deviceId, type: string}]
  sql: "SELECT count(*) AS n FROM events"
  sqlScope: stream
  sink: {console: {}}
  parallelism:
    replicas: 3
    autoscale: {enabled: true, minReplicas: 2, maxReplicas: 4}
"#,
        )
        .expect("manifest");
        let hash = spec_hash(&query.spec);
        // Not checked yet: planned as written.
        assert_eq!(held_at_one(&query, &BTreeMap::new()).spec, query.spec);
        let mut report = CheckReport {
            stateful: true,
            partition_keys: BTreeMap::from([("events".into(), "deviceId".into())]),
            tasks: 1,
            ..CheckReport::default()
        };
        let mut checks = BTreeMap::from([(hash.clone(), report.clone())]);
        let held = held_at_one(&query, &checks);
        assert_eq!(held.spec.parallelism.replicas, 1);
        assert_eq!(held.spec.parallelism.autoscale, None);
        assert_eq!(held.spec.sql, query.spec.sql);
        // The key is grouped: free to scale, planned as written.
        report.group_by = vec!["deviceId".into()];
        checks.insert(hash, report);
        assert_eq!(held_at_one(&query, &checks).spec, query.spec);
    }

    #[test]
    fn commit_time_is_trigger_start_plus_execution() {
        let progress = serde_json::json!({
            "timestamp": "2026-11-21T10:00:00.500Z",
            "durationMs": {"triggerExecution": 250}
        });
        let start: Timestamp = "2026-11-21T10:00:00.500Z".parse().expect("ts");
        assert_eq!(commit_ms(&progress), Some(start.as_millisecond() + 250));
        assert_eq!(commit_ms(&serde_json::json!({})), None);
    }
}
