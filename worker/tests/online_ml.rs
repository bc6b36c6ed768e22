//! Online machine learning in SQL: `predict` with a model file gives the hand-computed scores;
//! streaming k-means over a stream equals a Lloyd step of batch k-means (decay 1, 1 batch or many)
//! and converges to the true centers; streaming linear regression recovers known coefficients; a
//! worker killed with SIGKILL mid-run ends with the same centers as an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use arrow::array::{Array, Float64Array, Int64Array};
use object_store::ObjectStoreExt;
use sluice_worker::checkpoint::Checkpoint;
use sluice_worker::ml::ModelState;
use sluice_worker::sink::memory::read_table;
use sluice_worker::storage::Location;
use sluice_worker::{Engine, QueryConfig, Shared};

const TRUE_CENTERS: [[f64; 2]; 3] = [[0.0, 0.0], [10.0, 10.0], [-10.0, 8.0]];
const START: &str = "[[1.0, -1.0], [8.0, 9.0], [-7.0, 6.0]]";

/// Writes `files` JSON files of points around the true centers (deterministic, radius ≤ 0.5).
fn write_points(dir: &Path, files: usize, per_file: usize) -> Vec<[f64; 2]> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut all = Vec::new();
    for f in 0..files {
        let mut text = String::new();
        for i in 0..per_file {
            let n = f * per_file + i;
            let c = TRUE_CENTERS[n % 3];
            let angle = n as f64 * 2.399963;
            let r = 0.5 * ((n % 7) as f64 / 7.0);
            let p = [c[0] + r * angle.cos(), c[1] + r * angle.sin()];
            text.push_str(&format!("{{\"x\":{},\"y\":{}}}\n", p[0], p[1]));
            all.push(p);
        }
        std::fs::write(dir.join(format!("points-{f:04}.json")), text).expect("write");
    }
    all
}

fn kmeans_manifest(
    name: &str,
    input: &Path,
    checkpoint: &Path,
    max_files: usize,
    decay: f64,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: points
      file: {{path: "{}", format: json, partitions: 1, maxFilesPerTrigger: {max_files}}}
      schema: [{{name: x, type: double}}, {{name: y, type: double}}]
  models:
    - name: km
      streamingKMeans: {{source: points, features: [x, y], k: 3, decayFactor: {decay}, initialCenters: {START}}}
  sql: SELECT x, y, kmeans_cluster('km', x, y) AS cluster, kmeans_distance('km', x, y) AS distance FROM points
  sink: {{memory: {{name: {name}}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        checkpoint.display()
    )
}

/// Runs a manifest in-process to the end; returns the learned state of model `km` (task 0).
async fn run_to_end(manifest: &str) -> BTreeMap<String, ModelState> {
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    let mut last = None;
    Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start")
        .run(|p| last = Some(p.models.clone()))
        .await
        .expect("run");
    let models = last.expect("at least one batch");
    models
        .into_iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_string(),
                serde_json::from_value(m["state"].clone()).expect("state"),
            )
        })
        .collect()
}

fn centers(models: &BTreeMap<String, ModelState>) -> Vec<Vec<f64>> {
    match &models["km"] {
        ModelState::KMeans { state } => state.centers.clone(),
        other => panic!("not k-means: {other:?}"),
    }
}

fn lloyd_step(points: &[[f64; 2]]) -> Vec<Vec<f64>> {
    let start: Vec<Vec<f64>> = serde_json::from_str(START).expect("start");
    let mut sums = [[0.0f64; 2]; 3];
    let mut counts = [0.0f64; 3];
    for p in points {
        let nearest = (0..3)
            .min_by(|&a, &b| {
                let da = (start[a][0] - p[0]).powi(2) + (start[a][1] - p[1]).powi(2);
                let db = (start[b][0] - p[0]).powi(2) + (start[b][1] - p[1]).powi(2);
                da.total_cmp(&db)
            })
            .expect("k > 0");
        counts[nearest] += 1.0;
        sums[nearest][0] += p[0];
        sums[nearest][1] += p[1];
    }
    (0..3)
        .map(|i| vec![sums[i][0] / counts[i], sums[i][1] / counts[i]])
        .collect()
}

fn assert_close(actual: &[Vec<f64>], expected: &[Vec<f64>], tolerance: f64, what: &str) {
    for (a, e) in actual.iter().zip(expected) {
        for (x, y) in a.iter().zip(e) {
            assert!(
                (x - y).abs() <= tolerance,
                "{what}: {actual:?} vs {expected:?}"
            );
        }
    }
}

#[tokio::test]
async fn kmeans_one_batch_or_many_equals_a_lloyd_step_and_finds_the_true_centers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let points = write_points(&dir.path().join("in"), 30, 60);
    let expected = lloyd_step(&points);

    let one = run_to_end(&kmeans_manifest(
        "km_one",
        &dir.path().join("in"),
        &dir.path().join("c1"),
        1000,
        1.0,
    ))
    .await;
    let many = run_to_end(&kmeans_manifest(
        "km_many",
        &dir.path().join("in"),
        &dir.path().join("c2"),
        1,
        1.0,
    ))
    .await;
    assert_eq!(read_table("km_one").len(), 1, "one batch");
    assert_eq!(read_table("km_many").len(), 30, "thirty batches");
    assert_close(&centers(&one), &expected, 1e-9, "1 batch vs Lloyd");
    assert_close(&centers(&many), &expected, 1e-9, "30 batches vs Lloyd");
    let truth: Vec<Vec<f64>> = TRUE_CENTERS.iter().map(|c| c.to_vec()).collect();
    assert_close(&centers(&many), &truth, 0.05, "true centers");

    // Each output row carries its cluster and distance; the last batch used the trained model.
    let table = read_table("km_many");
    let last = table.values().last().expect("batches");
    let clusters = last[0]
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cluster");
    let distances = last[0]
        .column(3)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("distance");
    assert!((0..clusters.len()).all(|i| (0..3).contains(&clusters.value(i))));
    assert!(
        (0..distances.len()).all(|i| distances.value(i) < 0.6),
        "points are near their centers"
    );
}

#[tokio::test]
async fn predict_with_a_linear_model_file_gives_the_hand_computed_scores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(
        input.join("rows.json"),
        "{\"a\":1.0,\"b\":2.0}\n{\"a\":-3.5,\"b\":0.25}\n",
    )
    .expect("write");
    let model = dir.path().join("model.json");
    std::fs::write(
        &model,
        r#"{"type":"linear","coefficients":[2.0,-4.0],"intercept":0.5}"#,
    )
    .expect("model");
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: scored}}
spec:
  sources:
    - name: rows
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: a, type: double}}, {{name: b, type: double}}]
  models:
    - {{name: lin, file: {{path: "{}"}}}}
  sql: SELECT a, b, predict('lin', a, b) AS score FROM rows
  sink: {{memory: {{name: scored}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        model.display(),
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&manifest).expect("manifest");
    Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run");
    let table = read_table("scored");
    let batch = &table.values().next().expect("batch")[0];
    let scores = batch
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("score");
    assert_eq!(
        scores.values().to_vec(),
        vec![2.0 * 1.0 - 4.0 * 2.0 + 0.5, 2.0 * -3.5 - 4.0 * 0.25 + 0.5]
    );
}

#[tokio::test]
async fn streaming_linear_regression_recovers_the_coefficients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut state = 0x9e37_79b9u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 20_001) as f64 / 10_000.0 - 1.0
    };
    for f in 0..40 {
        let mut text = String::new();
        for _ in 0..100 {
            let (x1, x2, noise) = (uniform(), uniform(), uniform() * 0.05);
            text.push_str(&format!(
                "{{\"x1\":{x1},\"x2\":{x2},\"y\":{}}}\n",
                2.0 * x1 - 3.0 * x2 + 0.5 + noise
            ));
        }
        std::fs::write(input.join(format!("f{f:03}.json")), text).expect("write");
    }
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: regression}}
spec:
  sources:
    - name: rows
      file: {{path: "{}", format: json, partitions: 1, maxFilesPerTrigger: 1}}
      schema: [{{name: x1, type: double}}, {{name: x2, type: double}}, {{name: y, type: double}}]
  models:
    - name: trend
      streamingLinearRegression: {{source: rows, features: [x1, x2], label: y, stepSize: 0.5, numIterations: 50, fitIntercept: true}}
  sql: SELECT y, predict('trend', x1, x2) AS predicted FROM rows
  sink: {{memory: {{name: regression}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        dir.path().join("ckpt").display()
    );
    let models = run_to_end(&manifest).await;
    let ModelState::Regression { state } = &models["trend"] else {
        panic!("regression")
    };
    for (w, e) in state.weights.iter().zip([2.0, -3.0, 0.5]) {
        assert!((w - e).abs() < 0.05, "weights {:?}", state.weights);
    }
}

#[test]
fn kmeans_state_survives_sigkill_and_ends_equal_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    write_points(&input, 120, 400);
    let run = |checkpoint: &Path, kills: usize| {
        let manifest = dir.path().join(format!("q-{kills}.yaml"));
        std::fs::write(
            &manifest,
            kmeans_manifest("km_crash", &input, checkpoint, 1, 0.8),
        )
        .expect("manifest");
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
                .arg("run")
                .arg(&manifest)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn")
        };
        if kills == 0 {
            let status = spawn().wait().expect("uninterrupted run");
            assert!(status.success());
            return;
        }
        common::run_with_crashes(spawn, kills, 40..400, Some(kills as u64 * 7 + 1));
    };
    let final_centers = |checkpoint: &Path| -> Vec<Vec<f64>> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let ckpt =
                Checkpoint::new(Location::parse(checkpoint.to_str().expect("utf8")).expect("loc"));
            let log = ckpt.read_task_log(0).await.expect("log");
            let last = log.last_committed.expect("committed batches");
            assert_eq!(last, 119, "one batch per file");
            let models: BTreeMap<String, ModelState> = ckpt
                .read_models(0, last)
                .await
                .expect("read")
                .expect("models saved with the last batch");
            centers(&models)
        })
    };
    // run_with_crashes asserts that at least two rounds were really killed.
    run(&dir.path().join("crashed"), 6);
    run(&dir.path().join("clean"), 0);
    let crashed = final_centers(&dir.path().join("crashed"));
    let clean = final_centers(&dir.path().join("clean"));
    assert_close(
        &crashed,
        &clean,
        1e-12,
        "centers after SIGKILLs vs uninterrupted",
    );
}

/// A tiny ONNX model of `tests/data/ml` (made by `make_models.py` there).
fn onnx_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ml")
        .join(name)
}

/// A query over the JSON rows in `input` (`a BIGINT`, `b DOUBLE`, `c STRING`), one file per batch,
/// with `models` (a YAML flow list) and `sql`, writing to memory table `name`.
fn scoring_manifest(name: &str, dir: &Path, models: &str, sql: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: {name}}}
spec:
  sources:
    - name: rows
      file: {{path: "{}", format: json, partitions: 1, maxFilesPerTrigger: 1}}
      schema: [{{name: a, type: long}}, {{name: b, type: double}}, {{name: c, type: string}}]
  models: {models}
  sql: {sql}
  sink: {{memory: {{name: {name}}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        dir.join("in").display(),
        dir.join("ckpt").display()
    )
}

/// Writes input files (one per batch), runs the query to the end and returns its first error.
async fn run_scoring(manifest: &str, dir: &Path, files: &[&str]) -> sluice_worker::Result<()> {
    run_scoring_with(manifest, dir, files, |_| {}).await
}

async fn run_scoring_with(
    manifest: &str,
    dir: &Path,
    files: &[&str],
    mut after_batch: impl FnMut(u64),
) -> sluice_worker::Result<()> {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for (i, text) in files.iter().enumerate() {
        std::fs::write(input.join(format!("rows-{i:03}.json")), text).expect("write");
    }
    let query = sluice_crds::parse_manifest(manifest).expect("manifest");
    let mut batches = 0;
    Engine::start(QueryConfig::local(query), Shared::new())
        .await?
        .run(|_| {
            after_batch(batches);
            batches += 1;
        })
        .await
        .map(|_| ())
}

/// Column `column` of every row of memory table `name`, in batch order (None for null).
fn scores(name: &str, column: usize) -> Vec<Option<f64>> {
    read_table(name)
        .values()
        .flatten()
        .flat_map(|batch| {
            let scores = batch
                .column(column)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("scores are DOUBLE")
                .clone();
            (0..scores.len())
                .map(|i| (!scores.is_null(i)).then(|| scores.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn predict_with_an_onnx_linear_model_gives_w_x_plus_b() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = scoring_manifest(
        "onnx_linear",
        dir.path(),
        &format!(
            "[{{name: lin, file: {{path: \"{}\"}}}}]",
            onnx_file("linear.onnx").display()
        ),
        "SELECT a, b, predict('lin', a, b) AS score FROM rows",
    );
    run_scoring(
        &manifest,
        dir.path(),
        &["{\"a\":1,\"b\":2.0}\n{\"a\":-3,\"b\":0.25}\n{\"a\":7,\"b\":null}\n{\"a\":100,\"b\":-8.0}\n"],
    )
    .await
    .expect("run");
    // linear.onnx: y = 2 a - 0.5 b + 1; a row with a null feature scores null.
    assert_eq!(
        scores("onnx_linear", 2),
        vec![
            Some(2.0 * 1.0 - 0.5 * 2.0 + 1.0),
            Some(2.0 * -3.0 - 0.5 * 0.25 + 1.0),
            None,
            Some(2.0 * 100.0 - 0.5 * -8.0 + 1.0),
        ]
    );
}

#[tokio::test]
async fn predict_with_an_onnx_tree_ensemble_gives_the_leaf_sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trees = onnx_file("trees.onnx");
    let manifest = scoring_manifest(
        "onnx_trees",
        dir.path(),
        &format!(
            "[{{name: trees, file: {{path: \"{0}\"}}}}, \
              {{name: trees_class0, file: {{path: \"{0}\", format: onnx, output: probabilities, classIndex: 0}}}}]",
            trees.display()
        ),
        "SELECT a, b, predict('trees', a, b) AS p, predict('trees_class0', a, b) AS q FROM rows",
    );
    run_scoring(
        &manifest,
        dir.path(),
        &[
            "{\"a\":5,\"b\":1.0}\n{\"a\":10,\"b\":5.0}\n",
            "{\"a\":30,\"b\":7.0}\n{\"a\":20,\"b\":9.0}\n{\"a\":11,\"b\":4.5}\n",
        ],
    )
    .await
    .expect("run");
    // Tree 0: a <= 10 ? 0.25 : 0.5. Tree 1: b < 5 ? 0.125 : (a > 20 ? 0.375 : 0.25).
    // The positive class's probability is the sum s; class 0's is 1 - s.
    let expected = [
        0.25 + 0.125, // a=5 <= 10; b=1 < 5
        0.25 + 0.25,  // a=10 <= 10 (LEQ boundary); b=5 not < 5, a=10 not > 20
        0.5 + 0.375,  // a=30 > 10; b=7, a=30 > 20
        0.5 + 0.25,   // a=20 > 10; b=9, a=20 not > 20 (GT boundary)
        0.5 + 0.125,  // a=11 > 10; b=4.5 < 5
    ];
    assert_eq!(
        scores("onnx_trees", 2),
        expected.iter().map(|s| Some(*s)).collect::<Vec<_>>()
    );
    assert_eq!(
        scores("onnx_trees", 3),
        expected.iter().map(|s| Some(1.0 - s)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_onnx_model_file_replaced_between_batches_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.onnx");
    std::fs::copy(onnx_file("linear.onnx"), &model).expect("copy");
    let manifest = scoring_manifest(
        "onnx_reload",
        dir.path(),
        &format!("[{{name: m, file: {{path: \"{}\"}}}}]", model.display()),
        "SELECT predict('m', a, b) AS score FROM rows",
    );
    let row = "{\"a\":30,\"b\":7.0}\n";
    run_scoring_with(&manifest, dir.path(), &[row, row], |batch| {
        if batch == 0 {
            std::fs::copy(onnx_file("trees.onnx"), &model).expect("replace");
        }
    })
    .await
    .expect("run");
    // Batch 0 by the linear model (2·30 − 0.5·7 + 1), batch 1 by the trees (0.5 + 0.375).
    assert_eq!(scores("onnx_reload", 0), vec![Some(57.5), Some(0.875)]);
}

#[tokio::test]
async fn a_broken_new_model_version_leaves_the_previous_one_scoring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.onnx");
    std::fs::copy(onnx_file("linear.onnx"), &model).expect("copy");
    let manifest = scoring_manifest(
        "onnx_broken_update",
        dir.path(),
        &format!("[{{name: m, file: {{path: \"{}\"}}}}]", model.display()),
        "SELECT predict('m', a, b) AS score FROM rows",
    );
    let row = "{\"a\":30,\"b\":7.0}\n";
    run_scoring_with(
        &manifest,
        dir.path(),
        &[row, row, row],
        |batch| match batch {
            0 => std::fs::write(&model, b"half an upload").expect("break"),
            1 => std::fs::copy(onnx_file("trees.onnx"), &model)
                .map(|_| ())
                .expect("fix"),
            _ => {}
        },
    )
    .await
    .expect("a broken update must not stop the query");
    // Batches 0 and 1 by the linear model (the broken version is skipped), batch 2 by the trees.
    assert_eq!(
        scores("onnx_broken_update", 0),
        vec![Some(57.5), Some(57.5), Some(0.875)]
    );
}

#[tokio::test]
async fn bad_model_input_is_a_user_error_naming_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let linear = onnx_file("linear.onnx");
    let not_onnx = dir.path().join("broken.onnx");
    std::fs::write(&not_onnx, b"not a protobuf graph").expect("write");
    let cases = [
        (
            format!(
                "{{name: gone, file: {{path: \"{}\"}}}}",
                dir.path().join("missing.onnx").display()
            ),
            "predict('gone', a, b)",
            vec!["model `gone`", "not found"],
        ),
        (
            format!(
                "{{name: broken, file: {{path: \"{}\"}}}}",
                not_onnx.display()
            ),
            "predict('broken', a, b)",
            vec!["model `broken`", "not an ONNX model"],
        ),
        (
            format!("{{name: lin, file: {{path: \"{}\"}}}}", linear.display()),
            "predict('lin', a, b, b)",
            vec!["model `lin` takes 2 features, got 3"],
        ),
        (
            format!("{{name: lin, file: {{path: \"{}\"}}}}", linear.display()),
            "predict('lin', a, c)",
            vec!["model `lin`: feature 2 is of type Utf8", "not a number"],
        ),
        (
            format!(
                "{{name: lin, file: {{path: \"{}\", output: nope}}}}",
                linear.display()
            ),
            "predict('lin', a, b)",
            vec!["model `lin`", "no output named `nope`"],
        ),
    ];
    for (i, (model, call, expected)) in cases.iter().enumerate() {
        let case = dir.path().join(format!("case-{i}"));
        let manifest = scoring_manifest(
            &format!("onnx_bad_{i}"),
            &case,
            &format!("[{model}]"),
            &format!("SELECT {call} AS score FROM rows"),
        );
        let error = run_scoring(&manifest, &case, &["{\"a\":1,\"b\":2.0,\"c\":\"x\"}\n"])
            .await
            .expect_err("bad input must fail the query");
        assert_eq!(error.class(), sluice_worker::ErrorClass::User, "{error}");
        let message = error.to_string();
        for part in expected {
            assert!(
                message.contains(part),
                "case {i}: `{message}` lacks `{part}`"
            );
        }
    }
}

#[tokio::test]
async fn predict_with_an_onnx_model_on_s3() {
    let Some(bucket) = common::s3_bucket("predict_with_an_onnx_model_on_s3") else {
        return;
    };
    let prefix = Location::parse(&format!("s3://{bucket}/{}", common::unique("onnx-model")))
        .expect("s3 location");
    let object = prefix.child("trees.onnx");
    let bytes = std::fs::read(onnx_file("trees.onnx")).expect("read");
    prefix
        .store
        .put(&object, bytes.into())
        .await
        .expect("upload");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = scoring_manifest(
        "onnx_s3",
        dir.path(),
        &format!(
            "[{{name: trees, file: {{path: \"{}/trees.onnx\"}}}}]",
            prefix.url
        ),
        "SELECT predict('trees', a, b) AS p FROM rows",
    );
    let result = run_scoring(
        &manifest,
        dir.path(),
        &["{\"a\":30,\"b\":7.0}\n{\"a\":5,\"b\":1.0}\n"],
    )
    .await;
    prefix.store.delete(&object).await.expect("delete");
    result.expect("run");
    assert_eq!(
        scores("onnx_s3", 0),
        vec![Some(0.5 + 0.375), Some(0.25 + 0.125)]
    );
}
