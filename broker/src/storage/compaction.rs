//! Log compaction for topics with `cleanup.policy=compact`: in each closed segment, keep only
//! the records that are still the newest for their key anywhere in the partition (the active
//! segment included, so nothing newer is ever lost), and drop tombstones (null values) once they
//! are older than `delete.retention.ms`. A rewritten segment is written beside the old one,
//! fsynced, and renamed over it; readers holding the old file keep reading it undisturbed.
//!
//! Keys are held in memory while a partition is compacted (one entry per distinct key).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions};

use super::batch::BatchHeader;
use super::compress::decode_records;

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

/// Decodes every batch of a segment.
fn batches(
    segment: &SegmentFile,
) -> anyhow::Result<
    Vec<(
        BatchHeader,
        Vec<Record>,
        kafka_protocol::records::Compression,
    )>,
> {
    let bytes = Bytes::from(std::fs::read(&segment.path)?);
    let end = (segment.size as usize).min(bytes.len());
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < end {
        let header = BatchHeader::parse(&bytes[pos..end])?;
        let mut batch = bytes.slice(pos..pos + header.size.min(end - pos));
        let set = decode_records(&mut batch)?;
        out.push((header, set.records, set.compression));
        pos += header.size;
    }
    Ok(out)
}

/// Plans and writes the rewrites for `closed` segments, given every segment of the partition
/// (closed and active) to learn the newest offset of each key. Returns the rewrites to swap in.
pub fn compact(
    closed: &[SegmentFile],
    active: &SegmentFile,
    delete_retention_ms: i64,
    now_ms: i64,
) -> anyhow::Result<Vec<Rewrite>> {
    let mut newest: HashMap<Bytes, i64> = HashMap::new();
    let mut decoded = Vec::with_capacity(closed.len());
    for segment in closed {
        let batches = batches(segment)?;
        for (_, records, _) in &batches {
            for r in records {
                if let Some(key) = &r.key {
                    newest.insert(key.clone(), r.offset);
                }
            }
        }
        decoded.push(batches);
    }
    for (_, records, _) in batches(active)? {
        for r in records {
            if let Some(key) = r.key {
                newest.insert(key, r.offset);
            }
        }
    }
    let mut rewrites = Vec::new();
    for (segment, batches) in closed.iter().zip(decoded) {
        let mut removed = 0u64;
        let mut kept_batches = Vec::new();
        for (header, records, compression) in batches {
            let total = records.len();
            let kept: Vec<Record> = records
                .into_iter()
                .filter(|r| match &r.key {
                    None => true,
                    Some(key) => {
                        let latest = newest.get(key) == Some(&r.offset);
                        let expired_tombstone =
                            r.value.is_none() && r.timestamp < now_ms - delete_retention_ms;
                        latest && !expired_tombstone
                    }
                })
                .collect();
            removed += (total - kept.len()) as u64;
            if !kept.is_empty() {
                kept_batches.push((header, kept, compression));
            }
        }
        if removed == 0 {
            continue;
        }
        let cleaned = if kept_batches.is_empty() {
            None
        } else {
            Some(write_cleaned(&segment.path, kept_batches)?)
        };
        rewrites.push(Rewrite {
            base_offset: segment.base_offset,
            cleaned,
            removed,
        });
    }
    Ok(rewrites)
}

/// Re-encodes the surviving records batch by batch (same producer fields, compression and
/// offsets) into `<segment>.cleaned`, synced.
fn write_cleaned(
    log: &Path,
    batches: Vec<(
        BatchHeader,
        Vec<Record>,
        kafka_protocol::records::Compression,
    )>,
) -> anyhow::Result<PathBuf> {
    let mut out = BytesMut::new();
    for (header, mut records, compression) in batches {
        let first = records[0].offset;
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
        out.extend_from_slice(&batch);
    }
    let path = log.with_extension("cleaned");
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&out)?;
    file.sync_all()?;
    Ok(path)
}
