//! The Sluice broker: a partitioned, compressed log that speaks the Kafka wire protocol.
//!
//! `storage` keeps topics as partitions of segment files (RecordBatch v2 as producers sent them,
//! with sparse indexes), written through io_uring or plain I/O and made durable by group commit;
//! `server` decodes Kafka requests with the `kafka-protocol` codecs and answers them from storage;
//! `coordinator` runs consumer groups and keeps their committed offsets in `__consumer_offsets`;
//! `metrics` is what all of them export to Prometheus (`quiet` keeps their log lines few);
//! `config` is the `[broker]` section.

mod config;
pub mod coordinator;
pub mod metrics;
mod quiet;
mod server;
pub mod storage;

use std::path::Path;
use std::sync::Arc;

pub use config::{BrokerConfig, CompressionType, IoBackendKind};
use coordinator::Coordinator;
use metrics::BrokerMetrics;
use server::Context;
use storage::Storage;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running broker's storage and background work; `serve` answers clients.
pub struct Broker {
    config: BrokerConfig,
    storage: Arc<Storage>,
    coordinator: Arc<Coordinator>,
    metrics: BrokerMetrics,
    cluster_id: String,
    background: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Opens (and recovers) the log under `dir` and starts retention and periodic flushing.
    pub async fn open(
        config: BrokerConfig,
        dir: &Path,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let metrics = BrokerMetrics::register(registry)?;
        let storage = Storage::open(config.clone(), dir, metrics.clone()).await?;
        let cluster_id = cluster_id(dir)?;
        let coordinator = Coordinator::open(
            storage.clone(),
            metrics.clone(),
            std::time::Duration::from_millis(config.group_initial_rebalance_delay_ms),
            config.offsets_retention_ms as i64,
        )
        .await?;
        let background = vec![
            tokio::spawn(storage.clone().housekeeping_loop()),
            tokio::spawn(storage.clone().flush_loop()),
            tokio::spawn(storage.clone().gauges_loop()),
            tokio::spawn(coordinator.clone().tick_loop()),
            tokio::spawn(coordinator.clone().expiry_loop()),
        ];
        Ok(Self {
            config,
            storage,
            coordinator,
            metrics,
            cluster_id,
            background,
        })
    }

    /// Answers Kafka clients on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let local = listener.local_addr()?;
        let (host, port) = match self.config.advertised() {
            Ok(Some(advertised)) => advertised,
            Ok(None) => (local.ip().to_string(), local.port() as i32),
            Err(why) => anyhow::bail!("[broker] advertised_listener: {why}"),
        };
        let ctx = Arc::new(Context {
            storage: self.storage.clone(),
            coordinator: self.coordinator.clone(),
            metrics: self.metrics.clone(),
            node_id: self.config.node_id,
            advertised_host: host,
            advertised_port: port,
            cluster_id: self.cluster_id.clone(),
            fetch_max_bytes: self.config.fetch_max_bytes as usize,
            quiet: Default::default(),
        });
        let limits = server::Limits::of(&self.config);
        server::serve(ctx, listener, shutdown, limits).await?;
        Ok(())
    }

    /// Stops background work, syncs every partition and marks the stop clean.
    pub async fn close(self) -> anyhow::Result<()> {
        for task in &self.background {
            task.abort();
        }
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || storage.close()).await??;
        Ok(())
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, as Kafka stamps things.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The cluster id clients see: made once per data directory and kept.
fn cluster_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("cluster-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_owned());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let id = format!("sluice-{:x}-{:x}", nanos, std::process::id());
    std::fs::write(&path, &id)?;
    Ok(id)
}
