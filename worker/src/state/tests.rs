use std::collections::BTreeMap;

use super::*;
use crate::storage::Location;
use arrow::array::StringArray;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, true),
        Field::new("count(*)[count]", DataType::Int64, false),
    ]))
}

/// One batch: upserted (word, count) rows and deleted words.
type BatchChanges<'a> = (&'a [(&'a str, i64)], &'a [&'a str]);

fn delta(store: &StateStore, rows: &[(&str, i64)], deletes: &[&str], watermark: i64) -> StateDelta {
    let words: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
    ));
    let keys = store.keys(&[words], rows.len()).expect("keys");
    let deleted: ArrayRef = Arc::new(StringArray::from(deletes.to_vec()));
    StateDelta {
        upserts: keys
            .into_iter()
            .zip(rows)
            .map(|(k, (w, n))| {
                let entry = store
                    .entry_of(&[ScalarValue::from(*w), ScalarValue::Int64(Some(*n))])
                    .expect("entry");
                (k, entry)
            })
            .collect(),
        deletes: store.keys(&[deleted], deletes.len()).expect("keys"),
        event_time: EventTimeState {
            watermark_ms: Some(watermark),
            used_watermark_ms: Some(watermark - 1),
            max_event_ms: BTreeMap::from([("words".to_string(), watermark + 10)]),
        },
    }
}

fn contents(store: &StateStore) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = store
        .iter()
        .map(|(_, entry)| {
            let row = store.scalars(entry).expect("scalars");
            let ScalarValue::Utf8(Some(w)) = &row[0] else {
                panic!("word")
            };
            let ScalarValue::Int64(Some(n)) = &row[1] else {
                panic!("count")
            };
            (w.clone(), *n)
        })
        .collect();
    out.sort();
    out
}

/// Deltas after a snapshot restore exactly the state as of the asked batch, never a later one.
#[tokio::test]
async fn restore_applies_snapshot_then_deltas_up_to_the_committed_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint =
        Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
    let mut store = StateStore::new(schema(), 1, None).expect("store");
    let batches: Vec<BatchChanges> = vec![
        (&[("cat", 1), ("dog", 2)], &[]),
        (&[("cat", 3)], &[]),
        (&[("owl", 1)], &["dog"]),
        (&[("eel", 5)], &[]),
    ];
    for (id, (rows, deletes)) in batches.iter().enumerate() {
        let d = delta(&store, rows, deletes, id as i64 * 100);
        store
            .write(&checkpoint, 0, id as u64, &d)
            .await
            .expect("write");
        store.apply(d);
    }
    let names = checkpoint.list_names("tasks/0/state").await.expect("list");
    assert!(names.iter().any(|n| n.ends_with(".snapshot.arrow")));
    assert_eq!(names.len(), 4);

    let mut restored = StateStore::new(schema(), 1, None).expect("store");
    restored
        .restore(&checkpoint, 0, Some(2))
        .await
        .expect("restore");
    assert_eq!(
        contents(&restored),
        vec![("cat".into(), 3), ("owl".into(), 1)]
    );
    assert_eq!(restored.event_time.watermark_ms, Some(200));
    assert_eq!(restored.event_time.max_event_ms["words"], 210);
    restored
        .restore(&checkpoint, 0, Some(3))
        .await
        .expect("restore");
    assert_eq!(contents(&restored), contents(&store));
    restored
        .restore(&checkpoint, 0, None)
        .await
        .expect("restore");
    assert!(restored.is_empty());
}

#[test]
fn prunable_state_files_keep_the_newest_snapshot_at_or_below_the_cut_and_everything_after() {
    let names: Vec<String> = [
        "00000000000000000000.snapshot.arrow",
        "00000000000000000001.delta.arrow",
        "00000000000000000009.delta.arrow",
        "00000000000000000010.snapshot.arrow",
        "00000000000000000011.delta.arrow",
        "00000000000000000020.snapshot.arrow",
        "00000000000000000021.delta.arrow",
        "unrelated.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Cut at 15: a restore needs snapshot 10 (or 20) and the deltas after it.
    assert_eq!(
        prunable_state_files(&names, 15),
        names[..3].to_vec(),
        "files older than snapshot 10"
    );
    // Cut at 20: snapshot 20 is the floor.
    assert_eq!(prunable_state_files(&names, 20), names[..5].to_vec());
    // No snapshot at or below the cut: nothing can go.
    assert!(prunable_state_files(&names[1..3], 5).is_empty());
}

/// A store over `word` keys with `max_parallelism` key groups, keyed by the word.
fn keyed_store(max_parallelism: u32) -> StateStore {
    let mut store = StateStore::new(schema(), 1, None).expect("store");
    store
        .set_key_groups(vec![0], max_parallelism)
        .expect("key groups");
    store
}

/// A restore asked for a key-group range loads exactly the groups of that range (upserts and
/// deletes), and the ranges of a split together hold the whole state.
#[tokio::test]
async fn restore_range_loads_exactly_the_key_groups_of_a_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint =
        Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
    let mut store = keyed_store(8);
    let words = [
        "cat", "dog", "owl", "eel", "ant", "bee", "cow", "elk", "fox", "gnu", "hen", "yak",
    ];
    let first: Vec<(&str, i64)> = words.iter().map(|w| (*w, 1)).collect();
    let batches: Vec<BatchChanges> = vec![(&first, &[]), (&[("cat", 2), ("yak", 5)], &["dog"])];
    for (id, (rows, deletes)) in batches.iter().enumerate() {
        let d = delta(&store, rows, deletes, id as i64 * 100);
        store
            .write(&checkpoint, 0, id as u64, &d)
            .await
            .expect("write");
        store.apply(d);
    }
    let whole = contents(&store);
    let mut union = Vec::new();
    for task in 0..3 {
        let range = key_group::range_for_task(8, 3, task).expect("range");
        let mut part = keyed_store(8);
        part.restore_range(&checkpoint, 0, Some(1), Some(range))
            .await
            .expect("restore range");
        assert!(
            part.iter().all(|(_, e)| range.contains(e.key_group)),
            "task {task} holds only key groups {range}"
        );
        // Each group's key group is the hash of its word.
        for (_, entry) in part.iter() {
            let word = part.scalars(entry).expect("scalars")[0]
                .to_array()
                .expect("array");
            let expected = key_group::key_groups(&[word], 1, 8).expect("group");
            assert_eq!(vec![entry.key_group], expected);
        }
        union.extend(contents(&part));
    }
    union.sort();
    assert_eq!(union, whole);
    assert!(!whole.iter().any(|(w, _)| w == "dog"), "the delete applied");
    assert_eq!(whole.len(), 11);
}

/// State files record the number of key groups; a store with another number refuses them.
#[tokio::test]
async fn a_state_file_of_another_max_parallelism_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint =
        Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("loc"));
    let store = keyed_store(128);
    let d = delta(&store, &[("cat", 1)], &[], 0);
    store.write(&checkpoint, 0, 0, &d).await.expect("write");
    let mut other = keyed_store(64);
    let err = other
        .restore(&checkpoint, 0, Some(0))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("maxParallelism 128, the query now has 64"),
        "{err}"
    );
}
