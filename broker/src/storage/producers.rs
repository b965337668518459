//! Idempotent producers: which producer ids exist (handed out in durable blocks), and per
//! partition, the sequence numbers each producer last wrote, so a retried batch is recognised
//! and answered with its first offset instead of being appended twice. The per-partition state
//! survives any restart: a start loads its newest `snapshot` and replays the batch headers in
//! the log after it.

pub mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use super::batch::BatchHeader;

/// How many recent batches per producer are remembered (librdkafka and Java keep at most 5 in
/// flight per partition, so a retry is always among them).
const RECENT: usize = 5;
const ID_BLOCK: i64 = 1000;
/// A producer that appended nothing to a partition for this long is forgotten there when the
/// state is next snapshotted (Kafka's `producer.id.expiration.ms` default): every process start
/// of an idempotent producer (each agent reload) brings a new id, and the state must not grow
/// for ever. Measured by the broker's clock at append, not the producer's timestamps.
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;

/// What a batch from an idempotent producer may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Sequence {
    /// New data, in order (or not from an idempotent producer at all).
    Append,
    /// Already written: answer with this base offset, write nothing.
    Duplicate(i64),
    OutOfOrder {
        expected: i32,
        got: i32,
    },
    /// From an older epoch of the producer than the one already seen.
    Fenced {
        current: i16,
        got: i16,
    },
    /// A producer this partition has no state for, continuing mid-sequence.
    UnknownProducer,
}

#[derive(Debug)]
struct ProducerState {
    epoch: i16,
    /// (first sequence, last sequence, base offset) of the latest batches, newest last.
    recent: VecDeque<(i32, i32, i64)>,
    /// When the broker last appended (or, at a start, replayed) one of its batches, ms since
    /// the epoch.
    last_append_ms: i64,
}

/// One partition's producer sequence state.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerState>,
}

fn last_sequence(h: &BatchHeader) -> i32 {
    // Sequences wrap from i32::MAX to 0.
    ((h.base_sequence as i64 + h.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

fn idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && h.base_sequence >= 0
}

impl ProducerStates {
    pub fn check(&self, h: &BatchHeader) -> Sequence {
        if !idempotent(h) {
            return Sequence::Append;
        }
        let Some(state) = self.producers.get(&h.producer_id) else {
            return if h.base_sequence == 0 {
                Sequence::Append
            } else {
                Sequence::UnknownProducer
            };
        };
        if h.producer_epoch < state.epoch {
            return Sequence::Fenced {
                current: state.epoch,
                got: h.producer_epoch,
            };
        }
        if h.producer_epoch > state.epoch {
            return if h.base_sequence == 0 {
                Sequence::Append
            } else {
                Sequence::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                }
            };
        }
        let last = last_sequence(h);
        if let Some(&(_, _, offset)) = state
            .recent
            .iter()
            .find(|(first, end, _)| *first == h.base_sequence && *end == last)
        {
            return Sequence::Duplicate(offset);
        }
        let expected = state
            .recent
            .back()
            .map_or(0, |&(_, end, _)| if end == i32::MAX { 0 } else { end + 1 });
        if h.base_sequence == expected {
            Sequence::Append
        } else {
            Sequence::OutOfOrder {
                expected,
                got: h.base_sequence,
            }
        }
    }

    /// Remembers a batch that was appended (its header carries the assigned base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if !idempotent(h) {
            return;
        }
        let state = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerState {
                epoch: h.producer_epoch,
                recent: VecDeque::new(),
                last_append_ms: 0,
            });
        state.last_append_ms = crate::now_ms();
        if h.producer_epoch != state.epoch {
            state.epoch = h.producer_epoch;
            state.recent.clear();
        }
        state
            .recent
            .push_back((h.base_sequence, last_sequence(h), h.base_offset));
        if state.recent.len() > RECENT {
            state.recent.pop_front();
        }
    }

    pub fn max_producer_id(&self) -> i64 {
        self.producers.keys().copied().max().unwrap_or(-1)
    }

    /// Forgets the producers that appended nothing since `PRODUCER_EXPIRY_MS` before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        self.producers
            .retain(|_, state| now_ms - state.last_append_ms < PRODUCER_EXPIRY_MS);
    }
}

/// Hands out producer ids. Blocks of ids are reserved in a file (written and synced before any
/// id of the block is used), so an id is never handed out twice, across restarts too.
pub struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the reserved block)
    range: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// `floor` is one past the largest id seen in any log.
    pub fn open(path: PathBuf, floor: i64) -> std::io::Result<Self> {
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let start = reserved.max(floor);
        Ok(Self {
            path,
            range: Mutex::new((start, start)),
        })
    }

    pub fn next(&self) -> std::io::Result<i64> {
        let mut range = self.range.lock().expect("producer id lock");
        if range.0 >= range.1 {
            let end = range.0 + ID_BLOCK;
            super::write_atomically(&self.path, end.to_string().as_bytes())?;
            range.1 = end;
        }
        let id = range.0;
        range.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            size: 100,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn retries_are_duplicates_and_gaps_are_refused() {
        let mut s = ProducerStates::default();
        let first = header(7, 0, 0, 10, 100);
        assert_eq!(s.check(&first), Sequence::Append);
        s.record(&first);
        assert_eq!(s.check(&header(7, 0, 0, 10, -1)), Sequence::Duplicate(100));
        assert_eq!(
            s.check(&header(7, 0, 20, 5, -1)),
            Sequence::OutOfOrder {
                expected: 10,
                got: 20
            }
        );
        let second = header(7, 0, 10, 5, 110);
        assert_eq!(s.check(&second), Sequence::Append);
        s.record(&second);
        assert_eq!(s.check(&header(7, 0, 0, 10, -1)), Sequence::Duplicate(100));
        assert_eq!(s.check(&header(8, 0, 3, 1, -1)), Sequence::UnknownProducer);
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::default();
        s.record(&header(7, 1, 0, 10, 0));
        assert_eq!(
            s.check(&header(7, 0, 10, 1, -1)),
            Sequence::Fenced { current: 1, got: 0 }
        );
        assert_eq!(s.check(&header(7, 2, 0, 1, -1)), Sequence::Append);
        assert!(matches!(
            s.check(&header(7, 2, 5, 1, -1)),
            Sequence::OutOfOrder { .. }
        ));
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = ProducerStates::default();
        s.record(&header(7, 0, 0, 10, 0));
        s.expire(crate::now_ms() + PRODUCER_EXPIRY_MS - 60_000);
        assert_eq!(s.max_producer_id(), 7, "kept while within the expiry");
        s.expire(crate::now_ms() + PRODUCER_EXPIRY_MS);
        assert_eq!(s.max_producer_id(), -1);
        assert_eq!(s.check(&header(7, 0, 10, 1, -1)), Sequence::UnknownProducer);
    }

    #[test]
    fn non_idempotent_batches_pass() {
        let s = ProducerStates::default();
        assert_eq!(s.check(&header(-1, -1, -1, 3, 0)), Sequence::Append);
    }

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producer-ids");
        let ids = ProducerIds::open(path.clone(), 0).unwrap();
        let a = ids.next().unwrap();
        let b = ids.next().unwrap();
        assert_eq!((a, b), (0, 1));
        drop(ids);
        let ids = ProducerIds::open(path, 0).unwrap();
        assert!(ids.next().unwrap() >= ID_BLOCK);
    }
}
