//! Decoding records (JSON lines, CSV, Parquet) into Arrow against a declared schema, with malformed
//! records set aside instead of failing the batch (Spark's PERMISSIVE mode, minus the corrupt column).
//!
//! The fast path decodes a whole buffer with arrow-json / arrow-csv. Only when that fails does it
//! fall back to chunks of [`FALLBACK_CHUNK_LINES`] lines, and within a failing chunk to single lines,
//! so a clean file costs one pass and a dirty one costs a little more, never a lost good row.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use crate::bad_record::{BadRecord, bad_records_jsonl, fail_on};
use crate::error::{EngineError, Result};
pub use crate::source::parquet::decode_parquet;
pub use crate::source::reference::{BATCH_ROWS, FALLBACK_CHUNK_LINES, TextFormat, decode_lines};
use crate::source::scan::ScanPushdown;
use crate::source::scan::json::JsonScan;

/// Decodes a whole text buffer (one file) into batches of `schema`.
///
/// Returns the good rows (in file order) and the bad records. A CSV header line is skipped.
///
/// # Errors
/// [`EngineError::Arrow`] only for failures unrelated to record content (should not happen).
pub fn decode_text(
    schema: &SchemaRef,
    format: &TextFormat,
    origin: &str,
    data: &[u8],
) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
    let mut decoder = TextFileDecoder::new(schema.clone(), format.clone(), origin.to_string());
    decoder.push(data)?;
    decoder.finish()
}

/// Decodes a text file that arrives in pieces (an object store stream), a run of whole lines at a
/// time once [`TextFileDecoder::CHUNK_BYTES`] are buffered, so a large file is never held whole:
/// the buffer is reused (no fresh, kernel-zeroed pages per file) and only the decoded columns grow.
/// Line numbers of bad records count from the start of the file; a CSV header line is skipped.
pub struct TextFileDecoder {
    schema: SchemaRef,
    format: TextFormat,
    origin: String,
    pending: Vec<u8>,
    /// 1-based file line number of the first line in `pending`.
    next_line: u64,
    header_pending: bool,
    chunk_bytes: usize,
    /// Longest record (line) kept; longer ones become bad records.
    max_record_bytes: usize,
    /// Bytes of the unfinished last line in `pending`.
    tail_bytes: usize,
    /// Discarding the rest of an over-long line (its bad record is out already).
    skipping: bool,
    batches: Vec<RecordBatch>,
    bad: Vec<BadRecord>,
    /// The validating scan for JSON lines (`None`: arrow-json / arrow-csv decode everything).
    json: Option<JsonScan>,
    /// Rows the scan's pushed predicates dropped.
    filtered: u64,
}

impl TextFileDecoder {
    /// Buffered bytes at which a run of whole lines is decoded (8 MiB).
    pub const CHUNK_BYTES: usize = 8 << 20;
    /// Default longest record (`maxRecordBytes`, 16 MiB).
    pub const MAX_RECORD_BYTES: usize = 16 << 20;
    /// Bytes of an over-long record kept in its bad record.
    pub const KEPT_PREFIX_BYTES: usize = 1024;

    /// A decoder for one file (`origin` names it in bad records).
    pub fn new(schema: SchemaRef, format: TextFormat, origin: String) -> Self {
        let header_pending = matches!(format, TextFormat::Csv { header: true, .. });
        let json = match format {
            TextFormat::Json => JsonScan::new(&schema, None),
            TextFormat::Csv { .. } => None,
        };
        Self {
            schema,
            format,
            origin,
            pending: Vec::new(),
            next_line: 1,
            header_pending,
            chunk_bytes: Self::CHUNK_BYTES,
            max_record_bytes: Self::MAX_RECORD_BYTES,
            tail_bytes: 0,
            skipping: false,
            batches: Vec::new(),
            bad: Vec::new(),
            json,
            filtered: 0,
        }
    }

    /// The same decoder reading only what `pushdown` asks for (JSON lines; see
    /// [`crate::source::scan`]): unread columns come back as nulls, rows failing its predicates
    /// are validated and counted ([`TextFileDecoder::finish_counted`]), not returned.
    pub fn with_pushdown(mut self, pushdown: Option<&ScanPushdown>) -> Self {
        if matches!(self.format, TextFormat::Json) {
            self.json = JsonScan::new(&self.schema, pushdown);
        }
        self
    }

    /// The same decoder with another chunk size (tests cross chunk boundaries with small ones).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }

    /// The same decoder with another record size limit (`maxRecordBytes`).
    pub fn with_max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes.max(1);
        self
    }

    /// Appends the next bytes of the file. A line growing past the record size limit becomes a
    /// bad record and the rest of it is skipped, so the buffer stays bounded.
    ///
    /// # Errors
    /// As [`decode_text`] (the whole lines before an over-long one are decoded first).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let newline = memchr::memchr(b'\n', bytes);
            if self.skipping {
                let Some(end) = newline else {
                    return Ok(());
                };
                self.skipping = false;
                self.next_line += 1;
                bytes = bytes.get(end + 1..).unwrap_or_default();
                continue;
            }
            match newline {
                Some(end) => {
                    let (line, rest) = bytes.split_at(end + 1);
                    if self.tail_bytes + end > self.max_record_bytes {
                        self.over_long(line)?;
                        self.next_line += 1;
                    } else {
                        self.pending.extend_from_slice(line);
                        self.tail_bytes = 0;
                    }
                    bytes = rest;
                }
                None => {
                    if self.tail_bytes + bytes.len() > self.max_record_bytes {
                        self.over_long(bytes)?;
                        self.skipping = true;
                    } else {
                        self.pending.extend_from_slice(bytes);
                        self.tail_bytes += bytes.len();
                    }
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// Reports the unfinished line (its buffered start plus `more`) as a bad record: decodes the
    /// whole lines before it, keeps its first [`Self::KEPT_PREFIX_BYTES`] bytes, empties the buffer.
    fn over_long(&mut self, more: &[u8]) -> Result<()> {
        let tail_start = self.pending.len().saturating_sub(self.tail_bytes);
        if tail_start > 0 {
            self.decode_through(tail_start)?;
        }
        let mut prefix = std::mem::take(&mut self.pending);
        prefix.extend_from_slice(more.get(..Self::KEPT_PREFIX_BYTES).unwrap_or(more));
        prefix.truncate(Self::KEPT_PREFIX_BYTES);
        self.bad.push(BadRecord {
            origin: self.origin.clone(),
            line: self.next_line,
            record: String::from_utf8_lossy(&prefix).into_owned(),
            error: format!(
                "record longer than maxRecordBytes ({} bytes); only its first {} bytes are kept here",
                self.max_record_bytes,
                Self::KEPT_PREFIX_BYTES
            ),
        });
        self.tail_bytes = 0;
        Ok(())
    }

    /// Whether enough is buffered for [`Self::decode_ready`] to be worth a call.
    pub fn ready(&self) -> bool {
        self.pending.len() >= self.chunk_bytes
    }

    /// Decodes the buffered whole lines, keeping a trailing partial line.
    ///
    /// # Errors
    /// As [`decode_text`].
    pub fn decode_ready(&mut self) -> Result<()> {
        match memchr::memrchr(b'\n', &self.pending) {
            Some(end) => self.decode_through(end + 1),
            None => Ok(()),
        }
    }

    /// Decodes everything left and returns the good rows (in file order) and the bad records.
    ///
    /// # Errors
    /// As [`decode_text`].
    pub fn finish(self) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
        let (batches, bad, _) = self.finish_counted()?;
        Ok((batches, bad))
    }

    /// As [`TextFileDecoder::finish`], with the count of valid rows that the pushed predicates
    /// dropped (input rows all the same).
    ///
    /// # Errors
    /// As [`decode_text`].
    pub fn finish_counted(mut self) -> Result<(Vec<RecordBatch>, Vec<BadRecord>, u64)> {
        let len = self.pending.len();
        self.decode_through(len)?;
        Ok((self.batches, self.bad, self.filtered))
    }

    /// Decodes `pending[..end]` (whole lines) and drops it from the buffer.
    fn decode_through(&mut self, end: usize) -> Result<()> {
        let mut start = 0;
        if self.header_pending && end > 0 {
            match memchr::memchr(b'\n', self.pending.get(..end).unwrap_or_default()) {
                Some(header_end) => {
                    start = header_end + 1;
                    self.header_pending = false;
                    self.next_line += 1;
                }
                None if end == self.pending.len() => {
                    // A header with no line after it: nothing to decode.
                    self.pending.clear();
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
        let body = self.pending.get(start..end).ok_or_else(|| {
            EngineError::Internal(format!(
                "decoder buffer range {start}..{end} out of {} bytes",
                self.pending.len()
            ))
        })?;
        let (batches, bad) = match &mut self.json {
            Some(scan) => {
                let decoded = scan.decode_lines(&self.origin, body, self.next_line)?;
                self.filtered += decoded.filtered;
                (decoded.batches, decoded.bad)
            }
            None => decode_lines(
                &self.schema,
                &self.format,
                &self.origin,
                body,
                self.next_line,
            )?,
        };
        self.batches.extend(batches);
        self.bad.extend(bad);
        self.next_line += memchr::memchr_iter(b'\n', body).count() as u64;
        self.pending.drain(..end);
        Ok(())
    }
}

/// An empty batch of `schema` (for sources with nothing to read).
pub fn empty(schema: &SchemaRef) -> RecordBatch {
    RecordBatch::new_empty(Arc::clone(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("deviceId", DataType::Utf8, true),
            Field::new("temperature", DataType::Float64, true),
        ]))
    }

    fn column_values(batches: &[RecordBatch]) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for batch in batches {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8");
            let temps = batch
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64");
            for i in 0..batch.num_rows() {
                out.push((ids.value(i).to_string(), temps.value(i)));
            }
        }
        out
    }

    #[test]
    fn json_bad_lines_are_set_aside_with_line_numbers() {
        let data = b"{\"deviceId\":\"a\",\"temperature\":1.5}\nnot json\n{\"deviceId\":\"b\",\"temperature\":\"hot\"}\n{\"deviceId\":\"c\",\"temperature\":3.0}\n";
        let (batches, bad) =
            decode_text(&schema(), &TextFormat::Json, "f.json", data).expect("decode");
        assert_eq!(
            column_values(&batches),
            vec![("a".into(), 1.5), ("c".into(), 3.0)]
        );
        let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3]);
        assert_eq!(bad[0].record, "not json");
        assert_eq!(bad[0].origin, "f.json");
    }

    #[test]
    fn clean_json_takes_the_fast_path() {
        let data = b"{\"deviceId\":\"a\",\"temperature\":1.5}\n{\"deviceId\":\"b\"}";
        let (batches, bad) = decode_text(&schema(), &TextFormat::Json, "f", data).expect("decode");
        assert!(bad.is_empty());
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert!(batches[0].column(1).is_null(1), "missing field is null");
    }

    #[test]
    fn csv_with_header_and_a_bad_row() {
        let data = b"deviceId,temperature\na,1.5\nb,warm\nc,3\n";
        let format = TextFormat::Csv {
            header: true,
            delimiter: b',',
        };
        let (batches, bad) = decode_text(&schema(), &format, "f.csv", data).expect("decode");
        assert_eq!(
            column_values(&batches),
            vec![("a".into(), 1.5), ("c".into(), 3.0)]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 3, "header is line 1");
    }

    /// A file streamed in small pieces and decoded a few lines at a time gives the same rows
    /// and the same bad-record line numbers as the whole file at once.
    #[test]
    fn streamed_pieces_decode_like_the_whole_file() {
        let mut json = String::new();
        for i in 0..40 {
            if i == 17 || i == 33 {
                json.push_str("{\"deviceId\": broken\n");
            } else {
                json.push_str(&format!(
                    "{{\"deviceId\":\"n{i}\",\"temperature\":{i}.5}}\n"
                ));
            }
        }
        let mut csv = String::from("deviceId,temperature\n");
        for i in 0..25 {
            if i == 20 {
                csv.push_str("x,not-a-number\n");
            } else {
                csv.push_str(&format!("c{i},{i}.25\n"));
            }
        }
        let csv_format = TextFormat::Csv {
            header: true,
            delimiter: b',',
        };
        for (format, data) in [(TextFormat::Json, json), (csv_format, csv)] {
            let (whole, whole_bad) =
                decode_text(&schema(), &format, "f", data.as_bytes()).expect("decode");
            let mut decoder =
                TextFileDecoder::new(schema(), format.clone(), "f".into()).with_chunk_bytes(50);
            for piece in data.as_bytes().chunks(7) {
                decoder.push(piece).expect("push");
                if decoder.ready() {
                    decoder.decode_ready().expect("decode");
                }
            }
            let (streamed, streamed_bad) = decoder.finish().expect("finish");
            assert_eq!(column_values(&streamed), column_values(&whole));
            assert_eq!(streamed_bad, whole_bad);
            assert!(!whole_bad.is_empty());
        }
        let (_, bad) = decode_text(
            &schema(),
            &TextFormat::Json,
            "f",
            b"{\"deviceId\":\"a\",\"temperature\":1}\nbroken\n",
        )
        .expect("decode");
        assert_eq!(bad[0].line, 2);
    }

    #[test]
    fn unreadable_parquet_is_one_bad_record() {
        let (batches, bad) = decode_parquet(
            &schema(),
            "x.parquet",
            bytes::Bytes::from_static(b"PAR1garbage"),
        )
        .expect("ok");
        assert!(batches.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 0);
    }

    #[test]
    fn a_record_longer_than_max_record_bytes_is_a_bad_record_and_the_buffer_stays_bounded() {
        let long = format!("{{\"id\": \"{}\"}}", "x".repeat(5000));
        let data = format!("{{\"id\": \"a\"}}\n{long}\n{{\"id\": \"b\"}}\n");
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Utf8, true),
        ]));
        for piece_size in [7, 100, 10_000] {
            let mut decoder = TextFileDecoder::new(schema.clone(), TextFormat::Json, "f".into())
                .with_max_record_bytes(1024);
            for piece in data.as_bytes().chunks(piece_size) {
                decoder.push(piece).expect("push");
                // At most the limit plus the short whole lines not decoded yet.
                assert!(decoder.pending.len() <= 1024 + 64, "bounded buffer");
            }
            let (batches, bad) = decoder.finish().expect("finish");
            let ids: Vec<String> = batches
                .iter()
                .flat_map(|b| {
                    let a = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .expect("utf8")
                        .clone();
                    (0..a.len()).map(move |i| a.value(i).to_string())
                })
                .collect();
            assert_eq!(ids, vec!["a", "b"], "pieces of {piece_size}");
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].line, 2);
            assert_eq!(bad[0].record.len(), 1024);
            assert!(
                bad[0].error.contains("maxRecordBytes (1024 bytes)"),
                "{}",
                bad[0].error
            );
        }
    }
}
