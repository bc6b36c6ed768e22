//! The micro-batch engine: builds a query's sources, sink and per-task runners from a manifest, and
//! runs triggers until the trigger says stop or someone asks it to.
//!
//! A worker replica `i` of `n` runs the tasks `t` with `t % n == i` (docs/architecture.md). Each
//! trigger runs one batch on every assigned task in parallel (one tokio task each), then reports
//! one [`StreamingQueryProgress`]. Retryable failures (a store or server down) leave the batch
//! pending and are retried with backoff, reported in metrics and progress, never a crash loop; user
//! errors stop the query with the error.

pub mod continuous;
pub mod exchange;
pub mod quarantine;
pub mod retention;
mod stop;
pub mod task;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sluice_crds::{
    PoisonBatchPolicy, StreamingQuery, StreamingQuerySpec, duration::parse_duration,
};

pub use self::stop::StopHandle;
use self::task::{BatchOutcome, TaskInput, TaskRunner, TaskTargets};
use crate::checkpoint::{Checkpoint, CheckpointMetadata};
use crate::error::{EngineError, Result, backoff};
use crate::metrics::{Metrics, TaskLabels};
use crate::ml::TaskModels;
use crate::progress::{DurationMs, SinkProgress, SourceProgress, StreamingQueryProgress};
use crate::source::{PlanLimit, Source};
use crate::sql::{BatchQuery, Extensions};
use crate::storage::Location;

/// How many progress entries `/progress` keeps.
pub const PROGRESS_HISTORY: usize = 100;
/// Pause between polls of an idle source under the default trigger.
pub const IDLE_POLL: Duration = Duration::from_millis(50);
/// Longest pause between retries of a failing batch.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Attempts a batch failing deterministically gets before it is a poison batch
/// (`spec.maxBatchAttempts`).
pub const DEFAULT_MAX_BATCH_ATTEMPTS: u32 = 3;

/// When triggers fire (Spark's `Trigger`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// Next batch as soon as the previous one ends.
    Default,
    /// A batch every interval (late batches start at once).
    ProcessingTime(Duration),
    /// Everything available at start in one unbounded batch per task, then stop.
    Once,
    /// Everything available at start, in per-trigger-limited batches, then stop.
    AvailableNow,
    /// Records flow as they arrive; offsets checkpointed every interval (one epoch), see
    /// [`continuous`].
    Continuous(Duration),
}

impl Trigger {
    /// The trigger a spec asks for.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for `continuous` (not in this build) or a bad interval.
    pub fn from_spec(spec: &StreamingQuerySpec) -> Result<Self> {
        let trigger = &spec.trigger;
        if let Some(text) = &trigger.continuous {
            return parse_duration(text)
                .map(Self::Continuous)
                .map_err(|m| EngineError::InvalidQuery(format!("spec.trigger.continuous: {m}")));
        }
        if trigger.once == Some(true) {
            return Ok(Self::Once);
        }
        if trigger.available_now == Some(true) {
            return Ok(Self::AvailableNow);
        }
        match &trigger.processing_time {
            Some(text) => parse_duration(text).map(Self::ProcessingTime).map_err(|m| {
                EngineError::InvalidQuery(format!("spec.trigger.processingTime: {m}"))
            }),
            None => Ok(Self::Default),
        }
    }

    /// True for triggers that stop when the input available at start is drained.
    pub fn is_bounded(self) -> bool {
        matches!(self, Self::Once | Self::AvailableNow)
    }
}

/// Everything needed to run a query in this process.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    pub query: StreamingQuery,
    /// Resolved checkpoint location (URL or local path).
    pub checkpoint_location: String,
    /// This replica's index, `0..replicas`.
    pub replica: u32,
    pub replicas: u32,
    /// Simulated processing cost per input row, paid once per replica and round (the replica's
    /// tasks share it, as if they shared one core). Zero in production; load tests and
    /// benchmarks set it (`SLUICE_ROW_COST_MICROS`) so that one replica's capacity is known:
    /// `1 / row_cost` rows/s.
    pub row_cost: Duration,
    /// Overrides `spec.health.maxBatchDuration` (`--max-batch-duration`).
    pub max_batch_duration: Option<Duration>,
    /// Bytes of memory this replica sizes its batches' reads within (`--memory-budget`; see
    /// [`crate::memory`]): shared evenly by this replica's tasks and the query's sources.
    /// `None`: no budget, batches bounded only by the sources' own options.
    pub memory_budget: Option<u64>,
}

impl QueryConfig {
    /// Config for a local run: checkpoint from the spec, else `./checkpoints/<name>`; one replica.
    pub fn local(query: StreamingQuery) -> Self {
        let name = query
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "query".into());
        let checkpoint_location = query
            .spec
            .checkpoint
            .location
            .clone()
            .unwrap_or_else(|| format!("checkpoints/{name}"));
        Self {
            query,
            checkpoint_location,
            replica: 0,
            replicas: 1,
            row_cost: Duration::ZERO,
            max_batch_duration: None,
            memory_budget: None,
        }
    }

    fn name(&self) -> String {
        self.query
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "query".into())
    }

    fn namespace(&self) -> String {
        self.query
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Batches committed by this run.
    pub batches: u64,
    pub input_rows: u64,
    pub output_rows: u64,
    pub bad_records: u64,
    /// Poison batches quarantined (`onPoisonBatch: quarantine`).
    pub quarantined_batches: u64,
    /// Lowest and highest batch id committed by this run (over its tasks).
    pub first_batch_id: Option<u64>,
    pub last_batch_id: Option<u64>,
}

/// State shared with the HTTP endpoints.
pub struct Shared {
    pub metrics: Metrics,
    pub progress: Mutex<VecDeque<StreamingQueryProgress>>,
    pub stop: StopHandle,
    /// The last retryable error, cleared by the next committed batch.
    pub last_error: Mutex<Option<String>>,
    /// Set once the trigger loop has exited (after its final commit); `POST /stop` waits for it.
    pub stopped: tokio::sync::watch::Sender<bool>,
    /// When the running round of batches started; `None` between rounds.
    batch_started: Mutex<Option<Instant>>,
    /// A round running longer makes `/healthz` unhealthy (`spec.health.maxBatchDuration`).
    max_batch_duration: Mutex<Option<Duration>>,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::new(),
            progress: Mutex::new(VecDeque::new()),
            stop: StopHandle::default(),
            last_error: Mutex::new(None),
            stopped: tokio::sync::watch::Sender::new(false),
            batch_started: Mutex::new(None),
            max_batch_duration: Mutex::new(None),
        })
    }

    /// Sets the bound on a round's duration that `/healthz` checks (`None`: no bound).
    pub fn set_max_batch_duration(&self, bound: Option<Duration>) {
        if let Ok(mut slot) = self.max_batch_duration.lock() {
            *slot = bound;
        }
    }

    /// Marks the start (`true`) or the end (`false`) of a round of batches.
    pub fn set_batch_running(&self, running: bool) {
        if let Ok(mut slot) = self.batch_started.lock() {
            *slot = running.then(Instant::now);
        }
    }

    /// Why the worker is unhealthy, if it is: the running batch has taken longer than the bound.
    /// Retryable errors do not count (the worker is waiting for a server, as it should).
    pub fn unhealthy_reason(&self) -> Option<String> {
        let bound = (*self.max_batch_duration.lock().ok()?)?;
        let running = self.batch_started.lock().ok()?.map(|s| s.elapsed())?;
        (running > bound).then(|| {
            format!(
                "the current batch has run for {:.1}s, longer than spec.health.maxBatchDuration ({:.1}s)",
                running.as_secs_f64(),
                bound.as_secs_f64()
            )
        })
    }

    /// Marks the trigger loop as exited: every batch it started is committed or abandoned.
    pub fn mark_stopped(&self) {
        self.stopped.send_replace(true);
    }

    /// Waits until [`Shared::mark_stopped`] was called.
    pub async fn wait_stopped(&self) {
        let mut receiver = self.stopped.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}

/// Reads the spec's static tables (each task holds its own copy, refreshed on its own).
///
/// # Errors
/// As [`crate::sql::StaticTable::open`].
/// Plans a query's SQL for one task exactly as the engine runs it: the sources' schemas and
/// watermarks, the static tables, the models' functions and tables. Also used by
/// `sluice-worker check`, so the operator's upgrade guard refuses what a start would refuse.
///
/// # Errors
/// As [`BatchQuery::with_tables`].
pub async fn plan_query(
    spec: &StreamingQuerySpec,
    inputs: &[(String, arrow::datatypes::SchemaRef)],
    models: &TaskModels,
) -> Result<BatchQuery> {
    let mut query = BatchQuery::with_tables(
        &spec.sql,
        inputs.to_vec(),
        spec.sql_scope,
        spec.output_mode,
        source_watermarks(spec)?,
        open_tables(spec).await?,
        extensions(models),
    )
    .await?;
    query.set_max_parallelism(max_parallelism(spec))?;
    Ok(query)
}

/// The number of key groups of a stateful query (`spec.parallelism.maxParallelism`, default
/// [`crate::key_group::DEFAULT_MAX_PARALLELISM`]).
pub fn max_parallelism(spec: &StreamingQuerySpec) -> u32 {
    spec.parallelism
        .max_parallelism
        .unwrap_or(crate::key_group::DEFAULT_MAX_PARALLELISM)
}

async fn open_tables(spec: &StreamingQuerySpec) -> Result<Vec<crate::sql::StaticTable>> {
    let mut tables = Vec::with_capacity(spec.tables.len());
    for table in &spec.tables {
        tables.push(crate::sql::StaticTable::open(table).await?);
    }
    Ok(tables)
}

/// The sources' watermarks, with delays in ms.
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a delay that is not a duration.
fn source_watermarks(spec: &StreamingQuerySpec) -> Result<Vec<crate::sql::SourceWatermark>> {
    spec.sources
        .iter()
        .enumerate()
        .filter_map(|(input, source)| source.watermark.as_ref().map(|w| (input, source, w)))
        .map(|(input, source, w)| {
            let delay = parse_duration(&w.delay).map_err(|m| {
                EngineError::InvalidQuery(format!("sources[{input}].watermark.delay: {m}"))
            })?;
            Ok(crate::sql::SourceWatermark {
                input,
                source: source.name.clone(),
                column: w.column.clone(),
                delay_ms: delay.as_millis() as i64,
            })
        })
        .collect()
}

/// One task's share of the replica's memory budget for one source's batch (bytes): the tasks of
/// this replica run their batches at the same time, and a task reads every source in a batch.
fn budget_share(budget: u64, sources: &[Box<dyn Source>], replica: u32, replicas: u32) -> u64 {
    let task_count = sources.iter().map(|s| s.partitions()).max().unwrap_or(1);
    let replicas = replicas.max(1);
    let tasks_here = (0..task_count).filter(|t| t % replicas == replica).count();
    budget / (tasks_here.max(1) as u64 * sources.len().max(1) as u64)
}

/// A query ready to run.
pub struct Engine {
    config: QueryConfig,
    trigger: Trigger,
    query_id: String,
    run_id: String,
    sink_description: String,
    source_descriptions: BTreeMap<String, String>,
    runners: Vec<TaskRunner>,
    shared: Arc<Shared>,
    checkpoint: Checkpoint,
    max_batch_attempts: u32,
    on_poison_batch: PoisonBatchPolicy,
}

/// One task's result in a round: the task, its pending batch after the attempt, the result.
type TaskResult = (u32, Option<u64>, Result<Option<BatchOutcome>>);

impl Engine {
    /// Builds sources, sink and the runners of this replica's tasks, opening (or creating) the
    /// checkpoint and finding each task's uncommitted batch.
    ///
    /// # Errors
    /// User errors for an invalid spec or SQL, a checkpoint that does not fit; external errors when
    /// the checkpoint store is unreachable.
    pub async fn start(config: QueryConfig, shared: Arc<Shared>) -> Result<Self> {
        let spec = &config.query.spec;
        sluice_crds::validate_spec(spec).map_err(sluice_crds::CrdError::from)?;
        let trigger = Trigger::from_spec(spec)?;
        let max_batch_duration = match (config.max_batch_duration, &spec.health.max_batch_duration)
        {
            (Some(bound), _) => Some(bound),
            (None, Some(text)) => Some(parse_duration(text).map_err(|m| {
                EngineError::InvalidQuery(format!("spec.health.maxBatchDuration: {m}"))
            })?),
            (None, None) => None,
        };
        shared.set_max_batch_duration(max_batch_duration);
        let sources: Vec<Box<dyn Source>> = spec
            .sources
            .iter()
            .map(crate::source::build)
            .collect::<Result<_>>()?;
        let inputs: Vec<(String, arrow::datatypes::SchemaRef)> = sources
            .iter()
            .map(|s| (s.name().to_string(), s.schema()))
            .collect();
        // Plan once up front so a bad query fails before anything is written.
        let first = plan_query(spec, &inputs, &TaskModels::new(&spec.models, None)?).await?;

        let layout = exchange::stateful_layout(
            spec,
            &sources,
            first.grouping_columns().as_deref(),
            first.splits_over_exchange(),
        )?;
        let exchanged = layout == exchange::StatefulLayout::Exchange;
        if exchanged && matches!(trigger, Trigger::Continuous(_)) {
            return Err(EngineError::InvalidQuery(
                "the continuous trigger runs each task's rows whole and has no keyed exchange: a \
                 stateful query with it needs `partitions: 1`"
                    .into(),
            ));
        }
        if exchanged && !spec.models.is_empty() {
            return Err(EngineError::InvalidQuery(
                "models train on a task's rows, which the keyed exchange does not keep whole:                  a stateful query with models needs `partitions: 1`"
                    .into(),
            ));
        }
        // The current generation: a restored one when `checkpoint restore` ran.
        let checkpoint = crate::checkpoint::generation::open_current(Location::parse(
            &config.checkpoint_location,
        )?)
        .await?;
        let mut sources = sources;
        // Projection and filter pushdown into the scans; learned models train on whole rows.
        if spec.models.is_empty() {
            for source in &mut sources {
                if let Some(pushdown) = first.scan_pushdown(source.name()).await? {
                    source.set_pushdown(pushdown);
                }
            }
        }
        if let Some(stored) = checkpoint.stored_metadata().await? {
            for source in &mut sources {
                if let Some(&tasks) = stored.partitions.get(source.name()) {
                    source.fit_task_count(tasks);
                }
            }
        }
        if let Some(budget) = config.memory_budget {
            let share = budget_share(budget, &sources, config.replica, config.replicas);
            for source in &mut sources {
                source.set_memory_budget(share);
            }
        }
        let metadata = checkpoint
            .open_metadata(CheckpointMetadata {
                query_id: uuid::Uuid::new_v4().to_string(),
                partitions: sources
                    .iter()
                    .map(|s| (s.name().to_string(), s.partitions()))
                    .collect(),
                created_ms: chrono::Utc::now().timestamp_millis(),
                stateful_operators: first.stateful_fingerprint(),
                max_parallelism: first.max_parallelism(),
            })
            .await?;
        // Built once the checkpoint's query id is known: sinks key their idempotence on it.
        let sink_context = crate::sink::SinkContext {
            query: format!("{}/{}", config.namespace(), config.name()),
            query_id: metadata.query_id.clone(),
            output_mode: spec.output_mode,
            grouping_columns: first.grouping_columns(),
            tasks: if exchanged {
                config.replicas.max(1)
            } else {
                sources.iter().map(|s| s.partitions()).max().unwrap_or(1)
            },
            maintenance_failures: Some(
                shared
                    .metrics
                    .sink_maintenance_failures
                    .get_or_create(&crate::metrics::QueryLabels {
                        query: config.name(),
                        namespace: config.namespace(),
                    })
                    .clone(),
            ),
            min_batches_to_retain: spec
                .checkpoint
                .min_batches_to_retain
                .map_or(retention::DEFAULT_MIN_BATCHES_TO_RETAIN, u64::from),
        };
        let sink: Arc<dyn crate::sink::Sink> =
            Arc::from(crate::sink::build(&spec.sink, &sink_context)?);
        let bad_records = match spec
            .sink
            .file
            .as_ref()
            .and_then(|f| f.bad_records_path.as_deref())
        {
            Some(path) => Location::parse(path)?,
            None => checkpoint.location().sub("bad-records"),
        };
        let run_id = uuid::Uuid::new_v4().to_string();
        let epoch = crate::checkpoint::Epoch::starting_now(&run_id);
        let targets = TaskTargets {
            epoch: epoch.clone(),
            sink,
            checkpoint: checkpoint.clone(),
            bad_records,
            min_batches_to_retain: spec
                .checkpoint
                .min_batches_to_retain
                .map_or(retention::DEFAULT_MIN_BATCHES_TO_RETAIN, u64::from),
        };
        let task_count = sources.iter().map(|s| s.partitions()).max().unwrap_or(1);
        let replicas = config.replicas.max(1);
        // The stateful stage's parallelism: one key-group range per replica.
        let max_parallelism = first.max_parallelism().unwrap_or(1);
        let parallelism = replicas.min(max_parallelism);
        let exchange_ranges = exchange::ranges(max_parallelism, parallelism)?;
        let mut runners = Vec::new();
        for task in (0..task_count).filter(|t| t % replicas == config.replica) {
            let log = checkpoint.read_task_log(task).await?;
            checkpoint
                .claim_task(
                    task,
                    &epoch,
                    log.compacted.as_ref().and_then(|c| c.epoch.as_ref()),
                )
                .await?;
            let mut task_inputs = Vec::new();
            for (source, spec_source) in sources.iter().zip(&spec.sources) {
                if task >= source.partitions() {
                    continue;
                }
                let logged = log.ranges(source.name());
                task_inputs.push(TaskInput {
                    name: source.name().to_string(),
                    reader: source.open(task, &logged).await?,
                    on_bad_record: spec_source.on_bad_record,
                });
            }
            // Learned models and state as of the last COMMITTED batch: a replayed batch re-applies
            // its changes once.
            let restored = match log.last_committed {
                Some(batch_id) => checkpoint.read_models(task, batch_id).await?,
                None => None,
            };
            let models = TaskModels::new(&spec.models, restored)?;
            let mut query = plan_query(spec, &inputs, &models).await?;
            if exchanged {
                // A source-stage task keeps no state: its batches end in the exchange.
                query.set_stage(crate::sql::Stage::Source)?;
            } else {
                query
                    .restore_state(&checkpoint, task, log.last_committed)
                    .await?;
            }
            if let Some(entry) = log.uncommitted() {
                tracing::info!(
                    task,
                    batch_id = entry.batch_id,
                    "replaying uncommitted batch"
                );
            }
            let runner = TaskRunner::new(task, task_inputs, query, targets.clone(), &log, models);
            runners.push(if exchanged {
                runner.with_exchange(task::ExchangeTarget {
                    ranges: exchange_ranges.clone(),
                    bounded: trigger.is_bounded(),
                })
            } else {
                runner
            });
        }
        if exchanged {
            runners.extend(
                exchange::StatefulRunners {
                    spec,
                    inputs: &inputs,
                    targets: &targets,
                    config: crate::source::exchange::ExchangeConfig {
                        checkpoint: checkpoint.clone(),
                        max_parallelism,
                        parallelism,
                        source_tasks: task_count,
                        watermarks: exchange::planned_watermarks(spec, &sources)?,
                        retain_plans: targets.min_batches_to_retain,
                    },
                    replica: config.replica,
                    replicas,
                }
                .build()
                .await?,
            );
        }
        if trigger.is_bounded() {
            // `once` / `availableNow`: what exists now is what this run drains.
            for runner in &mut runners {
                runner.freeze().await?;
            }
        }
        let source_descriptions = spec
            .sources
            .iter()
            .map(|s| (s.name.clone(), describe_source(s)))
            .collect();
        Ok(Self {
            sink_description: describe_sink(&spec.sink),
            source_descriptions,
            trigger,
            query_id: metadata.query_id,
            run_id,
            runners,
            shared,
            checkpoint,
            max_batch_attempts: spec
                .max_batch_attempts
                .unwrap_or(DEFAULT_MAX_BATCH_ATTEMPTS)
                .max(1),
            on_poison_batch: spec.on_poison_batch,
            config,
        })
    }

    /// The trigger this query runs with.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// Unplanned input over all tasks (files for file sources, rows otherwise), when the sources
    /// know it. For `availableNow`/`once` this is, before the first batch, what the run will drain.
    pub fn backlog(&self) -> Option<u64> {
        let per_task: Vec<u64> = self
            .runners
            .iter()
            .flat_map(|r| r.backlog().into_values())
            .collect();
        (!per_task.is_empty()).then(|| per_task.iter().sum())
    }

    /// Task ids this replica runs.
    pub fn tasks(&self) -> Vec<u32> {
        self.runners.iter().map(|r| r.task).collect()
    }

    /// Runs triggers until the trigger is exhausted (`once`, `availableNow`) or a stop is requested.
    /// `on_progress` sees each trigger that processed data.
    ///
    /// # Errors
    /// The first non-retryable error (user or internal); retryable ones are retried.
    pub async fn run(
        mut self,
        mut on_progress: impl FnMut(&StreamingQueryProgress),
    ) -> Result<RunSummary> {
        if let Trigger::Continuous(interval) = self.trigger {
            return continuous::run(self, interval, on_progress).await;
        }
        let limit = if self.trigger == Trigger::Once {
            PlanLimit::Unbounded
        } else {
            PlanLimit::PerTrigger
        };
        if self.trigger.is_bounded() {
            for runner in &mut self.runners {
                runner.freeze().await?;
            }
        }
        let mut summary = RunSummary::default();
        let mut previous_start: Option<Instant> = None;
        let mut failures: u32 = 0;
        let stop = self.shared.stop.clone();
        while !stop.is_requested() {
            let started = Instant::now();
            let trigger_time = chrono::Utc::now();
            self.shared.set_batch_running(true);
            let results = self.run_round(limit).await;
            self.shared.set_batch_running(false);
            let cost = self.row_cost_wait(&results, started);
            if !cost.is_zero() {
                tokio::time::sleep(cost).await;
            }
            let mut outcomes = Vec::new();
            let mut retryable = None;
            let mut quarantined = false;
            for (task, batch, result) in results {
                match result {
                    Ok(Some(outcome)) => outcomes.push(outcome),
                    Ok(None) => {}
                    Err(e) if e.is_retryable() => retryable = Some(e),
                    Err(e) if e.is_deterministic_batch_failure() => {
                        let Some(batch_id) = batch else {
                            return Err(e);
                        };
                        let message = e.to_string();
                        let attempts = self
                            .checkpoint
                            .record_failed_attempt(task, batch_id, &message)
                            .await?;
                        if attempts >= self.max_batch_attempts
                            && self.on_poison_batch == PoisonBatchPolicy::Quarantine
                        {
                            match self.quarantine(task, attempts, &message).await {
                                Ok(()) => {
                                    summary.quarantined_batches += 1;
                                    quarantined = true;
                                }
                                Err(e) if e.is_retryable() => retryable = Some(e),
                                Err(e) => return Err(e),
                            }
                            continue;
                        }
                        if attempts >= self.max_batch_attempts {
                            let poison = EngineError::PoisonBatch {
                                task,
                                batch_id,
                                attempts,
                                error: message,
                            };
                            if let Ok(mut last) = self.shared.last_error.lock() {
                                *last = Some(poison.to_string());
                            }
                            return Err(poison);
                        }
                        tracing::warn!(task, batch_id, attempts, error = %message, "batch failed; replaying it before declaring it a poison batch");
                        retryable = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.record_backlog();
            if !outcomes.is_empty() {
                let progress = self.progress(&outcomes, started, previous_start, trigger_time);
                summary.batches += outcomes.len() as u64;
                let ids = outcomes.iter().map(|o| o.progress.batch_id);
                summary.first_batch_id =
                    summary.first_batch_id.into_iter().chain(ids.clone()).min();
                summary.last_batch_id = summary.last_batch_id.into_iter().chain(ids).max();
                summary.input_rows += progress.num_input_rows;
                summary.output_rows += progress.sink.num_output_rows;
                summary.bad_records += progress.num_bad_records;
                self.record_metrics(&outcomes, started.elapsed().as_secs_f64());
                on_progress(&progress);
                if let Ok(mut history) = self.shared.progress.lock() {
                    history.push_back(progress);
                    while history.len() > PROGRESS_HISTORY {
                        history.pop_front();
                    }
                }
                previous_start = Some(started);
            }
            if let Some(error) = retryable {
                failures += 1;
                let wait = backoff(failures, MAX_RETRY_BACKOFF);
                tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "batch failed; will replay it");
                if let Ok(mut last) = self.shared.last_error.lock() {
                    *last = Some(error.to_string());
                }
                stop.sleep(wait).await;
                continue;
            }
            if failures > 0 {
                failures = 0;
                if let Ok(mut last) = self.shared.last_error.lock() {
                    *last = None;
                }
            }
            // A quarantined batch made room for the next one: not idle.
            let idle = outcomes.is_empty() && !quarantined;
            match self.trigger {
                Trigger::Once | Trigger::AvailableNow if idle => break,
                Trigger::Once | Trigger::AvailableNow => {}
                Trigger::Default if idle => stop.sleep(IDLE_POLL).await,
                Trigger::Default => {}
                Trigger::ProcessingTime(interval) | Trigger::Continuous(interval) => {
                    stop.sleep(interval.saturating_sub(started.elapsed())).await;
                }
            }
        }
        Ok(summary)
    }

    /// Quarantines the pending batch of `task` ([`TaskRunner::quarantine_pending`]) and counts
    /// it in `sluice_quarantined_batches_total`.
    ///
    /// # Errors
    /// As [`TaskRunner::quarantine_pending`].
    async fn quarantine(&mut self, task: u32, attempts: u32, error: &str) -> Result<()> {
        let Some(runner) = self.runners.iter_mut().find(|r| r.task == task) else {
            return Err(EngineError::Internal(format!("no runner for task {task}")));
        };
        if let Some((batch_id, rows)) = runner.quarantine_pending(attempts, error).await? {
            tracing::warn!(
                task,
                batch_id,
                attempts,
                rows,
                error,
                "poison batch quarantined to the bad-records location and committed as skipped"
            );
            self.shared
                .metrics
                .quarantined_batches
                .get_or_create(&self.labels(task))
                .inc();
        }
        Ok(())
    }

    /// One batch on every task, in parallel.
    async fn run_round(&mut self, limit: PlanLimit) -> Vec<TaskResult> {
        use futures::FutureExt;
        let runners = std::mem::take(&mut self.runners);
        let handles = runners.into_iter().map(|mut runner| {
            tokio::spawn(async move {
                // A panic fails the batch but keeps the runner, so the batch can be replayed
                // (and, failing every time, reported as a poison batch).
                let result = std::panic::AssertUnwindSafe(runner.run_once(limit))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(EngineError::Internal(format!("task panicked: {what}")))
                    });
                (runner, result)
            })
        });
        let mut results = Vec::new();
        for joined in join_all(handles).await {
            match joined {
                Ok((runner, result)) => {
                    if let Err(e) = &result
                        && e.is_retryable()
                    {
                        self.shared
                            .metrics
                            .batch_retries
                            .get_or_create(&self.labels(runner.task))
                            .inc();
                    }
                    results.push((runner.task, runner.pending_batch(), result));
                    self.runners.push(runner);
                }
                Err(e) => results.push((
                    u32::MAX,
                    None,
                    Err(EngineError::Internal(format!("task panicked: {e}"))),
                )),
            }
        }
        self.runners.sort_by_key(|r| r.task);
        results
    }

    fn labels(&self, task: u32) -> TaskLabels {
        TaskLabels {
            query: self.config.name(),
            namespace: self.config.namespace(),
            task: task.to_string(),
        }
    }

    /// How much longer the round must take to have cost `rows × row_cost`
    /// (see [`QueryConfig::row_cost`]).
    fn row_cost_wait(&self, results: &[TaskResult], started: Instant) -> Duration {
        if self.config.row_cost.is_zero() {
            return Duration::ZERO;
        }
        let rows: u64 = results
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok().and_then(|o| o.as_ref()))
            .map(|o| o.progress.num_input_rows)
            .sum();
        let cost = self
            .config
            .row_cost
            .saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX));
        cost.saturating_sub(started.elapsed())
    }

    /// Records the metrics of one round. `round_seconds` (the wall time of the round, tasks run in
    /// parallel) is split evenly over the round's tasks, so `sluice_batch_busy_seconds_total`
    /// summed over a replica's tasks is the replica's busy wall time: its rate is the busy ratio b
    /// of the autoscaler (docs/architecture.md, "The operator").
    fn record_metrics(&self, outcomes: &[BatchOutcome], round_seconds: f64) {
        let metrics = &self.shared.metrics;
        let busy_share = round_seconds / outcomes.len().max(1) as f64;
        for outcome in outcomes {
            let p = &outcome.progress;
            let labels = self.labels(p.task);
            metrics
                .input_rows
                .get_or_create(&labels)
                .inc_by(p.num_input_rows);
            metrics
                .processed_rows
                .get_or_create(&labels)
                .inc_by(p.num_input_rows);
            metrics
                .sink_rows_written
                .get_or_create(&labels)
                .inc_by(p.num_output_rows);
            metrics
                .bad_records
                .get_or_create(&labels)
                .inc_by(p.num_bad_records);
            if p.num_lost_ranges > 0 {
                metrics
                    .data_loss
                    .get_or_create(&labels)
                    .inc_by(p.num_lost_ranges);
            }
            let seconds = p.duration_ms.trigger_execution as f64 / 1000.0;
            metrics
                .batch_duration
                .get_or_create(&labels)
                .observe(seconds);
            metrics
                .busy_seconds
                .get_or_create(&labels)
                .inc_by(busy_share);
            metrics
                .last_committed_batch_id
                .get_or_create(&labels)
                .set(p.batch_id as i64);
            for lookup in &outcome.lookups {
                let labels = crate::metrics::LookupLabels {
                    query: labels.query.clone(),
                    namespace: labels.namespace.clone(),
                    task: labels.task.clone(),
                    table: lookup.table.clone(),
                };
                metrics
                    .lookup_rows
                    .get_or_create(&labels)
                    .inc_by(lookup.rows);
                metrics
                    .lookup_keys
                    .get_or_create(&labels)
                    .inc_by(lookup.keys);
            }
            if let Some(state) = &outcome.state {
                metrics
                    .state_rows
                    .get_or_create(&labels)
                    .set(state.state_rows as i64);
                metrics
                    .late_rows_dropped
                    .get_or_create(&labels)
                    .inc_by(state.late_rows_dropped);
                if let Some(w) = state.watermark_ms {
                    metrics
                        .watermark_seconds
                        .get_or_create(&labels)
                        .set(w as f64 / 1000.0);
                }
            }
        }
    }

    fn record_backlog(&self) {
        for runner in &self.runners {
            let backlog: u64 = runner.backlog().values().sum();
            self.shared
                .metrics
                .source_backlog
                .get_or_create(&self.labels(runner.task))
                .set(backlog as i64);
        }
    }

    fn progress(
        &self,
        outcomes: &[BatchOutcome],
        started: Instant,
        previous_start: Option<Instant>,
        trigger_time: chrono::DateTime<chrono::Utc>,
    ) -> StreamingQueryProgress {
        let elapsed = started.elapsed().as_secs_f64().max(1e-6);
        let since_previous = previous_start
            .map(|p| started.duration_since(p).as_secs_f64())
            .unwrap_or(elapsed)
            .max(1e-6);
        let input: u64 = outcomes.iter().map(|o| o.progress.num_input_rows).sum();
        let mut duration = DurationMs {
            trigger_execution: elapsed_ms(started),
            ..DurationMs::default()
        };
        for o in outcomes {
            let d = &o.progress.duration_ms;
            duration.wal_commit = duration.wal_commit.max(d.wal_commit);
            duration.get_batch = duration.get_batch.max(d.get_batch);
            duration.query_planning_and_execution = duration
                .query_planning_and_execution
                .max(d.query_planning_and_execution);
            duration.add_batch = duration.add_batch.max(d.add_batch);
            duration.commit = duration.commit.max(d.commit);
        }
        let sources = self
            .source_descriptions
            .iter()
            .map(|(name, description)| {
                let rows: u64 = outcomes
                    .iter()
                    .filter_map(|o| o.rows_per_source.get(name))
                    .sum();
                let backlog: u64 = self
                    .runners
                    .iter()
                    .filter_map(|r| r.backlog().get(name).copied())
                    .sum();
                SourceProgress {
                    description: description.clone(),
                    num_input_rows: rows,
                    input_rows_per_second: rows as f64 / since_previous,
                    processed_rows_per_second: rows as f64 / elapsed,
                    backlog,
                }
            })
            .collect();
        StreamingQueryProgress {
            id: self.query_id.clone(),
            run_id: self.run_id.clone(),
            name: self.config.name(),
            timestamp: trigger_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch_id: outcomes
                .iter()
                .map(|o| o.progress.batch_id)
                .max()
                .unwrap_or(0),
            num_input_rows: input,
            input_rows_per_second: input as f64 / since_previous,
            processed_rows_per_second: input as f64 / elapsed,
            duration_ms: duration,
            event_time: crate::progress::EventTime {
                // The query's watermark is the lowest of its tasks' (Spark: one global watermark).
                watermark: outcomes
                    .iter()
                    .filter_map(|o| o.state.as_ref()?.watermark_ms)
                    .min()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            },
            state_operators: state_operators(outcomes),
            sources,
            sink: SinkProgress {
                description: self.sink_description.clone(),
                num_output_rows: outcomes.iter().map(|o| o.progress.num_output_rows).sum(),
            },
            num_bad_records: outcomes.iter().map(|o| o.progress.num_bad_records).sum(),
            models: self
                .runners
                .iter()
                .filter_map(|r| r.models().learned_state().ok().map(|m| (r.task, m)))
                .flat_map(|(task, models)| {
                    models.into_iter().map(move |(name, state)| {
                        serde_json::json!({"name": name, "task": task, "state": state})
                    })
                })
                .collect(),
            tasks: outcomes.iter().map(|o| o.progress.clone()).collect(),
            lookups: lookups(outcomes),
        }
    }
}

/// The lookups of a trigger per table, summed over its tasks.
fn lookups(outcomes: &[BatchOutcome]) -> Vec<serde_json::Value> {
    let mut per_table: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for lookup in outcomes.iter().flat_map(|o| &o.lookups) {
        let entry = per_table.entry(lookup.table.as_str()).or_default();
        entry.0 += lookup.keys;
        entry.1 += lookup.rows;
    }
    per_table
        .into_iter()
        .map(|(table, (keys, rows))| {
            serde_json::json!({"table": table, "numKeys": keys, "numRowsFetched": rows})
        })
        .collect()
}

fn extensions(models: &TaskModels) -> Extensions {
    Extensions {
        functions: models.functions(),
        tables: models.table_schemas(),
    }
}

/// Spark's `stateOperators` entry of the aggregation, summed over the trigger's tasks.
fn state_operators(outcomes: &[BatchOutcome]) -> Vec<serde_json::Value> {
    let states: Vec<_> = outcomes.iter().filter_map(|o| o.state.as_ref()).collect();
    if states.is_empty() {
        return Vec::new();
    }
    let sum = |f: fn(&crate::sql::StateProgress) -> u64| states.iter().map(|s| f(s)).sum::<u64>();
    vec![serde_json::json!({
        "operatorName": states
            .iter()
            .map(|s| s.operator)
            .find(|o| !o.is_empty())
            .unwrap_or("stateStoreSave"),
        "numRowsTotal": sum(|s| s.state_rows),
        "numRowsUpdated": sum(|s| s.rows_updated),
        "numRowsRemoved": sum(|s| s.rows_removed),
        "numRowsDroppedByWatermark": sum(|s| s.late_rows_dropped),
        "stateFileBytes": sum(|s| s.state_file_bytes),
    })]
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn describe_source(source: &sluice_crds::SourceSpec) -> String {
    if let Some(file) = &source.file {
        format!("FileSource[{}]", file.path)
    } else if let Some(rate) = &source.rate {
        format!(
            "RateSource[rowsPerSecond={}, partitions={}]",
            rate.rows_per_second, rate.partitions
        )
    } else if let Some(nexmark) = &source.nexmark {
        format!(
            "NexmarkSource[table={:?}, eventsPerSecond={:?}, maxEvents={:?}, partitions={}]",
            nexmark.table, nexmark.events_per_second, nexmark.max_events, nexmark.partitions
        )
    } else if let Some(socket) = &source.socket {
        format!(
            "TextSocketSource[host: {}, port: {}]",
            socket.host, socket.port
        )
    } else if let Some(kafka) = &source.kafka {
        format!("KafkaSource[{}]", kafka.bootstrap_servers)
    } else {
        source.name.clone()
    }
}

/// A short description of a sink, e.g. `FileSink[s3://lake/out]`.
pub fn describe_sink(sink: &sluice_crds::SinkSpec) -> String {
    if let Some(file) = &sink.file {
        format!("FileSink[{}]", file.path)
    } else if sink.console.is_some() {
        "ConsoleSink".into()
    } else if let Some(memory) = &sink.memory {
        format!("MemorySink[{}]", memory.name)
    } else if let Some(kafka) = &sink.kafka {
        format!("KafkaSink[{}]", kafka.topic)
    } else if let Some(pg) = &sink.postgres {
        format!("PostgresSink[{}]", pg.table)
    } else if let Some(delta) = &sink.delta {
        format!("DeltaSink[{}]", delta.path)
    } else if sink.noop.is_some() {
        "NoopSink".into()
    } else {
        "Sink".into()
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn rate(name: &str, partitions: u32) -> Box<dyn Source> {
        Box::new(crate::source::rate::RateSource::new(
            name,
            &sluice_crds::RateSourceSpec {
                rows_per_second: 1,
                partitions,
            },
        ))
    }

    #[test]
    fn the_budget_is_shared_by_this_replicas_tasks_and_the_sources() {
        const MIB: u64 = 1 << 20;
        let one = vec![rate("a", 2)];
        assert_eq!(budget_share(256 * MIB, &one, 0, 1), 128 * MIB, "2 tasks");
        assert_eq!(
            budget_share(256 * MIB, &one, 1, 2),
            256 * MIB,
            "1 of 2 tasks here"
        );
        // Tasks of the source with the most partitions; every task reads both sources.
        let two = vec![rate("a", 3), rate("b", 1)];
        assert_eq!(budget_share(240 * MIB, &two, 0, 1), 40 * MIB);
        assert_eq!(
            budget_share(240 * MIB, &two, 0, 2),
            60 * MIB,
            "tasks 0 and 2"
        );
        assert_eq!(budget_share(240 * MIB, &[], 0, 1), 240 * MIB);
    }
}
