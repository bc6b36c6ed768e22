//! End-to-end tests of the local backend with real servers: checkpoints on S3 (SeaweedFS), the
//! autoscaler reading a real Prometheus that scrapes the workers through file-based service
//! discovery, real `sluice-worker` processes.
//!
//! Run by `e2e/local/run.sh` (after `cargo build -p sluice-worker`):
//! `cargo test -p sluice-operator --test local_e2e -- --ignored --test-threads=1 --nocapture`.
//! They are `#[ignore]`d so the workspace test step does not run them twice.
//!
//! The input is the file source: a producer moves JSON-lines files (each `ROWS_PER_FILE` rows
//! with unique ids) into the input folder at a controlled rate. Output is Parquet; every test
//! ends by checking that the output ids are exactly the produced ids, each once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use sluice_crds::StreamingQueryStatus;
use sluice_operator::backend::local::{LocalConfig, LocalOperator};
use sluice_operator::checkpoint::{CheckpointManager, StoreConfig};

const ROWS_PER_FILE: u64 = 50;

struct Servers {
    bucket: String,
    prometheus: String,
    sd_dir: PathBuf,
    worker_bin: PathBuf,
}

fn servers(test: &str) -> Option<Servers> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (
        var("SLUICE_TEST_S3_ENDPOINT"),
        var("SLUICE_TEST_PROMETHEUS"),
        var("SLUICE_PROMETHEUS_SD_DIR"),
        var("SLUICE_WORKER_BIN"),
    );
    match found {
        (Some(_), Some(prometheus), Some(sd), Some(bin)) => Some(Servers {
            bucket: var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|| "sluice-test".into()),
            prometheus,
            sd_dir: sd.into(),
            worker_bin: bin.into(),
        }),
        _ => {
            assert!(
                var("SLUICE_REQUIRE_SERVERS").as_deref() != Some("1"),
                "{test}: S3, Prometheus or SLUICE_WORKER_BIN missing but SLUICE_REQUIRE_SERVERS=1"
            );
            eprintln!(
                "SKIPPED {test}: needs SLUICE_TEST_S3_ENDPOINT, SLUICE_TEST_PROMETHEUS, \
                 SLUICE_PROMETHEUS_SD_DIR, SLUICE_WORKER_BIN (run e2e/local/run.sh)"
            );
            None
        }
    }
}

/// Moves files of `ROWS_PER_FILE` rows into `input` at `files_per_second` (changeable).
struct Producer {
    rate_milli: Arc<AtomicU64>,
    next_file: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Producer {
    fn start(input: &Path, staging: &Path, files_per_second: f64) -> Self {
        let rate_milli = Arc::new(AtomicU64::new((files_per_second * 1000.0) as u64));
        let next_file = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (input, staging) = (input.to_path_buf(), staging.to_path_buf());
        let (rate, next, halt) = (rate_milli.clone(), next_file.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut due = 0.0f64;
            let mut last = Instant::now();
            while !halt.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = Instant::now();
                due += now.duration_since(last).as_secs_f64() * rate.load(Ordering::SeqCst) as f64
                    / 1000.0;
                last = now;
                while due >= 1.0 {
                    due -= 1.0;
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let mut text = String::new();
                    for k in 0..ROWS_PER_FILE {
                        let id = n * ROWS_PER_FILE + k;
                        text.push_str(&format!("{{\"id\": {id}, \"v\": \"row-{id}\"}}\n"));
                    }
                    let name = format!("f-{n:08}.json");
                    let staged = staging.join(&name);
                    std::fs::write(&staged, text).expect("write input");
                    std::fs::rename(&staged, input.join(&name)).expect("move input");
                }
            }
            let _ = started;
        });
        Self {
            rate_milli,
            next_file,
            stop,
            handle: Some(handle),
        }
    }

    fn set_rate(&self, files_per_second: f64) {
        self.rate_milli
            .store((files_per_second * 1000.0) as u64, Ordering::SeqCst);
    }

    /// Stops producing; returns the number of rows produced.
    async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.await.expect("producer");
        }
        self.next_file.load(Ordering::SeqCst) * ROWS_PER_FILE
    }
}

/// The ids in every `part-*.parquet` under `dir`.
fn output_ids(dir: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("part-") && name.ends_with(".parquet")) {
                continue;
            }
            let bytes = bytes::Bytes::from(std::fs::read(&path).expect("read parquet"));
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .expect("parquet")
                    .build()
                    .expect("reader");
            for batch in reader {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("id").expect("id column");
                let column = column
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("id is int64");
                ids.extend((0..column.len()).map(|i| column.value(i)));
            }
        }
    }
    ids.sort_unstable();
    ids
}

/// Waits until the output holds `rows` rows (or `timeout`), then asserts each produced id
/// appears exactly once.
async fn assert_exactly_once(output: &Path, rows: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut ids = output_ids(output);
    while (ids.len() as u64) < rows && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids = output_ids(output);
    }
    let mut duplicates = 0;
    for pair in ids.windows(2) {
        if pair[0] == pair[1] {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 0, "duplicate output rows");
    let expected: Vec<i64> = (0..rows as i64).collect();
    assert_eq!(ids.len(), expected.len(), "output rows vs produced rows");
    assert!(ids == expected, "output ids differ from produced ids");
    println!(
        "exactly once: {rows} rows produced, {} rows out, no duplicates",
        ids.len()
    );
}

fn status(dir: &Path, name: &str) -> StreamingQueryStatus {
    std::fs::read_to_string(dir.join(format!("{name}.status.yaml")))
        .ok()
        .and_then(|text| serde_saphyr::from_str(&text).ok())
        .unwrap_or_default()
}

fn condition(status: &StreamingQueryStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls the status file until `check` holds; panics with the last status after `timeout`.
async fn wait_status(
    dir: &Path,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&StreamingQueryStatus) -> bool,
) -> StreamingQueryStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let current = status(dir, name);
        if check(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; status:\n{}",
            serde_saphyr::to_string(&current).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    manifests: PathBuf,
    input: PathBuf,
    staging: PathBuf,
    output: PathBuf,
    checkpoint: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    fn new(servers: &Servers, test: &str, configure: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        let input = dir.path().join("input");
        let staging = dir.path().join("staging");
        let output = dir.path().join("output");
        for d in [&manifests, &input, &staging, &output] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let checkpoint = format!(
            "s3://{}/local-e2e/{test}-{}",
            servers.bucket,
            uuid::Uuid::new_v4()
        );
        let mut config = LocalConfig::new(manifests.clone(), servers.worker_bin.clone());
        config.prometheus = Some(servers.prometheus.clone());
        config.sd_dir = Some(servers.sd_dir.clone());
        configure(&mut config);
        let operator = LocalOperator::new(config, CheckpointManager::new(StoreConfig::from_env()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(operator.run(async move {
            let _ = rx.await;
        }));
        Self {
            _dir: dir,
            manifests,
            input,
            staging,
            output,
            checkpoint,
            shutdown: Some(tx),
            operator: Some(handle),
        }
    }

    fn write(&self, name: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.join(format!("{name}.yaml"))).expect("rename");
    }

    fn pids(&self, name: &str) -> BTreeMap<u32, u32> {
        let dir = self.manifests.join(".sluice").join(name);
        let mut pids = BTreeMap::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            if let Some(replica) = file
                .strip_prefix("worker-")
                .and_then(|f| f.strip_suffix(".pid"))
                && let (Ok(replica), Ok(pid)) = (
                    replica.parse(),
                    std::fs::read_to_string(entry.path())
                        .unwrap_or_default()
                        .trim()
                        .parse(),
                )
            {
                pids.insert(replica, pid);
            }
        }
        pids
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(90), handle).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn manifest(
    fixture: &Fixture,
    name: &str,
    sql: &str,
    partitions: u32,
    trigger: &str,
    extra: &str,
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
        - {{name: id, type: long}}
        - {{name: v, type: string}}
  sql: "{sql}"
  sink:
    file: {{path: "{output}", format: parquet}}
  trigger: {{processingTime: "{trigger}"}}
  checkpoint: {{location: "{checkpoint}"}}
{extra}"#,
        input = fixture.input.display(),
        output = fixture.output.display(),
        checkpoint = fixture.checkpoint,
    )
}

/// (a) + (d): a load step makes the operator scale up within 2 minutes, the backlog drains; when
/// the load drops it scales back down after the scale-down window; output exactly once; the
/// measured rescale downtime is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn autoscaler_follows_a_load_step() {
    let Some(servers) = servers("autoscaler_follows_a_load_step") else {
        return;
    };
    let fixture = Fixture::new(&servers, "autoscale", |c| {
        c.metrics_window = Duration::from_secs(6);
    });
    // One replica: 8 tasks, 4 ms per row => 250 rows/s = 5 files/s; the trigger caps the whole
    // query at 8 files/s (one file per task per second).
    let extra = r#"  env: [{name: SLUICE_ROW_COST_MICROS, value: "4000"}]
  parallelism:
    replicas: 1
    autoscale:
      enabled: true
      minReplicas: 1
      maxReplicas: 4
      targetUtilization: 0.7
      catchUpDuration: 30s
      scaleUpStabilization: 4s
      scaleDownWindow: 20s
      cooldown: 10s
"#;
    let name = "loadstep";
    fixture.write(
        name,
        &manifest(&fixture, name, "SELECT id, v FROM events", 8, "1s", extra),
    );
    let producer = Producer::start(&fixture.input, &fixture.staging, 2.0);
    wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "Running",
        |s| s.phase == Some(sluice_crds::Phase::Running),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = status(&fixture.manifests, name);
    assert!(
        before.scaling_history.is_empty(),
        "scaled under a load that fits: {:?}",
        before.scaling_history
    );

    // Step up: 6 files/s = 300 rows/s > 250 rows/s of one replica.
    producer.set_rate(6.0);
    let step = Instant::now();
    let scaled = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(120),
        "a scale-up",
        |s| {
            s.scaling_history
                .iter()
                .any(|d| d.applied && d.to_replicas > d.from_replicas)
        },
    )
    .await;
    let up = scaled
        .scaling_history
        .iter()
        .find(|d| d.to_replicas > d.from_replicas)
        .cloned()
        .expect("scale-up decision");
    println!(
        "scaled up {} -> {} after {:.1} s: input {:.1} rows/s, processed {:.1} rows/s, busy {:.2}, backlog {:.0} rows, TPR {:.1} rows/s",
        up.from_replicas,
        up.to_replicas,
        step.elapsed().as_secs_f64(),
        up.input_rate,
        up.processed_rate,
        up.busy_ratio,
        up.backlog,
        up.true_processing_rate
    );
    assert!(up.to_replicas >= 2);
    let running = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "the new replicas Running with a measured downtime",
        |s| {
            s.phase == Some(sluice_crds::Phase::Running)
                && s.replicas == Some(i32::try_from(up.to_replicas).unwrap_or(0))
                && s.last_rescale_downtime_seconds.is_some()
        },
    )
    .await;
    let downtime = running.last_rescale_downtime_seconds.unwrap_or(f64::NAN);
    println!(
        "RESCALE DOWNTIME (last commit of old generation -> first commit of new): {downtime:.3} s"
    );
    // Backlog drains: lag (unread files) goes back to a few files.
    wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(90),
        "the backlog to drain",
        |s| s.lag.is_some_and(|lag| lag <= 8),
    )
    .await;
    println!(
        "backlog drained {:.1} s after the step",
        step.elapsed().as_secs_f64()
    );

    // Step down: 1 file/s fits one replica; after the cool-down and the scale-down window.
    producer.set_rate(1.0);
    let drop = Instant::now();
    let down = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(120),
        "a scale-down",
        |s| {
            s.scaling_history
                .iter()
                .any(|d| d.applied && d.to_replicas < d.from_replicas)
        },
    )
    .await;
    println!(
        "scaled down after {:.1} s (window 20 s, cool-down 10 s): {:?}",
        drop.elapsed().as_secs_f64(),
        down.scaling_history.last()
    );
    assert!(
        drop.elapsed() >= Duration::from_secs(15),
        "scaled down before the window"
    );
    let rows = producer.finish().await;
    assert_exactly_once(&fixture.output, rows, Duration::from_secs(90)).await;
    let last = status(&fixture.manifests, name);
    println!(
        "final: replicas {:?}, downtime {:?} s, history {}",
        last.replicas,
        last.last_rescale_downtime_seconds,
        last.scaling_history.len()
    );
    fixture.shutdown().await;
}

/// (b): a compatible SQL change carries offsets over (no loss, no duplicate); an invalid SQL and
/// a partition change the checkpoint cannot take are refused while the old generation keeps
/// running; a broken worker command is rolled back to the last stable spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn upgrades_are_guarded_and_rolled_back() {
    let Some(servers) = servers("upgrades_are_guarded_and_rolled_back") else {
        return;
    };
    let fixture = Fixture::new(&servers, "upgrade", |c| {
        c.ready_timeout = Duration::from_secs(8);
    });
    let name = "upgrade";
    let v1 = manifest(&fixture, name, "SELECT id, v FROM events", 2, "500ms", "");
    fixture.write(name, &v1);
    let producer = Producer::start(&fixture.input, &fixture.staging, 4.0);
    let first = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "Running",
        |s| s.phase == Some(sluice_crds::Phase::Running) && s.last_committed_batch_id.is_some(),
    )
    .await;
    let generation = first.generation.unwrap_or(0);

    // Compatible change: a new column; lastState keeps offsets, so ids continue.
    let v2 = manifest(
        &fixture,
        name,
        "SELECT id, v, 'v2' AS version FROM events",
        2,
        "500ms",
        "",
    );
    fixture.write(name, &v2);
    let upgraded = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "generation +1 Running",
        |s| s.generation == Some(generation + 1) && s.phase == Some(sluice_crds::Phase::Running),
    )
    .await;
    println!(
        "compatible upgrade: generation {generation} -> {:?}, downtime {:?} s",
        upgraded.generation, upgraded.last_rescale_downtime_seconds
    );

    // Invalid SQL: refused before anything stops.
    let before = output_ids(&fixture.output).len();
    fixture.write(
        name,
        &manifest(&fixture, name, "SELECT nope FROM events", 2, "500ms", ""),
    );
    let refused = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(30),
        "UpgradeRefused",
        |s| {
            condition(s, "Degraded")
                .is_some_and(|(st, reason, _)| st == "True" && reason == "UpgradeRefused")
        },
    )
    .await;
    println!("refused: {:?}", condition(&refused, "Degraded"));
    assert_eq!(
        refused.generation,
        Some(generation + 1),
        "a refused spec must not roll out"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        output_ids(&fixture.output).len() > before,
        "the old generation stopped producing output after a refused upgrade"
    );

    // Partition count change: refused against the checkpoint's metadata.
    fixture.write(
        name,
        &manifest(&fixture, name, "SELECT id, v FROM events", 4, "500ms", ""),
    );
    let refused = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(30),
        "partition change refused",
        |s| {
            condition(s, "Degraded").is_some_and(|(_, reason, m)| {
                reason == "UpgradeRefused" && m.contains("partitions")
            })
        },
    )
    .await;
    assert_eq!(refused.generation, Some(generation + 1));

    // Broken command: the new generation's workers exit at once => rolled back.
    let broken = v2.replace("spec:\n", "spec:\n  image: /bin/false\n");
    fixture.write(name, &broken);
    let rolled = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "rollback",
        |s| {
            condition(s, "Degraded").is_some_and(|(_, reason, m)| {
                reason == "SpecRejected" && m.contains("rolling back")
            }) && s.phase == Some(sluice_crds::Phase::Running)
        },
    )
    .await;
    println!(
        "rolled back: generation {:?}, {:?}",
        rolled.generation,
        condition(&rolled, "Degraded")
    );
    assert!(rolled.generation > Some(generation + 1));
    let before = output_ids(&fixture.output).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        output_ids(&fixture.output).len() > before,
        "no output after the rollback"
    );

    let rows = producer.finish().await;
    assert_exactly_once(&fixture.output, rows, Duration::from_secs(60)).await;
    fixture.shutdown().await;
}

/// (c): kill -9 a worker every few seconds; the operator restarts it, output stays exactly once
/// and the status counts the restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn killed_workers_are_restarted_exactly_once() {
    let Some(servers) = servers("killed_workers_are_restarted_exactly_once") else {
        return;
    };
    let fixture = Fixture::new(&servers, "recovery", |_| {});
    let name = "recovery";
    fixture.write(
        name,
        &manifest(
            &fixture,
            name,
            "SELECT id, v FROM events",
            4,
            "300ms",
            "  parallelism: {replicas: 2}\n",
        ),
    );
    let producer = Producer::start(&fixture.input, &fixture.staging, 5.0);
    wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "Running",
        |s| s.phase == Some(sluice_crds::Phase::Running) && s.last_committed_batch_id.is_some(),
    )
    .await;
    let kills = 8u32;
    let started = Instant::now();
    for round in 0..kills {
        let pids = fixture.pids(name);
        let replica = round % 2;
        let pid = *pids.get(&replica).expect("pid file");
        let killed = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {pid}");
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    println!(
        "killed {kills} workers in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let recovered = wait_status(
        &fixture.manifests,
        name,
        Duration::from_secs(60),
        "restarts counted and Running",
        |s| {
            s.restarts.unwrap_or(0) >= i64::from(kills)
                && s.phase == Some(sluice_crds::Phase::Running)
        },
    )
    .await;
    println!("status.restarts = {:?}", recovered.restarts);
    let rows = producer.finish().await;
    assert_exactly_once(&fixture.output, rows, Duration::from_secs(60)).await;
    fixture.shutdown().await;
}
