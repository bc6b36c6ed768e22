//! The operator's one error type, classified the way the error policy needs it
//! (after ArroyoSystems' domain + retry hint and arrow-rs' flat documented enum).
//!
//! * **User** errors are fixed by editing the `StreamingQuery` (invalid spec, a checkpoint location
//!   owned by another query). They become a `Degraded` condition plus a Warning event; the
//!   controller waits for the next spec change instead of retrying (no hot loop).
//! * **External** errors come from the API server or the object store; they are retried with
//!   exponential backoff.
//! * **Internal** errors are bugs (an object without a namespace, a serializer failure); they are
//!   retried slowly and logged.

use std::time::Duration;

/// Who has to act for the error to go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user must change the resource.
    User,
    /// A dependency (API server, object store) failed; retrying may succeed.
    External,
    /// A bug in the operator.
    Internal,
}

/// Everything that can fail in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule of `sluice_crds::validate_spec`.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] sluice_crds::ValidationError),
    /// The checkpoint location is not a URL the operator can use (`s3://bucket/prefix`, `file:///dir`).
    #[error("checkpoint location `{location}` is unusable: {message}")]
    CheckpointLocation { location: String, message: String },
    /// `_sluice/owner.json` at the location names another query.
    #[error("checkpoint location `{location}` is owned by {owner}")]
    CheckpointOwned { location: String, owner: String },
    /// The checkpoint claim failed for an external reason (credentials, network); reported after
    /// the `CheckpointStale` condition was written, so the error policy backs off.
    #[error("checkpoint location `{location}` is unreachable: {message}")]
    CheckpointUnreachable { location: String, message: String },
    /// The object store refused or failed a request (credentials, network, server error).
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// The Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed, or the wrapped reconcile failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A required metadata field (namespace, uid, name) is missing.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// JSON/YAML encoding failed.
    #[error("serialization: {0}")]
    Serialization(String),
    /// A broken invariant inside the operator.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Classifies the error for the error policy and the metrics label.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidSpec(_)
            | Self::CheckpointLocation { .. }
            | Self::CheckpointOwned { .. } => ErrorKind::User,
            Self::ObjectStore(_) | Self::Kube(_) | Self::CheckpointUnreachable { .. } => {
                ErrorKind::External
            }
            Self::MissingField(_) | Self::Serialization(_) | Self::Internal(_) => {
                ErrorKind::Internal
            }
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => ErrorKind::External,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// Whether retrying without a spec change can succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() != ErrorKind::User
    }

    /// Every value [`Error::metric_label`] can return.
    pub const METRIC_LABELS: &'static [&'static str] = &[
        "invalid_spec",
        "checkpoint_location",
        "checkpoint_owned",
        "object_store",
        "checkpoint_unreachable",
        "kube",
        "finalizer",
        "missing_field",
        "serialization",
        "internal",
    ];

    /// A short, bounded label for `sluice_reconcile_errors_total{error=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::CheckpointLocation { .. } => "checkpoint_location",
            Self::CheckpointOwned { .. } => "checkpoint_owned",
            Self::ObjectStore(_) => "object_store",
            Self::CheckpointUnreachable { .. } => "checkpoint_unreachable",
            Self::Kube(_) => "kube",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Self::MissingField(_) => "missing_field",
            Self::Serialization(_) => "serialization",
            Self::Internal(_) => "internal",
        }
    }
}

/// Exponential backoff for retryable errors: 5 s doubling per consecutive failure, capped at 5 min.
///
/// `failures` counts consecutive failures of one object (1 for the first).
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let invalid = Error::InvalidSpec(sluice_crds::ValidationError {
            path: "spec.sql".into(),
            message: "empty".into(),
        });
        assert_eq!(invalid.kind(), ErrorKind::User);
        assert!(!invalid.is_retryable());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            invalid,
        )));
        assert_eq!(wrapped.kind(), ErrorKind::User);
        assert_eq!(wrapped.metric_label(), "invalid_spec");
        let internal = Error::MissingField("namespace");
        assert_eq!(internal.kind(), ErrorKind::Internal);
        assert!(internal.is_retryable());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
