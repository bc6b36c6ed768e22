//! `StreamingQuery` spec types (group `sluice.dev`, version `v1alpha1`).
//!
//! Field names follow Spark Structured Streaming's options where one exists
//! (`maxFilesPerTrigger`, `startingOffsets`, `outputMode`, `processingTime`, ...),
//! so a Spark user can read a manifest without a dictionary. Every struct denies
//! unknown fields: a typo in a manifest is an error naming the field path, never
//! a silently ignored option.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::bounds::*;
use crate::secrets::SecretRef;
use crate::status::StreamingQueryStatus;

/// CEL rule (apiserver-side) for a duration string: one or more `<number><unit>` terms with the
/// units [`crate::duration::parse_duration`] accepts (`10s`, `500ms`, `1m 30s`, `10 minutes`).
/// The text is capped at 64 characters so the rule's estimated CEL cost stays bounded.
const DURATION_RULE: &str = r"self.matches('^\\s*([0-9]+\\s*(nanos|nsec|ns|usec|us|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\\s*)+$')";
const DURATION_MESSAGE: &str =
    "must be a duration such as `10s`, `500ms`, `1m 30s` or `10 minutes`";

/// Bounds the values of an `options` map (schemars cannot put `length` on map values).
fn option_values(schema: &mut schemars::Schema) {
    if let Some(values) = schema
        .get_mut("additionalProperties")
        .and_then(|v| v.as_object_mut())
    {
        values.insert("maxLength".into(), MAX_OPTION_VALUE.into());
    }
}

/// CEL transition rule (at the root, the only place a rule may read status): once the operator
/// claimed a checkpoint (it pins `status.checkpointLocation` only after a successful claim),
/// `spec.checkpoint.location` may no longer change, set or unset. Before that it may: the
/// operator's advice for an unusable or foreign location is to set another one and apply again.
pub const CHECKPOINT_LOCATION_RULE: &str = "!has(oldSelf.status) || !has(oldSelf.status.checkpointLocation) || ((has(self.spec.checkpoint) && has(self.spec.checkpoint.location)) ? self.spec.checkpoint.location : '') == ((has(oldSelf.spec.checkpoint) && has(oldSelf.spec.checkpoint.location)) ? oldSelf.spec.checkpoint.location : '')";
const CHECKPOINT_LOCATION_MESSAGE: &str = "checkpoint.location cannot change once the checkpoint is claimed (status.checkpointLocation): the checkpoint would be orphaned; create a new query instead";

/// A continuously running SQL query over one or more unbounded sources, written to one sink.
///
/// The query runs as micro-batches: each trigger reads the new rows of every source (per task),
/// runs `sql` over them and writes the result to `sink`, with offsets and commits kept in the
/// checkpoint so that a restarted query continues exactly where it stopped.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamingQuery",
    namespaced,
    shortname = "sq",
    status = "StreamingQueryStatus",
    // `/scale`: HPA or KEDA may drive `spec.parallelism.replicas` when the built-in autoscaler is off.
    scale(
        spec_replicas_path = ".spec.parallelism.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Input/s","type":"number","jsonPath":".status.inputRowsPerSecond"}"#,
    printcolumn = r#"{"name":"Processed/s","type":"number","jsonPath":".status.processedRowsPerSecond"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Batch","type":"integer","jsonPath":".status.lastCommittedBatchId"}"#,
    printcolumn = r#"{"name":"Last-Run","type":"date","jsonPath":".status.lastRun.end"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Run-Rows","type":"integer","priority":1,"jsonPath":".status.lastRun.rows"}"#,
    printcolumn = r#"{"name":"Run-Batches","type":"string","priority":1,"jsonPath":".status.lastRun.batches"}"#,
    printcolumn = r#"{"name":"Watermark","type":"string","priority":1,"jsonPath":".status.watermark"}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","priority":1,"jsonPath":".status.generation"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","priority":1,"jsonPath":".status.restarts"}"#,
    printcolumn = r#"{"name":"Last-Batch","type":"date","priority":1,"jsonPath":".status.lastBatchTime"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[kube(validation = Rule::new(CHECKPOINT_LOCATION_RULE).message(CHECKPOINT_LOCATION_MESSAGE).field_path(".spec.checkpoint.location"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingQuerySpec {
    /// Named input streams; each name is a table name in `sql`.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub sources: Vec<SourceSpec>,
    /// Static tables for enrichment joins (stream–static), reloaded periodically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TABLES))]
    pub tables: Vec<TableSpec>,
    /// Machine-learning models usable in SQL: trained offline (`file`) or learned from the stream
    /// (`streamingKMeans`, `streamingLinearRegression`, as MLlib's streaming algorithms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_MODELS))]
    pub models: Vec<ModelSpec>,
    /// The query, in DataFusion SQL with Spark-compatible identifier rules
    /// (unquoted identifiers keep their case: `deviceId` resolves to column `deviceId`).
    #[schemars(length(min = 1, max = MAX_SQL))]
    pub sql: String,
    /// Whether `sql` sees the whole stream (`stream`, Structured Streaming semantics: aggregations
    /// keep state across batches) or each micro-batch alone (`microBatch`, DStream / `foreachBatch`
    /// semantics: a GROUP BY counts within one batch and keeps no state).
    #[serde(default)]
    pub sql_scope: SqlScope,
    /// Where result rows go.
    pub sink: SinkSpec,
    /// Which rows of the result table are written each batch (Spark's output modes).
    #[serde(default)]
    pub output_mode: OutputMode,
    /// When micro-batches run.
    #[serde(default)]
    pub trigger: TriggerSpec,
    /// Where offsets, commits and state are kept.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Replica count and autoscaling.
    #[serde(default)]
    pub parallelism: ParallelismSpec,
    /// How a spec change is rolled out: keep state (`lastState`) or start afresh (`stateless`).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// Attempts a batch gets when it fails with an error that retrying will not fix (bad data the
    /// sink refuses, a value SQL cannot convert, a bug): after this many (counted across worker
    /// restarts in the checkpoint) the query stops with `PoisonBatch` naming the batch, the task
    /// and the error instead of crash-looping. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_batch_attempts: Option<u32>,
    /// What happens to a batch that failed `maxBatchAttempts` times: `stop` the query (default) or
    /// `quarantine` it: write its input (the rows it read, else its offsets/files range) with the
    /// error to the bad-records location, commit it as skipped (the sink never sees it) and go on.
    #[serde(default)]
    pub on_poison_batch: PoisonBatchPolicy,
    /// When the worker's `/healthz` reports it unhealthy.
    #[serde(default)]
    pub health: HealthSpec,
    /// Worker container image; the chart's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IMAGE))]
    pub image: Option<String>,
    /// Worker pod resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables for the worker (e.g. credentials from secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENV))]
    pub env: Vec<EnvVar>,
    /// Secret holding `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_ENDPOINT_URL` for `s3://` paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME))]
    pub storage_secret_ref: Option<String>,
    /// Stop all workers at a batch boundary and keep the checkpoint; with `schedule`, start no
    /// new run (as a CronJob's `suspend`).
    #[serde(default)]
    pub suspend: bool,
    /// Run the query repeatedly, each run a one-shot run (`trigger: {availableNow: true}` or
    /// `{once: true}`, required) continuing from the same checkpoint: a CronJob on Kubernetes,
    /// the operator's own timer on the local backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Any text; changing it restarts the workers at a batch boundary, keeping state and
    /// checkpoint (the same stop-first path as a rescale): a restart without a spec change, after
    /// fixing a sink or a poison batch's data. `status.restartNonce` shows the one applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_RESTART_NONCE))]
    pub restart_nonce: Option<String>,
    /// Roll the checkpoint back to the state after a retained batch: the operator stops the
    /// workers, runs `sluice-worker checkpoint restore --batch-id N` (a new checkpoint generation,
    /// the old one kept) and starts them again, replaying the input after batch N. Runs once per
    /// distinct `batchId` (`status.restore` records the applied one); refused (condition
    /// `RestoreRefused`) when the batch is not retained or the sink would duplicate the replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// `spec.restore`: the batch to restore the query's checkpoint to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreSpec {
    /// A committed batch id the checkpoint still retains (`sluice-worker checkpoint list`).
    #[schemars(range(max = 9_007_199_254_740_991_u64))]
    pub batch_id: u64,
}

/// One named input stream. Exactly one of `file`, `kafka`, `socket`, `rate`, `nexmark` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(has(self.file) ? 1 : 0) + (has(self.kafka) ? 1 : 0) + (has(self.socket) ? 1 : 0) + (has(self.rate) ? 1 : 0) + (has(self.nexmark) ? 1 : 0) == 1").message("exactly one of file, kafka, socket, rate, nexmark must be set"))]
pub struct SourceSpec {
    /// Table name in SQL.
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexmark: Option<NexmarkSourceSpec>,
    /// Columns of the decoded records. Required for `file` and for `kafka` with a decoding `format`
    /// (a stream's schema cannot be inferred, as in Spark).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_COLUMNS))]
    // Keyed by column name: an apply that only defaults `nullable` merges instead of replacing
    // the whole list (client-side then server-side apply conflicted on an atomic list).
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schema: Vec<ColumnSpec>,
    /// Event-time watermark: `max(column) - delay`, advanced at the end of each batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
    /// The key the source is partitioned by (Kafka message key); enables parallel stateful queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub partition_key: Option<String>,
    /// What to do with a record that does not decode against `schema`.
    #[serde(default)]
    pub on_bad_record: BadRecordPolicy,
}

/// The kind of a source, for messages and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Kafka,
    Socket,
    Rate,
    Nexmark,
}

impl SourceSpec {
    /// The configured kinds (exactly one in a valid spec).
    pub fn kinds(&self) -> Vec<SourceKind> {
        let mut kinds = Vec::new();
        if self.file.is_some() {
            kinds.push(SourceKind::File);
        }
        if self.kafka.is_some() {
            kinds.push(SourceKind::Kafka);
        }
        if self.socket.is_some() {
            kinds.push(SourceKind::Socket);
        }
        if self.rate.is_some() {
            kinds.push(SourceKind::Rate);
        }
        if self.nexmark.is_some() {
            kinds.push(SourceKind::Nexmark);
        }
        kinds
    }
}

/// Files appearing under a directory (local path, `file://` or `s3://` URL).
/// Only files not seen before are read; a file is read once, whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSourceSpec {
    /// Directory URL or local path; listed recursively.
    #[schemars(length(max = MAX_PATH))]
    pub path: String,
    /// Record format of the files.
    pub format: FileFormat,
    /// At most this many new files per task per batch (Spark's `maxFilesPerTrigger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files_per_trigger: Option<u32>,
    /// Number of virtual partitions (= tasks) the files are hashed into by path. Fixed when the
    /// checkpoint is created; later changes are refused.
    #[serde(default = "default_file_partitions")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("file.partitions is fixed when the checkpoint is created; start a new query to change it"))]
    #[schemars(range(min = 1))]
    pub partitions: u32,
    /// CSV only: the first line of each file is a header (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// CSV only: field delimiter (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4))]
    pub delimiter: Option<String>,
    /// JSON/CSV: the longest record (line) read, in bytes (default 16 MiB). A longer one is a bad
    /// record (its first KiB kept) instead of an unbounded buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_record_bytes: Option<u64>,
}

fn default_file_partitions() -> u32 {
    2
}

fn default_true() -> bool {
    true
}

/// A record format for files and Kafka values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// JSON lines: one object per line.
    Json,
    Csv,
    Parquet,
}

/// Kafka topic(s) as a stream: one task per partition; offsets are kept in the checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(has(self.topic) ? 1 : 0) + (has(self.topics) && size(self.topics) > 0 ? 1 : 0) + (has(self.topicPattern) ? 1 : 0) == 1").message("exactly one of topic, topics, topicPattern must be set"))]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port]`.
    #[schemars(length(max = MAX_BOOTSTRAP))]
    pub bootstrap_servers: String,
    /// One topic; or use `topics` / `topicPattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TOPIC))]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TOPICS))]
    #[schemars(inner(length(max = MAX_TOPIC)))]
    pub topics: Vec<String>,
    /// Regular expression over topic names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PATTERN))]
    pub topic_pattern: Option<String>,
    /// `earliest`, `latest`, or JSON `{"topic":{"0":23,"1":-2}}` (-2 earliest, -1 latest), as in Spark.
    #[serde(default = "default_starting_offsets")]
    #[schemars(length(max = MAX_STARTING_OFFSETS))]
    pub starting_offsets: String,
    /// At most this many records per batch over all partitions of the replica (Spark's option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_offsets_per_trigger: Option<u64>,
    /// Decoding of `value` into `schema` columns; `raw` keeps key/value bytes. `avro` and
    /// `protobuf` take their columns from the value schema (`valueSchema` or `schemaRegistry`)
    /// instead of `schema`.
    #[serde(default)]
    pub format: KafkaFormat,
    /// The reader schema of `format: avro` (Avro JSON) or `format: protobuf` (`.proto` text),
    /// inline or from a file. Without it the reader schema is the latest version of
    /// `schemaRegistry.subject` at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema: Option<ValueSchemaSpec>,
    /// `format: protobuf`: the message of the `.proto` schema the values are (its fully qualified
    /// name, e.g. `iot.v1.Reading`, or a name relative to the file's package). Default: the
    /// file's first message (the schema registry's convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_MESSAGE_TYPE))]
    pub message_type: Option<String>,
    /// A Confluent-compatible schema registry: values are in its wire format (magic byte 0, the
    /// 4-byte schema id, for Protobuf the message indexes, then the datum), each record decoded
    /// with the schema it was written with (fetched by id) resolved into the reader schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistrySpec>,
    /// Extra librdkafka properties (`security.protocol`, `ssl.ca.location`, `sasl.mechanism`,
    /// ...); secret ones (`sasl.password`, ...) are refused here, see `secretOptions`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_OPTIONS))]
    #[schemars(transform = option_values)]
    pub options: BTreeMap<String, String>,
    /// Spark's `failOnDataLoss`: when offsets the query still had to read were deleted (retention,
    /// a recreated topic), stop the query (`true`, the default) or skip them, counting the skipped
    /// ranges in `sluice_data_loss_total` and naming them in `/progress` (`false`).
    #[serde(default = "default_true")]
    pub fail_on_data_loss: bool,
    /// librdkafka properties whose values are secrets, read at run time from an environment
    /// variable or a file (e.g. `sasl.password: {env: KAFKA_PASSWORD}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub secret_options: BTreeMap<String, SecretRef>,
}

fn default_starting_offsets() -> String {
    "earliest".to_string()
}

/// How Kafka record values are decoded or encoded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KafkaFormat {
    #[default]
    Raw,
    Json,
    Csv,
    /// Avro binary datums (Apache Avro 1.11 spec), plain or in the schema registry's wire format.
    Avro,
    /// Protocol Buffers messages (proto2/proto3 binary encoding) of a `.proto` schema, plain or
    /// in the schema registry's wire format.
    Protobuf,
}

impl KafkaFormat {
    /// Whether the format's columns come from a value schema (`valueSchema`/`schemaRegistry`)
    /// rather than the source's `schema`.
    pub fn has_value_schema(self) -> bool {
        matches!(self, Self::Avro | Self::Protobuf)
    }

    /// The format's name as written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Avro => "avro",
            Self::Protobuf => "protobuf",
        }
    }
}

/// A value schema given with the spec: exactly one of `inline`, `path`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueSchemaSpec {
    /// The schema text (Avro JSON, or `.proto` text for `format: protobuf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_VALUE_SCHEMA))]
    pub inline: Option<String>,
    /// A file holding the schema text (e.g. a mounted ConfigMap), read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PATH))]
    pub path: Option<String>,
}

/// A Confluent-compatible schema registry (its REST API: `GET /schemas/ids/{id}`,
/// `GET /subjects/{subject}/versions/latest`, `POST /subjects/{subject}/versions`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchemaRegistrySpec {
    /// Base URL, `http://` or `https://` (e.g. `http://schema-registry:8081`).
    #[schemars(length(min = 1, max = MAX_PATH))]
    pub url: String,
    /// The subject: a sink registers its schema there (or, without `valueSchema`, writes with its
    /// latest version); a source without `valueSchema` reads with its latest version. Default
    /// `<topic>-value` (the registry's TopicNameStrategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_SUBJECT))]
    pub subject: Option<String>,
    /// Credentials, by reference only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SchemaRegistryAuthSpec>,
}

/// Schema registry credentials: HTTP basic (`username` with `password`) or a bearer token. The
/// secret parts are references, read at run time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchemaRegistryAuthSpec {
    /// Basic-auth user name (the registry's `basic.auth.user.info` user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_NAME))]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// Bearer token (`Authorization: Bearer ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretRef>,
}

/// Text lines from a TCP server (for testing, as Spark's socket source: not fault tolerant).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketSourceSpec {
    #[schemars(length(max = MAX_HOST))]
    pub host: String,
    pub port: u16,
}

/// Generated rows `(timestamp, value)` at a fixed rate, as Spark's `rate` source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateSourceSpec {
    /// Rows per second over all partitions.
    pub rows_per_second: u64,
    /// Number of partitions (= tasks).
    #[serde(default = "default_one")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("rate.partitions is fixed when the checkpoint is created; start a new query to change it"))]
    #[schemars(range(min = 1))]
    pub partitions: u32,
}

/// One table of the Nexmark benchmark's generated auction site (persons, auctions, bids), as the
/// Beam/Flink Nexmark generator makes it. Events are a pure function of their offset, so every
/// `nexmark` source with the same `eventsPerSecond` and `maxEvents` sees the same event stream: a
/// manifest declares one source per table it reads (`person`, `auction`, `bid`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NexmarkSourceSpec {
    /// Which events of the stream this source's rows are.
    pub table: NexmarkTable,
    /// Events per second over all partitions and all three tables; event times are spaced by
    /// `1 / eventsPerSecond`. Unset: events are available as fast as they are read, and event
    /// times are spaced as at the reference default of 10,000 events/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub events_per_second: Option<u64>,
    /// Total events (all three tables) after which the stream ends; unset: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Number of partitions (= tasks); event `n` belongs to partition `n % partitions`.
    #[serde(default = "default_one")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nexmark.partitions is fixed when the checkpoint is created; start a new query to change it"))]
    #[schemars(range(min = 1))]
    pub partitions: u32,
}

/// A table of the Nexmark event stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NexmarkTable {
    /// New users: 1 event in 50.
    Person,
    /// New auctions: 3 events in 50.
    Auction,
    /// Bids: 46 events in 50.
    Bid,
}

fn default_one() -> u32 {
    1
}

/// One column of a source schema.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ColumnSpec {
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub name: String,
    /// `string`, `double`, `float`, `long`/`bigint`, `int`/`integer`, `short`, `boolean`,
    /// `timestamp` (UTC, microseconds), `date`, `binary`.
    #[serde(rename = "type")]
    #[schemars(length(max = MAX_TYPE))]
    pub data_type: String,
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// Event-time watermark of a source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatermarkSpec {
    /// A timestamp column of the schema.
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub column: String,
    /// How late an event may arrive, e.g. `10m`, `30 seconds`.
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub delay: String,
    /// With several source tasks and a keyed exchange: a source task that has read no rows for
    /// this long no longer holds the query's watermark back (Flink's `withIdleness`), e.g. `30s`.
    /// Default 1 minute (docs/keyed-exchange.md, "Watermark across tasks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub idle_timeout: Option<String>,
}

/// Handling of records that do not decode (Spark's PERMISSIVE/DROPMALFORMED/FAILFAST).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BadRecordPolicy {
    /// Write the record with its origin to the bad-records location and count it.
    #[default]
    Quarantine,
    /// Count it and drop it.
    Drop,
    /// Stop the query with an error naming the file and line.
    Fail,
}

/// What to do with a poison batch (`spec.onPoisonBatch`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoisonBatchPolicy {
    /// Stop the query with `PoisonBatch` (a restart replays the batch once more and stops again).
    #[default]
    Stop,
    /// Write the batch's input and error to the bad-records location, commit the batch as skipped
    /// and continue with the next one. The batch's rows reach neither the sink nor the state.
    Quarantine,
}

/// A static table for enrichment joins. Exactly one of `file`, `postgres` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(has(self.file) ? 1 : 0) + (has(self.postgres) ? 1 : 0) == 1").message("exactly one of file, postgres must be set"))]
pub struct TableSpec {
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<StaticFileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresTableSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_COLUMNS))]
    // Keyed by column name: an apply that only defaults `nullable` merges instead of replacing
    // the whole list (client-side then server-side apply conflicted on an atomic list).
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schema: Vec<ColumnSpec>,
    /// Reload period, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub refresh_interval: Option<String>,
}

/// A static table read whole from one file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticFileSpec {
    #[schemars(length(max = MAX_PATH))]
    pub path: String,
    pub format: FileFormat,
}

/// A large static table in PostgreSQL, looked up per batch by the join keys: each micro-batch
/// fetches only the rows whose `keyColumns` equal a key of the batch (one query with
/// `= ANY($1)` arrays). The table's `schema` names the columns read and their types.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresTableSpec {
    pub connection: PostgresConnectionSpec,
    /// Table (or view) name, optionally `schema.table`.
    #[schemars(length(max = MAX_TABLE))]
    pub table: String,
    /// Columns the table is looked up by (they should be indexed); the SQL must join on all of
    /// them with equalities, e.g. `ON e.deviceId = d.deviceId`.
    #[schemars(length(max = MAX_KEY_COLUMNS))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub key_columns: Vec<String>,
}

/// Where result rows go. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(has(self.console) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.kafka) ? 1 : 0) + (has(self.postgres) ? 1 : 0) + (has(self.memory) ? 1 : 0) + (has(self.delta) ? 1 : 0) + (has(self.noop) ? 1 : 0) == 1").message("exactly one of console, file, kafka, postgres, memory, delta, noop must be set"))]
pub struct SinkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noop: Option<NoopSinkSpec>,
}

/// The kind of a sink, for messages and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Console,
    File,
    Kafka,
    Postgres,
    Memory,
    Delta,
    Noop,
}

impl SinkSpec {
    /// The configured kinds (exactly one in a valid spec).
    pub fn kinds(&self) -> Vec<SinkKind> {
        let mut kinds = Vec::new();
        if self.console.is_some() {
            kinds.push(SinkKind::Console);
        }
        if self.file.is_some() {
            kinds.push(SinkKind::File);
        }
        if self.kafka.is_some() {
            kinds.push(SinkKind::Kafka);
        }
        if self.postgres.is_some() {
            kinds.push(SinkKind::Postgres);
        }
        if self.memory.is_some() {
            kinds.push(SinkKind::Memory);
        }
        if self.delta.is_some() {
            kinds.push(SinkKind::Delta);
        }
        if self.noop.is_some() {
            kinds.push(SinkKind::Noop);
        }
        kinds
    }
}

/// Prints each batch as a table on stdout, like Spark's console sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleSinkSpec {
    /// Rows shown per batch (Spark's `numRows`, default 20).
    #[serde(default = "default_num_rows")]
    pub num_rows: usize,
    /// Cut cells longer than 20 characters to 17 and `...` (Spark's console sink `truncate`,
    /// default true); false shows every value whole.
    #[serde(default = "default_true")]
    pub truncate: bool,
}

fn default_num_rows() -> usize {
    20
}

/// Files under a directory, one or more per task and batch, named deterministically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSinkSpec {
    /// Directory URL or local path.
    #[schemars(length(max = MAX_PATH))]
    pub path: String,
    pub format: FileFormat,
    /// Columns written as Hive-style `col=value/` directories (and left out of the files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_KEY_COLUMNS))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub partition_by: Vec<String>,
    /// Where undecodable source records go instead of `<checkpoint>/bad-records/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PATH))]
    pub bad_records_path: Option<String>,
    /// `partitions`: each batch replaces, per task, the files of every partition directory whose
    /// rows changed (the others keep their files), atomically at the commit log. Needs
    /// `outputMode: complete`; without it the file sink only appends (`outputMode: append`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<FileOverwrite>,
    /// Merge the small files of closed partitions (append mode): each task's files of a partition
    /// directory its recent batches no longer write, under the commit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<FileCompactionSpec>,
}

/// When and how the file sink merges small files (`sink.file.compaction`).
///
/// A task's partition directory is **closed** when none of the task's last `closedAfterBatches`
/// batches wrote into it (without `partitionBy`: a file is closed once it is that many batches
/// old). Every `closedAfterBatches` batches, a task merges its closed files of each directory that
/// has at least `minFiles` of them, oldest first, into files of about `targetFileSize`. Files of
/// batches the checkpoint still retains (`checkpoint.minBatchesToRetain`) are left alone, so a
/// checkpoint restore can still take them back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileCompactionSpec {
    /// A directory is compacted once it holds at least this many closed files of a task
    /// (default 10).
    #[serde(default = "default_min_files")]
    #[schemars(range(min = 2, max = 1_000_000))]
    pub min_files: u32,
    /// Merged files stop growing at this size, e.g. `128MiB` (default; units B, KiB/Ki, MiB/Mi,
    /// GiB/Gi).
    #[serde(default = "default_target_file_size")]
    #[x_kube(validation = Rule::new(crate::size::SIZE_RULE).message(crate::size::SIZE_MESSAGE))]
    #[schemars(length(max = 32))]
    pub target_file_size: String,
    /// Batches without a write after which a task's partition directory counts as closed; also
    /// how often compaction runs (default 10).
    #[serde(default = "default_closed_after_batches")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub closed_after_batches: u32,
}

fn default_min_files() -> u32 {
    10
}

fn default_target_file_size() -> String {
    "128MiB".into()
}

fn default_closed_after_batches() -> u32 {
    10
}

/// What an overwriting file sink replaces each batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileOverwrite {
    /// The partition directories (`partitionBy`) whose rows changed; the whole directory when
    /// there is no `partitionBy`.
    Partitions,
}

/// Records to a Kafka topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkSpec {
    #[schemars(length(max = MAX_BOOTSTRAP))]
    pub bootstrap_servers: String,
    #[schemars(length(max = MAX_TOPIC))]
    pub topic: String,
    /// `raw`: rows carry `key`/`value` (and optional `headers`, `partition`) columns; `json`,
    /// `csv`, `avro`, `protobuf` encode the whole row as the value.
    #[serde(default)]
    pub format: KafkaFormat,
    /// The writer schema of `format: avro` (Avro JSON) or `format: protobuf` (`.proto` text),
    /// inline or from a file. With `schemaRegistry` it is registered under the subject (the
    /// registry's compatibility rule decides) and records carry its id; without `valueSchema` the
    /// subject's latest version is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema: Option<ValueSchemaSpec>,
    /// `format: protobuf`: the message each row is written as (fully qualified, or relative to
    /// the file's package). Default: the file's first message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_MESSAGE_TYPE))]
    pub message_type: Option<String>,
    /// A Confluent-compatible schema registry: records are written in its wire format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistrySpec>,
    /// Column whose value is the record key when `format` encodes the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub key_column: Option<String>,
    /// Use Kafka transactions (exactly once); a broker that refuses them is an error.
    #[serde(default)]
    pub exactly_once: bool,
    /// Extra librdkafka properties, as for the Kafka source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_OPTIONS))]
    #[schemars(transform = option_values)]
    pub options: BTreeMap<String, String>,
    /// Secret librdkafka properties, as for the Kafka source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub secret_options: BTreeMap<String, SecretRef>,
}

/// Connection to PostgreSQL. The password is read from an environment variable, never from the spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresConnectionSpec {
    #[schemars(length(max = MAX_HOST))]
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub database: String,
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub user: String,
    /// Environment variable holding the password (default `PGPASSWORD`); in a pod, set it from a
    /// Secret with `spec.env[].valueFrom.secretKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ENV_NAME))]
    pub password_env: Option<String>,
    /// TLS to the server, as libpq's `sslmode`.
    #[serde(default)]
    pub ssl_mode: PostgresSslMode,
    /// CA certificates (PEM) that verify the server with `verify-ca` / `verify-full`, from a file
    /// or an environment variable; the system's CA store when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<SecretRef>,
}

/// libpq's `sslmode` values that Sluice supports (`allow` and `prefer`, which fall back to plain
/// text silently, are left out on purpose).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    /// Plain text (a server on 127.0.0.1 or a trusted in-cluster network).
    #[default]
    Disable,
    /// Encrypted; the server's certificate is not checked (libpq's `require` without a root cert).
    Require,
    /// Encrypted; the certificate must chain to `sslRootCert` (any host name).
    VerifyCa,
    /// Encrypted; the certificate must chain to `sslRootCert` and name `host`.
    VerifyFull,
}

fn default_pg_port() -> u16 {
    5432
}

/// Rows into a PostgreSQL table, one transaction per (task, batch) with a `sluice_commits` row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSinkSpec {
    pub connection: PostgresConnectionSpec,
    #[schemars(length(max = MAX_TABLE))]
    pub table: String,
    #[serde(default)]
    pub mode: PostgresWriteMode,
    /// Key columns for `upsert` and `accumulate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_KEY_COLUMNS))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub key_columns: Vec<String>,
    /// PostgreSQL's `statement_timeout` for the sink's statements (a duration, default `60s`): a
    /// write that hangs (a lock, a slow trigger) fails and is retried instead of stalling the batch
    /// forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub statement_timeout: Option<String>,
}

/// How rows are written to PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PostgresWriteMode {
    #[default]
    Insert,
    /// `INSERT ... ON CONFLICT (keys) DO UPDATE SET` the new values.
    Upsert,
    /// `INSERT ... ON CONFLICT (keys) DO UPDATE SET v = table.v + excluded.v` (running counters).
    Accumulate,
}

/// Rows counted and dropped (Spark's `noop` format, Flink's `blackhole` connector): a benchmark
/// measures the query without a sink's cost. No options.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoopSinkSpec {}

/// An object without fields. Written by hand: the derived schema of an empty struct with
/// `deny_unknown_fields` is `additionalProperties: false`, which a Kubernetes API server refuses
/// in a CRD; locally serde still refuses any field.
impl JsonSchema for NoopSinkSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NoopSinkSpec".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Rows counted and dropped (Spark's `noop` format, Flink's `blackhole` connector): a benchmark measures the query without a sink's cost. No options.",
            "type": "object",
            "properties": {}
        })
    }
}

/// Rows kept in process memory, for tests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySinkSpec {
    /// Name under which the rows can be read back.
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub name: String,
}

/// A Delta Lake table (local path, `file://` or `s3://`), written with one Delta commit per task and
/// batch. Exactly once through Delta's idempotent writes: each commit carries a `txn` action
/// (app id `<queryId>-<task>`, version = batch id), as Spark's Delta sink does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeltaSinkSpec {
    /// The table's root (where `_delta_log/` is); created on the first batch if missing.
    #[schemars(length(max = MAX_PATH))]
    pub path: String,
    /// Partition columns of a new table (Delta's `partitionColumns`); an existing table keeps its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_KEY_COLUMNS))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub partition_by: Vec<String>,
    /// How a batch is written; unset: from `outputMode` (append → `append`, complete →
    /// `overwrite`, update → `merge`). Set, it must be that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeltaWriteMode>,
    /// `merge`: the columns a row is matched on; unset: the query's grouping columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_KEY_COLUMNS))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub key_columns: Vec<String>,
    /// Periodic compaction (Delta's OPTIMIZE), run between batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize: Option<DeltaOptimizeSpec>,
    /// Periodic VACUUM (deletes files no version newer than `retention` refers to), run between
    /// batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<DeltaVacuumSpec>,
}

/// How the Delta sink writes a batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeltaWriteMode {
    /// Add the batch's rows (`outputMode: append`).
    Append,
    /// Replace the table's content with the batch's rows in one commit (`outputMode: complete`).
    Overwrite,
    /// MERGE the rows on the key columns: update matched rows, insert the others
    /// (`outputMode: update`).
    Merge,
}

/// Compaction of a Delta table's small files.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeltaOptimizeSpec {
    /// Time between compactions, e.g. `1h`.
    #[schemars(length(max = 64))]
    pub every: String,
    /// Size files are binned to (Delta's `targetSize`), e.g. `128MiB`; default 128 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub target_file_size: Option<String>,
}

/// VACUUM of a Delta table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeltaVacuumSpec {
    /// Time between vacuums, e.g. `1h`.
    #[schemars(length(max = 64))]
    pub every: String,
    /// Files removed from the table longer ago than this are deleted (default `7d`, Delta's
    /// `deletedFileRetentionDuration`); readers of older versions than that fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub retention: Option<String>,
}

/// What table the SQL runs over; see [`StreamingQuerySpec::sql_scope`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SqlScope {
    /// The unbounded input table (Structured Streaming).
    #[default]
    Stream,
    /// Each micro-batch on its own (DStreams, `foreachBatch`).
    MicroBatch,
}

/// Spark's output modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Only rows that will never change: new rows of a stateless query, windows closed by the watermark.
    #[default]
    Append,
    /// Rows of the result table changed in this batch.
    Update,
    /// The whole result table every batch.
    Complete,
}

/// When micro-batches run. At most one field is set; none means the default trigger
/// (next batch as soon as the previous one ends).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(has(self.processingTime) ? 1 : 0) + (has(self.once) && self.once ? 1 : 0) + (has(self.availableNow) && self.availableNow ? 1 : 0) + (has(self.continuous) ? 1 : 0) <= 1").message("at most one of processingTime, once, availableNow, continuous may be set"))]
pub struct TriggerSpec {
    /// Fixed interval between batch starts, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub processing_time: Option<String>,
    /// One batch over everything available, then stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once: Option<bool>,
    /// Everything available at start, in rate-limited batches, then stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_now: Option<bool>,
    /// Continuous processing with this checkpoint interval, e.g. `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub continuous: Option<String>,
}

/// When the worker's `/healthz` answers 503 (Kubernetes' liveness probe then restarts it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthSpec {
    /// A batch running longer than this (a duration, e.g. `15m`) makes `/healthz` unhealthy until
    /// it ends: a hung sink or lookup is restarted instead of stalling the query. Unset (default):
    /// no bound, since a `once` batch or a large backlog can take hours. Set it well above the
    /// longest normal batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub max_batch_duration: Option<String>,
}

/// When a one-shot query runs (`spec.schedule`), as a Kubernetes CronJob's fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Cron expression, CronJob syntax: `minute hour day-of-month month day-of-week`, or a macro
    /// (`@hourly`, `@daily`, ...). The local backend also takes a leading seconds field.
    #[schemars(length(min = 1, max = crate::schedule::MAX_CRON))]
    pub cron: String,
    /// IANA time zone of `cron` (`Europe/Zurich`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::schedule::MAX_TIME_ZONE))]
    pub time_zone: Option<String>,
    /// Only `Forbid`: a run due while the previous one still runs waits for it (runs of one
    /// query share its checkpoint, so they never overlap).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
}

/// What a due run does while the previous one still runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Never two runs at once.
    #[default]
    Forbid,
}

/// `checkpoint.minBatchesToRetain` when the manifest does not say (Spark's default, 100).
pub const DEFAULT_MIN_BATCHES_TO_RETAIN: u64 = 100;

/// Checkpoint location and its fate when the query is deleted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// URL or local path; the operator appends `<namespace>/<name>/<uid>/`. Defaults to the chart's value
    /// (operator) or `./checkpoints/<name>` (local run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PATH))]
    pub location: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    /// Batches each task's log keeps whole (default 100, Spark's `minBatchesToRetain`); older
    /// offsets, commits and state files are folded into one compacted entry and deleted, so the
    /// checkpoint stays bounded. Also how far back a stale writer is still fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_batches_to_retain: Option<u32>,
}

/// What happens to the checkpoint when the query is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

/// Replica count and autoscaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelismSpec {
    /// Replicas when autoscaling is off; the starting count when it is on.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Number of key groups of a stateful query (Flink's max parallelism): a group's state lives
    /// in key group `hash(key) % maxParallelism`, and no more stateful tasks than key groups can
    /// run. Fixed for the checkpoint's life. Default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_parallelism: Option<u32>,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            autoscale: None,
            max_parallelism: None,
        }
    }
}

/// Autoscaler settings (Flink autoscaler / DS2 adapted to micro-batches).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct AutoscaleSpec {
    #[serde(default)]
    pub enabled: bool,
    /// `apply` scales; `recommend` only records decisions in status.
    #[serde(default)]
    pub mode: AutoscaleMode,
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub min_replicas: u32,
    #[serde(default = "default_max_replicas")]
    pub max_replicas: u32,
    /// Target busy ratio per replica, in (0, 1].
    #[serde(default = "default_target_utilization")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("targetUtilization must be in (0, 1]"))]
    pub target_utilization: f64,
    /// Time to drain the backlog after a scale-up, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub catch_up_duration: Option<String>,
    /// How long the load must stay high before a scale-up, e.g. `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub scale_up_stabilization: Option<String>,
    /// Window whose max recommendation a scale-down uses, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub scale_down_window: Option<String>,
    /// No new decision for this long after a rescale, e.g. `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub cooldown: Option<String>,
}

fn default_max_replicas() -> u32 {
    8
}

fn default_target_utilization() -> f64 {
    0.7
}

/// Whether autoscaling decisions are applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscaleMode {
    #[default]
    Apply,
    Recommend,
}

/// How a spec change is rolled out (Flink operator's upgrade modes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeMode {
    /// Stop at a batch boundary and continue from the checkpoint with its state.
    #[default]
    LastState,
    /// Start a new checkpoint generation (no state carried over).
    Stateless,
}

/// A model usable in SQL. Exactly one of `file`, `streamingKMeans`, `streamingLinearRegression`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// Name used in SQL, e.g. `predict('risk', temperature)`.
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ModelFileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_k_means: Option<StreamingKMeansSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_linear_regression: Option<StreamingLinearRegressionSpec>,
}

/// A model trained offline, in a JSON or ONNX file (local path or `s3://`), reloaded when it changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelFileSpec {
    #[schemars(length(max = MAX_PATH))]
    pub path: String,
    /// `json` (coefficients) or `onnx`; by default `onnx` when `path` ends in `.onnx`, else `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,
    /// ONNX only: name of the graph output holding the score; default: the first output of a
    /// floating-point type (a classifier's probabilities rather than its label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub output: Option<String>,
    /// ONNX only: column of a `[rows, classes]` output taken as the score; default 1 (the
    /// positive class) for two columns, 0 for one; required for more than two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_index: Option<u32>,
}

/// Format of a model file; by default `onnx` when the path ends in `.onnx`, else `json`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// `{"type": "linear" | "logistic", "coefficients": [..], "intercept": b}`.
    Json,
    /// An ONNX graph (standard and `ai.onnx.ml` operators), run by tract.
    Onnx,
}

/// MLlib's `StreamingKMeans`: k centers updated every micro-batch with a forgetting factor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingKMeansSpec {
    /// Source whose rows train the model.
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub source: String,
    /// Numeric feature columns of that source.
    #[schemars(length(max = MAX_FEATURES))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub features: Vec<String>,
    pub k: u32,
    /// Weight of the past per time unit, in [0, 1] (1 = remember everything).
    #[serde(default = "default_decay")]
    pub decay_factor: f64,
    /// Alternative to `decayFactor`: time units after which a point counts half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life: Option<f64>,
    /// `batches` (decay once per batch) or `points` (decay per point), as MLlib.
    #[serde(default)]
    pub time_unit: KMeansTimeUnit,
    /// Initial centers (k rows of `features.len()` values); random when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CENTERS))]
    #[schemars(inner(length(max = MAX_FEATURES)))]
    pub initial_centers: Vec<Vec<f64>>,
    /// Weight of each initial center (default 0: the first batch replaces them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CENTERS))]
    pub initial_weights: Vec<f64>,
    /// Seed for random initial centers (MLlib's `setRandomCenters(dim, weight, seed)`).
    #[serde(default)]
    pub seed: u64,
}

fn default_decay() -> f64 {
    1.0
}

/// Unit of the k-means forgetting factor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KMeansTimeUnit {
    #[default]
    Batches,
    Points,
}

/// MLlib's `StreamingLinearRegressionWithSGD`: least squares by mini-batch SGD on every micro-batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingLinearRegressionSpec {
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub source: String,
    #[schemars(length(max = MAX_FEATURES))]
    #[schemars(inner(length(max = MAX_IDENTIFIER)))]
    pub features: Vec<String>,
    #[schemars(length(max = MAX_IDENTIFIER))]
    pub label: String,
    /// SGD step size; iteration i uses `stepSize / sqrt(i)` (MLlib's SimpleUpdater).
    #[serde(default = "default_step_size")]
    pub step_size: f64,
    /// SGD iterations per micro-batch.
    #[serde(default = "default_iterations")]
    pub num_iterations: u32,
    /// Learn an intercept as an extra weight on a constant 1.
    #[serde(default)]
    pub fit_intercept: bool,
    /// Starting weights (zeros when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FEATURES_PLUS_ONE))]
    pub initial_weights: Vec<f64>,
}

fn default_step_size() -> f64 {
    0.1
}

fn default_iterations() -> u32 {
    50
}
