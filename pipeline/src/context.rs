//! What a stage may know about the run: the period, the run id, the as-of date and the billing policies.
//! The job builds it from `cspbill.toml` and the command line; stages never look at the clock or environment.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;

/// A billing period: one calendar month, written `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i32,
    pub month: u32,
}

impl Period {
    pub fn new(year: i32, month: u32) -> Option<Self> {
        (1..=12).contains(&month).then_some(Self { year, month })
    }
    /// First calendar day of the period.
    pub fn start(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("month is 1..=12 by construction")
    }
    /// Last calendar day of the period.
    pub fn end(self) -> NaiveDate {
        self.next().start().pred_opt().expect("a month always has a previous day")
    }
    /// The following period.
    pub fn next(self) -> Self {
        if self.month == 12 { Self { year: self.year + 1, month: 1 } } else { Self { year: self.year, month: self.month + 1 } }
    }
    /// The preceding period.
    pub fn prev(self) -> Self {
        if self.month == 1 { Self { year: self.year - 1, month: 12 } } else { Self { year: self.year, month: self.month - 1 } }
    }
    /// Number of days in the period.
    pub fn days(self) -> u32 {
        self.end().day()
    }
    /// The period a date falls in.
    pub fn of(date: NaiveDate) -> Self {
        Self { year: date.year(), month: date.month() }
    }
    /// `YYYYMM`, as invoice numbers use it.
    pub fn compact(self) -> String {
        format!("{:04}{:02}", self.year, self.month)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Period {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PipelineError::BadPeriod(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        Period::new(year, month).ok_or_else(bad)
    }
}

/// How an invoice line is rounded to the currency's minor unit (DESIGN §4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Ties to even (banker's rounding).
    #[default]
    HalfEven,
    /// Ties away from zero.
    HalfUp,
    /// Toward zero.
    Down,
}

/// How seat lines are prorated (DESIGN §5 "Charges", line factor `f`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProrationPolicy {
    /// `f = EffectiveUnitPrice / UnitPrice`: Microsoft's own factor.
    #[default]
    MirrorMicrosoft,
    /// `f = sign(EffectiveUnitPrice)`: bill whole units.
    None,
}

/// Which date picks the market FX rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FxDatePolicy {
    /// Last calendar day of the period.
    #[default]
    PeriodEnd,
    /// The line's charge date.
    ChargeDate,
}

/// Where Azure consumption is charged from (DESIGN §5 "Charges").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureUsageSource {
    /// Daily usage when the snapshot has any, else the invoice file's metered lines (`azure_usage` lines and any
    /// other line with a `MeterDescription`).
    #[default]
    Auto,
    DailyUsage,
    Invoice,
}

/// Nightly (provisional) or month-end close (final).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    #[default]
    Nightly,
    Close,
}

/// The billing policies of `cspbill.toml` that stages need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    pub rounding: RoundingMode,
    pub proration: ProrationPolicy,
    pub fx_date: FxDatePolicy,
    pub azure_usage_source: AzureUsageSource,
    pub invoice_prefix: String,
    pub invoice_date: NaiveDate,
    pub issuer: String,
    pub max_rejected_rows: u64,
}

impl Policies {
    /// Defaults of DESIGN §4.3, with the given invoice date.
    pub fn with_invoice_date(invoice_date: NaiveDate) -> Self {
        Self {
            rounding: RoundingMode::default(),
            proration: ProrationPolicy::default(),
            fx_date: FxDatePolicy::default(),
            azure_usage_source: AzureUsageSource::default(),
            invoice_prefix: "INV".into(),
            invoice_date,
            issuer: String::new(),
            max_rejected_rows: 0,
        }
    }
}

/// Everything a stage may know about the run.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub period: Period,
    pub run_id: String,
    pub mode: RunMode,
    pub policies: Policies,
}

impl RunContext {
    /// A context for tests and tools: period, run id `test`, nightly, default policies, invoice date = period end.
    pub fn for_period(period: Period) -> Self {
        Self {
            period,
            run_id: "test".into(),
            mode: RunMode::Nightly,
            policies: Policies::with_invoice_date(period.end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_parses_and_knows_its_days() {
        let p: Period = "2024-02".parse().unwrap();
        assert_eq!(p.end(), NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
        assert_eq!(p.days(), 29);
        assert_eq!(p.to_string(), "2024-02");
        assert_eq!("2024-12".parse::<Period>().unwrap().next().to_string(), "2025-01");
        assert!("2024-13".parse::<Period>().is_err());
        assert!("2024-1".parse::<Period>().is_err());
        assert!("../x".parse::<Period>().is_err());
    }
}
