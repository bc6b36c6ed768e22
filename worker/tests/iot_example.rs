//! The README's main job: the seed-003 IoT example (JSON files → HIGH only → Parquet), run from the
//! committed manifest with only its paths pointed at a temporary directory.

mod common;

use common::{expected_high, output_rows};
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const SEED: u64 = 3;
const FILES: u64 = 6;
const ROWS: u64 = 2_000;

#[tokio::test]
async fn example_writes_exactly_the_high_rows_to_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let output = dir.path().join("out");
    let checkpoint = dir.path().join("ckpt");

    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/iot-alerts-local.yaml"
    ))
    .expect("example manifest")
    .replace("path: data/iot", &format!("path: {}", input.display()))
    .replace(
        "path: out/iot-alerts",
        &format!("path: {}", output.display()),
    )
    .replace(
        "location: checkpoints/iot-alerts-local",
        &format!("location: {}", checkpoint.display()),
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    let mut triggers = 0;
    let summary = engine.run(|_| triggers += 1).await.expect("run");

    let expected = expected_high(SEED, FILES, ROWS);
    assert_eq!(summary.input_rows, FILES * ROWS);
    assert_eq!(summary.output_rows, expected.len() as u64);
    // maxFilesPerTrigger 2 over 2 tasks: at least FILES / 4 triggers.
    assert!(
        triggers >= (FILES / 4) as usize,
        "rate-limited batches: {triggers} triggers"
    );
    let actual =
        output_rows(&Location::parse(output.to_str().expect("utf8")).expect("location")).await;
    assert_eq!(actual.len(), expected.len(), "row count");
    assert_eq!(actual, expected, "row content");

    // Running again finds nothing new: no batch, no new output.
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("restart");
    let again = engine.run(|_| {}).await.expect("rerun");
    assert_eq!(again.batches, 0);
}
