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

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "logs".into(),
            compression: "lz4".into(),
            hostname: String::new(),
            stdin: false,
            syslog: SyslogConfig::default(),
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
        Ok(())
    }
}
