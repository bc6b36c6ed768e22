//! Stateful plans: which source batches the stateful stage's batch `n` consumes, and the watermark
//! it runs with (docs/keyed-exchange.md, "Stateful plans" and "Watermark across tasks").
//!
//! Planning is a pure function of the previous plan, the source commits since and the clock, so
//! that it can be tested alone; the [`super::ExchangeReader`] reads the commits and stores the plan
//! (`PutMode::Create`: every stateful task of the batch runs the first plan written).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::exchange::{ExchangeCommit, ExchangeObject};

/// One batch of the stateful stage, shared by all its key-group ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatefulPlan {
    pub batch_id: u64,
    /// Stateful tasks (key-group ranges) of this batch.
    pub parallelism: u32,
    /// Per source task, the committed batch ids `[from, to]` this batch consumes.
    pub sources: BTreeMap<u32, (u64, u64)>,
    /// Per source task and batch id, the exchange objects its commit lists: copied here so that
    /// reading (and replaying) the plan does not need the source commits, which the source
    /// tasks' log retention may fold away once they are planned.
    #[serde(default)]
    pub objects: BTreeMap<u32, BTreeMap<u64, Vec<ExchangeObject>>>,
    /// The watermark this batch runs with, ms since the epoch: from the input of the batches
    /// before it (Spark: a batch's watermark comes from earlier batches).
    pub watermark_ms: Option<i64>,
    /// Per source task, what it has handed over up to and including this plan's input.
    pub progress: BTreeMap<u32, SourceTaskProgress>,
    /// When the plan was made, ms since the epoch.
    pub planned_ms: i64,
}

/// What one source task has handed to the stateful stage so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceTaskProgress {
    /// Highest batch id consumed.
    pub last_batch: u64,
    /// Max event time (ms) per watermarked source over everything consumed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_event_ms: BTreeMap<String, i64>,
    /// Commit time (ms) of the last consumed batch that had rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rows_ms: Option<i64>,
    /// The last consumed batch left the task caught up (see [`ExchangeCommit::caught_up`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
    /// The task drained a bounded trigger's input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// A watermarked source, as the planner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedWatermark {
    pub source: String,
    /// Allowed lateness, ms.
    pub delay_ms: i64,
    /// A source task with no rows for this long does not hold the watermark back, ms.
    pub idle_timeout_ms: i64,
    /// Source tasks reading this source: `0..tasks` (its partition count).
    pub tasks: u32,
}

/// A source batch committed since the previous plan.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceBatch {
    pub batch_id: u64,
    pub committed_ms: i64,
    pub input_rows: u64,
    pub exchange: ExchangeCommit,
}

/// The next plan after `previous`, consuming `new` (per source task, its commits after the
/// previous plan's, in batch order, gap-free), or `None` when there is nothing to do: no new
/// source batch and a watermark that would not move.
///
/// The watermark of the new plan is computed from `previous.progress` (the input of earlier
/// plans): per watermarked source, the minimum over its active source tasks of their max event
/// time (Flink's per-subtask minimum; a task is active unless it finished, or it was caught up
/// and had no rows for the source's idle timeout, Flink's `withIdleness`), or the maximum when
/// every task is idle (then
/// all input is in, as with one task); minus the delay; then the minimum over sources (Spark's
/// `min` multiple-watermark policy); never moving back.
pub fn next_plan(
    previous: Option<&StatefulPlan>,
    new: &BTreeMap<u32, Vec<SourceBatch>>,
    parallelism: u32,
    watermarks: &[PlannedWatermark],
    now_ms: i64,
) -> Option<StatefulPlan> {
    let empty = BTreeMap::new();
    let before = previous.map_or(&empty, |p| &p.progress);
    let computed = watermark(before, watermarks, now_ms);
    let previous_watermark = previous.and_then(|p| p.watermark_ms);
    let watermark_ms = match (previous_watermark, computed) {
        (Some(p), Some(c)) => Some(p.max(c)),
        (p, c) => p.or(c),
    };
    let has_input = new.values().any(|batches| !batches.is_empty());
    if !has_input && (previous.is_none() || watermark_ms == previous_watermark) {
        return None;
    }
    let mut progress = before.clone();
    let mut sources = BTreeMap::new();
    let mut objects: BTreeMap<u32, BTreeMap<u64, Vec<ExchangeObject>>> = BTreeMap::new();
    for (task, batches) in new {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            continue;
        };
        sources.insert(*task, (first.batch_id, last.batch_id));
        let entry = progress.entry(*task).or_default();
        for batch in batches {
            if !batch.exchange.objects.is_empty() {
                objects
                    .entry(*task)
                    .or_default()
                    .insert(batch.batch_id, batch.exchange.objects.clone());
            }
            entry.last_batch = batch.batch_id;
            for (source, max) in &batch.exchange.max_event_ms {
                let slot = entry.max_event_ms.entry(source.clone()).or_insert(*max);
                *slot = (*slot).max(*max);
            }
            if batch.input_rows > 0 {
                entry.last_rows_ms = Some(batch.committed_ms);
            }
            entry.caught_up = batch.exchange.caught_up;
            entry.finished |= batch.exchange.finished;
        }
    }
    Some(StatefulPlan {
        batch_id: previous.map_or(0, |p| p.batch_id + 1),
        parallelism,
        sources,
        objects,
        watermark_ms,
        progress,
        planned_ms: now_ms,
    })
}

/// The watermark `progress` allows (before "never moving back"); `None` before any event time,
/// or while a source task that may hold older events has not reported.
fn watermark(
    progress: &BTreeMap<u32, SourceTaskProgress>,
    watermarks: &[PlannedWatermark],
    now_ms: i64,
) -> Option<i64> {
    watermarks
        .iter()
        .map(|w| {
            let mut seen: Vec<(i64, bool)> = Vec::new();
            for task in 0..w.tasks {
                // A task not heard from yet may hold the oldest events: no watermark until it
                // committed once (a source-stage task with nothing to read commits an empty
                // batch first).
                let p = progress.get(&task).ok_or(Unknown)?;
                let idle = p.finished
                    || (p.caught_up
                        && p.last_rows_ms
                            .is_none_or(|t| now_ms.saturating_sub(t) >= w.idle_timeout_ms));
                match p.max_event_ms.get(&w.source) {
                    Some(max) => seen.push((*max, idle)),
                    // No events yet: it holds the watermark back unless it has nothing to read.
                    None if p.caught_up || p.finished => {}
                    None => return Err(Unknown),
                }
            }
            let active = seen.iter().filter(|(_, idle)| !idle).map(|(m, _)| *m).min();
            Ok(active
                .or_else(|| seen.iter().map(|(m, _)| *m).max())
                .map(|max| max - w.delay_ms))
        })
        .collect::<Result<Vec<Option<i64>>, Unknown>>()
        .ok()?
        .into_iter()
        .flatten()
        .min()
}

/// A source task whose events are not known yet: the watermark cannot move.
struct Unknown;
