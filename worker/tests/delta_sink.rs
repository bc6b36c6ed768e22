//! The Delta Lake sink, read back by an independent Delta reader (the `deltalake` Python package,
//! delta-rs): exactly once through the table's `txn` actions (replays skipped, the IoT example
//! SIGKILLed at random points, locally and on S3), `complete` leaving exactly the final result
//! table, `update` MERGEing per key, compaction keeping the rows in fewer files, and readers
//! seeing only whole committed batches while the query runs.

mod common;

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{Row, expected_high, s3_bucket, unique};
use serde_json::Value;
use sluice_crds::{DeltaSinkSpec, OutputMode};
use sluice_worker::sink::Sink;
use sluice_worker::sink::delta::{DeltaContext, DeltaSink, maintenance, table_root};

/// The venv `e2e/servers/install.sh` creates, with `deltalake` in it.
fn python(test: &str) -> Option<PathBuf> {
    let path = match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/sluice/venv/bin/python"),
    };
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "{test}: no Python with deltalake at {} but SLUICE_REQUIRE_SERVERS=1",
        path.display()
    );
    eprintln!(
        "SKIPPED {test}: no Python at {} (run e2e/servers/install.sh)",
        path.display()
    );
    None
}

/// Runs `delta_reader.py` with `args` and parses its JSON answer.
fn read_delta(python: &Path, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/delta_reader.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "delta_reader.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader JSON")
}

/// The rows of the table's latest version as (word, n) pairs, sorted.
fn word_counts(python: &Path, uri: &str) -> Vec<(Option<String>, i64)> {
    key_counts(python, uri, "word")
}

/// The rows of the table's latest version as (`key`, n) pairs, sorted.
fn key_counts(python: &Path, uri: &str, key: &str) -> Vec<(Option<String>, i64)> {
    let answer = read_delta(python, &["rows", uri]);
    let mut rows: Vec<(Option<String>, i64)> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[key].as_str().map(str::to_string),
                r["n"].as_i64().expect("n"),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// IoT rows from the reader's JSON, sorted as [`expected_high`] is.
fn iot_rows(answer: &Value) -> Vec<Row> {
    let mut rows: Vec<Row> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["deviceId"].as_str().expect("deviceId").to_string(),
                (r["temperature"].as_f64().expect("temperature") * 100.0).round() as i64,
                r["danger_level"].as_str().expect("level").to_string(),
                r["timestamp"].as_i64().expect("timestamp"),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn counts(words: &[(Option<&str>, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                words.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                words.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

fn owned(words: &[(Option<&str>, i64)]) -> Vec<(Option<String>, i64)> {
    let mut out: Vec<_> = words
        .iter()
        .map(|(w, n)| (w.map(str::to_string), *n))
        .collect();
    out.sort();
    out
}

fn spec(path: &str) -> DeltaSinkSpec {
    serde_json::from_value(serde_json::json!({ "path": path })).expect("spec")
}

fn context(mode: OutputMode, keys: Option<&[&str]>) -> DeltaContext {
    DeltaContext {
        query_id: "query-1".into(),
        output_mode: mode,
        grouping_columns: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
        tasks: 1,
        maintenance_failures: None,
    }
}

#[tokio::test]
async fn replayed_batches_are_skipped_by_the_tables_txn() {
    let Some(python) = python("replayed_batches_are_skipped_by_the_tables_txn") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t");
    let uri = path.to_str().expect("utf8");
    let sink = DeltaSink::new(&spec(uri), &context(OutputMode::Append, None)).expect("sink");
    let b0 = counts(&[(Some("a"), 1), (Some("b"), 2)]);
    let b1 = counts(&[(Some("c"), 3)]);
    assert_eq!(
        sink.write(0, 0, std::slice::from_ref(&b0))
            .await
            .expect("batch 0"),
        2
    );
    assert_eq!(
        sink.write(0, 1, std::slice::from_ref(&b1))
            .await
            .expect("batch 1"),
        1
    );
    // A replay in this process and one in a new process (a new sink) write nothing.
    sink.write(0, 1, std::slice::from_ref(&b1))
        .await
        .expect("replay 1");
    let restarted = DeltaSink::new(&spec(uri), &context(OutputMode::Append, None)).expect("sink");
    restarted.write(0, 0, &[b0]).await.expect("replay 0");
    restarted.write(0, 1, &[b1]).await.expect("replay 1 again");
    // Another task of the same query has its own app id and batch ids.
    restarted
        .write(1, 0, &[counts(&[(Some("d"), 4)])])
        .await
        .expect("task 1 batch 0");

    assert_eq!(
        word_counts(&python, uri),
        owned(&[
            (Some("a"), 1),
            (Some("b"), 2),
            (Some("c"), 3),
            (Some("d"), 4)
        ])
    );
    let txn = read_delta(&python, &["txn", uri, "query-1-0", "query-1-1", "other"]);
    assert_eq!(txn["query-1-0"], 1, "{txn}");
    assert_eq!(txn["query-1-1"], 0, "{txn}");
    assert!(txn["other"].is_null(), "{txn}");
    // Three commits: batches 0 and 1 of task 0, batch 0 of task 1.
    assert_eq!(read_delta(&python, &["rows", uri])["version"], 2);
}

#[tokio::test]
async fn complete_mode_leaves_exactly_the_final_table() {
    let Some(python) = python("complete_mode_leaves_exactly_the_final_table") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = dir.path().join("t").to_str().expect("utf8").to_string();
    let sink =
        DeltaSink::new(&spec(&uri), &context(OutputMode::Complete, Some(&["word"]))).expect("sink");
    let tables: [&[(Option<&str>, i64)]; 3] = [
        &[(Some("a"), 1), (Some("b"), 1)],
        &[(Some("a"), 2), (Some("b"), 1), (Some("c"), 1)],
        &[(Some("a"), 3), (Some("b"), 2), (Some("c"), 1), (None, 1)],
    ];
    for (batch_id, table) in tables.iter().enumerate() {
        sink.write(0, batch_id as u64, &[counts(table)])
            .await
            .expect("write");
        assert_eq!(
            word_counts(&python, &uri),
            owned(table),
            "after batch {batch_id}"
        );
    }
    // A replay of an earlier batch does not bring its older result table back.
    sink.write(0, 1, &[counts(tables[1])])
        .await
        .expect("replay");
    assert_eq!(word_counts(&python, &uri), owned(tables[2]));
    // Every version is one whole result table: the overwrite is one commit.
    let per_version = read_delta(&python, &["counts", uri.as_str()]);
    assert_eq!(per_version, serde_json::json!([2, 3, 4]));
    // An empty result table empties the table.
    sink.write(0, 3, &[]).await.expect("empty");
    assert_eq!(word_counts(&python, &uri), Vec::new());

    let mut two_tasks = context(OutputMode::Complete, Some(&["word"]));
    two_tasks.tasks = 2;
    let refused = DeltaSink::new(&spec(&uri), &two_tasks)
        .err()
        .expect("complete with two tasks is refused")
        .to_string();
    assert!(refused.contains("one task"), "{refused}");
}

#[tokio::test]
async fn update_mode_merges_on_the_grouping_keys() {
    let Some(python) = python("update_mode_merges_on_the_grouping_keys") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = dir.path().join("t").to_str().expect("utf8").to_string();
    let sink =
        DeltaSink::new(&spec(&uri), &context(OutputMode::Update, Some(&["word"]))).expect("sink");
    // Update mode emits the rows whose aggregate changed in the batch.
    let updates: [&[(Option<&str>, i64)]; 3] = [
        &[(Some("a"), 1), (Some("b"), 1), (None, 1)],
        &[(Some("a"), 2), (Some("c"), 1)],
        &[(Some("b"), 3), (None, 4)],
    ];
    for (batch_id, rows) in updates.iter().enumerate() {
        sink.write(0, batch_id as u64, &[counts(rows)])
            .await
            .expect("merge");
    }
    // A replayed batch is skipped rather than merged again over newer values.
    sink.write(0, 1, &[counts(updates[1])])
        .await
        .expect("replay");
    assert_eq!(
        word_counts(&python, &uri),
        owned(&[(None, 4), (Some("a"), 2), (Some("b"), 3), (Some("c"), 1)])
    );

    let refused = DeltaSink::new(&spec(&uri), &context(OutputMode::Update, None))
        .err()
        .expect("merge without keys is refused")
        .to_string();
    assert!(refused.contains("keyColumns"), "{refused}");
}

#[tokio::test]
async fn compaction_reduces_the_file_count_with_the_same_rows() {
    let Some(python) = python("compaction_reduces_the_file_count_with_the_same_rows") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = dir.path().join("t").to_str().expect("utf8").to_string();
    let sink = DeltaSink::new(&spec(&uri), &context(OutputMode::Append, None)).expect("sink");
    let mut expected = Vec::new();
    for batch_id in 0..8u64 {
        let word = format!("w{batch_id}");
        let rows = [(Some(word.as_str()), batch_id as i64)];
        sink.write(0, batch_id, &[counts(&rows)])
            .await
            .expect("write");
        expected.extend(owned(&rows));
    }
    expected.sort();
    let before = read_delta(&python, &["rows", uri.as_str()]);
    assert_eq!(before["files"], 8);

    let (url, root) = table_root(&uri).expect("root");
    let (removed, added) =
        maintenance::compact(&url, &root, NonZeroU64::new(128 << 20).expect("size"))
            .await
            .expect("compact");
    assert_eq!((removed, added), (8, 1));
    let after = read_delta(&python, &["rows", uri.as_str()]);
    assert_eq!(after["files"], 1, "one file after compaction");
    assert_eq!(word_counts(&python, &uri), expected, "same rows");

    // Vacuum with zero retention deletes the eight compacted-away files from storage.
    let deleted = maintenance::vacuum_table(&url, &root, std::time::Duration::ZERO)
        .await
        .expect("vacuum");
    assert_eq!(deleted, 8);
    let parquet_files = std::fs::read_dir(dir.path().join("t"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        })
        .count();
    assert_eq!(parquet_files, 1);
    assert_eq!(
        word_counts(&python, &uri),
        expected,
        "same rows after vacuum"
    );
}

#[tokio::test]
async fn periodic_compaction_runs_in_the_background() {
    let Some(python) = python("periodic_compaction_runs_in_the_background") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = dir.path().join("t").to_str().expect("utf8").to_string();
    let mut spec = spec(&uri);
    spec.optimize = Some(
        serde_json::from_value(serde_json::json!({"every": "1s", "targetFileSize": "64MiB"}))
            .expect("optimize"),
    );
    let sink = DeltaSink::new(&spec, &context(OutputMode::Append, None)).expect("sink");
    let settle = async |sink: &DeltaSink| {
        let started = std::time::Instant::now();
        while sink.maintenance_running() {
            assert!(started.elapsed().as_secs() < 60, "compaction did not end");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let mut expected = Vec::new();
    for batch_id in 0..6u64 {
        let word = format!("w{batch_id}");
        let rows = [(Some(word.as_str()), batch_id as i64)];
        sink.write(0, batch_id, &[counts(&rows)])
            .await
            .expect("write");
        expected.extend(owned(&rows));
    }
    // Past the interval, the next commit starts a compaction of everything so far.
    settle(&sink).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rows = [(Some("last"), 6)];
    sink.write(0, 6, &[counts(&rows)]).await.expect("write");
    expected.extend(owned(&rows));
    expected.sort();
    settle(&sink).await;
    assert_eq!(
        read_delta(&python, &["rows", uri.as_str()])["files"],
        1,
        "seven one-file batches compacted into one file"
    );
    assert_eq!(word_counts(&python, &uri), expected);
}

/// The IoT filter (README command 1's query) into a Delta table.
fn iot_delta_manifest(name: &str, input: &str, table: &str, checkpoint: &str) -> String {
    common::iot_manifest(
        name,
        input,
        "unused",
        checkpoint,
        "",
        "{availableNow: true}",
    )
    .replace(
        "file: {path: \"unused\", format: parquet}",
        &format!("delta: {{path: \"{table}\"}}"),
    )
}

const SEED: u64 = 21;
const FILES: u64 = 40;
const ROWS: u64 = 2_000;

#[test]
fn iot_example_into_delta_exactly_once_after_sigkills() {
    let Some(python) = python("iot_example_into_delta_exactly_once_after_sigkills") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let table = dir.path().join("table");
    let table = table.to_str().expect("utf8");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        iot_delta_manifest(
            "delta-crash-local",
            input.to_str().expect("utf8"),
            table,
            dir.path().join("ckpt").to_str().expect("utf8"),
        ),
    )
    .expect("manifest");
    assert!(
        std::fs::read_to_string(&manifest)
            .expect("manifest")
            .contains("delta: {path:")
    );
    common::run_with_crashes(|| common::spawn_worker(&manifest, &[]), 6, 50..900, None);
    let answer = read_delta(&python, &["rows", table]);
    let expected = expected_high(SEED, FILES, ROWS);
    let actual = iot_rows(&answer);
    assert_eq!(actual.len(), expected.len(), "no row lost or duplicated");
    assert_eq!(actual, expected);
}

#[test]
fn iot_example_into_delta_on_s3_exactly_once_after_sigkills() {
    let test = "iot_example_into_delta_on_s3_exactly_once_after_sigkills";
    let Some(python) = python(test) else {
        return;
    };
    let Some(bucket) = s3_bucket(test) else {
        return;
    };
    let prefix = unique("delta-crash");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let input = runtime.block_on(common::iot_input_on_s3(
        &dir.path().join("in"),
        &bucket,
        &prefix,
        SEED,
        FILES,
        ROWS,
    ));
    let table = format!("s3://{bucket}/{prefix}/table");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        iot_delta_manifest(
            "delta-crash-s3",
            &input,
            &table,
            &format!("s3://{bucket}/{prefix}/ckpt"),
        ),
    )
    .expect("manifest");
    common::run_with_crashes(|| common::spawn_worker(&manifest, &[]), 5, 100..1500, None);
    let answer = read_delta(&python, &["rows", table.as_str()]);
    let expected = expected_high(SEED, FILES, ROWS);
    let actual = iot_rows(&answer);
    assert_eq!(actual.len(), expected.len(), "no row lost or duplicated");
    assert_eq!(actual, expected);
}

#[test]
fn readers_see_only_whole_committed_batches_mid_stream() {
    let Some(python) = python("readers_see_only_whole_committed_batches_mid_stream") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let table = dir.path().join("table");
    let table = table.to_str().expect("utf8").to_string();
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        iot_delta_manifest(
            "delta-mid-stream",
            input.to_str().expect("utf8"),
            &table,
            dir.path().join("ckpt").to_str().expect("utf8"),
        ),
    )
    .expect("manifest");
    // Slow some batches down after their commit so the reader catches the table mid-stream.
    let delays: Vec<String> = (2..12)
        .map(|b| format!("after-sink-write:{b}:150"))
        .collect();
    let delays = delays.join(",");
    let mut worker = common::spawn_worker(&manifest, &[("SLUICE_DELAY_AT", &delays)]);
    let watcher = {
        let python = python.clone();
        let table = table.clone();
        std::thread::spawn(move || read_delta(&python, &["watch", table.as_str(), "6"]))
    };
    let observed = watcher.join().expect("watcher");
    assert!(worker.wait().expect("worker").success());

    // Rows at each version, after the run; every batch of one file per task is one commit.
    let per_version: Vec<i64> = read_delta(&python, &["counts", table.as_str()])
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_i64().expect("count"))
        .collect();
    assert_eq!(per_version.len() as u64, FILES, "one commit per batch");
    assert_eq!(
        per_version.last().copied(),
        Some(expected_high(SEED, FILES, ROWS).len() as i64)
    );
    let observed = observed.as_array().expect("observed");
    let mid_stream = observed
        .iter()
        .filter(|o| o[0].as_u64().is_some_and(|v| v + 1 < FILES))
        .count();
    assert!(
        mid_stream > 0,
        "the reader saw no version before the last: {observed:?}"
    );
    for o in observed {
        let version = o[0].as_u64().expect("version") as usize;
        assert_eq!(
            Some(o[1].as_i64().expect("rows")),
            per_version.get(version).copied(),
            "a reader at version {version} saw other rows than the version's whole batches"
        );
    }
}

#[test]
fn a_restore_replays_into_delta_only_when_the_replay_rewrites_in_place() {
    use sluice_worker::sink::replay::{ReplayVerdict, replay_verdict};
    let sink =
        |yaml: &str| -> sluice_crds::SinkSpec { serde_saphyr::from_str(yaml).expect("sink") };
    let appending = replay_verdict(&sink("delta: {path: /t}"), 7);
    assert!(
        matches!(&appending, ReplayVerdict::Refused(m) if m.contains("Delta") && m.contains("7 rows")),
        "{appending:?}"
    );
    assert_eq!(
        replay_verdict(&sink("delta: {path: /t}"), 0),
        ReplayVerdict::Allowed
    );
    for mode in ["merge", "overwrite"] {
        assert_eq!(
            replay_verdict(&sink(&format!("delta: {{path: /t, mode: {mode}}}")), 7),
            ReplayVerdict::Allowed,
            "{mode}"
        );
    }
}

/// Per danger level, the number of events of the generated data set.
fn expected_level_counts(seed: u64, files: u64, rows: u64) -> Vec<(Option<String>, i64)> {
    let mut counts = std::collections::BTreeMap::<String, i64>::new();
    for event in sluice_bench::events(seed, files, rows) {
        *counts.entry(event.danger_level.to_string()).or_default() += 1;
    }
    counts.into_iter().map(|(k, n)| (Some(k), n)).collect()
}

/// `SELECT danger_level, count(*) AS n ... GROUP BY danger_level` over the IoT files, one file per
/// batch, into a Delta table in `output_mode` (update MERGEs on the query's grouping column);
/// returns the table's (level, n) rows.
async fn run_level_counts(python: &Path, output_mode: &str) -> Vec<(Option<String>, i64)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, 6, ROWS).expect("generate");
    let table = dir.path().join("table");
    let table = table.to_str().expect("utf8").to_string();
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: delta-levels}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
  sql: SELECT danger_level, count(*) AS n FROM events GROUP BY danger_level
  sink:
    delta: {{path: "{table}"}}
  outputMode: {output_mode}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#,
        input = input.display(),
        checkpoint = dir.path().join("ckpt").display(),
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = sluice_worker::Engine::start(
        sluice_worker::QueryConfig::local(query),
        sluice_worker::Shared::new(),
    )
    .await
    .expect("start");
    let summary = engine.run(|_| {}).await.expect("run");
    assert_eq!(summary.batches, 6, "one batch per file");
    key_counts(python, &table, "danger_level")
}

#[tokio::test]
async fn a_running_count_in_update_and_complete_mode_ends_as_the_final_counts() {
    let test = "a_running_count_in_update_and_complete_mode_ends_as_the_final_counts";
    let Some(python) = python(test) else {
        return;
    };
    let expected = expected_level_counts(SEED, 6, ROWS);
    assert_eq!(
        run_level_counts(&python, "update").await,
        expected,
        "update"
    );
    assert_eq!(
        run_level_counts(&python, "complete").await,
        expected,
        "complete"
    );
}

#[tokio::test]
async fn a_failed_compaction_is_counted_and_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t");
    // A table whose log cannot be read: every compaction fails.
    std::fs::create_dir_all(path.join("_delta_log")).expect("log dir");
    std::fs::write(
        path.join("_delta_log/00000000000000000000.json"),
        "not a delta log\n",
    )
    .expect("corrupt log");
    let (url, root) = table_root(path.to_str().expect("utf8")).expect("root");
    let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
    let plan = maintenance::MaintenancePlan {
        optimize: Some((
            std::time::Duration::from_millis(1),
            NonZeroU64::new(1 << 20).expect("size"),
        )),
        vacuum: None,
    };
    let runs = maintenance::Maintenance::new(plan, url, root, Some(failures.clone()));
    for expected in 1..=2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        runs.after_commit();
        let started = std::time::Instant::now();
        while runs.is_running() {
            assert!(started.elapsed().as_secs() < 60, "compaction did not end");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(failures.get(), expected, "each failed run is counted");
    }
}
