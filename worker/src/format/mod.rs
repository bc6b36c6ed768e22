//! Binary value formats of Kafka sources and sinks (`format: avro | protobuf`), shared by both:
//! the schema (inline, a file, or a Confluent-compatible schema registry), the registry's wire
//! format, the Avro ↔ Arrow mapping ([`avro`]) and Protobuf ([`protobuf`]).
//!
//! **Wire format.** With `schemaRegistry`, a value is Confluent's framing: magic byte `0`, the
//! writer schema's registry id as 4 bytes big-endian, (for Protobuf, the message indexes,) then
//! the Avro binary datum or the Protobuf message. Without it, a value is the bare datum or
//! message, written with the `valueSchema`.
//!
//! **Schema evolution.** A source decodes each record with the schema it was written with
//! (fetched by id, cached) *resolved* into its reader schema by Avro's resolution rules (fields
//! added with a default, removed fields skipped, promotions int → long → float → double, ...;
//! Avro 1.11 spec, "Schema Resolution"): records written by a newer compatible schema decode.
//! Protobuf records decode by field number into the reader message (see [`protobuf`]).
//! A record that cannot be read is a bad record (with its `topic/partition` and offset), as
//! malformed JSON is: not framed, an unknown schema id (404), a writer schema that does not
//! resolve into the reader schema, or bytes that are not a datum of the writer schema. A registry
//! that cannot be reached fails the batch retryably instead: the records are fine.

pub mod avro;
pub mod protobuf;
pub mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::types::Value;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sluice_crds::{KafkaFormat, SchemaRegistrySpec, ValueSchemaSpec};

use crate::bad_record::BadRecord;
use crate::error::{EngineError, Result};
use protobuf::{ProtobufDecoder, ProtobufEncoder};
use registry::{RegistryClient, RegistryError};

/// The wire format's first byte.
pub const MAGIC: u8 = 0;
/// Bytes of a value's undecodable prefix kept (as hex) in its bad record.
pub const KEPT_BAD_BYTES: usize = 512;

/// Frames an encoded datum in the registry's wire format.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// The schema id and datum of a value in the registry's wire format.
///
/// # Errors
/// A message for the bad record when the value is too short or its magic byte is not 0.
pub fn unframe(value: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match value {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [MAGIC, ..] | [] => Err(format!(
            "{} bytes: too short for the schema registry's wire format (magic byte, 4-byte id)",
            value.len()
        )),
        [other, ..] => Err(format!(
            "first byte {other:#04x} is not the schema registry's magic byte 0 (not written \
             with a schema registry serializer?)"
        )),
    }
}

/// Reads a `valueSchema` (inline text or a file).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming `field` when the file cannot be read.
pub fn schema_text(field: &str, spec: &ValueSchemaSpec) -> Result<String> {
    match (&spec.inline, &spec.path) {
        (Some(text), None) => Ok(text.clone()),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            EngineError::InvalidQuery(format!("{field}.path: cannot read `{path}`: {e}"))
        }),
        _ => Err(EngineError::InvalidQuery(format!(
            "{field}: exactly one of inline, path must be set"
        ))),
    }
}

/// The registry subject: the spec's, or `<topic>-value` (TopicNameStrategy).
///
/// # Errors
/// [`EngineError::InvalidQuery`] when neither is known.
pub fn subject(field: &str, spec: &SchemaRegistrySpec, topic: Option<&str>) -> Result<String> {
    match (&spec.subject, topic) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(t)) => Ok(format!("{t}-value")),
        (None, None) => Err(EngineError::InvalidQuery(format!(
            "{field}.subject: required when the topic is not a single `topic`"
        ))),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    let kept = bytes.get(..KEPT_BAD_BYTES).unwrap_or(bytes);
    let mut out = String::with_capacity(kept.len() * 2 + 8);
    for b in kept {
        out.push_str(&format!("{b:02x}"));
    }
    if bytes.len() > KEPT_BAD_BYTES {
        out.push('…');
    }
    out
}

/// The reader schema's text and the field that names it: `value_schema`, or the subject's
/// latest version in the registry (fetched now). `format` names the format in the error.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when neither is given, the file cannot be read or the subject
/// has no version; [`EngineError::Source`] when the registry cannot be reached.
fn reader_schema_text(
    field: &str,
    source_name: &str,
    format: &str,
    value_schema: Option<&ValueSchemaSpec>,
    registry: Option<&SchemaRegistrySpec>,
    client: Option<&RegistryClient>,
    topic: Option<&str>,
) -> Result<(String, String)> {
    match (value_schema, registry, client) {
        (Some(spec), _, _) => Ok((
            format!("{field}.valueSchema"),
            schema_text(&format!("{field}.valueSchema"), spec)?,
        )),
        (None, Some(spec), Some(client)) => {
            let subject = subject(&format!("{field}.schemaRegistry"), spec, topic)?;
            let latest = registry::block_on(async {
                client.latest(&subject).await.map_err(|e| match e {
                    RegistryError::Unavailable(m) => EngineError::Source {
                        source_name: source_name.to_string(),
                        message: format!("schema registry: {m}"),
                    },
                    other => EngineError::InvalidQuery(format!("{field}.schemaRegistry: {other}")),
                })
            })?;
            Ok((
                format!(
                    "{field}.schemaRegistry (subject `{subject}`, id {})",
                    latest.id
                ),
                latest.schema,
            ))
        }
        _ => Err(EngineError::InvalidQuery(format!(
            "{field}: format {format} needs valueSchema or schemaRegistry"
        ))),
    }
}

/// The value decoder of a Kafka source whose format has a value schema.
#[derive(Debug)]
pub enum ValueDecoder {
    Avro(AvroDecoder),
    Protobuf(ProtobufDecoder),
}

impl ValueDecoder {
    /// The decoder of `format` (`avro` or `protobuf`); see [`AvroDecoder::new`] and
    /// [`ProtobufDecoder::new`]. `message_type` is Protobuf's `messageType`.
    ///
    /// # Errors
    /// As those; [`EngineError::Internal`] for a format without a value schema.
    pub fn new(
        format: KafkaFormat,
        field: &str,
        source_name: &str,
        value_schema: Option<&ValueSchemaSpec>,
        message_type: Option<&str>,
        registry: Option<&SchemaRegistrySpec>,
        topic: Option<&str>,
    ) -> Result<Self> {
        match format {
            KafkaFormat::Avro => {
                AvroDecoder::new(field, source_name, value_schema, registry, topic).map(Self::Avro)
            }
            KafkaFormat::Protobuf => ProtobufDecoder::new(
                field,
                source_name,
                value_schema,
                message_type,
                registry,
                topic,
            )
            .map(Self::Protobuf),
            other => Err(EngineError::Internal(format!(
                "format {} has no value decoder",
                other.name()
            ))),
        }
    }

    /// The Arrow schema of the decoded rows.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Self::Avro(d) => d.schema(),
            Self::Protobuf(d) => d.schema(),
        }
    }

    /// Decodes `records`; see [`AvroDecoder::decode`].
    ///
    /// # Errors
    /// [`EngineError::Source`] (retryable) when the registry cannot be reached.
    pub async fn decode(
        &self,
        source_name: &str,
        records: &[RawValue<'_>],
    ) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
        match self {
            Self::Avro(d) => d.decode(source_name, records).await,
            Self::Protobuf(d) => d.decode(source_name, records).await,
        }
    }
}

/// The value encoder of a Kafka sink whose format has a value schema.
pub enum ValueEncoder {
    // Boxed: both are large (parsed schemas, a registry client), one per sink.
    Avro(Box<AvroEncoder>),
    Protobuf(Box<ProtobufEncoder>),
}

impl ValueEncoder {
    /// The encoder of `format` (`avro` or `protobuf`); see [`AvroEncoder::new`] and
    /// [`ProtobufEncoder::new`].
    ///
    /// # Errors
    /// As those; [`EngineError::Internal`] for a format without a value schema.
    pub fn new(
        format: KafkaFormat,
        field: &str,
        value_schema: Option<&ValueSchemaSpec>,
        message_type: Option<&str>,
        registry: Option<&SchemaRegistrySpec>,
        topic: &str,
    ) -> Result<Self> {
        match format {
            KafkaFormat::Avro => AvroEncoder::new(field, value_schema, registry, topic)
                .map(|e| Self::Avro(Box::new(e))),
            KafkaFormat::Protobuf => {
                ProtobufEncoder::new(field, value_schema, message_type, registry, topic)
                    .map(|e| Self::Protobuf(Box::new(e)))
            }
            other => Err(EngineError::Internal(format!(
                "format {} has no value encoder",
                other.name()
            ))),
        }
    }

    /// The encoded values of `batch`'s rows; see [`AvroEncoder::encode`].
    ///
    /// # Errors
    /// As the format's encoder.
    pub async fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match self {
            Self::Avro(e) => e.encode(batch).await,
            Self::Protobuf(e) => e.encode(batch).await,
        }
    }
}

/// One record value to decode, with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct RawValue<'a> {
    /// `topic/partition`.
    pub origin: &'a str,
    /// The record's offset.
    pub offset: i64,
    pub value: Option<&'a [u8]>,
}

impl RawValue<'_> {
    /// This value as a bad record: origin `topic/partition`, line = the offset, record = the
    /// value's first bytes as hex (a binary value has no readable text).
    pub fn bad(&self, error: String) -> BadRecord {
        BadRecord {
            origin: self.origin.to_string(),
            line: u64::try_from(self.offset).unwrap_or(0),
            record: self.value.map(hex_prefix).unwrap_or_default(),
            error,
        }
    }
}

/// Decodes Avro record values of a Kafka source into rows of its reader schema.
pub struct AvroDecoder {
    /// The reader schema with decimals as their bytes ([`avro::plain_decimals`]).
    reader: Schema,
    arrow: SchemaRef,
    registry: Option<Arc<RegistryClient>>,
    /// Writer schemas by registry id (parsed once).
    writers: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl std::fmt::Debug for AvroDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroDecoder")
            .field("arrow", &self.arrow)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl AvroDecoder {
    /// The decoder of a Kafka source (`field` is the `kafka` object's path): the reader schema is
    /// `value_schema`, or the subject's latest version in the registry (fetched now).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unreadable or unmappable schema or a subject without
    /// versions; [`EngineError::Source`] when the registry cannot be reached.
    pub fn new(
        field: &str,
        source_name: &str,
        value_schema: Option<&ValueSchemaSpec>,
        registry: Option<&SchemaRegistrySpec>,
        topic: Option<&str>,
    ) -> Result<Self> {
        let client = registry
            .map(|r| RegistryClient::new(&format!("{field}.schemaRegistry"), r).map(Arc::new))
            .transpose()?;
        let (reader_field, text) = reader_schema_text(
            field,
            source_name,
            "avro",
            value_schema,
            registry,
            client.as_deref(),
            topic,
        )?;
        let reader = avro::parse(&reader_field, &text)?;
        let arrow = avro::arrow_schema(&reader_field, &reader)?;
        Ok(Self {
            reader: avro::plain_decimals(&reader),
            arrow,
            registry: client,
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// The Arrow schema of the decoded rows (the reader schema's columns).
    pub fn schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// The writer schema with registry id `id`: `Ok(Err(message))` when it does not exist or is
    /// not a valid Avro schema (the record is bad), `Err` when the registry is unreachable.
    async fn writer(
        &self,
        source_name: &str,
        id: u32,
    ) -> Result<std::result::Result<Arc<Schema>, String>> {
        if let Some(schema) = self.writers.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(Ok(schema));
        }
        let Some(client) = &self.registry else {
            return Err(EngineError::Internal(
                "avro: no registry to look ids up".into(),
            ));
        };
        let text = match client.schema_by_id(id).await {
            Ok(text) => text,
            Err(RegistryError::Unavailable(m)) => {
                return Err(EngineError::Source {
                    source_name: source_name.to_string(),
                    message: format!("schema registry: {m}"),
                });
            }
            Err(e) => return Ok(Err(format!("writer schema: {e}"))),
        };
        let schema = match Schema::parse_str(&text) {
            Ok(s) => Arc::new(avro::plain_decimals(&s)),
            Err(e) => return Ok(Err(format!("writer schema id {id} is not valid Avro: {e}"))),
        };
        if let Ok(mut cache) = self.writers.lock() {
            cache.insert(id, schema.clone());
        }
        Ok(Ok(schema))
    }

    /// Decodes `records` into batches of [`Self::schema`]; records that cannot be read become bad
    /// records (origin `topic/partition`, line = offset, record = the value's first bytes as hex).
    ///
    /// # Errors
    /// [`EngineError::Source`] (retryable) when the registry cannot be reached.
    pub async fn decode(
        &self,
        source_name: &str,
        records: &[RawValue<'_>],
    ) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
        let mut good = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        for record in records {
            match self.decode_one(source_name, record.value).await? {
                Ok(value) => good.push(value),
                Err(error) => bad.push(record.bad(error)),
            }
        }
        let batches = if good.is_empty() {
            Vec::new()
        } else {
            vec![avro::to_batch(&self.arrow, &good)?]
        };
        Ok((batches, bad))
    }

    async fn decode_one(
        &self,
        source_name: &str,
        value: Option<&[u8]>,
    ) -> Result<std::result::Result<Value, String>> {
        let Some(value) = value else {
            return Ok(Err("no value (a tombstone)".into()));
        };
        let (writer, mut datum) = if self.registry.is_some() {
            let (id, datum) = match unframe(value) {
                Ok(parts) => parts,
                Err(e) => return Ok(Err(e)),
            };
            match self.writer(source_name, id).await? {
                Ok(schema) => (Some(schema), datum),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            (None, value)
        };
        let writer_schema = writer.as_deref().unwrap_or(&self.reader);
        let reader = match apache_avro::reader::datum::GenericDatumReader::builder(writer_schema)
            .reader_schema(&self.reader)
            .build()
        {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("writer schema does not resolve: {e}"))),
        };
        let decoded = match reader.read_value(&mut datum) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("not an Avro datum of its writer schema: {e}"))),
        };
        if !datum.is_empty() {
            return Ok(Err(format!(
                "{} bytes left after the Avro datum (not a datum of its writer schema)",
                datum.len()
            )));
        }
        Ok(Ok(decoded))
    }
}

/// Encodes result rows of a Kafka sink as Avro values of its writer schema.
pub struct AvroEncoder {
    field: String,
    /// The `valueSchema`: its text (registered as written: Avro's canonical form would drop
    /// logical types) and the parsed schema.
    schema: Option<(String, Schema)>,
    subject: Option<String>,
    registry: Option<RegistryClient>,
    /// The writer schema, the same with decimals as their bytes (what is written, see
    /// [`avro::plain_decimals`]) and its registry id, once resolved (first write).
    resolved: tokio::sync::OnceCell<(Schema, Schema, Option<u32>)>,
}

impl AvroEncoder {
    /// The encoder of a Kafka sink (`field` is the `kafka` object's path). A `value_schema` is
    /// parsed now; the registry is contacted at the first write (registering the schema under
    /// the subject, or taking the subject's latest version when there is no `value_schema`).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unreadable or invalid schema.
    pub fn new(
        field: &str,
        value_schema: Option<&ValueSchemaSpec>,
        registry: Option<&SchemaRegistrySpec>,
        topic: &str,
    ) -> Result<Self> {
        let schema = value_schema
            .map(|spec| {
                let f = format!("{field}.valueSchema");
                let text = schema_text(&f, spec)?;
                let schema = avro::parse(&f, &text)?;
                avro::top_record(&f, &schema)?;
                Ok::<_, EngineError>((text, schema))
            })
            .transpose()?;
        let (registry, subject) = match registry {
            Some(spec) => (
                Some(RegistryClient::new(
                    &format!("{field}.schemaRegistry"),
                    spec,
                )?),
                Some(subject(
                    &format!("{field}.schemaRegistry"),
                    spec,
                    Some(topic),
                )?),
            ),
            None => (None, None),
        };
        if schema.is_none() && registry.is_none() {
            return Err(EngineError::InvalidQuery(format!(
                "{field}: format avro needs valueSchema or schemaRegistry"
            )));
        }
        Ok(Self {
            field: field.to_string(),
            schema,
            subject,
            registry,
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    async fn resolve(&self) -> Result<&(Schema, Schema, Option<u32>)> {
        self.resolved
            .get_or_try_init(|| async {
                let field = format!("{}.schemaRegistry", self.field);
                let to_error = |e: RegistryError| match e {
                    RegistryError::Unavailable(m) => {
                        EngineError::Sink(format!("kafka: schema registry: {m}"))
                    }
                    other => EngineError::InvalidQuery(format!("{field}: {other}")),
                };
                match (&self.schema, &self.registry, &self.subject) {
                    (Some((_, schema)), None, _) => {
                        Ok((schema.clone(), avro::plain_decimals(schema), None))
                    }
                    (Some((text, schema)), Some(client), Some(subject)) => {
                        let id = client.register(subject, text).await.map_err(to_error)?;
                        Ok((schema.clone(), avro::plain_decimals(schema), Some(id)))
                    }
                    (None, Some(client), Some(subject)) => {
                        let latest = client.latest(subject).await.map_err(to_error)?;
                        let f = format!("{field} (subject `{subject}`, id {})", latest.id);
                        let schema = avro::parse(&f, &latest.schema)?;
                        avro::top_record(&f, &schema)?;
                        let plain = avro::plain_decimals(&schema);
                        Ok((schema, plain, Some(latest.id)))
                    }
                    _ => Err(EngineError::Internal(
                        "avro encoder without a schema".into(),
                    )),
                }
            })
            .await
    }

    /// The encoded values of `batch`'s rows (framed with the schema id when a registry is used).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when a column cannot become its Avro field or the registry
    /// refuses the schema; [`EngineError::Sink`] (retryable) when the registry is unreachable.
    pub async fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let (schema, plain, id) = self.resolve().await?;
        let values = avro::from_batch(&self.field, schema, batch)?;
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(plain)
            .build()
            .map_err(|e| EngineError::InvalidQuery(format!("{}: {e}", self.field)))?;
        values
            .into_iter()
            .map(|value| {
                let datum = writer.write_value_to_vec(value).map_err(|e| {
                    EngineError::InvalidQuery(format!(
                        "kafka sink (avro): a row does not fit the writer schema: {e}"
                    ))
                })?;
                Ok(match id {
                    Some(id) => frame(*id, &datum),
                    None => datum,
                })
            })
            .collect()
    }
}
