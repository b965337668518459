//! An agent process the test owns, and the appliance-with-agent fixtures (cgroup files, a busy
//! appliance) that the metrics tests share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    free_port, http_get, kcat, run_ok, sample, test_data, wait_for_port, wait_until, Sluice, SLUICE,
};

/// The agent alone, as deployments install it.
pub const SLUICE_AGENT: &str = env!("CARGO_BIN_EXE_sluice-agent");

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
    pub fn start(dir: &Path, config: &str, stdin: Stdio) -> Self {
        Self::start_as(AgentCommand::Standalone, dir, config, stdin)
    }

    pub fn start_as(command: AgentCommand, dir: &Path, config: &str, stdin: Stdio) -> Self {
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
        // Made before the wait, so that a start that fails kills it.
        let agent = Self { child, http, log };
        wait_for_port(&agent.http, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log_text()));
        agent
    }

    /// What the agent has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's own /metrics.
    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").1
    }

    /// The value of one series on the agent's /metrics; NaN when absent, which no comparison
    /// holds for: a renamed or missing series fails `== 0.0` as it fails `>= 1.0`.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series).unwrap_or(f64::NAN)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    // Lag and size gauges refresh on their own schedule (every 5 s).
    wait_until("the lag gauges refreshed", Duration::from_secs(30), || {
        let text = sluice.metrics();
        text.contains(
            "sluice_broker_consumer_lag{group=\"watchers\",partition=\"0\",topic=\"observed\"} 0",
        ) && text.contains("sluice_indexer_consumer_lag{partition=\"0\"} 0")
    });
    Appliance { sluice, agent }
}

/// An appliance after traffic, with an agent shipping metrics to it.
pub struct Appliance {
    pub sluice: Sluice,
    pub agent: AgentProcess,
}

/// A Prometheus target no one answers (nothing listens on tcpmux's port here).
pub const DEAD_TARGET: &str = "http://127.0.0.1:1/metrics";

/// The cgroup v2 fixture's containers: a Docker one (named by tests/data/docker) and a
/// Kubernetes one (containerd, no Docker record; named by the kubelet's link in
/// tests/data/kubernetes/containers).
pub const WEB_CONTAINER: &str = "4a3c9f1e2b7d6c5a8e0f1d2c3b4a59687f6e5d4c3b2a1908f7e6d5c4b3a29180";
pub const POD_CONTAINER: &str = "9b8a7c6d5e4f30211f2e3d4c5b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f9";

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
# The second target is down: the first is still scraped.
targets = ["http://{http}/metrics", "{DEAD_TARGET}"]

[agent.docker]
root = "{docker}"

[agent.cri]
containers = "{kubelet_links}"
"#,
        kafka = sluice.kafka,
        http = sluice.http,
        cgroup = cgroup_root.display(),
        docker = test_data().join("docker").display(),
        kubelet_links = test_data().join("kubernetes/containers").display(),
    );
    AgentProcess::start(tmp, &config, Stdio::null())
}
