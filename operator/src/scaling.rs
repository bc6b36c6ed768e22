//! Replica-count rules shared by the backends: the stateful-query limit (`ScalingLimited`) and the
//! autoscaler step of a reconcile ([`Scaler`]), around the pure DS2 decision in
//! [`crate::autoscaler`].
//!
//! What the SQL does (stateful? GROUP BY columns? task count?) comes from the worker's planner,
//! `sluice-worker check` ([`QueryInspector`]); the rates come from Prometheus, or from the workers'
//! own `/progress` when the operator has none ([`MetricsSource`]).
//! Both are traits so tests can stand in for them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::StreamingQuery;

use crate::autoscaler;
use crate::plan::{
    AutoscaleObservation, CheckObservation, CheckRequest, RestoreObservation, RestoreRequest,
    WorkersObservation, child_name,
};

pub use crate::plan::scale::{SCALING_HISTORY, decision, may_scale_out, scaling_limit};
pub use sluice_crds::contract::CheckReport;

/// Outcome of inspecting a query's SQL: `Valid`, `Refused` (the planner said why) or `Unknown`
/// (could not inspect: try again on the next reconcile).
pub type Inspection = crate::clients::CheckOutcome;

/// Runs the pre-upgrade check (the worker's planner, against the checkpoint).
pub trait QueryInspector: Send + Sync {
    /// Checks the resolved query document of `request` (the ConfigMap's `query.yaml`) against
    /// `request.checkpoint_location`.
    fn inspect<'a>(
        &'a self,
        query: &'a StreamingQuery,
        request: &'a CheckRequest,
    ) -> BoxFuture<'a, Inspection>;

    /// Runs `sluice-worker checkpoint restore` of `request` (`spec.restore`) with the query's
    /// credentials. Inspectors that cannot restore (test stand-ins) report `Unavailable`.
    fn restore<'a>(
        &'a self,
        query: &'a StreamingQuery,
        request: &'a RestoreRequest,
    ) -> BoxFuture<'a, RestoreObservation> {
        let _ = (query, request);
        Box::pin(async { RestoreObservation::Unavailable("this backend cannot restore".into()) })
    }
}

/// Runs `sluice-worker check <manifest> [--checkpoint URL]` as a process (the local backend).
pub struct WorkerCheck {
    pub worker_bin: PathBuf,
}

impl QueryInspector for WorkerCheck {
    fn inspect<'a>(
        &'a self,
        _query: &'a StreamingQuery,
        request: &'a CheckRequest,
    ) -> BoxFuture<'a, Inspection> {
        Box::pin(async move {
            // The operator's own worker binary: the spec's planner and checkpoint rules, whatever
            // image the spec names (a broken image is caught by the rollout's readiness).
            let binary = self.worker_bin.clone();
            let path =
                std::env::temp_dir().join(format!("sluice-check-{}.yaml", uuid::Uuid::new_v4()));
            if let Err(e) = tokio::fs::write(&path, &request.manifest_yaml).await {
                return Inspection::Unknown(format!("cannot write {}: {e}", path.display()));
            }
            let outcome =
                crate::clients::run_check(&binary, &path, request.checkpoint_location.as_deref())
                    .await;
            let _ = tokio::fs::remove_file(&path).await;
            outcome
        })
    }

    fn restore<'a>(
        &'a self,
        _query: &'a StreamingQuery,
        request: &'a RestoreRequest,
    ) -> BoxFuture<'a, RestoreObservation> {
        Box::pin(async move {
            let path =
                std::env::temp_dir().join(format!("sluice-restore-{}.yaml", uuid::Uuid::new_v4()));
            if let Err(e) = tokio::fs::write(&path, &request.manifest_yaml).await {
                return RestoreObservation::Unavailable(format!(
                    "cannot write {}: {e}",
                    path.display()
                ));
            }
            let outcome = crate::clients::run_restore(&self.worker_bin, &path, request).await;
            let _ = tokio::fs::remove_file(&path).await;
            outcome
        })
    }
}

/// A query the autoscaler reads metrics for.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingTarget {
    pub namespace: String,
    pub name: String,
    /// Replicas running now.
    pub replicas: u32,
    /// `maxFilesPerTrigger` of a file source (its backlog counts files), `None` for others.
    pub files_per_batch: Option<u32>,
}

/// `maxFilesPerTrigger` of the query's file source, if it has one (its backlog counts files).
pub fn files_per_batch(spec: &sluice_crds::StreamingQuerySpec) -> Option<u32> {
    spec.sources
        .iter()
        .find_map(|s| s.file.as_ref())
        .map(|f| f.max_files_per_trigger.unwrap_or(1).max(1))
}

/// A worker pod's base URL from (query name, namespace, ordinal).
pub type ProgressUrl = Arc<dyn Fn(&str, &str, i32) -> String + Send + Sync>;

/// How long one worker's `/progress` may take before it counts as unanswered.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// The `GET /progress` answers of replicas `0..replicas` of a query that answered in time.
pub async fn worker_progress(
    url: &ProgressUrl,
    name: &str,
    namespace: &str,
    replicas: i32,
) -> Vec<crate::progress::Answer> {
    let fetches = (0..replicas.max(0)).map(|ordinal| {
        let url = format!("{}/progress", url(name, namespace, ordinal));
        async move {
            match crate::clients::http("GET", &url, PROGRESS_TIMEOUT).await {
                Ok(body) => serde_json::from_str::<crate::progress::Answer>(&body)
                    .map_err(|e| tracing::debug!(%url, error = %e, "unreadable progress"))
                    .ok(),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "no progress from worker");
                    None
                }
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The autoscaler's inputs from the workers' `GET /progress` ([`crate::progress::autoscaler_metrics`])
/// for an operator started without `--prometheus`. Every replica must answer, else the figures
/// would understate the query: the metrics are then empty and the autoscaler holds.
pub struct ProgressMetrics {
    pub worker_url: ProgressUrl,
    pub window: Duration,
    /// Rows per backlog unit (file) learned per query (`namespace/name`).
    rows_per_unit: Mutex<HashMap<String, f64>>,
}

impl ProgressMetrics {
    pub fn new(worker_url: ProgressUrl, window: Duration) -> Self {
        Self {
            worker_url,
            window,
            rows_per_unit: Mutex::new(HashMap::new()),
        }
    }
}

impl MetricsSource for ProgressMetrics {
    fn metrics<'a>(&'a self, target: &'a ScalingTarget) -> BoxFuture<'a, autoscaler::Metrics> {
        Box::pin(async move {
            let replicas = i32::try_from(target.replicas).unwrap_or(i32::MAX);
            let answers =
                worker_progress(&self.worker_url, &target.name, &target.namespace, replicas).await;
            if answers.len() < target.replicas as usize {
                tracing::debug!(query = %target.name, answered = answers.len(), "not every worker answered /progress; autoscaler holds");
                return autoscaler::Metrics::default();
            }
            let recent: Vec<_> = answers.into_iter().map(|a| a.recent).collect();
            let key = format!("{}/{}", target.namespace, target.name);
            let mut units = self
                .rows_per_unit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let unit = units.entry(key).or_insert(1.0);
            crate::progress::autoscaler_metrics(
                &recent,
                now_ms(),
                self.window,
                target.replicas,
                target.files_per_batch,
                unit,
            )
        })
    }
}

/// The autoscaler's inputs for a query.
pub trait MetricsSource: Send + Sync {
    fn metrics<'a>(&'a self, target: &'a ScalingTarget) -> BoxFuture<'a, autoscaler::Metrics>;
}

/// The PromQL the autoscaler reads for a query over `window` (e.g. `30s`), in the order
/// processed rows/s, busy seconds/s, backlog, backlog growth/s, batches/s (the last turns a file
/// source's backlog of files into rows). Worker metrics carry the labels `query` and `namespace`
/// (worker/src/metrics.rs).
pub fn prometheus_queries(namespace: &str, name: &str, window: &str) -> [String; 5] {
    let selector = format!("query=\"{name}\",namespace=\"{namespace}\"");
    [
        format!("sum(rate(sluice_processed_rows_total{{{selector}}}[{window}]))"),
        format!("sum(rate(sluice_batch_busy_seconds_total{{{selector}}}[{window}]))"),
        format!("sum(sluice_source_backlog_rows{{{selector}}})"),
        format!("deriv(sum(sluice_source_backlog_rows{{{selector}}})[{window}:1s])"),
        format!("sum(rate(sluice_batch_duration_seconds_count{{{selector}}}[{window}]))"),
    ]
}

/// Reads [`prometheus_queries`] from a Prometheus server. λ = processed + backlog growth (what
/// arrives is what was processed plus what piled up), the busy ratio is per replica, backlog in
/// rows ([`crate::progress::rows_per_backlog_unit`]). A failed query gives empty metrics (the
/// autoscaler holds).
pub struct PrometheusMetrics {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    pub window: Duration,
    /// Rows per backlog unit (file) learned per query (`namespace/name`).
    rows_per_unit: Mutex<HashMap<String, f64>>,
}

impl PrometheusMetrics {
    pub fn new(url: String, window: Duration) -> Self {
        Self {
            url,
            window,
            rows_per_unit: Mutex::new(HashMap::new()),
        }
    }
}

impl MetricsSource for PrometheusMetrics {
    fn metrics<'a>(&'a self, target: &'a ScalingTarget) -> BoxFuture<'a, autoscaler::Metrics> {
        Box::pin(async move {
            let window = format!("{}s", self.window.as_secs().max(2));
            let mut values = Vec::new();
            for promql in prometheus_queries(&target.namespace, &target.name, &window) {
                match crate::clients::prometheus_scalar(&self.url, &promql).await {
                    Ok(value) => values.push(value),
                    Err(e) => {
                        tracing::warn!(query = %target.name, error = %e, %promql, "prometheus query failed");
                        return autoscaler::Metrics::default();
                    }
                }
            }
            let (processed, busy, backlog, growth, batches) =
                (values[0], values[1], values[2], values[3], values[4]);
            let key = format!("{}/{}", target.namespace, target.name);
            let unit = {
                let mut units = self
                    .rows_per_unit
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                crate::progress::rows_per_backlog_unit(
                    target.files_per_batch,
                    processed.unwrap_or(0.0),
                    batches.unwrap_or(0.0),
                    units.entry(key).or_insert(1.0),
                )
            };
            autoscaler::Metrics {
                input_rate: processed.map(|p| (p + growth.unwrap_or(0.0) * unit).max(0.0)),
                processed_rate: processed,
                busy_ratio: busy.map(|b| b / f64::from(target.replicas.max(1))),
                backlog: backlog.map(|b| b * unit),
            }
        })
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The replica-count inputs of a reconcile, for both backends: runs the pre-upgrade check
/// ([`QueryInspector`], cached per spec and checkpoint location) and reads the autoscaler's
/// metrics ([`MetricsSource`]); keeps the autoscaler's windows per query in memory. The
/// decisions themselves are [`crate::plan::plan`]'s.
pub struct Scaler {
    pub inspector: Arc<dyn QueryInspector>,
    /// Prometheus or the workers' `/progress`; `None` (tests) leaves autoscaling queries at their
    /// replica count.
    pub metrics: Option<Arc<dyn MetricsSource>>,
    pub counters: crate::metrics::Metrics,
    /// `namespace/name` → (check key, outcome); only final outcomes (passed, refused).
    checks: Mutex<HashMap<String, (String, CheckObservation)>>,
    states: Mutex<HashMap<String, autoscaler::State>>,
}

impl Scaler {
    pub fn new(
        inspector: Arc<dyn QueryInspector>,
        metrics: Option<Arc<dyn MetricsSource>>,
        counters: crate::metrics::Metrics,
    ) -> Self {
        Self {
            inspector,
            metrics,
            counters,
            checks: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
        }
    }

    /// The check of `request` for `query`: cached while the spec and location stay the same (a
    /// refusal too, so a refused spec is not checked again every reconcile); a check that could
    /// not complete is tried again next time.
    pub async fn check(&self, query: &StreamingQuery, request: &CheckRequest) -> CheckObservation {
        let key = key(query);
        let cached = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .filter(|(k, _)| *k == request.key)
            .map(|(_, outcome)| outcome.clone());
        if let Some(outcome) = cached {
            return outcome;
        }
        let outcome = match self.inspector.inspect(query, request).await {
            Inspection::Valid(report) => CheckObservation::Passed(report),
            Inspection::Refused(message) => CheckObservation::Refused(message),
            Inspection::Unknown(message) => {
                tracing::warn!(query = %key, %message, "the pre-upgrade check could not complete");
                return CheckObservation::Unavailable(message);
            }
            Inspection::Pending(message) => return CheckObservation::Pending(message),
        };
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, (request.key.clone(), outcome.clone()));
        outcome
    }

    /// Runs the restore of `request` (not cached: `status.restore` records a final outcome).
    pub async fn restore(
        &self,
        query: &StreamingQuery,
        request: &RestoreRequest,
    ) -> RestoreObservation {
        let outcome = self.inspector.restore(query, request).await;
        if let RestoreObservation::Unavailable(message) = &outcome {
            tracing::warn!(query = %key(query), %message, "the restore could not complete");
        }
        outcome
    }

    /// The autoscaler's inputs for a query that autoscales and runs a complete rollout, `None`
    /// otherwise (or without a metrics source).
    pub async fn autoscale_input(
        &self,
        query: &StreamingQuery,
        workers: Option<&WorkersObservation>,
    ) -> Option<AutoscaleObservation> {
        let spec = &query.spec;
        spec.parallelism.autoscale.as_ref().filter(|a| a.enabled)?;
        let key = key(query);
        let state = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let running = workers.filter(|w| w.rollout_complete && w.replicas > 0);
        let metrics = match (running, &self.metrics) {
            (Some(running), Some(source)) => {
                let target = ScalingTarget {
                    namespace: query.metadata.namespace.clone().unwrap_or_default(),
                    name: query.metadata.name.clone().unwrap_or_default(),
                    replicas: u32::try_from(running.replicas).unwrap_or(1),
                    files_per_batch: files_per_batch(spec),
                };
                source.metrics(&target).await
            }
            (Some(_), None) => {
                tracing::warn!(query = %key, "spec.parallelism.autoscale is set but the operator has no metrics source");
                return None;
            }
            // Mid-rollout: no evaluation, but the state is handed on (a rescale starts its
            // cool-down).
            (None, _) => autoscaler::Metrics::default(),
        };
        Some(AutoscaleObservation {
            metrics,
            state,
            now_ms: now_ms(),
        })
    }

    /// Keeps the autoscaler's windows of `query` for the next reconcile.
    pub fn put_state(&self, query: &StreamingQuery, state: autoscaler::State) {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key(query), state);
    }

    /// Forgets a deleted query.
    pub fn forget(&self, query: &StreamingQuery) {
        let key = key(query);
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }
}

fn key(query: &StreamingQuery) -> String {
    format!(
        "{}/{}",
        query.metadata.namespace.as_deref().unwrap_or_default(),
        query.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Base URL of replica `ordinal`'s HTTP server through the headless Service:
/// `http://<query child>-<ordinal>.<query child>.<namespace>.svc:<port>`.
pub fn pod_url(query_name: &str, namespace: &str, ordinal: i32, port: u16) -> String {
    let child = child_name(query_name);
    format!("http://{child}-{ordinal}.{child}.{namespace}.svc:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::Action;

    #[test]
    fn scaling_limit_says_what_to_change() {
        let sources = vec!["events".to_string()];
        let mut report = CheckReport {
            stateful: true,
            group_by: vec!["region".into(), "window".into()],
            tasks: 8,
            ..CheckReport::default()
        };
        let message = |r: &CheckReport| scaling_limit(r, &sources).map(|(_, m)| m);
        assert_eq!(
            message(&report).as_deref(),
            Some(
                "stateful query over source `events` without a partitionKey: held at 1 replica; \
                 set partitionKey of source `events` to a GROUP BY column (region, window) to scale"
            )
        );
        report
            .partition_keys
            .insert("events".into(), "deviceId".into());
        assert_eq!(
            message(&report).as_deref(),
            Some(
                "GROUP BY key (region, window) does not contain the partition key `deviceId` of \
                 source `events`: held at 1 replica; add deviceId to GROUP BY or set partitionKey \
                 to a GROUP BY column"
            )
        );
        report.group_by.push("deviceId".into());
        assert_eq!(scaling_limit(&report, &sources), None);
        report.stateful = false;
        report.partition_keys.clear();
        assert_eq!(scaling_limit(&report, &sources), None);
    }

    #[test]
    fn over_the_keyed_exchange_only_a_global_aggregate_is_held() {
        let sources = vec!["events".to_string()];
        // A count per device and window over 8 file partitions: no partitionKey needed.
        let mut report = CheckReport {
            stateful: true,
            group_by: vec!["ts".into(), "deviceId".into()],
            keys: vec!["deviceId".into()],
            plan: "exchange".into(),
            tasks: 8,
            ..CheckReport::default()
        };
        assert_eq!(scaling_limit(&report, &sources), None);
        // A count per window alone: one key group.
        report.keys.clear();
        report.group_by = vec!["ts".into()];
        assert_eq!(
            scaling_limit(&report, &sources),
            Some((
                "StatefulWithoutKey",
                "stateful query without a grouping key besides its window (GROUP BY ts): its \
                 state is one key group, held at 1 replica; group by a key column too to scale"
                    .to_string()
            ))
        );
    }

    #[test]
    fn promql_selects_the_query_by_its_labels() {
        let [processed, busy, backlog, growth, batches] = prometheus_queries("prod", "q", "30s");
        assert_eq!(
            batches,
            "sum(rate(sluice_batch_duration_seconds_count{query=\"q\",namespace=\"prod\"}[30s]))"
        );
        assert_eq!(
            processed,
            "sum(rate(sluice_processed_rows_total{query=\"q\",namespace=\"prod\"}[30s]))"
        );
        assert_eq!(
            busy,
            "sum(rate(sluice_batch_busy_seconds_total{query=\"q\",namespace=\"prod\"}[30s]))"
        );
        assert_eq!(
            backlog,
            "sum(sluice_source_backlog_rows{query=\"q\",namespace=\"prod\"})"
        );
        assert_eq!(
            growth,
            "deriv(sum(sluice_source_backlog_rows{query=\"q\",namespace=\"prod\"})[30s:1s])"
        );
    }

    #[test]
    fn decisions_name_direction_and_mode() {
        let evaluation = autoscaler::Evaluation {
            action: Action::Scale(3),
            required: Some(3),
            true_processing_rate: Some(100.0),
            utilization: Some(1.4),
            reason: "utilization 1.40 above 0.80".into(),
        };
        let metrics = autoscaler::Metrics {
            input_rate: Some(250.0),
            processed_rate: Some(140.0),
            busy_ratio: Some(0.7),
            backlog: Some(1200.0),
        };
        let (entry, event) = decision(2, 3, true, &evaluation, &metrics, "t".into());
        assert_eq!(event.reason, "ScaledUp");
        assert_eq!(
            event.note,
            "scaling 2 -> 3: utilization 1.40 above 0.80 (λ 250.0 rows/s, processed 140.0 rows/s, busy 0.70, backlog 1200 rows, TPR 100.0 rows/s, expected capacity 300.0 rows/s)"
        );
        assert_eq!(
            (entry.from_replicas, entry.to_replicas, entry.applied),
            (2, 3, true)
        );
        assert_eq!(entry.backlog, 1200.0);
        assert_eq!(
            decision(3, 2, true, &evaluation, &metrics, "t".into())
                .1
                .reason,
            "ScaledDown"
        );
        let (entry, event) = decision(2, 3, false, &evaluation, &metrics, "t".into());
        assert_eq!(event.reason, "ScalingRecommended");
        assert!(event.note.ends_with("set spec.parallelism.autoscale.mode: apply (or spec.parallelism.replicas) to act on it"), "{}", event.note);
        assert!(!entry.applied);
    }

    /// A stand-in Prometheus: answers `/api/v1/query` from `answers` (PromQL → value), records
    /// the queries.
    async fn prometheus(answers: Vec<(String, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(
                move |axum::extract::Query(params): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| {
                    let answers = answers.clone();
                    let recorded = recorded.clone();
                    async move {
                        let promql = params.get("query").cloned().unwrap_or_default();
                        recorded.lock().expect("lock").push(promql.clone());
                        let result = answers
                            .iter()
                            .find(|(q, _)| *q == promql)
                            .map(|(_, v)| serde_json::json!([{"metric": {}, "value": [1.0, v]}]))
                            .unwrap_or_else(|| serde_json::json!([]));
                        axum::Json(serde_json::json!({
                            "status": "success",
                            "data": {"resultType": "vector", "result": result}
                        }))
                    }
                },
            ),
        );
        (serve(app).await, seen)
    }

    /// Serves `app` on a free loopback port; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn prometheus_source_derives_lambda_and_busy_ratio_per_replica() {
        let [processed, busy, backlog, growth, batches] = prometheus_queries("prod", "q", "30s");
        let (url, seen) = prometheus(vec![
            (processed.clone(), "200"),
            (busy.clone(), "1.5"),
            (backlog.clone(), "1200"),
            (growth.clone(), "40"),
            (batches.clone(), "2"),
        ])
        .await;
        let source = PrometheusMetrics::new(url, Duration::from_secs(30));
        let target = ScalingTarget {
            namespace: "prod".into(),
            name: "q".into(),
            replicas: 2,
            files_per_batch: None,
        };
        assert_eq!(
            source.metrics(&target).await,
            autoscaler::Metrics {
                input_rate: Some(240.0),
                processed_rate: Some(200.0),
                busy_ratio: Some(0.75),
                backlog: Some(1200.0),
            }
        );
        assert_eq!(
            seen.lock().expect("lock").clone(),
            [processed, busy, backlog, growth, batches]
        );
        // No samples yet (a new query): empty figures, the autoscaler holds.
        let (empty, _) = prometheus(Vec::new()).await;
        let source = PrometheusMetrics::new(empty, Duration::from_secs(30));
        assert_eq!(
            source.metrics(&target).await,
            autoscaler::Metrics::default()
        );
    }

    /// A stand-in worker answering `GET /progress` with `answer`.
    async fn worker(answer: serde_json::Value) -> String {
        let app = axum::Router::new().route(
            "/progress",
            axum::routing::get(move || {
                let answer = answer.clone();
                async move { axum::Json(answer) }
            }),
        );
        serve(app).await
    }

    #[tokio::test]
    async fn progress_source_reads_every_replica_and_holds_when_one_is_missing() {
        let batch = |rows: u64, busy_ms: i64, backlog: u64| {
            let start = Timestamp::from_millisecond(now_ms() - 1_000 - busy_ms).expect("time");
            serde_json::json!({
                "timestamp": start.to_string(),
                "numInputRows": rows,
                "durationMs": {"triggerExecution": busy_ms},
                "tasks": [{"task": 0}],
                "sources": [{"backlog": backlog}],
            })
        };
        let replica = |rows, busy, backlog| serde_json::json!({"latest": null, "recent": [batch(rows, busy, backlog)], "lastError": null});
        let urls = vec![
            worker(replica(3_000, 2_000, 100)).await,
            worker(replica(1_000, 1_000, 50)).await,
        ];
        let by_ordinal = urls.clone();
        let source = ProgressMetrics::new(
            Arc::new(move |name, namespace, ordinal| {
                assert_eq!((name, namespace), ("q", "prod"));
                by_ordinal[ordinal as usize].clone()
            }),
            Duration::from_secs(10),
        );
        let mut target = ScalingTarget {
            namespace: "prod".into(),
            name: "q".into(),
            replicas: 2,
            files_per_batch: None,
        };
        assert_eq!(
            source.metrics(&target).await,
            autoscaler::Metrics {
                input_rate: Some(400.0),
                processed_rate: Some(400.0),
                busy_ratio: Some(0.15),
                backlog: Some(150.0),
            }
        );
        // A third replica does not answer: partial figures would understate the query.
        target.replicas = 3;
        let missing = ProgressMetrics::new(
            Arc::new(move |_, _, ordinal| {
                urls.get(ordinal as usize)
                    .cloned()
                    .unwrap_or_else(|| "http://127.0.0.1:9".into())
            }),
            Duration::from_secs(10),
        );
        assert_eq!(
            missing.metrics(&target).await,
            autoscaler::Metrics::default()
        );
    }

    #[test]
    fn pod_urls_go_through_the_headless_service() {
        assert_eq!(
            pod_url("q", "prod", 2, 9464),
            "http://sluice-q-2.sluice-q.prod.svc:9464"
        );
    }
}
