//! Where events come from. `files` follows log files (plain, Docker's, CRI's) with checkpoints;
//! `syslog` and `gelf` listen on UDP and TCP; `stdin` reads this process's standard input. Inputs
//! that cannot replay what they read (syslog, GELF, stdin) keep no checkpoint: what they hand the
//! output is retried until the broker acknowledges it. `connections` serves the TCP inputs'
//! connections and hands them to the next inputs at a reload.

pub mod connections;
pub mod files;
pub mod gelf;
pub mod stdin;
pub mod syslog;
mod unfinished;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::watch;

use unfinished::Incoming;

/// Resolves once the agent stops its inputs: the network inputs end between two messages. A
/// sender gone counts as a stop: the agent that would have sent it is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
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
    use super::unfinished::Unfinished;
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
