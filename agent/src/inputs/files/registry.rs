//! Which file is which, and how far each has been acknowledged: the checkpoint file.
//!
//! A file is known by the checksum of its first line, with device and inode as a hint. The same
//! inode with the same fingerprint is the same file wherever it was renamed. A file truncated
//! under the agent (copytruncate) is released: a copy with the same fingerprint and another inode
//! (the rotated copy, `app.log.1`) continues it from its checkpoint, and the truncated inode gets a
//! new identity. An identity names the time it was made, so lines of a new file never reuse an
//! old file's ids, even on a reused inode; a file read out and gone is closed, never resumed.
//!
//! Entries are written to `<state_dir>/file-checkpoints.json` atomically (write, fsync, rename,
//! fsync the directory), with each file's acknowledged offset.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::acks::Progress;

/// A released entry no copy took over within this long is forgotten.
const RELEASED_KEPT: Duration = Duration::from_secs(3600);
/// Entries kept at most; the oldest closed ones go first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    fingerprint: u32,
    /// The file that continues the entry now.
    dev: u64,
    ino: u64,
    /// Acknowledged: a restart reads from here.
    offset: u64,
    /// Where the file was last seen, for people reading the checkpoints: lossy, as JSON
    /// cannot hold a path that is not UTF-8 (and saving must not fail on one).
    path: String,
    /// Truncated under the agent: a copy may continue it.
    released: bool,
    /// Its file was rotated away or deleted and read to its end: an inode found again is
    /// another file.
    #[serde(default)]
    closed: bool,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: BTreeMap<String, Entry>,
}

struct Tracked {
    entry: Entry,
    progress: Arc<Progress>,
    /// Since when no tailer reads it (released, or its file closed).
    idle_since: Option<Instant>,
    /// The copy that continues it is shorter than what was read of the truncated file (lines
    /// written between logrotate's copy and its truncation, read before the truncation): its
    /// checkpoint stops at the copy's end, so a restart finds the copy whole, not truncated.
    copy_len: Option<u64>,
}

pub struct Registry {
    path: PathBuf,
    tracked: HashMap<String, Tracked>,
    /// No checkpoint file was there at load: the agent's first start on this state dir.
    first_start: bool,
    /// What was written last: an unchanged file is not written (and fsynced) again every
    /// second while the files are idle.
    written: Vec<u8>,
}

/// How a found file is to be read.
pub struct Placement {
    pub identity: String,
    pub start: u64,
    pub progress: Arc<Progress>,
}

impl Registry {
    /// Loads the checkpoints in `state_dir` (none yet is an empty registry).
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            anyhow::anyhow!(
                "agent state dir {}: cannot create: {e}",
                state_dir.display()
            )
        })?;
        let path = state_dir.join("file-checkpoints.json");
        let mut first_start = false;
        let files = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "agent checkpoints {}: unreadable ({e}); move it away to read every \
                         file again from its start",
                        path.display()
                    )
                })?;
                file.files
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                first_start = true;
                BTreeMap::new()
            }
            Err(e) => anyhow::bail!("agent checkpoints {}: {e}", path.display()),
        };
        let now = Instant::now();
        let tracked = files
            .into_iter()
            .map(|(id, entry)| {
                let progress = Progress::new(entry.offset);
                let tracked = Tracked {
                    entry,
                    progress,
                    idle_since: Some(now),
                    copy_len: None,
                };
                (id, tracked)
            })
            .collect();
        Ok(Self {
            path,
            tracked,
            first_start,
            written: Vec::new(),
        })
    }

    /// Whether no checkpoint file was there at load: files found now predate the agent.
    pub fn is_first_start(&self) -> bool {
        self.first_start
    }

    /// Where to read a file found at `path` (fingerprint `fp`, inode `(dev, ino)`, `len` bytes):
    /// `None` while it looks like a copy of a file still being read (copytruncate before the
    /// truncation) and `wait_for_copies`, so it is looked at again. `fresh` is where an unknown
    /// file starts.
    pub fn place(
        &mut self,
        path: &Path,
        fp: u32,
        (dev, ino): (u64, u64),
        len: u64,
        fresh: u64,
        wait_for_copies: bool,
    ) -> Option<Placement> {
        // The inode holds another first line now: truncated and written again while the agent
        // was away (copytruncate), or reused. Its entry's lines, if anywhere, are in a copy.
        for t in self.tracked.values_mut() {
            let e = &mut t.entry;
            if (e.dev, e.ino) == (dev, ino) && e.fingerprint != fp && !e.released && !e.closed {
                e.released = true;
            }
        }
        let same = |e: &Entry| e.fingerprint == fp && e.dev == dev && e.ino == ino;
        if let Some((id, t)) = self
            .tracked
            .iter_mut()
            .find(|(_, t)| same(&t.entry) && !t.entry.released && !t.entry.closed)
        {
            if len >= t.entry.offset {
                t.entry.path = path.to_string_lossy().into_owned();
                t.idle_since = None;
                return Some(Placement {
                    identity: id.clone(),
                    start: t.entry.offset,
                    progress: t.progress.clone(),
                });
            }
            // Truncated while the agent was away.
            t.entry.released = true;
        }
        // A copy of a truncated file (not the truncated inode itself) continues it.
        if let Some((id, t)) = self.tracked.iter_mut().find(|(_, t)| {
            t.entry.released
                && t.entry.fingerprint == fp
                && (t.entry.dev, t.entry.ino) != (dev, ino)
        }) {
            t.entry.released = false;
            t.entry.dev = dev;
            t.entry.ino = ino;
            t.entry.path = path.to_string_lossy().into_owned();
            t.idle_since = None;
            // Where the truncated file was read to: what came before is queued already. A copy
            // shorter than that has nothing new.
            let read_to = t.progress.read_to();
            t.copy_len = (len < read_to).then_some(len);
            return Some(Placement {
                identity: id.clone(),
                start: read_to.min(len),
                progress: t.progress.clone(),
            });
        }
        let copy_of_live = self
            .tracked
            .values()
            .any(|t| t.entry.fingerprint == fp && !t.entry.released && t.idle_since.is_none());
        if copy_of_live && wait_for_copies {
            return None;
        }
        let mut made = crate::event::now_ms();
        let mut identity = format!("{fp:08x}.{dev:x}.{ino:x}.{made:x}");
        while self.tracked.contains_key(&identity) {
            made += 1;
            identity = format!("{fp:08x}.{dev:x}.{ino:x}.{made:x}");
        }
        let progress = Progress::new(fresh);
        self.tracked.insert(
            identity.clone(),
            Tracked {
                entry: Entry {
                    fingerprint: fp,
                    dev,
                    ino,
                    offset: fresh,
                    path: path.to_string_lossy().into_owned(),
                    released: false,
                    closed: false,
                },
                progress: progress.clone(),
                idle_since: None,
                copy_len: None,
            },
        );
        Some(Placement {
            identity,
            start: fresh,
            progress,
        })
    }

    /// The file of `identity` was truncated: a copy may continue it.
    pub fn release(&mut self, identity: &str) {
        if let Some(t) = self.tracked.get_mut(identity) {
            t.entry.released = true;
            t.idle_since = Some(Instant::now());
        }
    }

    /// No tailer reads `identity` any more (its file was rotated away or deleted and read out).
    pub fn closed(&mut self, identity: &str) {
        if let Some(t) = self.tracked.get_mut(identity) {
            t.entry.closed = !t.entry.released;
            t.idle_since = Some(Instant::now());
        }
    }

    /// Writes every entry with its acknowledged offset, atomically; forgets entries nobody
    /// needs any more.
    pub fn save(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        self.tracked.retain(|_, t| match t.idle_since {
            Some(since) => t.progress.pending() > 0 || now.duration_since(since) < RELEASED_KEPT,
            None => true,
        });
        if self.tracked.len() > MAX_ENTRIES {
            let mut idle: Vec<(Instant, String)> = self
                .tracked
                .iter()
                .filter_map(|(id, t)| t.idle_since.map(|s| (s, id.clone())))
                .collect();
            idle.sort();
            for (_, id) in idle.into_iter().take(self.tracked.len() - MAX_ENTRIES) {
                self.tracked.remove(&id);
            }
        }
        let files = self
            .tracked
            .iter_mut()
            .map(|(id, t)| {
                t.entry.offset = t.progress.checkpoint().min(t.copy_len.unwrap_or(u64::MAX));
                (id.clone(), t.entry.clone())
            })
            .collect();
        let bytes = serde_json::to_vec(&CheckpointFile { version: 1, files })
            .expect("checkpoints serialize");
        if self.written == bytes {
            return Ok(());
        }
        crate::state_dir::write_atomically(&self.path, &bytes)?;
        self.written = bytes;
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tracked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints are saved whatever a path's bytes (glob's `**` goes into any directory).
    #[test]
    fn a_path_that_is_not_utf8_is_saved() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let path = Path::new(std::ffi::OsStr::from_bytes(b"logs/\xff.log"));
        registry.place(path, 7, (1, 10), 100, 0, true).unwrap();
        registry.save().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().len(), 1);
    }

    /// Checkpoints that did not change are not written again (the file keeps its inode).
    #[test]
    fn unchanged_checkpoints_are_not_written_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file-checkpoints.json");
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = registry
            .place(Path::new("a.log"), 7, (1, 10), 100, 0, true)
            .unwrap();
        registry
            .place(Path::new("b.log"), 8, (1, 11), 100, 0, true)
            .unwrap();
        registry.save().unwrap();
        let inode = || std::fs::metadata(&file).unwrap().ino();
        let first = inode();
        registry.save().unwrap();
        assert_eq!(inode(), first, "written again unchanged");
        a.progress.queued(0, 60);
        a.progress.acknowledged(0);
        registry.save().unwrap();
        assert_ne!(inode(), first, "a moved checkpoint is written");
    }

    #[test]
    fn rename_copytruncate_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = registry
            .place(Path::new("app.log"), 7, (1, 10), 100, 0, true)
            .unwrap();
        assert_eq!(a.start, 0);
        a.progress.queued(0, 60);
        a.progress.acknowledged(0);
        // Renamed: same inode, same fingerprint, another path.
        let renamed = registry
            .place(Path::new("app.log.1"), 7, (1, 10), 100, 0, true)
            .unwrap();
        assert_eq!(renamed.identity, a.identity);
        // A copy appears while the original is still read: not yet.
        assert!(registry
            .place(Path::new("copy"), 7, (1, 11), 100, 0, true)
            .is_none());
        // The original is truncated: the copy continues where it was.
        registry.release(&a.identity);
        let copy = registry
            .place(Path::new("copy"), 7, (1, 11), 100, 0, true)
            .unwrap();
        assert_eq!(
            (copy.identity.as_str(), copy.start),
            (a.identity.as_str(), 60)
        );
        // The truncated inode, same first line again: like two files that start alike, it waits
        // (rotate_wait) in case it is a copy, then starts a new generation from its start.
        assert!(registry
            .place(Path::new("app.log"), 7, (1, 10), 5, 0, true)
            .is_none());
        let again = registry
            .place(Path::new("app.log"), 7, (1, 10), 5, 0, false)
            .unwrap();
        assert_ne!(again.identity, a.identity);
        assert_eq!(again.start, 0);
        // Read out and deleted; its inode reused by a file that starts alike: read from 0.
        registry.closed(&again.identity);
        let reused = registry
            .place(Path::new("new.log"), 7, (1, 10), 50, 0, false)
            .unwrap();
        assert_ne!(reused.identity, again.identity);
        assert_eq!(reused.start, 0);
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        assert_eq!(reloaded.len(), 3);
        let resumed = reloaded
            .place(Path::new("copy"), 7, (1, 11), 100, 0, true)
            .unwrap();
        assert_eq!((resumed.identity, resumed.start), (a.identity, 60));
    }

    /// copytruncate while the agent was away: the live inode holds new lines (another first
    /// line), and the copy continues the old identity where the checkpoint was, rather than
    /// being read again from its start under new ids.
    #[test]
    fn a_copytruncate_while_away_continues_in_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = registry
            .place(Path::new("app.log"), 7, (1, 10), 100, 0, true)
            .unwrap();
        a.progress.queued(0, 60);
        a.progress.acknowledged(0);
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let live = reloaded
            .place(Path::new("app.log"), 8, (1, 10), 5, 0, true)
            .unwrap();
        assert_ne!(live.identity, a.identity);
        assert_eq!(live.start, 0);
        let copy = reloaded
            .place(Path::new("app.log.1"), 7, (1, 11), 100, 0, true)
            .unwrap();
        assert_eq!((copy.identity, copy.start), (a.identity, 60));
    }

    /// Lines written between logrotate's copy and its truncation may have been read from the
    /// original: the copy, shorter than that, continues the same identity from its end, also
    /// when a checkpoint past its end was saved before it was found, and after a restart.
    #[test]
    fn a_copy_shorter_than_what_was_read_continues_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = registry
            .place(Path::new("app.log"), 7, (1, 10), 100, 0, true)
            .unwrap();
        a.progress.queued(0, 100);
        a.progress.acknowledged(0);
        registry.release(&a.identity);
        registry.save().unwrap();
        let copy = registry
            .place(Path::new("app.log.1"), 7, (1, 11), 90, 0, true)
            .unwrap();
        assert_eq!(
            (copy.identity.as_str(), copy.start),
            (a.identity.as_str(), 90)
        );
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let resumed = reloaded
            .place(Path::new("app.log.1"), 7, (1, 11), 90, 0, true)
            .unwrap();
        assert_eq!((resumed.identity, resumed.start), (a.identity, 90));
    }

    #[test]
    fn an_unreadable_checkpoint_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file-checkpoints.json"), b"{oops").unwrap();
        let error = Registry::load(dir.path()).err().unwrap().to_string();
        assert!(error.contains("file-checkpoints.json"), "{error}");
    }
}
