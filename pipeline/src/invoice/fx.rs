//! The `market` FX lookup for PSA service lines (DESIGN §5 "Rate" and "Invoice"): the latest `fx_rates.csv` rate
//! on or before a date; when no direct rate exists by then, the reverse pair's, inverted.
//!
//! Rating owns the lookup for charges; the rate helper had not published one when this was written, so the
//! invoice stage keeps this small copy over the already collected `stg_fx_rates` (a few hundred rows) and
//! follows the same rule. Once rating exposes its own, this module should call it.

use std::collections::HashMap;

use chrono::NaiveDate;
use polars::prelude::DataFrame;
use rust_decimal::Decimal;

use super::cells;
use crate::error::Result;

/// `stg_fx_rates` indexed by (from, to), each list sorted by date.
#[derive(Clone, Debug, Default)]
pub struct MarketRates {
    pairs: HashMap<(String, String), Vec<(NaiveDate, Decimal)>>,
}

impl MarketRates {
    /// Indexes a staged `stg_fx_rates` frame (staging has already refused conflicting rows and rates ≤ 0).
    pub fn from_frame(df: &DataFrame) -> Result<Self> {
        use schemas::stg_fx_rates as f;
        let d = cells::dates(df, f::date)?;
        let from = cells::strs(df, f::from_currency)?;
        let to = cells::strs(df, f::to_currency)?;
        let rate = cells::decs(df, f::rate)?;
        let mut pairs: HashMap<(String, String), Vec<(NaiveDate, Decimal)>> = HashMap::new();
        for i in 0..d.len() {
            if let (Some(d), Some(f), Some(t), Some(r)) = (d[i], &from[i], &to[i], rate[i]) {
                pairs
                    .entry((f.to_ascii_uppercase(), t.to_ascii_uppercase()))
                    .or_default()
                    .push((d, r));
            }
        }
        for v in pairs.values_mut() {
            v.sort();
        }
        Ok(Self { pairs })
    }

    fn latest(&self, from: &str, to: &str, on: NaiveDate) -> Option<(NaiveDate, Decimal)> {
        let v = self
            .pairs
            .get(&(from.to_ascii_uppercase(), to.to_ascii_uppercase()))?;
        v.iter().rev().find(|(d, _)| *d <= on).copied()
    }
}

/// Units of `to` for one unit of `from` on `on`, with the date of the rate used: the latest direct rate on or
/// before `on`, else the latest reverse rate inverted (half-even at 18 places, as Polars divides). `None` when
/// neither exists; the same currency is 1.
pub fn market_rate(
    rates: &MarketRates,
    from: &str,
    to: &str,
    on: NaiveDate,
) -> Option<(Decimal, NaiveDate)> {
    if from.eq_ignore_ascii_case(to) {
        return Some((Decimal::ONE, on));
    }
    if let Some((d, r)) = rates.latest(from, to, on) {
        return Some((r, d));
    }
    let (d, r) = rates.latest(to, from, on)?;
    let inv = Decimal::ONE
        .checked_div(r)?
        .round_dp(schemas::MONEY_SCALE as u32);
    Some((inv, d))
}
