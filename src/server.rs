//! The long-running processes: `sluice up` (everything) and `sluice broker`.

use std::path::Path;

use sluice_broker::Broker;

use crate::cli::ServerArgs;
use crate::config::SluiceConfig;
use crate::http;
use crate::shutdown::Shutdown;

/// `sluice up`: the appliance in one process. The indexer joins it with issue #6.
pub async fn up(args: ServerArgs) -> anyhow::Result<()> {
    run_broker(args).await
}

/// `sluice broker`: the broker and its HTTP endpoint.
pub async fn broker(args: ServerArgs) -> anyhow::Result<()> {
    run_broker(args).await
}

async fn run_broker(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = SluiceConfig::load(args.common.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir.path = dir;
    }
    if let Some(addr) = args.common.http {
        config.http.listen = addr;
    }
    if let Some(addr) = args.listen {
        config.broker.listen = addr;
    }
    let shutdown = Shutdown::install()?;
    let registry = http::new_registry();

    // Bind both ports before touching the disk, so a taken port fails fast and changes nothing.
    let kafka_listener = http::bind("Kafka listener", &config.broker.listen).await?;
    let http_listener = http::bind("HTTP listener", &config.http.listen).await?;
    prepare_data_dir(&config.data_dir.path)?;

    let broker = Broker::open(
        config.broker.clone(),
        &config.data_dir.path.join("broker"),
        &registry,
    )
    .await?;
    tracing::info!(
        kafka = %kafka_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        data_dir = %config.data_dir.path.display(),
        "sluice is up"
    );
    let http_task = tokio::spawn(http::serve(
        http_listener,
        registry,
        shutdown.clone().wait(),
    ));
    let served = broker.serve(kafka_listener, shutdown.wait()).await;
    broker.close().await?;
    served?;
    http_task.await??;
    tracing::info!("sluice stopped cleanly");
    Ok(())
}

fn prepare_data_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| anyhow::anyhow!("data dir {}: cannot create: {e}", path.display()))
}
