//! Which records of a replayable source the broker has acknowledged, so its checkpoint moves only
//! past what is safe: a batch's byte range is pending from the moment it is queued until the
//! delivery reports say the broker has every record of it (`Settle` counts them down), and the
//! checkpoint is the start of the oldest pending range (or the end of everything read). Delivery
//! reports may arrive out of order (a file's lines can reach two partitions around a rotation); a
//! batch with a failed record stays pending, so it is read again after a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Progress {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Queued and not yet acknowledged: start offset -> end offset.
    pending: BTreeMap<u64, u64>,
    /// Everything before this has been read (shipped, or skipped as nothing to ship).
    read_to: u64,
    /// Where a record still being assembled (a multi-line event) starts.
    held: Option<u64>,
}

impl Progress {
    pub fn new(start: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                pending: BTreeMap::new(),
                read_to: start,
                held: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record `[start, end)` is queued.
    pub fn queued(&self, start: u64, end: u64) {
        let mut state = self.state();
        state.pending.insert(start, end);
        state.read_to = state.read_to.max(end);
    }

    /// Bytes up to `end` were read and need no record (blank lines, the cut-off rest of a line).
    pub fn skipped(&self, end: u64) {
        let mut state = self.state();
        state.read_to = state.read_to.max(end);
    }

    /// A record being assembled starts at `start` (`None`: none is).
    pub fn hold(&self, start: Option<u64>) {
        self.state().held = start;
    }

    /// The broker has the record that starts at `start`.
    pub fn acknowledged(&self, start: u64) {
        self.state().pending.remove(&start);
    }

    /// Where a restart must read from: nothing before it is unacknowledged.
    pub fn checkpoint(&self) -> u64 {
        let state = self.state();
        let oldest = state.pending.keys().next().copied();
        [oldest, state.held]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(state.read_to)
    }

    /// Where reading got to: records up to here are queued or skipped.
    pub fn read_to(&self) -> u64 {
        self.state().read_to
    }

    /// Where reading picks up again in a file set aside: the start of a record that was being
    /// assembled (dropped with its reader), or where reading got to.
    pub fn resume_from(&self) -> u64 {
        let state = self.state();
        state
            .held
            .map_or(state.read_to, |held| held.min(state.read_to))
    }

    /// Records queued and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }
}

/// Records queued together (a batch of a file's lines, a spool segment) whose range, starting at
/// `start`, is pending in `progress` until every one of them is acknowledged. Each record's
/// delivery report holds a reference to it (no allocation per record).
pub struct Settle {
    /// `None`: records of sources that cannot replay, which nothing waits for.
    progress: Option<Arc<Progress>>,
    start: u64,
    remaining: AtomicUsize,
    /// Whether the records can be read again (a file's lines): a batch with a failed record
    /// then stays pending. A spool segment's cannot, so a record the broker refused for good is
    /// counted and let go rather than holding the drain for ever.
    replays: bool,
}

impl Settle {
    /// Marks `[start, end)` pending for `records` records.
    pub fn queued(progress: &Arc<Progress>, start: u64, end: u64, records: usize) -> Arc<Self> {
        progress.queued(start, end);
        Arc::new(Self {
            progress: Some(progress.clone()),
            start,
            remaining: AtomicUsize::new(records),
            replays: true,
        })
    }

    /// The `records` records of a spool segment, pending in `progress`.
    pub fn segment(progress: &Arc<Progress>, records: usize) -> Arc<Self> {
        progress.queued(0, 1);
        Arc::new(Self {
            progress: Some(progress.clone()),
            start: 0,
            remaining: AtomicUsize::new(records),
            replays: false,
        })
    }

    /// The settle of records nothing waits for (syslog, GELF, stdin, metric samples).
    pub fn untracked() -> Arc<Self> {
        Arc::new(Self {
            progress: None,
            start: 0,
            remaining: AtomicUsize::new(0),
            replays: false,
        })
    }

    /// Whether nothing waits for these records (`untracked`): once sent, nobody sends them
    /// again.
    pub fn is_untracked(&self) -> bool {
        self.progress.is_none()
    }

    /// One record failed for good (counted by the caller): done with, unless it can be read
    /// again.
    pub fn one_failed(&self) {
        if !self.replays {
            self.one_done();
        }
    }

    /// One record is done with (acknowledged, or refused for good and counted).
    pub fn one_done(&self) {
        if let Some(progress) = &self.progress {
            if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                progress.acknowledged(self.start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_waits_for_the_oldest_pending_record() {
        let progress = Progress::new(0);
        progress.queued(0, 10);
        progress.queued(10, 25);
        progress.skipped(26);
        progress.queued(26, 40);
        assert_eq!(progress.checkpoint(), 0);
        progress.acknowledged(10);
        progress.acknowledged(26);
        assert_eq!(
            progress.checkpoint(),
            0,
            "the first record is not acknowledged"
        );
        progress.acknowledged(0);
        assert_eq!(progress.checkpoint(), 40);
        assert_eq!(progress.pending(), 0);
        progress.hold(Some(40));
        progress.skipped(50);
        assert_eq!(progress.checkpoint(), 40, "a held event is not passed");
        progress.hold(None);
        let batch = Settle::queued(&progress, 50, 90, 2);
        batch.one_done();
        assert_eq!(
            progress.checkpoint(),
            50,
            "half a batch is not acknowledged"
        );
        batch.one_done();
        assert_eq!(progress.checkpoint(), 90);
    }

    #[test]
    fn a_failed_record_holds_a_file_batch_but_not_a_spool_segment() {
        let file = Progress::new(0);
        let batch = Settle::queued(&file, 0, 10, 2);
        batch.one_done();
        batch.one_failed();
        assert_eq!(file.checkpoint(), 0, "read again after a restart");
        let spool = Progress::new(0);
        let segment = Settle::segment(&spool, 2);
        segment.one_done();
        segment.one_failed();
        assert_eq!(spool.pending(), 0, "the drain goes on");
    }
}
