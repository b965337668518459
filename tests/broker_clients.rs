//! The broker against the two Python clients people use, confluent-kafka (librdkafka) and
//! kafka-python (pure Python): topic creation, acks=all produce with keys, headers and
//! timestamps, and consumption from the beginning, the end, an offset and a timestamp
//! (tests/clients/roundtrip.py holds the checks).

mod common;

use std::time::Duration;

use common::*;

fn roundtrip(lib: &str, codecs: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    for codec in codecs {
        let topic = format!("{lib}-{codec}");
        let out = run(
            python().arg(client_script("roundtrip.py")).args([
                "--lib",
                lib,
                "--bootstrap",
                &sluice.kafka,
                "--topic",
                &topic,
                "--compression",
                codec,
            ]),
            Duration::from_secs(180),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("ok:"),
            "{lib} {codec}: exit {}\n{stdout}\n{}\nbroker log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            sluice.log_text()
        );
    }
}

#[test]
fn confluent_kafka_roundtrip_every_codec() {
    roundtrip("confluent", &["none", "gzip", "snappy", "lz4", "zstd"]);
}

#[test]
fn kafka_python_roundtrip_every_codec() {
    roundtrip("kafka-python", &["none", "gzip", "snappy", "lz4", "zstd"]);
}
