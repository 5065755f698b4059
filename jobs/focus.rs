//! The FOCUS 1.2 dataset of a run (issue #13): `marts/focus_cost_and_usage` streamed into the spool like the other
//! big tables, its invariant (Σ BilledCost per InvoiceId = the invoice's subtotal) checked into the manifest, one
//! FOCUS Parquet file per invoice beside the invoice exports, and the `cspbill focus` command. The mapping itself
//! is the pure stage `pipeline::focus`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use pipeline::invoice::cells;
use pipeline::{RunContext, RunMode};
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{fct_invoices as fi, focus_cost_and_usage as fc};

use crate::cli::PeriodArgs;
use crate::manifest::{Manifest, OutputTable};
use crate::spool::{Spool, SpoolTable};
use crate::stages::{Computed, Stop, TableData};

/// Inputs of the FOCUS dataset, all already computed by the run.
pub struct FocusSources<'a> {
    /// `int_charges_rated` (a scan of its spool file).
    pub rated: LazyFrame,
    /// `stg_pc_daily_usage` and `stg_pc_invoice_lines` (scans), for subscription names.
    pub usage: LazyFrame,
    pub invoice_lines: LazyFrame,
    pub invoices: &'a DataFrame,
    pub lines: &'a DataFrame,
}

/// Builds `focus_cost_and_usage`, streams it into the spool (never collected) and checks that Σ BilledCost per
/// InvoiceId equals each invoice's subtotal, exactly (a failed check fails the run before anything is published).
pub fn spool_focus(ctx: &RunContext, src: FocusSources, spool: &Spool, m: &mut Manifest) -> Result<SpoolTable> {
    let subs = subscription_names(src.usage, src.invoice_lines)?;
    let path = spool.path(&format!("tables/{}.parquet", fc::TABLE))?;
    let t = sink_focus(ctx, src.rated, src.invoices, src.lines, &subs, &path)?;
    check_sums(&t, src.invoices, m)?;
    Ok(t)
}

/// The subscription names FOCUS rows carry, from the staged usage and invoice lines (small: one row per
/// subscription).
pub fn subscription_names(usage: LazyFrame, invoice_lines: LazyFrame) -> Result<DataFrame> {
    crate::spool::collect(pipeline::focus::subscription_names(usage, invoice_lines)?, "focus subscription names")
}

/// Streams the FOCUS rows of `invoices` (their lines and rated parts) into `path`, unchecked: for all invoices
/// ([`spool_focus`]) or one bucket of customers (`crate::buckets`, checked once over every bucket).
pub fn sink_focus(ctx: &RunContext, rated: LazyFrame, invoices: &DataFrame, lines: &DataFrame, subs: &DataFrame, path: &Path) -> Result<SpoolTable> {
    let parts = pipeline::invoice::line_parts(rated, lines);
    let carriers = crate::spool::collect(pipeline::focus::rounding_carriers(parts.clone()), "focus rounding carriers")?;
    let plan = pipeline::focus::focus_cost_and_usage(
        pipeline::focus::FocusInputs { parts, invoices, lines, carriers: &carriers, subscriptions: subs },
        ctx,
    )?;
    crate::spool::sink_table(plan, path, fc::TABLE, ctx.period)
}

/// The invariant: per invoice, Σ BilledCost of its FOCUS rows = its subtotal; no row outside an invoice.
pub(crate) fn check_sums(t: &SpoolTable, invoices: &DataFrame, m: &mut Manifest) -> Result<()> {
    let sums = crate::spool::collect(
        crate::spool::scan(&t.path)?.group_by([col(fc::InvoiceId)]).agg([col(fc::BilledCost).sum(), len().cast(DataType::Int64).alias("rows")]),
        "focus sums per invoice",
    )?;
    let ids = cells::strs(&sums, fc::InvoiceId)?;
    let billed = cells::decs(&sums, fc::BilledCost)?;
    let rows = cells::ints(&sums, "rows")?;
    let mut got: BTreeMap<Option<String>, Decimal> = BTreeMap::new();
    for i in 0..ids.len() {
        *got.entry(ids[i].clone()).or_default() += billed[i].unwrap_or_default();
    }
    let total_rows: i64 = rows.iter().flatten().sum();
    let numbers = cells::strs(invoices, fi::invoice_number)?;
    let subtotals = cells::decs(invoices, fi::subtotal)?;
    let mut bad = Vec::new();
    for (n, sub) in numbers.iter().zip(&subtotals) {
        let have = got.remove(n).unwrap_or_default();
        if Some(have) != *sub {
            bad.push(format!("`{}`: Σ BilledCost {have} vs subtotal {}", n.clone().unwrap_or_default(), sub.unwrap_or_default()));
        }
    }
    for (n, v) in &got {
        bad.push(format!("rows of invoice `{}` (Σ {v}) that is not in fct_invoices", n.clone().unwrap_or_default()));
    }
    let detail = if bad.is_empty() {
        format!("holds for {} invoice(s), {total_rows} row(s)", numbers.len())
    } else {
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    };
    m.check("focus: Σ BilledCost per InvoiceId = invoice subtotal", bad.is_empty(), detail);
    m.total("focus_rows", total_rows);
    Ok(())
}

/// The run's FOCUS spool table, if it computed one.
pub fn spooled(computed: &Computed) -> Option<&SpoolTable> {
    computed.tables.iter().find_map(|(name, _, d)| match d {
        TableData::Spool(t) if *name == fc::TABLE => Some(t),
        _ => None,
    })
}

/// Splits the FOCUS table into one Parquet file per invoice, `dir/period=P/customer=ID/NUMBER.focus.parquet`
/// (beside the invoice's CSV and XLSX), in one streaming pass; returns (path relative to `dir`, file).
pub fn customer_files(focus: &SpoolTable, invoices: &DataFrame, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    use crate::exports::sanitise;
    let numbers = cells::strs(invoices, fi::invoice_number)?;
    let customers = cells::strs(invoices, fi::customer_id)?;
    let period = focus.period.to_string();
    let mut folder_of: HashMap<String, String> = HashMap::new();
    for (n, c) in numbers.iter().zip(&customers) {
        if let (Some(n), Some(c)) = (n, c) {
            let rel = format!("period={}/customer={}/{}.focus.parquet", sanitise(&period), sanitise(c), sanitise(n));
            folder_of.insert(n.clone(), rel);
        }
    }
    let lf = crate::spool::scan(&focus.path)?; // the file as published: FOCUS columns only, no `period`
    // Split into temporary files, then rewrite each with fixed row groups: the published bytes depend only on
    // the rows (`crate::split`).
    let tmp = dir.join(".focus-split");
    let targets: HashMap<String, PathBuf> =
        folder_of.keys().map(|n| (n.clone(), tmp.join(format!("{}.parquet", sanitise(n))))).collect();
    let written = crate::split::split_by(lf, fc::InvoiceId, targets, "focus_cost_and_usage by invoice")?;
    // Small files one per task over the cores (file-level fan-out); large ones stream one after another, each
    // on every core (`crate::split::streams`).
    let what = |n: &str| format!("the FOCUS file of invoice `{n}`");
    let (mut large, mut small) = (Vec::new(), Vec::new());
    for (n, split_file) in written {
        let rows = crate::split::rows(&split_file, &what(&n))?;
        if crate::split::streams(rows) { large.push((n, split_file, rows)) } else { small.push((n, split_file, rows)) }
    }
    let finalise = |(n, split_file, rows): &(String, PathBuf, usize)| -> Result<(String, PathBuf)> {
        let rel = &folder_of[n];
        let path = dir.join(rel);
        crate::split::finalise(split_file, *rows, &path, &what(n))?;
        Ok((rel.clone(), path))
    };
    let mut out: Vec<Result<(String, PathBuf)>> = crate::fanout::map(&small, &finalise);
    out.extend(large.iter().map(&finalise));
    crate::spool::mem_probe("focus files finalised");
    let mut out = out.into_iter().collect::<Result<Vec<_>>>()?;
    let _ = fs::remove_dir_all(&tmp);
    out.sort();
    Ok(out)
}

/// Publishes the per-invoice FOCUS files with the run's commit, under `marts/exports/`.
pub fn publish_customer_files(computed: &Computed, txn: &mut crate::warehouse::Txn, m: &mut Manifest) -> Result<()> {
    let (Some((invoices, _, _)), Some(focus)) = (&computed.invoices, spooled(computed)) else {
        return Ok(());
    };
    let tmp = tempfile::tempdir_in(computed.spool.dir()).context("creating a temporary folder for the FOCUS exports")?;
    for (rel, path) in customer_files(focus, invoices, tmp.path())? {
        let target = format!("marts/exports/{rel}");
        let out = txn.put_local_file(&target, &path)?;
        m.outputs.push(OutputTable { table: "exports".into(), zone: "marts".into(), path: target, rows: 0, bytes: out.bytes, sha256: out.sha256 });
    }
    Ok(())
}

/// `cspbill focus`: runs the period through the FOCUS dataset (a nightly run: provisional invoices; a closed
/// period is left as it is), then says where the dataset is.
pub fn command(p: &PeriodArgs) -> Result<()> {
    crate::run::run_period(p, RunMode::Nightly, Stop::Focus)?;
    let cfg = crate::config::load(&p.config)?;
    let wh = crate::warehouse::Warehouse::open(&cfg.warehouse_url(p.warehouse.as_deref()), &cfg.warehouse.options)?;
    let root = wh.url().trim_end_matches('/').to_string();
    println!(
        "FOCUS 1.2 dataset of {period}: {root}/marts/{t}/period={period}/part-0.parquet; one file per invoice: {root}/marts/exports/period={period}/customer=ID/INVOICE.focus.parquet\nDuckDB: select * from read_parquet('{root}/marts/{t}/*/*.parquet', hive_partitioning=true) where period = '{period}'",
        period = p.period,
        t = fc::TABLE,
    );
    Ok(())
}
