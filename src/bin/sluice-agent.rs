//! `sluice-agent`: the agent alone, for the hosts and pods that only ship logs and metrics. The
//! same code as `sluice agent`, without the broker and the indexer linked in: a smaller file to
//! deploy and less of it resident.

use std::process::ExitCode;

use sluice::cli::AgentCli;

fn main() -> ExitCode {
    sluice::entry::main(|cli: AgentCli| sluice::agent::run(cli.args))
}
