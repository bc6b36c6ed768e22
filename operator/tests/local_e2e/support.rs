//! The local e2e's fixtures: the real servers, an operator on a temporary manifests folder,
//! manifests, producers (files and Kafka), the output readers and one polling helper that every
//! wait goes through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_crds::{Phase, StreamingQueryStatus};
use sluice_operator::backend::local::LocalConfig;
use sluice_operator::checkpoint::{CheckpointManager, StoreConfig};
use sluice_operator::local_operator::LocalOperator;

/// Rows per input file of the [`FileProducer`].
pub const ROWS_PER_FILE: u64 = 50;

/// How often every wait looks again.
const POLL: Duration = Duration::from_millis(500);

/// The servers and the worker binary the tests need (from `e2e/servers/start.sh`'s `env.sh` and
/// `e2e/local/run.sh`).
struct Servers {
    bucket: String,
    prometheus: String,
    sd_dir: PathBuf,
    worker_bin: PathBuf,
    kafka: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn require_servers() -> bool {
    var("SLUICE_REQUIRE_SERVERS").as_deref() == Some("1")
}

/// The servers, or `None` after a loud `SKIPPED` line (a panic under `SLUICE_REQUIRE_SERVERS=1`).
fn servers(test: &str) -> Option<Servers> {
    match (
        var("SLUICE_TEST_S3_ENDPOINT"),
        var("SLUICE_TEST_PROMETHEUS"),
        var("SLUICE_PROMETHEUS_SD_DIR"),
        var("SLUICE_WORKER_BIN"),
    ) {
        (Some(_), Some(prometheus), Some(sd), Some(bin)) => Some(Servers {
            bucket: var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|| "sluice-test".into()),
            prometheus,
            sd_dir: sd.into(),
            worker_bin: bin.into(),
            kafka: var("SLUICE_TEST_KAFKA"),
        }),
        _ => {
            assert!(
                !require_servers(),
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

/// Polls `probe` every [`POLL`] until it returns `Some`; after `timeout` panics with `what` and
/// the last description `probe` gave of what it saw. Every wait of these tests is this loop.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match probe() {
            Ok(found) => return found,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen:\n{seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An operator (`sluice-operator local`, in process) on a temporary manifests folder, plus
/// folders for inputs and outputs and a fresh S3 checkpoint prefix.
pub struct Fixture {
    test: String,
    kafka: Option<String>,
    dir: tempfile::TempDir,
    pub manifests: PathBuf,
    checkpoint_base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    /// The fixture of `test` (the name in `SKIPPED` lines and checkpoint prefixes), or `None`
    /// when the servers are missing; `configure` adjusts the operator's settings.
    pub fn start(test: &str, configure: impl FnOnce(&mut LocalConfig)) -> Option<Self> {
        servers(test).map(|servers| Self::new(&servers, test, configure))
    }

    fn new(servers: &Servers, test: &str, configure: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let checkpoint_base = format!(
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
            test: test.to_string(),
            kafka: servers.kafka.clone(),
            dir,
            manifests,
            checkpoint_base,
            shutdown: Some(tx),
            operator: Some(handle),
        }
    }

    /// The Kafka bootstrap address, or `None` after a loud `SKIPPED` line (a panic under
    /// `SLUICE_REQUIRE_SERVERS=1`).
    pub fn kafka(&self) -> Option<String> {
        if self.kafka.is_none() {
            assert!(
                !require_servers(),
                "{}: SLUICE_TEST_KAFKA missing but SLUICE_REQUIRE_SERVERS=1",
                self.test
            );
            eprintln!(
                "SKIPPED {}: needs SLUICE_TEST_KAFKA (run e2e/local/run.sh)",
                self.test
            );
        }
        self.kafka.clone()
    }

    /// A fresh folder `name` inside the fixture's temporary directory.
    pub fn folder(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// `input`, `staging` and `output` folders (the common layout of a one-query test).
    pub fn folders(&self) -> Folders {
        Folders {
            input: self.folder("input"),
            staging: self.folder("staging"),
            output: self.folder("output"),
        }
    }

    /// Query `name` of this fixture, with its own checkpoint location on S3.
    pub fn query(&self, name: &str) -> Query<'_> {
        Query {
            manifests: &self.manifests,
            name: name.to_string(),
            checkpoint: format!("{}/{name}", self.checkpoint_base),
        }
    }

    /// Every file under the fixture's folder (manifests, status and events files, the resolved
    /// queries and worker logs under `.sluice/`, inputs and outputs) whose bytes contain
    /// `needle`: where a secret must never be written.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, needle: &[u8], found: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, needle, found);
                } else if std::fs::read(&path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(self.dir.path(), needle.as_bytes(), &mut found);
        found
    }

    /// Stops the operator, which stops every worker at a batch boundary.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(90), handle).await;
        }
    }
}

/// Where a one-query test's files go: `staging` is where input files are written before they
/// are moved into `input`.
pub struct Folders {
    pub input: PathBuf,
    pub staging: PathBuf,
    pub output: PathBuf,
}

/// One StreamingQuery of a fixture: its manifest file and its `<name>.status.yaml`.
pub struct Query<'a> {
    manifests: &'a Path,
    pub name: String,
    checkpoint: String,
}

impl Query<'_> {
    /// The manifest of `spec` for this query (its name, its checkpoint).
    pub fn manifest(&self, spec: &Spec<'_>) -> String {
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
{source}
  sql: "{sql}"
  sink:
    file: {{path: "{output}", format: parquet{overwrite}}}
  trigger: {{processingTime: "{trigger}"}}
  checkpoint: {{location: "{checkpoint}"}}
{extra}"#,
            name = self.name,
            source = spec.source.trim_end(),
            sql = spec.sql,
            output = spec.output.display(),
            trigger = spec.trigger,
            checkpoint = self.checkpoint,
            extra = spec.extra,
            // The file sink takes `complete` only when it replaces its output each batch.
            overwrite = if spec.extra.contains("outputMode: complete") {
                ", overwrite: partitions"
            } else {
                ""
            },
        )
    }

    /// Writes the manifest of `spec`.
    pub fn apply_spec(&self, spec: &Spec<'_>) {
        self.apply(&self.manifest(spec));
    }

    /// Writes (or replaces) the manifest, atomically as an editor's save would.
    pub fn apply(&self, yaml: &str) {
        let tmp = self.manifests.join(format!(".{}.tmp", self.name));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.join(format!("{}.yaml", self.name))).expect("rename");
    }

    /// The status file as the operator last wrote it (default when absent or half-read).
    pub fn status(&self) -> StreamingQueryStatus {
        std::fs::read_to_string(self.manifests.join(format!("{}.status.yaml", self.name)))
            .ok()
            .and_then(|text| serde_saphyr::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Waits until the status satisfies `check`.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&StreamingQueryStatus) -> bool,
    ) -> StreamingQueryStatus {
        wait_for(&format!("{}: {what}", self.name), timeout, || {
            let status = self.status();
            if check(&status) {
                Ok(status)
            } else {
                Err(serde_saphyr::to_string(&status).unwrap_or_default())
            }
        })
        .await
    }

    /// Waits until the query runs and has committed a batch.
    pub async fn wait_running(&self, timeout: Duration) -> StreamingQueryStatus {
        self.wait("Running with a committed batch", timeout, |s| {
            is_running(s) && s.last_committed_batch_id.is_some()
        })
        .await
    }

    /// Waits until deployment generation `generation` is Running.
    pub async fn wait_generation(
        &self,
        generation: i64,
        timeout: Duration,
    ) -> StreamingQueryStatus {
        self.wait(&format!("generation {generation} Running"), timeout, |s| {
            s.generation == Some(generation) && is_running(s)
        })
        .await
    }

    /// Waits until condition `type_` is `status` with `reason` and a message containing `text`.
    pub async fn wait_condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        text: &str,
        timeout: Duration,
    ) -> StreamingQueryStatus {
        let what = format!("{type_}={status} ({reason}) with a message containing {text:?}");
        self.wait(&what, timeout, |s| {
            condition(s, type_)
                .is_some_and(|(st, r, m)| st == status && r == reason && m.contains(text))
        })
        .await
    }

    /// Worker pid per replica, from the operator's `.sluice/<name>/worker-<i>.pid` files.
    pub fn pids(&self) -> BTreeMap<u32, u32> {
        let dir = self.manifests.join(".sluice").join(&self.name);
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
}

pub fn is_running(status: &StreamingQueryStatus) -> bool {
    status.phase == Some(Phase::Running)
}

/// `(status, reason, message)` of condition `type_`.
pub fn condition(status: &StreamingQueryStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// What varies between the tests' queries; `extra` holds further `spec` lines (two-space
/// indented). The sink is always Parquet files under `output`.
pub struct Spec<'a> {
    /// The `- name: events ...` entry of `spec.sources`, indented by four spaces.
    pub source: String,
    pub sql: &'a str,
    pub output: &'a Path,
    pub trigger: &'a str,
    pub extra: String,
}

/// A file source `events` of JSON lines (one file per task per batch) with `columns` as
/// `(name, type)`.
pub fn file_source(input: &Path, partitions: u32, columns: &[(&str, &str)]) -> String {
    format!(
        "    - name: events\n      file: {{path: \"{}\", format: json, maxFilesPerTrigger: 1, partitions: {partitions}}}\n      schema:\n{}",
        input.display(),
        schema_lines(columns)
    )
}

/// A Kafka source `events` of JSON records on `topic`, partitioned by `partition_key`.
pub fn kafka_source(
    bootstrap: &str,
    topic: &str,
    max_offsets: u32,
    partition_key: &str,
    columns: &[(&str, &str)],
) -> String {
    format!(
        "    - name: events\n      kafka: {{bootstrapServers: \"{bootstrap}\", topic: {topic}, format: json, maxOffsetsPerTrigger: {max_offsets}}}\n      partitionKey: {partition_key}\n      schema:\n{}",
        schema_lines(columns)
    )
}

fn schema_lines(columns: &[(&str, &str)]) -> String {
    columns
        .iter()
        .map(|(name, type_)| format!("        - {{name: {name}, type: {type_}}}\n"))
        .collect()
}

/// Writes `lines` as file `name` into `input` through `staging` (write, then rename), so the
/// source never lists a half-written file.
pub fn drop_file(input: &Path, staging: &Path, name: &str, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    let staged = staging.join(name);
    std::fs::write(&staged, text).expect("write input");
    std::fs::rename(&staged, input.join(name)).expect("move input");
}

/// Runs a background loop at a changeable rate (`units` per second); `emit(n)` makes unit `n`.
/// The unit count is exact: `finish` returns how many units were emitted.
pub struct RateLoop {
    rate_milli: Arc<AtomicU64>,
    emitted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl RateLoop {
    /// `emit` gets the numbers of the units due in one 50 ms tick.
    pub fn start<F, Fut>(per_second: f64, emit: F) -> Self
    where
        F: Fn(std::ops::Range<u64>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let rate_milli = Arc::new(AtomicU64::new((per_second * 1000.0) as u64));
        let emitted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rate, count, halt) = (rate_milli.clone(), emitted.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let mut due = 0.0f64;
            let mut last = Instant::now();
            while !halt.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = Instant::now();
                due += now.duration_since(last).as_secs_f64() * rate.load(Ordering::SeqCst) as f64
                    / 1000.0;
                last = now;
                let whole = due.floor();
                due -= whole;
                let from = count.load(Ordering::SeqCst);
                let until = from + whole as u64;
                if until > from {
                    emit(from..until).await;
                    count.store(until, Ordering::SeqCst);
                }
            }
        });
        Self {
            rate_milli,
            emitted,
            stop,
            handle: Some(handle),
        }
    }

    pub fn set_rate(&self, per_second: f64) {
        self.rate_milli
            .store((per_second * 1000.0) as u64, Ordering::SeqCst);
    }

    /// Stops; returns the number of units emitted.
    pub async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.await.expect("producer loop");
        }
        self.emitted.load(Ordering::SeqCst)
    }
}

/// Moves files of [`ROWS_PER_FILE`] rows `{"id": n, "v": "row-n"}` (ids 0, 1, 2, ... with no
/// gap) into `input` at a changeable number of files per second.
pub struct FileProducer(RateLoop);

impl FileProducer {
    pub fn start(input: &Path, staging: &Path, files_per_second: f64) -> Self {
        let (input, staging) = (input.to_path_buf(), staging.to_path_buf());
        Self(RateLoop::start(files_per_second, move |files| {
            for n in files {
                let lines: Vec<String> = (n * ROWS_PER_FILE..(n + 1) * ROWS_PER_FILE)
                    .map(|id| format!("{{\"id\": {id}, \"v\": \"row-{id}\"}}"))
                    .collect();
                drop_file(&input, &staging, &format!("f-{n:08}.json"), &lines);
            }
            std::future::ready(())
        }))
    }

    pub fn set_rate(&self, files_per_second: f64) {
        self.0.set_rate(files_per_second);
    }

    /// Stops producing; returns the number of rows produced.
    pub async fn finish(self) -> u64 {
        self.0.finish().await * ROWS_PER_FILE
    }
}

/// Creates `topic` with `partitions` partitions on the broker.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// Sends keyed records to explicit partitions, waiting for every delivery.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
}

impl KafkaProducer {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        Self {
            producer,
            topic: topic.to_string(),
        }
    }

    /// `(key, JSON value, partition)` records.
    pub async fn send(&self, records: &[(String, String, i32)]) {
        let sends = records.iter().map(|(key, value, partition)| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(key)
                    .payload(value)
                    .partition(*partition),
                Duration::from_secs(10),
            )
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.expect("delivered");
        }
    }
}

/// Every `part-*.parquet` under `dir` (recursively), sorted by file name: for the file sink that
/// is (task, batch id) order. Files deleted while they are read are skipped.
pub fn parquet_batches(dir: &Path) -> Vec<RecordBatch> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                stack.push(path);
            } else if name.starts_with("part-") && name.ends_with(".parquet") {
                files.push((name, path));
            }
        }
    }
    files.sort();
    let mut batches = Vec::new();
    for (_, path) in files {
        // A running query's file sink with `overwrite: partitions` deletes the files a newer
        // version superseded: one listed a moment ago may be gone, and the next poll sees its
        // successor.
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        batches.extend(reader.map(|batch| batch.expect("batch")));
    }
    batches
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a dyn Array {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("output column {name} missing"))
        .as_ref()
}

/// The `id`s in the output under `dir`, sorted.
pub fn output_ids(dir: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for batch in parquet_batches(dir) {
        let column = column(&batch, "id")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("id is int64");
        ids.extend((0..column.len()).map(|i| column.value(i)));
    }
    ids.sort_unstable();
    ids
}

/// Waits until the output under `dir` holds `rows` rows, then asserts the ids are exactly
/// `0..rows`, each once.
pub async fn assert_exactly_once(dir: &Path, rows: u64, timeout: Duration) {
    let ids = wait_for("all produced rows in the output", timeout, || {
        let ids = output_ids(dir);
        if ids.len() as u64 >= rows {
            Ok(ids)
        } else {
            Err(format!("{} of {rows} rows", ids.len()))
        }
    })
    .await;
    let duplicates = ids.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert_eq!(duplicates, 0, "duplicate output rows");
    assert_eq!(ids.len() as u64, rows, "output rows vs produced rows");
    assert!(
        ids.iter().copied().eq(0..rows as i64),
        "output ids differ from produced ids"
    );
    println!("exactly once: {rows} rows produced, {rows} rows out, no duplicates");
}

/// Window start (seconds after the e2e's event-time origin) and device (`""` when the query does
/// not group by device) → count.
pub type WindowCounts = BTreeMap<(i64, String), i64>;

/// Event-time origin of the stateful tests: 2026-01-01T00:00:00Z, in seconds.
pub const ORIGIN_S: i64 = 1_767_225_600;

/// RFC 3339 text of `seconds` after [`ORIGIN_S`] (under an hour).
pub fn event_time(seconds: i64) -> String {
    format!("2026-01-01T00:{:02}:{:02}Z", seconds / 60, seconds % 60)
}

/// Length of the tests' tumbling windows, seconds.
pub const WINDOW_S: i64 = 10;

/// Counts rows `(event second after the origin, device)` per tumbling window and device: what a
/// correct windowed count reports for them.
pub fn count_windows(rows: impl IntoIterator<Item = (i64, String)>) -> WindowCounts {
    let mut counts = WindowCounts::new();
    for (second, device) in rows {
        *counts
            .entry((second.div_euclid(WINDOW_S) * WINDOW_S, device))
            .or_default() += 1;
    }
    counts
}

/// The latest count per window (and device) of a complete-mode aggregation written under `dir`:
/// files are read in (task, batch id) order and a later row replaces an earlier one. Each key
/// lives in one task, so this is the key's current count. Panics when a count ever goes down:
/// that is state lost (a window restarting from zero) or a batch undone.
pub fn window_counts(dir: &Path) -> WindowCounts {
    let mut counts = WindowCounts::new();
    for batch in parquet_batches(dir) {
        let windows = column(&batch, "window").as_struct();
        let starts =
            arrow::compute::cast(windows.column(0), &DataType::Int64).expect("window start");
        let starts = starts.as_primitive::<arrow::datatypes::Int64Type>();
        let devices = batch.column_by_name("deviceId").map(|c| {
            c.as_any()
                .downcast_ref::<StringArray>()
                .expect("deviceId utf8")
                .clone()
        });
        let n = column(&batch, "n")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("n is int64");
        for row in 0..batch.num_rows() {
            // Window starts are µs since the epoch.
            let start = starts.value(row) / 1_000_000 - ORIGIN_S;
            let device = devices
                .as_ref()
                .map_or(String::new(), |d| d.value(row).to_string());
            let key = (start, device);
            let count = n.value(row);
            if let Some(previous) = counts.insert(key.clone(), count) {
                assert!(
                    count >= previous,
                    "count of window {key:?} went down from {previous} to {count}: state lost"
                );
            }
        }
    }
    counts
}

/// Waits until the window counts under `dir` equal `expected` (and then they are exact: every
/// row counted once, none lost, none twice).
pub async fn wait_for_counts(
    dir: &Path,
    expected: &WindowCounts,
    timeout: Duration,
    what: &str,
) -> WindowCounts {
    wait_for(what, timeout, || {
        let counts = window_counts(dir);
        if counts == *expected {
            Ok(counts)
        } else {
            let differences: Vec<String> = expected
                .iter()
                .filter(|(k, v)| counts.get(*k) != Some(*v))
                .take(5)
                .map(|(k, v)| format!("{k:?}: expected {v}, got {:?}", counts.get(k)))
                .chain(
                    counts
                        .keys()
                        .filter(|k| !expected.contains_key(*k))
                        .take(3)
                        .map(|k| format!("{k:?}: unexpected")),
                )
                .collect();
            Err(differences.join("\n"))
        }
    })
    .await
}
