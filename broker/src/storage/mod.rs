//! The broker's storage: topics of partitions, each a log of segments on disk.
//!
//! `batch` reads and checks RecordBatch headers; `segment` is one log file and its index;
//! `partition` is the ordered log of segments; `io` does the disk I/O (io_uring or plain);
//! `flusher` makes acks=all writes durable by group commit; `compress` applies a topic's
//! `compression.type`; `compaction` keeps the newest record per key of compacted topics;
//! `producers` tracks idempotent producers' sequences; `housekeeping` runs retention, compaction,
//! the free-disk guard and the periodic flush; `deletion` deletes topics, and at start removes
//! what a deletion cut short left; `topics` holds topic configuration. This module owns the set
//! of topics, the data-dir lock, clean-shutdown detection and appends.

mod alteration;
mod appender;
pub mod batch;
pub mod compaction;
pub mod compress;
mod deletion;
pub mod flusher;
mod housekeeping;
pub mod io;
pub mod partition;
pub mod producers;
pub mod records;
pub mod segment;
pub mod topics;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::task::JoinHandle;

use self::batch::{split_batches, BatchError, BatchHeader};
use self::flusher::Flusher;
use self::io::Io;
use self::partition::{Appended, Partition};
use self::producers::ProducerIds;
use self::topics::{validate_topic_name, TopicRecord, TopicSettings};
use crate::config::BrokerConfig;
use crate::metrics::BrokerMetrics;

const CLEAN_MARKER: &str = "clean-shutdown";
const TOPICS_FILE: &str = "topics.json";

pub struct Topic {
    pub name: String,
    record: RwLock<TopicRecord>,
    settings: RwLock<TopicSettings>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read().expect("topic lock");
        usize::try_from(index)
            .ok()
            .and_then(|i| partitions.get(i).cloned())
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions.read().expect("topic lock").len() as i32
    }

    pub fn settings(&self) -> TopicSettings {
        *self.settings.read().expect("topic lock")
    }

    /// The configs set on this topic (not the defaults it inherits).
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.record.read().expect("topic lock").configs.clone()
    }
}

/// Why a topic operation failed; each maps to one Kafka error code.
#[derive(Debug, Error)]
pub enum TopicError {
    #[error("topic {0} already exists")]
    Exists(String),
    #[error("topic {0} does not exist")]
    Unknown(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0} is an internal topic")]
    Internal(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

/// New partitions of `topic` could not be opened: said, and told the client with what to do
/// when the broker is out of file descriptors (each partition keeps its log and index open).
fn not_opened(topic: &str, error: std::io::Error) -> TopicError {
    let out_of_files = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    let why = match out_of_files {
        true => format!(
            "{error}: each partition keeps 2 files open; raise the broker's open-files limit \
             (LimitNOFILE in its systemd unit, ulimit -n) or make fewer partitions"
        ),
        false => error.to_string(),
    };
    tracing::warn!(topic, error = %why, "new partitions could not be opened; none were made");
    TopicError::Io(std::io::Error::new(error.kind(), why))
}

/// What a produce of a bad batch is told: a batch no client may send (a transactional one) is
/// not called corrupt.
fn refusal_of(error: &BatchError) -> String {
    match error.is_forbidden() {
        true => error.to_string(),
        false => format!("corrupt record batch: {error}"),
    }
}

/// Why a produce to one partition was refused; each maps to one Kafka error code.
#[derive(Debug, Error)]
pub enum AppendError {
    #[error("{}", refusal_of(.0))]
    Corrupt(#[from] BatchError),
    #[error("record batch of {size} bytes is over max.message.bytes ({max})")]
    TooLarge { size: usize, max: u32 },
    #[error("free disk space is below min_free_bytes; produce refused until space returns")]
    DiskFull,
    #[error("storage failed (an fsync returned an error); produce refused until restart")]
    Failed,
    /// The fdatasync of a segment being rolled failed; the storage takes it as `Failed`.
    #[error("fdatasync of a rolled segment failed: {0}")]
    RollSyncFailed(std::io::Error),
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrderSequence { expected: i32, got: i32 },
    #[error("producer epoch {got} is older than the current epoch {current}")]
    ProducerFenced { current: i16, got: i16 },
    #[error("unknown producer id for a batch that does not start its sequence at 0")]
    UnknownProducer,
    #[error("the partition is closed: the broker is shutting down or its topic was deleted")]
    Closed,
    #[error("append task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Storage {
    dir: PathBuf,
    defaults: BrokerConfig,
    io: Io,
    flusher: Flusher,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and growth, and so the writes of `topics.json`.
    admin: tokio::sync::Mutex<()>,
    metrics: BrokerMetrics,
    disk_low: AtomicBool,
    /// Bytes that may be appended before the free space is looked at again (`check_disk`).
    disk_budget: AtomicI64,
    /// Held by whatever deletes or rewrites files of a partition by name (retention, a
    /// compaction, a topic's deletion), and by `close` so none runs past it. Taken before
    /// `admin` where both are.
    maintenance: Arc<tokio::sync::Mutex<()>>,
    /// Woken on every append, so long-polling fetches see new data at once.
    pub appended: tokio::sync::Notify,
    /// Per compacted partition: the log end offset and time of its last compaction, so an idle
    /// partition is not re-read (it is again once tombstones may have expired).
    compacted:
        std::sync::Mutex<std::collections::HashMap<(String, usize), (i64, std::time::Instant)>>,
    /// Producer ids for InitProducerId; set once the logs are open.
    producer_ids: std::sync::OnceLock<ProducerIds>,
    _dir_lock: File,
}

impl Storage {
    /// Opens the data directory: takes its lock, notes whether the last stop was clean, loads the
    /// topics and recovers their partitions (scanning the tails after an unclean stop).
    pub async fn open(
        defaults: BrokerConfig,
        dir: &Path,
        metrics: BrokerMetrics,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("data dir {}: cannot create: {e}", dir.display()))?;
        let lock_path = dir.join(".lock");
        let dir_lock = File::create(&lock_path)
            .map_err(|e| anyhow::anyhow!("data dir {}: cannot write: {e}", dir.display()))?;
        dir_lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "data dir {}: in use by another sluice process",
                dir.display()
            )
        })?;
        let marker = dir.join(CLEAN_MARKER);
        let clean = marker.exists();
        if clean {
            std::fs::remove_file(&marker)?;
            // Durably gone: a crash from here on must count as unclean.
            sync_dir(dir)?;
        }
        let io = Io::start(defaults.io_backend, defaults.direct_io)?;
        tracing::info!(backend = io.name(), direct_io = io.direct_writes(), dir = %dir.display(), "storage opened");
        metrics.io_backend.with_label_values(&[io.name()]).set(1);
        let flusher = Flusher::start(
            io.clone(),
            Duration::from_micros(defaults.flush_linger_us),
            defaults.flush_max_pending,
            metrics.clone(),
        );
        let records: BTreeMap<String, TopicRecord> = match std::fs::read(dir.join(TOPICS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: unreadable topic list: {e}",
                    dir.join(TOPICS_FILE).display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        if !clean && !records.is_empty() {
            tracing::warn!("the last stop was not clean: checking the tail of every partition");
        }
        deletion::remove_orphans(dir, &records);
        let storage = Arc::new(Self {
            dir: dir.to_owned(),
            defaults,
            io,
            flusher,
            topics: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            metrics,
            disk_low: AtomicBool::new(false),
            disk_budget: AtomicI64::new(0),
            maintenance: Arc::new(tokio::sync::Mutex::new(())),
            appended: tokio::sync::Notify::new(),
            producer_ids: std::sync::OnceLock::new(),
            compacted: Default::default(),
            _dir_lock: dir_lock,
        });
        for (name, record) in records {
            let settings = TopicSettings::resolve(&storage.defaults, &record.configs)
                .map_err(|e| anyhow::anyhow!("topic {name}: {e}"))?;
            let topic = storage.open_topic(&name, record, settings, !clean)?;
            storage
                .topics
                .write()
                .expect("topics lock")
                .insert(name, topic);
        }
        let floor = storage
            .topics()
            .iter()
            .flat_map(|t| t.partitions.read().expect("topic lock").clone())
            .map(|p| p.max_producer_id())
            .max()
            .unwrap_or(-1)
            + 1;
        let ids = ProducerIds::open(dir.join("producer-ids"), floor)?;
        let _ = storage.producer_ids.set(ids);
        storage.check_disk();
        Ok(storage)
    }

    fn partition_dir(&self, topic: &str, index: u32) -> PathBuf {
        self.dir.join(format!("{topic}-{index}"))
    }

    fn open_topic(
        &self,
        name: &str,
        record: TopicRecord,
        settings: TopicSettings,
        verify: bool,
    ) -> std::io::Result<Arc<Topic>> {
        let partitions = (0..record.partitions)
            .map(|i| {
                Partition::open(
                    &self.partition_dir(name, i),
                    self.io.clone(),
                    settings.log_settings(),
                    verify,
                )
                .map(Arc::new)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        self.metrics.topic_opened(name);
        Ok(Arc::new(Topic {
            name: name.to_owned(),
            record: RwLock::new(record),
            settings: RwLock::new(settings),
            partitions: RwLock::new(partitions),
        }))
    }

    /// A producer id no producer has had before.
    pub fn new_producer_id(&self) -> std::io::Result<i64> {
        self.producer_ids
            .get()
            .ok_or_else(|| std::io::Error::other("storage is still opening"))?
            .next()
    }

    pub fn io_backend(&self) -> &'static str {
        self.io.name()
    }

    pub fn defaults(&self) -> &BrokerConfig {
        &self.defaults
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    /// The topic, created with the default partition count if auto-creation is on.
    pub async fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.defaults.auto_create_topics {
            return Err(TopicError::Unknown(name.to_owned()));
        }
        match self
            .create_topic(
                name,
                self.defaults.default_partitions as i32,
                BTreeMap::new(),
                false,
            )
            .await
        {
            Err(TopicError::Exists(_)) => self
                .topic(name)
                .ok_or_else(|| TopicError::Unknown(name.to_owned())),
            other => other,
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, TopicError> {
        validate_topic_name(name).map_err(TopicError::InvalidName)?;
        let partitions = match partitions {
            -1 => self.defaults.default_partitions,
            1..=10_000 => partitions as u32,
            _ => {
                return Err(TopicError::InvalidPartitions(format!(
                    "partition count {partitions} must be 1 to 10000 (or -1 for the default)"
                )))
            }
        };
        let settings =
            TopicSettings::resolve(&self.defaults, &configs).map_err(TopicError::InvalidConfig)?;
        let _admin = self.admin.lock().await;
        if self.topic(name).is_some() {
            return Err(TopicError::Exists(name.to_owned()));
        }
        let names: Vec<String> = self.topics().iter().map(|t| t.name.clone()).collect();
        topics::check_collision(name, &names).map_err(TopicError::InvalidName)?;
        let record = TopicRecord {
            partitions,
            configs,
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                name: name.to_owned(),
                record: RwLock::new(record),
                settings: RwLock::new(settings),
                partitions: RwLock::new(Vec::new()),
            }));
        }
        let topic = match self.open_topic(name, record.clone(), settings, false) {
            Ok(topic) => topic,
            Err(e) => {
                self.remove_partition_dirs(name, 0..partitions);
                return Err(not_opened(name, e));
            }
        };
        if let Err(e) = self.save_topics(|records| {
            records.insert(name.to_owned(), record);
        }) {
            // Never seen by a client; the next start would remove the directories anyway.
            self.remove_partition_dirs(name, 0..partitions);
            return Err(e.into());
        }
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// For a change to the topic `name`: refuses the internal one, takes the admin lock (held
    /// while the guard lives) and finds the topic.
    async fn topic_to_change(
        &self,
        name: &str,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Arc<Topic>), TopicError> {
        if is_internal(name) {
            return Err(TopicError::Internal(name.to_owned()));
        }
        let admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        Ok((admin, topic))
    }

    /// Removes the directories of partitions that were being made and that no client saw.
    fn remove_partition_dirs(&self, name: &str, partitions: std::ops::Range<u32>) {
        for i in partitions {
            let _ = std::fs::remove_dir_all(self.partition_dir(name, i));
        }
    }

    /// Grows a topic to `total` partitions (Kafka never shrinks one).
    pub async fn add_partitions(
        &self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let (_admin, topic) = self.topic_to_change(name).await?;
        let current = topic.partition_count();
        if total <= current || total > 10_000 {
            return Err(TopicError::InvalidPartitions(format!(
                "topic {name} has {current} partitions; the new count must be larger (and at most 10000), not {total}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let settings = topic.settings();
        let new = current as u32..total as u32;
        let added = new
            .clone()
            .map(|i| {
                let dir = self.partition_dir(name, i);
                Partition::open(&dir, self.io.clone(), settings.log_settings(), false).map(Arc::new)
            })
            .collect::<std::io::Result<Vec<_>>>();
        let added = match added {
            Ok(added) => added,
            Err(e) => {
                self.remove_partition_dirs(name, new);
                return Err(not_opened(name, e));
            }
        };
        if let Err(e) = self.save_topics(|records| {
            if let Some(record) = records.get_mut(name) {
                record.partitions = total as u32;
            }
        }) {
            self.remove_partition_dirs(name, new);
            return Err(e.into());
        }
        topic.partitions.write().expect("topic lock").extend(added);
        topic.record.write().expect("topic lock").partitions = total as u32;
        Ok(())
    }

    /// Writes `topics.json` atomically (a temporary file, fsync, rename, fsync of the
    /// directory): the topics there are, with `change` made. A change reaches the topics in
    /// memory only once it is on disk: a partition no clients has seen can be dropped, but one
    /// that took writes must not be removed as an orphan at the next start.
    fn save_topics(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, TopicRecord>),
    ) -> std::io::Result<()> {
        let mut records: BTreeMap<String, TopicRecord> = self
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), t.record.read().expect("topic lock").clone()))
            .collect();
        change(&mut records);
        write_atomically(
            &self.dir.join(TOPICS_FILE),
            &serde_json::to_vec_pretty(&records)?,
        )
    }

    /// Validates a partition's record set, compresses it as the topic asks, and appends it, in a
    /// task of its own: a connection that goes away mid-append cannot leave a write in flight
    /// that nothing waits for (a clean stop waits for every append under way). Yields, once
    /// written, the file that `make_durable` must sync for acks=all.
    pub fn append(
        self: &Arc<Self>,
        topic: Arc<Topic>,
        partition: Arc<Partition>,
        records: Bytes,
    ) -> JoinHandle<Result<(Appended, Arc<File>), AppendError>> {
        let storage = self.clone();
        tokio::spawn(async move { storage.append_now(&topic, &partition, records).await })
    }

    async fn append_now(
        &self,
        topic: &Topic,
        partition: &Partition,
        records: Bytes,
    ) -> Result<(Appended, Arc<File>), AppendError> {
        if self.io.failed() {
            return Err(AppendError::Failed);
        }
        // Offset commits are small and compacted, and refusing them costs every consumer group
        // its place (the commits fail, the members rejoin and read again what they had read).
        if self.disk_low.load(Ordering::Acquire) && !is_internal(&topic.name) {
            return Err(AppendError::DiskFull);
        }
        let settings = topic.settings();
        let batches = split_batches(&records)?;
        for (header, _) in &batches {
            if header.size > settings.max_message_bytes as usize {
                return Err(AppendError::TooLarge {
                    size: header.size,
                    max: settings.max_message_bytes,
                });
            }
        }
        if batches.iter().any(|(header, _)| header.compression() != 0) {
            // Decompressing takes milliseconds a batch: off the runtime's threads, which
            // answer every connection and the group commit.
            let (records, headers) = (records.clone(), batches.clone());
            tokio::task::spawn_blocking(move || records::check_compressed(&records, &headers))
                .await??;
        }
        let (batches, records) = compress_as_configured(batches, records, &settings);
        let (appended, file) = match partition.append(&batches, &records).await {
            Err(AppendError::RollSyncFailed(e)) => {
                // As for the group commit: after a failed fsync nothing unsynced may be trusted.
                tracing::error!(error = %e, "fdatasync of a rolled segment failed: storage is failed, refusing every produce until restart");
                return Err(AppendError::Failed);
            }
            appended => appended?,
        };
        if appended.duplicate {
            return Ok((appended, file));
        }
        self.spend_disk_budget(records.len());
        self.metrics
            .bytes_in
            .with_label_values(&[&topic.name])
            .inc_by(records.len() as u64);
        self.metrics
            .records_in
            .with_label_values(&[&topic.name])
            .inc_by(appended.records as u64);
        self.appended.notify_waiters();
        Ok((appended, file))
    }

    /// Returns once every file is fdatasynced, sharing the fsync with every other waiting write.
    pub async fn make_durable(&self, files: Vec<Arc<File>>) -> std::io::Result<()> {
        self.flusher.sync_all(files).await
    }

    /// Syncs every partition and marks the stop clean, so the next start skips the tail scans;
    /// not after an fsync failed, when what the kernel dropped must be found by those scans.
    pub fn close(&self) -> std::io::Result<()> {
        // A compaction still running finishes first; none starts after.
        let _no_compaction = self.maintenance.blocking_lock();
        for topic in self.topics() {
            for partition in topic.partitions.read().expect("topic lock").iter() {
                partition.sync()?;
            }
        }
        if self.io.failed_after_syncs() {
            tracing::warn!("storage failed: the stop is not marked clean, so the next start checks every segment's tail");
            return Ok(());
        }
        write_atomically(&self.dir.join(CLEAN_MARKER), b"")
    }
}

/// Applies the topic's `compression.type` batch by batch; the record set is rebuilt only when a
/// batch actually changed.
fn compress_as_configured(
    batches: Vec<(BatchHeader, std::ops::Range<usize>)>,
    records: Bytes,
    settings: &TopicSettings,
) -> (Vec<(BatchHeader, std::ops::Range<usize>)>, Bytes) {
    let packed: Vec<Option<Vec<u8>>> = batches
        .iter()
        .map(|(h, r)| compress::compress_batch(&records[r.clone()], h, settings.compression))
        .collect();
    if packed.iter().all(Option::is_none) {
        return (batches, records);
    }
    let mut out = Vec::with_capacity(records.len());
    let mut rebuilt = Vec::with_capacity(batches.len());
    for ((header, range), packed) in batches.into_iter().zip(packed) {
        let start = out.len();
        match packed {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(&records[range]),
        }
        let header = BatchHeader::parse(&out[start..]).unwrap_or(header);
        rebuilt.push((header, start..out.len()));
    }
    (rebuilt, Bytes::from(out))
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The topic the broker itself owns (`__consumer_offsets`): clients may read but not change it.
/// Other names that start with `__` are ordinary topics, as in Kafka (Debezium's heartbeats).
pub fn is_internal(name: &str) -> bool {
    name == crate::coordinator::OFFSETS_TOPIC
}

/// A storage with the default settings in `dir`, for tests.
#[cfg(test)]
pub(crate) async fn scratch(dir: &Path) -> Arc<Storage> {
    let metrics = BrokerMetrics::register(&prometheus::Registry::new()).unwrap();
    Storage::open(BrokerConfig::default(), dir, metrics)
        .await
        .unwrap()
}

#[cfg(test)]
mod tests;
