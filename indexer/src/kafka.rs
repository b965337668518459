//! What the indexer's Kafka clients share: the brokers and the `[indexer.kafka]` properties
//! (SASL for a Kafka cluster), and creating a topic the indexer reads when it does not
//! exist yet, so the indexer also runs against a Kafka or Redpanda cluster that does not
//! auto-create topics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use crate::config::IndexerConfig;

/// librdkafka properties `[indexer.kafka]` may not set, and why.
pub const KAFKA_FIXED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set indexer.brokers instead"),
    ("metadata.broker.list", "set indexer.brokers instead"),
    ("group.id", "set indexer.group_id instead"),
    ("group.instance.id", "set indexer.instance_id instead"),
    (
        "session.timeout.ms",
        "set indexer.session_timeout_ms instead",
    ),
    (
        "enable.auto.commit",
        "the indexer commits group offsets itself, after each index commit",
    ),
    (
        "enable.auto.offset.store",
        "the indexer commits group offsets itself, after each index commit",
    ),
    (
        "partition.assignment.strategy",
        "the indexers hand partitions over with cooperative-sticky",
    ),
];

/// How the indexer's clients say librdkafka's troubles: librdkafka logs each one twice (a log
/// line and an error) and again at every reconnect, 40 lines in the first seconds of a broker
/// away. Each kind of trouble is said once a minute, the rest goes to debug;
/// `[indexer.kafka] debug` (librdkafka's own tracing) lets everything through.
pub struct Quiet {
    verbose: bool,
    /// When each kind of trouble was last said (librdkafka's error codes and log facilities: a
    /// few dozen).
    said: Mutex<HashMap<String, Instant>>,
}

/// Each kind of trouble is said at most this often.
const SAID_EVERY: Duration = Duration::from_secs(60);

impl Quiet {
    pub fn of(config: &IndexerConfig) -> Self {
        Self {
            verbose: config.kafka.contains_key("debug"),
            said: Mutex::default(),
        }
    }

    /// Whether `kind` of trouble is to be said now: not said within the last minute.
    pub fn first_in_a_while(&self, kind: &str) -> bool {
        if self.verbose {
            return true;
        }
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.get(kind).is_some_and(|at| at.elapsed() < SAID_EVERY) {
            return false;
        }
        if said.len() >= 256 {
            said.clear();
        }
        said.insert(kind.to_owned(), Instant::now());
        true
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // Errors come again through `error`; only what is worse is said from here.
        let worse_than_error = (level as i32) < (RDKafkaLogLevel::Error as i32);
        if (worse_than_error || self.verbose) && self.first_in_a_while(facility) {
            tracing::warn!(facility, "librdkafka: {message}");
        } else {
            tracing::debug!(facility, "librdkafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.first_in_a_while(&format!("{:?}", error.rdkafka_error_code())) {
            tracing::warn!(%error, "indexer: Kafka: {reason} (said once a minute)");
        } else {
            tracing::debug!(%error, "indexer: Kafka: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// A client of the indexer's brokers: `own` (what this client needs), then `[indexer.kafka]`.
pub fn client(config: &IndexerConfig, own: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("log_level", "3");
    for (key, value) in own {
        client.set(*key, *value);
    }
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client
}

/// How long a start waits for the brokers to answer.
const REACH_WAIT: Duration = Duration::from_secs(30);

pub async fn ensure_topic(
    config: &IndexerConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let brokers = &config.brokers;
    let admin: AdminClient<DefaultClientContext> = client(config, &[]).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().request_timeout(Some(REACH_WAIT));
    let created = admin.create_topics([&new], &options);
    tokio::pin!(created);
    // Said once when it takes a while, so a start with the brokers away is not silent.
    let created = tokio::select! {
        created = &mut created => created,
        () = tokio::time::sleep(Duration::from_secs(2)) => {
            tracing::warn!(%brokers, "indexer: waiting for the brokers (at most {} s)", REACH_WAIT.as_secs());
            created.await
        }
    };
    let results = created.map_err(|e| anyhow::anyhow!("indexer: cannot reach {brokers}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // Kafka checks the right to create before whether the topic exists: on a cluster
            // with ACLs, an indexer that may read the topic but not create topics is refused
            // even when the topic is there.
            Err((name, code)) if topic_exists(config, &name).await => {
                tracing::debug!(topic = %name, error = %code, "indexer: topic not created, but it exists");
            }
            Err((name, code)) => anyhow::bail!("indexer: cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Whether the cluster's metadata shows `topic` with partitions.
async fn topic_exists(config: &IndexerConfig, topic: &str) -> bool {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client(&config, &[]).create().ok()?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .ok()?;
        let found = metadata.topics().iter().find(|t| t.name() == topic)?;
        Some(found.error().is_none() && !found.partitions().is_empty())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexer_kafka_properties_go_over_a_clients_own() {
        let mut config = IndexerConfig::default();
        config
            .kafka
            .insert("security.protocol".into(), "sasl_ssl".into());
        config.kafka.insert("client.id".into(), "indexer-7".into());
        let client = client(&config, &[("client.id", "sluice-indexer")]);
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("client.id"), Some("indexer-7"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}
