//! OffsetDelete (`kafka-consumer-groups --delete-offsets`, kafka-python's
//! `delete_group_offsets`): a group's committed offsets of some partitions are deleted, with
//! tombstones in `__consumer_offsets`, unless a member of the group is subscribed to the topic.

use bytes::Bytes;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

use super::group::Group;
use super::{Coordinator, OffsetKey};

impl Coordinator {
    /// Deletes `group_id`'s committed offsets of `partitions`; the error of each partition (0 for
    /// one deleted, or that had none), or the group's error.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<((String, i32), i16)>, i16> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        let subscribed: Vec<bool> = {
            let groups = self.groups.lock().expect("groups lock");
            let has_offsets = self
                .offsets
                .lock()
                .expect("offsets lock")
                .contains_key(group_id);
            match groups.get(group_id) {
                None if !has_offsets => return Err(ResponseError::GroupIdNotFound.code()),
                None => vec![false; partitions.len()],
                // Kafka's answer for a group whose members' subscriptions it cannot read.
                Some(group)
                    if !group.members.is_empty()
                        && group.protocol_type.as_deref() != Some("consumer") =>
                {
                    return Err(ResponseError::NonEmptyGroup.code())
                }
                Some(group) => partitions
                    .iter()
                    .map(|(topic, _)| subscribes_to(group, topic))
                    .collect(),
            }
        };
        let committed = self.committed(group_id);
        let mut doomed = Vec::new();
        let mut results = Vec::with_capacity(partitions.len());
        for ((topic, partition), subscribed) in partitions.into_iter().zip(subscribed) {
            let error = if subscribed {
                ResponseError::GroupSubscribedToTopic.code()
            } else if self
                .storage
                .topic(&topic)
                .is_none_or(|t| t.partition(partition).is_none())
            {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                0
            };
            if error == 0 && committed.contains_key(&(topic.clone(), partition)) {
                let key = OffsetKey {
                    group: group_id.to_owned(),
                    topic: topic.clone(),
                    partition,
                };
                doomed.push((key, None));
            }
            results.push(((topic, partition), error));
        }
        if !doomed.is_empty() {
            let _shared = self.expiring.read().await;
            self.persist(&doomed).await?;
            let mut offsets = self.offsets.lock().expect("offsets lock");
            if let Some(group) = offsets.get_mut(group_id) {
                for (key, _) in doomed {
                    group.remove(&(key.topic, key.partition));
                }
                if group.is_empty() {
                    offsets.remove(group_id);
                }
            }
        }
        Ok(results)
    }
}

/// Whether a member of `group` is subscribed to `topic`, by the subscription it joined with.
/// One that cannot be read counts as subscribed: its offsets are kept.
fn subscribes_to(group: &Group, topic: &str) -> bool {
    let protocol = group.protocol.as_deref().unwrap_or_default();
    group.members.values().any(|member| {
        let metadata = member
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default();
        subscription(metadata).is_none_or(|topics| topics.iter().any(|t| t.as_str() == topic))
    })
}

/// The topics of a consumer-protocol subscription: a version, then the subscription (a newer
/// version than known is read as the newest known, as Kafka's are supersets).
fn subscription(mut metadata: Bytes) -> Option<Vec<kafka_protocol::protocol::StrBytes>> {
    if metadata.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, 3);
    let _ = bytes::Buf::get_i16(&mut metadata);
    ConsumerProtocolSubscription::decode(&mut metadata, version)
        .ok()
        .map(|s| s.topics)
}
