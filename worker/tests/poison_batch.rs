//! Poison batches: a batch that fails every time with an error retrying does not fix (a value the
//! PostgreSQL table refuses, a `headers` column the Kafka sink cannot send, a `partitionBy` column
//! the file sink cannot find) is attempted `spec.maxBatchAttempts` times, then the query stops with
//! `PoisonBatch` naming the batch, the task and the error, instead of replaying it forever. The
//! attempts are counted in the checkpoint, so a restarted worker stops after one more attempt.

mod common;

use sluice_worker::EngineError;
use sluice_worker::engine::{Engine, QueryConfig, Shared};

fn manifest(input: &str, sql: &str, sink: &str, checkpoint: &str) -> String {
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
    let manifest = manifest(&input.display().to_string(), sql, sink, &checkpoint);
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
