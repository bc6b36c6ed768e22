//! `GET /report`: how a finished worker command tells the operator its outcome without the
//! operator reading pods.
//!
//! On Kubernetes the operator's check, restore and run Jobs, and a continuous worker that stops
//! on an error, end with one line: the check's verdict JSON, the restore's verdict, the run's
//! `Run: batches ...` line, a `PoisonBatch: ...` line or the error. It goes to the container's
//! termination message (for `kubectl describe`), and, when the operator asked for it with
//! [`ENV_REPORT_HOLD_SECONDS`], the process then serves it as a
//! [`JobReport`] on `GET /report` (port [`REPORT_PORT`]) until the operator has read it (then
//! [`REPORT_LINGER_SECONDS`] more) or the hold time is over, and only then exits with its code.
//! The operator finds the pod by its stable DNS name (a headless Service per query), so it needs
//! no `pods` permission (least privilege; the chart has no `pods` rule). The endpoint is
//! read-only; the NetworkPolicy admits only the operator and Prometheus to worker ports.
//!
//! A continuous worker stopped by SIGTERM (a scale-down or upgrade) exits at once: it has nothing
//! to report and must not delay the stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use sluice_crds::contract::{
    ENV_REPORT_HOLD_SECONDS, JobReport, REPORT_LINGER_SECONDS, REPORT_PORT, STARTS_FILE,
};
use tokio::sync::Notify;

/// Overrides the address `GET /report` listens on (default `0.0.0.0:`[`REPORT_PORT`], as a pod
/// needs); tests set a 127.0.0.1 address.
pub const REPORT_ADDR_ENV: &str = "SLUICE_REPORT_ADDR";

/// How long to hold the report, from [`ENV_REPORT_HOLD_SECONDS`]; `None` when unset, zero or
/// unreadable (nothing is served).
pub fn hold_from_env() -> Option<Duration> {
    std::env::var(ENV_REPORT_HOLD_SECONDS)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// Counts this start of the worker container in [`STARTS_FILE`] when its directory exists (the
/// pod's `emptyDir`, which outlives container restarts), returning the starts so far including
/// this one; `None` outside such a pod or when the file cannot be written.
pub fn count_start() -> Option<u32> {
    count_start_in(Path::new(STARTS_FILE))
}

/// [`count_start`] with the counter at `path`.
pub fn count_start_in(path: &Path) -> Option<u32> {
    if !path.parent().is_some_and(Path::is_dir) {
        return None;
    }
    let before: u32 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let starts = before.saturating_add(1);
    std::fs::write(path, starts.to_string()).ok()?;
    Some(starts)
}

/// The starts counted so far (without counting one).
pub fn starts() -> Option<u32> {
    std::fs::read_to_string(STARTS_FILE)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

struct Held {
    report: JobReport,
    read: Notify,
}

async fn report(State(held): State<Arc<Held>>) -> axum::Json<JobReport> {
    held.read.notify_one();
    axum::Json(held.report.clone())
}

/// Serves `report` on `GET /report` until it was read once (plus [`REPORT_LINGER_SECONDS`]) or
/// `hold` passed, or SIGTERM arrives; then returns.
///
/// # Errors
/// The listener could not be bound (the port is taken): the caller exits with its code anyway.
pub async fn hold(job_report: JobReport, hold: Duration) -> std::io::Result<()> {
    let addr: SocketAddr = std::env::var(REPORT_ADDR_ENV)
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], REPORT_PORT)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let held = Arc::new(Held {
        report: job_report,
        read: Notify::new(),
    });
    let app = Router::new()
        .route("/report", get(report))
        .with_state(held.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let read = async {
        held.read.notified().await;
        tokio::time::sleep(Duration::from_secs(REPORT_LINGER_SECONDS)).await;
    };
    tokio::select! {
        () = read => {}
        () = tokio::time::sleep(hold) => {}
        () = terminated() => {}
    }
    server.abort();
    Ok(())
}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::count_start_in;

    #[test]
    fn starts_are_counted_only_where_the_pod_volume_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("starts");
        assert_eq!(count_start_in(&file), Some(1));
        assert_eq!(count_start_in(&file), Some(2));
        assert_eq!(count_start_in(&dir.path().join("missing/starts")), None);
    }
}
