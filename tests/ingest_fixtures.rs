//! Ingest of the real Partner Center fixtures (`tests/fixtures/partner-center/`) and of damaged copies of
//! them: row counts, exact sums, ids as text, rounding and padding counts, conservation, stable `line_id`s and
//! the errors a bad file gives. The expectations come from the fixtures' README, not from the code.

use cspbill::error;
use cspbill::inputs;

use std::path::{Path, PathBuf};

use inputs::{FileStats, Snapshot, read_snapshot};
use pipeline::Period;
use pipeline::decimal::{any_to_decimal, column_sum};
use polars::prelude::*;
use rust_decimal::Decimal;

/// `tests/fixtures/partner-center/NAME`: the real fixtures travel with the repository.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/partner-center").join(name)
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
    // `0.0033977848695325699268` (22 places) → half-even at 18 places → 0.003397784869532570.
    let eup = u.column("effective_unit_price").unwrap();
    let hits = (0..u.height())
        .filter(|i| any_to_decimal(&eup.get(*i).unwrap()) == Some(d("0.00339778486953257")))
        .count();
    let in_file = text
        .matches("\"effectiveUnitPrice\": 0.0033977848695325699268")
        .count();
    assert!(in_file > 0);
    assert_eq!(hits, in_file);
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
    // Keys that map to no staged column are reported, not fatal.
    assert!(
        only(&snap)
            .unknown_columns
            .contains(&"discountDetails".to_string()),
        "{:?}",
        only(&snap).unknown_columns
    );
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

// ---------------------------------------------------------------------------------------------------------------
// Damaged and repeated inputs, built in a temp dir from the fixtures
// ---------------------------------------------------------------------------------------------------------------

const EXCEL: &str = "daily_rated_usage_real_2021-06_excel_resaved.csv";

fn excel_text() -> String {
    std::fs::read_to_string(fixture(EXCEL)).unwrap()
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Replaces the first occurrence of `from` on physical line `line` (1-based).
fn edit_line(text: &str, line: usize, from: &str, to: &str) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    assert!(lines[line - 1].contains(from), "line {line} lacks {from}");
    lines[line - 1] = lines[line - 1].replacen(from, to, 1);
    lines.join("\n")
}

fn usage_error(files: &[PathBuf]) -> String {
    let err = read_snapshot(files, period("2021-06"))
        .err()
        .expect("an error");
    assert_eq!(error::exit_code(&err), 2, "{err:#}");
    format!("{err:#}")
}

fn reject_rows(df: &DataFrame) -> Vec<(i64, String, String)> {
    let l = df.column("line_number").unwrap().i64().unwrap();
    let c = df.column("reason_code").unwrap().str().unwrap();
    let k = df.column("column").unwrap().str().unwrap();
    (0..df.height())
        .map(|i| {
            (
                l.get(i).unwrap(),
                c.get(i).unwrap().to_string(),
                k.get(i).unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn truncated_last_line_is_a_ragged_reject() {
    let t = tempfile::tempdir().unwrap();
    let text = excel_text();
    let cut = text.trim_end().len() - 40; // inside the last row's last fields
    let p = write(t.path(), "cut.csv", &text[..cut]);
    let (snap, u, _, rej, _) = read(&[p], "2021-06");
    assert_eq!(u.height(), 8);
    assert_eq!(
        reject_rows(&rej),
        vec![(10, "ragged_row".to_string(), String::new())]
    );
    let f = only(&snap);
    assert_eq!((f.rows_in, f.staged, f.rejected), (9, 8, 1));
    // The reject carries the row's cells as read (the cut row's first cell is its PartnerId).
    let last = text.trim_end().lines().last().unwrap();
    assert_eq!(
        strs(&rej, "raw")[0].unwrap().split(',').next(),
        last.split(',').next()
    );
}

#[test]
fn cut_inside_a_quoted_field_is_a_ragged_reject() {
    let t = tempfile::tempdir().unwrap();
    let text = excel_text();
    // Line 9 holds a quoted AdditionalInfo; keep lines 1-8 and half of line 9.
    let lines: Vec<&str> = text.split('\n').collect();
    let l9 = lines[8];
    let q = l9.find("\"{").unwrap() + 10;
    let cut = format!("{}\n{}", lines[..8].join("\n"), &l9[..q]);
    let p = write(t.path(), "cut.csv", cut);
    let (snap, u, _, rej, _) = read(&[p], "2021-06");
    assert_eq!(u.height(), 7);
    assert_eq!(
        reject_rows(&rej),
        vec![(9, "ragged_row".to_string(), String::new())]
    );
    assert_eq!(only(&snap).rows_in, 8);
}

#[test]
fn bad_date_and_text_in_money_are_rejects_that_balance() {
    let t = tempfile::tempdir().unwrap();
    let text = edit_line(&excel_text(), 5, ",06/18/2021,", ",18/06/2021,");
    let text = edit_line(&text, 6, "1.9633333333", "n/a");
    let p = write(t.path(), "bad.csv", text);
    let (snap, u, _, rej, _) = read(&[p], "2021-06");
    assert_eq!(u.height(), 7);
    let mut r = reject_rows(&rej);
    r.sort();
    assert_eq!(
        r,
        vec![
            (5, "bad_date".to_string(), "usage_date".to_string()),
            (
                6,
                "bad_decimal".to_string(),
                "billing_pre_tax_total".to_string()
            )
        ]
    );
    let reasons = strs(&rej, "reason");
    assert!(
        reasons
            .iter()
            .any(|x| x.unwrap().contains("`usage_date` holds `18/06/2021`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|x| x.unwrap().contains("`billing_pre_tax_total` holds `n/a`")),
        "{reasons:?}"
    );
    let f = only(&snap);
    // The bad-date row's cost still counts (it parses); the `n/a` row has none.
    assert_eq!(f.cost_rejected, d("0.0556619946"));
    assert_eq!(f.cost_in, f.cost_staged + f.cost_rejected);
}

#[test]
fn wrong_delimiter_is_a_usage_error_naming_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let p = write(t.path(), "semi.csv", excel_text().replace(',', ";"));
    let msg = usage_error(&[p]);
    assert!(
        msg.contains("`semi.csv`: line 1:") && msg.contains("`;`"),
        "{msg}"
    );
}

#[test]
fn empty_file_and_unknown_format_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let msg = usage_error(&[write(t.path(), "empty.csv", "")]);
    assert!(
        msg.contains("`empty.csv`: line 1: the file is empty"),
        "{msg}"
    );
    let msg = usage_error(&[write(t.path(), "notes.txt", "customer,amount\nx,1\n")]);
    assert!(
        msg.contains("`notes.txt`") && msg.contains("daily rated usage CSV"),
        "{msg}"
    );
    let msg = usage_error(&[write(t.path(), "other.json", "{\"hello\": 1}\n")]);
    assert!(msg.contains("`other.json`"), "{msg}");
}

#[test]
fn header_only_stages_nothing_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let header = excel_text().lines().next().unwrap().to_string() + "\n";
    let (snap, u, ..) = read(&[write(t.path(), "h.csv", header)], "2021-06");
    assert_eq!(u.height(), 0);
    let f = only(&snap);
    assert_eq!((f.rows_in, f.staged), (0, 0));
    assert!(
        f.warnings.iter().any(|w| w.contains("no rows")),
        "{:?}",
        f.warnings
    );
}

#[test]
fn missing_required_column_names_it() {
    let t = tempfile::tempdir().unwrap();
    let p = write(
        t.path(),
        "m.csv",
        edit_line(&excel_text(), 1, "BillingPreTaxTotal", "BillingPreTax"),
    );
    let msg = usage_error(&[p]);
    assert!(
        msg.contains("`m.csv`: line 1: required column `billing_pre_tax_total`")
            && msg.contains("BillingPreTaxTotal"),
        "{msg}"
    );
}

#[test]
fn latin1_bytes_name_the_line() {
    let t = tempfile::tempdir().unwrap();
    let text = excel_text();
    let mut lines: Vec<Vec<u8>> = text.split('\n').map(|l| l.as_bytes().to_vec()).collect();
    let l3 = String::from_utf8(lines[2].clone())
        .unwrap()
        .replacen("Muster", "M\u{1}ster", 1);
    lines[2] = l3
        .into_bytes()
        .into_iter()
        .map(|b| if b == 1 { 0xFC } else { b })
        .collect();
    let p = write(t.path(), "latin1.csv", lines.join(&b'\n'));
    let msg = usage_error(&[p]);
    assert!(
        msg.contains("`latin1.csv`: line 3: bytes that are not UTF-8"),
        "{msg}"
    );
}

#[test]
fn duplicated_file_rows_are_duplicates_and_identical_rows_in_one_file_are_not() {
    let t = tempfile::tempdir().unwrap();
    let a = write(t.path(), "a.csv", excel_text());
    let b = write(t.path(), "b.csv", excel_text());
    let (snap, u, ..) = read(&[a.clone(), b], "2021-06");
    assert_eq!(u.height(), 9);
    let fb = &snap.files[1];
    assert_eq!((fb.rows_in, fb.staged, fb.duplicates), (9, 0, 9));
    assert_eq!(fb.cost_duplicates, fb.cost_in);
    assert_eq!(snap.files[0].staged, 9);

    // The same row twice within one file: two staged rows with distinct ids.
    let text = excel_text();
    let line2 = text.split('\n').nth(1).unwrap().to_string();
    let twice = format!("{}\n{}", text.trim_end(), line2);
    let (snap, u, ..) = read(&[write(t.path(), "twice.csv", twice)], "2021-06");
    assert_eq!(u.height(), 10);
    assert_eq!(u.column("line_id").unwrap().n_unique().unwrap(), 10);
    assert_eq!(only(&snap).duplicates, 0);
}

#[test]
fn billed_usage_wins_over_unbilled() {
    let t = tempfile::tempdir().unwrap();
    let billed = write(t.path(), "billed.csv", excel_text());
    let unbilled = write(
        t.path(),
        "unbilled.csv",
        excel_text().replace(",G004733043,", ",,"),
    );
    let (snap, u, ..) = read(&[unbilled.clone(), billed], "2021-06");
    assert_eq!(u.height(), 9);
    assert!(
        u.column("is_billed")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .all(|b| b == Some(true))
    );
    let fu = &snap.files[0];
    assert_eq!((fu.rows_in, fu.set_aside, fu.staged), (9, 9, 0));
    assert_eq!(fu.cost_set_aside, fu.cost_in);
    assert!(fu.warnings.iter().any(|w| w.contains("set aside")));
    // Alone, unbilled usage is staged, not billed.
    let (_, u, ..) = read(&[unbilled], "2021-06");
    assert_eq!(u.height(), 9);
    assert!(
        u.column("is_billed")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .all(|b| b == Some(false))
    );
}

fn ids_by_line(u: &DataFrame) -> Vec<(i64, String)> {
    let l = u.column("line_number").unwrap().i64().unwrap();
    let id = u.column("line_id").unwrap().str().unwrap();
    let mut v: Vec<(i64, String)> = (0..u.height())
        .map(|i| (l.get(i).unwrap(), id.get(i).unwrap().to_string()))
        .collect();
    v.sort();
    v
}

/// camelCase of a PascalCase header name, with the renames Microsoft announced (MS-A23).
fn camel(h: &str) -> String {
    match h {
        "Unit" => "unitOfMeasure".into(),
        "PartnerEarnedCreditPercentage" => "rateOfPartnerEarnedCredit".into(),
        "CreditPercentage" => "rateOfCredit".into(),
        "ResourceURI" => "resourceUri".into(),
        "PCToBCExchangeRate" => "pcToBCExchangeRate".into(),
        "PCToBCExchangeRateDate" => "pcToBCExchangeRateDate".into(),
        _ => h[..1].to_ascii_lowercase() + &h[1..],
    }
}

#[test]
fn same_rows_in_other_spellings_get_the_same_line_ids() {
    let t = tempfile::tempdir().unwrap();
    let text = excel_text();
    let (_, base, ..) = read(&[fixture(EXCEL)], "2021-06");
    let want = ids_by_line(&base);

    // 1. The same file with LF endings, every field quoted, and a BOM.
    let mut rdr: Vec<Vec<String>> = Vec::new();
    for l in text.lines() {
        rdr.push(split_csv(l));
    }
    let quoted: String = rdr
        .iter()
        .map(|r| {
            r.iter()
                .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let p = write(t.path(), "quoted.csv", format!("\u{feff}{quoted}\n"));
    let (_, u, ..) = read(&[p], "2021-06");
    assert_eq!(ids_by_line(&u), want);

    // 2. The announced camelCase headers (`rateOfPartnerEarnedCredit` as a fraction), same values otherwise.
    let pct_cols: Vec<usize> = rdr[0]
        .iter()
        .enumerate()
        .filter(|(_, h)| h.ends_with("Percentage"))
        .map(|(i, _)| i)
        .collect();
    let camel_csv: String = rdr
        .iter()
        .enumerate()
        .map(|(n, r)| {
            r.iter()
                .enumerate()
                .map(|(i, f)| {
                    let f = if n == 0 {
                        camel(f)
                    } else if pct_cols.contains(&i) {
                        (f.parse::<Decimal>().unwrap() / Decimal::from(100)).to_string()
                    } else {
                        f.clone()
                    };
                    if f.contains([',', '"']) {
                        format!("\"{}\"", f.replace('"', "\"\""))
                    } else {
                        f
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let p = write(t.path(), "camel.csv", camel_csv);
    let (_, u, ..) = read(&[p], "2021-06");
    assert_eq!(ids_by_line(&u), want);

    // 3. JSON lines with camelCase keys, ISO dates, padded SkuIds, other number spellings, fractions for percents.
    let header = &rdr[0];
    let mut jsonl = String::new();
    for row in &rdr[1..] {
        let mut obj = serde_json::Map::new();
        for (h, v) in header.iter().zip(row) {
            let key = camel(h);
            let value: serde_json::Value = if h.ends_with("Date") {
                let (m, rest) = v.split_once('/').unwrap();
                let (dd, y) = rest.split_once('/').unwrap();
                format!("{y}-{m:0>2}-{dd:0>2}T00:00:00Z").into()
            } else if h == "SkuId" {
                format!("{v:0>4}").into()
            } else if h.ends_with("Percentage") {
                let pct: Decimal = v.parse().unwrap();
                serde_json::from_str::<serde_json::Value>(&(pct / Decimal::from(100)).to_string())
                    .unwrap()
            } else if [
                "UnitPrice",
                "Quantity",
                "BillingPreTaxTotal",
                "PricingPreTaxTotal",
                "EffectiveUnitPrice",
                "PCToBCExchangeRate",
            ]
            .contains(&h.as_str())
            {
                // `2.4` → `2.40`: same value, other spelling; a JSON number.
                serde_json::from_str::<serde_json::Value>(&format!(
                    "{v}{}",
                    if v.contains('.') { "0" } else { ".0" }
                ))
                .unwrap()
            } else {
                v.clone().into()
            };
            obj.insert(key, value);
        }
        jsonl.push_str(&serde_json::Value::Object(obj).to_string());
        jsonl.push('\n');
    }
    let p = write(t.path(), "same.jsonl", jsonl);
    let (snap, u, _, rej, _) = read(&[p], "2021-06");
    assert_eq!(rej.height(), 0);
    assert_eq!(only(&snap).format, "jsonl_daily_usage");
    // JSON lines count lines from 1 (no header): line n+1 of the CSV is line n here.
    let got: Vec<(i64, String)> = ids_by_line(&u)
        .into_iter()
        .map(|(l, id)| (l + 1, id))
        .collect();
    assert_eq!(got, want);
}

/// A minimal RFC 4180 field splitter for one record, to rewrite fixtures in the tests.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut in_q = false;
    let mut it = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '"' if in_q && it.peek() == Some(&'"') => {
                out.last_mut().unwrap().push('"');
                it.next();
            }
            '"' => in_q = !in_q,
            ',' if !in_q => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn v2_export_folder_of_gzipped_json_lines() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("export-2024-01");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"version":"2","dataFormat":"compressedJSON","blobCount":2}"#,
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture(
        "v1_onetime_invoice_lineitems_real_2024-01_inr_slice.jsonl",
    ))
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, part) in [&lines[..1000], &lines[1000..]].iter().enumerate() {
        let f = std::fs::File::create(dir.join(format!("part{i}.json.gz"))).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        // v2 keys are case-insensitive: upper-case the first letter of every key in the second blob.
        for l in part.iter() {
            let l = if i == 1 {
                l.replace("\"subtotal\"", "\"Subtotal\"")
                    .replace("\"customerId\"", "\"CustomerId\"")
            } else {
                l.to_string()
            };
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
    }
    let files = inputs::list_snapshot(t.path()).unwrap();
    assert_eq!(files, vec![dir.clone()]);
    let (snap, _, inv, _, rej) = read(&files, "2024-01");
    assert_eq!(inv.height(), 2900);
    assert_eq!(rej.height(), 0);
    assert_eq!(column_sum(&inv, "subtotal").unwrap(), d("9945692.81"));
    assert_eq!(snap.files.len(), 2);
    assert!(snap.files.iter().all(|f| f.format == "v2_blob"));
    assert_eq!(snap.files[0].name, "export-2024-01/part0.json.gz");
}

#[test]
fn bad_json_line_is_a_reject() {
    let t = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture(
        "v1_legacy_license_lineitems_real_2021-11_inr.jsonl",
    ))
    .unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[4] = lines[4][..60].to_string();
    let p = write(t.path(), "l.jsonl", lines.join("\n"));
    let (snap, _, inv, _, rej) = read(&[p], "2021-11");
    assert_eq!(inv.height(), 688);
    assert_eq!(
        reject_rows(&rej),
        vec![(5, "bad_json".to_string(), String::new())]
    );
    assert_eq!(only(&snap).rows_in, 689);
}

/// The staged rows written as Parquet read back by DuckDB (or pyarrow) with decimal types and exact sums.
#[test]
fn staged_parquet_reads_back_with_decimals_in_duckdb_or_pyarrow() {
    let python = std::env::var("CSPBILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import duckdb"])
        .output();
    let has_duckdb = probe.as_ref().is_ok_and(|o| o.status.success());
    let has_pyarrow = std::process::Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_duckdb && !has_pyarrow {
        println!(
            "skipped: `{python}` has neither duckdb nor pyarrow (set CSPBILL_PYTHON to a venv with one of them)"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (_, _, inv, ..) = read(&[fixture("nce_invoice_recon_real_2021-06.csv")], "2021-06");
    let path = t.path().join("stg_pc_invoice_lines.parquet");
    let mut df = inv.clone();
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
    let script = if has_duckdb {
        "import duckdb,sys\n\
         r=duckdb.connect().execute(f\"select any_value(typeof(subtotal)), sum(subtotal)::varchar, sum(total)::varchar, count(*), \
         any_value(typeof(sku_id)) from read_parquet('{sys.argv[1]}')\").fetchone()\n\
         print('|'.join(str(x) for x in r))"
    } else {
        "import pyarrow.parquet as pq,pyarrow.compute as pc,sys\n\
         t=pq.read_table(sys.argv[1])\n\
         print('|'.join([str(t.schema.field('subtotal').type), str(pc.sum(t['subtotal'])), str(pc.sum(t['total'])), \
         str(t.num_rows), str(t.schema.field('sku_id').type)]))"
    };
    let out = std::process::Command::new(&python)
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert!(
        parts[0].to_ascii_lowercase().starts_with("decimal(38,18)")
            || parts[0] == "decimal128(38, 18)",
        "{line}"
    );
    assert_eq!(d(parts[1]), d("679793.84"), "{line}");
    assert_eq!(d(parts[2]), d("768166.79"), "{line}");
    assert_eq!(parts[3], "5206");
    assert!(
        ["VARCHAR", "string", "large_string"].contains(&parts[4]),
        "{line}"
    );
}

#[test]
fn blank_lines_are_not_rows() {
    let t = tempfile::tempdir().unwrap();
    let text = excel_text().replacen("\r\n", "\r\n\r\n", 3);
    let (snap, u, _, rej, _) = read(&[write(t.path(), "blank.csv", text)], "2021-06");
    assert_eq!((u.height(), rej.height(), only(&snap).rows_in), (9, 0, 9));
    assert!(
        only(&snap)
            .warnings
            .iter()
            .any(|w| w.contains("3 blank line(s)"))
    );
    // Line numbers count the blank lines: the last row is line 13 of the file.
    assert_eq!(
        u.column("line_number").unwrap().i64().unwrap().max(),
        Some(13)
    );
}
