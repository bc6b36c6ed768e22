//! A StreamingQuery's SQL is a query: `COPY`, `CREATE`, `INSERT`, `DROP` (and every other statement)
//! are refused by `sluice-worker check` and at start with exit 2 and a message naming `spec.sql`,
//! before anything runs (the `COPY` target is never written); a plain query still checks and runs.

use std::path::Path;
use std::process::Command;

fn manifest(dir: &Path, sql: &str) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\":1}\n{\"id\":2}\n").expect("write");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: guard}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json}}
      schema: [{{name: id, type: long}}]
  sql: "{}"
  sink: {{console: {{}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        sql.replace('"', "\\\""),
        dir.join("ckpt").display()
    );
    let path = dir.join("query.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn worker(args: &[&str], manifest: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args(args)
        .arg(manifest)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice-worker")
}

#[test]
fn statements_other_than_queries_are_refused_by_check_and_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pwned = dir.path().join("pwned.csv");
    let statements = [
        (
            format!("COPY (SELECT id FROM events) TO '{}'", pwned.display()),
            "COPY",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'".to_string(),
            "CREATE EXTERNAL TABLE",
        ),
        (
            "CREATE TABLE t AS SELECT id FROM events".to_string(),
            "CREATE",
        ),
        ("INSERT INTO events VALUES (3)".to_string(), "INSERT"),
        ("DROP TABLE events".to_string(), "DROP"),
    ];
    for (sql, kind) in &statements {
        let manifest = manifest(dir.path(), sql);
        for command in [&["check"][..], &["run"][..]] {
            let out = worker(command, &manifest);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?} {sql}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "`spec.sql`: only a query (SELECT/WITH) is allowed here (got {kind})"
                )),
                "{command:?} {sql}: {stderr}"
            );
            assert!(!stderr.contains("bug in Sluice"), "{stderr}");
        }
    }
    assert!(!pwned.exists(), "COPY wrote its file");

    let manifest = manifest(dir.path(), "SELECT id * 10 AS x FROM events");
    let out = worker(&["check"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = worker(&["run"], &manifest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10") && stdout.contains("20"), "{stdout}");
}
