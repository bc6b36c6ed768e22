use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};
use sluice_crds::FileOverwrite;

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
    sink_with(dir, run, partition_by, None)
}

fn sink_with(
    dir: &std::path::Path,
    run: &str,
    partition_by: &[&str],
    overwrite: Option<FileOverwrite>,
) -> FileSink {
    FileSink::new(
        &FileSinkSpec {
            path: dir.to_string_lossy().into_owned(),
            format: FileFormat::Parquet,
            partition_by: partition_by.iter().map(|c| c.to_string()).collect(),
            bad_records_path: None,
            overwrite,
            compaction: None,
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

/// `(level, n)` rows of `n` values per level.
fn levels(rows: &[(&str, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("level", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

/// Every `part-` file under `dir`, relative, sorted: what a reader that ignores the log sees.
fn files_on_disk(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("dir").filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if entry.file_name().to_string_lossy().starts_with("part-") {
                let relative = path.strip_prefix(root).expect("under root");
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn part(dir: &str, batch_id: u64, run: &str) -> String {
    format!("{dir}/part-00000-{batch_id:020}-{run}-000.parquet")
}

#[tokio::test]
async fn overwrite_replaces_changed_partitions_and_keeps_unchanged_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    let sink = sink_with(dir.path(), RUN, &["level"], Some(FileOverwrite::Partitions));
    sink.write(0, 0, &[levels(&[("A", 1), ("B", 2)])])
        .await
        .expect("batch 0");
    // Batch 1: A changed, B the same rows in another order, C new.
    sink.write(0, 1, &[levels(&[("C", 5), ("A", 3), ("B", 2)])])
        .await
        .expect("batch 1");
    let expected = vec![
        part("level=A", 1, RUN),
        part("level=B", 0, RUN),
        part("level=C", 1, RUN),
    ];
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(expected.clone())
    );
    assert_eq!(files_on_disk(dir.path()), expected, "old versions deleted");
    // Batch 2: A gone from the result, so from the output.
    sink.write(0, 2, &[levels(&[("B", 2), ("C", 6)])])
        .await
        .expect("batch 2");
    let expected = vec![part("level=B", 0, RUN), part("level=C", 2, RUN)];
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(expected.clone())
    );
    assert_eq!(files_on_disk(dir.path()), expected);
    let log: Vec<String> = std::fs::read_dir(dir.path().join(LOG_DIR).join(RUN))
        .expect("log dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(log, vec![format!("00000-{:020}.json", 2)], "one live entry");
}

#[tokio::test]
async fn overwrite_is_per_task_and_a_new_run_replaces_the_old_runs_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    let overwrite = Some(FileOverwrite::Partitions);
    let a = sink_with(dir.path(), "run-a", &[], overwrite);
    a.write(0, 0, &[levels(&[("A", 1)])])
        .await
        .expect("a task 0");
    a.write(1, 0, &[levels(&[("B", 1)])])
        .await
        .expect("a task 1");
    a.write(0, 1, &[levels(&[("A", 2)])])
        .await
        .expect("a task 0 again");
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(vec![
            "part-00000-00000000000000000001-run-a-000.parquet".to_string(),
            "part-00001-00000000000000000000-run-a-000.parquet".to_string(),
        ]),
        "task 0's new version replaces only task 0's"
    );
    // A restored or re-created query: a new run whose batch ids restart.
    let b = sink_with(dir.path(), "run-b", &[], overwrite);
    b.write(0, 0, &[levels(&[("A", 3)])])
        .await
        .expect("b task 0");
    let expected = vec![
        "part-00000-00000000000000000000-run-b-000.parquet".to_string(),
        "part-00001-00000000000000000000-run-a-000.parquet".to_string(),
    ];
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(expected.clone())
    );
    assert_eq!(files_on_disk(dir.path()), expected);
}

#[tokio::test]
async fn a_reader_following_the_log_ignores_a_superseded_version_left_by_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    let sink = sink_with(dir.path(), RUN, &["level"], Some(FileOverwrite::Partitions));
    sink.write(0, 0, &[levels(&[("A", 1)])])
        .await
        .expect("batch 0");
    let old = dir
        .path()
        .join(LOG_DIR)
        .join(RUN)
        .join(format!("00000-{:020}.json", 0));
    let old_entry = std::fs::read(&old).expect("entry 0");
    sink.write(0, 1, &[levels(&[("A", 2)])])
        .await
        .expect("batch 1");
    // As if the process died right after batch 1's commit: batch 0's entry and file still there.
    std::fs::write(&old, old_entry).expect("restore entry 0");
    std::fs::write(dir.path().join(part("level=A", 0, RUN)), b"old").expect("old file");
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(vec![part("level=A", 1, RUN)]),
        "superseded by a live entry: not counted"
    );
    // The batch's replay (or the task's next batch) finishes the cleanup.
    sink_with(dir.path(), RUN, &["level"], Some(FileOverwrite::Partitions))
        .write(0, 1, &[levels(&[("A", 2)])])
        .await
        .expect("replay");
    assert_eq!(files_on_disk(dir.path()), vec![part("level=A", 1, RUN)]);
    assert!(!old.exists());
}

fn compacting_sink(dir: &std::path::Path, format: FileFormat, partition_by: &[&str]) -> FileSink {
    FileSink::new(
        &FileSinkSpec {
            path: dir.to_string_lossy().into_owned(),
            format,
            partition_by: partition_by.iter().map(|c| c.to_string()).collect(),
            bad_records_path: None,
            overwrite: None,
            compaction: Some(sluice_crds::FileCompactionSpec {
                min_files: 3,
                target_file_size: "1MiB".into(),
                closed_after_batches: 2,
            }),
        },
        RUN,
    )
    .expect("sink")
    .retaining(0)
}

/// The `n` values of every committed Parquet file under `dir`, sorted.
async fn committed_values(dir: &std::path::Path) -> Vec<i64> {
    let location = Location::parse(dir.to_str().expect("utf8")).expect("loc");
    let mut values = Vec::new();
    for file in committed_files(&location)
        .await
        .expect("log")
        .expect("a log")
    {
        let bytes = std::fs::read(dir.join(file.replace("%25", "%"))).expect("file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let n = batch.column_by_name("n").expect("n");
            values.extend(
                n.as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("i64")
                    .values()
                    .iter(),
            );
        }
    }
    values.sort();
    values
}

#[tokio::test]
async fn compaction_merges_the_files_of_closed_partitions_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::parse(dir.path().to_str().expect("utf8")).expect("loc");
    let sink = compacting_sink(dir.path(), FileFormat::Parquet, &["level"]);
    // Batches 0..4 write partition A, 4..7 partition B.
    for batch_id in 0..7_u64 {
        let level = if batch_id < 4 { "A" } else { "B" };
        let n = batch_id as i64;
        sink.write(0, batch_id, &[levels(&[(level, n), (level, n + 100)])])
            .await
            .expect("write");
    }
    // At batch 6, A (last written by batch 3) is closed: its four files became one. B is still
    // being written: left alone.
    let merged = format!("level=A/part-00000-c{:020}-{RUN}.parquet", 3);
    let expected = vec![
        merged,
        part("level=B", 4, RUN),
        part("level=B", 5, RUN),
        part("level=B", 6, RUN),
    ];
    assert_eq!(
        committed_files(&location).await.expect("log"),
        Some(expected.clone())
    );
    assert_eq!(files_on_disk(dir.path()), expected, "originals deleted");
    let mut all: Vec<i64> = (0..7).flat_map(|n| [n, n + 100]).collect();
    all.sort();
    assert_eq!(committed_values(dir.path()).await, all, "same rows");
    // A restarted sink replaying an old batch neither rewrites it nor undoes the compaction.
    let restarted = compacting_sink(dir.path(), FileFormat::Parquet, &["level"]);
    assert_eq!(
        restarted
            .write(0, 6, &[levels(&[("B", 6), ("B", 106)])])
            .await
            .expect("replay"),
        2
    );
    assert_eq!(files_on_disk(dir.path()), expected);
}

#[tokio::test]
async fn csv_compaction_keeps_one_header_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = compacting_sink(dir.path(), FileFormat::Csv, &[]);
    for batch_id in 0..5_u64 {
        sink.write(0, batch_id, &[levels(&[("x", batch_id as i64)])])
            .await
            .expect("write");
    }
    // At batch 4 the files of batches 0..=2 are closed (two batches old).
    let merged = dir.path().join(format!("part-00000-c{:020}-{RUN}.csv", 2));
    assert_eq!(
        std::fs::read_to_string(&merged).expect("merged"),
        "level,n\nx,0\nx,1\nx,2\n"
    );
    assert_eq!(
        files_on_disk(dir.path()),
        vec![
            format!("part-00000-{:020}-{RUN}-000.csv", 3),
            format!("part-00000-{:020}-{RUN}-000.csv", 4),
            format!("part-00000-c{:020}-{RUN}.csv", 2),
        ]
    );
}
