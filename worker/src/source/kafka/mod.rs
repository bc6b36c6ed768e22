//! Kafka source: one task per topic partition, offsets kept in the checkpoint (not in a consumer
//! group), as Spark's Kafka source.
//!
//! **Planning consumes.** The tansu broker's high watermark is unreliable (docs/kafka.md), so a
//! task plans a batch by *consuming* from its next offset until the per-trigger limit or until the
//! broker has nothing more right now. The consumed records are kept for the read step, so a normal
//! batch fetches each record once; a replayed range (after a crash) is fetched again with
//! `assign()` at its exact start offset and read up to its exact end, so the replay sees the same
//! records.
//!
//! **Ranges.** A range is `{"partitions": {"<topic>/<partition>": [from, until]}}` (offsets,
//! `until` exclusive); a task can own more than one partition when partitions are added while the
//! query runs (see below).
//!
//! **Tasks and new partitions.** The partitions discovered at start, sorted by (topic, partition),
//! are the tasks: partition `i` of that list is task `i`. The checkpoint fixes the task count
//! (`metadata.json`), so partitions added later are *not* new tasks: every
//! [`METADATA_REFRESH`] a task re-reads the topic metadata and takes over each new partition
//! `(topic, p)` with `p % tasks == task`, starting at its earliest offset. After a restart the
//! source finds more partitions than the checkpoint was created with; it keeps the checkpoint's
//! task count ([`Source::fit_task_count`]): partitions at index `< tasks` of the sorted list keep
//! their task, the others follow the same `p % tasks` rule.
//!
//! **Schema.** `format: raw` (default): `key: Binary?, value: Binary?, topic: Utf8, partition:
//! Int32, offset: Int64, timestamp: Timestamp(µs, UTC), headers: List<Struct<key: Utf8, value:
//! Binary?>>` (Spark's columns). `format: json|csv`: the spec's `schema` columns, decoded from the
//! value; records that do not decode are bad records with origin `topic/partition` and line = offset.
//! `format: avro | protobuf`: the columns of the Avro reader schema or the Protobuf reader message
//! (see [`crate::format`]), with the same bad-record rule.
//!
//! **Backlog.** `high watermark - next offset` per owned partition, summed, refreshed at most every
//! [`METADATA_REFRESH`]; on tansu the high watermark can be wrong, so treat it as a hint.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_crds::{KafkaFormat, KafkaSourceSpec, SourceSpec};

use crate::error::{EngineError, Result};
use crate::format::{RawValue, ValueDecoder};
use crate::kafka_client::client_config;
use crate::schema::{arrow_schema, timestamp_type};
use crate::source::decode::{TextFormat, decode_text};
use crate::source::{PlanLimit, Range, ReadOutput, Source, SourceTask};

/// How often a task re-reads topic metadata (new partitions) and watermarks (backlog).
pub const METADATA_REFRESH: Duration = Duration::from_secs(5);
/// Timeout of metadata and watermark requests.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `plan` waits for the first record when nothing is buffered.
pub const FIRST_RECORD_WAIT: Duration = Duration::from_millis(5);
/// How long `plan` waits for the first record right after (re)assigning partitions, and on every
/// plan of a frozen task (`availableNow`, `once`): the first fetch of a new assignment takes longer
/// than [`FIRST_RECORD_WAIT`], and a bounded trigger must not mistake "not fetched yet" for "no
/// more records".
pub const ASSIGN_WAIT: Duration = Duration::from_secs(2);
/// How long a replay may wait for the records of a logged range before failing (retryably).
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Offset value meaning "earliest" in `startingOffsets` JSON (Spark's convention).
pub const EARLIEST: i64 = -2;
/// Offset value meaning "latest" in `startingOffsets` JSON.
pub const LATEST: i64 = -1;

/// A Kafka range: per partition key `topic/partition`, offsets `[from, until)`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct KafkaRange {
    pub partitions: BTreeMap<String, [i64; 2]>,
    /// Offsets `[from, until)` per partition that were deleted before the task read them and were
    /// skipped (`failOnDataLoss: false`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lost: BTreeMap<String, [i64; 2]>,
}

/// Whether a partition lost records between the offset a task expected next and the first record
/// it got, given the partition's log start offset `low` (when known): `[expected, first]` when the
/// offsets went back (a recreated or truncated topic; `first < expected`), `[expected, end)` when
/// the log now starts after `expected` (deleted by retention; `end` is the log start or the first
/// record, whichever is lower). A gap the log start does not explain (transaction markers,
/// compaction) is no loss, nor is no gap.
pub fn loss_of(expected: i64, first: i64, low: Option<i64>) -> Option<[i64; 2]> {
    if first < expected {
        return Some([expected, first]);
    }
    match low {
        Some(low) if first > expected && low > expected => Some([expected, low.min(first)]),
        _ => None,
    }
}

/// The error (or, with `failOnDataLoss: false`, the warning) for offsets deleted before they
/// were read. An entry `[from, until]` with `until < from` is a partition whose offsets went
/// back (a recreated or truncated topic).
fn data_loss_message(lost: &BTreeMap<String, [i64; 2]>) -> String {
    lost.iter()
        .map(|(key, [from, until])| {
            if until < from {
                format!(
                    "the offsets of {key} went back from {from} to {until} (topic recreated or \
                     truncated): records of the old log from offset {from} on were never read"
                )
            } else {
                format!("offsets {from}..{until} of {key} were deleted before they were read")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a consumer error only says the broker is (or was) unreachable: librdkafka keeps
/// reconnecting by itself, so the consumer goes on once the broker is back.
fn is_connection_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve)
    )
}

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    fn key(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    fn parse(key: &str) -> Option<Self> {
        let (topic, partition) = key.rsplit_once('/')?;
        Some(Self {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
        })
    }
}

/// One consumed record, owned.
#[derive(Clone, Debug)]
struct OwnedRecord {
    partition: TopicPartition,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The Arrow schema of `format: raw` (Spark's Kafka source columns).
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", timestamp_type(), true),
        Field::new("headers", headers_type(), true),
    ]))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// `List<Struct<key: Utf8, value: Binary>>`, Spark's `headers` column.
pub fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        false,
    )))
}

fn source_error(name: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::Source {
        source_name: name.to_string(),
        message: message.to_string(),
    }
}

/// The configured Kafka source.
pub struct KafkaSource {
    name: String,
    spec: KafkaSourceSpec,
    schema: SchemaRef,
    text_format: Option<TextFormat>,
    /// `format: avro | protobuf`: the value decoder (shared by the tasks).
    values: Option<Arc<ValueDecoder>>,
    /// Partitions at start, sorted: index = task.
    initial: Vec<TopicPartition>,
    starting: StartingOffsets,
    /// Task count: the partitions at start, or the checkpoint's count when the topic grew since.
    tasks: u32,
}

/// Where a partition without a logged range starts.
#[derive(Clone, Debug, PartialEq)]
pub enum StartingOffsets {
    Earliest,
    Latest,
    /// Per `topic/partition` offset (or [`EARLIEST`]/[`LATEST`]); partitions not listed start at
    /// the earliest offset.
    Explicit(BTreeMap<String, i64>),
}

impl StartingOffsets {
    /// Parses `earliest`, `latest` or Spark's JSON `{"topic":{"0":23,"1":-2}}`.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            json => {
                let parsed: BTreeMap<String, BTreeMap<String, i64>> = serde_json::from_str(json)
                    .map_err(|e| {
                        EngineError::InvalidQuery(format!(
                            "kafka.startingOffsets: expected earliest, latest or JSON \
                             {{\"topic\":{{\"0\":23}}}}: {e}"
                        ))
                    })?;
                let mut out = BTreeMap::new();
                for (topic, partitions) in parsed {
                    for (p, offset) in partitions {
                        out.insert(format!("{topic}/{p}"), offset);
                    }
                }
                Ok(Self::Explicit(out))
            }
        }
    }

    fn offset_for(&self, tp: &TopicPartition) -> Offset {
        let value = match self {
            Self::Earliest => EARLIEST,
            Self::Latest => LATEST,
            Self::Explicit(map) => map.get(&tp.key()).copied().unwrap_or(EARLIEST),
        };
        match value {
            LATEST => Offset::End,
            v if v < 0 => Offset::Beginning,
            v => Offset::Offset(v),
        }
    }
}

/// Lists the partitions of the spec's topics (sorted).
fn discover<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    spec: &KafkaSourceSpec,
    name: &str,
) -> Result<Vec<TopicPartition>> {
    let metadata = match &spec.topic {
        Some(topic) if spec.topics.is_empty() => {
            consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)
        }
        _ => consumer.fetch_metadata(None, METADATA_TIMEOUT),
    }
    .map_err(|e| source_error(name, format!("topic metadata: {e}")))?;
    let pattern = match &spec.topic_pattern {
        Some(p) => Some(
            anchored_regex(p)
                .map_err(|e| EngineError::InvalidQuery(format!("kafka.topicPattern: {e}")))?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    for topic in metadata.topics() {
        let wanted = match (&spec.topic, &pattern) {
            (Some(t), _) => t == topic.name(),
            (None, Some(p)) => p.is_match(topic.name()),
            (None, None) => spec.topics.iter().any(|t| t == topic.name()),
        };
        if !wanted || topic.error().is_some() {
            continue;
        }
        for p in topic.partitions() {
            out.push(TopicPartition {
                topic: topic.name().to_string(),
                partition: p.id(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// `topicPattern` as a regex anchored at both ends (the `regex` crate DataFusion already uses).
fn anchored_regex(pattern: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

impl KafkaSource {
    /// Connects to the brokers and discovers the partitions.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a bad format/schema/startingOffsets;
    /// [`EngineError::Source`] when the brokers cannot be reached.
    pub fn new(spec: &SourceSpec, kafka: &KafkaSourceSpec) -> Result<Self> {
        let mut values = None;
        let (schema, text_format) = match kafka.format {
            KafkaFormat::Raw => (raw_schema(), None),
            KafkaFormat::Json => (arrow_schema(&spec.schema)?, Some(TextFormat::Json)),
            KafkaFormat::Csv => (
                arrow_schema(&spec.schema)?,
                Some(TextFormat::Csv {
                    header: false,
                    delimiter: b',',
                }),
            ),
            KafkaFormat::Avro | KafkaFormat::Protobuf => {
                let decoder = ValueDecoder::new(
                    kafka.format,
                    &format!("source `{}`: kafka", spec.name),
                    &spec.name,
                    kafka.value_schema.as_ref(),
                    kafka.message_type.as_deref(),
                    kafka.schema_registry.as_ref(),
                    kafka.topic.as_deref(),
                )?;
                let schema = decoder.schema();
                values = Some(Arc::new(decoder));
                (schema, None)
            }
        };
        let starting = StartingOffsets::parse(&kafka.starting_offsets)?;
        let consumer = new_consumer_with(kafka, &spec.name, LastBrokerError::default())?;
        let initial = discover(&consumer, kafka, &spec.name).map_err(|e| {
            // librdkafka queues its logs and errors until a poll: serve them before explaining.
            let _ = consumer.poll(Duration::from_millis(100));
            consumer.context().explain(e)
        })?;
        if initial.is_empty() {
            return Err(source_error(
                &spec.name,
                "no partitions found for the configured topic(s)",
            ));
        }
        Ok(Self {
            name: spec.name.clone(),
            spec: kafka.clone(),
            schema,
            text_format,
            values,
            tasks: initial.len() as u32,
            initial,
            starting,
        })
    }
}

fn new_consumer(spec: &KafkaSourceSpec, name: &str) -> Result<BaseConsumer> {
    new_consumer_with(spec, name, DefaultConsumerContext)
}

fn new_consumer_with<C: ConsumerContext>(
    spec: &KafkaSourceSpec,
    name: &str,
    context: C,
) -> Result<BaseConsumer<C>> {
    let mut config = client_config(&spec.bootstrap_servers, &spec.options, &spec.secret_options)?;
    // No consumer group offsets: the checkpoint is the source of truth.
    config
        .set_if_absent("group.id", "sluice")
        .set_if_absent("enable.auto.commit", "false")
        .set_if_absent("enable.auto.offset.store", "false")
        .set_if_absent("enable.partition.eof", "false")
        .set_if_absent("fetch.wait.max.ms", "5")
        .set_if_absent("auto.offset.reset", "earliest");
    config
        .create_with_context(context)
        .map_err(|e| source_error(name, format!("consumer: {e}")))
}

/// Keeps librdkafka's last error (a TLS handshake or SASL failure, say) so that a failed metadata
/// request says why instead of only "broker transport failure". librdkafka's reasons name brokers,
/// mechanisms and certificate problems, never a credential.
#[derive(Default)]
struct LastBrokerError(std::sync::Mutex<Option<String>>);

impl ClientContext for LastBrokerError {
    // A failed connection (`FAIL`, e.g. a TLS handshake) is logged at error level.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}");
                self.record(log_message);
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        self.record(reason);
    }
}

impl ConsumerContext for LastBrokerError {}

impl LastBrokerError {
    fn record(&self, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_string());
        }
    }

    /// `e` with the last broker error appended to a source error's message.
    fn explain(&self, e: EngineError) -> EngineError {
        let last = self.0.lock().ok().and_then(|l| l.clone());
        match (e, last) {
            (
                EngineError::Source {
                    source_name,
                    message,
                },
                Some(reason),
            ) => EngineError::Source {
                source_name,
                message: format!("{message}; last broker error: {reason}"),
            },
            (e, _) => e,
        }
    }
}

trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn partitions(&self) -> u32 {
        self.tasks
    }
    fn fit_task_count(&mut self, tasks: u32) {
        if tasks > 0 && (tasks as usize) < self.initial.len() {
            tracing::info!(
                source = %self.name,
                partitions = self.initial.len(),
                tasks,
                "kafka: more partitions than checkpoint tasks; spreading the new ones over the tasks"
            );
            self.tasks = tasks;
        }
    }
    async fn open(&self, task: u32, logged: &[Range]) -> Result<Box<dyn SourceTask>> {
        self.open_with_tasks(task, self.partitions(), logged).await
    }
}

impl KafkaSource {
    /// Opens task `task` of `tasks` (the checkpoint's task count, which may be smaller than the
    /// partitions discovered now).
    ///
    /// # Errors
    /// [`EngineError::Source`] when the consumer cannot be created.
    pub async fn open_with_tasks(
        &self,
        task: u32,
        tasks: u32,
        logged: &[Range],
    ) -> Result<Box<dyn SourceTask>> {
        let mut next: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
        for range in logged {
            let range: KafkaRange = serde_json::from_value(range.clone())
                .map_err(|e| source_error(&self.name, format!("unreadable logged range: {e}")))?;
            for (key, [_, until]) in range.partitions {
                if let Some(tp) = TopicPartition::parse(&key) {
                    next.insert(tp, Offset::Offset(until));
                }
            }
        }
        let consumer = Arc::new(new_consumer(&self.spec, &self.name)?);
        let mut kafka_task = KafkaTask {
            name: self.name.clone(),
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            text_format: self.text_format.clone(),
            values: self.values.clone(),
            task,
            tasks: tasks.max(1),
            starting: self.starting.clone(),
            consumer,
            next,
            assigned: Vec::new(),
            buffer: VecDeque::new(),
            planned: BTreeMap::new(),
            last_refresh: None,
            backlog: None,
            cold: true,
            frozen: false,
        };
        kafka_task.take_partitions(&self.initial, true)?;
        Ok(Box::new(kafka_task))
    }
}

/// The reader of one task (one or more partitions).
struct KafkaTask {
    name: String,
    spec: KafkaSourceSpec,
    schema: SchemaRef,
    text_format: Option<TextFormat>,
    values: Option<Arc<ValueDecoder>>,
    task: u32,
    tasks: u32,
    starting: StartingOffsets,
    consumer: Arc<BaseConsumer>,
    /// Next offset to plan per owned partition (`Offset::Beginning`/`End` until the first record).
    next: BTreeMap<TopicPartition, Offset>,
    /// Partitions the consumer is assigned, in order.
    assigned: Vec<TopicPartition>,
    /// Consumed but not yet planned records.
    buffer: VecDeque<OwnedRecord>,
    /// Planned (not yet read) ranges' records, by range JSON text.
    planned: BTreeMap<String, Vec<OwnedRecord>>,
    last_refresh: Option<Instant>,
    backlog: Option<u64>,
    /// The next poll waits [`ASSIGN_WAIT`] (after an assignment).
    cold: bool,
    frozen: bool,
}

impl KafkaTask {
    /// Whether this task owns `tp`: by position in the initial list, else by `partition % tasks`.
    fn owns(&self, tp: &TopicPartition, index_at_start: Option<usize>) -> bool {
        match index_at_start {
            Some(i) if i < self.tasks as usize => i as u32 == self.task,
            _ => (tp.partition.unsigned_abs() % self.tasks) == self.task,
        }
    }

    /// Adds the partitions of `all` this task owns and (re)assigns the consumer when they changed.
    fn take_partitions(&mut self, all: &[TopicPartition], initial: bool) -> Result<()> {
        let mut changed = false;
        for (i, tp) in all.iter().enumerate() {
            let index = initial.then_some(i);
            if self.owns(tp, index) && !self.assigned.contains(tp) {
                let start = match self.next.get(tp) {
                    Some(offset) => *offset,
                    // A partition added while running starts at its beginning (nothing is lost).
                    None if !initial => Offset::Beginning,
                    None => self.starting.offset_for(tp),
                };
                self.next.insert(tp.clone(), start);
                self.assigned.push(tp.clone());
                changed = true;
            }
        }
        if changed {
            self.buffer.clear();
            self.cold = true;
            self.reassign()?;
        }
        Ok(())
    }

    fn reassign(&self) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for tp in &self.assigned {
            let offset = self.next.get(tp).copied().unwrap_or(Offset::Beginning);
            list.add_partition_offset(&tp.topic, tp.partition, offset)
                .map_err(|e| source_error(&self.name, e))?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| source_error(&self.name, format!("assign: {e}")))
    }

    /// Polls up to `max` records, waiting at most `first_wait` for the first one.
    async fn poll(&self, max: usize, first_wait: Duration) -> Result<Vec<OwnedRecord>> {
        let consumer = Arc::clone(&self.consumer);
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut wait = first_wait;
            let mut unreachable = None;
            while out.len() < max {
                match consumer.poll(wait) {
                    None => break,
                    // librdkafka reconnects by itself and queues one such event per failed
                    // attempt: drain them in this poll, so that after an outage the stale ones do
                    // not fail one batch (and one backoff) each.
                    Some(Err(e)) if is_connection_error(&e) => unreachable = Some(e),
                    // Records already taken from the consumer must not be dropped: plan them and
                    // let the next poll report the error again.
                    Some(Err(e)) if !out.is_empty() => {
                        tracing::warn!(source = %name, error = %e, "kafka consume error");
                        break;
                    }
                    Some(Err(e)) => return Err(source_error(&name, format!("consume: {e}"))),
                    Some(Ok(m)) => out.push(owned(&m)),
                }
                wait = Duration::ZERO;
            }
            match unreachable {
                Some(e) if out.is_empty() => Err(source_error(&name, format!("consume: {e}"))),
                _ => Ok(out),
            }
        })
        .await
        .map_err(|e| EngineError::Internal(format!("kafka poll task: {e}")))?
    }

    /// Every [`METADATA_REFRESH`]: picks up new partitions and refreshes the backlog.
    async fn refresh(&mut self) -> Result<()> {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < METADATA_REFRESH)
        {
            return Ok(());
        }
        self.last_refresh = Some(Instant::now());
        let consumer = Arc::clone(&self.consumer);
        let spec = self.spec.clone();
        let name = self.name.clone();
        let owned: Vec<(TopicPartition, Option<i64>)> = self
            .assigned
            .iter()
            .map(|tp| {
                let next = match self.next.get(tp) {
                    Some(Offset::Offset(o)) => Some(*o),
                    _ => None,
                };
                (tp.clone(), next)
            })
            .collect();
        let (all, backlog) = tokio::task::spawn_blocking(move || {
            let all = discover(&consumer, &spec, &name)?;
            let mut backlog = 0u64;
            for (tp, next) in owned {
                if let Ok((low, high)) =
                    consumer.fetch_watermarks(&tp.topic, tp.partition, METADATA_TIMEOUT)
                {
                    let from = next.unwrap_or(low);
                    backlog += (high - from).max(0) as u64;
                }
            }
            Ok::<_, EngineError>((all, backlog))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("kafka metadata task: {e}")))??;
        self.backlog = Some(backlog.saturating_sub(self.buffer.len() as u64));
        self.take_partitions(&all, false)
    }

    /// Offsets deleted before this task read them, among the partitions of the next `take`
    /// buffered records: where a partition's first record comes after the offset the task expected
    /// next and the partition's log now starts after that offset, `[expected, first record)`
    /// (gaps the log start does not explain, transaction markers or compaction, are not loss);
    /// where it comes before (the consumer was reset to a new log's start),
    /// `[expected, first record]` with the end below the start.
    async fn lost_before(&self, take: usize) -> Result<BTreeMap<String, [i64; 2]>> {
        let mut gaps: BTreeMap<TopicPartition, [i64; 2]> = BTreeMap::new();
        for record in self.buffer.iter().take(take) {
            if gaps.contains_key(&record.partition) {
                continue;
            }
            let expected = match self.next.get(&record.partition) {
                Some(Offset::Offset(n)) => *n,
                _ => record.offset,
            };
            gaps.insert(record.partition.clone(), [expected, record.offset]);
        }
        let mut lost: BTreeMap<String, [i64; 2]> = BTreeMap::new();
        gaps.retain(|tp, [expected, first]| {
            if let Some(range) = loss_of(*expected, *first, None) {
                lost.insert(tp.key(), range);
            }
            first > expected
        });
        if gaps.is_empty() {
            return Ok(lost);
        }
        let consumer = Arc::clone(&self.consumer);
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            for (tp, [expected, first]) in gaps {
                let (low, _) = consumer
                    .fetch_watermarks(&tp.topic, tp.partition, METADATA_TIMEOUT)
                    .map_err(|e| source_error(&name, format!("watermarks of {}: {e}", tp.key())))?;
                if let Some(range) = loss_of(expected, first, Some(low)) {
                    lost.insert(tp.key(), range);
                }
            }
            Ok(lost)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("kafka watermark task: {e}")))?
    }

    fn per_trigger_limit(&self, limit: PlanLimit) -> usize {
        match (limit, self.spec.max_offsets_per_trigger) {
            (PlanLimit::PerTrigger, Some(max)) => {
                // Spark's limit is over all partitions; split it evenly over the tasks.
                (max.div_ceil(u64::from(self.tasks))).max(1) as usize
            }
            _ => usize::MAX,
        }
    }

    /// Fetches exactly the records of `range` again (a replay after a restart).
    async fn refetch(&self, range: &KafkaRange) -> Result<Vec<OwnedRecord>> {
        let mut config = client_config(
            &self.spec.bootstrap_servers,
            &self.spec.options,
            &self.spec.secret_options,
        )?;
        config
            .set_if_absent("group.id", "sluice")
            .set_if_absent("enable.auto.commit", "false")
            .set_if_absent("fetch.wait.max.ms", "5");
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| source_error(&self.name, format!("consumer: {e}")))?;
        let mut list = TopicPartitionList::new();
        let mut wanted: BTreeMap<TopicPartition, [i64; 2]> = BTreeMap::new();
        for (key, [from, until]) in &range.partitions {
            let tp = TopicPartition::parse(key)
                .ok_or_else(|| source_error(&self.name, format!("bad partition key {key}")))?;
            if until > from {
                list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*from))
                    .map_err(|e| source_error(&self.name, e))?;
                wanted.insert(tp, [*from, *until]);
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // A logged range whose start was deleted since cannot be replayed exactly.
        let mut lost = BTreeMap::new();
        for (tp, [from, until]) in &wanted {
            if let Ok((low, _)) =
                consumer.fetch_watermarks(&tp.topic, tp.partition, METADATA_TIMEOUT)
                && low > *from
            {
                lost.insert(tp.key(), [*from, low.min(*until)]);
            }
        }
        if !lost.is_empty() {
            let message = data_loss_message(&lost);
            if self.spec.fail_on_data_loss {
                return Err(EngineError::DataLoss {
                    source_name: self.name.clone(),
                    message: format!("replaying a logged batch: {message}"),
                });
            }
            tracing::warn!(source = %self.name, lost = %message, "kafka: a replayed batch lost deleted offsets (failOnDataLoss: false)");
            list = TopicPartitionList::new();
            for (tp, range) in wanted.iter_mut() {
                if let Some([_, low]) = lost.get(&tp.key()) {
                    range[0] = *low;
                }
                if range[1] > range[0] {
                    list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(range[0]))
                        .map_err(|e| source_error(&self.name, e))?;
                }
            }
            wanted.retain(|_, [from, until]| until > from);
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
        }
        consumer
            .assign(&list)
            .map_err(|e| source_error(&self.name, format!("assign: {e}")))?;
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            let mut done: BTreeMap<TopicPartition, bool> =
                wanted.keys().map(|k| (k.clone(), false)).collect();
            while done.values().any(|d| !d) {
                if started.elapsed() > REPLAY_TIMEOUT {
                    return Err(source_error(
                        &name,
                        "timed out re-reading a logged range (broker down or records deleted?)",
                    ));
                }
                match consumer.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Err(e)) => return Err(source_error(&name, format!("consume: {e}"))),
                    Some(Ok(m)) => {
                        let record = owned(&m);
                        if let Some([from, until]) = wanted.get(&record.partition) {
                            if record.offset >= *from && record.offset < *until {
                                out.push(record.clone());
                            }
                            if record.offset + 1 >= *until {
                                done.insert(record.partition.clone(), true);
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("kafka replay task: {e}")))?
    }

    async fn to_batches(&self, records: &[OwnedRecord]) -> Result<ReadOutput> {
        if let Some(decoder) = &self.values {
            return decode_values(&self.name, decoder, records).await;
        }
        decode_records(&self.schema, self.text_format.as_ref(), records)
    }
}

/// Rows of `records`: the raw columns, or the values decoded with `format` (bad records keep their
/// `topic/partition` as origin and their offset as line).
fn decode_records(
    schema: &SchemaRef,
    text_format: Option<&TextFormat>,
    records: &[OwnedRecord],
) -> Result<ReadOutput> {
    match text_format {
        None => Ok(ReadOutput {
            batches: vec![raw_batch(schema, records)?],
            ..ReadOutput::default()
        }),
        Some(format) => {
            let mut output = ReadOutput::default();
            // Decode per partition so bad records get their partition as origin.
            let mut by_partition: BTreeMap<&TopicPartition, Vec<&OwnedRecord>> = BTreeMap::new();
            for r in records {
                by_partition.entry(&r.partition).or_default().push(r);
            }
            for (tp, records) in by_partition {
                let mut text = Vec::new();
                for r in &records {
                    // One record per line: a newline inside a value would split it.
                    text.extend(
                        r.value
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                    );
                    text.push(b'\n');
                }
                let (batches, mut bad) = decode_text(schema, format, &tp.key(), &text)?;
                for b in &mut bad {
                    // Line n (1-based) is the n-th record of this partition.
                    if let Some(r) = records.get(b.line.saturating_sub(1) as usize) {
                        b.line = r.offset as u64;
                    }
                }
                output.batches.extend(batches);
                output.bad_records.extend(bad);
            }
            Ok(output)
        }
    }
}

/// Rows of `records` decoded as Avro or Protobuf (bad records keep their `topic/partition` and
/// offset).
async fn decode_values(
    name: &str,
    decoder: &ValueDecoder,
    records: &[OwnedRecord],
) -> Result<ReadOutput> {
    let origins: Vec<String> = records.iter().map(|r| r.partition.key()).collect();
    let values: Vec<RawValue<'_>> = records
        .iter()
        .zip(&origins)
        .map(|(r, origin)| RawValue {
            origin,
            offset: r.offset,
            value: r.value.as_deref(),
        })
        .collect();
    let (batches, bad_records) = decoder.decode(name, &values).await?;
    Ok(ReadOutput {
        batches,
        bad_records,
        ..ReadOutput::default()
    })
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> OwnedRecord {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    OwnedRecord {
        partition: TopicPartition {
            topic: m.topic().to_string(),
            partition: m.partition(),
        },
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        timestamp_ms: m.timestamp().to_millis(),
        headers,
    }
}

fn raw_batch(schema: &SchemaRef, records: &[OwnedRecord]) -> Result<RecordBatch> {
    let keys = BinaryArray::from_iter(records.iter().map(|r| r.key.as_deref()));
    let values = BinaryArray::from_iter(records.iter().map(|r| r.value.as_deref()));
    let topics = StringArray::from_iter_values(records.iter().map(|r| r.partition.topic.as_str()));
    let partitions = Int32Array::from_iter_values(records.iter().map(|r| r.partition.partition));
    let offsets = Int64Array::from_iter_values(records.iter().map(|r| r.offset));
    let timestamps = TimestampMicrosecondArray::from_iter(
        records.iter().map(|r| r.timestamp_ms.map(|ms| ms * 1000)),
    )
    .with_timezone("UTC");
    // Collected first: arrow's `from_iter_values` needs a sized iterator.
    let header_keys: Vec<&str> = records
        .iter()
        .flat_map(|r| r.headers.iter().map(|(k, _)| k.as_str()))
        .collect();
    let header_values: Vec<Option<&[u8]>> = records
        .iter()
        .flat_map(|r| r.headers.iter().map(|(_, v)| v.as_deref()))
        .collect();
    let header_keys = StringArray::from(header_keys);
    let header_values = BinaryArray::from(header_values);
    let entries = StructArray::try_new(
        header_fields(),
        vec![Arc::new(header_keys) as ArrayRef, Arc::new(header_values)],
        None,
    )?;
    let headers = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
        OffsetBuffer::from_lengths(records.iter().map(|r| r.headers.len())),
        Arc::new(entries),
        None,
    )?;
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(keys),
            Arc::new(values),
            Arc::new(topics),
            Arc::new(partitions),
            Arc::new(offsets),
            Arc::new(timestamps),
            Arc::new(headers),
        ],
    )?)
}

#[async_trait]
impl SourceTask for KafkaTask {
    async fn freeze(&mut self) -> Result<()> {
        // The high watermark is unreliable (tansu); `plan` consumes until the broker has nothing
        // more, which is what "available now" means here.
        self.frozen = true;
        Ok(())
    }

    async fn plan(&mut self, limit: PlanLimit) -> Result<Option<Range>> {
        self.refresh().await?;
        let max = self.per_trigger_limit(limit);
        if self.buffer.len() < max {
            let wanted = max.saturating_sub(self.buffer.len()).min(1 << 20);
            let wait = if self.cold || self.frozen {
                ASSIGN_WAIT
            } else {
                FIRST_RECORD_WAIT
            };
            let polled = self.poll(wanted, wait).await?;
            self.cold = false;
            self.buffer.extend(polled);
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let take = self.buffer.len().min(max);
        let lost = self.lost_before(take).await?;
        if !lost.is_empty() {
            let message = data_loss_message(&lost);
            if self.spec.fail_on_data_loss {
                return Err(EngineError::DataLoss {
                    source_name: self.name.clone(),
                    message,
                });
            }
            tracing::warn!(source = %self.name, lost = %message, "kafka: skipping deleted offsets (failOnDataLoss: false)");
        }
        let records: Vec<OwnedRecord> = self.buffer.drain(..take).collect();
        let mut range = KafkaRange {
            lost,
            ..KafkaRange::default()
        };
        for r in &records {
            let entry = range
                .partitions
                .entry(r.partition.key())
                .or_insert([r.offset, r.offset + 1]);
            entry[0] = entry[0].min(r.offset);
            entry[1] = entry[1].max(r.offset + 1);
            self.next
                .insert(r.partition.clone(), Offset::Offset(r.offset + 1));
        }
        let value =
            serde_json::to_value(&range).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.planned.insert(value.to_string(), records);
        if let Some(b) = self.backlog.as_mut() {
            *b = b.saturating_sub(take as u64);
        }
        Ok(Some(value))
    }

    async fn read(&mut self, range: &Range) -> Result<ReadOutput> {
        let parsed: KafkaRange = serde_json::from_value(range.clone())
            .map_err(|e| source_error(&self.name, format!("unreadable range: {e}")))?;
        let records = match self.planned.get(&range.to_string()) {
            Some(records) => records.clone(),
            None => {
                let records = self.refetch(&parsed).await?;
                self.planned.insert(range.to_string(), records.clone());
                records
            }
        };
        let mut output = self.to_batches(&records).await?;
        if !parsed.lost.is_empty() {
            output.data_loss = vec![format!(
                "source `{}`: {}",
                self.name,
                data_loss_message(&parsed.lost)
            )];
            output.lost_offsets = parsed
                .lost
                .values()
                .map(|[from, until]| (until - from).max(0) as u64)
                .sum();
            output.lost_ranges = parsed.lost.len() as u64;
        }
        Ok(output)
    }

    fn merge(&self, earlier: &Range, later: &Range) -> Option<Range> {
        merge_ranges(earlier, later)
    }

    fn committed(&mut self, range: &Range) {
        self.planned.remove(&range.to_string());
    }

    fn backlog(&self) -> Option<u64> {
        self.backlog.map(|b| b + self.buffer.len() as u64)
    }
}

/// One range covering two consecutive ranges of the same task (per partition: min start, max end).
pub fn merge_ranges(earlier: &Range, later: &Range) -> Option<Range> {
    let mut merged: KafkaRange = serde_json::from_value(earlier.clone()).ok()?;
    let later: KafkaRange = serde_json::from_value(later.clone()).ok()?;
    for (key, [from, until]) in later.partitions {
        let entry = merged.partitions.entry(key).or_insert([from, until]);
        entry[0] = entry[0].min(from);
        entry[1] = entry[1].max(until);
    }
    serde_json::to_value(merged).ok()
}
