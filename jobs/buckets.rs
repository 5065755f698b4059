//! The per-invoice tail of a period in buckets of paying customers (issue 20): with `[run] buckets = B` above 1,
//! `fct_invoice_detail`, `focus_cost_and_usage` and every per-invoice file (CSV, XLSX, PDF, HTML, FOCUS) are built
//! bucket by bucket, so that a sharded run can hand each bucket to a worker (`cspbill shard reduce`).
//!
//! A customer's bucket is FNV-1a of its id modulo `B` ([`bucket_of`]): the same on every machine. A bucket's
//! work ([`run_bucket`]) reads only its customers' rated parts (an elementwise filter, so their order is the
//! month's), invoices and lines; the invoices themselves, with their numbers, are computed once for the period
//! before. [`merge`] concatenates the buckets' detail and FOCUS rows in bucket order, which is the one difference
//! `B` makes to what is published: the row order of those two tables. A per-invoice file holds one customer's
//! rows in the month's order whatever `B` is, so its bytes do not depend on `B`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pipeline::RunContext;
use pipeline::invoice::cells;
use polars::prelude::*;
use schemas::{fct_invoice_detail as det, fct_invoice_lines as fl, fct_invoices as fi, focus_cost_and_usage as fc};

use crate::documents::DocInputs;
use crate::exports::{DetailByInvoice, Issuer};
use crate::spool::SpoolTable;

/// The bucket of a paying customer: 64-bit FNV-1a of its id, modulo `buckets` (stable across machines, runs and
/// versions, unlike std's hasher).
pub fn bucket_of(customer: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in customer.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(buckets.max(1))) as u32
}

/// The invoiced customers of each bucket (sorted), from `fct_invoices`; a bucket may have none.
pub fn customers_by_bucket(invoices: &DataFrame, buckets: u32) -> Result<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); buckets.max(1) as usize];
    let ids: BTreeSet<String> = cells::strs(invoices, fi::customer_id)?.into_iter().flatten().collect();
    for id in ids {
        out[bucket_of(&id, buckets) as usize].push(id);
    }
    Ok(out)
}

fn of_customers(column: &str, customers: &[String]) -> Expr {
    col(column).is_in(lit(Series::new("customers".into(), customers.to_vec())).implode(false), false)
}

/// The rows of a small frame whose `column` is one of `customers`, in their order.
pub fn frame_of(df: &DataFrame, column: &str, customers: &[String]) -> Result<DataFrame> {
    Ok(df.clone().lazy().filter(of_customers(column, customers)).collect()?)
}

/// The rated parts of `customers` (paying customers), lazily and in the month's order.
pub fn parts_of(rated: LazyFrame, customers: &[String]) -> LazyFrame {
    rated.filter(of_customers(schemas::int_charges_rated::customer_id, customers))
}

/// What one bucket's work reads: the bucket's rated parts, invoices and lines, and what every bucket shares.
pub struct BucketInput<'a> {
    pub ctx: &'a RunContext,
    pub rated: LazyFrame,
    pub invoices: &'a DataFrame,
    pub lines: &'a DataFrame,
    /// FOCUS's subscription names (`crate::focus::subscription_names`), small.
    pub subs: &'a DataFrame,
    pub issuer: &'a Issuer,
    pub docs: &'a DocInputs,
}

/// What one bucket's work wrote in its folder: `detail.parquet`, `focus.parquet` (as they are published, without
/// the `period` column), and the per-invoice files under `files/`, each with its path below `marts/exports/`.
pub struct BucketOutput {
    pub detail: SpoolTable,
    pub focus: SpoolTable,
    pub files: Vec<(String, PathBuf)>,
}

/// A bucket's detail and FOCUS rows and its per-invoice files, written under `dir`.
pub fn run_bucket(inp: BucketInput, dir: &Path) -> Result<BucketOutput> {
    let period = inp.ctx.period;
    let files_dir = dir.join("files");
    let work = dir.join("work");
    for d in [&files_dir, &work] {
        fs::create_dir_all(d).with_context(|| format!("creating `{}`", d.display()))?;
    }
    let detail = crate::spool::sink_table(
        pipeline::invoice::fct_invoice_detail(inp.rated.clone(), inp.lines, period),
        &dir.join("detail.parquet"),
        det::TABLE,
        period,
    )?;
    let focus = crate::focus::sink_focus(inp.ctx, inp.rated, inp.invoices, inp.lines, inp.subs, &dir.join("focus.parquet"))?;
    let details = DetailByInvoice::split(&detail, inp.invoices, &work)?;
    let written = crate::exports::write_exports_with(
        &files_dir,
        inp.invoices,
        inp.lines,
        &|n: &str, f: &mut dyn FnMut(&DataFrame) -> Result<()>| details.chunks(n, f),
        inp.issuer,
        inp.docs,
    )?;
    let mut files = Vec::with_capacity(written.len() * 2);
    for path in written {
        files.push((relative(&files_dir, &path)?, path));
    }
    files.extend(crate::focus::customer_files(&focus, inp.invoices, &files_dir)?);
    drop(details);
    let _ = fs::remove_dir_all(&work);
    files.sort();
    Ok(BucketOutput { detail, focus, files })
}

fn relative(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).with_context(|| format!("`{}` is not inside `{}`", path.display(), root.display()))?;
    Ok(rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/"))
}

/// The buckets merged: `fct_invoice_detail` and `focus_cost_and_usage` as one spool file each (the buckets' rows in
/// bucket order, through the one writer of every published table), and every per-invoice file, sorted by path.
pub struct Merged {
    pub detail: SpoolTable,
    pub focus: SpoolTable,
    pub files: Vec<(String, PathBuf)>,
}

/// Merges the buckets' outputs (in bucket order) into `spool`.
pub fn merge(outs: &[BucketOutput], spool: &crate::spool::Spool) -> Result<Merged> {
    let cat = |tables: Vec<&SpoolTable>, name: &str| -> Result<SpoolTable> {
        let first = tables.first().with_context(|| format!("no bucket to merge `{name}` from"))?;
        let scans = tables.iter().map(|t| crate::spool::scan(&t.path)).collect::<Result<Vec<_>>>()?;
        let path = spool.path(&format!("tables/{name}.parquet"))?;
        crate::spool::sink_parquet(concat(scans, UnionArgs { parallel: false, rechunk: false, ..Default::default() })?, &path, name)?;
        Ok(SpoolTable { path, period_column: first.period_column, period: first.period })
    };
    let detail = cat(outs.iter().map(|o| &o.detail).collect(), det::TABLE)?;
    let focus = cat(outs.iter().map(|o| &o.focus).collect(), fc::TABLE)?;
    let mut files: Vec<(String, PathBuf)> = outs.iter().flat_map(|o| o.files.iter().cloned()).collect();
    files.sort();
    Ok(Merged { detail, focus, files })
}

/// The lines of `invoices`' customers (for a bucket's work).
pub fn lines_of(lines: &DataFrame, customers: &[String]) -> Result<DataFrame> {
    frame_of(lines, fl::customer_id, customers)
}

/// The invoices of `customers` (for a bucket's work).
pub fn invoices_of(invoices: &DataFrame, customers: &[String]) -> Result<DataFrame> {
    frame_of(invoices, fi::customer_id, customers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fnv1a_of_the_customer_id() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the reference test vector); of "" the offset basis.
        assert_eq!(bucket_of("a", u32::MAX), (0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)) as u32);
        assert_eq!(bucket_of("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as u32);
        assert_eq!(bucket_of("anything", 1), 0);
        assert_eq!(bucket_of("anything", 0), 0, "0 buckets is read as 1");
        // Spread: 1,000 ids over 8 buckets, every bucket used.
        let used: BTreeSet<u32> = (0..1000).map(|i| bucket_of(&format!("customer-{i}"), 8)).collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn customers_are_grouped_by_bucket_sorted_and_once() {
        let invoices = df!(fi::customer_id => ["c2", "c1", "c2", "c3"]).unwrap();
        let groups = customers_by_bucket(&invoices, 3).unwrap();
        assert_eq!(groups.len(), 3);
        let mut all: Vec<String> = groups.iter().flatten().cloned().collect();
        all.sort();
        assert_eq!(all, ["c1", "c2", "c3"]);
        for (k, g) in groups.iter().enumerate() {
            assert!(g.windows(2).all(|w| w[0] < w[1]));
            assert!(g.iter().all(|c| bucket_of(c, 3) as usize == k));
        }
    }
}
