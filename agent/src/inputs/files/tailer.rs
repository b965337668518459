//! Reading one file: from a position, in chunks, into lines of at most `max_line_bytes` (a longer
//! line is cut, marked, and the rest of it skipped), noticing when the file was truncated under
//! it. Reads go through `read_at`, so the open file keeps being read after a rename or unlink.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::content::{self, Tail, Tails};
use crate::acks::Progress;

/// Bytes read from one file in one turn, so one busy file cannot starve the others.
const CHUNK: usize = 128 << 10;

/// A line (or a multi-line event) and where it is in its file: `[start, end)`, newline included.
/// Its bytes are borrowed from the read buffer as long as nothing had to be joined or decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub start: u64,
    pub end: u64,
    pub bytes: Cow<'a, [u8]>,
    pub truncated: bool,
}

impl Line<'_> {
    /// The line with bytes of its own, to be kept past the next read.
    pub fn into_owned(self) -> Line<'static> {
        Line {
            bytes: Cow::Owned(self.bytes.into_owned()),
            ..self
        }
    }
}

/// A line found in the read buffer: where it is in the file, and in the buffer.
struct Span {
    start: u64,
    end: u64,
    bytes: Range<usize>,
    truncated: bool,
}

#[derive(Debug, PartialEq)]
pub enum Read {
    /// Bytes were read (maybe no whole line yet).
    Data,
    /// Nothing new.
    Idle,
    /// The file is shorter than what was read of it: it was truncated (copytruncate).
    Truncated,
    /// The file was written again from its start under the same first line, past what was read
    /// of it (the bytes read last are gone): another file now, not one a copy continues.
    Rewritten,
}

pub struct Tailer {
    /// The checkpoint entry this file continues.
    pub identity: String,
    pub path: PathBuf,
    file: File,
    pub progress: Arc<Progress>,
    /// The checksum of the file's first line when it was found.
    fingerprint: u32,
    /// The next byte of the file to read.
    read_at: u64,
    /// Read bytes; `buf[0]` is the file's byte `buf_start`. The first `used` were split into
    /// the lines handed out last, which borrow them until the next read.
    buf: Vec<u8>,
    buf_start: u64,
    used: usize,
    spans: Vec<Span>,
    /// Inside a line already cut: drop bytes up to its newline.
    skipping: bool,
    /// Since when the file's path no longer leads to it (rotated away or deleted).
    pub orphaned: Option<Instant>,
    /// Nothing more will be written: a last line without its newline is whole.
    ended: bool,
    /// The last bytes read (up to `TAIL_CHECK`, ending at `read_at`): when they are no longer
    /// in the file, it was rewritten in place past where it was read (truncated and written
    /// again, with the same first line).
    last_read: Vec<u8>,
    /// Checksums of what was read, for telling this file from one that starts alike.
    tails: Tails,
}

/// How many of the last bytes read are checked again before reading on.
const TAIL_CHECK: usize = content::TAIL_BYTES;

impl Tailer {
    pub fn new(
        identity: String,
        path: PathBuf,
        file: File,
        fingerprint: u32,
        start: u64,
        progress: Arc<Progress>,
        tails: &[Tail],
    ) -> Self {
        // A checkpoint inside a line: a cut line's rest was being skipped when the agent
        // stopped. The rest is skipped again, not shipped as a line of its own.
        let inside_a_line = start > 0
            && content::bytes_at(&file, start - 1, 1)
                .ok()
                .flatten()
                .is_some_and(|before| before[0] != b'\n');
        Self {
            identity,
            path,
            file,
            fingerprint,
            progress,
            read_at: start,
            buf: Vec::new(),
            buf_start: start,
            used: 0,
            spans: Vec::new(),
            skipping: inside_a_line,
            orphaned: None,
            ended: false,
            last_read: Vec::new(),
            tails: Tails::new(tails),
        }
    }

    /// Checksums of what was read, newest first.
    pub fn tails(&self) -> Vec<Tail> {
        self.tails.to_vec()
    }

    /// The file is done with (deleted or rotated away, and idle since): the next `lines`
    /// hands out a last line that never got its newline.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Bytes of the file not handed out as lines yet: not read, or a last line still waiting
    /// for its newline (shipped when it comes, or when the file is closed).
    pub fn behind(&self) -> u64 {
        let handed_out = self.handed_out();
        self.file
            .metadata()
            .map_or(0, |m| m.len().saturating_sub(handed_out))
    }

    /// Where the lines handed out so far end: what follows is not read into lines yet.
    pub fn handed_out(&self) -> u64 {
        self.buf_start + self.used as u64
    }

    /// Reads what is new (its whole lines are then in `lines`). `fingerprint_bytes` is how the
    /// fingerprint was taken: a file truncated and written past where it was read is told by
    /// its first line, which is another.
    pub fn read(&mut self, fingerprint_bytes: usize) -> std::io::Result<Read> {
        self.consume();
        let len = self.file.metadata()?.len();
        if len < self.read_at {
            return Ok(Read::Truncated);
        }
        if len == self.read_at {
            return Ok(Read::Idle);
        }
        if fingerprint(&self.file, fingerprint_bytes)? != Some(self.fingerprint) {
            return Ok(Read::Truncated);
        }
        if !self.still_there()? {
            return Ok(Read::Rewritten);
        }
        let want = ((len - self.read_at) as usize).min(CHUNK);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let n = self.file.read_at(&mut self.buf[old..], self.read_at)?;
        self.buf.truncate(old + n);
        self.read_at += n as u64;
        let new = &self.buf[old..];
        let keep = TAIL_CHECK
            .saturating_sub(new.len())
            .min(self.last_read.len());
        self.last_read.drain(..self.last_read.len() - keep);
        self.last_read
            .extend_from_slice(&new[new.len().saturating_sub(TAIL_CHECK)..]);
        if n > 0 {
            self.tails.read(self.read_at, &self.last_read);
        }
        Ok(if n == 0 { Read::Idle } else { Read::Data })
    }

    /// Whether the last bytes read are still where they were read.
    fn still_there(&self) -> std::io::Result<bool> {
        let at = self.read_at - self.last_read.len() as u64;
        Ok(content::bytes_at(&self.file, at, self.last_read.len())?
            .is_some_and(|now| now == self.last_read))
    }

    /// The whole lines read and not handed out yet, each cut at `max_line` bytes.
    pub fn lines(&mut self, max_line: usize) -> impl Iterator<Item = Line<'_>> {
        self.consume();
        self.split(max_line);
        let buf = &self.buf;
        self.spans.iter().map(move |span| Line {
            start: span.start,
            end: span.end,
            bytes: Cow::Borrowed(&buf[span.bytes.clone()]),
            truncated: span.truncated,
        })
    }

    /// Drops the bytes of the lines handed out last.
    fn consume(&mut self) {
        self.buf.drain(..self.used);
        self.buf_start += self.used as u64;
        self.used = 0;
        self.spans.clear();
    }

    fn split(&mut self, max_line: usize) {
        let mut used = 0;
        while let Some(pos) = memchr::memchr(b'\n', &self.buf[used..]) {
            let start = self.buf_start + used as u64;
            let end = start + pos as u64 + 1;
            let mut bytes = &self.buf[used..used + pos];
            if bytes.last() == Some(&b'\r') {
                bytes = &bytes[..bytes.len() - 1];
            }
            if self.skipping {
                self.skipping = false;
                self.progress.skipped(end);
            } else if bytes.is_empty() {
                self.progress.skipped(end);
            } else {
                self.spans.push(Span {
                    start,
                    end,
                    bytes: used..used + bytes.len().min(max_line),
                    truncated: bytes.len() > max_line,
                });
            }
            used += pos + 1;
        }
        let rest = self.buf.len() - used;
        if self.skipping {
            used = self.buf.len();
        } else if self.ended && (1..=max_line).contains(&rest) {
            let start = self.buf_start + used as u64;
            let mut end = self.buf.len();
            if self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if end == used {
                // Nothing but a CR: skipped, as empty lines are.
                self.progress.skipped(start + rest as u64);
            } else {
                self.spans.push(Span {
                    start,
                    end: start + rest as u64,
                    bytes: used..end,
                    truncated: false,
                });
            }
            used = self.buf.len();
        } else if rest > max_line {
            // No newline in sight: ship the first max_line bytes now and drop the rest of the
            // line as it comes, so a runaway line costs bounded memory.
            let start = self.buf_start + used as u64;
            self.spans.push(Span {
                start,
                end: start + max_line as u64,
                bytes: used..used + max_line,
                truncated: true,
            });
            self.skipping = true;
            used = self.buf.len();
        }
        self.used = used;
    }
}

/// The checksum identifying a file: of its first line (newline included), or of its first
/// `bytes` bytes when that line is longer. `None` while the file has neither.
pub fn fingerprint(file: &File, bytes: usize) -> std::io::Result<Option<u32>> {
    let mut head = vec![0u8; bytes];
    let mut len = 0;
    while len < bytes {
        let n = file.read_at(&mut head[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = &head[..len];
    Ok(match memchr::memchr(b'\n', head) {
        Some(newline) => Some(crc32c::crc32c(&head[..=newline])),
        None if len == bytes => Some(crc32c::crc32c(head)),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tailer(file: &std::path::Path) -> Tailer {
        let f = File::open(file).unwrap();
        let fp = fingerprint(&f, 64).unwrap().unwrap();
        Tailer::new(
            "t".into(),
            file.to_path_buf(),
            f,
            fp,
            0,
            Progress::new(0),
            &[],
        )
    }

    /// A last line without its newline is handed out once the file is ended, not before.
    #[test]
    fn an_ended_files_last_line_needs_no_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"first\nlast\r").unwrap();
        let mut t = tailer(&path);
        assert_eq!(t.read(64).unwrap(), Read::Data);
        assert_eq!(t.lines(100).count(), 1);
        assert_eq!(t.behind(), 5);
        t.end();
        let out: Vec<Line<'_>> = t.lines(100).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (&out[0].bytes[..], out[0].start, out[0].end),
            (&b"last"[..], 6, 11)
        );
        assert_eq!(t.behind(), 0);
    }

    #[test]
    fn lines_cut_lines_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"one\r\n\ntwo\n0123456789abcdef").unwrap();
        let mut t = tailer(&path);
        assert_eq!(t.read(64).unwrap(), Read::Data);
        let out: Vec<Line<'static>> = t.lines(10).map(Line::into_owned).collect();
        let texts: Vec<&[u8]> = out.iter().map(|l| &l.bytes[..]).collect();
        assert_eq!(texts, [&b"one"[..], b"two", b"0123456789"]);
        assert_eq!((out[1].start, out[1].end), (6, 10));
        assert!(out[2].truncated);
        assert_eq!(t.lines(10).count(), 0, "lines are handed out once");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"ghij\nnext\n").unwrap();
        t.read(64).unwrap();
        let out: Vec<Line<'_>> = t.lines(10).collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].bytes, &b"next"[..]);
        assert_eq!(out[0].start, 31);
        assert_eq!(t.read(64).unwrap(), Read::Idle);
        f.set_len(0).unwrap();
        assert_eq!(t.read(64).unwrap(), Read::Truncated);
        // Truncated and written past where it was read: its first line tells.
        f.write_all(&[b'z'; 64]).unwrap();
        f.write_all(b"\n").unwrap();
        assert_eq!(t.read(64).unwrap(), Read::Truncated);
    }

    /// Truncated and written again past where it was read, with the same first line (a job
    /// that rewrites its log with a fixed banner): the bytes read last are no longer there.
    #[test]
    fn a_rewrite_in_place_with_the_same_first_line_is_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        std::fs::write(&path, b"BANNER\nrun 1 line 1\nrun 1 line 2\n").unwrap();
        let mut t = tailer(&path);
        assert_eq!(t.read(64).unwrap(), Read::Data);
        assert_eq!(t.lines(100).count(), 3);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"run 1 line 3\n").unwrap();
        assert_eq!(t.read(64).unwrap(), Read::Data, "appends read on");
        assert_eq!(t.lines(100).count(), 1);
        std::fs::write(
            &path,
            b"BANNER\nrun 2 line 1\nrun 2 line 2\nrun 2 line 3\nrun 2 line 4\n",
        )
        .unwrap();
        assert_eq!(t.read(64).unwrap(), Read::Rewritten);
    }

    /// Started inside a line (the checkpoint of a cut line whose rest was being skipped): the
    /// rest is skipped, not handed out as a line.
    #[test]
    fn a_start_inside_a_line_skips_its_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"first\n0123456789abcdef\nnext\n").unwrap();
        let f = File::open(&path).unwrap();
        let fp = fingerprint(&f, 64).unwrap().unwrap();
        let mut t = Tailer::new("t".into(), path.clone(), f, fp, 16, Progress::new(16), &[]);
        t.read(64).unwrap();
        let out: Vec<Line<'_>> = t.lines(100).collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].bytes, &b"next"[..]);
        let f = File::open(&path).unwrap();
        let mut at_a_line = Tailer::new("t".into(), path, f, fp, 6, Progress::new(6), &[]);
        at_a_line.read(64).unwrap();
        assert_eq!(at_a_line.lines(100).count(), 2);
    }

    /// A last line without its newline is waited for, and counted as behind until it comes.
    #[test]
    fn a_last_line_without_its_newline_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"first\nno newline yet").unwrap();
        let mut t = tailer(&path);
        assert_eq!(t.behind(), 20);
        t.read(64).unwrap();
        assert_eq!(t.lines(100).count(), 1);
        assert_eq!(t.behind(), 14);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"\n").unwrap();
        t.read(64).unwrap();
        assert_eq!(t.lines(100).count(), 1);
        assert_eq!(t.behind(), 0);
    }

    #[test]
    fn fingerprint_needs_a_whole_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"partial").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(fingerprint(&file, 64).unwrap(), None);
        std::fs::write(&path, b"first line\nsecond").unwrap();
        let first = fingerprint(&file, 64).unwrap().unwrap();
        std::fs::write(&path, b"first line\nsomething else entirely\n").unwrap();
        assert_eq!(fingerprint(&file, 64).unwrap(), Some(first));
        assert_eq!(
            fingerprint(&file, 4).unwrap(),
            Some(crc32c::crc32c(b"firs"))
        );
    }
}
