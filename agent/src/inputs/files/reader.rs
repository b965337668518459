//! The reader thread: matches the globs, reads every followed file in turn, decodes and joins
//! its lines, and hands them to the shipper; saves the checkpoints every second.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::SendTimeoutError;
use notify::{RecursiveMode, Watcher};

use super::content::Tail;
use super::format::{Decoder, Format, Origin};
use super::multiline::Joiner;
use super::notices::Notices;
use super::registry::{Found, Registry};
use super::ship::{Batch, Events};
use super::tailer::{self, Read, Tailer};
use super::watch_root;
use crate::acks::Settle;
use crate::config::FilesConfig;
use crate::containers::{DockerContainers, KubeletLinks};
use crate::shipper::Shipper;

const SAVE_EVERY: Duration = Duration::from_secs(1);
/// A file whose reads keep failing is tried at every scan, and said this often.
const READ_FAILURE_SAID_EVERY: Duration = Duration::from_secs(60);
/// How long the thread sleeps when no file had anything new and no notice came.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A file being followed: how it is read, decoded, joined, and who wrote it.
pub struct Followed {
    tailer: Tailer,
    format: Format,
    decoder: Decoder,
    joiner: Option<Joiner>,
    origin: Arc<Origin>,
    /// Until when a CRI log without its container's id looks for it again at each scan: the
    /// kubelet makes its link once the container started, maybe after its first lines.
    id_until: Instant,
}

/// How long a CRI log looks for its container's id.
const ID_WAIT: Duration = Duration::from_secs(60);

impl Followed {
    /// The checkpoint must not pass a part or a multi-line event still being assembled.
    fn hold(&self) {
        let joined = self.joiner.as_ref().and_then(Joiner::holding);
        let held = [self.decoder.holding(), joined].into_iter().flatten().min();
        self.tailer.progress.hold(held);
    }
}

pub struct Reader {
    pub config: FilesConfig,
    pub patterns: Vec<(String, Format)>,
    pub shipper: Arc<Shipper>,
    pub batches: crossbeam_channel::Sender<Batch>,
    pub registry: Registry,
    pub multiline: Option<regex::bytes::Regex>,
    pub docker: DockerContainers,
    /// The kubelet's log links, which give a CRI log its container's id.
    pub kubelet: KubeletLinks,
    pub watcher: notify::RecommendedWatcher,
    pub followed: HashMap<(u64, u64), Followed>,
    /// Files that look like a copy of one still being read: since when, and in which pass.
    pub waiting: HashMap<(u64, u64), (Instant, u64)>,
    /// Passes over the followed files so far.
    pub passes: u64,
    pub watched: HashSet<PathBuf>,
    /// The next scan is the first on a state dir without checkpoints: `read_from = "end"`
    /// applies to the files it finds, and to no file after.
    pub first_scan: bool,
    /// A matched file could not be followed yet (no whole first line, or waiting): a notice
    /// that a file grew is a reason to look again.
    pub unready: bool,
    /// Matched files that cannot be opened (permissions): said once each, and counted.
    pub unreadable: HashSet<(u64, u64)>,
    /// The paths `sluice_agent_file_bytes_behind_per_file` shows, and when it was last set.
    pub behind_shown: (HashSet<String>, Instant),
    /// When a failed read was last said.
    pub read_failure_said: Option<Instant>,
}

impl Reader {
    pub fn run(&mut self, notices: &Notices, stop: &AtomicBool) {
        let rescan_every = Duration::from_millis(self.config.rescan_interval_ms.max(100));
        let rotate_wait = Duration::from_millis(self.config.rotate_wait_ms);
        let mut last_scan: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut rescan = true;
        // A file may have grown while one could not be followed yet: scan, at most once an
        // IDLE_WAIT, for its first line.
        let mut poked = false;
        while !stop.load(Ordering::Relaxed) {
            let since_scan = last_scan.map(|t| t.elapsed());
            if rescan
                || (poked && since_scan.is_none_or(|t| t >= IDLE_WAIT))
                || since_scan.is_none_or(|t| t >= rescan_every)
            {
                rescan = false;
                poked = false;
                last_scan = Some(Instant::now());
                self.scan();
            }
            let mut busy = false;
            let mut closed = Vec::new();
            let mut failed = Vec::new();
            let keys: Vec<(u64, u64)> = self.followed.keys().copied().collect();
            for key in keys {
                let followed = self.followed.get_mut(&key).expect("followed");
                let read = followed.tailer.read(self.config.fingerprint_bytes);
                match read {
                    Ok(Read::Data) => {
                        busy = true;
                        // Rotated away but still written (a slow reload, an app that never
                        // reopens its log): closed only once it went quiet for `rotate_wait`.
                        if followed.tailer.orphaned.is_some() {
                            followed.tailer.orphaned = Some(Instant::now());
                        }
                    }
                    Ok(Read::Idle) => {
                        if followed
                            .tailer
                            .orphaned
                            .is_some_and(|since| since.elapsed() >= rotate_wait)
                        {
                            // Its last line, if it never got its newline, is handed on below.
                            followed.tailer.end();
                            closed.push(key);
                        }
                    }
                    Ok(Read::Truncated) => {
                        let tailer = &followed.tailer;
                        tracing::info!(
                            path = %tailer.path.display(),
                            identity = %tailer.identity,
                            "agent: file truncated"
                        );
                        self.registry.release(&tailer.identity, tailer.tails());
                        closed.push(key);
                        rescan = true;
                    }
                    Ok(Read::Rewritten) => {
                        let tailer = &followed.tailer;
                        tracing::info!(
                            path = %tailer.path.display(),
                            identity = %tailer.identity,
                            "agent: file rewritten in place: read again from its start"
                        );
                        // Closed, not released: no copy continues it, and a file of the same
                        // first line found later is not taken for one.
                        closed.push(key);
                        rescan = true;
                    }
                    Err(e) => {
                        // A failure of the moment (EIO, ESTALE): the file found again at a scan
                        // is read on, not taken for a new one and sent again from its start.
                        failed.push((key, e));
                    }
                }
                if self.hand_on(key).is_err() {
                    return;
                }
            }
            for key in closed {
                self.close(key);
            }
            for (key, error) in failed {
                if let Some(followed) = self.followed.get(&key) {
                    let path = followed.tailer.path.clone();
                    self.read_failed(&path, &error);
                }
                self.set_aside(key);
            }
            self.passes += 1;
            if self.hand_on_expired().is_err() {
                return;
            }
            self.note_behind();
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                self.save();
            }
            let noticed = notices.take(if busy { Duration::ZERO } else { IDLE_WAIT });
            rescan |= noticed.rescan;
            poked |= noticed.grown && self.unready;
        }
        let keys: Vec<(u64, u64)> = self.followed.keys().copied().collect();
        for key in keys {
            let _ = self.flush(key);
        }
        self.save();
        // The gauges are the agent's, which outlives this input across a reload: what it
        // followed is said no more.
        let metrics = &self.shipper.metrics;
        metrics.file_bytes_behind_per_file.reset();
        metrics.file_bytes_behind.set(0);
        metrics.files_tracked.set(0);
        metrics.files_unreadable.set(0);
    }

    /// Matches the globs: new files are followed, files whose path moved are noted.
    fn scan(&mut self) {
        let mut seen = HashSet::new();
        let first_scan = std::mem::take(&mut self.first_scan);
        let fresh_from_end = first_scan && self.config.read_from == "end";
        let mut placed = false;
        self.unready = false;
        for (pattern, format) in self.patterns.clone() {
            self.watch(&pattern);
            // Rotated logs compressed by their rotator are not text to follow.
            for path in super::matching(&pattern)
                .into_iter()
                .filter(|p| p.extension().is_none_or(|e| e != "gz"))
            {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if !meta.is_file() || !seen.insert(key) {
                    continue;
                }
                if let Some(followed) = self.followed.get_mut(&key) {
                    // Docker's record may come after the first lines, or change (`docker
                    // rename`): the lines read next carry what it says now.
                    if followed.format == Format::Docker {
                        let origin = Origin::of(&path, format, &mut self.docker, &mut self.kubelet);
                        if origin.container != followed.origin.container {
                            followed.origin = Arc::new(origin);
                        }
                    }
                    let lacks_id = followed.format == Format::Cri
                        && followed
                            .origin
                            .container
                            .as_ref()
                            .is_some_and(|c| c.get("id").is_none());
                    if lacks_id && Instant::now() < followed.id_until {
                        let origin = Origin::of(&path, format, &mut self.docker, &mut self.kubelet);
                        if origin
                            .container
                            .as_ref()
                            .is_some_and(|c| c.get("id").is_some())
                        {
                            followed.origin = Arc::new(origin);
                        }
                    }
                    followed.tailer.path = path;
                    followed.tailer.orphaned = None;
                    continue;
                }
                let opened = self.open(path, format, key, meta.len(), fresh_from_end);
                placed |= opened;
                self.unready |= !opened;
            }
        }
        for (key, followed) in &mut self.followed {
            if !seen.contains(key) && followed.tailer.orphaned.is_none() {
                followed.tailer.orphaned = Some(Instant::now());
            }
        }
        self.waiting.retain(|key, _| seen.contains(key));
        self.unreadable.retain(|key| seen.contains(key));
        self.shipper
            .metrics
            .files_unreadable
            .set(self.unreadable.len() as i64);
        // Bounded by the containers whose logs are followed.
        let alive = self
            .followed
            .values()
            .filter_map(|f| f.origin.container.as_ref()?["id"].as_str())
            .map(str::to_owned)
            .collect();
        self.docker.retain(&alive);
        if placed || first_scan {
            // A new file's identity is on disk before any of its lines is shipped, so a
            // restart gives its lines the same ids. After the first scan the checkpoint file
            // exists even when no file matched: files that appear later, agent running or not,
            // are read from their beginning.
            self.save();
        }
        self.shipper
            .metrics
            .files_tracked
            .set(self.followed.len() as i64);
    }

    /// Starts following a file the globs found; whether it is followed now.
    fn open(
        &mut self,
        path: PathBuf,
        format: Format,
        key: (u64, u64),
        len: u64,
        from_end: bool,
    ) -> bool {
        let file = match std::fs::File::open(&path) {
            Ok(file) => {
                self.unreadable.remove(&key);
                file
            }
            Err(e) => {
                if self.unreadable.insert(key) {
                    tracing::warn!(path = %path.display(), error = %e, "agent: a matched file cannot be read; it is tried again at each scan");
                }
                return false;
            }
        };
        let Ok(Some(fp)) = tailer::fingerprint(&file, self.config.fingerprint_bytes) else {
            return false; // No whole first line yet.
        };
        // Long enough, and a whole pass over the followed files began after the copy was seen
        // (one whose truncation came while the reader waited for the shipper is told by then).
        let wait = Duration::from_millis(self.config.rotate_wait_ms);
        let waited_enough = self
            .waiting
            .get(&key)
            .is_some_and(|(since, pass)| since.elapsed() >= wait && self.passes >= pass + 2);
        let fresh = if from_end { len } else { 0 };
        let holds = |tail: &Tail| tail.held_by(&file);
        let found = Found {
            path: &path,
            fp,
            key,
            len,
        };
        let placed = self.registry.place(&found, fresh, !waited_enough, &holds);
        let placement = match placed {
            Ok(Some(placement)) => placement,
            Ok(None) => {
                let pass = self.passes;
                self.waiting
                    .entry(key)
                    .or_insert_with(|| (Instant::now(), pass));
                return false;
            }
            Err(e) => {
                self.read_failed(&path, &e);
                return false;
            }
        };
        self.waiting.remove(&key);
        tracing::debug!(
            path = %path.display(),
            identity = %placement.identity,
            start = placement.start,
            len,
            "agent: following a file"
        );
        let origin = Arc::new(Origin::of(
            &path,
            format,
            &mut self.docker,
            &mut self.kubelet,
        ));
        let max = self.config.max_line_bytes;
        // `[agent.files] multiline_start` is for the files' own lines: container logs keep one
        // event a line, with its own stream and time.
        let multiline = self.multiline.as_ref().filter(|_| format == Format::Plain);
        let joiner = multiline.map(|start| {
            let timeout = Duration::from_millis(self.config.multiline_timeout_ms);
            Joiner::new(start.clone(), timeout, max)
        });
        let tailer = Tailer::new(
            placement.identity,
            path,
            file,
            fp,
            placement.start,
            placement.progress,
            &placement.tails,
        );
        self.followed.insert(
            key,
            Followed {
                tailer,
                format,
                decoder: Decoder::new(format, max),
                joiner,
                origin,
                id_until: Instant::now() + ID_WAIT,
            },
        );
        true
    }

    /// Decodes and joins the lines read from `key`'s file and hands the events to the shipper.
    fn hand_on(&mut self, key: (u64, u64)) -> anyhow::Result<()> {
        let now = Instant::now();
        let followed = self.followed.get_mut(&key).expect("followed");
        let input = followed.format.input();
        let (decoder, joiner) = (&mut followed.decoder, &mut followed.joiner);
        let mut events = Events::default();
        let mut lines = 0;
        // Bytes read: blank lines and the skipped rest of a cut line too.
        let from = followed.tailer.handed_out();
        for line in followed.tailer.lines(self.config.max_line_bytes) {
            lines += 1;
            let (decoded, defect) = decoder.push(line);
            if let Some(defect) = defect {
                self.shipper.malformed(input, defect);
            }
            let Some(decoded) = decoded else {
                continue;
            };
            match joiner {
                Some(joiner) => {
                    if let Some(event) = joiner.push(decoded, now) {
                        events.push(&event);
                    }
                }
                None => events.push(&decoded),
            }
        }
        let bytes = followed.tailer.handed_out().saturating_sub(from);
        self.shipper.read_many(input, lines, bytes as usize);
        followed.hold();
        self.send(key, events)
    }

    /// Hands on multi-line events that waited long enough for another line.
    fn hand_on_expired(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (key, followed) in &mut self.followed {
            if let Some(event) = followed.joiner.as_mut().and_then(|j| j.expired(now)) {
                followed.hold();
                expired.push((*key, event));
            }
        }
        for (key, event) in expired {
            self.send(key, Events::of(&event))?;
        }
        Ok(())
    }

    /// Hands on what `key`'s joiner holds.
    fn flush(&mut self, key: (u64, u64)) -> anyhow::Result<()> {
        let followed = self.followed.get_mut(&key).expect("followed");
        if let Some(event) = followed.joiner.as_mut().and_then(Joiner::flush) {
            followed.hold();
            self.send(key, Events::of(&event))?;
        }
        Ok(())
    }

    /// Marks the events pending and queues them for the shipper, waiting while it is behind.
    /// While it waits (the broker slow or away), the files go on growing: the bytes-behind
    /// gauges say so once a second, when an operator looks at them most.
    fn send(&mut self, key: (u64, u64), events: Events) -> anyhow::Result<()> {
        let Some((start, end)) = events.range() else {
            return Ok(());
        };
        let followed = &self.followed[&key];
        let input = followed.format.input();
        for _ in 0..events.truncated() {
            self.shipper.malformed(input, "truncated");
        }
        let settle = Settle::queued(&followed.tailer.progress, start, end, events.len());
        let mut batch = Batch::new(
            input,
            followed.tailer.identity.as_str().into(),
            followed.origin.clone(),
            settle,
            events,
        );
        loop {
            match self.batches.send_timeout(batch, Duration::from_secs(1)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(waiting)) => {
                    batch = waiting;
                    self.note_behind();
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    anyhow::bail!("agent: the file shipper stopped")
                }
            }
        }
    }

    /// Stops following `key`'s file: hands on what its joiner and decoder hold.
    fn close(&mut self, key: (u64, u64)) {
        let _ = self.flush(key);
        if let Some(followed) = self.followed.get_mut(&key) {
            let mut cut = Events::default();
            for part in followed.decoder.take_partials() {
                cut.push(&part);
            }
            let _ = self.send(key, cut);
        }
        if let Some(followed) = self.followed.remove(&key) {
            let tailer = followed.tailer;
            tracing::debug!(path = %tailer.path.display(), "agent: file closed");
            self.registry.closed(&tailer.identity);
        }
    }

    /// Stops reading `key`'s file after a failed read; found again at the next scan, it is read
    /// on from where it was, a multi-line event or a partial line being assembled from its
    /// start (its reader's state goes with it).
    fn set_aside(&mut self, key: (u64, u64)) {
        if let Some(followed) = self.followed.remove(&key) {
            let tailer = followed.tailer;
            self.registry.read(&tailer.identity, tailer.tails());
            self.registry.set_aside(&tailer.identity);
        }
    }

    /// A read of the file at `path` failed: said once a minute (it is tried at every scan).
    fn read_failed(&mut self, path: &std::path::Path, error: &std::io::Error) {
        if self
            .read_failure_said
            .is_none_or(|at| at.elapsed() >= READ_FAILURE_SAID_EVERY)
        {
            self.read_failure_said = Some(Instant::now());
            tracing::warn!(
                path = %path.display(),
                %error,
                "agent: reading a file failed; it is tried again at each scan"
            );
        }
    }

    fn save(&mut self) {
        for followed in self.followed.values() {
            let tailer = &followed.tailer;
            self.registry.read(&tailer.identity, tailer.tails());
        }
        if let Err(e) = self.registry.save() {
            tracing::warn!(error = %e, "agent: writing file checkpoints");
            self.shipper.metrics.checkpoint_errors.inc();
        }
    }

    /// Sets the bytes behind over all files at every pass, and per path once a second (a
    /// series per followed file; a rotated file and its successor under one path add up).
    fn note_behind(&mut self) {
        let per_file = self.behind_shown.1.elapsed() >= Duration::from_secs(1);
        let mut by_path: HashMap<String, u64> = HashMap::new();
        let mut all = 0;
        for followed in self.followed.values() {
            let behind = followed.tailer.behind();
            all += behind;
            if per_file {
                *by_path
                    .entry(followed.tailer.path.display().to_string())
                    .or_default() += behind;
            }
        }
        let metrics = &self.shipper.metrics;
        metrics.file_bytes_behind.set(all as i64);
        if !per_file {
            return;
        }
        for (path, behind) in &by_path {
            metrics
                .file_bytes_behind_per_file
                .with_label_values(&[path])
                .set(*behind as i64);
        }
        let (shown, at) = &mut self.behind_shown;
        for gone in shown.iter().filter(|path| !by_path.contains_key(*path)) {
            let _ = metrics
                .file_bytes_behind_per_file
                .remove_label_values(&[gone]);
        }
        *shown = by_path.into_keys().collect();
        *at = Instant::now();
    }

    /// Watches the directory a pattern's files are in (recursively when the pattern has more
    /// than its last part wild). A directory that does not exist yet is tried again next scan.
    fn watch(&mut self, pattern: &str) {
        let (dir, recursive) = watch_root(pattern);
        if self.watched.contains(&dir) {
            return;
        }
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if self.watcher.watch(&dir, mode).is_ok() {
            self.watched.insert(dir);
        }
    }
}
