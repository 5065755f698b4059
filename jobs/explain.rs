//! `cspbill explain`: from a rated line (a `line_id` or `part_id` of `int_charges_rated`) down to its source
//! file and line, raw amounts, tag rule, rate rule and why it won, FX step and arithmetic. The explanation
//! itself is built and rendered by `pipeline::rate::explain` (pure, tested there); this file only finds the
//! rows in the warehouse and prints.

use anyhow::{Context, Result};
use polars::prelude::{DataFrame, Expr, IntoLazy, LazyFrame, SortMultipleOptions, col, lit};

use crate::cli::{ExplainFormat, PeriodArgs};
use crate::error::Failure;

pub fn explain(p: &PeriodArgs, line: Option<String>, invoice_line: Option<String>, f: ExplainFormat) -> Result<()> {
    let Some(id) = line else {
        return explain_invoice_line(p, &invoice_line.unwrap_or_default(), f);
    };
    let rated = load_rated(p)?;
    let wanted = col("part_id")
        .eq(lit(id.clone()))
        .or(col("line_id").eq(lit(id.clone())));
    let rows = rated
        .filter(wanted)
        .sort(["part_id"], SortMultipleOptions::default())
        .collect()
        .map_err(anyhow::Error::from)
        .context("reading `int_charges_rated`")?;
    if rows.height() == 0 {
        return Err(Failure::usage(format!(
            "no rated line has line_id or part_id `{id}` in period {}; copy an id from `int_charges_rated` of that period",
            p.period
        ))
        .into());
    }
    let rate_cards = load_rate_cards(p)?;
    // The approved rate-card version and the change behind each winning rule (records the access in `_audit/`).
    let cc = crate::change_control::Provenance::for_period(p, &format!("line {id}"))?;
    let mut texts = Vec::new();
    let mut values = Vec::new();
    for i in 0..rows.height() {
        let row = rows.slice(i as i64, 1);
        let e = pipeline::rate::explain::explain_rated(&row, &rate_cards)?;
        let rule = row.column("rate_rule_id").ok().and_then(|c| c.str().ok()?.get(0).map(str::to_string)).unwrap_or_default();
        match f {
            ExplainFormat::Text => texts.push(format!("{}{}", e.to_text(), cc.text(&rule))),
            ExplainFormat::Json => {
                let mut v = serde_json::to_value(&e)?;
                v["change_control"] = cc.json(&rule);
                values.push(v);
            }
        }
    }
    match f {
        ExplainFormat::Text => emit(&texts.join("\n")),
        ExplainFormat::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&serde_json::Value::Array(values))?)),
    }
}

/// Writes the explanation to stdout. A reader that stops early (`cspbill explain … | head`) closes the pipe:
/// that is not an error, so a broken pipe ends the command quietly with exit 0 (Rust's `print!` would panic).
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the explanation to stdout"),
    }
}

/// Reads a committed table of the period from the warehouse (any object store), or says what to run first.
fn read(p: &PeriodArgs, zone: schemas::Zone, table: &str) -> Result<DataFrame> {
    let cfg = crate::config::load(&p.config)?;
    let url = cfg.warehouse_url(p.warehouse.as_deref());
    let wh = crate::warehouse::Warehouse::open(&url, &cfg.warehouse.options)?;
    // A publish a killed run left half done is completed first.
    wh.repair(p.period)?;
    let url = wh.url();
    wh.read_table(table, zone, p.period)?.ok_or_else(|| {
        Failure::usage(format!("`{url}` has no `{table}` for period {}; run `cspbill run --period {}` first", p.period, p.period)).into()
    })
}

/// The committed `int_charges_rated` of the period. The warehouse reads the committed files of the period (a
/// month of parts in memory); filtering happens on the lazy frame.
fn load_rated(p: &PeriodArgs) -> Result<LazyFrame> {
    let names: Vec<Expr> = schemas::int_charges_rated::names().into_iter().map(col).collect();
    Ok(read(p, schemas::int_charges_rated::ZONE, schemas::int_charges_rated::TABLE)?.lazy().select(names))
}

/// The period's `stg_rate_cards`, to recompute the candidate rules.
fn load_rate_cards(p: &PeriodArgs) -> Result<DataFrame> {
    let names: Vec<Expr> = schemas::stg_rate_cards::names().into_iter().map(col).collect();
    Ok(read(p, schemas::stg_rate_cards::ZONE, schemas::stg_rate_cards::TABLE)?.lazy().select(names).collect()?)
}

/// `--invoice-line`: the invoice line, its rounding, and every rated part behind it with source, rules and FX.
fn explain_invoice_line(p: &PeriodArgs, id: &str, f: ExplainFormat) -> Result<()> {
    use pipeline::decimal::any_to_decimal;
    use schemas::{fct_invoice_detail as det, fct_invoice_lines as fl};
    let lines = read(p, fl::ZONE, fl::TABLE)?.lazy().filter(col(fl::invoice_line_id).eq(lit(id.to_string()))).collect()?;
    crate::change_control::Provenance::for_period(p, &format!("invoice line {id}"))?;
    if lines.height() == 0 {
        return Err(Failure::usage(format!(
            "no invoice line `{id}` in period {}; copy an `invoice_line_id` from fct_invoice_lines of that period",
            p.period
        ))
        .into());
    }
    let detail = read(p, det::ZONE, det::TABLE)?
        .lazy()
        .filter(col(det::invoice_line_id).eq(lit(id.to_string())))
        .sort([det::part_id], SortMultipleOptions::default())
        .collect()?;
    let s = |df: &DataFrame, c: &str, i: usize| -> String {
        df.column(c).ok().and_then(|c| c.get(i).ok()).map(|v| if v.is_null() { String::new() } else { v.str_value().to_string() }).unwrap_or_default()
    };
    let d = |df: &DataFrame, c: &str, i: usize| -> String {
        df.column(c).ok().and_then(|c| c.get(i).ok()).and_then(|v| any_to_decimal(&v)).map(|x| x.to_string()).unwrap_or_default()
    };
    // Source file and line of each part, from the rated table.
    let rated = load_rated(p)?
        .filter(col("invoice_currency").is_not_null())
        .select([col("part_id"), col("source_file"), col("line_number"), col("rate_method"), col("fx_source")])
        .collect()?;
    let mut source: std::collections::HashMap<String, (String, String, String, String)> = std::collections::HashMap::new();
    for i in 0..rated.height() {
        source.insert(s(&rated, "part_id", i), (s(&rated, "source_file", i), s(&rated, "line_number", i), s(&rated, "rate_method", i), s(&rated, "fx_source", i)));
    }
    let mut parts = Vec::new();
    for i in 0..detail.height() {
        let part = s(&detail, det::part_id, i);
        let (file, line, method, fx_source) = source.get(&part).cloned().unwrap_or_default();
        parts.push(serde_json::json!({
            "part_id": part, "line_id": s(&detail, det::line_id, i), "source_file": file, "source_line": line,
            "charge_date": s(&detail, det::charge_date, i), "resource_uri": s(&detail, det::resource_uri, i),
            "meter_or_product": format!("{} {}", s(&detail, det::meter_name, i), s(&detail, det::product_id, i)).trim().to_string(),
            "quantity": d(&detail, det::quantity, i), "cost": d(&detail, det::cost, i), "price": d(&detail, det::price, i),
            "rate_rule_id": s(&detail, det::rate_rule_id, i), "rate_method": method,
            "fx_rate": d(&detail, det::fx_rate, i), "fx_source": fx_source, "tag_rule_id": s(&detail, det::tag_rule_id, i),
        }));
    }
    let line = serde_json::json!({
        "invoice_line_id": id, "invoice_number": s(&lines, fl::invoice_number, 0), "customer_id": s(&lines, fl::customer_id, 0),
        "line_type": s(&lines, fl::line_type, 0), "description": s(&lines, fl::description, 0), "currency": s(&lines, fl::currency, 0),
        "quantity": d(&lines, fl::quantity, 0), "amount_unrounded": d(&lines, fl::amount_unrounded, 0), "amount": d(&lines, fl::amount, 0),
        "corrected_period": s(&lines, fl::corrected_period, 0), "original_line_id": s(&lines, fl::original_line_id, 0),
        "parts": parts,
    });
    use std::fmt::Write as _;
    let mut o = String::new();
    match f {
        ExplainFormat::Json => o = format!("{}\n", serde_json::to_string_pretty(&line)?),
        ExplainFormat::Text => {
            let g = |k: &str| line[k].as_str().unwrap_or_default().to_string();
            let _ = writeln!(o, "invoice line {} on invoice {} ({}), customer {}", id, g("invoice_number"), g("line_type"), g("customer_id"));
            let _ = writeln!(o, "  {}", g("description"));
            let _ = writeln!(o, "  quantity {}; amount {} {} = Σ prices {} rounded once to the currency's minor unit", g("quantity"), g("amount"), g("currency"), g("amount_unrounded"));
            if !g("corrected_period").is_empty() {
                let _ = writeln!(o, "  adjusts period {} (issued line {})", g("corrected_period"), g("original_line_id"));
            }
            let _ = writeln!(o, "  {} rated part(s):", detail.height());
            for part in line["parts"].as_array().into_iter().flatten().take(50) {
                let v = |k: &str| part[k].as_str().unwrap_or_default().to_string();
                let _ = writeln!(
                    o,
                    "  - {} from {} line {} ({}): cost {} -> price {} by rule {} ({}), fx {} ({}), tag rule {}",
                    v("part_id"), v("source_file"), v("source_line"), v("charge_date"), v("cost"), v("price"),
                    if v("rate_rule_id").is_empty() { "-".into() } else { v("rate_rule_id") }, v("rate_method"), v("fx_rate"), v("fx_source"),
                    if v("tag_rule_id").is_empty() { "-".into() } else { v("tag_rule_id") }
                );
            }
            if detail.height() > 50 {
                let _ = writeln!(o, "  ... and {} more (use --format json for all)", detail.height() - 50);
            }
            let _ = writeln!(o, "  `cspbill explain --line PART_ID` shows the arithmetic of one part");
        }
    }
    emit(&o)
}
