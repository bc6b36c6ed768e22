//! Stateful streaming end to end: a 1-minute tumbling window per device (avg + count, watermark
//! 10 minutes, append mode) over the generated IoT data, through the engine and the worker binary.
//!
//! - killed with SIGKILL at random points and restarted, the output equals the expected table
//!   (each window exactly once, none lost, none doubled), local and S3 checkpoints, with checkpoint
//!   retention folding old batches while it happens (the checkpoint stays bounded);
//! - over a long run the state holds only the open windows (a bound), the output is complete;
//! - a restart with a changed aggregation is refused, naming what changed.

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, Float64Array, Int64Array, StringArray, StructArray};
use arrow::datatypes::DataType;
use common::{read_parquet_dir, s3_bucket, task_files, unique};
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const MINUTE_MS: i64 = 60_000;
const DELAY_MS: i64 = 10 * MINUTE_MS;

/// (window start ms, deviceId) → (count, avg temperature).
type Table = BTreeMap<(i64, String), (i64, f64)>;

/// Same count, and the same average up to float summation order.
fn same(a: &(i64, f64), b: &(i64, f64)) -> bool {
    a.0 == b.0 && (a.1 - b.1).abs() < 1e-9
}

const SQL: &str = "SELECT window(timestamp, '1 minute') AS window, deviceId, avg(temperature) AS avgTemp, count(*) AS n FROM events GROUP BY window(timestamp, '1 minute'), deviceId";

fn manifest(
    name: &str,
    input: &str,
    output: &str,
    checkpoint: &str,
    sql: &str,
    mode: &str,
) -> String {
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
      watermark: {{column: timestamp, delay: 10 minutes}}
  sql: "{sql}"
  outputMode: {mode}
  sink:
    file: {{path: "{output}", format: parquet}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#
    )
}

/// The windows the watermark closed by the end of the data: what append mode must have emitted.
fn expected(seed: u64, files: u64, rows: u64) -> Table {
    let mut sums: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    let mut max_ms = i64::MIN;
    for e in sluice_bench::events(seed, files, rows) {
        max_ms = max_ms.max(e.timestamp_ms);
        let start = e.timestamp_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let entry = sums.entry((start, e.device_id)).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += e.temperature;
    }
    let watermark = max_ms - DELAY_MS;
    sums.into_iter()
        .filter(|((start, _), _)| start + MINUTE_MS <= watermark)
        .map(|(k, (n, sum))| (k, (n, sum / n as f64)))
        .collect()
}

/// The output table; panics on a window emitted twice.
async fn output_table(location: &Location) -> Table {
    let mut table = Table::new();
    for (_, batches) in read_parquet_dir(location).await {
        for batch in batches {
            let windows = batch.column_by_name("window").expect("window");
            let windows = windows
                .as_any()
                .downcast_ref::<StructArray>()
                .expect("struct");
            let starts = arrow::compute::cast(windows.column(0), &DataType::Int64).expect("i64");
            let starts = starts.as_any().downcast_ref::<Int64Array>().expect("i64");
            let devices = batch.column_by_name("deviceId").expect("deviceId");
            let devices = devices
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8");
            let avgs = batch.column_by_name("avgTemp").expect("avgTemp");
            let avgs = avgs.as_any().downcast_ref::<Float64Array>().expect("f64");
            let counts = batch.column_by_name("n").expect("n");
            let counts = counts.as_any().downcast_ref::<Int64Array>().expect("i64");
            for r in 0..batch.num_rows() {
                // Timestamps are µs.
                let key = (starts.value(r) / 1000, devices.value(r).to_string());
                let value = (counts.value(r), avgs.value(r));
                assert!(
                    table.insert(key.clone(), value).is_none(),
                    "{key:?} emitted twice"
                );
            }
        }
    }
    table
}

/// Compares tables, reporting sizes and the first differences (never the whole tables).
fn assert_tables_eq(actual: &Table, expected: &Table) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| !actual.get(*k).is_some_and(|a| same(a, v)))
        .take(3)
        .map(|(k, v)| format!("{k:?}: expected {v:?}, got {:?}", actual.get(k)))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} rows out, {} expected; differences {missing:?}; unexpected {extra:?}",
        actual.len(),
        expected.len()
    );
}

const SEED: u64 = 21;
const FILES: u64 = 30;
const ROWS: u64 = 3_000;
/// `checkpoint.minBatchesToRetain` of the crash tests: small, so that the 30 batches are folded
/// several times between (and during) the kills.
const RETAIN: usize = 3;

fn with_retention(manifest: String) -> String {
    let retained = manifest.replace("\"}\n", &format!("\", minBatchesToRetain: {RETAIN}}}\n"));
    assert!(retained.contains("minBatchesToRetain"), "{retained}");
    retained
}

/// After 30 batches with retention 3 the log holds at most the unfolded batches (fewer than
/// 2 × 3, plus one a kill left uncommitted), one or two compacted entries (a kill between writing
/// one and deleting the older), and the state files since the last snapshot before the fold.
async fn assert_checkpoint_bounded(checkpoint: &Location) {
    let offsets = task_files(checkpoint, "offsets").await;
    let commits = task_files(checkpoint, "commits").await;
    let compacted = task_files(checkpoint, "compacted").await;
    let state = task_files(checkpoint, "state").await;
    assert!(offsets.len() <= 2 * RETAIN, "offsets {offsets:?}");
    assert!(commits.len() <= 2 * RETAIN, "commits {commits:?}");
    assert!(
        (1..=2).contains(&compacted.len()),
        "compacted {compacted:?}"
    );
    let snapshot_every = sluice_worker::state::SNAPSHOT_EVERY as usize;
    assert!(
        state.len() <= snapshot_every + 2 * RETAIN + 1,
        "state files {state:?}"
    );
}

#[test]
fn windowed_aggregation_local_checkpoint_exact_after_sigkills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let output = dir.path().join("out");
    let path = dir.path().join("query.yaml");
    let checkpoint = dir.path().join("ckpt");
    std::fs::write(
        &path,
        with_retention(manifest(
            "window-crash",
            input.to_str().expect("utf8"),
            output.to_str().expect("utf8"),
            checkpoint.to_str().expect("utf8"),
            SQL,
            "append",
        )),
    )
    .expect("manifest");
    common::run_with_crashes(|| common::spawn_worker(&path, &[]), 6, 50..500, None);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let actual = runtime.block_on(output_table(
        &Location::parse(output.to_str().expect("utf8")).expect("loc"),
    ));
    let expected = expected(SEED, FILES, ROWS);
    assert!(expected.len() > 3_000, "{} windows", expected.len());
    assert_tables_eq(&actual, &expected);
    runtime.block_on(assert_checkpoint_bounded(
        &Location::parse(checkpoint.to_str().expect("utf8")).expect("loc"),
    ));
}

#[test]
fn windowed_aggregation_s3_checkpoint_exact_after_sigkills() {
    let Some(bucket) = s3_bucket("windowed_aggregation_s3_checkpoint_exact_after_sigkills") else {
        return;
    };
    let prefix = unique("window-crash");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let input = runtime.block_on(common::iot_input_on_s3(
        &local_input,
        &bucket,
        &prefix,
        SEED,
        FILES,
        ROWS,
    ));
    let output = format!("s3://{bucket}/{prefix}/out");
    let path = dir.path().join("query.yaml");
    let checkpoint = format!("s3://{bucket}/{prefix}/ckpt");
    std::fs::write(
        &path,
        with_retention(manifest(
            "window-crash-s3",
            &input,
            &output,
            &checkpoint,
            SQL,
            "append",
        )),
    )
    .expect("manifest");
    common::run_with_crashes(|| common::spawn_worker(&path, &[]), 6, 50..500, None);
    let actual = runtime.block_on(output_table(&Location::parse(&output).expect("s3")));
    let expected = expected(SEED, FILES, ROWS);
    assert_tables_eq(&actual, &expected);
    runtime.block_on(assert_checkpoint_bounded(
        &Location::parse(&checkpoint).expect("s3"),
    ));
}

/// 100 minutes of events (600,000 rows, 1,000 devices): with a 10-minute watermark the state holds
/// at most the open windows, ~(10 + 1 + 1 batch) minutes × 1,000 devices, never the 100,000 groups
/// of the whole run.
#[tokio::test]
async fn state_stays_bounded_by_the_open_windows() {
    const FILES: u64 = 100;
    const ROWS: u64 = 6_000; // one minute of event time per file (10 ms apart)
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, 5, FILES, ROWS).expect("generate");
    let output = dir.path().join("out");
    let text = manifest(
        "window-bounded",
        input.to_str().expect("utf8"),
        output.to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        SQL,
        "append",
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let mut peak = 0u64;
    let mut dropped = 0u64;
    let mut watermark = None;
    let summary = engine
        .run(|p| {
            watermark = p.event_time.watermark.clone();
            for op in &p.state_operators {
                peak = peak.max(op["numRowsTotal"].as_u64().expect("rows"));
                dropped += op["numRowsDroppedByWatermark"].as_u64().expect("dropped");
            }
        })
        .await
        .expect("run");
    assert_eq!(summary.input_rows, FILES * ROWS);
    let open_windows_bound = (10 + 1 + 2) * 1_000;
    assert!(
        peak > 10 * 1_000,
        "the state held the open windows ({peak})"
    );
    assert!(
        peak <= open_windows_bound,
        "state rows {peak} > bound {open_windows_bound}"
    );
    assert_eq!(dropped, 0, "nothing is later than 10 minutes in this data");
    let max_event_ms = sluice_bench::events(5, FILES, ROWS)
        .map(|e| e.timestamp_ms)
        .max()
        .expect("events");
    let expected_watermark = chrono::DateTime::from_timestamp_millis(max_event_ms - DELAY_MS)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        watermark,
        Some(expected_watermark),
        "progress eventTime.watermark"
    );
    let actual = output_table(&Location::parse(output.to_str().expect("utf8")).expect("loc")).await;
    assert_tables_eq(&actual, &expected(5, FILES, ROWS));
}

#[tokio::test]
async fn restart_with_a_changed_aggregation_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, 1, 2, 100).expect("generate");
    let output = dir.path().join("out");
    let ckpt = dir.path().join("ckpt");
    let run = |sql: &str| {
        let text = manifest(
            "window-change",
            input.to_str().expect("utf8"),
            output.to_str().expect("utf8"),
            ckpt.to_str().expect("utf8"),
            sql,
            "append",
        );
        sluice_crds::parse_manifest(&text).expect("manifest")
    };
    let engine = Engine::start(QueryConfig::local(run(SQL)), Shared::new())
        .await
        .expect("start");
    engine.run(|_| {}).await.expect("run");
    let changed = SQL.replace("avg(temperature) AS avgTemp", "max(temperature) AS avgTemp");
    let err = Engine::start(QueryConfig::local(run(&changed)), Shared::new())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("stateful operators changed"), "{err}");
    assert!(
        err.contains("avg(events.temperature)") && err.contains("max(events.temperature)"),
        "{err}"
    );
}

#[tokio::test]
async fn aggregation_over_a_file_source_with_several_partitions_runs_over_the_keyed_exchange() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = manifest(
        "window-partitions",
        dir.path().join("in").to_str().expect("utf8"),
        dir.path().join("out").to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        SQL,
        "append",
    )
    .replace("partitions: 1", "partitions: 3");
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("an aggregation over 3 partitions starts (docs/keyed-exchange.md)");
    // Three source-stage tasks and one stateful task owning every key group.
    assert_eq!(
        engine.tasks(),
        vec![0, 1, 2, sluice_worker::key_group::STATEFUL_TASK_BASE]
    );
}
