//! The container termination message of a worker stopped by a poison batch, so the operator can
//! name the batch in a `PoisonBatch` condition without reading logs.
//!
//! Kubernetes keeps what a container wrote to its `terminationMessagePath` (default
//! `/dev/termination-log`, at most 4096 bytes) in the pod's
//! `status.containerStatuses[].lastState.terminated.message`. The worker writes one line there:
//!
//! ```text
//! PoisonBatch: batch <batchId> task <task> after <attempts> attempts: <error>
//! ```
//!
//! `<error>` is the batch's last error on one line (line breaks become spaces), cut to
//! [`MAX_ERROR_BYTES`] bytes at a character boundary. The format is a contract with the operator;
//! change both together.

use std::path::PathBuf;

use crate::error::EngineError;

/// Overrides where the termination message is written.
pub const TERMINATION_LOG_ENV: &str = "SLUICE_TERMINATION_LOG";
/// Kubernetes' default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Longest `<error>` part of the message, bytes (the whole message must fit Kubernetes' 4096).
pub const MAX_ERROR_BYTES: usize = 1024;

/// The one-line summary of a poison batch (see the module docs).
pub fn poison_batch_summary(task: u32, batch_id: u64, attempts: u32, error: &str) -> String {
    let mut error: String = error
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    format!("PoisonBatch: batch {batch_id} task {task} after {attempts} attempts: {error}")
}

/// The termination message for `error`, if it is one the operator reports (a poison batch).
pub fn termination_message(error: &EngineError) -> Option<String> {
    match error {
        EngineError::PoisonBatch {
            task,
            batch_id,
            attempts,
            error,
        } => Some(poison_batch_summary(*task, *batch_id, *attempts, error)),
        _ => None,
    }
}

/// Where the termination message goes: [`TERMINATION_LOG_ENV`] if set, else `default`
/// ([`DEFAULT_TERMINATION_LOG`] in a pod; none for a local run, which must not write into `/dev`).
pub fn termination_log_path(default: Option<&str>) -> Option<PathBuf> {
    match std::env::var_os(TERMINATION_LOG_ENV) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => default.map(PathBuf::from),
    }
}

/// Writes `error`'s termination message to `path`, if it has one. A path that cannot be written
/// (no such mount, read-only) is only logged: the exit code (3) still says what happened.
pub fn write_termination_message(path: &std::path::Path, error: &EngineError) {
    if let Some(message) = termination_message(error) {
        write_message(path, &message);
    }
}

/// Writes `text` to the termination message file `path`, cut at a character boundary to
/// [`sluice_crds::contract::MAX_MESSAGE`] bytes (Kubernetes keeps at most 4096). A failure is
/// only logged: the exit code still tells the operator what happened.
pub fn write_message(path: &std::path::Path, text: &str) {
    let mut end = text.len().min(sluice_crds::contract::MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or_default();
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_line_with_the_error_cut_at_a_char_boundary() {
        assert_eq!(
            poison_batch_summary(2, 17, 3, "sink: bad\nvalue"),
            "PoisonBatch: batch 17 task 2 after 3 attempts: sink: bad value"
        );
        // 'é' is two bytes: 1023 'a's then 'é' straddles the 1024-byte cut.
        let long = format!("{}é{}", "a".repeat(1023), "b".repeat(5000));
        let summary = poison_batch_summary(0, 1, 4, &long);
        let prefix = "PoisonBatch: batch 1 task 0 after 4 attempts: ";
        assert_eq!(summary, format!("{prefix}{}", "a".repeat(1023)));
        let fits = format!("{}é", "a".repeat(1022));
        assert_eq!(
            poison_batch_summary(0, 1, 4, &fits),
            format!("{prefix}{fits}")
        );
    }

    #[test]
    fn only_a_poison_batch_has_a_termination_message() {
        let poison = EngineError::PoisonBatch {
            task: 1,
            batch_id: 9,
            attempts: 3,
            error: "SQL error: x".into(),
        };
        assert_eq!(
            termination_message(&poison).as_deref(),
            Some("PoisonBatch: batch 9 task 1 after 3 attempts: SQL error: x")
        );
        assert_eq!(termination_message(&EngineError::Sink("down".into())), None);
    }
}
