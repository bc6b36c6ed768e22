use super::*;
use arrow::array::{Array, AsArray, Float64Array};
use arrow::datatypes::Int32Type;

fn record(partition: i32, offset: i64, value: &str) -> OwnedRecord {
    OwnedRecord {
        partition: TopicPartition {
            topic: "events".into(),
            partition,
        },
        offset,
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(value.as_bytes().to_vec()),
        timestamp_ms: Some(1_700_000_000_000 + offset),
        headers: vec![("h".into(), Some(b"v".to_vec()))],
    }
}

#[test]
fn starting_offsets_parse_earliest_latest_and_spark_json() {
    assert_eq!(
        StartingOffsets::parse("earliest").expect("earliest"),
        StartingOffsets::Earliest
    );
    assert_eq!(
        StartingOffsets::parse("latest").expect("latest"),
        StartingOffsets::Latest
    );
    let explicit = StartingOffsets::parse(r#"{"events":{"0":23,"1":-2,"2":-1}}"#).expect("json");
    let tp = |p| TopicPartition {
        topic: "events".into(),
        partition: p,
    };
    assert_eq!(explicit.offset_for(&tp(0)), Offset::Offset(23));
    assert_eq!(explicit.offset_for(&tp(1)), Offset::Beginning);
    assert_eq!(explicit.offset_for(&tp(2)), Offset::End);
    // Not listed: earliest.
    assert_eq!(explicit.offset_for(&tp(3)), Offset::Beginning);
    let err = StartingOffsets::parse("yesterday").expect_err("bad");
    assert!(err.to_string().contains("startingOffsets"), "{err}");
}

#[test]
fn partition_keys_round_trip_even_with_slashes_in_topic_names() {
    let tp = TopicPartition {
        topic: "a/b".into(),
        partition: 7,
    };
    assert_eq!(tp.key(), "a/b/7");
    assert_eq!(TopicPartition::parse("a/b/7"), Some(tp));
    assert_eq!(TopicPartition::parse("nopartition"), None);
}

#[test]
fn merged_range_spans_both_per_partition() {
    let a = serde_json::json!({"partitions": {"t/0": [0, 10], "t/1": [5, 6]}});
    let b = serde_json::json!({"partitions": {"t/0": [10, 15], "t/2": [0, 3]}});
    let merged = merge_ranges(&a, &b).expect("merge");
    assert_eq!(
        merged,
        serde_json::json!({"partitions": {"t/0": [0, 15], "t/1": [5, 6], "t/2": [0, 3]}})
    );
}

#[test]
fn raw_records_become_spark_kafka_columns() {
    let records = vec![record(0, 4, "a"), record(1, 9, "b")];
    let output = decode_records(&raw_schema(), None, &records).expect("decode");
    let batch = &output.batches[0];
    assert_eq!(batch.num_rows(), 2);
    let values = batch
        .column_by_name("value")
        .expect("value")
        .as_binary::<i32>();
    assert_eq!(values.value(1), b"b");
    let partitions = batch
        .column_by_name("partition")
        .expect("partition")
        .as_primitive::<Int32Type>();
    assert_eq!(partitions.values().to_vec(), vec![0, 1]);
    let headers = batch
        .column_by_name("headers")
        .expect("headers")
        .as_list::<i32>();
    let first = headers.value(0);
    let first = first.as_struct();
    assert_eq!(first.column(0).as_string::<i32>().value(0), "h");
    assert_eq!(first.column(1).as_binary::<i32>().value(0), b"v");
}

#[test]
fn json_values_decode_into_the_schema_and_bad_ones_name_partition_and_offset() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("t", DataType::Float64, true),
    ]));
    let records = vec![
        record(0, 10, r#"{"id":"a","t":1.5}"#),
        record(0, 11, "{broken"),
        record(2, 40, "{\"id\":\"b\",\n\"t\":2.5}"),
    ];
    let output = decode_records(&schema, Some(&TextFormat::Json), &records).expect("decode");
    let rows: usize = output.batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 2, "the value with a newline still decodes");
    let temps: Vec<f64> = output
        .batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(temps, vec![1.5, 2.5]);
    assert_eq!(output.bad_records.len(), 1);
    assert_eq!(output.bad_records[0].origin, "events/0");
    assert_eq!(output.bad_records[0].line, 11);
    assert_eq!(output.bad_records[0].record, "{broken");
    assert!(output.batches.iter().all(|b| b.column(0).null_count() == 0));
}

#[test]
fn deleted_or_reset_offsets_are_loss_and_marker_gaps_are_not() {
    // Retention deleted 50..80 before the task read them: the first record is 80, the log starts
    // at 80.
    assert_eq!(loss_of(50, 80, Some(80)), Some([50, 80]));
    // The log start is the bound even if the first record comes later (compaction after it).
    assert_eq!(loss_of(50, 90, Some(80)), Some([50, 80]));
    // A gap of transaction markers or compacted records: the log still starts before it.
    assert_eq!(loss_of(50, 52, Some(0)), None);
    assert_eq!(loss_of(50, 50, Some(80)), None);
    // The offsets went back: the topic was recreated or truncated.
    assert_eq!(loss_of(500, 0, None), Some([500, 0]));
    let message = data_loss_message(&std::collections::BTreeMap::from([
        ("t/0".to_string(), [50, 80]),
        ("t/1".to_string(), [500, 0]),
    ]));
    assert_eq!(
        message,
        "offsets 50..80 of t/0 were deleted before they were read; the offsets of t/1 went back \
         from 500 to 0 (topic recreated or truncated): records of the old log from offset 500 on \
         were never read"
    );
}
