//! Log files by glob: followed through renames, deletions and copytruncate, read from a
//! checkpoint that moves only after the broker acknowledged the lines before it.
//!
//! Two threads run the input. The reader matches the globs (on the file system's change notices,
//! on a truncation, and every `rescan_interval_ms` in case a notice was lost or the notify Rescan
//! flag says events were dropped), reads every open file in turn with its `tailer::Tailer`, joins
//! multi-line events (`multiline`), and every second writes the acknowledged offsets through the
//! `registry`. It hands batches of lines over a bounded channel to the shipper thread, which
//! turns each line into an event whose id is the file's identity and the line's offset. Reading
//! never waits for the broker, so a file truncated under the agent (copytruncate) has almost
//! always been read to its end already; the channel bounds what waits in memory.

mod multiline;
mod registry;
mod tailer;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::{json, Map};

use crate::acks::{Ack, Progress};
use crate::config::FilesConfig;
use crate::event::{now_rfc3339, Event};
use crate::Shipper;
use multiline::Joiner;
use registry::Registry;
use tailer::{Line, Read, Tailer};

const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Batches (each at most a read chunk of lines) waiting for the shipper: with 256 KiB chunks,
/// at most 16 MiB of lines wait in memory.
const BATCHES_WAITING: usize = 64;
/// How long the thread sleeps when no file had anything new and no notice came.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The running file input.
pub struct FilesInput {
    stop: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<Registry>,
    shipper: std::thread::JoinHandle<()>,
}

/// Lines of one file, read and not shipped yet; each is already pending in `progress`.
struct Batch {
    identity: Arc<str>,
    source: Arc<str>,
    progress: Arc<Progress>,
    lines: Vec<Line>,
}

impl FilesInput {
    /// Loads the checkpoints (failing fast on an unusable state dir) and starts following.
    pub fn start(
        config: FilesConfig,
        state_dir: &Path,
        shipper: Arc<Shipper>,
    ) -> anyhow::Result<Self> {
        let registry = Registry::load(state_dir)?;
        let multiline = match config.multiline_start.as_str() {
            "" => None,
            pattern => Some(regex::bytes::Regex::new(pattern)?),
        };
        let (notices, received) = mpsc::channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = notices.send(event);
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (batches, waiting) = mpsc::sync_channel(BATCHES_WAITING);
        let runtime = tokio::runtime::Handle::current();
        let shipper_thread = std::thread::Builder::new()
            .name("sluice-agent-files-ship".into())
            .spawn({
                let shipper = shipper.clone();
                move || ship_batches(&waiting, &shipper, &runtime)
            })?;
        let mut files = Files {
            config,
            shipper,
            batches,
            registry,
            multiline,
            tailers: HashMap::new(),
            joiners: HashMap::new(),
            waiting: HashMap::new(),
            watcher,
            watched: HashSet::new(),
            first_scan: true,
            unready: false,
        };
        let reader = std::thread::Builder::new()
            .name("sluice-agent-files".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    files.run(&received, &stop);
                    files.registry
                }
            })?;
        Ok(Self {
            stop,
            reader,
            shipper: shipper_thread,
        })
    }

    /// Stops reading and ships any multi-line event held back; the registry, for a last save
    /// once the output has flushed.
    pub async fn stop(self) -> Option<FileCheckpoints> {
        self.stop.store(true, Ordering::Relaxed);
        let (reader, shipper) = (self.reader, self.shipper);
        let registry = tokio::task::spawn_blocking(move || {
            let registry = reader.join();
            // The reader dropped its end of the channel: the shipper ends once it is empty.
            let _ = shipper.join();
            registry
        })
        .await
        .ok()?
        .ok()?;
        Some(FileCheckpoints(registry))
    }
}

/// The file input's checkpoints after it stopped.
pub struct FileCheckpoints(Registry);

impl FileCheckpoints {
    /// Writes what the broker acknowledged.
    pub fn save(mut self) -> std::io::Result<()> {
        self.0.save()
    }
}

struct Files {
    config: FilesConfig,
    shipper: Arc<Shipper>,
    batches: mpsc::SyncSender<Batch>,
    registry: Registry,
    multiline: Option<regex::bytes::Regex>,
    tailers: HashMap<(u64, u64), Tailer>,
    joiners: HashMap<(u64, u64), Joiner>,
    /// Files that look like a copy of one still being read, and since when.
    waiting: HashMap<(u64, u64), Instant>,
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    first_scan: bool,
    /// A matched file could not be followed yet (no whole first line, or waiting): any change
    /// notice is a reason to look again.
    unready: bool,
}

impl Files {
    fn run(&mut self, notices: &mpsc::Receiver<notify::Result<notify::Event>>, stop: &AtomicBool) {
        let rescan_every = Duration::from_millis(self.config.rescan_interval_ms.max(100));
        let mut last_scan: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut rescan = true;
        let mut lines = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if rescan || last_scan.is_none_or(|t| t.elapsed() >= rescan_every) {
                rescan = false;
                last_scan = Some(Instant::now());
                self.scan();
            }
            let mut busy = false;
            let mut closed = Vec::new();
            let keys: Vec<(u64, u64)> = self.tailers.keys().copied().collect();
            for key in keys {
                match self.read_file(key, &mut lines) {
                    Ok(Read::Data) => busy = true,
                    Ok(Read::Idle) => {
                        let tailer = &self.tailers[&key];
                        let wait = Duration::from_millis(self.config.rotate_wait_ms);
                        if tailer.orphaned.is_some_and(|since| since.elapsed() >= wait) {
                            closed.push(key);
                        }
                    }
                    Ok(Read::Truncated) => {
                        let tailer = &self.tailers[&key];
                        tracing::info!(path = %tailer.path.display(), "agent: file truncated");
                        self.registry.release(&tailer.identity.clone());
                        closed.push(key);
                        rescan = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "agent: reading a file");
                        closed.push(key);
                    }
                }
                if self.ship_lines(key, &mut lines).is_err() {
                    return;
                }
            }
            for key in closed {
                self.close(key);
            }
            if self.ship_expired().is_err() {
                return;
            }
            self.note_behind();
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                self.save();
            }
            if !busy {
                rescan |= wait_for_notice(notices, IDLE_WAIT, self.unready);
            }
            while let Ok(notice) = notices.try_recv() {
                rescan |= self.unready || needs_rescan(&notice);
            }
        }
        let keys: Vec<(u64, u64)> = self.joiners.keys().copied().collect();
        for key in keys {
            let _ = self.flush_joiner(key);
        }
        self.save();
    }

    /// Matches the globs: new files get a tailer, files whose path moved are noted.
    fn scan(&mut self) {
        let mut seen = HashSet::new();
        let fresh_from_end = self.first_scan && self.config.read_from == "end";
        self.first_scan = false;
        let mut placed = false;
        self.unready = false;
        for pattern in self.config.include.clone() {
            self.watch(&pattern);
            let Ok(paths) = glob::glob(&pattern) else {
                continue;
            };
            for path in paths.flatten() {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if !meta.is_file() || !seen.insert(key) {
                    continue;
                }
                if let Some(tailer) = self.tailers.get_mut(&key) {
                    tailer.path = path;
                    tailer.orphaned = None;
                    continue;
                }
                let opened = self.open(path, key, meta.len(), fresh_from_end);
                placed |= opened;
                self.unready |= !opened;
            }
        }
        for (key, tailer) in &mut self.tailers {
            if !seen.contains(key) && tailer.orphaned.is_none() {
                tailer.orphaned = Some(Instant::now());
            }
        }
        self.waiting.retain(|key, _| seen.contains(key));
        if placed {
            // A new file's identity is on disk before any of its lines is shipped, so a
            // restart gives its lines the same ids.
            self.save();
        }
        self.shipper
            .metrics
            .files_tracked
            .set(self.tailers.len() as i64);
    }

    /// Starts following a file the globs found; whether it got a tailer.
    fn open(&mut self, path: PathBuf, key: (u64, u64), len: u64, from_end: bool) -> bool {
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        let Ok(Some(fp)) = tailer::fingerprint(&file, self.config.fingerprint_bytes) else {
            return false; // No whole first line yet.
        };
        let wait = Duration::from_millis(self.config.rotate_wait_ms);
        let waited_enough = self
            .waiting
            .get(&key)
            .is_some_and(|since| since.elapsed() >= wait);
        let fresh = if from_end { len } else { 0 };
        let Some(placement) = self
            .registry
            .place(&path, fp, key, len, fresh, !waited_enough)
        else {
            self.waiting.entry(key).or_insert_with(Instant::now);
            return false;
        };
        self.waiting.remove(&key);
        tracing::debug!(path = %path.display(), start = placement.start, "agent: following a file");
        let tailer = Tailer::new(
            placement.identity,
            path,
            file,
            fp,
            placement.start,
            placement.progress,
        );
        self.tailers.insert(key, tailer);
        if let Some(start) = &self.multiline {
            let timeout = Duration::from_millis(self.config.multiline_timeout_ms);
            let joiner = Joiner::new(start.clone(), timeout, self.config.max_line_bytes);
            self.joiners.insert(key, joiner);
        }
        true
    }

    fn read_file(&mut self, key: (u64, u64), lines: &mut Vec<Line>) -> std::io::Result<Read> {
        let tailer = self.tailers.get_mut(&key).expect("a tailer per key");
        tailer.read(
            self.config.max_line_bytes,
            self.config.fingerprint_bytes,
            lines,
        )
    }

    /// Hands the lines read from `key`'s file to the shipper (through its joiner when multi-line
    /// is on).
    fn ship_lines(&mut self, key: (u64, u64), lines: &mut Vec<Line>) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut complete = Vec::with_capacity(lines.len());
        for line in lines.drain(..) {
            match self.joiners.get_mut(&key) {
                Some(joiner) => complete.extend(joiner.push(line, now)),
                None => complete.push(line),
            }
        }
        if let Some(joiner) = self.joiners.get(&key) {
            self.tailers[&key].progress.hold(joiner.holding());
        }
        self.ship(key, complete)
    }

    /// Ships multi-line events that waited long enough for another line.
    fn ship_expired(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let expired: Vec<((u64, u64), Line)> = self
            .joiners
            .iter_mut()
            .filter_map(|(key, joiner)| joiner.expired(now).map(|event| (*key, event)))
            .collect();
        for (key, event) in expired {
            self.tailers[&key].progress.hold(None);
            self.ship(key, vec![event])?;
        }
        Ok(())
    }

    fn flush_joiner(&mut self, key: (u64, u64)) -> anyhow::Result<()> {
        if let Some(event) = self.joiners.get_mut(&key).and_then(Joiner::flush) {
            self.tailers[&key].progress.hold(None);
            self.ship(key, vec![event])?;
        }
        Ok(())
    }

    /// Marks the lines pending and queues them for the shipper, waiting while it is behind.
    fn ship(&self, key: (u64, u64), lines: Vec<Line>) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let tailer = &self.tailers[&key];
        for line in &lines {
            self.shipper.read("file", line.bytes.len());
            if line.truncated {
                self.shipper.malformed("file", "truncated");
            }
            tailer.progress.queued(line.start, line.end);
        }
        let batch = Batch {
            identity: tailer.identity.as_str().into(),
            source: tailer.path.to_string_lossy().into(),
            progress: tailer.progress.clone(),
            lines,
        };
        self.batches
            .send(batch)
            .map_err(|_| anyhow::anyhow!("agent: the file shipper stopped"))
    }

    fn close(&mut self, key: (u64, u64)) {
        let _ = self.flush_joiner(key);
        self.joiners.remove(&key);
        if let Some(tailer) = self.tailers.remove(&key) {
            tracing::debug!(path = %tailer.path.display(), "agent: file closed");
            self.registry.closed(&tailer.identity);
        }
    }

    fn save(&mut self) {
        if let Err(e) = self.registry.save() {
            tracing::warn!(error = %e, "agent: writing file checkpoints");
            self.shipper.metrics.checkpoint_errors.inc();
        }
    }

    fn note_behind(&self) {
        let behind: u64 = self.tailers.values().map(Tailer::behind).sum();
        self.shipper.metrics.file_bytes_behind.set(behind as i64);
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

/// The shipper thread: every line an event, queued on the output (waiting while its queue is
/// full), until the reader is gone and the channel empty.
fn ship_batches(
    batches: &mpsc::Receiver<Batch>,
    shipper: &Shipper,
    runtime: &tokio::runtime::Handle,
) {
    for batch in batches {
        for line in batch.lines {
            let mut fields = Map::new();
            fields.insert("offset".into(), json!(line.start));
            if line.truncated {
                fields.insert("truncated".into(), json!(true));
            }
            let event = Event {
                id: format!("{}:{}:{}", shipper.host, batch.identity, line.start),
                timestamp: now_rfc3339(),
                host: shipper.host.clone(),
                source: batch.source.to_string(),
                stream: None,
                level: None,
                message: shipper.text("file", &line.bytes),
                fields,
            };
            let ack = Box::new(Ack(Some((batch.progress.clone(), line.start))));
            if let Err(e) = runtime.block_on(shipper.ship_acked("file", &event, ack)) {
                tracing::error!(error = %e, "agent: file shipper stopped");
                return;
            }
        }
    }
}

/// The directory to watch for a glob pattern, and whether below it too.
fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let mut dir = PathBuf::new();
    let components: Vec<_> = Path::new(pattern).components().collect();
    for (i, component) in components.iter().enumerate() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) || i == components.len() - 1 {
            return (dir, i < components.len() - 1);
        }
        dir.push(component);
    }
    (dir, false)
}

/// Waits up to `timeout` for a change notice; whether the globs must be matched again (on any
/// notice when `any`).
fn wait_for_notice(
    notices: &mpsc::Receiver<notify::Result<notify::Event>>,
    timeout: Duration,
    any: bool,
) -> bool {
    match notices.recv_timeout(timeout) {
        Ok(notice) => any || needs_rescan(&notice),
        Err(_) => false,
    }
}

/// A file appeared, went or moved, or events were lost (the Rescan flag): match the globs again.
fn needs_rescan(notice: &notify::Result<notify::Event>) -> bool {
    match notice {
        Ok(event) => {
            event.need_rescan()
                || matches!(
                    event.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(notify::event::ModifyKind::Name(_))
                        | EventKind::Any
                        | EventKind::Other
                )
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_roots_of_patterns() {
        assert_eq!(
            watch_root("/var/log/app/*.log"),
            (PathBuf::from("/var/log/app"), false)
        );
        assert_eq!(
            watch_root("/var/log/app.log"),
            (PathBuf::from("/var/log"), false)
        );
        assert_eq!(
            watch_root("/var/log/pods/*/*/*.log"),
            (PathBuf::from("/var/log/pods"), true)
        );
    }
}
