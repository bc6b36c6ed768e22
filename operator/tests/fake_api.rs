//! The strict fake API server (`support::fake_api`) refuses what a real apiserver refuses: each
//! test sends one request a real server answers with 403, 422 or 409 and checks the answer, so
//! the operator's mocked-API tests cannot pass on behaviour a cluster would reject.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use sluice_crds::{StreamingQuery, parse_manifest};
use support::fake_api::FakeApi;

const QUERY_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/default/streamingqueries/q";

fn query() -> Value {
    let query = parse_manifest(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {name: q, namespace: default, uid: uid-1, generation: 1}\nspec:\n  sources:\n    - name: events\n      rate: {rowsPerSecond: 10}\n  sql: SELECT * FROM events\n  sink: {console: {}}\n  checkpoint: {location: s3://a/}\n",
    )
    .expect("manifest");
    serde_json::to_value(query).expect("json")
}

fn api_error(error: kube::Error) -> (u16, String, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn requests_the_chart_does_not_grant_are_forbidden() {
    let (client, api) = FakeApi::start_with(vec![query()]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (code, reason, message) = api_error(pods.get("sluice-q-0").await.expect_err("forbidden"));
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "pods \"sluice-q-0\" is forbidden: User \"system:serviceaccount:sluice-system:sluice\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // Reading a ConfigMap is not granted either (the operator only applies them).
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let (code, _, _) = api_error(maps.get("sluice-q").await.expect_err("forbidden"));
    assert_eq!(code, 403);
    assert_eq!(api.refused(403).len(), 2);
}

#[tokio::test]
async fn server_side_apply_that_creates_needs_create_and_is_recorded_so() {
    let (client, api) = FakeApi::start_with(Vec::new());
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "sluice-q"}, "data": {"query.yaml": "x"}});
    let params = PatchParams::apply("sluice-operator").force();
    maps.patch("sluice-q", &params, &Patch::Apply(&body))
        .await
        .expect("created");
    maps.patch("sluice-q", &params, &Patch::Apply(&body))
        .await
        .expect("patched");
    let verbs: Vec<Vec<&str>> = api.requests().iter().map(|r| r.verbs.clone()).collect();
    assert_eq!(verbs, [vec!["patch", "create"], vec!["patch"]]);
    assert_eq!(
        api.object("/api/v1/namespaces/default/configmaps/sluice-q")
            .expect("stored")["data"],
        json!({"query.yaml": "x"})
    );
}

#[tokio::test]
async fn status_violating_the_crd_bounds_is_invalid() {
    let (client, api) = FakeApi::start_with(vec![query()]);
    let queries: Api<StreamingQuery> = Api::namespaced(client, "default");
    let params = PatchParams::apply("sluice-operator").force();
    let ok = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery",
                    "status": {"phase": "Running", "watermark": "2026-11-21T09:59:00Z"}});
    queries
        .patch_status("q", &params, &Patch::Apply(&ok))
        .await
        .expect("a valid status is stored");
    assert_eq!(
        api.object(QUERY_PATH).expect("stored")["status"]["phase"],
        "Running"
    );

    let too_long = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery",
                          "status": {"watermark": "9".repeat(65)}});
    let (code, reason, message) = api_error(
        queries
            .patch_status("q", &params, &Patch::Apply(&too_long))
            .await
            .expect_err("too long"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("status.watermark: Too long: may not be more than 64"),
        "{message}"
    );
    let bad_phase = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery",
                           "status": {"phase": "Exploded"}});
    let (code, _, message) = api_error(
        queries
            .patch_status("q", &params, &Patch::Apply(&bad_phase))
            .await
            .expect_err("not a phase"),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("status.phase: Unsupported value"),
        "{message}"
    );
    let conditions: Vec<Value> = (0..17)
        .map(|i| {
            json!({"type": format!("T{i}"), "status": "True", "reason": "R", "message": "",
                        "lastTransitionTime": "2026-11-21T09:59:00Z"})
        })
        .collect();
    let many = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery",
                      "status": {"conditions": conditions}});
    let (code, _, message) = api_error(
        queries
            .patch_status("q", &params, &Patch::Apply(&many))
            .await
            .expect_err("too many conditions"),
    );
    assert_eq!(code, 422);
    assert!(message.contains("status.conditions: Too many"), "{message}");
    // The refused writes left the stored status alone.
    assert_eq!(
        api.object(QUERY_PATH).expect("stored")["status"]["phase"],
        "Running"
    );
}

#[tokio::test]
async fn spec_changes_are_checked_against_the_crd_cel_rules() {
    let (client, _api) = FakeApi::start_with(vec![query()]);
    let queries: Api<StreamingQuery> = Api::namespaced(client, "default");
    // Two source kinds in one source: the CRD's CEL rule refuses it.
    let patch = json!({"spec": {"sources": [{"name": "events", "rate": {"rowsPerSecond": 10},
                                             "socket": {"host": "h", "port": 1}}]}});
    let (code, _, message) = api_error(
        queries
            .patch("q", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("invalid"),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("exactly one of file, kafka, socket, rate"),
        "{message}"
    );
}

#[tokio::test]
async fn apply_without_force_conflicts_with_another_managers_field() {
    let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                     "metadata": {"name": "sluice-q", "namespace": "default"},
                     "spec": {"replicas": 1, "serviceName": "sluice-q"}});
    let (client, api) = FakeApi::start_with(vec![set]);
    let path = "/apis/apps/v1/namespaces/default/statefulsets/sluice-q";
    // Someone scaled the StatefulSet by hand.
    api.set_owner(path, "spec.replicas", "kubectl-scale");
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client, "default");
    let body = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                      "metadata": {"name": "sluice-q"}, "spec": {"replicas": 3}});
    let (code, reason, message) = api_error(
        sets.patch(
            "sluice-q",
            &PatchParams::apply("sluice-operator"),
            &Patch::Apply(&body),
        )
        .await
        .expect_err("conflict"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Apply failed with 1 conflict(s): conflict with \"kubectl-scale\": .spec.replicas"
    );
    // Applying the same value is no conflict; forcing takes the field over.
    let same = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                      "metadata": {"name": "sluice-q"}, "spec": {"replicas": 1}});
    sets.patch(
        "sluice-q",
        &PatchParams::apply("sluice-operator"),
        &Patch::Apply(&same),
    )
    .await
    .expect("same value");
    sets.patch(
        "sluice-q",
        &PatchParams::apply("sluice-operator").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("forced");
    assert_eq!(
        api.owner(path, "spec.replicas").as_deref(),
        Some("sluice-operator")
    );
    assert_eq!(api.object(path).expect("stored")["spec"]["replicas"], 3);
}
