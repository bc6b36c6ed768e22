//! `format: protobuf`: `.proto` schemas compiled without `protoc` (protox), Protobuf messages
//! decoded and encoded by descriptor (prost-reflect), the schema registry's Protobuf wire format,
//! and the Protobuf ↔ Arrow mapping.
//!
//! | Protobuf | Arrow |
//! | --- | --- |
//! | `int32`, `sint32`, `sfixed32` | `Int32` |
//! | `int64`, `sint64`, `sfixed64` | `Int64` |
//! | `uint32`, `fixed32` / `uint64`, `fixed64` | `UInt32` / `UInt64` |
//! | `float`, `double`, `bool` | `Float32`, `Float64`, `Boolean` |
//! | `string` / `bytes` | `Utf8` / `Binary` |
//! | `enum` | `Utf8`: the value's name (the number, as text, for a number the enum does not name) |
//! | `google.protobuf.Timestamp` | `Timestamp(µs, UTC)` (Sluice's timestamp type) |
//! | other message | `Struct` (the top-level message's fields are the columns) |
//! | `repeated T` / `map<K, V>` | `List<T>` / `Map<K, V>` |
//!
//! **Nulls.** A field with presence (a message field, proto3 `optional`, proto2 `optional`, a
//! `oneof` member) that is not set is null; a proto3 scalar without presence that is not set is
//! its default (0, "", false), as every Protobuf reader sees it. A `oneof` is its members, each a
//! nullable column (at most one set per row). Groups (proto2) and recursive messages are refused
//! at start naming the field.
//!
//! **Schema.** `.proto` text (inline, a file, or the registry's `schemaType: PROTOBUF` schema,
//! which is `.proto` text), compiled by protox; it may import the well-known
//! `google/protobuf/*.proto` files, not other files (the registry's schema references are not
//! followed). The message is `messageType`, or the file's first message.
//!
//! **Wire format** (Confluent's): magic byte `0`, the writer schema's id (4 bytes big-endian), the
//! message indexes (the path of the writer message in its file: a zigzag varint count, then that
//! many zigzag varint indexes; a single `0` means `[0]`, the first message), then the message.
//! Without a registry a value is the bare message.
//!
//! **Evolution.** Protobuf decodes by field number: a record written with a newer message (fields
//! added) decodes into the reader message, unknown fields ignored, fields it lacks null or their
//! default. With a registry the writer message (by id and indexes) is checked against the reader
//! first: a field number both have must keep a compatible type (Protobuf's "Updating a message
//! type" rules: `int32`/`int64`/`uint32`/`uint64`/`bool`/enums interchange, `sint32`/`sint64`,
//! `fixed32`/`sfixed32`, `fixed64`/`sfixed64`, `string`/`bytes`); a record whose writer does not
//! fit, or whose bytes are not a message, is a bad record.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array,
    Int64Array, ListArray, MapArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, Fields, Float32Type, Float64Type, Int32Type, Int64Type, Schema as ArrowSchema,
    SchemaRef, TimeUnit, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use prost_reflect::prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, FileDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use sluice_crds::{SchemaRegistrySpec, ValueSchemaSpec};

use super::registry::{RegistryClient, RegistryError, SchemaKind};
use super::{RawValue, frame, reader_schema_text, schema_text, subject, unframe};
use crate::bad_record::BadRecord;
use crate::error::{EngineError, Result};
use crate::schema::timestamp_type;

/// The name the schema text is compiled under (what its own `import`s cannot name).
pub const SCHEMA_FILE: &str = "schema.proto";
/// The well-known message mapped to Arrow's timestamp.
const TIMESTAMP: &str = "google.protobuf.Timestamp";
/// Deepest message nesting followed (a recursive message would never end).
const MAX_DEPTH: usize = 32;
/// Most message indexes read from a value (nesting is far shallower in any real schema).
const MAX_INDEXES: u64 = 64;

fn invalid(field: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidQuery(format!("{field}: {message}"))
}

// ------------------------------------------------------------------ schema ----

/// Serves the schema text as [`SCHEMA_FILE`]; the well-known imports come from protox.
struct SchemaText(String);

impl protox::file::FileResolver for SchemaText {
    fn open_file(&self, name: &str) -> std::result::Result<protox::file::File, protox::Error> {
        if name == SCHEMA_FILE {
            protox::file::File::from_source(name, &self.0)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Compiles `.proto` text (imports: the well-known `google/protobuf/*.proto` only).
///
/// # Errors
/// The protox message (with line and column where it has them) for text that is not a valid
/// `.proto` file or imports another file.
pub fn compile_text(text: &str) -> std::result::Result<FileDescriptor, String> {
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(SchemaText(text.to_string()));
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.open_file(SCHEMA_FILE).map_err(|e| {
        let mut message = format!("{e:?}");
        if message.contains("not found") {
            message.push_str(
                " (only google/protobuf/*.proto can be imported; schema references are not \
                 supported)",
            );
        }
        message
    })?;
    compiler
        .descriptor_pool()
        .get_file_by_name(SCHEMA_FILE)
        .ok_or_else(|| "the compiled schema file is missing".to_string())
}

/// [`compile_text`] for a schema of the spec (`field` names it in the error).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming `field`.
pub fn compile(field: &str, text: &str) -> Result<FileDescriptor> {
    compile_text(text).map_err(|e| invalid(field, format!("not a valid .proto schema: {e}")))
}

/// The message `name` of `file` (fully qualified, or relative to the file's package), or the
/// file's first message. `field` is the `kafka` object's path, `schema_field` names the schema.
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming `messageType` when the file has no such message, or the
/// schema when it has no message at all.
pub fn message(
    field: &str,
    schema_field: &str,
    file: &FileDescriptor,
    name: Option<&str>,
) -> Result<MessageDescriptor> {
    let Some(name) = name else {
        return file
            .messages()
            .next()
            .ok_or_else(|| invalid(schema_field, "the .proto schema defines no message"));
    };
    let name = name.strip_prefix('.').unwrap_or(name);
    let pool = file.parent_pool();
    let package = file.package_name();
    let found = pool.get_message_by_name(name).or_else(|| {
        (!package.is_empty())
            .then(|| pool.get_message_by_name(&format!("{package}.{name}")))
            .flatten()
    });
    match found {
        Some(m) if m.parent_file().name() == SCHEMA_FILE && !m.is_map_entry() => Ok(m),
        _ => {
            let defined: Vec<String> = file.messages().map(|m| m.full_name().to_string()).collect();
            Err(invalid(
                &format!("{field}.messageType"),
                format!(
                    "no message `{name}` in the .proto schema of {schema_field} (its top-level \
                     messages: {})",
                    defined.join(", ")
                ),
            ))
        }
    }
}

/// The message indexes of `message` in its file (the wire format's path: top-level index, then
/// nested indexes).
pub fn message_indexes(message: &MessageDescriptor) -> Vec<i32> {
    // The descriptor path is [4, i, 3, j, 3, k, ...]: FileDescriptorProto.message_type, then
    // DescriptorProto.nested_type, each followed by the index.
    message.path().iter().skip(1).step_by(2).copied().collect()
}

/// The message at `indexes` in `file`.
pub fn message_at(file: &FileDescriptor, indexes: &[i32]) -> Option<MessageDescriptor> {
    let (first, rest) = indexes.split_first()?;
    let mut current = file.messages().nth(usize::try_from(*first).ok()?)?;
    for index in rest {
        let next = current
            .child_messages()
            .nth(usize::try_from(*index).ok()?)?;
        current = next;
    }
    Some(current)
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Appends the wire format's message indexes (`[0]` as the single byte `0`).
pub fn write_indexes(indexes: &[i32], out: &mut Vec<u8>) {
    if indexes == [0] {
        out.push(0);
        return;
    }
    write_varint(zigzag(indexes.len() as i64), out);
    for index in indexes {
        write_varint(zigzag(i64::from(*index)), out);
    }
}

/// The message indexes at the start of `bytes` and the message bytes after them.
///
/// # Errors
/// A message for the bad record when the indexes are not zigzag varints or too many.
pub fn read_indexes(bytes: &[u8]) -> std::result::Result<(Vec<i32>, &[u8]), String> {
    let bad = || "the message indexes after the schema id are not zigzag varints".to_string();
    let (count, mut rest) = read_varint(bytes).ok_or_else(bad)?;
    let count = unzigzag(count);
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if count < 0 || count as u64 > MAX_INDEXES {
        return Err(format!(
            "{count} message indexes after the schema id (at most {MAX_INDEXES})"
        ));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (index, after) = read_varint(rest).ok_or_else(bad)?;
        indexes.push(i32::try_from(unzigzag(index)).map_err(|_| bad())?);
        rest = after;
    }
    Ok((indexes, rest))
}

// ------------------------------------------------------------ Arrow types ----

fn unsupported(path: &str, what: &str) -> EngineError {
    EngineError::InvalidQuery(format!("{path}: Protobuf {what} is not supported"))
}

/// The Arrow schema of `message`'s fields (see the module's table).
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the field of a type Sluice does not map.
pub fn arrow_schema(field: &str, message: &MessageDescriptor) -> Result<SchemaRef> {
    let fields = message
        .fields()
        .map(|f| {
            let path = format!("{field}: field `{}`", f.name());
            Ok(Field::new(f.name(), field_type(&f, &path, 0)?, true))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ArrowSchema::new(fields)))
}

fn field_type(fd: &FieldDescriptor, path: &str, depth: usize) -> Result<DataType> {
    if fd.is_group() {
        return Err(unsupported(path, "a group (proto2)"));
    }
    if fd.is_map() {
        let Kind::Message(entry) = fd.kind() else {
            return Err(EngineError::Internal(format!(
                "protobuf: `{path}`: map without an entry message"
            )));
        };
        let key = kind_type(
            &entry.map_entry_key_field().kind(),
            &format!("{path} key"),
            depth + 1,
        )?;
        let value = kind_type(
            &entry.map_entry_value_field().kind(),
            &format!("{path}{{}}"),
            depth + 1,
        )?;
        return Ok(DataType::Map(Arc::new(map_entries(key, value)), false));
    }
    let t = kind_type(&fd.kind(), path, depth)?;
    Ok(if fd.is_list() {
        DataType::List(Arc::new(Field::new("item", t, true)))
    } else {
        t
    })
}

fn map_entries(key: DataType, value: DataType) -> Field {
    Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", key, false),
            Field::new("value", value, true),
        ])),
        false,
    )
}

fn kind_type(kind: &Kind, path: &str, depth: usize) -> Result<DataType> {
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => DataType::Int64,
        Kind::Uint32 | Kind::Fixed32 => DataType::UInt32,
        Kind::Uint64 | Kind::Fixed64 => DataType::UInt64,
        Kind::Float => DataType::Float32,
        Kind::Double => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::String | Kind::Enum(_) => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Message(m) if m.full_name() == TIMESTAMP => timestamp_type(),
        Kind::Message(m) => {
            if depth >= MAX_DEPTH {
                return Err(unsupported(
                    path,
                    "nesting deeper than 32 levels (a recursive message?)",
                ));
            }
            let fields = m
                .fields()
                .map(|f| {
                    let t = field_type(&f, &format!("{path}.{}", f.name()), depth + 1)?;
                    Ok(Field::new(f.name(), t, true))
                })
                .collect::<Result<Vec<_>>>()?;
            DataType::Struct(Fields::from(fields))
        }
    })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
    }
}

/// Kinds a reader can read from each other's encoding (Protobuf language guide, "Updating a
/// message type"); messages are compared field by field.
fn wire_class(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => 0,
        Kind::Sint32 | Kind::Sint64 => 1,
        Kind::Fixed32 | Kind::Sfixed32 => 2,
        Kind::Fixed64 | Kind::Sfixed64 => 3,
        Kind::Float => 4,
        Kind::Double => 5,
        Kind::String | Kind::Bytes => 6,
        Kind::Message(_) => 7,
    }
}

/// Whether records of `writer` decode as `reader`: every field number both have keeps a
/// compatible type (`Err` names the first that does not).
fn compatible(
    writer: &MessageDescriptor,
    reader: &MessageDescriptor,
    path: &str,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for rf in reader.fields() {
        let Some(wf) = writer.get_field(rf.number()) else {
            continue;
        };
        let name = if path.is_empty() {
            rf.name().to_string()
        } else {
            format!("{path}.{}", rf.name())
        };
        let (wk, rk) = (wf.kind(), rf.kind());
        if wf.is_map() != rf.is_map() || wire_class(&wk) != wire_class(&rk) {
            let shape = |f: &FieldDescriptor, k: &Kind| {
                if f.is_map() {
                    "a map".to_string()
                } else {
                    kind_name(k)
                }
            };
            return Err(format!(
                "field `{name}` (number {}) is {} in the writer schema but {} in the reader \
                 schema",
                rf.number(),
                shape(&wf, &wk),
                shape(&rf, &rk)
            ));
        }
        if let (Kind::Message(wm), Kind::Message(rm)) = (&wk, &rk) {
            compatible(wm, rm, &name, depth + 1)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- decoding ----

/// A field's value in `message`: `None` when the field has presence and is not set.
fn present<'a>(message: &'a DynamicMessage, fd: &FieldDescriptor) -> Option<Cow<'a, Value>> {
    if fd.supports_presence() && !message.has_field(fd) {
        None
    } else {
        Some(message.get_field(fd))
    }
}

/// A batch of `schema` (from [`arrow_schema`] of `message`) from decoded messages.
///
/// # Errors
/// [`EngineError::Internal`] when a value does not have the shape its descriptor says (cannot
/// happen for messages decoded with the same descriptor).
pub fn to_batch(
    schema: &SchemaRef,
    message: &MessageDescriptor,
    rows: &[DynamicMessage],
) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (fd, field) in message.fields().zip(schema.fields()) {
        let values: Vec<Option<Cow<'_, Value>>> = rows.iter().map(|m| present(m, &fd)).collect();
        let refs: Vec<Option<&Value>> = values.iter().map(|v| v.as_deref()).collect();
        columns.push(build_field(&fd, field.data_type(), &refs, fd.name())?);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

fn mismatch(path: &str, data_type: &DataType, value: &Value) -> EngineError {
    let shown: String = format!("{value:?}").chars().take(60).collect();
    EngineError::Internal(format!(
        "protobuf decode: `{path}`: value {shown} does not fit Arrow type {data_type}"
    ))
}

fn nulls(values: &[Option<&Value>]) -> Option<NullBuffer> {
    if values.iter().all(Option::is_some) {
        None
    } else {
        Some(NullBuffer::from(
            values.iter().map(Option::is_some).collect::<Vec<_>>(),
        ))
    }
}

fn primitive<'a, T>(
    values: &[Option<&'a Value>],
    path: &str,
    data_type: &DataType,
    f: impl Fn(&'a Value) -> Option<T>,
) -> Result<Vec<Option<T>>> {
    values
        .iter()
        .map(|v| match v {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| mismatch(path, data_type, v)),
        })
        .collect()
}

fn map_key_value(key: &MapKey) -> Value {
    match key {
        MapKey::Bool(b) => Value::Bool(*b),
        MapKey::I32(i) => Value::I32(*i),
        MapKey::I64(i) => Value::I64(*i),
        MapKey::U32(u) => Value::U32(*u),
        MapKey::U64(u) => Value::U64(*u),
        MapKey::String(s) => Value::String(s.clone()),
    }
}

fn build_field(
    fd: &FieldDescriptor,
    data_type: &DataType,
    values: &[Option<&Value>],
    path: &str,
) -> Result<ArrayRef> {
    match data_type {
        DataType::List(item) if fd.is_list() => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::List(list)) => {
                        lengths.push(list.len());
                        items.extend(list.iter().map(Some));
                    }
                    Some(other) => return Err(mismatch(path, data_type, other)),
                }
            }
            let child = build_kind(&fd.kind(), item.data_type(), &items, &format!("{path}[]"))?;
            Ok(Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::from_lengths(lengths),
                child,
                nulls(values),
            )?))
        }
        DataType::Map(entries, sorted) if fd.is_map() => {
            let (Kind::Message(entry), DataType::Struct(entry_fields)) =
                (fd.kind(), entries.data_type())
            else {
                return Err(EngineError::Internal(format!(
                    "protobuf decode: `{path}`: map without entries"
                )));
            };
            let (key_fd, value_fd) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut lengths = Vec::with_capacity(values.len());
            let mut keys: Vec<Value> = Vec::new();
            let mut items: Vec<&Value> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::Map(map)) => {
                        // Sorted by key: a HashMap's order would differ from run to run.
                        let mut sorted: Vec<(&MapKey, &Value)> = map.iter().collect();
                        sorted.sort_by(|a, b| a.0.cmp(b.0));
                        lengths.push(sorted.len());
                        for (k, item) in sorted {
                            keys.push(map_key_value(k));
                            items.push(item);
                        }
                    }
                    Some(other) => return Err(mismatch(path, data_type, other)),
                }
            }
            let key_refs: Vec<Option<&Value>> = keys.iter().map(Some).collect();
            let item_refs: Vec<Option<&Value>> = items.into_iter().map(Some).collect();
            let (Some(key_field), Some(value_field)) = (entry_fields.first(), entry_fields.get(1))
            else {
                return Err(EngineError::Internal(format!(
                    "protobuf decode: `{path}`: map entries need a key and a value"
                )));
            };
            let key_array = build_kind(
                &key_fd.kind(),
                key_field.data_type(),
                &key_refs,
                &format!("{path} key"),
            )?;
            let value_array = build_kind(
                &value_fd.kind(),
                value_field.data_type(),
                &item_refs,
                &format!("{path}{{}}"),
            )?;
            let entry_array =
                StructArray::try_new(entry_fields.clone(), vec![key_array, value_array], None)?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                OffsetBuffer::from_lengths(lengths),
                entry_array,
                nulls(values),
                *sorted,
            )?))
        }
        _ => build_kind(&fd.kind(), data_type, values, path),
    }
}

fn build_kind(
    kind: &Kind,
    data_type: &DataType,
    values: &[Option<&Value>],
    path: &str,
) -> Result<ArrayRef> {
    let t = data_type;
    Ok(match data_type {
        DataType::Boolean => Arc::new(BooleanArray::from(primitive(
            values,
            path,
            t,
            Value::as_bool,
        )?)),
        DataType::Int32 => Arc::new(Int32Array::from(primitive(values, path, t, Value::as_i32)?)),
        DataType::Int64 => Arc::new(Int64Array::from(primitive(values, path, t, Value::as_i64)?)),
        DataType::UInt32 => Arc::new(UInt32Array::from(primitive(
            values,
            path,
            t,
            Value::as_u32,
        )?)),
        DataType::UInt64 => Arc::new(UInt64Array::from(primitive(
            values,
            path,
            t,
            Value::as_u64,
        )?)),
        DataType::Float32 => Arc::new(Float32Array::from(primitive(
            values,
            path,
            t,
            Value::as_f32,
        )?)),
        DataType::Float64 => Arc::new(Float64Array::from(primitive(
            values,
            path,
            t,
            Value::as_f64,
        )?)),
        DataType::Utf8 => {
            let strings = primitive(values, path, t, |v| match (v, kind) {
                (Value::String(s), _) => Some(s.clone()),
                (Value::EnumNumber(n), Kind::Enum(e)) => Some(
                    e.get_value(*n)
                        .map_or_else(|| n.to_string(), |ev| ev.name().to_string()),
                ),
                _ => None,
            })?;
            Arc::new(StringArray::from(strings))
        }
        DataType::Binary => {
            let bytes = primitive(values, path, t, |v| v.as_bytes().map(|b| b.as_ref()))?;
            Arc::new(BinaryArray::from(bytes))
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let micros = primitive(values, path, t, |v| {
                let m = v.as_message()?;
                let seconds = m.get_field_by_name("seconds")?.as_i64()?;
                let nanos = m.get_field_by_name("nanos")?.as_i32()?;
                seconds
                    .checked_mul(1_000_000)?
                    .checked_add(i64::from(nanos).div_euclid(1000))
            })?;
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone_opt(tz.clone()))
        }
        DataType::Struct(fields) => {
            let Kind::Message(m) = kind else {
                return Err(EngineError::Internal(format!(
                    "protobuf decode: `{path}`: a struct that is not a message"
                )));
            };
            let mut children = Vec::with_capacity(fields.len());
            for (fd, field) in m.fields().zip(fields) {
                let child: Vec<Option<Cow<'_, Value>>> = values
                    .iter()
                    .map(|v| v.and_then(Value::as_message).and_then(|m| present(m, &fd)))
                    .collect();
                let refs: Vec<Option<&Value>> = child.iter().map(|v| v.as_deref()).collect();
                children.push(build_field(
                    &fd,
                    field.data_type(),
                    &refs,
                    &format!("{path}.{}", fd.name()),
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
        other => {
            return Err(EngineError::Internal(format!(
                "protobuf decode: `{path}`: no decoder for Arrow type {other}"
            )));
        }
    })
}

// ---------------------------------------------------------------- encoding ----

fn encode_error(path: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidQuery(format!("kafka sink (protobuf): {path}: {message}"))
}

fn cast_to(array: &dyn Array, data_type: &DataType, path: &str) -> Result<ArrayRef> {
    cast(&arrow::array::make_array(array.to_data()), data_type)
        .map_err(|e| encode_error(path, format!("cannot become {data_type}: {e}")))
}

/// Whether a field may be left unset without changing what a reader sees: it has presence (and
/// is not a proto2 `required` field, which readers refuse to miss), or it is repeated or a map
/// (empty).
fn may_be_unset(fd: &FieldDescriptor) -> bool {
    (fd.supports_presence() && !fd.is_required()) || fd.is_list() || fd.is_map()
}

/// The messages of `batch`'s rows: each field of `message` takes the column of the same name.
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming the column when it cannot become its field's type (a
/// failing cast, an enum name the enum lacks, two members of a `oneof` set in one row), or
/// when a field without presence (a proto3 scalar not declared `optional`) would get a null or
/// has no column.
pub fn from_batch(message: &MessageDescriptor, batch: &RecordBatch) -> Result<Vec<DynamicMessage>> {
    let mut out: Vec<DynamicMessage> = (0..batch.num_rows())
        .map(|_| DynamicMessage::new(message.clone()))
        .collect();
    for fd in message.fields() {
        let path = format!("column `{}`", fd.name());
        match batch.column_by_name(fd.name()) {
            Some(column) => {
                let values = field_values(column.as_ref(), &fd, &path, 0)?;
                for (row, (m, v)) in out.iter_mut().zip(values).enumerate() {
                    set(m, &fd, v, row, &path)?;
                }
            }
            None if may_be_unset(&fd) => {}
            None => {
                return Err(encode_error(
                    &path,
                    format!(
                        "the query's result has no such column for the Protobuf field `{}` of \
                         {}, which cannot be left unset (a proto3 scalar without `optional`, \
                         or `required`)",
                        fd.name(),
                        message.full_name()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn set(
    message: &mut DynamicMessage,
    fd: &FieldDescriptor,
    value: Option<Value>,
    row: usize,
    path: &str,
) -> Result<()> {
    let Some(value) = value else {
        if may_be_unset(fd) {
            return Ok(());
        }
        let why = if fd.is_required() {
            "is `required`"
        } else {
            "has no presence (declare it `optional`)"
        };
        return Err(encode_error(
            path,
            format!(
                "null at row {row}, but the Protobuf field `{}` {why}",
                fd.name()
            ),
        ));
    };
    // What a Protobuf writer does: a field without presence holding its default is not written.
    if !fd.supports_presence() && value.is_default_for_field(fd) {
        return Ok(());
    }
    if let Some(oneof) = fd.containing_oneof().filter(|o| !o.is_synthetic())
        && let Some(other) = oneof.fields().find(|f| message.has_field(f))
    {
        return Err(encode_error(
            path,
            format!(
                "row {row} sets both `{}` and `{}` of oneof `{}`",
                other.name(),
                fd.name(),
                oneof.name()
            ),
        ));
    }
    message
        .try_set_field(fd, value)
        .map_err(|e| encode_error(path, format!("row {row}: {e:?}")))
}

fn field_values(
    array: &dyn Array,
    fd: &FieldDescriptor,
    path: &str,
    depth: usize,
) -> Result<Vec<Option<Value>>> {
    if fd.is_map() {
        let Kind::Message(entry) = fd.kind() else {
            return Err(encode_error(path, "a map field without an entry message"));
        };
        let maps = array
            .as_map_opt()
            .ok_or_else(|| encode_error(path, format!("a {} is not a map", array.data_type())))?;
        let (key_fd, value_fd) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let keys = kind_values(
            maps.keys().as_ref(),
            &key_fd.kind(),
            &format!("{path} keys"),
            depth + 1,
        )?;
        let items = kind_values(
            maps.values().as_ref(),
            &value_fd.kind(),
            &format!("{path}{{}}"),
            depth + 1,
        )?;
        let offsets = maps.value_offsets();
        return (0..maps.len())
            .map(|row| {
                if maps.is_null(row) {
                    return Ok(None);
                }
                let from = offsets.get(row).copied().unwrap_or(0) as usize;
                let to = offsets.get(row + 1).copied().unwrap_or(0) as usize;
                let mut map = HashMap::with_capacity(to.saturating_sub(from));
                for i in from..to {
                    let key = match keys.get(i).cloned().flatten() {
                        Some(Value::Bool(b)) => MapKey::Bool(b),
                        Some(Value::I32(v)) => MapKey::I32(v),
                        Some(Value::I64(v)) => MapKey::I64(v),
                        Some(Value::U32(v)) => MapKey::U32(v),
                        Some(Value::U64(v)) => MapKey::U64(v),
                        Some(Value::String(s)) => MapKey::String(s),
                        _ => return Err(encode_error(path, format!("row {row}: a null map key"))),
                    };
                    let value = items.get(i).cloned().flatten().ok_or_else(|| {
                        encode_error(path, format!("row {row}: a null map value"))
                    })?;
                    map.insert(key, value);
                }
                Ok(Some(Value::Map(map)))
            })
            .collect();
    }
    if fd.is_list() {
        // Large and fixed-size lists (what some SQL functions return) as plain lists.
        let array = match array.data_type() {
            DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
                cast_to(array, &DataType::List(item.clone()), path)?
            }
            _ => arrow::array::make_array(array.to_data()),
        };
        let list = array
            .as_list_opt::<i32>()
            .ok_or_else(|| encode_error(path, format!("a {} is not a list", array.data_type())))?;
        let items = kind_values(
            list.values().as_ref(),
            &fd.kind(),
            &format!("{path}[]"),
            depth + 1,
        )?;
        let offsets = list.value_offsets();
        return (0..list.len())
            .map(|row| {
                if list.is_null(row) {
                    return Ok(None);
                }
                let from = offsets.get(row).copied().unwrap_or(0) as usize;
                let to = offsets.get(row + 1).copied().unwrap_or(0) as usize;
                items
                    .get(from..to)
                    .unwrap_or_default()
                    .iter()
                    .map(|v| {
                        v.clone().ok_or_else(|| {
                            encode_error(path, format!("row {row}: a null in a repeated field"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(|v| Some(Value::List(v)))
            })
            .collect();
    }
    kind_values(array, &fd.kind(), path, depth)
}

fn typed<T: arrow::datatypes::ArrowPrimitiveType>(
    array: &dyn Array,
    path: &str,
    wrap: impl Fn(T::Native) -> Value,
) -> Result<Vec<Option<Value>>> {
    let cast = cast_to(array, &T::DATA_TYPE, path)?;
    Ok(cast
        .as_primitive::<T>()
        .iter()
        .map(|v| v.map(&wrap))
        .collect())
}

fn kind_values(
    array: &dyn Array,
    kind: &Kind,
    path: &str,
    depth: usize,
) -> Result<Vec<Option<Value>>> {
    if depth > MAX_DEPTH {
        return Err(encode_error(path, "nested deeper than 32 levels"));
    }
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => typed::<Int32Type>(array, path, Value::I32)?,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => typed::<Int64Type>(array, path, Value::I64)?,
        Kind::Uint32 | Kind::Fixed32 => typed::<UInt32Type>(array, path, Value::U32)?,
        Kind::Uint64 | Kind::Fixed64 => typed::<UInt64Type>(array, path, Value::U64)?,
        Kind::Float => typed::<Float32Type>(array, path, Value::F32)?,
        Kind::Double => typed::<Float64Type>(array, path, Value::F64)?,
        Kind::Bool => cast_to(array, &DataType::Boolean, path)?
            .as_boolean()
            .iter()
            .map(|v| v.map(Value::Bool))
            .collect(),
        Kind::String => cast_to(array, &DataType::Utf8, path)?
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(|s| Value::String(s.to_string())))
            .collect(),
        Kind::Bytes => cast_to(array, &DataType::Binary, path)?
            .as_binary::<i32>()
            .iter()
            .map(|v| v.map(|b| Value::Bytes(prost_reflect::bytes::Bytes::copy_from_slice(b))))
            .collect(),
        Kind::Enum(e) => cast_to(array, &DataType::Utf8, path)?
            .as_string::<i32>()
            .iter()
            .map(|v| match v {
                None => Ok(None),
                Some(name) => match e.get_value_by_name(name) {
                    Some(ev) => Ok(Some(Value::EnumNumber(ev.number()))),
                    // A number the enum does not name (what decoding gives for one).
                    None => name
                        .parse::<i32>()
                        .map(|n| Some(Value::EnumNumber(n)))
                        .map_err(|_| {
                            encode_error(
                                path,
                                format!("`{name}` is not a value of enum {}", e.full_name()),
                            )
                        }),
                },
            })
            .collect::<Result<_>>()?,
        Kind::Message(m) if m.full_name() == TIMESTAMP => {
            let (Some(seconds), Some(nanos)) =
                (m.get_field_by_name("seconds"), m.get_field_by_name("nanos"))
            else {
                return Err(encode_error(
                    path,
                    "google.protobuf.Timestamp without fields",
                ));
            };
            let cast = cast_to(array, &timestamp_type(), path)?;
            cast.as_primitive::<TimestampMicrosecondType>()
                .iter()
                .map(|v| {
                    v.map(|us| {
                        let mut t = DynamicMessage::new(m.clone());
                        t.set_field(&seconds, Value::I64(us.div_euclid(1_000_000)));
                        t.set_field(&nanos, Value::I32((us.rem_euclid(1_000_000) * 1000) as i32));
                        Value::Message(t)
                    })
                })
                .collect()
        }
        Kind::Message(m) => {
            let structs = array.as_struct_opt().ok_or_else(|| {
                encode_error(path, format!("a {} is not a struct", array.data_type()))
            })?;
            let mut columns = Vec::new();
            for fd in m.fields() {
                let child_path = format!("{path}.{}", fd.name());
                match structs.column_by_name(fd.name()) {
                    Some(child) => {
                        let values = field_values(child.as_ref(), &fd, &child_path, depth + 1)?;
                        columns.push((fd, child_path, values));
                    }
                    None if may_be_unset(&fd) => {}
                    None => {
                        return Err(encode_error(
                            &child_path,
                            format!(
                                "the struct has no such field for the Protobuf field `{}`, \
                                 which cannot be left unset",
                                fd.name()
                            ),
                        ));
                    }
                }
            }
            let mut out = Vec::with_capacity(array.len());
            for row in 0..array.len() {
                if structs.is_null(row) {
                    out.push(None);
                    continue;
                }
                let mut message = DynamicMessage::new(m.clone());
                for (fd, child_path, values) in &mut columns {
                    let value = values.get_mut(row).and_then(Option::take);
                    set(&mut message, fd, value, row, child_path)?;
                }
                out.push(Some(Value::Message(message)));
            }
            out
        }
    })
}

// ----------------------------------------------------- decoder and encoder ----

/// Per (writer schema id, message indexes): `Ok` when its records decode as the reader message,
/// else why not.
type WriterVerdicts = HashMap<(u32, Vec<i32>), std::result::Result<(), String>>;

/// Decodes Protobuf record values of a Kafka source into rows of its reader message.
pub struct ProtobufDecoder {
    reader: MessageDescriptor,
    arrow: SchemaRef,
    registry: Option<Arc<RegistryClient>>,
    /// Per (writer schema id, message indexes): whether its records decode as the reader
    /// message (`Err`: why not, the records are bad).
    writers: Mutex<WriterVerdicts>,
}

impl std::fmt::Debug for ProtobufDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtobufDecoder")
            .field("reader", &self.reader.full_name())
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl ProtobufDecoder {
    /// The decoder of a Kafka source (`field` is the `kafka` object's path): the reader message
    /// is `message_type` (or the first message) of `value_schema`, or of the subject's latest
    /// version in the registry (fetched now).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unreadable, invalid or unmappable schema, an unknown
    /// `messageType` or a subject without versions; [`EngineError::Source`] when the registry
    /// cannot be reached.
    pub fn new(
        field: &str,
        source_name: &str,
        value_schema: Option<&ValueSchemaSpec>,
        message_type: Option<&str>,
        registry: Option<&SchemaRegistrySpec>,
        topic: Option<&str>,
    ) -> Result<Self> {
        let client = registry
            .map(|r| {
                RegistryClient::with_kind(
                    &format!("{field}.schemaRegistry"),
                    r,
                    SchemaKind::Protobuf,
                )
                .map(Arc::new)
            })
            .transpose()?;
        let (reader_field, text) = reader_schema_text(
            field,
            source_name,
            "protobuf",
            value_schema,
            registry,
            client.as_deref(),
            topic,
        )?;
        let file = compile(&reader_field, &text)?;
        let reader = message(field, &reader_field, &file, message_type)?;
        let arrow = arrow_schema(&reader_field, &reader)?;
        Ok(Self {
            reader,
            arrow,
            registry: client,
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// The Arrow schema of the decoded rows (the reader message's fields).
    pub fn schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Whether records written with schema `id` as the message at `indexes` decode as the
    /// reader message: `Ok(Err(why))` when not (the record is bad), `Err` when the registry is
    /// unreachable.
    async fn check_writer(
        &self,
        source_name: &str,
        id: u32,
        indexes: &[i32],
    ) -> Result<std::result::Result<(), String>> {
        let key = (id, indexes.to_vec());
        if let Some(known) = self.writers.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(known);
        }
        let Some(client) = &self.registry else {
            return Err(EngineError::Internal(
                "protobuf: no registry to look ids up".into(),
            ));
        };
        let verdict = match client.schema_by_id(id).await {
            Ok(text) => match compile_text(&text) {
                Err(e) => Err(format!("writer schema id {id} is not valid .proto: {e}")),
                Ok(file) => match message_at(&file, indexes) {
                    None => Err(format!(
                        "message indexes {indexes:?} name no message of writer schema id {id}"
                    )),
                    Some(writer) => compatible(&writer, &self.reader, "", 0).map_err(|e| {
                        format!(
                            "writer schema id {id} (message {}) does not fit the reader \
                             message {}: {e}",
                            writer.full_name(),
                            self.reader.full_name()
                        )
                    }),
                },
            },
            Err(RegistryError::Unavailable(m)) => {
                return Err(EngineError::Source {
                    source_name: source_name.to_string(),
                    message: format!("schema registry: {m}"),
                });
            }
            Err(e) => Err(format!("writer schema: {e}")),
        };
        if let Ok(mut cache) = self.writers.lock() {
            cache.insert(key, verdict.clone());
        }
        Ok(verdict)
    }

    /// Decodes `records` into batches of [`Self::schema`]; records that cannot be read become bad
    /// records (origin `topic/partition`, line = offset, record = the value's first bytes as hex).
    ///
    /// # Errors
    /// [`EngineError::Source`] (retryable) when the registry cannot be reached.
    pub async fn decode(
        &self,
        source_name: &str,
        records: &[RawValue<'_>],
    ) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
        let mut good = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        for record in records {
            match self.decode_one(source_name, record.value).await? {
                Ok(message) => good.push(message),
                Err(error) => bad.push(record.bad(error)),
            }
        }
        let batches = if good.is_empty() {
            Vec::new()
        } else {
            vec![to_batch(&self.arrow, &self.reader, &good)?]
        };
        Ok((batches, bad))
    }

    async fn decode_one(
        &self,
        source_name: &str,
        value: Option<&[u8]>,
    ) -> Result<std::result::Result<DynamicMessage, String>> {
        let Some(value) = value else {
            return Ok(Err("no value (a tombstone)".into()));
        };
        let bytes = if self.registry.is_some() {
            let (id, rest) = match unframe(value) {
                Ok(parts) => parts,
                Err(e) => return Ok(Err(e)),
            };
            let (indexes, bytes) = match read_indexes(rest) {
                Ok(parts) => parts,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = self.check_writer(source_name, id, &indexes).await? {
                return Ok(Err(e));
            }
            bytes
        } else {
            value
        };
        Ok(
            DynamicMessage::decode(self.reader.clone(), bytes).map_err(|e| {
                format!(
                    "not a Protobuf message {} of its writer schema: {e}",
                    self.reader.full_name()
                )
            }),
        )
    }
}

/// Encodes result rows of a Kafka sink as Protobuf messages of its writer message.
pub struct ProtobufEncoder {
    field: String,
    /// The `valueSchema` text (registered as written) and its writer message.
    schema: Option<(String, MessageDescriptor)>,
    message_type: Option<String>,
    subject: Option<String>,
    registry: Option<RegistryClient>,
    /// The writer message and the bytes before each message (the wire format's magic byte,
    /// schema id and message indexes; empty without a registry), once resolved (first write).
    resolved: tokio::sync::OnceCell<(MessageDescriptor, Vec<u8>)>,
}

impl ProtobufEncoder {
    /// The encoder of a Kafka sink (`field` is the `kafka` object's path). A `value_schema` is
    /// compiled now; the registry is contacted at the first write (registering the schema under
    /// the subject, or taking the subject's latest version when there is no `value_schema`).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unreadable or invalid schema or an unknown
    /// `messageType`.
    pub fn new(
        field: &str,
        value_schema: Option<&ValueSchemaSpec>,
        message_type: Option<&str>,
        registry: Option<&SchemaRegistrySpec>,
        topic: &str,
    ) -> Result<Self> {
        let schema = value_schema
            .map(|spec| {
                let f = format!("{field}.valueSchema");
                let text = schema_text(&f, spec)?;
                let file = compile(&f, &text)?;
                let writer = message(field, &f, &file, message_type)?;
                arrow_schema(&f, &writer)?;
                Ok::<_, EngineError>((text, writer))
            })
            .transpose()?;
        let (registry, subject) = match registry {
            Some(spec) => {
                let f = format!("{field}.schemaRegistry");
                (
                    Some(RegistryClient::with_kind(&f, spec, SchemaKind::Protobuf)?),
                    Some(subject(&f, spec, Some(topic))?),
                )
            }
            None => (None, None),
        };
        if schema.is_none() && registry.is_none() {
            return Err(invalid(
                field,
                "format protobuf needs valueSchema or schemaRegistry",
            ));
        }
        Ok(Self {
            field: field.to_string(),
            schema,
            message_type: message_type.map(str::to_string),
            subject,
            registry,
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    async fn resolve(&self) -> Result<&(MessageDescriptor, Vec<u8>)> {
        self.resolved
            .get_or_try_init(|| async {
                let field = format!("{}.schemaRegistry", self.field);
                let to_error = |e: RegistryError| match e {
                    RegistryError::Unavailable(m) => {
                        EngineError::Sink(format!("kafka: schema registry: {m}"))
                    }
                    other => EngineError::InvalidQuery(format!("{field}: {other}")),
                };
                let prefix = |id: u32, writer: &MessageDescriptor| {
                    let mut prefix = frame(id, &[]);
                    write_indexes(&message_indexes(writer), &mut prefix);
                    prefix
                };
                match (&self.schema, &self.registry, &self.subject) {
                    (Some((_, writer)), None, _) => Ok((writer.clone(), Vec::new())),
                    (Some((text, writer)), Some(client), Some(subject)) => {
                        let id = client.register(subject, text).await.map_err(to_error)?;
                        Ok((writer.clone(), prefix(id, writer)))
                    }
                    (None, Some(client), Some(subject)) => {
                        let latest = client.latest(subject).await.map_err(to_error)?;
                        let f = format!("{field} (subject `{subject}`, id {})", latest.id);
                        let file = compile(&f, &latest.schema)?;
                        let writer = message(&self.field, &f, &file, self.message_type.as_deref())?;
                        arrow_schema(&f, &writer)?;
                        let prefix = prefix(latest.id, &writer);
                        Ok((writer, prefix))
                    }
                    _ => Err(EngineError::Internal(
                        "protobuf encoder without a schema".into(),
                    )),
                }
            })
            .await
    }

    /// The encoded values of `batch`'s rows (framed with the schema id and message indexes when
    /// a registry is used).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when a column cannot become its Protobuf field or the
    /// registry refuses the schema; [`EngineError::Sink`] (retryable) when it is unreachable.
    pub async fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let (writer, prefix) = self.resolve().await?;
        Ok(from_batch(writer, batch)?
            .into_iter()
            .map(|message| {
                let mut out = Vec::with_capacity(prefix.len() + message.encoded_len());
                out.extend_from_slice(prefix);
                out.extend_from_slice(&message.encode_to_vec());
                out
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_indexes_round_trip_in_the_wire_format() {
        for indexes in [vec![0], vec![1], vec![0, 2], vec![3, 0, 1], vec![200]] {
            let mut bytes = Vec::new();
            write_indexes(&indexes, &mut bytes);
            bytes.extend_from_slice(b"rest");
            let (read, rest) = read_indexes(&bytes).expect("indexes");
            assert_eq!((read, rest), (indexes.clone(), &b"rest"[..]));
        }
        // Confluent's shortcut for the first message, and its long form.
        assert_eq!(read_indexes(&[0, 9]), Ok((vec![0], &[9u8][..])));
        assert_eq!(read_indexes(&[2, 0, 9]), Ok((vec![0], &[9u8][..])));
        // [1, 2]: count 2 → zigzag 4, 1 → 2, 2 → 4.
        assert_eq!(read_indexes(&[4, 2, 4]), Ok((vec![1, 2], &[][..])));
        assert!(read_indexes(&[0x80]).is_err());
        assert!(read_indexes(&[1]).is_err(), "a negative count");
    }

    #[test]
    fn schema_errors_name_the_field_and_messages_are_found_by_name_and_path() {
        let file = compile(
            "f",
            "syntax = \"proto3\"; package iot.v1;\n\
             message A { message Inner { int32 x = 1; } Inner inner = 1; }\n\
             message B { map<string, int64> m = 1; }",
        )
        .expect("compiles");
        let b = message("k", "f", &file, Some("B")).expect("relative name");
        assert_eq!(b.full_name(), "iot.v1.B");
        assert_eq!(message_indexes(&b), vec![1]);
        let inner = message("k", "f", &file, Some(".iot.v1.A.Inner")).expect("nested");
        assert_eq!(message_indexes(&inner), vec![0, 0]);
        assert_eq!(
            message_at(&file, &[0, 0]).map(|m| m.full_name().to_string()),
            Some("iot.v1.A.Inner".to_string())
        );
        assert_eq!(
            message("k", "f", &file, None).expect("first").full_name(),
            "iot.v1.A"
        );
        let e = message("k", "f", &file, Some("C"))
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("k.messageType") && e.contains("iot.v1.A, iot.v1.B"),
            "{e}"
        );
        let e = compile("spec.x.valueSchema", "message { int32 = 1 }")
            .expect_err("invalid")
            .to_string();
        assert!(
            e.contains("spec.x.valueSchema: not a valid .proto schema: schema.proto:1:9:"),
            "{e}"
        );
        let e = compile(
            "f",
            "syntax = \"proto3\"; import \"other.proto\"; message A {}",
        )
        .expect_err("import")
        .to_string();
        assert!(e.contains("schema references are not supported"), "{e}");
        let recursive =
            compile("f", "syntax = \"proto3\"; message N { N next = 1; }").expect("compiles");
        let n = message("k", "f", &recursive, None).expect("N");
        let e = arrow_schema("f", &n).expect_err("recursive").to_string();
        assert!(e.contains("field `next`") && e.contains("recursive"), "{e}");
    }

    #[test]
    fn maps_with_integer_keys_repeated_messages_and_enums_round_trip_and_a_double_oneof_is_refused()
    {
        let file = compile(
            "f",
            "syntax = \"proto3\"; import \"google/protobuf/timestamp.proto\";\n\
             enum Color { RED = 0; BLUE = 1; }\n\
             message P { double x = 1; }\n\
             message M {\n\
               map<int32, P> points = 1; repeated Color colors = 2;\n\
               repeated google.protobuf.Timestamp times = 3; map<string, Color> named = 4;\n\
               oneof pick { string a = 5; int64 b = 6; } P empty = 7; uint64 n = 8;\n\
             }",
        )
        .expect("compiles");
        let m = message("k", "f", &file, Some("M")).expect("M");
        let schema = arrow_schema("f", &m).expect("schema");
        let DataType::Map(entries, false) = schema.field(0).data_type() else {
            panic!("points is a map: {schema:#?}");
        };
        let DataType::Struct(entry) = entries.data_type() else {
            panic!("map entries are a struct");
        };
        assert_eq!(entry[0].data_type(), &DataType::Int32);
        assert!(matches!(entry[1].data_type(), DataType::Struct(_)));
        let mut first = DynamicMessage::new(m.clone());
        let field = |name: &str| m.get_field_by_name(name).expect("field");
        let p = message("k", "f", &file, Some("P")).expect("P");
        let mut point = DynamicMessage::new(p.clone());
        point.set_field_by_name("x", Value::F64(1.5));
        first.set_field(
            &field("points"),
            Value::Map(HashMap::from([
                (MapKey::I32(7), Value::Message(point)),
                (
                    MapKey::I32(-1),
                    Value::Message(DynamicMessage::new(p.clone())),
                ),
            ])),
        );
        first.set_field(
            &field("colors"),
            Value::List(vec![
                Value::EnumNumber(1),
                Value::EnumNumber(0),
                Value::EnumNumber(5),
            ]),
        );
        let Kind::Message(ts) = field("times").kind() else {
            panic!("times is a message");
        };
        let mut t = DynamicMessage::new(ts);
        t.set_field_by_name("seconds", Value::I64(1_767_225_600));
        t.set_field_by_name("nanos", Value::I32(1000));
        first.set_field(&field("times"), Value::List(vec![Value::Message(t)]));
        first.set_field(
            &field("named"),
            Value::Map(HashMap::from([(
                MapKey::String("k".into()),
                Value::EnumNumber(1),
            )])),
        );
        first.set_field(&field("b"), Value::I64(9));
        first.set_field(&field("n"), Value::U64(u64::MAX));
        let second = DynamicMessage::new(m.clone());
        // Through the wire: what a producer would send.
        let rows: Vec<DynamicMessage> = [&first, &second]
            .iter()
            .map(|msg| DynamicMessage::decode(m.clone(), msg.encode_to_vec().as_slice()))
            .collect::<std::result::Result<_, _>>()
            .expect("decode");
        let batch = to_batch(&schema, &m, &rows).expect("batch");
        let table = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(&batch))
            .expect("pretty")
            .to_string();
        let expected = "\
+-----------------------------+----------------+-------------------------------+-----------+---+---+-------+----------------------+
| points                      | colors         | times                         | named     | a | b | empty | n                    |
+-----------------------------+----------------+-------------------------------+-----------+---+---+-------+----------------------+
| {-1: {x: 0.0}, 7: {x: 1.5}} | [BLUE, RED, 5] | [2026-01-01T00:00:00.000001Z] | {k: BLUE} |   | 9 |       | 18446744073709551615 |
| {}                          | []             | []                            | {}        |   |   |       | 0                    |
+-----------------------------+----------------+-------------------------------+-----------+---+---+-------+----------------------+";
        assert_eq!(table, expected, "\n{table}");
        // Back to messages: the same as what was sent, no longer (defaults are not written;
        // the bytes themselves differ only in map entry order, which Protobuf leaves open).
        let again = from_batch(&m, &batch).expect("encode");
        assert_eq!(again, rows);
        let lengths = |v: &[DynamicMessage]| v.iter().map(|m| m.encoded_len()).collect::<Vec<_>>();
        assert_eq!(lengths(&again), lengths(&rows));
        // Both members of a oneof in one row are refused naming them.
        let mut columns = batch.columns().to_vec();
        columns[4] = Arc::new(StringArray::from(vec![Some("x"), None]));
        let both = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let e = from_batch(&m, &both).expect_err("two members").to_string();
        assert!(
            e.contains("row 0 sets both `a` and `b` of oneof `pick`"),
            "{e}"
        );
    }

    #[test]
    fn required_fields_take_no_null_and_large_lists_are_written_as_lists() {
        let file = compile(
            "f",
            "syntax = \"proto2\"; message R { required string id = 1; repeated int64 v = 2; }",
        )
        .expect("compiles");
        let m = message("k", "f", &file, None).expect("R");
        let item = Arc::new(Field::new("item", DataType::Int64, true));
        let values = arrow::array::LargeListArray::new(
            item.clone(),
            arrow::buffer::OffsetBuffer::from_lengths([2, 0]),
            Arc::new(Int64Array::from(vec![3, 4])),
            None,
        );
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("v", DataType::LargeList(item), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b")])),
                Arc::new(values.clone()),
            ],
        )
        .expect("batch");
        let rows = from_batch(&m, &batch).expect("encode");
        assert_eq!(
            rows[0].get_field_by_name("v").map(Cow::into_owned),
            Some(Value::List(vec![Value::I64(3), Value::I64(4)]))
        );
        let nulls = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(values),
            ],
        )
        .expect("batch");
        let e = from_batch(&m, &nulls).expect_err("null id").to_string();
        assert!(
            e.contains("column `id`") && e.contains("null at row 1") && e.contains("`required`"),
            "{e}"
        );
    }
}
