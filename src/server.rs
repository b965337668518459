//! The long-running appliance processes: `sluice up` (broker, indexer and search API in one
//! process), `sluice broker` and `sluice indexer`. `sluice agent` is in `agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use sluice_broker::Broker;
use sluice_indexer::{
    Indexer, IndexerMetrics, MetricsView, SearchLimits, SearchMetrics, SearchService, ViewMetrics,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::cli::{CommonArgs, IndexerArgs, ServerArgs};
use crate::config::{KafkaFiles, SluiceConfig};
use crate::http;
use crate::shutdown::Shutdown;

/// Which parts a process runs.
struct Parts {
    broker: bool,
    indexer: bool,
}

/// `sluice up`: the appliance in one process.
pub async fn up(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(args, KafkaFiles::Indexer)?;
    run(
        config,
        Parts {
            broker: true,
            indexer: true,
        },
    )
    .await
}

/// `sluice broker`: the broker and its HTTP endpoint.
pub async fn broker(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(args, KafkaFiles::None)?;
    run(
        config,
        Parts {
            broker: true,
            indexer: false,
        },
    )
    .await
}

/// `sluice indexer`: one member of the indexer group, with the search API.
pub async fn indexer(args: IndexerArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.common, args.data_dir, KafkaFiles::Indexer)?;
    if let Some(brokers) = args.brokers {
        config.indexer.brokers = brokers;
    }
    run(
        config,
        Parts {
            broker: false,
            indexer: true,
        },
    )
    .await
}

/// The configuration file with the command line's overrides applied.
fn load_config(
    common: CommonArgs,
    data_dir: Option<PathBuf>,
    kafka_files: KafkaFiles,
) -> anyhow::Result<SluiceConfig> {
    let mut config = SluiceConfig::load(common.config.as_deref(), kafka_files)?;
    if let Some(dir) = data_dir {
        config.data_dir.path = dir;
    }
    if let Some(addr) = common.http {
        config.http.listen = Some(addr);
    }
    Ok(config)
}

fn server_config(args: ServerArgs, kafka_files: KafkaFiles) -> anyhow::Result<SluiceConfig> {
    let mut config = load_config(args.common, args.data_dir, kafka_files)?;
    if let Some(addr) = args.listen {
        config.broker.listen = addr;
    }
    Ok(config)
}

async fn run(mut config: SluiceConfig, parts: Parts) -> anyhow::Result<()> {
    let shutdown = Shutdown::install()?;
    let registry = http::new_registry();
    let data_dir = config.data_dir.path.clone();

    // Bind the ports before touching the disk, so a taken port fails fast and changes nothing.
    let kafka_listener = match parts.broker {
        true => Some(http::bind("Kafka listener", &config.broker.listen).await?),
        false => None,
    };
    let http_listener = http::bind(
        "HTTP listener",
        config.http.listen_or(crate::config::SERVER_HTTP),
    )
    .await?;
    prepare_data_dir(&data_dir)?;

    let broker = match parts.broker {
        true => {
            Some(Broker::open(config.broker.clone(), &data_dir.join("broker"), &registry).await?)
        }
        false => None,
    };
    let mut routes = Router::new();
    let mut view = None;
    let (closing, closing_seen) = watch::channel(false);
    if parts.indexer {
        if let Some(listener) = &kafka_listener {
            // In one process the indexer reads the broker beside it, wherever that listens.
            config.indexer.brokers = loopback(listener.local_addr()?).to_string();
        }
        let limits = SearchLimits {
            max_limit: config.indexer.max_search_limit,
            max_window: config.indexer.max_search_window,
        };
        let service = Arc::new(SearchService::new(&data_dir, &config.indexer.topic, limits));
        routes = sluice_indexer::router(
            service,
            config.indexer.max_concurrent_searches,
            SearchMetrics::register(&registry)?,
            closing_seen,
        );
        if config.indexer.metrics_view.enabled {
            let metrics_view = MetricsView::new(&config.indexer.metrics_view);
            routes = routes.merge(metrics_view.router());
            view = Some(metrics_view);
        }
    }
    let kafka = match kafka_listener.as_ref().map(|l| l.local_addr()) {
        Some(addr) => addr?.to_string(),
        None => "none (indexer alone)".to_owned(),
    };
    tracing::info!(
        %kafka,
        http = %http_listener.local_addr()?,
        data_dir = %data_dir.display(),
        "sluice is up"
    );
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(
        http_listener,
        registry.clone(),
        routes,
        async {
            let _ = http_stopped.await;
        },
    ));

    let (stop_broker, broker_stopped) = oneshot::channel::<()>();
    let serve_broker = async {
        let served = serve_broker(broker.as_ref(), kafka_listener, async {
            let _ = broker_stopped.await;
        })
        .await;
        if served.is_err() {
            // Nothing serves Kafka any more: every other part stops too, and the process
            // exits with this error rather than running on half alive.
            shutdown.trigger();
        }
        served
    };
    let run_indexer = async {
        let result = async {
            if parts.indexer {
                let metrics = IndexerMetrics::register(&registry)?;
                if let Some(view) = &mut view {
                    let view_metrics = ViewMetrics::register(&registry)?;
                    view.start(&config.indexer, view_metrics).await?;
                }
                let mut indexer =
                    Indexer::start(config.indexer.clone(), &data_dir, metrics).await?;
                let ended = tokio::select! {
                    _ = shutdown.clone().wait() => false,
                    _ = indexer.ended() => true,
                };
                if ended {
                    shutdown.trigger();
                }
                if let Some(view) = view {
                    view.stop().await;
                }
                indexer.stop().await?;
                if ended {
                    anyhow::bail!("the indexer stopped on its own");
                }
            } else {
                shutdown.clone().wait().await;
            }
            anyhow::Ok(())
        }
        .await;
        // The indexer leaves its group before the broker under it goes.
        let _ = stop_broker.send(());
        result
    };
    let (served, indexed) = tokio::join!(serve_broker, run_indexer);
    if let Some(broker) = broker {
        broker.close().await?;
    }
    // Open live tails end first, so the HTTP server has nothing left to drain.
    let _ = closing.send(true);
    let _ = stop_http.send(());
    served?;
    indexed?;
    http_task.await??;
    tracing::info!("sluice stopped cleanly");
    Ok(())
}

async fn serve_broker(
    broker: Option<&Broker>,
    listener: Option<TcpListener>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match (broker, listener) {
        (Some(broker), Some(listener)) => broker.serve(listener, stop).await,
        _ => Ok(()),
    }
}

/// The address to reach a listener from this host: a wildcard bind is reached on loopback.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

fn prepare_data_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() && !path.is_dir() {
        anyhow::bail!("data dir {}: is not a directory", path.display());
    }
    std::fs::create_dir_all(path)
        .map_err(|e| anyhow::anyhow!("data dir {}: cannot create: {e}", path.display()))
}
