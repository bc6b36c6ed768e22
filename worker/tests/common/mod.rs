//! Helpers shared by the integration tests: data, manifests, reading output back, S3 access.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use sluice_worker::storage::Location;

/// One output row of the IoT query, comparable and sortable: (deviceId, temperature × 100, level, µs).
pub type Row = (String, i64, String, i64);

/// The HIGH rows of a generated data set, sorted.
pub fn expected_high(seed: u64, files: u64, rows: u64) -> Vec<Row> {
    let mut out: Vec<Row> = sluice_bench::events(seed, files, rows)
        .filter(|e| e.danger_level == "HIGH")
        .map(|e| {
            (
                e.device_id,
                (e.temperature * 100.0).round() as i64,
                e.danger_level.to_string(),
                e.timestamp_ms * 1000,
            )
        })
        .collect();
    out.sort();
    out
}

/// Rows of IoT batches (columns by name; `danger_level` may be absent when partitioned by it).
pub fn rows_of(batches: &[RecordBatch], level_from_dir: Option<&str>) -> Vec<Row> {
    let mut out = Vec::new();
    for batch in batches {
        let ids = batch.column_by_name("deviceId").expect("deviceId");
        let ids = ids.as_any().downcast_ref::<StringArray>().expect("utf8");
        let temps = batch.column_by_name("temperature").expect("temperature");
        let temps = temps.as_any().downcast_ref::<Float64Array>().expect("f64");
        let times = batch.column_by_name("timestamp").expect("timestamp");
        let times = times
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        let levels = batch.column_by_name("danger_level").map(|l| {
            l.as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone()
        });
        for i in 0..batch.num_rows() {
            let level = match (&levels, level_from_dir) {
                (Some(l), _) => l.value(i).to_string(),
                (None, Some(dir)) => dir.to_string(),
                (None, None) => panic!("no danger_level"),
            };
            out.push((
                ids.value(i).to_string(),
                (temps.value(i) * 100.0).round() as i64,
                level,
                times.value(i),
            ));
        }
    }
    out
}

/// Reads every committed `part-*.parquet` under `location` (those the file sink's commit log lists,
/// or every one when there is no log): relative path → batches.
pub async fn read_parquet_dir(location: &Location) -> BTreeMap<String, Vec<RecordBatch>> {
    let committed = sluice_worker::sink::file::committed_files(location)
        .await
        .expect("commit log");
    let prefix = (!location.prefix.as_ref().is_empty()).then_some(&location.prefix);
    let metas: Vec<_> = location
        .store
        .list(prefix)
        .try_collect()
        .await
        .expect("list output");
    let mut out = BTreeMap::new();
    for meta in metas {
        let path = meta.location.as_ref().to_string();
        let relative = path
            .strip_prefix(location.prefix.as_ref())
            .unwrap_or(&path)
            .trim_start_matches('/')
            .to_string();
        let name = relative.rsplit('/').next().unwrap_or_default();
        if !(name.starts_with("part-") && name.ends_with(".parquet")) {
            continue;
        }
        if committed.as_ref().is_some_and(|c| !c.contains(&relative)) {
            continue;
        }
        let bytes = location
            .store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        out.insert(
            relative,
            reader.collect::<Result<Vec<_>, _>>().expect("batches"),
        );
    }
    out
}

/// The file names under `<checkpoint>/tasks/0/<dir>` (offsets, commits, compacted, state), sorted;
/// local or S3.
pub async fn task_files(checkpoint: &Location, dir: &str) -> Vec<String> {
    let prefix = checkpoint.child(&format!("tasks/0/{dir}"));
    let listed: Vec<_> = checkpoint
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .expect("list");
    let mut names: Vec<String> = listed
        .iter()
        .filter_map(|meta| meta.location.filename().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// All IoT rows under an output location (Hive `danger_level=` directories understood), sorted.
pub async fn output_rows(location: &Location) -> Vec<Row> {
    let mut rows = Vec::new();
    for (relative, batches) in read_parquet_dir(location).await {
        let level = relative
            .split('/')
            .find_map(|part| part.strip_prefix("danger_level="))
            .map(str::to_string);
        rows.extend(rows_of(&batches, level.as_deref()));
    }
    rows.sort();
    rows
}

/// The IoT filter manifest over `input`, writing Parquet to `output`.
pub fn iot_manifest(
    name: &str,
    input: &str,
    output: &str,
    checkpoint: &str,
    extra_sink: &str,
    trigger: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: 2}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink:
    file: {{path: "{output}", format: parquet{extra_sink}}}
  trigger: {trigger}
  checkpoint: {{location: "{checkpoint}"}}
"#
    )
}

/// The value of a test server's variable `var` (set by `.ci/run`, or by sourcing
/// `$SLUICE_RUN_DIR/env.sh` after `e2e/servers/start.sh`), or `None`: the test then skips loudly.
/// With `SLUICE_REQUIRE_SERVERS=1` a missing server is a failure, not a skip.
pub fn server_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "{test}: {var} is not set but SLUICE_REQUIRE_SERVERS=1"
            );
            eprintln!(
                "SKIPPED {test}: {var} is not set (run `bash .ci/run`, or source $SLUICE_RUN_DIR/env.sh)"
            );
            None
        }
    }
}

/// The S3 bucket of the test S3 server, or `None` (see [`server_env`]).
pub fn s3_bucket(test: &str) -> Option<String> {
    server_env("SLUICE_TEST_S3_ENDPOINT", test)?;
    Some(std::env::var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|_| "sluice-test".into()))
}

/// The test PostgreSQL server's URL, or `None` (see [`server_env`]).
pub fn postgres(test: &str) -> Option<String> {
    server_env("SLUICE_TEST_PG_URL", test)
}

/// Starts the `sluice-worker` binary of this build on `manifest` with `extra_env` set (stdout
/// discarded, stderr shown).
pub fn spawn_worker(manifest: &Path, extra_env: &[(&str, &str)]) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    command
        .arg("run")
        .arg(manifest)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.spawn().expect("spawn worker")
}

/// Generates the IoT data set into `local` (kept for a local run to compare with) and uploads it to
/// `s3://<bucket>/<prefix>/in`, which it returns.
pub async fn iot_input_on_s3(
    local: &Path,
    bucket: &str,
    prefix: &str,
    seed: u64,
    files: u64,
    rows: u64,
) -> String {
    sluice_bench::write_json_files(local, seed, files, rows).expect("generate");
    let input = format!("s3://{bucket}/{prefix}/in");
    upload_dir(local, &Location::parse(&input).expect("s3 input")).await;
    input
}

/// Uploads the files of a local directory to `location`, in name order: the file source reads new
/// files oldest first (S3 `last_modified`, one-second resolution, then path), so uploading in
/// generation order keeps event time in order and no row turns late by the upload's accident.
pub async fn upload_dir(dir: &Path, location: &Location) {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let bytes = std::fs::read(&path).expect("read");
        location
            .store
            .put(&location.child(&name), bytes.into())
            .await
            .expect("put");
    }
}

/// A fresh, unique prefix name for a test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// Runs a worker to the end while crashing it: `kills` rounds, each started by `spawn` and killed
/// with SIGKILL after a random delay in `delay_ms` (a round whose worker finishes first must have
/// succeeded), then a final run that must succeed. At least two rounds must really have been
/// killed, or the test proved nothing. The schedule's seed is `seed`, or random and printed.
/// Returns the number of rounds killed.
pub fn run_with_crashes(
    spawn: impl Fn() -> std::process::Child,
    kills: usize,
    delay_ms: std::ops::Range<u64>,
    seed: Option<u64>,
) -> usize {
    let seed = seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash schedule seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut killed = 0;
    for round in 0..kills {
        let mut child = spawn();
        let delay = std::time::Duration::from_millis(rng.u64(delay_ms.clone()));
        let started = std::time::Instant::now();
        while started.elapsed() < delay && child.try_wait().expect("wait").is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match child.try_wait().expect("wait") {
            Some(status) => {
                assert!(status.success(), "round {round}: worker failed: {status}");
                eprintln!("round {round}: finished before the kill");
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                killed += 1;
                eprintln!("round {round}: killed after {delay:?}");
            }
        }
    }
    let status = spawn().wait().expect("final run");
    assert!(status.success(), "final run failed: {status}");
    assert!(
        killed >= 2,
        "the schedule must actually crash the worker ({killed} kills)"
    );
    killed
}

/// Sends one raw HTTP request (`head`: request line and headers, no trailing blank line) with an
/// empty body to the worker's HTTP server and returns the whole answer, status line included.
pub async fn http_request(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{head}\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    String::from_utf8_lossy(&response).to_string()
}
