//! Kafka → SQL filter → Kafka benchmark against a real broker.
//!
//! Runs the `sluice-worker` binary on a raw Kafka → `WHERE value NOT LIKE 'drop%'` → Kafka query and
//! prints:
//! - end-to-end latency p50/p99 (ms) at `--rate` rows/s (default 1,000) with the default trigger and
//!   with `continuous`: each input value carries its send time (µs since the epoch); latency = time
//!   the output record is consumed − send time;
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
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
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

fn consumer(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    Ok(consumer)
}

fn manifest(
    dir: &Path,
    bootstrap: &str,
    input: &str,
    output: &str,
    trigger: &str,
) -> Result<PathBuf> {
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
      kafka: {{bootstrapServers: "{bootstrap}", topic: {input}}}
  sql: SELECT key, value FROM events WHERE CAST(value AS VARCHAR) NOT LIKE 'drop%'
  sink:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {output}}}
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

/// Latency run: returns sorted latencies in ms.
fn latency_run(args: &Args, worker: &Path, dir: &Path, trigger: &str) -> Result<Vec<f64>> {
    let input = unique("bench-in");
    let output = unique("bench-out");
    create_topic(&args.bootstrap, &input, 1)?;
    create_topic(&args.bootstrap, &output, 1)?;
    let manifest = manifest(dir, &args.bootstrap, &input, &output, trigger)?;
    let mut child = spawn(worker, &manifest)?;
    let producer = producer(&args.bootstrap, args.linger_ms)?;
    let consumer = consumer(&args.bootstrap, &output)?;
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
            let _ = child.kill();
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
    let _ = child.kill();
    let _ = child.wait();
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
    let manifest = manifest(
        dir,
        &args.bootstrap,
        &input,
        &output,
        "{availableNow: true}",
    )?;
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
    for (label, trigger) in [
        ("default trigger", "{}".to_string()),
        ("continuous", format!("{{continuous: {}}}", args.epoch)),
    ] {
        let latencies = latency_run(&args, &worker, dir.path(), &trigger)?;
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
