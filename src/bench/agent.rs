//! `sluice bench agent`: a log file through `sluice agent` into a broker the bench starts; MB/s of
//! file per core of agent CPU, and the agent's peak RSS. Same-run baseline: `kcat -P` (librdkafka
//! from C, no event encoding) producing the same lines with the same compression.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::{cpu_seconds, create_topic, free_port, start_broker, wait_for_port, OwnedChild};
use crate::cli::BenchAgentArgs;

pub async fn agent(args: BenchAgentArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-agent-")
        .tempdir_in(".")?;
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let file = logs.join("bench.log");
    let (bytes, lines) = write_input(&args.lines, &file, args.megabytes << 20)?;
    let mb = bytes as f64 / 1e6;
    let config = format!("[broker]\ndirect_io = {}\n", args.direct_io);
    let (kafka, broker) = start_broker(None, &config)?;
    create_topic(&kafka, "logs", 3).await?;
    create_topic(&kafka, "baseline", 3).await?;

    let baseline = kcat_baseline(&kafka, &file)?;
    let run = run_agent(&kafka, work.path(), &file, lines).await?;
    drop(broker);
    let result = json!({
        "input_mb": mb,
        "lines": lines,
        "agent": summary(&run, mb),
        "kcat_baseline": summary(&baseline, mb),
    });
    if args.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

fn summary(run: &Run, mb: f64) -> serde_json::Value {
    json!({
        "seconds": run.seconds,
        "mb_per_s": mb / run.seconds,
        "cpu_seconds": run.cpu,
        "mb_per_core_s": mb / run.cpu,
        "peak_rss_mb": run.peak_rss_kb as f64 / 1024.0,
    })
}

/// Writes `lines` cycled until `target` bytes; (bytes, lines) written.
fn write_input(source: &Path, file: &Path, target: u64) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("lines file {}", source.display()))?;
    let sample: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if sample.is_empty() {
        bail!("lines file {} has no lines", source.display());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let (mut bytes, mut lines) = (0u64, 0u64);
    while bytes < target {
        let line = sample[(lines as usize) % sample.len()];
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        bytes += line.len() as u64 + 1;
        lines += 1;
    }
    out.flush()?;
    Ok((bytes, lines))
}

struct Run {
    seconds: f64,
    cpu: f64,
    peak_rss_kb: u64,
}

/// Polls a running process for its CPU time and peak RSS until `done`.
fn watch(pid: u32, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<Run> {
    let started = Instant::now();
    let (mut cpu, mut peak) = (0.0, 0);
    loop {
        if let Ok(now) = cpu_seconds(pid) {
            cpu = now;
        }
        peak = peak.max(peak_rss_kb(pid).unwrap_or(0));
        if done()? {
            return Ok(Run {
                seconds: started.elapsed().as_secs_f64(),
                cpu,
                peak_rss_kb: peak,
            });
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the run did not finish within an hour");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// VmHWM: the most resident memory the process has had.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn kcat_baseline(kafka: &str, file: &Path) -> anyhow::Result<Run> {
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", kafka, "-t", "baseline", "-z", "lz4"])
        .args(["-X", "acks=all", "-X", "enable.idempotence=true", "-l"])
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .context("starting kcat (the baseline)")?;
    let pid = kcat.id();
    let mut status = None;
    let run = watch(pid, || {
        status = kcat.try_wait()?;
        Ok(status.is_some())
    })?;
    if !status.is_some_and(|s| s.success()) {
        bail!("kcat (the baseline) failed: {status:?}");
    }
    Ok(run)
}

async fn run_agent(kafka: &str, dir: &Path, file: &Path, lines: u64) -> anyhow::Result<Run> {
    let http = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nbrokers = \"{kafka}\"\n[agent.files]\ninclude = [\"{}\"]\n",
            file.display()
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--http")
        .arg(&http)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let agent = OwnedChild { child, _dir: None };
    wait_for_port(&http, "agent")?;
    let sent = || -> anyhow::Result<bool> {
        let mut response = ureq::get(format!("http://{http}/metrics")).call()?;
        let text = response.body_mut().read_to_string()?;
        let sent = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_agent_events_sent_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(sent >= lines as f64)
    };
    let run = watch(agent.pid(), sent)?;
    drop(agent);
    Ok(run)
}
