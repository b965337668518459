//! Fetch: whole batches from the requested offsets, long-polling until `min_bytes` are there or
//! `max_wait_ms` passes. Every requested partition is in the answer, as kafka-python requires of
//! a full (sessionless) fetch response.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::{encode_response, Close, Context, Reply, Request};
use crate::storage::batch::BatchHeader;
use crate::storage::partition::ReadError;

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn handle(ctx: &Arc<Context>, req: &mut Request) -> Result<Reply, Close> {
    let request: FetchRequest = req.decode()?;
    let ctx = ctx.clone();
    let (version, correlation_id) = (req.version, req.header.correlation_id);
    Ok(Reply::Later(tokio::spawn(async move {
        let body = fetch(&ctx, &request).await;
        encode_response(ApiKey::Fetch, version, correlation_id, &body)
            .map_err(|e| tracing::error!(detail = %e.detail, "encoding a fetch response"))
            .ok()
    })))
}

async fn fetch(ctx: &Context, request: &FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    loop {
        let appended = ctx.storage.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let (responses, bytes, errors) = read_all(ctx, request).await;
        // min_bytes 0 asks for an answer at once, data or not.
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            count_out(ctx, &responses);
            return FetchResponse::default().with_responses(responses);
        }
        tokio::select! {
            _ = &mut appended => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Reads every requested partition once; returns the answers, the bytes found, and whether any
/// partition has an error (which ends the long poll at once).
async fn read_all(
    ctx: &Context,
    request: &FetchRequest,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    // A client may ask for up to 2 GiB per partition; the broker's cap bounds what one fetch holds.
    let cap = ctx.fetch_max_bytes;
    let mut budget = (request.max_bytes.max(0) as usize).min(cap);
    let mut total = 0;
    let mut errors = false;
    let mut responses = Vec::with_capacity(request.topics.len());
    for fetch_topic in &request.topics {
        let topic = ctx.storage.topic(fetch_topic.topic.as_str());
        let mut partitions = Vec::with_capacity(fetch_topic.partitions.len());
        for wanted in &fetch_topic.partitions {
            let mut data = PartitionData::default().with_partition_index(wanted.partition);
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(wanted.partition)) else {
                errors = true;
                partitions
                    .push(data.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            // Only the first batch of the response may exceed the limits (so a consumer always
            // progresses); after it, a partition whose next batch does not fit gets nothing.
            let first = total == 0;
            let limit = (wanted.partition_max_bytes.max(0) as usize).min(budget);
            if limit == 0 && !first {
                let end = partition.log_end_offset();
                partitions.push(
                    data.with_high_watermark(end)
                        .with_last_stable_offset(end)
                        .with_log_start_offset(partition.log_start_offset())
                        .with_records(Some(Bytes::new())),
                );
                continue;
            }
            data = match partition.read(wanted.fetch_offset, limit, first).await {
                Ok(read) => {
                    total += read.records.len();
                    budget = budget.saturating_sub(read.records.len());
                    data.with_high_watermark(read.high_watermark)
                        .with_last_stable_offset(read.high_watermark)
                        .with_log_start_offset(read.log_start_offset)
                        .with_records(Some(read.records))
                }
                Err(e) => {
                    errors = true;
                    let code = match e {
                        ReadError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
                        ReadError::Corrupt(position) => {
                            ctx.metrics
                                .corrupt_reads
                                .with_label_values(&[fetch_topic.topic.as_str()])
                                .inc();
                            let (topic, index) = (fetch_topic.topic.as_str(), wanted.partition);
                            if ctx
                                .quiet
                                .first_in_a_while(&format!("corrupt {topic}-{index}"))
                            {
                                tracing::error!(%topic, partition = index, position, "corrupt batch in the log; not serving it (said once a minute; sluice_broker_corrupt_batches_total counts every read)");
                            }
                            // What Kafka says of a batch that fails its checks: the consumer
                            // is told, rather than retrying in silence as for a storage error.
                            ResponseError::CorruptMessage
                        }
                        ReadError::Io(e) => {
                            tracing::error!(topic = %fetch_topic.topic.as_str(), partition = wanted.partition,
                                error = %e, "reading the log");
                            ResponseError::KafkaStorageError
                        }
                    };
                    data.with_error_code(code.code())
                        .with_high_watermark(partition.log_end_offset())
                        .with_last_stable_offset(partition.log_end_offset())
                        .with_log_start_offset(partition.log_start_offset())
                        .with_records(Some(Bytes::new()))
                }
            };
            partitions.push(data);
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(fetch_topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    (responses, total, errors)
}

fn count_out(ctx: &Context, responses: &[FetchableTopicResponse]) {
    for topic in responses {
        let (mut bytes, mut records) = (0u64, 0u64);
        for p in &topic.partitions {
            let Some(mut rest) = p.records.as_deref() else {
                continue;
            };
            bytes += rest.len() as u64;
            while let Ok(header) = BatchHeader::parse(rest) {
                records += header.record_count.max(0) as u64;
                rest = &rest[header.size.min(rest.len())..];
            }
        }
        if bytes > 0 {
            let name = [topic.topic.as_str()];
            ctx.metrics.bytes_out.with_label_values(&name).inc_by(bytes);
            ctx.metrics
                .records_out
                .with_label_values(&name)
                .inc_by(records);
        }
    }
}
