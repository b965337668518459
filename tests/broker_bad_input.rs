//! Bad input never crashes the broker or costs other data: each case closes only the offending
//! connection (or answers with the protocol's error) and is counted; real clients keep working.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ProduceRequest,
    ProduceResponse, ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_broker::storage::batch::testing::{batch, one_record, seal};

fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

/// Sends raw bytes; whether the broker closed the connection without a word (rather than
/// answering, or saying nothing for 10 s).
fn closed_silently(addr: &str, bytes: &[u8]) -> bool {
    let mut out = Vec::new();
    match send(addr, bytes).read_to_end(&mut out) {
        Ok(read) => read == 0,
        // Closed with bytes of ours unread.
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Sends raw bytes; the one response frame that comes back, length prefix included.
fn one_reply(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = send(addr, bytes);
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("a response");
    let mut frame = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut frame).expect("the whole response");
    [length.to_vec(), frame].concat()
}

fn frame(api: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend((8 + 2 + body.len() as i32).to_be_bytes());
    f.extend(api.to_be_bytes());
    f.extend(version.to_be_bytes());
    f.extend(42i32.to_be_bytes());
    f.extend((-1i16).to_be_bytes()); // null client id
    f.extend(body);
    f
}

fn errors(sluice: &Sluice, kind: &str) -> f64 {
    sluice
        .metric(&format!(
            "sluice_broker_protocol_errors_total{{kind=\"{kind}\"}}"
        ))
        .unwrap_or(0.0)
}

fn produce_request(topic: &'static str, records: Bytes) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(7)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("bad-input-test")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, 1).unwrap();
    request.encode(&mut buf, 7).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

#[test]
fn bad_frames_close_only_their_connection_and_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let out = sluice.kcat_produce("victim", &["-p", "0"], b"before\n");
    assert!(out.status.success());

    // A length prefix far over max_request_bytes.
    assert!(closed_silently(
        &sluice.kafka,
        &0x7fff_ffffi32.to_be_bytes()
    ));
    assert_eq!(errors(&sluice, "bad_frame_size"), 1.0);
    // A frame too short to hold a request header.
    assert!(closed_silently(&sluice.kafka, &[0, 0, 0, 3, 1, 2, 3]));
    assert_eq!(errors(&sluice, "bad_frame_size"), 2.0);
    // An API key that does not exist.
    assert!(closed_silently(&sluice.kafka, &frame(999, 0, &[])));
    assert_eq!(errors(&sluice, "unknown_api"), 1.0);
    // A known API at a version nobody advertised, and Produce v2 (advertised for old librdkafka's
    // feature checks, never served).
    assert!(closed_silently(&sluice.kafka, &frame(3, 99, &[])));
    assert!(closed_silently(&sluice.kafka, &frame(0, 2, &[0; 16])));
    assert_eq!(errors(&sluice, "unsupported_version"), 2.0);
    // A Metadata request announcing 2^31-1 topics in a 4-byte body: the codec reserves for
    // them before reading; the broker must survive that.
    assert!(closed_silently(
        &sluice.kafka,
        &frame(3, 1, &0x7fff_ffffi32.to_be_bytes())
    ));
    // Random garbage after a valid header.
    assert!(closed_silently(
        &sluice.kafka,
        &frame(1, 4, &[0xde, 0xad, 0xbe, 0xef])
    ));
    assert_eq!(errors(&sluice, "malformed"), 2.0);

    // An ApiVersions request newer than the broker gets the v0 fallback answer (KIP-511):
    // correlation id, then UNSUPPORTED_VERSION (35), then our ApiVersions range.
    let reply = one_reply(&sluice.kafka, &frame(18, 99, &[]));
    assert!(reply.len() >= 10, "{reply:?}");
    assert_eq!(i32::from_be_bytes(reply[4..8].try_into().unwrap()), 42);
    assert_eq!(i16::from_be_bytes(reply[8..10].try_into().unwrap()), 35);

    // Batches that are damaged, or that no client may send, are refused and not stored.
    let produce_error = |topic: &'static str, batch: Vec<u8>| {
        let reply = one_reply(&sluice.kafka, &produce_request(topic, Bytes::from(batch)));
        let mut body = Bytes::from(reply[4..].to_vec());
        let header = ResponseHeader::decode(&mut body, 0).unwrap();
        assert_eq!(header.correlation_id, 9);
        let response = ProduceResponse::decode(&mut body, 7).unwrap();
        response.responses[0].partition_responses[0].error_code
    };
    let mut tampered = one_record(None, b"tampered");
    let last = tampered.len() - 1;
    tampered[last] ^= 0x55;
    assert_eq!(produce_error("victim", tampered), 2, "CORRUPT_MESSAGE");
    // Sealed with a good CRC over attributes no consumer can read: codec 7, a control batch.
    let with_attributes = |attributes: i16| {
        let mut batch = one_record(None, b"odd attributes");
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
        seal(&mut batch);
        batch
    };
    assert_eq!(
        produce_error("victim", with_attributes(7)),
        2,
        "CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce_error("victim", with_attributes(0x20)),
        87,
        "INVALID_RECORD"
    );
    // A good CRC over records that do not decode: filler where the records should be, and
    // plain records under gzip's codec bits. Stored, either would stop every consumer of the
    // partition at it.
    let mut garbage = one_record(None, b"garbage in the records");
    for byte in &mut garbage[61..] {
        *byte = 0xee;
    }
    seal(&mut garbage);
    assert_eq!(produce_error("victim", garbage), 2, "CORRUPT_MESSAGE");
    assert_eq!(
        produce_error("victim", with_attributes(1)),
        2,
        "CORRUPT_MESSAGE"
    );
    // A sound batch whose timestamps are -3, the code ListOffsets uses for "the largest
    // timestamp": the log holds no real timestamp, so asking for the largest has no answer.
    sluice.create_topic("stamped", 1, &[]);
    assert_eq!(produce_error("stamped", batch(1, 10, -3)), 0);
    let script = r#"
import sys
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
tp = TopicPartition("stamped", 0)
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
print(admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(10).offset)
"#;
    let out = run_ok(
        python().args(["-c", script, &sluice.kafka]),
        Duration::from_secs(60),
    );
    assert_eq!(out, "-1\n");

    // The broker is alive, other data is intact, and real clients still work.
    let out = sluice.kcat_produce("victim", &["-p", "0"], b"after\n");
    assert!(out.status.success());
    let consumed = sluice.kcat_consume("victim", &["-p", "0"]);
    assert_eq!(consumed, "before\nafter\n");
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A request's announced size costs nothing until its bytes come: twenty connections that each
/// announce 100 MiB and send nothing more leave the broker's memory as it was (it set aside the
/// whole size at once: 2 GB). They are closed once they idle past `connections_max_idle_ms`, as
/// is a connection that starts no request; real clients go on working throughout.
#[test]
fn announced_sizes_cost_no_memory_and_idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nconnections_max_idle_ms = 3000\n");
    let before = rss(sluice.pid());
    let announced = (100i32 << 20).to_be_bytes();
    let held: Vec<TcpStream> = (0..20).map(|_| send(&sluice.kafka, &announced)).collect();
    let idle = TcpStream::connect(&sluice.kafka).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss(sluice.pid()).saturating_sub(before);
    assert!(grown < 50 << 20, "the broker grew by {grown} bytes");
    let out = sluice.kcat_produce("alive", &["-p", "0"], b"still served\n");
    assert!(out.status.success());
    for mut stream in held.into_iter().chain([idle]) {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = match stream.read_to_end(&mut rest) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        assert!(closed, "a connection idle past 3 s was closed");
    }
    assert_eq!(errors(&sluice, "slow_request"), 20.0);
    assert_eq!(sluice.kcat_consume("alive", &["-p", "0"]), "still served\n");
}

/// A batch damaged on the disk (one flipped byte) is never served: consumers get
/// CORRUPT_MESSAGE, which reaches the application (a storage error was retried in silence), and
/// the broker says so once, however often they ask; the batch before it is read as ever.
#[test]
fn a_batch_damaged_on_disk_is_refused_to_consumers_who_are_told() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    for message in ["first-message\n", "second-message\n"] {
        let out = sluice.kcat_produce("damaged", &["-p", "0"], message.as_bytes());
        assert!(out.status.success());
    }
    let log = sluice
        .data_dir
        .join("broker/damaged-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"second")
        .expect("the second message in the log");
    bytes[at] = b'S';
    std::fs::write(&log, &bytes).unwrap();
    let script = r#"
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "g", "auto.offset.reset": "earliest"})
c.subscribe(["damaged"])
end = time.time() + 6
while time.time() < end:
    m = c.poll(0.5)
    if m is None:
        continue
    print("error %d" % m.error().code() if m.error() else "message %s" % m.value().decode())
c.close()
"#;
    let out = run_ok(
        python().args(["-c", script, &sluice.kafka]),
        Duration::from_secs(60),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"message first-message"), "{out}");
    assert!(
        lines.contains(&"error 2"),
        "CORRUPT_MESSAGE reaches the consumer: {out}"
    );
    assert!(!out.contains("second-message"), "{out}");
    assert!(
        sluice
            .metric("sluice_broker_corrupt_batches_total{topic=\"damaged\"}")
            .unwrap_or(0.0)
            >= 2.0
    );
    let said = sluice
        .log_text()
        .matches("corrupt batch in the log")
        .count();
    assert_eq!(said, 1, "said once a minute");
}

/// InitProducerId naming a producer id the broker never issued (as a KIP-360 epoch bump does)
/// gets a fresh id, as from Kafka: taking the named one let the next idempotent producer be
/// issued the same id, which then failed at once with INVALID_PRODUCER_EPOCH. The next
/// idempotent producer (librdkafka's, through kcat) works.
#[test]
fn a_producer_id_never_issued_is_not_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let named = ProducerId(123_456_789);
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(named)
        .with_producer_epoch(0);
    let response: InitProducerIdResponse = exchange(&sluice.kafka, (22, 4, true), &request);
    assert_eq!(response.error_code, 0);
    assert_ne!(response.producer_id, named);
    assert_eq!(response.producer_epoch, 0);
    let out = sluice.kcat_produce("pid-check", &["-X", "enable.idempotence=true"], b"after\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sluice.kcat_consume("pid-check", &[]).trim(), "after");
}

/// One request and its response, through kafka-protocol's codecs; `flexible`: a version with
/// tagged fields (request header v2, response header v1).
fn exchange<Req: Encodable, Resp: Decodable>(
    addr: &str,
    (api, version, flexible): (i16, i16, bool),
    request: &Req,
) -> Resp {
    let header = RequestHeader::default()
        .with_request_api_key(api)
        .with_request_api_version(version)
        .with_correlation_id(7);
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, if flexible { 2 } else { 1 })
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    let mut reply = Bytes::from(one_reply(addr, &buf)).slice(4..);
    ResponseHeader::decode(&mut reply, i16::from(flexible)).unwrap();
    Resp::decode(&mut reply, version).unwrap()
}

/// A group request with an empty group id gets INVALID_GROUP_ID, as from Kafka, not an error
/// about the member (or none, from LeaveGroup).
#[test]
fn an_empty_group_id_is_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let join = JoinGroupRequest::default()
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"));
    let joined: JoinGroupResponse = exchange(&sluice.kafka, (11, 5, false), &join);
    assert_eq!(joined.error_code, ResponseError::InvalidGroupId.code());
    let beat = HeartbeatRequest::default().with_member_id(StrBytes::from_static_str("m"));
    let beaten: HeartbeatResponse = exchange(&sluice.kafka, (12, 3, false), &beat);
    assert_eq!(beaten.error_code, ResponseError::InvalidGroupId.code());
    let leave = LeaveGroupRequest::default();
    let left: LeaveGroupResponse = exchange(&sluice.kafka, (13, 3, false), &leave);
    assert_eq!(left.error_code, ResponseError::InvalidGroupId.code());
}
