//! Invoices (`fct_invoices`, `fct_invoice_lines`, `fct_invoice_detail`, DESIGN §5 "Invoice"): rated parts grouped
//! into invoice lines by the customer's template, PSA time as service lines, manual lines, late-data adjustment
//! lines, one rounding per line, the trial spend cap, deterministic invoice numbers, and the per-invoice checks.
//!
//! The rated parts stay lazy: one aggregate per invoice line is collected (thousands of rows, not millions) and
//! the lines and invoices are assembled from it with `rust_decimal`, where rounding modes and minor units are
//! exact and easy to read. `fct_invoice_detail` is a lazy join of the rated parts with the small line map, so the
//! resource-level rows are never materialised here.
//!
//! Grouping is always within one `line_type`, so credits and refunds are never netted into charges. The group
//! key is a readable string (`sku=…`, `family=…`, `sub=…|meter=…|unit=…`, `project=…`, `manual=…`) that is
//! stable across re-runs: `adjustment_lines` matches an issued line with its restated self on it.

mod adjust;
pub mod cells;
mod detail;
mod frames;
mod fx;
mod other_lines;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{
    fct_invoice_detail as det, fct_invoice_lines as fl, fct_invoices as fi, int_charges_rated as r,
};

use crate::context::{Period, RoundingMode, RunContext, RunMode};
use crate::currency::{minor_unit, round};
use crate::decimal::dec;
use crate::error::{PipelineError, Result};

pub use adjust::adjustment_lines;
pub use detail::{fct_invoice_detail, invoiced_parts, line_parts};
use frames::{checks, fct_invoice_lines, fct_invoices_frame, fixed};
use other_lines::{given_adjustments, manual_lines, service_lines};
pub use fx::{MarketRates, market_rate};

const STAGE: &str = "fct_invoices";

/// Unit label of parts with no org unit on enterprise invoices (DESIGN §5 "Allocate").
pub const UNASSIGNED: &str = "Unassigned";

/// Everything the invoice stage reads. Reference tables are the staged frames (`pipeline::reference`).
pub struct InvoiceInputs<'a> {
    /// `int_charges_rated` of the period.
    pub rated: LazyFrame,
    pub customers: &'a DataFrame,
    pub org_units: &'a DataFrame,
    pub psa_time: &'a DataFrame,
    pub manual_lines: &'a DataFrame,
    pub fx_rates: &'a DataFrame,
    /// `fct_invoice_lines`-shaped `adjustment` lines for this period (from [`adjustment_lines`]); may be empty.
    pub adjustments: DataFrame,
}

/// The stage's output: the three marts, the rows that could not be invoiced, and the per-invoice checks.
pub struct Invoiced {
    pub invoices: DataFrame,
    pub lines: DataFrame,
    pub detail: LazyFrame,
    /// `code`, `message`: data problems (unknown customer, missing FX rate, ...); the job exits 2 when not empty.
    pub errors: DataFrame,
    /// One per invoice; the job fails the run (exit 1) when any is not [`InvoiceCheck::ok`].
    pub checks: Vec<InvoiceCheck>,
}

/// The invariants of DESIGN §6 for one invoice, with the numbers, computed from the output frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceCheck {
    pub invoice_number: String,
    pub currency: String,
    pub lines: u64,
    /// `subtotal` as written on the invoice.
    pub subtotal: Decimal,
    /// Σ of the invoice's rounded line amounts.
    pub sum_rounded: Decimal,
    /// Σ of the invoice's unrounded line amounts.
    pub sum_unrounded: Decimal,
    /// ½ minor unit × lines (one minor unit × lines under `down`).
    pub bound: Decimal,
}

impl InvoiceCheck {
    /// Σ rounded − Σ unrounded.
    pub fn drift(&self) -> Decimal {
        self.sum_rounded - self.sum_unrounded
    }
    pub fn subtotal_ok(&self) -> bool {
        self.subtotal == self.sum_rounded
    }
    pub fn drift_ok(&self) -> bool {
        self.drift().abs() <= self.bound
    }
    pub fn ok(&self) -> bool {
        self.subtotal_ok() && self.drift_ok()
    }
    /// A sentence naming the numbers, for the manifest and the failure message.
    pub fn describe(&self) -> String {
        format!(
            "invoice `{}` ({}): subtotal {} vs Σ rounded lines {}; drift {} (Σ rounded {} − Σ unrounded {}) against bound {} for {} line(s)",
            self.invoice_number,
            self.currency,
            self.subtotal,
            self.sum_rounded,
            self.drift(),
            self.sum_rounded,
            self.sum_unrounded,
            self.bound,
            self.lines
        )
    }
}

/// The order of line types on an invoice: charges first, then the MSP's own lines, then reductions.
const LINE_TYPES: &[&str] = &[
    "usage",
    "license",
    "one_time",
    "service",
    "manual",
    "refund",
    "credit",
    "adjustment",
    "spend_cap_credit",
];

/// Line types that come from rated Microsoft charges (the spend cap applies to these).
pub const CHARGE_TYPES: &[&str] = &["usage", "license", "one_time", "credit", "refund"];

fn line_type_rank(t: &str) -> usize {
    LINE_TYPES
        .iter()
        .position(|x| *x == t)
        .unwrap_or(LINE_TYPES.len())
}

/// One invoice line before it has a number.
#[derive(Clone, Debug, Default)]
struct Line {
    customer_id: String,
    currency: String,
    line_type: String,
    product_family: Option<String>,
    subscription_id: Option<String>,
    group_key: String,
    unit_id: Option<String>,
    unit_path: Option<String>,
    description: String,
    quantity: Decimal,
    unit: Option<String>,
    unit_price: Option<Decimal>,
    amount_unrounded: Decimal,
    /// Set by rounding (adjustment lines arrive already rounded).
    amount: Decimal,
    cost: Decimal,
    part_count: i64,
    corrected_period: Option<String>,
    original_line_id: Option<String>,
}

/// A customer as the invoice needs it.
#[derive(Clone, Debug)]
struct Customer {
    name: Option<String>,
    currency: String,
    template: String,
    spend_cap: Option<Decimal>,
    payment_terms_days: i64,
}

fn customers(df: &DataFrame) -> Result<BTreeMap<String, Customer>> {
    use schemas::stg_customers as c;
    let ids = cells::strs(df, c::customer_id)?;
    let names = cells::strs(df, c::customer_name)?;
    let ccy = cells::strs(df, c::invoice_currency)?;
    let tpl = cells::strs(df, c::template)?;
    let cap = cells::decs(df, c::spend_cap)?;
    let terms = cells::ints(df, c::payment_terms_days)?;
    let mut out = BTreeMap::new();
    for i in 0..ids.len() {
        if let Some(id) = &ids[i] {
            out.insert(
                id.clone(),
                Customer {
                    name: names[i].clone(),
                    currency: ccy[i].clone().unwrap_or_default(),
                    template: tpl[i].clone().unwrap_or_else(|| "smb".into()),
                    spend_cap: cap[i],
                    payment_terms_days: terms[i].unwrap_or(30),
                },
            );
        }
    }
    Ok(out)
}

/// Errors found while invoicing: rows that could not be put on an invoice, as data.
#[derive(Default)]
struct Errors(Vec<(String, String)>);

impl Errors {
    fn push(&mut self, code: &str, message: String) {
        self.0.push((code.into(), message));
    }
    fn frame(&self) -> Result<DataFrame> {
        let codes: Vec<Option<String>> = self.0.iter().map(|(c, _)| Some(c.clone())).collect();
        let msgs: Vec<Option<String>> = self.0.iter().map(|(_, m)| Some(m.clone())).collect();
        let schema = error_schema();
        cells::frame(
            vec![
                cells::str_column("code", &codes),
                cells::str_column("message", &msgs),
            ],
            &schema,
            "errors",
        )
    }
}

/// The schema of [`Invoiced::errors`].
pub fn error_schema() -> Schema {
    schemas::build_schema(&[("code", schemas::Ty::Str), ("message", schemas::Ty::Str)])
}

fn s(name: &str) -> Expr {
    col(name)
}

fn blank(e: Expr) -> Expr {
    e.clone().is_null().or(e.eq(lit("")))
}

/// `ProductId:SkuId` (or the bare `ProductId` when the SKU is missing): the licence SKU of DESIGN §5.
fn sku_expr() -> Expr {
    when(blank(s(r::sku_id)))
        .then(s(r::product_id).fill_null(lit("")))
        .otherwise(concat_str(
            [s(r::product_id).fill_null(lit("")), s(r::sku_id)],
            ":",
            false,
        ))
}

/// The org unit a part is grouped under on enterprise invoices: its path, or `Unassigned`.
fn unit_label_expr() -> Expr {
    when(blank(s(r::unit_path)))
        .then(
            when(blank(s(r::unit_id)))
                .then(lit(UNASSIGNED))
                .otherwise(s(r::unit_id)),
        )
        .otherwise(s(r::unit_path))
}

/// The group key of a rated part by its customer's template (DESIGN §5 "Invoice").
/// - enterprise: subscription × meter category (daily usage) or SKU (invoice lines) × org unit;
/// - smb and trial: the licence SKU for licences, else the product family.
fn group_key_expr() -> Expr {
    let detail = when(s(r::source_kind).eq(lit("daily_usage")))
        .then(concat_str(
            [lit("meter="), s(r::meter_category).fill_null(lit(""))],
            "",
            false,
        ))
        .otherwise(concat_str([lit("sku="), sku_expr()], "", false));
    let enterprise = concat_str(
        [
            lit("sub="),
            s(r::subscription_id).fill_null(lit("")),
            lit("|"),
            detail,
            lit("|unit="),
            unit_label_expr(),
        ],
        "",
        false,
    );
    let summary = when(s(r::product_family).eq(lit("license")))
        .then(concat_str([lit("sku="), sku_expr()], "", false))
        .otherwise(concat_str(
            [lit("family="), s(r::product_family).fill_null(lit(""))],
            "",
            false,
        ));
    when(s(r::template).eq(lit("enterprise")))
        .then(enterprise)
        .otherwise(summary)
}

/// Σ q × sign(f) per part: refunds count negative, a zero factor counts nothing.
fn signed_q_expr() -> Expr {
    when(s(r::f).lt(dec("0")))
        .then(dec("0") - s(r::q))
        .when(s(r::f).gt(dec("0")))
        .then(s(r::q))
        .otherwise(dec("0"))
}

/// Whether the part is priced (only priced parts reach invoice lines).
fn priced_expr() -> Expr {
    s(r::status).eq(lit("priced")).fill_null(lit(false))
}

/// The rated parts with the columns grouping needs: `group_key`, `signed_q`, `priced`, null-free join keys.
fn keyed(rated: LazyFrame) -> LazyFrame {
    rated.with_columns([
        group_key_expr().alias("group_key"),
        signed_q_expr().alias("signed_q"),
        priced_expr().alias("priced"),
        s(r::customer_id).fill_null(lit("")).alias("k_customer"),
        s(r::invoice_currency)
            .fill_null(lit(""))
            .alias("k_currency"),
        s(r::line_type).fill_null(lit("")).alias("k_line_type"),
        s(r::product_family).fill_null(lit("")).alias("k_family"),
    ])
}

const KEYS: [&str; 5] = [
    "k_customer",
    "k_currency",
    "k_line_type",
    "group_key",
    "k_family",
];

/// One row per (customer, currency, line type, group key, family, priced): what a line needs, summed.
fn line_aggregate(rated: LazyFrame) -> LazyFrame {
    let mut by: Vec<Expr> = KEYS.iter().map(|k| col(*k)).collect();
    by.push(col("priced"));
    let unit_one = s(r::f).neq(dec("1")).and(s(r::f).neq(dec("-1")));
    // The price of one whole unit, price / (q × f): a prorated seat still shows the monthly seat price.
    let qf = s(r::q) * s(r::f);
    // Only invoice lines (seats, one-time purchases) get one: usage lines mix meters, and a tiny metered quantity
    // could push the quotient past the decimal type.
    let no_unit = qf.clone().eq(dec("0")).or(s(r::source_kind)
        .eq(lit("daily_usage"))
        .fill_null(lit(false)));
    // Every branch runs on every row: the divisor itself is never 0, nor so small (a prorated sliver of a
    // seat) that the quotient overflows Decimal(38, 18); such a line shows no unit price.
    let whole = when(no_unit.clone())
        .then(lit(NULL).cast(schemas::money()))
        .otherwise(
            s(r::price)
                / when(no_unit)
                    .then(dec("1"))
                    .otherwise(crate::decimal::not_tiny(qf, "0.000000001")),
        );
    keyed(rated)
        .group_by(by)
        .agg([
            s(r::price).sum().alias("amount_unrounded"),
            s(r::cost_ic).sum().alias("cost"),
            col("signed_q").sum().alias("quantity"),
            len().cast(DataType::Int64).alias("part_count"),
            coalesce(&[s(r::charge_start_date), s(r::charge_date)])
                .min()
                .alias("start"),
            coalesce(&[s(r::charge_end_date), s(r::charge_date)])
                .max()
                .alias("end"),
            s(r::product_name).min().alias("product_name"),
            s(r::sku_name).min().alias("sku_name"),
            s(r::meter_category).min().alias("meter_category"),
            s(r::subscription_id).min().alias("subscription_id"),
            s(r::unit_id).min().alias("unit_id"),
            s(r::unit_path).min().alias("unit_path"),
            s(r::unit).min().alias("unit"),
            sku_expr()
                .n_unique()
                .cast(DataType::Int64)
                .alias("n_products"),
            s(r::unit)
                .drop_nulls()
                .n_unique()
                .cast(DataType::Int64)
                .alias("n_units"),
            unit_one.any(true).alias("prorated"),
            whole.clone().min().alias("whole_min"),
            whole.max().alias("whole_max"),
            s(r::template).min().alias("template"),
        ])
        .sort(
            KEYS.iter()
                .map(|k| PlSmallStr::from(*k))
                .collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
}

fn family_label(family: &str) -> String {
    match family {
        "azure_usage" => "Azure consumption".into(),
        "license" => "Licences".into(),
        "reservation" => "Azure reservations".into(),
        "savings_plan" => "Azure savings plans".into(),
        "marketplace" => "Marketplace".into(),
        "software" => "Software".into(),
        "" => "Other charges".into(),
        other => other.replace('_', " "),
    }
}

fn date_range(start: Option<NaiveDate>, end: Option<NaiveDate>) -> String {
    match (start, end) {
        (Some(a), Some(b)) if a == b => format!(", {a}"),
        (Some(a), Some(b)) => format!(", {a} to {b}"),
        (Some(a), None) | (None, Some(a)) => format!(", {a}"),
        (None, None) => String::new(),
    }
}

/// Lines from the collected aggregate: priced groups become lines; unpriced groups are counted per customer.
fn charge_lines(
    agg: &DataFrame,
    unit_names: &HashMap<String, String>,
    errors: &mut Errors,
) -> Result<(Vec<Line>, BTreeMap<String, i64>)> {
    let cust = cells::strs(agg, "k_customer")?;
    let ccy = cells::strs(agg, "k_currency")?;
    let lt = cells::strs(agg, "k_line_type")?;
    let gk = cells::strs(agg, "group_key")?;
    let fam = cells::strs(agg, "k_family")?;
    let priced = cells::bools(agg, "priced")?;
    let amount = cells::decs(agg, "amount_unrounded")?;
    let cost = cells::decs(agg, "cost")?;
    let qty = cells::decs(agg, "quantity")?;
    let parts = cells::ints(agg, "part_count")?;
    let start = cells::dates(agg, "start")?;
    let end = cells::dates(agg, "end")?;
    let pname = cells::strs(agg, "product_name")?;
    let sname = cells::strs(agg, "sku_name")?;
    let meter = cells::strs(agg, "meter_category")?;
    let sub = cells::strs(agg, "subscription_id")?;
    let unit_id = cells::strs(agg, "unit_id")?;
    let unit_path = cells::strs(agg, "unit_path")?;
    let unit = cells::strs(agg, "unit")?;
    let n_products = cells::ints(agg, "n_products")?;
    let whole_min = cells::decs(agg, "whole_min")?;
    let whole_max = cells::decs(agg, "whole_max")?;
    let n_units = cells::ints(agg, "n_units")?;
    let prorated = cells::bools(agg, "prorated")?;
    let template = cells::strs(agg, "template")?;

    let mut lines = Vec::new();
    let mut unpriced: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..cust.len() {
        let customer = cust[i].clone().unwrap_or_default();
        let count = parts[i].unwrap_or(0);
        if priced[i] != Some(true) {
            *unpriced.entry(customer).or_default() += count;
            continue;
        }
        let currency = ccy[i].clone().unwrap_or_default();
        let line_type = lt[i].clone().unwrap_or_default();
        let group_key = gk[i].clone().unwrap_or_default();
        if currency.is_empty() || minor_unit(&currency).is_none() {
            errors.push(
                "unknown_currency",
                format!(
                    "{count} priced part(s) of customer `{customer}` have invoice currency `{currency}`, not an ISO 4217 code; fix `invoice_currency` in customers.csv"
                ),
            );
            continue;
        }
        if line_type.is_empty() {
            errors.push(
                "missing_line_type",
                format!("{count} priced part(s) of customer `{customer}` have no `line_type`; the rating stage must set it"),
            );
            continue;
        }
        let family = fam[i].clone().unwrap_or_default();
        let enterprise = template[i].as_deref() == Some("enterprise");
        let quantity = qty[i].unwrap_or_default();
        let amount_unrounded = amount[i].unwrap_or_default();
        let single = n_products[i] == Some(1) && n_units[i].unwrap_or(0) <= 1;
        let usage_like = group_key.starts_with("family=") || group_key.contains("|meter=");

        // The description a person understands: what it is, where (enterprise), when, and whether prorated.
        let mut text = match line_type.as_str() {
            "credit" => "Credit: ".to_string(),
            "refund" => "Refund: ".to_string(),
            _ => String::new(),
        };
        if usage_like && enterprise {
            let what = meter[i].clone().unwrap_or_else(|| family_label(&family));
            text.push_str(&format!(
                "{what}, subscription {}",
                sub[i].clone().unwrap_or_default()
            ));
        } else if usage_like || !single {
            text.push_str(&family_label(&family));
        } else {
            let p = pname[i].clone().unwrap_or_else(|| family_label(&family));
            text.push_str(&p);
            if let Some(sk) = sname[i].as_ref().filter(|sk| **sk != p) {
                text.push_str(&format!(" – {sk}"));
            }
            if enterprise {
                text.push_str(&format!(
                    ", subscription {}",
                    sub[i].clone().unwrap_or_default()
                ));
            }
        }
        let (line_unit_id, line_unit_path) = if enterprise {
            let path = unit_path[i].clone().or_else(|| unit_id[i].clone());
            let label = match &unit_id[i] {
                Some(u) => unit_names
                    .get(u)
                    .cloned()
                    .unwrap_or_else(|| path.clone().unwrap_or_default()),
                None => UNASSIGNED.to_string(),
            };
            text.push_str(&format!(", {label}"));
            (
                unit_id[i].clone(),
                Some(path.unwrap_or_else(|| UNASSIGNED.to_string())),
            )
        } else {
            (None, None)
        };
        text.push_str(&date_range(start[i], end[i]));
        if prorated[i] == Some(true) && !usage_like {
            text.push_str(" (prorated)");
        }
        // A unit price only where it means something: one product whose parts all have the same whole-unit
        // price (a mid-month price change leaves it empty rather than printing an average).
        let unit_price = match (whole_min[i], whole_max[i]) {
            (Some(lo), Some(hi)) if single && !usage_like && lo == hi => Some(lo),
            _ => None,
        };
        lines.push(Line {
            customer_id: customer,
            currency,
            line_type,
            product_family: Some(family).filter(|f| !f.is_empty()),
            subscription_id: if enterprise { sub[i].clone() } else { None },
            group_key,
            unit_id: line_unit_id,
            unit_path: line_unit_path,
            description: text,
            quantity,
            unit: if n_units[i].unwrap_or(0) <= 1 {
                unit[i].clone()
            } else {
                None
            },
            unit_price,
            amount_unrounded,
            amount: Decimal::ZERO,
            cost: cost[i].unwrap_or_default(),
            part_count: count,
            corrected_period: None,
            original_line_id: None,
        });
    }
    Ok((lines, unpriced))
}

/// `PREFIX-YYYYMM-NNNN`: NNNN counts (customer_id, currency) in code-point order within the period, from 1.
pub fn invoice_number(prefix: &str, period: Period, ordinal: usize) -> String {
    format!("{prefix}-{}-{ordinal:04}", period.compact())
}

/// The half (or, under `down`, whole) minor unit that bounds one line's rounding drift.
pub fn drift_bound_per_line(currency: &str, mode: RoundingMode) -> Option<Decimal> {
    let unit = Decimal::new(1, minor_unit(currency)?);
    Some(if mode == RoundingMode::Down {
        unit
    } else {
        unit / Decimal::TWO
    })
}

/// Builds the period's invoices, lines and detail from the rated parts, PSA time, manual lines and adjustments.
pub fn fct_invoices(inputs: InvoiceInputs, ctx: &RunContext) -> Result<Invoiced> {
    let mode = ctx.policies.rounding;
    let period = ctx.period;
    let mut errors = Errors::default();
    let customers = customers(inputs.customers)?;
    let rates = MarketRates::from_frame(inputs.fx_rates)?;
    let unit_names: HashMap<String, String> = {
        use schemas::stg_org_units as o;
        let ids = cells::strs(inputs.org_units, o::unit_id)?;
        let names = cells::strs(inputs.org_units, o::name)?;
        ids.into_iter()
            .zip(names)
            .filter_map(|(i, n)| Some((i?, n?)))
            .collect()
    };

    // The one collect of this stage: a row per prospective invoice line (small), see the module comment. The
    // streaming engine reads the month's rated parts batch by batch for it.
    let agg = line_aggregate(inputs.rated.clone())
        .collect_with_engine(Engine::Streaming)
        .map(|r| r.unwrap_single())
        .map_err(PipelineError::polars(STAGE))?;
    let (mut lines, unpriced) = charge_lines(&agg, &unit_names, &mut errors)?;
    for l in &lines {
        if !customers.contains_key(&l.customer_id) {
            // Rating marks such parts unpriced; a priced one here means the inputs disagree.
            errors.push(
                "unknown_customer",
                format!("customer `{}` has priced charges but is not in customers.csv; add the customer", l.customer_id),
            );
        }
    }
    lines.retain(|l| customers.contains_key(&l.customer_id));
    lines.extend(service_lines(
        inputs.psa_time,
        inputs.org_units,
        &customers,
        &rates,
        period,
        &mut errors,
    )?);
    lines.extend(manual_lines(
        inputs.manual_lines,
        &customers,
        period,
        &mut errors,
    )?);
    let adjustments = given_adjustments(&inputs.adjustments, &customers, &mut errors)?;

    // Round once per line (adjustments are differences of rounded amounts and stay as they are).
    for l in lines.iter_mut() {
        l.amount = match minor_unit(&l.currency) {
            Some(dp) => round(l.amount_unrounded, dp, mode),
            None => l.amount_unrounded, // reported below; the line is dropped
        };
    }
    lines.extend(adjustments);
    let (bad, good): (Vec<Line>, Vec<Line>) = lines
        .into_iter()
        .partition(|l| minor_unit(&l.currency).is_none());
    for l in bad {
        errors.push(
            "unknown_currency",
            format!(
                "a `{}` line of customer `{}` is in `{}`, not an ISO 4217 code; fix the currency",
                l.line_type, l.customer_id, l.currency
            ),
        );
    }
    let mut lines = good;

    // Trial spend cap: one `spend_cap_credit` line brings the rounded charges down to the cap.
    let mut caps = Vec::new();
    let mut charge_sums: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in &lines {
        if CHARGE_TYPES.contains(&l.line_type.as_str()) {
            *charge_sums
                .entry((l.customer_id.clone(), l.currency.clone()))
                .or_default() += l.amount;
        }
    }
    for ((customer, currency), charged) in &charge_sums {
        let Some(c) = customers.get(customer) else {
            continue;
        };
        let Some(cap) = c.spend_cap else { continue };
        if c.template != "trial" || &c.currency != currency || *charged <= cap {
            continue;
        }
        let offset = cap - charged;
        let dp = minor_unit(currency).unwrap_or(2);
        caps.push(Line {
            customer_id: customer.clone(),
            currency: currency.clone(),
            line_type: "spend_cap_credit".into(),
            group_key: "spend_cap".into(),
            description: format!(
                "Trial spend cap: charges of {} {currency} above the cap of {} {currency}",
                fixed(*charged, dp),
                fixed(cap, dp)
            ),
            quantity: Decimal::ONE,
            amount_unrounded: offset,
            amount: round(offset, dp, mode),
            ..Line::default()
        });
    }
    lines.extend(caps);

    // Invoices: one per (customer, currency) with at least one line, numbered in code-point order.
    let keys: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| (l.customer_id.clone(), l.currency.clone()))
        .collect();
    let numbers: BTreeMap<(String, String), String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.clone(),
                invoice_number(&ctx.policies.invoice_prefix, period, i + 1),
            )
        })
        .collect();
    lines.sort_by(|a, b| {
        (
            &a.customer_id,
            &a.currency,
            line_type_rank(&a.line_type),
            &a.group_key,
            &a.product_family,
        )
            .cmp(&(
                &b.customer_id,
                &b.currency,
                line_type_rank(&b.line_type),
                &b.group_key,
                &b.product_family,
            ))
    });

    let lines_df = fct_invoice_lines(&lines, &numbers, period)?;
    let invoices_df = fct_invoices_frame(&lines, &numbers, &customers, &unpriced, ctx)?;
    let checks = checks(&invoices_df, &lines_df, mode)?;
    let detail = detail::fct_invoice_detail(inputs.rated, &lines_df, period);
    Ok(Invoiced {
        invoices: invoices_df,
        lines: lines_df,
        detail,
        errors: errors.frame()?,
        checks,
    })
}
