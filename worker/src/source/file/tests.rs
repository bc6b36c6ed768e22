use super::split::{MIN_PIECE_BYTES, Pending, take_batch};
use super::*;
use arrow::array::{Array, StringArray};
use sluice_crds::ColumnSpec;

fn spec(
    dir: &std::path::Path,
    max_files: Option<u32>,
    partitions: u32,
) -> (SourceSpec, FileSourceSpec) {
    let file = FileSourceSpec {
        path: dir.to_string_lossy().into_owned(),
        format: FileFormat::Json,
        max_files_per_trigger: max_files,
        partitions,
        header: true,
        delimiter: None,
        max_record_bytes: None,
    };
    let source = SourceSpec {
        name: "events".into(),
        file: Some(file.clone()),
        kafka: None,
        socket: None,
        nexmark: None,
        rate: None,
        schema: vec![ColumnSpec {
            name: "id".into(),
            data_type: "string".into(),
            nullable: true,
        }],
        watermark: None,
        partition_key: None,
        on_bad_record: Default::default(),
    };
    (source, file)
}

fn ids(output: &ReadOutput) -> Vec<String> {
    output
        .batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone();
            (0..a.len())
                .map(move |i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn new_files_only_bounded_per_trigger_and_resumed_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..3 {
        std::fs::write(
            dir.path().join(format!("f{i}.json")),
            format!("{{\"id\":\"r{i}\"}}\n"),
        )
        .expect("write");
    }
    std::fs::write(dir.path().join(".hidden.json"), "{\"id\":\"no\"}\n").expect("write");
    let (spec, file) = spec(dir.path(), Some(2), 1);
    let source = FileSource::new(&spec, &file).expect("source");
    let mut task = source.open(0, &[]).await.expect("open");
    let first = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("files");
    assert_eq!(first["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(task.backlog(), Some(1));
    let second = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("files");
    assert_eq!(second["files"].as_array().map(Vec::len), Some(1));
    assert!(
        task.plan(PlanLimit::PerTrigger)
            .await
            .expect("plan")
            .is_none(),
        "nothing new"
    );

    let mut all = ids(&task.read(&first).await.expect("read"));
    all.extend(ids(&task.read(&second).await.expect("read")));
    all.sort();
    assert_eq!(all, vec!["r0", "r1", "r2"], "hidden file is skipped");

    // A restarted task that logged both ranges sees only files added since.
    std::fs::write(dir.path().join("f9.json"), "{\"id\":\"r9\"}\n").expect("write");
    let mut restarted = source.open(0, &[first, second]).await.expect("open");
    let third = restarted
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("new file");
    assert_eq!(
        ids(&restarted.read(&third).await.expect("read")),
        vec!["r9"]
    );
}

#[tokio::test]
async fn files_are_split_between_partitions_by_path_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}.json")), "{\"id\":\"x\"}\n").expect("write");
    }
    let (spec, file) = spec(dir.path(), None, 3);
    let source = FileSource::new(&spec, &file).expect("source");
    let mut total = 0;
    for task in 0..3 {
        let mut reader = source.open(task, &[]).await.expect("open");
        if let Some(range) = reader.plan(PlanLimit::PerTrigger).await.expect("plan") {
            for f in range["files"].as_array().expect("files") {
                let path = f["path"].as_str().expect("path");
                assert_eq!(partition_of(path, 3), task);
                total += 1;
            }
        }
    }
    assert_eq!(total, 20, "every file in exactly one partition");
}

#[tokio::test]
async fn frozen_task_ignores_files_added_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.json"), "{\"id\":\"a\"}\n").expect("write");
    let (spec, file) = spec(dir.path(), None, 1);
    let source = FileSource::new(&spec, &file).expect("source");
    let mut task = source.open(0, &[]).await.expect("open");
    task.freeze().await.expect("freeze");
    std::fs::write(dir.path().join("b.json"), "{\"id\":\"b\"}\n").expect("write");
    let range = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("a");
    assert_eq!(ids(&task.read(&range).await.expect("read")), vec!["a"]);
    assert!(
        task.plan(PlanLimit::PerTrigger)
            .await
            .expect("plan")
            .is_none()
    );
}

/// Files of one range are decoded concurrently; rows still come out in the range's file order
/// (the first file here is large, so it finishes decoding last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_reads_in_file_order_though_files_decode_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big: String = (0..200_000)
        .map(|i| format!("{{\"id\":\"a{i}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("a.json"), big).expect("write");
    for name in ["b", "c", "d"] {
        std::fs::write(
            dir.path().join(format!("{name}.json")),
            format!("{{\"id\":\"{name}0\"}}\n{{\"id\":\"{name}1\"}}\n"),
        )
        .expect("write");
    }
    let (spec, file) = spec(dir.path(), None, 1);
    let source = FileSource::new(&spec, &file).expect("source");
    let mut task = source.open(0, &[]).await.expect("open");
    let range = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("files");
    let order: Vec<String> = range["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().unwrap_or_default()[..1].to_string())
        .collect();
    let ids = ids(&task.read(&range).await.expect("read"));
    assert_eq!(ids.len(), 200_006);
    let mut expected = Vec::new();
    for name in &order {
        if name == "a" {
            expected.extend((0..200_000).map(|i| format!("a{i}")));
        } else {
            expected.extend([format!("{name}0"), format!("{name}1")]);
        }
    }
    assert_eq!(ids, expected, "rows in the range's file order {order:?}");
}

fn whole(path: &str, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        size,
        start: None,
        end: None,
    }
}

fn piece(path: &str, size: u64, start: u64, end: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        size,
        start: Some(start),
        end: Some(end),
    }
}

fn pending(files: &[(&str, u64, u64)]) -> Vec<Pending> {
    files
        .iter()
        .map(|&(path, size, from)| Pending {
            file: whole(path, size),
            from,
        })
        .collect()
}

#[test]
fn without_a_cap_a_batch_takes_whole_files_up_to_max_files() {
    let files = pending(&[("a", 100, 0), ("b", 200, 0), ("c", 300, 0)]);
    assert_eq!(
        take_batch(&files, None, None, true),
        vec![whole("a", 100), whole("b", 200), whole("c", 300)]
    );
    assert_eq!(
        take_batch(&files, Some(2), None, true),
        vec![whole("a", 100), whole("b", 200)]
    );
    assert!(take_batch(&[], Some(2), Some(10), true).is_empty());
}

#[test]
fn a_byte_cap_takes_whole_files_that_fit_and_cuts_json_lines() {
    const MIB: u64 = 1 << 20;
    let files = pending(&[("a", MIB, 0), ("b", MIB, 0), ("c", 3 * MIB, 0)]);
    // Two files fit, the third is cut to fill the cap.
    assert_eq!(
        take_batch(&files, None, Some(3 * MIB), true),
        vec![
            whole("a", MIB),
            whole("b", MIB),
            piece("c", 3 * MIB, 0, MIB)
        ]
    );
    // maxFilesPerTrigger still counts entries.
    assert_eq!(
        take_batch(&files, Some(1), Some(3 * MIB), true),
        vec![whole("a", MIB)]
    );
    // A file larger than the cap, alone: pieces of the cap, then the rest.
    let big = pending(&[("c", 3 * MIB, 0)]);
    assert_eq!(
        take_batch(&big, None, Some(2 * MIB), true),
        vec![piece("c", 3 * MIB, 0, 2 * MIB)]
    );
    let rest = pending(&[("c", 3 * MIB, 2 * MIB), ("d", 10, 0)]);
    assert_eq!(
        take_batch(&rest, None, Some(2 * MIB), true),
        vec![piece("c", 3 * MIB, 2 * MIB, 3 * MIB), whole("d", 10)]
    );
}

#[test]
fn a_byte_cap_takes_unsplittable_files_whole_and_one_at_least() {
    const MIB: u64 = 1 << 20;
    let files = pending(&[("a", 5 * MIB, 0), ("b", MIB, 0)]);
    // CSV / Parquet: the first file whole though it is over the cap, and nothing after it.
    assert_eq!(
        take_batch(&files, None, Some(2 * MIB), false),
        vec![whole("a", 5 * MIB)]
    );
    let files = pending(&[("b", MIB, 0), ("a", 5 * MIB, 0)]);
    assert_eq!(
        take_batch(&files, None, Some(2 * MIB), false),
        vec![whole("b", MIB)],
        "a file that does not fit waits for the next batch"
    );
}

#[test]
fn a_byte_cap_does_not_cut_a_sliver_after_other_files() {
    let small = MIN_PIECE_BYTES / 2;
    let files = pending(&[("a", 10 * small, 0), ("b", 10 * small, 0)]);
    // Left for b: half of the smallest piece, so b waits.
    assert_eq!(
        take_batch(&files, None, Some(11 * small), true),
        vec![whole("a", 10 * small)]
    );
    // Left for b: the smallest piece exactly.
    assert_eq!(
        take_batch(&files, None, Some(12 * small), true),
        vec![whole("a", 10 * small), piece("b", 10 * small, 0, 2 * small)]
    );
    // A zero cap still makes progress.
    assert_eq!(
        take_batch(&files, None, Some(0), true),
        vec![piece("a", 10 * small, 0, 1)]
    );
}

/// Cuts `text` at `cuts` and feeds each piece to a [`LineSplit`] in chunks of `chunk` bytes
/// from its `read_from`, as the reader does.
fn read_pieces(text: &[u8], cuts: &[u64], chunk: usize) -> Vec<u8> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(text.len() as u64);
    let mut out = Vec::new();
    for pair in bounds.windows(2) {
        let mut split = LineSplit::new(pair[0], pair[1]);
        let from = split.read_from() as usize;
        for bytes in text[from..].chunks(chunk) {
            if split.done() {
                break;
            }
            out.extend_from_slice(split.take(bytes));
        }
    }
    out
}

#[test]
fn pieces_cut_anywhere_hold_every_line_once() {
    // Empty lines, a long line, no newline at the end.
    let text = b"a\n\nbbbbbbbbbbbbbbb\ncc\nd\n\n\neeeeee\nf";
    let len = text.len() as u64;
    for chunk in [1, 2, 3, 7, text.len()] {
        for first in 0..=len {
            assert_eq!(
                read_pieces(text, &[first], chunk),
                text,
                "cut at {first}, chunks of {chunk}"
            );
            for second in first..=len {
                assert_eq!(
                    read_pieces(text, &[first, second], chunk),
                    text,
                    "cuts at {first} and {second}, chunks of {chunk}"
                );
            }
        }
    }
    // A piece inside one line holds nothing; the line belongs to the piece it begins in.
    let line = b"0123456789\n";
    assert!(read_pieces(line, &[3, 6], 4).starts_with(line));
    let mut split = LineSplit::new(3, 6);
    let from = split.read_from() as usize;
    assert!(split.take(&line[from..]).is_empty());
    assert!(split.done());
}

/// Writes `files` JSON-lines files of `rows` rows each (`id` = `<file>-<row>`), one malformed line
/// in the middle of the first.
fn write_rows(dir: &std::path::Path, files: usize, rows: usize) {
    for f in 0..files {
        let mut text = String::new();
        for r in 0..rows {
            if f == 0 && r == rows / 2 {
                text.push_str("{\"id\": not json}\n");
            }
            text.push_str(&format!("{{\"id\":\"{f}-{r:05}\"}}\n"));
        }
        std::fs::write(dir.join(format!("f{f}.json")), text).expect("write");
    }
}

/// Plans every batch (`PerTrigger`) and reads each: the ranges, their rows and bad-record lines.
async fn drain(task: &mut Box<dyn SourceTask>) -> (Vec<Range>, Vec<String>, Vec<String>) {
    let mut ranges = Vec::new();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    while let Some(range) = task.plan(PlanLimit::PerTrigger).await.expect("plan") {
        let output = task.read(&range).await.expect("read");
        rows.extend(ids(&output));
        bad.extend(output.bad_records.iter().map(|b| b.record.clone()));
        ranges.push(range);
    }
    (ranges, rows, bad)
}

#[tokio::test]
async fn a_byte_cap_splits_files_into_more_batches_with_the_same_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_rows(dir.path(), 3, 200);
    let (spec, file) = spec(dir.path(), None, 1);
    let whole_source = FileSource::new(&spec, &file).expect("source");
    let mut whole_task = whole_source.open(0, &[]).await.expect("open");
    let (ranges, expected, expected_bad) = drain(&mut whole_task).await;
    assert_eq!(ranges.len(), 1);
    assert_eq!(expected.len(), 600);
    assert_eq!(expected_bad.len(), 1);
    assert!(
        !ranges[0].to_string().contains("start"),
        "whole files are logged as before: {}",
        ranges[0]
    );

    // Files of 3,418 bytes, batches of at most 1,000 bytes: four pieces of each file (a piece
    // never fills a batch's last 582 bytes: under the smallest piece).
    let mut capped = FileSource::new(&spec, &file).expect("source");
    Arc::get_mut(&mut capped.config)
        .expect("unshared")
        .max_batch_bytes = Some(1_000);
    let mut task = capped.open(0, &[]).await.expect("open");
    let (ranges, rows, bad) = drain(&mut task).await;
    assert_eq!(ranges.len(), 12);
    assert_eq!(rows, expected, "the same rows in the same order");
    assert_eq!(bad, expected_bad, "the bad record once");

    // A restart after the first 5 logged batches continues with the sixth piece; replaying a
    // logged batch reads exactly its rows again.
    let mut restarted = capped.open(0, &ranges[..5]).await.expect("open");
    let mut again: Vec<String> = Vec::new();
    for range in &ranges[..5] {
        again.extend(ids(&restarted.read(range).await.expect("replay")));
    }
    let (rest, rest_rows, _) = drain(&mut restarted).await;
    assert_eq!(rest, ranges[5..], "the same ranges after the restart");
    again.extend(rest_rows);
    assert_eq!(again, expected);
}

#[tokio::test]
async fn a_memory_budget_bounds_a_batch_of_a_large_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One file of 100,000 rows (≈ 1.9 MB).
    write_rows(dir.path(), 1, 100_000);
    let size = std::fs::metadata(dir.path().join("f0.json"))
        .expect("size")
        .len();
    let (spec, file) = spec(dir.path(), None, 1);
    let mut source = FileSource::new(&spec, &file).expect("source");
    // 4 MiB of budget for this task: batches of 1 MiB of input.
    source.set_memory_budget(4 << 20);
    let mut task = source.open(0, &[]).await.expect("open");
    task.freeze().await.expect("freeze");
    assert_eq!(task.backlog(), Some(1));
    let (ranges, rows, bad) = drain(&mut task).await;
    assert_eq!(ranges.len() as u64, size.div_ceil(1 << 20));
    let first: FileRange = serde_json::from_value(ranges[0].clone()).expect("range");
    assert_eq!(first.files, vec![piece("f0.json", size, 0, 1 << 20)]);
    assert_eq!(rows.len(), 100_000);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "in file order");
    assert_eq!(bad.len(), 1);
    assert_eq!(task.backlog(), Some(0));
}

#[tokio::test]
async fn once_ignores_the_byte_cap_and_takes_the_rest_of_a_cut_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_rows(dir.path(), 2, 200);
    let (spec, file) = spec(dir.path(), None, 1);
    let mut source = FileSource::new(&spec, &file).expect("source");
    Arc::get_mut(&mut source.config)
        .expect("unshared")
        .max_batch_bytes = Some(1_000);
    let mut task = source.open(0, &[]).await.expect("open");
    let first = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("a piece");
    let rest = task
        .plan(PlanLimit::Unbounded)
        .await
        .expect("plan")
        .expect("the rest");
    let rest_range: FileRange = serde_json::from_value(rest.clone()).expect("range");
    assert_eq!(rest_range.files.len(), 2);
    assert_eq!(rest_range.files[0].start, Some(1_000));
    assert_eq!(rest_range.files[1].start, None);
    let mut rows = ids(&task.read(&first).await.expect("read"));
    rows.extend(ids(&task.read(&rest).await.expect("read")));
    assert_eq!(rows.len(), 400);
    // Merged (checkpoint retention, continuous epochs), the two ranges read the same rows.
    let merged = task.merge(&first, &rest).expect("merge");
    assert_eq!(ids(&task.read(&merged).await.expect("read")), rows);
}
