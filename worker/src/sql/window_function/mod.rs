//! Window functions over a stream, per event-time window: top-N per window and its kin (Flink's
//! Window Top-N and Window Deduplication: `ROW_NUMBER() OVER (PARTITION BY window_start,
//! window_end ...) <= N` over a windowing TVF; Nexmark q18/q19 in their windowed form).
//!
//! Rules (checked when the query is planned, each refusal names its rule):
//! - one `OVER` clause shape (one `Window` node of the plan: functions with different
//!   `PARTITION BY`/`ORDER BY` are refused), over one stream, with nothing else that keeps state
//!   (no aggregation, join of two streams or DISTINCT);
//! - its `PARTITION BY` includes a tumbling event-time window over the source's watermark column:
//!   `window(<watermark column>, size)`, directly or as a column the subquery defines so;
//! - output mode `append`.
//!
//! Then every partition lies inside one window, and a window is complete once the watermark
//! passes its end. Per micro-batch, with `W` the watermark of the batch (computed at the end of
//! the previous batch, as for aggregations):
//! 1. the part of the plan below the window functions runs over the batch's rows; rows whose
//!    window ends at or before `W` are late and dropped (counted), as are rows without a window
//!    (a null event time);
//! 2. the other rows are buffered in the state store with their window's end;
//! 3. buffered rows whose window ends at or before `W` are taken out of the store and the whole
//!    query runs over them alone: the window functions see each closed partition whole, so a
//!    top-N, a rank or a `lag` is exactly the batch answer over the same rows. Each closed
//!    window's rows are emitted once (append).
//!
//! The state holds the rows of the windows still open (at most `size + delay` of event time);
//! Flink keeps only each partition's top N, which bounds it further for a top-N (not done yet).
//!
//! State table (Arrow, one per task, checkpointed as deltas + snapshots like every state store):
//! `__sluice_seq: UInt64` (unique per buffered row; the key), `__sluice_window_end: Int64` (ms
//! since the epoch), then the columns below the window functions as `c0`, `c1`, …

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, Window};
use datafusion::physical_expr::PhysicalExpr;
use sluice_crds::OutputMode;

use super::streaming::{SourceWatermark, max_event_times, next_watermark};
use super::{BatchQuery, StateProgress, StreamingState};
use crate::error::{EngineError, Result};
use crate::state::{StateDelta, StateStore, event_millis};

const SEQ_COLUMN: &str = "__sluice_seq";
const END_COLUMN: &str = "__sluice_window_end";
/// Columns before the buffered row's own: the sequence number and the window's end.
const PREFIX: usize = 2;
const OPERATOR: &str = "windowFunction";

/// A query whose window functions partition by an event-time window, planned.
#[derive(Clone, Debug)]
pub struct WindowFunctionPlan {
    /// The `PARTITION BY` expression giving a row's window (a `Struct{start, end}`), over the
    /// schema of the plan below the window functions.
    window: Expr,
    /// Shape of the plan below the window functions (its columns are what the state buffers).
    below: DFSchemaRef,
    state_schema: SchemaRef,
}

impl WindowFunctionPlan {
    /// The plan for `plan` when it has window functions over a stream: `Ok(None)` without
    /// window functions.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] naming the rule of the module docs that the query breaks.
    pub fn new(
        plan: &LogicalPlan,
        inputs: &[(String, SchemaRef)],
        watermarks: &[SourceWatermark],
        output_mode: OutputMode,
    ) -> Result<Option<Self>> {
        let windows = window_nodes(plan);
        let Some(window) = windows.first() else {
            return Ok(None);
        };
        let refuse = |why: &str| {
            Err(EngineError::InvalidQuery(format!(
                "a window function over a stream {why} (supported: window functions whose PARTITION BY \
                 includes a tumbling event-time window, `window(<watermark column>, size)`, run once per \
                 closed window in append mode, e.g. the top 10 bids per 10-second window: \
                 `ROW_NUMBER() OVER (PARTITION BY window(\"dateTime\", '10 seconds') ORDER BY price DESC) <= 10`). \
                 For per-batch results (DStream / foreachBatch style) set `sqlScope: microBatch`."
            )))
        };
        if windows.len() > 1 {
            return refuse(
                "must use one PARTITION BY and ORDER BY for all its functions (these have several)",
            );
        }
        if output_mode != OutputMode::Append {
            return refuse("runs in outputMode `append` only");
        }
        let streams: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        let scanned = super::scanned_streams(&window.input, &streams);
        if scanned.len() != 1 {
            return refuse("must read exactly one stream below it");
        }
        let mut partitions = Vec::new();
        for expr in &window.window_expr {
            match expr.clone().unalias() {
                Expr::WindowFunction(function) => {
                    partitions.push(function.params.partition_by.clone());
                }
                _ => return refuse("must be a plain window function call"),
            }
        }
        let watermarked: Vec<&str> = watermarks
            .iter()
            .filter(|w| scanned.contains(&w.source))
            .map(|w| w.column.as_str())
            .collect();
        let Some(first) = partitions.first() else {
            return Ok(None);
        };
        let found = first
            .iter()
            .find(|e| tumbling_window_over(e, &window.input, &watermarked).is_some());
        let Some(window_expr) = found else {
            if watermarked.is_empty() {
                return refuse(&format!(
                    "needs a watermark on source `{}`",
                    scanned.first().map(String::as_str).unwrap_or_default()
                ));
            }
            return refuse(&format!(
                "needs PARTITION BY a tumbling window over the watermark column ({})",
                watermarked.join(", ")
            ));
        };
        if partitions.iter().any(|p| !p.contains(window_expr)) {
            return refuse("must partition every function by the same window");
        }
        let below = window.input.schema().clone();
        let mut fields = vec![
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
            Field::new(END_COLUMN, DataType::Int64, false),
        ];
        fields.extend(
            below
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true)),
        );
        Ok(Some(Self {
            window: window_expr.clone(),
            below,
            state_schema: Arc::new(Schema::new(fields)),
        }))
    }

    pub(super) fn streaming_state(
        &self,
        watermarks: Vec<SourceWatermark>,
    ) -> Result<StreamingState> {
        Ok(StreamingState::append_buffer(
            StateStore::new(self.state_schema.clone(), 1, None)?,
            watermarks,
            self.fingerprint(),
            OPERATOR,
        ))
    }

    /// What must not change across restarts of a checkpoint: the buffered rows' shape and the
    /// window that closes them.
    fn fingerprint(&self) -> String {
        format!(
            "window function state({}) window({})",
            super::state_fields(&self.state_schema),
            self.window
        )
    }

    /// The buffered rows in the schema below the window functions, with their keys and windows'
    /// ends, in buffering order; and the next free sequence number.
    fn buffered(&self, store: &StateStore) -> Result<Buffered> {
        let (keys, entries): (Vec<_>, Vec<_>) = store.iter().map(|(k, e)| (k.clone(), e)).unzip();
        if keys.is_empty() {
            return Ok(Buffered::default());
        }
        let columns = store.columns(entries)?;
        let column = |i: usize| {
            columns.get(i).cloned().ok_or_else(|| {
                EngineError::Internal(format!("window function state: no column {i}"))
            })
        };
        let seqs = column(0)?;
        let seqs = seqs
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("window function state: sequence".into()))?;
        let ends = column(1)?;
        let ends = ends
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("window function state: window end".into()))?;
        // Buffering order, so a replay and a restart see the rows in the same order.
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_unstable_by_key(|&r| seqs.value(r as usize));
        let indices = arrow::array::UInt32Array::from(order.clone());
        let mut rows = Vec::with_capacity(self.below.fields().len());
        for (i, field) in self.below.fields().iter().enumerate() {
            let array = arrow::compute::take(&column(PREFIX + i)?, &indices, None)?;
            rows.push(if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            });
        }
        let schema = Arc::new(self.below.as_arrow().clone());
        Ok(Buffered {
            keys: order
                .iter()
                .filter_map(|&r| keys.get(r as usize).cloned())
                .collect(),
            ends: order.iter().map(|&r| ends.value(r as usize)).collect(),
            next_seq: arrow::compute::max(&seqs).map_or(0, |m| m + 1),
            rows: Some(RecordBatch::try_new(schema, rows)?),
        })
    }
}

/// The rows a window-function state holds, decoded once per batch.
#[derive(Default)]
struct Buffered {
    keys: Vec<arrow::row::OwnedRow>,
    /// Each row's window end, ms since the epoch.
    ends: Vec<i64>,
    next_seq: u64,
    rows: Option<RecordBatch>,
}

impl BatchQuery {
    /// Runs one micro-batch of a query with window functions per event-time window (steps 1–3 of
    /// the module docs); the state changes wait in `pending` for the commit like an
    /// aggregation's.
    ///
    /// # Errors
    /// Execution errors of DataFusion or Arrow.
    pub(super) async fn run_window_function(
        &mut self,
        rows: Vec<Vec<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        let (Some(planned), Some(state)) = (self.window_function.clone(), self.streaming.as_ref())
        else {
            return Err(EngineError::Internal("no window function state".into()));
        };
        let watermark = state.store.event_time.watermark_ms;
        let batch_max = max_event_times(&state.watermarks, &rows)?;
        let plan = self.plan(rows).await?;
        let window = window_nodes(&plan)
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("the window functions vanished".into()))?;
        let event = self
            .ctx
            .create_physical_expr(planned.window.clone(), window.input.schema())?;

        // 1. The rows below the window functions, late ones dropped.
        let below = self
            .ctx
            .execute_logical_plan(window.input.as_ref().clone())
            .await?
            .collect()
            .await?;
        let mut admitted = Vec::new();
        let mut late = 0u64;
        for batch in below {
            let ends = window_ends(event.as_ref(), &batch)?;
            let keep: BooleanArray = ends
                .iter()
                .map(|end| Some(end.is_some_and(|e| watermark.is_none_or(|w| e > w))))
                .collect();
            let kept = filter_record_batch(&batch, &keep)?;
            late += (batch.num_rows() - kept.num_rows()) as u64;
            if kept.num_rows() > 0 {
                admitted.push((kept, arrow::compute::filter(&ends, &keep)?));
            }
        }

        // 3. Closed windows: out of the store, and the whole query over them.
        let buffered = planned.buffered(&state.store)?;
        let mut delta = StateDelta::default();
        let mut output = Vec::new();
        if let (Some(w), Some(rows)) = (watermark, &buffered.rows) {
            let closed: BooleanArray = buffered.ends.iter().map(|e| Some(*e <= w)).collect();
            let closed_rows = filter_record_batch(rows, &closed)?;
            for (key, end) in buffered.keys.iter().zip(&buffered.ends) {
                if *end <= w {
                    delta.deletes.push(key.clone());
                }
            }
            delta.deletes.sort();
            if closed_rows.num_rows() > 0 {
                let over_closed = replace_window_input(plan, &window, closed_rows)?;
                output = self
                    .ctx
                    .execute_logical_plan(over_closed)
                    .await?
                    .collect()
                    .await?;
            }
        }

        // 2. The admitted rows into the store.
        let state = self
            .streaming
            .as_mut()
            .ok_or_else(|| EngineError::Internal("no window function state".into()))?;
        let mut next_seq = buffered.next_seq;
        let mut added = 0u64;
        for (batch, ends) in admitted {
            let n = batch.num_rows();
            let seqs: ArrayRef =
                Arc::new(UInt64Array::from_iter_values(next_seq..next_seq + n as u64));
            next_seq += n as u64;
            let mut columns = vec![seqs.clone(), ends];
            columns.extend(batch.columns().iter().cloned());
            let columns = crate::schema::cast_columns(&planned.state_schema, columns)?;
            let keys = state.store.keys(&[seqs], n)?;
            let entries = state.store.entries(&columns)?;
            delta.upserts.extend(keys.into_iter().zip(entries));
            added += n as u64;
        }
        delta.event_time = next_watermark(&state.store.event_time, &batch_max, &state.watermarks);
        let removed = delta.deletes.len() as u64;
        state.last = StateProgress {
            state_rows: (state.store.len() as u64 + added).saturating_sub(removed),
            rows_updated: added,
            rows_removed: removed,
            state_file_bytes: 0,
            late_rows_dropped: late,
            watermark_ms: delta.event_time.watermark_ms,
            operator: OPERATOR,
        };
        state.pending = Some(delta);
        Ok(output)
    }
}

/// Checks window functions that sit above the query's streaming aggregation (Nexmark q5's "the
/// auctions with the most bids of each window"). They run over the rows the aggregation emits in
/// a batch, and need no state of their own when those rows are whole partitions: in `complete`
/// mode every batch emits the whole result table; in `append` mode a window's groups all close
/// at the same watermark, so they are emitted in one batch, and a function partitioned by that
/// window sees each window whole.
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a window function below the aggregation, `update` mode, or
/// (in `append`) one not partitioned by the aggregation's `window(...)` key over a watermarked
/// column.
pub fn check_above_aggregation(
    plan: &LogicalPlan,
    output_mode: OutputMode,
    watermarks: &[SourceWatermark],
) -> Result<()> {
    let refuse = |why: &str| {
        Err(EngineError::InvalidQuery(format!(
            "a window function over a streaming aggregation {why} (supported: in `complete` mode, any; \
             in `append` mode, one partitioned by the aggregation's window column, e.g. \
             `max(num) OVER (PARTITION BY w)` over `SELECT count(*) AS num, window(ts, '10 seconds') AS w \
             ... GROUP BY window(ts, '10 seconds'), ...`, as every group of a window is emitted in one batch)"
        )))
    };
    let watermarked: Vec<&str> = watermarks.iter().map(|w| w.column.as_str()).collect();
    for window in window_nodes(plan) {
        let mut above = false;
        let _ = window.input.apply(|node| {
            if matches!(node, LogicalPlan::Aggregate(_)) {
                above = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if !above {
            return refuse("must sit above the aggregation, not below it");
        }
        match output_mode {
            OutputMode::Complete => continue,
            OutputMode::Update => {
                return refuse(
                    "needs outputMode `append` or `complete` (update emits a window's groups piecemeal)",
                );
            }
            OutputMode::Append => {}
        }
        for expr in &window.window_expr {
            let Expr::WindowFunction(function) = expr.clone().unalias() else {
                return refuse("must be a plain window function call");
            };
            let by_window = function.params.partition_by.iter().any(|e| match e {
                Expr::Column(column) => aggregate_window_key(column, &window.input, &watermarked),
                _ => false,
            });
            if !by_window {
                return refuse(
                    "in `append` mode must be partitioned by the aggregation's window column",
                );
            }
        }
    }
    Ok(())
}

/// Whether `column` of `plan`'s output is the `window(<watermarked column>, ...)` grouping key of
/// the aggregation below, through projections, aliases and filters.
fn aggregate_window_key(column: &Column, plan: &LogicalPlan, watermarked: &[&str]) -> bool {
    match plan {
        LogicalPlan::Projection(projection) => match projected_expr(column, projection) {
            Some(Expr::Column(inner)) => {
                aggregate_window_key(&inner, &projection.input, watermarked)
            }
            _ => false,
        },
        LogicalPlan::SubqueryAlias(alias) => aggregate_window_key(
            &Column::new_unqualified(&column.name),
            &alias.input,
            watermarked,
        ),
        LogicalPlan::Filter(filter) => aggregate_window_key(column, &filter.input, watermarked),
        LogicalPlan::Aggregate(aggregate) => {
            let found = column_index(&aggregate.schema, column);
            let Some(group) = found.and_then(|i| aggregate.group_expr.get(i)) else {
                return false;
            };
            match group.clone().unalias() {
                Expr::ScalarFunction(call) if call.name() == "window" => {
                    match call.args.first().map(|a| a.clone().unalias()) {
                        Some(Expr::Column(time)) => source_column(&time, &aggregate.input)
                            .is_some_and(|c| watermarked.contains(&c.as_str())),
                        _ => false,
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Each row's window end (ms since the epoch; null without a window).
fn window_ends(event: &dyn PhysicalExpr, batch: &RecordBatch) -> Result<Int64Array> {
    let window = event.evaluate(batch)?.into_array(batch.num_rows())?;
    event_millis(&window)
}

/// `plan` with the input of its window functions replaced by `rows` (same columns, names and
/// qualifiers), so the window functions and everything above them plan unchanged.
fn replace_window_input(
    plan: LogicalPlan,
    window: &Window,
    rows: RecordBatch,
) -> Result<LogicalPlan> {
    let input = super::scan_as(&rows, window.input.schema(), "__sluice_window_rows", false)?;
    let replacement = LogicalPlan::Window(Window::try_new(
        window.window_expr.clone(),
        Arc::new(input),
    )?);
    super::replace_nodes(
        plan,
        |node| matches!(node, LogicalPlan::Window(_)),
        replacement,
    )
}

/// The `Window` nodes of `plan`.
fn window_nodes(plan: &LogicalPlan) -> Vec<Window> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Window(window) = node {
            found.push(window.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The watermark column when `expr` (over `plan`'s output) is `window(<column>, size)` — a
/// tumbling window — over one of the `watermarked` source columns, directly or through the
/// projections and aliases of `plan`.
fn tumbling_window_over(expr: &Expr, plan: &LogicalPlan, watermarked: &[&str]) -> Option<String> {
    match expr.clone().unalias() {
        Expr::ScalarFunction(call) if call.name() == "window" && call.args.len() == 2 => {
            let Expr::Column(time) = call.args.first()?.clone().unalias() else {
                return None;
            };
            let source = source_column(&time, plan)?;
            watermarked.contains(&source.as_str()).then_some(source)
        }
        Expr::Column(column) => {
            let (defined, input) = defining_expr(&column, plan)?;
            tumbling_window_over(&defined, input, watermarked)
        }
        _ => None,
    }
}

/// Index of `column` among `schema`'s fields: same name, and same qualifier unless `column` has
/// none.
fn column_index(schema: &DFSchema, column: &Column) -> Option<usize> {
    schema.iter().position(|(qualifier, field)| {
        field.name() == &column.name
            && (column.relation.is_none() || column.relation.as_ref() == qualifier)
    })
}

/// The expression (alias removed) that `projection` computes `column` of its output with.
fn projected_expr(column: &Column, projection: &Projection) -> Option<Expr> {
    let i = column_index(&projection.schema, column)?;
    Some(projection.expr.get(i)?.clone().unalias())
}

/// The expression a column of `plan`'s output is computed by, and the plan whose output that
/// expression reads: through filters, aliases and plain column projections down to the
/// projection that computes it (`None` for a column read straight from a source).
fn defining_expr<'a>(column: &Column, plan: &'a LogicalPlan) -> Option<(Expr, &'a LogicalPlan)> {
    match plan {
        LogicalPlan::Projection(projection) => match projected_expr(column, projection)? {
            Expr::Column(inner) => defining_expr(&inner, &projection.input),
            other => Some((other, projection.input.as_ref())),
        },
        LogicalPlan::SubqueryAlias(alias) => {
            defining_expr(&Column::new_unqualified(&column.name), &alias.input)
        }
        LogicalPlan::Filter(filter) => defining_expr(column, &filter.input),
        _ => None,
    }
}

/// The source column a column of `plan`'s output is, through projections, aliases and filters.
fn source_column(column: &Column, plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(_) => Some(column.name.clone()),
        LogicalPlan::Projection(projection) => match projected_expr(column, projection)? {
            Expr::Column(inner) => source_column(&inner, &projection.input),
            _ => None,
        },
        LogicalPlan::SubqueryAlias(alias) => {
            source_column(&Column::new_unqualified(&column.name), &alias.input)
        }
        LogicalPlan::Filter(filter) => source_column(column, &filter.input),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
