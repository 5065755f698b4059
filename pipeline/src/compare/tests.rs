//! Tiny-frame tests of the matcher and of each cause. Every expected amount is computed by hand in the comment
//! beside it.

use polars::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::invoice::cells;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// One cspbill invoice line: (customer, invoice, currency, line_type, family, group_key, description, quantity,
/// unit_price, amount_unrounded, amount, cost).
type L<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, &'a str, &'a str, Option<&'a str>, &'a str, &'a str, &'a str);

fn lines(rows: &[L]) -> DataFrame {
    use schemas::fct_invoice_lines as fl;
    let s = |v: Vec<&str>| -> Vec<Option<String>> { v.into_iter().map(|x| Some(x.to_string())).collect() };
    let de = |v: Vec<Option<&str>>| -> Vec<Option<Decimal>> { v.into_iter().map(|x| x.map(d)).collect() };
    DataFrame::new_infer_height(vec![
        cells::str_column(fl::customer_id, &s(rows.iter().map(|r| r.0).collect())),
        cells::str_column(fl::invoice_number, &s(rows.iter().map(|r| r.1).collect())),
        cells::str_column(fl::currency, &s(rows.iter().map(|r| r.2).collect())),
        cells::str_column(fl::line_type, &s(rows.iter().map(|r| r.3).collect())),
        cells::str_column(fl::product_family, &s(rows.iter().map(|r| r.4).collect())),
        cells::str_column(fl::group_key, &s(rows.iter().map(|r| r.5).collect())),
        cells::str_column(fl::description, &s(rows.iter().map(|r| r.6).collect())),
        cells::dec_column(fl::quantity, &de(rows.iter().map(|r| Some(r.7)).collect())),
        cells::dec_column(fl::unit_price, &de(rows.iter().map(|r| r.8).collect())),
        cells::dec_column(fl::amount_unrounded, &de(rows.iter().map(|r| Some(r.9)).collect())),
        cells::dec_column(fl::amount, &de(rows.iter().map(|r| Some(r.10)).collect())),
        cells::dec_column(fl::cost, &de(rows.iter().map(|r| Some(r.11)).collect())),
    ])
    .unwrap()
}

fn customers() -> DataFrame {
    df!("customer_id" => ["c1", "c2"], "customer_name" => ["Contoso Ltd", "Fabrikam GmbH"]).unwrap()
}

fn fx() -> DataFrame {
    DataFrame::new_infer_height(vec![
        cells::str_column("from_currency", &[Some("USD".into()), Some("USD".into())]),
        cells::str_column("to_currency", &[Some("EUR".into()), Some("EUR".into())]),
        cells::dec_column("rate", &[Some(d("0.9")), Some(d("0.92"))]),
    ])
    .unwrap()
}

fn legacy(customer: &str, product: &str, q: Option<&str>, amount: &str, ccy: &str) -> LegacyLine {
    LegacyLine {
        line: 2,
        customer: customer.into(),
        invoice_number: "OLD-1".into(),
        description: format!("legacy {product}"),
        product: product.into(),
        quantity: q.map(d),
        amount: d(amount),
        currency: ccy.into(),
        line_type: None,
    }
}

fn opts() -> Options {
    Options { abs_tolerance: d("0.01"), rel_tolerance: d("0"), rounding: RoundingMode::HalfEven }
}

fn rates() -> Vec<RateValue> {
    vec![
        RateValue { rule_id: "DEF-LICENSE".into(), method: "markup_on_cost".into(), value: d("0.12") },
        RateValue { rule_id: "VIP".into(), method: "markup_on_cost".into(), value: d("0.10") },
    ]
}

/// Runs the comparison and returns the `line` rows as (product, status, cause, legacy, cspbill, difference,
/// within) sorted by product.
fn run(leg: &[LegacyLine], csp: &[L]) -> Vec<(String, String, String, Option<Decimal>, Option<Decimal>, Decimal, bool)> {
    let df = rpt_parallel_run("2025-06", "run-1", leg, &lines(csp), &customers(), &rates(), &fx(), &opts()).unwrap();
    assert_eq!(df.schema().as_ref(), &schemas::rpt_parallel_run::schema());
    let kind = cells::strs(&df, "row_kind").unwrap();
    let p = cells::strs(&df, "product").unwrap();
    let st = cells::strs(&df, "status").unwrap();
    let c = cells::strs(&df, "cause").unwrap();
    let la = cells::decs(&df, "legacy_amount").unwrap();
    let ca = cells::decs(&df, "cspbill_amount").unwrap();
    let di = cells::decs(&df, "difference").unwrap();
    let w = cells::bools(&df, "within_tolerance").unwrap();
    let mut out: Vec<_> = (0..df.height())
        .filter(|&i| kind[i].as_deref() == Some("line"))
        .map(|i| (p[i].clone().unwrap(), st[i].clone().unwrap(), c[i].clone().unwrap(), la[i], ca[i], di[i].unwrap(), w[i].unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// Seats: 10 × 9.408 (cost 8.40 × 1.12) = 94.08 exactly.
const SEATS: L = ("c1", "INV-1", "USD", "license", "license", "sku=CFQ7:0001", "Microsoft 365 E3", "10", Some("9.408"), "94.08", "94.08", "84");
// Usage: cost 100 × 1.15 = 115.
const USAGE: L = ("c1", "INV-1", "USD", "usage", "azure_usage", "family=azure_usage", "Azure consumption", "730", None, "115", "115", "100");

#[test]
fn matches_on_business_keys_not_row_order_and_by_name_or_id() {
    // Legacy rows in the other order, the customer given by name in any case, the product in upper case.
    let leg = [legacy("CONTOSO LTD", "AZURE_USAGE", None, "115.00", "usd"), legacy("c1", "CFQ7:0001", Some("10"), "94.08", "USD")];
    let got = run(&leg, &[SEATS, USAGE]);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.1 == "matched" && r.2 == "none" && r.5.is_zero() && r.6), "{got:?}");
}

#[test]
fn a_legacy_product_id_matches_a_unique_product_sku_key() {
    let got = run(&[legacy("c1", "cfq7", Some("10"), "94.08", "USD")], &[SEATS]);
    assert_eq!(got[0].0, "CFQ7:0001");
    assert_eq!(got[0].2, "none");
}

#[test]
fn missing_and_extra_lines() {
    // cspbill bills usage the legacy file lacks; the legacy file has a line cspbill does not bill.
    let leg = [legacy("c1", "CFQ7:0001", Some("10"), "94.08", "USD"), legacy("c1", "backup-addon", Some("1"), "20", "USD")];
    let got = run(&leg, &[SEATS, USAGE]);
    let usage = got.iter().find(|r| r.0 == "azure_usage").unwrap();
    assert_eq!(got.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["CFQ7:0001", "azure_usage", "backup-addon"]);
    assert_eq!((usage.1.as_str(), usage.2.as_str(), usage.3, usage.5, usage.6), ("missing_in_legacy", "missing_line", None, d("115"), false));
    let extra = got.iter().find(|r| r.0 == "backup-addon").unwrap();
    assert_eq!((extra.1.as_str(), extra.2.as_str(), extra.4, extra.5), ("extra_in_legacy", "extra_line", None, d("-20")));
}

#[test]
fn rounding_of_the_unit_price() {
    // Legacy rounds 9.408 to 9.41, × 10 = 94.10; cspbill 94.08; difference −0.02, outside the 0.01 tolerance.
    let got = run(&[legacy("c1", "CFQ7:0001", Some("10"), "94.10", "USD")], &[SEATS]);
    assert_eq!((got[0].2.as_str(), got[0].5, got[0].6), ("rounding", d("-0.02"), false));
}

#[test]
fn proration_of_a_seat_line() {
    // Microsoft prorated 10 seats to 9.5 seat-months: 9.5 × 9.408 = 89.376 → 89.38. Legacy bills 10 whole seats
    // at 9.408 → 94.08.
    let prorated: L = ("c1", "INV-1", "USD", "license", "license", "sku=CFQ7:0001", "Microsoft 365 E3 (prorated)", "10", Some("9.408"), "89.376", "89.38", "79.8");
    let got = run(&[legacy("c1", "CFQ7:0001", Some("10"), "94.08", "USD")], &[prorated]);
    assert_eq!((got[0].2.as_str(), got[0].5), ("proration", d("-4.70")));
}

#[test]
fn markup_from_another_rate_card_value() {
    // Legacy priced the seats at cost 84 × 1.10 = 92.40 (rule VIP) instead of 84 × 1.12 = 94.08.
    let got = run(&[legacy("c1", "CFQ7:0001", Some("10"), "92.40", "USD")], &[SEATS]);
    assert_eq!((got[0].2.as_str(), got[0].5), ("markup", d("1.68")));
}

#[test]
fn fx_at_another_rate() {
    // cspbill converted at 0.90 (EUR 90.00 from USD 100); legacy at 0.92: 90 × 0.92 / 0.90 = 92.00.
    let eur: L = ("c2", "INV-2", "EUR", "usage", "azure_usage", "family=azure_usage", "Azure consumption", "730", None, "90", "90", "78");
    let got = run(&[legacy("Fabrikam GmbH", "azure_usage", None, "92.00", "EUR")], &[eur]);
    assert_eq!((got[0].2.as_str(), got[0].5), ("fx", d("-2.00")));
}

#[test]
fn unexplained_and_tolerances() {
    // 100.50 vs 115: nothing reproduces it.
    let got = run(&[legacy("c1", "azure_usage", None, "100.50", "USD")], &[USAGE]);
    assert_eq!((got[0].2.as_str(), got[0].5, got[0].6), ("unexplained", d("14.50"), false));
    // A 1-cent difference on usage is rounding and within the 0.01 absolute tolerance.
    let got = run(&[legacy("c1", "azure_usage", None, "115.01", "USD")], &[USAGE]);
    assert_eq!((got[0].2.as_str(), got[0].5, got[0].6), ("rounding", d("-0.01"), true));
    // A relative tolerance of 15 %: 14.50 / 100.50 = 14.4 % is within.
    let o = Options { rel_tolerance: d("0.15"), ..opts() };
    let df = rpt_parallel_run("2025-06", "r", &[legacy("c1", "azure_usage", None, "100.50", "USD")], &lines(&[USAGE]), &customers(), &[], &fx(), &o).unwrap();
    assert_eq!(cells::bools(&df, "within_tolerance").unwrap()[0], Some(true));
    assert_eq!(cells::decs(&df, "difference_pct").unwrap()[0], Some(d("14.4279")));
}

#[test]
fn a_zero_legacy_line_is_not_called_rounding() {
    // Legacy 0 × anything = 0.00 against 94.08: no unit-price rounding reproduces it, nor another markup.
    let got = run(&[legacy("c1", "CFQ7:0001", Some("0"), "0", "USD")], &[SEATS]);
    assert_eq!((got[0].2.as_str(), got[0].5), ("unexplained", d("94.08")));
}

#[test]
fn customer_summary_sums_and_counts_outside_lines() {
    // Seats equal, usage missing from legacy: totals legacy 94.08, cspbill 209.08, one line outside.
    let df = rpt_parallel_run("2025-06", "r", &[legacy("c1", "CFQ7:0001", Some("10"), "94.08", "USD")], &lines(&[SEATS, USAGE]), &customers(), &rates(), &fx(), &opts()).unwrap();
    let kind = cells::strs(&df, "row_kind").unwrap();
    let i = kind.iter().position(|k| k.as_deref() == Some("customer")).unwrap();
    assert_eq!(cells::decs(&df, "legacy_amount").unwrap()[i], Some(d("94.08")));
    assert_eq!(cells::decs(&df, "cspbill_amount").unwrap()[i], Some(d("209.08")));
    assert_eq!(cells::ints(&df, "lines_outside_tolerance").unwrap()[i], Some(1));
    assert_eq!(cells::strs(&df, "status").unwrap()[i].as_deref(), Some("incomplete"));
    assert_eq!(cells::strs(&df, "customer_name").unwrap()[i].as_deref(), Some("Contoso Ltd"));
}

#[test]
fn product_keys_from_group_keys() {
    assert_eq!(product_key("sub=S1|sku=P:1|unit=U"), "P:1");
    assert_eq!(product_key("sub=S1|meter=Virtual Machines|unit=U"), "Virtual Machines");
    assert_eq!(product_key("family=azure_usage"), "azure_usage");
    assert_eq!(product_key("project=PRJ-7"), "PRJ-7");
    assert_eq!(product_key("manual=REF-1|Goodwill"), "REF-1");
    assert_eq!(product_key("manual=|Goodwill#2"), "Goodwill");
    assert_eq!(product_key("spend_cap"), "spend_cap");
}
