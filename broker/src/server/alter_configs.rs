//! AlterConfigs and IncrementalAlterConfigs: a topic's configs changed in place, the way
//! `kafka-configs.sh`, admin clients and `sluice topics alter` do it. Broker configs are the
//! config file's and are refused here.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::metadata::topic_error_code;
use super::{Close, Context, Request};

const RESOURCE_TOPIC: i8 = 2;
/// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;

type Outcome = Result<(), (i16, String)>;

/// Runs `change` on the topic's overrides, or says why the resource cannot be changed.
async fn alter(
    ctx: &Context,
    resource_type: i8,
    name: &str,
    change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), String>,
    validate_only: bool,
) -> Outcome {
    if resource_type != RESOURCE_TOPIC {
        let why = format!(
            "resource type {resource_type} cannot be altered here (2, topics, can); broker \
             settings are the config file's [broker] section and take effect at restart"
        );
        return Err((ResponseError::InvalidRequest.code(), why));
    }
    ctx.storage
        .alter_topic_configs(name, change, validate_only)
        .await
        .map_err(|e| (topic_error_code(&e), e.to_string()))
}

fn error_fields(outcome: Outcome) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((code, why)) => (code, Some(StrBytes::from_string(why))),
    }
}

/// KIP-339: each config set or deleted, the others kept.
pub async fn incremental(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: IncrementalAlterConfigsRequest = req.decode()?;
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let change = |configs: &mut BTreeMap<String, String>| {
            for config in &resource.configs {
                let key = config.name.to_string();
                match (config.config_operation, &config.value) {
                    (SET, Some(value)) => {
                        configs.insert(key, value.to_string());
                    }
                    (SET, None) => return Err(format!("config {key}: set without a value")),
                    (DELETE, _) => {
                        configs.remove(&key);
                    }
                    (op, _) => {
                        return Err(format!(
                            "config {key}: operation {op} (append, subtract) is not supported; \
                             set the whole value (cleanup.policy=compact,delete)"
                        ))
                    }
                }
            }
            Ok(())
        };
        let outcome = alter(
            ctx,
            resource.resource_type,
            &name,
            change,
            request.validate_only,
        );
        let (code, message) = error_fields(outcome.await);
        responses.push(
            IncrementalResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    req.respond(
        ApiKey::IncrementalAlterConfigs,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}

/// The older request: the configs given replace all of the topic's overrides.
pub async fn replace(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: AlterConfigsRequest = req.decode()?;
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let change = |configs: &mut BTreeMap<String, String>| {
            *configs = resource
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            Ok(())
        };
        let outcome = alter(
            ctx,
            resource.resource_type,
            &name,
            change,
            request.validate_only,
        );
        let (code, message) = error_fields(outcome.await);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    req.respond(
        ApiKey::AlterConfigs,
        &AlterConfigsResponse::default().with_responses(responses),
    )
}
