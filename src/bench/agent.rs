//! `sluice bench agent`: a log file through `sluice-agent` into a broker the bench starts; MB/s of
//! file per core of agent CPU, and the agent's peak RSS. Same-run baselines: `kcat -P` (librdkafka
//! from C, no event encoding) producing the same lines with the same compression, and producing
//! the agent's own records read back from the topic with the agent's batching, which is what
//! librdkafka alone costs for the bytes the agent sends.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::{create_topic, free_port, start_broker, wait_for_port, OwnedChild};
use crate::cli::BenchAgentArgs;
use crate::cpu_time::cpu_seconds;

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
    create_topic(&kafka, "baseline-events", 3).await?;

    let properties = args
        .kafka
        .iter()
        .map(|p| {
            p.split_once('=')
                .with_context(|| format!("--kafka {p:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let baseline = kcat_produce(&kafka, "baseline", &file, false, &properties)?;
    let run = run_agent(&kafka, work.path(), &file, lines, &properties).await?;
    // The agent's own records, keys and all, sent again by kcat with the agent's batching:
    // what librdkafka costs for these bytes, so what is left is the agent's own work.
    let events = work.path().join("events.txt");
    dump_events(&kafka, &events, lines)?;
    let mut same = properties.clone();
    same.extend(sluice_agent::BATCHING);
    let events_baseline = kcat_produce(&kafka, "baseline-events", &events, true, &same)?;
    drop(broker);
    let result = json!({
        "input_mb": mb,
        "lines": lines,
        "agent": summary(&run, mb),
        "kcat_baseline": summary(&baseline, mb),
        "kcat_agent_events_baseline": summary(&events_baseline, mb),
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

/// kcat producing `file` to `topic`, one record a line (`keyed`: a key, a tab, the value).
fn kcat_produce(
    kafka: &str,
    topic: &str,
    file: &Path,
    keyed: bool,
    properties: &[(&str, &str)],
) -> anyhow::Result<Run> {
    let mut kcat = Command::new("kcat");
    kcat.args(["-P", "-b", kafka, "-t", topic, "-z", "lz4"])
        .args(["-X", "acks=all", "-X", "enable.idempotence=true"]);
    if keyed {
        kcat.args(["-K", "\t"]);
    }
    for (key, value) in properties {
        kcat.arg("-X").arg(format!("{key}={value}"));
    }
    let mut kcat = kcat
        .arg("-l")
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting kcat (the {topic} baseline)"))?;
    let pid = kcat.id();
    let mut status = None;
    let run = watch(pid, || {
        status = kcat.try_wait()?;
        Ok(status.is_some())
    })?;
    if !status.is_some_and(|s| s.success()) {
        bail!("kcat (the {topic} baseline) failed: {status:?}");
    }
    Ok(run)
}

/// The `lines` records the agent sent, as `key<TAB>value` lines (JSON has no raw tab or newline).
fn dump_events(kafka: &str, out: &Path, lines: u64) -> anyhow::Result<()> {
    let dumped = Command::new("kcat")
        .args([
            "-C", "-b", kafka, "-t", "logs", "-e", "-q", "-f", "%k\t%s\n",
        ])
        .stdout(std::fs::File::create(out)?)
        .status()
        .context("starting kcat to read the agent's events")?;
    if !dumped.success() {
        bail!("kcat reading the agent's events failed: {dumped}");
    }
    // Counted a chunk at a time: the file is several times the input's size.
    let mut file = std::fs::File::open(out)?;
    let (mut chunk, mut read) = (vec![0u8; 1 << 20], 0u64);
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        read += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    if read != lines {
        bail!("read {read} of the agent's events back, expected {lines}");
    }
    Ok(())
}

/// `sluice-agent`, the binary agents are deployed as, from beside this one.
fn agent_binary() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?.with_file_name("sluice-agent");
    if !path.is_file() {
        bail!(
            "the agent benchmark runs sluice-agent, which is not beside this binary at {} \
             (cargo build --release builds both)",
            path.display()
        );
    }
    Ok(path)
}

async fn run_agent(
    kafka: &str,
    dir: &Path,
    file: &Path,
    lines: u64,
    properties: &[(&str, &str)],
) -> anyhow::Result<Run> {
    let http = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("agent.toml");
    let mut text = format!(
        "[agent]\nbrokers = \"{kafka}\"\n[agent.files]\ninclude = [\"{}\"]\n[agent.kafka]\n",
        file.display()
    );
    for (key, value) in properties {
        text.push_str(&format!("{key:?} = {value:?}\n"));
    }
    std::fs::write(&config, text)?;
    let child = Command::new(agent_binary()?)
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
