//! Running a period: read the reference data and the period's Partner Center snapshot, run the stages
//! (`crate::stages`), check the invariants of DESIGN §6, and publish every table of the period in one commit. A
//! violated invariant fails the run (exit 1) before anything is published; bad input or configuration exits 2.

use std::path::Path;

use anyhow::{Context, Result};
use pipeline::{RunContext, RunMode};
use polars::prelude::*;
use serde_json::{Value, json};
use tracing::{info, info_span};

use crate::cli::{PeriodArgs, Severity};
use crate::config::{self, Config};
use crate::error::Failure;
use crate::inputs::FileStats;
use crate::manifest::{Manifest, OutputTable, Timer};
pub use crate::reference::RefFrames;
pub use crate::stages::{Computed, Stop, TableData, compute, frame_json};
use crate::stages::config_failure;
use crate::warehouse::Warehouse;

/// Reads the config's reference files and validates the tables whose rules span rows.
pub fn load_reference(cfg: &Config, period: pipeline::Period, m: &mut Manifest) -> Result<RefFrames> {
    let loaded = crate::reference::load(cfg)?;
    let r = &loaded.frames;
    let tag_file = cfg.inputs.tag_rules.as_deref().map(|p| cfg.resolve(p)).unwrap_or_else(|| "tag_rules.csv".into());
    let unit_file = cfg.inputs.org_units.as_deref().map(|p| cfg.resolve(p)).unwrap_or_else(|| "org_units.csv".into());
    let (tag_rules, org_units) = pipeline::allocate::validate_tag_rules(&r.tag_rules, &r.org_units, &tag_file, &unit_file)
        .map_err(config_failure)?;
    let rate_cards =
        pipeline::rate::validate_rate_cards(&r.rate_cards, &cfg.resolve(&cfg.inputs.rate_cards)).map_err(config_failure)?;
    // Manual lines are staged with the period they bill, so a period's partition holds its own lines only.
    let manual_lines = r
        .manual_lines
        .clone()
        .lazy()
        .filter(col(schemas::stg_manual_lines::period).eq(lit(period.to_string())))
        .collect()?;
    m.reference_files = serde_json::to_value(&loaded.files)?;
    m.warnings.extend(loaded.warnings.iter().cloned());
    Ok(RefFrames { org_units, rate_cards, tag_rules, manual_lines, ..r.clone() })
}

/// A unique, sortable run id: UTC time and process id. It names files and manifests; it never enters data rows.
fn new_run_id() -> String {
    format!("{}-{:05}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"), std::process::id() % 100_000)
}

/// Runs a period up to `stop`; a full run (`Stop::All`) also writes the run-health metrics (`crate::metrics`),
/// after a failure too.
pub fn run_period(p: &PeriodArgs, mode: RunMode, stop: Stop) -> Result<()> {
    run_period_from(p, mode, stop, Source::Snapshot)
}

/// Where a run reads the period's Partner Center inputs.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The snapshot folder of the config (`[inputs] partner_center`).
    Snapshot,
    /// The inputs a sharded run's plan uploaded and its map shards typed (`crate::shard`).
    Shards(&'a crate::shard::Plan),
}

/// [`run_period`] with its inputs from `source`: a sharded run's commit runs exactly this with
/// `Source::Shards`, so that it publishes what a run over the snapshot folder would.
pub fn run_period_from(p: &PeriodArgs, mode: RunMode, stop: Stop, source: Source<'_>) -> Result<()> {
    let started = chrono::Utc::now();
    let outcome = run_period_inner(p, mode, stop, source);
    if let (Err(e), Stop::All) = (&outcome, stop) {
        crate::metrics::after_failure(&p.config, &p.period.to_string(), if mode == RunMode::Close { "close" } else { "nightly" }, started, e);
    }
    outcome
}

fn run_period_inner(p: &PeriodArgs, mode: RunMode, stop: Stop, source: Source<'_>) -> Result<()> {
    let cfg = config::load(&p.config)?;
    let period = p.period;
    let run_id = new_run_id();
    let policies = cfg.policies(period, p.invoice_date);
    let ctx = RunContext { period, run_id: run_id.clone(), mode, policies };
    let url = cfg.warehouse_url(p.warehouse.as_deref());
    let span = info_span!("run", period = %period, run_id = %run_id, mode = ?mode);
    let _g = span.enter();
    let wh = Warehouse::open(&url, &cfg.warehouse.options)?;
    // A publish a killed run left half done is completed before anything else, even the early return below.
    wh.repair(period)?;
    let url = wh.url().to_string(); // redacted: no SAS token or password in the manifest or on stdout
    if let Some(c) = wh.committed(period)? {
        if c.closed {
            let pending = crate::late::pending_for_closed(&cfg, &wh, &ctx)?;
            println!(
                "period {period} is closed (run {}): its invoices never change. {pending} adjustment line(s) from late or restated data will be billed by the next open period's run (`cspbill run --period {}`)",
                c.run_id,
                period.next()
            );
            return Ok(());
        }
    }
    let mut m = Manifest::new(&run_id, &period.to_string(), if mode == RunMode::Close { "close" } else { "nightly" }, &url, chrono::Utc::now().to_rfc3339());
    m.policies = serde_json::to_value(&ctx.policies)?;
    m.config.insert("path".into(), cfg.path.display().to_string());
    m.config.insert("sha256".into(), crate::inputs_sha256(&std::fs::read(&cfg.path).unwrap_or_default()));
    // The period's lock first: a concurrent run of the same period fails here (exit 1) instead of doing the
    // work twice. Dropping `txn` on any error below releases it and leaves nothing visible.
    // Change control: each controlled reference file is read from its latest approved version, not the working copy.
    let (cfg, pinned) = crate::change_control::pin(cfg, &wh, mode, &mut m)?;
    let mut txn = wh.begin(period, &run_id)?;
    let mut timer = Timer::new();
    let refs = load_reference(&cfg, period, &mut m)?;
    pinned.relabel(&mut m);
    timer.lap("reference");
    let adjustments = if stop >= Stop::Invoice {
        crate::late::adjustments_for(&cfg, &wh, &ctx, &mut m)?
    } else {
        DataFrame::empty_with_schema(&schemas::fct_invoice_lines::schema())
    };
    let snapshot_dir = cfg.partner_center_location(period);
    let spool_dir = cfg.run.spool_dir.as_deref().map(|d| cfg.resolve(d));
    let spool = crate::spool::Spool::new(spool_dir.as_deref().map(Path::new))?;
    let (inputs, raw_objects) = match source {
        Source::Snapshot => (crate::snapshot::Inputs::Folder(snapshot_dir.into()), std::collections::HashMap::new()),
        Source::Shards(plan) => crate::shard::typed_inputs(&wh, plan, &spool, &mut m)?,
    };
    let issuer = crate::exports::Issuer::from(&cfg.partner);
    let buckets = match source {
        Source::Shards(plan) => plan.buckets,
        Source::Snapshot => cfg.buckets()?,
    };
    let fetch = |k: u32, dir: &Path| -> Result<crate::buckets::BucketOutput> {
        match source {
            Source::Shards(plan) => crate::shard::fetch_bucket(&wh, plan, k, dir, period),
            Source::Snapshot => Err(anyhow::anyhow!("bucket {k}: nothing to fetch a bucket from outside a sharded run")),
        }
    };
    let tail = match (buckets, source) {
        (1, _) => crate::stages::Tail::Whole,
        (n, Source::Snapshot) => crate::stages::Tail::Buckets { n, issuer: &issuer, fetch: None },
        (n, Source::Shards(_)) => crate::stages::Tail::Buckets { n, issuer: &issuer, fetch: Some(&fetch) },
    };
    m.total("buckets", buckets);
    let mut computed = compute(&ctx, &refs, inputs, stop, adjustments, &mut m, &mut timer, spool, tail)?;
    if let (Source::Shards(plan), Some((invoices, lines, _))) = (source, &computed.invoices) {
        if plan.buckets > 1 {
            crate::shard::verify_stage(&wh, plan, invoices, lines, &computed.spool)?;
        }
    }
    let ledger = crate::ledger::build(cfg.inputs.gl_accounts.is_some(), &wh, &ctx, &refs, &mut computed, &mut m)?;
    timer.lap("ledger");
    // The anomaly report (`marts/rpt_anomalies`) in every full run, nightly and close.
    let report = if stop == Stop::All {
        let r = crate::anomalies::build(&cfg, &ctx, &refs, &mut computed, &mut m)?;
        timer.lap("anomalies");
        Some(r)
    } else {
        None
    };
    m.inputs = Value::Array(computed.files.iter().map(file_json).collect());

    // Nothing is written before every invariant holds: a failed run publishes nothing and names the numbers.
    if let Some(f) = m.failures() {
        return Err(Failure::invariant(format!("period {period} not published: invariant violated:\n  {f}")).into());
    }
    let mut landed = 0;
    for f in &computed.files {
        let source = match f.kind {
            Some(crate::inputs::SourceKind::DailyUsage) => "pc_daily_usage",
            Some(crate::inputs::SourceKind::InvoiceLines) => "pc_invoice_lines",
            None => "pc_other",
        };
        // A sharded run lands the copy its plan uploaded (verified against the same SHA-256 then).
        let new = match raw_objects.get(&f.name) {
            Some(object) => wh.land_raw_copy(source, &raw_name(&f.name), &f.sha256, object)?,
            None => wh.land_raw_file(source, &raw_name(&f.name), &f.sha256, &f.path)?,
        };
        if new {
            landed += 1;
        }
    }
    m.total("raw_files_landed", json!({"new": landed, "already_there": computed.files.len() - landed}));
    timer.lap("land raw");
    for (table, zone, data) in &computed.tables {
        let out = match data {
            TableData::Frame(df) => txn.write_table(table, *zone, &mut df.clone()),
            TableData::Spool(t) => txn.write_table_file(table, *zone, &t.path, t.period_column),
        }
        .with_context(|| format!("writing `{table}`"))?;
        m.outputs.push(out);
    }
    timer.lap("write tables");
    if let Some(files) = &computed.rendered {
        // Built bucket by bucket (`crate::buckets`): the per-invoice files and the FOCUS files, already written.
        for (rel, path) in files {
            let target = format!("marts/exports/{rel}");
            let out = txn.put_local_file(&target, path)?;
            m.outputs.push(OutputTable { table: "exports".into(), zone: "marts".into(), path: target, rows: 0, bytes: out.bytes, sha256: out.sha256 });
        }
    } else if let Some((invoices, lines, detail)) = &computed.invoices {
        let tmp = tempfile::tempdir_in(computed.spool.dir()).context("creating a temporary folder for exports")?;
        let details = crate::exports::DetailByInvoice::split(detail, invoices, tmp.path())?;
        let docs = crate::documents::DocInputs::from_tables(&computed.tables)?;
        let written = crate::exports::write_exports_with(tmp.path(), invoices, lines, &|n: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>| details.chunks(n, f), &issuer, &docs)?;
        for path in written {
            let rel = path.strip_prefix(tmp.path()).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            let target = format!("marts/exports/{rel}");
            let out = txn.put_local_file(&target, &path)?;
            m.outputs.push(OutputTable { table: "exports".into(), zone: "marts".into(), path: target, rows: 0, bytes: out.bytes, sha256: out.sha256 });
        }
    }
    timer.lap("exports");
    if let Some(l) = &ledger {
        let tmp = tempfile::tempdir_in(computed.spool.dir()).context("creating a temporary folder for ledger exports")?;
        for path in crate::ledger::write_exports(tmp.path(), period, &l.journal, &l.trial_balance, &cfg.ledger)? {
            let rel = path.strip_prefix(tmp.path()).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            let target = format!("marts/exports/{rel}");
            let out = txn.put_local_file(&target, &path)?;
            m.outputs.push(OutputTable { table: "exports".into(), zone: "marts".into(), path: target, rows: 0, bytes: out.bytes, sha256: out.sha256 });
        }
    }
    timer.lap("ledger exports");
    if computed.rendered.is_none() {
        crate::focus::publish_customer_files(&computed, &mut txn, &mut m)?;
    }
    timer.lap("focus files");
    let new_anomalies = match &report {
        Some(r) => Some(crate::anomalies::publish_new(&cfg, &wh, &mut txn, r, &run_id, computed.spool.dir(), &mut m)?),
        None => None,
    };
    // The close report (`marts/reports/period=P/close.html`), last, so it links every export and shows every check.
    if stop == Stop::All {
        crate::close_report::publish(&cfg, &ctx, &refs, &computed, report.as_ref(), &mut txn, &mut m)?;
        timer.lap("close report");
    }
    m.timings_ms = timer.laps.clone();
    m.total("peak_rss_mib_by_stage", timer.peak_rss_mib.clone());
    m.total("rss_anon_mib_by_stage", timer.rss_anon_mib.clone());
    m.finished_at = chrono::Utc::now().to_rfc3339();
    m.status = "committed".into();
    let close = mode == RunMode::Close && stop == Stop::All;
    let manifest = serde_json::to_value(&m)?;
    let commit = txn.commit(manifest, close)?;
    info!(version = commit.version, outputs = m.outputs.len(), closed = close, "published");
    crate::change_control::audit_run(&wh, &m, close, commit.version, &commit.manifest);
    if stop == Stop::All {
        crate::metrics::after_success(&cfg, &m);
    }
    println!(
        "published {period} (run {run_id}, version {}{}) to {url}: {} table file(s); manifest {}",
        commit.version,
        if close { ", closed" } else { "" },
        m.outputs.len(),
        commit.manifest
    );
    if let Some(r) = &report {
        println!("{}", crate::anomalies::summary(&r.rows, period, Some(r.window.as_of), new_anomalies));
    }
    for w in m.warnings.iter().take(10) {
        crate::cli::report("warning", w, Value::Null);
    }
    if m.warnings.len() > 10 {
        crate::cli::report("warning", &format!("... and {} more in the manifest", m.warnings.len() - 10), Value::Null);
    }
    Ok(())
}

/// The file name a raw object is stored under: the input's name with folders flattened.
fn raw_name(name: &str) -> String {
    name.replace(['/', '\\'], "__")
}

/// One input file's statistics as JSON (decimals as exact strings).
fn file_json(f: &FileStats) -> Value {
    json!({
        "name": f.name, "path": f.path.display().to_string(), "sha256": f.sha256, "bytes": f.bytes,
        "kind": f.kind.map(|k| format!("{k:?}")), "format": f.format,
        "rows_in": f.rows_in, "staged": f.staged, "rejected": f.rejected, "duplicates": f.duplicates, "set_aside": f.set_aside,
        "other_period": f.other_period, "cost_other_period": f.cost_other_period.to_string(),
        "cost_in": f.cost_in.to_string(), "cost_staged": f.cost_staged.to_string(), "cost_rejected": f.cost_rejected.to_string(),
        "cost_duplicates": f.cost_duplicates.to_string(), "cost_set_aside": f.cost_set_aside.to_string(),
        "rounded_values": f.rounded_values, "padded_sku_ids": f.padded_sku_ids, "unknown_columns": f.unknown_columns,
    })
}

/// `cspbill anomalies` (see `crate::anomalies::command`).
pub fn anomalies(p: &PeriodArgs, fail_on: Option<Severity>) -> Result<()> {
    crate::anomalies::command(p, fail_on)
}
