//! The `sluice` binary as an operator meets it: starting, answering, stopping, and refusing bad
//! configuration, flags, data dirs and ports with one clear line.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;

fn sluice(args: &[&str]) -> std::process::Output {
    run(Command::new(SLUICE).args(args), Duration::from_secs(30))
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    lines[0].to_owned()
}

#[test]
fn up_answers_on_both_ports_and_exits_zero_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::up(tmp.path(), "");
    let (status, body) = http_get(&sluice.http, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok"));
    let metrics = sluice.metrics();
    assert!(metrics.contains("sluice_build_info{version="), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    // The Kafka port answers a real client's metadata request.
    let listing = run_ok(
        kcat().args(["-b", &sluice.kafka, "-L", "-m", "10"]),
        Duration::from_secs(30),
    );
    assert!(listing.contains("1 brokers"), "{listing}");
    assert!(listing.contains(&sluice.kafka), "{listing}");
    let status = sluice.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", sluice.log_text());
    assert!(sluice.log_text().contains("stopped cleanly"));
}

#[test]
fn sigint_also_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    assert_eq!(sluice.stop_with("INT").code(), Some(0));
}

#[test]
fn bad_config_names_file_line_key_and_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "[broker]\nlisten = \"127.0.0.1:0\"\ndefault_partitions = \"many\"\n",
    )
    .unwrap();
    let line = one_line_error(&sluice(&["up", "--config", path.to_str().unwrap()]));
    assert!(line.contains(path.to_str().unwrap()), "{line}");
    assert!(line.contains("line 3"), "{line}");
    assert!(line.contains("broker.default_partitions"), "{line}");
    assert!(line.contains("expected u32"), "{line}");

    std::fs::write(&path, "[broker]\nlisten_adress = \"127.0.0.1:0\"\n").unwrap();
    let line = one_line_error(&sluice(&["broker", "--config", path.to_str().unwrap()]));
    assert!(
        line.contains("line 2") && line.contains("listen_adress"),
        "{line}"
    );
    assert!(line.contains("expected one of"), "{line}");

    let missing = tmp.path().join("nope.toml");
    let line = one_line_error(&sluice(&["up", "--config", missing.to_str().unwrap()]));
    assert!(
        line.contains("nope.toml") && line.contains("cannot read"),
        "{line}"
    );
}

#[test]
fn agent_kafka_properties_are_checked_before_the_agent_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("agent.toml");
    let agent = |kafka: &str| {
        std::fs::write(
            &path,
            format!("[agent]\nbrokers = \"127.0.0.1:9\"\n[agent.kafka]\n{kafka}\n"),
        )
        .unwrap();
        one_line_error(&sluice(&["agent", "--config", path.to_str().unwrap()]))
    };
    let line = agent("\"sasl.mechanizms\" = \"PLAIN\"");
    assert!(line.contains(path.to_str().unwrap()), "{line}");
    assert!(line.contains("agent.kafka"), "{line}");
    assert!(line.contains("sasl.mechanizms"), "{line}");

    let line = agent("\"linger.ms\" = \"soon\"");
    assert!(
        line.contains("linger.ms") && line.contains("soon"),
        "{line}"
    );

    let line = agent("\"acks\" = \"1\"");
    assert!(line.contains("\"acks\" cannot be set here"), "{line}");
    assert!(line.contains("acks=all"), "{line}");
}

#[test]
fn unknown_flag_is_one_line_and_exit_2() {
    let out = sluice(&["up", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(line.contains("--bogus"), "{line}");
}

/// A usage error keeps what clap says after its first line: the missing argument's name, the
/// values an option takes.
#[test]
fn usage_errors_name_what_is_missing_or_allowed() {
    let out = sluice(&["produce"]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(line.contains("<TOPIC>"), "{line}");
    let out = sluice(&["produce", "t", "--acks", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(
        line.contains("possible values") && line.contains("all"),
        "{line}"
    );
    // An address librdkafka cannot read, which it reports only as a transport failure.
    for bad in ["127.0.0.1:abc", "", ","] {
        let out = sluice(&["topics", "list", "--brokers", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let line = one_line_error(&out);
        assert!(line.contains("expected HOST:PORT"), "{bad:?}: {line}");
    }
    let out = sluice(&["topics", "list", "--brokers", "127.0.0.1:1,kafka"]);
    assert_ne!(
        out.status.code(),
        Some(2),
        "a host without a port is librdkafka's 9092"
    );
}

#[test]
fn unusable_data_dir_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data_dir = file.join("data");
    let kafka = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let out = sluice(&[
        "up",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        &kafka,
        "--http",
        &http,
    ]);
    let line = one_line_error(&out);
    assert!(line.contains(data_dir.to_str().unwrap()), "{line}");
    assert!(line.contains("data dir"), "{line}");
    // The data dir given is itself a file.
    let out = sluice(&[
        "up",
        "--data-dir",
        file.to_str().unwrap(),
        "--listen",
        &kafka,
        "--http",
        &http,
    ]);
    let line = one_line_error(&out);
    assert!(line.contains("is not a directory"), "{line}");
}

#[test]
fn second_process_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Sluice::broker(tmp.path(), "");
    let kafka = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let out = sluice(&[
        "broker",
        "--data-dir",
        first.data_dir.to_str().unwrap(),
        "--listen",
        &kafka,
        "--http",
        &http,
    ]);
    let line = one_line_error(&out);
    assert!(line.contains("in use by another sluice process"), "{line}");
}

/// Two agents on one state dir would each send every line and race on the checkpoints.
#[test]
fn second_agent_on_the_same_state_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[agent]\nbrokers = \"127.0.0.1:{}\"\n[agent.files]\ninclude = [\"{}/*.log\"]\n",
        free_port(),
        tmp.path().display()
    );
    let _first = AgentProcess::start(tmp.path(), &config, std::process::Stdio::null());
    let out = run(
        Command::new(SLUICE_AGENT)
            .arg("--config")
            .arg(tmp.path().join("agent.toml"))
            .arg("--state-dir")
            .arg(tmp.path().join("agent-state"))
            .args(["--http", &format!("127.0.0.1:{}", free_port())]),
        Duration::from_secs(30),
    );
    let line = one_line_error(&out);
    assert!(line.contains("in use by another agent"), "{line}");
}

#[test]
fn port_in_use_names_the_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let free = format!("127.0.0.1:{}", free_port());
    let out = sluice(&[
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &port,
        "--http",
        &free,
    ]);
    let line = one_line_error(&out);
    assert!(
        line.contains("Kafka listener") && line.contains(&port),
        "{line}"
    );
    let out = sluice(&[
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &free,
        "--http",
        &port,
    ]);
    let line = one_line_error(&out);
    assert!(
        line.contains("HTTP listener") && line.contains(&port),
        "{line}"
    );
}

#[test]
fn agent_without_inputs_says_which_to_turn_on() {
    for command in [AgentCommand::Standalone, AgentCommand::Subcommand] {
        let http = format!("127.0.0.1:{}", free_port());
        let out = run(
            command.command().args(["--http", &http]),
            Duration::from_secs(30),
        );
        let line = one_line_error(&out);
        assert!(line.contains("no input is on"), "{command:?}: {line}");
    }
}

/// `sluice-agent` takes the flags of `sluice agent`, and refuses others in one line.
#[test]
fn the_agent_binary_has_the_agent_commands_flags() {
    let help = |command: AgentCommand| {
        let out = run(command.command().arg("--help"), Duration::from_secs(30));
        assert!(out.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|l| l.trim_start().starts_with('-'))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("--")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let flags = help(AgentCommand::Standalone);
    assert_eq!(flags, help(AgentCommand::Subcommand));
    for flag in ["config", "http", "brokers", "state-dir", "version"] {
        assert!(flags.iter().any(|f| f == flag), "--{flag} in {flags:?}");
    }
    let out = run(
        AgentCommand::Standalone.command().arg("--listen"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(line.contains("--listen"), "{line}");
}

#[test]
fn search_without_a_server_names_the_address() {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let line = one_line_error(&sluice(&["search", "level:error", "--server", &addr]));
    assert!(line.contains(&addr) && line.contains("--server"), "{line}");
    // A time ago as the API writes it, with its minus sign, is a value, not a flag.
    let line = one_line_error(&sluice(&[
        "search", "*", "--since", "-15m", "--server", &addr,
    ]));
    assert!(line.contains(&addr), "{line}");
}

/// The Kafka commands say which brokers they could not reach (`groups` timed out with a bare
/// OperationTimedOut).
#[test]
fn kafka_commands_without_a_broker_name_the_address() {
    let addr = format!("127.0.0.1:{}", free_port());
    for command in [&["groups", "list"][..], &["topics", "list"][..]] {
        let out = sluice(&[command, &["--brokers", &addr]].concat());
        assert_eq!(out.status.code(), Some(1));
        let line = one_line_error(&out);
        assert!(
            line.contains(&addr) && line.contains("BrokerTransportFailure"),
            "{line}"
        );
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["up", "--help"],
        &["broker", "--help"],
        &["indexer", "--help"],
        &["search", "--help"],
        &["agent", "--help"],
        &["topics", "--help"],
        &["produce", "--help"],
        &["consume", "--help"],
        &["bench", "produce", "--help"],
    ] {
        let out = sluice(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

/// `sluice bench produce` against the broker it starts: what it reports adds up.
#[test]
fn bench_produce_reports_throughput_latency_and_broker_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("bench");
    let out = sluice(&[
        "bench",
        "produce",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--seconds",
        "3",
        "--record-size",
        "1024",
        "--acks",
        "all",
        "--rate-mb",
        "5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let number = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {report}"))
    };
    assert_eq!(number("failed"), 0.0, "{report}");
    assert_eq!(number("payload_bytes"), number("records") * 1024.0);
    // Paced at 5 MB/s for 3 s: never over it (a slow machine may not reach it).
    assert!((0.5..=5.5).contains(&number("mb_per_s")), "{report}");
    assert!(number("ack_p50_ms") > 0.0);
    assert!(number("ack_p99_ms") >= number("ack_p50_ms"));
    assert!(number("ack_max_ms") >= number("ack_p99_ms"));
    // librdkafka's statistics arrive every second: at least one per run.
    assert!(number("request_rtt_p99_ms_median_second") > 0.0, "{report}");
    assert!(
        number("request_rtt_p99_ms_worst_second") >= number("request_rtt_p99_ms_median_second")
    );
    assert!(number("broker_cores") > 0.0, "{report}");
    assert!(number("generator_cores") > 0.0, "{report}");
}

/// `sluice bench agent`, small: the agent, kcat on the raw lines and kcat on the agent's own
/// events each report a rate per core and a peak RSS.
#[test]
fn bench_agent_reports_the_agent_beside_both_kcat_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = tmp.path().join("lines.txt");
    std::fs::write(
        &lines,
        std::fs::read(loghub_dir().join("Linux_2k.log")).unwrap(),
    )
    .unwrap();
    let out = run(
        Command::new(SLUICE)
            .args(["bench", "agent", "--megabytes", "8", "--json", "--lines"])
            .arg(&lines)
            .current_dir(tmp.path()),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["lines"].as_u64().unwrap() > 10_000, "{report}");
    for run in ["agent", "kcat_baseline", "kcat_agent_events_baseline"] {
        for figure in ["mb_per_core_s", "peak_rss_mb", "seconds"] {
            let value = report[run][figure].as_f64();
            assert!(value.is_some_and(|v| v > 0.0), "{run}.{figure} in {report}");
        }
    }
}
