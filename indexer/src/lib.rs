//! The Sluice indexer: a consumer group over the `logs` topic feeding one Tantivy index per
//! partition, and the search API over them.
//!
//! `consumer` is the group member: it owns the partitions the group gives it and hands each
//! one's records to a `worker` thread, which owns the `partition::PartitionIndex` (time buckets
//! of Tantivy indexes laid out as `layout` says) and turns records into documents with `mapping`
//! under the one `schema`. Each commit stores
//! the partition's next offset in the Tantivy commit itself, so a restart resumes exactly where
//! the index ends. `search` reads every partition's indexes on disk, whichever process writes
//! them, and `api` serves it over HTTP. The `metrics_view` reads the agents' samples from the
//! `metrics` topic and serves the latest of each series for Prometheus.

mod api;
mod config;
mod consumer;
mod kafka;
mod layout;
pub mod mapping;
mod metrics;
mod metrics_view;
mod partition;
pub mod schema;
pub mod search;
mod worker;

pub use api::router;
pub use config::{IndexerConfig, MetricsViewConfig};
pub use consumer::Indexer;
pub use kafka::KAFKA_FIXED;
pub use metrics::{IndexerMetrics, SearchMetrics, ViewMetrics};
pub use metrics_view::MetricsView;
pub use search::{SearchLimits, SearchService};
