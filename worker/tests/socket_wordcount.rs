//! Word count over a socket source with the worker binary and the console sink: per micro-batch
//! (DStream style) each batch prints that batch's counts; the stateful example (complete mode,
//! every 5 s) prints the running totals.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Reads stdout lines until a table for `batch` is complete; returns its `| word | n |` rows.
fn read_batch(lines: &mpsc::Receiver<String>, batch: u64) -> Vec<(String, i64)> {
    let header = format!("Batch: {batch} (task 0)");
    let mut in_batch = false;
    let mut rows = Vec::new();
    let mut borders = 0;
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("console output");
        if line == header {
            in_batch = true;
            continue;
        }
        if !in_batch {
            continue;
        }
        if line.starts_with("+-") {
            borders += 1;
            if borders == 3 {
                return rows;
            }
            continue;
        }
        if borders == 2 && line.starts_with('|') {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            rows.push((cells[0].to_string(), cells[1].parse().expect("count")));
        }
    }
}

/// The example manifest `name` on a free port with its checkpoint in `dir`, started; returns
/// the worker, the socket it connected to, and its stdout lines.
fn start_example(
    name: &str,
    dir: &std::path::Path,
) -> (
    std::process::Child,
    std::net::TcpStream,
    mpsc::Receiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let manifest = dir.join(name);
    std::fs::write(
        &manifest,
        std::fs::read_to_string(format!(
            "{}/../manifests/examples/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("example")
        .replace("port: 9999", &format!("port: {port}"))
        .replace(
            "checkpoint: {retention: Retain}",
            &format!("checkpoint: {{location: {}}}", dir.join("ckpt").display()),
        ),
    )
    .expect("write manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .arg("run")
        .arg(&manifest)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (server, _) = listener.accept().expect("worker connects");
    (child, server, rx)
}

fn stop(mut child: std::process::Child) {
    // SIGTERM stops it at a batch boundary with exit 0.
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn each_batch_prints_its_own_word_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, mut server, rx) = start_example("wordcount-socket.yaml", dir.path());
    server.write_all(b"the cat saw the dog\n").expect("write");
    server.flush().expect("flush");
    assert_eq!(
        read_batch(&rx, 0),
        vec![
            ("cat".into(), 1),
            ("dog".into(), 1),
            ("saw".into(), 1),
            ("the".into(), 2)
        ]
    );
    server.write_all(b"dog dog bird\n").expect("write");
    server.flush().expect("flush");
    assert_eq!(
        read_batch(&rx, 1),
        vec![("bird".into(), 1), ("dog".into(), 2)],
        "counts of batch 1 alone"
    );
    stop(child);
}

#[test]
fn the_stateful_example_prints_running_totals_every_five_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, mut server, rx) = start_example("wordcount-socket-totals.yaml", dir.path());
    server
        .write_all(b"the cat saw the dog\nsupercalifragilisticexpialidocious\n")
        .expect("write");
    server.flush().expect("flush");
    let started = std::time::Instant::now();
    assert_eq!(
        read_batch(&rx, 0),
        vec![
            ("cat".into(), 1),
            ("dog".into(), 1),
            ("saw".into(), 1),
            // The console sink cuts cells over 20 characters (truncate, Spark's default).
            ("supercalifragilis...".into(), 1),
            ("the".into(), 2)
        ]
    );
    server.write_all(b"dog dog bird\n").expect("write");
    server.flush().expect("flush");
    assert_eq!(
        read_batch(&rx, 1),
        vec![
            ("bird".into(), 1),
            ("cat".into(), 1),
            ("dog".into(), 3),
            ("saw".into(), 1),
            ("supercalifragilis...".into(), 1),
            ("the".into(), 2)
        ],
        "batch 1 prints the whole table: totals over both batches"
    );
    // Batches start 5 s apart (processingTime).
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    stop(child);
}
