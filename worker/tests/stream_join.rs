//! Stream–stream join end to end (Spark's ad impressions and clicks): two file sources with
//! watermarks, `clicks.ts BETWEEN impressions.ts AND impressions.ts + INTERVAL '1 hour'`, the
//! worker binary killed with SIGKILL at random points and restarted: the output is exactly the
//! set of matching pairs, each once (none lost, none doubled).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, TimeUnit};
use common::read_parquet_dir;
use sluice_worker::storage::Location;

const MINUTE_MS: i64 = 60_000;
/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;
/// Each file holds the events of one 6-minute slice, files in event-time order: with a 10-minute
/// watermark delay no row is ever late, so the output is the whole join.
const SLICE_MS: i64 = 6 * MINUTE_MS;
const FILES: i64 = 60;
const IMPRESSIONS_PER_FILE: i64 = 30;

/// (adId, impression ms, click ms).
type Pair = (String, i64, i64);

struct Data {
    impressions: Vec<Vec<(String, i64)>>,
    clicks: Vec<Vec<(String, i64)>>,
}

fn generate(seed: u64) -> Data {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut impressions = vec![Vec::new(); FILES as usize];
    let mut clicks = vec![Vec::new(); FILES as usize];
    for (file, slice) in impressions.iter_mut().enumerate() {
        for n in 0..IMPRESSIONS_PER_FILE {
            let ad = format!("ad-{file}-{n}");
            let ts = BASE_MS + file as i64 * SLICE_MS + rng.i64(0..SLICE_MS);
            // 0, 1 or 2 clicks, up to 90 minutes later (a third of them too late to match).
            for _ in 0..rng.usize(0..3) {
                let click = ts + rng.i64(0..90 * MINUTE_MS);
                let click_file = ((click - BASE_MS) / SLICE_MS) as usize;
                if click_file < FILES as usize {
                    clicks[click_file].push((ad.clone(), click));
                }
            }
            slice.push((ad, ts));
        }
    }
    for (file, slice) in clicks.iter_mut().enumerate() {
        // A click on an ad never shown.
        slice.push((
            format!("unknown-{file}"),
            BASE_MS + file as i64 * SLICE_MS + 1,
        ));
    }
    Data {
        impressions,
        clicks,
    }
}

fn expected(data: &Data) -> BTreeSet<Pair> {
    let clicks: Vec<&(String, i64)> = data.clicks.iter().flatten().collect();
    let mut out = BTreeSet::new();
    for (ad, ts) in data.impressions.iter().flatten() {
        for (click_ad, click) in &clicks {
            if click_ad == ad && *click >= *ts && *click <= ts + 60 * MINUTE_MS {
                out.insert((ad.clone(), *ts, *click));
            }
        }
    }
    out
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("valid time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn write_files(dir: &Path, files: &[Vec<(String, i64)>]) {
    std::fs::create_dir_all(dir).expect("dir");
    for (i, rows) in files.iter().enumerate() {
        let mut out = std::fs::File::create(dir.join(format!("part-{i:05}.json"))).expect("file");
        for (ad, ts) in rows {
            writeln!(out, "{{\"adId\":\"{ad}\",\"ts\":\"{}\"}}", rfc3339(*ts)).expect("write");
        }
    }
}

/// The query over `<root>/impressions` and `<root>/clicks`, output to `<root>/out`, checkpoint in
/// `<root>/ckpt` (`root` a local directory or an `s3://` prefix).
fn manifest(root: &str) -> String {
    let source = |name: &str| {
        format!(
            r#"    - name: {name}
      file: {{path: "{root}/{name}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: adId, type: string}}
        - {{name: ts, type: timestamp}}
      watermark: {{column: ts, delay: 10 minutes}}
"#
        )
    };
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: ad-clicks}}
spec:
  sources:
{}{}  sql: "SELECT i.adId, i.ts AS impressionTime, c.ts AS clickTime FROM impressions i JOIN clicks c ON i.adId = c.adId AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'"
  outputMode: append
  sink:
    file: {{path: "{root}/out", format: parquet}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{root}/ckpt"}}
"#,
        source("impressions"),
        source("clicks"),
    )
}

fn millis(array: &dyn Array) -> Int64Array {
    let tz = match array.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        other => panic!("not a timestamp: {other}"),
    };
    let ms = arrow::compute::cast(
        &arrow::array::make_array(array.to_data()),
        &DataType::Timestamp(TimeUnit::Millisecond, tz),
    )
    .expect("ms");
    let ints = arrow::compute::cast(&ms, &DataType::Int64).expect("i64");
    ints.as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64")
        .clone()
}

/// The output pairs; panics on a pair emitted twice.
async fn output_pairs(location: &Location) -> BTreeSet<Pair> {
    let mut out = BTreeSet::new();
    for (_, batches) in read_parquet_dir(location).await {
        for batch in batches {
            let ads = batch.column_by_name("adId").expect("adId");
            let ads = ads.as_any().downcast_ref::<StringArray>().expect("utf8");
            let shown = millis(
                batch
                    .column_by_name("impressionTime")
                    .expect("impressionTime"),
            );
            let clicked = millis(batch.column_by_name("clickTime").expect("clickTime"));
            for r in 0..batch.num_rows() {
                let pair = (ads.value(r).to_string(), shown.value(r), clicked.value(r));
                assert!(out.insert(pair.clone()), "{pair:?} emitted twice");
            }
        }
    }
    out
}

#[test]
fn impressions_clicks_join_exact_after_sigkills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = generate(7);
    write_files(&dir.path().join("impressions"), &data.impressions);
    write_files(&dir.path().join("clicks"), &data.clicks);
    let path = dir.path().join("query.yaml");
    std::fs::write(&path, manifest(dir.path().to_str().expect("utf8"))).expect("manifest");
    let expected = expected(&data);
    assert!(expected.len() > 500, "{} pairs", expected.len());

    common::run_with_crashes(|| common::spawn_worker(&path, &[]), 6, 50..500, None);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let actual = runtime.block_on(output_pairs(
        &Location::parse(dir.path().join("out").to_str().expect("utf8")).expect("location"),
    ));
    let missing: Vec<_> = expected.difference(&actual).take(3).collect();
    let extra: Vec<_> = actual.difference(&expected).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} pairs out, {} expected; missing {missing:?}; unexpected {extra:?}",
        actual.len(),
        expected.len()
    );
}

/// Over the whole run the buffers hold only rows the range condition can still match: the
/// impressions of the last hour and the clicks above the watermark (plus the slices in flight),
/// far below the input. A restart with a changed range condition is refused.
#[tokio::test]
async fn state_stays_bounded_and_a_changed_range_is_refused() {
    use sluice_worker::{Engine, QueryConfig, Shared};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = generate(11);
    write_files(&dir.path().join("impressions"), &data.impressions);
    write_files(&dir.path().join("clicks"), &data.clicks);
    let text = manifest(dir.path().to_str().expect("utf8"));
    let engine = Engine::start(
        QueryConfig::local(sluice_crds::parse_manifest(&text).expect("manifest")),
        Shared::new(),
    )
    .await
    .expect("start");
    let mut peak = 0u64;
    let mut dropped = 0u64;
    let summary = engine
        .run(|p| {
            for op in &p.state_operators {
                assert_eq!(op["operatorName"], "symmetricHashJoin");
                peak = peak.max(op["numRowsTotal"].as_u64().expect("rows"));
                dropped += op["numRowsDroppedByWatermark"].as_u64().expect("dropped");
            }
        })
        .await
        .expect("run");
    let input: usize = data
        .impressions
        .iter()
        .chain(&data.clicks)
        .map(Vec::len)
        .sum();
    assert_eq!(summary.input_rows, input as u64);
    assert_eq!(
        dropped, 0,
        "nothing is later than the watermark in this data"
    );
    // Impressions stay while ts + 1 hour > watermark (= newest − 10 minutes): 70 minutes of
    // slices plus the two in flight; clicks while ts > watermark: 10 minutes plus two slices.
    let max_clicks = data.clicks.iter().map(Vec::len).max().expect("clicks") as u64;
    let bound = (70 / 6 + 3) * IMPRESSIONS_PER_FILE as u64 + (10 / 6 + 3) * max_clicks;
    eprintln!("peak state rows {peak}, bound {bound}, input rows {input}");
    assert!(
        peak >= 10 * IMPRESSIONS_PER_FILE as u64,
        "the last hour of impressions is buffered ({peak})"
    );
    assert!(
        peak <= bound,
        "state rows {peak} > bound {bound} (input {input})"
    );
    let actual = output_pairs(
        &Location::parse(dir.path().join("out").to_str().expect("utf8")).expect("loc"),
    )
    .await;
    assert_eq!(actual, expected(&data));

    let changed = text.replace("INTERVAL '1 hour'", "INTERVAL '2 hours'");
    let err = Engine::start(
        QueryConfig::local(sluice_crds::parse_manifest(&changed).expect("manifest")),
        Shared::new(),
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("stateful operators changed"), "{err}");
    assert!(
        err.contains("-3600000 ms") && err.contains("-7200000 ms"),
        "{err}"
    );
}

/// As `impressions_clicks_join_exact_after_sigkills`, with the inputs, the output and the
/// checkpoint (join state included) on S3.
#[test]
fn impressions_clicks_join_s3_checkpoint_exact_after_sigkills() {
    let Some(bucket) =
        common::s3_bucket("impressions_clicks_join_s3_checkpoint_exact_after_sigkills")
    else {
        return;
    };
    let root = format!("s3://{bucket}/{}", common::unique("ad-clicks"));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = generate(13);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (name, files) in [("impressions", &data.impressions), ("clicks", &data.clicks)] {
        let local = dir.path().join(name);
        write_files(&local, files);
        runtime.block_on(common::upload_dir(
            &local,
            &Location::parse(&format!("{root}/{name}")).expect("s3"),
        ));
    }
    let path = dir.path().join("query.yaml");
    std::fs::write(&path, manifest(&root)).expect("manifest");
    common::run_with_crashes(|| common::spawn_worker(&path, &[]), 6, 50..500, None);
    let actual = runtime.block_on(output_pairs(
        &Location::parse(&format!("{root}/out")).expect("s3"),
    ));
    assert_eq!(actual, expected(&data));
}
