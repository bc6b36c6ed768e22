//! `POST /stop` answers only once the trigger loop has exited after its final commit, with the
//! latest progress; `SLUICE_ROW_COST_MICROS` (`QueryConfig::row_cost`) makes a round take at
//! least `rows × cost`, and the busy-seconds metric counts the round's wall time once.

use std::time::{Duration, Instant};

use sluice_worker::{Engine, QueryConfig, Shared};

mod common;

async fn post_stop(addr: std::net::SocketAddr) -> String {
    common::http_request(addr, "POST /stop HTTP/1.0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_the_final_commit_and_row_cost_paces_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let rows: String = (0..20).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    std::fs::write(input.join("a.json"), rows).expect("write");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: stopper}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: id, type: long}}]
  sql: SELECT id FROM events
  sink: {{memory: {{name: stopper}}}}
  trigger: {{processingTime: 50ms}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let mut config = QueryConfig::local(query);
    config.row_cost = Duration::from_millis(20);
    let shared = Shared::new();
    let addr = sluice_worker::http::serve("127.0.0.1:0".parse().expect("addr"), shared.clone())
        .await
        .expect("serve");
    let engine = Engine::start(config, shared.clone()).await.expect("start");
    let started = Instant::now();
    let runner = shared.clone();
    let running = tokio::spawn(async move {
        let summary = engine.run(|_| {}).await;
        runner.mark_stopped();
        summary
    });
    // Stop while the first batch (20 rows × 20 ms = 400 ms) is still paying its cost.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = post_stop(addr).await;
    let answered = started.elapsed();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        answered >= Duration::from_millis(400),
        "answered after {answered:?}, before the batch could have committed"
    );
    let summary = running.await.expect("join").expect("run");
    assert_eq!(summary.batches, 1);
    assert_eq!(summary.input_rows, 20);
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    let body: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(body["stopped"], true);
    assert_eq!(body["latest"]["batchId"], 0);
    assert_eq!(body["latest"]["numInputRows"], 20);
    // Busy seconds: the round's wall time (≥ 400 ms), counted once.
    let metrics = shared.metrics.encode();
    let busy: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_batch_busy_seconds_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("busy metric");
    assert!((0.4..2.0).contains(&busy), "busy seconds {busy}");
}
