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
        assert!(
            !["pods", "secrets"].contains(&resource.as_str()),
            "the operator reads no {resource}"
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
