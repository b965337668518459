//! Storage I/O: io_uring where the kernel allows it, positional syscalls where it does not.
//! Both do the same three things; the broker logs and exports which one runs. Either way,
//! segment logs may be appended with direct I/O (`direct_writes`, see `storage::appender`).

mod plain;
mod uring;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::IoBackendKind;

/// The storage I/O in use: a backend, and whether segment logs are appended with O_DIRECT.
#[derive(Clone)]
pub struct Io {
    backend: Backend,
    direct_writes: bool,
    /// Held through each `sync_all`: one runs at a time.
    syncs: Arc<tokio::sync::Mutex<()>>,
    /// Set for good once an fdatasync failed (see `sync_all`).
    failed: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Backend {
    Uring(uring::Uring),
    Plain,
}

impl Io {
    /// Starts the configured backend; `auto` falls back to plain I/O when io_uring is refused.
    pub fn start(kind: IoBackendKind, direct_writes: bool) -> anyhow::Result<Self> {
        let backend = match kind {
            IoBackendKind::Plain => Backend::Plain,
            IoBackendKind::IoUring => uring::Uring::start().map(Backend::Uring).map_err(|e| {
                anyhow::anyhow!("io_backend = \"io_uring\": io_uring unavailable: {e}")
            })?,
            IoBackendKind::Auto => match uring::Uring::start() {
                Ok(ring) => Backend::Uring(ring),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable, using plain I/O");
                    Backend::Plain
                }
            },
        };
        Ok(Self {
            backend,
            direct_writes,
            syncs: Arc::default(),
            failed: Arc::default(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Uring(_) => "io_uring",
            Backend::Plain => "plain",
        }
    }

    /// Whether segment logs are to be appended with O_DIRECT.
    pub fn direct_writes(&self) -> bool {
        self.direct_writes
    }

    /// Writes all of `data` at `offset`.
    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        match &self.backend {
            Backend::Uring(ring) => ring.write_at(file, offset, data).await,
            Backend::Plain => plain::write_at(file, offset, data).await,
        }
    }

    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    pub async fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match &self.backend {
            Backend::Uring(ring) => ring.read_at(file, offset, len).await,
            Backend::Plain => plain::read_at(file, offset, len).await,
        }
    }

    /// fdatasyncs every file; returns when all are durable.
    ///
    /// One caller at a time (group commit, the periodic flush, a segment roll), and after one
    /// failure every later call fails too. Linux reports a writeback error once per open file:
    /// a sync running beside the one that got it could return success for pages the kernel
    /// dropped, and a write acknowledged on that success would be lost. A sync that has begun
    /// runs to its end even if its caller stops waiting (a shutdown aborts the periodic flush),
    /// so its failure is never lost with the caller.
    pub async fn sync_all(&self, files: &[Arc<File>]) -> io::Result<()> {
        let turn = self.syncs.clone().lock_owned().await;
        let (io, files) = (self.clone(), files.to_vec());
        let sync = tokio::spawn(async move {
            let _turn = turn;
            if io.failed.load(Ordering::Acquire) {
                return Err(io::Error::other(
                    "an earlier fdatasync failed: nothing written since can be trusted to be on disk",
                ));
            }
            let synced = match &io.backend {
                Backend::Uring(ring) => ring.sync_all(&files).await,
                Backend::Plain => plain::sync_all(&files).await,
            };
            if synced.is_err() {
                io.failed.store(true, Ordering::Release);
            }
            synced
        });
        sync.await
            .unwrap_or_else(|e| Err(io::Error::other(format!("fdatasync task: {e}"))))
    }

    /// Whether an fdatasync has failed (the storage is then failed until restart).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// As `failed`, once a sync in progress has ended; from blocking code (the clean stop).
    pub fn failed_after_syncs(&self) -> bool {
        let _turn = self.syncs.blocking_lock();
        self.failed()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Poll;

    use super::*;

    fn scratch_file(dir: &tempfile::TempDir) -> Arc<File> {
        Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join("f"))
                .unwrap(),
        )
    }

    async fn round_trip(io: Io) {
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(&dir);
        io.write_at(&file, 0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        io.write_at(&file, 6, Bytes::from_static(b"world"))
            .await
            .unwrap();
        io.sync_all(&[file.clone(), file.clone()]).await.unwrap();
        assert_eq!(io.read_at(&file, 0, 11).await.unwrap(), b"hello world");
        assert_eq!(
            io.read_at(&file, 6, 100).await.unwrap(),
            b"world",
            "short read at EOF"
        );
    }

    /// fdatasync of a pipe fails (EINVAL), standing in for a disk's writeback error.
    async fn a_failed_sync_fails_every_later_one(io: Io) {
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(&dir);
        io.sync_all(std::slice::from_ref(&file)).await.unwrap();
        let (pipe, _writer) = std::io::pipe().unwrap();
        let pipe = Arc::new(File::from(std::os::fd::OwnedFd::from(pipe)));
        assert!(io.sync_all(&[pipe]).await.is_err());
        let later = io.sync_all(&[file]).await.unwrap_err();
        assert!(
            later.to_string().contains("earlier fdatasync failed"),
            "{later}"
        );
    }

    /// The caller of a failing sync stops waiting at once (as a shutdown aborts the periodic
    /// flush): the failure is recorded all the same.
    async fn a_failed_sync_sticks_without_its_caller(io: Io) {
        let (pipe, _writer) = std::io::pipe().unwrap();
        let pipe = Arc::new(File::from(std::os::fd::OwnedFd::from(pipe)));
        let files = [pipe];
        let mut abandoned = Box::pin(io.sync_all(&files));
        let first = std::future::poll_fn(|cx| Poll::Ready(abandoned.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the sync ended within its first poll");
        drop(abandoned);
        let dir = tempfile::tempdir().unwrap();
        assert!(io.sync_all(&[scratch_file(&dir)]).await.is_err());
        assert!(io.failed());
    }

    #[tokio::test]
    async fn plain_failed_sync_sticks_without_its_caller() {
        a_failed_sync_sticks_without_its_caller(Io::start(IoBackendKind::Plain, false).unwrap())
            .await;
    }

    #[tokio::test]
    async fn uring_failed_sync_sticks_without_its_caller() {
        a_failed_sync_sticks_without_its_caller(Io::start(IoBackendKind::IoUring, false).unwrap())
            .await;
    }

    #[tokio::test]
    async fn plain_failed_sync_sticks() {
        a_failed_sync_fails_every_later_one(Io::start(IoBackendKind::Plain, false).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_failed_sync_sticks() {
        a_failed_sync_fails_every_later_one(Io::start(IoBackendKind::IoUring, false).unwrap())
            .await;
    }

    #[tokio::test]
    async fn plain_round_trip() {
        round_trip(Io::start(IoBackendKind::Plain, false).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_round_trip() {
        round_trip(Io::start(IoBackendKind::IoUring, false).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_many_concurrent_writes() {
        let io = Io::start(IoBackendKind::IoUring, false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(&dir);
        let writes = (0..1000u64).map(|i| {
            let io = io.clone();
            let file = file.clone();
            tokio::spawn(async move {
                io.write_at(&file, i * 8, Bytes::copy_from_slice(&i.to_be_bytes()))
                    .await
            })
        });
        for w in writes.collect::<Vec<_>>() {
            w.await.unwrap().unwrap();
        }
        let all = io.read_at(&file, 0, 8000).await.unwrap();
        for i in 0..1000u64 {
            assert_eq!(all[i as usize * 8..][..8], i.to_be_bytes());
        }
    }
}
