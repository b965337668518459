//! `sluice agent`: runs the agent with /metrics on its HTTP address, and restarts its inputs when
//! the configuration file changes (a file watch; a change that does not load keeps the running
//! configuration and says why). Stops on SIGTERM, or when its only inputs end (stdin at its end).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use notify::Watcher;
use sluice_agent::{Agent, AgentConfig, AgentMetrics, Listeners, Patience};
use tokio::sync::{mpsc, oneshot};

use crate::cli::AgentArgs;
use crate::config::{KafkaFiles, SluiceConfig};
use crate::http;
use crate::shutdown::Shutdown;

/// Editors write a file in several steps: changes this close together are one change.
const SETTLE: Duration = Duration::from_millis(300);

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let path = args.common.config.clone();
    let load = || -> anyhow::Result<SluiceConfig> {
        let mut config = SluiceConfig::load(path.as_deref(), KafkaFiles::Agent)?;
        if let Some(addr) = &args.common.http {
            config.http.listen = Some(addr.clone());
        }
        if let Some(brokers) = &args.brokers {
            config.agent.brokers = brokers.clone();
        }
        if let Some(dir) = &args.state_dir {
            config.agent.state_dir = dir.display().to_string();
        }
        Ok(config)
    };
    let config = load()?;
    let shutdown = Shutdown::install()?;
    let registry = http::new_registry();
    let metrics = AgentMetrics::register(&registry)?;
    let (changed, mut changes) = mpsc::channel(1);
    let _watch = match &path {
        Some(path) => Some(watch(path, changed)?),
        None => None,
    };
    let mut running = config.agent;
    let mut agent = Agent::start(running.clone(), metrics.clone(), &Listeners::default()).await?;
    // Once the inputs listen: an answer on the HTTP port (a probe, a test) means they do.
    let listen = config.http.listen_or(crate::config::AGENT_HTTP);
    let http_listener = match http::bind("HTTP listener", listen).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = agent.stop(Patience::NONE).await;
            return Err(e);
        }
    };
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(http_listener, registry, Router::new(), async {
        let _ = http_stopped.await;
    }));
    let mut failed = None;
    // The file did not load at its last change: when it loads again, that is said.
    let mut broken = false;
    loop {
        tokio::select! {
            _ = shutdown.clone().wait() => break,
            done = agent.inputs_done() => {
                failed = done.err();
                break;
            }
            Some(()) = changes.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                let wanted = match load() {
                    Ok(config) => config.agent,
                    Err(e) => {
                        tracing::error!("{e:#}; the agent keeps its running configuration");
                        broken = true;
                        continue;
                    }
                };
                if std::mem::take(&mut broken) && wanted == running {
                    tracing::info!("the configuration file loads again; it is the one running");
                }
                if wanted != running {
                    (agent, running) = restart(agent, running, wanted, &metrics).await?;
                }
            }
        }
    }
    let stopped = agent.stop(Patience::EXIT).await;
    let _ = stop_http.send(());
    http_task.await??;
    match failed {
        Some(e) => Err(e),
        None => stopped,
    }
}

/// Stops the inputs and starts them with `wanted`; with `running` again when `wanted` cannot
/// start (a port taken, say). The listeners whose address stays are handed over open, and the
/// stop waits for the broker only while it takes what is queued (`Patience::RELOAD`).
async fn restart(
    agent: Agent,
    running: AgentConfig,
    wanted: AgentConfig,
    metrics: &AgentMetrics,
) -> anyhow::Result<(Agent, AgentConfig)> {
    tracing::info!("configuration changed: restarting the agent's inputs");
    let mut listeners = agent.listeners();
    if let Err(e) = agent.stop(Patience::RELOAD).await {
        tracing::warn!(error = %e, "agent: stopping for the new configuration");
    }
    // The others closed now: a new address overlapping one of them can be bound.
    listeners.keep_only(&wanted);
    match Agent::start(wanted.clone(), metrics.clone(), &listeners).await {
        Ok(agent) => Ok((agent, wanted)),
        Err(e) => {
            tracing::error!("{e:#}; the agent goes on with its previous configuration");
            Ok((
                Agent::start(running.clone(), metrics.clone(), &listeners).await?,
                running,
            ))
        }
    }
}

/// Watches the file's directory (editors and config managers replace the file, which a watch on
/// the file itself would lose) and sends on `changed` when the file may have changed. A
/// Kubernetes ConfigMap volume never touches the file itself: it links `agent.toml` to
/// `..data/agent.toml` and swaps the `..data` link, so a change to a `..` entry counts too.
fn watch(path: &Path, changed: mpsc::Sender<()>) -> anyhow::Result<notify::RecommendedWatcher> {
    let path = std::path::absolute(path)?;
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let ours = match &event {
            // Reading the file is an event too: the agent's own reads must not reload it (a
            // file it cannot load was said in the log every 300 ms).
            Ok(event) if is_a_read(&event.kind) => false,
            Ok(event) => event.paths.iter().any(|p| {
                p.file_name() == name.as_deref()
                    || p.file_name()
                        .is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
            }),
            Err(_) => true,
        };
        if ours {
            let _ = changed.try_send(());
        }
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("config file {}: cannot watch: {e}", path.display()))?;
    Ok(watcher)
}

fn is_a_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}
