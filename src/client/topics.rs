//! `sluice topics list|create|alter|describe|delete`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::{bail, Context as _};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use sluice_broker::storage::topics::{
    check_collision, validate_topic_name, TopicSettings, TOPIC_CONFIG_NAMES,
};
use sluice_broker::BrokerConfig;

use super::{config, TIMEOUT};
use crate::cli::{TopicsAction, TopicsArgs};

pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let brokers = &args.brokers.brokers;
    match args.action {
        TopicsAction::List => list(brokers),
        TopicsAction::Create {
            name,
            partitions,
            configs,
        } => create(brokers, &name, partitions, &configs).await,
        TopicsAction::Alter {
            name,
            partitions,
            configs,
            deletes,
        } => {
            if partitions.is_none() && configs.is_empty() && deletes.is_empty() {
                bail!(
                    "nothing to change: give --partitions N, --config KEY=VALUE or \
                     --delete-config KEY"
                );
            }
            if let Some(count) = partitions {
                add_partitions(brokers, &name, count).await?;
            }
            match configs.is_empty() && deletes.is_empty() {
                true => Ok(()),
                false => alter(brokers, &name, &configs, &deletes).await,
            }
        }
        TopicsAction::Describe { name } => describe(brokers, &name).await,
        TopicsAction::Delete { name } => delete(brokers, &name).await,
    }
}

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    config(brokers)
        .create()
        .with_context(|| format!("connecting to {brokers}"))
}

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(super::TIMEOUT))
}

fn list(brokers: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config(brokers).create()?;
    let metadata = consumer
        .fetch_metadata(None, TIMEOUT)
        .with_context(|| format!("reading metadata from {brokers}"))?;
    let mut out = std::io::stdout().lock();
    for topic in metadata.topics() {
        writeln!(
            out,
            "{}\t{} partitions",
            topic.name(),
            topic.partitions().len()
        )?;
    }
    Ok(())
}

async fn create(
    brokers: &str,
    name: &str,
    partitions: Option<i32>,
    configs: &[String],
) -> anyhow::Result<()> {
    // -1: the cluster's default replication (one copy on a Sluice broker; a Kafka cluster's
    // default.replication.factor), as for the partition count.
    let mut topic = NewTopic::new(name, partitions.unwrap_or(-1), TopicReplication::Fixed(-1));
    let mut wanted = BTreeMap::new();
    for entry in configs {
        let (key, value) = key_value(entry)?;
        topic = topic.set(key, value);
        wanted.insert(key.to_owned(), value.to_owned());
    }
    let results = admin(brokers)?.create_topics([&topic], &options()).await?;
    for result in results {
        match result {
            Ok(name) => println!("created topic {name}"),
            Err((name, code)) => {
                let mut why = reason(code, &name, &wanted);
                if why.is_empty() && code == RDKafkaErrorCode::InvalidTopic {
                    why = collision(brokers, &name);
                }
                bail!("cannot create topic {name}: {code}{why}")
            }
        }
    }
    Ok(())
}

/// Why a Sluice broker refuses a topic's name or configs, for a refusal's code: the admin
/// client passes on the broker's error code but not its message, so the broker's own checks
/// are run again here. Empty for other codes, and where those checks find nothing (a Kafka
/// cluster refusing for a reason of its own).
fn reason(code: RDKafkaErrorCode, name: &str, configs: &BTreeMap<String, String>) -> String {
    let found = match code {
        RDKafkaErrorCode::InvalidConfig => {
            TopicSettings::resolve(&BrokerConfig::default(), configs).err()
        }
        RDKafkaErrorCode::InvalidTopic => validate_topic_name(name).err(),
        _ => None,
    };
    found.map(|why| format!(": {why}")).unwrap_or_default()
}

/// Why a sound name is refused: it collides with an existing topic's (`check_collision`).
fn collision(brokers: &str, name: &str) -> String {
    let names = config(brokers)
        .create::<BaseConsumer>()
        .and_then(|consumer| consumer.fetch_metadata(None, TIMEOUT))
        .map(|metadata| {
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    check_collision(name, &names)
        .err()
        .map(|why| format!(": {why}"))
        .unwrap_or_default()
}

/// `KEY=VALUE` of a `--config`.
fn key_value(entry: &str) -> anyhow::Result<(&str, &str)> {
    entry
        .split_once('=')
        .with_context(|| format!("--config {entry:?}: expected KEY=VALUE"))
}

/// AlterConfigs replaces a topic's overrides whole (rdkafka has no IncrementalAlterConfigs):
/// the overrides it has are read first, so that only the ones named change. rdkafka does not
/// pass on a refusal of AlterConfigs (every resource comes back as altered), so the overrides
/// are read again after, and a change that did not take is an error.
async fn alter(
    brokers: &str,
    name: &str,
    configs: &[String],
    deletes: &[String],
) -> anyhow::Result<()> {
    topic_metadata(&config(brokers).create()?, brokers, name)?;
    let admin = admin(brokers)?;
    let mut wanted = overrides(&admin, name).await?;
    for entry in configs {
        let (key, value) = key_value(entry)?;
        wanted.insert(key.to_owned(), value.to_owned());
    }
    for key in deletes {
        if wanted.remove(key).is_none() {
            bail!("--delete-config {key}: topic {name} does not set it");
        }
    }
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in &wanted {
        change = change.set(key, value);
    }
    for result in admin.alter_configs([&change], &options()).await? {
        if let Err((_, code)) = result {
            bail!(
                "cannot alter topic {name}: {code}{}",
                reason(code, name, &wanted)
            );
        }
    }
    if !same_configs(&overrides(&admin, name).await?, &wanted) {
        bail!(
            "cannot alter topic {name}: the broker kept the configs it had{}",
            reason(RDKafkaErrorCode::InvalidConfig, name, &wanted)
        );
    }
    println!("altered topic {name}");
    Ok(())
}

/// CreatePartitions: raises `name`'s partition count to `count`.
async fn add_partitions(brokers: &str, name: &str, count: i32) -> anyhow::Result<()> {
    let admin = admin(brokers)?;
    let count = usize::try_from(count).context("--partitions: expected a positive count")?;
    let results = admin
        .create_partitions([&NewPartitions::new(name, count)], &options())
        .await?;
    for result in results {
        if let Err((_, code)) = result {
            let why = match code {
                RDKafkaErrorCode::InvalidPartitions => {
                    let now = partition_count(brokers, name)
                        .map(|n| format!("it has {n}; "))
                        .unwrap_or_default();
                    format!(": {now}a partition count can only grow")
                }
                _ => String::new(),
            };
            bail!("cannot add partitions to topic {name}: {code}{why}");
        }
    }
    println!("topic {name} now has {count} partitions");
    Ok(())
}

/// The partition count the cluster's metadata gives `name`.
fn partition_count(brokers: &str, name: &str) -> anyhow::Result<usize> {
    let metadata = topic_metadata(&config(brokers).create()?, brokers, name)?;
    let topic = metadata.topics().first().context("no such topic")?;
    Ok(topic.partitions().len())
}

/// Whether the configs a topic describes are those asked for: the same keys, and for each the
/// same value, or one a Sluice broker takes to mean the same (it describes `compact,delete` for
/// `delete,compact`, `none` for `uncompressed`). Keys it only accepts are compared as written.
fn same_configs(described: &BTreeMap<String, String>, asked: &BTreeMap<String, String>) -> bool {
    if described.keys().ne(asked.keys()) {
        return false;
    }
    let defaults = BrokerConfig::default();
    let meaning = |key: &str, value: &str| {
        TopicSettings::resolve(
            &defaults,
            &BTreeMap::from([(key.to_owned(), value.to_owned())]),
        )
        .ok()
    };
    described
        .iter()
        .zip(asked.values())
        .all(|((key, now), wanted)| {
            now == wanted
                || (TOPIC_CONFIG_NAMES.contains(&key.as_str())
                    && meaning(key, now).is_some_and(|m| Some(m) == meaning(key, wanted)))
        })
}

/// The configs set on the topic itself (not the broker's defaults).
async fn overrides(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &options())
        .await?;
    let mut set = BTreeMap::new();
    for resource in described {
        let resource = resource.map_err(|code| anyhow::anyhow!("topic {name}: {code}"))?;
        for entry in resource.entries {
            if entry.source == ConfigSource::DynamicTopic {
                set.insert(entry.name, entry.value.unwrap_or_default());
            }
        }
    }
    Ok(set)
}

async fn delete(brokers: &str, name: &str) -> anyhow::Result<()> {
    let results = admin(brokers)?.delete_topics(&[name], &options()).await?;
    for result in results {
        match result {
            Ok(name) => println!("deleted topic {name}"),
            Err((name, code)) => bail!("cannot delete topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The cluster's metadata with topic `name` in it; "not found" when it has none.
fn topic_metadata(consumer: &BaseConsumer, brokers: &str, name: &str) -> anyhow::Result<Metadata> {
    let metadata = consumer
        .fetch_metadata(Some(name), TIMEOUT)
        .with_context(|| format!("reading metadata from {brokers}"))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
        bail!("topic {name} not found");
    };
    if let Some(error) = topic.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(error);
        if code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
            bail!("topic {name} not found");
        }
        bail!("topic {name}: {code}");
    }
    Ok(metadata)
}

async fn describe(brokers: &str, name: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config(brokers).create()?;
    let metadata = topic_metadata(&consumer, brokers, name)?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .expect("topic_metadata found it");
    let mut out = std::io::stdout().lock();
    writeln!(out, "topic {name}: {} partitions", topic.partitions().len())?;
    writeln!(out, "partition\tleader\tlow\thigh")?;
    for partition in topic.partitions() {
        let (low, high) = consumer.fetch_watermarks(name, partition.id(), TIMEOUT)?;
        writeln!(
            out,
            "{}\t{}\t{low}\t{high}",
            partition.id(),
            partition.leader()
        )?;
    }
    let configs = admin(brokers)?
        .describe_configs([&ResourceSpecifier::Topic(name)], &options())
        .await?;
    for resource in configs {
        let resource = resource.map_err(|code| anyhow::anyhow!("describing {name}: {code}"))?;
        let entries: HashMap<_, _> = resource
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    (e.value.clone().unwrap_or_default(), e.is_default),
                )
            })
            .collect();
        let mut names: Vec<_> = entries.keys().collect();
        names.sort();
        writeln!(out, "config\tvalue\tsource")?;
        for key in names {
            let (value, default) = &entries[key];
            let source = if *default { "default" } else { "topic" };
            writeln!(out, "{key}\t{value}\t{source}")?;
        }
    }
    Ok(())
}
