//! Retention deletes whole old segments (by size and by age), and the free-disk floor refuses
//! produce with KAFKA_STORAGE_ERROR until space returns, without harming what is stored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn low_watermark(sluice: &Sluice, topic: &str) -> i64 {
    let out = run_ok(
        Command::new(SLUICE).args(["topics", "describe", topic, "--brokers", &sluice.kafka]),
        T,
    );
    out.lines()
        .find(|l| l.starts_with("0\t"))
        .and_then(|l| l.split('\t').nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no partition 0 in {out}"))
}

fn segments(sluice: &Sluice, topic: &str) -> usize {
    std::fs::read_dir(sluice.data_dir.join(format!("broker/{topic}-0")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

fn produce(sluice: &Sluice, topic: &str, lines: &str, extra: &[&str]) -> std::process::Output {
    run_with_input(
        kcat()
            .args(["-P", "-b", &sluice.kafka, "-t", topic, "-p", "0"])
            .args(["-X", "batch.num.messages=10", "-X", "linger.ms=0"])
            .args(extra),
        lines.as_bytes(),
        T,
    )
}

#[test]
fn retention_by_size_deletes_oldest_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nretention_check_interval_ms = 100\n");
    sluice.create_topic("sized", 1, &["segment.bytes=4096", "retention.bytes=16384"]);
    let lines: String = (0..1000)
        .map(|i| format!("record {i:05} {}\n", "z".repeat(80)))
        .collect();
    assert!(produce(&sluice, "sized", &lines, &[]).status.success());
    wait_until("size retention", Duration::from_secs(10), || {
        low_watermark(&sluice, "sized") > 0
    });
    // Segments rolled at 4 KiB (retention never deletes the active one) and some stay.
    assert!(segments(&sluice, "sized") >= 2);
    let size: u64 = std::fs::read_dir(sluice.data_dir.join("broker/sized-0"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        size <= 16384 + 4096 * 2,
        "{size} bytes left for retention.bytes=16384"
    );
    // What remains is a whole, contiguous suffix of what was written.
    let low = low_watermark(&sluice, "sized");
    let consumed = sluice.kcat_consume("sized", &["-p", "0", "-f", "%o %s\n"]);
    let got: Vec<&str> = consumed.lines().collect();
    assert_eq!(got.len() as i64, 1000 - low);
    for (i, line) in got.iter().enumerate() {
        let offset = low + i as i64;
        assert!(
            line.starts_with(&format!("{offset} record {offset:05} ")),
            "{line}"
        );
    }
    // `sluice consume --from 0`, an offset retention removed, reads what remains and ends.
    let from_zero = run_ok(
        Command::new(SLUICE).args([
            "consume",
            "sized",
            "--from",
            "0",
            "--brokers",
            &sluice.kafka,
        ]),
        T,
    );
    assert_eq!(from_zero.lines().count() as i64, 1000 - low);
    assert!(
        from_zero.starts_with(&format!("record {low:05} ")),
        "{from_zero}"
    );
    assert!(
        sluice
            .metric("sluice_broker_segments_deleted_total{topic=\"sized\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn retention_by_age_deletes_expired_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nretention_check_interval_ms = 100\n");
    // Long enough for the first checks below on a busy machine.
    sluice.create_topic("aged", 1, &["segment.ms=300", "retention.ms=8000"]);
    assert!(produce(&sluice, "aged", "old 1\nold 2\nold 3\n", &[])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(400));
    assert!(produce(&sluice, "aged", "newer\n", &[]).status.success());
    assert_eq!(low_watermark(&sluice, "aged"), 0, "nothing has expired yet");
    wait_until("age retention", Duration::from_secs(30), || {
        low_watermark(&sluice, "aged") >= 3
    });
    // Then the newest record expires too, in the active segment: as Kafka does, that segment is
    // closed and deleted (a quiet topic kept expired records until its next write), and the log
    // goes on from its end.
    wait_until(
        "the active segment's expiry",
        Duration::from_secs(30),
        || low_watermark(&sluice, "aged") == 4,
    );
    assert!(produce(&sluice, "aged", "after\n", &[]).status.success());
    let consumed = sluice.kcat_consume("aged", &["-f", "%o %s\n"]);
    assert_eq!(consumed, "4 after\n");
}

/// A small tmpfs, so the file system really runs low; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI machine runs tests as root)"
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn free_disk_floor_refuses_produce_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 64);
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![1u8; 30 << 20]).unwrap();
    let config = format!(
        "[broker]\nmin_free_bytes = {}\nretention_check_interval_ms = 100\n",
        40u64 << 20
    );
    // Data dir, config and log all live on the small disk.
    let sluice = Sluice::broker(&disk.0, &config);

    let refused = produce(
        &sluice,
        "floor",
        "while low\n",
        &["-X", "message.send.max.retries=0"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Disk error"),
        "expected KAFKA_STORAGE_ERROR, got: {stderr}"
    );
    assert!(
        sluice
            .metric("sluice_broker_produce_refused_total{error=\"KafkaStorageError\"}")
            .unwrap()
            >= 1.0
    );
    // `sluice produce` says the broker did not take its record, and where to look.
    let line = tmp.path().join("line");
    std::fs::write(&line, "while low\n").unwrap();
    let out = sluice.client(&[
        "produce",
        "floor",
        "--file",
        line.to_str().unwrap(),
        "--ack-timeout",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("1 more were not taken within 3 s")
            && stderr.contains("sluice_broker_produce_refused_total"),
        "{stderr}"
    );
    // Consumer groups keep committing their offsets meanwhile.
    let commit = run(
        python().args(["-c", COMMIT_AND_READ_BACK, &sluice.kafka]),
        T,
    );
    assert_eq!(
        String::from_utf8_lossy(&commit.stdout).trim(),
        "7",
        "{}",
        String::from_utf8_lossy(&commit.stderr)
    );

    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let accepted = produce(&sluice, "floor", "after space returned\n", &[]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let consumed = sluice.kcat_consume("floor", &["-p", "0"]);
    assert_eq!(consumed, "after space returned\n");
    assert!(sluice
        .log_text()
        .contains("refusing produce until space returns"));
    assert!(sluice.log_text().contains("accepting produce"));
}

/// confluent-kafka commits offset 7 of `floor` partition 0 for a group and prints what the
/// broker then says the group committed.
const COMMIT_AND_READ_BACK: &str = r#"
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "floor-readers"})
c.commit(offsets=[TopicPartition("floor", 0, 7)], asynchronous=False)
print(c.committed([TopicPartition("floor", 0)], timeout=20)[0].offset)
c.close()
"#;

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = run_ok(
        Command::new("df").args(["-B1", "--output=avail"]).arg(path),
        T,
    );
    out.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// The floor holds between the periodic checks (here an hour apart): appends count against
/// half the room above it, so a producer is refused before the disk fills past the floor.
#[test]
fn a_fast_producer_is_refused_at_the_floor_between_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 64);
    let floor = 40u64 << 20;
    let config =
        format!("[broker]\nmin_free_bytes = {floor}\nretention_check_interval_ms = 3600000\n");
    let sluice = Sluice::broker(&disk.0, &config);
    let chunk: String = (0..1000)
        .map(|i| format!("{i:04} {}\n", "x".repeat(1019)))
        .collect();
    let (mut accepted, mut refused) = (0, None);
    for _ in 0..60 {
        let out = produce(
            &sluice,
            "flood",
            &chunk,
            &["-X", "message.send.max.retries=0"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && !stderr.contains("Disk error") {
            accepted += 1;
        } else {
            refused = Some(stderr);
            break;
        }
    }
    let refused = refused.expect("60 MB produced onto a 64 MB disk with a 40 MB floor");
    assert!(accepted > 0, "refused from the start: {refused}");
    assert!(refused.contains("Disk error"), "{refused}");
    let free = free_bytes(&disk.0);
    assert!(
        free + (2 << 20) >= floor,
        "{free} bytes free when produce was refused, floor {floor}"
    );
}
