//! The `sluice` and `sluice-agent` binaries, composed from the agent, broker and indexer crates.
//!
//! `cli` is the command line and `run` sends each subcommand to its module: `server` for `up`,
//! `broker` and `indexer`; `agent`; `client` for `topics`, `groups`, `produce`, `consume` and
//! `search`; `bench`. `config` loads the one TOML file, `http` serves /metrics and /health
//! (`cpu_time` reads a process's CPU time for it and for `bench`),
//! `shutdown` turns signals into one stop, and `entry` is what both binaries' `main` does.
//! `sluice-agent` runs the same `agent::run` as `sluice agent`, in a binary that links neither the
//! broker nor the indexer: what hosts and pods that only ship logs install.

pub mod agent;
pub mod alloc;
mod bench;
pub mod cli;
mod client;
mod config;
mod cpu_time;
pub mod entry;
mod http;
mod server;
mod shutdown;

use crate::cli::{Cli, Command};

/// Runs one `sluice` subcommand to its end.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => server::up(args).await,
        Command::Broker(args) => server::broker(args.server).await,
        Command::Indexer(args) => server::indexer(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Topics(args) => client::topics::run(args).await,
        Command::Produce(args) => {
            tokio::task::spawn_blocking(|| client::produce::run(args)).await?
        }
        Command::Consume(args) => {
            tokio::task::spawn_blocking(|| client::consume::run(args)).await?
        }
        Command::Groups(args) => tokio::task::spawn_blocking(|| client::groups::run(args)).await?,
        Command::Search(args) => tokio::task::spawn_blocking(|| client::search::run(args)).await?,
        Command::Bench {
            target: cli::BenchTarget::Produce(args),
        } => bench::produce(args).await,
        Command::Bench {
            target: cli::BenchTarget::Index(args),
        } => bench::index(args).await,
        Command::Bench {
            target: cli::BenchTarget::Agent(args),
        } => bench::agent(args).await,
    }
}
