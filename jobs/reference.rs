//! Reading the MSP's reference CSVs (DESIGN §4.2) from the workspace and staging them with
//! `pipeline::reference`. CSV is read by Polars as text only (no schema inference); typing happens in the
//! pipeline, which names file, line and column for every bad value.

use std::path::Path;

use anyhow::Result;
use pipeline::reference::{RefTable, StagedRef, empty, stage_reference};
use polars::prelude::*;

use crate::config::Config;
use crate::error::Failure;

/// The reference tables of a run, staged (and, once `run::load_reference` has run, validated).
#[derive(Debug, Clone)]
pub struct RefFrames {
    pub customers: DataFrame,
    pub org_units: DataFrame,
    pub rate_cards: DataFrame,
    pub tag_rules: DataFrame,
    pub fx_rates: DataFrame,
    pub manual_lines: DataFrame,
    pub psa_time: DataFrame,
    pub license_activity: DataFrame,
    pub utilization: DataFrame,
    /// `stg_gl_accounts`: empty when `gl_accounts` is not configured (then no ledger is built).
    pub gl_accounts: DataFrame,
}

impl RefFrames {
    /// Staged reference tables with the table name each is published under.
    pub fn tables(&self) -> [(&'static str, &DataFrame); 10] {
        [
            (schemas::stg_customers::TABLE, &self.customers),
            (schemas::stg_org_units::TABLE, &self.org_units),
            (schemas::stg_rate_cards::TABLE, &self.rate_cards),
            (schemas::stg_tag_rules::TABLE, &self.tag_rules),
            (schemas::stg_fx_rates::TABLE, &self.fx_rates),
            (schemas::stg_manual_lines::TABLE, &self.manual_lines),
            (schemas::stg_psa_time::TABLE, &self.psa_time),
            (schemas::stg_license_activity::TABLE, &self.license_activity),
            (schemas::stg_utilization::TABLE, &self.utilization),
            (schemas::stg_gl_accounts::TABLE, &self.gl_accounts),
        ]
    }
}

/// Every staged reference table of a run, with where each came from.
#[derive(Debug, Clone)]
pub struct Reference {
    pub frames: RefFrames,
    /// Each file read: (table, path, rows staged, identical rows counted once).
    pub files: Vec<RefFile>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RefFile {
    pub table: String,
    pub path: String,
    pub sha256: String,
    pub rows: u64,
    pub duplicates: u64,
}

/// Reads and stages every reference file the config names; optional files that are not configured are empty.
pub fn load(cfg: &Config) -> Result<Reference> {
    let i = &cfg.inputs;
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let mut one = |table: RefTable, loc: Option<&String>| -> Result<DataFrame> {
        let Some(loc) = loc else { return Ok(empty(table)) };
        let path = cfg.resolve(loc);
        let (staged, sha) = read_one(table, Path::new(&path))?;
        files.push(RefFile {
            table: table.table().to_string(),
            path: path.clone(),
            sha256: sha,
            rows: staged.df.height() as u64,
            duplicates: staged.duplicates,
        });
        warnings.extend(staged.warnings);
        Ok(staged.df)
    };
    let customers = one(RefTable::Customers, Some(&i.customers))?;
    let org_units = one(RefTable::OrgUnits, i.org_units.as_ref())?;
    let rate_cards = one(RefTable::RateCards, Some(&i.rate_cards))?;
    let tag_rules = one(RefTable::TagRules, i.tag_rules.as_ref())?;
    let fx_rates = one(RefTable::FxRates, i.fx_rates.as_ref())?;
    let manual_lines = one(RefTable::ManualLines, i.manual_lines.as_ref())?;
    let psa_time = one(RefTable::PsaTime, i.psa_time_entries.as_ref())?;
    let license_activity = one(RefTable::LicenseActivity, i.license_activity.as_ref())?;
    let utilization = one(RefTable::Utilization, i.utilization.as_ref())?;
    let gl_accounts = one(RefTable::GlAccounts, i.gl_accounts.as_ref())?;
    // Customer ids once, here at the edge: every reference table in the spelling of customers.csv.
    let spell = |table: RefTable, mut df: DataFrame| -> Result<DataFrame> {
        pipeline::reference::with_customer_spelling(table, &mut df, &customers)
            .map_err(|e| Failure::usage(format!("{}: cannot match customer ids to customers.csv: {e}", table.table())))?;
        Ok(df)
    };
    let org_units = spell(RefTable::OrgUnits, org_units)?;
    let rate_cards = spell(RefTable::RateCards, rate_cards)?;
    let tag_rules = spell(RefTable::TagRules, tag_rules)?;
    let manual_lines = spell(RefTable::ManualLines, manual_lines)?;
    let psa_time = spell(RefTable::PsaTime, psa_time)?;
    let license_activity = spell(RefTable::LicenseActivity, license_activity)?;
    let frames = RefFrames { customers, org_units, rate_cards, tag_rules, fx_rates, manual_lines, psa_time, license_activity, utilization, gl_accounts };
    Ok(Reference { frames, files, warnings })
}

/// Exit 2 naming the first line that is not UTF-8 (a spreadsheet's "CSV" in a legacy code page).
pub(crate) fn require_utf8(shown: &str, bytes: &[u8]) -> Result<()> {
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        return Err(Failure::usage(format!("{shown}:{line}: the file is not UTF-8; save it as UTF-8 (CSV UTF-8 in Excel) and run again")).into());
    }
    Ok(())
}

/// A CSV file a person edits, every cell as text (no schema inference): the reference files, and the legacy,
/// PSA and CRM exports of `cspbill compare` / `drift`. Unreadable CSV is exit 2.
pub(crate) fn text_frame(shown: &str, bytes: Vec<u8>) -> Result<DataFrame> {
    Ok(CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(false)
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| Failure::usage(format!("{shown}: cannot read as CSV: {e}; check the delimiter (comma) and quoting")))?)
}

/// Reads one reference CSV as text and stages it. Any problem is a usage error (exit 2) with file and line.
pub fn read_one(table: RefTable, path: &Path) -> Result<(StagedRef, String)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        Failure::usage(format!("cannot read reference file `{shown}` ({}): {e}; check `[inputs]` in cspbill.toml", table.table()))
    })?;
    require_utf8(&shown, &bytes)?;
    let sha = crate::inputs_sha256(&bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace() || *b == 0xef || *b == 0xbb || *b == 0xbf) {
        return Err(Failure::usage(format!("{shown}:1: the file is empty; it needs at least a header line (see DESIGN §4.2)")).into());
    }
    let df = text_frame(&shown, bytes)?;
    let header: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let cols: Vec<&StringChunked> = df
        .columns()
        .iter()
        .map(|c| c.str())
        .collect::<PolarsResult<_>>()
        .map_err(|e| Failure::usage(format!("{shown}: {e}")))?;
    let rows: Vec<(u64, Vec<String>)> = (0..df.height())
        .map(|r| ((r + 2) as u64, cols.iter().map(|c| c.get(r).unwrap_or("").to_string()).collect()))
        .collect();
    let staged = stage_reference(table, &shown, &header, &rows).map_err(|errs| config_errors(&errs))?;
    Ok((staged, sha))
}

/// Turns configuration errors into one usage failure listing the first few.
pub fn config_errors(errs: &[pipeline::ConfigError]) -> anyhow::Error {
    let mut msg = format!("{} problem(s) in the reference data:", errs.len());
    for e in errs.iter().take(10) {
        msg.push_str(&format!("\n  {e}"));
    }
    if errs.len() > 10 {
        msg.push_str(&format!("\n  ... and {} more", errs.len() - 10));
    }
    Failure::usage(msg).into()
}
