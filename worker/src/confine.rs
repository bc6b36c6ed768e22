//! `--allowed-paths`: the local file locations a query may name (file sources, file tables, model
//! files, the file sink and its bad-records path, the Delta sink's table, the checkpoint) must lie under one of the given
//! roots, so that whoever writes a StreamingQuery cannot make the worker read or write elsewhere on
//! its file system. `s3://` locations are not local and not confined.
//!
//! Paths are resolved as the worker will use them: relative to the working directory, through
//! symbolic links of the part that exists; `..` in a part that does not exist yet is refused.

use std::path::{Component, Path, PathBuf};

use sluice_crds::{CrdError, StreamingQuerySpec, ValidationError};

use crate::error::{EngineError, Result};

/// Canonical roots under which local locations are allowed.
#[derive(Debug, Clone)]
pub struct AllowedPaths {
    roots: Vec<PathBuf>,
}

impl AllowedPaths {
    /// The roots, each an existing directory.
    ///
    /// # Errors
    /// A root that does not exist or cannot be resolved (the message names it).
    pub fn new(roots: &[PathBuf]) -> std::result::Result<Self, String> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r)
                    .map_err(|e| format!("--allowed-paths: cannot resolve {}: {e}", r.display()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self { roots })
    }

    /// Checks every local location of `spec`, and `checkpoint` (the `--checkpoint` override) if
    /// given.
    ///
    /// # Errors
    /// [`EngineError::Manifest`] naming the first field whose location is outside every root.
    pub fn check_spec(&self, spec: &StreamingQuerySpec, checkpoint: Option<&str>) -> Result<()> {
        let mut locations: Vec<(String, &str)> = Vec::new();
        for (i, source) in spec.sources.iter().enumerate() {
            if let Some(file) = &source.file {
                locations.push((format!("spec.sources[{i}].file.path"), &file.path));
            }
        }
        for (i, table) in spec.tables.iter().enumerate() {
            if let Some(file) = &table.file {
                locations.push((format!("spec.tables[{i}].file.path"), &file.path));
            }
        }
        for (i, model) in spec.models.iter().enumerate() {
            if let Some(file) = &model.file {
                locations.push((format!("spec.models[{i}].file.path"), &file.path));
            }
        }
        if let Some(file) = &spec.sink.file {
            locations.push(("spec.sink.file.path".into(), &file.path));
            if let Some(bad) = &file.bad_records_path {
                locations.push(("spec.sink.file.badRecordsPath".into(), bad));
            }
        }
        if let Some(delta) = &spec.sink.delta {
            locations.push(("spec.sink.delta.path".into(), &delta.path));
        }
        match checkpoint {
            Some(location) => locations.push(("--checkpoint".into(), location)),
            None => {
                if let Some(location) = &spec.checkpoint.location {
                    locations.push(("spec.checkpoint.location".into(), location));
                }
            }
        }
        for (field, location) in locations {
            self.check(&field, location)?;
        }
        Ok(())
    }

    fn check(&self, field: &str, location: &str) -> Result<()> {
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            return Ok(());
        }
        let refuse = |why: String| {
            EngineError::Manifest(CrdError::Invalid(ValidationError {
                path: field.to_string(),
                message: why,
            }))
        };
        let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
        let resolved = resolve(path).map_err(|e| refuse(format!("`{location}`: {e}")))?;
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        Err(refuse(format!(
            "`{location}` is outside the allowed paths ({})",
            roots.join(", ")
        )))
    }
}

/// `path` made absolute, its longest existing prefix canonicalized (symbolic links followed).
fn resolve(path: &Path) -> std::result::Result<PathBuf, String> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("no working directory: {e}"))?
            .join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        let Some(parent) = existing.parent() else {
            break;
        };
        if let Some(name) = existing.file_name() {
            rest.push(name.to_os_string());
        } else {
            return Err("`..` is not allowed in a path that does not exist yet".into());
        }
        existing = parent;
    }
    let mut resolved = std::fs::canonicalize(existing).map_err(|e| e.to_string())?;
    for name in rest.into_iter().rev() {
        match Path::new(&name).components().next() {
            Some(Component::Normal(_)) => resolved.push(name),
            _ => return Err("`..` is not allowed in a path that does not exist yet".into()),
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_inside_the_roots_pass_and_others_are_refused_with_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("in")).expect("mkdir");
        let allowed = AllowedPaths::new(std::slice::from_ref(&root)).expect("roots");
        let inside = root.join("in").display().to_string();
        let not_yet = root.join("out/new").display().to_string();
        allowed.check("f", &inside).expect("inside");
        allowed
            .check("f", &not_yet)
            .expect("inside, not created yet");
        allowed
            .check("f", &format!("file://{inside}"))
            .expect("file URL");
        allowed.check("f", "s3://bucket/prefix").expect("not local");
        for outside in [
            "/etc/passwd".to_string(),
            format!("{}/../secrets", root.display()),
            dir.path().join("other").display().to_string(),
        ] {
            let e = allowed
                .check("spec.sources[0].file.path", &outside)
                .expect_err(&outside);
            assert!(
                e.to_string()
                    .starts_with("invalid manifest: `spec.sources[0].file.path`: "),
                "{e}"
            );
        }
        // A symbolic link inside a root that points outside it is outside.
        std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
        allowed
            .check("f", &root.join("etc/passwd").display().to_string())
            .expect_err("through a link");
    }
}
