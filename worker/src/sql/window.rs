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

/// Most windows one row may fall in (`ceil(size / slide)`): each is a row of the aggregation's
/// input, so a tiny slide under a long window multiplies a batch past any memory.
const MAX_WINDOWS_PER_ROW: i64 = 10_000;

impl WindowSpec {
    /// Window starts of event time `t`, latest first. Windows whose start or end is not an `i64`
    /// (event times near the ends of the timestamp range) are left out, so such a row has none.
    fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last_start = t
            .checked_sub(self.start)
            .and_then(|d| t.checked_sub(d.rem_euclid(self.slide)));
        // size > 0, slide > 0: no overflow (ceil(size / slide) without `size + slide - 1`).
        let overlapping = (self.size - 1) / self.slide + 1;
        last_start
            .into_iter()
            .flat_map(move |last| {
                (0..overlapping)
                    .map_while(move |k| k.checked_mul(self.slide).and_then(|o| last.checked_sub(o)))
            })
            .filter(move |s| *s <= t && s.checked_add(self.size).is_some_and(|end| t < end))
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
    let ticks = i64::try_from(duration.as_millis())
        .ok()
        .and_then(|ms| match unit {
            TimeUnit::Second => Some(ms / 1000),
            other => ms.checked_mul(ticks_per_ms(other)),
        });
    match ticks {
        Some(ticks) => Ok(ticks),
        None => {
            plan_err!("window(): {what} `{text}` does not fit the time column's {unit:?} range")
        }
    }
}

fn spec_from_args(args: &[ColumnarValue], unit: &TimeUnit) -> DfResult<WindowSpec> {
    let size = duration_ticks(arg(args, 1, "window")?, unit, "window duration")?;
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
    if (size - 1) / slide + 1 > MAX_WINDOWS_PER_ROW {
        return plan_err!(
            "window(): a window sliding by less than 1/{MAX_WINDOWS_PER_ROW} of its duration puts \
             each row in more than {MAX_WINDOWS_PER_ROW} windows; use a longer slide"
        );
    }
    Ok(WindowSpec { size, slide, start })
}

/// Argument `i` of a call to `name`: a planning error (the call's usage) when it is missing.
fn arg<'a, T>(args: &'a [T], i: usize, name: &str) -> DfResult<&'a T> {
    match args.get(i) {
        Some(a) => Ok(a),
        None => plan_err!("{name}(): missing argument {}", i + 1),
    }
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
    match arg(arg_types, 0, name)? {
        DataType::Timestamp(unit, _) => Ok(*unit),
        other => plan_err!("{name}(): the time column must be a timestamp, not {other}"),
    }
}

/// Builds the struct array of windows `[start, start + size)`; a null start, or one whose end is
/// not an `i64`, gives a null window.
fn struct_of(starts: Vec<Option<i64>>, size: i64, ts: &DataType) -> DfResult<StructArray> {
    let windows: Vec<Option<(i64, i64)>> = starts
        .into_iter()
        .map(|s| s.and_then(|s| s.checked_add(size).map(|end| (s, end))))
        .collect();
    let start_arr: Int64Array = windows.iter().map(|w| w.map(|(s, _)| s)).collect();
    let end_arr: Int64Array = windows.iter().map(|w| w.map(|(_, e)| e)).collect();
    let nulls = start_arr.nulls().cloned();
    Ok(StructArray::try_new(
        window_fields(ts),
        vec![cast(&start_arr, ts)?, cast(&end_arr, ts)?],
        nulls,
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
        Ok(DataType::Struct(window_fields(arg(
            arg_types,
            0,
            self.name(),
        )?)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let time = arg(&args.args, 0, self.name())?;
        let ts_type = time.data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("window(): the time column must be a timestamp");
        };
        let spec = spec_from_args(&args.args, unit)?;
        let ts = time.to_array(args.number_rows)?;
        let ticks = cast(&ts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("timestamp ticks".into()))?;
        // Null event time (or one at the ends of the range, in no window) → null window.
        let starts = ticks
            .iter()
            .map(|t| t.and_then(|t| spec.starts(t).next()))
            .collect();
        let array = struct_of(starts, spec.size, &ts_type)?;
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
            DataType::Struct(window_fields(arg(arg_types, 0, "window")?)),
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let time = arg(&args.args, 0, "window")?;
        let ts_type = time.data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("window(): the time column must be a timestamp");
        };
        let spec = spec_from_args(&args.args, unit)?;
        let ts = time.to_array(args.number_rows)?;
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
        let values = struct_of(starts.into_iter().map(Some).collect(), spec.size, &ts_type)?;
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
        Ok(DataType::Struct(window_fields(arg(
            arg_types,
            0,
            self.name(),
        )?)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let time = arg(&args.args, 0, self.name())?;
        let ts_type = time.data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return plan_err!("session_window(): the time column must be a timestamp");
        };
        let gap = duration_ticks(arg(&args.args, 1, self.name())?, unit, "gap duration")?;
        if gap <= 0 {
            return plan_err!("session_window(): the gap duration must be positive");
        }
        let ts = time.to_array(args.number_rows)?;
        let ticks = cast(&ts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("timestamp ticks".into()))?;
        // Null event time (or one whose session would end past the range) → null session.
        let array = struct_of(ticks.iter().collect(), gap, &ts_type)?;
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
    // `index` is the position of `call` among the grouping expressions (`window_group`).
    let original_name = Expr::ScalarFunction(call.clone()).schema_name().to_string();
    if call.func.name() == "session_window" {
        exprs.push(Expr::ScalarFunction(call.clone()).alias(SESSION_COLUMN));
        let projected = LogicalPlanBuilder::from(input).project(exprs)?.build()?;
        let mut groups = aggregate.group_expr.clone();
        if let Some(group) = groups.get_mut(index) {
            *group = Expr::Column(datafusion::common::Column::new_unqualified(SESSION_COLUMN))
                .alias(original_name);
        }
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
    if let Some(group) = groups.get_mut(index) {
        *group = Expr::Column(datafusion::common::Column::new_unqualified(
            WINDOW_LIST_COLUMN,
        ))
        .alias(original_name);
    }
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

    fn text(value: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(value.to_string())))
    }

    fn spec_of(args: &[&str], unit: TimeUnit) -> DfResult<WindowSpec> {
        let mut values = vec![ColumnarValue::Scalar(ScalarValue::Null)];
        values.extend(args.iter().map(|a| text(a)));
        spec_from_args(&values, &unit)
    }

    // Found with the `sql_plan` fuzz target: sizes past the unit's range overflowed
    // `ms * ticks_per_ms` (a panic in debug builds, a wrapped size in release).
    #[test]
    fn window_durations_past_the_time_unit_range_are_plan_errors() {
        let spec = spec_of(&["200000 years"], TimeUnit::Microsecond).expect("fits in µs");
        assert_eq!(spec.size, 200_000 * 31_557_600 * 1_000_000);
        let err = spec_of(&["200000 years"], TimeUnit::Nanosecond)
            .expect_err("does not fit in ns")
            .to_string();
        assert!(
            err.contains("window duration `200000 years` does not fit"),
            "{err}"
        );
        let err = spec_of(
            &["1 hour", "1 minute", "200000 years"],
            TimeUnit::Nanosecond,
        )
        .expect_err("start does not fit in ns")
        .to_string();
        assert!(err.contains("start time"), "{err}");
    }

    #[test]
    fn a_slide_too_small_for_its_window_is_a_plan_error() {
        assert!(spec_of(&["10000 minutes", "1 minute"], TimeUnit::Microsecond).is_ok());
        let err = spec_of(&["1 day", "1ms"], TimeUnit::Microsecond)
            .expect_err("86,400,000 windows per row")
            .to_string();
        assert!(err.contains("more than 10000 windows"), "{err}");
    }

    #[test]
    fn event_times_at_the_ends_of_the_range_fall_in_no_window() {
        let minute = 60_000_000;
        let tumbling = WindowSpec {
            size: minute,
            slide: minute,
            start: 0,
        };
        // The window holding i64::MAX would end past it.
        assert_eq!(tumbling.starts(i64::MAX).count(), 0);
        assert_eq!(tumbling.starts(i64::MIN).count(), 0);
        let sliding = WindowSpec {
            size: 10 * minute,
            slide: minute,
            start: 30_000_000,
        };
        assert_eq!(sliding.starts(i64::MIN).count(), 0);
        let t = i64::MAX - 5 * minute;
        // Only the windows whose end is representable.
        assert!(
            sliding
                .starts(t)
                .all(|s| s.checked_add(10 * minute).is_some())
        );
        assert!(sliding.starts(t).count() < 10);
        // Their struct: a null window, not [0, size).
        let windows = struct_of(
            vec![Some(i64::MAX - 1), Some(0), None],
            minute,
            &DataType::Int64,
        )
        .expect("struct");
        assert_eq!(windows.null_count(), 2);
        assert!(windows.is_valid(1));
    }
}
