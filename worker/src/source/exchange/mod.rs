//! The keyed exchange as the stateful stage's source (docs/keyed-exchange.md): a stateful task
//! owning key-group range `R` reads, per stateful plan, the rows the source stage wrote for `R`
//! (Kafka Streams reads its repartition topic the same way).
//!
//! Its range in the offsets log is `{"plan": n}`: batch `n` of the stateful stage. Planning
//! ([`plan::next_plan`]) happens once every range committed plan `n − 1` (all ranges advance
//! together, as Spark's global batch does) and is stored with `PutMode::Create`, so that every
//! range (in this process or another replica) runs the same plan; the plan and the source commits
//! it lists are immutable, so a replay reads the same rows.
//!
//! Rows returned are the combiner's output (the streaming aggregation's state shape: keys, then
//! accumulator states); [`ReadOutput::upstream_watermark_ms`] carries the plan's watermark.

pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use self::plan::{PlannedWatermark, SourceBatch, StatefulPlan, next_plan};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::exchange::{batch_dir, plan_path, range_checkpoint, read_batch};
use crate::error::{EngineError, Result};
use crate::key_group::{KeyGroupRange, range_for_task, stateful_task_id};
use crate::source::{PlanLimit, Range, ReadOutput, SourceTask, decode_range, encode_range};

/// The id of the newest stateful plan (a hint, see [`planned_through`]).
pub const LATEST_PLAN: &str = "stateful/latest";

/// The highest batch of source task `task` that a stateful plan consumed (so its commit, whose
/// exchange objects the plan copied, may be folded by log retention); `None` before any plan.
///
/// # Errors
/// Storage and checkpoint errors.
pub async fn planned_through(checkpoint: &Checkpoint, task: u32) -> Result<Option<u64>> {
    let Some(latest) = checkpoint.get_relative(LATEST_PLAN).await? else {
        return Ok(None);
    };
    let Some(n) = std::str::from_utf8(&latest)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return Ok(None);
    };
    let plan: Option<StatefulPlan> = checkpoint.read_json(&plan_path(n)).await?;
    Ok(plan.and_then(|p| p.progress.get(&task).map(|t| t.last_batch)))
}

/// Name of the exchange input in a stateful task's offsets log.
pub const EXCHANGE_SOURCE: &str = "exchange";

/// A stateful task's range: the stateful plan it runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ExchangeRange {
    pub plan: u64,
}

/// What every stateful task of a query shares.
#[derive(Clone, Debug)]
pub struct ExchangeConfig {
    /// The query's checkpoint (root).
    pub checkpoint: Checkpoint,
    /// Key groups (`maxParallelism`).
    pub max_parallelism: u32,
    /// Stateful tasks of the plans this run writes.
    pub parallelism: u32,
    /// Source-stage tasks.
    pub source_tasks: u32,
    pub watermarks: Vec<PlannedWatermark>,
    /// Plans whose exchange objects are kept after every range committed them
    /// (`checkpoint.minBatchesToRetain`): older ones are deleted.
    pub retain_plans: u64,
}

/// The reader of one stateful task (one key-group range).
pub struct ExchangeReader {
    config: ExchangeConfig,
    range: KeyGroupRange,
    /// The next plan this task runs.
    next: u64,
    /// The last plan this task may run: set for a range of the parallelism before a rescale,
    /// which only finishes the plans already written.
    last: Option<u64>,
}

impl ExchangeReader {
    /// The reader of `range`, continuing after the plans its log has (`logged`, oldest first).
    ///
    /// # Errors
    /// [`EngineError::Source`] when a logged range is not an exchange range.
    pub fn open(config: ExchangeConfig, range: KeyGroupRange, logged: &[Range]) -> Result<Self> {
        let next = match logged.last() {
            Some(last) => decode_range::<ExchangeRange>(EXCHANGE_SOURCE, last)?.plan + 1,
            None => 0,
        };
        Ok(Self {
            config,
            range,
            next,
            last: None,
        })
    }

    /// This reader runs no plan after `last` and writes none (a range retiring at a rescale).
    pub fn retiring_after(mut self, last: u64) -> Self {
        self.last = Some(last);
        self
    }

    async fn read_plan(&self, batch_id: u64) -> Result<Option<StatefulPlan>> {
        self.config.checkpoint.read_json(&plan_path(batch_id)).await
    }

    /// Deletes the exchange objects of the source batches plan `plan` consumed (every range
    /// committed it). Idempotent: several ranges may collect the same plan.
    async fn collect_garbage(&self, plan: u64) -> Result<()> {
        let checkpoint = &self.config.checkpoint;
        let Some(plan) = self.read_plan(plan).await? else {
            return Ok(());
        };
        for (task, (from, to)) in &plan.sources {
            for id in *from..=*to {
                let dir = batch_dir(*task, id);
                for name in checkpoint.list_names(&dir).await? {
                    checkpoint.delete(&format!("{dir}/{name}")).await?;
                }
            }
        }
        Ok(())
    }

    /// Per source task, its commits after `previous`'s, gap-free and in order.
    async fn new_source_batches(
        &self,
        previous: Option<&StatefulPlan>,
    ) -> Result<BTreeMap<u32, Vec<SourceBatch>>> {
        let checkpoint = &self.config.checkpoint;
        let mut out = BTreeMap::new();
        for task in 0..self.config.source_tasks {
            let from = previous
                .and_then(|p| p.progress.get(&task))
                .map_or(0, |p| p.last_batch + 1);
            let mut ids: Vec<u64> = checkpoint
                .commit_ids(task)
                .await?
                .into_iter()
                .filter(|id| *id >= from)
                .collect();
            ids.sort_unstable();
            let mut batches = Vec::new();
            for (expected, id) in (from..).zip(ids) {
                if id != expected {
                    break;
                }
                let commit = checkpoint.read_commit(task, id).await?.ok_or_else(|| {
                    EngineError::Checkpoint {
                        location: checkpoint.location().url.clone(),
                        message: format!("commit {id} of source task {task} vanished"),
                    }
                })?;
                let Some(exchange) = commit.exchange else {
                    return Err(EngineError::Checkpoint {
                        location: checkpoint.location().url.clone(),
                        message: format!(
                            "commit {id} of source task {task} has no exchange record: the \
                             checkpoint was written by a single-stage run of this query"
                        ),
                    });
                };
                batches.push(SourceBatch {
                    batch_id: id,
                    committed_ms: commit.committed_ms,
                    input_rows: commit.input_rows,
                    exchange,
                });
            }
            out.insert(task, batches);
        }
        Ok(out)
    }
}

/// Whether every range of `plan` committed it.
///
/// # Errors
/// Storage and checkpoint errors.
pub async fn plan_committed(
    checkpoint: &Checkpoint,
    max_parallelism: u32,
    plan: &StatefulPlan,
) -> Result<bool> {
    for i in 0..plan.parallelism {
        let range = range_for_task(max_parallelism, plan.parallelism, i)?;
        if range_checkpoint(checkpoint, range)
            .read_commit(stateful_task_id(range), plan.batch_id)
            .await?
            .is_none()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

#[async_trait]
impl SourceTask for ExchangeReader {
    /// Nothing to freeze: the stateful stage follows whatever the source stage commits.
    async fn freeze(&mut self) -> Result<()> {
        Ok(())
    }

    async fn plan(&mut self, _limit: PlanLimit) -> Result<Option<Range>> {
        let n = self.next;
        if self.last.is_some_and(|last| n > last) {
            return Ok(None);
        }
        if self.read_plan(n).await?.is_none() {
            if self.last.is_some() {
                return Ok(None);
            }
            let previous = match n.checked_sub(1) {
                Some(p) => {
                    Some(
                        self.read_plan(p)
                            .await?
                            .ok_or_else(|| EngineError::Checkpoint {
                                location: self.config.checkpoint.location().url.clone(),
                                message: format!("stateful plan {p} is missing"),
                            })?,
                    )
                }
                None => None,
            };
            if let Some(previous) = &previous
                && !plan_committed(
                    &self.config.checkpoint,
                    self.config.max_parallelism,
                    previous,
                )
                .await?
            {
                return Ok(None);
            }
            let new = self.new_source_batches(previous.as_ref()).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let Some(plan) = next_plan(
                previous.as_ref(),
                &new,
                self.config.parallelism,
                &self.config.watermarks,
                now,
            ) else {
                return Ok(None);
            };
            self.config
                .checkpoint
                .create_or_read(&plan_path(n), plan)
                .await?;
            // Where the source tasks' log retention looks for what is planned (a slow writer
            // may set an older id after a newer one: retention then waits a little longer).
            self.config
                .checkpoint
                .put(LATEST_PLAN, n.to_string().into_bytes())
                .await?;
            // Every range committed plan `n − 1`: what plans up to it read is done with, once
            // the retained plans are past it.
            if let Some(old) = n.checked_sub(1 + self.config.retain_plans) {
                self.collect_garbage(old).await?;
            }
        }
        self.next = n + 1;
        Ok(Some(encode_range(&ExchangeRange { plan: n })?))
    }

    async fn read(&mut self, range: &Range) -> Result<ReadOutput> {
        let ExchangeRange { plan: n } = decode_range(EXCHANGE_SOURCE, range)?;
        let checkpoint = &self.config.checkpoint;
        let plan = self
            .read_plan(n)
            .await?
            .ok_or_else(|| EngineError::Checkpoint {
                location: checkpoint.location().url.clone(),
                message: format!("stateful plan {n} is logged but missing"),
            })?;
        let mut batches = Vec::new();
        for (task, per_batch) in &plan.objects {
            for (id, objects) in per_batch {
                batches.extend(read_batch(checkpoint, *task, *id, objects, self.range).await?);
            }
        }
        Ok(ReadOutput {
            batches,
            upstream_watermark_ms: plan.watermark_ms,
            ..ReadOutput::default()
        })
    }
}
