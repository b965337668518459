//! Exactly once through kill -9: the indexer is killed at random points at least ten times while a
//! producer streams numbered records; at the end every record is in the index exactly once. The
//! offset lives in each Tantivy commit, so nothing the index holds is taken twice and nothing it
//! lacks is skipped.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const RECORDS: usize = 6000;
const KILLS: usize = 10;

#[test]
fn kill_9_of_the_indexer_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Sluice::broker(tmp.path(), "");
    // Static membership: a restarted indexer takes its partitions straight back. Frequent commits
    // give the kills many commits to land in.
    let mut indexer = Sluice::indexer(
        &broker,
        "indexer",
        "[indexer]\ninstance_id = \"indexer-0\"\ncommit_interval_ms = 200\n",
    );
    let seed = crash_seed();
    eprintln!("indexer crash test seed {seed}");
    let mut random = Lcg(seed);

    let mut producer = Background::spawn(
        python()
            .arg(client_script("stream_numbered.py"))
            .args([&broker.kafka, "logs", &RECORDS.to_string(), "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let started = Instant::now();
    let mut kills = 0;
    while kills < KILLS || producer.is_running() {
        std::thread::sleep(Duration::from_millis(random.next_ms(300, 1800)));
        indexer.kill9();
        kills += 1;
        indexer.restart();
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the producer did not finish"
        );
    }
    let out = producer.finish("stream_numbered.py", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_for_port(&indexer.http, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}; indexer log:\n{}", indexer.log_tail(30)));
    let seen = indexer.wait_for_hits("*", RECORDS as u64, Duration::from_secs(60));
    // Give a late duplicate time to show up before counting.
    std::thread::sleep(Duration::from_secs(2));
    let hits = all_hits(&indexer, "*");
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, message) in &hits {
        *copies.entry(message.clone()).or_default() += 1;
    }
    let repeated: Vec<_> = copies.iter().filter(|(_, &n)| n > 1).take(5).collect();
    let missing: Vec<String> = (0..RECORDS)
        .map(|i| format!("record-{i:06}"))
        .filter(|m| !copies.contains_key(m))
        .take(5)
        .collect();
    assert!(
        hits.len() == RECORDS && repeated.is_empty() && missing.is_empty(),
        "after {kills} kills (seed {seed}): {} documents for {RECORDS} records (search saw {seen}); \
         repeated {repeated:?}, missing {missing:?}",
        hits.len()
    );
}

/// The broker's log cut short under the index: records the indexer read are then lost by the
/// broker (here the segment's last batch torn off while the appliance was down, as a power loss
/// leaves a tail that was never synced). The broker's recovery cuts the torn batch, the
/// consumer's offset is past the log's end, and the partition comes again from its start: what
/// the index holds is not indexed twice, and what is written after the cut is indexed.
#[test]
fn a_log_cut_short_by_recovery_is_not_indexed_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::up(tmp.path(), "[indexer]\ncommit_interval_ms = 200\n");
    let produce = |sluice: &Sluice, tag: &str, count: usize| {
        let lines: String = (0..count).map(|n| format!("{tag} n{n}\n")).collect();
        let out = sluice.kcat_produce("logs", &["-p", "0"], lines.as_bytes());
        assert!(out.status.success());
    };
    produce(&sluice, "kept", 1000);
    produce(&sluice, "torn", 10);
    assert_eq!(
        sluice.wait_for_hits("kept OR torn", 1010, Duration::from_secs(60)),
        1010
    );
    sluice.kill9();
    let segment = sluice
        .data_dir
        .join("broker/logs-0/00000000000000000000.log");
    let length = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(length - 20)
        .unwrap();
    sluice.restart();
    // Fewer than were cut: the log's end stays below the consumer's offset, which is how the
    // consumer sees the log was cut. (Had the log grown past it again first, the records in
    // between would be skipped: nothing in the offsets tells.)
    produce(&sluice, "after", 5);
    assert_eq!(sluice.wait_for_hits("after", 5, Duration::from_secs(60)), 5);
    // Records reread since the restart are skipped by then, or none of "after" would be in.
    assert_eq!(sluice.hits("kept"), 1000, "{}", sluice.log_tail(20));
    assert_eq!(sluice.hits("torn"), 10);
}
