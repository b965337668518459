//! The file input's shipper thread: every line of a batch becomes an event, written straight
//! into one reused buffer (what a batch's events share is encoded once per batch), and queued
//! on the output under the batch's key with the batch's settle as its acknowledgement.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::format::{Decoded, Origin};
use crate::acks::Settle;
use crate::event::{json, message_kept, now_ms, rfc3339_ms};
use crate::shipper::Shipper;

/// Events of one file, read and not shipped yet; their range is already pending.
pub struct Batch {
    input: &'static str,
    identity: Arc<str>,
    origin: Arc<Origin>,
    settle: Arc<Settle>,
    events: Events,
}

/// A file's events as they are decoded: their messages, streams and times one after another in
/// one buffer, rather than one allocation per line.
#[derive(Default)]
pub struct Events {
    text: Vec<u8>,
    spans: Vec<Span>,
    /// Where the earliest event starts in the file: not always the first's, as a Docker or CRI
    /// line put together from parts (stdout's and stderr's interleave) starts before the lines
    /// that came whole between its parts.
    start: u64,
    /// Where the last event ends in the file.
    end: u64,
    truncated: usize,
}

/// One event of a batch: where it is in its file, and where its parts are in the batch's text.
struct Span {
    start: u64,
    truncated: bool,
    message: Range<usize>,
    stream: Option<Range<usize>>,
    time: Option<Range<usize>>,
}

impl Batch {
    pub fn new(
        input: &'static str,
        identity: Arc<str>,
        origin: Arc<Origin>,
        settle: Arc<Settle>,
        events: Events,
    ) -> Self {
        Self {
            input,
            identity,
            origin,
            settle,
            events,
        }
    }
}

impl Events {
    pub fn of(event: &Decoded<'_>) -> Self {
        let mut events = Self::default();
        events.push(event);
        events
    }

    pub fn push(&mut self, event: &Decoded<'_>) {
        let message = self.keep(&event.line.bytes);
        let stream = event.stream.as_ref().map(|s| self.keep(s.as_bytes()));
        let time = event.time.as_ref().map(|t| self.keep(t.as_bytes()));
        self.start = match self.spans.is_empty() {
            true => event.line.start,
            false => self.start.min(event.line.start),
        };
        self.spans.push(Span {
            start: event.line.start,
            truncated: event.line.truncated,
            message,
            stream,
            time,
        });
        self.end = self.end.max(event.line.end);
        self.truncated += usize::from(event.line.truncated);
    }

    /// The part of the file the events span.
    pub fn range(&self) -> Option<(u64, u64)> {
        (!self.spans.is_empty()).then_some((self.start, self.end))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// How many were cut at `max_line_bytes`.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        start..self.text.len()
    }
}

/// Every line an event, queued on the output (waiting while its queue is full), until the
/// reader is gone and the channel empty; or, once `stop` is set, until the output stops taking
/// records (the broker away): the rest of the batch is left unsent, its lines stay pending and
/// are read again at the next start, and the stop does not wait for the broker.
pub fn ship_batches(
    batches: &crossbeam_channel::Receiver<Batch>,
    shipper: &Shipper,
    runtime: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut payload = Vec::new();
    for batch in batches.iter() {
        let shared = Shared::of(&batch, &shipper.host, shipper.max_record_bytes);
        let shipped = runtime.block_on(async {
            let ship = async {
                // The partitioner places the batch's first line; the others follow it.
                let mut partition = None;
                for span in &batch.events.spans {
                    let (valid, cut) = shared.write(&mut payload, &batch.events.text, span);
                    if !valid {
                        shipper.malformed(batch.input, "invalid_utf8");
                    }
                    if cut {
                        shipper.malformed(batch.input, "truncated");
                    }
                    let (key, settle) = (&shared.key, &batch.settle);
                    shipper
                        .ship_file_line(partition, key, &payload, settle, shared.read_at)
                        .await?;
                    partition = partition.or_else(|| shipper.output.logs_partition(key));
                }
                anyhow::Ok(true)
            };
            let stuck_at_stop = async {
                while !(stop.load(Ordering::Relaxed) && shipper.output.stalled()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(false)
            };
            tokio::select! {
                shipped = ship => shipped,
                abandoned = stuck_at_stop => abandoned,
            }
        });
        match shipped {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("agent: stopping while the broker takes nothing; unsent lines are read again at the next start");
                return Ok(());
            }
            Err(e) => return Err(e.context("the file shipper stopped")),
        }
    }
    Ok(())
}

/// What a batch's events share, encoded once.
struct Shared {
    /// `host/source`: one source stays on one partition.
    key: Vec<u8>,
    /// When the batch was shipped, in ms: the record's timestamp, and the event's where the
    /// format gives none.
    read_at: i64,
    /// `{"id":"<host>:<identity>:` (open: the line's offset ends the id).
    id_prefix: Vec<u8>,
    /// The batch's time as a JSON string.
    read_at_json: Vec<u8>,
    /// `,"host":…,"source":…` and the container where known.
    origin: Vec<u8>,
    /// The most an event may be: a record's, less the key.
    budget: usize,
}

impl Shared {
    /// `max_record` is the most a record may be (`AgentConfig::max_record_bytes`).
    fn of(batch: &Batch, host: &str, max_record: usize) -> Self {
        let source = &batch.origin.source;
        let read_at = now_ms();
        let mut id_prefix = b"{".to_vec();
        json::push_key(&mut id_prefix, "id");
        json::push_str(
            &mut id_prefix,
            format!("{host}:{}:", batch.identity).as_bytes(),
        );
        id_prefix.pop();
        let mut read_at_json = Vec::new();
        json::push_str(&mut read_at_json, rfc3339_ms(read_at).as_bytes());
        let mut origin = Vec::new();
        json::push_key(&mut origin, "host");
        json::push_str(&mut origin, host.as_bytes());
        json::push_key(&mut origin, "source");
        json::push_str(&mut origin, source.as_bytes());
        if let Some(container) = &batch.origin.container {
            json::push_key(&mut origin, "container");
            json::push_value(&mut origin, container);
        }
        let key = format!("{host}/{source}").into_bytes();
        Self {
            budget: max_record.saturating_sub(key.len()),
            key,
            read_at,
            id_prefix,
            read_at_json,
            origin,
        }
    }

    /// Writes the event of `span` into `out` (cleared first); whether its text was valid UTF-8,
    /// and whether its message had to be cut to fit a record (`budget`): escaping can
    /// make a line six times its length (a control byte becomes `\u0001`), and librdkafka
    /// refuses a record over its limit, which would lose the line.
    fn write(&self, out: &mut Vec<u8>, text: &[u8], span: &Span) -> (bool, bool) {
        let valid = self.encode(out, text, span, span.message.clone(), span.truncated);
        let budget = self.budget;
        let mut message = span.message.clone();
        while out.len() > budget && !message.is_empty() {
            message.end = message.start + message_kept(message.len(), out.len(), budget);
            self.encode(out, text, span, message.clone(), true);
        }
        (valid, message != span.message)
    }

    /// The keys are literals here: this runs for every line.
    fn encode(
        &self,
        out: &mut Vec<u8>,
        text: &[u8],
        span: &Span,
        message: Range<usize>,
        truncated: bool,
    ) -> bool {
        out.clear();
        out.extend_from_slice(&self.id_prefix);
        let offset = out.len();
        json::push_u64(out, span.start);
        let offset = offset..out.len();
        out.extend_from_slice(b"\",\"timestamp\":");
        match &span.time {
            // The line's own time where the format gives one (Docker, CRI).
            Some(time) => {
                json::push_str(out, &text[time.clone()]);
            }
            None => out.extend_from_slice(&self.read_at_json),
        }
        out.extend_from_slice(&self.origin);
        if let Some(stream) = &span.stream {
            out.extend_from_slice(b",\"stream\":");
            json::push_str(out, &text[stream.clone()]);
        }
        out.extend_from_slice(b",\"message\":");
        let valid = json::push_str(out, &text[message]);
        out.extend_from_slice(b",\"fields\":{\"offset\":");
        out.extend_from_within(offset);
        if truncated {
            out.extend_from_slice(b",\"truncated\":true");
        }
        out.extend_from_slice(b"}}");
        valid
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::acks::Progress;
    use crate::inputs::files::tailer::Line;

    fn decoded<'a>(
        start: u64,
        text: &'a [u8],
        stream: Option<&'a str>,
        time: Option<&'a str>,
    ) -> Decoded<'a> {
        Decoded {
            line: Line {
                start,
                end: start + text.len() as u64 + 1,
                bytes: text.into(),
                truncated: text.len() > 8,
            },
            stream: stream.map(Into::into),
            time: time.map(Into::into),
        }
    }

    /// A line put together from parts that began before lines which came whole between them
    /// (stdout's and stderr's interleave): the batch's range starts at its first part, so the
    /// checkpoint cannot pass it before the broker has it.
    #[test]
    fn a_batch_spans_from_its_earliest_event() {
        let mut events = Events::default();
        events.push(&decoded(100, b"err", Some("stderr"), None));
        let mut joined = decoded(0, b"out", Some("stdout"), None);
        joined.line.end = 250;
        events.push(&joined);
        assert_eq!(events.range(), Some((0, 250)));
        assert_eq!(Events::default().range(), None);
    }

    /// A line that escaping makes too large for a record (250 000 control bytes become
    /// 1.5 MB of `\u0001`) is cut until its event fits, and marked, rather than refused.
    #[test]
    fn an_event_that_escaping_makes_too_large_is_cut_to_fit() {
        let line = vec![1u8; 250_000];
        let mut events = Events::default();
        events.push(&decoded(0, &line, None, None));
        let settle = Settle::queued(&Progress::new(0), 0, 250_001, 1);
        let origin = Arc::new(Origin {
            source: "/var/log/x.log".into(),
            container: None,
        });
        let batch = Batch::new("file", "1.2.3".into(), origin, settle, events);
        let max_record = 999_000;
        let shared = Shared::of(&batch, "h", max_record);
        let mut out = Vec::new();
        let written = shared.write(&mut out, &batch.events.text, &batch.events.spans[0]);
        assert_eq!(written, (true, true));
        assert!(out.len() + shared.key.len() <= max_record, "{}", out.len());
        assert!(out.len() > max_record / 2, "{}", out.len());
        let event: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(event["fields"]["truncated"], true);
        assert!(event["message"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c == '\u{1}'));
    }

    #[test]
    fn events_of_a_batch_follow_the_contract() {
        let origin = Origin {
            source: "/var/log/a \"b\".log".into(),
            container: Some(json!({"id": "c1", "name": "web", "labels": {"app": "x"}})),
        };
        let events = [
            decoded(0, b"first", None, None),
            decoded(
                6,
                b"second \"quoted\" \xff",
                Some("stderr"),
                Some("2026-11-23T01:02:03.123456789Z"),
            ),
        ];
        let settle = Settle::queued(&Progress::new(0), 0, 30, 2);
        let mut decoded = Events::default();
        for event in &events {
            decoded.push(event);
        }
        assert_eq!(decoded.range(), Some((0, 6 + 17 + 1)));
        assert_eq!(decoded.truncated(), 1);
        let batch = Batch::new(
            "docker",
            "7.1.2.3".into(),
            Arc::new(origin),
            settle,
            decoded,
        );
        let shared = Shared::of(&batch, "node-1", 999_000);
        assert_eq!(shared.key, b"node-1//var/log/a \"b\".log");
        let mut out = Vec::new();
        let (text, spans) = (&batch.events.text, &batch.events.spans);
        assert_eq!(shared.write(&mut out, text, &spans[0]), (true, false));
        let first: Value = serde_json::from_slice(&out).unwrap();
        let read_at = rfc3339_ms(shared.read_at);
        assert_eq!(
            first,
            json!({
                "id": "node-1:7.1.2.3:0",
                "timestamp": read_at,
                "host": "node-1",
                "source": "/var/log/a \"b\".log",
                "container": {"id": "c1", "name": "web", "labels": {"app": "x"}},
                "message": "first",
                "fields": {"offset": 0},
            })
        );
        assert_eq!(
            shared.write(&mut out, text, &spans[1]),
            (false, false),
            "invalid UTF-8 is reported"
        );
        let second: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(second["id"], "node-1:7.1.2.3:6");
        assert_eq!(second["timestamp"], "2026-11-23T01:02:03.123456789Z");
        assert_eq!(second["stream"], "stderr");
        assert_eq!(second["message"], "second \"quoted\" \u{fffd}");
        assert_eq!(second["fields"], json!({"offset": 6, "truncated": true}));
    }
}
