//! `bench`: Sluice and Spark Structured Streaming side by side on the same data and cores.
//!
//! Generates the IoT data once (deterministic, cached), then runs each scenario (see
//! `sluice_bench::engines`) with `sluice-worker` (`bench/run.sh` builds the shipped `dist` profile)
//! and — when a Python with `pyspark` is
//! there (`bench/run.sh --install-spark` makes one) — with Spark `local[2]`, prints the table and
//! writes `bench.json` and `bench.png` (via `bench/plot.py`) into the results directory.
//!
//! Figures:
//! - throughput (1, 2): generated input rows / seconds. Sluice: spawn to exit of the worker (its
//!   start-up included). Spark: `query.start()` to termination, measured in the driver (the
//!   JVM and session start-up left out, in Spark's favour).
//! - max sustained rate (3): the highest rate of a doubling ladder at which, after a warm-up of a
//!   third of the run, the processed rows/s stay ≥ 90 % of the rate and no trigger takes over 2 s.
//! - start-up (4): process spawn to the first committed batch that read rows; median of `--runs`.
//! - peak RSS (5): the process tree's peak resident memory (`wait4` `ru_maxrss` and `/proc`
//!   sampling); idle RSS: the tree's resident memory a few seconds after the first batch (median
//!   of `--runs`, from the same runs as 4).
//!
//! Nothing here is faked: a scenario an engine cannot run shows why instead of a number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_bench::engines::{
    Trigger, filter_manifest, parse_spark_done, parse_spark_trigger, rate_manifest, run_sluice,
    spark_command, startup_manifest, window_manifest,
};
use sluice_bench::measure::{self, Action, Outcome};
use sluice_bench::report::{Cell, Report, Row, Unit};

const GIB: u64 = 1024 * 1024 * 1024;
/// Extra seconds each Spark rate step runs, for its slow first triggers (in Spark's favour).
const SPARK_WARM_UP_SECONDS: u64 = 5;

#[derive(Parser, Clone)]
#[command(about = "Sluice vs Spark Structured Streaming on the same data and cores")]
struct Args {
    /// Number of input files.
    #[arg(long, default_value_t = 10)]
    files: u64,
    /// Rows per file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios to run, comma-separated: filter, window, rate, startup.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "filter,window,rate,startup"
    )]
    scenarios: Vec<String>,
    /// Runs of each file scenario; the median run by throughput is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where generated data sets are kept between runs.
    #[arg(long, env = "SLUICE_BENCH_CACHE")]
    cache: Option<PathBuf>,
    /// Scratch directory for outputs and checkpoints.
    #[arg(long, default_value = "/tmp/sluice-bench-work")]
    work: PathBuf,
    /// Results directory (bench.json, bench.png).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// The worker binary; default: `sluice-worker` next to this binary (`bench/run.sh` passes the
    /// `dist` build).
    #[arg(long, env = "SLUICE_BENCH_WORKER")]
    worker: Option<PathBuf>,
    /// Python with pyspark (and matplotlib for the chart).
    #[arg(long, env = "SLUICE_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Skip Spark even when pyspark is installed.
    #[arg(long)]
    no_spark: bool,
    /// File source partitions (Sluice tasks).
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Sluice `maxFilesPerTrigger` per task; Spark gets `partitions` times this per trigger.
    #[arg(long, default_value_t = 2)]
    max_files_per_trigger: u32,
    /// Seconds per step of the rate ladder.
    #[arg(long, default_value_t = 12)]
    rate_seconds: u64,
    /// First rate of the ladder, rows/s (halved while it is not sustained, doubled while it is).
    #[arg(long, default_value_t = 1_000_000)]
    rate_start: u64,
    /// Highest rate tried, rows/s.
    #[arg(long, default_value_t = 64_000_000)]
    rate_max: u64,
    /// Seconds after the first batch at which idle memory is read.
    #[arg(long, default_value_t = 3)]
    idle_seconds: u64,
    /// Also run the Kafka → Kafka latency benchmark (`bench_kafka` next to this binary), which
    /// needs a broker (SLUICE_TEST_KAFKA).
    #[arg(long)]
    kafka: bool,
}

/// What the runs share.
struct Setup {
    args: Args,
    worker: PathBuf,
    python: Option<PathBuf>,
    script: PathBuf,
    data: PathBuf,
    small: PathBuf,
    expected_rows: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let worker = match &args.worker {
        Some(path) => path.clone(),
        None => sluice_bench::sibling_binary("sluice-worker")?,
    };
    if !worker.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p sluice-worker -p sluice-bench` or pass --worker",
            worker.display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("spark/spark_bench.py");
    let python = sluice_bench::venv_python(args.python.as_deref(), "bench-venv");
    let spark_version = if args.no_spark {
        None
    } else {
        python
            .as_deref()
            .and_then(|p| python_module_version(p, "pyspark"))
    };
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(sluice_bench::default_cache);
    eprintln!(
        "generating (or reusing) {} files x {} rows under {}",
        args.files,
        args.rows,
        cache.display()
    );
    let data = sluice_bench::cached_data_set(&cache, args.seed, args.files, args.rows)?;
    let small = sluice_bench::cached_data_set(&cache, args.seed, 1, 1000)?;
    let ctx = Setup {
        worker,
        python: python.clone(),
        script,
        data,
        small,
        expected_rows: args.files * args.rows,
        args: args.clone(),
    };
    let spark_missing = match (&spark_version, args.no_spark) {
        (_, true) => Some("skipped (--no-spark)"),
        (None, false) => Some("pyspark not installed (bench/run.sh --install-spark)"),
        (Some(_), false) => None,
    };

    let mut rows = Vec::new();
    let mut notes = vec![
        format!(
            "Sluice: file source with {} tasks (the window query: 1 task, whose state must hold every device), maxFilesPerTrigger {} per task, a task's files decoded concurrently; Spark: local[2], maxFilesPerTrigger {}, spark.sql.shuffle.partitions=2.",
            args.partitions,
            args.max_files_per_trigger,
            args.partitions * args.max_files_per_trigger
        ),
        "Throughput = generated input rows / time. Sluice: worker spawn to exit (start-up included); Spark: query.start() to termination (JVM start-up excluded).".into(),
        "Rate scenario: per-micro-batch GROUP BY value % 10 (Sluice sqlScope: microBatch, Spark foreachBatch + noop sink): each batch aggregated on its own in both.".into(),
    ];
    // Which build was measured: the profile is in the path (`dist` or `release`).
    let worker_mb = std::fs::metadata(&ctx.worker).map_or(0, |m| m.len() >> 20);
    notes.push(format!(
        "Sluice worker binary: {} ({worker_mb} MiB).",
        ctx.worker.display()
    ));
    let run = |name: &str| args.scenarios.iter().any(|s| s == name);
    let spark = |f: &dyn Fn(&Setup) -> anyhow::Result<Vec<Cell>>, n: usize| -> Vec<Cell> {
        match spark_missing {
            Some(why) => vec![Cell::missing(why); n],
            None => f(&ctx).unwrap_or_else(|e| vec![Cell::missing(format!("error: {e:#}")); n]),
        }
    };

    for (name, label) in [
        ("filter", "1 json → filter HIGH → parquet"),
        ("window", "2 json → 1-min window avg+count → parquet"),
    ] {
        if !run(name) {
            continue;
        }
        eprintln!("== {label}: Sluice");
        let sluice = sluice_file(&ctx, name)?;
        eprintln!("== {label}: Spark");
        let spark = spark(&|c| spark_file(c, name), 2);
        rows.push(Row {
            scenario: label.into(),
            metric: "throughput".into(),
            unit: Unit::RowsPerSecond,
            sluice: sluice[0].clone(),
            spark: spark[0].clone(),
        });
        rows.push(Row {
            scenario: label.into(),
            metric: "peak RSS".into(),
            unit: Unit::Bytes,
            sluice: sluice[1].clone(),
            spark: spark[1].clone(),
        });
    }
    if run("rate") {
        let label = "3 rate → GROUP BY per batch";
        eprintln!("== {label}: Sluice");
        let sluice = ladder(&args, |rate| sluice_rate(&ctx, rate));
        eprintln!("== {label}: Spark");
        let spark = spark(
            &|c| Ok(vec![ladder(&c.args, |rate| spark_rate(c, rate))]),
            1,
        );
        rows.push(Row {
            scenario: label.into(),
            metric: "max sustained".into(),
            unit: Unit::RowsPerSecond,
            sluice,
            spark: spark[0].clone(),
        });
    }
    if run("startup") {
        let label = "4 start-up (1 file x 1000 rows)";
        // Each start-up is one sample of a few ms to s: take the median of `--runs`, as for 1 and 2.
        let runs = ctx.args.runs.max(1);
        eprintln!("== {label}: Sluice");
        let sluice = median_of_runs(
            (0..runs)
                .map(|_| sluice_startup(&ctx))
                .collect::<anyhow::Result<_>>()?,
        );
        eprintln!("== {label}: Spark");
        let spark = spark(
            &|c| {
                let samples = (0..runs)
                    .map(|_| spark_startup(c))
                    .collect::<anyhow::Result<_>>()?;
                Ok(median_of_runs(samples))
            },
            2,
        );
        rows.push(Row {
            scenario: label.into(),
            metric: "start → 1st batch".into(),
            unit: Unit::Millis,
            sluice: sluice[0].clone(),
            spark: spark[0].clone(),
        });
        rows.push(Row {
            scenario: "5 idle after 1st batch".into(),
            metric: "RSS".into(),
            unit: Unit::Bytes,
            sluice: sluice[1].clone(),
            spark: spark[1].clone(),
        });
    }
    if args.kafka {
        notes.extend(kafka_hook(&ctx.worker));
    }

    let report = Report {
        date: sluice_bench::rfc3339_ms(sluice_bench::now_ms()),
        machine: sluice_bench::machine(),
        data_set: format!(
            "{} JSON-lines files x {} rows (seed {}), {}",
            args.files,
            args.rows,
            args.seed,
            ctx.data.display()
        ),
        sluice_version: version_of(&ctx.worker),
        spark_version,
        rows,
        notes,
    };
    println!();
    println!("{}", report.table());
    for note in &report.notes {
        println!("  * {note}");
    }
    println!("  machine: {}", report.machine);
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("bench.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.to_json())? + "\n",
    )?;
    println!("wrote {}", json_path.display());
    let png_path = args.out.join("bench.png");
    let plot = Path::new(env!("CARGO_MANIFEST_DIR")).join("plot.py");
    match python
        .as_deref()
        .filter(|p| python_module_version(p, "matplotlib").is_some())
    {
        Some(python) => {
            let status = Command::new(python)
                .arg(&plot)
                .arg(&json_path)
                .arg(&png_path)
                .status()?;
            if status.success() {
                println!("wrote {}", png_path.display());
            } else {
                eprintln!("plot.py failed ({status}): no PNG");
            }
        }
        None => println!(
            "no Python with matplotlib: PNG skipped (bench/run.sh --install-spark installs it)"
        ),
    }
    Ok(())
}

fn rss(outcome: &Outcome) -> Cell {
    Cell::value(outcome.peak_rss as f64)
}

/// Scenario 1 or 2 with Sluice: `[throughput, peak RSS]`.
fn sluice_file(ctx: &Setup, name: &str) -> anyhow::Result<Vec<Cell>> {
    let mut measured = Vec::new();
    for run in 0..ctx.args.runs.max(1) {
        let work = sluice_bench::fresh(&ctx.args.work.join(format!("sluice-{name}-{run}")))?;
        let (output, checkpoint) = (work.join("out"), work.join("checkpoint"));
        let (partitions, max_files) = (ctx.args.partitions, ctx.args.max_files_per_trigger);
        let manifest = if name == "filter" {
            filter_manifest(&ctx.data, &output, &checkpoint, partitions, max_files, true)
        } else {
            window_manifest(&ctx.data, &output, &checkpoint, max_files)
        };
        let result = run_sluice(&ctx.worker, &work, &manifest, false, |probe, _| {
            if probe.elapsed > Duration::from_secs(1800) || probe.tree_rss > 16 * GIB {
                Action::Kill
            } else {
                Action::Continue
            }
        })?;
        let _ = std::fs::remove_dir_all(&work);
        if let Some(failure) = result.failure() {
            eprintln!("   Sluice: {failure}");
            return Ok(vec![Cell::missing(format!("failed: {failure}")); 2]);
        }
        let input = result.summary.map(|(input, _)| input).unwrap_or(0);
        if input != ctx.expected_rows {
            return Ok(vec![
                Cell::missing(format!(
                    "failed: read {input} of {} rows",
                    ctx.expected_rows
                ));
                2
            ]);
        }
        let seconds = result.outcome.wall.as_secs_f64();
        eprintln!(
            "   Sluice run {}: {input} rows in {seconds:.2}s, {} triggers, peak RSS {} MiB",
            run + 1,
            result.triggers.len(),
            result.outcome.peak_rss >> 20
        );
        measured.push((input as f64 / seconds, rss(&result.outcome)));
    }
    Ok(median(measured))
}

/// Column-wise median of several runs' cells; a run without a value in a column gives that
/// column its reason instead.
fn median_of_runs(runs: Vec<Vec<Cell>>) -> Vec<Cell> {
    let columns = runs.first().map_or(0, Vec::len);
    (0..columns)
        .map(|column| {
            let mut values = Vec::new();
            for run in &runs {
                match run.get(column) {
                    Some(Cell { value: Some(v), .. }) => values.push(*v),
                    Some(missing) => return missing.clone(),
                    None => return Cell::missing("no value"),
                }
            }
            values.sort_by(f64::total_cmp);
            Cell::value(values[values.len() / 2])
        })
        .collect()
}

fn median(mut runs: Vec<(f64, Cell)>) -> Vec<Cell> {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, rss) = runs.swap_remove(runs.len() / 2);
    vec![Cell::value(rate), rss]
}

fn spark_failure(outcome: &Outcome) -> String {
    outcome
        .lines
        .iter()
        .rev()
        .find(|l| l.text.contains("Error") || l.text.contains("Exception"))
        .map(|l| l.text.clone())
        .unwrap_or_else(|| outcome.tail(3))
}

/// Scenario 1 or 2 with Spark: `[throughput, peak RSS]`.
fn spark_file(ctx: &Setup, name: &str) -> anyhow::Result<Vec<Cell>> {
    let python = ctx.python.as_deref().context("no python")?;
    let mut measured = Vec::new();
    for run in 0..ctx.args.runs.max(1) {
        let work = sluice_bench::fresh(&ctx.args.work.join(format!("spark-{name}-{run}")))?;
        let args = vec![
            "--input".to_string(),
            ctx.data.display().to_string(),
            "--output".into(),
            work.join("out").display().to_string(),
            "--checkpoint".into(),
            work.join("checkpoint").display().to_string(),
            "--max-files".into(),
            (ctx.args.partitions * ctx.args.max_files_per_trigger).to_string(),
        ];
        let mut command = spark_command(python, &ctx.script, name, &args);
        let outcome = measure::run(&mut command, |probe| {
            if probe.elapsed > Duration::from_secs(3600) || probe.tree_rss > 16 * GIB {
                Action::Kill
            } else {
                Action::Continue
            }
        })?;
        let _ = std::fs::remove_dir_all(&work);
        let seconds = outcome.lines.iter().find_map(|l| parse_spark_done(&l.text));
        let (Some(seconds), Some(0)) = (seconds, outcome.exit_code) else {
            return Ok(vec![
                Cell::missing(format!(
                    "failed: {}",
                    spark_failure(&outcome)
                ));
                2
            ]);
        };
        eprintln!(
            "   Spark run {}: {} rows in {seconds:.2}s after query start ({:.1}s wall), peak RSS {} MiB",
            run + 1,
            ctx.expected_rows,
            outcome.wall.as_secs_f64(),
            outcome.peak_rss >> 20
        );
        measured.push((ctx.expected_rows as f64 / seconds, rss(&outcome)));
    }
    Ok(median(measured))
}

/// One step of the rate ladder.
struct RateTrial {
    sustained: bool,
    /// Processed rows/s after the warm-up.
    processed: f64,
    /// Peak RSS of the step's run (bytes; 0 until measured).
    peak_rss: u64,
}

/// Whether `triggers` kept up with `rate` after a warm-up of `warmup` from the first trigger.
fn kept_up(triggers: &[Trigger], rate: u64, warmup: Duration) -> RateTrial {
    let Some(first) = triggers.first() else {
        return RateTrial {
            sustained: false,
            processed: 0.0,
            peak_rss: 0,
        };
    };
    let start = first.at + warmup;
    let Some(index) = triggers
        .iter()
        .position(|t| t.at >= start)
        .filter(|i| *i > 0)
    else {
        return RateTrial {
            sustained: false,
            processed: 0.0,
            peak_rss: 0,
        };
    };
    let window = &triggers[index..];
    let (Some(before), Some(last)) = (triggers.get(index - 1), window.last()) else {
        return RateTrial {
            sustained: false,
            processed: 0.0,
            peak_rss: 0,
        };
    };
    let seconds = (last.at - before.at).as_secs_f64();
    let rows: u64 = window.iter().map(|t| t.input_rows).sum();
    let processed = if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    };
    let slowest = window.iter().map(|t| t.duration_ms).max().unwrap_or(0);
    RateTrial {
        sustained: window.len() >= 2 && processed >= 0.9 * rate as f64 && slowest <= 2000,
        processed,
        peak_rss: 0,
    }
}

/// Halves the rate from `rate_start` until it is sustained, then doubles it while it is, up to
/// `rate_max`: the highest sustained rate.
fn ladder(args: &Args, mut attempt: impl FnMut(u64) -> anyhow::Result<RateTrial>) -> Cell {
    const MIN_RATE: u64 = 10_000;
    let mut rate = args.rate_start.max(MIN_RATE);
    let mut best: Option<(u64, f64)> = None;
    let mut going_down = false;
    loop {
        let trial = match attempt(rate) {
            Ok(trial) => trial,
            Err(e) => return Cell::missing(format!("error: {e:#}")),
        };
        eprintln!(
            "   {} rows/s: processed {:.0} rows/s, peak RSS {} MiB -> {}",
            rate,
            trial.processed,
            trial.peak_rss >> 20,
            if trial.sustained {
                "sustained"
            } else {
                "not sustained"
            }
        );
        if trial.sustained {
            best = Some((rate, trial.processed));
            if going_down || rate.saturating_mul(2) > args.rate_max {
                break;
            }
            rate *= 2;
        } else if best.is_none() && rate / 2 >= MIN_RATE {
            going_down = true;
            rate /= 2;
        } else {
            break;
        }
    }
    match best {
        Some((rate, _)) if rate.saturating_mul(2) > args.rate_max => {
            Cell::value(rate as f64).with_note("ladder top")
        }
        Some((rate, _)) => Cell::value(rate as f64),
        None => Cell::missing(format!("below {MIN_RATE} rows/s")),
    }
}

fn rate_watch(
    rate: u64,
    limit: Duration,
    triggers: &[Trigger],
    probe: &measure::Probe<'_>,
) -> Action {
    // A trigger holding more than 4 s of input means it fell behind; stop before memory runs away.
    let behind = triggers.iter().any(|t| t.input_rows > rate * 4);
    if behind || probe.elapsed > limit || probe.tree_rss > 8 * GIB {
        Action::Kill
    } else {
        Action::Continue
    }
}

fn sluice_rate(ctx: &Setup, rate: u64) -> anyhow::Result<RateTrial> {
    let work = sluice_bench::fresh(&ctx.args.work.join("sluice-rate"))?;
    let seconds = Duration::from_secs(ctx.args.rate_seconds);
    let manifest = rate_manifest(rate, ctx.args.partitions, &work.join("checkpoint"));
    let result = run_sluice(
        &ctx.worker,
        &work,
        &manifest,
        false,
        |probe, triggers| match rate_watch(rate, seconds * 3, triggers, probe) {
            Action::Continue if probe.elapsed > seconds => Action::Terminate,
            action => action,
        },
    )?;
    let _ = std::fs::remove_dir_all(&work);
    if result.triggers.is_empty() {
        bail!("{}", result.failure().unwrap_or_default());
    }
    let mut trial = kept_up(&result.triggers, rate, seconds / 3);
    trial.sustained &= !result.outcome.killed;
    trial.peak_rss = result.outcome.peak_rss;
    Ok(trial)
}

fn spark_rate(ctx: &Setup, rate: u64) -> anyhow::Result<RateTrial> {
    let python = ctx.python.as_deref().context("no python")?;
    let work = sluice_bench::fresh(&ctx.args.work.join("spark-rate"))?;
    let args = vec![
        "--checkpoint".to_string(),
        work.join("checkpoint").display().to_string(),
        "--rows-per-second".into(),
        rate.to_string(),
        // Spark's first triggers take seconds (JIT, code generation): give it that time on top.
        "--seconds".into(),
        (ctx.args.rate_seconds + SPARK_WARM_UP_SECONDS).to_string(),
    ];
    let mut triggers = Vec::new();
    let limit = Duration::from_secs((ctx.args.rate_seconds + SPARK_WARM_UP_SECONDS) * 3 + 120);
    let mut command = spark_command(python, &ctx.script, "rate", &args);
    let outcome = measure::run(&mut command, |probe| {
        if let Some(trigger) = probe.line.and_then(|l| parse_spark_trigger(l.at, &l.text)) {
            triggers.push(trigger);
        }
        rate_watch(rate, limit, &triggers, probe)
    })?;
    let _ = std::fs::remove_dir_all(&work);
    if triggers.is_empty() {
        bail!("{}", spark_failure(&outcome));
    }
    let warm_up = Duration::from_secs(ctx.args.rate_seconds / 3 + SPARK_WARM_UP_SECONDS);
    let mut trial = kept_up(&triggers, rate, warm_up);
    trial.sustained &= !outcome.killed;
    trial.peak_rss = outcome.peak_rss;
    Ok(trial)
}

/// Scenario 4 with Sluice: `[ms to the first batch, idle RSS]`.
fn sluice_startup(ctx: &Setup) -> anyhow::Result<Vec<Cell>> {
    let work = sluice_bench::fresh(&ctx.args.work.join("sluice-startup"))?;
    let manifest = startup_manifest(&ctx.small, &work.join("out"), &work.join("checkpoint"));
    let idle = Duration::from_secs(ctx.args.idle_seconds);
    let mut idle_rss = None;
    let result = run_sluice(
        &ctx.worker,
        &work,
        &manifest,
        false,
        |probe, triggers| match triggers.first() {
            _ if probe.elapsed > Duration::from_secs(120) => Action::Kill,
            Some(first) if probe.elapsed >= first.at + idle => {
                idle_rss.get_or_insert(probe.tree_rss);
                Action::Terminate
            }
            _ => Action::Continue,
        },
    )?;
    let _ = std::fs::remove_dir_all(&work);
    let Some(first) = result.triggers.first() else {
        return Ok(vec![
            Cell::missing(format!(
                "failed: {}",
                result.failure().unwrap_or_default()
            ));
            2
        ]);
    };
    eprintln!(
        "   Sluice: first batch after {} ms, idle RSS {} MiB, peak RSS {} MiB",
        first.at.as_millis(),
        idle_rss.unwrap_or(0) >> 20,
        result.outcome.peak_rss >> 20
    );
    Ok(vec![
        Cell::value(first.at.as_secs_f64() * 1000.0),
        idle_rss.map_or_else(|| Cell::missing("not sampled"), |b| Cell::value(b as f64)),
    ])
}

/// Scenario 4 with Spark: `[ms to the first batch, idle RSS]`.
fn spark_startup(ctx: &Setup) -> anyhow::Result<Vec<Cell>> {
    let python = ctx.python.as_deref().context("no python")?;
    let work = sluice_bench::fresh(&ctx.args.work.join("spark-startup"))?;
    let args = vec![
        "--input".to_string(),
        ctx.small.display().to_string(),
        "--output".into(),
        work.join("out").display().to_string(),
        "--checkpoint".into(),
        work.join("checkpoint").display().to_string(),
        "--idle-seconds".into(),
        (ctx.args.idle_seconds + 2).to_string(),
    ];
    let idle = Duration::from_secs(ctx.args.idle_seconds);
    let mut first: Option<Duration> = None;
    let mut idle_rss = None;
    let mut command = spark_command(python, &ctx.script, "startup", &args);
    let outcome = measure::run(&mut command, |probe| {
        if let Some(line) = probe.line
            && line.text == "FIRST_BATCH"
        {
            first.get_or_insert(line.at);
        }
        if let Some(at) = first
            && probe.elapsed >= at + idle
        {
            idle_rss.get_or_insert(probe.tree_rss);
        }
        if probe.elapsed > Duration::from_secs(300) {
            Action::Kill
        } else {
            Action::Continue
        }
    })?;
    let _ = std::fs::remove_dir_all(&work);
    let Some(first) = first else {
        return Ok(vec![
            Cell::missing(format!(
                "failed: {}",
                spark_failure(&outcome)
            ));
            2
        ]);
    };
    eprintln!(
        "   Spark: first batch after {} ms, idle RSS {} MiB, peak RSS {} MiB",
        first.as_millis(),
        idle_rss.unwrap_or(0) >> 20,
        outcome.peak_rss >> 20
    );
    Ok(vec![
        Cell::value(first.as_secs_f64() * 1000.0),
        idle_rss.map_or_else(|| Cell::missing("not sampled"), |b| Cell::value(b as f64)),
    ])
}

/// Runs `bench_kafka` (the Kafka → Kafka latency benchmark) when it is built next to this binary;
/// its output lines become notes of the report.
fn kafka_hook(worker: &Path) -> Vec<String> {
    let candidates = ["bench_kafka", "bench-kafka"];
    let Some(binary) = candidates
        .iter()
        .filter_map(|name| sluice_bench::sibling_binary(name).ok())
        .find(|path| path.exists())
    else {
        eprintln!("== Kafka → Kafka latency: bench_kafka is not built in this tree; skipped");
        return vec!["Kafka → Kafka latency: bench_kafka not built in this tree".into()];
    };
    eprintln!("== Kafka → Kafka latency: {}", binary.display());
    // The same worker as the other scenarios.
    match Command::new(&binary).arg("--worker").arg(worker).output() {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            print!("{text}");
            let mut notes: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("bench_kafka: {l}"))
                .collect();
            if !output.status.success() {
                // Say why in the report (e.g. no `$SLUICE_TEST_KAFKA`), not only on a terminal.
                let errors = String::from_utf8_lossy(&output.stderr);
                eprint!("{errors}");
                notes.push(format!(
                    "bench_kafka failed ({}): {}",
                    output.status,
                    errors.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
                ));
            }
            notes
        }
        Err(e) => vec![format!("bench_kafka failed to start: {e}")],
    }
}

fn python_module_version(python: &Path, module: &str) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            &format!("import {module}; print({module}.__version__)"),
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn version_of(worker: &Path) -> String {
    Command::new(worker)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_runs_give_the_median_of_each_column_or_the_reason_of_a_failed_run() {
        let run = |ms: f64, rss: f64| vec![Cell::value(ms), Cell::value(rss)];
        let medians = median_of_runs(vec![run(247.0, 37.0), run(15.0, 38.0), run(29.0, 36.0)]);
        assert_eq!(medians, vec![Cell::value(29.0), Cell::value(37.0)]);
        let failed = vec![Cell::missing("failed: boom"), Cell::value(1.0)];
        let medians = median_of_runs(vec![run(15.0, 38.0), failed]);
        assert_eq!(
            medians,
            vec![Cell::missing("failed: boom"), Cell::value(38.0)]
        );
    }

    fn trigger(ms: u64, rows: u64, duration_ms: u64) -> Trigger {
        Trigger {
            at: Duration::from_millis(ms),
            input_rows: rows,
            duration_ms,
        }
    }

    #[test]
    fn keeping_up_means_the_rate_after_warm_up() {
        // 1M rows/s: 100k rows every 100 ms.
        let steady: Vec<Trigger> = (1..=60).map(|i| trigger(i * 100, 100_000, 40)).collect();
        let trial = kept_up(&steady, 1_000_000, Duration::from_secs(2));
        assert!(trial.sustained);
        assert!((trial.processed - 1_000_000.0).abs() < 1.0);
        // The same triggers at 2M rows/s offered: only half processed.
        assert!(!kept_up(&steady, 2_000_000, Duration::from_secs(2)).sustained);
        // Growing triggers over 2 s are a backlog even at the right average.
        let mut slow = steady.clone();
        slow[50].duration_ms = 2500;
        assert!(!kept_up(&slow, 1_000_000, Duration::from_secs(2)).sustained);
        // Nothing after the warm-up: not sustained.
        assert!(!kept_up(&steady[..5], 1_000_000, Duration::from_secs(2)).sustained);
    }

    #[test]
    fn ladder_finds_the_highest_sustained_rate() {
        let args = Args::parse_from(["bench", "--rate-start", "1000000", "--rate-max", "64000000"]);
        let capacity = 5_000_000u64;
        let mut tried = Vec::new();
        let cell = ladder(&args, |rate| {
            tried.push(rate);
            Ok(RateTrial {
                sustained: rate <= capacity,
                processed: rate.min(capacity) as f64,
                peak_rss: 0,
            })
        });
        assert_eq!(cell, Cell::value(4_000_000.0));
        assert_eq!(tried, vec![1_000_000, 2_000_000, 4_000_000, 8_000_000]);
        let mut tried = Vec::new();
        let cell = ladder(&args, |rate| {
            tried.push(rate);
            Ok(RateTrial {
                sustained: rate <= 300_000,
                processed: 0.0,
                peak_rss: 0,
            })
        });
        assert_eq!(cell, Cell::value(250_000.0));
        assert_eq!(tried, vec![1_000_000, 500_000, 250_000]);
    }
}
