//! The Sluice agent: runs beside containers and ships their logs and metrics into the broker.
//!
//! Each input in `inputs` (files, Docker and CRI logs, syslog, GELF, stdin) turns what it reads
//! into an event (the design brief's JSON contract, written by `event::json`; the file input writes
//! its lines' events straight into one buffer, the others build an `event::Event`) and hands it to
//! the `shipper`, which counts it (`metrics`) and queues it on the Kafka `output`; `acks` tracks
//! which records the broker acknowledged, so file checkpoints move only past those. Events of
//! inputs that cannot replay go through the disk `spool` while the broker is slow or away. The `collectors` sample
//! containers' cgroups, the host and Prometheus targets every interval and ship the samples to
//! the metrics topic; `containers` names Docker's containers for both.

mod acks;
mod collectors;
mod config;
mod containers;
pub mod event;
mod inputs;
mod metrics;
mod output;
mod shipper;
mod spool;
mod state_dir;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{AgentConfig, KAFKA_FIXED};
pub use metrics::AgentMetrics;
pub use output::BATCHING;

use crate::inputs::connections::{Handover, Listening};
use crate::output::KafkaOutput;
use crate::shipper::Shipper;
use crate::spool::Spool;

/// How long a stop waits for the broker to take what is queued: at most `timeout`, and no
/// longer than `stalled` once nothing is acknowledged any more (the broker is away). What is
/// left is sent after the next start: file lines are read again, the spool keeps the rest.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub timeout: Duration,
    pub stalled: Duration,
    /// Whether the spool is given its chance to drain first.
    pub drain_spool: bool,
    /// Whether the open TCP connections are left for the next agent (`Listeners`); else they
    /// are closed as soon as they stop, so their senders see it and keep what they hold.
    pub hand_over: bool,
}

impl Patience {
    /// For the process's end: the spool and librdkafka's queue are given a chance to drain.
    pub const EXIT: Patience = Patience {
        timeout: Duration::from_secs(30),
        stalled: Duration::from_secs(5),
        drain_spool: true,
        hand_over: false,
    };
    /// For a reload, while the listeners stay open but nothing reads them (datagrams wait in
    /// the socket's buffer only so long): librdkafka's queue (at most 4 MiB) is waited for
    /// while the broker takes it, but not a moment once it stops; the spool stays for the
    /// next inputs. (Lines of a file rotated away or deleted that are given up on are lost:
    /// the next inputs do not find that file again.)
    pub const RELOAD: Patience = Patience {
        timeout: Duration::from_secs(30),
        stalled: Duration::from_millis(200),
        drain_spool: false,
        hand_over: true,
    };
    /// For a start that failed half way: nothing is waited for.
    pub const NONE: Patience = Patience {
        timeout: Duration::ZERO,
        stalled: Duration::ZERO,
        drain_spool: false,
        hand_over: false,
    };
}

/// How long a stop waits for the network inputs, all together, to stop by themselves (a TCP
/// input gives a connection two seconds to finish its message); past it they are cut short.
const STOP_BY_THEMSELVES: Duration = Duration::from_secs(5);

/// What a UDP listener asks the kernel to buffer while the agent is not reading.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// The agent's bound sockets by address, and its TCP inputs' connections once they stopped. A
/// reload hands them to the next agent, so a listener whose address stays is never closed:
/// datagrams wait in its buffer, new connections in its backlog and open ones in the handover
/// while the inputs restart, instead of being refused or lost.
#[derive(Default, Clone)]
pub struct Listeners {
    udp: HashMap<String, Arc<UdpSocket>>,
    tcp: HashMap<String, Arc<TcpListener>>,
    connections: Handover,
}

/// A running agent.
pub struct Agent {
    shipper: Arc<Shipper>,
    /// The inputs' tasks; a slot is emptied once its task's result is taken.
    tasks: Vec<Option<JoinHandle<anyhow::Result<()>>>>,
    /// How many of `tasks`, the first, end by themselves at `stopping` (the network inputs).
    stop_by_themselves: usize,
    /// Tells the network inputs to stop, between two messages.
    stopping: watch::Sender<bool>,
    files: Option<inputs::files::FilesInput>,
    /// Sends the spool's segments; stopped last.
    drain: Option<JoinHandle<()>>,
    /// Offers again the records the cluster refused, watches acknowledgements
    /// (`KafkaOutput::upkeep`).
    upkeep: Option<JoinHandle<anyhow::Result<()>>>,
    listeners: Listeners,
    /// Held while this agent may write its state dir (`state_dir::claim`).
    _state_lock: Option<std::fs::File>,
}

impl Agent {
    /// Binds the configured listeners (failing fast on a taken port), taking those of `reuse`
    /// whose address is the same, and starts every input.
    pub async fn start(
        config: AgentConfig,
        metrics: AgentMetrics,
        reuse: &Listeners,
    ) -> anyhow::Result<Self> {
        let follows_files = !inputs::files::patterns(&config).is_empty();
        if !config.stdin
            && !follows_files
            && config.syslog.udp.is_empty()
            && config.syslog.tcp.is_empty()
            && config.gelf.udp.is_empty()
            && config.gelf.tcp.is_empty()
            && !config.metrics.any()
        {
            anyhow::bail!(
                "agent: no input is on (set [agent] stdin = true, [agent.files] include, \
                 [agent.docker] or [agent.cri] logs = true, [agent.syslog] or [agent.gelf] udp or \
                 tcp, or \
                 [agent.metrics] cgroup, host or targets)"
            );
        }
        let host = if config.hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            config.hostname.clone()
        };
        // Everything that can fail comes before the first task is spawned: a start that fails
        // (a port taken) leaves nothing running, so the previous configuration can start again.
        let cannot_replay = config.stdin
            || !(config.syslog.udp.is_empty()
                && config.syslog.tcp.is_empty()
                && config.gelf.udp.is_empty()
                && config.gelf.tcp.is_empty());
        // Segments a run with such inputs left are sent even when none is configured now.
        let spool_dir = std::path::Path::new(&config.state_dir).join("spool");
        let spooling = cannot_replay || Spool::left_in(&spool_dir);
        let state_lock = match follows_files || spooling {
            true => Some(state_dir::claim(std::path::Path::new(&config.state_dir))?),
            false => None,
        };
        let output = Arc::new(KafkaOutput::new(&config, metrics.clone())?);
        let spool = match spooling {
            true => Some(Arc::new(Spool::open(
                &spool_dir,
                config.spool.max_bytes,
                config.spool.when_full == "block",
                metrics.clone(),
            )?)),
            false => None,
        };
        let (syslog, gelf) = (&config.syslog, &config.gelf);
        let mut listeners = Listeners::default();
        let syslog_udp = listeners.udp("syslog", &syslog.udp, reuse).await?;
        let syslog_tcp = listeners.tcp("syslog", &syslog.tcp, reuse).await?;
        let gelf_udp = listeners.udp("GELF", &gelf.udp, reuse).await?;
        let gelf_tcp = listeners.tcp("GELF", &gelf.tcp, reuse).await?;
        let shipper = Arc::new(Shipper {
            output: output.clone(),
            spool,
            metrics,
            topic: config.topic.clone(),
            host,
            run: event::now_ms(),
            connections: Default::default(),
            max_record_bytes: config.max_record_bytes(),
        });
        let files = match follows_files {
            true => Some(inputs::files::FilesInput::start(&config, shipper.clone())?),
            false => None,
        };
        let (_, upkeep) = spawn_input("output", output.clone().upkeep());
        let drain = shipper.spool.as_ref().map(|spool| {
            tokio::spawn(spool::drain(
                spool.clone(),
                output.clone(),
                config.topic.clone(),
            ))
        });
        let (stopping, stop) = watch::channel(false);
        let listening = |listener: Arc<TcpListener>, input: &'static str, addr: &str| Listening {
            listener,
            addr: addr.to_owned(),
            handed: reuse.connections.take(input, addr),
            handover: listeners.connections.clone(),
            stop: stop.clone(),
        };
        let mut tasks = Vec::new();
        if let Some(listener) = syslog_tcp {
            let listening = listening(listener, "syslog_tcp", &syslog.tcp);
            let input =
                inputs::syslog::run_tcp(listening, shipper.clone(), syslog.max_message_bytes);
            tasks.push(spawn_input("syslog_tcp", input));
        }
        if let Some(listener) = gelf_tcp {
            let listening = listening(listener, "gelf_tcp", &gelf.tcp);
            let input = inputs::gelf::run_tcp(listening, shipper.clone(), gelf.max_message_bytes);
            tasks.push(spawn_input("gelf_tcp", input));
        }
        if let Some(socket) = syslog_udp {
            let max = syslog.max_message_bytes;
            let input = inputs::syslog::run_udp(socket, shipper.clone(), max, stop.clone());
            tasks.push(spawn_input("syslog_udp", input));
        }
        if let Some(socket) = gelf_udp {
            let max = gelf.max_message_bytes;
            let input = inputs::gelf::run_udp(socket, shipper.clone(), max, stop.clone());
            tasks.push(spawn_input("gelf_udp", input));
        }
        let stop_by_themselves = tasks.len();
        if config.stdin {
            tasks.push(spawn_input("stdin", inputs::stdin::run(shipper.clone())));
        }
        // The targets of the config before a reload are not scraped any more.
        shipper.metrics.scrape_target_up.reset();
        if config.metrics.any() {
            tasks.push(spawn_input(
                "metrics",
                collectors::run(config.clone(), shipper.clone()),
            ));
        }
        let mut names: Vec<&str> = tasks.iter().map(|(name, _)| *name).collect();
        if files.is_some() {
            names.push("files");
        }
        tracing::info!(host = %shipper.host, inputs = %names.join(" "), "agent started");
        Ok(Self {
            shipper,
            tasks: tasks.into_iter().map(|(_, task)| Some(task)).collect(),
            stop_by_themselves,
            stopping,
            files,
            drain,
            upkeep: Some(upkeep),
            listeners,
            _state_lock: state_lock,
        })
    }

    /// The sockets it listens on, for the agent that takes over at a reload.
    pub fn listeners(&self) -> Listeners {
        self.listeners.clone()
    }

    /// Resolves when every input has ended (stdin at its end; files never), or with the error
    /// of the first input that failed: the agent then stops whole, and its supervisor (systemd,
    /// Kubernetes) sees the failure and restarts it, rather than it running on without the input.
    /// Cancel safe: a `select!` may drop it and call it again.
    pub async fn inputs_done(&mut self) -> anyhow::Result<()> {
        let (tasks, files, upkeep) = (&mut self.tasks, &mut self.files, &mut self.upkeep);
        let follows_files = files.is_some();
        // The output's upkeep never ends but by failing (librdkafka's fatal error): the agent
        // ends with it, or nothing would ever send what is refused again.
        let upkeep_failed = async {
            let Some(task) = upkeep.as_mut() else {
                return std::future::pending().await;
            };
            let ended = task.await;
            *upkeep = None;
            match ended {
                Ok(Ok(())) => std::future::pending().await,
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("agent: the output's upkeep panicked: {e}"),
            }
        };
        let files_failed = async {
            match files {
                Some(files) => files.failed().await.context("agent input files"),
                None => std::future::pending().await,
            }
        };
        // All at once: the first failure ends the wait, whichever input it is.
        let tasks_done = std::future::poll_fn(|cx| {
            for slot in tasks.iter_mut() {
                let Some(task) = slot else { continue };
                if let std::task::Poll::Ready(ended) = std::pin::Pin::new(task).poll(cx) {
                    // A handle must not be polled again once it has given its result.
                    *slot = None;
                    let ended = ended
                        .map_err(|e| anyhow::anyhow!("agent: an input panicked: {e}"))
                        .and_then(|result| result);
                    if ended.is_err() {
                        return std::task::Poll::Ready(ended);
                    }
                }
            }
            match tasks.iter().all(Option::is_none) {
                true => std::task::Poll::Ready(Ok(())),
                false => std::task::Poll::Pending,
            }
        });
        tokio::pin!(files_failed);
        tokio::select! {
            done = tasks_done => {
                done?;
                // Files never end; they may still fail.
                match follows_files {
                    true => Err(files_failed.await),
                    false => Ok(()),
                }
            }
            failed = &mut files_failed => Err(failed),
            failed = upkeep_failed => Err(failed),
        }
    }

    /// Stops the inputs and waits, as `patience` allows, for the broker to acknowledge what is
    /// queued; then the file checkpoints take in the last acknowledgements. The spool's drain
    /// and librdkafka's flush share the one `timeout`, so that a stop fits its supervisor's
    /// grace period (systemd's 45 s in the sample unit).
    pub async fn stop(self, patience: Patience) -> anyhow::Result<()> {
        let Patience {
            timeout,
            stalled,
            drain_spool,
            hand_over,
        } = patience;
        let deadline = tokio::time::Instant::now() + timeout;
        // The network inputs end by themselves between two messages (a TCP connection busy
        // with one is given up on after a while: `connections::accept`), so none is lost
        // half shipped; the others, and those still busy after `STOP_BY_THEMSELVES` (one
        // waiting for room in a full spool), are cut short. Awaited, so the sockets they held
        // are closed (or only the next agent's) on return.
        let _ = self.stopping.send(true);
        let by_themselves = tokio::time::Instant::now() + STOP_BY_THEMSELVES;
        for (i, task) in self.tasks.into_iter().enumerate() {
            let Some(mut task) = task else { continue };
            if i >= self.stop_by_themselves
                || tokio::time::timeout_at(by_themselves, &mut task)
                    .await
                    .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        if !hand_over {
            self.listeners.connections.close_all();
        }
        // Refused records stay where `keep_unsent` finds them.
        if let Some(upkeep) = &self.upkeep {
            upkeep.abort();
        }
        let checkpoints = match self.files {
            Some(files) => files.stop().await,
            None => None,
        };
        if let Some(drain) = self.drain {
            // What waits in the spool goes first, as far as the time allows and while the
            // broker takes it (a segment at a time); the rest stays on disk for the next start.
            if let Some(spool) = &self.shipper.spool {
                if let Err(e) = spool.close() {
                    tracing::warn!(error = %e, "agent: syncing the spool");
                }
                let (mut left, mut moved) = (spool.bytes(), tokio::time::Instant::now());
                while drain_spool && left > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let now = spool.bytes();
                    if now < left {
                        (left, moved) = (now, tokio::time::Instant::now());
                    } else if moved.elapsed() > stalled {
                        break;
                    }
                }
            }
            drain.abort();
        }
        let shipper = self.shipper;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let lost = tokio::task::spawn_blocking(move || {
            if let Err(left) = shipper.output.flush(left, stalled) {
                tracing::warn!(
                    records = left,
                    "agent: the broker did not acknowledge everything before the stop: file lines are read again at the next start, syslog, GELF and stdin events are kept in the spool, metric samples are dropped"
                );
            }
            keep_unsent(&shipper)
        })
        .await?;
        if let Some(checkpoints) = checkpoints {
            checkpoints
                .save()
                .map_err(|e| anyhow::anyhow!("agent: writing file checkpoints: {e}"))?;
        }
        if lost > 0 {
            anyhow::bail!("agent: {lost} unacknowledged events of syslog, GELF or stdin could not be kept in the spool at stop");
        }
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// At a stop: the events of inputs that cannot replay that were not acknowledged (librdkafka
/// still held them, the broker being away, or the cluster refused them, the topic missing) go to
/// the spool, for the next start to send, instead of being lost with the process. (They come
/// after what the spool already held.)
/// How many such events could not be kept (the spool full, or failing).
fn keep_unsent(shipper: &Shipper) -> usize {
    let Some(spool) = &shipper.spool else {
        return 0;
    };
    let (mut kept, mut lost) = (0, 0);
    for (key, payload) in shipper.output.take_unsent(&shipper.topic) {
        match spool.keep(&String::from_utf8_lossy(&key), &payload) {
            Ok(true) => kept += 1,
            Ok(false) => lost += 1,
            Err(e) => {
                tracing::warn!(error = %e, "agent: spooling an unsent event at stop");
                lost += 1;
            }
        }
    }
    if let Err(e) = spool.close() {
        tracing::warn!(error = %e, "agent: syncing the spool");
    }
    if kept > 0 {
        tracing::warn!(
            events = kept,
            "agent: events the broker had not acknowledged were kept in the spool for the next start"
        );
    }
    lost
}

impl Listeners {
    /// Only the sockets `config` listens on again: the others are closed, so a new address
    /// that overlaps an old one (`0.0.0.0` for `127.0.0.1`) can be bound.
    pub fn keep_only(&mut self, config: &AgentConfig) {
        let (syslog, gelf) = (&config.syslog, &config.gelf);
        self.udp
            .retain(|addr, _| [&syslog.udp, &gelf.udp].contains(&addr));
        self.tcp
            .retain(|addr, _| [&syslog.tcp, &gelf.tcp].contains(&addr));
    }

    /// The UDP socket of a listener that is on (a non-empty address): `reuse`'s, or bound
    /// now, failing fast on a taken port.
    async fn udp(
        &mut self,
        what: &str,
        addr: &str,
        reuse: &Listeners,
    ) -> anyhow::Result<Option<Arc<UdpSocket>>> {
        if addr.is_empty() {
            return Ok(None);
        }
        let socket = match reuse.udp.get(addr) {
            Some(socket) => socket.clone(),
            None => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("agent {what} UDP {addr}: cannot listen: {e}"))?;
                // Room for a burst, or a reload's pause, beyond the kernel's default (about
                // 200 KiB); the kernel caps it at net.core.rmem_max.
                let granted =
                    rustix::net::sockopt::set_socket_recv_buffer_size(&socket, UDP_RECEIVE_BUFFER)
                        .and_then(|()| rustix::net::sockopt::socket_recv_buffer_size(&socket));
                match granted {
                    // The kernel reports twice what it accounts for: its own bookkeeping.
                    Ok(bytes) if bytes / 2 < UDP_RECEIVE_BUFFER => tracing::info!(
                        what,
                        addr,
                        bytes,
                        "agent: UDP receive buffer smaller than asked (4 MiB): raise \
                         net.core.rmem_max for more room in bursts and reloads"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "agent: UDP receive buffer left at the default")
                    }
                }
                Arc::new(socket)
            }
        };
        self.udp.insert(addr.to_owned(), socket.clone());
        Ok(Some(socket))
    }

    /// As `udp`, for a TCP listener.
    async fn tcp(
        &mut self,
        what: &str,
        addr: &str,
        reuse: &Listeners,
    ) -> anyhow::Result<Option<Arc<TcpListener>>> {
        if addr.is_empty() {
            return Ok(None);
        }
        let listener = match reuse.tcp.get(addr) {
            Some(listener) => listener.clone(),
            None => Arc::new(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("agent {what} TCP {addr}: cannot listen: {e}"))?,
            ),
        };
        self.tcp.insert(addr.to_owned(), listener.clone());
        Ok(Some(listener))
    }
}

/// Runs an input (or the output's upkeep) as a task; its error is logged and kept.
/// The task, with the input's name.
fn spawn_input(
    name: &'static str,
    input: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> (&'static str, JoinHandle<anyhow::Result<()>>) {
    let task = tokio::spawn(async move {
        input.await.map_err(|e| {
            tracing::error!(input = name, error = %e, "agent: input stopped");
            e.context(format!("agent input {name}"))
        })
    });
    (name, task)
}
