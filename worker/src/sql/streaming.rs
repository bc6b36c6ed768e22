//! Incremental streaming aggregation: Spark's `StateStoreRestore → Aggregate → StateStoreSave`
//! with DataFusion's partial aggregation.
//!
//! Per micro-batch and task:
//! 1. the query's single `Aggregate` is split out of the logical plan (`GROUP BY window(...)` is
//!    first rewritten to one row per (row, window), see [`super::window`]);
//! 2. its input (the stateless part below it) runs over the batch's rows;
//! 3. (row, group) pairs whose event-time key is at or below the watermark are dropped as late
//!    (window end `<=` watermark, or the time key `<=` watermark; Spark's `watermarkPredicateForData`)
//!    and counted;
//! 4. an `AggregateExec` in `Partial` mode turns the rest into one partial-state row per group;
//! 5. each partial row is merged into the group's stored state with `Accumulator::merge_batch`
//!    (never recomputed from history), giving a [`StateDelta`];
//! 6. the output mode picks rows (a grouping without aggregates is `SELECT DISTINCT`, a dedup:
//!    it emits the keys not seen before, in `append` and `update`): `update` the groups changed in this batch, `complete` all groups,
//!    `append` the groups whose event-time key is at or below the watermark (then evicted); in
//!    `update` and `append`, state at or below the watermark is evicted;
//! 7. final values (`Accumulator::evaluate` over the merged state) fill the aggregate's output shape,
//!    and the part of the plan above the aggregate (projection, `HAVING`, `ORDER BY`) runs over them;
//! 8. the watermark for the next batch is `max event time seen − delay` (minimum over sources), never
//!    moving back (Spark's default `min` multiple-watermark policy).
//!
//! The delta is written to the checkpoint by [`super::BatchQuery::write_state`] before the commit
//! and applied to memory by [`super::BatchQuery::commit_state`] after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StructArray, UInt32Array};
use arrow::compute::{cast, concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::OwnedRow;
use datafusion::common::{HashMap, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Aggregate, EmitTo, GroupsAccumulator, LogicalPlan};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr, collect};
use datafusion::prelude::SessionContext;
use sluice_crds::OutputMode;

use super::window::{SESSION_COLUMN, WINDOW_COLUMN, WindowGrouping, rewrite_window_grouping};
use crate::error::{EngineError, Result, slice};
use crate::schema::cast_columns;
use crate::state::{
    EventTimeState, StateDelta, StateEntry, StateStore, event_millis, single_row_arrays,
    timestamp_millis,
};

/// A source's watermark: `input` is its index among the query's inputs.
#[derive(Clone, Debug)]
pub struct SourceWatermark {
    pub input: usize,
    pub source: String,
    pub column: String,
    /// Allowed lateness, ms.
    pub delay_ms: i64,
}

/// How a group's event time is read from its key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EventKeyKind {
    /// The key is a window struct; its `end` is compared with the watermark.
    WindowEnd,
    /// The key is the watermarked timestamp itself.
    Time,
}

/// The grouping key that carries event time.
#[derive(Clone, Copy, Debug)]
pub struct EventKey {
    /// Index among the grouping keys.
    pub group_index: usize,
    /// Column of the aggregate's input holding it.
    pub input_column: usize,
    pub kind: EventKeyKind,
}

/// The aggregation of one batch, planned.
pub struct AggregatePlan {
    /// The (window-rewritten) logical aggregate; its schema is the output shape of step 7.
    pub aggregate: Aggregate,
    pub group_by: Arc<PhysicalGroupBy>,
    pub aggr: Vec<Arc<AggregateFunctionExpr>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The stateless part below the aggregate, over this batch's rows.
    pub input: Arc<dyn ExecutionPlan>,
    pub input_schema: SchemaRef,
    pub event_key: Option<EventKey>,
    /// Index among the grouping keys of a session window (sessions merge across rows).
    pub session_index: Option<usize>,
}

impl AggregatePlan {
    /// Plans `aggregate` (found in the query's logical plan) for this batch.
    ///
    /// # Errors
    /// Planning errors; [`EngineError::InvalidQuery`] when the aggregation is not one DataFusion
    /// plans as a single (partial, final) pair.
    pub async fn new(
        ctx: &SessionContext,
        aggregate: &Aggregate,
        watermarks: &[SourceWatermark],
    ) -> Result<Self> {
        let (aggregate, window) = rewrite_window_grouping(aggregate)?;
        let physical = ctx
            .state()
            .create_physical_plan(&LogicalPlan::Aggregate(aggregate.clone()))
            .await?;
        let bottom = bottom_aggregate(&physical).ok_or_else(|| {
            EngineError::InvalidQuery("the aggregation did not plan as an aggregate".into())
        })?;
        let input_schema = bottom.input_schema();
        let event_key = find_event_key(
            bottom.group_expr(),
            &input_schema,
            window.as_ref(),
            watermarks,
        );
        let session_index = bottom.group_expr().expr().iter().position(|(expr, _)| {
            expr.downcast_ref::<PhysicalColumn>()
                .is_some_and(|c| input_schema.field(c.index()).name() == SESSION_COLUMN)
        });
        Ok(Self {
            session_index,
            group_by: Arc::new(bottom.group_expr().clone()),
            aggr: bottom.aggr_expr().to_vec(),
            filters: bottom.filter_expr().to_vec(),
            input: bottom.input().clone(),
            input_schema,
            event_key,
            aggregate,
        })
    }

    /// Schema of the state table: keys then accumulator states (the `Partial` aggregate's output).
    ///
    /// # Errors
    /// Planning errors.
    pub fn state_schema(&self) -> Result<SchemaRef> {
        Ok(self.partial(Vec::new())?.schema())
    }

    /// Column ranges of each aggregate's state within a state row.
    pub fn state_ranges(&self) -> Result<Vec<std::ops::Range<usize>>> {
        let mut start = self.group_by.expr().len();
        let mut ranges = Vec::with_capacity(self.aggr.len());
        for aggr in &self.aggr {
            let width = aggr.state_fields()?.len();
            ranges.push(start..start + width);
            start += width;
        }
        Ok(ranges)
    }

    /// Names of the input columns grouped on directly (not the window column).
    pub fn key_columns(&self) -> Vec<String> {
        self.group_by
            .expr()
            .iter()
            .filter_map(|(expr, _)| expr.downcast_ref::<PhysicalColumn>())
            .map(|c| self.input_schema.field(c.index()).name().clone())
            .filter(|name| name != WINDOW_COLUMN && name != SESSION_COLUMN)
            .collect()
    }

    /// Indices among the grouping keys of the key that decides a group's key group: every key
    /// but the `window(...)` / `session_window(...)` one (a row falls in several sliding windows,
    /// and sessions merge across rows; docs/keyed-exchange.md, "Key groups").
    pub fn key_group_indices(&self) -> Vec<usize> {
        self.group_by
            .expr()
            .iter()
            .enumerate()
            .filter(|(_, (expr, _))| {
                !expr.downcast_ref::<PhysicalColumn>().is_some_and(|c| {
                    let name = self.input_schema.field(c.index()).name();
                    name == WINDOW_COLUMN || name == SESSION_COLUMN
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// A human-readable fingerprint: what must not change across restarts of a checkpoint.
    ///
    /// # Errors
    /// Planning errors.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(format!(
            "aggregation state({})",
            super::state_fields(self.state_schema()?.as_ref())
        ))
    }

    fn partial(&self, batches: Vec<RecordBatch>) -> Result<Arc<dyn ExecutionPlan>> {
        let source = MemorySourceConfig::try_new_exec(&[batches], self.input.schema(), None)?;
        Ok(Arc::new(AggregateExec::try_new(
            AggregateMode::Partial,
            self.group_by.clone(),
            self.aggr.clone(),
            self.filters.clone(),
            source,
            self.input_schema.clone(),
        )?))
    }
}

/// The lowest `AggregateExec` of a plan (the partial or single one).
fn bottom_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    for child in plan.children() {
        if let Some(found) = bottom_aggregate(child) {
            return Some(found);
        }
    }
    plan.downcast_ref::<AggregateExec>()
}

fn find_event_key(
    group_by: &PhysicalGroupBy,
    input_schema: &SchemaRef,
    window: Option<&WindowGrouping>,
    watermarks: &[SourceWatermark],
) -> Option<EventKey> {
    let watermarked = |name: &str| watermarks.iter().any(|w| w.column == name);
    for (i, (expr, _)) in group_by.expr().iter().enumerate() {
        let Some(column) = expr.downcast_ref::<PhysicalColumn>() else {
            continue;
        };
        let name = input_schema.field(column.index()).name();
        let kind = if name == WINDOW_COLUMN || name == SESSION_COLUMN {
            match window.and_then(|w| w.time_column.as_deref()) {
                Some(time) if watermarked(time) => EventKeyKind::WindowEnd,
                _ => continue,
            }
        } else if watermarked(name) {
            EventKeyKind::Time
        } else {
            continue;
        };
        return Some(EventKey {
            group_index: i,
            input_column: column.index(),
            kind,
        });
    }
    None
}

/// Max event time (ms) per watermarked source in this batch's rows.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when the watermark column is missing or not a timestamp.
pub fn max_event_times(
    watermarks: &[SourceWatermark],
    rows: &[Vec<RecordBatch>],
) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for w in watermarks {
        for batch in rows.get(w.input).into_iter().flatten() {
            let column = batch.column_by_name(&w.column).ok_or_else(|| {
                EngineError::InvalidQuery(format!(
                    "source `{}`: watermark column `{}` is not in its schema",
                    w.source, w.column
                ))
            })?;
            if let Some(max) = arrow::compute::max(&timestamp_millis(column)?) {
                let entry = out.entry(w.source.clone()).or_insert(max);
                *entry = (*entry).max(max);
            }
        }
    }
    Ok(out)
}

/// The watermark after a batch: `min over sources (max event − delay)`, never moving back.
pub fn next_watermark(
    previous: &EventTimeState,
    batch_max: &BTreeMap<String, i64>,
    watermarks: &[SourceWatermark],
) -> EventTimeState {
    let mut max_event_ms = previous.max_event_ms.clone();
    for (source, max) in batch_max {
        let entry = max_event_ms.entry(source.clone()).or_insert(*max);
        *entry = (*entry).max(*max);
    }
    let candidate = watermarks
        .iter()
        .filter_map(|w| max_event_ms.get(&w.source).map(|m| m - w.delay_ms))
        .min();
    let watermark_ms = match (previous.watermark_ms, candidate) {
        (Some(p), Some(c)) => Some(p.max(c)),
        (p, c) => p.or(c),
    };
    EventTimeState {
        watermark_ms,
        used_watermark_ms: previous.watermark_ms,
        max_event_ms,
    }
}

/// What one batch of the aggregation produced.
pub struct AggregateOutcome {
    /// Rows in the aggregate's output shape (keys, then final aggregate values).
    pub rows: Option<RecordBatch>,
    pub delta: StateDelta,
    /// (row, window) pairs dropped as later than the watermark.
    pub late_rows: u64,
}

/// Runs steps 2–6 and the event-time update of one batch against `store` (not modified).
///
/// # Errors
/// Execution errors of DataFusion or Arrow.
pub async fn run_batch(
    ctx: &SessionContext,
    plan: &AggregatePlan,
    store: &StateStore,
    mode: OutputMode,
    batch_max: &BTreeMap<String, i64>,
    watermarks: &[SourceWatermark],
) -> Result<AggregateOutcome> {
    let watermark = store.event_time.watermark_ms;
    let (partial, late_rows) = partial_rows(ctx, plan, store.schema(), watermark).await?;
    let (rows, mut delta) = apply_partial(
        plan,
        store,
        mode,
        partial.as_ref(),
        watermark,
        store.event_time.used_watermark_ms,
    )?;
    delta.event_time = next_watermark(&store.event_time, batch_max, watermarks);
    Ok(AggregateOutcome {
        rows,
        delta,
        late_rows,
    })
}

/// Steps 2–4, the combiner: the batch's rows (the plan's input, already registered) as partial
/// state rows in `schema` (the state table's shape: keys, then accumulator states; one row per
/// group, or more when DataFusion skipped partial aggregation). With `watermark`, (row, group)
/// pairs at or below it are dropped first and counted. `None` when no row is left.
///
/// # Errors
/// Execution errors of DataFusion or Arrow.
pub async fn partial_rows(
    ctx: &SessionContext,
    plan: &AggregatePlan,
    schema: &SchemaRef,
    watermark: Option<i64>,
) -> Result<(Option<RecordBatch>, u64)> {
    let input = collect(plan.input.clone(), ctx.task_ctx()).await?;
    let mut late_rows = 0u64;
    let mut kept = Vec::with_capacity(input.len());
    for batch in input {
        let (batch, late) = drop_late(plan.event_key.map(|k| k.input_column), batch, watermark)?;
        late_rows += late;
        if batch.num_rows() > 0 {
            kept.push(batch);
        }
    }
    if kept.is_empty() {
        return Ok((None, late_rows));
    }
    let partial = collect(plan.partial(kept)?, ctx.task_ctx()).await?;
    let partial = concat_batches(schema, &partial)?;
    Ok(((partial.num_rows() > 0).then_some(partial), late_rows))
}

/// The rows of `batch` whose event time (`column`, a timestamp or a window struct whose end is
/// compared) is above `watermark`, and how many were dropped. Without a column or a watermark,
/// every row is kept.
///
/// # Errors
/// [`EngineError::Internal`] when the column is not an event time.
pub fn drop_late(
    column: Option<usize>,
    batch: RecordBatch,
    watermark: Option<i64>,
) -> Result<(RecordBatch, u64)> {
    let (Some(column), Some(w)) = (column, watermark) else {
        return Ok((batch, 0));
    };
    let times = event_millis(batch.column(column))?;
    let keep: BooleanArray = times
        .iter()
        .map(|t| Some(t.is_none_or(|t| t > w)))
        .collect();
    let filtered = filter_record_batch(&batch, &keep)?;
    let late = (batch.num_rows() - filtered.num_rows()) as u64;
    Ok((filtered, late))
}

/// Steps 5–6 for a batch's partial state rows (`partial`, the state table's shape), given the
/// watermark the batch runs with and the one the previous batch ran with (`used`; eviction only
/// runs when it moved): the output rows in the aggregate's shape, and the state changes (their
/// `event_time` left for the caller).
///
/// # Errors
/// Execution errors of DataFusion or Arrow.
pub fn apply_partial(
    plan: &AggregatePlan,
    store: &StateStore,
    mode: OutputMode,
    partial: Option<&RecordBatch>,
    watermark: Option<i64>,
    used: Option<i64>,
) -> Result<(Option<RecordBatch>, StateDelta)> {
    let mut delta = StateDelta::default();
    if let Some(partial) = partial.filter(|p| p.num_rows() > 0) {
        merge_into_delta(plan, store, partial, &mut delta)?;
    }

    if let Some(session) = plan.session_index {
        merge_sessions(plan, store, session, &mut delta)?;
    }

    // Output rows, then eviction.
    let closed = |entry: &StateEntry| match (plan.event_key, watermark) {
        (Some(_), Some(w)) => entry.event_ms.is_some_and(|t| t <= w),
        _ => false,
    };
    let mut emitted: Vec<(OwnedRow, StateEntry)> = Vec::new();
    let dedup = plan.aggr.is_empty();
    match mode {
        // Dedup emits each key once: when first seen.
        _ if dedup && mode != OutputMode::Complete => {
            emitted.extend(
                delta
                    .upserts
                    .iter()
                    .filter(|(k, _)| store.get(k).is_none())
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        OutputMode::Update => {
            emitted.extend(delta.upserts.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        OutputMode::Complete => {
            emitted.extend(delta.upserts.iter().map(|(k, v)| (k.clone(), v.clone())));
            emitted.extend(
                store
                    .iter()
                    .filter(|(k, _)| !delta.upserts.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        OutputMode::Append => {}
    }
    // Groups at or below the watermark were evicted when it was first used, and this batch's
    // input at or below it was dropped: only a new watermark can close more groups.
    let watermark_moved = watermark != used;
    if mode != OutputMode::Complete && plan.event_key.is_some() && watermark_moved {
        let mut evicted = Vec::new();
        for (key, row) in delta.upserts.iter().chain(
            store
                .iter()
                .filter(|(k, _)| !delta.upserts.contains_key(*k)),
        ) {
            if closed(row) {
                evicted.push((key.clone(), row.clone()));
            }
        }
        for (key, row) in evicted {
            delta.upserts.remove(&key);
            if store.get(&key).is_some() {
                delta.deletes.push(key.clone());
            }
            if mode == OutputMode::Append && !dedup {
                emitted.push((key, row));
            }
        }
        delta.deletes.sort();
    }
    emitted.sort_by(|a, b| a.0.cmp(&b.0));
    let rows = if emitted.is_empty() {
        None
    } else {
        Some(final_rows(plan, store, &emitted)?)
    };
    Ok((rows, delta))
}

/// Step 5, vectorised: merges the batch's partial-state rows (`partial`, state-table shape; a key
/// may repeat when DataFusion skipped partial aggregation) with the stored state of their groups,
/// one `GroupsAccumulator::merge_batch` per aggregate for the whole batch, and records one upsert
/// per group in `delta`. Stored state is merged first, then the batch's, as a per-group
/// accumulator would (float sums come out in the same order).
fn merge_into_delta(
    plan: &AggregatePlan,
    store: &StateStore,
    partial: &RecordBatch,
    delta: &mut StateDelta,
) -> Result<()> {
    let num_keys = store.num_keys();
    let rows = partial.num_rows();
    let keys = store.keys(
        slice(partial.columns(), ..num_keys, "aggregate keys")?,
        rows,
    )?;
    // Group index of each partial row; the first row of each group gives its key values.
    let mut group_of_key: HashMap<&OwnedRow, usize> = HashMap::with_capacity(rows);
    let mut group_of_row = Vec::with_capacity(rows);
    let mut first_rows: Vec<u32> = Vec::new();
    let mut first_keys: Vec<&OwnedRow> = Vec::new();
    for (r, key) in keys.iter().enumerate() {
        let next = first_rows.len();
        let group = *group_of_key.entry(key).or_insert(next);
        if group == next {
            first_rows.push(r as u32);
            first_keys.push(key);
        }
        group_of_row.push(group);
    }
    let groups = first_rows.len();
    let mut stored_groups = Vec::new();
    let mut stored_entries = Vec::new();
    for (g, key) in first_keys.iter().enumerate() {
        if let Some(entry) = store.get(key) {
            stored_groups.push(g);
            stored_entries.push(entry);
        }
    }
    let stored = store.columns(stored_entries)?;
    let first_rows = UInt32Array::from(first_rows);
    let mut columns: Vec<ArrayRef> = slice(partial.columns(), ..num_keys, "aggregate keys")?
        .iter()
        .map(|c| take(c, &first_rows, None))
        .collect::<std::result::Result<_, _>>()?;
    for (aggr, range) in plan.aggr.iter().zip(plan.state_ranges()?) {
        let mut accumulator = groups_accumulator(aggr)?;
        if !stored_groups.is_empty() {
            let state = slice(&stored, range.clone(), "stored aggregate state")?;
            accumulator.merge_batch(state, &stored_groups, groups)?;
        }
        let state = slice(partial.columns(), range, "partial aggregate state")?;
        accumulator.merge_batch(state, &group_of_row, groups)?;
        columns.extend(accumulator.state(EmitTo::All)?);
    }
    let columns = cast_columns(store.schema(), columns)?;
    let entries = store.entries(&columns)?;
    for (entry, key) in entries.into_iter().zip(first_keys) {
        delta.upserts.insert(key.clone(), entry);
    }
    Ok(())
}

/// The aggregate's vectorised accumulator over many groups (DataFusion's own, or its adapter
/// over per-group accumulators for aggregates without one, as `AggregateExec` does).
fn groups_accumulator(aggr: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>> {
    if aggr.groups_accumulator_supported() {
        return Ok(aggr.create_groups_accumulator()?);
    }
    let aggr = Arc::clone(aggr);
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
        aggr.create_accumulator()
    })))
}

/// A session taking part in a merge: its stored key (if stored), its row, whether this batch
/// changed it.
type SessionMember = (Option<OwnedRow>, Vec<ScalarValue>, bool);

/// Start and end (ms) of a session struct value.
fn session_bounds(value: &ScalarValue) -> Result<(i64, i64)> {
    let ScalarValue::Struct(session) = value else {
        return Err(EngineError::Internal(format!("session key is {value:?}")));
    };
    let bound = |c: usize| -> Result<i64> {
        let ms = timestamp_millis(session.column(c))?;
        Ok(if ms.is_valid(0) {
            ms.value(0)
        } else {
            i64::MIN
        })
    };
    Ok((bound(0)?, bound(1)?))
}

/// Session windows (Spark's `session_window`): after the batch's per-row sessions were merged
/// into `delta` by exact key, overlapping sessions of the same other keys — new ones and stored
/// ones — are merged into one session `[min start, max end)` whose aggregate state is the merge
/// of theirs. Replaced stored sessions become deletes; merged sessions become upserts.
fn merge_sessions(
    plan: &AggregatePlan,
    store: &StateStore,
    session: usize,
    delta: &mut StateDelta,
) -> Result<()> {
    if delta.upserts.is_empty() {
        return Ok(());
    }
    let other = |row: &[ScalarValue]| -> Vec<ScalarValue> {
        row.iter()
            .take(store.num_keys())
            .enumerate()
            .filter(|(i, _)| *i != session)
            .map(|(_, v)| v.clone())
            .collect()
    };
    // Members per other-keys: (stored key if stored, row, changed in this batch).
    let mut groups: std::collections::HashMap<Vec<ScalarValue>, Vec<SessionMember>> =
        std::collections::HashMap::new();
    for (key, entry) in delta.upserts.drain() {
        let row = store.scalars(&entry)?;
        let stored = store.get(&key).is_some().then_some(key);
        groups
            .entry(other(&row))
            .or_default()
            .push((stored, row, true));
    }
    for (key, entry) in store.iter() {
        let row = store.scalars(entry)?;
        if let Some(members) = groups.get_mut(&other(&row))
            && !members.iter().any(|(k, _, _)| k.as_ref() == Some(key))
        {
            members.push((Some(key.clone()), row, false));
        }
    }
    let ranges = plan.state_ranges()?;
    for (_, mut members) in groups {
        let mut bounded = Vec::with_capacity(members.len());
        for member in members.drain(..) {
            let (start, end) = session_bounds(session_column(&member.1, session)?)?;
            bounded.push((start, end, member));
        }
        bounded.sort_by_key(|(start, end, _)| (*start, *end));
        let mut clusters: Vec<(i64, i64, Vec<SessionMember>)> = Vec::new();
        for (start, end, member) in bounded {
            match clusters.last_mut() {
                Some(last) if start < last.1 => {
                    last.1 = last.1.max(end);
                    last.2.push(member);
                }
                _ => clusters.push((start, end, vec![member])),
            }
        }
        for (start, end, cluster) in clusters {
            // A stored session nothing merged into: unchanged.
            if cluster.iter().all(|(_, _, changed)| !changed) {
                continue;
            }
            // Clusters are built non-empty.
            let Some((_, template, _)) = cluster.first() else {
                continue;
            };
            let mut row: Vec<ScalarValue> =
                slice(template, ..store.num_keys(), "session keys")?.to_vec();
            let value = session_value_of(session_column(template, session)?, start, end)?;
            let keys = row.len();
            *row.get_mut(session).ok_or_else(|| {
                EngineError::Internal(format!(
                    "session window column {session} is not a key column (only {keys} keys)"
                ))
            })? = value;
            for (aggr, range) in plan.aggr.iter().zip(&ranges) {
                let mut acc = aggr.create_accumulator()?;
                for (_, member, _) in &cluster {
                    let state = slice(member, range.clone(), "session state")?;
                    acc.merge_batch(&single_row_arrays(state)?)?;
                }
                row.extend(acc.state()?);
            }
            let key_columns = slice(&row, ..store.num_keys(), "session keys")?
                .iter()
                .map(|v| v.to_array_of_size(1))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let new_key = store
                .keys(&key_columns, 1)?
                .pop()
                .ok_or_else(|| EngineError::Internal("session key".into()))?;
            for (stored, _, _) in &cluster {
                if let Some(stored) = stored
                    && *stored != new_key
                {
                    delta.deletes.push(stored.clone());
                }
            }
            delta.upserts.insert(new_key, store.entry_of(&row)?);
        }
    }
    Ok(())
}

/// A session struct value like `template` with new bounds (ms).
fn session_value_of(template: &ScalarValue, start_ms: i64, end_ms: i64) -> Result<ScalarValue> {
    let ScalarValue::Struct(session) = template else {
        return Err(EngineError::Internal("session key is not a struct".into()));
    };
    let field_type = session.column(0).data_type().clone();
    let to_type = |ms: i64| -> Result<ArrayRef> {
        let tz = match &field_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let ms_array: ArrayRef =
            Arc::new(arrow::array::TimestampMillisecondArray::from(vec![ms]).with_timezone_opt(tz));
        Ok(cast(&ms_array, &field_type)?)
    };
    let array = StructArray::try_new(
        session.fields().clone(),
        vec![to_type(start_ms)?, to_type(end_ms)?],
        None,
    )?;
    Ok(ScalarValue::Struct(Arc::new(array)))
}

/// Evaluates the final values of `groups` into the aggregate's output shape, one vectorised
/// `GroupsAccumulator::evaluate` per aggregate.
fn final_rows(
    plan: &AggregatePlan,
    store: &StateStore,
    groups: &[(OwnedRow, StateEntry)],
) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(plan.aggregate.schema.as_arrow().clone());
    let num_keys = plan.group_by.expr().len();
    let state = store.columns(groups.iter().map(|(_, entry)| entry))?;
    let mut columns: Vec<ArrayRef> = slice(&state, ..num_keys, "aggregate keys")?.to_vec();
    let indices: Vec<usize> = (0..groups.len()).collect();
    for (aggr, range) in plan.aggr.iter().zip(plan.state_ranges()?) {
        let mut accumulator = groups_accumulator(aggr)?;
        let state_columns = slice(&state, range, "aggregate state")?;
        accumulator.merge_batch(state_columns, &indices, groups.len())?;
        columns.push(accumulator.evaluate(EmitTo::All)?);
    }
    let columns = cast_columns(&schema, columns)?;
    let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(groups.len()));
    let relaxed = Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new_with_options(
        relaxed, columns, &options,
    )?)
}

/// The session window column of a stored row.
fn session_column(row: &[ScalarValue], session: usize) -> Result<&ScalarValue> {
    row.get(session).ok_or_else(|| {
        EngineError::Internal(format!(
            "session window column {session} out of range (row of {} values)",
            row.len()
        ))
    })
}
