//! The storage's background work: retention, compaction of compacted topics, the free-disk guard
//! (refusing produce below `min_free_bytes`), the periodic flush of acks=0/1 writes, and the
//! per-partition gauges (every 5 s).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::partition::Partition;
use super::topics::TopicSettings;
use super::{compaction, Storage};

/// Bytes appended between two looks at the free space, at least: the budget is half the room
/// above the floor, and no less than this.
const MIN_DISK_BUDGET: u64 = 1 << 20;

impl Storage {
    /// Looks at the free space: below the floor produce is refused. Appends may then take half
    /// the room left above the floor before the next look (`spend_disk_budget`), so a fast
    /// producer cannot fill the disk between the periodic checks.
    pub(super) fn check_disk(&self) {
        match free_bytes(&self.dir) {
            Ok(free) => {
                let floor = self.defaults.min_free_bytes;
                let budget = (free.saturating_sub(floor) / 2).max(MIN_DISK_BUDGET);
                self.disk_budget
                    .store(i64::try_from(budget).unwrap_or(i64::MAX), Ordering::Release);
                let low = free < floor;
                let was = self.disk_low.swap(low, Ordering::AcqRel);
                if low && !was {
                    tracing::error!(
                        free_bytes = free,
                        min_free_bytes = self.defaults.min_free_bytes,
                        "free disk below the floor: refusing produce until space returns"
                    );
                } else if was && !low {
                    tracing::warn!(
                        free_bytes = free,
                        "free disk back above the floor: accepting produce"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read free disk space"),
        }
    }

    /// Counts `bytes` appended against the budget; looks at the free space when it is spent.
    pub(super) fn spend_disk_budget(&self, bytes: usize) {
        let bytes = bytes as i64;
        if self.disk_budget.fetch_sub(bytes, Ordering::AcqRel) <= bytes {
            self.check_disk();
        }
    }

    /// Syncs what acks=0/1 wrote, at least every `flush_interval_ms`.
    pub async fn flush_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.defaults.flush_interval_ms.max(1),
        ));
        loop {
            tick.tick().await;
            let dirty: Vec<Arc<File>> = self
                .topics()
                .iter()
                .flat_map(|t| t.partitions.read().expect("topic lock").clone())
                .filter_map(|p| p.take_dirty())
                .collect();
            if !dirty.is_empty() {
                if let Err(e) = self.io.sync_all(&dirty).await {
                    tracing::error!(error = %e, "periodic flush failed: storage is failed, refusing every produce until restart");
                }
            }
        }
    }

    /// Retention, compaction and the free-disk guard, every check interval.
    pub async fn housekeeping_loop(self: Arc<Self>) {
        let period = Duration::from_millis(self.defaults.retention_check_interval_ms.max(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            for topic in self.topics() {
                let settings = topic.settings();
                let partitions = topic.partitions.read().expect("topic lock").clone();
                for (i, partition) in partitions.iter().enumerate() {
                    // A compact-only topic keeps its segments; compaction thins them instead.
                    let (retention_ms, retention_bytes) = if settings.delete {
                        (settings.retention_ms, settings.retention_bytes)
                    } else {
                        (-1, -1)
                    };
                    if let Err(e) = partition
                        .roll_if_expired(retention_ms, crate::now_ms())
                        .await
                    {
                        tracing::error!(topic = %topic.name, partition = i, error = %e, "closing an expired active segment failed");
                    }
                    // Retention deletes files by name: not those of a topic deleted since the
                    // list was taken, whose names a topic made again may own.
                    let maintenance = self.maintenance.lock().await;
                    if partition.is_closed() {
                        continue;
                    }
                    let retained = partition.enforce_retention(retention_ms, retention_bytes);
                    drop(maintenance);
                    match retained {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(topic = %topic.name, partition = i, segments = n, "retention deleted segments");
                            self.metrics
                                .segments_deleted
                                .with_label_values(&[&topic.name])
                                .inc_by(n as u64);
                        }
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = i, error = %e, "retention failed")
                        }
                    }
                    if settings.compact {
                        self.compact_partition(&topic.name, i, partition, &settings)
                            .await;
                    }
                }
            }
            // After retention: the space it freed counts.
            self.check_disk();
        }
    }

    /// Refreshes the per-partition gauges (log end offset, size on disk) every 5 s.
    pub async fn gauges_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for topic in self.topics() {
                let partitions = topic.partitions.read().expect("topic lock").clone();
                for (i, partition) in partitions.iter().enumerate() {
                    let labels = [topic.name.as_str(), &i.to_string()];
                    self.metrics
                        .log_end_offset
                        .with_label_values(&labels)
                        .set(partition.log_end_offset());
                    self.metrics
                        .log_size_bytes
                        .with_label_values(&labels)
                        .set(partition.size_bytes() as i64);
                }
            }
        }
    }

    async fn compact_partition(
        &self,
        topic: &str,
        index: usize,
        partition: &Arc<Partition>,
        settings: &TopicSettings,
    ) {
        let end = partition.log_end_offset();
        let key = (topic.to_owned(), index);
        if let Some((last_end, at)) = self.compacted.lock().expect("compacted lock").get(&key) {
            let tombstones_due = at.elapsed().as_millis() as i64 >= settings.delete_retention_ms;
            if *last_end == end && !tombstones_due {
                return;
            }
        }
        // Held by the blocking work itself: it outlives this task if shutdown aborts it.
        let compacting = self.maintenance.clone().lock_owned().await;
        // Closed by its topic's deletion while this waited: its files' names may already be
        // another topic's, made again under the same name.
        if partition.is_closed() {
            return;
        }
        self.compacted
            .lock()
            .expect("compacted lock")
            .insert(key, (end, std::time::Instant::now()));
        let (closed, active) = partition.segment_files();
        if closed.is_empty() {
            return;
        }
        let delete_retention_ms = settings.delete_retention_ms;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let partition = partition.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let _compacting = compacting;
            let rewrites = compaction::compact(&closed, &active, delete_retention_ms, now_ms)?;
            Ok(partition.apply_rewrites(rewrites)?)
        })
        .await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                // Routine (offset commits supersede each other all day): counted, not said.
                tracing::debug!(
                    topic,
                    partition = index,
                    removed,
                    "compaction removed superseded records"
                );
                self.metrics
                    .records_compacted
                    .with_label_values(&[topic])
                    .inc_by(removed);
            }
            Ok(Err(e)) => {
                tracing::error!(topic, partition = index, error = %e, "compaction failed")
            }
            Err(e) => {
                tracing::error!(topic, partition = index, error = %e, "compaction task failed")
            }
        }
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail * stat.f_frsize)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::super::batch::testing::one_record;
    use super::super::scratch;
    use super::*;

    /// One batch of one record of `key`, its value padded past half a smallest segment.
    fn keyed(key: &str, value: &str) -> Bytes {
        let value = format!("{value} {}", "x".repeat(600));
        Bytes::from(one_record(Some(key.as_bytes()), value.as_bytes()))
    }

    async fn append(storage: &Arc<Storage>, topic: &str, key: &str, value: &str) {
        let topic = storage.topic(topic).unwrap();
        let partition = topic.partition(0).unwrap();
        storage
            .append(topic, partition, keyed(key, value))
            .await
            .unwrap()
            .unwrap();
    }

    /// The bytes of every file in `dir`, by name.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_deleted_topics_compaction_cannot_touch_the_topic_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let storage = scratch(dir.path()).await;
        // The smallest segments: every record closes one, so the old values are compactable.
        let configs = BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("segment.bytes".to_owned(), "1024".to_owned()),
        ]);
        storage
            .create_topic("table", 1, configs.clone(), false)
            .await
            .unwrap();
        for i in 0..4 {
            append(&storage, "table", "k", &format!("old {i}")).await;
        }
        let old = storage.topic("table").unwrap();
        let (old_partition, settings) = (old.partition(0).unwrap(), old.settings());

        // A compaction is under way: the deletion waits for it before removing anything.
        let compacting = storage.maintenance.clone().lock_owned().await;
        let deleting = tokio::spawn({
            let storage = storage.clone();
            async move { storage.delete_topic("table").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !deleting.is_finished(),
            "deleted under a running compaction"
        );
        assert!(storage.partition_dir("table", 0).exists());
        // Meanwhile other topics can still be made.
        tokio::time::timeout(
            Duration::from_secs(5),
            storage.create_topic("other", 1, BTreeMap::new(), false),
        )
        .await
        .expect("creating a topic waits for nobody's compaction")
        .unwrap();
        drop(compacting);
        deleting.await.unwrap().unwrap();
        assert!(!storage.partition_dir("table", 0).exists());

        // Made again under the same name, with the same file names for its segments.
        storage
            .create_topic("table", 1, configs, false)
            .await
            .unwrap();
        // As many segments as the old partition had, and more.
        for i in 0..6 {
            append(&storage, "table", "k", &format!("new {i}")).await;
        }
        let before = files(&storage.partition_dir("table", 0));

        // A compaction of the old partition, scheduled before the deletion, runs now.
        storage
            .compact_partition("table", 0, &old_partition, &settings)
            .await;
        assert_eq!(files(&storage.partition_dir("table", 0)), before);
    }
}
