//! Snapshots of a partition's producer state, so that a start need not read every batch header
//! of every segment to rebuild it (Kafka keeps `.snapshot` files for the same reason). One is
//! written when a segment rolls (the state of every batch before the new segment) and one at a
//! clean stop (of the whole log). A start loads the newest snapshot at or below the recovered
//! log end and replays only the batches from its offset on: none after a clean stop, the active
//! segment's after a crash. A snapshot that is unreadable, or past the log end (the tail it
//! covered was lost), is passed over for an older one, and with none the log itself is read.
//!
//! A snapshot also keeps producers whose batches retention or compaction has since removed, so
//! they can carry on with their sequences across a restart, as they can while the broker runs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ProducerState, ProducerStates};

const SUFFIX: &str = ".producers";
/// Snapshots kept per partition: the newest, and the one before should the newest be unusable.
const KEPT: usize = 2;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// The state is that of every batch below this offset.
    offset: i64,
    producers: Vec<Producer>,
}

#[derive(Serialize, Deserialize)]
struct Producer {
    id: i64,
    epoch: i16,
    /// (first sequence, last sequence, base offset), newest last.
    recent: Vec<(i32, i32, i64)>,
}

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SUFFIX}"))
}

/// The offsets of the snapshots in `dir`, oldest first.
fn offsets(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets: Vec<i64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(SUFFIX)?.parse().ok())
        .collect();
    offsets.sort_unstable();
    Ok(offsets)
}

impl ProducerStates {
    /// The state as of `offset` (every batch below it), encoded for `write`: taken under the
    /// partition's append lock, written outside it.
    pub fn snapshot(&self, offset: i64) -> Vec<u8> {
        let producers = self
            .producers
            .iter()
            .map(|(&id, state)| Producer {
                id,
                epoch: state.epoch,
                recent: state.recent.iter().copied().collect(),
            })
            .collect();
        serde_json::to_vec(&Snapshot { offset, producers }).expect("a snapshot serializes")
    }

    /// The newest snapshot in `dir` at or below `end` that reads back: its offset and state.
    pub fn load(dir: &Path, end: i64) -> Option<(i64, Self)> {
        let offsets = offsets(dir).ok()?;
        for offset in offsets.into_iter().rev().filter(|&o| o <= end) {
            let read = std::fs::read(path(dir, offset))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Snapshot>(&bytes).ok())
                .filter(|snapshot| snapshot.offset == offset);
            let Some(snapshot) = read else {
                tracing::warn!(dir = %dir.display(), offset, "unreadable producer snapshot: passed over");
                continue;
            };
            let producers: HashMap<i64, ProducerState> = snapshot
                .producers
                .into_iter()
                .map(|p| {
                    let recent: VecDeque<(i32, i32, i64)> = p.recent.into_iter().collect();
                    (
                        p.id,
                        ProducerState {
                            epoch: p.epoch,
                            recent,
                        },
                    )
                })
                .collect();
            return Some((offset, Self { producers }));
        }
        None
    }
}

/// Writes a snapshot taken with `ProducerStates::snapshot` durably, then removes all but the
/// newest `KEPT`.
pub fn write(dir: &Path, offset: i64, snapshot: &[u8]) -> io::Result<()> {
    crate::storage::write_atomically(&path(dir, offset), snapshot)?;
    let all = offsets(dir)?;
    for old in &all[..all.len().saturating_sub(KEPT)] {
        std::fs::remove_file(path(dir, *old))?;
    }
    Ok(())
}
