//! What every input hands its events to: counting (lines, bytes, defects), the spool for inputs
//! that cannot replay, and the Kafka output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::acks::Settle;
use crate::event::{message_kept, now_ms, Event};
use crate::metrics::AgentMetrics;
use crate::output::KafkaOutput;
use crate::spool::{self, Spool, Spooled};

/// What every input needs: the output, the metrics, and the names ids are made of.
pub struct Shipper {
    pub output: Arc<KafkaOutput>,
    /// Where events of inputs that cannot replay wait while the broker is slow or away.
    pub spool: Option<Arc<Spool>>,
    pub metrics: AgentMetrics,
    /// Topic the log events go to.
    pub topic: String,
    /// This host's name, for events that name none.
    pub host: String,
    /// The agent's start time in ms: ids of inputs that cannot replay are unique per run.
    pub run: i64,
    /// TCP connections accepted this run, by every input: each has its own ids.
    pub connections: AtomicU64,
    /// The most a record may be (`AgentConfig::max_record_bytes`): larger events are cut.
    pub max_record_bytes: usize,
}

impl Shipper {
    /// The id of the `seq`th event of an input that cannot replay: unique per host, input and
    /// run.
    pub fn event_id(&self, input: &str, seq: u64) -> String {
        format!("{}/{input}/{}/{seq}", self.host, self.run)
    }

    /// A number for a TCP connection just accepted, unique this run.
    pub fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed)
    }

    /// The id of the `seq`th message of TCP connection `connection` (see `next_connection`):
    /// connections never share an id, whatever their peers' addresses and ports.
    pub fn connection_event_id(&self, input: &str, connection: u64, seq: u64) -> String {
        format!("{}/{input}/{}/{connection}.{seq}", self.host, self.run)
    }

    pub fn read(&self, input: &str, bytes: usize) {
        self.read_many(input, 1, bytes);
    }

    /// `lines` lines (or messages) of `bytes` bytes together.
    pub fn read_many(&self, input: &str, lines: usize, bytes: usize) {
        self.metrics
            .lines_read
            .with_label_values(&[input])
            .inc_by(lines as u64);
        self.metrics
            .bytes_read
            .with_label_values(&[input])
            .inc_by(bytes as u64);
    }

    pub fn malformed(&self, input: &str, reason: &str) {
        self.metrics
            .malformed
            .with_label_values(&[input, reason])
            .inc();
    }

    /// The bytes as text; invalid UTF-8 is replaced and counted.
    pub fn text(&self, input: &str, bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                self.malformed(input, "invalid_utf8");
                String::from_utf8_lossy(bytes).into_owned()
            }
        }
    }

    /// Queues an event of an input that cannot replay, keyed by its host and source so one source
    /// stays on one partition; through the spool while the broker is slow or away (librdkafka's
    /// queue full or long), so the input never waits for the broker.
    pub async fn ship(&self, input: &str, event: &Event) -> anyhow::Result<()> {
        let key = format!("{}/{}", event.host, event.source);
        let payload = self.fitting(
            input,
            event,
            self.max_record_bytes.saturating_sub(key.len()),
        );
        let shipped = async {
            if let Some(spool) = &self.spool {
                loop {
                    match spool
                        .offer(spool::pressed(&self.output), &key, &payload)
                        .await
                    {
                        Ok(Spooled::Kept | Spooled::Dropped) => return Ok(()),
                        Ok(Spooled::NotNeeded) => {}
                        // The disk failed us: librdkafka's bounded memory queue still holds it.
                        Err(e) => {
                            tracing::warn!(input, error = %e, "agent: spooling an event");
                            break;
                        }
                    }
                    if self
                        .output
                        .try_send(&self.topic, key.as_bytes(), &payload, now_ms())?
                    {
                        return Ok(());
                    }
                }
            }
            self.output
                .send(&self.topic, key.as_bytes(), &payload, now_ms(), None)
                .await
        };
        shipped.await.map_err(|e| {
            tracing::warn!(input, error = %e, "agent: shipping an event");
            e
        })
    }

    /// The event's JSON, its message cut (and the event marked `fields.truncated`, and counted)
    /// until it is at most `budget` bytes; when its fields are what is too large, they go
    /// (`fields.fields_dropped`) and the message stays.
    fn fitting(&self, input: &str, event: &Event, budget: usize) -> Vec<u8> {
        let mut payload = event.to_json();
        if payload.len() <= budget {
            return payload;
        }
        self.malformed(input, "truncated");
        let mut cut = event.clone();
        cut.fields.insert("truncated".into(), true.into());
        payload = Self::shortened(&mut cut, budget);
        if payload.len() > budget {
            // The fields are what is too large (a GELF message's additional fields): the
            // message goes whole, without them.
            cut.message.clone_from(&event.message);
            cut.fields.clear();
            cut.fields.insert("truncated".into(), true.into());
            cut.fields.insert("fields_dropped".into(), true.into());
            payload = Self::shortened(&mut cut, budget);
        }
        payload
    }

    /// `event` with its message cut until it fits `budget`, or is empty.
    fn shortened(event: &mut Event, budget: usize) -> Vec<u8> {
        let mut payload = event.to_json();
        while payload.len() > budget && !event.message.is_empty() {
            let keep = message_kept(event.message.len(), payload.len(), budget);
            let keep = (0..=keep)
                .rev()
                .find(|&at| event.message.is_char_boundary(at))
                .unwrap_or(0);
            event.message.truncate(keep);
            payload = event.to_json();
        }
        payload
    }

    /// Queues a file's event, already encoded, to `partition` where known (see
    /// `KafkaOutput::logs_partition`); `settle` is told when the broker has it.
    pub async fn ship_file_line(
        &self,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        settle: &Arc<Settle>,
        timestamp: i64,
    ) -> anyhow::Result<()> {
        let output = &self.output;
        match partition {
            Some(p) => {
                output
                    .send_to_partition(p, &self.topic, key, payload, timestamp, settle)
                    .await
            }
            None => {
                output
                    .send(&self.topic, key, payload, timestamp, Some(settle))
                    .await
            }
        }
    }
}

#[cfg(test)]
impl Shipper {
    /// A shipper on host `h` whose producer has no broker to reach.
    pub(crate) fn testing() -> Self {
        let metrics = AgentMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = crate::config::AgentConfig::default();
        let output = KafkaOutput::new(&config, metrics.clone());
        Shipper {
            output: Arc::new(output.unwrap()),
            spool: None,
            metrics,
            topic: "logs".into(),
            host: "h".into(),
            run: 1,
            connections: Default::default(),
            max_record_bytes: config.max_record_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event that escaping makes too large for a record (control bytes become six) is cut
    /// to fit, marked and counted, rather than refused by librdkafka and lost.
    #[test]
    fn an_event_too_large_once_escaped_is_cut_to_fit() {
        let shipper = Shipper::testing();
        let event = Event {
            id: "id".into(),
            timestamp: "2026-12-07T00:00:00.000Z".into(),
            host: "h".into(),
            source: "syslog".into(),
            container: None,
            stream: None,
            level: None,
            message: "\u{1}".repeat(300_000),
            fields: Default::default(),
        };
        let payload = shipper.fitting("syslog_tcp", &event, 100_000);
        assert!(
            payload.len() <= 100_000 && payload.len() > 50_000,
            "{}",
            payload.len()
        );
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["fields"]["truncated"], true);
        let counted = shipper
            .metrics
            .malformed
            .with_label_values(&["syslog_tcp", "truncated"]);
        assert_eq!(counted.get(), 1);
        let small = Event {
            message: "fits".into(),
            ..event
        };
        assert_eq!(
            shipper.fitting("syslog_tcp", &small, 100_000),
            small.to_json()
        );
    }

    /// An event whose fields are what is too large (a GELF message's additional fields) keeps
    /// its message and loses its fields, marked, rather than being refused and lost.
    #[test]
    fn an_event_whose_fields_are_too_large_keeps_its_message() {
        let shipper = Shipper::testing();
        let mut fields = serde_json::Map::new();
        fields.insert("blob".into(), "x".repeat(200_000).into());
        fields.insert("user".into(), "alice".into());
        let event = Event {
            id: "id".into(),
            timestamp: "2026-12-07T00:00:00.000Z".into(),
            host: "h".into(),
            source: "gelf".into(),
            container: None,
            stream: None,
            level: None,
            message: "disk full".into(),
            fields,
        };
        let payload = shipper.fitting("gelf_udp", &event, 65_000);
        assert!(payload.len() <= 65_000, "{}", payload.len());
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["message"], "disk full");
        assert_eq!(json["fields"]["truncated"], true);
        assert_eq!(json["fields"]["fields_dropped"], true);
        assert!(json["fields"].get("blob").is_none());
    }

    /// A peer that reconnects from the same port (or another host from the same port) starts
    /// its messages at 1 again: their ids must still differ, or the indexer drops them as repeats.
    #[test]
    fn tcp_connections_never_share_an_id() {
        let shipper = Shipper::testing();
        let ids: std::collections::HashSet<String> = (0..3)
            .map(|_| shipper.next_connection())
            .flat_map(|c| [1, 2].map(|seq| shipper.connection_event_id("syslog_tcp", c, seq)))
            .chain([1, 2].map(|seq| shipper.event_id("syslog_tcp", seq)))
            .collect();
        assert_eq!(ids.len(), 8);
    }
}
