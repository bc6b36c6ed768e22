//! End-to-end tests of the local backend with real servers: checkpoints on S3 (SeaweedFS), the
//! autoscaler reading a real Prometheus that scrapes the workers through file-based service
//! discovery, Kafka (tansu) for keyed input, real `sluice-worker` processes.
//!
//! Run by `e2e/local/run.sh` (after `cargo build -p sluice-worker`):
//! `cargo test -p sluice-operator --test local_e2e -- --ignored --test-threads=1 --nocapture`.
//! They are `#[ignore]`d so the workspace test step does not run them twice.
//!
//! Stateless tests move JSON-lines files with unique ids into an input folder at a controlled rate
//! and end by checking that the output ids are exactly the produced ids, each once. Stateful tests
//! count rows per event-time window (complete output mode into an overwriting file sink) and end
//! by checking every window's count against the input: a row lost or counted twice, or state
//! dropped by a rollout, changes a count.

mod support;

use std::time::{Duration, Instant};

use sluice_crds::conditions::{DEGRADED, SCALING_LIMITED};
use support::{
    FileProducer, Fixture, Folders, KafkaProducer, RateLoop, Spec, WindowCounts,
    assert_exactly_once, condition, count_windows, create_topic, drop_file, event_time,
    file_source, is_running, kafka_source, wait_for_counts,
};

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// Columns of the stateless tests' input.
const ID_V: &[(&str, &str)] = &[("id", "long"), ("v", "string")];

/// The stateless tests' query: copies `{id, v}` rows from files (`partitions` tasks) to Parquet.
fn copy_ids<'a>(io: &'a Folders, partitions: u32, trigger: &'a str, extra: String) -> Spec<'a> {
    Spec {
        source: file_source(&io.input, partitions, ID_V),
        sql: "SELECT id, v FROM events",
        output: &io.output,
        trigger,
        extra,
    }
}

/// `spec` lines of the stateful tests: Structured Streaming semantics, changed rows each batch.
/// Stateful queries write the whole result table each batch; the file sink replaces its previous
/// one (`overwrite: partitions`), so the output holds each window's latest count once.
const STATEFUL: &str = "  sqlScope: stream\n  outputMode: complete\n";

/// `spec` lines of an autoscaled query starting at 1 replica (at most 4) whose rows cost
/// `row_cost_micros` each per replica (`SLUICE_ROW_COST_MICROS`), with short windows so that a
/// decision comes within seconds.
fn autoscaling(row_cost_micros: u32, scale_down_window: &str) -> String {
    format!(
        r#"  env: [{{name: SLUICE_ROW_COST_MICROS, value: "{row_cost_micros}"}}]
  parallelism:
    replicas: 1
    autoscale:
      enabled: true
      minReplicas: 1
      maxReplicas: 4
      targetUtilization: 0.7
      catchUpDuration: 30s
      scaleUpStabilization: 4s
      scaleDownWindow: {scale_down_window}
      cooldown: 10s
"#
    )
}

/// (a) + (d): a load step makes the operator scale up within 2 minutes, the backlog drains; when
/// the load drops it scales back down after the scale-down window; output exactly once; the
/// measured rescale downtime is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn autoscaler_follows_a_load_step() {
    let Some(fixture) = Fixture::start("autoscaler_follows_a_load_step", |c| {
        c.metrics_window = secs(6);
    }) else {
        return;
    };
    let io = fixture.folders();
    let query = fixture.query("loadstep");
    // One replica: 8 tasks, 4 ms per row => 250 rows/s = 5 files/s; the trigger caps the whole
    // query at 8 files/s (one file per task per second).
    query.apply_spec(&copy_ids(&io, 8, "1s", autoscaling(4000, "20s")));
    let producer = FileProducer::start(&io.input, &io.staging, 2.0);
    query.wait("Running", secs(60), is_running).await;
    tokio::time::sleep(secs(10)).await;
    let before = query.status();
    assert!(
        before.scaling_history.is_empty(),
        "scaled under a load that fits: {:?}",
        before.scaling_history
    );

    // Step up: 6 files/s = 300 rows/s > 250 rows/s of one replica.
    producer.set_rate(6.0);
    let step = Instant::now();
    wait_for_scale_up(&query, step).await;
    // Backlog drains: lag (unread files) goes back to a few files.
    query
        .wait("the backlog to drain", secs(90), |s| {
            s.lag.is_some_and(|lag| lag <= 8)
        })
        .await;
    println!(
        "backlog drained {:.1} s after the step",
        step.elapsed().as_secs_f64()
    );

    // Step down: 1 file/s fits one replica; after the cool-down and the scale-down window.
    producer.set_rate(1.0);
    let drop = Instant::now();
    let down = wait_for_scaling(&query, false, secs(120)).await;
    println!(
        "scaled down after {:.1} s (window 20 s, cool-down 10 s): {down:?}",
        drop.elapsed().as_secs_f64(),
    );
    assert!(drop.elapsed() >= secs(15), "scaled down before the window");
    let rows = producer.finish().await;
    assert_exactly_once(&io.output, rows, secs(90)).await;
    let last = query
        .wait("1 replica Running after the scale-down", secs(60), |s| {
            is_running(s) && s.replicas == Some(1)
        })
        .await;
    println!(
        "final: phase {:?}, ready replicas {:?}, restarts {:?}, downtime {:?} s, history {}",
        last.phase,
        last.replicas,
        last.restarts,
        last.last_rescale_downtime_seconds,
        last.scaling_history.len()
    );
    fixture.shutdown().await;
}

/// Waits for an applied scale-up (`up`) or scale-down in `status.scalingHistory`; returns it.
async fn wait_for_scaling(
    query: &support::Query<'_>,
    up: bool,
    timeout: Duration,
) -> sluice_crds::ScalingDecision {
    let wanted = |d: &sluice_crds::ScalingDecision| {
        d.applied && (d.to_replicas > d.from_replicas) == up && d.to_replicas != d.from_replicas
    };
    let what = if up { "a scale-up" } else { "a scale-down" };
    let status = query
        .wait(what, timeout, |s| s.scaling_history.iter().any(wanted))
        .await;
    status
        .scaling_history
        .into_iter()
        .find(wanted)
        .expect("scaling decision")
}

/// Waits (2 minutes at most) for the autoscaler to take `query` above its replica count under a
/// load that started at `load_since`; prints the decision's inputs and, once the new replicas
/// run, the measured rescale downtime.
async fn wait_for_scale_up(
    query: &support::Query<'_>,
    load_since: Instant,
) -> sluice_crds::ScalingDecision {
    let up = wait_for_scaling(query, true, secs(120)).await;
    println!(
        "{} scaled up {} -> {} {:.1} s after the load step: input {:.1} rows/s, processed {:.1} rows/s, busy {:.2}, backlog {:.0} rows, TPR {:.1} rows/s",
        query.name,
        up.from_replicas,
        up.to_replicas,
        load_since.elapsed().as_secs_f64(),
        up.input_rate,
        up.processed_rate,
        up.busy_ratio,
        up.backlog,
        up.true_processing_rate
    );
    assert!(up.to_replicas >= 2, "{up:?}");
    print_rescale_downtime(query, up.to_replicas).await;
    up
}

/// Waits until `replicas` replicas run after a rescale and prints the measured downtime (last
/// commit of the old generation → first commit of the new one) from the status.
async fn print_rescale_downtime(query: &support::Query<'_>, replicas: u32) {
    let running = query
        .wait(
            &format!("{replicas} replicas Running with a measured downtime"),
            secs(60),
            |s| {
                is_running(s)
                    && s.replicas == i32::try_from(replicas).ok()
                    && s.last_rescale_downtime_seconds.is_some()
            },
        )
        .await;
    let downtime = running.last_rescale_downtime_seconds.unwrap_or(f64::NAN);
    println!(
        "RESCALE DOWNTIME (last commit of old generation -> first commit of new): {downtime:.3} s"
    );
}

/// Input of the stateful upgrade test, phase by phase: `FILES_PER_PHASE` files of
/// `ROWS_PER_PHASE_FILE` rows; row `id` is from device `d{id % 4}` with `level = id % 3`, and
/// phase `p` spreads its event times over the first `p + 1` ten-second windows, so window 0
/// gets rows in every phase.
const FILES_PER_PHASE: u64 = 2;
const ROWS_PER_PHASE_FILE: u64 = 40;

struct Reading {
    id: u64,
    device: String,
    level: u64,
    second: i64,
}

fn phase_readings(phase: u64) -> Vec<Vec<Reading>> {
    (0..FILES_PER_PHASE)
        .map(|file| {
            (0..ROWS_PER_PHASE_FILE)
                .map(|row| {
                    let id = phase * 1000 + file * ROWS_PER_PHASE_FILE + row;
                    Reading {
                        id,
                        device: format!("d{}", id % 4),
                        level: id % 3,
                        second: (id % (10 * (phase + 1))) as i64,
                    }
                })
                .collect()
        })
        .collect()
}

/// Counts per (window, device) a correct engine reports after `phases`, each `(phase, minimum
/// level)`: the filter of the SQL generation that read that phase.
fn expected_counts(phases: &[(u64, u64)]) -> WindowCounts {
    count_windows(phases.iter().flat_map(|&(phase, min_level)| {
        phase_readings(phase)
            .into_iter()
            .flatten()
            .filter(move |r| r.level >= min_level)
            .map(|r| (r.second, r.device))
    }))
}

/// (b): upgrades of a stateful query (count per device per 10-second window, complete mode).
/// A compatible SQL change (another filter on a non-key column, an added output column) keeps
/// the state: a window that counted N rows before and gets M after reports N + M. A changed
/// GROUP BY, an invalid SQL and a partition change are refused before the old workers stop and
/// the old generation keeps counting; a broken worker command is rolled back to the last stable
/// spec, state intact. Every count is exact at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn stateful_upgrades_keep_window_counts() {
    let Some(fixture) = Fixture::start("stateful_upgrades_keep_window_counts", |c| {
        c.ready_timeout = secs(8);
    }) else {
        return;
    };
    let Folders {
        input,
        staging,
        output,
    } = fixture.folders();
    let query = fixture.query("windows");
    let columns = [
        ("id", "long"),
        ("deviceId", "string"),
        ("level", "long"),
        ("ts", "timestamp"),
    ];
    let spec = |sql: &str, partitions: u32| {
        query.manifest(&Spec {
            source: file_source(&input, partitions, &columns),
            sql,
            output: &output,
            trigger: "500ms",
            extra: STATEFUL.into(),
        })
    };
    let feed = |phase: u64| {
        for (file, readings) in phase_readings(phase).into_iter().enumerate() {
            let lines: Vec<String> = readings
                .iter()
                .map(|r| {
                    format!(
                        r#"{{"id": {}, "deviceId": "{}", "level": {}, "ts": "{}"}}"#,
                        r.id,
                        r.device,
                        r.level,
                        event_time(r.second)
                    )
                })
                .collect();
            drop_file(
                &input,
                &staging,
                &format!("p{phase}-{file:03}.json"),
                &lines,
            );
        }
    };
    let v1_sql = "SELECT window(ts, '10 seconds') AS window, deviceId, count(*) AS n FROM events \
                  WHERE level >= 0 GROUP BY window(ts, '10 seconds'), deviceId";
    // Compatible: another filter on a non-key column and one more output column; the stateful
    // operator (keys window + deviceId, one count) is the same, so `check` accepts the checkpoint.
    let v2_sql = "SELECT window(ts, '10 seconds') AS window, deviceId, count(*) AS n, 'v2' AS version \
                  FROM events WHERE level >= 1 GROUP BY window(ts, '10 seconds'), deviceId";
    let v2 = spec(v2_sql, 1);

    query.apply(&spec(v1_sql, 1));
    feed(0);
    let first = query.wait_running(secs(60)).await;
    let generation = first.generation.expect("status.generation");
    let before = wait_for_counts(
        &output,
        &expected_counts(&[(0, 0)]),
        secs(60),
        "v1 to count phase 0",
    )
    .await;

    query.apply(&v2);
    query.wait_generation(generation + 1, secs(60)).await;
    println!(
        "compatible upgrade: generation {generation} -> {}",
        generation + 1
    );
    feed(1);
    let after = wait_for_counts(
        &output,
        &expected_counts(&[(0, 0), (1, 1)]),
        secs(60),
        "v2 to add phase 1 to v1's counts",
    )
    .await;
    let added = expected_counts(&[(1, 1)]);
    for device in ["d0", "d1", "d2", "d3"] {
        let key = (0, device.to_string());
        let (n, m) = (before[&key], added[&key]);
        println!(
            "window [0 s, 10 s) {device}: {n} rows before the upgrade + {m} after = {} reported",
            after[&key]
        );
        assert!(n > 0 && m > 0);
        assert_eq!(after[&key], n + m, "window counts did not continue");
    }

    // Incompatible: a changed GROUP BY changes the state's keys; refused against the
    // checkpoint before anything stops.
    query.apply(&spec(
        "SELECT window(ts, '10 seconds') AS window, count(*) AS n FROM events GROUP BY window(ts, '10 seconds')",
        1,
    ));
    let refused = query
        .wait_condition(
            DEGRADED,
            "True",
            "UpgradeRefused",
            "stateful operators changed",
            secs(30),
        )
        .await;
    println!(
        "GROUP BY change refused: {:?}",
        condition(&refused, DEGRADED)
    );
    assert_eq!(
        refused.generation,
        Some(generation + 1),
        "a refused spec rolled out"
    );
    feed(2);
    wait_for_counts(
        &output,
        &expected_counts(&[(0, 0), (1, 1), (2, 1)]),
        secs(60),
        "the running generation (v2) to keep counting after the refusal",
    )
    .await;

    // Invalid SQL and a partition change (the checkpoint fixes the task count): refused too.
    for (manifest, message) in [
        (spec("SELECT nope FROM events", 1), "No field named nope"),
        (spec(v2_sql, 2), "partitions"),
    ] {
        query.apply(&manifest);
        let refused = query
            .wait_condition(DEGRADED, "True", "UpgradeRefused", message, secs(30))
            .await;
        assert_eq!(refused.generation, Some(generation + 1));
    }
    feed(3);
    wait_for_counts(
        &output,
        &expected_counts(&[(0, 0), (1, 1), (2, 1), (3, 1)]),
        secs(60),
        "the running generation to keep counting after three refusals",
    )
    .await;

    // Broken worker command: the new generation never becomes Ready => rolled back; the rolled
    // back generation continues from the checkpoint with its state.
    query.apply(&v2.replace("spec:\n", "spec:\n  image: /bin/false\n"));
    let rolled = query
        .wait("rollback to the stable spec", secs(60), |s| {
            condition(s, DEGRADED).is_some_and(|(_, reason, m)| {
                reason == "SpecRejected" && m.contains("rolling back")
            }) && is_running(s)
        })
        .await;
    println!(
        "rolled back: generation {:?}, {:?}",
        rolled.generation,
        condition(&rolled, DEGRADED)
    );
    assert!(rolled.generation > Some(generation + 1));
    feed(4);
    let last = wait_for_counts(
        &output,
        &expected_counts(&[(0, 0), (1, 1), (2, 1), (3, 1), (4, 1)]),
        secs(60),
        "the rolled-back generation to continue the counts",
    )
    .await;
    println!(
        "exact window counts after 5 phases and 6 spec changes: {} (window, device) counts, window [0 s, 10 s) d0 = {}",
        last.len(),
        last[&(0, "d0".to_string())]
    );
    fixture.shutdown().await;
}

/// (c): kill -9 a worker every few seconds; the operator restarts it, output stays exactly once
/// and the status counts the restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn killed_workers_are_restarted_exactly_once() {
    let Some(fixture) = Fixture::start("killed_workers_are_restarted_exactly_once", |_| {}) else {
        return;
    };
    let io = fixture.folders();
    let query = fixture.query("recovery");
    query.apply_spec(&copy_ids(
        &io,
        4,
        "300ms",
        "  parallelism: {replicas: 2}\n".into(),
    ));
    let producer = FileProducer::start(&io.input, &io.staging, 5.0);
    query.wait_running(secs(60)).await;
    let kills = 8u32;
    let started = Instant::now();
    for round in 0..kills {
        let pid = *query.pids().get(&(round % 2)).expect("pid file");
        let killed = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {pid}");
        tokio::time::sleep(secs(4)).await;
    }
    println!(
        "killed {kills} workers in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let recovered = query
        .wait("restarts counted and Running", secs(60), |s| {
            s.restarts.unwrap_or(0) >= i64::from(kills) && is_running(s)
        })
        .await;
    println!("status.restarts = {:?}", recovered.restarts);
    let rows = producer.finish().await;
    assert_exactly_once(&io.output, rows, secs(60)).await;
    fixture.shutdown().await;
}

/// The process exists and has not exited (a zombie not reaped yet has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// `POST /stop` on a local worker needs the deployment's control token (issue 16): the operator
/// gives each worker process `SLUICE_CONTROL_TOKEN`; without it or with another token the answer
/// is 401 and the worker keeps running; with it the worker stops at a batch boundary (and the
/// operator, not having asked, restarts it); the output stays exactly once, and no file the
/// operator or its workers wrote (status, events, logs) holds the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn stop_needs_the_control_token() {
    use sluice_operator::clients::{http, http_authorized};

    let Some(fixture) = Fixture::start("stop_needs_the_control_token", |_| {}) else {
        return;
    };
    let io = fixture.folders();
    let query = fixture.query("control");
    query.apply_spec(&copy_ids(&io, 1, "300ms", String::new()));
    let producer = FileProducer::start(&io.input, &io.staging, 5.0);
    query.wait_running(secs(60)).await;
    let pid = *query.pids().get(&0).expect("pid file");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("worker environment");
    let token = environ
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix("SLUICE_CONTROL_TOKEN="))
        .expect("the worker has SLUICE_CONTROL_TOKEN")
        .to_string();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("worker command line");
    let args: Vec<&str> = cmdline
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .collect();
    let http_addr = args
        .iter()
        .position(|a| *a == "--http")
        .and_then(|i| args.get(i + 1))
        .expect("--http");
    let stop = format!("http://{http_addr}/stop");

    let refused = http("POST", &stop, secs(10)).await.expect_err("no token");
    assert!(refused.contains("HTTP 401"), "{refused}");
    let refused = http_authorized("POST", &stop, secs(10), Some("Bearer not-the-token"))
        .await
        .expect_err("wrong token");
    assert!(refused.contains("HTTP 401"), "{refused}");
    tokio::time::sleep(secs(3)).await;
    assert!(alive(pid), "a refused /stop left the worker running");
    assert_eq!(query.pids().get(&0), Some(&pid));

    let stopped = http_authorized("POST", &stop, secs(60), Some(&format!("Bearer {token}")))
        .await
        .expect("/stop with the token");
    let answer: serde_json::Value = serde_json::from_str(&stopped).expect("stop answer");
    assert_eq!(answer["stopped"], true, "{stopped}");
    support::wait_for("the worker to exit", secs(15), || {
        if alive(pid) {
            Err(format!("pid {pid} still running"))
        } else {
            Ok(())
        }
    })
    .await;
    query
        .wait("the worker restarted and Running", secs(60), |s| {
            s.restarts.unwrap_or(0) >= 1 && is_running(s)
        })
        .await;
    let rows = producer.finish().await;
    assert_exactly_once(&io.output, rows, secs(60)).await;
    // The token is a secret: no status, event, resolved query or worker log holds it.
    let leaked = fixture.files_containing(&token);
    assert!(
        leaked.is_empty(),
        "the control token was written to {leaked:?}"
    );
    fixture.shutdown().await;
}

/// Devices of the keyed Kafka input; device `d{i}` goes to partition `i % partitions`.
const DEVICES: u64 = 8;
/// Keyed record `k`: device `d{k % 8}`, event time `k / 80` s after the origin (100 rows per
/// device per 10-second window).
fn keyed_record(k: u64, partitions: u64) -> (String, String, i32) {
    let device = format!("d{}", k % DEVICES);
    let value = format!(
        r#"{{"deviceId": "{device}", "seq": {k}, "ts": "{}"}}"#,
        event_time((k / 80) as i64)
    );
    (device, value, ((k % DEVICES) % partitions) as i32)
}

/// What a windowed count over records `0..records` must report, per device or (`by_device`
/// false) per window only.
fn expected_keyed_counts(records: u64, by_device: bool) -> WindowCounts {
    count_windows((0..records).map(|k| {
        let device = if by_device {
            format!("d{}", k % DEVICES)
        } else {
            String::new()
        };
        ((k / 80) as i64, device)
    }))
}

/// The `partitionKey` rule (issue 6): a stateful query scales only when its source is
/// partitioned by a key the GROUP BY contains.
///
/// - `bykey` counts per device per window over a 4-partition topic keyed by `deviceId`
///   (`partitionKey: deviceId`): under a load above one replica's capacity the autoscaler takes
///   it above 1 replica; the counts are exact (each device's state moves with its task).
/// - `perwindow`, the same count without `deviceId` in the GROUP BY over a 1-partition topic,
///   asks for 3 replicas and is held at 1 with `ScalingLimited=True` and the reason in its
///   `<name>.status.yaml`; its counts are exact too.
/// - `spread`, that query over the 4-partition topic, runs over the keyed exchange (a window's
///   rows are in every task), but with no key besides the window its state is one key group:
///   held at 1 replica with `ScalingLimited` (`StatefulWithoutKey`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn partition_key_decides_whether_a_stateful_query_scales() {
    let test = "partition_key_decides_whether_a_stateful_query_scales";
    let Some(fixture) = Fixture::start(test, |c| {
        c.metrics_window = secs(6);
    }) else {
        return;
    };
    let Some(kafka) = fixture.kafka() else {
        return;
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (keyed, single) = (format!("keyed-{suffix}"), format!("single-{suffix}"));
    create_topic(&kafka, &keyed, 4).await;
    create_topic(&kafka, &single, 1).await;
    let columns = [("deviceId", "string"), ("seq", "long"), ("ts", "timestamp")];
    let by_device = "SELECT window(ts, '10 seconds') AS window, deviceId, count(*) AS n FROM events \
                     GROUP BY window(ts, '10 seconds'), deviceId";
    let per_window = "SELECT window(ts, '10 seconds') AS window, count(*) AS n FROM events \
                      GROUP BY window(ts, '10 seconds')";
    let outputs = (fixture.folder("bykey"), fixture.folder("perwindow"));

    // 2400 records (3 windows) on the single partition for `perwindow`, before it starts.
    let single_records = 2400;
    let records: Vec<_> = (0..single_records).map(|k| keyed_record(k, 1)).collect();
    KafkaProducer::new(&kafka, &single).send(&records).await;

    let (bykey, perwindow, spread) = (
        fixture.query("bykey"),
        fixture.query("perwindow"),
        fixture.query("spread"),
    );
    // One replica: 5 ms per row and at most 200 records per batch => 200 rows/s.
    bykey.apply_spec(&Spec {
        source: kafka_source(&kafka, &keyed, 200, "deviceId", &columns),
        sql: by_device,
        output: &outputs.0,
        trigger: "1s",
        extra: format!("{STATEFUL}{}", autoscaling(5000, "10m")),
    });
    perwindow.apply_spec(&Spec {
        source: kafka_source(&kafka, &single, 1000, "deviceId", &columns),
        sql: per_window,
        output: &outputs.1,
        trigger: "1s",
        extra: format!("{STATEFUL}  parallelism: {{replicas: 3}}\n"),
    });
    spread.apply_spec(&Spec {
        source: kafka_source(&kafka, &keyed, 1000, "deviceId", &columns),
        sql: per_window,
        output: &fixture.folder("spread"),
        trigger: "1s",
        extra: format!("{STATEFUL}  parallelism: {{replicas: 2}}\n"),
    });

    // 320 rows/s on the keyed topic: above one replica's 200 rows/s, within two replicas'.
    let producer = {
        let sender = KafkaProducer::new(&kafka, &keyed);
        RateLoop::start(320.0, move |range| {
            let sender = sender.clone();
            async move {
                let records: Vec<_> = range.map(|k| keyed_record(k, 4)).collect();
                sender.send(&records).await;
            }
        })
    };
    // Over the 4-partition topic the per-window count runs over the keyed exchange, but with no
    // key besides the window its state is one key group: held at 1 replica.
    let global = spread
        .wait(
            "spread held at 1 replica, StatefulWithoutKey",
            secs(60),
            |s| {
                is_running(s)
                    && s.replicas == Some(1)
                    && condition(s, SCALING_LIMITED).is_some_and(|(st, reason, m)| {
                        st == "True"
                            && reason == "StatefulWithoutKey"
                            && m.contains("one key group")
                    })
            },
        )
        .await;
    println!(
        "spread (4 partitions, a global aggregate per window) held at {:?}: {:?}",
        global.replicas,
        condition(&global, SCALING_LIMITED)
    );

    let step = Instant::now();
    bykey.wait_running(secs(60)).await;
    let limited = perwindow
        .wait("held at 1 replica, ScalingLimited", secs(60), |s| {
            is_running(s)
                && s.replicas == Some(1)
                && condition(s, SCALING_LIMITED).is_some_and(|(st, reason, m)| {
                    st == "True"
                        && reason == "StatefulWithoutPartitionKey"
                        && m.contains("does not contain the partition key")
                })
        })
        .await;
    println!(
        "perwindow (asks for 3 replicas) held at {:?}: {:?}",
        limited.replicas,
        condition(&limited, SCALING_LIMITED)
    );

    let up = wait_for_scale_up(&bykey, step).await;
    let scaled = bykey.status();
    assert_eq!(
        condition(&scaled, SCALING_LIMITED).map(|(st, ..)| st),
        Some("False".to_string()),
        "a query partitioned by a grouped key is not limited"
    );
    // A few more seconds of load on the new replicas, then drain and compare every count.
    tokio::time::sleep(secs(5)).await;
    let produced = producer.finish().await;
    let counts = wait_for_counts(
        &outputs.0,
        &expected_keyed_counts(produced, true),
        secs(120),
        "bykey's exact counts per device and window",
    )
    .await;
    println!(
        "bykey: {produced} records, {} (window, device) counts exact on {} replicas",
        counts.len(),
        up.to_replicas
    );
    let counts = wait_for_counts(
        &outputs.1,
        &expected_keyed_counts(single_records, false),
        secs(60),
        "perwindow's exact counts per window",
    )
    .await;
    println!(
        "perwindow: {single_records} records, {} window counts exact",
        counts.len()
    );
    let held = perwindow.status();
    assert_eq!(held.replicas, Some(1));
    assert!(
        held.scaling_history.is_empty(),
        "{:?}",
        held.scaling_history
    );
    fixture.shutdown().await;
}

/// A scheduled `availableNow` query (every 4 s, the local backend's seconds field) runs over
/// growing input: each run reads only what the previous ones did not, `status.lastRun` names its
/// batch range and rows, a failed run is reported and the next run reads the same input again,
/// and the output holds every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn scheduled_available_now_runs_read_each_row_once() {
    let Some(fixture) = Fixture::start("scheduled_runs", |_| {}) else {
        return;
    };
    let io = fixture.folders();
    let query = fixture.query("nightly");
    let file = |n: i64, ids: std::ops::Range<i64>| {
        let lines: Vec<String> = ids
            .map(|id| format!(r#"{{"id": {id}, "v": "r{id}"}}"#))
            .collect();
        drop_file(&io.input, &io.staging, &format!("part-{n:03}.json"), &lines);
    };
    let manifest = |extra: &str| {
        query
            .manifest(&copy_ids(
                &io,
                1,
                "1s",
                format!("  schedule: {{cron: \"*/4 * * * * *\"}}\n{extra}"),
            ))
            .replace(
                "trigger: {processingTime: \"1s\"}",
                "trigger: {availableNow: true}",
            )
    };
    // Run 1 reads two files (maxFilesPerTrigger 1: two batches).
    file(0, 0..6);
    file(1, 6..10);
    query.apply(&manifest(""));
    let finished = |status: &sluice_crds::StreamingQueryStatus| {
        status
            .last_run
            .clone()
            .filter(|r| r.succeeded.is_some() && r.end.is_some())
    };
    let first = query
        .wait("the first run", secs(90), |s| {
            finished(s).is_some_and(|r| r.succeeded == Some(true))
        })
        .await
        .last_run
        .expect("lastRun");
    assert_eq!(
        (first.rows, first.first_batch_id, first.last_batch_id),
        (Some(10), Some(0), Some(1)),
        "{first:?}"
    );
    // Run 2: only the new file.
    file(2, 10..15);
    let second = query
        .wait("the second run", secs(60), |s| {
            finished(s).is_some_and(|r| r.start != first.start && r.rows == Some(5))
        })
        .await
        .last_run
        .expect("lastRun");
    assert_eq!(
        (
            second.succeeded,
            second.first_batch_id,
            second.last_batch_id
        ),
        (Some(true), Some(2), Some(2)),
        "{second:?}"
    );
    // A run that fails (the worker refuses the manifest: its input is outside the allowed
    // paths) is reported; the file waiting meanwhile is read by the next run.
    file(3, 15..22);
    query.apply(&manifest(
        "  env: [{name: SLUICE_ALLOWED_PATHS, value: /nowhere}]\n",
    ));
    let failed = query
        .wait("a failed run", secs(60), |s| {
            finished(s).is_some_and(|r| r.succeeded == Some(false))
                && condition(s, "Failed").is_some_and(|c| c.0 == "True")
        })
        .await;
    let (_, reason, message) = condition(&failed, "Failed").expect("Failed condition");
    assert_eq!(reason, "RunFailed");
    assert!(message.contains("replica 0 exited"), "{message}");
    query.apply(&manifest(""));
    let third = query
        .wait("the run after the failure", secs(60), |s| {
            finished(s).is_some_and(|r| r.succeeded == Some(true) && r.rows == Some(7))
        })
        .await;
    let last = third.last_run.clone().expect("lastRun");
    assert_eq!(
        (
            last.first_batch_id,
            last.last_batch_id,
            last.batches.as_deref()
        ),
        (Some(3), Some(3), Some("3..3")),
        "{last:?}"
    );
    assert_eq!(
        condition(&third, "Succeeded").map(|c| (c.0, c.2)),
        Some(("True".to_string(), "batches 3..3, 7 rows".to_string()))
    );
    assert_eq!(third.phase, Some(sluice_crds::Phase::Scheduled));
    assert_exactly_once(&io.output, 22, secs(10)).await;
    fixture.shutdown().await;
}

/// The Parquet files of the file sink under `dir` (names relative to it).
fn output_files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.insert(
                    path.strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real servers and the worker binary: run e2e/local/run.sh"]
async fn a_restored_query_replays_into_the_file_sink_each_row_once() {
    let Some(fixture) = Fixture::start("restore", |_| {}) else {
        return;
    };
    let io = fixture.folders();
    let query = fixture.query("restored");
    let file = |n: i64, ids: std::ops::Range<i64>| {
        let lines: Vec<String> = ids
            .map(|id| format!(r#"{{"id": {id}, "v": "r{id}"}}"#))
            .collect();
        drop_file(&io.input, &io.staging, &format!("part-{n:03}.json"), &lines);
    };
    // Three files, three batches (maxFilesPerTrigger 1).
    file(0, 0..5);
    file(1, 5..10);
    file(2, 10..15);
    query.apply_spec(&copy_ids(&io, 1, "1s", String::new()));
    query.wait_running(secs(90)).await;
    assert_exactly_once(&io.output, 15, secs(60)).await;
    let before = output_files(&io.output);
    // Restore to batch 0: the workers stop, the checkpoint goes back, batches 1 and 2 replay.
    query.apply_spec(&copy_ids(&io, 1, "1s", "  restore: {batchId: 0}\n".into()));
    let restored = query
        .wait("Restored", secs(90), |s| {
            condition(s, "Restored").is_some_and(|c| c.0 == "True")
        })
        .await;
    let recorded = restored.restore.clone().expect("status.restore");
    assert_eq!(
        (recorded.batch_id, recorded.outcome.as_str()),
        (0, "Restored")
    );
    let generation = recorded.generation.expect("the new checkpoint generation");
    let (_, _, message) = condition(&restored, "Restored").expect("Restored");
    assert!(
        message.starts_with(&format!(
            "restored to batch 0: checkpoint generation {generation} is current"
        )),
        "{message}"
    );
    query.wait_running(secs(90)).await;
    // New input after the replay: every row exactly once, and the later batches' old files were
    // retracted and written again (a restore that did nothing would leave them).
    file(3, 15..20);
    assert_exactly_once(&io.output, 20, secs(60)).await;
    let after = output_files(&io.output);
    let retracted: Vec<&String> = before.difference(&after).collect();
    assert!(
        !retracted.is_empty(),
        "no file of batches 1..2 was retracted: {before:?} -> {after:?}"
    );
    // Once per batch id: the same spec again restores nothing more.
    let again = query.status().restore.expect("status.restore");
    assert_eq!(again.generation, Some(generation));
    fixture.shutdown().await;
}
