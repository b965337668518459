//! Samples from Prometheus text endpoints (format 0.0.4), scraped every interval. Each line is
//! one sample; its family's `# TYPE` and `# HELP` travel with it, so the metrics view can expose
//! it again as it was. A line that cannot be read is skipped and counted, never the whole scrape.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Kind, Sample, Samples};
use crate::config::MetricsConfig;
use crate::event::now_ms;

pub struct Scraper {
    http: ureq::Agent,
    targets: Vec<String>,
    max_samples: usize,
    timeout: Duration,
    /// Scrapes running at once: each holds its body (up to `MAX_BODY_BYTES`) until it is parsed.
    parallel: Arc<Semaphore>,
}

/// Largest scrape body read (after decompression); a bigger one is an error, as Prometheus's
/// body_size_limit makes it.
const MAX_BODY_BYTES: u64 = 16 << 20;
/// The most of a HELP text kept: it goes into every sample of its family.
const MAX_HELP_BYTES: usize = 1024;

/// Targets scraped at once.
const PARALLEL_SCRAPES: usize = 4;

/// One target's scrape: the target as it may be shown, and its samples or why there are none.
pub struct Scraped {
    pub target: String,
    pub samples: Result<Parsed, String>,
}

impl Scraper {
    pub fn new(config: &MetricsConfig) -> Self {
        // A scrape ends before the next round is due, as Prometheus's scrape_timeout must.
        let timeout = Duration::from_millis((config.interval_ms * 9 / 10).clamp(1, 10_000));
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self {
            http,
            targets: config.targets.clone(),
            max_samples: config.max_samples_per_target,
            timeout,
            parallel: Arc::new(Semaphore::new(PARALLEL_SCRAPES)),
        }
    }

    /// Starts scraping every target, `PARALLEL_SCRAPES` at a time, into `scrapes`. The round
    /// ends within the scrape timeout, so that the next is not held up: a scrape that starts
    /// late (others ahead of it slow) has what is left of it, and a target still waiting for its
    /// turn then is not scraped this round, and says so.
    pub fn start_round(&self, scrapes: &mut JoinSet<Scraped>) {
        let round_ends = tokio::time::Instant::now() + self.timeout;
        for target in &self.targets {
            let (http, target) = (self.http.clone(), target.clone());
            let (parallel, max_samples, timeout) =
                (self.parallel.clone(), self.max_samples, self.timeout);
            scrapes.spawn(async move {
                let shown = shown(&target);
                let samples =
                    match tokio::time::timeout_at(round_ends, parallel.acquire_owned()).await {
                        Ok(Ok(permit)) => {
                            let left =
                                round_ends.saturating_duration_since(tokio::time::Instant::now());
                            tokio::task::spawn_blocking(move || {
                                let _permit = permit;
                                // The samples' time where the target writes none: the scrape's.
                                scrape(&http, &target, left, max_samples, now_ms())
                            })
                            .await
                            .unwrap_or_else(|_| Err("the scrape's thread panicked".into()))
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!(
                        "not scraped within {} ms: the {PARALLEL_SCRAPES} scrapes at once were \
                         taken by slower targets",
                        timeout.as_millis()
                    )),
                    };
                Scraped {
                    target: shown,
                    samples,
                }
            });
        }
    }
}

/// Fetches and reads one target. A body of which no line could be read is the scrape's failure
/// (an HTML page, say), not a target up with no samples.
fn scrape(
    http: &ureq::Agent,
    target: &str,
    timeout: Duration,
    max_samples: usize,
    timestamp: i64,
) -> Result<Parsed, String> {
    let (body, format) = fetch(http, target, timeout)?;
    let mut samples = Samples::new(timestamp);
    let mut parsed = parse(&body, format, max_samples, &mut samples);
    if samples.out.is_empty() && parsed.bad_lines > 0 {
        return Err("the answer is not Prometheus text: none of its lines is a sample".into());
    }
    let instance = instance_of(target);
    for sample in &mut samples.out {
        sample
            .labels
            .entry("instance".into())
            .or_insert_with(|| instance.to_owned());
    }
    parsed.out = samples.out;
    Ok(parsed)
}

fn fetch(http: &ureq::Agent, target: &str, timeout: Duration) -> Result<(String, Format), String> {
    let mut response = http
        .get(target)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .header("Accept", "text/plain;version=0.0.4")
        .header("Accept-Encoding", "gzip")
        .call()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => format!("no answer within {} ms", timeout.as_millis()),
            e => e.to_string(),
        })?;
    let format = match response.headers().get("content-type") {
        Some(kind) if kind.as_bytes().starts_with(b"application/openmetrics-text") => {
            Format::OpenMetrics
        }
        _ => Format::Text,
    };
    let gzip = response
        .headers()
        .get("content-encoding")
        .is_some_and(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    let body = match gzip {
        true => gunzip(&body)?,
        false => body,
    };
    // A byte that is not UTF-8 spoils its line, not the scrape.
    Ok((String::from_utf8_lossy(&body).into_owned(), format))
}

/// A gzip body, decompressed up to `MAX_BODY_BYTES`.
fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("the gzip body does not decompress: {e}"))?;
    if text.len() as u64 > MAX_BODY_BYTES {
        return Err(format!(
            "the body decompresses to more than {MAX_BODY_BYTES} bytes"
        ));
    }
    Ok(text)
}

/// `host:port` of a target URL, as Prometheus labels a target's samples with `instance`.
fn instance_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// The target URL without the credentials it may carry (`http://user:password@host/`), as it
/// may be shown: in labels, in the log.
fn shown(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) => {
            let path = rest.find('/').map_or("", |at| &rest[at..]);
            format!("http://{}{path}", instance_of(url))
        }
        None => url.to_owned(),
    }
}

/// What reading one scrape gave: its samples, lines skipped, samples over the limit.
pub struct Parsed {
    pub out: Vec<Sample>,
    pub bad_lines: usize,
    pub dropped: usize,
}

/// Reads the samples of `text` into `samples`; `out` is left empty, for the caller to fill.
fn parse(text: &str, format: Format, max_samples: usize, samples: &mut Samples) -> Parsed {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut helps: HashMap<&str, String> = HashMap::new();
    let (mut bad_lines, mut dropped, mut kept) = (0, 0, 0);
    for line in text.lines() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    types.insert(name, kind.trim());
                }
                (Some("HELP"), Some(name), help) => {
                    // Copied into every sample of its family: a long one is cut.
                    let help = help.unwrap_or("");
                    let cut = (0..=help.len().min(MAX_HELP_BYTES))
                        .rev()
                        .find(|&at| help.is_char_boundary(at))
                        .unwrap_or(0);
                    helps.insert(name, unescape(&help[..cut]));
                }
                _ => {}
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Some((name, labels, value, timestamp)) = sample_line(line, format) else {
            bad_lines += 1;
            continue;
        };
        if kept == max_samples {
            dropped += 1;
            continue;
        }
        kept += 1;
        let (family, kind) = family_of(name, &types, format);
        let help = helps.get(family).map_or("", String::as_str);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        samples.push(name, kind, help, &labels, value);
        if let Some(timestamp) = timestamp {
            samples.out.last_mut().expect("pushed").timestamp = timestamp;
        }
    }
    Parsed {
        out: Vec::new(),
        bad_lines,
        dropped,
    }
}

/// The sample names a declared family type owns beside its own name, and the type each has:
/// a histogram's or summary's `_bucket`, `_sum` and `_count`, and OpenMetrics' counter `_total`,
/// info `_info`, and `_created` (a time, so a gauge).
/// The last, OpenMetrics', only in an OpenMetrics answer.
const OWNED_SUFFIXES: [(&str, &str, Kind); 10] = [
    ("_bucket", "histogram", Kind::Histogram),
    ("_sum", "histogram", Kind::Histogram),
    ("_count", "histogram", Kind::Histogram),
    ("_sum", "summary", Kind::Summary),
    ("_count", "summary", Kind::Summary),
    ("_created", "histogram", Kind::Gauge),
    ("_created", "summary", Kind::Gauge),
    ("_total", "counter", Kind::Counter),
    ("_created", "counter", Kind::Gauge),
    ("_info", "info", Kind::Gauge),
];
/// How many of `OWNED_SUFFIXES`, the first, the 0.0.4 text format has.
const TEXT_SUFFIXES: usize = 5;

/// The family a sample line belongs to, and the type its sample has. A `# TYPE` of the sample's
/// own name comes first (`http_requests_total counter` in the 0.0.4 format); then a family
/// that owns the name by its suffix (`x_bucket` of histogram `x`; OpenMetrics' `x_total` of
/// counter `x`).
fn family_of<'a>(name: &'a str, types: &HashMap<&str, &str>, format: Format) -> (&'a str, Kind) {
    if let Some(declared) = types.get(name) {
        return (name, kind_of(declared));
    }
    let owned = match format {
        Format::Text => &OWNED_SUFFIXES[..TEXT_SUFFIXES],
        Format::OpenMetrics => &OWNED_SUFFIXES[..],
    };
    for &(suffix, declared, kind) in owned {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base) == Some(&declared) {
                return (base, kind);
            }
        }
    }
    (name, Kind::Untyped)
}

fn kind_of(word: &str) -> Kind {
    match word {
        "counter" => Kind::Counter,
        // OpenMetrics' stateset and info are gauges of 0 and 1 to Prometheus.
        "gauge" | "stateset" | "info" => Kind::Gauge,
        "histogram" => Kind::Histogram,
        "summary" => Kind::Summary,
        _ => Kind::Untyped,
    }
}

/// A metric name as Prometheus takes it: `[a-zA-Z_:][a-zA-Z0-9_:]*`; a label name has no `:`.
fn valid_name(name: &str, colon: bool) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    name.chars().next().is_some_and(|c| !c.is_ascii_digit()) && name.chars().all(allowed)
}

type Labels<'a> = Vec<(&'a str, String)>;

/// The exposition format a target answered in: they write timestamps differently.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// `text/plain; version=0.0.4`: a timestamp in milliseconds.
    Text,
    /// `application/openmetrics-text`: a timestamp in seconds, with a fraction.
    OpenMetrics,
}

/// `name{label="value",...} value [timestamp]`, the timestamp in milliseconds where the line
/// has one (as Prometheus honours it; else the sample carries the time it was scraped). A name
/// or label name Prometheus would refuse, a label named twice, or a timestamp that is not one,
/// makes the line unreadable.
fn sample_line(line: &str, format: Format) -> Option<(&str, Labels<'_>, f64, Option<i64>)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([' ', ',']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once('=')?;
            let (value, after) = quoted(after.trim_start().strip_prefix('"')?)?;
            let label = label.trim();
            if !valid_name(label, false) || labels.iter().any(|(named, _)| *named == label) {
                return None;
            }
            labels.push((label, value));
            inner = after;
        }
    }
    // OpenMetrics may write an exemplar after ` # `: not kept.
    let sample = rest.split(" # ").next().unwrap_or(rest);
    let mut words = sample.split_whitespace();
    let value = words.next()?.parse().ok()?;
    let timestamp = match (words.next(), format) {
        (None, _) => None,
        // Prometheus reads either as a float (`1.7e12` included).
        (Some(time), format) => {
            let time = time.parse::<f64>().ok().filter(|t| t.is_finite())?;
            let ms = match format {
                Format::Text => time,
                Format::OpenMetrics => time * 1000.0,
            };
            Some(ms.round() as i64)
        }
    };
    if words.next().is_some() {
        return None;
    }
    Some((name, labels, value, timestamp))
}

/// A quoted label value up to its closing quote (the opening one already taken), unescaped;
/// and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// HELP text unescaped (`\\` and `\n`) in one pass, so `\\n` stays a backslash and an `n`;
/// any other backslash is kept.
fn unescape(help: &str) -> String {
    let mut text = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => text.push('\n'),
            Some('\\') => text.push('\\'),
            // Not an escape of the format's: kept as written.
            Some(other) => text.extend(['\\', other]),
            None => text.push('\\'),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_text_format_line_by_line() {
        let text = r#"# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{method="get",path="/a \"b\""} 1027 1395066363000
http_requests_total{method="post",} 3
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 5
latency_seconds_bucket{le="+Inf"} 7
latency_seconds_sum 1.5
latency_seconds_count 7
temperature NaN
this is not a sample
broken{label="open} 1
"#;
        let mut samples = Samples::new(42);
        let parsed = parse(text, Format::Text, 100, &mut samples);
        assert_eq!(parsed.bad_lines, 2);
        assert_eq!(parsed.dropped, 0);
        let out = &samples.out;
        assert_eq!(out.len(), 7);
        assert_eq!(out[0].name, "http_requests_total");
        assert_eq!(out[0].kind, Kind::Counter);
        assert_eq!(out[0].help, "Requests served.");
        assert_eq!(out[0].labels["path"], "/a \"b\"");
        assert_eq!(out[0].value, 1027.0);
        // The line's own timestamp; the scrape's where a line has none.
        assert_eq!(out[0].timestamp, 1395066363000);
        assert_eq!(out[1].timestamp, 42);
        assert_eq!(out[1].labels["method"], "post");
        assert_eq!(out[2].kind, Kind::Histogram);
        assert_eq!(out[3].labels["le"], "+Inf");
        assert_eq!(out[5].name, "latency_seconds_count");
        assert_eq!(out[5].kind, Kind::Histogram);
        assert_eq!(out[6].kind, Kind::Untyped);
        assert!(out[6].value.is_nan());
    }

    /// A HELP text is copied into every sample of its family: a long one is cut, on a
    /// character's boundary.
    #[test]
    fn long_help_is_cut() {
        let text = format!("# HELP big {}\nbig 1\nbig{{i=\"2\"}} 2\n", "é".repeat(4000));
        let mut samples = Samples::new(0);
        parse(&text, Format::Text, 10, &mut samples);
        assert_eq!(samples.out.len(), 2);
        assert!(samples.out.iter().all(|s| s.help.len() == MAX_HELP_BYTES));
    }

    #[test]
    fn samples_past_the_limit_are_dropped_and_counted() {
        let mut samples = Samples::new(0);
        let parsed = parse("a 1\nb 2\nc 3\n", Format::Text, 2, &mut samples);
        assert_eq!(samples.out.len(), 2);
        assert_eq!(parsed.dropped, 1);
    }

    #[test]
    fn instance_is_host_and_port() {
        assert_eq!(
            instance_of("http://127.0.0.1:9100/metrics"),
            "127.0.0.1:9100"
        );
        // Credentials in a target's URL are never shown.
        let secret = "http://scraper:s3cret@10.0.0.1:9100/metrics";
        assert_eq!(instance_of(secret), "10.0.0.1:9100");
        assert_eq!(shown(secret), "http://10.0.0.1:9100/metrics");
        assert_eq!(shown("http://10.0.0.1:9100"), "http://10.0.0.1:9100");
    }

    #[test]
    fn help_escapes_are_undone_in_one_pass() {
        assert_eq!(unescape(r"a\\n"), r"a\n");
        assert_eq!(unescape(r"two\nlines"), "two\nlines");
        assert_eq!(unescape(r"ends in \"), r"ends in \");
        assert_eq!(unescape(r"C:\temp"), r"C:\temp");
    }

    /// A target on a port of its own that answers every request with `head` and `body`.
    fn target(head: &'static str, body: Vec<u8>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let _ = stream.read(&mut [0u8; 1024]).unwrap();
                let length = body.len();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{head}Content-Length: {length}\r\n\r\n"
                )
                .unwrap();
                stream.write_all(&body).unwrap();
            }
        });
        url
    }

    fn scraped(url: &str) -> Result<Parsed, String> {
        let config = MetricsConfig::default();
        let scraper = Scraper::new(&config);
        scrape(&scraper.http, url, scraper.timeout, 100, 0)
    }

    /// A byte that is not UTF-8 spoils the line it is on, not the whole scrape.
    #[test]
    fn a_body_that_is_not_all_utf8_is_scraped() {
        let url = target("", b"up 1\nlatin1{name=\"caf\xe9\"} 2\n".to_vec());
        let parsed = scraped(&url).unwrap();
        assert_eq!(parsed.out.len(), 2);
        assert_eq!(parsed.out[1].labels["name"], "caf\u{fffd}");
        assert_eq!(parsed.out[1].labels["instance"], instance_of(&url));
    }

    /// A gzip answer is read (the agent asks for one); an answer of which no line is a sample
    /// (a web page) is a failed scrape, not a target up with no samples.
    #[test]
    fn gzip_is_read_and_a_page_is_a_failure() {
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(b"# TYPE gz counter\ngz 7\n").unwrap();
        let url = target("Content-Encoding: gzip\r\n", gzip.finish().unwrap());
        let parsed = scraped(&url).unwrap();
        assert_eq!(
            (parsed.out[0].name.as_str(), parsed.out[0].value),
            ("gz", 7.0)
        );
        let page = b"<html>\n<body>metrics are elsewhere</body>\n</html>\n".to_vec();
        let error = scraped(&target("Content-Type: text/html\r\n", page)).err();
        assert!(error.unwrap().contains("not Prometheus text"));
    }

    /// OpenMetrics families own their suffixed samples: a counter `x` its `x_total`.
    #[test]
    fn openmetrics_families_type_their_samples() {
        let text = "# TYPE om_requests counter\n# HELP om_requests Requests.\n\
                    om_requests_total 17 1700000000.123\nom_requests_created 1700000000\n\
                    # TYPE om info\nom_info{version=\"1.2\"} 1\n\
                    # TYPE om_state stateset\nom_state{om_state=\"a\"} 1\n\
                    # TYPE lat histogram\n\
                    lat_bucket{le=\"+Inf\"} 2 # {trace_id=\"x\"} 0.5 1700000000\n\
                    lat_created 5\n# EOF\n";
        let mut samples = Samples::new(0);
        let parsed = parse(text, Format::OpenMetrics, 100, &mut samples);
        assert_eq!(parsed.bad_lines, 0);
        let kinds: Vec<(&str, Kind, &str)> = samples
            .out
            .iter()
            .map(|s| (s.name.as_str(), s.kind, s.help.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("om_requests_total", Kind::Counter, "Requests."),
                ("om_requests_created", Kind::Gauge, "Requests."),
                ("om_info", Kind::Gauge, ""),
                ("om_state", Kind::Gauge, ""),
                ("lat_bucket", Kind::Histogram, ""),
                ("lat_created", Kind::Gauge, ""),
            ]
        );
        // OpenMetrics timestamps are in seconds.
        assert_eq!(samples.out[0].timestamp, 1_700_000_000_123);
        assert_eq!(samples.out[4].timestamp, 0);
    }

    /// Names Prometheus refuses, and a label named twice, are unreadable lines, counted.
    #[test]
    fn invalid_names_and_repeated_labels_are_bad_lines() {
        let text = "0starts_with_digit 3\nbad_label{0a=\"1\"} 3\n\
                    label_dup{a=\"1\",a=\"2\"} 3\ncolon_label{a:b=\"1\"} 1\nok:name{a=\"1\"} 1\n";
        let mut samples = Samples::new(0);
        let parsed = parse(text, Format::Text, 100, &mut samples);
        assert_eq!(parsed.bad_lines, 4);
        assert_eq!(samples.out.len(), 1);
        assert_eq!(samples.out[0].name, "ok:name");
    }

    /// A target that takes the connection and never answers costs its own samples one timeout,
    /// not the others': theirs are in while it is still waited for. Silent targets are waited
    /// for together, and the round ends within the timeout: those still waiting for their turn
    /// then are not scraped this round.
    #[tokio::test]
    async fn silent_targets_hold_back_only_themselves() {
        let silent: Vec<std::net::TcpListener> = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let answering = target("", b"up 1\n".to_vec());
        let mut targets = vec![answering.clone()];
        targets.extend(
            silent
                .iter()
                .map(|l| format!("http://{}/metrics", l.local_addr().unwrap())),
        );
        let config = MetricsConfig {
            interval_ms: 1000,
            targets,
            ..Default::default()
        };
        let scraper = Scraper::new(&config);
        let mut scrapes = JoinSet::new();
        let started = std::time::Instant::now();
        scraper.start_round(&mut scrapes);
        let first = scrapes.join_next().await.unwrap().unwrap();
        assert_eq!(first.target, answering);
        assert!(first.samples.is_ok());
        let (mut waited, mut queued) = (0, 0);
        while let Some(scraped) = scrapes.join_next().await {
            let error = scraped.unwrap().samples.err().unwrap();
            if error.starts_with("no answer within") {
                waited += 1;
            } else {
                assert!(error.starts_with("not scraped within 900 ms"), "{error}");
                queued += 1;
            }
        }
        // The answering target gives its turn to a fourth silent one.
        assert_eq!((waited, queued), (4, 1));
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "the round took {:?}",
            started.elapsed()
        );
    }
}
