//! The TCP inputs' connections: accepted up to a bound, each served in a task of its own, and at
//! a reload handed to the next inputs rather than closed. A connection closed at a reload loses
//! what its sender had in flight (syslog and GELF over TCP have no acknowledgement to resend
//! by), so each connection stops between two messages and leaves its reader, with any bytes it
//! holds, in the `Handover` for the inputs of the new configuration to go on with.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::stopped;
use super::unfinished::{self, Unfinished};
use crate::shipper::Shipper;

/// TCP connections an input serves at once; more are closed as they come, and counted.
const MAX_CONNECTIONS: usize = 1024;

/// After a failed accept (out of file descriptors, most likely), the pause before the next: the
/// connection waits in the backlog, and accepting again at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections not served are said at most this often (the counter tells them all).
const REFUSALS_SAID_EVERY: Duration = Duration::from_secs(60);

/// At a stop, how long a connection has to finish the message it is receiving or shipping; one
/// still busy after it is closed.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// One connection: its reader keeps what was received and not yet read as messages.
pub struct Connection {
    pub reader: BufReader<TcpStream>,
    pub peer: SocketAddr,
}

/// Connections between two messages, by the input and address of the listener that accepted
/// them, left by the inputs of one configuration for those of the next, which take those of
/// their listeners. Dropping it closes the rest.
#[derive(Default, Clone)]
pub struct Handover(Arc<Mutex<Held>>);

/// Connections by the input and address of their listener.
type Held = HashMap<(&'static str, String), Vec<Connection>>;

impl Handover {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, input: &'static str, addr: &str, connections: Vec<Connection>) {
        if !connections.is_empty() {
            let mut held = self.held();
            held.entry((input, addr.to_owned()))
                .or_default()
                .extend(connections);
        }
    }

    /// The connections left for `input`'s listener on `addr`.
    pub fn take(&self, input: &'static str, addr: &str) -> Vec<Connection> {
        self.held()
            .remove(&(input, addr.to_owned()))
            .unwrap_or_default()
    }

    /// Closes every connection held.
    pub fn close_all(&self) {
        self.held().clear();
    }
}

/// Whether a connection stops before its next message: `stop` came first (the reader holds
/// whatever of the next message has come, for the connection's next owner). Otherwise the next
/// bytes have come, or the connection's end.
pub async fn stopping(
    reader: &mut BufReader<TcpStream>,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<bool> {
    tokio::select! {
        biased;
        () = stopped(stop) => Ok(true),
        // Cancel safe: nothing is consumed until the next message is read.
        ready = reader.fill_buf() => ready.map(|_| false),
    }
}

/// A TCP input's listener, and its part in a reload.
pub struct Listening {
    pub listener: Arc<TcpListener>,
    pub addr: String,
    /// The connections the previous inputs left for this listener.
    pub handed: Vec<Connection>,
    /// Where this input leaves its connections when `stop` comes.
    pub handover: Handover,
    pub stop: watch::Receiver<bool>,
}

/// Serves the connections `handed` on, then accepts new ones, each served by `serve` in a task
/// of its own with the memory the input's unfinished messages share, until `stop`. `serve`
/// ends with the connection (`None`) or at `stop`, between two messages (`Some`). The tasks
/// belong to this loop: at `stop` each has `FINISH_WAIT` to finish its message and is left in
/// the handover, or closed, rather than living on with the old configuration beside the new one.
pub async fn accept<S, F>(
    listening: Listening,
    input: &'static str,
    shipper: &Shipper,
    serve: S,
) -> anyhow::Result<()>
where
    S: Fn(Connection, Unfinished, watch::Receiver<bool>) -> F,
    F: Future<Output = anyhow::Result<Option<Connection>>> + Send + 'static,
{
    let Listening {
        listener,
        addr,
        handed,
        handover,
        mut stop,
    } = listening;
    let connections_stop = stop.clone();
    let mut connections = tokio::task::JoinSet::new();
    let unfinished = Unfinished::new(unfinished::SHARED);
    if !handed.is_empty() {
        tracing::info!(
            input,
            connections = handed.len(),
            "agent: TCP connections carried over to the new configuration"
        );
    }
    let spawn = |connections: &mut tokio::task::JoinSet<_>, connection: Connection| {
        let peer = connection.peer;
        let serving = serve(connection, unfinished.clone(), connections_stop.clone());
        connections.spawn(async move {
            serving.await.unwrap_or_else(|e| {
                tracing::debug!(input, %peer, error = %e, "agent: TCP connection ended");
                None
            })
        });
    };
    for connection in handed {
        spawn(&mut connections, connection);
    }
    let counter = shipper
        .metrics
        .connections_refused
        .with_label_values(&[input]);
    let mut said: Option<Instant> = None;
    // The connections stopped between two messages, for the handover.
    let mut left = Vec::new();
    // `closed`: a connection closed unserved (counted); else one left waiting in the backlog.
    let mut not_served = |why: &str, open: usize, closed: bool| {
        if closed {
            counter.inc();
        }
        if said.is_none_or(|at| at.elapsed() >= REFUSALS_SAID_EVERY) {
            said = Some(Instant::now());
            tracing::warn!(
                input,
                connections = open,
                "agent: TCP connections not served: {why}"
            );
        }
    };
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                // A connection the process cannot take is not a reason to stop the others.
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) if out_of_resources(&e) => {
                        let why = format!(
                            "cannot accept them ({e}; out of file descriptors? raise \
                             LimitNOFILE); they wait in the backlog"
                        );
                        not_served(&why, connections.len(), false);
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                    // A peer gone before it was accepted, say: the next one is served at once.
                    Err(e) => {
                        tracing::debug!(input, error = %e, "agent: accepting a TCP connection");
                        continue;
                    }
                };
                if connections.len() >= MAX_CONNECTIONS {
                    not_served(
                        "as many are open as an input serves; closed \
                         (sluice_agent_connections_refused_total counts them)",
                        connections.len(),
                        true,
                    );
                    continue;
                }
                let connection = Connection {
                    reader: BufReader::new(stream),
                    peer,
                };
                spawn(&mut connections, connection);
            }
            // A connection that saw the stop before this loop did is kept too.
            Some(ended) = connections.join_next() => left.extend(ended.ok().flatten()),
        }
    }
    let deadline = tokio::time::Instant::now() + FINISH_WAIT;
    while let Ok(Some(ended)) = tokio::time::timeout_at(deadline, connections.join_next()).await {
        left.extend(ended.ok().flatten());
    }
    let busy = connections.len();
    connections.shutdown().await;
    if busy > 0 {
        tracing::warn!(
            input,
            connections = busy,
            "agent: TCP connections still receiving or shipping a message at the stop were closed"
        );
    }
    handover.put(input, &addr, left);
    Ok(())
}

/// An accept that failed for want of descriptors or memory: the next would fail too at once.
fn out_of_resources(error: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(error)
        .is_some_and(|e| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&e))
}
