//! The /metrics endpoints as Prometheus sees them: `promtool check metrics` (Prometheus's own
//! linter: naming conventions, units, types, help text) passes on a live appliance after real
//! traffic, on its metrics view of an agent's samples, on the agent's own /metrics, and on
//! separate broker and indexer processes; and the series the README promises are there.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn metrics_pass_promtool_and_hold_the_promised_series() {
    let tmp = tempfile::tempdir().unwrap();
    let Appliance { sluice, agent } = busy_appliance(tmp.path());
    assert_eq!(sluice.kcat_consume("observed", &["-p", "0"]), "one\ntwo\n");
    let text = sluice.metrics();
    promtool_passes(&text);
    promtool_passes(&sluice.agent_metrics());
    let agent_text = agent.metrics();
    promtool_passes(&agent_text);
    for series in [
        "sluice_build_info{",
        "process_resident_memory_bytes",
        "sluice_agent_lines_read_total{input=\"syslog_udp\"}",
        "sluice_agent_events_sent_total",
        "sluice_agent_metric_samples_sent_total",
        "sluice_agent_connections_refused_total{input=\"syslog_tcp\"} 0",
        "sluice_agent_collect_errors_total{collector=\"cgroup\"} 0",
    ] {
        assert!(
            agent_text.contains(series),
            "{series} missing from the agent's /metrics:\n{agent_text}"
        );
    }
    // CPU time to the clock tick: a process that has used less than a second shows it.
    let cpu = agent.metric("process_cpu_seconds_total");
    assert!(cpu > 0.0, "process_cpu_seconds_total {cpu}");
    for collector in ["cgroup", "host", "prometheus"] {
        let series = format!("sluice_agent_metric_samples_total{{collector=\"{collector}\"}}");
        assert!(agent.metric(&series) > 0.0, "{series}:\n{agent_text}");
    }
    for series in [
        "sluice_build_info{",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "sluice_broker_bytes_in_total{topic=\"observed\"}",
        "sluice_broker_records_in_total{topic=\"observed\"}",
        "sluice_broker_bytes_out_total{topic=\"observed\"}",
        "sluice_broker_records_out_total{topic=\"observed\"}",
        "sluice_broker_corrupt_batches_total{topic=\"observed\"} 0",
        "sluice_broker_request_duration_seconds_bucket{api=\"produce\"",
        "sluice_broker_request_duration_seconds_bucket{api=\"fetch\"",
        "sluice_broker_fsync_duration_seconds_bucket",
        "sluice_broker_fsync_batch_writes_bucket",
        "sluice_broker_log_end_offset{partition=\"0\",topic=\"observed\"} 2",
        "sluice_broker_log_size_bytes{partition=\"0\",topic=\"observed\"}",
        "sluice_broker_io_backend{backend=\"io_uring\"} 1",
        "sluice_broker_consumer_lag{group=\"watchers\",partition=\"0\",topic=\"observed\"} 0",
        "sluice_broker_connections{listener=\"kafka\"}",
        "sluice_indexer_documents_indexed_total 1",
        "sluice_indexer_malformed_records_total{reason=\"invalid_json\"} 0",
        "sluice_indexer_commit_duration_seconds_bucket",
        "sluice_indexer_freshness_seconds_bucket",
        "sluice_indexer_consumer_lag{partition=\"0\"} 0",
        "sluice_indexer_partitions_owned 3",
        "sluice_indexer_partitions_waiting 0",
        "sluice_indexer_index_bytes",
        "sluice_search_duration_seconds_bucket{endpoint=\"search\"",
        "sluice_search_requests_total{endpoint=\"search\",outcome=\"ok\"}",
        "sluice_metrics_view_samples_total",
        "sluice_metrics_view_series",
        "sluice_metrics_view_samples_refused_total{reason=\"invalid_json\"} 0",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }
}

#[test]
fn separate_broker_and_indexer_endpoints_pass_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Sluice::broker(tmp.path(), "");
    let indexer = Sluice::indexer(&broker, "indexer", "");
    assert!(broker
        .kcat_produce("logs", &[], b"a line\n")
        .status
        .success());
    assert_eq!(indexer.wait_for_hits("line", 1, Duration::from_secs(30)), 1);
    for endpoint in [&broker, &indexer] {
        let text = endpoint.metrics();
        assert!(text.contains("sluice_build_info"), "{text}");
        promtool_passes(&text);
    }
    assert!(indexer
        .metrics()
        .contains("sluice_indexer_documents_indexed_total 1"));
}
