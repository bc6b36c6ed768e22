//! Two workers on one task at once: the one that started later owns the task (a newer epoch); the
//! other stops with an error naming that epoch, and the output holds every row exactly once.

mod common;

use common::{expected_high, iot_manifest, output_rows};
use sluice_worker::EngineError;
use sluice_worker::engine::{Engine, QueryConfig, Shared};
use sluice_worker::storage::Location;

const SEED: u64 = 41;
const FILES: u64 = 12;
const ROWS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_task_exactly_one_proceeds_the_other_names_the_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let output = dir.path().join("out");
    let manifest = iot_manifest(
        "fenced",
        input.to_str().expect("utf8"),
        output.to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        "",
        "{availableNow: true}",
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let first = Engine::start(QueryConfig::local(query.clone()), Shared::new())
        .await
        .expect("first worker starts");
    let second = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("second worker starts");
    let (a, b) = tokio::join!(
        tokio::spawn(first.run(|_| {})),
        tokio::spawn(second.run(|_| {}))
    );
    let (a, b) = (a.expect("join"), b.expect("join"));
    let error = match (&a, &b) {
        (Err(e), Ok(summary)) => {
            assert!(summary.batches > 0, "the newer worker did the work");
            e
        }
        other => panic!("exactly one worker must proceed: {other:?}"),
    };
    assert!(
        matches!(error, EngineError::Fenced(_)),
        "a fencing error: {error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("newer worker") && message.contains("epoch (generation 0"),
        "{message}"
    );
    let actual = output_rows(&Location::parse(output.to_str().expect("utf8")).expect("loc")).await;
    assert_eq!(actual, expected_high(SEED, FILES, ROWS), "exactly once");
}
