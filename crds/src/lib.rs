//! `StreamingQuery` custom resource (`sluice.dev/v1alpha1`): types, manifest parsing and validation.
//!
//! Shared by the operator (which reconciles it) and the worker (which runs it), so both read a
//! manifest the same way and reject the same mistakes with the same messages.

// No unchecked index or slice: a manifest must never reach a panic (tests may use them).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod bounds;
pub mod conditions;
pub mod contract;
pub mod crd;
pub mod duration;
pub mod error;
pub mod manifest;
pub mod schedule;
pub mod secrets;
pub mod size;
pub mod spec;
pub mod status;
pub mod validate;

pub use error::CrdError;
pub use manifest::{parse_manifest, parse_manifests};
pub use secrets::SecretRef;
pub use spec::*;
pub use status::*;
pub use validate::{ValidationError, validate_spec};
