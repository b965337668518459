//! The `[broker]` section of `sluice.toml`.

use serde::{Deserialize, Serialize};

/// Which storage I/O backend the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackendKind {
    /// io_uring where the kernel allows it, plain I/O otherwise.
    Auto,
    /// io_uring or fail at start.
    IoUring,
    /// pread/pwrite/fdatasync on a blocking thread pool.
    Plain,
}

/// What the broker does to batches that producers send uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionType {
    /// Store every batch exactly as the producer sent it.
    Producer,
    /// Compress uncompressed batches with zstd; compressed ones stay as sent.
    Zstd,
    /// Compress uncompressed batches with lz4 (Kafka's frame format); compressed ones stay as sent.
    Lz4,
    /// Never compress on the broker (batches stay as sent, like `producer`).
    None,
}

impl CompressionType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "producer" => Some(Self::Producer),
            "zstd" => Some(Self::Zstd),
            "lz4" => Some(Self::Lz4),
            "none" | "uncompressed" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::None => "none",
        }
    }
}

/// Broker settings. Every key has a default; `config/sluice.toml` documents each one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Kafka protocol listener.
    pub listen: String,
    /// host:port told to clients in Metadata; empty means the listener's address.
    pub advertised_listener: String,
    /// This broker's node id in Metadata.
    pub node_id: i32,
    /// Storage I/O backend.
    pub io_backend: IoBackendKind,
    /// Append segment logs with O_DIRECT where the file system allows it (off by default: on the
    /// disks measured last it lost both throughput and tail latency to the page cache).
    pub direct_io: bool,
    /// Create a topic when a client first produces to it or asks for its metadata.
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics.
    pub default_partitions: u32,
    /// Largest record batch accepted (Kafka's `max.message.bytes`).
    pub max_message_bytes: u32,
    /// Largest request frame; a larger one closes the connection.
    pub max_request_bytes: u32,
    /// The most bytes of requests being received at once, over every connection (Kafka's
    /// `queued.max.request.bytes`): a request waits to be read while they are taken.
    pub queued_max_request_bytes: u64,
    /// A connection that starts no request for this long is closed (Kafka's
    /// `connections.max.idle.ms`); clients reconnect when they need to.
    pub connections_max_idle_ms: u64,
    /// The most record bytes one Fetch response carries, whatever the client asks (Kafka's
    /// `fetch.max.bytes`); a single larger batch still goes out whole.
    pub fetch_max_bytes: u32,
    /// Requests one connection may have in flight (being made durable) at once.
    pub max_in_flight_per_connection: usize,
    /// Roll to a new segment when the active one reaches this size.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is this old (milliseconds).
    pub segment_ms: u64,
    /// One offset-index entry per this many bytes of log.
    pub index_interval_bytes: u32,
    /// Delete segments whose newest record is older than this (milliseconds; an active one is
    /// closed first); -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest closed segments while a partition is larger than this; -1: no limit.
    pub retention_bytes: i64,
    /// How often retention and the free-disk guard run (milliseconds).
    pub retention_check_interval_ms: u64,
    /// Refuse produce while the data directory's file system has less free space than this
    /// (offset commits are still taken).
    pub min_free_bytes: u64,
    /// Default `compression.type` of new topics: producer | zstd | lz4 | none.
    pub compression_type: CompressionType,
    /// Group commit: the longest a durable (acks=all) write waits for others to share its fsync (microseconds).
    pub flush_linger_us: u64,
    /// Group commit: an fsync cycle starts at once when this many durable writes are waiting.
    pub flush_max_pending: usize,
    /// Writes with acks=0/1 reach the disk (fdatasync) within this many milliseconds.
    pub flush_interval_ms: u64,
    /// A new consumer group's first rebalance waits this long for more members to join.
    pub group_initial_rebalance_delay_ms: u64,
    /// The committed offsets of a group without members are forgotten this long after its last
    /// commit or after it became empty, whichever is later (Kafka's
    /// `offsets.retention.minutes`, 7 days): every `kcat -G` with a new group name left offsets
    /// and lag series for ever.
    pub offsets_retention_ms: u64,
}

impl BrokerConfig {
    /// Values that parse but could not work, refused when the configuration loads: the key
    /// and what was expected.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if host_port(&self.listen).is_none() {
            return Err((
                "broker.listen",
                format!("expected HOST:PORT, got {:?}", self.listen),
            ));
        }
        if let Err(why) = self.advertised() {
            return Err(("broker.advertised_listener", why));
        }
        if !(1..=10_000).contains(&self.default_partitions) {
            return Err((
                "broker.default_partitions",
                format!("expected 1 to 10000, got {}", self.default_partitions),
            ));
        }
        if self.max_request_bytes < self.max_message_bytes {
            return Err((
                "broker.max_request_bytes",
                format!(
                    "expected at least max_message_bytes ({}): a batch comes inside a request",
                    self.max_message_bytes
                ),
            ));
        }
        if self.queued_max_request_bytes < self.max_request_bytes as u64 {
            return Err((
                "broker.queued_max_request_bytes",
                format!(
                    "expected at least max_request_bytes ({}): a request is read whole",
                    self.max_request_bytes
                ),
            ));
        }
        if self.node_id < 0 {
            return Err((
                "broker.node_id",
                format!(
                    "expected 0 or more (clients take a negative id for no broker), got {}",
                    self.node_id
                ),
            ));
        }
        if self.segment_bytes < 1024 {
            return Err(("broker.segment_bytes", "expected at least 1024".into()));
        }
        for (key, value) in [
            ("broker.max_message_bytes", self.max_message_bytes as u64),
            ("broker.fetch_max_bytes", self.fetch_max_bytes as u64),
            (
                "broker.index_interval_bytes",
                self.index_interval_bytes as u64,
            ),
            (
                "broker.max_in_flight_per_connection",
                self.max_in_flight_per_connection as u64,
            ),
            ("broker.flush_max_pending", self.flush_max_pending as u64),
            (
                "broker.connections_max_idle_ms",
                self.connections_max_idle_ms,
            ),
            ("broker.flush_interval_ms", self.flush_interval_ms),
            ("broker.offsets_retention_ms", self.offsets_retention_ms),
            (
                "broker.retention_check_interval_ms",
                self.retention_check_interval_ms,
            ),
        ] {
            if value == 0 {
                return Err((key, "expected a positive number".into()));
            }
        }
        Ok(())
    }

    /// The address clients are told to connect to, when it is not the listener's own.
    pub fn advertised(&self) -> Result<Option<(String, i32)>, String> {
        if self.advertised_listener.is_empty() {
            return Ok(None);
        }
        match host_port(&self.advertised_listener) {
            Some((host, port)) => Ok(Some((host.to_owned(), port as i32))),
            None => Err(format!(
                "expected HOST:PORT, got {:?}",
                self.advertised_listener
            )),
        }
    }
}

/// `host:port` split, with a host and a port that parses.
fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host, port.parse().ok()?)).filter(|(host, _)| !host.is_empty())
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            advertised_listener: String::new(),
            node_id: 1,
            io_backend: IoBackendKind::Auto,
            direct_io: false,
            auto_create_topics: true,
            default_partitions: 3,
            max_message_bytes: 1_048_588,
            max_request_bytes: 104_857_600,
            queued_max_request_bytes: 536_870_912,
            connections_max_idle_ms: 600_000,
            fetch_max_bytes: 52_428_800,
            max_in_flight_per_connection: 32,
            segment_bytes: 268_435_456,
            segment_ms: 604_800_000,
            index_interval_bytes: 4096,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            retention_check_interval_ms: 30_000,
            min_free_bytes: 268_435_456,
            compression_type: CompressionType::Producer,
            flush_linger_us: 0,
            flush_max_pending: 1024,
            flush_interval_ms: 1000,
            group_initial_rebalance_delay_ms: 1000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}
