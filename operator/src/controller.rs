//! The kube-runtime `Controller` for `StreamingQuery` (after kube-rs/controller-rs):
//! finalizer-wrapped reconcile, an error policy that separates user errors (wait for a spec change)
//! from external ones (exponential backoff), and the owned children watched so a deleted or edited
//! StatefulSet is put back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};
use sluice_crds::{Phase, StreamingQuery};

use crate::backend::Backend;
use crate::backend::kubernetes::check_job::JobCheck;
use crate::backend::kubernetes::{FIELD_MANAGER, KubernetesBackend};
use crate::checkpoint::{CheckpointManager, Owner, Release};
use crate::error::{Error, ErrorKind, Result, backoff};
use crate::metrics::Metrics;
use crate::plan::{EventSeverity, OperatorConfig, PlannedEvent, Requeue, SpecChange, plan_cleanup};
use crate::reconcile::reconcile_live;
use crate::scaling::{Scaler, pod_url};

/// Finalizer guarding checkpoint retention.
pub const FINALIZER: &str = "sluice.dev/checkpoint";

/// Default of [`Context::status_refresh`].
pub const DEFAULT_STATUS_REFRESH: Duration = Duration::from_secs(30);

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub backend: KubernetesBackend,
    pub checkpoints: CheckpointManager,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    /// Stateful scaling limit and autoscaler; `None` leaves replica counts as the spec says.
    pub scaler: Option<Scaler>,
    /// How often a Running query is looked at again to refresh its rates from `/progress`
    /// (autoscaling queries: `config.progress_poll`, the autoscaler's cadence).
    pub status_refresh: Duration,
    /// Consecutive failures per `namespace/name`, for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        checkpoints: CheckpointManager,
        config: OperatorConfig,
        metrics: Metrics,
    ) -> Self {
        let port = config.worker_http_port;
        let backend = KubernetesBackend::new(client.clone(), FIELD_MANAGER.into())
            .with_progress_url(Arc::new(move |name, namespace, ordinal| {
                pod_url(name, namespace, ordinal, port)
            }));
        // The pre-upgrade check runs as a Job with the spec's own image.
        let scaler = Scaler::new(
            Arc::new(JobCheck::new(client.clone(), Default::default())),
            None,
            metrics.clone(),
        );
        Self {
            client,
            backend,
            checkpoints,
            config,
            metrics,
            scaler: Some(scaler),
            status_refresh: DEFAULT_STATUS_REFRESH,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key.to_string()).or_insert(0);
        *count += 1;
        *count
    }

    fn clear_failures(&self, key: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(key);
    }
}

fn key(query: &StreamingQuery) -> String {
    format!(
        "{}/{}",
        query.namespace().unwrap_or_default(),
        query.name_any()
    )
}

/// The watch predicate: spec changes (`metadata.generation`) and the pause annotation (which
/// changes no generation) trigger a reconcile; status writes do not.
fn generation_or_pause(query: &StreamingQuery) -> Option<u64> {
    let generation = predicates::generation(query)?;
    Some(generation.wrapping_mul(2) + u64::from(crate::plan::paused(query)))
}

/// Reconciles one `StreamingQuery`: adds the finalizer, then either runs the live reconcile or,
/// when the query is being deleted, applies checkpoint retention and removes the finalizer.
///
/// # Errors
/// [`Error::Finalizer`] wrapping the reconcile's error, or [`Error::MissingField`].
pub async fn reconcile(query: Arc<StreamingQuery>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = query.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = query.name_any();
    let api: Api<StreamingQuery> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, query.clone(), |event| async {
        match event {
            Finalizer::Apply(query) => apply(&query, &ctx).await,
            Finalizer::Cleanup(query) => cleanup(&query, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(&namespace, &name, started);
    if result.is_ok() {
        ctx.clear_failures(&key(&query));
    }
    result
}

async fn apply(query: &StreamingQuery, ctx: &Context) -> Result<Action> {
    let plan = reconcile_live(
        &ctx.backend,
        &ctx.checkpoints,
        query,
        &ctx.config,
        ctx.scaler.as_ref(),
        Time(Timestamp::now()),
    )
    .await?;
    tracing::info!(query = %key(query), change = ?plan.change, phase = ?plan.status.phase, "reconciled");
    if plan.change == SpecChange::Invalid {
        // Not a failed reconcile (the outcome is in status), but worth an alert.
        ctx.metrics.count_label(
            &query.namespace().unwrap_or_default(),
            &query.name_any(),
            "invalid_spec",
        );
    }
    // A Running query has nothing to roll out, but its rates (and the autoscaler) need fresh
    // /progress and metrics: look again sooner than the resync.
    // A rescale decided by the autoscaler after planning is followed like any rollout.
    let autoscaling = query
        .spec
        .parallelism
        .autoscale
        .as_ref()
        .is_some_and(|a| a.enabled);
    let refresh = match plan.status.phase {
        Some(Phase::Running) if autoscaling => ctx.config.progress_poll,
        Some(Phase::Running) => ctx.status_refresh,
        Some(Phase::Starting | Phase::Upgrading | Phase::Scaling) => ctx.config.progress_poll,
        _ => Duration::MAX,
    };
    Ok(match plan.requeue {
        Requeue::After(after) => Action::requeue(after.min(refresh)),
        Requeue::AwaitChange => Action::await_change(),
    })
}

async fn cleanup(query: &StreamingQuery, ctx: &Context) -> Result<Action> {
    let plan = plan_cleanup(query);
    // A deleted query's series and in-memory state go with it.
    ctx.metrics
        .forget_query(&query.namespace().unwrap_or_default(), &query.name_any());
    if let Some(scaler) = &ctx.scaler {
        scaler.forget(query);
    }
    let Some(location) = plan.location else {
        return Ok(Action::await_change());
    };
    let owner = Owner {
        namespace: query.namespace().ok_or(Error::MissingField("namespace"))?,
        name: query.name_any(),
        uid: query.uid().ok_or(Error::MissingField("uid"))?,
        claimed_at: Timestamp::now().to_string(),
    };
    let event = match ctx
        .checkpoints
        .release(&location, &owner, plan.retention)
        .await
    {
        Ok(Release::Retained) => PlannedEvent {
            severity: EventSeverity::Normal,
            reason: "CheckpointRetained".into(),
            action: "Delete".into(),
            note: format!(
                "retention Retain: checkpoint kept at {location}; delete it yourself when it is no longer needed"
            ),
        },
        Ok(Release::Deleted { objects }) => PlannedEvent {
            severity: EventSeverity::Normal,
            reason: "CheckpointDeleted".into(),
            action: "Delete".into(),
            note: format!("retention Delete: removed {objects} object(s) under {location}"),
        },
        // Another query owns it: never delete its data, and never block this deletion on it.
        Err(e @ Error::CheckpointOwned { .. }) => PlannedEvent {
            severity: EventSeverity::Warning,
            reason: "CheckpointNotDeleted".into(),
            action: "Delete".into(),
            note: format!(
                "{e}: retention Delete skipped so its data stays; nothing to do here (delete that query with retention Delete to remove the data)"
            ),
        },
        Err(e) => return Err(e),
    };
    if let Err(e) = ctx.backend.publish(query, &event).await {
        tracing::warn!(error = %e, "could not publish event");
    }
    Ok(Action::await_change())
}

/// Error policy: user errors wait for a spec change; external and internal errors back off
/// exponentially (5 s doubling, 5 min cap) per object.
pub fn error_policy(query: Arc<StreamingQuery>, error: &Error, ctx: Arc<Context>) -> Action {
    let namespace = query.namespace().unwrap_or_default();
    ctx.metrics
        .count_error(&namespace, &query.name_any(), error);
    match error.kind() {
        ErrorKind::User => {
            tracing::warn!(query = %key(&query), %error, "user error; waiting for a spec change");
            Action::await_change()
        }
        ErrorKind::External | ErrorKind::Internal => {
            let failures = ctx.record_failure(&key(&query));
            let delay = backoff(failures);
            tracing::warn!(query = %key(&query), %error, failures, ?delay, "reconcile failed; retrying");
            Action::requeue(delay)
        }
    }
}

/// Runs the controller until SIGTERM/SIGINT. `namespace` limits it to one namespace (the chart's
/// namespaced-RBAC mode); `None` watches the whole cluster.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (queries, sets): (Api<StreamingQuery>, Api<StatefulSet>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    // Only spec changes (metadata.generation; also bumped when deletion starts) trigger a
    // reconcile: the operator's own status writes do not, and the requeue after each reconcile
    // keeps the rates fresh.
    let (reader, writer) = reflector::store();
    let changes = watcher(queries, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(generation_or_pause, Default::default());
    Controller::for_stream(changes, reader)
        .owns(sets, managed)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
}
