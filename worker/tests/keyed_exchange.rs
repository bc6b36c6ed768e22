//! Stateful queries over several tasks through the keyed exchange (docs/keyed-exchange.md), each
//! compared with the one-task result on the same input:
//!
//! - a windowed count per device (append) and a `SELECT DISTINCT` with a watermark over a file
//!   source with 8 partitions, in one process;
//! - the windowed count on 2 and on 3 worker processes sharing one checkpoint;
//! - the windowed count with SIGKILL at random points and at the exchange's crash points;
//! - the windowed count rescaled 1 → 3 → 2 replicas mid-stream (each step after a SIGKILL).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::DataType;
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const WINDOWED: &str = "SELECT window(ts, '1 minute') AS window, deviceId, count(*) AS n FROM events GROUP BY window(ts, '1 minute'), deviceId";
const DISTINCT: &str = "SELECT DISTINCT deviceId, ts FROM events";

/// `files` files of 90 rows, 6 devices, event time rising through the files (3 minutes per file,
/// one row every 2 s; every third row a duplicate of the one before).
fn write_input(dir: &Path, files: u32) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("time");
    for file in 0..files {
        let mut body = String::new();
        for row in 0..90u32 {
            let second = i64::from(file * 180 + row * 2);
            // Every third row repeats the row before it (the same device and time): duplicates.
            let device = (row / 3) % 6;
            let second = if row % 3 == 2 { second - 2 } else { second };
            let ts = start + chrono::Duration::seconds(second);
            body.push_str(&format!(
                "{{\"deviceId\":\"d{device}\",\"ts\":\"{}\"}}\n",
                ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        // Names sort in event-time order: files written within one mtime tick are taken by name.
        std::fs::write(input.join(format!("part-{file:04}.json")), body).expect("write");
    }
    input
}

fn manifest(
    name: &str,
    dir: &Path,
    sql: &str,
    partitions: u32,
    sink: &str,
    trigger: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: {partitions}}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: ts, type: timestamp}}
      watermark: {{column: ts, delay: 5 minutes, idleTimeout: 1s}}
  sql: "{sql}"
  outputMode: append
  sink:
    {sink}
  {trigger}
  checkpoint: {{location: "{checkpoint}"}}
"#,
        input = dir.join("input").display(),
        checkpoint = dir.join(format!("checkpoint-{name}")).display(),
    )
}

/// Output rows as text, counted (a multiset: a row written twice counts twice).
type Rows = BTreeMap<String, usize>;

fn rows_of(batches: &[RecordBatch]) -> Rows {
    let mut out = Rows::new();
    for batch in batches {
        let columns: Vec<Vec<String>> = batch
            .columns()
            .iter()
            .map(|c| {
                let c = match c.as_any().downcast_ref::<StructArray>() {
                    Some(window) => window.column(0).clone(),
                    None => c.clone(),
                };
                let text = arrow::compute::cast(&c, &DataType::Utf8).expect("cast");
                let text = text
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("utf8");
                (0..text.len()).map(|r| text.value(r).to_string()).collect()
            })
            .collect();
        for r in 0..batch.num_rows() {
            let row: Vec<&str> = columns.iter().map(|c| c[r].as_str()).collect();
            *out.entry(row.join("|")).or_default() += 1;
        }
    }
    out
}

/// Asserts `got == want`, naming the rows that differ (not the whole tables).
fn assert_same(got: &Rows, want: &Rows) {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k}: got {:?}, want {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} rows differ: {:?}",
        differ.len(),
        want.len(),
        &differ[..differ.len().min(20)]
    );
}

/// Runs `manifest` in this process to the end (`availableNow`) and returns its memory sink's rows.
async fn run_in_process(manifest: &str, sink: &str) -> Rows {
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    engine.run(|_| {}).await.expect("run");
    let batches: Vec<RecordBatch> = sluice_worker::sink::memory::read_table(sink)
        .into_values()
        .flatten()
        .collect();
    rows_of(&batches)
}

/// The one-task result (`partitions: 1`, `availableNow`) of `sql` over the input in `dir`,
/// through the memory sink `sink`.
async fn one_task_result(dir: &Path, sql: &str, sink: &str) -> Rows {
    run_in_process(
        &manifest(
            "single",
            dir,
            sql,
            1,
            &format!("memory: {{name: {sink}}}"),
            "trigger: {availableNow: true}",
        ),
        sink,
    )
    .await
}

async fn one_task_and_eight(sql: &str, name: &str) -> (Rows, Rows) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), 16);
    let single = one_task_result(dir.path(), sql, &format!("{name}-single")).await;
    let exchange_sink = format!("{name}-exchange");
    let exchanged = run_in_process(
        &manifest(
            "exchange",
            dir.path(),
            sql,
            8,
            &format!("memory: {{name: {exchange_sink}}}"),
            "trigger: {availableNow: true}",
        ),
        &exchange_sink,
    )
    .await;
    // The stateful stage kept its state per key-group range, not per source task.
    assert!(
        dir.path()
            .join("checkpoint-exchange/stateful/ranges/0-127")
            .is_dir(),
        "no stateful range directory"
    );
    (single, exchanged)
}

#[tokio::test]
async fn a_windowed_count_over_eight_partitions_equals_the_one_task_result() {
    let (single, exchanged) = one_task_and_eight(WINDOWED, "exchange-windowed").await;
    // 48 minutes of events, the last at 47:56; the watermark ends at 42:56, which closes the 42
    // windows ending by 42:00, each with all 6 devices.
    assert_eq!(single.values().sum::<usize>(), 42 * 6, "{single:?}");
    assert_eq!(exchanged, single);
}

#[tokio::test]
async fn distinct_with_a_watermark_over_eight_partitions_equals_the_one_task_result() {
    let (single, exchanged) = one_task_and_eight(DISTINCT, "exchange-distinct").await;
    // 16 × 90 rows, every third a duplicate.
    assert_eq!(single.values().sum::<usize>(), 16 * 60);
    assert!(single.values().all(|n| *n == 1));
    assert_eq!(exchanged, single);
}

/// Starts `replicas` worker processes on one manifest (`--replica i --replicas n`).
fn spawn_replicas(manifest: &Path, replicas: u32) -> Vec<std::process::Child> {
    (0..replicas)
        .map(|replica| {
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
                .arg("run")
                .arg(manifest)
                .args(["--replica", &replica.to_string()])
                .args(["--replicas", &replicas.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("spawn worker")
        })
        .collect()
}

async fn parquet_rows(output: &Path) -> Rows {
    let location = Location::parse(output.to_str().expect("utf8")).expect("location");
    let batches: Vec<RecordBatch> = common::read_parquet_dir(&location)
        .await
        .into_values()
        .flatten()
        .collect();
    rows_of(&batches)
}

/// Waits until `output` holds `expected` rows in total, then for half a second more (so that a
/// duplicate would show), and returns what it holds.
async fn settled_rows(
    output: &Path,
    expected: usize,
    children: &mut [std::process::Child],
) -> Rows {
    let started = Instant::now();
    loop {
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("a worker exited early: {status}");
            }
        }
        let rows = parquet_rows(output).await;
        if rows.values().sum::<usize>() >= expected {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return parquet_rows(output).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "after 120 s the output holds {} of {expected} rows",
            rows.values().sum::<usize>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_and_three_worker_processes_share_one_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), 16);
    let single = one_task_result(dir.path(), WINDOWED, "exchange-processes-single").await;
    let expected = single.values().sum::<usize>();
    for replicas in [2u32, 3] {
        let name = format!("replicas{replicas}");
        let output = dir.path().join(format!("out-{replicas}"));
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            manifest(
                &name,
                dir.path(),
                WINDOWED,
                8,
                &format!("file: {{path: \"{}\", format: parquet}}", output.display()),
                "",
            ),
        )
        .expect("manifest");
        let mut children = spawn_replicas(&path, replicas);
        let rows = settled_rows(&output, expected, &mut children).await;
        kill_all(&mut children);
        assert_eq!(rows, single, "{replicas} replicas");
        let ranges = std::fs::read_dir(
            dir.path()
                .join(format!("checkpoint-{name}/stateful/ranges")),
        )
        .expect("ranges")
        .count();
        assert_eq!(ranges, replicas as usize, "one key-group range per replica");
    }
}

#[tokio::test]
async fn sigkill_at_random_points_and_at_the_exchange_crash_points_keeps_the_output_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), 192);
    let single = one_task_result(dir.path(), WINDOWED, "exchange-crash-single").await;
    // Armed crash points: a source task after its exchange objects (batch 0), the stateful task
    // after the sink (plan 0), mid-state and before its commit (plan 1); then random SIGKILLs.
    let output = dir.path().join("out");
    let path = dir.path().join("crash.yaml");
    std::fs::write(
        &path,
        manifest(
            "crash",
            dir.path(),
            WINDOWED,
            8,
            &format!("file: {{path: \"{}\", format: parquet}}", output.display()),
            "trigger: {availableNow: true}",
        ),
    )
    .expect("manifest");
    for point in [
        "after-exchange-write:0",
        "after-sink-write:0",
        "mid-state-write:1",
        "before-commit:1",
    ] {
        let status = common::spawn_worker(&path, &[("SLUICE_CRASH_AT", point)])
            .wait()
            .expect("wait");
        assert!(!status.success(), "{point}: the worker did not crash");
    }
    // 192 files over 8 tasks: ~24 rounds, so that random kills land mid-run.
    common::run_with_crashes(|| common::spawn_worker(&path, &[]), 6, 150..900, None);
    assert_same(&parquet_rows(&output).await, &single);
}

/// The stateful plans written so far: (plan id, parallelism), in id order.
fn plans(checkpoint: &Path) -> Vec<(u64, u32)> {
    let Ok(entries) = std::fs::read_dir(checkpoint.join("stateful/plans")) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u32)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let id = path.file_name()?.to_str()?.parse().ok()?;
            let body: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            Some((id, body["parallelism"].as_u64()? as u32))
        })
        .collect();
    out.sort();
    out
}

/// Waits until `done` holds for the plans, checking that no worker exited.
async fn until_plans(
    checkpoint: &Path,
    children: &mut [std::process::Child],
    what: &str,
    done: impl Fn(&[(u64, u32)]) -> bool,
) {
    let started = Instant::now();
    while !done(&plans(checkpoint)) {
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("{what}: a worker exited early: {status}");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: not reached in 120 s; plans {:?}",
            plans(checkpoint)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kill_all(children: &mut [std::process::Child]) {
    for child in children {
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
}

#[tokio::test]
async fn rescale_one_to_three_to_two_replicas_moves_the_state_and_keeps_the_output_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), 64);
    let single = one_task_result(dir.path(), WINDOWED, "exchange-rescale-single").await;
    let expected = single.values().sum::<usize>();
    let output = dir.path().join("out");
    let path = dir.path().join("rescale.yaml");
    std::fs::write(
        &path,
        manifest(
            "rescale",
            dir.path(),
            WINDOWED,
            8,
            &format!("file: {{path: \"{}\", format: parquet}}", output.display()),
            "",
        ),
    )
    .expect("manifest");
    let checkpoint = dir.path().join("checkpoint-rescale");
    // One replica: killed (SIGKILL, mid-plan or not) after 3 plans.
    let mut one = spawn_replicas(&path, 1);
    until_plans(&checkpoint, &mut one, "1 replica", |p| p.len() >= 3).await;
    kill_all(&mut one);
    let before = plans(&checkpoint).last().map(|(id, _)| *id).expect("plans");
    // Three replicas: continue from there, killed after 3 plans with 3 ranges.
    let mut three = spawn_replicas(&path, 3);
    until_plans(&checkpoint, &mut three, "3 replicas", |p| {
        p.iter()
            .filter(|(_, parallelism)| *parallelism == 3)
            .count()
            >= 3
    })
    .await;
    kill_all(&mut three);
    // Two replicas to the end.
    let mut two = spawn_replicas(&path, 2);
    let rows = settled_rows(&output, expected, &mut two).await;
    kill_all(&mut two);
    assert_eq!(rows, single, "1 → 3 → 2 replicas");

    let all = plans(&checkpoint);
    // Plan ids continue across the rescales: one sequence, no restart from 0.
    assert!(
        all.iter().enumerate().all(|(i, (id, _))| *id == i as u64),
        "{all:?}"
    );
    let parallelisms: Vec<u32> = all.iter().map(|(_, p)| *p).collect();
    let first_three = parallelisms.iter().position(|p| *p == 3).expect("3 ranges");
    let first_two = parallelisms.iter().position(|p| *p == 2).expect("2 ranges");
    // The 3-replica run wrote the plan after the 1-replica run's last, the 2-replica run later.
    assert_eq!(first_three as u64, before + 1, "{all:?}");
    assert!(first_two > first_three, "{all:?}");
    // The state moved: each new range started from a snapshot seeded at the plan before its
    // first one, from the old ranges' state (not from the input).
    for (range, first) in [("0-42", first_three), ("64-127", first_two)] {
        let task = 1_048_576
            + range
                .split('-')
                .next()
                .and_then(|s| s.parse::<u32>().ok())
                .expect("start");
        let seeded = checkpoint.join(format!(
            "stateful/ranges/{range}/tasks/{task}/state/{:020}.snapshot.arrow",
            first - 1
        ));
        assert!(seeded.is_file(), "{} is missing", seeded.display());
    }
}

#[tokio::test]
async fn exchange_objects_are_deleted_once_every_range_committed_past_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), 16);
    let single = one_task_result(dir.path(), WINDOWED, "exchange-gc-single").await;
    let text = manifest(
        "gc",
        dir.path(),
        WINDOWED,
        8,
        "memory: {name: exchange-gc}",
        "trigger: {availableNow: true}",
    )
    .replace(
        "checkpoint-gc\"}",
        "checkpoint-gc\", minBatchesToRetain: 1}",
    );
    assert!(text.contains("minBatchesToRetain: 1"), "{text}");
    assert_eq!(run_in_process(&text, "exchange-gc").await, single);
    // Source batches hold 16 files; with one plan retained, only what the newest plans read
    // can be left (each a directory of objects per source task and batch).
    let exchange = dir.path().join("checkpoint-gc/exchange");
    let left: usize = std::fs::read_dir(&exchange)
        .expect("exchange dir")
        .filter_map(|task| std::fs::read_dir(task.ok()?.path()).ok())
        .flat_map(|batches| batches.filter_map(|b| b.ok()))
        .filter(|batch| {
            std::fs::read_dir(batch.path()).is_ok_and(|mut objects| objects.next().is_some())
        })
        .count();
    assert!(
        left < 16,
        "{left} source batches still have exchange objects"
    );
}
