//! The one TOML file that configures every part: a section per crate, each crate owning its struct.

use std::collections::BTreeMap;
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

/// The `[http]` section: search API, health and /metrics.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Unset: `SERVER_HTTP` for the appliance, broker and indexer, `AGENT_HTTP` for the agent,
    /// so an agent beside the appliance starts with the defaults.
    pub listen: Option<String>,
}

pub const SERVER_HTTP: &str = "127.0.0.1:7070";
pub const AGENT_HTTP: &str = "127.0.0.1:7071";

impl HttpConfig {
    /// The address to listen on: the one set, or `default`.
    pub fn listen_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.listen.as_deref().unwrap_or(default)
    }
}

impl SluiceConfig {
    /// Reads `path`, or returns the built-in defaults when there is no file to read. The files
    /// that `kafka_files` names (certificates, keys) must be readable: only the table of the
    /// client this process runs, as an agent's CA file need not exist on the appliance's host.
    pub fn load(path: Option<&Path>, kafka_files: KafkaFiles) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: cannot read: {e}", path.display()))?;
        let config =
            Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}{e}", path.display()))?;
        let (key, table) = match kafka_files {
            KafkaFiles::Agent => ("agent.kafka", &config.agent.kafka),
            KafkaFiles::Indexer => ("indexer.kafka", &config.indexer.kafka),
            KafkaFiles::None => return Ok(config),
        };
        readable_kafka_files(table)
            .map_err(|why| anyhow::anyhow!("config file {}, key `{key}`: {why}", path.display()))?;
        Ok(config)
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
            .broker
            .check()
            .and_then(|()| config.indexer.check())
            .and_then(|()| config.agent.check())
            .and_then(|()| {
                check_kafka(&config.indexer.kafka, sluice_indexer::KAFKA_FIXED)
                    .map_err(|why| ("indexer.kafka", why))
            })
            .and_then(|()| {
                check_kafka(&config.agent.kafka, sluice_agent::KAFKA_FIXED)
                    .map_err(|why| ("agent.kafka", why))
            })
            .map_err(|(key, expected)| {
                let line = line_of_key(text, key)
                    .map(|line| format!(", line {line}"))
                    .unwrap_or_default();
                format!("{line}, key `{key}`: {expected}")
            })?;
        Ok(config)
    }
}

/// Whose `[*.kafka]` files a process reads (see `SluiceConfig::load`).
pub enum KafkaFiles {
    Agent,
    Indexer,
    None,
}

/// Properties whose value is a path librdkafka reads when the client starts. It reports a
/// missing or unreadable one only as OpenSSL's "system lib", without the path.
const KAFKA_FILES: [&str; 6] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
];

/// A `[*.kafka]` table names properties librdkafka knows, with values it takes, and none of
/// `fixed`: the part's own settings and guarantees, each with why.
fn check_kafka(
    properties: &BTreeMap<String, String>,
    fixed: &[(&str, &str)],
) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in properties {
        if let Some((_, why)) = fixed.iter().find(|(name, _)| name == key) {
            return Err(format!("{key:?} cannot be set here: {why}"));
        }
        config.set(key, value);
    }
    config
        .create_native_config()
        .map(drop)
        .map_err(|e| format!("librdkafka refused it: {e}"))
}

/// Every file a `[*.kafka]` table names can be opened for reading (a CA location may be a
/// directory, which opens too).
fn readable_kafka_files(properties: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in properties {
        // `ssl.ca.location = "probe"` asks librdkafka to look in the system's usual places.
        if KAFKA_FILES.contains(&key.as_str()) && value != "probe" {
            std::fs::File::open(value)
                .map_err(|e| format!("{key:?}: cannot read {value:?}: {e}"))?;
        }
    }
    Ok(())
}

/// The line of `key`'s value (`section.name`), when the text sets it rather than a default.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    for part in key.split('.') {
        item = item.as_table_like()?.get(part)?;
    }
    item.span().map(|span| line_of(text, span.start))
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

    /// The DaemonSet sample's ConfigMap holds an agent configuration that loads.
    #[test]
    fn the_kubernetes_sample_agent_config_loads() {
        let yaml = include_str!("../config/kubernetes/agent-daemonset.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("agent.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let config = SluiceConfig::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert!(config.agent.cri.logs);
        assert_eq!(config.agent.metrics.filesystems, ["/host/root"]);
    }

    #[test]
    fn wrong_type_names_line_key_and_expectation() {
        let err = SluiceConfig::parse("[broker]\n\ndefault_partitions = \"three\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("broker.default_partitions"), "{err}");
        assert!(err.contains("expected u32"), "{err}");
    }

    #[test]
    fn values_out_of_range_name_line_key_and_expectation() {
        let err = SluiceConfig::parse("[indexer]\nwriter_memory_bytes = 1000\n").unwrap_err();
        assert!(
            err.contains("line 2, key `indexer.writer_memory_bytes`"),
            "{err}"
        );
        assert!(err.contains("at least"), "{err}");
        let err =
            SluiceConfig::parse("[agent]\n\n[agent.files]\nread_from = \"middle\"\n").unwrap_err();
        assert!(err.contains("line 4, key `agent.files.read_from`"), "{err}");
        let err =
            SluiceConfig::parse("agent = { files = { read_from = \"middle\" } }\n").unwrap_err();
        assert!(err.contains("line 1, key `agent.files.read_from`"), "{err}");
        for (table, key) in [
            (
                "[indexer]\nmax_search_limit = 0\n",
                "indexer.max_search_limit",
            ),
            (
                "[indexer]\nmax_search_window = 10\n",
                "indexer.max_search_limit",
            ),
            (
                "[indexer]\nmax_document_bytes = 0\n",
                "indexer.max_document_bytes",
            ),
            (
                "[indexer]\nsession_timeout_ms = 0\n",
                "indexer.session_timeout_ms",
            ),
            ("[indexer]\ngroup_id = \"\"\n", "indexer.group_id"),
            (
                "[broker]\nadvertised_listener = \"kafka.example\"\n",
                "broker.advertised_listener",
            ),
            ("[broker]\nlisten = \"9092\"\n", "broker.listen"),
            ("[agent.spool]\nmax_bytes = 0\n", "agent.spool.max_bytes"),
            (
                "[agent.syslog]\nudp = \"127.0.0.1:99999\"\n",
                "agent.syslog.udp",
            ),
            ("[agent.gelf]\ntcp = \"nonsense\"\n", "agent.gelf.tcp"),
            (
                "[agent.gelf]\nmax_message_bytes = 1048576\n",
                "agent.gelf.max_message_bytes",
            ),
            (
                "[agent.syslog]\nmax_message_bytes = 1000000\n",
                "agent.syslog.max_message_bytes",
            ),
            (
                "[broker]\ndefault_partitions = 0\n",
                "broker.default_partitions",
            ),
            (
                "[broker]\nmax_request_bytes = 1000\n",
                "broker.max_request_bytes",
            ),
            (
                "[broker]\nflush_interval_ms = 0\n",
                "broker.flush_interval_ms",
            ),
            ("[broker]\nnode_id = -1\n", "broker.node_id"),
            (
                "[broker]\nqueued_max_request_bytes = 1000\n",
                "broker.queued_max_request_bytes",
            ),
            (
                "[agent.kafka]\n\"message.max.bytes\" = \"1000\"\n",
                "agent.kafka",
            ),
        ] {
            let err = SluiceConfig::parse(table).unwrap_err();
            assert!(
                err.contains(key) && err.contains("expected"),
                "{table}: {err}"
            );
        }
    }

    #[test]
    fn kafka_tables_take_what_librdkafka_takes_and_refuse_fixed_keys() {
        let good = "[indexer.kafka]\n\"security.protocol\" = \"sasl_plaintext\"\n\
                    \"sasl.mechanisms\" = \"PLAIN\"\n\
                    [agent.kafka]\n\"batch.size\" = \"2000000\"\n";
        let config = SluiceConfig::parse(good).unwrap();
        assert_eq!(config.indexer.kafka["security.protocol"], "sasl_plaintext");
        assert_eq!(config.agent.kafka["batch.size"], "2000000");

        let tls = "[agent.kafka]\n\"security.protocol\" = \"sasl_ssl\"\n\
                   \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n";
        let config = SluiceConfig::parse(tls).expect("this build's librdkafka has TLS and SCRAM");
        assert_eq!(config.agent.kafka["sasl.mechanisms"], "SCRAM-SHA-512");
        let err = SluiceConfig::parse(
            "[agent.kafka]\n\"ssl.endpoint.identification.algorithm\" = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("agent.kafka") && err.contains("sometimes"),
            "{err}"
        );

        let err = SluiceConfig::parse("[indexer.kafka]\n\"group.id\" = \"mine\"\n").unwrap_err();
        assert!(err.contains("indexer.kafka"), "{err}");
        assert!(err.contains("indexer.group_id"), "{err}");

        let err =
            SluiceConfig::parse("[indexer.kafka]\n\"securty.protocol\" = \"ssl\"\n").unwrap_err();
        assert!(err.contains("securty.protocol"), "{err}");

        let err =
            SluiceConfig::parse("[agent.kafka]\n\"enable.idempotence\" = \"false\"\n").unwrap_err();
        assert!(
            err.contains("agent.kafka") && err.contains("idempotence"),
            "{err}"
        );
    }

    #[test]
    fn kafka_files_must_be_readable_by_the_client_that_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "[agent.kafka]\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap();
        // The appliance does not read the agent's CA file.
        SluiceConfig::load(Some(&path), KafkaFiles::Indexer).unwrap();
        let err = SluiceConfig::load(Some(&path), KafkaFiles::Agent)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("agent.kafka"), "{err}");
        assert!(
            err.contains("ssl.ca.location") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let err = SluiceConfig::parse("[broker]\nio_backend = \"fast\"\n").unwrap_err();
        assert!(err.contains("broker.io_backend"), "{err}");
        assert!(err.contains("io_uring"), "{err}");
    }
}
