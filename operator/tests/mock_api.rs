//! Reconcile against a mocked Kubernetes API server (kube's tower-test pattern, after
//! kube-rs/controller-rs `fixtures.rs`): every request the operator sends is recorded and answered
//! like the API server would, and each test asserts the exact sequence of requests and the objects
//! and status they carried. Checkpoints live in a temporary `file://` location.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_crds::{StreamingQuery, StreamingQueryStatus, parse_manifest};
use sluice_operator::checkpoint::{CheckpointManager, Claim, Owner};
use sluice_operator::controller::{Context, FINALIZER, error_policy, reconcile};
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::OperatorConfig;
use tower_test::mock;

/// One request as the API server saw it.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/default/statefulsets/sluice-q?...`.
    uri: String,
    body: Value,
}

impl Recorded {
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

/// A fake API server holding the query and (optionally) its StatefulSet.
struct FakeApi {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

const QUERY_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/default/streamingqueries/q";
const STS_PATH: &str = "/apis/apps/v1/namespaces/default/statefulsets/sluice-q";
const CM_PATH: &str = "/api/v1/namespaces/default/configmaps/sluice-q";
const SVC_PATH: &str = "/api/v1/namespaces/default/services/sluice-q";
const PDB_PATH: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/sluice-q";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

impl FakeApi {
    /// Starts the fake server; `statefulset` is what GET of the worker StatefulSet returns.
    fn start(query: StreamingQuery, statefulset: Option<StatefulSet>) -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let uri = request.uri().to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                recorded.lock().expect("lock").push(Recorded {
                    method: method.clone(),
                    uri: uri.clone(),
                    body: body.clone(),
                });
                let path = uri.split('?').next().unwrap_or_default().to_string();
                let response = match (method, path.as_str()) {
                    (Method::GET, STS_PATH) => match &statefulset {
                        Some(set) => json_response(
                            StatusCode::OK,
                            &serde_json::to_value(set).unwrap_or_default(),
                        ),
                        None => json_response(StatusCode::NOT_FOUND, &not_found()),
                    },
                    (Method::PATCH, p) if p == format!("{QUERY_PATH}/status") => {
                        let mut object = serde_json::to_value(&query).unwrap_or_default();
                        object["status"] = body["status"].clone();
                        json_response(StatusCode::OK, &object)
                    }
                    (Method::PATCH, QUERY_PATH) => {
                        let mut object = serde_json::to_value(&query).unwrap_or_default();
                        object["metadata"]["finalizers"] = json!([]);
                        json_response(StatusCode::OK, &object)
                    }
                    // Server-side apply and event creation echo the object.
                    (Method::PATCH | Method::POST, _) => json_response(StatusCode::OK, &body),
                    _ => json_response(StatusCode::NOT_FOUND, &not_found()),
                };
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), Self { requests })
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// `(method, path)` of every request, in order.
    fn calls(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .map(|r| (r.method.to_string(), r.path().to_string()))
            .collect()
    }

    fn body_of(&self, method: &str, path: &str) -> Value {
        self.requests()
            .into_iter()
            .find(|r| r.method.as_str() == method && r.path() == path)
            .map(|r| r.body)
            .unwrap_or_else(|| panic!("no {method} {path} in {:?}", self.calls()))
    }

    /// `(type, reason)` of every event created, in order.
    fn events(&self) -> Vec<(String, String)> {
        self.requests()
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

    fn status(&self) -> StreamingQueryStatus {
        serde_json::from_value(
            self.body_of("PATCH", &format!("{QUERY_PATH}/status"))["status"].clone(),
        )
        .expect("a StreamingQueryStatus")
    }
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
        let config = OperatorConfig {
            default_image: "sluice-worker:test".into(),
            default_checkpoint_location: Some(self.base.clone()),
            ..OperatorConfig::default()
        };
        Arc::new(Context::new(
            client,
            CheckpointManager::default(),
            config,
            Metrics::default(),
        ))
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
    let (client, api) = FakeApi::start(q.clone(), None);
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    let set = rolled_out(&api.body_of("PATCH", STS_PATH));
    (fixture, api.status(), set)
}

#[tokio::test]
async fn create_applies_children_and_sets_status() {
    let fixture = Fixture::new();
    let q = query(SPEC, 1, None);
    let (client, api) = FakeApi::start(q.clone(), None);
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
        api.events(),
        [
            call("Normal", "CheckpointClaimed"),
            call("Normal", "Created")
        ]
    );

    let status = api.status();
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
    let (client, api) = FakeApi::start(q.clone(), Some(set));
    reconcile(Arc::new(q), fixture.context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        api.calls(),
        [
            call("GET", STS_PATH),
            call("PATCH", CM_PATH),
            call("PATCH", SVC_PATH),
            call("PATCH", STS_PATH),
            call("PATCH", PDB_PATH),
            call("POST", EVENTS_PATH),
            call("PATCH", &format!("{QUERY_PATH}/status")),
        ]
    );
    let set = api.body_of("PATCH", STS_PATH);
    assert_eq!(env_value(&set, "SLUICE_GENERATION"), "2");
    assert_eq!(set["metadata"]["annotations"]["sluice.dev/generation"], "2");
    let cm = api.body_of("PATCH", CM_PATH);
    assert!(
        cm["data"]["query.yaml"]
            .as_str()
            .is_some_and(|m| m.contains("SELECT value FROM events"))
    );
    assert_eq!(api.events(), [call("Normal", "UpgradeStarted")]);
    let status = api.status();
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
    let (client, api) = FakeApi::start(q.clone(), Some(set));
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
    assert_eq!(api.events(), [call("Normal", "Suspended")]);
    let status = api.status();
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
    });
    let (client, api) = FakeApi::start(q.clone(), Some(set.clone()));
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
    assert_eq!(api.events(), [call("Warning", "InvalidSpec")]);
    let event = api.body_of("POST", EVENTS_PATH);
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("spec.sources[0].watermark.column")),
        "{event}"
    );
    let status = api.status();
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
    let (client, api) = FakeApi::start(again.clone(), Some(set));
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
    let (client, api) = FakeApi::start(q.clone(), Some(set));
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
    assert_eq!(api.events(), [call("Normal", "CheckpointDeleted")]);
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
    assert_eq!(api.events(), [call("Normal", "CheckpointRetained")]);
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
    let (client, api) = FakeApi::start(q.clone(), None);
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
    assert_eq!(api.events(), [call("Warning", "CheckpointOwned")]);
    let status = api.status();
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
    let (client, _api) = FakeApi::start((*q).clone(), None);
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
