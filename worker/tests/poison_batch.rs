//! Poison batches: a batch that fails every time with an error retrying does not fix (a value the
//! PostgreSQL table refuses, a `headers` column the Kafka sink cannot send, a `partitionBy` column
//! the file sink cannot find) is attempted `spec.maxBatchAttempts` times, then the query stops with
//! `PoisonBatch` naming the batch, the task and the error, instead of replaying it forever. The
//! attempts are counted in the checkpoint, so a restarted worker stops after one more attempt.

mod common;

use sluice_worker::EngineError;
use sluice_worker::engine::{Engine, QueryConfig, Shared};

fn manifest_text(input: &str, sql: &str, sink: &str, checkpoint: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: poison}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json}}
      schema:
        - {{name: id, type: long}}
        - {{name: note, type: string}}
  sql: "{sql}"
  sink:
{sink}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
  maxBatchAttempts: 3
"#
    )
}

/// Runs the query; returns its error and the `lastError` it reported.
async fn run_to_error(manifest: &str) -> (EngineError, Option<String>) {
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    let shared = Shared::new();
    let engine = Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start");
    let error = tokio::time::timeout(std::time::Duration::from_secs(60), engine.run(|_| {}))
        .await
        .expect("the query must stop, not loop")
        .expect_err("a poison batch");
    let last = shared.last_error.lock().expect("lock").clone();
    (error, last)
}

fn assert_poison(error: &EngineError, attempts: u32, cause: &str) {
    match error {
        EngineError::PoisonBatch {
            task,
            batch_id,
            attempts: n,
            error: message,
        } => {
            assert_eq!((*task, *batch_id, *n), (0, 0, attempts), "{error}");
            assert!(message.contains(cause), "{message}");
        }
        other => panic!("expected PoisonBatch, got {other}"),
    }
    let text = error.to_string();
    assert!(
        text.starts_with("PoisonBatch: batch 0 of task 0 failed"),
        "{text}"
    );
}

async fn poison_case(sql: &str, sink: &str, cause: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(
        input.join("a.json"),
        "{\"id\": 1, \"note\": \"fine\"}\n{\"id\": 2, \"note\": \"not a number\"}\n",
    )
    .expect("input");
    let checkpoint = dir.path().join("ckpt").display().to_string();
    let manifest = manifest_text(&input.display().to_string(), sql, sink, &checkpoint);
    let (error, last) = run_to_error(&manifest).await;
    assert_poison(&error, 3, cause);
    assert_eq!(last, Some(error.to_string()), "lastError names it");
    // A restart replays the batch once more and stops: no crash loop.
    let (error, _) = run_to_error(&manifest).await;
    assert_poison(&error, 4, cause);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_headers_of_the_wrong_type_are_a_poison_batch() {
    // The records are built before any broker is contacted: no broker needed.
    poison_case(
        "SELECT note AS value, note AS headers FROM events",
        "    kafka: {bootstrapServers: \"127.0.0.1:1\", topic: out}",
        "column `headers` must be a list of structs",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_missing_partition_column_is_a_poison_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!(
        "    file: {{path: \"{}\", format: json, partitionBy: [nope]}}",
        dir.path().display()
    );
    poison_case("SELECT id, note FROM events", &sink, "`nope`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_value_the_table_refuses_is_a_poison_batch() {
    let Some(pg_url) = common::postgres("postgres_sink_value_the_table_refuses_is_a_poison_batch")
    else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(connection);
    let table = format!("poison_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE TABLE {table} (id bigint, n integer)"))
        .await
        .expect("create table");
    let parsed = url::Url::parse(&pg_url).expect("pg url");
    let sink = format!(
        "    postgres: {{connection: {{host: \"{}\", port: {}, database: {}, user: {}, passwordEnv: PGPASSWORD}}, table: {table}, mode: insert}}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432),
        parsed.path().trim_start_matches('/'),
        parsed.username()
    );
    // `note` goes into the integer column `n`: "not a number" is refused (SQLSTATE 22P02).
    poison_case(
        "SELECT id, note AS n FROM events",
        &sink,
        &format!("postgres sink table `{table}`"),
    )
    .await;
}

/// `onPoisonBatch: quarantine`: the poison batch's rows go to the bad-records location with the
/// error, the batch is committed as skipped (the sink never sees it) and the query goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_poison_batch_is_set_aside_and_the_query_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\": 1, \"note\": \"10\"}\n").expect("a");
    // `two` does not cast to BIGINT: batch 1 fails every time.
    std::fs::write(input.join("b.json"), "{\"id\": 2, \"note\": \"two\"}\n").expect("b");
    std::fs::write(
        input.join("c.json"),
        "{\"id\": 3, \"note\": \"30\"}\n{\"id\": 4, \"note\": \"40\"}\n",
    )
    .expect("c");
    let checkpoint = dir.path().join("ckpt");
    let table = format!("quarantine_{}", uuid::Uuid::new_v4().simple());
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: poison}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: id, type: long}}
        - {{name: note, type: string}}
  sql: "SELECT id, CAST(note AS BIGINT) AS n FROM events"
  sink: {{memory: {{name: {table}}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
  maxBatchAttempts: 2
  onPoisonBatch: quarantine
"#,
        input.display(),
        checkpoint.display()
    );
    let run = || async {
        let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
        let shared = Shared::new();
        let engine = Engine::start(QueryConfig::local(query), shared.clone())
            .await
            .expect("start");
        let summary = tokio::time::timeout(std::time::Duration::from_secs(60), engine.run(|_| {}))
            .await
            .expect("the query must finish")
            .expect("a quarantined batch does not stop the query");
        (summary, shared.metrics.encode())
    };
    let (summary, metrics) = run().await;
    assert_eq!((summary.batches, summary.quarantined_batches), (2, 1));
    assert!(
        metrics.contains(
            r#"sluice_quarantined_batches_total{query="poison",namespace="default",task="0"} 1"#
        ),
        "{metrics}"
    );

    // The sink saw batches 0 and 2, exactly; never batch 1.
    let written: Vec<(u64, Vec<(i64, i64)>)> = sluice_worker::sink::memory::read_table(&table)
        .into_iter()
        .map(|((_, batch_id), batches)| {
            let mut rows = Vec::new();
            for batch in &batches {
                let ids = batch
                    .column_by_name("id")
                    .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
                    .expect("id");
                let ns = batch
                    .column_by_name("n")
                    .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
                    .expect("n");
                rows.extend(
                    ids.iter()
                        .zip(ns.iter())
                        .map(|(i, n)| (i.expect("id"), n.expect("n"))),
                );
            }
            (batch_id, rows)
        })
        .collect();
    assert_eq!(
        written,
        vec![(0, vec![(1, 10)]), (2, vec![(3, 30), (4, 40)])]
    );

    // The bad batch's rows, with the error, in the bad-records location.
    let quarantined = std::fs::read_to_string(
        checkpoint.join("bad-records/poison-batches/task-0/batch-00000000000000000001.jsonl"),
    )
    .expect("quarantined batch");
    let lines: Vec<serde_json::Value> = quarantined
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{quarantined}");
    assert_eq!(lines[0]["origin"], "events");
    assert_eq!(lines[0]["line"], 0);
    assert!(
        lines[0]["record"]
            .as_str()
            .expect("range")
            .contains("b.json"),
        "{quarantined}"
    );
    assert_eq!(lines[1]["line"], 1);
    assert_eq!(lines[1]["record"], r#"{"id":2,"note":"two"}"#);
    let error = lines[1]["error"].as_str().expect("error");
    assert!(
        error.starts_with("poison batch 1 of task 0 quarantined after 2 attempts:")
            && error.contains("two"),
        "{error}"
    );
    // Committed as skipped, naming the error.
    let commit: serde_json::Value = serde_json::from_slice(
        &std::fs::read(checkpoint.join("tasks/0/commits/00000000000000000001")).expect("commit 1"),
    )
    .expect("commit json");
    assert_eq!(commit["outputRows"], 0);
    assert!(
        commit["quarantined"]
            .as_str()
            .is_some_and(|e| e.contains("two")),
        "{commit}"
    );

    // A restart has nothing left to do.
    let (summary, _) = run().await;
    assert_eq!((summary.batches, summary.quarantined_batches), (0, 0));
}

/// The worker stopped by a poison batch exits with code 3 and leaves one machine-readable line in
/// the termination message file, which the operator turns into a `PoisonBatch` condition.
#[test]
fn poison_batch_writes_the_termination_message_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(
        input.join("a.json"),
        "{\"id\": 1, \"note\": \"two\\nlines\"}\n",
    )
    .expect("input");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        manifest_text(
            &input.display().to_string(),
            "SELECT id, CAST(note AS BIGINT) AS n FROM events",
            "    console: {}",
            &dir.path().join("ckpt").display().to_string(),
        ),
    )
    .expect("manifest");
    let log = dir.path().join("termination-log");
    let status = common::spawn_worker(
        &manifest,
        &[("SLUICE_TERMINATION_LOG", log.to_str().expect("utf8"))],
    )
    .wait()
    .expect("worker");
    assert_eq!(status.code(), Some(3));
    let message = std::fs::read_to_string(&log).expect("termination message");
    assert_eq!(
        message,
        "PoisonBatch: batch 0 task 0 after 3 attempts: SQL error: Arrow error: Cast error: Cannot cast string 'two lines' to value of Int64 type"
    );

    // An unwritable path does not change the outcome.
    let status = common::spawn_worker(
        &manifest,
        &[("SLUICE_TERMINATION_LOG", "/nonexistent-dir/termination-log")],
    )
    .wait()
    .expect("worker");
    assert_eq!(status.code(), Some(3));
}
