//! Metadata: this broker as the only node, controller and leader of every partition.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{Close, Context, Request};
use crate::storage::{Topic, TopicError};

pub async fn handle(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: MetadataRequest = req.decode()?;
    // v0 asks for all topics with an empty list; v1+ with a null one.
    let wanted: Option<Vec<String>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && req.version == 0 => None,
        Some(list) => Some(
            list.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let auto_create = req.version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => topics.extend(ctx.storage.topics().iter().map(|t| describe(ctx, t))),
        Some(names) => {
            for name in names {
                let found = if auto_create {
                    ctx.storage.topic_or_create(&name).await
                } else {
                    ctx.storage
                        .topic(&name)
                        .ok_or_else(|| TopicError::Unknown(name.clone()))
                };
                topics.push(match found {
                    Ok(topic) => describe(ctx, &topic),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(topic_name(&name)))
                        .with_error_code(topic_error_code(&e)),
                });
            }
        }
    }
    let body = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(ctx.node_id))
            .with_host(StrBytes::from_string(ctx.advertised_host.clone()))
            .with_port(ctx.advertised_port)])
        .with_cluster_id(Some(StrBytes::from_string(ctx.cluster_id.clone())))
        .with_controller_id(BrokerId(ctx.node_id))
        .with_topics(topics);
    req.respond(ApiKey::Metadata, &body)
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The Kafka error code for a failed topic operation.
pub fn topic_error_code(e: &TopicError) -> i16 {
    match e {
        TopicError::Exists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        TopicError::InvalidName(_) | TopicError::Internal(_) => {
            ResponseError::InvalidTopicException
        }
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::Io(_) => ResponseError::KafkaStorageError,
    }
    .code()
}

fn describe(ctx: &Context, topic: &Topic) -> MetadataResponseTopic {
    let me = BrokerId(ctx.node_id);
    let partitions = (0..topic.partition_count())
        .map(|i| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(me)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(vec![me])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_is_internal(crate::storage::is_internal(&topic.name))
        .with_partitions(partitions)
}
