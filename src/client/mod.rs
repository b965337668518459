//! The client commands: `topics`, `groups`, `produce` and `consume` through librdkafka (what works
//! here works against any Kafka cluster too), and `search` through the search API.

pub mod consume;
pub mod groups;
pub mod produce;
pub mod search;
pub mod topics;

use std::time::Duration;

use rdkafka::ClientConfig;

/// How long a command waits for the broker before it gives up with an error.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A librdkafka configuration for `brokers`, with its own logging kept quiet.
pub fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "sluice-cli")
        .set("log_level", "3");
    config
}
