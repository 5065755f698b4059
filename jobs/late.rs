//! Late and restated data for closed periods (DESIGN §5 "Invoice", issue #7 point 6). A closed period's invoice
//! never changes. The run of an open period re-states each recently closed period whose input files changed since
//! its close (their sizes and SHA-256 against its committed manifest) from its current input snapshot
//! and the reference data staged when it closed, compares the result with what was issued (plus adjustments
//! already billed on later closed invoices), and bills the difference as `adjustment` lines on its own invoices.

use std::path::Path;

use anyhow::Result;
use pipeline::{Period, RunContext, RunMode};
use polars::prelude::*;
use schemas::{Zone, fct_invoice_lines as fl};

use crate::config::Config;
use crate::error::Failure;
use crate::manifest::{Manifest, Timer};
use crate::reference::RefFrames;
use crate::stages::{Stop, compute};
use crate::warehouse::{Commit, Warehouse};

/// How many periods back a run looks for closed periods to re-state.
pub const LOOKBACK_PERIODS: u32 = 3;

/// The adjustment lines the run of `ctx.period` bills for late data of closed earlier periods.
pub fn adjustments_for(cfg: &Config, wh: &Warehouse, ctx: &RunContext, m: &mut Manifest) -> Result<DataFrame> {
    let mut all = DataFrame::empty_with_schema(&fl::schema());
    let mut c = ctx.period;
    let mut summary = Vec::new();
    for _ in 0..LOOKBACK_PERIODS {
        c = c.prev();
        let Some(commit) = wh.committed(c)? else { continue };
        if !commit.closed {
            continue;
        }
        if !inputs_changed(cfg, &commit, c)? {
            tracing::info!(period = %c, "closed period's inputs unchanged since its close: not re-stated");
            summary.push(serde_json::json!({"corrected_period": c.to_string(), "lines": 0, "amount": "0", "restated": false, "reason": "inputs unchanged since close"}));
            continue;
        }
        tracing::info!(period = %c, "closed period's inputs changed since its close: re-stating it for late data");
        let adj = restate(cfg, wh, &commit, c, ctx.period)?;
        let total = pipeline::decimal::column_sum(&adj, fl::amount)?;
        summary.push(serde_json::json!({"corrected_period": c.to_string(), "lines": adj.height(), "amount": total.to_string(), "restated": true}));
        all.vstack_mut(&adj)?;
    }
    m.total("late_data_adjustments", summary);
    Ok(all)
}

/// For a closed period re-run by hand: how many adjustment lines its late data would give on the next period.
pub fn pending_for_closed(cfg: &Config, wh: &Warehouse, ctx: &RunContext) -> Result<usize> {
    let Some(commit) = wh.committed(ctx.period)? else { return Ok(0) };
    if !inputs_changed(cfg, &commit, ctx.period)? {
        return Ok(0);
    }
    Ok(restate(cfg, wh, &commit, ctx.period, ctx.period.next())?.height())
}

/// Whether the input snapshot of closed period `c` differs from the one its committed manifest recorded:
/// compared as multisets of (bytes, SHA-256) of every input file (v2 blobs one by one), so a closed month is
/// re-stated only when Microsoft's data for it changed. Sizes first; files are hashed only when every size
/// matches.
fn inputs_changed(cfg: &Config, commit: &Commit, c: Period) -> Result<bool> {
    let recorded: Vec<(u64, String)> = commit
        .manifest_json
        .get("inputs")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|f| Some((f.get("bytes")?.as_u64()?, f.get("sha256")?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let dir = cfg.partner_center_location(c);
    let dir = Path::new(&dir);
    if !dir.is_dir() {
        // The snapshot was moved away: nothing to compare, nothing new to bill.
        return Ok(false);
    }
    let mut files = Vec::new();
    for p in crate::inputs::list_snapshot(dir)? {
        if p.is_dir() {
            let mut blobs: Vec<_> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|b| b.to_string_lossy().to_ascii_lowercase().ends_with(".json.gz"))
                .collect();
            blobs.sort();
            files.extend(blobs);
        } else {
            files.push(p);
        }
    }
    let mut sizes: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX)).collect();
    let mut want_sizes: Vec<u64> = recorded.iter().map(|r| r.0).collect();
    sizes.sort_unstable();
    want_sizes.sort_unstable();
    if sizes != want_sizes {
        return Ok(true);
    }
    let mut hashes = Vec::new();
    for f in &files {
        hashes.push(crate::inputs::sha256_file(f)?);
    }
    let mut want: Vec<String> = recorded.into_iter().map(|r| r.1).collect();
    hashes.sort();
    want.sort();
    Ok(hashes != want)
}

/// Re-states closed period `c` and returns its adjustment lines for `target`.
fn restate(cfg: &Config, wh: &Warehouse, commit: &Commit, c: Period, target: Period) -> Result<DataFrame> {
    let read = |table: &str, zone: Zone| -> Result<DataFrame> {
        Ok(wh.read_commit_table(commit, table, zone)?.unwrap_or_else(|| DataFrame::empty_with_schema(&schema_of(table))))
    };
    let refs = RefFrames {
        customers: read(schemas::stg_customers::TABLE, Zone::Staged)?,
        org_units: read(schemas::stg_org_units::TABLE, Zone::Staged)?,
        rate_cards: read(schemas::stg_rate_cards::TABLE, Zone::Staged)?,
        tag_rules: read(schemas::stg_tag_rules::TABLE, Zone::Staged)?,
        fx_rates: read(schemas::stg_fx_rates::TABLE, Zone::Staged)?,
        manual_lines: read(schemas::stg_manual_lines::TABLE, Zone::Staged)?,
        psa_time: read(schemas::stg_psa_time::TABLE, Zone::Staged)?,
        license_activity: read(schemas::stg_license_activity::TABLE, Zone::Staged)?,
        utilization: read(schemas::stg_utilization::TABLE, Zone::Staged)?,
        gl_accounts: read(schemas::stg_gl_accounts::TABLE, Zone::Staged)?,
    };
    let ctx = RunContext { period: c, run_id: format!("restate-{c}"), mode: RunMode::Close, policies: cfg.policies(c, None) };
    let mut m = Manifest::new(&ctx.run_id, &c.to_string(), "restate", wh.url(), String::new());
    let mut timer = Timer::new();
    let dir = cfg.partner_center_location(c);
    let empty = DataFrame::empty_with_schema(&fl::schema());
    let spool = crate::spool::Spool::new(cfg.run.spool_dir.as_deref().map(|d| cfg.resolve(d)).as_deref().map(Path::new))?;
    let computed = compute(&ctx, &refs, crate::snapshot::Inputs::Folder(dir.into()), Stop::Invoice, empty, &mut m, &mut timer, spool, crate::stages::Tail::Whole)?;
    if let Some(f) = m.failures() {
        return Err(Failure::invariant(format!("re-stating closed period {c} for late data failed:\n  {f}")).into());
    }
    let restated = computed.invoices.map(|(_, lines, _)| lines).unwrap_or_else(|| DataFrame::empty_with_schema(&fl::schema()));
    // What the customer was billed for `c`: the issued lines, plus adjustments for `c` on later closed invoices,
    // mapped back to the line they adjust so they meet their restated selves.
    let mut baseline = read(fl::TABLE, Zone::Marts)?;
    let mut d = c.next();
    while d < target {
        if let Some(later) = wh.committed(d)? {
            if later.closed {
                if let Some(lines) = wh.read_commit_table(&later, fl::TABLE, Zone::Marts)? {
                    baseline.vstack_mut(&as_original(lines, c)?)?;
                }
            }
        }
        d = d.next();
    }
    Ok(pipeline::invoice::adjustment_lines(&baseline, &restated, c, target)?)
}

/// Adjustment lines for period `c` rewritten to the line type and group key of the line they adjust
/// (`adjustment_lines` writes their group key as `PERIOD|LINE_TYPE|GROUP_KEY`).
fn as_original(lines: DataFrame, c: Period) -> Result<DataFrame> {
    Ok(lines
        .lazy()
        .filter(col(fl::line_type).eq(lit("adjustment")).and(col(fl::corrected_period).eq(lit(c.to_string()))))
        .with_columns([
            col(fl::group_key).str().extract(lit(r"^[^|]*\|([^|]*)\|"), 1).alias(fl::line_type),
            col(fl::group_key).str().extract(lit(r"^[^|]*\|[^|]*\|(.*)$"), 1).alias(fl::group_key),
        ])
        .select(fl::names().into_iter().map(col).collect::<Vec<_>>())
        .collect()?)
}

fn schema_of(table: &str) -> Schema {
    match table {
        "stg_customers" => schemas::stg_customers::schema(),
        "stg_org_units" => schemas::stg_org_units::schema(),
        "stg_rate_cards" => schemas::stg_rate_cards::schema(),
        "stg_tag_rules" => schemas::stg_tag_rules::schema(),
        "stg_fx_rates" => schemas::stg_fx_rates::schema(),
        "stg_manual_lines" => schemas::stg_manual_lines::schema(),
        "stg_psa_time" => schemas::stg_psa_time::schema(),
        "stg_license_activity" => schemas::stg_license_activity::schema(),
        "stg_utilization" => schemas::stg_utilization::schema(),
        "stg_gl_accounts" => schemas::stg_gl_accounts::schema(),
        _ => fl::schema(),
    }
}
