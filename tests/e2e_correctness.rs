//! End to end, issue 11: inputs that crashed or misbilled (a 100 % markup, a zero PCToBC rate, customer ids and
//! enumerations in another case), errors that must say where to look, the v1 JSON page and v2 export formats
//! through a whole `cspbill run`, late data after two closed periods, and the command line's logging contract.
//! Expected values come from the inputs themselves (sums of the files' own amounts, the golden invoices of
//! sample_data, or separate runs on restated copies), never from the run under test.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rust_decimal::Decimal;
use support::*;

const PERIOD: &str = "2025-06";

fn workspace() -> (tempfile::TempDir, PathBuf) {
    sample_workspace()
}

fn args<'a>(ws: &'a Path, cmd: &'a str, period: &'a str) -> Vec<String> {
    vec![
        cmd.into(),
        "--config".into(),
        ws.join("cspbill.toml").display().to_string(),
        "--period".into(),
        period.into(),
        "--warehouse".into(),
        ws.join("warehouse").display().to_string(),
    ]
}

fn run(ws: &Path, period: &str, extra: &[&str]) -> std::process::Output {
    let mut a = args(ws, "run", period);
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    cspbill(&a)
}

fn run_ok(ws: &Path, period: &str, extra: &[&str]) -> std::process::Output {
    let out = run(ws, period, extra);
    assert!(out.status.success(), "run {period} {extra:?}: {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

/// A committed table of one period of the local warehouse.
fn table(ws: &Path, zone: &str, name: &str, period: &str) -> DataFrame {
    let f = ws.join("warehouse").join(zone).join(name).join(format!("period={period}/part-0.parquet"));
    ParquetReader::new(std::fs::File::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).finish().unwrap()
}

fn sum(df: &DataFrame, c: &str) -> Decimal {
    pipeline::decimal::column_sum(df, c).unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn strs(df: &DataFrame, c: &str) -> Vec<String> {
    df.column(c).unwrap().str().unwrap().iter().map(|v| v.unwrap_or_default().to_string()).collect()
}

/// Rewrites a file's text.
fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// The customer-facing columns of invoices and lines as CSV text, as `tests/golden/sample_2025-06/` holds them.
fn golden_text(ws: &Path) -> BTreeMap<&'static str, String> {
    let inv = table(ws, "marts", "fct_invoices", PERIOD)
        .lazy()
        .select([col("invoice_number"), col("customer_id"), col("customer_name"), col("currency"), col("template"), col("status"), col("invoice_date"), col("due_date"), col("line_count"), col("subtotal"), col("tax"), col("total"), col("unpriced_charges")])
        .sort(["invoice_number"], Default::default())
        .collect()
        .unwrap();
    let lines = table(ws, "marts", "fct_invoice_lines", PERIOD)
        .lazy()
        .select([col("invoice_line_id"), col("line_type"), col("product_family"), col("unit_path"), col("description"), col("quantity"), col("unit"), col("unit_price"), col("amount")])
        .sort(["invoice_line_id"], Default::default())
        .collect()
        .unwrap();
    BTreeMap::from([
        ("fct_invoices.csv", pipeline::testing::frame_to_csv(&mut inv.clone())),
        ("fct_invoice_lines.csv", pipeline::testing::frame_to_csv(&mut lines.clone())),
    ])
}

fn assert_golden(ws: &Path) {
    for (name, text) in golden_text(ws) {
        let want = std::fs::read_to_string(repo().join("tests/golden/sample_2025-06").join(name)).unwrap();
        assert!(want == text, "{name} differs from the golden copy");
    }
}

/// Applies `f` to the CustomerId cell of every row of the period's Partner Center CSVs whose id is `id`.
fn recase_customer_in_exports(ws: &Path, id: &str, new: &str) {
    for e in std::fs::read_dir(ws.join("inputs").join(PERIOD)).unwrap() {
        let p = e.unwrap().path();
        // The id is a GUID: it never appears inside another cell, so a text replacement is exact.
        edit(&p, |t| t.replace(id, new));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Item 1: guarded divisions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_100_percent_markup_and_a_zero_pc_to_bc_rate_do_not_crash_the_run() {
    let (_t, ws) = workspace();
    // Reservations at a 100 % markup: price = 2 × cost.
    edit(&ws.join("reference/rate_cards.csv"), |t| t.replace("DEF-RESERVATION,*,*,reservation,,,*,markup_on_cost,0.08", "DEF-RESERVATION,*,*,reservation,,,*,markup_on_cost,100%"));
    // Microsoft writes PCToBCExchangeRate 0 on some rows: the first EUR-billed usage row gets one.
    let usage = std::fs::read_dir(ws.join("inputs").join(PERIOD)).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("G248241492_BilledUsage")).unwrap();
    let text = std::fs::read_to_string(&usage).unwrap();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    let header: Vec<&str> = lines[0].trim_end().split(',').collect();
    let rate_col = header.iter().position(|h| *h == "PCToBCExchangeRate").unwrap();
    let row = lines
        .iter()
        .position(|l| l.contains(",EUR,") && !l.contains('"') && l.split(',').nth(rate_col).is_some_and(|r| r != "1"))
        .expect("a plain EUR row priced in USD");
    let mut cells: Vec<String> = lines[row].trim_end().split(',').map(String::from).collect();
    cells[rate_col] = "0".into();
    lines[row] = format!("{}\r\n", cells.join(","));
    std::fs::write(&usage, lines.concat()).unwrap();

    run_ok(&ws, PERIOD, &[]);
    let rated = table(&ws, "int", "int_charges_rated", PERIOD);
    let res = rated.clone().lazy().filter(col("rate_rule_id").eq(lit("DEF-RESERVATION"))).collect().unwrap();
    assert!(res.height() > 0);
    for i in 0..res.height() {
        let cost = pipeline::decimal::any_to_decimal(&res.column("cost_ic").unwrap().get(i).unwrap()).unwrap();
        let price = pipeline::decimal::any_to_decimal(&res.column("price").unwrap().get(i).unwrap()).unwrap();
        assert_eq!(price, cost * Decimal::TWO);
    }
    let zero = rated.clone().lazy().filter(col("source_file").str().contains(lit("G248241492_BilledUsage"), false).and(col("line_number").eq(lit(row as i64 + 1)))).collect().unwrap();
    assert_eq!(zero.height(), 1, "the edited row is rated");
    assert_eq!(strs(&zero, "status"), vec!["priced"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Items 4 and 5: ids and enumerations in any case
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn customer_ids_in_another_case_bill_as_customers_csv_spells_them() {
    let (_t, ws) = workspace();
    // Northwind in upper case in every export; Contoso Holdings in upper case in every reference file but
    // customers.csv (tag rules, org units, PSA, manual lines, rate card); Adventure Works in upper case in
    // customers.csv only (an id whose invoice number does not move: `4B1F…` sorts between `445b…` and `4dd6…`).
    let northwind = "5eddb406-4e06-4586-9b4f-2af187103543";
    recase_customer_in_exports(&ws, northwind, &northwind.to_uppercase());
    let contoso = "c613ce64-5507-4268-9109-c5bd16c60464";
    for f in ["tag_rules.csv", "org_units.csv", "psa_time_entries.csv", "manual_lines.csv", "rate_cards.csv"] {
        edit(&ws.join("reference").join(f), |t| t.replace(contoso, &contoso.to_uppercase()));
    }
    let adventure = "4b1f1fb2-933d-4ccf-8567-b12dbf790509";
    let adventure_up = adventure.to_uppercase();
    edit(&ws.join("reference/customers.csv"), |t| t.replace(adventure, &adventure_up));
    run_ok(&ws, PERIOD, &[]);
    // Every output uses the customers.csv spelling.
    for (zone, t) in [("staged", "stg_pc_daily_usage"), ("staged", "stg_pc_invoice_lines"), ("int", "int_charges"), ("int", "int_charges_rated"), ("marts", "fct_invoices"), ("marts", "fct_invoice_lines")] {
        let ids = strs(&table(&ws, zone, t, PERIOD), "customer_id");
        assert!(ids.iter().any(|i| i == northwind) && ids.iter().any(|i| *i == adventure_up), "{t}");
        assert!(!ids.iter().any(|i| *i == northwind.to_uppercase() || i == adventure), "{t}");
    }
    let tags = table(&ws, "staged", "stg_tag_rules", PERIOD);
    assert!(strs(&tags, "customer_id").iter().any(|i| i == contoso));
    // The invoices are the golden ones, Adventure Works' id spelled as customers.csv now writes it.
    let inv = golden_text(&ws)["fct_invoices.csv"].replace(&adventure_up, adventure);
    assert_eq!(inv, std::fs::read_to_string(repo().join("tests/golden/sample_2025-06/fct_invoices.csv")).unwrap());
    assert_eq!(golden_text(&ws)["fct_invoice_lines.csv"], std::fs::read_to_string(repo().join("tests/golden/sample_2025-06/fct_invoice_lines.csv")).unwrap());
}

#[test]
fn two_customer_ids_differing_only_in_case_are_exit_2_naming_both_lines() {
    let (_t, ws) = workspace();
    edit(&ws.join("reference/customers.csv"), |t| format!("{t}5EDDB406-4E06-4586-9B4F-2AF187103543,Northwind again,USD,smb,microsoft,,,,,,,\n"));
    let out = run(&ws, PERIOD, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("customers.csv:12: column `customer_id`: duplicate customer_id `5EDDB406-4E06-4586-9B4F-2AF187103543` (first on line 4 as `5eddb406-4e06-4586-9b4f-2af187103543`"), "{err}");
    assert!(!ws.join("warehouse/marts").exists());
}

#[test]
fn enumerations_and_currency_codes_in_any_case_give_the_golden_invoices() {
    let (_t, ws) = workspace();
    edit(&ws.join("reference/customers.csv"), |t| {
        t.replace(",EUR,enterprise,microsoft,", ",eur,Enterprise,Microsoft,").replace(",USD,smb,microsoft,", ",Usd,SMB,MICROSOFT,").replace(",active,", ",Active,")
    });
    edit(&ws.join("reference/rate_cards.csv"), |t| t.replace("markup_on_cost", "Markup_On_Cost").replace(",azure_usage,", ",Azure_Usage,").replace(",smb,", ",SMB,").replace("24.50,USD", "24.50,usd"));
    edit(&ws.join("reference/fx_rates.csv"), |t| t.replace(",USD,EUR,", ",usd,eur,"));
    edit(&ws.join("reference/manual_lines.csv"), |t| t.replace(",EUR,credit,", ",Eur,CREDIT,"));
    edit(&ws.join("reference/org_units.csv"), |t| t.replace(",cost_center,", ",Cost_Center,"));
    edit(&ws.join("reference/psa_time_entries.csv"), |t| t.replace(",GBP,Yes,", ",gbp,YES,"));
    run_ok(&ws, PERIOD, &[]);
    assert_golden(&ws);
    let cust = table(&ws, "staged", "stg_customers", PERIOD);
    assert!(strs(&cust, "template").iter().all(|t| ["enterprise", "smb", "trial"].contains(&t.as_str())));
    assert!(strs(&cust, "invoice_currency").iter().all(|c| c.chars().all(|ch| ch.is_ascii_uppercase())));
}

// ---------------------------------------------------------------------------------------------------------------
// Item 6: errors name where to look
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_tag_rule_tie_names_the_charge_by_file_and_line_and_the_rule_lines() {
    let (_t, ws) = workspace();
    let path = ws.join("reference/tag_rules.csv");
    let mut text = std::fs::read_to_string(&path).unwrap();
    // Same priority as TR-C00-TO-C01 (line 2) and the same tag: every `entity=subsidiary` charge is claimed twice.
    text.push_str("TR-TIE,5,c613ce64-5507-4268-9109-c5bd16c60464,,,ENTITY,subsidiary,,C00-OPS,\n");
    let tie_line = text.lines().count();
    std::fs::write(&path, text).unwrap();
    let out = run(&ws, PERIOD, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains(&format!("`TR-C00-TO-C01` (tag_rules.csv line 2), `TR-TIE` (tag_rules.csv line {tie_line})")), "{err}");
    // The charge: "the charge in `FILE` line N (line_id `…`)"; that line of that file is such a charge.
    let at = err.find("the charge in `").unwrap_or_else(|| panic!("{err}")) + "the charge in `".len();
    let name = &err[at..at + err[at..].find('`').unwrap()];
    let rest = &err[at + name.len() + "` line ".len()..];
    let line: usize = rest[..rest.find(' ').unwrap()].parse().unwrap();
    assert!(rest[rest.find(' ').unwrap()..].starts_with(" (line_id `"), "{err}");
    let file = ws.join("inputs").join(PERIOD).join(name);
    let text = std::fs::read_to_string(&file).unwrap();
    let row = text.lines().nth(line - 1).unwrap();
    assert!(row.contains("c613ce64-5507-4268-9109-c5bd16c60464") && row.contains("subsidiary"), "{row}");
}

// ---------------------------------------------------------------------------------------------------------------
// Item 10: v1 JSON page and v2 export through a whole run; late data after two closed periods
// ---------------------------------------------------------------------------------------------------------------

/// A workspace around Partner Center files: `customers` with `ccy`, a 0 % markup card.
fn fixture_workspace(period: &str, customers: &[String], ccy: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(ws.join("inputs").join(period)).unwrap();
    std::fs::create_dir_all(ws.join("reference")).unwrap();
    let mut c = String::from("customer_id,customer_name,invoice_currency,template,fx_policy\n");
    for id in customers {
        c.push_str(&format!("{id},Customer {id},{ccy},smb,microsoft\n"));
    }
    std::fs::write(ws.join("reference/customers.csv"), c).unwrap();
    std::fs::write(
        ws.join("reference/rate_cards.csv"),
        "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to\npass,*,*,*,,,,markup_on_cost,0,,,\n",
    )
    .unwrap();
    std::fs::write(
        ws.join("cspbill.toml"),
        "[partner]\nname = \"Fixture MSP\"\n[inputs]\npartner_center = \"inputs/{period}\"\ncustomers = \"reference/customers.csv\"\nrate_cards = \"reference/rate_cards.csv\"\n[billing]\ninvoice_prefix = \"FX\"\ninvoice_date = \"2025-01-31\"\n",
    )
    .unwrap();
    (tmp, ws)
}

fn json_decimal(v: &serde_json::Value) -> Decimal {
    // serde_json's arbitrary_precision keeps the number's text.
    let t = v.to_string();
    Decimal::from_scientific(&t).or_else(|_| t.parse()).unwrap()
}

#[test]
fn a_v1_json_page_runs_end_to_end() {
    let src = fixtures().join("v1_daily_rated_usage_page_sandbox.json");
    let page: serde_json::Value = serde_json::from_slice(&std::fs::read(&src).unwrap()).unwrap();
    let items = page["items"].as_array().unwrap();
    let mut ids: Vec<String> = items.iter().map(|i| i["customerId"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    // The page's own amounts: Σ billingPreTaxTotal of its 293 items, in exact decimals.
    let total: Decimal = items.iter().map(|i| json_decimal(&i["billingPreTaxTotal"])).sum();
    let (_t, ws) = fixture_workspace("2020-05", &ids, "USD");
    std::fs::copy(&src, ws.join("inputs/2020-05/page.json")).unwrap();
    run_ok(&ws, "2020-05", &[]);
    let staged = table(&ws, "staged", "stg_pc_daily_usage", "2020-05");
    assert_eq!(staged.height(), items.len());
    let rated = table(&ws, "int", "int_charges_rated", "2020-05");
    assert_eq!(sum(&rated, "cost"), total);
    assert_eq!(sum(&rated, "price"), total);
    // One smb customer in USD: one usage line, Σ rounded once, half-even, to cents.
    let inv = table(&ws, "marts", "fct_invoices", "2020-05");
    assert_eq!(inv.height(), 1);
    assert_eq!(sum(&inv, "subtotal"), total.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven));
}

#[test]
fn a_v2_export_runs_end_to_end() {
    use std::io::Write;
    let src = fixtures().join("v1_onetime_invoice_lineitems_real_2024-01_inr_slice.jsonl");
    let text = std::fs::read_to_string(&src).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut ids: Vec<String> = lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["customerId"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    let (_t, ws) = fixture_workspace("2024-01", &ids, "INR");
    let dir = ws.join("inputs/2024-01/export-2024-01");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), r#"{"version":"2","dataFormat":"compressedJSON","blobCount":2}"#).unwrap();
    for (i, part) in [&lines[..1500], &lines[1500..]].iter().enumerate() {
        let f = std::fs::File::create(dir.join(format!("part{i}.json.gz"))).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        for l in part.iter() {
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
    }
    run_ok(&ws, "2024-01", &[]);
    // Fixture README: 2,900 lines, Σ subtotal 9,945,692.81 INR. No daily usage: every line is charged; a 0 %
    // card in the billing currency bills exactly that, and amounts of two decimals need no rounding.
    let staged = table(&ws, "staged", "stg_pc_invoice_lines", "2024-01");
    assert_eq!(staged.height(), 2900);
    let rated = table(&ws, "int", "int_charges_rated", "2024-01");
    assert_eq!(sum(&rated, "price"), d("9945692.81"));
    let inv = table(&ws, "marts", "fct_invoices", "2024-01");
    assert_eq!(sum(&inv, "subtotal"), d("9945692.81"));
    let manifest = std::fs::read_dir(ws.join("warehouse/_runs")).unwrap().next().unwrap().unwrap().path();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(m["inputs"].as_array().unwrap().len(), 2, "two blobs");
    assert!(m["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true));
}

/// Multiplies BillingPreTaxTotal, PricingPreTaxTotal and Quantity of the first usage row of `customer` costing
/// more than 1 by `k`, as a Microsoft restatement changes an amount.
fn restate(dir: &Path, customer: &str, k: Decimal) {
    for file in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().contains("BilledUsage")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
        let header: Vec<String> = split_csv(lines[0].trim_end());
        let idx = |n: &str| header.iter().position(|h| h == n).unwrap();
        let (bt, pt, q, c) = (idx("BillingPreTaxTotal"), idx("PricingPreTaxTotal"), idx("Quantity"), idx("CustomerId"));
        for l in lines.iter_mut().skip(1) {
            let mut f = split_csv(l.trim_end());
            let cost: Decimal = f[bt].parse().unwrap_or_default();
            if f[c] == customer && cost > Decimal::ONE {
                for i in [bt, pt, q] {
                    f[i] = (f[i].parse::<Decimal>().unwrap() * k).to_string();
                }
                let quote = |x: &String| if x.contains(',') || x.contains('"') { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.clone() };
                *l = format!("{}\r\n", f.iter().map(quote).collect::<Vec<_>>().join(","));
                std::fs::write(&file, lines.concat()).unwrap();
                return;
            }
        }
    }
    panic!("no usage row of {customer} to restate");
}

/// One CSV record's fields (quotes, doubled quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut q = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if q && chars.peek() == Some(&'"') => {
                out.last_mut().unwrap().push('"');
                chars.next();
            }
            '"' => q = !q,
            ',' if !q => out.push(String::new()),
            _ => out.last_mut().unwrap().push(ch),
        }
    }
    out
}

const NORTHWIND: &str = "5eddb406-4e06-4586-9b4f-2af187103543";
const LUCERNE: &str = "eddab263-928f-41b4-bf85-b22c4f1e79db";

fn adjustments(ws: &Path, period: &str) -> Decimal {
    let lines = table(ws, "marts", "fct_invoice_lines", period);
    let adj = lines.lazy().filter(col("line_type").eq(lit("adjustment"))).collect().unwrap();
    assert!(strs(&adj, "corrected_period").iter().all(|p| p == PERIOD), "{adj}");
    sum(&adj, "amount")
}

/// Σ June subtotals of a full run of June in a fresh warehouse after `restatements`.
fn june_total(restatements: &[(&str, &str)]) -> Decimal {
    let (_t, ws) = workspace();
    for (customer, k) in restatements {
        restate(&ws.join("inputs").join(PERIOD), customer, d(k));
    }
    run_ok(&ws, PERIOD, &[]);
    sum(&table(&ws, "marts", "fct_invoices", PERIOD), "subtotal")
}

#[test]
fn late_data_after_two_closed_periods_is_billed_once() {
    let issued = june_total(&[]);
    let first = june_total(&[(NORTHWIND, "2")]);
    let second = june_total(&[(NORTHWIND, "2"), (LUCERNE, "3")]);
    assert!(first != issued && second != first);

    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &["--mode", "close"]);
    assert_eq!(sum(&table(&ws, "marts", "fct_invoices", PERIOD), "subtotal"), issued);
    // June is restated after it closed; July closes with the difference as adjustments.
    restate(&ws.join("inputs").join(PERIOD), NORTHWIND, d("2"));
    std::fs::create_dir_all(ws.join("inputs/2025-07")).unwrap();
    run_ok(&ws, "2025-07", &["--mode", "close", "--invoice-date", "2025-08-01"]);
    assert_eq!(adjustments(&ws, "2025-07"), first - issued);
    let july: Vec<(PathBuf, Vec<u8>)> = support::walk(&ws.join("warehouse/marts")).into_iter().filter(|p| p.to_string_lossy().contains("2025-07")).map(|p| {
        let b = std::fs::read(&p).unwrap();
        (p, b)
    }).collect();
    // June is restated again, with both June and July closed: August bills only what July did not.
    restate(&ws.join("inputs").join(PERIOD), LUCERNE, d("3"));
    std::fs::create_dir_all(ws.join("inputs/2025-08")).unwrap();
    run_ok(&ws, "2025-08", &["--invoice-date", "2025-09-01"]);
    assert_eq!(adjustments(&ws, "2025-08"), second - first);
    assert_eq!(adjustments(&ws, "2025-07") + adjustments(&ws, "2025-08"), second - issued);
    for (p, b) in july {
        assert_eq!(std::fs::read(&p).unwrap(), b, "{} changed after July closed", p.display());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Item 12: the command line behaves as its help says
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn verbose_gives_debug_events_per_file_stage_and_store_call() {
    let (_t, ws) = workspace();
    let quiet = run_ok(&ws, PERIOD, &[]);
    let quiet = String::from_utf8_lossy(&quiet.stderr).to_string();
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    let out = run_ok(&ws, PERIOD, &["-v"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for want in ["input file", "G107047573_BilledUsage_202506.csv", "rows_in=", "stage computed", "table=\"int_charges_rated\"", "stage done", "store call", "op=\"put_create\""] {
        assert!(err.contains(want), "no `{want}` under -v:\n{err}");
    }
    // RUST_LOG=debug gives the same events.
    let a = args(&ws, "run", PERIOD);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cspbill")).args(&a).env("RUST_LOG", "debug").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("stage computed"));
}

#[test]
fn info_lines_name_the_period_and_run_once() {
    let (_t, ws) = workspace();
    let out = run_ok(&ws, PERIOD, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let published = err.lines().find(|l| l.contains("published")).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(published.matches("2025-06").count(), 1, "{published}");
    assert_eq!(published.matches("run_id").count(), 1, "{published}");
}

#[test]
fn under_json_logs_every_stderr_line_is_json() {
    let (_t, ws) = workspace();
    // An unknown column in a reference file is a warning: the closing `warning:` lines must be JSON too.
    edit(&ws.join("reference/fx_rates.csv"), |t| t.replacen("date,from_currency,to_currency,rate", "date,from_currency,to_currency,rate,source", 1));
    let out = run_ok(&ws, PERIOD, &["--log-format", "json", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let mut warned = false;
    for l in err.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        warned |= v["level"] == "WARN" && v["message"].as_str().unwrap_or_default().contains("unknown column `source`");
    }
    assert!(warned, "{err}");
    // The error line of a failed run too, with its exit code.
    edit(&ws.join("reference/rate_cards.csv"), |t| format!("{t}broken,*,*,*,,,,markup_on_kost,0.1,,,\n"));
    let out = run(&ws, PERIOD, &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!((last["level"].as_str(), last["exit_code"].as_i64()), (Some("ERROR"), Some(2)));
    assert!(last["message"].as_str().unwrap().contains("rate_cards.csv:"), "{last}");
    for l in err.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[test]
fn explain_into_a_closed_pipe_exits_quietly() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &[]);
    let lines = table(&ws, "marts", "fct_invoice_lines", PERIOD);
    let id = strs(&lines, "invoice_line_id")[0].clone();
    let rated = table(&ws, "int", "int_charges_rated", PERIOD);
    let part = strs(&rated, "part_id")[0].clone();
    for extra in [vec!["--invoice-line", id.as_str()], vec!["--line", part.as_str()], vec!["--invoice-line", id.as_str(), "--format", "json"]] {
        let mut a = args(&ws, "explain", PERIOD);
        a.extend(extra.iter().map(|s| s.to_string()));
        // `| head -0`: the reader is gone before cspbill writes a byte.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cspbill"))
            .args(&a)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    }
}

#[test]
fn a_bad_config_names_its_line_and_column() {
    let (_t, ws) = workspace();
    // Line 29 of sample_data/cspbill.toml is `rounding = "half_even"`: a value TOML cannot read.
    edit(&ws.join("cspbill.toml"), |t| t.replacen("rounding = \"half_even\"", "rounding = half_even", 1));
    let line = std::fs::read_to_string(ws.join("cspbill.toml")).unwrap().lines().position(|l| l.starts_with("rounding =")).unwrap() + 1;
    let out = run(&ws, PERIOD, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cspbill.toml:{line}:12: config is not valid: ")), "{err}");
    assert!(err.contains("fix it (see sample_data/cspbill.toml for the layout)"), "{err}");
}
