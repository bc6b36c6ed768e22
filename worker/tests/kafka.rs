//! Kafka source and sink and the PostgreSQL sink against real servers (tansu, PostgreSQL, SeaweedFS
//! from `e2e/servers/start.sh`): exact records through a Kafka → SQL → Kafka round trip, and every
//! record exactly once in Parquet and PostgreSQL while the worker is SIGKILLed at random points.

mod common;
mod kafka_util;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Row, expected_high, output_rows, postgres, spawn_worker, task_files};
use kafka_util::{create_topic, iot_lines, kafka, produce, read_topic, unique};
use sluice_worker::storage::Location;

const SEED: u64 = 23;

fn kafka_source(bootstrap: &str, topic: &str, max_per_trigger: u64) -> String {
    format!(
        r#"    - name: events
      kafka: {{bootstrapServers: "{bootstrap}", topic: {topic}, format: json, maxOffsetsPerTrigger: {max_per_trigger}}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
"#
    )
}

/// Produces the IoT events to `topic` (3 partitions, keyed by device) and returns the lines.
async fn produce_iot(bootstrap: &str, topic: &str, files: u64, rows: u64) -> Vec<String> {
    create_topic(bootstrap, topic, 3).await;
    let lines = iot_lines(SEED, files, rows);
    let records: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (None, l.clone(), Some((i % 3) as i32)))
        .collect();
    produce(bootstrap, topic, &records).await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sql_filter_kafka_round_trip_exact_records() {
    let Some(bootstrap) = kafka("kafka_sql_filter_kafka_round_trip_exact_records") else {
        return;
    };
    let input = unique("in");
    let output = unique("out");
    let lines = produce_iot(&bootstrap, &input, 2, 300).await;
    // A malformed record is quarantined, not fatal.
    produce(&bootstrap, &input, &[(None, "{not json".into(), Some(1))]).await;
    create_topic(&bootstrap, &output, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: roundtrip, namespace: test}}
spec:
  sources:
{source}  sql: SELECT deviceId, temperature FROM events WHERE danger_level = 'HIGH'
  sink:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {output}, format: json, keyColumn: deviceId}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
            source = kafka_source(&bootstrap, &input, 100),
            ckpt = dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let status = spawn_worker(&manifest, &[]).wait().expect("worker");
    assert!(status.success(), "worker failed: {status}");

    let mut expected: Vec<(String, String)> = sluice_bench::events(SEED, 2, 300)
        .filter(|e| e.danger_level == "HIGH")
        .map(|e| {
            (
                e.device_id.clone(),
                format!(
                    "{{\"deviceId\":\"{}\",\"temperature\":{}}}",
                    e.device_id,
                    serde_json::to_string(&((e.temperature * 100.0).round() / 100.0))
                        .expect("json")
                ),
            )
        })
        .collect();
    expected.sort();
    let records = read_topic(&bootstrap, &output, 1, Duration::from_secs(3));
    let mut actual: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.key.clone().expect("key"), r.value.clone()))
        .collect();
    actual.sort();
    assert_eq!(lines.len(), 600);
    assert!(!expected.is_empty());
    assert_eq!(actual, expected, "exactly the HIGH records, once each");
    for r in &records {
        assert_eq!(
            r.headers.get("sluice-query").map(String::as_str),
            Some("test/roundtrip")
        );
        assert!(r.headers.contains_key("sluice-query-id"));
        assert!(r.headers.contains_key("sluice-task"));
        assert!(r.headers.contains_key("sluice-batch"));
        assert!(r.headers.contains_key("sluice-seq"));
    }
    // (task, batch, seq) identifies each record.
    let ids: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| {
            (
                r.headers["sluice-task"].clone(),
                r.headers["sluice-batch"].clone(),
                r.headers["sluice-seq"].clone(),
            )
        })
        .collect();
    assert_eq!(ids.len(), records.len());
    // The malformed record went to the bad-records location with its partition and offset.
    let bad_dir = dir.path().join("ckpt").join("bad-records").join("events");
    let mut bad = Vec::new();
    for entry in walk(&bad_dir) {
        bad.push(std::fs::read_to_string(entry).expect("read"));
    }
    let bad = bad.join("");
    assert!(bad.contains(&format!("\"origin\":\"{input}/1\"")), "{bad}");
    assert!(bad.contains("{not json"), "{bad}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_filter_parquet_every_record_exactly_once_after_sigkills() {
    let Some(bootstrap) = kafka("kafka_filter_parquet_every_record_exactly_once_after_sigkills")
    else {
        return;
    };
    let input = unique("crash-in");
    produce_iot(&bootstrap, &input, 4, 1_000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: kafka-crash}}
spec:
  sources:
{source}  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink:
    file: {{path: "{output}", format: parquet}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
            source = kafka_source(&bootstrap, &input, 150),
            output = output.display(),
            ckpt = dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    tokio::task::spawn_blocking(move || {
        common::run_with_crashes(|| spawn_worker(&manifest, &[]), 6, 100..900, None)
    })
    .await
    .expect("crash runs");
    let actual: Vec<Row> =
        output_rows(&Location::parse(output.to_str().expect("utf8")).expect("loc")).await;
    let expected = expected_high(SEED, 4, 1_000);
    assert_eq!(actual.len(), expected.len(), "no record lost or duplicated");
    assert_eq!(actual, expected);
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect postgres");
    tokio::spawn(connection);
    client
}

/// `host, port, database, user` of a `postgres://user:pw@host:port/db` URL.
pub fn pg_connection_yaml(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("pg url");
    format!(
        "{{host: \"{}\", port: {}, database: {}, user: {}, passwordEnv: PGPASSWORD}}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432),
        parsed.path().trim_start_matches('/'),
        parsed.username()
    )
}

/// Per device: (HIGH events, sum of their temperature × 100).
fn expected_per_device(files: u64, rows: u64) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for e in sluice_bench::events(SEED, files, rows).filter(|e| e.danger_level == "HIGH") {
        let entry = out.entry(e.device_id.clone()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += (e.temperature * 100.0).round() as i64;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_postgres_upsert_and_accumulate_exactly_once_after_sigkills() {
    let test = "kafka_postgres_upsert_and_accumulate_exactly_once_after_sigkills";
    let (Some(bootstrap), Some(pg_url)) = (kafka(test), postgres(test)) else {
        return;
    };
    let input = unique("pg-in");
    produce_iot(&bootstrap, &input, 4, 500).await;
    let client = pg_client(&pg_url).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let counters = format!("counters_{suffix}");
    let latest = format!("latest_{suffix}");
    client
        .batch_execute(&format!(
            "CREATE TABLE {counters} (\"deviceId\" text PRIMARY KEY, n bigint NOT NULL, \
             centidegrees bigint NOT NULL);
             CREATE TABLE {latest} (\"deviceId\" text NOT NULL, \"timestamp\" timestamptz NOT NULL, \
             temperature double precision, PRIMARY KEY (\"deviceId\", \"timestamp\"));"
        ))
        .await
        .expect("create tables");
    let dir = tempfile::tempdir().expect("tempdir");
    let connection = pg_connection_yaml(&pg_url);
    let mut manifests = Vec::new();
    for (name, table, sql, mode, keys) in [
        (
            "pg-accumulate",
            &counters,
            "SELECT deviceId, CAST(1 AS BIGINT) AS n, CAST(round(temperature * 100) AS BIGINT) AS centidegrees FROM events WHERE danger_level = 'HIGH'",
            "accumulate",
            "[deviceId]",
        ),
        (
            "pg-upsert",
            &latest,
            "SELECT deviceId, timestamp, temperature FROM events WHERE danger_level = 'HIGH'",
            "upsert",
            "[deviceId, timestamp]",
        ),
    ] {
        let manifest = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}-{suffix}}}
spec:
  sources:
{source}  sql: "{sql}"
  sink:
    postgres: {{connection: {connection}, table: {table}, mode: {mode}, keyColumns: {keys}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
                source = kafka_source(&bootstrap, &input, 100),
                ckpt = dir.path().join(format!("ckpt-{name}")).display()
            ),
        )
        .expect("manifest");
        manifests.push(manifest);
    }
    tokio::task::spawn_blocking(move || {
        for manifest in &manifests {
            common::run_with_crashes(|| spawn_worker(manifest, &[]), 5, 100..900, None);
        }
    })
    .await
    .expect("crash runs");

    let expected = expected_per_device(4, 500);
    let rows = client
        .query(
            &format!("SELECT \"deviceId\", n, centidegrees FROM {counters} ORDER BY 1"),
            &[],
        )
        .await
        .expect("select counters");
    let actual: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get::<_, i64>(1), r.get::<_, i64>(2)),
            )
        })
        .collect();
    assert_eq!(actual, expected, "every HIGH event counted exactly once");

    let expected_rows: i64 = expected.values().map(|(n, _)| n).sum();
    let latest_rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {latest}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(latest_rows, expected_rows, "one row per HIGH event");
    // Each batch was written once: the commit rows add up to the events.
    let committed: i64 = client
        .query_one(
            "SELECT CAST(coalesce(sum(rows), 0) AS BIGINT) FROM sluice_commits WHERE query LIKE $1",
            &[&format!("default/pg-upsert-{suffix}#%")],
        )
        .await
        .expect("commits")
        .get(0);
    assert_eq!(committed, expected_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_trigger_kafka_filter_kafka_records_flow_and_epochs_are_checkpointed() {
    let test = "continuous_trigger_kafka_filter_kafka_records_flow_and_epochs_are_checkpointed";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let input = unique("cont-in");
    let output = unique("cont-out");
    create_topic(&bootstrap, &input, 2).await;
    create_topic(&bootstrap, &output, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: continuous}}
spec:
  sources:
    - name: events
      kafka: {{bootstrapServers: "{bootstrap}", topic: {input}}}
  sql: SELECT key, value FROM events WHERE CAST(value AS VARCHAR) LIKE 'keep%'
  sink:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {output}}}
  trigger: {{continuous: 300ms}}
  checkpoint: {{location: "{ckpt}"}}
"#,
        ckpt = ckpt.display()
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let shared = sluice_worker::engine::Shared::new();
    let engine = sluice_worker::engine::Engine::start(
        sluice_worker::engine::QueryConfig::local(query),
        shared.clone(),
    )
    .await
    .expect("start");
    let running = tokio::spawn(engine.run(|_| {}));
    let mut expected = Vec::new();
    for wave in 0..3 {
        let records: Vec<_> = (0..50)
            .map(|i| {
                let value = if i % 2 == 0 {
                    format!("keep-{wave}-{i}")
                } else {
                    format!("drop-{wave}-{i}")
                };
                if i % 2 == 0 {
                    expected.push(value.clone());
                }
                (Some(format!("k{i}")), value, Some(i % 2))
            })
            .collect();
        produce(&bootstrap, &input, &records).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.request();
    let summary = running.await.expect("join").expect("run");
    let actual = sorted_values(&bootstrap, &output);
    expected.sort();
    assert_eq!(actual, expected);
    assert_eq!(summary.input_rows, 150);
    // Epochs were checkpointed: every input offset is in a committed range of the offsets log.
    let mut committed = 0u64;
    for task in 0..2 {
        let commits = walk(&ckpt.join("tasks").join(task.to_string()).join("commits"));
        assert!(!commits.is_empty(), "task {task} committed epochs");
        for c in commits {
            let text = std::fs::read_to_string(c).expect("commit");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            committed += v["inputRows"].as_u64().expect("inputRows");
        }
    }
    assert_eq!(committed, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_exactly_once_writes_each_batch_in_a_transaction_and_reads_it_back() {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use sluice_worker::sink::Sink;
    let test = "kafka_sink_exactly_once_writes_each_batch_in_a_transaction_and_reads_it_back";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let topic = unique("eos-out");
    create_topic(&bootstrap, &topic, 1).await;
    let spec = sluice_crds::KafkaSinkSpec {
        bootstrap_servers: bootstrap.clone(),
        topic: topic.clone(),
        format: sluice_crds::KafkaFormat::Raw,
        value_schema: None,
        message_type: None,
        schema_registry: None,
        key_column: None,
        exactly_once: true,
        options: Default::default(),
        secret_options: Default::default(),
    };
    let sink = sluice_worker::sink::kafka::KafkaSink::new(&spec, "test/eos", "id").expect("sink");
    let batch = |values: Vec<&str>| {
        RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Utf8,
                false,
            )])),
            vec![std::sync::Arc::new(StringArray::from(values)) as ArrayRef],
        )
        .expect("batch")
    };
    assert_eq!(
        sink.write(0, 0, &[batch(vec!["a", "b"])])
            .await
            .expect("batch 0"),
        2
    );
    assert_eq!(
        sink.write(0, 1, &[batch(vec!["c"])])
            .await
            .expect("batch 1"),
        1
    );
    let records = read_topic(&bootstrap, &topic, 1, Duration::from_secs(2));
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, vec!["a", "b", "c"]);

    // Reading a transaction back (what the sink does after a resumed commit): the last record of
    // each batch is found with its (query id, task, batch); another batch's record, another query
    // id or an offset past the log's end is a lost transaction.
    use sluice_worker::sink::kafka::verify::{Landed, landed};
    let at = |offset: i64| BTreeMap::from([(0, offset)]);
    let (b, c) = (records[1].offset, records[2].offset);
    assert_eq!(landed(&spec, "id", 0, 0, &at(b)).await, Landed::Yes);
    assert_eq!(landed(&spec, "id", 0, 1, &at(c)).await, Landed::Yes);
    assert_eq!(landed(&spec, "id", 0, 1, &at(b)).await, Landed::Lost);
    assert_eq!(landed(&spec, "other", 0, 1, &at(c)).await, Landed::Lost);
    assert_eq!(landed(&spec, "id", 1, 1, &at(c)).await, Landed::Lost);
    assert_eq!(landed(&spec, "id", 0, 1, &at(c + 100)).await, Landed::Lost);
}

/// A query relaying the `value` of every topic matching `<prefix>-.*` to `output`
/// (`availableNow`); `source_options` are appended to the Kafka source's map.
fn pattern_relay_manifest(
    name: &str,
    bootstrap: &str,
    prefix: &str,
    output: &str,
    checkpoint: &std::path::Path,
    source_options: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: events
      kafka: {{bootstrapServers: "{bootstrap}", topicPattern: "{prefix}-.*"{source_options}}}
  sql: SELECT value FROM events
  sink:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {output}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
        ckpt = checkpoint.display()
    )
}

/// Every record value of the one-partition topic `topic`, sorted.
fn sorted_values(bootstrap: &str, topic: &str) -> Vec<String> {
    let mut values: Vec<String> = read_topic(bootstrap, topic, 1, Duration::from_secs(2))
        .into_iter()
        .map(|r| r.value)
        .collect();
    values.sort();
    values
}

/// tansu refuses CreatePartitions (UnsupportedFeature), so the source's partitions grow through
/// `topicPattern`: a second matching topic appears between two runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_after_start_are_read_after_a_restart_with_the_checkpoints_task_count() {
    let test =
        "partitions_added_after_start_are_read_after_a_restart_with_the_checkpoints_task_count";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let prefix = unique("grow");
    let topic_a = format!("{prefix}-a");
    let topic_b = format!("{prefix}-b");
    let output = unique("grow-out");
    create_topic(&bootstrap, &topic_a, 2).await;
    create_topic(&bootstrap, &output, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        pattern_relay_manifest(
            "grow",
            &bootstrap,
            &prefix,
            &output,
            &dir.path().join("ckpt"),
            "",
        ),
    )
    .expect("manifest");
    let first: Vec<_> = (0..20)
        .map(|i| (None, format!("first-{i}"), Some(i % 2)))
        .collect();
    produce(&bootstrap, &topic_a, &first).await;
    let status = spawn_worker(&manifest, &[]).wait().expect("worker");
    assert!(status.success());

    create_topic(&bootstrap, &topic_b, 1).await;
    let more_a: Vec<_> = (0..10)
        .map(|i| (None, format!("second-a-{i}"), Some(i % 2)))
        .collect();
    let more_b: Vec<_> = (0..10)
        .map(|i| (None, format!("second-b-{i}"), Some(0)))
        .collect();
    produce(&bootstrap, &topic_a, &more_a).await;
    produce(&bootstrap, &topic_b, &more_b).await;
    let status = spawn_worker(&manifest, &[]).wait().expect("worker");
    assert!(status.success(), "restart with more partitions than tasks");

    let actual = sorted_values(&bootstrap, &output);
    let mut expected: Vec<String> = first
        .iter()
        .chain(&more_a)
        .chain(&more_b)
        .map(|(_, v, _)| v.clone())
        .collect();
    expected.sort();
    assert_eq!(
        actual, expected,
        "every record once, including the new partition's"
    );
}

/// Checkpoint retention with Kafka: a partition that had records only in batches since folded into
/// the compacted entry keeps its offset there, so a restart neither reads those records again nor
/// skips the partition's new ones. One task must read two partitions for that: the checkpoint is
/// created with one topic of one partition, then a second topic matches `topicPattern` (the task
/// count stays the checkpoint's, as in the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_checkpoint_keeps_the_offset_of_a_partition_idle_since() {
    let test = "compacted_checkpoint_keeps_the_offset_of_a_partition_idle_since";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let prefix = unique("retain");
    let topic_a = format!("{prefix}-a");
    let topic_b = format!("{prefix}-b");
    let output = unique("retain-out");
    create_topic(&bootstrap, &topic_a, 1).await;
    create_topic(&bootstrap, &output, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = dir.path().join("ckpt");
    let manifest = dir.path().join("query.yaml");
    let text = pattern_relay_manifest(
        "retain",
        &bootstrap,
        &prefix,
        &output,
        &checkpoint,
        ", maxOffsetsPerTrigger: 2",
    )
    .replace("\"}\n", "\", minBatchesToRetain: 2}\n");
    assert!(text.contains("minBatchesToRetain: 2"), "{text}");
    std::fs::write(&manifest, text).expect("manifest");
    let run = || {
        let status = spawn_worker(&manifest, &[]).wait().expect("worker");
        assert!(status.success(), "worker failed: {status}");
    };
    let records = |name: &str, n: usize| -> Vec<(Option<String>, String, Option<i32>)> {
        (0..n)
            .map(|i| (None, format!("{name}-{i}"), Some(0)))
            .collect()
    };
    let a_first = records("a-first", 2);
    produce(&bootstrap, &topic_a, &a_first).await;
    run();
    // Topic b's partition joins task 0; it has records in this run only.
    create_topic(&bootstrap, &topic_b, 1).await;
    let b_first = records("b-first", 2);
    produce(&bootstrap, &topic_b, &b_first).await;
    run();
    // Topic a alone fills 6 more batches (2 records each): the batches that read b are folded.
    let a_busy = records("a-busy", 12);
    produce(&bootstrap, &topic_a, &a_busy).await;
    run();
    let location = Location::parse(checkpoint.to_str().expect("utf8")).expect("checkpoint");
    let compacted = task_files(&location, "compacted").await;
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    let folded_through: u64 = compacted[0].parse().expect("batch id");
    let b_batches: Vec<u64> = task_files(&location, "offsets")
        .await
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .filter(|id| *id <= folded_through)
        .collect();
    assert!(
        b_batches.is_empty(),
        "folded entries deleted: {b_batches:?}"
    );
    let compacted_text =
        std::fs::read_to_string(checkpoint.join("tasks/0/compacted").join(&compacted[0]))
            .expect("compacted entry");
    assert!(
        compacted_text.contains(&format!("{topic_b}/0")),
        "b's offset is in the compacted entry: {compacted_text}"
    );
    // b again, after a restart from the compacted log.
    let b_later = records("b-later", 3);
    produce(&bootstrap, &topic_b, &b_later).await;
    run();

    let actual = sorted_values(&bootstrap, &output);
    let mut expected: Vec<String> = [a_first, b_first, a_busy, b_later]
        .concat()
        .into_iter()
        .map(|(_, v, _)| v)
        .collect();
    expected.sort();
    assert_eq!(actual, expected, "every record exactly once");
}
