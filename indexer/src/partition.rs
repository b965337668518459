//! One partition's index, as its owner writes it: time buckets, the commit that carries the next
//! offset, the id check that skips re-sent events, and retention by whole buckets.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tantivy::collector::DocSetCollector;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use crate::layout::{self, CommitPayload};
use crate::mapping::{map_record, Malformed, Mapped, Record};
use crate::schema::LogSchema;

/// What the writer of a partition needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub memory_bytes: usize,
    pub threads: usize,
    pub bucket_ms: i64,
    pub retention_ms: i64,
    pub max_document_bytes: usize,
    /// How long to wait for a previous owner to let go of the partition.
    pub lock_wait: Duration,
}

#[cfg(test)]
impl WriterSettings {
    /// One small writer, hour-long buckets, no retention: for tests.
    pub fn for_tests() -> Self {
        Self {
            memory_bytes: 15_000_000,
            threads: 1,
            bucket_ms: 3_600_000,
            retention_ms: 0,
            max_document_bytes: 1 << 20,
            lock_wait: Duration::from_millis(200),
        }
    }
}

/// What became of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    Indexed(Option<Malformed>),
    /// Its `id` is already in the index.
    Duplicate,
}

/// What one commit made searchable.
pub struct Committed {
    pub docs: u64,
    /// Kafka timestamps of the committed records, for the freshness histogram.
    pub record_times_ms: Vec<i64>,
}

struct Bucket {
    start_ms: i64,
    /// See `CommitPayload::newest_ms`; here it also counts the records not committed yet.
    newest_ms: Option<i64>,
    dir: PathBuf,
    reader: IndexReader,
    searcher: Searcher,
    index: Index,
}

/// What an index holds at an offset, against a record read there.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Held {
    /// A document of the same content and time: the record itself.
    Same,
    /// Another document.
    Other,
    Nothing,
}

/// Whether an index error means the bucket's files are damaged (missing, corrupt, unreadable
/// as an index), not that opening them failed for now.
fn is_damage(e: &tantivy::TantivyError) -> bool {
    use tantivy::directory::error::OpenReadError;
    use tantivy::TantivyError as E;
    matches!(
        e,
        E::DataCorruption(_)
            | E::IncompatibleIndex(_)
            | E::DeserializeError(_)
            | E::OpenReadError(OpenReadError::FileDoesNotExist(_))
            | E::OpenReadError(OpenReadError::IncompatibleIndex(_))
    )
}

impl Bucket {
    /// The bucket, with what its last commit recorded.
    fn open(
        schema: &LogSchema,
        start_ms: i64,
        dir: PathBuf,
    ) -> tantivy::Result<(Self, Option<CommitPayload>)> {
        let index = schema.open_or_create(&dir)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let searcher = reader.searcher();
        let payload = layout::committed_payload(&index)?;
        let newest_ms = match payload.as_ref().and_then(|p| p.newest_ms) {
            Some(newest) => Some(newest),
            // Written before the newest time was kept: every record's time (the clock's at
            // most, when it was indexed) precedes the bucket's last commit.
            None if searcher.num_docs() > 0 => Some(layout::last_commit_ms(&dir)),
            None => None,
        };
        let bucket = Self {
            start_ms,
            newest_ms,
            dir,
            reader,
            searcher,
            index,
        };
        Ok((bucket, payload))
    }

    /// What the bucket holds at `offset`: a document with `source` as its `_source` and `time_ms`
    /// as its time, another, or none.
    fn held_at(
        &self,
        schema: &LogSchema,
        offset: i64,
        source: &str,
        time_ms: Option<i64>,
    ) -> tantivy::Result<Held> {
        let query = TermQuery::new(
            Term::from_field_u64(schema.offset, offset as u64),
            IndexRecordOption::Basic,
        );
        let mut held = Held::Nothing;
        for address in self.searcher.search(&query, &DocSetCollector)? {
            let doc: TantivyDocument = self.searcher.doc(address)?;
            let stored = doc.get_first(schema.source_doc).and_then(|v| v.as_str());
            let time = self
                .searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .date("timestamp")?
                .first(address.doc_id)
                .map(|t| t.into_timestamp_millis());
            if stored == Some(source) && time == time_ms {
                return Ok(Held::Same);
            }
            held = Held::Other;
        }
        Ok(held)
    }

    /// A time every record of the bucket is older than; an empty bucket has none.
    fn ends_ms(&self) -> i64 {
        self.newest_ms.map_or(i64::MIN, |newest| newest + 1)
    }

    fn holds_id(&self, term: &Term) -> tantivy::Result<bool> {
        for segment in self.searcher.segment_readers() {
            if segment.inverted_index(term.field())?.doc_freq(term)? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

pub struct PartitionIndex {
    partition: i32,
    dir: PathBuf,
    schema: LogSchema,
    settings: WriterSettings,
    /// Oldest first; the writer, when open, writes the last one.
    buckets: Vec<Bucket>,
    writer: Option<IndexWriter>,
    committed_next: Option<i64>,
    next_offset: Option<i64>,
    /// See `CommitPayload::generation`.
    generation: u64,
    /// The generation of the last commit: records of a new one are pending even when their
    /// next offset happens to equal the committed one.
    committed_generation: u64,
    pending_ids: HashSet<String>,
    /// Records below `next_offset` found already indexed (the log cut short under the index).
    rereading: u64,
    pending_times_ms: Vec<i64>,
    /// Kafka timestamps of documents committed but not yet reported by `commit`.
    committed_times_ms: Vec<i64>,
    // Held for as long as this process writes the partition; the kernel drops it on kill -9.
    _owner: File,
}

impl PartitionIndex {
    /// Takes the partition (waiting for a previous owner to let go) and opens its buckets.
    pub fn open(
        topic_dir: &std::path::Path,
        partition: i32,
        schema: LogSchema,
        settings: WriterSettings,
    ) -> anyhow::Result<Self> {
        let dir = layout::partition_dir(topic_dir, partition);
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("index dir {}: cannot create: {e}", dir.display()))?;
        let owner = lock_owner(&dir, settings.lock_wait)?;
        layout::remove_half_deleted(&dir);
        let mut buckets = Vec::new();
        let mut committed = None;
        for (start_ms, bucket_dir) in layout::buckets(&dir) {
            // One bucket that cannot be read must not stop the partition from being indexed.
            let opened = Bucket::open(&schema, start_ms, bucket_dir.clone())
                .map(|(bucket, payload)| (bucket, payload.map(|p| (p.generation, p.next_offset))));
            match opened {
                Ok((bucket, position)) => {
                    committed = committed.max(position);
                    buckets.push(bucket);
                }
                // A passing failure (files, memory) fails the open, to be tried again, rather
                // than move a sound bucket out of search.
                Err(e) if !is_damage(&e) => {
                    anyhow::bail!("index bucket {}: {e}", bucket_dir.display())
                }
                Err(e) => {
                    // Moved aside: records of its time, read again from the committed offset,
                    // go to a new bucket of that start rather than failing on this one for ever.
                    let aside = bucket_dir.with_extension("damaged");
                    let moved = std::fs::rename(&bucket_dir, &aside);
                    tracing::error!(
                        bucket = %bucket_dir.display(),
                        error = %e,
                        moved_to = %aside.display(),
                        moved = moved.is_ok(),
                        "indexer: an index bucket cannot be opened; it is left out and moved aside (delete it once looked at)"
                    );
                }
            }
        }
        let (generation, committed_next) = match committed {
            Some((generation, next)) => (generation, Some(next)),
            None => (0, None),
        };
        Ok(Self {
            partition,
            dir,
            schema,
            settings,
            buckets,
            writer: None,
            committed_next,
            next_offset: committed_next,
            generation,
            committed_generation: generation,
            pending_ids: HashSet::new(),
            rereading: 0,
            pending_times_ms: Vec::new(),
            committed_times_ms: Vec::new(),
            _owner: owner,
        })
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// How many times the log restarted below this index (see `CommitPayload::generation`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The first offset the index does not hold; `None` for an empty index.
    pub fn committed_next_offset(&self) -> Option<i64> {
        self.committed_next
    }

    /// The offset the next record should have: past the last one added, or where the index
    /// ends; `None` for an empty index.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// Indexes one record (not yet searchable: that takes a commit).
    pub fn add(&mut self, record: &Record<'_>, now_ms: i64) -> anyhow::Result<Added> {
        let mapped = map_record(
            &self.schema,
            record,
            self.settings.max_document_bytes,
            now_ms,
        );
        if let Some(next) = self.next_offset.filter(|&next| record.offset < next) {
            // The consumer starts where the index ends (and again after every reopen), and a
            // partition's offsets only grow: an older one means the offset asked for was past
            // the log's end, and the log's earliest record came instead (librdkafka's offset
            // reset). Either the log is the one indexed, cut short (the broker's recovery cut
            // a tail it had not synced): its records up to the cut are here already, and are
            // skipped; or it restarted under the index (the topic deleted and made again, the
            // broker's data new). At the first record the index does not hold, what follows is
            // new: a new generation of offsets begins.
            let time_ms = record.timestamp_ms.min(now_ms);
            if self.holds_record(record.offset, time_ms, &mapped)? {
                if self.rereading == 0 {
                    tracing::warn!(
                        partition = self.partition,
                        index_next = next,
                        log_offset = record.offset,
                        "indexer: the log comes again from below where the index ends (its \
                         offset was past the log's end): the records the index holds are skipped"
                    );
                }
                self.rereading += 1;
                return Ok(Added::Duplicate);
            }
            let reread = std::mem::take(&mut self.rereading);
            tracing::error!(
                partition = self.partition,
                index_next = next,
                log_offset = record.offset,
                reread,
                "indexer: the log goes on below where the index ends (the broker's log cut \
                 short, when the records before it, reread, were already indexed; else the \
                 topic made again): indexing from here"
            );
            self.next_offset = None;
            self.generation += 1;
        }
        // A reread that reached where the index ended is over.
        self.rereading = 0;
        let time_ms = record.timestamp_ms.min(now_ms);
        self.ensure_writer(self.bucket_of(time_ms), record.offset)?;
        let bucket = self.buckets.last_mut().expect("ensure_writer opened one");
        bucket.newest_ms = bucket.newest_ms.max(Some(time_ms));
        self.next_offset = Some(record.offset + 1);
        if let Some(id) = &mapped.id {
            if self.holds_id(id)? {
                return Ok(Added::Duplicate);
            }
            self.pending_ids.insert(id.clone());
        }
        self.writer
            .as_mut()
            .expect("ensure_writer opened it")
            .add_document(mapped.doc)?;
        self.pending_times_ms.push(record.timestamp_ms);
        Ok(Added::Indexed(mapped.malformed))
    }

    /// Whether the index holds this record, which comes below where the index ends: a
    /// committed document at its offset with the same `_source` and time, or (no document
    /// there) its `id` already held (skipped as a repeat when first read) or its time older
    /// than the oldest bucket (deleted by retention). Another document at its offset, or none
    /// where one should be, says the log there is not the one indexed.
    fn holds_record(&self, offset: i64, time_ms: i64, mapped: &Mapped) -> tantivy::Result<bool> {
        let source = mapped
            .doc
            .get_first(self.schema.source_doc)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let doc_time = mapped
            .doc
            .get_first(self.schema.timestamp)
            .and_then(|v| v.as_datetime())
            .map(|t| t.into_timestamp_millis());
        let mut held = Held::Nothing;
        for bucket in self.buckets.iter().rev() {
            match bucket.held_at(&self.schema, offset, source, doc_time)? {
                Held::Same => return Ok(true),
                Held::Other => held = Held::Other,
                Held::Nothing => {}
            }
        }
        if held == Held::Other {
            return Ok(false);
        }
        if let Some(id) = &mapped.id {
            if self.holds_id(id)? {
                return Ok(true);
            }
        }
        Ok(self.buckets.first().is_some_and(|b| time_ms < b.start_ms))
    }

    fn holds_id(&self, id: &str) -> tantivy::Result<bool> {
        if self.pending_ids.contains(id) {
            return Ok(true);
        }
        let term = Term::from_field_text(self.schema.id, id);
        for bucket in self.buckets.iter().rev() {
            if bucket.holds_id(&term)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn bucket_of(&self, time_ms: i64) -> i64 {
        let width = self.settings.bucket_ms.max(1);
        time_ms.max(0) / width * width
    }

    /// Makes sure a writer is open on the bucket that `bucket_start` belongs in; a newer
    /// bucket than the last one starts a new index, whose records begin at `first_offset`.
    fn ensure_writer(&mut self, bucket_start: i64, first_offset: i64) -> anyhow::Result<()> {
        let newest = self.buckets.last().map(|b| b.start_ms);
        if newest.is_some_and(|newest| newest >= bucket_start) {
            if self.writer.is_none() {
                let bucket = self.buckets.last().expect("checked above");
                self.writer =
                    Some(bucket.index.writer_with_num_threads(
                        self.settings.threads,
                        self.settings.memory_bytes,
                    )?);
            }
            return Ok(());
        }
        self.roll_to(bucket_start, first_offset)
    }

    /// Closes the current bucket (committing it up to `first_offset`) and opens a new one.
    fn roll_to(&mut self, bucket_start: i64, first_offset: i64) -> anyhow::Result<()> {
        if self.writer.is_some() {
            self.next_offset = Some(first_offset);
            self.commit_pending()?;
            if let Some(writer) = self.writer.take() {
                writer.wait_merging_threads()?;
            }
        }
        let (bucket, _) = Bucket::open(
            &self.schema,
            bucket_start,
            layout::bucket_dir(&self.dir, bucket_start),
        )?;
        self.writer = Some(
            bucket
                .index
                .writer_with_num_threads(self.settings.threads, self.settings.memory_bytes)?,
        );
        self.buckets.push(bucket);
        if self.committed_next.is_some() {
            // The new bucket's first commit carries the offset at once: from now on retention
            // may delete every older bucket without losing the partition's place.
            let next = self.next_offset;
            self.next_offset = Some(first_offset);
            self.committed_next = None;
            self.commit_pending()?;
            self.next_offset = next;
        }
        Ok(())
    }

    /// True when records were taken since the last commit.
    pub fn has_pending(&self) -> bool {
        self.next_offset != self.committed_next || self.generation != self.committed_generation
    }

    /// Commits the pending documents with the next offset, atomically, and makes them visible;
    /// reports every document committed since the last report (a bucket roll commits too).
    pub fn commit(&mut self) -> anyhow::Result<Committed> {
        self.commit_pending()?;
        let record_times_ms = std::mem::take(&mut self.committed_times_ms);
        Ok(Committed {
            docs: record_times_ms.len() as u64,
            record_times_ms,
        })
    }

    fn commit_pending(&mut self) -> anyhow::Result<()> {
        let Some(next_offset) = self.next_offset.filter(|_| self.has_pending()) else {
            return Ok(());
        };
        let writer = self
            .writer
            .as_mut()
            .expect("records were taken, so a writer is open");
        let payload = serde_json::to_string(&CommitPayload {
            next_offset,
            generation: self.generation,
            newest_ms: self.buckets.last().and_then(|b| b.newest_ms),
        })?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        let bucket = self.buckets.last_mut().expect("a writer writes a bucket");
        bucket.reader.reload()?;
        bucket.searcher = bucket.reader.searcher();
        self.committed_next = Some(next_offset);
        self.committed_generation = self.generation;
        self.pending_ids.clear();
        self.committed_times_ms.append(&mut self.pending_times_ms);
        Ok(())
    }

    /// Starts a new bucket when the clock has passed the last one's end, and deletes buckets
    /// wholly older than the retention. Returns how many buckets were deleted.
    pub fn apply_retention(&mut self, now_ms: i64) -> anyhow::Result<usize> {
        if self.settings.retention_ms == 0 {
            return Ok(0);
        }
        let current = self.bucket_of(now_ms);
        if let Some(next) = self.committed_next.filter(|_| !self.has_pending()) {
            if self.buckets.last().is_some_and(|b| b.start_ms < current) {
                // An idle partition moves to a new, empty bucket whose commit carries the offset,
                // so the older buckets can go.
                self.roll_to(current, next)?;
            }
        }
        let horizon = now_ms - self.settings.retention_ms;
        // The last bucket stays: its commit holds the partition's offset. A bucket cut with a
        // wider width than the ones after it may outlive them.
        let last = self.buckets.len().saturating_sub(1);
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.buckets)
            .into_iter()
            .enumerate()
            .partition(|(i, b)| *i < last && b.ends_ms() <= horizon);
        self.buckets = kept.into_iter().map(|(_, b)| b).collect();
        let deleted = expired.len();
        for (_, bucket) in expired {
            let dir = bucket.dir.clone();
            let newest_ms = bucket.newest_ms;
            drop(bucket);
            layout::delete_bucket(&dir).map_err(|e| {
                anyhow::anyhow!("index bucket {}: cannot delete: {e}", dir.display())
            })?;
            match newest_ms {
                // An idle partition's empty bucket, left behind by the next one.
                None => {
                    tracing::debug!(partition = self.partition, bucket = %dir.display(), "indexer: empty index bucket deleted")
                }
                Some(newest_ms) => tracing::info!(
                    partition = self.partition,
                    bucket = %dir.display(),
                    newest_ms,
                    retention_ms = self.settings.retention_ms,
                    "indexer: index bucket older than the retention deleted"
                ),
            }
        }
        Ok(deleted)
    }

    /// Commits what is pending and lets the partition go.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.commit()?;
        if let Some(writer) = self.writer.take() {
            writer.wait_merging_threads()?;
        }
        Ok(())
    }
}

fn lock_owner(dir: &std::path::Path, wait: Duration) -> anyhow::Result<File> {
    let path = dir.join(".owner.lock");
    let file = File::create(&path)
        .map_err(|e| anyhow::anyhow!("index lock {}: cannot open: {e}", path.display()))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                anyhow::bail!(
                    "index {}: another indexer still holds it ({e})",
                    dir.display()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
