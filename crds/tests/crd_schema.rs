//! The generated CRD: committed copy, metadata, and its CEL rules evaluated client-side with
//! kube's CEL engine (`kube::core::cel`, the same rules the apiserver runs on admission).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_crds::crd::{CRD_CHART_PATH, crd, crd_yaml};
use sluice_crds::duration::parse_duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn crd_file_matches_generated() {
    let path = workspace_root().join(CRD_CHART_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd_yaml().expect("CRD serializes");
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p sluice-crds --bin crdgen` and commit the result",
        path.display()
    );
}

#[test]
fn crd_has_short_name_printer_columns_and_subresources() {
    let crd = serde_json::to_value(crd().expect("CRD")).expect("json");
    assert_eq!(crd["metadata"]["name"], "streamingqueries.sluice.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sq"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase",
            "Replicas",
            "Input/s",
            "Processed/s",
            "Lag",
            "Batch",
            "Last-Run",
            "Age",
            "Run-Rows",
            "Run-Batches",
            "Watermark",
            "Generation",
            "Restarts",
            "Last-Batch",
            "Message"
        ]
    );
    // The last seven are for `kubectl get sq -o wide` only.
    let wide: Vec<i64> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["priority"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(wide, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
    let sources =
        &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["sources"];
    assert_eq!(sources["x-kubernetes-list-type"], "map");
    assert_eq!(sources["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(sources["minItems"], 1);
}

fn schema() -> Value {
    let crd = serde_json::to_value(crd().expect("CRD")).expect("json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// CEL failures for `object` (and `old` for transition rules), as messages.
fn cel_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().iter().map(|e| format!("{e}")).collect(),
    }
}

fn base() -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamingQuery",
        "metadata": {"name": "q", "namespace": "default"},
        "spec": {
            "sources": [{
                "name": "events",
                "file": {"path": "s3://in/", "format": "json", "partitions": 4},
                "schema": [{"name": "ts", "type": "timestamp"}],
                "watermark": {"column": "ts", "delay": "10m"}
            }],
            "sql": "SELECT * FROM events",
            "sink": {"console": {}},
            "trigger": {"processingTime": "10s"},
            "checkpoint": {"location": "s3://ckpt/"},
            "parallelism": {"replicas": 1, "autoscale": {"enabled": true, "minReplicas": 1, "maxReplicas": 4}}
        }
    })
}

fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    *value.pointer_mut(pointer).expect("pointer exists") = new;
    value
}

#[test]
fn base_object_passes_cel() {
    assert_eq!(cel_errors(&base(), None), Vec::<String>::new());
    assert_eq!(cel_errors(&base(), Some(&base())), Vec::<String>::new());
}

#[test]
fn cel_checks_the_file_sink_compaction_size() {
    let sink = |size: &str| {
        with(
            base(),
            "/spec/sink",
            json!({"file": {"path": "s3://out/", "format": "parquet",
                            "compaction": {"minFiles": 4, "targetFileSize": size}}}),
        )
    };
    for good in ["128MiB", "64Ki", "1000", " 2 GiB "] {
        assert_eq!(
            cel_errors(&sink(good), None),
            Vec::<String>::new(),
            "{good}"
        );
    }
    for bad in ["10MB", "1.5MiB", "big"] {
        let errors = cel_errors(&sink(bad), None);
        assert!(
            errors.iter().any(|e| e.contains("must be a size")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn cel_rejects_two_source_kinds() {
    let mut object = base();
    object["spec"]["sources"][0]["rate"] = json!({"rowsPerSecond": 10});
    let errors = cel_errors(&object, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("exactly one of file, kafka, socket, rate")),
        "{errors:?}"
    );
}

#[test]
fn cel_rejects_zero_or_two_sink_kinds() {
    let none = with(base(), "/spec/sink", json!({}));
    assert!(
        cel_errors(&none, None)
            .iter()
            .any(|e| e.contains("exactly one of console"))
    );
    let two = with(
        base(),
        "/spec/sink",
        json!({"console": {}, "memory": {"name": "m"}}),
    );
    assert!(
        cel_errors(&two, None)
            .iter()
            .any(|e| e.contains("exactly one of console"))
    );
}

#[test]
fn cel_rejects_two_triggers() {
    let object = with(
        base(),
        "/spec/trigger",
        json!({"processingTime": "1s", "once": true}),
    );
    let errors = cel_errors(&object, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("at most one of processingTime")),
        "{errors:?}"
    );
    // `once: false` is not a second trigger.
    let object = with(
        base(),
        "/spec/trigger",
        json!({"processingTime": "1s", "once": false}),
    );
    assert_eq!(cel_errors(&object, None), Vec::<String>::new());
}

#[test]
fn cel_rejects_min_above_max_replicas() {
    let object = with(
        base(),
        "/spec/parallelism/autoscale",
        json!({"enabled": true, "minReplicas": 5, "maxReplicas": 2}),
    );
    let errors = cel_errors(&object, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("minReplicas must not exceed maxReplicas")),
        "{errors:?}"
    );
}

#[test]
fn cel_rejects_kafka_without_exactly_one_topic_selector() {
    let kafka = json!({"bootstrapServers": "k:9092", "topic": "a", "topicPattern": "b.*"});
    let mut object = base();
    object["spec"]["sources"][0] = json!({"name": "events", "kafka": kafka});
    let errors = cel_errors(&object, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("exactly one of topic, topics, topicPattern")),
        "{errors:?}"
    );
}

/// The CEL duration pattern must accept what the worker's parser accepts and reject garbage.
#[test]
fn cel_duration_rule_agrees_with_parse_duration() {
    let samples = [
        "10s",
        "500ms",
        "10m",
        "1 minute",
        "10 minutes",
        "1m 30s",
        "2h",
        "1 hour 30 seconds",
        "soon",
        "",
        "10",
        "ten seconds",
        "10 parsecs",
        "-5s",
        "5s;",
    ];
    for sample in samples {
        let object = with(base(), "/spec/trigger/processingTime", json!(sample));
        let cel_ok = cel_errors(&object, None).is_empty();
        let parse_ok = parse_duration(sample).is_ok();
        assert_eq!(
            cel_ok, parse_ok,
            "CEL and parse_duration disagree on {sample:?}"
        );
    }
    let object = with(base(), "/spec/sources/0/watermark/delay", json!("later"));
    assert!(
        cel_errors(&object, None)
            .iter()
            .any(|e| e.contains("must be a duration"))
    );
}

#[test]
fn cel_keeps_file_partitions_immutable() {
    let changed = with(base(), "/spec/sources/0/file/partitions", json!(8));
    let errors = cel_errors(&changed, Some(&base()));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("file.partitions is fixed")),
        "{errors:?}"
    );
    // A new query may choose any count.
    assert_eq!(cel_errors(&changed, None), Vec::<String>::new());
}

/// The transition rule agrees with the operator's advice for an unusable or foreign location
/// ("set spec.checkpoint.location ... and apply again"): the location may change until the
/// operator claimed a checkpoint (it pins `status.checkpointLocation` only then), never after.
#[test]
fn cel_keeps_checkpoint_location_once_claimed() {
    let moved = with(
        base(),
        "/spec/checkpoint/location",
        json!("s3://elsewhere/"),
    );
    let refused = |errors: Vec<String>| {
        errors
            .iter()
            .any(|e| e.contains("checkpoint.location cannot change once the checkpoint is claimed"))
    };
    // Nothing claimed yet (no status, or a status without a claimed location): may change.
    assert_eq!(cel_errors(&moved, Some(&base())), Vec::<String>::new());
    let mut failed = base();
    failed["status"] = json!({"phase": "Failed"});
    assert_eq!(cel_errors(&moved, Some(&failed)), Vec::<String>::new());

    let mut claimed = base();
    claimed["status"] = json!({"checkpointLocation": "s3://ckpt/default/q/uid/"});
    assert!(refused(cel_errors(&moved, Some(&claimed))));
    // Unset -> set after a claim under the chart's default is a move too.
    let mut claimed_default = claimed.clone();
    claimed_default["spec"]["checkpoint"] = json!({});
    assert!(refused(cel_errors(&base(), Some(&claimed_default))));
    // Set -> unset as well.
    let mut unset = base();
    unset["spec"]["checkpoint"] = json!({});
    assert!(refused(cel_errors(&unset, Some(&claimed))));
    // The same location, and other spec changes, pass.
    let mut same = with(base(), "/spec/sql", json!("SELECT 1 FROM events"));
    same["status"] = claimed["status"].clone();
    assert_eq!(cel_errors(&same, Some(&claimed)), Vec::<String>::new());
}

fn example_files() -> Vec<PathBuf> {
    let dir = workspace_root().join("manifests/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    files
}

/// Every example parses, passes `validate_spec`, and passes the CRD's CEL rules as the apiserver
/// would see it (raw YAML, defaults applied by the schema).
#[test]
fn examples_parse_validate_and_pass_cel() {
    let files = example_files();
    for required in ["iot-alerts.yaml", "wordcount.yaml", "windowed-clicks.yaml"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == required)),
            "manifests/examples/{required} is missing"
        );
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable example");
        let queries = sluice_crds::parse_manifests(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!queries.is_empty(), "{}: no StreamingQuery", file.display());
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
        for document in documents.iter().filter(|d| !d.is_null()) {
            let errors = cel_errors(document, None);
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            // Applied again unchanged (an update: transition rules run with oldSelf).
            let errors = cel_errors(document, Some(document));
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        }
    }
}

/// Whether `location` names a place on a cluster: a URL with a scheme or an absolute path.
fn is_absolute_location(location: &str) -> bool {
    location.starts_with('/')
        || location
            .split_once("://")
            .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty())
}

/// Kubernetes examples (every file but `*-local.yaml`) carry no relative checkpoint path: on a
/// cluster it has no meaning and the query goes `Failed`. Without a location the chart's
/// `checkpoint.defaultLocation` applies (and `./checkpoints/<name>` under `sluice-worker run`).
#[test]
fn kubernetes_examples_have_no_relative_checkpoint_paths() {
    assert!(!is_absolute_location("checkpoints/kafka-filter"));
    assert!(is_absolute_location("s3://checkpoints/"));
    assert!(is_absolute_location("/tmp/q/ckpt"));
    let mut checked = 0;
    for file in example_files() {
        if file
            .file_stem()
            .is_some_and(|s| s.to_string_lossy().ends_with("-local"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable example");
        for query in sluice_crds::parse_manifests(&text).expect("parses") {
            if let Some(location) = &query.spec.checkpoint.location {
                assert!(
                    is_absolute_location(location),
                    "{}: checkpoint location `{location}` is relative",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked} Kubernetes examples");
}
