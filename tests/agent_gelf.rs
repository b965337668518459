//! GELF against the real agent and broker: graypy (a GELF client for Python's logging) over UDP,
//! zlib-compressed and chunked, and over TCP; datagrams as Docker's gelf logging driver makes them
//! (its fields, gzip, go-gelf's chunking). Each message arrives whole, with its host, level, time
//! and container; broken GELF is counted, never a crash.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn gelf_from_graypy_and_as_docker_sends_it_arrives_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let udp = format!("127.0.0.1:{}", free_port());
    let tcp = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[agent]\nbrokers = \"{}\"\nhostname = \"node-1\"\n\n[agent.gelf]\nudp = \"{udp}\"\ntcp = \"{tcp}\"\n",
        sluice.kafka
    );
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    // The TCP listener is bound after the UDP socket: both are ready.
    wait_for_port(&tcp, Duration::from_secs(10)).unwrap();
    let out = run_ok(
        python()
            .arg(client_script("gelf_send.py"))
            .arg("127.0.0.1")
            .arg(udp.rsplit(':').next().unwrap())
            .arg(tcp.rsplit(':').next().unwrap()),
        Duration::from_secs(60),
    );
    assert!(out.contains("sent"), "{out}");
    // Broken GELF of the other kinds: counted, and each listener carries on.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(br#"{"version":"1.1","host":"h"}"#, &udp)
        .unwrap();
    let mut chunk = vec![0x1e, 0x0f];
    chunk.extend_from_slice(&7u64.to_be_bytes());
    chunk.extend_from_slice(&[5, 2]); // chunk 5 of 2
    socket.send_to(&chunk, &udp).unwrap();
    // The first of two chunks, the last datagram sent: the reassembly gives up on it after
    // five seconds with nothing else arriving, and says so.
    let mut lone = vec![0x1e, 0x0f];
    lone.extend_from_slice(&8u64.to_be_bytes());
    lone.extend_from_slice(&[0, 2]);
    lone.extend_from_slice(b"{\"version\":");
    socket.send_to(&lone, &udp).unwrap();
    let mut frames = br#"{"version":"1.1","host":"h","short_message":""#.to_vec();
    frames.extend(std::iter::repeat_n(b'z', 2 << 20));
    frames.extend_from_slice(b"\"}\0");
    frames.extend_from_slice(
        br#"{"version":"1.1","host":"h","short_message":"graypy tcp after the 2 MB frame"}"#,
    );
    frames.push(0);
    let mut stream = TcpStream::connect(&tcp).unwrap();
    stream.write_all(&frames).unwrap();
    drop(stream);
    let counted = |input: &str, reason: &str| {
        agent.metric(&format!(
            "sluice_agent_malformed_input_total{{input=\"{input}\",reason=\"{reason}\"}}"
        ))
    };
    wait_until("the broken GELF counted", Duration::from_secs(20), || {
        counted("gelf_udp", "missing_short_message") == 1.0
            && counted("gelf_udp", "bad_chunk") == 1.0
            && counted("gelf_tcp", "too_large") == 1.0
            && counted("gelf_udp", "incomplete_chunks") == 1.0
    });
    let events = logs_events(&sluice, 7);
    let find = |prefix: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {events:?}"))
    };
    let short = find("graypy udp short");
    assert_eq!(short["host"], "graypy-host");
    assert_eq!(short["level"], "warning");
    let long = find("graypy udp long");
    assert_eq!(
        long["message"].as_str().unwrap().len(),
        "graypy udp long ".len() + 5000,
        "all the chunks, in order"
    );
    assert_eq!(long["level"], "err");
    let docker = find("docker gzip line");
    assert_eq!(docker["host"], "docker-host");
    assert_eq!(docker["source"], "web");
    assert_eq!(docker["level"], "info");
    assert_eq!(docker["timestamp"], "2026-11-23T12:40:00.250Z");
    assert_eq!(docker["container"]["name"], "web");
    assert_eq!(docker["container"]["image"], "nginx:1.25");
    assert_eq!(docker["container"]["id"], WEB_CONTAINER);
    assert_eq!(docker["fields"]["command"], "nginx -g daemon off;");
    let chunked = find("docker chunked ");
    assert_eq!(
        chunked["message"].as_str().unwrap().len(),
        "docker chunked ".len() + 6000
    );
    find("graypy tcp one");
    find("graypy tcp two");
    find("graypy tcp after the 2 MB frame");
    assert_eq!(events.len(), 7, "{events:?}");
    for reason in ["bad_compression", "invalid_json"] {
        assert_eq!(counted("gelf_udp", reason), 1.0, "{reason}");
    }
    assert_eq!(
        agent.metric("sluice_agent_lines_read_total{input=\"gelf_tcp\"}"),
        3.0
    );
}
