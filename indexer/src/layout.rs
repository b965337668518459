//! Where indexes live on disk, shared by the writers and the searchers.
//!
//! `<data_dir>/indexer/<topic>/<partition>/<bucket start ms>/` is one Tantivy index: a partition's
//! documents are split into time buckets (by the records' Kafka timestamps) so that retention
//! deletes whole directories. The newest bucket's commit payload holds the partition's next
//! offset; `.owner.lock` in the partition directory marks the process that writes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::Index;

/// The directory holding every partition's indexes of `topic`.
pub fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join("indexer").join(topic)
}

pub fn partition_dir(topic_dir: &Path, partition: i32) -> PathBuf {
    topic_dir.join(partition.to_string())
}

pub fn bucket_dir(partition_dir: &Path, start_ms: i64) -> PathBuf {
    partition_dir.join(start_ms.to_string())
}

/// The partition directories under `topic_dir`, by partition number.
pub fn partitions(topic_dir: &Path) -> Vec<(i32, PathBuf)> {
    numbered_dirs(topic_dir)
        .into_iter()
        .filter_map(|(n, path)| Some((i32::try_from(n).ok()?, path)))
        .collect()
}

/// Deletes a bucket's directory: renamed first (atomically) out of the listing, so a crash
/// halfway through the deletion leaves nothing that looks like an index with files missing.
pub fn delete_bucket(dir: &Path) -> std::io::Result<()> {
    let doomed = dir.with_extension(DELETING);
    std::fs::rename(dir, &doomed)?;
    std::fs::remove_dir_all(&doomed)
}

/// Removes what a deletion cut short left in a partition's directory.
pub fn remove_half_deleted(partition_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(partition_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == DELETING) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

const DELETING: &str = "deleting";

/// A partition's bucket directories that hold a committed index, oldest first.
pub fn buckets(partition_dir: &Path) -> Vec<(i64, PathBuf)> {
    numbered_dirs(partition_dir)
        .into_iter()
        .filter(|(_, path)| path.join("meta.json").exists())
        .collect()
}

fn numbered_dirs(dir: &Path) -> Vec<(i64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(i64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// What each commit stores beside its documents.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommitPayload {
    /// The offset of the first record this index has not taken yet.
    pub next_offset: i64,
    /// How many times the log restarted below the partition's index (`PartitionIndex::add`):
    /// a later generation's offsets supersede an earlier one's, smaller though they are.
    #[serde(default)]
    pub generation: u64,
    /// The newest record time (Kafka's, no later than the clock) the bucket holds: retention
    /// deletes the bucket once it is past. Missing in buckets written before it was kept, and in
    /// buckets that hold nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_ms: Option<i64>,
}

/// What the index's last commit recorded, if it has one.
pub fn committed_payload(index: &Index) -> tantivy::Result<Option<CommitPayload>> {
    let metas = index.load_metas()?;
    Ok(metas
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str::<CommitPayload>(p).ok()))
}

/// When the index in `dir` last committed (its `meta.json` written), in ms since the epoch; now,
/// when that cannot be read.
pub fn last_commit_ms(dir: &Path) -> i64 {
    std::fs::metadata(dir.join("meta.json"))
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now())
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Bytes under `dir`, for the index-size gauge.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
