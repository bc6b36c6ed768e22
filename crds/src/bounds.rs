//! Bounds of the CRD schema. The apiserver estimates each CEL rule's worst-case cost from the
//! declared maxItems/maxProperties/maxLength (an unbounded list counts as filling the 3 MiB request)
//! and rejects the CRD when a rule or the total exceeds its budget; bounds also keep a typo'd
//! manifest from growing an object without limit. Identifier limits follow PostgreSQL (63 bytes),
//! Kafka topic names are at most 249 characters, Kubernetes object names 253.

/// Longest SQL text (64 KiB).
/// Longest `spec.restartNonce` (a timestamp, a counter, a commit hash).
pub const MAX_RESTART_NONCE: u32 = 253;
pub const MAX_SQL: u32 = 65_536;
/// Longest identifier: source, table, model and column names, keys (PostgreSQL's 63).
pub const MAX_IDENTIFIER: u32 = 63;
/// Longest PostgreSQL table name, optionally `schema.table`.
pub const MAX_TABLE: u32 = 127;
/// Longest column type name (`timestamp`, `double`, ...).
pub const MAX_TYPE: u32 = 32;
/// Longest path or URL (files, checkpoint, models).
pub const MAX_PATH: u32 = 2048;
/// Longest Kubernetes object name (a Secret's name).
pub const MAX_NAME: u32 = 253;
/// Longest host name (DNS).
pub const MAX_HOST: u32 = 253;
/// Longest environment variable name.
pub const MAX_ENV_NAME: u32 = 253;
/// Longest container image reference (registry/repository:tag@sha256:digest).
pub const MAX_IMAGE: u32 = 1024;
/// Longest Kafka `bootstrapServers` list.
pub const MAX_BOOTSTRAP: u32 = 2048;
/// Longest Kafka topic name (Kafka's limit).
pub const MAX_TOPIC: u32 = 249;
/// Most topics of one Kafka source.
pub const MAX_TOPICS: u32 = 64;
/// Longest `topicPattern` regular expression.
pub const MAX_PATTERN: u32 = 1024;
/// Longest Kafka `startingOffsets` (a JSON map of partition offsets may be long).
pub const MAX_STARTING_OFFSETS: u32 = 16_384;
/// Most librdkafka `options` of a source or sink.
pub const MAX_OPTIONS: u32 = 64;
/// Longest librdkafka option value.
pub const MAX_OPTION_VALUE: u32 = 4096;
/// Most columns in a source or table schema.
pub const MAX_COLUMNS: u32 = 512;
/// Most key / partition columns.
pub const MAX_KEY_COLUMNS: u32 = 16;
/// Most static tables.
pub const MAX_TABLES: u32 = 32;
/// Most models.
pub const MAX_MODELS: u32 = 16;
/// Most model features.
pub const MAX_FEATURES: u32 = 256;
/// Most weights of a linear model (features plus the intercept).
pub const MAX_FEATURES_PLUS_ONE: u32 = MAX_FEATURES + 1;
/// Most k-means centers.
pub const MAX_CENTERS: u32 = 1024;
/// Most extra environment variables of the worker.
pub const MAX_ENV: u32 = 128;
/// Longest inline value schema (Avro JSON or `.proto` text), 128 KiB.
pub const MAX_VALUE_SCHEMA: u32 = 131_072;
/// Longest schema registry subject.
pub const MAX_SUBJECT: u32 = 255;
/// Longest Protobuf message name (`messageType`, a fully qualified name such as `iot.v1.Reading`).
pub const MAX_MESSAGE_TYPE: u32 = 255;
