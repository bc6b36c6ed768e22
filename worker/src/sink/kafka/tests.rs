use super::*;
use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use std::sync::Arc as StdArc;

fn spec(format: KafkaFormat, key_column: Option<&str>) -> KafkaSinkSpec {
    KafkaSinkSpec {
        bootstrap_servers: "127.0.0.1:1".into(),
        topic: "out".into(),
        format,
        value_schema: None,
        message_type: None,
        schema_registry: None,
        key_column: key_column.map(str::to_string),
        exactly_once: false,
        options: Default::default(),
        secret_options: Default::default(),
    }
}

fn header<'a>(r: &'a OutRecord, key: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
}

#[test]
fn raw_rows_take_key_value_partition_and_get_dedup_headers() {
    let batch = RecordBatch::try_new(
        StdArc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("value", DataType::Int64, true),
            Field::new("partition", DataType::Int32, true),
        ])),
        vec![
            StdArc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            StdArc::new(arrow::array::Int64Array::from(vec![1, 2])),
            StdArc::new(Int32Array::from(vec![Some(3), None])),
        ],
    )
    .expect("batch");
    let sink = KafkaSink::new(&spec(KafkaFormat::Raw, None), "ns/q", "id-1").expect("sink");
    let records = sink.records(2, 17, &[batch]).expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(records[1].key, None);
    assert_eq!(records[0].value.as_deref(), Some(&b"1"[..]));
    assert_eq!(records[0].partition, Some(3));
    assert_eq!(records[1].partition, None);
    assert_eq!(header(&records[1], HEADER_QUERY), Some(&b"ns/q"[..]));
    assert_eq!(header(&records[1], HEADER_QUERY_ID), Some(&b"id-1"[..]));
    assert_eq!(header(&records[1], HEADER_TASK), Some(&b"2"[..]));
    assert_eq!(header(&records[1], HEADER_BATCH), Some(&b"17"[..]));
    assert_eq!(header(&records[1], HEADER_SEQ), Some(&b"1"[..]));
}

#[test]
fn raw_rows_without_value_are_a_user_error() {
    let batch = RecordBatch::try_new(
        StdArc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)])),
        vec![StdArc::new(StringArray::from(vec!["a"])) as ArrayRef],
    )
    .expect("batch");
    let sink = KafkaSink::new(&spec(KafkaFormat::Raw, None), "q", "id").expect("sink");
    let err = sink.records(0, 0, &[batch]).expect_err("no value");
    assert!(matches!(err, EngineError::InvalidQuery(_)), "{err}");
}

#[test]
fn json_and_csv_encode_whole_rows_with_key_column() {
    let batch = RecordBatch::try_new(
        StdArc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("t", DataType::Float64, true),
        ])),
        vec![
            StdArc::new(StringArray::from(vec!["d1", "d2"])) as ArrayRef,
            StdArc::new(Float64Array::from(vec![1.5, 2.0])),
        ],
    )
    .expect("batch");
    let sink = KafkaSink::new(&spec(KafkaFormat::Json, Some("id")), "q", "id").expect("sink");
    let records = sink
        .records(0, 0, std::slice::from_ref(&batch))
        .expect("json");
    assert_eq!(records[0].key.as_deref(), Some(&b"d1"[..]));
    assert_eq!(
        records[0].value.as_deref(),
        Some(&br#"{"id":"d1","t":1.5}"#[..])
    );
    let sink = KafkaSink::new(&spec(KafkaFormat::Csv, None), "q", "id").expect("sink");
    let records = sink
        .records(0, 0, std::slice::from_ref(&batch))
        .expect("csv");
    assert_eq!(records[1].value.as_deref(), Some(&b"d2,2.0"[..]));
    assert_eq!(records[1].key, None);
    let sink = KafkaSink::new(&spec(KafkaFormat::Json, Some("missing")), "q", "id").expect("sink");
    assert!(sink.records(0, 0, &[batch]).is_err());
}

#[test]
fn headers_of_the_wrong_type_are_a_user_error_not_a_panic() {
    // A list of strings where a list of {key, value} structs belongs (this used to panic).
    let list =
        arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
        ]);
    let batch = RecordBatch::try_new(
        StdArc::new(Schema::new(vec![
            Field::new("value", DataType::Utf8, true),
            Field::new("headers", list.data_type().clone(), true),
        ])),
        vec![
            StdArc::new(StringArray::from(vec!["v"])) as ArrayRef,
            StdArc::new(list) as ArrayRef,
        ],
    )
    .expect("batch");
    let sink = KafkaSink::new(&spec(KafkaFormat::Raw, None), "ns/q", "id-1").expect("sink");
    let err = sink.records(0, 0, &[batch]).expect_err("wrong type");
    assert!(
        matches!(err, EngineError::InvalidQuery(_)) && err.to_string().contains("`headers`"),
        "{err}"
    );
    // Not a list at all.
    let batch = RecordBatch::try_new(
        StdArc::new(Schema::new(vec![
            Field::new("value", DataType::Utf8, true),
            Field::new("headers", DataType::Utf8, true),
        ])),
        vec![
            StdArc::new(StringArray::from(vec!["v"])) as ArrayRef,
            StdArc::new(StringArray::from(vec!["h"])) as ArrayRef,
        ],
    )
    .expect("batch");
    let err = sink.records(0, 0, &[batch]).expect_err("wrong type");
    assert!(err.to_string().contains("not Utf8"), "{err}");
}
