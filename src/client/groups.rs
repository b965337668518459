//! `sluice groups list|describe`: members, their assignments, committed offsets and lag.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{config, TIMEOUT};
use crate::cli::{GroupsAction, GroupsArgs};

pub fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let brokers = &args.brokers.brokers;
    let consumer: BaseConsumer = config(brokers).create()?;
    // A broker that cannot be reached is said at once, as the other commands say it: asking for
    // the groups would only time out.
    consumer
        .fetch_metadata(None, TIMEOUT)
        .with_context(|| format!("reading metadata from {brokers}"))?;
    let mut out = std::io::stdout().lock();
    match args.action {
        GroupsAction::List => {
            let groups = consumer
                .fetch_group_list(None, TIMEOUT)
                .with_context(|| format!("listing groups on {brokers}"))?;
            writeln!(out, "group\tstate\tmembers")?;
            for g in groups.groups() {
                writeln!(out, "{}\t{}\t{}", g.name(), g.state(), g.members().len())?;
            }
        }
        GroupsAction::Describe { name } => {
            let groups = consumer
                .fetch_group_list(Some(&name), TIMEOUT)
                .with_context(|| format!("describing group {name} on {brokers}"))?;
            let Some(group) = groups.groups().iter().find(|g| g.name() == name) else {
                bail!("group {name} not found");
            };
            // An empty group has no protocol chosen: nothing to show in parentheses.
            let protocol = match group.protocol() {
                "" => String::new(),
                protocol => format!(" ({protocol})"),
            };
            writeln!(
                out,
                "group {name}: {}{protocol}, {} members",
                group.state(),
                group.members().len()
            )?;
            writeln!(out, "member\tclient\thost\tassignment")?;
            for m in group.members() {
                let assignment = m.assignment().map(describe_assignment).unwrap_or_default();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{assignment}",
                    m.id(),
                    m.client_id(),
                    m.client_host()
                )?;
            }
            offsets(&mut out, brokers, &name, &consumer)?;
        }
    }
    Ok(())
}

/// Committed offset and lag of every partition the group has committed for.
fn offsets(
    out: &mut impl Write,
    brokers: &str,
    group: &str,
    probe: &BaseConsumer,
) -> anyhow::Result<()> {
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    let mut all = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
    {
        for p in topic.partitions() {
            all.add_partition(topic.name(), p.id());
        }
    }
    let member: BaseConsumer = config(brokers).set("group.id", group).create()?;
    let committed = member
        .committed_offsets(all, TIMEOUT)
        .context("fetching committed offsets")?;
    writeln!(out, "topic\tpartition\tcommitted\tend\tlag")?;
    let mut total = 0;
    for elem in committed.elements() {
        let Offset::Offset(offset) = elem.offset() else {
            continue;
        };
        let (_, end) = probe.fetch_watermarks(elem.topic(), elem.partition(), TIMEOUT)?;
        let lag = (end - offset).max(0);
        total += lag;
        writeln!(
            out,
            "{}\t{}\t{offset}\t{end}\t{lag}",
            elem.topic(),
            elem.partition()
        )?;
    }
    writeln!(out, "total lag\t{total}")?;
    Ok(())
}

/// The consumer protocol's assignment (version, then topics with partition lists) as
/// `topic:0,1 other:2`.
fn describe_assignment(bytes: &[u8]) -> String {
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut at = 2; // version
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let slice = bytes.get(*at..*at + n)?;
        *at += n;
        Some(slice)
    };
    let i32_at =
        |at: &mut usize| take(at, 4).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
    let mut parse = |at: &mut usize| -> Option<()> {
        let count = i32_at(at)?;
        for _ in 0..count.max(0) {
            let len = i16::from_be_bytes(take(at, 2)?.try_into().ok()?);
            let name = String::from_utf8_lossy(take(at, len.max(0) as usize)?).into_owned();
            let n = i32_at(at)?;
            let partitions = (0..n.max(0))
                .map(|_| i32_at(at))
                .collect::<Option<Vec<_>>>()?;
            topics.entry(name).or_default().extend(partitions);
        }
        Some(())
    };
    if parse(&mut at).is_none() {
        return format!("({} bytes, not the consumer protocol)", bytes.len());
    }
    topics
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            let list: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}:{}", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_readable() {
        let mut b = vec![0, 1];
        b.extend(1i32.to_be_bytes());
        b.extend(4i16.to_be_bytes());
        b.extend(b"logs");
        b.extend(2i32.to_be_bytes());
        b.extend(3i32.to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        assert_eq!(describe_assignment(&b), "logs:0,3");
        assert!(describe_assignment(&[0, 1, 0]).contains("not the consumer protocol"));
    }
}
