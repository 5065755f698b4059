//! Renders one enterprise invoice with N resource rows (default 200,000) to PDF and HTML and prints the time and
//! the peak resident memory (issue #14 point 3). The detail is generated chunk by chunk (100,000 rows at most, as
//! `exports::DetailByInvoice` hands it), so the rows are never all in memory; the figures show that the
//! document's memory stays flat as rows grow. Not a test: run it by hand (see benches/README.md).
//!
//!   cargo test --bench invoice_documents -- 200000     # debug build (what this machine may build)
//!   cargo bench --bench invoice_documents -- 200000    # release build

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use chrono::NaiveDate;
use cspbill::documents::present::{Locale, RawLine};
use cspbill::documents::{CustomerInfo, Doc, write_documents};
use cspbill::exports::Issuer;
use pipeline::invoice::cells;
use polars::prelude::{Column, DataFrame};
use rust_decimal::Decimal;
use schemas::{Ty, fct_invoice_detail as det};

const LINES: usize = 200;
const CHUNK: usize = 100_000;

fn vm_hwm_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024))
        .unwrap_or(0)
}

/// Rows `from..to` of the synthetic detail: line `i % LINES`, 40 resources, 30 days.
fn chunk(from: usize, to: usize) -> DataFrame {
    let n = to - from;
    let mut cols = Vec::new();
    for (name, ty) in det::COLUMNS {
        let c = match *ty {
            Ty::Str => cells::str_column(
                name,
                &(from..to)
                    .map(|i| match *name {
                        det::invoice_number => Some("BENCH-202506-0001".to_string()),
                        det::invoice_line_id => Some(format!("BENCH-202506-0001-{:04}", 1 + i % LINES)),
                        det::part_id => Some(format!("part-{i:09}")),
                        det::resource_group => Some(format!("rg-app-{}", i % 17)),
                        det::resource_uri => Some(format!("/subscriptions/s-{}/resourceGroups/rg-app-{}/providers/Microsoft.Compute/virtualMachines/vm-{:05}", i % LINES, i % 17, i % 40_000)),
                        det::meter_category => Some("Virtual Machines".into()),
                        det::meter_name => Some("D2s v5".into()),
                        det::tag_rule_id => Some(format!("TR-{}", i % 9)),
                        det::unit_path => Some(format!("BU-{}/P-{}", i % 3, i % 9)),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Ty::Dec => cells::dec_column(name, &(from..to).map(|i| Some(Decimal::new(123_456 + (i % 1000) as i64, 5))).collect::<Vec<_>>()),
            Ty::Date => cells::date_column(name, &(from..to).map(|i| NaiveDate::from_ymd_opt(2025, 6, 1 + (i % 30) as u32)).collect::<Vec<_>>()),
            _ => Column::new((*name).into(), vec![0i64; n]),
        };
        cols.push(c);
    }
    DataFrame::new_infer_height(cols).expect("a detail chunk")
}

fn main() -> Result<()> {
    let rows: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let issuer = Issuer { name: "Fabrikam Cloud Partners Ltd".into(), address: "1 Harbour Exchange Square, London".into(), ..Issuer::default() };
    let rules: HashMap<String, String> = (0..9).map(|k| (format!("TR-{k}"), format!("tag cost-center = CC-{k}00"))).collect();
    let lines: Vec<RawLine> = (1..=LINES)
        .map(|no| RawLine {
            line_no: no as i64,
            line_type: "usage".into(),
            description: format!("Virtual Machines, subscription s-{}, BU-{}", no % LINES, no % 3),
            quantity: Some(Decimal::new(720, 0)),
            unit: "1 Hour".into(),
            amount: Decimal::new(12_345, 2),
            amount_unrounded: Some(Decimal::new(1_234_512, 4)),
            part_count: (rows / LINES) as i64,
            invoice_line_id: format!("BENCH-202506-0001-{no:04}"),
            ..RawLine::default()
        })
        .collect();
    let doc = Doc {
        number: "BENCH-202506-0001".into(),
        period: "2025-06".into(),
        customer_id: "bench".into(),
        customer_name: "Contoso Holdings AG".into(),
        currency: "EUR".into(),
        template: "enterprise".into(),
        status: "provisional".into(),
        invoice_date: NaiveDate::from_ymd_opt(2025, 7, 1).expect("a date"),
        due_date: NaiveDate::from_ymd_opt(2025, 7, 31),
        subtotal: Decimal::new(12_345, 2) * Decimal::from(LINES),
        tax: Decimal::ZERO,
        total: Decimal::new(12_345, 2) * Decimal::from(LINES),
        unpriced: 0,
        lines,
        issuer: &issuer,
        customer: CustomerInfo { locale: Locale::DeDe, ..CustomerInfo::default() },
        tag_rules: &rules,
    };
    let dir = tempfile::tempdir()?;
    let before = vm_hwm_mib();
    let started = Instant::now();
    let detail_of = |_: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>| -> Result<()> {
        let mut from = 0;
        while from < rows {
            let to = (from + CHUNK).min(rows);
            f(&chunk(from, to))?;
            from = to;
        }
        Ok(())
    };
    let [pdf, html] = write_documents(dir.path(), "BENCH-202506-0001", &doc, &detail_of)?;
    let secs = started.elapsed().as_secs_f64();
    let (pdf_b, html_b) = (std::fs::metadata(&pdf)?.len(), std::fs::metadata(&html)?.len());
    let pdf_text = std::fs::read(&pdf)?;
    let text = String::from_utf8_lossy(&pdf_text);
    let pages: String = text[text.find("/Type /Pages").unwrap_or(0)..].split("/Count ").nth(1).unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
    println!(
        "rows {rows}: {secs:.1} s, peak RSS {} MiB (before rendering {before} MiB), PDF {pages} pages {:.1} MiB, HTML {:.1} MiB",
        vm_hwm_mib(),
        pdf_b as f64 / 1048576.0,
        html_b as f64 / 1048576.0
    );
    Ok(())
}
