//! `cspbill`: month-end billing for Microsoft CSP resellers. This file parses the command line, installs
//! logging, dispatches to the jobs (the `cspbill` library, `jobs/lib.rs`) and maps outcomes to exit codes
//! (0 ok, 1 invariant/commit, 2 usage/input).

use clap::Parser;
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
