//! The one reconciler (`reconcile_live` with the Kubernetes backend) against a small stateful
//! fake API server: what it holds changes with what the operator applies, so a test can run
//! several reconciles in a row. Covers the guards `plan` owns (upgrade refused, rollback), the
//! stop-first rescale and the quiet steady state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use sluice_crds::conditions::find;
use sluice_crds::contract::CheckReport;
use sluice_crds::{Phase, StreamingQuery, StreamingQueryStatus, parse_manifest};
use sluice_operator::backend::kubernetes::{FIELD_MANAGER, KubernetesBackend};
use sluice_operator::checkpoint::CheckpointManager;
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::{CheckRequest, OperatorConfig, Plan};
use sluice_operator::reconcile::reconcile_live;
use sluice_operator::scaling::{Inspection, QueryInspector, Scaler};
use tower_test::mock;

const STS_PATH: &str = "/apis/apps/v1/namespaces/default/statefulsets/sluice-q";
const CM_PATH: &str = "/api/v1/namespaces/default/configmaps/sluice-q";
const PODS_PATH: &str = "/api/v1/namespaces/default/pods";
const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/default/streamingqueries/q/status";
const JOBS_PATH: &str = "/apis/batch/v1/namespaces/default/jobs/";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    body: Value,
}

/// What the fake API server holds.
#[derive(Default)]
struct World {
    /// The worker StatefulSet as last applied (or scaled).
    statefulset: Option<Value>,
    /// Pod counts (`status.replicas`) the next reads of a StatefulSet scaled to 0 answer (then 0).
    pods: VecDeque<usize>,
    /// The StatefulSet was scaled to 0 and has not been applied since.
    stopping: bool,
    /// Whether an applied StatefulSet reports all replicas Ready.
    ready: bool,
    /// The StreamingQuery (a status write answers it with the new status).
    query: Value,
    /// Check Jobs as applied (name → object).
    jobs: std::collections::BTreeMap<String, Value>,
    /// The report (`GET /report`) of the check Job's pod: a refusal; `None` while it runs.
    check_message: Option<String>,
    /// The status run Jobs report when listed (`None`: as applied, running).
    run_status: Option<Value>,
    /// The report of each finished run Job's pod (exit code 0).
    run_message: Option<String>,
    /// The CronJob as applied (or merge-patched).
    cron_job: Option<Value>,
    /// Exit code and report of a finished restore Job's pod; `None` while it runs.
    restore_exit: Option<(i32, String)>,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
struct FakeApi(Arc<Mutex<World>>);

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

/// The StatefulSet status the fake reports for `set`.
fn with_status(mut set: Value, ready: bool) -> Value {
    let replicas = set["spec"]["replicas"].as_i64().unwrap_or(0);
    set["metadata"]["generation"] = json!(1);
    let ready_replicas = if ready { replicas } else { 0 };
    set["status"] = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "updatedReplicas": replicas,
    });
    set
}

impl FakeApi {
    fn start() -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = Self(Arc::new(Mutex::new(World::default())));
        let world = api.0.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut world = world.lock().expect("lock");
                world.requests.push(Recorded {
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
                let response = match (method, path.as_str()) {
                    (Method::GET, STS_PATH) => match world.statefulset.clone() {
                        Some(set) => {
                            let mut set = with_status(set, world.ready);
                            if world.stopping {
                                // The pods of a stopping generation, as the controller counts them.
                                let left = world.pods.pop_front().unwrap_or(0);
                                set["status"]["replicas"] = json!(left);
                            }
                            respond(StatusCode::OK, &set)
                        }
                        None => respond(StatusCode::NOT_FOUND, &not_found),
                    },
                    (Method::PATCH, STS_PATH) => {
                        if body.get("kind").is_some() {
                            world.statefulset = Some(body.clone());
                            world.stopping = false;
                        } else if let Some(set) = world.statefulset.as_mut() {
                            set["spec"]["replicas"] = body["spec"]["replicas"].clone();
                            world.stopping = body["spec"]["replicas"] == json!(0);
                        }
                        respond(StatusCode::OK, &body)
                    }
                    (Method::GET, p) if p.starts_with(JOBS_PATH) => {
                        let name = p.trim_start_matches(JOBS_PATH).to_string();
                        match world.jobs.get(&name) {
                            Some(job) => {
                                let mut job = job.clone();
                                if name.contains("-restore-") {
                                    if let Some((code, _)) = &world.restore_exit {
                                        job["status"] = if *code == 0 {
                                            json!({"succeeded": 1})
                                        } else {
                                            json!({"failed": 1})
                                        };
                                    }
                                } else if world.check_message.is_some() {
                                    job["status"] = json!({"succeeded": 1});
                                }
                                respond(StatusCode::OK, &job)
                            }
                            None => respond(StatusCode::NOT_FOUND, &not_found),
                        }
                    }
                    (Method::GET, CRON_JOB_PATH) => match &world.cron_job {
                        Some(cron_job) => respond(StatusCode::OK, cron_job),
                        None => respond(StatusCode::NOT_FOUND, &not_found),
                    },
                    (Method::PATCH, CRON_JOB_PATH) => {
                        if body.get("kind").is_some() {
                            world.cron_job = Some(body.clone());
                        } else if let Some(cron_job) = world.cron_job.as_mut() {
                            cron_job["spec"]["suspend"] = body["spec"]["suspend"].clone();
                        }
                        respond(StatusCode::OK, &body)
                    }
                    (Method::GET, p) if format!("{p}/") == JOBS_PATH => {
                        let items: Vec<Value> = world
                            .jobs
                            .values()
                            .filter(|j| j["metadata"]["labels"]["sluice.dev/run"].is_string())
                            .map(|j| {
                                let mut j = j.clone();
                                if let Some(status) = &world.run_status {
                                    j["status"] = status.clone();
                                }
                                j
                            })
                            .collect();
                        respond(
                            StatusCode::OK,
                            &json!({"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items}),
                        )
                    }
                    (Method::PATCH, p) if p.starts_with(JOBS_PATH) => {
                        let name = p.trim_start_matches(JOBS_PATH).to_string();
                        world.jobs.insert(name, body.clone());
                        respond(StatusCode::OK, &body)
                    }
                    // The operator has no pods permission: the chart grants none.
                    (_, p) if p.starts_with(PODS_PATH) => respond(
                        StatusCode::FORBIDDEN,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403}),
                    ),
                    // Server-side apply, status writes and events echo the object.
                    (Method::PATCH | Method::POST, _) => {
                        let mut object = body.clone();
                        if path == STATUS_PATH {
                            object = world.query.clone();
                            object["status"] = body["status"].clone();
                        }
                        respond(StatusCode::OK, &object)
                    }
                    _ => respond(StatusCode::NOT_FOUND, &not_found),
                };
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Serves `GET /<host>/report` for the pods of the world's Jobs (their reports as set by the
    /// test; 404 while none); returns the base URL for a [`ReportUrl`].
    fn serve_reports(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let world = self.0.clone();
        let app = axum::Router::new().fallback(move |uri: http::Uri| {
            let world = world.clone();
            async move {
                let host = uri
                    .path()
                    .trim_start_matches('/')
                    .strip_suffix("/report")
                    .unwrap_or_default()
                    .to_string();
                let world = world.lock().expect("lock");
                let report = if host.starts_with("sluice-q-check-") {
                    world.check_message.clone().map(|m| (2, m))
                } else if host.starts_with("sluice-q-restore-") {
                    world.restore_exit.clone()
                } else if host.starts_with("sluice-q-run-") {
                    // Replica 0 ran the batches; the others found no input of their own.
                    world.run_message.clone().map(|m| {
                        if host.ends_with("-0") {
                            (0, m)
                        } else {
                            (0, "Run: no batches, 0 rows\n".to_string())
                        }
                    })
                } else {
                    None
                };
                match report {
                    Some((code, message)) => (
                        StatusCode::OK,
                        json!({"exitCode": code, "message": message}).to_string(),
                    ),
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            }
        });
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
        format!("http://{addr}")
    }

    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.0.lock().expect("lock"))
    }

    fn take_requests(&self) -> Vec<Recorded> {
        self.with(|w| std::mem::take(&mut w.requests))
    }
}

/// `sluice-worker check` stand-in.
struct Inspector(Mutex<Inspection>);

impl QueryInspector for Inspector {
    fn inspect<'a>(
        &'a self,
        _query: &'a StreamingQuery,
        _request: &'a CheckRequest,
    ) -> BoxFuture<'a, Inspection> {
        let outcome = self.0.lock().expect("lock").clone();
        Box::pin(async move { outcome })
    }
}

const V1: &str = "  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 2}\n  sql: SELECT window(ts, '10 seconds') AS w, count(*) AS n FROM events GROUP BY window(ts, '10 seconds')\n  sink: {console: {}}\n";

struct Setup {
    _dir: tempfile::TempDir,
    api: FakeApi,
    /// Base URL of the Job pods' `GET /<host>/report`.
    reports: String,
    backend: KubernetesBackend,
    checkpoints: CheckpointManager,
    config: OperatorConfig,
    inspector: Arc<Inspector>,
    scaler: Scaler,
    query: StreamingQuery,
    start: i64,
}

fn at(start: i64, seconds: i64) -> Time {
    Time(Timestamp::from_second(start + seconds).expect("time"))
}

impl Setup {
    fn new(spec: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, api) = FakeApi::start();
        let reports = api.serve_reports();
        let mut backend = KubernetesBackend::new(client, FIELD_MANAGER.into())
            .with_progress_url(Arc::new(|_, _, _| "http://127.0.0.1:1".into()))
            .with_report_url({
                let base = reports.clone();
                Arc::new(move |host, _, _| format!("{base}/{host}"))
            });
        backend.stop_poll = Duration::from_millis(5);
        let config = OperatorConfig {
            default_image: "sluice-worker:test".into(),
            default_checkpoint_location: Some(
                url::Url::from_directory_path(dir.path())
                    .expect("url")
                    .to_string(),
            ),
            ready_timeout: Duration::from_secs(60),
            ..OperatorConfig::default()
        };
        let inspector = Arc::new(Inspector(Mutex::new(Inspection::Valid(
            CheckReport::default(),
        ))));
        let scaler = Scaler::new(inspector.clone(), None, Metrics::default());
        Self {
            _dir: dir,
            api,
            reports,
            backend,
            checkpoints: CheckpointManager::default(),
            config,
            inspector,
            scaler,
            query: manifest(spec, 1),
            start: Timestamp::now().as_second(),
        }
    }

    /// Where the Job pods' reports of this setup's world are served.
    fn report_url(&self) -> sluice_operator::backend::kubernetes::reports::ReportUrl {
        let base = self.reports.clone();
        Arc::new(move |host, _, _| format!("{base}/{host}"))
    }

    /// One reconcile at `seconds` after the start; the status it wrote (or kept) is the query's
    /// from then on, as the API server would return it.
    async fn reconcile(&mut self, seconds: i64) -> Plan {
        let object = serde_json::to_value(&self.query).expect("json");
        self.api.with(|w| w.query = object);
        let plan = reconcile_live(
            &self.backend,
            &self.checkpoints,
            &self.query,
            &self.config,
            Some(&self.scaler),
            at(self.start, seconds),
        )
        .await
        .expect("reconcile");
        self.query.status = Some(plan.status.clone());
        plan
    }

    fn edit(&mut self, spec: &str) {
        let generation = self.query.metadata.generation.unwrap_or(1) + 1;
        let status = self.query.status.take();
        self.query = manifest(spec, generation);
        self.query.status = status;
    }

    /// A query created and Running at one replica.
    async fn running(spec: &str) -> Self {
        let mut setup = Self::new(spec);
        setup.reconcile(0).await;
        setup.api.with(|w| w.ready = true);
        let plan = setup.reconcile(10).await;
        assert_eq!(plan.status.phase, Some(Phase::Running));
        setup.api.take_requests();
        setup
    }
}

fn manifest(spec: &str, generation: i64) -> StreamingQuery {
    parse_manifest(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q, namespace: default, uid: uid-1, generation: {generation}}}\nspec:\n{spec}"
    ))
    .expect("test manifest")
}

fn condition(status: &StreamingQueryStatus, type_: &str) -> (String, String, String) {
    let c = find(&status.conditions, type_).expect("condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn events(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.path == EVENTS_PATH)
        .map(|r| r.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn touched(requests: &[Recorded], path: &str) -> bool {
    requests
        .iter()
        .any(|r| r.path == path && r.method != Method::GET)
}

#[tokio::test]
async fn an_incompatible_upgrade_never_touches_the_old_statefulset() {
    let mut setup = Setup::running(V1).await;
    *setup.inspector.0.lock().expect("lock") = Inspection::Refused(
        "checkpoint is incompatible: stateful operators changed (aggregation keys)".into(),
    );
    setup.edit(&V1.replace("count(*) AS n", "count(*) AS n, sum(value) AS total"));
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, STS_PATH), "{requests:#?}");
    assert!(!touched(&requests, CM_PATH), "{requests:#?}");
    assert_eq!(events(&requests), ["UpgradeRefused"]);
    let status = plan.status;
    assert_eq!(status.phase, Some(Phase::Running), "v1 keeps running");
    assert_eq!(status.generation, Some(1));
    let (state, reason, message) = condition(&status, "Degraded");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "UpgradeRefused")
    );
    assert_eq!(
        message,
        "upgrade refused, generation 1 keeps running: checkpoint is incompatible: stateful \
         operators changed (aggregation keys)"
    );
    // Again: the cached refusal, no second event, still nothing touched.
    setup.reconcile(30).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, STS_PATH));
    assert!(events(&requests).is_empty());
}

#[tokio::test]
async fn a_rollout_not_ready_in_time_rolls_back_to_the_last_stable_spec() {
    let mut setup = Setup::running(V1).await;
    let v2 = V1.replace("sink: {console: {}}", "sink: {console: {numRows: 5}}");
    setup.edit(&v2);
    setup.api.with(|w| w.ready = false);
    let plan = setup.reconcile(20).await;
    assert_eq!(plan.status.phase, Some(Phase::Upgrading));
    assert_eq!(plan.status.generation, Some(2));
    // Within readyTimeout (60 s): still waiting.
    let plan = setup.reconcile(70).await;
    assert_eq!(plan.status.phase, Some(Phase::Upgrading));
    setup.api.take_requests();
    // Past it: generation 3 runs v1 again.
    let plan = setup.reconcile(81).await;
    let requests = setup.api.take_requests();
    assert_eq!(plan.status.phase, Some(Phase::RollingBack));
    assert_eq!(plan.status.generation, Some(3));
    assert_eq!(events(&requests), ["RolledBack"]);
    let config_map = requests
        .iter()
        .rev()
        .find(|r| r.path == CM_PATH && r.method == Method::PATCH)
        .expect("the ConfigMap is applied");
    let manifest = config_map.body["data"]["query.yaml"]
        .as_str()
        .unwrap_or_default();
    assert!(manifest.contains("numRows: 20"), "v1's sink: {manifest}");
    let (state, reason, message) = condition(&plan.status, "Degraded");
    assert_eq!((state.as_str(), reason.as_str()), ("True", "SpecRejected"));
    assert!(
        message.starts_with("generation 2 was not Ready within 60 s: rolling back"),
        "{message}"
    );
    // v1 becomes Ready: Running, and the rejected v2 stays out until the spec is edited.
    setup.api.with(|w| w.ready = true);
    let plan = setup.reconcile(90).await;
    assert_eq!(plan.status.phase, Some(Phase::Running));
    assert_eq!(plan.status.generation, Some(3));
    assert_eq!(condition(&plan.status, "Degraded").1, "SpecRejected");
}

#[tokio::test]
async fn a_rescale_stops_the_old_pods_before_the_new_count_starts() {
    let mut setup = Setup::running(
        V1.replace("count(*)", "1")
            .replace(" GROUP BY window(ts, '10 seconds')", "")
            .as_str(),
    )
    .await;
    setup.api.with(|w| w.pods = VecDeque::from([1, 1, 0]));
    let spec = format!(
        "{}  parallelism: {{replicas: 3}}\n",
        V1.replace("count(*)", "1")
            .replace(" GROUP BY window(ts, '10 seconds')", "")
    );
    setup.edit(&spec);
    let plan = setup.reconcile(20).await;
    assert_eq!(plan.status.phase, Some(Phase::Scaling));
    let calls: Vec<(String, String, Value)> = setup
        .api
        .take_requests()
        .into_iter()
        .filter(|r| r.path == STS_PATH || r.path == PODS_PATH)
        .map(|r| {
            let replicas = r.body["spec"]["replicas"].clone();
            (r.method.to_string(), r.path, replicas)
        })
        .collect();
    let call = |m: &str, p: &str, r: Value| (m.to_string(), p.to_string(), r);
    assert_eq!(
        calls,
        [
            call("GET", STS_PATH, Value::Null),
            call("GET", STS_PATH, Value::Null),
            call("PATCH", STS_PATH, json!(0)),
            call("GET", STS_PATH, Value::Null),
            call("GET", STS_PATH, Value::Null),
            call("GET", STS_PATH, Value::Null),
            call("PATCH", STS_PATH, json!(3)),
        ],
        "scale to 0, wait until the StatefulSet counts no pod, then start 3"
    );
}

#[tokio::test]
async fn a_steady_query_writes_its_status_at_most_ten_times_in_ten_minutes() {
    // Workers whose figures change on every answer.
    let served = Arc::new(Mutex::new(0u64));
    let counter = served.clone();
    let app = axum::Router::new().route(
        "/progress",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let mut n = counter.lock().expect("lock");
                *n += 1;
                let start = Timestamp::now().as_millisecond() - 1_000;
                let start = Timestamp::from_millisecond(start).expect("time");
                axum::Json(json!({
                    "latest": {
                        "batchId": *n,
                        "timestamp": start.to_string(),
                        "inputRowsPerSecond": 100.0 + (*n % 7) as f64 * 0.37,
                        "processedRowsPerSecond": 101.0 + (*n % 5) as f64 * 0.41,
                        "durationMs": {"triggerExecution": 20},
                        "sources": [{"backlog": *n % 3}],
                    },
                    "recent": [],
                    "lastError": null,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut setup = Setup::running(
        &V1.replace("count(*)", "1")
            .replace(" GROUP BY window(ts, '10 seconds')", ""),
    )
    .await;
    setup.backend = setup
        .backend
        .clone()
        .with_progress_url(Arc::new(move |_, _, _| base.clone()));
    // The controller looks at a Running query every 30 s (status refresh): 20 reconciles.
    let mut writes = 0;
    for step in 1..=20 {
        setup.reconcile(10 + step * 30).await;
        writes += setup
            .api
            .take_requests()
            .iter()
            .filter(|r| r.path == STATUS_PATH)
            .count();
    }
    assert!(*served.lock().expect("lock") >= 20, "progress was read");
    assert!(writes <= 10, "{writes} status writes in 10 minutes");
    assert!(writes >= 1, "the figures are refreshed once per resync");
    let status = setup.query.status.clone().expect("status");
    assert!(status.input_rows_per_second.is_some());
}

#[tokio::test]
async fn the_check_runs_as_a_job_and_holds_the_deployment_until_it_answers() {
    use sluice_operator::backend::kubernetes::check_job::JobCheck;
    let mut setup = Setup::running(V1).await;
    setup.scaler = Scaler::new(
        Arc::new(
            JobCheck::new(setup.backend.client().clone(), Default::default())
                .with_report_url(setup.report_url()),
        ),
        None,
        Metrics::default(),
    );
    setup.edit(&V1.replace("count(*) AS n", "count(*) AS n, sum(value) AS total"));
    // The Job starts: nothing else moves, Progressing says why.
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    let job = requests
        .iter()
        .find(|r| r.path.starts_with(JOBS_PATH) && r.method == Method::PATCH)
        .expect("a check Job is applied");
    assert_eq!(
        job.body["spec"]["template"]["spec"]["containers"][0]["image"], "sluice-worker:test",
        "the new spec's own image"
    );
    // Its pod is found by DNS name, not by listing pods: `<job>.sluice-q-jobs`.
    let pod = &job.body["spec"]["template"]["spec"];
    assert_eq!(pod["subdomain"], "sluice-q-jobs");
    assert_eq!(pod["hostname"], job.body["metadata"]["name"]);
    assert_eq!(
        job.body["spec"]["template"]["metadata"]["labels"]["sluice.dev/report"],
        "q"
    );
    let service = requests
        .iter()
        .find(|r| r.path == "/api/v1/namespaces/default/services/sluice-q-jobs")
        .expect("the Jobs' headless Service is applied");
    assert_eq!(service.body["spec"]["clusterIP"], "None");
    assert_eq!(
        service.body["spec"]["selector"],
        json!({"sluice.dev/report": "q"})
    );
    assert!(!touched(&requests, STS_PATH), "held while the check runs");
    assert_eq!(plan.status.phase, Some(Phase::Running));
    assert_eq!(
        condition(&plan.status, "Progressing").1,
        "UpgradeCheckRunning"
    );
    // Still running: the Job is not created twice.
    setup.reconcile(25).await;
    let requests = setup.api.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.path.starts_with(JOBS_PATH) && r.method == Method::PATCH)
    );
    // The Job's pod refuses on `GET /report` (and in its termination message).
    let refusal = serde_json::to_string(&sluice_crds::contract::CheckOutcomeReport::Refused {
        message: "stateful operators changed".into(),
    })
    .expect("json");
    setup.api.with(|w| w.check_message = Some(refusal));
    let plan = setup.reconcile(30).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, STS_PATH));
    let (state, reason, message) = condition(&plan.status, "Degraded");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "UpgradeRefused"),
        "{message}"
    );
    assert_eq!(events(&requests), ["UpgradeRefused"]);
    assert!(message.ends_with("stateful operators changed"), "{message}");
}

fn set_paused(query: &mut StreamingQuery, paused: Option<&str>) {
    let annotations = query
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match paused {
        Some(value) => {
            annotations.insert(
                sluice_crds::conditions::PAUSE_ANNOTATION.into(),
                value.into(),
            );
        }
        None => {
            annotations.remove(sluice_crds::conditions::PAUSE_ANNOTATION);
        }
    }
}

/// Requests that change something other than the query's own status and events.
fn mutating(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method != Method::GET && r.path != STATUS_PATH && r.path != EVENTS_PATH)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn a_paused_query_leaves_its_children_alone_until_the_annotation_is_removed() {
    let mut setup = Setup::running(V1).await;
    let v2 = format!(
        "{}  parallelism: {{replicas: 2}}\n",
        V1.replace("sink: {console: {}}", "sink: {console: {numRows: 5}}")
    );
    setup.edit(&v2);
    set_paused(&mut setup.query, Some("true"));
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    assert_eq!(mutating(&requests), Vec::<String>::new(), "{requests:#?}");
    assert_eq!(events(&requests), ["ReconciliationPaused"]);
    let (state, reason, message) = condition(&plan.status, "ReconciliationPaused");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "PauseAnnotation")
    );
    assert!(message.contains("generation 1 keeps running"), "{message}");
    assert_eq!(
        find(&plan.status.conditions, "ReconciliationPaused").and_then(|c| c.observed_generation),
        Some(2)
    );
    assert_eq!(plan.status.generation, Some(1), "nothing rolled out");
    // The workers crash meanwhile: still nothing is touched, no second event.
    setup.api.with(|w| w.ready = false);
    setup.reconcile(30).await;
    let requests = setup.api.take_requests();
    assert_eq!(mutating(&requests), Vec::<String>::new(), "{requests:#?}");
    assert!(events(&requests).is_empty());
    // Any other value is not a pause (Strimzi reads only "true").
    set_paused(&mut setup.query, Some("false"));
    setup.api.with(|w| w.ready = true);
    let plan = setup.reconcile(40).await;
    let requests = setup.api.take_requests();
    assert!(touched(&requests, STS_PATH), "resumed: v2 rolls out");
    assert_eq!(
        events(&requests),
        ["ReconciliationResumed", "UpgradeStarted"]
    );
    assert_eq!(plan.status.generation, Some(2));
    assert_eq!(condition(&plan.status, "ReconciliationPaused").0, "False");
}

#[tokio::test]
async fn a_new_restart_nonce_restarts_the_workers_once_at_a_batch_boundary() {
    let mut setup = Setup::running(V1).await;
    setup.api.with(|w| w.pods = VecDeque::from([1, 0]));
    let with_nonce = |nonce: &str| format!("{V1}  restartNonce: \"{nonce}\"\n");
    setup.edit(&with_nonce("1"));
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    let calls: Vec<(String, String, Value)> = requests
        .iter()
        .filter(|r| r.path == STS_PATH || r.path == PODS_PATH)
        .map(|r| {
            let replicas = r.body["spec"]["replicas"].clone();
            (r.method.to_string(), r.path.clone(), replicas)
        })
        .collect();
    let call = |m: &str, p: &str, r: Value| (m.to_string(), p.to_string(), r);
    assert_eq!(
        calls,
        [
            call("GET", STS_PATH, Value::Null),
            call("GET", STS_PATH, Value::Null),
            call("PATCH", STS_PATH, json!(0)),
            call("GET", STS_PATH, Value::Null),
            call("GET", STS_PATH, Value::Null),
            call("PATCH", STS_PATH, json!(1)),
        ],
        "stop (scale to 0, wait for the pods), then start again"
    );
    assert_eq!(events(&requests), ["RestartRequested"]);
    assert_eq!(
        plan.status.generation,
        Some(1),
        "same generation: state kept"
    );
    assert_eq!(plan.status.restart_nonce.as_deref(), Some("1"));
    let applied = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(
        applied["spec"]["template"]["metadata"]["annotations"]["sluice.dev/restart-nonce"],
        "1"
    );
    // The same nonce again: nothing restarts.
    let plan = setup.reconcile(30).await;
    let requests = setup.api.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.path == STS_PATH && r.body["spec"]["replicas"] == json!(0)),
        "{requests:#?}"
    );
    assert_eq!(plan.status.phase, Some(Phase::Running));
    assert!(!events(&requests).contains(&"RestartRequested".to_string()));
}

const RUN_JOB_PATH: &str = "/apis/batch/v1/namespaces/default/jobs/sluice-q-run-1";
const CRON_JOB_PATH: &str = "/apis/batch/v1/namespaces/default/cronjobs/sluice-q";
const ONE_SHOT: &str = "  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 2}\n  sql: SELECT * FROM events\n  sink: {console: {}}\n  trigger: {availableNow: true}\n  parallelism: {replicas: 2}\n";

#[tokio::test]
async fn a_one_shot_query_runs_once_as_an_indexed_job_and_reports_its_batch_range() {
    let mut setup = Setup::new(ONE_SHOT);
    let plan = setup.reconcile(0).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, STS_PATH), "no StatefulSet for a run");
    let job = requests
        .iter()
        .find(|r| r.path == RUN_JOB_PATH && r.method == Method::PATCH)
        .expect("the run's Job is applied");
    let spec = &job.body["spec"];
    assert_eq!(
        (
            &spec["completions"],
            &spec["parallelism"],
            &spec["completionMode"],
            &spec["backoffLimit"]
        ),
        (&json!(2), &json!(2), &json!("Indexed"), &json!(0))
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let args = pod["containers"][0]["args"].as_array().expect("args");
    assert!(
        args.ends_with(&[json!("--termination-log"), json!("/dev/termination-log")]),
        "{args:?}"
    );
    assert_eq!(
        spec["template"]["metadata"]["labels"]["sluice.dev/run"], "q",
        "run pods are not labelled as continuous workers"
    );
    assert!(
        spec["template"]["metadata"]["labels"]["sluice.dev/query"].is_null(),
        "{spec}"
    );
    assert_eq!(events(&requests), ["CheckpointClaimed", "RunStarted"]);
    assert_eq!(plan.status.phase, Some(Phase::Running));
    // Still running: the Job is not applied again.
    setup.reconcile(5).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, RUN_JOB_PATH), "{requests:#?}");
    // The run finishes: both pods' reports give the batch range.
    setup.api.with(|w| {
        w.run_status = Some(json!({
            "succeeded": 2,
            "startTime": "2026-12-07T09:00:00Z",
            "completionTime": "2026-12-07T09:00:30Z",
        }));
        w.run_message = Some("Run: batches 0..3, 40 rows\n".into());
    });
    let plan = setup.reconcile(40).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, RUN_JOB_PATH));
    assert_eq!(events(&requests), ["RunSucceeded"]);
    let last = plan.status.last_run.clone().expect("lastRun");
    assert_eq!(
        (
            last.succeeded,
            last.first_batch_id,
            last.last_batch_id,
            last.rows,
            last.batches.as_deref()
        ),
        (Some(true), Some(0), Some(3), Some(40), Some("0..3"))
    );
    assert_eq!(
        last.end.map(|t| t.0.to_string()).as_deref(),
        Some("2026-12-07T09:00:30Z")
    );
    assert_eq!(plan.status.phase, Some(Phase::Succeeded));
    let (state, reason, message) = condition(&plan.status, "Succeeded");
    assert_eq!(
        (state.as_str(), reason.as_str(), message.as_str()),
        ("True", "RunSucceeded", "batches 0..3, 40 rows")
    );
    // Done: nothing runs again for this generation.
    setup.reconcile(60).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, RUN_JOB_PATH));
    assert!(events(&requests).is_empty());
}

#[tokio::test]
async fn a_scheduled_query_is_a_forbid_cron_job_and_seconds_are_refused_on_kubernetes() {
    let scheduled =
        format!("{ONE_SHOT}  schedule: {{cron: '*/15 * * * *', timeZone: Europe/Zurich}}\n");
    let mut setup = Setup::new(&scheduled);
    let plan = setup.reconcile(0).await;
    let requests = setup.api.take_requests();
    let cron_job = requests
        .iter()
        .find(|r| r.path == CRON_JOB_PATH && r.method == Method::PATCH)
        .expect("the CronJob is applied");
    let spec = &cron_job.body["spec"];
    assert_eq!(spec["schedule"], "*/15 * * * *");
    assert_eq!(spec["timeZone"], "Europe/Zurich");
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["jobTemplate"]["spec"]["completionMode"], "Indexed");
    assert_eq!(
        spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
        "Never"
    );
    assert!(!touched(&requests, STS_PATH));
    assert!(
        !requests
            .iter()
            .any(|r| r.path.starts_with(JOBS_PATH) && r.method == Method::PATCH),
        "the CronJob starts the runs"
    );
    assert_eq!(plan.status.phase, Some(Phase::Scheduled));
    // suspend applies to the schedule.
    setup.edit(&format!("{scheduled}  suspend: true\n"));
    setup.reconcile(10).await;
    let requests = setup.api.take_requests();
    let cron_job = requests
        .iter()
        .find(|r| r.path == CRON_JOB_PATH && r.method == Method::PATCH)
        .expect("the CronJob is applied");
    assert_eq!(cron_job.body["spec"]["suspend"], true);
    // Back to a continuous trigger: the StatefulSet starts and the schedule is suspended, so no
    // run writes to the checkpoint the workers now own.
    setup.edit(&scheduled);
    setup.reconcile(12).await;
    setup.api.take_requests();
    setup.edit(V1);
    setup.reconcile(15).await;
    let requests = setup.api.take_requests();
    assert!(touched(&requests, STS_PATH), "the workers start");
    let suspended = setup.api.with(|w| w.cron_job.clone()).expect("cron job");
    assert_eq!(suspended["spec"]["suspend"], true);
    assert!(
        requests
            .iter()
            .any(|r| r.path == CRON_JOB_PATH && r.body == json!({"spec": {"suspend": true}})),
        "{requests:#?}"
    );
    // Scheduled again: the CronJob is applied (unsuspended) and the StatefulSet is stopped.
    setup.edit(&scheduled);
    setup.reconcile(17).await;
    let requests = setup.api.take_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == STS_PATH && r.body["spec"]["replicas"] == json!(0)),
        "the continuous workers stop first: {requests:#?}"
    );
    assert_eq!(
        setup.api.with(|w| w.cron_job.clone()).expect("cron job")["spec"]["suspend"],
        false
    );
    // A seconds field is the local backend's: refused here, naming the field.
    setup.edit(&format!(
        "{ONE_SHOT}  schedule: {{cron: '*/5 * * * * *'}}\n"
    ));
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    assert!(!touched(&requests, CRON_JOB_PATH));
    let (state, reason, message) = condition(&plan.status, "Degraded");
    assert_eq!((state.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("spec.schedule.cron")
            && message.contains("only supported by the local backend"),
        "{message}"
    );
}

/// A query running V1 with the Job-running inspector, edited to restore to `batch_id`, stopped
/// and with its restore Job created; returns the Job's container.
async fn restore_started(batch_id: u64) -> (Setup, Value) {
    use sluice_operator::backend::kubernetes::check_job::JobCheck;
    let mut setup = Setup::running(V1).await;
    setup.scaler = Scaler::new(
        Arc::new(
            JobCheck::new(setup.backend.client().clone(), Default::default())
                .with_report_url(setup.report_url()),
        ),
        None,
        Metrics::default(),
    );
    setup.edit(&format!("{V1}  restore: {{batchId: {batch_id}}}\n"));
    // The workers stop first; no Job while one may still write to the checkpoint.
    let plan = setup.reconcile(20).await;
    let requests = setup.api.take_requests();
    assert!(
        !requests.iter().any(|r| r.path.starts_with(JOBS_PATH)),
        "{requests:#?}"
    );
    let set = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(set["spec"]["replicas"], 0);
    assert_eq!(condition(&plan.status, "Progressing").1, "Restoring");
    assert_eq!(events(&requests), ["RestoreStarted"]);
    // Stopped: the restore Job starts with the query's image, manifest and checkpoint.
    let plan = setup.reconcile(25).await;
    let requests = setup.api.take_requests();
    let job = requests
        .iter()
        .find(|r| {
            r.path.starts_with(&format!("{JOBS_PATH}sluice-q-restore-"))
                && r.method == Method::PATCH
        })
        .expect("a restore Job is applied");
    let container = job.body["spec"]["template"]["spec"]["containers"][0].clone();
    assert_eq!(job.body["spec"]["backoffLimit"], 0);
    assert_eq!(condition(&plan.status, "Progressing").1, "Restoring");
    let set = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(set["spec"]["replicas"], 0, "stopped while the Job runs");
    (setup, container)
}

#[tokio::test]
async fn a_restore_runs_as_a_job_between_stopping_and_starting_the_workers() {
    let (mut setup, container) = restore_started(5).await;
    assert_eq!(container["image"], "sluice-worker:test");
    let location = setup
        .query
        .status
        .as_ref()
        .and_then(|s| s.checkpoint_location.clone())
        .expect("location");
    assert_eq!(
        container["args"],
        json!([
            "checkpoint",
            "restore",
            "--manifest",
            "/etc/sluice/query.yaml",
            "--batch-id",
            "5",
            "--checkpoint",
            location
        ])
    );
    assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
    // Still running: not created twice, the workers stay stopped.
    setup.reconcile(30).await;
    let requests = setup.api.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.path.starts_with(JOBS_PATH) && r.method == Method::PATCH)
    );
    setup.api.with(|w| {
        w.restore_exit = Some((
            0,
            "restored to batch 5: checkpoint generation 2 (from generation 1) is current; the next \
             run replays the input after batch 5 (40 rows had been written after it)"
                .into(),
        ))
    });
    let plan = setup.reconcile(35).await;
    let requests = setup.api.take_requests();
    let (state, reason, message) = condition(&plan.status, "Restored");
    assert_eq!((state.as_str(), reason.as_str()), ("True", "Restored"));
    assert!(
        message.starts_with("restored to batch 5: checkpoint generation 2 is current"),
        "{message}"
    );
    let recorded = plan.status.restore.clone().expect("status.restore");
    assert_eq!((recorded.batch_id, recorded.generation), (5, Some(2)));
    assert_eq!(events(&requests), ["Restored", "Resumed"]);
    let set = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(set["spec"]["replicas"], 1, "the workers start again");
    // Recorded: the next reconcile neither stops the workers nor runs another Job.
    setup.api.with(|w| w.ready = true);
    setup.reconcile(45).await;
    let requests = setup.api.take_requests();
    assert!(!requests.iter().any(|r| r.path.starts_with(JOBS_PATH)));
    let set = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(set["spec"]["replicas"], 1);
}

#[tokio::test]
async fn a_refused_restore_names_the_reason_and_restarts_the_workers() {
    let (mut setup, _) = restore_started(2).await;
    setup.api.with(|w| {
        w.restore_exit = Some((
            2,
            "error: restore refused: batch 2 is not retained: task 0 retains batches 120..=219 (spec.checkpoint.minBatchesToRetain)".into(),
        ))
    });
    let plan = setup.reconcile(35).await;
    let requests = setup.api.take_requests();
    let (state, reason, message) = condition(&plan.status, "RestoreRefused");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "RestoreRefused")
    );
    assert!(
        message.starts_with(
            "restore to batch 2 refused: batch 2 is not retained: task 0 retains batches 120..=219"
        ),
        "{message}"
    );
    assert_eq!(events(&requests), ["RestoreRefused", "Resumed"]);
    assert_eq!(
        plan.status.restore.clone().map(|r| r.outcome),
        Some("Refused".to_string())
    );
    let set = setup
        .api
        .with(|w| w.statefulset.clone())
        .expect("statefulset");
    assert_eq!(
        set["spec"]["replicas"], 1,
        "back on the unchanged checkpoint"
    );
}
