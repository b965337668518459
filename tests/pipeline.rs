//! The whole pipeline, file to search, through crashes: the agent ships a growing file into
//! `sluice up`, the agent and the appliance are each killed with -9 and restarted, the appliance
//! is also stopped cleanly and restarted, and at the end every line is searchable exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Under the search API's 10 000 deepest hits, so that every hit can be listed.
const LINES: u64 = 9_000;

#[test]
fn every_line_is_searchable_exactly_once_through_kills_of_each_part() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::up(tmp.path(), "[indexer]\ncommit_interval_ms = 200\n");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    // An application writing 1 500 lines a second for six seconds, through all of what follows.
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).unwrap();
            for chunk in (0..LINES).collect::<Vec<_>>().chunks(150) {
                let text: String = chunk
                    .iter()
                    .map(|n| format!("line {n} GET /api/orders status=200\n"))
                    .collect();
                file.write_all(text.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let config = format!(
        "[agent]\nbrokers = \"{}\"\nhostname = \"node-1\"\n[agent.files]\ninclude = [\"{}\"]\n",
        sluice.kafka,
        logs.join("*.log").display()
    );
    let sent = |agent: &AgentProcess| agent.metric("sluice_agent_events_sent_total");
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until(
        "a sixth of the lines sent",
        Duration::from_secs(120),
        || sent(&agent) >= (LINES / 6) as f64,
    );
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until(
        "a third of the lines indexed",
        Duration::from_secs(120),
        || sluice.hits("*") >= LINES / 3,
    );
    sluice.kill9();
    std::thread::sleep(Duration::from_millis(300));
    sluice.restart();
    wait_until(
        "two thirds of the lines indexed",
        Duration::from_secs(120),
        || sluice.hits("*") >= 2 * LINES / 3,
    );
    assert!(
        sluice.stop_with("TERM").success(),
        "{}",
        sluice.log_tail(20)
    );
    sluice.restart();
    writer.join().unwrap();
    let indexed = sluice.wait_for_hits("*", LINES, Duration::from_secs(180));
    assert!(indexed >= LINES, "{indexed} of {LINES} lines searchable");
    // Whatever the crashes sent twice must not show twice.
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, _, message) in all_hits(&sluice, "*") {
        let n = message
            .strip_prefix("line ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a line of the file: {message}"));
        *copies.entry(n).or_default() += 1;
    }
    let repeated: Vec<_> = copies.iter().filter(|(_, &c)| c > 1).take(10).collect();
    assert!(
        repeated.is_empty(),
        "lines searchable more than once: {repeated:?}"
    );
    let missing: Vec<u64> = (0..LINES)
        .filter(|n| !copies.contains_key(n))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lines never searchable: {missing:?}");
    assert_eq!(sluice.hits("*"), LINES);
    eprintln!(
        "lines on the topic: {}, duplicates the indexer skipped since its restart: {:?}",
        logs_events(&sluice, 0).len(),
        sluice.metric("sluice_indexer_duplicates_skipped_total")
    );
    drop(agent);
}
