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
