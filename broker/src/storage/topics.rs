//! Topic configuration: the Kafka config names a topic accepts, their defaults from `[broker]`,
//! and the per-topic overrides kept in `topics.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::partition::LogSettings;
use crate::config::{BrokerConfig, CompressionType};

/// The topic-level settings Sluice honours, by their Kafka names.
pub const TOPIC_CONFIG_NAMES: &[&str] = &[
    "compression.type",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "cleanup.policy",
    "delete.retention.ms",
    "index.interval.bytes",
];

/// Kafka topic configs that mean nothing on one broker keeping batches as their producers sent
/// them: accepted (admin tools and Kafka Streams set them on the topics they make) and kept,
/// without effect. A value must still be of the right kind.
pub const ACCEPTED_WITHOUT_EFFECT: &[&str] = &[
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "leader.replication.throttled.replicas",
    "follower.replication.throttled.replicas",
    "message.timestamp.type",
    "message.downconversion.enable",
    "message.format.version",
    "preallocate",
    "segment.index.bytes",
    "segment.jitter.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
    "message.timestamp.difference.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
];

/// A topic as stored in `topics.json`: its partition count and the configs set on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub partitions: u32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A topic's effective settings: overrides on top of the broker's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicSettings {
    pub compression: CompressionType,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub max_message_bytes: u32,
    pub index_interval_bytes: u32,
    /// `cleanup.policy` holds `delete`: retention removes old segments.
    pub delete: bool,
    /// `cleanup.policy` holds `compact`: only the newest record of each key is kept.
    pub compact: bool,
    /// How long a compacted topic keeps tombstones (null values) before removing them.
    pub delete_retention_ms: i64,
}

impl TopicSettings {
    /// Applies `configs` over the broker defaults; the error names the bad key and value.
    pub fn resolve(
        defaults: &BrokerConfig,
        configs: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let mut s = Self {
            compression: defaults.compression_type,
            retention_ms: defaults.retention_ms,
            retention_bytes: defaults.retention_bytes,
            segment_bytes: defaults.segment_bytes,
            segment_ms: defaults.segment_ms,
            max_message_bytes: defaults.max_message_bytes,
            index_interval_bytes: defaults.index_interval_bytes,
            delete: true,
            compact: false,
            delete_retention_ms: 86_400_000,
        };
        for (key, value) in configs {
            let bad = |what: &str| format!("config {key}={value:?}: expected {what}");
            match key.as_str() {
                "compression.type" => {
                    s.compression = CompressionType::parse(value)
                        .ok_or_else(|| bad("producer, zstd, lz4 or none"))?;
                }
                "retention.ms" => {
                    s.retention_ms = value.parse().map_err(|_| bad("milliseconds or -1"))?
                }
                "retention.bytes" => {
                    s.retention_bytes = value.parse().map_err(|_| bad("bytes or -1"))?
                }
                "segment.bytes" => {
                    s.segment_bytes = value
                        .parse()
                        .ok()
                        .filter(|&b| b >= 1024)
                        .ok_or_else(|| bad("bytes, at least 1024"))?
                }
                "segment.ms" => s.segment_ms = value.parse().map_err(|_| bad("milliseconds"))?,
                "max.message.bytes" => {
                    s.max_message_bytes = value.parse().map_err(|_| bad("bytes"))?
                }
                "cleanup.policy" => {
                    let policies: Vec<&str> = value.split(',').map(str::trim).collect();
                    if !policies.iter().all(|p| matches!(*p, "delete" | "compact")) {
                        return Err(bad("delete, compact or compact,delete"));
                    }
                    s.delete = policies.contains(&"delete");
                    s.compact = policies.contains(&"compact");
                }
                "delete.retention.ms" => {
                    s.delete_retention_ms = value.parse().map_err(|_| bad("milliseconds"))?
                }
                "index.interval.bytes" => {
                    s.index_interval_bytes = value
                        .parse()
                        .ok()
                        .filter(|&b| b >= 1)
                        .ok_or_else(|| bad("bytes, at least 1"))?
                }
                "min.insync.replicas" => {
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad("a number of replicas, at least 1"))?;
                }
                "unclean.leader.election.enable"
                | "message.downconversion.enable"
                | "preallocate" => {
                    value.parse::<bool>().map_err(|_| bad("true or false"))?;
                }
                "message.timestamp.type" if value != "CreateTime" => {
                    return Err(bad(
                        "CreateTime (records keep their producers' timestamps; LogAppendTime is not supported)",
                    ));
                }
                "segment.index.bytes"
                | "segment.jitter.ms"
                | "file.delete.delay.ms"
                | "flush.messages"
                | "flush.ms"
                | "min.compaction.lag.ms"
                | "max.compaction.lag.ms"
                | "message.timestamp.difference.max.ms"
                | "message.timestamp.before.max.ms"
                | "message.timestamp.after.max.ms" => {
                    value.parse::<u64>().map_err(|_| bad("a number"))?;
                }
                "min.cleanable.dirty.ratio" => {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| bad("a ratio from 0 to 1"))?;
                }
                _ if ACCEPTED_WITHOUT_EFFECT.contains(&key.as_str()) => {}
                _ => {
                    return Err(format!(
                    "config {key} is not supported (supported: {}; accepted without effect: {})",
                    TOPIC_CONFIG_NAMES.join(", "),
                    ACCEPTED_WITHOUT_EFFECT.join(", ")
                ))
                }
            }
        }
        Ok(s)
    }

    pub fn log_settings(&self) -> LogSettings {
        LogSettings {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes,
        }
    }

    /// Every supported config with its effective value, for DescribeConfigs.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("compression.type", self.compression.as_str().to_owned()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("cleanup.policy", self.cleanup_policy().to_owned()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
        ]
    }

    fn cleanup_policy(&self) -> &'static str {
        match (self.compact, self.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        }
    }
}

/// Kafka refuses a topic whose name differs from an existing one's only by '.' against '_' (its
/// metric names would be the same); refused here too, so that topics move between Sluice and
/// Kafka under the same names.
pub fn check_collision(name: &str, existing: &[String]) -> Result<(), String> {
    let folded = |n: &str| n.replace('.', "_");
    match existing.iter().find(|other| folded(other) == folded(name)) {
        Some(other) => Err(format!(
            "topic {name} collides with the existing topic {other} (Kafka refuses names that \
             differ only by '.' against '_')"
        )),
        None => Ok(()),
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!("topic name {name:?} must be 1 to 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is reserved"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "topic name {name:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_bad_values_are_named() {
        let defaults = BrokerConfig::default();
        let mut configs = BTreeMap::new();
        configs.insert("compression.type".into(), "zstd".into());
        configs.insert("retention.ms".into(), "1000".into());
        let s = TopicSettings::resolve(&defaults, &configs).unwrap();
        assert_eq!(s.compression, CompressionType::Zstd);
        assert_eq!(s.retention_ms, 1000);
        assert_eq!(s.segment_bytes, defaults.segment_bytes);
        configs.insert("retention.ms".into(), "soon".into());
        let err = TopicSettings::resolve(&defaults, &configs).unwrap_err();
        assert!(
            err.contains("retention.ms") && err.contains("soon"),
            "{err}"
        );
        let mut streams = BTreeMap::new();
        streams.insert("message.timestamp.type".into(), "CreateTime".into());
        streams.insert("min.insync.replicas".into(), "2".into());
        assert_eq!(
            TopicSettings::resolve(&defaults, &streams),
            TopicSettings::resolve(&defaults, &BTreeMap::new())
        );
        streams.insert("message.timestamp.type".into(), "LogAppendTime".into());
        assert!(TopicSettings::resolve(&defaults, &streams)
            .unwrap_err()
            .contains("LogAppendTime is not supported"));
        // What tools set on compacted topics: accepted, checked for their kind.
        let mut compacted = BTreeMap::new();
        compacted.insert("min.cleanable.dirty.ratio".into(), "0.5".into());
        compacted.insert("min.compaction.lag.ms".into(), "60000".into());
        compacted.insert("index.interval.bytes".into(), "8192".into());
        let s = TopicSettings::resolve(&defaults, &compacted).unwrap();
        assert_eq!(s.index_interval_bytes, 8192);
        compacted.insert("min.cleanable.dirty.ratio".into(), "2".into());
        assert!(TopicSettings::resolve(&defaults, &compacted)
            .unwrap_err()
            .contains("a ratio from 0 to 1"));
        let mut unknown = BTreeMap::new();
        unknown.insert("flux.capacitor".into(), "1".into());
        assert!(TopicSettings::resolve(&defaults, &unknown)
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("logs.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
