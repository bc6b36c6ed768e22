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
