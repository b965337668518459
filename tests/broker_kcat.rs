//! The broker against kcat (librdkafka, as Debian ships it) and the `sluice` client commands:
//! every compression codec through both I/O backends, topic compression, and topic admin.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// (attributes codec, record count) of every batch in a partition's first segment, read while
/// the broker runs: after the batches only the zeros that pad a direct write to its block.
fn stored_batches(data_dir: &Path, topic: &str, partition: i32) -> Vec<(i16, i32)> {
    let log = data_dir
        .join("broker")
        .join(format!("{topic}-{partition}"))
        .join(format!("{:020}.log", 0));
    let bytes = std::fs::read(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let mut batches = Vec::new();
    let mut pos = 0;
    let padding = |pos: usize| bytes.len() - pos < 4096 && bytes[pos..].iter().all(|&b| b == 0);
    while pos + 61 <= bytes.len() && !padding(pos) {
        let length = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let attributes = i16::from_be_bytes(bytes[pos + 21..pos + 23].try_into().unwrap());
        let count = i32::from_be_bytes(bytes[pos + 57..pos + 61].try_into().unwrap());
        batches.push((attributes & 7, count));
        pos += 12 + length;
    }
    assert!(
        pos == bytes.len() || padding(pos),
        "the segment holds whole batches only"
    );
    batches
}

fn codec_id(name: &str) -> i16 {
    ["none", "gzip", "snappy", "lz4", "zstd"]
        .iter()
        .position(|c| *c == name)
        .unwrap() as i16
}

fn kcat_every_codec(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(
        tmp.path(),
        &format!("[broker]\nio_backend = \"{backend}\"\n"),
    );
    assert!(
        sluice
            .log_text()
            .contains(&format!("backend=\"{backend}\"")),
        "{}",
        sluice.log_text()
    );
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let input: String = (0..200)
            .map(|i| format!("key-{}\t{codec} record {i} {}\n", i % 7, "x".repeat(i % 50)))
            .collect();
        let out = sluice.kcat_produce(
            &topic,
            &[
                "-p",
                "0",
                "-z",
                codec,
                "-K",
                "\t",
                "-H",
                "source=kcat",
                "-H",
                &format!("codec={codec}"),
                "-X",
                "linger.ms=50",
            ],
            input.as_bytes(),
        );
        assert!(
            out.status.success(),
            "kcat -P {codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let consumed = sluice.kcat_consume(&topic, &["-p", "0", "-f", "%o\t%k\t%s\t%h\n"]);
        let lines: Vec<&str> = consumed.lines().collect();
        assert_eq!(lines.len(), 200, "{codec}: {consumed}");
        for (i, line) in lines.iter().enumerate() {
            let expected = format!(
                "{i}\tkey-{}\t{codec} record {i} {}\tsource=kcat,codec={codec}",
                i % 7,
                "x".repeat(i % 50)
            );
            assert_eq!(*line, expected, "{codec} record {i}");
        }
        // Batches stay on disk exactly as the producer compressed them.
        let batches = stored_batches(&sluice.data_dir, &topic, 0);
        assert!(!batches.is_empty());
        assert!(
            batches.iter().all(|(c, _)| *c == codec_id(codec)),
            "{codec}: stored codecs {batches:?}"
        );
        assert_eq!(batches.iter().map(|(_, n)| n).sum::<i32>(), 200);
    }
}

#[test]
fn kcat_every_codec_io_uring() {
    kcat_every_codec("io_uring");
}

#[test]
fn kcat_every_codec_plain() {
    kcat_every_codec("plain");
}

#[test]
fn topic_compression_compresses_what_arrives_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    for codec in ["zstd", "lz4"] {
        let topic = format!("packed-{codec}");
        sluice.create_topic(&topic, 1, &[&format!("compression.type={codec}")]);
        let log = std::fs::read_to_string("../shared/data/loghub/Apache_2k.log")
            .or_else(|_| {
                std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../shared/data/loghub/Apache_2k.log"
                ))
            })
            .expect("Loghub sample");
        let out = sluice.kcat_produce(
            &topic,
            &["-z", "none", "-X", "linger.ms=100"],
            log.as_bytes(),
        );
        assert!(out.status.success());
        let consumed = sluice.kcat_consume(&topic, &[]);
        let sent: Vec<&str> = log.lines().collect();
        let got: Vec<&str> = consumed.lines().collect();
        assert_eq!(got.len(), sent.len(), "{codec}: record count");
        if let Some(i) = (0..sent.len()).find(|&i| got[i] != sent[i]) {
            panic!("{codec}: record {i} differs: {:?} != {:?}", got[i], sent[i]);
        }
        // A batch compression would not shrink (a lone line, when kcat sends one before its
        // linger fills a batch) is kept as sent; every larger batch is compressed.
        let batches = stored_batches(&sluice.data_dir, &topic, 0);
        let packed: i32 = batches
            .iter()
            .filter(|(c, _)| *c == codec_id(codec))
            .map(|(_, n)| n)
            .sum();
        assert!(
            batches
                .iter()
                .all(|(c, n)| *c == codec_id(codec) || (*c == 0 && *n <= 2)),
            "{codec}: {batches:?}"
        );
        assert!(
            packed as usize >= sent.len() * 9 / 10,
            "{codec}: {batches:?}"
        );
        let on_disk = std::fs::metadata(
            sluice
                .data_dir
                .join(format!("broker/{topic}-0/{:020}.log", 0)),
        )
        .unwrap()
        .len();
        assert!(
            (on_disk as usize) < log.len() / 3,
            "{codec}: {on_disk} bytes on disk for {} bytes of log text",
            log.len()
        );
    }
}

#[test]
fn sluice_cli_topics_produce_consume() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let ok = |args: &[&str]| {
        let out = sluice.client(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(ok(&[
        "topics",
        "create",
        "orders",
        "-p",
        "4",
        "-c",
        "retention.ms=3600000"
    ])
    .contains("created"));
    let refused = sluice.client(&["topics", "create", "orders"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    let bad = sluice.client(&["topics", "create", "x", "-c", "retention.ms=soon"]);
    assert!(!bad.status.success());
    assert!(ok(&["topics", "create", "invoices.v1"]).contains("created"));
    let collides = sluice.client(&["topics", "create", "invoices_v1"]);
    let said = String::from_utf8_lossy(&collides.stderr);
    assert!(
        !collides.status.success() && said.contains("collides with the existing topic invoices.v1"),
        "{said}"
    );
    let topics = ok(&["topics", "list"]);
    assert!(topics.contains("orders\t4 partitions"), "{topics}");
    assert!(!topics.lines().any(|t| t.starts_with("x\t")), "{topics}");

    let input: String = (0..100)
        .map(|i| format!("k{}:order {i}\n", i % 5))
        .collect();
    let out = run_with_input(
        Command::new(SLUICE).args([
            "produce",
            "orders",
            "--brokers",
            &sluice.kafka,
            "--key-separator",
            ":",
            "--compression",
            "lz4",
        ]),
        input.as_bytes(),
        T,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let describe = ok(&["topics", "describe", "orders"]);
    assert!(
        describe.contains("retention.ms\t3600000\ttopic"),
        "{describe}"
    );
    let total: i64 = describe
        .lines()
        .filter_map(|l| l.split('\t').nth(3)?.parse::<i64>().ok())
        .sum();
    assert_eq!(total, 100, "{describe}");

    let all = ok(&["consume", "orders", "--json"]);
    let records: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 100);
    // One key stays on one partition, in order.
    for key in 0..5 {
        let values: Vec<i64> = records
            .iter()
            .filter(|r| r["key"] == format!("k{key}"))
            .map(|r| r["value"].as_str().unwrap()[6..].parse().unwrap())
            .collect();
        assert_eq!(values, (0..20).map(|i| i * 5 + key).collect::<Vec<_>>());
    }
    let p = records[0]["partition"].as_i64().unwrap().to_string();
    let from_two = ok(&["consume", "orders", "-p", &p, "--from", "2"]);
    assert_eq!(
        from_two.lines().count() as i64,
        records
            .iter()
            .filter(|r| r["partition"].as_i64().unwrap().to_string() == p)
            .count() as i64
            - 2
    );
    let future = ok(&["consume", "orders", "--timestamp", "2200-01-01T00:00:00Z"]);
    assert!(future.is_empty());
    let past = ok(&["consume", "orders", "--timestamp", "2000-01-01T00:00:00Z"]);
    assert_eq!(past.lines().count(), 100);
    assert!(ok(&["consume", "orders", "--max", "0"]).is_empty());
    assert!(ok(&["topics", "delete", "orders"]).contains("deleted"));
    assert!(!ok(&["topics", "list"]).contains("orders"));
    assert!(!sluice.data_dir.join("broker/orders-0").exists());
    let gone = sluice.client(&["topics", "describe", "orders"]);
    assert!(!gone.status.success());
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("topic orders not found"), "{stderr}");
}

#[test]
fn record_batch_over_max_message_bytes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("small", 1, &["max.message.bytes=2000"]);
    let big = format!("{}\n", "y".repeat(5000));
    let out = sluice.kcat_produce("small", &["-X", "message.max.bytes=100000"], big.as_bytes());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Message size too large"), "{stderr}");
    assert!(
        sluice
            .metric("sluice_broker_produce_refused_total{error=\"MessageTooLarge\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    // A record that fits still goes in.
    let out = sluice.kcat_produce("small", &[], b"fits\n");
    assert!(out.status.success());
    let consumed = sluice.kcat_consume("small", &[]);
    assert_eq!(consumed, "fits\n");
}

/// Beyond its first batch a fetch answer holds at most the consumer's `fetch.max.bytes`:
/// librdkafka drops an answer over its `receive.message.max.bytes` and asks again, for ever.
/// Three partitions hold a 600 KB batch each; a consumer allowing 1 MB an answer reads all three.
#[test]
fn a_fetch_answer_stays_within_its_max_bytes_after_the_first_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("wide", 3, &[]);
    let mut seed = Lcg(11);
    for partition in ["0", "1", "2"] {
        let mut line: Vec<u8> = (0..600_000)
            .map(|_| b'!' + seed.next_ms(0, 90) as u8)
            .collect();
        line.push(b'\n');
        let out = sluice.kcat_produce("wide", &["-p", partition], &line);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_ok(
        kcat()
            .args(["-C", "-b", &sluice.kafka, "-t", "wide", "-e", "-q"])
            .args(["-X", "fetch.max.bytes=1000000"])
            .args(["-X", "receive.message.max.bytes=1100000"])
            .args(["-f", "%p %S\n"]),
        Duration::from_secs(30),
    );
    let mut seen: Vec<&str> = out.lines().collect();
    seen.sort_unstable();
    assert_eq!(seen, ["0 600000", "1 600000", "2 600000"]);
}

/// acks=0 has no answer to carry a refusal: the broker closes the connection, as Kafka does,
/// so the producer learns of it (and refreshes its metadata). The next records go through.
#[test]
fn an_acks_0_record_refused_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("small", 1, &["max.message.bytes=2000"]);
    let mut input = format!("{}\n", "y".repeat(5000)).into_bytes();
    input.extend_from_slice(b"fits\n");
    let out = sluice.kcat_produce(
        "small",
        &[
            "-X",
            "acks=0",
            "-X",
            "message.max.bytes=100000",
            "-X",
            "linger.ms=0",
        ],
        &input,
    );
    assert!(out.status.success(), "{out:?}");
    wait_until("the refusal counted", T, || {
        sluice
            .metric(r#"sluice_broker_protocol_errors_total{kind="acks0_refused"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(sluice.log_text().contains("acks=0 produce refused"));
    let out = sluice.kcat_produce("small", &["-X", "acks=0"], b"after\n");
    assert!(out.status.success(), "{out:?}");
    wait_until("the next record stored", T, || {
        sluice.kcat_consume("small", &[]).contains("after\n")
    });
}

/// `sluice produce` sends lines as bytes (one that is not UTF-8 too), and a line it cannot send
/// (over librdkafka's 1 MB message limit) stops it with that line's number and a failure,
/// after the lines before it were delivered.
#[test]
fn sluice_produce_sends_bytes_and_names_the_line_it_stops_at() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("raw", 1, &[]);
    let input = tmp.path().join("input");
    let mut text = b"first\ncaf\xe9 latin-1\r\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 2_000_000));
    text.extend(b"\nnever sent\n");
    std::fs::write(&input, &text).unwrap();
    let out = sluice.client(&["produce", "raw", "--file", input.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("input line 3"), "{stderr}");
    let consumed = run(
        kcat().args(["-C", "-b", &sluice.kafka, "-t", "raw", "-e", "-q"]),
        T,
    );
    assert_eq!(consumed.stdout, b"first\ncaf\xe9 latin-1\n");
}

/// `sluice consume` gives bytes back as they were: as they are in plain output (kcat's way),
/// and as base64 in JSON when they are not UTF-8 (they were replaced by U+FFFD).
#[test]
fn consume_gives_bytes_that_are_not_text_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let value = b"\xff\xfe\x01bin";
    let mut line = value.to_vec();
    line.push(b'\n');
    assert!(sluice
        .kcat_produce("bin", &["-p", "0"], &line)
        .status
        .success());
    let plain = sluice.client(&["consume", "bin"]);
    assert!(plain.status.success());
    assert_eq!(plain.stdout, line);
    let json = sluice.client(&["consume", "bin", "--json"]);
    let record: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(record["value"]["base64"], "//4BYmlu");
}

/// `sluice consume --follow` waits for a topic that is not made yet (it said "not found" and
/// exited), and prints its records once a producer makes it.
#[test]
fn consume_follow_waits_for_a_topic_to_be_made() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let mut follower = Command::new(SLUICE)
        .args(["consume", "later", "--follow"])
        .env("SLUICE_BROKERS", &sluice.kafka)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(follower.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.contains("waiting for topic later"), "{said}");
    assert!(sluice
        .kcat_produce("later", &[], b"made at last\n")
        .status
        .success());
    let (line, read) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = line.send(first);
    });
    let first = read.recv_timeout(Duration::from_secs(30));
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert_eq!(first.unwrap(), "made at last\n");
}
