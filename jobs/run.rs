//! Running a period: read inputs, run the stages, check the invariants, publish one commit.

use anyhow::Result;
use pipeline::RunMode;

use crate::cli::{PeriodArgs, Severity};

/// The last stage a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Ingest,
    Charges,
    Allocate,
    Rate,
    Invoice,
    All,
}

pub fn run_period(_p: &PeriodArgs, _mode: RunMode, _stop: Stop) -> Result<()> {
    Err(crate::error::Failure::usage("`run` is not built yet").into())
}

pub fn anomalies(_p: &PeriodArgs, _fail_on: Option<Severity>) -> Result<()> {
    Err(crate::error::Failure::usage("`anomalies` is not built yet").into())
}
