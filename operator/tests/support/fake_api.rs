//! A strict fake Kubernetes API server for the operator's tests (kube's tower-test pattern, after
//! kube-rs/controller-rs `fixtures.rs`). It keeps objects, records every request, and refuses
//! what a real apiserver refuses:
//!
//! * **403 Forbidden** for a request whose verb on its resource the chart's RBAC does not grant
//!   ([`super::rbac`]; a server-side apply that creates its object needs `create` too);
//! * **422 Invalid** for a `StreamingQuery` (object or status) that violates the CRD's schema
//!   (types, `maxLength`/`maxItems`/`maxProperties`, enums, required fields) or its CEL rules,
//!   transition rules included ([`super::schema`]);
//! * **409 Conflict** for a server-side apply without `force` that changes a field another field
//!   manager owns. Ownership is modelled per top-level field of `spec`, `status` and `data`
//!   (`spec.replicas`, `status.phase`, ...): every write takes the fields it sets for its manager
//!   (`fieldManager`, or `unknown` for writes without one). A real apiserver tracks every leaf;
//!   the coarser model refuses at least what it refuses for these objects' shapes;
//! * **409 AlreadyExists** for a create of an existing object, **409 Conflict** for a PUT with a
//!   stale `resourceVersion`, **404** for reads, updates and non-apply patches of missing objects.
//!
//! Watches are answered after a minute with an empty stream (a controller under test sees no
//! events); lists answer the stored objects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::rbac::{self, Grant, Target};
use super::schema;

/// One request as the API server saw it, with its answer.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/default/statefulsets/sluice-q?...`.
    pub uri: String,
    pub content_type: String,
    pub body: Value,
    /// RBAC verbs the request needed (`create` too for a server-side apply that created).
    pub verbs: Vec<&'static str>,
    pub target: Option<Target>,
    /// HTTP status answered.
    pub status: u16,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// `(group, resource, verb)` for every verb the request needed.
    pub fn grants(&self) -> Vec<Grant> {
        self.target
            .iter()
            .flat_map(|t| {
                self.verbs
                    .iter()
                    .map(|v| (t.group.clone(), t.resource.clone(), (*v).to_string()))
            })
            .collect()
    }
}

/// Server state: objects by path, field owners, the request log.
struct State {
    objects: BTreeMap<String, Value>,
    /// object path -> top-level field (`spec.replicas`) -> field manager.
    owners: BTreeMap<String, BTreeMap<String, String>>,
    requests: Vec<Recorded>,
    grants: std::collections::BTreeSet<Grant>,
    crd_schema: Value,
    resource_version: u64,
}

/// Handle on a running fake API server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

/// A `metav1.Status` failure as the apiserver writes it.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The top-level fields a write sets: `spec.<key>`, `status.<key>`, `data.<key>`.
fn fields(object: &Value, sections: &[&str]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for section in sections {
        if let Some(map) = object.get(*section).and_then(Value::as_object) {
            for (key, value) in map {
                out.insert(format!("{section}.{key}"), value.clone());
            }
        }
    }
    out
}

fn field_value<'a>(object: &'a Value, field: &str) -> Option<&'a Value> {
    let (section, key) = field.split_once('.')?;
    object.get(section)?.get(key)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(object) = target.as_object_mut() else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The CRD's resource (`sluice.dev` objects are validated against its schema).
fn is_streaming_query(target: &Target) -> bool {
    target.group == "sluice.dev" && target.resource.starts_with("streamingqueries")
}

impl FakeApi {
    /// Starts the fake server holding `objects` (each with `apiVersion`, `kind` and `metadata`).
    pub fn start_with(objects: Vec<Value>) -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = Self {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                owners: BTreeMap::new(),
                requests: Vec::new(),
                grants: rbac::all_grants(),
                crd_schema: schema::streaming_query_schema(),
                resource_version: 1,
            })),
        };
        for object in objects {
            api.insert(object);
        }
        let server = api.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let uri = request.uri().to_string();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, answer, watch) = server.handle(&method, &uri, &content_type, &body);
                let response = respond(status, &answer);
                if watch {
                    // A watch stays open; the controller under test sees no event.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        send.send_response(response);
                    });
                } else {
                    send.send_response(response);
                }
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Path of an object from its `apiVersion`, `kind` (lower-case plural) and metadata.
    pub fn path_of(object: &Value) -> String {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1");
        let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
        let plural = if kind.ends_with('y') {
            format!("{}ies", kind.trim_end_matches('y'))
        } else {
            format!("{kind}s")
        };
        let prefix = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match object["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
            None => format!("{prefix}/{plural}/{name}"),
        }
    }

    /// Stores `object` as if created earlier by `kubectl` (which owns its spec fields).
    pub fn insert(&self, mut object: Value) {
        let path = Self::path_of(&object);
        let mut state = self.lock();
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let owned = fields(&object, &["spec", "data"])
            .into_keys()
            .map(|f| (f, "kubectl-client-side-apply".to_string()))
            .collect();
        state.owners.insert(path.clone(), owned);
        state.objects.insert(path, object);
    }

    /// Makes `manager` the owner of `field` (`spec.replicas`) of the object at `path`.
    pub fn set_owner(&self, path: &str, field: &str, manager: &str) {
        self.lock()
            .owners
            .entry(path.to_string())
            .or_default()
            .insert(field.to_string(), manager.to_string());
    }

    /// The owner of `field` of the object at `path`.
    pub fn owner(&self, path: &str, field: &str) -> Option<String> {
        self.lock()
            .owners
            .get(path)
            .and_then(|o| o.get(field).cloned())
    }

    /// The stored object at `path`.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// `(method, path)` of every request, in order.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .map(|r| (r.method.to_string(), r.path().to_string()))
            .collect()
    }

    /// The body of the last `method` request to `path`.
    pub fn body_of(&self, method: &str, path: &str) -> Value {
        // The last one: a stop-first rollout patches the StatefulSet twice (scale to 0, then
        // the new deployment).
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.method.as_str() == method && r.path() == path)
            .map(|r| r.body)
            .unwrap_or_else(|| panic!("no {method} {path} in {:?}", self.calls()))
    }

    /// Requests refused with `status`, as `(method, path)`.
    pub fn refused(&self, status: u16) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .filter(|r| r.status == status)
            .map(|r| (r.method.to_string(), r.path().to_string()))
            .collect()
    }

    fn handle(
        &self,
        method: &Method,
        uri: &str,
        content_type: &str,
        body: &Value,
    ) -> (StatusCode, Value, bool) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let target = rbac::target(path);
        let apply = content_type.starts_with("application/apply-patch");
        let mut state = self.lock();
        let object_path = target.as_ref().map(|t| {
            if *method == Method::POST {
                // A create names its object in the body.
                let name = body["metadata"]["name"].as_str().unwrap_or("generated");
                format!("{path}/{name}")
            } else {
                t.object_path(path)
            }
        });
        let exists = object_path
            .as_ref()
            .is_some_and(|p| state.objects.contains_key(p));
        let verbs = target
            .as_ref()
            .map(|t| rbac::required_verbs(method, t, query, apply, exists))
            .unwrap_or_default();
        let mut recorded = Recorded {
            method: method.clone(),
            uri: uri.to_string(),
            content_type: content_type.to_string(),
            body: body.clone(),
            verbs: verbs.clone(),
            target: target.clone(),
            status: 0,
        };
        let (status, answer, watch) = match (&target, &object_path) {
            (Some(target), Some(object_path)) => match Self::authorize(&state, target, &verbs) {
                Err(refusal) => (StatusCode::FORBIDDEN, refusal, false),
                Ok(()) => Self::serve(
                    &mut state,
                    target,
                    object_path,
                    query,
                    content_type,
                    body,
                    &verbs,
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                failure(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
                false,
            ),
        };
        recorded.status = status.as_u16();
        state.requests.push(recorded);
        (status, answer, watch)
    }

    fn authorize(state: &State, target: &Target, verbs: &[&str]) -> Result<(), Value> {
        for verb in verbs {
            let grant = (
                target.group.clone(),
                target.resource.clone(),
                (*verb).to_string(),
            );
            if !state.grants.contains(&grant) {
                let (resource, sub) = target
                    .resource
                    .split_once('/')
                    .map_or((target.resource.as_str(), ""), |(r, s)| (r, s));
                let name = target.name.as_deref().unwrap_or_default();
                let scope = target
                    .namespace
                    .as_ref()
                    .map(|ns| format!(" in the namespace \"{ns}\""))
                    .unwrap_or_else(|| " at the cluster scope".into());
                let resource_text = if sub.is_empty() {
                    resource.to_string()
                } else {
                    format!("{resource}/{sub}")
                };
                return Err(failure(
                    403,
                    "Forbidden",
                    &format!(
                        "{resource} \"{name}\" is forbidden: User \"system:serviceaccount:sluice-system:sluice\" cannot {verb} resource \"{resource_text}\" in API group \"{}\"{scope}",
                        target.group
                    ),
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        state: &mut State,
        target: &Target,
        object_path: &str,
        query: &str,
        content_type: &str,
        body: &Value,
        verbs: &[&str],
    ) -> (StatusCode, Value, bool) {
        let verb = verbs.first().copied().unwrap_or_default();
        let status_subresource = target.resource.ends_with("/status");
        let manager = query_param(query, "fieldManager")
            .unwrap_or("unknown")
            .to_string();
        let force = query_param(query, "force") == Some("true");
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                failure(
                    404,
                    "NotFound",
                    &format!(
                        "{} \"{}\" not found",
                        target.resource,
                        target.name.as_deref().unwrap_or_default()
                    ),
                ),
                false,
            )
        };
        match verb {
            "get" => match state.objects.get(object_path) {
                Some(object) => (StatusCode::OK, object.clone(), false),
                None => not_found(),
            },
            "list" | "watch" => {
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(p, _)| {
                        rbac::target(p).is_some_and(|t| {
                            t.group == target.group
                                && t.resource == target.resource
                                && (target.namespace.is_none() || t.namespace == target.namespace)
                        })
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let list = json!({"kind": "List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": state.resource_version.to_string()},
                                  "items": items});
                (StatusCode::OK, list, verb == "watch")
            }
            "delete" => match state.objects.remove(object_path) {
                Some(object) => {
                    state.owners.remove(object_path);
                    (StatusCode::OK, object, false)
                }
                None => not_found(),
            },
            "create" | "update" | "patch" => {
                let old = state.objects.get(object_path).cloned();
                let mut new = match (verb, &old) {
                    ("create", Some(_)) => {
                        return (
                            StatusCode::CONFLICT,
                            failure(
                                409,
                                "AlreadyExists",
                                &format!("{} already exists", target.resource),
                            ),
                            false,
                        );
                    }
                    ("create", None) => {
                        let mut object = body.clone();
                        if let Some(ns) = &target.namespace {
                            object["metadata"]["namespace"] = json!(ns);
                        }
                        object
                    }
                    (_, None) if !(verb == "patch" && content_type.contains("apply")) => {
                        return not_found();
                    }
                    ("update", Some(old)) => {
                        let sent = body["metadata"]["resourceVersion"].as_str();
                        if sent.is_some() && sent != old["metadata"]["resourceVersion"].as_str() {
                            return (
                                StatusCode::CONFLICT,
                                failure(
                                    409,
                                    "Conflict",
                                    "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                                ),
                                false,
                            );
                        }
                        body.clone()
                    }
                    (_, old) => {
                        let mut object = old.clone().unwrap_or_else(|| {
                            let mut fresh = body.clone();
                            fresh["metadata"]["namespace"] =
                                json!(target.namespace.clone().unwrap_or_default());
                            fresh
                        });
                        if content_type.contains("json-patch") {
                            let patch: json_patch::Patch =
                                match serde_json::from_value(body.clone()) {
                                    Ok(patch) => patch,
                                    Err(e) => {
                                        return (
                                            StatusCode::BAD_REQUEST,
                                            failure(400, "BadRequest", &e.to_string()),
                                            false,
                                        );
                                    }
                                };
                            // As the apiserver's json-patch: `test` of null passes on a missing
                            // field (kube's finalizer helper tests `/metadata/finalizers` so).
                            let patch = json_patch::Patch(
                                patch
                                    .0
                                    .into_iter()
                                    .filter(|op| match op {
                                        json_patch::PatchOperation::Test(test) => {
                                            !(test.value.is_null()
                                                && object.pointer(test.path.as_str()).is_none())
                                        }
                                        _ => true,
                                    })
                                    .collect(),
                            );
                            if let Err(e) = json_patch::patch(&mut object, &patch) {
                                return (
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    failure(422, "Invalid", &e.to_string()),
                                    false,
                                );
                            }
                        } else if content_type.contains("apply") {
                            Self::apply_sections(&mut object, body, status_subresource);
                        } else {
                            merge_patch(&mut object, body);
                        }
                        object
                    }
                };
                // The status subresource writes status only; the object writes everything else.
                if let Some(old) = &old {
                    if status_subresource {
                        let status = new.get("status").cloned();
                        new = old.clone();
                        match status {
                            Some(status) => new["status"] = status,
                            None => {
                                new.as_object_mut().map(|o| o.remove("status"));
                            }
                        }
                    } else if is_streaming_query(target) {
                        new["status"] = old.get("status").cloned().unwrap_or(Value::Null);
                        if new["status"].is_null() {
                            new.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                }
                let sections: &[&str] = if status_subresource {
                    &["status"]
                } else {
                    &["spec", "data"]
                };
                let written = fields(&new, sections);
                if content_type.contains("apply") && !force {
                    let owners = state.owners.get(object_path);
                    let conflicts: Vec<String> = fields(body, sections)
                        .iter()
                        .filter(|(field, value)| {
                            owners
                                .and_then(|o| o.get(*field))
                                .is_some_and(|owner| owner != &manager)
                                && old
                                    .as_ref()
                                    .and_then(|o| field_value(o, field))
                                    .is_some_and(|current| current != *value)
                        })
                        .map(|(field, _)| {
                            let owner = owners
                                .and_then(|o| o.get(field))
                                .cloned()
                                .unwrap_or_default();
                            format!("conflict with \"{owner}\": .{field}")
                        })
                        .collect();
                    if !conflicts.is_empty() {
                        return (
                            StatusCode::CONFLICT,
                            failure(
                                409,
                                "Conflict",
                                &format!(
                                    "Apply failed with {} conflict(s): {}",
                                    conflicts.len(),
                                    conflicts.join("; ")
                                ),
                            ),
                            false,
                        );
                    }
                }
                if is_streaming_query(target) {
                    let refusals = schema::refusals(&state.crd_schema, &new, old.as_ref());
                    if !refusals.is_empty() {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            failure(
                                422,
                                "Invalid",
                                &format!(
                                    "StreamingQuery.sluice.dev \"{}\" is invalid: {}",
                                    target.name.as_deref().unwrap_or_default(),
                                    refusals.join(", ")
                                ),
                            ),
                            false,
                        );
                    }
                }
                // Fields this write changed now belong to its manager.
                let owners = state.owners.entry(object_path.to_string()).or_default();
                let touched: Vec<String> = if content_type.contains("apply") {
                    fields(body, sections).into_keys().collect()
                } else {
                    written
                        .iter()
                        .filter(|(field, value)| {
                            old.as_ref().and_then(|o| field_value(o, field)) != Some(*value)
                        })
                        .map(|(field, _)| field.clone())
                        .collect()
                };
                for field in touched {
                    owners.insert(field, manager.clone());
                }
                state.resource_version += 1;
                new["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                if !status_subresource && old.as_ref().map(|o| &o["spec"]) != Some(&new["spec"]) {
                    let generation = old
                        .as_ref()
                        .and_then(|o| o["metadata"]["generation"].as_i64())
                        .unwrap_or(0);
                    new["metadata"]["generation"] = json!(generation + 1);
                    if new["kind"] == "StatefulSet" {
                        Self::stateful_set_controller(&mut new);
                    }
                }
                state.objects.insert(object_path.to_string(), new.clone());
                let code = if old.is_none() {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                (code, new, false)
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                failure(405, "MethodNotAllowed", "not supported by the fake API"),
                false,
            ),
        }
    }

    /// What the StatefulSet controller does at once in this fake: it observes the new generation,
    /// and a scale-down removes the surplus pods right away (`status.replicas` and
    /// `readyReplicas` drop to `spec.replicas`; no pod starts by itself).
    fn stateful_set_controller(set: &mut Value) {
        let desired = set["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = set["metadata"]["generation"].clone();
        if !set["status"].is_object() {
            set["status"] = json!({});
        }
        let status = &mut set["status"];
        status["observedGeneration"] = generation;
        for field in [
            "replicas",
            "readyReplicas",
            "updatedReplicas",
            "availableReplicas",
        ] {
            if let Some(count) = status[field].as_i64() {
                status[field] = json!(count.min(desired));
            }
        }
        if status["replicas"].is_null() {
            status["replicas"] = json!(0);
        }
    }

    /// Server-side apply of `body` onto `object`: the applied top-level sections replace the
    /// stored ones key by key; metadata labels, annotations and owner references are merged.
    fn apply_sections(object: &mut Value, body: &Value, status_subresource: bool) {
        let Some(applied) = body.as_object() else {
            return;
        };
        for (key, value) in applied {
            match key.as_str() {
                "apiVersion" | "kind" => object[key] = value.clone(),
                "metadata" => {
                    for field in ["labels", "annotations"] {
                        if let Some(map) = value.get(field).and_then(Value::as_object) {
                            for (k, v) in map {
                                object["metadata"][field][k] = v.clone();
                            }
                        }
                    }
                    if let Some(refs) = value.get("ownerReferences") {
                        object["metadata"]["ownerReferences"] = refs.clone();
                    }
                }
                "status" if !status_subresource => {}
                // The operator is the only writer of status: its apply replaces it.
                "status" => object[key] = value.clone(),
                _ => {
                    if let (Some(stored), Some(applied)) = (
                        object.get_mut(key).and_then(Value::as_object_mut),
                        value.as_object(),
                    ) {
                        for (k, v) in applied {
                            stored.insert(k.clone(), v.clone());
                        }
                    } else {
                        object[key] = value.clone();
                    }
                }
            }
        }
    }
}
