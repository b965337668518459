//! One thread per owned partition: it owns the partition's index, maps and indexes the records
//! the consumer hands it, and commits on its own clock.
//!
//! Why a thread each: librdkafka delivers one partition's fetched records at a time, and a
//! Tantivy commit blocks until the segments are written. Done on the consumer's thread, mapping
//! was serial and every commit stalled every partition; here partitions map, index and commit
//! side by side, and the consumer only copies records into bounded queues.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::consumer::now_ms;
use crate::mapping::Record;
use crate::metrics::IndexerMetrics;
use crate::partition::{Added, PartitionIndex};

/// Records a worker's queue holds at most: more than one fetch brings for a partition, so the
/// consumer can hand a whole run over and go on to the next partition's (4096 left the other
/// workers idle while one queue was full: 11.5 against 9.3 µs of CPU per document).
const QUEUE_RECORDS: usize = 65536;
/// Bytes of records a worker's queue holds at most; the consumer waits above it.
const QUEUE_BYTES: usize = 64 << 20;
/// Bytes of records all of an indexer's queues hold together at most: what the queues cost
/// stays bounded however many partitions it owns.
const ALL_QUEUES_BYTES: usize = 256 << 20;

/// Bytes of records waiting in one worker's queue, and in all of them (`Queued::all`, shared by
/// an indexer's workers).
struct Queued {
    own: AtomicUsize,
    all: Arc<AtomicUsize>,
}

impl Queued {
    fn full(&self) -> bool {
        self.own.load(Ordering::Relaxed) > QUEUE_BYTES
            || self.all.load(Ordering::Relaxed) > ALL_QUEUES_BYTES
    }

    fn add(&self, bytes: usize) {
        self.own.fetch_add(bytes, Ordering::Relaxed);
        self.all.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes `bytes` off, or what is left of them: a record whose send failed may already be
    /// given back by `release`, and the total must not be given back twice.
    fn sub(&self, bytes: usize) {
        let before = self
            .own
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |own| {
                Some(own.saturating_sub(bytes))
            })
            .unwrap_or_default();
        self.all.fetch_sub(before.min(bytes), Ordering::Relaxed);
    }

    /// Gives back what a worker that ended left in its queue, once no record can reach it.
    fn release(&self) {
        self.all
            .fetch_sub(self.own.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A record copied out of librdkafka's buffers.
pub struct OwnedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
}

enum Job {
    Record(OwnedRecord),
    Retention,
    /// Commit, close the index, and answer with the committed next offset.
    Close(SyncSender<Option<i64>>),
}

/// What the consumer thread holds of a running worker.
pub struct PartitionWorker {
    partition: i32,
    jobs: SyncSender<Job>,
    queued: Arc<Queued>,
    /// The index's committed next offset; -1 while it has none.
    committed: Arc<AtomicI64>,
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PartitionWorker {
    /// Starts the partition's worker; `all_queued` counts the bytes queued for all of the
    /// indexer's workers.
    pub fn start(
        index: PartitionIndex,
        commit_every: Duration,
        metrics: IndexerMetrics,
        all_queued: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        let partition = index.partition();
        let (jobs, queue) = mpsc::sync_channel(QUEUE_RECORDS);
        let queued = Arc::new(Queued {
            own: AtomicUsize::new(0),
            all: all_queued,
        });
        let committed = Arc::new(AtomicI64::new(index.committed_next_offset().unwrap_or(-1)));
        let failed = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            index,
            queue,
            queued: queued.clone(),
            committed: committed.clone(),
            commit_every,
            metrics,
            gone_said: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("sluice-index-{partition}"))
            .spawn({
                let exit = OnExit {
                    failed: failed.clone(),
                    queued: queued.clone(),
                };
                move || {
                    if let Err(e) = worker.run() {
                        tracing::error!(partition, error = %e, "indexing failed; the partition will be reopened");
                        exit.failed.store(true, Ordering::Relaxed);
                    }
                    drop(exit);
                }
            })?;
        Ok(Self {
            partition,
            jobs,
            queued,
            committed,
            failed,
            thread: Some(thread),
        })
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The index's committed next offset, for the group's offsets.
    pub fn committed_next_offset(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::Relaxed)).filter(|&o| o >= 0)
    }

    /// True once the worker stopped on an error or a panic; its uncommitted records are gone
    /// with it.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Queues a record, waiting while the queue is full.
    pub fn send(&self, record: OwnedRecord) {
        while self.queued.full() && !self.has_failed() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let len = record.payload.len();
        self.queued.add(len);
        if self.jobs.send(Job::Record(record)).is_err() {
            // The worker is gone; the record comes back after the reopen's seek.
            self.queued.sub(len);
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    pub fn apply_retention(&self) {
        let _ = self.jobs.try_send(Job::Retention);
    }

    /// Commits what is queued and pending, closes the index, and returns the committed offset.
    pub fn close(mut self) -> Option<i64> {
        let (reply, answer) = mpsc::sync_channel(1);
        let closed = match self.jobs.send(Job::Close(reply)) {
            Ok(()) => answer.recv().ok().flatten(),
            Err(_) => None,
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        closed.or_else(|| self.committed_next_offset())
    }
}

/// Dropped last on the worker's thread, after the worker and its queue (so no record can be
/// queued any more): gives back what its queue held to the indexer's total, and marks the worker
/// failed when the thread unwinds from a panic.
struct OnExit {
    failed: Arc<AtomicBool>,
    queued: Arc<Queued>,
}

impl Drop for OnExit {
    fn drop(&mut self) {
        self.queued.release();
        if std::thread::panicking() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

struct Worker {
    index: PartitionIndex,
    queue: Receiver<Job>,
    queued: Arc<Queued>,
    committed: Arc<AtomicI64>,
    commit_every: Duration,
    metrics: IndexerMetrics,
    /// When a gap in the log's offsets was last said.
    gone_said: Option<Instant>,
}

/// Gaps in a partition's offsets are said at most this often.
const GONE_SAID_EVERY: Duration = Duration::from_secs(60);

impl Worker {
    fn run(mut self) -> anyhow::Result<()> {
        let mut next_commit = Instant::now() + self.commit_every;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match self.queue.recv_timeout(wait) {
                Ok(Job::Record(record)) => {
                    self.queued.sub(record.payload.len());
                    self.index(&record)?;
                }
                Ok(Job::Retention) => {
                    let deleted = self.index.apply_retention(now_ms())?;
                    self.metrics.buckets_deleted.inc_by(deleted as u64);
                }
                Ok(Job::Close(reply)) => {
                    self.commit()?;
                    let committed = self.index.committed_next_offset();
                    self.index.close()?;
                    let _ = reply.send(committed);
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.commit()?;
                    return self.index.close();
                }
            }
            if Instant::now() >= next_commit {
                self.commit()?;
                next_commit = Instant::now() + self.commit_every;
            }
        }
    }

    fn index(&mut self, record: &OwnedRecord) -> anyhow::Result<()> {
        let record = Record {
            partition: self.index.partition(),
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            payload: &record.payload,
        };
        if let Some(expected) = self.index.next_offset().filter(|&n| record.offset > n) {
            self.gone(expected, record.offset);
        }
        let generation = self.index.generation();
        let added = self.index.add(&record, now_ms())?;
        if self.index.generation() != generation {
            self.metrics.log_restarts.inc();
        }
        match added {
            Added::Indexed(None) => {}
            Added::Indexed(Some(malformed)) => {
                self.metrics
                    .malformed
                    .with_label_values(&[malformed.label()])
                    .inc();
            }
            Added::Duplicate => self.metrics.duplicates_skipped.inc(),
        }
        Ok(())
    }

    /// Offsets `from..to` were not in the log when the consumer read on: counted, and said at
    /// most once a minute (a compacted topic has such gaps all along).
    fn gone(&mut self, from: i64, to: i64) {
        self.metrics.offsets_gone.inc_by((to - from) as u64);
        if self
            .gone_said
            .is_none_or(|said| said.elapsed() >= GONE_SAID_EVERY)
        {
            self.gone_said = Some(Instant::now());
            tracing::warn!(
                partition = self.index.partition(),
                from,
                to,
                "indexer: offsets from..to were gone from the log before they were indexed (the \
                 broker's retention deleted them while the indexer was behind or away, or \
                 compaction): they are not searchable"
            );
        }
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        if !self.index.has_pending() {
            return Ok(());
        }
        let started = Instant::now();
        let committed = self.index.commit()?;
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
        if let Some(next) = self.index.committed_next_offset() {
            self.committed.store(next, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::WriterSettings;
    use crate::schema::LogSchema;

    fn worker(dir: &std::path::Path, partition: i32, all: &Arc<AtomicUsize>) -> PartitionWorker {
        let settings = WriterSettings::for_tests();
        let index = PartitionIndex::open(dir, partition, LogSchema::new(), settings).unwrap();
        let metrics = IndexerMetrics::register(&prometheus::Registry::new()).unwrap();
        PartitionWorker::start(index, Duration::from_secs(60), metrics, all.clone()).unwrap()
    }

    /// The workers' queues share one budget: records queued for any of them count against it,
    /// and it is whole again once they are indexed.
    #[test]
    fn queued_bytes_count_against_the_indexers_total_until_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let all = Arc::new(AtomicUsize::new(0));
        let workers = [worker(tmp.path(), 0, &all), worker(tmp.path(), 1, &all)];
        for offset in 0..100 {
            for worker in &workers {
                worker.send(OwnedRecord {
                    offset,
                    timestamp_ms: now_ms(),
                    payload: format!("line {offset}").into_bytes(),
                });
            }
        }
        for worker in workers {
            assert_eq!(worker.close(), Some(100));
        }
        assert_eq!(all.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_queue_is_full_when_all_the_queues_together_are() {
        let queued = Queued {
            own: AtomicUsize::new(0),
            all: Arc::new(AtomicUsize::new(ALL_QUEUES_BYTES)),
        };
        assert!(!queued.full());
        queued.add(1);
        assert!(queued.full());
        queued.sub(1);
        queued.own.store(QUEUE_BYTES + 1, Ordering::Relaxed);
        assert!(queued.full());
        queued.release();
        let after = ALL_QUEUES_BYTES - QUEUE_BYTES - 1;
        assert_eq!(queued.all.load(Ordering::Relaxed), after);
        // A send that failed after its worker released the queue gives nothing back twice.
        queued.add(10);
        queued.release();
        queued.sub(10);
        assert_eq!(queued.all.load(Ordering::Relaxed), after);
    }
}
