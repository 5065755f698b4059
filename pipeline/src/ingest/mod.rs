//! Ingest of Partner Center exports, the pure part: header mapping, exact parsing of decimals and dates, and the
//! typing stage that turns a frame of text cells into `stg_pc_daily_usage` / `stg_pc_invoice_lines` rows and
//! `rejects_pc_*` rows side by side (DESIGN §4.1, §5 "Ingest").
//!
//! The job (`jobs/inputs/`) detects the format, reads the file (CSV through Polars with an all-String schema,
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

mod text;
pub use text::*;

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
/// rejects. The job runs the same functions file by file through spool files (`jobs/inputs/`); this composition
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
mod tests;
