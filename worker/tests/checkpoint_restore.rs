//! `sluice-worker checkpoint list|restore` end to end, with the worker binary and a real
//! PostgreSQL: a windowed count with a watermark, restored to an earlier batch and run again over
//! the same and more input, leaves the same windows in an upsert table as an uninterrupted run
//! (the state and watermark as of the batch come back, the later batches are really replayed);
//! refused restores (a batch not retained, an insert-mode table the replay would duplicate) exit
//! 2 naming the reason, also in the termination message file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::postgres;

const MINUTE_MS: i64 = 60_000;
/// 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Input file `i` (one batch each, `maxFilesPerTrigger: 1`): device a at minutes 2i and 2i+1,
/// device b twice at minute 2i, and from file 2 on one event of device a at minute 2i-3, which
/// the watermark (1 minute behind the latest event of the batches before) has closed: it is
/// dropped, but only by a query that knows the watermark.
fn write_input(dir: &Path, files: std::ops::Range<i64>) {
    std::fs::create_dir_all(dir).expect("input dir");
    for i in files {
        let mut events = vec![("a", 2 * i), ("a", 2 * i + 1), ("b", 2 * i), ("b", 2 * i)];
        if i >= 2 {
            events.push(("a", 2 * i - 3));
        }
        let text: String = events
            .iter()
            .map(|(device, minute)| {
                format!(
                    "{{\"deviceId\":\"{device}\",\"timestamp\":\"{}\"}}\n",
                    rfc3339(START_MS + minute * MINUTE_MS + 1_000)
                )
            })
            .collect();
        std::fs::write(dir.join(format!("f{i:02}.json")), text).expect("input file");
    }
}

fn pg_connection_yaml(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("pg url");
    format!(
        "{{host: \"{}\", port: {}, database: {}, user: {}, passwordEnv: PGPASSWORD}}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432),
        parsed.path().trim_start_matches('/'),
        parsed.username()
    )
}

fn manifest(name: &str, input: &Path, sink: &str, checkpoint: &str) -> String {
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
        - {{name: timestamp, type: timestamp}}
      watermark: {{column: timestamp, delay: 1 minute}}
  sql: "SELECT window(timestamp, '1 minute') AS window, deviceId, count(*) AS n FROM events GROUP BY window(timestamp, '1 minute'), deviceId"
  outputMode: update
  sink:
{sink}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#,
        input = input.display()
    )
}

fn worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    command.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run sluice-worker")
}

fn run_query(manifest: &Path) {
    let out = worker(&["run", manifest.to_str().expect("utf8")], &[]);
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn checkpoint_cmd(command: &str, manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "checkpoint",
        command,
        "--manifest",
        manifest.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    worker(&args, env)
}

/// (window start, device) → count.
async fn windows(client: &tokio_postgres::Client, table: &str) -> BTreeMap<(String, String), i64> {
    let rows = client
        .query(
            &format!("SELECT \"window\"->>'start', \"deviceId\", n FROM {table}"),
            &[],
        )
        .await
        .expect("select windows");
    let mut out = BTreeMap::new();
    for row in rows {
        let key = (row.get::<_, String>(0), row.get::<_, String>(1));
        assert!(
            out.insert(key.clone(), row.get::<_, i64>(2)).is_none(),
            "window {key:?} twice"
        );
    }
    out
}

/// The batch ids `sluice_commits` holds for the query run whose key starts with `prefix`, per
/// query id.
async fn committed_batches(
    client: &tokio_postgres::Client,
    prefix: &str,
) -> BTreeMap<String, Vec<i64>> {
    let rows = client
        .query(
            "SELECT query, batch_id FROM sluice_commits WHERE query LIKE $1 ORDER BY query, batch_id",
            &[&format!("{prefix}#%")],
        )
        .await
        .expect("commits");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        out.entry(row.get(0)).or_default().push(row.get(1));
    }
    out
}

async fn create_table(client: &tokio_postgres::Client, table: &str, keyed: bool) {
    let key = if keyed {
        ", PRIMARY KEY (\"window\", \"deviceId\")"
    } else {
        ""
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (\"window\" jsonb NOT NULL, \"deviceId\" text NOT NULL, n bigint NOT NULL{key})"
        ))
        .await
        .expect("create table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_windowed_count_into_postgres_equals_an_uninterrupted_run() {
    let test = "restored_windowed_count_into_postgres_equals_an_uninterrupted_run";
    let Some(pg_url) = postgres(test) else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(connection);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let connection = pg_connection_yaml(&pg_url);

    // Uninterrupted: files 0..4, then 4..6.
    let reference = format!("restore_ref_{suffix}");
    create_table(&client, &reference, true).await;
    let ref_input = dir.path().join("ref-in");
    let ref_manifest = dir.path().join("ref.yaml");
    std::fs::write(
        &ref_manifest,
        manifest(
            &format!("ref-{suffix}"),
            &ref_input,
            &format!(
                "    postgres: {{connection: {connection}, table: {reference}, mode: upsert, keyColumns: [window, deviceId]}}"
            ),
            &dir.path().join("ref-ckpt").display().to_string(),
        ),
    )
    .expect("manifest");
    write_input(&ref_input, 0..4);
    run_query(&ref_manifest);
    write_input(&ref_input, 4..6);
    run_query(&ref_manifest);
    let expected = windows(&client, &reference).await;
    // 12 minutes of device a and 6 of device b; the late events are dropped (a's windows are 1).
    assert_eq!(expected.len(), 18, "{expected:?}");
    assert!(
        expected
            .iter()
            .all(|((_, device), n)| *n == if device == "a" { 1 } else { 2 }),
        "{expected:?}"
    );

    // Restored: files 0..4 (batches 0..=4), restore to batch 1, then files 0..6 again.
    let restored = format!("restore_res_{suffix}");
    create_table(&client, &restored, true).await;
    let input = dir.path().join("in");
    let query_name = format!("res-{suffix}");
    let query_manifest = dir.path().join("res.yaml");
    std::fs::write(
        &query_manifest,
        manifest(
            &query_name,
            &input,
            &format!(
                "    postgres: {{connection: {connection}, table: {restored}, mode: upsert, keyColumns: [window, deviceId]}}"
            ),
            &dir.path().join("ckpt").display().to_string(),
        ),
    )
    .expect("manifest");
    write_input(&input, 0..4);
    run_query(&query_manifest);

    let listed = checkpoint_cmd("list", &query_manifest, &["--json"], &[]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let ids: Vec<u64> = listing["tasks"][0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["batchId"].as_u64().expect("id"))
        .collect();
    // One batch per file, then one without data that moves the watermark past the last file.
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    // The watermark after batch 1: latest event (minute 3) minus the 1-minute delay.
    assert_eq!(
        listing["tasks"][0]["batches"][1]["watermarkMs"].as_i64(),
        Some(START_MS + 2 * MINUTE_MS + 1_000)
    );
    let table = checkpoint_cmd("list", &query_manifest, &[], &[]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("committed") && table.contains("1 file (f01.json)"),
        "{table}"
    );

    let termination = dir.path().join("termination-log");
    let env = [(
        "SLUICE_TERMINATION_LOG",
        termination.to_str().expect("utf8"),
    )];
    let out = checkpoint_cmd("restore", &query_manifest, &["--batch-id", "1"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("restored to batch 1: checkpoint generation 1"),
        "{stdout}"
    );
    // Again: nothing new.
    let again = checkpoint_cmd("restore", &query_manifest, &["--batch-id", "1"], &env);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already restored to batch 1"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    write_input(&input, 4..6);
    run_query(&query_manifest);
    assert_eq!(windows(&client, &restored).await, expected);

    // Batches 2 and 3 really ran again, under the new generation's query id.
    let commits = committed_batches(&client, &format!("default/{query_name}")).await;
    let mut runs: Vec<Vec<i64>> = commits.into_values().collect();
    runs.sort();
    assert_eq!(
        runs,
        vec![vec![0, 1, 2, 3], vec![2, 3, 4, 5]],
        "old run, restored run"
    );
    let listed = checkpoint_cmd("list", &query_manifest, &["--json"], &[]);
    let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listing["generation"], 1);
    assert_eq!(listing["restoredFrom"]["batchId"], 1);
    // Replayed 2 and 3, files 4 and 5, one batch without data.
    assert_eq!(listing["tasks"][0]["lastCommitted"], 6);

    // Refused: a batch that is not retained; named in stderr and the termination message.
    let out = checkpoint_cmd("restore", &query_manifest, &["--batch-id", "99"], &env);
    assert_eq!(out.status.code(), Some(2));
    let reason = "batch 99 is not retained: task 0 retains batches 0..=6";
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains(reason), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
    let message = std::fs::read_to_string(&termination).expect("termination log");
    assert!(
        message.contains(reason) && message.lines().count() == 1,
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_an_insert_mode_postgres_sink_is_refused() {
    let test = "restore_of_an_insert_mode_postgres_sink_is_refused";
    let Some(pg_url) = postgres(test) else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(connection);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let table = format!("restore_ins_{suffix}");
    create_table(&client, &table, false).await;
    let input = dir.path().join("in");
    let query_manifest = dir.path().join("q.yaml");
    std::fs::write(
        &query_manifest,
        manifest(
            &format!("ins-{suffix}"),
            &input,
            &format!(
                "    postgres: {{connection: {}, table: {table}, mode: insert}}",
                pg_connection_yaml(&pg_url)
            ),
            &dir.path().join("ckpt").display().to_string(),
        ),
    )
    .expect("manifest");
    write_input(&input, 0..4);
    run_query(&query_manifest);
    let before: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);

    let termination = dir.path().join("termination-log");
    let env = [(
        "SLUICE_TERMINATION_LOG",
        termination.to_str().expect("utf8"),
    )];
    let out = checkpoint_cmd("restore", &query_manifest, &["--batch-id", "1"], &env);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // Batches 2 and 3 wrote 3 update rows each (a at two minutes, b at one).
    assert!(
        stderr.contains("mode insert") && stderr.contains("6 rows"),
        "{stderr}"
    );
    let message = std::fs::read_to_string(&termination).expect("termination log");
    assert!(message.contains("mode insert"), "{message}");
    // Nothing changed: running again writes nothing new, the checkpoint stays on generation 0.
    run_query(&query_manifest);
    let after: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, before);
    let listed = checkpoint_cmd("list", &query_manifest, &["--json"], &[]);
    let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listing["generation"], 0);
}
