//! Records librdkafka gave up on that the cluster may yet take: held, bounded by their bytes,
//! until the output offers them again or a stop keeps them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::acks::Settle;

/// Records librdkafka gave back, waiting to be offered again (`resend_refused`) or, at a stop,
/// to be kept (`take_unsent`). Here rather than in the resend task, so that stopping the task
/// at any point loses none of them. Bounded by their bytes per topic (`MAX_REFUSED_BYTES`): new
/// records of a topic wait at the door while its refused ones fill it, as they do while a topic
/// is refused (`KafkaOutput::queue`). Per topic, so that a metrics topic a cluster lacks never
/// holds up the logs.
#[derive(Default)]
pub struct Refusals {
    waiting: Mutex<Waiting>,
    /// The keys' and payloads' bytes of every topic's waiting records (changed under the lock):
    /// while this is under the bound, no topic's needs looking at (a record sent looks at it).
    bytes: AtomicUsize,
    pub arrived: Notify,
}

#[derive(Default)]
struct Waiting {
    records: VecDeque<Refused>,
    /// Bytes of `records`, by topic.
    by_topic: HashMap<String, usize>,
}

impl Waiting {
    fn add(&mut self, refused: &Refused) {
        *self.by_topic.entry(refused.topic.clone()).or_default() += refused.bytes();
    }

    fn remove(&mut self, refused: &Refused) {
        if let Some(bytes) = self.by_topic.get_mut(&refused.topic) {
            *bytes -= refused.bytes();
            if *bytes == 0 {
                self.by_topic.remove(&refused.topic);
            }
        }
    }
}

/// Refused records held at most per topic (their bytes, as librdkafka's queue holds at most 4
/// MiB): new records of the topic wait at the door while they do. Each refused record frees
/// room in librdkafka's queue, so without this a cluster refusing every batch for good (a
/// timestamp out of its bounds, say) would have the file input read its whole backlog into
/// memory.
const MAX_REFUSED_BYTES: usize = 4 << 20;

impl Refusals {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.waiting().records.len()
    }

    pub fn push(&self, refused: Refused) {
        self.put(None, refused);
        self.arrived.notify_one();
    }

    /// Adds `refused` at `at`, or at the back.
    fn put(&self, at: Option<usize>, refused: Refused) {
        let mut waiting = self.waiting();
        self.bytes.fetch_add(refused.bytes(), Ordering::Relaxed);
        waiting.add(&refused);
        let len = waiting.records.len();
        match at {
            Some(at) => waiting.records.insert(at.min(len), refused),
            None => waiting.records.push_back(refused),
        }
    }

    /// The first record whose topic is not in `skip`, and where it was.
    pub fn take_first_but(&self, skip: &HashSet<String>) -> Option<(usize, Refused)> {
        let mut waiting = self.waiting();
        let at = waiting
            .records
            .iter()
            .position(|refused| !skip.contains(&refused.topic))?;
        let refused = waiting.records.remove(at)?;
        waiting.remove(&refused);
        self.bytes.fetch_sub(refused.bytes(), Ordering::Relaxed);
        Some((at, refused))
    }

    /// Puts back a record `take_first_but` gave, where it was.
    pub fn put_back(&self, at: usize, refused: Refused) {
        self.put(Some(at), refused);
    }

    pub fn take_all(&self) -> VecDeque<Refused> {
        let mut waiting = self.waiting();
        self.bytes.store(0, Ordering::Relaxed);
        waiting.by_topic.clear();
        std::mem::take(&mut waiting.records)
    }

    /// New records of `topic` wait: its refused ones hold `MAX_REFUSED_BYTES`.
    pub fn full(&self, topic: &str) -> bool {
        self.bytes.load(Ordering::Relaxed) >= MAX_REFUSED_BYTES
            && self
                .waiting()
                .by_topic
                .get(topic)
                .is_some_and(|&bytes| bytes >= MAX_REFUSED_BYTES)
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

    /// The refused records' bytes are kept per topic as they come and go; past
    /// `MAX_REFUSED_BYTES` new records of that topic wait, and only of that topic.
    #[test]
    fn refused_records_are_bounded_by_their_bytes_per_topic() {
        let refusals = Refusals::default();
        let refused = |topic: &str, bytes: usize| Refused {
            topic: topic.into(),
            key: b"k".to_vec(),
            payload: vec![0; bytes - 1],
            timestamp: 0,
            settle: Settle::untracked(),
        };
        refusals.push(refused("metrics", MAX_REFUSED_BYTES / 2));
        refusals.push(refused("logs", MAX_REFUSED_BYTES / 2));
        assert!(!refusals.full("metrics") && !refusals.full("logs"));
        refusals.push(refused("metrics", MAX_REFUSED_BYTES / 2));
        assert!(refusals.full("metrics"));
        assert!(!refusals.full("logs"), "the logs wait for no other topic");
        let none = HashSet::new();
        let (at, first) = refusals.take_first_but(&none).unwrap();
        assert_eq!((at, first.topic.as_str()), (0, "metrics"));
        assert!(!refusals.full("metrics"));
        refusals.put_back(at, first);
        assert!(refusals.full("metrics"));
        // A topic passed over keeps its place; the others are taken past it.
        let metrics = HashSet::from(["metrics".to_owned()]);
        let (at, logs) = refusals.take_first_but(&metrics).unwrap();
        assert_eq!((at, logs.topic.as_str()), (1, "logs"));
        refusals.put_back(at, logs);
        let topics: Vec<String> = refusals.take_all().into_iter().map(|r| r.topic).collect();
        assert_eq!(topics, ["metrics", "logs", "metrics"]);
        refusals.push(refused("metrics", 10));
        refusals.push(refused("metrics", 10));
        refusals.push(refused("logs", 10));
        assert_eq!(refusals.len(), 3);
        assert_eq!(refusals.take_all().len(), 3);
        assert!(!refusals.full("metrics"));
        assert_eq!(refusals.bytes.load(Ordering::Relaxed), 0);
    }
}
