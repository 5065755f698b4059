//! Privacy and tenant isolation (issue 18): GDPR erasure that keeps the invoices (`erase.rs`, `cspbill erase`),
//! telemetry retention and the financial records' term (`retention.rs`, `cspbill retention`), and per-customer
//! bundles shared by signed URLs (`bundles.rs`, `cspbill share`). The pure parts (which values are personal,
//! rewriting frames and text, aggregating usage) are in `pipeline::privacy`; this module does the I/O, the
//! keyed pseudonyms, and the commits of new versions of (possibly closed) periods.

pub mod bundles;
pub mod erase;
pub mod retention;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pipeline::Period;
use polars::prelude::*;
use serde::Deserialize;

use crate::error::Failure;
use crate::warehouse::{FileEntry, Warehouse};

/// The environment variable holding the pseudonym key. Never read from a file, never logged.
pub const KEY_ENV: &str = "CSPBILL_PSEUDONYM_KEY";
/// The shortest key accepted (bytes).
const MIN_KEY_BYTES: usize = 16;

/// `[privacy]` in cspbill.toml: what makes a tag value or a resource name personal (beyond e-mail addresses,
/// user keys and contact fields, which always are).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Tag keys whose values name a person, compared case-insensitively.
    pub personal_tag_keys: Vec<String>,
    /// Globs over resource names (the last segment of a resource URI) that name people, e.g. `vm-u-*`.
    pub personal_resource_names: Vec<String>,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            personal_tag_keys: ["createdby", "created-by", "created_by", "creator", "contact", "email", "user", "username"]
                .map(String::from)
                .to_vec(),
            personal_resource_names: Vec::new(),
        }
    }
}

impl PrivacySettings {
    pub fn rules(&self) -> Result<pipeline::privacy::PersonalRules> {
        let resource_names = if self.personal_resource_names.is_empty() {
            None
        } else {
            let mut b = globset::GlobSetBuilder::new();
            for g in &self.personal_resource_names {
                b.add(globset::Glob::new(g).map_err(|e| {
                    Failure::usage(format!("`[privacy] personal_resource_names` has a bad glob `{g}`: {e}; fix it in cspbill.toml"))
                })?);
            }
            Some(b.build().context("building the personal resource-name globs")?)
        };
        Ok(pipeline::privacy::PersonalRules { tag_keys: self.personal_tag_keys.clone(), resource_names })
    }
}

/// `[retention]` in cspbill.toml (README, "Privacy and retention").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Resource-level usage older than this many days (by the period's last day) is aggregated.
    pub telemetry_days: u32,
    /// Periods whose last day is more than this many years old are deleted with their invoices and ledger.
    pub financial_years: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { telemetry_days: 90, financial_years: 7 }
    }
}

/// The pseudonym key from the environment: exit 2 when it is missing or short. The key is the only secret of
/// an erasure: with it the same value always maps to the same pseudonym (joins keep working across tables,
/// periods and later erasures), without it a pseudonym cannot be traced back to a value.
pub fn pseudonym_key() -> Result<Vec<u8>> {
    match std::env::var(KEY_ENV) {
        Ok(k) if k.len() >= MIN_KEY_BYTES => Ok(k.into_bytes()),
        Ok(_) => Err(Failure::usage(format!(
            "`{KEY_ENV}` is shorter than {MIN_KEY_BYTES} bytes; set it to a long random secret from your secret store (for example the output of `openssl rand -hex 32`)"
        ))
        .into()),
        Err(_) => Err(Failure::usage(format!(
            "`{KEY_ENV}` is not set; erasure needs the pseudonym key: set it from your secret store (for example `openssl rand -hex 32`, kept and reused: the same key gives the same pseudonyms)"
        ))
        .into()),
    }
}

/// The pseudonym of a value: `anon-` and 20 hex digits of HMAC-SHA256(key, value). Deterministic under one key,
/// not reversible without it (and a dictionary attack needs the key too).
pub fn pseudonym(key: &[u8], value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, value.as_bytes());
    format!("anon-{}", &hex::encode(tag.as_ref())[..20])
}

/// Every period with a committed version, ascending.
pub fn committed_periods(wh: &Warehouse) -> Result<Vec<Period>> {
    let mut out = BTreeSet::new();
    for f in wh.list_files("_commits/")? {
        if let Some(p) = f.strip_prefix("_commits/period=").and_then(|r| r.split('/').next())
            && let Ok(p) = p.parse::<Period>()
        {
            out.insert(p);
        }
    }
    Ok(out.into_iter().collect())
}

/// Downloads the data file of a commit entry into `dir` (same file name as its path, flattened).
pub fn fetch(wh: &Warehouse, entry: &FileEntry, dir: &Path) -> Result<PathBuf> {
    let local = dir.join(entry.path.replace('/', "__"));
    if !wh.download_file(&entry.data, &local)? {
        return Err(Failure::invariant(format!("`{}` is missing from warehouse `{}` although a commit refers to it; re-run the period", entry.data, wh.url())).into());
    }
    Ok(local)
}

/// A lazy scan of a local Parquet file.
pub fn scan(local: &Path) -> Result<LazyFrame> {
    crate::spool::scan(local)
}

/// The schema of a local Parquet file.
pub fn schema_of(local: &Path) -> Result<Schema> {
    let s = scan(local)?
        .collect_schema()
        .map_err(|e| anyhow::anyhow!("reading the schema of `{}`: {e}", local.display()))?;
    Ok(s.as_ref().clone())
}

/// The runs whose data a period holds under `_data/period=P/`, so that a privacy commit can remove the data the
/// rewritten files came from (the normal commit keeps the previous run's data for readers in flight).
pub fn data_runs(wh: &Warehouse, period: Period) -> Result<BTreeSet<String>> {
    let dir = format!("_data/period={period}/");
    Ok(wh
        .list_files(&dir)?
        .iter()
        .filter_map(|p| p.strip_prefix(&dir)?.split('/').next().map(str::to_string))
        .collect())
}

/// Deletes the data of the given runs of a period (after a privacy commit: the old bytes hold what was erased
/// or aggregated). A reader still holding the old pointer fails and re-reads; no other run's data is touched.
pub fn purge_runs(wh: &Warehouse, period: Period, runs: &BTreeSet<String>, keep: &str) -> Result<usize> {
    let mut n = 0;
    for run in runs.iter().filter(|r| r.as_str() != keep) {
        for f in wh.list_files(&format!("_data/period={period}/{run}/"))? {
            wh.delete_file(&f)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A run id for a privacy job: sortable like a run's, marked with the job.
pub fn run_id(job: &str) -> String {
    format!("{}-{job}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"), std::process::id())
}

/// The tables whose figures a privacy job must never change: invoices, invoice lines, journal entries.
pub const FINANCIAL_TABLES: &[&str] = &["fct_invoices", "fct_invoice_lines", "fct_journal_entries", "fct_revenue_schedule", "rpt_trial_balance"];

/// The financial projection of a table file (what must never change under erasure or retention): every column
/// except free text, sorted.
fn financial_projection(local: &Path) -> Result<DataFrame> {
    let df = crate::spool::collect(scan(local)?, "reading an invoice table")?;
    let keep: Vec<PlSmallStr> = df
        .schema()
        .iter()
        .filter(|(n, dt)| **dt != DataType::String || pipeline::privacy::PROTECTED_COLUMNS.contains(&n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    let df = df.select(keep.clone())?;
    Ok(df.sort(keep, SortMultipleOptions::default().with_maintain_order(true))?)
}

/// Run invariant of every privacy commit, checked before anything is written: a financial table keeps its
/// figures (amounts, invoice numbers, dates, counts) exactly, row for row. Exit 1 naming the table otherwise.
pub fn check_figures_unchanged(table: &str, period: Period, before: &Path, after: &Path) -> Result<serde_json::Value> {
    let a = financial_projection(before)?;
    let b = financial_projection(after)?;
    let same = a.equals_missing(&b);
    if !same {
        return Err(Failure::invariant(format!(
            "`{table}` of period {period} would change its figures (amounts, numbers or dates); nothing was published for the period: report this with the period and the command"
        ))
        .into());
    }
    Ok(serde_json::json!({ "check": "financial_figures_unchanged", "table": table, "period": period.to_string(), "rows": a.height(), "ok": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, mut df: DataFrame) -> PathBuf {
        let p = dir.join(name);
        ParquetWriter::new(std::fs::File::create(&p).unwrap()).finish(&mut df).unwrap();
        p
    }

    fn invoices(desc: &str, total: &str) -> DataFrame {
        let total = Series::new("total".into(), [total, "5.00"]).cast(&DataType::Decimal(38, 18)).unwrap();
        DataFrame::new_infer_height(vec![
            Column::new("invoice_number".into(), ["FCP-202506-0001", "FCP-202506-0002"]),
            Column::new("description".into(), [desc, "other"]),
            total.into_column(),
        ])
        .unwrap()
    }

    #[test]
    fn figures_check_accepts_new_text_and_refuses_a_changed_amount() {
        let d = tempfile::tempdir().unwrap();
        let p = Period::new(2025, 6).unwrap();
        let before = write(d.path(), "a.parquet", invoices("set-up for jane.doe@x.example", "10.00"));
        let text = write(d.path(), "b.parquet", invoices("set-up for anon-0123456789abcdef0123", "10.00"));
        let amount = write(d.path(), "c.parquet", invoices("set-up for anon-0123456789abcdef0123", "10.01"));
        assert!(check_figures_unchanged("fct_invoices", p, &before, &text).is_ok());
        let err = check_figures_unchanged("fct_invoices", p, &before, &amount).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 1);
        assert!(format!("{err:#}").contains("`fct_invoices` of period 2025-06 would change its figures"));
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        // RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
        assert_eq!(pseudonym(b"Jefe", "what do ya want for nothing?"), "anon-5bdcc146bf60754e6a04");
        assert_eq!(pseudonym(b"key-one-0123456789", "jane"), pseudonym(b"key-one-0123456789", "jane"));
        assert_ne!(pseudonym(b"key-one-0123456789", "jane"), pseudonym(b"key-two-0123456789", "jane"));
    }
}
