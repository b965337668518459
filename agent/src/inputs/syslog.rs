//! Syslog over UDP (a datagram a message) and TCP (octet counting, RFC 6587, or one message a
//! line), RFC 3164 and RFC 5424 alike, parsed leniently by `syslog_loose`.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use syslog_loose::{Message, ProcId, Protocol, Variant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::connections::{accept, stopping, Connection, Listening};
use super::unfinished::{Incoming, Unfinished};
use super::{read_line, stopped};
use crate::event::{now_rfc3339, rfc3339_ms, Event, LATEST_MS};
use crate::shipper::Shipper;

/// Ships each datagram until `stop` (between two: what comes after waits in the socket).
pub async fn run_udp(
    socket: Arc<UdpSocket>,
    shipper: Arc<Shipper>,
    max: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    loop {
        let (len, peer) = tokio::select! {
            biased;
            () = stopped(&mut stop) => return Ok(()),
            received = socket.recv_from(&mut buf) => received?,
        };
        seq += 1;
        let mut datagram = &buf[..len];
        if datagram.len() > max {
            shipper.malformed("syslog_udp", "truncated");
            datagram = &datagram[..max];
        }
        let id = shipper.event_id("syslog_udp", seq);
        ship(&shipper, "syslog_udp", datagram, peer.ip(), id).await?;
    }
}

pub async fn run_tcp(
    listening: Listening,
    shipper: Arc<Shipper>,
    max: usize,
) -> anyhow::Result<()> {
    accept(
        listening,
        "syslog_tcp",
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
    loop {
        if stopping(&mut connection.reader, &mut stop).await? {
            return Ok(Some(connection));
        }
        let Some(frame) = next_frame(&mut connection.reader, max, unfinished).await? else {
            return Ok(None);
        };
        match frame.cut {
            Cut::Whole => {}
            Cut::AtMax => shipper.malformed("syslog_tcp", "truncated"),
            Cut::BadFrame => shipper.malformed("syslog_tcp", "bad_frame"),
        }
        let message = frame.message;
        if message.is_empty() {
            continue;
        }
        seq += 1;
        let id = shipper.connection_event_id("syslog_tcp", number, seq);
        ship(shipper, "syslog_tcp", &message, connection.peer.ip(), id).await?;
    }
}

/// The most digits an octet count may have (a terabyte; `max` cuts the message long before).
const LENGTH_DIGITS: usize = 12;

/// The largest octet count believed (64 MiB; `max` cuts a message long before): a larger one is
/// a sender's mistake, and the frame is read as a line.
const MAX_COUNTED_BYTES: u64 = 64 << 20;

struct Frame {
    /// Held until shipped: its bytes count against the connections' memory until then.
    message: Incoming,
    cut: Cut,
}

#[derive(Debug, PartialEq)]
enum Cut {
    Whole,
    /// Longer than `max`: the rest was skipped.
    AtMax,
    /// The connection ended inside an octet-counted frame, or its count was past belief.
    BadFrame,
}

/// The next message on a connection, `None` at its end: `LEN SP <PRI>...` (RFC 6587 octet
/// counting), or else a line. Told apart at each frame, as senders may switch; a line that
/// merely starts with digits (a date, `200 OK`) is a line, not a broken count.
async fn next_frame(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
    unfinished: &Unfinished,
) -> std::io::Result<Option<Frame>> {
    let mut head = Vec::new();
    while head.len() < LENGTH_DIGITS {
        match reader.fill_buf().await?.first() {
            Some(b) if b.is_ascii_digit() => {
                head.push(*b);
                reader.consume(1);
            }
            _ => break,
        }
    }
    let mut bad = false;
    let mut message = unfinished.message();
    if !head.is_empty() && reader.fill_buf().await?.first() == Some(&b' ') {
        reader.consume(1);
        if reader.fill_buf().await?.first() == Some(&b'<') {
            let len = head.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if len <= MAX_COUNTED_BYTES {
                return octet_counted(reader, len, max, message).await.map(Some);
            }
            // No syslog message is that long: a sender's mistake, which would swallow
            // everything after it on the connection. Read as a line instead.
            bad = true;
        }
        head.push(b' ');
    }
    // A line whose first bytes are read already.
    let head_cut = !message.push(&head, max);
    let line = read_line(reader, max, &mut message).await?;
    if line.is_none() && head.is_empty() {
        return Ok(None);
    }
    let cut = match (bad, head_cut || line == Some(true)) {
        (true, _) => Cut::BadFrame,
        (false, true) => Cut::AtMax,
        (false, false) => Cut::Whole,
    };
    Ok(Some(Frame { message, cut }))
}

/// The `len` bytes of an octet-counted message, of which at most `max` are kept (fewer when
/// the input's connections have no memory left). Memory grows with the bytes that come, not
/// with the length a peer claims.
async fn octet_counted(
    reader: &mut (impl AsyncBufRead + Unpin),
    len: u64,
    max: usize,
    mut message: Incoming,
) -> std::io::Result<Frame> {
    let mut left = len;
    let mut cut = Cut::Whole;
    while left > 0 {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            cut = Cut::BadFrame;
            break;
        }
        let part = &available[..available
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX))];
        if !message.push(part, max) {
            cut = Cut::AtMax;
        }
        let used = part.len();
        reader.consume(used);
        left -= used as u64;
    }
    Ok(Frame { message, cut })
}

async fn ship(
    shipper: &Shipper,
    input: &'static str,
    raw: &[u8],
    peer: IpAddr,
    id: String,
) -> anyhow::Result<()> {
    shipper.read(input, raw.len());
    let text = shipper.text(input, raw);
    let (event, header, timestamp_ok) = event_of(text.trim_end(), peer, id);
    if !header {
        shipper.malformed(input, "no_header");
    }
    if !timestamp_ok {
        shipper.malformed(input, "bad_timestamp");
    }
    shipper.ship(input, &event).await
}

/// A message's event: (the event, whether it has a header, whether its time could be taken).
/// Beside what `syslog_loose` reads, real senders send RFC 5424 without its time (`-`), and a
/// priority without an RFC 3164 time (`<13>tag[12]: text`): read here, with the arrival time.
fn event_of(text: &str, peer: IpAddr, id: String) -> (Event, bool, bool) {
    let parsed = syslog_loose::parse_message_with_year(text, year_nearest_now, Variant::Either);
    if parsed.facility.is_some() {
        let (event, timestamp_ok) = to_event(&parsed, peer, id);
        return (event, true, timestamp_ok);
    }
    match priority(text) {
        Some((pri, rest)) if rest.starts_with("1 - ") => {
            let timed = format!("<{pri}>1 {} {}", now_rfc3339(), &rest[4..]);
            let parsed = syslog_loose::parse_message(&timed, Variant::RFC5424);
            if parsed.facility.is_some() {
                let (event, timestamp_ok) = to_event(&parsed, peer, id);
                return (event, true, timestamp_ok);
            }
        }
        Some((pri, rest)) => {
            let (event, timestamp_ok) = to_event(&untimed_rfc3164(pri, rest), peer, id);
            return (event, true, timestamp_ok);
        }
        None => {}
    }
    let (event, timestamp_ok) = to_event(&parsed, peer, id);
    (event, false, timestamp_ok)
}

/// `<PRI>` (0 to 191) and what follows it.
fn priority(text: &str) -> Option<(u8, &str)> {
    let (digits, rest) = text.strip_prefix('<')?.split_once('>')?;
    if !(1..=3).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pri = digits.parse::<u8>().ok().filter(|p| *p <= 191)?;
    Some((pri, rest))
}

/// RFC 3164 after its priority without a time or host: `tag[pid]: text`, or only text.
fn untimed_rfc3164(pri: u8, rest: &str) -> Message<&str> {
    let (facility, severity) = syslog_loose::decompose_pri(pri);
    let tag_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-/".contains(c)))
        .unwrap_or(rest.len());
    let (tag, after) = rest.split_at(tag_end);
    let (procid, after) = match after.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((pid, after)) => (Some(pid), after),
        None => (None, after),
    };
    let said = after.strip_prefix(": ").or_else(|| after.strip_prefix(':'));
    let (appname, procid, msg) = match said {
        Some(msg) if (1..=48).contains(&tag.len()) => (Some(tag), procid, msg),
        _ => (None, None, rest),
    };
    Message {
        protocol: Protocol::RFC3164,
        facility,
        severity,
        timestamp: None,
        hostname: None,
        appname,
        procid: procid.map(ProcId::from),
        msgid: None,
        structured_data: Vec::new(),
        msg,
    }
}

/// The year of an RFC 3164 time, which has none: the one that puts its month nearest now's (in
/// UTC), so that `Dec 31 23:59:59` (or a late `Nov 30`) arriving just after the new year is last
/// year's, and `Jan  1 00:00:01` from a clock a little ahead arriving before it is next year's.
fn year_nearest_now((month, ..): syslog_loose::IncompleteDate) -> i32 {
    let now = now_rfc3339();
    let year: i32 = now[..4].parse().unwrap_or(1970);
    year_nearest(month, year, now[5..7].parse().unwrap_or(1))
}

/// The year, of the one before `year`, `year` and the one after, that puts `month` nearest
/// `now_month` of `year`.
fn year_nearest(month: u32, year: i32, now_month: u32) -> i32 {
    match i64::from(month) - i64::from(now_month) {
        ahead if ahead > 6 => year - 1,
        behind if behind < -6 => year + 1,
        _ => year,
    }
}

/// The event, and whether its time could be taken (one past what RFC 3339 can write, year
/// 99999 say, is replaced by the time it came).
fn to_event(message: &Message<&str>, peer: IpAddr, id: String) -> (Event, bool) {
    let host = message
        .hostname
        .map(str::to_owned)
        .unwrap_or_else(|| peer.to_string());
    let mut fields = Map::new();
    fields.insert("peer".into(), json!(peer.to_string()));
    fields.insert(
        "syslog".into(),
        json!(match message.protocol {
            Protocol::RFC3164 => "rfc3164",
            Protocol::RFC5424(_) => "rfc5424",
        }),
    );
    if let Some(facility) = message.facility {
        fields.insert("facility".into(), json!(facility.as_str()));
    }
    if let Some(procid) = &message.procid {
        fields.insert("procid".into(), json!(procid.to_string()));
    }
    if let Some(msgid) = message.msgid {
        fields.insert("msgid".into(), json!(msgid));
    }
    if !message.structured_data.is_empty() {
        let data: Map<String, Value> = message
            .structured_data
            .iter()
            .map(|element| {
                let params: Map<String, Value> = element
                    .params()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                (element.id.to_string(), Value::Object(params))
            })
            .collect();
        fields.insert("structured_data".into(), Value::Object(data));
    }
    let given = message.timestamp.map(|t| t.timestamp_millis());
    let timestamp = given.filter(|ms| (0..=LATEST_MS).contains(ms));
    let event = Event {
        id,
        timestamp: timestamp.map_or_else(now_rfc3339, rfc3339_ms),
        host,
        source: message.appname.unwrap_or("syslog").to_owned(),
        container: None,
        stream: None,
        level: message.severity.map(|s| s.as_str().to_owned()),
        // RFC 5424's BOM says the message is UTF-8; it is not part of it.
        message: message.msg.trim_start_matches('\u{feff}').to_owned(),
        fields,
    };
    (event, given.is_none() || timestamp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(stream: &[u8], max: usize) -> Vec<(String, Cut)> {
        let mut reader = BufReader::with_capacity(3, stream);
        let mut frames = Vec::new();
        let unfinished = Unfinished::new(usize::MAX);
        while let Some(frame) = next_frame(&mut reader, max, &unfinished).await.unwrap() {
            frames.push((
                String::from_utf8(frame.message.to_vec()).unwrap(),
                frame.cut,
            ));
        }
        frames
    }

    #[tokio::test]
    async fn octet_counted_frames_and_lines_are_told_apart_at_each_frame() {
        let stream = b"7 <13>one2026-12-07 boot\n9 <13>two\n\n200 OK\n\
                       99999999999999999999 digits\n99999999999 <13>past belief\n\
                       12 <13>after it20 <13>cut off";
        assert_eq!(
            frames(stream, 1024).await,
            [
                ("<13>one".to_owned(), Cut::Whole),
                ("2026-12-07 boot".to_owned(), Cut::Whole),
                ("<13>two\n\n".to_owned(), Cut::Whole),
                ("200 OK".to_owned(), Cut::Whole),
                ("99999999999999999999 digits".to_owned(), Cut::Whole),
                ("99999999999 <13>past belief".to_owned(), Cut::BadFrame),
                ("<13>after it".to_owned(), Cut::Whole),
                ("<13>cut off".to_owned(), Cut::BadFrame),
            ]
        );
    }

    #[tokio::test]
    async fn octet_counted_frames_are_cut_at_max() {
        let stream = b"15 <13>hello world9 <13>again";
        assert_eq!(
            frames(stream, 9).await,
            [
                ("<13>hello".to_owned(), Cut::AtMax),
                ("<13>again".to_owned(), Cut::Whole),
            ]
        );
    }

    /// With no shared memory left, a message is cut at its own 64 KiB, in either framing, and
    /// the next one is read whole.
    #[tokio::test]
    async fn messages_are_cut_when_the_connections_memory_is_taken() {
        let body = "x".repeat(100 << 10);
        let counted = format!("<13>{body}");
        let stream = format!("{} {counted}<13>{body}\n9 <13>", counted.len());
        let mut reader = BufReader::new(stream.as_bytes());
        let taken = Unfinished::new(0);
        let mut cuts = Vec::new();
        while let Some(frame) = next_frame(&mut reader, usize::MAX, &taken).await.unwrap() {
            cuts.push((frame.message.len(), frame.cut));
        }
        assert_eq!(
            cuts,
            [
                (64 << 10, Cut::AtMax),
                (64 << 10, Cut::AtMax),
                (4, Cut::BadFrame)
            ]
        );
    }

    /// RFC 5424's byte order mark before the message says it is UTF-8, and is not kept.
    #[test]
    fn the_rfc_5424_bom_is_not_part_of_the_message() {
        let raw = "<14>1 2026-12-07T16:10:00Z web-1 app - - - \u{feff}started";
        let parsed = syslog_loose::parse_message(raw, Variant::Either);
        let (event, _) = to_event(&parsed, "127.0.0.1".parse().unwrap(), "id".into());
        assert_eq!(event.message, "started");
    }

    /// RFC 5424 without its time, and a priority without an RFC 3164 time, are read: their
    /// level, facility, app and text are the event's, and their time the arrival's.
    #[test]
    fn headers_without_a_time_are_read() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let read = |raw: &str| {
            let (event, header, ok) = event_of(raw, peer, "id".into());
            assert!(header && ok, "{raw}");
            let fields = serde_json::Value::Object(event.fields.clone());
            (event, fields)
        };
        let (event, fields) = read("<11>1 - web-1 app 42 ID7 - it failed");
        assert_eq!(
            (
                event.host.as_str(),
                event.source.as_str(),
                event.message.as_str()
            ),
            ("web-1", "app", "it failed")
        );
        assert_eq!(event.level.as_deref(), Some("err"));
        assert_eq!(
            (fields["procid"].as_str(), fields["msgid"].as_str()),
            (Some("42"), Some("ID7"))
        );
        let (event, _) = read("<13>1 - - - - - - bare");
        assert_eq!(
            (event.host.as_str(), event.message.as_str()),
            ("10.0.0.9", "bare")
        );
        let (event, fields) = read("<30>cron[12]: job done");
        assert_eq!(
            (event.source.as_str(), event.message.as_str()),
            ("cron", "job done")
        );
        assert_eq!(event.level.as_deref(), Some("info"));
        assert_eq!(
            (fields["facility"].as_str(), fields["procid"].as_str()),
            (Some("daemon"), Some("12"))
        );
        let (event, _) = read("<13>just some words: here");
        assert_eq!(
            (event.source.as_str(), event.message.as_str()),
            ("syslog", "just some words: here")
        );
        let (event, header, _) = event_of("<999>not a priority", peer, "id".into());
        assert!(!header);
        assert_eq!(event.message, "<999>not a priority");
    }

    /// An RFC 3164 time has no year: it is the one nearest now, across a new year too.
    #[test]
    fn rfc_3164_times_take_the_year_nearest_now() {
        // Received in January 2027: December's and November's are 2026's.
        assert_eq!(year_nearest(12, 2027, 1), 2026);
        assert_eq!(year_nearest(11, 2027, 1), 2026);
        assert_eq!(year_nearest(1, 2027, 1), 2027);
        assert_eq!(year_nearest(7, 2027, 1), 2027);
        // Received in December 2026: January's (a clock ahead) is 2027's.
        assert_eq!(year_nearest(1, 2026, 12), 2027);
        assert_eq!(year_nearest(12, 2026, 12), 2026);
        assert_eq!(year_nearest(6, 2026, 12), 2026);
        // Through the parser, today's month is this year's.
        let now = now_rfc3339();
        let names = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month: usize = now[5..7].parse().unwrap();
        let raw = format!("<13>{} 15 10:00:00 host app: x", names[month - 1]);
        let parsed = syslog_loose::parse_message_with_year(&raw, year_nearest_now, Variant::Either);
        let (event, ok) = to_event(&parsed, "127.0.0.1".parse().unwrap(), "id".into());
        assert!(ok);
        assert_eq!(event.timestamp[..4], now[..4], "{}", event.timestamp);
    }

    /// A time RFC 3339 cannot write is replaced by the time the message came, and said.
    #[test]
    fn a_time_past_year_9999_is_replaced() {
        let raw = "<13>Jan 01 99999 00:00:00 host app: far";
        let parsed = syslog_loose::parse_message(raw, Variant::Either);
        let (event, ok) = to_event(&parsed, "127.0.0.1".parse().unwrap(), "id".into());
        assert!(parsed.timestamp.is_some() && !ok, "{parsed:?}");
        assert!(
            event.timestamp.len() == 24 && event.timestamp.ends_with('Z'),
            "{}",
            event.timestamp
        );
    }
}
