//! The local operator: `sluice-operator local --manifests DIR` reconciles every `DIR/*.yaml`
//! StreamingQuery once per poll through [`reconcile_live`] with a [`LocalBackend`], as the
//! Kubernetes [`crate::controller`] does with the Kubernetes backend. A file's edits are spec
//! changes (its generation goes up when the spec's hash changes); an unreadable manifest gets a
//! `Degraded` status (`InvalidSpec`) and touches nothing that runs; a removed file stops its
//! workers and keeps the checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::conditions::{self, DEGRADED};
use sluice_crds::{Phase, StreamingQueryStatus};

use crate::backend::local::{LocalBackend, LocalConfig, io_error, read_status, write_status};
use crate::checkpoint::CheckpointManager;
use crate::error::{Error, Result};
use crate::plan::OperatorConfig;
use crate::reconcile::reconcile_live;
use crate::scaling::{MetricsSource, ProgressMetrics, PrometheusMetrics, Scaler, WorkerCheck};

struct FileState {
    generation: i64,
    spec_hash: String,
    status: StreamingQueryStatus,
}

/// The local operator: reconciles every manifest in the folder through [`reconcile_live`] with a
/// [`LocalBackend`].
pub struct LocalOperator {
    config: LocalConfig,
    operator: OperatorConfig,
    backend: LocalBackend,
    scaler: Scaler,
    checkpoints: CheckpointManager,
    files: BTreeMap<String, FileState>,
    metrics: crate::metrics::Metrics,
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
            ready_timeout: config.ready_timeout,
            // The local backend runs schedules itself, to the second.
            schedule_seconds: true,
            ..OperatorConfig::default()
        };
        let backend = LocalBackend::new(config.clone());
        let metrics = crate::metrics::Metrics::default();
        let source: Arc<dyn MetricsSource> = match &config.prometheus {
            Some(url) => Arc::new(PrometheusMetrics::new(url.clone(), config.metrics_window)),
            None => Arc::new(ProgressMetrics::new(
                backend.progress_url(),
                config.metrics_window,
            )),
        };
        let scaler = Scaler::new(
            Arc::new(WorkerCheck {
                worker_bin: config.worker_bin.clone(),
            }),
            Some(source),
            metrics.clone(),
        );
        Self {
            config,
            operator,
            backend,
            scaler,
            checkpoints,
            files: BTreeMap::new(),
            metrics,
        }
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
        self.backend.shutdown().await;
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
            .files
            .keys()
            .filter(|name| !seen.contains(name))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(query = %name, "manifest removed: stopping workers");
            self.files.remove(&name);
            self.backend.remove(&name).await;
            self.metrics.forget_query("default", &name);
        }
        Ok(())
    }

    /// Reconciles one manifest file; returns the query's name.
    async fn reconcile_file(&mut self, stem: &str, path: &Path) -> Result<String> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error("reading manifest", e))?;
        let mut query = match sluice_crds::parse_manifest(&text) {
            Ok(query) => query,
            Err(e) => {
                // Not a StreamingQuery we can read: report it, touch nothing that runs.
                let status_path = self.backend.status_path(stem);
                let mut status = self
                    .files
                    .get(stem)
                    .map(|f| f.status.clone())
                    .or_else(|| read_status(&status_path))
                    .unwrap_or_default();
                conditions::set(
                    &mut status.conditions,
                    DEGRADED,
                    true,
                    "InvalidSpec",
                    &e.to_string(),
                    status.observed_generation,
                    Time(Timestamp::now()),
                );
                if status.generation.is_none() {
                    status.phase = Some(Phase::Failed);
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
        let spec_hash = crate::plan::guard::spec_hash(&query.spec);
        if !self.files.contains_key(&name) {
            let status = read_status(&self.backend.status_path(&name)).unwrap_or_default();
            self.backend.seed(&name, Some(&status)).await;
            self.files.insert(
                name.clone(),
                FileState {
                    generation: status.observed_generation.unwrap_or(0) + 1,
                    spec_hash: spec_hash.clone(),
                    status,
                },
            );
        }
        let Some(file) = self.files.get_mut(&name) else {
            return Err(Error::Internal("query state vanished".into()));
        };
        if file.spec_hash != spec_hash {
            file.spec_hash = spec_hash;
            file.generation += 1;
        }
        query.metadata.generation = Some(file.generation);
        // Default checkpoint: `<DIR>/.checkpoints/<name>/`, pinned in status like on Kubernetes.
        if file.status.checkpoint_location.is_none() && query.spec.checkpoint.location.is_none() {
            let dir = self.config.manifests.join(".checkpoints").join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| io_error("creating checkpoint dir", e))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| io_error("checkpoint dir", e))?;
            let url = url::Url::from_directory_path(&dir)
                .map_err(|()| io_error("checkpoint dir", dir.display()))?;
            file.status.checkpoint_location = Some(url.to_string());
        }
        query.status = Some(file.status.clone());
        let plan = reconcile_live(
            &self.backend,
            &self.checkpoints,
            &query,
            &self.operator,
            Some(&self.scaler),
            Time(Timestamp::now()),
        )
        .await?;
        file.status = plan.status;
        Ok(name)
    }
}
