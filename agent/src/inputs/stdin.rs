//! Lines from standard input, one event each, until the input ends.
//!
//! One thread reads stdin for the whole process. A blocking read cannot be cancelled: an input
//! of its own per start would leave the old read behind at a reload, to take the next lines
//! and drop them, and would hold the process at a stop until the writer sent another line.
//! Each start's input takes its lines from that thread instead.

use std::io::{BufRead, Read};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Mutex};

use crate::event::{now_rfc3339, Event};
use crate::shipper::Shipper;

const MAX_LINE_BYTES: usize = 256 << 10;

/// Lines read ahead of the input: at most this many lines wait in memory.
const LINES_WAITING: usize = 16;

/// A line without its newline, and whether it was cut at `MAX_LINE_BYTES`.
type Line = (Vec<u8>, bool);

pub async fn run(shipper: Arc<Shipper>) -> anyhow::Result<()> {
    // One input at a time takes the lines (the one of a reload waits for its predecessor).
    let mut lines = lines()?.lock().await;
    let mut line_no = 0u64;
    while let Some(read) = lines.recv().await {
        let (line, cut) = read.map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
        line_no += 1;
        shipper.read("stdin", line.len());
        if cut {
            shipper.malformed("stdin", "truncated");
        }
        let message = shipper.text("stdin", &line);
        let event = Event {
            id: shipper.event_id("stdin", line_no),
            timestamp: now_rfc3339(),
            host: shipper.host.clone(),
            source: "stdin".into(),
            container: None,
            stream: None,
            level: None,
            message,
            fields: Default::default(),
        };
        shipper.ship("stdin", &event).await?;
    }
    tracing::info!(lines = line_no, "agent: stdin ended");
    Ok(())
}

/// The lines of stdin, from the thread that reads it (started at the first call).
fn lines() -> std::io::Result<&'static Mutex<mpsc::Receiver<std::io::Result<Line>>>> {
    static LINES: OnceLock<Mutex<mpsc::Receiver<std::io::Result<Line>>>> = OnceLock::new();
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lines) = LINES.get() {
        return Ok(lines);
    }
    let (sender, receiver) = mpsc::channel(LINES_WAITING);
    std::thread::Builder::new()
        .name("sluice-agent-stdin".into())
        .spawn(move || read_stdin(&sender))?;
    Ok(LINES.get_or_init(|| Mutex::new(receiver)))
}

/// Hands on every line, then a read error if one ends the input (the agent ends with it).
fn read_stdin(lines: &mpsc::Sender<std::io::Result<Line>>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let read = match next_line(&mut stdin, MAX_LINE_BYTES) {
            Ok(Some(line)) => Ok(line),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = read.is_err();
        if lines.blocking_send(read).is_err() || failed {
            return;
        }
    }
}

/// The next line of at most `max` bytes (without its newline or a CR before it); a longer
/// line is cut, the rest of it skipped. `None` at the end of the input.
fn next_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    // Room for the line, a CR and its newline.
    reader
        .by_ref()
        .take(max as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > max {
        reader.skip_until(b'\n')?;
    }
    let cut = line.len() > max;
    line.truncate(max);
    Ok(Some((line, cut)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_cut() {
        let mut reader = std::io::BufReader::with_capacity(
            4,
            &b"short\r\n12345678\n12345678\r\n123456789\r\nthis one is too long\nlast"[..],
        );
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut reader, 8).unwrap() {
            lines.push(line);
        }
        assert_eq!(
            lines,
            [
                (b"short".to_vec(), false),
                (b"12345678".to_vec(), false),
                (b"12345678".to_vec(), false),
                (b"12345678".to_vec(), true),
                (b"this one".to_vec(), true),
                (b"last".to_vec(), false),
            ]
        );
    }
}
