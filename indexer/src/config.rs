//! The `[indexer]` section of `sluice.toml`.

use serde::{Deserialize, Serialize};

/// Indexer settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexerConfig {
    /// Kafka bootstrap servers the indexer consumes from (comma-separated host:port).
    pub brokers: String,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
        }
    }
}
