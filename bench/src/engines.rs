//! The benchmark scenarios as each engine runs them: Sluice manifests for `sluice-worker run`, and
//! command lines for `bench/spark/spark_bench.py`, plus parsing of what each prints per trigger.
//!
//! The queries are the same on both sides:
//! 1. `filter`: JSON files → `WHERE danger_level = 'HIGH'` → Parquet, `availableNow`;
//! 2. `window`: JSON files → 1-minute tumbling windows per device, `avg(temperature)` and
//!    `count(*)`, watermark 10 minutes → Parquet, append mode, `availableNow`;
//! 3. `rate`: rate source → `GROUP BY value % 10` with `count` and `max`, per micro-batch (Sluice
//!    `sqlScope: microBatch`, Spark `foreachBatch`), default trigger;
//! 4. `startup`: the filter query over one small file with the default trigger: time from process
//!    start to the first committed batch, then resident memory while idle.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One committed trigger as the engine reported it, and when the runner saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Since the process was spawned.
    pub at: Duration,
    pub input_rows: u64,
    /// The trigger's own duration, ms.
    pub duration_ms: u64,
}

/// Sluice's progress line: `batch 12 | 600000 rows | ... | 400 ms`.
pub fn parse_sluice_trigger(at: Duration, text: &str) -> Option<Trigger> {
    let rest = text.strip_prefix("batch ")?;
    let fields: Vec<&str> = rest.split(" | ").collect();
    let input_rows = fields.get(1)?.strip_suffix(" rows")?.parse().ok()?;
    let duration_ms = fields.get(4)?.strip_suffix(" ms")?.parse().ok()?;
    Some(Trigger {
        at,
        input_rows,
        duration_ms,
    })
}

/// The worker's last line: `query stopped: N batches, X input rows, Y rows written to ...`:
/// `(input rows, output rows)`.
pub fn parse_sluice_summary(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("query stopped: ")?;
    let mut parts = rest.split(", ");
    parts.next()?;
    let input = parts.next()?.strip_suffix(" input rows")?.parse().ok()?;
    let output = parts.next()?.split(' ').next()?.parse().ok()?;
    Some((input, output))
}

/// The Spark driver's `PROGRESS rows=<n> ms=<d> batch=<id>` line.
pub fn parse_spark_trigger(at: Duration, text: &str) -> Option<Trigger> {
    let rest = text.strip_prefix("PROGRESS ")?;
    let mut input_rows = None;
    let mut duration_ms = None;
    for field in rest.split(' ') {
        if let Some(v) = field.strip_prefix("rows=") {
            input_rows = v.parse().ok();
        } else if let Some(v) = field.strip_prefix("ms=") {
            duration_ms = v.parse().ok();
        }
    }
    Some(Trigger {
        at,
        input_rows: input_rows?,
        duration_ms: duration_ms?,
    })
}

/// The Spark driver's `DONE rows=<n> seconds=<s>`: seconds from query start to termination.
pub fn parse_spark_done(text: &str) -> Option<f64> {
    let rest = text.strip_prefix("DONE ")?;
    rest.split(' ')
        .find_map(|f| f.strip_prefix("seconds="))
        .and_then(|s| s.parse().ok())
}

const IOT_SCHEMA: &str = "      schema:
        - {name: deviceId, type: string}
        - {name: temperature, type: double}
        - {name: danger_level, type: string}
        - {name: timestamp, type: timestamp}
";

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// Scenario 1 for Sluice: the `iot-alerts-local` example with the paths given; with
/// `available_now` false, the default trigger (the worker keeps running when idle).
pub fn filter_manifest(
    input: &Path,
    output: &Path,
    checkpoint: &Path,
    partitions: u32,
    max_files_per_trigger: u32,
    available_now: bool,
) -> String {
    let trigger = if available_now {
        "{availableNow: true}"
    } else {
        "{}"
    };
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata:
  name: bench-filter
spec:
  sources:
    - name: events
      file: {{path: {input}, format: json, maxFilesPerTrigger: {max_files_per_trigger}, partitions: {partitions}}}
{IOT_SCHEMA}  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink:
    file: {{path: {output}, format: parquet}}
  outputMode: append
  trigger: {trigger}
  checkpoint: {{location: {checkpoint}}}
",
        input = quoted(input),
        output = quoted(output),
        checkpoint = quoted(checkpoint),
    )
}

/// Scenario 2 for Sluice: tumbling 1-minute windows per device with a 10-minute watermark (the SQL
/// of docs/architecture.md). One task (`partitions: 1`): a streaming aggregation keeps its state
/// per task, and a file source cannot route a device's rows to one task, so Sluice refuses more
/// (README, "Stateful streaming"); Spark shuffles by key instead and uses both cores.
pub fn window_manifest(
    input: &Path,
    output: &Path,
    checkpoint: &Path,
    max_files_per_trigger: u32,
) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata:
  name: bench-window
spec:
  sources:
    - name: events
      file: {{path: {input}, format: json, maxFilesPerTrigger: {max_files_per_trigger}, partitions: 1}}
{IOT_SCHEMA}      watermark: {{column: timestamp, delay: 10 minutes}}
  sql: |
    SELECT window(\"timestamp\", '1 minute') AS window, deviceId, avg(temperature) AS avg_temp, count(*) AS n
    FROM events
    GROUP BY window(\"timestamp\", '1 minute'), deviceId
  sink:
    file: {{path: {output}, format: parquet}}
  outputMode: append
  trigger: {{availableNow: true}}
  checkpoint: {{location: {checkpoint}}}
",
        input = quoted(input),
        output = quoted(output),
        checkpoint = quoted(checkpoint),
    )
}

/// Scenario 3 for Sluice: rate source → per-batch `GROUP BY value % 10` (`sqlScope: microBatch`,
/// as Spark's `foreachBatch`), into a memory sink (10 rows per task and batch).
pub fn rate_manifest(rows_per_second: u64, partitions: u32, checkpoint: &Path) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata:
  name: bench-rate
spec:
  sources:
    - name: rate
      rate: {{rowsPerSecond: {rows_per_second}, partitions: {partitions}}}
  sql: SELECT value % 10 AS k, count(*) AS n, max(value) AS max_value FROM rate GROUP BY value % 10
  sqlScope: microBatch
  sink:
    memory: {{name: bench}}
  outputMode: append
  checkpoint: {{location: {checkpoint}}}
",
        checkpoint = quoted(checkpoint),
    )
}

/// Scenario 4 for Sluice: the filter query with the default trigger (keeps polling when idle).
pub fn startup_manifest(input: &Path, output: &Path, checkpoint: &Path) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata:
  name: bench-startup
spec:
  sources:
    - name: events
      file: {{path: {input}, format: json, partitions: 1}}
{IOT_SCHEMA}  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink:
    file: {{path: {output}, format: parquet}}
  outputMode: append
  checkpoint: {{location: {checkpoint}}}
",
        input = quoted(input),
        output = quoted(output),
        checkpoint = quoted(checkpoint),
    )
}

/// `sluice-worker run <manifest>`.
pub fn sluice_command(worker: &Path, manifest: &Path) -> Command {
    let mut command = Command::new(worker);
    command
        .arg("run")
        .arg(manifest)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE");
    command
}

/// `python spark_bench.py <scenario> <args>` with Spark bound to the loopback interface.
pub fn spark_command(python: &Path, script: &Path, scenario: &str, args: &[String]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(scenario)
        .args(args)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", python);
    command
}

/// A finished `sluice-worker run`.
#[derive(Debug, Clone)]
pub struct SluiceRun {
    pub outcome: crate::measure::Outcome,
    pub triggers: Vec<Trigger>,
    /// `(input rows, output rows)` from the worker's last line.
    pub summary: Option<(u64, u64)>,
    /// Phase times, when asked for.
    pub phases: Option<Phases>,
}

impl SluiceRun {
    /// Why the run did not finish cleanly, from its last lines; `None` when it did.
    pub fn failure(&self) -> Option<String> {
        if self.outcome.exit_code == Some(0) && self.summary.is_some() {
            return None;
        }
        Some(
            self.outcome
                .lines
                .iter()
                .rev()
                .find(|l| l.text.contains("error"))
                .map(|l| l.text.clone())
                .unwrap_or_else(|| self.outcome.tail(3)),
        )
    }
}

/// Runs `manifest` (YAML text, written to `work/manifest.yaml`) with `sluice-worker run` until it
/// stops by itself or `watch` says otherwise. With `phases`, the worker serves `/progress` on a free
/// loopback port and the phase times of every batch are collected from it.
///
/// # Errors
/// Writing the manifest or spawning the worker failed.
pub fn run_sluice(
    worker: &Path,
    work: &Path,
    manifest: &str,
    phases: bool,
    mut watch: impl FnMut(&crate::measure::Probe<'_>, &[Trigger]) -> crate::measure::Action,
) -> std::io::Result<SluiceRun> {
    std::fs::create_dir_all(work)?;
    let path = work.join("manifest.yaml");
    std::fs::write(&path, manifest)?;
    let mut command = sluice_command(worker, &path);
    if phases {
        command.args(["--http", "127.0.0.1:0"]);
    }
    let mut triggers = Vec::new();
    let mut summary = None;
    let mut http: Option<String> = None;
    let mut collector = PhaseCollector::default();
    let outcome = crate::measure::run(&mut command, |probe| {
        if let Some(line) = probe.line {
            if let Some(trigger) = parse_sluice_trigger(line.at, &line.text) {
                triggers.push(trigger);
                if let Some(addr) = &http
                    && let Ok(body) = http_get(addr, "/progress")
                {
                    collector.add(&body);
                }
            } else if let Some(found) = parse_sluice_summary(&line.text) {
                summary = Some(found);
            } else if let Some(addr) = line.text.rsplit_once(" on http://").map(|(_, a)| a) {
                http = Some(addr.trim().to_string());
            }
        }
        watch(probe, &triggers)
    })?;
    Ok(SluiceRun {
        outcome,
        triggers,
        summary,
        phases: phases.then_some(collector.phases),
    })
}

/// `GET http://<addr><path>`: the response body (HTTP/1.1, `Connection: close`).
///
/// # Errors
/// Connection or read errors, or a response without a header/body separator.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .ok_or_else(|| std::io::Error::other("no HTTP body"))
}

/// Time spent in each phase of Sluice's triggers, summed over tasks and batches (ms), from the
/// per-task `durationMs` of `/progress` (docs/architecture.md): read+decode, SQL, sink, checkpoint.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phases {
    pub batches: u64,
    pub wal_commit: u64,
    pub get_batch: u64,
    pub query_planning_and_execution: u64,
    pub add_batch: u64,
    pub commit: u64,
}

/// Collects [`Phases`] from `/progress` responses, counting each (task, batch id) once.
#[derive(Debug, Default)]
pub struct PhaseCollector {
    seen: std::collections::HashSet<(u64, u64)>,
    pub phases: Phases,
}

impl PhaseCollector {
    /// Adds the tasks of every progress in a `/progress` body not seen before.
    pub fn add(&mut self, body: &str) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
            return;
        };
        let Some(recent) = value["recent"].as_array() else {
            return;
        };
        for progress in recent {
            for task in progress["tasks"].as_array().into_iter().flatten() {
                let key = (
                    task["task"].as_u64().unwrap_or(0),
                    task["batchId"].as_u64().unwrap_or(0),
                );
                if !self.seen.insert(key) {
                    continue;
                }
                let d = &task["durationMs"];
                let ms = |name: &str| d[name].as_u64().unwrap_or(0);
                self.phases.batches += 1;
                self.phases.wal_commit += ms("walCommit");
                self.phases.get_batch += ms("getBatch");
                self.phases.query_planning_and_execution += ms("queryPlanningAndExecution");
                self.phases.add_batch += ms("addBatch");
                self.phases.commit += ms("commit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_progress_lines_of_both_engines() {
        let at = Duration::from_millis(5);
        assert_eq!(
            parse_sluice_trigger(
                at,
                "batch 3 | 2000000 rows | 1.2M rows/s in | 3.00M rows/s processed | 660 ms | backlog 4"
            ),
            Some(Trigger {
                at,
                input_rows: 2_000_000,
                duration_ms: 660
            })
        );
        assert_eq!(parse_sluice_trigger(at, "batchy"), None);
        assert_eq!(
            parse_sluice_summary(
                "query stopped: 5 batches, 10000000 input rows, 2222222 rows written to file out (parquet)"
            ),
            Some((10_000_000, 2_222_222))
        );
        assert_eq!(
            parse_spark_trigger(at, "PROGRESS rows=87 ms=5621 batch=0"),
            Some(Trigger {
                at,
                input_rows: 87,
                duration_ms: 5621
            })
        );
        assert_eq!(
            parse_spark_done("DONE rows=8734 seconds=6.697"),
            Some(6.697)
        );
    }

    #[test]
    fn phases_count_each_task_batch_once() {
        let body = r#"{"recent":[{"tasks":[
            {"task":0,"batchId":0,"durationMs":{"walCommit":1,"getBatch":100,"queryPlanningAndExecution":10,"addBatch":20,"commit":2}},
            {"task":1,"batchId":0,"durationMs":{"walCommit":1,"getBatch":50,"queryPlanningAndExecution":5,"addBatch":10,"commit":2}}]}]}"#;
        let mut collector = PhaseCollector::default();
        collector.add(body);
        collector.add(body);
        assert_eq!(
            collector.phases,
            Phases {
                batches: 2,
                wal_commit: 2,
                get_batch: 150,
                query_planning_and_execution: 15,
                add_batch: 30,
                commit: 4
            }
        );
    }

    #[test]
    fn manifests_name_their_paths_quoted() {
        let text = filter_manifest(
            Path::new("/d/in"),
            Path::new("/d/o'ut"),
            Path::new("/d/ck"),
            2,
            1,
            true,
        );
        assert!(text.contains("path: '/d/in', format: json, maxFilesPerTrigger: 1, partitions: 2"));
        assert!(text.contains("path: '/d/o''ut'"));
    }

    /// The worker's own `check` (what a start would refuse: spec rules, SQL, the stateful
    /// partitioning rule), so a benchmark never measures a refused query.
    #[tokio::test]
    async fn every_manifest_is_a_query_the_worker_accepts() {
        let dir = Path::new("/tmp/x");
        for text in [
            filter_manifest(dir, dir, dir, 2, 2, true),
            filter_manifest(dir, dir, dir, 2, 2, false),
            window_manifest(dir, dir, dir, 2),
            rate_manifest(1_000_000, 2, dir),
            startup_manifest(dir, dir, dir),
        ] {
            let query =
                sluice_crds::parse_manifest(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            sluice_worker::check::check(&query, None)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
    }
}
