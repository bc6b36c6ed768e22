//! A client of a Confluent-compatible schema registry's REST API (the subset Sluice uses):
//!
//! - `GET /schemas/ids/{id}`: the schema a record was written with, by the id in its wire format;
//! - `GET /subjects/{subject}/versions/latest`: a subject's current schema and its id;
//! - `POST /subjects/{subject}/versions`: register a schema under a subject (the registry applies
//!   the subject's compatibility rule; an incompatible schema is refused with 409) or find the id
//!   of an identical one already registered.
//!
//! A client reads and registers one kind of schema (`schemaType` AVRO, which the registry omits
//! in answers, or PROTOBUF, `.proto` text); an answer of another kind is refused.
//! Requests and answers use `application/vnd.schemaregistry.v1+json` (Confluent's documented
//! media type). Credentials are HTTP basic or a bearer token, read from secret references.
//! Fetched schemas are cached per id for the life of the client: a schema id never changes
//! meaning in a registry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use sluice_crds::{SchemaRegistryAuthSpec, SchemaRegistrySpec};

use crate::error::{EngineError, Result};

/// The registry's media type, sent and accepted.
pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Timeout of one registry request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest schema answer read (a schema registry caps schemas well below this).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a registry request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// 404: no such schema id, subject or version. For a record's schema id this makes the
    /// record a bad record.
    #[error("{0}")]
    NotFound(String),
    /// Another 4xx: the request was refused (bad credentials, an incompatible schema (409), an
    /// invalid schema (422)); retrying the same request will not help.
    #[error("{0}")]
    Refused(String),
    /// The registry could not be reached, timed out, answered 5xx or something unreadable:
    /// retrying later may help.
    #[error("{0}")]
    Unavailable(String),
}

/// The kind of schema a client reads and registers (the registry's `schemaType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// Avro JSON; the registry omits `schemaType` for it.
    Avro,
    /// `.proto` text (`schemaType: PROTOBUF`).
    Protobuf,
}

impl SchemaKind {
    /// The registry's `schemaType` value.
    pub fn schema_type(self) -> &'static str {
        match self {
            Self::Avro => "AVRO",
            Self::Protobuf => "PROTOBUF",
        }
    }

    fn format(self) -> &'static str {
        match self {
            Self::Avro => "avro",
            Self::Protobuf => "protobuf",
        }
    }
}

/// A subject's schema as the registry returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredSchema {
    /// The registry-wide schema id (the wire format's 4 bytes).
    pub id: u32,
    /// The schema text (Avro JSON or `.proto` text).
    pub schema: String,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

/// A schema registry client (one per source or sink).
pub struct RegistryClient {
    base: url::Url,
    http: reqwest::Client,
    auth: Auth,
    kind: SchemaKind,
    by_id: Mutex<HashMap<u32, String>>,
}

impl std::fmt::Debug for RegistryClient {
    // Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct VersionAnswer {
    id: u32,
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl RegistryClient {
    /// A client of Avro schemas for `spec` (`field` names the spec object in errors, e.g.
    /// `spec.sink.kafka.schemaRegistry`); reads the credentials' secret references now.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a URL that does not parse; [`EngineError::Manifest`]
    /// when a secret reference cannot be read.
    pub fn new(field: &str, spec: &SchemaRegistrySpec) -> Result<Self> {
        Self::with_kind(field, spec, SchemaKind::Avro)
    }

    /// [`Self::new`] for schemas of `kind`: answers holding another `schemaType` are refused,
    /// registrations carry `kind`'s.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_kind(field: &str, spec: &SchemaRegistrySpec, kind: SchemaKind) -> Result<Self> {
        let mut base = url::Url::parse(spec.url.trim())
            .map_err(|e| EngineError::InvalidQuery(format!("{field}.url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(EngineError::InvalidQuery(format!(
                "{field}.url: must be an http:// or https:// URL"
            )));
        }
        // Path segments are appended below; a trailing slash would leave an empty one.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        let auth = match &spec.auth {
            None => Auth::None,
            Some(SchemaRegistryAuthSpec {
                username: Some(username),
                password: Some(password),
                bearer_token: None,
            }) => Auth::Basic {
                username: username.clone(),
                password: crate::secrets::resolve(&format!("{field}.auth.password"), password)?,
            },
            Some(SchemaRegistryAuthSpec {
                username: None,
                password: None,
                bearer_token: Some(token),
            }) => Auth::Bearer(crate::secrets::resolve(
                &format!("{field}.auth.bearerToken"),
                token,
            )?),
            Some(_) => {
                return Err(EngineError::InvalidQuery(format!(
                    "{field}.auth: set either username with password or bearerToken"
                )));
            }
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The client is used from more than one runtime (start-up and batches): pooled
            // connections would be tied to the first one.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| EngineError::Internal(format!("schema registry client: {e}")))?;
        Ok(Self {
            base,
            http,
            auth,
            kind,
            by_id: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's base URL (no credentials are part of it).
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, segments: &[&str]) -> std::result::Result<url::Url, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::Refused(format!("{} cannot be a base URL", self.base)))?
            .extend(segments);
        Ok(url)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header(reqwest::header::ACCEPT, MEDIA_TYPE);
        match &self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// Sends `request` and parses a 2xx JSON answer as `T`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<T, RegistryError> {
        let response = self
            .authorized(request)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("{what}: {}", without_url(&e))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("{what}: {}", without_url(&e))))?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(RegistryError::Unavailable(format!(
                "{what}: answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Unavailable(format!("{what}: unreadable answer: {e}"))
            });
        }
        let detail = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .map(|a| {
                format!(
                    " ({}{})",
                    a.error_code.map(|c| format!("{c}: ")).unwrap_or_default(),
                    a.message.unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let message = format!("{what}: HTTP {status}{detail}");
        Err(if status.as_u16() == 404 {
            RegistryError::NotFound(message)
        } else if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            RegistryError::Refused(message)
        } else {
            RegistryError::Unavailable(message)
        })
    }

    /// The schema with registry id `id` (cached).
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] for an unknown id; the others as [`RegistryError`] says.
    pub async fn schema_by_id(&self, id: u32) -> std::result::Result<String, RegistryError> {
        if let Some(schema) = self.by_id.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(schema);
        }
        let what = format!("schema id {id}");
        let url = self.endpoint(&["schemas", "ids", &id.to_string()])?;
        let answer: SchemaAnswer = self.call(&what, self.http.get(url)).await?;
        check_kind(&what, self.kind, answer.schema_type.as_deref())?;
        if let Ok(mut cache) = self.by_id.lock() {
            cache.insert(id, answer.schema.clone());
        }
        Ok(answer.schema)
    }

    /// The latest version of `subject`.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when the subject has no version; the others as
    /// [`RegistryError`] says.
    pub async fn latest(
        &self,
        subject: &str,
    ) -> std::result::Result<RegisteredSchema, RegistryError> {
        let what = format!("latest version of subject `{subject}`");
        let url = self.endpoint(&["subjects", subject, "versions", "latest"])?;
        let answer: VersionAnswer = self.call(&what, self.http.get(url)).await?;
        check_kind(&what, self.kind, answer.schema_type.as_deref())?;
        if let Ok(mut cache) = self.by_id.lock() {
            cache.insert(answer.id, answer.schema.clone());
        }
        Ok(RegisteredSchema {
            id: answer.id,
            schema: answer.schema,
        })
    }

    /// Registers `schema` (Avro JSON or `.proto` text, by the client's kind) under `subject` and
    /// returns its id (the existing id when
    /// the same schema is registered already).
    ///
    /// # Errors
    /// [`RegistryError::Refused`] when the registry refuses it (409: incompatible with the
    /// subject's earlier versions under its compatibility rule; 422: invalid); the others as
    /// [`RegistryError`] says.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> std::result::Result<u32, RegistryError> {
        let what = format!("registering a schema under subject `{subject}`");
        let url = self.endpoint(&["subjects", subject, "versions"])?;
        let body = serde_json::json!({ "schemaType": self.kind.schema_type(), "schema": schema });
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
            .body(body.to_string());
        let answer: IdAnswer = self.call(&what, request).await?;
        if let Ok(mut cache) = self.by_id.lock() {
            cache.insert(answer.id, schema.to_string());
        }
        Ok(answer.id)
    }
}

/// A schema whose `schemaType` is not `kind`'s is refused (the registry omits it for Avro).
fn check_kind(
    what: &str,
    kind: SchemaKind,
    schema_type: Option<&str>,
) -> std::result::Result<(), RegistryError> {
    let actual = schema_type.unwrap_or("AVRO");
    if actual == kind.schema_type() {
        return Ok(());
    }
    Err(RegistryError::Refused(format!(
        "{what}: the registry holds a {actual} schema; format {} needs a {} one",
        kind.format(),
        kind.schema_type()
    )))
}

/// A reqwest error's text without the URL (which could carry user info).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the registry");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `future` to completion on a runtime of its own on a scoped thread, for start-up work that
/// needs the registry from synchronous code (building a source or sink) inside or outside a
/// runtime. Blocks the caller, as the Kafka metadata request next to it does.
///
/// # Errors
/// [`EngineError::Internal`] when the runtime cannot be built or the thread panicked; otherwise
/// the future's own result.
pub fn block_on<T: Send>(future: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| EngineError::Internal(format!("registry runtime: {e}")))?
                    .block_on(future)
            })
            .join()
            .map_err(|_| EngineError::Internal("registry start-up thread panicked".into()))?
    })
}
