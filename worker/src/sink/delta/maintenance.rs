//! The Delta sink's periodic compaction (OPTIMIZE) and VACUUM, run in the background after a
//! batch's commit so they never hold up a batch.
//!
//! At most one maintenance run is in flight per sink. Its commits race the batches' commits like
//! any two Delta writers: Delta's conflict check lets an append commit past a compaction (which
//! only rewrites files), and a MERGE or overwrite that read a file the compaction removed fails
//! with a retryable error and is replayed. A failed run is logged and counted, and tried again
//! when next due.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake_core::ObjectStore;
use prometheus_client::metrics::counter::Counter;
use sluice_crds::DeltaSinkSpec;
use sluice_crds::duration::parse_duration;
use url::Url;

use crate::error::{EngineError, Result};

/// Delta's default `targetSize` of OPTIMIZE (128 MiB).
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
/// Delta's default `deletedFileRetentionDuration` (7 days).
pub const DEFAULT_VACUUM_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// When and how to compact and vacuum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenancePlan {
    /// Interval and target file size (bytes) of OPTIMIZE.
    pub optimize: Option<(Duration, NonZeroU64)>,
    /// Interval and retention of VACUUM.
    pub vacuum: Option<(Duration, Duration)>,
}

impl MaintenancePlan {
    /// The plan `spec` asks for.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] naming a field that does not parse.
    pub fn from_spec(spec: &DeltaSinkSpec) -> Result<Self> {
        let invalid =
            |field: &str, m: String| EngineError::InvalidQuery(format!("sink.delta.{field}: {m}"));
        let optimize = match &spec.optimize {
            Some(o) => {
                let every = parse_duration(&o.every).map_err(|m| invalid("optimize.every", m))?;
                let size = match &o.target_file_size {
                    Some(text) => sluice_crds::size::parse_size(text)
                        .map_err(|m| invalid("optimize.targetFileSize", m))?,
                    None => DEFAULT_TARGET_FILE_SIZE,
                };
                let size = NonZeroU64::new(size)
                    .ok_or_else(|| invalid("optimize.targetFileSize", "must be positive".into()))?;
                Some((every, size))
            }
            None => None,
        };
        let vacuum = match &spec.vacuum {
            Some(v) => {
                let every = parse_duration(&v.every).map_err(|m| invalid("vacuum.every", m))?;
                let retention = match &v.retention {
                    Some(text) => {
                        parse_duration(text).map_err(|m| invalid("vacuum.retention", m))?
                    }
                    None => DEFAULT_VACUUM_RETENTION,
                };
                Some((every, retention))
            }
            None => None,
        };
        Ok(Self { optimize, vacuum })
    }
}

/// The maintenance state of one sink.
pub struct Maintenance {
    plan: MaintenancePlan,
    url: Url,
    root: Arc<dyn ObjectStore>,
    failures: Option<Counter>,
    running: Arc<AtomicBool>,
    /// When OPTIMIZE and VACUUM last started (both count from the sink's start).
    last: Mutex<(Instant, Instant)>,
}

impl Maintenance {
    /// Maintenance per `plan` of the table at `url` on `root`; `failures` counts failed runs.
    pub fn new(
        plan: MaintenancePlan,
        url: Url,
        root: Arc<dyn ObjectStore>,
        failures: Option<Counter>,
    ) -> Self {
        let now = Instant::now();
        Self {
            plan,
            url,
            root,
            failures,
            running: Arc::new(AtomicBool::new(false)),
            last: Mutex::new((now, now)),
        }
    }

    /// Starts a due compaction and/or vacuum in the background, unless one is still running.
    pub fn after_commit(&self) {
        let now = Instant::now();
        let (optimize, vacuum) = {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            let optimize = self
                .plan
                .optimize
                .filter(|(every, _)| now.duration_since(last.0) >= *every);
            let vacuum = self
                .plan
                .vacuum
                .filter(|(every, _)| now.duration_since(last.1) >= *every);
            if optimize.is_none() && vacuum.is_none() {
                return;
            }
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            if optimize.is_some() {
                last.0 = now;
            }
            if vacuum.is_some() {
                last.1 = now;
            }
            (optimize, vacuum)
        };
        let url = self.url.clone();
        let root = self.root.clone();
        let failures = self.failures.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            if let Some((_, target)) = optimize
                && let Err(e) = compact(&url, &root, target).await
            {
                tracing::warn!(table = %url, error = %e, "delta sink: compaction failed; trying again when next due");
                if let Some(counter) = &failures {
                    counter.inc();
                }
            }
            if let Some((_, retention)) = vacuum
                && let Err(e) = vacuum_table(&url, &root, retention).await
            {
                tracing::warn!(table = %url, error = %e, "delta sink: vacuum failed; trying again when next due");
                if let Some(counter) = &failures {
                    counter.inc();
                }
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Whether a maintenance run is in flight.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

/// Compacts the table's small files into files of about `target` bytes (one OPTIMIZE commit).
/// Returns (files removed, files added).
///
/// # Errors
/// [`EngineError::Sink`] when the table cannot be read or the commit fails.
pub async fn compact(
    url: &Url,
    root: &Arc<dyn ObjectStore>,
    target: NonZeroU64,
) -> Result<(u64, u64)> {
    let (table, exists) = super::open_table(url, root).await?;
    if !exists {
        return Ok((0, 0));
    }
    let (_, metrics) = table
        .optimize()
        .with_target_size(target)
        .await
        .map_err(|e| EngineError::Sink(format!("delta: optimize: {e}")))?;
    tracing::info!(
        table = %url,
        removed = metrics.num_files_removed,
        added = metrics.num_files_added,
        "delta sink: compacted"
    );
    Ok((metrics.num_files_removed, metrics.num_files_added))
}

/// Deletes files no table version newer than `retention` refers to. Returns the files deleted.
///
/// # Errors
/// [`EngineError::Sink`] when the table cannot be read or a delete fails.
pub async fn vacuum_table(
    url: &Url,
    root: &Arc<dyn ObjectStore>,
    retention: Duration,
) -> Result<usize> {
    let (table, exists) = super::open_table(url, root).await?;
    if !exists {
        return Ok(0);
    }
    let retention = chrono::Duration::from_std(retention)
        .map_err(|e| EngineError::InvalidQuery(format!("sink.delta.vacuum.retention: {e}")))?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        // The user chose the retention; Delta's 7-day floor is only a default guard.
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| EngineError::Sink(format!("delta: vacuum: {e}")))?;
    tracing::info!(table = %url, deleted = metrics.files_deleted.len(), "delta sink: vacuumed");
    Ok(metrics.files_deleted.len())
}
