//! What a file held beyond its first line: checksums of the last bytes read, taken along the way.
//! The first line's fingerprint says which file a found one may be; these say whether it still
//! holds what was read. A file found with the same first line (the same inode after a restart, or
//! a copy of a truncated file) continues what was read only if it holds the bytes of a tail;
//! otherwise it was rewritten, or is another file that starts alike, and is read from its start.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The checksum of the `len` bytes of a file that end at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub at: u64,
    pub len: u32,
    pub crc: u32,
}

impl Tail {
    /// The tail of `bytes`, which end at `at` in their file.
    pub fn of(at: u64, bytes: &[u8]) -> Self {
        Self {
            at,
            len: bytes.len() as u32,
            crc: crc32c::crc32c(bytes),
        }
    }

    /// Whether `file` holds these bytes where they were (a tail longer than any taken, from a
    /// damaged checkpoint file, is held by none).
    pub fn held_by(&self, file: &File) -> std::io::Result<bool> {
        let len = self.len as usize;
        if len > TAIL_BYTES {
            return Ok(false);
        }
        let start = self.at.saturating_sub(u64::from(self.len));
        Ok(bytes_at(file, start, len)?.is_some_and(|bytes| crc32c::crc32c(&bytes) == self.crc))
    }
}

/// The most bytes a tail is taken of.
pub const TAIL_BYTES: usize = 64;

/// The `len` bytes of `file` at `at`; `None` when the file ends before them.
pub fn bytes_at(file: &File, at: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0u8; len];
    match file.read_exact_at(&mut bytes, at) {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Of `tails` (newest first), the one a file of `len` bytes can be checked against: the newest it
/// is long enough for.
pub fn checkable(tails: &[Tail], len: u64) -> Option<&Tail> {
    tails.iter().find(|tail| tail.at <= len)
}

/// Whether a copy `len` bytes long continues the file of `tails`: it holds the newest tail it is
/// long enough for (none known: it is taken on its first line).
pub fn continued(
    tails: &[Tail],
    len: u64,
    holds: &dyn Fn(&Tail) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    match checkable(tails, len) {
        Some(tail) => holds(tail),
        None => Ok(tails.is_empty()),
    }
}

/// Whether a file `len` bytes long, the same inode, holds any of `tails`, newest first (none
/// known: it is taken on its first line).
pub fn any_held(
    tails: &[Tail],
    len: u64,
    holds: &dyn Fn(&Tail) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    for tail in tails.iter().filter(|tail| tail.at <= len) {
        if holds(tail)? {
            return Ok(true);
        }
    }
    Ok(tails.is_empty())
}

/// Tails older than the newest are kept at least this far apart in time.
const SPACING: Duration = Duration::from_millis(20);
/// Tails kept for a file being read: with `SPACING`, at least the last 0.6 s of reading. A copy
/// made just before a truncation is shorter than what was read of the original if lines came
/// in between; one of the older tails is within it.
const KEPT: usize = 32;

/// The tails of a file being read, newest first: the newest after every read.
#[derive(Debug, Default)]
pub struct Tails {
    /// With when the tail's slot was started; `None` for tails known from before.
    ring: VecDeque<(Option<Instant>, Tail)>,
}

impl Tails {
    /// Starts from the tails known of the file (newest first).
    pub fn new(known: &[Tail]) -> Self {
        Self {
            ring: known.iter().take(KEPT).map(|tail| (None, *tail)).collect(),
        }
    }

    /// The bytes read last, ending at `at`.
    pub fn read(&mut self, at: u64, bytes: &[u8]) {
        let tail = Tail::of(at, bytes);
        match self.ring.front_mut() {
            Some((Some(since), newest)) if since.elapsed() < SPACING => *newest = tail,
            _ => {
                self.ring.push_front((Some(Instant::now()), tail));
                self.ring.truncate(KEPT);
            }
        }
    }

    /// Newest first.
    pub fn to_vec(&self) -> Vec<Tail> {
        self.ring.iter().map(|(_, tail)| *tail).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_held_only_by_the_same_bytes_in_the_same_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"BANNER\nline one\nline two\n").unwrap();
        let tail = Tail::of(16, b"line one\n");
        let file = File::open(&path).unwrap();
        assert!(tail.held_by(&file).unwrap());
        std::fs::write(&path, b"BANNER\nline uno\nline two\n").unwrap();
        assert!(!tail.held_by(&file).unwrap(), "other bytes");
        std::fs::write(&path, b"BANNER\nline").unwrap();
        assert!(!tail.held_by(&file).unwrap(), "too short");
    }

    #[test]
    fn the_newest_tail_follows_every_read_and_older_ones_stay_apart() {
        let mut tails = Tails::new(&[Tail::of(10, b"known")]);
        tails.read(20, b"a");
        tails.read(30, b"b");
        let now = tails.to_vec();
        assert_eq!(now.len(), 2, "{now:?}");
        assert_eq!((now[0].at, now[1].at), (30, 10));
        std::thread::sleep(SPACING);
        tails.read(40, b"c");
        assert_eq!(tails.to_vec().len(), 3);
        assert_eq!(checkable(&tails.to_vec(), 35).map(|t| t.at), Some(30));
        assert_eq!(checkable(&tails.to_vec(), 5), None);
    }
}
