//! Snapshots of a partition's producer state, so that a start need not read every batch header
//! of every segment to rebuild it (Kafka keeps `.snapshot` files for the same reason). One is
//! written when a segment rolls (the state of every batch before the new segment) and one at a
//! clean stop (of the whole log). A start removes the snapshots past the recovered log end (the
//! tail they covered was lost), loads the newest one left and replays only the batches from its
//! offset on: none after a clean stop, the active segment's after a crash. An unreadable snapshot
//! is passed over for an older one, and with none the log itself is read.
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
    last_append_ms: i64,
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
    /// partition's append lock, written outside it. Expired producers are forgotten first.
    pub fn snapshot(&mut self, offset: i64) -> Vec<u8> {
        self.expire(crate::now_ms());
        let producers = self
            .producers
            .iter()
            .map(|(&id, state)| Producer {
                id,
                epoch: state.epoch,
                recent: state.recent.iter().copied().collect(),
                last_append_ms: state.last_append_ms,
            })
            .collect();
        serde_json::to_vec(&Snapshot { offset, producers }).expect("a snapshot serializes")
    }

    /// The newest snapshot in `dir` that reads back (none may be past the log end, see
    /// `remove_past`): its offset and state.
    pub fn load(dir: &Path) -> Option<(i64, Self)> {
        let offsets = offsets(dir).ok()?;
        for offset in offsets.into_iter().rev() {
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
                            last_append_ms: p.last_append_ms,
                        },
                    )
                })
                .collect();
            return Some((offset, Self { producers }));
        }
        None
    }
}

/// Removes the snapshots past `end`, the recovered log end: the tail they covered was lost, and
/// once the log grew past them again they would describe batches it does not hold.
pub fn remove_past(dir: &Path, end: i64) -> io::Result<()> {
    for offset in offsets(dir)?.into_iter().filter(|&o| o > end) {
        tracing::warn!(dir = %dir.display(), offset, end, "producer snapshot past the log end: removed");
        std::fs::remove_file(path(dir, offset))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot past the recovered log end is removed rather than trusted once the log grows
    /// past it again; an unreadable one is passed over for the one before it.
    #[test]
    fn snapshots_past_the_end_go_and_unreadable_ones_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ProducerStates::default();
        for offset in [10, 20, 30] {
            write(dir.path(), offset, &state.snapshot(offset)).unwrap();
        }
        assert_eq!(
            offsets(dir.path()).unwrap(),
            [20, 30],
            "the newest two are kept"
        );
        remove_past(dir.path(), 25).unwrap();
        assert_eq!(offsets(dir.path()).unwrap(), [20]);
        write(dir.path(), 25, &state.snapshot(25)).unwrap();
        std::fs::write(path(dir.path(), 25), b"{\"offset\": 2").unwrap();
        assert_eq!(ProducerStates::load(dir.path()).map(|(o, _)| o), Some(20));
    }
}
