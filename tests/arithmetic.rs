//! Invoices of four sample_data customers against values computed outside cspbill (issue 11 item 10): every
//! template (smb, trial, enterprise), a foreign currency (JPY at a fixed rate, rounded to whole yen), the trial's
//! spend cap, PSA service lines (one in EUR converted for a USD customer), a manual line, a fixed seat price
//! with proration and a refund, and tag-rule splits into org units.
//!
//! The expected lines come from `tests/arithmetic/recompute.py`, which reads `sample_data/` with Python's
//! `decimal` module and DESIGN §5 as its only guide (no cspbill code); `tests/ARITHMETIC.md` works through
//! each customer by hand. The second test re-runs the script (when a Python 3 is available) so the constants
//! below cannot drift from that independent computation.

mod support;

use std::path::Path;

use polars::prelude::*;
use rust_decimal::Decimal;
use support::*;

/// `customer_id|line_type|quantity|amount`, sorted, as `recompute.py --lines` prints them.
const EXPECTED: &str = "\
5eddb406-4e06-4586-9b4f-2af187103543|license|37|890.24
5eddb406-4e06-4586-9b4f-2af187103543|license|4|26.88
5eddb406-4e06-4586-9b4f-2af187103543|manual|12|420
5eddb406-4e06-4586-9b4f-2af187103543|one_time|1|112.44
5eddb406-4e06-4586-9b4f-2af187103543|refund|-17|-402.68
5eddb406-4e06-4586-9b4f-2af187103543|service|6|900
5eddb406-4e06-4586-9b4f-2af187103543|usage|6981.77223597|573.61
bcd7627a-2cb9-4dd7-9014-0831806f8ba2|spend_cap_credit|1|-143.69
bcd7627a-2cb9-4dd7-9014-0831806f8ba2|usage|4963.79853198|343.69
9957f5d0-dd59-4105-b1f7-88e9ebcf616a|license|14|49743
9957f5d0-dd59-4105-b1f7-88e9ebcf616a|license|2|1938
9957f5d0-dd59-4105-b1f7-88e9ebcf616a|usage|6158.799718331|67271
4b1f1fb2-933d-4ccf-8567-b12dbf790509|license|112|4515.84
4b1f1fb2-933d-4ccf-8567-b12dbf790509|license|27|120.96
4b1f1fb2-933d-4ccf-8567-b12dbf790509|service|1.25|189.85
4b1f1fb2-933d-4ccf-8567-b12dbf790509|service|8|1200
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|0.199999998|3.89
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|0.299999997|5.83
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|0.499999995|9.72
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|0.99999999|19.43
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|12.6739299|1.09
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|13.0639518|29.61
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|131.8|11.83
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|1440|370.87
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|1440|370.87
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|144|0.71
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|19.2484|0.57
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|197.7|17.75
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|21.1232165|1.81
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|21.773253|49.35
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|216|1.06
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|2289.7745|70.55
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|28.8726|0.85
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|3082.37319999|123.54
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|3188.10179998|120.82
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|329.5|29.58
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|360|1.77
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|48.121|1.42
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|5181872|81.63
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|65.059217|5.59
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|653|58.61
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|661|59.33
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|665|59.69
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|67.812882|5.82
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|68.307954|5.86
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|720|119.98
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|8.4492866|0.72
4b1f1fb2-933d-4ccf-8567-b12dbf790509|usage|8.7093012|19.74
";

/// Subtotals by customer, also by hand in ARITHMETIC.md.
const SUBTOTALS: [(&str, &str, &str); 4] = [
    ("5eddb406-4e06-4586-9b4f-2af187103543", "USD", "2520.49"),
    ("bcd7627a-2cb9-4dd7-9014-0831806f8ba2", "USD", "200.00"),
    ("9957f5d0-dd59-4105-b1f7-88e9ebcf616a", "JPY", "118952"),
    ("4b1f1fb2-933d-4ccf-8567-b12dbf790509", "USD", "7686.54"),
];

fn table(wh: &Path, zone: &str, name: &str) -> DataFrame {
    let f = wh.join(zone).join(name).join("period=2025-06/part-0.parquet");
    ParquetReader::new(std::fs::File::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).finish().unwrap()
}

fn dec(v: AnyValue) -> Decimal {
    pipeline::decimal::any_to_decimal(&v).unwrap()
}

#[test]
fn four_sample_invoices_match_the_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    let wh = ws.join("warehouse");
    cspbill_ok(&["run", "--config", ws.join("cspbill.toml").to_str().unwrap(), "--period", "2025-06", "--warehouse", wh.to_str().unwrap()]);
    let invoices = table(&wh, "marts", "fct_invoices");
    let lines = table(&wh, "marts", "fct_invoice_lines");
    let chosen: Vec<&str> = SUBTOTALS.iter().map(|s| s.0).collect();
    let mut got = Vec::new();
    for i in 0..lines.height() {
        let cust = lines.column("customer_id").unwrap().str().unwrap().get(i).unwrap().to_string();
        if !chosen.contains(&cust.as_str()) {
            continue;
        }
        let lt = lines.column("line_type").unwrap().str().unwrap().get(i).unwrap().to_string();
        let q = dec(lines.column("quantity").unwrap().get(i).unwrap());
        let a = dec(lines.column("amount").unwrap().get(i).unwrap());
        got.push(format!("{cust}|{lt}|{q}|{a}"));
    }
    let mut want: Vec<String> = EXPECTED.lines().map(str::to_string).collect();
    // Same order as the script: by customer in the chosen order, then the line text.
    let order = |l: &String| (chosen.iter().position(|c| l.starts_with(c)).unwrap(), l.clone());
    got.sort_by_key(order);
    want.sort_by_key(order);
    assert_eq!(got, want);
    for (cust, ccy, subtotal) in SUBTOTALS {
        let i = (0..invoices.height())
            .find(|&i| invoices.column("customer_id").unwrap().str().unwrap().get(i) == Some(cust))
            .unwrap_or_else(|| panic!("no invoice for {cust}"));
        assert_eq!(invoices.column("currency").unwrap().str().unwrap().get(i), Some(ccy));
        assert_eq!(dec(invoices.column("subtotal").unwrap().get(i).unwrap()), subtotal.parse::<Decimal>().unwrap(), "{cust}");
    }
}

#[test]
fn the_constants_are_what_the_independent_script_computes() {
    // Any Python 3 will do (the script needs only the standard library): the test venv's, else the system's.
    let candidates = [std::env::var("CSPBILL_PYTHON").ok(), Some("python3".into()), Some("python".into())];
    let Some(py) = candidates.into_iter().flatten().find(|p| std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success())) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have a python3 to re-run tests/arithmetic/recompute.py");
        eprintln!("skipping: no python3 to re-run tests/arithmetic/recompute.py");
        return;
    };
    let out = std::process::Command::new(py).arg(repo().join("tests/arithmetic/recompute.py")).arg("--lines").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), EXPECTED);
}
