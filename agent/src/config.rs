//! The `[agent]` section of `sluice.toml`.

use serde::{Deserialize, Serialize};

/// Agent settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Kafka bootstrap servers the agent ships to (comma-separated host:port).
    pub brokers: String,
    /// Topic the log events go to.
    pub topic: String,
    /// Batch compression: lz4 or zstd.
    pub compression: String,
    /// This host's name in events that do not name one; empty: the system's hostname.
    pub hostname: String,
    /// Read lines from standard input.
    pub stdin: bool,
    pub syslog: SyslogConfig,
    pub metrics: MetricsConfig,
    pub docker: DockerConfig,
}

/// `[agent.syslog]`: syslog listeners (RFC 3164 and RFC 5424).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogConfig {
    /// UDP listen address, e.g. "127.0.0.1:5514"; empty: off.
    pub udp: String,
    /// TCP listen address (octet counting or newline framing); empty: off.
    pub tcp: String,
    /// Longer messages are cut at this size and counted as malformed.
    pub max_message_bytes: usize,
}

/// `[agent.metrics]`: metric collectors, whose samples go to their own topic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Topic the metric samples go to.
    pub topic: String,
    /// How often every collector samples.
    pub interval_ms: u64,
    /// Collect cgroup v2 metrics of every container under `cgroup_root`.
    pub cgroup: bool,
    /// Where the cgroup v2 hierarchy is mounted.
    pub cgroup_root: String,
    /// Collect host metrics (CPU, load, memory, filesystems, network) from `proc_root`.
    pub host: bool,
    /// Where procfs is mounted (a container watching its host mounts the host's here).
    pub proc_root: String,
    /// Mount points whose size and free space the host collector reports.
    pub filesystems: Vec<String>,
    /// Prometheus text endpoints to scrape every interval, e.g. "http://127.0.0.1:9100/metrics".
    pub targets: Vec<String>,
    /// Samples kept from one target's scrape; the rest are dropped and counted.
    pub max_samples_per_target: usize,
}

/// `[agent.docker]`: where Docker keeps its containers, for their names, images and labels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker's data root; containers are under `<root>/containers/<id>/`.
    pub root: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            topic: "metrics".into(),
            interval_ms: 15_000,
            cgroup: false,
            cgroup_root: "/sys/fs/cgroup".into(),
            host: false,
            proc_root: "/proc".into(),
            filesystems: vec!["/".into()],
            targets: Vec::new(),
            max_samples_per_target: 10_000,
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            root: "/var/lib/docker".into(),
        }
    }
}

impl MetricsConfig {
    /// Whether any collector is on.
    pub fn any(&self) -> bool {
        self.cgroup || self.host || !self.targets.is_empty()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "logs".into(),
            compression: "lz4".into(),
            hostname: String::new(),
            stdin: false,
            syslog: SyslogConfig::default(),
            metrics: MetricsConfig::default(),
            docker: DockerConfig::default(),
        }
    }
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            udp: String::new(),
            tcp: String::new(),
            max_message_bytes: 64 << 10,
        }
    }
}

impl AgentConfig {
    /// Checks what the types cannot say; the error is `(key, what was expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !matches!(self.compression.as_str(), "lz4" | "zstd") {
            return Err((
                "agent.compression",
                format!("expected lz4 or zstd, got {:?}", self.compression),
            ));
        }
        if self.syslog.max_message_bytes < 480 {
            return Err((
                "agent.syslog.max_message_bytes",
                "expected at least 480 (RFC 3164's smallest maximum)".into(),
            ));
        }
        if self.metrics.interval_ms < 100 {
            return Err(("agent.metrics.interval_ms", "expected at least 100".into()));
        }
        if let Some(target) = self
            .metrics
            .targets
            .iter()
            .find(|t| !t.starts_with("http://"))
        {
            return Err((
                "agent.metrics.targets",
                format!("expected http:// URLs, got {target:?}"),
            ));
        }
        Ok(())
    }
}
