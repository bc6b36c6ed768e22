//! `sluice-worker check`: validates a manifest without running it, for the operator's upgrade guard
//! (docs/architecture.md, "The operator": a new spec incompatible with the checkpoint is refused
//! before the old workers stop) and its scaling rule (a stateful query scales only when the
//! source's `partitionKey` is in the GROUP BY).
//!
//! The report is JSON (see [`CheckReport`]). Validation is the engine's own: the spec rules, the
//! sources and sink, planning the SQL with [`crate::engine::plan_query`] (the same function a
//! start uses) and, with a checkpoint, [`crate::checkpoint::Checkpoint::check_compatible`] on its `metadata.json`
//! (partition counts, stateful-operator fingerprint).

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use sluice_crds::{SqlScope, StreamingQuery};

use crate::checkpoint::CheckpointMetadata;
use crate::error::Result;
use crate::ml::TaskModels;
use crate::sql::stateful_operators;
use crate::storage::Location;

/// What `check` found out about a valid query: the operator's type too (one contract).
pub use sluice_crds::contract::CheckReport;

/// Validates `query` and, when `checkpoint` is given and already exists, its fit with it.
///
/// # Errors
/// [`crate::EngineError::Manifest`] / [`crate::EngineError::InvalidQuery`] /
/// [`crate::EngineError::Sql`] for a spec or SQL the engine would refuse;
/// [`crate::EngineError::Checkpoint`] when partition counts or the stateful operators differ from
/// the checkpoint's; [`crate::EngineError::Storage`] when the checkpoint cannot be read.
pub async fn check(query: &StreamingQuery, checkpoint: Option<&str>) -> Result<CheckReport> {
    let spec = &query.spec;
    sluice_crds::validate_spec(spec).map_err(sluice_crds::CrdError::from)?;
    crate::engine::Trigger::from_spec(spec)?;
    let sources: Vec<Box<dyn crate::source::Source>> = spec
        .sources
        .iter()
        .map(crate::source::build)
        .collect::<Result<_>>()?;
    let inputs: Vec<(String, arrow::datatypes::SchemaRef)> = sources
        .iter()
        .map(|s| (s.name().to_string(), s.schema()))
        .collect();
    let planned =
        crate::engine::plan_query(spec, &inputs, &TaskModels::new(&spec.models, None)?).await?;
    let layout = crate::engine::exchange::stateful_layout(
        spec,
        &sources,
        planned.grouping_columns().as_deref(),
        planned.splits_over_exchange(),
    )?;
    let context = crate::sink::SinkContext {
        query: query.metadata.name.clone().unwrap_or_default(),
        query_id: "check".into(),
        output_mode: spec.output_mode,
        grouping_columns: planned.grouping_columns(),
        tasks: sources.iter().map(|s| s.partitions()).max().unwrap_or(1),
        maintenance_failures: None,
        min_batches_to_retain: 0,
    };
    crate::sink::build(&spec.sink, &context)?;
    let plan = planned.logical_plan().await?;
    let fingerprint = planned.stateful_fingerprint();
    let report = CheckReport {
        stateful: spec.sql_scope == SqlScope::Stream && fingerprint.is_some(),
        stateful_operators: stateful_operators(&plan)
            .into_iter()
            .map(str::to_string)
            .collect(),
        group_by: group_by_columns(&plan),
        partition_keys: spec
            .sources
            .iter()
            .filter_map(|s| s.partition_key.clone().map(|k| (s.name.clone(), k)))
            .collect(),
        tasks: sources.iter().map(|s| s.partitions()).max().unwrap_or(1),
        fingerprint,
        plan: layout.name().to_string(),
        keys: planned.grouping_columns().unwrap_or_default(),
    };
    if let Some(location) = checkpoint {
        let checkpoint =
            crate::checkpoint::generation::open_current(Location::parse(location)?).await?;
        // A checkpoint that does not exist yet fits any query.
        if let Some(stored) = checkpoint.stored_metadata().await? {
            let fresh = CheckpointMetadata {
                query_id: stored.query_id.clone(),
                partitions: sources
                    .iter()
                    .map(|s| (s.name().to_string(), s.partitions()))
                    .collect(),
                created_ms: stored.created_ms,
                stateful_operators: report.fingerprint.clone(),
                max_parallelism: planned.max_parallelism(),
            };
            checkpoint.check_compatible(&stored, &fresh)?;
        }
    }
    Ok(report)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
                plan: "single".into(),
                keys: Vec::new(),
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
            r#"{"queryId":"x","partitions":{"events":8},"createdMs":1,"statefulOperators":"abc"}"#,
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
        assert!(
            err.to_string().contains("stateful operators changed"),
            "{err}"
        );
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
