//! The `[agent]` section of `sluice.toml`.

use serde::{Deserialize, Serialize};

/// Agent settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Kafka bootstrap servers the agent ships to (comma-separated host:port).
    pub brokers: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
        }
    }
}
