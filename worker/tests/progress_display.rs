//! `sluice-worker run` on a terminal shows one live progress line with a bar over the input to drain
//! (availableNow); in a pipe it prints plain lines, one per trigger, with no terminal escapes.
//! The terminal is a real pseudo-terminal made by util-linux `script`.

use std::process::Command;

fn manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let input = dir.join("in");
    sluice_bench::write_json_files(&input, 1, 6, 3_000).expect("generate");
    let path = dir.join("q.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: progress}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema: [{{name: deviceId, type: string}}, {{name: danger_level, type: string}}]
  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink: {{file: {{path: "{}", format: parquet}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
            input.display(),
            dir.join("out").display(),
            dir.join("ckpt").display()
        ),
    )
    .expect("manifest");
    path
}

#[test]
fn terminal_gets_a_live_bar_and_a_pipe_gets_plain_lines() {
    let bin = env!("CARGO_BIN_EXE_sluice-worker");

    let piped_dir = tempfile::tempdir().expect("tempdir");
    let piped = Command::new(bin)
        .arg("run")
        .arg(manifest(piped_dir.path()))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run in a pipe");
    assert!(piped.status.success());
    let text = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\r'),
        "no terminal control in a pipe: {text:?}"
    );
    for batch in 0..6 {
        assert!(
            text.contains(&format!("\nbatch {batch} | 3000 rows |")),
            "line for batch {batch}: {text}"
        );
    }

    if !std::path::Path::new("/usr/bin/script").exists() {
        assert!(
            std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "util-linux script missing"
        );
        eprintln!("SKIPPED terminal half: no /usr/bin/script");
        return;
    }
    let tty_dir = tempfile::tempdir().expect("tempdir");
    let command = format!("{bin} run {}", manifest(tty_dir.path()).display());
    let tty = Command::new("/usr/bin/script")
        .args(["-qfec", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .env("COLUMNS", "120")
        .output()
        .expect("run under a pseudo-terminal");
    assert!(tty.status.success());
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(
        screen.contains("\u{1b}[2K"),
        "the live line is redrawn in place: {screen:?}"
    );
    assert!(
        screen.contains("6/6 to drain"),
        "the bar reaches the end: {screen:?}"
    );
    assert!(screen.contains('█'), "a drawn bar: {screen:?}");
    assert!(
        screen.contains("batch 5 | 3000 rows"),
        "the last trigger is shown: {screen:?}"
    );
}
