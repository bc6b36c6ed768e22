//! Renders `charts/sluice` with `helm template` and checks the objects: kinds, least-privilege
//! RBAC (cluster-wide and namespaced; `rbac.rs` derives the verbs from the operator's calls),
//! images, leader election, ServiceMonitor toggle, and that the chart's CRD is crdgen's output.
//! helm comes from `support::helm` (skipped loudly without it).

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};
use support::helm::{chart_dir, find, helm, render};
use support::rbac::{Grant, grants};

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect();
    kinds.sort();
    kinds
}

/// The operator's rules as `(group, resource, verb)`: exactly the chart's `sluice.rules`, which
/// `rbac.rs` derives from the operator's calls.
fn expected_grants() -> BTreeSet<Grant> {
    support::rbac::operator_grants()
}

#[test]
fn default_render_is_cluster_wide_least_privilege() {
    let Some(helm) = helm() else { return };
    let objects = render(
        &helm,
        &[
            "--set",
            "checkpoint.defaultLocation=s3://ckpt/",
            "--set",
            "image.tag=v9",
        ],
    );
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let role = find(&objects, "ClusterRole", "sluice");
    let granted = grants(&role["rules"]);
    assert_eq!(granted, expected_grants());
    for (group, resource, verb) in &granted {
        assert!(
            verb != "*" && verb != "delete" && resource != "*" && group != "*",
            "no wildcards or delete: {group}/{resource} {verb}"
        );
        // Secrets: only the creation of each query's control Secret; none is read or changed.
        assert!(
            resource != "secrets" || verb == "create",
            "the operator reads no secrets: secrets {verb}"
        );
        // No pods rule: outcomes come from the StatefulSet's status and `GET /report`.
        assert!(
            !resource.starts_with("pods"),
            "no pods rule: {resource} {verb}"
        );
    }
    // Server-side apply creates the children: create with patch on every applied kind.
    for resource in [
        "configmaps",
        "services",
        "statefulsets",
        "poddisruptionbudgets",
    ] {
        for verb in ["create", "patch"] {
            assert!(
                granted.iter().any(|(_, r, v)| r == resource && v == verb),
                "{resource} {verb}"
            );
        }
    }
    let lease_role = find(&objects, "Role", "sluice-leader-election");
    assert_eq!(
        grants(&lease_role["rules"]),
        support::rbac::leader_election_grants()
    );

    let deployment = find(&objects, "Deployment", "sluice");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/sluice/sluice-operator:v9");
    assert_eq!(
        container["args"],
        json!([
            "kubernetes",
            "--metrics-port=8080",
            "--leader-election=true"
        ])
    );
    let env = container["env"].as_array().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        value("SLUICE_WORKER_IMAGE"),
        Some(json!("ghcr.io/sluice/sluice-worker:0.1.0"))
    );
    assert_eq!(
        value("SLUICE_DEFAULT_CHECKPOINT_LOCATION"),
        Some(json!("s3://ckpt/"))
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "sluice"
    );

    let crd = find(
        &objects,
        "CustomResourceDefinition",
        "streamingqueries.sluice.dev",
    );
    let generated: Value =
        serde_saphyr::from_str(&sluice_crds::crd::crd_yaml().expect("crd")).expect("yaml");
    assert_eq!(crd, &generated, "the chart's CRD is crdgen's output");
}

#[test]
fn namespaced_rbac_and_service_monitor() {
    let Some(helm) = helm() else { return };
    let objects = render(
        &helm,
        &[
            "--set",
            "rbac.namespaced=true",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "checkpoint.credentialsSecret=s3",
        ],
    );
    assert!(
        !kinds(&objects).iter().any(|k| k.starts_with("Cluster")),
        "{:?}",
        kinds(&objects)
    );
    let role = find(&objects, "Role", "sluice");
    assert_eq!(role["metadata"]["namespace"], "sluice-system");
    assert_eq!(grants(&role["rules"]), expected_grants());
    let binding = find(&objects, "RoleBinding", "sluice");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    let deployment = find(&objects, "Deployment", "sluice");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .contains(&json!("--namespace=sluice-system"))
    );
    assert_eq!(container["envFrom"], json!([{"secretRef": {"name": "s3"}}]));
    let monitor = find(&objects, "ServiceMonitor", "sluice");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn helm_lint_is_clean() {
    let Some(helm) = helm() else { return };
    let output = Command::new(helm)
        .arg("lint")
        .arg(chart_dir())
        .output()
        .expect("helm runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("0 chart(s) failed"), "{text}");
}

/// Only the operator and Prometheus reach the workers' HTTP port (the chart's NetworkPolicy, on
/// by default, in every namespace listed).
#[test]
fn network_policy_lets_only_the_operator_and_prometheus_reach_workers() {
    let Some(helm) = helm() else { return };
    let objects = render(&helm, &[]);
    let policy = find(&objects, "NetworkPolicy", "sluice-workers");
    assert_eq!(policy["metadata"]["namespace"], "sluice-system");
    assert_eq!(
        policy["spec"]["podSelector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "sluice-worker"}})
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "sluice-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "sluice-operator",
                                                 "app.kubernetes.io/instance": "sluice"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 9464}, {"protocol": "TCP", "port": 9465}]
        }])
    );
    // The operator's pods carry the labels the policy admits.
    let deployment = find(&objects, "Deployment", "sluice");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"],
        json!({"app.kubernetes.io/name": "sluice-operator", "app.kubernetes.io/instance": "sluice"})
    );

    let objects = render(
        &helm,
        &["--set", "networkPolicy.namespaces={team-a,team-b}"],
    );
    let namespaces: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .map(|o| &o["metadata"]["namespace"])
        .collect();
    assert_eq!(namespaces, [&json!("team-a"), &json!("team-b")]);
    let objects = render(&helm, &["--set", "networkPolicy.enabled=false"]);
    assert!(!kinds(&objects).contains(&"NetworkPolicy".to_string()));
}

#[test]
fn images_are_referenced_by_digest_when_set() {
    let Some(helm) = helm() else { return };
    let digest = format!("sha256:{}", "a".repeat(64));
    let objects = render(
        &helm,
        &[
            "--set",
            &format!("image.digest={digest}"),
            "--set",
            &format!("workerImage.digest={digest}"),
            "--set",
            "image.tag=v9",
        ],
    );
    let container =
        &find(&objects, "Deployment", "sluice")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/sluice/sluice-operator@{digest}")
    );
    let worker = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SLUICE_WORKER_IMAGE")
        .expect("worker image");
    assert_eq!(
        worker["value"],
        format!("ghcr.io/sluice/sluice-worker@{digest}")
    );
}

/// Evaluates the rendered ValidatingAdmissionPolicy's CEL (variables, then validations) over
/// `object`, as the apiserver does; returns the messages of the failed validations.
fn admission_refusals(policy: &Value, object: &Value) -> Vec<String> {
    let mut context = cel::Context::default();
    context
        .add_variable("object", object.clone())
        .expect("object");
    let mut variables = std::collections::HashMap::new();
    for variable in policy["spec"]["variables"].as_array().expect("variables") {
        let program = cel::Program::compile(variable["expression"].as_str().expect("expression"))
            .expect("compiles");
        let value = program.execute(&context).expect("evaluates");
        variables.insert(variable["name"].as_str().expect("name").to_string(), value);
    }
    context.add_variable_from_value("variables", variables);
    let mut refusals = Vec::new();
    for validation in policy["spec"]["validations"]
        .as_array()
        .expect("validations")
    {
        let program = cel::Program::compile(validation["expression"].as_str().expect("expression"))
            .expect("compiles");
        if program.execute(&context).expect("evaluates") != cel::Value::Bool(true) {
            refusals.push(
                validation["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    refusals
}

#[test]
fn admission_policy_refuses_other_images_and_secrets() {
    let Some(helm) = helm() else { return };
    let objects = render(
        &helm,
        &[
            "--set",
            "admissionPolicy.enabled=true",
            "--set",
            "allowedImages={registry.example/sluice/*,ghcr.io/sluice/sluice-worker:0.1.*}",
            "--set",
            "allowedSecrets={pg-password}",
            "--set",
            "checkpoint.credentialsSecret=minio-credentials",
        ],
    );
    let policy = find(
        &objects,
        "ValidatingAdmissionPolicy",
        "sluice-streamingqueries",
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"],
        json!(["streamingqueries"])
    );
    let binding = find(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "sluice-streamingqueries",
    );
    assert_eq!(binding["spec"]["policyName"], "sluice-streamingqueries");
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));

    let query = |spec: Value| {
        let mut spec_object = json!({"sources": [{"name": "e", "rate": {"rowsPerSecond": 1}}],
                                     "sql": "SELECT * FROM e", "sink": {"console": {}}});
        for (k, v) in spec.as_object().expect("object") {
            spec_object[k] = v.clone();
        }
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingQuery",
               "metadata": {"name": "q"}, "spec": spec_object})
    };
    let secret_env = |name: &str| {
        json!([{"name": "PGPASSWORD",
                "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}},
               {"name": "PLAIN", "value": "x"}])
    };
    let image_refused = "spec.image is not one of the chart's allowedImages";
    let env_refused = "spec.env reads a Secret (valueFrom.secretKeyRef) that is not one of the chart's allowedSecrets";
    let storage_refused = "spec.storageSecretRef is not one of the chart's allowedSecrets";
    for (spec, expected) in [
        (json!({}), vec![]),
        (json!({"image": "registry.example/sluice/worker:1"}), vec![]),
        (
            json!({"image": "ghcr.io/sluice/sluice-worker:0.1.3"}),
            vec![],
        ),
        (
            json!({"image": "ghcr.io/sluice/sluice-worker:0.2.0"}),
            vec![image_refused],
        ),
        // `.` is not a wildcard: registryXexample does not match registry.example.
        (
            json!({"image": "registryXexample/sluice/worker:1"}),
            vec![image_refused],
        ),
        (
            json!({"image": "evil.example/miner:latest"}),
            vec![image_refused],
        ),
        (json!({"env": secret_env("pg-password")}), vec![]),
        (
            json!({"env": secret_env("cluster-admin-token")}),
            vec![env_refused],
        ),
        (json!({"storageSecretRef": "minio-credentials"}), vec![]),
        (
            json!({"storageSecretRef": "other-team-s3"}),
            vec![storage_refused],
        ),
    ] {
        assert_eq!(
            admission_refusals(policy, &query(spec.clone())),
            expected,
            "{spec}"
        );
    }

    // Without allowedImages only the chart's worker repository is allowed; off by default.
    let objects = render(&helm, &["--set", "admissionPolicy.enabled=true"]);
    let policy = find(
        &objects,
        "ValidatingAdmissionPolicy",
        "sluice-streamingqueries",
    );
    assert_eq!(
        admission_refusals(
            policy,
            &query(
                json!({"image": format!("ghcr.io/sluice/sluice-worker@sha256:{}", "b".repeat(64))})
            )
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        admission_refusals(policy, &query(json!({"image": "ghcr.io/sluice/other:1"}))),
        [image_refused]
    );
    assert!(!kinds(&render(&helm, &[])).contains(&"ValidatingAdmissionPolicy".to_string()));
}
