//! Which file is which, and how far each has been acknowledged: the checkpoint file.
//!
//! A file is known by the checksum of its first line, with device and inode as a hint, and
//! checked against the checksums of what was read of it (`content`). The same inode with the
//! same fingerprint, still holding what was read, is the same file wherever it was renamed. A
//! file truncated under the agent (copytruncate) is released: a copy with the same fingerprint
//! and another inode (the rotated copy, `app.log.1`) that holds what was read continues it from
//! where it was read to (from its checkpoint after a restart), and the truncated inode gets a
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

use super::content::{self, Tail};
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
    /// Checksums of what was read, newest first (`content`); none in checkpoints of older
    /// versions, whose files are taken on their first line alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tails: Vec<Tail>,
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

/// A file the globs found.
pub struct Found<'a> {
    pub path: &'a Path,
    /// The checksum of its first line (`tailer::fingerprint`).
    pub fp: u32,
    /// Its device and inode.
    pub key: (u64, u64),
    pub len: u64,
}

/// How a found file is to be read.
pub struct Placement {
    pub identity: String,
    pub start: u64,
    pub progress: Arc<Progress>,
    /// What is known to have been read of it.
    pub tails: Vec<Tail>,
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

    /// Where to read `found`, which holds a tail if `holds` says so: `None` while it looks like
    /// a copy of a file still being read (copytruncate before the truncation) and
    /// `wait_for_copies`, so it is looked at again. `fresh` is where an unknown file starts. An
    /// error reading the file for a tail is returned before anything is decided: the file is
    /// looked at again at the next scan.
    pub fn place(
        &mut self,
        found: &Found<'_>,
        fresh: u64,
        wait_for_copies: bool,
        holds: &dyn Fn(&Tail) -> std::io::Result<bool>,
    ) -> std::io::Result<Option<Placement>> {
        let &Found {
            path,
            fp,
            key: (dev, ino),
            len,
        } = found;
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
            // Read on from where reading stopped (a restart, a read that failed), if the file
            // still holds what was read: the newest tail, or an older one when the end of what
            // was read did not survive (a host crash before the page cache reached the disk).
            let start = t.progress.resume_from();
            if len >= start && content::any_held(&t.entry.tails, len, holds)? {
                t.entry.path = path.to_string_lossy().into_owned();
                t.idle_since = None;
                return Ok(Some(Placement {
                    identity: id.clone(),
                    start,
                    progress: t.progress.clone(),
                    tails: t.entry.tails.clone(),
                }));
            }
            // Truncated, or rewritten under the same first line, while nobody read it: what
            // was read, if anywhere, is in a copy.
            tracing::info!(
                path = %path.display(),
                identity = %id,
                "agent: a file no longer holds what was read of it: read again from its start"
            );
            t.entry.released = true;
        }
        // A copy of a truncated file (not the truncated inode itself) continues it, if it holds
        // what was read: the newest tail it is long enough for, as lines may have been read from
        // the original after logrotate's copy. A file that only starts alike, or is shorter
        // than every tail, is read from its start.
        let mut copy_of = None;
        for (id, t) in &self.tracked {
            let e = &t.entry;
            if e.released
                && e.fingerprint == fp
                && (e.dev, e.ino) != (dev, ino)
                && content::continued(&e.tails, len, holds)?
            {
                copy_of = Some(id.clone());
                break;
            }
        }
        if let Some(id) = copy_of {
            let t = self.tracked.get_mut(&id).expect("just found");
            t.entry.released = false;
            t.entry.dev = dev;
            t.entry.ino = ino;
            t.entry.path = path.to_string_lossy().into_owned();
            t.idle_since = None;
            // Where the truncated file was read to: what came before is queued already. A copy
            // shorter than that has nothing new.
            let read_to = t.progress.read_to();
            t.copy_len = (len < read_to).then_some(len);
            let start = read_to.min(len);
            t.entry.tails.retain(|tail| tail.at <= start);
            return Ok(Some(Placement {
                identity: id,
                start,
                progress: t.progress.clone(),
                tails: t.entry.tails.clone(),
            }));
        }
        let copy_of_live = self
            .tracked
            .values()
            .any(|t| t.entry.fingerprint == fp && !t.entry.released && t.idle_since.is_none());
        if copy_of_live && wait_for_copies {
            return Ok(None);
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
                    tails: Vec::new(),
                },
                progress: progress.clone(),
                idle_since: None,
                copy_len: None,
            },
        );
        Ok(Some(Placement {
            identity,
            start: fresh,
            progress,
            tails: Vec::new(),
        }))
    }

    /// What was read of `identity`'s file so far (`Tailer::tails`).
    pub fn read(&mut self, identity: &str, tails: Vec<Tail>) {
        if let Some(t) = self.tracked.get_mut(identity) {
            t.entry.tails = tails;
        }
    }

    /// The file of `identity` was truncated after `tails` were read of it: a copy may continue
    /// it.
    pub fn release(&mut self, identity: &str, tails: Vec<Tail>) {
        if let Some(t) = self.tracked.get_mut(identity) {
            t.entry.released = true;
            t.entry.tails = tails;
            t.idle_since = Some(Instant::now());
        }
    }

    /// No tailer reads `identity` for now (a read failed): the file, found again and still
    /// holding what was read, is read on.
    pub fn set_aside(&mut self, identity: &str) {
        if let Some(t) = self.tracked.get_mut(identity) {
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
                let mut entry = t.entry.clone();
                // A closed file is never continued: nothing to check a file against.
                entry.tails = match entry.closed {
                    true => Vec::new(),
                    false => kept_tails(&entry.tails, entry.offset),
                };
                (id.clone(), entry)
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

/// The tails a restart needs: the newest, which the same file holds; the newest within the
/// checkpoint, which a copy of the file holds even if it was made before the last lines were
/// read; and the oldest, for a copy made before that.
fn kept_tails(tails: &[Tail], checkpoint: u64) -> Vec<Tail> {
    let mut kept: Vec<Tail> = Vec::with_capacity(3);
    let wanted = [
        tails.first(),
        content::checkable(tails, checkpoint),
        tails.last(),
    ];
    for tail in wanted.into_iter().flatten() {
        if !kept.contains(tail) {
            kept.push(*tail);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file holds every tail (the tests of tails are below).
    fn held(_: &Tail) -> std::io::Result<bool> {
        Ok(true)
    }

    fn found(path: &Path, fp: u32, key: (u64, u64), len: u64) -> Found<'_> {
        Found { path, fp, key, len }
    }

    /// Places a file that holds every tail, not waiting for copies.
    fn place(registry: &mut Registry, path: &str, fp: u32, key: (u64, u64), len: u64) -> Placement {
        registry
            .place(&found(Path::new(path), fp, key, len), 0, true, &held)
            .unwrap()
            .unwrap()
    }

    /// Checkpoints are saved whatever a path's bytes (glob's `**` goes into any directory).
    #[test]
    fn a_path_that_is_not_utf8_is_saved() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let path = Path::new(std::ffi::OsStr::from_bytes(b"logs/\xff.log"));
        registry
            .place(&found(path, 7, (1, 10), 100), 0, true, &held)
            .unwrap()
            .unwrap();
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
        let a = place(&mut registry, "a.log", 7, (1, 10), 100);
        place(&mut registry, "b.log", 8, (1, 11), 100);
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
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        assert_eq!(a.start, 0);
        a.progress.queued(0, 60);
        a.progress.acknowledged(0);
        // Renamed: same inode, same fingerprint, another path.
        let renamed = place(&mut registry, "app.log.1", 7, (1, 10), 100);
        assert_eq!(renamed.identity, a.identity);
        // A copy appears while the original is still read: not yet.
        assert!(registry
            .place(&found(Path::new("copy"), 7, (1, 11), 100), 0, true, &held)
            .unwrap()
            .is_none());
        // The original is truncated: the copy continues where it was.
        registry.release(&a.identity, Vec::new());
        let copy = place(&mut registry, "copy", 7, (1, 11), 100);
        assert_eq!(
            (copy.identity.as_str(), copy.start),
            (a.identity.as_str(), 60)
        );
        // The truncated inode, same first line again: like two files that start alike, it waits
        // (rotate_wait) in case it is a copy, then starts a new generation from its start.
        assert!(registry
            .place(&found(Path::new("app.log"), 7, (1, 10), 5), 0, true, &held)
            .unwrap()
            .is_none());
        let again = registry
            .place(&found(Path::new("app.log"), 7, (1, 10), 5), 0, false, &held)
            .unwrap()
            .unwrap();
        assert_ne!(again.identity, a.identity);
        assert_eq!(again.start, 0);
        // Read out and deleted; its inode reused by a file that starts alike: read from 0.
        registry.closed(&again.identity);
        let reused = registry
            .place(
                &found(Path::new("new.log"), 7, (1, 10), 50),
                0,
                false,
                &held,
            )
            .unwrap()
            .unwrap();
        assert_ne!(reused.identity, again.identity);
        assert_eq!(reused.start, 0);
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        assert_eq!(reloaded.len(), 3);
        let resumed = place(&mut reloaded, "copy", 7, (1, 11), 100);
        assert_eq!((resumed.identity, resumed.start), (a.identity, 60));
    }

    /// copytruncate while the agent was away: the live inode holds new lines (another first
    /// line), and the copy continues the old identity where the checkpoint was, rather than
    /// being read again from its start under new ids.
    #[test]
    fn a_copytruncate_while_away_continues_in_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 60);
        a.progress.acknowledged(0);
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let live = place(&mut reloaded, "app.log", 8, (1, 10), 5);
        assert_ne!(live.identity, a.identity);
        assert_eq!(live.start, 0);
        let copy = place(&mut reloaded, "app.log.1", 7, (1, 11), 100);
        assert_eq!((copy.identity, copy.start), (a.identity, 60));
    }

    /// Lines written between logrotate's copy and its truncation may have been read from the
    /// original: the copy, shorter than that, continues the same identity from its end, also
    /// when a checkpoint past its end was saved before it was found, and after a restart.
    #[test]
    fn a_copy_shorter_than_what_was_read_continues_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 100);
        a.progress.acknowledged(0);
        registry.release(&a.identity, Vec::new());
        registry.save().unwrap();
        let copy = place(&mut registry, "app.log.1", 7, (1, 11), 90);
        assert_eq!(
            (copy.identity.as_str(), copy.start),
            (a.identity.as_str(), 90)
        );
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let resumed = place(&mut reloaded, "app.log.1", 7, (1, 11), 90);
        assert_eq!((resumed.identity, resumed.start), (a.identity, 90));
    }

    fn tail(at: u64) -> Tail {
        Tail::of(at, format!("bytes before {at}").as_bytes())
    }

    /// Truncated and written again under the same first line while the agent was away, past
    /// the checkpoint: read from its start under a new identity (it was read on from the old
    /// offset, and the new lines before it were lost). As it was: read on.
    #[test]
    fn a_file_rewritten_while_away_under_the_same_first_line_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "job.log", 7, (1, 10), 100);
        a.progress.queued(0, 100);
        a.progress.acknowledged(0);
        registry.read(&a.identity, vec![tail(100)]);
        registry.save().unwrap();
        let same = |t: &Tail| Ok(*t == tail(100));
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let resumed = reloaded
            .place(
                &found(Path::new("job.log"), 7, (1, 10), 150),
                0,
                true,
                &same,
            )
            .unwrap()
            .unwrap();
        assert_eq!((resumed.identity, resumed.start), (a.identity.clone(), 100));
        let other = |_: &Tail| Ok(false);
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let rewritten = reloaded
            .place(
                &found(Path::new("job.log"), 7, (1, 10), 150),
                0,
                true,
                &other,
            )
            .unwrap()
            .unwrap();
        assert_ne!(rewritten.identity, a.identity);
        assert_eq!(rewritten.start, 0);
    }

    /// A new file that only starts like a truncated one (a shared banner) is read from its
    /// start; a copy that holds what was read continues it, checked against the newest tail it
    /// is long enough for when it is shorter than what was read of the original.
    #[test]
    fn only_a_copy_holding_what_was_read_continues_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 100);
        registry.release(&a.identity, vec![tail(100), tail(60), tail(30)]);
        let not_a_copy = registry
            .place(
                &found(Path::new("other.log"), 7, (1, 11), 500),
                0,
                true,
                &|_| Ok(false),
            )
            .unwrap()
            .unwrap();
        assert_ne!(not_a_copy.identity, a.identity);
        assert_eq!(not_a_copy.start, 0);
        let checked = std::cell::Cell::new(None);
        let holds = |t: &Tail| {
            checked.set(Some(t.at));
            Ok(true)
        };
        let copy = registry
            .place(
                &found(Path::new("app.log.1"), 7, (1, 12), 90),
                0,
                true,
                &holds,
            )
            .unwrap()
            .unwrap();
        assert_eq!(checked.get(), Some(60));
        assert_eq!(
            (copy.identity.as_str(), copy.start),
            (a.identity.as_str(), 90)
        );
        assert_eq!(copy.tails, [tail(60), tail(30)]);
    }

    /// A restart needs the newest tail (the same file), the newest within the checkpoint (a
    /// copy made before the last lines were read) and the oldest (a copy made before that).
    #[test]
    fn the_newest_the_newest_within_the_checkpoint_and_the_oldest_tails_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 50);
        a.progress.acknowledged(0);
        a.progress.queued(50, 100);
        registry.read(&a.identity, vec![tail(100), tail(80), tail(50), tail(20)]);
        registry.save().unwrap();
        let reloaded = Registry::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.tracked[&a.identity].entry.tails,
            [tail(100), tail(50), tail(20)]
        );
    }

    /// A read that failed (EIO, ESTALE) sets the file aside: found again, it is read on where
    /// reading stopped, under the same identity.
    #[test]
    fn a_file_set_aside_after_a_failed_read_is_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 70);
        // A multi-line event from 70 was being assembled: it is read again from its start.
        a.progress.hold(Some(70));
        a.progress.skipped(90);
        registry.read(&a.identity, vec![tail(90)]);
        registry.set_aside(&a.identity);
        let again = place(&mut registry, "app.log", 7, (1, 10), 100);
        assert_eq!((again.identity, again.start), (a.identity, 70));
    }

    /// After a host crash the end of what was read may not have reached the disk: the same
    /// inode holding an older tail is read on from its checkpoint, not sent again.
    #[test]
    fn the_same_file_holding_an_older_tail_is_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 50);
        a.progress.acknowledged(0);
        registry.read(&a.identity, vec![tail(100), tail(50)]);
        registry.save().unwrap();
        let mut reloaded = Registry::load(dir.path()).unwrap();
        let older = |t: &Tail| Ok(t.at == 50);
        let resumed = reloaded
            .place(
                &found(Path::new("app.log"), 7, (1, 10), 80),
                0,
                true,
                &older,
            )
            .unwrap()
            .unwrap();
        assert_eq!((resumed.identity, resumed.start), (a.identity, 50));
    }

    /// A tail that cannot be read now (EIO) decides nothing: the entry stays as it was, and the
    /// file is looked at again.
    #[test]
    fn a_failed_check_decides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        let a = place(&mut registry, "app.log", 7, (1, 10), 100);
        a.progress.queued(0, 100);
        registry.read(&a.identity, vec![tail(100)]);
        registry.set_aside(&a.identity);
        let failing = |_: &Tail| Err(std::io::Error::other("EIO"));
        assert!(registry
            .place(
                &found(Path::new("app.log"), 7, (1, 10), 100),
                0,
                true,
                &failing
            )
            .is_err());
        let again = place(&mut registry, "app.log", 7, (1, 10), 100);
        assert_eq!((again.identity, again.start), (a.identity, 100));
    }

    #[test]
    fn an_unreadable_checkpoint_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file-checkpoints.json"), b"{oops").unwrap();
        let error = Registry::load(dir.path()).err().unwrap().to_string();
        assert!(error.contains("file-checkpoints.json"), "{error}");
    }
}
