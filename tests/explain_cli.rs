//! `cspbill explain` end to end: a rated period written as the warehouse lays it out, the binary run on it,
//! its text and JSON output checked, and the usage errors (unknown id) exiting 2.

use std::process::Command;

use cspbill::warehouse;

use pipeline::reference::{RefTable, stage_reference};
use pipeline::{Period, RunContext};
use polars::prelude::*;

fn staged(table: RefTable, file: &str, text: &str) -> DataFrame {
    let mut lines = text.trim().lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    let rows: Vec<(u64, Vec<String>)> = lines
        .enumerate()
        .map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect()))
        .collect();
    stage_reference(table, file, &header, &rows).unwrap().df
}


#[test]
fn explain_prints_a_rated_line_as_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let rate_cards = staged(
        RefTable::RateCards,
        "rate_cards.csv",
        "rule_id,customer_id,product_family,method,value\nany,*,*,markup_on_cost,0.5\nfam,*,azure_usage,markup_on_cost,15%",
    );
    let customers = staged(
        RefTable::Customers,
        "customers.csv",
        "customer_id,customer_name,invoice_currency,template\nc1,One,USD,smb",
    );
    let fx = pipeline::reference::empty(RefTable::FxRates);
    let s = |v: &str| Some(v.to_string());
    let cols: Vec<Column> = schemas::int_charges_allocated::COLUMNS
        .iter()
        .map(|(n, _)| {
            let v = match *n {
                "part_id" => s("L1#1"),
                "line_id" => s("L1"),
                "customer_id" | "source_customer_id" => s("c1"),
                "source_kind" => s("daily_usage"),
                "period" => s("2025-06"),
                "source_file" => s("usage.csv"),
                "line_number" => s("12"),
                "product_family" => s("azure_usage"),
                "product_id" => s("DZH318Z0BQ35"),
                "charge_date" => s("2025-06-03"),
                "billing_currency" | "pricing_currency" => s("USD"),
                "pc_to_bc_rate" | "q" | "f" | "share" => s("1"),
                "cost" => s("200"),
                "list" => s("240"),
                "pec" => s("0"),
                "allocation" => s("unallocated"),
                _ => None,
            };
            Column::new((*n).into(), vec![v])
        })
        .collect();
    let exprs: Vec<Expr> = schemas::int_charges_allocated::COLUMNS
        .iter()
        .map(|(n, t)| match t {
            schemas::Ty::Date => col(*n).str().to_date(StrptimeOptions {
                format: Some("%Y-%m-%d".into()),
                ..Default::default()
            }),
            schemas::Ty::Bool => col(*n).eq(lit("true")),
            t => col(*n).cast(t.dtype()),
        })
        .collect();
    let allocated = DataFrame::new_infer_height(cols).unwrap().lazy().select(exprs);
    let ctx = RunContext::for_period(Period::new(2025, 6).unwrap());
    let rated = pipeline::rate::int_charges_rated(allocated, &rate_cards, &customers, &fx, &ctx).unwrap();
    // Published as a run publishes: one committed version of the period.
    let wh_dir = tmp.path().join("warehouse");
    std::fs::create_dir_all(&wh_dir).unwrap();
    let wh = warehouse::Warehouse::open(wh_dir.to_str().unwrap(), &Default::default()).unwrap();
    let mut txn = wh.begin(Period::new(2025, 6).unwrap(), "explain-test").unwrap();
    txn.write_table(schemas::int_charges_rated::TABLE, schemas::Zone::Int, &mut rated.rated.collect().unwrap()).unwrap();
    txn.write_table(schemas::stg_rate_cards::TABLE, schemas::Zone::Staged, &mut rate_cards.clone()).unwrap();
    txn.commit(serde_json::json!({}), false).unwrap();
    let config = tmp.path().join("cspbill.toml");
    std::fs::write(
        &config,
        "[partner]\nname = \"MSP\"\n[inputs]\npartner_center = \"inputs/{period}\"\ncustomers = \"customers.csv\"\nrate_cards = \"rate_cards.csv\"\n",
    )
    .unwrap();

    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cspbill"));
        c.args(["explain", "--config", config.to_str().unwrap(), "--period", "2025-06"])
            .args(extra);
        c.env_remove("CSPBILL_WAREHOUSE");
        c.output().unwrap()
    };
    let o = run(&["--line", "L1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.lines().any(|l| l == "source: usage.csv line 12 (daily_usage)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "  price = cost × (1 + 0.15) = 200 × (1 + 0.15) = 230 USD"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  why: `fam` beats `any` at level `product_family`")),
        "{text}"
    );

    let o = run(&["--line", "L1#1", "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j[0]["price"], serde_json::json!("230"));
    assert_eq!(j[0]["margin"], serde_json::json!("30"));

    let o = run(&["--line", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}
