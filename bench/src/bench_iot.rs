//! `bench-iot`: the IoT example (JSON files → `WHERE danger_level = 'HIGH'` → Parquet,
//! `availableNow`) on N files × M rows, run by the release `sluice-worker`; prints input rows/s and
//! peak RSS per run. The data is generated once (deterministic) into a cache directory.
//!
//! Input rows/s = input rows / wall time from spawning the worker to its exit (start-up and the last
//! commit included). Peak RSS = the worker's `ru_maxrss` from `wait4(2)`.
//!
//! With `--phases`, the worker runs with the default trigger and `--http`, the per-task phase times
//! of every batch are read from `/progress` (read+decode, SQL, sink, checkpoint), and the worker is
//! stopped once all rows are in; the wall time then includes one progress fetch per batch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_bench::engines::{Phases, filter_manifest, run_sluice};
use sluice_bench::measure::Action;

#[derive(Parser)]
#[command(about = "Throughput and peak RSS of the IoT example (json -> filter -> parquet)")]
struct Args {
    /// Number of input files.
    #[arg(long, default_value_t = 10)]
    files: u64,
    /// Rows per file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where generated data sets are kept between runs.
    #[arg(long, env = "SLUICE_BENCH_CACHE")]
    cache: Option<PathBuf>,
    /// Scratch directory for outputs and checkpoints (emptied per run).
    #[arg(long, default_value = "/tmp/sluice-bench-work")]
    work: PathBuf,
    /// The worker binary; default: `sluice-worker` next to this binary (same target profile).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// How many times to run.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// File source partitions (tasks).
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// `maxFilesPerTrigger` (per task).
    #[arg(long, default_value_t = 2)]
    max_files_per_trigger: u32,
    /// Also report the time of each phase (from /progress).
    #[arg(long)]
    phases: bool,
}

fn worker_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => sluice_bench::sibling_binary("sluice-worker")?,
    };
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p sluice-worker` (same target dir) or pass --worker",
            path.display()
        );
    }
    Ok(path)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let worker = worker_path(args.worker.clone())?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(sluice_bench::default_cache);
    let generating = std::time::Instant::now();
    let data = sluice_bench::cached_data_set(&cache, args.seed, args.files, args.rows)
        .with_context(|| format!("generating data under {}", cache.display()))?;
    let expected = args.files * args.rows;
    let high = sluice_bench::events(args.seed, args.files, args.rows)
        .filter(|e| e.danger_level == "HIGH")
        .count() as u64;
    eprintln!(
        "data: {} ({} files x {} rows, {} HIGH; ready in {:.1}s)",
        data.display(),
        args.files,
        args.rows,
        high,
        generating.elapsed().as_secs_f64()
    );
    println!(
        "bench-iot: json -> WHERE danger_level = 'HIGH' -> parquet, {} files x {} rows, {} tasks, maxFilesPerTrigger {}, {}",
        args.files,
        args.rows,
        args.partitions,
        args.max_files_per_trigger,
        worker.display()
    );
    println!(
        "{:>3}  {:>11}  {:>11}  {:>7}  {:>8}  {:>12}  {:>10}",
        "run", "input rows", "output rows", "batches", "wall s", "input rows/s", "peak RSS"
    );
    let mut rates = Vec::new();
    for run in 1..=args.runs {
        let work = args.work.join(format!("bench-iot-{run}"));
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        let manifest = filter_manifest(
            &data,
            &work.join("out"),
            &work.join("checkpoint"),
            args.partitions,
            args.max_files_per_trigger,
            !args.phases,
        );
        let timeout = Duration::from_secs(1800);
        let result = run_sluice(&worker, &work, &manifest, args.phases, |probe, triggers| {
            let done: u64 = triggers.iter().map(|t| t.input_rows).sum();
            if probe.elapsed > timeout {
                Action::Kill
            } else if args.phases && done >= expected {
                Action::Terminate
            } else {
                Action::Continue
            }
        })?;
        let input: u64 = result.triggers.iter().map(|t| t.input_rows).sum();
        let output = result.summary.map(|(_, output)| output);
        if input != expected || (!args.phases && result.failure().is_some()) {
            bail!(
                "run {run} read {input} rows, expected {expected}: {}",
                result.failure().unwrap_or_default()
            );
        }
        if let Some(output) = output
            && output != high
        {
            bail!("run {run} wrote {output} rows, expected the {high} HIGH rows");
        }
        let seconds = result.outcome.wall.as_secs_f64();
        let rate = input as f64 / seconds;
        rates.push(rate);
        println!(
            "{:>3}  {:>11}  {:>11}  {:>7}  {:>8.2}  {:>11.2}M  {:>6} MiB",
            run,
            input,
            output.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
            result.triggers.len(),
            seconds,
            rate / 1e6,
            result.outcome.peak_rss / (1024 * 1024)
        );
        if let Some(phases) = &result.phases {
            print_phases(phases);
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    if rates.len() > 1 {
        rates.sort_by(f64::total_cmp);
        println!("median: {:.2}M input rows/s", rates[rates.len() / 2] / 1e6);
    }
    Ok(())
}

fn print_phases(p: &Phases) {
    let total =
        (p.wal_commit + p.get_batch + p.query_planning_and_execution + p.add_batch + p.commit)
            .max(1) as f64;
    let share = |ms: u64| format!("{ms} ms ({:.0}%)", ms as f64 * 100.0 / total);
    println!(
        "     task-time over {} task batches: read+decode {} | sql {} | sink {} | offsets log {} | commit {}",
        p.batches,
        share(p.get_batch),
        share(p.query_planning_and_execution),
        share(p.add_batch),
        share(p.wal_commit),
        share(p.commit),
    );
}
