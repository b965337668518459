//! The one TOML file that configures every part: a section per crate, each crate owning its struct.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_agent::AgentConfig;
use sluice_broker::BrokerConfig;
use sluice_indexer::IndexerConfig;

/// The whole `sluice.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SluiceConfig {
    pub data_dir: DataDirConfig,
    pub http: HttpConfig,
    pub broker: BrokerConfig,
    pub indexer: IndexerConfig,
    pub agent: AgentConfig,
}

/// The `[data_dir]` section: where every part keeps its state.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataDirConfig {
    /// Directory for the broker's log and the indexes; created if missing.
    pub path: PathBuf,
}

impl Default for DataDirConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./sluice-data"),
        }
    }
}

/// The `[http]` section: search API, UI, health and /metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
        }
    }
}

impl SluiceConfig {
    /// Reads `path`, or returns the built-in defaults when there is no file to read.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}{e}", path.display()))
    }

    /// Parses TOML text; the error reads `:LINE: key KEY: what was expected`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let deserializer = toml::Deserializer::new(text);
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.inner();
            let line = inner
                .span()
                .map(|span| format!(", line {}", line_of(text, span.start)))
                .unwrap_or_default();
            let key = if key.is_empty() || key == "." {
                String::new()
            } else {
                format!(", key `{key}`")
            };
            format!("{line}{key}: {}", inner.message().trim())
        })?;
        config
            .indexer
            .check()
            .and_then(|()| config.agent.check())
            .map_err(|(key, expected)| format!(", key `{key}`: {expected}"))?;
        Ok(config)
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_equals_builtin_defaults() {
        let text = include_str!("../config/sluice.toml");
        let parsed = SluiceConfig::parse(text).expect("config/sluice.toml parses");
        assert_eq!(parsed, SluiceConfig::default());
    }

    #[test]
    fn example_file_names_every_key() {
        let text = include_str!("../config/sluice.toml");
        let documented: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(SluiceConfig::default()).unwrap();
        for (section, value) in &defaults {
            let Some(table) = value.as_table() else {
                continue;
            };
            let listed = documented[section].as_table().unwrap();
            for key in table.keys() {
                assert!(
                    listed.contains_key(key),
                    "[{section}] {key} missing from config/sluice.toml"
                );
            }
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = SluiceConfig::parse("[broker]\nlisten = \"127.0.0.1:1\"\nsegment_byts = 5\n")
            .unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("segment_byts"), "{err}");
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn wrong_type_names_line_key_and_expectation() {
        let err = SluiceConfig::parse("[broker]\n\ndefault_partitions = \"three\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("broker.default_partitions"), "{err}");
        assert!(err.contains("expected u32"), "{err}");
    }

    #[test]
    fn values_out_of_range_name_key_and_expectation() {
        let err = SluiceConfig::parse("[indexer]\nwriter_memory_bytes = 1000\n").unwrap_err();
        assert!(err.contains("indexer.writer_memory_bytes"), "{err}");
        assert!(err.contains("at least"), "{err}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let err = SluiceConfig::parse("[broker]\nio_backend = \"fast\"\n").unwrap_err();
        assert!(err.contains("broker.io_backend"), "{err}");
        assert!(err.contains("io_uring"), "{err}");
    }
}
