//! Reads the secret values that a spec refers to ([`SecretRef`]: an environment variable or a
//! file) at the moment a client is built, so that they live only in the worker's memory and the
//! client library: never in the spec, a log line, `/progress`, or an error message (errors name
//! the variable or file, not the value).

use std::collections::BTreeMap;

use sluice_crds::{CrdError, SecretRef};

use crate::error::{EngineError, Result};

/// Longest secret value read (bytes); a PEM bundle of a few CAs fits.
const MAX_SECRET_BYTES: u64 = 1 << 20;

/// The value `reference` points to; `field` is the spec field for errors (e.g.
/// `kafka.secretOptions.sasl.password`).
///
/// # Errors
/// [`EngineError::Manifest`] naming `field` and the variable or file when it is unset, unreadable,
/// empty or larger than 1 MiB.
pub fn resolve(field: &str, reference: &SecretRef) -> Result<String> {
    let fail = |message: String| {
        EngineError::Manifest(CrdError::Field {
            path: field.to_string(),
            message,
        })
    };
    let value = match (&reference.env, &reference.path) {
        (Some(var), None) => std::env::var(var)
            .map_err(|_| fail(format!("environment variable `{var}` is not set")))?,
        (None, Some(path)) => {
            let len = std::fs::metadata(path)
                .map_err(|e| fail(format!("cannot read `{path}`: {e}")))?
                .len();
            if len > MAX_SECRET_BYTES {
                return Err(fail(format!("`{path}` is larger than 1 MiB")));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read `{path}`: {e}")))?;
            // A Secret mounted from `kubectl create secret --from-file` often ends with a newline.
            text.strip_suffix('\n').unwrap_or(&text).to_string()
        }
        _ => return Err(fail("exactly one of env, path must be set".into())),
    };
    if value.is_empty() {
        return Err(fail("the secret value is empty".into()));
    }
    Ok(value)
}

/// Resolves every entry of a Kafka `secretOptions` map (`field` is e.g. `kafka.secretOptions`).
///
/// # Errors
/// As [`resolve`].
pub fn resolve_all(
    field: &str,
    options: &BTreeMap<String, SecretRef>,
) -> Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|(name, reference)| {
            Ok((
                name.clone(),
                resolve(&format!("{field}.{name}"), reference)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_a_file_or_the_environment_and_errors_do_not_show_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "file-secret\n").expect("write");
        let from_file = SecretRef {
            env: None,
            path: Some(path.display().to_string()),
        };
        assert_eq!(resolve("f", &from_file).expect("file"), "file-secret");
        let from_env = SecretRef {
            env: Some("PATH".into()),
            path: None,
        };
        assert!(!resolve("f", &from_env).expect("env").is_empty());
        let unset = SecretRef {
            env: Some("SLUICE_TEST_SURELY_UNSET_VARIABLE".into()),
            path: None,
        };
        let e = resolve("kafka.secretOptions.sasl.password", &unset).expect_err("unset");
        assert_eq!(
            e.to_string(),
            "invalid manifest at `kafka.secretOptions.sasl.password`: environment variable \
             `SLUICE_TEST_SURELY_UNSET_VARIABLE` is not set"
        );
        assert_eq!(e.class(), crate::error::ErrorClass::User);
    }
}
