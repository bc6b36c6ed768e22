//! `sluice-worker check`: validates a manifest without running it, for the operator's upgrade
//! guard (DESIGN §5: a new spec incompatible with the checkpoint is refused before the old
//! workers stop) and its scaling rule (a stateful query scales only when the source's
//! `partitionKey` is in the GROUP BY).
//!
//! The report is JSON (see [`CheckReport`]). Validation = the spec rules, the sources' schemas,
//! planning the SQL exactly as the engine does ([`BatchQuery::new`]) and, with a checkpoint, the
//! checkpoint's fixed facts: partition counts and the stateful-operator fingerprint.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectNamePart, visit_expressions_mut};
use object_store::ObjectStoreExt;
use serde::Serialize;
use sluice_crds::{SqlScope, StreamingQuery};

use crate::error::{EngineError, Result};
use crate::sql::{BatchQuery, stateful_operators};
use crate::storage::Location;

/// Key of `metadata.json` holding the stateful-operator fingerprint, when the checkpoint has one.
pub const FINGERPRINT_KEY: &str = "statefulFingerprint";

/// What `check` found out about a valid query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The SQL keeps state across batches (`sqlScope: stream` with aggregations, joins, ...).
    pub stateful: bool,
    /// Stateful operators found (`aggregation`, `join`, ...).
    pub stateful_operators: Vec<String>,
    /// Columns the aggregations group by (bare column names, deduplicated, in plan order).
    pub group_by: Vec<String>,
    /// `partitionKey` of each source that names one.
    pub partition_keys: BTreeMap<String, String>,
    /// Tasks of the query (the largest source partition count): the most replicas it can use.
    pub tasks: u32,
    /// FNV-1a hash of the stateful operators' plans, `None` for a stateless query.
    pub fingerprint: Option<String>,
}

/// Validates `query` and, when `checkpoint` is given and already exists, its fit with it.
///
/// # Errors
/// [`EngineError::Manifest`] / [`EngineError::InvalidQuery`] / [`EngineError::Sql`] for a spec
/// or SQL the engine would refuse; [`EngineError::Checkpoint`] when partition counts or the
/// stateful fingerprint differ from the checkpoint's; [`EngineError::Storage`] when the
/// checkpoint cannot be read.
pub async fn check(query: &StreamingQuery, checkpoint: Option<&str>) -> Result<CheckReport> {
    let spec = &query.spec;
    sluice_crds::validate_spec(spec).map_err(sluice_crds::CrdError::from)?;
    crate::engine::Trigger::from_spec(spec)?;
    let sources: Vec<Box<dyn crate::source::Source>> = spec
        .sources
        .iter()
        .map(crate::source::build)
        .collect::<Result<_>>()?;
    crate::sink::build(&spec.sink)?;
    let inputs: Vec<(String, arrow::datatypes::SchemaRef)> = sources
        .iter()
        .map(|s| (s.name().to_string(), s.schema()))
        .collect();
    BatchQuery::new(&spec.sql, inputs.clone(), spec.sql_scope, spec.output_mode).await?;

    let plan = plan_sql(&spec.sql, &inputs).await?;
    let operators: Vec<String> = stateful_operators(&plan)
        .into_iter()
        .map(str::to_string)
        .collect();
    let stateful = spec.sql_scope == SqlScope::Stream && !operators.is_empty();
    let fingerprint = stateful.then(|| fingerprint(&plan));
    let report = CheckReport {
        stateful,
        stateful_operators: operators,
        group_by: group_by_columns(&plan),
        partition_keys: spec
            .sources
            .iter()
            .filter_map(|s| s.partition_key.clone().map(|k| (s.name.clone(), k)))
            .collect(),
        tasks: sources.iter().map(|s| s.partitions()).max().unwrap_or(1),
        fingerprint,
    };
    if let Some(location) = checkpoint {
        check_checkpoint(location, &sources, &report).await?;
    }
    Ok(report)
}

async fn check_checkpoint(
    location: &str,
    sources: &[Box<dyn crate::source::Source>],
    report: &CheckReport,
) -> Result<()> {
    let location = Location::parse(location)?;
    let path = location.child("metadata.json");
    let bytes = match location.store.get(&path).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(|e| EngineError::storage(location.url.clone(), e))?,
        // A checkpoint that does not exist yet fits any query.
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(EngineError::storage(location.url.clone(), e)),
    };
    let incompatible = |message: String| EngineError::Checkpoint {
        location: location.url.clone(),
        message,
    };
    let metadata: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| incompatible(format!("metadata.json is not JSON: {e}")))?;
    for source in sources {
        let stored = metadata
            .get("partitions")
            .and_then(|p| p.get(source.name()))
            .and_then(serde_json::Value::as_u64);
        if let Some(stored) = stored
            && stored != u64::from(source.partitions())
        {
            return Err(incompatible(format!(
                "source `{}` has {} partitions but the checkpoint was created with {stored}; \
                 partition counts are fixed for the life of a checkpoint",
                source.name(),
                source.partitions()
            )));
        }
    }
    if let Some(stored) = metadata.get(FINGERPRINT_KEY).and_then(|f| f.as_str())
        && report.fingerprint.as_deref() != Some(stored)
    {
        return Err(incompatible(format!(
            "the stateful operators of the new SQL (fingerprint {}) do not match the state in \
             the checkpoint (fingerprint {stored}); use `upgradeMode: stateless` or a new checkpoint",
            report.fingerprint.as_deref().unwrap_or("none")
        )));
    }
    Ok(())
}

/// Plans `sql` over empty inputs with the engine's session settings (identifiers keep their
/// case; Spark's `split`/`explode` renamed) and returns the logical plan.
async fn plan_sql(
    sql: &str,
    inputs: &[(String, arrow::datatypes::SchemaRef)],
) -> Result<LogicalPlan> {
    let mut config = SessionConfig::new().with_target_partitions(1);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    for (name, schema) in inputs {
        let table = MemTable::try_new(schema.clone(), vec![Vec::new()])?;
        ctx.register_table(name.as_str(), Arc::new(table))?;
    }
    let mut statement = ctx
        .state()
        .sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
    if let Statement::Statement(inner) = &mut statement {
        let _ = visit_expressions_mut(inner.as_mut(), |expr| {
            if let SqlExpr::Function(function) = expr
                && let Some(ObjectNamePart::Identifier(ident)) = function.name.0.last_mut()
            {
                match ident.value.to_ascii_lowercase().as_str() {
                    "split" => ident.value = "string_to_array".into(),
                    "explode" => ident.value = "unnest".into(),
                    _ => {}
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Ok(ctx.state().statement_to_plan(statement).await?)
}

/// Bare names of the columns every aggregation groups by.
fn group_by_columns(plan: &LogicalPlan) -> Vec<String> {
    let mut columns = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            for expr in &aggregate.group_expr {
                for column in expr.column_refs() {
                    if !columns.contains(&column.name) {
                        columns.push(column.name.clone());
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    columns
}

/// FNV-1a (64 bit) over the display of every stateful node: changes when an aggregation's keys
/// or functions, a join or a window change; stays when only projections or filters change.
fn fingerprint(plan: &LogicalPlan) -> String {
    let mut text = String::new();
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(
            node,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Distinct(_)
        ) {
            text.push_str(&node.display().to_string());
            text.push('\n');
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sql: &str, scope: &str, partitions: u32) -> StreamingQuery {
        sluice_crds::parse_manifest(&format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: q}}
spec:
  sources:
    - name: events
      file: {{path: "/tmp/in", format: json, partitions: {partitions}}}
      partitionKey: deviceId
      schema:
        - {{name: deviceId, type: string}}
        - {{name: temperature, type: double}}
  sql: "{sql}"
  sqlScope: {scope}
  sink: {{console: {{}}}}
"#
        ))
        .expect("manifest")
    }

    #[tokio::test]
    async fn stateless_query_reports_tasks_and_keys() {
        let report = check(
            &manifest(
                "SELECT deviceId FROM events WHERE temperature > 1",
                "stream",
                8,
            ),
            None,
        )
        .await
        .expect("valid");
        assert_eq!(
            report,
            CheckReport {
                stateful: false,
                stateful_operators: Vec::new(),
                group_by: Vec::new(),
                partition_keys: BTreeMap::from([("events".into(), "deviceId".into())]),
                tasks: 8,
                fingerprint: None,
            }
        );
    }

    #[tokio::test]
    async fn micro_batch_group_by_is_not_stateful_but_reports_keys() {
        let report = check(
            &manifest(
                "SELECT deviceId, count(*) AS n FROM events GROUP BY deviceId",
                "microBatch",
                2,
            ),
            None,
        )
        .await
        .expect("valid");
        assert!(!report.stateful);
        assert_eq!(report.stateful_operators, vec!["aggregation".to_string()]);
        assert_eq!(report.group_by, vec!["deviceId".to_string()]);
    }

    #[tokio::test]
    async fn unknown_column_is_refused() {
        let err = check(&manifest("SELECT nope FROM events", "stream", 2), None)
            .await
            .expect_err("invalid");
        assert!(err.to_string().contains("No field named nope"), "{err}");
    }

    #[tokio::test]
    async fn partition_change_against_checkpoint_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("metadata.json"),
            r#"{"queryId":"x","partitions":{"events":8},"createdMs":1,"statefulFingerprint":"abc"}"#,
        )
        .expect("write");
        let location = dir.path().to_str().expect("utf8");
        let err = check(
            &manifest("SELECT * FROM events", "stream", 4),
            Some(location),
        )
        .await
        .expect_err("partition change");
        assert!(err.to_string().contains("created with 8"), "{err}");
        // Same partitions, but a stateless query against a checkpoint with stateful state.
        let err = check(
            &manifest("SELECT * FROM events", "stream", 8),
            Some(location),
        )
        .await
        .expect_err("fingerprint change");
        assert!(err.to_string().contains("fingerprint"), "{err}");
        // A missing checkpoint fits anything.
        let fresh = dir.path().join("fresh");
        check(
            &manifest("SELECT * FROM events", "stream", 4),
            Some(fresh.to_str().expect("utf8")),
        )
        .await
        .expect("fresh checkpoint");
    }
}
