//! A partition's upkeep, run under the storage's maintenance lock: retention deletes whole
//! closed segments, and compaction's rewrites are swapped in.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::compaction::{Rewrite, SegmentFile};
use super::super::segment::Segment;
use super::super::sync_dir;
use super::Partition;

impl Partition {
    /// Deletes closed segments that retention no longer wants: those whose newest record is older
    /// than `retention_ms`, and the oldest while the partition is larger than `retention_bytes`.
    /// The active segment stays (`roll_if_expired` closes it first when it is all expired).
    /// Returns how many were deleted.
    pub fn enforce_retention(&self, retention_ms: i64, retention_bytes: i64) -> io::Result<usize> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as i64;
        let mut doomed = Vec::new();
        {
            let mut log = self.log();
            let mut total: u64 = log.segments.values().map(|s| s.size).sum();
            let closed: Vec<i64> = log.segments.keys().rev().skip(1).rev().copied().collect();
            for base in closed {
                let segment = &log.segments[&base];
                let expired = retention_ms >= 0 && segment.newest_ms() < now_ms - retention_ms;
                // As Kafka: delete only while what remains stays at least retention.bytes.
                let oversized =
                    retention_bytes >= 0 && total - segment.size >= retention_bytes as u64;
                if !(expired || oversized) {
                    break;
                }
                total -= segment.size;
                doomed.push(log.segments.remove(&base).expect("key from the map"));
            }
        }
        let deleted = doomed.len();
        for segment in doomed {
            segment.delete()?;
        }
        Ok(deleted)
    }

    /// The closed segments and the active one, as files to read, for compaction.
    pub fn segment_files(&self) -> (Vec<SegmentFile>, SegmentFile) {
        let log = self.log();
        let mut files: Vec<SegmentFile> = log
            .segments
            .values()
            .map(|s| SegmentFile {
                base_offset: s.base_offset,
                path: s.log_path().to_owned(),
                size: s.size,
            })
            .collect();
        let active = files.pop().expect("a partition has a segment");
        (files, active)
    }

    /// Swaps compacted segments in: the cleaned file is renamed over the segment's log and its
    /// index rebuilt; a segment with nothing left is deleted. A segment that is no longer there,
    /// or has become the active one, is left alone.
    pub fn apply_rewrites(&self, rewrites: Vec<Rewrite>) -> io::Result<u64> {
        let settings = *self.settings.lock().expect("settings lock");
        let mut removed = 0;
        for rewrite in rewrites {
            let old_path = {
                let log = self.log();
                let active = log.segments.keys().next_back().copied();
                match log.segments.get(&rewrite.base_offset) {
                    Some(old) if Some(rewrite.base_offset) != active => old.log_path().to_owned(),
                    _ => {
                        discard(&rewrite);
                        continue;
                    }
                }
            };
            // The files change without the partition's lock: only the caller's maintenance lock
            // touches closed segments, and readers keep the old segment's open file until the
            // swap. Held through the reopen's CRC scan, the lock would stall every fetch and
            // produce on the partition.
            match &rewrite.cleaned {
                Some(cleaned) => {
                    // The old index goes first (durably): a crash after the rename must not
                    // find an index that describes the old log.
                    let _ = std::fs::remove_file(old_path.with_extension("index"));
                    sync_dir(&self.dir)?;
                    std::fs::rename(cleaned, &old_path)?;
                    sync_dir(&self.dir)?;
                    match Segment::open(
                        &self.dir,
                        rewrite.base_offset,
                        settings.index_interval_bytes,
                        true,
                    ) {
                        Ok((segment, _)) => {
                            self.log().segments.insert(rewrite.base_offset, segment);
                        }
                        // Readers keep the old segment's open file; the next start opens the
                        // compacted one.
                        Err(e) => {
                            tracing::error!(dir = %self.dir.display(), error = %e, "reopening a compacted segment");
                            continue;
                        }
                    }
                }
                None => {
                    let old = self.log().segments.remove(&rewrite.base_offset);
                    if let Some(old) = old {
                        old.delete()?;
                        sync_dir(&self.dir)?;
                    }
                }
            }
            removed += rewrite.removed;
        }
        Ok(removed)
    }
}

fn discard(rewrite: &Rewrite) {
    if let Some(path) = &rewrite.cleaned {
        let _ = std::fs::remove_file(path);
    }
}
