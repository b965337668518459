//! The io_uring backend. Callers push their operation onto the ring and submit it themselves
//! (one `io_uring_enter`, under a lock that keeps the submission queue single-writer); one reaper
//! thread only waits for completions and hands each result back through a oneshot channel. No
//! hop through another thread on the way in keeps acknowledgement latency close to a direct
//! syscall while many operations (every partition's fsync of a group commit) fly at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl Shared {
    fn entry(&self, id: u64, op: &Op) -> io_uring::squeue::Entry {
        let fd = types::Fd(op.file.as_raw_fd());
        match &op.kind {
            OpKind::Write { offset, data, done } => {
                let rest = &data[*done..];
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(offset + *done as u64)
                    .build()
            }
            OpKind::Read { offset, buf } => {
                opcode::Read::new(fd, buf.as_ptr() as *mut u8, buf.len() as u32)
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
    fn start(&self, op: Op) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) % STOP;
        let entry = self.entry(id, &op);
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(id, op);
        self.submit(&entry);
    }

    /// Queues an entry and submits it. The queue has room (operations are capped at its size);
    /// should the submit fail, the entry stays queued and the reaper submits it next round.
    fn submit(&self, entry: &io_uring::squeue::Entry) {
        let _one_writer = self.submit_lock.lock().expect("submit lock");
        loop {
            // SAFETY: `submit_lock` is held, so this is the only SubmissionQueue in existence.
            // Every buffer an entry points at outlives its operation: write data is a `Bytes` and
            // read buffers are `Vec`s owned by the `Op` in `in_flight` until it is reaped (a Vec's
            // heap buffer does not move when the Op moves), and the `Op` holds its file open.
            let pushed = unsafe { self.ring.submission_shared().push(entry) }.is_ok();
            if pushed {
                break;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed; retrying");
                std::thread::yield_now();
            }
        }
        if let Err(e) = self.ring.submit() {
            tracing::warn!(error = %e, "io_uring submit failed; the reaper will resubmit");
        }
    }

    /// Submits whatever a failed submit left queued.
    fn flush_queued(&self) {
        let _one_writer = self.submit_lock.lock().expect("submit lock");
        // SAFETY: `submit_lock` is held; the queue is only looked at.
        let queued = unsafe { !self.ring.submission_shared().is_empty() };
        if queued {
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring resubmit failed");
            }
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
        });
        let reaper = shared.clone();
        std::thread::Builder::new()
            .name("sluice-uring".into())
            .spawn(move || {
                if let Err(e) = reap(&reaper) {
                    tracing::error!(error = %e, "io_uring reaper failed");
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
        if stopping && shared.in_flight.lock().expect("in-flight lock").is_empty() {
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
            let Some(op) = shared.in_flight.lock().expect("in-flight lock").remove(&id) else {
                continue;
            };
            if let Some(rest) = complete(op, result) {
                // A short write: the rest goes round again (it keeps its slot).
                shared.start(rest);
            }
        }
        shared.flush_queued();
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
