//! `cspbill`: month-end billing for Microsoft CSP resellers. This file parses the command line, installs
//! logging, dispatches to the jobs and maps outcomes to exit codes (0 ok, 1 invariant/commit, 2 usage/input).


mod cli;
mod config;
mod error;
mod explain;
mod exports;
mod generate;
mod inputs;
mod late;
mod manifest;
mod reference;
mod run;
// Part of the warehouse API (history, lock TTL, crash points) serves the storage tests, which include this file.
#[allow(dead_code)]
mod warehouse;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(&args.global);
    let outcome = cli::dispatch(args);
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            let code = error::exit_code(&err);
            // `{:#}` prints the whole context chain on one line: what failed, where, and what to do.
            cli::report("error", &format!("{err:#}"), serde_json::json!({ "exit_code": code }));
            std::process::exit(code);
        }
    }
}

/// SHA-256 of a byte string, lower-case hex: the checksum of every input and output in manifests.
pub fn inputs_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
