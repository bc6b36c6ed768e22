//! `sluice-worker checkpoint list|show|restore`: a query's retained batches, one batch in
//! detail, and restoring the query to one of them (a new checkpoint generation; see
//! `sluice_worker::checkpoint::restore`).
//!
//! The checkpoint is the one the query runs on: `--checkpoint`, else `SLUICE_CHECKPOINT_LOCATION`
//! (set in the operator's pods and Jobs), else the manifest's `spec.checkpoint.location`, else
//! `checkpoints/<name>` as for `run`.
//!
//! `restore` exits 0 once the new generation is current (or already was the restore of the
//! batch), 2 with a one-line reason on stderr when refused (batch not retained, not committed,
//! or a sink that would duplicate the replayed output) or the manifest is invalid, 1 when a store
//! failed (run it again). The same line goes to the termination message file
//! (`SLUICE_TERMINATION_LOG`, else `/dev/termination-log` when it exists and is writable), where
//! Kubernetes shows it on the Job's pod.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use sluice_crds::contract;
use sluice_worker::checkpoint::generation::Generations;
use sluice_worker::checkpoint::restore::{self, CheckpointListing};
use sluice_worker::storage::Location;
use sluice_worker::{EngineError, QueryConfig, termination};

/// Options every `checkpoint` command takes.
#[derive(clap::Args)]
pub struct Target {
    /// StreamingQuery manifest (YAML).
    #[arg(long)]
    manifest: PathBuf,
    /// Checkpoint location (path or URL); overrides the manifest's.
    #[arg(long, env = contract::ENV_CHECKPOINT_LOCATION)]
    checkpoint: Option<String>,
    /// As for `run`.
    #[arg(long, env = "SLUICE_ALLOWED_PATHS", value_delimiter = ',')]
    allowed_paths: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// Retained batch ids per task with their offsets and watermark.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Offsets, commit, sink record and state files of one batch (JSON).
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        batch_id: u64,
    },
    /// Roll the query back to the state after a retained batch, in a new checkpoint generation;
    /// the next run replays the input after it. Stop the query first.
    Restore {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        batch_id: u64,
    },
}

/// Runs a `checkpoint` command.
pub async fn run(command: CheckpointCommand) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::List { target, json } => {
            let (generations, _) = open(&target)?;
            let listing = restore::list(&generations).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", table(&listing));
            }
            Ok(())
        }
        CheckpointCommand::Show { target, batch_id } => {
            let (generations, _) = open(&target)?;
            let details = restore::show(&generations, batch_id).await?;
            println!("{}", serde_json::to_string_pretty(&details)?);
            Ok(())
        }
        CheckpointCommand::Restore { target, batch_id } => {
            let result = restore_batch(&target, batch_id).await;
            let line = match &result {
                Ok(line) => line.clone(),
                Err(e) => format!("error: {}", one_line(e)),
            };
            write_termination_message(&line);
            let line = result?;
            println!("{line}");
            Ok(())
        }
    }
}

async fn restore_batch(target: &Target, batch_id: u64) -> anyhow::Result<String> {
    let (generations, spec) = open(target)?;
    let outcome = restore::restore(&generations, &spec.sink, batch_id).await?;
    if let Some(warning) = &outcome.warning {
        eprintln!("warning: {warning}");
    }
    Ok(if outcome.created {
        format!(
            "restored to batch {batch_id}: checkpoint generation {} (from generation {}) is current; \
             the next run replays the input after batch {batch_id} ({} rows had been written after it)",
            outcome.generation, outcome.from_generation, outcome.rows_replayed
        )
    } else {
        format!(
            "already restored to batch {batch_id}: checkpoint generation {} is current",
            outcome.generation
        )
    })
}

/// The manifest's generations and spec.
fn open(target: &Target) -> anyhow::Result<(Generations, sluice_crds::StreamingQuerySpec)> {
    let text = std::fs::read_to_string(&target.manifest)
        .with_context(|| format!("cannot read {}", target.manifest.display()))?;
    let query = sluice_crds::parse_manifest(&text).map_err(EngineError::from)?;
    let mut config = QueryConfig::local(query);
    if let Some(checkpoint) = &target.checkpoint {
        config.checkpoint_location = checkpoint.clone();
    }
    if !target.allowed_paths.is_empty() {
        let allowed = sluice_worker::confine::AllowedPaths::new(&target.allowed_paths)
            .map_err(anyhow::Error::msg)?;
        allowed.check_spec(&config.query.spec, Some(&config.checkpoint_location))?;
    }
    let base = Location::parse(&config.checkpoint_location)?;
    Ok((Generations::new(base), config.query.spec))
}

/// The error's chain on one line (the termination message and stderr show one line).
fn one_line(e: &anyhow::Error) -> String {
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
    text.replace('\n', " ")
}

/// Writes `line` to the termination message file: `SLUICE_TERMINATION_LOG`, else
/// `/dev/termination-log` when it exists (in a pod; outside one there is nothing to report).
fn write_termination_message(line: &str) {
    let default = Path::new(termination::DEFAULT_TERMINATION_LOG)
        .exists()
        .then_some(termination::DEFAULT_TERMINATION_LOG);
    if let Some(path) = termination::termination_log_path(default) {
        termination::write_message(&path, line);
    }
}

/// The human table of `checkpoint list`.
fn table(listing: &CheckpointListing) -> String {
    let mut out = format!(
        "checkpoint {} (generation {}{})\n",
        listing.location,
        listing.generation,
        listing
            .restored_from
            .as_ref()
            .map(|r| format!(
                ", restored from generation {} at batch {}",
                r.from_generation, r.batch_id
            ))
            .unwrap_or_default()
    );
    for task in &listing.tasks {
        out.push_str(&format!("task {}:\n", task.task));
        out.push_str(&format!(
            "  {:>8}  {:<9}  {:>10}  {:>10}  {:<24}  {}\n",
            "BATCH", "STATUS", "INPUT", "OUTPUT", "WATERMARK", "OFFSETS"
        ));
        for batch in &task.batches {
            let status = match (batch.compacted, batch.committed) {
                (true, _) => "compacted",
                (false, true) => "committed",
                (false, false) => "planned",
            };
            let figure = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
            let watermark = batch
                .watermark_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into());
            let offsets = batch
                .offsets
                .iter()
                .map(|(source, summary)| format!("{source}: {summary}"))
                .collect::<Vec<_>>()
                .join("; ");
            out.push_str(&format!(
                "  {:>8}  {:<9}  {:>10}  {:>10}  {:<24}  {}\n",
                batch.batch_id,
                status,
                figure(batch.input_rows),
                figure(batch.output_rows),
                watermark,
                offsets
            ));
        }
    }
    out
}
