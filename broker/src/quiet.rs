//! Troubles said at most once a minute each: a client retrying a refused request, or consumers
//! polling a corrupt batch, would otherwise write a log line every few milliseconds. The
//! counters in `metrics` count every one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each kind of trouble is said at most this often.
const SAID_EVERY: Duration = Duration::from_secs(60);
/// Kinds remembered at most (a peer or a partition each): past it, all are forgotten.
const KINDS: usize = 1024;

#[derive(Default)]
pub struct Quiet {
    said: Mutex<HashMap<String, Instant>>,
}

impl Quiet {
    /// Whether `kind` of trouble is to be said now: not said within the last minute.
    pub fn first_in_a_while(&self, kind: &str) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.get(kind).is_some_and(|at| at.elapsed() < SAID_EVERY) {
            return false;
        }
        if said.len() >= KINDS {
            said.clear();
        }
        said.insert(kind.to_owned(), Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_said_once_a_minute() {
        let quiet = Quiet::default();
        assert!(quiet.first_in_a_while("a"));
        assert!(!quiet.first_in_a_while("a"));
        assert!(quiet.first_in_a_while("b"));
    }
}
