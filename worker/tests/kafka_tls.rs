//! Kafka over TLS for real: the test broker behind a TLS-terminating proxy (`e2e/servers`,
//! `SLUICE_TEST_KAFKA_TLS`) with a throwaway CA. A query reads a topic and writes another through
//! librdkafka's TLS with certificate verification; the same query with an unrelated CA is refused
//! with librdkafka's verification error; a secret given through `secretOptions` appears in no
//! output of the run (stdout, stderr, checkpoint files).

mod common;

use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const SECRET: &str = "s3cr3t-Kafka-pa55-9d1f0c";

fn tls(bootstrap: &str, ca: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca);
    config
}

fn manifest(
    dir: &Path,
    bootstrap: &str,
    ca: &str,
    input: &str,
    output: &str,
) -> std::path::PathBuf {
    let options = |indent: &str| {
        format!(
            "options: {{security.protocol: ssl, ssl.ca.location: \"{ca}\", \
             ssl.endpoint.identification.algorithm: https}}\n{indent}\
             secretOptions: {{ssl.key.password: {{env: SLUICE_TEST_KAFKA_SECRET}}}}"
        )
    };
    let (source_options, sink_options) = (options("        "), options("      "));
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: kafka-tls}}
spec:
  sources:
    - name: events
      kafka:
        bootstrapServers: "{bootstrap}"
        topic: {input}
        format: json
        {source_options}
      schema: [{{name: id, type: long}}, {{name: name, type: string}}]
  sql: SELECT id * 10 AS id, upper(name) AS name FROM events
  sink:
    kafka:
      bootstrapServers: "{bootstrap}"
      topic: {output}
      format: json
      {sink_options}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        dir.join("ckpt").display()
    );
    let path = dir.join("query.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn worker(command: &str, manifest: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .arg(command)
        .arg(manifest)
        .env("RUST_LOG", "info")
        .env("SLUICE_TEST_KAFKA_SECRET", SECRET)
        .output()
        .expect("run sluice-worker")
}

/// Every file under `dir`, as text (lossy).
fn files_under(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into(),
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_over_tls_works_a_wrong_ca_is_refused_and_secrets_stay_out_of_outputs() {
    let test = "query_over_tls_works_a_wrong_ca_is_refused_and_secrets_stay_out_of_outputs";
    let Some(bootstrap) = common::server_env("SLUICE_TEST_KAFKA_TLS", test) else {
        return;
    };
    let ca = std::env::var("SLUICE_TEST_TLS_CA").expect("SLUICE_TEST_TLS_CA");
    let wrong_ca = std::env::var("SLUICE_TEST_TLS_WRONG_CA").expect("SLUICE_TEST_TLS_WRONG_CA");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (input, output) = (format!("tls-in-{suffix}"), format!("tls-out-{suffix}"));

    let admin: AdminClient<DefaultClientContext> = tls(&bootstrap, &ca).create().expect("admin");
    for r in admin
        .create_topics(
            &[
                NewTopic::new(&input, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&output, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics over TLS")
    {
        r.expect("topic created");
    }
    let producer: FutureProducer = tls(&bootstrap, &ca).create().expect("producer");
    for line in [r#"{"id":1,"name":"a"}"#, r#"{"id":2,"name":"b"}"#] {
        producer
            .send(
                FutureRecord::<str, str>::to(&input).payload(line),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce over TLS");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let good = manifest(dir.path(), &bootstrap, &ca, &input, &output);
    let run = worker("run", &good);
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{stderr}");

    let consumer: BaseConsumer = tls(&bootstrap, &ca)
        .set("group.id", "sluice-tls-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&output]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while values.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let payload = message
                .payload()
                .map(|p| String::from_utf8_lossy(p).to_string());
            values.push(payload.unwrap_or_default());
        }
    }
    values.sort();
    assert_eq!(
        values,
        vec![r#"{"id":10,"name":"A"}"#, r#"{"id":20,"name":"B"}"#]
    );

    let mut outputs = vec![
        ("stdout".to_string(), stdout),
        ("stderr".to_string(), stderr),
    ];
    files_under(dir.path(), &mut outputs);
    for (name, text) in &outputs {
        assert!(!text.contains(SECRET), "the secret appears in {name}");
    }

    // A CA that did not sign the proxy's certificate: librdkafka's verification refuses it.
    let bad_dir = tempfile::tempdir().expect("tempdir");
    let bad = manifest(bad_dir.path(), &bootstrap, &wrong_ca, &input, &output);
    let check = worker("check", &bad);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        error.contains("last broker error") && error.contains("certificate verify failed"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}
