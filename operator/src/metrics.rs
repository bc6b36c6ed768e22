//! The operator's own metrics and HTTP endpoints (`/metrics` in Prometheus text format,
//! `/healthz`), with prometheus-client as kube-rs/controller-rs does.
//!
//! * `sluice_reconcile_duration_seconds{namespace, query}` — histogram, seconds per reconcile.
//! * `sluice_reconcile_errors_total{namespace, query, error}` — counter, `error` is
//!   [`Error::metric_label`](crate::error::Error::metric_label) (bounded set).
//! * `sluice_scaling_decisions_total{namespace, query, direction, applied}` — counter of autoscaler
//!   decisions, `direction` `up`/`down`, `applied` `true` (scaled) or `false` (`mode: recommend`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub namespace: String,
    pub query: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub namespace: String,
    pub query: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabels {
    pub namespace: String,
    pub query: String,
    /// `up` or `down`.
    pub direction: String,
    /// `true` when applied, `false` when only recommended.
    pub applied: String,
}

fn reconcile_histogram() -> Histogram {
    // 5 ms .. ~41 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Reconcile metrics, registered in one registry served at `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    pub reconcile_duration: Family<QueryLabels, Histogram, fn() -> Histogram>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub scaling_decisions: Family<ScalingLabels, Counter>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconcile_duration =
            Family::<QueryLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram as fn() -> Histogram,
            );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register_with_unit(
            "sluice_reconcile_duration",
            "Duration of one reconcile of a StreamingQuery",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "sluice_reconcile_errors",
            "Failed reconciles of a StreamingQuery, by error class",
            reconcile_errors.clone(),
        );
        let scaling_decisions = Family::<ScalingLabels, Counter>::default();
        registry.register(
            "sluice_scaling_decisions",
            "Autoscaler decisions, by direction and whether they were applied",
            scaling_decisions.clone(),
        );
        Self {
            reconcile_duration,
            reconcile_errors,
            scaling_decisions,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Records a reconcile that started at `started`.
    pub fn observe_reconcile(&self, namespace: &str, query: &str, started: Instant) {
        self.reconcile_duration
            .get_or_create(&QueryLabels {
                namespace: namespace.into(),
                query: query.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts an autoscaler decision from `from` to `to` replicas.
    pub fn count_scaling_decision(
        &self,
        namespace: &str,
        query: &str,
        from: u32,
        to: u32,
        applied: bool,
    ) {
        self.scaling_decisions
            .get_or_create(&ScalingLabels {
                namespace: namespace.into(),
                query: query.into(),
                direction: if to > from { "up" } else { "down" }.into(),
                applied: applied.to_string(),
            })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn count_error(&self, namespace: &str, query: &str, error: &Error) {
        self.count_label(namespace, query, error.metric_label());
    }

    /// Counts an error of class `label` (one of [`Error::metric_label`]'s values).
    pub fn count_label(&self, namespace: &str, query: &str, label: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                namespace: namespace.into(),
                query: query.into(),
                error: label.into(),
            })
            .inc();
    }

    /// Removes every series of a deleted query, so `/metrics` does not report it forever.
    pub fn forget_query(&self, namespace: &str, query: &str) {
        self.reconcile_duration.remove(&QueryLabels {
            namespace: namespace.into(),
            query: query.into(),
        });
        for error in Error::METRIC_LABELS {
            self.reconcile_errors.remove(&ErrorLabels {
                namespace: namespace.into(),
                query: query.into(),
                error: (*error).into(),
            });
        }
        for direction in ["up", "down"] {
            for applied in ["true", "false"] {
                self.scaling_decisions.remove(&ScalingLabels {
                    namespace: namespace.into(),
                    query: query.into(),
                    direction: direction.into(),
                    applied: applied.into(),
                });
            }
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// `/metrics` and `/healthz`.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.encode(),
                        )
                            .into_response()
                    }
                }),
            )
            .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_both_metric_families() {
        let metrics = Metrics::default();
        metrics.observe_reconcile("ns", "q", Instant::now());
        metrics.count_error("ns", "q", &Error::MissingField("uid"));
        let text = metrics.encode();
        assert!(
            text.contains(
                "sluice_reconcile_duration_seconds_count{namespace=\"ns\",query=\"q\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sluice_reconcile_errors_total{namespace=\"ns\",query=\"q\",error=\"missing_field\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counts_scaling_decisions_by_direction_and_mode() {
        let metrics = Metrics::default();
        metrics.count_scaling_decision("ns", "q", 1, 3, true);
        metrics.count_scaling_decision("ns", "q", 3, 2, false);
        metrics.count_scaling_decision("ns", "q", 2, 4, true);
        let text = metrics.encode();
        assert!(
            text.contains("sluice_scaling_decisions_total{namespace=\"ns\",query=\"q\",direction=\"up\",applied=\"true\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_scaling_decisions_total{namespace=\"ns\",query=\"q\",direction=\"down\",applied=\"false\"} 1"),
            "{text}"
        );
    }
}
