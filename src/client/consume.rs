//! `sluice consume TOPIC`: read from the beginning, the end, an offset or a time, through
//! librdkafka with explicit partition assignment (no consumer group needed).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{config, TIMEOUT};
use crate::cli::ConsumeArgs;

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    // librdkafka's assign() wants a group id; nothing is ever committed to it.
    let consumer: BaseConsumer = config(&args.brokers.brokers)
        .set("group.id", "sluice-cli")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), TIMEOUT)
        .with_context(|| format!("reading metadata of {}", args.topic))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == args.topic) else {
        bail!("topic {} not found", args.topic);
    };
    let partitions: Vec<i32> = match args.partition {
        Some(p) => vec![p],
        None => topic.partitions().iter().map(|p| p.id()).collect(),
    };
    if partitions.is_empty() {
        bail!("topic {} not found", args.topic);
    }
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
            let (_, high) = consumer.fetch_watermarks(&args.topic, elem.partition(), TIMEOUT)?;
            let from = match elem.offset() {
                Offset::Offset(o) => o,
                Offset::Beginning => {
                    consumer
                        .fetch_watermarks(&args.topic, elem.partition(), TIMEOUT)?
                        .0
                }
                _ => high,
            };
            if from < high {
                remaining.insert(elem.partition(), high);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
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

fn start_offset(args: &ConsumeArgs) -> anyhow::Result<Offset> {
    if let Some(time) = &args.timestamp {
        let ms = match time.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => humantime_ms(time)?,
        };
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

/// Parses an RFC 3339 time (`2024-05-01T12:00:00Z`) into epoch milliseconds.
fn humantime_ms(text: &str) -> anyhow::Result<i64> {
    let bad = || {
        anyhow::anyhow!(
            "--timestamp {text:?}: expected RFC 3339 (2024-05-01T12:00:00Z) or epoch ms"
        )
    };
    let (date, rest) = text.split_once('T').ok_or_else(bad)?;
    let rest = rest.strip_suffix('Z').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let millis: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    Ok(
        (days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000
            + millis,
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn print_record(out: &mut impl Write, message: &impl Message, json: bool) -> anyhow::Result<()> {
    let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
    if !json {
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let headers: Vec<serde_json::Value> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    serde_json::json!({
                        "key": header.key,
                        "value": header.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let record = serde_json::json!({
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": value,
        "headers": headers,
    });
    writeln!(out, "{record}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_millis() {
        assert_eq!(humantime_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            humantime_ms("2024-05-01T12:00:00.250Z").unwrap(),
            1_714_564_800_250
        );
        assert!(humantime_ms("yesterday").is_err());
    }
}
