//! `statementTimeout` of the PostgreSQL sink: a write that hangs (here a trigger sleeping 5 s) is
//! cancelled by PostgreSQL after the timeout, reported in `lastError` and retried, instead of
//! holding the batch forever.

mod common;

use std::time::{Duration, Instant};

use sluice_worker::engine::{Engine, QueryConfig, Shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_write_is_cancelled_by_the_statement_timeout_and_retried() {
    let test = "a_hanging_write_is_cancelled_by_the_statement_timeout_and_retried";
    let Some(pg_url) = common::postgres(test) else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(connection);
    let table = format!("slow_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint);
             CREATE FUNCTION {table}_sleep() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$;
             CREATE TRIGGER {table}_slow BEFORE INSERT ON {table}
               FOR EACH ROW EXECUTE FUNCTION {table}_sleep();"
        ))
        .await
        .expect("create table");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\": 1}\n").expect("input");
    let parsed = url::Url::parse(&pg_url).expect("pg url");
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: slow}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json}}
      schema: [{{name: id, type: long}}]
  sql: SELECT id FROM events
  sink:
    postgres:
      connection: {{host: "{host}", port: {port}, database: {db}, user: {user}, passwordEnv: PGPASSWORD}}
      table: {table}
      mode: insert
      statementTimeout: 200ms
  checkpoint: {{location: "{ckpt}"}}
"#,
        input = input.display(),
        host = parsed.host_str().expect("host"),
        port = parsed.port().unwrap_or(5432),
        db = parsed.path().trim_start_matches('/'),
        user = parsed.username(),
        ckpt = dir.path().join("ckpt").display(),
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let shared = Shared::new();
    let engine = Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start");
    let running = tokio::spawn(engine.run(|_| {}));
    let started = Instant::now();
    let error = loop {
        if let Some(e) = shared.last_error.lock().expect("lock").clone() {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the write must be cancelled well before the 5 s sleep ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("statement timeout"), "{error}");
    shared.stop.request();
    let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing written by a cancelled statement");
}
