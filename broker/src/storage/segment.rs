//! One segment: `<base offset>.log` holds record batches as received (base offsets assigned),
//! `<base offset>.index` a sparse index of 16-byte entries, one per `index_interval_bytes` of log:
//! (offset relative to the segment base: u32, file position: u32, newest timestamp of the batches
//! before this position: i64). The offset column finds a batch by offset, the timestamp column
//! finds where to start looking for a time. The index is derived data: rebuilt from the log when
//! missing, damaged, or after an unclean stop.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::appender::BLOCK;
use super::batch::{BatchHeader, HEADER_LEN};

const INDEX_ENTRY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
    pub max_timestamp_before: i64,
}

impl IndexEntry {
    fn encode(&self) -> [u8; INDEX_ENTRY] {
        let mut out = [0u8; INDEX_ENTRY];
        out[0..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp_before.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            relative_offset: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            position: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
            max_timestamp_before: i64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        }
    }
}

/// What a recovery scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub batches: usize,
    /// Bytes cut from the end because they were torn or corrupt.
    pub truncated_bytes: u64,
    /// Zeros cut from the end: the padding of a direct write to the last block.
    pub padding_bytes: u64,
}

pub struct Segment {
    pub base_offset: i64,
    pub log: Arc<File>,
    index_file: Arc<File>,
    log_path: PathBuf,
    index_path: PathBuf,
    /// Bytes of log written and visible to readers.
    pub size: u64,
    /// One past the last offset in this segment (the base offset while empty).
    pub next_offset: i64,
    /// Newest batch timestamp in the segment, or -1 while empty.
    pub max_timestamp: i64,
    index: Vec<IndexEntry>,
    bytes_since_index: u64,
    index_interval: u64,
    pub created: SystemTime,
}

pub fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Segment {
    /// Creates a new empty segment.
    pub fn create(dir: &Path, base_offset: i64, index_interval: u32) -> io::Result<Self> {
        let log_path = log_path(dir, base_offset);
        let index_path = index_path(dir, base_offset);
        let log = open_rw(&log_path)?;
        log.set_len(0)?;
        let index_file = Arc::new(open_rw(&index_path)?);
        index_file.set_len(0)?;
        // The new files' names must survive a crash as surely as the data acked into them.
        super::sync_dir(dir)?;
        Ok(Self {
            base_offset,
            log: Arc::new(log),
            index_file,
            log_path,
            index_path,
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            index: Vec::new(),
            bytes_since_index: 0,
            index_interval: index_interval as u64,
            created: SystemTime::now(),
        })
    }

    /// Opens an existing segment. With `verify`, every batch's CRC is checked and the log is cut
    /// at the first torn or corrupt batch; the index is rebuilt whenever it cannot be trusted.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval: u32,
        verify: bool,
    ) -> io::Result<(Self, ScanReport)> {
        let log_path = log_path(dir, base_offset);
        let index_path = index_path(dir, base_offset);
        let log = open_rw(&log_path)?;
        let index_file = Arc::new(open_rw(&index_path)?);
        let created = log
            .metadata()?
            .modified()
            .unwrap_or_else(|_| SystemTime::now());
        let mut segment = Self {
            base_offset,
            log: Arc::new(log),
            index_file,
            log_path,
            index_path,
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            index: Vec::new(),
            bytes_since_index: 0,
            index_interval: index_interval as u64,
            created,
        };
        let file_len = segment.log.metadata()?.len();
        let loaded = if verify {
            None
        } else {
            segment.load_index(file_len)?
        };
        let report = match loaded {
            // Trust the index; only the tail after its last entry needs walking.
            Some(()) => {
                let start = segment.index.last().map_or(0, |e| e.position as u64);
                let mut report = segment.scan_from(start, file_len, false)?;
                if report.truncated_bytes > 0 {
                    // The index does not fit the log (say, a compaction rename it did not
                    // follow): nothing is cut on its word; a full checked scan decides.
                    segment.reset();
                    segment.index_file.set_len(0)?;
                    segment.scan_from(0, file_len, true)?
                } else {
                    report.batches += segment.index.len().saturating_sub(1);
                    report
                }
            }
            None => {
                segment.reset();
                segment.index_file.set_len(0)?;
                segment.scan_from(0, file_len, true)?
            }
        };
        if report.truncated_bytes > 0 || report.padding_bytes > 0 {
            segment.log.set_len(segment.size)?;
            segment.log.sync_data()?;
        }
        Ok((segment, report))
    }

    fn reset(&mut self) {
        self.index.clear();
        self.size = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.bytes_since_index = 0;
    }

    fn load_index(&mut self, file_len: u64) -> io::Result<Option<()>> {
        let bytes = std::fs::read(&self.index_path)?;
        if bytes.len() % INDEX_ENTRY != 0 {
            return Ok(None);
        }
        let entries: Vec<IndexEntry> = bytes.chunks(INDEX_ENTRY).map(IndexEntry::decode).collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].position < w[1].position && w[0].relative_offset <= w[1].relative_offset);
        let in_bounds = entries
            .last()
            .is_none_or(|e| (e.position as u64) < file_len);
        // The first batch always has an entry: an empty index of a log with batches was lost
        // (a crash between a compaction's swap and its reopen) and is rebuilt.
        let lost = entries.is_empty() && file_len > 0;
        if !ordered || !in_bounds || lost {
            return Ok(None);
        }
        self.index = entries;
        Ok(Some(()))
    }

    /// Walks batches from `start` to `end`, adopting each into size/offset/timestamp state; with
    /// `verify` it checks CRCs and rebuilds index entries. Stops at the first bad batch.
    fn scan_from(&mut self, start: u64, end: u64, verify: bool) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let mut pos = start;
        if let Some(last) = self.index.last() {
            self.max_timestamp = last.max_timestamp_before;
        }
        while pos + HEADER_LEN as u64 <= end {
            let mut head = [0u8; HEADER_LEN];
            self.log.read_exact_at(&mut head, pos)?;
            let Ok(header) = BatchHeader::parse(&head) else {
                break;
            };
            if pos + header.size as u64 > end {
                break;
            }
            // Offsets only grow. A batch numbered below the one before it was left past the log's
            // end by an append that failed after its write (its offsets were given out again):
            // the log ends before it.
            if header.base_offset < self.next_offset {
                break;
            }
            if verify {
                let mut whole = vec![0u8; header.size];
                self.log.read_exact_at(&mut whole, pos)?;
                if BatchHeader::validate(&whole).is_err() {
                    break;
                }
                self.note_batch(&header, pos)?;
            } else {
                // The walk starts at the last indexed batch: the next entry is due as if the
                // appends since had just been made.
                self.bytes_since_index += header.size as u64;
                self.adopt(&header);
            }
            pos += header.size as u64;
            self.size = pos;
            report.batches += 1;
        }
        self.size = pos.max(self.size);
        let rest = end - self.size;
        // Direct writes end on a block boundary: only then can zeros after the last batch be
        // their padding rather than a batch cut short.
        if rest < BLOCK as u64 && end.is_multiple_of(BLOCK as u64) {
            let mut after = vec![0u8; rest as usize];
            self.log.read_exact_at(&mut after, self.size)?;
            if after.iter().all(|&b| b == 0) {
                report.padding_bytes = rest;
                return Ok(report);
            }
        }
        report.truncated_bytes = rest;
        Ok(report)
    }

    fn adopt(&mut self, header: &BatchHeader) {
        self.next_offset = header.last_offset() + 1;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }

    /// Records a batch appended at `position`: index entry when due, offsets and timestamps.
    pub fn note_batch(&mut self, header: &BatchHeader, position: u64) -> io::Result<()> {
        if self.index.is_empty() || self.bytes_since_index >= self.index_interval {
            let entry = IndexEntry {
                relative_offset: (header.base_offset - self.base_offset) as u32,
                position: position as u32,
                max_timestamp_before: self.max_timestamp,
            };
            self.index_file
                .write_all_at(&entry.encode(), (self.index.len() * INDEX_ENTRY) as u64)?;
            self.index.push(entry);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.size as u64;
        self.adopt(header);
        Ok(())
    }

    /// Every batch header in the segment, in order (for rebuilding producer state).
    pub fn headers(&self) -> io::Result<Vec<BatchHeader>> {
        let mut headers = Vec::new();
        let mut pos = 0;
        let mut head = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= self.size {
            self.log.read_exact_at(&mut head, pos)?;
            let Ok(header) = BatchHeader::parse(&head) else {
                tracing::warn!(log = %self.log_path.display(), position = pos, "unreadable batch header inside a segment: the producer state of the batches after it is not rebuilt");
                break;
            };
            pos += header.size as u64;
            headers.push(header);
        }
        Ok(headers)
    }

    /// Where to start reading for `offset`: the last indexed batch at or before it.
    pub fn position_for_offset(&self, offset: i64) -> u64 {
        let relative = (offset - self.base_offset).max(0) as u32;
        let i = self
            .index
            .partition_point(|e| e.relative_offset <= relative);
        i.checked_sub(1)
            .map_or(0, |i| self.index[i].position as u64)
    }

    /// Where to start reading for the first record at or after `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let i = self
            .index
            .partition_point(|e| e.max_timestamp_before < timestamp);
        i.checked_sub(1)
            .map_or(0, |i| self.index[i].position as u64)
    }

    /// Whether `len` more bytes holding `records` more offsets must go to a new segment. Positions
    /// and offsets relative to the base are u32 in the index, so neither may outgrow that.
    /// The time retention goes by: the newest batch timestamp, or for batches without one,
    /// when the log file was last written (Kafka's fallback too); never, when that is unknown.
    pub fn newest_ms(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        self.log
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| d.as_millis() as i64)
    }

    pub fn is_full(&self, len: u64, records: i64, segment_bytes: u64, segment_ms: u64) -> bool {
        if self.size == 0 {
            return false;
        }
        let too_big = self.size + len > segment_bytes
            || self.size + len > u32::MAX as u64
            || self.next_offset - self.base_offset + records > u32::MAX as i64;
        let too_old = self
            .created
            .elapsed()
            .is_ok_and(|age| age.as_millis() as u64 >= segment_ms);
        too_big || too_old
    }

    /// Cuts what direct writes padded past the end, and makes the log and the index durable (at
    /// shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.log.set_len(self.size)?;
        self.log.sync_data()?;
        self.index_file.sync_data()
    }

    /// The segment's log and index, for syncing through the I/O backend.
    pub fn files(&self) -> [Arc<File>; 2] {
        [self.log.clone(), self.index_file.clone()]
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn delete(self) -> io::Result<()> {
        std::fs::remove_file(&self.log_path)?;
        match std::fs::remove_file(&self.index_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What a buffer read from a log holds for a fetch.
pub enum Cut {
    /// Whole batches in this range of the buffer, the first one holding or following the offset;
    /// the first is always whole, the rest stop at `max_bytes`.
    Batches(std::ops::Range<usize>),
    /// Every batch read ends before the offset: the next batch starts this many bytes on.
    Skip(usize),
    /// The first wanted batch, starting at `at`, is longer than what was read: `more` bytes
    /// more are needed.
    NeedMore { at: usize, more: usize },
    /// A torn or corrupt batch starts here.
    Corrupt(usize),
}

/// Cuts a buffer read from a log at a batch boundary into whole batches for a fetch of
/// `from_offset`: skips batches that end before it, keeps at most `max_bytes` (but always the
/// first wanted batch whole), and stops at anything torn or corrupt.
pub fn cut_batches(buf: &[u8], from_offset: i64, max_bytes: usize) -> Cut {
    let mut pos = 0;
    let mut first = None;
    while pos + HEADER_LEN <= buf.len() {
        let Ok(header) = BatchHeader::parse(&buf[pos..]) else {
            return first.map_or(Cut::Corrupt(pos), |f| Cut::Batches(f..pos));
        };
        let end = pos + header.size;
        if header.last_offset() < from_offset {
            if end > buf.len() {
                return Cut::Skip(end);
            }
            pos = end;
            continue;
        }
        let start = *first.get_or_insert(pos);
        if end > buf.len() {
            return if start == pos {
                Cut::NeedMore {
                    at: pos,
                    more: end - buf.len(),
                }
            } else {
                Cut::Batches(start..pos)
            };
        }
        if end - start > max_bytes && start != pos {
            return Cut::Batches(start..pos);
        }
        if BatchHeader::validate(&buf[pos..end]).is_err() {
            return if start == pos {
                Cut::Corrupt(pos)
            } else {
                Cut::Batches(start..pos)
            };
        }
        pos = end;
    }
    match first {
        Some(start) => Cut::Batches(start..pos),
        None => Cut::Skip(pos),
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::{set_base_offset, testing::batch};
    use super::*;

    fn append(seg: &mut Segment, count: i32, ts: i64) -> Vec<u8> {
        let mut b = batch(count, 100, ts);
        set_base_offset(&mut b, seg.next_offset);
        let header = BatchHeader::validate(&b).unwrap();
        seg.log.write_all_at(&b, seg.size).unwrap();
        let pos = seg.size;
        seg.note_batch(&header, pos).unwrap();
        seg.size += b.len() as u64;
        b
    }

    #[test]
    fn index_finds_offsets_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 100, 1).unwrap();
        let first = append(&mut seg, 10, 1000);
        append(&mut seg, 10, 2000);
        append(&mut seg, 10, 3000);
        assert_eq!(seg.next_offset, 130);
        assert_eq!(seg.position_for_offset(100), 0);
        assert_eq!(seg.position_for_offset(115), first.len() as u64);
        assert_eq!(seg.position_for_timestamp(1500), first.len() as u64);
        assert_eq!(seg.position_for_timestamp(500), 0);
    }

    #[test]
    fn reopen_cuts_torn_tail_and_rebuilds_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
        append(&mut seg, 5, 1);
        let good = seg.size;
        let torn = batch(5, 100, 2);
        seg.log.write_all_at(&torn[..40], seg.size).unwrap();
        drop(seg);
        std::fs::write(index_path(dir.path(), 0), b"garbage").unwrap();
        let (seg, report) = Segment::open(dir.path(), 0, 1, true).unwrap();
        assert_eq!(seg.size, good);
        assert_eq!(seg.next_offset, 5);
        assert_eq!(report.truncated_bytes, 40);
        assert_eq!(
            std::fs::metadata(log_path(dir.path(), 0)).unwrap().len(),
            good
        );
    }

    /// An index emptied by a crash (a compaction's swap deletes it before the reopen writes it)
    /// is rebuilt at the next start, clean or not, rather than trusted as an index of nothing.
    #[test]
    fn reopen_rebuilds_an_empty_index_of_a_log_with_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
        append(&mut seg, 5, 1);
        let second = seg.size;
        append(&mut seg, 5, 2);
        drop(seg);
        std::fs::write(index_path(dir.path(), 0), b"").unwrap();
        let (seg, _) = Segment::open(dir.path(), 0, 1, false).unwrap();
        assert_eq!(seg.index.len(), 2);
        assert_eq!(seg.position_for_offset(7), second);
        assert_eq!(
            std::fs::metadata(index_path(dir.path(), 0)).unwrap().len(),
            2 * INDEX_ENTRY as u64
        );
    }

    #[test]
    fn reopen_cuts_the_padding_of_direct_writes_without_calling_it_torn() {
        for verify in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
            append(&mut seg, 5, 1);
            let good = seg.size;
            let padded = good.div_ceil(BLOCK as u64) * BLOCK as u64;
            seg.log.set_len(padded).unwrap();
            drop(seg);
            let (seg, report) = Segment::open(dir.path(), 0, 1, verify).unwrap();
            assert_eq!((seg.size, seg.next_offset), (good, 5));
            assert_eq!(report.truncated_bytes, 0);
            assert_eq!(report.padding_bytes, padded - good);
            assert_eq!(seg.log.metadata().unwrap().len(), good);
        }
        // Zeros that do not end on a block boundary are a batch cut short, not padding.
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
        append(&mut seg, 5, 1);
        let good = seg.size;
        seg.log.set_len(good + 100).unwrap();
        drop(seg);
        let (_, report) = Segment::open(dir.path(), 0, 1, true).unwrap();
        assert_eq!((report.truncated_bytes, report.padding_bytes), (100, 0));
    }

    #[test]
    fn reopen_cuts_a_stale_batch_whose_offsets_were_given_out_again() {
        for verify in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
            append(&mut seg, 5, 1);
            let good = seg.size;
            // Whole and with a good CRC, but numbered from 2, inside what the log already holds.
            let mut stale = batch(3, 100, 2);
            set_base_offset(&mut stale, 2);
            seg.log.write_all_at(&stale, good).unwrap();
            drop(seg);
            let (seg, report) = Segment::open(dir.path(), 0, 1, verify).unwrap();
            assert_eq!((seg.size, seg.next_offset), (good, 5));
            assert_eq!(report.truncated_bytes, stale.len() as u64);
        }
    }

    #[test]
    fn reopen_cuts_at_corrupt_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1).unwrap();
        append(&mut seg, 1, 1);
        let good = seg.size;
        append(&mut seg, 1, 2);
        seg.log.write_all_at(&[0xff], good + 70).unwrap();
        drop(seg);
        let (seg, _) = Segment::open(dir.path(), 0, 1, true).unwrap();
        assert_eq!(seg.size, good);
        assert_eq!(seg.next_offset, 1);
    }

    #[test]
    fn cut_keeps_whole_batches() {
        let mut buf = batch(2, 100, 0);
        let one = buf.len();
        let mut second = batch(2, 100, 0);
        set_base_offset(&mut second, 2);
        buf.extend(&second);
        assert!(matches!(cut_batches(&buf, 3, 10), Cut::Batches(r) if r == (one..2 * one)));
        assert!(matches!(cut_batches(&buf, 0, one + 1), Cut::Batches(r) if r == (0..one)));
        assert!(
            matches!(cut_batches(&buf[..one + 70], 3, 1000), Cut::NeedMore { at, more } if at == one && more == one - 70)
        );
        // Everything read precedes the offset, even a batch cut by the buffer's end: resume at
        // the next batch boundary, never in the middle of one.
        assert!(matches!(cut_batches(&buf[..one + 70], 99, 1000), Cut::Skip(n) if n == 2 * one));
        assert!(matches!(cut_batches(&buf, 99, 1000), Cut::Skip(n) if n == 2 * one));
        buf[one + 70] ^= 1;
        assert!(matches!(cut_batches(&buf, 0, 10_000), Cut::Batches(r) if r == (0..one)));
    }
}
