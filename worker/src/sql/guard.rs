//! Only queries: a StreamingQuery's SQL is a `SELECT` (or `WITH ... SELECT`), never a statement
//! with side effects. DataFusion would otherwise run `COPY ... TO '<path>'` (writes a file),
//! `CREATE EXTERNAL TABLE ... LOCATION '<path>'` (reads any file the worker can), `INSERT`, `DROP`,
//! `SET` (changes session options) or `EXPLAIN ANALYZE` (runs the plan) on the worker.
//!
//! Two checks: the parsed statement must be a query (the AST's kind), and the planned plan is
//! verified with DataFusion's own [`SQLOptions`] (no DDL, no DML, no statements), so a query form
//! that the parser accepts but that plans to a side effect is refused as well.

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::error::{EngineError, Result};

/// The refusal's message (field `spec.sql`).
pub const ONLY_A_QUERY: &str = "only a query (SELECT/WITH) is allowed here";

/// The user error for a statement that is not a query.
fn refused(kind: &str) -> EngineError {
    EngineError::Manifest(sluice_crds::CrdError::Invalid(
        sluice_crds::ValidationError {
            path: "spec.sql".into(),
            message: format!("{ONLY_A_QUERY} (got {kind})"),
        },
    ))
}

/// Refuses a parsed statement other than a query.
///
/// # Errors
/// [`EngineError::Manifest`] at `spec.sql` naming the statement's kind (`COPY`, `CREATE EXTERNAL
/// TABLE`, `EXPLAIN`, `RESET`, or the first keyword of an SQL statement such as `INSERT`).
pub fn ensure_query(statement: &Statement) -> Result<()> {
    match statement {
        Statement::Statement(inner) if matches!(**inner, SqlStatement::Query(_)) => Ok(()),
        Statement::Statement(inner) => Err(refused(&first_keyword(&inner.to_string()))),
        Statement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        Statement::CopyTo(_) => Err(refused("COPY")),
        Statement::Explain(_) => Err(refused("EXPLAIN")),
        Statement::Reset(_) => Err(refused("RESET")),
    }
}

/// Refuses a logical plan with DDL, DML or a statement anywhere (subqueries included).
///
/// # Errors
/// [`EngineError::Manifest`] at `spec.sql` with DataFusion's reason.
pub fn verify_plan(plan: &LogicalPlan) -> Result<()> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| refused(&e.strip_backtrace()))
}

/// `INSERT INTO t ...` → `INSERT`: the kind without the statement's text (it may be long).
fn first_keyword(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or("an empty statement")
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Statement {
        datafusion::prelude::SessionContext::new()
            .state()
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
            .expect("parse")
    }

    #[test]
    fn queries_pass_and_everything_else_is_refused_with_its_kind() {
        for sql in [
            "SELECT 1",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
            "SELECT 1 UNION ALL SELECT 2",
        ] {
            ensure_query(&parse(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        for (sql, kind) in [
            ("COPY (SELECT 1 AS x) TO '/tmp/x.csv'", "COPY"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("CREATE TABLE t AS SELECT 1", "CREATE"),
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("DROP TABLE t", "DROP"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ] {
            let e = ensure_query(&parse(sql)).expect_err(sql);
            assert_eq!(
                e.to_string(),
                format!("invalid manifest: `spec.sql`: {ONLY_A_QUERY} (got {kind})"),
                "{sql}"
            );
            assert_eq!(e.class(), crate::error::ErrorClass::User);
        }
    }
}
