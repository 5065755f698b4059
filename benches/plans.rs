//! Criterion micro-benchmarks of the allocation and rating plans on in-memory frames (issue 10).
//!
//! Set-up (not timed): `cspbill generate` writes a month of `PLANS_ROWS` daily-usage rows (default 200,000; 40
//! customers, the generator's cross-customer tag rules) to a temporary folder, and the job's own stages run it
//! through ingest and charges into the spool; `int_charges` and `int_charges_allocated` are then read into memory.
//! Timed: `pipeline::allocate::int_charges_allocated` over the in-memory `int_charges` and
//! `pipeline::rate::int_charges_rated` over the in-memory `int_charges_allocated`, each collected (in-memory and
//! streaming engine), so the figures are the plans' own cost, without CSV parsing or Parquet I/O.
//!
//!   CARGO_TARGET_DIR=/tmp/target-rel cargo bench --bench plans            # PLANS_ROWS=1000000 for a bigger frame
//!
//! Before timing, each plan's output is checked against its input (rows and Σ cost per source customer), so a
//! broken plan fails the bench instead of timing nonsense.

use std::path::Path;
use std::time::Duration;

use cspbill::config;
use cspbill::generate::{GenerateArgs, generate_workspace};
use cspbill::manifest::{Manifest, Timer};
use cspbill::run::{Stop, TableData, compute, load_reference};
use cspbill::spool::Spool;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipeline::{Period, RunContext, RunMode};
use polars::prelude::*;

struct Frames {
    refs: cspbill::run::RefFrames,
    ctx: RunContext,
    charges: DataFrame,
    allocated: DataFrame,
}

fn spooled(tables: &[(&'static str, schemas::Zone, TableData)], name: &str) -> DataFrame {
    let (_, _, data) = tables.iter().find(|(t, _, _)| *t == name).unwrap_or_else(|| panic!("no table {name}"));
    match data {
        TableData::Spool(s) => s.scan().and_then(|lf| Ok(lf.collect()?)).expect("reading the spool"),
        TableData::Frame(df) => df.clone(),
    }
}

fn setup(dir: &Path, rows: u64) -> Frames {
    let period: Period = "2025-06".parse().unwrap();
    generate_workspace(&GenerateArgs { out: dir.to_path_buf(), customers: 40, period: period.to_string(), seed: 7, usage_rows: rows })
        .expect("generating the month");
    let cfg = config::load(&dir.join("cspbill.toml")).expect("config");
    let ctx = RunContext { period, run_id: "bench".into(), mode: RunMode::Close, policies: cfg.policies(period, None) };
    let mut m = Manifest::new("bench", &period.to_string(), "close", "bench", String::new());
    let refs = load_reference(&cfg, period, &mut m).expect("reference files");
    let spool = Spool::new(Some(dir)).expect("spool");
    let mut timer = Timer::new();
    let snapshot = cfg.partner_center_location(period);
    let adjustments = DataFrame::empty_with_schema(&schemas::fct_invoice_lines::schema());
    let c = compute(&ctx, &refs, Path::new(&snapshot), Stop::Allocate, adjustments, &mut m, &mut timer, spool).expect("stages");
    assert!(m.failures().is_none(), "the set-up run broke an invariant: {:?}", m.failures());
    let charges = spooled(&c.tables, schemas::int_charges::TABLE);
    let allocated = spooled(&c.tables, schemas::int_charges_allocated::TABLE);
    Frames { refs, ctx, charges, allocated }
}

/// Rows and Σ cost per source customer of `a` (column `ka`) and `b` (column `kb`) must agree.
fn conserved(a: &DataFrame, ka: &str, b: &DataFrame, kb: &str, what: &str) {
    let sums = |df: &DataFrame, k: &str| {
        df.clone().lazy().group_by([col(k).alias("k")]).agg([col("cost").sum()]).sort(["k"], Default::default()).collect().unwrap()
    };
    assert!(sums(a, ka).equals_missing(&sums(b, kb)), "{what}: Σ cost per source customer changed");
}

fn allocate(f: &Frames, engine: Engine) -> DataFrame {
    let r = &f.refs;
    let al = pipeline::allocate::int_charges_allocated(f.charges.clone().lazy(), &r.tag_rules, &r.org_units, &r.customers, &f.ctx)
        .expect("allocation plan");
    al.allocated.collect_with_engine(engine).expect("allocation").unwrap_single()
}

fn rate(f: &Frames, engine: Engine) -> DataFrame {
    let r = &f.refs;
    let rt = pipeline::rate::int_charges_rated(f.allocated.clone().lazy(), &r.rate_cards, &r.customers, &r.fx_rates, &f.ctx)
        .expect("rating plan");
    rt.rated.collect_with_engine(engine).expect("rating").unwrap_single()
}

fn plans(c: &mut Criterion) {
    let rows = std::env::var("PLANS_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temporary folder");
    let f = setup(dir.path(), rows);
    eprintln!("in memory: int_charges {} rows, int_charges_allocated {} rows", f.charges.height(), f.allocated.height());
    conserved(&f.charges, "customer_id", &allocate(&f, Engine::InMemory), "source_customer_id", "allocation");
    conserved(&f.allocated, "source_customer_id", &rate(&f, Engine::InMemory), "source_customer_id", "rating");

    let mut g = c.benchmark_group("plans");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, engine) in [("in_memory", Engine::InMemory), ("streaming", Engine::Streaming)] {
        g.throughput(Throughput::Elements(f.charges.height() as u64));
        g.bench_with_input(BenchmarkId::new("allocate", name), &engine, |b, e| b.iter(|| allocate(&f, *e)));
        g.throughput(Throughput::Elements(f.allocated.height() as u64));
        g.bench_with_input(BenchmarkId::new("rate", name), &engine, |b, e| b.iter(|| rate(&f, *e)));
    }
    g.finish();
}

criterion_group!(benches, plans);
criterion_main!(benches);
