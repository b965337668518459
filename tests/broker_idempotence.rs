//! An idempotent producer (confluent-kafka, enable.idempotence=true) keeps sending while the
//! broker is killed with SIGKILL and restarted several times: afterwards every record is in the
//! log exactly once, in order, with no gaps. Retried batches the broker already had are
//! recognised by their sequence numbers (state rebuilt from the log at each start).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const COUNT: &str = "60000";

#[test]
fn idempotent_producer_survives_kill9_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("exactly-once", 1, &[]);
    let log = std::fs::File::create(tmp.path().join("producer.log")).unwrap();
    let kafka = sluice.kafka.clone();
    let script = |mode: &str| {
        let mut cmd = python();
        cmd.arg(client_script("idempotent_producer.py")).args([
            mode,
            "--bootstrap",
            &kafka,
            "--topic",
            "exactly-once",
            "--count",
            COUNT,
        ]);
        cmd
    };
    let mut producer = Background::spawn(
        script("produce")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log)),
    );
    for pause in [700, 400, 900, 300, 600] {
        std::thread::sleep(Duration::from_millis(pause));
        assert!(
            producer.is_running(),
            "the producer must still be sending when the broker dies"
        );
        sluice.kill9();
        std::thread::sleep(Duration::from_millis(200));
        sluice.restart();
    }
    let status = producer
        .finish("the idempotent producer", Duration::from_secs(180))
        .status;
    let producer_log = std::fs::read_to_string(tmp.path().join("producer.log")).unwrap();
    assert!(
        status.success(),
        "producer: {producer_log}\nbroker log:\n{}",
        sluice.log_text()
    );
    let verdict = run(&mut script("verify"), Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&verdict.stdout);
    assert!(
        verdict.status.success() && stdout.contains("ok:"),
        "{stdout}\nbroker log:\n{}",
        sluice.log_text()
    );
}
