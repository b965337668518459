//! The `[indexer]` section of `sluice.toml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Indexer and search settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexerConfig {
    /// Kafka bootstrap servers the indexer consumes from (comma-separated host:port).
    pub brokers: String,
    /// Topic holding the log events.
    pub topic: String,
    /// Consumer group the indexer processes form.
    pub group_id: String,
    /// Partitions to create the topic with when it does not exist yet.
    pub topic_partitions: i32,
    /// How often each partition's index commits (and so how soon a line becomes searchable).
    pub commit_interval_ms: u64,
    /// Tantivy indexing memory per partition writer, shared by its threads; a thread flushes a
    /// segment when its share is full.
    pub writer_memory_bytes: usize,
    /// Indexing threads per partition writer. Partitions already index side by side (a worker
    /// thread each); more threads per writer cost more CPU per document (smaller segments, more
    /// merging) for little gain on a small machine.
    pub writer_threads: usize,
    /// Width of an index time bucket: retention deletes whole buckets.
    pub bucket_ms: u64,
    /// A bucket is deleted once the newest record it holds is older than this; 0 keeps
    /// everything.
    pub retention_ms: u64,
    /// Larger records are indexed as text, cut at this size, and counted as malformed.
    pub max_document_bytes: usize,
    /// Consumer session timeout: how long a dead indexer keeps its partitions.
    pub session_timeout_ms: u64,
    /// Static group membership (Kafka's `group.instance.id`): an indexer restarted with the same
    /// id takes its partitions straight back, without a rebalance. Empty: dynamic membership.
    pub instance_id: String,
    /// Most hits one search request may return.
    pub max_search_limit: usize,
    /// Deepest hit (offset + limit) a search may page to.
    pub max_search_window: usize,
    /// Searches that may run at once; more wait, so searching cannot starve indexing.
    pub max_concurrent_searches: usize,
    pub metrics_view: MetricsViewConfig,
    /// librdkafka properties for the indexer's clients (SASL for a Kafka cluster),
    /// applied over their own settings; those the indexer's handover and offsets depend on are
    /// refused (`KAFKA_FIXED`).
    pub kafka: BTreeMap<String, String>,
}

/// `[indexer.metrics_view]`: the agents' metric samples, served at `/metrics/agents`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsViewConfig {
    /// Serve the view; off, the indexer leaves the metrics topic alone.
    pub enabled: bool,
    /// Topic the agents ship their samples to.
    pub topic: String,
    /// A series no agent has reported for this long is dropped from the view.
    pub expire_after_ms: u64,
    /// Most series the view holds; samples of further series are refused and counted.
    pub max_series: usize,
}

impl Default for MetricsViewConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "metrics".into(),
            expire_after_ms: 120_000,
            max_series: 200_000,
        }
    }
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "logs".into(),
            group_id: "sluice-indexer".into(),
            topic_partitions: 3,
            commit_interval_ms: 1000,
            writer_memory_bytes: 32 << 20,
            writer_threads: 1,
            bucket_ms: 86_400_000,
            retention_ms: 7 * 86_400_000,
            max_document_bytes: 1 << 20,
            session_timeout_ms: 10_000,
            instance_id: String::new(),
            max_search_limit: 1000,
            max_search_window: 10_000,
            max_concurrent_searches: 4,
            metrics_view: MetricsViewConfig::default(),
            kafka: BTreeMap::new(),
        }
    }
}

impl IndexerConfig {
    /// Checks what the types cannot say; the error is `(key, what was expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        // Tantivy's MEMORY_BUDGET_NUM_BYTES_MIN (15 arena margins of 1 MB), which it does not export.
        let min_memory = 15_000_000;
        if self.writer_threads == 0 {
            return Err(("indexer.writer_threads", "expected at least 1".into()));
        }
        let min_memory = min_memory * self.writer_threads;
        if self.writer_memory_bytes < min_memory {
            return Err((
                "indexer.writer_memory_bytes",
                format!(
                    "expected at least {min_memory} (Tantivy's smallest share, 15 MB, for each \
                     of the {} writer_threads), got {}",
                    self.writer_threads, self.writer_memory_bytes
                ),
            ));
        }
        for (key, value) in [
            ("indexer.bucket_ms", self.bucket_ms),
            ("indexer.commit_interval_ms", self.commit_interval_ms),
            (
                "indexer.metrics_view.expire_after_ms",
                self.metrics_view.expire_after_ms,
            ),
        ] {
            if value == 0 {
                return Err((key, "expected a positive number of milliseconds".into()));
            }
        }
        if self.topic_partitions < 1 {
            return Err((
                "indexer.topic_partitions",
                format!("expected at least 1, got {}", self.topic_partitions),
            ));
        }
        for (key, value) in [
            ("indexer.topic", &self.topic),
            ("indexer.group_id", &self.group_id),
        ] {
            if value.is_empty() {
                return Err((key, "expected a name, got an empty string".into()));
            }
        }
        // librdkafka's own range for session.timeout.ms, named here rather than by librdkafka.
        if !(1..=3_600_000).contains(&self.session_timeout_ms) {
            return Err((
                "indexer.session_timeout_ms",
                format!("expected 1 to 3600000, got {}", self.session_timeout_ms),
            ));
        }
        if self.max_document_bytes < 256 {
            return Err((
                "indexer.max_document_bytes",
                format!("expected at least 256, got {}", self.max_document_bytes),
            ));
        }
        if self.max_search_limit == 0 || self.max_search_window < self.max_search_limit {
            return Err((
                "indexer.max_search_limit",
                format!(
                    "expected at least 1 and no more than max_search_window ({}), got {}",
                    self.max_search_window, self.max_search_limit
                ),
            ));
        }
        Ok(())
    }
}
