//! `helm template` of `charts/sluice`. helm comes from `$SLUICE_CACHE/bin/helm` (default
//! `$HOME/.cache/sluice/bin/helm`, installed by `e2e/servers/install.sh`) or `PATH`; without it
//! the tests skip loudly, unless `SLUICE_REQUIRE_SERVERS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice")
}

/// The helm binary, or `None` (after saying so) when it is not installed.
pub fn helm() -> Option<PathBuf> {
    let cache = std::env::var("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice")
        });
    let cached = cache.join("bin/helm");
    if cached.is_file() {
        return Some(cached);
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("helm"))
            .find(|p| p.is_file())
    });
    if let Some(found) = on_path.flatten() {
        return Some(found);
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "SLUICE_REQUIRE_SERVERS=1 but helm is not installed: run e2e/servers/install.sh"
    );
    eprintln!(
        "\n*** SKIPPED: helm not found on PATH or in $SLUICE_CACHE/bin; run e2e/servers/install.sh ***\n"
    );
    None
}

/// The chart rendered into namespace `sluice-system` (CRD included), one value per object.
pub fn render(helm: &Path, args: &[&str]) -> Vec<Value> {
    let output = Command::new(helm)
        .args(["template", "sluice"])
        .arg(chart_dir())
        .args(["--namespace", "sluice-system", "--include-crds"])
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML parses");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}
