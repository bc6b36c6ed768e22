//! A streaming aggregation split in two stages around the keyed exchange
//! (docs/keyed-exchange.md, "The two stages").
//!
//! - [`Stage::Source`]: one task per source partition runs the stateless part of the plan and the
//!   combiner (DataFusion's `Partial` aggregate): [`BatchQuery::run_source_stage`] returns one
//!   partial-state row per group of the batch with its key group, for the exchange.
//! - [`Stage::Merge`]: one task per key-group range merges the partial rows it receives into its
//!   state store, with the watermark the stateful plan fixed, and runs the rest of the query
//!   (eviction, output mode, the plan above the aggregate) exactly as one task would.
//!
//! The late-data rule moves with it: the merge stage drops partial rows whose event-time key is at
//! or below its watermark. Every input row of a partial row shares that key, so the same rows are
//! dropped; `late_rows_dropped` then counts partial rows.

use std::collections::BTreeMap;

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use super::streaming::{self, AggregateOutcome};
use super::{BatchQuery, Result};
use crate::error::EngineError;
use crate::schema::cast_columns;
use crate::state::EventTimeState;

/// Which part of a streaming aggregation a task runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// All of it, over the task's own rows (one task per group: `partitions: 1` or a
    /// `partitionKey` among the grouping columns).
    #[default]
    Whole,
    /// The stateless part and the combiner, for the exchange.
    Source,
    /// The state, over the partial rows of one key-group range.
    Merge,
}

/// A source-stage batch ready for the exchange.
#[derive(Debug)]
pub struct StagedRows {
    /// Partial-state rows in the state table's shape (keys, then accumulator states); `None`
    /// when the batch had no rows for the aggregate.
    pub rows: Option<RecordBatch>,
    /// Key group of each row of `rows`.
    pub key_groups: Vec<u16>,
    /// Max event time (ms) per watermarked source in the batch's input rows.
    pub max_event_ms: BTreeMap<String, i64>,
}

impl BatchQuery {
    /// Runs this task's stage of a streaming aggregation; call before restoring state.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a split stage of a query that is not a streaming
    /// aggregation or dedup (a stream–stream join or window functions keep their rows whole).
    pub fn set_stage(&mut self, stage: Stage) -> Result<()> {
        if stage != Stage::Whole && !self.splits_over_exchange() {
            return Err(EngineError::InvalidQuery(
                "only a streaming aggregation or dedup runs over the keyed exchange yet; a \
                 stream–stream join or window functions need `partitions: 1`"
                    .into(),
            ));
        }
        self.stage = stage;
        Ok(())
    }

    /// Whether the query can run split over a keyed exchange: a streaming aggregation or dedup.
    pub fn splits_over_exchange(&self) -> bool {
        self.streaming.is_some() && self.join.is_none() && self.window_function.is_none()
    }

    /// The stage this task runs.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The watermark of the next [`Stage::Merge`] batch (the stateful plan's), ms.
    pub fn set_upstream_watermark(&mut self, watermark_ms: Option<i64>) {
        self.upstream_watermark_ms = watermark_ms;
    }

    /// Seeds the state of a stateful task that takes over `range` after a rescale: the groups of
    /// `range` as of plan `plan` in the old ranges' state (`old`: each old range's checkpoint and
    /// task id), written as the snapshot of `plan` under `checkpoint`/`task`, and loaded.
    ///
    /// # Errors
    /// Restore and storage errors.
    pub async fn seed_range_state(
        &mut self,
        old: &[(crate::checkpoint::Checkpoint, u32)],
        plan: u64,
        range: crate::key_group::KeyGroupRange,
        checkpoint: &crate::checkpoint::Checkpoint,
        task: u32,
    ) -> Result<()> {
        let Some(state) = self.streaming.as_mut() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        state.store.restore_from(old, plan, range).await?;
        state.store.write_snapshot(checkpoint, task, plan).await?;
        Ok(())
    }

    /// The [`Stage::Source`] batch: `rows[i]` are input `i`'s rows; no state is read or kept.
    ///
    /// # Errors
    /// As [`BatchQuery::run`].
    pub async fn run_source_stage(&mut self, rows: Vec<Vec<RecordBatch>>) -> Result<StagedRows> {
        self.prepare_tables(&rows).await?;
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let max_event_ms = streaming::max_event_times(&state.watermarks, &rows)?;
        let (_, planned) = self.plan_aggregation(rows).await?;
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let (partial, _) =
            streaming::partial_rows(&self.ctx, &planned, state.store.schema(), None).await?;
        let key_groups = match &partial {
            Some(p) => state.store.key_groups_of(
                crate::error::slice(p.columns(), ..state.store.num_keys(), "partial keys")?,
                p.num_rows(),
            )?,
            None => Vec::new(),
        };
        Ok(StagedRows {
            rows: partial,
            key_groups,
            max_event_ms,
        })
    }

    /// The [`Stage::Merge`] batch: `rows[0]` are the partial rows of this task's key groups.
    pub(super) async fn run_merge(
        &mut self,
        rows: Vec<Vec<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        let (plan, planned) = self.plan_aggregation(Vec::new()).await?;
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let schema = state.store.schema();
        let received: Vec<RecordBatch> = rows
            .into_iter()
            .flatten()
            .map(|b| {
                let columns = cast_columns(schema, b.columns().to_vec())?;
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect::<Result<_>>()?;
        let partial = concat_batches(schema, &received)?;
        let watermark = self.upstream_watermark_ms;
        let (partial, late_rows) =
            streaming::drop_late(planned.event_key.map(|k| k.group_index), partial, watermark)?;
        let (rows, mut delta) = streaming::apply_partial(
            &planned,
            &state.store,
            state.mode,
            Some(&partial),
            watermark,
            state.store.event_time.watermark_ms,
        )?;
        delta.event_time = EventTimeState {
            watermark_ms: watermark,
            used_watermark_ms: watermark,
            max_event_ms: BTreeMap::new(),
        };
        let outcome = AggregateOutcome {
            rows,
            delta,
            late_rows,
        };
        self.finish_aggregation(plan, &planned, outcome).await
    }
}
