//! Source schemas from the manifest (`[{name, type}]`) as Arrow schemas.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_crds::ColumnSpec;
use sluice_crds::validate::ColumnType;

use crate::error::{EngineError, Result};

/// The Arrow type used for a timestamp column: microseconds, UTC, as Spark's `TimestampType`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Maps a column type to Arrow: string → Utf8, double → Float64, long → Int64, int → Int32,
/// timestamp → Timestamp(µs, UTC), date → Date32, binary → Binary.
pub fn arrow_type(column: ColumnType) -> DataType {
    match column {
        ColumnType::String => DataType::Utf8,
        ColumnType::Double => DataType::Float64,
        ColumnType::Float => DataType::Float32,
        ColumnType::Long => DataType::Int64,
        ColumnType::Int => DataType::Int32,
        ColumnType::Short => DataType::Int16,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Timestamp => timestamp_type(),
        ColumnType::Date => DataType::Date32,
        ColumnType::Binary => DataType::Binary,
    }
}

/// Builds the Arrow schema of a manifest schema, in column order.
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming an unknown type (validation normally catches it first).
pub fn arrow_schema(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    let fields = columns
        .iter()
        .map(|c| {
            let column = ColumnType::parse(&c.data_type).ok_or_else(|| {
                EngineError::InvalidQuery(format!(
                    "column `{}`: unknown type `{}`",
                    c.name, c.data_type
                ))
            })?;
            Ok(Field::new(&c.name, arrow_type(column), c.nullable))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// `columns` cast to `schema`'s types where they differ (e.g. nullability of nested fields after
/// an accumulator or a null fill), in order.
///
/// # Errors
/// [`EngineError::Arrow`] when a cast is not possible.
pub fn cast_columns(
    schema: &arrow::datatypes::Schema,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<Vec<arrow::array::ArrayRef>> {
    columns
        .into_iter()
        .zip(schema.fields())
        .map(|(array, field)| {
            if array.data_type() == field.data_type() {
                Ok(array)
            } else {
                Ok(arrow::compute::cast(&array, field.data_type())?)
            }
        })
        .collect()
}
