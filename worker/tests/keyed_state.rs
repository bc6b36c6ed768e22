//! State in key groups, end to end through the engine:
//!
//! - a checkpoint written before key groups existed (`tests/data/checkpoint-v0`: a windowed count
//!   per device, update mode, 3 files in 4 batches, written by the previous release; the test now
//!   writes into a memory sink, as the file sink takes no update mode) still starts,
//!   its state continues exactly, and the new state files carry each group's key group;
//! - once state files record `maxParallelism`, a restart with another value is refused by name;
//! - a new checkpoint records `maxParallelism` in `metadata.json` and refuses a change of it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, StructArray, UInt16Array};
use arrow::datatypes::DataType;
use sluice_worker::key_group::key_groups;
use sluice_worker::{Engine, QueryConfig, Shared};

const SQL: &str = "SELECT window(ts, '1 minute') AS window, deviceId, count(*) AS n FROM events GROUP BY window(ts, '1 minute'), deviceId";

fn manifest(dir: &Path, max_parallelism: Option<u32>) -> String {
    let parallelism = max_parallelism
        .map(|m| format!("  parallelism: {{maxParallelism: {m}}}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: v0}}
spec:
  sources:
    - name: events
      file: {{path: "{input}", format: json, maxFilesPerTrigger: 1, partitions: 1}}
      schema:
        - {{name: deviceId, type: string}}
        - {{name: ts, type: timestamp}}
      watermark: {{column: ts, delay: 1 hour}}
  sql: "{SQL}"
  outputMode: update
  sink:
    memory: {{name: "{sink}"}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{checkpoint}"}}
{parallelism}"#,
        input = dir.join("input").display(),
        sink = sink_name(dir),
        checkpoint = dir.join("checkpoint").display(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

async fn start(dir: &Path, max_parallelism: Option<u32>) -> sluice_worker::Result<Engine> {
    let query = sluice_crds::parse_manifest(&manifest(dir, max_parallelism)).expect("manifest");
    Engine::start(QueryConfig::local(query), Shared::new()).await
}

/// The memory sink of the test in `dir` (update mode: the file sink takes append or complete only).
fn sink_name(dir: &Path) -> String {
    format!(
        "keyed-state-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("q")
    )
}

/// (window start, deviceId, n) of every output row of batch `batch_id`.
async fn output_of_batch(dir: &Path, batch_id: u64) -> BTreeSet<(String, String, i64)> {
    let mut rows = BTreeSet::new();
    for ((_, batch), batches) in sluice_worker::sink::memory::read_table(&sink_name(dir)) {
        if batch != batch_id {
            continue;
        }
        for batch in batches {
            let windows = batch
                .column_by_name("window")
                .and_then(|c| c.as_any().downcast_ref::<StructArray>())
                .expect("window")
                .clone();
            let starts = arrow::compute::cast(windows.column(0), &DataType::Utf8).expect("cast");
            let starts = starts.as_any().downcast_ref::<StringArray>().expect("utf8");
            let devices = batch
                .column_by_name("deviceId")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("deviceId");
            let counts = batch
                .column_by_name("n")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .expect("n");
            for r in 0..batch.num_rows() {
                rows.insert((
                    starts.value(r).to_string(),
                    devices.value(r).to_string(),
                    counts.value(r),
                ));
            }
        }
    }
    rows
}

#[tokio::test]
async fn a_checkpoint_from_before_key_groups_still_starts_and_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint-v0");
    copy_dir(&fixture.join("checkpoint"), &dir.path().join("checkpoint"));
    copy_dir(&fixture.join("input"), &dir.path().join("input"));
    std::fs::write(
        dir.path().join("input/part-4.json"),
        "{\"deviceId\":\"a\",\"ts\":\"2026-01-01T00:00:40Z\"}\n{\"deviceId\":\"d\",\"ts\":\"2026-01-01T00:01:30Z\"}\n",
    )
    .expect("write input");

    let summary = start(dir.path(), None)
        .await
        .expect("start on the old checkpoint")
        .run(|_| {})
        .await
        .expect("run");
    assert_eq!(
        summary.first_batch_id,
        Some(4),
        "batches 0..=3 were committed"
    );
    assert_eq!(summary.input_rows, 2, "only the new file is read");
    // Update mode: device a's first window had 2 rows in the old state, now 3.
    assert_eq!(
        output_of_batch(dir.path(), 4).await,
        BTreeSet::from([
            ("2026-01-01T00:00:00Z".to_string(), "a".to_string(), 3),
            ("2026-01-01T00:01:00Z".to_string(), "d".to_string(), 1),
        ])
    );

    // The new delta carries each group's key group (hash of deviceId, not of the window).
    let body = std::fs::read(
        dir.path()
            .join("checkpoint/tasks/0/state/00000000000000000004.delta.arrow"),
    )
    .expect("state file");
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(body), None)
        .expect("arrow file");
    assert_eq!(
        reader.schema().metadata().get("sluice.maxParallelism"),
        Some(&"128".to_string())
    );
    for batch in reader {
        let batch = batch.expect("batch");
        let devices: ArrayRef = Arc::clone(batch.column_by_name("deviceId").expect("deviceId"));
        let stored = batch
            .column_by_name("__sluice_key_group")
            .and_then(|c| c.as_any().downcast_ref::<UInt16Array>())
            .expect("key group column")
            .values()
            .to_vec();
        assert_eq!(
            stored,
            key_groups(&[devices], batch.num_rows(), 128).expect("key groups")
        );
    }
    let metadata =
        std::fs::read_to_string(dir.path().join("checkpoint/metadata.json")).expect("metadata");
    assert!(
        !metadata.contains("maxParallelism"),
        "an existing metadata.json is not rewritten: {metadata}"
    );

    // The state now records 128 key groups: another count is refused, naming the field.
    std::fs::write(
        dir.path().join("input/part-5.json"),
        "{\"deviceId\":\"a\",\"ts\":\"2026-01-01T00:00:45Z\"}\n",
    )
    .expect("write input");
    let err = start(dir.path(), Some(64))
        .await
        .err()
        .expect("a changed maxParallelism is refused")
        .to_string();
    assert!(
        err.contains("maxParallelism 128, the query now has 64")
            && err.contains("fixed for the life of a checkpoint"),
        "{err}"
    );
    // With the recorded value it continues: a's first window reaches 4.
    let summary = start(dir.path(), Some(128))
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run");
    let first = summary.first_batch_id.expect("a batch ran");
    assert_eq!(
        output_of_batch(dir.path(), first).await,
        BTreeSet::from([("2026-01-01T00:00:00Z".to_string(), "a".to_string(), 4)])
    );
}

#[tokio::test]
async fn a_new_checkpoint_fixes_max_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint-v0");
    copy_dir(&fixture.join("input"), &dir.path().join("input"));
    start(dir.path(), Some(256))
        .await
        .expect("start")
        .run(|_| {})
        .await
        .expect("run");
    let metadata =
        std::fs::read_to_string(dir.path().join("checkpoint/metadata.json")).expect("metadata");
    assert!(metadata.contains("\"maxParallelism\": 256"), "{metadata}");
    let err = start(dir.path(), None)
        .await
        .err()
        .expect("the default (128) differs from the checkpoint's 256")
        .to_string();
    assert!(
        err.contains(
            "spec.parallelism.maxParallelism is 128 but the checkpoint was created with 256"
        ),
        "{err}"
    );
}
