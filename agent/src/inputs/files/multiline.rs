//! Joining multi-line events (a stack trace and its header line): a line that matches the start
//! pattern begins an event, any other line joins the event before it. An event is shipped when
//! the next one starts, or `timeout` after its last line. An event is at most `max_bytes`: a
//! longer one is shipped in parts, each line whole in one of them (as long as the line itself
//! fits), so that no line is lost.

use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::format::Decoded;

pub struct Joiner {
    start: Regex,
    timeout: Duration,
    max_bytes: usize,
    pending: Option<(Decoded<'static>, Instant)>,
}

impl Joiner {
    pub fn new(start: Regex, timeout: Duration, max_bytes: usize) -> Self {
        Self {
            start,
            timeout,
            max_bytes,
            pending: None,
        }
    }

    /// Takes a line; returns the event it completes, if any.
    pub fn push(&mut self, next: Decoded<'_>, now: Instant) -> Option<Decoded<'static>> {
        let line = &next.line;
        let joining = self.pending.as_mut().filter(|(pending, _)| {
            pending.line.bytes.len() + 1 + line.bytes.len() <= self.max_bytes
                && !self.start.is_match(&line.bytes)
        });
        if let Some((Decoded { line: event, .. }, last)) = joining {
            let bytes = event.bytes.to_mut();
            bytes.push(b'\n');
            bytes.extend_from_slice(&line.bytes);
            event.truncated |= line.truncated;
            event.end = line.end;
            *last = now;
            return None;
        }
        // A new event; or the one held is full, and this line begins its next part.
        self.pending
            .replace((next.into_owned(), now))
            .map(|(event, _)| event)
    }

    /// The event waiting for more lines, once `timeout` passed without one.
    pub fn expired(&mut self, now: Instant) -> Option<Decoded<'static>> {
        match &self.pending {
            Some((_, last)) if now.duration_since(*last) >= self.timeout => self.flush(),
            _ => None,
        }
    }

    pub fn flush(&mut self) -> Option<Decoded<'static>> {
        self.pending.take().map(|(event, _)| event)
    }

    /// Where the event held back starts: the checkpoint must not pass it.
    pub fn holding(&self) -> Option<u64> {
        self.pending.as_ref().map(|(event, _)| event.line.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::files::tailer::Line;

    fn line(start: u64, text: &str) -> Decoded<'_> {
        Decoded {
            line: Line {
                start,
                end: start + text.len() as u64 + 1,
                bytes: text.as_bytes().into(),
                truncated: false,
            },
            stream: None,
            time: None,
        }
    }

    #[test]
    fn stack_traces_join_their_header() {
        let mut joiner = Joiner::new(
            Regex::new(r"^\d{4}-").unwrap(),
            Duration::from_secs(1),
            1000,
        );
        let now = Instant::now();
        assert_eq!(joiner.push(line(0, "2026-01-01 boom"), now), None);
        assert_eq!(joiner.push(line(16, "  at a()"), now), None);
        assert_eq!(joiner.push(line(25, "  at b()"), now), None);
        let event = joiner.push(line(34, "2026-01-01 next"), now).unwrap().line;
        assert_eq!(event.bytes, &b"2026-01-01 boom\n  at a()\n  at b()"[..]);
        assert_eq!((event.start, event.end), (0, 34));
        assert_eq!(joiner.holding(), Some(34));
        assert_eq!(joiner.expired(now), None);
        let last = joiner.expired(now + Duration::from_secs(2)).unwrap().line;
        assert_eq!(last.bytes, &b"2026-01-01 next"[..]);
        assert_eq!(joiner.holding(), None);
    }

    /// An event longer than `max_bytes` goes in parts: no line of it is lost.
    #[test]
    fn an_event_too_long_is_shipped_in_parts() {
        let mut joiner = Joiner::new(Regex::new(r"^start").unwrap(), Duration::from_secs(1), 20);
        let now = Instant::now();
        let mut parts = Vec::new();
        let mut at = 0;
        for text in [
            "start a", "  line 1", "  line 2", "  line 3", "  line 4", "start b",
        ] {
            parts.extend(joiner.push(line(at, text), now));
            at += text.len() as u64 + 1;
        }
        parts.extend(joiner.flush());
        let texts: Vec<&[u8]> = parts.iter().map(|p| &p.line.bytes[..]).collect();
        assert_eq!(
            texts,
            [
                &b"start a\n  line 1"[..],
                b"  line 2\n  line 3",
                b"  line 4",
                b"start b"
            ]
        );
        assert!(parts.iter().all(|p| !p.line.truncated));
    }
}
