//! Ingest of the real Partner Center fixtures (`../shared/fixtures/partner-center/`) and of damaged copies of
//! them: row counts, exact sums, ids as text, rounding and padding counts, conservation, stable `line_id`s and
//! the errors a bad file gives. The expectations come from the fixtures' README, not from the code.

#[path = "../jobs/error.rs"]
#[allow(dead_code)]
mod error;
#[path = "../jobs/inputs.rs"]
#[allow(dead_code)]
mod inputs;

use std::path::{Path, PathBuf};

use inputs::{FileStats, Snapshot, read_snapshot};
use pipeline::Period;
use pipeline::decimal::{any_to_decimal, column_sum};
use polars::prelude::*;
use rust_decimal::Decimal;

/// `../shared/fixtures/partner-center/NAME` beside the repository (as CI clones it); a git worktree one level
/// deeper (`wt/NAME/`) finds `shared/` one level further up.
fn fixture(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = ["../shared", "../../shared"]
        .iter()
        .map(|d| root.join(d).join("fixtures/partner-center"))
        .find(|d| d.is_dir())
        .expect("the fixtures in ../shared/fixtures/partner-center beside the repository");
    dir.join(name)
}

fn period(s: &str) -> Period {
    s.parse().unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn read(files: &[PathBuf], p: &str) -> (Snapshot, DataFrame, DataFrame, DataFrame, DataFrame) {
    let snap = read_snapshot(files, period(p)).unwrap();
    let u = snap.usage.clone().collect().unwrap();
    let i = snap.invoice_lines.clone().collect().unwrap();
    let ru = snap.rejects_usage.clone().collect().unwrap();
    let ri = snap.rejects_invoice.clone().collect().unwrap();
    assert_eq!(u.schema().as_ref(), &schemas::stg_pc_daily_usage::schema());
    assert_eq!(
        i.schema().as_ref(),
        &schemas::stg_pc_invoice_lines::schema()
    );
    assert_eq!(
        ru.schema().as_ref(),
        &schemas::rejects_pc_daily_usage::schema()
    );
    assert_eq!(
        ri.schema().as_ref(),
        &schemas::rejects_pc_invoice_lines::schema()
    );
    for f in &snap.files {
        assert!(f.balances(), "conservation fails for {f:#?}");
    }
    (snap, u, i, ru, ri)
}

fn strs<'a>(df: &'a DataFrame, c: &str) -> Vec<Option<&'a str>> {
    df.column(c).unwrap().str().unwrap().iter().collect()
}

fn count_eq(df: &DataFrame, c: &str, v: &str) -> usize {
    strs(df, c).iter().filter(|x| **x == Some(v)).count()
}

fn only(snap: &Snapshot) -> &FileStats {
    assert_eq!(snap.files.len(), 1);
    &snap.files[0]
}

#[test]
fn invoice_recon_real_2021_06() {
    let (snap, _, inv, _, rej) = read(&[fixture("nce_invoice_recon_real_2021-06.csv")], "2021-06");
    assert_eq!(inv.height(), 5206);
    assert_eq!(rej.height(), 0);
    assert_eq!(column_sum(&inv, "subtotal").unwrap(), d("679793.84"));
    assert_eq!(column_sum(&inv, "total").unwrap(), d("768166.79"));
    // SkuId and other ids stay text.
    assert!(strs(&inv, "sku_id").contains(&Some("004P")));
    assert!(strs(&inv, "mpn_id").iter().all(|m| *m == Some("600001")));
    // DESIGN §5: the family table on this file.
    assert_eq!(count_eq(&inv, "product_family", "license"), 6);
    assert_eq!(count_eq(&inv, "product_family", "reservation"), 107);
    assert_eq!(count_eq(&inv, "product_family", "marketplace"), 25);
    assert_eq!(count_eq(&inv, "product_family", "azure_usage"), 5068);
    // README: ChargeType counts.
    assert_eq!(count_eq(&inv, "charge_type", "new"), 5105);
    assert_eq!(count_eq(&inv, "charge_type", "customerCredit"), 8);
    assert!(strs(&inv, "period").iter().all(|p| *p == Some("2021-06")));
    let f = only(&snap);
    assert_eq!(f.format, "csv_invoice_recon");
    assert_eq!(
        (f.rows_in, f.staged, f.rejected, f.duplicates),
        (5206, 5206, 0, 0)
    );
    assert_eq!(f.cost_in, d("679793.84"));
    assert_eq!(f.sha256.len(), 64);
    // Every line id distinct.
    assert_eq!(inv.column("line_id").unwrap().n_unique().unwrap(), 5206);
}

#[test]
fn excel_resaved_usage_pads_sku_ids() {
    let (snap, u, _, rej, _) = read(
        &[fixture("daily_rated_usage_real_2021-06_excel_resaved.csv")],
        "2021-06",
    );
    assert_eq!(u.height(), 9);
    assert_eq!(rej.height(), 0);
    assert!(strs(&u, "sku_id").contains(&Some("0004")));
    assert!(strs(&u, "sku_id").iter().all(|s| s.unwrap().len() == 4));
    // `4` and `96` lost their leading zeros in the re-save.
    let f = only(&snap);
    assert_eq!(f.padded_sku_ids, 2);
    assert!(
        f.warnings.iter().any(|w| w.contains("2 SkuId(s)")),
        "{:?}",
        f.warnings
    );
    // Line 3 (SkuId `4`): percent 15 → fraction 0.15; line 2 has 0.
    let line3 = u
        .filter(&u.column("line_number").unwrap().i64().unwrap().equal(3))
        .unwrap();
    assert_eq!(strs(&line3, "sku_id"), vec![Some("0004")]);
    assert_eq!(
        any_to_decimal(
            &line3
                .column("partner_earned_credit_rate")
                .unwrap()
                .get(0)
                .unwrap()
        ),
        Some(d("0.15"))
    );
    assert!(
        u.column("is_billed")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .all(|b| b == Some(true))
    );
}

#[test]
fn v1_json_page_rounds_22_digit_values_and_counts_them() {
    let (snap, u, _, rej, _) = read(
        &[fixture("v1_daily_rated_usage_page_sandbox.json")],
        "2020-05",
    );
    assert_eq!(u.height(), 293);
    assert_eq!(rej.height(), 0);
    let f = only(&snap);
    assert_eq!(f.format, "v1_json_page");
    assert!(f.rounded_values > 0, "{f:#?}");
    // Count the cells with significant digits beyond 18 places straight from the file's text.
    let text = std::fs::read_to_string(fixture("v1_daily_rated_usage_page_sandbox.json")).unwrap();
    let expected = text
        .split(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'E' || c == 'e' || c == '+')
        })
        .filter(|t| {
            t.contains('.')
                && !t.contains('-')
                && t.split('.')
                    .nth(1)
                    .is_some_and(|fr| fr.trim_end_matches('0').len() > 18)
        })
        .count();
    assert_eq!(f.rounded_values as usize, expected);
    // rateOfPartnerEarnedCredit is already a fraction.
    let pec = u
        .column("partner_earned_credit_rate")
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(any_to_decimal(&pec), Some(d("0.15")));
}

#[test]
fn usage_2025_55_columns_scientific_notation() {
    let (snap, u, _, rej, _) = read(
        &[fixture(
            "daily_rated_usage_billed_real_2025-11_55col_slice.csv",
        )],
        "2025-11",
    );
    assert_eq!(u.height(), 4000);
    assert_eq!(rej.height(), 0);
    assert_eq!(
        column_sum(&u, "billing_pre_tax_total").unwrap(),
        d("2094.24648207416")
    );
    assert_eq!(
        column_sum(&u, "pricing_pre_tax_total").unwrap(),
        d("2094.24648207416")
    );
    let f = only(&snap);
    assert_eq!(f.padded_sku_ids, 1821);
    assert_eq!(f.cost_in, d("2094.24648207416"));
    assert_eq!(
        count_eq(&u, "credit_type", "Partner Earned Credit Applied"),
        3922
    );
    assert_eq!(count_eq(&u, "product_family", "marketplace"), 11);
    assert!(strs(&u, "period").iter().all(|p| *p == Some("2025-11")));
    // The first data row: 7.10833E-05 read exactly.
    let first = u
        .filter(&u.column("line_number").unwrap().i64().unwrap().equal(2))
        .unwrap();
    assert_eq!(
        any_to_decimal(
            &first
                .column("billing_pre_tax_total")
                .unwrap()
                .get(0)
                .unwrap()
        ),
        Some(d("0.0000710833"))
    );
    assert_eq!(strs(&first, "sku_id"), vec![Some("0003")]);
}

#[test]
fn onetime_invoice_jsonl() {
    let (snap, _, inv, _, rej) = read(
        &[fixture(
            "v1_onetime_invoice_lineitems_real_2024-01_inr_slice.jsonl",
        )],
        "2024-01",
    );
    assert_eq!(inv.height(), 2900);
    assert_eq!(rej.height(), 0);
    assert_eq!(column_sum(&inv, "subtotal").unwrap(), d("9945692.81"));
    assert_eq!(column_sum(&inv, "tax_total").unwrap(), d("1790226.17"));
    assert_eq!(column_sum(&inv, "total").unwrap(), d("11735918.98"));
    assert_eq!(count_eq(&inv, "charge_type", "cycleCharge"), 791);
    assert_eq!(only(&snap).format, "jsonl_onetime");
    assert!(
        strs(&inv, "line_kind")
            .iter()
            .all(|k| *k == Some("new_commerce"))
    );
}

#[test]
fn legacy_license_jsonl() {
    let (snap, _, inv, _, rej) = read(
        &[fixture(
            "v1_legacy_license_lineitems_real_2021-11_inr.jsonl",
        )],
        "2021-11",
    );
    assert_eq!(inv.height(), 689);
    assert_eq!(rej.height(), 0);
    assert_eq!(column_sum(&inv, "amount").unwrap(), d("4458167.94"));
    assert_eq!(column_sum(&inv, "subtotal").unwrap(), d("4431868.58"));
    assert_eq!(column_sum(&inv, "total").unwrap(), d("4431868.58"));
    assert_eq!(count_eq(&inv, "charge_type", "Cycle fee"), 495);
    assert!(
        strs(&inv, "line_kind")
            .iter()
            .all(|k| *k == Some("legacy_license"))
    );
    assert_eq!(only(&snap).format, "jsonl_legacy_license");
}
