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
    let sluice = Sluice::broker(tmp.path(), "");
    let out = sluice.client(&["topics", "create", "shared", "-p", "4"]);
    assert!(out.status.success());
    let input: String = (0..400).map(|i| format!("{i}:record {i}\n")).collect();
    let out = run_with_input(
        kcat().args(["-P", "-b", &sluice.kafka, "-t", "shared", "-K", ":"]),
        input.as_bytes(),
        T,
    );
    assert!(out.status.success());

    let consumer = || {
        kcat()
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
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (consumer(), consumer());
    let outputs: Vec<String> = [a, b]
        .into_iter()
        .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
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
    let out = run_with_input(
        kcat().args(["-P", "-b", &sluice.kafka, "-t", "shared", "-K", ":"]),
        more.as_bytes(),
        T,
    );
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
