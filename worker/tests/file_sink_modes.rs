//! The file sink's output modes and file management, with the worker binary: `update` (and
//! `complete` without `overwrite`) refused at start and by `check` with the reason, as Spark
//! refuses them; `complete` with `overwrite: partitions` leaves exactly one current version of
//! each partition with the final counts after a crash at every crash point; compaction merges
//! closed partitions' files with the same rows, exactly once after a crash at every crash point.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow::array::{Array, Int64Array, StringArray};
use common::{expected_high, output_rows, read_parquet_dir, spawn_worker};
use sluice_worker::fault::{CRASH_AT_ENV, CrashPoint};
use sluice_worker::sink::file::{LOG_DIR, committed_files};
use sluice_worker::storage::Location;

const SEED: u64 = 41;
const FILES: u64 = 5;
const ROWS: u64 = 200;
const CRASH_BATCH: u64 = 2;

fn manifest(
    input: &Path,
    output: &Path,
    checkpoint: &Path,
    mode: &str,
    sink_extra: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: report}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
  sql: SELECT danger_level, deviceId, count(*) AS n FROM events GROUP BY danger_level, deviceId
  outputMode: {mode}
  sink:
    file: {{path: "{output}", format: parquet, partitionBy: [danger_level]{sink_extra}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}", minBatchesToRetain: 2}}
"#,
        input = input.display(),
        output = output.display(),
        checkpoint = checkpoint.display(),
    )
}

fn worker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice-worker")
}

#[test]
fn update_and_plain_complete_into_the_file_sink_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    sluice_bench::write_json_files(&input, SEED, 1, 10).expect("generate");
    for (mode, extra, path, reason) in [
        (
            "update",
            "",
            "spec.outputMode",
            "does not support `update` output mode",
        ),
        (
            "complete",
            "",
            "spec.outputMode",
            "only with `sink.file.overwrite: partitions`",
        ),
        (
            "append",
            ", overwrite: partitions",
            "spec.sink.file.overwrite",
            "outputMode: complete",
        ),
    ] {
        let file = dir.path().join(format!("{mode}.yaml"));
        let checkpoint = dir.path().join(format!("ckpt-{mode}"));
        std::fs::write(&file, manifest(&input, &output, &checkpoint, mode, extra))
            .expect("manifest");
        let file = file.to_str().expect("utf8");
        for args in [["run", file], ["check", file]] {
            let out = worker(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{mode} {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("`{path}`")) && stderr.contains(reason),
                "{mode} {args:?}: {stderr}"
            );
            assert!(!stderr.contains("bug"), "a user error: {stderr}");
        }
        assert!(!output.exists(), "{mode}: nothing written");
        assert!(!checkpoint.exists(), "{mode}: no checkpoint created");
    }
}

/// (danger_level, deviceId) → count over the whole input.
fn expected_counts() -> BTreeMap<(String, String), i64> {
    let mut counts = BTreeMap::new();
    for event in sluice_bench::events(SEED, FILES, ROWS) {
        *counts
            .entry((event.danger_level.to_string(), event.device_id))
            .or_insert(0) += 1;
    }
    counts
}

/// The counts a reader following the commit log sees; panics on a key seen twice.
async fn output_counts(location: &Location) -> BTreeMap<(String, String), i64> {
    let mut counts = BTreeMap::new();
    for (relative, batches) in read_parquet_dir(location).await {
        let level = relative
            .split('/')
            .find_map(|p| p.strip_prefix("danger_level="))
            .expect("partition directory")
            .to_string();
        for batch in batches {
            let ids = batch.column_by_name("deviceId").expect("deviceId");
            let ids = ids.as_any().downcast_ref::<StringArray>().expect("utf8");
            let n = batch.column_by_name("n").expect("n");
            let n = n.as_any().downcast_ref::<Int64Array>().expect("i64");
            for i in 0..batch.num_rows() {
                let key = (level.clone(), ids.value(i).to_string());
                assert!(
                    counts.insert(key.clone(), n.value(i)).is_none(),
                    "{key:?} in two versions"
                );
            }
        }
    }
    counts
}

/// Every `part-` file under `dir` (relative), sorted: what a reader ignoring the log reads.
fn files_on_disk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for level in std::fs::read_dir(dir).expect("out").filter_map(|e| e.ok()) {
        if !level.path().is_dir() || level.file_name().to_string_lossy().starts_with('_') {
            continue;
        }
        for file in std::fs::read_dir(level.path())
            .expect("dir")
            .filter_map(|e| e.ok())
        {
            out.push(format!(
                "{}/{}",
                level.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

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

#[test]
fn overwrite_partitions_leaves_one_current_version_after_a_crash_at_each_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let expected = expected_counts();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for point in CrashPoint::ALL {
        if point == CrashPoint::MidCompaction {
            continue;
        }
        let output = dir.path().join(format!("out-{}", point.name()));
        let file = dir.path().join(format!("{}.yaml", point.name()));
        let checkpoint = dir.path().join(format!("ckpt-{}", point.name()));
        std::fs::write(
            &file,
            manifest(
                &input,
                &output,
                &checkpoint,
                "complete",
                ", overwrite: partitions",
            ),
        )
        .expect("manifest");
        let status = spawn_worker(&file, &[(CRASH_AT_ENV, &crash_at(point))])
            .wait()
            .expect("armed run");
        assert!(
            !status.success(),
            "{}: the worker did not crash",
            point.name()
        );
        let status = spawn_worker(&file, &[]).wait().expect("recovery run");
        assert!(status.success(), "{}: recovery failed", point.name());

        let location = Location::parse(output.to_str().expect("utf8")).expect("loc");
        assert_eq!(
            runtime.block_on(output_counts(&location)),
            expected,
            "{}: the final counts, each key once",
            point.name()
        );
        let committed = runtime
            .block_on(committed_files(&location))
            .expect("log")
            .expect("a commit log");
        assert_eq!(
            files_on_disk(&output),
            committed,
            "{}: a plain reader sees only the current version",
            point.name()
        );
        let log: Vec<String> = std::fs::read_dir(output.join(LOG_DIR))
            .expect("log")
            .filter_map(|e| e.ok())
            .flat_map(|run| {
                std::fs::read_dir(run.path())
                    .expect("run")
                    .filter_map(|e| e.ok())
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            log,
            vec![format!("00000-{:020}.json", FILES - 1)],
            "{}: one live entry, the last batch's",
            point.name()
        );
    }
}

/// The IoT filter (append, one batch per input file), compacting: every 2 batches, files at least
/// 2 batches old and outside the checkpoint's 2 retained batches, 3 or more at a time.
fn compacting_manifest(input: &Path, output: &Path, checkpoint: &Path, format: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: compacting}}
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
    file:
      path: "{output}"
      format: {format}
      compaction: {{minFiles: 3, targetFileSize: 64MiB, closedAfterBatches: 2}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}", minBatchesToRetain: 2}}
"#,
        input = input.display(),
        output = output.display(),
        checkpoint = checkpoint.display(),
    )
}

/// `part-` files directly under `dir`, sorted.
fn top_files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .expect("out")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    out.sort();
    out
}

#[test]
fn compaction_reduces_the_file_count_with_the_same_rows_after_a_crash_at_each_point() {
    const BATCHES: u64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, BATCHES, ROWS).expect("generate");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Compaction rounds run after batches 2, 4 and 6; the one after batch 4 merges 0..=2.
    let crash_batch = 4;
    for point in CrashPoint::ALL {
        let output = dir.path().join(format!("out-{}", point.name()));
        let file = dir.path().join(format!("{}.yaml", point.name()));
        let checkpoint = dir.path().join(format!("ckpt-{}", point.name()));
        std::fs::write(
            &file,
            compacting_manifest(&input, &output, &checkpoint, "parquet"),
        )
        .expect("manifest");
        let armed = if point == CrashPoint::MidRetention {
            (0..BATCHES)
                .map(|b| format!("{}:{b}", point.name()))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!("{}:{crash_batch}", point.name())
        };
        let status = spawn_worker(&file, &[(CRASH_AT_ENV, &armed)])
            .wait()
            .expect("armed run");
        assert!(
            !status.success(),
            "{}: the worker did not crash",
            point.name()
        );
        let status = spawn_worker(&file, &[]).wait().expect("recovery run");
        assert!(status.success(), "{}: recovery failed", point.name());

        let location = Location::parse(output.to_str().expect("utf8")).expect("loc");
        assert_eq!(
            runtime.block_on(output_rows(&location)),
            expected_high(SEED, BATCHES, ROWS),
            "{}: every row exactly once",
            point.name()
        );
        let committed = runtime
            .block_on(committed_files(&location))
            .expect("log")
            .expect("a commit log");
        assert_eq!(
            top_files(&output),
            committed,
            "{}: no stray file",
            point.name()
        );
        // The round after batch 4 merged batches 0..=2; the one after batch 6 found only two
        // closed files (3, 4), fewer than minFiles.
        let merged = format!("part-00000-c{:020}-", 2);
        assert!(
            committed.iter().any(|f| f.starts_with(&merged)),
            "{}: {committed:?}",
            point.name()
        );
        assert_eq!(
            committed.len(),
            6,
            "{}: 8 batch files became 6",
            point.name()
        );
    }
}

/// The rows of every committed file under `output` read back with arrow's own JSON or CSV
/// reader and the query's result schema.
fn text_rows(output: &Path, format: &str) -> Vec<common::Row> {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("danger_level", DataType::Utf8, true),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
    ]));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let location = Location::parse(output.to_str().expect("utf8")).expect("loc");
    let committed = runtime
        .block_on(committed_files(&location))
        .expect("log")
        .expect("a commit log");
    let mut batches = Vec::new();
    for file in committed {
        assert!(file.ends_with(&format!(".{format}")), "{file}");
        let body = std::fs::File::open(output.join(&file)).expect("file");
        let body = std::io::BufReader::new(body);
        if format == "json" {
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .build(body)
                .expect("json");
            batches.extend(reader.map(|b| b.expect("json batch")));
        } else {
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .build(body)
                .expect("csv");
            batches.extend(reader.map(|b| b.expect("csv batch")));
        }
    }
    let mut rows = common::rows_of(&batches, None);
    rows.sort();
    rows
}

#[test]
fn json_and_csv_output_read_back_exactly_also_after_compaction() {
    const BATCHES: u64 = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, BATCHES, ROWS).expect("generate");
    for format in ["json", "csv"] {
        let output = dir.path().join(format!("out-{format}"));
        let file = dir.path().join(format!("{format}.yaml"));
        std::fs::write(
            &file,
            compacting_manifest(
                &input,
                &output,
                &dir.path().join(format!("ckpt-{format}")),
                format,
            ),
        )
        .expect("manifest");
        let status = spawn_worker(&file, &[]).wait().expect("run");
        assert!(status.success(), "{format}: {status}");
        assert_eq!(
            text_rows(&output, format),
            expected_high(SEED, BATCHES, ROWS),
            "{format}: every row back, exactly"
        );
        let files = top_files(&output);
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("part-00000-c{:020}-", 2))),
            "{format}: batches 0..=2 merged: {files:?}"
        );
        assert_eq!(files.len(), BATCHES as usize - 2, "{format}: {files:?}");
    }
}
