//! File tables (`tables[].file`): the small side of a stream–static join, read whole into memory
//! and joined with every micro-batch; re-read every `refreshInterval` (never, when unset).
//! Shape: the table's `schema` columns, as declared. Formats: JSON lines, CSV with a header line,
//! Parquet; local or `s3://`.

use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use object_store::ObjectStoreExt;
use sluice_crds::{FileFormat, StaticFileSpec, TableSpec, duration::parse_duration};

use crate::error::{EngineError, Result};
use crate::source::decode::{TextFormat, decode_parquet, decode_text};
use crate::storage::Location;

/// A file table and when it was last read.
pub struct FileTable {
    pub name: String,
    pub schema: SchemaRef,
    location: Location,
    file: String,
    format: FileFormat,
    refresh: Option<Duration>,
    pub rows: Vec<RecordBatch>,
    loaded_at: Instant,
}

impl FileTable {
    /// Reads the table `spec` (whose `file` is `file`) for the first time.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for a bad spec or a row that does not decode; storage errors
    /// when the file cannot be read.
    pub async fn open(spec: &TableSpec, file: &StaticFileSpec) -> Result<Self> {
        let (dir, name) = match file.path.rsplit_once('/') {
            Some((dir, name)) if !dir.is_empty() && !dir.ends_with(':') => (dir, name),
            _ => (".", file.path.as_str()),
        };
        let refresh = spec
            .refresh_interval
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|m| {
                EngineError::InvalidQuery(format!("table `{}`: refreshInterval: {m}", spec.name))
            })?;
        let mut table = Self {
            name: spec.name.clone(),
            schema: crate::schema::arrow_schema(&spec.schema)?,
            location: Location::parse(dir)?,
            file: name.to_string(),
            format: file.format,
            refresh,
            rows: Vec::new(),
            loaded_at: Instant::now(),
        };
        table.rows = table.read().await?;
        Ok(table)
    }

    /// Re-reads the table when its refresh interval has passed; returns whether it did.
    ///
    /// # Errors
    /// As [`FileTable::open`]; the old rows stay in use when the read fails.
    pub async fn refresh_if_due(&mut self) -> Result<bool> {
        match self.refresh {
            Some(every) if self.loaded_at.elapsed() >= every => {
                self.rows = self.read().await?;
                self.loaded_at = Instant::now();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn read(&self) -> Result<Vec<RecordBatch>> {
        let path = self.location.child(&self.file);
        let origin = format!("{}/{}", self.location.url, self.file);
        let bytes = self
            .location
            .store
            .get(&path)
            .await
            .map_err(|e| EngineError::storage(origin.clone(), e))?
            .bytes()
            .await
            .map_err(|e| EngineError::storage(origin.clone(), e))?;
        let (batches, bad) = match self.format {
            FileFormat::Parquet => decode_parquet(&self.schema, &origin, bytes)?,
            FileFormat::Json => decode_text(&self.schema, &TextFormat::Json, &origin, &bytes)?,
            FileFormat::Csv => decode_text(
                &self.schema,
                &TextFormat::Csv {
                    header: true,
                    delimiter: b',',
                },
                &origin,
                &bytes,
            )?,
        };
        if let Some(first) = bad.first() {
            return Err(EngineError::InvalidQuery(format!(
                "table `{}`: {origin} line {} does not decode: {}",
                self.name, first.line, first.error
            )));
        }
        Ok(batches)
    }
}
