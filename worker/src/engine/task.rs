//! One task's micro-batch: the write-ahead protocol of docs/architecture.md, "The batch protocol".
//!
//! 1. plan the next range of every source and write `offsets/<batchId>` (or take the logged,
//!    uncommitted batch to replay);
//! 2. read exactly that range; set aside bad records;
//! 3. run the SQL;
//! 4. write the sink, idempotently for (task, batchId), and record that it accepted the batch in
//!    `sinks/<batchId>` (a retry or a restart after that skips the sink);
//! 5. write state and learned models, then `commits/<batchId>`.
//!
//! A failure anywhere after step 1 leaves the batch pending: the next attempt (or the next process)
//! replays the same range, so nothing is lost and the sink's idempotence means nothing is doubled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStoreExt;
use sluice_crds::BadRecordPolicy;

use crate::checkpoint::{Checkpoint, CommitEntry, Epoch, OffsetsEntry, TaskLog};
use crate::engine::quarantine::{QuarantinedInput, write_quarantine};
use crate::engine::retention::LogRetention;
use crate::error::{EngineError, Result};
use crate::fault::{CrashPoint, PausePoint, crash_point, delay_point, pause_point};
use crate::ml::TaskModels;
use crate::progress::{DurationMs, TaskProgress};
use crate::sink::Sink;
use crate::source::decode::{BadRecord, bad_records_jsonl, fail_on};
use crate::source::{PlanLimit, Range, SourceTask};
use crate::sql::BatchQuery;
use crate::storage::Location;

/// One source of a task: its name, reader and bad-record policy.
pub struct TaskInput {
    pub name: String,
    pub reader: Box<dyn SourceTask>,
    pub on_bad_record: BadRecordPolicy,
}

/// Where a task's batches go: shared by all tasks of a query.
#[derive(Clone)]
pub struct TaskTargets {
    pub sink: Arc<dyn Sink>,
    pub checkpoint: Checkpoint,
    /// Location for records that did not decode.
    pub bad_records: Location,
    /// Batches each task's checkpoint log keeps (`checkpoint.minBatchesToRetain`).
    pub min_batches_to_retain: u64,
    /// This worker's epoch: written into the task's checkpoint entries, checked before planning
    /// and before committing (`checkpoint/epoch.rs`).
    pub epoch: Epoch,
}

/// Where a source-stage task of a keyed exchange hands its batches (docs/keyed-exchange.md):
/// instead of the sink, one exchange object per key-group range.
#[derive(Clone, Debug)]
pub struct ExchangeTarget {
    /// The ranges rows are split by: the stateful tasks of the current parallelism.
    pub ranges: Vec<crate::key_group::KeyGroupRange>,
    /// A bounded trigger (`availableNow`, `once`): a drained task marks its last commit
    /// `finished`, so it no longer holds the watermark back.
    pub bounded: bool,
}

/// What a finished batch reports.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub progress: TaskProgress,
    /// Input rows per source name.
    pub rows_per_source: BTreeMap<String, u64>,
    /// Backlog per source name after planning.
    pub backlog_per_source: BTreeMap<String, u64>,
    /// State store figures of a stateful query.
    pub state: Option<crate::sql::StateProgress>,
    /// What the batch looked up in PostgreSQL tables.
    pub lookups: Vec<crate::sql::LookupProgress>,
}

/// The batch a task has planned but not committed.
struct Pending {
    entry: OffsetsEntry,
    /// Whether `entry` is in the offsets log already.
    logged: bool,
    /// Whether the sink may have seen this batch before (a replay from the log, or a retry): the
    /// checkpoint's sink record is then read before writing the sink.
    sink_tried: bool,
    /// Rows the sink accepted for this batch, once it did (a retry after a later step failed
    /// skips the sink even when the checkpoint store is down).
    sink_done: Option<u64>,
}

/// A runner taken apart, for the `continuous` trigger (`engine/continuous.rs`).
pub(crate) struct RunnerParts {
    pub task: u32,
    pub inputs: Vec<TaskInput>,
    pub query: BatchQuery,
    pub sink: Arc<dyn Sink>,
    pub checkpoint: Checkpoint,
    pub bad_records: Location,
    pub next_batch_id: u64,
    /// The logged, uncommitted batch.
    pub pending: Option<OffsetsEntry>,
    pub retention: LogRetention,
}

/// Runs micro-batches of one task.
pub struct TaskRunner {
    pub task: u32,
    inputs: Vec<TaskInput>,
    query: BatchQuery,
    sink: Arc<dyn Sink>,
    checkpoint: Checkpoint,
    bad_records: Location,
    next_batch_id: u64,
    pending: Option<Pending>,
    models: TaskModels,
    retention: LogRetention,
    epoch: Epoch,
    /// Set for a source-stage task of a keyed exchange.
    exchange: Option<ExchangeTarget>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

impl TaskRunner {
    /// A runner continuing after the task's log: the uncommitted batch (if any) is replayed first.
    pub fn new(
        task: u32,
        inputs: Vec<TaskInput>,
        query: BatchQuery,
        targets: TaskTargets,
        log: &TaskLog,
        models: TaskModels,
    ) -> Self {
        Self {
            task,
            inputs,
            query,
            sink: targets.sink,
            checkpoint: targets.checkpoint,
            bad_records: targets.bad_records,
            next_batch_id: log.next_batch_id(),
            pending: log.uncommitted().cloned().map(|entry| Pending {
                entry,
                logged: true,
                sink_tried: true,
                sink_done: None,
            }),
            models,
            retention: LogRetention::new(task, targets.min_batches_to_retain, log),
            epoch: targets.epoch,
            exchange: None,
        }
    }

    /// Makes this a source-stage task of a keyed exchange: its batches go to `target`, not to
    /// the sink, and it keeps no state.
    pub fn with_exchange(mut self, target: ExchangeTarget) -> Self {
        self.exchange = Some(target);
        self
    }

    /// Takes the runner apart (the `continuous` trigger drives the pieces itself).
    pub(crate) fn into_parts(self) -> RunnerParts {
        RunnerParts {
            task: self.task,
            inputs: self.inputs,
            query: self.query,
            sink: self.sink,
            checkpoint: self.checkpoint,
            bad_records: self.bad_records,
            next_batch_id: self.next_batch_id,
            pending: self.pending.filter(|p| p.logged).map(|p| p.entry),
            retention: self.retention,
        }
    }

    /// Freezes every source at what is available now (`availableNow`, `once`).
    pub async fn freeze(&mut self) -> Result<()> {
        for input in &mut self.inputs {
            input.reader.freeze().await?;
        }
        Ok(())
    }

    /// Runs one batch: the pending one if any, else a newly planned one. `Ok(None)` when there is
    /// no new input.
    ///
    /// # Errors
    /// Any step's error; the batch stays pending and is replayed by the next call.
    pub async fn run_once(&mut self, limit: PlanLimit) -> Result<Option<BatchOutcome>> {
        // A failed batch must leave learned models as they were: its replay trains them again.
        let models_before = self.models.learned_state()?;
        let result = self.run_batch(limit).await;
        if result.is_err() {
            self.models.restore(models_before)?;
        }
        result
    }

    /// The id of the batch this task has planned but not committed, if any.
    pub fn pending_batch(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.entry.batch_id)
    }

    /// The learned models of this task (for progress).
    pub fn models(&self) -> &TaskModels {
        &self.models
    }

    async fn run_batch(&mut self, limit: PlanLimit) -> Result<Option<BatchOutcome>> {
        let started = Instant::now();
        let mut durations = DurationMs::default();
        let replayed = self.pending.as_ref().is_some_and(|p| p.logged);
        if self.pending.is_none() {
            // A newer worker may own the task now: stop before planning anything.
            self.checkpoint.check_epoch(self.task, &self.epoch).await?;
            let mut sources = BTreeMap::new();
            for input in &mut self.inputs {
                if let Some(range) = input.reader.plan(limit).await? {
                    sources.insert(input.name.clone(), range);
                }
            }
            // A stateful query also runs a batch without input when the watermark moved (Spark's
            // no-data batch): append mode emits the windows it closed, state is evicted.
            // A source-stage task of a keyed exchange commits once even with nothing to read,
            // so that the stateful stage knows it holds no older events (`next_plan`).
            let first_exchange_batch = self.exchange.is_some() && self.next_batch_id == 0;
            if sources.is_empty() && !self.query.wants_no_data_batch() && !first_exchange_batch {
                return Ok(None);
            }
            let entry = OffsetsEntry {
                batch_id: self.next_batch_id,
                planned_ms: now_ms(),
                sources,
                epoch: Some(self.epoch.clone()),
            };
            self.pending = Some(Pending {
                entry,
                logged: false,
                sink_tried: false,
                sink_done: None,
            });
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(EngineError::Internal("no pending batch".into()));
        };
        if !pending.logged {
            self.checkpoint
                .write_offsets(self.task, &pending.entry)
                .await?;
            pending.logged = true;
        }
        let entry = pending.entry.clone();
        durations.wal_commit = elapsed_ms(started);

        // Read.
        let phase = Instant::now();
        let mut rows = Vec::with_capacity(self.inputs.len());
        let mut rows_per_source = BTreeMap::new();
        let mut bad_total = 0u64;
        let mut lost_offsets = 0u64;
        let mut lost_ranges = 0u64;
        let mut data_loss = Vec::new();
        let mut upstream_watermark = None;
        for input in &mut self.inputs {
            let Some(range) = entry.sources.get(&input.name) else {
                rows.push(Vec::new());
                continue;
            };
            let output = input.reader.read(range).await?;
            let count = output.input_rows();
            rows_per_source.insert(input.name.clone(), count);
            bad_total += output.bad_records.len() as u64;
            lost_offsets += output.lost_offsets;
            lost_ranges += output.lost_ranges;
            data_loss.extend(output.data_loss);
            upstream_watermark = upstream_watermark.or(output.upstream_watermark_ms);
            handle_bad_records(
                &self.bad_records,
                self.task,
                &input.name,
                input.on_bad_record,
                entry.batch_id,
                &output.bad_records,
            )
            .await?;
            rows.push(output.batches);
        }
        durations.get_batch = elapsed_ms(phase);

        // Process: models are scored as they stood before this batch, then trained on it.
        let phase = Instant::now();
        self.models.refresh_files().await?;
        for (name, table) in self.models.tables()? {
            self.query.set_table(&name, table)?;
        }
        let training: Vec<(String, Vec<arrow::record_batch::RecordBatch>)> =
            if self.models.has_learned_models() {
                self.inputs
                    .iter()
                    .map(|i| i.name.clone())
                    .zip(rows.iter().cloned())
                    .collect()
            } else {
                Vec::new()
            };
        self.query.set_upstream_watermark(upstream_watermark);
        let (output, exchange) = match &self.exchange {
            None => (self.query.run(rows).await?, None),
            Some(target) => {
                let staged = self.query.run_source_stage(rows).await?;
                let objects = match &staged.rows {
                    Some(rows) => {
                        crate::checkpoint::exchange::write_batch(
                            &self.checkpoint,
                            self.task,
                            entry.batch_id,
                            rows,
                            &staged.key_groups,
                            &target.ranges,
                        )
                        .await?
                    }
                    None => Vec::new(),
                };
                let caught_up = self
                    .inputs
                    .iter()
                    .all(|i| i.reader.backlog().is_none_or(|b| b == 0));
                let exchange = crate::checkpoint::exchange::ExchangeCommit {
                    objects,
                    max_event_ms: staged.max_event_ms,
                    caught_up,
                    finished: target.bounded && caught_up,
                };
                (Vec::new(), Some(exchange))
            }
        };
        for (source, batches) in &training {
            self.models.train(source, batches)?;
        }
        durations.query_planning_and_execution = elapsed_ms(phase);

        let phase = Instant::now();
        let written = if exchange.is_some() {
            // The exchange objects are the batch's output; the stateful stage writes the sink.
            crash_point(CrashPoint::AfterExchangeWrite, entry.batch_id);
            0
        } else {
            // Sink, once per batch: a batch the sink accepted before (this process knows, or
            // the checkpoint's sink record says) is not written again.
            let written = self.write_sink(entry.batch_id, &output).await?;
            delay_point(CrashPoint::AfterSinkWrite, entry.batch_id).await;
            crash_point(CrashPoint::AfterSinkWrite, entry.batch_id);

            // State and learned models before the commit: a restart loads the state of the
            // last committed batch, so every committed batch must have it on record.
            self.query
                .write_state(&self.checkpoint, self.task, entry.batch_id)
                .await?;
            delay_point(CrashPoint::MidStateWrite, entry.batch_id).await;
            crash_point(CrashPoint::MidStateWrite, entry.batch_id);
            written
        };
        durations.add_batch = elapsed_ms(phase);

        // Commit.
        let phase = Instant::now();
        if self.models.has_learned_models() {
            self.checkpoint
                .write_models(self.task, entry.batch_id, &self.models.learned_state()?)
                .await?;
        }
        let input_rows: u64 = rows_per_source.values().sum();
        let commit = CommitEntry {
            batch_id: entry.batch_id,
            committed_ms: now_ms(),
            input_rows,
            output_rows: written,
            epoch: Some(self.epoch.clone()),
            quarantined: None,
            exchange,
        };
        self.checkpoint.check_epoch(self.task, &self.epoch).await?;
        delay_point(CrashPoint::BeforeCommit, entry.batch_id).await;
        crash_point(CrashPoint::BeforeCommit, entry.batch_id);
        self.checkpoint.write_commit(self.task, &commit).await?;
        self.query.commit_state();
        durations.commit = elapsed_ms(phase);
        for input in &mut self.inputs {
            if let Some(range) = entry.sources.get(&input.name) {
                input.reader.committed(range);
            }
        }
        self.pending = None;
        self.next_batch_id = entry.batch_id + 1;
        if let Some(due) = self.retention.record(&entry, merge_with(&self.inputs)) {
            // A source-stage task keeps the commits the stateful stage has not planned yet: the
            // planner reads their exchange records.
            let planned = match &self.exchange {
                None => true,
                Some(_) => crate::source::exchange::planned_through(&self.checkpoint, self.task)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|through| due.through() <= through),
            };
            if planned {
                self.retention.compact(&self.checkpoint, due).await;
            }
        }
        durations.trigger_execution = elapsed_ms(started);

        let backlog_per_source = self
            .inputs
            .iter()
            .filter_map(|i| i.reader.backlog().map(|b| (i.name.clone(), b)))
            .collect();
        Ok(Some(BatchOutcome {
            progress: TaskProgress {
                task: self.task,
                batch_id: entry.batch_id,
                // A stateful task's input is the source stage's rows, counted there already.
                num_input_rows: if self.query.stage() == crate::sql::Stage::Merge {
                    0
                } else {
                    input_rows
                },
                num_output_rows: written,
                num_bad_records: bad_total,
                replayed,
                num_lost_ranges: lost_ranges,
                num_lost_offsets: lost_offsets,
                data_loss,
                duration_ms: durations,
            },
            rows_per_source,
            backlog_per_source,
            state: self.query.state_progress(),
            lookups: self.query.lookup_progress().to_vec(),
        }))
    }

    /// Quarantines the pending batch (`onPoisonBatch: quarantine`, after it failed `attempts`
    /// times with `error`): writes its input to the bad-records location
    /// ([`write_quarantine`]), then commits it as skipped, with the state and learned models as
    /// they stood before it, so the sink never sees it and the next batch follows. Returns the
    /// batch id and the rows quarantined; `None` when no batch is pending.
    ///
    /// # Errors
    /// A retryable error when a source cannot be read again for an outage, or the checkpoint or
    /// bad-records store fails (the batch stays pending; the next failure quarantines it again).
    pub async fn quarantine_pending(
        &mut self,
        attempts: u32,
        error: &str,
    ) -> Result<Option<(u64, u64)>> {
        let Some(pending) = self.pending.as_ref() else {
            return Ok(None);
        };
        let entry = pending.entry.clone();
        let mut inputs = Vec::new();
        for input in &mut self.inputs {
            let Some(range) = entry.sources.get(&input.name) else {
                continue;
            };
            let rows = match input.reader.read_whole(range).await {
                Ok(output) => Ok(output.batches),
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => Err(e.to_string()),
            };
            inputs.push(QuarantinedInput {
                source: input.name.clone(),
                range: range.clone(),
                rows,
            });
        }
        let message = format!(
            "poison batch {} of task {} quarantined after {attempts} attempts: {error}",
            entry.batch_id, self.task
        );
        let rows = write_quarantine(
            &self.bad_records,
            self.task,
            entry.batch_id,
            &inputs,
            &message,
        )
        .await?;
        if self.exchange.is_none() {
            self.query.stage_unchanged_state();
            self.query
                .write_state(&self.checkpoint, self.task, entry.batch_id)
                .await?;
        }
        if self.models.has_learned_models() {
            self.checkpoint
                .write_models(self.task, entry.batch_id, &self.models.learned_state()?)
                .await?;
        }
        let commit = CommitEntry {
            batch_id: entry.batch_id,
            committed_ms: now_ms(),
            input_rows: rows,
            output_rows: 0,
            epoch: Some(self.epoch.clone()),
            quarantined: Some(error.to_string()),
            // Skipped: nothing handed over, but the stateful stage must see the batch committed.
            exchange: self
                .exchange
                .as_ref()
                .map(|_| crate::checkpoint::exchange::ExchangeCommit::default()),
        };
        self.checkpoint.check_epoch(self.task, &self.epoch).await?;
        self.checkpoint.write_commit(self.task, &commit).await?;
        self.query.commit_state();
        for input in &mut self.inputs {
            if let Some(range) = entry.sources.get(&input.name) {
                input.reader.committed(range);
            }
        }
        self.pending = None;
        self.next_batch_id = entry.batch_id + 1;
        if let Some(due) = self.retention.record(&entry, merge_with(&self.inputs)) {
            self.retention.compact(&self.checkpoint, due).await;
        }
        Ok(Some((entry.batch_id, rows)))
    }

    /// Writes the batch's output to the sink unless the sink accepted it already, then records in
    /// the checkpoint that it did (`tasks/<p>/sinks/<batchId>`, before the commit). Returns the
    /// rows the sink accepted.
    ///
    /// # Errors
    /// The sink's or the checkpoint's error; the batch stays pending.
    async fn write_sink(
        &mut self,
        batch_id: u64,
        output: &[arrow::record_batch::RecordBatch],
    ) -> Result<u64> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(EngineError::Internal("no pending batch".into()));
        };
        let written = match pending.sink_done {
            Some(rows) => rows,
            None => {
                let recorded = if pending.sink_tried {
                    self.checkpoint
                        .read_sink_record(self.task, batch_id)
                        .await?
                } else {
                    None
                };
                match recorded {
                    Some(rows) => {
                        tracing::info!(
                            task = self.task,
                            batch_id,
                            "the sink accepted this batch before: not writing it again"
                        );
                        pending.sink_done = Some(rows);
                        return Ok(rows);
                    }
                    None => {
                        pending.sink_tried = true;
                        let rows = self.sink.write(self.task, batch_id, output).await?;
                        pending.sink_done = Some(rows);
                        pause_point(PausePoint::AfterSinkCommit, batch_id).await;
                        rows
                    }
                }
            }
        };
        self.checkpoint
            .write_sink_record(self.task, batch_id, written, Some(&self.epoch))
            .await?;
        Ok(written)
    }

    /// Backlog of each source now (rows or files), for metrics when no batch ran.
    pub fn backlog(&self) -> BTreeMap<String, u64> {
        self.inputs
            .iter()
            .filter_map(|i| i.reader.backlog().map(|b| (i.name.clone(), b)))
            .collect()
    }
}

/// Merges two ranges of a source with that source's reader (what checkpoint retention folds with).
pub(crate) fn merge_with(
    inputs: &[TaskInput],
) -> impl Fn(&str, &Range, &Range) -> Option<Range> + '_ {
    move |source, earlier, later| {
        inputs
            .iter()
            .find(|input| input.name == source)?
            .reader
            .merge(earlier, later)
    }
}

/// Applies a source's bad-record policy to the records of one batch.
pub(crate) async fn handle_bad_records(
    location: &Location,
    task: u32,
    source: &str,
    policy: BadRecordPolicy,
    batch_id: u64,
    records: &[BadRecord],
) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    match policy {
        BadRecordPolicy::Fail => Err(fail_on(first)),
        BadRecordPolicy::Drop => Ok(()),
        BadRecordPolicy::Quarantine => {
            // Deterministic name: a replay rewrites the same object.
            let path = location.child(&format!("{source}/task-{task}/batch-{batch_id:020}.jsonl"));
            location
                .store
                .put(&path, bad_records_jsonl(records).into())
                .await
                .map_err(|e| EngineError::storage(path.to_string(), e))?;
            Ok(())
        }
    }
}
