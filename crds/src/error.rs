//! The crate's one error type.

/// Errors from reading a manifest. All are user errors: the manifest must change, retrying won't help.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// Not YAML at all.
    #[error("manifest is not valid YAML: {0}")]
    Yaml(String),
    /// YAML, but a field is unknown, missing or of the wrong type; `path` names it
    /// (e.g. `spec.sources[0].file.format`).
    #[error("invalid manifest at `{path}`: {message}")]
    Field { path: String, message: String },
    /// Well-formed, but breaks a rule (e.g. two source kinds in one source).
    #[error("invalid manifest: {0}")]
    Invalid(#[from] ValidationError),
}

impl CrdError {
    /// Always false: a manifest error is fixed by editing the manifest.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A broken rule, with the path of the field that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}`: {message}")]
pub struct ValidationError {
    /// Field path such as `spec.sources[0].watermark.column`.
    pub path: String,
    pub message: String,
}
