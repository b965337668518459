//! The Kafka output: librdkafka with acks=all, idempotence on and lz4 (or zstd) batches, so it
//! works against the Sluice broker and any Kafka cluster alike.
//!
//! Events wait in librdkafka's queue (bounded by `queue.buffering.max.kbytes`) while the broker
//! is slow or away, and are retried without a deadline; a full queue makes the inputs wait.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::acks::Ack;
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;

/// Bytes of records librdkafka may hold. Small: files wait in themselves and the other inputs in
/// the disk spool while the broker is slow or away, so this only smooths batches.
const QUEUE_KBYTES: &str = "8192";

pub struct KafkaOutput {
    producer: ThreadedProducer<Deliveries>,
    metrics: AgentMetrics,
}

struct Deliveries(AgentMetrics);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        match result {
            Ok(_) => {
                self.0.events_sent.inc();
                if let Some(settle) = ack.0 {
                    settle.one_done();
                }
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "agent: an event was not delivered");
                self.0.send_errors.inc();
            }
        }
    }
}

impl KafkaOutput {
    pub fn new(config: &AgentConfig, metrics: AgentMetrics) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", "sluice-agent")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", &config.compression)
            .set("linger.ms", "5")
            // Never give up on an event: the broker may be away for a while.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.kbytes", QUEUE_KBYTES)
            .set("log_level", "3")
            .create_with_context(Deliveries(metrics.clone()))
            .map_err(|e| anyhow::anyhow!("agent: Kafka producer for {}: {e}", config.brokers))?;
        Ok(Self { producer, metrics })
    }

    /// Queues one record under `key` (one source stays on one partition), waiting while the
    /// queue is full; `ack` is told when the broker has it.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        ack: Box<Ack>,
    ) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, str, [u8], Box<Ack>> =
            BaseRecord::with_opaque_to(topic, ack)
                .key(key)
                .payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((KafkaError::MessageProduction(code), refused))
                    if code != RDKafkaErrorCode::Fatal =>
                {
                    // This record can never be sent (too large, say): counted and let go, so it
                    // cannot hold up its input, nor a file's checkpoint, for ever.
                    tracing::warn!(%topic, error = %code, bytes = payload.len(), "agent: a record was refused");
                    self.metrics.send_errors.inc();
                    if let Some(settle) = refused.delivery_opaque.0 {
                        settle.one_done();
                    }
                    return Ok(());
                }
                Err((e, _)) => anyhow::bail!("agent: queueing a record for {topic}: {e}"),
            }
        }
    }

    /// Records queued or in flight, not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    /// Waits for everything queued to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| anyhow::anyhow!("agent: events still unacknowledged at stop: {e}"))
    }
}
