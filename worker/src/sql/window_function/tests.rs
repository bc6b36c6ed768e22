//! Window functions per event-time window: a top-2 per 10-minute window, row for row, across
//! batches, a restart and late data; and the refusals, each naming its rule.

use sluice_crds::{OutputMode, SqlScope};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::sql::streaming_tests::{refusal, s, step, watermark, words, words_schema};
use crate::sql::{BatchQuery, SourceWatermark};
use crate::storage::Location;

/// The latest two words of each 10-minute window, the window in the `PARTITION BY` itself.
const TOP_2_DIRECT: &str = "SELECT w, word, rn FROM (
      SELECT window(timestamp, '10 minutes') AS w, word,
        ROW_NUMBER() OVER (PARTITION BY window(timestamp, '10 minutes') ORDER BY timestamp DESC, word) AS rn
      FROM words) ranked
    WHERE rn <= 2";

/// The same, the window a column of a subquery (the shape of Flink's window TVF and Nexmark's
/// windowed q18/q19).
const TOP_2_SUBQUERY: &str = "SELECT w, word, rn FROM (
      SELECT w, word, ROW_NUMBER() OVER (PARTITION BY w ORDER BY timestamp DESC, word) AS rn
      FROM (SELECT *, window(timestamp, '10 minutes') AS w FROM words) windowed) ranked
    WHERE rn <= 2";

async fn query(
    sql: &str,
    mode: OutputMode,
    watermarks: Vec<SourceWatermark>,
) -> Result<BatchQuery> {
    BatchQuery::with_watermarks(
        sql,
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        mode,
        watermarks,
    )
    .await
}

async fn top_2(sql: &str) -> BatchQuery {
    query(sql, OutputMode::Append, watermark(5))
        .await
        .expect("plan")
}

/// The batches of the tests: watermark delay 5 minutes.
const BATCHES: [&[(&str, &str)]; 4] = [
    &[
        ("12:01", "a"),
        ("12:03", "b"),
        ("12:05", "c"),
        ("12:12", "d"),
    ],
    // Watermark 12:07: 12:02 is not late (its window ends at 12:10).
    &[("12:08", "e"), ("12:02", "f")],
    // Still 12:07; 12:25 moves it to 12:20 for the next batch.
    &[("12:25", "g")],
    // The no-data batch: watermark 12:20 closes [12:00, 12:10) and [12:10, 12:20).
    &[],
];

fn closed_windows() -> Vec<String> {
    s(&["12:00-12:10 c 2", "12:00-12:10 e 1", "12:10-12:20 d 1"])
}

/// Each closed window's top 2, once, when the watermark passes its end: the batch answer over
/// the window's rows, whichever batch they came in.
#[tokio::test]
async fn top_n_per_window_emits_each_closed_window_once() {
    for sql in [TOP_2_DIRECT, TOP_2_SUBQUERY] {
        let mut q = top_2(sql).await;
        let mut emitted = Vec::new();
        for (i, batch) in BATCHES.iter().enumerate() {
            let out = step(&mut q, batch).await;
            if i < 3 {
                assert!(out.is_empty(), "batch {i} emitted {out:?} ({sql})");
            }
            emitted.extend(out);
        }
        assert_eq!(emitted, closed_windows(), "{sql}");
        let state = q.state_progress().expect("state");
        assert_eq!(
            state.rows_removed, 6,
            "the closed windows' rows left the state"
        );
        assert_eq!(state.state_rows, 1, "g's window is open");
        assert_eq!(state.operator, "windowFunction");
        assert!(!q.wants_no_data_batch());

        // 12:15 is in [12:10, 12:20), closed: late, dropped and counted, nothing emitted.
        assert!(step(&mut q, &[("12:15", "x")]).await.is_empty());
        assert_eq!(q.state_progress().expect("state").late_rows_dropped, 1);
    }
}

/// State written before each commit and restored after a crash gives the uncrashed output, also
/// when the crash came after a batch ran but before it committed (the batch is replayed).
#[tokio::test]
async fn restored_state_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint =
        Checkpoint::new(Location::parse(dir.path().to_str().expect("utf8")).expect("location"));
    let mut q = top_2(TOP_2_SUBQUERY).await;
    for (id, batch) in BATCHES[..2].iter().enumerate() {
        q.run(vec![words(batch)]).await.expect("run");
        q.write_state(&checkpoint, 0, id as u64)
            .await
            .expect("write");
        q.commit_state();
    }
    // Batch 2 runs and writes its state, but the process dies before its commit entry.
    q.run(vec![words(BATCHES[2])]).await.expect("run");
    q.write_state(&checkpoint, 0, 2).await.expect("write");
    drop(q);

    let mut restarted = top_2(TOP_2_SUBQUERY).await;
    restarted
        .restore_state(&checkpoint, 0, Some(1))
        .await
        .expect("restore");
    assert_eq!(restarted.state_progress().expect("state").state_rows, 6);
    let mut emitted = Vec::new();
    for batch in &BATCHES[2..] {
        emitted.extend(step(&mut restarted, batch).await);
    }
    assert_eq!(emitted, closed_windows());
}

/// What the engine cannot run as a window function over a stream is refused at start, naming
/// the rule.
#[tokio::test]
async fn window_functions_outside_the_rules_are_refused_with_the_rule() {
    let cases: [(&str, OutputMode, Vec<SourceWatermark>, &str); 5] = [
        (
            TOP_2_SUBQUERY,
            OutputMode::Update,
            watermark(5),
            "runs in outputMode `append` only",
        ),
        (
            "SELECT word, ROW_NUMBER() OVER (PARTITION BY word ORDER BY timestamp) AS rn FROM words",
            OutputMode::Append,
            watermark(5),
            "needs PARTITION BY a tumbling window over the watermark column (timestamp)",
        ),
        (
            "SELECT word, ROW_NUMBER() OVER (PARTITION BY window(timestamp, '10 minutes', '5 minutes') \
             ORDER BY timestamp) AS rn FROM words",
            OutputMode::Append,
            watermark(5),
            "needs PARTITION BY a tumbling window over the watermark column",
        ),
        (
            TOP_2_DIRECT,
            OutputMode::Append,
            Vec::new(),
            "needs a watermark on source `words`",
        ),
        (
            "SELECT w, count(*) AS n FROM (
               SELECT window(timestamp, '10 minutes') AS w,
                 ROW_NUMBER() OVER (PARTITION BY window(timestamp, '10 minutes') ORDER BY timestamp) AS rn
               FROM words) ranked
             WHERE rn <= 2 GROUP BY w",
            OutputMode::Append,
            watermark(5),
            "must sit above the aggregation, not below it",
        ),
    ];
    for (sql, mode, watermarks, expected) in cases {
        let message = refusal(query(sql, mode, watermarks).await);
        assert!(message.contains(expected), "{sql}: {message}");
    }
}

/// The most frequent words of each 10-minute window (Nexmark q5's shape): a window function over
/// the rows the aggregation emits.
const MOST_FREQUENT: &str = "SELECT w, word, n FROM (
      SELECT w, word, n, max(n) OVER (PARTITION BY w) AS top FROM (
        SELECT window(timestamp, '10 minutes') AS w, word, count(*) AS n
        FROM words GROUP BY window(timestamp, '10 minutes'), word) counts) ranked
    WHERE n = top";

/// In `append` mode a window's groups are emitted in one batch, when the watermark passes its
/// end, so a function partitioned by the window sees each window whole.
#[tokio::test]
async fn window_functions_over_an_append_aggregation_see_each_window_whole() {
    let mut q = query(MOST_FREQUENT, OutputMode::Append, watermark(5))
        .await
        .expect("plan");
    let batches: [&[(&str, &str)]; 4] = [
        &[
            ("12:01", "cat"),
            ("12:03", "dog"),
            ("12:05", "cat"),
            ("12:12", "owl"),
        ],
        &[
            ("12:08", "dog"),
            ("12:02", "cat"),
            ("12:14", "owl"),
            ("12:15", "eel"),
        ],
        &[("12:25", "cat")],
        &[],
    ];
    // 12:15 moves the watermark to 12:10 for batch 2, which closes [12:00, 12:10) (cat 3, dog 2);
    // 12:25 moves it to 12:20 for the no-data batch, which closes [12:10, 12:20) (owl 2, eel 1).
    let expected: [&[&str]; 4] = [&[], &[], &["12:00-12:10 cat 3"], &["12:10-12:20 owl 2"]];
    for (i, (batch, want)) in batches.iter().zip(expected).enumerate() {
        assert_eq!(step(&mut q, batch).await, s(want), "batch {i}");
    }

    let refusals = [
        (
            MOST_FREQUENT.to_string(),
            OutputMode::Update,
            "needs outputMode `append` or `complete`",
        ),
        (
            MOST_FREQUENT.replace("PARTITION BY w", "PARTITION BY word"),
            OutputMode::Append,
            "must be partitioned by the aggregation's window column",
        ),
    ];
    for (sql, mode, expected) in refusals {
        let message = refusal(query(&sql, mode, watermark(5)).await);
        assert!(message.contains(expected), "{sql}: {message}");
    }
    // In complete mode every batch holds the whole table: any partitioning is whole.
    let complete = MOST_FREQUENT.replace("PARTITION BY w", "PARTITION BY word");
    assert!(
        query(&complete, OutputMode::Complete, watermark(5))
            .await
            .is_ok()
    );
}
