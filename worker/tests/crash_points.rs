//! A crash at each named crash point (`SLUICE_CRASH_AT`, see `sluice_worker::fault`), for the file,
//! Kafka (`exactlyOnce: true`) and PostgreSQL sinks: the worker aborts there, the next start
//! recovers, and the output holds every input row exactly once.

mod common;
mod kafka_util;

use std::path::Path;
use std::time::Duration;

use common::{expected_high, output_rows, postgres, spawn_worker};
use kafka_util::{kafka, read_topic, unique};
use sluice_worker::fault::{CRASH_AT_ENV, CrashPoint};
use sluice_worker::storage::Location;

const SEED: u64 = 23;
const FILES: u64 = 6;
const ROWS: u64 = 300;
/// The batch the crash points are armed for (there are `FILES` batches, 0..FILES).
const CRASH_BATCH: u64 = 2;

/// The `SLUICE_CRASH_AT` value for `point`: retention crash points name the last folded batch,
/// which depends on the schedule, so they are armed for every batch.
fn crash_at(point: CrashPoint) -> String {
    if point == CrashPoint::MidRetention {
        (0..FILES)
            .map(|b| format!("{}:{b}", point.name()))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        format!("{}:{CRASH_BATCH}", point.name())
    }
}

/// The IoT filter over `input` (one file per batch, one task), checkpoint with
/// `minBatchesToRetain: 2` so retention runs within the test.
fn manifest(name: &str, input: &Path, sink: &str, checkpoint: &Path) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink:
{sink}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}", minBatchesToRetain: 2}}
"#,
        input = input.display(),
        checkpoint = checkpoint.display(),
    )
}

/// Runs the worker with `point` armed (it must die there, unless `may_pass`: a point the sink
/// never reaches), then again unarmed (it must finish).
fn crash_then_recover(manifest: &Path, point: CrashPoint, may_pass: bool) {
    let value = crash_at(point);
    let status = spawn_worker(manifest, &[(CRASH_AT_ENV, &value)])
        .wait()
        .expect("armed run");
    if status.success() {
        assert!(may_pass, "{}: the worker did not crash", point.name());
    } else {
        eprintln!("{}: crashed ({status})", point.name());
    }
    let status = spawn_worker(manifest, &[]).wait().expect("recovery run");
    assert!(
        status.success(),
        "{}: recovery failed: {status}",
        point.name()
    );
}

/// (deviceId, temperature × 100) of the expected rows, sorted.
fn expected_pairs() -> Vec<(String, i64)> {
    let mut pairs: Vec<(String, i64)> = expected_high(SEED, FILES, ROWS)
        .into_iter()
        .map(|(id, t, _, _)| (id, t))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn file_sink_exactly_once_after_a_crash_at_each_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    for point in CrashPoint::ALL {
        let output = dir.path().join(format!("out-{}", point.name()));
        let path = dir.path().join(format!("{}.yaml", point.name()));
        let sink = format!(
            "    file: {{path: \"{}\", format: parquet}}",
            output.display()
        );
        std::fs::write(
            &path,
            manifest(
                "crash-file",
                &input,
                &sink,
                &dir.path().join(format!("ckpt-{}", point.name())),
            ),
        )
        .expect("manifest");
        // Only an overwriting or compacting file sink reaches these.
        crash_then_recover(
            &path,
            point,
            matches!(
                point,
                CrashPoint::MidSinkCleanup | CrashPoint::MidCompaction
            ),
        );
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let location = Location::parse(output.to_str().expect("utf8")).expect("loc");
        let actual = runtime.block_on(output_rows(&location));
        assert_eq!(
            actual,
            expected_high(SEED, FILES, ROWS),
            "{}: every row exactly once",
            point.name()
        );
        // Every data file on disk is a committed one: no orphan holds a second copy.
        let on_disk = std::fs::read_dir(&output)
            .expect("out")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
            .count();
        let committed = runtime
            .block_on(sluice_worker::sink::file::committed_files(&location))
            .expect("log")
            .expect("a commit log")
            .len();
        assert_eq!(on_disk, committed, "{}: no unlogged file", point.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exactly_once_sink_exactly_once_after_a_crash_at_each_point() {
    let test = "kafka_exactly_once_sink_exactly_once_after_a_crash_at_each_point";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    for point in CrashPoint::ALL {
        if point.file_sink_only() {
            continue;
        }
        let topic = unique("crash-out");
        kafka_util::create_topic(&bootstrap, &topic, 2).await;
        let path = dir.path().join(format!("kafka-{}.yaml", point.name()));
        let sink = format!(
            "    kafka: {{bootstrapServers: \"{bootstrap}\", topic: {topic}, format: json, exactlyOnce: true}}"
        );
        std::fs::write(
            &path,
            manifest(
                &format!("crash-kafka-{}", point.name()),
                &input,
                &sink,
                &dir.path().join(format!("ckpt-kafka-{}", point.name())),
            ),
        )
        .expect("manifest");
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        let records = tokio::task::spawn_blocking(move || {
            crash_then_recover(&path, point, false);
            read_topic(&bootstrap, &topic, 2, Duration::from_secs(3))
        })
        .await
        .expect("join");
        let mut ids: Vec<(String, String, String)> = records
            .iter()
            .map(|r| {
                (
                    r.headers["sluice-task"].clone(),
                    r.headers["sluice-batch"].clone(),
                    r.headers["sluice-seq"].clone(),
                )
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            records.len(),
            "{}: no duplicate (task, batch, seq)",
            point.name()
        );
        let mut actual: Vec<(String, i64)> = records
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.value).expect("json");
                (
                    v["deviceId"].as_str().expect("deviceId").to_string(),
                    (v["temperature"].as_f64().expect("temperature") * 100.0).round() as i64,
                )
            })
            .collect();
        actual.sort();
        assert_eq!(actual, expected_pairs(), "{}: exactly once", point.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_exactly_once_after_a_crash_at_each_point() {
    let test = "postgres_sink_exactly_once_after_a_crash_at_each_point";
    let Some(pg_url) = postgres(test) else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(connection);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let parsed = url::Url::parse(&pg_url).expect("pg url");
    let connection_yaml = format!(
        "{{host: \"{}\", port: {}, database: {}, user: {}, passwordEnv: PGPASSWORD}}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432),
        parsed.path().trim_start_matches('/'),
        parsed.username()
    );
    for point in CrashPoint::ALL {
        if point.file_sink_only() {
            continue;
        }
        let table = format!("crash_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (\"deviceId\" text, temperature double precision, \
                 danger_level text, \"timestamp\" timestamptz)"
            ))
            .await
            .expect("create table");
        let path = dir.path().join(format!("pg-{}.yaml", point.name()));
        let sink = format!(
            "    postgres: {{connection: {connection_yaml}, table: {table}, mode: insert}}"
        );
        std::fs::write(
            &path,
            manifest(
                &format!("crash-pg-{}", point.name()),
                &input,
                &sink,
                &dir.path().join(format!("ckpt-pg-{}", point.name())),
            ),
        )
        .expect("manifest");
        tokio::task::spawn_blocking(move || crash_then_recover(&path, point, false))
            .await
            .expect("join");
        let rows = client
            .query(
                &format!("SELECT \"deviceId\", temperature FROM {table}"),
                &[],
            )
            .await
            .expect("select");
        let mut actual: Vec<(String, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, f64>(1) * 100.0).round() as i64,
                )
            })
            .collect();
        actual.sort();
        assert_eq!(actual, expected_pairs(), "{}: exactly once", point.name());
    }
}
