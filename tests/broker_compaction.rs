//! Compaction of a keyed topic (cleanup.policy=compact): superseded values go, the newest value
//! of every key stays, tombstoned keys vanish after delete.retention.ms, and consumers read the
//! compacted log from the beginning without trouble.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

fn produce(sluice: &Sluice, lines: &str, null_values: bool) {
    let mut cmd = kcat();
    cmd.args(["-P", "-b", &sluice.kafka, "-t", "kv", "-p", "0", "-K", ":"])
        .args(["-X", "batch.num.messages=5", "-X", "linger.ms=0"]);
    if null_values {
        cmd.arg("-Z");
    }
    let out = run_with_input(&mut cmd, lines.as_bytes(), T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (offset, key, value or None for a tombstone) of every record, from the beginning.
fn read_all(sluice: &Sluice) -> Vec<(i64, String, Option<String>)> {
    let out = sluice.kcat_consume("kv", &["-p", "0", "-f", "%o %k %S %s\n"]);
    out.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let offset = f.next().unwrap().parse().unwrap();
            let key = f.next().unwrap().to_owned();
            let len: i64 = f.next().unwrap().parse().unwrap();
            let value = (len >= 0).then(|| f.next().unwrap_or("").to_owned());
            (offset, key, value)
        })
        .collect()
}

#[test]
fn compaction_keeps_the_newest_value_of_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nretention_check_interval_ms = 200\n");
    sluice.create_topic(
        "kv",
        1,
        &[
            "cleanup.policy=compact",
            "segment.bytes=1024",
            "delete.retention.ms=2000",
        ],
    );
    let mut updates = String::new();
    for round in 0..30 {
        for key in 0..10 {
            updates.push_str(&format!("k{key}:value {round} of k{key}\n"));
        }
    }
    produce(&sluice, &updates, false);
    produce(&sluice, "k0:\nk1:\nk2:\n", true);
    let filler: String = (0..40).map(|i| format!("filler:{i}\n")).collect();
    produce(&sluice, &filler, false);

    // Superseded records go at the first compaction, tombstoned keys once the tombstones expire.
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = read_all(&sluice);
        let tombstoned_left = records
            .iter()
            .any(|(_, k, _)| ["k0", "k1", "k2"].contains(&k.as_str()));
        if !tombstoned_left && records.len() < 60 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted in time: {} records left",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut newest: HashMap<&str, &Option<String>> = HashMap::new();
    let mut last_offset = -1;
    for (offset, key, value) in &records {
        assert!(*offset > last_offset, "offsets stay increasing");
        last_offset = *offset;
        newest.insert(key, value);
    }
    for key in 3..10 {
        let k = format!("k{key}");
        assert_eq!(
            newest.get(k.as_str()).cloned().cloned().flatten(),
            Some(format!("value 29 of k{key}")),
            "the newest value of {k} survives"
        );
    }
    assert_eq!(
        newest.get("filler").cloned().cloned().flatten(),
        Some("39".to_owned())
    );
    // Compaction keeps offsets: the last of the 343 records written is still at offset 342.
    assert_eq!(records.last().map(|r| r.0), Some(342));
    assert!(
        sluice
            .metric("sluice_broker_records_compacted_total{topic=\"kv\"}")
            .unwrap()
            >= 280.0
    );
}
