//! What the close report shows, gathered from the run: the collected small tables (`fct_invoices`,
//! `fct_invoice_lines`, `int_tag_compliance`, `stg_customers`, the anomaly report), the manifest (checks,
//! reconciliation to Microsoft, late data, outputs) and a few streaming group-bys over the spooled tables
//! (spend per customer and day, unpriced parts per reason, rejects per file and reason, billing currency per
//! customer). Nothing here reads the month into memory; every amount stays a `Decimal`.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::NaiveDate;
use pipeline::anomalies::{self as an, Anomaly, Severity, ThresholdSet};
use pipeline::invoice::cells::{dates, decs, ints, strs};
use pipeline::{Period, RunContext, RunMode};
use polars::prelude::*;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::manifest::{Check, Manifest};
use crate::reference::RefFrames;
use crate::stages::{Computed, TableData};

/// How a customer's figure compares with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warning,
    Critical,
    /// No target or no rule to judge against.
    NotJudged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::NotJudged => "not judged",
        }
    }
}

pub struct Invoice {
    pub number: String,
    pub customer_id: String,
    pub customer_name: String,
    pub currency: String,
    pub subtotal: Decimal,
    pub cost: Decimal,
    pub margin: Decimal,
    /// Paths relative to the warehouse root (`marts/exports/...`).
    pub exports: Vec<String>,
}

pub struct CurrencyTotal {
    pub currency: String,
    pub invoices: usize,
    pub billed: Decimal,
    pub cost: Decimal,
    pub margin: Decimal,
}

/// Realised margin of a customer's priced charges in one invoice currency, against its target.
pub struct Margin {
    pub customer_id: String,
    pub name: String,
    pub currency: String,
    pub spend: Decimal,
    pub margin: Decimal,
    /// margin / spend, rounded half-even to 6 places (None when nothing was priced).
    pub realised: Option<Decimal>,
    pub target: Option<Decimal>,
    /// (margin / spend − target) × 100, rounded half-even to 4 places.
    pub variance_points: Option<Decimal>,
    pub warning_points: Decimal,
    pub critical_points: Decimal,
    pub status: Status,
}

/// Month-to-date Azure consumption of a customer (priced daily usage, invoice currency) by day.
pub struct Spend {
    pub customer_id: String,
    pub name: String,
    pub currency: String,
    pub budget: Option<Decimal>,
    pub by_day: Vec<(NaiveDate, Decimal)>,
}

/// Reconciliation of a customer's Microsoft invoice (billing currency) with what the run charged.
pub struct Recon {
    pub customer_id: String,
    pub name: String,
    pub currency: Option<String>,
    pub microsoft: Decimal,
    pub from_lines: Decimal,
    pub from_usage: Decimal,
    /// Σ (daily usage − Microsoft's metered summary lines) per subscription (`azure_control_comparison`).
    pub usage_vs_summary: Decimal,
}

impl Recon {
    pub fn charged(&self) -> Decimal {
        self.from_lines + self.from_usage
    }
    pub fn difference(&self) -> Decimal {
        self.charged() - self.microsoft
    }
    /// What the usage-vs-summary differences do not explain (0 when reconciled).
    pub fn unexplained(&self) -> Decimal {
        self.difference() - self.usage_vs_summary
    }
}

pub struct Compliance {
    pub customer_id: String,
    pub name: String,
    pub azure_cost: Decimal,
    pub tagged: Decimal,
    /// tagged / azure cost, rounded half-even to 6 places.
    pub ratio: Option<Decimal>,
    /// Whether a tag rule naming a tag key applies to the customer (as the `tag_compliance` monitor judges).
    pub judged: bool,
    pub warning: Decimal,
    pub critical: Decimal,
    pub status: Status,
}

pub struct Unpriced {
    pub customer_id: String,
    pub name: String,
    pub currency: String,
    pub reason: String,
    pub parts: i64,
    pub cost: Decimal,
}

pub struct Rejects {
    pub table: &'static str,
    pub file: String,
    pub reason_code: String,
    pub example: String,
    pub column: String,
    pub rows: i64,
    pub cost: Decimal,
    pub first_line: i64,
    pub last_line: i64,
}

pub struct Adjustment {
    pub invoice_number: String,
    pub customer_id: String,
    pub currency: String,
    pub corrected_period: String,
    pub description: String,
    pub amount: Decimal,
}

pub struct Input {
    pub name: String,
    pub kind: String,
    pub rows_in: u64,
    pub staged: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub sha256: String,
}

pub struct ReportData {
    pub period: Period,
    pub final_: bool,
    pub partner: String,
    pub invoice_date: NaiveDate,
    pub as_of: Option<NaiveDate>,
    pub azure_usage_source: String,
    pub totals: Vec<CurrencyTotal>,
    pub invoices: Vec<Invoice>,
    pub margins: Vec<Margin>,
    pub spend: Vec<Spend>,
    pub microsoft_subtotal: Option<Decimal>,
    pub recon: Vec<Recon>,
    pub checks: Vec<Check>,
    /// The worst anomalies, each with its customer's name.
    pub anomalies: Vec<(Anomaly, String)>,
    pub anomaly_counts: [usize; 3],
    pub compliance: Vec<Compliance>,
    pub unpriced: Vec<Unpriced>,
    pub rejects: Vec<Rejects>,
    /// `late_data_adjustments` of the manifest: (corrected period, lines, amount, re-stated, reason).
    pub late: Vec<(String, u64, String, bool, String)>,
    pub adjustments: Vec<Adjustment>,
    pub ledger_exports: Vec<String>,
    pub inputs: Vec<Input>,
}

/// How many anomalies the report lists (worst first).
pub const TOP_ANOMALIES: usize = 10;

fn scan(computed: &Computed, table: &str) -> Result<Option<LazyFrame>> {
    Ok(match computed.tables.iter().find(|(t, _, _)| *t == table) {
        Some((_, _, TableData::Spool(s))) => Some(s.scan()?),
        Some((_, _, TableData::Frame(df))) => Some(df.clone().lazy()),
        None => None,
    })
}

fn need(computed: &Computed, table: &str) -> Result<LazyFrame> {
    scan(computed, table)?.ok_or_else(|| anyhow::anyhow!("internal: `{table}` missing from the run before the close report"))
}

fn frame<'a>(computed: &'a Computed, table: &str) -> Option<&'a DataFrame> {
    computed.tables.iter().find_map(|(t, _, d)| match d {
        TableData::Frame(df) if *t == table => Some(df),
        _ => None,
    })
}

fn rejects_by_reason(lf: LazyFrame) -> LazyFrame {
    use schemas::rejects_pc_daily_usage as r;
    lf.group_by([col(r::source_file), col(r::reason_code)]).agg([
        len().cast(DataType::Int64).alias("rows"),
        col(r::billing_pre_tax_total).sum().alias("cost"),
        col(r::line_number).min().cast(DataType::Int64).alias("first_line"),
        col(r::line_number).max().cast(DataType::Int64).alias("last_line"),
        col(r::reason).min().alias("example"),
        col(r::column).min().alias("column"),
    ])
}

fn ratio(num: Decimal, den: Decimal) -> Option<Decimal> {
    (!den.is_zero()).then(|| (num / den).round_dp_with_strategy(6, rust_decimal::RoundingStrategy::MidpointNearestEven))
}

fn judge(off: Decimal, warning: Decimal, critical: Decimal) -> Status {
    if off.abs() > critical {
        Status::Critical
    } else if off.abs() > warning {
        Status::Warning
    } else {
        Status::Ok
    }
}

/// Everything the page shows, from a computed run and its manifest (all checks done, exports written).
pub fn gather(ctx: &RunContext, refs: &RefFrames, computed: &Computed, report: Option<&an::Report>, m: &Manifest, t: &ThresholdSet) -> Result<ReportData> {
    use schemas::int_charges_rated as r;
    let customers = an::customers(&refs.customers)?;
    let name = |id: &str| customers.get(id).map(|c| c.name.clone()).unwrap_or_else(|| id.to_string());
    let rated = need(computed, r::TABLE)?;
    let charges = need(computed, schemas::int_charges::TABLE)?;
    // The anomaly report already aggregated spend per customer and day: reuse it rather than read the month again.
    let shared_daily = report.map(|r| r.daily_spend.clone());
    let mut plans = vec![
        rated
            .clone()
            .filter(col(r::status).neq(lit("priced")))
            .group_by([col(r::customer_id), col(r::billing_currency), col(r::unpriced_reason)])
            .agg([len().cast(DataType::Int64).alias("parts"), col(r::cost).sum().alias("cost")]),
        charges.group_by([col(schemas::int_charges::customer_id)]).agg([col(schemas::int_charges::billing_currency).min().alias("currency")]),
        rejects_by_reason(need(computed, schemas::rejects_pc_daily_usage::TABLE)?),
        rejects_by_reason(need(computed, schemas::rejects_pc_invoice_lines::TABLE)?),
    ];
    if shared_daily.is_none() {
        plans.push(an::aggregates::daily_spend(rated));
    }
    crate::spool::mem_probe("before the close report");
    let mut dfs = crate::spool::collect_all(plans, "close report aggregates")?.into_iter();
    let mut next = || dfs.next().ok_or_else(|| anyhow::anyhow!("internal: close report aggregate missing"));
    let (unpriced_df, billing_ccy, rej_usage, rej_invoice) = (next()?, next()?, next()?, next()?);
    let daily = match shared_daily {
        Some(d) => d,
        None => next()?,
    };

    // Invoices and their exports.
    let (inv_df, lines_df) = match &computed.invoices {
        Some((i, l, _)) => (i.clone(), l.clone()),
        None => (DataFrame::empty_with_schema(&schemas::fct_invoices::schema()), DataFrame::empty_with_schema(&schemas::fct_invoice_lines::schema())),
    };
    use schemas::fct_invoices as fi;
    let (num, cid, cname, ccy) = (strs(&inv_df, fi::invoice_number)?, strs(&inv_df, fi::customer_id)?, strs(&inv_df, fi::customer_name)?, strs(&inv_df, fi::currency)?);
    let (sub, cost, margin) = (decs(&inv_df, fi::subtotal)?, decs(&inv_df, fi::cost)?, decs(&inv_df, fi::margin)?);
    let inv_dates = dates(&inv_df, fi::invoice_date)?;
    let export_prefix = format!("marts/exports/period={}/", ctx.period);
    let mut exports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ledger_exports = Vec::new();
    for o in &m.outputs {
        let Some(rest) = o.path.strip_prefix(&export_prefix) else { continue };
        if rest.starts_with("customer=") {
            let file = rest.rsplit('/').next().unwrap_or_default();
            let invoice = file.split('.').next().unwrap_or_default().to_string();
            exports.entry(invoice).or_default().push(o.path.clone());
        } else {
            ledger_exports.push(o.path.clone());
        }
    }
    ledger_exports.sort();
    let z = Decimal::ZERO;
    let mut invoices: Vec<Invoice> = (0..inv_df.height())
        .map(|i| {
            let number = num[i].clone().unwrap_or_default();
            let mut files = exports.remove(&number).unwrap_or_default();
            files.sort();
            Invoice {
                customer_id: cid[i].clone().unwrap_or_default(),
                customer_name: cname[i].clone().unwrap_or_default(),
                currency: ccy[i].clone().unwrap_or_default(),
                subtotal: sub[i].unwrap_or(z),
                cost: cost[i].unwrap_or(z),
                margin: margin[i].unwrap_or(z),
                exports: files,
                number,
            }
        })
        .collect();
    invoices.sort_by(|a, b| a.number.cmp(&b.number));
    let mut by_ccy: BTreeMap<String, CurrencyTotal> = BTreeMap::new();
    for i in &invoices {
        let e = by_ccy.entry(i.currency.clone()).or_insert_with(|| CurrencyTotal { currency: i.currency.clone(), invoices: 0, billed: z, cost: z, margin: z });
        e.invoices += 1;
        e.billed += i.subtotal;
        e.cost += i.cost;
        e.margin += i.margin;
    }

    // Margin and spend per customer and currency, from the daily aggregate.
    let (d_c, d_ccy, d_day) = (strs(&daily, "customer_id")?, strs(&daily, "invoice_currency")?, dates(&daily, "charge_date")?);
    let (d_usage, d_spend, d_margin) = (decs(&daily, "usage_spend")?, decs(&daily, "spend")?, decs(&daily, "margin")?);
    let mut per: BTreeMap<(String, String), (Decimal, Decimal, BTreeMap<NaiveDate, Decimal>)> = BTreeMap::new();
    for i in 0..daily.height() {
        let key = (d_c[i].clone().unwrap_or_default(), d_ccy[i].clone().unwrap_or_default());
        let e = per.entry(key).or_default();
        e.0 += d_spend[i].unwrap_or(z);
        e.1 += d_margin[i].unwrap_or(z);
        if let (Some(day), Some(u)) = (d_day[i], d_usage[i]) {
            if !u.is_zero() {
                *e.2.entry(day).or_default() += u;
            }
        }
    }
    let hundred = Decimal::ONE_HUNDRED;
    let mut margins = Vec::new();
    let mut spend = Vec::new();
    for ((id, currency), (s, mg, days)) in &per {
        let c = customers.get(id);
        let th = t.for_customer(id);
        let target = c.and_then(|c| c.target_margin);
        let exact = (!s.is_zero()).then(|| mg / s);
        let variance = exact.zip(target).map(|(x, tg)| ((x - tg) * hundred).round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointNearestEven));
        let status = match (exact, target) {
            (Some(x), Some(tg)) => judge((x - tg) * hundred, th.margin_warning_points, th.margin_critical_points),
            _ => Status::NotJudged,
        };
        margins.push(Margin {
            customer_id: id.clone(),
            name: name(id),
            currency: currency.clone(),
            spend: *s,
            margin: *mg,
            realised: ratio(*mg, *s),
            target,
            variance_points: variance,
            warning_points: th.margin_warning_points,
            critical_points: th.margin_critical_points,
            status,
        });
        if !days.is_empty() {
            let budget = c.filter(|c| &c.currency == currency).and_then(|c| c.monthly_budget);
            spend.push(Spend { customer_id: id.clone(), name: name(id), currency: currency.clone(), budget, by_day: days.iter().map(|(d, v)| (*d, *v)).collect() });
        }
    }
    margins.sort_by(|a, b| a.name.cmp(&b.name).then(a.currency.cmp(&b.currency)));
    spend.sort_by(|a, b| a.name.cmp(&b.name).then(a.currency.cmp(&b.currency)));

    // Reconciliation to Microsoft's invoice (manifest), with the billing currency per customer.
    let (b_c, b_ccy) = (strs(&billing_ccy, "customer_id")?, strs(&billing_ccy, "currency")?);
    let bc: BTreeMap<String, String> = b_c.into_iter().zip(b_ccy).filter_map(|(c, v)| Some((c?, v?))).collect();
    let d = |v: &Value| -> Decimal {
        match v {
            Value::String(s) => s.parse().unwrap_or_default(),
            Value::Number(n) => n.to_string().parse().unwrap_or_default(),
            _ => Decimal::ZERO,
        }
    };
    let mut usage_vs_summary: BTreeMap<String, Decimal> = BTreeMap::new();
    for row in m.control_totals.get("azure_control_comparison").and_then(Value::as_array).into_iter().flatten() {
        *usage_vs_summary.entry(row["customer_id"].as_str().unwrap_or_default().to_string()).or_default() += d(&row["difference"]);
    }
    let mut recon: Vec<Recon> = m
        .control_totals
        .get("reconciliation_by_customer")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|row| {
            let id = row["customer_id"].as_str().unwrap_or_default().to_string();
            Recon {
                name: name(&id),
                currency: bc.get(&id).cloned(),
                microsoft: d(&row["microsoft_invoice_subtotal"]),
                from_lines: d(&row["charged_from_invoice_lines"]),
                from_usage: d(&row["charged_from_daily_usage"]),
                usage_vs_summary: usage_vs_summary.get(&id).copied().unwrap_or_default(),
                customer_id: id,
            }
        })
        .collect();
    recon.sort_by(|a, b| a.name.cmp(&b.name));

    // Tag compliance per customer (the subscriptions' sums), judged as the monitor judges.
    let (everyone, tagging) = an::usage::tag_judged_customers(&refs.tag_rules)?;
    let mut comp: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    if let Some(df) = frame(computed, schemas::int_tag_compliance::TABLE) {
        use schemas::int_tag_compliance as tc;
        let (ids, cost, tagged) = (strs(df, tc::customer_id)?, decs(df, tc::azure_cost)?, decs(df, tc::tag_allocated_cost)?);
        for i in 0..df.height() {
            let e = comp.entry(ids[i].clone().unwrap_or_default()).or_default();
            e.0 += cost[i].unwrap_or(z);
            e.1 += tagged[i].unwrap_or(z);
        }
    }
    let mut compliance: Vec<Compliance> = comp
        .into_iter()
        .map(|(id, (cost, tagged))| {
            let th = t.for_customer(&id);
            let judged = everyone || tagging.contains(&id.to_lowercase());
            let r = ratio(tagged, cost);
            let status = if !judged || cost.is_zero() {
                Status::NotJudged
            } else if tagged / cost < th.tag_compliance_critical {
                Status::Critical
            } else if tagged / cost < th.tag_compliance_warning {
                Status::Warning
            } else {
                Status::Ok
            };
            Compliance { name: name(&id), customer_id: id, azure_cost: cost, tagged, ratio: r, judged, warning: th.tag_compliance_warning, critical: th.tag_compliance_critical, status }
        })
        .collect();
    compliance.sort_by(|a, b| a.name.cmp(&b.name));

    // Unpriced parts and rejected rows.
    let (u_c, u_ccy, u_reason, u_parts, u_cost) = (
        strs(&unpriced_df, r::customer_id)?,
        strs(&unpriced_df, r::billing_currency)?,
        strs(&unpriced_df, r::unpriced_reason)?,
        ints(&unpriced_df, "parts")?,
        decs(&unpriced_df, "cost")?,
    );
    let mut unpriced: Vec<Unpriced> = (0..unpriced_df.height())
        .map(|i| {
            let id = u_c[i].clone().unwrap_or_default();
            Unpriced {
                name: name(&id),
                customer_id: id,
                currency: u_ccy[i].clone().unwrap_or_default(),
                reason: u_reason[i].clone().unwrap_or_else(|| "(no reason recorded)".into()),
                parts: u_parts[i].unwrap_or(0),
                cost: u_cost[i].unwrap_or(z),
            }
        })
        .collect();
    unpriced.sort_by(|a, b| (&a.name, &a.reason).cmp(&(&b.name, &b.reason)));
    let mut rejects = Vec::new();
    for (table, df) in [("daily usage", &rej_usage), ("invoice lines", &rej_invoice)] {
        use schemas::rejects_pc_daily_usage as rj;
        let (file, code, ex, column) = (strs(df, rj::source_file)?, strs(df, rj::reason_code)?, strs(df, "example")?, strs(df, "column")?);
        let (rows, cost, first, last) = (ints(df, "rows")?, decs(df, "cost")?, ints(df, "first_line")?, ints(df, "last_line")?);
        for i in 0..df.height() {
            rejects.push(Rejects {
                table,
                file: file[i].clone().unwrap_or_default(),
                reason_code: code[i].clone().unwrap_or_default(),
                example: ex[i].clone().unwrap_or_default(),
                column: column[i].clone().unwrap_or_default(),
                rows: rows[i].unwrap_or(0),
                cost: cost[i].unwrap_or(z),
                first_line: first[i].unwrap_or(0),
                last_line: last[i].unwrap_or(0),
            });
        }
    }
    rejects.sort_by(|a, b| (a.table, &a.file, &a.reason_code).cmp(&(b.table, &b.file, &b.reason_code)));

    // Late data: the manifest's summary of re-stated periods, and the adjustment lines billed now.
    let late = m
        .control_totals
        .get("late_data_adjustments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["corrected_period"].as_str().unwrap_or_default().to_string(),
                v["lines"].as_u64().unwrap_or(0),
                v["amount"].as_str().unwrap_or("0").to_string(),
                v["restated"].as_bool().unwrap_or(false),
                v["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    use schemas::fct_invoice_lines as fl;
    let (l_type, l_inv, l_c, l_ccy, l_corr, l_desc, l_amt) = (
        strs(&lines_df, fl::line_type)?,
        strs(&lines_df, fl::invoice_number)?,
        strs(&lines_df, fl::customer_id)?,
        strs(&lines_df, fl::currency)?,
        strs(&lines_df, fl::corrected_period)?,
        strs(&lines_df, fl::description)?,
        decs(&lines_df, fl::amount)?,
    );
    let mut adjustments: Vec<Adjustment> = (0..lines_df.height())
        .filter(|i| l_type[*i].as_deref() == Some("adjustment"))
        .map(|i| Adjustment {
            invoice_number: l_inv[i].clone().unwrap_or_default(),
            customer_id: l_c[i].clone().unwrap_or_default(),
            currency: l_ccy[i].clone().unwrap_or_default(),
            corrected_period: l_corr[i].clone().unwrap_or_default(),
            description: l_desc[i].clone().unwrap_or_default(),
            amount: l_amt[i].unwrap_or(z),
        })
        .collect();
    adjustments.sort_by(|a, b| (&a.invoice_number, &a.corrected_period, &a.description).cmp(&(&b.invoice_number, &b.corrected_period, &b.description)));

    let inputs = m
        .inputs
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Input {
            name: f["name"].as_str().unwrap_or_default().to_string(),
            kind: f["kind"].as_str().unwrap_or("other").to_string(),
            rows_in: f["rows_in"].as_u64().unwrap_or(0),
            staged: f["staged"].as_u64().unwrap_or(0),
            rejected: f["rejected"].as_u64().unwrap_or(0),
            duplicates: f["duplicates"].as_u64().unwrap_or(0),
            sha256: f["sha256"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let rows = report.map(|r| r.rows.as_slice()).unwrap_or_default();
    let count = |s: Severity| rows.iter().filter(|a| a.severity == s).count();
    Ok(ReportData {
        period: ctx.period,
        final_: ctx.mode == RunMode::Close,
        partner: ctx.policies.issuer.clone(),
        invoice_date: inv_dates.iter().flatten().next().copied().unwrap_or(ctx.policies.invoice_date),
        as_of: report.map(|r| r.window.as_of),
        azure_usage_source: m.control_totals.get("azure_usage_source").and_then(Value::as_str).unwrap_or_default().to_string(),
        totals: by_ccy.into_values().collect(),
        invoices,
        margins,
        spend,
        microsoft_subtotal: m.control_totals.get("microsoft_invoice_subtotal").map(d),
        recon,
        checks: m.checks.clone(),
        anomalies: an::worst(rows, TOP_ANOMALIES).into_iter().map(|a| (a.clone(), if a.customer_id.is_empty() { String::new() } else { name(&a.customer_id) })).collect(),
        anomaly_counts: [count(Severity::Critical), count(Severity::Warning), count(Severity::Skipped)],
        compliance,
        unpriced,
        rejects,
        late,
        adjustments,
        ledger_exports,
        inputs,
    })
}
