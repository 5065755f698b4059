//! `cspbill retention --dry-run | --apply [--as-of DATE]`: the retention schedule of `[retention]`.
//!
//! - Telemetry: a period whose last day is more than `telemetry_days` before the as-of date gets a new committed
//!   version (closed periods stay closed) in which resource-level rows are aggregated to subscription × meter ×
//!   day (`pipeline::privacy::retention`): resource groups, URIs, tags, source lines and row ids emptied,
//!   quantities and amounts summed exactly. The run invariants: Σ of every summed column per table is unchanged,
//!   and every financial table keeps its figures. The raw daily-usage files only such periods use are deleted
//!   (their SHA-256 stays in the manifest). The older versions' data is removed after the commit.
//! - Financial records: a period whose last day is more than `financial_years` years before the as-of date is
//!   deleted whole (tables, exports, commits, its runs' manifests, the raw files only it used).
//! Both are recorded in `_audit/` (and the aggregation in the period's manifest, `retention`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{Datelike, NaiveDate};
use pipeline::Period;
use pipeline::privacy::retention::{Aggregation, aggregate_rows, aggregation};
use polars::prelude::*;
use serde_json::{Value, json};

use super::{committed_periods, fetch, scan, schema_of};
use crate::error::Failure;
use crate::warehouse::{Commit, FileEntry, Warehouse};

/// `cspbill retention`.
#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["apply", "dry_run"]))]
pub struct RetentionArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// Aggregate and delete as the schedule says.
    #[arg(long)]
    pub apply: bool,
    /// List what would be aggregated and deleted, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The date the windows count back from (`YYYY-MM-DD`); default today (UTC).
    #[arg(long)]
    pub as_of: Option<NaiveDate>,
    /// Warehouse root URL; overrides the config.
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
}

/// What the schedule does to a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Aggregate,
    Delete,
}

/// The schedule: which action a period gets on `as_of` (pure; tested below).
pub fn action(period: Period, as_of: NaiveDate, telemetry_days: u32, financial_years: u32) -> Action {
    let end = period.end();
    let years_back = as_of.with_year(as_of.year() - financial_years as i32).unwrap_or_else(|| as_of - chrono::Duration::days(365 * financial_years as i64 + 2));
    if end < years_back {
        Action::Delete
    } else if end < as_of - chrono::Duration::days(telemetry_days as i64) {
        Action::Aggregate
    } else {
        Action::Keep
    }
}

pub fn command(a: &RetentionArgs) -> Result<()> {
    let cfg = crate::config::load(&a.config)?;
    let r = &cfg.retention;
    if r.financial_years < 1 {
        return Err(Failure::usage("`[retention] financial_years` must be at least 1 (accounting law keeps invoices for years; 7 is usual)").into());
    }
    let as_of = a.as_of.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let wh = Warehouse::open(&cfg.warehouse_url(a.warehouse.as_deref()), &cfg.warehouse.options)?;
    let periods = committed_periods(&wh)?;
    let tmp = tempfile::Builder::new().prefix("cspbill-retention-").tempdir().context("making a temporary folder")?;
    let run_id = super::run_id("retention");
    let (actor, source) = crate::change_control::actor();
    // Which periods use which raw files (from every version's manifest), to delete only raw files no kept
    // period needs.
    let mut uses: BTreeMap<String, BTreeSet<Period>> = BTreeMap::new();
    let mut commits = BTreeMap::new();
    for &p in &periods {
        wh.repair(p)?;
        if let Some(c) = wh.committed(p)? {
            for sha in input_shas(&c) {
                uses.entry(sha).or_default().insert(p);
            }
            commits.insert(p, c);
        }
    }
    let actions: BTreeMap<Period, Action> =
        commits.keys().map(|&p| (p, action(p, as_of, r.telemetry_days, r.financial_years))).collect();
    println!(
        "retention as of {as_of} (telemetry {} days, financial records {} years){}",
        r.telemetry_days,
        r.financial_years,
        if a.dry_run { ": dry run, nothing written" } else { "" }
    );
    let raw_files = wh.list_files("raw/")?;
    let mut done = Vec::new();
    for (&p, c) in &commits {
        let act = actions[&p];
        // Raw files used only by periods that are aggregated or deleted.
        let gone = |keep_aggregated: bool| -> Vec<String> {
            raw_files
                .iter()
                .filter(|f| {
                    let sha = f.split('/').nth(2).and_then(|s| s.strip_prefix("sha256=")).unwrap_or_default();
                    uses.get(sha).is_some_and(|ps| {
                        ps.contains(&p)
                            && ps.iter().all(|q| match actions.get(q) {
                                Some(Action::Delete) => true,
                                Some(Action::Aggregate) => keep_aggregated,
                                _ => false,
                            })
                    }) && (act == Action::Delete || f.starts_with("raw/pc_daily_usage/"))
                })
                .cloned()
                .collect()
        };
        match act {
            Action::Keep => println!("  {p}: kept as it is"),
            Action::Delete => {
                let raw = gone(true);
                let files = period_files(&wh, p, c)?;
                println!("  {p}: past the {}-year term: delete {} file(s) and {} raw file(s)", r.financial_years, files.len(), raw.len());
                if a.apply {
                    for f in files.iter().chain(&raw) {
                        wh.delete_file(f)?;
                    }
                    done.push(json!({"period": p.to_string(), "action": "deleted", "files": files.len(), "raw": raw}));
                }
            }
            Action::Aggregate => {
                if c.manifest_json.get("retention").is_some() {
                    println!("  {p}: aggregated already");
                    continue;
                }
                let dir = tmp.path().join(p.to_string());
                std::fs::create_dir_all(&dir)?;
                let steps = plan_aggregation(&wh, c, &dir)?;
                let raw = gone(true);
                for s in &steps {
                    println!("  {p}: `{}`: {} row(s) → {}", s.entry.path, s.rows_before, s.rows_after);
                }
                println!("  {p}: {} raw daily-usage file(s) deleted", raw.len());
                if a.apply && (!steps.is_empty() || !raw.is_empty()) {
                    let v = commit_aggregation(&wh, c, &steps, &raw, &format!("{run_id}-{p}"), as_of, r, &dir)?;
                    for f in &raw {
                        wh.delete_file(f)?;
                    }
                    println!("  {p}: version {v} committed{}", if c.closed { " (still closed)" } else { "" });
                    done.push(json!({"period": p.to_string(), "action": "aggregated", "version": v, "tables": steps.len(), "raw": raw}));
                }
            }
        }
    }
    // Shared bundles whose links expired before the as-of day: the copies are deleted.
    for (dir, expires, files) in expired_shares(&wh, as_of)? {
        println!("  shared bundle `{dir}`: links expired {expires}: delete {} file(s)", files.len());
        if a.apply {
            for f in &files {
                wh.delete_file(f)?;
            }
            done.push(json!({"share": dir, "action": "deleted", "expired": expires, "files": files.len()}));
        }
    }
    if a.apply && !done.is_empty() {
        let mut ev = crate::change_control::Event::new("retention", &actor, source);
        ev.run_id = Some(run_id.clone());
        ev.reason = Some(format!("retention schedule as of {as_of}: telemetry {} days, financial records {} years", r.telemetry_days, r.financial_years));
        ev.detail = serde_json::to_string(&done)?;
        let path = crate::change_control::audit(&wh, ev)?;
        println!("recorded in `{path}`");
    }
    Ok(())
}

/// The shared bundles (`_shares/.../<share>/`) whose `share.json` says their links expired before `as_of`:
/// (folder, expiry, every file of the folder).
fn expired_shares(wh: &Warehouse, as_of: NaiveDate) -> Result<Vec<(String, String, Vec<String>)>> {
    let all = wh.list_files("_shares/")?;
    let mut out = Vec::new();
    for rec in all.iter().filter(|f| f.ends_with(&format!("/{}", super::bundles::SHARE_RECORD))) {
        let dir = rec.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        let Some(bytes) = wh.read_file(rec)? else { continue };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(expires) = v["expires_at"].as_str().and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok()) else { continue };
        if expires.date_naive() < as_of {
            let files = all.iter().filter(|f| f.starts_with(&format!("{dir}/"))).cloned().collect();
            out.push((dir, expires.to_rfc3339(), files));
        }
    }
    Ok(out)
}

fn input_shas(c: &Commit) -> Vec<String> {
    c.manifest_json["inputs"].as_array().map(|v| v.iter().filter_map(|i| i["sha256"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Every object of a period: its Hive files, run data, commit pointers and list, and the manifests of its runs.
fn period_files(wh: &Warehouse, p: Period, c: &Commit) -> Result<Vec<String>> {
    let seg = format!("period={p}/");
    let mut out: BTreeSet<String> = wh
        .list_files("")?
        .into_iter()
        .filter(|f| !f.starts_with("_locks/") && !f.starts_with("_audit/") && (f.starts_with(&seg) || f.contains(&format!("/{seg}"))))
        .collect();
    for m in wh.list_manifests(p)? {
        out.insert(m);
    }
    out.insert(c.manifest.clone());
    Ok(out.into_iter().filter(|f| !f.is_empty()).collect())
}

/// One aggregated file.
struct AggStep {
    entry: FileEntry,
    local: PathBuf,
    rows_before: u64,
    rows_after: u64,
    sums: Vec<Value>,
}

/// The aggregation of every resource-level file of a commit (tables and per-invoice FOCUS files), with the
/// conservation check (Σ of each summed column before = after, exactly) done on the written files.
fn plan_aggregation(wh: &Warehouse, c: &Commit, dir: &Path) -> Result<Vec<AggStep>> {
    let mut out = Vec::new();
    for e in &c.files {
        let agg: Option<&Aggregation> = match e.table.as_deref() {
            Some(t) => aggregation(t),
            None if e.path.ends_with(".focus.parquet") => aggregation(schemas::focus_cost_and_usage::TABLE),
            None => None,
        };
        let Some(agg) = agg else { continue };
        let local = fetch(wh, e, dir)?;
        let schema = schema_of(&local)?;
        let target = dir.join(format!("{}.aggregated", e.path.replace('/', "__")));
        let lf = aggregate_rows(scan(&local)?, &schema, agg).map_err(|err| anyhow::anyhow!("aggregating `{}`: {err}", e.path))?;
        crate::spool::sink_parquet(lf, &target, &e.path)?;
        let before = totals(&local, &schema, agg)?;
        let after = totals(&target, &schema, agg)?;
        let mut sums = Vec::new();
        for (name, (b, a)) in before.1.iter().zip(after.1.iter()).enumerate().map(|(i, x)| (agg.sum.get(i).copied().unwrap_or(""), x)) {
            if b != a {
                return Err(Failure::invariant(format!(
                    "aggregating `{}` would change Σ {name} from {b} to {a}; nothing was published: report this with the period",
                    e.path
                ))
                .into());
            }
            sums.push(json!({"column": name, "sum": b}));
        }
        out.push(AggStep { entry: e.clone(), local: target, rows_before: before.0, rows_after: after.0, sums });
    }
    Ok(out)
}

/// Rows and Σ of each summed column (as exact decimal text, in `agg.sum` order; absent columns are "absent").
fn totals(local: &Path, schema: &Schema, agg: &Aggregation) -> Result<(u64, Vec<String>)> {
    let mut exprs = vec![len().alias("__rows")];
    for (i, s) in agg.sum.iter().enumerate() {
        if schema.contains(s) {
            exprs.push(col(*s).sum().cast(DataType::String).alias(format!("__s{i}")));
        }
    }
    let df = crate::spool::collect(scan(local)?.select(exprs), "conservation totals")?;
    let rows = df.column("__rows")?.get(0)?.extract::<u64>().unwrap_or(0);
    let mut sums = Vec::new();
    for i in 0..agg.sum.len() {
        let v = match df.column(&format!("__s{i}")) {
            Ok(c) => c.str()?.get(0).unwrap_or("null").to_string(),
            Err(_) => "absent".to_string(),
        };
        sums.push(v);
    }
    Ok((rows, sums))
}

#[allow(clippy::too_many_arguments)]
fn commit_aggregation(
    wh: &Warehouse,
    c: &Commit,
    steps: &[AggStep],
    raw: &[String],
    run_id: &str,
    as_of: NaiveDate,
    r: &super::RetentionSettings,
    dir: &Path,
) -> Result<u64> {
    let period: Period = c.period.parse().map_err(|e| anyhow::anyhow!("bad period in commit: {e}"))?;
    let mut txn = wh.begin(period, run_id)?;
    let base = txn.previous().cloned().ok_or_else(|| Failure::invariant(format!("period {period} has no commit any more; run retention again")))?;
    if base.version != c.version {
        return Err(Failure::invariant(format!("period {period} was committed again while retention read it; run retention again")).into());
    }
    let old_runs = super::data_runs(wh, period)?;
    txn.allow_closed_rewrite();
    let by_path: BTreeMap<&str, &AggStep> = steps.iter().map(|s| (s.entry.path.as_str(), s)).collect();
    let mut checks = Vec::new();
    for e in &c.files {
        match by_path.get(e.path.as_str()) {
            Some(s) => {
                if let Some(t) = e.table.as_deref().filter(|t| super::FINANCIAL_TABLES.contains(t)) {
                    let before = fetch(wh, e, dir)?;
                    checks.push(super::check_figures_unchanged(t, period, &before, &s.local)?);
                }
                match (e.table.as_deref(), e.zone.as_deref().and_then(super::erase::zone)) {
                    (Some(t), Some(z)) => {
                        txn.write_table_file(t, z, &s.local, e.period_column)?;
                    }
                    _ => {
                        txn.put_local_file(&e.path, &s.local)?;
                    }
                }
            }
            None => txn.carry_file(e)?,
        }
    }
    let mut manifest = base.manifest_json.clone();
    if let Some(m) = manifest.as_object_mut() {
        m.insert(
            "retention".into(),
            json!({
                "run_id": run_id,
                "as_of": as_of.to_string(),
                "telemetry_days": r.telemetry_days,
                "aggregated": steps.iter().map(|s| json!({"path": s.entry.path, "rows_before": s.rows_before, "rows_after": s.rows_after, "sums": s.sums})).collect::<Vec<_>>(),
                "raw_deleted": raw,
                "checks": checks,
            }),
        );
    }
    let commit = txn.commit(manifest, base.closed)?;
    super::purge_runs(wh, period, &old_runs, run_id)?;
    Ok(commit.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_schedule_counts_back_from_the_periods_last_day() {
        let p = |s: &str| s.parse::<Period>().unwrap();
        // June 2025 ends on 30 June; 90 days later is 28 September.
        assert_eq!(action(p("2025-06"), d("2025-09-28"), 90, 7), Action::Keep);
        assert_eq!(action(p("2025-06"), d("2025-09-29"), 90, 7), Action::Aggregate);
        // Seven years after 30 June 2018 is 30 June 2025: deleted from the day after.
        assert_eq!(action(p("2018-06"), d("2025-06-30"), 90, 7), Action::Aggregate);
        assert_eq!(action(p("2018-06"), d("2025-07-01"), 90, 7), Action::Delete);
    }
}
