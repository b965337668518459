//! Shared harness for end-to-end tests: runs the real `sluice` binary on free ports and a
//! temporary data dir, and the real third-party clients (kcat, Python clients) against it.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// The agent alone, as deployments install it.
pub const SLUICE_AGENT: &str = env!("CARGO_BIN_EXE_sluice-agent");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// A running `sluice` process; killed when dropped.
pub struct Sluice {
    child: Option<Child>,
    pub kafka: String,
    pub http: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Sluice {
    /// `sluice up` with `config` (TOML text, may be empty) in a fresh temporary data dir.
    pub fn up(tmp: &Path, config: &str) -> Self {
        Self::start(tmp, "up", config)
    }

    /// `sluice broker` with `config` in a fresh temporary data dir.
    pub fn broker(tmp: &Path, config: &str) -> Self {
        Self::start(tmp, "broker", config)
    }

    fn start(tmp: &Path, command: &str, config: &str) -> Self {
        let config_path = tmp.join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        let data_dir = tmp.join("data");
        let kafka = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let args = vec![
            command.to_owned(),
            "--config".into(),
            config_path.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            kafka.clone(),
            "--http".into(),
            http.clone(),
        ];
        let mut sluice = Self {
            child: None,
            kafka,
            http,
            data_dir,
            args,
            log: tmp.join("sluice.log"),
        };
        sluice.restart();
        sluice
    }

    /// `sluice indexer` named `name` against `broker`, sharing the broker's data dir (as indexer
    /// processes on one machine do), with `config` and its own HTTP port.
    pub fn indexer(broker: &Sluice, name: &str, config: &str) -> Self {
        Self::indexer_via(broker, &broker.kafka, name, config)
    }

    /// As `indexer`, reaching the broker through `brokers` (a proxy in front of it, say).
    pub fn indexer_via(broker: &Sluice, brokers: &str, name: &str, config: &str) -> Self {
        let dir = broker.data_dir.parent().unwrap().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        let http = format!("127.0.0.1:{}", free_port());
        let args = vec![
            "indexer".to_owned(),
            "--config".into(),
            config_path.display().to_string(),
            "--data-dir".into(),
            broker.data_dir.display().to_string(),
            "--brokers".into(),
            brokers.to_owned(),
            "--http".into(),
            http.clone(),
        ];
        let mut indexer = Self {
            child: None,
            kafka: brokers.to_owned(),
            http,
            data_dir: broker.data_dir.clone(),
            args,
            log: dir.join("sluice.log"),
        };
        indexer.restart();
        indexer
    }

    /// GET on the search API: (status, JSON body). `params` are unencoded name/value pairs.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        let (status, body) = http_get(&self.http, &format!("{path}?{}", query.join("&")));
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        (status, json)
    }

    /// The total hit count of `q`; panics on a refused query.
    pub fn hits(&self, q: &str) -> u64 {
        let (status, body) = self.api("/api/v1/search", &[("q", q), ("limit", "0")]);
        assert_eq!(status, 200, "{q}: {body}");
        body["total"].as_u64().unwrap()
    }

    /// Waits until `q` has at least `n` hits; returns the count seen last.
    pub fn wait_for_hits(&self, q: &str, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.hits(q);
            if seen >= n || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the process again with the same ports, config and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(SLUICE)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
        wait_for_port(&self.kafka, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()));
        wait_for_port(&self.http, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends `signal` (TERM, INT) and waits for the exit status.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal_pid(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("sluice did not exit within 20 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the process's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").1
    }

    /// The value of one sample in /metrics, e.g. `sluice_broker_protocol_errors_total{kind="malformed"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The metrics view (`/metrics/agents`).
    pub fn agent_metrics(&self) -> String {
        let (status, body) = http_get(&self.http, "/metrics/agents");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until a line of the metrics view starts with `prefix`; returns the view.
    pub fn wait_for_agent_series(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.agent_metrics();
            if text.lines().any(|l| l.starts_with(prefix)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix} in /metrics/agents:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kcat -P` into `topic` with `extra` flags, fed `input`.
    pub fn kcat_produce(&self, topic: &str, extra: &[&str], input: &[u8]) -> Output {
        run_with_input(
            kcat()
                .args(["-P", "-b", &self.kafka, "-t", topic])
                .args(extra),
            input,
            Duration::from_secs(60),
        )
    }

    /// `kcat -C` of `topic` from the beginning to its end, with `extra` flags; must succeed.
    pub fn kcat_consume(&self, topic: &str, extra: &[&str]) -> String {
        run_ok(
            kcat()
                .args(["-C", "-b", &self.kafka, "-t", topic, "-e", "-q"])
                .args(extra),
            Duration::from_secs(60),
        )
    }

    /// Runs `sluice ARGS --brokers <this broker>` as a client.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(SLUICE)
            .args(args)
            .env("SLUICE_BROKERS", &self.kafka)
            .output()
            .expect("run sluice client")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

pub fn wait_for_port(addr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs a command to completion with a time limit, returning its output. Output is drained
/// while it runs, so a chatty command cannot block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    finish(child, &format!("{cmd:?}"), timeout)
}

fn finish(child: Child, what: &str, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal_pid(pid, "KILL");
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{what} ran past {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Feeds `input` to a command's stdin; returns its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = finish(child, &format!("{cmd:?}"), timeout);
    let _ = writer.join();
    out
}

/// The project's test client scripts.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

pub fn python() -> Command {
    Command::new("python3")
}

pub fn kcat() -> Command {
    Command::new("kcat")
}

/// Every hit of `q` through the search API, paged 1000 at a time: (partition, offset, message).
pub fn all_hits(sluice: &Sluice, q: &str) -> Vec<(u64, u64, String)> {
    let mut hits = Vec::new();
    loop {
        let offset = hits.len().to_string();
        let (status, body) = sluice.api(
            "/api/v1/search",
            &[("q", q), ("limit", "1000"), ("offset", &offset)],
        );
        assert_eq!(status, 200, "{body}");
        let page = body["hits"].as_array().unwrap();
        if page.is_empty() {
            return hits;
        }
        hits.extend(page.iter().map(|hit| {
            (
                hit["partition"].as_u64().unwrap(),
                hit["offset"].as_u64().unwrap(),
                hit["event"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }));
    }
}

/// Percent-encodes a query-string value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shared Loghub samples.
pub fn loghub_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub")
}

/// A small deterministic generator for kill times, seeded by `crash_seed` and printed on
/// failure, so a failing run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// `SLUICE_CRASH_SEED` when set (to replay a failure), else the clock.
pub fn crash_seed() -> u64 {
    std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// `sluice up` after traffic through every part (produce, a group consume, an indexed and
/// searched line), so counters, gauges and histograms all have samples.
pub fn busy_appliance(tmp: &Path) -> Appliance {
    let sluice = Sluice::up(tmp, "");
    assert!(sluice
        .kcat_produce("observed", &["-p", "0"], b"one\ntwo\n")
        .status
        .success());
    run_ok(
        kcat()
            .args([
                "-b",
                &sluice.kafka,
                "-G",
                "watchers",
                "observed",
                "-e",
                "-q",
            ])
            .args(["-X", "auto.offset.reset=earliest"]),
        Duration::from_secs(60),
    );
    assert!(sluice
        .kcat_produce(
            "logs",
            &["-p", "0"],
            b"{\"level\":\"info\",\"message\":\"hello\"}\n"
        )
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("hello", 1, Duration::from_secs(30)), 1);
    let agent = metrics_agent(&sluice, tmp, &cgroup_fixture(tmp));
    sluice.wait_for_agent_series(
        "sluice_container_cpu_usage_seconds_total{",
        Duration::from_secs(30),
    );
    // Lag and size gauges refresh on their own schedule (5 s at most).
    std::thread::sleep(Duration::from_secs(6));
    Appliance { sluice, agent }
}

/// An appliance after traffic, with an agent shipping metrics to it.
pub struct Appliance {
    pub sluice: Sluice,
    pub agent: AgentProcess,
}

/// The cgroup v2 fixture's containers: a Docker one (named by tests/data/docker) and a
/// Kubernetes one (containerd, no Docker record).
pub const WEB_CONTAINER: &str = "4a3c9f1e2b7d6c5a8e0f1d2c3b4a59687f6e5d4c3b2a1908f7e6d5c4b3a29180";
pub const POD_CONTAINER: &str = "9b8a7c6d5e4f30211f2e3d4c5b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A copy of the cgroup v2 fixture (files as the kernel writes them) for a test to change.
pub fn cgroup_fixture(tmp: &Path) -> PathBuf {
    let copy = tmp.join("cgroup");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(test_data().join("cgroup"))
            .arg(&copy),
        Duration::from_secs(10),
    );
    copy
}

/// An agent shipping to `sluice` every 500 ms the containers of `cgroup_root`, this host, and
/// `sluice`'s own /metrics as a Prometheus target; its host is named `node-1`.
pub fn metrics_agent(sluice: &Sluice, tmp: &Path, cgroup_root: &Path) -> AgentProcess {
    let config = format!(
        r#"
[agent]
brokers = "{kafka}"
hostname = "node-1"

[agent.metrics]
interval_ms = 500
cgroup = true
cgroup_root = "{cgroup}"
host = true
targets = ["http://{http}/metrics"]

[agent.docker]
root = "{docker}"
"#,
        kafka = sluice.kafka,
        http = sluice.http,
        cgroup = cgroup_root.display(),
        docker = test_data().join("docker").display(),
    );
    AgentProcess::start(tmp, &config, Stdio::null())
}

/// `promtool check metrics` finds nothing to say about `text`.
pub fn promtool_passes(text: &str) {
    let out = run_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
        Duration::from_secs(30),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// The two ways to run the agent: `sluice-agent`, or `sluice agent`.
#[derive(Clone, Copy, Debug)]
pub enum AgentCommand {
    Standalone,
    Subcommand,
}

impl AgentCommand {
    pub fn command(self) -> Command {
        match self {
            Self::Standalone => Command::new(SLUICE_AGENT),
            Self::Subcommand => {
                let mut command = Command::new(SLUICE);
                command.arg("agent");
                command
            }
        }
    }
}

/// An agent the test owns; killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub http: String,
    log: PathBuf,
}

impl AgentProcess {
    /// `sluice-agent` with `config`, its state in `dir`.
    pub fn start(dir: &std::path::Path, config: &str, stdin: Stdio) -> Self {
        Self::start_as(AgentCommand::Standalone, dir, config, stdin)
    }

    pub fn start_as(
        command: AgentCommand,
        dir: &std::path::Path,
        config: &str,
        stdin: Stdio,
    ) -> Self {
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("agent.log");
        let http = format!("127.0.0.1:{}", free_port());
        let child = command
            .command()
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.join("agent-state"))
            .args(["--http", &http])
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(&http, Duration::from_secs(20)).unwrap();
        Self { child, http, log }
    }

    /// What the agent has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's own /metrics.
    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").1
    }

    /// The value of one series on the agent's /metrics; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done`, failing the test after `timeout` with what it waited for.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events on `logs`, as JSON, once there are at least `n`.
pub fn logs_events(sluice: &Sluice, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the first event the topic does not exist and kcat says so.
        let out = run(
            kcat().args(["-C", "-b", &sluice.kafka, "-t", "logs", "-e", "-q"]),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
