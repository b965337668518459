//! Samples from Prometheus endpoints, scraped every interval, four at a time, each round within
//! the scrape timeout; what they answer is read by `exposition`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::exposition::{parse, Format, Parsed};
use super::Samples;
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

#[cfg(test)]
mod tests {
    use super::*;

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
