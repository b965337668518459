//! The search API as its users meet it, against `sluice up`: query syntax and its errors, time
//! ranges, capped limits, histograms, field summaries, the live tail, `sluice search`, and odd
//! records counted but indexed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn events() -> String {
    let mut lines = String::new();
    for i in 0..30 {
        let level = if i % 3 == 0 { "error" } else { "info" };
        let host = format!("web-{}", i % 2);
        lines.push_str(&format!(
            r#"{{"id":"ev-{i}","timestamp":"2026-01-01T00:{i:02}:00Z","level":"{level}","host":"{host}","message":"request {i} served","fields":{{"user":{{"id":{i}}}}}}}"#
        ));
        lines.push('\n');
    }
    lines
}

fn up_with_events() -> (tempfile::TempDir, Sluice) {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let out = sluice.kcat_produce("logs", &[], events().as_bytes());
    assert!(out.status.success());
    assert_eq!(
        sluice.wait_for_hits("*", 30, Duration::from_secs(30)),
        30,
        "{}",
        sluice.log_tail(20)
    );
    (tmp, sluice)
}

#[test]
fn queries_ranges_and_limits() {
    let (_tmp, sluice) = up_with_events();
    assert_eq!(sluice.hits("level:error"), 10);
    assert_eq!(sluice.hits("level:ERROR AND host:web-0"), 5);
    assert_eq!(sluice.hits("level:error OR host:web-1"), 20);
    assert_eq!(sluice.hits("level:error AND NOT host:web-0"), 5);
    assert_eq!(sluice.hits("NOT level:error"), 20, "Lucene's pure negation");
    assert_eq!(sluice.hits("level:error -host:web-0"), 5);
    assert_eq!(sluice.hits("\"request 7 served\""), 1);
    assert_eq!(sluice.hits("fields.user.id:12"), 1);
    assert_eq!(sluice.hits("fields.user.id:[10 TO 19]"), 10);
    // A decimal bound beside a whole one (Tantivy panicked on the two kinds).
    assert_eq!(sluice.hits("fields.user.id:[9.5 TO 19]"), 10);
    assert_eq!(sluice.hits("fields.user.id:[0 TO 1.5]"), 2);
    assert_eq!(sluice.hits("fields.user.id:[0.5 TO 2.0]"), 2);
    assert_eq!(sluice.hits("fields.user.id:{0 TO 2.5}"), 2);
    // Bounds of two kinds that no rewriting makes one: refused, not a panic.
    for q in [
        "fields.user.id:[0 TO abc]",
        "fields.user.id:[0 TO inf]",
        "fields.user.id:[0.5 TO 4503599627370497]",
        "fields.user.id:[5 TO 10000000000000000000]",
    ] {
        let (status, body) = sluice.api("/api/v1/search", &[("q", q)]);
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.to_string().contains("mixes kinds"), "{q}: {body}");
    }
    assert_eq!(sluice.hits("serv*"), 30);
    assert_eq!(sluice.hits("s?rved AND host:web-*"), 30, "wildcards");
    assert_eq!(sluice.hits("host:WEB-1*"), 15);

    let (status, body) = sluice.api(
        "/api/v1/search",
        &[
            ("q", "*"),
            ("start", "2026-01-01T00:10:00Z"),
            ("end", "2026-01-01T00:20:00Z"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 10);
    let hits = body["hits"].as_array().unwrap();
    assert_eq!(hits[0]["event"]["id"], "ev-19", "newest first");
    assert_eq!(hits[9]["timestamp"], "2026-01-01T00:10:00.000Z");
    assert!(body["elapsed_ms"].as_f64().unwrap() >= 0.0);

    // Relative times: everything here is from January, so "the last hour" is empty.
    assert_eq!(
        sluice.api("/api/v1/search", &[("start", "-1h")]).1["total"],
        0
    );
    assert_eq!(
        sluice.api("/api/v1/search", &[("end", "now")]).1["total"],
        30
    );

    let (status, body) = sluice.api("/api/v1/search", &[("limit", "100000")]);
    assert_eq!(status, 200, "a limit over the cap is capped, not refused");
    assert_eq!(body["limit"], 1000);
    assert_eq!(body["hits"].as_array().unwrap().len(), 30);
    let (_, page) = sluice.api("/api/v1/search", &[("limit", "5"), ("offset", "25")]);
    assert_eq!(page["hits"].as_array().unwrap().len(), 5);
    assert_eq!(page["hits"][4]["event"]["id"], "ev-0");
}

#[test]
fn bad_requests_say_why() {
    let (_tmp, sluice) = up_with_events();
    let (status, body) = sluice.api("/api/v1/search", &[("q", "level:(error")]);
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("position"), "{error}");
    let (status, body) = sluice.api("/api/v1/search", &[("q", "nosuchfield:x")]);
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("does not exist"), "{error}");
    let (status, body) = sluice.api("/api/v1/search", &[("start", "yesterday")]);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("start:"));
    let (status, _) = sluice.api("/api/v1/search", &[("since", "1h")]);
    assert_eq!(status, 400, "unknown parameters are refused, not ignored");
    let (status, _) = sluice.api("/api/v1/search", &[("offset", "20000")]);
    assert_eq!(status, 400);
    let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
    let (status, body) = sluice.api("/api/v1/search", &[("q", &deep)]);
    assert_eq!(status, 400, "deep nesting is refused, not a stack overflow");
    assert!(body["error"].as_str().unwrap().contains("nest"));
    let (status, body) = sluice.api("/api/v1/search", &[("end", "9999-12-31T00:00:00Z")]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("between the years"),
        "{body}"
    );
    let (status, body) = sluice.api("/api/v1/search", &[("limit", "-1")]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit: expected a whole number"),
        "{body}"
    );
    let (status, body) = sluice.api("/api/v1/search", &[("q", "message:user_*")]);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("one word"));
    let (status, body) = sluice.api("/api/v1/histogram", &[("interval", "1ms")]);
    assert_eq!(status, 400, "{body}");
    assert!(
        sluice
            .metric(r#"sluice_search_requests_total{endpoint="search",outcome="bad_request"}"#)
            .unwrap()
            >= 5.0
    );
}

#[test]
fn histogram_and_fields() {
    let (_tmp, sluice) = up_with_events();
    let (status, body) = sluice.api(
        "/api/v1/histogram",
        &[
            ("q", "level:error"),
            ("start", "2026-01-01T00:00:00Z"),
            ("end", "2026-01-01T01:00:00Z"),
            ("interval", "10m"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let counts: Vec<u64> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    // Errors at minutes 0, 3, ..., 27: four in the first ten minutes, three in each next ten.
    assert_eq!(counts, vec![4, 3, 3, 0, 0, 0]);
    assert_eq!(body["buckets"][1]["start"], "2026-01-01T00:10:00.000Z");
    // A start and no end runs to now, the empty days after the data included.
    let (status, body) = sluice.api(
        "/api/v1/histogram",
        &[
            ("q", "level:error"),
            ("start", "2026-01-01T00:00:00Z"),
            ("interval", "1d"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let last = body["buckets"].as_array().unwrap().last().unwrap()["start_ms"]
        .as_i64()
        .unwrap();
    assert!(
        now_ms - last <= 86_400_000,
        "last bucket at {last}, now {now_ms}"
    );

    let (status, body) = sluice.api("/api/v1/fields", &[("q", "host:web-1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 15);
    let fields = body["fields"].as_array().unwrap();
    let level = fields.iter().find(|f| f["name"] == "level").unwrap();
    assert_eq!(level["values"][0]["value"], "info");
    assert_eq!(level["values"][0]["count"], 10);
    assert_eq!(level["values"][1]["count"], 5);
    assert!(fields.iter().any(|f| f["name"] == "fields.user.id"));
    assert_eq!(body["complete"], true);

    // One event with 3000 keys: the fields every event has are still answered (the list was
    // cut alphabetically across the whole index, and fields.user.id fell out of every answer).
    let keys: Vec<String> = (0..3000).map(|k| format!(r#""k{k:04}":{k}"#)).collect();
    let wide = format!(
        r#"{{"id":"wide","timestamp":"2026-01-01T00:45:00Z","host":"batch-1","message":"wide","fields":{{{}}}}}"#,
        keys.join(",")
    );
    let out = sluice.kcat_produce("logs", &[], format!("{wide}\n").as_bytes());
    assert!(out.status.success());
    assert_eq!(sluice.wait_for_hits("*", 31, Duration::from_secs(30)), 31);
    let (status, body) = sluice.api("/api/v1/fields", &[("q", "host:web-1")]);
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"fields.user.id"), "{names:?}");
    assert!(body["known"].as_u64().unwrap() > 3000, "{body}");
    let (status, body) = sluice.api("/api/v1/fields", &[("q", "host:batch-1"), ("limit", "100")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fields"].as_array().unwrap().len(), 100);
    assert_eq!(body["complete"], false, "more are there: {body}");
    let (status, body) = sluice.api("/api/v1/fields", &[("limit", "0")]);
    assert_eq!(status, 400);
    assert!(body.to_string().contains("limit"), "{body}");
}

#[test]
fn tail_streams_new_matches() {
    let (_tmp, mut sluice) = up_with_events();
    let mut stream = TcpStream::connect(&sluice.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/tail?q=level:error HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains("200"), "{status}");
    // The ten old errors are not replayed; the new one arrives, the non-matching one does not.
    std::thread::sleep(Duration::from_millis(500));
    let new = "{\"level\":\"info\",\"message\":\"quiet\"}\n{\"level\":\"error\",\"message\":\"disk at 91%\"}\n";
    assert!(sluice
        .kcat_produce("logs", &["-p", "0"], new.as_bytes())
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut first = None;
    while first.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(json) = line.strip_prefix("data: ") {
            first = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
        }
    }
    let first = first.expect("a tail event within 15 s");
    assert_eq!(first["event"]["message"], "disk at 91%");
    // An open tail does not hold the process up when it stops.
    assert!(sluice.stop_with("TERM").success());
}

#[test]
fn sluice_search_prints_for_people_and_json() {
    let (_tmp, sluice) = up_with_events();
    let out = Command::new(SLUICE)
        .args([
            "search",
            "level:error AND host:web-1",
            "--server",
            &sluice.http,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(
        lines[0], "2026-01-01T00:03:00.000Z error web-1 request 3 served",
        "oldest first, so the newest is beside the prompt"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 of 5 hits"));
    let out = Command::new(SLUICE)
        .args(["search", "*", "-n", "5000", "--server", &sluice.http])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("-n 5000 is more than the server gives: 1000"),
        "{stderr}"
    );

    let out = Command::new(SLUICE)
        .args(["search", "level:error", "--json", "-n", "2"])
        .env("SLUICE_HTTP", &sluice.http)
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["total"], 10);
    assert_eq!(body["hits"].as_array().unwrap().len(), 2);

    let out = Command::new(SLUICE)
        .args(["search", "level:(", "--server", &sluice.http])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("position"),
        "{stderr}"
    );
}

#[test]
fn odd_records_are_counted_and_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "[indexer]\nmax_document_bytes = 1000\n");
    let mut input = Vec::new();
    input.extend_from_slice(b"plain line from kcat\n");
    input.extend_from_slice(b"{\"message\": \"cut short\n");
    input.extend_from_slice(b"bytes \xff\xfe not utf-8\n");
    input.extend_from_slice(b"{\"timestamp\":\"last tuesday\",\"message\":\"when?\"}\n");
    input.extend_from_slice(format!("{}\n", "long ".repeat(1000)).as_bytes());
    input.extend_from_slice(b"{\"message\":\"after the odd ones\"}\n");
    assert!(sluice
        .kcat_produce("logs", &["-p", "1"], &input)
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("*", 6, Duration::from_secs(30)), 6);
    assert_eq!(sluice.hits("\"after the odd ones\""), 1);
    assert_eq!(sluice.hits("\"plain line from kcat\""), 1);
    assert_eq!(sluice.hits("\"cut short\""), 1);
    assert_eq!(sluice.hits("utf"), 1);
    assert_eq!(sluice.hits("when"), 1);
    for reason in ["invalid_json", "invalid_utf8", "bad_timestamp", "oversize"] {
        let series = format!(r#"sluice_indexer_malformed_records_total{{reason="{reason}"}}"#);
        assert_eq!(sluice.metric(&series), Some(1.0), "{series}");
    }
}

#[test]
fn retention_deletes_whole_old_buckets() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(
        tmp.path(),
        "[indexer]\nbucket_ms = 1000\nretention_ms = 3000\n",
    );
    assert!(sluice
        .kcat_produce("logs", &["-p", "0"], b"soon gone\n")
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("gone", 1, Duration::from_secs(30)), 1);
    // The retention pass runs every 5 s; the bucket ends 1 s after the record and is deleted once
    // its end is 3 s old.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sluice.hits("gone") > 0 {
        assert!(
            Instant::now() < deadline,
            "the old bucket was never deleted"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        sluice
            .metric("sluice_indexer_buckets_deleted_total")
            .unwrap()
            >= 1.0
    );
    // The partition keeps its place: a new record is indexed, the old one is not re-read.
    assert!(sluice
        .kcat_produce("logs", &["-p", "0"], b"fresh line\n")
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("fresh", 1, Duration::from_secs(30)), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sluice.hits("gone"), 0);
}

/// The logs topic deleted and made again under a running appliance: its offsets begin again
/// below what the indexes hold, and the new records are indexed (not skipped as replays).
#[test]
fn a_topic_made_again_is_indexed_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let before: String = (0..100).map(|i| format!("before-recreate {i}\n")).collect();
    let out = sluice.kcat_produce("logs", &["-p", "0"], before.as_bytes());
    assert!(out.status.success());
    assert_eq!(
        sluice.wait_for_hits("before-recreate", 100, Duration::from_secs(30)),
        100
    );
    let partitions = sluice.client(&["topics", "describe", "logs"]);
    let count = String::from_utf8_lossy(&partitions.stdout)
        .lines()
        .filter(|l| {
            l.split('\t')
                .next()
                .is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .count()
        .to_string();
    for args in [
        &["topics", "delete", "logs"][..],
        &["topics", "create", "logs", "-p", &count],
    ] {
        let out = sluice.client(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let after: String = (0..10).map(|i| format!("after-recreate {i}\n")).collect();
    let out = sluice.kcat_produce("logs", &["-p", "0"], after.as_bytes());
    assert!(out.status.success());
    assert_eq!(
        sluice.wait_for_hits("after-recreate", 10, Duration::from_secs(60)),
        10,
        "{}",
        sluice.log_tail(20)
    );
    assert!(sluice.metric("sluice_indexer_log_restarts_total").unwrap() >= 1.0);
}

/// Partitions added to the logs topic under a running appliance are indexed within seconds
/// (librdkafka looks at the topic again every 5 minutes by default).
#[test]
fn partitions_added_under_the_indexer_are_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "[indexer]\ntopic_partitions = 2\n");
    let out = sluice.kcat_produce("logs", &["-p", "1"], b"before-growth\n");
    assert!(out.status.success());
    assert_eq!(
        sluice.wait_for_hits("before-growth", 1, Duration::from_secs(30)),
        1
    );
    let grown = sluice.client(&["topics", "alter", "logs", "--partitions", "4"]);
    assert!(grown.status.success(), "{grown:?}");
    let out = sluice.kcat_produce("logs", &["-p", "3"], b"after-growth\n");
    assert!(out.status.success());
    assert_eq!(
        sluice.wait_for_hits("after-growth", 1, Duration::from_secs(40)),
        1,
        "{}",
        sluice.log_tail(20)
    );
}

/// Events a few milliseconds apart: the automatic interval is 1 ms, and every bucket starts
/// where it should, once (starts were duplicated and the interval said 0).
#[test]
fn a_histogram_of_a_few_milliseconds_has_one_bucket_per_millisecond() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let events: String = [0, 1, 3, 4]
        .iter()
        .map(|ms| {
            format!(
                "{{\"id\":\"ms-{ms}\",\"timestamp\":\"2026-01-01T10:00:00.00{ms}Z\",\"message\":\"m\"}}\n"
            )
        })
        .collect();
    assert!(sluice
        .kcat_produce("logs", &["-p", "0"], events.as_bytes())
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("*", 4, Duration::from_secs(30)), 4);
    let (status, body) = sluice.api("/api/v1/histogram", &[("q", "*")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interval_ms"], 1, "{body}");
    let first = body["buckets"][0]["start_ms"].as_i64().unwrap();
    assert_eq!(body["buckets"][0]["start"], "2026-01-01T10:00:00.000Z");
    let buckets: Vec<(i64, u64)> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start_ms"].as_i64().unwrap() - first,
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [(0, 1), (1, 1), (2, 0), (3, 1), (4, 1)];
    assert_eq!(buckets, expected, "{body}");
}

/// An answer is bounded in bytes as well as hits: twenty events of 900 KB come in pages of
/// fewer than the limit, marked cut, and paging on from the hits given reaches them all once.
#[test]
fn a_search_answer_is_bounded_in_bytes_and_pages_on() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let filler = "x".repeat(900_000);
    let events: String = (0..20)
        .map(|n| format!("{{\"id\":\"big-{n}\",\"message\":\"big {n} {filler}\"}}\n"))
        .collect();
    assert!(sluice
        .kcat_produce("logs", &["-p", "0"], events.as_bytes())
        .status
        .success());
    assert_eq!(sluice.wait_for_hits("*", 20, Duration::from_secs(60)), 20);
    let mut seen = Vec::new();
    loop {
        let offset = seen.len().to_string();
        let (status, body) = sluice.api(
            "/api/v1/search",
            &[("q", "*"), ("limit", "100"), ("offset", &offset)],
        );
        assert_eq!(status, 200);
        let hits = body["hits"].as_array().unwrap();
        if hits.is_empty() {
            break;
        }
        assert!(
            hits.len() < 20,
            "one answer held {} events of 900 KB",
            hits.len()
        );
        assert_eq!(body["cut"], seen.len() + hits.len() < 20, "{}", body["cut"]);
        seen.extend(
            hits.iter()
                .map(|h| h["event"]["id"].as_str().unwrap().to_owned()),
        );
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
}
