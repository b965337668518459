//! The consumer-group member: takes partitions from the group, feeds each one's index, commits
//! every `commit_interval_ms`, and hands partitions back on revocation.
//!
//! librdkafka runs on a thread of its own (Tantivy's calls block). The rebalance callback opens a
//! partition's index before the partition is assigned and assigns it at the offset the index's
//! last commit recorded, not the group's: the index is the truth, the group offset only tells
//! operators the lag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::IndexerConfig;
use crate::layout;
use crate::mapping::Record;
use crate::metrics::IndexerMetrics;
use crate::partition::{Added, PartitionIndex, WriterSettings};
use crate::schema::LogSchema;

/// How long an assignment waits for the partition's previous owner to close its index.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
const RETENTION_EVERY: Duration = Duration::from_secs(5);

/// A running indexer; `stop` commits and leaves the group.
pub struct Indexer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    /// Creates the topic when missing, joins the group and starts indexing.
    pub async fn start(
        config: IndexerConfig,
        data_dir: &Path,
        metrics: IndexerMetrics,
    ) -> anyhow::Result<Self> {
        ensure_topic(&config).await?;
        let topic_dir = layout::topic_dir(data_dir, &config.topic);
        std::fs::create_dir_all(&topic_dir).map_err(|e| {
            anyhow::anyhow!("index dir {}: cannot create: {e}", topic_dir.display())
        })?;
        let shared = Arc::new(Shared {
            topic: config.topic.clone(),
            topic_dir,
            schema: LogSchema::new(),
            settings: WriterSettings {
                memory_bytes: config.writer_memory_bytes,
                threads: config.writer_threads,
                bucket_ms: config.bucket_ms as i64,
                retention_ms: config.retention_ms as i64,
                max_document_bytes: config.max_document_bytes,
                lock_wait: HANDOVER_WAIT,
            },
            metrics,
            state: Mutex::new(State::default()),
        });
        let mut client = ClientConfig::new();
        if !config.instance_id.is_empty() {
            client.set("group.instance.id", &config.instance_id);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("client.id", "sluice-indexer")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("statistics.interval.ms", "5000")
            .set("log_level", "3")
            .create_with_context(GroupContext {
                shared: shared.clone(),
            })
            .map_err(|e| anyhow::anyhow!("indexer consumer: {e}"))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| anyhow::anyhow!("indexer: cannot subscribe to {}: {e}", config.topic))?;
        let stop = Arc::new(AtomicBool::new(false));
        let commit_every = Duration::from_millis(config.commit_interval_ms.max(1));
        let thread = std::thread::Builder::new()
            .name("sluice-indexer".into())
            .spawn({
                let stop = stop.clone();
                move || run(consumer, shared, commit_every, stop)
            })?;
        tracing::info!(topic = %config.topic, group = %config.group_id, "indexer started");
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Commits every open index, hands the partitions back and waits for the thread to end.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
            {
                tracing::error!("indexer thread panicked");
            }
        }
    }
}

async fn ensure_topic(config: &IndexerConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("log_level", "3")
        .create()?;
    let topic = NewTopic::new(
        &config.topic,
        config.topic_partitions,
        TopicReplication::Fixed(-1),
    );
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| anyhow::anyhow!("indexer: cannot reach {}: {e}", config.brokers))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("indexer: cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// What the consumer thread and the rebalance callback share.
struct Shared {
    topic: String,
    topic_dir: PathBuf,
    schema: LogSchema,
    settings: WriterSettings,
    metrics: IndexerMetrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: BTreeMap<i32, PartitionIndex>,
    /// Assigned partitions whose index could not be opened yet (or failed): retried, then
    /// the consumer seeks to what the index holds.
    to_open: BTreeSet<i32>,
}

impl Shared {
    fn open(&self, partition: i32, wait: Duration) -> anyhow::Result<PartitionIndex> {
        let mut settings = self.settings.clone();
        settings.lock_wait = wait;
        PartitionIndex::open(&self.topic_dir, partition, self.schema.clone(), settings)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn owned_changed(&self, state: &State) {
        self.metrics
            .partitions_owned
            .set((state.open.len() + state.to_open.len()) as i64);
    }

    /// Commits every index with pending records; returns the offsets to commit to the group.
    fn commit_all(&self, state: &mut State) -> TopicPartitionList {
        let mut failed = Vec::new();
        for (&partition, index) in state.open.iter_mut() {
            if !index.has_pending() {
                continue;
            }
            let started = Instant::now();
            match index.commit() {
                Ok(committed) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.documents_indexed.inc_by(committed.docs);
                    let now = now_ms();
                    for ms in committed.record_times_ms {
                        self.metrics
                            .freshness_seconds
                            .observe((now - ms).max(0) as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    tracing::error!(partition, error = %e, "index commit failed; reopening the partition");
                    self.metrics.errors.with_label_values(&["commit"]).inc();
                    failed.push(partition);
                }
            }
        }
        for partition in failed {
            state.open.remove(&partition);
            state.to_open.insert(partition);
        }
        self.group_offsets(state.open.values())
    }

    fn group_offsets<'a>(
        &self,
        indexes: impl Iterator<Item = &'a PartitionIndex>,
    ) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        for index in indexes {
            if let Some(next) = index.committed_next_offset() {
                // Infallible for an offset we just added the partition with.
                let _ = offsets.add_partition_offset(
                    &self.topic,
                    index.partition(),
                    Offset::Offset(next),
                );
            }
        }
        offsets
    }

    fn index_record(&self, record: &Record<'_>) {
        let mut state = self.state();
        let Some(index) = state.open.get_mut(&record.partition) else {
            // Not (yet) open: the seek after opening brings this record back.
            return;
        };
        match index.add(record, now_ms()) {
            Ok(Added::Indexed(None)) | Ok(Added::AlreadyIndexed) => {}
            Ok(Added::Indexed(Some(malformed))) => {
                self.metrics
                    .malformed
                    .with_label_values(&[malformed.label()])
                    .inc();
            }
            Ok(Added::Duplicate) => self.metrics.duplicates_skipped.inc(),
            Err(e) => {
                tracing::error!(partition = record.partition, error = %e, "indexing failed; reopening the partition");
                self.metrics.errors.with_label_values(&["index"]).inc();
                state.open.remove(&record.partition);
                state.to_open.insert(record.partition);
            }
        }
    }
}

struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        let state = self.shared.state();
        for (partition, stats) in &topic.partitions {
            if state.open.contains_key(partition) && stats.consumer_lag >= 0 {
                self.shared
                    .metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "indexer: assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let offsets = self.revoke(tpl);
                if !lost && offsets.count() > 0 {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!(error = %e, "indexer: committing group offsets on revoke");
                    }
                }
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "indexer: unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "indexer: rebalance failed; giving up every partition");
                let all = std::mem::take(&mut self.shared.state().open);
                for (_, index) in all {
                    if let Err(e) = index.close() {
                        tracing::warn!(error = %e, "indexer: closing an index");
                    }
                }
                let _ = consumer.unassign();
            }
        }
    }
}

impl GroupContext {
    /// Opens the index of each assigned partition and sets the partition to start where the
    /// index ends.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == shared.topic)
            .map(|e| e.partition())
            .collect();
        let mut state = shared.state();
        let mut starts = Vec::new();
        for partition in partitions {
            let start = match shared.open(partition, HANDOVER_WAIT) {
                Ok(index) => {
                    let start = index
                        .committed_next_offset()
                        .map_or(Offset::Beginning, Offset::Offset);
                    state.open.insert(partition, index);
                    start
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "indexer: index not available yet; will retry");
                    shared.metrics.errors.with_label_values(&["open"]).inc();
                    state.to_open.insert(partition);
                    Offset::Invalid
                }
            };
            if let Err(e) = tpl.set_partition_offset(&shared.topic, partition, start) {
                tracing::warn!(partition, error = %e, "indexer: setting the start offset");
            }
            starts.push(format!("{partition}@{start:?}"));
        }
        tracing::info!(partitions = %starts.join(" "), "indexer: partitions assigned");
        shared.owned_changed(&state);
    }

    /// Commits and closes the revoked partitions' indexes; returns their offsets for the group.
    fn revoke(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let shared = &self.shared;
        let mut state = shared.state();
        let mut closed = Vec::new();
        let mut revoked = Vec::new();
        for element in tpl.elements() {
            if element.topic() != shared.topic {
                continue;
            }
            let partition = element.partition();
            state.to_open.remove(&partition);
            if let Some(mut index) = state.open.remove(&partition) {
                let _ = index.commit();
                closed.push(index);
            }
            shared
                .metrics
                .consumer_lag
                .with_label_values(&[&partition.to_string()])
                .set(0);
            revoked.push(partition.to_string());
        }
        tracing::info!(partitions = %revoked.join(" "), "indexer: partitions revoked");
        let offsets = shared.group_offsets(closed.iter());
        for index in closed {
            if let Err(e) = index.close() {
                tracing::warn!(error = %e, "indexer: closing an index");
            }
        }
        shared.owned_changed(&state);
        offsets
    }
}

fn run(
    consumer: BaseConsumer<GroupContext>,
    shared: Arc<Shared>,
    commit_every: Duration,
    stop: Arc<AtomicBool>,
) {
    let mut last_commit = Instant::now();
    let mut last_retention = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let now = now_ms();
                shared.index_record(&Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis().unwrap_or(now),
                    payload: message.payload().unwrap_or_default(),
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "indexer: consuming");
                shared.metrics.errors.with_label_values(&["consume"]).inc();
            }
            None => {}
        }
        reopen_failed(&consumer, &shared);
        if last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            let offsets = shared.commit_all(&mut shared.state());
            if offsets.count() > 0 {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                    tracing::debug!(error = %e, "indexer: committing group offsets");
                }
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            apply_retention(&shared);
        }
    }
    let offsets = shared.commit_all(&mut shared.state());
    if offsets.count() > 0 {
        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
            tracing::warn!(error = %e, "indexer: committing group offsets at stop");
        }
    }
    // Dropping the consumer leaves the group; the revoke callback closes the indexes.
    drop(consumer);
    tracing::info!("indexer stopped");
}

/// Retries opening partitions that are assigned but not open, then rewinds each to its index.
fn reopen_failed(consumer: &BaseConsumer<GroupContext>, shared: &Shared) {
    let mut state = shared.state();
    let waiting: Vec<i32> = state.to_open.iter().copied().collect();
    for partition in waiting {
        let Ok(index) = shared.open(partition, Duration::ZERO) else {
            continue;
        };
        let start = index
            .committed_next_offset()
            .map_or(Offset::Beginning, Offset::Offset);
        match consumer.seek(&shared.topic, partition, start, Duration::from_secs(1)) {
            Ok(()) => {
                state.to_open.remove(&partition);
                state.open.insert(partition, index);
                tracing::info!(partition, ?start, "indexer: partition reopened");
            }
            Err(e) => tracing::debug!(partition, error = %e, "indexer: seek after reopen"),
        }
    }
}

fn apply_retention(shared: &Shared) {
    let mut state = shared.state();
    let now = now_ms();
    let mut bytes = 0;
    for (&partition, index) in state.open.iter_mut() {
        match index.apply_retention(now) {
            Ok(deleted) => shared.metrics.buckets_deleted.inc_by(deleted as u64),
            Err(e) => {
                tracing::warn!(partition, error = %e, "indexer: retention");
                shared
                    .metrics
                    .errors
                    .with_label_values(&["retention"])
                    .inc();
            }
        }
        bytes += layout::disk_usage(&layout::partition_dir(&shared.topic_dir, partition));
    }
    shared.metrics.index_bytes.set(bytes as i64);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
