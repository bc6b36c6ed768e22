//! Helpers for the tests against a real Kafka broker (tansu) and PostgreSQL: topics, producing
//! test data with rdkafka, reading a topic back, running the worker binary. A test binary that
//! uses it also declares `mod common;` (the server variables are read there).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The broker from `.ci/run`/`start.sh`, or `None` (see `common::server_env`).
pub fn kafka(test: &str) -> Option<String> {
    crate::common::server_env("SLUICE_TEST_KAFKA", test)
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Produces `(key, value)` records to `partition` (or by key hash when `None`), waiting for each
/// delivery.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    records: &[(Option<String>, String, Option<i32>)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = records.iter().map(|(key, value, partition)| {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        producer.send(record, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.expect("delivered");
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

/// Reads every committed record of `topic` (all `partitions`, `isolation.level=read_committed`)
/// from the beginning until nothing arrives for `idle`.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    idle: Duration,
) -> Vec<ReadRecord> {
    read_topic_isolated(bootstrap, topic, partitions, idle, "read_committed")
}

/// As [`read_topic`], with the consumer's `isolation.level` (`read_committed` or
/// `read_uncommitted`: also records of open and aborted transactions).
pub fn read_topic_isolated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    idle: Duration,
    isolation: &str,
) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The IoT events of the deterministic generator as JSON lines.
pub fn iot_lines(seed: u64, files: u64, rows: u64) -> Vec<String> {
    sluice_bench::events(seed, files, rows)
        .map(|e| sluice_bench::json_line(&e).trim_end().to_string())
        .collect()
}

/// A fresh name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
