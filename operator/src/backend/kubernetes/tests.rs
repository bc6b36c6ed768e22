//! Exact shape of the children built for a desired deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use serde_json::json;
use sluice_crds::parse_manifest;

use super::*;

fn query() -> StreamingQuery {
    parse_manifest(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {name: q, namespace: prod, uid: uid-1, generation: 3}\nspec:\n  sources: [{name: events, rate: {rowsPerSecond: 5}}]\n  sql: SELECT * FROM events\n  sink: {console: {}}\n  storageSecretRef: s3-creds\n  env: [{name: RUST_LOG, value: debug}]\n",
    )
    .expect("valid")
}

fn desired() -> DesiredWorkers {
    DesiredWorkers {
        generation: 4,
        replicas: 3,
        image: "sluice-worker:v1".into(),
        manifest_yaml: "kind: StreamingQuery\n".into(),
        checkpoint_location: "s3://c/prod/q/uid-1/".into(),
        restart_hash: "abc".into(),
        section_hashes: BTreeMap::from([("sql".to_string(), "1".to_string())]),
        env: vec![EnvVar {
            name: "RUST_LOG".into(),
            value: Some("debug".into()),
            ..EnvVar::default()
        }],
        resources: None,
        storage_secret_ref: Some("s3-creds".into()),
        http_port: 9464,
        stop_first: false,
        restart_nonce: None,
        run: None,
    }
}

#[test]
fn stateful_set_runs_the_worker_as_specified() {
    let set =
        serde_json::to_value(stateful_set(&query(), &desired()).expect("builds")).expect("json");
    assert_eq!(set["apiVersion"], "apps/v1");
    assert_eq!(set["kind"], "StatefulSet");
    assert_eq!(set["metadata"]["name"], "sluice-q");
    assert_eq!(set["metadata"]["namespace"], "prod");
    assert_eq!(
        set["metadata"]["ownerReferences"],
        json!([{"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery", "name": "q", "uid": "uid-1", "controller": true}])
    );
    assert_eq!(set["metadata"]["annotations"][GENERATION_ANNOTATION], "4");
    assert_eq!(
        set["metadata"]["annotations"][RESTART_HASH_ANNOTATION],
        "abc"
    );
    let spec = &set["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["serviceName"], "sluice-q");
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(
        spec["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "sluice-worker", "sluice.dev/query": "q"})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "sluice-worker:v1");
    assert_eq!(container["command"], json!(["sluice-worker"]));
    assert_eq!(
        container["args"],
        json!([
            "pod",
            "--manifest",
            "/etc/sluice/query.yaml",
            "--http-port",
            "9464"
        ])
    );
    assert_eq!(
        container["ports"],
        json!([
            {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
            {"name": "report", "containerPort": 9465, "protocol": "TCP"}
        ])
    );
    // A worker that stops on an error reports on `GET /report` for a minute, and counts its
    // starts in a pod-scoped volume (no pods permission needed to see a crash loop).
    assert!(
        container["env"]
            .as_array()
            .expect("env")
            .contains(&json!({"name": "SLUICE_REPORT_HOLD_SECONDS", "value": "60"})),
        "{container}"
    );

    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["envFrom"],
        json!([{"secretRef": {"name": "s3-creds", "optional": false}}])
    );
    let env: BTreeMap<String, serde_json::Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e.clone(),
            )
        })
        .collect();
    assert_eq!(env["SLUICE_REPLICA_COUNT"]["value"], "3");
    assert_eq!(env["SLUICE_GENERATION"]["value"], "4");
    assert_eq!(
        env["SLUICE_CHECKPOINT_LOCATION"]["value"],
        "s3://c/prod/q/uid-1/"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env["RUST_LOG"]["value"], "debug");
    assert_eq!(
        env["SLUICE_CONTROL_TOKEN_FILE"]["value"],
        "/var/run/sluice/control/token"
    );
    assert_eq!(
        container["volumeMounts"],
        json!([
            {"name": "query", "mountPath": "/etc/sluice", "readOnly": true},
            {"name": "control", "mountPath": "/var/run/sluice/control", "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "run", "mountPath": "/var/run/sluice/run"}
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "query", "configMap": {"name": "sluice-q"}},
            {"name": "control", "secret": {"secretName": "sluice-q-control", "defaultMode": 0o400, "optional": false}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "run", "emptyDir": {}}
        ])
    );
}

#[test]
fn control_secret_holds_the_token_and_belongs_to_the_query() {
    let token = ControlToken::generate().expect("token");
    let secret =
        serde_json::to_value(control_secret(&query(), &token).expect("builds")).expect("json");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "sluice-q-control");
    assert_eq!(secret["metadata"]["namespace"], "prod");
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery", "name": "q", "uid": "uid-1", "controller": true}])
    );
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["stringData"], json!({"token": token.expose()}));
}

#[test]
fn spec_env_cannot_replace_the_control_token_file() {
    let mut desired = desired();
    desired.env.push(EnvVar {
        name: "SLUICE_CONTROL_TOKEN_FILE".into(),
        value: Some("/tmp/mine".into()),
        ..EnvVar::default()
    });
    let set =
        serde_json::to_value(stateful_set(&query(), &desired).expect("builds")).expect("json");
    let files: Vec<&serde_json::Value> = set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| e["name"] == "SLUICE_CONTROL_TOKEN_FILE")
        .map(|e| &e["value"])
        .collect();
    assert_eq!(files, [&json!("/var/run/sluice/control/token")]);
}

#[test]
fn config_map_service_and_pdb() {
    let cm = serde_json::to_value(config_map(&query(), &desired()).expect("builds")).expect("json");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"], json!({"query.yaml": "kind: StreamingQuery\n"}));
    let svc = serde_json::to_value(service(&query(), &desired()).expect("builds")).expect("json");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "metrics", "port": 9464, "targetPort": "metrics"}])
    );
    let pdb = serde_json::to_value(pod_disruption_budget(&query()).expect("builds")).expect("json");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["sluice.dev/query"],
        "q"
    );
}

#[test]
fn observation_reads_back_what_was_built() {
    let mut set = stateful_set(&query(), &desired()).expect("builds");
    set.metadata.generation = Some(2);
    set.status = Some(StatefulSetStatus {
        observed_generation: Some(2),
        replicas: 3,
        ready_replicas: Some(3),
        updated_replicas: Some(3),
        current_revision: Some("r2".into()),
        update_revision: Some("r2".into()),
        ..StatefulSetStatus::default()
    });
    let observed = observe_stateful_set(&set);
    assert_eq!(
        observed,
        WorkersObservation {
            generation: 4,
            restart_hash: "abc".into(),
            section_hashes: desired().section_hashes,
            replicas: 3,
            ready_replicas: 3,
            rollout_complete: true,
            ..WorkersObservation::default()
        }
    );
    // An update still rolling: not complete.
    if let Some(status) = set.status.as_mut() {
        status.update_revision = Some("r3".into());
    }
    assert!(!observe_stateful_set(&set).rollout_complete);
}
