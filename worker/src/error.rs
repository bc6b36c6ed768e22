//! The engine's one error type, classified the way an operator needs it:
//! *user* errors need a spec or data change, *external* errors come from a server or store and are
//! usually worth retrying, *internal* errors are bugs.

use std::time::Duration;

/// Where an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The manifest, SQL or data must change; retrying won't help.
    User,
    /// A store, broker or database failed; retrying may help.
    External,
    /// A bug in Sluice.
    Internal,
}

/// Errors of the engine, its sources, sinks and checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The manifest is invalid (field path in the message).
    #[error(transparent)]
    Manifest(#[from] sluice_crds::CrdError),
    /// A rule broken by the query itself, e.g. an unsupported SQL construct.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A worker setting (a flag, its environment variable, or what the worker reads of its
    /// container, e.g. the cgroup memory limit) is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
    /// DataFusion refused to plan or run the SQL.
    #[error("SQL error: {0}")]
    Sql(#[from] datafusion::error::DataFusionError),
    /// A record that does not decode, with the policy `fail`.
    #[error("bad record in {file} line {line}: {message}")]
    BadRecord {
        file: String,
        line: u64,
        message: String,
    },
    /// Object store (local disk or S3) failed.
    #[error("storage error at {location}: {source}")]
    Storage {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// The checkpoint belongs to something else, or another writer got there first.
    #[error("checkpoint conflict: {0}")]
    Fenced(String),
    /// The checkpoint is unreadable or does not fit this query.
    #[error("checkpoint {location}: {message}")]
    Checkpoint { location: String, message: String },
    /// A source failed to read (connection, protocol).
    #[error("source `{source_name}`: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    /// Source input the query still had to read no longer exists (Kafka offsets deleted by
    /// retention, a recreated topic) and `failOnDataLoss` is true (Spark's default).
    #[error(
        "source `{source_name}`: data loss: {message} (set `failOnDataLoss: false` on the source to skip them)"
    )]
    DataLoss {
        source_name: String,
        message: String,
    },
    /// A batch failed [`PoisonBatch`](Self::PoisonBatch)`.attempts` times (counted across worker
    /// restarts) with errors retrying does not fix: the query stops instead of crash-looping.
    #[error(
        "PoisonBatch: batch {batch_id} of task {task} failed {attempts} times (spec.maxBatchAttempts); last error: {error}"
    )]
    PoisonBatch {
        task: u32,
        batch_id: u64,
        attempts: u32,
        error: String,
    },
    /// A checkpoint restore (`sluice-worker checkpoint restore`, `spec.restore`) that cannot be
    /// done: the batch is not retained or not committed, or the sink cannot take the replay
    /// without duplicates. The message is the reason, one line.
    #[error("restore refused: {0}")]
    RestoreRefused(String),
    /// A sink failed to write.
    #[error("sink: {0}")]
    Sink(String),
    /// A lookup table (PostgreSQL) could not be read for a batch; the batch is replayed.
    #[error("lookup table `{table}`: {message}")]
    Lookup { table: String, message: String },
    /// Arrow or Parquet failed on data Sluice produced.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Anything that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The error's class (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Manifest(_)
            | Self::InvalidQuery(_)
            | Self::Config(_)
            | Self::BadRecord { .. } => ErrorClass::User,
            // The root cause decides: DataFusion wraps errors in `Context` / `Diagnostic` layers.
            Self::Sql(e) => match e.find_root() {
                datafusion::error::DataFusionError::Plan(_)
                | datafusion::error::DataFusionError::SQL(..)
                | datafusion::error::DataFusionError::SchemaError(..)
                | datafusion::error::DataFusionError::NotImplemented(_) => ErrorClass::User,
                // A value the SQL cannot handle (a failing cast, a division by zero, an overflow):
                // the SQL or the data must change.
                datafusion::error::DataFusionError::ArrowError(e, _) => match **e {
                    arrow::error::ArrowError::CastError(_)
                    | arrow::error::ArrowError::ParseError(_)
                    | arrow::error::ArrowError::DivideByZero
                    | arrow::error::ArrowError::ArithmeticOverflow(_)
                    | arrow::error::ArrowError::ComputeError(_)
                    | arrow::error::ArrowError::InvalidArgumentError(_) => ErrorClass::User,
                    _ => ErrorClass::Internal,
                },
                _ => ErrorClass::Internal,
            },
            Self::Fenced(_)
            | Self::Checkpoint { .. }
            | Self::DataLoss { .. }
            | Self::PoisonBatch { .. }
            | Self::RestoreRefused(_) => ErrorClass::User,
            Self::Storage { .. } | Self::Source { .. } | Self::Sink(_) | Self::Lookup { .. } => {
                ErrorClass::External
            }
            Self::Arrow(_) | Self::Parquet(_) | Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Whether running the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::External
    }

    /// Whether this error, failing a batch, will fail it again when the batch is replayed: bad
    /// data or a query the sink refuses, SQL that cannot convert a value, a bug. Such a batch is
    /// retried up to `spec.maxBatchAttempts` times, then reported as
    /// [`EngineError::PoisonBatch`]. Outages (retryable), fencing, data loss, checkpoint conflicts
    /// and `onBadRecord: fail` stop or wait as they always do.
    pub fn is_deterministic_batch_failure(&self) -> bool {
        matches!(
            self,
            Self::InvalidQuery(_)
                | Self::Sql(_)
                | Self::Arrow(_)
                | Self::Parquet(_)
                | Self::Internal(_)
        )
    }

    /// Wraps an object_store error with the location it concerns.
    pub fn storage(location: impl Into<String>, source: object_store::Error) -> Self {
        Self::Storage {
            location: location.into(),
            source,
        }
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Exponential backoff for retryable errors: 100 ms doubling to `max`, as attempt `n` (0-based).
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let millis = 100u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(millis).min(max)
}

/// `items[range]` without a panic: an out-of-range `range` (a plan whose column counts do not
/// match its batches) becomes [`EngineError::Internal`] naming `what`.
pub(crate) fn slice<'a, T, R>(items: &'a [T], range: R, what: &str) -> Result<&'a [T]>
where
    R: std::slice::SliceIndex<[T], Output = [T]> + std::fmt::Debug + Clone,
{
    items.get(range.clone()).ok_or_else(|| {
        EngineError::Internal(format!(
            "{what}: columns {range:?} out of range (only {} columns)",
            items.len()
        ))
    })
}
