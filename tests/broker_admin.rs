//! Topic administration through third-party admin clients: CreatePartitions grows a topic that
//! clients then use, and with auto-creation off unknown topics are refused, not invented.

mod common;

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
