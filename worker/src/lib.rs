//! Sluice's micro-batch streaming engine.
//!
//! A `StreamingQuery` manifest names sources, a SQL query and a sink. The [`engine`] runs it as
//! micro-batches in Spark Structured Streaming's model: each trigger plans the new input of every
//! task, logs it in the [`checkpoint`], reads it from the [`source`]s, runs the [`sql`] with
//! DataFusion, writes the [`sink`] idempotently and commits. See docs/architecture.md.

// No `unwrap`/`expect`/unchecked index or slice in library code: input must never reach a panic
// (tests may use them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bad_record;
pub mod check;
pub mod checkpoint;
pub mod confine;
pub mod control;
pub mod engine;
pub mod error;
pub mod fault;
pub mod format;
pub mod http;
pub mod kafka_client;
pub mod key_group;
pub mod memory;
pub mod metrics;
pub mod ml;
pub mod postgres;
pub mod postgres_tls;
pub mod progress;
pub mod report;
pub mod schema;
pub mod secrets;
pub mod sink;
pub mod source;
pub mod sql;
pub mod state;
pub mod state_file;
pub mod storage;
pub mod termination;

pub use engine::{Engine, QueryConfig, RunSummary, Shared, StopHandle, Trigger};
pub use error::{EngineError, ErrorClass, Result};
