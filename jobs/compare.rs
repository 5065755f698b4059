//! `cspbill compare` (issue 17): the parallel run against a legacy billing process. Reads the legacy invoice
//! lines (a CSV in the documented minimal layout, or the user's own export mapped by `[compare.columns]`),
//! typed as text and parsed exactly (a bad cell is exit 2 with file, line and column), reads the period's
//! committed `fct_invoice_lines`, `stg_customers`, `stg_rate_cards` and `stg_fx_rates` through one commit
//! pointer (one run), lets `pipeline::compare` match and explain, and publishes `marts/rpt_parallel_run`.
//!
//! Publishing: the report is not part of the period's commit (a parallel run compares a closed period, which is
//! never rewritten, and a commit carrying the run's other files forward would break the two-commit retention of
//! their data). It is its own table: one Parquet file at its Hive path, replaced by one atomic PUT, so a reader
//! sees a whole report of one comparison; each row names the committed run it compared (`compared_run_id`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use pipeline::compare::{LegacyLine, Options, RateValue};
use polars::prelude::*;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::cli::PeriodArgs;
use crate::error::Failure;

/// `[compare]` in cspbill.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A line is within tolerance when |cspbill − legacy| ≤ this (invoice currency units)…
    #[serde(default = "default_abs")]
    pub abs_tolerance: Decimal,
    /// …or ≤ this fraction of |legacy| (0.005 = 0.5 %).
    #[serde(default)]
    pub rel_tolerance: Decimal,
    /// The legacy file's header names of each field (case-insensitive).
    #[serde(default)]
    pub columns: Columns,
    /// Drift: CRM margins more than this many fraction points from the realised margin (0.01 = 1 point).
    #[serde(default = "default_margin")]
    pub margin_tolerance: Decimal,
    /// Header names of the PSA export by field (`customer`, `product`, `quantity`, `unit_price`), when they
    /// differ from the field names.
    #[serde(default)]
    pub psa_columns: BTreeMap<String, String>,
    /// Header names of the CRM export by field (`customer`, `product`, `quoted_quantity`,
    /// `quoted_monthly_amount`, `quoted_margin`), when they differ from the field names.
    #[serde(default)]
    pub crm_columns: BTreeMap<String, String>,
}

fn default_margin() -> Decimal {
    Decimal::new(1, 2)
}

fn default_abs() -> Decimal {
    Decimal::new(1, 2)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            abs_tolerance: default_abs(),
            rel_tolerance: Decimal::ZERO,
            columns: Columns::default(),
            margin_tolerance: default_margin(),
            psa_columns: BTreeMap::new(),
            crm_columns: BTreeMap::new(),
        }
    }
}

/// `[compare.columns]`: which header of the legacy export holds each field. `line_type` is optional: when it
/// is mapped and present, the line type joins the match key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    pub customer: String,
    pub invoice_number: String,
    pub description: String,
    pub product: String,
    pub quantity: String,
    pub amount: String,
    pub currency: String,
    pub line_type: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            customer: "customer".into(),
            invoice_number: "invoice_number".into(),
            description: "description".into(),
            product: "product".into(),
            quantity: "quantity".into(),
            amount: "amount".into(),
            currency: "currency".into(),
            line_type: "line_type".into(),
        }
    }
}

/// What `cspbill compare` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub p: PeriodArgs,
    /// The legacy invoice lines (CSV with a header; layout in README, "Migrating from spreadsheets").
    #[arg(long)]
    pub legacy: PathBuf,
    /// Exit 1 when a line or a customer total is outside tolerance (for a scheduled parallel run).
    #[arg(long)]
    pub fail_outside_tolerance: bool,
}

/// Runs the comparison, publishes the report and prints the per-customer summary.
pub fn command(a: &CompareArgs) -> Result<()> {
    let p = &a.p;
    let cfg = crate::config::load(&p.config)?;
    let settings = &cfg.compare;
    let legacy = read_legacy(&a.legacy, &settings.columns)?;
    let (wh, commit) = open_committed(p, &cfg)?;
    let shown = wh.url().to_string();
    let read = |t: &str, z: schemas::Zone| read_committed(&wh, &commit, p, t, z);
    let lines = read(schemas::fct_invoice_lines::TABLE, schemas::fct_invoice_lines::ZONE)?;
    let customers = read(schemas::stg_customers::TABLE, schemas::stg_customers::ZONE)?;
    let rate_cards = read(schemas::stg_rate_cards::TABLE, schemas::stg_rate_cards::ZONE)?;
    let fx = wh
        .read_commit_table(&commit, schemas::stg_fx_rates::TABLE, schemas::stg_fx_rates::ZONE)?
        .unwrap_or_else(|| DataFrame::empty_with_schema(&schemas::stg_fx_rates::schema()));
    // The period's own rates (its days and the days before its first business day): a rate of another year is
    // not evidence of what the legacy sheet did this month.
    let fx = fx
        .lazy()
        .filter(col(schemas::stg_fx_rates::date).gt_eq(lit(p.period.start() - chrono::Duration::days(7))))
        .filter(col(schemas::stg_fx_rates::date).lt_eq(lit(p.period.end())))
        .collect()?;
    let opts = Options { abs_tolerance: settings.abs_tolerance, rel_tolerance: settings.rel_tolerance, rounding: cfg.billing.rounding };
    let mut report = pipeline::compare::rpt_parallel_run(
        &p.period.to_string(),
        &commit.run_id,
        &legacy,
        &lines,
        &customers,
        &rate_values(&rate_cards)?,
        &fx,
        &opts,
    )?;
    publish(&wh, p.period, schemas::rpt_parallel_run::TABLE, &mut report)?;
    let outside = summary(&report, &shown, p.period)?;
    if a.fail_outside_tolerance && outside > 0 {
        return Err(Failure::invariant(format!(
            "{outside} customer(s) of period {} differ from the legacy invoices beyond tolerance; read `marts/rpt_parallel_run` for the lines and their causes",
            p.period
        ))
        .into());
    }
    Ok(())
}

/// The warehouse and the period's latest commit, or what to run first.
pub(crate) fn open_committed(p: &PeriodArgs, cfg: &crate::config::Config) -> Result<(crate::warehouse::Warehouse, crate::warehouse::Commit)> {
    let url = cfg.warehouse_url(p.warehouse.as_deref());
    let wh = crate::warehouse::Warehouse::open(&url, &cfg.warehouse.options)?;
    // A publish a killed run left half done is completed first.
    wh.repair(p.period)?;
    let shown = wh.url().to_string();
    let commit = wh.committed(p.period)?.ok_or_else(|| {
        Failure::usage(format!("`{shown}` has no committed run of period {}; run `cspbill run --period {}` first", p.period, p.period))
    })?;
    Ok((wh, commit))
}

/// A table of the commit (all tables come from one run), or what to run first.
pub(crate) fn read_committed(
    wh: &crate::warehouse::Warehouse,
    commit: &crate::warehouse::Commit,
    p: &PeriodArgs,
    table: &str,
    zone: schemas::Zone,
) -> Result<DataFrame> {
    wh.read_commit_table(commit, table, zone)?.ok_or_else(|| {
        Failure::usage(format!(
            "the committed run `{}` of period {} has no `{table}`; run `cspbill run --period {}` to completion first",
            commit.run_id, p.period, p.period
        ))
        .into()
    })
}

/// Distinct (method, value) of the rate cards, naming every rule that offers it.
fn rate_values(rc: &DataFrame) -> Result<Vec<RateValue>> {
    use pipeline::invoice::cells;
    use schemas::stg_rate_cards as r;
    let ids = cells::strs(rc, r::rule_id)?;
    let methods = cells::strs(rc, r::method)?;
    let values = cells::decs(rc, r::value)?;
    let mut by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for i in 0..rc.height() {
        if let (Some(m), Some(v)) = (&methods[i], values[i]) {
            by.entry((m.clone(), v.normalize().to_string())).or_default().push(ids[i].clone().unwrap_or_default());
        }
    }
    Ok(by
        .into_iter()
        .filter_map(|((method, v), rules)| Some(RateValue { rule_id: rules.join("`, `"), method, value: v.parse().ok()? }))
        .collect())
}

/// Writes the report at `marts/rpt_parallel_run/period=P/part-0.parquet` (without the `period` column, which the
/// Hive path carries, as every committed table) by one atomic PUT.
pub(crate) fn publish(wh: &crate::warehouse::Warehouse, period: pipeline::Period, table: &str, report: &mut DataFrame) -> Result<()> {
    let mut body = report.drop("period")?;
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf)
        .with_compression(crate::warehouse::parquet_compression())
        .finish(&mut body)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("encoding `{table}` as Parquet"))?;
    let path = format!("{}/{table}/period={period}/part-0.parquet", schemas::Zone::Marts.dir());
    wh.replace_file(&path, Bytes::from(buf))
}

/// Prints one line per customer and currency; returns how many are outside tolerance.
fn summary(report: &DataFrame, wh: &str, period: pipeline::Period) -> Result<usize> {
    use pipeline::invoice::cells;
    let kind = cells::strs(report, "row_kind")?;
    let name = cells::strs(report, "customer_name")?;
    let id = cells::strs(report, "customer_id")?;
    let ccy = cells::strs(report, "currency")?;
    let diff = cells::decs(report, "difference")?;
    let within = cells::bools(report, "within_tolerance")?;
    let expl = cells::strs(report, "explanation")?;
    let mut out = String::new();
    let mut outside = 0;
    for i in 0..report.height() {
        if kind[i].as_deref() != Some("customer") {
            continue;
        }
        let ok = within[i] == Some(true);
        outside += usize::from(!ok);
        out.push_str(&format!(
            "{} {} ({}): difference {} {}; {}\n",
            if ok { "ok     " } else { "OUTSIDE" },
            name[i].clone().or_else(|| id[i].clone()).unwrap_or_default(),
            id[i].clone().unwrap_or_default(),
            diff[i].unwrap_or_default().round_dp(4),
            ccy[i].clone().unwrap_or_default(),
            expl[i].clone().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "parallel run of {period}: {outside} customer(s) outside tolerance; report in `{wh}/marts/rpt_parallel_run/period={period}/part-0.parquet`\n"
    ));
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    match so.write_all(out.as_bytes()).and_then(|()| so.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the summary to stdout")?,
    }
    Ok(outside)
}

/// Reads the legacy file as text (no inference) and types each cell; any problem is exit 2 naming the file,
/// the line and the column, and what to do.
pub fn read_legacy(path: &Path, cols: &Columns) -> Result<Vec<LegacyLine>> {
    let f = TextCsv::read(path, "legacy file")?;
    let map: BTreeMap<String, String> = [
        ("customer", &cols.customer),
        ("invoice_number", &cols.invoice_number),
        ("description", &cols.description),
        ("product", &cols.product),
        ("quantity", &cols.quantity),
        ("amount", &cols.amount),
        ("currency", &cols.currency),
        ("line_type", &cols.line_type),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let c = f.columns(
        &[
            ("customer", true),
            ("invoice_number", true),
            ("description", true),
            ("product", true),
            ("quantity", true),
            ("amount", true),
            ("currency", true),
            ("line_type", false),
        ],
        &map,
        "[compare.columns]",
    )?;
    let mut out = Vec::with_capacity(f.rows());
    for r in 0..f.rows() {
        let currency = f.text(r, c[6]).to_uppercase();
        if pipeline::currency::minor_unit(&currency).is_none() {
            return Err(f.at(r, c[6], &format!("`{}` is not an ISO 4217 currency code (EUR, USD, GBP, ...)", crate::error::clip(&currency))));
        }
        let customer = f.text(r, c[0]);
        if customer.is_empty() {
            return Err(f.at(r, c[0], "is empty; every line needs its customer (the customer id or name of customers.csv)"));
        }
        out.push(LegacyLine {
            line: (r + 2) as u64,
            customer,
            invoice_number: f.text(r, c[1]),
            description: f.text(r, c[2]),
            product: f.text(r, c[3]),
            quantity: f.number(r, c[4], false, false)?,
            amount: f.number(r, c[5], true, false)?.unwrap_or_default(),
            currency,
            line_type: c[7].map(|_| f.text(r, c[7])).filter(|t| !t.is_empty()),
        });
    }
    Ok(out)
}

/// A CSV read as text: header and rows, for typing cell by cell with file/line/column errors.
pub(crate) struct TextCsv {
    shown: String,
    header: Vec<String>,
    df: DataFrame,
}

impl TextCsv {
    pub(crate) fn read(path: &Path, what: &str) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Failure::usage(format!("cannot read the {what} `{shown}`: {e}")))?;
        crate::reference::require_utf8(&shown, &bytes)?;
        let df = crate::reference::text_frame(&shown, bytes)?;
        let header = df.get_column_names().iter().map(|s| s.trim_start_matches('\u{feff}').trim().to_string()).collect();
        Ok(Self { shown, header, df })
    }

    /// The column of each field (its header from `map`, else the field name); missing required ones are one
    /// exit-2 error naming all of them and the config section that maps them.
    pub(crate) fn columns(&self, fields: &[(&str, bool)], map: &BTreeMap<String, String>, section: &str) -> Result<Vec<Option<usize>>> {
        let mut missing = Vec::new();
        let found: Vec<Option<usize>> = fields
            .iter()
            .map(|(f, required)| {
                let h = map.get(*f).map(String::as_str).unwrap_or(f);
                let i = self.header.iter().position(|x| x.eq_ignore_ascii_case(h.trim()));
                if i.is_none() && *required {
                    missing.push(format!("`{h}`"));
                }
                i
            })
            .collect();
        if !missing.is_empty() {
            return Err(Failure::usage(format!(
                "{}:1: no column {}; its columns are {}; rename them in the file or map them in `{section}` of cspbill.toml",
                self.shown,
                missing.join(", "),
                self.header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        Ok(found)
    }

    pub(crate) fn text(&self, r: usize, c: Option<usize>) -> String {
        c.and_then(|c| self.df.columns()[c].str().ok()?.get(r).map(|s| s.trim().to_string())).unwrap_or_default()
    }

    /// An exit-2 error at row `r` (0-based; line r + 2 of the file, after the header) and column `c`.
    pub(crate) fn at(&self, r: usize, c: Option<usize>, why: &str) -> anyhow::Error {
        let c = c.unwrap_or_default();
        Failure::usage(format!("{}:{}: column {} (`{}`): {why}", self.shown, r + 2, c + 1, self.header.get(c).map(String::as_str).unwrap_or(""))).into()
    }

    pub(crate) fn number(&self, r: usize, c: Option<usize>, required: bool, percent: bool) -> Result<Option<Decimal>> {
        let t = self.text(r, c);
        let at = |why: String| self.at(r, c, &why);
        if t.is_empty() {
            return if required && c.is_some() { Err(at("is empty; write a number (0 for nothing)".into())) } else { Ok(None) };
        }
        pipeline::reference::parse_decimal(&t, percent).map(Some).ok_or_else(|| {
            at(format!("`{}` is not a plain decimal number; write it without currency signs or thousands separators, with a dot (1234.50)", crate::error::clip(&t)))
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.df.height()
    }
}

