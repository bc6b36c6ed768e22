//! Static tables for stream–static enrichment joins (`spec.tables`), as in Spark: each micro-batch
//! is joined with a table that is not a stream. Inner and left joins (stream on the preserved
//! side) work unchanged in SQL; see [`crate::sql::BatchQuery::with_tables`] for the join rules.
//!
//! Seed 000's rule decides the kind: a small dimension is held in RAM, a large one is looked up in
//! its database.
//! - [`FileTable`] (`file:`): read whole into memory, re-read every `refreshInterval`.
//! - [`PostgresTable`] (`postgres:`): never read whole; before each batch runs, the distinct
//!   values of the expressions the query equates with its `keyColumns` are computed over the
//!   batch ([`lookup_joins`]), only the matching rows are fetched, and they are the table's
//!   content for that batch. A change in PostgreSQL is seen by the next batch.
//!
//! Shape: either way the table's Arrow schema is its declared `schema` (columns in order,
//! types as for sources).

mod file;
mod postgres;
#[cfg(test)]
mod tests;

use arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use sluice_crds::TableSpec;

use crate::error::{EngineError, Result};

pub use file::FileTable;
pub use postgres::{FETCH_ATTEMPTS, LookupProgress, PostgresTable, lookup_statement};

/// A static table of the spec.
pub enum StaticTable {
    /// Held in memory.
    File(FileTable),
    /// Looked up per batch (boxed: it holds its connection spec and client).
    Postgres(Box<PostgresTable>),
}

impl StaticTable {
    /// Opens the table: a file table is read; a PostgreSQL table is only checked (it connects at
    /// its first lookup, so `sluice-worker check` needs no database).
    ///
    /// # Errors
    /// As [`FileTable::open`] and [`PostgresTable::open`]; [`EngineError::InvalidQuery`] when
    /// neither or both of `file`, `postgres` are set.
    pub async fn open(spec: &TableSpec) -> Result<Self> {
        match (&spec.file, &spec.postgres) {
            (Some(file), None) => Ok(Self::File(FileTable::open(spec, file).await?)),
            (None, Some(pg)) => {
                if spec.refresh_interval.is_some() {
                    return Err(EngineError::InvalidQuery(format!(
                        "table `{}`: a PostgreSQL table is looked up every batch; \
                         `refreshInterval` applies to file tables only",
                        spec.name
                    )));
                }
                Ok(Self::Postgres(Box::new(PostgresTable::open(spec, pg)?)))
            }
            _ => Err(EngineError::InvalidQuery(format!(
                "table `{}`: exactly one of file, postgres must be set",
                spec.name
            ))),
        }
    }

    /// The table's name in SQL.
    pub fn name(&self) -> &str {
        match self {
            Self::File(t) => &t.name,
            Self::Postgres(t) => &t.name,
        }
    }

    /// The declared schema.
    pub fn schema(&self) -> &SchemaRef {
        match self {
            Self::File(t) => &t.schema,
            Self::Postgres(t) => &t.schema,
        }
    }
}

/// A join of a lookup table in a query's logical plan.
#[derive(Debug, Clone)]
pub struct LookupJoin {
    /// The lookup table's name.
    pub table: String,
    /// The join's other side (the stream, usually), whose rows give the keys.
    pub other: LogicalPlan,
    /// Per key column (in `keyColumns` order), the expression over `other` it must equal.
    pub keys: Vec<Expr>,
}

/// The joins of the lookup tables `lookups` (name, key columns) in `plan`. A lookup table can
/// only be read through a join whose side is just that table (a scan, perhaps aliased,
/// filtered or projected) and whose condition equates every key column with an expression over
/// the other side (`ON` or `USING`; further conditions are fine) — otherwise the table would
/// have to be read whole.
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the table and the required form for any other use.
pub fn lookup_joins(plan: &LogicalPlan, lookups: &[(&str, &[String])]) -> Result<Vec<LookupJoin>> {
    let mut joins = Vec::new();
    let mut problems = Vec::new();
    let _ = plan.apply(|node| {
        let LogicalPlan::Join(join) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for (side, other, side_is_left) in [
            (&join.left, &join.right, true),
            (&join.right, &join.left, false),
        ] {
            let Some((table, key_columns)) = only_lookup_scan(side, lookups) else {
                continue;
            };
            // Equalities of the condition, oriented (side expression, other expression).
            let mut pairs: Vec<(Expr, Expr)> = join
                .on
                .iter()
                .map(|(l, r)| {
                    if side_is_left {
                        (l.clone(), r.clone())
                    } else {
                        (r.clone(), l.clone())
                    }
                })
                .collect();
            if let Some(filter) = &join.filter {
                for conjunct in split_conjunction(filter) {
                    if let Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::Eq,
                        right,
                    }) = conjunct
                    {
                        if only_over(left, side) && only_over(right, other) {
                            pairs.push((left.as_ref().clone(), right.as_ref().clone()));
                        } else if only_over(right, side) && only_over(left, other) {
                            pairs.push((right.as_ref().clone(), left.as_ref().clone()));
                        }
                    }
                }
            }
            let mut keys = Vec::with_capacity(key_columns.len());
            for key in key_columns {
                let found = pairs
                    .iter()
                    .find(|(side_expr, _)| column_of(side_expr).is_some_and(|c| c.name == *key));
                match found {
                    Some((_, other_expr)) => keys.push(other_expr.clone()),
                    None => {
                        problems.push(requirement(table, key_columns));
                        break;
                    }
                }
            }
            if keys.len() == key_columns.len() {
                joins.push(LookupJoin {
                    table: table.to_string(),
                    other: other.as_ref().clone(),
                    keys,
                });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(problem) = problems.into_iter().next() {
        return Err(EngineError::InvalidQuery(problem));
    }
    // Every read of a lookup table must be one of these joins.
    for (table, key_columns) in lookups {
        let mut scans = 0usize;
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && scan.table_name.table() == *table
            {
                scans += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if scans > joins.iter().filter(|j| j.table == *table).count() {
            return Err(EngineError::InvalidQuery(requirement(table, key_columns)));
        }
    }
    Ok(joins)
}

fn requirement(table: &str, key_columns: &[String]) -> String {
    let on: Vec<String> = key_columns
        .iter()
        .map(|k| format!("<expression> = {table}.{k}"))
        .collect();
    format!(
        "table `{table}` is a PostgreSQL lookup table, looked up per batch by keyColumns [{}]: the \
         query can only JOIN (or LEFT JOIN) it with `ON {}`, never read it whole",
        key_columns.join(", "),
        on.join(" AND ")
    )
}

/// The lookup table `side` reads, when it reads exactly one table and that is a lookup table.
fn only_lookup_scan<'a>(
    side: &LogicalPlan,
    lookups: &[(&'a str, &'a [String])],
) -> Option<(&'a str, &'a [String])> {
    let mut tables = Vec::new();
    let _ = side.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            tables.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match tables.as_slice() {
        [only] => lookups.iter().find(|(name, _)| name == only).copied(),
        _ => None,
    }
}

/// Whether every column `expr` refers to is one of `plan`'s output columns.
fn only_over(expr: &Expr, plan: &LogicalPlan) -> bool {
    expr.column_refs()
        .iter()
        .all(|c| plan.schema().has_column(c))
}

/// The column an expression is, through casts.
fn column_of(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::Column(c) => Some(c),
        Expr::Cast(cast) => column_of(&cast.expr),
        Expr::TryCast(cast) => column_of(&cast.expr),
        _ => None,
    }
}

/// Whether `plan` reads any of `tables`.
pub fn reads_any(plan: &LogicalPlan, tables: &[String]) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && tables.iter().any(|t| t == scan.table_name.table())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
