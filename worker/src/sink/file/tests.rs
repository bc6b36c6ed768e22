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

fn sink_in(dir: &std::path::Path, run: &str, partition_by: &[&str]) -> FileSink {
    FileSink::new(
        &FileSinkSpec {
            path: dir.to_string_lossy().into_owned(),
            format: FileFormat::Parquet,
            partition_by: partition_by.iter().map(|c| c.to_string()).collect(),
            bad_records_path: None,
        },
        run,
    )
    .expect("sink")
}

const RUN: &str = "6f1c0c52-0000-4000-8000-000000000001";

#[tokio::test]
async fn a_written_batch_is_logged_and_a_replay_writes_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink_in(dir.path(), RUN, &[]);
    assert_eq!(sink.write(3, 7, &[batch()]).await.expect("write"), 5);
    let name = format!("part-00003-00000000000000000007-{RUN}-000.parquet");
    let first = std::fs::read(dir.path().join(&name)).expect("file");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(vec![name.clone()])
    );
    // A new sink (a restarted process) replaying the logged batch writes nothing.
    let restarted = sink_in(dir.path(), RUN, &[]);
    assert_eq!(restarted.write(3, 7, &[batch()]).await.expect("replay"), 5);
    let data: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .collect();
    assert_eq!(data.len(), 1, "replay did not add a file");
    assert_eq!(
        std::fs::read(dir.path().join(&name)).expect("file"),
        first,
        "identical bytes"
    );
}

#[tokio::test]
async fn two_runs_into_one_directory_keep_both_runs_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    sink_in(dir.path(), "run-a", &[])
        .write(0, 0, &[batch()])
        .await
        .expect("run a");
    // A new checkpoint (re-created query, stateless upgrade): batch ids restart at 0.
    sink_in(dir.path(), "run-b", &[])
        .write(0, 0, &[batch()])
        .await
        .expect("run b");
    let files = committed_files(&location)
        .await
        .expect("log")
        .expect("a log");
    assert_eq!(
        files,
        vec![
            "part-00000-00000000000000000000-run-a-000.parquet".to_string(),
            "part-00000-00000000000000000000-run-b-000.parquet".to_string(),
        ]
    );
    for file in files {
        assert!(dir.path().join(file).exists());
    }
}

#[tokio::test]
async fn an_unlogged_attempt_is_cleaned_up_when_the_batch_is_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    let name = format!("part-00000-00000000000000000004-{RUN}-000.parquet");
    // A crashed attempt left a file in a partition the replay does not write.
    let orphan = dir.path().join("level=GONE").join(&name);
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"half a batch").expect("orphan");
    // And the file of another batch, which must stay.
    let other = dir
        .path()
        .join("level=GONE")
        .join(format!("part-00000-00000000000000000003-{RUN}-000.parquet"));
    std::fs::write(&other, b"batch 3").expect("other");
    let sink = sink_in(dir.path(), RUN, &["level"]);
    assert_eq!(sink.write(0, 4, &[batch()]).await.expect("replay"), 5);
    assert!(!orphan.exists(), "the unlogged attempt's file is deleted");
    assert!(other.exists(), "other batches' files are left alone");
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(vec![
            format!("level=HIGH/{name}"),
            format!("level=LOW/{name}"),
            format!("level=__HIVE_DEFAULT_PARTITION__/{name}"),
            // The store percent-encodes `%` in a path segment.
            format!("level=a%252Fb/{name}"),
        ])
    );
}

#[tokio::test]
async fn several_batches_are_written_to_one_file_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink_in(dir.path(), RUN, &[]);
    let empty = RecordBatch::new_empty(batch().schema());
    let written = sink
        .write(0, 1, &[batch(), empty, batch()])
        .await
        .expect("write");
    assert_eq!(written, 10);
    let file = std::fs::File::open(
        dir.path()
            .join(format!("part-00000-00000000000000000001-{RUN}-000.parquet")),
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
