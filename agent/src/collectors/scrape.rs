//! Samples from Prometheus text endpoints (format 0.0.4), scraped every interval. Each line is
//! one sample; its family's `# TYPE` and `# HELP` travel with it, so the metrics view can expose
//! it again as it was. A line that cannot be read is skipped and counted, never the whole scrape.

use std::collections::HashMap;
use std::time::Duration;

use super::{Kind, Samples};
use crate::config::MetricsConfig;
use crate::shipper::Shipper;

pub struct Scraper {
    http: ureq::Agent,
    targets: Vec<String>,
    max_samples: usize,
}

/// Largest scrape body read; a bigger one is an error, as Prometheus's body_size_limit makes it.
const MAX_BODY_BYTES: u64 = 16 << 20;
/// The most of a HELP text kept: it goes into every sample of its family.
const MAX_HELP_BYTES: usize = 1024;

/// Targets scraped at once: each holds its body (up to `MAX_BODY_BYTES`) until it is parsed.
const PARALLEL_SCRAPES: usize = 4;

impl Scraper {
    pub fn new(config: &MetricsConfig) -> Self {
        // A scrape must end before the next round starts.
        let timeout = Duration::from_millis(config.interval_ms.min(10_000));
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self {
            http,
            targets: config.targets.clone(),
            max_samples: config.max_samples_per_target,
        }
    }

    /// Scrapes every target, `PARALLEL_SCRAPES` at a time, so a target that does not answer
    /// costs the round one timeout rather than one per target; the result of each, by target.
    pub fn collect(
        &mut self,
        samples: &mut Samples,
        shipper: &Shipper,
    ) -> Vec<(String, Result<(), String>)> {
        let mut results = Vec::new();
        for targets in self.targets.chunks(PARALLEL_SCRAPES) {
            let bodies: Vec<Result<String, String>> = std::thread::scope(|scope| {
                let fetches: Vec<_> = targets
                    .iter()
                    .map(|target| scope.spawn(|| self.fetch(target)))
                    .collect();
                fetches
                    .into_iter()
                    .map(|fetch| {
                        fetch
                            .join()
                            .unwrap_or_else(|_| Err("the scrape's thread panicked".into()))
                    })
                    .collect()
            });
            for (target, body) in targets.iter().zip(bodies) {
                let result = body.map(|body| {
                    let instance = instance_of(target);
                    let parsed = parse(&body, self.max_samples, samples);
                    for sample in &mut samples.out[parsed.first..] {
                        sample
                            .labels
                            .entry("instance".into())
                            .or_insert_with(|| instance.to_owned());
                    }
                    for _ in 0..parsed.bad_lines {
                        shipper.malformed("prometheus", "bad_line");
                    }
                    for _ in 0..parsed.dropped {
                        shipper.malformed("prometheus", "too_many_samples");
                    }
                });
                results.push((shown(target), result));
            }
        }
        results
    }

    fn fetch(&self, target: &str) -> Result<String, String> {
        let mut response = self
            .http
            .get(target)
            .header("Accept", "text/plain;version=0.0.4")
            .call()
            .map_err(|e| e.to_string())?;
        // A byte that is not UTF-8 spoils its line, not the scrape.
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
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

/// What parsing one scrape gave: where its samples start, lines skipped, samples over the limit.
struct Parsed {
    first: usize,
    bad_lines: usize,
    dropped: usize,
}

fn parse(text: &str, max_samples: usize, samples: &mut Samples) -> Parsed {
    let first = samples.out.len();
    let mut types: HashMap<&str, Kind> = HashMap::new();
    let mut helps: HashMap<&str, String> = HashMap::new();
    let (mut bad_lines, mut dropped, mut kept) = (0, 0, 0);
    for line in text.lines() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    types.insert(name, kind_of(kind.trim()));
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
        let Some((name, labels, value)) = sample_line(line) else {
            bad_lines += 1;
            continue;
        };
        if kept == max_samples {
            dropped += 1;
            continue;
        }
        kept += 1;
        let family = family_of(name, &types);
        let kind = types.get(family).copied().unwrap_or(Kind::Untyped);
        let help = helps.get(family).map_or("", String::as_str);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        samples.push(name, kind, help, &labels, value);
    }
    Parsed {
        first,
        bad_lines,
        dropped,
    }
}

fn kind_of(word: &str) -> Kind {
    match word {
        "counter" => Kind::Counter,
        "gauge" => Kind::Gauge,
        "histogram" => Kind::Histogram,
        "summary" => Kind::Summary,
        _ => Kind::Untyped,
    }
}

/// The family a sample line belongs to: `x_bucket`, `x_sum` and `x_count` belong to histogram or
/// summary `x`.
fn family_of<'a>(name: &'a str, types: &HashMap<&str, Kind>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(types.get(base), Some(Kind::Histogram | Kind::Summary)) {
                return base;
            }
        }
    }
    name
}

type Labels<'a> = Vec<(&'a str, String)>;

/// `name{label="value",...} value [timestamp]`; the scrape's own timestamp is not kept (the
/// sample carries the time it was scraped).
fn sample_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
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
            labels.push((label.trim(), value));
            inner = after;
        }
    }
    let value = rest.split_whitespace().next()?;
    Some((name, labels, value.parse().ok()?))
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
        let parsed = parse(text, 100, &mut samples);
        assert_eq!(parsed.bad_lines, 2);
        assert_eq!(parsed.dropped, 0);
        let out = &samples.out;
        assert_eq!(out.len(), 7);
        assert_eq!(out[0].name, "http_requests_total");
        assert_eq!(out[0].kind, Kind::Counter);
        assert_eq!(out[0].help, "Requests served.");
        assert_eq!(out[0].labels["path"], "/a \"b\"");
        assert_eq!(out[0].value, 1027.0);
        assert_eq!(out[0].timestamp, 42);
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
        parse(&text, 10, &mut samples);
        assert_eq!(samples.out.len(), 2);
        assert!(samples.out.iter().all(|s| s.help.len() == MAX_HELP_BYTES));
    }

    #[test]
    fn samples_past_the_limit_are_dropped_and_counted() {
        let mut samples = Samples::new(0);
        let parsed = parse("a 1\nb 2\nc 3\n", 2, &mut samples);
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

    /// A byte that is not UTF-8 spoils the line it is on, not the whole scrape.
    #[test]
    fn a_body_that_is_not_all_utf8_is_scraped() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = MetricsConfig {
            targets: vec![format!("http://{}/metrics", listener.local_addr().unwrap())],
            ..Default::default()
        };
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).unwrap();
            let body = b"up 1\nlatin1{name=\"caf\xe9\"} 2\n";
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(body).unwrap();
        });
        let mut samples = Samples::new(0);
        let results = Scraper::new(&config).collect(&mut samples, &Shipper::testing());
        server.join().unwrap();
        assert!(results[0].1.is_ok(), "{results:?}");
        assert_eq!(samples.out.len(), 2);
        assert_eq!(samples.out[1].labels["name"], "caf\u{fffd}");
    }

    /// Targets that take the connection and never answer cost a round one timeout together,
    /// not one each (three in a row would take 3 s here).
    #[test]
    fn silent_targets_are_waited_for_together() {
        let silent: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let config = MetricsConfig {
            interval_ms: 1000,
            targets: silent
                .iter()
                .map(|l| format!("http://{}/metrics", l.local_addr().unwrap()))
                .collect(),
            ..Default::default()
        };
        let shipper = Shipper::testing();
        let mut samples = Samples::new(0);
        let started = std::time::Instant::now();
        let results = Scraper::new(&config).collect(&mut samples, &shipper);
        assert!(
            results.iter().all(|(_, result)| result.is_err()),
            "{results:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "three silent targets took {:?}",
            started.elapsed()
        );
    }
}
