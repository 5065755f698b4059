//! `cspbill generate`: a deterministic synthetic billing workspace that looks like a real MSP month.
//!
//! It writes `inputs/YYYY-MM/` (Partner Center billed daily rated usage in the 55-column layout and the
//! new-commerce invoice reconciliation file, one of each per billing currency), `reference/` (every reference
//! CSV of DESIGN §4.2) and `cspbill.toml`. The same arguments give the same bytes: all randomness comes from a
//! ChaCha8 generator seeded with `--seed` (one stream per output, so the reference data does not move when
//! `--usage-rows` changes), nothing reads the clock, and every collection written is ordered.
//!
//! Usage rows are streamed day by day in bounded batches, so `--usage-rows 10000000` runs in flat memory.
//! Planted anomalies (see [`world::Plan`]): a budget overrun, a deployment spike, unused seats, an idle VM, a
//! low tag-compliance subscription, a usage gap, and a trial customer past its spend cap.

mod catalog;
mod csvout;
mod invoice;
mod refdata;
mod usage;
mod world;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::Args;
use pipeline::Period;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

use crate::error::Failure;

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Output folder of the workspace.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of customers.
    #[arg(long, default_value_t = 10)]
    pub customers: u32,
    /// Billing period, `YYYY-MM`.
    #[arg(long)]
    pub period: String,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Daily usage rows to write (about; 0 = a few per resource and day).
    #[arg(long, default_value_t = 0)]
    pub usage_rows: u64,
}

/// What was written, for the log and for tests.
#[derive(Debug, Clone)]
pub struct Generated {
    pub usage_rows: u64,
    pub files: Vec<String>,
}

/// Independent random streams, one per output.
#[derive(Clone, Copy)]
enum Stream {
    World = 1,
    Usage = 2,
    Invoice = 3,
    Reference = 4,
}

fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream as u64);
    r
}

/// A decimal as Partner Center prints it: no trailing zeros, no exponent.
pub fn fmt_dec(d: Decimal) -> String {
    d.normalize().to_string()
}

/// `MM/DD/YYYY`, the Partner Center CSV date format.
pub fn mdy(d: NaiveDate) -> String {
    d.format("%m/%d/%Y").to_string()
}

/// `YYYY-MM-DD`, the reference files' date format.
pub fn iso(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn generate(args: &GenerateArgs) -> Result<()> {
    let g = generate_workspace(args)?;
    tracing::info!(out = %args.out.display(), usage_rows = g.usage_rows, files = g.files.len(), "workspace generated");
    Ok(())
}

pub fn generate_workspace(args: &GenerateArgs) -> Result<Generated> {
    let period: Period = args.period.parse().map_err(|e| {
        Failure::usage(format!(
            "bad --period `{}`: {e}; write it as YYYY-MM",
            args.period
        ))
    })?;
    if args.customers == 0 {
        return Err(Failure::usage("--customers must be at least 1").into());
    }
    let n = args.customers as usize;
    let world = world::build(&mut rng(args.seed, Stream::World), period, n);

    let inputs = args.out.join("inputs").join(period.to_string());
    let reference = args.out.join("reference");
    for d in [&inputs, &reference] {
        std::fs::create_dir_all(d).with_context(|| {
            format!(
                "cannot create `{}`; check that --out is writable",
                d.display()
            )
        })?;
    }

    // Scale by repeating each resource: the world's shape (and its planted anomalies) stays the same.
    let base = usage::base_rows(&world).max(1);
    let replicas = if args.usage_rows == 0 {
        1
    } else {
        ((args.usage_rows + base / 2) / base).max(1)
    };
    let replicas = u32::try_from(replicas)
        .map_err(|_| Failure::usage("--usage-rows is too large; ask for fewer rows"))?;

    let sums = usage::write_usage(
        &world,
        &inputs,
        replicas,
        &mut rng(args.seed, Stream::Usage),
    )?;
    let invoice_files =
        invoice::write_invoices(&world, &inputs, &sums, &mut rng(args.seed, Stream::Invoice))?;
    let ref_files = refdata::write_reference(
        &world,
        &reference,
        &sums,
        &mut rng(args.seed, Stream::Reference),
    )?;
    write_config(&args.out, &world)?;

    let mut files: Vec<String> = Vec::new();
    let prefix = format!("inputs/{period}/");
    files.extend(sums.files.iter().map(|f| format!("{prefix}{f}")));
    files.extend(invoice_files.iter().map(|f| format!("{prefix}{f}")));
    files.extend(ref_files);
    files.push("cspbill.toml".into());
    Ok(Generated {
        usage_rows: sums.rows,
        files,
    })
}

fn write_config(out: &Path, world: &World) -> Result<()> {
    let period = world.period;
    let invoice_date = iso(period.next().start());
    let overrun = &world.customers[world.plan.budget_overrun];
    let text = format!(
        r#"# cspbill configuration of this workspace (DESIGN §4.3). Paths are relative to this file.
# Written by `cspbill generate`; see README.md next to it for the exact command.

[partner]
name = "{partner}"
address = "1 Harbour Exchange Square, London E14 9GE, United Kingdom"
tax_id = "GB123456789"
email = "billing@fabrikam-cloud.example"

[warehouse]
url = "./warehouse"

[inputs]
# `{{period}}` is replaced by YYYY-MM: the files there are that period's snapshot.
partner_center = "inputs/{{period}}"
customers = "reference/customers.csv"
org_units = "reference/org_units.csv"
rate_cards = "reference/rate_cards.csv"
tag_rules = "reference/tag_rules.csv"
fx_rates = "reference/fx_rates.csv"
manual_lines = "reference/manual_lines.csv"
psa_time_entries = "reference/psa_time_entries.csv"
license_activity = "reference/license_activity.csv"
utilization = "reference/utilization.csv"
gl_accounts = "reference/gl_accounts.csv"

[billing]
rounding = "half_even"
proration = "mirror_microsoft"
fx_date = "period_end"
azure_usage_source = "auto"
invoice_prefix = "FCP"
invoice_date = "{invoice_date}"
max_rejected_rows = 0

# Change control of rate cards and tag rules (README, "Change control"): off here, so the sample runs as it is.
# To turn it on, uncomment these lines, then propose the current files and have each approved in both roles
# (`cspbill ref propose`, `cspbill ref approve`): until then a run refuses to start.
# [change_control]
# enabled = true
# executive_threshold = "0.05"   # a rate-card change moving a price by more than 5 % also needs an `executive`
# [change_control.roles]
# rate_cards = ["finance", "sales_ops"]
# tag_rules = ["finance", "sales_ops"]

[anomalies]
# Ratios are fractions (1.10 = 110 %); cpu_floor_pct is in percent.
budget_warning = "1.10"
budget_critical = "1.20"
deployment_factor = "5"
license_unused_days = 30
cpu_floor_pct = "10"
cpu_days = 7
tag_compliance_warning = "0.90"
tag_compliance_critical = "0.75"
margin_warning_points = "2"
margin_critical_points = "5"

# {overrun_name} runs hot on purpose: alert a little later.
[anomalies.overrides."{overrun_id}"]
budget_warning = "1.15"
"#,
        partner = world.partner.name,
        overrun_name = overrun.name,
        overrun_id = overrun.id,
    );
    let path = out.join("cspbill.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

use world::World;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, customers: u32, usage_rows: u64) -> GenerateArgs {
        GenerateArgs {
            out: dir.to_path_buf(),
            customers,
            period: "2025-06".into(),
            seed: 7,
            usage_rows,
        }
    }

    fn read_all(dir: &Path, files: &[String]) -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .map(|f| (f.clone(), std::fs::read(dir.join(f)).unwrap()))
            .collect()
    }

    #[test]
    fn same_arguments_give_the_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ga = generate_workspace(&args(a.path(), 4, 0)).unwrap();
        let gb = generate_workspace(&args(b.path(), 4, 0)).unwrap();
        assert_eq!(ga.files, gb.files);
        assert_eq!(read_all(a.path(), &ga.files), read_all(b.path(), &gb.files));
        let c = tempfile::tempdir().unwrap();
        let mut other = args(c.path(), 4, 0);
        other.seed = 8;
        let gc = generate_workspace(&other).unwrap();
        assert_ne!(
            read_all(a.path(), &ga.files),
            read_all(c.path(), &gc.files),
            "another seed gives other data"
        );
    }

    #[test]
    fn the_config_loads() {
        let d = tempfile::tempdir().unwrap();
        generate_workspace(&args(d.path(), 2, 0)).unwrap();
        let cfg = crate::config::Config::load(&d.path().join("cspbill.toml")).unwrap();
        assert_eq!(cfg.billing.invoice_prefix, "FCP");
        assert_eq!(cfg.anomalies.overrides.len(), 1);
        assert_eq!(
            cfg.anomalies.defaults.budget_warning,
            Some(Decimal::new(110, 2))
        );
    }

    #[test]
    fn usage_rows_scale_the_month() {
        let d = tempfile::tempdir().unwrap();
        let small = generate_workspace(&args(d.path(), 3, 0))
            .unwrap()
            .usage_rows;
        let e = tempfile::tempdir().unwrap();
        let big = generate_workspace(&args(e.path(), 3, small * 4))
            .unwrap()
            .usage_rows;
        assert_eq!(big, small * 4);
    }

    #[test]
    fn one_customer_and_bad_arguments() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            generate_workspace(&args(d.path(), 1, 0))
                .unwrap()
                .usage_rows
                > 0
        );
        let mut bad = args(d.path(), 1, 0);
        bad.period = "2025-13".into();
        let err = generate_workspace(&bad).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
