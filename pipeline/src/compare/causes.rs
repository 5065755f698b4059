//! The probable cause of a difference between a legacy line and cspbill's, tried in this order, the first the
//! data shows winning (each is a recomputation, never a guess from the size of the difference alone):
//! 1. `proration`: a seat line whose cspbill quantity (seat-months: Σ amount / unit price) is fractional, billed
//!    with another quantity by the legacy system;
//! 2. `rounding`: the legacy amount is cspbill's exact unit price rounded to the currency's minor unit (half-even,
//!    half-up or down) times the legacy quantity, or the difference is within half a minor unit per line summed;
//! 3. `markup`: another rate-card value (`markup_on_cost` or `margin_on_cost`) applied to cspbill's cost of the
//!    line reproduces the legacy amount (to half a minor unit per legacy line);
//! 4. `fx`: cspbill's exact amount converted at another rate of the period's `fx_rates` into the invoice currency
//!    (same cost, different rate) reproduces the legacy amount;
//! 5. otherwise `unexplained`.

use polars::prelude::*;
use rust_decimal::Decimal;

use super::{CspSide, Options, RateValue, Side};
use crate::currency::round;
use crate::error::Result;
use crate::invoice::cells;
use crate::RoundingMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    None,
    Proration,
    Rounding,
    Markup,
    Fx,
    MissingLine,
    ExtraLine,
    Unexplained,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::None => "none",
            Cause::Proration => "proration",
            Cause::Rounding => "rounding",
            Cause::Markup => "markup",
            Cause::Fx => "fx",
            Cause::MissingLine => "missing_line",
            Cause::ExtraLine => "extra_line",
            Cause::Unexplained => "unexplained",
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub currency: &'a str,
    pub dp: u32,
    pub opts: &'a Options,
    pub rate_values: &'a [RateValue],
    pub fx: &'a [(String, String, Decimal)],
}

/// `(from, to, rate)` of `stg_fx_rates`-shaped rows.
pub(crate) fn fx_rates(fx: &DataFrame) -> Result<Vec<(String, String, Decimal)>> {
    if fx.height() == 0 {
        return Ok(Vec::new());
    }
    let f = cells::strs(fx, "from_currency")?;
    let t = cells::strs(fx, "to_currency")?;
    let r = cells::decs(fx, "rate")?;
    let mut out: Vec<(String, String, Decimal)> = f
        .into_iter()
        .zip(t)
        .zip(r)
        .filter_map(|((f, t), r)| Some((f?.to_uppercase(), t?.to_uppercase(), r?)))
        .filter(|(f, t, r)| f != t && !r.is_zero())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whole to 4 places: Σ amount / unit price of a whole month comes back as 15.000000 give or take the last
/// digit of the 18-place quotient.
fn is_whole(q: Decimal) -> bool {
    let r = q.round_dp(4);
    r == r.trunc()
}

/// The cause of a non-zero difference between the two sides of one key, and a sentence a billing clerk reads.
pub(crate) fn explain(c: &CspSide, l: &Side, ctx: &Ctx) -> (Cause, String) {
    let csp = c.side.amount;
    let diff = csp - l.amount;
    if diff.is_zero() {
        return (Cause::None, "equal".into());
    }
    let half = Decimal::new(5, ctx.dp + 1);
    let cur = ctx.currency;
    let close = |x: Decimal, lines: i64| (round(x, ctx.dp, ctx.opts.rounding) - l.amount).abs() <= half * Decimal::from(lines.max(1));

    // 1. Proration: cspbill bills a fraction of a seat-month (Microsoft's own factor for a mid-month change).
    if let (Some(qe), [price]) = (c.effective_quantity, c.unit_prices.as_slice()) {
        if c.families.iter().any(|f| f == "license") && !is_whole(qe) && l.quantity != Some(qe) {
            let ql = l.quantity.map_or("no quantity".to_string(), |q| format!("{} seats", q.normalize()));
            let whole = l.quantity.map(|q| round(q * price, ctx.dp, ctx.opts.rounding));
            let tail = match (whole, l.quantity) {
                (Some(w), Some(q)) if w == l.amount => format!(" ({} × {} = {w} {cur})", q.normalize(), price.normalize()),
                _ => String::new(),
            };
            return (
                Cause::Proration,
                format!(
                    "cspbill bills {} seat-months at {} {cur} (Microsoft's proration of a mid-month change); the legacy line bills {ql}{tail}",
                    qe.normalize(),
                    price.normalize()
                ),
            );
        }
    }

    // 2. Rounding of the unit price.
    let q = c.effective_quantity.filter(|q| !q.is_zero()).or(c.side.quantity.filter(|q| !q.is_zero()));
    if let Some(q) = q {
        if let Some(p) = c.amount_unrounded.checked_div(q) {
            // A legacy line of no quantity reproduces nothing (0 × any price is 0).
            let ql = l.quantity.filter(|q| !q.is_zero()).unwrap_or(q);
            for (mode, name) in [(RoundingMode::HalfEven, "half-even"), (RoundingMode::HalfUp, "half-up"), (RoundingMode::Down, "down")] {
                let pr = round(p, ctx.dp, mode);
                if let Some(x) = pr.checked_mul(ql) {
                    if round(x, ctx.dp, ctx.opts.rounding) == l.amount {
                        return (
                            Cause::Rounding,
                            format!(
                                "the legacy line rounds the unit price {} {cur} to {} ({name}) before multiplying by {}",
                                p.round_dp(6).normalize(),
                                pr,
                                ql.normalize()
                            ),
                        );
                    }
                }
            }
        }
    }
    if diff.abs() <= half * Decimal::from(c.side.lines + l.lines) {
        return (
            Cause::Rounding,
            format!("the difference {diff} {cur} is within half a minor unit per line rounded ({} lines)", c.side.lines + l.lines),
        );
    }

    // 3. Markup: another rate-card value on cspbill's cost.
    for rv in ctx.rate_values {
        let price = match rv.method.as_str() {
            "markup_on_cost" => c.cost.checked_mul(Decimal::ONE + rv.value),
            "margin_on_cost" if rv.value < Decimal::ONE => c.cost.checked_div(Decimal::ONE - rv.value),
            _ => None,
        };
        let Some(price) = price else { continue };
        if round(price, ctx.dp, ctx.opts.rounding) != csp && close(price, l.lines) {
            return (
                Cause::Markup,
                format!(
                    "rate-card rule `{}` ({} {}) on cspbill's cost {} {cur} gives {} {cur}, the legacy amount: the legacy system priced with another rate-card value",
                    rv.rule_id,
                    rv.method,
                    rv.value.normalize(),
                    c.cost.round_dp(ctx.dp),
                    round(price, ctx.dp, ctx.opts.rounding)
                ),
            );
        }
    }

    // 4. FX: the same cost at another rate into the invoice currency.
    for (fa, ta, ra) in ctx.fx.iter().filter(|(_, t, _)| t == cur) {
        for (_, _, rb) in ctx.fx.iter().filter(|(f, t, r)| f == fa && t == ta && r != ra) {
            let Some(x) = c.amount_unrounded.checked_mul(*rb).and_then(|x| x.checked_div(*ra)) else { continue };
            if close(x, l.lines) {
                return (
                    Cause::Fx,
                    format!(
                        "cspbill's amount converted at {fa}→{cur} {} instead of {} gives the legacy amount: the legacy system used another exchange rate",
                        rb.normalize(),
                        ra.normalize()
                    ),
                );
            }
        }
    }
    (Cause::Unexplained, format!("no rounding, proration, markup or FX difference reproduces the legacy amount; difference {diff} {cur}"))
}
