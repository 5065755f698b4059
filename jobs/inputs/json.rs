//! JSON inputs: v1 `lineitems` pages, JSON lines, and the gzip blobs of a v2 export folder, parsed with
//! `serde_json` (`arbitrary_precision`, numbers kept as text) into text cells, one page or blob in memory at a time.

use super::*;

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

pub(super) fn load_json_bytes(
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

/// The blobs of a v2 export folder (`*.json.gz`, any case), sorted; a folder without any is exit 2.
pub(super) fn v2_blobs(dir: &Path) -> Result<Vec<PathBuf>> {
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
    Ok(blobs)
}

pub(super) fn load_v2(dir: &Path, period: Period) -> Result<Vec<Loaded>> {
    let folder = display_name(dir);
    let blobs = v2_blobs(dir)?;
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
