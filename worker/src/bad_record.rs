//! Bad records: a record a source could not decode, kept with where it came from, written to the
//! bad-records location as JSON lines (one object per record: `origin`, `line`, `record`, `error`)
//! or turned into the `fail` policy's error. Shared by the sources and the Kafka value formats.

use serde::Serialize;

use crate::error::EngineError;

/// A record that did not decode, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    /// File path or source-specific origin (e.g. `topic/partition`).
    pub origin: String,
    /// 1-based line number (or Kafka offset); 0 when the whole file is unreadable.
    pub line: u64,
    /// The raw record, lossily as UTF-8 (empty for binary files).
    pub record: String,
    /// Why it did not decode.
    pub error: String,
}

/// Serializes bad records as JSON lines for the bad-records location.
pub fn bad_records_jsonl(records: &[BadRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        if let Ok(line) = serde_json::to_vec(record) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    out
}

/// An error for the `fail` policy, naming the first bad record.
pub fn fail_on(record: &BadRecord) -> EngineError {
    EngineError::BadRecord {
        file: record.origin.clone(),
        line: record.line,
        message: record.error.clone(),
    }
}
