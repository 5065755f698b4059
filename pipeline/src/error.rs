//! The pipeline's error type. Errors carry their context (table, file, line, column) and say what to do.

use thiserror::Error;

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// A configuration or reference-data problem found by a stage: maps to exit status 2 in the job.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}: column `{column}`: {message}")]
pub struct ConfigError {
    /// The file (or table) the problem is in.
    pub file: String,
    /// 1-based line number in that file (header = line 1), 0 when not tied to a line.
    pub line: u64,
    pub column: String,
    /// What is wrong and what to do, lower-case, no trailing period.
    pub message: String,
}

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("bad period `{0}`: write it as YYYY-MM, for example 2025-11")]
    BadPeriod(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Several configuration errors found at once; the job prints the first few.
    #[error("{} configuration error(s), first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Configs(Vec<ConfigError>),
    #[error("polars failed in stage `{stage}`: {source}")]
    Polars {
        stage: &'static str,
        #[source]
        source: polars::prelude::PolarsError,
    },
    #[error("invariant violated in `{stage}`: {message}")]
    Invariant { stage: &'static str, message: String },
}

impl PipelineError {
    /// Wraps a Polars error with the stage it happened in.
    pub fn polars(stage: &'static str) -> impl FnOnce(polars::prelude::PolarsError) -> Self {
        move |source| PipelineError::Polars { stage, source }
    }
    /// Whether the error is the user's to fix (configuration or input: exit 2) rather than an invariant (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, PipelineError::BadPeriod(_) | PipelineError::Config(_) | PipelineError::Configs(_))
    }
}
