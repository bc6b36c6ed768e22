//! Replica-count decisions: the stateful-query limit (`ScalingLimited`) and the autoscaler step,
//! around the pure DS2 evaluation in [`crate::autoscaler`]. Metrics are gathered by the caller
//! (Prometheus or the workers' `/progress`) and arrive as an [`AutoscaleObservation`].

use sluice_crds::contract::CheckReport;
use sluice_crds::{AutoscaleMode, ScalingDecision, StreamingQuerySpec};

use super::{EventSeverity, PlannedEvent};
use crate::autoscaler::{self, Action, Policy};

/// Entries kept in `status.scalingHistory`.
pub const SCALING_HISTORY: usize = 20;

/// The autoscaler's inputs for one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoscaleObservation {
    pub metrics: autoscaler::Metrics,
    /// The autoscaler's windows as the last reconcile left them (kept by the caller).
    pub state: autoscaler::State,
    /// Wall-clock time of the metrics, ms since the epoch.
    pub now_ms: i64,
}

/// True when the spec may run more than one replica (`replicas > 1` or autoscaling): only then
/// does the stateful rule matter.
pub fn may_scale_out(spec: &StreamingQuerySpec) -> bool {
    let parallelism = &spec.parallelism;
    parallelism.replicas > 1 || parallelism.autoscale.as_ref().is_some_and(|a| a.enabled)
}

/// Whether a stateful query may run on more than one replica; when not, the `ScalingLimited`
/// reason and message (saying what to change to scale).
///
/// - Over the keyed exchange (`check` reports `plan: exchange`; docs/keyed-exchange.md), state is
///   split by key group, so the query scales unless it has no key (a global aggregate, e.g.
///   `GROUP BY window(ts, ...)` alone: all its state is one key group).
/// - Otherwise (issue 6), every multi-partition source must route rows by a `partitionKey` that
///   is a GROUP BY column, so that each key's state lives in exactly one task.
pub fn scaling_limit(report: &CheckReport, sources: &[String]) -> Option<(&'static str, String)> {
    if !report.stateful {
        return None;
    }
    let group_by = report.group_by.join(", ");
    if report.plan == "exchange" {
        if report.keys.is_empty() {
            return Some((
                "StatefulWithoutKey",
                format!(
                    "stateful query without a grouping key besides its window (GROUP BY {group_by}): \
                     its state is one key group, held at 1 replica; group by a key column too to scale"
                ),
            ));
        }
        return None;
    }
    for source in sources {
        match report.partition_keys.get(source) {
            None => {
                return Some((
                    "StatefulWithoutPartitionKey",
                    format!(
                        "stateful query over source `{source}` without a partitionKey: held at 1 replica; \
                         set partitionKey of source `{source}` to a GROUP BY column ({group_by}) to scale"
                    ),
                ));
            }
            Some(key) if !report.group_by.contains(key) => {
                return Some((
                    "StatefulWithoutPartitionKey",
                    format!(
                        "GROUP BY key ({group_by}) does not contain the partition key `{key}` of source \
                         `{source}`: held at 1 replica; add {key} to GROUP BY or set partitionKey to a \
                         GROUP BY column"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// The `status.scalingHistory` entry and the Normal event of one autoscaler decision.
/// Reasons: `ScaledUp` / `ScaledDown` when applied, `ScalingRecommended` in `recommend` mode.
pub fn decision(
    current: u32,
    to: u32,
    applied: bool,
    evaluation: &autoscaler::Evaluation,
    metrics: &autoscaler::Metrics,
    time: String,
) -> (ScalingDecision, PlannedEvent) {
    let decision = ScalingDecision {
        time,
        from_replicas: current,
        to_replicas: to,
        input_rate: metrics.input_rate.unwrap_or(0.0),
        processed_rate: metrics.processed_rate.unwrap_or(0.0),
        busy_ratio: metrics.busy_ratio.unwrap_or(0.0),
        backlog: metrics.backlog.unwrap_or(0.0),
        true_processing_rate: evaluation.true_processing_rate.unwrap_or(0.0),
        applied,
        reason: evaluation.reason.clone(),
    };
    let verb = if applied { "scaling" } else { "recommending" };
    let mut note = format!(
        "{verb} {current} -> {to}: {} (λ {:.1} rows/s, processed {:.1} rows/s, busy {:.2}, backlog {:.0} rows, TPR {:.1} rows/s, expected capacity {:.1} rows/s)",
        evaluation.reason,
        decision.input_rate,
        decision.processed_rate,
        decision.busy_ratio,
        decision.backlog,
        decision.true_processing_rate,
        decision.true_processing_rate * f64::from(to),
    );
    if !applied {
        note.push_str("; autoscale mode is recommend: set spec.parallelism.autoscale.mode: apply (or spec.parallelism.replicas) to act on it");
    }
    let reason = match (applied, to > current) {
        (false, _) => "ScalingRecommended",
        (true, true) => "ScaledUp",
        (true, false) => "ScaledDown",
    };
    let event = PlannedEvent {
        severity: EventSeverity::Normal,
        reason: reason.into(),
        action: "Autoscale".into(),
        note,
    };
    (decision, event)
}

/// One autoscaler evaluation of a settled query running `current` replicas: the new state and,
/// when it decided to scale, the decision and its event (`applied` in `apply` mode).
pub fn autoscale(
    spec: &StreamingQuerySpec,
    report: Option<&CheckReport>,
    current: u32,
    input: &AutoscaleObservation,
) -> (autoscaler::State, Option<(ScalingDecision, PlannedEvent)>) {
    let mut state = input.state.clone();
    let Some(auto) = spec.parallelism.autoscale.as_ref().filter(|a| a.enabled) else {
        return (state, None);
    };
    let tasks = report.map_or(auto.max_replicas, |r| r.tasks).max(1);
    let policy = match Policy::from_spec(auto, tasks) {
        Ok(policy) => policy,
        Err(message) => {
            tracing::warn!(%message, "bad autoscale settings");
            return (state, None);
        }
    };
    let evaluation =
        autoscaler::evaluate(&policy, &mut state, input.now_ms, current, &input.metrics);
    let Action::Scale(to) = evaluation.action else {
        return (state, None);
    };
    let applied = auto.mode == AutoscaleMode::Apply;
    let time = k8s_openapi::jiff::Timestamp::from_millisecond(input.now_ms)
        .map(|t| t.to_string())
        .unwrap_or_default();
    if applied {
        state.rescaled(input.now_ms);
    }
    (
        state,
        Some(decision(
            current,
            to,
            applied,
            &evaluation,
            &input.metrics,
            time,
        )),
    )
}
