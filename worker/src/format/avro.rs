//! Avro ↔ Arrow: the column types an Avro schema gives, Avro values into Arrow arrays (source) and
//! Arrow columns into Avro values (sink).
//!
//! | Avro | Arrow |
//! | --- | --- |
//! | `boolean`, `int`, `long`, `float`, `double` | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `enum` (the symbol), `uuid` | `Utf8` |
//! | `bytes` / `fixed(n)` | `Binary` / `FixedSizeBinary(n)` |
//! | `decimal(p, s)` (p ≤ 38) | `Decimal128(p, s)` |
//! | `date`, `time-millis`, `time-micros` | `Date32`, `Time32(ms)`, `Time64(µs)` |
//! | `timestamp-millis`, `timestamp-micros` | `Timestamp(µs, UTC)` (Sluice's timestamp type) |
//! | `local-timestamp-millis`/`-micros` | `Timestamp(µs)` without a time zone |
//! | `timestamp-nanos`, `local-timestamp-nanos` | `Timestamp(ns, UTC)`, `Timestamp(ns)` |
//! | `record` | `Struct` (the top-level record's fields are the columns) |
//! | `array` / `map` | `List` / `Map<Utf8, …>` |
//! | `["null", T]` (either order) | `T`, nullable |
//!
//! Every other type is refused with the field's path: unions of two or more non-null types,
//! `duration`, `big-decimal`, decimals wider than 38 digits, recursive records. Fields that are not
//! a `["null", T]` union are not nullable in Avro, but their Arrow columns are declared nullable
//! like every Sluice source column (a query's later outer join may null them anyway).

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UnionSchema};
use apache_avro::types::Value;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    FixedSizeBinaryArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, MapArray,
    RecordBatch, StringArray, StructArray, Time32MillisecondArray, Time64MicrosecondArray,
    TimestampMicrosecondArray, TimestampNanosecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Fields, Float32Type, Float64Type, Int32Type,
    Int64Type, Schema as ArrowSchema, SchemaRef, Time32MillisecondType, Time64MicrosecondType,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
};

use crate::error::{EngineError, Result};
use crate::schema::timestamp_type;

/// Named types of a schema by full name (for `Schema::Ref`).
pub type Names = HashMap<Name, Schema>;

/// Parses Avro schema text (JSON).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming `field` when it is not a valid Avro schema.
pub fn parse(field: &str, text: &str) -> Result<Schema> {
    Schema::parse_str(text)
        .map_err(|e| EngineError::InvalidQuery(format!("{field}: not a valid Avro schema: {e}")))
}

/// The named types defined in `schema`.
pub fn names(schema: &Schema) -> Names {
    let mut out = Names::new();
    collect_names(schema, &mut out);
    out
}

fn collect_names(schema: &Schema, out: &mut Names) {
    match schema {
        Schema::Record(r) => {
            out.insert(r.name.clone(), schema.clone());
            for f in &r.fields {
                collect_names(&f.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            out.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, out),
        Schema::Map(m) => collect_names(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, out)),
        _ => {}
    }
}

/// `schema` with every `decimal` replaced by its underlying `bytes` / `fixed`. The datums are the
/// same; apache-avro 0.22 refuses to read a `bytes` decimal whose value has fewer bytes than its
/// precision could need ("Precision 9 too small to hold decimal values with 2 bytes", every small
/// value), so Sluice reads and writes the two's complement bytes itself, typed by the original
/// schema's [`arrow_schema`].
pub fn plain_decimals(schema: &Schema) -> Schema {
    match schema {
        Schema::Decimal(d) => match &d.inner {
            apache_avro::schema::InnerDecimalSchema::Bytes => Schema::Bytes,
            apache_avro::schema::InnerDecimalSchema::Fixed(f) => Schema::Fixed(f.clone()),
        },
        Schema::Record(r) => {
            let mut r = r.clone();
            for f in &mut r.fields {
                f.schema = plain_decimals(&f.schema);
            }
            Schema::Record(r)
        }
        Schema::Array(a) => {
            let mut a = a.clone();
            a.items = Box::new(plain_decimals(&a.items));
            Schema::Array(a)
        }
        Schema::Map(m) => {
            let mut m = m.clone();
            m.types = Box::new(plain_decimals(&m.types));
            Schema::Map(m)
        }
        Schema::Union(u) => {
            match UnionSchema::new(u.variants().iter().map(plain_decimals).collect()) {
                Ok(u) => Schema::Union(u),
                // The same variants as a valid union: cannot fail; keep the original.
                Err(_) => schema.clone(),
            }
        }
        other => other.clone(),
    }
}

/// Minimal big-endian two's complement bytes of `v` (Avro's `bytes` decimal).
fn minimal_twos_complement(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (Some(&b), Some(&next)) = (bytes.get(start), bytes.get(start + 1)) else {
            break;
        };
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes.get(start..).unwrap_or_default().to_vec()
}

fn resolve<'a>(schema: &'a Schema, names: &'a Names, path: &str) -> Result<&'a Schema> {
    match schema {
        Schema::Ref { name } => names.get(name).ok_or_else(|| {
            EngineError::InvalidQuery(format!("{path}: unknown Avro type `{name}`"))
        }),
        other => Ok(other),
    }
}

/// The top-level record of `schema`.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when the schema is not a record.
pub fn top_record<'a>(field: &str, schema: &'a Schema) -> Result<&'a RecordSchema> {
    match schema {
        Schema::Record(r) => Ok(r),
        other => Err(EngineError::InvalidQuery(format!(
            "{field}: the Avro schema must be a record (its fields are the columns), not {:?}",
            other_kind(other)
        ))),
    }
}

fn other_kind(schema: &Schema) -> String {
    format!("{schema:?}").chars().take(60).collect()
}

/// The Arrow schema of `schema`'s top-level record (see the module's table).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the field of a type Sluice does not map.
pub fn arrow_schema(field: &str, schema: &Schema) -> Result<SchemaRef> {
    let names = names(schema);
    let record = top_record(field, schema)?;
    let fields = record
        .fields
        .iter()
        .map(|f| {
            let path = format!("{field}: field `{}`", f.name);
            let (data_type, _) = arrow_type(&f.schema, &names, &path, 0)?;
            Ok(Field::new(&f.name, data_type, true))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ArrowSchema::new(fields)))
}

/// Deepest nesting followed (a recursive record would never end).
const MAX_DEPTH: usize = 32;

/// The Arrow type of `schema` and whether it is nullable (a `["null", T]` union).
fn arrow_type(
    schema: &Schema,
    names: &Names,
    path: &str,
    depth: usize,
) -> Result<(DataType, bool)> {
    if depth > MAX_DEPTH {
        return Err(unsupported(
            path,
            "nested deeper than 32 levels (a recursive record?)",
        ));
    }
    let schema = resolve(schema, names, path)?;
    let data_type = match schema {
        Schema::Union(union) => {
            let inner = nullable_inner(union).ok_or_else(|| {
                unsupported(
                    path,
                    "a union other than [\"null\", T]; only optional values are supported",
                )
            })?;
            let (data_type, _) = arrow_type(inner, names, path, depth + 1)?;
            return Ok((data_type, true));
        }
        Schema::Null => return Err(unsupported(path, "the null type outside a union")),
        Schema::Boolean => DataType::Boolean,
        Schema::Int => DataType::Int32,
        Schema::Long => DataType::Int64,
        Schema::Float => DataType::Float32,
        Schema::Double => DataType::Float64,
        Schema::Bytes => DataType::Binary,
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => DataType::Utf8,
        Schema::Fixed(f) => DataType::FixedSizeBinary(
            i32::try_from(f.size).map_err(|_| unsupported(path, "a fixed size over 2 GiB"))?,
        ),
        Schema::Decimal(d) => {
            let precision = u8::try_from(d.precision)
                .ok()
                .filter(|p| *p >= 1 && *p <= 38)
                .ok_or_else(|| unsupported(path, "a decimal precision over 38"))?;
            let scale =
                i8::try_from(d.scale).map_err(|_| unsupported(path, "a decimal scale over 127"))?;
            DataType::Decimal128(precision, scale)
        }
        Schema::Date => DataType::Date32,
        Schema::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
        Schema::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
        Schema::TimestampMillis | Schema::TimestampMicros => timestamp_type(),
        Schema::TimestampNanos => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Schema::LocalTimestampMillis | Schema::LocalTimestampMicros => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        Schema::LocalTimestampNanos => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Schema::Record(record) => {
            let fields = record
                .fields
                .iter()
                .map(|f| {
                    let (t, _) =
                        arrow_type(&f.schema, names, &format!("{path}.{}", f.name), depth + 1)?;
                    Ok(Field::new(&f.name, t, true))
                })
                .collect::<Result<Vec<_>>>()?;
            DataType::Struct(Fields::from(fields))
        }
        Schema::Array(array) => {
            let (t, nullable) = arrow_type(&array.items, names, &format!("{path}[]"), depth + 1)?;
            DataType::List(Arc::new(Field::new("item", t, nullable)))
        }
        Schema::Map(map) => {
            let (t, nullable) = arrow_type(&map.types, names, &format!("{path}{{}}"), depth + 1)?;
            DataType::Map(Arc::new(map_entries(t, nullable)), false)
        }
        Schema::BigDecimal => return Err(unsupported(path, "big-decimal")),
        Schema::Duration(_) => return Err(unsupported(path, "duration")),
        Schema::Ref { .. } => return Err(unsupported(path, "a reference to a reference")),
    };
    Ok((data_type, false))
}

fn map_entries(value: DataType, nullable: bool) -> Field {
    Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", value, nullable),
        ])),
        false,
    )
}

/// `T` of a `["null", T]` / `[T, "null"]` union.
fn nullable_inner(union: &UnionSchema) -> Option<&Schema> {
    match union.variants() {
        [Schema::Null, inner] | [inner, Schema::Null] if !matches!(inner, Schema::Null) => {
            Some(inner)
        }
        _ => None,
    }
}

fn unsupported(path: &str, what: &str) -> EngineError {
    EngineError::InvalidQuery(format!("{path}: Avro {what} is not supported"))
}

// ---------------------------------------------------------------- decoding ----

/// A batch of `schema` (from [`arrow_schema`]) from decoded top-level record values (already
/// resolved to the reader schema).
///
/// # Errors
/// [`EngineError::Source`]-like internal error when a value does not have the shape its type
/// says (cannot happen for values the Avro reader produced with the same schema).
pub fn to_batch(schema: &SchemaRef, records: &[Value]) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let values: Vec<Option<&Value>> = records
            .iter()
            .map(|r| record_field(r, field.name()))
            .collect();
        columns.push(build_array(field.data_type(), &values, field.name())?);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(records.len())),
    )?)
}

/// The value itself, or `None` for null (unions unwrapped).
fn present(value: &Value) -> Option<&Value> {
    match value {
        Value::Null => None,
        Value::Union(_, inner) => present(inner),
        other => Some(other),
    }
}

fn record_field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    match present(record)? {
        Value::Record(fields) => fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| present(v)),
        _ => None,
    }
}

fn mismatch(path: &str, data_type: &DataType, value: &Value) -> EngineError {
    EngineError::Internal(format!(
        "avro decode: `{path}`: value {} does not fit Arrow type {data_type}",
        other_value(value)
    ))
}

fn other_value(value: &Value) -> String {
    format!("{value:?}").chars().take(60).collect()
}

fn primitive<'a, T, F>(
    values: &[Option<&'a Value>],
    path: &str,
    data_type: &DataType,
    f: F,
) -> Result<Vec<Option<T>>>
where
    F: Fn(&'a Value) -> Option<T>,
{
    values
        .iter()
        .map(|v| match v {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| mismatch(path, data_type, v)),
        })
        .collect()
}

fn nulls(values: &[Option<&Value>]) -> Option<NullBuffer> {
    let valid: Vec<bool> = values.iter().map(Option::is_some).collect();
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

/// Big-endian two's complement bytes (Avro's decimal) as an i128.
fn decimal_i128(bytes: &[u8]) -> Option<i128> {
    if bytes.len() > 16 {
        return None;
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut out = [if negative { 0xff } else { 0 }; 16];
    out.get_mut(16 - bytes.len()..)?.copy_from_slice(bytes);
    Some(i128::from_be_bytes(out))
}

fn build_array(data_type: &DataType, values: &[Option<&Value>], path: &str) -> Result<ArrayRef> {
    let t = data_type;
    Ok(match data_type {
        DataType::Boolean => Arc::new(BooleanArray::from(primitive(
            values,
            path,
            t,
            |v| match v {
                Value::Boolean(b) => Some(*b),
                _ => None,
            },
        )?)),
        DataType::Int32 => Arc::new(Int32Array::from(primitive(values, path, t, |v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })?)),
        DataType::Int64 => Arc::new(Int64Array::from(primitive(values, path, t, |v| match v {
            Value::Long(i) => Some(*i),
            _ => None,
        })?)),
        DataType::Float32 => Arc::new(Float32Array::from(primitive(
            values,
            path,
            t,
            |v| match v {
                Value::Float(x) => Some(*x),
                _ => None,
            },
        )?)),
        DataType::Float64 => Arc::new(Float64Array::from(primitive(
            values,
            path,
            t,
            |v| match v {
                Value::Double(x) => Some(*x),
                _ => None,
            },
        )?)),
        DataType::Utf8 => Arc::new(StringArray::from(primitive(
            values,
            path,
            t,
            |v| match v {
                Value::String(s) | Value::Enum(_, s) => Some(s.clone()),
                Value::Uuid(u) => Some(u.to_string()),
                _ => None,
            },
        )?)),
        DataType::Binary => {
            let bytes = primitive(values, path, t, |v| match v {
                Value::Bytes(b) | Value::Fixed(_, b) => Some(b.as_slice()),
                _ => None,
            })?;
            Arc::new(BinaryArray::from(bytes))
        }
        DataType::FixedSizeBinary(size) => {
            let bytes = primitive(values, path, t, |v| match v {
                Value::Fixed(_, b) => Some(b.as_slice()),
                _ => None,
            })?;
            Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                bytes.into_iter(),
                *size,
            )?)
        }
        DataType::Decimal128(p, s) => {
            let decimals = primitive(values, path, t, |v| match v {
                Value::Decimal(d) => Vec::<u8>::try_from(d).ok().and_then(|b| decimal_i128(&b)),
                // Read through `plain_decimals`.
                Value::Bytes(b) | Value::Fixed(_, b) => decimal_i128(b),
                _ => None,
            })?;
            Arc::new(Decimal128Array::from(decimals).with_precision_and_scale(*p, *s)?)
        }
        DataType::Date32 => Arc::new(Date32Array::from(primitive(
            values,
            path,
            t,
            |v| match v {
                Value::Date(d) => Some(*d),
                _ => None,
            },
        )?)),
        DataType::Time32(TimeUnit::Millisecond) => Arc::new(Time32MillisecondArray::from(
            primitive(values, path, t, |v| match v {
                Value::TimeMillis(x) => Some(*x),
                _ => None,
            })?,
        )),
        DataType::Time64(TimeUnit::Microsecond) => Arc::new(Time64MicrosecondArray::from(
            primitive(values, path, t, |v| match v {
                Value::TimeMicros(x) => Some(*x),
                _ => None,
            })?,
        )),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let micros = primitive(values, path, t, |v| match v {
                Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
                    ms.checked_mul(1000)
                }
                Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => Some(*us),
                _ => None,
            })?;
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone_opt(tz.clone()))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
            let nanos = primitive(values, path, t, |v| match v {
                Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => Some(*ns),
                _ => None,
            })?;
            Arc::new(TimestampNanosecondArray::from(nanos).with_timezone_opt(tz.clone()))
        }
        DataType::Struct(fields) => {
            let mut children = Vec::with_capacity(fields.len());
            for field in fields {
                let child: Vec<Option<&Value>> = values
                    .iter()
                    .map(|v| v.and_then(|v| record_field(v, field.name())))
                    .collect();
                children.push(build_array(
                    field.data_type(),
                    &child,
                    &format!("{path}.{}", field.name()),
                )?);
            }
            if fields.is_empty() {
                Arc::new(StructArray::new_empty_fields(values.len(), nulls(values)))
            } else {
                Arc::new(StructArray::try_new(
                    fields.clone(),
                    children,
                    nulls(values),
                )?)
            }
        }
        DataType::List(item) => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::Array(list)) => {
                        lengths.push(list.len());
                        items.extend(list.iter().map(present));
                    }
                    Some(other) => return Err(mismatch(path, t, other)),
                }
            }
            let child = build_array(item.data_type(), &items, &format!("{path}[]"))?;
            Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::from_lengths(lengths),
                child,
                nulls(values),
            )?)
        }
        DataType::Map(entries, sorted) => {
            let DataType::Struct(entry_fields) = entries.data_type() else {
                return Err(EngineError::Internal(format!(
                    "avro decode: `{path}`: map entries are not a struct"
                )));
            };
            let value_type = entry_fields
                .get(1)
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Null);
            let mut lengths = Vec::with_capacity(values.len());
            let mut keys: Vec<&str> = Vec::new();
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::Map(map)) => {
                        // Sorted by key: a HashMap's order would differ from run to run.
                        let mut sorted: Vec<(&String, &Value)> = map.iter().collect();
                        sorted.sort_by(|a, b| a.0.cmp(b.0));
                        lengths.push(sorted.len());
                        for (k, item) in sorted {
                            keys.push(k);
                            items.push(present(item));
                        }
                    }
                    Some(other) => return Err(mismatch(path, t, other)),
                }
            }
            let key_array: ArrayRef = Arc::new(StringArray::from(keys));
            let value_array = build_array(&value_type, &items, &format!("{path}{{}}"))?;
            let entry_array =
                StructArray::try_new(entry_fields.clone(), vec![key_array, value_array], None)?;
            Arc::new(MapArray::try_new(
                entries.clone(),
                OffsetBuffer::from_lengths(lengths),
                entry_array,
                nulls(values),
                *sorted,
            )?)
        }
        other => {
            return Err(EngineError::Internal(format!(
                "avro decode: `{path}`: no decoder for Arrow type {other}"
            )));
        }
    })
}

// ---------------------------------------------------------------- encoding ----

/// The Avro values (top-level records of `schema`) of `batch`'s rows. A record field takes the
/// column of the same name; a missing column is null (the field must then be nullable).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the field when a column cannot become its Avro type
/// (a failing cast, a null in a non-nullable field, an unknown enum symbol, a missing column for
/// a non-nullable field).
pub fn from_batch(field: &str, schema: &Schema, batch: &RecordBatch) -> Result<Vec<Value>> {
    let names = names(schema);
    let record = top_record(field, schema)?;
    let rows = batch.num_rows();
    let mut columns: Vec<(String, Vec<Value>)> = Vec::with_capacity(record.fields.len());
    for f in &record.fields {
        let path = format!("column `{}`", f.name);
        let values = match batch.column_by_name(&f.name) {
            Some(array) => to_values(array.as_ref(), &f.schema, &names, &path, 0)?,
            None => {
                let nulls = arrow::array::new_null_array(&DataType::Null, rows);
                to_values(nulls.as_ref(), &f.schema, &names, &path, 0).map_err(|_| {
                    EngineError::InvalidQuery(format!(
                        "kafka sink (avro): the query's result has no column `{}` for the \
                         Avro field `{}`, which is not nullable",
                        f.name, f.name
                    ))
                })?
            }
        };
        columns.push((f.name.clone(), values));
    }
    let mut out = Vec::with_capacity(rows);
    let mut iters: Vec<(String, std::vec::IntoIter<Value>)> = columns
        .into_iter()
        .map(|(n, v)| (n, v.into_iter()))
        .collect();
    for _ in 0..rows {
        let fields = iters
            .iter_mut()
            .map(|(n, it)| (n.clone(), it.next().unwrap_or(Value::Null)))
            .collect();
        out.push(Value::Record(fields));
    }
    Ok(out)
}

fn encode_error(path: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidQuery(format!("kafka sink (avro): {path}: {message}"))
}

fn cast_to(array: &dyn Array, data_type: &DataType, path: &str) -> Result<ArrayRef> {
    cast(&arrow::array::make_array(array.to_data()), data_type)
        .map_err(|e| encode_error(path, format!("cannot become {data_type}: {e}")))
}

/// Column values as Avro values of `schema`, with `Value::Null` for a null (checked by the caller's
/// union, or refused below for a non-nullable type).
fn to_values(
    array: &dyn Array,
    schema: &Schema,
    names: &Names,
    path: &str,
    depth: usize,
) -> Result<Vec<Value>> {
    to_values_with(array, schema, names, path, depth, false)
}

/// [`to_values`]; `nullable`: inside a `["null", T]` union, where a null is `Value::Null`.
fn to_values_with(
    array: &dyn Array,
    schema: &Schema,
    names: &Names,
    path: &str,
    depth: usize,
    nullable: bool,
) -> Result<Vec<Value>> {
    if depth > MAX_DEPTH {
        return Err(encode_error(path, "nested deeper than 32 levels"));
    }
    let schema = resolve(schema, names, path)?;
    if let Schema::Union(union) = schema {
        let inner = nullable_inner(union)
            .ok_or_else(|| encode_error(path, "only [\"null\", T] unions can be written"))?;
        let null_index = union
            .variants()
            .iter()
            .position(|v| matches!(v, Schema::Null))
            .unwrap_or(0) as u32;
        let inner_index = 1 - null_index.min(1);
        let values = if array.data_type() == &DataType::Null {
            vec![Value::Null; array.len()]
        } else {
            to_values_with(array, inner, names, path, depth + 1, true)?
        };
        return Ok(values
            .into_iter()
            .map(|v| match v {
                Value::Null => Value::Union(null_index, Box::new(Value::Null)),
                v => Value::Union(inner_index, Box::new(v)),
            })
            .collect());
    }
    if !nullable && let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(encode_error(
            path,
            format!("null at row {row}, but its Avro type is not a [\"null\", T] union"),
        ));
    }
    let values: Vec<Value> = match schema {
        Schema::Boolean => cast_to(array, &DataType::Boolean, path)?
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Boolean))
            .collect(),
        Schema::Int => typed::<Int32Type>(array, path, Value::Int)?,
        Schema::Long => typed::<Int64Type>(array, path, Value::Long)?,
        Schema::Float => typed::<Float32Type>(array, path, Value::Float)?,
        Schema::Double => typed::<Float64Type>(array, path, Value::Double)?,
        Schema::Date => typed::<Date32Type>(array, path, Value::Date)?,
        Schema::TimeMillis => typed::<Time32MillisecondType>(array, path, Value::TimeMillis)?,
        Schema::TimeMicros => typed::<Time64MicrosecondType>(array, path, Value::TimeMicros)?,
        Schema::TimestampMillis => {
            timestamps::<TimestampMillisecondType>(array, path, true, Value::TimestampMillis)?
        }
        Schema::TimestampMicros => {
            timestamps::<TimestampMicrosecondType>(array, path, true, Value::TimestampMicros)?
        }
        Schema::TimestampNanos => {
            timestamps::<TimestampNanosecondType>(array, path, true, Value::TimestampNanos)?
        }
        Schema::LocalTimestampMillis => {
            timestamps::<TimestampMillisecondType>(array, path, false, Value::LocalTimestampMillis)?
        }
        Schema::LocalTimestampMicros => {
            timestamps::<TimestampMicrosecondType>(array, path, false, Value::LocalTimestampMicros)?
        }
        Schema::LocalTimestampNanos => {
            timestamps::<TimestampNanosecondType>(array, path, false, Value::LocalTimestampNanos)?
        }
        Schema::String => strings(array, path)?
            .into_iter()
            .map(|s| s.map_or(Value::Null, Value::String))
            .collect(),
        Schema::Uuid(_) => strings(array, path)?
            .into_iter()
            .map(|s| match s {
                None => Ok(Value::Null),
                Some(s) => apache_avro::Uuid::parse_str(&s)
                    .map(Value::Uuid)
                    .map_err(|e| encode_error(path, format!("`{s}` is not a UUID: {e}"))),
            })
            .collect::<Result<_>>()?,
        Schema::Enum(e) => strings(array, path)?
            .into_iter()
            .map(|s| match s {
                None => Ok(Value::Null),
                Some(s) => match e.symbols.iter().position(|x| *x == s) {
                    Some(i) => Ok(Value::Enum(i as u32, s)),
                    None => Err(encode_error(
                        path,
                        format!("`{s}` is not a symbol of enum {}", e.name),
                    )),
                },
            })
            .collect::<Result<_>>()?,
        Schema::Bytes => binaries(array, path)?
            .into_iter()
            .map(|b| b.map_or(Value::Null, Value::Bytes))
            .collect(),
        Schema::Fixed(f) => binaries(array, path)?
            .into_iter()
            .map(|b| match b {
                None => Ok(Value::Null),
                Some(b) if b.len() == f.size => Ok(Value::Fixed(f.size, b)),
                Some(b) => Err(encode_error(
                    path,
                    format!("{} bytes for fixed({})", b.len(), f.size),
                )),
            })
            .collect::<Result<_>>()?,
        Schema::Decimal(d) => {
            let (precision, scale) = match arrow_type(schema, names, path, depth)?.0 {
                DataType::Decimal128(p, s) => (p, s),
                _ => return Err(encode_error(path, "decimal")),
            };
            let fixed_size = match &d.inner {
                apache_avro::schema::InnerDecimalSchema::Fixed(f) => Some(f.size),
                _ => None,
            };
            let cast = cast_to(array, &DataType::Decimal128(precision, scale), path)?;
            cast.as_primitive::<Decimal128Type>()
                .iter()
                .map(|v| match v {
                    None => Ok(Value::Null),
                    Some(v) => {
                        let bytes = v.to_be_bytes();
                        // Two's complement, minimal for `bytes`, sign-extended or cut to a
                        // `fixed`'s size; written with `plain_decimals` of the schema.
                        Ok(match fixed_size {
                            Some(n) if n > 16 => {
                                let mut out = vec![if v < 0 { 0xff } else { 0 }; n - 16];
                                out.extend_from_slice(&bytes);
                                Value::Fixed(n, out)
                            }
                            Some(n) => {
                                Value::Fixed(n, bytes.get(16 - n..).unwrap_or_default().to_vec())
                            }
                            None => Value::Bytes(minimal_twos_complement(v)),
                        })
                    }
                })
                .collect::<Result<_>>()?
        }
        Schema::Record(record) => {
            let structs = array.as_struct_opt().ok_or_else(|| {
                encode_error(path, format!("a {} is not a record", array.data_type()))
            })?;
            let mut columns = Vec::with_capacity(record.fields.len());
            for f in &record.fields {
                let child_path = format!("{path}.{}", f.name);
                let values = match structs.column_by_name(&f.name) {
                    Some(child) => {
                        to_values(child.as_ref(), &f.schema, names, &child_path, depth + 1)?
                    }
                    None => {
                        let nulls = arrow::array::new_null_array(&DataType::Null, array.len());
                        to_values(nulls.as_ref(), &f.schema, names, &child_path, depth + 1)?
                    }
                };
                columns.push((f.name.clone(), values));
            }
            (0..array.len())
                .map(|row| {
                    Value::Record(
                        columns
                            .iter()
                            .map(|(n, v)| (n.clone(), v.get(row).cloned().unwrap_or(Value::Null)))
                            .collect(),
                    )
                })
                .collect()
        }
        Schema::Array(items) => {
            let list = array.as_list_opt::<i32>().ok_or_else(|| {
                encode_error(path, format!("a {} is not a list", array.data_type()))
            })?;
            let values = to_values(
                list.values().as_ref(),
                &items.items,
                names,
                &format!("{path}[]"),
                depth + 1,
            )?;
            let offsets = list.value_offsets();
            (0..list.len())
                .map(|row| {
                    let from = offsets.get(row).copied().unwrap_or(0) as usize;
                    let to = offsets.get(row + 1).copied().unwrap_or(0) as usize;
                    Value::Array(values.get(from..to).unwrap_or_default().to_vec())
                })
                .collect()
        }
        Schema::Map(map) => {
            let maps = array.as_map_opt().ok_or_else(|| {
                encode_error(path, format!("a {} is not a map", array.data_type()))
            })?;
            let keys = strings(maps.keys().as_ref(), &format!("{path} keys"))?;
            let values = to_values(
                maps.values().as_ref(),
                &map.types,
                names,
                &format!("{path}{{}}"),
                depth + 1,
            )?;
            let offsets = maps.value_offsets();
            (0..maps.len())
                .map(|row| {
                    let from = offsets.get(row).copied().unwrap_or(0) as usize;
                    let to = offsets.get(row + 1).copied().unwrap_or(0) as usize;
                    Value::Map(
                        (from..to)
                            .filter_map(|i| {
                                Some((keys.get(i).cloned().flatten()?, values.get(i).cloned()?))
                            })
                            .collect(),
                    )
                })
                .collect()
        }
        Schema::Null => vec![Value::Null; array.len()],
        Schema::BigDecimal | Schema::Duration(_) | Schema::Union(_) | Schema::Ref { .. } => {
            return Err(encode_error(path, "this Avro type cannot be written"));
        }
    };
    Ok(values)
}

fn typed<T: arrow::datatypes::ArrowPrimitiveType>(
    array: &dyn Array,
    path: &str,
    wrap: impl Fn(T::Native) -> Value,
) -> Result<Vec<Value>> {
    let cast = cast_to(array, &T::DATA_TYPE, path)?;
    Ok(cast
        .as_primitive::<T>()
        .iter()
        .map(|v| v.map_or(Value::Null, &wrap))
        .collect())
}

fn timestamps<T: arrow::datatypes::ArrowTimestampType>(
    array: &dyn Array,
    path: &str,
    utc: bool,
    wrap: impl Fn(i64) -> Value,
) -> Result<Vec<Value>> {
    let target = DataType::Timestamp(T::UNIT, utc.then(|| "UTC".into()));
    let cast = cast_to(array, &target, path)?;
    Ok(cast
        .as_primitive::<T>()
        .iter()
        .map(|v| v.map_or(Value::Null, &wrap))
        .collect())
}

fn strings(array: &dyn Array, path: &str) -> Result<Vec<Option<String>>> {
    let cast = cast_to(array, &DataType::Utf8, path)?;
    Ok(cast
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn binaries(array: &dyn Array, path: &str) -> Result<Vec<Option<Vec<u8>>>> {
    let cast = cast_to(array, &DataType::Binary, path)?;
    Ok(cast
        .as_binary::<i32>()
        .iter()
        .map(|v| v.map(<[u8]>::to_vec))
        .collect())
}
