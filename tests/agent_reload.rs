//! The agent's configuration and lifecycle against the real binary: changes to its file (and to
//! a Kubernetes ConfigMap) are taken up without a restart; a change that does not load, does not
//! start or changes nothing leaves the running inputs serving; an input that fails stops the
//! agent with its error.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// An agent of `sluice` with one input, syslog over TCP on `port`.
fn syslog_tcp_config(sluice: &Sluice, port: &str) -> String {
    format!(
        "[agent]\nbrokers = \"{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{port}\"\n",
        sluice.kafka
    )
}

/// The agent follows its configuration file: a new listen address is taken up without a restart
/// of the process; a broken file leaves the running inputs as they are.
#[test]
fn config_changes_are_picked_up_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let config = |port: &str| syslog_tcp_config(&sluice, port);
    let first = free_port().to_string();
    let agent = AgentProcess::start(tmp.path(), &config(&first), Stdio::null());
    wait_for_port(&format!("127.0.0.1:{first}"), Duration::from_secs(10)).unwrap();
    logger(&first, &["-T", "-t", "reload", "before the change"]);
    // A connection open across the change: it ends with the inputs it belonged to, rather
    // than living on with the old configuration.
    let mut open = std::net::TcpStream::connect(format!("127.0.0.1:{first}")).unwrap();
    open.write_all(b"<13>Dec  2 08:00:00 web-1 reload: on an open connection\n")
        .unwrap();
    wait_until(
        "the open connection's message read",
        Duration::from_secs(20),
        || agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#) >= 2.0,
    );
    let second = free_port().to_string();
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, config(&second)).unwrap();
    wait_for_port(&format!("127.0.0.1:{second}"), Duration::from_secs(20)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut open, &mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the old connection is still served: {other:?}"),
    }
    logger(&second, &["-T", "-t", "reload", "after the change"]);
    std::fs::write(&path, "[agent]\nno_such_key = 1\n").unwrap();
    wait_until("the broken file refused", Duration::from_secs(20), || {
        let log = agent.log_text();
        log.contains("no_such_key") && log.contains("keeps its running configuration")
    });
    // Said once: the agent's own reads of the file are no reason to load it again.
    std::thread::sleep(Duration::from_secs(2));
    let said = agent
        .log_text()
        .matches("keeps its running configuration")
        .count();
    assert_eq!(said, 1, "{}", agent.log_text());
    // Put right, the file is said to load again (nothing changes: it is the one running).
    std::fs::write(&path, config(&second)).unwrap();
    wait_until(
        "the mended file said to load",
        Duration::from_secs(20),
        || {
            agent
                .log_text()
                .contains("the configuration file loads again")
        },
    );
    logger(&second, &["-T", "-t", "reload", "despite a broken file"]);
    // Another host's messages go to their own partition: compared as a set.
    let messages = logs_messages(&sluice, 4);
    assert_eq!(
        messages,
        [
            "after the change",
            "before the change",
            "despite a broken file",
            "on an open connection"
        ]
    );
    assert_eq!(
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#),
        4.0,
        "counters carry on across a reload"
    );
}

/// A save of the configuration that changes nothing, and one that does not load, once an input
/// has ended (stdin at its end, the metrics still collected): the agent carries on with what
/// runs. (Waiting for the inputs again after such a change once polled the ended one's task a
/// second time, and the agent died of it.)
#[test]
fn saves_that_change_nothing_after_stdin_ended_keep_the_agent_running() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let config = format!(
        "[agent]\nbrokers = \"{}\"\nstdin = true\n[agent.metrics]\nhost = true\ninterval_ms = 200\n",
        sluice.kafka
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let sent = |agent: &AgentProcess| agent.metric("sluice_agent_metric_samples_sent_total");
    wait_until("samples sent", Duration::from_secs(20), || {
        sent(&agent) > 0.0
    });
    let path = tmp.path().join("agent.toml");
    for text in [
        config.as_str(),
        "[agent]\nno_such_key = 1\n",
        config.as_str(),
    ] {
        std::fs::write(&path, text).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "the agent ended after a save of its configuration:\n{}",
            agent.log_text()
        );
    }
    let before = sent(&agent);
    wait_until("more samples sent", Duration::from_secs(20), || {
        sent(&agent) > before
    });
}

/// A configuration that loads but cannot start (a GELF port another process holds) leaves the
/// previous inputs serving: what the failed start had opened (the syslog socket) is closed
/// again, so the previous configuration can take it back.
#[test]
fn a_configuration_that_cannot_start_leaves_the_previous_one_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let udp = free_port().to_string();
    let config = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.syslog]\nudp = \"127.0.0.1:{udp}\"\n",
        sluice.kafka
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    logger(&udp, &["-d", "-t", "reload", "before the change"]);
    wait_until("the first message sent", Duration::from_secs(20), || {
        agent.metric("sluice_agent_events_sent_total") >= 1.0
    });
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wanted = format!(
        "{config}[agent.gelf]\ntcp = \"{}\"\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(tmp.path().join("agent.toml"), wanted).unwrap();
    wait_until(
        "the agent going on with its previous configuration",
        Duration::from_secs(30),
        || agent.log_text().contains("previous configuration"),
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent ended:\n{}",
        agent.log_text()
    );
    logger(&udp, &["-d", "-t", "reload", "after the change"]);
    let messages = logs_messages(&sluice, 2);
    assert_eq!(messages, ["after the change", "before the change"]);
}

/// A Kubernetes ConfigMap volume changes the configuration without touching `agent.toml`: the
/// file is a link through `..data`, and the kubelet swaps `..data` to a new directory. The agent
/// takes the change up all the same.
#[test]
fn a_configmap_update_is_picked_up() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let config = |port: &str| syslog_tcp_config(&sluice, port);
    let first = free_port().to_string();
    let _agent = AgentProcess::start(tmp.path(), &config(&first), Stdio::null());
    wait_for_port(&format!("127.0.0.1:{first}"), Duration::from_secs(10)).unwrap();
    // The kubelet's layout, as a ConfigMap volume holds it.
    let dir = tmp.path();
    std::fs::create_dir(dir.join("..2026_12_02_01")).unwrap();
    std::fs::write(dir.join("..2026_12_02_01/agent.toml"), config(&first)).unwrap();
    symlink("..2026_12_02_01", dir.join("..data")).unwrap();
    symlink("..data/agent.toml", dir.join("agent.toml.link")).unwrap();
    std::fs::rename(dir.join("agent.toml.link"), dir.join("agent.toml")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // The update: a new directory, `..data` swapped to it, the old one removed.
    let second = free_port().to_string();
    std::fs::create_dir(dir.join("..2026_12_02_02")).unwrap();
    std::fs::write(dir.join("..2026_12_02_02/agent.toml"), config(&second)).unwrap();
    symlink("..2026_12_02_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_12_02_01")).unwrap();
    wait_for_port(&format!("127.0.0.1:{second}"), Duration::from_secs(20)).unwrap();
}

/// An input that fails (stdin that cannot be read: a directory) stops the agent with its error
/// and a failure status, so that systemd or Kubernetes restarts it, rather than the agent running
/// on without the input or exiting 0.
#[test]
fn a_failed_input_ends_the_agent_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    // A syslog listener too, whose task comes first and never ends: the failure of the one
    // after it is seen all the same.
    let config = format!(
        "[agent]\nbrokers = \"{}\"\nstdin = true\n[agent.syslog]\nudp = \"127.0.0.1:{}\"\n",
        sluice.kafka,
        free_port()
    );
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    // Run to its end: it may fail before its HTTP port is even up.
    let out = run(
        AgentCommand::Standalone
            .command()
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(tmp.path().join("agent-state"))
            .args(["--http", "127.0.0.1:0"])
            .stdin(std::fs::File::open(tmp.path()).unwrap()),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("agent input stdin"), "{log}");
}

/// An agent whose brokers are away says so once, not twice at every reconnect (it wrote 66
/// lines in 10 s).
#[test]
fn brokers_away_are_said_once_not_at_every_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[agent]\nbrokers = \"127.0.0.1:{}\"\n[agent.syslog]\nudp = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port()
    );
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("the brokers said away", Duration::from_secs(20), || {
        agent.log_text().contains("brokers are down")
    });
    std::thread::sleep(Duration::from_secs(5));
    let log = agent.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(said <= 4, "{said} lines:\n{log}");
}

/// A stop that waits (the broker away, an event unacknowledged) is cut short by a second
/// signal; a repeat within a second (GNU timeout signals its child, then its process group) is
/// the same stop.
#[test]
fn a_second_signal_ends_a_waiting_stop_and_a_prompt_repeat_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let config = format!(
        "[agent]\nbrokers = \"127.0.0.1:{}\"\n[agent.syslog]\ntcp = \"127.0.0.1:{port}\"\n",
        free_port()
    );
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    logger(&port, &["-T", "-t", "waiting", "never acknowledged"]);
    wait_until("the message read", Duration::from_secs(20), || {
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_tcp"}"#) >= 1.0
    });
    let pid = agent.child.id();
    signal_pid(pid, "TERM");
    std::thread::sleep(Duration::from_millis(100));
    signal_pid(pid, "TERM");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the prompt repeat ended the stop:\n{}",
        agent.log_text()
    );
    signal_pid(pid, "INT");
    let mut status = None;
    wait_until("the agent to end", Duration::from_secs(10), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(130), "{}", agent.log_text());
}

/// A reload while the broker is away, during a steady stream of syslog datagrams: the listener
/// stays open across the restart of the inputs (datagrams wait in its buffer), the stop does
/// not wait for acknowledgements that cannot come, and once the broker is back every message is
/// on the topic. (The inputs were down for the 5 s a stop waits for a stalled broker, and every
/// datagram of those 5 s was lost.)
#[test]
fn a_reload_with_the_broker_away_loses_no_datagram() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let port = free_port().to_string();
    let kafka = sluice.kafka.clone();
    let config = |hostname: &str| {
        format!(
            "[agent]\nbrokers = \"{}\"\nhostname = \"{hostname}\"\n[agent.syslog]\nudp = \"127.0.0.1:{port}\"\n",
            kafka
        )
    };
    let agent = AgentProcess::start(tmp.path(), &config("before"), Stdio::null());
    wait_until("the agent started", Duration::from_secs(20), || {
        agent.log_text().contains("agent started")
    });
    assert!(sluice.stop_with("TERM").success());
    let total = 1000usize;
    let sender = {
        let port = port.clone();
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for n in 0..total {
                let message = format!("<14>1 2026-12-07T16:10:00Z h app - - - reload {n}");
                socket
                    .send_to(message.as_bytes(), format!("127.0.0.1:{port}"))
                    .unwrap();
                // About 330 a second, for 3 s: what waits during the reload fits the kernel's
                // default buffer too (net.core.rmem_max caps the 4 MiB asked for).
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(tmp.path().join("agent.toml"), config("after")).unwrap();
    wait_until("the inputs restarted", Duration::from_secs(20), || {
        agent.log_text().matches("agent started").count() == 2
    });
    sender.join().unwrap();
    wait_until("every datagram read", Duration::from_secs(20), || {
        agent.metric(r#"sluice_agent_lines_read_total{input="syslog_udp"}"#) >= total as f64
    });
    sluice.restart();
    assert_numbered_arrived(&sluice, "reload", total, total);
}

/// Open syslog and GELF connections outlive reloads that keep their listeners: each connection
/// goes on between two messages under the new configuration, even with a message half sent at the
/// moment, and every message arrives once. (They were closed at every reload, and what their
/// senders had in flight was lost: TCP syslog has no acknowledgement to resend by.)
#[test]
fn open_tcp_connections_are_carried_over_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let (syslog, gelf) = (free_port(), free_port());
    let config = |hostname: &str| {
        format!(
            "[agent]\nbrokers = \"{}\"\nhostname = \"{hostname}\"\n[agent.syslog]\ntcp = \
             \"127.0.0.1:{syslog}\"\n[agent.gelf]\ntcp = \"127.0.0.1:{gelf}\"\n",
            sluice.kafka
        )
    };
    let agent = AgentProcess::start(tmp.path(), &config("host-0"), Stdio::null());
    wait_for_port(&format!("127.0.0.1:{syslog}"), Duration::from_secs(20)).unwrap();
    wait_for_port(&format!("127.0.0.1:{gelf}"), Duration::from_secs(20)).unwrap();
    // About 7.5 s of sending: the three reloads come while it goes on.
    let total = 2500usize;
    let send = |port: u16, message: fn(usize) -> String| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            for n in 0..total {
                // In two writes: a reload may come with half a message received.
                let message = message(n);
                let (head, tail) = message.as_bytes().split_at(message.len() / 2);
                stream.write_all(head).unwrap();
                std::thread::sleep(Duration::from_millis(1));
                stream.write_all(tail).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            stream
        })
    };
    let senders = [
        send(syslog, |n| {
            format!("<14>1 2026-12-07T16:10:00Z h app - - - syslog-reload {n}\n")
        }),
        send(gelf, |n| {
            format!(
                "{{\"version\":\"1.1\",\"host\":\"h\",\"short_message\":\"gelf-reload {n}\"}}\0"
            )
        }),
    ];
    for reload in 1..=3 {
        std::thread::sleep(Duration::from_millis(1000));
        std::fs::write(
            tmp.path().join("agent.toml"),
            config(&format!("host-{reload}")),
        )
        .unwrap();
        wait_until("the inputs restarted", Duration::from_secs(20), || {
            agent.log_text().matches("agent started").count() == reload + 1
        });
    }
    for sender in senders {
        let mut stream = sender.join().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        match std::io::Read::read(&mut stream, &mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the connection was not kept open: {other:?}"),
        }
    }
    assert!(agent
        .log_text()
        .contains("carried over to the new configuration"));
    let mut times = std::collections::HashMap::<String, usize>::new();
    for event in logs_events(&sluice, 2 * total) {
        *times
            .entry(event["message"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for tag in ["syslog-reload", "gelf-reload"] {
        let wrong: Vec<(usize, usize)> = (0..total)
            .map(|n| (n, times.get(&format!("{tag} {n}")).copied().unwrap_or(0)))
            .filter(|(_, times)| *times != 1)
            .collect();
        assert!(
            wrong.is_empty(),
            "{tag}: (message, times) {:?}",
            &wrong[..wrong.len().min(10)]
        );
    }
}

/// A target removed by a reload leaves `sluice_agent_scrape_target_up`, even when a scrape of it
/// was still waiting at the reload: the old round reports nothing after it. (The trial saw
/// removed targets listed for minutes, and a hanging one set again after the reload.)
#[test]
fn a_target_removed_by_a_reload_is_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    // Takes connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = format!("http://{}/metrics", silent.local_addr().unwrap());
    let answering = format!("http://{}/metrics", sluice.http);
    let config = |targets: &[&str]| {
        format!(
            "[agent]\nbrokers = \"{}\"\n[agent.metrics]\ninterval_ms = 3000\ntargets = {targets:?}\n",
            sluice.kafka
        )
    };
    let agent = AgentProcess::start(tmp.path(), &config(&[&answering, &hanging]), Stdio::null());
    let up = |target: &str| format!("sluice_agent_scrape_target_up{{target=\"{target}\"}}");
    wait_until("the hanging target down", Duration::from_secs(20), || {
        agent.metrics().contains(&up(&hanging))
    });
    // The next round's scrape of it is waiting (2.7 s) when the reload comes.
    wait_until("a round started", Duration::from_secs(20), || {
        agent.metric(r#"sluice_agent_collect_errors_total{collector="prometheus"}"#) >= 1.0
    });
    std::thread::sleep(Duration::from_millis(3300));
    std::fs::write(tmp.path().join("agent.toml"), config(&[&answering])).unwrap();
    wait_until("the inputs restarted", Duration::from_secs(20), || {
        agent.log_text().matches("agent started").count() == 2
    });
    wait_until(
        "the answering target scraped again",
        Duration::from_secs(20),
        || agent.metric(&up(&answering)) == 1.0,
    );
    std::thread::sleep(Duration::from_secs(4));
    let metrics = agent.metrics();
    assert!(!metrics.contains(&up(&hanging)), "{metrics}");
}
