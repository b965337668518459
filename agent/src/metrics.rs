//! The agent's Prometheus metrics. Labels are bounded: input (a fixed list), reason (fixed).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct AgentMetrics {
    pub lines_read: IntCounterVec,
    pub bytes_read: IntCounterVec,
    pub malformed: IntCounterVec,
    pub events_sent: IntCounter,
    pub send_errors: IntCounter,
}

impl AgentMetrics {
    pub const INPUTS: [&'static str; 3] = ["stdin", "syslog_udp", "syslog_tcp"];

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
                "Events the broker acknowledged",
            )?,
            send_errors: IntCounter::new(
                "sluice_agent_send_errors_total",
                "Events the broker did not acknowledge",
            )?,
        };
        registry.register(Box::new(metrics.lines_read.clone()))?;
        registry.register(Box::new(metrics.bytes_read.clone()))?;
        registry.register(Box::new(metrics.malformed.clone()))?;
        registry.register(Box::new(metrics.events_sent.clone()))?;
        registry.register(Box::new(metrics.send_errors.clone()))?;
        for input in Self::INPUTS {
            metrics.lines_read.with_label_values(&[input]);
            metrics.bytes_read.with_label_values(&[input]);
        }
        Ok(metrics)
    }
}
