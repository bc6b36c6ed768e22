//! Sluice operator: runs `StreamingQuery` resources as worker pods.
//!
//! Reconcile = observe → validate → plan (pure, [`plan`]) → apply ([`backend`]) → status, shared
//! by the Kubernetes backend and the local backend. Modules:
//!
//! * [`plan`] — pure decisions: spec change classification, desired workers, status, events.
//! * [`reconcile`] — one backend-independent pass over a live query.
//! * [`backend`] — [`backend::kubernetes`] builds and server-side-applies the children.
//! * [`progress`] — the workers' `/progress` summed into status figures.
//! * [`scaling`] — the stateful scaling limit and the autoscaler step of a reconcile.
//! * [`checkpoint`] — checkpoint location resolution, ownership claim, retention.
//! * [`clients`] — `sluice-worker check`, HTTP to workers and Prometheus.
//! * [`controller`] — the kube-runtime controller, finalizer, error policy.
//! * [`local_operator`] — the local backend's loop over a folder of manifests.
//! * [`leader`] — Lease-based leader election.
//! * [`metrics`] — the operator's own `/metrics` and `/healthz`.
//! * [`error`] — the error type, classified user / external / internal.

pub mod autoscaler;
pub mod backend;
pub mod checkpoint;
pub mod clients;
pub mod control_token;
pub mod controller;
pub mod error;
pub mod leader;
pub mod local_operator;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod scaling;

pub use error::{Error, ErrorKind, Result};
