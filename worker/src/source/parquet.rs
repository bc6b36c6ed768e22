//! Parquet decoding against a declared schema: read a row group at a time, never a whole file, and
//! cast strictly.
//!
//! **Row groups.** [`ObjectChunkReader`] serves the Parquet reader byte ranges fetched from the
//! object store (local disk or S3) on demand: the footer first, then each row group's column chunks
//! when the reader reaches it. A file much larger than memory is decoded with one row group's
//! chunks buffered at a time (the decoded rows still stay until the batch's SQL runs).
//!
//! **Strict casts.** A column is taken by name and must hold the declared type or one that widens
//! to it without loss (`int` → `long`, `float` → `double`, any timestamp unit → µs, `LargeUtf8`,
//! `Utf8View` and dictionary-encoded strings → `string`, large/view binaries → `binary`,
//! `Date64` → `date`). Anything else (a string column declared `long`, a double declared `int`)
//! makes the whole file one bad record whose error names the column and both types, where
//! Arrow's default cast would have turned every value into NULL. Missing columns are NULL (a
//! column added later in a schema's life), as Spark does.

use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, new_null_array};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::{Buf, Bytes};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

use crate::bad_record::BadRecord;
use crate::error::{EngineError, Result};
use crate::source::reference::BATCH_ROWS;

/// Decodes one Parquet file, a row group at a time, taking the schema's columns by name (see the
/// module docs for the casts allowed). An unreadable file or a column of the wrong type is one bad
/// record with line 0.
///
/// # Errors
/// None in practice: read failures are returned as a [`BadRecord`] (a store failure behind an
/// [`ObjectChunkReader`] is reported by [`ObjectChunkReader::take_failure`]).
pub fn decode_parquet<R: ChunkReader + 'static>(
    schema: &SchemaRef,
    origin: &str,
    data: R,
) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
    match read_parquet(schema, data) {
        Ok(batches) => Ok((batches, Vec::new())),
        Err(e) => Ok((
            Vec::new(),
            vec![BadRecord {
                origin: origin.to_string(),
                line: 0,
                record: String::new(),
                error: e,
            }],
        )),
    }
}

/// The file's rows in `schema`, or why they cannot be (the bad record's error).
fn read_parquet<R: ChunkReader + 'static>(
    schema: &SchemaRef,
    data: R,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| text(&e))?;
    let file_schema = builder.schema().clone();
    for field in schema.fields() {
        if let Ok(found) = file_schema.field_with_name(field.name())
            && !column_fits(found.data_type(), field.data_type())
        {
            return Err(format!(
                "column `{}` is {} in the Parquet file, which does not convert to the declared {} without loss",
                field.name(),
                found.data_type(),
                field.data_type()
            ));
        }
    }
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| text(&e))?;
    // Only widening casts are allowed above; `safe: false` turns any surprise into an error
    // instead of a NULL.
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| text(&e))?;
        let columns = schema
            .fields()
            .iter()
            .map(|field| match batch.column_by_name(field.name()) {
                Some(column) => {
                    arrow::compute::cast_with_options(column, field.data_type(), &strict)
                        .map_err(|e| format!("column `{}`: {e}", field.name()))
                }
                None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| text(&e))?);
    }
    Ok(out)
}

/// Whether a Parquet column of type `found` converts to the declared type without loss.
pub fn column_fits(found: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    if found == declared {
        return true;
    }
    match (found, declared) {
        (Dictionary(_, values), _) => column_fits(values, declared),
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Int64) => true,
        (Int8 | Int16 | UInt8 | UInt16, Int32) => true,
        (Int8 | UInt8, Int16) => true,
        (Float16 | Float32, Float64) => true,
        (Float16, Float32) => true,
        (LargeUtf8 | Utf8View, Utf8) => true,
        (LargeBinary | BinaryView | FixedSizeBinary(_), Binary) => true,
        (Timestamp(..), Timestamp(..)) => true,
        (Date64, Date32) => true,
        _ => false,
    }
}

/// Byte ranges of one object, fetched on demand for the (synchronous) Parquet reader. Must be
/// used on a blocking thread of a tokio runtime (`spawn_blocking`): each fetch blocks on the store.
pub struct ObjectChunkReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    runtime: tokio::runtime::Handle,
    /// The store's first error: an outage, not bad data (see [`Self::take_failure`]).
    failure: Arc<Mutex<Option<object_store::Error>>>,
}

impl ObjectChunkReader {
    /// A reader of `path` (`size` bytes) in `store`, fetching through `runtime`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        size: u64,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            store,
            path,
            size,
            runtime,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// A handle on the store failure this reader met, if any: a read that failed for it must be
    /// retried, not treated as a bad file.
    pub fn failure(&self) -> Arc<Mutex<Option<object_store::Error>>> {
        Arc::clone(&self.failure)
    }

    /// Takes the recorded store failure out of `failure`, as an [`EngineError::Storage`].
    pub fn take_failure(
        failure: &Mutex<Option<object_store::Error>>,
        path: &str,
    ) -> Option<EngineError> {
        let error = failure.lock().ok()?.take()?;
        Some(EngineError::storage(path.to_string(), error))
    }
}

impl Length for ObjectChunkReader {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for ObjectChunkReader {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let length = usize::try_from(self.size.saturating_sub(start))
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(self.get_bytes(start, length)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        // Object stores refuse empty and out-of-range requests; the reader may ask for either.
        let end = start.saturating_add(length as u64).min(self.size);
        if end <= start {
            return Ok(Bytes::new());
        }
        match self
            .runtime
            .block_on(self.store.get_range(&self.path, start..end))
        {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                let message = e.to_string();
                if let Ok(mut slot) = self.failure.lock()
                    && slot.is_none()
                {
                    *slot = Some(e);
                }
                Err(ParquetError::General(format!(
                    "cannot read bytes {start}..{end}: {message}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, TimeUnit};

    use super::column_fits;

    #[test]
    fn only_lossless_conversions_fit() {
        assert!(column_fits(&DataType::Int32, &DataType::Int64));
        assert!(column_fits(&DataType::Float32, &DataType::Float64));
        assert!(column_fits(
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            &DataType::Utf8
        ));
        assert!(column_fits(
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        ));
        assert!(!column_fits(&DataType::Utf8, &DataType::Int64));
        assert!(!column_fits(&DataType::Int64, &DataType::Int32));
        assert!(!column_fits(&DataType::Float64, &DataType::Int64));
        assert!(!column_fits(&DataType::Int64, &DataType::Utf8));
        assert!(!column_fits(&DataType::Boolean, &DataType::Int32));
    }
}
