//! Streaming aggregation over micro-batches: Spark's documented examples, row for row.

use super::*;
use arrow::array::{Array, Int64Array, StringArray, StructArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

pub(super) const MINUTE: i64 = 60_000;
const NOON: i64 = 12 * 60 * MINUTE;

pub(super) fn words_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("word", DataType::Utf8, true),
    ]))
}

/// Rows `("12:07", "owl")`.
pub(super) fn words(rows: &[(&str, &str)]) -> Vec<RecordBatch> {
    let ts: Vec<i64> = rows
        .iter()
        .map(|(t, _)| {
            let (h, m) = t.split_once(':').expect("hh:mm");
            h.parse::<i64>().expect("h") * 60 * MINUTE + m.parse::<i64>().expect("m") * MINUTE
        })
        .collect();
    let batch = RecordBatch::try_new(
        words_schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            Arc::new(StringArray::from(
                rows.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch");
    vec![batch]
}

fn hhmm(ms: i64) -> String {
    format!("{:02}:{:02}", ms / (60 * MINUTE), (ms / MINUTE) % 60)
}

/// Output rows as `"12:00-12:10 cat 2"`, sorted.
pub(super) fn lines(out: &[RecordBatch]) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in out {
        let windows = batch
            .column(0)
            .as_any()
            .downcast_ref::<StructArray>()
            .expect("window struct");
        let start = arrow::compute::cast(windows.column(0), &DataType::Int64).expect("start");
        let start = start.as_any().downcast_ref::<Int64Array>().expect("i64");
        let end = arrow::compute::cast(windows.column(1), &DataType::Int64).expect("end");
        let end = end.as_any().downcast_ref::<Int64Array>().expect("i64");
        let word = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("word");
        let count = arrow::compute::cast(batch.column(2), &DataType::Int64).expect("count");
        let count = count.as_any().downcast_ref::<Int64Array>().expect("i64");
        for r in 0..batch.num_rows() {
            lines.push(format!(
                "{}-{} {} {}",
                hhmm(start.value(r)),
                hhmm(end.value(r)),
                word.value(r),
                count.value(r)
            ));
        }
    }
    lines.sort();
    lines
}

const WINDOWED_COUNTS: &str = "SELECT window(timestamp, '10 minutes', '5 minutes') AS window, word, count(*) AS count \
     FROM words GROUP BY window(timestamp, '10 minutes', '5 minutes'), word";

pub(super) fn watermark(delay_minutes: i64) -> Vec<SourceWatermark> {
    vec![SourceWatermark {
        input: 0,
        source: "words".into(),
        column: "timestamp".into(),
        delay_ms: delay_minutes * MINUTE,
    }]
}

async fn windowed(mode: OutputMode, watermarks: Vec<SourceWatermark>) -> BatchQuery {
    BatchQuery::with_watermarks(
        WINDOWED_COUNTS,
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        mode,
        watermarks,
    )
    .await
    .expect("plan")
}

/// Runs one batch and commits its state (as the task runner does).
pub(super) async fn step(q: &mut BatchQuery, rows: &[(&str, &str)]) -> Vec<String> {
    let out = q.run(vec![words(rows)]).await.expect("run");
    q.commit_state();
    lines(&out)
}

/// The message of an [`EngineError::InvalidQuery`]; panics on any other outcome.
pub(super) fn refusal(result: Result<BatchQuery>) -> String {
    match result {
        Err(EngineError::InvalidQuery(message)) => message,
        Err(other) => panic!("expected InvalidQuery, got {other:?}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

pub(super) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Spark guide, "Window Operations on Event Time": late data updates old windows (update mode,
/// no watermark). A word generated at 12:04 arriving in the third trigger updates the windows
/// that contain 12:04 ([11:55, 12:05) and [12:00, 12:10) by Spark's window assignment), and a
/// word at 12:09 updates [12:00, 12:10) and [12:05, 12:15).
#[tokio::test]
async fn late_data_updates_old_windows_in_update_mode() {
    let mut q = windowed(OutputMode::Update, Vec::new()).await;
    assert_eq!(
        step(
            &mut q,
            &[
                ("12:02", "cat"),
                ("12:02", "dog"),
                ("12:03", "dog"),
                ("12:03", "owl")
            ]
        )
        .await,
        s(&[
            "11:55-12:05 cat 1",
            "11:55-12:05 dog 2",
            "11:55-12:05 owl 1",
            "12:00-12:10 cat 1",
            "12:00-12:10 dog 2",
            "12:00-12:10 owl 1",
        ])
    );
    assert_eq!(
        step(&mut q, &[("12:07", "owl"), ("12:07", "cat")]).await,
        s(&[
            "12:00-12:10 cat 2",
            "12:00-12:10 owl 2",
            "12:05-12:15 cat 1",
            "12:05-12:15 owl 1",
        ])
    );
    assert_eq!(
        step(
            &mut q,
            &[
                ("12:11", "dog"),
                ("12:13", "owl"),
                ("12:04", "dog"),
                ("12:09", "cat")
            ]
        )
        .await,
        s(&[
            "11:55-12:05 dog 3",
            "12:00-12:10 cat 3",
            "12:00-12:10 dog 3",
            "12:05-12:15 cat 2",
            "12:05-12:15 dog 1",
            "12:05-12:15 owl 2",
            "12:10-12:20 dog 1",
            "12:10-12:20 owl 1",
        ])
    );
}

/// Spark guide, "Handling Late Data and Watermarking" (update mode, watermark 10 minutes): the
/// watermark used by a trigger is max event time of the earlier triggers − 10 minutes; (12:09, cat)
/// is late but above the watermark 12:04 and still counted; once the watermark is 12:11 the window
/// [12:00, 12:10) is evicted and (12:04, donkey) is dropped and counted.
#[tokio::test]
async fn watermark_drops_and_counts_too_late_data() {
    let mut q = windowed(OutputMode::Update, watermark(10)).await;
    assert_eq!(
        step(&mut q, &[("12:07", "dog"), ("12:08", "owl")]).await,
        s(&[
            "12:00-12:10 dog 1",
            "12:00-12:10 owl 1",
            "12:05-12:15 dog 1",
            "12:05-12:15 owl 1",
        ])
    );
    assert_eq!(
        step(&mut q, &[("12:14", "dog"), ("12:09", "cat")]).await,
        s(&[
            "12:00-12:10 cat 1",
            "12:05-12:15 cat 1",
            "12:05-12:15 dog 2",
            "12:10-12:20 dog 1",
        ])
    );
    // Used watermark 12:04 (max 12:14 − 10 min); this batch raises it to 12:11.
    assert_eq!(
        q.state_progress().expect("state").watermark_ms,
        Some(NOON + 4 * MINUTE)
    );
    assert_eq!(
        step(
            &mut q,
            &[
                ("12:15", "cat"),
                ("12:08", "dog"),
                ("12:13", "owl"),
                ("12:21", "owl")
            ]
        )
        .await,
        s(&[
            "12:00-12:10 dog 2",
            "12:05-12:15 dog 3",
            "12:05-12:15 owl 2",
            "12:10-12:20 cat 1",
            "12:10-12:20 owl 1",
            "12:15-12:25 cat 1",
            "12:15-12:25 owl 1",
            "12:20-12:30 owl 1",
        ])
    );
    assert_eq!(q.state_progress().expect("state").late_rows_dropped, 0);
    // Watermark now 12:11: (12:04, donkey) belongs only to closed windows → dropped (2 pairs);
    // (12:17, owl) counts.
    assert_eq!(
        step(&mut q, &[("12:04", "donkey"), ("12:17", "owl")]).await,
        s(&["12:10-12:20 owl 2", "12:15-12:25 owl 2"])
    );
    let progress = q.state_progress().expect("state");
    assert_eq!(progress.late_rows_dropped, 2);
    // [12:00, 12:10) was evicted: 5 windows x words remain below.
    assert_eq!(
        progress.rows_removed, 3,
        "cat, dog and owl of [12:00, 12:10)"
    );
}

/// Append mode: each window exactly once, in the first batch whose watermark is past its end.
#[tokio::test]
async fn append_emits_each_window_once_after_the_watermark() {
    let mut q = windowed(OutputMode::Append, watermark(10)).await;
    assert!(
        step(&mut q, &[("12:07", "dog"), ("12:08", "owl")])
            .await
            .is_empty()
    );
    assert!(
        step(&mut q, &[("12:14", "dog"), ("12:09", "cat")])
            .await
            .is_empty()
    );
    // Watermark 12:04: nothing closed yet.
    assert!(
        step(&mut q, &[("12:15", "cat"), ("12:21", "owl")])
            .await
            .is_empty()
    );
    // Watermark 12:11 closes [12:00, 12:10).
    assert_eq!(
        step(&mut q, &[("12:22", "cat")]).await,
        s(&[
            "12:00-12:10 cat 1",
            "12:00-12:10 dog 1",
            "12:00-12:10 owl 1"
        ])
    );
    assert!(q.wants_no_data_batch(), "watermark moved to 12:12");
    // No-data batch with watermark 12:12: nothing more closes ([12:05, 12:15) ends after it).
    assert!(step(&mut q, &[]).await.is_empty());
    assert!(!q.wants_no_data_batch());
    // 12:40 moves the watermark to 12:30 for the next batch, which closes the rest.
    assert!(step(&mut q, &[("12:40", "eel")]).await.is_empty());
    assert_eq!(
        step(&mut q, &[]).await,
        s(&[
            "12:05-12:15 cat 1",
            "12:05-12:15 dog 2",
            "12:05-12:15 owl 1",
            "12:10-12:20 cat 1",
            "12:10-12:20 dog 1",
            "12:15-12:25 cat 2",
            "12:15-12:25 owl 1",
            "12:20-12:30 cat 1",
            "12:20-12:30 owl 1",
        ])
    );
    assert_eq!(
        q.state_progress().expect("state").state_rows,
        2,
        "eel's two windows"
    );
}

/// Complete mode: the whole result table each batch; same final table for 1 batch or 50.
#[tokio::test]
async fn one_batch_or_fifty_give_the_same_table() {
    let mut rows = Vec::new();
    let names = ["cat", "dog", "owl", "eel", "ant"];
    for i in 0..200i64 {
        let minute = (i * 7) % 60;
        rows.push((format!("12:{minute:02}"), names[(i % 5) as usize]));
    }
    let owned: Vec<(&str, &str)> = rows.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    let mut one = windowed(OutputMode::Complete, Vec::new()).await;
    let whole = step(&mut one, &owned).await;
    let mut many = windowed(OutputMode::Complete, Vec::new()).await;
    let mut last = Vec::new();
    for chunk in owned.chunks(4) {
        last = step(&mut many, chunk).await;
    }
    assert_eq!(owned.chunks(4).count(), 50);
    assert_eq!(whole, last);
    assert_eq!(
        whole.len(),
        5 * 13,
        "13 windows between 11:55 and 13:00 per word"
    );
}

#[tokio::test]
async fn running_totals_and_mergeable_aggregates() {
    let sql = "SELECT word, count(*) AS n, count(DISTINCT timestamp) AS d, min(timestamp) AS lo, \
               max(timestamp) AS hi, avg(CAST(extract(minute FROM timestamp) AS DOUBLE)) AS a \
               FROM words GROUP BY word HAVING count(*) > 1";
    let mut q = BatchQuery::new(
        sql,
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Update,
        Extensions::default(),
    )
    .await
    .expect("plan");
    let render = |out: &[RecordBatch]| -> Vec<String> {
        let mut v = Vec::new();
        for b in out {
            let formatted = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b))
                .expect("fmt")
                .to_string();
            v.extend(
                formatted
                    .lines()
                    .skip(3)
                    .filter(|l| !l.starts_with('+'))
                    .map(str::to_string),
            );
        }
        v.sort();
        v
    };
    let out = q
        .run(vec![words(&[
            ("12:01", "cat"),
            ("12:02", "cat"),
            ("12:02", "dog"),
        ])])
        .await
        .expect("run");
    q.commit_state();
    assert_eq!(
        render(&out),
        s(&["| cat  | 2 | 2 | 1970-01-01T12:01:00Z | 1970-01-01T12:02:00Z | 1.5 |"])
    );
    let out = q
        .run(vec![words(&[("12:02", "cat"), ("12:09", "dog")])])
        .await
        .expect("run");
    q.commit_state();
    assert_eq!(
        render(&out),
        s(&[
            "| cat  | 3 | 2 | 1970-01-01T12:01:00Z | 1970-01-01T12:02:00Z | 1.6666666666666667 |",
            "| dog  | 2 | 2 | 1970-01-01T12:02:00Z | 1970-01-01T12:09:00Z | 5.5                |",
        ])
    );
}

#[tokio::test]
async fn output_mode_rules_are_enforced_at_start() {
    let err = BatchQuery::with_watermarks(
        WINDOWED_COUNTS,
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Append,
        Vec::new(),
    )
    .await
    .err()
    .expect("append without watermark is refused");
    assert!(err.to_string().contains("without watermark"), "{err}");
    let err = BatchQuery::new(
        "SELECT word FROM words",
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Complete,
        Extensions::default(),
    )
    .await
    .err()
    .expect("complete without aggregation is refused");
    assert!(err.to_string().contains("needs an aggregation"), "{err}");
    let err = BatchQuery::new(
        "SELECT word, count(*) FROM (SELECT word, count(*) AS c FROM words GROUP BY word) GROUP BY word",
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Update,
        Extensions::default(),
    )
    .await
    .err()
    .expect("two aggregations are refused");
    assert!(
        err.to_string().contains("Multiple streaming aggregations"),
        "{err}"
    );
}

/// Runs a batch of the dedup query, returning `"12:01 cat"` rows.
async fn step_distinct(q: &mut BatchQuery, rows: &[(&str, &str)]) -> Vec<String> {
    let out = q.run(vec![words(rows)]).await.expect("run");
    q.commit_state();
    let mut v = Vec::new();
    for b in &out {
        let ts = arrow::compute::cast(b.column(0), &DataType::Int64).expect("i64");
        let ts = ts.as_any().downcast_ref::<Int64Array>().expect("i64");
        let w = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        for r in 0..b.num_rows() {
            v.push(format!("{} {}", hhmm(ts.value(r)), w.value(r)));
        }
    }
    v.sort();
    v
}

/// `SELECT DISTINCT` over a stream is Spark's `dropDuplicates`: each row once, when first seen;
/// with the event-time column among the columns, late duplicates are dropped and the state is
/// evicted below the watermark.
#[tokio::test]
async fn distinct_drops_duplicates_bounded_by_the_watermark() {
    let mut q = BatchQuery::with_watermarks(
        "SELECT DISTINCT timestamp, word FROM words",
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Append,
        watermark(10),
    )
    .await
    .expect("plan");
    assert_eq!(
        step_distinct(
            &mut q,
            &[("12:01", "cat"), ("12:01", "cat"), ("12:02", "dog")]
        )
        .await,
        s(&["12:01 cat", "12:02 dog"])
    );
    assert_eq!(
        step_distinct(
            &mut q,
            &[("12:01", "cat"), ("12:03", "cat"), ("12:30", "eel")]
        )
        .await,
        s(&["12:03 cat", "12:30 eel"])
    );
    // Watermark 12:20: the old keys are evicted, a late duplicate is dropped, not re-emitted.
    assert!(step_distinct(&mut q, &[("12:01", "cat")]).await.is_empty());
    let progress = q.state_progress().expect("state");
    assert_eq!(progress.late_rows_dropped, 1);
    assert_eq!(
        progress.state_rows, 1,
        "only 12:30 eel is above the watermark"
    );
}

fn owners_table(path: &std::path::Path, refresh: &str) -> sluice_crds::TableSpec {
    serde_json::from_value(serde_json::json!({
        "name": "owners",
        "file": {"path": path.to_str().expect("utf8"), "format": "csv"},
        "schema": [{"name": "word", "type": "string"}, {"name": "owner", "type": "string"}],
        "refreshInterval": refresh,
    }))
    .expect("table spec")
}

async fn joined(sql: &str, mode: OutputMode, table: &sluice_crds::TableSpec) -> Result<BatchQuery> {
    BatchQuery::with_tables(
        sql,
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        mode,
        Vec::new(),
        vec![StaticTable::open(table).await?],
        Extensions::default(),
    )
    .await
}

fn pretty_rows(out: &[RecordBatch]) -> Vec<String> {
    let mut v = Vec::new();
    for b in out {
        let formatted = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b))
            .expect("fmt")
            .to_string();
        v.extend(
            formatted
                .lines()
                .skip(3)
                .filter(|l| !l.starts_with('+'))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    v.sort();
    v
}

/// Stream–static enrichment: left join keeps unmatched stream rows; the table is re-read after
/// its refresh interval, not before.
#[tokio::test]
async fn static_table_join_picks_up_changes_after_its_refresh_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("owners.csv");
    std::fs::write(&csv, "word,owner\ncat,ann\ndog,bob\n").expect("csv");
    let table = owners_table(&csv, "400ms");
    let mut q = joined(
        "SELECT w.word, o.owner FROM words w LEFT JOIN owners o ON w.word = o.word",
        OutputMode::Append,
        &table,
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![words(&[("12:01", "cat"), ("12:02", "eel")])])
        .await
        .expect("run");
    assert_eq!(pretty_rows(&out), s(&["| cat | ann |", "| eel | |"]));
    std::fs::write(&csv, "word,owner\ncat,carl\neel,eve\n").expect("csv");
    let out = q.run(vec![words(&[("12:03", "cat")])]).await.expect("run");
    assert_eq!(
        pretty_rows(&out),
        s(&["| cat | ann |"]),
        "not refreshed yet"
    );
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let out = q
        .run(vec![words(&[("12:04", "cat"), ("12:05", "eel")])])
        .await
        .expect("run");
    assert_eq!(pretty_rows(&out), s(&["| cat | carl |", "| eel | eve |"]));

    // An aggregation over the inner join keeps running totals per owner.
    let mut q = joined(
        "SELECT o.owner, count(*) AS n FROM words w JOIN owners o ON w.word = o.word GROUP BY o.owner",
        OutputMode::Update,
        &table,
    )
    .await
    .expect("plan");
    let _ = q
        .run(vec![words(&[
            ("12:01", "cat"),
            ("12:01", "cat"),
            ("12:02", "dog"),
        ])])
        .await
        .expect("run");
    q.commit_state();
    let out = q.run(vec![words(&[("12:03", "cat")])]).await.expect("run");
    assert_eq!(pretty_rows(&out), s(&["| carl | 3 |"]));

    for (sql, message) in [
        (
            "SELECT a.word FROM words a JOIN words b ON a.word = b.word",
            "two streams",
        ),
        (
            "SELECT w.word FROM words w RIGHT JOIN owners o ON w.word = o.word",
            "not supported",
        ),
    ] {
        let err = joined(sql, OutputMode::Append, &table)
            .await
            .err()
            .expect(sql)
            .to_string();
        assert!(err.contains(message), "{sql}: {err}");
    }
}

/// Session windows (gap 5 minutes, update mode): rows of a key within the gap share a session;
/// a late row bridging two sessions merges them into one (the two old ones are removed).
#[tokio::test]
async fn session_windows_merge_across_batches() {
    let mut q = BatchQuery::with_watermarks(
        "SELECT session_window(timestamp, '5 minutes') AS window, word, count(*) AS count \
         FROM words GROUP BY session_window(timestamp, '5 minutes'), word",
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Update,
        watermark(30),
    )
    .await
    .expect("plan");
    assert_eq!(
        step(
            &mut q,
            &[
                ("12:00", "cat"),
                ("12:03", "cat"),
                ("12:20", "cat"),
                ("12:01", "dog")
            ]
        )
        .await,
        s(&[
            "12:00-12:08 cat 2",
            "12:01-12:06 dog 1",
            "12:20-12:25 cat 1"
        ])
    );
    assert_eq!(q.state_progress().expect("state").state_rows, 3);
    // 12:06 … 12:18 (each within 5 minutes of the previous) bridge [12:00, 12:08) and
    // [12:20, 12:25) into one session; sessions that only touch (end = next start) stay apart.
    assert_eq!(
        step(
            &mut q,
            &[
                ("12:06", "cat"),
                ("12:10", "cat"),
                ("12:14", "cat"),
                ("12:18", "cat"),
                ("12:04", "dog"),
                ("12:14", "dog")
            ]
        )
        .await,
        s(&[
            "12:00-12:25 cat 7",
            "12:01-12:09 dog 2",
            "12:14-12:19 dog 1"
        ])
    );
    let progress = q.state_progress().expect("state");
    assert_eq!(progress.state_rows, 3);
    assert_eq!(
        progress.rows_removed, 3,
        "both old cat sessions and the old dog session were replaced"
    );
}

/// Append mode emits a session once, after the watermark passes its end.
#[tokio::test]
async fn session_windows_append_after_the_watermark() {
    let mut q = BatchQuery::with_watermarks(
        "SELECT session_window(timestamp, '5 minutes') AS window, word, count(*) AS count \
         FROM words GROUP BY session_window(timestamp, '5 minutes'), word",
        vec![("words".into(), words_schema())],
        SqlScope::Stream,
        OutputMode::Append,
        watermark(10),
    )
    .await
    .expect("plan");
    assert!(
        step(&mut q, &[("12:00", "cat"), ("12:03", "cat")])
            .await
            .is_empty()
    );
    assert!(step(&mut q, &[("12:30", "eel")]).await.is_empty());
    assert!(q.wants_no_data_batch());
    assert_eq!(step(&mut q, &[]).await, s(&["12:00-12:08 cat 2"]));
    assert_eq!(q.state_progress().expect("state").state_rows, 1);
}
