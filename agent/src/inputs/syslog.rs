//! Syslog over UDP (a datagram a message) and TCP (octet counting, RFC 6587, or one message a
//! line), RFC 3164 and RFC 5424 alike, parsed leniently by `syslog_loose`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use syslog_loose::{Message, Protocol, Variant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::read_line;
use crate::event::{now_rfc3339, rfc3339_ms, Event};
use crate::shipper::Shipper;

pub async fn run_udp(
    socket: Arc<UdpSocket>,
    shipper: Arc<Shipper>,
    max: usize,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    loop {
        let (len, peer) = socket.recv_from(&mut buf).await?;
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
    listener: Arc<TcpListener>,
    shipper: Arc<Shipper>,
    max: usize,
) -> anyhow::Result<()> {
    super::accept(
        listener,
        "syslog_tcp",
        &shipper.clone(),
        move |stream, peer| {
            let shipper = shipper.clone();
            async move { connection(stream, peer, &shipper, max).await }
        },
    )
    .await
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shipper: &Shipper,
    max: usize,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let connection = shipper.next_connection();
    let mut seq = 0u64;
    loop {
        let first = match reader.fill_buf().await?.first() {
            Some(&b) => b,
            None => return Ok(()),
        };
        let frame = if first.is_ascii_digit() {
            match octet_counted(&mut reader, max).await? {
                Some(frame) => frame,
                None => {
                    shipper.malformed("syslog_tcp", "bad_frame");
                    return Ok(());
                }
            }
        } else {
            match read_line(&mut reader, max).await? {
                Some(frame) => frame,
                None => return Ok(()),
            }
        };
        let (message, cut) = frame;
        if cut {
            shipper.malformed("syslog_tcp", "truncated");
        }
        if message.is_empty() {
            continue;
        }
        seq += 1;
        let id = shipper.connection_event_id("syslog_tcp", connection, seq);
        ship(shipper, "syslog_tcp", &message, peer.ip(), id).await?;
    }
}

/// The most digits an octet count may have (a terabyte; `max` cuts the message long before).
const LENGTH_DIGITS: u64 = 12;

/// `LEN SP MSG` (RFC 6587 octet counting); `None` when the length is not a number.
async fn octet_counted(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> anyhow::Result<Option<(Vec<u8>, bool)>> {
    let mut digits = Vec::new();
    // At most a 12-digit length and its space: a peer that never sends the space is not buffered.
    (&mut *reader)
        .take(LENGTH_DIGITS + 1)
        .read_until(b' ', &mut digits)
        .await?;
    if digits.last() != Some(&b' ') {
        return Ok(None);
    }
    let Some(len) = std::str::from_utf8(digits.trim_ascii())
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    else {
        return Ok(None);
    };
    let keep = len.min(max as u64) as usize;
    let mut message = vec![0u8; keep];
    reader.read_exact(&mut message).await?;
    let skipped = tokio::io::copy(
        &mut (&mut *reader).take(len - keep as u64),
        &mut tokio::io::sink(),
    )
    .await?;
    Ok(Some((message, skipped > 0)))
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
    let parsed = syslog_loose::parse_message(text.trim_end(), Variant::Either);
    if parsed.facility.is_none() {
        shipper.malformed(input, "no_header");
    }
    let event = to_event(&parsed, peer, id);
    shipper.ship(input, &event).await
}

fn to_event(message: &Message<&str>, peer: IpAddr, id: String) -> Event {
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
    Event {
        id,
        timestamp: message
            .timestamp
            .map(|t| rfc3339_ms(t.timestamp_millis()))
            .unwrap_or_else(now_rfc3339),
        host,
        source: message.appname.unwrap_or("syslog").to_owned(),
        container: None,
        stream: None,
        level: message.severity.map(|s| s.as_str().to_owned()),
        // RFC 5424's BOM says the message is UTF-8; it is not part of it.
        message: message.msg.trim_start_matches('\u{feff}').to_owned(),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_octet_count_without_its_space_is_refused_without_reading_on() {
        let stream = [b"1".repeat(64 << 10), b" x".to_vec()].concat();
        let mut reader = BufReader::new(&stream[..]);
        assert_eq!(octet_counted(&mut reader, 1024).await.unwrap(), None);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), stream.len() - 13, "reads no more than 13 bytes");
    }

    #[tokio::test]
    async fn octet_counted_frames_are_read_and_cut_at_max() {
        let mut reader = BufReader::new(&b"5 hello11 hello world"[..]);
        let first = octet_counted(&mut reader, 1024).await.unwrap();
        assert_eq!(first, Some((b"hello".to_vec(), false)));
        let second = octet_counted(&mut reader, 5).await.unwrap();
        assert_eq!(second, Some((b"hello".to_vec(), true)));
    }

    /// RFC 5424's byte order mark before the message says it is UTF-8, and is not kept.
    #[test]
    fn the_rfc_5424_bom_is_not_part_of_the_message() {
        let raw = "<14>1 2026-12-07T16:10:00Z web-1 app - - - \u{feff}started";
        let parsed = syslog_loose::parse_message(raw, Variant::Either);
        let event = to_event(&parsed, "127.0.0.1".parse().unwrap(), "id".into());
        assert_eq!(event.message, "started");
    }
}
