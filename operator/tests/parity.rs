//! Parity of the two backends: one table of scenarios driven through the one `plan`, with the
//! observations each backend would make of the same world — the Kubernetes backend's
//! (`observe_stateful_set` of the StatefulSet it applied, `observe_reports` of its stopped workers' `GET /report`) and the local
//! backend's (`processes_observation` of its worker processes). Both must produce the same phases,
//! conditions, events and worker actions, and the table says which.
//!
//! This is a pure test: the backends' observation builders are the real ones, the world (what
//! runs, what is Ready, what crashes) is scripted; no API server or process is involved.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::contract::CheckReport;
use sluice_crds::contract::JobReport;
use sluice_crds::{
    Phase, Retention, StreamingQuery, StreamingQueryStatus, parse_manifest, validate_spec,
};
use sluice_operator::autoscaler::Metrics;
use sluice_operator::backend::kubernetes::{observe_reports, observe_stateful_set, stateful_set};
use sluice_operator::backend::local::{ProcessSnapshot, processes_observation};
use sluice_operator::plan::{
    AutoscaleObservation, CheckObservation, CheckpointObservation, DesiredWorkers, Observation,
    OperatorConfig, Plan, WorkersAction, WorkersObservation, plan, plan_cleanup,
};

const BASE: &str = "s3://ckpt/sluice/default/q/uid-1/";
const SOURCE: &str =
    "  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 4}\n";
const SQL_V1: &str = "  sql: SELECT * FROM events\n  sink: {console: {}}\n";
const SQL_V2: &str = "  sql: SELECT value FROM events\n  sink: {console: {}}\n";
const AUTOSCALE: &str = "  parallelism:\n    autoscale: {enabled: true, mode: apply, minReplicas: 1, maxReplicas: 3, targetUtilization: 0.8, scaleUpStabilization: 0s, cooldown: 0s}\n";

fn spec(parts: &[&str]) -> String {
    parts.concat()
}

fn config() -> OperatorConfig {
    OperatorConfig {
        default_image: "sluice-worker:test".into(),
        default_checkpoint_location: Some("s3://ckpt/sluice".into()),
        ready_timeout: Duration::from_secs(60),
        ..OperatorConfig::default()
    }
}

/// What the world does between reconciles.
#[derive(Clone, Debug)]
enum Do {
    /// Reconcile with this check outcome.
    Reconcile(Check),
    /// Reconcile with the autoscaler's metrics showing λ = 300 rows/s against 100 rows/s.
    ReconcileUnderLoad,
    /// The user applies this spec.
    Edit(String),
    /// Every replica of the applied deployment becomes Ready.
    RollOut,
    /// The workers crash over and over (three exits, kubelet says CrashLoopBackOff).
    CrashLoop,
    /// Time passes (seconds).
    Wait(i64),
    /// Replica 0 stops on a poison batch (exit code 3, `PoisonBatch: ...` as its last words).
    Poison,
}

#[derive(Clone, Debug)]
enum Check {
    Passed,
    Stateful,
    Refused(&'static str),
    Unavailable,
}

/// What a reconcile must decide.
#[derive(Clone, Debug, PartialEq)]
struct Expect {
    phase: Option<Phase>,
    /// `None`: leave the deployment alone; `Some((generation, replicas, stop_first))`: apply.
    action: Option<(i64, i32, bool)>,
    events: Vec<&'static str>,
    /// `(type, status, reason)` of conditions that must be present.
    conditions: Vec<(&'static str, &'static str, &'static str)>,
}

fn expect(
    phase: Phase,
    action: Option<(i64, i32, bool)>,
    events: &[&'static str],
    conditions: &[(&'static str, &'static str, &'static str)],
) -> Option<Expect> {
    Some(Expect {
        phase: Some(phase),
        action,
        events: events.to_vec(),
        conditions: conditions.to_vec(),
    })
}

/// A deployment as it runs in the scripted world.
#[derive(Clone, Debug)]
struct Running {
    desired: DesiredWorkers,
    ready: i32,
    crashing: bool,
    restarts: i64,
    /// The poison-batch line replica 0 stopped with.
    poison: Option<String>,
}

const POISON: &str = "PoisonBatch: batch 7 task 2 after 3 attempts: column \"amount\": invalid digit found in string";

struct Harness {
    query: StreamingQuery,
    running: Option<Running>,
    now: i64,
    claimed: bool,
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).expect("valid time"))
}

impl Harness {
    fn new(spec: &str) -> Self {
        Self {
            query: manifest(spec, 1),
            running: None,
            now: 0,
            claimed: true,
        }
    }

    /// What the Kubernetes backend observes: the StatefulSet it applied with the world's
    /// readiness, and the reports of stopped workers while some are not Ready.
    fn kubernetes(&self) -> Option<WorkersObservation> {
        let running = self.running.as_ref()?;
        let mut set = stateful_set(&self.query, &running.desired).expect("statefulset");
        set.metadata.generation = Some(1);
        set.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: running.desired.replicas,
            ready_replicas: Some(running.ready),
            updated_replicas: Some(running.desired.replicas),
            ..StatefulSetStatus::default()
        });
        let mut observed = observe_stateful_set(&set);
        if observed.ready_replicas < observed.replicas {
            let reports: Vec<(i32, JobReport)> = (0..running.desired.replicas)
                .filter_map(|ordinal| report(ordinal, running).map(|r| (ordinal, r)))
                .collect();
            observe_reports(&mut observed, &reports);
        }
        Some(observed)
    }

    /// What the local backend observes: its processes.
    fn local(&self) -> Option<WorkersObservation> {
        let running = self.running.as_ref()?;
        let desired = &running.desired;
        Some(processes_observation(&ProcessSnapshot {
            generation: desired.generation,
            restart_hash: desired.restart_hash.clone(),
            section_hashes: desired.section_hashes.clone(),
            replicas: u32::try_from(desired.replicas).expect("replicas"),
            healthy: u32::try_from(running.ready).expect("ready"),
            restarted_now: u32::from(running.crashing),
            restarts: running.restarts,
            recent_exits: if running.crashing { 3 } else { 0 },
            last_exit: running
                .crashing
                .then(|| "replica 0 exited (exit status: 1)".to_string()),
            restart_nonce: desired.restart_nonce.clone(),
            poison: running.poison.clone(),
        }))
    }

    fn plan_with(&self, workers: Option<WorkersObservation>, check: &Check, load: bool) -> Plan {
        let observation = Observation {
            workers,
            checkpoint: CheckpointObservation::Ready {
                location: BASE.into(),
                claimed_now: !self.claimed,
            },
            progress: None,
            restore: sluice_operator::plan::RestoreObservation::NotRun,
            check: match check {
                Check::Passed => CheckObservation::Passed(CheckReport {
                    tasks: 4,
                    ..CheckReport::default()
                }),
                Check::Stateful => CheckObservation::Passed(CheckReport {
                    stateful: true,
                    group_by: vec!["window".into()],
                    tasks: 4,
                    ..CheckReport::default()
                }),
                Check::Refused(message) => CheckObservation::Refused((*message).into()),
                Check::Unavailable => CheckObservation::Unavailable("store unreachable".into()),
            },
            autoscale: load.then(|| AutoscaleObservation {
                metrics: Metrics {
                    input_rate: Some(300.0),
                    processed_rate: Some(100.0),
                    busy_ratio: Some(1.0),
                    backlog: Some(0.0),
                },
                state: Default::default(),
                now_ms: at(self.now).0.as_millisecond(),
            }),
        };
        plan(
            &self.query,
            validate_spec(&self.query.spec),
            &observation,
            &config(),
            at(self.now),
        )
        .expect("plan")
    }

    fn reconcile(&mut self, check: &Check, load: bool) -> Expect {
        let on_kubernetes = self.plan_with(self.kubernetes(), check, load);
        let on_local = self.plan_with(self.local(), check, load);
        let (kubernetes, local) = (outcome(&on_kubernetes), outcome(&on_local));
        assert_eq!(kubernetes, local, "the backends disagree");
        assert_eq!(
            without_exit_details(&on_kubernetes.status),
            without_exit_details(&on_local.status),
            "the backends write different status"
        );
        self.claimed = true;
        self.query.status = Some(on_kubernetes.status.clone());
        if let WorkersAction::Apply(desired) = &on_kubernetes.workers {
            let changed = self.running.as_ref().is_none_or(|r| {
                r.desired.generation != desired.generation
                    || r.desired.replicas != desired.replicas
                    || r.desired.restart_nonce != desired.restart_nonce
            });
            if changed {
                self.running = Some(Running {
                    desired: (**desired).clone(),
                    ready: 0,
                    crashing: false,
                    restarts: self.running.as_ref().map_or(0, |r| r.restarts),
                    poison: None,
                });
            }
        }
        kubernetes
    }

    fn run(&mut self, step: &Do) -> Option<Expect> {
        match step {
            Do::Reconcile(check) => return Some(self.reconcile(check, false)),
            Do::ReconcileUnderLoad => return Some(self.reconcile(&Check::Passed, true)),
            Do::Edit(spec) => {
                let generation = self.query.metadata.generation.unwrap_or(1) + 1;
                let status = self.query.status.take();
                self.query = manifest(spec, generation);
                self.query.status = status;
            }
            Do::RollOut => {
                if let Some(running) = self.running.as_mut() {
                    running.ready = running.desired.replicas;
                    running.crashing = false;
                }
            }
            Do::CrashLoop => {
                if let Some(running) = self.running.as_mut() {
                    running.ready = 0;
                    running.crashing = true;
                    running.restarts += 3;
                }
            }
            Do::Wait(seconds) => self.now += seconds,
            Do::Poison => {
                if let Some(running) = self.running.as_mut() {
                    running.ready = 0;
                    running.poison = Some(POISON.into());
                }
            }
        }
        None
    }
}

/// What replica `ordinal` serves on `GET /report` in the scripted world: replica 0's poison
/// batch (exit 3) or crash (exit 1) with the starts its pod counted; nothing from a replica that
/// is merely not Ready yet.
fn report(ordinal: i32, running: &Running) -> Option<JobReport> {
    if ordinal != 0 {
        return None;
    }
    let starts = Some(u32::try_from(running.restarts + 1).expect("starts"));
    if let Some(line) = &running.poison {
        return Some(JobReport {
            exit_code: 3,
            message: format!("{line}\n"),
            starts,
        });
    }
    running.crashing.then(|| JobReport {
        exit_code: 1,
        message: "error: sink unreachable\n".into(),
        starts,
    })
}

fn manifest(spec: &str, generation: i64) -> StreamingQuery {
    parse_manifest(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q, namespace: default, uid: uid-1, generation: {generation}}}\nspec:\n{spec}"
    ))
    .expect("test manifest")
}

fn outcome(plan: &Plan) -> Expect {
    let conditions = plan
        .status
        .conditions
        .iter()
        .map(|c| (leak(&c.type_), leak(&c.status), leak(&c.reason)))
        .collect();
    Expect {
        phase: plan.status.phase,
        action: match &plan.workers {
            WorkersAction::Apply(d) => Some((d.generation, d.replicas, d.stop_first)),
            WorkersAction::LeaveAlone => None,
        },
        events: plan.events.iter().map(|e| leak(&e.reason)).collect(),
        conditions,
    }
}

/// The status with the backend's own words about the last worker exit (a pod's state or a
/// process's exit status) cut from condition messages: everything else must be equal.
fn without_exit_details(status: &StreamingQueryStatus) -> StreamingQueryStatus {
    let mut status = status.clone();
    for condition in &mut status.conditions {
        if let Some(at) = condition.message.find("(last: ") {
            condition.message.truncate(at);
        }
    }
    status
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_string().into_boxed_str())
}

/// A created query, rolled out and Running at generation 1 with one replica.
fn running_v1() -> Steps {
    vec![
        (
            Do::Reconcile(Check::Passed),
            expect(Phase::Starting, Some((1, 1, false)), &["Created"], &[]),
        ),
        (Do::RollOut, None),
        (
            Do::Reconcile(Check::Passed),
            expect(
                Phase::Running,
                Some((1, 1, false)),
                &["Running"],
                &[
                    ("Ready", "True", "Running"),
                    ("Degraded", "False", "AsExpected"),
                ],
            ),
        ),
    ]
}

/// Steps of a scenario: what happens, and what the reconcile (if it is one) must decide.
type Steps = Vec<(Do, Option<Expect>)>;

/// The table: (name, first spec, steps).
fn scenarios() -> Vec<(&'static str, String, Steps)> {
    let v1 = spec(&[SOURCE, SQL_V1]);
    let v2 = spec(&[SOURCE, SQL_V2]);
    let with = |steps: Steps| {
        let mut all = running_v1();
        all.extend(steps);
        all
    };
    vec![
        ("create", v1.clone(), running_v1()),
        (
            "compatible SQL change: a new generation after the old one stops",
            v1.clone(),
            with(vec![
                (Do::Edit(v2.clone()), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Upgrading,
                        Some((2, 1, true)),
                        &["UpgradeStarted"],
                        &[("Progressing", "True", "Upgrading")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Running, Some((2, 1, false)), &["Running"], &[]),
                ),
            ]),
        ),
        (
            "incompatible SQL change: refused, the old generation is never touched",
            v1.clone(),
            with(vec![
                (Do::Edit(v2.clone()), None),
                (
                    Do::Reconcile(Check::Refused("stateful operators changed")),
                    expect(
                        Phase::Running,
                        None,
                        &["UpgradeRefused"],
                        &[("Degraded", "True", "UpgradeRefused")],
                    ),
                ),
                (
                    Do::Reconcile(Check::Refused("stateful operators changed")),
                    expect(
                        Phase::Running,
                        None,
                        &[],
                        &[("Degraded", "True", "UpgradeRefused")],
                    ),
                ),
            ]),
        ),
        (
            "partition change: refused against the checkpoint",
            v1.clone(),
            with(vec![
                (Do::Edit(v1.replace("partitions: 4", "partitions: 8")), None),
                (
                    Do::Reconcile(Check::Refused("partitions changed from 4 to 8")),
                    expect(
                        Phase::Running,
                        None,
                        &["UpgradeRefused"],
                        &[("Degraded", "True", "UpgradeRefused")],
                    ),
                ),
            ]),
        ),
        (
            "a check that cannot complete holds the deployment",
            v1.clone(),
            with(vec![
                (Do::Edit(v2.clone()), None),
                (
                    Do::Reconcile(Check::Unavailable),
                    expect(
                        Phase::Running,
                        None,
                        &["UpgradeCheckUnavailable"],
                        &[("Degraded", "True", "UpgradeCheckUnavailable")],
                    ),
                ),
            ]),
        ),
        (
            "failed rollout rolls back to the last stable spec",
            v1.clone(),
            with(vec![
                (Do::Edit(v2.clone()), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Upgrading,
                        Some((2, 1, true)),
                        &["UpgradeStarted"],
                        &[],
                    ),
                ),
                (Do::Wait(30), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Upgrading, Some((2, 1, false)), &[], &[]),
                ),
                (Do::Wait(31), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::RollingBack,
                        Some((3, 1, true)),
                        &["RolledBack"],
                        &[("Degraded", "True", "SpecRejected")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Running,
                        Some((3, 1, false)),
                        &["Running"],
                        &[
                            ("Degraded", "True", "SpecRejected"),
                            ("Ready", "True", "Running"),
                        ],
                    ),
                ),
            ]),
        ),
        (
            "crash loop",
            v1.clone(),
            with(vec![
                (Do::CrashLoop, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Starting,
                        Some((1, 1, false)),
                        &["WorkerRestarted", "WorkersCrashing"],
                        &[("Degraded", "True", "WorkersCrashing")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Running,
                        Some((1, 1, false)),
                        &["Running"],
                        &[("Degraded", "False", "AsExpected")],
                    ),
                ),
            ]),
        ),
        (
            "scale up and down: the old count stops first",
            v1.clone(),
            with(vec![
                (
                    Do::Edit(format!("{v1}  parallelism: {{replicas: 3}}\n")),
                    None,
                ),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Scaling,
                        Some((1, 3, true)),
                        &["Scaling"],
                        &[("ScalingLimited", "False", "AsExpected")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Running, Some((1, 3, false)), &["Running"], &[]),
                ),
                (Do::Edit(v1.clone()), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Scaling, Some((1, 1, true)), &["Scaling"], &[]),
                ),
            ]),
        ),
        (
            "scale up under load: the autoscaler decides",
            spec(&[SOURCE, SQL_V1, AUTOSCALE]),
            vec![
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Starting, Some((1, 1, false)), &["Created"], &[]),
                ),
                (Do::RollOut, None),
                (
                    Do::ReconcileUnderLoad,
                    expect(
                        Phase::Scaling,
                        Some((1, 3, true)),
                        &["ScaledUp"],
                        &[("Progressing", "True", "Scaling")],
                    ),
                ),
            ],
        ),
        (
            "stateful query without a partition key is held at one replica",
            spec(&[SOURCE, SQL_V1, "  parallelism: {replicas: 3}\n"]),
            vec![
                (
                    Do::Reconcile(Check::Stateful),
                    expect(
                        Phase::Starting,
                        Some((1, 1, false)),
                        &["Created", "ScalingLimited"],
                        &[("ScalingLimited", "True", "StatefulWithoutPartitionKey")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Stateful),
                    expect(
                        Phase::Running,
                        Some((1, 1, false)),
                        &["Running"],
                        &[("ScalingLimited", "True", "StatefulWithoutPartitionKey")],
                    ),
                ),
            ],
        ),
        (
            "restartNonce: a change restarts the same generation (stop first), the same one does not",
            v1.clone(),
            with(vec![
                (
                    Do::Edit(format!("{v1}  restartNonce: \"2026-12-07T09:00\"\n")),
                    None,
                ),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Starting,
                        Some((1, 1, true)),
                        &["RestartRequested"],
                        &[("Ready", "False", "Starting")],
                    ),
                ),
                (Do::RollOut, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Running, Some((1, 1, false)), &["Running"], &[]),
                ),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Running, Some((1, 1, false)), &[], &[]),
                ),
            ]),
        ),
        (
            "poison batch: the workers stop, no rollback, a new restartNonce retries",
            v1.clone(),
            with(vec![
                (Do::Poison, None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Failed,
                        Some((1, 0, false)),
                        &["PoisonBatch"],
                        &[
                            ("PoisonBatch", "True", "PoisonBatch"),
                            ("Degraded", "True", "PoisonBatch"),
                            ("Ready", "False", "PoisonBatch"),
                        ],
                    ),
                ),
                (Do::RollOut, None),
                (Do::Wait(120), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Failed,
                        Some((1, 0, false)),
                        &[],
                        &[
                            ("PoisonBatch", "True", "PoisonBatch"),
                            ("Progressing", "False", "PoisonBatch"),
                        ],
                    ),
                ),
                (
                    Do::Edit(format!("{v1}  restartNonce: fixed-the-sink\n")),
                    None,
                ),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Starting,
                        Some((1, 1, true)),
                        &["Resumed"],
                        &[
                            ("PoisonBatch", "False", "Retrying"),
                            ("Degraded", "False", "AsExpected"),
                        ],
                    ),
                ),
            ]),
        ),
        (
            "suspend and resume",
            v1.clone(),
            with(vec![
                (Do::Edit(format!("{v1}  suspend: true\n")), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(
                        Phase::Suspended,
                        Some((1, 0, false)),
                        &["Suspended"],
                        &[("Ready", "False", "Suspended")],
                    ),
                ),
                (Do::RollOut, None),
                (Do::Edit(v1.clone()), None),
                (
                    Do::Reconcile(Check::Passed),
                    expect(Phase::Starting, Some((1, 1, true)), &["Resumed"], &[]),
                ),
            ]),
        ),
    ]
}

#[test]
fn both_backends_decide_the_same_in_every_scenario() {
    for (name, first, steps) in scenarios() {
        let mut harness = Harness::new(&first);
        for (index, (step, expected)) in steps.iter().enumerate() {
            let got = harness.run(step);
            if let Some(expected) = expected {
                let got = got.unwrap_or_else(|| panic!("{name}: step {index} does not reconcile"));
                assert_eq!(got.phase, expected.phase, "{name}: step {index} phase");
                assert_eq!(got.action, expected.action, "{name}: step {index} action");
                let events: Vec<&str> = got
                    .events
                    .iter()
                    .copied()
                    .filter(|r| *r != "CheckpointClaimed")
                    .collect();
                assert_eq!(events, expected.events, "{name}: step {index} events");
                for condition in &expected.conditions {
                    assert!(
                        got.conditions.contains(condition),
                        "{name}: step {index}: {condition:?} not in {:?}",
                        got.conditions
                    );
                }
            }
        }
    }
}

#[test]
fn delete_applies_retention_to_the_claimed_location_on_both_backends() {
    for (retention, expected) in [("Retain", Retention::Retain), ("Delete", Retention::Delete)] {
        let mut query = manifest(
            &format!("{SOURCE}{SQL_V1}  checkpoint: {{retention: {retention}}}\n"),
            1,
        );
        assert_eq!(plan_cleanup(&query).location, None, "nothing claimed yet");
        query.status = Some(sluice_crds::StreamingQueryStatus {
            checkpoint_location: Some(BASE.into()),
            ..Default::default()
        });
        let cleanup = plan_cleanup(&query);
        assert_eq!(
            (cleanup.location.as_deref(), cleanup.retention),
            (Some(BASE), expected)
        );
    }
}

/// The `PoisonBatch` condition carries the worker's own line (termination message on Kubernetes,
/// stderr tail locally) and tells the user what to do.
#[test]
fn the_poison_batch_condition_names_the_batch_task_and_error_on_both_backends() {
    let mut harness = Harness::new(&spec(&[SOURCE, SQL_V1]));
    for (step, _) in running_v1() {
        harness.run(&step);
    }
    harness.run(&Do::Poison);
    harness.run(&Do::Reconcile(Check::Passed));
    let status = harness.query.status.clone().expect("status");
    let condition = sluice_crds::conditions::find(&status.conditions, "PoisonBatch")
        .expect("PoisonBatch condition");
    assert_eq!(
        condition.message,
        format!(
            "{POISON}; the workers are stopped (restarting would replay the same batch): fix the \
             data or the sink, then change spec.restartNonce (or the spec) to retry, or set \
             onPoisonBatch: quarantine to set the batch's input aside"
        )
    );
    assert_eq!(condition.observed_generation, Some(1));
}
