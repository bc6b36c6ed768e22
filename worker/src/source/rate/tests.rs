use super::*;

#[tokio::test]
async fn rows_are_a_function_of_offsets_and_split_by_partition() {
    let source = RateSource::new(
        "r",
        &RateSourceSpec {
            rows_per_second: 10,
            partitions: 2,
        },
    );
    let range = serde_json::json!({"startMs": 1_000, "start": 0, "end": 3});
    let mut task1 = source.open(1, &[]).await.expect("open");
    let out = task1.read(&range).await.expect("read");
    let batch = &out.batches[0];
    let values = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64");
    assert_eq!(values.values().to_vec(), vec![1, 3, 5]);
    let times = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("ts");
    // 10 rows/s: row v is at start + v * 100 ms.
    assert_eq!(
        times.values().to_vec(),
        vec![1_100_000, 1_300_000, 1_500_000]
    );
    // Reading the same range again gives the same rows.
    let again = task1.read(&range).await.expect("read");
    assert_eq!(&again.batches[0], batch);
}

#[tokio::test]
async fn plan_continues_after_the_logged_range() {
    let source = RateSource::new(
        "r",
        &RateSourceSpec {
            rows_per_second: 1_000_000,
            partitions: 1,
        },
    );
    let logged = serde_json::json!({"startMs": now_ms() - 1_000, "start": 0, "end": 500});
    let mut task = source.open(0, &[logged]).await.expect("open");
    let next: RateRange = serde_json::from_value(
        task.plan(PlanLimit::PerTrigger)
            .await
            .expect("plan")
            .expect("rows"),
    )
    .expect("range");
    assert_eq!(next.start, 500);
    assert!(
        next.end >= 1_000_000,
        "a second at 1M rows/s has passed: {next:?}"
    );
}
