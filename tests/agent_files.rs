//! The agent's file input against the real binary and broker: a file rotated by the real
//! `logrotate` (create, and copytruncate) while written at a high rate loses no line; an agent
//! killed with SIGKILL halfway through a million-line file and restarted delivers every line, each
//! repeat with its first copy's id; multi-line events, a 10 MB line and invalid UTF-8 are handled
//! and counted.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn agent_config(sluice: &Sluice, include: &Path, extra: &str) -> String {
    format!(
        r#"
[agent]
brokers = "{kafka}"
hostname = "node-1"

[agent.files]
include = ["{include}"]
rotate_wait_ms = 1000
{extra}
"#,
        kafka = sluice.kafka,
        include = include.display(),
    )
}

/// librdkafka gives up on records of a missing topic after 100 ms rather than 30 s, and looks for
/// the topic again every second rather than every 5 minutes.
const MISSING_TOPICS_FOUND_FAST: &str =
    "[agent.kafka]\n\"topic.metadata.propagation.max.ms\" = \"100\"\n\
     \"topic.metadata.refresh.interval.ms\" = \"1000\"\n";

/// Waits until the agent has read its files to the end and the broker acknowledged all of it.
fn wait_until_shipped(agent: &AgentProcess, timeout: Duration) {
    wait_until("the agent to ship everything", timeout, || {
        let read = agent.metric("sluice_agent_lines_read_total{input=\"file\"}");
        agent.metric("sluice_agent_file_bytes_behind") == 0.0
            && read > 0.0
            && agent.metric("sluice_agent_events_sent_total") >= read
    });
}

/// The line number in an event's message (`line <n> ...`).
fn line_number(event: &serde_json::Value) -> u64 {
    let message = event["message"].as_str().unwrap();
    message
        .strip_prefix("line ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered line: {message}"))
}

/// The line numbers in the events' messages, and for each the ids it came with.
fn numbered(events: &[serde_json::Value]) -> HashMap<u64, Vec<String>> {
    let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
    for event in events {
        seen.entry(line_number(event))
            .or_default()
            .push(event["id"].as_str().unwrap().to_owned());
    }
    seen
}

fn assert_all_lines(seen: &HashMap<u64, Vec<String>>, total: u64) {
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// The checkpoint the agent saved for the file at `path` (0 before its first save).
fn saved_checkpoint(tmp: &Path, path: &Path) -> u64 {
    let saved = std::fs::read(tmp.join("agent-state/file-checkpoints.json")).unwrap_or_default();
    let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap_or_default();
    saved["files"]
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, entry)| entry["path"] == path.to_str().unwrap())
        .map_or(0, |(_, entry)| entry["offset"].as_u64().unwrap())
}

#[test]
fn kill9_halfway_through_a_million_lines_loses_none_and_repeats_keep_their_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("big.log");
    let total = 1_000_000u64;
    // An application writing 200 000 lines a second for five seconds: the agent is killed in
    // the middle of it, and restarted while the file still grows.
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).unwrap();
            for chunk in (0..total).collect::<Vec<_>>().chunks(10_000) {
                let text: String = chunk
                    .iter()
                    .map(|n| format!("line {n} GET /api/v1/orders status=200 bytes=512\n"))
                    .collect();
                file.write_all(text.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("a checkpoint saved", Duration::from_secs(300), || {
        saved_checkpoint(tmp.path(), &path) > 0
            && agent.metric("sluice_agent_events_sent_total") >= (total / 4) as f64
    });
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let checkpoint = saved_checkpoint(tmp.path(), &path);
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    writer.join().unwrap();
    wait_until_shipped(&agent, Duration::from_secs(300));
    let events = logs_events(&sluice, 0);
    let seen = numbered(&events);
    assert_all_lines(&seen, total);
    for (n, ids) in &seen {
        assert!(ids.iter().all(|id| id == &ids[0]), "line {n}: ids {ids:?}");
    }
    // One source stays on one partition (of the broker's three), in the file's order: each
    // line's first copy comes after the line before it.
    let partitions = run(
        kcat().args([
            "-C",
            "-b",
            &sluice.kafka,
            "-t",
            "logs",
            "-e",
            "-q",
            "-f",
            "%p\n",
        ]),
        Duration::from_secs(60),
    );
    let used: HashSet<String> = String::from_utf8_lossy(&partitions.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(used.len(), 1, "one file's lines on partitions {used:?}");
    let mut first_copies = HashSet::new();
    let mut last = None;
    for n in events.iter().map(line_number) {
        if first_copies.insert(n) {
            assert!(last < Some(n), "line {n} after line {last:?}");
            last = Some(n);
        }
    }
    // The restart resumed from the checkpoint: no line before it was sent twice.
    let text = std::fs::read(&path).unwrap();
    let before = text[..checkpoint as usize]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    assert!(
        before > 0 && before < total,
        "killed mid-file: {before} lines before the checkpoint"
    );
    let repeated: Vec<u64> = (0..before).filter(|n| seen[n].len() > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} lines before the checkpoint (line {before}) sent twice, first {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
    // librdkafka's queue fills and empties all through a flood: that is not said.
    let log = agent.log_text();
    assert!(!log.contains("records are taken again"), "{log}");
}

/// Writes `total` numbered lines to `path` at a high rate while `logrotate` (with `mode`:
/// "create" or "copytruncate") rotates it every 300 ms; the agent follows `path*`. Asserts no
/// line arrived under two ids; returns the lines that never arrived, each with whether it was
/// written while `logrotate` ran.
fn rotate_while_writing(mode: &str) -> Vec<(u64, bool)> {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    std::fs::write(&path, "line 0 first\n").unwrap();
    let glob = logs.join("app.log*");
    let config = agent_config(&sluice, &glob, "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let rotate_conf = tmp.path().join("logrotate.conf");
    std::fs::write(
        &rotate_conf,
        format!(
            "{} {{\n  rotate 1000\n  {mode}\n  missingok\n  nocompress\n}}\n",
            path.display()
        ),
    )
    .unwrap();
    let total = 150_000u64;
    let writer = {
        let path = path.clone();
        let reopen = mode == "create";
        std::thread::spawn(move || {
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap()
            };
            let mut file = open();
            let mut written = Vec::new();
            for batch in 0..total / 100 {
                if reopen {
                    // As an application told to reopen its log (a postrotate signal) does.
                    file = open();
                }
                let mut text = String::new();
                for n in (batch * 100).max(1)..(batch + 1) * 100 {
                    text.push_str(&format!("line {n} some payload to make the line longer\n"));
                }
                let before = Instant::now();
                file.write_all(text.as_bytes()).unwrap();
                written.push((before, Instant::now()));
                std::thread::sleep(Duration::from_millis(2));
            }
            written
        })
    };
    let mut rotations = Vec::new();
    while !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        run_ok(
            Command::new("logrotate")
                .arg("-f")
                .arg("-s")
                .arg(tmp.path().join("logrotate.state"))
                .arg(&rotate_conf),
            Duration::from_secs(30),
        );
        rotations.push((started, Instant::now()));
    }
    let written = writer.join().unwrap();
    assert!(
        rotations.len() >= 5,
        "only {} rotations during the writing",
        rotations.len()
    );
    wait_until_shipped(&agent, Duration::from_secs(120));
    let seen = numbered(&logs_events(&sluice, 0));
    let renamed: Vec<u64> = seen
        .iter()
        .filter(|(_, ids)| ids.iter().any(|id| id != &ids[0]))
        .map(|(n, _)| *n)
        .collect();
    let lost = (0..total)
        .filter(|n| !seen.contains_key(n))
        .map(|n| {
            let (from, to) = written[(n / 100) as usize];
            let during = rotations.iter().any(|&(s, e)| from <= e && s <= to);
            (n, during)
        })
        .collect();
    // A renamed file keeps its identity, and so does a copy that continues a truncated file
    // (also one shorter than what was read of the original): a line read twice keeps its id.
    assert!(
        renamed.is_empty(),
        "{} lines arrived under two ids: {:?}",
        renamed.len(),
        &renamed[..renamed.len().min(10)]
    );
    lost
}

#[test]
fn logrotate_create_while_writing_loses_no_line() {
    let lost = rotate_while_writing("create");
    assert!(
        lost.is_empty(),
        "{} lines lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// copytruncate has a gap no reader can close: lines written after logrotate's copy and before
/// its truncation are in neither file unless read in between. The agent reads without waiting
/// for the broker, so it loses nothing else: any line missing was written while logrotate ran.
#[test]
fn logrotate_copytruncate_while_writing_loses_nothing_outside_logrotates_own_gap() {
    let lost = rotate_while_writing("copytruncate");
    let outside: Vec<u64> = lost
        .iter()
        .filter(|(_, during)| !during)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        outside.is_empty(),
        "{} lines lost outside logrotate's runs: {:?}",
        outside.len(),
        &outside[..outside.len().min(10)]
    );
    eprintln!(
        "copytruncate: {} lines lost inside logrotate's copy-truncate gap",
        lost.len()
    );
}

#[test]
fn multiline_events_long_lines_and_invalid_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut text = Vec::new();
    text.extend_from_slice(b"2026-11-23 10:00:00 ERROR boom\n");
    text.extend_from_slice(b"java.lang.IllegalStateException: no\n");
    text.extend_from_slice(b"\tat a.b(C.java:1)\n\tat d.e(F.java:2)\n");
    text.extend_from_slice(b"2026-11-23 10:00:01 INFO fine\n");
    text.extend_from_slice(b"2026-11-23 10:00:02 ");
    text.extend(std::iter::repeat_n(b'x', 10 << 20));
    text.push(b'\n');
    text.extend_from_slice(b"2026-11-23 10:00:03 bad \xff\xfe bytes\n");
    text.extend_from_slice(b"2026-11-23 10:00:04 last\n");
    std::fs::write(logs.join("app.log"), &text).unwrap();
    let config = agent_config(
        &sluice,
        &logs.join("*.log"),
        "multiline_start = '^\\d{4}-\\d{2}-\\d{2} '\nmultiline_timeout_ms = 300\n",
    );
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("five events acknowledged", Duration::from_secs(60), || {
        agent.metric("sluice_agent_events_sent_total") >= 5.0
    });
    let events = logs_events(&sluice, 0);
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 5, "{:?}", &messages);
    assert_eq!(
        messages[0],
        "2026-11-23 10:00:00 ERROR boom\njava.lang.IllegalStateException: no\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)"
    );
    assert_eq!(messages[1], "2026-11-23 10:00:01 INFO fine");
    assert_eq!(messages[2].len(), 256 << 10, "cut at max_line_bytes");
    assert_eq!(events[2]["fields"]["truncated"], true);
    assert_eq!(
        messages[3],
        "2026-11-23 10:00:03 bad \u{fffd}\u{fffd} bytes"
    );
    assert_eq!(messages[4], "2026-11-23 10:00:04 last");
    assert_eq!(
        events[4]["source"],
        logs.join("app.log").display().to_string()
    );
    assert_eq!(
        agent.metric("sluice_agent_malformed_input_total{input=\"file\",reason=\"truncated\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("sluice_agent_malformed_input_total{input=\"file\",reason=\"invalid_utf8\"}"),
        1.0
    );
}

/// `[agent.kafka] message.max.bytes` lowered under a line's size: the line arrives cut to fit
/// and marked, rather than refused by librdkafka and lost; the lines after it arrive whole.
#[test]
fn a_lowered_message_max_bytes_cuts_events_to_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut text = b"line 0 ".to_vec();
    text.extend(std::iter::repeat_n(b'x', 200_000));
    text.extend_from_slice(b"\nline 1 after\n");
    std::fs::write(logs.join("app.log"), &text).unwrap();
    let extra = "\n[agent.kafka]\n\"message.max.bytes\" = \"65536\"\n";
    let config = agent_config(&sluice, &logs.join("*.log"), extra);
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until_shipped(&agent, Duration::from_secs(30));
    let events = logs_events(&sluice, 2);
    let sizes: Vec<usize> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len())
        .collect();
    assert!(sizes[0] <= 65536, "{sizes:?}");
    assert!(sizes[0] > 32768, "cut to fit, not to nothing: {sizes:?}");
    assert_eq!(events[0]["fields"]["truncated"], true);
    assert_eq!(events[1]["message"], "line 1 after");
    assert_eq!(agent.metric("sluice_agent_send_errors_total"), 0.0);
}

/// `read_from = "end"`: a file found at the first start is followed from its end; a file that
/// appears later is read from its beginning.
#[test]
fn read_from_end_skips_what_was_there_at_the_first_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let old = logs.join("old.log");
    std::fs::write(&old, "line 0 before the agent\nline 1 before the agent\n").unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "read_from = \"end\"\n");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("the old file followed", Duration::from_secs(20), || {
        agent.metric("sluice_agent_files_tracked") == 1.0
    });
    let mut file = std::fs::OpenOptions::new().append(true).open(&old).unwrap();
    file.write_all(b"line 2 after the start\n").unwrap();
    std::fs::write(logs.join("new.log"), "line 3 in a new file\n").unwrap();
    wait_until("two events acknowledged", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 2.0
    });
    let mut seen: Vec<u64> = numbered(&logs_events(&sluice, 2)).into_keys().collect();
    seen.sort();
    assert_eq!(seen, [2, 3]);
    // A restart is not a first start: what was written while the agent was down, in a known
    // file and in a file that appeared meanwhile, is read.
    drop(agent);
    file.write_all(
        b"line 4 while the agent was down
",
    )
    .unwrap();
    std::fs::write(
        logs.join("later.log"),
        "line 5 in a file made while it was down
",
    )
    .unwrap();
    let _agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let mut seen = Vec::new();
    wait_until("lines 4 and 5", Duration::from_secs(30), || {
        seen = numbered(&logs_events(&sluice, 0)).into_keys().collect();
        seen.sort();
        seen.ends_with(&[4, 5])
    });
    assert_eq!(seen, [2, 3, 4, 5]);
}

/// A topic that does not exist (auto-creation off) refuses records: the lines wait in the file,
/// its checkpoint stays, and once the topic is made every line arrives. Nothing is let go.
#[test]
fn lines_wait_for_a_topic_that_is_not_there_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nauto_create_topics = false\n");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let text: String = (0..100).map(|n| format!("line {n} of 100\n")).collect();
    std::fs::write(logs.join("app.log"), text).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), MISSING_TOPICS_FOUND_FAST);
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until(
        "the agent says the topic refuses",
        Duration::from_secs(30),
        || agent.log_text().contains("refuses records"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.metric("sluice_agent_events_sent_total"), 0.0);
    sluice.create_topic("logs", 3, &[]);
    wait_until(
        "all 100 lines acknowledged",
        Duration::from_secs(60),
        || agent.metric("sluice_agent_events_sent_total") >= 100.0,
    );
    assert_all_lines(&numbered(&logs_events(&sluice, 100)), 100);
    let log = agent.log_text();
    assert!(log.matches("records are taken again").count() <= 1, "{log}");
}

/// Neither the logs nor the metrics topic is there; the logs topic is made, the metrics topic
/// never: every line arrives while the metric samples go on waiting (a topic still refused is
/// passed over when refused records are offered again).
#[test]
fn a_missing_metrics_topic_holds_up_no_line() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "[broker]\nauto_create_topics = false\n");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let extra =
        format!("[agent.metrics]\nhost = true\ninterval_ms = 200\n{MISSING_TOPICS_FOUND_FAST}");
    let config = agent_config(&sluice, &logs.join("*.log"), &extra);
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    // The samples' refused records first in line, the lines' after them.
    wait_until(
        "the agent says the metrics topic refuses",
        Duration::from_secs(30),
        || agent.log_text().contains("refuses records"),
    );
    let text: String = (0..100).map(|n| format!("line {n} of 100\n")).collect();
    std::fs::write(logs.join("app.log"), text).unwrap();
    wait_until(
        "the agent says both topics refuse",
        Duration::from_secs(30),
        || agent.log_text().matches("refuses records").count() >= 2,
    );
    std::thread::sleep(Duration::from_secs(2));
    sluice.create_topic("logs", 3, &[]);
    wait_until(
        "all 100 lines acknowledged",
        Duration::from_secs(60),
        || agent.metric("sluice_agent_events_sent_total") >= 100.0,
    );
    assert_all_lines(&numbered(&logs_events(&sluice, 100)), 100);
    assert!(
        agent.metric("sluice_agent_records_unacknowledged") > 0.0,
        "samples wait"
    );
}

/// A broker that refuses every produce (its free-disk floor above the disk's size) is retried by
/// librdkafka without a word: the agent says records wait unacknowledged, and shows how many;
/// once the broker takes them every line arrives.
#[test]
fn records_the_broker_keeps_refusing_are_said_and_arrive_once_it_takes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "[broker]\nmin_free_bytes = 1000000000000000\n");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let text: String = (0..100).map(|n| format!("line {n} of 100\n")).collect();
    std::fs::write(logs.join("app.log"), text).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until(
        "the agent to say records wait unacknowledged",
        Duration::from_secs(60),
        || agent.log_text().contains("without one acknowledgement"),
    );
    assert_eq!(agent.metric("sluice_agent_records_unacknowledged"), 100.0);
    assert_eq!(agent.metric("sluice_agent_events_sent_total"), 0.0);
    sluice.kill9();
    std::fs::write(tmp.path().join("sluice.toml"), "").unwrap();
    sluice.restart();
    wait_until(
        "all 100 lines acknowledged",
        Duration::from_secs(60),
        || agent.metric("sluice_agent_events_sent_total") >= 100.0,
    );
    assert_all_lines(&numbered(&logs_events(&sluice, 100)), 100);
    wait_until("the agent to say so", Duration::from_secs(10), || {
        agent.log_text().contains("acknowledge records again")
    });
    assert_eq!(agent.metric("sluice_agent_records_unacknowledged"), 0.0);
}

/// CPU seconds (user and system) a process has used, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// An empty file (a container that never printed) costs nothing while it stays empty: the
/// agent's own opens and reads of it are not taken for growth (they once made it scan without
/// pause, a whole core). Once it has a line, the line is shipped.
#[test]
fn an_empty_file_is_waited_for_without_spinning() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("quiet.log");
    std::fs::write(&path, "").unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(agent.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(agent.child.id()) - before;
    assert!(
        used < 0.5,
        "the agent used {used} s of CPU in 3 s with nothing to read"
    );
    std::fs::write(&path, "line 0 of 1\n").unwrap();
    wait_until("the line acknowledged", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 1.0
    });
    assert_all_lines(&numbered(&logs_events(&sluice, 1)), 1);
}

/// SIGTERM while the broker is away and a file's backlog is more than librdkafka's queue holds:
/// the agent stops within its flush time rather than waiting for the broker for ever, and once
/// the broker is back a new agent ships every line, the unsent ones read again. While the reader
/// waits, the file's bytes-behind gauge follows what is written to it.
#[test]
fn sigterm_while_the_broker_is_away_stops_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    let lines = |range: std::ops::Range<u64>| -> String {
        range
            .map(|n| {
                format!(
                    "line {n} GET /api/v1/orders status=200 bytes=512 {}\n",
                    "x".repeat(40)
                )
            })
            .collect()
    };
    std::fs::write(&path, lines(0..1000)).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until_shipped(&agent, Duration::from_secs(60));
    sluice.kill9();
    let (backlog, total) = (100_000, 101_000);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(lines(1000..backlog).as_bytes()).unwrap();
    // librdkafka's queue takes some 16 000 of these events; the rest wait in the file.
    wait_until(
        "the agent stalled on the backlog",
        Duration::from_secs(30),
        || {
            agent.metric("sluice_agent_lines_read_total{input=\"file\"}") > 10_000.0
                && agent.metric("sluice_agent_file_bytes_behind") > 0.0
        },
    );
    let per_file = format!(
        "sluice_agent_file_bytes_behind_per_file{{path=\"{}\"}}",
        path.display()
    );
    wait_until("the file's gauge set", Duration::from_secs(10), || {
        agent.metric(&per_file) > 0.0
    });
    let before = agent.metric(&per_file);
    let more = lines(backlog..total);
    file.write_all(more.as_bytes()).unwrap();
    wait_until(
        "the file's gauge following it while the reader waits",
        Duration::from_secs(10),
        || agent.metric(&per_file) >= before + more.len() as f64,
    );
    let stopping = Instant::now();
    signal_pid(agent.child.id(), "TERM");
    loop {
        if agent.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(45),
            "the agent did not stop within 45 s of SIGTERM with the broker away:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sluice.restart();
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until_shipped(&agent, Duration::from_secs(120));
    assert_all_lines(&numbered(&logs_events(&sluice, total as usize)), total);
}

/// A line the topic refuses for good (its batch is over the topic's `max.message.bytes`) is
/// counted and let go: the file's checkpoint moves past it, as it does past a line librdkafka
/// refuses itself, instead of staying before it for ever and sending the rest of the file again
/// at every start.
#[test]
fn a_line_the_broker_refuses_for_good_does_not_hold_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    sluice.create_topic("logs", 1, &["max.message.bytes=4096"]);
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    std::fs::write(&path, "line 0 of 2\n").unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let sent = |agent: &AgentProcess| agent.metric("sluice_agent_events_sent_total");
    wait_until("line 0 acknowledged", Duration::from_secs(30), || {
        sent(&agent) >= 1.0
    });
    // 20 000 bytes that lz4 cannot shrink below the topic's 4096.
    let mut seed = Lcg(7);
    let noise: String = (0..20_000)
        .map(|_| char::from(b'!' + seed.next_ms(0, 90) as u8))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, "{noise}").unwrap();
    wait_until(
        "the broker refused the long line",
        Duration::from_secs(30),
        || agent.metric("sluice_agent_send_errors_total") >= 1.0,
    );
    writeln!(file, "line 1 of 2").unwrap();
    wait_until("line 1 acknowledged", Duration::from_secs(30), || {
        sent(&agent) >= 2.0 && agent.metric("sluice_agent_file_bytes_behind") == 0.0
    });
    signal_pid(agent.child.id(), "TERM");
    agent.child.wait().unwrap();
    let length = std::fs::metadata(&path).unwrap().len();
    assert_eq!(saved_checkpoint(tmp.path(), &path), length);
    assert_all_lines(&numbered(&logs_events(&sluice, 2)), 2);
}

/// A last line without its newline waits for it (an application may be writing it), and counts
/// as behind, in all and for its file, until it comes.
#[test]
fn a_last_line_without_its_newline_is_behind_until_it_comes() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    // Blank lines are no events, but bytes read all the same.
    std::fs::write(&path, "line 0\nline 1\n\n\nline 2 half").unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let per_file = format!(
        "sluice_agent_file_bytes_behind_per_file{{path=\"{}\"}}",
        path.display()
    );
    wait_until("the two whole lines sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 2.0 && agent.metric(&per_file) == 11.0
    });
    assert_eq!(agent.metric("sluice_agent_file_bytes_behind"), 11.0);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b" and its end\n").unwrap();
    wait_until_shipped(&agent, Duration::from_secs(30));
    // Per file, the gauge is set once a second.
    wait_until("the file caught up", Duration::from_secs(10), || {
        agent.metric(&per_file) == 0.0
    });
    assert_eq!(
        numbered(&logs_events(&sluice, 3)).len(),
        3,
        "every line once, the last whole"
    );
    let events = logs_events(&sluice, 3);
    assert_eq!(events[2]["message"], "line 2 half and its end");
    // Bytes read are the file's, newlines and all.
    assert_eq!(
        agent.metric("sluice_agent_bytes_read_total{input=\"file\"}"),
        std::fs::metadata(&path).unwrap().len() as f64
    );
}

/// A file deleted while its last line has no newline: once it is closed (`rotate_wait_ms`
/// after), that line is shipped as it is, and its checkpoint says the file was read to its end.
/// (It was never shipped, and the bytes behind said nothing of it.)
#[test]
fn a_deleted_files_last_line_without_its_newline_is_shipped_when_it_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    std::fs::write(&path, "line 0\nline 1 the last, unended").unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("the whole line sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 1.0
    });
    std::fs::remove_file(&path).unwrap();
    wait_until("the last line sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 2.0
    });
    let events = logs_events(&sluice, 2);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["message"], "line 1 the last, unended");
}

/// How many of `events` have a message ending with `suffix`.
fn ending_with(events: &[serde_json::Value], suffix: &str) -> usize {
    events
        .iter()
        .filter(|e| e["message"].as_str().unwrap().ends_with(suffix))
        .count()
}

/// The log of a job's run `n`: `banner`, then `lines` numbered lines.
fn job_run(n: usize, lines: usize, banner: &str) -> String {
    let body: String = (0..lines)
        .map(|i| format!("line {} of run {n}\n", n * 1000 + i))
        .collect();
    format!("{banner}\n{body}")
}

/// A file truncated and written again in one go past where it was read, with the same first
/// line (a job that rewrites its log under a fixed banner): every line of the new run is
/// shipped. (Taken for the same file, it was read on from the old offset and the new run's
/// first lines were lost.)
#[test]
fn a_file_rewritten_in_place_under_the_same_first_line_is_read_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("job.log");
    let run =
        |n: usize, lines: usize| job_run(n, lines, &format!("line {} banner", n * 1000 + 999));
    std::fs::write(&path, run(1, 100)).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("the first run sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 101.0
    });
    std::fs::write(&path, run(1, 300).replace("of run 1", "of run 1 again")).unwrap();
    wait_until("the second run sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 402.0
    });
    let events = logs_events(&sluice, 402);
    let again = ending_with(&events, "again");
    assert_eq!(again, 300, "every line of the rewritten file");
}

/// The same, while the agent was stopped: the file, same inode and first line, is longer than
/// the checkpoint but no longer holds what was read. Every line of the new run is shipped (it was
/// read on from the old offset, and the new run's lines before it were lost).
#[test]
fn a_file_rewritten_while_the_agent_was_stopped_is_read_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("job.log");
    let run = |n: usize, lines: usize| job_run(n, lines, "line 999 banner");
    std::fs::write(&path, run(1, 100)).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let mut agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let len = std::fs::metadata(&path).unwrap().len();
    wait_until(
        "the first run checkpointed",
        Duration::from_secs(30),
        || saved_checkpoint(tmp.path(), &path) == len,
    );
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    std::fs::write(&path, run(2, 300)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until_shipped(&agent, Duration::from_secs(30));
    let events = logs_events(&sluice, 402);
    let second: HashSet<u64> = events
        .iter()
        .filter(|e| e["message"].as_str().unwrap().ends_with("of run 2"))
        .map(line_number)
        .collect();
    assert_eq!(second.len(), 300, "every line of the rewritten file");
    assert!(
        agent
            .log_text()
            .contains("no longer holds what was read of it"),
        "the agent says why it read the file again"
    );
}

/// A file truncated under the agent is continued by a copy of it (copytruncate): a new file that
/// only starts like it (a shared banner) is not one, and is read from its start (it was read on
/// from where the truncated file had been read to, and its lines before that were lost).
#[test]
fn a_new_file_that_only_starts_like_a_truncated_one_is_read_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let first = logs.join("worker-1.log");
    let lines = |name: &str, n: usize| -> String {
        let body: String = (0..n).map(|i| format!("line {i} of {name}\n")).collect();
        format!("line 999 banner\n{body}")
    };
    std::fs::write(&first, lines("worker-1", 100)).unwrap();
    let config = agent_config(&sluice, &logs.join("*.log"), "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("the first file sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 101.0
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_until("the truncation seen", Duration::from_secs(30), || {
        agent.log_text().contains("file truncated")
    });
    std::fs::write(logs.join("worker-2.log"), lines("worker-2", 300)).unwrap();
    wait_until("the second file sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 402.0
    });
    let events = logs_events(&sluice, 402);
    let second = ending_with(&events, "of worker-2");
    assert_eq!(second, 300, "every line of the new file");
}

/// A file renamed out of the globs that its writer goes on writing (an app that never reopens
/// its log, a slow reload) is read until it has been quiet for `rotate_wait_ms` (1 s here):
/// lines written to it for 3 s after the rename all arrive.
#[test]
fn a_file_rotated_away_is_read_while_it_is_still_written() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("app.log");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "line 0 before the rename").unwrap();
    let config = agent_config(&sluice, &path, "");
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until_shipped(&agent, Duration::from_secs(30));
    std::fs::rename(&path, logs.join("app.log.1")).unwrap();
    for n in 1..=30 {
        writeln!(file, "line {n} after the rename").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_all_lines(&numbered(&logs_events(&sluice, 31)), 31);
}
