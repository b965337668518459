//! The memory of the messages a TCP input's connections are receiving or shipping, bounded for
//! all of them together: at up to `max_message_bytes` each, 1024 connections could hold 900 MB
//! (more while the output makes them wait). Each connection's message may hold `OWN` bytes; past
//! that it draws on what the input's connections share (`SHARED`), and once that is taken it is
//! cut, as a message past `max_message_bytes` is, and counted the same way. A message gives its
//! shared bytes back when it is dropped, after it was shipped. At most 1024 × 64 KiB + 64 MiB of
//! messages in all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What one unfinished message holds without drawing on the shared bytes: a syslog or GELF
/// message of this size is never cut for want of memory.
const OWN: usize = 64 << 10;
/// What an input's connections share beyond `OWN` each.
pub const SHARED: usize = 64 << 20;

/// The shared bytes of one input's connections.
#[derive(Clone)]
pub struct Unfinished {
    drawn: Arc<AtomicUsize>,
    limit: usize,
}

impl Unfinished {
    /// `limit` bytes shared beyond `OWN` a message.
    pub fn new(limit: usize) -> Self {
        Self {
            drawn: Arc::default(),
            limit,
        }
    }

    /// A message to receive.
    pub fn message(&self) -> Incoming {
        Incoming {
            pool: self.clone(),
            bytes: Vec::new(),
            drawn: 0,
            cut: false,
        }
    }

    /// Up to `want` of the shared bytes; how many were had.
    fn draw(&self, want: usize) -> usize {
        let mut drawn = self.drawn.load(Ordering::Relaxed);
        loop {
            let got = want.min(self.limit.saturating_sub(drawn));
            if got == 0 {
                return 0;
            }
            match self.drawn.compare_exchange_weak(
                drawn,
                drawn + got,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return got,
                Err(now) => drawn = now,
            }
        }
    }
}

/// A message being received, then shipped; its shared bytes are given back when it is dropped.
pub struct Incoming {
    pool: Unfinished,
    bytes: Vec<u8>,
    drawn: usize,
    /// Cut: nothing more is added, so its bytes stay one stretch of the input.
    cut: bool,
}

impl Incoming {
    /// Appends what of `chunk` fits in `max` bytes and the memory the input has left; whether
    /// all of it did. Once it did not, the message is cut and takes nothing more.
    pub fn push(&mut self, chunk: &[u8], max: usize) -> bool {
        if self.cut {
            return chunk.is_empty();
        }
        let mut take = chunk.len().min(max.saturating_sub(self.bytes.len()));
        let own = OWN.saturating_sub(self.bytes.len());
        if take > own {
            let got = self.pool.draw(take - own);
            self.drawn += got;
            take = own + got;
        }
        self.bytes.extend_from_slice(&chunk[..take]);
        self.cut = take < chunk.len();
        !self.cut
    }

    /// Drops the last byte (a line's CR).
    pub fn pop(&mut self) -> Option<u8> {
        self.bytes.pop()
    }
}

impl std::ops::Deref for Incoming {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.pool.drawn.fetch_sub(self.drawn, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its own bytes a message draws on the shared ones, is cut once they are taken, and
    /// gives them back when received.
    #[test]
    fn messages_share_what_is_beyond_their_own() {
        let pool = Unfinished::new(100 << 10);
        let mut big = pool.message();
        assert!(big.push(&vec![b'a'; 150 << 10], usize::MAX));
        let mut other = pool.message();
        assert!(other.push(&vec![b'b'; OWN], usize::MAX), "its own bytes");
        assert!(
            !other.push(&vec![b'b'; 20 << 10], usize::MAX),
            "14 KiB left"
        );
        assert_eq!(other.len(), OWN + (14 << 10));
        assert!(!pool.message().push(&[b'c'; 16], 8), "max still cuts");
        assert_eq!(big.len(), 150 << 10);
        drop(big);
        assert!(!other.push(b"more", usize::MAX), "cut: nothing more");
        assert_eq!(other.len(), OWN + (14 << 10));
        drop(other);
        assert_eq!(pool.drawn.load(Ordering::Relaxed), 0);
        let mut again = pool.message();
        assert!(again.push(&vec![b'd'; OWN + (100 << 10)], usize::MAX));
    }
}
