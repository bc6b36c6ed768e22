//! With a control token, `POST /stop` needs `Authorization: Bearer <token>`: without it (or with
//! another token) the answer is 401 and the query keeps running; with it the query stops at a batch
//! boundary. Read-only endpoints stay open.

use std::time::Duration;

mod common;

use common::http_request as request;
use sluice_worker::control::ControlAuth;
use sluice_worker::{Engine, QueryConfig, Shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_needs_the_bearer_token_and_read_only_endpoints_stay_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\":1}\n").expect("write");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: guarded}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: id, type: long}}]
  sql: SELECT id FROM events
  sink: {{memory: {{name: guarded}}}}
  trigger: {{processingTime: 50ms}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let shared = Shared::new();
    let token = "tok-7f3a9c1e5b2d4a6f8e0c";
    let addr = sluice_worker::http::serve_with_auth(
        "127.0.0.1:0".parse().expect("addr"),
        shared.clone(),
        ControlAuth::Token(token.into()),
    )
    .await
    .expect("serve");
    let engine = Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start");
    let runner = shared.clone();
    let running = tokio::spawn(async move {
        let summary = engine.run(|_| {}).await;
        runner.mark_stopped();
        summary
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    for head in [
        "POST /stop HTTP/1.0".to_string(),
        "POST /stop HTTP/1.0\r\nAuthorization: Bearer wrong-token".to_string(),
        format!("POST /stop HTTP/1.0\r\nAuthorization: {token}"),
    ] {
        let response = request(addr, &head).await;
        assert!(response.starts_with("HTTP/1.0 401"), "{head}: {response}");
        assert!(!response.contains(token), "{response}");
    }
    // A new file after the refused stops is still read: the query kept running.
    std::fs::write(input.join("b.json"), "{\"id\":2}\n").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!shared.stop.is_requested());
    assert!(!running.is_finished());
    let progress = request(addr, "GET /progress HTTP/1.0").await;
    assert!(progress.starts_with("HTTP/1.0 200"), "{progress}");
    let metrics = request(addr, "GET /metrics HTTP/1.0").await;
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");

    let response = request(
        addr,
        &format!("POST /stop HTTP/1.0\r\nAuthorization: Bearer {token}"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let summary = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped")
        .expect("join")
        .expect("run");
    assert_eq!(summary.input_rows, 2);
}
