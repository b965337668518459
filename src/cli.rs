//! The command line: one `sluice` binary, a subcommand per job; `sluice-agent` takes the flags
//! of `sluice agent`.

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
    Topics(TopicsArgs),
    /// Inspect consumer groups on a broker.
    Groups(GroupsArgs),
    /// Write records to a topic, one per line of stdin or a file.
    Produce(ProduceArgs),
    /// Read records from a topic.
    Consume(ConsumeArgs),
    /// Search the indexed logs through the search API.
    Search(SearchArgs),
    /// Run an end-to-end benchmark against a real broker.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

/// `sluice-agent`: the agent alone, with the flags of `sluice agent`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-agent",
    version,
    about = "Ships logs and metrics from this host into a Kafka broker (the Sluice agent alone)"
)]
pub struct AgentCli {
    #[command(flatten)]
    pub args: AgentArgs,
}

/// Flags shared by every long-running process.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file (see config/sluice.toml); built-in defaults when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP address for /metrics and /health, and the search API of `up` and `indexer`
    /// [default: 127.0.0.1:7070; the agent's: 127.0.0.1:7071].
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
    #[arg(long, value_name = "LIST", value_parser = broker_list)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Query in Lucene-like syntax, e.g. 'level:error AND host:web-1'; `*` matches everything.
    #[arg(default_value = "*")]
    pub query: String,
    /// Only events at or after this time: a duration ago (15m or -15m, 2h, 7d) or RFC 3339.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only events before this time: a duration ago or RFC 3339.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Most hits to print (the newest ones).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub limit: usize,
    /// Print the API's JSON answer instead of one line per hit.
    #[arg(long)]
    pub json: bool,
    /// HTTP address of a running `sluice up` or `sluice indexer`.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7070",
        env = "SLUICE_HTTP"
    )]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Kafka bootstrap servers, comma-separated [default: 127.0.0.1:9092].
    #[arg(long, value_name = "LIST", value_parser = broker_list)]
    pub brokers: Option<String>,
    /// Where the agent keeps its file checkpoints and spool [default: /var/lib/sluice-agent].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
}

/// Where a client command finds the broker.
#[derive(Debug, Args)]
pub struct BrokersArg {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "127.0.0.1:9092",
        env = "SLUICE_BROKERS",
        value_parser = broker_list,
        global = true
    )]
    pub brokers: String,
}

#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub brokers: BrokersArg,
    #[command(subcommand)]
    pub action: TopicsAction,
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// List topics with their partition counts.
    List,
    /// Create a topic.
    Create {
        /// Topic name (letters, digits, `.`, `_`, `-`; at most 249).
        name: String,
        /// Partition count; the broker's default when absent.
        #[arg(long, short)]
        partitions: Option<i32>,
        /// A topic config, e.g. `--config compression.type=zstd` (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// Change a topic's configs in place (the others it has are kept), or add partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Raise the partition count to this (it cannot go down; keyed records of the partitions
        /// there were may then go to the new ones).
        #[arg(long, short)]
        partitions: Option<i32>,
        /// A config to set, e.g. `--config retention.bytes=1000000000` (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A config to remove, back to the broker's default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        deletes: Vec<String>,
    },
    /// Show a topic's partitions, offsets and configuration.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    pub brokers: BrokersArg,
    #[command(subcommand)]
    pub action: GroupsAction,
}

#[derive(Debug, Subcommand)]
pub enum GroupsAction {
    /// List consumer groups.
    List,
    /// Show a group's members, assignments, offsets and lag.
    Describe {
        /// Group id.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    #[command(flatten)]
    pub brokers: BrokersArg,
    /// Read records from this file instead of stdin.
    #[arg(long, short, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Write every record to this partition (else the key decides; records without one go where
    /// librdkafka's partitioner puts them: a batch at a time to one partition, not one by one).
    #[arg(long, short)]
    pub partition: Option<i32>,
    /// Acknowledgement the broker must give: all, 1 or 0.
    #[arg(long, default_value = "all", value_parser = ["all", "-1", "1", "0"])]
    pub acks: String,
    /// Batch compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
    /// How long the records may wait for the broker's acknowledgement once the input ended
    /// (seconds); those left then are not delivered, and the command fails.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_timeout: u64,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    #[command(flatten)]
    pub brokers: BrokersArg,
    /// Where to start: `beginning`, `end`, or an offset number.
    #[arg(long, default_value = "beginning", conflicts_with = "timestamp")]
    pub from: String,
    /// Start at the first record at or after this time: RFC 3339, epoch seconds or
    /// milliseconds, or a duration ago (15m or -15m, 2h, 7d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub timestamp: Option<String>,
    /// Only this partition (default: all).
    #[arg(long, short)]
    pub partition: Option<i32>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub max: Option<u64>,
    /// Print one JSON object per record (partition, offset, timestamp, key, value, headers);
    /// bytes that are not UTF-8 come as {"base64": ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Produce through librdkafka and report MB/s and acknowledgement latency.
    Produce(BenchProduceArgs),
    /// Index through a broker and an indexer it starts; compare with raw Tantivy, measure
    /// freshness and search latency.
    Index(BenchIndexArgs),
    /// Ship a log file through `sluice agent` into a broker it starts; MB/s per core of agent CPU
    /// and peak RSS, against kcat on the same file.
    Agent(BenchAgentArgs),
}

#[derive(Debug, Args)]
pub struct BenchAgentArgs {
    /// Log lines to write the file of (cycled), e.g. the Loghub samples concatenated.
    #[arg(long, value_name = "FILE")]
    pub lines: PathBuf,
    /// Size of the file to ship, in MiB.
    #[arg(long, default_value_t = 500)]
    pub megabytes: u64,
    /// Whether the broker the bench starts appends with O_DIRECT (its `direct_io`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub direct_io: bool,
    /// A librdkafka property for the agent's producer (its `[agent.kafka]`), e.g.
    /// `batch.size=4000000`; the kcat baseline gets the same ones. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    /// Log lines to make events of (cycled), e.g. the Loghub samples concatenated.
    #[arg(long, value_name = "FILE")]
    pub lines: PathBuf,
    /// Events to index (raw Tantivy gets the same ones).
    #[arg(long, default_value_t = 1_000_000)]
    pub documents: u64,
    /// Partitions of the `logs` topic the bench creates.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Freshness is measured at this fraction of the indexer's measured rate.
    #[arg(long, default_value_t = 0.5)]
    pub rate_fraction: f64,
    /// How long to measure freshness, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub freshness_seconds: f64,
    /// Runs of each search query.
    #[arg(long, default_value_t = 50)]
    pub queries: usize,
    /// Whether the broker the bench starts appends with O_DIRECT (its `direct_io`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub direct_io: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    /// Broker to drive; without it the bench starts its own `sluice broker` on a temporary
    /// directory (needed to report the broker's CPU use).
    #[arg(long, value_name = "LIST", value_parser = broker_list)]
    pub brokers: Option<String>,
    /// Data directory for the broker the bench starts (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Record payload size in bytes (random bytes: incompressible).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Use the lines of this file as records instead of random bytes (cycled).
    #[arg(long, value_name = "FILE")]
    pub lines: Option<PathBuf>,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Target rate in MB/s; 0 sends as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate_mb: f64,
    /// Producer acks: all, 1 or 0.
    #[arg(long, default_value = "all", value_parser = ["all", "-1", "1", "0"])]
    pub acks: String,
    /// Batch compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
    /// Producer linger.ms: how long librdkafka waits to fill a batch (part of every ack latency).
    #[arg(long, default_value_t = 2)]
    pub linger_ms: u32,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Storage backend of the broker the bench starts: io_uring or plain.
    #[arg(long, value_parser = ["auto", "io_uring", "plain"], default_value = "auto")]
    pub io_backend: String,
    /// Whether the broker the bench starts appends with O_DIRECT (its `direct_io`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub direct_io: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Kafka bootstrap servers as librdkafka takes them, `[SCHEME://]HOST[:PORT]`, comma-separated;
/// one it cannot read it reports only as a transport failure.
fn broker_list(text: &str) -> Result<String, String> {
    let readable = |entry: &str| {
        let entry = entry.trim();
        let entry = entry.split_once("://").map_or(entry, |(_, rest)| rest);
        match entry.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
            None => !entry.is_empty(),
        }
    };
    if text.split(',').all(readable) {
        Ok(text.to_owned())
    } else {
        Err(format!("expected HOST:PORT, comma-separated, got {text:?}"))
    }
}
