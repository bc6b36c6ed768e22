//! The autoscaler's decision: a pure function of a query's metrics over time (docs/architecture.md,
//! "The operator").
//!
//! The rule is the Flink Kubernetes operator's autoscaler, itself after the DS2 paper (Kalavri et
//! al., "Three steps is all you need", OSDI 2018), adapted to micro-batches:
//!
//! * true processing rate per replica `TPR = processed / (b · replicas)`, where the busy ratio `b`
//!   is the share of wall time a replica spends running batches (`rate(busy_seconds)/replicas`);
//! * `required = ceil((λ + backlog / catchUp) / (TPR · targetUtilization))`, clamped to
//!   `[minReplicas, maxReplicas]` and to the task count (a replica without tasks does nothing);
//! * scale up once the utilization `(λ + backlog/catchUp) / (TPR · replicas)` has stayed above
//!   `targetUtilization + 0.1` for `scaleUpStabilization`;
//! * scale down only to the *largest* recommendation seen over `scaleDownWindow` (Flink's
//!   scale-down interval), so a dip in the load does not remove capacity that is needed again;
//! * no decision during `cooldown` after a rescale (rates are still settling).
//!
//! Units: rates in rows/s, backlog in rows, times in ms since the epoch.

use std::collections::VecDeque;
use std::time::Duration;

use sluice_crds::AutoscaleSpec;
use sluice_crds::duration::parse_duration;

/// Utilization above `target + SCALE_UP_MARGIN` asks for a scale-up (docs/architecture.md).
pub const SCALE_UP_MARGIN: f64 = 0.1;
/// Below this busy ratio a TPR estimate is noise (a nearly idle replica).
pub const MIN_BUSY_RATIO: f64 = 0.02;

/// The autoscaler's settings, resolved from `spec.parallelism.autoscale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_replicas: u32,
    /// Already clamped to the task count.
    pub max_replicas: u32,
    /// In (0, 1].
    pub target_utilization: f64,
    pub catch_up: Duration,
    pub scale_up_stabilization: Duration,
    pub scale_down_window: Duration,
    pub cooldown: Duration,
}

impl Policy {
    /// Resolves a spec; `tasks` caps `maxReplicas`. Unset durations take Flink-like defaults
    /// (catch-up 5 m, stabilization 1 m, scale-down window 5 m, cool-down 1 m).
    ///
    /// # Errors
    /// The message of a duration that does not parse.
    pub fn from_spec(spec: &AutoscaleSpec, tasks: u32) -> Result<Self, String> {
        let duration = |value: &Option<String>, default: u64| match value {
            Some(text) => parse_duration(text),
            None => Ok(Duration::from_secs(default)),
        };
        let max = spec.max_replicas.min(tasks.max(1)).max(1);
        Ok(Self {
            min_replicas: spec.min_replicas.clamp(1, max),
            max_replicas: max,
            target_utilization: spec.target_utilization.clamp(0.01, 1.0),
            catch_up: duration(&spec.catch_up_duration, 300)?,
            scale_up_stabilization: duration(&spec.scale_up_stabilization, 60)?,
            scale_down_window: duration(&spec.scale_down_window, 300)?,
            cooldown: duration(&spec.cooldown, 60)?,
        })
    }
}

/// One observation of a query's rates, averaged over the metrics window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// λ: rows/s arriving at the sources.
    pub input_rate: Option<f64>,
    /// rows/s processed.
    pub processed_rate: Option<f64>,
    /// Mean busy ratio per replica, 0..1.
    pub busy_ratio: Option<f64>,
    /// Unread rows.
    pub backlog: Option<f64>,
}

/// What the autoscaler remembers between evaluations (in memory; lost on operator restart,
/// which only delays a decision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// `(time ms, required replicas)` within the scale-down window.
    pub recommendations: VecDeque<(i64, u32)>,
    /// Since when the utilization has been above the scale-up threshold.
    pub high_since_ms: Option<i64>,
    /// When the replica count last changed.
    pub last_rescale_ms: Option<i64>,
}

impl State {
    /// Records a rescale done by anyone (autoscaler, spec edit): starts the cool-down and forgets
    /// recommendations made for the old replica count.
    pub fn rescaled(&mut self, now_ms: i64) {
        self.last_rescale_ms = Some(now_ms);
        self.recommendations.clear();
        self.high_since_ms = None;
    }
}

/// The verdict of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Keep the replica count.
    Hold,
    /// Change it to this.
    Scale(u32),
}

/// One evaluation with the numbers behind it (they go to `status.scalingHistory`).
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub action: Action,
    /// Replicas the current load needs, `None` when the metrics do not allow an estimate.
    pub required: Option<u32>,
    /// True processing rate per replica, rows/s.
    pub true_processing_rate: Option<f64>,
    /// `(λ + backlog/catchUp) / (TPR · replicas)`.
    pub utilization: Option<f64>,
    pub reason: String,
}

impl Evaluation {
    fn hold(reason: impl Into<String>) -> Self {
        Self {
            action: Action::Hold,
            required: None,
            true_processing_rate: None,
            utilization: None,
            reason: reason.into(),
        }
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Evaluates the metrics of a query running `current` replicas at `now_ms`.
///
/// Pure apart from `state`, which carries the windows from one evaluation to the next; call it
/// at a steady cadence (every few seconds) and call [`State::rescaled`] after any rescale.
pub fn evaluate(
    policy: &Policy,
    state: &mut State,
    now_ms: i64,
    current: u32,
    metrics: &Metrics,
) -> Evaluation {
    if let Some(last) = state.last_rescale_ms
        && now_ms - last < ms(policy.cooldown)
    {
        return Evaluation::hold("cooling down after a rescale");
    }
    let current = current.max(1);
    // The clamps alone (a spec edit moved min/max past the running count).
    let clamped = current.clamp(policy.min_replicas, policy.max_replicas);
    if clamped != current {
        state.rescaled(now_ms);
        return Evaluation {
            action: Action::Scale(clamped),
            reason: format!("outside [{}, {}]", policy.min_replicas, policy.max_replicas),
            ..Evaluation::hold("")
        };
    }
    let (Some(input), Some(processed), Some(busy)) = (
        metrics.input_rate,
        metrics.processed_rate,
        metrics.busy_ratio,
    ) else {
        state.high_since_ms = None;
        return Evaluation::hold("metrics missing: input rate, processed rate or busy ratio");
    };
    let backlog = metrics.backlog.unwrap_or(0.0).max(0.0);
    let input = input.max(0.0);
    let catch_up = policy.catch_up.as_secs_f64().max(1.0);
    let demand = input + backlog / catch_up;
    let (required, tpr) = if busy < MIN_BUSY_RATIO || processed <= 0.0 {
        if demand <= 0.0 {
            // Nothing arrives and nothing waits: the smallest deployment will do.
            (policy.min_replicas, None)
        } else {
            state.high_since_ms = None;
            return Evaluation::hold("replicas nearly idle: no processing-rate estimate yet");
        }
    } else {
        let tpr = processed / (busy.min(1.0) * f64::from(current));
        let needed = (demand / (tpr * policy.target_utilization)).ceil();
        let needed = if needed.is_finite() && needed >= 1.0 {
            needed.min(f64::from(u32::MAX)) as u32
        } else {
            1
        };
        (
            needed.clamp(policy.min_replicas, policy.max_replicas),
            Some(tpr),
        )
    };
    let utilization = tpr.map(|tpr| demand / (tpr * f64::from(current)));
    state.recommendations.push_back((now_ms, required));
    let window = ms(policy.scale_down_window);
    while state
        .recommendations
        .front()
        .is_some_and(|(at, _)| now_ms - at > window)
    {
        state.recommendations.pop_front();
    }
    let evaluation = |action, reason: String| Evaluation {
        action,
        required: Some(required),
        true_processing_rate: tpr,
        utilization,
        reason,
    };
    let high = utilization.is_some_and(|u| u > policy.target_utilization + SCALE_UP_MARGIN);
    if high && required > current {
        let since = *state.high_since_ms.get_or_insert(now_ms);
        if now_ms - since >= ms(policy.scale_up_stabilization) {
            state.rescaled(now_ms);
            return evaluation(
                Action::Scale(required),
                format!(
                    "utilization {:.2} above {:.2} for {} s",
                    utilization.unwrap_or(0.0),
                    policy.target_utilization + SCALE_UP_MARGIN,
                    (now_ms - since) / 1000
                ),
            );
        }
        return evaluation(Action::Hold, "scale-up stabilizing".into());
    }
    state.high_since_ms = None;
    if required < current {
        // Scale down only once a whole window of recommendations agrees.
        let observed_since = state
            .last_rescale_ms
            .map_or(i64::MIN, |t| t + ms(policy.cooldown));
        let covered = now_ms.saturating_sub(window) >= observed_since
            && state
                .recommendations
                .front()
                .is_some_and(|(at, _)| now_ms - at >= window * 9 / 10);
        let highest = state
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(current);
        if covered && highest < current {
            state.rescaled(now_ms);
            return evaluation(
                Action::Scale(highest),
                format!(
                    "highest recommendation over the {} s scale-down window is {highest}",
                    window / 1000
                ),
            );
        }
        return evaluation(Action::Hold, "scale-down window not yet agreed".into());
    }
    evaluation(Action::Hold, "load fits".into())
}

#[cfg(test)]
mod tests;
