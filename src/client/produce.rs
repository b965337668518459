//! `sluice produce TOPIC`: one record per input line, through librdkafka.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{config, send_waiting};
use crate::cli::ProduceArgs;

/// Counts delivery outcomes and reports the first failure.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("error: delivery failed: {e}");
                }
                0
            }
        };
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let deliveries = Arc::new(Deliveries::default());
    let acks = if args.acks == "all" {
        "-1"
    } else {
        args.acks.as_str()
    };
    let producer: ThreadedProducer<Context> = config(&args.brokers.brokers)
        .set("acks", acks)
        .set("compression.type", &args.compression)
        .set("linger.ms", "5")
        .create_with_context(Context(deliveries.clone()))
        .context("creating the producer")?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut sent = 0u64;
    for line in input.lines() {
        let line = line.context("reading input")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
                None => (None, line),
            },
            None => (None, line),
        };
        let mut record = BaseRecord::to(&args.topic).payload(&value);
        if let Some(key) = &key {
            record = record.key(key);
        }
        if let Some(partition) = args.partition {
            record = record.partition(partition);
        }
        send_waiting(&producer, record).context("queueing a record")?;
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("waiting for the broker to acknowledge")?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let ok = deliveries.ok.load(Ordering::Relaxed);
    eprintln!("{ok} of {sent} records acknowledged");
    if failed > 0 {
        anyhow::bail!("{failed} of {sent} records were not delivered");
    }
    Ok(())
}
