//! The `continuous` trigger: low-latency processing of stateless Kafka → Kafka queries, as Spark's
//! continuous processing.
//!
//! Each task runs a long-lived loop instead of discrete micro-batches: it takes whatever records
//! the source has *now* (waiting at most a few ms), runs the SQL on them and writes them to the sink
//! at once, without writing the offsets log first. Every trigger interval ends an **epoch**: the
//! ranges read during the epoch are merged ([`SourceTask::merge`](crate::source::SourceTask::merge)) and written as one offsets entry
//! plus its commit (batch id = epoch).
//!
//! **Delivery guarantee: at-least-once** (the same as Spark's continuous mode). Output is written
//! before its epoch is checkpointed, so after a crash the records of the unfinished epoch are read
//! and written again. Kafka sink records carry `sluice-batch = epoch × 10⁶ + sub-batch` and
//! `sluice-seq`, so duplicates can be recognized. A failing sub-batch (sink or checkpoint store down)
//! is retried with backoff until it succeeds, reported in `lastError` and
//! `sluice_batch_retries_total`; no record is skipped.
//!
//! Only sources that can merge ranges (Kafka) and stateless SQL are accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::task::{BatchOutcome, RunnerParts, handle_bad_records, merge_with};
use super::{Engine, MAX_RETRY_BACKOFF, RunSummary, Shared, StopHandle, elapsed_ms};
use crate::checkpoint::{CommitEntry, OffsetsEntry};
use crate::error::{EngineError, Result, backoff};
use crate::metrics::TaskLabels;
use crate::progress::{DurationMs, StreamingQueryProgress, TaskProgress};
use crate::source::{PlanLimit, Range};

/// Sub-batch ids within an epoch: `epoch * SUB_BATCHES_PER_EPOCH + n`.
pub const SUB_BATCHES_PER_EPOCH: u64 = 1_000_000;

/// Runs `engine` with the continuous trigger until a stop is requested.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when a source is not Kafka; the first non-retryable error.
pub async fn run(
    mut engine: Engine,
    interval: Duration,
    mut on_progress: impl FnMut(&StreamingQueryProgress),
) -> Result<RunSummary> {
    let spec = &engine.config.query.spec;
    if spec.sources.iter().any(|s| s.kafka.is_none()) {
        return Err(EngineError::InvalidQuery(
            "trigger `continuous` needs Kafka sources (it checkpoints merged offset ranges per epoch)"
                .into(),
        ));
    }
    let (sender, mut receiver) = mpsc::unbounded_channel::<(BatchOutcome, Instant)>();
    let mut handles = Vec::new();
    for runner in std::mem::take(&mut engine.runners) {
        let parts = runner.into_parts();
        let labels = engine.labels(parts.task);
        let context = TaskContext {
            shared: engine.shared.clone(),
            stop: engine.shared.stop.clone(),
            labels,
            interval,
            sender: sender.clone(),
        };
        let stop = context.stop.clone();
        handles.push(tokio::spawn(async move {
            let result = run_task(parts, context).await;
            if result.is_err() {
                // A non-retryable error ends the query: stop the other tasks too.
                stop.request();
            }
            result
        }));
    }
    drop(sender);
    let mut summary = RunSummary::default();
    let mut previous: Option<Instant> = None;
    while let Some((outcome, started)) = receiver.recv().await {
        let outcomes = [outcome];
        let progress = engine.progress(&outcomes, started, previous, chrono::Utc::now());
        previous = Some(started);
        summary.batches += 1;
        summary.input_rows += progress.num_input_rows;
        summary.output_rows += progress.sink.num_output_rows;
        summary.bad_records += progress.num_bad_records;
        // One task's epoch: its busy time is its own execution time.
        let busy_seconds = outcomes[0].progress.duration_ms.trigger_execution as f64 / 1000.0;
        engine.record_metrics(&outcomes, busy_seconds);
        on_progress(&progress);
        if let Ok(mut history) = engine.shared.progress.lock() {
            history.push_back(progress);
            while history.len() > super::PROGRESS_HISTORY {
                history.pop_front();
            }
        }
    }
    for handle in handles {
        handle
            .await
            .map_err(|e| EngineError::Internal(format!("continuous task panicked: {e}")))??;
    }
    Ok(summary)
}

struct TaskContext {
    shared: Arc<Shared>,
    stop: StopHandle,
    labels: TaskLabels,
    interval: Duration,
    sender: mpsc::UnboundedSender<(BatchOutcome, Instant)>,
}

impl TaskContext {
    /// Reports a retryable failure in metrics, `lastError` and the log.
    fn failed(&self, e: &EngineError) {
        self.shared
            .metrics
            .batch_retries
            .get_or_create(&self.labels)
            .inc();
        tracing::warn!(error = %e, "continuous: step failed; retrying");
        if let Ok(mut last) = self.shared.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    /// Runs `step` until it succeeds, retrying retryable errors with backoff (until a stop).
    async fn retry<T, F, Fut>(&self, mut step: F) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures = 0u32;
        loop {
            match step().await {
                Ok(value) => {
                    if failures > 0
                        && let Ok(mut last) = self.shared.last_error.lock()
                    {
                        *last = None;
                    }
                    return Ok(Some(value));
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    self.failed(&e);
                    if self.stop.is_requested() {
                        return Ok(None);
                    }
                    self.stop.sleep(backoff(failures, MAX_RETRY_BACKOFF)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One epoch's accumulated figures.
#[derive(Default)]
struct Epoch {
    ranges: BTreeMap<String, Range>,
    input_rows: u64,
    output_rows: u64,
    bad_records: u64,
    rows_per_source: BTreeMap<String, u64>,
    sub_batches: u64,
}

async fn run_task(mut parts: RunnerParts, context: TaskContext) -> Result<()> {
    let mut epoch_id = parts.next_batch_id;
    // A logged but uncommitted entry: replay it once (its output may already be in the sink:
    // at-least-once), then continue after it.
    if let Some(entry) = parts.pending.take() {
        let mut epoch = Epoch::default();
        let ranges: Vec<(String, Range)> = parts
            .inputs
            .iter()
            .filter_map(|i| {
                entry
                    .sources
                    .get(&i.name)
                    .map(|r| (i.name.clone(), r.clone()))
            })
            .collect();
        for (name, range) in ranges {
            if !process(
                &mut parts,
                &context,
                &mut epoch,
                entry.batch_id,
                &name,
                &range,
            )
            .await?
            {
                return Ok(());
            }
        }
        let started = Instant::now();
        if !commit_epoch(
            &mut parts,
            &context,
            entry.batch_id,
            &epoch,
            Some(entry.clone()),
        )
        .await?
        {
            return Ok(());
        }
        report(&parts, &context, entry.batch_id, &epoch, started, true);
        epoch_id = entry.batch_id + 1;
    }
    while !context.stop.is_requested() {
        let started = Instant::now();
        let mut epoch = Epoch::default();
        while started.elapsed() < context.interval && !context.stop.is_requested() {
            let mut any = false;
            // By index: `process` below needs `parts` mutably while the loop goes on.
            for i in 0..parts.inputs.len() {
                let Some(input) = parts.inputs.get_mut(i) else {
                    break;
                };
                let planned = input.reader.plan(PlanLimit::PerTrigger).await;
                let range = match planned {
                    Ok(Some(range)) => range,
                    Ok(None) => continue,
                    Err(e) if e.is_retryable() => {
                        context.failed(&e);
                        context.stop.sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                any = true;
                let name = input.name.clone();
                let merged = match epoch.ranges.get(&name) {
                    Some(earlier) => input.reader.merge(earlier, &range).ok_or_else(|| {
                        EngineError::InvalidQuery(format!(
                            "trigger `continuous`: source `{name}` cannot merge ranges"
                        ))
                    })?,
                    None => range.clone(),
                };
                epoch.ranges.insert(name.clone(), merged);
                let sub_batch = epoch_id * SUB_BATCHES_PER_EPOCH + epoch.sub_batches;
                if !process(&mut parts, &context, &mut epoch, sub_batch, &name, &range).await? {
                    return Ok(());
                }
                epoch.sub_batches += 1;
            }
            if !any {
                // The source already waited briefly for records; yield before asking again.
                tokio::task::yield_now().await;
            }
        }
        if epoch.ranges.is_empty() {
            continue;
        }
        if !commit_epoch(&mut parts, &context, epoch_id, &epoch, None).await? {
            return Ok(());
        }
        report(&parts, &context, epoch_id, &epoch, started, false);
        epoch_id += 1;
    }
    Ok(())
}

/// Reads `range` of source `name`, runs the SQL and writes the sink as sub-batch `batch_id`,
/// retrying until it succeeds. `Ok(false)` when a stop interrupted the retries.
async fn process(
    parts: &mut RunnerParts,
    context: &TaskContext,
    epoch: &mut Epoch,
    batch_id: u64,
    name: &str,
    range: &Range,
) -> Result<bool> {
    let task = parts.task;
    let Some(index) = parts.inputs.iter().position(|i| i.name == name) else {
        return Err(EngineError::Internal(format!("no input `{name}`")));
    };
    let mut rows: Vec<Vec<arrow::array::RecordBatch>> = Vec::with_capacity(parts.inputs.len());
    let mut output_read = None;
    for (i, input) in parts.inputs.iter_mut().enumerate() {
        if i != index {
            rows.push(Vec::new());
            continue;
        }
        let mut failures = 0u32;
        let output = loop {
            match input.reader.read(range).await {
                Ok(output) => break output,
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    context.failed(&e);
                    if context.stop.is_requested() {
                        return Ok(false);
                    }
                    context
                        .stop
                        .sleep(backoff(failures, MAX_RETRY_BACKOFF))
                        .await;
                }
                Err(e) => return Err(e),
            }
        };
        let policy = input.on_bad_record;
        let location = parts.bad_records.clone();
        let read_rows = output.input_rows();
        let records = output.bad_records;
        if context
            .retry(|| handle_bad_records(&location, task, name, policy, batch_id, &records))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        epoch.bad_records += records.len() as u64;
        output_read = Some(read_rows);
        rows.push(output.batches);
    }
    let input_rows = output_read.unwrap_or(0);
    let result = parts.query.run(rows).await?;
    let sink = Arc::clone(&parts.sink);
    let Some(written) = context
        .retry(|| sink.write(task, batch_id, &result))
        .await?
    else {
        return Ok(false);
    };
    if let Some(input) = parts.inputs.get_mut(index) {
        input.reader.committed(range);
    }
    epoch.input_rows += input_rows;
    epoch.output_rows += written;
    *epoch.rows_per_source.entry(name.to_string()).or_insert(0) += input_rows;
    Ok(true)
}

/// Writes the epoch's merged offsets entry and its commit, then lets retention fold old epochs.
/// `Ok(false)` when a stop interrupted.
async fn commit_epoch(
    parts: &mut RunnerParts,
    context: &TaskContext,
    epoch_id: u64,
    epoch: &Epoch,
    logged: Option<OffsetsEntry>,
) -> Result<bool> {
    let entry = logged.unwrap_or_else(|| OffsetsEntry {
        batch_id: epoch_id,
        planned_ms: chrono::Utc::now().timestamp_millis(),
        sources: epoch.ranges.clone(),
        epoch: None,
    });
    let commit = CommitEntry {
        batch_id: epoch_id,
        committed_ms: chrono::Utc::now().timestamp_millis(),
        input_rows: epoch.input_rows,
        output_rows: epoch.output_rows,
        epoch: None,
        quarantined: None,
        exchange: None,
    };
    let checkpoint = parts.checkpoint.clone();
    let task = parts.task;
    let done = context
        .retry(|| async {
            checkpoint.write_offsets(task, &entry).await?;
            checkpoint.write_commit(task, &commit).await
        })
        .await?;
    if done.is_none() {
        return Ok(false);
    }
    if let Some(due) = parts.retention.record(&entry, merge_with(&parts.inputs)) {
        parts.retention.compact(&checkpoint, due).await;
    }
    Ok(true)
}

fn report(
    parts: &RunnerParts,
    context: &TaskContext,
    epoch_id: u64,
    epoch: &Epoch,
    started: Instant,
    replayed: bool,
) {
    let outcome = BatchOutcome {
        progress: TaskProgress {
            task: parts.task,
            batch_id: epoch_id,
            num_input_rows: epoch.input_rows,
            num_output_rows: epoch.output_rows,
            num_bad_records: epoch.bad_records,
            replayed,
            duration_ms: DurationMs {
                trigger_execution: elapsed_ms(started),
                ..DurationMs::default()
            },
            ..TaskProgress::default()
        },
        rows_per_source: epoch.rows_per_source.clone(),
        // Continuous processing is stateless.
        state: None,
        lookups: parts.query.lookup_progress().to_vec(),
        backlog_per_source: parts
            .inputs
            .iter()
            .filter_map(|i| i.reader.backlog().map(|b| (i.name.clone(), b)))
            .collect(),
    };
    let _ = context.sender.send((outcome, started));
}
