//! End to end on the real Partner Center exports in `tests/fixtures/partner-center/`: each runs through every
//! stage with a pass-through rate card (markup 0 %, invoice currency = billing currency), so the known totals of the
//! fixtures README must come out of rating and invoicing unchanged.

mod support;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use rust_decimal::Decimal;
use support::*;

/// A workspace around one fixture file: customers from the file itself, a 0 % markup card, invoice currency `ccy`.
fn workspace(fixture: &str, period: &str, ccy: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let inputs = ws.join("inputs").join(period);
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(ws.join("reference")).unwrap();
    let src = fixtures().join(fixture);
    std::fs::copy(&src, inputs.join(fixture)).unwrap();
    // Customer ids as the export has them.
    let ids = customer_ids(&src);
    let mut customers = String::from("customer_id,customer_name,invoice_currency,template,fx_policy\n");
    for id in &ids {
        customers.push_str(&format!("{id},Customer {id},{ccy},smb,microsoft\n"));
    }
    std::fs::write(ws.join("reference/customers.csv"), customers).unwrap();
    std::fs::write(
        ws.join("reference/rate_cards.csv"),
        "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to\npass-through,*,*,*,,,,markup_on_cost,0,,,\n",
    )
    .unwrap();
    std::fs::write(
        ws.join("cspbill.toml"),
        "[partner]\nname = \"Fixture MSP\"\n[inputs]\npartner_center = \"inputs/{period}\"\ncustomers = \"reference/customers.csv\"\nrate_cards = \"reference/rate_cards.csv\"\n[billing]\ninvoice_prefix = \"FX\"\n",
    )
    .unwrap();
    (tmp, ws)
}

fn customer_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut ids: Vec<String> = if path.extension().is_some_and(|e| e == "csv") {
        let df = read_csv_as_text(path);
        let c = df.get_column_names().into_iter().find(|n| n.trim_start_matches('\u{feff}').eq_ignore_ascii_case("customerid")).unwrap().clone();
        df.column(&c).unwrap().str().unwrap().iter().flatten().map(String::from).collect()
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["customerId"].as_str().unwrap().to_string()).collect()
    };
    ids.sort();
    ids.dedup();
    ids
}

fn run(ws: &Path, period: &str) -> serde_json::Value {
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    cspbill_ok(&["run", "--config", cfg.to_str().unwrap(), "--period", period, "--warehouse", wh.to_str().unwrap()]);
    let runs: Vec<PathBuf> = std::fs::read_dir(wh.join("_runs")).unwrap().map(|e| e.unwrap().path()).collect();
    serde_json::from_slice(&std::fs::read(&runs[0]).unwrap()).unwrap()
}

fn table(ws: &Path, zone: &str, name: &str, period: &str) -> DataFrame {
    let dir = ws.join("warehouse").join(zone).join(name).join(format!("period={period}"));
    let f = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "parquet")).unwrap();
    ParquetReader::new(std::fs::File::open(f).unwrap()).finish().unwrap()
}

fn sum(df: &DataFrame, c: &str) -> Decimal {
    pipeline::decimal::column_sum(df, c).unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn checks_hold(m: &serde_json::Value) {
    for c in m["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
}

#[test]
fn real_invoice_recon_prices_through_at_cost() {
    let (_t, ws) = workspace("nce_invoice_recon_real_2021-06.csv", "2021-06", "CAD");
    let m = run(&ws, "2021-06");
    checks_hold(&m);
    let staged = table(&ws, "staged", "stg_pc_invoice_lines", "2021-06");
    assert_eq!(staged.height(), 5206);
    assert_eq!(sum(&staged, "subtotal"), d("679793.84"));
    // No daily usage in the snapshot: Azure consumption is charged from the invoice lines, all of them.
    assert_eq!(m["control_totals"]["azure_usage_source"], "Invoice");
    let charges = table(&ws, "int", "int_charges", "2021-06");
    assert_eq!(sum(&charges, "cost"), d("679793.84"));
    // Product families as DESIGN §5 states them for this file.
    let fam = charges.clone().lazy().group_by([col("product_family")]).agg([len()]).sort(["product_family"], Default::default()).collect().unwrap();
    assert_eq!(pipeline::testing::frame_to_csv(&mut fam.clone()), "product_family,len\nazure_usage,5068\nlicense,6\nmarketplace,25\nreservation,107\n");
    // A 0 % card in the billing currency reproduces cost exactly.
    let rated = table(&ws, "int", "int_charges_rated", "2021-06");
    assert_eq!(rated.height(), 5206);
    assert_eq!(sum(&rated, "price"), d("679793.84"));
    assert_eq!(sum(&rated, "margin"), Decimal::ZERO);
    // Microsoft's own Subtotal formulas: 6 of 5,206 lines differ (fixtures README).
    let ms = m["control_totals"]["microsoft_subtotal_check"].as_array().unwrap();
    let lines: u64 = ms.iter().map(|r| r["lines"].as_u64().unwrap()).sum();
    let mismatches: u64 = ms.iter().map(|r| r["mismatches"].as_u64().unwrap()).sum();
    assert_eq!((lines, mismatches), (5206, 6));
    // Invoices: one per customer, lines rounded to cents; the sum of lines is within the drift bound of Σ price.
    let invoices = table(&ws, "marts", "fct_invoices", "2021-06");
    let inv_lines = table(&ws, "marts", "fct_invoice_lines", "2021-06");
    assert_eq!(sum(&invoices, "subtotal"), sum(&inv_lines, "amount"));
    let drift = (sum(&inv_lines, "amount") - d("679793.84")).abs();
    assert!(drift <= Decimal::new(5, 3) * Decimal::from(inv_lines.height() as u64), "drift {drift}");
    assert_eq!(m["control_totals"]["microsoft_invoice_subtotal"], "679793.84");
}

#[test]
fn real_daily_usage_slice_charges_every_row_once() {
    let (_t, ws) = workspace("daily_rated_usage_billed_real_2025-11_55col_slice.csv", "2025-11", "USD");
    let m = run(&ws, "2025-11");
    checks_hold(&m);
    let staged = table(&ws, "staged", "stg_pc_daily_usage", "2025-11");
    assert_eq!(staged.height(), 4000);
    assert_eq!(sum(&staged, "billing_pre_tax_total"), d("2094.24648207416"));
    let rated = table(&ws, "int", "int_charges_rated", "2025-11");
    assert_eq!(sum(&rated, "cost"), d("2094.24648207416"));
    assert_eq!(sum(&rated, "price"), d("2094.24648207416"));
    let compliance = table(&ws, "int", "int_tag_compliance", "2025-11");
    assert!(compliance.height() >= 24, "one row per customer and Azure subscription: {}", compliance.height());
}

#[test]
fn real_legacy_licence_lines_in_inr() {
    let (_t, ws) = workspace("v1_legacy_license_lineitems_real_2021-11_inr.jsonl", "2021-11", "INR");
    let m = run(&ws, "2021-11");
    checks_hold(&m);
    let rated = table(&ws, "int", "int_charges_rated", "2021-11");
    assert_eq!(rated.height(), 689);
    assert_eq!(sum(&rated, "cost"), d("4431868.58"));
    assert_eq!(sum(&rated, "price"), d("4431868.58"));
    assert_eq!(sum(&rated, "list"), d("4458167.94"));
}

#[test]
fn real_invoice_recon_under_daily_usage_sourcing_keeps_metered_lines_as_control_totals() {
    // DESIGN §5 "Charges" (issue 11 item 7): with consumption charged from daily usage, every non-credit metered
    // invoice line is only a control total: the 5,060 non-credit `azure_usage` lines, and the 16 other lines with
    // a MeterDescription (11 pay-as-you-go marketplace images such as Fortinet and Palo Alto VM-Series, 3,423.05
    // CAD; 5 reservation usage meters at 0.00). Counted from the CSV by the fixtures README, not by cspbill.
    let (_t, ws) = workspace("nce_invoice_recon_real_2021-06.csv", "2021-06", "CAD");
    let cfg = ws.join("cspbill.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("azure_usage_source = \"daily_usage\"\n");
    std::fs::write(&cfg, text).unwrap();
    let m = run(&ws, "2021-06");
    checks_hold(&m);
    assert_eq!(m["control_totals"]["azure_usage_source"], "DailyUsage");
    let charges = table(&ws, "int", "int_charges", "2021-06");
    assert_eq!(charges.height(), 5206 - 5076);
    assert_eq!(sum(&charges, "cost"), d("205456.19"));
    assert_eq!(sum(&charges, "cost") + d("474337.65"), d("679793.84"));
    // What stays charged: 102 reservation purchases, 14 marketplace plans without a meter (SendGrid, Nerdio,
    // Cisco Meraki, a Fortinet trial), 8 Azure credits and 6 licences.
    let fam = charges.clone().lazy().group_by([col("product_family")]).agg([len()]).sort(["product_family"], Default::default()).collect().unwrap();
    assert_eq!(pipeline::testing::frame_to_csv(&mut fam.clone()), "product_family,len\nazure_usage,8\nlicense,6\nmarketplace,14\nreservation,102\n");
    let rated = table(&ws, "int", "int_charges_rated", "2021-06");
    assert_eq!(sum(&rated, "price"), d("205456.19"));
    // The comparison per customer and subscription holds all the control cost (no daily usage to charge from).
    let cmp = m["control_totals"]["azure_control_comparison"].as_array().unwrap();
    let control: Decimal = cmp.iter().map(|r| r["control_cost"].as_str().unwrap().parse::<Decimal>().unwrap()).sum();
    assert_eq!(control, d("474337.65"));
}

#[test]
fn the_fixtures_travel_with_the_repository() {
    // A fresh clone has no `shared/` beside it: the fixtures live in the repository, bytes intact.
    let dir = fixtures();
    assert!(dir.starts_with(repo()), "{}", dir.display());
    for f in [
        "README.md",
        "nce_invoice_recon_real_2021-06.csv",
        "daily_rated_usage_real_2021-06_excel_resaved.csv",
        "v1_daily_rated_usage_page_sandbox.json",
        "daily_rated_usage_billed_real_2025-11_55col_slice.csv",
        "v1_onetime_invoice_lineitems_real_2024-01_inr_slice.jsonl",
        "v1_legacy_license_lineitems_real_2021-11_inr.jsonl",
    ] {
        assert!(dir.join(f).is_file(), "{f} is missing from {}", dir.display());
    }
    let recon = std::fs::read(dir.join("nce_invoice_recon_real_2021-06.csv")).unwrap();
    assert!(recon.starts_with(b"\xef\xbb\xbf\"PartnerId\""), "BOM and quoting as published");
    assert_eq!(recon.windows(2).filter(|w| w == b"\r\n").count(), 5207, "CRLF on every line");
    // No test reads a folder beside the repository any more.
    let beside = concat!("..", "/shared");
    let mut sources = Vec::new();
    for d in [repo().join("tests"), repo().join("tests/support"), repo().join("tests/common")] {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                sources.push(p);
            }
        }
    }
    for p in sources {
        assert!(!std::fs::read_to_string(&p).unwrap().contains(beside), "{} reads `{beside}`", p.display());
    }
}
