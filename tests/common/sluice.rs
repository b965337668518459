//! A `sluice` process the test owns (`up`, `broker`, `indexer`), and reading what it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{
    free_port, http_get, kcat, run, run_ok, run_with_input, sample, signal_pid, url_encode,
    wait_for_port,
};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

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

    /// The exit status, once the process has ended on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
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
        sample(&self.metrics(), series)
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

    /// `sluice topics create NAME -p PARTITIONS -c CONFIG...`, which must succeed.
    pub fn create_topic(&self, name: &str, partitions: u32, configs: &[&str]) {
        let partitions = partitions.to_string();
        let mut args = vec!["topics", "create", name, "-p", &partitions];
        for config in configs {
            args.extend(["-c", config]);
        }
        let out = self.client(&args);
        assert!(
            out.status.success(),
            "topics create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

/// Asserts that every message `<tag> <n>` (words may follow) for `n` in `0..total` is on
/// `logs`, however many times, once there are at least `events` events.
pub fn assert_numbered_arrived(sluice: &Sluice, tag: &str, total: usize, events: usize) {
    let mut seen = vec![false; total];
    for event in logs_events(sluice, events) {
        let message = event["message"].as_str().unwrap_or_default();
        let number = message
            .strip_prefix(tag)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(n) = number.filter(|&n| n < total) {
            seen[n] = true;
        }
    }
    let missing: Vec<usize> = (0..total).filter(|&n| !seen[n]).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} messages missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// The messages of the events on `logs`, sorted (partitions interleave: compared as a set), once
/// there are at least `n` events.
pub fn logs_messages(sluice: &Sluice, n: usize) -> Vec<String> {
    let mut messages: Vec<String> = logs_events(sluice, n)
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    messages.sort_unstable();
    messages
}
