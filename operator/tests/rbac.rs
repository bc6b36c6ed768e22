//! The chart's RBAC grants exactly what the operator calls.
//!
//! The verbs are derived, not listed: the operator runs its code paths against the strict fake
//! API server (`support::fake_api`), which records every request as `(apiGroup, resource, verb)`
//! the way the apiserver authorizes it (GET of a name → `get`, of a collection → `list`, with
//! `watch=true` → `watch`, POST → `create`, PUT → `update`, PATCH → `patch`, and a server-side
//! apply that creates its object → `patch` + `create`). The paths driven:
//!
//! * the controller itself (`controller::run`, cluster-wide and namespaced): it lists and watches
//!   StreamingQueries and their StatefulSets, adds the finalizer and reconciles a new query
//!   (StatefulSet read, four children applied, the control Secret created, events, status);
//! * a spec change, a deletion with retention (finalizer removal), a repeated event (the event
//!   recorder patches the series), leader election (create, then renew).
//!
//! The union must equal the rules `helm template` renders for the ClusterRole, the namespaced
//! Role and the leader-election Role.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde_json::Value;
use sluice_crds::{StreamingQuery, parse_manifest};
use sluice_operator::backend::Backend;
use sluice_operator::backend::kubernetes::check_job::JobCheck;
use sluice_operator::checkpoint::CheckpointManager;
use sluice_operator::clients::CheckOutcome;
use sluice_operator::controller::{self, Context, FINALIZER, reconcile};
use sluice_operator::leader::LeaderElector;
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::{CheckRequest, RestoreObservation, RestoreRequest};
use sluice_operator::plan::{EventSeverity, OperatorConfig, PlannedEvent};
use sluice_operator::scaling::QueryInspector;
use support::fake_api::FakeApi;
use support::rbac::{Grant, grants};

const QUERY_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/default/streamingqueries/q";

fn query(finalizer: bool, sql: &str) -> StreamingQuery {
    let finalizers = if finalizer {
        format!(", finalizers: [{FINALIZER}]")
    } else {
        String::new()
    };
    parse_manifest(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q, namespace: default, uid: uid-1, generation: 1{finalizers}}}\nspec:\n  sources:\n    - name: events\n      rate: {{rowsPerSecond: 10}}\n  sql: {sql}\n  sink: {{console: {{}}}}\n"
    ))
    .expect("manifest")
}

fn context(client: Client, base: &str) -> Arc<Context> {
    let config = OperatorConfig {
        default_image: "sluice-worker:test".into(),
        default_checkpoint_location: Some(base.into()),
        ..OperatorConfig::default()
    };
    let mut ctx = Context::new(
        client,
        CheckpointManager::default(),
        config,
        Metrics::default(),
    );
    // No `sluice-worker check` here: the scaler's SQL inspection is not an API call.
    ctx.scaler = None;
    // No worker answers /progress (port 1 refuses at once): not an API call either.
    ctx.backend = ctx
        .backend
        .clone()
        .with_progress_url(Arc::new(|_, _, _| "http://127.0.0.1:1".to_string()));
    Arc::new(ctx)
}

fn served(api: &FakeApi) -> BTreeSet<Grant> {
    api.requests().iter().flat_map(|r| r.grants()).collect()
}

/// Runs the controller until it wrote the query's status (or 20 s passed).
async fn run_controller(namespace: Option<&str>, base: &str) -> FakeApi {
    // With the finalizer in place: adding it is covered below (a watch event would follow the
    // patch on a cluster; this fake sends none).
    let (client, api) = FakeApi::start_with(vec![
        serde_json::to_value(query(true, "SELECT * FROM events")).expect("json"),
    ]);
    let ctx = context(client, base);
    let task = tokio::spawn(controller::run(ctx, namespace.map(String::from)));
    let status = format!("{QUERY_PATH}/status");
    for _ in 0..200 {
        if api.calls().iter().any(|(_, path)| path == &status) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    api
}

/// Every `(group, resource, verb)` the operator's code paths sent.
/// Also returns the errors the operator met (a refused request shows up there).
async fn derived_grants() -> (BTreeSet<Grant>, BTreeSet<Grant>, Vec<String>) {
    let mut errors = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = url::Url::from_directory_path(dir.path())
        .expect("url")
        .to_string();
    let mut operator = BTreeSet::new();

    for namespace in [None, Some("default")] {
        let api = run_controller(namespace, &base).await;
        let calls = api.calls();
        if !calls
            .iter()
            .any(|(m, p)| m == "PATCH" && p.ends_with("/q/status"))
        {
            errors.push(format!(
                "the controller did not reconcile the query (refused: {:?})",
                api.refused(403)
            ));
        }
        operator.extend(served(&api));
    }

    // The finalizer is added, the query created, its spec changed, then it is deleted
    // (checkpoint retained).
    let (client, api) = FakeApi::start_with(vec![
        serde_json::to_value(query(false, "SELECT * FROM events")).expect("json"),
    ]);
    let ctx = context(client, &base);
    let mut deleting = query(true, "SELECT value FROM events");
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    for q in [
        query(false, "SELECT * FROM events"),
        query(true, "SELECT * FROM events"),
        query(true, "SELECT value FROM events"),
        deleting,
    ] {
        if let Err(e) = reconcile(Arc::new(q), ctx.clone()).await {
            errors.push(e.to_string());
        }
    }
    // The same event twice: the recorder patches the series.
    let event = PlannedEvent {
        severity: EventSeverity::Warning,
        reason: "CheckpointUnreachable".into(),
        action: "ClaimCheckpoint".into(),
        note: "store down".into(),
    };
    let q = query(true, "SELECT * FROM events");
    for _ in 0..2 {
        if let Err(e) = ctx.backend.publish(&q, &event).await {
            errors.push(e.to_string());
        }
    }
    let calls = api.calls();
    assert!(
        calls.iter().any(|(m, p)| m == "PATCH" && p == QUERY_PATH),
        "the finalizer was added and removed: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|(m, p)| m == "PATCH" && p.contains("/events/")),
        "a repeated event patches the series: {calls:?}"
    );
    operator.extend(served(&api));

    // One-shot and scheduled queries: a run Job (runs listed by label, their pods listed), a
    // CronJob (read, applied).
    for spec_tail in [
        "  trigger: {availableNow: true}\n",
        "  trigger: {availableNow: true}\n  schedule: {cron: '@hourly'}\n",
    ] {
        let mut run_query = query(true, "SELECT * FROM events");
        run_query.spec = parse_manifest(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q}}\nspec:\n  sources:\n    - name: events\n      rate: {{rowsPerSecond: 10}}\n  sql: SELECT * FROM events\n  sink: {{console: {{}}}}\n{spec_tail}"
        ))
        .expect("run manifest")
        .spec;
        let (client, api) =
            FakeApi::start_with(vec![serde_json::to_value(&run_query).expect("json")]);
        let ctx = context(client, &base);
        for _ in 0..2 {
            if let Err(e) = reconcile(Arc::new(run_query.clone()), ctx.clone()).await {
                errors.push(e.to_string());
            }
        }
        operator.extend(served(&api));
    }

    // The pre-upgrade check Job: applied (with its ConfigMap), then read back while it runs.
    let (client, api) = FakeApi::start_with(Vec::new());
    let check = JobCheck::new(client, Default::default());
    let request = CheckRequest {
        key: "hash@file:///ckpt/".into(),
        image: "sluice-worker:test".into(),
        manifest_yaml: "kind: StreamingQuery\n".into(),
        checkpoint_location: Some("file:///ckpt/".into()),
    };
    for _ in 0..2 {
        if let CheckOutcome::Unknown(e) = check.inspect(&q, &request).await {
            errors.push(e);
        }
    }
    // The restore Job (spec.restore): applied with its ConfigMap, then read back.
    let restore = RestoreRequest {
        batch_id: 3,
        key: "3@file:///ckpt/@1".into(),
        image: "sluice-worker:test".into(),
        manifest_yaml: "kind: StreamingQuery\n".into(),
        checkpoint_location: "file:///ckpt/".into(),
    };
    for _ in 0..2 {
        if let RestoreObservation::Unavailable(e) = check.restore(&q, &restore).await {
            errors.push(e);
        }
    }
    operator.extend(served(&api));

    // Leader election: create the Lease, then renew it.
    let (client, api) = FakeApi::start_with(Vec::new());
    let elector = LeaderElector::new(
        client,
        "sluice-system",
        "sluice-operator-leader",
        "pod-a",
        Duration::from_secs(15),
    );
    for _ in 0..2 {
        match elector.try_acquire_or_renew().await {
            Ok(true) => {}
            Ok(false) => errors.push("lease not acquired".into()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let leader = served(&api);
    (operator, leader, errors)
}

fn rendered(objects: &[Value], kind: &str, name: &str) -> BTreeSet<Grant> {
    grants(&support::helm::find(objects, kind, name)["rules"])
}

#[tokio::test]
async fn chart_rbac_grants_exactly_what_the_operator_calls() {
    let (operator, leader, errors) = derived_grants().await;
    // Sanity: the derivation saw the calls that matter (SSA create, status, watch).
    for grant in [
        ("", "configmaps", "create"),
        ("apps", "statefulsets", "watch"),
        ("sluice.dev", "streamingqueries/status", "patch"),
    ] {
        let grant = (grant.0.into(), grant.1.into(), grant.2.into());
        assert!(operator.contains(&grant), "{grant:?} in {operator:#?}");
    }
    // No pods rule (least privilege): the operator never reads pods.
    assert!(
        operator
            .iter()
            .all(|(_, resource, _)| !resource.starts_with("pods")),
        "no pods rule: {operator:#?}"
    );

    assert_eq!(operator, support::rbac::operator_grants());
    assert_eq!(leader, support::rbac::leader_election_grants());
    // The fake API server authorizes with the chart's rules: nothing was refused.
    assert_eq!(errors, Vec::<String>::new());

    let Some(helm) = support::helm::helm() else {
        return;
    };
    let cluster = support::helm::render(&helm, &[]);
    assert_eq!(rendered(&cluster, "ClusterRole", "sluice"), operator);
    assert_eq!(rendered(&cluster, "Role", "sluice-leader-election"), leader);
    let namespaced = support::helm::render(&helm, &["--set", "rbac.namespaced=true"]);
    assert_eq!(rendered(&namespaced, "Role", "sluice"), operator);
    assert_eq!(
        rendered(&namespaced, "Role", "sluice-leader-election"),
        leader
    );
}
