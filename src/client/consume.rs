//! `sluice consume TOPIC`: read from the beginning, the end, an offset or a time, through
//! librdkafka with explicit partition assignment (no consumer group needed).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use sluice_agent::event::now_ms;
use sluice_indexer::search::time::parse_time;

use super::{config, TIMEOUT};
use crate::cli::ConsumeArgs;

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    // librdkafka's assign() wants a group id; nothing is ever committed to it.
    let consumer: BaseConsumer = config(&args.brokers.brokers)
        .set("group.id", "sluice-cli")
        .set("enable.auto.commit", "false")
        // An offset that retention has removed (before or while reading) reads on from the
        // oldest record rather than jumping to the end.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the consumer")?;
    let partitions = partitions_of(&consumer, &args)?;
    let start = start_offset(&args)?;
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment.add_partition_offset(&args.topic, p, start)?;
    }
    if let Offset::Offset(ms) = start {
        if args.timestamp.is_some() {
            assignment = consumer
                .offsets_for_times(assignment_at(&args.topic, &partitions, ms)?, TIMEOUT)
                .context("looking up offsets for the timestamp")?;
        }
    }
    // Where "the end" is, when not following: each partition's high watermark now.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    if !args.follow {
        for elem in assignment.elements() {
            let (low, high) = consumer.fetch_watermarks(&args.topic, elem.partition(), TIMEOUT)?;
            let from = match elem.offset() {
                Offset::Offset(o) => o.max(low),
                Offset::Beginning => low,
                _ => high,
            };
            if from > high && args.timestamp.is_none() {
                eprintln!(
                    "partition {}: offset {from} is past its end ({high}); nothing to read",
                    elem.partition()
                );
            }
            if from < high {
                remaining.insert(elem.partition(), high);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        // Only the partitions with something to read: one asked past its end would be reset
        // to its beginning by librdkafka and read after all.
        let mut to_read = TopicPartitionList::new();
        for elem in assignment.elements() {
            if remaining.contains_key(&elem.partition()) {
                to_read.add_partition_offset(&args.topic, elem.partition(), elem.offset())?;
            }
        }
        assignment = to_read;
    }
    if args.max == Some(0) {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            out.flush()?;
            continue;
        };
        let message = message.context("consuming")?;
        print_record(&mut out, &message, args.json)?;
        printed += 1;
        if args.max.is_some_and(|max| printed >= max) {
            break;
        }
        if !args.follow {
            if let Some(&high) = remaining.get(&message.partition()) {
                if message.offset() + 1 >= high {
                    remaining.remove(&message.partition());
                }
            }
            if remaining.is_empty() {
                break;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The partitions to read: the one asked for, or all of the topic's. A topic not made yet is
/// waited for when following (said once), and not found otherwise.
fn partitions_of(consumer: &BaseConsumer, args: &ConsumeArgs) -> anyhow::Result<Vec<i32>> {
    let mut said = false;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(&args.topic), TIMEOUT)
            .with_context(|| format!("reading metadata of {}", args.topic))?;
        let found: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == args.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !found.is_empty() {
            return Ok(match args.partition {
                Some(p) => vec![p],
                None => found,
            });
        }
        if !args.follow {
            bail!("topic {} not found", args.topic);
        }
        if !std::mem::replace(&mut said, true) {
            eprintln!("waiting for topic {} to be made", args.topic);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn start_offset(args: &ConsumeArgs) -> anyhow::Result<Offset> {
    if let Some(time) = &args.timestamp {
        // The search API's reading of a time, so both take the same ones.
        let ms = parse_time(time, now_ms()).map_err(|e| anyhow::anyhow!("--timestamp: {e}"))?;
        return Ok(Offset::Offset(ms));
    }
    Ok(match args.from.as_str() {
        "beginning" => Offset::Beginning,
        "end" => Offset::End,
        n => {
            Offset::Offset(n.parse().map_err(|_| {
                anyhow::anyhow!("--from {n:?}: expected beginning, end or an offset")
            })?)
        }
    })
}

fn assignment_at(topic: &str, partitions: &[i32], ms: i64) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition_offset(topic, p, Offset::Offset(ms))?;
    }
    Ok(list)
}

/// Bytes as JSON: their text when they are UTF-8, else `{"base64": …}`, so that nothing is lost.
fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

fn print_record(out: &mut impl Write, message: &impl Message, json: bool) -> anyhow::Result<()> {
    let value = message.payload().unwrap_or_default();
    if !json {
        // The bytes as they are, as kcat prints them.
        out.write_all(value)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    let headers: Vec<serde_json::Value> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    serde_json::json!({
                        "key": header.key,
                        "value": header.value.map(bytes_json),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let record = serde_json::json!({
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(bytes_json),
        "value": bytes_json(value),
        "headers": headers,
    });
    writeln!(out, "{record}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn start_at(time: &str) -> anyhow::Result<Offset> {
        let cli = Cli::try_parse_from(["sluice", "consume", "t", "--timestamp", time]).unwrap();
        let Command::Consume(args) = cli.command else {
            unreachable!("parsed as consume")
        };
        start_offset(&args)
    }

    /// The times the search API takes: offsets, epoch seconds and milliseconds by their size.
    #[test]
    fn timestamps_read_as_the_search_api_reads_them() {
        let at = Offset::Offset(1_714_564_800_250);
        assert_eq!(start_at("2024-05-01T12:00:00.250Z").unwrap(), at);
        assert_eq!(start_at("2024-05-01T14:00:00.250+02:00").unwrap(), at);
        assert_eq!(start_at("1714564800250").unwrap(), at);
        assert_eq!(
            start_at("1714564800").unwrap(),
            Offset::Offset(1_714_564_800_000)
        );
        let e = start_at("yesterday").unwrap_err().to_string();
        assert!(e.contains("--timestamp") && e.contains("RFC 3339"), "{e}");
    }
}
