//! The file system's change notices, folded into two flags as they arrive: whether the globs must
//! be matched again (a file appeared, went or moved, or notices were lost), and whether a file
//! may have grown. Flags rather than a queue, so memory stays the same however many notices
//! arrive while the reader waits for the shipper (a broker outage, a write-heavy directory).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::EventKind;

#[derive(Default)]
pub struct Notices {
    noticed: Mutex<Noticed>,
    arrived: Condvar,
}

/// What the notices said since the reader last looked.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Noticed {
    pub rescan: bool,
    pub grown: bool,
}

impl Notices {
    /// Called by the watcher for each notice.
    pub fn note(&self, notice: &notify::Result<notify::Event>) {
        let (rescan, grown) = (needs_rescan(notice), may_have_grown(notice));
        if !(rescan || grown) {
            return;
        }
        let mut noticed = self.noticed.lock().unwrap_or_else(|e| e.into_inner());
        noticed.rescan |= rescan;
        noticed.grown |= grown;
        self.arrived.notify_one();
    }

    /// Waits up to `timeout` for a notice; takes what was noticed.
    pub fn take(&self, timeout: Duration) -> Noticed {
        let noticed = self.noticed.lock().unwrap_or_else(|e| e.into_inner());
        let (mut noticed, _) = self
            .arrived
            .wait_timeout_while(noticed, timeout, |n| *n == Noticed::default())
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *noticed)
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
                        | EventKind::Modify(ModifyKind::Name(_))
                        | EventKind::Any
                        | EventKind::Other
                )
        }
        Err(_) => true,
    }
}

/// Data may have been written. Not an open, a read or a close without writing: the reader's own
/// scans and reads cause those, and taking them for growth made it scan without pause.
fn may_have_grown(notice: &notify::Result<notify::Event>) -> bool {
    notice.as_ref().is_ok_and(|event| {
        matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange};

    fn notice(kind: EventKind) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind))
    }

    #[test]
    fn the_readers_own_opens_and_reads_are_not_news() {
        let notices = Notices::default();
        notices.note(&notice(EventKind::Access(AccessKind::Open(
            AccessMode::Any,
        ))));
        notices.note(&notice(EventKind::Access(AccessKind::Read)));
        notices.note(&notice(EventKind::Access(AccessKind::Close(
            AccessMode::Read,
        ))));
        assert_eq!(notices.take(Duration::ZERO), Noticed::default());
    }

    #[test]
    fn many_notices_fold_into_flags() {
        let notices = Notices::default();
        for _ in 0..100_000 {
            notices.note(&notice(EventKind::Modify(ModifyKind::Data(
                DataChange::Any,
            ))));
        }
        let noticed = notices.take(Duration::ZERO);
        assert_eq!(
            noticed,
            Noticed {
                rescan: false,
                grown: true
            }
        );
        notices.note(&notice(EventKind::Create(CreateKind::File)));
        notices.note(&Err(notify::Error::generic("lost")));
        assert!(notices.take(Duration::from_secs(5)).rescan);
        assert_eq!(notices.take(Duration::ZERO), Noticed::default());
    }
}
