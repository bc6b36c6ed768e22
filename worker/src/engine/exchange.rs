//! How a stateful query's tasks are laid out, and the stateful stage's runners of a keyed
//! exchange (docs/keyed-exchange.md).
//!
//! With [`StatefulLayout::Exchange`], a replica runs two kinds of [`TaskRunner`]:
//! - source-stage tasks (one per source partition `t` with `t % replicas == replica`), whose
//!   batches end in exchange objects instead of the sink;
//! - stateful tasks (one per key-group range `i` of `P` with `i % replicas == replica`), each a
//!   runner whose one input is the [`ExchangeReader`] of its range and whose log, sink records and
//!   state live in `stateful/ranges/<start>-<end>/`.
//!
//! Both are ordinary runners, so the batch protocol (offsets before reading, idempotent sink,
//! state before commit, epochs) is the one every task follows.

use serde::{Deserialize, Serialize};
use sluice_crds::{BadRecordPolicy, StreamingQuerySpec, duration::parse_duration};

use super::task::{TaskInput, TaskRunner, TaskTargets};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::exchange::range_checkpoint;
use crate::error::{EngineError, Result};
use crate::key_group::{KeyGroupRange, range_for_task, stateful_task_id};
use crate::ml::TaskModels;
use crate::source::Source;
use crate::source::exchange::plan::{PlannedWatermark, StatefulPlan};
use crate::source::exchange::{EXCHANGE_SOURCE, ExchangeConfig, ExchangeReader, plan_committed};
use crate::sql::Stage;

/// Default of `spec.sources[].watermark.idleTimeout`, ms (1 minute).
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 60_000;

/// How a stateful query's rows reach its state (`check` reports it as `plan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatefulLayout {
    /// One task per source partition holds all of a group's rows: one partition, or no state.
    Single,
    /// Every multi-partition source routes rows by a grouping column (`partitionKey`).
    PartitionKey,
    /// A source stage and a stateful stage with a keyed exchange between them.
    Exchange,
}

impl StatefulLayout {
    /// The name `check` reports.
    pub fn name(self) -> &'static str {
        match self {
            StatefulLayout::Single => "single",
            StatefulLayout::PartitionKey => "partitionKey",
            StatefulLayout::Exchange => "exchange",
        }
    }
}

/// The layout of a stateful query grouping on `keys` (`None`: no state). State is per task, so
/// every row of a group must reach one task: with one partition per source it does; with a
/// `partitionKey` among the grouping columns the source routes it; otherwise a streaming
/// aggregation or dedup (`splittable`) runs over a keyed exchange (Spark and Flink shuffle).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the source and the fix, for a stream–stream join or window
/// functions over several partitions (not over the exchange yet).
pub fn stateful_layout(
    spec: &StreamingQuerySpec,
    sources: &[Box<dyn Source>],
    keys: Option<&[String]>,
    splittable: bool,
) -> Result<StatefulLayout> {
    let Some(keys) = keys else {
        return Ok(StatefulLayout::Single);
    };
    let mut layout = StatefulLayout::Single;
    for (source, spec_source) in sources.iter().zip(&spec.sources) {
        if source.partitions() <= 1 {
            continue;
        }
        let routes_by_key = spec_source.file.is_none()
            && spec_source.rate.is_none()
            && spec_source
                .partition_key
                .as_ref()
                .is_some_and(|k| keys.contains(k));
        if routes_by_key {
            if layout == StatefulLayout::Single {
                layout = StatefulLayout::PartitionKey;
            }
            continue;
        }
        if splittable {
            return Ok(StatefulLayout::Exchange);
        }
        return Err(EngineError::InvalidQuery(format!(
            "source `{}` has {} partitions, but a stream–stream join or window function keeps its \
             rows per task and needs every row of a key in one task (only aggregations and dedup \
             run over the keyed exchange yet): set its `partitions: 1`, or (for a source that \
             routes rows by key) a `partitionKey` that is one of the keys [{}]",
            spec_source.name,
            source.partitions(),
            keys.join(", ")
        )));
    }
    Ok(layout)
}

/// The planner's view of the spec's watermarks: each source's delay (as the engine parses it,
/// [`super::source_watermarks`]), idle timeout and task count.
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a duration that does not parse.
pub fn planned_watermarks(
    spec: &StreamingQuerySpec,
    sources: &[Box<dyn Source>],
) -> Result<Vec<PlannedWatermark>> {
    super::source_watermarks(spec)?
        .into_iter()
        .map(|w| {
            let idle = spec
                .sources
                .get(w.input)
                .and_then(|s| s.watermark.as_ref())
                .and_then(|wm| wm.idle_timeout.as_deref());
            let idle_timeout_ms = match idle {
                Some(text) => parse_duration(text)
                    .map(|d| d.as_millis() as i64)
                    .map_err(|m| {
                        EngineError::InvalidQuery(format!(
                            "sources[{}].watermark.idleTimeout: {m}",
                            w.input
                        ))
                    })?,
                None => DEFAULT_IDLE_TIMEOUT_MS,
            };
            Ok(PlannedWatermark {
                source: w.source,
                delay_ms: w.delay_ms,
                idle_timeout_ms,
                tasks: sources.get(w.input).map_or(1, |s| s.partitions()),
            })
        })
        .collect()
}

/// The key-group ranges of `parallelism` stateful tasks.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when `parallelism` exceeds `max_parallelism`.
pub fn ranges(max_parallelism: u32, parallelism: u32) -> Result<Vec<KeyGroupRange>> {
    (0..parallelism)
        .map(|i| range_for_task(max_parallelism, parallelism, i))
        .collect()
}

/// The newest stateful plan in the checkpoint, if any.
///
/// # Errors
/// Storage and checkpoint errors.
pub async fn newest_plan(checkpoint: &Checkpoint) -> Result<Option<StatefulPlan>> {
    let newest = checkpoint
        .list_names("stateful/plans")
        .await?
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .max();
    match newest {
        Some(n) => {
            checkpoint
                .read_json(&crate::checkpoint::exchange::plan_path(n))
                .await
        }
        None => Ok(None),
    }
}

/// What the stateful runners of a replica are built from.
pub struct StatefulRunners<'a> {
    pub spec: &'a StreamingQuerySpec,
    pub inputs: &'a [(String, arrow::datatypes::SchemaRef)],
    pub targets: &'a TaskTargets,
    pub config: ExchangeConfig,
    pub replica: u32,
    pub replicas: u32,
}

impl StatefulRunners<'_> {
    /// The runners of this replica's key-group ranges, each restored as of its last commit.
    ///
    /// A run whose replica count differs from the newest plan's parallelism **rescales** at that
    /// plan's boundary (docs/keyed-exchange.md, "Rescale"): this replica first finishes its share
    /// of the old ranges' pending work (old range `i` runs on replica `i % replicas`), waits until
    /// every old range committed the newest plan `n`, then seeds each of its new ranges whose log
    /// is behind `n`: the groups of its key groups, moved whole from the old ranges' state as of
    /// `n`, written as the snapshot of `n`, and a compacted log entry standing for plans `..=n`,
    /// so it continues with plan `n + 1`. No state is recomputed from the input.
    ///
    /// # Errors
    /// Storage, fencing and planning errors.
    pub async fn build(self) -> Result<Vec<TaskRunner>> {
        let parallelism = self.config.parallelism;
        let max_parallelism = self.config.max_parallelism;
        let rescale = newest_plan(&self.config.checkpoint)
            .await?
            .filter(|plan| plan.parallelism != parallelism);
        if let Some(plan) = &rescale {
            tracing::info!(
                from = plan.parallelism,
                to = parallelism,
                after_plan = plan.batch_id,
                "rescaling the stateful stage"
            );
            self.finish_old_ranges(plan).await?;
        }
        let mut runners = Vec::new();
        for (i, range) in ranges(max_parallelism, parallelism)?
            .into_iter()
            .enumerate()
        {
            if i as u32 % self.replicas != self.replica {
                continue;
            }
            if let Some(plan) = &rescale {
                self.seed(range, plan).await?;
            }
            runners.push(self.runner(range, None).await?);
        }
        Ok(runners)
    }

    /// The query of a stateful task (the merge stage), before its state is restored or seeded.
    async fn merge_query(&self, models: &TaskModels) -> Result<crate::sql::BatchQuery> {
        let mut query = super::plan_query(self.spec, self.inputs, models).await?;
        query.set_stage(Stage::Merge)?;
        Ok(query)
    }

    /// The runner of `range`, restored as of its last commit; with `last`, it only finishes the
    /// plans up to `last`.
    async fn runner(&self, range: KeyGroupRange, last: Option<u64>) -> Result<TaskRunner> {
        let task = stateful_task_id(range);
        let checkpoint = range_checkpoint(&self.config.checkpoint, range);
        let log = checkpoint.read_task_log(task).await?;
        checkpoint
            .claim_task(
                task,
                &self.targets.epoch,
                log.compacted.as_ref().and_then(|c| c.epoch.as_ref()),
            )
            .await?;
        let mut reader =
            ExchangeReader::open(self.config.clone(), range, &log.ranges(EXCHANGE_SOURCE))?;
        if let Some(last) = last {
            reader = reader.retiring_after(last);
        }
        let models = TaskModels::new(&self.spec.models, None)?;
        let mut query = self.merge_query(&models).await?;
        query
            .restore_state(&checkpoint, task, log.last_committed)
            .await?;
        let targets = TaskTargets {
            checkpoint,
            ..self.targets.clone()
        };
        Ok(TaskRunner::new(
            task,
            vec![TaskInput {
                name: EXCHANGE_SOURCE.to_string(),
                reader: Box::new(reader),
                on_bad_record: BadRecordPolicy::Fail,
            }],
            query,
            targets,
            &log,
            models,
        ))
    }

    /// Runs this replica's share of the old ranges up to `plan`, then waits until every old
    /// range committed it (the other replicas run theirs).
    async fn finish_old_ranges(&self, plan: &StatefulPlan) -> Result<()> {
        let checkpoint = &self.config.checkpoint;
        let old = ranges(self.config.max_parallelism, plan.parallelism)?;
        for (i, range) in old.into_iter().enumerate() {
            if i as u32 % self.replicas != self.replica {
                continue;
            }
            let log = range_checkpoint(checkpoint, range)
                .read_task_log(stateful_task_id(range))
                .await?;
            if log.last_committed.is_some_and(|c| c >= plan.batch_id) {
                continue;
            }
            let mut runner = self.runner(range, Some(plan.batch_id)).await?;
            let mut failures = 0;
            loop {
                match runner.run_once(crate::source::PlanLimit::PerTrigger).await {
                    Ok(Some(outcome)) if outcome.progress.batch_id >= plan.batch_id => break,
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(EngineError::Internal(format!(
                            "range {range} stopped before plan {}",
                            plan.batch_id
                        )));
                    }
                    Err(e) if e.is_retryable() => {
                        failures += 1;
                        tracing::warn!(error = %e, "finishing range {range} before the rescale");
                        tokio::time::sleep(crate::error::backoff(
                            failures,
                            super::MAX_RETRY_BACKOFF,
                        ))
                        .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut waited = 0u32;
        while !plan_committed(checkpoint, self.config.max_parallelism, plan).await? {
            if waited.is_multiple_of(50) {
                tracing::info!(
                    plan = plan.batch_id,
                    "waiting for the other replicas to finish the old ranges before the rescale"
                );
            }
            waited += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Seeds `range` from the ranges of `plan` unless its log already reaches `plan`.
    async fn seed(&self, range: KeyGroupRange, plan: &StatefulPlan) -> Result<()> {
        let task = stateful_task_id(range);
        let checkpoint = range_checkpoint(&self.config.checkpoint, range);
        let log = checkpoint.read_task_log(task).await?;
        if log.last_committed.is_some_and(|c| c >= plan.batch_id) {
            return Ok(());
        }
        let old: Vec<(Checkpoint, u32)> = ranges(self.config.max_parallelism, plan.parallelism)?
            .into_iter()
            .filter(|old| old.overlaps(&range))
            .map(|old| {
                (
                    range_checkpoint(&self.config.checkpoint, old),
                    stateful_task_id(old),
                )
            })
            .collect();
        let mut query = self
            .merge_query(&TaskModels::new(&self.spec.models, None)?)
            .await?;
        // State first, then the log entry that makes the range start after `plan`: a crash
        // between the two seeds again.
        query
            .seed_range_state(&old, plan.batch_id, range, &checkpoint, task)
            .await?;
        let entry = crate::checkpoint::OffsetsEntry {
            batch_id: plan.batch_id,
            planned_ms: plan.planned_ms,
            sources: std::collections::BTreeMap::from([(
                EXCHANGE_SOURCE.to_string(),
                crate::source::encode_range(&crate::source::exchange::ExchangeRange {
                    plan: plan.batch_id,
                })?,
            )]),
            epoch: Some(self.targets.epoch.clone()),
        };
        checkpoint.write_compacted(task, &entry).await
    }
}
