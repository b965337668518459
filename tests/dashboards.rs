//! The metrics path as operators use it: a real Prometheus server (Debian's `prometheus`) started
//! with the example scrape config scrapes a running appliance, its view of an agent's container
//! samples and the agent itself, and every Grafana dashboard expression returns data from it; and
//! every metric the dashboards name exists in a live scrape.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Metric names in a PromQL expression: our namespaces only, so label names and functions are
/// never mistaken for metrics.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("sluice_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                json["templating"]["list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["type"] == "datasource"),
                "{}: no datasource variable",
                path.display()
            );
            for panel in json["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().unwrap() {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    exprs.push((name, target["expr"].as_str().unwrap().to_owned()));
                }
            }
        }
    }
    assert!(!exprs.is_empty(), "no dashboards in {}", dir.display());
    exprs
}

#[test]
fn every_dashboard_metric_exists_in_a_live_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let Appliance { sluice, agent } = busy_appliance(tmp.path());
    let scrape = [sluice.metrics(), sluice.agent_metrics(), agent.metrics()].join("\n");
    let series: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut missing = Vec::new();
    for (dashboard, expr) in dashboard_exprs() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{dashboard}: no metric in {expr}");
        for name in names {
            if !series.contains(name.as_str()) {
                missing.push(format!("{dashboard}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in a live scrape:\n{}",
        missing.join("\n")
    );
}

/// A Prometheus server the test owns; killed on drop.
#[test]
fn prometheus_scrapes_the_appliance_with_the_example_config() {
    let tmp = tempfile::tempdir().unwrap();
    let Appliance { sluice, agent } = busy_appliance(tmp.path());
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus.yml"),
    )
    .unwrap();
    assert!(example.contains("127.0.0.1:7070") && example.contains("127.0.0.1:7071"));
    let config = example
        .replace("127.0.0.1:7070", &sluice.http)
        .replace("127.0.0.1:7071", &agent.http)
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    let config_path = tmp.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Background::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(&web, Duration::from_secs(30)).unwrap();
    // Prometheus listens before its storage is ready and answers 503 until then; a query that is
    // not PromQL is a 400 at once.
    let returns_series = |q: &str, what: &str, deadline: Instant| loop {
        let (status, body) = http_get(&web, &format!("/api/v1/query?query={}", url_encode(q)));
        let answer = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        assert_ne!(status, 400, "{what}: {q}: {answer}");
        let found = answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        if status == 200 && found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no data for {q}: {status} {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for q in [
        "sluice_build_info",
        "sluice_broker_bytes_in_total{topic=\"observed\"}",
        "sluice_indexer_documents_indexed_total",
        "up{job=\"sluice\"} == 1",
        "up{job=\"sluice-agent\"} == 1",
        "sluice_agent_metric_samples_total{collector=\"cgroup\"}",
        // The agent's container series, as the agent labelled them (honor_labels).
        "sluice_container_cpu_usage_seconds_total{container_name=\"web\",host=\"node-1\"} == 123.456789",
        "sluice_container_memory_working_set_bytes{container_name=\"web\",image=\"nginx:1.25\"}",
        "sluice_host_memory_total_bytes{host=\"node-1\"}",
    ] {
        returns_series(q, "Prometheus", deadline);
    }
    // Every panel shows data: each dashboard expression, with Grafana's variables filled in as
    // Grafana would, is valid PromQL and returns series.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (dashboard, expr) in dashboard_exprs() {
        let q = expr
            .replace("$__rate_interval", "10s")
            .replace("$host", ".*");
        returns_series(&q, &dashboard, deadline);
    }
}
