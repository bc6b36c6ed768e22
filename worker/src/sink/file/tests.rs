use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("level", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                Some("HIGH"),
                Some("LOW"),
                None,
                Some("HIGH"),
                Some("a/b"),
            ])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
        ],
    )
    .expect("batch")
}

#[test]
fn rows_split_into_hive_directories_without_the_partition_column() {
    let parts = split_by_partition(&batch(), &["level".to_string()]).expect("split");
    let dirs: Vec<&str> = parts.iter().map(|(d, _)| d.as_str()).collect();
    // Nulls sort first.
    assert_eq!(
        dirs,
        vec![
            "level=__HIVE_DEFAULT_PARTITION__",
            "level=HIGH",
            "level=LOW",
            "level=a%2Fb"
        ]
    );
    let high = &parts[1].1;
    assert_eq!(high.num_columns(), 1, "partition column left out");
    let n = high
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64");
    let mut values = n.values().to_vec();
    values.sort();
    assert_eq!(values, vec![1, 4]);
}

#[test]
fn unknown_partition_column_is_named() {
    let err = split_by_partition(&batch(), &["nope".to_string()])
        .expect_err("missing")
        .to_string();
    assert!(err.contains("`nope`") && err.contains("level, n"), "{err}");
}

#[tokio::test]
async fn replayed_batch_overwrites_the_same_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(&FileSinkSpec {
        path: dir.path().to_string_lossy().into_owned(),
        format: FileFormat::Parquet,
        partition_by: vec![],
        bad_records_path: None,
    })
    .expect("sink");
    assert_eq!(sink.write(3, 7, &[batch()]).await.expect("write"), 5);
    let first = std::fs::read(
        dir.path()
            .join("part-00003-00000000000000000007-000.parquet"),
    )
    .expect("file");
    sink.write(3, 7, &[batch()]).await.expect("replay");
    let files: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(files.len(), 1, "replay did not add a file");
    let second = std::fs::read(
        dir.path()
            .join("part-00003-00000000000000000007-000.parquet"),
    )
    .expect("file");
    assert_eq!(first, second, "identical bytes");
}

#[tokio::test]
async fn several_batches_are_written_to_one_file_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(&FileSinkSpec {
        path: dir.path().to_string_lossy().into_owned(),
        format: FileFormat::Parquet,
        partition_by: vec![],
        bad_records_path: None,
    })
    .expect("sink");
    let empty = RecordBatch::new_empty(batch().schema());
    let written = sink
        .write(0, 1, &[batch(), empty, batch()])
        .await
        .expect("write");
    assert_eq!(written, 10);
    let file = std::fs::File::open(
        dir.path()
            .join("part-00000-00000000000000000001-000.parquet"),
    )
    .expect("file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut values = Vec::new();
    for read in reader {
        let read = read.expect("batch");
        let n = read
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        values.extend(n.values().iter().copied());
    }
    assert_eq!(values, vec![1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
}
