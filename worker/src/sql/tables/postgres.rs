//! PostgreSQL lookup tables (`tables[].postgres`): the large side of a stream–static join, never
//! read whole. Seed 000's rule: a small dimension is held in RAM (a file table), a large one stays
//! in its database and is looked up per micro-batch by the join keys.
//!
//! Per batch, [`super::lookup_joins`] finds the expressions the query equates with the table's
//! `keyColumns`; their distinct non-null values over the batch are fetched with ONE query,
//! `SELECT <schema columns> FROM <table> WHERE k = ANY($1)` (several key columns:
//! `(k1, k2) IN (SELECT * FROM unnest($1, $2))`). The keys travel as `text[]` cast in PostgreSQL
//! to the declared type of each key column (`long` → `int8[]`, `string` → `text[]`, …), so an
//! index on the key columns is used. Rows come back as JSON (`row_to_json`) decoded with the
//! declared schema, so the Arrow schema of the table is exactly the declared `schema`.
//!
//! The password is read from the environment variable `passwordEnv` (default `PGPASSWORD`) and never
//! logged. A failed lookup is retried [`FETCH_ATTEMPTS`] times with backoff (reconnecting); then the
//! batch fails with [`EngineError::Lookup`] (retryable): it is not committed and is replayed, as
//! after a sink failure. Undefined table/column or a value of the wrong type is a user error.

use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::{Array, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::FormatOptions;
use sluice_crds::{PostgresTableSpec, TableSpec};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::error::{EngineError, Result, backoff};
use crate::sink::postgres::quote_ident;
use crate::source::decode::{TextFormat, decode_text};

/// Attempts of one batch's lookup query before the batch fails (and is replayed by the engine).
pub const FETCH_ATTEMPTS: u32 = 3;

/// Longest wait between two attempts.
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(2);

/// What the last batch's lookup of one table did (progress `lookups[]`, metric
/// `sluice_lookup_rows_total`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupProgress {
    pub table: String,
    /// Distinct non-null keys of the batch (tuples, for several key columns).
    pub keys: u64,
    /// Rows PostgreSQL returned for them.
    pub rows: u64,
}

/// A PostgreSQL table looked up by key; the connection is opened at the first lookup.
pub struct PostgresTable {
    pub name: String,
    /// The declared `schema`: the columns selected, in order.
    pub schema: SchemaRef,
    /// Key columns, in `keyColumns` order, with their declared Arrow type.
    pub keys: Vec<(String, DataType)>,
    spec: PostgresTableSpec,
    statement: String,
    client: Mutex<Option<Client>>,
}

impl PostgresTable {
    /// A lookup table for `spec` (whose `postgres` is `pg`). Does not connect.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when the schema is empty, a key column is not in it, or a key
    /// column's type cannot be looked up (binary).
    pub fn open(spec: &TableSpec, pg: &PostgresTableSpec) -> Result<Self> {
        let schema = crate::schema::arrow_schema(&spec.schema)?;
        let invalid = |m: String| EngineError::InvalidQuery(format!("table `{}`: {m}", spec.name));
        if schema.fields().is_empty() {
            return Err(invalid(
                "a PostgreSQL table needs a `schema` (the columns to read)".into(),
            ));
        }
        if pg.key_columns.is_empty() {
            return Err(invalid(
                "a PostgreSQL table needs `keyColumns` (the columns it is looked up by)".into(),
            ));
        }
        let mut keys = Vec::with_capacity(pg.key_columns.len());
        for key in &pg.key_columns {
            let field = schema.field_with_name(key).map_err(|_| {
                invalid(format!(
                    "key column `{key}` is not a column of its `schema`"
                ))
            })?;
            if pg_type(field.data_type()).is_none() {
                return Err(invalid(format!(
                    "key column `{key}` has type {}, which cannot be looked up",
                    field.data_type()
                )));
            }
            keys.push((key.clone(), field.data_type().clone()));
        }
        Ok(Self {
            name: spec.name.clone(),
            statement: lookup_statement(&pg.table, &schema, &keys),
            schema,
            keys,
            spec: pg.clone(),
            client: Mutex::new(None),
        })
    }

    /// The key column names, in `keyColumns` order.
    pub fn key_columns(&self) -> &[String] {
        &self.spec.key_columns
    }

    /// The query run per batch (`$1`…`$n`: the keys of each key column as `text[]`).
    pub fn statement(&self) -> &str {
        &self.statement
    }

    /// Fetches the rows whose key columns equal one of the key tuples in `keys` (batches whose
    /// columns are the key values in `keyColumns` order, of any type castable to the declared
    /// one). Nulls never match, so tuples with a null are skipped; no query runs without keys.
    ///
    /// Returns the rows (Arrow schema = the declared `schema`) and the progress figures.
    ///
    /// # Errors
    /// [`EngineError::Lookup`] (retryable) when PostgreSQL cannot be reached after
    /// [`FETCH_ATTEMPTS`] attempts; [`EngineError::InvalidQuery`] for an undefined table/column or
    /// a row that does not decode as the declared schema.
    pub async fn fetch(&self, keys: &[RecordBatch]) -> Result<(Vec<RecordBatch>, LookupProgress)> {
        let tuples = self.distinct_keys(keys)?;
        let mut progress = LookupProgress {
            table: self.name.clone(),
            keys: tuples.len() as u64,
            rows: 0,
        };
        if tuples.is_empty() {
            return Ok((Vec::new(), progress));
        }
        let mut params: Vec<Vec<String>> = vec![Vec::with_capacity(tuples.len()); self.keys.len()];
        for tuple in tuples {
            for (column, value) in params.iter_mut().zip(tuple) {
                column.push(value);
            }
        }
        let mut attempt = 0;
        let lines = loop {
            match self.query(&params).await {
                Ok(lines) => break lines,
                Err(e) if e.is_retryable() && attempt + 1 < FETCH_ATTEMPTS => {
                    let wait = backoff(attempt, MAX_FETCH_BACKOFF);
                    tracing::warn!(table = %self.name, error = %e, retry_in_ms = wait.as_millis() as u64, "lookup failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        progress.rows = lines.len() as u64;
        let origin = format!("postgres table {}", self.spec.table);
        let (batches, bad) = decode_text(
            &self.schema,
            &TextFormat::Json,
            &origin,
            lines.join("\n").as_bytes(),
        )?;
        if let Some(first) = bad.first() {
            return Err(EngineError::InvalidQuery(format!(
                "table `{}`: row {} of {origin} does not fit the declared schema: {} (row: {})",
                self.name, first.line, first.error, first.record
            )));
        }
        Ok((batches, progress))
    }

    /// The distinct key tuples of `keys` as text, each value cast to its declared type first.
    fn distinct_keys(&self, keys: &[RecordBatch]) -> Result<BTreeSet<Vec<String>>> {
        let safe = CastOptions {
            safe: true,
            format_options: FormatOptions::default(),
        };
        let mut tuples = BTreeSet::new();
        for batch in keys {
            if batch.num_columns() != self.keys.len() {
                return Err(EngineError::Internal(format!(
                    "table `{}`: {} key columns, {} key expressions",
                    self.name,
                    self.keys.len(),
                    batch.num_columns()
                )));
            }
            let mut columns = Vec::with_capacity(self.keys.len());
            for (column, (_, declared)) in batch.columns().iter().zip(&self.keys) {
                // A value that does not convert (e.g. 'x' for a `long` key) cannot match: null.
                let typed = cast_with_options(column, declared, &safe)?;
                let text = cast_with_options(&typed, &DataType::Utf8, &safe)?;
                let text = text
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| EngineError::Internal("key cast to utf8".into()))?
                    .clone();
                columns.push(text);
            }
            for row in 0..batch.num_rows() {
                if columns.iter().any(|c| c.is_null(row)) {
                    continue;
                }
                tuples.insert(columns.iter().map(|c| c.value(row).to_string()).collect());
            }
        }
        Ok(tuples)
    }

    /// One attempt: connects if needed and runs the statement; the rows as JSON texts.
    async fn query(&self, params: &[Vec<String>]) -> Result<Vec<String>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.connect().await?);
        }
        let Some(client) = guard.as_ref() else {
            return Err(EngineError::Internal("postgres client missing".into()));
        };
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        match client.query(self.statement.as_str(), &refs).await {
            Ok(rows) => rows
                .iter()
                .map(|row| {
                    row.try_get::<_, String>(0)
                        .map_err(|e| self.lookup_error(format!("read row: {e}")))
                })
                .collect(),
            Err(e) => {
                let error = self.classify(e);
                if error.is_retryable() {
                    // Reconnect on the next attempt: the connection may be half dead.
                    *guard = None;
                }
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Client> {
        crate::postgres::connect(&self.spec.connection, "sluice-lookup")
            .await
            .map_err(|m| self.lookup_error(m))
    }

    fn lookup_error(&self, message: String) -> EngineError {
        EngineError::Lookup {
            table: self.name.clone(),
            message,
        }
    }

    /// Class 42 (undefined table/column, syntax) and 22 (data exception: a key that does not
    /// convert to the column's type) are user errors; the rest (connection) is retryable.
    fn classify(&self, e: tokio_postgres::Error) -> EngineError {
        match e.code().map(|c| c.code()) {
            Some(code) if code.starts_with("42") || code.starts_with("22") => {
                EngineError::InvalidQuery(format!(
                    "table `{}` (PostgreSQL `{}`): {e}",
                    self.name, self.spec.table
                ))
            }
            _ => self.lookup_error(format!("query {}: {e}", self.spec.table)),
        }
    }
}

/// The PostgreSQL type of a declared Arrow type, for casting `text[]` keys (`None`: not a key type).
fn pg_type(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 => "text",
        DataType::Int64 => "int8",
        DataType::Int32 => "int4",
        DataType::Int16 => "int2",
        DataType::Float64 => "float8",
        DataType::Float32 => "float4",
        DataType::Boolean => "bool",
        DataType::Date32 => "date",
        DataType::Timestamp(_, _) => "timestamptz",
        _ => return None,
    })
}

/// `SELECT row_to_json(t)::text FROM (SELECT <columns> FROM <table> WHERE <keys match>) t`.
pub fn lookup_statement(table: &str, schema: &SchemaRef, keys: &[(String, DataType)]) -> String {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    let arrays: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::text[]::{}[]", i + 1, pg_type(t).unwrap_or("text")))
        .collect();
    let condition = match keys {
        [(key, _)] => format!("{} = ANY({})", quote(key), arrays.join("")),
        _ => format!(
            "({}) IN (SELECT * FROM unnest({}))",
            keys.iter()
                .map(|(k, _)| quote(k))
                .collect::<Vec<_>>()
                .join(", "),
            arrays.join(", ")
        ),
    };
    format!(
        "SELECT row_to_json(t)::text FROM (SELECT {} FROM {} WHERE {condition}) AS t",
        columns.join(", "),
        quote_ident(table)
    )
}
