//! The agent's metric collectors and the appliance's metrics view, against the real binary: a
//! cgroup v2 fixture (files as the kernel writes them) gives the expected container samples on
//! the `metrics` topic (read back with kcat) and at `/metrics/agents`; host and Prometheus-target
//! samples come along; a counter that resets shows the reset; a container that goes away expires.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// The first samples on the `metrics` topic, as JSON (the agent keeps adding more; a round is a
/// few hundred).
fn topic_samples(sluice: &Sluice) -> Vec<serde_json::Value> {
    sluice
        .kcat_consume("metrics", &["-c", "2000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The value of the view's line that starts with `series ` exactly, if there is one.
fn view_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn web_series(name: &str) -> String {
    format!(
        "{name}{{container_id=\"{WEB_CONTAINER}\",container_name=\"web\",host=\"node-1\",image=\"nginx:1.25\"}}"
    )
}

fn pod_series(name: &str) -> String {
    format!(
        "{name}{{container_id=\"{POD_CONTAINER}\",container_name=\"app\",host=\"node-1\",\
         namespace=\"shop\",pod=\"web-5d8f7\"}}"
    )
}

#[test]
fn cgroup_fixture_gives_the_expected_container_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(
        tmp.path(),
        "[indexer.metrics_view]\nexpire_after_ms = 3000\n",
    );
    let cgroup = cgroup_fixture(tmp.path());
    let agent = metrics_agent(&sluice, tmp.path(), &cgroup);
    sluice.wait_for_agent_series(
        &pod_series("sluice_container_memory_usage_bytes"),
        Duration::from_secs(30),
    );
    // A round's samples are records of their own, and the scrape's come after the cgroup's: the
    // view is read once it has those too (every series is refreshed each 500 ms round).
    let build_info = format!(
        "sluice_build_info{{host=\"node-1\",instance=\"{}\"",
        sluice.http
    );
    let text = sluice.wait_for_agent_series(&build_info, Duration::from_secs(30));
    let expected = [
        ("sluice_container_cpu_usage_seconds_total", 123.456789),
        ("sluice_container_cpu_user_seconds_total", 100.0),
        ("sluice_container_cpu_system_seconds_total", 23.456789),
        ("sluice_container_cpu_periods_total", 5000.0),
        ("sluice_container_cpu_throttled_periods_total", 120.0),
        ("sluice_container_cpu_throttled_seconds_total", 4.5),
        ("sluice_container_memory_usage_bytes", 268_435_456.0),
        // memory.current less memory.stat's inactive_file.
        ("sluice_container_memory_working_set_bytes", 201_326_592.0),
        // io.stat's two devices added up.
        ("sluice_container_io_read_bytes_total", 1_052_672.0),
        ("sluice_container_io_write_bytes_total", 2_105_344.0),
    ];
    for (name, value) in expected {
        let series = web_series(name);
        assert_eq!(view_value(&text, &series), Some(value), "{series}:\n{text}");
    }
    assert_eq!(
        view_value(
            &text,
            &pod_series("sluice_container_cpu_usage_seconds_total")
        ),
        Some(5.0)
    );
    assert_eq!(
        view_value(
            &text,
            &pod_series("sluice_container_memory_working_set_bytes")
        ),
        Some(41_943_040.0)
    );
    // The pod's cgroup has no io.stat (its io controller is off): no IO series, not zeros.
    assert!(!text.contains(&pod_series("sluice_container_io_read_bytes_total")));
    // ssh.service is not a container: every container series is one of the two containers.
    let containers = text
        .lines()
        .filter(|l| l.starts_with("sluice_container_"))
        .filter(|l| !l.contains(WEB_CONTAINER) && !l.contains(POD_CONTAINER))
        .count();
    assert_eq!(containers, 0, "{text}");
    assert!(text.contains("# TYPE sluice_container_cpu_usage_seconds_total counter\n"));
    assert!(text.contains("# TYPE sluice_container_memory_usage_bytes gauge\n"));
    // Host samples beside the scraped target's own (waited for above, labelled with host and
    // instance).
    assert!(view_value(&text, "sluice_host_memory_total_bytes{host=\"node-1\"}").unwrap() > 0.0);
    assert!(text.contains("sluice_host_cpu_seconds_total{host=\"node-1\",mode=\"idle\"}"));
    promtool_passes(&text);

    // On the topic: the contract's JSON, keyed by host.
    let samples = topic_samples(&sluice);
    let usage = samples
        .iter()
        .find(|s| {
            s["name"] == "sluice_container_cpu_usage_seconds_total"
                && s["labels"]["container_name"] == "web"
        })
        .expect("a cpu usage sample on the metrics topic");
    assert_eq!(usage["type"], "counter");
    assert_eq!(usage["value"], 123.456789);
    assert_eq!(usage["labels"]["host"], "node-1");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = usage["timestamp"].as_i64().unwrap();
    assert!((now_ms - 60_000..=now_ms).contains(&ts), "{ts} vs {now_ms}");
    let keys = sluice.kcat_consume("metrics", &["-c", "2000", "-f", "%k\\n"]);
    assert!(keys.lines().all(|k| k == "node-1"), "{keys}");

    // The container restarted: its counters start again, and the view shows the drop as it is.
    let web = cgroup
        .join("system.slice")
        .join(format!("docker-{WEB_CONTAINER}.scope"));
    std::fs::write(
        web.join("cpu.stat"),
        "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\nnr_periods 3\nnr_throttled 0\nthrottled_usec 0\n",
    )
    .unwrap();
    let usage = web_series("sluice_container_cpu_usage_seconds_total");
    wait_until("the reset counter", Duration::from_secs(20), || {
        view_value(&sluice.agent_metrics(), &usage) == Some(2.0)
    });

    // The pod's container goes away: after expire_after_ms its series leave the view, the web
    // container's stay.
    let pod_dir = std::fs::read_dir(cgroup.join("kubepods.slice/kubepods-burstable.slice"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(&pod_dir).unwrap();
    let pod_usage = pod_series("sluice_container_cpu_usage_seconds_total");
    wait_until(
        "the pod's series to expire",
        Duration::from_secs(20),
        || view_value(&sluice.agent_metrics(), &pod_usage).is_none(),
    );
    assert_eq!(view_value(&sluice.agent_metrics(), &usage), Some(2.0));
    assert!(
        sluice
            .metric("sluice_metrics_view_series_expired_total")
            .unwrap()
            > 0.0
    );
    assert_eq!(
        agent.metric("sluice_agent_collect_errors_total{collector=\"cgroup\"}"),
        0.0
    );
    // Which target is down is in the agent's metrics, not only in its log.
    let up = |target: &str| {
        agent.metric(&format!(
            "sluice_agent_scrape_target_up{{target=\"{target}\"}}"
        ))
    };
    assert_eq!(up(&format!("http://{}/metrics", sluice.http)), 1.0);
    assert_eq!(up(DEAD_TARGET), 0.0);
    assert!(agent.metric("sluice_agent_collect_errors_total{collector=\"prometheus\"}") > 0.0);
}

#[test]
fn malformed_samples_are_counted_and_a_missing_cgroup_root_is_an_error_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let agent = metrics_agent(&sluice, tmp.path(), &tmp.path().join("no-such-cgroup"));
    sluice.wait_for_agent_series("sluice_host_load1{", Duration::from_secs(30));
    wait_until("a cgroup collection error", Duration::from_secs(20), || {
        agent.metric("sluice_agent_collect_errors_total{collector=\"cgroup\"}") > 0.0
    });
    // Other producers' bad records on the metrics topic: refused, counted, nothing else lost.
    let bad = b"not json\n{\"name\":\"bad name\",\"type\":\"gauge\",\"labels\":{},\"value\":1,\"timestamp\":1}\n{\"name\":\"x\",\"labels\":{},\"value\":\"lots\",\"timestamp\":1}\n{\"name\":\"manual_gauge\",\"type\":\"gauge\",\"labels\":{\"host\":\"other\"},\"value\":7,\"timestamp\":1}\n";
    // One partition: once the good record is read, so are the bad ones before it.
    assert!(sluice
        .kcat_produce("metrics", &["-p", "0"], bad)
        .status
        .success());
    let text = sluice.wait_for_agent_series("manual_gauge{", Duration::from_secs(30));
    assert_eq!(view_value(&text, "manual_gauge{host=\"other\"}"), Some(7.0));
    let mut refused = BTreeMap::new();
    for reason in ["invalid_json", "bad_name", "bad_value"] {
        let series = format!("sluice_metrics_view_samples_refused_total{{reason=\"{reason}\"}}");
        refused.insert(reason, sluice.metric(&series).unwrap_or(0.0));
    }
    assert!(refused.values().all(|&n| n == 1.0), "{refused:?}");
    assert!(text.contains("sluice_host_load1{host=\"node-1\"}"));
}
