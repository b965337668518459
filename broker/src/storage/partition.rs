//! One partition: an ordered log of segments. Appends are serialised by an async lock (one
//! writer at a time keeps offsets dense and batches in order); readers take a snapshot of the
//! segment they need under a short std lock and read without holding anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::appender::Appender;
use super::batch::{set_base_offset, BatchHeader, HEADER_LEN};
use super::io::Io;
use super::producers::{self, ProducerStates, Sequence};
use super::segment::{cut_batches, Cut, ScanReport, Segment};
use super::AppendError;

mod maintenance;

/// Settings a partition needs from its topic.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u32,
}

/// What an append did.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
    pub records: i64,
    /// A retried batch that was already in the log: nothing was written.
    pub duplicate: bool,
}

/// Why a read could not be served.
#[derive(Debug)]
pub enum ReadError {
    OffsetOutOfRange,
    /// A torn or corrupt batch where the read had to go (its position in the segment); it is
    /// never served.
    Corrupt(u64),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

struct Log {
    segments: BTreeMap<i64, Segment>,
    next_offset: i64,
}

impl Log {
    /// The segment appends go to: the last one (a partition always has one).
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a partition has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a partition has a segment")
    }
}

pub struct Partition {
    pub dir: PathBuf,
    io: Io,
    settings: Mutex<LogSettings>,
    log: Mutex<Log>,
    /// Held by the one append at a time, with its appender for the active segment (`None` until
    /// the first append).
    append_lock: tokio::sync::Mutex<Option<Appender>>,
    /// Idempotent producers' sequences; read and changed only under `append_lock`.
    producers: Mutex<ProducerStates>,
    /// Written since the last fdatasync of the active segment.
    dirty: AtomicBool,
    /// Synced for a clean stop: no append may follow. Set and read under `append_lock`.
    closed: AtomicBool,
}

/// What a fetch read returned.
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`. With `verify`, the last segment is scanned batch
    /// by batch and cut at the first torn or corrupt batch: the recovery after an unclean stop.
    pub fn open(dir: &Path, io: Io, settings: LogSettings, verify: bool) -> io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                super::sync_dir(parent)?;
            }
        }
        let mut bases: Vec<i64> = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".cleaned") {
                // A compaction cut short before its swap: the segment itself is whole.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        let last = bases.last().copied();
        for base in bases {
            let verify_this = verify && Some(base) == last;
            let (segment, report) =
                Segment::open(dir, base, settings.index_interval_bytes, verify_this)?;
            log_recovery(dir, base, &report);
            segments.insert(base, segment);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::create(dir, 0, settings.index_interval_bytes)?);
        }
        let next_offset = segments.values().next_back().map_or(0, |s| s.next_offset);
        // From the newest snapshot, the batches after it: none after a clean stop.
        producers::snapshot::remove_past(dir, next_offset)?;
        let (from, mut producers) = ProducerStates::load(dir).unwrap_or_default();
        for segment in segments.values().filter(|s| s.next_offset > from) {
            for header in segment.headers()? {
                if header.last_offset() >= from {
                    producers.record(&header);
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            io,
            settings: Mutex::new(settings),
            log: Mutex::new(Log {
                segments,
                next_offset,
            }),
            append_lock: tokio::sync::Mutex::new(None),
            producers: Mutex::new(producers),
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().expect("partition lock poisoned")
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log().next_offset
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log()
            .segments
            .values()
            .next()
            .map_or(0, |s| s.base_offset)
    }

    /// The largest producer id in this partition's log, or -1.
    pub fn max_producer_id(&self) -> i64 {
        self.producers
            .lock()
            .expect("producers lock")
            .max_producer_id()
    }

    /// The largest record timestamp in the log; -1 when it is empty.
    pub fn max_timestamp(&self) -> i64 {
        let log = self.log();
        log.segments
            .values()
            .map(|s| s.max_timestamp)
            .max()
            .unwrap_or(-1)
    }

    pub fn size_bytes(&self) -> u64 {
        self.log().segments.values().map(|s| s.size).sum()
    }

    /// Starts a new segment when `len` bytes of `records` records would not fit the active one.
    /// The old segment loses the padding of direct writes and is synced through the I/O backend,
    /// and the new files are created (with a directory fsync) on a blocking thread: on a runtime
    /// worker they stalled every connection it served for as long as the disk took. Appends wait
    /// for it (the caller holds the append lock).
    async fn roll_if_full(
        &self,
        len: u64,
        records: i64,
        settings: &LogSettings,
    ) -> Result<(), AppendError> {
        let full =
            self.log()
                .active()
                .is_full(len, records, settings.segment_bytes, settings.segment_ms);
        match full {
            true => self.roll(settings).await,
            false => Ok(()),
        }
    }

    /// Closes the active segment when every record in it is older than `retention_ms`, so that
    /// retention may delete it, as Kafka does: a quiet partition kept expired records until its
    /// next write. Whether it rolled.
    pub async fn roll_if_expired(
        &self,
        retention_ms: i64,
        now_ms: i64,
    ) -> Result<bool, AppendError> {
        let expired = || {
            let log = self.log();
            let active = log.active();
            active.size > 0 && active.newest_ms() < now_ms - retention_ms
        };
        // Looked at before waiting for the append lock, which most rounds need not take.
        if retention_ms < 0 || self.io.failed() || !expired() {
            return Ok(false);
        }
        let _appender = self.append_lock.lock().await;
        if self.is_closed() || !expired() {
            return Ok(false);
        }
        let settings = *self.settings.lock().expect("settings lock");
        self.roll(&settings).await?;
        Ok(true)
    }

    /// Starts a new segment at the log's end (the caller holds the append lock).
    async fn roll(&self, settings: &LogSettings) -> Result<(), AppendError> {
        let (old, size, base) = {
            let log = self.log();
            let active = log.active();
            (active.files(), active.size, log.next_offset)
        };
        let log = old[0].clone();
        tokio::task::spawn_blocking(move || log.set_len(size))
            .await
            .map_err(std::io::Error::other)??;
        self.io
            .sync_all(&old)
            .await
            .map_err(AppendError::RollSyncFailed)?;
        let snapshot = self
            .producers
            .lock()
            .expect("producers lock")
            .snapshot(base);
        let (dir, interval) = (self.dir.clone(), settings.index_interval_bytes);
        let fresh = tokio::task::spawn_blocking(move || {
            // Only a shortcut for the next start: without it the start reads further back.
            if let Err(e) = producers::snapshot::write(&dir, base, &snapshot) {
                tracing::warn!(dir = %dir.display(), error = %e, "writing a producer snapshot");
            }
            Segment::create(&dir, base, interval)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.log().segments.insert(base, fresh);
        Ok(())
    }

    /// Appends validated batches (one produce request's record set for this partition), assigning
    /// consecutive offsets. Returns once the bytes are written (not yet synced) together with the
    /// file that must be synced for durability. A batch an idempotent producer already wrote is
    /// not written again: the answer carries its original offset.
    pub async fn append(
        &self,
        batches: &[(BatchHeader, std::ops::Range<usize>)],
        records: &[u8],
    ) -> Result<(Appended, Arc<File>), AppendError> {
        let mut appender = self.append_lock.lock().await;
        if self.is_closed() {
            return Err(AppendError::Closed);
        }
        if let Some(answer) = self.check_sequences(batches)? {
            return Ok(answer);
        }
        let settings = *self.settings.lock().expect("settings lock");
        let count = batches
            .iter()
            .map(|(h, _)| h.last_offset_delta as i64 + 1)
            .sum();
        self.roll_if_full(records.len() as u64, count, &settings)
            .await?;
        let appender = self.appender(&mut appender)?;
        let mut write = appender.prepare(records);
        let (file, position, base_offset, headers) = {
            let log = self.log();
            let mut next = log.next_offset;
            let mut headers = Vec::with_capacity(batches.len());
            let data = &mut write.data[write.records.clone()];
            for (header, range) in batches {
                set_base_offset(&mut data[range.clone()], next);
                headers.push(BatchHeader {
                    base_offset: next,
                    ..*header
                });
                next += header.last_offset_delta as i64 + 1;
            }
            let active = log.active();
            (active.log.clone(), active.size, log.next_offset, headers)
        };
        let len = records.len() as u64;
        appender.write(&self.io, write).await?;
        let mut log = self.log();
        let log_start_offset = log.segments.values().next().map_or(0, |s| s.base_offset);
        let active = log.active_mut();
        let mut at = position;
        for header in &headers {
            active.note_batch(header, at)?;
            at += header.size as u64;
        }
        active.size = position + len;
        let last_offset = active.next_offset - 1;
        log.next_offset = last_offset + 1;
        drop(log);
        // Only once the batches are part of the log do they count for idempotence.
        let mut producers = self.producers.lock().expect("producers lock");
        headers.iter().for_each(|h| producers.record(h));
        drop(producers);
        self.dirty.store(true, Ordering::Release);
        Ok((
            Appended {
                base_offset,
                last_offset,
                log_start_offset,
                records: last_offset - base_offset + 1,
                duplicate: false,
            },
            file,
        ))
    }

    /// `slot`'s appender, made again unless it appends to the active segment where it ends.
    fn appender<'a>(&self, slot: &'a mut Option<Appender>) -> io::Result<&'a mut Appender> {
        let log = self.log();
        let active = log.active();
        let current = slot
            .as_ref()
            .is_some_and(|a| a.base_offset == active.base_offset && a.end() == active.size);
        if !current {
            *slot = Some(Appender::open(active, self.io.direct_writes())?);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    /// Idempotence: `Some` answer for a retried batch, an error for a sequence gap or a fenced
    /// epoch, `None` to go on and append.
    fn check_sequences(
        &self,
        batches: &[(BatchHeader, std::ops::Range<usize>)],
    ) -> Result<Option<(Appended, Arc<File>)>, AppendError> {
        let producers = self.producers.lock().expect("producers lock");
        let mut duplicate = None;
        for (header, _) in batches {
            match producers.check(header) {
                Sequence::Append => {}
                Sequence::Duplicate(offset) => duplicate = Some((offset, header.last_offset_delta)),
                Sequence::OutOfOrder { expected, got } => {
                    return Err(AppendError::OutOfOrderSequence { expected, got })
                }
                Sequence::Fenced { current, got } => {
                    return Err(AppendError::ProducerFenced { current, got })
                }
                Sequence::UnknownProducer => return Err(AppendError::UnknownProducer),
            }
        }
        let Some((base_offset, delta)) = duplicate else {
            return Ok(None);
        };
        if batches.len() > 1 {
            return Err(AppendError::OutOfOrderSequence {
                expected: -1,
                got: -1,
            });
        }
        let log = self.log();
        let file = log.active().log.clone();
        Ok(Some((
            Appended {
                base_offset,
                last_offset: base_offset + delta as i64,
                log_start_offset: log.segments.values().next().map_or(0, |s| s.base_offset),
                records: 0,
                duplicate: true,
            },
            file,
        )))
    }

    /// The active segment's file when it has writes not yet synced (for the periodic flush).
    pub fn take_dirty(&self) -> Option<Arc<File>> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.log()
            .segments
            .values()
            .next_back()
            .map(|s| s.log.clone())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`; the
    /// first batch is read whatever its size when the read `may_exceed` the limit, and not at all
    /// (no records) when it may not and does not fit.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        may_exceed: bool,
    ) -> Result<ReadResult, ReadError> {
        let (file, mut position, end, high_watermark, log_start_offset) = {
            let log = self.log();
            let start = log.segments.values().next().map_or(0, |s| s.base_offset);
            if offset < start || offset > log.next_offset {
                return Err(ReadError::OffsetOutOfRange);
            }
            let empty = ReadResult {
                records: Bytes::new(),
                high_watermark: log.next_offset,
                log_start_offset: start,
            };
            if offset == log.next_offset {
                return Ok(empty);
            }
            // The segment holding `offset`, or the next one when offsets skip past this one.
            let Some(segment) = log
                .segments
                .range(..=offset)
                .next_back()
                .filter(|(_, s)| offset < s.next_offset)
                .or_else(|| log.segments.range(offset + 1..).next())
                .map(|(_, s)| s)
            else {
                return Ok(empty);
            };
            (
                segment.log.clone(),
                segment.position_for_offset(offset),
                segment.size,
                log.next_offset,
                start,
            )
        };
        let mut want = max_bytes.max(HEADER_LEN);
        loop {
            if position >= end {
                return Ok(ReadResult {
                    records: Bytes::new(),
                    high_watermark,
                    log_start_offset,
                });
            }
            let len = want.min((end - position) as usize);
            let buf = self.io.read_at(&file, position, len).await?;
            let at_end = position + buf.len() as u64 >= end;
            match cut_batches(&buf, offset, max_bytes) {
                Cut::Batches(range) => {
                    return Ok(ReadResult {
                        records: Bytes::from(buf).slice(range),
                        high_watermark,
                        log_start_offset,
                    })
                }
                Cut::Skip(n) if n > 0 => position += n as u64,
                Cut::NeedMore { at, more } if !may_exceed && buf.len() + more - at > max_bytes => {
                    return Ok(ReadResult {
                        records: Bytes::new(),
                        high_watermark,
                        log_start_offset,
                    })
                }
                Cut::NeedMore { more, .. } if !at_end => want = buf.len() + more,
                // Less than a header left before the end, or a batch claiming to run past it.
                Cut::Skip(_) | Cut::NeedMore { .. } => return Err(ReadError::Corrupt(position)),
                Cut::Corrupt(at) => return Err(ReadError::Corrupt(position + at as u64)),
            }
        }
    }

    /// The first offset whose batch holds a record at or after `timestamp` (ms), with the batch
    /// bytes so the caller can find the exact record; `None` when every record is older.
    pub async fn find_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, Bytes)>> {
        let candidates: Vec<(Arc<File>, u64, u64)> = {
            let log = self.log();
            log.segments
                .values()
                .filter(|s| s.max_timestamp >= timestamp)
                .map(|s| (s.log.clone(), s.position_for_timestamp(timestamp), s.size))
                .collect()
        };
        for (file, mut position, end) in candidates {
            while position + HEADER_LEN as u64 <= end {
                let head = self.io.read_at(&file, position, HEADER_LEN).await?;
                let Ok(header) = BatchHeader::parse(&head) else {
                    break;
                };
                if header.max_timestamp >= timestamp {
                    let whole = self.io.read_at(&file, position, header.size).await?;
                    return Ok(Some((header.base_offset, Bytes::from(whole))));
                }
                position += header.size as u64;
            }
        }
        Ok(None)
    }

    /// Refuses every later append once the one in progress is done: the partition's topic is
    /// being deleted, and an append (a roll, say) must not make files in a directory that a
    /// topic made again under the same name may own.
    pub async fn close(&self) {
        let _no_append = self.append_lock.lock().await;
        self.closed.store(true, Ordering::Release);
    }

    /// The topic's settings changed: the next append rolls and indexes by these.
    pub fn set_log_settings(&self, settings: LogSettings) {
        *self.settings.lock().expect("settings lock") = settings;
    }

    /// Whether appends are refused: its topic was deleted or the broker is stopping.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes every segment durable for a clean stop, after which appends are refused, and
    /// snapshots the producer state at the log end, so the next start reads no batch header (on
    /// a blocking thread: it waits for the append in progress).
    pub fn sync(&self) -> io::Result<()> {
        let _no_append = self.append_lock.blocking_lock();
        self.closed.store(true, Ordering::Release);
        self.log().segments.values().try_for_each(Segment::sync)?;
        if self.io.failed() {
            // The next start checks the log's tail, which may come out shorter than it is now.
            return Ok(());
        }
        let end = self.log_end_offset();
        let snapshot = self.producers.lock().expect("producers lock").snapshot(end);
        if let Err(e) = producers::snapshot::write(&self.dir, end, &snapshot) {
            // Only a shortcut for the next start, which then reads further back.
            tracing::warn!(dir = %self.dir.display(), error = %e, "writing a producer snapshot");
        }
        Ok(())
    }
}

fn log_recovery(dir: &Path, base: i64, report: &ScanReport) {
    if report.truncated_bytes > 0 {
        tracing::warn!(dir = %dir.display(), segment = base, truncated_bytes = report.truncated_bytes,
            batches_kept = report.batches, "recovery cut a torn or corrupt tail");
    }
}

#[cfg(test)]
mod tests;
