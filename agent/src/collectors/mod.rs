//! Metric collectors. Every `interval_ms` each collector that is on takes its samples (`cgroup`:
//! containers' cgroup v2 files, `host`: procfs and the filesystems, `scrape`: Prometheus
//! endpoints, whose answers `exposition` reads) and the agent ships them to the metrics topic, one JSON `Sample` a record, keyed by
//! host so one host's samples stay in order on one partition. The targets are scraped side by
//! side with the other collectors, and each target's samples are shipped when its scrape ends.

mod cgroup;
mod exposition;
mod host;
mod scrape;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::config::{AgentConfig, MetricsConfig};
use crate::event::now_ms;
use crate::shipper::Shipper;

/// One sample, as the metrics topic carries it: `{"name", "type", "help", "labels", "value",
/// "timestamp"}`, the timestamp in milliseconds since the epoch. A value that is not a finite
/// number is the string "NaN", "+Inf" or "-Inf", as in Prometheus's text format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub help: String,
    pub labels: BTreeMap<String, String>,
    #[serde(serialize_with = "prometheus_number")]
    pub value: f64,
    pub timestamp: i64,
}

/// The metric type of the sample's family, as Prometheus names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

fn prometheus_number<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    match *value {
        v if v.is_finite() => serializer.serialize_f64(v),
        v if v.is_nan() => serializer.serialize_str("NaN"),
        v if v > 0.0 => serializer.serialize_str("+Inf"),
        _ => serializer.serialize_str("-Inf"),
    }
}

/// Builds the samples of one collection round, all at one timestamp.
pub struct Samples {
    timestamp: i64,
    out: Vec<Sample>,
}

impl Samples {
    fn new(timestamp: i64) -> Self {
        Self {
            timestamp,
            out: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push(Sample {
            name: name.to_owned(),
            kind,
            help: help.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            timestamp: self.timestamp,
        });
    }
}

/// A collector's name and whether its round worked.
type CollectorResult = (&'static str, Result<(), String>);

/// The collectors of this machine (containers' cgroups, the host), with what they keep between
/// rounds.
struct Local {
    cgroup: Option<cgroup::CgroupCollector>,
    host: Option<host::HostCollector>,
}

impl Local {
    fn new(config: &AgentConfig) -> Self {
        let metrics = &config.metrics;
        Self {
            cgroup: metrics.cgroup.then(|| {
                cgroup::CgroupCollector::new(
                    &metrics.cgroup_root,
                    &config.docker.root,
                    &config.cri.containers,
                )
            }),
            host: metrics
                .host
                .then(|| host::HostCollector::new(&metrics.proc_root, &metrics.filesystems)),
        }
    }

    /// One round of each collector that is on: the samples, and each collector's result.
    fn collect(
        &mut self,
        timestamp: i64,
        shipper: &Shipper,
    ) -> (Vec<Sample>, Vec<CollectorResult>) {
        let mut samples = Samples::new(timestamp);
        let mut results = Vec::new();
        if let Some(cgroup) = &mut self.cgroup {
            let result = counted("cgroup", &mut samples, shipper, |s| cgroup.collect(s));
            results.push(("cgroup", result));
        }
        if let Some(host) = &mut self.host {
            let result = counted("host", &mut samples, shipper, |s| host.collect(s));
            results.push(("host", result));
        }
        (samples.out, results)
    }
}

/// The last error of each source (a collector, or one Prometheus target), so that a lasting
/// failure is logged once, not every round.
#[derive(Default)]
struct Errors(BTreeMap<String, String>);

impl Errors {
    /// Counts a source's error; logs it when it is new for its source.
    fn note(
        &mut self,
        shipper: &Shipper,
        collector: &'static str,
        source: String,
        result: Result<(), String>,
    ) {
        match result {
            Ok(()) => {
                if self.0.remove(&source).is_some() {
                    tracing::info!(collector, %source, "agent: metrics collector works again");
                }
            }
            Err(error) => {
                shipper
                    .metrics
                    .collect_errors
                    .with_label_values(&[collector])
                    .inc();
                if self.0.get(&source) != Some(&error) {
                    tracing::warn!(collector, %source, %error, "agent: metrics collector failed");
                    self.0.insert(source, error);
                }
            }
        }
    }
}

/// Runs one collector, counting the samples it added.
fn counted<T>(
    collector: &'static str,
    samples: &mut Samples,
    shipper: &Shipper,
    collect: impl FnOnce(&mut Samples) -> T,
) -> T {
    let before = samples.out.len();
    let result = collect(samples);
    shipper
        .metrics
        .samples_collected
        .with_label_values(&[collector])
        .inc_by((samples.out.len() - before) as u64);
    result
}

/// Collects every `interval_ms` and ships the samples, until the agent stops. This machine's
/// samples go first; each target's follow as its scrape ends, so a slow target holds back only
/// its own. What a round learns (a target up or down, an error) is noted here, on the task the
/// agent stops at a reload: a scrape of the old configuration still running then reports nothing.
pub async fn run(config: AgentConfig, shipper: Arc<Shipper>) -> anyhow::Result<()> {
    let MetricsConfig {
        interval_ms, topic, ..
    } = config.metrics.clone();
    let mut local = Local::new(&config);
    let scraper =
        (!config.metrics.targets.is_empty()).then(|| scrape::Scraper::new(&config.metrics));
    let mut errors = Errors::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let timestamp = now_ms();
        let mut scrapes = tokio::task::JoinSet::new();
        if let Some(scraper) = &scraper {
            scraper.start_round(&mut scrapes);
        }
        if local.cgroup.is_some() || local.host.is_some() {
            let round = shipper.clone();
            let (back, (samples, results)) = tokio::task::spawn_blocking(move || {
                let collected = local.collect(timestamp, &round);
                (local, collected)
            })
            .await?;
            local = back;
            for (collector, result) in results {
                errors.note(&shipper, collector, collector.to_owned(), result);
            }
            ship(&shipper, &topic, samples).await?;
        }
        while let Some(scraped) = scrapes.join_next().await {
            let scrape::Scraped { target, samples } = scraped?;
            let up = shipper
                .metrics
                .scrape_target_up
                .with_label_values(&[&target]);
            up.set(i64::from(samples.is_ok()));
            let samples = match samples {
                Ok(samples) => samples,
                Err(error) => {
                    errors.note(&shipper, "prometheus", target, Err(error));
                    continue;
                }
            };
            errors.note(&shipper, "prometheus", target, Ok(()));
            for _ in 0..samples.bad_lines {
                shipper.malformed("prometheus", "bad_line");
            }
            for _ in 0..samples.dropped {
                shipper.malformed("prometheus", "too_many_samples");
            }
            shipper
                .metrics
                .samples_collected
                .with_label_values(&["prometheus"])
                .inc_by(samples.out.len() as u64);
            ship(&shipper, &topic, samples.out).await?;
        }
    }
}

/// Ships samples to the metrics topic, each labelled with this agent's `host`.
async fn ship(shipper: &Shipper, topic: &str, mut samples: Vec<Sample>) -> anyhow::Result<()> {
    for sample in &mut samples {
        if let Some(theirs) = sample.labels.insert("host".into(), shipper.host.clone()) {
            // As Prometheus does with a target's label that clashes with its own.
            sample.labels.insert("exported_host".into(), theirs);
        }
        let payload = serde_json::to_vec(sample).expect("a sample serializes");
        shipper
            .output
            .send(topic, shipper.host.as_bytes(), &payload, now_ms(), None)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_serialize_as_the_contract_says() {
        let mut samples = Samples::new(1_000);
        samples.push("up", Kind::Gauge, "", &[("job", "x")], 1.0);
        samples.push("q", Kind::Summary, "h", &[], f64::NAN);
        samples.push("b", Kind::Histogram, "", &[], f64::INFINITY);
        let json: Vec<serde_json::Value> = samples
            .out
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(
            json[0],
            serde_json::json!({"name":"up","type":"gauge","labels":{"job":"x"},"value":1.0,"timestamp":1000})
        );
        assert_eq!(json[1]["value"], "NaN");
        assert_eq!(json[1]["help"], "h");
        assert_eq!(json[2]["value"], "+Inf");
    }
}
