//! Stream–stream inner join with watermarks (Spark Structured Streaming programming guide,
//! "Stream-stream Joins"; Spark's `StreamingSymmetricHashJoinExec`).
//!
//! Rules (checked when the query is planned, each refusal names its rule):
//! - one inner join of two different streams (no outer, semi or self join, no third stream);
//! - output mode `append` (Spark: stream–stream joins only support append);
//! - both sources have a `watermark`, and the join condition bounds the two watermark columns
//!   against each other with a time range, e.g. `c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'`
//!   or `c.ts >= i.ts AND c.ts <= i.ts + INTERVAL '1 hour'` (Spark allows unbounded state;
//!   Sluice refuses it so the state stays bounded);
//! - no aggregation after the join (not supported yet).
//!
//! Per micro-batch and task, with `W` the watermark of the batch (computed at the end of the
//! previous batch: `min over sources (max event time − delay)`):
//! 1. new rows of each side whose watermark column is `<= W` are dropped as late and counted
//!    (Spark's `watermarkPredicateForData`); rows with a null event time can never meet the range
//!    condition and are dropped too (not counted);
//! 2. the whole query runs twice, over `new left × (buffered right ∪ new right)` and
//!    `buffered left × new right`, so each matching pair is emitted exactly once;
//! 3. new rows are added to their side's buffer in the state store and buffered rows that no future
//!    row of the other side can match are evicted. With `lower <= left.ts − right.ts <= upper`
//!    (from the range condition) and future rows later than `W`: a left row goes when
//!    `left.ts − lower <= W`, a right row when `right.ts + upper <= W` (Spark's state value
//!    watermark, `StreamingJoinHelper.getStateValueWatermark`).
//!
//! State table (Arrow, one per task, checkpointed as deltas + snapshots like every state store):
//! `__sluice_side: UInt8` (0 left, 1 right), `__sluice_seq: UInt64` (unique per buffered row; the
//! key), then every column of the left source as `<source>.<column>`, then every column of the
//! right source likewise (the other side's columns are null).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, UInt8Array, UInt32Array, UInt64Array,
    new_null_array,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Cast, Expr, Join, JoinType, LogicalPlan, Operator, TryCast,
};
use datafusion::prelude::SessionContext;
use sluice_crds::OutputMode;

use super::streaming::{SourceWatermark, max_event_times, next_watermark};
use super::{BatchQuery, StateProgress, StreamingState};
use crate::error::{EngineError, Result};
use crate::state::{StateDelta, StateStore, timestamp_millis};

const SIDE_COLUMN: &str = "__sluice_side";
const SEQ_COLUMN: &str = "__sluice_seq";
const KEY_COLUMNS: usize = 2;
/// Spark's `operatorName` in progress.
const OPERATOR: &str = "symmetricHashJoin";

/// One input of the join.
#[derive(Clone, Debug)]
struct JoinSide {
    /// Index among the query's inputs.
    input: usize,
    source: String,
    schema: SchemaRef,
    /// Index of the watermark column in `schema`.
    time_index: usize,
    /// Index of the side's first column in a state row.
    offset: usize,
}

impl JoinSide {
    /// The new rows of a batch that take part: event time later than `watermark`. Returns them and
    /// the count of late rows (event time at or below the watermark).
    fn admit(
        &self,
        batches: &[RecordBatch],
        watermark: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, u64)> {
        let mut kept = Vec::with_capacity(batches.len());
        let mut late = 0u64;
        for batch in batches {
            let times = timestamp_millis(batch.column(self.time_index))?;
            let keep: BooleanArray = times
                .iter()
                .map(|t| Some(t.is_some_and(|t| watermark.is_none_or(|w| t > w))))
                .collect();
            late += times
                .iter()
                .filter(|t| t.is_some_and(|t| watermark.is_some_and(|w| t <= w)))
                .count() as u64;
            let filtered = filter_record_batch(batch, &keep)?;
            if filtered.num_rows() > 0 {
                kept.push(filtered);
            }
        }
        Ok((kept, late))
    }
}

/// A planned stream–stream join: its two sides and the range of `left.ts − right.ts`.
#[derive(Clone, Debug)]
pub(crate) struct JoinPlan {
    left: JoinSide,
    right: JoinSide,
    /// `left.ts − right.ts >= lower_ms` (ms).
    lower_ms: i64,
    /// `left.ts − right.ts <= upper_ms` (ms).
    upper_ms: i64,
    state_schema: SchemaRef,
}

impl JoinPlan {
    /// Finds the stream–stream join of `plan` (planned over empty inputs) and checks the rules of
    /// the module docs. `Ok(None)` when no join reads a stream on both sides.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] naming the rule a join of two streams breaks; planning
    /// errors of DataFusion.
    pub(super) fn new(
        ctx: &SessionContext,
        plan: &LogicalPlan,
        inputs: &[(String, SchemaRef)],
        watermarks: &[SourceWatermark],
        mode: OutputMode,
    ) -> Result<Option<Self>> {
        let streams: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        if stream_joins(plan, &streams).is_empty() {
            return Ok(None);
        }
        // The optimizer moves the ON and WHERE conditions of an inner join into the join.
        let optimized = ctx.state().optimize(plan)?;
        let joins = stream_joins(&optimized, &streams);
        let [join] = joins.as_slice() else {
            return Err(EngineError::InvalidQuery(format!(
                "a query may join two streams once ({} joins of streams found); join the result \
                 with static `tables:` instead, or set `sqlScope: microBatch`",
                joins.len().max(1)
            )));
        };
        if mode != OutputMode::Append {
            return Err(EngineError::InvalidQuery(format!(
                "a join of two streams supports only outputMode `append` (Spark: \"Inner join between \
                 two streaming DataFrames/Datasets is not supported in {mode:?} output mode, only in \
                 Append output mode\")"
            )));
        }
        if join.join_type != JoinType::Inner {
            return Err(EngineError::InvalidQuery(format!(
                "{} join of two streams is not supported (only inner joins of two streams are)",
                join.join_type
            )));
        }
        let left_streams = super::scanned_streams(&join.left, &streams);
        let right_streams = super::scanned_streams(&join.right, &streams);
        let all_streams = super::scanned_streams(&optimized, &streams);
        let (Some(left), Some(right)) = (left_streams.first(), right_streams.first()) else {
            return Err(EngineError::Internal("join sides without streams".into()));
        };
        if left_streams.len() != 1 || right_streams.len() != 1 || all_streams.len() != 2 {
            return Err(EngineError::InvalidQuery(format!(
                "a join of two streams must read each of its two streams once and no other stream \
                 (the query reads {}): self-joins and joins of more streams are not supported",
                all_streams.join(", ")
            )));
        }
        if left == right {
            return Err(EngineError::InvalidQuery(format!(
                "a self-join of stream `{left}` is not supported yet (a join of two streams joins two \
                 different sources)"
            )));
        }
        let left = side(inputs, watermarks, left, KEY_COLUMNS)?;
        let right = side(
            inputs,
            watermarks,
            right,
            KEY_COLUMNS + left.schema.fields().len(),
        )?;
        let (lower_ms, upper_ms) = time_range(join, &left, &right)?;
        let mut fields = vec![
            Field::new(SIDE_COLUMN, DataType::UInt8, false),
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
        ];
        for s in [&left, &right] {
            fields.extend(s.schema.fields().iter().map(|f| {
                Field::new(
                    format!("{}.{}", s.source, f.name()),
                    f.data_type().clone(),
                    true,
                )
            }));
        }
        Ok(Some(Self {
            left,
            right,
            lower_ms,
            upper_ms,
            state_schema: Arc::new(Schema::new(fields)),
        }))
    }

    /// The per-task state of the join (its buffers) in the shape of a streaming aggregation's.
    ///
    /// # Errors
    /// [`EngineError::Arrow`] when a column type cannot be a state key (never: keys are ints).
    pub(super) fn streaming_state(
        &self,
        watermarks: Vec<SourceWatermark>,
    ) -> Result<StreamingState> {
        Ok(StreamingState::append_buffer(
            StateStore::new(self.state_schema.clone(), KEY_COLUMNS, None)?,
            watermarks,
            self.fingerprint(),
            OPERATOR,
        ))
    }

    /// What must not change across restarts of a checkpoint: the buffered rows' shape and the
    /// range condition that decides their eviction.
    fn fingerprint(&self) -> String {
        format!(
            "stream-stream join state({}) range({}.{} - {}.{} in [{} ms, {} ms])",
            super::state_fields(&self.state_schema),
            self.left.source,
            self.left.schema.field(self.left.time_index).name(),
            self.right.source,
            self.right.schema.field(self.right.time_index).name(),
            self.lower_ms,
            self.upper_ms
        )
    }

    /// Whether a buffered row of `side` (0 left, 1 right) with event time `ts` can still match a
    /// future row of the other side, whose event time is later than `watermark`.
    fn keeps(&self, side: u8, ts: i64, watermark: Option<i64>) -> bool {
        let Some(w) = watermark else {
            return true;
        };
        if side == 0 {
            ts.saturating_sub(self.lower_ms) > w
        } else {
            ts.saturating_add(self.upper_ms) > w
        }
    }

    fn side(&self, side: u8) -> &JoinSide {
        if side == 0 { &self.left } else { &self.right }
    }

    /// The buffered rows of both sides as batches of their sources' schemas (in buffering order),
    /// and the next free sequence number.
    fn buffered(&self, buffer: &Buffer) -> Result<([Vec<RecordBatch>; 2], u64)> {
        let mut out: [Vec<RecordBatch>; 2] = [Vec::new(), Vec::new()];
        let next_seq = arrow::compute::max(&buffer.seqs).map_or(0, |m| m + 1);
        for (side, out) in out.iter_mut().enumerate() {
            let mut rows: Vec<(u64, u32)> = (0..buffer.sides.len())
                .filter(|&r| usize::from(buffer.sides.value(r).min(1)) == side)
                .map(|r| (buffer.seqs.value(r), r as u32))
                .collect();
            if rows.is_empty() {
                continue;
            }
            rows.sort_unstable();
            let indices = UInt32Array::from(rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
            let s = self.side(side as u8);
            let mut columns = Vec::with_capacity(s.schema.fields().len());
            for (c, field) in s.schema.fields().iter().enumerate() {
                let array = arrow::compute::take(buffer.column(s.offset + c)?, &indices, None)?;
                columns.push(if array.data_type() == field.data_type() {
                    array
                } else {
                    cast(&array, field.data_type())?
                });
            }
            out.push(RecordBatch::try_new(s.schema.clone(), columns)?);
        }
        Ok((out, next_seq))
    }

    /// Event time (ms) of each buffered row, read from its side's time column.
    fn buffered_times(&self, buffer: &Buffer) -> Result<Vec<Option<i64>>> {
        let left = timestamp_millis(buffer.column(self.left.offset + self.left.time_index)?)?;
        let right = timestamp_millis(buffer.column(self.right.offset + self.right.time_index)?)?;
        Ok((0..buffer.sides.len())
            .map(|r| {
                let t = if buffer.sides.value(r) == 0 {
                    &left
                } else {
                    &right
                };
                t.is_valid(r).then(|| t.value(r))
            })
            .collect())
    }

    /// State rows for new rows of `side` still able to match, keyed from `next_seq` on.
    fn buffer_rows(
        &self,
        store: &StateStore,
        side: u8,
        batches: &[RecordBatch],
        watermark: Option<i64>,
        next_seq: &mut u64,
        delta: &mut StateDelta,
    ) -> Result<u64> {
        let s = self.side(side);
        let other = self.side(1 - side);
        let mut added = 0u64;
        for batch in batches {
            let times = timestamp_millis(batch.column(s.time_index))?;
            let keep: BooleanArray = times
                .iter()
                .map(|t| Some(t.is_some_and(|t| self.keeps(side, t, watermark))))
                .collect();
            let kept = filter_record_batch(batch, &keep)?;
            let rows = kept.num_rows();
            if rows == 0 {
                continue;
            }
            let sides: ArrayRef = Arc::new(UInt8Array::from(vec![side; rows]));
            let seqs: ArrayRef = Arc::new(UInt64Array::from_iter_values(
                *next_seq..*next_seq + rows as u64,
            ));
            *next_seq += rows as u64;
            let nulls: Vec<ArrayRef> = other
                .schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), rows))
                .collect();
            let mut columns = vec![sides.clone(), seqs.clone()];
            if side == 0 {
                columns.extend(kept.columns().iter().cloned());
                columns.extend(nulls);
            } else {
                columns.extend(nulls);
                columns.extend(kept.columns().iter().cloned());
            }
            let columns = crate::schema::cast_columns(&self.state_schema, columns)?;
            let keys = store.keys(&[sides, seqs], rows)?;
            let entries = store.entries(&columns)?;
            added += rows as u64;
            delta.upserts.extend(keys.into_iter().zip(entries));
        }
        Ok(added)
    }
}

/// The buffered rows of a join's state, decoded once per batch: their keys (in store order),
/// sides (0 left, 1 right), sequence numbers and all state columns.
struct Buffer {
    keys: Vec<arrow::row::OwnedRow>,
    sides: UInt8Array,
    seqs: UInt64Array,
    columns: Vec<ArrayRef>,
}

impl Buffer {
    /// Buffered column `i` (left side's columns first, then the right side's).
    fn column(&self, i: usize) -> Result<&ArrayRef> {
        self.columns.get(i).ok_or_else(|| {
            EngineError::Internal(format!(
                "stream join buffer: column {i} out of range (only {} columns)",
                self.columns.len()
            ))
        })
    }

    fn read(store: &StateStore) -> Result<Self> {
        let (keys, entries): (Vec<_>, Vec<_>) = store.iter().map(|(k, e)| (k.clone(), e)).unzip();
        let columns = store.columns(entries)?;
        let int_column = |c: usize| {
            columns
                .get(c)
                .ok_or_else(|| EngineError::Internal("stream join state without its key".into()))
        };
        let sides = int_column(0)?
            .as_any()
            .downcast_ref::<UInt8Array>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("stream join side column".into()))?;
        let seqs = int_column(1)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("stream join sequence column".into()))?;
        Ok(Self {
            keys,
            sides,
            seqs,
            columns,
        })
    }
}

impl BatchQuery {
    /// Runs one micro-batch of a stream–stream join (steps 1–3 of the module docs); the state
    /// changes wait in `pending` for the commit like an aggregation's.
    ///
    /// # Errors
    /// Execution errors of DataFusion or Arrow; [`EngineError::InvalidQuery`] when a watermark
    /// column is not a timestamp.
    pub(super) async fn run_stream_join(
        &mut self,
        mut rows: Vec<Vec<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        let (Some(join), Some(state)) = (self.join.clone(), self.streaming.as_ref()) else {
            return Err(EngineError::Internal("no stream join state".into()));
        };
        let watermark = state.store.event_time.watermark_ms;
        let batch_max = max_event_times(&state.watermarks, &rows)?;
        rows.resize_with(self.inputs.len(), Vec::new);
        let (new_left, late_left) = join
            .left
            .admit(input_rows(&mut rows, join.left.input)?, watermark)?;
        let (new_right, late_right) = join
            .right
            .admit(input_rows(&mut rows, join.right.input)?, watermark)?;
        let buffer = Buffer::read(&state.store)?;
        let ([old_left, old_right], mut next_seq) = join.buffered(&buffer)?;

        let mut output = Vec::new();
        // new left × (buffered right ∪ new right), then buffered left × new right.
        let passes = [
            (
                new_left.clone(),
                [old_right.clone(), new_right.clone()].concat(),
            ),
            (old_left, new_right.clone()),
        ];
        for (left_rows, right_rows) in passes {
            if left_rows.is_empty() || right_rows.is_empty() {
                continue;
            }
            let mut inputs = rows.clone();
            *input_rows(&mut inputs, join.left.input)? = left_rows;
            *input_rows(&mut inputs, join.right.input)? = right_rows;
            let plan = self.plan(inputs).await?;
            output.extend(self.ctx.execute_logical_plan(plan).await?.collect().await?);
        }

        let state = self
            .streaming
            .as_mut()
            .ok_or_else(|| EngineError::Internal("no stream join state".into()))?;
        let mut delta = StateDelta::default();
        for ((key, side), ts) in buffer
            .keys
            .iter()
            .zip(buffer.sides.values())
            .zip(join.buffered_times(&buffer)?)
        {
            if ts.is_none_or(|ts| !join.keeps(*side, ts, watermark)) {
                delta.deletes.push(key.clone());
            }
        }
        delta.deletes.sort();
        let mut added = join.buffer_rows(
            &state.store,
            0,
            &new_left,
            watermark,
            &mut next_seq,
            &mut delta,
        )?;
        added += join.buffer_rows(
            &state.store,
            1,
            &new_right,
            watermark,
            &mut next_seq,
            &mut delta,
        )?;
        delta.event_time = next_watermark(&state.store.event_time, &batch_max, &state.watermarks);
        let removed = delta.deletes.len() as u64;
        state.last = StateProgress {
            state_rows: (state.store.len() as u64 + added).saturating_sub(removed),
            rows_updated: added,
            rows_removed: removed,
            state_file_bytes: 0,
            late_rows_dropped: late_left + late_right,
            watermark_ms: delta.event_time.watermark_ms,
            operator: OPERATOR,
        };
        state.pending = Some(delta);
        Ok(output)
    }
}

/// The joins of `plan` that read a stream on both sides.
fn stream_joins(plan: &LogicalPlan, streams: &[&str]) -> Vec<Join> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Join(join) = node
            && super::reads_stream(&join.left, streams)
            && super::reads_stream(&join.right, streams)
        {
            found.push(join.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The batches of input `input` (rows are kept one list per input of the query).
fn input_rows(rows: &mut [Vec<RecordBatch>], input: usize) -> Result<&mut Vec<RecordBatch>> {
    let count = rows.len();
    rows.get_mut(input).ok_or_else(|| {
        EngineError::Internal(format!(
            "stream join: input {input} out of range (only {count} inputs)"
        ))
    })
}

fn side(
    inputs: &[(String, SchemaRef)],
    watermarks: &[SourceWatermark],
    name: &str,
    offset: usize,
) -> Result<JoinSide> {
    let (input, schema) = inputs
        .iter()
        .enumerate()
        .find_map(|(i, (n, schema))| (n == name).then_some((i, schema)))
        .ok_or_else(|| EngineError::Internal(format!("stream `{name}` is not an input")))?;
    let watermark = watermarks.iter().find(|w| w.input == input).ok_or_else(|| {
        EngineError::InvalidQuery(format!(
            "a join of two streams needs a watermark on both sources, and source `{name}` has none: \
             give it `watermark: {{column, delay}}` so its buffered rows can be evicted (Sluice refuses \
             the unbounded state Spark would allow)"
        ))
    })?;
    let schema = schema.clone();
    let time_index = schema.index_of(&watermark.column).map_err(|_| {
        EngineError::InvalidQuery(format!(
            "source `{name}`: watermark column `{}` is not in its schema",
            watermark.column
        ))
    })?;
    if !matches!(
        schema.field(time_index).data_type(),
        DataType::Timestamp(_, _)
    ) {
        return Err(EngineError::InvalidQuery(format!(
            "source `{name}`: the watermark column `{}` must be a timestamp",
            watermark.column
        )));
    }
    Ok(JoinSide {
        input,
        source: name.to_string(),
        schema,
        time_index,
        offset,
    })
}

/// `(lower, upper)` with `lower <= left.ts − right.ts <= upper` (ms) from the join's conditions.
fn time_range(join: &Join, left: &JoinSide, right: &JoinSide) -> Result<(i64, i64)> {
    let left_time = left.schema.field(left.time_index).name();
    let right_time = right.schema.field(right.time_index).name();
    let mut lower: Option<i64> = None;
    let mut upper: Option<i64> = None;
    let mut bound = |op: Operator, a: &Expr, b: &Expr| {
        let (Some((a_side, a_off)), Some((b_side, b_off))) = (
            time_operand(
                a,
                join.left.schema(),
                join.right.schema(),
                left_time,
                right_time,
            ),
            time_operand(
                b,
                join.left.schema(),
                join.right.schema(),
                left_time,
                right_time,
            ),
        ) else {
            return;
        };
        // a + a_off  op  b + b_off, as  left − right  op'  k.
        let (op, k) = match (a_side, b_side) {
            (0, 1) => (op, b_off - a_off),
            (1, 0) => match op.swap() {
                Some(swapped) => (swapped, a_off - b_off),
                None => return,
            },
            _ => return,
        };
        match op {
            Operator::Gt | Operator::GtEq => lower = Some(lower.map_or(k, |l| l.max(k))),
            Operator::Lt | Operator::LtEq => upper = Some(upper.map_or(k, |u| u.min(k))),
            Operator::Eq => {
                lower = Some(lower.map_or(k, |l| l.max(k)));
                upper = Some(upper.map_or(k, |u| u.min(k)));
            }
            _ => {}
        }
    };
    for (a, b) in &join.on {
        bound(Operator::Eq, a, b);
    }
    if let Some(filter) = &join.filter {
        for conjunct in split_conjunction(filter) {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op,
                    right: b,
                }) => bound(*op, a, b),
                Expr::Between(between) if !between.negated => {
                    bound(Operator::GtEq, &between.expr, &between.low);
                    bound(Operator::LtEq, &between.expr, &between.high);
                }
                _ => {}
            }
        }
    }
    match (lower, upper) {
        (Some(lower), Some(upper)) => Ok((lower, upper)),
        _ => Err(EngineError::InvalidQuery(format!(
            "a join of two streams needs an event-time range condition on the watermark columns that \
             bounds both sides, e.g. `{r}.{rt} BETWEEN {l}.{lt} AND {l}.{lt} + INTERVAL '1 hour'` or \
             `{r}.{rt} >= {l}.{lt} AND {r}.{rt} <= {l}.{lt} + INTERVAL '1 hour'`, so buffered rows can be \
             evicted once the watermark passes (found {}): Sluice refuses the unbounded state Spark would allow",
            match (lower, upper) {
                (None, None) => "no bound".to_string(),
                (Some(l), None) => format!(
                    "only {lt} - {rt} >= {l} ms",
                    lt = left_time,
                    rt = right_time
                ),
                (None, Some(u)) => format!(
                    "only {lt} - {rt} <= {u} ms",
                    lt = left_time,
                    rt = right_time
                ),
                (Some(_), Some(_)) => String::new(),
            },
            l = left.source,
            r = right.source,
            lt = left_time,
            rt = right_time,
        ))),
    }
}

/// `expr` as (side, offset ms) when it is a side's watermark column plus or minus a fixed
/// interval (0 left, 1 right).
fn time_operand(
    expr: &Expr,
    left: &DFSchema,
    right: &DFSchema,
    left_time: &str,
    right_time: &str,
) -> Option<(u8, i64)> {
    let recurse = |e: &Expr| time_operand(e, left, right, left_time, right_time);
    match expr {
        Expr::Column(column) => side_of(column, left, right, left_time, right_time).map(|s| (s, 0)),
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field })
            if matches!(field.data_type(), DataType::Timestamp(_, _)) =>
        {
            recurse(expr)
        }
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op: Operator::Plus,
            right: b,
        }) => match (recurse(a), interval_ms(b), interval_ms(a), recurse(b)) {
            (Some((s, o)), Some(d), _, _) | (_, _, Some(d), Some((s, o))) => {
                Some((s, o.checked_add(d)?))
            }
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op: Operator::Minus,
            right: b,
        }) => {
            let (s, o) = recurse(a)?;
            Some((s, o.checked_sub(interval_ms(b)?)?))
        }
        _ => None,
    }
}

fn side_of(
    column: &Column,
    left: &DFSchema,
    right: &DFSchema,
    left_time: &str,
    right_time: &str,
) -> Option<u8> {
    if column.name == left_time && left.has_column(column) {
        Some(0)
    } else if column.name == right_time && right.has_column(column) {
        Some(1)
    } else {
        None
    }
}

/// A fixed-length interval literal in ms (months have no fixed length: `None`).
fn interval_ms(expr: &Expr) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * DAY_MS + v.nanoseconds.div_euclid(1_000_000))
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * DAY_MS + i64::from(v.milliseconds))
        }
        ScalarValue::IntervalYearMonth(Some(0)) => Some(0),
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1000),
        ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(v.div_euclid(1000)),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v.div_euclid(1_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
