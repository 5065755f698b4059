//! A period run as shards (issue 20): `cspbill shard plan | map | commit`, for a distributed engine to run as
//! tasks (`deploy/dask/` submits them to Dask) with the warehouse as the only shared state.
//!
//! - **plan** hashes the period's Partner Center inputs, uploads them to `_shards/<plan_id>/inputs/NNNNN/` and
//!   writes `_shards/<plan_id>/plan.json` last. The plan id is the period and 16 hex digits of a SHA-256 over the
//!   inputs' paths and digests: the same inputs give the same plan, so planning again is a no-op.
//! - **map** (one per input path: a file, or a v2 export folder) downloads its input, checks its SHA-256 against
//!   the plan, and runs the parse — the pre-scan and the typing stage, `pipeline::ingest::typed_rows` — sinking the
//!   typed rows to Parquet exactly as a run's spool does. It uploads them to `_shards/<plan_id>/map/NNNNN/` and
//!   writes `done.json` (the inputs' statistics and the typed files' digests) last. A map whose `done.json`
//!   exists returns at once; two maps of one input write the same bytes, so retries and duplicates are safe.
//! - **commit** refuses (exit 1) while any map's `done.json` is missing. Otherwise it is `cspbill run` with the
//!   typed files in place of the parse (`crate::run::Source::Shards` → `crate::snapshot::stage_inputs`): the
//!   same code stages, charges, allocates, rates, invoices and publishes in one atomic commit, so its output is
//!   the single-machine run's, byte for byte.
//!
//! What is not sharded yet: everything after the parse runs in the commit, on one machine (see the README,
//! "Sharded runs", for the measured split and what a per-customer reduce needs).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::NaiveDate;
use pipeline::{Period, RunContext, RunMode};
use pipeline::ingest::StageOptions;
use serde::{Deserialize, Serialize};
use polars::prelude::*;
use serde_json::json;
use tracing::info;

use crate::cli::{ModeArg, PeriodArgs};
use crate::reference::RefFrames;
use crate::config::{self, Config};
use crate::error::Failure;
use crate::inputs::{self, SourceKind};
use crate::manifest::Manifest;
use crate::snapshot::{Inputs, Typed, TypedInput, sha256_file};
use crate::spool::Spool;
use crate::stages::Stop;
use crate::warehouse::Warehouse;

/// The plan file's format tag.
pub const PLAN_FORMAT: &str = "cspbill-shard-plan/1";

/// `cspbill shard ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ShardCommand {
    /// Plan a sharded run of a period: hash and upload its Partner Center inputs, write the plan; prints
    /// `{"plan_id": ..., "period": ..., "files": N}` (map shards are numbered 0..N-1).
    Plan {
        #[command(flatten)]
        w: WarehouseArgs,
        /// Billing period, `YYYY-MM`.
        #[arg(long, value_parser = crate::cli::parse_period)]
        period: Period,
    },
    /// Type one input of a plan (the parse) and upload its typed rows; a no-op when already done.
    Map {
        #[command(flatten)]
        w: WarehouseArgs,
        /// The plan id `shard plan` printed.
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
        /// The input's number in the plan (0..N-1).
        #[arg(long)]
        file: usize,
    },
    /// With buckets (`[run] buckets` > 1): stage, charge, allocate, rate and invoice the period once, and write the
    /// rated parts per bucket and the numbered invoices for the reduces; refuses (exit 1) while a map is missing.
    Stage {
        #[command(flatten)]
        w: WarehouseArgs,
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
        /// As the commit will be run: the invoices carry both.
        #[command(flatten)]
        when: WhenArgs,
    },
    /// With buckets: one bucket's invoice detail, FOCUS rows and per-invoice files (CSV, XLSX, PDF, HTML, FOCUS);
    /// refuses (exit 1) until the stage is done.
    Reduce {
        #[command(flatten)]
        w: WarehouseArgs,
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
        /// The bucket's number (0..B-1, B as `shard plan` printed).
        #[arg(long)]
        bucket: u32,
    },
    /// Stage, rate, invoice and publish the period from the plan's typed inputs (and, with buckets, the reduces'
    /// files), in one commit, exactly as `cspbill run` does; refuses (exit 1) while a shard is missing.
    Commit {
        #[command(flatten)]
        w: WarehouseArgs,
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Which map shards of a plan are done and whether the period's latest commit is this plan's; prints JSON.
    Status {
        #[command(flatten)]
        w: WarehouseArgs,
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
    },
    /// Delete a plan's work files (`_shards/<plan_id>/`: its uploaded inputs and typed shards). What a commit
    /// published is not touched; the plan can no longer be mapped or committed.
    Clean {
        #[command(flatten)]
        w: WarehouseArgs,
        #[arg(long, value_parser = parse_plan_id)]
        plan: String,
    },
}

/// The mode and invoice date of a commit (and of the stage, whose invoices the commit publishes).
#[derive(Debug, clap::Args)]
pub struct WhenArgs {
    /// `nightly` gives provisional invoices; `close` finalises the period.
    #[arg(long, value_enum, default_value_t = ModeArg::Nightly)]
    pub mode: ModeArg,
    /// Invoice date (`YYYY-MM-DD`); overrides the config.
    #[arg(long, value_parser = crate::cli::parse_date)]
    pub invoice_date: Option<NaiveDate>,
}

/// The config and the warehouse of a shard command.
#[derive(Debug, clap::Args)]
pub struct WarehouseArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// Warehouse root URL; overrides the config (`./warehouse`, `s3://b/p`, `az://c/p`, `gs://b/p`).
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
}

/// A plan: the inputs of one period, as they were when planned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub format: String,
    pub plan_id: String,
    pub period: String,
    /// The snapshot folder the inputs were read from (as the planner's config resolved it).
    pub snapshot: String,
    /// Input names more than one input carries: their rows' `source_file` is prefixed with the parent folder.
    pub colliding_names: Vec<String>,
    /// One map shard per entry, in the snapshot's order.
    pub files: Vec<PlanFile>,
    /// `[run] buckets` of the config when planned: above 1, the per-invoice tail runs as one reduce per bucket
    /// after a stage (`crate::buckets`).
    #[serde(default = "one")]
    pub buckets: u32,
}

fn one() -> u32 {
    1
}

/// One input path of a plan: a file, or a v2 export folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanFile {
    /// Relative to the snapshot folder, `/`-separated.
    pub path: String,
    /// The file itself, or the folder's files.
    pub objects: Vec<PlanObject>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanObject {
    /// Relative to the snapshot folder, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a map shard wrote: its inputs' statistics and typed files (`done.json`, written last).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MapDone {
    plan_id: String,
    file: usize,
    units: Vec<UnitRecord>,
}

/// One typed input (a file, or a blob of a v2 export) of a map shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UnitRecord {
    name: String,
    /// The input's path relative to the snapshot folder.
    path: String,
    sha256: String,
    bytes: u64,
    kind: String,
    format: String,
    unknown_columns: Vec<String>,
    warnings: Vec<String>,
    billed: bool,
    present: Vec<String>,
    percent: Vec<String>,
    typed: String,
    typed_bytes: u64,
    typed_sha256: String,
}

impl Plan {
    pub fn period(&self) -> Result<Period> {
        self.period.parse::<Period>().map_err(|e| Failure::usage(format!("plan `{}`: period `{}`: {e}", self.plan_id, self.period)).into())
    }
}

/// A plan id: `YYYY-MM-` and 16 lower-case hex digits.
fn parse_plan_id(s: &str) -> std::result::Result<String, String> {
    let ok = s.len() == 24
        && s.is_ascii()
        && s[..7].parse::<Period>().is_ok()
        && s.as_bytes()[7] == b'-'
        && s[8..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(s.to_string()) } else { Err(format!("`{s}` is not a plan id (YYYY-MM- and 16 hex digits, as `cspbill shard plan` prints)")) }
}

fn plan_key(id: &str) -> String {
    format!("_shards/{id}/plan.json")
}

fn input_object(id: &str, file: usize, path: &str) -> String {
    format!("_shards/{id}/inputs/{file:05}/{path}")
}

fn map_dir(id: &str, file: usize) -> String {
    format!("_shards/{id}/map/{file:05}")
}

fn done_key(id: &str, file: usize) -> String {
    format!("{}/done.json", map_dir(id, file))
}

/// The plan id of a period's inputs and bucket count: a digest of the inputs' paths and contents.
pub fn plan_id(period: &str, files: &[PlanFile], buckets: u32) -> Result<String> {
    let canonical = serde_json::to_vec(&json!({"format": PLAN_FORMAT, "period": period, "files": files, "buckets": buckets}))?;
    Ok(format!("{period}-{}", &crate::inputs_sha256(&canonical)[..16]))
}

/// `path` relative to `root`, `/`-separated.
fn relative(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).with_context(|| format!("`{}` is not inside `{}`", path.display(), root.display()))?;
    Ok(rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/"))
}

fn open(cfg: &Config, w: &WarehouseArgs) -> Result<Warehouse> {
    Warehouse::open(&cfg.warehouse_url(w.warehouse.as_deref()), &cfg.warehouse.options)
}

fn spool(cfg: &Config) -> Result<std::sync::Arc<Spool>> {
    let dir = cfg.run.spool_dir.as_deref().map(|d| cfg.resolve(d));
    Spool::new(dir.as_deref().map(Path::new))
}

/// Reads a plan from the warehouse.
pub fn read_plan(wh: &Warehouse, id: &str) -> Result<Plan> {
    let bytes = wh.read_file(&plan_key(id))?.ok_or_else(|| {
        Failure::usage(format!("no plan `{id}` in warehouse `{}`: run `cspbill shard plan` first and pass the id it prints", wh.url()))
    })?;
    let plan: Plan = serde_json::from_slice(&bytes).with_context(|| format!("reading plan `{id}`"))?;
    if plan.format != PLAN_FORMAT || plan.plan_id != id {
        return Err(Failure::usage(format!("`{}` is not a {PLAN_FORMAT} plan with id `{id}`", plan_key(id))).into());
    }
    Ok(plan)
}

/// `cspbill shard ...`.
pub fn command(cmd: ShardCommand) -> Result<()> {
    match cmd {
        ShardCommand::Plan { w, period } => {
            let plan = plan(&w, period)?;
            println!("{}", json!({"plan_id": plan.plan_id, "period": plan.period, "files": plan.files.len(), "buckets": plan.buckets}));
            Ok(())
        }
        ShardCommand::Map { w, plan, file } => map(&w, &plan, file),
        ShardCommand::Commit { w, plan, when } => commit(&w, &plan, when.mode, when.invoice_date),
        ShardCommand::Stage { w, plan, when } => stage(&w, &plan, when.mode, when.invoice_date),
        ShardCommand::Reduce { w, plan, bucket } => reduce(&w, &plan, bucket),
        ShardCommand::Status { w, plan } => {
            let cfg = config::load(&w.config)?;
            let wh = open(&cfg, &w)?;
            let p = read_plan(&wh, &plan)?;
            let missing = missing_maps(&wh, &p)?;
            let done: Vec<usize> = (0..p.files.len()).filter(|n| !missing.contains(n)).collect();
            let staged = p.buckets == 1 || wh.read_file(&stage_done_key(&p.plan_id))?.is_some();
            let reduces_missing = if p.buckets > 1 { missing_reduces(&wh, &p)? } else { Vec::new() };
            let committed = wh.committed(p.period()?)?;
            let by_this = committed.as_ref().is_some_and(|c| c.manifest_json["config"]["shard_plan"] == plan.as_str());
            println!(
                "{}",
                json!({
                    "plan_id": p.plan_id, "period": p.period, "files": p.files.len(), "done": done, "missing": missing,
                    "buckets": p.buckets, "staged": staged, "reduces_missing": reduces_missing,
                    "ready_to_commit": missing.is_empty() && staged && reduces_missing.is_empty(), "committed": by_this,
                    "committed_version": if by_this { committed.map(|c| c.version) } else { None },
                })
            );
            Ok(())
        }
        ShardCommand::Clean { w, plan } => {
            let cfg = config::load(&w.config)?;
            let wh = open(&cfg, &w)?;
            // The plan file goes first: a plan without it is not a plan, whatever is left if this is interrupted.
            let files = wh.list_files(&format!("_shards/{plan}/"))?;
            wh.delete_file(&plan_key(&plan))?;
            for f in files.iter().filter(|f| **f != plan_key(&plan)) {
                wh.delete_file(f)?;
            }
            println!("deleted plan {plan}: {} file(s)", files.len());
            Ok(())
        }
    }
}

/// Plans a sharded run of `period` (see the module's documentation) and returns the plan.
pub fn plan(w: &WarehouseArgs, period: Period) -> Result<Plan> {
    let cfg = config::load(&w.config)?;
    let wh = open(&cfg, w)?;
    let location = cfg.partner_center_location(period);
    if config::is_url(&location) {
        return Err(Failure::usage(format!(
            "`[inputs] partner_center` is `{location}`: the planner reads the inputs from a local folder; download the period's exports there first"
        ))
        .into());
    }
    let dir = PathBuf::from(&location);
    let listed = inputs::list_snapshot(&dir)?;
    let mut names = Vec::new();
    let mut files = Vec::new();
    for p in &listed {
        names.extend(inputs::input_names(p)?);
        let mut paths = Vec::new();
        if p.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("cannot list `{}`", p.display()))? {
                let e = e.with_context(|| format!("cannot list `{}`", p.display()))?.path();
                if e.is_file() {
                    paths.push(e);
                }
            }
            paths.sort();
        } else {
            paths.push(p.clone());
        }
        let mut objects = Vec::new();
        for o in paths {
            let bytes = std::fs::metadata(&o).with_context(|| format!("cannot read `{}`", o.display()))?.len();
            objects.push(PlanObject { path: relative(&dir, &o)?, bytes, sha256: sha256_file(&o)? });
        }
        files.push(PlanFile { path: relative(&dir, p)?, objects });
    }
    let mut colliding: Vec<String> = crate::snapshot::colliding_names(names.iter().map(String::as_str)).into_iter().collect();
    colliding.sort();
    let buckets = cfg.buckets()?;
    let id = plan_id(&period.to_string(), &files, buckets)?;
    let plan = Plan { format: PLAN_FORMAT.into(), plan_id: id.clone(), period: period.to_string(), snapshot: location, colliding_names: colliding, files, buckets };
    if let Some(existing) = wh.read_file(&plan_key(&id))? {
        // The same inputs were planned before (the id is their digest): their upload is complete.
        let existing: Plan = serde_json::from_slice(&existing).with_context(|| format!("reading `{}`", plan_key(&id)))?;
        if existing.files == plan.files && existing.buckets == plan.buckets {
            info!(plan = %id, "plan already in the warehouse");
            return Ok(existing);
        }
    }
    for (n, f) in plan.files.iter().enumerate() {
        for o in &f.objects {
            let (bytes, sha) = wh.upload_file(&input_object(&id, n, &o.path), &dir.join(&o.path))?;
            if sha != o.sha256 || bytes != o.bytes {
                return Err(Failure::invariant(format!("`{}` changed while it was planned (SHA-256 {sha}, was {}): plan again once the exports are complete", o.path, o.sha256)).into());
            }
        }
    }
    // Last: a plan file exists only once every input it names is uploaded.
    wh.put_file(&plan_key(&id), Bytes::from(serde_json::to_vec_pretty(&plan)?))?;
    info!(plan = %id, files = plan.files.len(), "planned");
    Ok(plan)
}

/// Runs map shard `file` of plan `id` (see the module's documentation).
pub fn map(w: &WarehouseArgs, id: &str, file: usize) -> Result<()> {
    let cfg = config::load(&w.config)?;
    let wh = open(&cfg, w)?;
    let plan = read_plan(&wh, id)?;
    let f = plan.files.get(file).ok_or_else(|| {
        Failure::usage(format!("plan `{id}` has {} input(s), numbered 0 to {}; there is no --file {file}", plan.files.len(), plan.files.len().saturating_sub(1)))
    })?;
    if let Some(done) = wh.read_file(&done_key(id, file))? {
        if serde_json::from_slice::<MapDone>(&done).is_ok() {
            println!("map shard {file} of plan {id} ({}) was already done", f.path);
            return Ok(());
        }
    }
    let period = plan.period()?;
    let spool = spool(&cfg)?;
    // The input is laid out below a folder named as the snapshot folder, so that the parent folder of every
    // input is named as in the snapshot (it prefixes colliding names).
    let snapshot_name = inputs::display_name(Path::new(&plan.snapshot));
    let root = spool.dir().join("inputs").join(if snapshot_name.is_empty() { "snapshot".to_string() } else { snapshot_name });
    for o in &f.objects {
        let local = root.join(&o.path);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
        }
        if !wh.download_file(&input_object(id, file, &o.path), &local)? {
            return Err(Failure::invariant(format!("plan `{id}`: its upload of `{}` is missing from the warehouse: plan again", o.path)).into());
        }
        let sha = sha256_file(&local)?;
        if sha != o.sha256 {
            return Err(Failure::invariant(format!("plan `{id}`: the uploaded `{}` has SHA-256 {sha}, not {} as planned: plan again", o.path, o.sha256)).into());
        }
    }
    let colliding: HashSet<String> = plan.colliding_names.iter().cloned().collect();
    let mut units = Vec::new();
    for (u, mut l) in inputs::load(&root.join(&f.path), period)?.into_iter().enumerate() {
        crate::snapshot::rename_if_colliding(&mut l, &colliding);
        let typed = pipeline::ingest::typed_rows(l.raw, &l.opts)?;
        let local = spool.path(&format!("typed/unit-{u:03}.parquet"))?;
        crate::spool::sink_parquet(typed, &local, &format!("typing `{}`", l.stats.name))?;
        let object = format!("{}/typed-{u:03}.parquet", map_dir(id, file));
        let (typed_bytes, typed_sha256) = wh.upload_file(&object, &local)?;
        let _ = std::fs::remove_file(&local);
        units.push(UnitRecord {
            path: relative(&root, &l.stats.path)?,
            name: l.stats.name,
            sha256: l.stats.sha256,
            bytes: l.stats.bytes,
            kind: l.kind.tag().to_string(),
            format: l.stats.format,
            unknown_columns: l.stats.unknown_columns,
            warnings: l.stats.warnings,
            billed: l.billed,
            present: l.opts.present,
            percent: l.opts.percent,
            typed: object,
            typed_bytes,
            typed_sha256,
        });
    }
    let done = MapDone { plan_id: id.to_string(), file, units };
    // Last: a map shard is done only once every typed file it names is uploaded.
    wh.put_file(&done_key(id, file), Bytes::from(serde_json::to_vec_pretty(&done)?))?;
    println!("map shard {file} of plan {id} ({}): {} input(s) typed", f.path, done.units.len());
    Ok(())
}

/// The map shards of a plan whose `done.json` is missing.
pub fn missing_maps(wh: &Warehouse, plan: &Plan) -> Result<Vec<usize>> {
    missing_done(wh, &format!("_shards/{}/map/", plan.plan_id), 0..plan.files.len(), |n| done_key(&plan.plan_id, n))
}

/// The tasks among `tasks` whose `done.json` (`key`) is not below `prefix`: one listing, not one read per task.
fn missing_done<T: Copy>(wh: &Warehouse, prefix: &str, tasks: impl Iterator<Item = T>, key: impl Fn(T) -> String) -> Result<Vec<T>> {
    let listed: HashSet<String> = wh.list_files(prefix)?.into_iter().collect();
    Ok(tasks.filter(|t| !listed.contains(&key(*t))).collect())
}

/// Commits a sharded run of plan `id` (see the module's documentation).
pub fn commit(w: &WarehouseArgs, id: &str, mode: ModeArg, invoice_date: Option<NaiveDate>) -> Result<()> {
    let cfg = config::load(&w.config)?;
    let wh = open(&cfg, w)?;
    let plan = read_plan(&wh, id)?;
    refuse_incomplete(&wh, &plan)?;
    let p = PeriodArgs { config: w.config.clone(), period: plan.period()?, warehouse: w.warehouse.clone(), invoice_date };
    crate::run::run_period_from(&p, mode.into(), Stop::All, crate::run::Source::Shards(&plan))
}

/// Before a commit: every map, and with buckets the stage and every reduce, must be done.
fn refuse_incomplete(wh: &Warehouse, plan: &Plan) -> Result<()> {
    refuse_missing(wh, plan)?;
    if plan.buckets <= 1 {
        return Ok(());
    }
    refuse_unstaged(wh, plan)?;
    refuse_if_missing(plan, &missing_reduces(wh, plan)?, plan.buckets as usize, "reduce(s)", "--bucket", "reduce", "K")
}

/// The refusal of a commit while phase tasks are missing: how many, which (`flag` numbers), and what to run.
fn refuse_if_missing<N: std::fmt::Display>(plan: &Plan, missing: &[N], total: usize, what: &str, flag: &str, command: &str, var: &str) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().take(20).map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    Err(Failure::invariant(format!(
        "shard commit of plan {} refused: {} of {total} {what} not done ({flag} {list}{}); run `cspbill shard {command} --plan {} {flag} {var}` for each, then commit again; nothing was published",
        plan.plan_id,
        missing.len(),
        if missing.len() > 20 { ", ..." } else { "" },
        plan.plan_id
    ))
    .into())
}

fn refuse_unstaged(wh: &Warehouse, plan: &Plan) -> Result<()> {
    if wh.read_file(&stage_done_key(&plan.plan_id))?.is_some() {
        return Ok(());
    }
    Err(Failure::invariant(format!(
        "plan {} is not staged: run `cspbill shard stage --plan {}` (after every map) first; nothing was published",
        plan.plan_id, plan.plan_id
    ))
    .into())
}

fn refuse_missing(wh: &Warehouse, plan: &Plan) -> Result<()> {
    refuse_if_missing(plan, &missing_maps(wh, plan)?, plan.files.len(), "map shard(s)", "--file", "map", "N")
}

/// The inputs of a sharded run's commit: every map shard's typed files, downloaded into the run's spool and
/// checked against their digests, as staging inputs; and, per input name, the uploaded input its raw landing
/// copies. Records the plan id in the manifest's `config`. Its callers (commit, stage) refuse missing maps first.
pub(crate) fn typed_inputs(wh: &Warehouse, plan: &Plan, spool: &Spool, m: &mut Manifest) -> Result<(Inputs, HashMap<String, String>)> {
    let period = plan.period()?;
    let mut out = Vec::new();
    let mut raw = HashMap::new();
    for n in 0..plan.files.len() {
        let bytes = wh.read_file(&done_key(&plan.plan_id, n))?.with_context(|| format!("map shard {n} of plan {} vanished", plan.plan_id))?;
        let done: MapDone = serde_json::from_slice(&bytes).with_context(|| format!("reading `{}`", done_key(&plan.plan_id, n)))?;
        for (u, unit) in done.units.into_iter().enumerate() {
            let local = spool.path(&format!("shards/{n:05}-{u:03}.parquet"))?;
            let sha = if wh.download_file(&unit.typed, &local)? { sha256_file(&local)? } else { String::new() };
            if sha != unit.typed_sha256 {
                return Err(Failure::invariant(format!(
                    "map shard {n} of plan {}: `{}` is missing or changed since the shard finished: delete `{}` and run the map again",
                    plan.plan_id,
                    unit.typed,
                    done_key(&plan.plan_id, n)
                ))
                .into());
            }
            let kind = match unit.kind.as_str() {
                "daily_usage" => SourceKind::DailyUsage,
                "invoice_lines" => SourceKind::InvoiceLines,
                other => return Err(anyhow::anyhow!("map shard {n}: unknown input kind `{other}`")),
            };
            let mut stats = inputs::empty_stats(unit.name.clone(), &Path::new(&plan.snapshot).join(&unit.path));
            stats.sha256 = unit.sha256;
            stats.bytes = unit.bytes;
            stats.kind = Some(kind);
            stats.format = unit.format;
            stats.unknown_columns = unit.unknown_columns;
            stats.warnings = unit.warnings;
            raw.insert(unit.name, input_object(&plan.plan_id, n, &unit.path));
            out.push(TypedInput {
                stats,
                kind,
                opts: StageOptions { kind, period, present: unit.present, percent: unit.percent },
                billed: unit.billed,
                typed: Typed::File(local),
            });
        }
    }
    m.config.insert("shard_plan".into(), plan.plan_id.clone());
    Ok((Inputs::Typed { location: plan.snapshot.clone(), inputs: out }, raw))
}

// ------------------------------------------------------------------------------------------------------------
// With buckets: the stage and the reduces (`crate::buckets`)
// ------------------------------------------------------------------------------------------------------------

fn stage_dir(id: &str) -> String {
    format!("_shards/{id}/stage")
}

fn stage_done_key(id: &str) -> String {
    format!("{}/done.json", stage_dir(id))
}

fn reduce_dir(id: &str, bucket: u32) -> String {
    format!("_shards/{id}/reduce/{bucket:05}")
}

fn reduce_done_key(id: &str, bucket: u32) -> String {
    format!("{}/done.json", reduce_dir(id, bucket))
}

/// An object a phase wrote, with its digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Obj {
    path: String,
    bytes: u64,
    sha256: String,
}

/// What the stage wrote (`done.json`, last): the rated parts per bucket, the numbered invoices and lines, the
/// FOCUS subscription names, and the mode and invoice date they were computed for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageDone {
    plan_id: String,
    mode: String,
    invoice_date: NaiveDate,
    rated: Vec<Obj>,
    invoices: Obj,
    lines: Obj,
    subscriptions: Obj,
}

/// What a reduce wrote (`done.json`, last): its detail and FOCUS rows and its per-invoice files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReduceDone {
    plan_id: String,
    bucket: u32,
    /// The SHA-256 of the stage's invoices this reduce was built from: a stage run again (say, for another
    /// invoice date) makes every earlier reduce stale.
    stage_invoices_sha256: String,
    detail: Obj,
    detail_period_column: Option<usize>,
    focus: Obj,
    focus_period_column: Option<usize>,
    /// (path below `marts/exports/`, object)
    files: Vec<(String, Obj)>,
}

fn upload(wh: &Warehouse, key: String, local: &Path) -> Result<Obj> {
    let (bytes, sha256) = wh.upload_file(&key, local)?;
    Ok(Obj { path: key, bytes, sha256 })
}

fn download(wh: &Warehouse, o: &Obj, local: &Path, rerun: &str) -> Result<()> {
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
    }
    let sha = if wh.download_file(&o.path, local)? { sha256_file(local)? } else { String::new() };
    if sha != o.sha256 {
        return Err(Failure::invariant(format!("`{}` is missing or changed since it was written: {rerun}", o.path)).into());
    }
    Ok(())
}

fn write_frame(df: &DataFrame, path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating `{}`", path.display()))?;
    ParquetWriter::new(f).finish(&mut df.clone()).map_err(|e| anyhow::anyhow!("writing `{}`: {e}", path.display()))?;
    Ok(())
}

fn read_frame(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).with_context(|| format!("reading `{}`", path.display()))?;
    ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("reading `{}`: {e}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(wh: &Warehouse, key: &str) -> Result<Option<T>> {
    match wh.read_file(key)? {
        Some(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading `{key}`"))?)),
        None => Ok(None),
    }
}

fn mode_name(mode: RunMode) -> &'static str {
    if mode == RunMode::Close { "close" } else { "nightly" }
}

/// The context and reference data of a stage or a reduce, as the commit will have them: change control's
/// approved versions, the policies with the invoice date, the mode.
fn period_context(cfg: Config, wh: &Warehouse, plan: &Plan, mode: RunMode, invoice_date: Option<NaiveDate>) -> Result<(Config, crate::change_control::Pinned, RunContext, RefFrames, Manifest)> {
    let period = plan.period()?;
    let mut m = Manifest::new(&format!("shard-{}", plan.plan_id), &plan.period, mode_name(mode), wh.url(), String::new());
    let (cfg, pinned) = crate::change_control::pin(cfg, wh, mode, &mut m)?;
    let refs = crate::run::load_reference(&cfg, period, &mut m)?;
    let ctx = RunContext { period, run_id: format!("shard-{}", plan.plan_id), mode, policies: cfg.policies(period, invoice_date) };
    Ok((cfg, pinned, ctx, refs, m))
}

fn bucketed(plan: &Plan, what: &str) -> Result<()> {
    if plan.buckets > 1 {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "plan {} has one bucket (`[run] buckets` of the config when planned): it has no {what}; commit it after its maps",
        plan.plan_id
    ))
    .into())
}

/// `shard stage`: everything up to the numbered invoices, once, and the rated parts split by bucket.
pub fn stage(w: &WarehouseArgs, id: &str, mode: ModeArg, invoice_date: Option<NaiveDate>) -> Result<()> {
    let cfg = config::load(&w.config)?;
    let wh = open(&cfg, w)?;
    let plan = read_plan(&wh, id)?;
    bucketed(&plan, "stage")?;
    refuse_missing(&wh, &plan)?;
    let mode: RunMode = mode.into();
    let (cfg, _pinned, ctx, refs, mut m) = period_context(cfg, &wh, &plan, mode, invoice_date)?;
    if let Some(done) = read_json::<StageDone>(&wh, &stage_done_key(id))? {
        if done.mode == mode_name(mode) && done.invoice_date == ctx.policies.invoice_date {
            println!("stage of plan {id} was already done");
            return Ok(());
        }
    }
    let adjustments = crate::late::adjustments_for(&cfg, &wh, &ctx, &mut m)?;
    let spool = spool(&cfg)?;
    let (inputs, _) = typed_inputs(&wh, &plan, &spool, &mut m)?;
    let mut timer = crate::manifest::Timer::new();
    let computed = crate::stages::compute(&ctx, &refs, inputs, Stop::Invoice, adjustments, &mut m, &mut timer, std::sync::Arc::clone(&spool), crate::stages::Tail::Whole)?;
    if let Some(f) = m.failures() {
        return Err(Failure::invariant(format!("plan {id} not staged: invariant violated:\n  {f}")).into());
    }
    let (invoices, lines, _) = computed.invoices.as_ref().context("the stage computed no invoices")?;
    let table = |name: &str| -> Result<LazyFrame> {
        match computed.tables.iter().find(|(t, _, _)| *t == name).map(|(_, _, d)| d) {
            Some(crate::stages::TableData::Spool(t)) => t.scan(),
            _ => Err(anyhow::anyhow!("the stage has no spooled `{name}`")),
        }
    };
    let rated = table(schemas::int_charges_rated::TABLE)?;
    let subs = crate::focus::subscription_names(table(schemas::stg_pc_daily_usage::TABLE)?, table(schemas::stg_pc_invoice_lines::TABLE)?)?;
    let dir = stage_dir(id);
    let mut rated_objs = Vec::new();
    for (k, customers) in crate::buckets::customers_by_bucket(invoices, plan.buckets)?.iter().enumerate() {
        let local = spool.path(&format!("stage/rated-{k:05}.parquet"))?;
        crate::spool::sink_parquet(crate::buckets::parts_of(rated.clone(), customers), &local, "the rated parts of a bucket")?;
        rated_objs.push(upload(&wh, format!("{dir}/rated-{k:05}.parquet"), &local)?);
        let _ = std::fs::remove_file(&local);
    }
    let small = |df: &DataFrame, name: &str| -> Result<Obj> {
        let local = spool.path(&format!("stage/{name}.parquet"))?;
        write_frame(df, &local)?;
        upload(&wh, format!("{dir}/{name}.parquet"), &local)
    };
    let done = StageDone {
        plan_id: id.to_string(),
        mode: mode_name(mode).to_string(),
        invoice_date: ctx.policies.invoice_date,
        rated: rated_objs,
        invoices: small(invoices, "invoices")?,
        lines: small(lines, "lines")?,
        subscriptions: small(&subs, "subscriptions")?,
    };
    wh.put_file(&stage_done_key(id), Bytes::from(serde_json::to_vec_pretty(&done)?))?;
    println!("stage of plan {id}: {} invoice(s) in {} bucket(s)", invoices.height(), plan.buckets);
    Ok(())
}

/// `shard reduce`: one bucket's detail, FOCUS rows and per-invoice files (`buckets::run_bucket`).
pub fn reduce(w: &WarehouseArgs, id: &str, bucket: u32) -> Result<()> {
    let cfg = config::load(&w.config)?;
    let wh = open(&cfg, w)?;
    let plan = read_plan(&wh, id)?;
    bucketed(&plan, "reduce")?;
    if bucket >= plan.buckets {
        return Err(Failure::usage(format!("plan {id} has {} buckets, numbered 0 to {}; there is no --bucket {bucket}", plan.buckets, plan.buckets - 1)).into());
    }
    refuse_unstaged(&wh, &plan)?;
    let sd: StageDone = read_json(&wh, &stage_done_key(id))?.context("the stage's done.json vanished")?;
    if let Some(done) = read_json::<ReduceDone>(&wh, &reduce_done_key(id, bucket))? {
        if done.stage_invoices_sha256 == sd.invoices.sha256 {
            println!("reduce {bucket} of plan {id} was already done");
            return Ok(());
        }
    }
    let mode = if sd.mode == "close" { RunMode::Close } else { RunMode::Nightly };
    let (cfg, _pinned, ctx, refs, _m) = period_context(cfg, &wh, &plan, mode, Some(sd.invoice_date))?;
    let spool = spool(&cfg)?;
    let rerun = format!("delete `{}` and run `cspbill shard stage --plan {id}` again", stage_done_key(id));
    let local = |name: &str| spool.path(&format!("stage/{name}"));
    let rated_obj = sd.rated.get(bucket as usize).with_context(|| format!("the stage has no rated parts for bucket {bucket}"))?;
    download(&wh, rated_obj, &local("rated.parquet")?, &rerun)?;
    download(&wh, &sd.invoices, &local("invoices.parquet")?, &rerun)?;
    download(&wh, &sd.lines, &local("lines.parquet")?, &rerun)?;
    download(&wh, &sd.subscriptions, &local("subscriptions.parquet")?, &rerun)?;
    let all_invoices = read_frame(&local("invoices.parquet")?)?;
    let groups = crate::buckets::customers_by_bucket(&all_invoices, plan.buckets)?;
    let customers = &groups[bucket as usize];
    let invoices = crate::buckets::invoices_of(&all_invoices, customers)?;
    let lines = crate::buckets::lines_of(&read_frame(&local("lines.parquet")?)?, customers)?;
    let subs = read_frame(&local("subscriptions.parquet")?)?;
    let docs = crate::documents::DocInputs::from_frames(Some(&refs.customers), Some(&refs.tag_rules))?;
    let issuer = crate::exports::Issuer::from(&cfg.partner);
    let dir = spool.path(&format!("reduce/{bucket:05}/"))?;
    let out = crate::buckets::run_bucket(
        crate::buckets::BucketInput { ctx: &ctx, rated: crate::spool::scan(&local("rated.parquet")?)?, invoices: &invoices, lines: &lines, subs: &subs, issuer: &issuer, docs: &docs },
        &dir,
    )?;
    let rd = reduce_dir(id, bucket);
    let mut files = Vec::with_capacity(out.files.len());
    for (rel, path) in &out.files {
        files.push((rel.clone(), upload(&wh, format!("{rd}/files/{rel}"), path)?));
    }
    let done = ReduceDone {
        plan_id: id.to_string(),
        bucket,
        stage_invoices_sha256: sd.invoices.sha256.clone(),
        detail: upload(&wh, format!("{rd}/detail.parquet"), &out.detail.path)?,
        detail_period_column: out.detail.period_column,
        focus: upload(&wh, format!("{rd}/focus.parquet"), &out.focus.path)?,
        focus_period_column: out.focus.period_column,
        files,
    };
    wh.put_file(&reduce_done_key(id, bucket), Bytes::from(serde_json::to_vec_pretty(&done)?))?;
    println!("reduce {bucket} of plan {id}: {} invoice(s), {} file(s)", invoices.height(), done.files.len());
    Ok(())
}

/// The reduces of a plan whose `done.json` is missing.
pub fn missing_reduces(wh: &Warehouse, plan: &Plan) -> Result<Vec<u32>> {
    missing_done(wh, &format!("_shards/{}/reduce/", plan.plan_id), 0..plan.buckets, |k| reduce_done_key(&plan.plan_id, k))
}

/// For the commit: bucket `k`'s finished work, downloaded into `dir` and checked against its digests.
pub(crate) fn fetch_bucket(wh: &Warehouse, plan: &Plan, k: u32, dir: &Path, period: Period) -> Result<crate::buckets::BucketOutput> {
    let id = &plan.plan_id;
    let done: ReduceDone = read_json(wh, &reduce_done_key(id, k))?
        .ok_or_else(|| Failure::invariant(format!("reduce {k} of plan {id} is not done: run `cspbill shard reduce --plan {id} --bucket {k}`")))?;
    let rerun = format!("delete `{}` and run `cspbill shard reduce --plan {id} --bucket {k}` again", reduce_done_key(id, k));
    let sd: StageDone = read_json(wh, &stage_done_key(id))?.with_context(|| format!("plan {id} is not staged"))?;
    if done.stage_invoices_sha256 != sd.invoices.sha256 {
        return Err(Failure::invariant(format!(
            "reduce {k} of plan {id} was built from an earlier stage (the plan was staged again since): run `cspbill shard reduce --plan {id} --bucket {k}` again; nothing was published"
        ))
        .into());
    }
    let (detail, focus) = (dir.join("detail.parquet"), dir.join("focus.parquet"));
    download(wh, &done.detail, &detail, &rerun)?;
    download(wh, &done.focus, &focus, &rerun)?;
    let mut files = Vec::with_capacity(done.files.len());
    for (rel, o) in &done.files {
        let local = dir.join("files").join(rel);
        download(wh, o, &local, &rerun)?;
        files.push((rel.clone(), local));
    }
    Ok(crate::buckets::BucketOutput {
        detail: crate::spool::SpoolTable { path: detail, period_column: done.detail_period_column, period },
        focus: crate::spool::SpoolTable { path: focus, period_column: done.focus_period_column, period },
        files,
    })
}

/// For the commit: the invoices and lines it computed must be the ones the stage numbered for the reduces
/// (the same inputs, reference data, mode and invoice date); else the reduces' files are of other invoices.
pub(crate) fn verify_stage(wh: &Warehouse, plan: &Plan, invoices: &DataFrame, lines: &DataFrame, spool: &Spool) -> Result<()> {
    let id = &plan.plan_id;
    let sd: StageDone = read_json(wh, &stage_done_key(id))?.with_context(|| format!("plan {id} is not staged"))?;
    let rerun = format!("delete `{}` and run `cspbill shard stage --plan {id}` again", stage_done_key(id));
    let (a, b) = (spool.path("stage-check/invoices.parquet")?, spool.path("stage-check/lines.parquet")?);
    download(wh, &sd.invoices, &a, &rerun)?;
    download(wh, &sd.lines, &b, &rerun)?;
    if !read_frame(&a)?.equals_missing(invoices) || !read_frame(&b)?.equals_missing(lines) {
        return Err(Failure::invariant(format!(
            "plan {id}: the commit's invoices differ from those the stage numbered for the reduces (it was staged for mode `{}` and invoice date {}; reference data may have changed since): stage and reduce again with the commit's --mode and --invoice-date, or commit with the stage's; nothing was published",
            sd.mode, sd.invoice_date
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_the_period_and_a_digest_of_the_inputs() {
        let files = vec![PlanFile { path: "a.csv".into(), objects: vec![PlanObject { path: "a.csv".into(), bytes: 3, sha256: "ab".repeat(32) }] }];
        let id = plan_id("2025-06", &files, 1).unwrap();
        assert!(parse_plan_id(&id).is_ok(), "{id}");
        assert!(id.starts_with("2025-06-"));
        assert_eq!(id, plan_id("2025-06", &files.clone(), 1).unwrap());
        assert_ne!(id, plan_id("2025-06", &files, 4).unwrap(), "the bucket count is part of the plan");
        let mut changed = files.clone();
        changed[0].objects[0].sha256 = "cd".repeat(32);
        assert_ne!(id, plan_id("2025-06", &changed, 1).unwrap());
        assert_ne!(id, plan_id("2025-07", &files, 1).unwrap());
    }

    #[test]
    fn plan_ids_are_checked() {
        for bad in ["", "2025-06", "2025-13-0123456789abcdef", "2025-06-0123456789ABCDEF", "2025-06-0123456789abcde", "2025-06_0123456789abcdef", "../../x/0123456789abcdef"] {
            assert!(parse_plan_id(bad).is_err(), "{bad}");
        }
        assert!(parse_plan_id("2025-06-0123456789abcdef").is_ok());
    }
}
