//! The Kafka output: librdkafka with acks=all, idempotence on and lz4 (or zstd) batches, so it
//! works against the Sluice broker and any Kafka cluster alike.
//!
//! Events wait in librdkafka's queue (bounded by `queue.buffering.max.kbytes`) while the broker
//! is slow or away, and are retried without a deadline; a full queue makes the inputs wait.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::acks::Settle;
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;

/// The producer's batching, in librdkafka's words (`sluice bench agent` gives kcat the same).
///
/// `queue.buffering.max.kbytes`, what librdkafka may hold, is small: files wait in themselves
/// and the other inputs in the disk spool while the broker is slow or away, so this only smooths
/// batches. 4 MiB kept a file flood at full speed against a local broker; with 8 MiB the agent's
/// peak RSS was 37 MB rather than 27.
///
/// `linger.ms`, how long librdkafka waits to fill a batch, is what a log line's delivery may be
/// delayed by: fuller batches, as a file flood cost 30% more CPU per line at librdkafka's 5 ms.
pub const BATCHING: [(&str, &str); 2] =
    [("queue.buffering.max.kbytes", "4096"), ("linger.ms", "20")];

pub struct KafkaOutput {
    producer: ThreadedProducer<Deliveries, KeyHash>,
    metrics: AgentMetrics,
    /// Settles records nothing waits for.
    untracked: Arc<Settle>,
    /// The last record offered found the queue full.
    full: AtomicBool,
}

type Record<'a> = BaseRecord<'a, [u8], [u8], Arc<Settle>>;

struct Deliveries(AgentMetrics, KeyHash);

/// A record's partition is a hash of its key: one source stays on one partition. CRC-32C (one
/// instruction per 8 bytes) rather than librdkafka's default CRC-32 of zlib, which took 6% of
/// the agent's busiest thread on a file flood.
///
/// It remembers how many partitions the logs topic had when it last ran, so a batch of one
/// file's lines (one key) is partitioned once and its other records name their partition: the
/// partitioner, called back per record, took a tenth of the file shipper's thread.
struct KeyHash {
    logs_topic: String,
    /// 0 until known.
    logs_partitions: AtomicI32,
}

impl KeyHash {
    fn of(key: &[u8], partitions: i32) -> i32 {
        (crc32c::crc32c(key) % partitions.max(1).unsigned_abs()) as i32
    }
}

impl Partitioner for KeyHash {
    fn partition(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        partitions: i32,
        _available: impl Fn(i32) -> bool,
    ) -> i32 {
        if topic == self.logs_topic {
            self.logs_partitions.store(partitions, Ordering::Relaxed);
        }
        Self::of(key.unwrap_or_default(), partitions)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext<KeyHash> for Deliveries {
    type DeliveryOpaque = Arc<Settle>;

    fn get_custom_partitioner(&self) -> Option<&KeyHash> {
        Some(&self.1)
    }

    fn delivery(&self, result: &DeliveryResult<'_>, settle: Arc<Settle>) {
        match result {
            Ok(_) => {
                self.0.events_sent.inc();
                settle.one_done();
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "agent: an event was not delivered");
                self.0.send_errors.inc();
                settle.one_failed();
            }
        }
    }
}

/// The producer's librdkafka settings: the agent's own, then `[agent.kafka]` over them.
fn settings(config: &AgentConfig) -> ClientConfig {
    let mut settings = ClientConfig::new();
    settings
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "sluice-agent")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", &config.compression)
        // Never give up on an event: the broker may be away for a while.
        .set("message.timeout.ms", "0")
        .set("log_level", "3");
    for (key, value) in BATCHING {
        settings.set(key, value);
    }
    for (key, value) in &config.kafka {
        settings.set(key, value);
    }
    settings
}

impl KafkaOutput {
    pub fn new(config: &AgentConfig, metrics: AgentMetrics) -> anyhow::Result<Self> {
        let producer = settings(config)
            .create_with_context(Deliveries(
                metrics.clone(),
                KeyHash {
                    logs_topic: config.topic.clone(),
                    logs_partitions: AtomicI32::new(0),
                },
            ))
            .map_err(|e| anyhow::anyhow!("agent: Kafka producer for {}: {e}", config.brokers))?;
        Ok(Self {
            producer,
            metrics,
            untracked: Settle::untracked(),
            full: AtomicBool::new(false),
        })
    }

    /// Queues one record under `key` (one source stays on one partition) with `timestamp` (ms),
    /// waiting while the queue is full; `settle` (if any) is told when the broker has it.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp: i64,
        settle: Option<&Arc<Settle>>,
    ) -> anyhow::Result<()> {
        self.send_record(self.record(topic, key, payload, timestamp, settle))
            .await
    }

    /// As `send`, to `partition` (what `logs_partition` gave for `key`).
    pub async fn send_to_partition(
        &self,
        partition: i32,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp: i64,
        settle: &Arc<Settle>,
    ) -> anyhow::Result<()> {
        let record = self.record(topic, key, payload, timestamp, Some(settle));
        self.send_record(record.partition(partition)).await
    }

    async fn send_record(&self, mut record: Record<'_>) -> anyhow::Result<()> {
        while let Some(back) = self.queue(record)? {
            record = back;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The partition the partitioner gives records of the logs topic under `key`, with the
    /// partition count it last saw (`None` until it ran for the topic): one file's batch names
    /// it rather than calling the partitioner for each of its lines.
    pub fn logs_partition(&self, key: &[u8]) -> Option<i32> {
        let partitions = self
            .producer
            .context()
            .1
            .logs_partitions
            .load(Ordering::Relaxed);
        (partitions > 0).then(|| KeyHash::of(key, partitions))
    }

    /// Queues one record as `send` does, unless the queue is full: whether it was queued.
    pub fn try_send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp: i64,
    ) -> anyhow::Result<bool> {
        let record = self.record(topic, key, payload, timestamp, None);
        Ok(self.queue(record)?.is_none())
    }

    /// Whether the last record offered found librdkafka's queue full.
    pub fn queue_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn record<'a>(
        &self,
        topic: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
        timestamp: i64,
        settle: Option<&Arc<Settle>>,
    ) -> Record<'a> {
        let settle = settle.unwrap_or(&self.untracked).clone();
        BaseRecord::with_opaque_to(topic, settle)
            .key(key)
            .payload(payload)
            .timestamp(timestamp)
    }

    /// Queues the record; gives it back when the queue is full.
    fn queue<'a>(&self, record: Record<'a>) -> anyhow::Result<Option<Record<'a>>> {
        let (topic, bytes) = (record.topic, record.payload.map_or(0, <[u8]>::len));
        match self.producer.send(record) {
            Ok(()) => {
                if self.queue_full() {
                    self.full.store(false, Ordering::Relaxed);
                }
                Ok(None)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                self.full.store(true, Ordering::Relaxed);
                Ok(Some(back))
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), mut back))
                if back.partition.is_some() =>
            {
                // Fewer partitions than the partitioner last saw (the topic was made again):
                // the partitioner chooses.
                back.partition = None;
                self.queue(back)
            }
            Err((KafkaError::MessageProduction(code), refused))
                if code != RDKafkaErrorCode::Fatal =>
            {
                // This record can never be sent (too large, say): counted and let go, so it
                // cannot hold up its input, nor a file's checkpoint, for ever.
                tracing::warn!(%topic, error = %code, bytes, "agent: a record was refused");
                self.metrics.send_errors.inc();
                refused.delivery_opaque.one_done();
                Ok(None)
            }
            Err((e, _)) => anyhow::bail!("agent: queueing a record for {topic}: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_kafka_properties_go_over_the_agents_own() {
        let mut config = AgentConfig::default();
        config.kafka.insert("linger.ms".into(), "50".into());
        config
            .kafka
            .insert("security.protocol".into(), "sasl_ssl".into());
        let settings = settings(&config);
        assert_eq!(settings.get("linger.ms"), Some("50"));
        assert_eq!(settings.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(settings.get("acks"), Some("all"));
        assert_eq!(settings.get("enable.idempotence"), Some("true"));
    }
}
