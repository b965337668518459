//! Appends to the active segment's log. With direct writes (O_DIRECT) a produce request's bytes
//! go from one block-aligned buffer to the disk: no copy into the page cache and no writeback
//! later, which at a few hundred MB/s were most of the broker's CPU. Readers still read through
//! the page cache, from the segment's own handle.
//!
//! A direct write must start and end on block boundaries. Each one starts at the block that
//! holds the log's end and carries that block's bytes again (the same bytes, so a torn write
//! cannot damage anything already there), padded with zeros to a whole block. The segment keeps
//! the log's logical size; the padding past it is cut when the segment closes and ignored by
//! recovery. Where the file system refuses O_DIRECT (tmpfs), the appender writes through the page
//! cache and says so once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::segment::Segment;

/// Alignment of direct writes: offsets, lengths and buffer addresses. 4 KiB satisfies every
/// logical block size in use (512 B and 4 KiB).
pub const BLOCK: usize = 4096;

/// Whether the fallback to buffered writes has been logged (once per process).
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

pub struct Appender {
    /// The base offset of the segment it appends to.
    pub base_offset: i64,
    /// What it writes through: an O_DIRECT handle, or the segment's own.
    file: Arc<File>,
    /// The segment's own handle, through the page cache.
    log: Arc<File>,
    direct: bool,
    /// Where the log ends: the next append goes here.
    end: u64,
    /// With direct writes, the bytes of the log's last, partial block.
    tail: Vec<u8>,
}

/// One append, ready to write: `data` goes at `offset` of `file`, and the appended records are
/// `data[records]`.
pub struct Write {
    pub file: Arc<File>,
    pub offset: u64,
    pub data: BytesMut,
    pub records: std::ops::Range<usize>,
}

impl Appender {
    /// An appender at the end of `segment`'s log, with O_DIRECT when `direct` and the file system
    /// takes it.
    pub fn open(segment: &Segment, direct: bool) -> io::Result<Self> {
        let end = segment.size;
        let mut appender = Self {
            base_offset: segment.base_offset,
            file: segment.log.clone(),
            log: segment.log.clone(),
            direct: false,
            end,
            tail: Vec::new(),
        };
        if !direct {
            return Ok(appender);
        }
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(segment.log_path());
        match opened {
            Ok(file) => {
                // Opened by name: make sure it is still the segment's file (a topic deleted and
                // made again has a new file under the same name).
                let (ours, named) = (segment.log.metadata()?, file.metadata()?);
                if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
                    return Err(io::Error::other(format!(
                        "{} is no longer this segment's file (topic deleted?)",
                        segment.log_path().display()
                    )));
                }
                let partial = end % BLOCK as u64;
                let mut tail = vec![0u8; partial as usize];
                segment.log.read_exact_at(&mut tail, end - partial)?;
                appender.file = Arc::new(file);
                appender.direct = true;
                appender.tail = tail;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => log_fallback(&e),
            Err(e) => return Err(e),
        }
        Ok(appender)
    }

    /// Where the log ends, as this appender knows it.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The write that appends `records` at the log's end.
    pub fn prepare(&self, records: &[u8]) -> Write {
        if !self.direct {
            return Write {
                file: self.file.clone(),
                offset: self.end,
                data: BytesMut::from(records),
                records: 0..records.len(),
            };
        }
        let used = self.tail.len() + records.len();
        let padded = used.div_ceil(BLOCK) * BLOCK;
        let mut data = BytesMut::with_capacity(padded + BLOCK);
        // Start the buffer on a block boundary: `split_off` keeps the allocation, so the
        // address stays aligned.
        data.resize(data.as_ptr().align_offset(BLOCK), 0);
        let mut data = data.split_off(data.len());
        data.extend_from_slice(&self.tail);
        data.extend_from_slice(records);
        data.resize(padded, 0);
        Write {
            file: self.file.clone(),
            offset: self.end - self.tail.len() as u64,
            data,
            records: self.tail.len()..used,
        }
    }

    /// Writes `write`, through the page cache instead when the file system turns the direct
    /// write down (from then on, every write of this appender).
    pub async fn write(&mut self, io: &super::io::Io, write: Write) -> io::Result<()> {
        let records = write.records.clone();
        let data = write.data.freeze();
        let result = io.write_at(&write.file, write.offset, data.clone()).await;
        match result {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                log_fallback(&e);
                self.direct = false;
                self.tail.clear();
                self.file = self.log.clone();
                io.write_at(&self.file, self.end, data.slice(records.clone()))
                    .await?;
            }
            other => other?,
        }
        self.written(&data, records);
        Ok(())
    }

    fn written(&mut self, data: &Bytes, records: std::ops::Range<usize>) {
        self.end += records.len() as u64;
        if self.direct {
            let keep = (self.end % BLOCK as u64) as usize;
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[records.end - keep..records.end]);
        }
    }
}

fn log_fallback(e: &io::Error) {
    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "the file system refuses direct I/O: segment logs are written through the page cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IoBackendKind;
    use crate::storage::io::Io;

    async fn appends_land_whole(kind: IoBackendKind, direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 4096).unwrap();
        let io = Io::start(kind, direct).unwrap();
        let mut appender = Appender::open(&segment, direct).unwrap();
        assert_eq!(appender.direct, direct, "ext4 takes O_DIRECT");
        let mut expected = Vec::new();
        // Sizes that cross block boundaries, end on one, and stay inside one.
        for (i, len) in [100usize, 5000, 3996, 4096, 1, 9000]
            .into_iter()
            .enumerate()
        {
            let records = vec![i as u8 + 1; len];
            let write = appender.prepare(&records);
            if direct {
                assert_eq!(write.offset % BLOCK as u64, 0);
                assert_eq!(write.data.as_ptr().align_offset(BLOCK), 0);
                assert_eq!(write.data.len() % BLOCK, 0);
            }
            appender.write(&io, write).await.unwrap();
            expected.extend_from_slice(&records);
            assert_eq!(appender.end(), expected.len() as u64);
        }
        assert_eq!(appender.direct, direct, "no write fell back");
        let written = std::fs::read(segment.log_path()).unwrap();
        assert_eq!(&written[..expected.len()], expected);
        assert!(written[expected.len()..].iter().all(|&b| b == 0));

        // A new appender (a restart) picks up the partial last block.
        let mut segment = segment;
        segment.size = expected.len() as u64;
        let mut again = Appender::open(&segment, direct).unwrap();
        let write = again.prepare(b"more");
        again.write(&io, write).await.unwrap();
        expected.extend_from_slice(b"more");
        let written = std::fs::read(segment.log_path()).unwrap();
        assert_eq!(&written[..expected.len()], expected);
    }

    #[test]
    fn a_file_made_again_under_the_segment_name_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 4096).unwrap();
        std::fs::remove_file(segment.log_path()).unwrap();
        std::fs::write(segment.log_path(), b"another topic's data").unwrap();
        let refused = Appender::open(&segment, true).err().expect("refused");
        assert!(refused.to_string().contains("no longer"), "{refused}");
    }

    #[tokio::test]
    async fn direct_appends_through_io_uring() {
        appends_land_whole(IoBackendKind::IoUring, true).await;
    }

    #[tokio::test]
    async fn direct_appends_through_plain_io() {
        appends_land_whole(IoBackendKind::Plain, true).await;
    }

    #[tokio::test]
    async fn buffered_appends() {
        appends_land_whole(IoBackendKind::IoUring, false).await;
    }
}
