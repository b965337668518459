//! `sluice bench produce`: drives a broker with librdkafka and reports throughput and
//! acknowledgement latency. Without `--brokers` it starts its own `sluice broker` child on a
//! temporary directory, so it can also report the broker's CPU time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{create_topic, delete_topic, start_broker, OwnedChild};
use crate::cli::BenchProduceArgs;
use crate::client;
use crate::cpu_time::cpu_seconds;

/// What one bench run measured.
#[derive(Debug, serde::Serialize)]
struct Report {
    records: u64,
    failed: u64,
    payload_bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    records_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    ack_max_ms: f64,
    /// librdkafka's own request round trip to the broker (send to response), p99 of each
    /// second: the median second and the worst. Against the ack latency it tells time spent at
    /// the broker from time spent queued in the client.
    request_rtt_p99_ms_median_second: Option<f64>,
    request_rtt_p99_ms_worst_second: Option<f64>,
    /// Broker CPU seconds per wall second (only when the bench started the broker).
    broker_cores: Option<f64>,
    /// This load generator's CPU seconds per wall second: what it takes from the cores it may
    /// share with the broker.
    generator_cores: f64,
    /// Broker cores used per 100 MB/s of payload.
    broker_cores_per_100mb_s: Option<f64>,
}

/// How far ahead of its rate a paced run may send before it sleeps.
const PACE: Duration = Duration::from_millis(1);

struct Acks {
    /// What send times are counted from.
    epoch: Instant,
    latency_us: Mutex<Histogram<u64>>,
    records: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
    /// Each statistics interval's p99 request round trip, in µs.
    rtt_p99_us: Mutex<Vec<i64>>,
}

struct BenchContext(Arc<Acks>);

impl ClientContext for BenchContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let seconds = statistics.brokers.values().filter_map(|broker| {
            let rtt = broker.rtt.as_ref()?;
            (rtt.cnt > 0).then_some(rtt.p99)
        });
        if let Ok(mut rtt) = self.0.rtt_p99_us.lock() {
            rtt.extend(seconds);
        }
    }
}

impl ProducerContext for BenchContext {
    /// When the record was queued, in µs since `Acks::epoch`: no allocation per record, so the
    /// load generator takes less of the CPU it shares with the broker.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        match result {
            Ok(message) => {
                let now_us = self.0.epoch.elapsed().as_micros() as u64;
                let micros = now_us.saturating_sub(sent_us as u64);
                if let Ok(mut h) = self.0.latency_us.lock() {
                    let _ = h.record(micros.max(1));
                }
                self.0.records.fetch_add(1, Ordering::Relaxed);
                let len = rdkafka::Message::payload(message).map_or(0, <[u8]>::len) as u64;
                self.0.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub async fn produce(args: BenchProduceArgs) -> anyhow::Result<()> {
    if !(args.seconds >= 1.0 && args.seconds.is_finite()) || args.record_size == 0 {
        anyhow::bail!(
            "--seconds must be at least 1 and --record-size at least 1 (got {} and {})",
            args.seconds,
            args.record_size
        );
    }
    let (brokers, owned) = match &args.brokers {
        Some(list) => (list.clone(), None),
        None => {
            let config = format!(
                "[broker]\nio_backend = \"{}\"\ndirect_io = {}\n",
                args.io_backend, args.direct_io
            );
            let (addr, broker) = start_broker(args.data_dir.clone(), &config)?;
            (addr, Some(broker))
        }
    };
    let topic = format!("bench-{}", std::process::id());
    create_topic(&brokers, &topic, args.partitions).await?;
    let records = payloads(&args)?;
    let cpu_before = owned.as_ref().map(|b| cpu_seconds(b.pid())).transpose()?;
    let report = drive(
        &args,
        &brokers,
        &topic,
        &records,
        owned.as_ref().map(OwnedChild::pid),
        cpu_before,
    );
    if owned.is_none() {
        if let Err(e) = delete_topic(&brokers, &topic).await {
            eprintln!("warning: the bench topic {topic} is left on the broker: {e:#}");
        }
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} records ({} failed), {:.1} MB/s, {:.0} records/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.records, report.failed, report.mb_per_s, report.records_per_s,
            report.ack_p50_ms, report.ack_p99_ms, report.ack_max_ms
        );
        if let (Some(median), Some(worst)) = (
            report.request_rtt_p99_ms_median_second,
            report.request_rtt_p99_ms_worst_second,
        ) {
            println!(
                "request round trip p99 per second: median {median:.2} ms, worst {worst:.2} ms"
            );
        }
        if let (Some(cores), Some(per)) = (report.broker_cores, report.broker_cores_per_100mb_s) {
            println!("broker CPU: {cores:.2} cores, {per:.2} cores per 100 MB/s");
        }
        println!("load generator CPU: {:.2} cores", report.generator_cores);
    }
    drop(owned);
    Ok(())
}

fn drive(
    args: &BenchProduceArgs,
    brokers: &str,
    topic: &str,
    records: &[Vec<u8>],
    broker_pid: Option<u32>,
    cpu_before: Option<f64>,
) -> anyhow::Result<Report> {
    let acks = Arc::new(Acks {
        epoch: Instant::now(),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        rtt_p99_us: Mutex::new(Vec::new()),
    });
    let acks_setting = if args.acks == "all" {
        "-1"
    } else {
        args.acks.as_str()
    };
    let producer: ThreadedProducer<BenchContext> = client::config(brokers)
        .set("acks", acks_setting)
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("statistics.interval.ms", "1000")
        .create_with_context(BenchContext(acks.clone()))?;
    let generator_before = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let bytes_per_s = args.rate_mb * 1_000_000.0;
    let mut sent_bytes = 0f64;
    let mut i = 0usize;
    while Instant::now() < deadline {
        if bytes_per_s > 0.0 {
            let due = started + Duration::from_secs_f64(sent_bytes / bytes_per_s);
            // Sleeping for each record's few microseconds cost the shared cores a context
            // switch per sleep; running up to PACE ahead sends what linger.ms gathers anyway.
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                if wait >= PACE {
                    std::thread::sleep(wait);
                }
            }
        }
        let payload = &records[i % records.len()];
        let sent_us = acks.epoch.elapsed().as_micros() as usize;
        let record: BaseRecord<'_, (), [u8], usize> =
            BaseRecord::with_opaque_to(topic, sent_us).payload(payload);
        client::send_waiting(&producer, record).context("queueing a record")?;
        sent_bytes += payload.len() as f64;
        i += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    let generator_cores = (cpu_seconds(std::process::id())? - generator_before) / seconds;
    let cores = match (broker_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((cpu_seconds(pid)? - before) / seconds),
        _ => None,
    };
    let histogram = acks
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock"))?;
    let mut rtt = acks
        .rtt_p99_us
        .lock()
        .map_err(|_| anyhow::anyhow!("round trip lock"))?
        .clone();
    rtt.sort_unstable();
    let rtt_ms = |us: Option<&i64>| us.map(|&us| us as f64 / 1000.0);
    let bytes = acks.bytes.load(Ordering::Relaxed);
    let mb_per_s = bytes as f64 / seconds / 1e6;
    Ok(Report {
        records: acks.records.load(Ordering::Relaxed),
        failed: acks.failed.load(Ordering::Relaxed),
        payload_bytes: bytes,
        seconds,
        mb_per_s,
        records_per_s: acks.records.load(Ordering::Relaxed) as f64 / seconds,
        ack_p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        ack_p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        ack_max_ms: histogram.max() as f64 / 1000.0,
        request_rtt_p99_ms_median_second: rtt_ms(rtt.get(rtt.len() / 2)),
        request_rtt_p99_ms_worst_second: rtt_ms(rtt.last()),
        broker_cores: cores,
        generator_cores,
        broker_cores_per_100mb_s: cores
            .filter(|_| mb_per_s > 0.0)
            .map(|c| c / (mb_per_s / 100.0)),
    })
}

/// Random (incompressible) payloads, or the lines of `--lines`.
fn payloads(args: &BenchProduceArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(path) = &args.lines {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<Vec<u8>> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if lines.is_empty() {
            bail!("{} has no lines", path.display());
        }
        return Ok(lines);
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    Ok((0..4096)
        .map(|_| {
            (0..args.record_size)
                .map(|_| {
                    // xorshift64: fast, and plenty random for "incompressible".
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect())
}
