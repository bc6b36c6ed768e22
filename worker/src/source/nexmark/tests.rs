use std::collections::BTreeSet;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

use super::java_random::JavaRandom;
use super::model::{self, Kind};
use super::*;

/// The Beam Nexmark generator's events 0..=60 and 100000..=100010 at 1,000 events/s (default
/// configuration, one generator), printed by the reference Java code as
/// `n|P|id|name|email|creditCard|city|state|dateTime|extra`,
/// `n|A|id|itemName|description|initialBid|reserve|dateTime|expires|seller|category|extra` and
/// `n|B|auction|bidder|price|dateTime|extra` (times in ms).
const REFERENCE: &str = include_str!("reference_events.txt");

fn line(n: u64, rate: u64) -> String {
    match model::kind_of(n) {
        Kind::Person => {
            let p = model::person(n, rate);
            format!(
                "{n}|P|{}|{}|{}|{}|{}|{}|{}|{}",
                p.id, p.name, p.email_address, p.credit_card, p.city, p.state, p.date_time, p.extra
            )
        }
        Kind::Auction => {
            let a = model::auction(n, rate);
            format!(
                "{n}|A|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
                a.id,
                a.item_name,
                a.description,
                a.initial_bid,
                a.reserve,
                a.date_time,
                a.expires,
                a.seller,
                a.category,
                a.extra
            )
        }
        Kind::Bid => {
            let b = model::bid(n, rate);
            format!(
                "{n}|B|{}|{}|{}|{}|{}",
                b.auction, b.bidder, b.price, b.date_time, b.extra
            )
        }
    }
}

#[test]
fn java_random_matches_java_util_random() {
    // Values of `new java.util.Random(seed)` from a JVM.
    assert_eq!(JavaRandom::new(0).next_int(), -1_155_484_576);
    assert_eq!(JavaRandom::new(42).next_int(), -1_170_105_035);
    assert_eq!(JavaRandom::new(0).next_double(), 0.730_967_787_376_657);
    assert_eq!(JavaRandom::new(7).next_int_bounded(10), 6);
    assert_eq!(JavaRandom::new(7).next_int_bounded(16), 11);
    assert_eq!(JavaRandom::new(-3).next_long(), 4_957_811_011_739_826_691);
}

#[test]
fn first_events_equal_the_reference_generator() {
    let mut checked = 0;
    for expected in REFERENCE.lines() {
        let n: u64 = expected
            .split('|')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("event number");
        assert_eq!(line(n, 1000), expected, "event {n}");
        checked += 1;
    }
    assert_eq!(checked, 72);
}

#[test]
fn mix_ids_times_and_prices_follow_the_reference_rules() {
    let rate = 1000;
    let (mut persons, mut auctions, mut bids) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..5_000u64 {
        match model::kind_of(n) {
            Kind::Person => persons.push((n, model::person(n, rate))),
            Kind::Auction => auctions.push((n, model::auction(n, rate))),
            Kind::Bid => bids.push((n, model::bid(n, rate))),
        }
    }
    // 1:3:46 per 50 events.
    assert_eq!(
        (persons.len(), auctions.len(), bids.len()),
        (100, 300, 4600)
    );
    // Person and auction ids are consecutive from 1000, in event order.
    let person_ids: Vec<i64> = persons.iter().map(|(_, p)| p.id).collect();
    assert_eq!(person_ids, (1000..1100).collect::<Vec<_>>());
    let auction_ids: Vec<i64> = auctions.iter().map(|(_, a)| a.id).collect();
    assert_eq!(auction_ids, (1000..1300).collect::<Vec<_>>());
    for (n, p) in &persons {
        assert_eq!(
            p.date_time,
            model::BASE_TIME_MS + *n as i64,
            "1 ms per event"
        );
    }
    for (n, a) in &auctions {
        assert_eq!(a.date_time, model::BASE_TIME_MS + *n as i64);
        assert!((10..15).contains(&a.category), "{a:?}");
        assert!((100..=100_000_000).contains(&a.initial_bid), "{a:?}");
        assert!(a.reserve > a.initial_bid, "{a:?}");
        assert!(a.expires > a.date_time, "{a:?}");
        // Sellers are people created so far, or up to 10 ahead.
        let last_person = model::last_base0_person_id(*n as i64) + 1000;
        assert!((1000..=last_person + 10).contains(&a.seller), "{a:?}");
    }
    for (n, b) in &bids {
        assert_eq!(b.date_time, model::BASE_TIME_MS + *n as i64);
        assert!((100..=100_000_000).contains(&b.price), "{b:?}");
        let last_auction = model::last_base0_auction_id(*n as i64) + 1000;
        // In-flight auctions: the last 100 up to 10 ahead.
        assert!(
            (last_auction - 100..=last_auction + 10).contains(&b.auction),
            "{b:?}"
        );
        let last_person = model::last_base0_person_id(*n as i64) + 1000;
        assert!((1000..=last_person + 10).contains(&b.bidder), "{b:?}");
    }
}

#[test]
fn hot_auctions_and_bidders_get_the_reference_shares() {
    // Over 200,000 events: P(hot auction) = 1 - 1/2, P(hot bidder) = 1 - 1/4, plus the few random
    // picks that land on them. (Over the first few thousand events the shares are higher in the
    // reference too: `new Random(n)`'s first draw is correlated across consecutive seeds.)
    let (mut bids, mut hot_auction, mut hot_bidder) = (0u32, 0u32, 0u32);
    for n in (0..200_000u64).filter(|n| model::kind_of(*n) == Kind::Bid) {
        let b = model::bid(n, 1000);
        let last_auction = model::last_base0_auction_id(n as i64);
        let last_person = model::last_base0_person_id(n as i64);
        bids += 1;
        hot_auction += u32::from(b.auction == last_auction / 100 * 100 + 1000);
        hot_bidder += u32::from(b.bidder == last_person / 100 * 100 + 1 + 1000);
    }
    assert_eq!(bids, 184_000);
    let auction_share = f64::from(hot_auction) / f64::from(bids);
    let bidder_share = f64::from(hot_bidder) / f64::from(bids);
    assert!((0.50..0.52).contains(&auction_share), "{auction_share}");
    assert!((0.745..0.76).contains(&bidder_share), "{bidder_share}");
}

#[test]
fn event_times_follow_events_per_second() {
    assert_eq!(model::event_time_ms(0, 10_000), model::BASE_TIME_MS);
    assert_eq!(model::event_time_ms(9, 10_000), model::BASE_TIME_MS);
    assert_eq!(model::event_time_ms(10, 10_000), model::BASE_TIME_MS + 1);
    assert_eq!(model::event_time_ms(7, 3), model::BASE_TIME_MS + 2333);
}

fn source(table: NexmarkTable, partitions: u32, max_events: Option<u64>) -> NexmarkSource {
    NexmarkSource::new(
        "t",
        &NexmarkSourceSpec {
            table,
            events_per_second: Some(1000),
            max_events,
            partitions,
        },
    )
}

fn times(batch: &RecordBatch) -> Vec<i64> {
    let column = batch
        .column_by_name("dateTime")
        .expect("dateTime")
        .as_primitive::<TimestampMicrosecondType>();
    column.values().to_vec()
}

#[tokio::test]
async fn a_range_reads_the_same_rows_twice() {
    for table in [
        NexmarkTable::Person,
        NexmarkTable::Auction,
        NexmarkTable::Bid,
    ] {
        let source = source(table, 1, None);
        let range = serde_json::json!({"startMs": 0, "start": 0, "end": 200});
        let mut task = source.open(0, &[]).await.expect("open");
        let first = task.read(&range).await.expect("read").batches;
        let again = task.read(&range).await.expect("read").batches;
        let other = source.open(0, &[]).await.expect("open");
        let mut other = other;
        let third = other.read(&range).await.expect("read").batches;
        assert_eq!(first, again);
        assert_eq!(first, third);
        let expected_rows = match table {
            NexmarkTable::Person => 4,
            NexmarkTable::Auction => 12,
            NexmarkTable::Bid => 184,
        };
        assert_eq!(first[0].num_rows(), expected_rows, "{table:?}");
        assert_eq!(first[0].schema(), table_schema(table));
    }
}

#[tokio::test]
async fn bid_rows_are_the_model_bids() {
    let source = source(NexmarkTable::Bid, 1, None);
    let mut task = source.open(0, &[]).await.expect("open");
    let out = task
        .read(&serde_json::json!({"startMs": 0, "start": 0, "end": 6}))
        .await
        .expect("read");
    let batch = &out.batches[0];
    let prices = batch.column(2).as_primitive::<Int64Type>();
    assert_eq!(prices.values().to_vec(), vec![32_530_001, 468_715]);
    let bidders = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(bidders.values().to_vec(), vec![1001, 1009]);
    assert_eq!(
        times(batch),
        vec![
            (model::BASE_TIME_MS + 4) * 1000,
            (model::BASE_TIME_MS + 5) * 1000
        ]
    );
    let channels = batch.column(3).as_string::<i32>();
    assert!(channels.iter().all(|c| c.is_some_and(|c| !c.is_empty())));
}

#[tokio::test]
async fn partitions_are_disjoint_and_cover_every_event() {
    // At 1,000 events/s event n is at BASE + n ms: the time names the event.
    let total = 1_000u64;
    let partitions = 3u32;
    let source = source(NexmarkTable::Bid, partitions, Some(total));
    let mut seen = Vec::new();
    for task in 0..partitions {
        let mut reader = source.open(task, &[]).await.expect("open");
        reader.freeze().await.expect("freeze");
        // Paced from "now": nothing yet. Read the whole partition's range directly.
        let end = (total - u64::from(task)).div_ceil(u64::from(partitions));
        let range = serde_json::json!({"startMs": 0, "start": 0, "end": end});
        for batch in reader.read(&range).await.expect("read").batches {
            for t in times(&batch) {
                let n = (t / 1000 - model::BASE_TIME_MS) as u64;
                assert_eq!(n % u64::from(partitions), u64::from(task), "event {n}");
                seen.push(n);
            }
        }
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event in two partitions");
    let bids: BTreeSet<u64> = (0..total)
        .filter(|n| model::kind_of(*n) == Kind::Bid)
        .collect();
    assert_eq!(unique, bids);
}

#[tokio::test]
async fn unpaced_plans_stop_at_max_events() {
    let source = NexmarkSource::new(
        "t",
        &NexmarkSourceSpec {
            table: NexmarkTable::Bid,
            events_per_second: None,
            max_events: Some(250_001),
            partitions: 2,
        },
    );
    let mut task = source.open(1, &[]).await.expect("open");
    task.freeze().await.expect("freeze");
    assert_eq!(
        task.backlog(),
        Some(125_000 * 46 / 50),
        "bids among the partition's events"
    );
    let mut ranges = Vec::new();
    while let Some(range) = task.plan(PlanLimit::PerTrigger).await.expect("plan") {
        let range: NexmarkRange = serde_json::from_value(range).expect("range");
        ranges.push((range.start, range.end));
    }
    // Partition 1 holds the odd events below 250001: 125000 of them, 100000 per batch.
    assert_eq!(ranges, vec![(0, 100_000), (100_000, 125_000)]);
    assert_eq!(task.backlog(), Some(0));
    let mut once = source.open(0, &[]).await.expect("open");
    let all: NexmarkRange = serde_json::from_value(
        once.plan(PlanLimit::Unbounded)
            .await
            .expect("plan")
            .expect("range"),
    )
    .expect("range");
    assert_eq!((all.start, all.end), (0, 125_001));
}

#[tokio::test]
async fn paced_plans_follow_events_per_second() {
    let source = source(NexmarkTable::Bid, 1, None);
    let logged = serde_json::json!({"startMs": now_ms() - 2_000, "start": 0, "end": 500});
    let mut task = source.open(0, &[logged]).await.expect("open");
    let next: NexmarkRange = serde_json::from_value(
        task.plan(PlanLimit::PerTrigger)
            .await
            .expect("plan")
            .expect("range"),
    )
    .expect("range");
    assert_eq!(next.start, 500);
    assert!(
        (2_000..2_500).contains(&next.end),
        "2 s at 1000/s: {next:?}"
    );
}

/// Nexmark q1 (currency conversion) over the bid table of 2,000 events in two partitions: every
/// bid once, its price times 0.908.
#[tokio::test]
async fn q1_over_the_bid_table_converts_every_bid() {
    use arrow::datatypes::Float64Type;

    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: nexmark-q1}}
spec:
  sources:
    - name: bid
      nexmark: {{table: bid, maxEvents: 2000, partitions: 2}}
  sql: SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid
  sink: {{memory: {{name: nexmark-q1}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let engine = crate::Engine::start(crate::QueryConfig::local(query), crate::Shared::new())
        .await
        .expect("start");
    let summary = engine.run(|_| {}).await.expect("run");
    assert_eq!(summary.input_rows, 1840);
    assert_eq!(summary.output_rows, 1840);
    let mut rows = Vec::new();
    for batch in crate::sink::memory::read_table("nexmark-q1")
        .values()
        .flatten()
    {
        let auction = batch.column(0).as_primitive::<Int64Type>();
        let bidder = batch.column(1).as_primitive::<Int64Type>();
        let price = batch.column(2).as_primitive::<Float64Type>();
        let time = times(batch);
        let extra = batch.column(4).as_string::<i32>();
        for (i, time) in time.into_iter().enumerate() {
            rows.push((
                time,
                auction.value(i),
                bidder.value(i),
                price.value(i).to_bits(),
                extra.value(i).to_string(),
            ));
        }
    }
    rows.sort();
    let mut expected: Vec<_> = (0..2000u64)
        .filter(|n| model::kind_of(*n) == Kind::Bid)
        .map(|n| {
            let b = model::bid(n, model::DEFAULT_EVENTS_PER_SECOND);
            (
                b.date_time * 1000,
                b.auction,
                b.bidder,
                (0.908 * b.price as f64).to_bits(),
                b.extra,
            )
        })
        .collect();
    expected.sort();
    assert_eq!(rows.len(), 1840);
    assert!(rows == expected, "q1 rows differ from the model's bids");
}

/// Two nexmark sources over the same stream join as the model's events do: bids with the auction
/// they bid on, placed within 10 s of its start (a stream–stream join with watermarks).
#[tokio::test]
async fn bid_and_auction_sources_join_on_the_same_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: nexmark-join}}
spec:
  sources:
    - name: bid
      nexmark: {{table: bid, maxEvents: 3000}}
      watermark: {{column: dateTime, delay: 10s}}
    - name: auction
      nexmark: {{table: auction, maxEvents: 3000}}
      watermark: {{column: dateTime, delay: 10s}}
  sql: |
    SELECT a.id, b.bidder, b.price
    FROM auction a JOIN bid b
      ON a.id = b.auction
     AND b.dateTime BETWEEN a.dateTime AND a.dateTime + INTERVAL '10 seconds'
  sink: {{memory: {{name: nexmark-join}}}}
  outputMode: append
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{}"}}
"#,
        dir.path().join("ckpt").display()
    );
    let query = sluice_crds::parse_manifest(&text).expect("manifest");
    let engine = crate::Engine::start(crate::QueryConfig::local(query), crate::Shared::new())
        .await
        .expect("start");
    engine.run(|_| {}).await.expect("run");
    let mut rows = Vec::new();
    for batch in crate::sink::memory::read_table("nexmark-join")
        .values()
        .flatten()
    {
        let id = batch.column(0).as_primitive::<Int64Type>();
        let bidder = batch.column(1).as_primitive::<Int64Type>();
        let price = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            rows.push((id.value(i), bidder.value(i), price.value(i)));
        }
    }
    rows.sort();
    let rate = model::DEFAULT_EVENTS_PER_SECOND;
    let auctions: Vec<_> = (0..3000u64)
        .filter(|n| model::kind_of(*n) == Kind::Auction)
        .map(|n| model::auction(n, rate))
        .collect();
    let mut expected: Vec<_> = (0..3000u64)
        .filter(|n| model::kind_of(*n) == Kind::Bid)
        .map(|n| model::bid(n, rate))
        .flat_map(|b| {
            auctions
                .iter()
                .filter(|a| {
                    a.id == b.auction
                        && a.date_time <= b.date_time
                        && b.date_time <= a.date_time + 10_000
                })
                .map(|a| (a.id, b.bidder, b.price))
                .collect::<Vec<_>>()
        })
        .collect();
    expected.sort();
    assert!(expected.len() > 1000, "{} matches", expected.len());
    assert_eq!(rows.len(), expected.len());
    assert!(rows == expected, "join rows differ from the model's");
}
