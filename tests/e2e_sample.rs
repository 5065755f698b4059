//! End to end on `sample_data/`: the binary runs the whole month into a temporary warehouse, every invariant holds,
//! DuckDB reads the outputs back, invoices match the golden copies, re-runs are byte-identical, and late data
//! for a closed period becomes adjustment lines on the next period without changing the closed invoice.
//!
//! Golden files live in `tests/golden/sample_2025-06/`; refresh them with `CSPBILL_BLESS=1 cargo test --test
//! e2e_sample` after checking the difference by eye.

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

fn run(ws: &Path, period: &str, extra: &[&str]) -> std::process::Output {
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    let mut args = vec!["run", "--config", cfg.to_str().unwrap(), "--period", period, "--warehouse", wh.to_str().unwrap()];
    args.extend_from_slice(extra);
    cspbill(&args)
}

fn run_ok(ws: &Path, period: &str, extra: &[&str]) {
    let out = run(ws, period, extra);
    assert!(out.status.success(), "run {period} {extra:?} failed {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
}

/// Reads a published table of the local warehouse with Polars (Hive layout), sorted for comparison.
fn table(ws: &Path, zone: &str, name: &str) -> DataFrame {
    let dir = ws.join("warehouse").join(zone).join(name);
    let mut frames = Vec::new();
    for p in std::fs::read_dir(&dir).unwrap() {
        let part = p.unwrap().path();
        for f in std::fs::read_dir(&part).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "parquet") {
                let period = part.file_name().unwrap().to_str().unwrap().trim_start_matches("period=").to_string();
                let df = ParquetReader::new(std::fs::File::open(&f).unwrap()).finish().unwrap();
                let h = df.height();
                let mut df = df;
                df.with_column(Column::new("period".into(), vec![period; h])).unwrap();
                frames.push(df);
            }
        }
    }
    let mut out = frames.remove(0);
    for f in frames {
        out.vstack_mut(&f).unwrap();
    }
    out
}

fn manifest(ws: &Path) -> serde_json::Value {
    let dir = ws.join("warehouse/_runs");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_slice(&std::fs::read(runs.last().unwrap()).unwrap()).unwrap()
}

fn sum(df: &DataFrame, c: &str) -> Decimal {
    pipeline::decimal::column_sum(df, c).unwrap()
}

#[test]
fn sample_month_runs_balances_and_reads_back() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &[]);
    let m = manifest(&ws);
    let checks = m["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{checks:?}");
    for c in checks {
        assert_eq!(c["ok"], true, "{c}");
    }
    assert_eq!(m["status"], "committed");
    // Every staged row is accounted for, per file.
    for f in m["inputs"].as_array().unwrap() {
        let rows = f["staged"].as_u64().unwrap()
            + f["rejected"].as_u64().unwrap()
            + f["duplicates"].as_u64().unwrap()
            + f["set_aside"].as_u64().unwrap()
            + f["other_period"].as_u64().unwrap();
        assert_eq!(rows, f["rows_in"].as_u64().unwrap(), "{f}");
        assert!(f["rows_in"].as_u64().unwrap() > 0);
    }
    // Cost flows through every stage unchanged.
    let charges = table(&ws, "int", "int_charges");
    let allocated = table(&ws, "int", "int_charges_allocated");
    let rated = table(&ws, "int", "int_charges_rated");
    assert_eq!(sum(&charges, "cost"), sum(&allocated, "cost"));
    assert_eq!(sum(&allocated, "cost"), sum(&rated, "cost"));
    assert_eq!(allocated.height(), rated.height());
    // Ids stay ids through the streaming stages: every staged row has its own `line_id`, every part its own
    // `part_id`, and every priced part is one detail row.
    let usage = table(&ws, "staged", "stg_pc_daily_usage");
    let staged_lines = usage.height() + table(&ws, "staged", "stg_pc_invoice_lines").height();
    assert_eq!(usage.column("line_id").unwrap().n_unique().unwrap(), usage.height());
    assert_eq!(charges.column("line_id").unwrap().n_unique().unwrap(), charges.height());
    assert!(charges.height() <= staged_lines);
    assert_eq!(rated.column("part_id").unwrap().n_unique().unwrap(), rated.height());
    let detail = table(&ws, "marts", "fct_invoice_detail");
    let priced = rated.column("status").unwrap().str().unwrap().iter().filter(|s| *s == Some("priced")).count();
    assert_eq!(detail.height(), priced);
    // Invoices add up: subtotal = Σ lines, total = subtotal + tax, tax 0.
    let invoices = table(&ws, "marts", "fct_invoices");
    let lines = table(&ws, "marts", "fct_invoice_lines");
    assert!(invoices.height() >= 3);
    assert_eq!(sum(&invoices, "subtotal"), sum(&lines, "amount"));
    assert_eq!(sum(&invoices, "total"), sum(&invoices, "subtotal"));
    assert_eq!(sum(&invoices, "tax"), Decimal::ZERO);
    // Every template is represented, and every invoice has its CSV and XLSX.
    let templates: Vec<String> = invoices.column("template").unwrap().str().unwrap().iter().flatten().map(String::from).collect();
    for t in ["enterprise", "smb", "trial"] {
        assert!(templates.iter().any(|x| x == t), "no {t} invoice");
    }
    let exports: Vec<_> = walk(&ws.join("warehouse/marts/exports"));
    assert_eq!(exports.iter().filter(|p| p.extension().is_some_and(|e| e == "xlsx")).count(), invoices.height());
    // (Invoice CSVs; the ledger's ERP files are under `period=P/ledger/`, see tests/e2e_ledger.rs.)
    let invoice_csv = |p: &&PathBuf| p.extension().is_some_and(|e| e == "csv") && !p.components().any(|c| c.as_os_str() == "ledger");
    assert_eq!(exports.iter().filter(invoice_csv).count(), invoices.height());

    // DuckDB reads the Hive-partitioned Parquet without cspbill, decimals intact.
    if let Some(py) = python() {
        let root = ws.join("warehouse");
        let q = format!(
            "select replace(any_value(typeof(subtotal)), ',', ' ') t, count(*) n, sum(subtotal)::varchar s from read_parquet('{}/marts/fct_invoices/*/*.parquet', hive_partitioning=true) where period = '{PERIOD}'",
            root.display()
        );
        let csv = duckdb_csv(&py, &q);
        let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(row[0], "DECIMAL(38 18)");
        assert_eq!(row[1], invoices.height().to_string());
        assert_eq!(row[2].parse::<Decimal>().unwrap(), sum(&invoices, "subtotal"));
    }
}


/// Renders the customer-facing columns of invoices and lines as CSV text for the golden comparison.
fn golden_text(ws: &Path) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let inv = table(&ws, "marts", "fct_invoices")
        .lazy()
        .select([col("invoice_number"), col("customer_id"), col("customer_name"), col("currency"), col("template"), col("status"), col("invoice_date"), col("due_date"), col("line_count"), col("subtotal"), col("tax"), col("total"), col("unpriced_charges")])
        .sort(["invoice_number"], Default::default())
        .collect()
        .unwrap();
    let lines = table(&ws, "marts", "fct_invoice_lines")
        .lazy()
        .select([col("invoice_line_id"), col("line_type"), col("product_family"), col("unit_path"), col("description"), col("quantity"), col("unit"), col("unit_price"), col("amount")])
        .sort(["invoice_line_id"], Default::default())
        .collect()
        .unwrap();
    out.insert("fct_invoices.csv", pipeline::testing::frame_to_csv(&mut inv.clone()));
    out.insert("fct_invoice_lines.csv", pipeline::testing::frame_to_csv(&mut lines.clone()));
    out
}

#[test]
fn sample_invoices_match_the_golden_copies() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &[]);
    let dir = repo().join("tests/golden/sample_2025-06");
    let bless = std::env::var("CSPBILL_BLESS").is_ok_and(|v| v == "1");
    for (name, text) in golden_text(&ws) {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run CSPBILL_BLESS=1 cargo test --test e2e_sample", path.display()));
        assert!(want == text, "{} differs from this run; check the change, then refresh with CSPBILL_BLESS=1 cargo test --test e2e_sample", path.display());
    }
}

#[test]
fn rerun_on_the_same_inputs_gives_identical_parquet() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &[]);
    let first = manifest(&ws);
    run_ok(&ws, PERIOD, &[]);
    let second = manifest(&ws);
    assert_ne!(first["run_id"], second["run_id"]);
    let shas = |m: &serde_json::Value| -> BTreeMap<String, String> {
        m["outputs"].as_array().unwrap().iter().map(|o| (o["path"].as_str().unwrap().to_string(), o["sha256"].as_str().unwrap().to_string())).collect()
    };
    // The anomalies new since the last committed run differ by design (a re-run has none); every table is equal.
    let (mut a, mut b) = (shas(&first), shas(&second));
    let new = "marts/rpt_anomalies/period=2025-06/new_anomalies.jsonl";
    assert!(a.remove(new).is_some() && b.remove(new).is_some());
    assert_eq!(a, b);
    assert!(shas(&first).len() > 20);
    // Only the latest run's files are visible to a reader of the folder: one Parquet file per table partition.
    let parts = walk(&ws.join("warehouse/marts/fct_invoices"));
    assert_eq!(parts.iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).count(), 1, "{parts:?}");
}

#[test]
fn late_data_for_a_closed_period_becomes_adjustments_on_the_next_invoice() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &["--mode", "close"]);
    let june_files: Vec<(PathBuf, Vec<u8>)> = walk(&ws.join("warehouse/marts")).into_iter().filter(|p| p.to_string_lossy().contains("2025-06")).map(|p| {
        let b = std::fs::read(&p).unwrap();
        (p, b)
    }).collect();
    assert!(june_files.len() > 5);
    let issued = table(&ws, "marts", "fct_invoices");
    let issued_total = sum(&issued, "subtotal");

    // Microsoft restates June: one usage row doubles. Re-running June itself publishes nothing.
    restate_one_usage_row(&ws.join("inputs/2025-06"));
    let out = run(&ws, PERIOD, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed"), "{}", String::from_utf8_lossy(&out.stdout));

    // What June would have been with the restated file: an independent full run in another warehouse.
    let (_t2, ws2) = workspace();
    restate_one_usage_row(&ws2.join("inputs/2025-06"));
    run_ok(&ws2, PERIOD, &[]);
    let restated_total = sum(&table(&ws2, "marts", "fct_invoices"), "subtotal");
    assert_ne!(restated_total, issued_total, "the restatement must change an amount");

    // July's run bills the difference as adjustment lines, exactly.
    std::fs::create_dir_all(ws.join("inputs/2025-07")).unwrap();
    run_ok(&ws, "2025-07", &["--invoice-date", "2025-08-01"]);
    let lines = table(&ws, "marts", "fct_invoice_lines");
    let july_adj = lines
        .lazy()
        .filter(col("period").eq(lit("2025-07")).and(col("line_type").eq(lit("adjustment"))))
        .collect()
        .unwrap();
    assert!(july_adj.height() >= 1);
    // Adjustments are per invoice currency; the restated row's customer has one currency, so the sums compare.
    assert_eq!(sum(&july_adj, "amount"), restated_total - issued_total);
    let corrected: Vec<&str> = july_adj.column("corrected_period").unwrap().str().unwrap().iter().flatten().collect();
    assert!(corrected.iter().all(|p| *p == "2025-06"));

    // June's published files are byte-identical.
    for (p, b) in june_files {
        assert_eq!(std::fs::read(&p).unwrap(), b, "{} changed after close", p.display());
    }

    // A re-run of July on the same inputs bills the same adjustments once, not twice.
    run_ok(&ws, "2025-07", &["--invoice-date", "2025-08-01"]);
    let again = table(&ws, "marts", "fct_invoice_lines").lazy().filter(col("period").eq(lit("2025-07")).and(col("line_type").eq(lit("adjustment")))).collect().unwrap();
    assert_eq!(sum(&again, "amount"), restated_total - issued_total);
}



#[test]
fn close_refuses_unpriced_charges_and_publishes_nothing() {
    let (_t, ws) = workspace();
    // A rate card that prices only licences leaves Azure usage unpriced.
    let rc = "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to\nonly-licences,*,*,license,,,,markup_on_cost,0.1,,,\n";
    std::fs::write(ws.join("reference/rate_cards.csv"), rc).unwrap();
    let out = run(&ws, PERIOD, &["--mode", "close"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("close: no unpriced charges"), "{err}");
    assert!(!ws.join("warehouse/marts").exists(), "nothing may be published");
    // Nightly runs keep the unpriced lines and publish, with the count on the invoices.
    run_ok(&ws, PERIOD, &[]);
    let inv = table(&ws, "marts", "fct_invoices");
    let unpriced: i64 = inv.column("unpriced_charges").unwrap().i64().unwrap().sum().unwrap();
    // Customers with an invoice carry their unpriced count on it (one with only unpriced charges gets none).
    let invoiced = inv.column("customer_id").unwrap().as_materialized_series().clone();
    let rated = table(&ws, "int", "int_charges_rated");
    let n = rated
        .lazy()
        .filter(col("status").eq(lit("unpriced")).and(col("customer_id").is_in(lit(invoiced).implode(false), false)))
        .collect()
        .unwrap()
        .height() as i64;
    assert!(n > 0);
    assert_eq!(unpriced, n);
}

#[test]
fn a_bad_rate_card_is_exit_2_naming_file_line_and_column() {
    let (_t, ws) = workspace();
    let path = ws.join("reference/rate_cards.csv");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("broken,*,*,*,,,,markup_on_kost,0.1,,,\n");
    let line = text.lines().count();
    std::fs::write(&path, text).unwrap();
    let out = run(&ws, PERIOD, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("rate_cards.csv:{line}: column `method`")), "{err}");
    assert!(!ws.join("warehouse/marts").exists());
}

#[test]
fn explain_walks_a_rated_line_back_to_its_source() {
    let (_t, ws) = workspace();
    run_ok(&ws, PERIOD, &[]);
    let rated = table(&ws, "int", "int_charges_rated");
    let part = rated.column("part_id").unwrap().str().unwrap().get(0).unwrap().to_string();
    let src = rated.column("source_file").unwrap().str().unwrap().get(0).unwrap().to_string();
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    let out = cspbill_ok(&["explain", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", wh.to_str().unwrap(), "--line", &part, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j.to_string().contains(&src), "{j}");

    // From an invoice line down to its parts: the parts' prices sum to the unrounded amount.
    let lines = table(&ws, "marts", "fct_invoice_lines");
    let enterprise = lines.clone().lazy().filter(col("line_type").eq(lit("usage")).and(col("part_count").gt(lit(1i64)))).collect().unwrap();
    let id = enterprise.column("invoice_line_id").unwrap().str().unwrap().get(0).unwrap().to_string();
    let unrounded = pipeline::decimal::any_to_decimal(&enterprise.column("amount_unrounded").unwrap().get(0).unwrap()).unwrap();
    let out = cspbill_ok(&["explain", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", wh.to_str().unwrap(), "--invoice-line", &id, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = j["parts"].as_array().unwrap();
    assert_eq!(parts.len() as i64, enterprise.column("part_count").unwrap().i64().unwrap().get(0).unwrap());
    let total: Decimal = parts.iter().map(|p| p["price"].as_str().unwrap().parse::<Decimal>().unwrap()).sum();
    assert_eq!(total, unrounded);
    assert!(parts.iter().all(|p| !p["source_file"].as_str().unwrap().is_empty() && !p["rate_rule_id"].as_str().unwrap().is_empty()));
    let text = cspbill_ok(&["explain", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", wh.to_str().unwrap(), "--invoice-line", &id]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("invoice line {id}")));
    // An unknown id is exit 2 saying where to find ids.
    let bad = cspbill(&["explain", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", wh.to_str().unwrap(), "--invoice-line", "nope"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Issue 11 item 3: a daily-usage row dated in another month belongs to that month. It is set aside and counted
/// (rows in = staged + rejected + duplicates + set aside + other period), with a warning naming the file and the
/// period, and the run publishes; before, the write failed on a row of period 2025-05.
#[test]
fn usage_rows_of_another_period_are_set_aside_and_counted() {
    let (_t, ws) = workspace();
    let file = walk(&ws.join("inputs/2025-06")).into_iter().find(|p| p.to_string_lossy().contains("Usage")).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    let header = split_csv(lines[0].trim_end());
    let (ud, bt) = (
        header.iter().position(|h| h == "UsageDate").unwrap(),
        header.iter().position(|h| h == "BillingPreTaxTotal").unwrap(),
    );
    let end = if lines[1].ends_with("\r\n") { "\r\n" } else { "\n" };
    let mut f = split_csv(lines[1].trim_end_matches(['\r', '\n']));
    let moved: Decimal = f[bt].parse().unwrap();
    f[ud] = "05/31/2025".into();
    lines[1] = format!("{}{end}", f.iter().map(|x| if x.contains(',') || x.contains('"') { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.clone() }).collect::<Vec<_>>().join(","));
    std::fs::write(&file, lines.concat()).unwrap();

    let out = run(&ws, PERIOD, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = manifest(&ws);
    let name = file.file_name().unwrap().to_str().unwrap();
    let input = m["inputs"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap().clone();
    assert_eq!(input["other_period"], 1, "{input}");
    assert_eq!(input["cost_other_period"].as_str().unwrap().parse::<Decimal>().unwrap(), moved);
    assert!(m["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true));
    let warned = m["warnings"].as_array().unwrap().iter().any(|w| {
        let w = w.as_str().unwrap();
        w.contains(name) && w.contains("2025-05") && w.contains("another period")
    });
    assert!(warned, "{:?}", m["warnings"]);
    // The row is in no table of June.
    let usage = table(&ws, "staged", "stg_pc_daily_usage");
    let may = usage.column("usage_date").unwrap().date().unwrap().as_date_iter().flatten().filter(|d| d.format("%Y-%m").to_string() == "2025-05").count();
    assert_eq!(may, 0);
}
