//! The io_uring backend. Callers push their operation onto the ring and submit it themselves
//! (one `io_uring_enter`, under a lock that keeps the submission queue single-writer); one reaper
//! thread only waits for completions and hands each result back through a oneshot channel. No
//! hop through another thread on the way in keeps acknowledgement latency close to a direct
//! syscall while many operations (every partition's fsync of a group commit) fly at once.
//!
//! Should the ring fail (a submit refused for good, the reaper ended), every operation in flight
//! and every later one fails rather than waiting for ever: the storage then fails like after an
//! fsync error, and says so.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;

const RING_ENTRIES: u32 = 256;
/// user_data of the no-op that tells the reaper its last handle is gone.
const STOP: u64 = u64::MAX;
/// `IORING_ENTER_GETEVENTS` from <linux/io_uring.h> (the crate keeps its copy private).
const ENTER_GETEVENTS: u32 = 1;

enum OpKind {
    Write {
        offset: u64,
        data: Bytes,
        done: usize,
    },
    Read {
        offset: u64,
        buf: Vec<u8>,
    },
    Sync,
}

struct Op {
    file: Arc<File>,
    kind: OpKind,
    reply: oneshot::Sender<io::Result<Vec<u8>>>,
    /// A slot in the ring, given back when the operation is reaped.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

struct Shared {
    ring: IoUring,
    /// Held while pushing onto the submission queue and submitting: the queue has one writer.
    submit_lock: Mutex<()>,
    /// Operations the kernel is working on; each keeps its buffer and file alive until reaped.
    in_flight: Mutex<HashMap<u64, Op>>,
    next_id: AtomicU64,
    /// At most RING_ENTRIES operations in flight: the queues can never overflow.
    slots: Arc<tokio::sync::Semaphore>,
    /// The ring failed: no operation is started any more (see `fail`).
    broken: AtomicBool,
}

impl Shared {
    fn entry(&self, id: u64, op: &mut Op) -> io_uring::squeue::Entry {
        let fd = types::Fd(op.file.as_raw_fd());
        match &mut op.kind {
            OpKind::Write { offset, data, done } => {
                let rest = &data[*done..];
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(*offset + *done as u64)
                    .build()
            }
            OpKind::Read { offset, buf } => {
                opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                    .offset(*offset)
                    .build()
            }
            OpKind::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(id)
    }

    /// Registers `op` and hands it to the kernel. Once its entry is queued the op stays
    /// registered until reaped, whatever happens: the kernel may be using its buffer.
    fn start(&self, mut op: Op) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) % STOP;
        let entry = self.entry(id, &mut op);
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock `fail` empties the map with: an op is either failed there
            // or refused here, never left waiting.
            if self.broken.load(Ordering::Acquire) {
                let _ = op.reply.send(Err(broken()));
                return;
            }
            in_flight.insert(id, op);
        }
        self.submit(&entry);
    }

    /// Queues an entry and submits everything queued. The queue has room (operations are
    /// capped at its size) unless submits are failing.
    fn submit(&self, entry: &io_uring::squeue::Entry) {
        let _one_writer = self
            .submit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            // SAFETY: `submit_lock` is held, so this is the only SubmissionQueue in existence.
            // Every buffer an entry points at outlives its operation: write data is a `Bytes` and
            // read buffers are `Vec`s owned by the `Op` in `in_flight` until it is reaped (a Vec's
            // heap buffer does not move when the Op moves), and the `Op` holds its file open; a
            // failed ring never frees them (`fail`).
            let pushed = unsafe { self.ring.submission_shared().push(entry) }.is_ok();
            if pushed || !self.submit_queued() {
                break;
            }
        }
        self.submit_queued();
    }

    /// Hands every queued entry to the kernel; false once the ring has failed. The kernel's
    /// passing refusals (EAGAIN: no memory for the request now; EBUSY: completions to reap
    /// first; EINTR) are waited out; any other error fails the ring, as nothing queued could
    /// ever complete. Called with `submit_lock` held.
    fn submit_queued(&self) -> bool {
        let mut pause = Duration::from_micros(50);
        loop {
            if self.broken.load(Ordering::Acquire) {
                return false;
            }
            match self.ring.submit() {
                Err(e)
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                    ) =>
                {
                    self.fail(&format!("submit: {e}"));
                    return false;
                }
                _ => {}
            }
            // SAFETY: `submit_lock` is held; the queue is only looked at.
            if unsafe { self.ring.submission_shared().is_empty() } {
                return true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// The ring cannot be trusted any more: every operation in flight fails now and every later
    /// one at once. Their buffers and files are leaked, never freed, as the kernel may still
    /// read or write them.
    fn fail(&self, why: &str) {
        if self.broken.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(why, "io_uring failed: every storage operation fails until the broker restarts (io_backend = \"plain\" avoids io_uring)");
        self.slots.close();
        let failed: Vec<Op> = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, op)| op)
            .collect();
        for op in failed {
            let _ = op.reply.send(Err(broken()));
            std::mem::forget((op.file, op.kind));
        }
    }
}

fn broken() -> io::Error {
    io::Error::other("io_uring failed (see the broker's log)")
}

/// Fails the ring when the reaper thread ends other than by being stopped (an error, a panic).
struct FailUnlessStopped<'a>(&'a Shared, bool);

impl Drop for FailUnlessStopped<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fail("the completion reaper ended");
        }
    }
}

/// Tells the reaper to finish once the last `Uring` handle is dropped.
struct Stopper(Arc<Shared>);

impl Drop for Stopper {
    fn drop(&mut self) {
        let stop = opcode::Nop::new().build().user_data(STOP);
        self.0.submit(&stop);
    }
}

/// Handle to the ring; cheap to clone.
#[derive(Clone)]
pub struct Uring {
    shared: Arc<Shared>,
    _stopper: Arc<Stopper>,
}

impl Uring {
    /// Creates the ring and proves it works with a no-op; an error means "use plain I/O".
    pub fn start() -> io::Result<Self> {
        let mut ring = IoUring::new(RING_ENTRIES)?;
        probe(&mut ring)?;
        let shared = Arc::new(Shared {
            ring,
            submit_lock: Mutex::new(()),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(RING_ENTRIES as usize)),
            broken: AtomicBool::new(false),
        });
        let reaper = shared.clone();
        std::thread::Builder::new()
            .name("sluice-uring".into())
            .spawn(move || {
                let mut guard = FailUnlessStopped(&reaper, false);
                match reap(&reaper) {
                    Ok(()) => guard.1 = true,
                    Err(e) => {
                        tracing::error!(error = %e, "io_uring: waiting for completions failed")
                    }
                }
            })?;
        Ok(Self {
            _stopper: Arc::new(Stopper(shared.clone())),
            shared,
        })
    }

    /// Submits an operation as soon as the ring has room; the receiver yields its result.
    async fn enqueue(
        &self,
        file: &Arc<File>,
        kind: OpKind,
    ) -> io::Result<oneshot::Receiver<io::Result<Vec<u8>>>> {
        let slot = self
            .shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("io_uring is closed"))?;
        let (reply, rx) = oneshot::channel();
        self.shared.start(Op {
            file: file.clone(),
            kind,
            reply,
            _slot: slot,
        });
        Ok(rx)
    }

    async fn submit(&self, file: &Arc<File>, kind: OpKind) -> io::Result<Vec<u8>> {
        let rx = self.enqueue(file, kind).await?;
        rx.await
            .map_err(|_| io::Error::other("io_uring dropped the operation"))?
    }

    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        self.submit(
            file,
            OpKind::Write {
                offset,
                data,
                done: 0,
            },
        )
        .await
        .map(drop)
    }

    pub async fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let buf = vec![0u8; len];
        let mut read = self.submit(file, OpKind::Read { offset, buf }).await?;
        // A short read before the end of the file (a signal, memory pressure) is resumed, so
        // it is not taken for a torn batch.
        while !read.is_empty() && read.len() < len {
            let at = offset + read.len() as u64;
            let buf = vec![0u8; len - read.len()];
            let more = self.submit(file, OpKind::Read { offset: at, buf }).await?;
            if more.is_empty() {
                break;
            }
            read.extend_from_slice(&more);
        }
        Ok(read)
    }

    /// fdatasyncs every file at once: all the operations are in the ring together.
    pub async fn sync_all(&self, files: &[Arc<File>]) -> io::Result<()> {
        let mut waits = Vec::with_capacity(files.len());
        for file in files {
            waits.push(self.enqueue(file, OpKind::Sync).await?);
        }
        for rx in waits {
            rx.await
                .map_err(|_| io::Error::other("io_uring dropped the operation"))??;
        }
        Ok(())
    }
}

fn probe(ring: &mut IoUring) -> io::Result<()> {
    let nop = opcode::Nop::new().build().user_data(1);
    // SAFETY: a Nop references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("ring full"))?;
    ring.submit_and_wait(1)?;
    match ring.completion().next() {
        Some(cqe) if cqe.result() >= 0 => Ok(()),
        Some(cqe) => Err(io::Error::from_raw_os_error(-cqe.result())),
        None => Err(io::Error::other("io_uring returned no completion")),
    }
}

/// Waits for completions and answers them, until stopped and nothing is in flight.
fn reap(shared: &Shared) -> io::Result<()> {
    let mut stopping = false;
    loop {
        let idle = shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if stopping && idle {
            return Ok(());
        }
        // SAFETY: only waits (to_submit = 0, GETEVENTS, no argument), so it cannot race the
        // submitters' use of the submission queue.
        let waited = unsafe {
            shared
                .ring
                .submitter()
                .enter::<libc::sigset_t>(0, 1, ENTER_GETEVENTS, None)
        };
        match waited {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        // SAFETY: this thread is the only reader of the completion queue.
        let completions: Vec<(u64, i32)> = unsafe { shared.ring.completion_shared() }
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (id, result) in completions {
            if id == STOP {
                stopping = true;
                continue;
            }
            let removed = shared
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            let Some(op) = removed else {
                continue; // Failed already, with the ring.
            };
            if let Some(rest) = complete(op, result) {
                // A short write: the rest goes round again (it keeps its slot).
                shared.start(rest);
            }
        }
    }
}

/// Finishes an operation, or hands it back when a write was short and must continue.
fn complete(mut op: Op, result: i32) -> Option<Op> {
    if result < 0 {
        let _ = op.reply.send(Err(io::Error::from_raw_os_error(-result)));
        return None;
    }
    let n = result as usize;
    match &mut op.kind {
        OpKind::Write { data, done, .. } => {
            *done += n;
            if *done < data.len() {
                if n == 0 {
                    let _ = op.reply.send(Err(io::ErrorKind::WriteZero.into()));
                    return None;
                }
                return Some(op);
            }
            let _ = op.reply.send(Ok(Vec::new()));
        }
        OpKind::Read { buf, .. } => {
            buf.truncate(n);
            let buf = std::mem::take(buf);
            let _ = op.reply.send(Ok(buf));
        }
        OpKind::Sync => {
            let _ = op.reply.send(Ok(Vec::new()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the ring fails, an operation the kernel still holds (a read of an empty pipe) and
    /// every later one get an error rather than waiting for ever.
    #[tokio::test]
    async fn a_failed_ring_fails_what_waits_and_what_comes() {
        let ring = Uring::start().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let pipe = Arc::new(File::from(std::os::fd::OwnedFd::from(reader)));
        let waiting = tokio::spawn({
            let ring = ring.clone();
            async move { ring.read_at(&pipe, 0, 16).await }
        });
        while ring.shared.in_flight.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        ring.shared.fail("a test");
        assert!(waiting.await.unwrap().is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let later = ring.write_at(&file, 0, Bytes::from_static(b"x")).await;
        assert!(later.is_err());
        drop(writer);
    }
}
