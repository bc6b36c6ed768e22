//! `bench-window`: the windowed aggregation of the stateful-streaming issue over the generated IoT
//! data — a 1-minute tumbling window per device, `avg(temperature)` and `count(*)`, watermark
//! 10 minutes, append mode, file source (JSON) to a Parquet file sink, trigger `availableNow`, one
//! task. Prints rows/s (input rows over the engine's wall time, excluding data generation) and the
//! process's peak RSS (`VmHWM` of /proc/self/status, bytes).
//!
//! Aim (issue 3): more than 1,000,000 rows/s on one core. Run it in release:
//! `cargo run --release -p sluice-bench --bin bench-window -- --files 20 --rows 500000`.
//!
//! With `--partitions N` (N > 1) the query runs over the keyed exchange (docs/keyed-exchange.md):
//! N source-stage tasks and one stateful task; `--threads` sets the runtime's worker threads
//! (1: a current-thread runtime, as before). The exchange's overhead is the difference between
//! `--partitions 1` and `--partitions 2` at the same `--threads` on the same input.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Windowed aggregation benchmark (1-minute tumbling window per device)")]
struct Args {
    /// Number of generated files.
    #[arg(long, default_value_t = 10)]
    files: u64,
    /// Rows per file.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Files per micro-batch (`maxFilesPerTrigger`).
    #[arg(long, default_value_t = 1)]
    files_per_trigger: u64,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Work directory (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// File source partitions: more than 1 runs the query over the keyed exchange.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Runtime worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

const SQL: &str = "SELECT window(timestamp, '1 minute') AS window, deviceId, avg(temperature) AS avgTemp, count(*) AS n FROM events GROUP BY window(timestamp, '1 minute'), deviceId";

fn manifest(dir: &std::path::Path, files_per_trigger: u64, partitions: u32) -> String {
    let path = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: bench-window}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: {files_per_trigger}, partitions: {partitions}}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
        - {{name: danger_level, type: string}}
        - {{name: timestamp, type: timestamp}}
      watermark: {{column: timestamp, delay: 10 minutes}}
  sql: "{SQL}"
  outputMode: append
  sink:
    file: {{path: "{output}", format: parquet}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#,
        input = path("in"),
        output = path("out"),
        checkpoint = path("ckpt"),
    )
}

/// Peak resident set size in bytes (`VmHWM`), if the platform reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let generated = Instant::now();
    sluice_bench::write_json_files(&dir.join("in"), args.seed, args.files, args.rows)?;
    eprintln!(
        "generated {} rows in {:.1}s",
        args.files * args.rows,
        generated.elapsed().as_secs_f64()
    );
    let query =
        sluice_crds::parse_manifest(&manifest(&dir, args.files_per_trigger, args.partitions))
            .context("manifest")?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let started = Instant::now();
    let summary = runtime.block_on(async {
        let engine = sluice_worker::Engine::start(
            sluice_worker::QueryConfig::local(query),
            sluice_worker::Shared::new(),
        )
        .await?;
        engine.run(|_| {}).await
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bench-window: {} partitions ({}), {} threads: {} rows in {} batches, {} windows out, {:.2}s, {:.0} rows/s, peak RSS {} bytes",
        args.partitions,
        if args.partitions > 1 {
            "keyed exchange"
        } else {
            "one task"
        },
        args.threads,
        summary.input_rows,
        summary.batches,
        summary.output_rows,
        seconds,
        summary.input_rows as f64 / seconds,
        peak_rss_bytes().map_or_else(|| "n/a".to_string(), |b| b.to_string()),
    );
    Ok(())
}
