//! The HTML invoice: the same content as the PDF on one self-contained page (inline CSS, no script, no external
//! resource, so it opens offline and in mail clients), written as a stream: an enterprise invoice's resource
//! rows go straight from the sorted detail to the file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use rust_decimal::Decimal;

use super::detail::{Row, SortedDetail};
use super::present::{self, RawLine};
use super::{Doc, group_of, present_rank, type_label};

/// HTML text with `&`, `<`, `>` and quotes escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:'DejaVu Sans Condensed','DejaVu Sans',Arial,sans-serif;font-size:13px;color:#111;max-width:60rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.8rem;margin:0}h2{font-size:1.15rem;border-bottom:1px solid #999;margin-top:1.6rem}
.parties{display:flex;gap:2rem;margin:1rem 0}.parties div{flex:1}.label{font-weight:bold}
table{border-collapse:collapse;width:100%;margin:.4rem 0}th{background:#eceef2;text-align:left}
th,td{padding:2px 6px;vertical-align:top}td.n,th.n{text-align:right;white-space:nowrap}
.note{color:#555;font-size:.9em}.totals td{font-weight:bold}.small{font-size:.85em;color:#444}
@media print{body{margin:0;max-width:none}section.detail{break-before:page}}";

struct Out {
    w: BufWriter<File>,
}

impl Out {
    fn put(&mut self, s: &str) -> Result<()> {
        self.w.write_all(s.as_bytes())?;
        Ok(())
    }
}

fn line_row(doc: &Doc<'_>, l: &RawLine, qp: u32) -> String {
    let loc = doc.locale();
    let s = present::shown(l, &doc.currency);
    let note = present::note(&s, &doc.currency, qp, loc);
    let note = if note.is_empty() { String::new() } else { format!("<br><span class=\"note\">{}</span>", esc(&note)) };
    format!(
        "<tr><td class=\"n\">{}</td><td>{}{note}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
        l.line_no,
        esc(&l.description),
        s.quantity.map(|q| loc.number(q, qp)).unwrap_or_default(),
        esc(&s.unit),
        s.unit_price.map(|p| loc.number(p, present::unit_price_places(&doc.currency))).unwrap_or_default(),
        loc.money(l.amount, &doc.currency)
    )
}

fn lines_table(o: &mut Out, doc: &Doc<'_>, lines: &[&RawLine]) -> Result<()> {
    let qp = doc.quantity_places();
    o.put(&format!(
        "<table class=\"lines\"><thead><tr><th class=\"n\">No</th><th>Description</th><th class=\"n\">Quantity</th><th>Unit</th><th class=\"n\">Unit price</th><th class=\"n\">Amount ({})</th></tr></thead><tbody>\n",
        esc(&doc.currency)
    ))?;
    for l in lines {
        o.put(&line_row(doc, l, qp))?;
    }
    o.put("</tbody></table>\n")
}

fn header(o: &mut Out, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    let i = doc.issuer;
    let c = &doc.customer;
    let lines = |items: &[(&str, &str)]| -> String {
        items.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| if k.is_empty() { format!("{}<br>", esc(v)) } else { format!("{}: {}<br>", esc(k), esc(v)) }).collect()
    };
    let status = if doc.status == "final" { "Final" } else { "Provisional (not final)" };
    o.put(&format!("<header><h1>Invoice {}</h1><p>{status}</p>\n", esc(&doc.number)))?;
    o.put("<div class=\"parties\">")?;
    o.put(&format!("<div><span class=\"label\">From</span><br>{}</div>", lines(&[("", &i.name), ("", &i.address), ("Tax id", &i.tax_id), ("", &i.email)])))?;
    o.put(&format!(
        "<div><span class=\"label\">Bill to</span><br>{}</div>",
        lines(&[("", &doc.customer_name), ("", &c.billing_address), ("Tax id", &c.tax_id), ("Contact", &c.contact_email), ("Customer id", &doc.customer_id)])
    ))?;
    let terms = c.payment_terms_days.unwrap_or(30);
    let due = doc.due_date.map(|d| format!("{} ({terms} days)", loc.date(d))).unwrap_or_default();
    o.put(&format!(
        "<div>{}</div>",
        lines(&[("Period", &doc.period), ("Invoice date", &loc.date(doc.invoice_date)), ("Due date", &due), ("Currency", &doc.currency), ("Purchase order", &c.po_number)])
    ))?;
    o.put("</div></header>\n")
}

fn totals(o: &mut Out, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    o.put(&format!(
        "<table class=\"totals\"><tr><td class=\"n\">Subtotal</td><td class=\"n\">{}</td></tr><tr><td class=\"n\">Tax</td><td class=\"n\">{}</td></tr><tr><td class=\"n\">Total</td><td class=\"n\">{}</td></tr></table>\n",
        loc.money(doc.subtotal, &doc.currency),
        loc.money(doc.tax, &doc.currency),
        esc(&loc.money_code(doc.total, &doc.currency))
    ))
}

fn notes(o: &mut Out, doc: &Doc<'_>) -> Result<()> {
    let loc = doc.locale();
    if doc.unpriced > 0 {
        o.put(&format!("<p><b>{} charge(s) are not priced yet and are not on this invoice.</b></p>\n", doc.unpriced))?;
    }
    if let Some(due) = doc.due_date {
        o.put(&format!("<p>Please pay {} by {}, quoting invoice {}.</p>\n", esc(&loc.money_code(doc.total, &doc.currency)), loc.date(due), esc(&doc.number)))?;
    }
    o.put(&format!(
        "<p class=\"small\">Amounts are before tax; tax is added by the invoicing system. Each line is rounded once to the {} minor unit; unit prices are shown to {} decimal places; a line mixing units of measure shows no quantity.</p>\n",
        esc(&doc.currency),
        present::unit_price_places(&doc.currency)
    ))
}

fn adjustments(o: &mut Out, doc: &Doc<'_>) -> Result<()> {
    let mut by_period: BTreeMap<&str, Vec<&RawLine>> = BTreeMap::new();
    for l in doc.lines.iter().filter(|l| l.line_type == "adjustment") {
        by_period.entry(l.corrected_period.as_str()).or_default().push(l);
    }
    for (period, lines) in by_period {
        o.put(&format!("<h2 id=\"adjustments-{0}\">Adjustments for {0} (late Microsoft data)</h2>\n", esc(period)))?;
        o.put(&format!("<p>Microsoft corrected its data for {} after that invoice was issued; these lines bill the difference.</p>\n", esc(period)))?;
        lines_table(o, doc, &lines)?;
    }
    Ok(())
}

fn detail_sections(o: &mut Out, doc: &Doc<'_>, detail: &SortedDetail) -> Result<()> {
    let loc = doc.locale();
    let by_id: HashMap<&str, &RawLine> = doc.lines.iter().map(|l| (l.invoice_line_id.as_str(), l)).collect();
    let places = present::unit_price_places(&doc.currency);
    let mut current: Option<String> = None;
    let mut sum = Decimal::ZERO;
    let close = |o: &mut Out, id: &str, sum: Decimal| -> Result<()> {
        o.put("</tbody></table>\n")?;
        if let Some(l) = by_id.get(id) {
            o.put(&format!(
                "<p class=\"small\">Σ resource prices {} {}, rounded once to the line amount {}.</p></section>\n",
                esc(&doc.currency),
                loc.number(sum, places),
                esc(&loc.money_code(l.amount, &doc.currency))
            ))?;
        } else {
            o.put("</section>\n")?;
        }
        Ok(())
    };
    let mut on_row = |r: &Row| -> Result<()> {
        if current.as_deref() != Some(r.invoice_line_id.as_str()) {
            if let Some(prev) = current.take() {
                close(o, &prev, sum)?;
            }
            sum = Decimal::ZERO;
            let id = &r.invoice_line_id;
            let n = detail.rows_per_line.get(id).copied().unwrap_or(0);
            let (title, facts) = match by_id.get(id.as_str()) {
                Some(l) => (
                    format!("Line {}: {}", l.line_no, l.description),
                    format!("Subscription {} · Org unit {} · {n} resource rows · line amount {}", l.subscription_id, l.unit_path, loc.money_code(l.amount, &doc.currency)),
                ),
                None => (format!("Line {id}"), format!("{n} resource rows")),
            };
            o.put(&format!("<section class=\"detail\"><h2 id=\"{}\">{}</h2><p>{}</p>\n", esc(id), esc(&title), esc(&facts)))?;
            o.put("<table><thead><tr><th>Date</th><th>Resource group</th><th>Resource</th><th>Meter or product</th><th class=\"n\">Quantity</th><th class=\"n\">Price</th></tr></thead><tbody>\n")?;
            current = Some(id.clone());
        }
        sum += r.price;
        o.put(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            esc(&r.date),
            esc(&r.resource_group),
            esc(&r.resource),
            esc(if r.meter.is_empty() { &r.product } else { &r.meter }),
            loc.number(r.quantity, present::QUANTITY_MAX_PLACES),
            loc.number(r.price, places)
        ))
    };
    detail.for_each(&mut on_row)?;
    if let Some(prev) = current.take() {
        close(o, &prev, sum)?;
    }
    Ok(())
}

/// Writes the HTML document of one invoice.
pub fn write_html(path: &Path, doc: &Doc<'_>, detail: Option<&SortedDetail>) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating `{}`", path.display()))?;
    let mut o = Out { w: BufWriter::with_capacity(1 << 16, f) };
    let loc = doc.locale();
    o.put(&format!(
        "<!DOCTYPE html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>\n",
        loc.tag(),
        esc(&doc.title())
    ))?;
    header(&mut o, doc)?;
    match (doc.template.as_str(), detail) {
        ("enterprise", Some(d)) => {
            o.put("<h2>Summary</h2><table><thead><tr><th>Line type</th><th class=\"n\">Lines</th><th class=\"n\">Amount</th></tr></thead><tbody>\n")?;
            let mut types: BTreeMap<(usize, String), (u64, Decimal)> = BTreeMap::new();
            for l in &doc.lines {
                let e = types.entry((present_rank(&l.line_type), l.line_type.clone())).or_default();
                e.0 += 1;
                e.1 += l.amount;
            }
            for ((_, t), (n, a)) in &types {
                o.put(&format!("<tr><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>\n", esc(type_label(t)), loc.money(*a, &doc.currency)))?;
            }
            o.put("</tbody></table>\n")?;
            totals(&mut o, doc)?;
            notes(&mut o, doc)?;
            o.put("<nav><h2>Contents</h2><ul><li><a href=\"#lines\">Invoice lines</a></li>\n")?;
            let by_id: HashMap<&str, &RawLine> = doc.lines.iter().map(|l| (l.invoice_line_id.as_str(), l)).collect();
            for id in d.rows_per_line.keys() {
                let title = by_id.get(id.as_str()).map(|l| format!("Line {}: {}", l.line_no, l.description)).unwrap_or_else(|| format!("Line {id}"));
                o.put(&format!("<li><a href=\"#{}\">{}</a></li>\n", esc(id), esc(&title)))?;
            }
            o.put("<li><a href=\"#tags\">Tag allocation notes</a></li></ul></nav>\n")?;
            o.put("<h2 id=\"lines\">Invoice lines</h2>\n")?;
            let charges: Vec<&RawLine> = doc.lines.iter().filter(|l| l.line_type != "adjustment").collect();
            lines_table(&mut o, doc, &charges)?;
            totals(&mut o, doc)?;
            adjustments(&mut o, doc)?;
            detail_sections(&mut o, doc, d)?;
            o.put("<h2 id=\"tags\">Tag allocation notes</h2><p>Charges are assigned to your org units by tag rules: a rule matches a resource by its tags, resource group or subscription and routes its cost to an org unit, splitting it by share where it names several. Charges no rule matches are listed under Unassigned.</p>\n")?;
            o.put("<table><thead><tr><th>Rule</th><th>Matches</th><th>Org unit</th><th class=\"n\">Rows</th><th class=\"n\">Amount</th></tr></thead><tbody>\n")?;
            for ((rule, unit), (n, amount)) in &d.tag_notes {
                let what = doc.tag_rules.get(rule).cloned().unwrap_or_default();
                o.put(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>\n",
                    esc(rule),
                    esc(&what),
                    esc(if unit.is_empty() { "Unassigned" } else { unit }),
                    loc.number(*amount, present::unit_price_places(&doc.currency))
                ))?;
            }
            o.put("</tbody></table>\n")?;
        }
        ("trial", _) => {
            if let Some(cap) = doc.customer.spend_cap {
                let charges = doc.charges();
                let used = if cap.is_zero() { None } else { charges.checked_div(cap) };
                o.put(&format!(
                    "<h2>Spend cap</h2><p><b>Spend cap {}; charges this period {}{}.</b></p>\n",
                    esc(&loc.money_code(cap, &doc.currency)),
                    esc(&loc.money_code(charges, &doc.currency)),
                    used.map(|u| format!(", {} of the cap", esc(&loc.percent(u)))).unwrap_or_default()
                ))?;
            }
            o.put("<h2>Lines</h2>\n")?;
            let lines: Vec<&RawLine> = doc.lines.iter().collect();
            lines_table(&mut o, doc, &lines)?;
            totals(&mut o, doc)?;
            notes(&mut o, doc)?;
        }
        _ => {
            let mut groups: BTreeMap<usize, (&str, Vec<&RawLine>)> = BTreeMap::new();
            for l in doc.lines.iter().filter(|l| l.line_type != "adjustment") {
                let (k, name) = group_of(&l.line_type);
                groups.entry(k).or_insert((name, Vec::new())).1.push(l);
            }
            for (_, (name, lines)) in groups {
                o.put(&format!("<h2>{}</h2>\n", esc(name)))?;
                lines_table(&mut o, doc, &lines)?;
            }
            adjustments(&mut o, doc)?;
            totals(&mut o, doc)?;
            notes(&mut o, doc)?;
        }
    }
    o.put("</body></html>\n")?;
    o.w.flush()?;
    Ok(())
}
