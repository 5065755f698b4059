//! The parallel run (issue 17): legacy invoice lines against cspbill's committed `fct_invoice_lines` of a
//! period, matched on business keys (customer, currency, product, and line type when the legacy file has one),
//! never on row order, with a probable cause for every difference (`causes.rs`). Pure: the job (`jobs/compare.rs`)
//! reads the legacy file and the committed tables and writes `marts/rpt_parallel_run`.
//!
//! Both sides are small (invoice-line sized), so the matching is done in Rust with `rust_decimal`, as the invoice
//! stage assembles its lines. Several lines of one side under one key (an enterprise invoice splits a SKU by
//! subscription and org unit; a legacy sheet may split by site) are summed and compared as one matched line.

mod causes;
pub mod drift;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::rpt_parallel_run as rp;

use crate::currency::minor_unit;
use crate::error::Result;
use crate::invoice::cells;
use crate::RoundingMode;

pub use causes::Cause;

/// One typed line of the legacy export (`jobs/compare.rs` parses the cells exactly, with file/line errors).
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyLine {
    /// The record's line in the legacy file (the header is line 1).
    pub line: u64,
    pub customer: String,
    pub invoice_number: String,
    pub description: String,
    pub product: String,
    pub quantity: Option<Decimal>,
    pub amount: Decimal,
    pub currency: String,
    /// Only when the legacy layout maps a line-type column; then it is part of the key.
    pub line_type: Option<String>,
}

/// What the comparison needs besides the two sides.
#[derive(Debug, Clone)]
pub struct Options {
    /// A difference is within tolerance when |difference| ≤ `abs_tolerance` or ≤ `rel_tolerance` × |legacy|.
    pub abs_tolerance: Decimal,
    pub rel_tolerance: Decimal,
    /// cspbill's rounding mode (the markup and FX causes recompute an amount and round it like cspbill).
    pub rounding: RoundingMode,
}

/// A rate-card value another rule offers (`stg_rate_cards`): the markup cause tries each.
#[derive(Debug, Clone, PartialEq)]
pub struct RateValue {
    pub rule_id: String,
    pub method: String,
    pub value: Decimal,
}

/// One cspbill invoice line, as the matcher sees it.
#[derive(Debug, Clone)]
struct CspLine {
    customer_id: String,
    invoice_number: String,
    currency: String,
    line_type: String,
    product_family: String,
    product: String,
    description: String,
    quantity: Decimal,
    unit_price: Option<Decimal>,
    amount_unrounded: Decimal,
    amount: Decimal,
    cost: Decimal,
}

/// The product a cspbill line is keyed by, from its `group_key`: the SKU (`ProductId:SkuId`, or `ProductId`),
/// the meter category (enterprise usage), the product family (summary usage lines), the PSA project code, the
/// manual line's reference (else its text), or the whole key (`spend_cap`).
pub fn product_key(group_key: &str) -> String {
    for seg in group_key.split('|') {
        for tag in ["sku=", "meter=", "family=", "project="] {
            if let Some(v) = seg.strip_prefix(tag) {
                return v.to_string();
            }
        }
        if let Some(v) = seg.strip_prefix("manual=") {
            let desc = group_key.split('|').nth(1).unwrap_or_default();
            let desc = desc.split('#').next().unwrap_or_default();
            return if v.is_empty() { desc.to_string() } else { v.to_string() };
        }
    }
    group_key.to_string()
}

/// The customer id by any spelling a business system uses (the id or the name, any case), and the name by id.
fn customer_names(customers: &DataFrame) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let ids = cells::strs(customers, "customer_id")?;
    let cn = cells::strs(customers, "customer_name")?;
    for (id, name) in ids.iter().zip(&cn) {
        if let Some(id) = id {
            names.insert(norm(id), id.clone());
            if let Some(n) = name {
                names.entry(norm(n)).or_insert_with(|| id.clone());
            }
        }
    }
    let display = ids.iter().zip(&cn).filter_map(|(i, n)| Some((i.clone()?, n.clone().unwrap_or_default()))).collect();
    Ok((names, display))
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

fn csp_lines(lines: &DataFrame) -> Result<Vec<CspLine>> {
    use schemas::fct_invoice_lines as fl;
    let s = |c| cells::strs(lines, c);
    let d = |c| cells::decs(lines, c);
    let (cust, inv, ccy, lt, fam, gk, desc) =
        (s(fl::customer_id)?, s(fl::invoice_number)?, s(fl::currency)?, s(fl::line_type)?, s(fl::product_family)?, s(fl::group_key)?, s(fl::description)?);
    let (q, up, au, a, c) = (d(fl::quantity)?, d(fl::unit_price)?, d(fl::amount_unrounded)?, d(fl::amount)?, d(fl::cost)?);
    Ok((0..lines.height())
        .map(|i| CspLine {
            customer_id: cust[i].clone().unwrap_or_default(),
            invoice_number: inv[i].clone().unwrap_or_default(),
            currency: ccy[i].clone().unwrap_or_default().to_uppercase(),
            line_type: lt[i].clone().unwrap_or_default(),
            product_family: fam[i].clone().unwrap_or_default(),
            product: product_key(gk[i].as_deref().unwrap_or_default()),
            description: desc[i].clone().unwrap_or_default(),
            quantity: q[i].unwrap_or_default(),
            unit_price: up[i],
            amount_unrounded: au[i].unwrap_or_default(),
            amount: a[i].unwrap_or_default(),
            cost: c[i].unwrap_or_default(),
        })
        .collect())
}

/// The match key: customer id, currency, product (lower case), line type (empty when the legacy file has none).
type Key = (String, String, String, String);

/// One side of a matched key, summed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Side {
    pub lines: i64,
    pub amount: Decimal,
    pub quantity: Option<Decimal>,
    pub invoices: Vec<String>,
    pub descriptions: Vec<String>,
}

/// The cspbill side of a key: the sums and what the causes need.
#[derive(Debug, Clone, Default)]
pub(crate) struct CspSide {
    pub side: Side,
    pub amount_unrounded: Decimal,
    pub cost: Decimal,
    pub families: Vec<String>,
    pub line_types: Vec<String>,
    /// Σ amount_unrounded / unit_price over lines with a unit price: seat-months billed (fractional when prorated).
    pub effective_quantity: Option<Decimal>,
    pub unit_prices: Vec<Decimal>,
    pub prorated: bool,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !s.is_empty() && !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// Compares the legacy lines with cspbill's invoice lines of the period and returns `rpt_parallel_run`: one
/// `line` row per matched key (or unmatched line) and one `customer` row per customer and currency.
/// `customers` maps the legacy customer text (a customer id or name, any case) to the customer id: columns
/// `customer_id`, `customer_name`. `fx` holds `stg_fx_rates`-shaped rows (`from_currency`, `to_currency`,
/// `rate`) of the period.
pub fn rpt_parallel_run(
    period: &str,
    compared_run_id: &str,
    legacy: &[LegacyLine],
    invoice_lines: &DataFrame,
    customers: &DataFrame,
    rate_values: &[RateValue],
    fx: &DataFrame,
    opts: &Options,
) -> Result<DataFrame> {
    let with_lt = legacy.iter().any(|l| l.line_type.is_some());
    let (mut names, display) = customer_names(customers)?;
    let mut csp: BTreeMap<Key, CspSide> = BTreeMap::new();
    // The product as cspbill spells it (else as the legacy file does), for the report.
    let mut spelling: BTreeMap<String, String> = BTreeMap::new();
    for l in csp_lines(invoice_lines)? {
        names.entry(norm(&l.customer_id)).or_insert_with(|| l.customer_id.clone());
        spelling.entry(norm(&l.product)).or_insert_with(|| l.product.clone());
        let lt = if with_lt { norm(&l.line_type) } else { String::new() };
        let e = csp.entry((l.customer_id.clone(), l.currency.clone(), norm(&l.product), lt)).or_default();
        e.side.lines += 1;
        e.side.amount += l.amount;
        e.side.quantity = Some(e.side.quantity.unwrap_or_default() + l.quantity);
        push_unique(&mut e.side.invoices, &l.invoice_number);
        push_unique(&mut e.side.descriptions, &l.description);
        e.amount_unrounded += l.amount_unrounded;
        e.cost += l.cost;
        push_unique(&mut e.families, &l.product_family);
        push_unique(&mut e.line_types, &l.line_type);
        e.prorated |= l.description.ends_with("(prorated)");
        if let Some(p) = l.unit_price.filter(|p| !p.is_zero()) {
            if let Some(q) = l.amount_unrounded.checked_div(p) {
                e.effective_quantity = Some(e.effective_quantity.unwrap_or_default() + q.round_dp(6));
            }
            if !e.unit_prices.contains(&p) {
                e.unit_prices.push(p);
            }
        }
    }

    // Legacy lines: the customer resolved by id or name; the product by the exact key, else (when unique) by the
    // product id of a `ProductId:SkuId` key.
    let mut leg: BTreeMap<Key, Side> = BTreeMap::new();
    for l in legacy {
        let customer = names.get(&norm(&l.customer)).cloned().unwrap_or_else(|| l.customer.trim().to_string());
        let currency = l.currency.trim().to_uppercase();
        let lt = l.line_type.as_deref().map(norm).unwrap_or_default();
        let mut product = norm(&l.product);
        if !csp.contains_key(&(customer.clone(), currency.clone(), product.clone(), lt.clone())) {
            let by_id: Vec<&Key> = csp
                .keys()
                .filter(|k| k.0 == customer && k.1 == currency && k.3 == lt && k.2.split(':').next() == Some(product.as_str()))
                .collect();
            if let [only] = by_id.as_slice() {
                product = only.2.clone();
            }
        }
        spelling.entry(product.clone()).or_insert_with(|| l.product.trim().to_string());
        let e = leg.entry((customer, currency, product, lt)).or_default();
        e.lines += 1;
        e.amount += l.amount;
        e.quantity = match (e.quantity, l.quantity) {
            (None, q) if e.lines == 1 => q,
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        push_unique(&mut e.invoices, l.invoice_number.trim());
        push_unique(&mut e.descriptions, l.description.trim());
    }

    let mut keys: Vec<Key> = csp.keys().chain(leg.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let fx_rates = causes::fx_rates(fx)?;
    let mut rows: Vec<Row> = Vec::new();
    for k in &keys {
        let c = csp.get(k);
        let l = leg.get(k);
        let dp = minor_unit(&k.1).unwrap_or(2);
        let ctx = causes::Ctx { currency: &k.1, dp, opts, rate_values, fx: &fx_rates };
        let (status, cause, explanation) = match (c, l) {
            (Some(_), None) => ("missing_in_legacy", Cause::MissingLine, "cspbill bills this line; the legacy invoice has no line for it".to_string()),
            (None, Some(_)) => ("extra_in_legacy", Cause::ExtraLine, "the legacy invoice has this line; cspbill bills nothing under this customer, currency and product".to_string()),
            (Some(c), Some(l)) => {
                let (cause, why) = causes::explain(c, l, &ctx);
                ("matched", cause, why)
            }
            (None, None) => continue,
        };
        let legacy_amount = l.map(|l| l.amount);
        let csp_amount = c.map(|c| c.side.amount);
        let diff = csp_amount.unwrap_or_default() - legacy_amount.unwrap_or_default();
        let legacy_ref = legacy_amount.unwrap_or_default();
        let within = diff.abs() <= opts.abs_tolerance || diff.abs() <= opts.rel_tolerance * legacy_ref.abs();
        let mut desc = c.map(|c| c.side.descriptions.clone()).unwrap_or_default();
        if desc.is_empty() {
            desc = l.map(|l| l.descriptions.clone()).unwrap_or_default();
        }
        rows.push(Row {
            kind: "line",
            customer_id: k.0.clone(),
            customer_name: display.get(&k.0).cloned().unwrap_or_default(),
            currency: k.1.clone(),
            product: spelling.get(&k.2).cloned().unwrap_or_else(|| k.2.clone()),
            line_type: if k.3.is_empty() { c.map(|c| c.line_types.join(",")).unwrap_or_default() } else { k.3.clone() },
            description: desc.join(" / "),
            legacy_invoices: l.map(|l| l.invoices.join(",")).unwrap_or_default(),
            cspbill_invoices: c.map(|c| c.side.invoices.join(",")).unwrap_or_default(),
            legacy_lines: l.map_or(0, |l| l.lines),
            cspbill_lines: c.map_or(0, |c| c.side.lines),
            legacy_quantity: l.and_then(|l| l.quantity),
            cspbill_quantity: c.and_then(|c| c.side.quantity),
            legacy_amount,
            cspbill_amount: csp_amount,
            difference: diff,
            difference_pct: pct(diff, legacy_ref),
            within,
            status: status.into(),
            cause: cause.as_str().into(),
            explanation,
            outside: i64::from(!within),
        });
    }
    let summaries = customer_rows(&rows, opts);
    rows.extend(summaries);
    frame(period, compared_run_id, &rows)
}

/// The difference in per cent of the legacy amount, 4 places; none when the legacy amount is 0.
fn pct(diff: Decimal, legacy: Decimal) -> Option<Decimal> {
    if legacy.is_zero() {
        return None;
    }
    diff.checked_mul(Decimal::ONE_HUNDRED)?.checked_div(legacy).map(|p| p.round_dp(4))
}

#[derive(Debug, Clone)]
struct Row {
    kind: &'static str,
    customer_id: String,
    customer_name: String,
    currency: String,
    product: String,
    line_type: String,
    description: String,
    legacy_invoices: String,
    cspbill_invoices: String,
    legacy_lines: i64,
    cspbill_lines: i64,
    legacy_quantity: Option<Decimal>,
    cspbill_quantity: Option<Decimal>,
    legacy_amount: Option<Decimal>,
    cspbill_amount: Option<Decimal>,
    difference: Decimal,
    difference_pct: Option<Decimal>,
    within: bool,
    status: String,
    cause: String,
    explanation: String,
    /// Line rows: 1 when outside tolerance; customer rows: the count of their lines outside.
    outside: i64,
}

/// One `customer` row per customer and currency: the totals, the totals' tolerance, and the causes counted.
fn customer_rows(lines: &[Row], opts: &Options) -> Vec<Row> {
    let mut by: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for r in lines {
        by.entry((r.customer_id.clone(), r.currency.clone())).or_default().push(r);
    }
    by.into_iter()
        .map(|((customer_id, currency), rs)| {
            let legacy: Decimal = rs.iter().filter_map(|r| r.legacy_amount).sum();
            let csp: Decimal = rs.iter().filter_map(|r| r.cspbill_amount).sum();
            let diff = csp - legacy;
            let outside: i64 = rs.iter().map(|r| r.outside).sum();
            let within = outside == 0 && (diff.abs() <= opts.abs_tolerance || diff.abs() <= opts.rel_tolerance * legacy.abs());
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &rs {
                if r.cause != Cause::None.as_str() {
                    *counts.entry(r.cause.as_str()).or_default() += 1;
                }
            }
            let explanation = if counts.is_empty() {
                format!("{} line(s), all equal", rs.len())
            } else {
                let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
                format!("{} line(s), {outside} outside tolerance; differences: {}", rs.len(), parts.join(", "))
            };
            Row {
                kind: "customer",
                customer_name: rs[0].customer_name.clone(),
                customer_id,
                currency,
                product: String::new(),
                line_type: String::new(),
                description: String::new(),
                legacy_invoices: join_unique(rs.iter().map(|r| r.legacy_invoices.as_str())),
                cspbill_invoices: join_unique(rs.iter().map(|r| r.cspbill_invoices.as_str())),
                legacy_lines: rs.iter().map(|r| r.legacy_lines).sum(),
                cspbill_lines: rs.iter().map(|r| r.cspbill_lines).sum(),
                legacy_quantity: None,
                cspbill_quantity: None,
                legacy_amount: Some(legacy),
                cspbill_amount: Some(csp),
                difference: diff,
                difference_pct: pct(diff, legacy),
                within,
                status: if rs.iter().all(|r| r.status == "matched") { "matched".into() } else { "incomplete".into() },
                cause: if counts.is_empty() { Cause::None.as_str().into() } else { "summary".into() },
                explanation,
                outside,
            }
        })
        .collect()
}

fn join_unique<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<String> = Vec::new();
    for s in it.flat_map(|s| s.split(',')) {
        push_unique(&mut v, s);
    }
    v.join(",")
}

fn frame(period: &str, run: &str, rows: &[Row]) -> Result<DataFrame> {
    let st = |f: &dyn Fn(&Row) -> String| -> Vec<Option<String>> { rows.iter().map(|r| Some(f(r))).collect() };
    let de = |f: &dyn Fn(&Row) -> Option<Decimal>| -> Vec<Option<Decimal>> { rows.iter().map(f).collect() };
    let columns = vec![
        cells::str_column(rp::period, &st(&|_| period.to_string())),
        cells::str_column(rp::row_kind, &st(&|r| r.kind.to_string())),
        cells::str_column(rp::customer_id, &st(&|r| r.customer_id.clone())),
        cells::str_column(rp::customer_name, &st(&|r| r.customer_name.clone())),
        cells::str_column(rp::currency, &st(&|r| r.currency.clone())),
        cells::str_column(rp::product, &st(&|r| r.product.clone())),
        cells::str_column(rp::line_type, &st(&|r| r.line_type.clone())),
        cells::str_column(rp::description, &st(&|r| r.description.clone())),
        cells::str_column(rp::legacy_invoice_numbers, &st(&|r| r.legacy_invoices.clone())),
        cells::str_column(rp::cspbill_invoice_numbers, &st(&|r| r.cspbill_invoices.clone())),
        cells::int_column(rp::legacy_lines, &rows.iter().map(|r| r.legacy_lines).collect::<Vec<_>>()),
        cells::int_column(rp::cspbill_lines, &rows.iter().map(|r| r.cspbill_lines).collect::<Vec<_>>()),
        cells::dec_column(rp::legacy_quantity, &de(&|r| r.legacy_quantity)),
        cells::dec_column(rp::cspbill_quantity, &de(&|r| r.cspbill_quantity)),
        cells::dec_column(rp::legacy_amount, &de(&|r| r.legacy_amount)),
        cells::dec_column(rp::cspbill_amount, &de(&|r| r.cspbill_amount)),
        cells::dec_column(rp::difference, &de(&|r| Some(r.difference))),
        cells::dec_column(rp::difference_pct, &de(&|r| r.difference_pct)),
        Column::new(rp::within_tolerance.into(), rows.iter().map(|r| r.within).collect::<Vec<bool>>()),
        cells::int_column(rp::lines_outside_tolerance, &rows.iter().map(|r| r.outside).collect::<Vec<_>>()),
        cells::str_column(rp::status, &st(&|r| r.status.clone())),
        cells::str_column(rp::cause, &st(&|r| r.cause.clone())),
        cells::str_column(rp::explanation, &st(&|r| r.explanation.clone())),
        cells::str_column(rp::compared_run_id, &st(&|_| run.to_string())),
    ];
    cells::frame(columns, &rp::schema(), rp::TABLE)
}
