//! Two runs of one query into one output directory: a re-created query (a new checkpoint) and a
//! `stateless` upgrade (a new `generations/<n>/` checkpoint) start their batch ids at 0 again, yet
//! the earlier run's files stay and both runs' rows are in the committed output.

mod common;

use common::{expected_high, iot_manifest, output_rows};
use sluice_worker::engine::{Engine, QueryConfig, Shared};
use sluice_worker::storage::Location;

const SEED: u64 = 43;
const FILES: u64 = 4;
const ROWS: u64 = 200;

async fn run(input: &str, output: &str, checkpoint: &str) {
    let manifest = iot_manifest(
        "runs",
        input,
        output,
        checkpoint,
        "",
        "{availableNow: true}",
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let summary = engine.run(|_| {}).await.expect("run");
    assert!(summary.batches > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_checkpoint_or_generation_keeps_the_earlier_runs_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let input = input.to_str().expect("utf8").to_string();
    let output = dir.path().join("out").to_str().expect("utf8").to_string();
    let base = dir.path().join("ckpt").to_str().expect("utf8").to_string();
    let location = Location::parse(&output).expect("loc");
    let once = expected_high(SEED, FILES, ROWS);

    // Generation 1, then a stateless upgrade to generation 2 (the operator's layout).
    run(&input, &output, &format!("{base}/generations/1/")).await;
    assert_eq!(output_rows(&location).await, once);
    run(&input, &output, &format!("{base}/generations/2/")).await;
    let mut twice: Vec<_> = once.iter().chain(&once).cloned().collect();
    twice.sort();
    assert_eq!(
        output_rows(&location).await,
        twice,
        "both generations' rows are kept"
    );

    // A re-created query: another checkpoint, same output directory.
    run(&input, &output, &format!("{base}-recreated")).await;
    let mut thrice: Vec<_> = twice.iter().chain(&once).cloned().collect();
    thrice.sort();
    assert_eq!(output_rows(&location).await, thrice);
}
