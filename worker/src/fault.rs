//! Fault injection for tests: named crash points in the batch protocol.
//!
//! **Test-only.** Compiled into every build but inert unless the environment variable
//! [`CRASH_AT_ENV`] is set when the worker starts, e.g. `SLUICE_CRASH_AT=after-sink-write:3` aborts
//! the process (`std::process::abort`, no cleanup, like SIGKILL) when any task reaches
//! `after-sink-write` in batch 3. Several points may be given, comma-separated. The crash tests run
//! the worker once with the variable (it dies there) and again without it (it must recover the
//! batch exactly once). Never set it in production.
//!
//! Pause points ([`PAUSE_AT_ENV`], [`PAUSE_FILE_ENV`]) hold a task at a place instead of killing
//! the process, so a test can take a server away exactly there (say S3 right after a Kafka
//! transaction committed) and check what the worker does when it goes on.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The environment variable that arms crash points: `<point>:<batchId>[,<point>:<batchId>...]`.
pub const CRASH_AT_ENV: &str = "SLUICE_CRASH_AT";
/// The environment variable that arms delays (a hung batch, for the `/healthz` test):
/// `<point>:<batchId>:<millis>[,...]`; the task sleeps that long when it reaches the point.
/// Only the points a task passes itself (`after-sink-write`, `mid-state-write`, `before-commit`).
pub const DELAY_AT_ENV: &str = "SLUICE_DELAY_AT";

/// A place in the batch protocol where a test may crash the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The file sink wrote the batch's data files but not yet its commit-log entry.
    MidSinkWrite,
    /// The sink accepted the batch (files logged, Kafka transaction or PostgreSQL transaction
    /// committed); nothing of the batch is in the checkpoint beyond its offsets.
    AfterSinkWrite,
    /// The batch's state file is written; its learned models and commit are not.
    MidStateWrite,
    /// Everything but the batch's commit entry is written.
    BeforeCommit,
    /// Retention wrote the compacted entry but has not deleted what it covers.
    MidRetention,
    /// The file sink committed a log entry that replaces files (an `overwrite: partitions`
    /// version, a compaction) and deleted some of the replaced files, not all.
    MidSinkCleanup,
    /// A file-sink compaction round wrote a merged file but not its log entry.
    MidCompaction,
    /// A source-stage task of a keyed exchange wrote its batch's exchange objects, not its
    /// commit (docs/keyed-exchange.md, "Crash points"). Not in [`CrashPoint::ALL`]: only an
    /// exchange query reaches it.
    AfterExchangeWrite,
}

impl CrashPoint {
    /// Every crash point, for tests that try each.
    pub const ALL: [CrashPoint; 7] = [
        CrashPoint::MidSinkWrite,
        CrashPoint::AfterSinkWrite,
        CrashPoint::MidStateWrite,
        CrashPoint::BeforeCommit,
        CrashPoint::MidRetention,
        CrashPoint::MidSinkCleanup,
        CrashPoint::MidCompaction,
    ];

    /// Whether only the file sink reaches this point (other sinks' crash tests skip it).
    pub fn file_sink_only(self) -> bool {
        matches!(
            self,
            CrashPoint::MidSinkWrite | CrashPoint::MidSinkCleanup | CrashPoint::MidCompaction
        )
    }

    /// The point's name in [`CRASH_AT_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::MidSinkWrite => "mid-sink-write",
            CrashPoint::AfterSinkWrite => "after-sink-write",
            CrashPoint::MidStateWrite => "mid-state-write",
            CrashPoint::BeforeCommit => "before-commit",
            CrashPoint::MidRetention => "mid-retention",
            CrashPoint::MidSinkCleanup => "mid-sink-cleanup",
            CrashPoint::MidCompaction => "mid-compaction",
            CrashPoint::AfterExchangeWrite => "after-exchange-write",
        }
    }
}

/// Parses a [`CRASH_AT_ENV`] value into `(point name, batch id)` pairs; malformed items are
/// ignored (and warned about by [`crash_point`]'s first call).
pub fn parse_crash_points(text: &str) -> Vec<(String, u64)> {
    text.split(',')
        .filter_map(|item| {
            let (name, batch) = item.trim().rsplit_once(':')?;
            Some((name.trim().to_string(), batch.trim().parse().ok()?))
        })
        .collect()
}

fn armed() -> &'static [(String, u64)] {
    static ARMED: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    ARMED.get_or_init(|| match std::env::var(CRASH_AT_ENV) {
        Ok(text) => {
            let points = parse_crash_points(&text);
            tracing::warn!(value = %text, armed = points.len(), "{CRASH_AT_ENV} is set: test crash points are armed");
            points
        }
        Err(_) => Vec::new(),
    })
}

/// Aborts the process if a test armed `point` for `batch_id`; otherwise does nothing.
pub fn crash_point(point: CrashPoint, batch_id: u64) {
    let armed = armed();
    if armed.is_empty() {
        return;
    }
    if armed
        .iter()
        .any(|(name, batch)| name == point.name() && *batch == batch_id)
    {
        eprintln!(
            "{CRASH_AT_ENV}: crashing at {} in batch {batch_id}",
            point.name()
        );
        std::process::abort();
    }
}

/// Parses a [`DELAY_AT_ENV`] value into `(point name, batch id, delay)`; malformed items are
/// ignored.
pub fn parse_delay_points(text: &str) -> Vec<(String, u64, std::time::Duration)> {
    text.split(',')
        .filter_map(|item| {
            let (rest, millis) = item.trim().rsplit_once(':')?;
            let (name, batch) = rest.rsplit_once(':')?;
            Some((
                name.trim().to_string(),
                batch.trim().parse().ok()?,
                std::time::Duration::from_millis(millis.trim().parse().ok()?),
            ))
        })
        .collect()
}

fn delays() -> &'static [(String, u64, std::time::Duration)] {
    static DELAYS: OnceLock<Vec<(String, u64, std::time::Duration)>> = OnceLock::new();
    DELAYS.get_or_init(|| match std::env::var(DELAY_AT_ENV) {
        Ok(text) => {
            let points = parse_delay_points(&text);
            tracing::warn!(value = %text, armed = points.len(), "{DELAY_AT_ENV} is set: test delays are armed");
            points
        }
        Err(_) => Vec::new(),
    })
}

/// Sleeps as long as a test asked for at `point` in `batch_id`; otherwise returns at once.
pub async fn delay_point(point: CrashPoint, batch_id: u64) {
    for (name, batch, delay) in delays() {
        if name == point.name() && *batch == batch_id {
            tokio::time::sleep(*delay).await;
        }
    }
}

/// The environment variable that arms pause points: `<point>:<batchId>[,...]`, names as
/// [`PausePoint::name`]. Needs [`PAUSE_FILE_ENV`].
pub const PAUSE_AT_ENV: &str = "SLUICE_PAUSE_AT";
/// The file a paused task creates and waits on: the task goes on once a test deletes it.
pub const PAUSE_FILE_ENV: &str = "SLUICE_PAUSE_FILE";

/// A place in the batch protocol where a test may hold a task (see [`pause_point`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausePoint {
    /// The Kafka sink (`exactlyOnce`) sent the batch's records in its transaction, and has not
    /// committed it yet.
    BeforeSinkCommit,
    /// The sink accepted the batch (a Kafka transaction committed); the checkpoint's sink record
    /// and the batch's commit are not written yet. Not a crash point: a crash here is the one
    /// documented window that repeats a Kafka batch.
    AfterSinkCommit,
}

impl PausePoint {
    /// The point's name in [`PAUSE_AT_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            PausePoint::BeforeSinkCommit => "before-sink-commit",
            PausePoint::AfterSinkCommit => "after-sink-commit",
        }
    }
}

/// The armed pause points and the pause file.
type PauseArmed = (Vec<(String, u64)>, Option<PathBuf>);

fn pause_armed() -> &'static PauseArmed {
    static ARMED: OnceLock<PauseArmed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let file = std::env::var_os(PAUSE_FILE_ENV).map(PathBuf::from);
        match std::env::var(PAUSE_AT_ENV) {
            Ok(text) if file.is_some() => {
                let points = parse_crash_points(&text);
                tracing::warn!(value = %text, armed = points.len(), "{PAUSE_AT_ENV} is set: test pause points are armed");
                (points, file)
            }
            Ok(_) => {
                tracing::warn!("{PAUSE_AT_ENV} is set without {PAUSE_FILE_ENV}: ignored");
                (Vec::new(), None)
            }
            Err(_) => (Vec::new(), None),
        }
    })
}

/// If a test armed `point` for `batch_id` and the task has not paused there yet: creates the pause
/// file and waits (polling every 50 ms) until the test deletes it. Otherwise returns at once.
pub async fn pause_point(point: PausePoint, batch_id: u64) {
    let (armed, file) = pause_armed();
    let Some(file) = file else {
        return;
    };
    if !armed
        .iter()
        .any(|(name, batch)| name == point.name() && *batch == batch_id)
    {
        return;
    }
    // Once per point and batch: a retry of the batch goes through without pausing again.
    static FIRED: Mutex<Vec<(&str, u64)>> = Mutex::new(Vec::new());
    match FIRED.lock() {
        Ok(mut fired) if !fired.contains(&(point.name(), batch_id)) => {
            fired.push((point.name(), batch_id));
        }
        _ => return,
    }
    eprintln!(
        "{PAUSE_AT_ENV}: pausing at {} in batch {batch_id} until {} is deleted",
        point.name(),
        file.display()
    );
    if let Err(e) = std::fs::write(file, point.name()) {
        eprintln!("{PAUSE_AT_ENV}: cannot create {}: {e}", file.display());
        return;
    }
    while file.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{PAUSE_AT_ENV}: going on after {}", point.name());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_parse_and_malformed_items_are_skipped() {
        assert_eq!(
            parse_crash_points("after-sink-write:3, before-commit:0,nonsense,mid-retention:x"),
            vec![
                ("after-sink-write".to_string(), 3),
                ("before-commit".to_string(), 0)
            ]
        );
        assert_eq!(
            parse_delay_points("before-commit:1:2500,bad,after-sink-write:x:1"),
            vec![(
                "before-commit".to_string(),
                1,
                std::time::Duration::from_millis(2500)
            )]
        );
        let names: Vec<&str> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), 7);
    }
}
