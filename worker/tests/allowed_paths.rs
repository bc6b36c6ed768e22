//! `--allowed-paths`: a query whose file source lies outside the allowed roots is refused by
//! `check` and at start (exit 2, naming the field); inside them it runs.

use std::path::Path;
use std::process::Command;

fn manifest(dir: &Path, source: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: confined}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json}}
      schema: [{{name: id, type: long}}]
  sql: SELECT id FROM events
  sink: {{console: {{}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        source.display(),
        dir.join("root/ckpt").display()
    );
    let path = dir.join("query.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn worker(command: &str, manifest: &Path, root: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .arg(command)
        .arg(manifest)
        .arg("--allowed-paths")
        .arg(root)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice-worker")
}

#[test]
fn file_locations_outside_the_allowed_roots_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let inside = root.join("in");
    let outside = dir.path().join("elsewhere");
    for d in [&inside, &outside] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("a.json"), "{\"id\":7}\n").expect("write");
    }
    let refused = manifest(dir.path(), &outside);
    for command in ["check", "run"] {
        let out = worker(command, &refused, &root);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("`spec.sources[0].file.path`")
                && stderr.contains("is outside the allowed paths"),
            "{command}: {stderr}"
        );
    }
    let allowed = manifest(dir.path(), &inside);
    let out = worker("run", &allowed, &root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('7'));
}
