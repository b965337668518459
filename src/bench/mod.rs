//! `sluice bench`: end-to-end benchmarks that drive real `sluice` processes with real clients.
//! `produce` measures the broker (throughput, acknowledgement latency, CPU); `index` measures the
//! indexer against raw Tantivy, its freshness, and search latency; `agent` measures the agent's
//! file input against kcat. What they need (a child process, CPU accounting, topics) lives here.

mod agent;
mod index;
mod produce;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub use agent::agent;
pub use index::index;
pub use produce::produce;

use crate::client;

/// A `sluice` child process the bench owns; stopped with SIGTERM on drop.
struct OwnedChild {
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl OwnedChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        // SIGTERM, so the process closes cleanly.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `sluice broker` with `config` (TOML) on `data_dir`, or on a temporary directory under
/// the working directory; returns its Kafka address.
fn start_broker(data_dir: Option<PathBuf>, config: &str) -> anyhow::Result<(String, OwnedChild)> {
    let (dir, temp) = match data_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("sluice-bench-")
                .tempdir_in(".")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let kafka = format!("127.0.0.1:{}", free_port()?);
    let config_path: PathBuf = dir.join("bench.toml");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&config_path, config)?;
    let child = Command::new(std::env::current_exe()?)
        .arg("broker")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&dir)
        .arg("--listen")
        .arg(&kafka)
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .stdout(Stdio::null())
        .spawn()
        .context("starting the broker")?;
    let broker = OwnedChild { child, _dir: temp };
    wait_for_port(&kafka, "broker")?;
    Ok((kafka, broker))
}

fn wait_for_port(addr: &str, what: &str) -> anyhow::Result<()> {
    let waited = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if waited.elapsed() > Duration::from_secs(20) {
            bail!("the bench {what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Deletes a bench topic from a broker the bench did not start, so runs against a real one
/// leave no data behind.
async fn delete_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client::config(brokers).create()?;
    let options = AdminOptions::new().request_timeout(Some(client::TIMEOUT));
    for result in admin.delete_topics(&[topic], &options).await? {
        if let Err((name, code)) = result {
            bail!("deleting bench topic {name}: {code}");
        }
    }
    Ok(())
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client::config(brokers).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(client::TIMEOUT));
    for result in admin.create_topics([&new], &options).await? {
        if let Err((name, code)) = result {
            bail!("creating bench topic {name}: {code}");
        }
    }
    Ok(())
}
