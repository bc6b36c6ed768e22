//! `bench-nexmark`: the Nexmark suite (`bench/nexmark/q*.yaml`) on Sluice, Flink and Spark, side
//! by side on the same events and cores (issue 20; docs/bench.md, "Nexmark"). `bench/run.sh --nexmark`
//! runs it.
//!
//! For `--events` N (default 10 M) it writes the events of the `nexmark` source once as JSON lines,
//! `<cache>/nexmark-<N>/<table>/part-<k>.json` ([`sluice_bench::nexmark::write_parts`]), then runs
//! every query four ways:
//! - **Sluice, generator**: the manifest as committed with `maxEvents: N` and the `noop` sink, the
//!   events made in process — the setting of the published per-core figures (Flink's and DBSP's
//!   Nexmark sources generate in process too);
//! - **Sluice, files**: the same query with each `nexmark` source replaced by a `file` source over
//!   the JSON lines (the source's own Arrow schema as the file schema), `noop` sink;
//! - **Flink** (PyFlink, `bench/flink/nexmark_flink.py`): the same query in Flink SQL over the same
//!   files into a `blackhole` sink, parallelism 2;
//! - **Spark** (PySpark Structured Streaming, `bench/spark/nexmark_spark.py`): the same query in
//!   Spark SQL over the same files into the `noop` sink, `local[2]`, `availableNow`. A query Spark
//!   cannot run on a stream is refused by Spark's own analysis, and its reason is the figure.
//!
//! Figures, all measured here:
//! - events/s = N / seconds. Sluice: worker spawn to exit (start-up included). Flink and Spark:
//!   the query's submission to its end, minus the same query's run over an empty input (the
//!   MiniCluster's start and the job's deployment, ~5-10 s; Spark's first batch's planning and
//!   code generation: left out in the JVM engines' favour);
//! - events/s per core = N / CPU seconds (user + system): Sluice the worker process's
//!   (`wait4`), Flink's and Spark's the JVM's over the query (minus the empty run's), so an engine
//!   that keeps both cores busy is not credited twice. The published figures are the same ratio
//!   (nexmark/nexmark: events / (cores × time));
//! - peak RSS of the process tree.
//!
//! Nothing is faked: a run that fails or reads fewer rows than generated shows why instead of a
//! number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};
use sluice_bench::engines::run_sluice;
use sluice_bench::measure::{self, Action};
use sluice_bench::nexmark::{TABLES, write_parts};
use sluice_crds::{
    ColumnSpec, FileFormat, FileSourceSpec, NexmarkTable, NoopSinkSpec, SinkSpec, StreamingQuery,
};

const GIB: u64 = 1024 * 1024 * 1024;

/// Published events/s per core (nexmark/nexmark README: Flink 1.13, 8 × 8-core workers,
/// 100 M events; "Throughput/Cores"), by query.
const FLINK_PUBLISHED: [(&str, f64); 22] = [
    ("q0", 155_020.0),
    ("q1", 157_940.0),
    ("q2", 175_210.0),
    ("q3", 152_120.0),
    ("q4", 34_330.0),
    ("q5", 22_140.0),
    ("q7", 12_330.0),
    ("q8", 146_140.0),
    ("q9", 14_240.0),
    ("q10", 57_810.0),
    ("q11", 39_700.0),
    ("q12", 75_670.0),
    ("q13", 130_730.0),
    ("q14", 161_230.0),
    ("q15", 72_420.0),
    ("q16", 18_650.0),
    ("q17", 116_800.0),
    ("q18", 53_700.0),
    ("q19", 44_040.0),
    ("q20", 18_980.0),
    ("q21", 98_490.0),
    ("q22", 129_960.0),
];

/// Published DBSP (Feldera) events/s per core, as the issue quotes them (lower bound of a range).
const DBSP_PUBLISHED: [(&str, f64); 3] = [("q0", 860_000.0), ("q4", 740_000.0), ("q5", 870_000.0)];

#[derive(Parser)]
#[command(about = "The Nexmark suite on Sluice, Flink and Spark, side by side")]
struct Args {
    /// Events of the stream (all three tables), each engine's input.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Queries to run, comma-separated (default: every manifest in bench/nexmark).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
    /// Files per table for the file runs.
    #[arg(long, default_value_t = 16)]
    parts: u64,
    /// Where the generated events are kept between runs.
    #[arg(long, env = "SLUICE_BENCH_CACHE")]
    cache: Option<PathBuf>,
    /// Scratch directory for checkpoints.
    #[arg(long, default_value = "/tmp/sluice-bench-nexmark")]
    work: PathBuf,
    /// Results directory (nexmark.json).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// The worker binary; default: `sluice-worker` next to this binary.
    #[arg(long, env = "SLUICE_BENCH_WORKER")]
    worker: Option<PathBuf>,
    /// Python with PyFlink (`bench/run.sh --install-flink` makes one).
    #[arg(long, env = "SLUICE_BENCH_FLINK_PYTHON")]
    flink_python: Option<PathBuf>,
    /// Skip Flink even when PyFlink is installed.
    #[arg(long)]
    no_flink: bool,
    /// Python with PySpark (`bench/run.sh --install-spark` makes one).
    #[arg(long, env = "SLUICE_BENCH_PYTHON")]
    spark_python: Option<PathBuf>,
    /// Skip Spark even when PySpark is installed.
    #[arg(long)]
    no_spark: bool,
    /// Print the table of a saved `nexmark.json` and exit (nothing is run).
    #[arg(long)]
    render: Option<PathBuf>,
}

/// One engine's figures for one query, or why there are none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Figures {
    #[serde(skip_serializing_if = "Option::is_none")]
    events_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events_per_core_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl Figures {
    fn missing(note: impl Into<String>) -> Self {
        Self {
            note: Some(note.into()),
            ..Self::default()
        }
    }

    fn measured(events: u64, seconds: f64, cpu: f64, peak_rss: u64) -> Self {
        Self {
            events_per_second: Some(events as f64 / seconds.max(1e-9)),
            events_per_core_second: Some(events as f64 / cpu.max(1e-9)),
            peak_rss_bytes: Some(peak_rss),
            seconds: Some(seconds),
            cpu_seconds: Some(cpu),
            note: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryResult {
    query: String,
    what: String,
    tasks: u32,
    sluice_generator: Figures,
    sluice_files: Figures,
    flink: Figures,
    /// Absent in reports written before the Spark side existed.
    #[serde(default)]
    spark: Figures,
    #[serde(skip_serializing_if = "Option::is_none")]
    flink_published_per_core: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dbsp_published_per_core: Option<f64>,
    /// Reports before q5 and q7 ran whole measured their first stage only.
    #[serde(default)]
    first_stage_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Results {
    date: String,
    machine: String,
    events: u64,
    sluice_worker: String,
    flink_version: Option<String>,
    #[serde(default)]
    spark_version: Option<String>,
    queries: Vec<QueryResult>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(saved) = &args.render {
        let report: Results = serde_json::from_str(&std::fs::read_to_string(saved)?)?;
        println!("{}", table(&report));
        return Ok(());
    }
    let worker = match &args.worker {
        Some(path) => path.clone(),
        None => sluice_bench::sibling_binary("sluice-worker")?,
    };
    if !worker.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p sluice-worker` or pass --worker",
            worker.display()
        );
    }
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("nexmark");
    let flink = Jvm::find(
        "Flink",
        "flink/nexmark_flink.py",
        sluice_bench::venv_python(args.flink_python.as_deref(), "flink-venv"),
        "apache-flink",
        args.no_flink,
        "PyFlink not installed (bench/run.sh --nexmark --install-flink)",
    );
    let spark = Jvm::find(
        "Spark",
        "spark/nexmark_spark.py",
        sluice_bench::venv_python(args.spark_python.as_deref(), "bench-venv"),
        "pyspark",
        args.no_spark,
        "PySpark not installed (bench/run.sh --nexmark --install-spark)",
    );

    let cache = args
        .cache
        .clone()
        .unwrap_or_else(sluice_bench::default_cache);
    let data = cached_events(&cache, args.events, args.parts)?;
    let empty = cached_events(&cache, 0, 1)?;

    let mut names: Vec<String> = if args.queries.is_empty() {
        std::fs::read_dir(&suite)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".yaml").map(str::to_string))
            .collect()
    } else {
        args.queries.clone()
    };
    names.sort_by_key(|q| q.trim_start_matches('q').parse::<u32>().unwrap_or(u32::MAX));

    let mut results = Vec::new();
    for name in &names {
        let text = std::fs::read_to_string(suite.join(format!("{name}.yaml")))
            .with_context(|| format!("query {name}"))?;
        let what = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .to_string();
        let query = sluice_crds::parse_manifest(&text).with_context(|| format!("{name}.yaml"))?;
        let tasks = query
            .spec
            .sources
            .iter()
            .filter_map(|s| s.nexmark.as_ref().map(|n| n.partitions))
            .max()
            .unwrap_or(1);
        let work = sluice_bench::fresh(&args.work.join(name))?;
        eprintln!("== {name}: Sluice, generator ({} events)", args.events);
        let generator = run_sluice_query(
            &worker,
            &work.join("generator"),
            &generator_manifest(&query, args.events, &work.join("generator/checkpoint")),
        );
        eprintln!("== {name}: Sluice, files");
        let files = run_sluice_query(
            &worker,
            &work.join("files"),
            &files_manifest(&query, &data, &work.join("files/checkpoint")),
        );
        let flink_figures = flink.run(name, &data, &empty, &work);
        let spark_figures = spark.run(name, &data, &empty, &work);
        let _ = std::fs::remove_dir_all(&work);
        let published = |table: &[(&str, f64)]| {
            table
                .iter()
                .find(|(q, _)| q == name)
                .map(|(_, per_core)| *per_core)
        };
        let figures = |f: &Figures| match (f.events_per_second, f.events_per_core_second) {
            (Some(rate), Some(per_core)) => format!("{rate:.0} events/s, {per_core:.0} per core"),
            _ => f.note.clone().unwrap_or_default(),
        };
        eprintln!(
            "   generator {} | files {} | flink {} | spark {}",
            figures(&with_events(generator.clone(), args.events)),
            figures(&with_events(files.clone(), args.events)),
            figures(&flink_figures),
            figures(&spark_figures)
        );
        results.push(QueryResult {
            query: name.clone(),
            what,
            tasks,
            sluice_generator: with_events(generator, args.events),
            sluice_files: with_events(files, args.events),
            flink: flink_figures,
            spark: spark_figures,
            flink_published_per_core: published(&FLINK_PUBLISHED),
            dbsp_published_per_core: published(&DBSP_PUBLISHED),
            first_stage_only: false,
        });
    }

    let report = Results {
        date: sluice_bench::rfc3339_ms(sluice_bench::now_ms()),
        machine: sluice_bench::machine(),
        events: args.events,
        sluice_worker: worker.display().to_string(),
        flink_version: flink.version.clone(),
        spark_version: spark.version.clone(),
        queries: results,
    };
    println!("{}", table(&report));
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("nexmark.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A Sluice run's outcome before the event count is applied: seconds, CPU seconds, peak RSS.
#[derive(Debug, Clone)]
enum SluiceOutcome {
    Ran { seconds: f64, cpu: f64, rss: u64 },
    Failed(String),
}

fn with_events(outcome: SluiceOutcome, events: u64) -> Figures {
    match outcome {
        SluiceOutcome::Ran { seconds, cpu, rss } => Figures::measured(events, seconds, cpu, rss),
        SluiceOutcome::Failed(why) => Figures::missing(why),
    }
}

/// Runs one manifest to its end (`availableNow`), bounded to 30 min and 16 GiB.
fn run_sluice_query(
    worker: &Path,
    work: &Path,
    manifest: &anyhow::Result<String>,
) -> SluiceOutcome {
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => return SluiceOutcome::Failed(format!("{e:#}")),
    };
    let run = run_sluice(worker, work, manifest, false, |probe, _| {
        if probe.elapsed > Duration::from_secs(1800) || probe.tree_rss > 16 * GIB {
            Action::Kill
        } else {
            Action::Continue
        }
    });
    let run = match run {
        Ok(run) => run,
        Err(e) => return SluiceOutcome::Failed(format!("spawn: {e}")),
    };
    if let Some(failure) = run.failure() {
        // A user error (exit 2, or the worker's "fix the manifest, SQL or data" prefix): the
        // engine refused the query before it ran and says why.
        let prefix = "fix the manifest, SQL or data: ";
        let failure = failure.trim_start_matches("error: ");
        let (verdict, failure) = match failure.strip_prefix(prefix) {
            Some(reason) => ("refused", reason),
            None if run.outcome.exit_code == Some(2) => ("refused", failure),
            None => ("failed", failure),
        };
        eprintln!("   {verdict}: {failure}");
        return SluiceOutcome::Failed(format!("{verdict}: {failure}"));
    }
    let (input, output) = run.summary.unwrap_or_default();
    eprintln!(
        "   {input} input rows, {output} output rows in {:.2}s ({:.2} CPU s), {} batches, peak RSS {} MiB",
        run.outcome.wall.as_secs_f64(),
        run.outcome.cpu.as_secs_f64(),
        run.triggers.len(),
        run.outcome.peak_rss >> 20
    );
    SluiceOutcome::Ran {
        seconds: run.outcome.wall.as_secs_f64(),
        cpu: run.outcome.cpu.as_secs_f64(),
        rss: run.outcome.peak_rss,
    }
}

/// The committed manifest with `maxEvents: events`, the `noop` sink and `checkpoint`.
fn generator_manifest(
    query: &StreamingQuery,
    events: u64,
    checkpoint: &Path,
) -> anyhow::Result<String> {
    let mut query = query.clone();
    for source in &mut query.spec.sources {
        if let Some(nexmark) = &mut source.nexmark {
            nexmark.max_events = Some(events);
        }
    }
    finish(query, checkpoint)
}

/// The committed manifest with each `nexmark` source read from `data/<table>/` instead.
fn files_manifest(
    query: &StreamingQuery,
    data: &Path,
    checkpoint: &Path,
) -> anyhow::Result<String> {
    let mut query = query.clone();
    for source in &mut query.spec.sources {
        let Some(nexmark) = source.nexmark.take() else {
            continue;
        };
        let table = match nexmark.table {
            NexmarkTable::Person => TABLES[0],
            NexmarkTable::Auction => TABLES[1],
            NexmarkTable::Bid => TABLES[2],
        };
        source.file = Some(FileSourceSpec {
            path: data.join(table).display().to_string(),
            format: FileFormat::Json,
            max_files_per_trigger: Some(1),
            partitions: nexmark.partitions,
            header: true,
            delimiter: None,
            max_record_bytes: None,
        });
        source.schema = sluice_worker::source::nexmark::table_schema(nexmark.table)
            .fields()
            .iter()
            .map(|field| ColumnSpec {
                name: field.name().clone(),
                data_type: type_name(field.data_type()).to_string(),
                nullable: false,
            })
            .collect();
    }
    finish(query, checkpoint)
}

/// The file schema type of a Nexmark column.
fn type_name(data_type: &arrow::datatypes::DataType) -> &'static str {
    use arrow::datatypes::DataType;
    match data_type {
        DataType::Int64 => "long",
        DataType::Timestamp(..) => "timestamp",
        _ => "string",
    }
}

/// Sets the `noop` sink and the checkpoint; the manifest as JSON (which YAML reads).
fn finish(mut query: StreamingQuery, checkpoint: &Path) -> anyhow::Result<String> {
    query.spec.sink = SinkSpec {
        noop: Some(NoopSinkSpec {}),
        ..SinkSpec::default()
    };
    query.spec.checkpoint.location = Some(checkpoint.display().to_string());
    Ok(serde_json::to_string_pretty(&query)?)
}

/// The events as JSON lines, generated once: `cache/nexmark-<events>x<parts>`.
fn cached_events(cache: &Path, events: u64, parts: u64) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("nexmark-{events}x{parts}"));
    let marker = dir.join(sluice_bench::COMPLETE_MARKER);
    if marker.exists() {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    eprintln!("writing {events} Nexmark events to {}", dir.display());
    let started = std::time::Instant::now();
    // Event times 10,000 events/s apart: the source's spacing when `eventsPerSecond` is unset.
    let counts = write_parts(&dir, events, 10_000, parts)?;
    eprintln!(
        "   {} persons, {} auctions, {} bids in {:.1}s",
        counts.persons,
        counts.auctions,
        counts.bids,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&marker, format!("{events} {parts}\n"))?;
    Ok(dir)
}

/// A JVM engine driven by a Python script (PyFlink or PySpark) in its venv.
struct Jvm {
    name: &'static str,
    script: PathBuf,
    python: Option<PathBuf>,
    /// The installed package's version; `None` when it is not installed or skipped.
    version: Option<String>,
    /// Why the engine does not run, when it does not.
    missing: Option<&'static str>,
    /// The script takes `--checkpoint <dir>` (Spark's query needs one; Flink's keeps none).
    takes_checkpoint: bool,
}

impl Jvm {
    fn find(
        name: &'static str,
        script: &str,
        python: Option<PathBuf>,
        package: &str,
        skip: bool,
        not_installed: &'static str,
    ) -> Self {
        let version = if skip {
            None
        } else {
            python.as_deref().and_then(|p| package_version(p, package))
        };
        let missing = match (&version, skip) {
            (_, true) => Some("skipped"),
            (None, false) => Some(not_installed),
            (Some(_), false) => None,
        };
        Self {
            name,
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join(script),
            python,
            version,
            missing,
            takes_checkpoint: name == "Spark",
        }
    }

    /// The query over `data`, less its run over `empty` (the engine's fixed start cost).
    fn run(&self, query: &str, data: &Path, empty: &Path, work: &Path) -> Figures {
        let python = match (&self.python, self.missing) {
            (Some(python), None) => python,
            (_, why) => return Figures::missing(why.unwrap_or("not installed")),
        };
        eprintln!("== {query}: {}", self.name);
        let full = match self.once(python, query, data, &work.join("full")) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("   {e:#}");
                return Figures::missing(format!("{e:#}"));
            }
        };
        let base = match self.once(python, query, empty, &work.join("empty")) {
            Ok(run) => run,
            Err(e) => return Figures::missing(format!("failed on the empty input: {e:#}")),
        };
        eprintln!(
            "   {:.2}s ({:.2} CPU s), empty input {:.2}s ({:.2} CPU s), peak RSS {} MiB",
            full.0,
            full.1,
            base.0,
            base.1,
            full.2 >> 20
        );
        Figures::measured(events_of(data), full.0 - base.0, full.1 - base.1, full.2)
    }

    /// One run: `(seconds, CPU seconds, peak RSS of the python + JVM tree)`. The script prints
    /// `DONE seconds=<s> cpu=<c>`, or `UNSUPPORTED <reason>` when the engine refuses the query.
    fn once(
        &self,
        python: &Path,
        query: &str,
        data: &Path,
        checkpoint: &Path,
    ) -> anyhow::Result<(f64, f64, u64)> {
        let _ = std::fs::remove_dir_all(checkpoint);
        let mut command = Command::new(python);
        command
            .arg(&self.script)
            .arg(query)
            .arg("--data")
            .arg(data)
            .env("PYFLINK_CLIENT_EXECUTABLE", python)
            .env("PYSPARK_PYTHON", python);
        if self.takes_checkpoint {
            command.arg("--checkpoint").arg(checkpoint);
        }
        let mut done = None;
        let mut unsupported = None;
        let outcome = measure::run(&mut command, |probe| {
            if let Some(line) = probe.line {
                if let Some(rest) = line.text.strip_prefix("DONE ") {
                    let field = |name: &str| {
                        rest.split(' ')
                            .find_map(|f| f.strip_prefix(name))
                            .and_then(|v| v.parse::<f64>().ok())
                    };
                    done = field("seconds=").zip(field("cpu="));
                } else if let Some(reason) = line.text.strip_prefix("UNSUPPORTED ") {
                    unsupported = Some(reason.to_string());
                }
            }
            if probe.elapsed > Duration::from_secs(3600) || probe.tree_rss > 16 * GIB {
                Action::Kill
            } else {
                Action::Continue
            }
        })?;
        if let Some(reason) = unsupported {
            bail!("refused: {reason}");
        }
        match (outcome.exit_code, done) {
            (Some(0), Some((seconds, cpu))) => Ok((seconds, cpu, outcome.peak_rss)),
            _ => {
                // A JVM that ran out of heap says so first; the Python side then only sees the
                // gateway's connection drop.
                let line = |needle: &str| {
                    outcome
                        .lines
                        .iter()
                        .find(|l| l.text.contains(needle))
                        .map(|l| l.text.clone())
                };
                let why = line("java.lang.OutOfMemoryError")
                    .or_else(|| {
                        outcome
                            .lines
                            .iter()
                            .rev()
                            .find(|l| l.text.contains("Exception:") || l.text.contains("Error:"))
                            .map(|l| l.text.clone())
                    })
                    .unwrap_or_else(|| outcome.tail(3));
                bail!("failed: {why}")
            }
        }
    }
}

/// N of a data folder named `nexmark-<N>x<parts>`.
fn events_of(data: &Path) -> u64 {
    data.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nexmark-"))
        .and_then(|n| n.split('x').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The version of a Python package installed in `python`'s environment.
fn package_version(python: &Path, package: &str) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The Markdown table of docs/bench.md.
fn table(report: &Results) -> String {
    let rate = |v: Option<f64>| match v {
        Some(v) if v >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) => format!("{:.0} k", v / 1e3),
        None => "—".into(),
    };
    let rss = |f: &Figures| {
        f.peak_rss_bytes
            .map_or("—".into(), |b| format!("{} MiB", b >> 20))
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "—".into(),
    };
    let mut out = format!(
        "Nexmark, {} events, {}\n\n| query | tasks | Sluice gen events/s | per core | RSS | Sluice files events/s | per core | RSS | Flink files events/s | per core | RSS | Spark files events/s | per core | RSS | files: Sluice/Flink per core | files: Sluice/Spark per core | Flink published per core | DBSP published per core |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        report.events, report.machine
    );
    for q in &report.queries {
        let name = if q.first_stage_only {
            format!("{} (1st stage)", q.query)
        } else {
            q.query.clone()
        };
        // A refusal's reason is long and the same for several queries: the README lists them.
        let note = |f: &Figures, value: String| match (&f.note, f.events_per_second) {
            (Some(note), None) if note.starts_with("refused") => "refused".to_string(),
            (Some(note), None) => note.chars().take(60).collect(),
            _ => value,
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            q.tasks,
            note(
                &q.sluice_generator,
                rate(q.sluice_generator.events_per_second)
            ),
            rate(q.sluice_generator.events_per_core_second),
            rss(&q.sluice_generator),
            note(&q.sluice_files, rate(q.sluice_files.events_per_second)),
            rate(q.sluice_files.events_per_core_second),
            rss(&q.sluice_files),
            note(&q.flink, rate(q.flink.events_per_second)),
            rate(q.flink.events_per_core_second),
            rss(&q.flink),
            note(&q.spark, rate(q.spark.events_per_second)),
            rate(q.spark.events_per_core_second),
            rss(&q.spark),
            ratio(
                q.sluice_files.events_per_core_second,
                q.flink.events_per_core_second
            ),
            ratio(
                q.sluice_files.events_per_core_second,
                q.spark.events_per_core_second
            ),
            rate(q.flink_published_per_core),
            rate(q.dbsp_published_per_core),
        ));
    }
    out
}
