//! Kafka → SQL filter → Kafka benchmark against a real broker.
//!
//! Runs the `sluice-worker` binary on a raw Kafka → `WHERE value NOT LIKE 'drop%'` → Kafka query and
//! prints:
//! - end-to-end latency p50/p99 (ms) at `--rate` rows/s (default 1,000) with the default trigger and
//!   with `continuous`: each input value carries its send time (µs since the epoch); latency = time
//!   the output record is consumed − send time;
//! - the same latency for a no-op relay (consume → produce, no query, the worker's client
//!   settings): the broker's own floor for a path with two hops, printed beside the worker's figures
//!   so that they can be read against it;
//! - max throughput (rows/s): `--throughput-rows` records produced first, then one `availableNow`
//!   run; rows / wall time of the run (including the worker's start, so a lower bound).
//!
//! Usage: `bench-kafka --bootstrap 127.0.0.1:19092 [--worker target/release/sluice-worker]`
//! (`--bootstrap` defaults to `$SLUICE_TEST_KAFKA`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "Kafka → filter → Kafka latency and throughput")]
struct Args {
    /// Broker `host:port` (default `$SLUICE_TEST_KAFKA`).
    #[arg(long, env = "SLUICE_TEST_KAFKA")]
    bootstrap: String,
    /// The worker binary (default: `sluice-worker` next to this binary).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Input rows per second for the latency runs.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds measured per latency run (after warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rows for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    throughput_rows: u64,
    /// Interval of the `continuous` trigger (epoch length).
    #[arg(long, default_value = "1s")]
    epoch: String,
    /// The input producer's `linger.ms` (how long it gathers records into one produce request).
    /// 5 is the default of librdkafka and of the Java client since Kafka 4.0; 0 sends every
    /// record in a request of its own.
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// Extra librdkafka options for the worker's Kafka source, `key=value` (repeatable).
    #[arg(long = "source-option")]
    source_options: Vec<String>,
    /// Extra librdkafka options for the worker's Kafka sink, `key=value` (repeatable).
    #[arg(long = "sink-option")]
    sink_options: Vec<String>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), now_us())
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

fn producer(
    bootstrap: &str,
    linger_ms: u32,
) -> Result<ThreadedProducer<rdkafka::producer::DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .create()?)
}

/// A consumer of partition 0 of `topic` from the beginning, fetching with `fetch.wait.max.ms`
/// `fetch_wait_ms`.
fn consumer(bootstrap: &str, topic: &str, group: &str, fetch_wait_ms: u32) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    Ok(consumer)
}

/// `key=value` pairs as a YAML flow mapping of strings: `{"k": "v", ...}`.
fn options_yaml(pairs: &[String]) -> Result<String> {
    let mut entries = Vec::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("option `{pair}` is not key=value"))?;
        entries.push(format!("{key:?}: {value:?}"));
    }
    Ok(format!("{{{}}}", entries.join(", ")))
}

fn manifest(dir: &Path, args: &Args, input: &str, output: &str, trigger: &str) -> Result<PathBuf> {
    let bootstrap = &args.bootstrap;
    let source_options = options_yaml(&args.source_options)?;
    let sink_options = options_yaml(&args.sink_options)?;
    let path = dir.join(format!("{input}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: bench-kafka}}
spec:
  sources:
    - name: events
      kafka: {{bootstrapServers: "{bootstrap}", topic: {input}, options: {source_options}}}
  sql: SELECT key, value FROM events WHERE CAST(value AS VARCHAR) NOT LIKE 'drop%'
  sink:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {output}, options: {sink_options}}}
  trigger: {trigger}
  checkpoint: {{location: "{ckpt}"}}
"#,
            ckpt = dir.join(format!("ckpt-{input}")).display()
        ),
    )?;
    Ok(path)
}

fn spawn(worker: &Path, manifest: &Path) -> Result<Child> {
    Command::new(worker)
        .arg("run")
        .arg(manifest)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", worker.display()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What carries the records from the input topic to the output topic in a latency run.
enum Pipeline<'a> {
    /// The worker binary running the filter query with this trigger (YAML).
    Worker { binary: &'a Path, trigger: &'a str },
    /// The broker's floor: a consumer that hands every record to a producer at once and waits for
    /// its acknowledgement, with no query in between, using the worker's client settings.
    Relay,
}

/// A running [`Pipeline`]; stopped (killed / joined) on drop.
enum Running {
    Worker(Child),
    Relay {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Worker(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Relay { stop, thread } => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Starts the no-op relay from `input` to `output`: poll what has arrived (waiting at most 5 ms,
/// the worker source's `fetch.wait.max.ms`), produce each record, flush (wait for the acks, as the
/// worker's sink does before a commit). Producer `linger.ms` 1, as the worker's sink.
fn start_relay(bootstrap: &str, input: &str, output: &str) -> Result<Running> {
    let consumer = consumer(bootstrap, input, "sluice-bench-relay", 5)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let output = output.to_string();
    let thread = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let mut wait = Duration::from_millis(5);
            let mut deliveries = Vec::new();
            while let Some(Ok(m)) = consumer.poll(wait) {
                let record = FutureRecord::<[u8], [u8]>::to(&output)
                    .payload(m.payload().unwrap_or_default());
                match producer.send_result(record) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(_) => break,
                }
                wait = Duration::ZERO;
            }
            futures::executor::block_on(futures::future::join_all(deliveries));
        }
    });
    Ok(Running::Relay {
        stop,
        thread: Some(thread),
    })
}

/// Latency run: returns sorted latencies in ms.
fn latency_run(args: &Args, pipeline: Pipeline<'_>, dir: &Path) -> Result<Vec<f64>> {
    let input = unique("bench-in");
    let output = unique("bench-out");
    create_topic(&args.bootstrap, &input, 1)?;
    create_topic(&args.bootstrap, &output, 1)?;
    let running = match pipeline {
        Pipeline::Worker { binary, trigger } => {
            let manifest = manifest(dir, args, &input, &output, trigger)?;
            Running::Worker(spawn(binary, &manifest)?)
        }
        Pipeline::Relay => start_relay(&args.bootstrap, &input, &output)?,
    };
    let producer = producer(&args.bootstrap, args.linger_ms)?;
    let consumer = consumer(&args.bootstrap, &output, "sluice-bench", 1)?;
    // Warm-up: until the first record comes through.
    let warm = Instant::now();
    loop {
        let value = format!("warm:{}", now_us());
        producer
            .send(BaseRecord::<(), str>::to(&input).payload(&value))
            .map_err(|(e, _)| e)?;
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            break;
        }
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("no output within 60 s");
        }
    }
    // Drain the warm-up output.
    while consumer.poll(Duration::from_millis(300)).is_some() {}
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let total = args.rate * args.seconds;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = Duration::from_secs(args.seconds + 15);
    while (latencies.len() as u64) < total && started.elapsed() < deadline {
        // Send what is due by now.
        let due = ((started.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64).min(total);
        while sent < due {
            let value = format!("m:{}", now_us());
            producer
                .send(BaseRecord::<(), str>::to(&input).payload(&value))
                .map_err(|(e, _)| e)?;
            sent += 1;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_micros(200)) {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            if let Some(us) = payload
                .strip_prefix("m:")
                .and_then(|v| v.parse::<i64>().ok())
            {
                latencies.push((now_us() - us) as f64 / 1000.0);
            }
        }
    }
    producer.flush(Duration::from_secs(5))?;
    drop(running);
    latencies.sort_by(f64::total_cmp);
    if (latencies.len() as u64) < total {
        eprintln!(
            "warning: only {} of {total} records came through",
            latencies.len()
        );
    }
    Ok(latencies)
}

fn throughput_run(args: &Args, worker: &Path, dir: &Path) -> Result<f64> {
    let input = unique("bench-tp-in");
    let output = unique("bench-tp-out");
    create_topic(&args.bootstrap, &input, 4)?;
    create_topic(&args.bootstrap, &output, 1)?;
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for i in 0..args.throughput_rows {
        let value = if i % 10 == 0 {
            format!("drop-{i}")
        } else {
            format!("keep-{i}")
        };
        loop {
            match producer.send(BaseRecord::<(), str>::to(&input).payload(&value)) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let manifest = manifest(dir, args, &input, &output, "{availableNow: true}")?;
    let started = Instant::now();
    let status = spawn(worker, &manifest)?.wait()?;
    let elapsed = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("worker failed: {status}");
    }
    Ok(args.throughput_rows as f64 / elapsed)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let worker = match &args.worker {
        Some(w) => w.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("sluice-worker"),
    };
    let dir = tempfile::tempdir()?;
    println!(
        "Kafka → filter → Kafka on {} ({} rows/s for {} s, producer linger.ms {}; worker {})",
        args.bootstrap,
        args.rate,
        args.seconds,
        args.linger_ms,
        worker.display()
    );
    let continuous = format!("{{continuous: {}}}", args.epoch);
    // The relay runs first: tansu's latency grows as its in-memory topics fill, so a floor measured
    // last would flatter the worker.
    for (label, pipeline) in [
        ("no-op relay", Pipeline::Relay),
        (
            "default trigger",
            Pipeline::Worker {
                binary: &worker,
                trigger: "{}",
            },
        ),
        (
            "continuous",
            Pipeline::Worker {
                binary: &worker,
                trigger: &continuous,
            },
        ),
    ] {
        let latencies = latency_run(&args, pipeline, dir.path())?;
        println!(
            "latency {label:16} p50 {:8.2} ms  p99 {:8.2} ms  ({} records)",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.len()
        );
    }
    let rows_per_second = throughput_run(&args, &worker, dir.path())?;
    println!(
        "max throughput   {rows_per_second:10.0} rows/s ({} rows, availableNow, incl. start-up)",
        args.throughput_rows
    );
    Ok(())
}
