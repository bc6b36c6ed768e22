//! `GET /report` (`report.rs`): with `SLUICE_REPORT_HOLD_SECONDS` set, as the operator sets it on
//! its Job and worker pods, a finished command serves its exit code and outcome line until read,
//! then exits with that code; the operator reads outcomes there instead of pod statuses. A
//! continuous worker stopped normally exits without holding.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_crds::contract::{CheckOutcomeReport, JobReport, RunReport};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn manifest(dir: &Path, sql: &str) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n").expect("write");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: report}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json}}
      schema: [{{name: id, type: long}}]
  sql: "{sql}"
  sink: {{console: {{}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        dir.join("ckpt").display()
    );
    let path = dir.join("query.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn spawn(args: &[&str], port: u16, hold: &str, termination_log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("SLUICE_REPORT_HOLD_SECONDS", hold)
        .env("SLUICE_REPORT_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_TERMINATION_LOG", termination_log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice-worker")
}

/// `GET /report` until it answers (the command may still be running).
fn read_report(port: u16, child: &mut Child) -> JobReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream
                .write_all(b"GET /report HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if let Some((head, body)) = answer.split_once("\r\n\r\n")
                && head.starts_with("HTTP/1.0 200") | head.starts_with("HTTP/1.1 200")
            {
                return serde_json::from_str(body).expect("report JSON");
            }
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "exited without serving its report"
        );
        assert!(Instant::now() < deadline, "no report within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the exit; the report was read, so well before the hold time is over.
fn exit_code(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().expect("exit code");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still holding its report after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_check_serves_its_verdict_until_read_then_exits_with_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("termination-log");
    let log_arg = log.display().to_string();

    // Refused: exit 2, the refusal naming spec.sql.
    let bad = manifest(dir.path(), "DROP TABLE events");
    let port = free_port();
    let mut child = spawn(
        &[
            "check",
            &bad.display().to_string(),
            "--termination-log",
            &log_arg,
        ],
        port,
        "300",
        &log,
    );
    let report = read_report(port, &mut child);
    assert_eq!(report.exit_code, 2);
    match serde_json::from_str::<CheckOutcomeReport>(&report.message).expect("verdict") {
        CheckOutcomeReport::Refused { message } => {
            assert!(message.contains("spec.sql"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(exit_code(&mut child, Duration::from_secs(20)), 2);

    // Valid: exit 0, the check report.
    let good = manifest(dir.path(), "SELECT id FROM events WHERE id > 1");
    let port = free_port();
    let mut child = spawn(
        &[
            "check",
            &good.display().to_string(),
            "--termination-log",
            &log_arg,
        ],
        port,
        "300",
        &log,
    );
    let report = read_report(port, &mut child);
    assert_eq!(report.exit_code, 0);
    assert!(
        matches!(
            serde_json::from_str::<CheckOutcomeReport>(&report.message).expect("verdict"),
            CheckOutcomeReport::Valid { .. }
        ),
        "{}",
        report.message
    );
    assert_eq!(exit_code(&mut child, Duration::from_secs(20)), 0);
}

#[test]
fn a_one_shot_run_serves_its_batch_range_and_an_unread_report_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("termination-log");
    let query = manifest(dir.path(), "SELECT id FROM events WHERE id > 1");
    let port = free_port();
    let mut child = spawn(
        &[
            "run",
            &query.display().to_string(),
            "--termination-log",
            &log.display().to_string(),
        ],
        port,
        "300",
        &log,
    );
    let report = read_report(port, &mut child);
    assert_eq!(report.exit_code, 0);
    assert_eq!(
        RunReport::find(&report.message),
        Some(RunReport {
            first_batch_id: Some(0),
            last_batch_id: Some(0),
            rows: 2
        }),
        "{}",
        report.message
    );
    assert_eq!(exit_code(&mut child, Duration::from_secs(20)), 0);

    // Nobody reads: the worker exits once the hold time is over.
    let again = manifest(dir.path(), "SELECT id FROM events");
    let mut child = spawn(
        &["run", &again.display().to_string()],
        free_port(),
        "2",
        &log,
    );
    assert_eq!(exit_code(&mut child, Duration::from_secs(60)), 0);
}
