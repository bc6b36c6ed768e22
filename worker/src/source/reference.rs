//! The reference decoders: whole buffers of JSON lines or CSV through arrow-json / arrow-csv, and
//! the line splitting their bad-record fallback needs. The file decoder
//! ([`super::decode::TextFileDecoder`]) and the SIMD JSON scan ([`super::scan::json`]) both build
//! on them; the scan's differential tests hold it to [`decode_lines`].

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::bad_record::BadRecord;
use crate::error::Result;

/// Rows per decoded Arrow batch.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Lines per retry chunk when a buffer has a malformed record.
pub const FALLBACK_CHUNK_LINES: usize = 1024;

/// A text record format: JSON lines or CSV.
#[derive(Debug, Clone)]
pub enum TextFormat {
    Json,
    Csv { header: bool, delimiter: u8 },
}

/// Decodes whole lines (no header) whose first line is line `first_line` of the file, with the
/// reference decoders alone (arrow-json, arrow-csv): the good rows in order and the bad records.
///
/// # Errors
/// [`crate::error::EngineError::Arrow`] only for failures unrelated to record content (should not happen).
pub fn decode_lines(
    schema: &SchemaRef,
    format: &TextFormat,
    origin: &str,
    body: &[u8],
    first_line: u64,
) -> Result<(Vec<RecordBatch>, Vec<BadRecord>)> {
    if let Ok(batches) = decode_all(schema, format, body) {
        return Ok((batches, Vec::new()));
    }
    // Slow path: find the bad lines, decode the rest together.
    let lines = split_lines(body);
    let mut good = Vec::with_capacity(body.len());
    let mut bad = Vec::new();
    for (chunk_index, chunk) in lines.chunks(FALLBACK_CHUNK_LINES).enumerate() {
        let chunk_bytes = join_lines(body, chunk);
        if decode_all(schema, format, &chunk_bytes).is_ok() {
            good.extend_from_slice(&chunk_bytes);
            continue;
        }
        for (i, &(start, end)) in chunk.iter().enumerate() {
            // Ranges come from `split_lines(body)`: always in bounds.
            let line = body.get(start..end).unwrap_or_default();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut one = line.to_vec();
            one.push(b'\n');
            match decode_all(schema, format, &one) {
                Ok(_) => good.extend_from_slice(&one),
                Err(e) => bad.push(BadRecord {
                    origin: origin.to_string(),
                    line: first_line + (chunk_index * FALLBACK_CHUNK_LINES + i) as u64,
                    record: String::from_utf8_lossy(line).into_owned(),
                    error: e.to_string(),
                }),
            }
        }
    }
    let batches = decode_all(schema, format, &good)?;
    Ok((batches, bad))
}

/// Decodes `data` with arrow-json or arrow-csv (the reference decoders), failing on any bad record.
pub(crate) fn decode_all(
    schema: &SchemaRef,
    format: &TextFormat,
    data: &[u8],
) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    // The decoders allocate buffers for a whole batch up front (arrow-csv: offsets for
    // rows × columns, zeroed), so a decoder sized for BATCH_ROWS costs megabytes even for the one
    // line the bad-record fallback retries. A line holds about one record: size by line count (a
    // fuller batch is flushed and decoding goes on).
    let batch_rows = (memchr::memchr_iter(b'\n', data).count() + 1).min(BATCH_ROWS);
    match format {
        TextFormat::Json => {
            let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                .build_decoder()?;
            let mut offset = 0;
            while let Some(rest) = data.get(offset..).filter(|r| !r.is_empty()) {
                let consumed = decoder.decode(rest)?;
                offset += consumed;
                if let Some(batch) = decoder.flush()? {
                    batches.push(batch);
                }
                if consumed == 0 {
                    break;
                }
            }
            if let Some(batch) = decoder.flush()? {
                batches.push(batch);
            }
        }
        TextFormat::Csv { delimiter, .. } => {
            let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(false)
                .with_delimiter(*delimiter)
                .with_batch_size(batch_rows)
                .build_decoder();
            let mut offset = 0;
            loop {
                let consumed = decoder.decode(data.get(offset..).unwrap_or_default())?;
                offset += consumed;
                // decode returns 0 when the batch is full or the input is exhausted.
                if consumed == 0 || decoder.capacity() == 0 {
                    match decoder.flush()? {
                        Some(batch) if batch.num_rows() > 0 => batches.push(batch),
                        _ if offset >= data.len() => break,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
}

pub(crate) fn memchr_newline(data: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', data.get(from..)?).map(|p| p + from)
}

/// `(start, end)` byte ranges of the lines, without their `\n` (and `\r`).
pub(crate) fn split_lines(data: &[u8]) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = memchr_newline(data, start).unwrap_or(data.len());
        let trimmed = if end > start && data.get(end - 1) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        lines.push((start, trimmed));
        start = end + 1;
    }
    lines
}

/// The given lines of `data`, each ended by `\n`.
pub(crate) fn join_lines(data: &[u8], lines: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, end) in lines {
        out.extend_from_slice(data.get(start..end).unwrap_or_default());
        out.push(b'\n');
    }
    out
}
