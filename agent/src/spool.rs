//! The disk spool for inputs that cannot replay (syslog, GELF, stdin): while the broker is slow or
//! away (librdkafka's queue is full, or its backlog passes `DIVERT_AT` records), their events are
//! appended to segment files under `<state_dir>/spool/` instead of memory, and everything after
//! them follows them there, so order is kept. A drain task sends the oldest segment and deletes
//! it when the broker acknowledged all its records; segments left by a killed agent
//! are sent after a restart. When the spool holds `max_bytes`, the policy decides: `block`
//! (inputs wait, and a UDP socket's buffer overflows in the kernel) or `drop` (counted).
//!
//! A record is `[u32 length][u32 crc32c][u16 key length][key][payload]`, written to its segment
//! in one write, so a kill -9 loses none the spool took. A torn or corrupt record ends its
//! segment (what follows it is lost and counted); a write that fails (the disk full) is cut off
//! and ends its segment, and the caller keeps the event another way.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::acks::{Progress, Settle};
use crate::event::now_ms;
use crate::metrics::AgentMetrics;
use crate::output::KafkaOutput;

/// Records waiting in librdkafka past which new events go to disk (as they do when its queue is
/// full).
const DIVERT_AT: u64 = 20_000;

/// Whether the broker is slow or away: new events go to disk.
pub fn pressed(output: &KafkaOutput) -> bool {
    output.stalled() || output.backlog() >= DIVERT_AT
}
/// A segment is sealed (and can be drained) at this size.
const SEGMENT_BYTES: u64 = 4 << 20;
const HEADER: usize = 10;

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    block: bool,
    metrics: AgentMetrics,
    state: Mutex<State>,
    /// Sealed segments whose sync has not ended yet, by number: a stop syncs them itself.
    unsynced: Arc<Mutex<Vec<Unsynced>>>,
}

/// A sealed segment's number and file.
type Unsynced = (u64, Arc<File>);

struct State {
    /// Sealed segments, oldest first: (number, bytes).
    sealed: VecDeque<(u64, u64)>,
    /// The segment being appended to: (number, file, bytes).
    open: Option<(u64, File, u64)>,
    next: u64,
    bytes: u64,
    /// When dropping for want of room was last said in the log.
    drops_said: Option<std::time::Instant>,
}

/// Drops for want of room are said at most this often (the counter tells them all).
const DROPS_SAID_EVERY: Duration = Duration::from_secs(60);

/// What became of an event handed to the spool.
pub enum Spooled {
    Kept,
    /// Not the spool's: send it straight away.
    NotNeeded,
    /// The spool is full and the policy is `drop`.
    Dropped,
}

impl Spool {
    /// Whether a previous run left segments in `dir`: they are sent even when no input that
    /// spools is configured any more.
    pub fn left_in(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().as_encoded_bytes().ends_with(b".spool"))
        })
    }

    /// Opens the spool in `dir`, taking in the segments a previous run left.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        block: bool,
        metrics: AgentMetrics,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("agent spool dir {}: cannot create: {e}", dir.display())
        })?;
        let mut sealed = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".spool"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            sealed.push((number, entry.metadata()?.len()));
        }
        sealed.sort();
        let bytes = sealed.iter().map(|(_, b)| b).sum();
        let next = sealed.last().map_or(0, |(n, _)| n + 1);
        metrics.spool_bytes.set(bytes as i64);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            block,
            metrics,
            state: Mutex::new(State {
                sealed: sealed.into(),
                open: None,
                next,
                bytes,
                drops_said: None,
            }),
            unsynced: Arc::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:020}.spool"))
    }

    /// Keeps the event when the spool is in use or the output is `pressed`; waits for room
    /// when full and the policy is `block` (an event larger than the whole spool is dropped:
    /// no room would ever come).
    pub async fn offer(
        &self,
        pressed: bool,
        key: &str,
        payload: &[u8],
    ) -> std::io::Result<Spooled> {
        let size = (HEADER + key.len() + payload.len()) as u64;
        loop {
            {
                let mut state = self.state();
                if state.bytes == 0 && !pressed {
                    return Ok(Spooled::NotNeeded);
                }
                if state.bytes + size <= self.max_bytes {
                    self.append(&mut state, key, payload)?;
                    return Ok(Spooled::Kept);
                }
                if !self.block || size > self.max_bytes {
                    self.metrics.spool_dropped.inc();
                    if state
                        .drops_said
                        .is_none_or(|said| said.elapsed() >= DROPS_SAID_EVERY)
                    {
                        state.drops_said = Some(std::time::Instant::now());
                        tracing::warn!(
                            max_bytes = self.max_bytes,
                            "agent: the spool is full: events are dropped ([agent.spool] \
                             when_full = \"drop\"; sluice_agent_spool_dropped_total counts them)"
                        );
                    }
                    return Ok(Spooled::Dropped);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn append(&self, state: &mut State, key: &str, payload: &[u8]) -> std::io::Result<()> {
        if state.open.is_none() {
            let number = state.next;
            state.next += 1;
            let file = File::create(self.path(number))?;
            state.open = Some((number, file, 0));
        }
        let (_, file, len) = state.open.as_mut().expect("opened");
        let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        let body_len = 2 + key.len() + payload.len();
        let mut record = Vec::with_capacity(8 + body_len);
        record.extend_from_slice(&(body_len as u32).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&(key.len() as u16).to_le_bytes());
        record.extend_from_slice(key);
        record.extend_from_slice(payload);
        let crc = crc32c::crc32c(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        // At its place, whatever a failed write before it left behind.
        if let Err(e) = file.write_all_at(&record, *len) {
            // Part of the record may be in the segment: it is cut off, and the next record
            // tries the same place (a full disk makes no file per event). Were the cut to
            // fail too, the segment ends there (the drain stops at the torn record).
            if file.set_len(*len).is_err() {
                self.seal(state);
            }
            return Err(e);
        }
        let size = record.len() as u64;
        *len += size;
        state.bytes += size;
        self.metrics.spool_bytes.set(state.bytes as i64);
        if *len >= SEGMENT_BYTES {
            self.seal(state);
        }
        Ok(())
    }

    /// Ends the open segment, which is drained next in its turn (synced or not: its records
    /// are in the page cache). It is synced on the runtime's blocking pool: an input must not
    /// hold a worker thread, nor the other inputs at the spool's lock, for a disk flush.
    fn seal(&self, state: &mut State) {
        let Some((number, file)) = self.end_segment(state) else {
            return;
        };
        let unsynced = self.unsynced.clone();
        let sync = move || sync_segment(&unsynced, number, &file);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(sync)),
            Err(_) => sync(),
        }
    }

    /// Ends the open segment: it is drained in its turn, and unsynced until it is synced.
    fn end_segment(&self, state: &mut State) -> Option<(u64, Arc<File>)> {
        let (number, file, len) = state.open.take()?;
        state.sealed.push_back((number, len));
        let file = Arc::new(file);
        lock(&self.unsynced).push((number, file.clone()));
        Some((number, file))
    }

    /// The oldest segment, sealed first if it is the one being written.
    fn oldest(&self) -> Option<(u64, u64)> {
        let mut state = self.state();
        if state.sealed.is_empty() {
            self.seal(&mut state);
        }
        state.sealed.front().copied()
    }

    /// Keeps a record at a stop, where nothing may wait for room: appended if it fits, else
    /// dropped and counted (false). The caller closes the spool after.
    pub fn keep(&self, key: &str, payload: &[u8]) -> std::io::Result<bool> {
        let size = (HEADER + key.len() + payload.len()) as u64;
        let mut state = self.state();
        if state.bytes + size > self.max_bytes {
            self.metrics.spool_dropped.inc();
            return Ok(false);
        }
        self.append(&mut state, key, payload)?;
        Ok(true)
    }

    /// Syncs the open segment and those whose sync has not ended, so a stop loses nothing the
    /// spool took, even to a power cut.
    /// The open segment's failed sync is the error; a sealed one's is said, as when it is sealed.
    pub fn close(&self) -> std::io::Result<()> {
        let open = self.end_segment(&mut self.state());
        let sealed: Vec<Unsynced> = lock(&self.unsynced)
            .iter()
            .filter(|(number, _)| open.as_ref().is_none_or(|(open, _)| open != number))
            .cloned()
            .collect();
        for (number, file) in sealed {
            sync_segment(&self.unsynced, number, &file);
        }
        let Some((number, file)) = open else {
            return Ok(());
        };
        let synced = file.sync_data();
        lock(&self.unsynced).retain(|(unsynced, _)| *unsynced != number);
        synced
    }

    /// Bytes waiting in the spool.
    pub fn bytes(&self) -> u64 {
        self.state().bytes
    }

    fn remove_oldest(&self, number: u64, bytes: u64) {
        let _ = std::fs::remove_file(self.path(number));
        let mut state = self.state();
        if state.sealed.front().map(|(n, _)| *n) == Some(number) {
            state.sealed.pop_front();
            state.bytes = state.bytes.saturating_sub(bytes);
            self.metrics.spool_bytes.set(state.bytes as i64);
        }
    }
}

/// Sends the spooled segments, oldest first, competing with the other inputs for room in
/// librdkafka's queue (so a file flood cannot hold syslog back for ever).
pub async fn drain(spool: Arc<Spool>, output: Arc<KafkaOutput>, topic: String) {
    loop {
        match spool.oldest() {
            Some((number, bytes)) => {
                match send_segment(&spool, &output, &topic, number).await {
                    Ok(()) => spool.remove_oldest(number, bytes),
                    Err(e) if is_not_found(&e) => {
                        // Removed by hand: its events are gone, and waiting for it would
                        // hold the rest of the spool back for ever.
                        tracing::warn!(
                            segment = number,
                            "agent: a spool segment was removed before it was sent"
                        );
                        spool.metrics.spool_dropped.inc();
                        spool.remove_oldest(number, bytes);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "agent: draining the spool");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Syncs a sealed segment; a failed sync is said, not made the record's failure (that would send
/// it a second time).
fn sync_segment(unsynced: &Mutex<Vec<Unsynced>>, number: u64, file: &File) {
    if let Err(e) = file.sync_data() {
        tracing::warn!(segment = number, error = %e, "agent: syncing a spool segment");
    }
    lock(unsynced).retain(|(synced, _)| *synced != number);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Sends every record of a segment and waits until the broker has them all.
async fn send_segment(
    spool: &Spool,
    output: &KafkaOutput,
    topic: &str,
    number: u64,
) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(spool.path(number)).await?;
    let (records, read) = records(&bytes);
    if read < bytes.len() {
        tracing::warn!(
            segment = number,
            lost_bytes = bytes.len() - read,
            "agent: a spool segment ends in a torn record"
        );
        spool.metrics.spool_dropped.inc();
    }
    let progress = Progress::new(0);
    let settle = Settle::segment(&progress, records.len());
    for (key, payload) in &records {
        output
            .send(topic, key, payload, now_ms(), Some(&settle))
            .await?;
    }
    while !records.is_empty() && progress.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A spooled record: (key, payload).
type Record<'a> = (&'a [u8], &'a [u8]);

/// The records of a segment, up to the first torn or corrupt one; and how many bytes they took.
fn records(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc || body.len() < 2 {
            break;
        }
        let key_len = u16::from_le_bytes([body[0], body[1]]) as usize;
        let Some(key) = body.get(2..2 + key_len) else {
            break;
        };
        records.push((key, &body[2 + key_len..]));
        at += 8 + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spools_in_order_and_reopens_what_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let registry = prometheus::Registry::new();
        let metrics = AgentMetrics::register(&registry).unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, false, metrics.clone()).unwrap();
        assert!(matches!(
            spool.offer(false, "k", b"direct").await.unwrap(),
            Spooled::NotNeeded
        ));
        assert!(matches!(
            spool.offer(true, "k", b"one").await.unwrap(),
            Spooled::Kept
        ));
        // Once something is spooled, everything after it is, whatever the backlog.
        assert!(matches!(
            spool.offer(false, "k", b"two").await.unwrap(),
            Spooled::Kept
        ));
        // On disk at once, not in a buffer a kill -9 would lose.
        let written = std::fs::read(spool.path(0)).unwrap();
        assert_eq!(records(&written).0.len(), 2);
        assert_eq!(spool.oldest().map(|(n, _)| n), Some(0));
        drop(spool);
        let reopened = Spool::open(dir.path(), 1 << 20, false, metrics.clone()).unwrap();
        assert_eq!(reopened.state().sealed.len(), 1);
        // What the drain reads back: the records in order, then nothing past a torn one.
        let mut bytes = std::fs::read(reopened.path(0)).unwrap();
        let whole = bytes.len();
        let expected: Vec<Record> = vec![(b"k", b"one"), (b"k", b"two")];
        assert_eq!(records(&bytes), (expected.clone(), whole));
        bytes.extend_from_within(..whole / 2 - 3); // a record cut short
        assert_eq!(records(&bytes), (expected, whole));
        bytes[HEADER + 1] ^= 0xff; // the first record's key length: its CRC no longer matches
        assert_eq!(records(&bytes), (Vec::new(), 0));
        let full = Spool::open(&dir.path().join("small"), 10, false, metrics.clone()).unwrap();
        assert!(matches!(
            full.offer(true, "k", b"too big").await.unwrap(),
            Spooled::Dropped
        ));
        assert_eq!(metrics.spool_dropped.get(), 1);
        // With `block` too: no room would ever come for it.
        let small = Spool::open(&dir.path().join("block"), 10, true, metrics.clone()).unwrap();
        let offered =
            tokio::time::timeout(Duration::from_secs(5), small.offer(true, "k", b"too big"));
        assert!(matches!(offered.await.unwrap().unwrap(), Spooled::Dropped));
        assert_eq!(metrics.spool_dropped.get(), 2);
    }

    /// A segment removed by hand before it was sent is counted as dropped and passed over,
    /// rather than holding the rest of the spool back for ever.
    #[tokio::test]
    async fn a_segment_removed_by_hand_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let shipper = crate::shipper::Shipper::testing();
        let metrics = shipper.metrics.clone();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20, false, metrics.clone()).unwrap());
        assert!(matches!(
            spool.offer(true, "k", b"one").await.unwrap(),
            Spooled::Kept
        ));
        spool.close().unwrap();
        std::fs::remove_file(spool.path(0)).unwrap();
        let drain = tokio::spawn(drain(spool.clone(), shipper.output.clone(), "logs".into()));
        for _ in 0..100 {
            if spool.bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain.abort();
        assert_eq!(spool.bytes(), 0);
        assert_eq!(metrics.spool_dropped.get(), 1);
    }

    /// A write that fails (here: a segment that is /dev/full) ends its segment; the records
    /// after it go to the next one and are all read back.
    #[tokio::test]
    async fn a_failed_write_ends_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = AgentMetrics::register(&prometheus::Registry::new()).unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, false, metrics).unwrap();
        std::os::unix::fs::symlink("/dev/full", spool.path(0)).unwrap();
        let big = vec![b'x'; 64 << 10];
        assert!(spool.offer(true, "k", &big).await.is_err());
        for payload in [&b"one"[..], b"two"] {
            assert!(matches!(
                spool.offer(true, "k", payload).await.unwrap(),
                Spooled::Kept
            ));
        }
        spool.close().unwrap();
        let sealed: Vec<u64> = spool.state().sealed.iter().map(|(n, _)| *n).collect();
        assert_eq!(sealed, [0, 1]);
        let expected: Vec<Record> = vec![(b"k", b"one"), (b"k", b"two")];
        assert_eq!(records(&std::fs::read(spool.path(1)).unwrap()).0, expected);
    }
}
