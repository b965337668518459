//! Consumer groups with real clients: kcat's balanced consumer (-G), the Python clients' group
//! members through joins, a SIGKILL and a new member (tests/clients/group_consumers.py), and
//! committed offsets that survive a broker restart (tests/clients/group_resume.py).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn kcat_balanced_consumers_split_the_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough for both consumers to join the first generation on a busy machine.
    let sluice = Sluice::broker(
        tmp.path(),
        "[broker]\ngroup_initial_rebalance_delay_ms = 3000\n",
    );
    sluice.create_topic("shared", 4, &[]);
    let input: String = (0..400).map(|i| format!("{i}:record {i}\n")).collect();
    let out = sluice.kcat_produce("shared", &["-K", ":"], input.as_bytes());
    assert!(out.status.success());

    let consumer = || {
        let mut command = kcat();
        command
            .args([
                "-b",
                &sluice.kafka,
                "-G",
                "balanced",
                "shared",
                "-q",
                "-e",
                "-f",
                "%p %s\n",
            ])
            .args(["-X", "auto.offset.reset=earliest"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Background::spawn(&mut command)
    };
    let (a, b) = (consumer(), consumer());
    let outputs: Vec<String> = [a, b]
        .into_iter()
        .map(|c| String::from_utf8(c.finish("kcat -G", Duration::from_secs(120)).stdout).unwrap())
        .collect();
    let partitions: Vec<BTreeSet<&str>> = outputs
        .iter()
        .map(|o| o.lines().map(|l| l.split(' ').next().unwrap()).collect())
        .collect();
    assert!(
        !partitions[0].is_empty() && !partitions[1].is_empty(),
        "both members got partitions: {partitions:?}"
    );
    assert!(partitions[0].is_disjoint(&partitions[1]), "{partitions:?}");
    let seen: HashSet<&str> = outputs
        .iter()
        .flat_map(|o| o.lines())
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(seen.len(), 400, "every record consumed by one of the two");

    // Both committed on the way out: the group has no lag, and `sluice groups` says so.
    let described = run_ok(
        Command::new(SLUICE).args(["groups", "describe", "balanced", "--brokers", &sluice.kafka]),
        T,
    );
    assert!(described.contains("total lag\t0"), "{described}");
    assert_eq!(
        described
            .lines()
            .filter(|l| l.starts_with("shared\t"))
            .count(),
        4,
        "{described}"
    );
    let listed = run_ok(
        Command::new(SLUICE).args(["groups", "list", "--brokers", &sluice.kafka]),
        T,
    );
    assert!(listed.contains("balanced\tEmpty\t0"), "{listed}");

    // Ten more records: the exported lag (refreshed every 5 s) adds up to ten.
    let more: String = (400..410).map(|i| format!("{i}:record {i}\n")).collect();
    let out = sluice.kcat_produce("shared", &["-K", ":"], more.as_bytes());
    assert!(out.status.success());
    let lag = || -> f64 {
        sluice
            .metrics()
            .lines()
            .filter(|l| l.starts_with("sluice_broker_consumer_lag{group=\"balanced\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while lag() != 10.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "lag metric: {}",
            sluice.metrics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn group_members(lib: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(
        tmp.path(),
        "[broker]\ngroup_initial_rebalance_delay_ms = 300\n",
    );
    let out = run(
        python().arg(client_script("group_consumers.py")).args([
            "--lib",
            lib,
            "--bootstrap",
            &sluice.kafka,
            "--topic",
            "members",
            "--group",
            "members",
        ]),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok:"),
        "{lib}: {stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sluice.log_text()
    );
}

#[test]
fn confluent_group_shares_rebalances_on_kill_and_join_without_loss() {
    group_members("confluent");
}

#[test]
fn kafka_python_group_shares_rebalances_on_kill_and_join_without_loss() {
    group_members("kafka-python");
}

#[test]
fn committed_offsets_survive_a_broker_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(
        tmp.path(),
        "[broker]\ngroup_initial_rebalance_delay_ms = 300\n",
    );
    let phase = |sluice: &Sluice, args: &[&str]| {
        let out = run(
            python()
                .arg(client_script("group_resume.py"))
                .args([
                    "--bootstrap",
                    &sluice.kafka,
                    "--topic",
                    "resume",
                    "--group",
                    "resumers",
                ])
                .args(args),
            Duration::from_secs(180),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.contains("ok:"),
            "{args:?}: {stdout}\n{}\nbroker log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sluice.log_text()
        );
        stdout
    };
    let first = phase(&sluice, &["--phase", "produce-and-consume-half"]);
    let previous = tmp.path().join("phase1.txt");
    std::fs::write(&previous, first).unwrap();
    sluice.kill9();
    sluice.restart();
    phase(
        &sluice,
        &[
            "--phase",
            "resume",
            "--previous",
            previous.to_str().unwrap(),
        ],
    );
}

#[test]
fn internal_offsets_topic_cannot_be_written_or_deleted_by_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let forged = r#"{"group":"forged","topic":"t","partition":0}:{"offset":123,"metadata":"","timestamp":0}"#;
    let out = sluice.kcat_produce(
        "__consumer_offsets",
        &["-K", ":", "-X", "message.send.max.retries=0"],
        format!("{forged}\n").as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Invalid topic"),
        "expected INVALID_TOPIC_EXCEPTION: {stderr}"
    );
    let deleted = sluice.client(&["topics", "delete", "__consumer_offsets"]);
    assert!(!deleted.status.success());
    assert!(
        String::from_utf8_lossy(&deleted.stderr).contains("InvalidTopic"),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    // The broker restarts fine and has no forged group.
    sluice.kill9();
    sluice.restart();
    let listed = run_ok(
        Command::new(SLUICE).args(["groups", "list", "--brokers", &sluice.kafka]),
        T,
    );
    assert!(!listed.contains("forged"), "{listed}");
}

#[test]
fn a_second_consumer_with_the_same_instance_id_fences_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(
        tmp.path(),
        "[broker]\ngroup_initial_rebalance_delay_ms = 0\n",
    );
    sluice.create_topic("statics", 3, &[]);
    let script = r#"
import sys, time
from confluent_kafka import Consumer, KafkaException
conf = {"bootstrap.servers": sys.argv[1], "group.id": "static", "group.instance.id": "host-1",
        "session.timeout.ms": 6000, "auto.offset.reset": "earliest"}
def assigned(c):
    deadline = time.time() + 20
    while time.time() < deadline and not c.assignment():
        c.poll(0.2)
    return [p.partition for p in c.assignment()]
first = Consumer(conf); first.subscribe(["statics"])
print("first", assigned(first))
second = Consumer(conf); second.subscribe(["statics"])
print("second", assigned(second))
fenced = None
deadline = time.time() + 20
while time.time() < deadline and fenced is None:
    try:
        msg = first.poll(0.5)
        if msg is not None and msg.error():
            fenced = msg.error().str()
    except KafkaException as e:
        fenced = e.args[0].str()
print("first fenced:", fenced)
second.close()
"#;
    let out = run_ok(
        python().args(["-c", script, &sluice.kafka]),
        Duration::from_secs(90),
    );
    assert!(out.contains("first [0, 1, 2]"), "{out}");
    assert!(
        out.contains("second [0, 1, 2]"),
        "the restarted instance takes the place over: {out}"
    );
    assert!(out.contains("Static consumer fenced"), "{out}");
}

/// Offset metadata is bounded as Kafka bounds it (`offset.metadata.max.bytes`, 4096): a longer
/// one gets OFFSET_METADATA_TOO_LARGE, which clients do not retry, and the offset committed
/// before stays.
#[test]
fn offset_metadata_over_4_kb_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("meta", 1, &[]);
    let script = r#"
import sys
from confluent_kafka import Consumer, KafkaException, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "meta-group"})
def commit(offset, metadata):
    try:
        done = c.commit(offsets=[TopicPartition("meta", 0, offset, metadata)], asynchronous=False)
        return done[0].error.name() if done[0].error else "ok"
    except KafkaException as e:
        return e.args[0].name()
print(commit(5, "m" * 4000), commit(6, "m" * 5000))
print(c.committed([TopicPartition("meta", 0)], timeout=10)[0].offset)
c.close()
"#;
    let out = run_ok(python().args(["-c", script, &sluice.kafka]), T);
    assert_eq!(out, "ok OFFSET_METADATA_TOO_LARGE\n5\n");
}

/// A deleted topic's committed offsets go with it, as in Kafka, and stay gone through a restart:
/// a group reading the topic made again starts where its reset policy says, not at the old
/// topic's offset (it would skip the new topic's first records).
#[test]
fn a_deleted_topics_committed_offsets_go_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("reborn", 1, &[]);
    let committed = |sluice: &Sluice, commit: &str| {
        let script = r#"
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "reborn-readers"})
if sys.argv[2] != "-":
    c.commit(offsets=[TopicPartition("reborn", 0, int(sys.argv[2]))], asynchronous=False)
print(c.committed([TopicPartition("reborn", 0)], timeout=10)[0].offset)
c.close()
"#;
        run_ok(python().args(["-c", script, &sluice.kafka, commit]), T)
    };
    assert_eq!(committed(&sluice, "80"), "80\n");
    let deleted = sluice.client(&["topics", "delete", "reborn"]);
    assert!(deleted.status.success(), "{deleted:?}");
    sluice.create_topic("reborn", 1, &[]);
    // -1001: no committed offset.
    assert_eq!(committed(&sluice, "-"), "-1001\n");
    sluice.kill9();
    sluice.restart();
    assert_eq!(committed(&sluice, "-"), "-1001\n");
}

/// kafka-python's `delete_group_offsets` (OffsetDelete, as `kafka-consumer-groups
/// --delete-offsets` sends it) deletes a group's committed offsets of a partition, lasting through
/// a restart, and is refused for a topic a member is subscribed to. (It was not served:
/// IncompatibleBrokerVersion.)
#[test]
fn offsets_of_a_partition_are_deleted_unless_the_group_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(
        tmp.path(),
        "[broker]\ngroup_initial_rebalance_delay_ms = 300\n",
    );
    sluice.create_topic("od", 2, &[]);
    let out = run(
        python().arg(client_script("offset_delete.py")).args([
            "--bootstrap",
            &sluice.kafka,
            "--topic",
            "od",
            "--group",
            "deleters",
        ]),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("ok:"),
        "{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sluice.log_tail(40)
    );
    assert!(sluice.stop_with("TERM").success());
    sluice.restart();
    let described = sluice.client(&["groups", "describe", "deleters"]);
    let text = String::from_utf8_lossy(&described.stdout).into_owned();
    let offsets: Vec<&str> = text.lines().filter(|l| l.starts_with("od\t")).collect();
    assert_eq!(offsets.len(), 1, "one partition's offset left: {text}");
    assert!(offsets[0].starts_with("od\t1\t7"), "{text}");
}
