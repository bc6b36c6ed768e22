//! `/healthz` turns unhealthy (503 with a reason) while a batch runs longer than
//! `spec.health.maxBatchDuration`, and healthy again once the batch ends: Kubernetes' liveness
//! probe restarts a worker whose batch hangs instead of letting the query stall.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One `GET /healthz`: `(status, body)`, `None` while the server is not up.
fn healthz(port: u16) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

#[test]
fn healthz_is_503_while_a_batch_runs_past_max_batch_duration_and_200_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\": 1}\n").expect("input");
    let manifest = dir.path().join("query.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: hung}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: id, type: long}}]
  sql: SELECT id FROM events
  sink: {{console: {{}}}}
  checkpoint: {{location: "{}"}}
  health: {{maxBatchDuration: 1s}}
"#,
            input.display(),
            dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let port = 21480;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    command
        .arg("run")
        .arg(&manifest)
        .args(["--http", &port.to_string()])
        // Batch 0 hangs for 4 s before its commit.
        .env("SLUICE_DELAY_AT", "before-commit:0:4000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let mut worker = command.spawn().expect("spawn worker");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_unhealthy = None;
    let mut healthy_again = false;
    while Instant::now() < deadline {
        match healthz(port) {
            Some((503, body)) => seen_unhealthy = Some(body),
            Some((200, _)) if seen_unhealthy.is_some() => {
                healthy_again = true;
                break;
            }
            Some((200, _)) | None => {}
            Some((status, body)) => panic!("unexpected /healthz answer {status}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let body = seen_unhealthy.expect("/healthz never answered 503 during the hung batch");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(body["status"], "unhealthy");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("the current batch has run for ")
            && reason.ends_with("longer than spec.health.maxBatchDuration (1.0s)"),
        "{reason}"
    );
    assert!(
        healthy_again,
        "/healthz did not turn healthy after the batch ended"
    );
}
