//! Writer epochs: which worker process owns a task's checkpoint.
//!
//! An [`Epoch`] is (deployment generation, process start, run id), ordered in that order: a newer
//! deployment generation wins over an older one, and within a generation the replica started last
//! wins (a restarted pod replaces its predecessor). At start each task registers its epoch as an
//! object `tasks/<p>/epochs/<generation>-<startedMs>-<runId>` (create-if-absent, so no store
//! needs conditional updates); a worker that finds a newer epoch there refuses to start, and a
//! running worker checks before planning a batch and before committing one, stopping with
//! [`EngineError::Fenced`] naming the newer epoch. Offsets, commits, sink records and compacted
//! entries carry the epoch of their writer, so a compacted entry (which outlives retention's
//! deletes) still fences a writer older than it. This is Flink's and Kafka's "zombie fencing" by
//! epoch, on an object store.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{EngineError, Result};

/// The environment variable with the deployment generation (set by the operator; 0 when absent).
pub const GENERATION_ENV: &str = "SLUICE_GENERATION";

/// One worker process's claim on its tasks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Epoch {
    /// Deployment generation (the operator's `SLUICE_GENERATION`).
    pub generation: i64,
    /// When the worker process started, ms since the Unix epoch.
    pub started_ms: i64,
    /// The run id of the process (breaks ties between starts in the same millisecond).
    pub run_id: String,
}

impl Epoch {
    /// The epoch of a worker starting now with run id `run_id`; the generation comes from
    /// [`GENERATION_ENV`].
    pub fn starting_now(run_id: &str) -> Self {
        use std::sync::atomic::{AtomicI64, Ordering};
        // Engines started one after another in one process (tests, restarts in place) get
        // strictly increasing starts, so the later one is always the newer epoch.
        static LAST_START: AtomicI64 = AtomicI64::new(0);
        let now = chrono::Utc::now().timestamp_millis();
        let previous = LAST_START
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        Self {
            generation: std::env::var(GENERATION_ENV)
                .ok()
                .and_then(|g| g.trim().parse().ok())
                .unwrap_or(0),
            started_ms: now.max(previous + 1),
            run_id: run_id.to_string(),
        }
    }

    /// The object name under `tasks/<p>/epochs/`; names sort as epochs do.
    pub fn object_name(&self) -> String {
        format!(
            "{:020}-{:020}-{}",
            self.generation.max(0),
            self.started_ms.max(0),
            self.run_id
        )
    }

    /// Parses [`Epoch::object_name`].
    pub fn from_object_name(name: &str) -> Option<Self> {
        let mut parts = name.splitn(3, '-');
        Some(Self {
            generation: parts.next()?.parse().ok()?,
            started_ms: parts.next()?.parse().ok()?,
            run_id: parts.next()?.to_string(),
        })
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let started = chrono::DateTime::from_timestamp_millis(self.started_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| self.started_ms.to_string());
        write!(
            f,
            "epoch (generation {}, started {started}, run {})",
            self.generation, self.run_id
        )
    }
}

fn fenced(task: u32, ours: &Epoch, newer: &Epoch) -> EngineError {
    EngineError::Fenced(format!(
        "task {task} is owned by a newer worker, {newer}; this worker's {ours} stops writing it"
    ))
}

impl Checkpoint {
    /// The newest epoch registered for `task`.
    async fn newest_epoch(&self, task: u32) -> Result<Option<Epoch>> {
        Ok(self
            .list_names(&format!("tasks/{task}/epochs"))
            .await?
            .iter()
            .filter_map(|name| Epoch::from_object_name(name))
            .max())
    }

    /// Registers `ours` as the owner of `task`, after checking that no newer epoch owns it
    /// (registered, or recorded in the newest compacted entry `compacted`); deletes older
    /// registrations.
    ///
    /// # Errors
    /// [`EngineError::Fenced`] naming the newer epoch; [`EngineError::Storage`] when the store
    /// fails.
    pub async fn claim_task(
        &self,
        task: u32,
        ours: &Epoch,
        compacted: Option<&Epoch>,
    ) -> Result<()> {
        if let Some(newer) = compacted.filter(|c| *c > ours) {
            return Err(fenced(task, ours, newer));
        }
        if let Some(newer) = self.newest_epoch(task).await?.filter(|n| n > ours) {
            return Err(fenced(task, ours, &newer));
        }
        let body = serde_json::to_vec(ours).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.put(&format!("tasks/{task}/epochs/{}", ours.object_name()), body)
            .await?;
        // Older claims are dead or about to be fenced: their objects are no longer needed.
        for name in self.list_names(&format!("tasks/{task}/epochs")).await? {
            if Epoch::from_object_name(&name).is_some_and(|e| e < *ours) {
                self.delete(&format!("tasks/{task}/epochs/{name}")).await?;
            }
        }
        // A newer worker that registered meanwhile wins.
        self.check_epoch(task, ours).await
    }

    /// Checks that `ours` still owns `task`.
    ///
    /// # Errors
    /// [`EngineError::Fenced`] naming the newer epoch that owns it now.
    pub async fn check_epoch(&self, task: u32, ours: &Epoch) -> Result<()> {
        match self.newest_epoch(task).await? {
            Some(newest) if newest > *ours => Err(fenced(task, ours, &newest)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    fn epoch(generation: i64, started_ms: i64, run: &str) -> Epoch {
        Epoch {
            generation,
            started_ms,
            run_id: run.into(),
        }
    }

    #[test]
    fn epochs_order_by_generation_then_start_and_names_sort_alike() {
        let a = epoch(1, 5_000, "b");
        let b = epoch(1, 6_000, "a");
        let c = epoch(2, 1_000, "a");
        assert!(a < b && b < c);
        assert!(a.object_name() < b.object_name() && b.object_name() < c.object_name());
        assert_eq!(Epoch::from_object_name(&c.object_name()), Some(c));
    }

    #[tokio::test]
    async fn a_newer_epoch_fences_the_older_one_and_an_older_one_cannot_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint =
            Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
        let old = epoch(1, 1_000, "old");
        let new = epoch(1, 2_000, "new");
        checkpoint.claim_task(0, &old, None).await.expect("old");
        checkpoint.check_epoch(0, &old).await.expect("owner");
        checkpoint.claim_task(0, &new, None).await.expect("new");
        let err = checkpoint
            .check_epoch(0, &old)
            .await
            .expect_err("fenced")
            .to_string();
        assert!(
            err.contains("generation 1") && err.contains("run new"),
            "{err}"
        );
        checkpoint.check_epoch(0, &new).await.expect("new owns");
        // The old worker restarting with its old epoch is refused; another task is free.
        assert!(checkpoint.claim_task(0, &old, None).await.is_err());
        checkpoint.claim_task(1, &old, None).await.expect("task 1");
        // A compacted entry written by a newer epoch fences even with no registration left.
        let err = checkpoint
            .claim_task(2, &old, Some(&new))
            .await
            .expect_err("compacted fences");
        assert!(err.to_string().contains("run new"), "{err}");
    }
}
