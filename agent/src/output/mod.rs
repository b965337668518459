//! The Kafka output: librdkafka with acks=all, idempotence on and lz4 (or zstd) batches, so it
//! works against the Sluice broker and any Kafka cluster alike.
//!
//! Events wait in librdkafka's queue (bounded by `queue.buffering.max.kbytes`) while the broker
//! is slow or away, and are retried without a deadline; a full queue makes the inputs wait.
//! librdkafka does give up on a record whose topic the cluster says is unknown (auto-creation
//! off, not made yet) or not ours to write: such records are offered again (`resend_refused`)
//! until the cluster takes them, or handed to the spool at a stop (`take_unsent`). Only a record
//! that can never be sent (too large, malformed) is let go, and counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Message;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::acks::Settle;
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use refusals::{Refusals, Refused};

mod refusals;

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

/// How long records the cluster refused wait before they are offered again.
const RESEND_PAUSE: Duration = Duration::from_secs(1);

/// Records wait this long without a single acknowledgement before the agent says so: longer
/// than a Kafka cluster takes to move a leader, short enough for an operator watching.
const UNACKNOWLEDGED_FOR: Duration = Duration::from_secs(15);

pub struct KafkaOutput {
    producer: ThreadedProducer<Deliveries, KeyHash>,
    metrics: AgentMetrics,
    /// Settles records nothing waits for.
    untracked: Arc<Settle>,
    /// The last record offered was not taken: the queue was full, or the topic refused.
    stalled: AtomicBool,
    /// Topics that refuse records: each said once, and again when it takes records (a full
    /// queue, which comes and goes all through a flood, is not said).
    refusing: Mutex<HashSet<String>>,
    /// Whether `refusing` has any: the path of every record looks at this alone.
    any_refusing: AtomicBool,
}

type Record<'a> = BaseRecord<'a, [u8], [u8], Arc<Settle>>;

struct Deliveries {
    metrics: AgentMetrics,
    partitioner: KeyHash,
    refused: Refusals,
    /// Records are being refused: said once, until one is delivered.
    refusing: AtomicBool,
    said: Said,
    /// `[agent.kafka]` asks librdkafka for its logs (`debug`, `log_level`): all of them are said.
    verbose: bool,
}

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

/// librdkafka says each trouble twice (a log line and an error) and again at every reconnect:
/// an agent started with the brokers away wrote 66 lines in 10 s. Each kind of trouble is said
/// once a minute; the rest goes to debug.
impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if self.verbose {
            tracing::info!(facility, "librdkafka: {message}");
            return;
        }
        // Errors come again through `error`; only what is worse is said from here.
        if (level as i32) < (RDKafkaLogLevel::Error as i32) && self.said.first_in_a_while(facility)
        {
            tracing::warn!(facility, "librdkafka: {message}");
        } else {
            tracing::debug!(facility, "librdkafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = format!("{:?}", error.rdkafka_error_code());
        if self.said.first_in_a_while(&kind) {
            tracing::warn!(%error, "agent: Kafka: {reason} (events wait: files where they are, other inputs in the spool)");
        } else {
            tracing::debug!(%error, "agent: Kafka: {reason}");
        }
    }
}

/// When each kind of librdkafka trouble was last said.
#[derive(Default)]
struct Said(Mutex<HashMap<String, Instant>>);

impl Said {
    const EVERY: Duration = Duration::from_secs(60);

    fn first_in_a_while(&self, kind: &str) -> bool {
        let mut said = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if said
            .get(kind)
            .is_some_and(|at| now.duration_since(*at) < Self::EVERY)
        {
            return false;
        }
        // Kinds are librdkafka's error codes and log facilities: a few dozen at most.
        if said.len() >= 256 {
            said.clear();
        }
        said.insert(kind.to_owned(), now);
        true
    }
}

impl ProducerContext<KeyHash> for Deliveries {
    type DeliveryOpaque = Arc<Settle>;

    fn get_custom_partitioner(&self) -> Option<&KeyHash> {
        Some(&self.partitioner)
    }

    fn delivery(&self, result: &DeliveryResult<'_>, settle: Arc<Settle>) {
        match result {
            Ok(message) => {
                match message.topic() == self.partitioner.logs_topic {
                    true => self.metrics.events_sent.inc(),
                    false => self.metrics.samples_sent.inc(),
                }
                settle.one_done();
                if self.refusing.swap(false, Ordering::Relaxed) {
                    tracing::info!("agent: records are delivered again");
                }
            }
            Err((e, message)) => {
                let purged = matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                );
                if !purged {
                    self.metrics.send_errors.inc();
                }
                if e.rdkafka_error_code().is_some_and(never_sendable) {
                    // As when librdkafka refuses it at the door (`queue`): counted and let go,
                    // or a file's checkpoint would stay before it for ever, and every start
                    // would send the rest of the file again. librdkafka does not split a batch
                    // the cluster refuses as too large: every record in it comes here.
                    tracing::warn!(topic = message.topic(), error = %e, "agent: an event was refused for good (if the topic's max.message.bytes is below librdkafka's batch.size, 1000000 by default, whole batches are: lower [agent.kafka] batch.size)");
                    settle.one_done();
                    return;
                }
                if !purged && !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(topic = message.topic(), error = %e, "agent: the cluster refuses records for the topic; they are sent again until it takes them");
                }
                let again = Refused {
                    topic: message.topic().to_owned(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    timestamp: message
                        .timestamp()
                        .to_millis()
                        .unwrap_or_else(crate::event::now_ms),
                    settle,
                };
                self.refused.push(again);
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

/// Refusals that no wait can cure: the record itself is wrong.
fn never_sendable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidMessageSize
    )
}

impl KafkaOutput {
    pub fn new(config: &AgentConfig, metrics: AgentMetrics) -> anyhow::Result<Self> {
        let producer = settings(config)
            .create_with_context(Deliveries {
                metrics: metrics.clone(),
                partitioner: KeyHash {
                    logs_topic: config.topic.clone(),
                    logs_partitions: AtomicI32::new(0),
                },
                refused: Refusals::default(),
                refusing: AtomicBool::new(false),
                said: Said::default(),
                verbose: ["debug", "log_level"]
                    .iter()
                    .any(|key| config.kafka.contains_key(*key)),
            })
            .map_err(|e| anyhow::anyhow!("agent: Kafka producer for {}: {e}", config.brokers))?;
        Ok(Self {
            producer,
            metrics,
            untracked: Settle::untracked(),
            stalled: AtomicBool::new(false),
            refusing: Mutex::default(),
            any_refusing: AtomicBool::new(false),
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

    /// What the output does beside sending, until stopped (aborted) at the agent's stop: offers
    /// refused records again, and watches the acknowledgements. Runs once, as a task of the
    /// agent.
    pub async fn upkeep(self: Arc<Self>) -> anyhow::Result<()> {
        tokio::try_join!(self.clone().resend_refused(), self.watch_acknowledgements())?;
        Ok(())
    }

    /// Keeps `sluice_agent_records_unacknowledged`, and says when records have waited
    /// `UNACKNOWLEDGED_FOR` with no acknowledgement at all, and when they come again. librdkafka
    /// retries what the broker refuses as passing (its storage error below the free-disk floor,
    /// a leader moving) without a word, and without a delivery report.
    async fn watch_acknowledgements(self: Arc<Self>) -> anyhow::Result<()> {
        let acknowledged = || self.metrics.events_sent.get() + self.metrics.samples_sent.get();
        let (mut last, mut since, mut said) = (acknowledged(), Instant::now(), false);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let waiting = self.backlog();
            self.metrics
                .records_unacknowledged
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            let now = acknowledged();
            if now != last || waiting == 0 {
                if said {
                    tracing::info!(
                        waited_s = since.elapsed().as_secs(),
                        "agent: the brokers acknowledge records again"
                    );
                    said = false;
                }
                (last, since) = (now, Instant::now());
            } else if !said && since.elapsed() >= UNACKNOWLEDGED_FOR {
                tracing::warn!(
                    records = waiting,
                    "agent: records have waited {} s without one acknowledgement: the brokers \
                     are slow, away, or refusing them (their logs say why); they are kept and \
                     sent again",
                    UNACKNOWLEDGED_FOR.as_secs()
                );
                said = true;
            }
        }
    }

    /// Offers the records the cluster refused again, a pause between passes over them.
    async fn resend_refused(self: Arc<Self>) -> anyhow::Result<()> {
        let refused = &self.producer.context().refused;
        loop {
            if refused.len() == 0 {
                refused.arrived.notified().await;
            }
            tokio::time::sleep(RESEND_PAUSE).await;
            self.resend_pass(refused).await?;
        }
    }

    /// One pass over the refused records. A topic still refused is passed over, its records
    /// left where they are (where a stop finds them), so that it holds up no other topic's; a
    /// full queue is waited for.
    async fn resend_pass(&self, refused: &Refusals) -> anyhow::Result<()> {
        let mut passed_over = HashSet::new();
        while let Some((at, again)) = refused.take_first_but(&passed_over) {
            let record = self.record(
                &again.topic,
                &again.key,
                &again.payload,
                again.timestamp,
                Some(&again.settle),
            );
            match self.queue(record).map(|back| back.is_some()) {
                Ok(false) => {}
                Ok(true) if self.refusing().contains(&again.topic) => {
                    passed_over.insert(again.topic.clone());
                    refused.put_back(at, again);
                }
                Ok(true) => {
                    refused.put_back(at, again);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    refused.put_back(at, again);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn refusing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.refusing.lock().unwrap_or_else(|e| e.into_inner())
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
        while self.refused_full(record.topic)? {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
            .partitioner
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
        if self.refused_full(topic)? {
            return Ok(false);
        }
        let record = self.record(topic, key, payload, timestamp, None);
        Ok(self.queue(record)?.is_none())
    }

    /// Whether new records of `topic` wait at the door for its refused ones to be taken; an
    /// error once librdkafka failed for good (nothing would take them any more).
    fn refused_full(&self, topic: &str) -> anyhow::Result<bool> {
        if !self.producer.context().refused.full(topic) {
            return Ok(false);
        }
        if let Some((code, why)) = self.producer.client().fatal_error() {
            anyhow::bail!("agent: the Kafka producer failed for good: {code}: {why}");
        }
        self.stalled.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Whether the last record offered was not taken (librdkafka's queue full, or the topic
    /// refused): the broker is slow or away, or the topic is not there yet.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
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

    /// Queues the record; gives it back when it must wait (the queue full, the topic refused).
    fn queue<'a>(&self, record: Record<'a>) -> anyhow::Result<Option<Record<'a>>> {
        let (topic, bytes) = (record.topic, record.payload.map_or(0, <[u8]>::len));
        match self.producer.send(record) {
            Ok(()) => {
                self.stalled.store(false, Ordering::Relaxed);
                if self.any_refusing.load(Ordering::Relaxed) {
                    let mut refusing = self.refusing();
                    if refusing.remove(topic) {
                        tracing::info!(%topic, "agent: records are taken again");
                    }
                    self.any_refusing
                        .store(!refusing.is_empty(), Ordering::Relaxed);
                }
                Ok(None)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                self.stalled.store(true, Ordering::Relaxed);
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
            Err((KafkaError::MessageProduction(code), refused)) if never_sendable(code) => {
                // This record can never be sent: counted and let go, so it cannot hold up its
                // input, nor a file's checkpoint, for ever.
                tracing::warn!(%topic, error = %code, bytes, "agent: a record was refused");
                self.metrics.send_errors.inc();
                refused.delivery_opaque.one_done();
                Ok(None)
            }
            Err((KafkaError::MessageProduction(code), back)) if code != RDKafkaErrorCode::Fatal => {
                // The topic is unknown (not made yet, auto-creation off) or not ours to write:
                // librdkafka remembers the topic's error and refuses at once. The record waits,
                // and its input with it, until the cluster takes it; nothing is let go.
                self.stalled.store(true, Ordering::Relaxed);
                if self.refusing().insert(topic.to_owned()) {
                    self.any_refusing.store(true, Ordering::Relaxed);
                    tracing::warn!(%topic, error = %code, "agent: the cluster refuses records for the topic; inputs wait until it takes them");
                    self.metrics.send_errors.inc();
                }
                Ok(Some(back))
            }
            Err((e, _)) => anyhow::bail!("agent: queueing a record for {topic}: {e}"),
        }
    }

    /// Records not yet acknowledged: queued or in flight in librdkafka, or refused by the
    /// cluster and waiting to be offered again.
    pub fn backlog(&self) -> u64 {
        let refused = self.producer.context().refused.len() as u64;
        self.producer.in_flight_count().max(0) as u64 + refused
    }

    /// Waits for everything queued to be acknowledged: up to `timeout`, and no longer than
    /// `stalled` without an acknowledgement (the broker is away). Else the records left.
    pub fn flush(&self, timeout: Duration, stalled: Duration) -> Result<(), u64> {
        let deadline = Instant::now() + timeout;
        let (mut left, mut moved) = (self.backlog(), Instant::now());
        loop {
            let wait =
                Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now()));
            if self.producer.flush(wait).is_ok() {
                // What the cluster refused waits for the resend task, stopped by now.
                return match self.backlog() {
                    0 => Ok(()),
                    refused => Err(refused),
                };
            }
            let now = self.backlog();
            if now < left {
                (left, moved) = (now, Instant::now());
            }
            if Instant::now() >= deadline || moved.elapsed() >= stalled {
                return Err(now);
            }
        }
    }

    /// At a stop, once `resend_refused` is stopped: takes back the records nothing else will
    /// send again, those of `topic` from inputs that cannot replay (the file input reads its
    /// lines again, a spool segment stays until acknowledged), as (key, payload): what
    /// librdkafka still holds (purged) and what the cluster refused. Blocking: it waits for
    /// librdkafka to hand back what it held.
    pub fn take_unsent(&self, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        if self.producer.in_flight_count() > 0 {
            self.producer
                .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while self.producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let unsent = self.producer.context().refused.take_all();
        let mut kept = Vec::new();
        for record in unsent {
            if record.topic == topic && record.settle.is_untracked() {
                kept.push((record.key, record.payload));
            } else {
                record.settle.one_failed();
            }
        }
        kept
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
