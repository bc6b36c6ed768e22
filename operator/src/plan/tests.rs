//! `plan` on every kind of spec change: new query, no change, sql change, image change, scale,
//! suspend/resume, invalid spec, unusable checkpoint, stateless upgrade, autoscale clamp, delete.

use k8s_openapi::jiff::Timestamp;
use sluice_crds::conditions::{self, CHECKPOINT_STALE, DEGRADED, PROGRESSING, READY};
use sluice_crds::{Phase, Retention, StreamingQuery, parse_manifest, validate_spec};

use super::*;

const BASE: &str = "s3://ckpt/sluice/default/q/uid-1/";

fn query(spec: &str) -> StreamingQuery {
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q, namespace: default, uid: uid-1, generation: 1}}\nspec:\n{spec}"
    );
    parse_manifest(&yaml).expect("test manifest is valid")
}

const SPEC: &str = "  sources:\n    - name: events\n      rate: {rowsPerSecond: 10, partitions: 4}\n  sql: SELECT * FROM events\n  sink: {console: {}}\n";

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).expect("valid time"))
}

fn config() -> OperatorConfig {
    OperatorConfig {
        default_image: "sluice-worker:test".into(),
        default_checkpoint_location: Some("s3://ckpt/sluice".into()),
        ..OperatorConfig::default()
    }
}

fn observation(workers: Option<WorkersObservation>, claimed_now: bool) -> Observation {
    Observation {
        workers,
        checkpoint: CheckpointObservation::Ready {
            location: BASE.into(),
            claimed_now,
        },
        progress: None,
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    }
}

fn run(query: &StreamingQuery, observation: &Observation, now: Time) -> Plan {
    plan(
        query,
        validate_spec(&query.spec),
        observation,
        &config(),
        now,
    )
    .expect("plan")
}

fn desired(plan: &Plan) -> &DesiredWorkers {
    match &plan.workers {
        WorkersAction::Apply(desired) => desired,
        WorkersAction::LeaveAlone => panic!("expected Apply, got LeaveAlone"),
    }
}

/// What a backend reports once `plan`'s deployment has fully rolled out.
fn rolled_out(plan: &Plan) -> WorkersObservation {
    let desired = desired(plan);
    WorkersObservation {
        generation: desired.generation,
        restart_hash: desired.restart_hash.clone(),
        section_hashes: desired.section_hashes.clone(),
        replicas: desired.replicas,
        ready_replicas: desired.replicas,
        rollout_complete: true,
        restart_nonce: desired.restart_nonce.clone(),
        ..WorkersObservation::default()
    }
}

/// The query as the API server returns it after the plan's status was written.
fn after(mut query: StreamingQuery, plan: &Plan) -> StreamingQuery {
    query.status = Some(plan.status.clone());
    query
}

fn reasons(plan: &Plan) -> Vec<&str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

fn condition<'a>(plan: &'a Plan, type_: &str) -> (&'a str, &'a str) {
    let c = conditions::find(&plan.status.conditions, type_).expect("condition present");
    (c.status.as_str(), c.reason.as_str())
}

/// A query that runs generation 1 with one ready replica, settled.
fn running_query() -> (StreamingQuery, WorkersObservation) {
    let q = query(SPEC);
    let created = run(&q, &observation(None, true), at(0));
    let workers = rolled_out(&created);
    let q = after(q, &created);
    let settled = run(&q, &observation(Some(workers.clone()), false), at(10));
    assert_eq!(settled.status.phase, Some(Phase::Running));
    (after(q, &settled), workers)
}

fn with_spec(mut q: StreamingQuery, spec: &str, generation: i64) -> StreamingQuery {
    q.spec = query(spec).spec;
    q.metadata.generation = Some(generation);
    q
}

#[test]
fn new_query_starts_generation_one() {
    let q = query(SPEC);
    let plan = run(&q, &observation(None, true), at(0));
    assert_eq!(plan.change, SpecChange::New);
    let d = desired(&plan);
    assert_eq!((d.generation, d.replicas), (1, 1));
    assert_eq!(d.image, "sluice-worker:test");
    assert_eq!(d.checkpoint_location, BASE);
    assert_eq!(plan.status.phase, Some(Phase::Starting));
    assert_eq!(plan.status.generation, Some(1));
    assert_eq!(plan.status.observed_generation, Some(1));
    assert_eq!(plan.status.replicas, Some(0));
    assert_eq!(plan.status.checkpoint_location.as_deref(), Some(BASE));
    assert_eq!(condition(&plan, READY), ("False", "Starting"));
    assert_eq!(condition(&plan, PROGRESSING), ("True", "Starting"));
    assert_eq!(condition(&plan, DEGRADED), ("False", "AsExpected"));
    assert_eq!(
        condition(&plan, CHECKPOINT_STALE),
        ("False", "CheckpointVerified")
    );
    assert_eq!(reasons(&plan), ["CheckpointClaimed", "Created"]);
    assert_eq!(plan.requeue, Requeue::After(config().progress_poll));
}

#[test]
fn resolved_manifest_is_a_valid_query_with_the_resolved_checkpoint() {
    let plan = run(&query(SPEC), &observation(None, true), at(0));
    let manifest = parse_manifest(&desired(&plan).manifest_yaml).expect("workers can read it");
    assert_eq!(manifest.spec.checkpoint.location.as_deref(), Some(BASE));
    assert_eq!(manifest.spec.image.as_deref(), Some("sluice-worker:test"));
    assert_eq!(manifest.spec.sql, "SELECT * FROM events");
    assert_eq!(manifest.metadata.uid.as_deref(), Some("uid-1"));
}

#[test]
fn settled_rollout_is_running_and_idempotent() {
    let (q, workers) = running_query();
    let again = run(&q, &observation(Some(workers), false), at(20));
    assert_eq!(again.change, SpecChange::Unchanged);
    assert_eq!(
        again.status,
        q.status.clone().expect("status"),
        "a steady query rewrites nothing"
    );
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(condition(&again, READY), ("True", "Running"));
    assert_eq!(again.requeue, Requeue::After(config().resync));
    assert!(again.status.last_stable_spec_hash.is_some());
}

#[test]
fn rollout_in_progress_stays_starting_without_new_events() {
    let q = query(SPEC);
    let created = run(&q, &observation(None, true), at(0));
    let mut workers = rolled_out(&created);
    workers.ready_replicas = 0;
    workers.rollout_complete = false;
    let plan = run(
        &after(q, &created),
        &observation(Some(workers), false),
        at(5),
    );
    assert_eq!(plan.change, SpecChange::Unchanged);
    assert_eq!(plan.status.phase, Some(Phase::Starting));
    assert!(plan.events.is_empty());
}

#[test]
fn sql_change_rolls_out_a_new_generation() {
    let (q, workers) = running_query();
    let q = with_spec(
        q,
        &SPEC.replace("SELECT * FROM events", "SELECT value FROM events"),
        2,
    );
    let plan = run(&q, &observation(Some(workers), false), at(30));
    assert_eq!(
        plan.change,
        SpecChange::Restart {
            sections: vec!["sql".into()]
        }
    );
    assert_eq!(desired(&plan).generation, 2);
    assert_eq!(
        desired(&plan).checkpoint_location,
        BASE,
        "lastState keeps the checkpoint"
    );
    assert_eq!(plan.status.phase, Some(Phase::Upgrading));
    assert_eq!(plan.status.generation, Some(2));
    assert_eq!(plan.status.observed_generation, Some(2));
    assert_eq!(reasons(&plan), ["UpgradeStarted"]);
    assert!(
        plan.events[0]
            .note
            .starts_with("sql changed: rolling out generation 2"),
        "{}",
        plan.events[0].note
    );
    // Once generation 2 is out, the query is Running again.
    let workers = rolled_out(&plan);
    let settled = run(&after(q, &plan), &observation(Some(workers), false), at(40));
    assert_eq!(settled.status.phase, Some(Phase::Running));
    assert_eq!(reasons(&settled), ["Running"]);
}

#[test]
fn image_change_restarts() {
    let (q, workers) = running_query();
    let q = with_spec(q, &format!("{SPEC}  image: sluice-worker:v2\n"), 2);
    let plan = run(&q, &observation(Some(workers), false), at(30));
    assert_eq!(
        plan.change,
        SpecChange::Restart {
            sections: vec!["image".into()]
        }
    );
    assert_eq!(desired(&plan).image, "sluice-worker:v2");
    assert_eq!(desired(&plan).generation, 2);
}

#[test]
fn stateless_upgrade_uses_a_new_checkpoint_generation() {
    let spec = format!("{SPEC}  upgradeMode: stateless\n");
    let q = query(&spec);
    let created = run(&q, &observation(None, true), at(0));
    assert_eq!(
        desired(&created).checkpoint_location,
        format!("{BASE}generations/1/")
    );
    let workers = rolled_out(&created);
    let q = with_spec(
        after(q, &created),
        &spec.replace("SELECT *", "SELECT value"),
        2,
    );
    let plan = run(&q, &observation(Some(workers), false), at(30));
    assert_eq!(
        desired(&plan).checkpoint_location,
        format!("{BASE}generations/2/")
    );
    assert_eq!(plan.status.checkpoint_location.as_deref(), Some(BASE));
}

#[test]
fn scale_change_keeps_the_generation() {
    let (q, workers) = running_query();
    let q = with_spec(q, &format!("{SPEC}  parallelism: {{replicas: 3}}\n"), 2);
    let plan = run(&q, &observation(Some(workers), false), at(30));
    assert_eq!(plan.change, SpecChange::Scale { from: 1, to: 3 });
    assert_eq!((desired(&plan).generation, desired(&plan).replicas), (1, 3));
    assert_eq!(plan.status.phase, Some(Phase::Scaling));
    assert_eq!(reasons(&plan), ["Scaling"]);
}

#[test]
fn autoscale_keeps_the_running_count_within_bounds() {
    let (q, mut workers) = running_query();
    workers.replicas = 6;
    let q = with_spec(
        q,
        &format!(
            "{SPEC}  parallelism: {{replicas: 1, autoscale: {{enabled: true, minReplicas: 2, maxReplicas: 4}}}}\n"
        ),
        2,
    );
    let plan = run(&q, &observation(Some(workers), false), at(30));
    assert_eq!(desired(&plan).replicas, 4);
}

#[test]
fn suspend_stops_workers_and_keeps_the_checkpoint_then_resume_restarts() {
    let (q, workers) = running_query();
    let q = with_spec(q, &format!("{SPEC}  suspend: true\n"), 2);
    let plan = run(&q, &observation(Some(workers.clone()), false), at(30));
    assert_eq!(plan.change, SpecChange::Suspend);
    assert_eq!((desired(&plan).generation, desired(&plan).replicas), (1, 0));
    assert_eq!(desired(&plan).checkpoint_location, BASE);
    assert_eq!(plan.status.phase, Some(Phase::Suspended));
    assert_eq!(condition(&plan, READY), ("False", "Suspended"));
    assert_eq!(condition(&plan, PROGRESSING), ("True", "Stopping"));
    assert_eq!(reasons(&plan), ["Suspended"]);
    assert_eq!(plan.status.checkpoint_location.as_deref(), Some(BASE));

    let stopped = rolled_out(&plan);
    let q = after(q, &plan);
    let settled = run(&q, &observation(Some(stopped.clone()), false), at(40));
    assert_eq!(settled.change, SpecChange::Unchanged);
    assert_eq!(condition(&settled, PROGRESSING), ("False", "Suspended"));
    assert_eq!(settled.requeue, Requeue::After(config().resync));

    let q = with_spec(after(q, &settled), SPEC, 3);
    let resumed = run(&q, &observation(Some(stopped), false), at(50));
    assert_eq!(resumed.change, SpecChange::Resume);
    assert_eq!(
        (desired(&resumed).generation, desired(&resumed).replicas),
        (1, 1)
    );
    assert_eq!(resumed.status.phase, Some(Phase::Starting));
    assert_eq!(reasons(&resumed), ["Resumed"]);
}

#[test]
fn invalid_spec_degrades_once_and_leaves_the_running_generation_alone() {
    let (q, workers) = running_query();
    let mut q = with_spec(q, SPEC, 2);
    q.spec.sql = "  ".into();
    let validation = validate_spec(&q.spec);
    assert!(validation.is_err());
    let obs = Observation {
        workers: Some(workers.clone()),
        checkpoint: CheckpointObservation::NotChecked,
        progress: None,
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    };
    let plan = plan(&q, validation.clone(), &obs, &config(), at(30)).expect("plan");
    assert_eq!(plan.change, SpecChange::Invalid);
    assert_eq!(plan.workers, WorkersAction::LeaveAlone);
    assert_eq!(
        plan.status.phase,
        Some(Phase::Running),
        "the old generation keeps running"
    );
    assert_eq!(plan.status.generation, Some(1));
    assert_eq!(plan.status.observed_generation, Some(2));
    assert_eq!(condition(&plan, DEGRADED), ("True", "InvalidSpec"));
    assert_eq!(condition(&plan, READY), ("True", "Running"));
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].severity, EventSeverity::Warning);
    assert_eq!(plan.events[0].reason, "InvalidSpec");
    assert!(
        plan.events[0].note.starts_with("`spec.sql`")
            && plan.events[0]
                .note
                .ends_with("; fix the manifest and apply it again; generation 1 keeps running"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(plan.requeue, Requeue::AwaitChange);

    // The same problem on the next reconcile: no second event (no hot loop, no event spam).
    let again = super::plan(&after(q, &plan), validation, &obs, &config(), at(40)).expect("plan");
    assert!(again.events.is_empty());
    assert_eq!(again.status, plan.status);
}

#[test]
fn invalid_new_query_fails() {
    let mut q = query(SPEC);
    q.spec.parallelism.replicas = 0;
    let obs = Observation {
        workers: None,
        checkpoint: CheckpointObservation::NotChecked,
        progress: None,
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    };
    let plan = plan(&q, validate_spec(&q.spec), &obs, &config(), at(0)).expect("plan");
    assert_eq!(plan.workers, WorkersAction::LeaveAlone);
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert_eq!(condition(&plan, READY), ("False", "InvalidSpec"));
}

#[test]
fn checkpoint_owned_by_another_query_is_refused() {
    let q = query(SPEC);
    let obs = Observation {
        workers: None,
        checkpoint: CheckpointObservation::Refused {
            location: Some(BASE.into()),
            reason: "CheckpointOwned",
            message: "owned by StreamingQuery default/other".into(),
        },
        progress: None,
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    };
    let plan = run(&q, &obs, at(0));
    assert_eq!(plan.change, SpecChange::CheckpointUnavailable);
    assert_eq!(plan.workers, WorkersAction::LeaveAlone);
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert_eq!(
        condition(&plan, CHECKPOINT_STALE),
        ("True", "CheckpointOwned")
    );
    assert_eq!(condition(&plan, DEGRADED), ("True", "CheckpointOwned"));
    assert_eq!(reasons(&plan), ["CheckpointOwned"]);
    assert_eq!(
        plan.events[0].note,
        "owned by StreamingQuery default/other; choose another checkpoint location \
         (spec.checkpoint.location) or delete the owning query with spec.checkpoint.retention: \
         Delete (a retained checkpoint stays owned); nothing runs until then"
    );
    assert_eq!(plan.requeue, Requeue::AwaitChange);
}

#[test]
fn unreachable_checkpoint_is_retried_and_keeps_workers() {
    let (q, workers) = running_query();
    let obs = Observation {
        workers: Some(workers),
        checkpoint: CheckpointObservation::Unreachable {
            location: BASE.into(),
            message: "403 Forbidden".into(),
        },
        progress: None,
        check: CheckObservation::NotRun,
        restore: RestoreObservation::NotRun,
        autoscale: None,
    };
    let plan = run(&q, &obs, at(30));
    assert_eq!(plan.workers, WorkersAction::LeaveAlone);
    assert_eq!(plan.status.phase, Some(Phase::Running));
    assert_eq!(
        condition(&plan, CHECKPOINT_STALE),
        ("True", "CheckpointUnreachable")
    );
    assert_eq!(reasons(&plan), ["CheckpointUnreachable"]);
    assert_eq!(
        plan.events[0].note,
        format!(
            "{BASE}: 403 Forbidden; check the object-store credentials (spec.storageSecretRef or \
             the chart's checkpoint.credentialsSecret) and endpoint; retrying with backoff, \
             generation 1 keeps running"
        )
    );
    assert_eq!(plan.requeue, Requeue::After(config().progress_poll));
    // A new query whose store is down is Pending, not phase-less.
    let new = Observation {
        workers: None,
        ..obs.clone()
    };
    let plan = run(&query(SPEC), &new, at(0));
    assert_eq!(plan.status.phase, Some(Phase::Pending));
}

#[test]
fn progress_fills_rates_into_status() {
    let (q, workers) = running_query();
    let mut obs = observation(Some(workers), false);
    obs.progress = Some(ProgressObservation {
        input_rows_per_second: Some(120.0),
        processed_rows_per_second: Some(118.5),
        last_committed_batch_id: Some(42),
        lag: Some(7),
        ..ProgressObservation::default()
    });
    let plan = run(&q, &obs, at(30));
    assert_eq!(plan.status.input_rows_per_second, Some(120.0));
    assert_eq!(
        plan.status.processed_rows_per_second,
        Some(119.0),
        "rounded to 3 significant digits"
    );
    assert_eq!(plan.status.last_committed_batch_id, Some(42));
    assert_eq!(plan.status.lag, Some(7));
}

#[test]
fn checkpoint_location_is_resolved_then_pinned() {
    let q = query(SPEC);
    assert_eq!(
        checkpoint_location(&q, &config()).ok().as_deref(),
        Some(BASE)
    );
    let explicit = query(&format!(
        "{SPEC}  checkpoint: {{location: \"s3://mine/\"}}\n"
    ));
    assert_eq!(
        checkpoint_location(&explicit, &config()).ok().as_deref(),
        Some("s3://mine/default/q/uid-1/")
    );
    let mut pinned = q.clone();
    pinned.status = Some(StreamingQueryStatus {
        checkpoint_location: Some("s3://old/default/q/uid-1/".into()),
        ..StreamingQueryStatus::default()
    });
    assert_eq!(
        checkpoint_location(&pinned, &config()).ok().as_deref(),
        Some("s3://old/default/q/uid-1/")
    );
    let no_default = OperatorConfig {
        default_checkpoint_location: None,
        ..config()
    };
    assert!(matches!(
        checkpoint_location(&q, &no_default),
        Err(Error::CheckpointLocation { .. })
    ));
}

#[test]
fn delete_applies_retention_to_the_pinned_location() {
    let (q, _) = running_query();
    assert_eq!(
        plan_cleanup(&q),
        CleanupPlan {
            location: Some(BASE.into()),
            retention: Retention::Retain
        }
    );
    let mut deleting = with_spec(
        q,
        &format!("{SPEC}  checkpoint: {{retention: Delete}}\n"),
        2,
    );
    deleting.metadata.deletion_timestamp = Some(at(100));
    assert_eq!(plan_cleanup(&deleting).retention, Retention::Delete);
    // Never claimed: nothing to clean.
    assert_eq!(plan_cleanup(&query(SPEC)).location, None);
}

#[test]
fn status_carries_the_worker_selector_for_the_scale_subresource() {
    let q = query(SPEC);
    let plan = run(&q, &observation(None, true), at(0));
    assert_eq!(
        plan.status.selector.as_deref(),
        Some("app.kubernetes.io/name=sluice-worker,sluice.dev/query=q")
    );
    let crd =
        serde_json::to_value(<StreamingQuery as kube::CustomResourceExt>::crd()).expect("crd json");
    assert_eq!(
        crd["spec"]["versions"][0]["subresources"]["scale"],
        serde_json::json!({
            "specReplicasPath": ".spec.parallelism.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        })
    );
}

#[test]
fn the_poison_line_is_found_in_a_termination_message_or_a_log_tail() {
    use super::poison_line;
    let line = "PoisonBatch: batch 7 task 2 after 3 attempts: bad value";
    assert_eq!(poison_line(line).as_deref(), Some(line));
    let log = format!(
        "serving /metrics on http://127.0.0.1:1\nerror: fix the manifest, SQL or data: {line}\n"
    );
    assert_eq!(poison_line(&log).as_deref(), Some(line));
    assert_eq!(poison_line("error: sink unreachable\n"), None);
}

fn restoring_to(batch_id: u64, generation: i64, q: StreamingQuery) -> StreamingQuery {
    with_spec(
        q,
        &format!("{SPEC}  restore: {{batchId: {batch_id}}}\n"),
        generation,
    )
}

#[test]
fn restore_stops_the_workers_restores_once_and_starts_them_again() {
    let (q, workers) = running_query();
    let q = restoring_to(3, 2, q);
    // 1. The workers still run: they are stopped first, nothing is restored yet.
    let mut obs = observation(Some(workers.clone()), false);
    assert_eq!(restore_request(&q, &obs, &config()).expect("request"), None);
    let stopping = run(&q, &obs, at(20));
    assert_eq!(stopping.change, SpecChange::Restoring { batch_id: 3 });
    assert_eq!(desired(&stopping).replicas, 0);
    assert_eq!(
        desired(&stopping).generation,
        workers.generation,
        "no new generation"
    );
    assert_eq!(condition(&stopping, PROGRESSING), ("True", "Restoring"));
    assert_eq!(reasons(&stopping), ["RestoreStarted"]);
    assert_eq!(stopping.status.restore, None);
    // 2. All stopped: the restore of batch 3 runs against the workers' checkpoint.
    let q = after(q, &stopping);
    obs.workers = Some(rolled_out(&stopping));
    let request = restore_request(&q, &obs, &config())
        .expect("request")
        .expect("the workers are stopped");
    assert_eq!(request.batch_id, 3);
    assert_eq!(request.checkpoint_location, BASE);
    assert_eq!(request.image, "sluice-worker:test");
    assert!(
        request.manifest_yaml.contains("batchId: 3"),
        "{}",
        request.manifest_yaml
    );
    obs.restore = RestoreObservation::Pending("restore Job started".into());
    let held = run(&q, &obs, at(25));
    assert_eq!(held.change, SpecChange::Restoring { batch_id: 3 });
    assert_eq!(desired(&held).replicas, 0);
    assert_eq!(reasons(&held), Vec::<&str>::new());
    // 3. Restored: recorded, the workers start again on the new checkpoint generation.
    obs.restore = RestoreObservation::Restored {
        generation: 2,
        message: "restored to batch 3: checkpoint generation 2 (from generation 1) is current"
            .into(),
    };
    let restored = run(&q, &obs, at(30));
    assert_eq!(restored.change, SpecChange::Resume);
    assert_eq!(desired(&restored).replicas, 1);
    assert_eq!(condition(&restored, "Restored"), ("True", "Restored"));
    let message = &conditions::find(&restored.status.conditions, "Restored")
        .expect("Restored")
        .message;
    assert!(
        message.starts_with("restored to batch 3: checkpoint generation 2 is current"),
        "{message}"
    );
    assert_eq!(reasons(&restored), ["Restored", "Resumed"]);
    let recorded = restored.status.restore.clone().expect("status.restore");
    assert_eq!(
        (
            recorded.batch_id,
            recorded.generation,
            recorded.outcome.as_str()
        ),
        (3, Some(2), "Restored")
    );
    // 4. Once per batch id: the same spec never restores again.
    let q = after(q, &restored);
    let mut obs = observation(Some(rolled_out(&restored)), false);
    assert_eq!(restore_request(&q, &obs, &config()).expect("request"), None);
    obs.workers.as_mut().expect("workers").replicas = 1;
    let steady = run(&q, &obs, at(40));
    assert_eq!(steady.change, SpecChange::Unchanged);
    assert_eq!(desired(&steady).replicas, 1);
}

#[test]
fn a_refused_restore_restarts_the_workers_on_the_unchanged_checkpoint() {
    let (q, workers) = running_query();
    let q = restoring_to(9, 2, q);
    let stopping = run(&q, &observation(Some(workers), false), at(20));
    let q = after(q, &stopping);
    let mut obs = observation(Some(rolled_out(&stopping)), false);
    obs.restore = RestoreObservation::Refused("batch 9 is not retained (retained: 4..=12)".into());
    let refused = run(&q, &obs, at(30));
    assert_eq!(refused.change, SpecChange::Resume);
    assert_eq!(desired(&refused).replicas, 1);
    assert_eq!(desired(&refused).checkpoint_location, BASE);
    assert_eq!(
        condition(&refused, "RestoreRefused"),
        ("True", "RestoreRefused")
    );
    let message = &conditions::find(&refused.status.conditions, "RestoreRefused")
        .expect("RestoreRefused")
        .message;
    assert!(message.contains("batch 9 is not retained"), "{message}");
    assert_eq!(reasons(&refused), ["RestoreRefused", "Resumed"]);
    let recorded = refused.status.restore.clone().expect("status.restore");
    assert_eq!(
        (recorded.batch_id, recorded.outcome.as_str()),
        (9, "Refused")
    );
    assert_eq!(
        restore_request(&after(q, &refused), &obs, &config()).expect("request"),
        None,
        "a refusal is not retried for the same batch id"
    );
}

#[test]
fn the_restored_generation_is_read_from_the_worker_line() {
    assert_eq!(
        restore::restored_generation(
            "restored to batch 7: checkpoint generation 12 (from generation 11) is current; ..."
        ),
        Some(12)
    );
    assert_eq!(
        restore::restored_generation(
            "already restored to batch 7: checkpoint generation 2 is current"
        ),
        Some(2)
    );
    assert_eq!(restore::restored_generation("restored"), None);
}
