//! RBAC as the apiserver applies it: the chart's rules, and the verbs a request needs.
//!
//! The rules are read from the chart's `_helpers.tpl` blocks `sluice.rules` (the operator's
//! ClusterRole or namespaced Role) and `sluice.leaderElectionRules` (the Lease Role), which are
//! plain YAML; `helm_chart.rs` checks that `helm template` renders exactly these.

use std::collections::BTreeSet;
use std::path::Path;

use http::Method;
use serde_json::Value;

/// One granted `(apiGroup, resource, verb)`; `resource` may be `name/subresource`.
pub type Grant = (String, String, String);

/// A request's target as the apiserver's RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Target {
    /// The object's path without subresource, e.g. `/api/v1/namespaces/default/configmaps/x`.
    pub fn object_path(&self, path: &str) -> String {
        match self.resource.split_once('/') {
            Some((_, sub)) => path
                .strip_suffix(&format!("/{sub}"))
                .unwrap_or(path)
                .to_string(),
            None => path.to_string(),
        }
    }
}

/// Parses an API path: `/api/v1/...` (core group) or `/apis/<group>/<version>/...`, optionally
/// `namespaces/<ns>/`, then `<resource>[/<name>[/<subresource>]]`.
pub fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => ((*resource).to_string(), None),
        [resource, name] => ((*resource).to_string(), Some((*name).to_string())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some((*name).to_string())),
        _ => return None,
    };
    Some(Target {
        group,
        resource,
        namespace,
        name,
    })
}

/// The RBAC verb of a request (the apiserver's request-info mapping).
pub fn verb(method: &Method, target: &Target, query: &str) -> &'static str {
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    match (method.as_str(), target.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// The verbs a request needs: its own, plus `create` for a server-side apply that creates the
/// object (the apiserver authorizes the create separately).
pub fn required_verbs(
    method: &Method,
    target: &Target,
    query: &str,
    server_side_apply: bool,
    exists: bool,
) -> Vec<&'static str> {
    let own = verb(method, target, query);
    if own == "patch" && server_side_apply && !exists {
        vec!["patch", "create"]
    } else {
        vec![own]
    }
}

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice")
}

/// The YAML of a `{{- define "<name>" -}}` block of `_helpers.tpl`.
fn define_block(name: &str) -> String {
    let text = std::fs::read_to_string(chart_dir().join("templates/_helpers.tpl"))
        .expect("charts/sluice/templates/_helpers.tpl");
    let start = format!("{{{{- define \"{name}\" -}}}}");
    let body = text
        .split_once(&start)
        .unwrap_or_else(|| panic!("no define {name} in _helpers.tpl"))
        .1;
    let body = body.split_once("{{- end -}}").expect("define block ends").0;
    assert!(
        !body.contains("{{"),
        "{name} must stay plain YAML (the fake API server reads it)"
    );
    body.to_string()
}

/// `(group, resource, verb)` grants of a list of RBAC rules.
pub fn grants(rules: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().map(Vec::as_slice).unwrap_or_default() {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                for verb in strings("verbs") {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// The operator's grants (ClusterRole or namespaced Role), from the chart.
pub fn operator_grants() -> BTreeSet<Grant> {
    grants(&serde_saphyr::from_str(&define_block("sluice.rules")).expect("rules YAML"))
}

/// The leader-election Role's grants, from the chart.
pub fn leader_election_grants() -> BTreeSet<Grant> {
    grants(
        &serde_saphyr::from_str(&define_block("sluice.leaderElectionRules")).expect("rules YAML"),
    )
}

/// Everything the operator's service account may do.
pub fn all_grants() -> BTreeSet<Grant> {
    operator_grants()
        .into_iter()
        .chain(leader_election_grants())
        .collect()
}
