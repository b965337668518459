//! InitProducerId for idempotent (not transactional) producers: always a fresh producer id at
//! epoch 0, as Kafka gives one. A producer that asks to bump its epoch (KIP-360) gets a new id
//! too (and starts its sequences again); taking the id it names would hand out ids this broker
//! never issued, which the next producer to be issued one would collide with.

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
