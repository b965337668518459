//! The broker's storage: topics of partitions, each a log of segments on disk.
//!
//! `batch` reads and checks RecordBatch headers; `segment` is one log file and its index;
//! `partition` is the ordered log of segments; `io` does the disk I/O (io_uring or plain);
//! `flusher` makes acks=all writes durable by group commit; `compress` applies a topic's
//! `compression.type`; `compaction` keeps the newest record per key of compacted topics;
//! `producers` tracks idempotent producers' sequences; `topics` holds topic configuration. This module owns the set of topics,
//! the data-dir lock, clean-shutdown detection, retention and the free-disk guard.

pub mod batch;
pub mod compaction;
pub mod compress;
pub mod flusher;
pub mod io;
pub mod partition;
pub mod producers;
pub mod segment;
pub mod topics;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

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

/// Why a produce to one partition was refused; each maps to one Kafka error code.
#[derive(Debug, Error)]
pub enum AppendError {
    #[error("corrupt record batch: {0}")]
    Corrupt(#[from] BatchError),
    #[error("record batch of {size} bytes is over max.message.bytes ({max})")]
    TooLarge { size: usize, max: u32 },
    #[error("free disk space is below min_free_bytes; produce refused until space returns")]
    DiskFull,
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrderSequence { expected: i32, got: i32 },
    #[error("producer epoch {got} is older than the current epoch {current}")]
    ProducerFenced { current: i16, got: i16 },
    #[error("unknown producer id for a batch that does not start its sequence at 0")]
    UnknownProducer,
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
        }
        let io = Io::start(defaults.io_backend)?;
        tracing::info!(backend = io.name(), dir = %dir.display(), "storage opened");
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
        let storage = Arc::new(Self {
            dir: dir.to_owned(),
            defaults,
            io,
            flusher,
            topics: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            metrics,
            disk_low: AtomicBool::new(false),
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
        let topic = self.open_topic(name, record, settings, false)?;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_owned(), topic.clone());
        self.save_topics()?;
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        if is_internal(name) {
            return Err(TopicError::Internal(name.to_owned()));
        }
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .expect("topics lock")
            .remove(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        self.save_topics()?;
        let count = topic.partition_count();
        for i in 0..count {
            let dir = self.partition_dir(name, i as u32);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted topic's data");
            }
            let partition = i.to_string();
            let _ = self
                .metrics
                .log_end_offset
                .remove_label_values(&[name, &partition]);
            let _ = self
                .metrics
                .log_size_bytes
                .remove_label_values(&[name, &partition]);
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Grows a topic to `total` partitions (Kafka never shrinks one).
    pub async fn add_partitions(
        &self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        if is_internal(name) {
            return Err(TopicError::Internal(name.to_owned()));
        }
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
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
        {
            let mut partitions = topic.partitions.write().expect("topic lock");
            for i in current..total {
                let dir = self.partition_dir(name, i as u32);
                partitions.push(Arc::new(Partition::open(
                    &dir,
                    self.io.clone(),
                    settings.log_settings(),
                    false,
                )?));
            }
        }
        topic.record.write().expect("topic lock").partitions = total as u32;
        self.save_topics()?;
        Ok(())
    }

    /// Writes `topics.json` atomically: a temporary file, fsync, rename, fsync of the directory.
    fn save_topics(&self) -> std::io::Result<()> {
        let records: BTreeMap<String, TopicRecord> = self
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), t.record.read().expect("topic lock").clone()))
            .collect();
        write_atomically(
            &self.dir.join(TOPICS_FILE),
            &serde_json::to_vec_pretty(&records)?,
        )
    }

    /// Validates a partition's record set, compresses it as the topic asks, and appends it.
    /// Returns once written, with the file that `make_durable` must sync for acks=all.
    pub async fn append(
        &self,
        topic: &Topic,
        partition: &Partition,
        records: Bytes,
    ) -> Result<(Appended, Arc<File>), AppendError> {
        if self.disk_low.load(Ordering::Acquire) {
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
        let (batches, records) = compress_as_configured(batches, records, &settings);
        let (appended, file) = partition.append(&batches, &records).await?;
        if appended.duplicate {
            return Ok((appended, file));
        }
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

    fn check_disk(&self) {
        match free_bytes(&self.dir) {
            Ok(free) => {
                let low = free < self.defaults.min_free_bytes;
                let was = self.disk_low.swap(low, Ordering::AcqRel);
                if low && !was {
                    tracing::error!(
                        free_bytes = free,
                        min_free_bytes = self.defaults.min_free_bytes,
                        "free disk below the floor: refusing produce until space returns"
                    );
                } else if was && !low {
                    tracing::warn!(
                        free_bytes = free,
                        "free disk back above the floor: accepting produce"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read free disk space"),
        }
    }

    /// Syncs what acks=0/1 wrote, at least every `flush_interval_ms`.
    pub async fn flush_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.defaults.flush_interval_ms.max(1),
        ));
        loop {
            tick.tick().await;
            let dirty: Vec<Arc<File>> = self
                .topics()
                .iter()
                .flat_map(|t| t.partitions.read().expect("topic lock").clone())
                .filter_map(|p| p.take_dirty())
                .collect();
            if !dirty.is_empty() {
                if let Err(e) = self.io.sync_all(&dirty).await {
                    tracing::error!(error = %e, "periodic flush failed");
                }
            }
        }
    }

    /// Retention, the free-disk guard and the per-partition gauges, every check interval.
    pub async fn housekeeping_loop(self: Arc<Self>) {
        let period = Duration::from_millis(self.defaults.retention_check_interval_ms.max(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            self.check_disk();
            for topic in self.topics() {
                let settings = topic.settings();
                let partitions = topic.partitions.read().expect("topic lock").clone();
                for (i, partition) in partitions.iter().enumerate() {
                    // A compact-only topic keeps its segments; compaction thins them instead.
                    let (retention_ms, retention_bytes) = if settings.delete {
                        (settings.retention_ms, settings.retention_bytes)
                    } else {
                        (-1, -1)
                    };
                    match partition.enforce_retention(retention_ms, retention_bytes) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(topic = %topic.name, partition = i, segments = n, "retention deleted segments");
                            self.metrics
                                .segments_deleted
                                .with_label_values(&[&topic.name])
                                .inc_by(n as u64);
                        }
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = i, error = %e, "retention failed")
                        }
                    }
                    if settings.compact {
                        self.compact_partition(&topic.name, i, partition, &settings)
                            .await;
                    }
                    let label = i.to_string();
                    self.metrics
                        .log_end_offset
                        .with_label_values(&[&topic.name, &label])
                        .set(partition.log_end_offset());
                    self.metrics
                        .log_size_bytes
                        .with_label_values(&[&topic.name, &label])
                        .set(partition.size_bytes() as i64);
                }
            }
        }
    }

    async fn compact_partition(
        &self,
        topic: &str,
        index: usize,
        partition: &Arc<Partition>,
        settings: &TopicSettings,
    ) {
        let end = partition.log_end_offset();
        let key = (topic.to_owned(), index);
        if let Some((last_end, at)) = self.compacted.lock().expect("compacted lock").get(&key) {
            let tombstones_due = at.elapsed().as_millis() as i64 >= settings.delete_retention_ms;
            if *last_end == end && !tombstones_due {
                return;
            }
        }
        self.compacted
            .lock()
            .expect("compacted lock")
            .insert(key, (end, std::time::Instant::now()));
        let (closed, active) = partition.segment_files();
        if closed.is_empty() {
            return;
        }
        let delete_retention_ms = settings.delete_retention_ms;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let partition = partition.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let rewrites = compaction::compact(&closed, &active, delete_retention_ms, now_ms)?;
            Ok(partition.apply_rewrites(rewrites)?)
        })
        .await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                tracing::info!(
                    topic,
                    partition = index,
                    removed,
                    "compaction removed superseded records"
                );
                self.metrics
                    .records_compacted
                    .with_label_values(&[topic])
                    .inc_by(removed);
            }
            Ok(Err(e)) => {
                tracing::error!(topic, partition = index, error = %e, "compaction failed")
            }
            Err(e) => {
                tracing::error!(topic, partition = index, error = %e, "compaction task failed")
            }
        }
    }

    /// Syncs every partition and marks the stop clean, so the next start skips the tail scans.
    pub fn close(&self) -> std::io::Result<()> {
        for topic in self.topics() {
            for partition in topic.partitions.read().expect("topic lock").iter() {
                partition.sync()?;
            }
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
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Topics the broker itself owns (`__consumer_offsets`): clients may read but not change them.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data dir path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory of the
    // right type; statvfs fully initialises it when it returns 0, which we check first.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
