//! The group coordinator: consumer-group membership (`group`), and committed offsets kept in
//! the compacted internal topic `__consumer_offsets` (one JSON record per group, topic and
//! partition; a null value deletes), replayed into memory at start. A commit is acknowledged
//! only once its record is fdatasynced. `offset_delete` deletes a group's offsets of some
//! partitions.

pub mod group;
mod offset_delete;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

use self::group::{Group, State};
use crate::metrics::BrokerMetrics;
use crate::storage::batch::BatchHeader;
use crate::storage::{AppendError, Storage, Topic, TopicError};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub timestamp: i64,
}

#[derive(Serialize, Deserialize)]
struct OffsetKey {
    group: String,
    topic: String,
    partition: i32,
}

/// One partition's offset in an OffsetCommit.
pub struct CommitRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: String,
}

type Offsets = HashMap<String, BTreeMap<(String, i32), Committed>>;

pub struct Coordinator {
    storage: Arc<Storage>,
    metrics: BrokerMetrics,
    pub groups: Mutex<HashMap<String, Group>>,
    offsets: Mutex<Offsets>,
    initial_delay: Duration,
    /// `offsets_retention_ms` of the configuration.
    offsets_retention_ms: i64,
    /// Commits share it; an expiry takes it alone.
    expiring: tokio::sync::RwLock<()>,
    /// When the broker started (ms): a group not heard of since is taken as idle from then.
    started_ms: i64,
}

impl Coordinator {
    /// Creates `__consumer_offsets` if needed and replays it.
    pub async fn open(
        storage: Arc<Storage>,
        metrics: BrokerMetrics,
        initial_delay: Duration,
        offsets_retention_ms: i64,
    ) -> anyhow::Result<Arc<Self>> {
        let topic = offsets_topic(&storage).await?;
        let offsets = replay(&topic).await?;
        let committed: usize = offsets.values().map(BTreeMap::len).sum();
        if committed > 0 {
            tracing::info!(
                groups = offsets.len(),
                offsets = committed,
                "loaded committed offsets"
            );
        }
        // Commits name existing topics only: offsets of a missing one are a deleted topic's,
        // whose forgetting a stop or a crash cut short.
        let gone: BTreeSet<String> = offsets
            .values()
            .flat_map(|committed| committed.keys().map(|(topic, _)| topic))
            .filter(|topic| storage.topic(topic).is_none())
            .cloned()
            .collect();
        let coordinator = Arc::new(Self {
            storage,
            metrics,
            groups: Mutex::new(HashMap::new()),
            offsets: Mutex::new(offsets),
            initial_delay,
            offsets_retention_ms,
            expiring: tokio::sync::RwLock::new(()),
            started_ms: crate::now_ms(),
        });
        for topic in gone {
            coordinator.forget_topic(&topic).await;
        }
        Ok(coordinator)
    }

    /// Runs `f` on an existing group; `None` when nobody ever joined or committed for `id`.
    pub fn existing_group<R>(&self, id: &str, f: impl FnOnce(&mut Group) -> R) -> Option<R> {
        self.groups.lock().expect("groups lock").get_mut(id).map(f)
    }

    /// Runs `f` on the group, created empty if it does not exist (JoinGroup only: other requests
    /// must not create groups for any id they name).
    pub fn with_group<R>(&self, id: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let mut groups = self.groups.lock().expect("groups lock");
        let group = groups
            .entry(id.to_owned())
            .or_insert_with(|| Group::new(id, self.initial_delay));
        f(group)
    }

    /// Stores offsets for `group`, durably. Members of an active group must name their current
    /// generation; a group nobody joined (manual assignment, generation -1) may always commit.
    pub async fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        requests: Vec<CommitRequest>,
    ) -> Result<(), i16> {
        {
            let groups = self.groups.lock().expect("groups lock");
            if let Some(group) = groups.get(group_id) {
                let simple = generation < 0 && group.state == State::Empty;
                if !simple {
                    if group.state == State::CompletingRebalance {
                        return Err(ResponseError::RebalanceInProgress.code());
                    }
                    if !group.members.contains_key(member_id) {
                        return Err(ResponseError::UnknownMemberId.code());
                    }
                    if generation != group.generation {
                        return Err(ResponseError::IllegalGeneration.code());
                    }
                }
            } else if generation >= 0 {
                return Err(ResponseError::UnknownMemberId.code());
            }
        }
        let timestamp = crate::now_ms();
        let entries: Vec<(OffsetKey, Option<Committed>)> = requests
            .into_iter()
            .map(|r| {
                (
                    OffsetKey {
                        group: group_id.to_owned(),
                        topic: r.topic,
                        partition: r.partition,
                    },
                    Some(Committed {
                        offset: r.offset,
                        metadata: r.metadata,
                        timestamp,
                    }),
                )
            })
            .collect();
        let _shared = self.expiring.read().await;
        self.persist(&entries).await?;
        let mut offsets = self.offsets.lock().expect("offsets lock");
        let group = offsets.entry(group_id.to_owned()).or_default();
        for (key, value) in entries {
            group.insert(
                (key.topic, key.partition),
                value.expect("a commit has values"),
            );
        }
        Ok(())
    }

    async fn persist(&self, entries: &[(OffsetKey, Option<Committed>)]) -> Result<(), i16> {
        let storage_error = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "writing __consumer_offsets");
            ResponseError::CoordinatorNotAvailable.code()
        };
        let topic = self
            .storage
            .topic(OFFSETS_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
        let partition = topic
            .partition(0)
            .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
        let timestamp = crate::now_ms();
        let records: Vec<Record> = entries
            .iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder keeps one batch while offset - sequence stays constant.
                sequence: i as i32 - 1,
                timestamp,
                key: serde_json::to_vec(key).ok().map(Bytes::from),
                value: value
                    .as_ref()
                    .and_then(|v| serde_json::to_vec(v).ok())
                    .map(Bytes::from),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| storage_error(&e))?;
        let (_, file) = self
            .storage
            .append(topic, partition, buf.freeze())
            .await
            .map_err(|e| storage_error(&e))?
            .map_err(|e| match e {
                // Kafka's answer to a commit of too many partitions for one batch: not
                // retriable, unlike a coordinator away.
                AppendError::TooLarge { .. } => ResponseError::InvalidCommitOffsetSize.code(),
                e => storage_error(&e),
            })?;
        self.storage
            .make_durable(vec![file])
            .await
            .map_err(|e| storage_error(&e))
    }

    /// Committed offsets of a group: all of them, or those of the listed partitions.
    pub fn committed(&self, group_id: &str) -> BTreeMap<(String, i32), Committed> {
        self.offsets
            .lock()
            .expect("offsets lock")
            .get(group_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every group with members or committed offsets: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let groups = self.groups.lock().expect("groups lock");
        let offsets = self.offsets.lock().expect("offsets lock");
        let mut ids: Vec<&String> = groups.keys().chain(offsets.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| match groups.get(id) {
                Some(g) => (
                    id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                ),
                None => (id.clone(), "consumer".to_owned(), State::Empty.name()),
            })
            .collect()
    }

    /// Deletes an empty group and its offsets (tombstones in `__consumer_offsets`).
    pub async fn delete(&self, group_id: &str) -> Result<(), i16> {
        {
            let mut groups = self.groups.lock().expect("groups lock");
            match groups.get(group_id) {
                Some(g) if !g.members.is_empty() => return Err(ResponseError::NonEmptyGroup.code()),
                Some(_) => {
                    groups.remove(group_id);
                }
                None if !self
                    .offsets
                    .lock()
                    .expect("offsets lock")
                    .contains_key(group_id) =>
                {
                    return Err(ResponseError::GroupIdNotFound.code())
                }
                None => {}
            }
        }
        let doomed: Vec<(OffsetKey, Option<Committed>)> = self
            .committed(group_id)
            .into_keys()
            .map(|(topic, partition)| {
                (
                    OffsetKey {
                        group: group_id.to_owned(),
                        topic,
                        partition,
                    },
                    None,
                )
            })
            .collect();
        if !doomed.is_empty() {
            self.persist(&doomed).await?;
        }
        self.offsets.lock().expect("offsets lock").remove(group_id);
        Ok(())
    }

    /// Forgets the committed offsets of groups idle (no member, none joining) for the retention,
    /// counted from their last commit or from when they became empty, whichever is later
    /// (Kafka's KIP-211): tombstones in `__consumer_offsets`, so it lasts through a restart.
    /// Groups with neither members nor offsets are forgotten too.
    pub async fn expire_offsets(&self, now_ms: i64) {
        // No commit lands between the check and the tombstones.
        let _alone = self.expiring.write().await;
        let doomed: Vec<(String, Vec<(String, i32)>)> = {
            let groups = self.groups.lock().expect("groups lock");
            let offsets = self.offsets.lock().expect("offsets lock");
            offsets
                .iter()
                .filter_map(|(id, committed)| {
                    let idle_since = match groups.get(id) {
                        Some(group) if !group.is_idle() => return None,
                        Some(group) => group.empty_since_ms,
                        // Not heard of since the start: its members may have left just before.
                        None => self.started_ms,
                    };
                    let last = committed.values().map(|c| c.timestamp).max()?;
                    (now_ms.saturating_sub(last.max(idle_since)) >= self.offsets_retention_ms)
                        .then(|| (id.clone(), committed.keys().cloned().collect()))
                })
                .collect()
        };
        let tombstones: Vec<(OffsetKey, Option<Committed>)> = doomed
            .iter()
            .flat_map(|(group, keys)| {
                keys.iter().map(|(topic, partition)| {
                    let key = OffsetKey {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    };
                    (key, None)
                })
            })
            .collect();
        if let Err(code) = self.persist_tombstones(&tombstones).await {
            tracing::warn!(code, "expiring committed offsets: tried again in a minute");
            return;
        }
        let mut rejoined: Vec<(OffsetKey, Option<Committed>)> = Vec::new();
        {
            let mut groups = self.groups.lock().expect("groups lock");
            let mut offsets = self.offsets.lock().expect("offsets lock");
            for (group, _) in &doomed {
                if groups.get(group).is_some_and(|g| !g.is_idle()) {
                    // A member joined while the tombstones were written: its offsets stay,
                    // written again after them.
                    let kept = offsets.get(group).into_iter().flatten();
                    rejoined.extend(kept.map(|((topic, partition), committed)| {
                        let key = OffsetKey {
                            group: group.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                        };
                        (key, Some(committed.clone()))
                    }));
                    continue;
                }
                offsets.remove(group);
                tracing::info!(%group, "committed offsets expired: the group was idle for offsets_retention_ms");
            }
            groups.retain(|id, group| !group.is_idle() || offsets.contains_key(id));
        }
        if !rejoined.is_empty() {
            if let Err(code) = self.persist(&rejoined).await {
                tracing::error!(
                    code,
                    "writing again the offsets of a group that rejoined during their expiry"
                );
            }
        }
    }

    /// Writes `tombstones` in batches of at most 256 KiB of keys, well under max.message.bytes
    /// (ids are unbounded).
    async fn persist_tombstones(
        &self,
        tombstones: &[(OffsetKey, Option<Committed>)],
    ) -> Result<(), i16> {
        let mut start = 0;
        while start < tombstones.len() {
            let mut bytes = 0;
            let end = tombstones[start..]
                .iter()
                .position(|(key, _)| {
                    bytes += key.group.len() + key.topic.len() + 64;
                    bytes > 256 << 10
                })
                .map_or(tombstones.len(), |n| start + n.max(1));
            self.persist(&tombstones[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    /// Forgets every group's committed offsets of a deleted topic, as Kafka does: a topic made
    /// again under its name is read from where each group's reset policy says, not from offsets
    /// that belonged to the old one (a group would skip the new topic's first records).
    pub async fn forget_topic(&self, topic: &str) {
        // No commit lands between the look and the tombstones.
        let _alone = self.expiring.write().await;
        let tombstones: Vec<(OffsetKey, Option<Committed>)> = {
            let offsets = self.offsets.lock().expect("offsets lock");
            offsets
                .iter()
                .flat_map(|(group, committed)| {
                    committed
                        .keys()
                        .filter(|(t, _)| t == topic)
                        .map(|(topic, partition)| {
                            let key = OffsetKey {
                                group: group.clone(),
                                topic: topic.clone(),
                                partition: *partition,
                            };
                            (key, None)
                        })
                })
                .collect()
        };
        if tombstones.is_empty() {
            return;
        }
        if let Err(code) = self.persist_tombstones(&tombstones).await {
            tracing::warn!(
                code,
                topic,
                "forgetting the committed offsets of a deleted topic: they stay"
            );
            return;
        }
        // A group left without offsets goes as a restart's replay would drop it.
        self.offsets
            .lock()
            .expect("offsets lock")
            .retain(|_, committed| {
                committed.retain(|(t, _), _| t != topic);
                !committed.is_empty()
            });
        tracing::info!(
            topic,
            offsets = tombstones.len(),
            "the deleted topic's committed offsets are forgotten"
        );
    }

    /// Expires offsets every minute, in a task of its own: writing tombstones must not hold up
    /// the heartbeats and rebalances `tick_loop` drives.
    pub async fn expiry_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            self.expire_offsets(crate::now_ms()).await;
        }
    }

    /// Drives timeouts (every 50 ms) and refreshes the lag gauge (every 5 s).
    pub async fn tick_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last_lag = Instant::now();
        let mut lag_series = HashSet::new();
        loop {
            tick.tick().await;
            let now = Instant::now();
            for group in self.groups.lock().expect("groups lock").values_mut() {
                group.tick(now);
            }
            if now.duration_since(last_lag) >= Duration::from_secs(5) {
                last_lag = now;
                self.export_lag(&mut lag_series);
            }
        }
    }

    /// Sets the lag of every committed offset, and removes the series (`exported` last time)
    /// of offsets gone since: set in place rather than reset, so no scrape finds the gauge
    /// empty.
    fn export_lag(&self, exported: &mut HashSet<[String; 3]>) {
        let offsets = self.offsets.lock().expect("offsets lock").clone();
        let mut now = HashSet::new();
        for (group, committed) in offsets {
            for ((topic, partition), c) in committed {
                let Some(end) = self
                    .storage
                    .topic(&topic)
                    .and_then(|t| t.partition(partition))
                else {
                    continue;
                };
                let lag = (end.log_end_offset() - c.offset).max(0);
                let labels = [group.clone(), topic, partition.to_string()];
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&labels[0], &labels[1], &labels[2]])
                    .set(lag);
                now.insert(labels);
            }
        }
        for gone in exported.difference(&now) {
            let _ = self
                .metrics
                .consumer_lag
                .remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
        }
        *exported = now;
    }
}

async fn offsets_topic(storage: &Storage) -> anyhow::Result<Arc<Topic>> {
    if let Some(topic) = storage.topic(OFFSETS_TOPIC) {
        return Ok(topic);
    }
    let configs = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
    match storage.create_topic(OFFSETS_TOPIC, 1, configs, false).await {
        Ok(topic) => Ok(topic),
        Err(TopicError::Exists(_)) => storage
            .topic(OFFSETS_TOPIC)
            .ok_or_else(|| anyhow::anyhow!("{OFFSETS_TOPIC} vanished")),
        Err(e) => Err(anyhow::anyhow!("creating {OFFSETS_TOPIC}: {e}")),
    }
}

/// Folds the offsets log into the latest committed offset per group, topic and partition.
async fn replay(topic: &Topic) -> anyhow::Result<Offsets> {
    let mut offsets = Offsets::new();
    let Some(partition) = topic.partition(0) else {
        return Ok(offsets);
    };
    let mut next = partition.log_start_offset();
    while next < partition.log_end_offset() {
        let read = match partition.read(next, 1 << 20, true).await {
            Ok(read) => read,
            // Start with the commits read so far: their groups re-read a little (at least once).
            Err(e) => {
                tracing::error!(offset = next, error = ?e, "{OFFSETS_TOPIC} is unreadable from here on; later commits are lost");
                break;
            }
        };
        if read.records.is_empty() {
            break;
        }
        let mut rest = &read.records[..];
        while let Ok(header) = BatchHeader::parse(rest) {
            let mut batch = read.records.slice_ref(&rest[..header.size.min(rest.len())]);
            rest = &rest[header.size.min(rest.len())..];
            next = next.max(header.last_offset() + 1);
            // Only the broker writes this topic, but a damaged batch must not stop the start.
            let set = match RecordBatchDecoder::decode(&mut batch) {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(offset = header.base_offset, error = %e, "skipping an undecodable batch in {OFFSETS_TOPIC}");
                    continue;
                }
            };
            for record in set.records {
                let Some(key) = record
                    .key
                    .as_deref()
                    .and_then(|k| serde_json::from_slice::<OffsetKey>(k).ok())
                else {
                    continue;
                };
                let group = offsets.entry(key.group).or_default();
                match record
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice::<Committed>(v).ok())
                {
                    Some(committed) => {
                        group.insert((key.topic, key.partition), committed);
                    }
                    None => {
                        group.remove(&(key.topic, key.partition));
                    }
                }
            }
        }
    }
    offsets.retain(|_, g| !g.is_empty());
    Ok(offsets)
}

#[cfg(test)]
mod tests;
