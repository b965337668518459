//! `sluice`: one binary that composes the agent, broker and indexer crates.

mod agent;
mod alloc;
mod bench;
mod cli;
mod client;
mod config;
mod http;
mod server;
mod shutdown;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: alloc::LazyHugeAlloc = alloc::LazyHugeAlloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `sluice consume | head`: the reader left, which is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Help and version go out whole; any other usage error becomes one line and exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("error: bad usage");
            eprintln!("{first} (try --help)");
            ExitCode::from(2)
        }
    }
}

/// Quiet by default (warnings, plus a line at start and stop); `RUST_LOG` overrides.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,sluice=info,sluice_broker=info,sluice_indexer=info",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
