//! The chart's Grafana dashboard and alert rules use only metric names the code exports (worker and
//! operator registries, encoded for real), the dashboard is valid JSON, and `promtool check rules`
//! accepts the rendered PrometheusRule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_worker::metrics::{Metrics, TaskLabels};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Names of the series the worker and operator registries export (all families touched once).
fn exported_names() -> BTreeSet<String> {
    let worker = Metrics::new();
    let labels = TaskLabels {
        query: "q".into(),
        namespace: "n".into(),
        task: "0".into(),
    };
    worker.input_rows.get_or_create(&labels).inc();
    worker.processed_rows.get_or_create(&labels).inc();
    worker.batch_duration.get_or_create(&labels).observe(0.1);
    worker.busy_seconds.get_or_create(&labels).inc_by(0.1);
    worker.last_committed_batch_id.get_or_create(&labels).set(1);
    worker.watermark_seconds.get_or_create(&labels).set(1.0);
    worker.state_rows.get_or_create(&labels).set(1);
    worker.late_rows_dropped.get_or_create(&labels).inc();
    worker.bad_records.get_or_create(&labels).inc();
    worker.source_backlog.get_or_create(&labels).set(1);
    worker.sink_rows_written.get_or_create(&labels).inc();
    worker.batch_retries.get_or_create(&labels).inc();
    let operator = sluice_operator::metrics::Metrics::default();
    let query = sluice_operator::metrics::QueryLabels {
        namespace: "n".into(),
        query: "q".into(),
    };
    operator
        .reconcile_duration
        .get_or_create(&query)
        .observe(0.1);
    let error = sluice_operator::metrics::ErrorLabels {
        namespace: "n".into(),
        query: "q".into(),
        error: "user".into(),
    };
    operator.reconcile_errors.get_or_create(&error).inc();
    operator.count_scaling_decision("n", "q", 1, 2, true);
    [worker.encode(), operator.encode()]
        .iter()
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

/// Every `sluice_...` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn tool(name: &str, cached: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = cached.filter(|p| p.is_file()) {
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "{name} is not installed but SLUICE_REQUIRE_SERVERS=1 (run e2e/servers/install.sh)"
        );
        eprintln!("SKIPPED: {name} not found (run e2e/servers/install.sh)");
    }
    found
}

#[test]
fn dashboard_is_valid_and_uses_exported_metrics() {
    let exported = exported_names();
    let text = std::fs::read_to_string(repo().join("charts/sluice/dashboards/sluice.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 10,
        "panels for throughput, duration, backlog, watermark, state, bad/late rows, operator"
    );
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has queries", panel["title"]);
        for target in targets {
            used.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    let unknown: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses metrics nobody exports: {unknown:?}\nexported: {exported:?}"
    );
    for needed in [
        "sluice_input_rows_total",
        "sluice_processed_rows_total",
        "sluice_batch_duration_seconds_bucket",
        "sluice_reconcile_errors_total",
        "sluice_scaling_decisions_total",
    ] {
        assert!(used.contains(needed), "dashboard charts {needed}");
    }
}

#[test]
fn alert_rules_use_exported_metrics_and_pass_promtool() {
    let cache = std::env::var("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice")
        });
    let Some(helm) = tool("helm", Some(cache.join("bin/helm"))) else {
        return;
    };
    let Some(promtool) = tool("promtool", None) else {
        return;
    };
    let output = Command::new(helm)
        .args(["template", "sluice"])
        .arg(repo().join("charts/sluice"))
        .args([
            "--set",
            "alerts.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ])
        .output()
        .expect("helm template");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&output.stdout)).expect("rendered YAML");
    let groups = &rendered["spec"];
    let alerts: Vec<&str> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["alert"].as_str().expect("alert name"))
        .collect();
    assert_eq!(
        alerts,
        vec![
            "SluiceQueryFallingBehind",
            "SluiceNoCommittedBatch",
            "SluiceCheckpointStale",
            "SluiceBadRecords",
            "SluiceOperatorReconcileErrors"
        ]
    );
    let exported = exported_names();
    let used = metric_names(&groups.to_string());
    let unknown: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics nobody exports: {unknown:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_json::to_string_pretty(groups).expect("json")).expect("write");
    let check = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Each alert can be switched off on its own.
    let off = Command::new(tool("helm", Some(cache.join("bin/helm"))).expect("helm"))
        .args(["template", "sluice"])
        .arg(repo().join("charts/sluice"))
        .args([
            "--set",
            "alerts.enabled=true,alerts.badRecords.enabled=false",
            "--show-only",
            "templates/prometheusrule.yaml",
        ])
        .output()
        .expect("helm template");
    let text = String::from_utf8_lossy(&off.stdout);
    assert!(
        !text.contains("SluiceBadRecords") && text.contains("SluiceCheckpointStale"),
        "{text}"
    );
}
