//! Decision sequences on simulated metrics: one replica processes 100 rows/s.

use super::*;

const CAPACITY: f64 = 100.0;

fn policy() -> Policy {
    Policy {
        min_replicas: 1,
        max_replicas: 8,
        target_utilization: 0.7,
        catch_up: Duration::from_secs(60),
        scale_up_stabilization: Duration::from_secs(10),
        scale_down_window: Duration::from_secs(60),
        cooldown: Duration::from_secs(20),
    }
}

/// Metrics of `replicas` replicas under input `load` with `backlog` rows waiting.
fn metrics(load: f64, replicas: u32, backlog: f64) -> Metrics {
    let capacity = CAPACITY * f64::from(replicas);
    let processed = if backlog > 0.0 {
        capacity
    } else {
        load.min(capacity)
    };
    Metrics {
        input_rate: Some(load),
        processed_rate: Some(processed),
        busy_ratio: Some(processed / capacity),
        backlog: Some(backlog),
    }
}

/// Runs the loop: every 5 s an evaluation; applied decisions change the replica count; the
/// backlog follows the load. Returns `(time s, from, to)` of each rescale.
fn simulate(start: u32, seconds: i64, load_at: impl Fn(i64) -> f64) -> (Vec<(i64, u32, u32)>, u32) {
    let policy = policy();
    let mut state = State::default();
    let mut replicas = start;
    let mut backlog = 0.0f64;
    let mut rescales = Vec::new();
    for t in (0..seconds).step_by(5) {
        let load = load_at(t);
        let capacity = CAPACITY * f64::from(replicas);
        backlog = (backlog + (load - capacity) * 5.0).max(0.0);
        let evaluation = evaluate(
            &policy,
            &mut state,
            t * 1000,
            replicas,
            &metrics(load, replicas, backlog),
        );
        if let Action::Scale(to) = evaluation.action {
            rescales.push((t, replicas, to));
            replicas = to;
        }
    }
    (rescales, replicas)
}

#[test]
fn steady_load_never_rescales() {
    let (rescales, replicas) = simulate(2, 600, |_| 120.0);
    assert_eq!(rescales, vec![]);
    assert_eq!(replicas, 2);
}

#[test]
fn step_up_scales_after_stabilization_to_the_ds2_count() {
    // 60 rows/s fits one replica (util 0.6); 250 rows/s needs ceil(250 / (100 · 0.7)) = 4.
    let (rescales, replicas) = simulate(1, 120, |t| if t < 30 { 60.0 } else { 250.0 });
    let (t, from, to) = rescales[0];
    assert_eq!(from, 1);
    // Stabilization is 10 s, evaluated every 5 s: first high at 30 s, scale at 40 s.
    assert_eq!(t, 40);
    // The backlog built up meanwhile adds to the demand: at least 4.
    assert!(to >= 4, "{rescales:?}");
    assert!(replicas >= 4);
}

#[test]
fn step_down_waits_for_the_scale_down_window() {
    // 300 rows/s on 5 replicas, then 50 rows/s: one replica suffices, but only after a full
    // scale-down window (60 s) of low recommendations.
    let (rescales, replicas) = simulate(5, 200, |t| if t < 30 { 300.0 } else { 50.0 });
    assert_eq!(rescales.len(), 1, "{rescales:?}");
    let (t, from, to) = rescales[0];
    assert_eq!((from, to), (5, 1));
    assert!(t >= 30 + 60 - 5, "scaled down too early at {t} s");
    assert_eq!(replicas, 1);
}

#[test]
fn oscillating_load_does_not_flap() {
    // 20 s high (250), 20 s low (50): the scale-down window always contains a high
    // recommendation, so once scaled up it stays up.
    let (rescales, replicas) = simulate(1, 600, |t| if (t / 20) % 2 == 0 { 250.0 } else { 50.0 });
    assert!(!rescales.is_empty());
    // The first scale-up may overshoot (the backlog built up meanwhile adds to the demand); after
    // it the count never drops below what the high phase needs (ceil(250 / 70) = 4), and it
    // does not go back and forth.
    assert!(
        rescales.iter().all(|(_, _, to)| *to >= 4),
        "scaled below the high-load need under oscillation: {rescales:?}"
    );
    assert!(rescales.len() <= 2, "{rescales:?}");
    assert!(replicas >= 4);
}

#[test]
fn noisy_rates_around_a_fitting_load_hold() {
    // 2 replicas at 100 rows/s ± 30 % noise (deterministic): utilization 0.35..0.65 < 0.8.
    let noise = [0.3, -0.3, 0.1, -0.2, 0.25, -0.1, 0.0, 0.2, -0.25, 0.15];
    let (rescales, _) = simulate(2, 600, |t| {
        100.0 * (1.0 + noise[usize::try_from(t / 5).unwrap_or(0) % noise.len()])
    });
    // Scaling down to 1 would need every recommendation in a 60 s window to be 1, which a
    // load of 130 rows/s (ceil(130/70) = 2) prevents.
    assert_eq!(rescales, vec![]);
}

#[test]
fn missing_metrics_hold_and_reset_stabilization() {
    let policy = policy();
    let mut state = State::default();
    let high = metrics(300.0, 1, 1000.0);
    assert_eq!(
        evaluate(&policy, &mut state, 0, 1, &high).action,
        Action::Hold
    );
    assert!(state.high_since_ms.is_some());
    let missing = Metrics {
        busy_ratio: None,
        ..high
    };
    let evaluation = evaluate(&policy, &mut state, 5_000, 1, &missing);
    assert_eq!(evaluation.action, Action::Hold);
    assert!(
        evaluation.reason.contains("missing"),
        "{}",
        evaluation.reason
    );
    assert_eq!(state.high_since_ms, None);
    // Stabilization starts again: no scale at 10 s (only 0 s of high load since 10 s).
    assert_eq!(
        evaluate(&policy, &mut state, 10_000, 1, &high).action,
        Action::Hold
    );
    assert!(matches!(
        evaluate(&policy, &mut state, 20_000, 1, &high).action,
        Action::Scale(_)
    ));
}

#[test]
fn cooldown_blocks_decisions_and_clamps_apply() {
    let mut policy = policy();
    let mut state = State::default();
    state.rescaled(0);
    let evaluation = evaluate(&policy, &mut state, 10_000, 1, &metrics(1000.0, 1, 1e6));
    assert_eq!(evaluation.action, Action::Hold);
    assert!(evaluation.reason.contains("cooling"));
    // Required count is capped by max (and max by the task count in from_spec).
    policy.max_replicas = 3;
    policy.scale_up_stabilization = Duration::ZERO;
    let evaluation = evaluate(&policy, &mut state, 30_000, 1, &metrics(1000.0, 1, 1e6));
    assert_eq!(evaluation.action, Action::Scale(3));
    assert_eq!(evaluation.required, Some(3));
    assert_eq!(evaluation.true_processing_rate, Some(100.0));
}

#[test]
fn idle_query_goes_to_min_and_tasks_cap_max() {
    let spec: AutoscaleSpec = serde_json::from_value(serde_json::json!({
        "enabled": true, "minReplicas": 2, "maxReplicas": 16, "scaleDownWindow": "30s",
        "cooldown": "0s"
    }))
    .expect("spec");
    let policy = Policy::from_spec(&spec, 4).expect("policy");
    assert_eq!((policy.min_replicas, policy.max_replicas), (2, 4));
    let mut state = State::default();
    let idle = Metrics {
        input_rate: Some(0.0),
        processed_rate: Some(0.0),
        busy_ratio: Some(0.0),
        backlog: Some(0.0),
    };
    let mut last = Action::Hold;
    for t in 0..=7 {
        last = evaluate(&policy, &mut state, t * 5_000, 4, &idle).action;
        if last != Action::Hold {
            break;
        }
    }
    assert_eq!(last, Action::Scale(2));
}
