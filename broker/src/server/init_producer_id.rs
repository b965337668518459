//! InitProducerId for idempotent (not transactional) producers: a fresh producer id at epoch 0,
//! or, when a producer asks to bump its epoch (KIP-360), the same id at the next epoch.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{Close, Context, Request};

pub fn handle(ctx: &Arc<Context>, req: &mut Request) -> Result<Bytes, Close> {
    let request: InitProducerIdRequest = req.decode()?;
    let body = if request.transactional_id.is_some() {
        // Transactions are not supported: refuse plainly instead of pretending.
        InitProducerIdResponse::default().with_error_code(ResponseError::InvalidRequest.code())
    } else if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1)
    } else {
        match ctx.storage.new_producer_id() {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!(error = %e, "reserving producer ids");
                InitProducerIdResponse::default()
                    .with_error_code(ResponseError::KafkaStorageError.code())
            }
        }
    };
    req.respond(ApiKey::InitProducerId, &body)
}
