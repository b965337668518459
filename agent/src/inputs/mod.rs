//! Where events come from. `files` follows log files (plain, Docker's, CRI's) with checkpoints;
//! `syslog` and `gelf` listen on UDP and TCP; `stdin` reads this process's standard input. Inputs
//! that cannot replay what they read (syslog, GELF, stdin) keep no checkpoint: what they hand the
//! output is retried until the broker acknowledges it.

pub mod files;
pub mod gelf;
pub mod stdin;
pub mod syslog;
mod unfinished;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::{TcpListener, TcpStream};

use crate::shipper::Shipper;
use unfinished::{Incoming, Unfinished};

/// TCP connections an input serves at once; more are closed as they come, and counted.
const MAX_CONNECTIONS: usize = 1024;

/// After a failed accept (out of file descriptors, most likely), the pause before the next: the
/// connection waits in the backlog, and accepting again at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections not served are said at most this often (the counter tells them all).
const REFUSALS_SAID_EVERY: Duration = Duration::from_secs(60);

/// Accepts TCP connections for ever, each served by `serve` in a task of its own, with the
/// memory the input's unfinished messages share. The tasks belong to this loop: when it is
/// stopped (the agent stopping, or restarting its inputs on a new configuration) its connections
/// end with it, rather than living on with the old configuration and the old spool beside the
/// new one.
pub async fn accept<S, F>(
    listener: Arc<TcpListener>,
    input: &'static str,
    shipper: &Shipper,
    serve: S,
) -> anyhow::Result<()>
where
    S: Fn(TcpStream, SocketAddr, Unfinished) -> F,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    let unfinished = Unfinished::new(unfinished::SHARED);
    let counter = shipper
        .metrics
        .connections_refused
        .with_label_values(&[input]);
    let mut said: Option<Instant> = None;
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
                let connection = serve(stream, peer, unfinished.clone());
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(input, %peer, error = %e, "agent: TCP connection ended");
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// An accept that failed for want of descriptors or memory: the next would fail too at once.
fn out_of_resources(error: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(error)
        .is_some_and(|e| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&e))
}

/// One line of at most `max` bytes (without its newline or a CR before it); a longer line, or
/// one the input's connections have no memory left for, is cut, the rest of it skipped, and
/// `cut` set. `None` at the end of the input.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    line: &mut Incoming,
) -> std::io::Result<Option<bool>> {
    let cut = read_until(reader, b'\n', max, line).await?;
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(cut)
}

/// Reads into `record` one record ended by `delim` (not included; the input's end also ends
/// one) of at most `max` bytes; a longer record, or one the input's connections have no memory
/// left for, is cut, the rest of it skipped. Whether it was cut; `None` at the end of the input.
pub async fn read_until<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    delim: u8,
    max: usize,
    record: &mut Incoming,
) -> std::io::Result<Option<bool>> {
    let mut cut = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!record.is_empty() || cut).then_some(cut));
        }
        let (chunk, done) = match memchr::memchr(delim, available) {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        cut |= !record.push(chunk, max);
        let used = done.unwrap_or(available.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(cut));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_cut() {
        let input = b"short\r\nthis one is too long\nlast".to_vec();
        let mut reader = tokio::io::BufReader::with_capacity(4, &input[..]);
        let pool = Unfinished::new(0);
        let mut lines = Vec::new();
        loop {
            let mut line = pool.message();
            let Some(cut) = read_line(&mut reader, 8, &mut line).await.unwrap() else {
                break;
            };
            lines.push((line.to_vec(), cut));
        }
        assert_eq!(
            lines,
            [
                (b"short".to_vec(), false),
                (b"this one".to_vec(), true),
                (b"last".to_vec(), false),
            ]
        );
    }

    #[tokio::test]
    async fn null_delimited_frames_are_bounded_and_cut() {
        let input = b"{\"a\":1}\0{\"too\":\"long\"}\0\0{\"b\":2}\0".to_vec();
        let mut reader = tokio::io::BufReader::with_capacity(4, &input[..]);
        let pool = Unfinished::new(0);
        let mut frames = Vec::new();
        loop {
            let mut frame = pool.message();
            let Some(cut) = read_until(&mut reader, 0, 9, &mut frame).await.unwrap() else {
                break;
            };
            frames.push((frame.to_vec(), cut));
        }
        assert_eq!(
            frames,
            [
                (b"{\"a\":1}".to_vec(), false),
                (b"{\"too\":\"l".to_vec(), true),
                (Vec::new(), false),
                (b"{\"b\":2}".to_vec(), false),
            ]
        );
    }
}
