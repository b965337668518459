//! Produce: appends happen now, before the connection's next request; a request's partitions
//! are appended side by side (each a write to the disk when direct I/O is on). The acks=all
//! answer waits in its own task for the group commit, so the connection can take the next
//! request meanwhile.

use std::fs::File;
use std::sync::Arc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use tokio::task::JoinHandle;

use super::{Close, Context, Reply, Request};
use crate::storage::partition::Appended;
use crate::storage::AppendError;

/// A partition's answer, or the append it waits for.
enum Slot {
    Answered(PartitionProduceResponse),
    Appending(
        PartitionProduceResponse,
        JoinHandle<Result<(Appended, Arc<File>), AppendError>>,
    ),
}

pub async fn handle(ctx: &Arc<Context>, req: &mut Request) -> Result<Reply, Close> {
    let request: ProduceRequest = req.decode()?;
    let acks = request.acks;
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut appending = Vec::new();
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let topic = ctx.storage.topic(&name);
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let response = PartitionProduceResponse::default().with_index(data.index);
            let partition = topic.as_ref().and_then(|t| t.partition(data.index));
            let (Some(topic), Some(partition)) = (&topic, partition) else {
                partitions.push(Slot::Answered(refuse(
                    ctx,
                    response,
                    ResponseError::UnknownTopicOrPartition,
                    None,
                )));
                continue;
            };
            let refusal = if crate::storage::is_internal(&name) {
                // Internal topics are written by the broker alone (Kafka refuses the same way).
                let why = format!("{name} is an internal topic; clients cannot write to it");
                Some((ResponseError::InvalidTopicException, why))
            } else if request.transactional_id.is_some() {
                let why = "transactions are not supported".to_owned();
                Some((ResponseError::InvalidRequest, why))
            } else if appending.iter().any(|p| Arc::ptr_eq(p, &partition)) {
                // Appended side by side, the two would race for the partition's order.
                let why = "the partition appears twice in the request".to_owned();
                Some((ResponseError::InvalidRequest, why))
            } else {
                None
            };
            if let Some((error, why)) = refusal {
                partitions.push(Slot::Answered(refuse(ctx, response, error, Some(why))));
                continue;
            }
            appending.push(partition.clone());
            let records = data.records.unwrap_or_default();
            let append = ctx.storage.append(topic.clone(), partition, records);
            partitions.push(Slot::Appending(response, append));
        }
        topics.push((name, topic_data.name, partitions));
    }
    let mut files: Vec<Arc<File>> = Vec::new();
    let mut responses = Vec::with_capacity(topics.len());
    for (name, topic_name, slots) in topics {
        let mut partitions = Vec::with_capacity(slots.len());
        for slot in slots {
            let (response, append) = match slot {
                Slot::Answered(response) => {
                    partitions.push(response);
                    continue;
                }
                Slot::Appending(response, append) => (response, append),
            };
            let appended = append.await.unwrap_or_else(|e| Err(e.into()));
            match appended {
                Ok((appended, file)) => {
                    if !files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                        files.push(file);
                    }
                    partitions.push(
                        response
                            .with_base_offset(appended.base_offset)
                            .with_log_start_offset(appended.log_start_offset),
                    );
                }
                Err(e) => {
                    let index = response.index;
                    tracing::debug!(topic = %name, partition = index, error = %e, "produce refused");
                    let code = match &e {
                        AppendError::Corrupt(e) if e.is_forbidden() => ResponseError::InvalidRecord,
                        AppendError::Corrupt(_) => ResponseError::CorruptMessage,
                        AppendError::TooLarge { .. } => ResponseError::MessageTooLarge,
                        AppendError::OutOfOrderSequence { .. } => {
                            ResponseError::OutOfOrderSequenceNumber
                        }
                        AppendError::ProducerFenced { .. } => ResponseError::InvalidProducerEpoch,
                        AppendError::UnknownProducer => ResponseError::UnknownProducerId,
                        AppendError::DiskFull
                        | AppendError::Failed
                        | AppendError::RollSyncFailed(_)
                        | AppendError::Closed
                        | AppendError::Task(_)
                        | AppendError::Io(_) => ResponseError::KafkaStorageError,
                    };
                    partitions.push(refuse(ctx, response, code, Some(e.to_string())));
                }
            }
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_name)
                .with_partition_responses(partitions),
        );
    }
    if acks == 0 {
        // No answer can carry the error: Kafka closes the connection instead, so the producer
        // refreshes its metadata (a partition gone, a topic made again) rather than writing on
        // into nothing.
        let refused = responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.error_code != 0);
        if let Some(p) = refused {
            let why = p.error_message.as_deref().unwrap_or("refused").to_owned();
            return Err(Close::new(
                "acks0_refused",
                format!("acks=0 produce refused (error {}): {why}", p.error_code),
            ));
        }
        return Ok(Reply::Now(None));
    }
    let body = ProduceResponse::default().with_responses(responses);
    if acks != -1 || files.is_empty() {
        return Ok(Reply::Now(Some(req.respond(ApiKey::Produce, &body)?)));
    }
    let ctx = ctx.clone();
    let (version, correlation_id) = (req.version, req.header.correlation_id);
    Ok(Reply::Later(tokio::spawn(async move {
        let mut body = body;
        if let Err(e) = ctx.storage.make_durable(files).await {
            tracing::error!(error = %e, "acks=all write could not be made durable");
            for topic in &mut body.responses {
                for p in &mut topic.partition_responses {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::KafkaStorageError.code();
                        p.base_offset = -1;
                    }
                }
            }
        }
        super::encode_response(ApiKey::Produce, version, correlation_id, &body)
            .map_err(|e| tracing::error!(detail = %e.detail, "encoding a produce response"))
            .ok()
    })))
}

fn refuse(
    ctx: &Context,
    response: PartitionProduceResponse,
    error: ResponseError,
    message: Option<String>,
) -> PartitionProduceResponse {
    ctx.metrics
        .produce_refused
        .with_label_values(&[&format!("{error:?}")])
        .inc();
    response
        .with_error_code(error.code())
        .with_base_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}
