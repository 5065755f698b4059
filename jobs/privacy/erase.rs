//! `cspbill erase --customer ID --reason "..." [--dry-run]`: GDPR erasure of a customer's personal data across
//! every period of the warehouse, keeping the financial records the law requires for seven years.
//!
//! What is personal (`pipeline::privacy::find_personal_values`): the customer's user keys (`license_activity`),
//! its contact e-mail (`customers`), the values of personal tag keys and every tag value holding an e-mail
//! address, and resource names that contain such an address's local part or match `[privacy]
//! personal_resource_names`. Each is replaced by a keyed pseudonym (`anon-` + HMAC-SHA256 under
//! `CSPBILL_PSEUDONYM_KEY`), the same everywhere, so joins still work.
//!
//! Where: every Parquet file of every committed period (tables and the per-invoice FOCUS files), the text files
//! of a commit (reports, anomaly lines, ledger exports), the reports published outside the commits (in place), and the raw inputs under `raw/`, which are replaced by
//! pseudonymised copies at their new content address (the original SHA-256 stays in the manifest and the audit
//! log). Kept unchanged: the issued invoice documents (`marts/exports/.../customer=ID/INVOICE.{csv,xlsx,pdf,html}`),
//! which are the legal record; key columns (customer ids, invoice numbers); every amount and date.
//!
//! How: each affected period gets a new committed version (closed periods stay closed), after the run invariant
//! that every financial table keeps its figures row for row; the data of the older versions is then deleted.
//! The erasure is recorded in the period's manifest (`erasures`) and in `_audit/`, without the erased values.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use pipeline::Period;
use pipeline::privacy::{Pseudonyms, find_personal_values, is_pseudonym, too_short};
use polars::prelude::*;
use serde_json::{Value, json};

use super::{committed_periods, fetch, pseudonym, pseudonym_key, scan, schema_of};
use crate::error::Failure;
use crate::warehouse::{Commit, FileEntry, Warehouse};

/// `cspbill erase`.
#[derive(Debug, Clone, clap::Args)]
pub struct EraseArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// The customer whose personal data is erased (`customer_id` as in customers.csv, any case).
    #[arg(long)]
    pub customer: String,
    /// Why (a request reference, not personal data): recorded in the manifests and the audit log.
    #[arg(long)]
    pub reason: String,
    /// List what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Warehouse root URL; overrides the config.
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
}

/// The personal values found, by kind (counts are reported; the values never are).
#[derive(Debug, Default)]
struct Found {
    customer_id: String,
    customer_name: String,
    user_keys: BTreeSet<String>,
    contacts: BTreeSet<String>,
    usage: BTreeSet<String>,
}

impl Found {
    fn all(&self) -> BTreeSet<String> {
        self.user_keys.iter().chain(&self.contacts).chain(&self.usage).cloned().collect()
    }
}

/// What happens to one file of a commit.
#[derive(Debug, Clone)]
enum Step {
    Carry,
    /// A Parquet file rewritten: rows that change.
    Parquet { rows: u64, local: PathBuf },
    /// A text file rewritten: replacements.
    Text { replacements: usize, bytes: Bytes },
    /// An issued invoice document, kept as issued.
    Retained,
}

/// A raw input replaced by its pseudonymised copy.
#[derive(Debug, Clone)]
struct RawChange {
    path: String,
    sha256: String,
    new_path: String,
    new_sha256: String,
    replacements: usize,
    /// The pseudonymised copy, in the temporary folder until it is landed.
    local: PathBuf,
    source: String,
    name: String,
}

pub fn command(a: &EraseArgs) -> Result<()> {
    let cfg = crate::config::load(&a.config)?;
    let reason = a.reason.trim().to_string();
    if reason.is_empty() {
        return Err(Failure::usage("`--reason` is empty; give the request reference (for example --reason \"GDPR request 2025-031\")").into());
    }
    // The key first: a missing secret is exit 2 before the warehouse is touched.
    let key = pseudonym_key()?;
    let rules = cfg.privacy.rules()?;
    let url = cfg.warehouse_url(a.warehouse.as_deref());
    let wh = Warehouse::open(&url, &cfg.warehouse.options)?;
    let periods = committed_periods(&wh)?;
    for p in &periods {
        wh.repair(*p)?;
    }
    let tmp = tempfile::Builder::new().prefix("cspbill-erase-").tempdir().context("making a temporary folder")?;
    let found = discover(&wh, &periods, &a.customer, &rules, tmp.path())?;
    let values = found.all();
    let short = too_short(&values);
    let map = Pseudonyms::new(values.iter().map(|v| (v.clone(), pseudonym(&key, v))));
    let (actor, actor_source) = crate::change_control::actor();
    let run_id = super::run_id("erase");
    println!(
        "{} customer `{}` ({}): {} personal value(s): {} user key(s), {} contact field(s), {} tag value(s) and resource name(s){}",
        if a.dry_run { "erasure plan (dry run, nothing written) for" } else { "erasing" },
        found.customer_id,
        found.customer_name,
        map.len(),
        found.user_keys.len(),
        found.contacts.len(),
        found.usage.len(),
        if short > 0 { format!("; {short} value(s) shorter than {} characters cannot be replaced safely and are left", pipeline::privacy::MIN_VALUE_CHARS) } else { String::new() }
    );
    let raw = plan_raw(&wh, &map, tmp.path())?;
    for r in &raw {
        println!("  raw `{}`: {} replacement(s) → `{}`", r.path, r.replacements, r.new_path);
    }
    // Shared bundles (`_shares/`, `cspbill share`) are copies: a shared file that holds a personal value is
    // deleted (its link stops working; share again after the erasure). Issued invoice documents stay.
    let shares = plan_shares(&wh, &map, tmp.path())?;
    for s in &shares {
        println!("  shared copy `{s}`: holds personal data, {}", if a.dry_run { "would be deleted" } else { "deleted" });
    }
    // Reports published outside the commits (`rpt_parallel_run`, `rpt_drift`: one Parquet file at its Hive path,
    // replaced by one atomic PUT) are pseudonymised in place.
    let reports = plan_reports(&wh, &periods, &map, tmp.path())?;
    for (path, rows, _) in &reports {
        println!("  report `{path}` (outside the commits): {rows} row(s)");
    }
    let mut entries = Vec::new();
    let erasure = |period: Period, tables: Vec<Value>, retained: Vec<String>, raw: &[RawChange], checks: Vec<Value>| {
        json!({
            "erasure_id": run_id,
            "customer_id": found.customer_id,
            "reason": reason,
            "actor": actor,
            "actor_source": actor_source,
            "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "period": period.to_string(),
            "values_pseudonymised": map.len(),
            "values_too_short": short,
            "pseudonym": "anon- + HMAC-SHA256(CSPBILL_PSEUDONYM_KEY, value), 20 hex digits",
            "files": tables,
            "retained_documents": retained,
            "raw": raw.iter().map(|r| json!({"original_path": r.path, "original_sha256": r.sha256, "replacement_path": r.new_path, "replacement_sha256": r.new_sha256, "replacements": r.replacements})).collect::<Vec<_>>(),
            "checks": checks,
        })
    };
    // Raw copies are created first (create-only, content-addressed): a failure later leaves the originals and
    // the copies, and a second erase completes the work.
    if !a.dry_run {
        for r in &raw {
            wh.land_raw_file(&r.source, &r.name, &r.new_sha256, &r.local)?;
        }
    }
    // A raw original is deleted once every period using it is erased (a failure half-way leaves each period
    // either erased with its raw files, or as it was).
    let mut uses: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for &period in &periods {
        if let Some(c) = wh.committed(period)? {
            for sha in input_shas(&c) {
                *uses.entry(sha).or_default() += 1;
            }
        }
    }
    let mut raw_deleted: BTreeSet<String> = BTreeSet::new();
    for &period in &periods {
        let Some(commit) = wh.committed(period)? else { continue };
        let dir = tmp.path().join(period.to_string());
        std::fs::create_dir_all(&dir)?;
        let steps = plan_period(&wh, &commit, &map, &dir)?;
        let changed: Vec<(&FileEntry, &Step)> = steps.iter().filter(|(_, s)| matches!(s, Step::Parquet { .. } | Step::Text { .. })).map(|(e, s)| (e, s)).collect();
        let retained: Vec<String> = steps.iter().filter(|(_, s)| matches!(s, Step::Retained)).map(|(e, _)| e.path.clone()).collect();
        let inputs: BTreeSet<String> = input_shas(&commit).into_iter().collect();
        let period_raw: Vec<RawChange> = raw.iter().filter(|r| inputs.contains(&r.sha256)).cloned().collect();
        let files: Vec<Value> = changed
            .iter()
            .map(|(e, s)| match s {
                Step::Parquet { rows, .. } => json!({"path": e.path, "rows_changed": rows}),
                Step::Text { replacements, .. } => json!({"path": e.path, "replacements": replacements}),
                _ => Value::Null,
            })
            .collect();
        for (e, s) in &changed {
            match s {
                Step::Parquet { rows, .. } => println!("  {period} `{}`: {rows} row(s)", e.path),
                Step::Text { replacements, .. } => println!("  {period} `{}`: {replacements} replacement(s)", e.path),
                _ => {}
            }
        }
        if a.dry_run {
            continue;
        }
        if changed.is_empty() && period_raw.is_empty() {
            println!("  {period}: nothing to change{}", if commit.closed { " (closed)" } else { "" });
        } else {
            let checks = check_financial(&wh, &commit, &steps, &dir)?;
            let entry = erasure(period, files, retained.clone(), &period_raw, checks);
            let version = commit_period(&wh, &commit, &steps, &format!("{run_id}-{period}"), &entry)?;
            println!("  {period}: version {version} committed{}", if commit.closed { " (still closed)" } else { "" });
            entries.push(entry);
        }
        for sha in &inputs {
            if let Some(n) = uses.get_mut(sha) {
                *n = n.saturating_sub(1);
            }
        }
        let done: Vec<String> = raw
            .iter()
            .filter(|r| uses.get(&r.sha256).is_none_or(|n| *n == 0) && !raw_deleted.contains(&r.path))
            .map(|r| r.path.clone())
            .collect();
        for path in done {
            wh.delete_file(&path)?;
            raw_deleted.insert(path);
        }
    }
    if a.dry_run {
        println!("dry run: nothing was written; run again without --dry-run to erase");
        return Ok(());
    }
    for r in raw.iter().filter(|r| !raw_deleted.contains(&r.path)) {
        wh.delete_file(&r.path)?;
    }
    for s in &shares {
        wh.delete_file(s)?;
    }
    for (path, _, local) in &reports {
        let bytes = std::fs::read(local).with_context(|| format!("reading `{}`", local.display()))?;
        wh.replace_file(path, Bytes::from(bytes))?;
    }
    let mut ev = crate::change_control::Event::new("erasure", &actor, actor_source);
    ev.reason = Some(reason.clone());
    ev.run_id = Some(run_id.clone());
    ev.detail = format!(
        "customer `{}`: {} personal value(s) pseudonymised in {} period version(s); {} shared cop(ies) deleted; {} raw file(s) replaced by pseudonymised copies (original SHA-256: {}); issued invoice documents kept",
        found.customer_id,
        map.len(),
        entries.len(),
        shares.len(),
        raw.len(),
        raw.iter().map(|r| r.sha256.as_str()).collect::<Vec<_>>().join(", ")
    );
    let path = crate::change_control::audit(&wh, ev)?;
    println!("erasure `{run_id}` recorded in `{path}` and in the manifests of {} period version(s)", entries.len());
    Ok(())
}

/// The customer (its spelling in customers.csv) and its personal values, from every committed period.
fn discover(wh: &Warehouse, periods: &[Period], customer: &str, rules: &pipeline::privacy::PersonalRules, tmp: &Path) -> Result<Found> {
    use schemas::{stg_customers as c, stg_license_activity as la, stg_pc_daily_usage as u};
    let mut found = Found::default();
    let mut tags: BTreeSet<String> = BTreeSet::new();
    let mut uris: BTreeSet<String> = BTreeSet::new();
    for &p in periods {
        let Some(commit) = wh.committed(p)? else { continue };
        if let Some(df) = wh.read_commit_table(&commit, c::TABLE, c::ZONE)? {
            let ids = df.column(c::customer_id)?.str()?.clone();
            let names = df.column(c::customer_name)?.str()?.clone();
            let mails = df.column(c::contact_email)?.str()?.clone();
            for i in 0..df.height() {
                if ids.get(i).is_some_and(|id| id.eq_ignore_ascii_case(customer.trim())) {
                    found.customer_id = ids.get(i).unwrap_or_default().to_string();
                    found.customer_name = names.get(i).unwrap_or_default().to_string();
                    if let Some(m) = mails.get(i).filter(|m| !m.trim().is_empty()) {
                        found.contacts.insert(m.to_string());
                    }
                }
            }
        }
    }
    if found.customer_id.is_empty() {
        return Err(Failure::usage(format!(
            "customer `{}` is in no committed period's customers (stg_customers) of warehouse `{}`; check the id against customers.csv",
            crate::error::clip(customer),
            wh.url()
        ))
        .into());
    }
    let id = found.customer_id.clone();
    for &p in periods {
        let Some(commit) = wh.committed(p)? else { continue };
        if let Some(df) = wh.read_commit_table(&commit, la::TABLE, la::ZONE)? {
            let ids = df.column(la::customer_id)?.str()?.clone();
            let keys = df.column(la::user_key)?.str()?.clone();
            for i in 0..df.height() {
                if ids.get(i) == Some(id.as_str())
                    && let Some(k) = keys.get(i).filter(|k| !k.is_empty())
                {
                    found.user_keys.insert(k.to_string());
                }
            }
        }
        if let Some(e) = commit.files.iter().find(|f| f.table.as_deref() == Some(u::TABLE)) {
            let local = fetch(wh, e, tmp)?;
            let lf = scan(&local)?
                .filter(col(u::customer_id).eq(lit(id.clone())))
                .select([col(u::tags), col(u::resource_uri)])
                .unique(None, UniqueKeepStrategy::Any);
            let df = crate::spool::collect(lf, "the customer's tags and resource URIs")?;
            for v in df.column(u::tags)?.str()?.iter().flatten() {
                tags.insert(v.to_string());
            }
            for v in df.column(u::resource_uri)?.str()?.iter().flatten() {
                uris.insert(v.to_string());
            }
            let _ = std::fs::remove_file(&local);
        }
    }
    let known: BTreeSet<String> = found.user_keys.iter().chain(&found.contacts).cloned().collect();
    let t: Vec<&str> = tags.iter().map(String::as_str).collect();
    let r: Vec<&str> = uris.iter().map(String::as_str).collect();
    found.usage = find_personal_values(&t, &r, &known, rules);
    // A value erased before is a pseudonym now: never pseudonymised again (a second erasure finds nothing).
    for set in [&mut found.user_keys, &mut found.contacts, &mut found.usage] {
        set.retain(|v| !is_pseudonym(v));
    }
    Ok(found)
}

fn input_shas(c: &Commit) -> Vec<String> {
    c.manifest_json["inputs"].as_array().map(|v| v.iter().filter_map(|i| i["sha256"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// An issued invoice document: `marts/exports/period=P/customer=ID/<invoice>.{csv,xlsx,pdf,html}`.
pub fn is_invoice_document(path: &str) -> bool {
    path.starts_with("marts/exports/")
        && path.contains("/customer=")
        && [".csv", ".xlsx", ".pdf", ".html"].iter().any(|x| path.ends_with(x))
}

/// Files read as text (a personal value is found and replaced in them as written).
fn is_text(path: &str) -> bool {
    [".csv", ".html", ".json", ".jsonl", ".txt", ".svg"].iter().any(|x| path.ends_with(x))
}

/// What happens to each file of a commit.
fn plan_period(wh: &Warehouse, commit: &Commit, map: &Pseudonyms, dir: &Path) -> Result<Vec<(FileEntry, Step)>> {
    let mut out = Vec::new();
    for e in &commit.files {
        let step = if map.is_empty() {
            Step::Carry
        } else if is_invoice_document(&e.path) {
            Step::Retained
        } else if e.path.ends_with(".parquet") {
            let local = fetch(wh, e, dir)?;
            let schema = schema_of(&local)?;
            let rows = match map.touches(&schema) {
                None => 0,
                Some(t) => {
                    let df = crate::spool::collect(scan(&local)?.filter(t).select([len().alias("n")]), "counting rows with personal values")?;
                    df.column("n")?.get(0)?.extract::<u64>().unwrap_or(0)
                }
            };
            if rows == 0 {
                Step::Carry
            } else {
                let out = dir.join(format!("{}.erased", e.path.replace('/', "__")));
                crate::spool::sink_parquet(map.rewrite(scan(&local)?, &schema), &out, &e.path)?;
                Step::Parquet { rows, local: out }
            }
        } else if is_text(&e.path) {
            let bytes = wh.read_file(&e.data)?.unwrap_or_default();
            match std::str::from_utf8(&bytes) {
                Ok(text) => {
                    let (new, n) = map.apply_text(text);
                    if n == 0 { Step::Carry } else { Step::Text { replacements: n, bytes: Bytes::from(new) } }
                }
                Err(_) => Step::Carry,
            }
        } else {
            Step::Carry
        };
        out.push((e.clone(), step));
    }
    Ok(out)
}

/// The run invariant: every financial table a step rewrites keeps its figures.
fn check_financial(wh: &Warehouse, commit: &Commit, steps: &[(FileEntry, Step)], dir: &Path) -> Result<Vec<Value>> {
    let period: Period = commit.period.parse().map_err(|e| anyhow::anyhow!("bad period in commit: {e}"))?;
    let mut checks = Vec::new();
    for (e, s) in steps {
        let Some(t) = e.table.as_deref().filter(|t| super::FINANCIAL_TABLES.contains(t)) else { continue };
        match s {
            Step::Parquet { local, .. } => {
                let before = fetch(wh, e, dir)?;
                checks.push(super::check_figures_unchanged(t, period, &before, local)?);
            }
            _ => checks.push(json!({ "check": "financial_figures_unchanged", "table": t, "period": period.to_string(), "ok": true, "file": "unchanged" })),
        }
    }
    Ok(checks)
}

/// Commits the period's new version: rewritten files, the rest carried; the manifest gains the erasure; then the
/// data of older versions (the original bytes) is deleted. Returns the new version.
fn commit_period(wh: &Warehouse, commit: &Commit, steps: &[(FileEntry, Step)], run_id: &str, entry: &Value) -> Result<u64> {
    let period: Period = commit.period.parse().map_err(|e| anyhow::anyhow!("bad period in commit: {e}"))?;
    let mut txn = wh.begin(period, run_id)?;
    let base = txn.previous().cloned().ok_or_else(|| Failure::invariant(format!("period {period} has no commit any more; run the erasure again")))?;
    if base.version != commit.version {
        return Err(Failure::invariant(format!(
            "period {period} was committed again (version {}) while the erasure read version {}; run the erasure again",
            base.version, commit.version
        ))
        .into());
    }
    let old_runs = super::data_runs(wh, period)?;
    txn.allow_closed_rewrite();
    for (e, s) in steps {
        match s {
            Step::Parquet { local, .. } => match (e.table.as_deref(), e.zone.as_deref().and_then(zone)) {
                (Some(t), Some(z)) => {
                    txn.write_table_file(t, z, local, e.period_column)?;
                }
                _ => {
                    txn.put_local_file(&e.path, local)?;
                }
            },
            Step::Text { bytes, .. } => txn.put_file(&e.path, bytes.clone())?,
            Step::Carry | Step::Retained => txn.carry_file(e)?,
        }
    }
    let mut manifest = base.manifest_json.clone();
    if let Some(m) = manifest.as_object_mut() {
        let list = m.entry("erasures").or_insert_with(|| Value::Array(Vec::new()));
        if let Some(l) = list.as_array_mut() {
            l.push(entry.clone());
        }
    }
    let closed = base.closed;
    let c = txn.commit(manifest, closed)?;
    let n = super::purge_runs(wh, period, &old_runs, run_id)?;
    tracing::info!(period = %period, version = c.version, files_removed = n, "erasure committed; older versions' data removed");
    Ok(c.version)
}

/// A zone by its folder name.
pub fn zone(dir: &str) -> Option<schemas::Zone> {
    use schemas::Zone;
    [Zone::Raw, Zone::Staged, Zone::Rejects, Zone::Int, Zone::Marts].into_iter().find(|z| z.dir() == dir)
}

/// Parquet files under `marts/` that no commit names (reports of committed periods, see docs/warehouse.md) and
/// that hold a personal value: (path, rows changed, the rewritten local file).
fn plan_reports(wh: &Warehouse, periods: &[Period], map: &Pseudonyms, tmp: &Path) -> Result<Vec<(String, u64, PathBuf)>> {
    let mut out = Vec::new();
    if map.is_empty() {
        return Ok(out);
    }
    let mut committed: BTreeSet<String> = BTreeSet::new();
    for &p in periods {
        if let Some(c) = wh.committed(p)? {
            committed.extend(c.files.into_iter().map(|f| f.path));
        }
    }
    for path in wh.list_files("marts/")? {
        if !path.ends_with(".parquet") || committed.contains(&path) || path.starts_with("marts/exports/") {
            continue;
        }
        let local = tmp.join(format!("report-{}", crate::inputs_sha256(path.as_bytes())));
        if !wh.download_file(&path, &local)? {
            continue;
        }
        let schema = schema_of(&local)?;
        let Some(t) = map.touches(&schema) else { continue };
        let df = crate::spool::collect(scan(&local)?.filter(t).select([len().alias("n")]), "counting report rows with personal values")?;
        let rows = df.column("n")?.get(0)?.extract::<u64>().unwrap_or(0);
        if rows == 0 {
            continue;
        }
        let target = tmp.join(format!("report-{}.erased", crate::inputs_sha256(path.as_bytes())));
        crate::spool::sink_parquet(map.rewrite(scan(&local)?, &schema), &target, &path)?;
        out.push((path, rows, target));
    }
    Ok(out)
}

/// Shared copies (`_shares/`) holding a personal value: Parquet files with a touched row, text files with a
/// value; issued invoice documents are kept, as in the commits.
fn plan_shares(wh: &Warehouse, map: &Pseudonyms, tmp: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if map.is_empty() {
        return Ok(out);
    }
    for path in wh.list_files("_shares/")? {
        let name = path.rsplit('/').next().unwrap_or_default();
        let invoice_document = !name.ends_with(".focus.parquet") && [".csv", ".xlsx", ".pdf", ".html"].iter().any(|x| name.ends_with(x));
        if invoice_document {
            continue;
        }
        let Some(bytes) = wh.read_file(&path)? else { continue };
        let holds = if name.ends_with(".parquet") {
            let local = tmp.join(format!("share-{}", crate::inputs_sha256(path.as_bytes())));
            std::fs::write(&local, &bytes)?;
            let schema = schema_of(&local)?;
            match map.touches(&schema) {
                None => false,
                Some(t) => {
                    let df = crate::spool::collect(scan(&local)?.filter(t).select([len().alias("n")]), "counting shared rows with personal values")?;
                    df.column("n")?.get(0)?.extract::<u64>().unwrap_or(0) > 0
                }
            }
        } else {
            map.apply_text(&String::from_utf8_lossy(&bytes)).1 > 0
        };
        if holds {
            out.push(path);
        }
    }
    Ok(out)
}

/// Raw inputs holding personal values, with their pseudonymised copies written to `tmp` (text files, line by
/// line, so memory stays at one line; `.gz` decompressed and compressed again). Files that are not UTF-8 text are
/// left as they are.
fn plan_raw(wh: &Warehouse, map: &Pseudonyms, tmp: &Path) -> Result<Vec<RawChange>> {
    let mut out = Vec::new();
    if map.is_empty() {
        return Ok(out);
    }
    for path in wh.list_files("raw/")? {
        // raw/SOURCE/sha256=HEX/NAME
        let parts: Vec<&str> = path.splitn(4, '/').collect();
        let [_, source, sha, name] = parts.as_slice() else { continue };
        let Some(sha) = sha.strip_prefix("sha256=") else { continue };
        let original = tmp.join(format!("raw-{sha}"));
        if !wh.download_file(&path, &original)? {
            continue;
        }
        let copy = tmp.join(format!("raw-{sha}.erased"));
        let n = rewrite_text_file(&original, &copy, map, name.ends_with(".gz"))?;
        let _ = std::fs::remove_file(&original);
        let Some(n) = n.filter(|n| *n > 0) else {
            let _ = std::fs::remove_file(&copy);
            continue;
        };
        let new_sha = sha256_file(&copy)?;
        out.push(RawChange {
            path: path.clone(),
            sha256: sha.to_string(),
            new_path: format!("raw/{source}/sha256={new_sha}/{name}"),
            new_sha256: new_sha,
            replacements: n,
            local: copy,
            source: source.to_string(),
            name: name.to_string(),
        });
    }
    Ok(out)
}

/// Copies a text file replacing personal values line by line; None when it is not UTF-8 text (or not gzip).
fn rewrite_text_file(from: &Path, to: &Path, map: &Pseudonyms, gz: bool) -> Result<Option<usize>> {
    use std::io::{BufRead, BufReader, BufWriter, Read, Write};
    let file = std::fs::File::open(from).with_context(|| format!("opening `{}`", from.display()))?;
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
    let mut reader = BufReader::new(reader);
    let out = std::fs::File::create(to).with_context(|| format!("writing `{}`", to.display()))?;
    let mut writer: Box<dyn Write> = if gz {
        Box::new(flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default()))
    } else {
        Box::new(BufWriter::new(out))
    };
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        let Ok(text) = std::str::from_utf8(&line) else { return Ok(None) };
        let (new, k) = map.apply_text(text);
        n += k;
        writer.write_all(new.as_bytes())?;
    }
    writer.flush()?;
    drop(writer);
    Ok(Some(n))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(hex::encode(h.finalize()))
}
