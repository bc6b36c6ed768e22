//! The contract between the operator and the worker: the `sluice-worker check` report, the
//! environment variables and flags the operator starts workers with, and the Job termination
//! message of a pre-upgrade check. Both sides import these, so a renamed field or variable is a
//! compile error rather than a silent mismatch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Replica count of the deployment generation (`--replicas` on the command line).
pub const ENV_REPLICA_COUNT: &str = "SLUICE_REPLICA_COUNT";
/// This replica's index when the pod name carries no ordinal (`--replica`).
pub const ENV_REPLICA_INDEX: &str = "SLUICE_REPLICA_INDEX";
/// Deployment generation the worker belongs to (bumped on every restart-type upgrade).
pub const ENV_GENERATION: &str = "SLUICE_GENERATION";
/// Checkpoint URL of the generation (`--checkpoint`).
pub const ENV_CHECKPOINT_LOCATION: &str = "SLUICE_CHECKPOINT_LOCATION";
/// Query name, for metric labels.
pub const ENV_QUERY: &str = "SLUICE_QUERY";
/// Query namespace, for metric labels.
pub const ENV_NAMESPACE: &str = "SLUICE_NAMESPACE";
/// Pod name (`<child>-<ordinal>`), from the downward API; the replica index is its ordinal.
pub const ENV_POD_NAME: &str = "POD_NAME";

/// The worker's control token itself: `POST /stop` then needs `Authorization: Bearer <token>`
/// (the local backend generates one per deployment and passes it here).
pub const ENV_CONTROL_TOKEN: &str = "SLUICE_CONTROL_TOKEN";
/// A file holding the control token (`--control-token-file`); wins over [`ENV_CONTROL_TOKEN`].
/// On Kubernetes it is the key [`CONTROL_TOKEN_KEY`] of the query's control Secret, mounted at
/// [`CONTROL_TOKEN_DIR`].
pub const ENV_CONTROL_TOKEN_FILE: &str = "SLUICE_CONTROL_TOKEN_FILE";
/// Key of the control token in the query's control Secret (`sluice-<query>-control`).
pub const CONTROL_TOKEN_KEY: &str = "token";
/// Where the control Secret is mounted in a worker pod: outside the ConfigMap's read-only
/// `/etc/sluice`, so no mount point has to be made inside another volume.
pub const CONTROL_TOKEN_DIR: &str = "/var/run/sluice/control";

/// `sluice-worker check MANIFEST --checkpoint URL`: check against an existing checkpoint.
pub const FLAG_CHECKPOINT: &str = "--checkpoint";
/// `sluice-worker run ... --replica I`.
pub const FLAG_REPLICA: &str = "--replica";
/// `sluice-worker run ... --replicas N`.
pub const FLAG_REPLICAS: &str = "--replicas";
/// `sluice-worker run ... --http ADDR`.
pub const FLAG_HTTP: &str = "--http";
/// `sluice-worker check ... --termination-log PATH`: also write the outcome there (the Job's
/// termination message on Kubernetes).
pub const FLAG_TERMINATION_LOG: &str = "--termination-log";

/// How long (s) a Job or worker pod keeps its [`JobReport`] on `GET /report` after its command
/// ended, before it exits. Set by the operator on the pods it reads reports from; unset (a local
/// run), nothing is served. The operator reads reports over HTTP instead of pod statuses, so it
/// needs no `pods` permission.
pub const ENV_REPORT_HOLD_SECONDS: &str = "SLUICE_REPORT_HOLD_SECONDS";
/// Port of `GET /report` (beside the worker's own 9464, which is gone once the engine stopped).
pub const REPORT_PORT: u16 = 9465;
/// Once the report was read, the pod exits this long after (s): time for the answer to leave.
pub const REPORT_LINGER_SECONDS: u64 = 3;
/// Where a container that keeps a report counts its starts (an `emptyDir`, kept across container
/// restarts of one pod): the report then says how many times the worker has started.
pub const STARTS_FILE: &str = "/var/run/sluice/run/starts";

/// What a finished worker command leaves on `GET /report` (port [`REPORT_PORT`]) for the
/// operator: its exit code and the line it also wrote as its termination message (a check's
/// [`CheckOutcomeReport`] JSON, a restore's verdict, a run's `Run: ...` line, a
/// `PoisonBatch: ...` line, or an error chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// The process exit code: 0 done, 2 refused (user error), 3 poison batch, 1 other.
    pub exit_code: i32,
    /// The termination message (at most 4096 bytes), empty when none was written.
    #[serde(default)]
    pub message: String,
    /// Starts of the worker container in this pod ([`STARTS_FILE`]), when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<u32>,
}

/// Exit code of `sluice-worker check` when the manifest, the SQL or its fit with the checkpoint
/// is invalid (a user error: do not retry). 0 is a valid query, anything else means the check
/// could not complete (store unreachable, ...).
pub const CHECK_EXIT_REFUSED: i32 = 2;

/// What `sluice-worker check` found out about a valid query (its JSON on stdout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The SQL keeps state across batches (`sqlScope: stream` with aggregations, dedup, ...).
    #[serde(default)]
    pub stateful: bool,
    /// Operators that keep state in `sqlScope: stream` (`aggregation`, `join`, ...).
    #[serde(default)]
    pub stateful_operators: Vec<String>,
    /// Columns the aggregations group by (bare column names, deduplicated, in plan order).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// `partitionKey` of each source that names one.
    #[serde(default)]
    pub partition_keys: BTreeMap<String, String>,
    /// Tasks of the query (the largest source partition count): the most replicas it can use.
    #[serde(default)]
    pub tasks: u32,
    /// Fingerprint of the stateful operators (as stored in the checkpoint's `metadata.json`),
    /// `None` for a stateless query.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// How a stateful query's rows reach its state: `single` (one task per group, or no
    /// state), `partitionKey` (sources route rows by a grouping column) or `exchange` (a source
    /// stage and a stateful stage with a keyed exchange between them).
    #[serde(default)]
    pub plan: String,
    /// The key of a stateful query's state: its grouping columns besides the `window(...)` /
    /// `session_window(...)` one (dedup: all its columns). Empty for a global aggregate, whose
    /// state is one key group and cannot be split over tasks.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// The outcome of a check as one JSON document: what a check Job writes to its termination
/// message (at most 4096 bytes on Kubernetes, so refusals are cut to [`MAX_MESSAGE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum CheckOutcomeReport {
    /// The query is valid (and fits the checkpoint).
    Valid { report: CheckReport },
    /// The query is refused; `message` says why.
    Refused { message: String },
    /// The check could not complete (store unreachable, ...).
    Failed { message: String },
}

/// Longest message kept in a [`CheckOutcomeReport`] (bytes).
pub const MAX_MESSAGE: usize = 3000;

/// A worker's answer to `GET /progress`: `P` is the worker's full `StreamingQueryProgress` when
/// it answers, [`BatchProgress`] (the fields the operator reads) when the operator parses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressAnswer<P> {
    /// The last committed batch, `None` before the first.
    #[serde(default = "none")]
    pub latest: Option<P>,
    /// Recent batches, oldest first.
    #[serde(default = "Vec::new")]
    pub recent: Vec<P>,
    /// The last retryable error (the worker keeps running), if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// A `POST /stop` was received; the worker stops after its current batch.
    #[serde(default)]
    pub stop_requested: bool,
}

impl<P> Default for ProgressAnswer<P> {
    fn default() -> Self {
        Self {
            latest: None,
            recent: Vec::new(),
            last_error: None,
            stop_requested: false,
        }
    }
}

fn none<P>() -> Option<P> {
    None
}

/// A worker's answer to `POST /stop`, sent after its final commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopAnswer<P> {
    pub stopped: bool,
    /// The last committed batch.
    #[serde(default = "none")]
    pub latest: Option<P>,
}

/// The fields of one batch's progress (Spark's `StreamingQueryProgress` names) the operator reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchProgress {
    #[serde(default)]
    pub batch_id: Option<i64>,
    /// Trigger start, RFC 3339.
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub num_input_rows: f64,
    /// rows/s.
    #[serde(default)]
    pub input_rows_per_second: f64,
    /// rows/s.
    #[serde(default)]
    pub processed_rows_per_second: f64,
    #[serde(default)]
    pub duration_ms: BatchDurations,
    #[serde(default)]
    pub event_time: BatchEventTime,
    #[serde(default)]
    pub sources: Vec<SourceBacklog>,
    /// One entry per task that ran the batch (only counted here).
    #[serde(default)]
    pub tasks: Vec<serde_json::Value>,
}

/// `durationMs` of a batch (ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchDurations {
    #[serde(default)]
    pub trigger_execution: f64,
}

/// `eventTime` of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchEventTime {
    /// RFC 3339, when the query has a watermark.
    #[serde(default)]
    pub watermark: Option<String>,
}

/// A source's unread input after a batch (rows; files for file sources).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceBacklog {
    #[serde(default)]
    pub backlog: f64,
}

/// What a one-shot run (`trigger: once / availableNow`) did, as the worker's last line:
/// `Run: batches <first>..<last>, <rows> rows` (`Run: no batches, 0 rows` when there was no new
/// input), on stderr and, with `--termination-log`, as the Job pod's termination message. The
/// operator reads it into `status.lastRun`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Lowest batch id committed by the run (over its tasks), `None` without a batch.
    pub first_batch_id: Option<i64>,
    /// Highest batch id committed by the run.
    pub last_batch_id: Option<i64>,
    /// Rows written to the sink.
    pub rows: i64,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first_batch_id, self.last_batch_id) {
            (Some(first), Some(last)) => {
                write!(f, "Run: batches {first}..{last}, {} rows", self.rows)
            }
            _ => write!(f, "Run: no batches, {} rows", self.rows),
        }
    }
}

impl RunReport {
    /// The report of the last `Run: ...` line in `text` (a termination message or a log tail).
    pub fn find(text: &str) -> Option<Self> {
        text.lines().rev().find_map(|line| {
            let rest = &line[line.find("Run: ")? + "Run: ".len()..];
            let (batches, rows) = rest.trim_end().split_once(", ")?;
            let rows = rows.strip_suffix(" rows")?.parse().ok()?;
            if batches == "no batches" {
                return Some(Self {
                    rows,
                    ..Self::default()
                });
            }
            let (first, last) = batches.strip_prefix("batches ")?.split_once("..")?;
            Some(Self {
                first_batch_id: Some(first.parse().ok()?),
                last_batch_id: Some(last.parse().ok()?),
                rows,
            })
        })
    }

    /// The report of a run of several replicas: the lowest first, the highest last, rows summed.
    pub fn combine(reports: &[Self]) -> Self {
        Self {
            first_batch_id: reports.iter().filter_map(|r| r.first_batch_id).min(),
            last_batch_id: reports.iter().filter_map(|r| r.last_batch_id).max(),
            rows: reports.iter().map(|r| r.rows).sum(),
        }
    }
}

#[cfg(test)]
mod run_report_tests {
    use super::RunReport;

    #[test]
    fn the_run_line_round_trips_and_is_found_in_a_log() {
        let report = RunReport {
            first_batch_id: Some(3),
            last_batch_id: Some(5),
            rows: 120,
        };
        assert_eq!(report.to_string(), "Run: batches 3..5, 120 rows");
        let log = format!("serving /metrics\n{report}\nquery stopped: 3 batches\n");
        assert_eq!(RunReport::find(&log), Some(report));
        let empty = RunReport::default();
        assert_eq!(empty.to_string(), "Run: no batches, 0 rows");
        assert_eq!(RunReport::find(&empty.to_string()), Some(empty));
        assert_eq!(RunReport::find("error: sink down"), None);
        assert_eq!(
            RunReport::combine(&[
                report,
                empty,
                RunReport {
                    first_batch_id: Some(2),
                    last_batch_id: Some(4),
                    rows: 1
                }
            ]),
            RunReport {
                first_batch_id: Some(2),
                last_batch_id: Some(5),
                rows: 121
            }
        );
    }
}
