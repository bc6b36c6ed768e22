//! Spark's event-time window grouping function, `window(ts, size[, slide[, startTime]])`.
//!
//! Shape: `window(ts: Timestamp(unit, tz), size: Utf8, slide: Utf8, start: Utf8)` returns
//! `Struct{start: Timestamp(unit, tz), end: Timestamp(unit, tz)}`; durations use Spark's text form
//! (`'10 minutes'`, `'5 seconds'`, `'1 hour'`). A row with event time `t` belongs to every window
//! `[s, s + size)` with `s = lastStart - k·slide`, `lastStart = t - ((t - startTime) mod slide)`,
//! `k = 0 .. ceil(size / slide)` and `s <= t < s + size` (Spark's `TimeWindowing` rule).
//!
//! As a scalar function `window` returns the latest window containing `t` (the only one for a
//! tumbling window). In a streaming `GROUP BY`, [`rewrite_window_grouping`] replaces it by
//! [`WINDOW_COLUMN`], the unnested output of `__sluice_windows` (all windows of the row), so sliding
//! windows count a row once per window, as Spark's `Expand`.
//!
//! `session_window(ts, gap)` gives each row its own session `[ts, ts + gap)`; the streaming
//! aggregation merges overlapping sessions of a key (see `streaming::merge_sessions`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, ListArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{DataFusionError, ScalarValue, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

/// Name of the column holding a row's windows: a list from `__sluice_windows`, then (after the
/// unnest of the rewrite) one `Struct{start, end}` per row and window.
pub const WINDOW_COLUMN: &str = "__sluice_windows";
/// Name of the column holding a row's own session `Struct{start, end}` before sessions merge.
pub const SESSION_COLUMN: &str = "__sluice_session";
const WINDOW_LIST_COLUMN: &str = WINDOW_COLUMN;

type DfResult<T> = datafusion::common::Result<T>;

/// Window size, slide and start offset in the timestamp's unit.
#[derive(Debug, Clone, Copy)]
struct WindowSpec {
    size: i64,
    slide: i64,
    start: i64,
}

impl WindowSpec {
    /// Window starts of event time `t`, latest first.
    fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last_start = t - (t - self.start).rem_euclid(self.slide);
        let overlapping = (self.size + self.slide - 1) / self.slide;
        (0..overlapping)
            .map(move |k| last_start - k * self.slide)
            .filter(move |s| *s <= t && t < s + self.size)
    }
}

fn ticks_per_ms(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1_000_000,
    }
}

fn duration_ticks(value: &ColumnarValue, unit: &TimeUnit, what: &str) -> DfResult<i64> {
    let ColumnarValue::Scalar(ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text))) =
        value
    else {
        return plan_err!("window(): {what} must be a string literal such as '10 minutes'");
    };
    let duration = sluice_crds::duration::parse_duration(text)
        .map_err(|m| DataFusionError::Plan(format!("window(): {what}: {m}")))?;
    let ms = duration.as_millis() as i64;
    Ok(match unit {
        TimeUnit::Second => ms / 1000,
        other => ms * ticks_per_ms(other),
    })
}

fn spec_from_args(args: &[ColumnarValue], unit: &TimeUnit) -> DfResult<WindowSpec> {
    let size = duration_ticks(&args[1], unit, "window duration")?;
    let slide = match args.get(2) {
        Some(v) => duration_ticks(v, unit, "slide duration")?,
        None => size,
    };
    let start = match args.get(3) {
        Some(v) => duration_ticks(v, unit, "start time")?,
        None => 0,
    };
    if size <= 0 || slide <= 0 || slide > size {
        return plan_err!(
            "window(): the slide duration must be positive and at most the window duration"
        );
    }
    Ok(WindowSpec { size, slide, start })
}

fn window_fields(ts: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts.clone(), true),
    ])
}

fn check_args(name: &str, arg_types: &[DataType]) -> DfResult<TimeUnit> {
    if !(2..=4).contains(&arg_types.len()) {
        return plan_err!("{name}(timeColumn, windowDuration[, slideDuration[, startTime]])");
    }
    match &arg_types[0] {
        DataType::Timestamp(unit, _) => Ok(*unit),
        other => plan_err!("{name}(): the time column must be a timestamp, not {other}"),
    }
}

/// Builds the struct array of windows from parallel start ticks.
fn struct_of(starts: Vec<i64>, size: i64, ts: &DataType) -> DfResult<StructArray> {
    let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
    let start_arr = cast(&Int64Array::from(starts), ts)?;
    let end_arr = cast(&Int64Array::from(ends), ts)?;
    Ok(StructArray::try_new(
        window_fields(ts),
        vec![start_arr, end_arr],
        None,
    )?)
}

/// `window(...)`: the latest window containing each row (the only one when tumbling).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowUdf {
    signature: Signature,
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        "window"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        check_args("window", arg_types)?;
        Ok(DataType::Struct(window_fields(&arg_types[0])))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ts_type = args.args[0].data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("window(): the time column must be a timestamp");
        };
        let spec = spec_from_args(&args.args, unit)?;
        let ts = args.args[0].to_array(args.number_rows)?;
        let ticks = cast(&ts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("timestamp ticks".into()))?;
        let starts = ticks
            .iter()
            .map(|t| t.and_then(|t| spec.starts(t).next()).unwrap_or(0))
            .collect();
        let array = struct_of(starts, spec.size, &ts_type)?;
        // Null event time → null window.
        let array = StructArray::try_new(
            array.fields().clone(),
            array.columns().to_vec(),
            ticks.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// `__sluice_windows(...)`: every window containing each row, as a list (unnested by the rewrite).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowsUdf {
    signature: Signature,
}

impl ScalarUDFImpl for WindowsUdf {
    fn name(&self) -> &str {
        WINDOW_LIST_COLUMN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        check_args("window", arg_types)?;
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(window_fields(&arg_types[0])),
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ts_type = args.args[0].data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("window(): the time column must be a timestamp");
        };
        let spec = spec_from_args(&args.args, unit)?;
        let ts = args.args[0].to_array(args.number_rows)?;
        let ticks = cast(&ts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("timestamp ticks".into()))?;
        let mut starts = Vec::with_capacity(ticks.len());
        let mut lengths = Vec::with_capacity(ticks.len());
        for t in ticks.iter() {
            let before = starts.len();
            if let Some(t) = t {
                // Ascending start order.
                let mut own: Vec<i64> = spec.starts(t).collect();
                own.reverse();
                starts.extend(own);
            }
            lengths.push(starts.len() - before);
        }
        let values = struct_of(starts, spec.size, &ts_type)?;
        let item = Arc::new(Field::new(
            "item",
            DataType::Struct(window_fields(&ts_type)),
            true,
        ));
        let list = ListArray::try_new(
            item,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(values) as ArrayRef,
            None,
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `session_window(ts, gap)`: the row's own session `[ts, ts + gap)`; in a streaming `GROUP BY`
/// the aggregation merges overlapping sessions of a key (Spark's session windows).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionWindowUdf {
    signature: Signature,
}

impl ScalarUDFImpl for SessionWindowUdf {
    fn name(&self) -> &str {
        "session_window"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        if arg_types.len() != 2 {
            return plan_err!("session_window(timeColumn, gapDuration)");
        }
        check_args("session_window", arg_types)?;
        Ok(DataType::Struct(window_fields(&arg_types[0])))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ts_type = args.args[0].data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("session_window(): the time column must be a timestamp");
        };
        let gap = duration_ticks(&args.args[1], unit, "gap duration")?;
        if gap <= 0 {
            return plan_err!("session_window(): the gap duration must be positive");
        }
        let ts = args.args[0].to_array(args.number_rows)?;
        let ticks = cast(&ts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("timestamp ticks".into()))?;
        let starts: Vec<i64> = ticks.iter().map(|t| t.unwrap_or(0)).collect();
        let array = struct_of(starts, gap, &ts_type)?;
        let array = StructArray::try_new(
            array.fields().clone(),
            array.columns().to_vec(),
            ticks.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// The `window`, `__sluice_windows` and `session_window` functions, to register on a session.
pub fn window_udfs() -> Vec<ScalarUDF> {
    let signature = || Signature::variadic_any(Volatility::Immutable);
    vec![
        ScalarUDF::new_from_impl(WindowUdf {
            signature: signature(),
        }),
        ScalarUDF::new_from_impl(WindowsUdf {
            signature: signature(),
        }),
        ScalarUDF::new_from_impl(SessionWindowUdf {
            signature: signature(),
        }),
    ]
}

/// The `window(...)` call among `aggregate`'s grouping expressions, if any: (index, call).
fn window_group(aggregate: &Aggregate) -> DfResult<Option<(usize, ScalarFunction)>> {
    let mut found = None;
    for (i, expr) in aggregate.group_expr.iter().enumerate() {
        if let Expr::ScalarFunction(call) = expr
            && matches!(call.func.name(), "window" | "session_window")
        {
            if found.is_some() {
                return plan_err!(
                    "Multiple time window expressions in one aggregation are not supported"
                );
            }
            found = Some((i, call.clone()));
        }
    }
    Ok(found)
}

/// What the rewrite found: the time argument of the window, when it is a plain column.
#[derive(Debug, Clone)]
pub struct WindowGrouping {
    /// A session window (grouped on [`SESSION_COLUMN`]) rather than a time window.
    pub session: bool,
    /// Index of the window among the grouping expressions.
    pub group_index: usize,
    /// Name of the time column the window is computed from.
    pub time_column: Option<String>,
}

/// Rewrites `GROUP BY window(ts, ...)` into a grouping over [`WINDOW_COLUMN`], the unnested list of
/// all windows of each row, keeping the output column's name. Returns the aggregate unchanged (and
/// `None`) when it has no window.
///
/// # Errors
/// A planning error for more than one window in the grouping.
pub fn rewrite_window_grouping(
    aggregate: &Aggregate,
) -> DfResult<(Aggregate, Option<WindowGrouping>)> {
    let Some((index, call)) = window_group(aggregate)? else {
        return Ok((aggregate.clone(), None));
    };
    let input = aggregate.input.as_ref().clone();
    let mut exprs: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let time_column = match call.args.first() {
        Some(Expr::Column(c)) => Some(c.name.clone()),
        _ => None,
    };
    let original_name = aggregate.group_expr[index].schema_name().to_string();
    if call.func.name() == "session_window" {
        exprs.push(Expr::ScalarFunction(call.clone()).alias(SESSION_COLUMN));
        let projected = LogicalPlanBuilder::from(input).project(exprs)?.build()?;
        let mut groups = aggregate.group_expr.clone();
        groups[index] = Expr::Column(datafusion::common::Column::new_unqualified(SESSION_COLUMN))
            .alias(original_name);
        let rewritten =
            Aggregate::try_new(Arc::new(projected), groups, aggregate.aggr_expr.clone())?;
        return Ok((
            rewritten,
            Some(WindowGrouping {
                session: true,
                group_index: index,
                time_column,
            }),
        ));
    }
    let windows_udf = Arc::new(ScalarUDF::new_from_impl(WindowsUdf {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
    exprs.push(
        Expr::ScalarFunction(ScalarFunction::new_udf(windows_udf, call.args.clone()))
            .alias(WINDOW_LIST_COLUMN),
    );
    let expanded: LogicalPlan = LogicalPlanBuilder::from(input)
        .project(exprs)?
        .unnest_column(WINDOW_LIST_COLUMN)?
        .build()?;
    let mut groups = aggregate.group_expr.clone();
    groups[index] = Expr::Column(datafusion::common::Column::new_unqualified(
        WINDOW_LIST_COLUMN,
    ))
    .alias(original_name);
    let rewritten = Aggregate::try_new(Arc::new(expanded), groups, aggregate.aggr_expr.clone())?;
    Ok((
        rewritten,
        Some(WindowGrouping {
            session: false,
            group_index: index,
            time_column,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_starts_match_spark() {
        let minute = 60_000;
        let spec = WindowSpec {
            size: 10 * minute,
            slide: 5 * minute,
            start: 0,
        };
        // 12:07 belongs to [12:00, 12:10) and [12:05, 12:15).
        let t = 12 * 60 * minute + 7 * minute;
        let starts: Vec<i64> = spec.starts(t).collect();
        assert_eq!(starts, vec![t - 2 * minute, t - 7 * minute]);
        // Exactly on a boundary: 12:10 belongs to [12:05, 12:15) and [12:10, 12:20).
        let t = 12 * 60 * minute + 10 * minute;
        let starts: Vec<i64> = spec.starts(t).collect();
        assert_eq!(starts, vec![t, t - 5 * minute]);
        let tumbling = WindowSpec {
            size: minute,
            slide: minute,
            start: 0,
        };
        assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), vec![-minute]);
    }
}
