//! Container log files through the real agent, broker and indexer: Docker's json-file logs (a
//! line over 16 KiB split into parts, as the driver writes it) and Kubernetes CRI logs (`P` and
//! `F` parts) arrive as one event each, joined, with their stream and time, and labelled with
//! their container (Docker's config.v2.json; the pod path) — and are searchable by it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn docker_and_cri_logs_arrive_joined_and_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::up(tmp.path(), "");
    let docker = tmp.path().join("docker");
    let container = docker.join("containers").join(WEB_CONTAINER);
    std::fs::create_dir_all(&container).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/docker/containers")
            .join(WEB_CONTAINER)
            .join("config.v2.json"),
        container.join("config.v2.json"),
    )
    .unwrap();
    // The json-file driver splits a line at 16 KiB: every part but the last lacks the newline.
    let long = format!("{}END", "a".repeat(20_000));
    let (head, tail) = long.split_at(16_384);
    let docker_log = format!(
        concat!(
            r#"{{"log":"GET /health 200\n","stream":"stdout","time":"2026-11-23T10:00:00.123456789Z"}}"#,
            "\n",
            r#"{{"log":"{}","stream":"stderr","time":"2026-11-23T10:00:01.000000001Z"}}"#,
            "\n",
            r#"{{"log":"{}\n","stream":"stderr","time":"2026-11-23T10:00:01.000000002Z"}}"#,
            "\n",
            "not json at all\n",
        ),
        head, tail
    );
    std::fs::write(
        container.join(format!("{WEB_CONTAINER}-json.log")),
        docker_log,
    )
    .unwrap();
    let pods = tmp.path().join("pods");
    let pod = pods.join("shop_web-7d9f_5f0c3a2e-8d1b-4c7e-9a6f-2b3c4d5e6f70/nginx");
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(
        pod.join("0.log"),
        "2026-11-23T10:00:02.000000000Z stdout F pod started\n\
         2026-11-23T10:00:03.000000000Z stderr P first part, \n\
         2026-11-23T10:00:03.000000001Z stderr P second part, \n\
         2026-11-23T10:00:03.000000002Z stderr F last part\n",
    )
    .unwrap();
    // The kubelet's link to the log names the container's id.
    let links = tmp.path().join("containers");
    std::fs::create_dir_all(&links).unwrap();
    let nginx_id = "c7".repeat(32);
    std::os::unix::fs::symlink(
        pod.join("0.log"),
        links.join(format!("web-7d9f_shop_nginx-{nginx_id}.log")),
    )
    .unwrap();
    let config = format!(
        r#"
[agent]
brokers = "{kafka}"
hostname = "node-1"

[agent.docker]
logs = true
root = "{docker}"

[agent.cri]
logs = true
root = "{pods}"
containers = "{links}"

# For the files' own lines: container logs keep one event a line.
[agent.files]
multiline_start = '^\d{{4}}-\d{{2}}-\d{{2}} '
rescan_interval_ms = 300
"#,
        kafka = sluice.kafka,
        docker = docker.display(),
        pods = pods.display(),
        links = links.display(),
    );
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    wait_until("five events acknowledged", Duration::from_secs(60), || {
        agent.metric("sluice_agent_events_sent_total") >= 5.0
    });
    let events = logs_events(&sluice, 5);
    assert_eq!(events.len(), 5, "{events:?}");
    let by_message = |m: &str| {
        events
            .iter()
            .find(|e| e["message"] == m)
            .unwrap_or_else(|| panic!("no event {m:?} in {events:?}"))
    };
    let health = by_message("GET /health 200");
    assert_eq!(health["stream"], "stdout");
    assert_eq!(health["timestamp"], "2026-11-23T10:00:00.123456789Z");
    assert_eq!(health["source"], "web");
    assert_eq!(health["container"]["id"], WEB_CONTAINER);
    assert_eq!(health["container"]["name"], "web");
    assert_eq!(health["container"]["image"], "nginx:1.25");
    assert_eq!(health["container"]["labels"]["com.example.team"], "shop");
    let joined = by_message(&long);
    assert_eq!(joined["stream"], "stderr");
    assert_eq!(joined["timestamp"], "2026-11-23T10:00:01.000000001Z");
    by_message("not json at all");
    assert_eq!(
        agent
            .metric("sluice_agent_malformed_input_total{input=\"docker\",reason=\"invalid_json\"}"),
        1.0
    );
    let cri = by_message("first part, second part, last part");
    assert_eq!(cri["stream"], "stderr");
    // A joined line has its first part's time.
    assert_eq!(cri["timestamp"], "2026-11-23T10:00:03.000000000Z");
    assert_eq!(cri["source"], "shop/web-7d9f/nginx");
    assert_eq!(cri["container"]["name"], "nginx");
    assert_eq!(cri["container"]["id"], nginx_id);
    assert_eq!(
        cri["container"]["labels"]["io.kubernetes.pod.namespace"],
        "shop"
    );
    let started = by_message("pod started");
    assert_eq!(started["stream"], "stdout");
    assert_eq!(started["timestamp"], "2026-11-23T10:00:02.000000000Z");
    // Searchable by their container.
    assert_eq!(
        sluice.wait_for_hits("container.name:web", 3, Duration::from_secs(30)),
        3
    );
    assert_eq!(
        sluice.wait_for_hits(
            "source:\"shop/web-7d9f/nginx\" AND stream:stderr",
            1,
            Duration::from_secs(30)
        ),
        1
    );
    // A container whose first lines come before the kubelet's link: its later lines carry
    // the id once the link is there.
    let late = pods.join("shop_late-1_0c1d2e3f/app");
    std::fs::create_dir_all(&late).unwrap();
    let line = |text: &str| format!("2026-11-23T10:00:05.000000000Z stdout F {text}\n");
    std::fs::write(late.join("0.log"), line("late first")).unwrap();
    wait_until("the first late line sent", Duration::from_secs(30), || {
        agent.metric("sluice_agent_events_sent_total") >= 6.0
    });
    let late_id = "d8".repeat(32);
    std::os::unix::fs::symlink(
        late.join("0.log"),
        links.join(format!("late-1_shop_app-{late_id}.log")),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(late.join("0.log"))
        .unwrap();
    std::io::Write::write_all(&mut log, line("late second").as_bytes()).unwrap();
    let events = logs_events(&sluice, 7);
    let second = events
        .iter()
        .find(|e| e["message"] == "late second")
        .unwrap_or_else(|| panic!("no late second in {events:?}"));
    assert_eq!(second["container"]["id"], late_id);
}

/// A Docker container whose record is missing is named by its short id, and said so once in the
/// log; once Docker writes the record, or rewrites it (`docker rename`), the lines read after
/// carry what it says. (The name read first was kept until the agent restarted.)
#[test]
fn a_docker_record_written_late_or_rewritten_names_the_lines_after() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::broker(tmp.path(), "");
    let docker = tmp.path().join("docker");
    let id = "d4".repeat(32);
    let container = docker.join("containers").join(&id);
    std::fs::create_dir_all(&container).unwrap();
    let log = container.join(format!("{id}-json.log"));
    let line = |n: usize| {
        format!(r#"{{"log":"line {n}\n","stream":"stdout","time":"2026-12-08T03:00:0{n}Z"}}"#)
            + "\n"
    };
    std::fs::write(&log, line(1)).unwrap();
    let config = format!(
        "[agent]\nbrokers = \"{}\"\n[agent.docker]\nlogs = true\nroot = \"{}\"\n\
         [agent.files]\nrescan_interval_ms = 300\n",
        sluice.kafka,
        docker.display()
    );
    let agent = AgentProcess::start(tmp.path(), &config, Stdio::null());
    let append = |n: usize| {
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, line(n).as_bytes()).unwrap();
    };
    let sent = |n: f64| {
        wait_until("the line sent", Duration::from_secs(30), || {
            agent.metric("sluice_agent_events_sent_total") >= n
        })
    };
    sent(1.0);
    let record = container.join("config.v2.json");
    std::fs::write(
        &record,
        r#"{"Name":"/late-comer","Config":{"Image":"alpine:3"}}"#,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    append(2);
    sent(2.0);
    std::fs::write(
        &record,
        r#"{"Name":"/renamed","Config":{"Image":"alpine:3"}}"#,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    append(3);
    let events = logs_events(&sluice, 3);
    let source = |message: &str| {
        let event = events.iter().find(|e| e["message"] == message).unwrap();
        event["source"].as_str().unwrap().to_owned()
    };
    assert_eq!(source("line 1"), id[..12]);
    assert_eq!(source("line 2"), "late-comer");
    assert_eq!(source("line 3"), "renamed");
    let said = agent
        .log_text()
        .matches("record of the container cannot be read")
        .count();
    assert_eq!(said, 1, "{}", agent.log_text());
}
