//! The Prometheus exposition formats, read line by line: the text format (0.0.4) and OpenMetrics.
//! Each line is one sample; its family's `# TYPE` and `# HELP` travel with it, so the metrics view
//! can expose it again as it was. A line that cannot be read is skipped and counted, never the
//! whole scrape.

use std::collections::HashMap;

use super::{Kind, Sample, Samples};

/// The most of a HELP text kept: it goes into every sample of its family.
const MAX_HELP_BYTES: usize = 1024;

/// What reading one scrape gave: its samples, lines skipped, samples over the limit.
pub struct Parsed {
    pub out: Vec<Sample>,
    pub bad_lines: usize,
    pub dropped: usize,
}

/// Reads the samples of `text` into `samples`; `out` is left empty, for the caller to fill.
pub fn parse(text: &str, format: Format, max_samples: usize, samples: &mut Samples) -> Parsed {
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
pub enum Format {
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
        // As Prometheus reads them: whole milliseconds in the text format, seconds (a float)
        // in OpenMetrics.
        (Some(ms), Format::Text) => Some(ms.parse::<i64>().ok()?),
        (Some(seconds), Format::OpenMetrics) => {
            let seconds = seconds.parse::<f64>().ok().filter(|s| s.is_finite())?;
            Some((seconds * 1000.0).round() as i64)
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
    fn help_escapes_are_undone_in_one_pass() {
        assert_eq!(unescape(r"a\\n"), r"a\n");
        assert_eq!(unescape(r"two\nlines"), "two\nlines");
        assert_eq!(unescape(r"ends in \"), r"ends in \");
        assert_eq!(unescape(r"C:\temp"), r"C:\temp");
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

    /// Names Prometheus refuses, a label named twice, and a text-format timestamp that is not
    /// whole milliseconds are unreadable lines, counted.
    #[test]
    fn invalid_names_and_repeated_labels_are_bad_lines() {
        let text = "0starts_with_digit 3\nbad_label{0a=\"1\"} 3\n\
                    label_dup{a=\"1\",a=\"2\"} 3\ncolon_label{a:b=\"1\"} 1\nok:name{a=\"1\"} 1\n\
                    fraction_ms 1 1700000000000.5\n";
        let mut samples = Samples::new(0);
        let parsed = parse(text, Format::Text, 100, &mut samples);
        assert_eq!(parsed.bad_lines, 5);
        assert_eq!(samples.out.len(), 1);
        assert_eq!(samples.out[0].name, "ok:name");
    }
}
