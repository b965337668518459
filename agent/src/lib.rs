//! The Sluice agent: runs beside containers and ships their logs and metrics into the broker.
//!
//! Today the crate holds only its configuration section; inputs, collectors and the Kafka output
//! come with the agent issue.

mod config;

pub use config::AgentConfig;
