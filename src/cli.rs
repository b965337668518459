//! The command line: one `sluice` binary, a subcommand per job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Logging and metrics pipeline appliance: agent, Kafka-compatible broker, search indexer",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole appliance in one process: broker, indexer, search API, metrics.
    Up(ServerArgs),
    /// Run the Kafka-compatible broker alone.
    Broker(BrokerArgs),
    /// Run an indexer: a consumer-group member that feeds the search indexes.
    Indexer(IndexerArgs),
    /// Run an agent: ships logs and metrics from this host into the broker.
    Agent(AgentArgs),
    /// Manage topics on a broker.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Inspect consumer groups on a broker.
    Groups {
        #[command(subcommand)]
        action: GroupsAction,
    },
    /// Write records to a topic from stdin or a file, one per line.
    Produce(ClientArgs),
    /// Read records from a topic.
    Consume(ClientArgs),
    /// Search the indexed logs.
    Search {
        /// Query in Lucene-like syntax, e.g. 'level:error AND host:web-1'.
        query: String,
    },
    /// Run an end-to-end benchmark.
    Bench {
        /// What to benchmark, e.g. `produce`.
        target: String,
    },
}

/// Flags shared by every long-running process.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file (see config/sluice.toml); built-in defaults when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP address for /metrics, /health and the search API [default: 127.0.0.1:7070].
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory for all state [default: ./sluice-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct IndexerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory for the indexes [default: ./sluice-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated [default: 127.0.0.1:9092].
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Kafka bootstrap servers, comma-separated [default: 127.0.0.1:9092].
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// List topics.
    List,
    /// Create a topic.
    Create { name: String },
    /// Show a topic's partitions and configuration.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum GroupsAction {
    /// List consumer groups.
    List,
    /// Show a group's members, assignments, offsets and lag.
    Describe { name: String },
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Topic to use.
    pub topic: String,
}
