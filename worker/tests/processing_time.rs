//! A running query with a processingTime trigger picks up files added after it started, in later
//! batches, and stops at a batch boundary when asked.

mod common;

use std::time::Duration;

use sluice_worker::sink::memory::read_table;
use sluice_worker::{Engine, QueryConfig, Shared};

#[tokio::test]
async fn files_added_while_running_are_processed_in_later_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.json"), "{\"id\":\"a\"}\n").expect("write");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: live}}
spec:
  sources:
    - name: events
      file: {{path: "{}", format: json, partitions: 1}}
      schema: [{{name: id, type: string}}]
  sql: SELECT id FROM events
  sink: {{memory: {{name: live}}}}
  trigger: {{processingTime: 100ms}}
  checkpoint: {{location: "{}"}}
"#,
        input.display(),
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let shared = Shared::new();
    let engine = Engine::start(QueryConfig::local(query), shared.clone())
        .await
        .expect("start");
    let running = tokio::spawn(engine.run(|_| {}));

    let wait_for = |batches: usize| async move {
        for _ in 0..100 {
            if read_table("live").len() >= batches {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {batches} batches, have {:?}",
            read_table("live").keys().collect::<Vec<_>>()
        );
    };
    wait_for(1).await;
    std::fs::write(input.join("b.json"), "{\"id\":\"b\"}\n{\"id\":\"c\"}\n").expect("write");
    wait_for(2).await;
    std::fs::write(input.join("d.json"), "{\"id\":\"d\"}\n").expect("write");
    wait_for(3).await;

    shared.stop.request();
    let summary = running.await.expect("join").expect("run");
    assert_eq!(summary.input_rows, 4);
    let table = read_table("live");
    let rows: Vec<usize> = table
        .values()
        .map(|b| b.iter().map(|b| b.num_rows()).sum())
        .collect();
    assert_eq!(
        table.keys().copied().collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (0, 2)]
    );
    assert_eq!(rows, vec![1, 2, 1], "each file in its own later batch");
}
