//! Malformed lines go to the bad-records location with file and line; the good rows of the same
//! file are processed; `onBadRecord: fail` stops with the file and line.

mod common;

use arrow::array::{Array, StringArray};
use sluice_worker::sink::memory::read_table;
use sluice_worker::{Engine, QueryConfig, Shared};

fn manifest(input: &str, checkpoint: &str, table: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: bad}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, partitions: 1}}
      schema: [{{name: id, type: string}}, {{name: temperature, type: double}}]
      onBadRecord: {policy}
  sql: SELECT id FROM events
  sink: {{memory: {{name: {table}}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
"#
    )
}

const DIRTY: &str = "{\"id\":\"a\",\"temperature\":1.5}\n{\"id\":\"b\",\"temperature\":\n{\"id\":\"c\",\"temperature\":\"hot\"}\n{\"id\":\"d\",\"temperature\":4}\n";

#[tokio::test]
async fn bad_lines_are_quarantined_with_file_and_line_and_good_rows_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("dirty.json"), DIRTY).expect("write");
    let checkpoint = dir.path().join("ckpt");
    let text = manifest(
        input.to_str().expect("utf8"),
        checkpoint.to_str().expect("utf8"),
        "bad_quarantine",
        "quarantine",
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let shared = Shared::new();
    let summary = Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run");
    assert_eq!(summary.bad_records, 2);

    let mut ids: Vec<String> = read_table("bad_quarantine")
        .values()
        .flatten()
        .flat_map(|b| {
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone();
            (0..a.len())
                .map(move |i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["a", "d"],
        "good rows of the dirty file are processed"
    );

    let quarantined = std::fs::read_to_string(
        checkpoint.join("bad-records/events/task-0/batch-00000000000000000000.jsonl"),
    )
    .expect("bad records file");
    let records: Vec<serde_json::Value> = quarantined
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[1]["line"], 3);
    assert!(
        records[0]["origin"]
            .as_str()
            .expect("origin")
            .ends_with("/dirty.json")
    );
    assert_eq!(
        records[1]["record"],
        "{\"id\":\"c\",\"temperature\":\"hot\"}"
    );
    let metrics = shared.metrics.encode();
    assert!(
        metrics
            .contains("sluice_bad_records_total{query=\"bad\",namespace=\"default\",task=\"0\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fail_policy_stops_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("dirty.json"), DIRTY).expect("write");
    let text = manifest(
        input.to_str().expect("utf8"),
        dir.path().join("ckpt").to_str().expect("utf8"),
        "bad_fail",
        "fail",
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let err = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("dirty.json") && err.contains("line 2"),
        "{err}"
    );
    assert!(
        read_table("bad_fail").is_empty(),
        "nothing written for the failed batch"
    );
}
