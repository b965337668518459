//! Log compaction for topics with `cleanup.policy=compact`: in each closed segment, keep only
//! the records that are still the newest for their key anywhere in the partition (the active
//! segment included, so nothing newer is ever lost), and drop tombstones (null values) once they
//! are older than `delete.retention.ms`. A rewritten segment is written beside the old one,
//! fsynced, and renamed over it; readers holding the old file keep reading it undisturbed.
//!
//! Keys are held in memory while a partition is compacted (one entry per distinct key); records
//! are read a batch at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

use super::batch::{BatchHeader, HEADER_LEN};
use super::compress::{decode_records, DecodedTooLarge};

/// A segment as compaction sees it: its base offset, file, and the bytes of it to read.
pub struct SegmentFile {
    pub base_offset: i64,
    pub path: PathBuf,
    pub size: u64,
}

/// A closed segment's compacted replacement: a cleaned file, or `None` when nothing survived.
pub struct Rewrite {
    pub base_offset: i64,
    pub cleaned: Option<PathBuf>,
    pub removed: u64,
}

/// A stored batch, decoded for compaction.
enum Decoded {
    Records(Vec<Record>, Compression),
    /// Its records decode to more than the broker's bound: kept whole, its keys unread (older
    /// records of those keys may stay too; nothing newer is lost).
    Whole(Bytes),
}

/// Reads a segment's batches in order, one at a time: a segment may be far larger than what
/// compaction should hold in memory.
fn each_batch(
    segment: &SegmentFile,
    mut f: impl FnMut(BatchHeader, Decoded) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(&segment.path)?);
    let mut pos = 0u64;
    let mut head = [0u8; HEADER_LEN];
    while pos + HEADER_LEN as u64 <= segment.size {
        file.read_exact(&mut head)?;
        let header = BatchHeader::parse(&head)?;
        if pos + header.size as u64 > segment.size {
            anyhow::bail!(
                "{}: a batch at {pos} runs past the segment's end",
                segment.path.display()
            );
        }
        let mut bytes = vec![0u8; header.size];
        bytes[..HEADER_LEN].copy_from_slice(&head);
        file.read_exact(&mut bytes[HEADER_LEN..])?;
        let bytes = Bytes::from(bytes);
        let decoded = match decode_records(&mut bytes.clone()) {
            Ok(set) => Decoded::Records(set.records, set.compression),
            Err(e) if e.chain().any(|cause| cause.is::<DecodedTooLarge>()) => Decoded::Whole(bytes),
            Err(e) => return Err(e),
        };
        f(header, decoded)?;
        pos += header.size as u64;
    }
    Ok(())
}

/// Plans and writes the rewrites for `closed` segments, given every segment of the partition
/// (closed and active) to learn the newest offset of each key. Returns the rewrites to swap in.
/// Segments are read a batch at a time: once for the keys, once per closed segment to count
/// what goes, and once more to write the segments that lose records.
pub fn compact(
    closed: &[SegmentFile],
    active: &SegmentFile,
    delete_retention_ms: i64,
    now_ms: i64,
) -> anyhow::Result<Vec<Rewrite>> {
    let mut newest: HashMap<Bytes, i64> = HashMap::new();
    // Where the first batch kept whole is: its keys are unknown, so no tombstone after it may
    // expire (a value of its key in the whole batch would come back).
    let mut first_whole = i64::MAX;
    for segment in closed.iter().chain([active]) {
        each_batch(segment, |header, decoded| {
            match decoded {
                Decoded::Records(records, _) => {
                    for r in records {
                        let Some(key) = r.key else { continue };
                        match newest.get_mut(&key) {
                            Some(offset) => *offset = r.offset,
                            // A copy: the decoded key shares its whole batch's buffer, which
                            // the map would keep alive.
                            None => {
                                newest.insert(Bytes::copy_from_slice(&key), r.offset);
                            }
                        }
                    }
                }
                Decoded::Whole(_) => first_whole = first_whole.min(header.base_offset),
            }
            Ok(())
        })?;
    }
    let keep = |r: &Record| match &r.key {
        None => true,
        Some(key) => {
            let latest = newest.get(key) == Some(&r.offset);
            let expired_tombstone = r.value.is_none()
                && r.timestamp < now_ms - delete_retention_ms
                && r.offset < first_whole;
            latest && !expired_tombstone
        }
    };
    let mut rewrites = Vec::new();
    let planned = closed.iter().enumerate().try_for_each(|(i, segment)| {
        let mut removed = 0u64;
        each_batch(segment, |_, decoded| {
            if let Decoded::Records(records, _) = decoded {
                removed += records.iter().filter(|r| !keep(r)).count() as u64;
            }
            Ok(())
        })?;
        if removed > 0 {
            rewrites.push(Rewrite {
                base_offset: segment.base_offset,
                // The first segment stays, empty if need be: its base offset is the log's
                // start, and a consumer reading from it must not be told its offset is gone.
                cleaned: write_cleaned(segment, &keep, i == 0)?,
                removed,
            });
        }
        anyhow::Ok(())
    });
    if let Err(e) = planned {
        // The cleaned files written so far are not swapped in: none may stay behind.
        for rewrite in &rewrites {
            if let Some(path) = &rewrite.cleaned {
                let _ = std::fs::remove_file(path);
            }
        }
        return Err(e);
    }
    Ok(rewrites)
}

/// Re-encodes the surviving records batch by batch (same producer fields, compression and
/// offsets) into `<segment>.cleaned`, synced; `None` (and no file) when nothing survives,
/// unless the segment is to be kept `even_empty`.
fn write_cleaned(
    segment: &SegmentFile,
    keep: &impl Fn(&Record) -> bool,
    even_empty: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let path = segment.path.with_extension("cleaned");
    let written = write_batches(segment, keep, &path);
    match written {
        Ok(any) if any || even_empty => Ok(Some(path)),
        _ => {
            let _ = std::fs::remove_file(&path);
            written.map(|_| None)
        }
    }
}

/// Writes the surviving batches to `path`, synced; whether any survived.
fn write_batches(
    segment: &SegmentFile,
    keep: &impl Fn(&Record) -> bool,
    path: &std::path::Path,
) -> anyhow::Result<bool> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut written = false;
    each_batch(segment, |header, decoded| {
        let (mut records, compression) = match decoded {
            Decoded::Whole(bytes) => {
                out.write_all(&bytes)?;
                written = true;
                return Ok(());
            }
            Decoded::Records(records, compression) => (records, compression),
        };
        records.retain(|r| keep(r));
        let Some(first) = records.first().map(|r| r.offset) else {
            return Ok(());
        };
        for r in &mut records {
            // The encoder keeps records in one batch while offset - sequence is constant.
            r.sequence = if header.base_sequence >= 0 {
                header.base_sequence + (r.offset - header.base_offset) as i32
            } else {
                (r.offset - first) as i32 - 1
            };
        }
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(&mut batch, &records, &options)?;
        // The batch still ends where it ended: consumers continue after its last offset, and an
        // idempotent producer's last sequence (base sequence + last offset delta) is unchanged.
        let delta = (header.last_offset() - first) as i32;
        batch[23..27].copy_from_slice(&delta.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        out.write_all(&batch)?;
        written = true;
        Ok(())
    })?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::testing::{one_record_compressed, tombstone};
    use crate::storage::compress::MAX_DECODED_BYTES;

    fn at(offset: i64, mut batch: Vec<u8>) -> Vec<u8> {
        batch[..8].copy_from_slice(&offset.to_be_bytes());
        batch
    }

    fn segment(path: PathBuf, base_offset: i64, bytes: &[u8]) -> SegmentFile {
        std::fs::write(&path, bytes).unwrap();
        SegmentFile {
            base_offset,
            path,
            size: bytes.len() as u64,
        }
    }

    /// A batch whose records decode past the broker's bound no longer stops the partition's
    /// compaction: it is kept as it is, and the records around it are compacted.
    #[test]
    fn a_batch_over_the_decode_bound_is_kept_whole_and_the_rest_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let huge = vec![0u8; MAX_DECODED_BYTES as usize + 1];
        let big = at(
            1,
            one_record_compressed(Some(b"big"), &huge, Compression::Gzip),
        );
        let log = [
            at(
                0,
                one_record_compressed(Some(b"k"), b"old", Compression::None),
            ),
            big.clone(),
            at(
                2,
                one_record_compressed(Some(b"k"), b"new", Compression::None),
            ),
        ]
        .concat();
        let closed = segment(dir.path().join("0.log"), 0, &log);
        let active = segment(dir.path().join("3.log"), 3, b"");
        let rewrites = compact(&[closed], &active, 0, 0).unwrap();
        assert_eq!(rewrites.len(), 1);
        assert_eq!(rewrites[0].removed, 1);
        let cleaned = std::fs::read(rewrites[0].cleaned.as_ref().unwrap()).unwrap();
        assert_eq!(&cleaned[..big.len()], &big[..], "kept byte for byte");
        let rest = BatchHeader::parse(&cleaned[big.len()..]).unwrap();
        assert_eq!(rest.base_offset, 2);
        assert_eq!(cleaned.len(), big.len() + rest.size);
    }

    /// A whole batch's keys are unknown, so a tombstone after it must stay: expiring it would
    /// bring back the value of its key that the whole batch may hold. One before it may go.
    #[test]
    fn a_tombstone_after_a_batch_kept_whole_does_not_expire() {
        let dir = tempfile::tempdir().unwrap();
        let huge = vec![0u8; MAX_DECODED_BYTES as usize + 1];
        let log = [
            at(0, tombstone(b"early")),
            at(
                1,
                one_record_compressed(Some(b"late"), &huge, Compression::Gzip),
            ),
            at(2, tombstone(b"late")),
        ]
        .concat();
        let closed = segment(dir.path().join("0.log"), 0, &log);
        let active = segment(dir.path().join("3.log"), 3, b"");
        let now = 1_700_000_000_000 + 10_000;
        let rewrites = compact(&[closed], &active, 1_000, now).unwrap();
        assert_eq!(rewrites.len(), 1);
        assert_eq!(
            rewrites[0].removed, 1,
            "only the tombstone before it expired"
        );
        let cleaned = std::fs::read(rewrites[0].cleaned.as_ref().unwrap()).unwrap();
        let kept = BatchHeader::parse(&cleaned).unwrap();
        assert_eq!(kept.base_offset, 1, "the whole batch first");
        let after = BatchHeader::parse(&cleaned[kept.size..]).unwrap();
        assert_eq!(after.base_offset, 2, "then the tombstone after it");
        assert_eq!(cleaned.len(), kept.size + after.size);
    }
}

#[cfg(test)]
mod first_segment {
    use super::*;
    use crate::storage::batch::testing::one_record;

    /// A first segment whose records are all superseded stays, empty: its base offset is the
    /// log's start, and a consumer reading from there must not be told its offset is gone.
    /// A later one that empties goes.
    #[test]
    fn the_first_segment_stays_even_empty() {
        let dir = tempfile::tempdir().unwrap();
        let at = |offset: i64, value: &[u8]| {
            let mut batch = one_record(Some(b"k"), value);
            batch[..8].copy_from_slice(&offset.to_be_bytes());
            batch
        };
        let segment = |base: i64, bytes: Vec<u8>| {
            let path = dir.path().join(format!("{base}.log"));
            std::fs::write(&path, &bytes).unwrap();
            SegmentFile {
                base_offset: base,
                path,
                size: bytes.len() as u64,
            }
        };
        let closed = [segment(0, at(0, b"a")), segment(1, at(1, b"b"))];
        let active = segment(2, at(2, b"c"));
        let rewrites = compact(&closed, &active, 0, 0).unwrap();
        assert_eq!(rewrites.len(), 2);
        let first = rewrites[0]
            .cleaned
            .as_ref()
            .expect("the first segment stays");
        assert_eq!(std::fs::metadata(first).unwrap().len(), 0);
        assert!(rewrites[1].cleaned.is_none());
    }
}
