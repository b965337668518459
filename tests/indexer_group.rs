//! Indexer processes share the partitions through the consumer group: with two and then three of
//! them each owns some, a search through any one returns the union, and when one is killed its
//! partitions move to the others and nothing is missing or repeated.

mod common;

use std::time::Duration;

use common::*;

const CONFIG: &str = "[indexer]\ntopic_partitions = 6\nsession_timeout_ms = 6000\n";

fn produce(broker: &Sluice, from: usize, count: usize) {
    let lines: String = (from..from + count)
        .map(|i| format!("line-{i:05}\n"))
        .collect();
    let out = broker.kcat_produce("logs", &[], lines.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn owned(indexer: &Sluice) -> f64 {
    indexer
        .metric("sluice_indexer_partitions_owned")
        .unwrap_or(0.0)
}

/// Waits until the indexers own all six partitions between them, each at least one.
fn wait_for_balance(indexers: &[&Sluice]) -> Vec<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<f64> = indexers.iter().map(|i| owned(i)).collect();
        if counts.iter().sum::<f64>() == 6.0 && counts.iter().all(|&c| c >= 1.0) {
            return counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partitions owned {counts:?} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn assert_exactly(indexer: &Sluice, total: usize) {
    let seen = indexer.wait_for_hits("*", total as u64, Duration::from_secs(90));
    let hits = all_hits(indexer, "*");
    let mut messages: Vec<&str> = hits.iter().map(|h| h.2.as_str()).collect();
    messages.sort_unstable();
    messages.dedup();
    assert_eq!(
        (hits.len(), messages.len()),
        (total, total),
        "search saw {seen}; documents and distinct lines for {total} produced"
    );
}

#[test]
fn indexers_share_partitions_and_hand_them_over() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Sluice::broker(tmp.path(), "");
    let a = Sluice::indexer(&broker, "a", CONFIG);
    let mut b = Sluice::indexer(&broker, "b", CONFIG);
    let counts = wait_for_balance(&[&a, &b]);
    produce(&broker, 0, 3000);
    assert_exactly(&a, 3000);
    assert_eq!(
        b.hits("*"),
        3000,
        "B sees the union too (owned: {counts:?})"
    );

    let c = Sluice::indexer(&broker, "c", CONFIG);
    wait_for_balance(&[&a, &b, &c]);
    produce(&broker, 3000, 3000);
    assert_exactly(&c, 6000);

    b.kill9();
    wait_for_balance(&[&a, &c]);
    produce(&broker, 6000, 3000);
    assert_exactly(&a, 9000);
    assert_eq!(c.hits("*"), 9000);
}

/// A second indexer started with the same `instance_id` (a supervisor's replacement while the
/// first still runs) fences the first: the first ends with its error and a failure status,
/// rather than running on holding its partitions' indexes and saying it is healthy, and the
/// second indexes every partition.
#[test]
fn an_indexer_fenced_by_its_instance_id_stops_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Sluice::broker(tmp.path(), "");
    let config = format!("{CONFIG}instance_id = \"twin\"\n");
    let mut first = Sluice::indexer(&broker, "first", &config);
    wait_until(
        "the first owns every partition",
        Duration::from_secs(60),
        || owned(&first) == 6.0,
    );
    produce(&broker, 0, 600);
    assert_exactly(&first, 600);
    let second = Sluice::indexer(&broker, "second", &config);
    let mut status = None;
    wait_until("the first indexer to end", Duration::from_secs(60), || {
        status = first.exited();
        status.is_some()
    });
    assert!(!status.unwrap().success(), "{}", first.log_tail(20));
    assert!(
        first.log_text().contains("failed for good"),
        "{}",
        first.log_tail(20)
    );
    wait_until(
        "the second owns every partition",
        Duration::from_secs(60),
        || owned(&second) == 6.0,
    );
    produce(&broker, 600, 600);
    assert_exactly(&second, 1200);
}

/// Records the broker's retention deleted while the indexer was away are never indexed: the
/// indexer says which offsets were gone and counts them, rather than skipping them unnoticed.
#[test]
fn offsets_deleted_by_retention_while_the_indexer_was_away_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Sluice::broker(tmp.path(), "[broker]\nretention_check_interval_ms = 200\n");
    let mut indexer = Sluice::indexer(&broker, "away", CONFIG);
    wait_until(
        "the indexer owns every partition",
        Duration::from_secs(60),
        || owned(&indexer) == 6.0,
    );
    let lines = |from: usize, count: usize| -> String {
        (from..from + count)
            .map(|i| format!("line-{i:05} {}\n", "x".repeat(100)))
            .collect()
    };
    // Small batches: many segments, the oldest deleted.
    let produce_to_0 = |text: String| {
        let out = broker.kcat_produce(
            "logs",
            &["-p", "0", "-X", "batch.num.messages=10"],
            text.as_bytes(),
        );
        assert!(out.status.success());
    };
    produce_to_0(lines(0, 100));
    assert_exactly(&indexer, 100);
    assert!(indexer.stop_with("TERM").success());
    let altered = broker.client(&[
        "topics",
        "alter",
        "logs",
        "--config",
        "segment.bytes=4096",
        "--config",
        "retention.bytes=8192",
    ]);
    assert!(altered.status.success());
    produce_to_0(lines(100, 2000));
    wait_until("old segments deleted", Duration::from_secs(30), || {
        broker
            .metric("sluice_broker_segments_deleted_total{topic=\"logs\"}")
            .unwrap_or(0.0)
            >= 10.0
    });
    indexer.restart();
    wait_until("the gap counted", Duration::from_secs(60), || {
        indexer
            .metric("sluice_indexer_offsets_gone_total")
            .unwrap_or(0.0)
            > 0.0
    });
    let gone = indexer.metric("sluice_indexer_offsets_gone_total").unwrap();
    assert!(
        indexer.log_text().contains("gone from the log"),
        "{}",
        indexer.log_tail(20)
    );
    let indexed = indexer.wait_for_hits("*", 2100 - gone as u64, Duration::from_secs(60));
    assert_eq!(
        indexed + gone as u64,
        2100,
        "every offset indexed or counted gone"
    );
}

/// The broker away: the indexer says so once a minute for each of its clients, not at every
/// reconnect (40 lines in its first seconds, librdkafka's log and error and the consumer's
/// error for each failure).
#[test]
fn a_broker_away_is_said_once_not_at_every_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Sluice::broker(tmp.path(), "");
    let indexer = Sluice::indexer(&broker, "quiet", CONFIG);
    wait_until(
        "the indexer owns every partition",
        Duration::from_secs(60),
        || owned(&indexer) == 6.0,
    );
    broker.kill9();
    std::thread::sleep(Duration::from_secs(8));
    let log = indexer.log_text();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        log.contains("brokers are down"),
        "the outage is said:\n{log}"
    );
    assert!(
        loud.len() <= 6,
        "{} lines:\n{}",
        loud.len(),
        loud.join("\n")
    );
}
