use std::collections::BTreeMap;

use super::*;

fn sink(yaml: &str) -> SinkSpec {
    serde_saphyr::from_str(yaml).expect("sink")
}

fn memory() -> SinkSpec {
    sink("memory: {name: restore-unit}")
}

/// A stateless one-task checkpoint with batches 0..=last planned, 0..=committed committed, each
/// writing `rows` rows.
async fn checkpoint(dir: &std::path::Path, last: u64, committed: u64, rows: u64) -> Generations {
    let base = Location::parse(dir.to_str().expect("utf8")).expect("loc");
    let root = Checkpoint::new(base.clone());
    root.open_metadata(CheckpointMetadata {
        query_id: "old-run".into(),
        partitions: BTreeMap::from([("events".to_string(), 1)]),
        created_ms: 0,
        stateful_operators: None,
        max_parallelism: None,
    })
    .await
    .expect("metadata");
    for batch_id in 0..=last {
        root.write_offsets(
            0,
            &OffsetsEntry {
                batch_id,
                planned_ms: batch_id as i64,
                sources: BTreeMap::from([(
                    "events".to_string(),
                    serde_json::json!({"start": batch_id * 10, "end": batch_id * 10 + 10}),
                )]),
                epoch: None,
            },
        )
        .await
        .expect("offsets");
        if batch_id <= committed {
            root.write_sink_record(0, batch_id, rows, None)
                .await
                .expect("sink record");
            root.write_commit(
                0,
                &CommitEntry {
                    batch_id,
                    committed_ms: batch_id as i64,
                    input_rows: 10,
                    output_rows: rows,
                    epoch: None,
                    quarantined: None,
                    exchange: None,
                },
            )
            .await
            .expect("commit");
        }
    }
    root.put(
        "tasks/0/epochs/00000000000000000000-00000000000000000001-x",
        b"{}".to_vec(),
    )
    .await
    .expect("epoch");
    Generations::new(base)
}

fn refused(result: Result<RestoreOutcome>) -> String {
    match result {
        Err(EngineError::RestoreRefused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn restore_writes_a_generation_up_to_the_batch_and_the_worker_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generations = checkpoint(dir.path(), 5, 4, 3).await;
    let outcome = restore(&generations, &memory(), 2).await.expect("restore");
    assert_eq!(
        (outcome.generation, outcome.from_generation, outcome.created),
        (1, 0, true)
    );
    assert_eq!(
        outcome.rows_replayed, 6,
        "batches 3 and 4 wrote 3 rows each"
    );

    // What a worker opens is the new generation: its log ends at batch 2, committed.
    let opened = crate::checkpoint::generation::open_current(generations.base().clone())
        .await
        .expect("open");
    assert!(
        opened.location().url.ends_with("/restores/1"),
        "{}",
        opened.location().url
    );
    let log = opened.read_task_log(0).await.expect("log");
    assert_eq!(log.last_committed, Some(2));
    assert_eq!(log.uncommitted(), None);
    assert_eq!(log.next_batch_id(), 3);
    assert_eq!(
        log.ranges("events").last(),
        Some(&serde_json::json!({"start": 20, "end": 30}))
    );
    assert!(
        opened
            .list_names("tasks/0/epochs")
            .await
            .expect("epochs")
            .is_empty()
    );
    assert_eq!(opened.read_sink_record(0, 3).await.expect("sink"), None);
    let metadata = opened.stored_metadata().await.expect("meta").expect("some");
    assert_ne!(
        metadata.query_id, "old-run",
        "a new query id: sinks write the replay again"
    );
    // The old generation is untouched.
    let old = generations
        .checkpoint(0)
        .read_task_log(0)
        .await
        .expect("old log");
    assert_eq!((old.last_committed, old.next_batch_id()), (Some(4), 6));

    // The same restore again changes nothing; the listing says where the generation came from.
    let again = restore(&generations, &memory(), 2).await.expect("again");
    assert_eq!((again.generation, again.created), (1, false));
    assert_eq!(generations.restored().await.expect("list"), vec![1]);
    let listing = list(&generations).await.expect("list");
    assert_eq!(listing.generation, 1);
    assert_eq!(
        listing
            .restored_from
            .map(|r| (r.from_generation, r.batch_id)),
        Some((0, 2))
    );
    let ids: Vec<u64> = listing.tasks[0]
        .batches
        .iter()
        .map(|b| b.batch_id)
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(
        listing.tasks[0].batches[2].offsets["events"],
        r#"{"end":30,"start":20}"#
    );

    // A restore from the restored generation makes generation 2 from generation 1.
    let second = restore(&generations, &memory(), 1).await.expect("second");
    assert_eq!((second.generation, second.from_generation), (2, 1));
}

#[tokio::test]
async fn a_batch_not_retained_or_not_committed_is_refused_with_the_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generations = checkpoint(dir.path(), 5, 4, 0).await;
    let reason = refused(restore(&generations, &memory(), 9).await);
    assert_eq!(
        reason,
        "batch 9 is not retained: task 0 retains batches 0..=4 (spec.checkpoint.minBatchesToRetain)"
    );
    let reason = refused(restore(&generations, &memory(), 5).await);
    assert_eq!(
        reason,
        "batch 5 is not committed: task 0 retains batches 0..=4"
    );
    assert_eq!(
        generations.current().await.expect("current"),
        0,
        "nothing switched"
    );
    assert!(generations.restored().await.expect("restored").is_empty());
}

#[tokio::test]
async fn appending_sinks_are_refused_when_later_batches_wrote_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generations = checkpoint(dir.path(), 4, 4, 2).await;
    let insert =
        sink("postgres: {connection: {host: h, database: d, user: u}, table: t, mode: insert}");
    let reason = refused(restore(&generations, &insert, 2).await);
    assert!(
        reason.contains("mode insert") && reason.contains("4 rows"),
        "{reason}"
    );
    // The last batch: nothing to replay, any sink may.
    let outcome = restore(&generations, &insert, 4).await.expect("last batch");
    assert_eq!(outcome.rows_replayed, 0);
}

#[test]
fn only_the_log_state_and_bad_records_up_to_the_batch_carry_over() {
    assert!(carried_over("tasks/0/offsets/00000000000000000003", 3));
    assert!(!carried_over("tasks/0/offsets/00000000000000000004", 3));
    assert!(carried_over(
        "tasks/2/state/00000000000000000000.snapshot.arrow",
        3
    ));
    assert!(!carried_over(
        "tasks/2/state/00000000000000000004.delta.arrow",
        3
    ));
    assert!(carried_over(
        "bad-records/events/task-0/batch-00000000000000000001.jsonl",
        3
    ));
    assert!(!carried_over("tasks/0/epochs/x", 3));
    assert!(!carried_over("tasks/0/attempts/00000000000000000001", 3));
    assert!(!carried_over("metadata.json", 3));
}
