//! The resource rows of an enterprise invoice, grouped by invoice line in bounded memory.
//!
//! `fct_invoice_detail` arrives in table order (the rated parts' order), in chunks of at most
//! `exports::DETAIL_CHUNK` rows. The document wants them per invoice line (its sections), so each chunk is sorted
//! by (invoice line, date, resource, meter, part) and written to a run file; reading merges the runs (an external
//! merge sort). Memory: one chunk, plus one row per run while merging. The order is total (it ends with the
//! unique `part_id`), so the document does not depend on how the rows were chunked.

use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::DataFrame;
use rust_decimal::Decimal;
use schemas::fct_invoice_detail as det;

use crate::exports::DetailOf;
use pipeline::invoice::cells;

/// One resource row as the documents print it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    // The sort key first.
    pub invoice_line_id: String,
    pub date: String,
    pub resource: String,
    pub meter: String,
    pub part_id: String,
    pub resource_group: String,
    pub product: String,
    pub quantity: Decimal,
    pub price: Decimal,
    pub tag_rule_id: String,
    pub unit_path: String,
}

const FIELDS: usize = 11;

fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

impl Row {
    fn encode(&self) -> String {
        [
            clean(&self.invoice_line_id),
            clean(&self.date),
            clean(&self.resource),
            clean(&self.meter),
            clean(&self.part_id),
            clean(&self.resource_group),
            clean(&self.product),
            self.quantity.to_string(),
            self.price.to_string(),
            clean(&self.tag_rule_id),
            clean(&self.unit_path),
        ]
        .join("\t")
    }
    fn decode(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != FIELDS {
            anyhow::bail!("internal: a detail run row has {} fields, not {FIELDS}", f.len());
        }
        Ok(Row {
            invoice_line_id: f[0].into(),
            date: f[1].into(),
            resource: f[2].into(),
            meter: f[3].into(),
            part_id: f[4].into(),
            resource_group: f[5].into(),
            product: f[6].into(),
            quantity: f[7].parse().context("internal: a detail run quantity")?,
            price: f[8].parse().context("internal: a detail run price")?,
            tag_rule_id: f[9].into(),
            unit_path: f[10].into(),
        })
    }
}

/// Per tag rule and org unit: resource rows and Σ price (the tag-allocation notes).
pub type TagNotes = BTreeMap<(String, String), (u64, Decimal)>;

/// The sorted runs of one invoice's detail, and what was counted on the way.
pub struct SortedDetail {
    runs: Vec<PathBuf>,
    /// Resource rows per invoice line.
    pub rows_per_line: BTreeMap<String, u64>,
    pub tag_notes: TagNotes,
    pub rows: u64,
}

/// The last part of a resource URI (`…/virtualMachines/vm-01` → `vm-01`), which is what a person recognises.
pub fn resource_name(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
}

impl SortedDetail {
    /// Reads the invoice's detail through `detail_of` into sorted runs under `dir`.
    pub fn build(invoice: &str, detail_of: &DetailOf<'_>, dir: &Path) -> Result<Self> {
        let mut out = SortedDetail { runs: Vec::new(), rows_per_line: BTreeMap::new(), tag_notes: BTreeMap::new(), rows: 0 };
        let mut chunk_rows = |df: &DataFrame| -> Result<()> {
            if df.height() == 0 {
                return Ok(());
            }
            let s = |c: &str| cells::strs(df, c).with_context(|| format!("reading `{}`.`{c}`", det::TABLE));
            let (inv, line, part, sub_rg, uri, meter, mname, prod, sku, tag, unit) = (
                s(det::invoice_number)?,
                s(det::invoice_line_id)?,
                s(det::part_id)?,
                s(det::resource_group)?,
                s(det::resource_uri)?,
                s(det::meter_category)?,
                s(det::meter_name)?,
                s(det::product_id)?,
                s(det::sku_id)?,
                s(det::tag_rule_id)?,
                s(det::unit_path)?,
            );
            let dates = cells::dates(df, det::charge_date)?;
            let q = cells::decs(df, det::quantity)?;
            let p = cells::decs(df, det::price)?;
            let mut rows: Vec<Row> = Vec::with_capacity(df.height());
            for i in 0..df.height() {
                if inv[i].as_deref() != Some(invoice) {
                    continue;
                }
                let o = |v: &Option<String>| v.clone().unwrap_or_default();
                let product = match (&prod[i], &sku[i]) {
                    (Some(p), Some(k)) if !k.is_empty() => format!("{p}:{k}"),
                    (Some(p), _) => p.clone(),
                    _ => String::new(),
                };
                let meter_text = match (&meter[i], &mname[i]) {
                    (Some(c), Some(n)) => format!("{c} / {n}"),
                    (Some(c), None) => c.clone(),
                    (None, Some(n)) => n.clone(),
                    (None, None) => String::new(),
                };
                rows.push(Row {
                    invoice_line_id: o(&line[i]),
                    date: dates[i].map(|d| d.to_string()).unwrap_or_default(),
                    resource: uri[i].as_deref().map(resource_name).unwrap_or_default().to_string(),
                    meter: meter_text,
                    part_id: o(&part[i]),
                    resource_group: o(&sub_rg[i]),
                    product,
                    quantity: q[i].unwrap_or_default(),
                    price: p[i].unwrap_or_default(),
                    tag_rule_id: o(&tag[i]),
                    unit_path: o(&unit[i]),
                });
            }
            rows.sort();
            let path = dir.join(format!("run-{:05}.tsv", out.runs.len()));
            let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating `{}`", path.display()))?);
            for r in &rows {
                *out.rows_per_line.entry(r.invoice_line_id.clone()).or_default() += 1;
                if !r.tag_rule_id.is_empty() {
                    let e = out.tag_notes.entry((r.tag_rule_id.clone(), r.unit_path.clone())).or_default();
                    e.0 += 1;
                    e.1 += r.price;
                }
                out.rows += 1;
                writeln!(w, "{}", r.encode())?;
            }
            w.flush()?;
            out.runs.push(path);
            Ok(())
        };
        detail_of(invoice, &mut chunk_rows)?;
        Ok(out)
    }

    /// Hands every row to `f`, in (invoice line, date, resource, meter, part) order.
    pub fn for_each(&self, f: &mut dyn FnMut(&Row) -> Result<()>) -> Result<()> {
        let mut readers: Vec<std::io::Lines<BufReader<File>>> = Vec::with_capacity(self.runs.len());
        for p in &self.runs {
            readers.push(BufReader::new(File::open(p).with_context(|| format!("reading `{}`", p.display()))?).lines());
        }
        let mut heap = BinaryHeap::new();
        for (k, r) in readers.iter_mut().enumerate() {
            if let Some(line) = r.next() {
                heap.push(std::cmp::Reverse((Row::decode(&line?)?, k)));
            }
        }
        while let Some(std::cmp::Reverse((row, k))) = heap.pop() {
            f(&row)?;
            if let Some(line) = readers[k].next() {
                heap.push(std::cmp::Reverse((Row::decode(&line?)?, k)));
            }
        }
        Ok(())
    }
}
