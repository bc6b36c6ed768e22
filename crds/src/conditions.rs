//! `status.conditions` helpers, following the Kubernetes API conventions for conditions
//! (`metav1.Condition`, as `meta.SetStatusCondition` in apimachinery does it):
//! one entry per `type`, `lastTransitionTime` changes only when `status` flips, reasons are
//! PascalCase, `observedGeneration` is the spec generation the condition was computed from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The query's workers are running the current spec and committing batches.
pub const READY: &str = "Ready";
/// A rollout, scale or start is under way.
pub const PROGRESSING: &str = "Progressing";
/// The spec cannot be run as written (invalid spec, refused upgrade) or the workers keep failing.
pub const DEGRADED: &str = "Degraded";
/// The checkpoint location is unusable (credentials, ownership) or commits stopped advancing.
pub const CHECKPOINT_STALE: &str = "CheckpointStale";
/// The autoscaler wanted more replicas than the query can use.
pub const SCALING_LIMITED: &str = "ScalingLimited";
/// A batch failed deterministically `spec.maxBatchAttempts` times (issue 17): the workers are
/// stopped instead of crash-looping; the message names the batch, the task and the error.
pub const POISON_BATCH: &str = "PoisonBatch";
/// The last one-shot or scheduled run succeeded (True) or failed (False); the message names its
/// batch range and rows.
pub const SUCCEEDED: &str = "Succeeded";
/// The last one-shot or scheduled run failed; the message says why.
pub const FAILED: &str = "Failed";
/// The annotation [`PAUSE_ANNOTATION`] is `"true"`: the operator leaves the query's children alone.
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";

/// The last `spec.restore` rolled the checkpoint back; the message names the batch and the new
/// checkpoint generation.
pub const RESTORED: &str = "Restored";
/// The last `spec.restore` was refused; the message is the worker's reason.
pub const RESTORE_REFUSED: &str = "RestoreRefused";

/// Annotation that pauses reconciliation of one query while `"true"` (Strimzi's
/// `strimzi.io/pause-reconciliation` convention): nothing the query owns is created, changed,
/// scaled or deleted until it is removed or set to anything else.
pub const PAUSE_ANNOTATION: &str = "sluice.dev/pause-reconciliation";

/// `"True"` / `"False"` as conditions spell them.
pub fn status_str(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `"True"`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Longest condition message (`metav1.Condition`'s limit, [`crate::crd::CONDITION_MESSAGE`]).
pub const MAX_MESSAGE: usize = 32_768;

/// The first `max` characters of `text`.
fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Sets (adds or replaces) the condition of `type_`.
///
/// `last_transition_time` is `now` when the condition is new or its status changed, and is kept
/// otherwise, so a condition re-asserted every reconcile does not look freshly changed.
/// Returns whether anything (status, reason, message or generation) changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let status = status_str(status).to_string();
    // The CRD bounds a message as metav1.Condition does; a longer one would be refused whole.
    let message = truncate_chars(message, MAX_MESSAGE);
    let message = message.as_str();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let changed = existing.status != status
            || existing.reason != reason
            || existing.message != message
            || existing.observed_generation != observed_generation;
        if existing.status != status {
            existing.last_transition_time = now;
        }
        existing.status = status;
        existing.reason = reason.to_string();
        existing.message = message.to_string();
        existing.observed_generation = observed_generation;
        changed
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation,
            last_transition_time: now,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            READY,
            false,
            "Starting",
            "",
            Some(1),
            at(10)
        ));
        assert!(!set(
            &mut conditions,
            READY,
            false,
            "Starting",
            "",
            Some(1),
            at(20)
        ));
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert!(set(
            &mut conditions,
            READY,
            false,
            "Waiting",
            "pods",
            Some(2),
            at(30)
        ));
        assert_eq!(
            conditions[0].last_transition_time,
            at(10),
            "same status keeps the time"
        );
        assert!(set(
            &mut conditions,
            READY,
            true,
            "Running",
            "",
            Some(2),
            at(40)
        ));
        assert_eq!(conditions[0].last_transition_time, at(40));
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, READY));
        assert!(!is_true(&conditions, DEGRADED));
        assert_eq!(
            find(&conditions, READY).map(|c| c.reason.as_str()),
            Some("Running")
        );
    }

    #[test]
    fn long_messages_are_cut_to_the_crd_bound() {
        let mut conditions = Vec::new();
        let long = "é".repeat(MAX_MESSAGE + 10);
        set(&mut conditions, READY, false, "Failed", &long, None, at(1));
        assert_eq!(conditions[0].message.chars().count(), MAX_MESSAGE);
        // The same long message again is no change.
        assert!(!set(
            &mut conditions,
            READY,
            false,
            "Failed",
            &long,
            None,
            at(2)
        ));
    }
}
