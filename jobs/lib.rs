//! The `cspbill` library: the jobs behind the binary (reading inputs, running the stages, writing the
//! warehouse, exports, manifests), so that tests and tools link them instead of including files. The binary
//! (`jobs/main.rs`) only parses the command line, installs logging and maps outcomes to exit codes, as ripgrep's
//! `crates/core/main.rs` does. The pure stages live in the `pipeline` crate, the tables in `schemas`.

pub mod anomalies;
pub mod buckets;
pub mod change_control;
pub mod compare;
pub mod drift;
pub mod cli;
pub mod close_report;
pub mod config;
pub mod documents;
pub mod error;
pub mod explain;
pub mod fanout;
pub mod exports;
pub mod focus;
pub mod generate;
pub mod guard;
pub mod inputs;
pub mod late;
pub mod ledger;
pub mod manifest;
pub mod metrics;
pub mod privacy;
pub mod reference;
pub mod run;
pub mod shard;
pub mod snapshot;
pub mod split;
pub mod spool;
pub mod stages;
pub mod warehouse;

/// SHA-256 of a byte string, lower-case hex: the checksum of every input and output in manifests.
pub fn inputs_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
