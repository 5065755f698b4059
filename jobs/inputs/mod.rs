//! Reading a period's Partner Center snapshot: listing its files, detecting each file's format by content,
//! reading it into a lazy frame of text cells, and running the pure typing stage (`pipeline::ingest`) over it.
//! The result is the staged and rejected rows of the whole snapshot (billed usage winning over unbilled, rows
//! repeated across files removed) and per-file statistics that balance (DESIGN §4.1, §6).
//!
//! Formats, recognised by content only:
//! - `csv_daily_usage`, `csv_invoice_recon`: a CSV whose header names the Partner Center columns (any casing,
//!   any order, 51/55/more columns, BOM or not, CRLF or LF, quoted or not). Read by Polars with an all-String
//!   schema after one streaming pre-scan in Rust that hashes the file, checks UTF-8 (naming the first bad line),
//!   reads the header and finds rows whose field count differs from the header (truncated or ragged lines).
//! - `v1_json_page` (`{"totalCount":..,"items":[...]}`), `jsonl_daily_usage`, `jsonl_onetime`,
//!   `jsonl_legacy_license` (one object per line), `v2_blob` (the `*.json.gz` JSON-lines blobs of a v2 export
//!   folder holding `manifest.json`). Parsed by `serde_json` with `arbitrary_precision`, numbers kept as text.
//!
//! Streaming: each CSV is parsed once, by a lazy scan whose typing is elementwise, sunk to a spool file by Polars'
//! streaming engine ([`read_snapshot_in`]); the occurrence numbers behind `line_id` and the cross-file duplicates
//! are found from 16-byte row keys spooled in buckets, one bucket in memory at a time. JSON files are parsed in
//! memory, one file (or blob) at a time (they are pages or blobs of bounded size).

use std::collections::HashMap;
use std::sync::Arc;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pipeline::Period;
use pipeline::ingest::{HeaderMap, StageOptions, map_header, normalise_name};
use polars::prelude::*;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::error::Failure;
use crate::spool::{Spool, SpoolTable};

/// Input safety (file types, links, size limits): its own file, included here so every user of this module
/// (the binary, `tests/ingest_fixtures.rs`) gets it.
pub use crate::guard;

pub use pipeline::ingest::SourceKind;

mod csv;
mod json;
use csv::load_csv;
use json::{load_json_bytes, load_v2, v2_blobs};

/// What became of one input file (or one blob of a v2 export).
#[derive(Clone, Debug, PartialEq)]
pub struct FileStats {
    /// File name (for a v2 blob: `folder/blob.json.gz`); the `source_file` of its rows.
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 of the file's bytes as received (for a blob, of the compressed blob).
    pub sha256: String,
    pub bytes: u64,
    pub kind: Option<SourceKind>,
    /// `csv_daily_usage`, `csv_invoice_recon`, `v1_json_page`, `jsonl_daily_usage`, `jsonl_onetime`,
    /// `jsonl_legacy_license` or `v2_blob`.
    pub format: String,
    pub rows_in: u64,
    pub staged: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub set_aside: u64,
    /// Good rows dated in another period than the run's (set aside; billed by that period's run).
    pub other_period: u64,
    pub cost_in: Decimal,
    pub cost_staged: Decimal,
    pub cost_rejected: Decimal,
    pub cost_duplicates: Decimal,
    pub cost_set_aside: Decimal,
    pub cost_other_period: Decimal,
    /// Cells with more than 18 fractional digits, rounded half-even.
    pub rounded_values: u64,
    /// SkuIds left-padded to 4 characters.
    pub padded_sku_ids: u64,
    /// Columns (or JSON keys) not mapped to a staged column.
    pub unknown_columns: Vec<String>,
    pub warnings: Vec<String>,
}

impl FileStats {
    /// Whether rows and amounts balance: in = staged + rejected + duplicates + set aside + other period.
    pub fn balances(&self) -> bool {
        self.rows_in == self.staged + self.rejected + self.duplicates + self.set_aside + self.other_period
            && self.cost_in
                == self.cost_staged
                    + self.cost_rejected
                    + self.cost_duplicates
                    + self.cost_set_aside
                    + self.cost_other_period
    }
}

/// The staged snapshot of a period: scans of spool files in exactly the `schemas` schemas, and per-file statistics.
pub struct Snapshot {
    pub usage: LazyFrame,
    pub invoice_lines: LazyFrame,
    pub rejects_usage: LazyFrame,
    pub rejects_invoice: LazyFrame,
    pub files: Vec<FileStats>,
    /// The spool files behind the four frames.
    pub paths: SnapshotPaths,
    /// Keeps the spool (and so the files) alive as long as the snapshot.
    pub spool: Arc<Spool>,
}

/// Where the staged and rejected rows of a snapshot are spooled (as they will be published).
#[derive(Clone, Debug)]
pub struct SnapshotPaths {
    pub usage: SpoolTable,
    pub invoice_lines: SpoolTable,
    pub rejects_usage: SpoolTable,
    pub rejects_invoice: SpoolTable,
}

/// Lists the input files of a snapshot folder, recursively and sorted by path; a folder holding `manifest.json`
/// is one v2 export and is listed as the folder. Hidden files (`.name`) and `README*` files are skipped. Only
/// regular files and folders are listed: a FIFO, device or socket, or a link leading out of `dir` (unless
/// `follow_symlinks`), is exit 2 naming it (`guard::check_entry`).
pub fn list_snapshot(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    walk(dir, dir, &mut out, &mut seen)?;
    out.sort();
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<()> {
    // A link back to a folder already listed would loop forever.
    if !seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    if dir.join("manifest.json").is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!("cannot list the inputs in `{}`: check that the folder exists", dir.display())
    })?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list the inputs in `{}`", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.starts_with('.') || name.to_ascii_lowercase().starts_with("readme") {
            continue;
        }
        match guard::check_entry(root, &path)? {
            guard::Entry::Dir(p) => walk(root, &p, out, seen)?,
            guard::Entry::File(p) => out.push(p),
        }
    }
    Ok(())
}

const ACCEPTED: &str = "cspbill reads a daily rated usage CSV, an invoice reconciliation CSV, v1 `lineitems` JSON \
(a page `{\"items\":[...]}` or one object per line) and v2 export folders (`manifest.json` + `*.json.gz`)";

/// One input read and ready for the typing stage.
pub(crate) struct Loaded {
    pub(crate) stats: FileStats,
    pub(crate) kind: SourceKind,
    pub(crate) raw: LazyFrame,
    pub(crate) opts: StageOptions,
    /// For usage: whether the file is billed (its first row carries an `InvoiceNumber`).
    pub(crate) billed: bool,
}

fn usage_err(msg: String) -> anyhow::Error {
    Failure::usage(msg).into()
}

pub(crate) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn empty_stats(name: String, path: &Path) -> FileStats {
    FileStats {
        name,
        path: path.to_path_buf(),
        sha256: String::new(),
        bytes: 0,
        kind: None,
        format: String::new(),
        rows_in: 0,
        staged: 0,
        rejected: 0,
        duplicates: 0,
        set_aside: 0,
        other_period: 0,
        cost_in: Decimal::ZERO,
        cost_staged: Decimal::ZERO,
        cost_rejected: Decimal::ZERO,
        cost_duplicates: Decimal::ZERO,
        cost_set_aside: Decimal::ZERO,
        cost_other_period: Decimal::ZERO,
        rounded_values: 0,
        padded_sku_ids: 0,
        unknown_columns: Vec::new(),
        warnings: Vec::new(),
    }
}

fn check_header(
    name: &str,
    kind: SourceKind,
    map: &HeaderMap,
    legacy: bool,
    line_hint: &str,
) -> Result<()> {
    if let Some(col) = map.missing(kind, legacy).first() {
        return Err(usage_err(format!(
            "`{name}`: {line_hint}required column `{col}` is missing (Partner Center calls it `{}`): \
             re-export the full {} file from Partner Center",
            pascal(col),
            if kind == SourceKind::DailyUsage {
                "daily rated usage"
            } else {
                "invoice reconciliation"
            }
        )));
    }
    Ok(())
}

/// `billing_pre_tax_total` → `BillingPreTaxTotal`, to name a column as Microsoft spells it.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Reads one input path (a file, or a v2 export folder) into one or more loaded inputs.
pub(crate) fn load(path: &Path, period: Period) -> Result<Vec<Loaded>> {
    if path.is_dir() {
        return load_v2(path, period);
    }
    let name = display_name(path);
    let mut head = [0u8; 4096];
    let n = {
        let mut f =
            File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
        f.read(&mut head)
            .with_context(|| format!("cannot read `{}`", path.display()))?
    };
    let head = &head[..n];
    let start = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let first = start.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        None if n == 0 || start.iter().all(|b| b.is_ascii_whitespace()) => Err(usage_err(format!(
            "`{name}`: line 1: the file is empty: re-download the export from Partner Center or remove the file"
        ))),
        Some(b'{') | Some(b'[') => {
            let bytes = guard::read_json_file(path, &name)?;
            let sha = hex::encode(Sha256::digest(&bytes));
            Ok(vec![load_json_bytes(
                path, name, &bytes, sha, false, period,
            )?])
        }
        _ if head.starts_with(&[0x1f, 0x8b]) => Err(usage_err(format!(
            "`{name}`: a gzip file outside a v2 export folder: put it in its export's folder beside `manifest.json`"
        ))),
        _ => Ok(vec![load_csv(path, name, period)?]),
    }
}

/// The names the inputs of one listed path (a file, or a v2 export folder's blobs) carry as `source_file` before
/// names that collide across the snapshot are prefixed ([`crate::snapshot::load_units`]); no byte is read.
pub(crate) fn input_names(path: &Path) -> Result<Vec<String>> {
    if path.is_dir() {
        let folder = display_name(path);
        Ok(v2_blobs(path)?.iter().map(|b| format!("{folder}/{}", display_name(b))).collect())
    } else {
        Ok(vec![display_name(path)])
    }
}

pub use crate::snapshot::{read_snapshot, read_snapshot_in, sha256_file};
