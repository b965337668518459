//! Real logs in, counted hits out: every Loghub sample goes through the broker with kcat and the
//! search API's hit counts for levels, components, phrases and EventId words must equal what the
//! structured CSVs say (tests/clients/loghub_search.py holds the queries and the CSV reading).

mod common;

use std::time::Duration;

use common::*;

fn loghub_search(sluice: &Sluice, extra: &[&str]) -> String {
    let dir = loghub_dir();
    run_ok(
        python()
            .arg(client_script("loghub_search.py"))
            .args([&sluice.kafka, &sluice.http, dir.to_str().unwrap()])
            .args(extra),
        Duration::from_secs(240),
    )
}

#[test]
fn loghub_events_hit_counts_equal_the_structured_csvs() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let report = loghub_search(&sluice, &[]);
    assert!(report.contains("match the CSVs"), "{report}");
    assert_eq!(
        sluice.metric("sluice_indexer_documents_indexed_total"),
        Some(16000.0)
    );
}

#[test]
fn plain_text_lines_are_searchable_too() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let report = loghub_search(&sluice, &["Apache"]);
    assert!(report.contains("match the CSV"), "{report}");
}
