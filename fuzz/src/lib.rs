//! Shared checks of the fuzz targets (`fuzz_targets/`): the text decoders' contract, the fixed
//! schemas the inputs are decoded and planned against.
//!
//! A target fails (libFuzzer reports a crash and saves the input) on a panic anywhere, and on a
//! broken contract asserted here.

use arrow::datatypes::SchemaRef;
use sluice_crds::ColumnSpec;
use sluice_worker::source::decode::{TextFileDecoder, TextFormat, bad_records_jsonl, decode_text};

/// The schema records are decoded into: one column of each manifest type.
pub fn record_schema() -> SchemaRef {
    let columns: Vec<ColumnSpec> = serde_json::from_value(serde_json::json!([
        {"name": "deviceId", "type": "string"},
        {"name": "temperature", "type": "double"},
        {"name": "count", "type": "long"},
        {"name": "level", "type": "int"},
        {"name": "ok", "type": "boolean"},
        {"name": "timestamp", "type": "timestamp"},
        {"name": "day", "type": "date", "nullable": false},
    ]))
    .expect("fixed column list");
    sluice_worker::schema::arrow_schema(&columns).expect("fixed schema")
}

/// Decodes `data` in one piece ([`decode_text`], as the Kafka source and static tables do) and
/// streamed ([`TextFileDecoder`], as the file source does), with piece sizes, chunk size and
/// record size limit taken from `knobs`, and checks the bad-record routing contract:
/// - content never fails the decode (malformed records become bad records, the rest decodes);
/// - decoded batches have the declared schema;
/// - bad records have a line number within the input and serialize to one JSON line each.
pub fn check_text_decoding(format: &TextFormat, knobs: [u8; 3], data: &[u8]) {
    let schema = record_schema();
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;

    let (batches, bad) = decode_text(&schema, format, "fuzz", data)
        .unwrap_or_else(|e| panic!("decode_text failed instead of routing bad records: {e}"));
    check_output(&schema, &batches, &bad, lines);

    let piece = 1 + usize::from(knobs[0] % 64);
    // Up to 4 KiB (libFuzzer's default input size limit): from a decode per piece to one.
    let chunk_bytes = 1 + 16 * usize::from(knobs[1]);
    let max_record_bytes = 8 + 4 * usize::from(knobs[2]);
    let mut decoder = TextFileDecoder::new(schema.clone(), format.clone(), "fuzz".into())
        .with_chunk_bytes(chunk_bytes)
        .with_max_record_bytes(max_record_bytes);
    for part in data.chunks(piece) {
        decoder
            .push(part)
            .unwrap_or_else(|e| panic!("push failed instead of routing bad records: {e}"));
        if decoder.ready() {
            decoder
                .decode_ready()
                .unwrap_or_else(|e| panic!("decode_ready failed: {e}"));
        }
    }
    let (batches, bad) = decoder
        .finish()
        .unwrap_or_else(|e| panic!("finish failed instead of routing bad records: {e}"));
    check_output(&schema, &batches, &bad, lines);
    for record in &bad {
        // An over-long record keeps only its first KEPT_PREFIX_BYTES (lossy UTF-8 may add up to
        // 2 bytes per replaced byte).
        assert!(
            record.record.len() <= 3 * max_record_bytes.max(TextFileDecoder::KEPT_PREFIX_BYTES),
            "bad record of {} bytes kept, limit {max_record_bytes}",
            record.record.len()
        );
    }
}

fn check_output(
    schema: &SchemaRef,
    batches: &[arrow::array::RecordBatch],
    bad: &[sluice_worker::source::decode::BadRecord],
    lines: u64,
) {
    for batch in batches {
        assert_eq!(batch.schema(), *schema, "decoded batch with another schema");
    }
    for record in bad {
        assert!(
            (1..=lines).contains(&record.line),
            "bad record at line {} of {lines}: {record:?}",
            record.line
        );
    }
    let jsonl = bad_records_jsonl(bad);
    let written: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&jsonl)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("bad records are JSON lines");
    assert_eq!(written.len(), bad.len(), "one JSON line per bad record");
}
