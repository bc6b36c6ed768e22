//! A strict stand-in for a Confluent schema registry (no registry server is packaged), shared by
//! the Avro and Protobuf format tests: ids from 1, per-subject versions, `schemaType` AVRO
//! (omitted in answers, as the registry does) or PROTOBUF (`.proto` text), 404 with the
//! registry's error codes, 415 for a POST that is not JSON, 422 for a body without `schema`, an
//! unknown `schemaType` or a schema that does not parse, 401 without the configured basic
//! credentials. Its fixed compatibility rule is a simplified BACKWARD (the registry's default):
//! for Avro a new version may add fields only with a default and may not change the type of a
//! field it keeps; for Protobuf a field number the new version keeps must keep its type.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

/// One registered schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// `AVRO` or `PROTOBUF`.
    pub schema_type: String,
    pub text: String,
}

#[derive(Default)]
pub struct Registry {
    /// By id - 1.
    pub schemas: Vec<Stored>,
    pub subjects: HashMap<String, Vec<u32>>,
    /// `user:password` required on every request, when set.
    pub basic: Option<String>,
    pub requests: u32,
}

impl Registry {
    /// Stores `text` as a new version of `subject` without any check (the producers' side of a
    /// test) and returns its id.
    pub fn add(&mut self, subject: &str, schema_type: &str, text: &str) -> u32 {
        self.schemas.push(Stored {
            schema_type: schema_type.to_string(),
            text: text.to_string(),
        });
        let id = self.schemas.len() as u32;
        self.subjects
            .entry(subject.to_string())
            .or_default()
            .push(id);
        id
    }

    fn answer_schema(&self, id: u32) -> Option<Json> {
        let stored = self.schemas.get(id.checked_sub(1)? as usize)?;
        let mut body = json!({"schema": stored.text});
        if stored.schema_type != "AVRO" {
            body["schemaType"] = json!(stored.schema_type);
        }
        Some(body)
    }
}

pub type Shared = Arc<Mutex<Registry>>;

const MEDIA: &str = "application/vnd.schemaregistry.v1+json";

fn answer(status: StatusCode, body: Json) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, MEDIA)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    answer(status, json!({"error_code": code, "message": message}))
}

fn authorized(registry: &Registry, headers: &HeaderMap) -> bool {
    match &registry.basic {
        None => true,
        Some(creds) => {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(format!("Basic {}", base64(creds.as_bytes())).as_str())
        }
    }
}

/// `(name, type, has a default)` of an Avro record schema's fields.
fn avro_fields(schema: &Json) -> Vec<(String, Json, bool)> {
    schema["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap_or_default().to_string(),
                        f["type"].clone(),
                        f.get("default").is_some(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `number → (name, type)` of a message's fields.
type ProtoFields = HashMap<u32, (String, String)>;

/// The fields of every message of a `.proto` text, by message name.
fn proto_fields(text: &str) -> Option<HashMap<String, ProtoFields>> {
    let file = sluice_worker::format::protobuf::compile_text(text).ok()?;
    let mut out = HashMap::new();
    for message in file.parent_pool().all_messages() {
        if message.parent_file().name() != file.name() {
            continue;
        }
        let fields = message
            .fields()
            .map(|f| {
                let kind = match f.kind() {
                    prost_reflect::Kind::Message(m) => m.full_name().to_string(),
                    prost_reflect::Kind::Enum(e) => e.full_name().to_string(),
                    other => format!("{other:?}"),
                };
                let label = if f.is_list() { "repeated " } else { "" };
                (f.number(), (f.name().to_string(), format!("{label}{kind}")))
            })
            .collect();
        out.insert(message.full_name().to_string(), fields);
    }
    Some(out)
}

/// The first field that makes `new` incompatible with `old` under the stand-in's rule.
fn breaking(schema_type: &str, old: &str, new: &str) -> Option<String> {
    if schema_type == "PROTOBUF" {
        let (old, new) = (proto_fields(old)?, proto_fields(new)?);
        for (message, fields) in &new {
            let Some(old_fields) = old.get(message) else {
                continue;
            };
            for (number, (name, kind)) in fields {
                if let Some((_, old_kind)) = old_fields.get(number)
                    && old_kind != kind
                {
                    return Some(format!("{message}.{name}"));
                }
            }
        }
        return None;
    }
    let (old, new): (Json, Json) = (
        serde_json::from_str(old).ok()?,
        serde_json::from_str(new).ok()?,
    );
    let old = avro_fields(&old);
    avro_fields(&new)
        .into_iter()
        .find(
            |(n, t, has_default)| match old.iter().find(|(o, _, _)| o == n) {
                Some((_, old_type, _)) => old_type != t,
                None => !has_default,
            },
        )
        .map(|(name, _, _)| name)
}

async fn by_id(State(r): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let mut registry = r.lock().expect("lock");
    registry.requests += 1;
    if !authorized(&registry, &headers) {
        return error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized");
    }
    match id
        .parse::<u32>()
        .ok()
        .and_then(|i| registry.answer_schema(i))
    {
        Some(body) => answer(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn latest(
    State(r): State<Shared>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Response {
    let mut registry = r.lock().expect("lock");
    registry.requests += 1;
    if !authorized(&registry, &headers) {
        return error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized");
    }
    let Some(versions) = registry.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, "Subject not found");
    };
    let Some(&id) = versions.last() else {
        return error(StatusCode::NOT_FOUND, 40402, "Version not found");
    };
    let version = versions.len();
    let mut body = registry.answer_schema(id).expect("stored schema");
    body["subject"] = json!(subject);
    body["version"] = json!(version);
    body["id"] = json!(id);
    answer(StatusCode::OK, body)
}

async fn register(
    State(r): State<Shared>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    let mut registry = r.lock().expect("lock");
    registry.requests += 1;
    if !authorized(&registry, &headers) {
        return error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized");
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != MEDIA && content_type != "application/json" {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            "Unsupported Media Type",
        );
    }
    let Ok(request) = serde_json::from_str::<Json>(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid JSON");
    };
    let schema_type = request["schemaType"].as_str().unwrap_or("AVRO").to_string();
    if schema_type != "AVRO" && schema_type != "PROTOBUF" {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Unsupported schema type",
        );
    }
    let Some(text) = request["schema"].as_str() else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "No schema");
    };
    let parses = if schema_type == "PROTOBUF" {
        proto_fields(text).is_some()
    } else {
        serde_json::from_str::<Json>(text).is_ok()
    };
    if !parses {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    }
    let stored = Stored {
        schema_type: schema_type.clone(),
        text: text.to_string(),
    };
    let existing = registry.schemas.iter().position(|s| *s == stored);
    let versions = registry.subjects.get(&subject).cloned().unwrap_or_default();
    if let Some(i) = existing
        && versions.contains(&(i as u32 + 1))
    {
        return answer(StatusCode::OK, json!({"id": i + 1}));
    }
    if let Some(&last) = versions.last() {
        let previous = registry.schemas[last as usize - 1].clone();
        if previous.schema_type != schema_type {
            return error(
                StatusCode::CONFLICT,
                409,
                "Schema being registered is incompatible: another schema type",
            );
        }
        if let Some(name) = breaking(&schema_type, &previous.text, text) {
            return error(
                StatusCode::CONFLICT,
                409,
                &format!("Schema being registered is incompatible: field {name}"),
            );
        }
    }
    let id = match existing {
        Some(i) => i as u32 + 1,
        None => {
            registry.schemas.push(stored);
            registry.schemas.len() as u32
        }
    };
    registry.subjects.entry(subject).or_default().push(id);
    answer(StatusCode::OK, json!({"id": id}))
}

/// Starts the stand-in on its own thread and runtime (start-up code blocks the caller's thread
/// on registry calls) and returns its URL.
pub fn start_registry(basic: Option<&str>) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Registry {
        basic: basic.map(str::to_string),
        ..Registry::default()
    }));
    let app = axum::Router::new()
        .route("/schemas/ids/{id}", get(by_id))
        .route("/subjects/{subject}/versions/latest", get(latest))
        .route("/subjects/{subject}/versions", post(register))
        .with_state(shared.clone());
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("registry address");
    (format!("http://{addr}"), shared)
}

/// Base64 for the stand-in's basic-auth check (the tests have no base64 crate of their own).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `(key, value)` of every record of partition 0 of `topic`, until nothing arrives for `idle`.
pub fn read_bytes(
    bootstrap: &str,
    topic: &str,
    idle: std::time::Duration,
) -> Vec<(String, Vec<u8>)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-test-formats")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < idle {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) {
            last = std::time::Instant::now();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

/// Produces `values` to partition 0 of `topic`, one at a time (the offsets are the order).
pub async fn produce_bytes(bootstrap: &str, topic: &str, values: &[Vec<u8>]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for value in values {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic)
                    .payload(value)
                    .partition(0),
                std::time::Duration::from_secs(30),
            )
            .await
            .expect("delivered");
    }
}
