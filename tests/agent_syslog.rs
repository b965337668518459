//! The agent's syslog and stdin inputs against the real binary: util-linux `logger` sends RFC 3164
//! and RFC 5424 over UDP and TCP (newline and octet-counting framing); each message arrives on
//! `logs` parsed (host, app, severity, message, structured data) and is searchable through the
//! indexer; malformed syslog, invalid UTF-8 and oversize messages are counted and still shipped.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn logger_messages_arrive_parsed_and_searchable() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let udp = free_port().to_string();
    let tcp = free_port().to_string();
    let agent = AgentProcess::start(
        tmp.path(),
        &format!(
            "[agent]\nbrokers = \"{}\"\n[agent.syslog]\nudp = \"127.0.0.1:{udp}\"\ntcp = \"127.0.0.1:{tcp}\"\n",
            sluice.kafka
        ),
        Stdio::null(),
    );
    wait_for_port(&format!("127.0.0.1:{tcp}"), Duration::from_secs(10)).unwrap();
    logger(
        &udp,
        &[
            "-d",
            "--rfc3164",
            "-t",
            "app3164",
            "-p",
            "user.err",
            "disk full over udp",
        ],
    );
    logger(
        &udp,
        &[
            "-d",
            "--rfc5424",
            "-t",
            "app5424",
            "-p",
            "local0.warning",
            "--msgid",
            "ID47",
            "--sd-id",
            "ex@32473",
            "--sd-param",
            "a=\"b\"",
            "disk full over udp 5424",
        ],
    );
    logger(
        &tcp,
        &[
            "-T",
            "--rfc3164",
            "-t",
            "apptcp",
            "-p",
            "daemon.info",
            "over tcp by lines",
        ],
    );
    logger(
        &tcp,
        &[
            "-T",
            "--octet-count",
            "--rfc5424",
            "-t",
            "appoctet",
            "-p",
            "auth.notice",
            "over tcp counted",
        ],
    );

    let events = logs_events(&sluice, 4);
    let by_source = |source: &str| {
        events
            .iter()
            .find(|e| e["source"] == source)
            .unwrap_or_else(|| panic!("no event from {source} in {events:?}"))
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let e = by_source("app3164");
    assert_eq!(e["message"], "disk full over udp");
    assert_eq!(e["level"], "err");
    assert_eq!(e["host"], hostname.trim());
    assert_eq!(e["fields"]["facility"], "user");
    assert_eq!(e["fields"]["syslog"], "rfc3164");
    let e = by_source("app5424");
    assert_eq!(e["message"], "disk full over udp 5424");
    assert_eq!(e["level"], "warning");
    assert_eq!(e["fields"]["msgid"], "ID47");
    assert_eq!(e["fields"]["structured_data"]["ex@32473"]["a"], "b");
    assert_eq!(e["fields"]["syslog"], "rfc5424");
    assert_eq!(by_source("apptcp")["message"], "over tcp by lines");
    assert_eq!(by_source("appoctet")["level"], "notice");
    assert_eq!(by_source("appoctet")["message"], "over tcp counted");
    for e in &events {
        assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()), "{e}");
        assert!(e["timestamp"].as_str().is_some(), "{e}");
    }
    // Through the indexer: the agent's events are searchable by their fields.
    assert_eq!(
        sluice.wait_for_hits(
            "source:app5424 AND level:warning",
            1,
            Duration::from_secs(30)
        ),
        1
    );
    assert_eq!(sluice.hits("fields.msgid:ID47"), 1);
    assert_eq!(
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_udp"}"#),
        2.0
    );
    assert_eq!(
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#),
        2.0
    );
    promtool_passes(&http_get(&agent.http, "/metrics").1);
}

#[test]
fn malformed_syslog_is_counted_and_shipped() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let udp = format!("127.0.0.1:{}", free_port());
    let tcp = format!("127.0.0.1:{}", free_port());
    let agent = AgentProcess::start(
        tmp.path(),
        &format!(
            "[agent]\nbrokers = \"{}\"\n[agent.syslog]\nudp = \"{udp}\"\ntcp = \"{tcp}\"\nmax_message_bytes = 1000\n",
            sluice.kafka
        ),
        Stdio::null(),
    );
    wait_for_port(&tcp, Duration::from_secs(10)).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"no priority at all", &udp).unwrap();
    socket.send_to(b"<13>bad \xff\xfe bytes", &udp).unwrap();
    socket
        .send_to(
            format!("<13>Nov 23 00:00:00 host app: {}", "x".repeat(5000)).as_bytes(),
            &udp,
        )
        .unwrap();
    // A 10 MB line over TCP is cut at max_message_bytes; the connection carries on.
    let mut stream = std::net::TcpStream::connect(&tcp).unwrap();
    let mut long = b"<13>Nov 23 00:00:00 host app: ".to_vec();
    long.extend(std::iter::repeat_n(b'y', 10 << 20));
    long.extend_from_slice(b"\n<13>Nov 23 00:00:01 host app: after the long one\n");
    stream.write_all(&long).unwrap();
    drop(stream);
    // Lines that start with digits are lines, not broken octet counts; a counted frame the
    // connection's end cuts short is shipped as far as it came, and counted.
    let mut stream = std::net::TcpStream::connect(&tcp).unwrap();
    stream
        .write_all(b"99999999999999999999 junk\n2026-12-07 boot finished\n40 <13>Nov 23 00:00:02 host app: cut")
        .unwrap();
    drop(stream);
    let counted = |reason: &str, input: &str| {
        agent.metric(&format!(
            r#"sluice_agent_malformed_input_total{{input="{input}",reason="{reason}"}}"#
        ))
    };
    // The cut frame is the last thing sent: once it is counted, everything is handled, and an
    // event too many would be among those read.
    wait_until("the bad TCP frame counted", Duration::from_secs(10), || {
        counted("bad_frame", "syslog_tcp") >= 1.0
    });
    let events = logs_events(&sluice, 8);
    assert_eq!(events.len(), 8, "{events:?}");
    let message = |e: &serde_json::Value| e["message"].as_str().unwrap().to_owned();
    assert!(events
        .iter()
        .any(|e| message(e).len() < 1000 && message(e).starts_with("yyy")));
    assert!(events.iter().any(|e| message(e) == "after the long one"));
    assert!(events.iter().any(|e| e["message"] == "no priority at all"));
    for line in [
        "99999999999999999999 junk",
        "2026-12-07 boot finished",
        "cut",
    ] {
        assert!(
            events.iter().any(|e| e["message"] == line),
            "{line}: {events:?}"
        );
    }
    assert!(events
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains('\u{fffd}')));
    assert!(events
        .iter()
        .any(|e| e["message"].as_str().unwrap().len() < 1000
            && e["message"].as_str().unwrap().starts_with("xxx")));
    // "no priority at all" has no header; "<13>bad .. bytes" has its priority.
    assert_eq!(counted("no_header", "syslog_udp"), 1.0);
    assert_eq!(counted("invalid_utf8", "syslog_udp"), 1.0);
    assert_eq!(counted("truncated", "syslog_udp"), 1.0);
    assert_eq!(counted("bad_frame", "syslog_tcp"), 1.0);
    assert_eq!(counted("truncated", "syslog_tcp"), 1.0);
    assert_eq!(counted("no_header", "syslog_tcp"), 2.0);
}

/// Both ways to run the agent, `sluice-agent` and `sluice agent`, ship what they read.
#[test]
fn stdin_lines_are_shipped_and_the_agent_ends_with_its_input() {
    for command in [AgentCommand::Standalone, AgentCommand::Subcommand] {
        let tmp = tempfile::tempdir().unwrap();
        let sluice = Sluice::broker(tmp.path(), "");
        let mut agent = AgentProcess::start_as(
            command,
            tmp.path(),
            &format!("[agent]\nbrokers = \"{}\"\nstdin = true\n", sluice.kafka),
            Stdio::piped(),
        );
        let mut input = agent.child.stdin.take().unwrap();
        for i in 0..1000 {
            writeln!(input, "stdin line {i}").unwrap();
        }
        drop(input);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{command:?}: the agent did not stop after its input ended"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{command:?}: {status}");
        let events = logs_events(&sluice, 1000);
        assert_eq!(events.len(), 1000, "{command:?}");
        let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1000, "{command:?}: every line has its own id");
        assert!(events.iter().all(|e| e["source"] == "stdin"));
    }
}

/// A syslog flood over TCP from util-linux `logger` (5000 messages a second for 40 s) while the
/// broker is stopped for 30 s: the agent's spool takes what librdkafka's queue cannot, and after
/// the broker is back every message is in the topic.
#[test]
fn broker_stopped_for_30_s_during_a_syslog_flood_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let tcp = free_port().to_string();
    let agent = AgentProcess::start(
        tmp.path(),
        &format!(
            "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{tcp}\"\n",
            sluice.kafka
        ),
        Stdio::null(),
    );
    wait_for_port(&format!("127.0.0.1:{tcp}"), Duration::from_secs(10)).unwrap();
    let (rounds, per_round) = (40u64, 5000u64);
    let flood = {
        let dir = tmp.path().to_path_buf();
        let tcp = tcp.clone();
        std::thread::spawn(move || {
            for round in 0..rounds {
                let started = Instant::now();
                let file = dir.join(format!("round-{round}.txt"));
                let lines: String = (round * per_round..(round + 1) * per_round)
                    .map(|n| format!("flood {n} payload\n"))
                    .collect();
                std::fs::write(&file, lines).unwrap();
                let mut args = vec!["-T", "--octet-count", "--rfc5424", "-t", "flood", "-f"];
                let file = file.display().to_string();
                args.push(&file);
                logger(&tcp, &args);
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(sluice.stop_with("TERM").success());
    let mut spooled = 0.0f64;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        spooled = spooled.max(agent.metric("sluice_agent_spool_bytes"));
        std::thread::sleep(Duration::from_millis(500));
    }
    sluice.restart();
    flood.join().unwrap();
    assert!(spooled > 0.0, "the spool was never used during the outage");
    let total = rounds * per_round;
    wait_until(
        "every message acknowledged",
        Duration::from_secs(120),
        || {
            agent.metric("sluice_agent_events_sent_total") >= total as f64
                && agent.metric("sluice_agent_spool_bytes") == 0.0
        },
    );
    assert_numbered_arrived(&sluice, "flood", total as usize, total as usize);
}

/// With no broker at all and a small spool set to drop, a flood is bounded: the spool stays
/// within `max_bytes` and what it cannot hold is counted as dropped, not kept in memory.
#[test]
fn a_full_spool_drops_and_counts_with_the_drop_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let tcp = free_port().to_string();
    // The discard port: no test's broker listens there.
    let nowhere = "127.0.0.1:9".to_owned();
    let agent = AgentProcess::start(
        tmp.path(),
        &format!(
            "[agent]\nbrokers = \"{nowhere}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{tcp}\"\n\
             [agent.spool]\nmax_bytes = 65536\nwhen_full = \"drop\"\n"
        ),
        Stdio::null(),
    );
    wait_for_port(&format!("127.0.0.1:{tcp}"), Duration::from_secs(10)).unwrap();
    let file = tmp.path().join("flood.txt");
    let lines: String = (0..30_000)
        .map(|n| format!("flood {n} payload\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let file = file.display().to_string();
    logger(&tcp, &["-T", "--octet-count", "-t", "flood", "-f", &file]);
    wait_until("all 30000 messages read", Duration::from_secs(30), || {
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#) >= 30_000.0
    });
    let spooled = agent.metric("sluice_agent_spool_bytes");
    assert!(
        spooled > 0.0 && spooled <= 65_536.0,
        "spool holds {spooled} bytes"
    );
    assert!(agent.metric("sluice_agent_spool_dropped_total") > 0.0);
    // Said in the log, once for the flood.
    assert_eq!(
        agent.log_text().matches("the spool is full").count(),
        1,
        "{}",
        agent.log_text()
    );
}

/// `logger` sends `<tag> 0` to `<tag> <count - 1>` over TCP; waits until the agent has read
/// `read` messages in all.
fn send_numbered(port: &str, agent: &AgentProcess, tag: &str, count: usize, read: usize) {
    for n in 0..count {
        logger(port, &["-T", "-t", tag, &format!("{tag} {n}")]);
    }
    wait_until("the messages read", Duration::from_secs(20), || {
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#) >= read as f64
    });
}

/// Every message `first` and `<tag> 0..count` is on `logs`, however many times it was sent.
fn assert_arrived_once(sluice: &Sluice, first: &str, tag: &str, count: usize) {
    let mut messages = logs_messages(sluice, count + 1);
    messages.dedup();
    let mut expected: Vec<String> = (0..count).map(|n| format!("{tag} {n}")).collect();
    expected.push(first.into());
    expected.sort_unstable();
    assert_eq!(messages, expected);
}

/// SIGTERM to an agent holding events the broker has not acknowledged: it keeps them in the
/// spool and, nothing being lost, exits 0.
fn stop_keeping_unsent_events(agent: &mut AgentProcess) {
    signal_pid(agent.child.id(), "TERM");
    let mut status = None;
    wait_until("the agent to stop", Duration::from_secs(60), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{}", agent.log_text());
    assert!(
        agent.log_text().contains("kept in the spool"),
        "{}",
        agent.log_text()
    );
}

/// SIGTERM while the broker is away: the syslog messages librdkafka still held are kept in the
/// spool rather than lost with the process, and the next start sends them, though its
/// configuration has no syslog input any more.
#[test]
fn syslog_messages_held_at_a_stop_with_the_broker_away_are_sent_after_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let port = free_port().to_string();
    let config = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{port}\"\n",
        sluice.kafka
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).unwrap();
    logger(&port, &["-T", "-t", "held", "before the broker went"]);
    wait_until(
        "the first message acknowledged",
        Duration::from_secs(20),
        || agent.metric("sluice_agent_events_sent_total") >= 1.0,
    );
    sluice.kill9();
    send_numbered(&port, &agent, "held", 10, 11);
    stop_keeping_unsent_events(&mut agent);
    sluice.restart();
    let files_only = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.files]\ninclude = [\"{}/none/*.log\"]\n",
        sluice.kafka,
        tmp.path().display()
    );
    let _agent = AgentProcess::start(tmp.path(), &files_only, Stdio::null());
    assert_arrived_once(&sluice, "before the broker went", "held", 10);
}

/// SIGTERM while the cluster refuses the topic (auto-creation off, not made yet): the syslog
/// messages librdkafka gave back, waiting to be offered again, are kept in the spool with the
/// rest, and once the topic is made the next start sends every one.
#[test]
fn syslog_messages_refused_at_a_stop_are_sent_after_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nauto_create_topics = false\n");
    let port = free_port().to_string();
    // librdkafka gives up on records of a missing topic after 100 ms rather than 30 s.
    let config = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{port}\"\n\
         [agent.kafka]\n\"topic.metadata.propagation.max.ms\" = \"100\"\n",
        sluice.kafka
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).unwrap();
    logger(&port, &["-T", "-t", "refused", "refused first"]);
    wait_until(
        "the agent says the topic refuses",
        Duration::from_secs(30),
        || agent.log_text().contains("refuses records"),
    );
    send_numbered(&port, &agent, "refused", 5, 6);
    stop_keeping_unsent_events(&mut agent);
    sluice.create_topic("logs", 3, &[]);
    let _agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    assert_arrived_once(&sluice, "refused first", "refused", 5);
}

/// With the broker away and a small spool set to block, a TCP flood is held back at the door
/// (the agent stops reading, the sender waits): nothing is dropped, the spool stays within
/// `max_bytes`, and once the broker is back every message arrives.
#[test]
fn a_full_spool_blocks_the_sender_and_loses_nothing_with_the_block_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let tcp = free_port().to_string();
    let agent = AgentProcess::start(
        tmp.path(),
        &format!(
            "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{tcp}\"\n\
             [agent.spool]\nmax_bytes = 65536\nwhen_full = \"block\"\n",
            sluice.kafka
        ),
        Stdio::null(),
    );
    logger(&tcp, &["-T", "-t", "flood", "before the outage"]);
    wait_until(
        "the first message acknowledged",
        Duration::from_secs(20),
        || agent.metric("sluice_agent_events_sent_total") >= 1.0,
    );
    sluice.kill9();
    let total = 30_000;
    let file = tmp.path().join("flood.txt");
    // 27 MB: more than the kernel's socket buffers hold, so the sender must wait.
    let payload = "p".repeat(900);
    let lines: String = (0..total)
        .map(|n| format!("flood {n} {payload}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let mut sender = Background::spawn(
        Command::new("logger")
            .args([
                "-n",
                "127.0.0.1",
                "-P",
                &tcp,
                "-T",
                "--octet-count",
                "-t",
                "flood",
                "-f",
            ])
            .arg(&file),
    );
    let read =
        |agent: &AgentProcess| agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#);
    // librdkafka's 4 MiB queue fills, the spool's 64 KiB too; then reading stops.
    let mut last = -1.0;
    wait_until("reading to stop", Duration::from_secs(60), || {
        let now = read(&agent);
        let stopped = now == last && now > 1.0;
        last = now;
        std::thread::sleep(Duration::from_secs(1));
        stopped && agent.metric("sluice_agent_spool_bytes") > 0.0
    });
    assert!(
        read(&agent) < (total + 1) as f64,
        "the whole flood was read"
    );
    assert!(sender.is_running(), "the sender was not held back");
    assert!(agent.metric("sluice_agent_spool_bytes") <= 65_536.0);
    assert_eq!(agent.metric("sluice_agent_spool_dropped_total"), 0.0);
    sluice.restart();
    let status = sender.finish("logger", Duration::from_secs(120)).status;
    assert!(status.success());
    assert_numbered_arrived(&sluice, "flood", total, total + 1);
    assert_eq!(agent.metric("sluice_agent_spool_dropped_total"), 0.0);
}

/// Out of file descriptors (a limit of 64 set on the running agent, then a hundred idle TCP
/// connections), the agent says it cannot accept connections and goes on: they wait in the
/// backlog (not counted as refused: they are served later), and once they close, a message
/// sent over TCP arrives.
#[test]
fn running_out_of_file_descriptors_refuses_connections_not_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"{addr}\"\n",
        sluice.kafka
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_for_port(&addr, Duration::from_secs(10)).unwrap();
    logger(&port, &["-T", "-t", "fds", "before the limit"]);
    wait_until("the first message sent", Duration::from_secs(20), || {
        agent.metric("sluice_agent_events_sent_total") >= 1.0
    });
    let pid = agent.child.id().to_string();
    run_ok(
        Command::new("prlimit").args(["--pid", &pid, "--nofile=64:64"]),
        Duration::from_secs(10),
    );
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The connections past the limit wait in the backlog while the agent tries again.
    std::thread::sleep(Duration::from_secs(1));
    drop(idle);
    wait_until("the failed accepts said", Duration::from_secs(20), || {
        agent.log_text().contains("cannot accept them")
    });
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        agent
            .log_text()
            .matches("TCP connections not served: cannot accept them")
            .count(),
        1,
        "{}",
        agent.log_text()
    );
    logger(&port, &["-T", "-t", "fds", "after the limit"]);
    let messages = logs_messages(&sluice, 2);
    assert_eq!(messages, ["after the limit", "before the limit"]);
    assert_eq!(
        agent.metric(r#"sluice_agent_connections_refused_total{input="syslog_tcp"}"#),
        0.0
    );
}

/// stdin held open by its writer: a reload of the configuration loses none of the lines
/// written after it (the read in progress is not left behind to take them), and SIGTERM stops
/// the agent without waiting for another line.
#[test]
fn stdin_lines_survive_a_reload_and_an_open_stdin_does_not_hold_a_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let config = |host: &str| {
        format!(
            "[agent]\nbrokers = \"{}\"\nstdin = true\nhostname = \"{host}\"\n",
            sluice.kafka
        )
    };
    let mut agent = AgentProcess::start(tmp.path(), &config("before"), Stdio::piped());
    let mut input = agent.child.stdin.take().unwrap();
    let sent = |agent: &AgentProcess| agent.metric("sluice_agent_events_sent_total");
    for n in 0..10 {
        writeln!(input, "stdin {n}").unwrap();
    }
    wait_until("the first lines sent", Duration::from_secs(20), || {
        sent(&agent) >= 10.0
    });
    std::fs::write(tmp.path().join("agent.toml"), config("after")).unwrap();
    wait_until("the reload", Duration::from_secs(20), || {
        agent.log_text().matches("agent started").count() == 2
    });
    for n in 10..20 {
        writeln!(input, "stdin {n}").unwrap();
    }
    wait_until(
        "the lines after the reload sent",
        Duration::from_secs(20),
        || sent(&agent) >= 20.0,
    );
    signal_pid(agent.child.id(), "TERM");
    let mut status = None;
    wait_until(
        "the agent to stop, stdin still open",
        Duration::from_secs(15),
        || {
            status = agent.child.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(status.unwrap().success(), "{}", agent.log_text());
    let events = logs_events(&sluice, 20);
    let mut messages: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["host"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    messages.sort_by_key(|m| m.split(' ').nth(2).unwrap().parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20)
        .map(|n| format!("{} stdin {n}", if n < 10 { "before" } else { "after" }))
        .collect();
    assert_eq!(messages, expected);
    drop(input);
}
