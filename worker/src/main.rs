//! `sluice-worker`: runs a StreamingQuery manifest.
//!
//! - `sluice-worker run <manifest>`: locally, no cluster; prints one progress line per trigger and
//!   stops cleanly on Ctrl-C after the current batch (a second Ctrl-C exits at once).
//! - `sluice-worker pod --manifest <path>`: inside Kubernetes; replica index from the pod name's
//!   ordinal (or `SLUICE_REPLICA_INDEX`), replica count from `SLUICE_REPLICA_COUNT`, checkpoint from
//!   `SLUICE_CHECKPOINT_LOCATION`.
//!
//! - `sluice-worker check <manifest> [--checkpoint LOC]`: validates without running and prints a
//!   JSON report (`stateful`, `groupBy`, `partitionKeys`, `tasks`, `fingerprint`); exit 2 when the
//!   manifest, the SQL or its fit with an existing checkpoint is invalid (the operator's upgrade
//!   guard).
//!
//! - `sluice-worker checkpoint list|show|restore --manifest <path>`: the checkpoint's retained
//!   batches, one batch in detail, restoring the query to a retained batch (`cli/checkpoint.rs`).
//!
//! `SLUICE_ROW_COST_MICROS` (load tests, benchmarks): simulated processing cost per input row and
//! replica, so that one replica's capacity is known (`1e6 / cost` rows/s).
//!
//! Exit codes: 0 stopped or finished, 1 failed (the error is printed), 2 bad manifest or a refused
//! restore, 3 poison batch. On a poison batch the worker also writes one line,
//! `PoisonBatch: batch <id> task <t> after <n> attempts: <error>`, to the container termination
//! message path: `SLUICE_TERMINATION_LOG`, else `/dev/termination-log` for `pod` (not for `run`);
//! see `termination.rs`. With `SLUICE_REPORT_HOLD_SECONDS` set (by the operator on its Job and
//! worker pods), the outcome line and the exit code are then served on `GET /report` (port
//! 9465) until the operator read them: `report.rs`.

mod display;
mod cli {
    pub mod checkpoint;
}

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_crds::contract;
use sluice_crds::contract::JobReport;
use sluice_worker::control::ControlAuth;
use sluice_worker::engine::describe_sink;
use sluice_worker::memory;
use sluice_worker::report;
use sluice_worker::termination;
use sluice_worker::{Engine, ErrorClass, QueryConfig, Shared};

#[derive(Parser)]
#[command(name = "sluice-worker", version, about = "Run a Sluice StreamingQuery")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Checkpoint location (path or URL); overrides the manifest's.
    #[arg(long)]
    checkpoint: Option<String>,
    /// Serve /metrics, /progress, /healthz, /stop on this address: `PORT` (on 127.0.0.1) or
    /// `ADDR:PORT` (port 0: any free port).
    #[arg(long, value_parser = parse_http_addr)]
    http: Option<SocketAddr>,
    /// File holding the token that `POST /stop` must bear (`Authorization: Bearer <token>`);
    /// without it, `SLUICE_CONTROL_TOKEN`; without either, /stop is open (to whoever can reach
    /// the address).
    #[arg(long, env = contract::ENV_CONTROL_TOKEN_FILE)]
    control_token_file: Option<PathBuf>,
    /// Local file locations (sources, tables, models, file sink, checkpoint) must be under one of
    /// these directories (comma-separated); `s3://` is not affected.
    #[arg(long, env = "SLUICE_ALLOWED_PATHS", value_delimiter = ',')]
    allowed_paths: Vec<PathBuf>,
    /// `/healthz` answers 503 while a batch has run longer than this (e.g. `15m`); overrides
    /// `spec.health.maxBatchDuration`.
    #[arg(long, value_parser = parse_max_batch_duration)]
    max_batch_duration: Option<std::time::Duration>,
    /// This replica's index (0-based).
    #[arg(long, default_value_t = 0)]
    replica: u32,
    /// Number of replicas sharing the query's tasks.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// With `trigger: once / availableNow`, also write the run's `Run: batches <first>..<last>,
    /// <rows> rows` line to this file (a Job's `/dev/termination-log`).
    #[arg(long)]
    termination_log: Option<PathBuf>,
    /// Memory the worker sizes its batches' reads within, in bytes with an optional K, M, G or T
    /// suffix (powers of 1024), e.g. `512M`. Default: half of the container's memory limit
    /// (cgroup), or 256M without one.
    #[arg(long, env = ENV_MEMORY_BUDGET, value_parser = parse_memory_budget)]
    memory_budget: Option<u64>,
}

/// The environment variable of `--memory-budget`.
const ENV_MEMORY_BUDGET: &str = "SLUICE_MEMORY_BUDGET";

#[derive(Subcommand)]
enum Command {
    /// Run a manifest locally.
    Run {
        /// StreamingQuery manifest (YAML).
        manifest: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Validate a manifest (and its fit with a checkpoint) without running it; prints JSON.
    Check {
        /// StreamingQuery manifest (YAML).
        manifest: PathBuf,
        /// Checkpoint location to check the query against (partition counts, state fingerprint).
        #[arg(long)]
        checkpoint: Option<String>,
        /// As for `run`.
        #[arg(long, env = "SLUICE_ALLOWED_PATHS", value_delimiter = ',')]
        allowed_paths: Vec<PathBuf>,
        /// Also write the outcome as one JSON document to this file (a check Job's
        /// `/dev/termination-log`, which Kubernetes reports as the termination message).
        #[arg(long)]
        termination_log: Option<PathBuf>,
    },
    /// Inspect the checkpoint's retained batches or restore the query to one of them.
    Checkpoint {
        #[command(subcommand)]
        command: cli::checkpoint::CheckpointCommand,
    },
    /// Run inside a Kubernetes pod (replica from the environment).
    Pod {
        #[arg(long, default_value = "/etc/sluice/query.yaml")]
        manifest: PathBuf,
        #[arg(long, default_value_t = 9464)]
        http_port: u16,
        /// File holding the control token (the operator mounts it from the query's Secret);
        /// without it, `SLUICE_CONTROL_TOKEN`; without either, `POST /stop` is refused.
        #[arg(long, env = contract::ENV_CONTROL_TOKEN_FILE)]
        control_token_file: Option<PathBuf>,
        /// As for `run`.
        #[arg(long, env = "SLUICE_ALLOWED_PATHS", value_delimiter = ',')]
        allowed_paths: Vec<PathBuf>,
        /// As for `run`.
        #[arg(long)]
        termination_log: Option<PathBuf>,
        /// As for `run` (the pod's memory limit is read from its cgroup).
        #[arg(long, env = ENV_MEMORY_BUDGET, value_parser = parse_memory_budget)]
        memory_budget: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let cli = Cli::parse();
    // A pod reports a poison batch in its termination message; a local run only when asked
    // (`check` writes its own outcome with `--termination-log`).
    let termination_log = match &cli.command {
        Command::Pod {
            termination_log, ..
        } => termination_log.clone().or_else(|| {
            termination::termination_log_path(Some(termination::DEFAULT_TERMINATION_LOG))
        }),
        Command::Run { args, .. } => args
            .termination_log
            .clone()
            .or_else(|| termination::termination_log_path(None)),
        // `check` and `checkpoint restore` write their own outcome.
        Command::Check { .. } | Command::Checkpoint { .. } => None,
    };
    // Where this command's one-line outcome ends up, for `GET /report` (see `report.rs`).
    let report_source = match &cli.command {
        Command::Check {
            termination_log, ..
        } => termination_log.clone(),
        Command::Checkpoint { .. } => termination::termination_log_path(None).or_else(|| {
            let default = std::path::Path::new(termination::DEFAULT_TERMINATION_LOG);
            default.exists().then(|| default.to_path_buf())
        }),
        Command::Pod { .. } | Command::Run { .. } => termination_log.clone(),
    };
    // A continuous worker reports only an abnormal end; a Job's command always reports.
    let report_on_success = !matches!(cli.command, Command::Pod { .. });
    if let Some(path) = &report_source {
        // A message of an earlier start of this container must not pass for this one's.
        let _ = std::fs::remove_file(path);
    }
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if let (Some(path), Some(engine_error)) = (
                termination_log.as_deref(),
                e.downcast_ref::<sluice_worker::EngineError>(),
            ) {
                termination::write_termination_message(path, engine_error);
            }
            // 2: the manifest is invalid; 3: a poison batch (restarting replays it again).
            let code = match e.downcast_ref::<sluice_worker::EngineError>() {
                Some(
                    sluice_worker::EngineError::Manifest(_)
                    | sluice_worker::EngineError::RestoreRefused(_),
                ) => 2,
                Some(sluice_worker::EngineError::PoisonBatch { .. }) => 3,
                _ => 1,
            };
            if termination_log.is_some()
                && e.downcast_ref::<sluice_worker::EngineError>()
                    .and_then(termination::termination_message)
                    .is_none()
                && let Some(path) = &report_source
            {
                // Any other error: its chain is the report (and the termination message).
                termination::write_message(path, &error_chain(&e));
            }
            code
        }
    };
    if let Some(hold) = report::hold_from_env()
        && (code != 0 || report_on_success)
    {
        let job_report = JobReport {
            exit_code: code,
            message: report_source
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default(),
            starts: report::starts(),
        };
        if let Err(e) = runtime.block_on(report::hold(job_report, hold)) {
            eprintln!("warning: cannot serve GET /report: {e}");
        }
    }
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (manifest, args, auth) = match cli.command {
        Command::Run { manifest, args } => {
            let auth =
                ControlAuth::from_sources(args.control_token_file.as_deref(), ControlAuth::Open)
                    .map_err(anyhow::Error::msg)?;
            (manifest, args, auth)
        }
        Command::Check {
            manifest,
            checkpoint,
            allowed_paths,
            termination_log,
        } => {
            let result = check(&manifest, checkpoint.as_deref(), &allowed_paths).await;
            if let Some(path) = termination_log {
                write_check_outcome(&path, &result)?;
            }
            return result.map(|_| ());
        }
        Command::Checkpoint { command } => return cli::checkpoint::run(command).await,
        Command::Pod {
            manifest,
            http_port,
            control_token_file,
            allowed_paths,
            termination_log,
            memory_budget,
        } => {
            // The report of a crash says how often this pod's worker has started.
            let _ = report::count_start();
            // Reachable from the whole cluster: no token, no control.
            let auth =
                ControlAuth::from_sources(control_token_file.as_deref(), ControlAuth::Disabled)
                    .map_err(anyhow::Error::msg)?;
            let args = RunArgs {
                checkpoint: std::env::var(contract::ENV_CHECKPOINT_LOCATION).ok(),
                http: Some(SocketAddr::from(([0, 0, 0, 0], http_port))),
                replica: replica_index_from_env()?,
                replicas: std::env::var(contract::ENV_REPLICA_COUNT)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                control_token_file,
                allowed_paths,
                max_batch_duration: None,
                termination_log,
                memory_budget,
            };
            (manifest, args, auth)
        }
    };
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let query = sluice_crds::parse_manifest(&text).map_err(sluice_worker::EngineError::from)?;
    confine(&args.allowed_paths, &query.spec, args.checkpoint.as_deref())?;
    let sink = describe_sink(&query.spec.sink);
    let mut config = QueryConfig::local(query);
    if let Some(checkpoint) = &args.checkpoint {
        config.checkpoint_location = checkpoint.clone();
    }
    config.replica = args.replica;
    config.max_batch_duration = args.max_batch_duration;
    config.replicas = args.replicas.max(1);
    let (budget, origin) = match args.memory_budget {
        Some(bytes) => (bytes, memory::BudgetOrigin::Configured),
        None => memory::default_budget(),
    };
    config.memory_budget = Some(budget);
    tracing::info!(
        "memory budget {} MiB ({})",
        budget >> 20,
        match origin {
            memory::BudgetOrigin::Configured => "--memory-budget".to_string(),
            memory::BudgetOrigin::ContainerLimit(limit) =>
                format!("half of the container's {} MiB limit", limit >> 20),
            memory::BudgetOrigin::Default => "no container memory limit found".to_string(),
        }
    );
    if let Some(micros) = std::env::var("SLUICE_ROW_COST_MICROS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.row_cost = std::time::Duration::from_micros(micros);
    }
    anyhow::ensure!(
        config.replica < config.replicas,
        "--replica {} must be below --replicas {}",
        config.replica,
        config.replicas
    );

    let shared = Shared::new();
    if let Some(addr) = args.http {
        let bound = sluice_worker::http::serve_with_auth(addr, shared.clone(), auth)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("serving /metrics /progress /healthz /stop on http://{bound}");
    }
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the current batch (Ctrl-C again to exit now)");
            stop.request();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    #[cfg(unix)]
    {
        // Kubernetes sends SIGTERM: stop at a batch boundary as for Ctrl-C.
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                stop.request();
            }
        });
    }

    let checkpoint = config.checkpoint_location.clone();
    let result = run_engine(config, shared.clone(), &checkpoint, &args, &sink).await;
    shared.mark_stopped();
    if shared.stop.is_requested() {
        // Let a waiting `POST /stop` send its response before the process exits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    result
}

/// Writes a check's outcome for the operator (`contract::CheckOutcomeReport`), messages cut to
/// the termination message's size.
fn write_check_outcome(
    path: &std::path::Path,
    result: &anyhow::Result<contract::CheckReport>,
) -> anyhow::Result<()> {
    let outcome = match result {
        Ok(report) => contract::CheckOutcomeReport::Valid {
            report: report.clone(),
        },
        Err(e) => {
            let mut message = error_chain(e);
            if message.len() > contract::MAX_MESSAGE {
                let mut end = contract::MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            let refused = e
                .downcast_ref::<sluice_worker::EngineError>()
                .is_some_and(|e| matches!(e, sluice_worker::EngineError::Manifest(_)));
            if refused {
                contract::CheckOutcomeReport::Refused { message }
            } else {
                contract::CheckOutcomeReport::Failed { message }
            }
        }
    };
    std::fs::write(path, serde_json::to_string(&outcome)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn check(
    manifest: &std::path::Path,
    checkpoint: Option<&str>,
    allowed_paths: &[PathBuf],
) -> anyhow::Result<contract::CheckReport> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let query = sluice_crds::parse_manifest(&text).map_err(sluice_worker::EngineError::from)?;
    confine(allowed_paths, &query.spec, checkpoint)?;
    match sluice_worker::check::check(&query, checkpoint).await {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report)?);
            Ok(report)
        }
        // A store that cannot be reached says nothing about the manifest: exit 1, retry later.
        Err(e) if e.class() == ErrorClass::External => Err(classify(e)),
        // Already names its field (e.g. `spec.sql`).
        Err(e @ sluice_worker::EngineError::Manifest(_)) => Err(e.into()),
        // Every other refusal is a bad manifest for the caller (exit 2).
        Err(e) => Err(
            sluice_worker::EngineError::Manifest(sluice_crds::CrdError::Invalid(
                sluice_crds::ValidationError {
                    path: "spec".into(),
                    message: e.to_string(),
                },
            ))
            .into(),
        ),
    }
}

async fn run_engine(
    config: QueryConfig,
    shared: std::sync::Arc<Shared>,
    checkpoint: &str,
    args: &RunArgs,
    sink: &str,
) -> anyhow::Result<()> {
    let engine = match Engine::start(config, shared).await {
        Ok(engine) => engine,
        Err(e) => return Err(classify(e)),
    };
    eprintln!(
        "running tasks {:?} (replica {} of {}), checkpoint {checkpoint}",
        engine.tasks(),
        args.replica,
        args.replicas.max(1),
    );
    let bounded = engine.trigger().is_bounded();
    let drain_total = if bounded { engine.backlog() } else { None };
    let display = display::Display::new(drain_total);
    let summary = engine.run(|progress| display.update(progress)).await;
    display.finish();
    let summary = summary.map_err(classify)?;
    display.println(&format!(
        "query stopped: {} batches, {} input rows, {} rows written to {sink}{}",
        summary.batches,
        summary.input_rows,
        summary.output_rows,
        if summary.bad_records > 0 {
            format!(", {} bad records set aside", summary.bad_records)
        } else {
            String::new()
        }
    ));
    if bounded {
        // The one-shot run's result for the operator (status.lastRun): stderr and the Job's
        // termination message.
        let report = contract::RunReport {
            first_batch_id: summary.first_batch_id.and_then(|id| i64::try_from(id).ok()),
            last_batch_id: summary.last_batch_id.and_then(|id| i64::try_from(id).ok()),
            rows: i64::try_from(summary.output_rows).unwrap_or(i64::MAX),
        };
        eprintln!("{report}");
        if let Some(path) = &args.termination_log {
            termination::write_message(path, &report.to_string());
        }
    }
    Ok(())
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message before it
/// already ends with (thiserror's `"...: {0}"` variants carry their source in their own text).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn classify(e: sluice_worker::EngineError) -> anyhow::Error {
    let hint = match e.class() {
        ErrorClass::User => "fix the manifest, SQL or data",
        ErrorClass::External => "a store or server failed",
        ErrorClass::Internal => "this is a bug in Sluice",
    };
    anyhow::Error::new(e).context(hint)
}

/// Refuses local locations outside `--allowed-paths` (nothing to check without it).
fn confine(
    roots: &[PathBuf],
    spec: &sluice_crds::StreamingQuerySpec,
    checkpoint: Option<&str>,
) -> anyhow::Result<()> {
    if roots.is_empty() {
        return Ok(());
    }
    let allowed = sluice_worker::confine::AllowedPaths::new(roots).map_err(anyhow::Error::msg)?;
    allowed.check_spec(spec, checkpoint)?;
    Ok(())
}

/// `--max-batch-duration` value: a positive duration (`90s`, `15m`).
fn parse_max_batch_duration(value: &str) -> Result<std::time::Duration, String> {
    match sluice_crds::duration::parse_duration(value)? {
        d if d.is_zero() => Err("must be positive".into()),
        d => Ok(d),
    }
}

/// `--memory-budget` value: bytes with an optional K, M, G or T suffix (`memory::parse_budget`).
fn parse_memory_budget(value: &str) -> Result<u64, String> {
    memory::parse_budget(value).map_err(|e| e.to_string())
}

/// `--http` value: a bare port binds 127.0.0.1 (local runs are not exposed to the network unless
/// asked, e.g. `0.0.0.0:9464`).
fn parse_http_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("`{value}` is neither a port nor an ADDR:PORT address"))
}

/// Replica index: `SLUICE_REPLICA_INDEX`, else the ordinal suffix of the StatefulSet pod name
/// (`HOSTNAME=my-query-3` → 3).
fn replica_index_from_env() -> anyhow::Result<u32> {
    if let Ok(index) = std::env::var(contract::ENV_REPLICA_INDEX) {
        return index
            .parse()
            .context("SLUICE_REPLICA_INDEX must be a number");
    }
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    Ok(host
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
