//! Manifest parsing and spec validation (`sluice-worker run <file>`, the operator's admission of
//! a StreamingQuery): YAML text, one or several documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_crds::manifest::{parse_manifest, parse_manifests};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(query) = parse_manifest(text) {
        // A spec that passed validation validates again after a JSON round trip (what the API
        // server stores and the operator reads back).
        let json = serde_json::to_string(&query).expect("a parsed manifest serializes");
        let again: sluice_crds::StreamingQuery =
            serde_json::from_str(&json).expect("a serialized manifest deserializes");
        sluice_crds::validate_spec(&again.spec).expect("a valid spec stays valid");
    }
    let _ = parse_manifests(text);
});
