//! Reconcile against a mocked Kubernetes API server (kube's tower-test pattern, after
//! kube-rs/controller-rs `fixtures.rs`): every request the operator sends is recorded and answered
//! like the API server would, and each test asserts the exact sequence of requests and the objects
//! and status they carried. Checkpoints live in a temporary `file://` location. The fake API
//! server is strict (`support::fake_api`): RBAC the chart does not grant, objects the CRD refuses
//! and field-manager conflicts are answered as a real apiserver answers them.

mod support;

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_crds::{StreamingQuery, StreamingQueryStatus, parse_manifest};
use sluice_operator::checkpoint::{CheckpointManager, Claim, Owner};
use sluice_operator::controller::{Context, FINALIZER, error_policy, reconcile};
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::{CheckRequest, OperatorConfig};
use sluice_operator::scaling::{
    CheckReport, Inspection, MetricsSource, QueryInspector, Scaler, ScalingTarget,
};
use support::fake_api::FakeApi;

const QUERY_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/default/streamingqueries/q";
const STS_PATH: &str = "/apis/apps/v1/namespaces/default/statefulsets/sluice-q";
const CM_PATH: &str = "/api/v1/namespaces/default/configmaps/sluice-q";
const SVC_PATH: &str = "/api/v1/namespaces/default/services/sluice-q";
const PDB_PATH: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/sluice-q";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const SECRETS_PATH: &str = "/api/v1/namespaces/default/secrets";
const SECRET_PATH: &str = "/api/v1/namespaces/default/secrets/sluice-q-control";

/// The strict fake API server holding the query and (optionally) its StatefulSet.
fn start(query: StreamingQuery, statefulset: Option<StatefulSet>) -> (Client, FakeApi) {
    let mut objects = vec![serde_json::to_value(&query).expect("query json")];
    if let Some(set) = statefulset {
        let mut set = serde_json::to_value(&set).expect("statefulset json");
        set["apiVersion"] = json!("apps/v1");
        set["kind"] = json!("StatefulSet");
        objects.push(set);
    }
    FakeApi::start_with(objects)
}

/// `(type, reason)` of every event created, in order.
fn events(api: &FakeApi) -> Vec<(String, String)> {
    api.requests()
        .iter()
        .filter(|r| r.path() == EVENTS_PATH)
        .map(|r| {
            (
                r.body["type"].as_str().unwrap_or_default().to_string(),
                r.body["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The status the operator wrote (first status write).
fn written_status(api: &FakeApi) -> StreamingQueryStatus {
    serde_json::from_value(api.body_of("PATCH", &format!("{QUERY_PATH}/status"))["status"].clone())
        .expect("a StreamingQueryStatus")
}

fn call(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

const SPEC: &str = "  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 2}\n  sql: SELECT * FROM events\n  sink: {console: {}}\n";

struct Fixture {
    _dir: tempfile::TempDir,
    base: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = url::Url::from_directory_path(dir.path())
            .expect("url")
            .to_string();
        Self { _dir: dir, base }
    }

    fn location(&self) -> String {
        sluice_operator::checkpoint::resolve(&self.base, "default", "q", "uid-1").expect("resolve")
    }

    fn dir(&self) -> std::path::PathBuf {
        self._dir.path().join("default/q/uid-1")
    }

    fn context(&self, client: Client) -> Arc<Context> {
        // No worker answers /progress (port 1 refuses at once) and no SQL inspection.
        self.context_with(client, "http://127.0.0.1:1", None, None)
    }

    /// A context whose worker pods answer at `<workers>/<pod name>`, with a stand-in for
    /// `sluice-worker check` and for Prometheus.
    fn context_with(
        &self,
        client: Client,
        workers: &str,
        inspector: Option<Arc<dyn QueryInspector>>,
        metrics: Option<Arc<dyn MetricsSource>>,
    ) -> Arc<Context> {
        let config = OperatorConfig {
            default_image: "sluice-worker:test".into(),
            default_checkpoint_location: Some(self.base.clone()),
            ..OperatorConfig::default()
        };
        let counters = Metrics::default();
        let mut ctx = Context::new(
            client,
            CheckpointManager::default(),
            config,
            counters.clone(),
        );
        let workers = workers.to_string();
        ctx.backend =
            ctx.backend
                .clone()
                .with_progress_url(Arc::new(move |name, _namespace, ordinal| {
                    format!("{workers}/sluice-{name}-{ordinal}")
                }));
        ctx.scaler = inspector.map(|inspector| Scaler::new(inspector, metrics, counters));
        Arc::new(ctx)
    }
}

/// A query with the finalizer already in place (the finalizer-adding pass is kube-runtime's).
fn query(spec: &str, generation: i64, status: Option<StreamingQueryStatus>) -> StreamingQuery {
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q, namespace: default, uid: uid-1, generation: {generation}, finalizers: [{FINALIZER}]}}\nspec:\n{spec}"
    );
    let mut query = parse_manifest(&yaml).unwrap_or_else(|e| {
        // Invalid specs are built by editing a valid one.
        panic!("test manifest: {e}")
    });
    query.status = status;
    query
}

/// The StatefulSet as the API server would hold it after `applied` (an SSA body) rolled out.
fn rolled_out(applied: &Value) -> StatefulSet {
    let mut set: StatefulSet = serde_json::from_value(applied.clone()).expect("a StatefulSet");
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    set.metadata.generation = Some(1);
    set.status = Some(StatefulSetStatus {
        observed_generation: Some(1),
        replicas,
        ready_replicas: Some(replicas),
        updated_replicas: Some(replicas),
        ..StatefulSetStatus::default()
    });
    set
}

fn env_value(set: &Value, name: &str) -> Value {
    set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .map(|e| e["value"].clone())
        .unwrap_or(Value::Null)
}

fn condition(status: &StreamingQueryStatus, type_: &str) -> (String, String) {
    let c = sluice_crds::conditions::find(&status.conditions, type_).expect("condition");
    (c.status.clone(), c.reason.clone())
}

/// Creates a query and returns (fixture, status after create, StatefulSet as rolled out).
async fn created() -> (Fixture, StreamingQueryStatus, StatefulSet) {
    let fixture = Fixture::new();
    let q = query(SPEC, 1, None);
    let (client, api) = start(q.clone(), None);
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    let set = rolled_out(&api.body_of("PATCH", STS_PATH));
    (fixture, written_status(&api), set)
}

#[tokio::test]
async fn create_applies_children_and_sets_status() {
    let fixture = Fixture::new();
    let q = query(SPEC, 1, None);
    let (client, api) = start(q.clone(), None);
    let action = reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(OperatorConfig::default().progress_poll)
    );
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            call("PATCH", CM_PATH),
            call("PATCH", SVC_PATH),
            call("POST", SECRETS_PATH),
            call("PATCH", STS_PATH),
            call("PATCH", PDB_PATH),
            call("POST", EVENTS_PATH),
            call("POST", EVENTS_PATH),
            call("PATCH", &format!("{QUERY_PATH}/status")),
        ]
    );
    for request in api.requests().iter().filter(|r| r.method == Method::PATCH) {
        assert!(
            request.uri.contains("fieldManager=sluice-operator"),
            "{}",
            request.uri
        );
        assert!(request.uri.contains("force=true"), "{}", request.uri);
    }
    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(set["spec"]["replicas"], 1);
    assert_eq!(env_value(&set, "SLUICE_REPLICA_COUNT"), "1");
    assert_eq!(env_value(&set, "SLUICE_GENERATION"), "1");
    assert_eq!(
        set["spec"]["template"]["spec"]["containers"][0]["image"],
        "sluice-worker:test"
    );
    let cm = api.body_of("PATCH", CM_PATH);
    let manifest = parse_manifest(cm["data"]["query.yaml"].as_str().expect("query.yaml"))
        .expect("valid manifest");
    assert_eq!(manifest.spec.checkpoint.location, Some(fixture.location()));
    assert_eq!(
        events(&api),
        [
            call("Normal", "CheckpointClaimed"),
            call("Normal", "Created")
        ]
    );
    assert_eq!(
        event_note(&api, "CheckpointClaimed"),
        format!("claimed checkpoint location {}", fixture.location())
    );
    assert_eq!(
        event_note(&api, "Created"),
        "starting generation 1 with 1 replica(s)"
    );

    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Starting));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.generation, Some(1));
    assert_eq!(status.replicas, Some(0));
    assert_eq!(status.checkpoint_location, Some(fixture.location()));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "Starting".into())
    );
    assert_eq!(
        condition(&status, "Progressing"),
        ("True".into(), "Starting".into())
    );
    assert_eq!(
        condition(&status, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(
        condition(&status, "CheckpointStale"),
        ("False".into(), "CheckpointVerified".into())
    );
    // The checkpoint is claimed for this query.
    let owner: Owner = serde_json::from_slice(
        &std::fs::read(fixture.dir().join("_sluice/owner.json")).expect("owner marker written"),
    )
    .expect("owner json");
    assert_eq!(
        (
            owner.namespace.as_str(),
            owner.name.as_str(),
            owner.uid.as_str()
        ),
        ("default", "q", "uid-1")
    );
}

#[tokio::test]
async fn spec_change_rolls_out_a_new_generation() {
    let (fixture, status, set) = created().await;
    let q = query(
        &SPEC.replace("SELECT * FROM events", "SELECT value FROM events"),
        2,
        Some(status),
    );
    let (client, api) = start(q.clone(), Some(set));
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            // The old generation stops at a batch boundary before the new one starts.
            call("GET", STS_PATH),
            call("PATCH", STS_PATH),
            call("GET", STS_PATH),
            call("PATCH", CM_PATH),
            call("PATCH", SVC_PATH),
            call("POST", SECRETS_PATH),
            call("PATCH", STS_PATH),
            call("PATCH", PDB_PATH),
            call("POST", EVENTS_PATH),
            call("PATCH", &format!("{QUERY_PATH}/status")),
        ]
    );
    let patches: Vec<Value> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && r.path() == STS_PATH)
        .map(|r| r.body)
        .collect();
    assert_eq!(patches[0], json!({"spec": {"replicas": 0}}));
    let set = patches[1].clone();
    assert_eq!(env_value(&set, "SLUICE_GENERATION"), "2");
    assert_eq!(set["metadata"]["annotations"]["sluice.dev/generation"], "2");
    let cm = api.body_of("PATCH", CM_PATH);
    assert!(
        cm["data"]["query.yaml"]
            .as_str()
            .is_some_and(|m| m.contains("SELECT value FROM events"))
    );
    assert_eq!(events(&api), [call("Normal", "UpgradeStarted")]);
    assert_eq!(
        event_note(&api, "UpgradeStarted"),
        "sql changed: rolling out generation 2 (LastState upgrade)"
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Upgrading));
    assert_eq!(status.generation, Some(2));
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(
        status.checkpoint_location,
        Some(fixture.location()),
        "lastState keeps the checkpoint"
    );
}

#[tokio::test]
async fn suspend_scales_to_zero_and_keeps_the_checkpoint() {
    let (fixture, status, set) = created().await;
    let q = query(&format!("{SPEC}  suspend: true\n"), 2, Some(status));
    let (client, api) = start(q.clone(), Some(set));
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(set["spec"]["replicas"], 0);
    assert_eq!(
        env_value(&set, "SLUICE_GENERATION"),
        "1",
        "suspend is not a new generation"
    );
    assert_eq!(events(&api), [call("Normal", "Suspended")]);
    assert_eq!(
        event_note(&api, "Suspended"),
        "stopping all workers; the checkpoint is kept"
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Suspended));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "Suspended".into())
    );
    assert!(
        fixture.dir().join("_sluice/owner.json").exists(),
        "checkpoint kept"
    );
}

#[tokio::test]
async fn invalid_spec_degrades_and_leaves_the_running_generation_alone() {
    let (fixture, status, set) = created().await;
    let mut q = query(SPEC, 2, Some(status));
    // Caught by validate_spec (not by the CRD schema): a watermark on a non-timestamp column.
    q.spec.sources[0].watermark = Some(sluice_crds::WatermarkSpec {
        column: "value".into(),
        delay: "10s".into(),
        idle_timeout: None,
    });
    let (client, api) = start(q.clone(), Some(set.clone()));
    let ctx = fixture.context(client);
    let action = reconcile(Arc::new(q.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::await_change(),
        "no hot loop on a user error"
    );
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            call("POST", EVENTS_PATH),
            call("PATCH", &format!("{QUERY_PATH}/status"))
        ],
        "nothing but status and an event may be written"
    );
    assert_eq!(events(&api), [call("Warning", "InvalidSpec")]);
    assert_eq!(
        event_note(&api, "InvalidSpec"),
        "`spec.sources[0].watermark.column`: `value` is not a timestamp column of the schema; \
         fix the manifest and apply it again; generation 1 keeps running"
    );
    let status = written_status(&api);
    assert_eq!(
        condition(&status, "Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    assert_eq!(
        status.generation,
        Some(1),
        "the running generation is left alone"
    );
    assert_eq!(status.observed_generation, Some(2));
    assert!(ctx.metrics.encode().contains("error=\"invalid_spec\"} 1"));

    // Reconciling the same invalid spec again publishes no second event.
    let mut again = q;
    again.status = Some(status.clone());
    let (client, api) = start(again.clone(), Some(set));
    reconcile(Arc::new(again), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        api.calls(),
        [call("GET", STS_PATH)],
        "nothing changed, nothing written"
    );
}

async fn delete_with(retention: &str) -> (Fixture, FakeApi) {
    let (fixture, status, set) = created().await;
    let mut q = query(
        &format!("{SPEC}  checkpoint: {{retention: {retention}}}\n"),
        1,
        Some(status),
    );
    q.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let (client, api) = start(q.clone(), Some(set));
    let action = reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    (fixture, api)
}

#[tokio::test]
async fn delete_with_retention_delete_removes_the_checkpoint_then_the_finalizer() {
    let (fixture, api) = delete_with("Delete").await;
    assert_eq!(
        api.calls(),
        [call("POST", EVENTS_PATH), call("PATCH", QUERY_PATH)]
    );
    assert_eq!(events(&api), [call("Normal", "CheckpointDeleted")]);
    assert_eq!(
        event_note(&api, "CheckpointDeleted"),
        format!(
            "retention Delete: removed 1 object(s) under {}",
            fixture.location()
        )
    );
    let patch = api.body_of("PATCH", QUERY_PATH);
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ])
    );
    assert!(
        !fixture.dir().join("_sluice/owner.json").exists(),
        "checkpoint deleted"
    );
}

#[tokio::test]
async fn delete_with_retention_retain_keeps_the_checkpoint() {
    let (fixture, api) = delete_with("Retain").await;
    assert_eq!(
        api.calls(),
        [call("POST", EVENTS_PATH), call("PATCH", QUERY_PATH)]
    );
    assert_eq!(events(&api), [call("Normal", "CheckpointRetained")]);
    assert_eq!(
        event_note(&api, "CheckpointRetained"),
        format!(
            "retention Retain: checkpoint kept at {}; delete it yourself when it is no longer needed",
            fixture.location()
        )
    );
    assert!(
        fixture.dir().join("_sluice/owner.json").exists(),
        "checkpoint kept"
    );
}

#[tokio::test]
async fn checkpoint_owned_by_another_query_is_refused_without_deploying() {
    let fixture = Fixture::new();
    // Another query claimed this location first.
    let other = Owner {
        namespace: "default".into(),
        name: "other".into(),
        uid: "uid-other".into(),
        claimed_at: String::new(),
    };
    let claim = CheckpointManager::default()
        .claim(&fixture.location(), &other)
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Created);
    let q = query(SPEC, 1, None);
    let (client, api) = start(q.clone(), None);
    let action = reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            call("POST", EVENTS_PATH),
            call("PATCH", &format!("{QUERY_PATH}/status"))
        ]
    );
    assert_eq!(events(&api), [call("Warning", "CheckpointOwned")]);
    assert_eq!(
        event_note(&api, "CheckpointOwned"),
        format!(
            "checkpoint location `{}` is owned by StreamingQuery default/other (uid uid-other); choose another checkpoint location (spec.checkpoint.location) or delete the owning query with spec.checkpoint.retention: Delete (a retained checkpoint stays owned); nothing runs until then",
            fixture.location()
        )
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Failed));
    assert_eq!(
        condition(&status, "CheckpointStale"),
        ("True".into(), "CheckpointOwned".into())
    );
}

#[tokio::test]
async fn api_errors_back_off_exponentially() {
    let fixture = Fixture::new();
    let q = Arc::new(query(SPEC, 1, None));
    let (client, _api) = start((*q).clone(), None);
    let ctx = fixture.context(client);
    let error = sluice_operator::Error::Kube(kube::Error::Api(Box::new(
        kube::core::Status::failure("boom", "InternalError").with_code(500),
    )));
    assert_eq!(
        error_policy(q.clone(), &error, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(q.clone(), &error, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(10))
    );
    let user = sluice_operator::Error::CheckpointOwned {
        location: "s3://x/".into(),
        owner: "someone".into(),
    };
    assert_eq!(error_policy(q, &user, ctx.clone()), Action::await_change());
    assert!(ctx.metrics.encode().contains("error=\"kube\"} 2"));
}

// ---- Worker progress, the stateful scaling limit and the autoscaler ----

/// Stand-in worker pods: `GET /<pod>/progress` answers the pod's JSON, other pods answer 500.
async fn workers(answers: Vec<(&str, Value)>) -> String {
    let answers: Arc<std::collections::BTreeMap<String, Value>> = Arc::new(
        answers
            .into_iter()
            .map(|(pod, answer)| (pod.to_string(), answer))
            .collect(),
    );
    let app = axum::Router::new().route(
        "/{pod}/progress",
        axum::routing::get(
            move |axum::extract::Path(pod): axum::extract::Path<String>| {
                let answers = answers.clone();
                async move {
                    match answers.get(&pod) {
                        Some(answer) => (StatusCode::OK, axum::Json(answer.clone())),
                        None => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(Value::Null)),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A worker's `/progress` answer (worker/src/http.rs) with one committed trigger.
fn progress(batch: i64, input: f64, processed: f64, backlog: i64, at: &str) -> Value {
    json!({
        "latest": {
            "timestamp": at,
            "batchId": batch,
            "numInputRows": 10,
            "inputRowsPerSecond": input,
            "processedRowsPerSecond": processed,
            "durationMs": {"triggerExecution": 500},
            "eventTime": {"watermark": "2026-11-21T09:59:00Z"},
            "sources": [{"description": "rate", "backlog": backlog}],
            "tasks": [],
        },
        "recent": [],
        "lastError": null,
        "stopRequested": false,
    })
}

/// `created()` for another spec: (fixture, status after create, StatefulSet as rolled out).
async fn created_with(spec: &str) -> (Fixture, StreamingQueryStatus, StatefulSet) {
    let fixture = Fixture::new();
    let q = query(spec, 1, None);
    let (client, api) = start(q.clone(), None);
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    let set = rolled_out(&api.body_of("PATCH", STS_PATH));
    (fixture, written_status(&api), set)
}

#[tokio::test]
async fn worker_progress_fills_the_status_rates() {
    let spec = format!("{SPEC}  parallelism: {{replicas: 2}}\n");
    let (fixture, status, set) = created_with(&spec).await;
    let base = workers(vec![
        (
            "sluice-q-0",
            progress(7, 100.0, 150.0, 40, "2026-11-21T10:00:00Z"),
        ),
        (
            "sluice-q-1",
            progress(9, 50.5, 60.0, 4, "2026-11-21T10:00:02Z"),
        ),
    ])
    .await;
    let q = query(&spec, 1, Some(status));
    let (client, api) = start(q.clone(), Some(set.clone()));
    reconcile(Arc::new(q), fixture.context_with(client, &base, None, None))
        .await
        .expect("reconcile");
    let status = written_status(&api);
    assert_eq!(
        status.input_rows_per_second,
        Some(151.0),
        "150.5 rounded to 3 significant digits"
    );
    assert_eq!(status.processed_rows_per_second, Some(210.0));
    assert_eq!(status.lag, Some(44));
    assert_eq!(status.last_committed_batch_id, Some(9));
    assert_eq!(status.watermark.as_deref(), Some("2026-11-21T09:59:00Z"));
    assert_eq!(
        status.last_batch_time.as_deref(),
        Some("2026-11-21T10:00:02.5Z"),
        "trigger start + triggerExecution of the latest batch"
    );
    assert_eq!(status.phase, Some(sluice_crds::Phase::Running));

    // Replica 1 stops answering: the figures stay as they were and the reconcile succeeds.
    let half = workers(vec![(
        "sluice-q-0",
        progress(8, 1.0, 1.0, 0, "2026-11-21T10:01:00Z"),
    )])
    .await;
    let q = query(&spec, 1, Some(status.clone()));
    let (client, api) = start(q.clone(), Some(set));
    reconcile(Arc::new(q), fixture.context_with(client, &half, None, None))
        .await
        .expect("an unreachable worker does not fail the reconcile");
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            call("PATCH", CM_PATH),
            call("PATCH", SVC_PATH),
            call("POST", SECRETS_PATH),
            call("PATCH", STS_PATH),
            call("PATCH", PDB_PATH)
        ],
        "status unchanged: not written"
    );
}

#[tokio::test]
async fn unreachable_workers_leave_the_status_figures_stale() {
    let (fixture, mut status, set) = created().await;
    status.input_rows_per_second = Some(5.0);
    status.last_committed_batch_id = Some(3);
    status.last_batch_time = Some("2026-11-21T09:00:00Z".into());
    let q = query(SPEC, 1, Some(status));
    let (client, api) = start(q.clone(), Some(set));
    let action = reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(sluice_operator::controller::DEFAULT_STATUS_REFRESH),
        "a Running query is looked at again to refresh its rates"
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Running));
    assert_eq!(status.input_rows_per_second, Some(5.0));
    assert_eq!(status.last_committed_batch_id, Some(3));
    assert_eq!(
        status.last_batch_time.as_deref(),
        Some("2026-11-21T09:00:00Z")
    );
}

/// `sluice-worker check` stand-in: answers `report`, records the manifests it was shown.
struct FakeInspector {
    report: CheckReport,
    seen: Mutex<Vec<String>>,
}

impl QueryInspector for FakeInspector {
    fn inspect<'a>(
        &'a self,
        _query: &'a StreamingQuery,
        request: &'a CheckRequest,
    ) -> futures::future::BoxFuture<'a, Inspection> {
        self.seen
            .lock()
            .expect("lock")
            .push(request.manifest_yaml.clone());
        Box::pin(async move { Inspection::Valid(self.report.clone()) })
    }
}

fn inspector(report: CheckReport) -> Arc<FakeInspector> {
    Arc::new(FakeInspector {
        report,
        seen: Mutex::new(Vec::new()),
    })
}

/// Prometheus stand-in: the same figures for every query.
struct FixedMetrics(
    sluice_operator::autoscaler::Metrics,
    Mutex<Vec<ScalingTarget>>,
);

impl MetricsSource for FixedMetrics {
    fn metrics<'a>(
        &'a self,
        target: &'a ScalingTarget,
    ) -> futures::future::BoxFuture<'a, sluice_operator::autoscaler::Metrics> {
        self.1.lock().expect("lock").push(target.clone());
        Box::pin(async move { self.0 })
    }
}

fn event_note(api: &FakeApi, reason: &str) -> String {
    api.requests()
        .iter()
        .find(|r| r.path() == EVENTS_PATH && r.body["reason"] == reason)
        .and_then(|r| r.body["note"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no {reason} event in {:?}", events(api)))
}

#[tokio::test]
async fn stateful_query_without_the_partition_key_in_group_by_is_held_at_one_replica() {
    let fixture = Fixture::new();
    let spec = format!("{SPEC}  parallelism: {{replicas: 3}}\n");
    let facts = inspector(CheckReport {
        stateful: true,
        group_by: vec!["deviceId".into()],
        partition_keys: [("events".to_string(), "region".to_string())].into(),
        tasks: 8,
        ..CheckReport::default()
    });
    let q = query(&spec, 1, None);
    let (client, api) = start(q.clone(), None);
    let ctx = fixture.context_with(client, "http://127.0.0.1:1", Some(facts.clone()), None);
    reconcile(Arc::new(q), ctx).await.expect("reconcile");
    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(set["spec"]["replicas"], 1, "held at one replica");
    assert_eq!(env_value(&set, "SLUICE_REPLICA_COUNT"), "1");
    assert_eq!(
        events(&api),
        [
            call("Normal", "CheckpointClaimed"),
            call("Normal", "Created"),
            call("Warning", "ScalingLimited"),
        ]
    );
    assert_eq!(
        event_note(&api, "ScalingLimited"),
        "GROUP BY key (deviceId) does not contain the partition key `region` of source `events`: \
         held at 1 replica; add region to GROUP BY or set partitionKey to a GROUP BY column"
    );
    assert_eq!(
        event_note(&api, "Created"),
        "starting generation 1 with 1 replica(s)"
    );
    let status = written_status(&api);
    assert_eq!(
        condition(&status, "ScalingLimited"),
        ("True".into(), "StatefulWithoutPartitionKey".into())
    );
    let seen = facts.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("SELECT * FROM events"), "{}", seen[0]);

    // Rolled out: Running at one replica, no second warning, the SQL is not inspected again.
    let rolled = rolled_out(&set);
    let q = query(&spec, 1, Some(status));
    let (client, api2) = start(q.clone(), Some(rolled));
    let ctx = fixture.context_with(client, "http://127.0.0.1:1", Some(facts.clone()), None);
    reconcile(Arc::new(q), ctx).await.expect("reconcile");
    assert_eq!(api2.body_of("PATCH", STS_PATH)["spec"]["replicas"], 1);
    assert_eq!(events(&api2), [call("Normal", "Running")]);
    assert_eq!(
        event_note(&api2, "Running"),
        "generation 1 runs with 1 replica(s)"
    );
    assert_eq!(
        written_status(&api2).phase,
        Some(sluice_crds::Phase::Running)
    );
    assert_eq!(
        facts.seen.lock().expect("lock").len(),
        2,
        "a new context inspects once"
    );

    // The user settles for one replica: the limit no longer applies and the condition clears.
    let single = query(SPEC, 2, Some(written_status(&api2)));
    let (client, api3) = start(single.clone(), Some(rolled_out(&set)));
    let ctx = fixture.context_with(client, "http://127.0.0.1:1", Some(facts.clone()), None);
    reconcile(Arc::new(single), ctx).await.expect("reconcile");
    assert_eq!(
        condition(&written_status(&api3), "ScalingLimited"),
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(facts.seen.lock().expect("lock").len(), 2, "not inspected");
}

const AUTOSCALE: &str = "  parallelism:\n    autoscale: {enabled: true, mode: MODE, minReplicas: 1, maxReplicas: 3, targetUtilization: 0.8, scaleUpStabilization: 0s, cooldown: 0s}\n";

/// A query with autoscaling that runs settled at one replica, and the reconcile that evaluates
/// the autoscaler with λ = 300 rows/s against 100 rows/s processed at busy 1.0.
async fn autoscale(mode: &str) -> (FakeApi, Arc<Context>, Arc<FixedMetrics>, Action) {
    let spec = format!("{SPEC}{}", AUTOSCALE.replace("MODE", mode));
    let (fixture, status, set) = created_with(&spec).await;
    // First pass after the rollout: Running.
    let q = query(&spec, 1, Some(status));
    let (client, api) = start(q.clone(), Some(set.clone()));
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    let running = written_status(&api);
    assert_eq!(running.phase, Some(sluice_crds::Phase::Running));
    let metrics = Arc::new(FixedMetrics(
        sluice_operator::autoscaler::Metrics {
            input_rate: Some(300.0),
            processed_rate: Some(100.0),
            busy_ratio: Some(1.0),
            backlog: Some(0.0),
        },
        Mutex::new(Vec::new()),
    ));
    let facts = inspector(CheckReport {
        tasks: 8,
        ..CheckReport::default()
    });
    let q = query(&spec, 1, Some(running));
    let (client, api) = start(q.clone(), Some(set));
    let ctx = fixture.context_with(
        client,
        "http://127.0.0.1:1",
        Some(facts),
        Some(metrics.clone()),
    );
    let action = reconcile(Arc::new(q), ctx.clone())
        .await
        .expect("reconcile");
    (api, ctx, metrics, action)
}

#[tokio::test]
async fn autoscaler_scales_up_with_event_history_and_metric() {
    let (api, ctx, metrics, action) = autoscale("apply").await;
    assert_eq!(
        action,
        Action::requeue(OperatorConfig::default().progress_poll),
        "the rescale is followed"
    );
    assert_eq!(
        metrics.1.lock().expect("lock").clone(),
        [ScalingTarget {
            namespace: "default".into(),
            name: "q".into(),
            replicas: 1,
            files_per_batch: None,
        }]
    );
    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(env_value(&set, "SLUICE_REPLICA_COUNT"), "3");
    assert_eq!(
        env_value(&set, "SLUICE_GENERATION"),
        "1",
        "a rescale keeps the generation"
    );
    assert_eq!(events(&api), [call("Normal", "ScaledUp")]);
    assert_eq!(
        event_note(&api, "ScaledUp"),
        "scaling 1 -> 3: utilization 3.00 above 0.90 for 0 s (λ 300.0 rows/s, processed 100.0 rows/s, busy 1.00, backlog 0 rows, TPR 100.0 rows/s, expected capacity 300.0 rows/s)"
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Scaling));
    assert_eq!(
        condition(&status, "Progressing"),
        ("True".into(), "Scaling".into())
    );
    assert_eq!(
        condition(&status, "ScalingLimited"),
        ("False".into(), "AsExpected".into())
    );
    let [decision] = status.scaling_history.as_slice() else {
        panic!("one decision: {:?}", status.scaling_history)
    };
    assert_eq!(
        (
            decision.from_replicas,
            decision.to_replicas,
            decision.applied,
            decision.input_rate,
            decision.true_processing_rate
        ),
        (1, 3, true, 300.0, 100.0)
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("sluice_scaling_decisions_total{namespace=\"default\",query=\"q\",direction=\"up\",applied=\"true\"} 1"),
        "{}",
        ctx.metrics.encode()
    );
}

#[tokio::test]
async fn autoscaler_in_recommend_mode_records_without_scaling() {
    let (api, ctx, _, action) = autoscale("recommend").await;
    assert_eq!(
        action,
        Action::requeue(OperatorConfig::default().progress_poll),
        "autoscaling queries are evaluated at the progress cadence"
    );
    assert_eq!(api.body_of("PATCH", STS_PATH)["spec"]["replicas"], 1);
    assert_eq!(events(&api), [call("Normal", "ScalingRecommended")]);
    assert!(
        event_note(&api, "ScalingRecommended").starts_with("recommending 1 -> 3: utilization 3.00"),
        "{}",
        event_note(&api, "ScalingRecommended")
    );
    let status = written_status(&api);
    assert_eq!(status.phase, Some(sluice_crds::Phase::Running));
    assert_eq!(status.scaling_history.len(), 1);
    assert!(!status.scaling_history[0].applied);
    assert!(
        ctx.metrics
            .encode()
            .contains("direction=\"up\",applied=\"false\"} 1")
    );
}

#[tokio::test]
async fn delete_never_removes_a_checkpoint_another_query_owns() {
    let (fixture, status, set) = created().await;
    // The marker now names another query (its data must survive this query's deletion).
    let other = Owner {
        namespace: "default".into(),
        name: "other".into(),
        uid: "uid-other".into(),
        claimed_at: String::new(),
    };
    std::fs::write(
        fixture.dir().join("_sluice/owner.json"),
        serde_json::to_vec(&other).expect("json"),
    )
    .expect("overwrite marker");
    let mut q = query(
        &format!("{SPEC}  checkpoint: {{retention: Delete}}\n"),
        1,
        Some(status),
    );
    q.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let (client, api) = start(q.clone(), Some(set));
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("deletion is not blocked");
    assert_eq!(
        api.calls(),
        [call("POST", EVENTS_PATH), call("PATCH", QUERY_PATH)],
        "event, then the finalizer is removed"
    );
    assert_eq!(events(&api), [call("Warning", "CheckpointNotDeleted")]);
    assert_eq!(
        event_note(&api, "CheckpointNotDeleted"),
        format!(
            "checkpoint location `{}` is owned by StreamingQuery default/other (uid uid-other): retention Delete skipped so its data stays; nothing to do here (delete that query with retention Delete to remove the data)",
            fixture.location()
        )
    );
    assert!(
        fixture.dir().join("_sluice/owner.json").exists(),
        "data kept"
    );
}

/// The chart's `checkpoint.credentialsSecret`/`endpoint` reach the workers (they read the
/// checkpoint the operator claimed); a query naming its own `storageSecretRef` keeps only that.
#[tokio::test]
async fn workers_get_the_charts_storage_settings_unless_the_query_names_its_own() {
    let storage = sluice_operator::backend::kubernetes::WorkerStorage {
        credentials_secret: Some("minio-credentials".into()),
        endpoint: Some("http://minio.sluice-dev:9000".into()),
        region: Some("us-east-1".into()),
    };
    for (spec, env_from, endpoint) in [
        (
            SPEC.to_string(),
            json!([{"secretRef": {"name": "minio-credentials", "optional": false}}]),
            json!("http://minio.sluice-dev:9000"),
        ),
        (
            format!("{SPEC}  storageSecretRef: own-s3\n"),
            json!([{"secretRef": {"name": "own-s3", "optional": false}}]),
            Value::Null,
        ),
    ] {
        let fixture = Fixture::new();
        let q = query(&spec, 1, None);
        let (client, api) = start(q.clone(), None);
        let ctx = fixture.context(client);
        let mut ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| panic!("one owner"));
        ctx.backend = ctx.backend.clone().with_worker_storage(storage.clone());
        reconcile(Arc::new(q), Arc::new(ctx))
            .await
            .expect("reconcile");
        let set = api.body_of("PATCH", STS_PATH);
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["envFrom"], env_from, "{spec}");
        assert_eq!(env_value(&set, "AWS_ENDPOINT_URL"), endpoint, "{spec}");
    }
}

/// The first reconcile creates the control Secret (a fresh 32-byte token, owned by the query) and
/// mounts it into the workers; a later reconcile neither creates nor changes it; the token is in
/// no other request (ConfigMap, StatefulSet, status, events).
#[tokio::test]
async fn control_token_secret_is_created_once_mounted_and_kept_out_of_everything_else() {
    let fixture = Fixture::new();
    let q = query(SPEC, 1, None);
    let (client, api) = start(q.clone(), None);
    let ctx = fixture.context(client);
    reconcile(Arc::new(q), ctx.clone())
        .await
        .expect("reconcile");
    let secret = api.object(SECRET_PATH).expect("control Secret created");
    let token = secret["stringData"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(token.len(), 64, "32 bytes in hex");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(secret["type"], "Opaque");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            &owner["kind"],
            &owner["name"],
            &owner["uid"],
            &owner["controller"]
        ),
        (
            &json!("StreamingQuery"),
            &json!("q"),
            &json!("uid-1"),
            &json!(true)
        )
    );
    assert_eq!(secret["metadata"]["labels"]["sluice.dev/query"], "q");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice-operator"
    );
    let position = |method: &str, path: &str| {
        api.calls()
            .iter()
            .position(|c| *c == call(method, path))
            .expect("called")
    };
    assert!(
        position("POST", SECRETS_PATH) < position("PATCH", STS_PATH),
        "the Secret exists before pods that mount it"
    );

    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(
        env_value(&set, "SLUICE_CONTROL_TOKEN_FILE"),
        "/var/run/sluice/control/token"
    );
    let pod = &set["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "control"))
        .expect("control volume");
    assert_eq!(
        volume["secret"],
        json!({"secretName": "sluice-q-control", "defaultMode": 256, "optional": false})
    );
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "control"))
        .expect("control mount");
    assert_eq!(
        mount,
        &json!({"name": "control", "mountPath": "/var/run/sluice/control", "readOnly": true})
    );

    // A second reconcile (the query as the first one left it) keeps the Secret as it is.
    let second = query(SPEC, 1, Some(written_status(&api)));
    reconcile(Arc::new(second), ctx).await.expect("reconcile");
    assert_eq!(api.object(SECRET_PATH).as_ref(), Some(&secret));
    let secret_requests: Vec<(String, u16)> = api
        .requests()
        .iter()
        .filter(|r| r.path().starts_with(SECRETS_PATH))
        .map(|r| (r.method.to_string(), r.status))
        .collect();
    assert_eq!(
        secret_requests,
        [("POST".to_string(), 201), ("POST".to_string(), 409)],
        "created once, then AlreadyExists; never applied, updated or read"
    );

    for request in api.requests() {
        if request.path().starts_with(SECRETS_PATH) {
            continue;
        }
        assert!(
            !request.uri.contains(&token) && !request.body.to_string().contains(&token),
            "the control token leaked into {} {}",
            request.method,
            request.uri
        );
    }
}
