//! SIGTERM and SIGINT turn into one shutdown signal that every part watches; a second one ends
//! the process at once (a stop stuck waiting, for a broker that is away, say, can be cut short
//! from the terminal; what is not yet durable is then recovered as after a crash).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A cloneable shutdown flag: `wait()` resolves once SIGTERM or SIGINT arrived.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Installs the signal handlers. Must run inside the runtime.
    pub fn install() -> anyhow::Result<Self> {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            let _ = tx.send(true);
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting without finishing the stop");
            std::process::exit(130);
        });
        Ok(Self(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }
}
