//! The `[agent]` section of `sluice.toml`.

use std::collections::BTreeMap;

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
    /// Where the agent keeps its state (file checkpoints).
    pub state_dir: String,
    pub files: FilesConfig,
    pub syslog: SyslogConfig,
    pub gelf: GelfConfig,
    pub spool: SpoolConfig,
    pub metrics: MetricsConfig,
    pub docker: DockerConfig,
    pub cri: CriConfig,
    /// librdkafka properties for the producer (SASL for a Kafka cluster, batch sizes),
    /// applied over the agent's own choices; those that would break its delivery guarantees
    /// are refused.
    pub kafka: BTreeMap<String, String>,
}

/// librdkafka properties `[agent.kafka]` may not set, and why.
pub const KAFKA_FIXED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set agent.brokers instead"),
    ("metadata.broker.list", "set agent.brokers instead"),
    ("compression.type", "set agent.compression instead"),
    ("compression.codec", "set agent.compression instead"),
    (
        "acks",
        "the agent needs acks=all: a checkpoint moves only past what the broker has",
    ),
    (
        "request.required.acks",
        "the agent needs acks=all: a checkpoint moves only past what the broker has",
    ),
    (
        "enable.idempotence",
        "the agent needs idempotence: a retried batch must not be written twice",
    ),
    (
        "message.timeout.ms",
        "the agent retries without a deadline: it never gives up an event",
    ),
    ("transactional.id", "the agent does not use transactions"),
];

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

/// `[agent.files]`: log files to follow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Glob patterns of the files to follow, e.g. "/var/log/app/*.log"; empty: off. Include the
    /// rotated names ("app.log*") to follow copytruncate rotation without a gap.
    pub include: Vec<String>,
    /// Where to start in a file found at the agent's first start: "beginning" or "end". Files
    /// that appear later are always read from their beginning.
    pub read_from: String,
    /// Longer lines are cut at this size, marked `fields.truncated`, and counted as malformed.
    pub max_line_bytes: usize,
    /// A regex matching the first line of a multi-line event (a stack trace's first line);
    /// lines that do not match join the event before them. Empty: every line is an event.
    pub multiline_start: String,
    /// A multi-line event waiting for more lines is shipped after this long without one.
    pub multiline_timeout_ms: u64,
    /// How often the globs are matched again, besides the file system's change notices.
    pub rescan_interval_ms: u64,
    /// How long a file that was rotated away or deleted stays open once read to its end.
    pub rotate_wait_ms: u64,
    /// Bytes of a file's first line that identify it (with device and inode as a hint): a
    /// file is followed once it has a whole first line or this many bytes.
    pub fingerprint_bytes: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            read_from: "beginning".into(),
            max_line_bytes: 256 << 10,
            multiline_start: String::new(),
            multiline_timeout_ms: 1000,
            rescan_interval_ms: 10_000,
            rotate_wait_ms: 5_000,
            fingerprint_bytes: 1024,
        }
    }
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

/// `[agent.docker]`: Docker's containers, their json-file logs, names, images and labels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Follow every container's json-file log (`<root>/containers/<id>/<id>-json.log`).
    pub logs: bool,
    /// Docker's data root; containers are under `<root>/containers/<id>/`.
    pub root: String,
}

/// `[agent.cri]`: Kubernetes' container logs as the kubelet writes them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// Follow every container's log under `root` (`<namespace>_<pod>_<uid>/<container>/N.log`).
    pub logs: bool,
    pub root: String,
    /// The kubelet's links `<pod>_<namespace>_<container>-<id>.log`: they give the cgroup
    /// metrics of a container its pod, namespace and name, and a CRI log its container's id.
    pub containers: String,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            logs: false,
            root: "/var/log/pods".into(),
            containers: "/var/log/containers".into(),
        }
    }
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
            logs: false,
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

/// The most text an input puts in one event: with the event's other fields it stays under the
/// 1,000,000 bytes librdkafka (`message.max.bytes`) and a Kafka broker take in a record (a
/// lower `message.max.bytes` cuts events to fit: `max_record_bytes`).
const MAX_EVENT_TEXT: usize = 900_000;

/// `[agent.gelf]`: GELF listeners (what Docker's gelf logging driver and Graylog clients send).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GelfConfig {
    /// UDP listen address (chunked, gzip, zlib or plain), e.g. "127.0.0.1:12201"; empty: off.
    pub udp: String,
    /// TCP listen address (null-delimited frames); empty: off.
    pub tcp: String,
    /// Larger messages (after decompression) are dropped and counted.
    pub max_message_bytes: usize,
}

impl Default for GelfConfig {
    fn default() -> Self {
        Self {
            udp: String::new(),
            tcp: String::new(),
            max_message_bytes: MAX_EVENT_TEXT,
        }
    }
}

/// `[agent.spool]`: where syslog, GELF and stdin events wait while the broker is slow or away.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Most bytes the spool holds (under `<state_dir>/spool/`).
    pub max_bytes: u64,
    /// When it is full: "block" (inputs wait; UDP datagrams then overflow in the kernel) or
    /// "drop" (events are dropped and counted).
    pub when_full: String,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            when_full: "block".into(),
        }
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
            state_dir: "/var/lib/sluice-agent".into(),
            files: FilesConfig::default(),
            syslog: SyslogConfig::default(),
            gelf: GelfConfig::default(),
            spool: SpoolConfig::default(),
            metrics: MetricsConfig::default(),
            docker: DockerConfig::default(),
            cri: CriConfig::default(),
            kafka: BTreeMap::new(),
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

/// librdkafka's `message.max.bytes` unless `[agent.kafka]` lowers it: the most a record may be.
const KAFKA_MESSAGE_MAX: usize = 1_000_000;
/// What `message.max.bytes` may be lowered to: a record still holds a cut event.
const KAFKA_MESSAGE_MAX_LEAST: usize = 16_384;

impl AgentConfig {
    /// The most a record (key and event) may be: librdkafka refuses a record over its
    /// `message.max.bytes` (1,000,000, unless `[agent.kafka]` lowers it), less room for its own
    /// framing. Escaping can make an event several times its text (a control byte becomes
    /// `\u0001`): the inputs cut a message to fit rather than see the record refused and the
    /// line lost. A larger setting does not raise it: a Kafka topic takes about 1 MB by default.
    pub fn max_record_bytes(&self) -> usize {
        let limit = self
            .kafka
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(KAFKA_MESSAGE_MAX);
        limit.min(KAFKA_MESSAGE_MAX).saturating_sub(1_000)
    }

    /// Checks what the types cannot say; the error is `(key, what was expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(limit) = self.kafka.get("message.max.bytes") {
            if !limit
                .parse::<usize>()
                .is_ok_and(|limit| limit >= KAFKA_MESSAGE_MAX_LEAST)
            {
                return Err((
                    "agent.kafka",
                    format!(
                        "expected message.max.bytes to be a number of bytes, at least \
                         {KAFKA_MESSAGE_MAX_LEAST}, got {limit:?}"
                    ),
                ));
            }
        }
        if !matches!(self.compression.as_str(), "lz4" | "zstd") {
            return Err((
                "agent.compression",
                format!("expected lz4 or zstd, got {:?}", self.compression),
            ));
        }
        if !(480..=MAX_EVENT_TEXT).contains(&self.syslog.max_message_bytes) {
            return Err((
                "agent.syslog.max_message_bytes",
                "expected 480 (RFC 3164's smallest maximum) to 900000 (an event must fit a \
                 broker's 1 MB record limit)"
                    .into(),
            ));
        }
        if !(256..=MAX_EVENT_TEXT).contains(&self.gelf.max_message_bytes) {
            return Err((
                "agent.gelf.max_message_bytes",
                "expected 256 to 900000 (an event must fit a broker's 1 MB record limit)".into(),
            ));
        }
        if self.spool.max_bytes < 65_536 {
            return Err((
                "agent.spool.max_bytes",
                format!("expected at least 65536, got {}", self.spool.max_bytes),
            ));
        }
        if !matches!(self.spool.when_full.as_str(), "block" | "drop") {
            return Err((
                "agent.spool.when_full",
                format!("expected block or drop, got {:?}", self.spool.when_full),
            ));
        }
        for (key, address) in [
            ("agent.syslog.udp", &self.syslog.udp),
            ("agent.syslog.tcp", &self.syslog.tcp),
            ("agent.gelf.udp", &self.gelf.udp),
            ("agent.gelf.tcp", &self.gelf.tcp),
        ] {
            let port = address
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(_, port)| port.parse::<u16>().ok());
            if !address.is_empty() && port.is_none() {
                return Err((
                    key,
                    format!("expected HOST:PORT or \"\" (off), got {address:?}"),
                ));
            }
        }
        for (protocol, syslog, gelf) in [
            ("udp", &self.syslog.udp, &self.gelf.udp),
            ("tcp", &self.syslog.tcp, &self.gelf.tcp),
        ] {
            if !syslog.is_empty() && syslog == gelf {
                return Err((
                    if protocol == "udp" {
                        "agent.gelf.udp"
                    } else {
                        "agent.gelf.tcp"
                    },
                    format!("expected an address of its own, got {gelf:?}, syslog's too"),
                ));
            }
        }
        if !matches!(self.files.read_from.as_str(), "beginning" | "end") {
            return Err((
                "agent.files.read_from",
                format!("expected beginning or end, got {:?}", self.files.read_from),
            ));
        }
        if let Err(e) = regex::Regex::new(&self.files.multiline_start) {
            return Err((
                "agent.files.multiline_start",
                format!("expected a regular expression: {e}"),
            ));
        }
        for pattern in &self.files.include {
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err((
                    "agent.files.include",
                    format!("expected glob patterns, got {pattern:?} ({e})"),
                ));
            }
        }
        if !(256..=MAX_EVENT_TEXT).contains(&self.files.max_line_bytes) {
            return Err((
                "agent.files.max_line_bytes",
                "expected 256 to 900000 (an event must fit a broker's 1 MB record limit)".into(),
            ));
        }
        if self.files.fingerprint_bytes < 16 {
            return Err((
                "agent.files.fingerprint_bytes",
                "expected at least 16".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Syslog and GELF cannot share a socket.
    #[test]
    fn syslog_and_gelf_on_one_address_are_refused() {
        let mut config = AgentConfig::default();
        config.syslog.udp = "127.0.0.1:5514".into();
        config.gelf.udp = "127.0.0.1:5514".into();
        let (key, said) = config.check().unwrap_err();
        assert_eq!(key, "agent.gelf.udp");
        assert!(said.contains("syslog's too"), "{said}");
        config.gelf.udp = "127.0.0.1:12201".into();
        assert!(config.check().is_ok());
    }

    /// Records are cut to librdkafka's `message.max.bytes` when it is lowered, never past the
    /// 1 MB a Kafka topic takes by default; a value that is not a size is refused.
    #[test]
    fn the_record_limit_follows_a_lowered_message_max_bytes() {
        let mut config = AgentConfig::default();
        assert_eq!(config.max_record_bytes(), 999_000);
        config
            .kafka
            .insert("message.max.bytes".into(), "100000".into());
        assert_eq!(config.max_record_bytes(), 99_000);
        config
            .kafka
            .insert("message.max.bytes".into(), "5000000".into());
        assert_eq!(config.max_record_bytes(), 999_000);
        assert!(config.check().is_ok());
        for bad in ["1000", "1MB"] {
            config.kafka.insert("message.max.bytes".into(), bad.into());
            let (key, said) = config.check().unwrap_err();
            assert_eq!(key, "agent.kafka");
            assert!(
                said.contains("message.max.bytes") && said.contains(bad),
                "{said}"
            );
        }
    }

    /// A pattern glob cannot read is refused with glob's reason.
    #[test]
    fn a_bad_glob_says_why() {
        let mut config = AgentConfig::default();
        config.files.include = vec!["/var/log/*.log".into(), "/var/log/[bad".into()];
        let (key, said) = config.check().unwrap_err();
        assert_eq!(key, "agent.files.include");
        assert!(said.contains("\"/var/log/[bad\" ("), "{said}");
        assert!(said.contains("invalid range pattern"), "{said}");
    }
}
