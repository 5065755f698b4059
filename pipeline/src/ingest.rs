//! Ingest of Partner Center exports, the pure part: header mapping, exact parsing of decimals and dates, and the
//! typing stage that turns a frame of text cells into `stg_pc_daily_usage` / `stg_pc_invoice_lines` rows and
//! `rejects_pc_*` rows side by side (DESIGN §4.1, §5 "Ingest").
//!
//! The job (`jobs/inputs.rs`) detects the format, reads the file (CSV through Polars with an all-String schema,
//! JSON through `serde_json` with `arbitrary_precision`) and hands over a lazy frame whose columns are the staged
//! column names holding the cell *text*, plus provenance columns (see [`RAW_PROVENANCE`]). Everything from there
//! on is lazy and elementwise except the occurrence count behind `line_id`, which groups on a 16-byte key.
//!
//! Numbers are parsed by our own exact parser ([`parse_decimal`]) in batch-wise UDFs rather than by Polars' cast,
//! so that scientific notation (`7.10833E-05`, `0.00E+00`) is exact and values with more than 18 fractional
//! digits are rounded half-even *and counted* ([`ingest_counts`]), never silently.

use chrono::{Datelike, NaiveDate};
use polars::prelude::*;
use schemas::{MONEY_PRECISION, MONEY_SCALE, Ty};

use crate::context::Period;
use crate::decimal::{dec, null_dec};
use crate::error::PipelineError;
use crate::family::product_family;
use crate::lineid::{line_id, row_key};

/// The two Partner Center sources: daily rated usage and invoice (reconciliation) lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    DailyUsage,
    InvoiceLines,
}

impl SourceKind {
    /// Short tag, used in `line_id` and file statistics.
    pub fn tag(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => "daily_usage",
            SourceKind::InvoiceLines => "invoice_lines",
        }
    }
    /// Staged table columns.
    pub fn columns(self) -> &'static [(&'static str, Ty)] {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::COLUMNS,
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::COLUMNS,
        }
    }
    /// Staged table schema.
    pub fn schema(self) -> Schema {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::schema(),
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::schema(),
        }
    }
    /// Rejects table schema.
    pub fn rejects_schema(self) -> Schema {
        match self {
            SourceKind::DailyUsage => schemas::rejects_pc_daily_usage::schema(),
            SourceKind::InvoiceLines => schemas::rejects_pc_invoice_lines::schema(),
        }
    }
    /// The column whose sum is the cost that conservation follows: `BillingPreTaxTotal` or `Subtotal`
    /// (legacy lines' `subtotal` maps to the same column).
    pub fn cost_column(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::billing_pre_tax_total,
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::subtotal,
        }
    }
    /// Columns that come from the source (everything but provenance and derived columns).
    pub fn source_columns(self) -> Vec<(&'static str, Ty)> {
        self.columns()
            .iter()
            .copied()
            .filter(|(n, _)| !DERIVED.contains(n))
            .collect()
    }
    /// Source columns a file must have (a missing one is a usage error naming it). `legacy` is for
    /// `LicenseBasedLineItem` lines, which have no effective price, billable quantity or exchange rate.
    pub fn required_columns(self, legacy: bool) -> &'static [&'static str] {
        match (self, legacy) {
            (SourceKind::DailyUsage, _) => &[
                "customer_id",
                "subscription_id",
                "product_id",
                "sku_id",
                "usage_date",
                "quantity",
                "unit_price",
                "effective_unit_price",
                "billing_pre_tax_total",
                "billing_currency",
            ],
            (SourceKind::InvoiceLines, false) => &[
                "customer_id",
                "product_id",
                "charge_type",
                "unit_price",
                "effective_unit_price",
                "billable_quantity",
                "subtotal",
                "currency",
            ],
            (SourceKind::InvoiceLines, true) => &[
                "customer_id",
                "product_id",
                "charge_type",
                "unit_price",
                "quantity",
                "subtotal",
                "currency",
            ],
        }
    }
    /// Cells that must not be empty: a row without one is rejected (`missing_value`).
    pub fn required_values(self) -> &'static [&'static str] {
        match self {
            SourceKind::DailyUsage => &[
                "customer_id",
                "usage_date",
                "billing_pre_tax_total",
                "billing_currency",
            ],
            SourceKind::InvoiceLines => &["customer_id", "charge_type", "subtotal", "currency"],
        }
    }
}

/// Staged columns that are provenance or derived, never read from a source cell.
const DERIVED: &[&str] = &[
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
                let n = columns.first().map(|c| c.len()).unwrap_or(0);
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

/// The two outputs of the typing stage.
pub struct Staged {
    /// Rows typed into exactly the staged schema of the kind, with `line_id`.
    pub staged: LazyFrame,
    /// Rows that could not be typed, in exactly the `rejects_pc_*` schema.
    pub rejects: LazyFrame,
}

fn raw_name(c: &str) -> String {
    format!("__raw_{c}")
}

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

/// Checks in order; the first that holds decides a rejected row's code, column and reason.
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
                    col(raw_name(c)),
                    lit(format!(
                        "`, which is not {what}: correct the value or re-download the export"
                    )),
                ],
                "",
                true,
            ),
        ));
    }
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

/// The typing stage: raw text frame → (staged rows, rejected rows). Pure and lazy.
///
/// `raw` has the staged names of the columns in `opts.present` as text, plus the [`RAW_PROVENANCE`] columns.
pub fn stg_pc_rows(raw: LazyFrame, opts: &StageOptions) -> crate::Result<Staged> {
    let kind = opts.kind;
    let typed_exprs: Vec<Expr> = kind
        .source_columns()
        .into_iter()
        .map(|(c, ty)| typed(c, ty, opts.percent.iter().any(|p| p == c)))
        .collect();
    let checks = checks(opts);
    let base = completed(raw, opts)
        .with_columns(typed_exprs)
        .with_columns([
            first_of(&checks, |c| c.1.clone()).alias("__reason_code"),
            first_of(&checks, |c| lit(c.2)).alias("__column"),
            first_of(&checks, |c| c.3.clone()).alias("__reason"),
        ]);

    let period_of_row = match kind {
        SourceKind::DailyUsage => coalesce(&[
            col("usage_date").dt().strftime("%Y-%m"),
            lit(opts.period.to_string()),
        ]),
        SourceKind::InvoiceLines => lit(opts.period.to_string()),
    };

    // Rejects: the row's text as the reader had it, else rebuilt from the cells in file order.
    let raw_cols: Vec<String> = opts
        .present
        .iter()
        .filter(|p| *p != "line_kind")
        .map(|p| raw_name(p))
        .collect();
    let rejects = base
        .clone()
        .filter(col("__reason_code").is_not_null())
        .select([
            period_of_row.clone().alias("period"),
            col("source_file"),
            col("line_number").cast(DataType::Int64),
            col("__reason_code").alias("reason_code"),
            col("__reason").alias("reason"),
            col("__column").alias("column"),
            coalesce(&[col("raw"), csv_record(&raw_cols)]).alias("raw"),
            col(kind.cost_column())
                .cast(schemas::money())
                .alias("billing_pre_tax_total"),
        ]);

    let mut derived = vec![period_of_row.alias("period"), product_family(kind)];
    if kind == SourceKind::DailyUsage {
        derived.push(col("invoice_number").is_not_null().alias("is_billed"));
    }
    let staged = base
        .filter(col("__reason_code").is_null())
        .with_columns(derived)
        .with_column(row_key(kind))
        .with_column(
            col("row_key")
                .cum_count(false)
                .over([col("source_file"), col("row_key")])
                .map_err(PipelineError::polars("ingest"))?
                .alias("__occurrence"),
        )
        .with_column(line_id(kind, col("row_key"), col("__occurrence")))
        .select(
            kind.columns()
                .iter()
                .map(|(c, ty)| col(*c).cast(ty.dtype()).alias(*c))
                .collect::<Vec<_>>(),
        );
    Ok(Staged { staged, rejects })
}

/// Per-file counts over the raw frame, for the conservation check: `source_file`, `rows_in`, `cost_in` (Σ of
/// the cost column parsed from its raw text), `rounded_values` (cells with digits beyond 18 places) and
/// `padded_sku_ids`. Pure and lazy; the job collects the (one-row-per-file) result.
pub fn ingest_counts(raw: LazyFrame, opts: &StageOptions) -> LazyFrame {
    let kind = opts.kind;
    let present = |c: &str| opts.present.iter().any(|p| p == c);
    let rounded: Vec<Expr> = kind
        .source_columns()
        .into_iter()
        .filter(|(c, ty)| *ty == Ty::Dec && present(c))
        .map(|(c, _)| decimal_is_rounded(col(c)).cast(DataType::Int64))
        .collect();
    let rounded = rounded
        .into_iter()
        .reduce(|a, b| a + b)
        .unwrap_or(lit(0i64));
    let cost = if present(kind.cost_column()) {
        decimal_from_text(col(kind.cost_column()))
    } else {
        null_dec()
    };
    let padded = if present("sku_id") {
        sku_is_padded(col("sku_id")).cast(DataType::Int64)
    } else {
        lit(0i64)
    };
    raw.group_by_stable([col("source_file")]).agg([
        len().cast(DataType::Int64).alias("rows_in"),
        cost.sum().alias("cost_in"),
        rounded.sum().cast(DataType::Int64).alias("rounded_values"),
        padded.sum().cast(DataType::Int64).alias("padded_sku_ids"),
    ])
}

/// Marks rows whose `line_id` an earlier row of the frame already has (`is_duplicate`). The frame must hold the
/// staged rows of all files of a snapshot in file order: the first file to deliver a row keeps it. Within one
/// file ids are distinct by construction (occurrence), so only rows repeated across files are marked.
pub fn mark_duplicates(staged_all: LazyFrame) -> crate::Result<LazyFrame> {
    let first_seen = col("line_id")
        .cum_count(false)
        .over([col("line_id")])
        .map_err(PipelineError::polars("ingest"))?;
    Ok(staged_all.with_column(first_seen.gt(lit(1u32)).alias("is_duplicate")))
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
        ]);
        let df = ingest_counts(raw, &opts).collect().unwrap();
        assert_eq!(df.column("rows_in").unwrap().i64().unwrap().get(0), Some(3));
        assert_eq!(
            df.column("rounded_values").unwrap().i64().unwrap().get(0),
            Some(1)
        );
        assert_eq!(
            df.column("padded_sku_ids").unwrap().i64().unwrap().get(0),
            Some(1)
        );
        let cost = any_to_decimal(&df.column("cost_in").unwrap().get(0).unwrap()).unwrap();
        assert_eq!(cost, "2.699996800051199181".parse::<Decimal>().unwrap());
    }

    #[test]
    fn duplicates_across_files_are_marked_after_the_first() {
        let df = df!("line_id" => ["a", "b", "a", "c", "b"]).unwrap();
        let out = mark_duplicates(df.lazy()).unwrap().collect().unwrap();
        let d: Vec<bool> = out
            .column("is_duplicate")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(d, [false, false, true, false, true]);
    }
}
