//! `cspbill generate`: a deterministic synthetic Partner Center workspace. (Being built.)

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Output folder of the workspace.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of customers.
    #[arg(long, default_value_t = 10)]
    pub customers: u32,
    /// Billing period, `YYYY-MM`.
    #[arg(long)]
    pub period: String,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Daily usage rows to write (about; 0 = a few per resource and day).
    #[arg(long, default_value_t = 0)]
    pub usage_rows: u64,
}

pub fn generate(_args: &GenerateArgs) -> Result<()> {
    Err(crate::error::Failure::usage("`generate` is not built yet").into())
}
