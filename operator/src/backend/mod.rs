//! Backends make a [`Plan`](crate::plan::Plan) real. The Kubernetes backend applies children
//! through the API server; the local backend (issue 6) will run worker processes on this machine.
//! Both are driven by [`crate::reconcile::reconcile_live`], so observe → validate → plan → apply →
//! status is one code path.

use std::future::Future;

use sluice_crds::{StreamingQuery, StreamingQueryStatus};

use crate::error::Result;
use crate::plan::{DesiredWorkers, PlannedEvent, WorkersObservation};
use crate::progress::WorkerProgress;

pub mod kubernetes;
pub mod local;

/// Where worker deployments live.
pub trait Backend {
    /// The query's running worker deployment, `None` when there is none.
    fn observe_workers(
        &self,
        query: &StreamingQuery,
    ) -> impl Future<Output = Result<Option<WorkersObservation>>> + Send;
    /// Makes the deployment equal to `desired` (idempotent).
    fn apply_workers(
        &self,
        query: &StreamingQuery,
        desired: &DesiredWorkers,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Replaces the query's status.
    fn write_status(
        &self,
        query: &StreamingQuery,
        status: &StreamingQueryStatus,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Publishes an event about the query.
    fn publish(
        &self,
        query: &StreamingQuery,
        event: &PlannedEvent,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The workers' progress (`GET /progress` of every replica, summed), `None` when no replica
    /// answered with a committed batch. Never fails: an unreachable worker leaves the status
    /// figures as they were.
    fn observe_progress(
        &self,
        query: &StreamingQuery,
        workers: &WorkersObservation,
    ) -> impl Future<Output = Option<WorkerProgress>> + Send {
        let _ = (query, workers);
        async { None }
    }
}
