//! The page layout of the PDF invoices, per template.
//!
//! The layout runs twice over the same content: first without a PDF (only measuring text) to count the pages
//! and find the page each section starts on, then drawing, with the table of contents and the "page n of N"
//! footers filled in from the first run. Every row has a height known from its text alone (resource rows are
//! one line, cut with `…`), so the dry run needs only the number of resource rows per invoice line, not the
//! rows themselves, and both runs break pages at the same places (checked: a mismatch is an error).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Result, bail};
use rust_decimal::Decimal;

use super::detail::{Row, SortedDetail};
use super::pdf::{Metrics, PAGE_H, PAGE_W, PdfWriter};
use super::present::{self, RawLine};
use super::{Doc, group_of};

const ML: f32 = 40.0;
const MR: f32 = PAGE_W - 40.0;
const TOP: f32 = 60.0;
const BOTTOM: f32 = PAGE_H - 50.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    L,
    R,
}

#[derive(Clone)]
struct Col {
    title: &'static str,
    x: f32,
    w: f32,
    align: Align,
}

fn col(title: &'static str, x: f32, w: f32, align: Align) -> Col {
    Col { title, x: ML + x, w, align }
}

/// The page flow: where the next row goes, breaking pages as needed.
struct Flow<'a> {
    pdf: Option<&'a mut PdfWriter>,
    dry: Metrics,
    pages: usize,
    total: usize,
    y: f32,
    footer: String,
    head: String,
    table: Option<(Vec<Col>, f32)>,
    marks: Vec<usize>,
}

impl<'a> Flow<'a> {
    fn m(&mut self) -> &mut Metrics {
        match &mut self.pdf {
            Some(p) => &mut p.metrics,
            None => &mut self.dry,
        }
    }
    fn draw(&mut self, x: f32, y: f32, size: f32, bold: bool, s: &str) {
        if let Some(p) = &mut self.pdf {
            p.text(x, y, size, bold, s);
        }
    }
    fn draw_right(&mut self, right: f32, y: f32, size: f32, bold: bool, s: &str) {
        let w = self.m().width(s, size, bold);
        self.draw(right - w, y, size, bold, s);
    }
    fn start_page(&mut self) -> Result<()> {
        self.pages += 1;
        let n = self.pages;
        let (total, footer, head) = (self.total, self.footer.clone(), self.head.clone());
        if let Some(p) = &mut self.pdf {
            p.new_page()?;
            p.rule(ML, MR, BOTTOM + 12.0, 0.4);
            p.text(ML, BOTTOM + 24.0, 7.5, false, &footer);
        }
        self.draw_right(MR, BOTTOM + 24.0, 7.5, false, &format!("Page {n} of {total}"));
        if n > 1 {
            self.draw(ML, TOP - 22.0, 7.5, false, &head);
        }
        self.y = TOP;
        if let Some((cols, size)) = self.table.clone() {
            self.table_header(&cols, size);
        }
        Ok(())
    }
    fn ensure(&mut self, h: f32) -> Result<()> {
        if self.pages == 0 || self.y + h > BOTTOM {
            self.start_page()?;
        }
        Ok(())
    }
    fn new_page(&mut self) -> Result<()> {
        self.table = None;
        self.start_page()
    }
    /// The page (0-based) a section starts on, in the order of the table of contents.
    fn mark(&mut self, title: &str) {
        self.marks.push(self.pages - 1);
        let y = self.y;
        if let Some(p) = &mut self.pdf {
            p.bookmark(title, y);
        }
    }
    fn heading(&mut self, text: &str, size: f32, mark: bool) -> Result<()> {
        self.table = None;
        self.ensure(size + 40.0)?;
        self.y += size + 6.0;
        if mark {
            self.mark(text);
        }
        let t = self.m().fit(text, MR - ML, size, true);
        let y = self.y;
        self.draw(ML, y, size, true, &t);
        self.y += 5.0;
        if let Some(p) = &mut self.pdf {
            p.rule(ML, MR, y + 4.0, 0.6);
        }
        self.y += 4.0;
        Ok(())
    }
    fn para(&mut self, text: &str, size: f32, bold: bool) -> Result<()> {
        let lines = self.m().wrap(text, MR - ML, size, bold);
        for l in lines {
            self.ensure(size * 1.35)?;
            self.y += size * 1.35;
            let y = self.y;
            self.draw(ML, y, size, bold, &l);
        }
        Ok(())
    }
    fn gap(&mut self, h: f32) {
        self.y += h;
    }
    fn table_header(&mut self, cols: &[Col], size: f32) {
        let h = size * 1.3 + 4.0;
        let y = self.y;
        if let Some(p) = &mut self.pdf {
            p.shade(ML, y + 2.0, MR - ML, h);
        }
        for c in cols {
            let yy = y + h - 1.0;
            match c.align {
                Align::L => self.draw(c.x, yy, size, true, c.title),
                Align::R => self.draw_right(c.x + c.w, yy, size, true, c.title),
            }
        }
        self.y += h + 3.0;
    }
    fn table(&mut self, cols: Vec<Col>, size: f32) -> Result<()> {
        self.table = None;
        self.ensure(size * 1.3 + 7.0 + size * 2.6)?;
        self.table_header(&cols, size);
        self.table = Some((cols, size));
        Ok(())
    }
    /// One row; a cell may hold several lines (already wrapped). The first cell line of each column is bold
    /// when `bold`.
    fn row(&mut self, cells: &[Vec<String>], size: f32, bold: bool) -> Result<()> {
        let Some((cols, _)) = self.table.clone() else { bail!("internal: a table row outside a table") };
        let lh = size * 1.25;
        let n = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
        self.ensure(n as f32 * lh + 2.0)?;
        let top = self.y;
        for (c, cell) in cols.iter().zip(cells) {
            for (k, text) in cell.iter().enumerate() {
                let y = top + lh * (k + 1) as f32;
                match c.align {
                    Align::L => self.draw(c.x, y, size, bold, text),
                    Align::R => self.draw_right(c.x + c.w, y, size, bold, text),
                }
            }
        }
        self.y = top + n as f32 * lh + 2.0;
        Ok(())
    }
    fn end_table(&mut self) {
        self.table = None;
        self.y += 4.0;
    }
    /// A label and value pair at column x (the value wraps within `w`).
    fn kv_lines(&mut self, pairs: &[(&str, String)], x: f32, w: f32, size: f32) -> Vec<(f32, String, bool)> {
        let mut out = Vec::new();
        for (label, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if label.is_empty() {
                for l in self.m().wrap(value, w, size, false) {
                    out.push((x, l, false));
                }
            } else {
                out.push((x, (*label).to_string(), true));
                for l in self.m().wrap(value, w, size, false) {
                    out.push((x, l, false));
                }
            }
        }
        out
    }
}

/// The text cells of an invoice line in the lines table.
fn line_cells(f: &mut Flow<'_>, doc: &Doc<'_>, l: &RawLine, qp: u32, desc_w: f32) -> Vec<Vec<String>> {
    let loc = doc.locale();
    let s = present::shown(l, &doc.currency);
    let mut desc = f.m().wrap(&l.description, desc_w, 8.0, false);
    let note = present::note(&s, &doc.currency, qp, loc);
    if !note.is_empty() {
        desc.extend(f.m().wrap(&format!("– {note}"), desc_w, 8.0, false));
    }
    vec![
        vec![l.line_no.to_string()],
        desc,
        vec![s.quantity.map(|q| loc.number(q, qp)).unwrap_or_default()],
        vec![f.m().fit(&s.unit, 48.0, 8.0, false)],
        vec![s.unit_price.map(|p| loc.number(p, present::unit_price_places(&doc.currency))).unwrap_or_default()],
        vec![loc.money(l.amount, &doc.currency)],
    ]
}

fn lines_cols() -> Vec<Col> {
    vec![
        col("No", 0.0, 18.0, Align::R),
        col("Description", 26.0, 236.0, Align::L),
        col("Quantity", 262.0, 56.0, Align::R),
        col("Unit", 324.0, 50.0, Align::L),
        col("Unit price", 374.0, 62.0, Align::R),
        col("Amount", 436.0, MR - ML - 436.0, Align::R),
    ]
}

fn lines_table(f: &mut Flow<'_>, doc: &Doc<'_>, lines: &[&RawLine]) -> Result<()> {
    let qp = doc.quantity_places();
    f.table(lines_cols(), 8.0)?;
    for l in lines {
        let cells = line_cells(f, doc, l, qp, 232.0);
        f.row(&cells, 8.0, false)?;
    }
    f.end_table();
    Ok(())
}

/// Issuer, customer and invoice blocks at the top of the first page.
fn title_block(f: &mut Flow<'_>, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    f.y = TOP - 10.0;
    let y = f.y + 20.0;
    f.draw(ML, y, 20.0, true, "Invoice");
    f.draw_right(MR, y, 14.0, true, &doc.number.clone());
    let status = if doc.status == "final" { "Final".to_string() } else { format!("{} (not final)", capital(&doc.status)) };
    f.draw_right(MR, y + 14.0, 8.0, false, &status);
    f.y = y + 30.0;
    let i = doc.issuer;
    let c = &doc.customer;
    let from = f.kv_lines(&[("From", i.name.clone()), ("", i.address.clone()), ("", tagged("Tax id", &i.tax_id)), ("", i.email.clone())], ML, 160.0, 8.0);
    let to = f.kv_lines(
        &[
            ("Bill to", doc.customer_name.clone()),
            ("", c.billing_address.clone()),
            ("", tagged("Tax id", &c.tax_id)),
            ("", tagged("Contact", &c.contact_email)),
            ("", tagged("Customer id", &doc.customer_id)),
        ],
        ML + 170.0,
        185.0,
        8.0,
    );
    let terms = c.payment_terms_days.unwrap_or(30);
    let meta = f.kv_lines(
        &[
            ("Period", doc.period.clone()),
            ("Invoice date", loc.date(doc.invoice_date)),
            ("Due date", doc.due_date.map(|d| format!("{} ({terms} days)", loc.date(d))).unwrap_or_default()),
            ("Currency", doc.currency.clone()),
            ("Purchase order", c.po_number.clone()),
        ],
        ML + 370.0,
        MR - ML - 370.0,
        8.0,
    );
    let top = f.y;
    let mut bottom = top;
    for block in [from, to, meta] {
        let mut y = top;
        for (x, text, bold) in block {
            y += 10.5;
            f.draw(x, y, 8.0, bold, &text);
        }
        bottom = bottom.max(y);
    }
    f.y = bottom + 12.0;
    Ok(())
}

fn tagged(label: &str, v: &str) -> String {
    if v.is_empty() { String::new() } else { format!("{label}: {v}") }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn totals(f: &mut Flow<'_>, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    f.ensure(48.0)?;
    for (label, v, bold) in [("Subtotal", doc.subtotal, false), ("Tax", doc.tax, false), ("Total", doc.total, true)] {
        f.y += 12.0;
        let y = f.y;
        f.draw_right(ML + 420.0, y, 9.0, bold, label);
        let text = if bold { loc.money_code(v, &doc.currency) } else { loc.money(v, &doc.currency) };
        f.draw_right(MR, y, 9.0, bold, &text);
    }
    f.gap(6.0);
    Ok(())
}

fn notes(f: &mut Flow<'_>, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    f.gap(4.0);
    if doc.unpriced > 0 {
        f.para(&format!("{} charge(s) are not priced yet and are not on this invoice.", doc.unpriced), 7.5, true)?;
    }
    if let Some(due) = doc.due_date {
        f.para(&format!("Please pay {} by {}, quoting invoice {}.", loc.money_code(doc.total, &doc.currency), loc.date(due), doc.number), 7.5, false)?;
    }
    f.para(
        &format!(
            "Amounts are before tax; tax is added by the invoicing system. Each line is rounded once to the {} minor unit; unit prices are shown to {} decimal places; a line mixing units of measure shows no quantity.",
            doc.currency,
            present::unit_price_places(&doc.currency)
        ),
        7.0,
        false,
    )?;
    Ok(())
}

/// Adjustment lines, one section per corrected period.
fn adjustments(f: &mut Flow<'_>, doc: &Doc<'_>, mark: bool) -> Result<()> {
    let mut by_period: BTreeMap<&str, Vec<&RawLine>> = BTreeMap::new();
    for l in doc.lines.iter().filter(|l| l.line_type == "adjustment") {
        by_period.entry(l.corrected_period.as_str()).or_default().push(l);
    }
    let mut first = true;
    for (period, lines) in by_period {
        let title = format!("Adjustments for {} (late Microsoft data)", if period.is_empty() { "an earlier period" } else { period });
        f.heading(&title, 10.0, mark && first)?;
        first = false;
        f.para(&format!("Microsoft corrected its data for {period} after that invoice was issued; these lines bill the difference."), 7.5, false)?;
        lines_table(f, doc, &lines)?;
    }
    Ok(())
}

fn smb(f: &mut Flow<'_>, doc: &Doc<'_>) -> Result<()> {
    let mut groups: BTreeMap<usize, (&str, Vec<&RawLine>)> = BTreeMap::new();
    for l in doc.lines.iter().filter(|l| l.line_type != "adjustment") {
        let (k, name) = group_of(&l.line_type);
        groups.entry(k).or_insert((name, Vec::new())).1.push(l);
    }
    for (_, (name, lines)) in groups {
        f.heading(name, 10.0, false)?;
        lines_table(f, doc, &lines)?;
    }
    adjustments(f, doc, false)?;
    totals(f, doc)?;
    notes(f, doc)
}

fn trial(f: &mut Flow<'_>, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    if let Some(cap) = doc.customer.spend_cap {
        f.heading("Spend cap", 10.0, false)?;
        let charges = doc.charges();
        let used = if cap.is_zero() { None } else { charges.checked_div(cap) };
        f.para(
            &format!(
                "Spend cap {}; charges this period {}{}.",
                loc.money_code(cap, &doc.currency),
                loc.money_code(charges, &doc.currency),
                used.map(|u| format!(", {} of the cap", loc.percent(u))).unwrap_or_default()
            ),
            9.0,
            true,
        )?;
        let rest = if charges > cap {
            format!("Charges above the cap ({}) are credited on the spend-cap line: you pay at most the cap.", loc.money_code(charges - cap, &doc.currency))
        } else {
            format!("{} of the cap remain{} for this period.", loc.money_code(cap - charges, &doc.currency), "")
        };
        f.para(&rest, 8.0, false)?;
    }
    f.heading("Lines", 10.0, false)?;
    let lines: Vec<&RawLine> = doc.lines.iter().collect();
    lines_table(f, doc, &lines)?;
    totals(f, doc)?;
    notes(f, doc)
}

/// The table of contents of an enterprise invoice: titles, in the order the sections come.
fn toc_entries(doc: &Doc<'_>, detail: &BTreeMap<String, u64>, lines: &HashMap<&str, &RawLine>) -> Vec<String> {
    let mut out = vec!["Invoice lines".to_string()];
    if doc.lines.iter().any(|l| l.line_type == "adjustment") {
        out.push("Adjustments (late Microsoft data)".into());
    }
    for id in detail.keys() {
        out.push(section_title(id, lines));
    }
    out.push("Tag allocation notes".into());
    out
}

fn section_title(id: &str, lines: &HashMap<&str, &RawLine>) -> String {
    match lines.get(id) {
        Some(l) => format!("Line {}: {}", l.line_no, l.description),
        None => format!("Line {id}"),
    }
}

fn detail_cols() -> Vec<Col> {
    vec![
        col("Date", 0.0, 44.0, Align::L),
        col("Resource group", 46.0, 92.0, Align::L),
        col("Resource", 140.0, 116.0, Align::L),
        col("Meter or product", 258.0, 150.0, Align::L),
        col("Quantity", 408.0, 50.0, Align::R),
        col("Price", 458.0, MR - ML - 458.0, Align::R),
    ]
}

fn enterprise(f: &mut Flow<'_>, doc: &Doc<'_>, detail: &SortedDetail, toc: &[usize]) -> Result<()> {
    let loc = doc.locale();
    let by_id: HashMap<&str, &RawLine> = doc.lines.iter().map(|l| (l.invoice_line_id.as_str(), l)).collect();
    // Summary by line type.
    f.heading("Summary", 10.0, false)?;
    let mut types: BTreeMap<(usize, String), (u64, Decimal)> = BTreeMap::new();
    for l in &doc.lines {
        let e = types.entry((super::present_rank(&l.line_type), l.line_type.clone())).or_default();
        e.0 += 1;
        e.1 += l.amount;
    }
    f.table(vec![col("Line type", 0.0, 200.0, Align::L), col("Lines", 200.0, 60.0, Align::R), col("Amount", 260.0, MR - ML - 260.0, Align::R)], 8.5)?;
    for ((_, t), (n, a)) in &types {
        f.row(&[vec![super::type_label(t).to_string()], vec![n.to_string()], vec![loc.money(*a, &doc.currency)]], 8.5, false)?;
    }
    f.end_table();
    totals(f, doc)?;
    notes(f, doc)?;

    // Contents.
    let entries = toc_entries(doc, &detail.rows_per_line, &by_id);
    f.new_page()?;
    f.heading("Contents", 12.0, false)?;
    f.table(vec![col("Section", 0.0, 460.0, Align::L), col("Page", 460.0, MR - ML - 460.0, Align::R)], 8.0)?;
    for (k, title) in entries.iter().enumerate() {
        let page = toc.get(k).copied().unwrap_or(0);
        let t = f.m().fit(title, 450.0, 8.0, false);
        let y = f.y;
        f.row(&[vec![t], vec![(page + 1).to_string()]], 8.0, false)?;
        // A row may have moved to a new page: link the box where it was drawn.
        let top = if f.y < y { TOP } else { y };
        if let Some(p) = &mut f.pdf {
            p.link(ML, top, MR - ML, f.y - top, page);
        }
    }
    f.end_table();

    // All lines.
    f.new_page()?;
    f.heading("Invoice lines", 12.0, true)?;
    let charges: Vec<&RawLine> = doc.lines.iter().filter(|l| l.line_type != "adjustment").collect();
    lines_table(f, doc, &charges)?;
    totals(f, doc)?;
    adjustments(f, doc, true)?;

    // One section per line with resources.
    let mut current: Option<String> = None;
    let section = |f: &mut Flow<'_>, id: &str, rows: u64| -> Result<()> {
        f.new_page()?;
        let title = section_title(id, &by_id);
        f.heading(&title, 10.0, true)?;
        if let Some(l) = by_id.get(id) {
            let facts = [
                tagged("Subscription", &l.subscription_id),
                tagged("Org unit", &l.unit_path),
                format!("{rows} resource rows"),
                format!("line amount {}", loc.money_code(l.amount, &doc.currency)),
            ];
            let text = facts.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" · ");
            f.para(&text, 8.0, false)?;
        }
        f.gap(4.0);
        f.table(detail_cols(), 7.0)
    };
    let price_places = present::unit_price_places(&doc.currency);
    let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
    if f.pdf.is_some() {
        let mut on_row = |r: &Row| -> Result<()> {
            if current.as_deref() != Some(r.invoice_line_id.as_str()) {
                if let Some(prev) = current.take() {
                    section_end(f, doc, &prev, sums.get(&prev).copied().unwrap_or_default(), &by_id)?;
                }
                let n = detail.rows_per_line.get(&r.invoice_line_id).copied().unwrap_or(0);
                section(f, &r.invoice_line_id, n)?;
                current = Some(r.invoice_line_id.clone());
            }
            *sums.entry(r.invoice_line_id.clone()).or_default() += r.price;
            let cells = [
                vec![r.date.clone()],
                vec![f.m().fit(&r.resource_group, 90.0, 7.0, false)],
                vec![f.m().fit(&r.resource, 114.0, 7.0, false)],
                vec![f.m().fit(if r.meter.is_empty() { &r.product } else { &r.meter }, 146.0, 7.0, false)],
                vec![loc.number(r.quantity, present::QUANTITY_MAX_PLACES)],
                vec![loc.number(r.price, price_places)],
            ];
            f.row(&cells, 7.0, false)
        };
        detail.for_each(&mut on_row)?;
        if let Some(prev) = current.take() {
            section_end(f, doc, &prev, sums.get(&prev).copied().unwrap_or_default(), &by_id)?;
        }
    } else {
        let empty: [Vec<String>; 6] = Default::default();
        for (id, n) in &detail.rows_per_line {
            section(f, id, *n)?;
            for _ in 0..*n {
                f.row(&empty, 7.0, false)?;
            }
            section_end(f, doc, id, Decimal::ZERO, &by_id)?;
        }
    }

    // Tag allocation notes.
    f.new_page()?;
    f.heading("Tag allocation notes", 12.0, true)?;
    f.para(
        "Charges are assigned to your org units by tag rules: a rule matches a resource by its tags, resource group or subscription and routes its cost to an org unit, splitting it by share where it names several. Charges no rule matches are listed under Unassigned.",
        8.0,
        false,
    )?;
    f.gap(4.0);
    f.table(
        vec![
            col("Rule", 0.0, 60.0, Align::L),
            col("Matches", 62.0, 190.0, Align::L),
            col("Org unit", 254.0, 140.0, Align::L),
            col("Rows", 394.0, 40.0, Align::R),
            col("Amount", 434.0, MR - ML - 434.0, Align::R),
        ],
        7.5,
    )?;
    let tag_rules = doc.tag_rules;
    for ((rule, unit), (n, amount)) in &detail.tag_notes {
        let what = tag_rules.get(rule).cloned().unwrap_or_default();
        let cells = [
            vec![f.m().fit(rule, 58.0, 7.5, false)],
            f.m().wrap(&what, 188.0, 7.5, false),
            vec![f.m().fit(if unit.is_empty() { "Unassigned" } else { unit }, 138.0, 7.5, false)],
            vec![n.to_string()],
            vec![loc.number(*amount, price_places)],
        ];
        f.row(&cells, 7.5, false)?;
    }
    if detail.tag_notes.is_empty() {
        f.row(&[vec![], vec!["No charge of this invoice was allocated by a tag rule.".into()]], 7.5, false)?;
    }
    f.end_table();
    Ok(())
}

fn section_end(f: &mut Flow<'_>, doc: &Doc<'_>, id: &str, sum: Decimal, lines: &HashMap<&str, &RawLine>) -> Result<()> {
    f.end_table();
    let loc = doc.locale();
    if let Some(l) = lines.get(id) {
        f.para(
            &format!(
                "Σ resource prices {} {}, rounded once to the line amount {}.",
                doc.currency,
                loc.number(sum, present::unit_price_places(&doc.currency)),
                loc.money_code(l.amount, &doc.currency)
            ),
            7.5,
            false,
        )?;
    }
    Ok(())
}

fn body(f: &mut Flow<'_>, doc: &Doc<'_>, detail: Option<&SortedDetail>, toc: &[usize]) -> Result<()> {
    f.start_page()?;
    title_block(f, doc)?;
    match (doc.template.as_str(), detail) {
        ("enterprise", Some(d)) => enterprise(f, doc, d, toc),
        ("trial", _) => trial(f, doc),
        _ => smb(f, doc),
    }
}

/// Lays the document out twice (count, then draw) and writes the PDF.
pub fn write_pdf(path: &Path, doc: &Doc<'_>, detail: Option<&SortedDetail>) -> Result<usize> {
    let footer = format!("{} · Invoice {} · {}", doc.issuer.name, doc.number, doc.customer_name);
    let head = format!("Invoice {} · {} · {}", doc.number, doc.customer_name, doc.period);
    let mut dry = Flow { pdf: None, dry: Metrics::new()?, pages: 0, total: 0, y: 0.0, footer: footer.clone(), head: head.clone(), table: None, marks: Vec::new() };
    body(&mut dry, doc, detail, &[])?;
    let (total, marks) = (dry.pages, dry.marks);
    // The templates' page budgets (smb two pages, trial one) hold for invoices grouped by family and SKU; an
    // invoice with unusually many lines still gets every line, and the run says so.
    let budget = match doc.template.as_str() {
        "trial" => Some(1),
        "smb" => Some(2),
        _ => None,
    };
    if let Some(b) = budget.filter(|b| total > *b) {
        tracing::warn!(invoice = %doc.number, pages = total, budget = b, "the {} invoice `{}` needs {total} pages, more than its template's {b}", doc.template, doc.number);
    }
    let mut pdf = PdfWriter::create(path, total)?;
    let mut real = Flow { pdf: Some(&mut pdf), dry: Metrics::new()?, pages: 0, total, y: 0.0, footer, head, table: None, marks: Vec::new() };
    body(&mut real, doc, detail, &marks)?;
    if real.pages != total || real.marks != marks {
        bail!("internal: the invoice layout differs between its counting and drawing runs");
    }
    drop(real);
    pdf.finish(&doc.title(), &doc.issuer.name)?;
    Ok(total)
}
