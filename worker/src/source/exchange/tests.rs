//! The stateful planner's decisions for given source commits and clocks.

use std::collections::BTreeMap;

use super::plan::{PlannedWatermark, SourceBatch, StatefulPlan, next_plan};
use crate::checkpoint::exchange::ExchangeCommit;

const MINUTE: i64 = 60_000;

fn watermarks() -> Vec<PlannedWatermark> {
    vec![PlannedWatermark {
        source: "events".into(),
        delay_ms: 10_000,
        idle_timeout_ms: MINUTE,
        tasks: 2,
    }]
}

fn batch(batch_id: u64, committed_ms: i64, max_event_ms: Option<i64>) -> SourceBatch {
    SourceBatch {
        batch_id,
        committed_ms,
        input_rows: u64::from(max_event_ms.is_some()),
        exchange: ExchangeCommit {
            objects: Vec::new(),
            max_event_ms: max_event_ms
                .map(|m| BTreeMap::from([("events".to_string(), m)]))
                .unwrap_or_default(),
            caught_up: true,
            finished: false,
        },
    }
}

fn plan(
    previous: Option<&StatefulPlan>,
    new: Vec<(u32, Vec<SourceBatch>)>,
    now_ms: i64,
) -> Option<StatefulPlan> {
    next_plan(
        previous,
        &new.into_iter().collect(),
        2,
        &watermarks(),
        now_ms,
    )
}

#[test]
fn the_first_plan_consumes_every_new_commit_without_a_watermark() {
    let first = plan(
        None,
        vec![
            (
                0,
                vec![
                    batch(0, 1_000, Some(100_000)),
                    batch(1, 1_100, Some(130_000)),
                ],
            ),
            (1, vec![batch(0, 1_000, Some(90_000))]),
            (2, Vec::new()),
        ],
        2_000,
    )
    .expect("a plan");
    assert_eq!(first.batch_id, 0);
    assert_eq!(first.parallelism, 2);
    assert_eq!(first.sources, BTreeMap::from([(0, (0, 1)), (1, (0, 0))]));
    // A batch's watermark comes from earlier batches: none before the first.
    assert_eq!(first.watermark_ms, None);
    assert_eq!(first.progress[&0].max_event_ms["events"], 130_000);
    assert_eq!(first.progress[&0].last_batch, 1);
    // No batch wrote objects (the test's commits list none): nothing to read.
    assert!(first.objects.is_empty());
}

#[test]
fn the_watermark_is_the_slowest_active_task_minus_the_delay() {
    let first = plan(
        None,
        vec![
            (0, vec![batch(0, 1_000, Some(130_000))]),
            (1, vec![batch(0, 1_000, Some(90_000))]),
        ],
        1_000,
    )
    .expect("first");
    let second = plan(
        Some(&first),
        vec![(0, vec![batch(1, 2_000, Some(140_000))]), (1, Vec::new())],
        2_000,
    )
    .expect("second");
    assert_eq!(second.batch_id, 1);
    assert_eq!(second.sources, BTreeMap::from([(0, (1, 1))]));
    // min(130 s, 90 s) − 10 s, from the first plan's input only.
    assert_eq!(second.watermark_ms, Some(80_000));
}

#[test]
fn an_idle_task_stops_holding_the_watermark_back() {
    let first = plan(
        None,
        vec![
            (0, vec![batch(0, 1_000, Some(130_000))]),
            (1, vec![batch(0, 1_000, Some(90_000))]),
        ],
        1_000,
    )
    .expect("first");
    // 29 s later both are active: the slower one holds the watermark.
    let second = plan(
        Some(&first),
        vec![(0, vec![batch(1, 30_000, Some(200_000))])],
        30_000,
    )
    .expect("second");
    assert_eq!(second.watermark_ms, Some(80_000));
    // At 62 s task 1 has read nothing for 61 s (timeout 60 s); task 0 read rows at 30 s.
    let third = plan(
        Some(&second),
        vec![(0, vec![batch(2, 62_000, Some(210_000))])],
        62_000,
    )
    .expect("third");
    assert_eq!(third.watermark_ms, Some(190_000));
}

#[test]
fn a_task_that_is_behind_is_never_idle() {
    let mut behind = batch(0, 1_000, Some(90_000));
    behind.exchange.caught_up = false;
    let first = plan(
        None,
        vec![(0, vec![batch(0, 1_000, Some(130_000))]), (1, vec![behind])],
        1_000,
    )
    .expect("first");
    // Ten minutes without a commit from task 1 (a restart, a busy machine): it still has input
    // waiting, so it holds the watermark at its own events.
    let later = plan(
        Some(&first),
        vec![(0, vec![batch(1, 600_000, Some(140_000))])],
        600_000,
    )
    .expect("second");
    assert_eq!(later.watermark_ms, Some(80_000));
}

#[test]
fn when_every_task_is_idle_or_finished_the_highest_event_time_counts() {
    let mut last = batch(0, 1_000, Some(90_000));
    last.exchange.finished = true;
    let first = plan(
        None,
        vec![(0, vec![batch(0, 1_000, Some(130_000))]), (1, vec![last])],
        1_000,
    )
    .expect("first");
    // Task 1 finished (a drained bounded trigger): task 0 alone holds the watermark.
    let no_data = plan(Some(&first), Vec::new(), 2_000).expect("the watermark moved");
    assert!(no_data.sources.is_empty());
    assert_eq!(no_data.watermark_ms, Some(120_000));
    // Nothing new and the watermark stays: no plan.
    assert_eq!(plan(Some(&no_data), Vec::new(), 3_000), None);
    // A minute later task 0 is idle too: all idle, the max counts — still 120 s.
    assert_eq!(plan(Some(&no_data), Vec::new(), 70_000), None);
}

#[test]
fn the_watermark_never_moves_back() {
    let first = plan(
        None,
        vec![
            (0, vec![batch(0, 1_000, Some(130_000))]),
            (1, vec![batch(0, 1_000, None)]),
        ],
        1_000,
    )
    .expect("1");
    let second = plan(Some(&first), Vec::new(), 1_500).expect("2: watermark moves");
    assert_eq!(second.watermark_ms, Some(120_000));
    // Task 1 starts reading older events: the minimum drops, the watermark does not.
    let third = plan(
        Some(&second),
        vec![(1, vec![batch(1, 2_000, Some(50_000))])],
        2_000,
    )
    .expect("3");
    let fourth = plan(
        Some(&third),
        vec![(1, vec![batch(2, 2_500, Some(60_000))])],
        2_500,
    )
    .expect("4");
    assert_eq!(fourth.watermark_ms, Some(120_000));
}

#[test]
fn a_task_not_heard_from_holds_the_watermark() {
    // Task 1 has not committed yet: its files may hold the oldest events.
    let first = plan(None, vec![(0, vec![batch(0, 1_000, Some(130_000))])], 1_000).expect("1");
    assert_eq!(plan(Some(&first), Vec::new(), 2_000), None);
    // It commits an empty first batch: it has nothing to read, the watermark moves.
    let empty = batch(0, 2_000, None);
    let second = plan(Some(&first), vec![(1, vec![empty])], 2_000).expect("2");
    assert_eq!(second.watermark_ms, None, "from the first plan's input");
    let third = plan(Some(&second), Vec::new(), 3_000).expect("3");
    assert_eq!(third.watermark_ms, Some(120_000));
}

#[test]
fn nothing_to_plan_before_any_commit() {
    assert_eq!(plan(None, vec![(0, Vec::new())], 1_000), None);
}
