//! Stream–stream join: Spark's ad impressions and clicks example, row for row.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_crds::{OutputMode, SqlScope};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::sql::streaming_tests::refusal;
use crate::sql::{BatchQuery, SourceWatermark};
use crate::storage::Location;

const MINUTE: i64 = 60_000;

/// Spark's example: clicks within an hour after their impression.
const SQL: &str = "SELECT i.adId, i.ts AS impressionTime, c.ts AS clickTime \
     FROM impressions i JOIN clicks c \
     ON i.adId = c.adId AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("adId", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn inputs() -> Vec<(String, SchemaRef)> {
    vec![
        ("impressions".into(), schema()),
        ("clicks".into(), schema()),
    ]
}

fn watermarks(delay_minutes: i64) -> Vec<SourceWatermark> {
    ["impressions", "clicks"]
        .iter()
        .enumerate()
        .map(|(input, source)| SourceWatermark {
            input,
            source: (*source).into(),
            column: "ts".into(),
            delay_ms: delay_minutes * MINUTE,
        })
        .collect()
}

fn ms(hhmm: &str) -> i64 {
    let (h, m) = hhmm.split_once(':').expect("hh:mm");
    h.parse::<i64>().expect("h") * 60 * MINUTE + m.parse::<i64>().expect("m") * MINUTE
}

fn hhmm(ms: i64) -> String {
    format!("{:02}:{:02}", ms / (60 * MINUTE), (ms / MINUTE) % 60)
}

/// Rows `("a", "12:05")`.
fn rows(rows: &[(&str, &str)]) -> Vec<RecordBatch> {
    if rows.is_empty() {
        return Vec::new();
    }
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(
                    rows.iter().map(|(_, t)| ms(t)).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .expect("batch");
    vec![batch]
}

/// Output rows as `"a 12:00 12:50"`, sorted.
fn lines(out: &[RecordBatch]) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in out {
        let ads = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("adId");
        let time = |c: usize| {
            let ints = arrow::compute::cast(batch.column(c), &DataType::Int64).expect("i64");
            ints.as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .clone()
        };
        let (impressions, clicks) = (time(1), time(2));
        for r in 0..batch.num_rows() {
            lines.push(format!(
                "{} {} {}",
                ads.value(r),
                hhmm(impressions.value(r)),
                hhmm(clicks.value(r))
            ));
        }
    }
    lines.sort();
    lines
}

async fn query(
    sql: &str,
    mode: OutputMode,
    watermarks: Vec<SourceWatermark>,
) -> Result<BatchQuery> {
    BatchQuery::with_watermarks(sql, inputs(), SqlScope::Stream, mode, watermarks).await
}

async fn join_query() -> BatchQuery {
    query(SQL, OutputMode::Append, watermarks(60))
        .await
        .expect("plan")
}

/// Runs one batch and commits its state (as the task runner does).
async fn step(
    q: &mut BatchQuery,
    impressions: &[(&str, &str)],
    clicks: &[(&str, &str)],
) -> Vec<String> {
    let out = q
        .run(vec![rows(impressions), rows(clicks)])
        .await
        .expect("run");
    q.commit_state();
    lines(&out)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

type Batch<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)]);

/// Four batches where impressions and clicks arrive in different orders: a click before its
/// impression, an impression before its click, both in one batch, a click out of range.
const BATCHES: [Batch; 4] = [
    (&[("a", "12:00"), ("b", "12:05")], &[("b", "12:30")]),
    (&[], &[("a", "12:50"), ("a", "13:30"), ("c", "12:40")]),
    (&[("c", "12:10"), ("a", "12:45")], &[]),
    (&[], &[("b", "12:06"), ("b", "12:04")]),
];

const EXPECTED: [&str; 6] = [
    "a 12:00 12:50",
    "a 12:45 12:50",
    "a 12:45 13:30",
    "b 12:05 12:06",
    "b 12:05 12:30",
    "c 12:10 12:40",
];

/// Each matching (impression, click) pair is emitted once, in the batch where its second row
/// arrives, whichever side that is.
#[tokio::test]
async fn impressions_and_clicks_join_each_pair_once() {
    let mut q = join_query().await;
    let outs = [
        s(&["b 12:05 12:30"]),
        s(&["a 12:00 12:50"]),
        s(&["a 12:45 12:50", "a 12:45 13:30", "c 12:10 12:40"]),
        s(&["b 12:05 12:06"]),
    ];
    for ((impressions, clicks), expected) in BATCHES.iter().zip(outs) {
        assert_eq!(step(&mut q, impressions, clicks).await, expected);
    }
    let state = q.state_progress().expect("state");
    assert_eq!(state.state_rows, 10, "4 impressions and 6 clicks buffered");
    assert_eq!(state.late_rows_dropped, 0);
}

/// The other ways to write the range condition plan to the same join.
#[tokio::test]
async fn range_condition_as_comparisons_or_in_where() {
    for sql in [
        "SELECT i.adId, i.ts AS impressionTime, c.ts AS clickTime FROM impressions i JOIN clicks c \
         ON i.adId = c.adId AND c.ts >= i.ts AND c.ts <= i.ts + INTERVAL '1 hour'",
        "SELECT i.adId, i.ts, c.ts FROM impressions i, clicks c WHERE i.adId = c.adId \
         AND i.ts <= c.ts AND i.ts >= c.ts - INTERVAL '60 minutes'",
    ] {
        let mut q = query(sql, OutputMode::Append, watermarks(60))
            .await
            .expect("plan");
        let mut all = Vec::new();
        for (impressions, clicks) in BATCHES {
            all.extend(step(&mut q, impressions, clicks).await);
        }
        all.sort();
        assert_eq!(all, s(&EXPECTED), "{sql}");
        assert!(
            q.stateful_fingerprint()
                .expect("fingerprint")
                .contains("range(impressions.ts - clicks.ts in [-3600000 ms, 0 ms])"),
            "{:?}",
            q.stateful_fingerprint()
        );
    }
}

/// The same rows in one batch, in four, or one row per batch in event-time order: the same set.
#[tokio::test]
async fn one_batch_or_many_give_the_same_rows() {
    let mut one = join_query().await;
    let impressions: Vec<(&str, &str)> = BATCHES.iter().flat_map(|b| b.0.iter().copied()).collect();
    let clicks: Vec<(&str, &str)> = BATCHES.iter().flat_map(|b| b.1.iter().copied()).collect();
    assert_eq!(step(&mut one, &impressions, &clicks).await, s(&EXPECTED));

    let mut per_row = join_query().await;
    let mut arrivals: Vec<(bool, (&str, &str))> = impressions
        .iter()
        .map(|r| (true, *r))
        .chain(clicks.iter().map(|r| (false, *r)))
        .collect();
    arrivals.sort_by_key(|(_, (_, t))| ms(t));
    let mut all = Vec::new();
    for (is_impression, row) in arrivals {
        let (i, c): Batch = if is_impression {
            (&[row], &[])
        } else {
            (&[], &[row])
        };
        all.extend(step(&mut per_row, i, c).await);
    }
    all.sort();
    assert_eq!(all, s(&EXPECTED));
}

/// Once the watermark passes, buffered rows that no future row can match are evicted (a no-data
/// batch does it); rows at or below the watermark are dropped and counted, never joined.
#[tokio::test]
async fn state_is_evicted_by_the_watermark_and_late_rows_are_dropped() {
    let mut q = join_query().await;
    for (impressions, clicks) in BATCHES {
        step(&mut q, impressions, clicks).await;
    }
    assert_eq!(q.state_progress().expect("state").state_rows, 10);
    assert!(!q.wants_no_data_batch(), "the watermark did not move");

    // Watermark after this batch: min(15:00, 15:10) − 1 hour = 14:00.
    assert_eq!(
        step(&mut q, &[("z", "15:00")], &[("z", "15:10")]).await,
        s(&["z 15:00 15:10"])
    );
    let state = q.state_progress().expect("state");
    assert_eq!((state.state_rows, state.rows_updated), (12, 2));
    assert_eq!(state.watermark_ms, Some(ms("14:00")));

    // No-data batch: impressions up to 13:00 (+1 hour <= 14:00) and clicks up to 14:00 go.
    assert!(q.wants_no_data_batch());
    assert_eq!(step(&mut q, &[], &[]).await, Vec::<String>::new());
    let state = q.state_progress().expect("state");
    assert_eq!((state.state_rows, state.rows_removed), (2, 10));
    assert!(!q.wants_no_data_batch());

    // An impression at 13:59 is late (<= 14:00): it is not joined with the click at 14:30
    // it would match, and it is counted.
    assert_eq!(
        step(&mut q, &[("y", "13:59"), ("y", "14:00")], &[("y", "14:30")]).await,
        Vec::<String>::new()
    );
    let state = q.state_progress().expect("state");
    assert_eq!(state.late_rows_dropped, 2);
    assert_eq!(state.state_rows, 3);
}

/// State written before each commit and restored after a crash gives the uncrashed output, also
/// when the crash came after a batch ran but before it committed (the batch is replayed).
#[tokio::test]
async fn restored_state_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint =
        Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("location"));
    let mut q = join_query().await;
    for (id, (impressions, clicks)) in BATCHES[..2].iter().enumerate() {
        q.run(vec![rows(impressions), rows(clicks)])
            .await
            .expect("run");
        q.write_state(&checkpoint, 0, id as u64)
            .await
            .expect("write");
        q.commit_state();
    }
    // Batch 2 runs and writes its state, but the process dies before its commit entry.
    q.run(vec![rows(BATCHES[2].0), rows(BATCHES[2].1)])
        .await
        .expect("run");
    q.write_state(&checkpoint, 0, 2).await.expect("write");
    drop(q);

    let mut restarted = join_query().await;
    restarted
        .restore_state(&checkpoint, 0, Some(1))
        .await
        .expect("restore");
    assert_eq!(restarted.state_progress().expect("state").state_rows, 6);
    let mut all = Vec::new();
    for (impressions, clicks) in &BATCHES[2..] {
        all.extend(step(&mut restarted, impressions, clicks).await);
    }
    all.sort();
    assert_eq!(
        all,
        s(&[
            "a 12:45 12:50",
            "a 12:45 13:30",
            "b 12:05 12:06",
            "c 12:10 12:40"
        ])
    );
}

/// Joins of two streams that would need unbounded state, or outputs Spark does not allow, are
/// refused with the rule.
#[tokio::test]
async fn unbounded_or_unsupported_stream_joins_are_refused() {
    let no_clicks_watermark = watermarks(60)[..1].to_vec();
    let message = refusal(query(SQL, OutputMode::Append, no_clicks_watermark).await);
    assert!(message.contains("source `clicks` has none"), "{message}");

    let message = refusal(
        query(
            "SELECT * FROM impressions i JOIN clicks c ON i.adId = c.adId",
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(message.contains("event-time range condition"), "{message}");
    assert!(message.contains("no bound"), "{message}");

    let message = refusal(
        query(
            "SELECT * FROM impressions i JOIN clicks c ON i.adId = c.adId AND c.ts >= i.ts",
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(message.contains("only ts - ts <= 0 ms"), "{message}");

    let message = refusal(query(SQL, OutputMode::Update, watermarks(60)).await);
    assert!(message.contains("only outputMode `append`"), "{message}");

    let message = refusal(
        query(
            "SELECT i.adId, count(*) FROM impressions i JOIN clicks c ON i.adId = c.adId \
             AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour' GROUP BY i.adId",
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(
        message.contains("aggregation or DISTINCT after a join"),
        "{message}"
    );

    let message = refusal(
        query(
            "SELECT * FROM impressions i LEFT JOIN clicks c ON i.adId = c.adId \
             AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'",
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(message.contains("only inner joins"), "{message}");

    let message = refusal(
        query(
            "SELECT * FROM impressions a JOIN impressions b ON a.adId = b.adId \
             AND a.ts BETWEEN b.ts AND b.ts + INTERVAL '1 hour'",
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(message.contains("self-join"), "{message}");
}

/// The bounds of `impressions.ts − clicks.ts` read from each form of the range condition.
#[tokio::test]
async fn range_bounds_from_each_condition_form() {
    let base = "SELECT i.adId FROM impressions i JOIN clicks c ON i.adId = c.adId AND ";
    for (condition, range) in [
        (
            "i.ts > c.ts - INTERVAL '10 minutes' AND i.ts < c.ts + INTERVAL '10 minutes'",
            "[-600000 ms, 600000 ms]",
        ),
        ("i.ts = c.ts", "[0 ms, 0 ms]"),
        (
            "c.ts - INTERVAL '5 seconds' <= i.ts AND c.ts >= i.ts",
            "[-5000 ms, 0 ms]",
        ),
        (
            "INTERVAL '1 day' + i.ts >= c.ts AND c.ts >= i.ts + INTERVAL '2 hours'",
            "[-86400000 ms, -7200000 ms]",
        ),
    ] {
        let sql = format!("{base}{condition}");
        let q = query(&sql, OutputMode::Append, watermarks(60))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let fingerprint = q.stateful_fingerprint().expect("fingerprint");
        assert!(
            fingerprint.ends_with(&format!("in {range})")),
            "{condition}: {fingerprint}"
        );
    }
    // A month has no fixed length: not a bound.
    let message = refusal(
        query(
            &format!("{base}c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 month'"),
            OutputMode::Append,
            watermarks(60),
        )
        .await,
    );
    assert!(message.contains("only ts - ts <= 0 ms"), "{message}");
}
