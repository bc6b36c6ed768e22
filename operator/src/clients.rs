//! The small clients the operator talks through, shared by both backends and the autoscaler:
//! `sluice-worker check` (the engine's own validation of a spec), a minimal HTTP/1.0 client for
//! the workers' `/progress` and `/stop` and for Prometheus, and Prometheus instant queries.
//!
//! They live apart from the backends so that `scaling` (used by both) depends on neither.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub use sluice_crds::contract::CheckReport;

/// Outcome of running `sluice-worker check`.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckOutcome {
    Valid(CheckReport),
    /// Exit 2: the manifest, SQL or its fit with the checkpoint is invalid.
    Refused(String),
    /// Anything else (store unreachable, binary missing): try again later.
    Unknown(String),
    /// Still running (a check Job on Kubernetes): look again on the next reconcile.
    Pending(String),
}

/// Runs `worker_bin check MANIFEST [--checkpoint LOC]`.
pub async fn run_check(
    worker_bin: &Path,
    manifest: &Path,
    checkpoint: Option<&str>,
) -> CheckOutcome {
    let mut command = Command::new(worker_bin);
    command.arg("check").arg(manifest);
    if let Some(location) = checkpoint {
        command
            .arg(sluice_crds::contract::FLAG_CHECKPOINT)
            .arg(location);
    }
    // Errors only, and no colour codes in the message that lands in status and events.
    command.env("RUST_LOG", "error").env("NO_COLOR", "1");
    match command.output().await {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            match output.status.code() {
                Some(0) => match serde_json::from_slice(&output.stdout) {
                    Ok(report) => CheckOutcome::Valid(report),
                    Err(e) => CheckOutcome::Unknown(format!("unreadable check report: {e}")),
                },
                Some(sluice_crds::contract::CHECK_EXIT_REFUSED) => CheckOutcome::Refused(
                    stderr
                        .trim_start_matches("error: ")
                        .lines()
                        .next()
                        .unwrap_or("invalid")
                        .to_string(),
                ),
                _ => CheckOutcome::Unknown(stderr),
            }
        }
        Err(e) => CheckOutcome::Unknown(format!("cannot run {}: {e}", worker_bin.display())),
    }
}

/// Runs `worker_bin checkpoint restore --manifest MANIFEST --batch-id N --checkpoint LOC`:
/// exit 0 is `Restored` (the generation from its stdout line), exit 2 `Refused` (its one-line
/// reason), anything else `Unavailable`.
pub async fn run_restore(
    worker_bin: &Path,
    manifest: &Path,
    request: &crate::plan::RestoreRequest,
) -> crate::plan::RestoreObservation {
    use crate::plan::RestoreObservation;
    let mut command = Command::new(worker_bin);
    command
        .args(["checkpoint", "restore", "--manifest"])
        .arg(manifest)
        .arg("--batch-id")
        .arg(request.batch_id.to_string())
        .arg(sluice_crds::contract::FLAG_CHECKPOINT)
        .arg(&request.checkpoint_location)
        .env("RUST_LOG", "error")
        .env("NO_COLOR", "1")
        // No termination message outside a pod: the verdict is read from stdout/stderr.
        .env_remove("SLUICE_TERMINATION_LOG");
    match command.output().await {
        Ok(output) => {
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            restore_verdict(output.status.code(), &stdout, &stderr)
        }
        Err(e) => {
            RestoreObservation::Unavailable(format!("cannot run {}: {e}", worker_bin.display()))
        }
    }
}

/// The verdict of `sluice-worker checkpoint restore` from its exit code and output (stdout on
/// success, the reason line otherwise: stderr or the termination message).
pub fn restore_verdict(
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> crate::plan::RestoreObservation {
    use crate::plan::RestoreObservation;
    let reason = || {
        stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error: "))
            .or_else(|| stderr.lines().last())
            .unwrap_or("no reason given")
            .trim_start_matches("error: ")
            .to_string()
    };
    match code {
        Some(0) => {
            let line = stdout.lines().last().unwrap_or_default().to_string();
            match crate::plan::restore::restored_generation(&line) {
                Some(generation) => RestoreObservation::Restored {
                    generation,
                    message: line,
                },
                None => {
                    RestoreObservation::Unavailable(format!("unreadable restore report: {line}"))
                }
            }
        }
        Some(sluice_crds::contract::CHECK_EXIT_REFUSED) => RestoreObservation::Refused(reason()),
        _ => RestoreObservation::Unavailable(reason()),
    }
}

/// A minimal HTTP/1.0 client for 127.0.0.1 endpoints (workers, Prometheus): no TLS, no
/// keep-alive, the body is read to the end of the connection.
///
/// # Errors
/// A message for connection failures, timeouts and non-2xx answers.
pub async fn http(
    method: &str,
    url: &str,
    timeout: Duration,
) -> std::result::Result<String, String> {
    http_authorized(method, url, timeout, None).await
}

/// [`http`] with an `Authorization` header (`Bearer <control token>` for a worker's `/stop`).
/// The header value never appears in the returned error.
///
/// # Errors
/// As [`http`].
pub async fn http_authorized(
    method: &str,
    url: &str,
    timeout: Duration,
    authorization: Option<&str>,
) -> std::result::Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let mut target = parsed.path().to_string();
    if let Some(query) = parsed.query() {
        target.push('?');
        target.push_str(query);
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let authorization = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {target} HTTP/1.0\r\nHost: {host}:{port}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: timed out"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    if (200..300).contains(&code) {
        Ok(body.to_string())
    } else {
        Err(format!("{url}: HTTP {code}: {}", body.trim()))
    }
}

/// One instant query to Prometheus' `/api/v1/query`; `None` when the result is empty or NaN.
///
/// # Errors
/// Transport errors and non-success answers.
pub async fn prometheus_scalar(
    base: &str,
    promql: &str,
) -> std::result::Result<Option<f64>, String> {
    let encoded: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let body = http(
        "GET",
        &format!(
            "{}/api/v1/query?query={encoded}",
            base.trim_end_matches('/')
        ),
        Duration::from_secs(3),
    )
    .await?;
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(value
        .pointer("/data/result/0/value/1")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_client_reads_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.0 200 OK\r\n\r\n{\"ok\":1}",
                "HTTP/1.0 503 Nope\r\n\r\ndown",
            ] {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                socket.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        let url = format!("http://127.0.0.1:{port}/x?q=1");
        assert_eq!(
            http("GET", &url, Duration::from_secs(2)).await.as_deref(),
            Ok("{\"ok\":1}")
        );
        let err = http("GET", &url, Duration::from_secs(2))
            .await
            .expect_err("503");
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn http_authorized_sends_the_authorization_header() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            socket
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nstopped")
                .await
                .expect("write");
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let url = format!("http://127.0.0.1:{port}/stop");
        let answer =
            http_authorized("POST", &url, Duration::from_secs(2), Some("Bearer abc123")).await;
        assert_eq!(answer.as_deref(), Ok("stopped"));
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /stop HTTP/1.0\r\n"), "{request}");
        assert!(
            request.contains("\r\nAuthorization: Bearer abc123\r\n"),
            "{request}"
        );
    }
}
