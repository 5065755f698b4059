//! End to end on `sample_data/`: every invoice gets a PDF and an HTML document of its template beside its CSV
//! and XLSX (issue #14). `tests/documents_check.py` reads the invoice tables with DuckDB and checks the numbers
//! printed on the PDF (pdftotext) and in the HTML against them, the page counts per template, the pages rendered
//! to PNG (pdftoppm) and the HTML in headless Chromium; the check is shown to fail on a tampered table. A second
//! run into another warehouse gives byte-identical documents.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const PERIOD: &str = "2025-06";

fn run_into(ws: &Path, warehouse: &Path) {
    run_period(ws, warehouse, PERIOD, &[]);
}

fn run_period(ws: &Path, warehouse: &Path, period: &str, extra: &[&str]) {
    let cfg = ws.join("cspbill.toml");
    let mut args = vec!["run", "--config", cfg.to_str().unwrap(), "--period", period, "--warehouse", warehouse.to_str().unwrap()];
    args.extend_from_slice(extra);
    cspbill_ok(&args);
}

fn documents(warehouse: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = warehouse.join(format!("marts/exports/period={PERIOD}"));
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.file_name().unwrap().to_string_lossy().starts_with("customer=") {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if matches!(f.extension().and_then(|e| e.to_str()), Some("pdf" | "html")) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// Poppler's tools are needed to read the PDFs back; under CI (scripts/test.sh installs them) they must be there.
fn poppler() -> bool {
    let ok = Command::new("pdftotext").arg("-v").output().is_ok() && Command::new("pdftoppm").arg("-v").output().is_ok();
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have poppler-utils (scripts/test.sh installs them)");
        eprintln!("skipping the PDF read-back: pdftotext/pdftoppm not installed (apt-get install poppler-utils)");
    }
    ok
}

fn check(py: &str, warehouse: &Path) -> (bool, String) {
    check_period(py, warehouse, PERIOD)
}

fn check_period(py: &str, warehouse: &Path, period: &str) -> (bool, String) {
    let out = Command::new(py).arg(repo().join("tests/documents_check.py")).arg(warehouse).arg(period).output().expect("running tests/documents_check.py");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_sample_invoice_has_a_pdf_and_html_that_match_the_tables_and_rerender_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    let (a, b) = (tmp.path().join("wh-a"), tmp.path().join("wh-b"));
    run_into(&ws, &a);

    // One PDF and one HTML per invoice (10 sample customers, one invoice each).
    let docs = documents(&a);
    assert_eq!(docs.iter().filter(|p| p.extension().unwrap() == "pdf").count(), 10, "{docs:?}");
    assert_eq!(docs.iter().filter(|p| p.extension().unwrap() == "html").count(), 10, "{docs:?}");

    // Byte-identical re-render: no clock, no random ids.
    run_into(&ws, &b);
    let again = documents(&b);
    assert_eq!(docs.len(), again.len());
    for (x, y) in docs.iter().zip(&again) {
        assert_eq!(x.strip_prefix(&a).unwrap(), y.strip_prefix(&b).unwrap());
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{} differs between two runs", x.display());
    }

    let (Some(py), true) = (python(), poppler()) else { return };
    let (ok, out) = check(&py, &a);
    assert!(ok && out.starts_with("ok: 10 invoices"), "{out}");

    // The check can fail: one line amount changed by a cent in the table no longer matches the documents.
    let lines = a.join(format!("marts/fct_invoice_lines/period={PERIOD}/part-0.parquet"));
    let tamper = format!(
        "import pyarrow as pa, pyarrow.parquet as pq, decimal\np='{}'\nt=pq.read_table(p)\nv=t.column('amount').to_pylist()\nv[0]=v[0]+decimal.Decimal('0.01')\ni=t.schema.get_field_index('amount')\nt=t.set_column(i, t.schema.field(i), pa.array(v, type=t.schema.field(i).type))\npq.write_table(t, p)\n",
        lines.display()
    );
    let out = Command::new(&py).args(["-c", &tamper]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, out) = check(&py, &a);
    assert!(!ok && out.contains("amount"), "a tampered amount must fail the check:\n{out}");
}

#[test]
fn late_data_adjustments_get_their_own_section_naming_the_corrected_period() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    let wh = tmp.path().join("wh");
    // June is closed, then Microsoft restates one usage row; July bills the difference as adjustment lines.
    run_period(&ws, &wh, PERIOD, &["--mode", "close"]);
    restate_one_usage_row(&ws.join("inputs/2025-06"));
    std::fs::create_dir_all(ws.join("inputs/2025-07")).unwrap();
    run_period(&ws, &wh, "2025-07", &["--invoice-date", "2025-08-01"]);
    let html: Vec<PathBuf> = walk(&wh.join("marts/exports/period=2025-07")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "html")).collect();
    assert!(!html.is_empty(), "July has an invoice carrying the adjustment");
    let with_section = html.iter().filter(|p| std::fs::read_to_string(p).unwrap().contains("Adjustments for 2025-06 (late Microsoft data)")).count();
    assert!(with_section >= 1, "no HTML names the corrected period");
    let (Some(py), true) = (python(), poppler()) else { return };
    for h in &html {
        let pdf = h.with_extension("pdf");
        let text = String::from_utf8(Command::new("pdftotext").args(["-layout"]).arg(&pdf).arg("-").output().unwrap().stdout).unwrap();
        let has_adjustment_line = std::fs::read_to_string(h).unwrap().contains("Adjustments for 2025-06");
        assert_eq!(text.contains("Adjustments for 2025-06 (late Microsoft data)"), has_adjustment_line, "{}", pdf.display());
    }
    let (ok, out) = check_period(&py, &wh, "2025-07");
    assert!(ok, "{out}");
}



