//! Drift between billing and the business systems (issue 17, part 2), from their exports, against the period's
//! committed invoice lines. One row of `rpt_drift` per difference, with both values and which system holds
//! which:
//! - PSA agreement additions (ConnectWise/Autotask: customer, product/SKU, quantity, unit price) against the
//!   Partner Center seats billed (Σ quantity of the SKU's licence lines, refunds negative) and cspbill's seat
//!   price (the whole-seat `unit_price` of its licence lines); a billed licence SKU with no agreement addition
//!   (for a customer the PSA export covers) and an agreement with nothing billed are rows too.
//! - CRM quotes (customer, product or category, quoted quantity, quoted monthly amount, quoted margin) against
//!   what was billed: Σ quantity, Σ amount and the realised margin (Σ amount − Σ cost) / Σ amount of the
//!   lines of that SKU, meter category or product family.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::rpt_drift as rd;

use super::{CspLine, csp_lines, customer_names, norm};
use crate::currency::minor_unit;
use crate::error::Result;
use crate::invoice::cells;

/// One agreement addition of the PSA export.
#[derive(Debug, Clone, PartialEq)]
pub struct PsaAgreement {
    pub line: u64,
    pub customer: String,
    pub product: String,
    pub quantity: Decimal,
    pub unit_price: Option<Decimal>,
}

/// One quote line of the CRM export.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmQuote {
    pub line: u64,
    pub customer: String,
    pub product: String,
    pub quantity: Option<Decimal>,
    pub monthly_amount: Option<Decimal>,
    /// A fraction (0.15 = 15 %).
    pub margin: Option<Decimal>,
}

/// When a CRM figure counts as drift.
#[derive(Debug, Clone)]
pub struct DriftOptions {
    /// Amounts: |billed − quoted| above this and above `rel_tolerance` × |quoted|.
    pub abs_tolerance: Decimal,
    pub rel_tolerance: Decimal,
    /// Margins: more than this many fraction points apart (0.01 = 1 point).
    pub margin_tolerance: Decimal,
}

#[derive(Debug, Clone)]
struct Row {
    source: &'static str,
    customer_id: String,
    product: String,
    measure: &'static str,
    business_system: &'static str,
    business_value: Option<Decimal>,
    billing_source: &'static str,
    billing_value: Option<Decimal>,
    currency: String,
    message: String,
}

/// The cspbill lines of a customer answering to a business system's product: the SKU key exactly, else the
/// product id of `ProductId:SkuId` keys, else the product family (`license`, `azure_usage`, ...).
fn lines_for<'a>(lines: &'a [CspLine], customer: &str, product: &str) -> Vec<&'a CspLine> {
    let p = norm(product);
    let mine: Vec<&CspLine> = lines.iter().filter(|l| l.customer_id == customer).collect();
    for pick in [
        &(|l: &CspLine| norm(&l.product) == p) as &dyn Fn(&CspLine) -> bool,
        &|l: &CspLine| norm(&l.product).split(':').next() == Some(p.as_str()),
        &|l: &CspLine| norm(&l.product_family) == p,
    ] {
        let hit: Vec<&CspLine> = mine.iter().copied().filter(|l| pick(l)).collect();
        if !hit.is_empty() {
            return hit;
        }
    }
    Vec::new()
}

/// Builds `rpt_drift` from the PSA agreements and CRM quotes (either may be empty).
pub fn rpt_drift(
    period: &str,
    compared_run_id: &str,
    psa: &[PsaAgreement],
    crm: &[CrmQuote],
    invoice_lines: &DataFrame,
    customers: &DataFrame,
    opts: &DriftOptions,
) -> Result<DataFrame> {
    let (names, display) = customer_names(customers)?;
    let resolve = |c: &str| names.get(&norm(c)).cloned().unwrap_or_else(|| c.trim().to_string());
    let lines = csp_lines(invoice_lines)?;
    let mut rows = Vec::new();

    // PSA: agreements summed per customer and product.
    let mut agreements: BTreeMap<(String, String), (String, Decimal, Vec<Decimal>)> = BTreeMap::new();
    for a in psa {
        let e = agreements.entry((resolve(&a.customer), norm(&a.product))).or_insert_with(|| (a.product.trim().to_string(), Decimal::ZERO, Vec::new()));
        e.1 += a.quantity;
        if let Some(p) = a.unit_price.filter(|p| !e.2.contains(p)) {
            e.2.push(p);
        }
    }
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for ((customer, _), (product, quantity, prices)) in &agreements {
        let hit: Vec<&CspLine> = lines_for(&lines, customer, product).into_iter().filter(|l| l.product_family == "license").collect();
        let currency = hit.first().map(|l| l.currency.clone()).unwrap_or_default();
        for l in &hit {
            seen.insert((l.customer_id.clone(), norm(&l.product)));
        }
        let base = |measure, bv, cv, src, msg: String| Row {
            source: "psa",
            customer_id: customer.clone(),
            product: product.clone(),
            measure,
            business_system: "psa",
            business_value: bv,
            billing_source: src,
            billing_value: cv,
            currency: currency.clone(),
            message: msg,
        };
        if hit.is_empty() {
            rows.push(base("line", Some(*quantity), None, "partner_center", format!("the PSA agreement adds {} × `{product}`; Partner Center billed no seats of it this period", quantity.normalize())));
            continue;
        }
        let seats: Decimal = hit.iter().map(|l| l.quantity).sum();
        if seats != *quantity {
            rows.push(base("quantity", Some(*quantity), Some(seats), "partner_center", format!("the PSA agreement has {} seats, Partner Center billed {} (net of refunds): update the agreement or the subscription", quantity.normalize(), seats.normalize())));
        }
        let billed: BTreeSet<Decimal> = hit.iter().filter(|l| l.line_type == "license").filter_map(|l| l.unit_price).collect();
        let dp = minor_unit(&currency).unwrap_or(2);
        let half = Decimal::new(5, dp + 1);
        for p in prices {
            if let Some(b) = billed.iter().find(|b| (**b - p).abs() > half) {
                rows.push(base("unit_price", Some(*p), Some(*b), "cspbill", format!("the PSA agreement prices a seat at {} {currency}, cspbill at {} {currency}: one of the rate card and the agreement is out of date", p.normalize(), b.round_dp(dp + 2).normalize())));
            }
        }
    }
    // Billed licences the PSA export does not carry, for the customers it covers.
    let covered: BTreeSet<&String> = agreements.keys().map(|k| &k.0).collect();
    let mut billed: BTreeMap<(String, String), (String, String, Decimal)> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.product_family == "license" && covered.contains(&l.customer_id)) {
        let k = (l.customer_id.clone(), norm(&l.product));
        if seen.contains(&k) {
            continue;
        }
        let e = billed.entry(k).or_insert_with(|| (l.product.clone(), l.currency.clone(), Decimal::ZERO));
        e.2 += l.quantity;
    }
    for ((customer, _), (product, currency, seats)) in billed {
        rows.push(Row {
            source: "psa",
            customer_id: customer,
            message: format!("Partner Center billed {} seats of `{product}`; the PSA export has no agreement addition for it", seats.normalize()),
            product,
            measure: "line",
            business_system: "psa",
            business_value: None,
            billing_source: "partner_center",
            billing_value: Some(seats),
            currency,
        });
    }

    // CRM: each quote against what was billed for its product or category.
    for q in crm {
        let customer = resolve(&q.customer);
        let hit = lines_for(&lines, &customer, &q.product);
        let currency = hit.first().map(|l| l.currency.clone()).unwrap_or_default();
        let product = q.product.trim().to_string();
        let base = |measure, bv, cv, msg: String| Row {
            source: "crm",
            customer_id: customer.clone(),
            product: product.clone(),
            measure,
            business_system: "crm",
            business_value: bv,
            billing_source: "cspbill",
            billing_value: cv,
            currency: currency.clone(),
            message: msg,
        };
        if hit.is_empty() {
            rows.push(base("line", q.monthly_amount.or(q.quantity), None, format!("the CRM quote for `{product}` has nothing billed this period")));
            continue;
        }
        let quantity: Decimal = hit.iter().map(|l| l.quantity).sum();
        let amount: Decimal = hit.iter().map(|l| l.amount).sum();
        let cost: Decimal = hit.iter().map(|l| l.cost).sum();
        if let Some(qq) = q.quantity.filter(|qq| *qq != quantity) {
            rows.push(base("quantity", Some(qq), Some(quantity), format!("quoted {} units, billed {}", qq.normalize(), quantity.normalize())));
        }
        if let Some(qa) = q.monthly_amount {
            let d = (amount - qa).abs();
            if d > opts.abs_tolerance && d > opts.rel_tolerance * qa.abs() {
                rows.push(base("amount", Some(qa), Some(amount), format!("quoted {} {currency} a month, billed {} {currency}", qa.normalize(), amount.normalize())));
            }
        }
        if let (Some(qm), false) = (q.margin, amount.is_zero()) {
            if let Some(m) = (amount - cost).checked_div(amount).map(|m| m.round_dp(6)) {
                if (m - qm).abs() > opts.margin_tolerance {
                    rows.push(base("margin", Some(qm), Some(m), format!("quoted margin {} %, realised {} %", (qm * Decimal::ONE_HUNDRED).round_dp(2).normalize(), (m * Decimal::ONE_HUNDRED).round_dp(2).normalize())));
                }
            }
        }
    }

    let st = |f: &dyn Fn(&Row) -> String| -> Vec<Option<String>> { rows.iter().map(|r| Some(f(r))).collect() };
    let columns = vec![
        cells::str_column(rd::period, &st(&|_| period.to_string())),
        cells::str_column(rd::source, &st(&|r| r.source.to_string())),
        cells::str_column(rd::customer_id, &st(&|r| r.customer_id.clone())),
        cells::str_column(rd::customer_name, &st(&|r| display.get(&r.customer_id).cloned().unwrap_or_default())),
        cells::str_column(rd::product, &st(&|r| r.product.clone())),
        cells::str_column(rd::measure, &st(&|r| r.measure.to_string())),
        cells::str_column(rd::currency, &st(&|r| r.currency.clone())),
        cells::str_column(rd::business_system, &st(&|r| r.business_system.to_string())),
        cells::dec_column(rd::business_value, &rows.iter().map(|r| r.business_value).collect::<Vec<_>>()),
        cells::str_column(rd::billing_source, &st(&|r| r.billing_source.to_string())),
        cells::dec_column(rd::billing_value, &rows.iter().map(|r| r.billing_value).collect::<Vec<_>>()),
        cells::dec_column(
            rd::difference,
            &rows.iter().map(|r| Some(r.billing_value.unwrap_or_default() - r.business_value.unwrap_or_default())).collect::<Vec<_>>(),
        ),
        cells::str_column(rd::message, &st(&|r| r.message.clone())),
        cells::str_column(rd::compared_run_id, &st(&|_| compared_run_id.to_string())),
    ];
    cells::frame(columns, &rd::schema(), rd::TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn lines() -> DataFrame {
        use schemas::fct_invoice_lines as fl;
        let s = |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|x| Some(x.to_string())).collect() };
        let de = |v: &[Option<&str>]| -> Vec<Option<Decimal>> { v.iter().map(|x| x.map(d)).collect() };
        // c1: 10 seats of P:1 at 9.408 and a refund of 2; 5 seats of Q:1 at 4.00; Azure 115 on cost 100.
        DataFrame::new_infer_height(vec![
            cells::str_column(fl::customer_id, &s(&["c1", "c1", "c1", "c1"])),
            cells::str_column(fl::invoice_number, &s(&["I1", "I1", "I1", "I1"])),
            cells::str_column(fl::currency, &s(&["USD", "USD", "USD", "USD"])),
            cells::str_column(fl::line_type, &s(&["license", "refund", "license", "usage"])),
            cells::str_column(fl::product_family, &s(&["license", "license", "license", "azure_usage"])),
            cells::str_column(fl::group_key, &s(&["sku=P:1", "sku=P:1", "sku=Q:1", "family=azure_usage"])),
            cells::str_column(fl::description, &s(&["P", "Refund: P", "Q", "Azure"])),
            cells::dec_column(fl::quantity, &de(&[Some("10"), Some("-2"), Some("5"), Some("730")])),
            cells::dec_column(fl::unit_price, &de(&[Some("9.408"), Some("9.408"), Some("4"), None])),
            cells::dec_column(fl::amount_unrounded, &de(&[Some("94.08"), Some("-18.816"), Some("20"), Some("115")])),
            cells::dec_column(fl::amount, &de(&[Some("94.08"), Some("-18.82"), Some("20"), Some("115")])),
            cells::dec_column(fl::cost, &de(&[Some("84"), Some("-16.8"), Some("18"), Some("100")])),
        ])
        .unwrap()
    }

    fn customers() -> DataFrame {
        df!("customer_id" => ["c1"], "customer_name" => ["Contoso Ltd"]).unwrap()
    }

    fn opts() -> DriftOptions {
        DriftOptions { abs_tolerance: d("0.01"), rel_tolerance: d("0"), margin_tolerance: d("0.01") }
    }

    /// (product, measure, business value, billing value) of every row, sorted.
    fn rows(df: &DataFrame) -> Vec<(String, String, Option<Decimal>, Option<Decimal>)> {
        let p = cells::strs(df, "product").unwrap();
        let m = cells::strs(df, "measure").unwrap();
        let b = cells::decs(df, "business_value").unwrap();
        let c = cells::decs(df, "billing_value").unwrap();
        let mut v: Vec<_> = (0..df.height()).map(|i| (p[i].clone().unwrap(), m[i].clone().unwrap(), b[i], c[i])).collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    #[test]
    fn psa_seats_prices_and_missing_agreements() {
        // P:1: the PSA says 10 seats at 9.41; billed net 10 − 2 = 8 seats at 9.408 (within half a cent of 9.41? no:
        // |9.41 − 9.408| = 0.002 ≤ 0.005, so no price row). Q:1 is billed (5 seats) with no agreement addition.
        // R:1 is agreed (3 seats) and not billed.
        let psa = [
            PsaAgreement { line: 2, customer: "Contoso Ltd".into(), product: "P:1".into(), quantity: d("10"), unit_price: Some(d("9.41")) },
            PsaAgreement { line: 3, customer: "c1".into(), product: "R:1".into(), quantity: d("3"), unit_price: Some(d("12")) },
        ];
        let df = rpt_drift("2025-06", "run", &psa, &[], &lines(), &customers(), &opts()).unwrap();
        assert_eq!(df.schema().as_ref(), &schemas::rpt_drift::schema());
        assert_eq!(
            rows(&df),
            vec![
                ("P:1".into(), "quantity".into(), Some(d("10")), Some(d("8"))),
                ("Q:1".into(), "line".into(), None, Some(d("5"))),
                ("R:1".into(), "line".into(), Some(d("3")), None),
            ]
        );
        // A PSA price 10 cents off is drift: 9.50 vs 9.408.
        let psa = [PsaAgreement { line: 2, customer: "c1".into(), product: "p".into(), quantity: d("8"), unit_price: Some(d("9.50")) }];
        let df = rpt_drift("2025-06", "run", &psa, &[], &lines(), &customers(), &opts()).unwrap();
        let got = rows(&df);
        assert!(got.contains(&("p".into(), "unit_price".into(), Some(d("9.50")), Some(d("9.408")))), "{got:?}");
        assert!(!got.iter().any(|r| r.1 == "quantity"), "8 seats agreed and billed: {got:?}");
    }

    #[test]
    fn crm_quantity_amount_and_margin() {
        // Azure quoted at 100 a month with a 20 % margin: billed 115, realised (115 − 100) / 115 = 13.0435 %.
        // P:1 quoted 8 seats (billed 8: no row) at 75.26 (billed 94.08 − 18.82 = 75.26: no row).
        let crm = [
            CrmQuote { line: 2, customer: "c1".into(), product: "azure_usage".into(), quantity: None, monthly_amount: Some(d("100")), margin: Some(d("0.20")) },
            CrmQuote { line: 3, customer: "c1".into(), product: "P:1".into(), quantity: Some(d("8")), monthly_amount: Some(d("75.26")), margin: None },
        ];
        let df = rpt_drift("2025-06", "run", &[], &crm, &lines(), &customers(), &opts()).unwrap();
        assert_eq!(
            rows(&df),
            vec![
                ("azure_usage".into(), "amount".into(), Some(d("100")), Some(d("115"))),
                ("azure_usage".into(), "margin".into(), Some(d("0.20")), Some(d("0.130435"))),
            ]
        );
        assert_eq!(cells::decs(&df, "difference").unwrap()[0], Some(d("15")));
    }
}
