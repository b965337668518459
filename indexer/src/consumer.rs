//! The consumer-group member: takes partitions from the group, feeds each one's index, commits
//! every `commit_interval_ms`, and hands partitions back on revocation.
//!
//! librdkafka runs on a thread of its own (Tantivy's calls block). The rebalance callback opens a
//! partition's index before the partition is assigned and assigns it at the offset the index's
//! last commit recorded, not the group's: the index is the truth, the group offset only tells
//! operators the lag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::config::IndexerConfig;
use crate::kafka::{self, ensure_topic};
use crate::layout;
use crate::mapping::in_range;
use crate::metrics::IndexerMetrics;
use crate::partition::{PartitionIndex, WriterSettings};
use crate::schema::LogSchema;
use crate::worker::{OwnedRecord, PartitionWorker};

/// How long an assignment waits, for all its partitions together, for their previous owners to
/// close their indexes. The callback runs on the consumer's thread, which indexes nothing while
/// it waits: a partition still held after that (its owner hung) waits paused, tried again at
/// every commit interval, while the others go on.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);
const RETENTION_EVERY: Duration = Duration::from_secs(5);
/// How often partitions that still wait for their index are said in the log (the gauge
/// `sluice_indexer_partitions_waiting` tells at every scrape).
const WAITING_SAID_EVERY: Duration = Duration::from_secs(60);

/// A running indexer; `stop` commits and leaves the group.
pub struct Indexer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Closed when the thread ends, whether by `stop` or not (a panic).
    running: tokio::sync::watch::Receiver<()>,
}

impl Indexer {
    /// Creates the topic when missing, joins the group and starts indexing.
    pub async fn start(
        config: IndexerConfig,
        data_dir: &Path,
        metrics: IndexerMetrics,
    ) -> anyhow::Result<Self> {
        ensure_topic(&config, &config.topic, config.topic_partitions).await?;
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
            commit_every: Duration::from_millis(config.commit_interval_ms.max(1)),
            max_document_bytes: config.max_document_bytes,
            all_queued: Arc::default(),
            state: Mutex::new(State::default()),
        });
        let session_timeout = config.session_timeout_ms.to_string();
        let mut own = vec![
            ("group.id", config.group_id.as_str()),
            ("client.id", "sluice-indexer"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", session_timeout.as_str()),
            ("statistics.interval.ms", "5000"),
            // Partitions added to the topic are indexed within seconds, not librdkafka's 5 min.
            ("topic.metadata.refresh.interval.ms", "10000"),
        ];
        if !config.instance_id.is_empty() {
            own.push(("group.instance.id", config.instance_id.as_str()));
        }
        let consumer: BaseConsumer<GroupContext> = kafka::client(&config, &own)
            .create_with_context(GroupContext {
                shared: shared.clone(),
                quiet: kafka::Quiet::of(&config),
            })
            .map_err(|e| anyhow::anyhow!("indexer consumer: {e}"))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| anyhow::anyhow!("indexer: cannot subscribe to {}: {e}", config.topic))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (alive, running) = tokio::sync::watch::channel(());
        let thread = std::thread::Builder::new()
            .name("sluice-indexer".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let _alive = alive;
                    run(consumer, shared, stop)
                }
            })?;
        tracing::info!(topic = %config.topic, group = %config.group_id, "indexer started");
        Ok(Self {
            stop,
            thread: Some(thread),
            running,
        })
    }

    /// Resolves if the indexer's thread ends before `stop` is called (it panicked).
    pub async fn ended(&mut self) {
        let _ = self.running.changed().await;
    }

    /// Commits every open index, hands the partitions back and waits for the thread to end; the
    /// error it ended with (the group consumer failed for good), or that it panicked.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(ended)) => ended,
            _ => anyhow::bail!("the indexer's thread panicked (see the log above)"),
        }
    }
}

/// What the consumer thread and the rebalance callback share.
struct Shared {
    topic: String,
    topic_dir: PathBuf,
    schema: LogSchema,
    settings: WriterSettings,
    metrics: IndexerMetrics,
    commit_every: Duration,
    max_document_bytes: usize,
    /// Bytes of records queued for all the workers (`PartitionWorker::start`).
    all_queued: Arc<AtomicUsize>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: BTreeMap<i32, PartitionWorker>,
    /// Assigned partitions whose index could not be opened yet (or whose worker failed):
    /// retried, then the consumer seeks to what the index holds.
    to_open: BTreeSet<i32>,
    /// When the partitions still waiting were last said in the log (`WAITING_SAID_EVERY`).
    waiting_said: Option<Instant>,
}

impl Shared {
    /// Takes the partition's index (waiting up to `wait` for a previous owner) and starts its
    /// worker; returns where consumption must start.
    fn open(&self, partition: i32, wait: Duration) -> anyhow::Result<(PartitionWorker, Offset)> {
        let mut settings = self.settings.clone();
        settings.lock_wait = wait;
        let index =
            PartitionIndex::open(&self.topic_dir, partition, self.schema.clone(), settings)?;
        let start = index
            .committed_next_offset()
            .map_or(Offset::Beginning, Offset::Offset);
        let worker = PartitionWorker::start(
            index,
            self.commit_every,
            self.metrics.clone(),
            self.all_queued.clone(),
        )?;
        Ok((worker, start))
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
        self.metrics
            .partitions_waiting
            .set(state.to_open.len() as i64);
    }

    /// The committed offsets of every open partition, for the group.
    fn group_offsets<'a>(
        &self,
        workers: impl Iterator<Item = &'a PartitionWorker>,
    ) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        for worker in workers {
            if let Some(next) = worker.committed_next_offset() {
                // Infallible for an offset we just added the partition with.
                let _ = offsets.add_partition_offset(
                    &self.topic,
                    worker.partition(),
                    Offset::Offset(next),
                );
            }
        }
        offsets
    }

    fn index_record(&self, partition: i32, record: OwnedRecord) {
        let state = self.state();
        // Not open (yet, or any more): the seek after opening brings the record back.
        if let Some(worker) = state.open.get(&partition) {
            worker.send(record);
        }
    }

    /// Moves partitions whose worker failed to the reopen list; returns them, to be paused.
    fn collect_failed(&self, state: &mut State) -> TopicPartitionList {
        let failed: Vec<i32> = state
            .open
            .iter()
            .filter(|(_, w)| w.has_failed())
            .map(|(&p, _)| p)
            .collect();
        let mut failed_now = TopicPartitionList::new();
        for &partition in &failed {
            failed_now.add_partition(&self.topic, partition);
        }
        for partition in failed {
            self.metrics.errors.with_label_values(&["index"]).inc();
            if let Some(worker) = state.open.remove(&partition) {
                worker.close();
            }
            state.to_open.insert(partition);
        }
        failed_now
    }
}

struct GroupContext {
    shared: Arc<Shared>,
    quiet: kafka::Quiet,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.quiet.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }

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
                let waiting = self.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match assigned {
                    Ok(()) => {
                        // A partition paused while this member last had it (its index was
                        // held) stays paused through a revoke in librdkafka: the ones that
                        // opened are resumed, or they would never be fetched again.
                        let opened = self.opened(tpl, &waiting);
                        if opened.count() > 0 {
                            if let Err(e) = consumer.resume(&opened) {
                                tracing::warn!(error = %e, "indexer: resuming partitions");
                            }
                        }
                        // Partitions whose index is not open yet fetch nothing until it is.
                        if waiting.count() > 0 {
                            if let Err(e) = consumer.pause(&waiting) {
                                tracing::warn!(error = %e, "indexer: pausing partitions");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "indexer: assigning partitions failed; closing their indexes");
                        self.revoke(tpl);
                    }
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
                let all = {
                    let mut state = self.shared.state();
                    state.to_open.clear();
                    std::mem::take(&mut state.open)
                };
                for (_, worker) in all {
                    worker.close();
                }
                let _ = consumer.unassign();
            }
        }
    }
}

impl GroupContext {
    /// Opens the index of each assigned partition and sets the partition to start where the
    /// index ends.
    /// Returns the partitions whose index could not be opened yet, to be paused.
    fn assign(&self, tpl: &mut TopicPartitionList) -> TopicPartitionList {
        let shared = &self.shared;
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == shared.topic)
            .map(|e| e.partition())
            .collect();
        let mut state = shared.state();
        let mut starts = Vec::new();
        let mut waiting = TopicPartitionList::new();
        let deadline = Instant::now() + HANDOVER_WAIT;
        for partition in partitions {
            let wait = deadline.saturating_duration_since(Instant::now());
            let start = match shared.open(partition, wait) {
                Ok((worker, start)) => {
                    state.open.insert(partition, worker);
                    start
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "indexer: index not available yet; will retry");
                    shared.metrics.errors.with_label_values(&["open"]).inc();
                    state.to_open.insert(partition);
                    waiting.add_partition(&shared.topic, partition);
                    Offset::Invalid
                }
            };
            if let Err(e) = tpl.set_partition_offset(&shared.topic, partition, start) {
                tracing::warn!(partition, error = %e, "indexer: setting the start offset");
            }
            starts.push(format!("{partition}@{start:?}"));
        }
        if !starts.is_empty() {
            tracing::info!(partitions = %starts.join(" "), "indexer: partitions assigned");
        }
        shared.owned_changed(&state);
        waiting
    }

    /// The partitions of `assigned` (of the indexed topic) that are not `waiting`.
    fn opened(
        &self,
        assigned: &TopicPartitionList,
        waiting: &TopicPartitionList,
    ) -> TopicPartitionList {
        let mut opened = TopicPartitionList::new();
        for element in assigned.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            if topic == self.shared.topic && waiting.find_partition(topic, partition).is_none() {
                opened.add_partition(topic, partition);
            }
        }
        opened
    }

    /// Commits and closes the revoked partitions' indexes; returns their offsets for the group.
    fn revoke(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let shared = &self.shared;
        let mut state = shared.state();
        let mut offsets = TopicPartitionList::new();
        let mut revoked = Vec::new();
        for element in tpl.elements() {
            if element.topic() != shared.topic {
                continue;
            }
            let partition = element.partition();
            state.to_open.remove(&partition);
            if let Some(next) = state
                .open
                .remove(&partition)
                .and_then(PartitionWorker::close)
            {
                // Infallible for an offset we just added the partition with.
                let _ =
                    offsets.add_partition_offset(&shared.topic, partition, Offset::Offset(next));
            }
            // Another member owns it now, and says its lag.
            let _ = shared
                .metrics
                .consumer_lag
                .remove_label_values(&[&partition.to_string()]);
            revoked.push(partition.to_string());
        }
        if !revoked.is_empty() {
            tracing::info!(partitions = %revoked.join(" "), "indexer: partitions revoked");
        }
        shared.owned_changed(&state);
        offsets
    }
}

fn run(
    consumer: BaseConsumer<GroupContext>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut last_commit = Instant::now();
    let mut last_retention = Instant::now();
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or_default();
                // One byte past the limit is enough for the mapping to see it was over.
                let kept = payload.len().min(shared.max_document_bytes + 1);
                shared.index_record(
                    message.partition(),
                    OwnedRecord {
                        offset: message.offset(),
                        // A producer may set any timestamp; one Tantivy cannot hold is now.
                        timestamp_ms: message
                            .timestamp()
                            .to_millis()
                            .filter(|&ms| in_range(ms))
                            .unwrap_or_else(now_ms),
                        payload: payload[..kept].to_vec(),
                    },
                );
            }
            Some(Err(e)) => {
                failed = failed_for_good(&consumer);
                if failed.is_some() {
                    break;
                }
                let kind = format!("{:?}", e.rdkafka_error_code());
                if consumer.context().quiet.first_in_a_while(&kind) {
                    tracing::warn!(error = %e, "indexer: consuming (said once a minute)");
                } else {
                    tracing::debug!(error = %e, "indexer: consuming");
                }
                shared.metrics.errors.with_label_values(&["consume"]).inc();
            }
            None => {}
        }
        if last_commit.elapsed() >= shared.commit_every {
            last_commit = Instant::now();
            // Commits fail in the background; a fatal one is only seen here.
            failed = failed_for_good(&consumer);
            if failed.is_some() {
                break;
            }
            reopen_failed(&consumer, &shared);
            let offsets = shared.group_offsets(shared.state().open.values());
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
    // Leaving the group revokes every partition: the callback commits and closes each index and
    // commits the group offsets.
    drop(consumer);
    if let Some(e) = failed {
        // Its partitions' indexes close with the process, and another member opens them.
        return Err(e);
    }
    tracing::info!("indexer stopped");
    Ok(())
}

/// A fatal error of the group consumer (librdkafka's: another member took its
/// `group.instance.id`, say), after which it never consumes or commits again: the indexer ends
/// with it rather than running on, holding its partitions' indexes and saying it is healthy.
fn failed_for_good(consumer: &BaseConsumer<GroupContext>) -> Option<anyhow::Error> {
    let (code, reason) = consumer.client().fatal_error()?;
    Some(anyhow::anyhow!(
        "indexer: the group consumer failed for good ({code:?}: {reason}); when another \
         indexer was started with the same [indexer] instance_id, give each its own"
    ))
}

/// Reopens partitions that are assigned but not open (their index was held, or their worker
/// failed) and rewinds each to what its index holds.
fn reopen_failed(consumer: &BaseConsumer<GroupContext>, shared: &Shared) {
    let mut state = shared.state();
    let failed = shared.collect_failed(&mut state);
    if failed.count() > 0 {
        if let Err(e) = consumer.pause(&failed) {
            tracing::warn!(error = %e, "indexer: pausing failed partitions");
        }
    }
    let waiting: Vec<i32> = state.to_open.iter().copied().collect();
    let say = state
        .waiting_said
        .is_none_or(|said| said.elapsed() >= WAITING_SAID_EVERY);
    let mut said = false;
    for partition in waiting {
        let (worker, start) = match shared.open(partition, Duration::ZERO) {
            Ok(opened) => opened,
            Err(e) => {
                if say {
                    tracing::warn!(partition, error = %e, "indexer: the partition still waits for its index; its records are not indexed until it opens");
                    said = true;
                }
                continue;
            }
        };
        let mut this = TopicPartitionList::new();
        this.add_partition(&shared.topic, partition);
        match consumer.seek(&shared.topic, partition, start, Duration::from_secs(1)) {
            Ok(()) => {
                state.to_open.remove(&partition);
                state.open.insert(partition, worker);
                if let Err(e) = consumer.resume(&this) {
                    tracing::warn!(partition, error = %e, "indexer: resuming a partition");
                }
                tracing::info!(partition, ?start, "indexer: partition reopened");
            }
            Err(e) => {
                worker.close();
                tracing::debug!(partition, error = %e, "indexer: seek after reopen");
            }
        }
    }
    if said {
        state.waiting_said = Some(Instant::now());
    }
    shared.owned_changed(&state);
}

fn apply_retention(shared: &Shared) {
    let state = shared.state();
    let mut bytes = 0;
    for (&partition, worker) in &state.open {
        worker.apply_retention();
        bytes += layout::disk_usage(&layout::partition_dir(&shared.topic_dir, partition));
    }
    shared.metrics.index_bytes.set(bytes as i64);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
