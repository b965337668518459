//! The agent's Prometheus metrics. Labels are bounded: input (a fixed list), reason (fixed),
//! collector (fixed), path (the files followed now; a file's series goes when it is closed),
//! target (the configured Prometheus targets; the series of a target a reload drops goes).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct AgentMetrics {
    pub lines_read: IntCounterVec,
    pub bytes_read: IntCounterVec,
    pub malformed: IntCounterVec,
    pub events_sent: IntCounter,
    pub files_unreadable: IntGauge,
    pub file_bytes_behind_per_file: IntGaugeVec,
    pub samples_sent: IntCounter,
    pub connections_refused: IntCounterVec,
    pub send_errors: IntCounter,
    pub samples_collected: IntCounterVec,
    pub collect_errors: IntCounterVec,
    pub scrape_target_up: IntGaugeVec,
    pub files_tracked: IntGauge,
    pub file_bytes_behind: IntGauge,
    pub checkpoint_errors: IntCounter,
    pub spool_bytes: IntGauge,
    pub records_unacknowledged: IntGauge,
    pub spool_dropped: IntCounter,
}

impl AgentMetrics {
    pub const INPUTS: [&'static str; 8] = [
        "file",
        "docker",
        "cri",
        "stdin",
        "syslog_udp",
        "syslog_tcp",
        "gelf_udp",
        "gelf_tcp",
    ];
    pub const COLLECTORS: [&'static str; 3] = ["cgroup", "host", "prometheus"];
    /// Every (input, defect) the inputs count, shown from zero so a rate has a start.
    const MALFORMED: [(&'static str, &'static str); 38] = [
        ("gelf_udp", "bad_chunk"),
        ("gelf_udp", "incomplete_chunks"),
        ("gelf_udp", "too_many_chunked_messages"),
        ("gelf_udp", "too_large"),
        ("gelf_udp", "bad_compression"),
        ("gelf_udp", "invalid_json"),
        ("gelf_udp", "missing_short_message"),
        ("gelf_udp", "bad_timestamp"),
        ("gelf_udp", "bad_level"),
        ("gelf_tcp", "too_large"),
        ("gelf_tcp", "bad_compression"),
        ("gelf_tcp", "invalid_json"),
        ("gelf_tcp", "missing_short_message"),
        ("gelf_tcp", "bad_timestamp"),
        ("gelf_tcp", "bad_level"),
        ("file", "truncated"),
        ("file", "invalid_utf8"),
        ("docker", "truncated"),
        ("docker", "invalid_utf8"),
        ("docker", "invalid_json"),
        ("docker", "bad_time"),
        ("cri", "truncated"),
        ("cri", "invalid_utf8"),
        ("cri", "bad_line"),
        ("cri", "bad_time"),
        ("stdin", "truncated"),
        ("stdin", "invalid_utf8"),
        ("syslog_udp", "truncated"),
        ("syslog_udp", "invalid_utf8"),
        ("syslog_udp", "no_header"),
        ("syslog_udp", "bad_timestamp"),
        ("syslog_tcp", "truncated"),
        ("syslog_tcp", "invalid_utf8"),
        ("syslog_tcp", "no_header"),
        ("syslog_tcp", "bad_timestamp"),
        ("syslog_tcp", "bad_frame"),
        ("prometheus", "bad_line"),
        ("prometheus", "too_many_samples"),
    ];

    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            lines_read: IntCounterVec::new(
                Opts::new(
                    "sluice_agent_lines_read_total",
                    "Lines or messages read, per input",
                ),
                &["input"],
            )?,
            bytes_read: IntCounterVec::new(
                Opts::new("sluice_agent_bytes_read_total", "Bytes read, per input"),
                &["input"],
            )?,
            malformed: IntCounterVec::new(
                Opts::new(
                    "sluice_agent_malformed_input_total",
                    "Input shipped despite a defect, per input and defect",
                ),
                &["input", "reason"],
            )?,
            events_sent: IntCounter::new(
                "sluice_agent_events_sent_total",
                "Log events the broker acknowledged",
            )?,
            samples_sent: IntCounter::new(
                "sluice_agent_metric_samples_sent_total",
                "Metric samples the broker acknowledged (on the metrics topic)",
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "sluice_agent_connections_refused_total",
                    "TCP connections closed at once because the input served as many as it may",
                ),
                &["input"],
            )?,
            send_errors: IntCounter::new(
                "sluice_agent_send_errors_total",
                "Events the broker did not acknowledge",
            )?,
            samples_collected: IntCounterVec::new(
                Opts::new(
                    "sluice_agent_metric_samples_total",
                    "Metric samples collected, per collector",
                ),
                &["collector"],
            )?,
            collect_errors: IntCounterVec::new(
                Opts::new(
                    "sluice_agent_collect_errors_total",
                    "Collection rounds in which a collector (or one Prometheus target) failed",
                ),
                &["collector"],
            )?,
            scrape_target_up: IntGaugeVec::new(
                Opts::new(
                    "sluice_agent_scrape_target_up",
                    "1 if the last scrape of a configured Prometheus target worked, 0 if not",
                ),
                &["target"],
            )?,
            files_tracked: IntGauge::new(
                "sluice_agent_files_tracked",
                "Files the agent has open and follows",
            )?,
            file_bytes_behind_per_file: IntGaugeVec::new(
                Opts::new(
                    "sluice_agent_file_bytes_behind_per_file",
                    "Bytes of a followed file not handed on yet, per path (refreshed each second)",
                ),
                &["path"],
            )?,
            files_unreadable: IntGauge::new(
                "sluice_agent_files_unreadable",
                "Files the globs match that the agent cannot open (permissions)",
            )?,
            file_bytes_behind: IntGauge::new(
                "sluice_agent_file_bytes_behind",
                "Bytes written to the followed files and not read yet, all files together",
            )?,
            checkpoint_errors: IntCounter::new(
                "sluice_agent_checkpoint_errors_total",
                "Failed writes of the file checkpoints",
            )?,
            spool_bytes: IntGauge::new(
                "sluice_agent_spool_bytes",
                "Bytes of events waiting in the disk spool for the broker",
            )?,
            records_unacknowledged: IntGauge::new(
                "sluice_agent_records_unacknowledged",
                "Records handed to librdkafka and not acknowledged by the brokers yet (each second)",
            )?,
            spool_dropped: IntCounter::new(
                "sluice_agent_spool_dropped_total",
                "Events dropped because the spool was full (when_full = drop) or torn",
            )?,
        };
        registry.register(Box::new(metrics.lines_read.clone()))?;
        registry.register(Box::new(metrics.bytes_read.clone()))?;
        registry.register(Box::new(metrics.malformed.clone()))?;
        registry.register(Box::new(metrics.events_sent.clone()))?;
        registry.register(Box::new(metrics.samples_sent.clone()))?;
        registry.register(Box::new(metrics.connections_refused.clone()))?;
        registry.register(Box::new(metrics.send_errors.clone()))?;
        registry.register(Box::new(metrics.samples_collected.clone()))?;
        registry.register(Box::new(metrics.collect_errors.clone()))?;
        registry.register(Box::new(metrics.scrape_target_up.clone()))?;
        registry.register(Box::new(metrics.files_tracked.clone()))?;
        registry.register(Box::new(metrics.file_bytes_behind.clone()))?;
        registry.register(Box::new(metrics.files_unreadable.clone()))?;
        registry.register(Box::new(metrics.file_bytes_behind_per_file.clone()))?;
        registry.register(Box::new(metrics.checkpoint_errors.clone()))?;
        registry.register(Box::new(metrics.spool_bytes.clone()))?;
        registry.register(Box::new(metrics.records_unacknowledged.clone()))?;
        registry.register(Box::new(metrics.spool_dropped.clone()))?;
        for input in Self::INPUTS {
            metrics.lines_read.with_label_values(&[input]);
            metrics.bytes_read.with_label_values(&[input]);
        }
        for input in ["syslog_tcp", "gelf_tcp"] {
            metrics.connections_refused.with_label_values(&[input]);
        }
        for (input, reason) in Self::MALFORMED {
            metrics.malformed.with_label_values(&[input, reason]);
        }
        for collector in Self::COLLECTORS {
            metrics.samples_collected.with_label_values(&[collector]);
            metrics.collect_errors.with_label_values(&[collector]);
        }
        Ok(metrics)
    }
}
