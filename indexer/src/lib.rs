//! The Sluice indexer: a consumer group over the `logs` topic feeding one Tantivy index per
//! partition, and the search API over them.
//!
//! Today the crate holds only its configuration section; the consumer, the indexes and the
//! search API come with the indexer issue.

mod config;

pub use config::IndexerConfig;
