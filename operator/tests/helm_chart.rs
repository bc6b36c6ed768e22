//! Renders `charts/sluice` with `helm template` and checks the objects: kinds, least-privilege
//! RBAC (cluster-wide and namespaced), images, leader election, ServiceMonitor toggle, and that the
//! chart's CRD is crdgen's output. helm comes from `PATH` or `$SLUICE_CACHE/bin/helm`
//! (default `$HOME/.cache/sluice/bin/helm`, installed by `e2e/servers/install.sh`); without it the
//! tests skip loudly, unless `SLUICE_REQUIRE_SERVERS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice")
}

fn helm() -> Option<PathBuf> {
    let cache = std::env::var("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice")
        });
    let cached = cache.join("bin/helm");
    if cached.is_file() {
        return Some(cached);
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("helm"))
            .find(|p| p.is_file())
    });
    if let Some(found) = on_path.flatten() {
        return Some(found);
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "SLUICE_REQUIRE_SERVERS=1 but helm is not installed: run e2e/servers/install.sh"
    );
    eprintln!(
        "\n*** SKIPPED: helm not found on PATH or in $SLUICE_CACHE/bin; run e2e/servers/install.sh ***\n"
    );
    None
}

fn render(helm: &Path, args: &[&str]) -> Vec<Value> {
    let output = Command::new(helm)
        .args(["template", "sluice"])
        .arg(chart_dir())
        .args(["--namespace", "sluice-system", "--include-crds"])
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML parses");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `(apiGroup, resource) -> verbs` of a Role/ClusterRole.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs: Vec<String> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        for group in rule["apiGroups"].as_array().expect("groups") {
            for resource in rule["resources"].as_array().expect("resources") {
                out.push((
                    group.as_str().unwrap_or_default().into(),
                    resource.as_str().unwrap_or_default().into(),
                    verbs.clone(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn v(verbs: &[&str]) -> Vec<String> {
    verbs.iter().map(|s| s.to_string()).collect()
}

fn expected_rules() -> Vec<(String, String, Vec<String>)> {
    let mut expected = vec![
        (
            "sluice.dev".to_string(),
            "streamingqueries".to_string(),
            v(&["get", "list", "watch", "patch"]),
        ),
        (
            "sluice.dev".into(),
            "streamingqueries/status".into(),
            v(&["get", "patch"]),
        ),
        (
            "apps".into(),
            "statefulsets".into(),
            v(&["get", "list", "watch", "patch"]),
        ),
        ("".into(), "configmaps".into(), v(&["get", "patch"])),
        ("".into(), "services".into(), v(&["get", "patch"])),
        (
            "policy".into(),
            "poddisruptionbudgets".into(),
            v(&["get", "patch"]),
        ),
        ("".into(), "pods".into(), v(&["get", "list", "watch"])),
        // The pre-upgrade check runs as a Job.
        (
            "batch".into(),
            "jobs".into(),
            v(&["get", "create", "patch"]),
        ),
        (
            "events.k8s.io".into(),
            "events".into(),
            v(&["create", "patch"]),
        ),
    ];
    expected.sort();
    expected
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
    assert_eq!(rules(role), expected_rules());
    for (_, _, verbs) in rules(role) {
        assert!(
            !verbs.iter().any(|v| v == "*" || v == "delete"),
            "no wildcard or delete verbs: {verbs:?}"
        );
    }
    let lease_role = find(&objects, "Role", "sluice-leader-election");
    assert_eq!(
        rules(lease_role),
        [(
            "coordination.k8s.io".to_string(),
            "leases".to_string(),
            v(&["get", "create", "update"])
        )]
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
    assert_eq!(rules(role), expected_rules());
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
