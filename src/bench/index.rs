//! `sluice bench index`: the indexer measured against raw Tantivy on the same documents, then its
//! freshness at a fraction of its rate, then search latency over everything it indexed.
//!
//! 1. Raw Tantivy: one `IndexWriter` (Tantivy's default threads) fed the same events through the
//!    same mapping, in this process, until its commit returns.
//! 2. A `sluice broker` child is loaded with the events; a `sluice indexer` child then catches
//!    up, and its rate is read off its own documents-indexed counter.
//! 3. While a producer sends at `--rate-fraction` of that rate, probe events go out every
//!    100 ms and a poller asks the search API for them: freshness is send to searchable.
//! 4. Term, phrase and time-range (one second of the load) queries, each `--queries` times,
//!    through the HTTP API.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::json;
use sluice_agent::event::now_ms;
use sluice_indexer::mapping::{map_record, Record};
use sluice_indexer::schema::LogSchema;

use super::{create_topic, free_port, start_broker, wait_for_port, OwnedChild};
use crate::cli::BenchIndexArgs;
use crate::client;
use crate::cpu_time::cpu_seconds;

const TOPIC: &str = "logs";
/// Per-partition writer memory, as in the indexer's default configuration.
const WRITER_MEMORY: usize = 32 << 20;

#[derive(Debug, serde::Serialize)]
struct Report {
    documents: u64,
    raw_tantivy_docs_per_s: f64,
    /// Including the merges its commit starts (the indexer merges as it goes).
    raw_tantivy_with_merges_docs_per_s: f64,
    raw_tantivy_cores: f64,
    raw_tantivy_threads: usize,
    indexer_docs_per_s: f64,
    indexer_cores: f64,
    indexer_vs_raw: f64,
    indexer_vs_raw_with_merges: f64,
    freshness_rate_docs_per_s: f64,
    freshness_probes: usize,
    freshness_p50_ms: f64,
    freshness_p99_ms: f64,
    freshness_max_ms: f64,
    searched_documents: u64,
    queries: Vec<QueryReport>,
}

#[derive(Debug, serde::Serialize)]
struct QueryReport {
    kind: &'static str,
    query: String,
    hits: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Events as the agent would ship them, made from the lines of a file, cycled.
struct Events {
    lines: Vec<String>,
}

impl Events {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            bail!("{} has no lines", path.display());
        }
        Ok(Self { lines })
    }

    fn event(&self, i: u64) -> Vec<u8> {
        let line = &self.lines[i as usize % self.lines.len()];
        let mut event = json!({
            "id": format!("bench-{i}"),
            "host": format!("host-{}", i % 8),
            "source": "/var/log/bench.log",
            "message": line,
        });
        if let Some(level) = level_of(line) {
            event["level"] = json!(level);
        }
        serde_json::to_vec(&event).expect("JSON of strings")
    }
}

/// The first level-like word of a line, as log shippers guess it.
fn level_of(line: &str) -> Option<&'static str> {
    line.split(|c: char| !c.is_ascii_alphabetic())
        .filter(|word| !word.is_empty())
        .take(8)
        .find_map(|word| match word.to_ascii_lowercase().as_str() {
            "error" | "err" | "fatal" => Some("error"),
            "warn" | "warning" => Some("warn"),
            "info" | "notice" => Some("info"),
            "debug" | "trace" => Some("debug"),
            _ => None,
        })
}

pub async fn index(args: BenchIndexArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run(args, runtime)).await?
}

fn run(args: BenchIndexArgs, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    let events = Arc::new(Events::load(&args.lines)?);
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-index-")
        .tempdir_in(".")?;
    let n = args.documents;

    eprintln!("raw Tantivy: {n} documents...");
    let raw = raw_tantivy(
        &events,
        n,
        args.partitions as usize,
        &work.path().join("raw"),
    )?;

    let data_dir = work.path().join("data");
    let config = format!("[broker]\ndirect_io = {}\n", args.direct_io);
    let (kafka, _broker) = start_broker(Some(data_dir.clone()), &config)?;
    runtime.block_on(create_topic(&kafka, TOPIC, args.partitions))?;
    eprintln!("loading the broker...");
    let load_start_ms = now_ms();
    let producer = BenchProducer::new(&kafka)?;
    for i in 0..n {
        producer.send(&events.event(i), None)?;
    }
    producer.finish()?;
    let load_end_ms = now_ms();

    eprintln!("indexer catching up...");
    let http = format!("127.0.0.1:{}", free_port()?);
    let indexer = start_indexer(&data_dir, &kafka, &http)?;
    let (indexer_rate, indexer_cores) = catch_up(&http, n, indexer.pid())?;

    let rate = indexer_rate * args.rate_fraction;
    eprintln!("freshness at {rate:.0} documents/s...");
    let probes = freshness(&kafka, &http, &events, n, rate, args.freshness_seconds)?;

    eprintln!("search latency...");
    let searched = hits(&http, &[("q", "*".into())])?;
    let middle = (load_start_ms + load_end_ms) / 2;
    let queries = [
        ("term", vec![("q", "level:error".to_owned())]),
        (
            "phrase",
            vec![("q", "\"authentication failure\"".to_owned())],
        ),
        (
            "time range (1 s)",
            vec![
                ("q", "*".to_owned()),
                ("start", (middle - 500).to_string()),
                ("end", (middle + 500).to_string()),
            ],
        ),
    ];
    let mut query_reports = Vec::new();
    for (kind, params) in queries {
        query_reports.push(query_latency(&http, kind, &params, args.queries)?);
    }

    let report = Report {
        documents: n,
        raw_tantivy_docs_per_s: raw.docs_per_s,
        raw_tantivy_with_merges_docs_per_s: raw.with_merges_docs_per_s,
        raw_tantivy_cores: raw.cores,
        raw_tantivy_threads: raw.threads,
        indexer_docs_per_s: indexer_rate,
        indexer_cores,
        indexer_vs_raw: indexer_rate / raw.docs_per_s,
        indexer_vs_raw_with_merges: indexer_rate / raw.with_merges_docs_per_s,
        freshness_rate_docs_per_s: rate,
        freshness_probes: probes.len(),
        freshness_p50_ms: quantile(&probes, 0.50),
        freshness_p99_ms: quantile(&probes, 0.99),
        freshness_max_ms: quantile(&probes, 1.0),
        searched_documents: searched,
        queries: query_reports,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "raw Tantivy: {:.0} docs/s to its commit, {:.0} docs/s with the merges it starts \
         ({} threads, {:.2} cores)",
        r.raw_tantivy_docs_per_s,
        r.raw_tantivy_with_merges_docs_per_s,
        r.raw_tantivy_threads,
        r.raw_tantivy_cores
    );
    println!(
        "indexer: {:.0} docs/s ({:.2} cores), {:.0}% of raw Tantivy ({:.0}% with merges)",
        r.indexer_docs_per_s,
        r.indexer_cores,
        r.indexer_vs_raw * 100.0,
        r.indexer_vs_raw_with_merges * 100.0
    );
    println!(
        "freshness at {:.0} docs/s, {} probes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.freshness_rate_docs_per_s,
        r.freshness_probes,
        r.freshness_p50_ms,
        r.freshness_p99_ms,
        r.freshness_max_ms
    );
    println!("search over {} documents:", r.searched_documents);
    for q in &r.queries {
        println!(
            "  {:<18} {:>9} hits  p50 {:>7.1} ms  p99 {:>7.1} ms   {}",
            q.kind, q.hits, q.p50_ms, q.p99_ms, q.query
        );
    }
}

struct RawTantivy {
    docs_per_s: f64,
    with_merges_docs_per_s: f64,
    cores: f64,
    threads: usize,
}

/// Raw Tantivy on the same documents, through the same mapping.
fn raw_tantivy(
    events: &Events,
    n: u64,
    partitions: usize,
    dir: &Path,
) -> anyhow::Result<RawTantivy> {
    let schema = LogSchema::new();
    let index = schema.open_or_create(dir)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The same memory the indexer's writers have together.
    let mut writer: tantivy::IndexWriter =
        index.writer_with_num_threads(threads, WRITER_MEMORY * partitions)?;
    let cpu_before = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let now = now_ms();
    for i in 0..n {
        let payload = events.event(i);
        let record = Record {
            partition: 0,
            offset: i as i64,
            timestamp_ms: now,
            payload: &payload,
        };
        writer.add_document(map_record(&schema, &record, 1 << 20, now).doc)?;
    }
    writer.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    let cores = (cpu_seconds(std::process::id())? - cpu_before) / seconds;
    writer.wait_merging_threads()?;
    Ok(RawTantivy {
        docs_per_s: n as f64 / seconds,
        with_merges_docs_per_s: n as f64 / started.elapsed().as_secs_f64(),
        cores,
        threads,
    })
}

fn start_indexer(data_dir: &Path, kafka: &str, http: &str) -> anyhow::Result<OwnedChild> {
    let child = Command::new(std::env::current_exe()?)
        .args(["indexer", "--data-dir"])
        .arg(data_dir)
        .args(["--brokers", kafka, "--http", http])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the indexer")?;
    let indexer = OwnedChild { child, _dir: None };
    wait_for_port(http, "indexer")?;
    Ok(indexer)
}

/// Waits for the indexer to index `n` documents; its rate from the first commit on, and cores.
fn catch_up(http: &str, n: u64, pid: u32) -> anyhow::Result<(f64, f64)> {
    let mut first: Option<(Instant, u64, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let indexed = indexed(http)?;
        if first.is_none() && indexed > 0 {
            first = Some((Instant::now(), indexed, cpu_seconds(pid)?));
        }
        if indexed >= n {
            let (t0, n0, cpu0) = first.expect("set when the count rose");
            let seconds = t0.elapsed().as_secs_f64();
            let cores = (cpu_seconds(pid)? - cpu0) / seconds;
            return Ok(((indexed - n0) as f64 / seconds, cores));
        }
        if Instant::now() > deadline {
            bail!("the indexer took over an hour ({indexed} of {n})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn indexed(http: &str) -> anyhow::Result<u64> {
    let text = get(http, "/metrics", &[])?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_indexer_documents_indexed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Sends events at `rate` for `seconds` with a probe every 100 ms; returns each probe's
/// send-to-searchable time in ms.
fn freshness(
    kafka: &str,
    http: &str,
    events: &Events,
    first_id: u64,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Vec<f64>> {
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let poller = {
        let (http, seen, stop) = (http.to_owned(), seen.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            while stop.load(Ordering::Relaxed) == 0 {
                let body = get(
                    &http,
                    "/api/v1/search",
                    &[("q", "level:probe"), ("limit", "50")],
                )?;
                let now = Instant::now();
                let body: serde_json::Value = serde_json::from_str(&body)?;
                let mut seen = seen.lock().expect("seen lock");
                for hit in body["hits"].as_array().into_iter().flatten() {
                    if let Some(k) = hit["event"]["fields"]["probe"].as_u64() {
                        seen.entry(k).or_insert(now);
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let producer = BenchProducer::new(kafka)?;
    let started = Instant::now();
    let mut probe = 0u64;
    let mut i = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        producer.send(&events.event(first_id + i), None)?;
        i += 1;
        if started.elapsed() >= Duration::from_millis(100) * probe as u32 {
            let event = json!({"id": format!("probe-{probe}"), "level": "probe",
                               "message": "freshness probe", "fields": {"probe": probe}});
            let key = format!("probe-{probe}");
            sent.lock()
                .expect("sent lock")
                .insert(probe, Instant::now());
            producer.send(&serde_json::to_vec(&event)?, Some(key.as_bytes()))?;
            probe += 1;
        }
    }
    producer.finish()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().expect("seen lock").len() < probe as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(1, Ordering::Relaxed);
    poller
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))??;
    let sent = sent.lock().expect("sent lock");
    let seen = seen.lock().expect("seen lock");
    if seen.len() < sent.len() {
        bail!(
            "{} of {} probes never became searchable",
            sent.len() - seen.len(),
            sent.len()
        );
    }
    let mut ms: Vec<f64> = sent
        .iter()
        .map(|(k, at)| seen[k].duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn query_latency(
    http: &str,
    kind: &'static str,
    params: &[(&str, String)],
    runs: usize,
) -> anyhow::Result<QueryReport> {
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("limit", "100")])
        .collect();
    let hits = hits(http, params)?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        get(http, "/api/v1/search", &pairs)?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(QueryReport {
        kind,
        query,
        hits,
        p50_ms: quantile(&ms, 0.50),
        p99_ms: quantile(&ms, 0.99),
    })
}

fn hits(http: &str, params: &[(&str, String)]) -> anyhow::Result<u64> {
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("limit", "0")])
        .collect();
    let body: serde_json::Value = serde_json::from_str(&get(http, "/api/v1/search", &pairs)?)?;
    body["total"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("search answered without a total: {body}"))
}

fn get(http: &str, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut response = ureq::get(format!("http://{http}{path}"))
        .query_pairs(params.iter().copied())
        .call()
        .with_context(|| format!("GET {path}"))?;
    Ok(response.body_mut().read_to_string()?)
}

/// `sorted`'s value at quantile `q` (nearest rank); 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// An lz4, acks=all producer that counts failed deliveries.
struct BenchProducer {
    producer: ThreadedProducer<Failures>,
    failed: Arc<AtomicU64>,
}

struct Failures(Arc<AtomicU64>);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl BenchProducer {
    fn new(kafka: &str) -> anyhow::Result<Self> {
        let failed = Arc::new(AtomicU64::new(0));
        let producer = client::config(kafka)
            .set("acks", "-1")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.kbytes", "262144")
            .create_with_context(Failures(failed.clone()))?;
        Ok(Self { producer, failed })
    }

    fn send(&self, payload: &[u8], key: Option<&[u8]>) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(TOPIC).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        client::send_waiting(&self.producer, record).context("queueing an event")
    }

    fn finish(self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(120))?;
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => bail!("{failed} events were not acknowledged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_guessed_from_the_first_words() {
        assert_eq!(
            level_of("2015-10-18 18:01:47,978 INFO [main] x"),
            Some("info")
        );
        assert_eq!(
            level_of("[Sun Dec 04 04:47:44 2005] [error] mod_jk"),
            Some("error")
        );
        assert_eq!(level_of("no level here at all"), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
