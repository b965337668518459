//! GELF, as Docker's gelf logging driver and Graylog clients send it: over UDP a datagram a
//! message, gzip- or zlib-compressed or plain, split into chunks (`0x1e 0x0f`, an 8-byte message
//! id, sequence number and count) when large; over TCP plain JSON frames ended by a null byte.
//!
//! Chunks are reassembled in a bounded table: at most `MAX_PENDING` messages and
//! `MAX_PENDING_BYTES` of chunks at once (a new message makes room by dropping the oldest
//! pending ones, counted), each dropped (and counted) when its chunks have not all come within
//! five seconds, as the GELF specification says (looked at every second, whether datagrams come
//! or not). Chunks of a message already whole or refused (a duplicate, or one of 200 chunks) are
//! passed over for as long, so that one message is counted once. Decompression stops at
//! `max_message_bytes`, so a small datagram cannot expand into a large allocation.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::connections::{accept, stopping, Connection, Listening};

use super::unfinished::Unfinished;
use super::{read_until, stopped};
use crate::event::{now_rfc3339, rfc3339_ms, Event, LATEST_MS};
use crate::shipper::Shipper;

const CHUNK_MAGIC: [u8; 2] = [0x1e, 0x0f];
const CHUNK_HEADER: usize = 12;
/// The GELF specification's limits: 128 chunks, five seconds to get them all.
const MAX_CHUNKS: u8 = 128;
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages being reassembled at once; one more drops the oldest (most likely never to be
/// whole: a flood of first chunks must not keep out the messages that come after it).
const MAX_PENDING: usize = 1024;
/// Bytes of chunks held at once, all messages together: a flood of first chunks cannot hold
/// `MAX_PENDING` times `max_message_bytes`.
const MAX_PENDING_BYTES: usize = 32 << 20;

/// Ships each message until `stop` (between two datagrams: what comes after waits in the
/// socket; the messages whose chunks have not all come are counted as incomplete).
pub async fn run_udp(
    socket: Arc<UdpSocket>,
    shipper: Arc<Shipper>,
    max: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut chunks = Reassembly::default();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let received = tokio::select! {
            biased;
            () = stopped(&mut stop) => {
                for _ in 0..chunks.pending.len() {
                    shipper.malformed("gelf_udp", "incomplete_chunks");
                }
                return Ok(());
            }
            // Before the datagrams: a steady flow of them must not starve the expiry.
            _ = tick.tick() => None,
            received = socket.recv_from(&mut buf) => Some(received?),
        };
        let now = Instant::now();
        // Once a second: the table may hold thousands of messages.
        let Some((len, peer)) = received else {
            for _ in 0..chunks.expire(now) {
                shipper.malformed("gelf_udp", "incomplete_chunks");
            }
            continue;
        };
        let datagram = &buf[..len];
        let whole = if datagram.starts_with(&CHUNK_MAGIC) {
            let added = chunks.add(datagram, now, max);
            for _ in 0..chunks.take_dropped() {
                shipper.malformed("gelf_udp", "too_many_chunked_messages");
            }
            match added {
                Ok(Some(whole)) => whole,
                Ok(None) => continue,
                Err(reason) => {
                    shipper.malformed("gelf_udp", reason);
                    continue;
                }
            }
        } else {
            datagram.to_vec()
        };
        seq += 1;
        let id = shipper.event_id("gelf_udp", seq);
        ship(&shipper, "gelf_udp", &whole, peer.ip(), id, max).await?;
    }
}

pub async fn run_tcp(
    listening: Listening,
    shipper: Arc<Shipper>,
    max: usize,
) -> anyhow::Result<()> {
    accept(
        listening,
        "gelf_tcp",
        &shipper.clone(),
        move |connection, unfinished, stop| {
            let shipper = shipper.clone();
            async move { serve(connection, &shipper, max, &unfinished, stop).await }
        },
    )
    .await
}

/// Serves one connection until it ends (`None`), or until `stop`, between two messages.
async fn serve(
    mut connection: Connection,
    shipper: &Shipper,
    max: usize,
    unfinished: &Unfinished,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Connection>> {
    let number = shipper.next_connection();
    let mut seq = 0u64;
    // Bounded: a frame longer than `max`, or than the memory the connections share allows, is
    // cut there and the rest skipped.
    loop {
        if stopping(&mut connection.reader, &mut stop).await? {
            return Ok(Some(connection));
        }
        // Held until shipped: its bytes count against the connections' memory until then.
        let mut frame = unfinished.message();
        let Some(cut) = read_until(&mut connection.reader, 0, max, &mut frame).await? else {
            return Ok(None);
        };
        let text = frame.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if cut {
            shipper.malformed("gelf_tcp", "too_large");
            continue;
        }
        seq += 1;
        ship(
            shipper,
            "gelf_tcp",
            text,
            connection.peer.ip(),
            shipper.connection_event_id("gelf_tcp", number, seq),
            max,
        )
        .await?;
    }
}

/// Messages being put together from their chunks.
#[derive(Default)]
struct Reassembly {
    pending: HashMap<[u8; 8], Pending>,
    /// The bytes of every pending message's chunks.
    bytes: usize,
    /// Pending messages dropped to make room, not yet counted.
    dropped: usize,
    /// Messages whole or refused, and since when: their late chunks are passed over.
    settled: HashMap<[u8; 8], Instant>,
}

/// Settled messages remembered at most (one more is not remembered: its late chunks would
/// start a message that expires, counted).
const MAX_SETTLED: usize = 4 * MAX_PENDING;

struct Pending {
    first: Instant,
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

impl Reassembly {
    /// Takes one chunk; the whole message once its last chunk came.
    fn add(
        &mut self,
        datagram: &[u8],
        now: Instant,
        max: usize,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        if datagram.len() < CHUNK_HEADER {
            return Err("bad_chunk");
        }
        let id: [u8; 8] = datagram[2..10].try_into().expect("eight bytes");
        if self.settled.contains_key(&id) {
            return Ok(None);
        }
        let (seq, count) = (datagram[10], datagram[11]);
        if count == 0 || count > MAX_CHUNKS || seq >= count {
            self.settle(id, now);
            return Err("bad_chunk");
        }
        if !self.pending.contains_key(&id) && self.pending.len() >= MAX_PENDING {
            self.drop_oldest(&id);
        }
        let part = &datagram[CHUNK_HEADER..];
        while self.bytes + part.len() > MAX_PENDING_BYTES && self.drop_oldest(&id) {}
        let pending = self.pending.entry(id).or_insert_with(|| Pending {
            first: now,
            parts: vec![None; count as usize],
            bytes: 0,
        });
        if pending.parts.len() != count as usize {
            self.bytes -= pending.bytes;
            self.pending.remove(&id);
            self.settle(id, now);
            return Err("bad_chunk");
        }
        let replaced = pending.parts[seq as usize].as_ref().map_or(0, Vec::len);
        let grown = pending.bytes - replaced + part.len();
        if grown > max {
            self.bytes -= pending.bytes;
            self.pending.remove(&id);
            self.settle(id, now);
            return Err("too_large");
        }
        if self.bytes - pending.bytes + grown > MAX_PENDING_BYTES {
            return Err("too_many_chunked_messages");
        }
        self.bytes = self.bytes - pending.bytes + grown;
        pending.bytes = grown;
        pending.parts[seq as usize] = Some(part.to_vec());
        if pending.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let pending = self.pending.remove(&id).expect("present");
        self.bytes -= pending.bytes;
        self.settle(id, now);
        Ok(Some(
            pending.parts.into_iter().flatten().flatten().collect(),
        ))
    }

    /// Drops the pending message that began first, other than `keep`'s; whether there was one.
    fn drop_oldest(&mut self, keep: &[u8; 8]) -> bool {
        let oldest = self
            .pending
            .iter()
            .filter(|(id, _)| *id != keep)
            .min_by_key(|(_, p)| p.first)
            .map(|(id, _)| *id);
        let Some(dropped) = oldest.and_then(|id| self.pending.remove(&id)) else {
            return false;
        };
        self.bytes -= dropped.bytes;
        self.dropped += 1;
        true
    }

    /// How many pending messages were dropped to make room since it was last asked.
    fn take_dropped(&mut self) -> usize {
        std::mem::take(&mut self.dropped)
    }

    fn settle(&mut self, id: [u8; 8], now: Instant) {
        if self.settled.len() < MAX_SETTLED {
            self.settled.insert(id, now);
        }
    }

    /// Drops messages whose chunks did not all come in time; how many.
    fn expire(&mut self, now: Instant) -> usize {
        self.settled
            .retain(|_, at| now.duration_since(*at) < CHUNK_TIMEOUT);
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = now.duration_since(p.first) < CHUNK_TIMEOUT;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.bytes -= freed;
        before - self.pending.len()
    }
}

/// The message's JSON: gzip (`1f 8b`) and zlib (`78 ..`) are inflated, up to `max` bytes.
fn decompress(bytes: &[u8], max: usize) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    let read = match bytes {
        [0x1f, 0x8b, ..] => flate2::read::GzDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out),
        // A zlib header's two bytes, read as one big-endian number, are a multiple of 31.
        [0x78, second, ..] if (0x78u16 * 256 + *second as u16).is_multiple_of(31) => {
            flate2::read::ZlibDecoder::new(bytes)
                .take(limit)
                .read_to_end(&mut out)
        }
        _ => return Ok(bytes.to_vec()),
    };
    read.map_err(|_| "bad_compression")?;
    if out.len() > max {
        return Err("too_large");
    }
    Ok(out)
}

async fn ship(
    shipper: &Shipper,
    input: &str,
    raw: &[u8],
    peer: IpAddr,
    id: String,
    max: usize,
) -> anyhow::Result<()> {
    shipper.read(input, raw.len());
    let json = match decompress(raw, max) {
        Ok(json) => json,
        Err(reason) => {
            shipper.malformed(input, reason);
            return Ok(());
        }
    };
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(&json) else {
        shipper.malformed(input, "invalid_json");
        return Ok(());
    };
    let Some((event, defects)) = event(message, peer, id) else {
        shipper.malformed(input, "missing_short_message");
        return Ok(());
    };
    for defect in defects {
        shipper.malformed(input, defect);
    }
    shipper.ship(input, &event).await
}

/// The latest GELF timestamp an RFC 3339 time can hold (the end of year 9999), in seconds.
const MAX_SECONDS: f64 = (LATEST_MS / 1000) as f64;

/// A GELF number as senders write it: a JSON number, or one in a string.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A GELF message as an event: `host`, `short_message` as the message, `timestamp` (seconds),
/// `level` as its syslog severity name; Docker's `_container_*` and `_image_name` as the
/// container, every other additional field (`_x`) as `fields.x`. With what was wrong in it and
/// left out: a timestamp that is no time (the time it came is taken) or a level that is none.
fn event(
    mut gelf: Map<String, Value>,
    peer: IpAddr,
    id: String,
) -> Option<(Event, Vec<&'static str>)> {
    let Some(Value::String(message)) = gelf.remove("short_message") else {
        return None;
    };
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let host = text(gelf.remove("host")).unwrap_or_else(|| peer.to_string());
    let mut defects = Vec::new();
    let timestamp = match gelf.remove("timestamp") {
        None => now_rfc3339(),
        Some(given) => match number(&given).filter(|s| (0.0..=MAX_SECONDS).contains(s)) {
            Some(seconds) => rfc3339_ms((seconds * 1000.0).round() as i64),
            None => {
                defects.push("bad_timestamp");
                now_rfc3339()
            }
        },
    };
    let level = match gelf.remove("level") {
        None => None,
        Some(given) => {
            let severity = number(&given)
                .filter(|l| l.fract() == 0.0 && (0.0..8.0).contains(l))
                .and_then(|l| syslog_loose::decompose_pri(l as u8).1);
            if severity.is_none() {
                defects.push("bad_level");
            }
            severity.map(|s| s.as_str().to_owned())
        }
    };
    let mut container = Map::new();
    for (gelf_key, key) in [
        ("_container_id", "id"),
        ("_container_name", "name"),
        ("_image_name", "image"),
    ] {
        if let Some(value) = text(gelf.remove(gelf_key)) {
            container.insert(key.into(), json!(value));
        }
    }
    let source = container
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| text(gelf.get("_tag").cloned()))
        .unwrap_or_else(|| "gelf".into());
    gelf.remove("version");
    let mut fields = Map::new();
    for (key, value) in gelf {
        let key = key.strip_prefix('_').unwrap_or(&key).to_owned();
        fields.insert(key, value);
    }
    fields.insert("peer".into(), json!(peer.to_string()));
    let event = Event {
        id,
        timestamp,
        host,
        source,
        container: (!container.is_empty()).then_some(Value::Object(container)),
        stream: None,
        level,
        message,
        fields,
    };
    Some((event, defects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chunk(id: u8, seq: u8, count: u8, part: &[u8]) -> Vec<u8> {
        let mut datagram = vec![0x1e, 0x0f, id, 0, 0, 0, 0, 0, 0, 0, seq, count];
        datagram.extend_from_slice(part);
        datagram
    }

    /// Levels and timestamps as senders write them (numbers in strings, floats) are taken; a
    /// level that is none, or a time that is none (milliseconds by mistake: year 58903), is
    /// left out and said.
    #[test]
    fn levels_and_timestamps_as_senders_write_them() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let of = |extra: Value| {
            let mut gelf = json!({"short_message": "m"});
            gelf.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let Value::Object(gelf) = gelf else {
                unreachable!()
            };
            event(gelf, peer, "id".into()).unwrap()
        };
        for level in [json!(3), json!(3.0), json!("3")] {
            let (event, defects) = of(json!({"level": level}));
            assert_eq!(event.level.as_deref(), Some("err"));
            assert!(defects.is_empty());
        }
        for level in [json!(99), json!(2.5), json!("warn")] {
            let (event, defects) = of(json!({"level": level}));
            assert_eq!(event.level, None);
            assert_eq!(defects, ["bad_level"]);
        }
        for timestamp in [json!(1796659200), json!("1796659200.5")] {
            let (event, defects) = of(json!({"timestamp": timestamp}));
            assert!(
                event.timestamp.starts_with("2026-12-07T"),
                "{}",
                event.timestamp
            );
            assert!(defects.is_empty());
        }
        let (event, defects) = of(json!({"timestamp": 1796659200123u64}));
        assert!(event.timestamp.len() == 24, "{}", event.timestamp);
        assert_eq!(defects, ["bad_timestamp"]);
    }

    #[test]
    fn chunks_reassemble_in_any_order_and_expire() {
        let mut chunks = Reassembly::default();
        let now = Instant::now();
        assert_eq!(chunks.add(&chunk(1, 1, 2, b"world"), now, 100), Ok(None));
        assert_eq!(
            chunks.add(&chunk(1, 0, 2, b"hello "), now, 100),
            Ok(Some(b"hello world".to_vec()))
        );
        assert_eq!(chunks.add(&chunk(2, 0, 2, b"half"), now, 100), Ok(None));
        assert_eq!(chunks.expire(now + Duration::from_secs(6)), 1);
        assert_eq!(
            chunks.add(&chunk(3, 2, 2, b"x"), now, 100),
            Err("bad_chunk")
        );
        assert_eq!(chunks.add(&[0x1e, 0x0f, 1], now, 100), Err("bad_chunk"));
        assert_eq!(
            chunks.add(&chunk(4, 0, 2, &[0; 200]), now, 100),
            Err("too_large")
        );
        // Chunks of a message already whole or refused are passed over, not counted again,
        // until the message's five seconds are over.
        assert_eq!(
            chunks.add(&chunk(6, 0, 1, b"whole"), now, 100),
            Ok(Some(b"whole".to_vec()))
        );
        assert_eq!(chunks.add(&chunk(6, 0, 1, b"whole"), now, 100), Ok(None));
        assert_eq!(chunks.add(&chunk(4, 1, 2, &[0; 200]), now, 100), Ok(None));
        for seq in 0..200 {
            let refused = chunks.add(&chunk(5, seq, 200, b"x"), now, 100);
            assert_eq!(refused, if seq == 0 { Err("bad_chunk") } else { Ok(None) });
        }
        assert_eq!(
            chunks.expire(now + Duration::from_secs(1)),
            0,
            "no duplicate pending"
        );
        assert!(chunks.pending.is_empty());
        chunks.expire(now + Duration::from_secs(6));
        assert!(chunks.settled.is_empty());
    }

    /// First chunks of many messages whose other chunks never come (a flood, or lost
    /// datagrams) fill the table's byte and message budgets, not the memory: the oldest make
    /// room for the new, so a message sent after them is still put together; expiry frees it all.
    #[test]
    fn chunks_held_at_once_are_bounded_and_the_oldest_make_room() {
        let mut chunks = Reassembly::default();
        let now = Instant::now();
        for (count, size) in [(1000u32, 60_000), (5000, 10)] {
            for id in 0..count {
                let mut datagram = chunk(0, 0, 100, &vec![b'x'; size]);
                datagram[2..6].copy_from_slice(&id.to_be_bytes());
                datagram[6] = size as u8;
                assert_eq!(chunks.add(&datagram, now, 1 << 20), Ok(None));
                assert!(chunks.bytes <= MAX_PENDING_BYTES);
                assert!(chunks.pending.len() <= MAX_PENDING);
            }
        }
        assert!(chunks.take_dropped() > 4000, "the oldest were dropped");
        assert_eq!(chunks.add(&chunk(9, 1, 2, b"lo"), now, 1 << 20), Ok(None));
        assert_eq!(
            chunks.add(&chunk(9, 0, 2, b"hel"), now, 1 << 20),
            Ok(Some(b"hello".to_vec())),
            "a message after the flood"
        );
        chunks.expire(now + Duration::from_secs(6));
        assert_eq!(chunks.bytes, 0);
    }

    #[test]
    fn gzip_zlib_and_plain_and_bombs() {
        let json = br#"{"short_message":"hi"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = gz.finish().unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(json).unwrap();
        let zl = zl.finish().unwrap();
        assert_eq!(decompress(&gz, 100).unwrap(), json);
        assert_eq!(decompress(&zl, 100).unwrap(), json);
        assert_eq!(decompress(json, 100).unwrap(), json);
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 10 << 20]).unwrap();
        assert_eq!(
            decompress(&bomb.finish().unwrap(), 1 << 20),
            Err("too_large")
        );
        assert_eq!(
            decompress(&[0x1f, 0x8b, 1, 2, 3], 100),
            Err("bad_compression")
        );
    }
}
