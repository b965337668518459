//! The io_uring backend: one thread owns a ring; callers hand it operations over a channel and
//! wake it through an eventfd that the ring itself keeps a read posted on, so the thread sleeps in
//! one place (the ring) whether it waits for new work or for the disk.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;

const RING_ENTRIES: u32 = 256;
const WAKE: u64 = u64::MAX;

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
}

struct Shared {
    /// Taken on drop, so the thread sees the channel close before it is woken for the last time.
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    wake_fd: OwnedFd,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own; the result needs no check
        // because the counter only has to become non-zero.
        unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.queue.lock().map(|mut q| q.take()));
        self.wake();
    }
}

/// Handle to the ring thread; cheap to clone. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Uring {
    shared: Arc<Shared>,
}

impl Uring {
    /// Creates the ring and proves it works with a no-op; an error means "use plain I/O".
    pub fn start() -> io::Result<Self> {
        let mut ring = IoUring::new(RING_ENTRIES)?;
        probe(&mut ring)?;
        // SAFETY: eventfd has no memory-safety preconditions; we check the result for -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh eventfd that nothing else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The thread holds its own descriptor: its posted read must outlive the last handle.
        let thread_fd = wake_fd.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Some(tx)),
            wake_fd,
        });
        std::thread::Builder::new()
            .name("sluice-uring".into())
            .spawn(move || {
                if let Err(e) = run(ring, rx, thread_fd.as_raw_fd()) {
                    tracing::error!(error = %e, "io_uring thread failed");
                }
            })?;
        Ok(Self { shared })
    }

    /// Hands an operation to the ring thread at once; the receiver yields its result.
    fn enqueue(
        &self,
        file: &Arc<File>,
        kind: OpKind,
    ) -> io::Result<oneshot::Receiver<io::Result<Vec<u8>>>> {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            file: file.clone(),
            kind,
            reply,
        };
        let stopped = || io::Error::other("io_uring thread has stopped");
        self.shared
            .queue
            .lock()
            .map_err(|_| stopped())?
            .as_ref()
            .ok_or_else(stopped)?
            .send(op)
            .map_err(|_| stopped())?;
        self.shared.wake();
        Ok(rx)
    }

    async fn submit(&self, file: &Arc<File>, kind: OpKind) -> io::Result<Vec<u8>> {
        let rx = self.enqueue(file, kind)?;
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped the operation"))?
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
        self.submit(file, OpKind::Read { offset, buf }).await
    }

    /// fdatasyncs every file at once: all the operations share one trip through the ring.
    pub async fn sync_all(&self, files: &[Arc<File>]) -> io::Result<()> {
        let waits = files
            .iter()
            .map(|f| self.enqueue(f, OpKind::Sync))
            .collect::<io::Result<Vec<_>>>()?;
        for rx in waits {
            rx.await
                .map_err(|_| io::Error::other("io_uring thread dropped the operation"))??;
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

fn run(ring: IoUring, rx: mpsc::Receiver<Op>, wake_fd: RawFd) -> io::Result<()> {
    // Declared before the ring so it is dropped after it: the kernel may still fill it until then.
    let mut wake_buf = Box::new(0u64);
    let mut ring = ring;
    let mut in_flight: HashMap<u64, Op> = HashMap::new();
    let mut next_id: u64 = 0;
    let mut closing = false;
    arm_wake(&mut ring, wake_fd, &mut wake_buf)?;
    loop {
        loop {
            match rx.try_recv() {
                Ok(op) => {
                    next_id = (next_id + 1) % WAKE;
                    push_op(&mut ring, next_id, &op)?;
                    in_flight.insert(next_id, op);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        if closing && in_flight.is_empty() {
            return Ok(());
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (id, result) in completions {
            if id == WAKE {
                arm_wake(&mut ring, wake_fd, &mut wake_buf)?;
                continue;
            }
            let Some(op) = in_flight.remove(&id) else {
                continue;
            };
            if let Some(op) = complete(op, result) {
                // A short write: the rest goes round again.
                next_id = (next_id + 1) % WAKE;
                push_op(&mut ring, next_id, &op)?;
                in_flight.insert(next_id, op);
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

fn push_op(ring: &mut IoUring, id: u64, op: &Op) -> io::Result<()> {
    let fd = types::Fd(op.file.as_raw_fd());
    let entry = match &op.kind {
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
    .user_data(id);
    push(ring, &entry)
}

fn arm_wake(ring: &mut IoUring, wake_fd: RawFd, buf: &mut Box<u64>) -> io::Result<()> {
    let entry = opcode::Read::new(types::Fd(wake_fd), (&mut **buf as *mut u64).cast(), 8)
        .build()
        .user_data(WAKE);
    push(ring, &entry)
}

fn push(ring: &mut IoUring, entry: &io_uring::squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points at outlives its operation: write data is a `Bytes`
        // and read buffers are `Vec`s owned by the `Op` kept in `in_flight` until its completion
        // (a Vec's heap buffer does not move when the Op moves), the wake buffer is a Box owned by
        // the thread loop, and each file is held open by the Op's `Arc<File>`.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}
