//! The query: Spark-flavoured SQL planned and run by DataFusion, one micro-batch at a time.
//!
//! Spark compatibility:
//! - unquoted identifiers keep their case (`deviceId` is column `deviceId`), because identifier
//!   normalization is switched off; function names still match in any case;
//! - `split(str, delim)` is DataFusion's `string_to_array` (a literal delimiter, where Spark takes a
//!   regular expression) and `explode(array)` is `unnest(array)`.
//!
//! With `sqlScope: stream` (the default) only stateless queries are accepted for now: projections,
//! filters, scalar functions, `unnest`, `UNION ALL`. Aggregations, joins, sorts, `DISTINCT` and
//! `LIMIT` need state across batches and are refused with a message, never answered wrongly. With
//! `sqlScope: microBatch` the SQL runs over each batch alone, so anything DataFusion supports works.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectNamePart, visit_expressions_mut};
use sluice_crds::{OutputMode, SqlScope};

use crate::error::{EngineError, Result};

/// Extra functions and tables a query can use besides its sources (e.g. the models of
/// [`crate::ml`]).
#[derive(Default, Clone)]
pub struct Extensions {
    pub functions: Vec<datafusion::logical_expr::ScalarUDF>,
    /// Tables whose content is set before each batch with [`BatchQuery::set_table`].
    pub tables: Vec<(String, SchemaRef)>,
}

/// A planned query for one task: a DataFusion session with the query's statement parsed once.
pub struct BatchQuery {
    ctx: SessionContext,
    statement: Statement,
    inputs: Vec<(String, SchemaRef)>,
    extra_tables: Vec<(String, SchemaRef)>,
}

impl BatchQuery {
    /// Parses `sql`, rewrites Spark function names, and checks it against the scope's rules by
    /// planning it over empty inputs.
    ///
    /// # Errors
    /// [`EngineError::Sql`] when DataFusion cannot parse or plan it (unknown column, type error);
    /// [`EngineError::InvalidQuery`] when it needs state that the scope does not keep, or the
    /// output mode does not fit it (Spark's rule: `complete` needs an aggregation).
    pub async fn new(
        sql: &str,
        inputs: Vec<(String, SchemaRef)>,
        scope: SqlScope,
        output_mode: OutputMode,
        extensions: Extensions,
    ) -> Result<Self> {
        let mut config = SessionConfig::new().with_target_partitions(1);
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let ctx = SessionContext::new_with_config(config);
        for function in extensions.functions {
            ctx.register_udf(function);
        }
        for (name, schema) in &extensions.tables {
            ctx.register_table(
                name.as_str(),
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?),
            )?;
        }
        let mut statement = ctx
            .state()
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
        rewrite_spark_functions(&mut statement);
        let query = Self {
            ctx,
            statement,
            inputs,
            extra_tables: extensions.tables,
        };
        let plan = query.plan(Vec::new()).await?;
        let stateful = stateful_operators(&plan);
        if scope == SqlScope::Stream && !stateful.is_empty() {
            return Err(EngineError::InvalidQuery(format!(
                "{} over a stream is not supported yet: stateful streaming operators come in a later \
                 release. For per-batch results (DStream / foreachBatch style) set `sqlScope: microBatch`.",
                stateful.join(", ")
            )));
        }
        if output_mode == OutputMode::Complete && stateful.iter().all(|op| *op != "aggregation") {
            return Err(EngineError::InvalidQuery(
                "outputMode `complete` needs an aggregation (Spark: \"Complete output mode not supported \
                 when there are no streaming aggregations\")"
                    .into(),
            ));
        }
        Ok(query)
    }

    /// The result schema.
    ///
    /// # Errors
    /// As planning in [`BatchQuery::new`].
    pub async fn output_schema(&self) -> Result<SchemaRef> {
        Ok(Arc::new(
            self.plan(Vec::new()).await?.schema().as_arrow().clone(),
        ))
    }

    /// Runs the query over one micro-batch: `rows[i]` are the rows of input `i` (in the order given
    /// to [`BatchQuery::new`]).
    ///
    /// # Errors
    /// [`EngineError::Sql`] for runtime failures (e.g. a cast that fails on a value).
    pub async fn run(&self, rows: Vec<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
        let plan = self.plan(rows).await?;
        Ok(self.ctx.execute_logical_plan(plan).await?.collect().await?)
    }

    /// Replaces the content of an extension table (see [`Extensions::tables`]).
    ///
    /// # Errors
    /// [`EngineError::Internal`] for a table that was not declared; DataFusion errors.
    pub fn set_table(&self, name: &str, batch: RecordBatch) -> Result<()> {
        let Some((_, schema)) = self.extra_tables.iter().find(|(n, _)| n == name) else {
            return Err(EngineError::Internal(format!(
                "table `{name}` was not declared"
            )));
        };
        let table = MemTable::try_new(schema.clone(), vec![vec![batch]])?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }

    async fn plan(&self, mut rows: Vec<Vec<RecordBatch>>) -> Result<LogicalPlan> {
        rows.resize_with(self.inputs.len(), Vec::new);
        for ((name, schema), batches) in self.inputs.iter().zip(rows) {
            let table = MemTable::try_new(schema.clone(), vec![batches])?;
            self.ctx.deregister_table(name.as_str())?;
            self.ctx.register_table(name.as_str(), Arc::new(table))?;
        }
        Ok(self
            .ctx
            .state()
            .statement_to_plan(self.statement.clone())
            .await?)
    }
}

/// Renames Spark functions to their DataFusion equivalents in place.
fn rewrite_spark_functions(statement: &mut Statement) {
    let Statement::Statement(inner) = statement else {
        return;
    };
    let _ = visit_expressions_mut(inner.as_mut(), |expr| {
        if let SqlExpr::Function(function) = expr
            && let Some(last) = function.name.0.last_mut()
            && let ObjectNamePart::Identifier(ident) = last
        {
            let renamed = match ident.value.to_ascii_lowercase().as_str() {
                "split" => Some("string_to_array"),
                "explode" => Some("unnest"),
                _ => None,
            };
            if let Some(new_name) = renamed {
                ident.value = new_name.to_string();
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Names of the operators in `plan` that need state across batches.
pub fn stateful_operators(plan: &LogicalPlan) -> Vec<&'static str> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        let name = match node {
            LogicalPlan::Aggregate(_) => Some("aggregation"),
            LogicalPlan::Join(_) => Some("join"),
            LogicalPlan::Window(_) => Some("window function"),
            LogicalPlan::Sort(_) => Some("ORDER BY"),
            LogicalPlan::Limit(_) => Some("LIMIT"),
            LogicalPlan::Distinct(_) => Some("DISTINCT"),
            LogicalPlan::RecursiveQuery(_) => Some("recursive query"),
            _ => None,
        };
        if let Some(name) = name
            && !found.contains(&name)
        {
            found.push(name);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

#[cfg(test)]
mod tests;
