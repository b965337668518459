//! Log files, followed through renames, deletions and copytruncate and read from a checkpoint
//! that moves only after the broker acknowledged the lines before it: plain files by glob,
//! Docker's json-file logs and Kubernetes' CRI logs (`format` decodes them and joins their
//! partial lines, and names their container).
//!
//! Two threads run the input. The `reader` matches the globs (on the file system's change notices,
//! on a truncation, and every `rescan_interval_ms` in case a notice was lost or the notify Rescan
//! flag says events were dropped), reads every open file in turn with its `tailer::Tailer`, joins
//! multi-line events (`multiline`), and every second writes the acknowledged offsets through the
//! `registry`. It hands batches of lines over a bounded channel to the shipper thread, which
//! turns each line into an event whose id is the file's identity and the line's offset. The
//! channel bounds what waits in memory: reading runs ahead of the broker by a few batches, so a
//! file truncated under the agent (copytruncate) has almost always been read to its end already,
//! unless the broker is slow or away.

mod content;
mod format;
mod multiline;
mod notices;
mod reader;
mod registry;
mod ship;
mod tailer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::AgentConfig;
use crate::containers::{DockerContainers, KubeletLinks};
use crate::shipper::Shipper;
use format::Format;
use notices::Notices;
use reader::Reader;
use registry::Registry;
use ship::ship_batches;

/// Batches (each at most a read chunk of lines) waiting for the shipper: with 128 KiB chunks,
/// at most 512 KiB of lines wait in memory.
const BATCHES_WAITING: usize = 4;

/// The running file input.
pub struct FilesInput {
    stop: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<Registry>,
    shipper: std::thread::JoinHandle<()>,
    /// Why the shipper stopped, if it failed (librdkafka's fatal error); closed unsent when
    /// either thread ended otherwise (a panic) while not stopping. The agent stops with it,
    /// rather than running on with files no longer shipped.
    failed: Option<tokio::sync::oneshot::Receiver<anyhow::Error>>,
}

/// The globs to follow and how their files read: `[agent.files]`, Docker's and CRI's log files.
pub fn patterns(config: &AgentConfig) -> Vec<(String, Format)> {
    let mut patterns: Vec<(String, Format)> = config
        .files
        .include
        .iter()
        .map(|p| (p.clone(), Format::Plain))
        .collect();
    if config.docker.logs {
        let root = Path::new(&config.docker.root).join("containers/*/*-json.log*");
        patterns.push((root.to_string_lossy().into_owned(), Format::Docker));
    }
    if config.cri.logs {
        let root = Path::new(&config.cri.root).join("*/*/*.log*");
        patterns.push((root.to_string_lossy().into_owned(), Format::Cri));
    }
    patterns
}

impl FilesInput {
    /// Loads the checkpoints (failing fast on an unusable state dir) and starts following.
    pub fn start(config: &AgentConfig, shipper: Arc<Shipper>) -> anyhow::Result<Self> {
        let registry = Registry::load(Path::new(&config.state_dir))?;
        let first_scan = registry.is_first_start();
        let multiline = match config.files.multiline_start.as_str() {
            "" => None,
            pattern => Some(regex::bytes::Regex::new(pattern)?),
        };
        let notices = Arc::new(Notices::default());
        let watcher = notify::recommended_watcher({
            let notices = notices.clone();
            move |event| notices.note(&event)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (batches, waiting) = crossbeam_channel::bounded(BATCHES_WAITING);
        let runtime = tokio::runtime::Handle::current();
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let shipper_thread = std::thread::Builder::new()
            .name("sluice-agent-files-ship".into())
            .spawn({
                let (shipper, stop) = (shipper.clone(), stop.clone());
                move || {
                    if let Err(e) = ship_batches(&waiting, &shipper, &runtime, &stop) {
                        let _ = failed_tx.send(e);
                    }
                }
            })?;
        let mut reader = Reader {
            config: config.files.clone(),
            patterns: patterns(config),
            shipper,
            batches,
            registry,
            multiline,
            docker: DockerContainers::new(&config.docker.root),
            kubelet: KubeletLinks::new(&config.cri.containers),
            watcher,
            followed: HashMap::new(),
            waiting: HashMap::new(),
            passes: 0,
            watched: HashSet::new(),
            first_scan,
            unready: false,
            unreadable: HashSet::new(),
            behind_shown: (HashSet::new(), std::time::Instant::now()),
            read_failure_said: None,
        };
        let reader_thread = std::thread::Builder::new()
            .name("sluice-agent-files".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    reader.run(&notices, &stop);
                    reader.registry
                }
            })?;
        Ok(Self {
            stop,
            reader: reader_thread,
            shipper: shipper_thread,
            failed: Some(failed),
        })
    }

    /// Resolves with the error the input failed of; never while it runs. Cancel safe.
    pub async fn failed(&mut self) -> anyhow::Error {
        if let Some(failed) = &mut self.failed {
            let ended = failed.await;
            self.failed = None;
            match ended {
                Ok(e) => return e,
                Err(_) if !self.stop.load(Ordering::Relaxed) => {
                    return anyhow::anyhow!("the file input's threads ended unexpectedly");
                }
                Err(_) => {}
            }
        }
        std::future::pending().await
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

/// The files a glob pattern matches, in order. The `glob` crate passes over names that are not
/// UTF-8 (a Latin-1 log file's or directory's, say), silently: each wild part of the pattern is
/// matched here on the names with U+FFFD for what is not UTF-8, so that `*.log` finds such a
/// file too. Patterns with `**` keep glob's own walk.
fn matching(pattern: &str) -> Vec<PathBuf> {
    if pattern.contains("**") {
        return glob::glob(pattern)
            .map(|paths| paths.flatten().collect())
            .unwrap_or_default();
    }
    let mut found = vec![PathBuf::new()];
    for part in Path::new(pattern).components() {
        let text = part.as_os_str().to_string_lossy();
        if !text.contains(['*', '?', '[']) {
            for path in &mut found {
                path.push(part);
            }
            continue;
        }
        let Ok(wild) = glob::Pattern::new(&text) else {
            return Vec::new();
        };
        found = found
            .iter()
            .filter_map(|dir| {
                let listed = std::fs::read_dir(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                });
                Some(listed.ok()?.flatten().filter_map(|entry| {
                    let name = entry.file_name();
                    wild.matches(&name.to_string_lossy())
                        .then(|| dir.join(name))
                }))
            })
            .flatten()
            .collect();
    }
    found.sort();
    found
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("app");
        std::fs::create_dir(&sub).unwrap();
        let latin1 = sub.join(std::ffi::OsStr::from_bytes(b"caf\xe9.log"));
        for file in [&latin1, &sub.join("b.log"), &sub.join("c.txt")] {
            std::fs::write(file, "a line\n").unwrap();
        }
        let pattern = format!("{}/*/*.log", dir.path().display());
        assert_eq!(matching(&pattern), vec![sub.join("b.log"), latin1.clone()]);
        let latin1_dir = dir.path().join(std::ffi::OsStr::from_bytes(b"d\xe9r"));
        std::fs::create_dir(&latin1_dir).unwrap();
        std::fs::write(latin1_dir.join("c.log"), "a line\n").unwrap();
        assert_eq!(
            matching(&pattern),
            vec![sub.join("b.log"), latin1, latin1_dir.join("c.log")]
        );
        let literal = format!("{}/app/b.log", dir.path().display());
        assert_eq!(matching(&literal), vec![sub.join("b.log")]);
        let deep = format!("{}/**/*.txt", dir.path().display());
        assert_eq!(matching(&deep), vec![sub.join("c.txt")]);
    }

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
