//! Stream–static enrichment with a PostgreSQL lookup table, end to end through the engine: a file
//! source of events joined with a `devices` table in PostgreSQL (inner and left join), a change in
//! the table seen by the next batch, fetched rows counted in `sluice_lookup_rows_total`, and a
//! database outage retried with the batch committed once. Needs `SLUICE_TEST_PG_URL` (and
//! `PGPASSWORD`), from `source $SLUICE_RUN_DIR/env.sh`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use sluice_worker::sink::memory::read_table;
use sluice_worker::{Engine, QueryConfig, Shared};

fn postgres(test: &str) -> Option<url::Url> {
    common::postgres(test).map(|v| url::Url::parse(&v).expect("pg url"))
}

async fn client(url: &url::Url) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls)
        .await
        .expect("connect postgres");
    tokio::spawn(connection);
    client
}

/// Creates table `name` (deviceId text primary key, site text, floor int) with `rows`.
async fn create_devices(client: &tokio_postgres::Client, name: &str, rows: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (\"deviceId\" text PRIMARY KEY, site text, floor integer); \
             INSERT INTO {name} VALUES {rows}"
        ))
        .await
        .expect("create devices");
}

/// `{host, port, database, user, passwordEnv}` of the test database, at `port` if given.
fn connection(url: &url::Url, port: Option<u16>) -> String {
    format!(
        "{{host: \"{}\", port: {}, database: {}, user: {}, passwordEnv: PGPASSWORD}}",
        url.host_str().expect("host"),
        port.or(url.port()).unwrap_or(5432),
        url.path().trim_start_matches('/'),
        url.username()
    )
}

fn manifest(
    name: &str,
    input: &str,
    checkpoint: &str,
    join: &str,
    table: &str,
    connection: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, partitions: 1}}
      schema: [{{name: deviceId, type: string}}, {{name: reading, type: long}}]
  tables:
    - name: devices
      postgres:
        connection: {connection}
        table: {table}
        keyColumns: [deviceId]
      schema: [{{name: deviceId, type: string}}, {{name: site, type: string}}, {{name: floor, type: long}}]
  sql: >-
    SELECT e.deviceId, e.reading, d.site, d.floor
    FROM events e {join} devices d ON e.deviceId = d.deviceId
  sink: {{memory: {{name: {name}}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#
    )
}

/// Rows of one batch as `deviceId | reading | site | floor` (NULL empty), sorted.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(row) {
                        String::new()
                    } else {
                        arrow::util::display::array_value_to_string(c, row).expect("display")
                    }
                })
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}

async fn run(text: &str, shared: &Arc<Shared>) -> u64 {
    let query = sluice_crds::parse_manifest(text).expect("manifest");
    Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run")
        .batches
}

/// The counter `family{…table="devices"}` of task 0 of `query`.
fn lookup_counter(shared: &Arc<Shared>, family: &str, query: &str) -> u64 {
    let text = shared.metrics.encode();
    let prefix = format!(
        "{family}{{query=\"{query}\",namespace=\"default\",task=\"0\",table=\"devices\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .expect("number")
}

/// Inner and left join of a file stream with a PostgreSQL `devices` table, in two batches with
/// the table changed in between: exact rows per batch, and only the batch's keys fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_enriched_from_postgres_per_batch_inner_and_left() {
    let test = "file_events_enriched_from_postgres_per_batch_inner_and_left";
    let Some(url) = postgres(test) else {
        return;
    };
    let pg = client(&url).await;
    let table = format!("lookup_devices_{}", std::process::id());
    // 100 devices; each batch touches 2–3 of them.
    let rows_sql: Vec<String> = (0..100)
        .map(|i| format!("('d{i}', 'site{}', {})", i % 7, i % 5))
        .collect();
    create_devices(&pg, &table, &rows_sql.join(", ")).await;

    for (join, expected_first, expected_second) in [
        (
            "JOIN",
            vec!["d1 | 10 | site1 | 1", "d2 | 20 | site2 | 2"],
            vec!["d1 | 11 | moved | 9", "d3 | 30 | site3 | 3"],
        ),
        (
            "LEFT JOIN",
            vec![
                "d1 | 10 | site1 | 1",
                "d2 | 20 | site2 | 2",
                "nope | 40 |  | ",
            ],
            vec![
                "d1 | 11 | moved | 9",
                "d3 | 30 | site3 | 3",
                "nope | 41 |  | ",
            ],
        ),
    ] {
        pg.execute(
            &format!("UPDATE {table} SET site = 'site1', floor = 1 WHERE \"deviceId\" = 'd1'"),
            &[],
        )
        .await
        .expect("reset d1");
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in");
        std::fs::create_dir_all(&input).expect("mkdir");
        std::fs::write(
            input.join("a.json"),
            "{\"deviceId\":\"d1\",\"reading\":10}\n{\"deviceId\":\"d2\",\"reading\":20}\n\
             {\"deviceId\":\"nope\",\"reading\":40}\n",
        )
        .expect("write");
        let name = if join == "JOIN" {
            "lookup-inner"
        } else {
            "lookup-left"
        };
        let text = manifest(
            name,
            input.to_str().expect("utf8"),
            dir.path().join("ckpt").to_str().expect("utf8"),
            join,
            &table,
            &connection(&url, None),
        );
        let shared = Shared::new();
        assert_eq!(run(&text, &shared).await, 1);
        assert_eq!(lookup_counter(&shared, "sluice_lookup_keys_total", name), 3);
        assert_eq!(
            lookup_counter(&shared, "sluice_lookup_rows_total", name),
            2,
            "only d1 and d2 of the 100 devices are fetched"
        );

        // The table changes; the next batch (next run, same checkpoint) sees it.
        pg.execute(
            &format!("UPDATE {table} SET site = 'moved', floor = 9 WHERE \"deviceId\" = 'd1'"),
            &[],
        )
        .await
        .expect("update d1");
        std::fs::write(
            input.join("b.json"),
            "{\"deviceId\":\"d1\",\"reading\":11}\n{\"deviceId\":\"d3\",\"reading\":30}\n\
             {\"deviceId\":\"nope\",\"reading\":41}\n",
        )
        .expect("write");
        assert_eq!(run(&text, &shared).await, 1);
        assert_eq!(lookup_counter(&shared, "sluice_lookup_rows_total", name), 4);

        let out = read_table(name);
        assert_eq!(
            out.keys().copied().collect::<Vec<_>>(),
            vec![(0, 0), (0, 1)],
            "{join}"
        );
        assert_eq!(rows(&out[&(0, 0)]), expected_first, "{join} batch 0");
        assert_eq!(rows(&out[&(0, 1)]), expected_second, "{join} batch 1");
    }
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}

/// Forwards connections to `target` while `open`, refuses (closes) them otherwise.
async fn flaky_proxy(target: String, open: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !open.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// PostgreSQL unreachable: the batch fails (retryably), is not committed, is replayed with
/// backoff, and once the database is back it commits once with the right rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_outage_is_retried_and_the_batch_committed_once() {
    let test = "lookup_outage_is_retried_and_the_batch_committed_once";
    let Some(url) = postgres(test) else {
        return;
    };
    let pg = client(&url).await;
    let table = format!("lookup_outage_{}", std::process::id());
    create_devices(&pg, &table, "('d1', 'berlin', 1)").await;
    let open = Arc::new(AtomicBool::new(false));
    let port = flaky_proxy(
        format!(
            "{}:{}",
            url.host_str().expect("host"),
            url.port().unwrap_or(5432)
        ),
        open.clone(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(
        input.join("a.json"),
        "{\"deviceId\":\"d1\",\"reading\":10}\n",
    )
    .expect("write");
    let text = manifest(
        "lookup-outage",
        input.to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        "JOIN",
        &table,
        &connection(&url, Some(port)),
    );
    let shared = Shared::new();
    let reopen = {
        let open = open.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            open.store(true, Ordering::SeqCst);
        })
    };
    let batches = tokio::time::timeout(Duration::from_secs(60), run(&text, &shared))
        .await
        .expect("finishes once the database is back");
    reopen.await.expect("reopen");
    assert_eq!(batches, 1, "committed once");
    let metrics = shared.metrics.encode();
    let retries: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "sluice_batch_retries_total{query=\"lookup-outage\",namespace=\"default\",task=\"0\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no retries counted\n{metrics}"))
        .parse()
        .expect("number");
    assert!(retries >= 1, "{metrics}");
    let out = read_table("lookup-outage");
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![(0, 0)]);
    assert_eq!(rows(&out[&(0, 0)]), vec!["d1 | 10 | berlin | 1"]);
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}
