//! The IoT query reading its input from and writing its Parquet to S3 (SeaweedFS) gives the same rows
//! as the local run; `partitionBy: [danger_level]` gives one Hive directory per level.

mod common;

use common::{expected_high, iot_manifest, output_rows, read_parquet_dir, s3_bucket, unique};
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const SEED: u64 = 5;
const FILES: u64 = 4;
const ROWS: u64 = 1_000;

async fn run(manifest: &str) {
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run");
}

#[tokio::test]
async fn s3_input_and_output_give_the_same_rows_as_local() {
    let Some(bucket) = s3_bucket("s3_input_and_output_give_the_same_rows_as_local") else {
        return;
    };
    let prefix = unique("roundtrip");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in");
    let input = common::iot_input_on_s3(&local_input, &bucket, &prefix, SEED, FILES, ROWS).await;

    let s3_out = format!("s3://{bucket}/{prefix}/out");
    run(&iot_manifest(
        "s3",
        &input,
        &s3_out,
        &format!("s3://{bucket}/{prefix}/ckpt"),
        "",
        "{availableNow: true}",
    ))
    .await;
    let local_out = dir.path().join("out");
    run(&iot_manifest(
        "local",
        local_input.to_str().expect("utf8"),
        local_out.to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        "",
        "{availableNow: true}",
    ))
    .await;

    let from_s3 = output_rows(&Location::parse(&s3_out).expect("loc")).await;
    let from_local =
        output_rows(&Location::parse(local_out.to_str().expect("utf8")).expect("loc")).await;
    assert_eq!(from_s3, expected_high(SEED, FILES, ROWS));
    assert_eq!(from_s3, from_local);
}

#[tokio::test]
async fn partition_by_writes_one_directory_per_level() {
    let Some(bucket) = s3_bucket("partition_by_writes_one_directory_per_level") else {
        return;
    };
    let prefix = unique("partitioned");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_input = dir.path().join("in");
    let input = common::iot_input_on_s3(&local_input, &bucket, &prefix, SEED, FILES, ROWS).await;
    let output = format!("s3://{bucket}/{prefix}/out");
    let manifest = iot_manifest(
        "part",
        &input,
        &output,
        &format!("s3://{bucket}/{prefix}/ckpt"),
        ", partitionBy: [danger_level]",
        "{availableNow: true}",
    )
    .replace("WHERE danger_level = 'HIGH'", "WHERE temperature > 0");
    run(&manifest).await;

    let files = read_parquet_dir(&Location::parse(&output).expect("loc")).await;
    let mut directories: Vec<&str> = files.keys().filter_map(|k| k.split('/').next()).collect();
    directories.dedup();
    assert_eq!(
        directories,
        vec![
            "danger_level=HIGH",
            "danger_level=LOW",
            "danger_level=MEDIUM"
        ]
    );
    for (path, batches) in &files {
        for batch in batches {
            assert!(
                batch.column_by_name("danger_level").is_none(),
                "{path}: partition column left out of the file"
            );
        }
    }
    let rows = output_rows(&Location::parse(&output).expect("loc")).await;
    assert_eq!(
        rows.len() as u64,
        FILES * ROWS,
        "every row in some directory"
    );
    let high: Vec<_> = rows.into_iter().filter(|r| r.2 == "HIGH").collect();
    assert_eq!(
        high,
        expected_high(SEED, FILES, ROWS),
        "the HIGH directory holds exactly the HIGH rows"
    );
}
