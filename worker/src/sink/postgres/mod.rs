//! PostgreSQL sink: rows into an existing table, exactly once.
//!
//! Each (task, batch) is ONE transaction that first inserts `(query, task, batch_id)` into
//! [`COMMITS_TABLE`] and then writes the rows. If that row already exists, the batch was written
//! before (a replay after a crash between the sink and the checkpoint commit): the transaction is
//! rolled back and nothing is written. So the table sees every batch exactly once
//! (docs/architecture.md).
//!
//! Rows travel as one JSON array parameter expanded by `json_populate_recordset(NULL::<table>, …)`,
//! so PostgreSQL converts each JSON value to the column's type (timestamps as ISO text, numbers,
//! strings) and result columns are matched to table columns by name.
//!
//! Modes (`keyColumns` required for the last two):
//! - `insert`: `INSERT`.
//! - `upsert`: `INSERT … ON CONFLICT (keys) DO UPDATE SET c = EXCLUDED.c`; within a batch the last
//!   row per key wins.
//! - `accumulate`: `… DO UPDATE SET c = t.c + EXCLUDED.c` for every non-key column; rows of a batch
//!   with the same key are summed first (running counters, seed 000's online report).
//!
//! The password is read from the environment variable `passwordEnv` (default `PGPASSWORD`) and never
//! logged. Connection failures are [`EngineError::Sink`] (retryable): the batch is not committed and
//! is replayed; the connection is re-opened on the next write.

#[cfg(test)]
mod tests;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use sluice_crds::{PostgresSinkSpec, PostgresWriteMode};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::error::{EngineError, Result};
use crate::sink::Sink;

/// `statement_timeout` of the sink's session when `statementTimeout` is not set.
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The table recording which (query, task, batch) were written.
pub const COMMITS_TABLE: &str = "sluice_commits";

/// The configured PostgreSQL sink.
pub struct PostgresSink {
    spec: PostgresSinkSpec,
    query: String,
    client: Mutex<Option<Client>>,
}

fn sink_error(message: impl std::fmt::Display) -> EngineError {
    EngineError::Sink(format!("postgres: {message}"))
}

/// Quotes an identifier, `schema.table` part by part.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl PostgresSink {
    /// A sink for `spec`; `query` (`namespace/name#<checkpoint query id>`) identifies the query in
    /// [`COMMITS_TABLE`] (a new checkpoint is a new query whose batch ids start at 0 again).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when `upsert`/`accumulate` has no key columns.
    pub fn new(spec: &PostgresSinkSpec, query: &str) -> Result<Self> {
        if spec.mode != PostgresWriteMode::Insert && spec.key_columns.is_empty() {
            return Err(EngineError::InvalidQuery(
                "postgres sink: mode upsert/accumulate needs keyColumns".into(),
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            query: query.to_string(),
            client: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Client> {
        let client = crate::postgres::connect(&self.spec.connection, "sluice")
            .await
            .map_err(sink_error)?;
        let timeout = match self.spec.statement_timeout.as_deref() {
            Some(text) => sluice_crds::duration::parse_duration(text).map_err(|m| {
                EngineError::InvalidQuery(format!("sink.postgres.statementTimeout: {m}"))
            })?,
            None => DEFAULT_STATEMENT_TIMEOUT,
        };
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                timeout.as_millis().max(1)
            ))
            .await
            .map_err(|e| sink_error(format!("set statement_timeout: {e}")))?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} (\
                   query text NOT NULL, task integer NOT NULL, batch_id bigint NOT NULL, \
                   rows bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), \
                   PRIMARY KEY (query, task, batch_id))"
            ))
            .await
            .or_else(|e| {
                // Two tasks creating the table at once: the loser sees a unique violation.
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Ok(())
                } else {
                    Err(sink_error(format!("create {COMMITS_TABLE}: {e}")))
                }
            })?;
        Ok(client)
    }

    async fn write_batch(&self, client: &mut Client, batch: BatchRows<'_>) -> Result<u64> {
        let BatchRows {
            task,
            batch_id,
            statement,
            json,
            rows,
        } = batch;
        let tx = client
            .transaction()
            .await
            .map_err(|e| sink_error(format!("begin: {e}")))?;
        let marked = tx
            .execute(
                &format!(
                    "INSERT INTO {COMMITS_TABLE} (query, task, batch_id, rows) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING"
                ),
                &[&self.query, &(task as i32), &(batch_id as i64), &(rows as i64)],
            )
            .await
            .map_err(|e| sink_error(format!("mark batch: {e}")))?;
        if marked == 0 {
            tracing::info!(
                task,
                batch_id,
                "postgres sink: batch already written; skipping the replay"
            );
            // The rows the first write made, as the file sink reports a logged batch: the
            // checkpoint's sink record then says what the table holds (a restore reads it to
            // know whether a replay would duplicate rows).
            let recorded: i64 = tx
                .query_one(
                    &format!(
                        "SELECT rows FROM {COMMITS_TABLE} WHERE query = $1 AND task = $2 AND batch_id = $3"
                    ),
                    &[&self.query, &(task as i32), &(batch_id as i64)],
                )
                .await
                .map_err(|e| sink_error(format!("read batch mark: {e}")))?
                .get(0);
            tx.rollback()
                .await
                .map_err(|e| sink_error(format!("rollback: {e}")))?;
            return Ok(u64::try_from(recorded).unwrap_or(0));
        }
        tx.execute(statement, &[&json])
            .await
            .map_err(|e| classify(&self.spec.table, e))?;
        tx.commit()
            .await
            .map_err(|e| sink_error(format!("commit: {e}")))?;
        Ok(rows)
    }
}

/// One batch to write.
struct BatchRows<'a> {
    task: u32,
    batch_id: u64,
    statement: &'a str,
    json: &'a str,
    rows: u64,
}

/// User errors (undefined table/column, bad data) are not retryable; the rest is.
fn classify(table: &str, e: tokio_postgres::Error) -> EngineError {
    // `Display` of a server error is only "db error": the server's message and SQLSTATE say what.
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    match e.code().map(|c| c.code()) {
        // Class 42 (syntax/undefined object) and 22 (data exception): the query or table is wrong.
        Some(code) if code.starts_with("42") || code.starts_with("22") => {
            EngineError::InvalidQuery(format!("postgres sink table `{table}`: {detail}"))
        }
        _ => sink_error(format!("write {table}: {detail}")),
    }
}

/// The `INSERT` statement of a mode, taking the rows as `$1` (JSON array text).
///
/// # Errors
/// [`EngineError::InvalidQuery`] for missing key columns.
pub fn write_statement(spec: &PostgresSinkSpec, columns: &[String]) -> Result<String> {
    let table = quote_ident(&spec.table);
    let cols: Vec<String> = columns.iter().map(|c| quote_ident_part(c)).collect();
    let col_list = cols.join(", ");
    let source =
        format!("json_populate_recordset(NULL::{table}, $1::text::json) WITH ORDINALITY AS r");
    if spec.mode == PostgresWriteMode::Insert {
        return Ok(format!(
            "INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {source} ORDER BY r.ordinality"
        ));
    }
    if spec.key_columns.is_empty() {
        return Err(EngineError::InvalidQuery(
            "postgres sink: mode upsert/accumulate needs keyColumns".into(),
        ));
    }
    for key in &spec.key_columns {
        if !columns.contains(key) {
            return Err(EngineError::InvalidQuery(format!(
                "postgres sink: key column `{key}` is not a column of the query's result"
            )));
        }
    }
    let keys: Vec<String> = spec
        .key_columns
        .iter()
        .map(|c| quote_ident_part(c))
        .collect();
    let key_list = keys.join(", ");
    let values: Vec<&String> = cols.iter().filter(|c| !keys.contains(c)).collect();
    let (select, update) = match spec.mode {
        PostgresWriteMode::Upsert => (
            // Last row per key wins within the batch.
            format!(
                "SELECT DISTINCT ON ({key_list}) {col_list} FROM {source} \
                 ORDER BY {key_list}, r.ordinality DESC"
            ),
            values
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect::<Vec<_>>(),
        ),
        _ => (
            format!(
                "SELECT {key_list}{sep}{sums} FROM {source} GROUP BY {key_list}",
                sep = if values.is_empty() { "" } else { ", " },
                sums = values
                    .iter()
                    .map(|c| format!("sum({c}) AS {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            values
                .iter()
                .map(|c| format!("{c} = {table}.{c} + EXCLUDED.{c}"))
                .collect::<Vec<_>>(),
        ),
    };
    let insert_cols = if spec.mode == PostgresWriteMode::Upsert {
        col_list.clone()
    } else {
        keys.iter()
            .chain(values.iter().copied())
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let action = if update.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", update.join(", "))
    };
    Ok(format!(
        "INSERT INTO {table} ({insert_cols}) {select} ON CONFLICT ({key_list}) {action}"
    ))
}

fn quote_ident_part(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The rows of `batches` as a JSON array text (column name → value; nulls kept).
///
/// # Errors
/// [`EngineError::Arrow`] when a column type has no JSON form.
pub fn rows_json(batches: &[RecordBatch]) -> Result<String> {
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buffer);
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    if buffer.is_empty() {
        buffer.extend_from_slice(b"[]");
    }
    String::from_utf8(buffer).map_err(|e| EngineError::Internal(format!("json rows: {e}")))
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(0);
        };
        let columns: Vec<String> = first
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let statement = write_statement(&self.spec, &columns)?;
        let json = rows_json(batches)?;
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.connect().await?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(EngineError::Internal("postgres client missing".into()));
        };
        let batch = BatchRows {
            task,
            batch_id,
            statement: &statement,
            json: &json,
            rows,
        };
        match self.write_batch(client, batch).await {
            Ok(n) => Ok(n),
            Err(e) => {
                if client.is_closed() {
                    *guard = None;
                }
                Err(e)
            }
        }
    }
}
