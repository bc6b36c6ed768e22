//! The apiserver's OpenAPI validation of a custom resource against the CRD's structural schema
//! (types, bounds, enums, required fields) and its CEL rules (`x-kubernetes-validations`,
//! transition rules with the stored object as `oldSelf`), as `field: problem` messages.

use serde_json::Value;

/// The `StreamingQuery` CRD's `openAPIV3Schema`, as generated.
pub fn streaming_query_schema() -> Value {
    let crd = serde_json::to_value(sluice_crds::crd::crd().expect("CRD")).expect("json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// Structural problems of `value` under `schema`, at `path`.
pub fn violations(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true && !path.is_empty() {
            out.push(format!("{path}: Invalid value: null"));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if let Some(expected) = schema["type"].as_str()
        && !int_or_string
        && !type_matches(expected, value)
    {
        out.push(format!("{path}: Invalid value: must be of type {expected}"));
        return;
    }
    if let (Some(max), Some(text)) = (schema["maxLength"].as_u64(), value.as_str())
        && text.chars().count() as u64 > max
    {
        out.push(format!(
            "{path}: Too long: may not be more than {max} bytes"
        ));
    }
    if let (Some(min), Some(text)) = (schema["minLength"].as_u64(), value.as_str())
        && (text.chars().count() as u64) < min
    {
        out.push(format!(
            "{path}: Invalid value: should be at least {min} chars long"
        ));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        out.push(format!("{path}: Unsupported value: {value}"));
    }
    if let (Some(min), Some(number)) = (schema["minimum"].as_f64(), value.as_f64())
        && number < min
    {
        out.push(format!(
            "{path}: Invalid value: should be greater than or equal to {min}"
        ));
    }
    if let (Some(max), Some(number)) = (schema["maximum"].as_f64(), value.as_f64())
        && number > max
    {
        out.push(format!(
            "{path}: Invalid value: should be less than or equal to {max}"
        ));
    }
    if let Some(items) = value.as_array() {
        if let Some(max) = schema["maxItems"].as_u64()
            && items.len() as u64 > max
        {
            out.push(format!(
                "{path}: Too many: {}: must have at most {max} items",
                items.len()
            ));
        }
        if let Some(min) = schema["minItems"].as_u64()
            && (items.len() as u64) < min
        {
            out.push(format!(
                "{path}: Invalid value: should have at least {min} items"
            ));
        }
        for (i, item) in items.iter().enumerate() {
            violations(&schema["items"], item, &format!("{path}[{i}]"), out);
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(max) = schema["maxProperties"].as_u64()
            && object.len() as u64 > max
        {
            out.push(format!(
                "{path}: Too many: {}: must have at most {max} items",
                object.len()
            ));
        }
        for required in schema["required"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(name) = required.as_str()
                && !object.contains_key(name)
            {
                out.push(format!("{path}.{name}: Required value"));
            }
        }
        for (key, child) in object {
            if let Some(property) = schema["properties"].get(key) {
                violations(property, child, &format!("{path}.{key}"), out);
            } else if schema["additionalProperties"].is_object() {
                violations(
                    &schema["additionalProperties"],
                    child,
                    &format!("{path}[{key}]"),
                    out,
                );
            }
        }
    }
}

/// Every reason the apiserver would refuse `object` (replacing `old`) with 422 Invalid.
pub fn refusals(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    // apiVersion, kind and metadata are validated by the apiserver itself.
    for section in ["spec", "status"] {
        if let Some(value) = object.get(section) {
            violations(&schema["properties"][section], value, section, &mut out);
        }
    }
    if out.is_empty()
        && let Err(errors) = kube::core::cel::Validator::new().validate(schema, object, old)
    {
        out.extend(errors.into_vec().iter().map(|e| e.to_string()));
    }
    out
}
