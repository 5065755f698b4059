//! Ingest of Partner Center exports, the pure part: header mapping, exact parsing of decimals and dates, and the
//! typing stage that turns a frame of text cells into `stg_pc_daily_usage` / `stg_pc_invoice_lines` rows and
//! `rejects_pc_*` rows side by side (DESIGN §4.1, §5 "Ingest").
//!
//! The job (`jobs/inputs.rs`) detects the format, reads the file (CSV through Polars with an all-String schema,
//! JSON through `serde_json` with `arbitrary_precision`) and hands over a lazy frame whose columns are the staged
//! column names holding the cell *text*, plus provenance columns (see [`RAW_PROVENANCE`]). [`typed_rows`] is
//! elementwise and streams; the job sinks it to a spool file per input and derives the staged rows, the rejects
//! and the counts from that spool. The only step that is not per row is the occurrence number behind `line_id`
//! (identical rows in one file), which the job computes from the 16-byte row keys outside the plan
//! ([`occurrences`]) and hands back as a small map ([`with_line_ids`]).
//!
//! Numbers are parsed by our own exact parser ([`parse_decimal`]) in batch-wise UDFs rather than by Polars' cast,
//! so that scientific notation (`7.10833E-05`, `0.00E+00`) is exact and values with more than 18 fractional
//! digits are rounded half-even *and counted* ([`file_counts`]), never silently.

use chrono::{Datelike, NaiveDate};
use polars::prelude::*;
use schemas::{MONEY_PRECISION, MONEY_SCALE, Ty};

use crate::context::Period;
use crate::decimal::dec;
use crate::error::PipelineError;
use crate::family::product_family;
use crate::lineid::{line_id, row_key};

pub use crate::source::SourceKind;

/// Staged columns that are provenance or derived, never read from a source cell.
pub(crate) const DERIVED: &[&str] = &[
    "line_id",
    "period",
    "source_file",
    "source_format",
    "line_number",
    "is_billed",
    "product_family",
    "line_kind",
];

/// Columns the raw frame carries besides the cell texts:
/// `source_file`, `source_format` (String), `line_number` (Int64, header = line 1), `row_problem` (String,
/// a reason code when the reader already knows the row is broken, e.g. `ragged_row`, else null),
/// `row_problem_reason` (String), `raw` (String: the row's text where the reader has it, else null: rebuilt from
/// the cells), and for invoice lines `line_kind` (`new_commerce` | `legacy_license`).
pub const RAW_PROVENANCE: &[&str] = &[
    "source_file",
    "source_format",
    "line_number",
    "row_problem",
    "row_problem_reason",
    "raw",
];

/// A raw header (CSV column or JSON key) normalised for matching: lower-case ASCII letters and digits only, so
/// `PCToBCExchangeRate`, `pcToBCExchangeRate` and `pc_to_bc_exchange_rate` all read `pctobcexchangerate`.
pub fn normalise_name(raw: &str) -> String {
    raw.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Where a raw column goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The staged column.
    pub column: &'static str,
    /// The source writes a percentage (15) where the staged column holds a fraction (0.15).
    pub percent: bool,
}

/// Names that differ between Microsoft's spellings and ours, beyond case and underscores.
fn alias(kind: SourceKind, norm: &str) -> Option<Mapped> {
    let m = |column, percent| Some(Mapped { column, percent });
    match (kind, norm) {
        (SourceKind::DailyUsage, "resellermpnid") => m("tier2_mpn_id", false),
        (SourceKind::DailyUsage, "unitofmeasure") => m("unit", false),
        (SourceKind::DailyUsage, "partnerearnedcreditpercentage") => {
            m("partner_earned_credit_rate", true)
        }
        (SourceKind::DailyUsage, "rateofpartnerearnedcredit") => {
            m("partner_earned_credit_rate", false)
        }
        (SourceKind::DailyUsage, "creditpercentage") => m("credit_rate", true),
        (SourceKind::DailyUsage, "rateofcredit") => m("credit_rate", false),
        (SourceKind::InvoiceLines, "tier2mpnid") => m("reseller_mpn_id", false),
        (SourceKind::InvoiceLines, "totalforcustomer") => m("total", false),
        (SourceKind::InvoiceLines, "tax") => m("tax_total", false),
        // Legacy licence-based lines (DESIGN §5): product id = offerId.
        (SourceKind::InvoiceLines, "offerid") => m("product_id", false),
        (SourceKind::InvoiceLines, "offername") => m("product_name", false),
        (SourceKind::InvoiceLines, "domainname") => m("customer_domain_name", false),
        (SourceKind::InvoiceLines, "billingcycletype") => m("billing_frequency", false),
        _ => None,
    }
}

/// Keys of the API's JSON that carry no billing data of their own (the object type is read by the job).
const IGNORED: &[&str] = &[
    "attributes",
    "invoicelineitemtype",
    "billingprovider",
    "haspartnerearnedcredit",
];

/// Maps one raw column name to its staged column; `None` for unknown columns (reported, never fatal).
pub fn map_column(kind: SourceKind, raw: &str) -> Option<Mapped> {
    let norm = normalise_name(raw);
    if let Some(m) = alias(kind, &norm) {
        return Some(m);
    }
    kind.source_columns()
        .into_iter()
        .find(|(c, _)| c.replace('_', "") == norm)
        .map(|(column, _)| Mapped {
            column,
            percent: false,
        })
}

/// The mapping of a whole header.
#[derive(Clone, Debug, Default)]
pub struct HeaderMap {
    /// Per raw position: the staged column it feeds (`None`: unknown, ignored, or a second spelling of a column
    /// already mapped).
    pub columns: Vec<Option<&'static str>>,
    /// Staged columns the source writes as percentages.
    pub percent: Vec<&'static str>,
    /// Raw names that map to nothing (reported as warnings).
    pub unknown: Vec<String>,
}

impl HeaderMap {
    /// Staged columns present, in file order.
    pub fn present(&self) -> Vec<&'static str> {
        self.columns.iter().flatten().copied().collect()
    }
    /// Required columns of `kind` that the header lacks.
    pub fn missing(&self, kind: SourceKind, legacy: bool) -> Vec<&'static str> {
        let present = self.present();
        kind.required_columns(legacy)
            .iter()
            .copied()
            .filter(|c| !present.contains(c))
            .collect()
    }
}

/// Maps a header (CSV first record, or the keys seen in JSON objects).
pub fn map_header(kind: SourceKind, names: &[String]) -> HeaderMap {
    let mut out = HeaderMap::default();
    for n in names {
        match map_column(kind, n) {
            Some(m) if !out.columns.contains(&Some(m.column)) => {
                if m.percent {
                    out.percent.push(m.column);
                }
                out.columns.push(Some(m.column));
            }
            Some(_) => {
                out.unknown.push(n.clone());
                out.columns.push(None);
            }
            None => {
                if !IGNORED.contains(&normalise_name(n).as_str()) {
                    out.unknown.push(n.clone());
                }
                out.columns.push(None);
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------------------
// Exact parsers
// ------------------------------------------------------------------------------------------------------------

/// Parses decimal text (plain or scientific: `-1.5`, `.5`, `7.10833E-05`, `0.00E+00`) to its mantissa at scale 18.
/// Returns the mantissa and whether digits beyond the 18th fractional place were dropped (rounded half-even).
/// `None` for text that is not a number, or whose integer part does not fit `Decimal(38, 18)`.
pub fn parse_decimal(text: &str) -> Option<(i128, bool)> {
    let t = text.trim();
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mant, exp) = match body.find(['e', 'E']) {
        Some(i) => {
            let e = &body[i + 1..];
            let e = e.strip_prefix('+').unwrap_or(e);
            if e.is_empty()
                || e.len() > 4
                || !e
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (&body[..i], e.parse::<i64>().ok()?)
        }
        None => (body, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits as one integer, with `scale` digits after the point.
    let digits: String = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let scale = frac.len() as i64 - exp;
    let target = MONEY_SCALE as i64;
    let mut rounded = false;
    let m: i128 = if digits.is_empty() {
        0
    } else if scale <= target {
        let shift = (target - scale) as usize;
        if digits.len() + shift > MONEY_PRECISION {
            return None;
        }
        digits.parse::<i128>().ok()? * 10i128.pow(shift as u32)
    } else {
        let drop = (scale - target) as usize;
        let (keep, gone) = if drop >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - drop)
        };
        if keep.len() > MONEY_PRECISION {
            return None;
        }
        let mut q: i128 = if keep.is_empty() {
            0
        } else {
            keep.parse().ok()?
        };
        // Half-even on the dropped digits; `gone` may be shorter than `drop` (leading zeros stripped).
        let padded = format!("{:0>width$}", gone, width = drop);
        rounded = padded.bytes().any(|b| b != b'0');
        let first = padded.as_bytes()[0];
        let rest_zero = padded.as_bytes()[1..].iter().all(|b| *b == b'0');
        if first > b'5' || (first == b'5' && (!rest_zero || q % 2 == 1)) {
            q += 1;
        }
        q
    };
    if m.unsigned_abs() >= 10u128.pow(MONEY_PRECISION as u32) {
        return None;
    }
    Some((if neg { -m } else { m }, rounded))
}

/// Parses the dates Partner Center writes: `MM/DD/YYYY`, `M/D/YYYY` (optionally followed by a time, as legacy
/// files do: `2/1/2019 0:00`), and ISO 8601 (`2024-01-02`, `2024-01-02T09:38:43.4669373Z`, `…T00:00:00` with no
/// zone). Microsoft's dates are UTC days, so the date part is taken as written. US order only: MS-USE warns
/// that files saved under another locale are mis-formatted, and those are rejected rather than guessed.
pub fn parse_pc_date(text: &str) -> Option<NaiveDate> {
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
        let rest = &t[10..];
        if !(rest.is_empty() || rest.starts_with('T') || rest.starts_with(' ')) {
            return None;
        }
        let y: i32 = t[..4].parse().ok()?;
        let m: u32 = t[5..7].parse().ok()?;
        let d: u32 = t[8..10].parse().ok()?;
        return NaiveDate::from_ymd_opt(y, m, d);
    }
    let date = t.split(' ').next()?;
    let mut parts = date.split('/');
    let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !(1..=2).contains(&m.len())
        || !(1..=2).contains(&d.len())
        || y.len() != 4
    {
        return None;
    }
    if ![m, d, y]
        .iter()
        .all(|p| p.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// A SkuId Excel stripped of its leading zeros (`4`, `33`): all digits and shorter than 4 characters.
pub fn sku_needs_padding(s: &str) -> bool {
    !s.is_empty() && s.len() < 4 && s.bytes().all(|b| b.is_ascii_digit())
}

fn str_udf<T, F>(e: Expr, name: &'static str, dtype: DataType, f: F) -> Expr
where
    F: Fn(&StringChunked) -> PolarsResult<T> + Send + Sync + 'static,
    T: IntoColumn,
{
    let out = dtype.clone();
    e.map(
        move |c: Column| {
            let name = c.name().clone();
            let s = c.cast(&DataType::String)?;
            let ca = s.as_materialized_series().str()?.clone();
            let mut col = f(&ca)?.into_column();
            col.rename(name);
            Ok(col)
        },
        move |_, field: &Field| Ok(Field::new(field.name().clone(), out.clone())),
    )
    .alias(name)
}

/// Expression: decimal text → `Decimal(38, 18)` (null where the text is empty or not a number).
pub fn decimal_from_text(e: Expr) -> Expr {
    let name = "decimal";
    str_udf(e, name, schemas::money(), |ca| {
        let m: Int128Chunked = ca
            .iter()
            .map(|v| v.and_then(parse_decimal).map(|(m, _)| m))
            .collect();
        Ok(m.into_decimal_unchecked(MONEY_PRECISION, MONEY_SCALE)
            .into_series())
    })
}

/// Expression: whether decimal text has significant digits beyond 18 fractional places (it will be rounded).
pub fn decimal_is_rounded(e: Expr) -> Expr {
    str_udf(e, "rounded", DataType::Boolean, |ca| {
        let b: BooleanChunked = ca
            .iter()
            .map(|v| Some(v.and_then(parse_decimal).map(|(_, r)| r).unwrap_or(false)))
            .collect();
        Ok(b.into_series())
    })
}

/// Expression: date text → `Date` (null where empty or not a date of an accepted form).
pub fn date_from_text(e: Expr) -> Expr {
    str_udf(e, "date", DataType::Date, |ca| {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)
            .map(|d| d.num_days_from_ce())
            .unwrap_or(719_163);
        let d: Int32Chunked = ca
            .iter()
            .map(|v| {
                v.and_then(parse_pc_date)
                    .map(|d| d.num_days_from_ce() - epoch)
            })
            .collect();
        Ok(d.into_date().into_series())
    })
}

/// Expression: SkuId with Excel's stripped leading zeros restored (`4` → `0004`).
pub fn pad_sku_id(e: Expr) -> Expr {
    str_udf(e, "sku_id", DataType::String, |ca| {
        let out: StringChunked = ca
            .iter()
            .map(|v| {
                v.map(|s| {
                    if sku_needs_padding(s) {
                        format!("{s:0>4}")
                    } else {
                        s.to_string()
                    }
                })
            })
            .collect();
        Ok(out.into_series())
    })
}

/// Expression: whether a SkuId cell needs padding (counted as a warning).
pub fn sku_is_padded(e: Expr) -> Expr {
    str_udf(e, "padded", DataType::Boolean, |ca| {
        let b: BooleanChunked = ca
            .iter()
            .map(|v| Some(v.map(sku_needs_padding).unwrap_or(false)))
            .collect();
        Ok(b.into_series())
    })
}

/// Expression: cells joined as one CSV record (quoted where needed), for the `raw` text of a reject.
fn csv_record(cols: &[String]) -> Expr {
    if cols.is_empty() {
        return lit("");
    }
    let args: Vec<Expr> = cols[1..]
        .iter()
        .map(|c| col(c.as_str()).cast(DataType::String))
        .collect();
    col(cols[0].as_str())
        .cast(DataType::String)
        .map_many(
            |columns: &mut [Column]| {
                let n = crate::lineid::broadcast(columns);
                let mut rows = vec![String::new(); n];
                for (k, c) in columns.iter().enumerate() {
                    for (row, v) in rows
                        .iter_mut()
                        .zip(c.as_materialized_series().str()?.iter())
                    {
                        if k > 0 {
                            row.push(',');
                        }
                        let v = v.unwrap_or("");
                        if v.contains([',', '"', '\n', '\r']) {
                            row.push('"');
                            row.push_str(&v.replace('"', "\"\""));
                            row.push('"');
                        } else {
                            row.push_str(v);
                        }
                    }
                }
                let ca: StringChunked = rows.into_iter().map(Some).collect();
                Ok(ca.with_name("raw".into()).into_column())
            },
            &args,
            |_, _| Ok(Field::new("raw".into(), DataType::String)),
        )
        .alias("raw")
}

// ------------------------------------------------------------------------------------------------------------
// The typing stage
// ------------------------------------------------------------------------------------------------------------

/// What the typing stage needs to know about one file.
#[derive(Clone, Debug)]
pub struct StageOptions {
    pub kind: SourceKind,
    /// The period being ingested (invoice lines take it; usage rows take their `UsageDate` month).
    pub period: Period,
    /// Staged columns present in the raw frame, in file order (the others are added as nulls).
    pub present: Vec<String>,
    /// Staged columns the source wrote as percentages (divided by 100).
    pub percent: Vec<String>,
}

/// The two outputs of the typing stage, for small frames (tests, tools): see [`stg_pc_rows`].
pub struct Staged {
    /// Rows typed into exactly the staged schema of the kind, with `line_id`.
    pub staged: LazyFrame,
    /// Rows that could not be typed, in exactly the `rejects_pc_*` schema.
    pub rejects: LazyFrame,
}

fn raw_name(c: &str) -> String {
    format!("__raw_{c}")
}

/// Column of the typed frame: the reason code of a rejected row (null on a good row).
pub const REASON_CODE: &str = "__reason_code";
/// Column of the typed frame: the column a rejected row's reason names.
pub const REASON_COLUMN: &str = "__column";
/// Column of the typed frame: cells of the row with digits beyond 18 fractional places (rounded, counted).
pub const ROUNDED: &str = "__rounded";
/// Column of the typed frame: whether the row's SkuId was padded.
pub const PADDED: &str = "__padded";
/// Column of the typed frame and of the keyed staged rows: the 16-byte row key behind `line_id`.
pub const ROW_KEY: &str = "row_key";

/// The largest magnitude a Partner Center amount, quantity, price or rate may have: 10^12. Far above any real
/// row (a trillion in one line), and low enough that no product or quotient of the later stages (prices, FX,
/// shares, markups up to 100×) can leave `Decimal(38, 18)`, whose integer part holds 20 digits. A row beyond it is
/// rejected (`value_out_of_range`) instead of aborting the run with an overflow.
pub const MAX_MAGNITUDE_DIGITS: i32 = 12;

/// The source columns as they stand after adding missing ones: text, empty cells as null.
fn completed(raw: LazyFrame, opts: &StageOptions) -> LazyFrame {
    let mut exprs = Vec::new();
    for (c, _) in opts.kind.source_columns() {
        let e = if opts.present.iter().any(|p| p == c) {
            let t = col(c).cast(DataType::String);
            when(t.clone().str().len_bytes().eq(lit(0u32)))
                .then(lit(NULL).cast(DataType::String))
                .otherwise(t)
        } else {
            lit(NULL).cast(DataType::String)
        };
        exprs.push(e.alias(raw_name(c)));
    }
    if opts.kind == SourceKind::InvoiceLines && !opts.present.iter().any(|p| p == "line_kind") {
        // `line_kind` is provenance the reader sets; absent means new commerce.
        exprs.push(lit("new_commerce").alias("line_kind"));
    }
    raw.with_columns(exprs)
}

/// Typed value of a source column from its text column.
fn typed(c: &str, ty: Ty, percent: bool) -> Expr {
    let r = col(raw_name(c));
    let e = match ty {
        Ty::Dec => {
            let d = decimal_from_text(r);
            if percent { d / dec("100") } else { d }
        }
        Ty::Date => date_from_text(r),
        _ if c == "sku_id" => pad_sku_id(r),
        _ => r,
    };
    e.alias(c)
}

/// Number of decimal digits of |m| (0 for 0).
fn digits(m: i128) -> i32 {
    let mut u = m.unsigned_abs();
    let mut n = 0;
    while u > 0 {
        u /= 10;
        n += 1;
    }
    n
}

/// Digits of the integer part of a scale-18 mantissa (0 below 1).
fn int_digits(m: i128) -> i32 {
    (digits(m) - MONEY_SCALE as i32).max(0)
}

/// Expression (Boolean): whether the row's amounts are out of range, so that the products and quotients the later
/// stages compute (`list = UnitPrice × q × PCToBC × f`, `f = EffectiveUnitPrice / UnitPrice`, a legacy line's
/// `f = amount / (unitPrice × quantity)`) could overflow `Decimal(38, 18)`: one cell of magnitude ≥ 10^12, the
/// integer digits of quantity × price × rate above 12, or a price ratio above 10^6. Computed on the mantissas with
/// integer arithmetic that cannot fail, so the check itself never aborts a batch.
fn out_of_range(kind: SourceKind) -> Expr {
    let cols: Vec<&'static str> = kind
        .source_columns()
        .into_iter()
        .filter(|(_, t)| *t == Ty::Dec)
        .map(|(c, _)| c)
        .collect();
    let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
    let args: Vec<Expr> = cols[1..].iter().map(|c| col(*c)).collect();
    col(cols[0])
        .map_many(
            move |columns: &mut [Column]| {
                let n = crate::lineid::broadcast(columns);
                let mut mants: Vec<Vec<Option<i128>>> = Vec::with_capacity(columns.len());
                for c in columns.iter() {
                    let s = c.as_materialized_series();
                    mants.push(s.decimal()?.physical().iter().collect());
                }
                let at = |name: &str| names.iter().position(|c| c == name);
                let (iq, ibq, iup, ieup, ir, ia) = (
                    at("quantity"),
                    at("billable_quantity"),
                    at("unit_price"),
                    at("effective_unit_price"),
                    at("pc_to_bc_exchange_rate"),
                    at("amount"),
                );
                let get = |k: Option<usize>, i: usize| -> Option<i128> { k.and_then(|k| mants[k][i]) };
                let out: BooleanChunked = (0..n)
                    .map(|i| {
                        let cell_big = mants.iter().any(|m| m[i].is_some_and(|v| int_digits(v) > MAX_MAGNITUDE_DIGITS));
                        let q = int_digits(get(iq, i).unwrap_or(0)).max(int_digits(get(ibq, i).unwrap_or(0)));
                        let up = get(iup, i).unwrap_or(0);
                        let eup = get(ieup, i).unwrap_or(0);
                        let p = int_digits(up).max(int_digits(eup));
                        let r = int_digits(get(ir, i).unwrap_or(0));
                        let product = q + p + r > MAX_MAGNITUDE_DIGITS;
                        let ratio = up != 0 && digits(eup) - digits(up) > 6;
                        let legacy = match (get(ia, i), get(iq, i)) {
                            (Some(a), Some(qv)) if a != 0 && up != 0 && qv != 0 => {
                                digits(a) + MONEY_SCALE as i32 - digits(up) - digits(qv) > 7
                            }
                            _ => false,
                        };
                        Some(cell_big || product || ratio || legacy)
                    })
                    .collect();
                Ok(out.with_name("__out_of_range".into()).into_column())
            },
            &args,
            |_, _| Ok(Field::new("__out_of_range".into(), DataType::Boolean)),
        )
        .alias("__out_of_range")
}

/// Checks in order; the first that holds decides a rejected row's code, column and reason. The reason
/// expressions build text, so they are only evaluated on rejected rows ([`rejected_rows`]).
fn checks(opts: &StageOptions) -> Vec<(Expr, Expr, &'static str, Expr)> {
    let mut out = Vec::new();
    out.push((
        col("row_problem").is_not_null(),
        col("row_problem"),
        "",
        col("row_problem_reason"),
    ));
    for c in opts.kind.required_values() {
        out.push((
            col(raw_name(c)).is_null(),
            lit("missing_value"),
            *c,
            lit(format!(
                "required column `{c}` is empty: re-download the export from Partner Center, or remove the row if it is not Microsoft's"
            )),
        ));
    }
    for (c, ty) in opts.kind.source_columns() {
        let (code, what) = match ty {
            Ty::Dec => (
                "bad_decimal",
                "a decimal number (like 1234.56 or 7.1E-05, no thousands separators or currency signs)",
            ),
            Ty::Date => (
                "bad_date",
                "a date (MM/DD/YYYY, M/D/YYYY or ISO 8601 YYYY-MM-DD)",
            ),
            _ => continue,
        };
        out.push((
            col(raw_name(c)).is_not_null().and(col(c).is_null()),
            lit(code),
            c,
            concat_str(
                [
                    lit(format!("column `{c}` holds `")),
                    col(raw_name(c)).str().slice(lit(0i64), lit(200u64)),
                    lit(format!(
                        "`, which is not {what}: correct the value or re-download the export"
                    )),
                ],
                "",
                true,
            ),
        ));
    }
    let qty = match opts.kind {
        SourceKind::DailyUsage => "quantity",
        SourceKind::InvoiceLines => "billable_quantity",
    };
    out.push((
        col("__out_of_range"),
        lit("value_out_of_range"),
        qty,
        lit(format!(
            "an amount, quantity, price or rate of this row (or quantity × price × exchange rate, or a price ratio) \
             is beyond 10^{MAX_MAGNITUDE_DIGITS}, far outside any real Partner Center line: correct the row or re-download the export"
        )),
    ));
    out
}

fn first_of(
    checks: &[(Expr, Expr, &'static str, Expr)],
    pick: impl Fn(&(Expr, Expr, &'static str, Expr)) -> Expr,
) -> Expr {
    let mut e = lit(NULL).cast(DataType::String);
    for ch in checks.iter().rev() {
        e = when(ch.0.clone()).then(pick(ch)).otherwise(e);
    }
    e
}

/// The period a row belongs to: its `UsageDate` month for usage, the ingested period for invoice lines.
fn period_of_row(opts: &StageOptions) -> Expr {
    match opts.kind {
        SourceKind::DailyUsage => coalesce(&[
            col("usage_date").dt().strftime("%Y-%m"),
            lit(opts.period.to_string()),
        ]),
        SourceKind::InvoiceLines => lit(opts.period.to_string()),
    }
}

/// Staged columns of the kind without `line_id` (given later, once occurrences are known), plus [`ROW_KEY`].
pub fn keyed_columns(kind: SourceKind) -> Vec<(&'static str, DataType)> {
    let mut cols: Vec<(&'static str, DataType)> = kind
        .columns()
        .iter()
        .filter(|(c, _)| *c != "line_id")
        .map(|(c, t)| (*c, t.dtype()))
        .collect();
    cols.push((ROW_KEY, DataType::Binary));
    cols
}

/// The typing stage, elementwise and streamable: raw text frame → one row per input row with every staged
/// column typed (except `line_id`), [`ROW_KEY`], the reject decision ([`REASON_CODE`], [`REASON_COLUMN`], null
/// on good rows), the counts ([`ROUNDED`], [`PADDED`]) and, on rejected rows only, the text of every present cell
/// (`__raw_<column>`, null on good rows, so a spool of this frame stays small). The job sinks it once per file
/// and derives the staged rows ([`staged_rows`]), the rejects ([`rejected_rows`]) and the per-file counts
/// ([`file_counts`]) from that spool, so the input is parsed once.
///
/// `raw` has the staged names of the columns in `opts.present` as text, plus the [`RAW_PROVENANCE`] columns.
pub fn typed_rows(raw: LazyFrame, opts: &StageOptions) -> crate::Result<LazyFrame> {
    let kind = opts.kind;
    let typed_exprs: Vec<Expr> = kind
        .source_columns()
        .into_iter()
        .map(|(c, ty)| typed(c, ty, opts.percent.iter().any(|p| p == c)))
        .collect();
    let checks = checks(opts);
    let present = |c: &str| opts.present.iter().any(|p| p == c);
    let rounded: Vec<Expr> = kind
        .source_columns()
        .into_iter()
        .filter(|(c, ty)| *ty == Ty::Dec && present(c))
        .map(|(c, _)| decimal_is_rounded(col(raw_name(c))).cast(DataType::Int32))
        .collect();
    let rounded = rounded.into_iter().reduce(|a, b| a + b).unwrap_or(lit(0i32));
    let padded = if present("sku_id") {
        sku_is_padded(col(raw_name("sku_id")))
    } else {
        lit(false)
    };
    let bad = col(REASON_CODE).is_not_null();
    let mut masked: Vec<Expr> = opts
        .present
        .iter()
        .filter(|p| *p != "line_kind")
        .map(|p| {
            when(bad.clone())
                .then(col(raw_name(p)))
                .otherwise(lit(NULL).cast(DataType::String))
                .alias(raw_name(p))
        })
        .collect();
    masked.push(when(bad.clone()).then(col("raw")).otherwise(lit(NULL).cast(DataType::String)).alias("raw"));
    let mut derived = vec![period_of_row(opts).alias("period"), product_family(kind)];
    if kind == SourceKind::DailyUsage {
        derived.push(col("invoice_number").is_not_null().alias("is_billed"));
    }
    let mut select: Vec<Expr> = keyed_columns(kind)
        .into_iter()
        .filter(|(c, _)| *c != ROW_KEY)
        .map(|(c, t)| col(c).cast(t).alias(c))
        .collect();
    select.push(col(ROW_KEY));
    select.extend([
        col(REASON_CODE),
        col(REASON_COLUMN),
        col(ROUNDED),
        col(PADDED),
        col("row_problem"),
        col("row_problem_reason"),
        col("raw"),
    ]);
    select.extend(
        opts.present
            .iter()
            .filter(|p| *p != "line_kind")
            .map(|p| col(raw_name(p))),
    );
    let lf = completed(raw, opts)
        .with_columns(typed_exprs)
        .with_column(out_of_range(kind))
        .with_columns([
            first_of(&checks, |c| c.1.clone()).alias(REASON_CODE),
            first_of(&checks, |c| lit(c.2)).alias(REASON_COLUMN),
            rounded.alias(ROUNDED),
            padded.alias(PADDED),
        ])
        .with_columns(derived)
        .with_column(
            when(bad)
                .then(lit(NULL).cast(DataType::Binary))
                .otherwise(row_key(kind))
                .alias(ROW_KEY),
        )
        .with_columns(masked)
        .select(select);
    Ok(lf)
}

/// Good rows of the typed frame that belong to the period, in the keyed schema ([`keyed_columns`]).
pub fn staged_rows(typed: LazyFrame, kind: SourceKind, period: Period) -> LazyFrame {
    typed
        .filter(col(REASON_CODE).is_null().and(col("period").eq(lit(period.to_string()))))
        .select(keyed_columns(kind).into_iter().map(|(c, _)| col(c)).collect::<Vec<_>>())
}

/// Rejected rows of the typed frame, in exactly the `rejects_pc_*` schema: the reason text is built here, on the
/// rejected rows only; `raw` is the row's text as the reader had it, else rebuilt from the cells in file order.
pub fn rejected_rows(typed: LazyFrame, opts: &StageOptions) -> LazyFrame {
    let checks = checks(opts);
    let raw_cols: Vec<String> = opts
        .present
        .iter()
        .filter(|p| *p != "line_kind")
        .map(|p| raw_name(p))
        .collect();
    // The checks read `__out_of_range`, which the spool does not keep: on a rejected row it holds exactly when
    // no earlier check did, which the reason code says.
    let absent: Vec<Expr> = opts
        .kind
        .source_columns()
        .into_iter()
        .filter(|(c, _)| !opts.present.iter().any(|p| p == c))
        .map(|(c, _)| lit(NULL).cast(DataType::String).alias(raw_name(c)))
        .collect();
    typed
        .filter(col(REASON_CODE).is_not_null())
        .with_columns(absent)
        .with_column(col(REASON_CODE).eq(lit("value_out_of_range")).alias("__out_of_range"))
        .select([
            // A reject belongs to the run that read it, whatever the date it carries.
            lit(opts.period.to_string()).alias("period"),
            col("source_file"),
            col("line_number").cast(DataType::Int64),
            col(REASON_CODE).alias("reason_code"),
            first_of(&checks, |c| c.3.clone()).alias("reason"),
            col(REASON_COLUMN).alias("column"),
            coalesce(&[col("raw"), csv_record(&raw_cols)]).alias("raw"),
            col(opts.kind.cost_column())
                .cast(schemas::money())
                .alias("billing_pre_tax_total"),
        ])
}

/// Per-file counts of the typed frame (one row): `rows_in`, `cost_in` (Σ of the cost column as parsed, over every
/// row), `rounded_values`, `padded_sku_ids`, and rows and Σ cost rejected and of other periods (good rows whose
/// `UsageDate` is in another month: set aside, billed in their own period's run).
pub fn file_counts(typed: LazyFrame, kind: SourceKind, period: Period) -> LazyFrame {
    let cost = col(kind.cost_column());
    let bad = col(REASON_CODE).is_not_null();
    let other = bad.clone().not().and(col("period").neq(lit(period.to_string())));
    typed.select([
        len().cast(DataType::Int64).alias("rows_in"),
        cost.clone().sum().alias("cost_in"),
        col(ROUNDED).cast(DataType::Int64).sum().alias("rounded_values"),
        col(PADDED).cast(DataType::Int64).sum().alias("padded_sku_ids"),
        bad.clone().cast(DataType::Int64).sum().alias("rejected"),
        cost.clone().filter(bad).sum().alias("cost_rejected"),
        other.clone().cast(DataType::Int64).sum().alias("other_period"),
        cost.filter(other.clone()).sum().alias("cost_other_period"),
        col("period").filter(other.clone()).min().alias("first_other_period"),
        col("period").filter(other).max().alias("last_other_period"),
    ])
}

/// Expression: `line_id` of keyed staged rows of one file, whose repeated row keys got their occurrence numbers
/// outside the plan (`occurrence`: line number → occurrence, for the few rows whose key repeats in the file;
/// every other row is occurrence 1).
pub fn line_id_with(kind: SourceKind, occurrence: std::sync::Arc<std::collections::HashMap<i64, i64>>) -> Expr {
    let occ = if occurrence.is_empty() {
        lit(1i64)
    } else {
        col("line_number").map(
            move |c: Column| {
                let ca = c.as_materialized_series().i64()?.clone();
                let out: Int64Chunked = ca.iter().map(|l| Some(l.and_then(|l| occurrence.get(&l).copied()).unwrap_or(1))).collect();
                Ok(out.with_name("occurrence".into()).into_column())
            },
            |_, _| Ok(Field::new("occurrence".into(), DataType::Int64)),
        )
    };
    line_id(kind, col(ROW_KEY), occ)
}

/// Final staged rows of one file from its keyed rows: rows whose line number is in `duplicates` (already
/// delivered by an earlier file) removed, `line_id` added, exactly the staged schema.
pub fn with_line_ids(
    keyed: LazyFrame,
    kind: SourceKind,
    occurrence: std::sync::Arc<std::collections::HashMap<i64, i64>>,
    duplicates: std::sync::Arc<std::collections::HashSet<i64>>,
) -> LazyFrame {
    let lf = if duplicates.is_empty() { keyed } else { keyed.filter(not_in(duplicates)) };
    lf.with_column(line_id_with(kind, occurrence)).select(
        kind.columns()
            .iter()
            .map(|(c, ty)| col(*c).cast(ty.dtype()).alias(*c))
            .collect::<Vec<_>>(),
    )
}

/// Expression (Boolean): `line_number` is not in the set.
fn not_in(set: std::sync::Arc<std::collections::HashSet<i64>>) -> Expr {
    col("line_number").map(
        move |c: Column| {
            let ca = c.as_materialized_series().i64()?.clone();
            let out: BooleanChunked = ca.iter().map(|l| Some(!l.is_some_and(|l| set.contains(&l)))).collect();
            Ok(out.with_name("keep".into()).into_column())
        },
        |_, _| Ok(Field::new("keep".into(), DataType::Boolean)),
    )
}

/// Rows of a file as (row key, line number), the input of [`occurrences`].
pub type KeyRow = ([u8; 16], i64);

/// Occurrence numbers of rows whose key repeats within one file, in line order: line number → occurrence (2, 3,
/// ...); rows absent from the map are occurrence 1. `rows` need not be sorted.
pub fn occurrences(rows: &mut [KeyRow]) -> std::collections::HashMap<i64, i64> {
    rows.sort_unstable();
    let mut out = std::collections::HashMap::new();
    let mut i = 0;
    while i < rows.len() {
        let mut j = i + 1;
        while j < rows.len() && rows[j].0 == rows[i].0 {
            out.insert(rows[j].1, (j - i + 1) as i64);
            j += 1;
        }
        i = j;
    }
    out
}

/// The typing stage on a small frame, all at once: staged rows (with `line_id`, occurrences counted in memory) and
/// rejects. The job runs the same functions file by file through spool files (`jobs/inputs.rs`); this composition
/// serves tests and tools on small frames.
pub fn stg_pc_rows(raw: LazyFrame, opts: &StageOptions) -> crate::Result<Staged> {
    let typed = typed_rows(raw, opts)?
        .collect()
        .map_err(PipelineError::polars("ingest"))?;
    let keyed = staged_rows(typed.clone().lazy(), opts.kind, opts.period)
        .collect()
        .map_err(PipelineError::polars("ingest"))?;
    let keys = keyed.column(ROW_KEY).map_err(PipelineError::polars("ingest"))?.binary().map_err(PipelineError::polars("ingest"))?.clone();
    let lines = keyed.column("line_number").map_err(PipelineError::polars("ingest"))?.i64().map_err(PipelineError::polars("ingest"))?.clone();
    let mut rows: Vec<KeyRow> = keys
        .iter()
        .zip(lines.iter())
        .filter_map(|(k, l)| Some((k?.try_into().ok()?, l?)))
        .collect();
    let occ = std::sync::Arc::new(occurrences(&mut rows));
    let staged = with_line_ids(keyed.lazy(), opts.kind, occ, Default::default());
    Ok(Staged { staged, rejects: rejected_rows(typed.lazy(), opts) })
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::any_to_decimal;
    use rust_decimal::Decimal;

    fn dec_of(m: i128) -> Decimal {
        crate::decimal::from_mantissa(m)
    }

    #[test]
    fn decimals_parse_exactly() {
        let d = |s: &str| parse_decimal(s).map(|(m, r)| (dec_of(m), r));
        assert_eq!(
            d("7.10833E-05"),
            Some(("0.0000710833".parse().unwrap(), false))
        );
        assert_eq!(d("0.00E+00"), Some((Decimal::ZERO, false)));
        assert_eq!(d("-25.05"), Some(("-25.05".parse().unwrap(), false)));
        assert_eq!(d("1.5E+3"), Some(("1500".parse().unwrap(), false)));
        assert_eq!(d(".5"), Some(("0.5".parse().unwrap(), false)));
        // 22 places: rounded half-even to 18 and flagged.
        assert_eq!(
            d("0.1999968000511991808131"),
            Some(("0.199996800051199181".parse().unwrap(), true))
        );
        assert_eq!(
            d("0.0000000000000000025"),
            Some(("0.000000000000000002".parse().unwrap(), true))
        );
        assert_eq!(
            d("0.0000000000000000035"),
            Some(("0.000000000000000004".parse().unwrap(), true))
        );
        // Trailing zeros beyond 18 places are not a rounding.
        assert_eq!(
            d("0.0870000000000000000000"),
            Some(("0.087".parse().unwrap(), false))
        );
        for bad in ["", "abc", "1,000.00", "$1.00", "1.2.3", "-", "1e", "12x"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
        assert_eq!(
            parse_decimal("1".repeat(21).as_str()),
            None,
            "integer part too big for Decimal(38,18)"
        );
    }

    #[test]
    fn dates_in_every_partner_center_spelling() {
        let want = NaiveDate::from_ymd_opt(2021, 6, 1);
        for s in [
            "06/01/2021",
            "6/1/2021",
            "2021-06-01",
            "2021-06-01T00:00:00Z",
            "2021-06-01T09:38:43.4669373Z",
            "6/1/2021 0:00",
        ] {
            assert_eq!(parse_pc_date(s), want, "{s}");
        }
        for s in ["01.06.2021", "2021/06/01", "13/01/2021", "6/1/21", "x"] {
            assert_eq!(parse_pc_date(s), None, "{s}");
        }
    }

    #[test]
    fn header_names_map_in_both_casings() {
        let names: Vec<String> = [
            "PCToBCExchangeRate",
            "pcToBCExchangeRate",
            "resourceUri",
            "unitOfMeasure",
            "PartnerEarnedCreditPercentage",
            "Extra",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = map_header(SourceKind::DailyUsage, &names);
        assert_eq!(
            m.columns,
            vec![
                Some("pc_to_bc_exchange_rate"),
                None,
                Some("resource_uri"),
                Some("unit"),
                Some("partner_earned_credit_rate"),
                None
            ]
        );
        assert_eq!(m.percent, vec!["partner_earned_credit_rate"]);
        assert_eq!(
            m.unknown,
            vec!["pcToBCExchangeRate".to_string(), "Extra".to_string()]
        );
        assert_eq!(
            map_column(SourceKind::DailyUsage, "rateOfPartnerEarnedCredit").map(|m| m.percent),
            Some(false)
        );
        assert_eq!(
            map_column(SourceKind::InvoiceLines, "totalForCustomer").map(|m| m.column),
            Some("total")
        );
    }

    fn raw_usage(rows: &[(&str, &str, &str, &str, &str)]) -> (LazyFrame, StageOptions) {
        // (usage_date, billing_pre_tax_total, sku_id, pec percent, invoice_number)
        let n = rows.len();
        let df = df!(
            "customer_id" => vec!["c1"; n],
            "usage_date" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            "billing_pre_tax_total" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            "billing_currency" => vec!["USD"; n],
            "sku_id" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            "partner_earned_credit_rate" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            "invoice_number" => rows.iter().map(|r| r.4).collect::<Vec<_>>(),
            "source_file" => vec!["f.csv"; n],
            "source_format" => vec!["csv_daily_usage"; n],
            "line_number" => (2..2 + n as i64).collect::<Vec<_>>(),
            "row_problem" => vec![None::<&str>; n],
            "row_problem_reason" => vec![None::<&str>; n],
            "raw" => vec![None::<&str>; n],
        )
        .unwrap();
        let opts = StageOptions {
            kind: SourceKind::DailyUsage,
            period: "2025-11".parse().unwrap(),
            present: [
                "customer_id",
                "usage_date",
                "billing_pre_tax_total",
                "billing_currency",
                "sku_id",
                "partner_earned_credit_rate",
                "invoice_number",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            percent: vec!["partner_earned_credit_rate".into()],
        };
        (df.lazy(), opts)
    }

    #[test]
    fn typing_stages_good_rows_and_rejects_bad_ones() {
        let (raw, opts) = raw_usage(&[
            ("11/02/2025", "7.10833E-05", "3", "15", "G1"),
            ("2025-11-03T00:00:00Z", "1.50", "016X", "", ""),
            ("31/11/2025", "1", "1", "15", "G1"),
            ("11/04/2025", "1,5", "1", "15", "G1"),
            ("11/05/2025", "", "1", "15", "G1"),
            ("11/02/2025", "7.10833E-05", "0003", "15", "G1"),
        ]);
        let out = stg_pc_rows(raw, &opts).unwrap();
        let staged = out.staged.collect().unwrap();
        let rejects = out.rejects.collect().unwrap();
        assert_eq!(
            staged.schema().as_ref(),
            &schemas::stg_pc_daily_usage::schema()
        );
        assert_eq!(
            rejects.schema().as_ref(),
            &schemas::rejects_pc_daily_usage::schema()
        );
        let csv = crate::testing::frame_to_sorted_csv(
            &staged
                .select([
                    "line_number",
                    "period",
                    "sku_id",
                    "billing_pre_tax_total",
                    "partner_earned_credit_rate",
                    "is_billed",
                    "product_family",
                ])
                .unwrap(),
        );
        assert_eq!(
            csv,
            "line_number,period,sku_id,billing_pre_tax_total,partner_earned_credit_rate,is_billed,product_family\n\
             2,2025-11,0003,0.000071083300000000,0.150000000000000000,true,azure_usage\n\
             3,2025-11,016X,1.500000000000000000,,false,azure_usage\n\
             7,2025-11,0003,0.000071083300000000,0.150000000000000000,true,azure_usage\n"
        );
        // Lines 2 and 7 are the same typed row (SkuId `3` padded): same key, occurrences 1 and 2, distinct ids.
        let ids: Vec<&str> = staged
            .column("line_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] != ids[2] && ids[0] != ids[1]);
        let rej = crate::testing::frame_to_sorted_csv(
            &rejects
                .select([
                    "line_number",
                    "reason_code",
                    "column",
                    "billing_pre_tax_total",
                ])
                .unwrap(),
        );
        assert_eq!(
            rej,
            "line_number,reason_code,column,billing_pre_tax_total\n\
             4,bad_date,usage_date,1.000000000000000000\n\
             5,bad_decimal,billing_pre_tax_total,\n\
             6,missing_value,billing_pre_tax_total,\n"
        );
        let reason = rejects
            .column("reason")
            .unwrap()
            .str()
            .unwrap()
            .get(1)
            .unwrap()
            .to_string();
        assert!(
            reason.contains("`usage_date` holds `31/11/2025`")
                || reason.contains("`billing_pre_tax_total` holds `1,5`"),
            "{reason}"
        );
    }

    #[test]
    fn counts_cover_every_row_and_rounded_values() {
        let (raw, opts) = raw_usage(&[
            ("11/02/2025", "0.1999968000511991808131", "3", "15", "G1"),
            ("11/02/2025", "x", "0003", "15", "G1"),
            ("11/02/2025", "2.5", "016X", "15", "G1"),
            ("10/31/2025", "4", "016X", "15", "G1"),
        ]);
        let typed = typed_rows(raw, &opts).unwrap();
        let df = file_counts(typed, opts.kind, opts.period).collect().unwrap();
        let int = |c: &str| df.column(c).unwrap().i64().unwrap().get(0);
        assert_eq!(int("rows_in"), Some(4));
        assert_eq!(int("rounded_values"), Some(1));
        assert_eq!(int("padded_sku_ids"), Some(1));
        assert_eq!(int("rejected"), Some(1));
        assert_eq!(int("other_period"), Some(1));
        let dec_at = |c: &str| any_to_decimal(&df.column(c).unwrap().get(0).unwrap()).unwrap();
        // 0.1999968000511991808131 rounds half-even to 18 places; `x` counts nothing; + 2.5 + 4.
        assert_eq!(dec_at("cost_in"), "6.699996800051199181".parse::<Decimal>().unwrap());
        assert_eq!(dec_at("cost_other_period"), "4".parse::<Decimal>().unwrap());
        assert_eq!(df.column("first_other_period").unwrap().str().unwrap().get(0), Some("2025-10"));
    }

    #[test]
    fn occurrences_number_repeated_keys_in_line_order() {
        let k = |b: u8| [b; 16];
        let mut rows = vec![(k(1), 9), (k(2), 3), (k(1), 4), (k(1), 7), (k(3), 5)];
        let occ = occurrences(&mut rows);
        assert_eq!(occ.len(), 2);
        assert_eq!(occ.get(&7), Some(&2));
        assert_eq!(occ.get(&9), Some(&3));
        assert_eq!(occ.get(&4), None, "the first of a repeated key is occurrence 1");
    }

    #[test]
    fn rows_beyond_the_decimal_range_are_rejected_not_fatal() {
        // Line 2: 10^13 in one cell. Line 3: quantity 1000 × price 1000 × rate 10000 (4 + 4 + 5 integer digits
        // > 12). Line 4: the same with rate 1 (9 digits) is fine.
        let (raw, mut opts) = raw_usage(&[
            ("11/02/2025", "10000000000000", "1", "15", "G1"),
            ("11/02/2025", "1.5", "1", "15", "G1"),
            ("11/02/2025", "1.5", "1", "15", "G1"),
        ]);
        let raw = raw.with_columns([
            lit("1000").alias("quantity"),
            lit("1000").alias("unit_price"),
            when(col("line_number").eq(lit(3i64))).then(lit("10000")).otherwise(lit("1")).alias("pc_to_bc_exchange_rate"),
        ]);
        opts.present.extend(["quantity".to_string(), "unit_price".to_string(), "pc_to_bc_exchange_rate".to_string()]);
        let out = stg_pc_rows(raw, &opts).unwrap();
        let staged = out.staged.collect().unwrap();
        assert_eq!(staged.column("line_number").unwrap().i64().unwrap().get(0), Some(4));
        assert_eq!(staged.height(), 1);
        let rej = out.rejects.collect().unwrap();
        let codes: Vec<&str> = rej.column("reason_code").unwrap().str().unwrap().iter().flatten().collect();
        assert_eq!(codes, ["value_out_of_range", "value_out_of_range"]);
    }
}
