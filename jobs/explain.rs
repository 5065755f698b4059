//! `cspbill explain`: from a rated line (a `line_id` or `part_id` of `int_charges_rated`) down to its source
//! file and line, raw amounts, tag rule, rate rule and why it won, FX step and arithmetic. The explanation
//! itself is built and rendered by `pipeline::rate::explain` (pure, tested there); this file only finds the
//! rows in the warehouse and prints.

use anyhow::{Context, Result};
use polars::prelude::{DataFrame, Expr, LazyFrame, PlRefPath, ScanArgsParquet, SortMultipleOptions, col, lit};

use crate::cli::{ExplainFormat, PeriodArgs};
use crate::error::Failure;

pub fn explain(p: &PeriodArgs, line: Option<String>, invoice_line: Option<String>, f: ExplainFormat) -> Result<()> {
    let Some(id) = line else {
        let id = invoice_line.unwrap_or_default();
        return Err(Failure::usage(format!(
            "explaining invoice line `{id}` is not built yet; pass `--line` with a line_id or part_id from `int_charges_rated`"
        ))
        .into());
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
    let mut texts = Vec::new();
    let mut values = Vec::new();
    for i in 0..rows.height() {
        let row = rows.slice(i as i64, 1);
        let e = pipeline::rate::explain::explain_rated(&row, &rate_cards)?;
        match f {
            ExplainFormat::Text => texts.push(e.to_text()),
            ExplainFormat::Json => values.push(serde_json::to_value(&e)?),
        }
    }
    match f {
        ExplainFormat::Text => print!("{}", texts.join("\n")),
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&serde_json::Value::Array(values))?),
    }
    Ok(())
}

/// The warehouse root of the run, a local folder. Object-store URLs wait for `crate::warehouse`.
fn warehouse_root(p: &PeriodArgs) -> Result<std::path::PathBuf> {
    let cfg = crate::config::load(&p.config)?;
    let url = cfg.warehouse_url(p.warehouse.as_deref());
    if crate::config::is_url(&url) {
        return Err(Failure::usage(format!(
            "`explain` reads only a local warehouse for now, not `{url}`; pass --warehouse with a local folder"
        ))
        .into());
    }
    Ok(std::path::PathBuf::from(url))
}

/// Scans `ROOT/ZONE/TABLE/period=P/*.parquet`.
// TODO(lead): replace with `crate::warehouse` (the committed snapshot of the period, any object store).
fn scan_period_table(p: &PeriodArgs, zone: schemas::Zone, table: &str) -> Result<LazyFrame> {
    let root = warehouse_root(p)?;
    let dir = root.join(zone.dir()).join(table).join(format!("period={}", p.period));
    if !dir.is_dir() {
        return Err(Failure::usage(format!(
            "`{}` has no `{table}` for period {}; run `cspbill run --period {}` first",
            root.display(),
            p.period,
            p.period
        ))
        .into());
    }
    let glob = dir.join("*.parquet").to_string_lossy().into_owned();
    let args = ScanArgsParquet {
        glob: true,
        ..Default::default()
    };
    LazyFrame::scan_parquet(PlRefPath::new(glob), args)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("reading `{table}` of period {}", p.period))
}

/// The committed `int_charges_rated` of the period, lazily: the caller filters before collecting, so a
/// month of millions of parts is scanned with predicate pushdown, not loaded.
fn load_rated(p: &PeriodArgs) -> Result<LazyFrame> {
    let names: Vec<Expr> = schemas::int_charges_rated::names().into_iter().map(col).collect();
    Ok(scan_period_table(p, schemas::int_charges_rated::ZONE, schemas::int_charges_rated::TABLE)?.select(names))
}

/// The period's `stg_rate_cards`, to recompute the candidate rules.
fn load_rate_cards(p: &PeriodArgs) -> Result<DataFrame> {
    let names: Vec<Expr> = schemas::stg_rate_cards::names().into_iter().map(col).collect();
    Ok(
        scan_period_table(p, schemas::stg_rate_cards::ZONE, schemas::stg_rate_cards::TABLE)?
            .select(names)
            .collect()?,
    )
}
