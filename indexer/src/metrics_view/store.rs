//! The latest sample of every series, and the Prometheus text exposition of them.
//!
//! A series is its name and labels. A sample older than the one held (a replay, or an agent
//! re-sending) is ignored, so a counter never seems to reset when it did not; a counter that
//! really reset is shown as it is, lower, which Prometheus's `rate()` reads as a reset.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// One sample as the agents ship it (see the agent's `collectors::Sample`).
#[derive(Debug, Deserialize)]
struct WireSample {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    help: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    value: Value,
    timestamp: i64,
}

/// Why a record was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    InvalidJson,
    BadName,
    BadValue,
    /// Older than the sample held for the series.
    OutOfOrder,
    /// The store holds `max_series` already, or `MAX_BYTES` of names and labels.
    TooManySeries,
    /// Its family is held under another type that cannot share it (a histogram's name taken by
    /// a counter): one family has one `# TYPE`.
    TypeConflict,
}

impl Refused {
    pub const ALL: [Refused; 6] = [
        Refused::InvalidJson,
        Refused::BadName,
        Refused::BadValue,
        Refused::OutOfOrder,
        Refused::TooManySeries,
        Refused::TypeConflict,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::InvalidJson => "invalid_json",
            Refused::BadName => "bad_name",
            Refused::BadValue => "bad_value",
            Refused::OutOfOrder => "out_of_order",
            Refused::TooManySeries => "too_many_series",
            Refused::TypeConflict => "type_conflict",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    /// `x` for `x_bucket`, `x_sum` and `x_count` of histogram or summary `x`: the exposition
    /// keeps a family's lines together, in key order.
    family: String,
    name: String,
    labels: BTreeMap<String, String>,
}

struct Latest {
    value: f64,
    timestamp: i64,
    received: Instant,
}

/// What a family's series share, held once for all of them.
struct Family {
    kind: &'static str,
    help: String,
    series: usize,
}

pub struct SeriesStore {
    families: BTreeMap<String, Family>,
    series: BTreeMap<SeriesKey, Latest>,
    max_series: usize,
    /// Bytes of the series' names and labels (`SeriesKey::bytes`), and the most they may be.
    bytes: usize,
    max_bytes: usize,
}

/// What the series' names and labels may take together: a label may be 1 KiB, so the count of
/// series alone did not bound them (64 labels of 2 KiB each, 200 000 times).
const MAX_BYTES: usize = 256 << 20;

impl SeriesKey {
    fn bytes(&self) -> usize {
        self.family.len()
            + self.name.len()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// How far ahead of this host's clock a held sample may be and still hold back older ones.
const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;

/// Labels one sample may carry, and the longest name or value: a record is bounded.
const MAX_LABELS: usize = 64;
const MAX_TEXT: usize = 1024;

impl SeriesStore {
    pub fn new(max_series: usize) -> Self {
        Self {
            families: BTreeMap::new(),
            series: BTreeMap::new(),
            max_series,
            bytes: 0,
            max_bytes: MAX_BYTES,
        }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Takes one record of the metrics topic.
    pub fn apply(&mut self, payload: &[u8], now: Instant) -> Result<(), Refused> {
        let sample: WireSample =
            serde_json::from_slice(payload).map_err(|_| Refused::InvalidJson)?;
        if !valid_name(&sample.name, true)
            || sample.labels.len() > MAX_LABELS
            || sample
                .labels
                .iter()
                .any(|(k, v)| !valid_name(k, false) || k.starts_with("__") || v.len() > MAX_TEXT)
        {
            return Err(Refused::BadName);
        }
        let value = match &sample.value {
            Value::Number(n) => n.as_f64().ok_or(Refused::BadValue)?,
            Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                _ => return Err(Refused::BadValue),
            },
            _ => return Err(Refused::BadValue),
        };
        let kind = match sample.kind.as_str() {
            "counter" => "counter",
            "gauge" => "gauge",
            "histogram" => "histogram",
            "summary" => "summary",
            _ => "untyped",
        };
        let key = SeriesKey {
            family: family_of(&sample.name, kind).to_owned(),
            name: sample.name,
            labels: sample.labels,
        };
        if !self.families.contains_key(&key.family) && self.clashes(&key.family, kind) {
            return Err(Refused::TypeConflict);
        }
        // Counter here, gauge there: Prometheus takes either as untyped, so both sources'
        // series are kept under a family that says neither, once this sample is taken (the
        // first type held took it whole, and which came first changed at every restart).
        let mut untyped = false;
        if let Some(family) = self.families.get(&key.family) {
            let scalar = |kind: &str| matches!(kind, "counter" | "gauge" | "untyped");
            if family.kind != kind {
                if !(scalar(family.kind) && scalar(kind)) {
                    return Err(Refused::TypeConflict);
                }
                untyped = true;
            }
        }
        let latest = Latest {
            value,
            timestamp: sample.timestamp,
            received: now,
        };
        let full =
            self.series.len() >= self.max_series || self.bytes + key.bytes() > self.max_bytes;
        match self.series.get_mut(&key) {
            // Older than what is held, unless what is held is from the future (a clock that
            // stepped back): that would hold the series until it expired.
            Some(held)
                if sample.timestamp < held.timestamp
                    && !(held.timestamp > crate::consumer::now_ms() + FUTURE_SLACK_MS
                        && sample.timestamp <= crate::consumer::now_ms() + FUTURE_SLACK_MS) =>
            {
                return Err(Refused::OutOfOrder)
            }
            Some(held) => *held = latest,
            None if full => return Err(Refused::TooManySeries),
            None => {
                self.families
                    .entry(key.family.clone())
                    .or_insert(Family {
                        kind,
                        help: String::new(),
                        series: 0,
                    })
                    .series += 1;
                self.bytes += key.bytes();
                self.series.insert(key.clone(), latest);
            }
        }
        if let Some(family) = self.families.get_mut(&key.family) {
            if untyped {
                family.kind = "untyped";
            }
            if family.help != sample.help {
                family.help = sample.help.chars().take(MAX_TEXT).collect();
            }
        }
        Ok(())
    }

    /// Whether a new family would write a name that a held one writes too: histogram `x` and
    /// counter `x_count` would both expose `x_count`, twice under two `# TYPE`s, and Prometheus
    /// would keep one of the two values.
    fn clashes(&self, family: &str, kind: &str) -> bool {
        let writes_a_held_name = owned_suffixes(kind)
            .iter()
            .any(|suffix| self.families.contains_key(&format!("{family}{suffix}")));
        let written_by_a_held_family = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            family
                .strip_suffix(suffix)
                .and_then(|base| self.families.get(base))
                .is_some_and(|held| owned_suffixes(held.kind).contains(suffix))
        });
        writes_a_held_name || written_by_a_held_family
    }

    /// Forgets the series not heard from for `after`; how many went.
    pub fn expire(&mut self, now: Instant, after: Duration) -> usize {
        let before = self.series.len();
        let (families, bytes) = (&mut self.families, &mut self.bytes);
        self.series.retain(|key, latest| {
            let keep = now.saturating_duration_since(latest.received) < after;
            if !keep {
                if let Some(family) = families.get_mut(&key.family) {
                    family.series -= 1;
                }
                *bytes -= key.bytes();
            }
            keep
        });
        families.retain(|_, family| family.series > 0);
        before - self.series.len()
    }

    /// Every series in the Prometheus text format (0.0.4), a family's lines together under its
    /// `# HELP` and `# TYPE`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = None;
        for (key, latest) in &self.series {
            if family != Some(&key.family) {
                family = Some(&key.family);
                let (kind, help) = match self.families.get(&key.family) {
                    Some(held) if !held.help.is_empty() => (held.kind, held.help.as_str()),
                    held => (
                        held.map_or("untyped", |held| held.kind),
                        "Shipped by a Sluice agent",
                    ),
                };
                let help = help.replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(out, "# HELP {} {help}", key.family);
                let _ = writeln!(out, "# TYPE {} {kind}", key.family);
            }
            out.push_str(&key.name);
            if !key.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in key.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let value = value
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{name}=\"{value}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", number(latest.value));
        }
        out
    }
}

fn number(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "+Inf".into(),
        v if v == f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without colons, a label name.
fn valid_name(name: &str, colons: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic()
            || c == '_'
            || (colons && c == ':')
            || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    name.len() <= MAX_TEXT
        && chars.next().is_some_and(|c| ok(c, true))
        && chars.all(|c| ok(c, false))
}

/// The names a family of `kind` writes beside its own, by their suffix.
fn owned_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    }
}

fn family_of<'a>(name: &'a str, kind: &str) -> &'a str {
    owned_suffixes(kind)
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, kind: &str, labels: &str, value: &str, ts: i64) -> Vec<u8> {
        format!(
            r#"{{"name":"{name}","type":"{kind}","labels":{labels},"value":{value},"timestamp":{ts}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn keeps_the_latest_sample_and_shows_resets() {
        let mut store = SeriesStore::new(10);
        let now = Instant::now();
        let labels = r#"{"host":"a","container_name":"web"}"#;
        let name = "sluice_container_cpu_usage_seconds_total";
        store
            .apply(&sample(name, "counter", labels, "10.5", 1), now)
            .unwrap();
        store
            .apply(&sample(name, "counter", labels, "12", 2), now)
            .unwrap();
        assert_eq!(
            store.apply(&sample(name, "counter", labels, "11", 1), now),
            Err(Refused::OutOfOrder)
        );
        assert!(store.render().contains(
            "sluice_container_cpu_usage_seconds_total{container_name=\"web\",host=\"a\"} 12\n"
        ));
        // A sample from a day ahead (a clock since stepped back) does not hold the series.
        let skewed = r#"{"host":"skewed"}"#;
        let ahead = crate::consumer::now_ms() + 86_400_000;
        store
            .apply(&sample("skew", "gauge", skewed, "100", ahead), now)
            .unwrap();
        store
            .apply(
                &sample("skew", "gauge", skewed, "7", crate::consumer::now_ms()),
                now,
            )
            .unwrap();
        assert!(store.render().contains("skew{host=\"skewed\"} 7\n"));
        // The container restarted: its counter starts again, and the view says so.
        store
            .apply(&sample(name, "counter", labels, "0.5", 3), now)
            .unwrap();
        let text = store.render();
        assert!(text.contains("# TYPE sluice_container_cpu_usage_seconds_total counter\n"));
        assert!(
            text.ends_with("{container_name=\"web\",host=\"a\"} 0.5\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_lines_stay_under_one_family() {
        let mut store = SeriesStore::new(10);
        let now = Instant::now();
        for (name, labels, value) in [
            ("lat_seconds_bucket", r#"{"le":"0.1"}"#, "1"),
            ("lat_seconds_bucket", r#"{"le":"+Inf"}"#, "2"),
            ("lat_seconds_count", "{}", "2"),
            ("lat_seconds_sum", "{}", "0.3"),
            ("other", "{}", r#""NaN""#),
        ] {
            store
                .apply(&sample(name, "histogram", labels, value, 1), now)
                .unwrap();
        }
        let text = store.render();
        assert_eq!(
            text.matches("# TYPE lat_seconds histogram").count(),
            1,
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("other NaN\n"));
    }

    #[test]
    fn bad_samples_are_refused_and_the_store_is_bounded() {
        let mut store = SeriesStore::new(1);
        let now = Instant::now();
        assert_eq!(store.apply(b"not json", now), Err(Refused::InvalidJson));
        assert_eq!(
            store.apply(&sample("bad name", "gauge", "{}", "1", 1), now),
            Err(Refused::BadName)
        );
        assert_eq!(
            store.apply(&sample("x", "gauge", r#"{"__name__":"y"}"#, "1", 1), now),
            Err(Refused::BadName)
        );
        assert_eq!(
            store.apply(&sample("x", "gauge", "{}", r#""many""#, 1), now),
            Err(Refused::BadValue)
        );
        store
            .apply(&sample("x", "gauge", "{}", "1", 1), now)
            .unwrap();
        assert_eq!(
            store.apply(&sample("y", "gauge", "{}", "1", 1), now),
            Err(Refused::TooManySeries)
        );
    }

    #[test]
    fn series_not_heard_from_expire() {
        let mut store = SeriesStore::new(10);
        let start = Instant::now();
        store
            .apply(&sample("old", "gauge", "{}", "1", 1), start)
            .unwrap();
        let later = start + Duration::from_secs(60);
        store
            .apply(&sample("new", "gauge", "{}", "1", 2), later)
            .unwrap();
        assert_eq!(store.expire(later, Duration::from_secs(30)), 1);
        assert!(!store.render().contains("old"));
        assert!(store.render().contains("new 1\n"));
    }

    /// Long labels fill the store before the series count does; expired series make room.
    #[test]
    fn names_and_labels_are_bounded_in_bytes() {
        let mut store = SeriesStore::new(100);
        store.max_bytes = 3000;
        let now = Instant::now();
        let long = |n: usize| format!(r#"{{"path":"{}{n}"}}"#, "x".repeat(1000));
        store
            .apply(&sample("f", "gauge", &long(1), "1", 1), now)
            .unwrap();
        store
            .apply(&sample("f", "gauge", &long(2), "1", 1), now)
            .unwrap();
        assert_eq!(
            store.apply(&sample("f", "gauge", &long(3), "1", 1), now),
            Err(Refused::TooManySeries)
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(store.expire(later, Duration::from_secs(30)), 2);
        assert_eq!(store.bytes, 0);
        store
            .apply(&sample("f", "gauge", &long(3), "1", 2), later)
            .unwrap();
    }

    /// Two agents (or targets) shipping one family as a counter and as a gauge: both are kept,
    /// the family untyped until its series have all expired. A histogram's name taken by a
    /// counter is refused: its series could not be told apart.
    #[test]
    fn a_family_keeps_one_type() {
        let mut store = SeriesStore::new(10);
        let start = Instant::now();
        let a = r#"{"host":"a"}"#;
        let b = r#"{"host":"b"}"#;
        store
            .apply(&sample("requests", "counter", a, "5", 1), start)
            .unwrap();
        store
            .apply(&sample("requests", "gauge", b, "7", 1), start)
            .unwrap();
        let text = store.render();
        assert!(text.contains("# TYPE requests untyped\n"), "{text}");
        assert!(text.contains("requests{host=\"a\"} 5\n"), "{text}");
        assert!(text.contains("requests{host=\"b\"} 7\n"), "{text}");
        store
            .apply(&sample("latency", "histogram", a, "1", 1), start)
            .unwrap();
        assert_eq!(
            store.apply(&sample("latency", "counter", b, "5", 1), start),
            Err(Refused::TypeConflict)
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(store.expire(later, Duration::from_secs(30)), 3);
        store
            .apply(&sample("requests", "gauge", b, "5", 2), later)
            .unwrap();
        assert!(store.render().contains("# TYPE requests gauge\n"));
    }

    /// A histogram's or summary's suffixed names are taken as much as its own: a family that
    /// would write one of them, either way round, is refused, so no series is exposed twice.
    #[test]
    fn suffixed_names_are_not_written_twice() {
        let mut store = SeriesStore::new(20);
        let now = Instant::now();
        let mut apply = |name: &str, kind: &str, labels: &str| {
            store.apply(&sample(name, kind, labels, "1", 1), now)
        };
        let quantile = r#"{"quantile":"0.5"}"#;
        apply("lat_bucket", "histogram", r#"{"le":"1"}"#).unwrap();
        apply("lat_count", "histogram", "{}").unwrap();
        for (name, kind) in [("lat_count", "counter"), ("lat_bucket", "gauge")] {
            assert_eq!(apply(name, kind, "{}"), Err(Refused::TypeConflict));
        }
        apply("rpc_sum", "gauge", "{}").unwrap();
        assert_eq!(
            apply("rpc", "summary", quantile),
            Err(Refused::TypeConflict)
        );
        // A summary writes no `_bucket`: a gauge of that name is its own family.
        apply("q", "summary", quantile).unwrap();
        apply("q_bucket", "gauge", "{}").unwrap();
        let text = store.render();
        assert_eq!(text.matches("lat_count").count(), 1, "{text}");
        assert!(!text.contains("rpc{"), "{text}");
    }
}
