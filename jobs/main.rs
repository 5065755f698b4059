//! `cspbill`: month-end billing for Microsoft CSP resellers. This file parses the command line, installs
//! logging, dispatches to the jobs (the `cspbill` library, `jobs/lib.rs`) and maps outcomes to exit codes
//! (0 ok, 1 invariant/commit, 2 usage/input).

use clap::Parser;

// jemalloc, as Polars itself ships with: it returns the memory of finished streaming batches to the system, where
// glibc's arenas kept most of a stage's high-water mark resident (benches/README.md has the measurements).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use cspbill::{cli, error};

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(&args.global);
    let outcome = cli::dispatch(args);
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            let code = error::exit_code(&err);
            // `{:#}` prints the whole context chain on one line: what failed, where, and what to do.
            cli::report("error", &error::redact(&format!("{err:#}")), serde_json::json!({ "exit_code": code }));
            std::process::exit(code);
        }
    }
}
