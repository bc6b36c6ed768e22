//! Kafka sink: result rows as records of one topic.
//!
//! `format: raw` takes the record from the columns `value` (required), `key`, `headers`
//! (`List<Struct<key: Utf8, value: Binary>>`, the Kafka source's shape) and `partition` (Int32);
//! `value`/`key` may be Binary or any type castable to Utf8. `format: json|csv` encodes the whole
//! row as the value (JSON object / one CSV line without header) and takes the key from
//! `keyColumn`. `format: avro | protobuf` encodes the row as an Avro record or a Protobuf message
//! of the writer schema (columns by field name, see [`crate::format`]), framed with the schema id
//! when a `schemaRegistry` is set.
//!
//! Every record carries the headers [`HEADER_QUERY`], [`HEADER_QUERY_ID`], [`HEADER_TASK`],
//! [`HEADER_BATCH`] and [`HEADER_SEQ`] (row index within the batch), so a consumer can drop
//! duplicates of a replayed batch: `(query id, task, batch, seq)` is unique per logical output record.
//!
//! **Delivery.** Without `exactlyOnce`: at-least-once (a batch replayed after a crash between the
//! sink write and the checkpoint commit is written again, with the same dedup headers). With
//! `exactlyOnce: true` each (task, batch) is one Kafka transaction (`transactional.id =
//! sluice-<query>-<task>`, fencing zombies); readers with `isolation.level=read_committed` never see a
//! partial or aborted batch. Once a batch's transaction committed, the engine records that in the
//! checkpoint (`tasks/<p>/sinks/<batchId>`) before the batch's commit, so neither a retry (say the
//! checkpoint store was down) nor a restart sends it again. One window remains, as in Spark: a crash
//! between the transaction's commit and that record (one object write) replays the batch, with the
//! same dedup headers. A broker that refuses transactions (authorization, version) is an error
//! naming `exactlyOnce`: the sink never falls back to at-least-once silently. A commit that times
//! out with the broker unreachable ([`COMMIT_TIMEOUT`]) fails the batch retryably but keeps the
//! transaction: the batch's retry resumes that commit rather than aborting it and sending the
//! records again (an aborted transaction's records stay in the log, and some brokers, tansu 0.6
//! among them, show them to `read_committed` readers).

#[cfg(test)]
mod tests;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, BinaryArray, Int32Array, ListArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_crds::{KafkaFormat, KafkaSinkSpec};
use tokio::sync::Mutex;

use crate::error::{EngineError, Result};
use crate::fault::{PausePoint, pause_point};
use crate::format::ValueEncoder;
use crate::kafka_client::client_config;
use crate::sink::Sink;
use verify::{Landed, landed};

/// Header naming the query (`namespace/name`).
pub const HEADER_QUERY: &str = "sluice-query";
/// Header with the checkpoint's query id (UUID): distinguishes runs of a query name on new checkpoints.
pub const HEADER_QUERY_ID: &str = "sluice-query-id";
/// Header with the task id.
pub const HEADER_TASK: &str = "sluice-task";
/// Header with the batch id.
pub const HEADER_BATCH: &str = "sluice-batch";
/// Header with the row's index within the (task, batch) output.
pub const HEADER_SEQ: &str = "sluice-seq";
/// How long a delivery or transaction call may take before the batch fails (retryably).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `commit_transaction` call waits before the batch fails retryably with the
/// transaction kept open: the retry resumes that commit (librdkafka's contract for a retriable
/// commit error) instead of sending the batch again, so a broker outage shows in `lastError`
/// within seconds and aborts nothing.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A transaction whose commit timed out: its batch, where its records were delivered, and
/// whether a resumed commit has since succeeded.
///
/// Why the check after a resumed commit: librdkafka's contract is that a retriable commit error
/// may be retried to finish the same transaction, and a broker that keeps its log does finish it.
/// A broker restarted in between may have lost the open transaction's records (tansu on S3 does:
/// the CI outage test saw a resumed commit succeed and one batch's records never appear, even
/// uncommitted). So after a resumed commit the sink reads back the last record it delivered to
/// each partition ([`verify::landed`]): there and carrying this (query id, task, batch) → done;
/// a gap or another record at that offset → the transaction is lost, and the batch is sent again
/// in a new one (no duplicate: nothing of it is in the log); no answer → checked again on the
/// batch's next try.
#[derive(Debug, Clone, PartialEq)]
struct PendingCommit {
    batch_id: u64,
    /// Per partition, the offset of the last record of the transaction (delivery reports).
    last_offsets: BTreeMap<i32, i64>,
    committed: bool,
}

/// One record to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub partition: Option<i32>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The configured Kafka sink.
pub struct KafkaSink {
    spec: KafkaSinkSpec,
    query: String,
    query_id: String,
    /// Non-transactional producer, shared by all tasks.
    shared: Mutex<Option<Arc<FutureProducer>>>,
    /// Transactional producers per task (`exactlyOnce`).
    transactional: Mutex<HashMap<u32, Arc<FutureProducer>>>,
    /// Per task, the batch whose transaction's commit failed retriably (timed out with the broker
    /// unreachable): its records are sent, its producer kept; the next write of that batch resumes
    /// the commit, then checks that the records are there (see [`PendingCommit`]).
    commit_pending: Mutex<HashMap<u32, PendingCommit>>,
    /// `format: avro | protobuf`: the value encoder.
    values: Option<ValueEncoder>,
}

fn sink_error(message: impl std::fmt::Display) -> EngineError {
    EngineError::Sink(format!("kafka: {message}"))
}

impl KafkaSink {
    /// A sink for `spec`; `query` (`namespace/name`) and `query_id` (the checkpoint's UUID) go
    /// into every record's headers.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unreadable or invalid Avro or Protobuf `valueSchema`.
    pub fn new(spec: &KafkaSinkSpec, query: &str, query_id: &str) -> Result<Self> {
        let values = match spec.format {
            KafkaFormat::Avro | KafkaFormat::Protobuf => Some(ValueEncoder::new(
                spec.format,
                "sink.kafka",
                spec.value_schema.as_ref(),
                spec.message_type.as_deref(),
                spec.schema_registry.as_ref(),
                &spec.topic,
            )?),
            _ => None,
        };
        Ok(Self {
            spec: spec.clone(),
            query: query.to_string(),
            query_id: query_id.to_string(),
            shared: Mutex::new(None),
            transactional: Mutex::new(HashMap::new()),
            commit_pending: Mutex::new(HashMap::new()),
            values,
        })
    }

    /// Whether writes use Kafka transactions (`exactlyOnce`).
    pub fn transactional(&self) -> bool {
        self.spec.exactly_once
    }

    fn config(&self) -> Result<rdkafka::ClientConfig> {
        let mut config = client_config(
            &self.spec.bootstrap_servers,
            &self.spec.options,
            &self.spec.secret_options,
        )?;
        if !self.spec.options.contains_key("linger.ms") {
            // Low latency by default: a micro-batch is sent at once anyway.
            config.set("linger.ms", "1");
        }
        if !self.spec.options.contains_key("message.timeout.ms") {
            config.set("message.timeout.ms", "30000");
        }
        Ok(config)
    }

    async fn plain_producer(&self) -> Result<Arc<FutureProducer>> {
        let mut guard = self.shared.lock().await;
        if let Some(p) = guard.as_ref() {
            return Ok(Arc::clone(p));
        }
        let producer: FutureProducer = self
            .config()?
            .create()
            .map_err(|e| sink_error(format!("producer: {e}")))?;
        let producer = Arc::new(producer);
        *guard = Some(Arc::clone(&producer));
        Ok(producer)
    }

    /// The task's transactional producer.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when the broker refuses transactions (not authorized, too
    /// old): `exactlyOnce: true` cannot be kept; [`EngineError::Sink`] when it is unreachable.
    async fn transactional_producer(&self, task: u32) -> Result<Arc<FutureProducer>> {
        let mut guard = self.transactional.lock().await;
        if let Some(p) = guard.get(&task) {
            return Ok(Arc::clone(p));
        }
        let mut config = self.config()?;
        config.set(
            "transactional.id",
            format!("sluice-{}-{task}", self.query.replace('/', ".")),
        );
        let producer: FutureProducer = config
            .create()
            .map_err(|e| sink_error(format!("producer: {e}")))?;
        let producer = Arc::new(producer);
        let init = Arc::clone(&producer);
        let result = tokio::task::spawn_blocking(move || init.init_transactions(SEND_TIMEOUT))
            .await
            .map_err(|e| EngineError::Internal(format!("kafka init task: {e}")))?;
        match result {
            Ok(()) => {
                guard.insert(task, Arc::clone(&producer));
                Ok(producer)
            }
            Err(e) if is_unsupported(&e) => Err(EngineError::InvalidQuery(format!(
                "sink.kafka.exactlyOnce: the broker refuses transactions ({e}); allow this \
                 principal to use transactional ids `sluice-*` (or upgrade the broker), or set \
                 `exactlyOnce: false` for at-least-once delivery with dedup headers"
            ))),
            Err(e) => Err(sink_error(format!("init transactions: {e}"))),
        }
    }

    /// The records of a batch's rows, with the dedup headers.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when the rows lack a `value` column (raw) or the key column.
    pub fn records(
        &self,
        task: u32,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<Vec<OutRecord>> {
        let mut out = Vec::new();
        for batch in batches {
            match self.spec.format {
                KafkaFormat::Raw => raw_records(batch, &mut out)?,
                KafkaFormat::Json | KafkaFormat::Csv => encoded_records(
                    batch,
                    self.spec.format,
                    self.spec.key_column.as_deref(),
                    &mut out,
                )?,
                KafkaFormat::Avro | KafkaFormat::Protobuf => {
                    return Err(EngineError::Internal(
                        "kafka sink: avro and protobuf rows are encoded by encode_records".into(),
                    ));
                }
            }
        }
        self.add_headers(task, batch_id, &mut out);
        Ok(out)
    }

    /// The records of a batch's rows in any format (Avro and Protobuf need the registry, hence
    /// async), with the dedup headers.
    ///
    /// # Errors
    /// As [`Self::records`]; for Avro and Protobuf, [`EngineError::InvalidQuery`] when a column
    /// does not fit the writer schema or the registry refuses it, [`EngineError::Sink`] when it
    /// is unreachable.
    pub async fn encode_records(
        &self,
        task: u32,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<Vec<OutRecord>> {
        let Some(encoder) = &self.values else {
            return self.records(task, batch_id, batches);
        };
        let mut out = Vec::new();
        for batch in batches {
            let keys = key_values(batch, self.spec.key_column.as_deref())?;
            for (row, value) in encoder.encode(batch).await?.into_iter().enumerate() {
                out.push(OutRecord {
                    key: keys.as_ref().and_then(|k| k.get(row).cloned().flatten()),
                    value: Some(value),
                    partition: None,
                    headers: Vec::new(),
                });
            }
        }
        self.add_headers(task, batch_id, &mut out);
        Ok(out)
    }

    fn add_headers(&self, task: u32, batch_id: u64, out: &mut [OutRecord]) {
        for (seq, record) in out.iter_mut().enumerate() {
            record.headers.extend([
                (
                    HEADER_QUERY.to_string(),
                    Some(self.query.as_bytes().to_vec()),
                ),
                (
                    HEADER_QUERY_ID.to_string(),
                    Some(self.query_id.as_bytes().to_vec()),
                ),
                (HEADER_TASK.to_string(), Some(task.to_string().into_bytes())),
                (
                    HEADER_BATCH.to_string(),
                    Some(batch_id.to_string().into_bytes()),
                ),
                (HEADER_SEQ.to_string(), Some(seq.to_string().into_bytes())),
            ]);
        }
    }

    /// Sends `records` and waits for every delivery; returns, per partition, the offset of the
    /// last record delivered there.
    async fn send_all(
        &self,
        producer: &FutureProducer,
        records: &[OutRecord],
    ) -> Result<BTreeMap<i32, i64>> {
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.spec.topic).headers(headers);
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = r.value.as_deref() {
                record = record.payload(v);
            }
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            producer.send(record, SEND_TIMEOUT)
        });
        let mut last_offsets = BTreeMap::new();
        for result in join_all(sends).await {
            match result {
                Ok(delivery) => {
                    let last = last_offsets
                        .entry(delivery.partition)
                        .or_insert(delivery.offset);
                    *last = (*last).max(delivery.offset);
                }
                Err((e, _)) => return Err(sink_error(format!("delivery: {e}"))),
            }
        }
        Ok(last_offsets)
    }
}

impl KafkaSink {
    /// Commits the task's open transaction. A retriable failure (the broker did not answer within
    /// [`COMMIT_TIMEOUT`]) keeps the producer and marks `batch_id` as pending, so the batch's retry
    /// resumes this commit; any other failure aborts and drops the producer.
    async fn commit(
        &self,
        task: u32,
        batch_id: u64,
        last_offsets: BTreeMap<i32, i64>,
        producer: Arc<FutureProducer>,
    ) -> Result<()> {
        let p = Arc::clone(&producer);
        let committed = tokio::task::spawn_blocking(move || p.commit_transaction(COMMIT_TIMEOUT))
            .await
            .map_err(|e| EngineError::Internal(format!("kafka commit task: {e}")))?;
        let Err(e) = committed else {
            return Ok(());
        };
        if is_resumable(&e) {
            self.commit_pending.lock().await.insert(
                task,
                PendingCommit {
                    batch_id,
                    last_offsets,
                    committed: false,
                },
            );
        } else {
            let p = Arc::clone(&producer);
            let _ = tokio::task::spawn_blocking(move || p.abort_transaction(SEND_TIMEOUT)).await;
            // A producer in an unknown transaction state is rebuilt next time.
            self.transactional.lock().await.remove(&task);
        }
        Err(sink_error(format!("commit transaction: {e}")))
    }
}

/// Whether a failed `commit_transaction` may be called again to finish the same transaction
/// (librdkafka: a retriable error that neither requires an abort nor is fatal).
fn is_resumable(e: &rdkafka::error::KafkaError) -> bool {
    match e {
        rdkafka::error::KafkaError::Transaction(e) => {
            e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal()
        }
        _ => false,
    }
}

fn is_unsupported(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnsupportedVersion
                | C::UnsupportedFeature
                | C::UnsupportedForMessageFormat
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
        )
    )
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let records = self.encode_records(task, batch_id, batches).await?;
        if records.is_empty() {
            return Ok(0);
        }
        let transactional = if self.spec.exactly_once {
            Some(self.transactional_producer(task).await?)
        } else {
            None
        };
        match transactional {
            None => {
                let producer = self.plain_producer().await?;
                self.send_all(&producer, &records).await?;
            }
            Some(producer) => {
                let pending = self.commit_pending.lock().await.remove(&task);
                match pending {
                    Some(mut pending) if pending.batch_id == batch_id => {
                        if !pending.committed {
                            tracing::info!(
                                task,
                                batch_id,
                                "kafka: resuming the batch's transaction commit"
                            );
                            let offsets = pending.last_offsets.clone();
                            self.commit(task, batch_id, offsets, Arc::clone(&producer))
                                .await?;
                            pending.committed = true;
                        }
                        let found = landed(
                            &self.spec,
                            &self.query_id,
                            task,
                            batch_id,
                            &pending.last_offsets,
                        )
                        .await;
                        match found {
                            Landed::Yes => return Ok(records.len() as u64),
                            Landed::Unknown => {
                                self.commit_pending.lock().await.insert(task, pending);
                                return Err(sink_error(format!(
                                    "batch {batch_id}: the resumed transaction commit succeeded \
                                     but its records could not be read back yet; checking again"
                                )));
                            }
                            Landed::Lost => {
                                // Nothing of the batch is in the log: send it again, in a new
                                // transaction of a new producer.
                                tracing::warn!(
                                    task,
                                    batch_id,
                                    "kafka: the broker lost the resumed transaction; sending the batch again"
                                );
                                self.transactional.lock().await.remove(&task);
                                return Err(sink_error(format!(
                                    "batch {batch_id}: the broker lost the transaction whose \
                                     commit was resumed (its records are not in the log); the \
                                     batch is sent again"
                                )));
                            }
                        }
                    }
                    Some(other) => {
                        // Not the batch that is pending (cannot happen while the engine replays
                        // a failed batch first): drop that transaction, start afresh.
                        tracing::warn!(
                            task,
                            batch_id,
                            pending = other.batch_id,
                            "kafka: aborting another batch's pending transaction"
                        );
                        let p = Arc::clone(&producer);
                        let aborted =
                            tokio::task::spawn_blocking(move || p.abort_transaction(SEND_TIMEOUT))
                                .await
                                .map_err(|e| {
                                    EngineError::Internal(format!("kafka abort task: {e}"))
                                })?;
                        if let Err(e) = aborted {
                            self.transactional.lock().await.remove(&task);
                            return Err(sink_error(format!("abort transaction: {e}")));
                        }
                    }
                    None => {}
                }
                producer
                    .begin_transaction()
                    .map_err(|e| sink_error(format!("begin transaction: {e}")))?;
                let last_offsets = match self.send_all(&producer, &records).await {
                    Ok(last_offsets) => last_offsets,
                    Err(e) => {
                        let p = Arc::clone(&producer);
                        let _ =
                            tokio::task::spawn_blocking(move || p.abort_transaction(SEND_TIMEOUT))
                                .await;
                        // A producer in an unknown transaction state is rebuilt next time.
                        self.transactional.lock().await.remove(&task);
                        return Err(e);
                    }
                };
                pause_point(PausePoint::BeforeSinkCommit, batch_id).await;
                self.commit(task, batch_id, last_offsets, producer).await?;
            }
        }
        Ok(records.len() as u64)
    }
}

/// Bytes of a key/value column: Binary as is, anything else cast to Utf8.
fn bytes_column(array: &dyn Array, name: &str) -> Result<Vec<Option<Vec<u8>>>> {
    if let Some(binary) = array.as_any().downcast_ref::<BinaryArray>() {
        return Ok(binary.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
    }
    let text = cast(array, &DataType::Utf8).map_err(|e| {
        EngineError::InvalidQuery(format!("kafka sink: column `{name}` cannot be sent: {e}"))
    })?;
    let text = text.as_string::<i32>();
    Ok(text
        .iter()
        .map(|v| v.map(|s| s.as_bytes().to_vec()))
        .collect())
}

fn raw_records(batch: &RecordBatch, out: &mut Vec<OutRecord>) -> Result<()> {
    let schema = batch.schema();
    let value = schema.index_of("value").map_err(|_| {
        EngineError::InvalidQuery(
            "kafka sink with format raw: the query must return a `value` column (and optionally \
             `key`, `headers`, `partition`)"
                .into(),
        )
    })?;
    let values = bytes_column(batch.column(value).as_ref(), "value")?;
    let keys = match schema.index_of("key") {
        Ok(i) => Some(bytes_column(batch.column(i).as_ref(), "key")?),
        Err(_) => None,
    };
    let partitions = match schema.index_of("partition") {
        Ok(i) => Some(
            cast(batch.column(i), &DataType::Int32)
                .map_err(|e| EngineError::InvalidQuery(format!("kafka sink: partition: {e}")))?,
        ),
        Err(_) => None,
    };
    let partitions = partitions
        .as_ref()
        .and_then(|a| a.as_any().downcast_ref::<Int32Array>());
    let headers = match schema.index_of("headers") {
        Ok(i) => Some(
            batch
                .column(i)
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| headers_type_error(batch.column(i).data_type()))?,
        ),
        Err(_) => None,
    };
    for row in 0..batch.num_rows() {
        let mut record = OutRecord {
            key: keys.as_ref().and_then(|k| k.get(row).cloned().flatten()),
            value: values.get(row).cloned().flatten(),
            partition: partitions.and_then(|p| p.is_valid(row).then(|| p.value(row))),
            headers: Vec::new(),
        };
        if let Some(list) = headers
            && list.is_valid(row)
        {
            let entries = list.value(row);
            let entries = entries
                .as_struct_opt()
                .ok_or_else(|| headers_type_error(list.data_type()))?;
            let (Some(k), Some(v)) = (
                entries.column_by_name("key"),
                entries.column_by_name("value"),
            ) else {
                return Err(headers_type_error(list.data_type()));
            };
            let keys = cast(k, &DataType::Utf8).map_err(|e| {
                EngineError::InvalidQuery(format!("kafka sink: column `headers.key`: {e}"))
            })?;
            let keys = keys.as_string::<i32>();
            let values = bytes_column(v.as_ref(), "headers.value")?;
            for (key, value) in keys.iter().zip(values) {
                record
                    .headers
                    .push((key.unwrap_or_default().to_string(), value));
            }
        }
        out.push(record);
    }
    Ok(())
}

fn headers_type_error(found: &DataType) -> EngineError {
    EngineError::InvalidQuery(format!(
        "kafka sink: column `headers` must be a list of structs {{key: string, value: binary}} \
         (the Kafka source's `headers`), not {found}"
    ))
}

/// The record keys from `keyColumn`, when set.
fn key_values(
    batch: &RecordBatch,
    key_column: Option<&str>,
) -> Result<Option<Vec<Option<Vec<u8>>>>> {
    match key_column {
        Some(name) => {
            let i = batch.schema().index_of(name).map_err(|_| {
                EngineError::InvalidQuery(format!(
                    "kafka sink: keyColumn `{name}` is not a column of the query's result"
                ))
            })?;
            Ok(Some(bytes_column(batch.column(i).as_ref(), name)?))
        }
        None => Ok(None),
    }
}

fn encoded_records(
    batch: &RecordBatch,
    format: KafkaFormat,
    key_column: Option<&str>,
    out: &mut Vec<OutRecord>,
) -> Result<()> {
    let keys = key_values(batch, key_column)?;
    let mut buffer = Vec::new();
    match format {
        KafkaFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .build(&mut buffer);
            writer.write(batch)?;
        }
        _ => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
            writer.write(batch)?;
            writer.finish()?;
        }
    }
    let lines: Vec<&[u8]> = buffer
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(EngineError::Internal(format!(
            "kafka sink: encoded {} lines for {} rows",
            lines.len(),
            batch.num_rows()
        )));
    }
    for (row, line) in lines.into_iter().enumerate() {
        out.push(OutRecord {
            key: keys.as_ref().and_then(|k| k.get(row).cloned().flatten()),
            value: Some(line.to_vec()),
            partition: None,
            headers: Vec::new(),
        });
    }
    Ok(())
}
