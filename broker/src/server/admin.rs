//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::metadata::topic_error_code;
use super::{Close, Context, Request};
use crate::storage::TopicError;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn message(e: &TopicError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

/// The partition count a CreateTopics entry asks for: its count, or one partition per entry of
/// a manual assignment (every one on this broker, the only one); else the error and why.
fn partitions_wanted(ctx: &Context, wanted: &CreatableTopic) -> Result<i32, (i16, String)> {
    if wanted.assignments.is_empty() {
        if !matches!(wanted.replication_factor, -1 | 1) {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor {} is not possible: Sluice keeps one copy (use 1 or -1)",
                    wanted.replication_factor
                ),
            ));
        }
        return Ok(wanted.num_partitions);
    }
    let refuse = |why: String| Err((ResponseError::InvalidReplicaAssignment.code(), why));
    // Kafka wants -1 beside an assignment; librdkafka sends the assignment's own figures.
    let count = wanted.assignments.len() as i32;
    if !matches!(wanted.num_partitions, -1) && wanted.num_partitions != count {
        return refuse(format!(
            "{} partitions asked for, but the assignment has {count}",
            wanted.num_partitions
        ));
    }
    if !matches!(wanted.replication_factor, -1 | 1) {
        return refuse(format!(
            "replication factor {} is not possible: Sluice keeps one copy",
            wanted.replication_factor
        ));
    }
    let mut indexes: Vec<i32> = wanted
        .assignments
        .iter()
        .map(|a| a.partition_index)
        .collect();
    indexes.sort_unstable();
    if indexes != (0..indexes.len() as i32).collect::<Vec<_>>() {
        return refuse(format!(
            "the assignment must name partitions 0 to {} once each",
            indexes.len() - 1
        ));
    }
    match wanted
        .assignments
        .iter()
        .find(|a| a.broker_ids.as_slice() != [BrokerId(ctx.node_id)])
    {
        Some(a) => refuse(format!(
            "partition {}: replicas {:?} are not possible: the only broker is {} and it keeps one copy",
            a.partition_index,
            a.broker_ids.iter().map(|b| b.0).collect::<Vec<_>>(),
            ctx.node_id
        )),
        None => Ok(indexes.len() as i32),
    }
}

pub async fn create_topics(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: CreateTopicsRequest = req.decode()?;
    let mut results = Vec::with_capacity(request.topics.len());
    for wanted in request.topics {
        let mut result = CreatableTopicResult::default().with_name(wanted.name.clone());
        let configs: BTreeMap<String, String> = wanted
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let created = match partitions_wanted(ctx, &wanted) {
            Err(refusal) => Err(refusal),
            Ok(partitions) => ctx
                .storage
                .create_topic(
                    wanted.name.as_str(),
                    partitions,
                    configs,
                    request.validate_only,
                )
                .await
                .map_err(|e| (topic_error_code(&e), e.to_string())),
        };
        result = match created {
            Ok(topic) => {
                let settings = topic.settings();
                let overrides = topic.overrides();
                result
                    .with_num_partitions(topic.partition_count().max(wanted.num_partitions))
                    .with_replication_factor(1)
                    .with_configs(Some(
                        settings
                            .describe()
                            .into_iter()
                            .map(|(name, value)| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(name))
                                    .with_value(Some(StrBytes::from_string(value)))
                                    .with_config_source(source(&overrides, name))
                            })
                            .collect(),
                    ))
            }
            Err((code, why)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(why))),
        };
        results.push(result);
    }
    req.respond(
        ApiKey::CreateTopics,
        &CreateTopicsResponse::default().with_topics(results),
    )
}

pub async fn delete_topics(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: DeleteTopicsRequest = req.decode()?;
    let names: Vec<_> = request
        .topic_names
        .into_iter()
        .chain(request.topics.into_iter().filter_map(|t| t.name))
        .collect();
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        responses.push(match ctx.storage.delete_topic(name.as_str()).await {
            Ok(()) => {
                ctx.coordinator.forget_topic(name.as_str()).await;
                result
            }
            Err(e) => result
                .with_error_code(topic_error_code(&e))
                .with_error_message(message(&e)),
        });
    }
    req.respond(
        ApiKey::DeleteTopics,
        &DeleteTopicsResponse::default().with_responses(responses),
    )
}

pub async fn create_partitions(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: CreatePartitionsRequest = req.decode()?;
    let mut results = Vec::with_capacity(request.topics.len());
    for wanted in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(wanted.name.clone());
        results.push(
            match ctx
                .storage
                .add_partitions(wanted.name.as_str(), wanted.count, request.validate_only)
                .await
            {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(topic_error_code(&e))
                    .with_error_message(message(&e)),
            },
        );
    }
    req.respond(
        ApiKey::CreatePartitions,
        &CreatePartitionsResponse::default().with_results(results),
    )
}

pub fn describe_configs(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: DescribeConfigsRequest = req.decode()?;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let entries: Vec<(String, String, i8)> = match resource.resource_type {
                RESOURCE_TOPIC => match ctx.storage.topic(resource.resource_name.as_str()) {
                    Some(topic) => {
                        let overrides = topic.overrides();
                        let mut entries: Vec<_> = topic
                            .settings()
                            .describe()
                            .into_iter()
                            .map(|(name, value)| (name.to_owned(), value, source(&overrides, name)))
                            .collect();
                        // Overrides accepted without effect are listed too: tools that alter
                        // a topic by describing it and sending the whole set keep them.
                        for (name, value) in overrides {
                            if !entries.iter().any(|(known, _, _)| *known == name) {
                                entries.push((name, value, SOURCE_TOPIC));
                            }
                        }
                        entries
                    }
                    None => {
                        let e = TopicError::Unknown(resource.resource_name.to_string());
                        return result
                            .with_error_code(topic_error_code(&e))
                            .with_error_message(message(&e));
                    }
                },
                RESOURCE_BROKER => broker_configs(ctx)
                    .into_iter()
                    .map(|(name, value, source)| (name.to_owned(), value, source))
                    .collect(),
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "resource type {other} is not supported (2 topic, 4 broker)"
                        ))))
                }
            };
            let configs = entries
                .into_iter()
                .filter(|(name, _, _)| wanted(name))
                .map(|(name, value, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_config_source(source)
                        // Broker configs come from sluice.toml: AlterConfigs refuses them.
                        .with_read_only(resource.resource_type == RESOURCE_BROKER)
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    req.respond(
        ApiKey::DescribeConfigs,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

fn source(overrides: &BTreeMap<String, String>, name: &str) -> i8 {
    if overrides.contains_key(name) {
        SOURCE_TOPIC
    } else {
        SOURCE_DEFAULT
    }
}

fn broker_configs(ctx: &Context) -> Vec<(&'static str, String, i8)> {
    let d = ctx.storage.defaults();
    vec![
        (
            "num.partitions",
            d.default_partitions.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "auto.create.topics.enable",
            d.auto_create_topics.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "message.max.bytes",
            d.max_message_bytes.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "log.segment.bytes",
            d.segment_bytes.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "log.retention.ms",
            d.retention_ms.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "log.retention.bytes",
            d.retention_bytes.to_string(),
            SOURCE_DEFAULT,
        ),
        (
            "compression.type",
            d.compression_type.as_str().to_owned(),
            SOURCE_DEFAULT,
        ),
        (
            "sluice.io.backend",
            ctx.storage.io_backend().to_owned(),
            SOURCE_DEFAULT,
        ),
    ]
}
