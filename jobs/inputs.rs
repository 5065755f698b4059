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

fn empty_stats(name: String, path: &Path) -> FileStats {
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

// ------------------------------------------------------------------------------------------------------------
// CSV
// ------------------------------------------------------------------------------------------------------------

/// What one streaming pass over a CSV file learns.
///
/// `data_records` is the contract the run's conservation check relies on: the number of records after the
/// header that hold any content, counted from the bytes alone (independently of the parser that types them).
/// Records end at LF or CRLF outside double quotes (`"` toggles quoting, `""` inside quotes is an escaped quote);
/// a last record without a line end counts; a last record cut inside a quoted value counts (and is flagged in
/// `open_quote_tail`); blank lines do not count (they are listed in `blank_lines`). A bare CR outside quotes
/// (CR-only line ends) is refused by the scan (exit 2), so a parser that splits lines differently cannot
/// silently read fewer rows: for a file the scan accepts, the parser's row count (staged + rejected, before
/// duplicates and set-asides) must equal `data_records`.
#[derive(Debug, Default)]
struct CsvScan {
    sha256: String,
    bytes: u64,
    header: Vec<String>,
    first_row: Vec<String>,
    data_records: u64,
    /// Line numbers (header = 1, counting records) whose field count differs from the header's, with the count.
    ragged: Vec<(i64, usize, bool)>,
    /// Blank lines after the header (numbered as records, as Polars numbers rows).
    blank_lines: Vec<i64>,
    /// The file ends inside a quoted field (it was cut): the byte offset where that last record starts.
    open_quote_tail: Option<u64>,
}

/// Splits one CSV record (without its line end) into fields, RFC 4180 quoting. Linear in the record's length.
fn split_record(rec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut chars = rec.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_q) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => in_q = !in_q,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The cells of a last record cut inside a quoted value: the complete fields before the cut as read, the cut
/// field and everything after it unknown (None). So the amounts that were readable are counted, not lost.
fn cut_record_cells(tail: &str, width: usize) -> Vec<Option<String>> {
    let tail = tail.trim_start_matches('\u{feff}');
    let mut cells: Vec<Option<String>> = split_record(tail).into_iter().map(Some).collect();
    if let Some(last) = cells.last_mut() {
        *last = None;
    }
    cells.resize(width, None);
    cells
}

/// The state of the streaming scan of one CSV file (see [`CsvScan`] for what it counts).
struct Scanner<'a> {
    name: &'a str,
    limits: guard::Limits,
    scan: CsvScan,
    line: u64,
    record_line: u64,
    in_q: bool,
    cr_pending: bool,
    fields: usize,
    content: bool,
    /// Bytes of the header and the first data record (each at most `max_record_bytes`).
    first_two: Vec<u8>,
    records_seen: u64,
    pos: u64,
    record_start: u64,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of a file.
    fn new(name: &'a str, limits: guard::Limits) -> Self {
        Scanner {
            name,
            limits,
            scan: CsvScan::default(),
            line: 1,
            record_line: 1,
            in_q: false,
            cr_pending: false,
            fields: 1,
            content: false,
            first_two: Vec::new(),
            records_seen: 0,
            pos: 0,
            record_start: 0,
        }
    }

    fn finish_record(&mut self, truncated: bool) -> Result<()> {
        self.records_seen += 1;
        if self.records_seen == 1 {
            let text = String::from_utf8_lossy(&self.first_two).to_string();
            let text = text.trim_start_matches('\u{feff}').trim_end_matches(['\r', '\n']);
            self.scan.header = split_record(text);
            self.first_two.clear();
            self.check_header()?;
        } else {
            self.scan.data_records += 1;
            if self.records_seen == 2 {
                let text = String::from_utf8_lossy(&self.first_two).to_string();
                self.scan.first_row = split_record(text.trim_end_matches(['\r', '\n']));
                self.first_two = Vec::new();
            }
            if truncated || self.fields != self.scan.header.len() {
                self.scan.ragged.push((self.records_seen as i64, self.fields, truncated));
            }
        }
        Ok(())
    }

    /// A header that is not a Partner Center export stops the scan at line 1, quoting nothing of the file: it
    /// may be anything (a link to a system file, a customer's spreadsheet).
    fn check_header(&self) -> Result<()> {
        let h = &self.scan.header;
        let name = self.name;
        if detect_csv(h).is_some() {
            return Ok(());
        }
        if h.len() == 1 && (h[0].contains(';') || h[0].contains('\t')) {
            let sep = if h[0].contains(';') { "`;`" } else { "a tab" };
            return Err(usage_err(format!(
                "`{name}`: line 1: the header is separated by {sep}, not by commas (a spreadsheet saved it with another \
                 locale's list separator): save it as comma-separated CSV or use the file as downloaded from Partner Center"
            )));
        }
        Err(usage_err(format!(
            "`{name}`: line 1: not a Partner Center export (its first line, {} field(s), names neither daily rated usage \
             nor invoice reconciliation columns): {ACCEPTED}; remove the file from the input folder",
            h.len()
        )))
    }

    /// Feeds a run of bytes, as [`Scanner::byte`] would one at a time, but skipping in bulk the bytes that change
    /// nothing but the position: outside quotes anything but `"`, `,`, CR and LF; inside quotes anything but `"`
    /// and LF. The header, the first record and a pending CR go byte by byte. (The pre-scan is a sequential pass
    /// over every input byte, so it bounds ingest: issue 10.)
    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        let mut i = 0;
        while i < bytes.len() {
            if self.records_seen < 2 || self.cr_pending {
                self.byte(bytes[i])?;
                i += 1;
                continue;
            }
            let rest = &bytes[i..];
            let skip = if self.in_q {
                rest.iter().position(|&b| b == b'"' || b == b'\n')
            } else {
                rest.iter().position(|&b| matches!(b, b'"' | b',' | b'\n' | b'\r'))
            }
            .unwrap_or(rest.len());
            if skip == 0 {
                self.byte(bytes[i])?;
                i += 1;
                continue;
            }
            self.pos += skip as u64;
            if !self.in_q {
                self.content = true;
            }
            if self.pos - self.record_start > self.limits.max_record_bytes {
                return Err(guard::record_too_long(self.name, self.record_line, self.limits.max_record_bytes));
            }
            i += skip;
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<()> {
        self.pos += 1;
        if self.records_seen < 2 {
            self.first_two.push(b);
        }
        if self.pos - self.record_start > self.limits.max_record_bytes {
            return Err(guard::record_too_long(self.name, self.record_line, self.limits.max_record_bytes));
        }
        if self.in_q {
            if b == b'"' {
                self.in_q = false;
            } else if b == b'\n' {
                self.line += 1;
            }
            return Ok(());
        }
        if self.cr_pending && b != b'\n' {
            return Err(usage_err(format!(
                "`{}`: line {}: the file has CR-only line ends (classic Mac, some Excel exports), which cspbill \
                 cannot split into rows reliably: save it as CSV with CRLF or LF line ends (Excel: \"CSV UTF-8\") \
                 or re-download it from Partner Center",
                self.name, self.line
            )));
        }
        self.cr_pending = false;
        match b {
            b'"' => {
                self.in_q = true;
                self.content = true;
            }
            b',' => {
                self.fields += 1;
                self.content = true;
                if self.fields as u64 > self.limits.max_columns {
                    return Err(guard::too_many_columns(self.name, self.record_line, self.limits.max_columns));
                }
            }
            b'\n' => {
                self.line += 1;
                if self.content {
                    self.finish_record(false)?;
                } else if self.records_seen >= 1 {
                    // Polars reads a blank line as a row of nulls: number it like Polars does, and let the
                    // reader drop it by its number (a blank line is not a row of the export).
                    self.records_seen += 1;
                    self.scan.blank_lines.push(self.records_seen as i64);
                    self.first_two.clear();
                } else {
                    self.first_two.clear();
                }
                self.fields = 1;
                self.content = false;
                self.record_start = self.pos;
                self.record_line = self.line;
            }
            b'\r' => self.cr_pending = true,
            _ => self.content = true,
        }
        Ok(())
    }
}

/// One streaming pass over a CSV file: SHA-256, UTF-8 check, header, record count and shape (see [`CsvScan`]).
/// Memory is bounded by `max_record_bytes`; time is linear in the file's size.
fn prescan_csv(path: &Path, name: &str) -> Result<CsvScan> {
    let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut s = Scanner::new(name, guard::limits());
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        s.scan.bytes += n as u64;
        let mut chunk = std::mem::take(&mut carry);
        chunk.extend_from_slice(&buf[..n]);
        let valid = match std::str::from_utf8(&chunk) {
            Ok(_) => chunk.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => {
                let bad_line = s.line
                    + chunk[..e.valid_up_to()]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                return Err(usage_err(format!(
                    "`{name}`: line {bad_line}: bytes that are not UTF-8 (the file looks Latin-1 or Windows-1252 encoded): \
                     save it as UTF-8 (Excel: \"CSV UTF-8\") or re-download it from Partner Center"
                )));
            }
        };
        carry = chunk[valid..].to_vec();
        s.feed(&chunk[..valid])?;
    }
    if !carry.is_empty() {
        return Err(usage_err(format!(
            "`{name}`: line {}: the file ends inside a UTF-8 character (it is cut short or not UTF-8): re-download it",
            s.line
        )));
    }
    if s.content {
        // The last record has no line end: fine, unless a quoted field was never closed (the file is cut).
        let cut = s.in_q;
        s.finish_record(cut)?;
        if cut && s.records_seen > 1 {
            s.scan.open_quote_tail = Some(s.record_start);
        }
    }
    let mut scan = s.scan;
    scan.sha256 = hex::encode(hasher.finalize());
    Ok(scan)
}

#[cfg(test)]
mod prescan_tests {
    use super::*;

    const HEADER: &str = "UsageDate,BillingPreTaxTotal,Tags";

    fn scan(body: &[u8]) -> Result<CsvScan> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.csv");
        std::fs::write(&p, body).unwrap();
        prescan_csv(&p, "f.csv")
    }

    fn records(body: &str) -> u64 {
        scan(body.as_bytes()).unwrap().data_records
    }

    /// The bulk skipping of `Scanner::feed` against the byte-at-a-time `Scanner::byte` on random CSV-like bytes
    /// (quotes, commas, CR, LF, blank lines, long fields): the same scan or the same error, every time.
    #[test]
    fn feeding_in_bulk_scans_exactly_like_byte_by_byte() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let alphabet: &[u8] = b"ab1.,,\"\"\n\n\r -x";
        let run = |body: &[u8], bulk: bool| -> String {
            let mut s = Scanner::new("f.csv", guard::Limits { max_record_bytes: 64, ..guard::limits() });
            // Fed in uneven pieces, as the reader's buffers would.
            let mut r = Ok(());
            for piece in body.chunks(7) {
                r = if bulk { s.feed(piece) } else { piece.iter().try_for_each(|&b| s.byte(b)) };
                if r.is_err() {
                    break;
                }
            }
            match r {
                Ok(()) => format!("{:?} {} {} {} {}", s.scan, s.line, s.records_seen, s.in_q, s.content),
                Err(e) => format!("error: {e:#}"),
            }
        };
        let mut errors = 0;
        for _ in 0..3000 {
            let len = rng.random_range(0..160);
            let mut body = format!("{HEADER}\n").into_bytes();
            body.extend((0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]));
            let (a, b) = (run(&body, true), run(&body, false));
            assert_eq!(a, b, "body {:?}", String::from_utf8_lossy(&body));
            errors += a.starts_with("error") as usize;
        }
        // Both outcomes were exercised.
        assert!(errors > 100 && errors < 2900, "{errors} errors in 3000");
    }

    #[test]
    fn data_records_count_records_not_lines() {
        assert_eq!(records(&format!("{HEADER}\n1,2,3\n4,5,6\n")), 2);
        assert_eq!(records(&format!("\u{feff}{HEADER}\r\n1,2,3\r\n4,5,6")), 2, "CRLF, BOM, no final line end");
        assert_eq!(records(&format!("{HEADER}\n1,2,\"a\nb\r\nc\"\n\n4,5,6\n\n")), 2, "quoted line breaks, blanks");
        assert_eq!(records(&format!("{HEADER}\n1,2,\"x\"\"y\"\n")), 1, "escaped quote");
        let cut = scan(format!("{HEADER}\n1,2,3\n4,5,\"cut").as_bytes()).unwrap();
        assert_eq!((cut.data_records, cut.open_quote_tail.is_some()), (2, true));
        assert_eq!(cut_record_cells("4,5,\"cu", 3), vec![Some("4".into()), Some("5".into()), None]);
    }

    #[test]
    fn cr_only_limits_and_foreign_files_are_refused_quoting_nothing() {
        let e = format!("{:#}", scan(format!("{HEADER}\r1,2,3\r").as_bytes()).unwrap_err());
        assert!(e.contains("line 1") && e.contains("CR-only"), "{e}");
        // A CR inside quotes is data.
        assert_eq!(records(&format!("{HEADER}\n1,2,\"a\rb\"\n")), 1);
        let e = format!("{:#}", scan(b"root:x:0:0:root:/root:/bin/bash\nmore\n").unwrap_err());
        assert!(e.contains("not a Partner Center export") && !e.contains("root:"), "{e}");
        let long = format!("{HEADER}\n1,2,{}\n", "x".repeat((guard::limits().max_record_bytes + 1) as usize));
        let e = format!("{:#}", scan(long.as_bytes()).unwrap_err());
        assert!(e.contains("line 2") && e.contains("max_record_bytes") && e.len() < 400, "{e}");
        let wide = format!("{HEADER},{}\n", ",".repeat(guard::limits().max_columns as usize));
        let e = format!("{:#}", scan(wide.as_bytes()).unwrap_err());
        assert!(e.contains("max_columns") && e.len() < 400, "{e}");
    }
}

fn detect_csv(header: &[String]) -> Option<(SourceKind, &'static str)> {
    let names: Vec<String> = header.iter().map(|h| normalise_name(h)).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("usagedate") && (has("billingpretaxtotal") || has("quantity")) {
        Some((SourceKind::DailyUsage, "csv_daily_usage"))
    } else if has("subtotal") && has("chargetype") {
        Some((SourceKind::InvoiceLines, "csv_invoice_recon"))
    } else {
        None
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

fn load_csv(path: &Path, name: String, period: Period) -> Result<Loaded> {
    let scan = prescan_csv(path, &name)?;
    if scan.header.is_empty() {
        return Err(usage_err(format!(
            "`{name}`: line 1: the file is empty: re-download the export from Partner Center or remove the file"
        )));
    }
    if scan.header.len() == 1 && (scan.header[0].contains(';') || scan.header[0].contains('\t')) {
        let sep = if scan.header[0].contains(';') {
            "`;`"
        } else {
            "a tab"
        };
        return Err(usage_err(format!(
            "`{name}`: line 1: the header is separated by {sep}, not by commas (a spreadsheet saved it with another \
             locale's list separator): save it as comma-separated CSV or use the file as downloaded from Partner Center"
        )));
    }
    let Some((kind, format)) = detect_csv(&scan.header) else {
        return Err(usage_err(format!(
            "`{name}`: line 1: the header is not one of a Partner Center export ({} columns, starting `{}`): {ACCEPTED}",
            scan.header.len(),
            scan.header
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )));
    };
    let map = map_header(kind, &scan.header);
    check_header(&name, kind, &map, false, "line 1: ")?;

    let schema: Schema = (0..scan.header.len())
        .map(|i| Field::new(format!("c{i}").into(), DataType::String))
        .collect();
    // A file cut inside a quoted field would make Polars fail on the unclosed quote: read it without its last
    // record, which becomes a reject below (a rare, damaged file: reading it into memory is fine).
    let reader = match scan.open_quote_tail {
        Some(start) => {
            let mut bytes =
                std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            bytes.truncate(start as usize);
            LazyCsvReader::new_with_sources(ScanSources::Buffers(Arc::from(vec![bytes.into()])))
        }
        None => LazyCsvReader::new(PlRefPath::try_from_path(path)?),
    };
    // The header is read as row 1 and filtered out, rather than skipped by `with_skip_rows(1)`: Polars 0.55 finds
    // where skipped rows end by re-splitting a growing buffer from the start of the file, which is quadratic in
    // the length of a long first record (issue 21 item 4); reading from byte 0 is linear.
    let lf = reader
        .with_has_header(false)
        .with_skip_rows(0)
        .with_schema(Some(Arc::new(schema)))
        .with_truncate_ragged_lines(true)
        .with_missing_is_null(true)
        .with_raise_if_empty(false)
        .with_row_index(Some(RowIndex {
            name: "line_number".into(),
            offset: 1,
        }))
        .finish()
        .map_err(|e| anyhow::anyhow!("cannot read `{name}` as CSV: {e}"))?
        .filter(col("line_number").gt(lit(1)));

    let mut exprs: Vec<Expr> = map
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|c| col(format!("c{i}")).alias(c)))
        .collect();
    let ragged_lines: Vec<i64> = scan.ragged.iter().map(|r| r.0).collect();
    let width = scan.header.len();
    let (problem, reason) = if ragged_lines.is_empty() {
        (
            lit(NULL).cast(DataType::String),
            lit(NULL).cast(DataType::String),
        )
    } else {
        let hit = col("line_number").cast(DataType::Int64).is_in(
            lit(Series::new("l".into(), ragged_lines)).implode(false),
            false,
        );
        (
            when(hit.clone()).then(lit("ragged_row")).otherwise(lit(NULL).cast(DataType::String)),
            when(hit)
                .then(lit(format!(
                    "the line's number of fields differs from the header's {width} (the line is cut short, or a value \
                     holds an unquoted comma): re-download the export; do not edit it in a spreadsheet"
                )))
                .otherwise(lit(NULL).cast(DataType::String)),
        )
    };
    exprs.extend([
        lit(name.clone()).alias("source_file"),
        lit(format).alias("source_format"),
        col("line_number").cast(DataType::Int64),
        problem.alias("row_problem"),
        reason.alias("row_problem_reason"),
        lit(NULL).cast(DataType::String).alias("raw"),
    ]);
    let mut raw = lf.select(exprs);
    if !scan.blank_lines.is_empty() {
        let blanks = lit(Series::new("b".into(), scan.blank_lines.clone())).implode(false);
        raw = raw.filter(col("line_number").is_in(blanks, false).not());
    }
    if let Some(start) = scan.open_quote_tail {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let tail = String::from_utf8_lossy(&bytes[start as usize..]).to_string();
        let line = scan.ragged.last().map(|r| r.0).unwrap_or(0);
        // The complete cells before the cut are kept, so the readable amounts count in conservation.
        let cells = cut_record_cells(&tail, map.columns.len());
        let cell = |c: &str| map.columns.iter().position(|m| *m == Some(c)).and_then(|i| cells[i].clone());
        let mut cols: Vec<Column> =
            map.present().iter().map(|c| Column::new((*c).into(), [cell(c)])).collect();
        cols.extend([
            Column::new("source_file".into(), [name.clone()]),
            Column::new("source_format".into(), [format]),
            Column::new("line_number".into(), [line]),
            Column::new("row_problem".into(), ["ragged_row"]),
            Column::new(
                "row_problem_reason".into(),
                [
                    "the file ends inside a quoted value: it was cut short; re-download the export"
                        .to_string(),
                ],
            ),
            Column::new("raw".into(), [tail]),
        ]);
        let tail_df = DataFrame::new_infer_height(cols)
            .map_err(|e| anyhow::anyhow!("cannot build the last row of `{name}`: {e}"))?;
        raw = concat([raw, tail_df.lazy()], UnionArgs::default())?;
    }

    let mut stats = empty_stats(name.clone(), path);
    stats.sha256 = scan.sha256;
    stats.bytes = scan.bytes;
    stats.kind = Some(kind);
    stats.format = format.to_string();
    stats.unknown_columns = map.unknown.clone();
    if !scan.blank_lines.is_empty() {
        stats.warnings.push(format!(
            "`{name}`: {} blank line(s) skipped",
            scan.blank_lines.len()
        ));
    }
    if scan.data_records == 0 {
        stats
            .warnings
            .push(format!("`{name}` has a header and no rows"));
    }
    let billed = map
        .columns
        .iter()
        .position(|c| *c == Some("invoice_number"))
        .and_then(|i| scan.first_row.get(i))
        .is_some_and(|v| !v.trim().is_empty());
    let opts = StageOptions {
        kind,
        period,
        present: map.present().iter().map(|s| s.to_string()).collect(),
        percent: map.percent.iter().map(|s| s.to_string()).collect(),
    };
    Ok(Loaded {
        stats,
        kind,
        raw,
        opts,
        billed,
    })
}

// ------------------------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------------------------

/// A JSON value as the text of a cell: numbers exactly as written (`arbitrary_precision`), arrays and objects
/// as compact JSON, null as an empty cell.
fn cell_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

fn object_type(obj: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("attributes"))
        .and_then(|(_, a)| a.as_object())
        .and_then(|a| a.iter().find(|(k, _)| k.eq_ignore_ascii_case("objectType")))
        .and_then(|(_, t)| t.as_str().map(str::to_string))
}

fn is_legacy(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    match object_type(obj) {
        Some(t) => t.eq_ignore_ascii_case("LicenseBasedLineItem"),
        None => {
            let keys: Vec<String> = obj.keys().map(|k| normalise_name(k)).collect();
            keys.iter().any(|k| k == "offerid") && !keys.iter().any(|k| k == "productid")
        }
    }
}

fn detect_json(obj: &serde_json::Map<String, serde_json::Value>) -> Option<SourceKind> {
    let keys: Vec<String> = obj.keys().map(|k| normalise_name(k)).collect();
    let has = |n: &str| keys.iter().any(|k| k == n);
    if has("usagedate") {
        Some(SourceKind::DailyUsage)
    } else if has("subtotal") {
        Some(SourceKind::InvoiceLines)
    } else {
        None
    }
}

enum JsonRow {
    Object(serde_json::Map<String, serde_json::Value>),
    Bad { text: String, error: String },
}

/// Reads JSON text (a v1 page, an array, or JSON lines) into rows with their line numbers: the physical line for
/// JSON lines, the 1-based position in `items` for a page.
fn json_rows(name: &str, text: &str) -> Result<(Vec<(i64, JsonRow)>, bool)> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Err(usage_err(format!(
            "`{name}`: line 1: the file is empty: re-download the export or remove the file"
        )));
    }
    // A whole document first: a v1 page or an array. JSON lines of one object also parse here, as one object.
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(trimmed) {
        let items = match &doc {
            serde_json::Value::Array(a) => Some(a.clone()),
            serde_json::Value::Object(o) => o
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("items"))
                .and_then(|(_, v)| v.as_array().cloned()),
            _ => None,
        };
        if let Some(items) = items {
            let rows = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let row = match v {
                        serde_json::Value::Object(o) => JsonRow::Object(o),
                        other => JsonRow::Bad {
                            text: other.to_string(),
                            error: "an item that is not an object".into(),
                        },
                    };
                    (i as i64 + 1, row)
                })
                .collect();
            return Ok((rows, true));
        }
    }
    let mut rows = Vec::new();
    let max = guard::limits().max_record_bytes;
    for (i, l) in text.lines().enumerate() {
        if l.len() as u64 > max {
            return Err(guard::record_too_long(name, i as u64 + 1, max));
        }
        let l = l.trim_start_matches('\u{feff}').trim();
        if l.is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(o)) => JsonRow::Object(o),
            Ok(_) => JsonRow::Bad {
                text: l.to_string(),
                error: "a line that is not a JSON object".into(),
            },
            Err(e) => JsonRow::Bad {
                text: l.to_string(),
                error: format!("a line that is not valid JSON ({e})"),
            },
        };
        rows.push((i as i64 + 1, row));
    }
    Ok((rows, false))
}

fn load_json_bytes(
    path: &Path,
    name: String,
    bytes: &[u8],
    sha: String,
    v2: bool,
    period: Period,
) -> Result<Loaded> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            return Err(usage_err(format!(
                "`{name}`: line {line}: bytes that are not UTF-8: JSON must be UTF-8; re-download the export"
            )));
        }
    };
    let (rows, page) = json_rows(&name, text)?;
    let first = rows.iter().find_map(|(_, r)| match r {
        JsonRow::Object(o) => Some(o),
        JsonRow::Bad { .. } => None,
    });
    let kind = match first.map(detect_json) {
        Some(Some(k)) => k,
        Some(None) => {
            return Err(usage_err(format!(
                "`{name}`: its JSON objects are neither daily rated usage (no `usageDate`) nor invoice line items \
                 (no `subtotal`): {ACCEPTED}"
            )));
        }
        None if rows.is_empty() && page => SourceKind::DailyUsage, // an empty page: nothing to stage
        None => {
            return Err(usage_err(format!(
                "`{name}`: line 1: no JSON object found: {ACCEPTED}"
            )));
        }
    };
    let legacy_file = rows.iter().all(|(_, r)| match r {
        JsonRow::Object(o) => is_legacy(o),
        JsonRow::Bad { .. } => true,
    }) && first.is_some();
    let format = match (v2, page, kind, legacy_file) {
        (true, ..) => "v2_blob",
        (false, true, ..) => "v1_json_page",
        (false, false, SourceKind::DailyUsage, _) => "jsonl_daily_usage",
        (false, false, SourceKind::InvoiceLines, true) => "jsonl_legacy_license",
        (false, false, SourceKind::InvoiceLines, false) => "jsonl_onetime",
    };

    // Keys in first-seen order, mapped once.
    let mut key_order: Vec<String> = Vec::new();
    let mut key_map: HashMap<String, Option<&'static str>> = HashMap::new();
    for (_, r) in &rows {
        if let JsonRow::Object(o) = r {
            for k in o.keys() {
                if !key_map.contains_key(k) {
                    key_map.insert(k.clone(), None);
                    key_order.push(k.clone());
                }
            }
        }
    }
    let map = map_header(kind, &key_order);
    for (k, c) in key_order.iter().zip(&map.columns) {
        key_map.insert(k.clone(), *c);
    }
    if first.is_some() {
        check_header(&name, kind, &map, legacy_file, "")?;
    }
    let present = map.present();
    let idx: HashMap<&str, usize> = present.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let n = rows.len();
    let mut cells: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(n); present.len()];
    let mut lines = Vec::with_capacity(n);
    let mut problem = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let mut line_kind = Vec::with_capacity(n);
    for (line, r) in &rows {
        lines.push(*line);
        for c in cells.iter_mut() {
            c.push(None);
        }
        match r {
            JsonRow::Object(o) => {
                for (k, v) in o {
                    if let Some(Some(c)) = key_map.get(k) {
                        cells[idx[c]].pop();
                        cells[idx[c]].push(cell_text(v));
                    }
                }
                problem.push(None);
                reason.push(None);
                raw.push(None);
                line_kind.push(Some(if is_legacy(o) {
                    "legacy_license"
                } else {
                    "new_commerce"
                }));
            }
            JsonRow::Bad { text, error } => {
                problem.push(Some("bad_json"));
                reason.push(Some(format!("{error}: re-download the export")));
                raw.push(Some(text.clone()));
                line_kind.push(None);
            }
        }
    }
    let mut columns: Vec<Column> = present
        .iter()
        .zip(cells)
        .map(|(c, v)| Column::new((*c).into(), v))
        .collect();
    columns.push(Column::new("source_file".into(), vec![name.clone(); n]));
    columns.push(Column::new("source_format".into(), vec![format; n]));
    columns.push(Column::new("line_number".into(), lines));
    columns.push(Column::new("row_problem".into(), problem));
    columns.push(Column::new("row_problem_reason".into(), reason));
    columns.push(Column::new("raw".into(), raw));
    let mut present_names: Vec<String> = present.iter().map(|s| s.to_string()).collect();
    if kind == SourceKind::InvoiceLines {
        columns.push(Column::new("line_kind".into(), line_kind));
        present_names.push("line_kind".into());
    }
    let df = DataFrame::new_infer_height(columns)
        .map_err(|e| anyhow::anyhow!("cannot build the rows of `{name}`: {e}"))?;

    let mut stats = empty_stats(name.clone(), path);
    stats.sha256 = sha;
    stats.bytes = bytes.len() as u64;
    stats.kind = Some(kind);
    stats.format = format.to_string();
    stats.unknown_columns = map.unknown.clone();
    let billed = first
        .and_then(|o| o.iter().find(|(k, _)| normalise_name(k) == "invoicenumber"))
        .and_then(|(_, v)| cell_text(v))
        .is_some_and(|s| !s.trim().is_empty());
    let opts = StageOptions {
        kind,
        period,
        present: present_names,
        percent: map.percent.iter().map(|s| s.to_string()).collect(),
    };
    Ok(Loaded {
        stats,
        kind,
        raw: df.lazy(),
        opts,
        billed,
    })
}

fn load_v2(dir: &Path, period: Period) -> Result<Vec<Loaded>> {
    let folder = display_name(dir);
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list the v2 export `{}`", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .to_ascii_lowercase()
                    .ends_with(".json.gz")
            })
        })
        .collect();
    blobs.sort();
    if blobs.is_empty() {
        return Err(usage_err(format!(
            "`{folder}`: a v2 export folder (it has `manifest.json`) without `*.json.gz` blobs: download the blobs the manifest lists"
        )));
    }
    let mut out = Vec::new();
    for blob in blobs {
        let name = format!("{folder}/{}", display_name(&blob));
        if let guard::Entry::Dir(_) = guard::check_entry(dir, &blob)? {
            return Err(usage_err(format!("`{name}` is a folder, not a blob: remove it from the v2 export")));
        }
        // Streamed: the compressed bytes are hashed as they are inflated, and inflating stops at `max_json_bytes`.
        let file = File::open(&blob).with_context(|| format!("cannot read `{}`", blob.display()))?;
        let mut hashing = HashingReader { inner: BufReader::new(file), hasher: Sha256::new(), bytes: 0 };
        let bytes = guard::gunzip_bounded(&mut hashing, &name)?;
        // The rest of the file after the gzip stream (if any) still belongs to its checksum.
        std::io::copy(&mut hashing, &mut std::io::sink())
            .with_context(|| format!("cannot read `{}`", blob.display()))?;
        let (sha, gz_len) = (hex::encode(hashing.hasher.finalize()), hashing.bytes);
        let mut l = load_json_bytes(&blob, name, &bytes, sha, true, period)?;
        l.stats.bytes = gz_len;
        out.push(l);
    }
    Ok(out)
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
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

pub use crate::snapshot::{read_snapshot, read_snapshot_in, sha256_file};
