//! Invoice documents a customer reads (issue #14): a PDF and an HTML file per invoice, beside its CSV and XLSX
//! under `period=P/customer=ID/`, laid out by the customer's template.
//!
//! - `enterprise`: a detailed report: summary page (issuer, customer, dates, totals by line type), table of
//!   contents, all invoice lines, late-data adjustments, one section per invoice line (subscription × meter
//!   category or SKU × org unit) with its resources, tag-allocation notes; page numbers, bookmarks.
//! - `smb`: at most two pages: charges by product family and licence SKU, services, other lines, credits.
//! - `trial`: one page with the spend cap and how much of it is used.
//!
//! `present.rs` holds the presentation rules shared with the CSV and XLSX; `detail.rs` groups an invoice's
//! resource rows per line in bounded memory; `layout.rs` lays the PDF out (twice: once to count pages, once to
//! draw); `pdf.rs` writes it page by page; `html.rs` writes the same content as one HTML page. Both files
//! depend only on the tables, the issuer and the customer's reference row: re-runs give identical bytes.

pub mod detail;
pub mod html;
pub mod layout;
pub mod pdf;
pub mod present;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::DataFrame;
use rust_decimal::Decimal;

use crate::exports::{DetailOf, Issuer};
use pipeline::invoice::cells;
use present::{Locale, RawLine};

/// A customer's fields printed on its documents (`customers.csv`, optional columns of issue #14).
#[derive(Clone, Debug, Default)]
pub struct CustomerInfo {
    pub billing_address: String,
    pub tax_id: String,
    pub po_number: String,
    pub contact_email: String,
    pub locale: Locale,
    pub spend_cap: Option<Decimal>,
    pub payment_terms_days: Option<i64>,
}

/// What the documents need besides the invoice tables: customers' fields and tag rules' descriptions.
#[derive(Clone, Debug, Default)]
pub struct DocInputs {
    pub customers: HashMap<String, CustomerInfo>,
    /// `rule_id` → what the rule matches, in words.
    pub tag_rules: HashMap<String, String>,
}

impl DocInputs {
    /// From the computed tables of a run (its `stg_customers` and `stg_tag_rules` frames).
    pub fn from_tables(tables: &[(&'static str, schemas::Zone, crate::stages::TableData)]) -> Result<Self> {
        let frame = |name: &str| {
            tables.iter().find(|(t, _, _)| *t == name).and_then(|(_, _, d)| match d {
                crate::stages::TableData::Frame(df) => Some(df),
                _ => None,
            })
        };
        Self::from_frames(frame(schemas::stg_customers::TABLE), frame(schemas::stg_tag_rules::TABLE))
    }

    /// From the staged `stg_customers` and `stg_tag_rules` frames (either may be absent).
    pub fn from_frames(customers: Option<&DataFrame>, tag_rules: Option<&DataFrame>) -> Result<Self> {
        use schemas::{stg_customers as c, stg_tag_rules as t};
        let mut out = DocInputs::default();
        if let Some(df) = customers {
            let s = |n: &str| cells::strs(df, n).with_context(|| format!("reading `{}`.`{n}`", c::TABLE));
            let (ids, addr, tax, po, mail, loc) = (s(c::customer_id)?, s(c::billing_address)?, s(c::tax_id)?, s(c::po_number)?, s(c::contact_email)?, s(c::locale)?);
            let cap = cells::decs(df, c::spend_cap)?;
            let terms = cells::ints(df, c::payment_terms_days)?;
            for i in 0..df.height() {
                let Some(id) = ids[i].clone() else { continue };
                let o = |v: &Option<String>| v.clone().unwrap_or_default();
                out.customers.insert(
                    id,
                    CustomerInfo {
                        billing_address: o(&addr[i]),
                        tax_id: o(&tax[i]),
                        po_number: o(&po[i]),
                        contact_email: o(&mail[i]),
                        locale: loc[i].as_deref().and_then(Locale::parse).unwrap_or_default(),
                        spend_cap: cap[i],
                        payment_terms_days: terms[i],
                    },
                );
            }
        }
        if let Some(df) = tag_rules {
            let s = |n: &str| cells::strs(df, n).with_context(|| format!("reading `{}`.`{n}`", t::TABLE));
            let (ids, sub, rg, key, val) = (s(t::rule_id)?, s(t::subscription_id)?, s(t::resource_group)?, s(t::tag_key)?, s(t::tag_value)?);
            let share = cells::decs(df, t::share)?;
            let mut parts: HashMap<String, usize> = HashMap::new();
            for i in 0..df.height() {
                let Some(id) = ids[i].clone() else { continue };
                *parts.entry(id.clone()).or_default() += 1;
                if out.tag_rules.contains_key(&id) {
                    continue;
                }
                let mut conds = Vec::new();
                if let Some(k) = key[i].as_deref().filter(|k| !k.is_empty()) {
                    conds.push(format!("tag {k} = {}", val[i].as_deref().unwrap_or("*")));
                }
                if let Some(r) = rg[i].as_deref().filter(|r| !r.is_empty() && *r != "*") {
                    conds.push(format!("resource group {r}"));
                }
                if let Some(s) = sub[i].as_deref().filter(|s| !s.is_empty() && *s != "*") {
                    conds.push(format!("subscription {s}"));
                }
                let _ = share[i];
                out.tag_rules.insert(id, if conds.is_empty() { "every charge of the customer".into() } else { conds.join(", ") });
            }
            for (id, n) in parts {
                if n > 1 {
                    if let Some(d) = out.tag_rules.get_mut(&id) {
                        d.push_str(&format!(" (split {n} ways)"));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One invoice as its documents print it.
pub struct Doc<'a> {
    pub number: String,
    pub period: String,
    pub customer_id: String,
    pub customer_name: String,
    pub currency: String,
    pub template: String,
    pub status: String,
    pub invoice_date: NaiveDate,
    pub due_date: Option<NaiveDate>,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub unpriced: i64,
    pub lines: Vec<RawLine>,
    pub issuer: &'a Issuer,
    pub customer: CustomerInfo,
    pub tag_rules: &'a HashMap<String, String>,
}

impl Doc<'_> {
    pub fn locale(&self) -> Locale {
        self.customer.locale
    }
    /// Places of the quantity column (see `present.rs`).
    pub fn quantity_places(&self) -> u32 {
        let shown: Vec<Decimal> = self.lines.iter().filter_map(|l| present::shown(l, &self.currency).quantity).collect();
        present::quantity_places(shown.iter(), present::QUANTITY_MAX_PLACES)
    }
    /// Σ of the rated Microsoft charge lines (what the trial spend cap is compared with, as the invoice stage does).
    pub fn charges(&self) -> Decimal {
        self.lines.iter().filter(|l| pipeline::invoice::CHARGE_TYPES.contains(&l.line_type.as_str())).map(|l| l.amount).sum()
    }
    pub fn title(&self) -> String {
        format!("Invoice {} – {}", self.number, self.customer_name)
    }
}

/// The section an invoice line belongs to on smb and trial documents, and its heading.
pub fn group_of(line_type: &str) -> (usize, &'static str) {
    match line_type {
        "usage" | "license" | "one_time" => (0, "Charges"),
        "service" => (1, "Services"),
        "manual" => (2, "Other lines"),
        "credit" | "refund" | "spend_cap_credit" => (3, "Credits and refunds"),
        _ => (4, "Adjustments"),
    }
}

/// The order of line types on documents (the invoice stage's order).
pub fn present_rank(line_type: &str) -> usize {
    ["usage", "license", "one_time", "service", "manual", "refund", "credit", "adjustment", "spend_cap_credit"]
        .iter()
        .position(|t| *t == line_type)
        .unwrap_or(99)
}

/// A line type in words.
pub fn type_label(line_type: &str) -> &str {
    match line_type {
        "usage" => "Azure consumption",
        "license" => "Licences",
        "one_time" => "One-time purchases",
        "service" => "Services",
        "manual" => "Other lines",
        "refund" => "Refunds",
        "credit" => "Credits",
        "adjustment" => "Adjustments for earlier periods",
        "spend_cap_credit" => "Spend-cap credit",
        other => other,
    }
}

/// Writes `STEM.pdf` and `STEM.html` into `folder` and returns their paths.
pub fn write_documents(folder: &Path, stem: &str, doc: &Doc<'_>, detail_of: &DetailOf<'_>) -> Result<[PathBuf; 2]> {
    let scratch = tempfile::Builder::new().prefix(".doc-").tempdir_in(folder).with_context(|| format!("creating a scratch folder in `{}`", folder.display()))?;
    let detail = if doc.template == "enterprise" {
        Some(detail::SortedDetail::build(&doc.number, detail_of, scratch.path())?)
    } else {
        None
    };
    let pdf = folder.join(format!("{stem}.pdf"));
    layout::write_pdf(&pdf, doc, detail.as_ref()).with_context(|| format!("rendering the PDF of invoice `{}`", doc.number))?;
    let html = folder.join(format!("{stem}.html"));
    html::write_html(&html, doc, detail.as_ref()).with_context(|| format!("writing the HTML of invoice `{}`", doc.number))?;
    drop(detail);
    scratch.close().ok();
    Ok([pdf, html])
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{Column, DataFrame};
    use schemas::{Ty, fct_invoice_detail as det};

    /// `n` resource rows over two invoice lines, in a deliberately unsorted order.
    fn detail(n: usize) -> DataFrame {
        let mut cols = Vec::new();
        for (name, ty) in det::COLUMNS {
            let c = match *ty {
                Ty::Str => cells::str_column(
                    name,
                    &(0..n)
                        .map(|i| match *name {
                            det::invoice_number => Some("INV-1".to_string()),
                            det::invoice_line_id => Some(format!("INV-1-{:04}", 1 + (i * 7) % 2)),
                            det::part_id => Some(format!("p{:06}", (i * 7919) % n)),
                            det::resource_uri => Some(format!("/subscriptions/s/resourceGroups/rg/providers/x/vm-{}", i % 13)),
                            det::meter_category => Some("Virtual Machines".into()),
                            det::tag_rule_id => Some(if i % 3 == 0 { "T1".into() } else { String::new() }),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                Ty::Dec => cells::dec_column(name, &(0..n).map(|i| Some(Decimal::new(1000 + i as i64, 3))).collect::<Vec<_>>()),
                Ty::Date => cells::date_column(name, &(0..n).map(|i| NaiveDate::from_ymd_opt(2025, 6, 1 + (i % 30) as u32)).collect::<Vec<_>>()),
                Ty::Int => Column::new((*name).into(), (0..n).map(|i| i as i64).collect::<Vec<_>>()),
                _ => unreachable!("no such column in fct_invoice_detail"),
            };
            cols.push(c);
        }
        DataFrame::new_infer_height(cols).unwrap()
    }

    fn doc<'a>(issuer: &'a Issuer, rules: &'a HashMap<String, String>) -> Doc<'a> {
        let line = |no: i64, amount: &str| RawLine {
            line_no: no,
            line_type: "usage".into(),
            description: format!("Virtual Machines, subscription s, unit {no}"),
            quantity: Some(Decimal::new(5, 0)),
            unit: "1 Hour".into(),
            amount: amount.parse().unwrap(),
            amount_unrounded: Some(amount.parse().unwrap()),
            part_count: 1,
            invoice_line_id: format!("INV-1-{no:04}"),
            ..RawLine::default()
        };
        Doc {
            number: "INV-1".into(),
            period: "2025-06".into(),
            customer_id: "c1".into(),
            customer_name: "Contoso".into(),
            currency: "EUR".into(),
            template: "enterprise".into(),
            status: "provisional".into(),
            invoice_date: NaiveDate::from_ymd_opt(2025, 7, 1).unwrap(),
            due_date: NaiveDate::from_ymd_opt(2025, 7, 31),
            subtotal: "30.00".parse().unwrap(),
            tax: Decimal::ZERO,
            total: "30.00".parse().unwrap(),
            unpriced: 0,
            lines: vec![line(1, "10.00"), line(2, "20.00")],
            issuer,
            customer: CustomerInfo { locale: Locale::DeDe, ..CustomerInfo::default() },
            tag_rules: rules,
        }
    }

    fn render(dir: &Path, df: &DataFrame, chunk: usize) -> (Vec<u8>, Vec<u8>) {
        let issuer = Issuer { name: "Northwind MSP".into(), ..Issuer::default() };
        let rules = HashMap::from([("T1".to_string(), "tag cost-center = CC-100".to_string())]);
        let d = doc(&issuer, &rules);
        let of = |_: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>| -> Result<()> {
            let mut off = 0;
            while off < df.height() {
                f(&df.slice(off as i64, chunk))?;
                off += chunk;
            }
            Ok(())
        };
        std::fs::create_dir_all(dir).unwrap();
        let [pdf, html] = write_documents(dir, "INV-1", &d, &of).unwrap();
        // The scratch folder of the sorted runs is gone.
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 2);
        (std::fs::read(pdf).unwrap(), std::fs::read(html).unwrap())
    }

    #[test]
    fn enterprise_documents_do_not_depend_on_chunking_and_count_their_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let df = detail(2_000);
        let (pdf_a, html_a) = render(&tmp.path().join("a"), &df, 7);
        let (pdf_b, html_b) = render(&tmp.path().join("b"), &df, 5_000);
        assert!(pdf_a == pdf_b, "the PDF depends on how the detail was chunked");
        assert!(html_a == html_b, "the HTML depends on how the detail was chunked");
        assert!(pdf_a.starts_with(b"%PDF-1.7") && pdf_a.ends_with(b"%%EOF\n"));
        let text = String::from_utf8_lossy(&pdf_a);
        // 2,000 rows at 60 a page over two sections, plus summary, contents, lines and tag notes: the page
        // tree counts what the footers say.
        let tree = text.find("/Type /Pages").expect("a page tree");
        let count: usize = text[tree..].split("/Count ").nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()).unwrap().parse().unwrap();
        assert!(count > 2_000 / 70 + 4, "{count} pages for 2,000 rows");
        assert_eq!(text.matches("/Type /Page\n").count() + text.matches("/Type /Page ").count() + text.matches("/Type /Page/").count(), count, "one page object per counted page");
        // The HTML streams every row, sorted by line then date: line 1's 1,000 rows come first.
        let html = String::from_utf8(html_a).unwrap();
        assert_eq!(html.matches("<tr><td>2025-06-").count(), 2_000);
        let first = html.find("id=\"INV-1-0001\"").unwrap();
        let second = html.find("id=\"INV-1-0002\"").unwrap();
        assert!(first < second);
        assert!(html.contains("· 1000 resource rows ·"), "sections count their rows");
        // de-DE: 30,00 EUR.
        assert!(html.contains("30,00 EUR"), "locale formatting");
    }
}
