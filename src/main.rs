//! `sluice`: every part of the appliance, a subcommand each.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: sluice::alloc::LazyHugeAlloc = sluice::alloc::LazyHugeAlloc;

fn main() -> ExitCode {
    sluice::entry::main(sluice::run)
}
