//! Lease leader election against a mocked API server (kube's tower-test pattern): the fake holds
//! one `coordination.k8s.io/v1` Lease with a `resourceVersion`, answers GET / POST / PUT like the
//! API server (409 on a stale `resourceVersion`), and each test asserts the requests the elector
//! sent: create, renew, takeover of an expired lease, no write on a live one, a lost race.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use sluice_operator::leader::LeaderElector;
use tower_test::mock;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/sluice-operator-leader";

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    body: Value,
}

/// The fake API server: one Lease (or none), versioned.
struct FakeLeases {
    lease: Arc<Mutex<Option<Value>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

impl FakeLeases {
    /// `conflict_on_write`: answer every write with 409, as when another candidate won the race.
    fn start(lease: Option<Value>, conflict_on_write: bool) -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let stored = Arc::new(Mutex::new(lease));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (state, recorded) = (stored.clone(), requests.clone());
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
                recorded.lock().expect("lock").push(Recorded {
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                let mut lease = state.lock().expect("lock");
                let version = |l: &Value| {
                    l["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let response = match (method, path.as_str()) {
                    (Method::GET, LEASE) => match lease.as_ref() {
                        Some(l) => respond(StatusCode::OK, l),
                        None => respond(StatusCode::NOT_FOUND, &failure(404, "NotFound")),
                    },
                    (Method::POST | Method::PUT, _) if conflict_on_write => {
                        respond(StatusCode::CONFLICT, &failure(409, "Conflict"))
                    }
                    (Method::POST, LEASES) if lease.is_none() => {
                        let mut created = body.clone();
                        created["metadata"]["resourceVersion"] = json!("1");
                        *lease = Some(created.clone());
                        respond(StatusCode::CREATED, &created)
                    }
                    (Method::PUT, LEASE) => {
                        let current = lease.as_ref().map_or(0, version);
                        if version(&body) != current {
                            respond(StatusCode::CONFLICT, &failure(409, "Conflict"))
                        } else {
                            let mut replaced = body.clone();
                            replaced["metadata"]["resourceVersion"] =
                                json!((current + 1).to_string());
                            *lease = Some(replaced.clone());
                            respond(StatusCode::OK, &replaced)
                        }
                    }
                    _ => respond(StatusCode::CONFLICT, &failure(409, "AlreadyExists")),
                };
                send.send_response(response);
            }
        });
        (
            Client::new(service, "default"),
            Self {
                lease: stored,
                requests,
            },
        )
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .map(|r| (r.method.to_string(), r.path.clone()))
            .collect()
    }

    fn body(&self, index: usize) -> Value {
        self.requests.lock().expect("lock")[index].body.clone()
    }

    fn lease(&self) -> Value {
        self.lease.lock().expect("lock").clone().expect("a lease")
    }
}

fn call(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

fn elector(client: Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        client,
        "sluice",
        "sluice-operator-leader",
        identity,
        Duration::from_secs(15),
    )
}

/// A lease held by `holder`, last renewed `seconds_ago`.
fn lease(holder: &str, seconds_ago: i64, transitions: i32) -> Value {
    let renewed = Timestamp::now() - SignedDuration::from_secs(seconds_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "sluice-operator-leader", "namespace": "sluice", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": renewed.to_string(),
            "renewTime": renewed.to_string(),
            "leaseTransitions": transitions,
        }
    })
}

fn time(value: &Value) -> Timestamp {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a timestamp: {value}"))
}

#[tokio::test]
async fn acquires_a_missing_lease_then_renews_it() {
    let (client, api) = FakeLeases::start(None, false);
    let a = elector(client, "operator-a");
    let before = Timestamp::now();
    assert!(a.try_acquire_or_renew().await.expect("acquire"));
    assert_eq!(api.calls(), [call("GET", LEASE), call("POST", LEASES)]);
    let created = api.body(1);
    assert_eq!(created["metadata"]["name"], "sluice-operator-leader");
    let spec = &created["spec"];
    assert_eq!(spec["holderIdentity"], "operator-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(time(&spec["renewTime"]) >= before);
    assert_eq!(spec["acquireTime"], spec["renewTime"]);

    // The holder renews: same holder and transitions, later renewTime, read resourceVersion.
    let first_renew = time(&spec["renewTime"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(a.try_acquire_or_renew().await.expect("renew"));
    assert_eq!(
        api.calls()[2..],
        [call("GET", LEASE), call("PUT", LEASE)],
        "renewal replaces the lease it read"
    );
    let renewed = api.body(3);
    assert_eq!(renewed["metadata"]["resourceVersion"], "1");
    assert_eq!(renewed["spec"]["holderIdentity"], "operator-a");
    assert_eq!(renewed["spec"]["leaseTransitions"], 0);
    assert_eq!(
        renewed["spec"]["acquireTime"],
        created["spec"]["acquireTime"]
    );
    assert!(time(&renewed["spec"]["renewTime"]) > first_renew);
    assert_eq!(api.lease()["metadata"]["resourceVersion"], "2");
}

#[tokio::test]
async fn takes_over_an_expired_lease_of_another_holder() {
    let (client, api) = FakeLeases::start(Some(lease("operator-b", 60, 3)), false);
    let before = Timestamp::now();
    assert!(
        elector(client, "operator-a")
            .try_acquire_or_renew()
            .await
            .expect("takeover")
    );
    assert_eq!(api.calls(), [call("GET", LEASE), call("PUT", LEASE)]);
    let written = api.body(1);
    assert_eq!(
        written["metadata"]["resourceVersion"], "7",
        "the write is conditional on the version read"
    );
    let spec = &written["spec"];
    assert_eq!(spec["holderIdentity"], "operator-a");
    assert_eq!(spec["leaseTransitions"], 4);
    assert!(time(&spec["acquireTime"]) >= before);
    assert!(time(&spec["renewTime"]) >= before);
}

#[tokio::test]
async fn waits_while_another_holder_renews() {
    let (client, api) = FakeLeases::start(Some(lease("operator-b", 2, 3)), false);
    assert!(
        !elector(client, "operator-a")
            .try_acquire_or_renew()
            .await
            .expect("read")
    );
    assert_eq!(
        api.calls(),
        [call("GET", LEASE)],
        "a live lease is not written"
    );
    assert_eq!(api.lease()["spec"]["holderIdentity"], "operator-b");
}

#[tokio::test]
async fn a_lost_race_for_an_expired_lease_is_not_leadership() {
    let (client, api) = FakeLeases::start(Some(lease("operator-b", 60, 3)), true);
    assert!(
        !elector(client, "operator-a")
            .try_acquire_or_renew()
            .await
            .expect("409 is not an error")
    );
    assert_eq!(api.calls(), [call("GET", LEASE), call("PUT", LEASE)]);
    assert_eq!(api.lease()["spec"]["holderIdentity"], "operator-b");
}
