//! The worker's HTTP endpoints: `GET /` (a page charting the recent triggers), `GET /metrics`
//! (Prometheus text), `GET /healthz` (503 while a batch runs past `spec.health.maxBatchDuration`), `GET /progress` (latest `StreamingQueryProgress` and recent
//! history), `POST /stop` (stop at the next batch boundary; the response comes back once the
//! trigger loop has exited after its final commit, with the latest progress, so a caller knows the
//! worker's last commit; the process then exits).
//!
//! Mutating endpoints (`POST /stop`) follow [`ControlAuth`]: with a control token they need
//! `Authorization: Bearer <token>` and answer 401 otherwise; read-only ones are always open.
//!
//! The page is plain HTML with uPlot (MIT, `worker/assets/vendor/uplot/`), embedded in the binary:
//! nothing to build or fetch at run time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sluice_crds::contract::{ProgressAnswer, StopAnswer};

use crate::control::ControlAuth;
use crate::engine::Shared;

/// The router over the shared engine state, with mutating endpoints open to anyone who can reach
/// it (see [`router_with_auth`]).
pub fn router(shared: Arc<Shared>) -> Router {
    router_with_auth(shared, ControlAuth::Open)
}

/// The router, with mutating endpoints guarded by `auth`.
pub fn router_with_auth(shared: Arc<Shared>, auth: ControlAuth) -> Router {
    let control = Router::new()
        .route("/stop", post(stop))
        .route_layer(middleware::from_fn_with_state(Arc::new(auth), authorize));
    Router::new()
        .route("/", get(page))
        .route("/assets/uPlot.iife.min.js", get(uplot_js))
        .route("/assets/uPlot.min.css", get(uplot_css))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/progress", get(progress))
        .merge(control)
        .with_state(shared)
}

async fn authorize(State(auth): State<Arc<ControlAuth>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth.authorize(header) {
        Ok(()) => next.run(request).await,
        Err(refusal) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": refusal.message()})),
        )
            .into_response(),
    }
}

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
///
/// # Errors
/// The bind error.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    serve_with_auth(addr, shared, ControlAuth::Open).await
}

/// As [`serve`], with mutating endpoints guarded by `auth`.
///
/// # Errors
/// The bind error.
pub async fn serve_with_auth(
    addr: SocketAddr,
    shared: Arc<Shared>,
    auth: ControlAuth,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router_with_auth(shared, auth)).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}

const PAGE: &str = include_str!("../assets/index.html");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn uplot_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        UPLOT_JS,
    )
}

async fn uplot_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        UPLOT_CSS,
    )
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

/// 200 while the worker makes progress; 503 with a `reason` while the current batch has run
/// longer than `spec.health.maxBatchDuration` (a hung sink or lookup: the liveness probe then
/// restarts the worker, which replays the batch).
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let last_error = shared.last_error.lock().ok().and_then(|e| e.clone());
    if let Some(reason) = shared.unhealthy_reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "reason": reason, "lastError": last_error})),
        );
    }
    // Retryable errors keep the worker alive (it is waiting for a server), so still 200.
    (
        StatusCode::OK,
        Json(json!({"status": "ok", "lastError": last_error})),
    )
}

async fn progress(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let history: Vec<_> = shared
        .progress
        .lock()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    let last_error = shared.last_error.lock().ok().and_then(|e| e.clone());
    // The operator reads this through the same type (one contract).
    Json(ProgressAnswer {
        latest: history.last().cloned(),
        recent: history,
        last_error,
        stop_requested: shared.stop.is_requested(),
    })
}

async fn stop(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.stop.request();
    shared.wait_stopped().await;
    let latest = shared.progress.lock().ok().and_then(|h| h.back().cloned());
    (
        StatusCode::OK,
        Json(StopAnswer {
            stopped: true,
            latest,
        }),
    )
}
