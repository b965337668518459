//! kill -9 of the broker at random points while a real producer (confluent-kafka, acks=all,
//! no retries) writes: after each restart every acknowledged record is in the log exactly once,
//! at the offset it was acknowledged with, in order, and nothing corrupt is served. Both I/O
//! backends append with O_DIRECT (the default); one more run writes through the page cache.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const KILLS: usize = 20;

fn kill9_while_producing(backend: &str, direct_io: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("[broker]\nio_backend = \"{backend}\"\ndirect_io = {direct_io}\n");
    let mut sluice = Sluice::broker(tmp.path(), &config);
    let seed = crash_seed();
    eprintln!("crash test ({backend}, direct_io {direct_io}) seed {seed}");
    let mut rng = Lcg(seed);
    let acked = tmp.path().join("acked.txt");
    let out = run(
        Command::new(SLUICE).args([
            "topics",
            "create",
            "crash",
            "-p",
            "1",
            "--brokers",
            &sluice.kafka,
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let producer_log = std::fs::File::create(tmp.path().join("producer.log")).unwrap();
    let mut producer = Background::spawn(
        python()
            .arg(client_script("crash_producer.py"))
            .args(["--bootstrap", &sluice.kafka, "--topic", "crash", "--acked"])
            .arg(&acked)
            .args(["--rate", "20000"])
            .stdout(Stdio::from(producer_log.try_clone().unwrap()))
            .stderr(Stdio::from(producer_log)),
    );
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.next_ms(150, 900)));
        sluice.kill9();
        std::thread::sleep(Duration::from_millis(rng.next_ms(0, 300)));
        sluice.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    signal_pid(producer.id(), "TERM");
    let status = producer
        .finish("crash_producer.py", Duration::from_secs(120))
        .status;
    let producer_out = std::fs::read_to_string(tmp.path().join("producer.log")).unwrap();
    assert!(status.success(), "producer: {producer_out}");
    let acked_lines = std::fs::read_to_string(&acked).unwrap().lines().count();
    assert!(
        acked_lines > 1000,
        "too few records acknowledged to mean anything: {producer_out}"
    );

    let verdict = run(
        python()
            .arg(client_script("verify_log.py"))
            .args(["--bootstrap", &sluice.kafka, "--topic", "crash", "--acked"])
            .arg(&acked),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&verdict.stdout);
    assert!(
        verdict.status.success(),
        "verify_log: {stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&verdict.stderr),
        sluice.log_text()
    );
    assert!(stdout.contains("ok:"), "{stdout}");
    eprintln!("{backend}: {acked_lines} acknowledged records verified after {KILLS} kill -9s");
    // The counter exists from the topic's opening: 0 is a count, not a missing series.
    assert_eq!(
        sluice.metric("sluice_broker_corrupt_batches_total{topic=\"crash\"}"),
        Some(0.0)
    );
}

#[test]
fn kill9_loses_no_acknowledged_record_io_uring() {
    kill9_while_producing("io_uring", true);
}

#[test]
fn kill9_loses_no_acknowledged_record_through_the_page_cache() {
    kill9_while_producing("io_uring", false);
}

#[test]
fn kill9_loses_no_acknowledged_record_plain() {
    kill9_while_producing("plain", true);
}
