//! Group commit. Durable writes (acks=all) queue here; one cycle takes everything waiting, from
//! every partition, and fdatasyncs each distinct file once (all at once through io_uring), then
//! answers them all. Writes that arrive during a cycle share the next one, so under load one
//! fsync serves many requests and when idle a write waits for just its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::io::Io;
use crate::metrics::BrokerMetrics;

struct SyncRequest {
    file: Arc<File>,
    done: oneshot::Sender<Result<(), Arc<io::Error>>>,
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub struct Flusher {
    queue: mpsc::Sender<SyncRequest>,
}

impl Flusher {
    /// Starts the task; `linger` lets a cycle wait for company, `max_pending` bounds the queue.
    pub fn start(io: Io, linger: Duration, max_pending: usize, metrics: BrokerMetrics) -> Self {
        let (queue, rx) = mpsc::channel(max_pending.max(1));
        tokio::spawn(run(io, rx, linger, max_pending.max(1), metrics));
        Self { queue }
    }

    /// Returns once every file has been fdatasynced after this call was made. All are queued
    /// before any is awaited, so they share one cycle.
    pub async fn sync_all(&self, files: Vec<Arc<File>>) -> io::Result<()> {
        let stopped = || io::Error::other("group commit has stopped");
        let mut waits = Vec::with_capacity(files.len());
        for file in files {
            let (done, rx) = oneshot::channel();
            self.queue
                .send(SyncRequest { file, done })
                .await
                .map_err(|_| stopped())?;
            waits.push(rx);
        }
        for rx in waits {
            rx.await
                .map_err(|_| stopped())?
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        }
        Ok(())
    }
}

async fn run(
    io: Io,
    mut rx: mpsc::Receiver<SyncRequest>,
    linger: Duration,
    max_pending: usize,
    metrics: BrokerMetrics,
) {
    while let Some(first) = rx.recv().await {
        let mut cycle = vec![first];
        if !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while cycle.len() < max_pending {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(request)) => cycle.push(request),
                    _ => break,
                }
            }
        }
        while cycle.len() < max_pending {
            match rx.try_recv() {
                Ok(request) => cycle.push(request),
                Err(_) => break,
            }
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for request in &cycle {
            let fd = request.file.as_raw_fd();
            if !files.iter().any(|f| f.as_raw_fd() == fd) {
                files.push(request.file.clone());
            }
        }
        let started = Instant::now();
        let result = io.sync_all(&files).await.map_err(Arc::new);
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.fsync_batch_writes.observe(cycle.len() as f64);
        if let Err(e) = &result {
            // After a failed fsync the kernel may have dropped the dirty pages, and a later
            // fsync can succeed without them: nothing written may be trusted any more (`Io`
            // now fails every sync, and the storage every produce).
            tracing::error!(error = %e, "fdatasync failed: storage is failed, refusing every produce until restart");
        }
        for request in cycle {
            let _ = request.done.send(result.clone());
        }
    }
}
