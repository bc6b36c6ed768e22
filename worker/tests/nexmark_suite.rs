//! The Nexmark query suite (`bench/nexmark/q*.yaml`), each manifest run as written (but over
//! 100,000 events, into a memory sink) and its rows compared with an independent reference: the
//! query written again in batch SQL over the same events (windows as `date_bin`, sessions as gaps
//! between consecutive bids, the interval join as a plain join), run by DataFusion without any of
//! the engine's incremental machinery. Aggregations run in `complete` mode here so the final table
//! is compared whole; stateless queries and the join compare every row they appended.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_crds::{OutputMode, StreamingQuery};
use sluice_worker::{Engine, QueryConfig, Shared};

const EVENTS: u64 = 100_000;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/nexmark")
}

/// The manifest `file` made a test: `events` events, a memory sink `name`, a fresh checkpoint.
fn manifest(file: &str, name: &str, checkpoint: &std::path::Path, events: u64) -> StreamingQuery {
    let text = std::fs::read_to_string(bench_dir().join(file)).expect("read manifest");
    let mut query = sluice_crds::parse_manifest(&text).expect("manifest");
    for source in &mut query.spec.sources {
        if let Some(nexmark) = source.nexmark.as_mut() {
            nexmark.max_events = Some(events);
        }
    }
    query.spec.sink =
        serde_json::from_value(serde_json::json!({"memory": {"name": name}})).expect("memory sink");
    query.spec.checkpoint.location = Some(checkpoint.display().to_string());
    // Side inputs are named from the repository root (where `sluice-worker run` is started).
    for table in &mut query.spec.tables {
        if let Some(file) = table.file.as_mut() {
            file.path = bench_dir()
                .join("../..")
                .join(&file.path)
                .display()
                .to_string();
        }
    }
    query
}

async fn run(query: StreamingQuery) {
    let engine = Engine::start(QueryConfig::local(query), Shared::new())
        .await
        .expect("start");
    engine.run(|_| {}).await.expect("run");
}

/// Every batch a memory sink received; in `complete` mode only the last batch id's (the final
/// result table).
fn output(name: &str, complete: bool) -> Vec<RecordBatch> {
    let table = sluice_worker::sink::memory::read_table(name);
    if complete {
        let last = table.keys().map(|(_, batch)| *batch).max().unwrap_or(0);
        table
            .into_iter()
            .filter(|((_, batch), _)| *batch == last)
            .flat_map(|(_, batches)| batches)
            .collect()
    } else {
        table.into_values().flatten().collect()
    }
}

/// The rows of `batches` as sorted lines of cells.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut lines = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            lines.push(cells.join(" | "));
        }
    }
    lines.sort();
    lines
}

async fn sql(ctx: &SessionContext, text: &str) -> Vec<RecordBatch> {
    ctx.sql(text)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .collect()
        .await
        .expect("collect")
}

/// The three tables as the `nexmark` source produces them for `events` events (the source itself
/// is checked against the reference generator in its unit tests).
async fn tables(dir: &std::path::Path, events: u64) -> SessionContext {
    let ctx = SessionContext::new();
    for table in ["person", "auction", "bid"] {
        let name = format!("nexmark-input-{table}-{events}-{}", std::process::id());
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: input}}\nspec:\n  sources:\n    - {{name: {table}, nexmark: {{table: {table}, maxEvents: {events}}}}}\n  sql: SELECT * FROM {table}\n  sink: {{memory: {{name: {name}}}}}\n  trigger: {{availableNow: true}}\n  checkpoint: {{location: \"{}\"}}\n",
            dir.join(format!("input-{table}-{events}")).display()
        );
        run(sluice_crds::parse_manifest(&text).expect("manifest")).await;
        let batches = output(&name, false);
        let schema = batches.first().expect("rows").schema();
        let mem = MemTable::try_new(schema, vec![batches]).expect("table");
        ctx.register_table(table, Arc::new(mem)).expect("register");
    }
    ctx
}

struct Case {
    file: &'static str,
    /// Events of the run (`EVENTS` unless a query's windows need more event time to close: 100,000
    /// events are 10 s of it).
    events: u64,
    /// Aggregations: run in `complete` mode and compare the final table.
    complete: bool,
    /// Over the query's output, registered as `out`: the columns to compare.
    normalize: &'static str,
    /// Over `person`, `auction`, `bid`: the same columns, computed in batch.
    reference: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "q0.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: r#"SELECT auction, bidder, price, "dateTime", extra FROM bid"#,
    },
    Case {
        file: "q1.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: r#"SELECT auction, bidder, price * 0.908 AS price, "dateTime", extra FROM bid"#,
    },
    Case {
        file: "q2.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: "SELECT auction, price FROM bid WHERE auction - (auction / 123) * 123 = 0",
    },
    Case {
        file: "q5.yaml",
        events: EVENTS,
        complete: true,
        normalize: "SELECT auction, num, to_unixtime(w['start']) AS s FROM out",
        // Sliding 10 s / 2 s: a bid at t is in the five windows starting at
        // date_bin(2 s, t) - 0, 2, 4, 6, 8 s; then the auctions with each window's most bids.
        reference: r#"WITH counts AS (
              SELECT auction, count(*) AS num, s FROM (
                SELECT auction, to_unixtime(date_bin(INTERVAL '2 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z')) - k AS s
                FROM bid CROSS JOIN (VALUES (0), (2), (4), (6), (8)) AS shifts(k)) GROUP BY auction, s)
            SELECT auction, num, s FROM (SELECT *, max(num) OVER (PARTITION BY s) AS m FROM counts) WHERE num = m"#,
    },
    Case {
        file: "q7.yaml",
        events: 300_000,
        complete: false,
        normalize: r#"SELECT auction, price, bidder, "dateTime", extra, to_unixtime(w['start']) AS s FROM out"#,
        // Append mode: the windows the watermark (last event time − 1 s) has passed.
        reference: r#"SELECT auction, price, bidder, "dateTime", extra, to_unixtime(s) FROM (
              SELECT *, date_bin(INTERVAL '10 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z') AS s,
                max(price) OVER (PARTITION BY date_bin(INTERVAL '10 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z')) AS m
              FROM bid) T
            WHERE price = m AND s + INTERVAL '10 seconds' <= (SELECT max("dateTime") FROM bid) - INTERVAL '1 second'"#,
    },
    Case {
        file: "q8.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: r#"SELECT P.id, P.name, A.reserve FROM person P, auction A
              WHERE P.id = A.seller AND A."dateTime" >= P."dateTime" AND A."dateTime" <= P."dateTime" + INTERVAL '10 seconds'"#,
    },
    Case {
        file: "q11.yaml",
        events: EVENTS,
        complete: true,
        normalize: "SELECT bidder, bid_count, to_unixtime(w['start']) AS s, to_unixtime(w['end']) AS e FROM out",
        // A session ends where the next bid of the bidder is 10 s or more later (Spark's rule:
        // session windows [t, t + gap) that overlap merge).
        reference: r#"WITH o AS (
              SELECT bidder, "dateTime" AS t, lag("dateTime") OVER (PARTITION BY bidder ORDER BY "dateTime") AS p FROM bid),
            s AS (
              SELECT bidder, t, sum(CASE WHEN p IS NULL OR t >= p + INTERVAL '10 seconds' THEN 1 ELSE 0 END)
                OVER (PARTITION BY bidder ORDER BY t ROWS UNBOUNDED PRECEDING) AS session FROM o)
            SELECT bidder, count(*) AS bid_count, to_unixtime(min(t)) AS s, to_unixtime(max(t) + INTERVAL '10 seconds') AS e
            FROM s GROUP BY bidder, session"#,
    },
    Case {
        file: "q13.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        // side_input.csv maps every key 0..9999 to its own decimal text.
        reference: r#"SELECT auction, bidder, price, "dateTime", CAST(auction - (auction / 10000) * 10000 AS VARCHAR) FROM bid"#,
    },
    Case {
        file: "q14.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: r#"SELECT auction, bidder, 0.908 * price AS price,
              CASE WHEN date_part('hour', "dateTime") BETWEEN 8 AND 18 THEN 'dayTime'
                   WHEN date_part('hour', "dateTime") <= 6 OR date_part('hour', "dateTime") >= 20 THEN 'nightTime'
                   ELSE 'otherTime' END AS bidTimeType, "dateTime", extra,
              CAST(character_length(extra) - character_length(replace(extra, 'c', '')) AS BIGINT)
            FROM bid WHERE price * 0.908 > 1000000 AND price * 0.908 < 50000000"#,
    },
    Case {
        file: "q15.yaml",
        events: EVENTS,
        complete: true,
        normalize: "SELECT to_unixtime(day['start']) AS d, total_bids, rank1_bids, rank2_bids, rank3_bids, total_bidders, total_auctions FROM out",
        reference: r#"SELECT to_unixtime(date_trunc('day', "dateTime")) AS d, count(*),
              sum(CASE WHEN price < 10000 THEN 1 ELSE 0 END),
              sum(CASE WHEN price >= 10000 AND price < 1000000 THEN 1 ELSE 0 END),
              sum(CASE WHEN price >= 1000000 THEN 1 ELSE 0 END),
              count(DISTINCT bidder), count(DISTINCT auction)
            FROM bid GROUP BY 1"#,
    },
    Case {
        file: "q16.yaml",
        events: EVENTS,
        complete: true,
        normalize: "SELECT channel, to_unixtime(day['start']) AS d, total_bids, rank1_bids, total_bidders, total_auctions FROM out",
        reference: r#"SELECT channel, to_unixtime(date_trunc('day', "dateTime")) AS d, count(*),
              sum(CASE WHEN price < 10000 THEN 1 ELSE 0 END), count(DISTINCT bidder), count(DISTINCT auction)
            FROM bid GROUP BY 1, 2"#,
    },
    Case {
        file: "q17.yaml",
        events: EVENTS,
        complete: true,
        normalize: "SELECT auction, to_unixtime(day['start']) AS d, total_bids, rank1_bids, min_price, max_price, round(avg_price, 6), sum_price FROM out",
        reference: r#"SELECT auction, to_unixtime(date_trunc('day', "dateTime")) AS d, count(*),
              sum(CASE WHEN price < 10000 THEN 1 ELSE 0 END), min(price), max(price),
              round(CAST(sum(price) AS DOUBLE) / count(*), 6), sum(price)
            FROM bid GROUP BY 1, 2"#,
    },
    Case {
        file: "q18.yaml",
        events: EVENTS,
        complete: false,
        normalize: r#"SELECT auction, bidder, price, "dateTime", extra, to_unixtime(w['start']) AS s FROM out"#,
        // Append mode: the windows the watermark (last event time − 1 s) has passed.
        reference: r#"SELECT auction, bidder, price, "dateTime", extra, to_unixtime(s) FROM (
              SELECT *, date_bin(INTERVAL '2 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z') AS s,
                ROW_NUMBER() OVER (
                  PARTITION BY date_bin(INTERVAL '2 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z'), bidder, auction
                  ORDER BY "dateTime" DESC, price DESC, extra DESC) AS rn
              FROM bid) T
            WHERE rn <= 1 AND s + INTERVAL '2 seconds' <= (SELECT max("dateTime") FROM bid) - INTERVAL '1 second'"#,
    },
    Case {
        file: "q19.yaml",
        events: EVENTS,
        complete: false,
        normalize: r#"SELECT auction, bidder, price, "dateTime", extra, to_unixtime(w['start']) AS s, rank_number FROM out"#,
        reference: r#"SELECT auction, bidder, price, "dateTime", extra, to_unixtime(s), rn FROM (
              SELECT *, date_bin(INTERVAL '2 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z') AS s,
                ROW_NUMBER() OVER (
                  PARTITION BY date_bin(INTERVAL '2 seconds', "dateTime", TIMESTAMP '1970-01-01T00:00:00Z'), auction
                  ORDER BY price DESC, "dateTime", extra) AS rn
              FROM bid) T
            WHERE rn <= 10 AND s + INTERVAL '2 seconds' <= (SELECT max("dateTime") FROM bid) - INTERVAL '1 second'"#,
    },
    Case {
        file: "q21.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: r#"SELECT auction, bidder, price, channel,
              CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1' WHEN 'facebook' THEN '2'
                   WHEN 'baidu' THEN '3' ELSE regexp_replace(url, '^(.*&)?channel_id=([^&]*).*$', '\2') END
            FROM bid
            WHERE lower(channel) IN ('apple', 'google', 'facebook', 'baidu') OR url ~ '(&|^)channel_id='"#,
    },
    Case {
        file: "q22.yaml",
        events: EVENTS,
        complete: false,
        normalize: "SELECT * FROM out",
        reference: "SELECT auction, bidder, price, channel, split_part(url, '/', 4), split_part(url, '/', 5), split_part(url, '/', 6) FROM bid",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_query_equals_its_batch_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut references: std::collections::BTreeMap<u64, SessionContext> = Default::default();
    let mut failures = Vec::new();
    for case in CASES {
        if let std::collections::btree_map::Entry::Vacant(entry) = references.entry(case.events) {
            entry.insert(tables(dir.path(), case.events).await);
        }
        let reference = &references[&case.events];
        let name = format!("nexmark-suite-{}-{}", case.file, std::process::id());
        let mut query = manifest(case.file, &name, &dir.path().join(case.file), case.events);
        if case.complete {
            query.spec.output_mode = OutputMode::Complete;
        }
        run(query).await;
        let out = output(&name, case.complete);
        assert!(!out.is_empty(), "{}: no output", case.file);
        let ctx = SessionContext::new();
        let schema = out[0].schema();
        ctx.register_table(
            "out",
            Arc::new(MemTable::try_new(schema, vec![out]).expect("out")),
        )
        .expect("register");
        let got = rows(&sql(&ctx, case.normalize).await);
        let want = rows(&sql(reference, case.reference).await);
        assert!(!want.is_empty(), "{}: the reference has no rows", case.file);
        if got != want {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(3).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
            failures.push(format!(
                "{}: {} rows, reference {}; missing {missing:?}; extra {extra:?}",
                case.file,
                got.len(),
                want.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The suite's queries the engine's model does not run, each with the words of its refusal: a
/// join of two streams without a watermark bound on both sides (q3, q20: no time condition; q4,
/// q9: bounded by each auction's own `expires`, not by the watermark; q9 also ranks per auction,
/// not per window).
const REFUSED: &[(&str, &str)] = &[
    (
        "q3.yaml",
        "a join of two streams needs an event-time range condition",
    ),
    (
        "q4.yaml",
        "a join of two streams needs an event-time range condition",
    ),
    (
        "q9.yaml",
        "a join of two streams needs an event-time range condition",
    ),
    (
        "q20.yaml",
        "a join of two streams needs an event-time range condition",
    ),
];

/// A query that cannot run says why: each refused manifest fails at start with its reason, as
/// a user error (`sluice-worker check` and `run` exit 2 with the same message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queries_the_engine_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, reason) in REFUSED {
        let query = manifest(file, "refused", &dir.path().join(file), EVENTS);
        let error = match Engine::start(QueryConfig::local(query), Shared::new()).await {
            Ok(_) => panic!("{file} started; the suite lists it as refused"),
            Err(e) => e,
        };
        assert!(error.to_string().contains(reason), "{file}: {error}");
        assert_eq!(
            error.class(),
            sluice_worker::error::ErrorClass::User,
            "{file}: {error}"
        );
    }
}

/// Every manifest of `bench/nexmark/` is either checked against a batch reference or listed as
/// refused, so a query added to the suite cannot go untested.
#[test]
fn every_manifest_is_compared_with_a_reference_or_refused() {
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(bench_dir()).expect("bench/nexmark") {
        let file = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        if file.ends_with(".yaml")
            && !CASES.iter().any(|c| c.file == file)
            && !REFUSED.iter().any(|(f, _)| *f == file)
        {
            unlisted.push(file);
        }
    }
    assert!(
        unlisted.is_empty(),
        "neither compared nor refused: {unlisted:?}"
    );
}
