//! File sink: Parquet, JSON lines or CSV files under a directory (local or `s3://`).
//!
//! Each (task, batch) writes its rows to `part-<task>-<batchId>-<n>.<ext>` (zero-padded), so a
//! replayed batch overwrites the same object with identical bytes. With `partitionBy`, rows are
//! split into Hive-style directories `col=value/` (values percent-escaped as Spark does; null is
//! `__HIVE_DEFAULT_PARTITION__`) and the partition columns are left out of the files. A batch with
//! no rows writes nothing. Object stores publish an object only when it is complete (local: rename,
//! S3: multipart complete), so readers never see half a file.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::Schema;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sluice_crds::{FileFormat, FileSinkSpec};

use crate::error::{EngineError, Result};
use crate::sink::Sink;
use crate::storage::Location;

/// Hive's name for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The configured file sink.
pub struct FileSink {
    location: Location,
    format: FileFormat,
    partition_by: Vec<String>,
}

impl FileSink {
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unusable path.
    pub fn new(spec: &FileSinkSpec) -> Result<Self> {
        Ok(Self {
            location: Location::parse(&spec.path)?,
            format: spec.format,
            partition_by: spec.partition_by.clone(),
        })
    }

    fn extension(&self) -> &'static str {
        match self.format {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
            FileFormat::Csv => "csv",
        }
    }

    /// Writes `batches` (one schema, at least one batch) as one file, batch by batch: no
    /// concatenated copy of the rows is made.
    async fn write_file(&self, relative: &str, batches: &[RecordBatch]) -> Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let path = self.location.child(relative);
        let store = self.location.store.clone();
        let fail = |e: &dyn std::fmt::Display| EngineError::Sink(format!("writing {path}: {e}"));
        match self.format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let writer = BufWriter::new(store, path.clone());
                let mut writer = AsyncArrowWriter::try_new(writer, first.schema(), Some(props))?;
                for batch in batches {
                    writer.write(batch).await.map_err(|e| fail(&e))?;
                }
                writer.close().await.map_err(|e| fail(&e))?;
            }
            FileFormat::Json => {
                let mut buffer = Vec::new();
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                store
                    .put(&path, PutPayload::from(buffer))
                    .await
                    .map_err(|e| fail(&e))?;
            }
            FileFormat::Csv => {
                let mut buffer = Vec::new();
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buffer);
                for batch in batches {
                    writer.write(batch)?;
                }
                drop(writer);
                store
                    .put(&path, PutPayload::from(buffer))
                    .await
                    .map_err(|e| fail(&e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let file_name = format!("part-{task:05}-{batch_id:020}-000.{}", self.extension());
        if self.partition_by.is_empty() {
            self.write_file(&file_name, &batches).await?;
            return Ok(rows);
        }
        let batch = concat_batches(&first.schema(), &batches)?;
        for (directory, part) in split_by_partition(&batch, &self.partition_by)? {
            self.write_file(&format!("{directory}/{file_name}"), &[part])
                .await?;
        }
        Ok(rows)
    }
}

/// Splits `batch` by the values of `columns`: `("a=1/b=x", rows without a and b)` per distinct
/// combination, in sorted order.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when a column is not in the result.
pub fn split_by_partition(
    batch: &RecordBatch,
    columns: &[String],
) -> Result<Vec<(String, RecordBatch)>> {
    let schema = batch.schema();
    let mut key_columns: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for name in columns {
        let column = batch.column_by_name(name).ok_or_else(|| {
            EngineError::InvalidQuery(format!(
                "sink.file.partitionBy: column `{name}` is not in the query result ({})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        key_columns.push(column.clone());
    }
    let sort: Vec<SortColumn> = key_columns
        .iter()
        .map(|values| SortColumn {
            values: values.clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(batch, &lexsort_to_indices(&sort, None)?)?;
    let sorted_keys: Vec<ArrayRef> = columns
        .iter()
        .filter_map(|name| sorted.column_by_name(name).cloned())
        .collect();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !columns.contains(schema.field(*i).name()))
        .collect();
    let data = sorted.project(&keep)?;
    let data = RecordBatch::try_new(
        Arc::new(Schema::new(data.schema().fields().clone())),
        data.columns().to_vec(),
    )?;
    let ranges = arrow::compute::partition(&sorted_keys)?;
    let options = FormatOptions::default();
    let formatters = sorted_keys
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for range in ranges.ranges() {
        let directory = columns
            .iter()
            .zip(formatters.iter().zip(&sorted_keys))
            .map(|(name, (formatter, key))| {
                let value = if key.is_null(range.start) {
                    NULL_PARTITION.to_string()
                } else {
                    escape_partition_value(&formatter.value(range.start).to_string())
                };
                format!("{name}={value}")
            })
            .collect::<Vec<_>>()
            .join("/");
        out.push((directory, data.slice(range.start, range.end - range.start)));
    }
    Ok(out)
}

/// Percent-escapes characters that cannot appear in a path segment, as Spark's
/// `ExternalCatalogUtils.escapePathName` does (`/`, `=`, `%`, `:`, control characters, ...).
pub fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let needs_escape = c.is_control()
            || matches!(
                c,
                '"' | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\u{7f}'
                    | '{'
                    | '['
                    | ']'
                    | '^'
            );
        if needs_escape {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}
