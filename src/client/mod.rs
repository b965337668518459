//! The client commands: `topics`, `groups`, `produce` and `consume` through librdkafka (what works
//! here works against any Kafka cluster too), and `search` through the search API.

pub mod consume;
pub mod groups;
pub mod produce;
pub mod search;
pub mod topics;

use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// How long a command waits for the broker before it gives up with an error.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A librdkafka configuration for `brokers`, with its own logging kept quiet.
pub fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "sluice-cli")
        .set("log_level", "3");
    config
}

/// Queues `record`, waiting while librdkafka's queue is full (the producer's back pressure).
pub fn send_waiting<K, P, C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> KafkaResult<()>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
