//! Monitors of what customers spend, from [`super::aggregates::daily_spend`]: `budget_overrun`, `spend_cap`,
//! `margin_variance`. Amounts are the rated prices in the customer's invoice currency, exact.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use polars::prelude::DataFrame;
use rust_decimal::Decimal;

use super::format::{day, money, number, pct};
use super::{Anomaly, Customers, Severity, ThresholdSet, Window, dates, monitor, score};
use crate::currency::minor_unit;
use crate::error::Result;
use crate::invoice::cells;

/// One customer's spend per day: currency, and date → amount of the chosen column.
struct Series {
    currency: String,
    by_day: BTreeMap<NaiveDate, Decimal>,
}

/// Reads one amount column of the daily-spend aggregate per customer.
fn series(df: &DataFrame, amount: &str) -> Result<BTreeMap<String, Series>> {
    let ids = cells::strs(df, "customer_id")?;
    let ccy = cells::strs(df, "invoice_currency")?;
    let when = cells::dates(df, "charge_date")?;
    let amt = cells::decs(df, amount)?;
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for i in 0..df.height() {
        let (Some(id), Some(d)) = (ids[i].clone(), when[i]) else { continue };
        let s = out.entry(id).or_insert_with(|| Series { currency: ccy[i].clone().unwrap_or_default(), by_day: BTreeMap::new() });
        *s.by_day.entry(d).or_default() += amt[i].unwrap_or_default();
    }
    Ok(out)
}

/// The median of a list of amounts (the mean of the two middle values for an even count).
pub fn median(values: &[Decimal]) -> Decimal {
    if values.is_empty() {
        return Decimal::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / Decimal::TWO }
}

fn month(w: &Window) -> String {
    w.period.start().format("%B %Y").to_string()
}

/// `budget_overrun`: month-to-date consumption spend above the forecast to the as-of date: the monthly budget
/// pro rata by day (budget × day of month / days in month), else the median daily spend of the month so far × the
/// days elapsed. Fires when spend / forecast > `budget_warning` (critical above `budget_critical`) on the as-of
/// date; `first_seen` is the first day of the run of days on which it held up to then.
pub fn budget_overrun(df: &DataFrame, cs: &Customers, t: &ThresholdSet, w: &Window) -> Result<Vec<Anomaly>> {
    if !w.has_daily_usage {
        return Ok(vec![Anomaly::skipped(
            monitor::BUDGET_OVERRUN,
            "",
            "",
            "budget_overrun not analysed: the period's snapshot has no daily rated usage, and month-to-date spend by day needs it".into(),
        )]);
    }
    let mut out = Vec::new();
    let days_in_month = Decimal::from(w.period.days());
    for (id, s) in series(df, "usage_spend")? {
        let Some(c) = cs.get(&id) else { continue };
        let th = t.for_customer(&id);
        let budget = c.monthly_budget.filter(|b| *b > Decimal::ZERO);
        let (mut cum, mut daily, mut streak) = (Decimal::ZERO, Vec::new(), None);
        let mut last = None;
        for d in dates(w.period.start(), w.as_of) {
            let spent = s.by_day.get(&d).copied().unwrap_or_default();
            cum += spent;
            daily.push(spent);
            let elapsed = Decimal::from(d.day());
            let forecast = match budget {
                Some(b) => b * elapsed / days_in_month,
                None => median(&daily) * elapsed,
            };
            let ratio = (forecast > Decimal::ZERO).then(|| cum / forecast);
            if ratio.is_some_and(|r| r > th.budget_warning) {
                streak.get_or_insert(d);
            } else {
                streak = None;
            }
            last = Some((cum, forecast, ratio));
        }
        let (Some(first), Some((spent, forecast, Some(ratio)))) = (streak, last) else { continue };
        let (severity, level) =
            if ratio > th.budget_critical { (Severity::Critical, th.budget_critical) } else { (Severity::Warning, th.budget_warning) };
        let base = if budget.is_some() { "its pro-rata budget" } else { "the median daily spend projected (no monthly budget)" };
        let dp = minor_unit(&s.currency).unwrap_or(2);
        out.push(Anomaly {
            monitor: monitor::BUDGET_OVERRUN,
            severity,
            customer_id: id.clone(),
            subject: "monthly_budget".into(),
            observed: Some(spent),
            expected: Some(forecast),
            threshold: Some(level),
            first_seen: Some(first),
            last_seen: Some(w.as_of),
            message: format!(
                "{}: {} Azure spend to {} is {} of {base} ({} vs {}; {} above {}, over it since {})",
                c.name,
                month(w),
                day(w.as_of),
                pct(ratio),
                money(spent, &s.currency),
                number(forecast, dp),
                severity.as_str(),
                pct(level),
                day(first),
            ),
            score: score(ratio, level),
        });
    }
    Ok(out)
}

/// `spend_cap`: a trial customer whose spend this month (every priced charge, credits and refunds netted, as its
/// invoice counts it) is above its `spend_cap`. Critical: the invoice offsets the excess with a
/// `spend_cap_credit`, so it is cost the MSP carries. `first_seen` is the charge date the cap was passed.
pub fn spend_cap(df: &DataFrame, cs: &Customers, w: &Window) -> Result<Vec<Anomaly>> {
    let capped: Vec<_> = cs.values().filter(|c| c.template == "trial" && c.spend_cap.is_some()).collect();
    if capped.is_empty() {
        return Ok(vec![Anomaly::skipped(
            monitor::SPEND_CAP,
            "",
            "",
            "spend_cap not analysed: no trial customer in customers.csv has a spend_cap".into(),
        )]);
    }
    let all = series(df, "spend")?;
    let mut out = Vec::new();
    for c in capped {
        let (Some(cap), Some(s)) = (c.spend_cap, all.get(&c.id)) else { continue };
        if s.currency != c.currency {
            continue;
        }
        let (mut cum, mut passed) = (Decimal::ZERO, None);
        for (d, amount) in &s.by_day {
            cum += amount;
            if cum > cap {
                passed.get_or_insert((*d).max(w.period.start()));
            } else {
                passed = None;
            }
        }
        let Some(first) = passed else { continue };
        let last = s.by_day.keys().next_back().copied().unwrap_or(w.as_of).max(w.as_of);
        let over = cum - cap;
        let share = if cap.is_zero() { String::new() } else { format!(" ({})", pct(over / cap)) };
        out.push(Anomaly {
            monitor: monitor::SPEND_CAP,
            severity: Severity::Critical,
            customer_id: c.id.clone(),
            subject: "spend_cap".into(),
            observed: Some(cum),
            expected: Some(cap),
            threshold: Some(cap),
            first_seen: Some(first),
            last_seen: Some(last),
            message: format!(
                "{} (trial): {} spend to {} is {}, {}{share} past its spend cap of {}, passed on {}; the invoice offsets the excess with a spend-cap credit",
                c.name,
                month(w),
                day(last),
                money(cum, &s.currency),
                money(over, &s.currency),
                money(cap, &s.currency),
                day(first),
            ),
            score: score(cum, cap),
        });
    }
    Ok(out)
}

/// `margin_variance`: the realised margin this month (Σ margin / Σ price over the customer's priced charges)
/// more than `margin_warning_points` percentage points off its `target_margin` (critical beyond
/// `margin_critical_points`), above or below. Customers without a target are not judged.
pub fn margin_variance(df: &DataFrame, cs: &Customers, t: &ThresholdSet, w: &Window) -> Result<Vec<Anomaly>> {
    if cs.values().all(|c| c.target_margin.is_none()) {
        return Ok(vec![Anomaly::skipped(
            monitor::MARGIN_VARIANCE,
            "",
            "",
            "margin_variance not analysed: no customer in customers.csv has a target_margin".into(),
        )]);
    }
    let prices = series(df, "spend")?;
    let margins = series(df, "margin")?;
    let mut out = Vec::new();
    for (id, p) in &prices {
        let Some(c) = cs.get(id) else { continue };
        let Some(target) = c.target_margin else { continue };
        let price: Decimal = p.by_day.values().sum();
        let margin: Decimal = margins.get(id).map(|m| m.by_day.values().sum()).unwrap_or_default();
        if price <= Decimal::ZERO {
            continue;
        }
        let th = t.for_customer(id);
        let realised = margin / price;
        let off = realised - target;
        let hundred = Decimal::ONE_HUNDRED;
        let (severity, points) = if off.abs() > th.margin_critical_points / hundred {
            (Severity::Critical, th.margin_critical_points)
        } else if off.abs() > th.margin_warning_points / hundred {
            (Severity::Warning, th.margin_warning_points)
        } else {
            continue;
        };
        let first = p.by_day.keys().next().copied().unwrap_or(w.period.start()).max(w.period.start());
        let off_points = (off.abs() * hundred).round_dp(2).normalize();
        out.push(Anomaly {
            monitor: monitor::MARGIN_VARIANCE,
            severity,
            customer_id: id.clone(),
            subject: "target_margin".into(),
            observed: Some(realised),
            expected: Some(target),
            threshold: Some(points / hundred),
            first_seen: Some(first),
            last_seen: Some(w.as_of),
            message: format!(
                "{}: realised margin {} {} is {off_points} points {} its {} target ({} margin on {} of charges; {} beyond ±{} points)",
                c.name,
                month(w),
                pct(realised),
                if off < Decimal::ZERO { "below" } else { "above" },
                pct(target),
                money(margin, &p.currency),
                money(price, &p.currency),
                severity.as_str(),
                points.normalize(),
            ),
            score: score(off.abs(), points / hundred),
        });
    }
    Ok(out)
}
