//! How outcomes map to exit codes (DESIGN §7): 0 success, 1 ran but an invariant, threshold or commit failed,
//! 2 bad usage, configuration or input. Errors travel as `anyhow::Error`; a [`Failure`] anywhere in the chain,
//! or a configuration `PipelineError`, decides the code.

use std::fmt;

/// An outcome with a known exit code and a message that says what was wrong, where, and what to do.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: bad usage, configuration or input.
    Usage(String),
    /// Exit 1: the run ran but an invariant, a threshold or the commit failed.
    Invariant(String),
}

impl Failure {
    pub fn usage(msg: impl Into<String>) -> Self {
        Failure::Usage(msg.into())
    }
    pub fn invariant(msg: impl Into<String>) -> Self {
        Failure::Invariant(msg.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Invariant(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error chain: the first `Failure` or configuration `PipelineError` found decides;
/// anything else (I/O, Polars) is an input problem (2) unless proven otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Usage(_) => 2,
                Failure::Invariant(_) => 1,
            };
        }
        if let Some(p) = cause.downcast_ref::<pipeline::PipelineError>() {
            return if p.is_config() {
                2
            } else if matches!(p, pipeline::PipelineError::Invariant { .. }) {
                1
            } else {
                2
            };
        }
    }
    2
}
