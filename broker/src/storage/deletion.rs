//! Deleting a topic, and removing at start what a deletion cut short left behind.
//!
//! A deletion removes the topic from `topics.json` before its directories: a crash in between
//! leaves directories no topic owns, which `remove_orphans` deletes at the next start, before a
//! topic made again under the same name could adopt their segments.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::topics::TopicRecord;
use super::{is_internal, Storage, TopicError};

impl Storage {
    /// Deletes a topic and its data. The work runs in a task of its own, so a client that goes
    /// away mid-deletion (or a stop that cancels its connection) cannot leave it half done.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<(), TopicError> {
        if is_internal(name) {
            return Err(TopicError::Internal(name.to_owned()));
        }
        let storage = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move { storage.delete_now(&name).await })
            .await
            .map_err(|e| TopicError::Io(std::io::Error::other(e)))?
    }

    async fn delete_now(&self, name: &str) -> Result<(), TopicError> {
        // First, and without holding `admin`: a compaction under way writes into the topic's
        // directories and finishes before they go, while other topics can still be made.
        let _no_maintenance = self.maintenance.lock().await;
        let _admin = self.admin.lock().await;
        if self.topic(name).is_none() {
            return Err(TopicError::Unknown(name.to_owned()));
        }
        self.save_topics(|records| {
            records.remove(name);
        })?;
        let topic = self
            .topics
            .write()
            .expect("topics lock")
            .remove(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let partitions = topic.partitions.read().expect("topic lock").clone();
        for partition in &partitions {
            partition.close().await;
        }
        self.compacted
            .lock()
            .expect("compacted lock")
            .retain(|(topic, _), _| topic != name);
        for i in 0..partitions.len() {
            let dir = self.partition_dir(name, i as u32);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted topic's data");
            }
        }
        self.metrics.topic_deleted(name, partitions.len());
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }
}

/// Removes partition directories (`<topic>-<n>`) that no topic in `topics` owns: the rest of a
/// deletion, or of a growth in partitions, that a crash cut short. No topic this broker serves
/// has them, and one made again under the same name must start empty.
pub(super) fn remove_orphans(dir: &Path, topics: &BTreeMap<String, TopicRecord>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // Said in one line for all of them (a topic of thousands cut short left thousands).
    let (mut removed, mut first) = (0u64, None);
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((topic, index)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(index) = index.parse::<u32>() else {
            continue;
        };
        let owned = topics.get(topic).is_some_and(|t| index < t.partitions);
        if owned {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                removed += 1;
                first.get_or_insert(name);
            }
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove an orphaned partition directory");
            }
        }
    }
    if let Some(first) = first {
        tracing::warn!(
            removed,
            first = %first,
            "removed partition directories no topic owns (a deletion or a growth cut short)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_no_topic_owns_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "logs-0",
            "logs-1",
            "logs-2",
            "gone-0",
            "my-topic-0",
            "not-a-partition",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("00000000000000000000.log"), b"x").unwrap();
        }
        std::fs::write(dir.path().join("topics.json"), b"{}").unwrap();
        let record = |partitions| TopicRecord {
            partitions,
            configs: BTreeMap::new(),
        };
        let topics = BTreeMap::from([
            ("logs".to_owned(), record(2)),
            ("my-topic".to_owned(), record(1)),
        ]);
        remove_orphans(dir.path(), &topics);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // `logs-2`: a growth cut short; `gone-0`: a deletion cut short.
        assert_eq!(
            left,
            [
                "logs-0",
                "logs-1",
                "my-topic-0",
                "not-a-partition",
                "topics.json"
            ]
        );
    }
}
