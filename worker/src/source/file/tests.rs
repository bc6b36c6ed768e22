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
