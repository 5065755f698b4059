//! Per-customer invoice files a billing clerk opens (issue #7 point 7): for each invoice a CSV of its lines and
//! an XLSX with a header block (issuer, customer, number, period, currency, dates), the lines, the totals, and
//! for enterprise invoices the resource-level detail.
//!
//! Files go to a local staging folder, `DIR/period=P/customer=<id>/<invoice_number>.{csv,xlsx}`; the job uploads
//! them with the period's commit. Every path part is sanitised, so a customer id such as `../../x` can never
//! leave the folder. The bytes depend only on the frames and the issuer: the XLSX creation date is the invoice
//! date (not the clock) and rust_xlsxwriter stamps its zip entries with a fixed time, so a re-run writes
//! identical files.
//!
//! The customer sees prices, never the MSP's cost, margin, rate rules or tag rules: those stay in the marts.
//! Amounts are exact decimals in the CSV. XLSX stores numbers as IEEE doubles, so an amount or quantity is
//! written as a number only when the double prints back as the same decimal (every amount with 15 significant
//! digits or fewer does); otherwise it is written as text, never silently altered.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{Datelike, NaiveDate};
use pipeline::invoice::cells;
use polars::prelude::{
    DataFrame, IntoLazy, NamedFrom, ParquetReader, SerReader, Series, col, lit,
};
use rust_decimal::Decimal;
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, FormatAlign, Workbook, Worksheet};
use schemas::{fct_invoice_detail as det, fct_invoice_lines as fl, fct_invoices as fi};
use sha2::{Digest, Sha256};

use crate::documents::DocInputs;
use crate::documents::present::{self, RawLine};

/// The MSP issuing the invoices, as printed in the header block (from `[partner]` in `cspbill.toml`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issuer {
    pub name: String,
    pub address: String,
    pub tax_id: String,
    pub email: String,
}

impl From<&crate::config::Partner> for Issuer {
    fn from(p: &crate::config::Partner) -> Self {
        Self {
            name: p.name.clone(),
            address: p.address.clone(),
            tax_id: p.tax_id.clone(),
            email: p.email.clone(),
        }
    }
}

/// Rows an XLSX sheet holds below its header row; longer detail continues on further sheets.
const SHEET_ROWS: usize = 1_000_000;

/// The deflate level of the XLSX zip entries (see [`invoice_xlsx`]).
const XLSX_ZIP_LEVEL: u8 = 1;

/// Makes `raw` safe as one path component: ASCII letters, digits, `-`, `_` and `.` are kept, anything else
/// becomes `_`, a leading `.` becomes `_` (so neither `.`, `..` nor a hidden name can result), and when anything
/// changed a short hash of the original is appended, so two different ids never share a folder.
pub fn sanitise(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    if out != raw {
        let hash = hex::encode(Sha256::digest(raw.as_bytes()));
        out.push('-');
        out.push_str(&hash[..8]);
    }
    out
}

/// One invoice's header fields, read from `fct_invoices`.
struct Header {
    number: String,
    period: String,
    customer_id: String,
    customer_name: String,
    currency: String,
    template: String,
    status: String,
    invoice_date: NaiveDate,
    due_date: Option<NaiveDate>,
    subtotal: Decimal,
    tax: Decimal,
    total: Decimal,
    unpriced: i64,
}

fn headers(invoices: &DataFrame) -> Result<Vec<Header>> {
    let s = |c: &str| {
        cells::strs(invoices, c).with_context(|| format!("reading `{}`.`{c}`", fi::TABLE))
    };
    let dc = |c: &str| {
        cells::decs(invoices, c).with_context(|| format!("reading `{}`.`{c}`", fi::TABLE))
    };
    let dt = |c: &str| {
        cells::dates(invoices, c).with_context(|| format!("reading `{}`.`{c}`", fi::TABLE))
    };
    let (number, period, cust, name, ccy, tpl, status) = (
        s(fi::invoice_number)?,
        s(fi::period)?,
        s(fi::customer_id)?,
        s(fi::customer_name)?,
        s(fi::currency)?,
        s(fi::template)?,
        s(fi::status)?,
    );
    let (idate, due) = (dt(fi::invoice_date)?, dt(fi::due_date)?);
    let (sub, tax, total) = (dc(fi::subtotal)?, dc(fi::tax)?, dc(fi::total)?);
    let unpriced = cells::ints(invoices, fi::unpriced_charges)?;
    let mut out = Vec::with_capacity(invoices.height());
    for i in 0..invoices.height() {
        let Some(n) = number[i].clone() else {
            bail!(
                "an invoice without `invoice_number`: the invoice stage must number every invoice"
            )
        };
        let Some(invoice_date) = idate[i] else {
            bail!(
                "invoice `{n}` has no `invoice_date`; set `invoice_date` in cspbill.toml or pass --invoice-date"
            )
        };
        out.push(Header {
            number: n,
            period: period[i].clone().unwrap_or_default(),
            customer_id: cust[i].clone().unwrap_or_default(),
            customer_name: name[i].clone().unwrap_or_default(),
            currency: ccy[i].clone().unwrap_or_default(),
            template: tpl[i].clone().unwrap_or_default(),
            status: status[i].clone().unwrap_or_default(),
            invoice_date,
            due_date: due[i],
            subtotal: sub[i].unwrap_or_default(),
            tax: tax[i].unwrap_or_default(),
            total: total[i].unwrap_or_default(),
            unpriced: unpriced[i].unwrap_or(0),
        });
    }
    Ok(out)
}

/// The customer-facing columns of a frame, read once; rows are picked per invoice by index.
struct Table {
    strs: HashMap<&'static str, Vec<Option<String>>>,
    decs: HashMap<&'static str, Vec<Option<Decimal>>>,
    dates: HashMap<&'static str, Vec<Option<NaiveDate>>>,
    ints: HashMap<&'static str, Vec<Option<i64>>>,
    by_invoice: HashMap<String, Vec<usize>>,
}

impl Table {
    fn read(
        df: &DataFrame,
        table: &str,
        strs: &[&'static str],
        decs: &[&'static str],
        dates: &[&'static str],
        ints: &[&'static str],
    ) -> Result<Self> {
        let ctx = |c: &str| format!("reading `{table}`.`{c}`");
        let mut t = Table {
            strs: HashMap::new(),
            decs: HashMap::new(),
            dates: HashMap::new(),
            ints: HashMap::new(),
            by_invoice: HashMap::new(),
        };
        for c in strs {
            t.strs
                .insert(c, cells::strs(df, c).with_context(|| ctx(c))?);
        }
        for c in decs {
            t.decs
                .insert(c, cells::decs(df, c).with_context(|| ctx(c))?);
        }
        for c in dates {
            t.dates
                .insert(c, cells::dates(df, c).with_context(|| ctx(c))?);
        }
        for c in ints {
            t.ints
                .insert(c, cells::ints(df, c).with_context(|| ctx(c))?);
        }
        let numbers = cells::strs(df, "invoice_number").with_context(|| ctx("invoice_number"))?;
        for (i, n) in numbers.into_iter().enumerate() {
            t.by_invoice
                .entry(n.unwrap_or_default())
                .or_default()
                .push(i);
        }
        Ok(t)
    }
    fn s(&self, c: &str, i: usize) -> String {
        self.strs
            .get(c)
            .and_then(|v| v[i].clone())
            .unwrap_or_default()
    }
    fn d(&self, c: &str, i: usize) -> Option<Decimal> {
        self.decs.get(c).and_then(|v| v[i])
    }
    fn date(&self, c: &str, i: usize) -> Option<NaiveDate> {
        self.dates.get(c).and_then(|v| v[i])
    }
    fn int(&self, c: &str, i: usize) -> Option<i64> {
        self.ints.get(c).and_then(|v| v[i])
    }
    fn rows(&self, invoice: &str) -> &[usize] {
        self.by_invoice
            .get(invoice)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// An amount with exactly the currency's minor-unit places (`12.3` EUR → `12.30`, JPY `1200`).
pub(crate) fn money_text(d: Decimal, currency: &str) -> String {
    let dp = pipeline::currency::minor_unit(currency).unwrap_or(2);
    let mut v = d;
    v.rescale(dp.max(v.normalize().scale()));
    v.to_string()
}

/// A text cell of a CSV, neutralised against formula injection (OWASP "CSV Injection"): a value a spreadsheet
/// would run as a formula (first character, after any spaces, `=`, `+`, `-`, `@`, tab or CR, or their full-width
/// forms) gets a leading `'`, which Excel, LibreOffice and Google Sheets show as text; then quoted as any field.
/// Numeric columns do not go through this, so a negative amount keeps its sign.
pub(crate) fn csv_text(s: &str) -> String {
    const TRIGGERS: &[char] = &['=', '+', '-', '@', '\t', '\r', '\u{ff1d}', '\u{ff0b}', '\u{ff0d}', '\u{ff20}'];
    let first = s.trim_start_matches(' ').chars().next();
    let starts_formula = s.starts_with(['\t', '\r']) || first.is_some_and(|c| TRIGGERS.contains(&c));
    if starts_formula {
        csv_field(&format!("'{s}"))
    } else {
        csv_field(s)
    }
}

/// A CSV field, quoted when it holds a separator, quote or line break (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const CSV_HEADER: &[&str] = &[
    "invoice_number",
    "invoice_date",
    "due_date",
    "period",
    "customer_id",
    "currency",
    "line_no",
    "line_type",
    "description",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "tax",
    "subscription_id",
    "unit_path",
    "corrected_period",
    "note",
];

/// The columns of [`CSV_HEADER`] that hold numbers (written as they are; the rest are text cells).
const NUMERIC_COLUMNS: &[&str] = &["line_no", "quantity", "unit_price", "amount", "tax"];

/// The CSV of one invoice: one row per line, customer-facing columns only. It starts with a UTF-8 byte-order
/// mark so that Excel shows non-ASCII descriptions correctly when a clerk double-clicks it.
fn invoice_csv(h: &Header, lines: &Table) -> String {
    let mut out = String::from("\u{feff}");
    out.push_str(&CSV_HEADER.join(","));
    out.push('\n');
    // One number format per column (issue #14): quantities with the places the invoice's longest needs (exact),
    // unit prices rounded for display to the minor unit + 2 places, amounts with the minor unit's places.
    let raw: Vec<(usize, RawLine)> = lines.rows(&h.number).iter().map(|&i| (i, raw_line(lines, i))).collect();
    let shown: Vec<present::Shown> = raw.iter().map(|(_, l)| present::shown(l, &h.currency)).collect();
    let qp = present::quantity_places(shown.iter().filter_map(|s| s.quantity.as_ref()), schemas::MONEY_SCALE as u32);
    let up = present::unit_price_places(&h.currency);
    for ((i, _), sh) in raw.iter().zip(&shown) {
        let i = *i;
        let fields = [
            h.number.clone(),
            h.invoice_date.to_string(),
            h.due_date.map(|d| d.to_string()).unwrap_or_default(),
            h.period.clone(),
            h.customer_id.clone(),
            h.currency.clone(),
            lines
                .int(fl::line_no, i)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            lines.s(fl::line_type, i),
            lines.s(fl::description, i),
            sh.quantity.map(|q| present::fixed(q, qp)).unwrap_or_default(),
            sh.unit.clone(),
            sh.unit_price.map(|p| present::fixed(p, up)).unwrap_or_default(),
            money_text(lines.d(fl::amount, i).unwrap_or_default(), &h.currency),
            money_text(lines.d(fl::tax, i).unwrap_or_default(), &h.currency),
            lines.s(fl::subscription_id, i),
            lines.s(fl::unit_path, i),
            lines.s(fl::corrected_period, i),
            present::note(sh, &h.currency, qp, present::Locale::EnUs),
        ];
        // Numbers as written (a credit keeps its `-`); every other cell is text and neutralised.
        let row: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(k, f)| if NUMERIC_COLUMNS.contains(&CSV_HEADER[k]) { csv_field(f) } else { csv_text(f) })
            .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The double that prints back as exactly `d`, or `None` when there is none.
fn exact_f64(d: Decimal) -> Option<f64> {
    let text = d.normalize().to_string();
    let f: f64 = text.parse().ok()?;
    let back: Decimal = format!("{f}").parse().ok()?;
    (back == d.normalize()).then_some(f)
}

/// Writes a decimal as a number when it survives the trip through a double, else as text.
fn write_dec(
    ws: &mut Worksheet,
    row: u32,
    col: u16,
    d: Option<Decimal>,
    fmt: &Format,
) -> Result<()> {
    if let Some(d) = d {
        match exact_f64(d) {
            Some(f) => ws.write_number_with_format(row, col, f, fmt)?,
            None => ws.write_string_with_format(
                row,
                col,
                d.normalize().to_string(),
                &fmt.clone().set_align(FormatAlign::Right),
            )?,
        };
    }
    Ok(())
}

fn excel_date(d: NaiveDate) -> Result<ExcelDateTime> {
    Ok(ExcelDateTime::from_ymd(
        u16::try_from(d.year()).context("year out of range for Excel")?,
        d.month() as u8,
        d.day() as u8,
    )?)
}

/// The number format of amounts in `currency`: thousands separators and the minor unit's places.
fn money_format(currency: &str) -> Format {
    let dp = pipeline::currency::minor_unit(currency).unwrap_or(2) as usize;
    let pattern = if dp == 0 {
        "#,##0".to_string()
    } else {
        format!("#,##0.{}", "0".repeat(dp))
    };
    Format::new().set_num_format(pattern)
}

/// The XLSX of one invoice.
fn invoice_xlsx(h: &Header, lines: &Table, detail: &DetailOf<'_>, issuer: &Issuer, path: &Path) -> Result<()> {
    let mut wb = Workbook::new();
    // Deflate level 1: a third of the time of the default level 6 on detail sheets, for files about a fifth
    // larger (benches/README.md, issue 10); the bytes are still deterministic.
    wb.set_zip_compression_level(XLSX_ZIP_LEVEL);
    let props = DocProperties::new()
        .set_title(format!("Invoice {}", h.number))
        .set_author(issuer.name.clone())
        .set_creation_datetime(&excel_date(h.invoice_date)?);
    wb.set_properties(&props);
    let bold = Format::new().set_bold();
    let title = Format::new().set_bold().set_font_size(16);
    let date_fmt = Format::new()
        .set_num_format("yyyy-mm-dd")
        .set_align(FormatAlign::Left);
    let money = money_format(&h.currency);
    let money_bold = money.clone().set_bold();
    let raw: Vec<(usize, RawLine)> = lines.rows(&h.number).iter().map(|&i| (i, raw_line(lines, i))).collect();
    let shown: Vec<present::Shown> = raw.iter().map(|(_, l)| present::shown(l, &h.currency)).collect();
    let qp = present::quantity_places(shown.iter().filter_map(|s| s.quantity.as_ref()), present::QUANTITY_MAX_PLACES);
    let qty = Format::new().set_num_format(fixed_pattern(qp));
    let unit_price_fmt = Format::new().set_num_format(fixed_pattern(present::unit_price_places(&h.currency)));
    let head = Format::new()
        .set_bold()
        .set_border_bottom(rust_xlsxwriter::FormatBorder::Thin);

    let ws = wb.add_worksheet();
    ws.set_name("Invoice")?;
    ws.set_column_width(0, 14)?;
    ws.set_column_width(1, 16)?;
    ws.set_column_width(2, 70)?;
    for c in 3..=6 {
        ws.set_column_width(c, 16)?;
    }
    ws.set_column_width(7, 36)?;
    let mut row = 0u32;
    ws.write_string_with_format(row, 0, "Invoice", &title)?;
    row += 2;
    // Header block: who issues, who pays, which invoice.
    let field = |ws: &mut Worksheet, row: &mut u32, label: &str, value: &str| -> Result<()> {
        if !value.is_empty() {
            ws.write_string_with_format(*row, 0, label, &bold)?;
            ws.write_string(*row, 1, value)?;
            *row += 1;
        }
        Ok(())
    };
    field(ws, &mut row, "Issuer", &issuer.name)?;
    field(ws, &mut row, "Address", &issuer.address)?;
    field(ws, &mut row, "Tax id", &issuer.tax_id)?;
    field(ws, &mut row, "Email", &issuer.email)?;
    row += 1;
    field(ws, &mut row, "Customer", &h.customer_name)?;
    field(ws, &mut row, "Customer id", &h.customer_id)?;
    row += 1;
    field(ws, &mut row, "Invoice number", &h.number)?;
    field(ws, &mut row, "Period", &h.period)?;
    field(ws, &mut row, "Currency", &h.currency)?;
    field(ws, &mut row, "Status", &h.status)?;
    ws.write_string_with_format(row, 0, "Invoice date", &bold)?;
    ws.write_datetime_with_format(row, 1, &excel_date(h.invoice_date)?, &date_fmt)?;
    row += 1;
    if let Some(due) = h.due_date {
        ws.write_string_with_format(row, 0, "Due date", &bold)?;
        ws.write_datetime_with_format(row, 1, &excel_date(due)?, &date_fmt)?;
        row += 1;
    }
    if h.unpriced > 0 {
        let note = format!(
            "{} charge(s) are not priced yet and are not on this invoice",
            h.unpriced
        );
        field(ws, &mut row, "Unpriced charges", &note)?;
    }
    row += 1;

    // The lines.
    let cols = [
        "Line",
        "Type",
        "Description",
        "Quantity",
        "Unit",
        "Unit price",
        &format!("Amount ({})", h.currency),
        "Note",
    ];
    for (c, name) in cols.iter().enumerate() {
        ws.write_string_with_format(row, c as u16, *name, &head)?;
    }
    row += 1;
    for ((i, _), sh) in raw.iter().zip(&shown) {
        let i = *i;
        if let Some(n) = lines.int(fl::line_no, i) {
            ws.write_number(row, 0, n as f64)?;
        }
        ws.write_string(row, 1, lines.s(fl::line_type, i))?;
        ws.write_string(row, 2, lines.s(fl::description, i))?;
        write_dec(ws, row, 3, sh.quantity, &qty)?;
        ws.write_string(row, 4, &sh.unit)?;
        write_dec(ws, row, 5, sh.unit_price, &unit_price_fmt)?;
        write_dec(ws, row, 6, lines.d(fl::amount, i), &money)?;
        let note = present::note(sh, &h.currency, qp, present::Locale::EnUs);
        if !note.is_empty() {
            ws.write_string(row, 7, note)?;
        }
        row += 1;
    }
    row += 1;
    // Totals, as the invoice states them (the subtotal is the sum of the rounded lines, checked by the run).
    for (label, value, fmt) in [
        ("Subtotal", h.subtotal, &money),
        ("Tax", h.tax, &money),
        ("Total", h.total, &money_bold),
    ] {
        ws.write_string_with_format(row, 5, label, &bold)?;
        write_dec(ws, row, 6, Some(value), fmt)?;
        row += 1;
    }
    ws.write_string(
        row + 1,
        0,
        "Amounts are before tax; tax is added by the invoicing system (ERP).",
    )?;

    if h.template == "enterprise" {
        detail_sheets(&mut wb, h, detail)?;
    }
    wb.save(path).with_context(|| format!("writing `{}`", path.display()))?;
    Ok(())
}

/// Streams an invoice's `fct_invoice_detail` rows to a callback in consecutive chunks, in table order.
pub type DetailOf<'a> = dyn Fn(&str, &mut dyn FnMut(&DataFrame) -> Result<()>) -> Result<()> + Sync + 'a;

/// Reads one chunk of detail rows into a [`Table`].
fn detail_table(df: &DataFrame) -> Result<Table> {
    Table::read(
        df,
        det::TABLE,
        &[
            det::invoice_line_id,
            det::subscription_id,
            det::unit_path,
            det::resource_group,
            det::resource_uri,
            det::meter_category,
            det::meter_name,
            det::product_id,
            det::sku_id,
        ],
        &[det::quantity, det::price],
        &[det::charge_date],
        &[],
    )
}

/// The resource-level rows of an enterprise invoice, split over sheets of at most [`SHEET_ROWS`] rows. Rows
/// arrive in chunks and go to constant-memory worksheets (flushed row by row to a temporary file), so a large
/// customer's detail is never held whole.
fn detail_sheets(wb: &mut Workbook, h: &Header, detail: &DetailOf<'_>) -> Result<()> {
    let head = Format::new().set_bold();
    let date_fmt = Format::new().set_num_format("yyyy-mm-dd");
    let qty = Format::new().set_num_format("#,##0.####");
    // Part prices keep their full precision: only invoice lines are rounded.
    let price = Format::new().set_num_format("#,##0.00##########");
    let cols = [
        "Invoice line",
        "Date",
        "Subscription",
        "Org unit",
        "Resource group",
        "Resource",
        "Meter category",
        "Meter",
        "Product",
        "SKU",
        "Quantity",
        "Price",
    ];
    let mut sheets = 0usize;
    let mut row: u32 = 0;
    let new_sheet = |wb: &mut Workbook, sheets: &mut usize| -> Result<()> {
        let ws = wb.add_worksheet_with_constant_memory()?;
        ws.set_name(if *sheets == 0 {
            "Detail".to_string()
        } else {
            format!("Detail {}", *sheets + 1)
        })?;
        ws.set_freeze_panes(1, 0)?;
        for (c, name) in cols.iter().enumerate() {
            ws.write_string_with_format(0, c as u16, *name, &head)?;
        }
        *sheets += 1;
        Ok(())
    };
    new_sheet(wb, &mut sheets)?;
    let mut write_chunk = |df: &DataFrame| -> Result<()> {
        let t = detail_table(df)?;
        for &i in t.rows(&h.number) {
            if row as usize >= SHEET_ROWS {
                new_sheet(wb, &mut sheets)?;
                row = 0;
            }
            row += 1;
            let ws = wb.worksheets_mut().last_mut().context("a detail sheet")?;
            ws.write_string(row, 0, t.s(det::invoice_line_id, i))?;
            if let Some(d) = t.date(det::charge_date, i) {
                ws.write_datetime_with_format(row, 1, &excel_date(d)?, &date_fmt)?;
            }
            for (c, name) in [
                (2, det::subscription_id),
                (3, det::unit_path),
                (4, det::resource_group),
                (5, det::resource_uri),
                (6, det::meter_category),
                (7, det::meter_name),
                (8, det::product_id),
                (9, det::sku_id),
            ] {
                ws.write_string(row, c, t.s(name, i))?;
            }
            write_dec(ws, row, 10, t.d(det::quantity, i), &qty)?;
            write_dec(ws, row, 11, t.d(det::price, i), &price)?;
        }
        Ok(())
    };
    detail(&h.number, &mut write_chunk)
}

/// Writes a CSV and an XLSX per invoice under `dir/period=P/customer=<id>/` and returns the files written, in
/// invoice order. `invoices`, `lines` and `detail` are the collected `fct_invoices`, `fct_invoice_lines` and
/// `fct_invoice_detail` of the period (detail may be empty; it is only printed for enterprise invoices).
pub fn write_exports(
    dir: &Path,
    invoices: &DataFrame,
    lines: &DataFrame,
    detail: &DataFrame,
    issuer: &Issuer,
) -> Result<Vec<PathBuf>> {
    let of = |n: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>| -> Result<()> {
        f(&detail.clone().lazy().filter(col(det::invoice_number).eq(lit(n.to_string()))).collect()?)
    };
    write_exports_with(dir, invoices, lines, &of, issuer, &DocInputs::default())
}

/// [`write_exports`] with the detail of one invoice at a time, from `detail_of(invoice_number)`: only enterprise
/// invoices ask for theirs, so the month's detail is never in memory at once.
pub fn write_exports_with(
    dir: &Path,
    invoices: &DataFrame,
    lines: &DataFrame,
    detail_of: &DetailOf<'_>,
    issuer: &Issuer,
    docs: &DocInputs,
) -> Result<Vec<PathBuf>> {
    let headers = headers(invoices)?;
    let lines = Table::read(
        lines,
        fl::TABLE,
        &[
            fl::line_type,
            fl::description,
            fl::unit,
            fl::subscription_id,
            fl::unit_path,
            fl::corrected_period,
            fl::invoice_line_id,
            fl::product_family,
        ],
        &[fl::quantity, fl::unit_price, fl::amount, fl::tax, fl::amount_unrounded],
        &[],
        &[fl::line_no, fl::part_count],
    )?;
    // One invoice per task, fanned out over the cores (file-level fan-out: each task writes its own two files);
    // the order of the returned paths is the invoices' order whatever the scheduling.
    let per_invoice: Vec<Result<Vec<PathBuf>>> =
        crate::fanout::map(&headers, |h| write_invoice_files(dir, h, &lines, detail_of, issuer, docs));
    let mut written = Vec::with_capacity(per_invoice.len() * 4);
    for files in per_invoice {
        written.extend(files?);
    }
    Ok(written)
}

/// Writes the CSV, the XLSX, the PDF and the HTML of one invoice under `dir/period=P/customer=<id>/`.
fn write_invoice_files(dir: &Path, h: &Header, lines: &Table, detail_of: &DetailOf<'_>, issuer: &Issuer, docs: &DocInputs) -> Result<Vec<PathBuf>> {
    let folder = dir
        .join(format!("period={}", sanitise(&h.period)))
        .join(format!("customer={}", sanitise(&h.customer_id)));
    // Belt and braces: sanitised parts have no separators, so the folder is always inside `dir`.
    if !folder.starts_with(dir) {
        bail!(
            "export folder `{}` would leave `{}`; this is a bug in path sanitising",
            folder.display(),
            dir.display()
        );
    }
    fs::create_dir_all(&folder).with_context(|| format!("creating export folder `{}`", folder.display()))?;
    let stem = sanitise(&h.number);
    let csv_path = folder.join(format!("{stem}.csv"));
    fs::write(&csv_path, invoice_csv(h, lines)).with_context(|| format!("writing `{}`", csv_path.display()))?;
    let xlsx_path = folder.join(format!("{stem}.xlsx"));
    invoice_xlsx(h, lines, detail_of, issuer, &xlsx_path)
        .with_context(|| format!("building the XLSX of invoice `{}`", h.number))?;
    let doc = document_of(h, lines, issuer, docs);
    let [pdf, html] = crate::documents::write_documents(&folder, &stem, &doc, detail_of)?;
    Ok(vec![csv_path, xlsx_path, pdf, html])
}

/// One invoice line of the lines table, as presentation reads it.
fn raw_line(lines: &Table, i: usize) -> RawLine {
    RawLine {
        line_no: lines.int(fl::line_no, i).unwrap_or(0),
        line_type: lines.s(fl::line_type, i),
        product_family: lines.s(fl::product_family, i),
        description: lines.s(fl::description, i),
        quantity: lines.d(fl::quantity, i),
        unit: lines.s(fl::unit, i),
        unit_price: lines.d(fl::unit_price, i),
        amount_unrounded: lines.d(fl::amount_unrounded, i),
        amount: lines.d(fl::amount, i).unwrap_or_default(),
        part_count: lines.int(fl::part_count, i).unwrap_or(0),
        subscription_id: lines.s(fl::subscription_id, i),
        unit_path: lines.s(fl::unit_path, i),
        corrected_period: lines.s(fl::corrected_period, i),
        invoice_line_id: lines.s(fl::invoice_line_id, i),
    }
}

/// The invoice as its PDF and HTML documents print it.
fn document_of<'a>(h: &Header, lines: &Table, issuer: &'a Issuer, docs: &'a DocInputs) -> crate::documents::Doc<'a> {
    let mut raw: Vec<RawLine> = lines.rows(&h.number).iter().map(|&i| raw_line(lines, i)).collect();
    raw.sort_by_key(|l| l.line_no);
    crate::documents::Doc {
        number: h.number.clone(),
        period: h.period.clone(),
        customer_id: h.customer_id.clone(),
        customer_name: h.customer_name.clone(),
        currency: h.currency.clone(),
        template: h.template.clone(),
        status: h.status.clone(),
        invoice_date: h.invoice_date,
        due_date: h.due_date,
        subtotal: h.subtotal,
        tax: h.tax,
        total: h.total,
        unpriced: h.unpriced,
        lines: raw,
        issuer,
        customer: docs.customers.get(&h.customer_id).cloned().unwrap_or_default(),
        tag_rules: &docs.tag_rules,
    }
}

/// An Excel number format with exactly `places` decimals and thousands separators.
fn fixed_pattern(places: u32) -> String {
    if places == 0 { "#,##0".into() } else { format!("#,##0.{}", "0".repeat(places as usize)) }
}

/// Rows of detail an XLSX export reads at a time.
pub const DETAIL_CHUNK: usize = 100_000;

/// The detail of the enterprise invoices of a run, split out of the spooled `fct_invoice_detail` in one streaming
/// pass into one small Parquet file per invoice, so that each XLSX reads only its own rows.
pub struct DetailByInvoice {
    files: HashMap<String, PathBuf>,
    schema: polars::prelude::Schema,
}

impl DetailByInvoice {
    /// Splits `detail` (the spooled table) for the enterprise invoices of `invoices`, writing below `dir`.
    pub fn split(detail: &crate::spool::SpoolTable, invoices: &DataFrame, dir: &Path) -> Result<Self> {
        let numbers = cells::strs(invoices, fi::invoice_number)?;
        let templates = cells::strs(invoices, fi::template)?;
        let wanted: std::collections::HashSet<String> = numbers
            .into_iter()
            .zip(templates)
            .filter(|(_, t)| t.as_deref() == Some("enterprise"))
            .filter_map(|(n, _)| n)
            .collect();
        let lf = detail.scan()?;
        let schema = (*lf.clone().collect_schema()?).clone();
        let mut files = HashMap::new();
        if wanted.is_empty() {
            return Ok(Self { files, schema });
        }
        let split_dir = dir.join(".detail");
        let targets: HashMap<String, PathBuf> =
            wanted.iter().map(|n| (n.clone(), split_dir.join(format!("{}.parquet", sanitise(n))))).collect();
        let only_wanted = lf.filter(col(det::invoice_number).is_in(
            lit(Series::new("w".into(), wanted.iter().cloned().collect::<Vec<_>>())).implode(false),
            false,
        ));
        files.extend(crate::split::split_by(only_wanted, det::invoice_number, targets, "fct_invoice_detail by invoice")?);
        Ok(Self { files, schema })
    }

    /// Hands the detail rows of one invoice to `f` in chunks of at most [`DETAIL_CHUNK`] rows (nothing when
    /// it has none).
    pub fn chunks(&self, invoice: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>) -> Result<()> {
        let Some(p) = self.files.get(invoice) else {
            return f(&DataFrame::empty_with_schema(&self.schema));
        };
        let rows = ParquetReader::new(fs::File::open(p).with_context(|| format!("reading `{}`", p.display()))?).num_rows()?;
        let mut offset = 0usize;
        while offset < rows {
            let chunk = crate::spool::collect(crate::spool::scan(p)?.slice(offset as i64, DETAIL_CHUNK as u32), "invoice detail")?;
            f(&chunk)?;
            offset += DETAIL_CHUNK;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{Data, Reader, Xlsx, open_workbook};
    use pipeline::RunContext;
    use pipeline::invoice::{InvoiceInputs, Invoiced, fct_invoices};
    use pipeline::reference::{RefTable, empty, stage_reference};
    use polars::prelude::*;
    use schemas::{Ty, int_charges_rated as r};
    use std::io::Read;

    fn split(csv: &str) -> (Vec<String>, Vec<(u64, Vec<String>)>) {
        let mut it = csv.trim().lines().map(str::trim);
        let header = it.next().unwrap().split(',').map(str::to_string).collect();
        let rows = it
            .enumerate()
            .map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect()))
            .collect();
        (header, rows)
    }

    /// An `int_charges_rated` frame naming only the columns the test needs; the others are null.
    fn rated(csv: &str) -> LazyFrame {
        let (h, rows) = split(csv);
        let mut columns = Vec::new();
        for (name, ty) in r::COLUMNS {
            let idx = h.iter().position(|c| c == name);
            let cell = |row: &Vec<String>| idx.map(|i| row[i].clone()).filter(|s| !s.is_empty());
            let col: Vec<Option<String>> = rows.iter().map(|(_, row)| cell(row)).collect();
            let c = match ty {
                Ty::Str => cells::str_column(name, &col),
                Ty::Dec => cells::dec_column(
                    name,
                    &col.iter()
                        .map(|v| v.as_ref().map(|s| s.parse().unwrap()))
                        .collect::<Vec<_>>(),
                ),
                Ty::Date => cells::date_column(
                    name,
                    &col.iter()
                        .map(|v| {
                            v.as_ref()
                                .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
                        })
                        .collect::<Vec<_>>(),
                ),
                Ty::Int => Column::new(
                    (*name).into(),
                    col.iter()
                        .map(|v| v.as_ref().map(|s| s.parse::<i64>().unwrap()))
                        .collect::<Vec<_>>(),
                ),
                Ty::Bool => Column::new(
                    (*name).into(),
                    col.iter()
                        .map(|v| v.as_ref().map(|s| s == "true"))
                        .collect::<Vec<_>>(),
                ),
                Ty::Ts => unreachable!("no timestamps in int_charges_rated"),
            };
            columns.push(c);
        }
        DataFrame::new_infer_height(columns).unwrap().lazy()
    }

    /// Two invoices through the real invoice stage: `c/1` (smb, EUR, with a path-like id) and `e1` (enterprise,
    /// USD, with detail).
    fn invoiced() -> Invoiced {
        invoiced_with(
            "a,la,../../evil,smb,EUR,license,license,invoice_line,P1,0001,Microsoft 365 E3,E3,,,PS1,,Licenses,10,1,300,361.234,priced,2025-06-01,2025-06-30,2025-06-01
b,lb,../../evil,smb,EUR,usage,azure_usage,daily_usage,DZH,0001,Azure plan,,Compute,VM D2,S1,rg1,1 Hour,100,1,10,12.345,priced,,,2025-06-02
c,lc,e1,enterprise,USD,usage,azure_usage,daily_usage,DZH,0001,Azure plan,,Compute,VM D2,S9,rg-app,1 Hour,5,1,1,1.5,priced,,,2025-06-02
d,ld,e1,enterprise,USD,usage,azure_usage,daily_usage,DZH,0001,Azure plan,,Compute,VM D4,S9,rg-app,1 Hour,1,1,1,0.123456789012345678,priced,,,2025-06-03",
            "../../evil,Contoso Süd,EUR,smb,
e1,Enterprise Ltd,USD,enterprise,14",
        )
    }

    /// The invoice stage over the given rated rows and customers (CSV rows without their headers).
    fn invoiced_with(rated_rows: &str, customer_rows: &str) -> Invoiced {
        let (h, rows) = split(&format!(
            "customer_id,customer_name,invoice_currency,template,payment_terms_days\n{customer_rows}"
        ));
        let customers = stage_reference(RefTable::Customers, "customers.csv", &h, &rows)
            .unwrap()
            .df;
        let rated = rated(&format!(
            "part_id,line_id,customer_id,template,invoice_currency,line_type,product_family,source_kind,product_id,sku_id,product_name,sku_name,meter_category,meter_name,subscription_id,resource_group,unit,q,f,cost_ic,price,status,charge_start_date,charge_end_date,charge_date\n{rated_rows}"
        ));
        let mut ctx = RunContext::for_period("2025-06".parse().unwrap());
        ctx.policies.invoice_date = NaiveDate::from_ymd_opt(2025, 7, 8).unwrap();
        ctx.policies.issuer = "Northwind MSP".into();
        let (org, psa, manual, fx) = (
            empty(RefTable::OrgUnits),
            empty(RefTable::PsaTime),
            empty(RefTable::ManualLines),
            empty(RefTable::FxRates),
        );
        fct_invoices(
            InvoiceInputs {
                rated,
                customers: &customers,
                org_units: &org,
                psa_time: &psa,
                manual_lines: &manual,
                fx_rates: &fx,
                adjustments: DataFrame::empty_with_schema(&schemas::fct_invoice_lines::schema()),
            },
            &ctx,
        )
        .unwrap()
    }

    fn issuer() -> Issuer {
        Issuer {
            name: "Northwind MSP".into(),
            address: "1 Main St, Springfield".into(),
            tax_id: "DE123".into(),
            email: "billing@northwind.example".into(),
        }
    }

    fn write(dir: &Path) -> Vec<PathBuf> {
        let out = invoiced();
        let detail = out.detail.collect().unwrap();
        write_exports(dir, &out.invoices, &out.lines, &detail, &issuer()).unwrap()
    }

    #[test]
    fn path_parts_are_sanitised_and_never_escape() {
        assert_eq!(sanitise("3f2a-99_x.y"), "3f2a-99_x.y");
        let evil = sanitise("../../x");
        assert!(!evil.contains('/') && !evil.starts_with('.'), "{evil}");
        assert_ne!(sanitise("a/b"), sanitise("a_b"));
        assert_ne!(sanitise(".."), "..");
        assert_ne!(sanitise(""), "");
        assert!(!sanitise("a\\b").contains('\\'));

        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("exports");
        let files = write(&root);
        let root_real = root.canonicalize().unwrap();
        for f in &files {
            assert!(
                f.canonicalize().unwrap().starts_with(&root_real),
                "{} escaped",
                f.display()
            );
        }
        // Nothing was written next to the export folder.
        let siblings: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(siblings, vec![std::ffi::OsString::from("exports")]);
        let rel: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let evil_dir = format!("period=2025-06/customer={}", sanitise("../../evil"));
        assert_eq!(
            rel,
            vec![
                format!("{evil_dir}/INV-202506-0001.csv"),
                format!("{evil_dir}/INV-202506-0001.xlsx"),
                format!("{evil_dir}/INV-202506-0001.pdf"),
                format!("{evil_dir}/INV-202506-0001.html"),
                "period=2025-06/customer=e1/INV-202506-0002.csv".to_string(),
                "period=2025-06/customer=e1/INV-202506-0002.xlsx".to_string(),
                "period=2025-06/customer=e1/INV-202506-0002.pdf".to_string(),
                "period=2025-06/customer=e1/INV-202506-0002.html".to_string(),
            ]
        );
    }

    #[test]
    fn csv_text_cells_cannot_run_as_formulas_and_numbers_keep_their_sign() {
        for evil in ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", " =1+1", "\u{ff1d}1"] {
            let cell = csv_text(evil);
            let inner = cell.strip_prefix('"').and_then(|c| c.strip_suffix('"')).unwrap_or(&cell).replace("\"\"", "\"");
            assert_eq!(inner, format!("'{evil}"), "{evil:?} → {cell}");
        }
        assert_eq!(csv_text("Azure plan"), "Azure plan");
        assert_eq!(csv_text("a-b"), "a-b");
        // A whole invoice: a product name and a unit that are formulas, and a credit line with a negative amount.
        let out = invoiced_with(
            "a,la,c1,smb,EUR,license,license,invoice_line,P1,0001,=1+2,E3,,,PS1,,@SUM(A1),10,-1,-300,-361.234,priced,2025-06-01,2025-06-30,2025-06-01",
            "c1,Contoso,EUR,smb,",
        );
        let tmp = tempfile::tempdir().unwrap();
        let detail = out.detail.collect().unwrap();
        let files = write_exports(tmp.path(), &out.invoices, &out.lines, &detail, &issuer()).unwrap();
        let text = fs::read_to_string(&files[0]).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains(",\"'=1+2 – E3, 2025-06-01 to 2025-06-30\","), "{row}");
        assert!(row.contains(",'@SUM(A1),"), "{row}");
        assert!(row.contains(",-361.23,"), "a credit keeps its sign: {row}");
    }

    #[test]
    fn csv_has_the_lines_with_exact_amounts() {
        let tmp = tempfile::tempdir().unwrap();
        let files = write(tmp.path());
        let text = fs::read_to_string(&files[0]).unwrap();
        // 12.345 → 12.34 (half-even), 361.234 → 361.23; dates: invoice 2025-07-08, due +30 days. The seat price
        // 361.234 / 10 = 36.1234 shows EUR's 2 places + 2; 10 × 36.1234 is the whole amount, so no proration note.
        let expected = "\u{feff}invoice_number,invoice_date,due_date,period,customer_id,currency,line_no,line_type,description,quantity,unit,unit_price,amount,tax,subscription_id,unit_path,corrected_period,note
INV-202506-0001,2025-07-08,2025-08-07,2025-06,../../evil,EUR,1,usage,\"Azure consumption, 2025-06-02\",100,1 Hour,,12.34,0.00,,,,
INV-202506-0001,2025-07-08,2025-08-07,2025-06,../../evil,EUR,2,license,\"Microsoft 365 E3 – E3, 2025-06-01 to 2025-06-30\",10,Licenses,36.1234,361.23,0.00,,,,
";
        assert_eq!(text, expected);
    }

    fn sheet(path: &Path, name: &str) -> Vec<Vec<Data>> {
        let mut wb: Xlsx<_> = open_workbook(path).unwrap();
        wb.worksheet_range(name)
            .unwrap()
            .rows()
            .map(|r| r.to_vec())
            .collect()
    }

    fn find_row<'a>(rows: &'a [Vec<Data>], col: usize, label: &str) -> &'a Vec<Data> {
        rows.iter()
            .find(|r| r.get(col).is_some_and(|c| *c == Data::String(label.into())))
            .unwrap_or_else(|| panic!("no `{label}` row"))
    }

    /// A number cell back as an exact decimal (the shortest text of the double, as written).
    fn dec_of(c: &Data) -> Decimal {
        match c {
            Data::Float(f) => format!("{f}").parse().unwrap(),
            Data::Int(i) => Decimal::from(*i),
            Data::String(s) => s.parse().unwrap(),
            other => panic!("not a number: {other:?}"),
        }
    }

    #[test]
    fn xlsx_totals_equal_the_frames_and_enterprise_has_detail() {
        let tmp = tempfile::tempdir().unwrap();
        let files = write(tmp.path());
        let out = invoiced();
        let totals = cells::decs(&out.invoices, fi::total).unwrap();
        let subtotals = cells::decs(&out.invoices, fi::subtotal).unwrap();
        for (k, xlsx) in [files[1].clone(), files[5].clone()].iter().enumerate() {
            let rows = sheet(xlsx, "Invoice");
            assert_eq!(dec_of(&find_row(&rows, 5, "Total")[6]), totals[k].unwrap());
            assert_eq!(
                dec_of(&find_row(&rows, 5, "Subtotal")[6]),
                subtotals[k].unwrap()
            );
            assert_eq!(
                find_row(&rows, 0, "Invoice number")[1],
                Data::String(format!("INV-202506-000{}", k + 1))
            );
            // The line amounts in the sheet add up to the subtotal of the frame.
            let header = rows
                .iter()
                .position(|r| r.first() == Some(&Data::String("Line".into())))
                .unwrap();
            let sum: Decimal = rows[header + 1..]
                .iter()
                .take_while(|r| !matches!(r.first(), Some(Data::Empty) | None))
                .map(|r| dec_of(&r[6]))
                .sum();
            assert_eq!(sum, subtotals[k].unwrap());
        }
        let smb: Xlsx<_> = open_workbook(&files[1]).unwrap();
        assert_eq!(smb.sheet_names(), vec!["Invoice".to_string()]);
        let detail = sheet(&files[5], "Detail");
        assert_eq!(detail.len(), 3); // header + 2 parts
        // 0.123456789012345678 has no exact double: it is written as text, unchanged.
        let prices: Vec<Decimal> = detail[1..].iter().map(|r| dec_of(&r[11])).collect();
        let mut prices = prices;
        prices.sort();
        assert_eq!(
            prices,
            vec![
                "0.123456789012345678".parse::<Decimal>().unwrap(),
                "1.5".parse().unwrap()
            ]
        );
        assert_eq!(detail[1][11].clone(), Data::Float(1.5));
    }

    #[test]
    fn rewriting_gives_identical_bytes_dated_by_the_invoice() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fa = write(a.path());
        std::thread::sleep(std::time::Duration::from_millis(1100)); // a clock-dated file would now differ
        let fb = write(b.path());
        for (x, y) in fa.iter().zip(&fb) {
            assert_eq!(
                fs::read(x).unwrap(),
                fs::read(y).unwrap(),
                "{}",
                x.display()
            );
        }
        let mut zip = ::zip::ZipArchive::new(fs::File::open(&fa[1]).unwrap()).unwrap();
        let mut core = String::new();
        zip.by_name("docProps/core.xml")
            .unwrap()
            .read_to_string(&mut core)
            .unwrap();
        assert!(
            core.contains(">2025-07-08T00:00:00Z</dcterms:created>"),
            "{core}"
        );
    }
}
