//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, OffsetDelete, DescribeGroups, ListGroups, DeleteGroups. This broker coordinates
//! every group; the state machine is `coordinator::group`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::metadata::topic_name;
use super::{encode_response, Close, Context, Request};
use crate::coordinator::group::JoinRequest;
use crate::coordinator::CommitRequest;

const KEY_TYPE_GROUP: i8 = 0;
/// Bounds on what members may ask for, as Kafka's group.min/max.session.timeout.ms.
const SESSION_TIMEOUTS: std::ops::RangeInclusive<i32> = 1_000..=1_800_000;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub fn find_coordinator(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: FindCoordinatorRequest = req.decode()?;
    let body = if request.key_type == KEY_TYPE_GROUP {
        FindCoordinatorResponse::default()
            .with_node_id(BrokerId(ctx.node_id))
            .with_host(text(&ctx.advertised_host))
            .with_port(ctx.advertised_port)
    } else {
        // An error clients do not retry: COORDINATOR_NOT_AVAILABLE left confluent-kafka and
        // kafka-python retrying until their own timeouts.
        FindCoordinatorResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_error_message(Some(text("transactions are not supported")))
            .with_node_id(BrokerId(-1))
            .with_port(-1)
    };
    req.respond(ApiKey::FindCoordinator, &body)
}

/// The error for a member of a group the coordinator does not have: an empty group id is no
/// group's (Kafka's INVALID_GROUP_ID); else the member is unknown.
fn no_such_group(group_id: &str) -> i16 {
    match group_id.is_empty() {
        true => ResponseError::InvalidGroupId.code(),
        false => ResponseError::UnknownMemberId.code(),
    }
}

/// Answers when the rebalance completes, in its own task.
pub fn join_group(
    ctx: &Arc<Context>,
    req: &mut Request,
) -> Result<JoinHandle<Option<Bytes>>, Close> {
    let request: JoinGroupRequest = req.decode()?;
    let (version, correlation_id) = (req.version, req.header.correlation_id);
    let (tx, rx) = oneshot::channel();
    if request.group_id.is_empty() {
        let _ = tx.send(crate::coordinator::group::JoinResult {
            error: ResponseError::InvalidGroupId.code(),
            generation: -1,
            member_id: request.member_id.to_string(),
            ..Default::default()
        });
    } else if !SESSION_TIMEOUTS.contains(&request.session_timeout_ms) {
        let _ = tx.send(crate::coordinator::group::JoinResult {
            error: ResponseError::InvalidSessionTimeout.code(),
            generation: -1,
            member_id: request.member_id.to_string(),
            ..Default::default()
        });
    } else {
        let session = Duration::from_millis(request.session_timeout_ms as u64);
        let rebalance = if version >= 1 {
            Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
        } else {
            session
        };
        let join = JoinRequest {
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: req
                .header
                .client_id
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            client_host: req.peer.clone(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        ctx.coordinator.with_group(request.group_id.as_str(), |g| {
            g.join(join, Instant::now(), tx)
        });
    }
    Ok(tokio::spawn(async move {
        let result = rx.await.ok()?;
        let members = result
            .members
            .into_iter()
            .map(|(id, instance, metadata)| {
                JoinGroupResponseMember::default()
                    .with_member_id(text(&id))
                    .with_group_instance_id(instance.map(|s| text(&s)))
                    .with_metadata(metadata)
            })
            .collect();
        let body = JoinGroupResponse::default()
            .with_error_code(result.error)
            .with_generation_id(result.generation)
            .with_protocol_type(if version >= 7 {
                result.protocol_type.map(|s| text(&s))
            } else {
                None
            })
            .with_protocol_name(Some(text(&result.protocol.unwrap_or_default())))
            .with_leader(text(&result.leader))
            .with_member_id(text(&result.member_id))
            .with_members(members);
        encode_response(ApiKey::JoinGroup, version, correlation_id, &body)
            .map_err(|e| tracing::error!(detail = %e.detail, "encoding a JoinGroup response"))
            .ok()
    }))
}

/// Answers once the leader's assignment is in, in its own task.
pub fn sync_group(
    ctx: &Arc<Context>,
    req: &mut Request,
) -> Result<JoinHandle<Option<Bytes>>, Close> {
    let request: SyncGroupRequest = req.decode()?;
    let (version, correlation_id) = (req.version, req.header.correlation_id);
    let (tx, rx) = oneshot::channel();
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    // The closure runs only if the group exists; otherwise the member is unknown.
    let mut reply = Some(tx);
    ctx.coordinator
        .existing_group(request.group_id.as_str(), |g| {
            let tx = reply.take().expect("the closure runs once");
            match g.fenced(request.member_id.as_str(), instance.as_deref()) {
                Some(error) => {
                    let result = crate::coordinator::group::SyncResult {
                        error,
                        ..Default::default()
                    };
                    let _ = tx.send(result);
                }
                None => g.sync(
                    request.member_id.as_str(),
                    request.generation_id,
                    assignments,
                    Instant::now(),
                    tx,
                ),
            }
        });
    if let Some(tx) = reply {
        let _ = tx.send(crate::coordinator::group::SyncResult {
            error: no_such_group(request.group_id.as_str()),
            ..Default::default()
        });
    }
    Ok(tokio::spawn(async move {
        let result = rx.await.ok()?;
        let mut body = SyncGroupResponse::default()
            .with_error_code(result.error)
            .with_assignment(result.assignment);
        if version >= 5 {
            body = body
                .with_protocol_type(result.protocol_type.map(|s| text(&s)))
                .with_protocol_name(result.protocol.map(|s| text(&s)));
        }
        encode_response(ApiKey::SyncGroup, version, correlation_id, &body)
            .map_err(|e| tracing::error!(detail = %e.detail, "encoding a SyncGroup response"))
            .ok()
    }))
}

pub fn heartbeat(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: HeartbeatRequest = req.decode()?;
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let error = ctx
        .coordinator
        .existing_group(request.group_id.as_str(), |g| {
            g.fenced(request.member_id.as_str(), instance.as_deref())
                .unwrap_or_else(|| {
                    g.heartbeat(
                        request.member_id.as_str(),
                        request.generation_id,
                        Instant::now(),
                    )
                })
        })
        .unwrap_or_else(|| no_such_group(request.group_id.as_str()));
    req.respond(
        ApiKey::Heartbeat,
        &HeartbeatResponse::default().with_error_code(error),
    )
}

pub fn leave_group(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: LeaveGroupRequest = req.decode()?;
    let now = Instant::now();
    let body = if request.group_id.is_empty() {
        LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code())
    } else if req.version >= 3 {
        let members = request
            .members
            .iter()
            .map(|m| {
                let error = ctx
                    .coordinator
                    .existing_group(request.group_id.as_str(), |g| {
                        let instance = m.group_instance_id.as_ref().map(|i| i.as_str());
                        g.leave_member(m.member_id.as_str(), instance, now)
                    })
                    .unwrap_or(ResponseError::UnknownMemberId.code());
                MemberResponse::default()
                    .with_member_id(m.member_id.clone())
                    .with_group_instance_id(m.group_instance_id.clone())
                    .with_error_code(error)
            })
            .collect();
        LeaveGroupResponse::default().with_members(members)
    } else {
        let error = ctx
            .coordinator
            .existing_group(request.group_id.as_str(), |g| {
                g.leave(request.member_id.as_str(), now)
            })
            .unwrap_or(ResponseError::UnknownMemberId.code());
        LeaveGroupResponse::default().with_error_code(error)
    };
    req.respond(ApiKey::LeaveGroup, &body)
}

/// Longest metadata an offset commit may carry (Kafka's `offset.metadata.max.bytes`).
const MAX_OFFSET_METADATA_BYTES: usize = 4096;

pub async fn offset_commit(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: OffsetCommitRequest = req.decode()?;
    let mut known = Vec::new();
    let mut refused = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let exists = ctx
                .storage
                .topic(topic.name.as_str())
                .and_then(|t| t.partition(p.partition_index))
                .is_some();
            let metadata_bytes = p.committed_metadata.as_ref().map_or(0, |m| m.len());
            let entry = (topic.name.clone(), p.partition_index);
            if !exists {
                refused.push((entry, ResponseError::UnknownTopicOrPartition.code()));
            } else if metadata_bytes > MAX_OFFSET_METADATA_BYTES {
                refused.push((entry, ResponseError::OffsetMetadataTooLarge.code()));
            } else {
                known.push((
                    entry,
                    CommitRequest {
                        topic: topic.name.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    },
                ));
            }
        }
    }
    let (entries, commits): (Vec<_>, Vec<_>) = known.into_iter().unzip();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let fenced = ctx
        .coordinator
        .existing_group(request.group_id.as_str(), |g| {
            g.fenced(request.member_id.as_str(), instance.as_deref())
        })
        .flatten();
    let error = if let Some(fenced) = fenced {
        fenced
    } else if commits.is_empty() {
        0
    } else {
        ctx.coordinator
            .commit(
                request.group_id.as_str(),
                request.generation_id_or_member_epoch,
                request.member_id.as_str(),
                commits,
            )
            .await
            .err()
            .unwrap_or(0)
    };
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    let results = entries.into_iter().map(|e| (e, error)).chain(refused);
    for ((name, partition), error) in results {
        let answer = OffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(error);
        match topics.iter_mut().find(|t| t.name == name) {
            Some(t) => t.partitions.push(answer),
            None => topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(vec![answer]),
            ),
        }
    }
    req.respond(
        ApiKey::OffsetCommit,
        &OffsetCommitResponse::default().with_topics(topics),
    )
}

pub fn offset_fetch(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: OffsetFetchRequest = req.decode()?;
    let committed = ctx.coordinator.committed(request.group_id.as_str());
    let answer = |topic: &str, partition: i32| {
        let c = committed.get(&(topic.to_owned(), partition));
        OffsetFetchResponsePartition::default()
            .with_partition_index(partition)
            .with_committed_offset(c.map_or(-1, |c| c.offset))
            .with_committed_leader_epoch(-1)
            .with_metadata(Some(text(c.map_or("", |c| c.metadata.as_str()))))
    };
    let topics = match request.topics {
        Some(wanted) => wanted
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&p| answer(t.name.as_str(), p))
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect(),
        None => {
            let mut topics: Vec<OffsetFetchResponseTopic> = Vec::new();
            for (topic, partition) in committed.keys() {
                let a = answer(topic, *partition);
                match topics.iter_mut().find(|t| t.name.as_str() == topic) {
                    Some(t) => t.partitions.push(a),
                    None => topics.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(vec![a]),
                    ),
                }
            }
            topics
        }
    };
    req.respond(
        ApiKey::OffsetFetch,
        &OffsetFetchResponse::default().with_topics(topics),
    )
}

pub fn describe_groups(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: DescribeGroupsRequest = req.decode()?;
    let listed = ctx.coordinator.list();
    let groups = ctx.coordinator.groups.lock().expect("groups lock");
    let described = request
        .groups
        .into_iter()
        .map(|id| {
            let answer = DescribedGroup::default().with_group_id(id.clone());
            match groups.get(id.as_str()) {
                Some(g) => answer
                    .with_group_state(text(g.state.name()))
                    .with_protocol_type(text(g.protocol_type.as_deref().unwrap_or("")))
                    .with_protocol_data(text(g.protocol.as_deref().unwrap_or("")))
                    .with_members(
                        g.members
                            .values()
                            .map(|m| {
                                let metadata = m
                                    .protocols
                                    .iter()
                                    .find(|(p, _)| Some(p) == g.protocol.as_ref())
                                    .map(|(_, md)| md.clone())
                                    .unwrap_or_default();
                                DescribedGroupMember::default()
                                    .with_member_id(text(&m.id))
                                    .with_group_instance_id(if req.version >= 4 {
                                        m.instance_id.as_deref().map(text)
                                    } else {
                                        None
                                    })
                                    .with_client_id(text(&m.client_id))
                                    .with_client_host(text(&m.client_host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(m.assignment.clone())
                            })
                            .collect(),
                    ),
                None if listed.iter().any(|(g, _, _)| g == id.as_str()) => answer
                    .with_group_state(text("Empty"))
                    .with_protocol_type(text("consumer")),
                None => answer.with_group_state(text("Dead")),
            }
        })
        .collect();
    drop(groups);
    req.respond(
        ApiKey::DescribeGroups,
        &DescribeGroupsResponse::default().with_groups(described),
    )
}

pub fn list_groups(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: ListGroupsRequest = req.decode()?;
    let groups = ctx
        .coordinator
        .list()
        .into_iter()
        .filter(|(_, _, state)| {
            request.states_filter.is_empty()
                || request.states_filter.iter().any(|s| s.as_str() == *state)
        })
        .map(|(id, protocol_type, state)| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(text(&id)))
                .with_protocol_type(text(&protocol_type));
            if req.version >= 4 {
                listed.with_group_state(text(state))
            } else {
                listed
            }
        })
        .collect();
    req.respond(
        ApiKey::ListGroups,
        &ListGroupsResponse::default().with_groups(groups),
    )
}

pub async fn delete_groups(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: DeleteGroupsRequest = req.decode()?;
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let error = ctx.coordinator.delete(id.as_str()).await.err().unwrap_or(0);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(error),
        );
    }
    req.respond(
        ApiKey::DeleteGroups,
        &DeleteGroupsResponse::default().with_results(results),
    )
}

/// Deletes a group's committed offsets of the partitions asked for (those of a topic a member
/// is subscribed to are refused, GROUP_SUBSCRIBED_TO_TOPIC).
pub async fn offset_delete(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: OffsetDeleteRequest = req.decode()?;
    let asked = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let body = match ctx
        .coordinator
        .delete_offsets(request.group_id.as_str(), asked)
        .await
    {
        Ok(results) => {
            let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
            for ((topic, partition), error) in results {
                let answer = OffsetDeleteResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(error);
                match topics.last_mut() {
                    Some(last) if last.name.as_str() == topic => last.partitions.push(answer),
                    _ => topics.push(
                        OffsetDeleteResponseTopic::default()
                            .with_name(topic_name(&topic))
                            .with_partitions(vec![answer]),
                    ),
                }
            }
            OffsetDeleteResponse::default().with_topics(topics)
        }
        Err(error) => OffsetDeleteResponse::default().with_error_code(error),
    };
    req.respond(ApiKey::OffsetDelete, &body)
}
