//! Reading `StreamingQuery` manifests from YAML.
//!
//! YAML is parsed with `serde-saphyr` into a JSON value first and then deserialized with
//! `serde_path_to_error`, so that an unknown, missing or mistyped field is reported with its full
//! path (`spec.sources[0].file.maxFilesPerTrigger`), as `kubectl` users expect.

use crate::error::CrdError;
use crate::spec::StreamingQuery;
use crate::validate::validate_spec;

/// Parses one manifest and validates its spec.
///
/// # Errors
/// [`CrdError::Yaml`] for text that is not YAML, [`CrdError::Field`] with the field path for an
/// unknown/missing/mistyped field or a wrong `apiVersion`/`kind`, [`CrdError::Invalid`] for a
/// broken rule (see [`validate_spec`]).
pub fn parse_manifest(yaml: &str) -> Result<StreamingQuery, CrdError> {
    let value: serde_json::Value = serde_saphyr::from_str_with_options(yaml, yaml_options())
        .map_err(|e| CrdError::Yaml(e.to_string()))?;
    from_value(value)
}

/// Parses every `---`-separated document of a file (each must be a `StreamingQuery`).
///
/// # Errors
/// As [`parse_manifest`], for the first document that fails.
pub fn parse_manifests(yaml: &str) -> Result<Vec<StreamingQuery>, CrdError> {
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(yaml, yaml_options())
            .map_err(|e| CrdError::Yaml(e.to_string()))?;
    values
        .into_iter()
        .filter(|v| !v.is_null())
        .map(from_value)
        .collect()
}

/// YAML 1.2 Core booleans only: `y`, `n`, `yes`, `on` stay strings (a column named `y` is a
/// column, not `true` — YAML 1.1's "Norway problem").
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

fn from_value(value: serde_json::Value) -> Result<StreamingQuery, CrdError> {
    check_type_meta(&value)?;
    let query: StreamingQuery =
        serde_path_to_error::deserialize(&value).map_err(|e| CrdError::Field {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    validate_spec(&query.spec)?;
    Ok(query)
}

fn check_type_meta(value: &serde_json::Value) -> Result<(), CrdError> {
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let api_version = field("apiVersion");
    if api_version != "sluice.dev/v1alpha1" {
        return Err(CrdError::Field {
            path: "apiVersion".into(),
            message: format!("expected `sluice.dev/v1alpha1`, found `{api_version}`"),
        });
    }
    let kind = field("kind");
    if kind != "StreamingQuery" {
        return Err(CrdError::Field {
            path: "kind".into(),
            message: format!("expected `StreamingQuery`, found `{kind}`"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {name: iot-alerts}
spec:
  sources:
    - name: events
      file: {path: /tmp/in, format: json, maxFilesPerTrigger: 2}
      schema:
        - {name: deviceId, type: string}
        - {name: timestamp, type: timestamp}
  sql: SELECT * FROM events
  sink: {console: {}}
  trigger: {availableNow: true}
"#;

    #[test]
    fn parses_a_valid_manifest() {
        let query = parse_manifest(VALID).expect("valid");
        assert_eq!(query.metadata.name.as_deref(), Some("iot-alerts"));
        let file = query.spec.sources[0].file.as_ref().expect("file source");
        assert_eq!(file.max_files_per_trigger, Some(2));
        assert_eq!(file.partitions, 2);
        assert_eq!(query.spec.trigger.available_now, Some(true));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let yaml = VALID.replace("maxFilesPerTrigger", "maxFilesPerTriger");
        let err = parse_manifest(&yaml)
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("spec.sources[0].file"), "{err}");
        assert!(err.contains("maxFilesPerTriger"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let yaml = VALID.replace("maxFilesPerTrigger: 2", "maxFilesPerTrigger: many");
        let err = parse_manifest(&yaml).expect_err("bad type").to_string();
        assert!(
            err.contains("spec.sources[0].file.maxFilesPerTrigger"),
            "{err}"
        );
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let yaml = VALID.replace("kind: StreamingQuery", "kind: Deployment");
        let err = parse_manifest(&yaml).expect_err("kind").to_string();
        assert!(err.contains("`kind`"), "{err}");
    }

    #[test]
    fn yaml_1_1_boolean_spellings_stay_strings() {
        let yaml = VALID.replace("{name: deviceId, type: string}", "{name: y, type: string}");
        let query = parse_manifest(&yaml).expect("valid");
        assert_eq!(query.spec.sources[0].schema[0].name, "y");
    }

    #[test]
    fn parses_several_documents() {
        let two = format!("{VALID}\n---\n{}", VALID.replace("iot-alerts", "second"));
        let queries = parse_manifests(&two).expect("two docs");
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[1].metadata.name.as_deref(), Some("second"));
    }
}
