//! End to end for the parallel run (`cspbill compare`, issue 17): the sample month is closed, a legacy invoice
//! file is made from cspbill's own committed invoice lines (customers by name, products as a legacy sheet names
//! them, rows in reverse order) with five differences planted by hand, and the report must find exactly those
//! five, each with its cause, and nothing else. Also: `--fail-outside-tolerance`, a column mapping in
//! `[compare.columns]`, and bad legacy files (exit 2 naming file, line and column).
//!
//! The planted differences, computed by hand (sample_data/reference: rate_cards.csv, customers.csv):
//! 1. Lucerne Publishing B.V., `CFQ7TTC0LH18:0001` (Business Basic, 8 seats at 7.115144… USD): the legacy sheet
//!    rounds the unit price to 7.12 first: 8 × 7.12 = 56.96. cspbill: 8 × 7.115144… = 56.92. Cause `rounding`,
//!    difference 56.92 − 56.96 = −0.04.
//! 2. Northwind Traders Inc., `CFQ7TTC0LCHC:0002` (Business Premium, `fixed_unit_price` 24.50 USD): Microsoft
//!    prorated a mid-month change (37 seats, 17 refunded, both prorated); the legacy sheet bills 20 whole seats:
//!    20 × 24.50 = 490.00. Cause `proration`.
//! 3. Fabrikam Fertigung GmbH, `CFQ7TTC0LCHC:0002`: cost 309.00 EUR, DEF-LICENSE markup 0.12 → 346.08; the
//!    legacy sheet used 0.10 (the value of DEF-SOFTWARE and CAT-VM): 309 × 1.10 = 339.90. Cause `markup`,
//!    difference 6.18.
//! 4. Contoso Logistics UK Ltd, PSA project `PSA-1102` (5.75 h × 150.00 GBP = 862.50): left out of the legacy
//!    file. Status `missing_in_legacy`, cause `missing_line`, difference 862.50.
//! 5. Northwind Traders Inc., `BACKUP-365` 1 × 99.00 USD: only in the legacy file. Status `extra_in_legacy`,
//!    cause `extra_line`, difference −99.00.

mod support;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use support::*;

const PERIOD: &str = "2025-06";

/// The product a legacy sheet names for a cspbill line, from its group key (written here independently of
/// `pipeline::compare::product_key`): the SKU, the meter category, the product family, the PSA project, the
/// manual line's reference, or the key itself.
fn legacy_product(group_key: &str) -> String {
    for seg in group_key.split('|') {
        if let Some((tag, v)) = seg.split_once('=') {
            if ["sku", "meter", "family", "project", "manual"].contains(&tag) {
                return v.to_string();
            }
        }
    }
    group_key.to_string()
}

fn closed_workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    let cfg = ws.join("cspbill.toml");
    cspbill_ok(&["run", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--mode", "close"]);
    (tmp, ws)
}

fn read_csv_text(path: &Path) -> DataFrame {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap()
}

fn text(df: &DataFrame, c: &str, i: usize) -> String {
    let v = df.column(c).unwrap().get(i).unwrap();
    match pipeline::decimal::any_to_decimal(&v) {
        Some(d) => d.normalize().to_string(),
        None if v.is_null() => String::new(),
        None => v.str_value().to_string(),
    }
}

/// The legacy file: one row per cspbill invoice line, in reverse order, with the planted differences.
fn write_legacy(ws: &Path, header: [&str; 7]) -> PathBuf {
    let lines = {
        let f = std::fs::File::open(ws.join(format!("warehouse/marts/fct_invoice_lines/period={PERIOD}/part-0.parquet"))).unwrap();
        ParquetReader::new(f).finish().unwrap()
    };
    let customers = read_csv_text(&ws.join("reference/customers.csv"));
    let name_of = |id: &str| -> String {
        (0..customers.height()).find(|&i| text(&customers, "customer_id", i) == id).map(|i| text(&customers, "customer_name", i)).unwrap()
    };
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut northwind_bp_done = false;
    for i in (0..lines.height()).rev() {
        let customer = name_of(&text(&lines, "customer_id", i));
        let product = legacy_product(&text(&lines, "group_key", i));
        let mut quantity = text(&lines, "quantity", i);
        let mut amount = text(&lines, "amount", i);
        match (customer.as_str(), product.as_str()) {
            ("Lucerne Publishing B.V.", "CFQ7TTC0LH18:0001") => amount = "56.96".into(),
            ("Northwind Traders Inc.", "CFQ7TTC0LCHC:0002") => {
                // The purchase and its prorated refund become one line of 20 whole seats.
                if northwind_bp_done {
                    continue;
                }
                northwind_bp_done = true;
                quantity = "20".into();
                amount = "490.00".into();
            }
            ("Fabrikam Fertigung GmbH", "CFQ7TTC0LCHC:0002") => amount = "339.90".into(),
            ("Contoso Logistics UK Ltd", "PSA-1102") => continue,
            _ => {}
        }
        rows.push([
            customer,
            format!("LEG-{}", text(&lines, "invoice_number", i)),
            text(&lines, "description", i),
            product,
            quantity,
            amount,
            text(&lines, "currency", i),
        ]);
    }
    rows.push([
        "Northwind Traders Inc.".into(),
        "LEG-NW-1".into(),
        "Cloud backup".into(),
        "BACKUP-365".into(),
        "1".into(),
        "99.00".into(),
        "USD".into(),
    ]);
    let cols: Vec<Column> =
        (0..7).map(|c| Column::new(header[c].into(), rows.iter().map(|r| r[c].clone()).collect::<Vec<String>>())).collect();
    let mut df = DataFrame::new_infer_height(cols).unwrap();
    let path = ws.join("legacy_invoices.csv");
    CsvWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut df).unwrap();
    path
}

const MINIMAL: [&str; 7] = ["customer", "invoice_number", "description", "product", "quantity", "amount", "currency"];

fn compare(ws: &Path, legacy: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = ws.join("cspbill.toml");
    let mut args = vec!["compare", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--legacy", legacy.to_str().unwrap()];
    args.extend_from_slice(extra);
    cspbill(&args)
}

/// The planted rows as (customer, product, status, cause, legacy, difference), read back by DuckDB.
const EXPECTED: &str = "customer_name,product,status,cause,legacy_amount,difference
Contoso Logistics UK Ltd,PSA-1102,missing_in_legacy,missing_line,,862.50
Fabrikam Fertigung GmbH,CFQ7TTC0LCHC:0002,matched,markup,339.90,6.18
Lucerne Publishing B.V.,CFQ7TTC0LH18:0001,matched,rounding,56.96,-0.04
Northwind Traders Inc.,BACKUP-365,extra_in_legacy,extra_line,99.00,-99.00
Northwind Traders Inc.,CFQ7TTC0LCHC:0002,matched,proration,490.00,-2.44
";

fn planted(py: &str, ws: &Path) -> String {
    let w = ws.join("warehouse");
    duckdb_csv(
        py,
        &format!(
            "select customer_name, product, status, cause, legacy_amount::decimal(18,2) as legacy_amount, difference::decimal(18,2) as difference
             from read_parquet('{}/marts/rpt_parallel_run/*/*.parquet', hive_partitioning=true)
             where period = '{PERIOD}' and row_kind = 'line' and cause <> 'none' order by 1, 2",
            w.display()
        ),
    )
}

#[test]
fn sample_close_against_a_legacy_file_finds_each_planted_difference_and_nothing_else() {
    let (_tmp, ws) = closed_workspace();
    let legacy = write_legacy(&ws, MINIMAL);
    let out = compare(&ws, &legacy, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("parallel run of 2025-06: 4 customer(s) outside tolerance"), "{stdout}");
    // Scheduled parallel runs fail when something is outside tolerance.
    let out = compare(&ws, &legacy, &["--fail-outside-tolerance"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    let Some(py) = python() else { return };
    assert_eq!(planted(&py, &ws), EXPECTED);
    let w = ws.join("warehouse");
    // Every row: difference = cspbill − legacy (absent side 0); tolerance 0.01 absolute (the default).
    let bad = duckdb_csv(
        &py,
        &format!(
            "select count(*) as n from read_parquet('{}/marts/rpt_parallel_run/*/*.parquet', hive_partitioning=true)
             where difference <> coalesce(cspbill_amount, 0) - coalesce(legacy_amount, 0)
                or (row_kind = 'line' and within_tolerance <> (abs(difference) <= 0.01))",
            w.display()
        ),
    );
    assert_eq!(bad, "n\n0\n");
    // Customer rows: totals equal the sums of cspbill's invoices (fct_invoices) for every customer.
    let totals = duckdb_csv(
        &py,
        &format!(
            "with r as (select customer_id, cspbill_amount from read_parquet('{w}/marts/rpt_parallel_run/*/*.parquet', hive_partitioning=true) where row_kind = 'customer'),
                  i as (select customer_id, sum(subtotal) s from read_parquet('{w}/marts/fct_invoices/*/*.parquet', hive_partitioning=true) group by 1)
             select count(*) as n, count(*) filter (where r.cspbill_amount = i.s) as equal from r join i using (customer_id)",
            w = w.display()
        ),
    );
    assert_eq!(totals, "n,equal\n10,10\n");
}

#[test]
fn column_mapping_and_bad_legacy_files() {
    let (_tmp, ws) = closed_workspace();
    // The user's own export: other header names, mapped in cspbill.toml.
    let own = ["Client", "Invoice No", "Item", "SKU", "Qty", "Net", "Curr"];
    let legacy = write_legacy(&ws, own);
    let out = compare(&ws, &legacy, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no column `customer`, `invoice_number`, `description`, `product`, `quantity`, `amount`, `currency`"), "{err}");
    assert!(err.contains("[compare.columns]"), "{err}");
    let cfg = ws.join("cspbill.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[compare]\nabs_tolerance = \"0.05\"\n[compare.columns]\ncustomer = \"Client\"\ninvoice_number = \"Invoice No\"\ndescription = \"Item\"\nproduct = \"SKU\"\nquantity = \"Qty\"\namount = \"Net\"\ncurrency = \"Curr\"\n"
        ),
    )
    .unwrap();
    let out = compare(&ws, &legacy, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // With 0.05 absolute tolerance, Lucerne's −0.04 rounding is within: 3 customers outside.
    assert!(stdout.contains("parallel run of 2025-06: 3 customer(s) outside tolerance"), "{stdout}");
    if let Some(py) = python() {
        assert_eq!(planted(&py, &ws), EXPECTED);
    }

    // A bad amount cell: file, line and column named, exit 2.
    let bad = ws.join("bad.csv");
    std::fs::write(&bad, "Client,Invoice No,Item,SKU,Qty,Net,Curr\nCoho Winery Ltd,X1,Seats,CFQ7TTC0LH18:0001,9,\"1,045.64\",GBP\n").unwrap();
    let out = compare(&ws, &bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:2: column 6 (`Net`): `1,045.64` is not a plain decimal number"), "{err}");
    // A currency that is not ISO 4217.
    std::fs::write(&bad, "Client,Invoice No,Item,SKU,Qty,Net,Curr\nCoho Winery Ltd,X1,Seats,CFQ7TTC0LH18:0001,9,45.64,UKP\n").unwrap();
    let err = String::from_utf8_lossy(&compare(&ws, &bad, &[]).stderr).to_string();
    assert!(err.contains("bad.csv:2: column 7 (`Curr`): `UKP` is not an ISO 4217 currency code"), "{err}");
}

/// Drift against hand-made PSA and CRM exports (`tests/fixtures/parallel_run/`), each row planted:
/// PSA
/// - Lucerne `CFQ7TTC0LH18:0001`: 8 seats at 7.12, billed 8 at 7.115144… (within half a cent): no row.
/// - Lucerne `CFQ7TTC0LCHC:0002`: 12 seats agreed, 15 billed: `quantity` 12 vs 15.
/// - Coho Winery `CFQ7TTC0LCHC:0002`: 19.95 GBP agreed, cspbill's seat price 18.595808: `unit_price`.
/// - Coho Winery `CFQ7TTC0LDPB:0001`: agreed (3), not billed: `line` 3 vs none.
/// - Coho Winery `CFQ7TTC0LH18:0001`: billed (9 seats), no agreement: `line` none vs 9.
/// CRM
/// - Fabrikam `azure_usage`: quoted 300.00 a month at 20 %: `amount` and `margin` rows, the billed side
///   recomputed here by DuckDB from `fct_invoice_lines` (Σ amount, (Σ amount − Σ cost) / Σ amount).
/// - Fabrikam `CFQ7TTC0LDPB:0001`: 6 seats, 62.90, 10.7 %: billed 6, 62.90, (62.90 − 56.16) / 62.90 = 10.715 %
///   (within 1 point): no row.
/// - Wide World Importers `DZH318Z0BNZ5`: nothing billed: `line`.
#[test]
fn drift_against_psa_agreements_and_crm_quotes() {
    let (_tmp, ws) = closed_workspace();
    let fx = repo().join("tests/fixtures/parallel_run");
    let cfg = ws.join("cspbill.toml");
    let (psa, crm) = (fx.join("psa_agreements.csv"), fx.join("crm_quotes.csv"));
    let base = ["drift", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--psa", psa.to_str().unwrap(), "--crm", crm.to_str().unwrap()];
    let out = cspbill_ok(&base);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("drift of 2025-06: 7 difference(s)"), "{stdout}");
    let mut failing = base.to_vec();
    failing.push("--fail-on-drift");
    assert_eq!(cspbill(&failing).status.code(), Some(1));
    // A PSA export without a quantity column: exit 2 naming it.
    let bad = ws.join("psa_bad.csv");
    std::fs::write(&bad, "customer,product,seats\nCoho Winery Ltd,CFQ7TTC0LH18:0001,9\n").unwrap();
    let out = cspbill(&["drift", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--psa", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("psa_bad.csv:1: no column `quantity`") && err.contains("[compare.psa_columns]"), "{err}");

    let Some(py) = python() else { return };
    let w = ws.join("warehouse");
    let got = duckdb_csv(
        &py,
        &format!(
            "select source, customer_name, product, measure, business_value::decimal(18,6) as business, billing_value::decimal(18,6) as billing
             from read_parquet('{}/marts/rpt_drift/*/*.parquet', hive_partitioning=true) where period = '{PERIOD}' order by 1, 2, 3, 4",
            w.display()
        ),
    );
    // The Fabrikam Azure figures, recomputed from the invoice lines.
    let fab = duckdb_csv(
        &py,
        &format!(
            "select sum(amount)::decimal(18,6) as a, round((sum(amount) - sum(cost)) / sum(amount), 6)::decimal(18,6) as m
             from read_parquet('{}/marts/fct_invoice_lines/*/*.parquet', hive_partitioning=true)
             where customer_id = 'f38142e0-96d1-4ed8-92e7-93afc22527ca' and product_family = 'azure_usage'",
            w.display()
        ),
    );
    let fab: Vec<&str> = fab.lines().nth(1).unwrap().split(',').collect();
    let expected = format!(
        "source,customer_name,product,measure,business,billing
crm,Fabrikam Fertigung GmbH,azure_usage,amount,300.000000,{a}
crm,Fabrikam Fertigung GmbH,azure_usage,margin,0.200000,{m}
crm,Wide World Importers KK,DZH318Z0BNZ5,line,50000.000000,
psa,Coho Winery Ltd,CFQ7TTC0LCHC:0002,unit_price,19.950000,18.595808
psa,Coho Winery Ltd,CFQ7TTC0LDPB:0001,line,3.000000,
psa,Coho Winery Ltd,CFQ7TTC0LH18:0001,line,,9.000000
psa,Lucerne Publishing B.V.,CFQ7TTC0LCHC:0002,quantity,12.000000,15.000000
",
        a = fab[0],
        m = fab[1]
    );
    assert_eq!(got, expected);
}
