//! The validating JSON-lines scan: sonic-rs validates a run of records with SIMD, a small walker
//! reads the fields of each validated object, and only the columns the query reads are built, only
//! for the rows that pass the pushed predicates ([`super::ScanPushdown`]).
//!
//! arrow-json stays the reference, and this scan gives exactly its rows and bad records
//! (`tests.rs` compares both over generated and hand-written records). It gets there by taking
//! only what it is sure of and handing everything else to arrow-json:
//! - a run of records is taken whole only when it is valid UTF-8 without `\u` escapes, sonic-rs
//!   finds it a sequence of strict-JSON objects, and every field of every object has a value its
//!   column takes in the way arrow-json takes it (numbers are parsed from their text with the same
//!   lexical-core calls and casts; a timestamp string with arrow's own parser). Strict JSON is a
//!   subset of what arrow-json's tape accepts, so arrow-json would decode the run to the same rows;
//! - otherwise each line is tried alone, the same way, and a line that is not taken is decoded alone
//!   by arrow-json, which gives its rows or the error text of its bad record (arrow-json also takes
//!   what strict JSON does not: missing or extra commas, raw control characters in strings, strings
//!   holding numbers). Then the rows and bad records are put together as the reference decoder does
//!   (`decode.rs`: the whole run, then chunks of lines, then single lines): a line that decodes
//!   alone is a run of complete records, so a run decodes whole exactly when its part from the
//!   first line that does not decode alone does, which arrow-json is asked (it fails within a
//!   record or two for a malformed line).

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use super::{FieldValue, ScanPredicate, ScanPushdown};
use crate::bad_record::BadRecord;
use crate::error::{EngineError, Result};
use crate::source::reference::{
    BATCH_ROWS, FALLBACK_CHUNK_LINES, TextFormat, decode_all, join_lines, split_lines,
};

/// The environment variable that switches the scan off (`arrow`: every record through arrow-json,
/// as before the scan existed), for comparisons and as a way out.
pub const DECODER_ENV: &str = "SLUICE_JSON_DECODER";

/// String data per built batch before it is cut (keeps `i32` offsets far from overflow).
const MAX_BATCH_STRING_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Utf8,
    Float64,
    Int64,
    Int32,
    Int16,
    Boolean,
    /// Microseconds in the column's time zone (Sluice's `timestamp`).
    Timestamp(Tz),
}

#[derive(Debug)]
struct FieldPlan {
    name: Box<[u8]>,
    kind: Kind,
    nullable: bool,
    /// Whether the column is built (the query reads it, or it may not be null).
    built: bool,
}

/// What a JSON value token is, as far as a column is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Token {
    Str { escaped: bool },
    Number,
    True,
    False,
    Null,
    Nested,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    token: Token,
}

/// A field's typed value while a row is checked; strings by position in the record.
#[derive(Clone, Copy, Debug)]
enum Value {
    Null,
    Str {
        start: usize,
        end: usize,
        escaped: bool,
    },
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Row {
    Built,
    Filtered,
    /// Not certain to decode as arrow-json does: leave it to arrow-json.
    Defer,
}

/// A line of a run that did not decode whole, as it decodes alone.
enum Alone {
    Blank,
    /// Taken by this scan.
    Fast,
    /// Decoded by arrow-json (the scan could not take it).
    Reference(Vec<RecordBatch>),
    /// arrow-json's error for it.
    Bad(String),
}

/// Rows, bad records and the count of rows the pushed predicates dropped, of a run of lines.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    pub bad: Vec<BadRecord>,
    /// Records read, found valid and dropped by the pushed predicates (input rows all the same).
    pub filtered: u64,
}

/// A column being built.
enum Builder {
    Skip,
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
    },
    Float64 {
        values: Vec<f64>,
        valid: Vec<bool>,
    },
    /// Int64 and Timestamp.
    Int64 {
        values: Vec<i64>,
        valid: Vec<bool>,
    },
    Int32 {
        values: Vec<i32>,
        valid: Vec<bool>,
    },
    Int16 {
        values: Vec<i16>,
        valid: Vec<bool>,
    },
    Boolean {
        values: Vec<bool>,
        valid: Vec<bool>,
    },
}

/// Rows built so far for one run; `dry` checks without building.
struct Output {
    builders: Vec<Builder>,
    rows: usize,
    string_bytes: usize,
    batches: Vec<RecordBatch>,
    filtered: u64,
    dry: bool,
}

/// The scan of one source's JSON lines with its pushdown; reusable for every run of lines.
#[derive(Debug)]
pub struct JsonScan {
    schema: SchemaRef,
    fields: Vec<FieldPlan>,
    predicates: Vec<ScanPredicate>,
    /// Per field, where its value is in the current record (valid where `seen` has its bit).
    spans: Vec<Span>,
    values: Vec<Value>,
    scratch: Vec<u8>,
}

fn json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).copied().is_some_and(json_whitespace) {
        at += 1;
    }
    at
}

/// The index of the quote closing the string whose content starts at `from`, and whether the
/// string has escapes.
fn string_end(bytes: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut at = from;
    let mut escaped = false;
    loop {
        let found = memchr::memchr2(b'"', b'\\', bytes.get(at..)?)? + at;
        if bytes.get(found) == Some(&b'"') {
            return Some((found, escaped));
        }
        escaped = true;
        at = found + 2;
    }
}

/// The end (exclusive) of the object or array starting at `from`.
fn nested_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = from;
    loop {
        match bytes.get(at)? {
            b'"' => at = string_end(bytes, at + 1)?.0,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
        at += 1;
    }
}

/// The end (exclusive) and kind of the value starting at `from`.
fn value_end(bytes: &[u8], from: usize) -> Option<(usize, Token)> {
    match bytes.get(from)? {
        b'"' => {
            let (end, escaped) = string_end(bytes, from + 1)?;
            Some((end + 1, Token::Str { escaped }))
        }
        b'{' | b'[' => Some((nested_end(bytes, from)?, Token::Nested)),
        b't' => Some((from + 4, Token::True)),
        b'f' => Some((from + 5, Token::False)),
        b'n' => Some((from + 4, Token::Null)),
        b'-' | b'0'..=b'9' => {
            let mut end = from + 1;
            while bytes
                .get(end)
                .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            {
                end += 1;
            }
            Some((end, Token::Number))
        }
        _ => None,
    }
}

/// A JSON string's content with its (non-`\u`) escapes resolved, appended to `out`.
fn unescape(content: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut rest = content;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(rest.get(..at)?);
        let resolved = match rest.get(at + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => return None,
        };
        out.push(resolved);
        rest = rest.get(at + 2..)?;
    }
    out.extend_from_slice(rest);
    Some(())
}

/// arrow-json's integer parse: the integer type, else a float cast to it when it fits.
fn parse_int<T: lexical_core::FromLexical + num_traits::NumCast>(text: &[u8]) -> Option<T> {
    match lexical_core::parse::<T>(text) {
        Ok(v) => Some(v),
        Err(_) => lexical_core::parse::<f64>(text)
            .ok()
            .and_then(num_traits::NumCast::from),
    }
}

fn kind_of(data_type: &DataType) -> Option<Kind> {
    Some(match data_type {
        DataType::Utf8 => Kind::Utf8,
        DataType::Float64 => Kind::Float64,
        DataType::Int64 => Kind::Int64,
        DataType::Int32 => Kind::Int32,
        DataType::Int16 => Kind::Int16,
        DataType::Boolean => Kind::Boolean,
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) => {
            Kind::Timestamp(zone.parse::<Tz>().ok()?)
        }
        _ => return None,
    })
}

/// Whether the scan is switched off (`SLUICE_JSON_DECODER=arrow`).
fn switched_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var(DECODER_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("arrow")))
}

impl JsonScan {
    /// The scan of `schema` with `pushdown` (`None`: every column, no predicate). `None` when the
    /// schema has a type the scan does not build (float, date, binary: arrow-json decodes those
    /// sources), more than 64 columns, or the scan is switched off ([`DECODER_ENV`]).
    pub fn new(schema: &SchemaRef, pushdown: Option<&ScanPushdown>) -> Option<Self> {
        Self::build(schema, pushdown, switched_off())
    }

    fn build(schema: &SchemaRef, pushdown: Option<&ScanPushdown>, off: bool) -> Option<Self> {
        if off || schema.fields().len() > 64 {
            return None;
        }
        let fields = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let read = pushdown.is_none_or(|p| p.columns.get(i).copied().unwrap_or(true));
                Some(FieldPlan {
                    name: f.name().as_bytes().into(),
                    kind: kind_of(f.data_type())?,
                    nullable: f.is_nullable(),
                    built: read || !f.is_nullable(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let predicates = pushdown
            .map(|p| {
                p.predicates
                    .iter()
                    .filter(|p| p.column < fields.len())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let count = fields.len();
        Some(Self {
            schema: schema.clone(),
            fields,
            predicates,
            spans: vec![
                Span {
                    start: 0,
                    end: 0,
                    token: Token::Null,
                };
                count
            ],
            values: vec![Value::Null; count],
            scratch: Vec::new(),
        })
    }

    fn output(&self, dry: bool) -> Output {
        let builders = self
            .fields
            .iter()
            .map(|f| match (f.built && !dry, f.kind) {
                (false, _) => Builder::Skip,
                (true, Kind::Utf8) => Builder::Utf8 {
                    offsets: vec![0],
                    data: Vec::new(),
                    valid: Vec::new(),
                },
                (true, Kind::Float64) => Builder::Float64 {
                    values: Vec::new(),
                    valid: Vec::new(),
                },
                (true, Kind::Int64 | Kind::Timestamp(_)) => Builder::Int64 {
                    values: Vec::new(),
                    valid: Vec::new(),
                },
                (true, Kind::Int32) => Builder::Int32 {
                    values: Vec::new(),
                    valid: Vec::new(),
                },
                (true, Kind::Int16) => Builder::Int16 {
                    values: Vec::new(),
                    valid: Vec::new(),
                },
                (true, Kind::Boolean) => Builder::Boolean {
                    values: Vec::new(),
                    valid: Vec::new(),
                },
            })
            .collect();
        Output {
            builders,
            rows: 0,
            string_bytes: 0,
            batches: Vec::new(),
            filtered: 0,
            dry,
        }
    }

    /// Decodes whole lines (no header) whose first line is line `first_line` of the file: the
    /// same rows (in the columns the query reads) and bad records as the reference decoder,
    /// minus the rows the pushed predicates drop (counted in [`Decoded::filtered`]).
    ///
    /// # Errors
    /// [`EngineError::Arrow`] as the reference decoder; [`EngineError::Internal`] if a line taken
    /// once is not taken again (a bug).
    pub fn decode_lines(&mut self, origin: &str, body: &[u8], first_line: u64) -> Result<Decoded> {
        let mut out = self.output(false);
        if self.take(body, &mut out)? {
            return self.finish(out);
        }
        let lines = split_lines(body);
        let mut alone = Vec::with_capacity(lines.len());
        let mut dry = self.output(true);
        for &(start, end) in &lines {
            let line = body.get(start..end).unwrap_or_default();
            alone.push(if line.iter().all(|b| json_whitespace(*b)) {
                Alone::Blank
            } else if self.take(line, &mut dry)? {
                Alone::Fast
            } else {
                let mut one = line.to_vec();
                one.push(b'\n');
                match decode_all(&self.schema, &TextFormat::Json, &one) {
                    Ok(batches) => Alone::Reference(batches),
                    Err(e) => Alone::Bad(e.to_string()),
                }
            });
        }
        let mut out = self.output(false);
        let mut bad = Vec::new();
        let Some(first_bad) = alone.iter().position(|a| matches!(a, Alone::Bad(_))) else {
            // Every line decodes alone, so the run decodes whole: the lines' rows in order.
            self.emit_from(body, &lines, &alone, &mut out)?;
            return self.finish(out);
        };
        let rest = lines
            .get(first_bad)
            .and_then(|&(start, _)| body.get(start..))
            .unwrap_or_default();
        if let Ok(batches) = decode_all(&self.schema, &TextFormat::Json, rest) {
            // Records spanning lines: the run decodes whole after all.
            self.emit_from(
                body,
                lines.get(..first_bad).unwrap_or_default(),
                &alone,
                &mut out,
            )?;
            out.push_batches(&self.fields, &self.schema, batches)?;
            return self.finish(out);
        }
        for (chunk_index, chunk) in lines.chunks(FALLBACK_CHUNK_LINES).enumerate() {
            let offset = chunk_index * FALLBACK_CHUNK_LINES;
            let kinds = alone.get(offset..offset + chunk.len()).unwrap_or_default();
            let Some(k) = kinds.iter().position(|a| matches!(a, Alone::Bad(_))) else {
                self.emit_from(body, chunk, kinds, &mut out)?;
                continue;
            };
            let rest = join_lines(body, chunk.get(k..).unwrap_or_default());
            if let Ok(batches) = decode_all(&self.schema, &TextFormat::Json, &rest) {
                self.emit_from(body, chunk.get(..k).unwrap_or_default(), kinds, &mut out)?;
                out.push_batches(&self.fields, &self.schema, batches)?;
                continue;
            }
            for (i, (&(start, end), kind)) in chunk.iter().zip(kinds).enumerate() {
                let line = body.get(start..end).unwrap_or_default();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match kind {
                    Alone::Bad(error) => bad.push(BadRecord {
                        origin: origin.to_string(),
                        line: first_line + (offset + i) as u64,
                        record: String::from_utf8_lossy(line).into_owned(),
                        error: error.clone(),
                    }),
                    _ => self.emit_line(line, kind, &mut out)?,
                }
            }
        }
        let mut decoded = self.finish(out)?;
        decoded.bad = bad;
        Ok(decoded)
    }

    /// Emits `lines` as they decode alone (`kinds`, in the same order).
    fn emit_from(
        &mut self,
        body: &[u8],
        lines: &[(usize, usize)],
        kinds: &[Alone],
        out: &mut Output,
    ) -> Result<()> {
        for (&(start, end), kind) in lines.iter().zip(kinds) {
            self.emit_line(body.get(start..end).unwrap_or_default(), kind, out)?;
        }
        Ok(())
    }

    fn emit_line(&mut self, line: &[u8], kind: &Alone, out: &mut Output) -> Result<()> {
        match kind {
            Alone::Blank | Alone::Bad(_) => Ok(()),
            Alone::Fast => {
                if self.take(line, out)? {
                    Ok(())
                } else {
                    Err(EngineError::Internal(
                        "the JSON scan took a line once and not again".into(),
                    ))
                }
            }
            Alone::Reference(batches) => {
                out.push_batches(&self.fields, &self.schema, batches.clone())
            }
        }
    }

    fn finish(&self, mut out: Output) -> Result<Decoded> {
        out.flush(&self.fields, &self.schema)?;
        Ok(Decoded {
            batches: out.batches,
            bad: Vec::new(),
            filtered: out.filtered,
        })
    }

    /// Takes `bytes` whole (appending its rows to `out`) when it is certain to decode as
    /// arrow-json decodes it; otherwise `out` is left as it was and `false` returned.
    fn take(&mut self, bytes: &[u8], out: &mut Output) -> Result<bool> {
        // `\u` escapes (lone surrogates: arrow-json refuses them, sonic-rs does not) and non-UTF-8
        // text (sonic-rs does not check it in values it skips) go to arrow-json.
        if memchr::memmem::find(bytes, b"\\u").is_some() || std::str::from_utf8(bytes).is_err() {
            return Ok(false);
        }
        out.maybe_flush(&self.fields, &self.schema)?;
        // Full batches go out within the run only when it is all of `out` (a rollback then
        // drops everything).
        let whole = out.rows == 0 && out.batches.is_empty();
        let mark = out.mark();
        let stream =
            sonic_rs::Deserializer::from_slice(bytes).into_stream::<sonic_rs::LazyValue<'_>>();
        for value in stream {
            let row = match value {
                Ok(value) => {
                    let record = value.as_raw_str().as_bytes();
                    if record.first() == Some(&b'{') {
                        self.row(record, out)
                    } else {
                        Row::Defer
                    }
                }
                Err(_) => Row::Defer,
            };
            if row == Row::Defer {
                out.rollback(mark);
                return Ok(false);
            }
            if whole {
                out.maybe_flush(&self.fields, &self.schema)?;
            }
        }
        Ok(true)
    }

    /// Checks one strict-JSON object (validated by sonic-rs) against the schema and the pushed
    /// predicates, and appends its built columns to `out`.
    fn row(&mut self, record: &[u8], out: &mut Output) -> Row {
        let Some(seen) = self.walk(record) else {
            return Row::Defer;
        };
        for (i, field) in self.fields.iter().enumerate() {
            let value = if seen & (1u64 << i) == 0 {
                Value::Null
            } else {
                let Some(span) = self.spans.get(i) else {
                    return Row::Defer;
                };
                match typed(record, *span, field.kind) {
                    Some(v) => v,
                    None => return Row::Defer,
                }
            };
            if matches!(value, Value::Null) && !field.nullable {
                return Row::Defer;
            }
            if let Some(slot) = self.values.get_mut(i) {
                *slot = value;
            }
        }
        for predicate in &self.predicates {
            let Some(value) = self.values.get(predicate.column).copied() else {
                continue;
            };
            self.scratch.clear();
            let Some(value) = field_value(record, value, &mut self.scratch) else {
                return Row::Defer;
            };
            if !predicate.test.passes(value) {
                if !out.dry {
                    out.filtered += 1;
                }
                return Row::Filtered;
            }
        }
        if out.dry {
            return Row::Built;
        }
        for (builder, value) in out.builders.iter_mut().zip(&self.values) {
            if !append(builder, record, *value, &mut out.string_bytes) {
                return Row::Defer;
            }
        }
        out.rows += 1;
        Row::Built
    }

    /// Finds where each schema field's value is in `record`; the bit set of the fields present.
    /// `None` for a duplicate schema field (arrow-json keeps the last one unchecked) or an escaped
    /// key: arrow-json decides those.
    fn walk(&mut self, record: &[u8]) -> Option<u64> {
        let mut seen = 0u64;
        let mut at = skip_whitespace(record, 1);
        if record.get(at) == Some(&b'}') {
            return Some(seen);
        }
        loop {
            if record.get(at) != Some(&b'"') {
                return None;
            }
            let (key_end, escaped) = string_end(record, at + 1)?;
            if escaped {
                return None;
            }
            let key = record.get(at + 1..key_end)?;
            at = skip_whitespace(record, key_end + 1);
            if record.get(at) != Some(&b':') {
                return None;
            }
            at = skip_whitespace(record, at + 1);
            let (end, token) = value_end(record, at)?;
            if let Some(i) = self.fields.iter().position(|f| *f.name == *key) {
                let bit = 1u64 << i;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                *self.spans.get_mut(i)? = Span {
                    start: at,
                    end,
                    token,
                };
            }
            at = skip_whitespace(record, end);
            match record.get(at)? {
                b',' => at = skip_whitespace(record, at + 1),
                b'}' => return Some(seen),
                _ => return None,
            }
        }
    }
}

/// The value of a field as its column takes it, exactly as arrow-json would; `None` when
/// arrow-json must decide (a type it would refuse, or a string it would parse as a number).
fn typed(record: &[u8], span: Span, kind: Kind) -> Option<Value> {
    let text = record.get(span.start..span.end)?;
    match (span.token, kind) {
        (Token::Null, _) => Some(Value::Null),
        (Token::Str { escaped }, Kind::Utf8) => Some(Value::Str {
            start: span.start + 1,
            end: span.end - 1,
            escaped,
        }),
        (Token::Number, Kind::Float64) => lexical_core::parse::<f64>(text).ok().map(Value::Float),
        (Token::Number, Kind::Int64) => parse_int::<i64>(text).map(Value::Int),
        (Token::Number, Kind::Int32) => parse_int::<i32>(text).map(|v| Value::Int(v.into())),
        (Token::Number, Kind::Int16) => parse_int::<i16>(text).map(|v| Value::Int(v.into())),
        (Token::True, Kind::Boolean) => Some(Value::Bool(true)),
        (Token::False, Kind::Boolean) => Some(Value::Bool(false)),
        (Token::Str { escaped: false }, Kind::Timestamp(zone)) => {
            let s = std::str::from_utf8(text.get(1..text.len() - 1)?).ok()?;
            string_to_datetime(&zone, s)
                .ok()
                .map(|t| Value::Int(t.timestamp_micros()))
        }
        (Token::Number, Kind::Timestamp(_)) => lexical_core::parse::<i64>(text)
            .or_else(|_| lexical_core::parse::<f64>(text).map(|x| x as i64))
            .ok()
            .map(Value::Int),
        _ => None,
    }
}

/// A checked value as the predicates see it (escaped strings resolved into `scratch`).
fn field_value<'a>(
    record: &'a [u8],
    value: Value,
    scratch: &'a mut Vec<u8>,
) -> Option<FieldValue<'a>> {
    Some(match value {
        Value::Null => FieldValue::Null,
        Value::Str {
            start,
            end,
            escaped,
        } => {
            let content = record.get(start..end)?;
            if escaped {
                unescape(content, scratch)?;
                FieldValue::Str(scratch)
            } else {
                FieldValue::Str(content)
            }
        }
        Value::Int(v) => FieldValue::Int(v),
        Value::Float(v) => FieldValue::Float(v),
        Value::Bool(v) => FieldValue::Bool(v),
    })
}

/// Appends one checked value to its column; `false` if it does not fit the column (a bug).
fn append(builder: &mut Builder, record: &[u8], value: Value, string_bytes: &mut usize) -> bool {
    let is_valid = !matches!(value, Value::Null);
    match (builder, value) {
        (Builder::Skip, _) => true,
        (
            Builder::Utf8 {
                offsets,
                data,
                valid,
            },
            _,
        ) => {
            if let Value::Str {
                start,
                end,
                escaped,
            } = value
            {
                let Some(content) = record.get(start..end) else {
                    return false;
                };
                if escaped {
                    if unescape(content, data).is_none() {
                        return false;
                    }
                } else {
                    data.extend_from_slice(content);
                }
            } else if is_valid {
                return false;
            }
            *string_bytes = data.len();
            let Ok(offset) = i32::try_from(data.len()) else {
                return false;
            };
            offsets.push(offset);
            valid.push(is_valid);
            true
        }
        (Builder::Float64 { values, valid }, v) => {
            values.push(if let Value::Float(x) = v { x } else { 0.0 });
            valid.push(is_valid);
            is_valid == matches!(v, Value::Float(_))
        }
        (Builder::Int64 { values, valid }, v) => {
            values.push(if let Value::Int(x) = v { x } else { 0 });
            valid.push(is_valid);
            is_valid == matches!(v, Value::Int(_))
        }
        (Builder::Int32 { values, valid }, v) => {
            let x = if let Value::Int(x) = v {
                i32::try_from(x).ok()
            } else {
                Some(0)
            };
            values.push(x.unwrap_or_default());
            valid.push(is_valid);
            x.is_some() && is_valid == matches!(v, Value::Int(_))
        }
        (Builder::Int16 { values, valid }, v) => {
            let x = if let Value::Int(x) = v {
                i16::try_from(x).ok()
            } else {
                Some(0)
            };
            values.push(x.unwrap_or_default());
            valid.push(is_valid);
            x.is_some() && is_valid == matches!(v, Value::Int(_))
        }
        (Builder::Boolean { values, valid }, v) => {
            values.push(matches!(v, Value::Bool(true)));
            valid.push(is_valid);
            is_valid == matches!(v, Value::Bool(_))
        }
    }
}

fn nulls(valid: &mut Vec<bool>) -> Option<NullBuffer> {
    let all_valid = valid.iter().all(|v| *v);
    let taken = std::mem::take(valid);
    (!all_valid).then(|| NullBuffer::from(taken))
}

impl Output {
    /// Rows and batches so far, to return to with [`Output::rollback`].
    fn mark(&self) -> (usize, usize, u64) {
        (self.rows, self.batches.len(), self.filtered)
    }

    fn rollback(&mut self, (rows, batches, filtered): (usize, usize, u64)) {
        if self.batches.len() > batches {
            // Rows went out in a batch since the mark: only in a run taken whole, whose output
            // is then dropped as a whole (a fresh `Output` per run).
            self.batches.truncate(batches);
            self.rows = 0;
            for builder in &mut self.builders {
                truncate(builder, 0);
            }
        } else {
            self.rows = rows;
            for builder in &mut self.builders {
                truncate(builder, rows);
            }
        }
        self.filtered = filtered;
        self.string_bytes = self
            .builders
            .iter()
            .map(|b| match b {
                Builder::Utf8 { data, .. } => data.len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
    }

    /// Appends batches of the full schema decoded by arrow-json, after the rows built so far.
    fn push_batches(
        &mut self,
        fields: &[FieldPlan],
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        self.flush(fields, schema)?;
        self.batches
            .extend(batches.into_iter().filter(|b| b.num_rows() > 0));
        Ok(())
    }

    fn flush(&mut self, fields: &[FieldPlan], schema: &SchemaRef) -> Result<()> {
        if self.rows == 0 || self.dry {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        self.string_bytes = 0;
        let columns = self
            .builders
            .iter_mut()
            .zip(fields)
            .zip(schema.fields())
            .map(|((builder, plan), field)| finish_column(builder, plan, field.data_type(), rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.batches
            .push(RecordBatch::try_new(schema.clone(), columns)?);
        Ok(())
    }

    /// Flushes a full batch between records of a run taken whole.
    fn maybe_flush(&mut self, fields: &[FieldPlan], schema: &SchemaRef) -> Result<()> {
        if self.rows >= BATCH_ROWS || self.string_bytes >= MAX_BATCH_STRING_BYTES {
            self.flush(fields, schema)?;
        }
        Ok(())
    }
}

fn truncate(builder: &mut Builder, rows: usize) {
    match builder {
        Builder::Skip => {}
        Builder::Utf8 {
            offsets,
            data,
            valid,
        } => {
            offsets.truncate(rows + 1);
            let end = offsets.last().copied().unwrap_or(0);
            data.truncate(usize::try_from(end).unwrap_or(0));
            valid.truncate(rows);
        }
        Builder::Float64 { values, valid } => {
            values.truncate(rows);
            valid.truncate(rows);
        }
        Builder::Int64 { values, valid } => {
            values.truncate(rows);
            valid.truncate(rows);
        }
        Builder::Int32 { values, valid } => {
            values.truncate(rows);
            valid.truncate(rows);
        }
        Builder::Int16 { values, valid } => {
            values.truncate(rows);
            valid.truncate(rows);
        }
        Builder::Boolean { values, valid } => {
            values.truncate(rows);
            valid.truncate(rows);
        }
    }
}

fn finish_column(
    builder: &mut Builder,
    plan: &FieldPlan,
    data_type: &DataType,
    rows: usize,
) -> Result<ArrayRef> {
    Ok(match builder {
        Builder::Skip => new_null_array(data_type, rows),
        Builder::Utf8 {
            offsets,
            data,
            valid,
        } => {
            let offsets =
                OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
            let data = std::mem::take(data);
            Arc::new(StringArray::try_new(offsets, data.into(), nulls(valid))?)
        }
        Builder::Float64 { values, valid } => Arc::new(Float64Array::try_new(
            std::mem::take(values).into(),
            nulls(valid),
        )?),
        Builder::Int64 { values, valid } => {
            let values = std::mem::take(values).into();
            match plan.kind {
                Kind::Timestamp(_) => Arc::new(
                    TimestampMicrosecondArray::try_new(values, nulls(valid))?
                        .with_data_type(data_type.clone()),
                ),
                _ => Arc::new(Int64Array::try_new(values, nulls(valid))?),
            }
        }
        Builder::Int32 { values, valid } => Arc::new(Int32Array::try_new(
            std::mem::take(values).into(),
            nulls(valid),
        )?),
        Builder::Int16 { values, valid } => Arc::new(Int16Array::try_new(
            std::mem::take(values).into(),
            nulls(valid),
        )?),
        Builder::Boolean { values, valid } => {
            let values = std::mem::take(values);
            Arc::new(BooleanArray::new(values.into(), nulls(valid)))
        }
    })
}

/// Decodes `body` (whole lines, no header) with the scan and with arrow-json alone, and describes
/// the first difference: rows (the scan's unread columns compared as the nulls they must be),
/// bad records, or a row neither returned nor counted. For the differential fuzz target and tests;
/// `Ok` also when the scan does not take `schema` (nothing to compare).
///
/// # Errors
/// The difference, as text.
pub fn compare_with_reference(
    schema: &SchemaRef,
    columns: Option<&[bool]>,
    body: &[u8],
) -> std::result::Result<(), String> {
    let pushdown = columns.map(|c| ScanPushdown {
        columns: c.to_vec(),
        predicates: Vec::new(),
    });
    let Some(mut scan) = JsonScan::build(schema, pushdown.as_ref(), false) else {
        return Ok(());
    };
    let (expected, expected_bad) =
        crate::source::reference::decode_lines(schema, &TextFormat::Json, "f", body, 1)
            .map_err(|e| format!("reference failed: {e}"))?;
    let decoded = scan
        .decode_lines("f", body, 1)
        .map_err(|e| format!("scan failed: {e}"))?;
    if decoded.bad != expected_bad {
        return Err(format!(
            "bad records differ: scan {:?}, arrow-json {:?}",
            decoded.bad, expected_bad
        ));
    }
    let concat = |batches: &[RecordBatch]| {
        arrow::compute::concat_batches(schema, batches).map_err(|e| e.to_string())
    };
    let (expected, got) = (concat(&expected)?, concat(&decoded.batches)?);
    if got.num_rows() as u64 + decoded.filtered != expected.num_rows() as u64 {
        return Err(format!(
            "{} rows returned and {} filtered, arrow-json has {}",
            got.num_rows(),
            decoded.filtered,
            expected.num_rows()
        ));
    }
    // Unread columns are not compared: a deferred line's rows come whole from arrow-json.
    for (i, field) in schema.fields().iter().enumerate() {
        if !scan.fields.get(i).is_some_and(|f| f.built) {
            continue;
        }
        let (have, want) = (got.column(i), expected.column(i));
        if have != want {
            return Err(format!(
                "column {} differs: scan {have:?}, arrow-json {want:?}",
                field.name()
            ));
        }
    }
    Ok(())
}
