//! SIGTERM and SIGINT turn into one shutdown signal that every part watches; a second one ends
//! the process at once (a stop stuck waiting, for a broker that is away, say, can be cut short
//! from the terminal; what is not yet durable is then recovered as after a crash).

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A second signal within this of the first is taken as a repeat of it.
const SAME_STOP: Duration = Duration::from_secs(1);

/// A cloneable shutdown flag: `wait()` resolves once SIGTERM or SIGINT arrived, or a part that
/// failed called `trigger()` (so the process stops whole, with that part's error, rather than
/// running on without it).
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Installs the signal handlers. Must run inside the runtime.
    pub fn install() -> anyhow::Result<Self> {
        let (tx, rx) = watch::channel(false);
        let tx = std::sync::Arc::new(tx);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let signalled = tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            signalled.send_replace(true);
            let first = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                // GNU timeout signals its child and then its own process group, the child
                // included: a repeat that close is the same stop, not an impatient operator.
                if first.elapsed() >= SAME_STOP {
                    break;
                }
                tracing::debug!("the stop signal again within a second: the same stop");
            }
            tracing::warn!("second signal: exiting without finishing the stop");
            std::process::exit(130);
        });
        Ok(Self { rx, tx })
    }

    /// Stops every part, as a signal would.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|&stop| stop).await;
    }
}
