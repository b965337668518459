//! Records librdkafka gave up on that the cluster may yet take: held, bounded by their bytes,
//! until the output offers them again or a stop keeps them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::acks::Settle;

/// Records librdkafka gave back, waiting to be offered again (`resend_refused`) or, at a stop,
/// to be kept (`take_unsent`). Here rather than in the resend task, so that stopping the task
/// at any point loses none of them. Bounded by their bytes (`MAX_REFUSED_BYTES`): new records
/// wait at the door while it is full, as they do while a topic is refused
/// (`KafkaOutput::queue`).
#[derive(Default)]
pub struct Refusals {
    waiting: Mutex<VecDeque<Refused>>,
    /// The keys' and payloads' bytes of `waiting`.
    bytes: AtomicUsize,
    pub arrived: Notify,
}

/// Refused records held at most (their bytes, as librdkafka's queue holds at most 4 MiB): new
/// records wait at the door while they do. Each refused record frees room in librdkafka's queue,
/// so without this a cluster refusing every batch for good (a timestamp out of its bounds, say)
/// would have the file input read its whole backlog into memory.
const MAX_REFUSED_BYTES: usize = 4 << 20;

impl Refusals {
    pub fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Refused>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, refused: Refused) {
        self.push_front_or_back(refused, false);
        self.arrived.notify_one();
    }

    pub fn push_front(&self, refused: Refused) {
        self.push_front_or_back(refused, true);
    }

    fn push_front_or_back(&self, refused: Refused, front: bool) {
        self.bytes.fetch_add(refused.bytes(), Ordering::Relaxed);
        let mut waiting = self.waiting();
        match front {
            true => waiting.push_front(refused),
            false => waiting.push_back(refused),
        }
    }

    pub fn pop_front(&self) -> Option<Refused> {
        let refused = self.waiting().pop_front()?;
        self.bytes.fetch_sub(refused.bytes(), Ordering::Relaxed);
        Some(refused)
    }

    pub fn take_all(&self) -> VecDeque<Refused> {
        let mut waiting = self.waiting();
        self.bytes.store(0, Ordering::Relaxed);
        std::mem::take(&mut *waiting)
    }

    /// New records wait: the refused hold `MAX_REFUSED_BYTES`.
    pub fn full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= MAX_REFUSED_BYTES
    }
}

/// A record librdkafka gave up on that may yet be taken.
pub struct Refused {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub timestamp: i64,
    pub settle: Arc<Settle>,
}

impl Refused {
    fn bytes(&self) -> usize {
        self.key.len() + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refused records' bytes are kept as they come and go; past `MAX_REFUSED_BYTES` new
    /// records wait.
    #[test]
    fn refused_records_are_bounded_by_their_bytes() {
        let refusals = Refusals::default();
        let refused = |bytes: usize| Refused {
            topic: "logs".into(),
            key: b"k".to_vec(),
            payload: vec![0; bytes - 1],
            timestamp: 0,
            settle: Settle::untracked(),
        };
        refusals.push(refused(MAX_REFUSED_BYTES / 2));
        assert!(!refusals.full());
        refusals.push(refused(MAX_REFUSED_BYTES / 2));
        assert!(refusals.full());
        let first = refusals.pop_front().unwrap();
        assert!(!refusals.full());
        refusals.push_front(first);
        assert!(refusals.full());
        assert_eq!(refusals.take_all().len(), 2);
        assert!(!refusals.full());
        assert_eq!(refusals.bytes.load(Ordering::Relaxed), 0);
    }
}
