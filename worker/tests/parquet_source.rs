//! Parquet file sources: read a row group at a time, columns converted to the declared schema only
//! where no value can change (a narrower int, a float); a column of another type makes the file a
//! bad record naming the column, never a column of silent NULLs.

use std::sync::Arc;

use arrow::array::{Array, Float32Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use sluice_worker::engine::{Engine, QueryConfig, Shared};

/// Writes `batch` as Parquet with at most `rows_per_group` rows per row group; returns the number
/// of row groups written.
fn write_parquet(path: &std::path::Path, batch: &RecordBatch, rows_per_group: usize) -> usize {
    let file = std::fs::File::create(path).expect("create");
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close").row_groups().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_row_groups_are_read_and_a_column_of_the_wrong_type_is_a_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");

    // id int32 (declared long), name with nulls, score float32 (declared double): 5 rows in 3
    // row groups.
    let good = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float32, true),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5])),
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
                Some("d"),
                None,
            ])),
            Arc::new(Float32Array::from(vec![
                Some(0.5),
                Some(1.5),
                None,
                Some(2.5),
                Some(3.0),
            ])),
        ],
    )
    .expect("good batch");
    assert_eq!(write_parquet(&input.join("a-good.parquet"), &good, 2), 3);

    // id as text: Arrow's default cast would make it NULL; it must be a bad file instead.
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["x", "7"])),
            Arc::new(StringArray::from(vec![Some("e"), Some("f")])),
        ],
    )
    .expect("bad batch");
    write_parquet(&input.join("b-bad.parquet"), &bad, 1);

    let checkpoint = dir.path().join("ckpt");
    let table = format!("parquet_{}", uuid::Uuid::new_v4().simple());
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: parquet}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: parquet, partitions: 1}}
      schema:
        - {{name: id, type: long}}
        - {{name: name, type: string}}
        - {{name: score, type: double}}
  sql: SELECT id, name, score FROM events
  sink: {{memory: {{name: {table}}}}}
  trigger: {{once: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        checkpoint.display()
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let summary = engine.run(|_| {}).await.expect("run");
    assert_eq!((summary.input_rows, summary.bad_records), (5, 1));

    let mut rows = Vec::new();
    for batches in sluice_worker::sink::memory::read_table(&table).into_values() {
        for batch in batches {
            let ids = batch
                .column_by_name("id")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .expect("id is long");
            let names = batch
                .column_by_name("name")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("name");
            let scores = batch
                .column_by_name("score")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::Float64Array>())
                .expect("score is double");
            for i in 0..batch.num_rows() {
                rows.push((
                    ids.value(i),
                    names.is_valid(i).then(|| names.value(i).to_string()),
                    scores.is_valid(i).then(|| scores.value(i)),
                ));
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    assert_eq!(
        rows,
        vec![
            (1, Some("a".into()), Some(0.5)),
            (2, None, Some(1.5)),
            (3, Some("c".into()), None),
            (4, Some("d".into()), Some(2.5)),
            (5, None, Some(3.0)),
        ]
    );

    // The bad file, with an error naming the column and both types.
    let bad_dir = checkpoint.join("bad-records/events/task-0");
    let files: Vec<_> = std::fs::read_dir(&bad_dir)
        .expect("bad records")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&files[0]).expect("read").trim())
            .expect("one json line");
    assert!(
        record["origin"]
            .as_str()
            .expect("origin")
            .ends_with("b-bad.parquet"),
        "{record}"
    );
    assert_eq!(record["line"], 0);
    assert_eq!(
        record["error"],
        "column `id` is Utf8 in the Parquet file, which does not convert to the declared Int64 without loss"
    );
}

/// Runs a `once` query `SELECT *` over the Parquet files in `input` with `schema` (YAML list
/// items) into a memory table; returns its batches and the summary's (input rows, bad records).
async fn read_all(
    input: &std::path::Path,
    checkpoint: &std::path::Path,
    schema: &str,
) -> (Vec<RecordBatch>, (u64, u64)) {
    let table = format!("parquet_{}", uuid::Uuid::new_v4().simple());
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: parquet-types}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: parquet, partitions: 1}}
      schema:
{schema}
  sql: SELECT * FROM events
  sink: {{memory: {{name: {table}}}}}
  trigger: {{once: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        checkpoint.display()
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let summary = engine.run(|_| {}).await.expect("run");
    let batches = sluice_worker::sink::memory::read_table(&table)
        .into_values()
        .flatten()
        .collect();
    (batches, (summary.input_rows, summary.bad_records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_timestamps_dates_booleans_binary_and_shorts_read_exactly_with_nulls() {
    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Int8Array, Int16Array, TimestampMicrosecondArray,
        TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::TimeUnit;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    // 2026-01-01T00:00:00Z plus 1.5 s per row, in three timestamp units (one with a zone).
    let base_us = 1_767_225_600_000_000_i64;
    let us: Vec<Option<i64>> = (0..5)
        .map(|i| (i != 2).then_some(base_us + i * 1_500_000))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int8, false),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new(
                "ms",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                true,
            ),
            Field::new("day", DataType::Date32, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("raw", DataType::Binary, true),
        ])),
        vec![
            Arc::new(Int8Array::from(vec![0, 1, 2, 3, 4])),
            Arc::new(TimestampNanosecondArray::from(
                us.iter().map(|v| v.map(|v| v * 1000)).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(
                    us.iter().map(|v| v.map(|v| v / 1000)).collect::<Vec<_>>(),
                )
                .with_timezone("+02:00"),
            ),
            Arc::new(Date32Array::from(vec![
                Some(20_454),
                None,
                Some(0),
                Some(-1),
                Some(20_455),
            ])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
                None,
            ])),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(&b""[..]),
                Some(&b"abc"[..]),
                Some(&b"z"[..]),
            ])),
        ],
    )
    .expect("batch");
    assert_eq!(write_parquet(&input.join("types.parquet"), &batch, 2), 3);
    let schema = "        - {name: id, type: short}
        - {name: ns, type: timestamp}
        - {name: ms, type: timestamp}
        - {name: day, type: date}
        - {name: ok, type: boolean}
        - {name: raw, type: binary}";
    let (batches, counts) = read_all(&input, &dir.path().join("ckpt"), schema).await;
    assert_eq!(counts, (5, 0));
    type Row = (
        i16,
        Option<i64>,
        Option<i64>,
        Option<i32>,
        Option<bool>,
        Option<Vec<u8>>,
    );
    let mut rows: Vec<Row> = Vec::new();
    for batch in &batches {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let id = column("id");
        let id = id.as_any().downcast_ref::<Int16Array>().expect("short");
        let ns = column("ns");
        let ns = ns
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp µs");
        let ms = column("ms");
        let ms = ms
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp µs");
        let day = column("day");
        let day = day.as_any().downcast_ref::<Date32Array>().expect("date");
        let ok = column("ok");
        let ok = ok.as_any().downcast_ref::<BooleanArray>().expect("bool");
        let raw = column("raw");
        let raw = raw.as_any().downcast_ref::<BinaryArray>().expect("binary");
        for i in 0..batch.num_rows() {
            rows.push((
                id.value(i),
                ns.is_valid(i).then(|| ns.value(i)),
                ms.is_valid(i).then(|| ms.value(i)),
                day.is_valid(i).then(|| day.value(i)),
                ok.is_valid(i).then(|| ok.value(i)),
                raw.is_valid(i).then(|| raw.value(i).to_vec()),
            ));
        }
    }
    rows.sort_by_key(|r| r.0);
    let expected: Vec<Row> = vec![
        (
            0,
            us[0],
            us[0],
            Some(20_454),
            Some(true),
            Some(vec![0, 255]),
        ),
        (1, us[1], us[1], None, Some(false), None),
        (2, None, None, Some(0), None, Some(vec![])),
        (3, us[3], us[3], Some(-1), Some(true), Some(b"abc".to_vec())),
        (4, us[4], us[4], Some(20_455), None, Some(b"z".to_vec())),
    ];
    assert_eq!(rows, expected, "the same instants in µs UTC, nulls kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_decimal_or_list_column_is_a_bad_file_naming_it() {
    use arrow::array::{Decimal128Array, ListArray};
    use arrow::datatypes::Int32Type;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    // Decimals and lists are not schema types: declared as double / string they do not convert
    // without loss, so each file is one bad record instead of a guess.
    let decimal = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::Decimal128(10, 2),
            true,
        )])),
        vec![Arc::new(
            Decimal128Array::from(vec![Some(12_345), None])
                .with_precision_and_scale(10, 2)
                .expect("decimal"),
        )],
    )
    .expect("decimal batch");
    write_parquet(&input.join("a-decimal.parquet"), &decimal, 10);
    let (_, counts) = read_all(
        &input,
        &dir.path().join("ckpt-decimal"),
        "        - {name: v, type: double}",
    )
    .await;
    assert_eq!(counts, (0, 1), "the decimal file is a bad record");
    std::fs::remove_file(input.join("a-decimal.parquet")).expect("rm");
    let list = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
            true,
        )])),
        vec![Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
            vec![Some(vec![Some(1), Some(2)]), None],
        ))],
    )
    .expect("list batch");
    write_parquet(&input.join("b-list.parquet"), &list, 10);
    let checkpoint = dir.path().join("ckpt-list");
    let (_, counts) = read_all(&input, &checkpoint, "        - {name: v, type: string}").await;
    assert_eq!(counts, (0, 1), "the list file is a bad record");
    let bad = std::fs::read_dir(checkpoint.join("bad-records/events/task-0"))
        .expect("bad records")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect::<String>();
    assert!(bad.contains("column `v` is List"), "{bad}");
}
