//! Delta Lake sink: each (task, batch) is one Delta commit, exactly once.
//!
//! **Idempotence.** Every commit carries a `txn` action (app id `<queryId>-<task>`, version =
//! batch id), as Spark's Delta sink records `(queryId, batchId)`. Before writing, the sink reads
//! the table's latest version of that app id: a batch at or below it was committed before (a
//! replay after a crash between the Delta commit and the checkpoint commit) and is skipped. Data
//! files of an attempt that died before its commit are never referenced by the log, so readers
//! never see them (VACUUM deletes them later). The checkpoint's query id is part of the app id, so
//! a new checkpoint (batch ids restarting at 0) is a new application.
//!
//! **Modes** ([`DeltaWriteMode`], from `outputMode`): `append` adds the batch's files; `overwrite`
//! (complete) removes every file of the table and adds the batch's in one commit, so readers see
//! either the previous result table or the new one; `merge` (update) MERGEs the batch's rows on
//! the key columns (`keyColumns`, or the query's grouping columns): matched rows are replaced,
//! others inserted.
//!
//! **Maintenance** (`optimize`, `vacuum`): after a batch is committed, a due compaction or vacuum
//! starts in the background on its own table handle; it never holds up a batch, Delta's
//! conflict resolution orders its commit against the batches' (a compaction only rewrites files,
//! so an append commits past it), and a failure is logged and counted
//! (`sluice_sink_maintenance_failures`), never fatal.
//!
//! Local paths and `file://` use the local file system, `s3://` the worker's S3 settings
//! ([`crate::storage`]); commits are put-if-absent (`_delta_log/<version>.json`), which S3 and
//! MinIO/SeaweedFS support, so concurrent writers (tasks on several replicas) never overwrite each
//! other's commit.

pub mod maintenance;

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::{Expr, Operator, binary_expr};
use datafusion::prelude::SessionContext;
use deltalake_core::kernel::Transaction;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::protocol::SaveMode;
use deltalake_core::{DeltaTable, DeltaTableError, ObjectStore};
use object_store::local::LocalFileSystem;
use prometheus_client::metrics::counter::Counter;
use sluice_crds::{DeltaSinkSpec, DeltaWriteMode, OutputMode};
use url::Url;

use crate::error::{EngineError, Result};
use crate::sink::Sink;
use crate::storage::Location;

pub use maintenance::{Maintenance, MaintenancePlan};

/// What the Delta sink needs besides its spec.
#[derive(Debug, Clone, Default)]
pub struct DeltaContext {
    /// The checkpoint's query id: with the task, the `txn` app id.
    pub query_id: String,
    pub output_mode: OutputMode,
    /// The query's grouping columns (the keys of `merge` when `keyColumns` is unset).
    pub grouping_columns: Option<Vec<String>>,
    /// Tasks of the query: `overwrite` replaces the whole table, so it needs exactly one.
    pub tasks: u32,
    /// Counts failed compactions and vacuums.
    pub maintenance_failures: Option<Counter>,
}

/// The configured Delta sink.
pub struct DeltaSink {
    url: Url,
    root: Arc<dyn ObjectStore>,
    mode: DeltaWriteMode,
    partition_by: Vec<String>,
    keys: Vec<String>,
    query_id: String,
    /// Tasks of this process commit one at a time: a second commit from the same process would
    /// only conflict with the first and retry.
    commit_lock: tokio::sync::Mutex<()>,
    maintenance: Arc<Maintenance>,
}

fn delta_error(context: &str, e: DeltaTableError) -> EngineError {
    match e {
        // The result does not fit the table (a changed query, other partition columns).
        DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::PartitionError { .. }
        | DeltaTableError::Arrow { .. } => {
            EngineError::InvalidQuery(format!("sink.delta: {context}: {e}"))
        }
        _ => EngineError::Sink(format!("delta: {context}: {e}")),
    }
}

/// Resolves `path` to the table's URL and the store at the root of its file system or bucket.
///
/// # Errors
/// As [`Location::parse`].
pub fn table_root(path: &str) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let location = Location::parse(path)?;
    let bad_url = |e: url::ParseError| {
        EngineError::InvalidQuery(format!(
            "sink.delta.path: `{path}` is not a usable location: {e}"
        ))
    };
    if location.url.starts_with("s3://") {
        // Location's store is the bucket (its prefix is separate): the root Delta wants.
        let url =
            Url::parse(&format!("{}/", location.url.trim_end_matches('/'))).map_err(bad_url)?;
        return Ok((url, location.store));
    }
    let url = Url::parse(&format!("{}/", location.url.trim_end_matches('/'))).map_err(bad_url)?;
    Ok((url, Arc::new(LocalFileSystem::new())))
}

/// A Delta log store for the table at `url` on `root`.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when the URL has no usable path.
pub fn log_store(url: &Url, root: &Arc<dyn ObjectStore>) -> Result<LogStoreRef> {
    let config = StorageConfig::default();
    let prefixed = config
        .decorate_store(root.clone(), url)
        .map_err(|e| delta_error("table location", e))?;
    Ok(default_logstore(
        Arc::from(prefixed),
        root.clone(),
        url,
        &config,
    ))
}

/// Opens the table at `url`; `None` when there is no table yet.
///
/// # Errors
/// [`EngineError::Sink`] when the log cannot be read.
pub async fn open_table(url: &Url, root: &Arc<dyn ObjectStore>) -> Result<(DeltaTable, bool)> {
    let mut table = DeltaTable::new(log_store(url, root)?);
    match table.load().await {
        Ok(()) => Ok((table, true)),
        Err(DeltaTableError::NotATable(_)) => Ok((table, false)),
        Err(e) => Err(delta_error("loading the table", e)),
    }
}

impl DeltaSink {
    /// A sink for `spec`.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unusable path, `overwrite` with several tasks, or
    /// `merge` without key columns.
    pub fn new(spec: &DeltaSinkSpec, context: &DeltaContext) -> Result<Self> {
        let mode = sluice_crds::validate::delta_mode_for(context.output_mode);
        if mode == DeltaWriteMode::Overwrite && context.tasks > 1 {
            return Err(EngineError::InvalidQuery(format!(
                "sink.delta: outputMode complete replaces the whole table each batch, so the query \
                 must run as one task (it has {}; set the sources' partitions to 1)",
                context.tasks
            )));
        }
        let keys = if spec.key_columns.is_empty() {
            context.grouping_columns.clone().unwrap_or_default()
        } else {
            spec.key_columns.clone()
        };
        if mode == DeltaWriteMode::Merge && keys.is_empty() {
            return Err(EngineError::InvalidQuery(
                "sink.delta.keyColumns: outputMode update MERGEs on key columns; the query has \
                 no grouping columns, so name them in keyColumns"
                    .into(),
            ));
        }
        let (url, root) = table_root(&spec.path)?;
        let maintenance = Maintenance::new(
            MaintenancePlan::from_spec(spec)?,
            url.clone(),
            root.clone(),
            context.maintenance_failures.clone(),
        );
        Ok(Self {
            url,
            root,
            mode,
            partition_by: spec.partition_by.clone(),
            keys,
            query_id: context.query_id.clone(),
            commit_lock: tokio::sync::Mutex::new(()),
            maintenance: Arc::new(maintenance),
        })
    }

    /// Whether a background compaction or vacuum is running.
    pub fn maintenance_running(&self) -> bool {
        self.maintenance.is_running()
    }

    /// The `txn` app id of `task`.
    pub fn app_id(&self, task: u32) -> String {
        format!("{}-{task}", self.query_id)
    }

    fn check_columns(&self, batch: &RecordBatch, field: &str, columns: &[String]) -> Result<()> {
        let schema = batch.schema();
        for name in columns {
            if schema.field_with_name(name).is_err() {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(EngineError::InvalidQuery(format!(
                    "sink.delta.{field}: column `{name}` is not in the query result ({})",
                    have.join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn commit(
        &self,
        table: DeltaTable,
        exists: bool,
        properties: CommitProperties,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        match self.mode {
            DeltaWriteMode::Append | DeltaWriteMode::Overwrite => {
                if batches.is_empty() {
                    if self.mode == DeltaWriteMode::Overwrite && exists {
                        // An empty result table: remove every row, still recording the batch.
                        table
                            .delete()
                            .with_commit_properties(properties)
                            .await
                            .map_err(|e| delta_error("overwriting with no rows", e))?;
                    }
                    return Ok(());
                }
                let save_mode = if self.mode == DeltaWriteMode::Append {
                    SaveMode::Append
                } else {
                    SaveMode::Overwrite
                };
                let mut write = table
                    .write(batches)
                    .with_save_mode(save_mode)
                    .with_commit_properties(properties);
                if !exists && !self.partition_by.is_empty() {
                    write = write.with_partition_columns(self.partition_by.clone());
                }
                write.await.map_err(|e| delta_error("write", e))?;
            }
            DeltaWriteMode::Merge => {
                let Some(first) = batches.first() else {
                    return Ok(());
                };
                if !exists {
                    // The first batch creates the table; its rows have one row per key already.
                    let mut write = table
                        .write(batches)
                        .with_save_mode(SaveMode::Append)
                        .with_commit_properties(properties);
                    if !self.partition_by.is_empty() {
                        write = write.with_partition_columns(self.partition_by.clone());
                    }
                    write.await.map_err(|e| delta_error("write", e))?;
                    return Ok(());
                }
                let columns: Vec<String> = first
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                let source = SessionContext::new().read_batches(batches)?;
                let qualified = |side: &str, name: &str| {
                    Expr::Column(Column::new(Some(TableReference::bare(side)), name))
                };
                // Null keys are keys too (a GROUP BY puts nulls in one group).
                let predicate = self
                    .keys
                    .iter()
                    .map(|k| {
                        binary_expr(
                            qualified("target", k),
                            Operator::IsNotDistinctFrom,
                            qualified("source", k),
                        )
                    })
                    .reduce(Expr::and)
                    .ok_or_else(|| EngineError::Internal("merge without keys".into()))?;
                table
                    .merge(source, predicate)
                    .with_source_alias("source")
                    .with_target_alias("target")
                    .with_commit_properties(properties)
                    .when_matched_update(|mut update| {
                        for c in &columns {
                            update = update.update(
                                Column::new(None::<TableReference>, c),
                                qualified("source", c),
                            );
                        }
                        update
                    })
                    .and_then(|merge| {
                        merge.when_not_matched_insert(|mut insert| {
                            for c in &columns {
                                insert = insert.set(
                                    Column::new(None::<TableReference>, c),
                                    qualified("source", c),
                                );
                            }
                            insert
                        })
                    })
                    .map_err(|e| delta_error("merge", e))?
                    .await
                    .map_err(|e| delta_error("merge", e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for DeltaSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if batches.is_empty() && self.mode != DeltaWriteMode::Overwrite {
            return Ok(0);
        }
        if let Some(first) = batches.first() {
            self.check_columns(first, "partitionBy", &self.partition_by)?;
            if self.mode == DeltaWriteMode::Merge {
                self.check_columns(first, "keyColumns", &self.keys)?;
            }
        }
        let version = i64::try_from(batch_id)
            .map_err(|_| EngineError::Internal(format!("batch id {batch_id} out of range")))?;
        let app_id = self.app_id(task);
        {
            let _commit = self.commit_lock.lock().await;
            let (table, exists) = open_table(&self.url, &self.root).await?;
            if exists {
                let committed = table
                    .snapshot()
                    .map_err(|e| delta_error("reading the snapshot", e))?
                    .transaction_version(table.log_store().as_ref(), &app_id)
                    .await
                    .map_err(|e| delta_error("reading the txn version", e))?;
                if committed.is_some_and(|v| v >= version) {
                    tracing::info!(
                        task,
                        batch_id,
                        "delta sink: batch already committed to the table; skipping the replay"
                    );
                    return Ok(rows);
                }
            }
            let properties = CommitProperties::default()
                .with_application_transaction(Transaction::new(&app_id, version));
            self.commit(table, exists, properties, batches).await?;
        }
        self.maintenance.after_commit();
        Ok(rows)
    }
}
