//! Checkpoint retention (`checkpoint.minBatchesToRetain`): the log keeps its last N batches, older
//! ones are folded into one compacted entry, and a restart continues exactly after all of them.
//! The stateful case under SIGKILL is in `stateful_streaming.rs`.

mod common;

use std::path::Path;

use common::{expected_high, iot_manifest, output_rows, task_files};
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const SEED: u64 = 8;
const ROWS: u64 = 500;

fn batch(id: u64) -> String {
    format!("{id:020}")
}

/// Writes generated files `first..first + count` of the seed's data set into `input`, under the
/// names the generator gives them (so a later call adds new files, as a producer would).
fn add_files(input: &Path, first: u64, count: u64) {
    let scratch = tempfile::tempdir().expect("tempdir");
    sluice_bench::write_json_files(scratch.path(), SEED, first + count, ROWS).expect("generate");
    let mut all: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("generated")
        .map(|e| e.expect("entry").path())
        .collect();
    all.sort();
    std::fs::create_dir_all(input).expect("input dir");
    for file in &all[first as usize..] {
        std::fs::copy(file, input.join(file.file_name().expect("name"))).expect("copy");
    }
}

async fn run(manifest: &str) -> Vec<u64> {
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let mut batch_ids = Vec::new();
    engine
        .run(|p| batch_ids.push(p.batch_id))
        .await
        .expect("run");
    batch_ids
}

#[tokio::test]
async fn compacted_log_keeps_the_last_batches_and_a_restart_reads_only_new_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    let checkpoint = dir.path().join("ckpt");
    add_files(&input, 0, 12);
    let manifest = iot_manifest(
        "retention",
        input.to_str().expect("utf8"),
        output.to_str().expect("utf8"),
        checkpoint.to_str().expect("utf8"),
        "",
        "{availableNow: true}",
    )
    .replace("partitions: 2", "partitions: 1")
    .replace("\"}\n", "\", minBatchesToRetain: 2}\n");
    assert!(manifest.contains("minBatchesToRetain: 2"), "{manifest}");

    // 12 files, one per batch (0..=11). With N = 2, every 2 batches once 4 are on record the oldest
    // are folded: the last compaction (after batch 11) folds 0..=9 and keeps 10 and 11.
    assert_eq!(run(&manifest).await, (0..12).collect::<Vec<_>>());
    let checkpoint = Location::parse(checkpoint.to_str().expect("utf8")).expect("checkpoint");
    assert_eq!(
        task_files(&checkpoint, "offsets").await,
        [batch(10), batch(11)]
    );
    assert_eq!(
        task_files(&checkpoint, "commits").await,
        [batch(10), batch(11)]
    );
    assert_eq!(task_files(&checkpoint, "compacted").await, [batch(9)]);
    let location = Location::parse(output.to_str().expect("utf8")).expect("output");
    assert_eq!(output_rows(&location).await, expected_high(SEED, 12, ROWS));

    // A restart reads the compacted entry: only the 3 new files are read, as batches 12..=14.
    add_files(&input, 12, 3);
    assert_eq!(run(&manifest).await, vec![12, 13, 14]);
    assert_eq!(
        output_rows(&location).await,
        expected_high(SEED, 15, ROWS),
        "every row once: the folded files were not read again"
    );
    assert_eq!(
        task_files(&checkpoint, "offsets").await,
        [batch(12), batch(13), batch(14)]
    );
    assert_eq!(task_files(&checkpoint, "compacted").await, [batch(11)]);

    // Nothing new: nothing runs.
    assert!(run(&manifest).await.is_empty());
}
