//! `sluice produce TOPIC`: one record per input line, through librdkafka.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
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
                // Records purged when the wait for the broker ended: said by `wait_for_acks`.
                let purged = matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                );
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 && !purged {
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
    let sent = send_lines(&producer, &args, input);
    // What was queued before a bad line is still delivered (or reported), not purged with the
    // producer: then the line's error.
    wait_for_acks(
        &producer,
        &deliveries,
        Duration::from_secs(args.ack_timeout),
    )?;
    let sent = sent?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let ok = deliveries.ok.load(Ordering::Relaxed);
    if args.acks == "0" {
        // Nothing is acknowledged with acks=0: librdkafka counts a record as sent once written.
        eprintln!("{ok} of {sent} records sent (acks=0: the broker does not answer)");
    } else {
        eprintln!("{ok} of {sent} records acknowledged");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {sent} records were not delivered");
    }
    Ok(())
}

/// After how long a wait for the broker is said.
const ACK_NOTICE: Duration = Duration::from_secs(10);

/// Waits for the broker to acknowledge what is queued. librdkafka retries a broker's refusals
/// (below its free-disk floor, say) without a word, so a long wait is said, and one that ends
/// says the broker is what to look at.
fn wait_for_acks(
    producer: &ThreadedProducer<Context>,
    deliveries: &Deliveries,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        if producer.flush(Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        let waited = started.elapsed();
        let waiting = producer.in_flight_count();
        if waited >= timeout {
            anyhow::bail!(
                "the broker acknowledged {} records; {waiting} more were not taken within {} s \
                 (the broker away, or refusing them: its log and \
                 sluice_broker_produce_refused_total say why)",
                deliveries.ok.load(Ordering::Relaxed),
                timeout.as_secs()
            );
        }
        if waited >= ACK_NOTICE && !said {
            eprintln!(
                "waiting for the broker to acknowledge {waiting} records ({} s so far)",
                waited.as_secs()
            );
            said = true;
        }
    }
}

/// Sends each line of `input` (bytes as they are: a line need not be UTF-8) as a record; the
/// count sent, or the error with the number of the line it stopped at.
fn send_lines(
    producer: &ThreadedProducer<Context>,
    args: &ProduceArgs,
    mut input: Box<dyn BufRead>,
) -> anyhow::Result<u64> {
    let mut sent = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading input line {}", sent + 1))?;
        if read == 0 {
            return Ok(sent);
        }
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        let (key, value) = match &args.key_separator {
            Some(sep) => match find(&line, sep.as_bytes()) {
                Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
                None => (None, &line[..]),
            },
            None => (None, &line[..]),
        };
        let mut record = BaseRecord::to(&args.topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = args.partition {
            record = record.partition(partition);
        }
        send_waiting(producer, record).with_context(|| format!("input line {}", sent + 1))?;
        sent += 1;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
