//! The agent and the indexer reach their broker through a TLS-only listener, as on a managed
//! Kafka cluster: librdkafka's OpenSSL checks the listener's certificate against the CA named in
//! `[agent.kafka]` / `[indexer.kafka]`, and kcat, over TLS too, reads what the agent sent. The
//! broker advertises only the TLS address, so every connection a client makes goes through it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A CA that did not sign the listener's certificate.
    stranger_ca: PathBuf,
}

/// Runs `openssl` in `dir` with `args`, split at spaces.
fn openssl(dir: &Path, args: &str) {
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace()),
        Duration::from_secs(60),
    );
}

fn certificates(dir: &Path) -> Certificates {
    for ca in ["ca", "stranger"] {
        openssl(
            dir,
            &format!(
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sluice-test-{ca} \
                 -keyout {ca}.key -out {ca}.pem"
            ),
        );
    }
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout listener.key -out listener.csr",
    );
    openssl(
        dir,
        "x509 -req -in listener.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile san.ext -out listener.pem",
    );
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("listener.pem"),
        key: dir.join("listener.key"),
        stranger_ca: dir.join("stranger.pem"),
    }
}

/// The TLS listener in front of `target`; killed when dropped.
struct TlsListener {
    child: Child,
    addr: String,
}

impl TlsListener {
    fn start(port: u16, target: &str, certs: &Certificates) -> Self {
        let target_port = target.rsplit_once(':').unwrap().1;
        let child = python()
            .arg(client_script("tls_proxy.py"))
            .arg(port.to_string())
            .arg(target_port)
            .arg(&certs.cert)
            .arg(&certs.key)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let listener = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        wait_for_port(&listener.addr, Duration::from_secs(20)).unwrap();
        listener
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_properties(table: &str, ca: &Path) -> String {
    format!(
        "[{table}.kafka]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    )
}

fn agent_config(brokers: &str, file: &Path, ca: &Path) -> String {
    format!(
        "[agent]\nbrokers = \"{brokers}\"\nhostname = \"tls-node\"\n\n\
         [agent.files]\ninclude = [\"{}\"]\n\n{}",
        file.display(),
        tls_properties("agent", ca)
    )
}

/// The messages on `logs` read over TLS, as kcat sees them.
fn messages_over_tls(listener: &TlsListener, ca: &Path) -> Vec<String> {
    let out = run(
        kcat()
            .args(["-C", "-b", &listener.addr, "-t", "logs", "-e", "-q"])
            .args(["-X", "security.protocol=ssl", "-X"])
            .arg(format!("ssl.ca.location={}", ca.display())),
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let event: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            event["message"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// A broker whose only advertised listener is a TLS one in front of it.
fn broker_behind_tls(tmp: &Path) -> (Certificates, Sluice, TlsListener) {
    let certs = certificates(tmp);
    let tls_port = free_port();
    let broker = Sluice::broker(
        tmp,
        &format!("[broker]\nadvertised_listener = \"127.0.0.1:{tls_port}\"\n"),
    );
    let listener = TlsListener::start(tls_port, &broker.kafka, &certs);
    (certs, broker, listener)
}

#[test]
fn agent_and_indexer_work_through_a_tls_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let (certs, broker, listener) = broker_behind_tls(tmp.path());

    let lines: Vec<String> = (0..500)
        .map(|i| format!("tlsmarker line {i} over an encrypted link"))
        .collect();
    let file = tmp.path().join("app.log");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(
        &agent_dir,
        &agent_config(&listener.addr, &file, &certs.ca),
        Stdio::null(),
    );

    let mut seen = Vec::new();
    wait_until(
        "the agent's lines, read back over TLS",
        Duration::from_secs(60),
        || {
            seen = messages_over_tls(&listener, &certs.ca);
            seen.len() >= lines.len()
        },
    );
    seen.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(seen, expected, "agent log:\n{}", agent.log_text());

    let indexer = Sluice::indexer_via(
        &broker,
        &listener.addr,
        "indexer",
        &tls_properties("indexer", &certs.ca),
    );
    let hits = indexer.wait_for_hits("tlsmarker", lines.len() as u64, Duration::from_secs(90));
    assert_eq!(
        hits,
        lines.len() as u64,
        "indexer log:\n{}",
        indexer.log_tail(40)
    );
}

#[test]
fn a_listener_certificate_the_ca_did_not_sign_is_refused_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let (certs, broker, listener) = broker_behind_tls(tmp.path());

    let file = tmp.path().join("app.log");
    std::fs::write(&file, "must not leave unverified\n").unwrap();
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(
        &agent_dir,
        &agent_config(&listener.addr, &file, &certs.stranger_ca),
        Stdio::null(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.log_text().contains("certificate verify failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not say why the listener was refused; its log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent keeps the line and retries; nothing reached the broker.
    assert_eq!(
        broker
            .metric("sluice_broker_records_in_total{topic=\"logs\"}")
            .unwrap_or(0.0),
        0.0,
        "delivered without verification"
    );
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_agent_events_sent_total 0"),
        "{metrics}"
    );
}
