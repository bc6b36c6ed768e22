//! Secret values in a spec: never inline, always a reference resolved by the worker at run time.
//!
//! A [`SecretRef`] names an environment variable (in a pod, filled from a Kubernetes Secret with
//! `spec.env[].valueFrom.secretKeyRef`) or a file (a mounted Secret). The spec, the query's
//! ConfigMap, the status and the events then hold only the reference. Kafka options whose names
//! librdkafka documents as sensitive are refused in `options` ([`is_secret_kafka_option`]) and
//! given in `secretOptions` instead.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Where a secret value is read at run time: exactly one of `env`, `path`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the value (e.g. set from a Secret by `spec.env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub env: Option<String>,
    /// File holding the value (e.g. a mounted Secret); one trailing newline is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
}

/// Kafka options whose value is a secret (librdkafka's CONFIGURATION.md marks them sensitive).
const SECRET_KAFKA_OPTIONS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// Whether a librdkafka option carries a secret and so must come through `secretOptions`: the
/// documented sensitive properties, and any name with `password`, `secret` or `private.key`.
pub fn is_secret_kafka_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_KAFKA_OPTIONS.contains(&name.as_str())
        || name.contains("password")
        || name.contains("secret")
        || name.contains("private.key")
}

/// Checks a Kafka source's or sink's `options` and `secretOptions` (`path` is the field path of
/// the `kafka` object, e.g. `spec.sources[0].kafka`).
///
/// # Errors
/// A secret option given inline (naming the form to use instead), an option set in both maps, or
/// a [`SecretRef`] that is not exactly one of `env`, `path`.
pub fn check_kafka_options(
    path: &str,
    options: &std::collections::BTreeMap<String, String>,
    secret_options: &std::collections::BTreeMap<String, SecretRef>,
) -> Result<(), ValidationError> {
    for name in options.keys() {
        if is_secret_kafka_option(name) {
            return Err(ValidationError {
                path: format!("{path}.options.{name}"),
                message: format!(
                    "`{name}` is a secret and may not be written in the spec; give it as \
                     `secretOptions: {{{name}: {{env: VARIABLE}}}}` (the variable set from a Secret \
                     in `spec.env`) or `{{path: /mounted/secret/file}}`"
                ),
            });
        }
        if secret_options.contains_key(name) {
            return Err(ValidationError {
                path: format!("{path}.secretOptions.{name}"),
                message: format!("`{name}` is set in both options and secretOptions"),
            });
        }
    }
    for (name, reference) in secret_options {
        check_secret_ref(&format!("{path}.secretOptions.{name}"), reference)?;
    }
    Ok(())
}

/// Checks that a reference names exactly one of `env`, `path`, non-empty.
///
/// # Errors
/// The rule broken, at `path`.
pub fn check_secret_ref(path: &str, reference: &SecretRef) -> Result<(), ValidationError> {
    match (&reference.env, &reference.path) {
        (Some(v), None) | (None, Some(v)) if !v.trim().is_empty() => Ok(()),
        _ => Err(ValidationError {
            path: path.to_string(),
            message: "exactly one of env, path must be set (non-empty)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn secret_names_are_recognized() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_kafka_option(name), "{name}");
        }
        for name in [
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "sasl.mechanism",
            "linger.ms",
        ] {
            assert!(!is_secret_kafka_option(name), "{name}");
        }
    }

    #[test]
    fn inline_secrets_are_refused_naming_the_field_and_the_secret_form() {
        let options = BTreeMap::from([("sasl.password".to_string(), "hunter2".to_string())]);
        let e = check_kafka_options("spec.sink.kafka", &options, &BTreeMap::new())
            .expect_err("refused");
        assert_eq!(e.path, "spec.sink.kafka.options.sasl.password");
        assert!(
            e.message
                .contains("secretOptions: {sasl.password: {env: VARIABLE}}"),
            "{e}"
        );
        assert!(!e.message.contains("hunter2"));

        let ok = BTreeMap::from([(
            "sasl.password".to_string(),
            SecretRef {
                env: Some("KAFKA_PASSWORD".into()),
                path: None,
            },
        )]);
        check_kafka_options("spec.sink.kafka", &BTreeMap::new(), &ok).expect("accepted");
        let both = BTreeMap::from([(
            "sasl.password".to_string(),
            SecretRef {
                env: Some("A".into()),
                path: Some("/b".into()),
            },
        )]);
        let e =
            check_kafka_options("spec.sink.kafka", &BTreeMap::new(), &both).expect_err("two forms");
        assert_eq!(e.path, "spec.sink.kafka.secretOptions.sasl.password");
    }
}
