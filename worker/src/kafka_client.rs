//! The librdkafka client settings the Kafka source and the Kafka sink share.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

use crate::error::Result;

/// The librdkafka configuration of a source or sink: `bootstrap.servers`, the spec's options, and
/// its `secretOptions` read now from their environment variables or files. TLS and SASL are
/// librdkafka's own (`security.protocol: ssl | sasl_ssl`, `ssl.ca.location`, `sasl.mechanism`, ...).
///
/// # Errors
/// [`crate::error::EngineError::Manifest`] when a secret option's variable or file cannot be read.
pub fn client_config(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    secret_options: &BTreeMap<String, sluice_crds::SecretRef>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in options {
        config.set(k, v);
    }
    for (k, v) in crate::secrets::resolve_all("kafka.secretOptions", secret_options)? {
        config.set(k, v);
    }
    Ok(config)
}
