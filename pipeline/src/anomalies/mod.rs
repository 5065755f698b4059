//! The anomaly report `rpt_anomalies` (DESIGN §5 "Anomalies"): every monitor of the table, as pure
//! functions over small per-day / per-resource aggregates.
//!
//! The big tables (`stg_pc_daily_usage`, `int_charges_rated`) are never read here: [`aggregates`] turns them into
//! small lazy group-bys (per customer and day, per subscription and day, per resource, per seat line) that the job
//! collects with the streaming engine; the monitors ([`spend`], [`usage`], [`tenant`]) read those frames cell by
//! cell with `rust_decimal` and return rows. No clock: every date is a data date, the as-of date being the last
//! usage date of the snapshot (the period's last day when it has no daily usage), so re-runs give the same rows.
//!
//! Every monitor says when it could not run: a monitor whose input is absent gives one `skipped` row with the
//! reason, and a customer whose admin consent lapsed gets one `skipped` row per telemetry monitor.

pub mod aggregates;
mod format;
pub mod spend;
pub mod tenant;
pub mod usage;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::context::Period;
use crate::error::Result;
use crate::invoice::cells;

pub use format::{day, money, pct};

/// Monitor names, as written in the `monitor` column.
pub mod monitor {
    pub const BUDGET_OVERRUN: &str = "budget_overrun";
    pub const UNUSUAL_DEPLOYMENT: &str = "unusual_deployment";
    pub const LICENSE_WASTE: &str = "license_waste";
    pub const UNDERUTILIZATION: &str = "underutilization";
    pub const TAG_COMPLIANCE: &str = "tag_compliance";
    pub const MARGIN_VARIANCE: &str = "margin_variance";
    pub const USAGE_GAP: &str = "usage_gap";
    pub const SPEND_CAP: &str = "spend_cap";
    pub const CONSENT_EXPIRING: &str = "consent_expiring";
    pub const CONSENT_LAPSED: &str = "consent_lapsed";
    /// Every monitor, in report order.
    pub const ALL: &[&str] = &[
        BUDGET_OVERRUN,
        SPEND_CAP,
        MARGIN_VARIANCE,
        UNUSUAL_DEPLOYMENT,
        USAGE_GAP,
        TAG_COMPLIANCE,
        LICENSE_WASTE,
        UNDERUTILIZATION,
        CONSENT_LAPSED,
        CONSENT_EXPIRING,
    ];
}

/// How bad a row is. `Skipped` rows are not anomalies: they say a monitor (or a customer's telemetry) was not
/// analysed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Skipped,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Skipped => "skipped",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "critical" => Some(Severity::Critical),
            "warning" => Some(Severity::Warning),
            "skipped" => Some(Severity::Skipped),
            _ => None,
        }
    }
    /// Whether a row of this severity fires at `level` (`--fail-on warning` fires on warnings and criticals).
    pub fn at_least(self, level: Severity) -> bool {
        self != Severity::Skipped && self <= level
    }
}

/// The thresholds of one customer (DESIGN §5 defaults; `[anomalies]` and its overrides in `cspbill.toml`).
/// Ratios are fractions (`1.10` = 110 %), `cpu_floor_pct` is in percent, margins in percentage points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub budget_warning: Decimal,
    pub budget_critical: Decimal,
    pub deployment_factor: Decimal,
    pub license_unused_days: i64,
    pub cpu_floor_pct: Decimal,
    pub cpu_days: i64,
    pub tag_compliance_warning: Decimal,
    pub tag_compliance_critical: Decimal,
    pub margin_warning_points: Decimal,
    pub margin_critical_points: Decimal,
    pub consent_expiring_days: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            budget_warning: Decimal::new(110, 2),
            budget_critical: Decimal::new(120, 2),
            deployment_factor: Decimal::from(5),
            license_unused_days: 30,
            cpu_floor_pct: Decimal::from(10),
            cpu_days: 7,
            tag_compliance_warning: Decimal::new(90, 2),
            tag_compliance_critical: Decimal::new(75, 2),
            margin_warning_points: Decimal::from(2),
            margin_critical_points: Decimal::from(5),
            consent_expiring_days: 14,
        }
    }
}

/// Defaults and per-customer thresholds; customer ids compare case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdSet {
    pub defaults: Thresholds,
    /// Keyed by the lower-case customer id; each value is complete (the defaults with the override applied).
    pub overrides: BTreeMap<String, Thresholds>,
}

impl ThresholdSet {
    pub fn for_customer(&self, customer_id: &str) -> &Thresholds {
        self.overrides.get(&customer_id.to_lowercase()).unwrap_or(&self.defaults)
    }
}

/// One row of `rpt_anomalies`, plus how far past its threshold it is (for ranking the worst; not published).
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub monitor: &'static str,
    pub severity: Severity,
    pub customer_id: String,
    pub subject: String,
    pub observed: Option<Decimal>,
    pub expected: Option<Decimal>,
    pub threshold: Option<Decimal>,
    pub first_seen: Option<NaiveDate>,
    pub last_seen: Option<NaiveDate>,
    pub message: String,
    /// Relative distance past the threshold (0 = at it); larger is worse. Skipped rows have 0.
    pub score: Decimal,
}

impl Anomaly {
    /// A `skipped` row: the monitor (or, with a customer, that customer's part of it) did not run, and why.
    pub fn skipped(monitor: &'static str, customer_id: &str, subject: &str, message: String) -> Self {
        Self {
            monitor,
            severity: Severity::Skipped,
            customer_id: customer_id.to_string(),
            subject: subject.to_string(),
            observed: None,
            expected: None,
            threshold: None,
            first_seen: None,
            last_seen: None,
            message,
            score: Decimal::ZERO,
        }
    }
}

/// The data dates a run judges: the period and the last usage date of its snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub period: Period,
    /// The last date with daily usage in the snapshot; the period's last day when it has none.
    pub as_of: NaiveDate,
    pub has_daily_usage: bool,
}

/// A customer as the monitors need it (from `stg_customers`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub template: String,
    pub monthly_budget: Option<Decimal>,
    pub spend_cap: Option<Decimal>,
    pub target_margin: Option<Decimal>,
    pub consent_status: Option<String>,
    pub consent_expires_on: Option<NaiveDate>,
}

impl Customer {
    /// Whether admin consent has lapsed as of `as_of`: a status other than `active`, or an expiry date passed.
    pub fn consent_lapsed(&self, as_of: NaiveDate) -> bool {
        self.consent_status.as_deref().is_some_and(|s| s != "active") || self.consent_expires_on.is_some_and(|d| d < as_of)
    }
}

/// Customers by id (the spelling of `customers.csv`).
pub type Customers = BTreeMap<String, Customer>;

/// Reads `stg_customers`.
pub fn customers(df: &DataFrame) -> Result<Customers> {
    use schemas::stg_customers as c;
    let ids = cells::strs(df, c::customer_id)?;
    let names = cells::strs(df, c::customer_name)?;
    let ccy = cells::strs(df, c::invoice_currency)?;
    let tpl = cells::strs(df, c::template)?;
    let budget = cells::decs(df, c::monthly_budget)?;
    let cap = cells::decs(df, c::spend_cap)?;
    let margin = cells::decs(df, c::target_margin)?;
    let status = cells::strs(df, c::consent_status)?;
    let expires = cells::dates(df, c::consent_expires_on)?;
    let mut out = Customers::new();
    for i in 0..df.height() {
        let Some(id) = ids[i].clone() else { continue };
        out.insert(
            id.clone(),
            Customer {
                name: names[i].clone().unwrap_or_else(|| id.clone()),
                id,
                currency: ccy[i].clone().unwrap_or_default(),
                template: tpl[i].clone().unwrap_or_default(),
                monthly_budget: budget[i],
                spend_cap: cap[i],
                target_margin: margin[i],
                consent_status: status[i].clone(),
                consent_expires_on: expires[i],
            },
        );
    }
    Ok(out)
}

/// The small frames the monitors read: reference tables as staged, and the aggregates of [`aggregates`].
pub struct Inputs<'a> {
    /// `stg_customers`.
    pub customers: &'a DataFrame,
    /// [`aggregates::daily_spend`] over `int_charges_rated`.
    pub daily_spend: &'a DataFrame,
    /// [`aggregates::subscription_days`] over `stg_pc_daily_usage`.
    pub subscription_days: &'a DataFrame,
    /// [`aggregates::resources`] over `stg_pc_daily_usage`.
    pub resources: &'a DataFrame,
    /// [`aggregates::seat_lines`] over `int_charges_rated`.
    pub seat_lines: &'a DataFrame,
    /// [`aggregates::resource_cost`] over `int_charges_rated`.
    pub resource_cost: &'a DataFrame,
    /// `int_tag_compliance`.
    pub tag_compliance: &'a DataFrame,
    /// `stg_tag_rules`.
    pub tag_rules: &'a DataFrame,
    /// `stg_license_activity` (empty when not configured).
    pub license_activity: &'a DataFrame,
    /// `stg_utilization` (empty when not configured).
    pub utilization: &'a DataFrame,
}

/// The report and what the run manifest lists beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Rows in report order (severity, monitor, customer, subject, first seen).
    pub rows: Vec<Anomaly>,
    /// Customers whose admin consent has lapsed (id, name): billed, but their tenant telemetry is not analysed.
    pub consent_lapsed: Vec<(String, String)>,
    pub window: Window,
    /// The [`aggregates::daily_spend`] the monitors read, kept for other views of the month (the close report),
    /// so the month is not aggregated twice.
    pub daily_spend: DataFrame,
}

/// Runs every monitor over the aggregates of `period`.
pub fn rpt_anomalies(inputs: &Inputs, thresholds: &ThresholdSet, period: Period) -> Result<Report> {
    let customers = customers(inputs.customers)?;
    let window = usage::window(inputs.subscription_days, period)?;
    let mut rows = Vec::new();
    rows.extend(spend::budget_overrun(inputs.daily_spend, &customers, thresholds, &window)?);
    rows.extend(spend::spend_cap(inputs.daily_spend, &customers, &window)?);
    rows.extend(spend::margin_variance(inputs.daily_spend, &customers, thresholds, &window)?);
    rows.extend(usage::unusual_deployment(inputs.resources, inputs.subscription_days, &customers, thresholds, &window)?);
    rows.extend(usage::usage_gap(inputs.subscription_days, &customers, &window)?);
    rows.extend(usage::tag_compliance(inputs.tag_compliance, inputs.tag_rules, inputs.subscription_days, &customers, thresholds, &window)?);
    rows.extend(tenant::license_waste(inputs.seat_lines, inputs.license_activity, &customers, thresholds, &window)?);
    rows.extend(tenant::underutilization(inputs.utilization, inputs.resources, inputs.resource_cost, &customers, thresholds, &window)?);
    rows.extend(tenant::consent(&customers, thresholds, &window));
    sort(&mut rows);
    let consent_lapsed = customers
        .values()
        .filter(|c| c.consent_lapsed(window.as_of))
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    Ok(Report { rows, consent_lapsed, window, daily_spend: inputs.daily_spend.clone() })
}

/// Report order: severity, monitor (in [`monitor::ALL`] order), customer, subject, first seen, message.
pub fn sort(rows: &mut [Anomaly]) {
    let rank = |m: &str| monitor::ALL.iter().position(|x| *x == m).unwrap_or(usize::MAX);
    rows.sort_by(|a, b| {
        (a.severity, rank(a.monitor), &a.customer_id, &a.subject, a.first_seen, &a.message)
            .cmp(&(b.severity, rank(b.monitor), &b.customer_id, &b.subject, b.first_seen, &b.message))
    });
}

/// The worst `n` anomalies (skipped rows never): critical before warning, then the furthest past its threshold.
pub fn worst(rows: &[Anomaly], n: usize) -> Vec<&Anomaly> {
    let mut v: Vec<&Anomaly> = rows.iter().filter(|a| a.severity != Severity::Skipped).collect();
    v.sort_by(|a, b| a.severity.cmp(&b.severity).then(b.score.cmp(&a.score)));
    v.truncate(n);
    v
}

/// The rows as `rpt_anomalies` (schema checked), every row of `period`.
pub fn to_frame(rows: &[Anomaly], period: Period) -> Result<DataFrame> {
    use schemas::rpt_anomalies as t;
    let s = |f: &dyn Fn(&Anomaly) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let d = |f: &dyn Fn(&Anomaly) -> Option<Decimal>| rows.iter().map(f).collect::<Vec<_>>();
    let dt = |f: &dyn Fn(&Anomaly) -> Option<NaiveDate>| rows.iter().map(f).collect::<Vec<_>>();
    let columns = vec![
        cells::str_column(t::period, &s(&|_| Some(period.to_string()))),
        cells::str_column(t::monitor, &s(&|a| Some(a.monitor.to_string()))),
        cells::str_column(t::severity, &s(&|a| Some(a.severity.as_str().to_string()))),
        cells::str_column(t::customer_id, &s(&|a| Some(a.customer_id.clone()))),
        cells::str_column(t::subject, &s(&|a| Some(a.subject.clone()))),
        cells::dec_column(t::observed, &d(&|a| a.observed)),
        cells::dec_column(t::expected, &d(&|a| a.expected)),
        cells::dec_column(t::threshold, &d(&|a| a.threshold)),
        cells::date_column(t::first_seen, &dt(&|a| a.first_seen)),
        cells::date_column(t::last_seen, &dt(&|a| a.last_seen)),
        cells::str_column(t::message, &s(&|a| Some(a.message.clone()))),
    ];
    cells::frame(columns, &t::schema(), t::TABLE)
}

/// The distance past a threshold, relative to it (`value / threshold − 1`, or the plain difference when the
/// threshold is 0), for ranking.
fn score(value: Decimal, threshold: Decimal) -> Decimal {
    if threshold.is_zero() { value } else { (value / threshold - Decimal::ONE).abs() }
}

/// Each date from `from` to `to`, inclusive.
fn dates(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d <= to)
}
