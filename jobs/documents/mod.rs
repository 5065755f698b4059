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
