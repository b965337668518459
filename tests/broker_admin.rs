//! Topic administration through third-party admin clients: CreatePartitions grows a topic that
//! clients then use, and with auto-creation off unknown topics are refused, not invented.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn create_partitions_through_confluent_admin() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let script = r#"
import sys
from confluent_kafka.admin import AdminClient, NewTopic, NewPartitions
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for f in admin.create_topics([NewTopic("grow", num_partitions=2, replication_factor=1)]).values():
    f.result(10)
for f in admin.create_partitions([NewPartitions("grow", 5)]).values():
    f.result(10)
try:
    for f in admin.create_partitions([NewPartitions("grow", 3)]).values():
        f.result(10)
    print("shrink accepted")
except Exception as e:
    print("shrink refused:", e)
print("partitions:", len(admin.list_topics(timeout=10).topics["grow"].partitions))
"#;
    let out = run_ok(python().args(["-c", script, &sluice.kafka]), T);
    assert!(out.contains("partitions: 5"), "{out}");
    assert!(
        out.contains("shrink refused") && out.contains("INVALID_PARTITIONS"),
        "{out}"
    );
    let produced = sluice.kcat_produce("grow", &["-p", "4"], b"in the new partition\n");
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = sluice.kcat_consume("grow", &["-p", "4"]);
    assert_eq!(consumed, "in the new partition\n");
    assert!(sluice.data_dir.join("broker/grow-4").is_dir());

    // The same through `sluice topics alter --partitions`.
    let grown = sluice.client(&["topics", "alter", "grow", "--partitions", "7"]);
    assert_eq!(
        String::from_utf8_lossy(&grown.stdout),
        "topic grow now has 7 partitions\n",
        "{}",
        String::from_utf8_lossy(&grown.stderr)
    );
    let listed = sluice.client(&["topics", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("grow\t7 partitions"),
        "{listed:?}"
    );
    let shrink = sluice.client(&["topics", "alter", "grow", "--partitions", "3"]);
    assert!(!shrink.status.success());
    let stderr = String::from_utf8_lossy(&shrink.stderr);
    assert!(
        stderr.contains("it has 7; a partition count can only grow"),
        "{stderr}"
    );
}

#[test]
fn unknown_topics_are_refused_when_auto_creation_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nauto_create_topics = false\n");
    let out = sluice.kcat_produce(
        "nope",
        &["-X", "topic.metadata.propagation.max.ms=500"],
        b"lost\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Unknown topic"),
        "{stderr}"
    );
    let listed = run_ok(kcat().args(["-L", "-b", &sluice.kafka]), T);
    assert!(!listed.contains("\"nope\""), "{listed}");
    assert!(!sluice.data_dir.join("broker/nope-0").exists());
}

/// Topics made the way tools make them, through confluent-kafka's admin client: Kafka Streams'
/// configs that mean nothing on one broker, a compacted table's tuning, a name starting with
/// `__` that is not the broker's own (then written, read and deleted like any topic), a manual
/// replica assignment, a name that collides with another's in metrics. Each is taken
/// as Kafka takes it; what Sluice cannot honour (LogAppendTime, a replica on another broker) is
/// refused and says why.
#[test]
fn topics_made_the_way_tools_make_them() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let script = r#"
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
node = next(iter(admin.list_topics(timeout=10).brokers))
def make(topic):
    try:
        admin.create_topics([topic])[topic.topic].result(10)
        return "made"
    except Exception as e:
        return f"refused: {e}"
streams = {"message.timestamp.type": "CreateTime", "min.insync.replicas": "2", "cleanup.policy": "delete"}
print("streams:", make(NewTopic("__app-repartition", 2, 1, config=streams)))
print("assigned:", make(NewTopic("assigned", 3, replica_assignment=[[node], [node], [node]])))
print("elsewhere:", make(NewTopic("elsewhere", 1, replica_assignment=[[node + 1]])))
print("append time:", make(NewTopic("append-time", 1, 1, config={"message.timestamp.type": "LogAppendTime"})))
table = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0", "segment.ms": "100"}
print("table:", make(NewTopic("app.table", 1, 1, config=table)))
print("collision:", make(NewTopic("app_table", 1, 1)))
topics = admin.list_topics(timeout=10).topics
print("assigned partitions:", len(topics["assigned"].partitions))
"#;
    let out = run_ok(python().args(["-c", script, &sluice.kafka]), T);
    assert!(out.contains("streams: made"), "{out}");
    assert!(out.contains("assigned: made"), "{out}");
    assert!(out.contains("assigned partitions: 3"), "{out}");
    assert!(
        out.contains("elsewhere: refused") && out.contains("INVALID_REPLICA_ASSIGNMENT"),
        "{out}"
    );
    assert!(
        out.contains("append time: refused") && out.contains("LogAppendTime is not supported"),
        "{out}"
    );
    assert!(out.contains("table: made"), "{out}");
    assert!(
        out.contains("collision: refused") && out.contains("collides with the existing topic"),
        "{out}"
    );
    let produced = sluice.kcat_produce("__app-repartition", &["-p", "1"], b"repartitioned\n");
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = sluice.kcat_consume("__app-repartition", &["-p", "1"]);
    assert_eq!(consumed, "repartitioned\n");
    let deleted = sluice.client(&["topics", "delete", "__app-repartition"]);
    assert!(deleted.status.success(), "{deleted:?}");
}

/// Transactions are not supported: a transactional producer of either library fails at once
/// and says so, rather than retrying until its own timeout (60 s here).
#[test]
fn transactional_producers_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let out = run(
        python()
            .arg(client_script("transactional.py"))
            .arg(&sluice.kafka),
        Duration::from_secs(50),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for library in ["confluent-kafka", "kafka-python"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(library))
            .unwrap_or_else(|| panic!("{library} said nothing: {stdout}"));
        assert!(
            line.contains("transactions are not supported")
                || line.contains("TransactionalIdAuthorizationFailed"),
            "{line}"
        );
    }
}

/// A topic's configs change in place: both libraries' admin clients (the incremental request
/// and the older one that replaces the overrides), `sluice topics alter`, and the change is in
/// effect (retention by size then removes old segments) and survives a restart.
#[test]
fn topic_configs_are_altered_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "[broker]\nretention_check_interval_ms = 200\n");
    sluice.create_topic("tuned", 1, &[]);
    let out = run(
        python()
            .arg(client_script("alter_configs.py"))
            .args([&sluice.kafka, "tuned"]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An override the broker keeps without effect survives a later alter of other keys.
    alter_tuned(&sluice, &["--config", "min.insync.replicas=2"]);
    alter_tuned(
        &sluice,
        &[
            "--config",
            "segment.bytes=4096",
            "--config",
            "retention.bytes=16384",
        ],
    );
    let lines: String = (0..1000)
        .map(|i| format!("record {i:05} {}\n", "z".repeat(80)))
        .collect();
    assert!(sluice
        .kcat_produce(
            "tuned",
            &["-p", "0", "-X", "batch.num.messages=10"],
            lines.as_bytes()
        )
        .status
        .success());
    wait_until(
        "retention by the altered size",
        Duration::from_secs(30),
        || {
            sluice
                .metric("sluice_broker_segments_deleted_total{topic=\"tuned\"}")
                .unwrap_or(0.0)
                >= 1.0
        },
    );
    sluice.kill9();
    sluice.restart();
    let described = tuned_configs(&sluice);
    assert!(
        described.contains("retention.bytes\t16384\ttopic"),
        "{described}"
    );
    assert!(
        described.contains("min.insync.replicas\t2\ttopic"),
        "{described}"
    );
    assert!(
        described.contains("segment.bytes\t4096\ttopic"),
        "{described}"
    );
    alter_tuned(&sluice, &["--delete-config", "segment.bytes"]);
    let described = tuned_configs(&sluice);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("segment.bytes\t") && l.ends_with("\tdefault")),
        "{described}"
    );
    assert!(
        described.contains("retention.bytes\t16384\ttopic"),
        "{described}"
    );
    // A value the broker describes in its own words is still the change asked for.
    alter_tuned(&sluice, &["--config", "cleanup.policy=delete,compact"]);
    // A refused change is an error that says why, and changes nothing.
    let refused = sluice.client(&[
        "topics",
        "alter",
        "tuned",
        "--config",
        "retention.bytes=1",
        "--config",
        "cleanup.policy=zap",
    ]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("cleanup.policy=\"zap\": expected delete, compact or compact,delete"),
        "{said}"
    );
    let described = tuned_configs(&sluice);
    assert!(
        described.contains("retention.bytes\t16384\ttopic"),
        "{described}"
    );
    // A config the topic does not set, and a topic that is not there, are said as such.
    let refused = sluice.client(&["topics", "alter", "tuned", "--delete-config", "nonexistent"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("topic tuned does not set it"), "{said}");
    let refused = sluice.client(&["topics", "alter", "nosuch", "--config", "retention.ms=1"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("topic nosuch not found"), "{said}");
    assert!(!sluice
        .client(&["topics", "list"])
        .stdout
        .windows(6)
        .any(|w| w == b"nosuch"));
    let refused = sluice.client(&["topics", "create", "other", "--config", "retention.ms=soon"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("retention.ms=\"soon\": expected milliseconds or -1"),
        "{said}"
    );
}

/// `sluice topics alter tuned ARGS`, which must succeed.
/// What `sluice topics describe tuned` prints.
fn tuned_configs(sluice: &Sluice) -> String {
    String::from_utf8_lossy(&sluice.client(&["topics", "describe", "tuned"]).stdout).into_owned()
}

fn alter_tuned(sluice: &Sluice, args: &[&str]) {
    let out = sluice.client(&[&["topics", "alter", "tuned"][..], args].concat());
    assert!(
        out.status.success(),
        "alter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ListOffsets through confluent-kafka's admin client, for each spec it offers: earliest, latest,
/// the record with the largest timestamp (not the last record), the first at or after a time.
#[test]
fn list_offsets_answers_every_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("stamps", 1, &[]);
    let script = r#"
import sys, time
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
bootstrap = sys.argv[1]
base = int(time.time() * 1000)
producer = Producer({"bootstrap.servers": bootstrap})
for i, seconds in enumerate([5, 9, 3, 9, 1]):
    producer.produce("stamps", value=str(i), partition=0, timestamp=base + seconds * 1000)
producer.flush(10)
admin = AdminClient({"bootstrap.servers": bootstrap})
tp = TopicPartition("stamps", 0)
specs = [("earliest", OffsetSpec.earliest()), ("latest", OffsetSpec.latest()),
         ("max", OffsetSpec.max_timestamp()), ("at 4 s", OffsetSpec.for_timestamp(base + 4000))]
for name, spec in specs:
    got = admin.list_offsets({tp: spec})[tp].result(10)
    print(name, got.offset, got.timestamp - base if got.timestamp > 0 else got.timestamp)
"#;
    let out = run_ok(python().args(["-c", script, &sluice.kafka]), T);
    assert_eq!(
        out,
        "earliest 0 -1\nlatest 5 -1\nmax 1 9000\nat 4 s 0 5000\n"
    );
}

/// A topic of more partitions than the broker has file descriptors for is refused with what to
/// do (it came back as a bare storage error, logged nowhere, its directories left behind), and
/// nothing of it is left; topics that fit are still made.
#[test]
fn a_topic_past_the_open_files_limit_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    run_ok(
        Command::new("prlimit").args(["--pid", &sluice.pid().to_string(), "--nofile=300:300"]),
        Duration::from_secs(10),
    );
    let script = r#"
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
try:
    admin.create_topics([NewTopic("wide", 500, 1)])["wide"].result(30)
    print("made")
except Exception as e:
    print(e)
"#;
    let out = run_ok(
        python().args(["-c", script, &sluice.kafka]),
        Duration::from_secs(60),
    );
    assert!(out.contains("open-files limit"), "{out}");
    let left = std::fs::read_dir(sluice.data_dir.join("broker"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("wide-")
        })
        .count();
    assert_eq!(left, 0, "partition directories left behind");
    assert!(sluice
        .log_text()
        .contains("new partitions could not be opened"));
    sluice.create_topic("narrow", 2, &[]);
}
