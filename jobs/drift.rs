//! `cspbill drift` (issue 17, part 2): the PSA's agreement additions and the CRM's quotes, from their CSV
//! exports, against the period's committed invoice lines; `pipeline::compare::drift` finds the differences and
//! this module publishes them as `marts/rpt_drift` (its own table, one atomic PUT, like `rpt_parallel_run`: see
//! `jobs/compare.rs`). Cells are read as text and parsed exactly; a bad cell is exit 2 with file, line, column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use pipeline::compare::drift::{CrmQuote, DriftOptions, PsaAgreement};

use crate::cli::PeriodArgs;
use crate::error::Failure;

/// What `cspbill drift` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub p: PeriodArgs,
    /// The PSA's agreement additions (ConnectWise/Autotask export): customer, product, quantity, unit_price.
    #[arg(long)]
    pub psa: Option<PathBuf>,
    /// The CRM's quotes: customer, product, quoted_quantity, quoted_monthly_amount, quoted_margin.
    #[arg(long)]
    pub crm: Option<PathBuf>,
    /// Exit 1 when any drift is found.
    #[arg(long)]
    pub fail_on_drift: bool,
}

pub fn command(a: &DriftArgs) -> Result<()> {
    let p = &a.p;
    if a.psa.is_none() && a.crm.is_none() {
        return Err(Failure::usage("give `--psa FILE`, `--crm FILE` or both: the exports to compare with billing").into());
    }
    let cfg = crate::config::load(&p.config)?;
    let s = &cfg.compare;
    let psa = match &a.psa {
        Some(f) => read_psa(f, &s.psa_columns)?,
        None => Vec::new(),
    };
    let crm = match &a.crm {
        Some(f) => read_crm(f, &s.crm_columns)?,
        None => Vec::new(),
    };
    let (wh, commit) = crate::compare::open_committed(p, &cfg)?;
    let lines = crate::compare::read_committed(&wh, &commit, p, schemas::fct_invoice_lines::TABLE, schemas::fct_invoice_lines::ZONE)?;
    let customers = crate::compare::read_committed(&wh, &commit, p, schemas::stg_customers::TABLE, schemas::stg_customers::ZONE)?;
    let opts = DriftOptions { abs_tolerance: s.abs_tolerance, rel_tolerance: s.rel_tolerance, margin_tolerance: s.margin_tolerance };
    let mut df = pipeline::compare::drift::rpt_drift(&p.period.to_string(), &commit.run_id, &psa, &crm, &lines, &customers, &opts)?;
    crate::compare::publish(&wh, p.period, schemas::rpt_drift::TABLE, &mut df)?;
    use pipeline::invoice::cells;
    let (src, name, id, product, measure, msg) = (
        cells::strs(&df, "source")?,
        cells::strs(&df, "customer_name")?,
        cells::strs(&df, "customer_id")?,
        cells::strs(&df, "product")?,
        cells::strs(&df, "measure")?,
        cells::strs(&df, "message")?,
    );
    let mut out = String::new();
    for i in 0..df.height() {
        out.push_str(&format!(
            "{} {} `{}` {}: {}\n",
            src[i].clone().unwrap_or_default(),
            name[i].clone().or_else(|| id[i].clone()).unwrap_or_default(),
            product[i].clone().unwrap_or_default(),
            measure[i].clone().unwrap_or_default(),
            msg[i].clone().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "drift of {}: {} difference(s); report in `{}/marts/rpt_drift/period={}/part-0.parquet`\n",
        p.period,
        df.height(),
        wh.url(),
        p.period
    ));
    print!("{out}");
    if a.fail_on_drift && df.height() > 0 {
        return Err(Failure::invariant(format!("{} drift difference(s) between billing and the PSA/CRM exports; read `marts/rpt_drift`", df.height())).into());
    }
    Ok(())
}

fn read_psa(path: &Path, map: &BTreeMap<String, String>) -> Result<Vec<PsaAgreement>> {
    let f = crate::compare::TextCsv::read(path, "PSA agreements export")?;
    let c = f.columns(&[("customer", true), ("product", true), ("quantity", true), ("unit_price", false)], map, "[compare.psa_columns]")?;
    (0..f.rows())
        .map(|r| {
            Ok(PsaAgreement {
                line: (r + 2) as u64,
                customer: f.text(r, c[0]),
                product: f.text(r, c[1]),
                quantity: f.number(r, c[2], true, false)?.unwrap_or_default(),
                unit_price: f.number(r, c[3], false, false)?,
            })
        })
        .collect()
}

fn read_crm(path: &Path, map: &BTreeMap<String, String>) -> Result<Vec<CrmQuote>> {
    let f = crate::compare::TextCsv::read(path, "CRM quotes export")?;
    let c = f.columns(
        &[("customer", true), ("product", true), ("quoted_quantity", false), ("quoted_monthly_amount", false), ("quoted_margin", false)],
        map,
        "[compare.crm_columns]",
    )?;
    (0..f.rows())
        .map(|r| {
            Ok(CrmQuote {
                line: (r + 2) as u64,
                customer: f.text(r, c[0]),
                product: f.text(r, c[1]),
                quantity: f.number(r, c[2], false, false)?,
                monthly_amount: f.number(r, c[3], false, false)?,
                margin: f.number(r, c[4], false, true)?,
            })
        })
        .collect()
}
