//! What a line of a followed file holds. Plain files: the line is the message. Docker's
//! json-file driver: `{"log":"...\n","stream":"stdout","time":"..."}`, a line longer than 16 KiB
//! split into parts whose `log` does not end in a newline. Kubernetes CRI logs:
//! `<time> <stream> <P|F> <message>`, `P` for a part of a longer line. Parts are joined (up to
//! `max_bytes`) into one event that spans them all in the file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::tailer::Line;
use crate::containers::{DockerContainers, KubeletLinks, PodContainer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Docker,
    Cri,
}

impl Format {
    /// The input label its lines are counted under.
    pub fn input(self) -> &'static str {
        match self {
            Format::Plain => "file",
            Format::Docker => "docker",
            Format::Cri => "cri",
        }
    }
}

/// A decoded line: the message, and what the format said about it. Borrowed from the read
/// buffer unless it had to be unescaped or joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    pub line: Line<'a>,
    pub stream: Option<Cow<'a, str>>,
    pub time: Option<Cow<'a, str>>,
}

impl Decoded<'_> {
    /// The event with parts of its own, to be kept past the next read.
    pub fn into_owned(self) -> Decoded<'static> {
        Decoded {
            line: self.line.into_owned(),
            stream: self.stream.map(|s| Cow::Owned(s.into_owned())),
            time: self.time.map(|t| Cow::Owned(t.into_owned())),
        }
    }
}

/// Decodes a file's lines and joins their parts; one per followed file.
pub struct Decoder {
    format: Format,
    max_bytes: usize,
    /// Parts waiting for the rest of their line, one per stream: the runtime writes stdout and
    /// stderr independently, so their parts interleave in the file.
    partials: Vec<Decoded<'static>>,
}

/// Streams with a part waiting at once, at most: a file naming more (Docker's `stream` is any
/// string) has its oldest waiting part shipped as it is, marked truncated.
const MAX_STREAMS: usize = 4;

#[derive(Deserialize)]
struct DockerLine {
    log: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

impl Decoder {
    pub fn new(format: Format, max_bytes: usize) -> Self {
        Self {
            format,
            max_bytes,
            partials: Vec::new(),
        }
    }

    /// Takes one line of the file; returns the event it completes, if any, and the defect it
    /// had (the line is then shipped as it was).
    pub fn push<'a>(&mut self, line: Line<'a>) -> (Option<Decoded<'a>>, Option<&'static str>) {
        let (part, complete, defect) = match self.format {
            Format::Plain => (raw(line), true, None),
            Format::Docker => docker(line),
            Format::Cri => cri(line),
        };
        let waiting = self.partials.iter().position(|p| p.stream == part.stream);
        let joined = match waiting.map(|i| self.partials.remove(i)) {
            Some(mut first) => {
                let room = self.max_bytes.saturating_sub(first.line.bytes.len());
                if part.line.bytes.len() > room || part.line.truncated {
                    first.line.truncated = true;
                }
                let take = part.line.bytes.len().min(room);
                first
                    .line
                    .bytes
                    .to_mut()
                    .extend_from_slice(&part.line.bytes[..take]);
                first.line.end = part.line.end;
                first
            }
            None => part,
        };
        if complete {
            return (Some(joined), defect);
        }
        self.partials.push(joined.into_owned());
        if self.partials.len() > MAX_STREAMS {
            let mut oldest = self.partials.remove(0);
            oldest.line.truncated = true;
            return (Some(oldest), defect);
        }
        (None, defect)
    }

    /// Where the first part waiting for the rest of its line starts: the checkpoint must not
    /// pass it.
    pub fn holding(&self) -> Option<u64> {
        self.partials.iter().map(|p| p.line.start).min()
    }

    /// The parts still waiting, marked truncated: their file is closed, the rest never comes.
    pub fn take_partials(&mut self) -> Vec<Decoded<'static>> {
        let mut partials = std::mem::take(&mut self.partials);
        for part in &mut partials {
            part.line.truncated = true;
        }
        partials
    }
}

fn raw(line: Line<'_>) -> Decoded<'_> {
    Decoded {
        line,
        stream: None,
        time: None,
    }
}

/// (the part, whether it ends its line, the defect).
fn docker(mut line: Line<'_>) -> (Decoded<'_>, bool, Option<&'static str>) {
    if line.truncated {
        // A cut JSON line cannot be parsed: shipped as it is.
        return (raw(line), true, None);
    }
    let Ok(parsed) = serde_json::from_slice::<DockerLine>(&line.bytes) else {
        return (raw(line), true, Some("invalid_json"));
    };
    let mut log = parsed.log;
    let complete = log.ends_with('\n');
    if complete {
        log.pop();
        if log.ends_with('\r') {
            log.pop();
        }
    }
    line.bytes = Cow::Owned(log.into_bytes());
    let (time, defect) = checked_time(parsed.time.map(Cow::Owned));
    let decoded = Decoded {
        line,
        stream: parsed.stream.map(Cow::Owned),
        time,
    };
    (decoded, complete, defect)
}

/// The runtime's time when it has the shape of one (RFC 3339, as Docker and the CRI write it);
/// else none (the event takes the read time) and the defect.
fn checked_time(time: Option<Cow<'_, str>>) -> (Option<Cow<'_, str>>, Option<&'static str>) {
    match time {
        Some(t) if !looks_like_rfc3339(&t) => (None, Some("bad_time")),
        time => (time, None),
    }
}

/// `YYYY-MM-DDTHH:MM:SS`, then fractional seconds, then `Z` or `±HH:MM`: a check of shape
/// only, cheap enough for every line.
fn looks_like_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10)) {
        return false;
    }
    if !((at(10, b'T') || at(10, b't')) && digits(11..13) && at(13, b':') && digits(14..16)) {
        return false;
    }
    if !(at(16, b':') && digits(17..19)) {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    matches!(rest, [b'Z' | b'z'])
        || matches!(rest, [b'+' | b'-', h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()))
}

fn cri(line: Line<'_>) -> (Decoded<'_>, bool, Option<&'static str>) {
    let mut parts = line.bytes.splitn(4, |&b| b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return (raw(line), true, Some("bad_line"));
    };
    let complete = match tag.split(|&b| b == b':').next() {
        Some(b"F") => true,
        Some(b"P") => false,
        _ => return (raw(line), true, Some("bad_line")),
    };
    if !matches!(stream, b"stdout" | b"stderr") {
        return (raw(line), true, Some("bad_line"));
    }
    let time = 0..time.len();
    let stream = time.end + 1..time.end + 1 + stream.len();
    let message = (stream.end + 1 + tag.len() + 1).min(line.bytes.len())..line.bytes.len();
    let (time, defect) = checked_time(Some(text(part(&line.bytes, time))));
    let decoded = Decoded {
        stream: Some(text(part(&line.bytes, stream))),
        time,
        line: Line {
            bytes: part(&line.bytes, message),
            ..line
        },
    };
    (decoded, complete, defect)
}

/// `range` of a line's bytes, borrowed where the line is.
fn part<'a>(bytes: &Cow<'a, [u8]>, range: std::ops::Range<usize>) -> Cow<'a, [u8]> {
    match bytes {
        Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[range]),
        Cow::Owned(bytes) => Cow::Owned(bytes[range].to_vec()),
    }
}

/// Bytes as text, invalid UTF-8 replaced.
fn text(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(bytes) => String::from_utf8_lossy(bytes),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// Who wrote a followed file: the event's `source`, and its `container` where the path says.
pub struct Origin {
    pub source: String,
    pub container: Option<Value>,
}

impl Origin {
    pub fn of(
        path: &Path,
        format: Format,
        docker: &mut DockerContainers,
        kubelet: &mut KubeletLinks,
    ) -> Self {
        let dir_name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
        };
        match format {
            Format::Plain => Self::plain(path),
            // <root>/containers/<id>/<id>-json.log
            Format::Docker => {
                let Some(id) = dir_name(path.parent()) else {
                    return Self::plain(path);
                };
                let info = docker.get(&id, true).unwrap_or_default();
                let name = if info.name.is_empty() {
                    id.chars().take(12).collect()
                } else {
                    info.name.clone()
                };
                let mut container = json!({"id": id, "name": name});
                if !info.image.is_empty() {
                    container["image"] = json!(info.image);
                }
                if !info.labels.is_empty() {
                    container["labels"] = json!(info.labels);
                }
                Self {
                    source: name,
                    container: Some(container),
                }
            }
            // <root>/<namespace>_<pod>_<uid>/<container>/<restarts>.log
            Format::Cri => {
                let container_dir = path.parent();
                let (Some(name), Some(pod_dir)) = (
                    dir_name(container_dir),
                    dir_name(container_dir.and_then(Path::parent)),
                ) else {
                    return Self::plain(path);
                };
                let mut pod = pod_dir.splitn(3, '_');
                let (Some(namespace), Some(pod_name), Some(uid)) =
                    (pod.next(), pod.next(), pod.next())
                else {
                    return Self::plain(path);
                };
                let labels = BTreeMap::from([
                    ("io.kubernetes.pod.namespace", namespace),
                    ("io.kubernetes.pod.name", pod_name),
                    ("io.kubernetes.pod.uid", uid),
                ]);
                let mut container = json!({"name": name, "labels": labels});
                let pod = PodContainer {
                    namespace: namespace.to_owned(),
                    pod: pod_name.to_owned(),
                    container: name.clone(),
                };
                if let Some(id) = kubelet.id_of_log(&pod, path) {
                    container["id"] = json!(id);
                }
                Self {
                    source: format!("{namespace}/{pod_name}/{name}"),
                    container: Some(container),
                }
            }
        }
    }

    fn plain(path: &Path) -> Self {
        Self {
            source: path.to_string_lossy().into_owned(),
            container: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(start: u64, text: &str) -> Line<'_> {
        Line {
            start,
            end: start + text.len() as u64 + 1,
            bytes: Cow::Borrowed(text.as_bytes()),
            truncated: false,
        }
    }

    /// A runtime time that is not one is dropped (the event takes the read time) and counted.
    #[test]
    fn a_time_that_is_not_one_is_a_defect() {
        for good in [
            "2026-11-23T10:00:00.000000001Z",
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00.5+01:00",
        ] {
            assert!(looks_like_rfc3339(good), "{good}");
        }
        for bad in [
            "not-a-time",
            "2026-11-23",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00+1",
        ] {
            assert!(!looks_like_rfc3339(bad), "{bad}");
        }
        let (decoded, complete, defect) = docker(line(
            0,
            r#"{"log":"x\n","stream":"stdout","time":"not-a-time"}"#,
        ));
        assert!(complete);
        assert_eq!((decoded.time, defect), (None, Some("bad_time")));
        let (decoded, _, defect) = cri(line(0, "yesterday stdout F hello"));
        assert_eq!((decoded.time, defect), (None, Some("bad_time")));
        assert_eq!(&decoded.line.bytes[..], b"hello");
    }

    #[test]
    fn docker_parts_join_into_one_line() {
        let mut decoder = Decoder::new(Format::Docker, 1000);
        let first = r#"{"log":"aaaa","stream":"stdout","time":"2026-11-23T10:00:00.000000001Z"}"#;
        let second =
            r#"{"log":"bbbb\n","stream":"stdout","time":"2026-11-23T10:00:00.000000002Z"}"#;
        assert_eq!(decoder.push(line(0, first)), (None, None));
        assert_eq!(decoder.holding(), Some(0));
        let (done, defect) = decoder.push(line(first.len() as u64 + 1, second));
        let done = done.unwrap();
        assert_eq!(defect, None);
        assert_eq!(done.line.bytes, &b"aaaabbbb"[..]);
        assert_eq!(
            (done.line.start, done.line.end),
            (0, (first.len() + second.len() + 2) as u64)
        );
        assert_eq!(done.stream.as_deref(), Some("stdout"));
        assert_eq!(done.time.as_deref(), Some("2026-11-23T10:00:00.000000001Z"));
        assert_eq!(decoder.holding(), None);
        let (bad, defect) = decoder.push(line(500, "not json"));
        assert_eq!(bad.unwrap().line.bytes, &b"not json"[..]);
        assert_eq!(defect, Some("invalid_json"));
    }

    /// The runtime writes stdout and stderr independently: a stderr line between the parts of
    /// a stdout line is its own event, and the stdout parts still join. A part whose file
    /// closes before its rest is handed over, marked truncated.
    #[test]
    fn parts_join_per_stream() {
        let mut decoder = Decoder::new(Format::Cri, 1000);
        let lines = [
            decoder_line("stdout", "P aaa"),
            decoder_line("stderr", "F oops"),
            decoder_line("stdout", "F bbb"),
            decoder_line("stdout", "P ccc"),
        ];
        assert_eq!(decoder.push(line(0, &lines[0])), (None, None));
        let (err, _) = decoder.push(line(40, &lines[1]));
        let err = err.unwrap();
        assert_eq!(err.line.bytes, &b"oops"[..]);
        assert_eq!(err.stream.as_deref(), Some("stderr"));
        assert_eq!(decoder.holding(), Some(0));
        let (joined, _) = decoder.push(line(80, &lines[2]));
        assert_eq!(joined.unwrap().line.bytes, &b"aaabbb"[..]);
        assert_eq!(decoder.push(line(120, &lines[3])), (None, None));
        let left = decoder.take_partials();
        assert_eq!(left.len(), 1);
        assert!(left[0].line.truncated);
        assert_eq!(decoder.holding(), None);
    }

    fn decoder_line(stream: &str, tag_and_text: &str) -> String {
        format!("2026-11-23T10:00:00.1Z {stream} {tag_and_text}")
    }

    #[test]
    fn cri_parts_join_and_bad_lines_are_kept() {
        let mut decoder = Decoder::new(Format::Cri, 1000);
        assert_eq!(
            decoder.push(line(0, "2026-11-23T10:00:00.1Z stderr P part one, ")),
            (None, None)
        );
        let (done, _) = decoder.push(line(42, "2026-11-23T10:00:00.2Z stderr F part two"));
        let done = done.unwrap();
        assert_eq!(done.line.bytes, &b"part one, part two"[..]);
        assert_eq!(done.stream.as_deref(), Some("stderr"));
        let (kept, defect) = decoder.push(line(90, "garbage"));
        assert_eq!(kept.unwrap().line.bytes, &b"garbage"[..]);
        assert_eq!(defect, Some("bad_line"));
    }

    #[test]
    fn origins_from_paths() {
        let mut docker = DockerContainers::new("/nonexistent");
        let mut kubelet = KubeletLinks::new("/nonexistent");
        let id = "ab".repeat(32);
        let origin = Origin::of(
            Path::new(&format!("/var/lib/docker/containers/{id}/{id}-json.log")),
            Format::Docker,
            &mut docker,
            &mut kubelet,
        );
        assert_eq!(origin.source, &id[..12]);
        assert_eq!(origin.container.unwrap()["id"], id);
        let origin = Origin::of(
            Path::new("/var/log/pods/shop_web-7d9f_5f0c3a2e-8d1b/nginx/0.log"),
            Format::Cri,
            &mut docker,
            &mut kubelet,
        );
        assert_eq!(origin.source, "shop/web-7d9f/nginx");
        let container = origin.container.unwrap();
        assert_eq!(container["name"], "nginx");
        assert_eq!(container["labels"]["io.kubernetes.pod.namespace"], "shop");
        assert_eq!(
            container["labels"]["io.kubernetes.pod.uid"],
            "5f0c3a2e-8d1b"
        );
        assert!(container.get("id").is_none(), "no kubelet links here");
    }

    /// A CRI log's container id comes from the kubelet link that points at it; a link of the
    /// same container's earlier restart, pointing elsewhere, is not it.
    #[test]
    fn a_cri_log_takes_its_container_id_from_the_kubelet_link() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("pods/shop_web-7d9f_5f0c3a2e/nginx");
        let links = root.path().join("containers");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        let (old, new) = ("0a".repeat(32), "1b".repeat(32));
        for (restart, id) in [(0, &old), (1, &new)] {
            std::fs::write(logs.join(format!("{restart}.log")), "").unwrap();
            // The node's path: the agent sees the logs under another root.
            let target = format!("/var/log/pods/shop_web-7d9f_5f0c3a2e/nginx/{restart}.log");
            std::os::unix::fs::symlink(target, links.join(format!("web-7d9f_shop_nginx-{id}.log")))
                .unwrap();
        }
        let mut docker = DockerContainers::new("/nonexistent");
        let mut kubelet = KubeletLinks::new(links.to_str().unwrap());
        for (restart, id) in [(1, &new), (0, &old)] {
            let origin = Origin::of(
                &logs.join(format!("{restart}.log")),
                Format::Cri,
                &mut docker,
                &mut kubelet,
            );
            assert_eq!(origin.container.unwrap()["id"], json!(id));
        }
    }
}
