//! The stages of one period, run in order up to a `Stop`, with the invariants of DESIGN §6 checked into the
//! manifest at every step. Writes nothing to the warehouse: big tables stream from stage to stage through the
//! run's spool (`crate::spool`), small ones are collected. Both `crate::run` (a period's run) and `crate::late`
//! (re-stating a closed period for late data) call [`compute`], so neither depends on the other for it.


use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::invariants::{compare, describe};
use pipeline::{RunContext, RunMode};
use polars::prelude::*;
use schemas::Zone;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::error::Failure;
use crate::inputs::FileStats;
use crate::manifest::{Manifest, Timer};
use crate::reference::RefFrames;

/// The last stage a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Ingest,
    Charges,
    Allocate,
    Rate,
    Invoice,
    /// Through `focus_cost_and_usage`.
    Focus,
    All,
}

/// A pipeline error as a usage failure listing its configuration errors (exit 2), else as it is.
pub(crate) fn config_failure(e: pipeline::PipelineError) -> anyhow::Error {
    match e {
        pipeline::PipelineError::Configs(errs) => crate::reference::config_errors(&errs),
        pipeline::PipelineError::Config(err) => crate::reference::config_errors(&[err]),
        other => other.into(),
    }
}

/// A table of the run: a small collected frame, or a big one streamed into a spool file.
pub enum TableData {
    Frame(DataFrame),
    Spool(crate::spool::SpoolTable),
}

/// Everything a run of one period computes, before anything is written. Big tables are spool files, which live
/// as long as `spool`.
pub struct Computed {
    pub files: Vec<FileStats>,
    pub tables: Vec<(&'static str, Zone, TableData)>,
    /// `fct_invoices`, `fct_invoice_lines` (small) and the spool file of `fct_invoice_detail`.
    pub invoices: Option<(DataFrame, DataFrame, crate::spool::SpoolTable)>,
    /// With buckets ([`Tail::Buckets`]): every per-invoice file (CSV, XLSX, PDF, HTML, FOCUS), already written,
    /// with its path below `marts/exports/`; the run publishes these instead of writing them.
    pub rendered: Option<Vec<(String, std::path::PathBuf)>>,
    pub spool: std::sync::Arc<crate::spool::Spool>,
}

/// Fetches bucket K's finished work into a folder (a sharded run's reduce, `crate::shard`).
pub type FetchBucket<'a> = dyn Fn(u32, &std::path::Path) -> Result<crate::buckets::BucketOutput> + 'a;

/// How a full run (`Stop::All`) builds the per-invoice tail: the detail, FOCUS and per-invoice files.
pub enum Tail<'a> {
    /// For every invoice at once (`[run] buckets = 1`, the default).
    Whole,
    /// In `n` buckets of paying customers (`crate::buckets`), each built here or, with `fetch`, fetched from a
    /// sharded run's reduce.
    Buckets { n: u32, issuer: &'a crate::exports::Issuer, fetch: Option<&'a FetchBucket<'a>> },
}

/// Collects a plan whose result is small, with the streaming engine, naming the stage on failure.
fn collect(lf: LazyFrame, stage: &str) -> Result<DataFrame> {
    let started = std::time::Instant::now();
    let df = crate::spool::collect(lf, stage)?;
    debug!(table = stage, rows = df.height(), ms = started.elapsed().as_millis() as u64, "stage computed");
    Ok(df)
}

/// Streams a stage's big output into the spool (as it will be published) and returns a scan of it.
fn spool_table(spool: &crate::spool::Spool, lf: LazyFrame, table: &str, period: pipeline::Period) -> Result<(LazyFrame, crate::spool::SpoolTable)> {
    let started = std::time::Instant::now();
    let path = spool.path(&format!("tables/{table}.parquet"))?;
    let t = crate::spool::sink_table(lf, &path, table, period)?;
    debug!(table, ms = started.elapsed().as_millis() as u64, spool = %path.display(), "stage computed (streamed to the spool)");
    Ok((t.scan()?, t))
}

/// Rows of a spooled table (from its Parquet metadata).
fn rows_of(lf: LazyFrame, what: &str) -> Result<usize> {
    let df = collect(lf.select([len().cast(DataType::Int64).alias("n")]), what)?;
    Ok(df.column("n")?.i64()?.get(0).unwrap_or(0) as usize)
}

/// Fails with exit 2 when a stage's errors frame has rows, naming the first few.
fn errors_frame(errors: &DataFrame, stage: &str) -> Result<()> {
    if errors.height() == 0 {
        return Ok(());
    }
    let msgs: Vec<String> = errors
        .column("message")
        .ok()
        .and_then(|c| c.str().ok().map(|s| s.iter().flatten().take(5).map(str::to_string).collect()))
        .unwrap_or_default();
    Err(Failure::usage(format!(
        "{stage}: {} problem(s) the data revealed in the reference data; fix it and run again:\n  {}",
        errors.height(),
        msgs.join("\n  ")
    ))
    .into())
}

/// Records an invariant comparison in the manifest.
fn invariant(m: &mut Manifest, name: &str, diff: LazyFrame, keys: &[&str]) -> Result<()> {
    let d = collect(diff, name)?;
    let ok = d.height() == 0;
    let detail = if ok { "holds".to_string() } else { describe(&d, keys, 5) };
    m.check(name, ok, detail);
    Ok(())
}

/// A stage spinner on stderr when it is a terminal; hidden otherwise (schedulers read the logs).
fn progress() -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Runs the stages of `ctx.period` over its Partner Center inputs up to `stop`, checking every invariant
/// into `m`. Writes nothing to the warehouse: the big tables stream from stage to stage through `spool`.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    ctx: &RunContext,
    refs: &RefFrames,
    inputs: crate::snapshot::Inputs,
    stop: Stop,
    adjustments: DataFrame,
    m: &mut Manifest,
    timer: &mut Timer,
    spool: std::sync::Arc<crate::spool::Spool>,
    tail: Tail<'_>,
) -> Result<Computed> {
    let pb = progress();
    let mut tables: Vec<(&'static str, Zone, TableData)> = Vec::new();
    // Customer ids once, at the edge: the export's CustomerId in the spelling of customers.csv (DESIGN §4.2),
    // applied as the staged rows are written.
    let no_files = |location: &str, m: &mut Manifest| {
        warn!("no Partner Center files in `{location}`");
        m.warnings.push(format!("no Partner Center files in `{location}`"));
    };
    let snap = match inputs {
        crate::snapshot::Inputs::Folder(dir) => {
            pb.set_message(format!("reading {}", dir.display()));
            let files = crate::inputs::list_snapshot(&dir)?;
            if files.is_empty() {
                no_files(&dir.display().to_string(), m);
            }
            crate::inputs::read_snapshot_in(&files, ctx.period, std::sync::Arc::clone(&spool), Some(&refs.customers))?
        }
        crate::snapshot::Inputs::Typed { location, inputs } => {
            pb.set_message(format!("staging the typed inputs of {location}"));
            if inputs.is_empty() {
                no_files(&location, m);
            }
            crate::snapshot::stage_inputs(inputs, ctx.period, std::sync::Arc::clone(&spool), Some(&refs.customers))?
        }
    };
    let usage = snap.usage.clone();
    let invoice = snap.invoice_lines.clone();
    timer.lap("ingest");
    // Conservation of rows and amounts per file (DESIGN §6).
    for f in &snap.files {
        debug!(file = %f.name, format = ?f.format, rows_in = f.rows_in, staged = f.staged, rejected = f.rejected, duplicates = f.duplicates, set_aside = f.set_aside, "input file");
        m.check(
            &format!("ingest conservation `{}`", f.name),
            f.balances(),
            format!(
                "rows in {} = staged {} + rejected {} + duplicates {} + set aside {} + other period {}; cost in {} = staged {} + rejected {} + duplicates {} + set aside {} + other period {}",
                f.rows_in, f.staged, f.rejected, f.duplicates, f.set_aside, f.other_period, f.cost_in, f.cost_staged, f.cost_rejected, f.cost_duplicates, f.cost_set_aside, f.cost_other_period
            ),
        );
        m.warnings.extend(f.warnings.iter().cloned());
    }
    let usage_rows = rows_of(usage.clone(), "stg_pc_daily_usage")?;
    let invoice_rows = rows_of(invoice.clone(), "stg_pc_invoice_lines")?;
    let staged_rows: u64 = snap.files.iter().map(|f| f.staged).sum();
    m.check(
        "staged rows match the per-file counts",
        staged_rows == (usage_rows + invoice_rows) as u64,
        format!("files say {staged_rows}, staged tables hold {}", usage_rows + invoice_rows),
    );
    let rejected_rows: u64 = snap.files.iter().map(|f| f.rejected).sum();
    m.total("rejected_rows", rejected_rows);
    if rejected_rows > 0 {
        m.warnings.push(format!(
            "{rejected_rows} Partner Center row(s) rejected: see rejects/rejects_pc_*/period={} (source_file, line_number, reason); a close run allows {}",
            ctx.period, ctx.policies.max_rejected_rows
        ));
    }
    m.total("staged_rows", json!({"daily_usage": usage_rows, "invoice_lines": invoice_rows}));
    info!(daily_usage = usage_rows, invoice_lines = invoice_rows, rejected = rejected_rows, "staged");
    if ctx.mode == RunMode::Close && rejected_rows > ctx.policies.max_rejected_rows {
        m.check(
            "close: rejected rows within max_rejected_rows",
            false,
            format!(
                "{rejected_rows} Partner Center row(s) rejected, max_rejected_rows = {}; read rejects/ (reason, line), fix or replace the inputs, or raise the limit",
                ctx.policies.max_rejected_rows
            ),
        );
    }
    tables.push((schemas::stg_pc_daily_usage::TABLE, Zone::Staged, TableData::Spool(snap.paths.usage.clone())));
    tables.push((schemas::stg_pc_invoice_lines::TABLE, Zone::Staged, TableData::Spool(snap.paths.invoice_lines.clone())));
    tables.push((schemas::rejects_pc_daily_usage::TABLE, Zone::Rejects, TableData::Spool(snap.paths.rejects_usage.clone())));
    tables.push((schemas::rejects_pc_invoice_lines::TABLE, Zone::Rejects, TableData::Spool(snap.paths.rejects_invoice.clone())));
    for (t, df) in refs.tables() {
        tables.push((t, Zone::Staged, TableData::Frame(df.clone())));
    }
    let done = |tables, files, spool| Ok(Computed { files, tables, invoices: None, rendered: None, spool });
    if stop == Stop::Ingest {
        pb.finish_and_clear();
        return done(tables, snap.files, spool);
    }

    // Microsoft's own arithmetic as a data check, and reconciliation to what Microsoft invoiced.
    pb.set_message("charges");
    let ms = collect(pipeline::rate::microsoft_subtotal_check(invoice.clone()), "microsoft_subtotal_check")?;
    m.total("microsoft_subtotal_check", frame_json(&ms)?);

    let opts = pipeline::charges::ChargesOptions { has_daily_usage: usage_rows > 0 };
    let ch = pipeline::charges::int_charges(usage.clone(), invoice.clone(), &opts, ctx)?;
    let (charges, charges_path) = spool_table(&spool, ch.charges, schemas::int_charges::TABLE, ctx.period)?;
    let control = collect(ch.control_lines, "int_charges control lines")?;
    // The comparison reads the charges from the spool, not by re-running the stage.
    let has_control = ch.source == pipeline::AzureUsageSource::DailyUsage || opts.has_daily_usage;
    let comparison = if has_control {
        collect(pipeline::charges::compare_azure(charges.clone(), control.clone().lazy()), "azure control comparison")?
    } else {
        DataFrame::empty_with_schema(&pipeline::charges::control_comparison_schema())
    };
    m.total("azure_usage_source", format!("{:?}", ch.source));
    m.total("azure_control_comparison", frame_json(&comparison)?);
    // Σ cost staged = Σ cost in int_charges + Σ cost of the control-total lines, per source file.
    let staged_cost = concat(
        [
            usage.clone().select([col("source_file"), col("billing_pre_tax_total").alias("cost")]),
            invoice.clone().select([col("source_file"), col("subtotal").alias("cost")]),
        ],
        UnionArgs::default(),
    )?;
    let charged_cost = concat(
        [charges.clone().select([col("source_file"), col("cost")]), control.clone().lazy().select([col("source_file"), col("cost")])],
        UnionArgs::default(),
    )?;
    invariant(m, "staged = int_charges + control lines (rows and cost per source file)", compare(staged_cost, charged_cost, &["source_file"], "cost", true), &["source_file"])?;
    reconciliation(m, invoice.clone(), charges.clone())?;
    tables.push((schemas::int_charges::TABLE, Zone::Int, TableData::Spool(charges_path)));
    timer.lap("charges");
    if stop == Stop::Charges {
        pb.finish_and_clear();
        return done(tables, snap.files, spool);
    }

    pb.set_message("allocation");
    let al = pipeline::allocate::int_charges_allocated(charges.clone(), &refs.tag_rules, &refs.org_units, &refs.customers, ctx)
        .map_err(config_failure)?;
    errors_frame(&collect(al.errors, "allocation errors")?, "allocation")?;
    let (allocated, allocated_path) = spool_table(&spool, al.allocated, schemas::int_charges_allocated::TABLE, ctx.period)?;
    let compliance = collect(al.compliance, "int_tag_compliance")?;
    let malformed = collect(al.malformed_tags, "malformed tags")?;
    if malformed.height() > 0 {
        m.warnings.push(format!("{} charge(s) carry a Tags value that is not a JSON object; counted as untagged", malformed.height()));
    }
    m.warnings.extend(al.warnings);
    let keys = ["source_file", "customer_id"];
    invariant(
        m,
        "int_charges = allocated (cost per source file and customer of origin)",
        compare(
            charges.clone().select([col("source_file"), col("customer_id"), col("cost")]),
            allocated.clone().select([col("source_file"), col("source_customer_id").alias("customer_id"), col("cost")]),
            &keys,
            "cost",
            false,
        ),
        &keys,
    )?;
    tables.push((schemas::int_charges_allocated::TABLE, Zone::Int, TableData::Spool(allocated_path)));
    tables.push((schemas::int_tag_compliance::TABLE, Zone::Int, TableData::Frame(compliance)));
    timer.lap("allocate");
    if stop == Stop::Allocate {
        pb.finish_and_clear();
        return done(tables, snap.files, spool);
    }

    pb.set_message("rating");
    let rt = pipeline::rate::int_charges_rated(allocated.clone(), &refs.rate_cards, &refs.customers, &refs.fx_rates, ctx)
        .map_err(config_failure)?;
    errors_frame(&collect(rt.errors, "rating errors")?, "rating")?;
    let (rated, rated_path) = spool_table(&spool, rt.rated, schemas::int_charges_rated::TABLE, ctx.period)?;
    invariant(
        m,
        "allocated = rated (parts and cost per source file and customer of origin)",
        compare(
            allocated.clone().select([col("source_file"), col("source_customer_id").alias("customer_id"), col("cost")]),
            rated.clone().select([col("source_file"), col("source_customer_id").alias("customer_id"), col("cost")]),
            &keys,
            "cost",
            true,
        ),
        &keys,
    )?;
    let counts = collect(
        rated.clone().select([
            col("status").eq(lit("unpriced")).cast(DataType::Int64).sum().alias("unpriced"),
            col("fx_source").eq(lit("market_fallback")).cast(DataType::Int64).sum().alias("fallback"),
        ]),
        "rated counts",
    )?;
    let unpriced = counts.column("unpriced")?.i64()?.get(0).unwrap_or(0) as usize;
    let fallback = counts.column("fallback")?.i64()?.get(0).unwrap_or(0) as usize;
    m.total("unpriced_parts", unpriced);
    m.total("fx_market_fallback_parts", fallback);
    if let Some(w) = pipeline::rate::market_fallback_warning(rated.clone())? {
        m.warnings.push(w);
    }
    if unpriced > 0 {
        let msg = format!("{unpriced} charge part(s) unpriced (no rate rule matched, or the customer is not in customers.csv); see `status` and `unpriced_reason` in int_charges_rated");
        warn!("{msg}");
        m.warnings.push(msg.clone());
        if ctx.mode == RunMode::Close {
            m.check("close: no unpriced charges", false, msg);
        }
    }
    tables.push((schemas::int_charges_rated::TABLE, Zone::Int, TableData::Spool(rated_path)));
    timer.lap("rate");
    if stop == Stop::Rate {
        pb.finish_and_clear();
        return done(tables, snap.files, spool);
    }

    pb.set_message("invoices");
    let inv = pipeline::invoice::fct_invoices(
        pipeline::invoice::InvoiceInputs {
            rated: rated.clone(),
            customers: &refs.customers,
            org_units: &refs.org_units,
            psa_time: &refs.psa_time,
            manual_lines: &refs.manual_lines,
            fx_rates: &refs.fx_rates,
            adjustments,
        },
        ctx,
    )
    .map_err(config_failure)?;
    errors_frame(&inv.errors, "invoicing")?;
    for c in &inv.checks {
        m.check(&format!("invoice {} adds up", c.invoice_number), c.ok(), c.describe());
    }
    if let (Stop::All, Tail::Buckets { n, issuer, fetch }) = (stop, tail) {
        // The per-invoice tail in buckets of paying customers (`crate::buckets`).
        tables.push((schemas::fct_invoices::TABLE, Zone::Marts, TableData::Frame(inv.invoices.clone())));
        tables.push((schemas::fct_invoice_lines::TABLE, Zone::Marts, TableData::Frame(inv.lines.clone())));
        m.total("invoices", inv.invoices.height());
        timer.lap("invoice");
        pb.set_message("invoice detail, FOCUS and files, by bucket");
        let groups = crate::buckets::customers_by_bucket(&inv.invoices, n)?;
        let mut outs = Vec::with_capacity(groups.len());
        // What building a bucket here reads, once for every bucket (a sharded commit fetches them instead).
        let here = match fetch {
            None => Some((crate::focus::subscription_names(usage.clone(), invoice.clone())?, crate::documents::DocInputs::from_tables(&tables)?)),
            Some(_) => None,
        };
        for (k, customers) in groups.iter().enumerate() {
            let dir = spool.path(&format!("buckets/{k:05}/"))?;
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating `{}`: {e}", dir.display()))?;
            let out = match fetch {
                Some(f) => f(k as u32, &dir)?,
                None => {
                    let (subs, docs) = here.as_ref().ok_or_else(|| anyhow::anyhow!("the inputs of a bucket built here were not read"))?;
                    let (invoices, lines) = (crate::buckets::invoices_of(&inv.invoices, customers)?, crate::buckets::lines_of(&inv.lines, customers)?);
                    crate::buckets::run_bucket(
                        crate::buckets::BucketInput { ctx, rated: crate::buckets::parts_of(rated.clone(), customers), invoices: &invoices, lines: &lines, subs, issuer, docs },
                        &dir,
                    )?
                }
            };
            outs.push(out);
        }
        let merged = crate::buckets::merge(&outs, &spool)?;
        crate::focus::check_sums(&merged.focus, &inv.invoices, m)?;
        tables.push((schemas::fct_invoice_detail::TABLE, Zone::Marts, TableData::Spool(merged.detail.clone())));
        tables.push((schemas::focus_cost_and_usage::TABLE, Zone::Marts, TableData::Spool(merged.focus)));
        timer.lap("buckets");
        pb.finish_and_clear();
        return Ok(Computed { files: snap.files, tables, invoices: Some((inv.invoices, inv.lines, merged.detail)), rendered: Some(merged.files), spool });
    }
    let (_, detail_path) = spool_table(&spool, inv.detail, schemas::fct_invoice_detail::TABLE, ctx.period)?;
    tables.push((schemas::fct_invoices::TABLE, Zone::Marts, TableData::Frame(inv.invoices.clone())));
    tables.push((schemas::fct_invoice_lines::TABLE, Zone::Marts, TableData::Frame(inv.lines.clone())));
    tables.push((schemas::fct_invoice_detail::TABLE, Zone::Marts, TableData::Spool(detail_path.clone())));
    m.total("invoices", inv.invoices.height());
    timer.lap("invoice");
    if stop >= Stop::Focus {
        pb.set_message("focus");
        let src = crate::focus::FocusSources { rated: rated.clone(), usage: usage.clone(), invoice_lines: invoice.clone(), invoices: &inv.invoices, lines: &inv.lines };
        let focus = crate::focus::spool_focus(ctx, src, &spool, m)?;
        tables.push((schemas::focus_cost_and_usage::TABLE, Zone::Marts, TableData::Spool(focus)));
        timer.lap("focus");
    }
    pb.finish_and_clear();
    Ok(Computed { files: snap.files, tables, invoices: Some((inv.invoices, inv.lines, detail_path)), rendered: None, spool })
}

/// Reconciliation to Microsoft (issue #7): per customer, Σ Subtotal of the invoice file against Σ cost charged
/// from it and from daily usage, so the MSP sees whether it billed everything it was billed for.
fn reconciliation(m: &mut Manifest, invoice: LazyFrame, charges: LazyFrame) -> Result<()> {
    let file = invoice
        .clone()
        .group_by([col("customer_id")])
        .agg([col("subtotal").sum().alias("microsoft_invoice_subtotal"), len().cast(DataType::Int64).alias("invoice_lines")]);
    let charged = charges.group_by([col("customer_id")]).agg([
        col("cost").filter(col("source_kind").eq(lit("invoice_line"))).sum().alias("charged_from_invoice_lines"),
        col("cost").filter(col("source_kind").eq(lit("daily_usage"))).sum().alias("charged_from_daily_usage"),
    ]);
    let both = file
        .join(charged, [col("customer_id")], [col("customer_id")], JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns))
        .sort(["customer_id"], Default::default());
    let df = collect(both, "reconciliation")?;
    let total = collect(invoice.select([col("subtotal").sum()]), "microsoft invoice subtotal")?;
    let total = pipeline::decimal::column_sum(&total, "subtotal")?;
    m.total("microsoft_invoice_subtotal", total.to_string());
    m.total("reconciliation_by_customer", frame_json(&df)?);
    Ok(())
}

/// A small frame as JSON rows for the manifest (decimals as exact strings).
pub fn frame_json(df: &DataFrame) -> Result<Value> {
    let mut rows = Vec::new();
    for i in 0..df.height().min(1000) {
        let mut obj = serde_json::Map::new();
        for c in df.columns() {
            let v = c.get(i)?;
            let j = match &v {
                AnyValue::Null => Value::Null,
                AnyValue::Decimal(..) => Value::String(pipeline::decimal::any_to_decimal(&v).map(|d| d.to_string()).unwrap_or_default()),
                AnyValue::Int64(x) => (*x).into(),
                AnyValue::Int32(x) => (*x).into(),
                AnyValue::UInt32(x) => (*x).into(),
                AnyValue::UInt64(x) => (*x).into(),
                AnyValue::Boolean(b) => (*b).into(),
                other => Value::String(other.str_value().to_string()),
            };
            obj.insert(c.name().to_string(), j);
        }
        rows.push(Value::Object(obj));
    }
    Ok(Value::Array(rows))
}

