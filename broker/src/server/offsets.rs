//! ListOffsets (earliest, latest, by timestamp) and OffsetForLeaderEpoch (one epoch, 0, ever).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::ResponseError;
use tokio::task::JoinHandle;

use super::{encode_response, Close, Context, Request};
use crate::storage::compress::decode_records;
use crate::storage::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734: the record with the largest timestamp (librdkafka asks at any version).
const MAX_TIMESTAMP: i64 = -3;
/// KIP-405: the earliest offset on local disk, which here is all of the log.
const EARLIEST_LOCAL: i64 = -4;

/// Runs in its own task: a timestamp lookup reads the log.
pub fn list_offsets(
    ctx: &Arc<Context>,
    req: &mut Request,
) -> Result<JoinHandle<Option<Bytes>>, Close> {
    let request: ListOffsetsRequest = req.decode()?;
    let ctx = ctx.clone();
    let (version, correlation_id) = (req.version, req.header.correlation_id);
    Ok(tokio::spawn(async move {
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic_request in request.topics {
            let topic = ctx.storage.topic(topic_request.name.as_str());
            let mut partitions = Vec::with_capacity(topic_request.partitions.len());
            for wanted in topic_request.partitions {
                let response = ListOffsetsPartitionResponse::default()
                    .with_partition_index(wanted.partition_index);
                let Some(partition) = topic
                    .as_ref()
                    .and_then(|t| t.partition(wanted.partition_index))
                else {
                    partitions.push(
                        response.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    );
                    continue;
                };
                partitions.push(match lookup(&partition, wanted.timestamp).await {
                    Ok((offset, timestamp)) => response
                        .with_offset(offset)
                        .with_timestamp(timestamp)
                        .with_leader_epoch(if version >= 4 { 0 } else { -1 }),
                    Err(e) => {
                        tracing::error!(error = %e, "ListOffsets by timestamp");
                        response.with_error_code(ResponseError::KafkaStorageError.code())
                    }
                });
            }
            topics.push(
                ListOffsetsTopicResponse::default()
                    .with_name(topic_request.name)
                    .with_partitions(partitions),
            );
        }
        let body = ListOffsetsResponse::default().with_topics(topics);
        encode_response(ApiKey::ListOffsets, version, correlation_id, &body)
            .map_err(|e| tracing::error!(detail = %e.detail, "encoding a ListOffsets response"))
            .ok()
    }))
}

/// (offset, timestamp) for a ListOffsets query: -1 latest, -2 (and -4) earliest, -3 the first
/// record of the largest timestamp, else the first record at or after that time, or (-1, -1)
/// when there is none.
async fn lookup(partition: &Partition, timestamp: i64) -> std::io::Result<(i64, i64)> {
    match timestamp {
        LATEST => Ok((partition.log_end_offset(), -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((partition.log_start_offset(), -1)),
        // Batches without timestamps (or with odd negative ones) hold no largest timestamp.
        MAX_TIMESTAMP => match partition.max_timestamp() {
            newest if newest < 0 => Ok((-1, -1)),
            newest => first_at_or_after(partition, newest).await,
        },
        t => first_at_or_after(partition, t).await,
    }
}

/// (offset, timestamp) of the first record whose timestamp is at least `t`, or (-1, -1).
async fn first_at_or_after(partition: &Partition, t: i64) -> std::io::Result<(i64, i64)> {
    let Some((base_offset, batch)) = partition.find_timestamp(t).await? else {
        return Ok((-1, -1));
    };
    // The batch holds a record at or after `t`; which one needs the records themselves.
    let decoded = decode_records(&mut batch.clone())
        .map_err(|e| std::io::Error::other(format!("decoding a stored batch: {e:#}")))?;
    Ok(decoded
        .records
        .iter()
        .find(|r| r.timestamp >= t)
        .map_or((base_offset, t), |r| (r.offset, r.timestamp)))
}

/// Every offset belongs to leader epoch 0, which ends at the log end.
pub fn leader_epoch(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: OffsetForLeaderEpochRequest = req.decode()?;
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.storage.topic(t.topic.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default().with_partition(p.partition);
                    match topic.as_ref().and_then(|t| t.partition(p.partition)) {
                        Some(partition) => answer
                            .with_leader_epoch(0)
                            .with_end_offset(partition.log_end_offset()),
                        None => answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    let body = OffsetForLeaderEpochResponse::default().with_topics(topics);
    req.respond(ApiKey::OffsetForLeaderEpoch, &body)
}
