//! The worker's built-in page, rendered by headless Chromium against a running worker: the charts
//! hold the right series with one point per trigger, the batch table lists the batches, and a
//! screenshot is kept as a test artifact (`$CARGO_TARGET_TMPDIR/worker-page.png`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<String> {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return Some(candidate.to_string());
        }
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "chromium is not installed but SLUICE_REQUIRE_SERVERS=1 (e2e/servers/install.sh installs it)"
    );
    eprintln!("SKIPPED worker page test: no chromium (apt-get install chromium)");
    None
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn run_chromium(binary: &str, profile: &std::path::Path, extra: &[&str], url: &str) -> String {
    let output = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `attribute` on the element with `id` in a serialized DOM.
fn attribute(dom: &str, id: &str, attribute: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let tag_start = dom[..at].rfind('<').expect("tag start");
    let tag_end = at + dom[at..].find('>').expect("tag end");
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attribute}=\"");
    let from = tag
        .find(&key)
        .unwrap_or_else(|| panic!("#{id} has no {attribute}: {tag}"))
        + key.len();
    tag[from..from + tag[from..].find('"').expect("quote")].to_string()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn page_charts_the_recent_batches() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let manifest = dir.path().join("q.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: page-demo}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: deviceId, type: string}}, {{name: temperature, type: double}}, {{name: danger_level, type: string}}, {{name: timestamp, type: timestamp}}]
  sql: SELECT * FROM events WHERE danger_level = 'HIGH'
  sink: {{file: {{path: "{}", format: parquet}}}}
  trigger: {{processingTime: 100ms}}
  checkpoint: {{location: "{}"}}
"#,
            input.display(),
            dir.path().join("out").display(),
            dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args([
            "run",
            manifest.to_str().expect("utf8"),
            "--http",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let worker = Worker(child);
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "worker exited early"
        );
        if let Some(rest) = line
            .trim()
            .strip_prefix("serving /metrics /progress /healthz /stop on http://127.0.0.1:")
        {
            break rest.parse().expect("port");
        }
    };
    std::thread::spawn(move || for _ in stderr.lines() {});

    // Three files, three triggers.
    for seed in 0..3 {
        sluice_bench::write_json_files(&input.join(format!("part{seed}")), seed, 1, 2_000)
            .expect("generate");
        let started = Instant::now();
        loop {
            let progress: serde_json::Value =
                serde_json::from_str(&http_get(port, "/progress")).expect("json");
            if progress["recent"].as_array().map(Vec::len).unwrap_or(0) > seed as usize {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no batch for file {seed}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let url = format!("http://127.0.0.1:{port}/");
    let profile = dir.path().join("chromium-profile");
    let dom = run_chromium(&chromium, &profile, &["--dump-dom"], &url);
    assert_eq!(
        attribute(&dom, "chart-throughput", "data-series"),
        "input rows/s,processed rows/s"
    );
    assert_eq!(attribute(&dom, "chart-throughput", "data-points"), "3");
    assert_eq!(
        attribute(&dom, "chart-duration", "data-series"),
        "walCommit,getBatch (read),process,addBatch (sink),commit"
    );
    assert_eq!(attribute(&dom, "chart-state", "data-series"), "state rows");
    assert_eq!(
        attribute(&dom, "chart-dropped", "data-series"),
        "bad records,late rows dropped"
    );
    for batch in 0..3 {
        assert!(
            dom.contains(&format!("data-batch=\"{batch}\"")),
            "batch {batch} in the table"
        );
    }
    assert!(
        dom.contains("Sluice query page-demo"),
        "title names the query"
    );

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("worker-page.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &chromium,
        &profile,
        &[&format!("--screenshot={}", screenshot.display())],
        &url,
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(worker);
}
