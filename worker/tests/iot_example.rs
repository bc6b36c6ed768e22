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

/// A row of the output, exactly: device, temperature's bits, level, timestamp (µs).
type ExactRow = (Option<String>, Option<u64>, Option<String>, Option<i64>);

fn exact_rows(batches: &[arrow::array::RecordBatch]) -> Vec<ExactRow> {
    use arrow::array::{Array, Float64Array, StringArray, TimestampMicrosecondArray};
    let mut rows = Vec::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).expect("column").clone();
        let (ids, temps, levels, times) = (
            column("deviceId"),
            column("temperature"),
            column("danger_level"),
            column("timestamp"),
        );
        let ids = ids.as_any().downcast_ref::<StringArray>().expect("utf8");
        let temps = temps.as_any().downcast_ref::<Float64Array>().expect("f64");
        let levels = levels.as_any().downcast_ref::<StringArray>().expect("utf8");
        let times = times
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        for i in 0..batch.num_rows() {
            rows.push((
                ids.is_valid(i).then(|| ids.value(i).to_string()),
                temps.is_valid(i).then(|| temps.value(i).to_bits()),
                levels.is_valid(i).then(|| levels.value(i).to_string()),
                times.is_valid(i).then(|| times.value(i)),
            ));
        }
    }
    rows.sort();
    rows
}

/// Every `*.jsonl` file under `dir`, recursively.
fn jsonl_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            jsonl_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            out.push(path);
        }
    }
}

/// The main job over events with malformed and unusual records among them: the worker (whose JSON
/// scan reads only what the query needs and drops non-HIGH rows while scanning) writes exactly the
/// HIGH rows, and exactly the bad records, that decoding every record with arrow-json gives.
#[tokio::test]
async fn with_bad_records_the_output_is_what_arrow_json_decodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let files = sluice_bench::write_json_files(&input, SEED, FILES, ROWS).expect("generate");
    let odd: [(usize, &str); 9] = [
        (
            4,
            r#"{"deviceId":"dev-0001","temperature":95.5,"danger_level":"HIGH","timest"#,
        ),
        (16, "not json"),
        (
            99,
            r#"{"deviceId":"dev-0002","temperature":"hot","danger_level":"HIGH","timestamp":"2026-01-01T00:00:00Z"}"#,
        ),
        (
            199,
            r#"{"deviceId":"dev-0003","temperature":95.5,"danger_level":"HIGH","timestamp":"yesterday"}"#,
        ),
        (
            299,
            r#"{"deviceId":"dev-\u00e9\ud83d\ude00","temperature":95.5,"danger_level":"HIGH","timestamp":"2026-01-01T00:00:00Z"}"#,
        ),
        (
            399,
            r#"{"deviceId":"dev-0004" "temperature":95.5,"danger_level":"HIGH","timestamp":"2026-01-01T00:00:00Z"}"#,
        ),
        (
            499,
            r#"{"deviceId":"dev-0005","temperature":95.5,"danger_level":"HIGH","extra":{"a":[1,2]},"timestamp":"2026-01-01T00:00:00Z"}"#,
        ),
        (
            599,
            r#"{"deviceId":"dev-0006","temperature":1e400,"danger_level":"HIGH","danger_level":"LOW","timestamp":1767225600000000}"#,
        ),
        (
            699,
            r#"{"deviceId":"dev-0007","temperature":95,"danger_level":"LOW","timestamp":"not a time"}"#,
        ),
    ];
    let schema = sluice_worker::schema::arrow_schema(
        &sluice_crds::parse_manifest(include_str!(
            "../../manifests/examples/iot-alerts-local.yaml"
        ))
        .expect("manifest")
        .spec
        .sources[0]
            .schema,
    )
    .expect("schema");
    let mut expected_rows = Vec::new();
    let mut expected_bad = Vec::new();
    let mut expected_input = 0u64;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (at, line) in odd {
            lines[at] = line.to_string();
        }
        let body = lines.join("\n") + "\n";
        std::fs::write(path, &body).expect("write");
        let (batches, bad) = sluice_worker::source::decode::decode_lines(
            &schema,
            &sluice_worker::source::decode::TextFormat::Json,
            "f",
            body.as_bytes(),
            1,
        )
        .expect("reference");
        expected_input += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        expected_bad.extend(
            bad.into_iter()
                .map(|b| (name.clone(), b.line, b.record, b.error)),
        );
        expected_rows.extend(
            exact_rows(&batches)
                .into_iter()
                .filter(|r| r.2.as_deref() == Some("HIGH")),
        );
    }
    expected_rows.sort();
    expected_bad.sort();
    assert_eq!(
        expected_bad.len(),
        5 * FILES as usize,
        "the odd lines that arrow-json refuses"
    );

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
    let summary = engine.run(|_| {}).await.expect("run");
    assert_eq!(
        summary.input_rows, expected_input,
        "input rows: filtered ones count"
    );
    assert_eq!(summary.output_rows, expected_rows.len() as u64);

    let location = Location::parse(output.to_str().expect("utf8")).expect("location");
    let written: Vec<arrow::array::RecordBatch> = common::read_parquet_dir(&location)
        .await
        .into_values()
        .flatten()
        .collect();
    assert_eq!(exact_rows(&written), expected_rows, "HIGH rows");

    let mut paths = Vec::new();
    jsonl_files(&checkpoint, &mut paths);
    let mut bad = Vec::new();
    for path in paths
        .iter()
        .filter(|p| p.to_string_lossy().contains("bad-records"))
    {
        for line in std::fs::read_to_string(path).expect("read").lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("json");
            let origin = record["origin"].as_str().expect("origin");
            bad.push((
                origin.rsplit('/').next().expect("name").to_string(),
                record["line"].as_u64().expect("line"),
                record["record"].as_str().expect("record").to_string(),
                record["error"].as_str().expect("error").to_string(),
            ));
        }
    }
    bad.sort();
    assert_eq!(bad, expected_bad, "bad records");
}
