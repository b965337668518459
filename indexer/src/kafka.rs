//! What the indexer's Kafka clients share: the brokers and the `[indexer.kafka]` properties
//! (SASL for a Kafka cluster), and creating a topic the indexer reads when it does not
//! exist yet, so the indexer also runs against a Kafka or Redpanda cluster that does not
//! auto-create topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
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
