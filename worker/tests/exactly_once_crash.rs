//! Exactly once under crash: the worker binary runs the IoT filter over many files and is killed
//! with SIGKILL at random points several times, restarted each time; afterwards every HIGH input row
//! is in the Parquet output exactly once — none lost, none duplicated. Once with the checkpoint and
//! output on local disk, once with both on S3 (SeaweedFS).

mod common;

use common::{expected_high, iot_manifest, output_rows, s3_bucket, unique};
use sluice_worker::storage::Location;

const SEED: u64 = 11;
const FILES: u64 = 80;
const ROWS: u64 = 4_000;
const KILLS: usize = 6;

#[test]
fn local_checkpoint_every_row_exactly_once_after_sigkills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let output = dir.path().join("out");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        iot_manifest(
            "crash-local",
            input.to_str().expect("utf8"),
            output.to_str().expect("utf8"),
            dir.path().join("ckpt").to_str().expect("utf8"),
            "",
            "{availableNow: true}",
        ),
    )
    .expect("manifest");
    common::run_with_crashes(
        || common::spawn_worker(&manifest, &[]),
        KILLS,
        20..350,
        None,
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let actual = runtime.block_on(output_rows(
        &Location::parse(output.to_str().expect("utf8")).expect("loc"),
    ));
    let expected = expected_high(SEED, FILES, ROWS);
    assert_eq!(actual.len(), expected.len(), "no row lost or duplicated");
    assert_eq!(actual, expected);
}

#[test]
fn s3_checkpoint_every_row_exactly_once_after_sigkills() {
    let Some(bucket) = s3_bucket("s3_checkpoint_every_row_exactly_once_after_sigkills") else {
        return;
    };
    let prefix = unique("crash");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let input = runtime.block_on(common::iot_input_on_s3(
        &local_input,
        &bucket,
        &prefix,
        SEED,
        FILES,
        ROWS,
    ));
    let output = format!("s3://{bucket}/{prefix}/out");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        iot_manifest(
            "crash-s3",
            &input,
            &output,
            &format!("s3://{bucket}/{prefix}/ckpt"),
            "",
            "{availableNow: true}",
        ),
    )
    .expect("manifest");
    common::run_with_crashes(
        || common::spawn_worker(&manifest, &[]),
        KILLS,
        20..350,
        None,
    );
    let actual = runtime.block_on(output_rows(&Location::parse(&output).expect("s3 output")));
    let expected = expected_high(SEED, FILES, ROWS);
    assert_eq!(actual.len(), expected.len(), "no row lost or duplicated");
    assert_eq!(actual, expected);
}
