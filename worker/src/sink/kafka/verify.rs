//! Reading back a transaction's last records: whether a batch's Kafka transaction is in the log.
//!
//! Used after a resumed commit (see `PendingCommit` in the sink): a broker restarted while the
//! commit waited may have lost the open transaction although the resumed commit succeeds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::KafkaSinkSpec;

use super::{HEADER_BATCH, HEADER_QUERY_ID, HEADER_TASK};
use crate::kafka_client::client_config;

/// How long reading back one partition's last record may wait.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);

/// What reading back a transaction's last records found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// Every partition's last record is there and carries the transaction's query id, task and
    /// batch.
    Yes,
    /// Some partition's log ends before that offset, skips it, or holds another record there.
    Lost,
    /// No answer within [`VERIFY_TIMEOUT`] while the log reaches past the offset (the broker may
    /// not expose the commit yet), or the broker could not be asked.
    Unknown,
}

/// Whether the records of `task`'s transaction for `batch_id` are in `spec.topic`: for each
/// `(partition, offset)` of `last_offsets` (the last record the transaction delivered there),
/// the record at that offset is read with `isolation.level=read_committed` and must carry the
/// headers `sluice-query-id = query_id`, `sluice-task = task`, `sluice-batch = batch_id`.
/// Blocks a worker thread for at most [`VERIFY_TIMEOUT`] per partition.
pub async fn landed(
    spec: &KafkaSinkSpec,
    query_id: &str,
    task: u32,
    batch_id: u64,
    last_offsets: &BTreeMap<i32, i64>,
) -> Landed {
    let Ok(mut config) =
        client_config(&spec.bootstrap_servers, &spec.options, &spec.secret_options)
    else {
        return Landed::Unknown;
    };
    config
        .set("group.id", "sluice-sink-check")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    let (topic, query_id) = (spec.topic.clone(), query_id.to_string());
    let offsets = last_offsets.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let mut landed = Landed::Yes;
        for (partition, offset) in offsets {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                .ok()?;
            consumer.assign(&list).ok()?;
            let Some(message) = first_message(&consumer, partition) else {
                // Nothing readable at the offset: lost when the log ends before it, else unknown.
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, VERIFY_TIMEOUT)
                    .ok()?;
                if high <= offset {
                    landed = Landed::Lost;
                    continue;
                }
                return None;
            };
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).to_string())
                })
            };
            let ours = message.offset() == offset
                && header(HEADER_QUERY_ID).as_deref() == Some(query_id.as_str())
                && header(HEADER_TASK) == Some(task.to_string())
                && header(HEADER_BATCH) == Some(batch_id.to_string());
            if !ours {
                landed = Landed::Lost;
            }
        }
        Some(landed)
    })
    .await;
    match checked {
        Ok(Some(landed)) => landed,
        _ => Landed::Unknown,
    }
}

/// The first record of `partition` the assigned consumer reads within [`VERIFY_TIMEOUT`].
fn first_message(consumer: &BaseConsumer, partition: i32) -> Option<OwnedMessage> {
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200))
            && message.partition() == partition
        {
            return Some(message.detach());
        }
    }
    None
}
