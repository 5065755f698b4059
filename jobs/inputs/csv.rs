//! CSV inputs: one streaming pre-scan in Rust (hash, UTF-8, header, record count, ragged and blank lines),
//! detection by header, and the lazy all-String scan that `pipeline::ingest` types.

use super::*;

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

pub(super) fn load_csv(path: &Path, name: String, period: Period) -> Result<Loaded> {
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
