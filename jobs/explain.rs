//! `cspbill explain`: from a rated line or an invoice line down to its sources, rules, FX and arithmetic.

use anyhow::Result;

use crate::cli::{ExplainFormat, PeriodArgs};

pub fn explain(_p: &PeriodArgs, _line: Option<String>, _invoice_line: Option<String>, _f: ExplainFormat) -> Result<()> {
    Err(crate::error::Failure::usage("`explain` is not built yet").into())
}
