//! The query: Spark-flavoured SQL planned and run by DataFusion, one micro-batch at a time.
//!
//! Spark compatibility:
//! - unquoted identifiers keep their case (`deviceId` is column `deviceId`), because identifier
//!   normalization is switched off; function names still match in any case;
//! - `split(str, delim)` is DataFusion's `string_to_array` (a literal delimiter, where Spark takes a
//!   regular expression) and `explode(array)` is `unnest(array)`.
//!
//! With `sqlScope: stream` (the default) a query is either stateless (projections, filters, scalar
//! functions, `unnest`, `UNION ALL`) or has one streaming aggregation (`GROUP BY`, optionally over
//! Spark's `window(ts, size[, slide])`), run incrementally with a per-task state store (see
//! [`streaming`]), or one stream–stream inner join with watermarks and an event-time range
//! condition (see [`stream_join`]), or window functions partitioned by an event-time window (see
//! [`window_function`]). Other joins of two streams, other window functions, `LIMIT` and sorts
//! (other than above an aggregation in `complete` mode) are refused; `SELECT DISTINCT` is a streaming dedup
//! (Spark's `dropDuplicates`: each distinct row is emitted once, state bounded by the watermark
//! when the event-time column is among the columns). Other operators with a message, never answered wrongly. With
//! `sqlScope: microBatch` the SQL runs over each batch alone, so anything DataFusion supports works.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{Aggregate, Distinct, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectNamePart, visit_expressions_mut};
use sluice_crds::{OutputMode, SqlScope};

use crate::checkpoint::Checkpoint;
use crate::error::{EngineError, Result};
use crate::state::{StateDelta, StateStore};

pub mod functions;
pub mod guard;
pub mod pushdown;
pub mod stage;
pub mod stream_join;
pub mod streaming;
pub mod tables;
pub mod window;
pub mod window_function;

pub use tables::{LookupProgress, StaticTable};

pub use stage::{Stage, StagedRows};
pub use streaming::SourceWatermark;

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
    /// State of a streaming aggregation (`None` for stateless queries and `sqlScope: microBatch`).
    streaming: Option<StreamingState>,
    /// Whether `SELECT DISTINCT` is planned as a grouping without aggregates (streaming dedup).
    distinct_as_grouping: bool,
    /// Static tables for stream–static joins, registered under their names.
    tables: Vec<StaticTable>,
    /// A stream–stream join (its buffers live in `streaming`), see [`stream_join`].
    join: Option<stream_join::JoinPlan>,
    /// Window functions per event-time window (their buffered rows live in `streaming`), see
    /// [`window_function`].
    window_function: Option<window_function::WindowFunctionPlan>,
    /// What the last batch's lookups fetched, per PostgreSQL table.
    lookups: Vec<LookupProgress>,
    /// Which part of a streaming aggregation this task runs (a keyed exchange splits it).
    stage: Stage,
    /// The watermark of the running batch in the [`Stage::Merge`] stage (the stateful plan's).
    upstream_watermark_ms: Option<i64>,
}

/// A streaming aggregation's per-task state and the running batch's changes.
struct StreamingState {
    mode: OutputMode,
    watermarks: Vec<SourceWatermark>,
    store: StateStore,
    /// Whether a grouping key carries event time (then the watermark closes and evicts groups).
    has_event_key: bool,
    fingerprint: String,
    /// Input columns grouped on directly (for the partitioning check).
    key_columns: Vec<String>,
    /// Changes of the batch run but not committed yet.
    pending: Option<StateDelta>,
    last: StateProgress,
}

impl StreamingState {
    /// The state of an operator that buffers rows until the watermark releases or evicts them
    /// (a stream–stream join, window functions per window): append mode, event time on, no
    /// grouping columns.
    fn append_buffer(
        store: StateStore,
        watermarks: Vec<SourceWatermark>,
        fingerprint: String,
        operator: &'static str,
    ) -> Self {
        Self {
            mode: OutputMode::Append,
            watermarks,
            store,
            has_event_key: true,
            fingerprint,
            key_columns: Vec::new(),
            pending: None,
            last: StateProgress {
                operator,
                ..StateProgress::default()
            },
        }
    }
}

/// State figures after a batch (for metrics and `stateOperators` in progress).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateProgress {
    /// Groups held in the state store after the batch.
    pub state_rows: u64,
    /// Groups written (updated or added) by the batch.
    pub rows_updated: u64,
    /// Groups evicted by the batch.
    pub rows_removed: u64,
    /// Bytes of the batch's state file.
    pub state_file_bytes: u64,
    /// (row, window) pairs dropped as later than the watermark.
    pub late_rows_dropped: u64,
    /// Watermark for the next batch, ms since the epoch.
    pub watermark_ms: Option<i64>,
    /// Spark's `operatorName` in progress (`""` means `stateStoreSave`, an aggregation or dedup).
    pub operator: &'static str,
}

impl BatchQuery {
    /// Parses `sql`, rewrites Spark function names, and checks it against the scope's rules by
    /// planning it over empty inputs.
    ///
    /// # Errors
    /// [`EngineError::Sql`] when DataFusion cannot parse or plan it (unknown column, type error);
    /// [`EngineError::Manifest`] at `spec.sql` for a statement other than a query (see [`guard`]);
    /// [`EngineError::InvalidQuery`] when it needs state that the scope does not keep, or the
    /// output mode does not fit it (Spark's rule: `complete` needs an aggregation).
    pub async fn new(
        sql: &str,
        inputs: Vec<(String, SchemaRef)>,
        scope: SqlScope,
        output_mode: OutputMode,
        extensions: Extensions,
    ) -> Result<Self> {
        Self::with_tables(
            sql,
            inputs,
            scope,
            output_mode,
            Vec::new(),
            Vec::new(),
            extensions,
        )
        .await
    }

    /// As [`BatchQuery::new`], with the sources' watermarks (used by streaming aggregations).
    ///
    /// # Errors
    /// As [`BatchQuery::new`]; also Spark's output-mode rules for aggregations: `append` needs a
    /// grouping on a window over (or on) a watermarked column.
    pub async fn with_watermarks(
        sql: &str,
        inputs: Vec<(String, SchemaRef)>,
        scope: SqlScope,
        output_mode: OutputMode,
        watermarks: Vec<SourceWatermark>,
    ) -> Result<Self> {
        Self::with_tables(
            sql,
            inputs,
            scope,
            output_mode,
            watermarks,
            Vec::new(),
            Extensions::default(),
        )
        .await
    }

    /// As [`BatchQuery::with_watermarks`], with static tables the SQL may join a stream with
    /// (Spark's stream–static joins: inner, or outer with the stream on the preserved side).
    /// A PostgreSQL table is looked up before each batch by the keys the batch joins it on (see
    /// [`tables`]), so it can only be read through such a join.
    ///
    /// # Errors
    /// As [`BatchQuery::with_watermarks`]; [`EngineError::InvalidQuery`] for a join of two streams
    /// that breaks the rules of [`stream_join`], an outer join that would need the static side's
    /// unmatched rows, or a PostgreSQL table read other than by an equi-join on all its
    /// `keyColumns`.
    pub async fn with_tables(
        sql: &str,
        inputs: Vec<(String, SchemaRef)>,
        scope: SqlScope,
        output_mode: OutputMode,
        watermarks: Vec<SourceWatermark>,
        tables: Vec<StaticTable>,
        extensions: Extensions,
    ) -> Result<Self> {
        let mut config = SessionConfig::new().with_target_partitions(1);
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let ctx = SessionContext::new_with_config(config);
        for udf in window::window_udfs()
            .into_iter()
            .chain(functions::scalar_udfs())
        {
            ctx.register_udf(udf);
        }
        for function in extensions.functions {
            ctx.register_udf(function);
        }
        for (name, schema) in &extensions.tables {
            ctx.register_table(
                name.as_str(),
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?),
            )?;
        }
        // count(DISTINCT x) must stay one aggregate whose partial state (the set of values) merges.
        ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
        let mut statement = ctx
            .state()
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
        guard::ensure_query(&statement)?;
        rewrite_spark_functions(&mut statement);
        let mut query = Self {
            ctx,
            statement,
            inputs,
            extra_tables: extensions.tables,
            streaming: None,
            distinct_as_grouping: scope == SqlScope::Stream,
            tables,
            join: None,
            window_function: None,
            lookups: Vec::new(),
            stage: Stage::Whole,
            upstream_watermark_ms: None,
        };
        query.register_tables()?;
        for table in &query.tables {
            if let StaticTable::Postgres(lookup) = table {
                query.register_table(&lookup.name, lookup.schema.clone(), Vec::new())?;
            }
        }
        let plan = query.plan(Vec::new()).await?;
        tables::lookup_joins(&plan, &query.lookup_keys())?;
        let mut stateful = stateful_operators(&plan);
        if scope == SqlScope::Stream && stateful.contains(&"join") {
            let stream_names: Vec<&str> = query.inputs.iter().map(|(n, _)| n.as_str()).collect();
            let problems = unsupported_joins(&plan, &stream_names);
            if let Some(problem) = problems.first() {
                return Err(EngineError::InvalidQuery(problem.clone()));
            }
            stateful.retain(|op| *op != "join");
        }
        let aggregates = aggregates_of(&plan);
        if scope == SqlScope::Stream
            && let Some(join) = stream_join::JoinPlan::new(
                &query.ctx,
                &plan,
                &query.inputs,
                &watermarks,
                output_mode,
            )?
        {
            if !aggregates.is_empty() || stateful.contains(&"DISTINCT") {
                return Err(EngineError::InvalidQuery(
                    "an aggregation or DISTINCT after a join of two streams is not supported yet; \
                     write the joined rows to a sink and aggregate them in a second query"
                        .into(),
                ));
            }
            query.streaming = Some(join.streaming_state(watermarks.clone())?);
            query.join = Some(join);
        }
        if scope == SqlScope::Stream
            && stateful.contains(&"window function")
            && stateful.contains(&"aggregation")
        {
            // Above the aggregation: run by the aggregation's upper plan over its emitted rows.
            window_function::check_above_aggregation(&plan, output_mode, &watermarks)?;
            stateful.retain(|op| *op != "window function");
        }
        if scope == SqlScope::Stream
            && stateful.contains(&"window function")
            && let Some(planned) = window_function::WindowFunctionPlan::new(
                &plan,
                &query.inputs,
                &watermarks,
                output_mode,
            )?
        {
            stateful.retain(|op| *op != "window function");
            if let Some(other) = stateful.first() {
                return Err(EngineError::InvalidQuery(format!(
                    "a window function over a stream with {other} in the same query is not supported \
                     yet; write one query's rows to a sink and read them in a second query"
                )));
            }
            query.streaming = Some(planned.streaming_state(watermarks.clone())?);
            query.window_function = Some(planned);
        }
        if scope == SqlScope::Stream && !stateful.is_empty() {
            let unsupported: Vec<&str> = stateful
                .iter()
                .copied()
                .filter(|op| {
                    *op != "aggregation"
                        && !(*op == "ORDER BY"
                            && output_mode == OutputMode::Complete
                            && !aggregates.is_empty())
                })
                .collect();
            if !unsupported.is_empty() {
                return Err(EngineError::InvalidQuery(format!(
                    "{} over a stream is not supported yet (supported: one GROUP BY aggregation, \
                     with window() and watermarks; ORDER BY only above an aggregation in complete mode). \
                     For per-batch results (DStream / foreachBatch style) set `sqlScope: microBatch`.",
                    unsupported.join(", ")
                )));
            }
            if aggregates.len() > 1 {
                return Err(EngineError::InvalidQuery(
                    "Multiple streaming aggregations are not supported (Spark's rule); \
                     aggregate once, or set `sqlScope: microBatch`"
                        .into(),
                ));
            }
            if let Some(aggregate) = aggregates.first() {
                let planned =
                    streaming::AggregatePlan::new(&query.ctx, aggregate, &watermarks).await?;
                let dedup = planned.aggr.is_empty();
                if output_mode == OutputMode::Append && planned.event_key.is_none() && !dedup {
                    return Err(EngineError::InvalidQuery(
                        "outputMode `append` with an aggregation needs a watermark (Spark: \"Append output mode \
                         not supported when there are streaming aggregations on streaming DataFrames/DataSets \
                         without watermark\"): give the source a `watermark` and GROUP BY window(<watermark column>, ...) \
                         or the watermark column itself, or use outputMode `update` or `complete`"
                            .into(),
                    ));
                }
                let state_schema = planned.state_schema()?;
                let mut store = StateStore::new(
                    state_schema,
                    planned.group_by.expr().len(),
                    planned.event_key.map(|k| k.group_index),
                )?;
                store.set_key_groups(
                    planned.key_group_indices(),
                    crate::key_group::DEFAULT_MAX_PARALLELISM,
                )?;
                query.streaming = Some(StreamingState {
                    mode: output_mode,
                    watermarks,
                    store,
                    has_event_key: planned.event_key.is_some(),
                    fingerprint: planned.fingerprint()?,
                    key_columns: planned.key_columns(),
                    pending: None,
                    last: StateProgress::default(),
                });
            }
        }
        if output_mode == OutputMode::Complete
            && query.window_function.is_none()
            && stateful.iter().all(|op| *op != "aggregation")
        {
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
    pub async fn run(&mut self, rows: Vec<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
        self.prepare_tables(&rows).await?;
        if self.join.is_some() {
            return self.run_stream_join(rows).await;
        }
        if self.window_function.is_some() {
            return self.run_window_function(rows).await;
        }
        if self.streaming.is_some() {
            return match self.stage {
                Stage::Whole => self.run_aggregation(rows).await,
                Stage::Merge => self.run_merge(rows).await,
                Stage::Source => Err(EngineError::Internal(
                    "a source-stage task runs run_source_stage, not run".into(),
                )),
            };
        }
        let plan = self.plan(rows).await?;
        Ok(self.ctx.execute_logical_plan(plan).await?.collect().await?)
    }

    /// What the query needs of source `source`'s rows, for its scan (`source::scan`): the columns
    /// it reads and, for a stateless query, the pushable conjuncts of a filter right above the
    /// source. `None` when the source's rows must come whole: a stream–stream join (its buffers
    /// keep rows), or a source the query does not have. A streaming aggregation gets the columns
    /// only (its watermark is the maximum over every row), its watermark column among them.
    ///
    /// # Errors
    /// As planning in [`BatchQuery::new`].
    pub async fn scan_pushdown(
        &self,
        source: &str,
    ) -> Result<Option<crate::source::scan::ScanPushdown>> {
        if self.join.is_some() {
            return Ok(None);
        }
        let Some((_, schema)) = self.inputs.iter().find(|(name, _)| name == source) else {
            return Ok(None);
        };
        let plan = self.plan(Vec::new()).await?;
        let optimized = self.ctx.state().optimize(&plan)?;
        let stateless = self.streaming.is_none();
        let mut pushdown = pushdown::scan_pushdown(&optimized, source, schema, stateless);
        if let Some(streaming) = &self.streaming {
            for watermark in streaming.watermarks.iter().filter(|w| w.source == source) {
                match schema.index_of(&watermark.column) {
                    Ok(i) => {
                        if let Some(read) = pushdown.columns.get_mut(i) {
                            *read = true;
                        }
                    }
                    Err(_) => return Ok(None),
                }
            }
        }
        Ok(Some(pushdown))
    }

    /// The logical plan of the query over empty inputs (for inspection: operators, grouping).
    ///
    /// # Errors
    /// As planning in [`BatchQuery::new`].
    pub async fn logical_plan(&self) -> Result<LogicalPlan> {
        self.plan(Vec::new()).await
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

    async fn run_aggregation(&mut self, rows: Vec<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let batch_max = streaming::max_event_times(&state.watermarks, &rows)?;
        let (plan, planned) = self.plan_aggregation(rows).await?;
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let outcome = streaming::run_batch(
            &self.ctx,
            &planned,
            &state.store,
            state.mode,
            &batch_max,
            &state.watermarks,
        )
        .await?;
        self.finish_aggregation(plan, &planned, outcome).await
    }

    /// The query's plan over `rows`, and its streaming aggregation planned for this batch.
    async fn plan_aggregation(
        &self,
        rows: Vec<Vec<RecordBatch>>,
    ) -> Result<(LogicalPlan, streaming::AggregatePlan)> {
        let Some(state) = self.streaming.as_ref() else {
            return Err(EngineError::Internal("no streaming state".into()));
        };
        let plan = self.plan(rows).await?;
        let aggregate = aggregates_of(&plan)
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("aggregation vanished".into()))?;
        let planned =
            streaming::AggregatePlan::new(&self.ctx, &aggregate, &state.watermarks).await?;
        Ok((plan, planned))
    }

    /// Runs the part of the plan above the aggregate over its output rows and stages the state
    /// changes (applied by [`BatchQuery::commit_state`]).
    async fn finish_aggregation(
        &mut self,
        plan: LogicalPlan,
        planned: &streaming::AggregatePlan,
        outcome: streaming::AggregateOutcome,
    ) -> Result<Vec<RecordBatch>> {
        let output = match &outcome.rows {
            None => Vec::new(),
            Some(rows) => {
                let upper = replace_aggregate(plan, rows, planned)?;
                self.ctx
                    .execute_logical_plan(upper)
                    .await?
                    .collect()
                    .await?
            }
        };
        let state = self
            .streaming
            .as_mut()
            .ok_or_else(|| EngineError::Internal("no streaming state".into()))?;
        let removed = outcome.delta.deletes.len() as u64;
        let updated = outcome.delta.upserts.len() as u64;
        let added = outcome
            .delta
            .upserts
            .keys()
            .filter(|k| state.store.get(k).is_none())
            .count() as u64;
        state.last = StateProgress {
            state_rows: (state.store.len() as u64 + added).saturating_sub(removed),
            rows_updated: updated,
            rows_removed: removed,
            state_file_bytes: 0,
            late_rows_dropped: outcome.late_rows,
            watermark_ms: outcome.delta.event_time.watermark_ms,
            operator: "",
        };
        state.pending = Some(outcome.delta);
        Ok(output)
    }

    /// Refreshes the static file tables when due and looks up this batch's keys in PostgreSQL.
    async fn prepare_tables(&mut self, rows: &[Vec<RecordBatch>]) -> Result<()> {
        let mut reloaded = false;
        for table in &mut self.tables {
            if let StaticTable::File(file) = table {
                reloaded |= file.refresh_if_due().await?;
            }
        }
        if reloaded {
            self.register_tables()?;
        }
        self.look_up(rows).await
    }

    /// Registers the file tables' rows (lookup tables are registered per batch by `look_up`).
    fn register_tables(&self) -> Result<()> {
        for table in &self.tables {
            if let StaticTable::File(file) = table {
                self.register_table(&file.name, file.schema.clone(), file.rows.clone())?;
            }
        }
        Ok(())
    }

    fn register_table(&self, name: &str, schema: SchemaRef, rows: Vec<RecordBatch>) -> Result<()> {
        let mem = MemTable::try_new(schema, vec![rows])?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(mem))?;
        Ok(())
    }

    /// (name, key columns) of the PostgreSQL tables.
    fn lookup_keys(&self) -> Vec<(&str, &[String])> {
        self.tables
            .iter()
            .filter_map(|t| match t {
                StaticTable::Postgres(p) => Some((p.name.as_str(), p.key_columns())),
                StaticTable::File(_) => None,
            })
            .collect()
    }

    /// Fetches each PostgreSQL table's rows for this batch's join keys and registers them as the
    /// table's content. A lookup table joined on the output of another one is looked up after it
    /// (the keys come from the other side of its join, run over the batch).
    ///
    /// # Errors
    /// As [`tables::PostgresTable::fetch`]; [`EngineError::InvalidQuery`] when lookup tables are
    /// only joined with each other.
    async fn look_up(&mut self, rows: &[Vec<RecordBatch>]) -> Result<()> {
        let mut pending: Vec<String> = self
            .lookup_keys()
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        let mut fetched = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let plan = self.plan(rows.to_vec()).await?;
            let joins = tables::lookup_joins(&plan, &self.lookup_keys())?;
            let ready: Vec<String> = pending
                .iter()
                .filter(|name| {
                    joins
                        .iter()
                        .filter(|j| &j.table == *name)
                        .all(|j| !tables::reads_any(&j.other, &pending))
                })
                .cloned()
                .collect();
            if ready.is_empty() {
                return Err(EngineError::InvalidQuery(format!(
                    "lookup tables [{}] are only joined with each other: join each with a stream",
                    pending.join(", ")
                )));
            }
            for name in &ready {
                let mut keys = Vec::new();
                for join in joins.iter().filter(|j| &j.table == name) {
                    let exprs: Vec<Expr> = join
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(i, e)| e.clone().alias(format!("__sluice_key{i}")))
                        .collect();
                    let key_plan = LogicalPlanBuilder::from(join.other.clone())
                        .project(exprs)?
                        .distinct()?
                        .build()?;
                    keys.extend(
                        self.ctx
                            .execute_logical_plan(key_plan)
                            .await?
                            .collect()
                            .await?,
                    );
                }
                let Some(StaticTable::Postgres(table)) =
                    self.tables.iter().find(|t| t.name() == name)
                else {
                    return Err(EngineError::Internal(format!(
                        "lookup table `{name}` vanished"
                    )));
                };
                let (batches, progress) = table.fetch(&keys).await?;
                self.register_table(name, table.schema.clone(), batches)?;
                fetched.push(progress);
            }
            pending.retain(|name| !ready.contains(name));
        }
        self.lookups = fetched;
        Ok(())
    }

    /// What the last batch's lookups fetched, per PostgreSQL table (empty without such tables).
    pub fn lookup_progress(&self) -> &[LookupProgress] {
        &self.lookups
    }

    /// The input columns a streaming aggregation or dedup groups on directly (`None` when the
    /// query keeps no state).
    pub fn grouping_columns(&self) -> Option<Vec<String>> {
        self.streaming.as_ref().map(|s| s.key_columns.clone())
    }

    /// Sets the number of key groups of the state (`spec.parallelism.maxParallelism`); call
    /// before the state is restored. No effect on a stateless query.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a value out of `1..=32768`.
    pub fn set_max_parallelism(&mut self, max_parallelism: u32) -> Result<()> {
        if let Some(state) = self.streaming.as_mut() {
            let columns = state.store.key_group_columns().to_vec();
            state.store.set_key_groups(columns, max_parallelism)?;
        }
        Ok(())
    }

    /// Number of key groups of the state (`None` for a stateless query).
    pub fn max_parallelism(&self) -> Option<u32> {
        self.streaming.as_ref().map(|s| s.store.max_parallelism())
    }

    /// Fingerprint of the stateful operators, for the checkpoint's `metadata.json`.
    pub fn stateful_fingerprint(&self) -> Option<String> {
        self.streaming.as_ref().map(|s| s.fingerprint.clone())
    }

    /// Loads the state store as of the last committed batch.
    ///
    /// # Errors
    /// [`EngineError::Checkpoint`] when the state files are missing or unreadable.
    pub async fn restore_state(
        &mut self,
        checkpoint: &Checkpoint,
        task: u32,
        last_committed: Option<u64>,
    ) -> Result<()> {
        if let Some(state) = self.streaming.as_mut() {
            state.pending = None;
            state
                .store
                .restore(checkpoint, task, last_committed)
                .await?;
            state.last = StateProgress {
                state_rows: state.store.len() as u64,
                watermark_ms: state.store.event_time.watermark_ms,
                operator: state.last.operator,
                ..StateProgress::default()
            };
        }
        Ok(())
    }

    /// Writes the running batch's state file; call before the batch's commit entry.
    ///
    /// # Errors
    /// Storage failures (the batch must then stay uncommitted).
    pub async fn write_state(
        &mut self,
        checkpoint: &Checkpoint,
        task: u32,
        batch_id: u64,
    ) -> Result<()> {
        if let Some(state) = self.streaming.as_mut() {
            let delta = state.pending.as_ref().ok_or_else(|| {
                EngineError::Internal("state written before the batch ran".into())
            })?;
            state.last.state_file_bytes =
                state.store.write(checkpoint, task, batch_id, delta).await?;
        }
        Ok(())
    }

    /// Stages a batch that changes no state (a quarantined poison batch): its state file then
    /// holds the state as it stood, so a restart finds a state file for every committed batch.
    pub fn stage_unchanged_state(&mut self) {
        if let Some(state) = self.streaming.as_mut() {
            state.pending = Some(StateDelta {
                event_time: state.store.event_time.clone(),
                ..StateDelta::default()
            });
        }
    }

    /// Applies the running batch's state changes to memory; call after the commit entry.
    pub fn commit_state(&mut self) {
        if let Some(state) = self.streaming.as_mut()
            && let Some(delta) = state.pending.take()
        {
            state.store.apply(delta);
        }
    }

    /// Whether a batch without new input must run: the watermark moved since the last batch and
    /// state may be waiting for it (Spark's no-data batches: append emits, eviction).
    pub fn wants_no_data_batch(&self) -> bool {
        self.stage == Stage::Whole
            && self.streaming.as_ref().is_some_and(|s| {
                s.has_event_key
                    && s.mode != OutputMode::Complete
                    && !s.store.is_empty()
                    && s.store.event_time.watermark_ms != s.store.event_time.used_watermark_ms
            })
    }

    /// State figures of the last batch (`None` for a stateless query).
    pub fn state_progress(&self) -> Option<StateProgress> {
        self.streaming.as_ref().map(|s| s.last.clone())
    }

    async fn plan(&self, mut rows: Vec<Vec<RecordBatch>>) -> Result<LogicalPlan> {
        rows.resize_with(self.inputs.len(), Vec::new);
        for ((name, schema), batches) in self.inputs.iter().zip(rows) {
            let table = MemTable::try_new(schema.clone(), vec![batches])?;
            self.ctx.deregister_table(name.as_str())?;
            self.ctx.register_table(name.as_str(), Arc::new(table))?;
        }
        let plan = self
            .ctx
            .state()
            .statement_to_plan(self.statement.clone())
            .await?;
        guard::verify_plan(&plan)?;
        if !self.distinct_as_grouping {
            return Ok(plan);
        }
        // Streaming dedup (Spark's dropDuplicates): DISTINCT is a grouping on every column whose
        // state holds the keys seen; see `streaming::run_batch`.
        let rewritten = plan.transform_up(|node| match node {
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let keys: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                Ok(Transformed::yes(LogicalPlan::Aggregate(
                    Aggregate::try_new(input, keys, Vec::new())?,
                )))
            }
            other => Ok(Transformed::no(other)),
        })?;
        Ok(rewritten.data)
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

/// The `Aggregate` nodes of `plan`.
fn aggregates_of(plan: &LogicalPlan) -> Vec<Aggregate> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            found.push(aggregate.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Replaces the aggregate of `plan` by a scan of `rows` (the aggregate's output), with the
/// aggregate's column names and qualifiers, so the part above it plans unchanged.
fn replace_aggregate(
    plan: LogicalPlan,
    rows: &RecordBatch,
    planned: &streaming::AggregatePlan,
) -> Result<LogicalPlan> {
    let replacement = scan_as(rows, &planned.aggregate.schema, "__sluice_aggregate", true)?;
    replace_nodes(
        plan,
        |node| matches!(node, LogicalPlan::Aggregate(_)),
        replacement,
    )
}

/// A scan of `rows` whose output has `names`' column names and qualifiers (column `i` of `rows`
/// is field `i` of `names`), to stand in for a plan node with that output. Columns keep the
/// types of `rows`, and are declared nullable when `all_nullable` or when `rows` says so.
///
/// # Errors
/// Arrow or DataFusion errors when `rows` does not fit (e.g. fewer columns than `names`).
fn scan_as(
    rows: &RecordBatch,
    names: &DFSchema,
    table: &str,
    all_nullable: bool,
) -> Result<LogicalPlan> {
    let renamed: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Field::new(
                format!("c{i}"),
                f.data_type().clone(),
                all_nullable || f.is_nullable(),
            )
        })
        .collect();
    let schema = Arc::new(Schema::new(renamed));
    let batch = RecordBatch::try_new(schema.clone(), rows.columns().to_vec())?;
    let provider = MemTable::try_new(schema, vec![vec![batch]])?;
    let projection: Vec<Expr> = names
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new_unqualified(format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    Ok(
        LogicalPlanBuilder::scan(table, provider_as_source(Arc::new(provider)), None)?
            .project(projection)?
            .build()?,
    )
}

/// `plan` with every node for which `is_target` holds replaced by `replacement` (whose subtree
/// is not searched again).
fn replace_nodes(
    plan: LogicalPlan,
    is_target: impl Fn(&LogicalPlan) -> bool,
    replacement: LogicalPlan,
) -> Result<LogicalPlan> {
    let transformed = plan.transform_down(|node| {
        if is_target(&node) {
            Ok(Transformed::new(
                replacement.clone(),
                true,
                TreeNodeRecursion::Jump,
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })?;
    Ok(transformed.data)
}

/// `name: type, ...` of a state table's columns: the shape part of a stateful operator's
/// fingerprint in `metadata.json` (fixed: a change would refuse existing checkpoints).
fn state_fields(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    fields.join(", ")
}

/// The stream inputs scanned by `plan`, once per scan.
fn scanned_streams(plan: &LogicalPlan, streams: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && streams.contains(&scan.table_name.table())
        {
            found.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Whether `plan` reads one of the stream inputs.
fn reads_stream(plan: &LogicalPlan, streams: &[&str]) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && streams.contains(&scan.table_name.table())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Joins Spark does not support over a stream (without join state): stream–stream joins, and
/// outer joins whose preserved side is the static one (Spark's `UnsupportedOperationChecker`).
fn unsupported_joins(plan: &LogicalPlan, streams: &[&str]) -> Vec<String> {
    use datafusion::logical_expr::JoinType;
    let mut problems = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Join(join) = node {
            let left = reads_stream(&join.left, streams);
            let right = reads_stream(&join.right, streams);
            let ok = match (left, right) {
                // Stream–stream joins have their own rules: see `stream_join`.
                (true, true) => return Ok(TreeNodeRecursion::Continue),
                (false, false) => true,
                (true, false) => matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti
                ),
                (false, true) => matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
                ),
            };
            if !ok {
                problems.push(format!(
                    "{} join between a stream and a static table is not supported: the static side's \
                     unmatched rows would never be final (Spark allows inner joins, and outer joins with \
                     the stream on the outer side)",
                    join.join_type
                ));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    problems
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

#[cfg(test)]
mod streaming_tests;
