//! What a query needs of each source's rows, for the scan (`source::scan`): the columns its
//! optimized plan reads from the source (DataFusion's projection pushdown puts them in the
//! `TableScan`), and the conjuncts of a `Filter` right above the source's only scan that compare a
//! column with literals of the column's type.
//!
//! Sound because the filter is the scan's only consumer: a row failing one of its conjuncts never
//! reaches anything else, and DataFusion still runs the whole filter on the rows the scan returns.

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

use crate::source::scan::{CompareOp, ScanPredicate, ScanPushdown, ScanTest, ScanValue};

/// The pushdown for source `source` (schema `schema`) from an optimized plan. With
/// `predicates: false` only the columns (a stateful query computes its watermark from every row).
pub fn scan_pushdown(
    plan: &LogicalPlan,
    source: &str,
    schema: &Schema,
    predicates: bool,
) -> ScanPushdown {
    let width = schema.fields().len();
    let mut columns = vec![false; width];
    let mut scans = 0usize;
    let mut filters: Vec<ScanPredicate> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) if scan.table_name.table() == source => {
                scans += 1;
                match &scan.projection {
                    Some(projection) => {
                        for &i in projection {
                            if let Some(c) = columns.get_mut(i) {
                                *c = true;
                            }
                        }
                    }
                    None => columns.iter_mut().for_each(|c| *c = true),
                }
                // A provider that keeps filters in the scan is not a source table; be safe.
                if !scan.filters.is_empty() {
                    columns.iter_mut().for_each(|c| *c = true);
                }
            }
            LogicalPlan::Filter(filter) => {
                if let LogicalPlan::TableScan(scan) = filter.input.as_ref()
                    && scan.table_name.table() == source
                {
                    filters.extend(
                        split_conjunction(&filter.predicate)
                            .into_iter()
                            .filter_map(|e| predicate(e, schema)),
                    );
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if scans == 0 {
        // Not read through a plain scan (should not happen): read everything.
        return ScanPushdown::everything(width);
    }
    ScanPushdown {
        columns,
        // With two scans of the source (a self-join, a UNION), a filter above one says nothing
        // about the rows the other needs.
        predicates: if predicates && scans == 1 {
            filters
        } else {
            Vec::new()
        },
    }
}

/// A conjunct as a pushed test, when it is `column <op> literal`, `literal <op> column` or
/// `column [NOT] IN (literals)` with literals of the column's own type.
fn predicate(expr: &Expr, schema: &Schema) -> Option<ScanPredicate> {
    match expr {
        // `c = 1 OR c = 2 OR c IN (3, 4)` (DataFusion writes short IN lists this way).
        Expr::BinaryExpr(BinaryExpr {
            op: Operator::Or, ..
        }) => {
            let mut column = None;
            let mut values = Vec::new();
            for disjunct in split_disjunction(expr) {
                let ScanPredicate { column: c, test } = predicate(disjunct, schema)?;
                if column.is_some_and(|seen| seen != c) {
                    return None;
                }
                column = Some(c);
                match test {
                    ScanTest::Compare(CompareOp::Eq, v) => values.push(v),
                    ScanTest::In {
                        values: more,
                        negated: false,
                    } => values.extend(more),
                    _ => return None,
                }
            }
            Some(ScanPredicate {
                column: column?,
                test: ScanTest::In {
                    values,
                    negated: false,
                },
            })
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let op = match op {
                Operator::Eq => CompareOp::Eq,
                Operator::NotEq => CompareOp::NotEq,
                Operator::Lt => CompareOp::Lt,
                Operator::LtEq => CompareOp::LtEq,
                Operator::Gt => CompareOp::Gt,
                Operator::GtEq => CompareOp::GtEq,
                _ => return None,
            };
            let (column, literal, op) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) => (c, v, op),
                (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.swapped()),
                _ => return None,
            };
            let index = schema.index_of(&column.name).ok()?;
            let value = literal_for(schema.field(index).data_type(), literal)?;
            Some(ScanPredicate {
                column: index,
                test: ScanTest::Compare(op, value),
            })
        }
        Expr::InList(list) => {
            let Expr::Column(column) = list.expr.as_ref() else {
                return None;
            };
            let index = schema.index_of(&column.name).ok()?;
            let data_type = schema.field(index).data_type();
            let values = list
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => literal_for(data_type, v),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(ScanPredicate {
                column: index,
                test: ScanTest::In {
                    values,
                    negated: list.negated,
                },
            })
        }
        _ => None,
    }
}

fn split_disjunction(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut all = split_disjunction(left);
            all.extend(split_disjunction(right));
            all
        }
        other => vec![other],
    }
}

/// A non-null literal of exactly the column's type (after DataFusion's coercion) as a scan value.
fn literal_for(data_type: &DataType, literal: &ScalarValue) -> Option<ScanValue> {
    Some(match (data_type, literal) {
        (
            DataType::Utf8,
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => ScanValue::Utf8(s.clone()),
        (DataType::Int64, ScalarValue::Int64(Some(v))) => ScanValue::Int(*v),
        (DataType::Int32, ScalarValue::Int32(Some(v))) => ScanValue::Int(i64::from(*v)),
        (DataType::Int16, ScalarValue::Int16(Some(v))) => ScanValue::Int(i64::from(*v)),
        (DataType::Float64, ScalarValue::Float64(Some(v))) => ScanValue::Float(*v),
        (DataType::Boolean, ScalarValue::Boolean(Some(v))) => ScanValue::Bool(*v),
        (
            DataType::Timestamp(TimeUnit::Microsecond, column_zone),
            ScalarValue::TimestampMicrosecond(Some(v), literal_zone),
        ) if column_zone.is_some() == literal_zone.is_some() => ScanValue::Int(*v),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::scan::FieldValue;
    use arrow::datatypes::Field;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("deviceId", DataType::Utf8, true),
            Field::new("temperature", DataType::Float64, true),
            Field::new("danger_level", DataType::Utf8, true),
            Field::new("count", DataType::Int64, true),
        ]))
    }

    async fn pushdown_of(sql: &str) -> ScanPushdown {
        // As the engine: identifiers keep their case.
        let config = datafusion::prelude::SessionConfig::new()
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(config);
        let schema = schema();
        let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        ctx.register_table(
            "events",
            Arc::new(MemTable::try_new(schema.clone(), vec![vec![]]).expect("table")),
        )
        .expect("register");
        ctx.register_table(
            "devices",
            Arc::new(MemTable::try_new(other, vec![vec![]]).expect("table")),
        )
        .expect("register");
        let plan = ctx.state().create_logical_plan(sql).await.expect("plan");
        let plan = ctx.state().optimize(&plan).expect("optimize");
        scan_pushdown(&plan, "events", &schema, true)
    }

    #[tokio::test]
    async fn the_main_jobs_filter_and_columns_are_pushed() {
        let p = pushdown_of("SELECT * FROM events WHERE danger_level = 'HIGH'").await;
        assert_eq!(p.columns, vec![true; 4]);
        assert_eq!(
            p.predicates,
            vec![ScanPredicate {
                column: 2,
                test: ScanTest::Compare(CompareOp::Eq, ScanValue::Utf8("HIGH".into())),
            }]
        );
    }

    #[tokio::test]
    async fn only_the_columns_read_and_pushable_conjuncts() {
        let p = pushdown_of(
            "SELECT deviceId FROM events WHERE 30.0 < temperature AND count IN (1, 2) \
             AND upper(danger_level) = 'HIGH'",
        )
        .await;
        assert_eq!(p.columns, vec![true, true, true, true]);
        let p2 = pushdown_of("SELECT deviceId FROM events WHERE temperature > 30.0").await;
        assert_eq!(p2.columns, vec![true, true, false, false]);
        assert_eq!(p2.predicates.len(), 1);
        let tests: Vec<&ScanTest> = p.predicates.iter().map(|p| &p.test).collect();
        assert!(tests.contains(&&ScanTest::Compare(CompareOp::Gt, ScanValue::Float(30.0))));
        assert!(tests.contains(&&ScanTest::In {
            values: vec![ScanValue::Int(1), ScanValue::Int(2)],
            negated: false
        }));
        // upper(...) = 'HIGH' is not a column against a literal: left to SQL.
        assert_eq!(p.predicates.len(), 2);
        let p3 = pushdown_of("SELECT * FROM events WHERE count IN (1, 2, 3, 4, 5, 6) OR count = 9")
            .await;
        let [only] = p3.predicates.as_slice() else {
            panic!("one predicate: {p3:?}");
        };
        assert!(only.test.passes(FieldValue::Int(9)) && only.test.passes(FieldValue::Int(6)));
        assert!(!only.test.passes(FieldValue::Int(7)));
    }

    #[tokio::test]
    async fn two_scans_of_the_source_push_no_predicate() {
        let p = pushdown_of(
            "SELECT deviceId FROM events WHERE danger_level = 'HIGH' \
             UNION ALL SELECT deviceId FROM events WHERE danger_level = 'LOW'",
        )
        .await;
        assert!(p.predicates.is_empty());
        assert!(p.columns[0] && p.columns[2]);
        assert!(!p.columns[1] && !p.columns[3]);
    }

    #[tokio::test]
    async fn a_filter_above_a_join_or_aggregate_is_not_pushed_past_them() {
        let p = pushdown_of(
            "SELECT danger_level, count(*) FROM events GROUP BY danger_level HAVING count(*) > 1",
        )
        .await;
        assert!(p.predicates.is_empty());
        let p = pushdown_of(
            "SELECT e.deviceId FROM events e LEFT JOIN devices d ON e.deviceId = d.id \
             WHERE d.id IS NULL",
        )
        .await;
        assert!(p.predicates.is_empty());
        assert_eq!(p.columns, vec![true, false, false, false]);
    }
}
