//! The run's spool: a private local folder of Parquet files that the stages stream into and out of, so that no
//! stage holds a month in memory. A run sinks each big table (typed input rows, staged rows, charges, allocated and
//! rated parts, invoice detail) here with Polars' streaming engine, the next stage scans it, and the warehouse
//! uploads the finished files from here (multipart, hashed while read). Small tables (rules, aggregates, invoice
//! lines) stay `DataFrame`s. The folder is removed when the run ends, however it ends.
//!
//! Where: `[run] spool_dir` in `cspbill.toml`, else `CSPBILL_SPOOL`, else the system temporary folder. It needs
//! about the size of the month's staged Parquet, a fraction of its CSV.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use pipeline::Period;
use polars::prelude::*;

/// Rows per Parquet row group of every file cspbill writes: fixed, so the same rows give the same bytes whatever
/// the batch sizes of the streaming engine (byte-identical re-runs). Small, because the streaming engine holds
/// whole row groups in flight on both ends of a plan (the sink gathers a row group per morsel, several in flight;
/// the scan of the previous stage's file decodes several ahead): with 122,880 rows (DuckDB's default) the sink of
/// `int_charges_allocated` (1.1 KB a row in memory) peaked at 3.4 GB of heap on a 3M-row month, with 8,192 at
/// 1.2 GB, and no stage got slower (benches/README.md, "Memory by plan").
pub const ROW_GROUP_ROWS: usize = 8_192;

/// A spool folder, removed on drop.
#[derive(Debug)]
pub struct Spool {
    dir: tempfile::TempDir,
}

impl Spool {
    /// A fresh spool below `base` (or `CSPBILL_SPOOL`, or the system temporary folder).
    pub fn new(base: Option<&Path>) -> Result<Arc<Self>> {
        let env = std::env::var_os("CSPBILL_SPOOL").map(PathBuf::from);
        let base = base.map(Path::to_path_buf).or(env);
        let mut b = tempfile::Builder::new();
        b.prefix("cspbill-spool-");
        let dir = match &base {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating the spool folder `{}`", d.display()))?;
                b.tempdir_in(d)
            }
            None => b.tempdir(),
        }
        .with_context(|| "creating the run's spool folder: set `[run] spool_dir` in cspbill.toml or CSPBILL_SPOOL to a writable local folder")?;
        // A killed run cannot remove its spool: each spool names its process, and a new run removes the spools
        // of processes that are gone on this host.
        let _ = std::fs::write(dir.path().join("pid"), std::process::id().to_string());
        if let Some(parent) = dir.path().parent() {
            sweep_dead_spools(parent, dir.path());
        }
        Ok(Arc::new(Self { dir }))
    }

    /// A path in the spool (its parent folders created).
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
        }
        Ok(p)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes `cspbill-spool-*` folders in `parent` whose `pid` file names a process that no longer runs here.
fn sweep_dead_spools(parent: &Path, own: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let is_spool = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cspbill-spool-"));
        if !is_spool || path == own {
            continue;
        }
        let pid = std::fs::read_to_string(path.join("pid")).ok().and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
            && Path::new("/proc/self").exists()
        {
            tracing::debug!(spool = %path.display(), pid, "removing the spool of a run that is gone");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The Parquet options of every file cspbill writes: zstd, statistics, fixed row groups.
pub fn parquet_options() -> Arc<ParquetWriteOptions> {
    Arc::new(ParquetWriteOptions {
        compression: crate::warehouse::parquet_compression(),
        statistics: StatisticsOptions::full(),
        row_group_size: Some(ROW_GROUP_ROWS),
        data_page_size: None,
        key_value_metadata: None,
        arrow_schema: None,
        compat_level: None,
    })
}

/// Memory profile of the plans (`CSPBILL_MEM_PROBE=1`): a thread samples the heap (`RssAnon`) every 20 ms, and each
/// plan the spool runs logs the highest sample since the previous plan ended, so a rise is pinned to one plan.
/// Off by default; a diagnostic for benches/README.md, never part of a run's outcome.
pub fn mem_probe(what: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PEAK: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::Once = std::sync::Once::new();
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("CSPBILL_MEM_PROBE").is_some()) {
        return;
    }
    fn anon_mib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .unwrap_or(0)
            / 1024
    }
    START.call_once(|| {
        let _ = std::thread::Builder::new().name("mem-probe".into()).spawn(|| loop {
            PEAK.fetch_max(anon_mib(), Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
    });
    let peak = PEAK.swap(anon_mib(), Ordering::Relaxed);
    tracing::info!(plan = what, peak_anon_mib = peak, now_anon_mib = anon_mib(), "mem probe");
}

/// Streams a plan into a Parquet file (row order kept).
pub fn sink_parquet(lf: LazyFrame, path: &Path, what: &str) -> Result<()> {
    let target = PlRefPath::try_from_path(path).map_err(|e| anyhow::anyhow!("spool path `{}`: {e}", path.display()))?;
    // No common-subplan elimination: where a plan reads a spool file twice, reading it twice streams, while a
    // shared cache would hold the month.
    lf.with_comm_subplan_elim(false)
        .sink(
        SinkDestination::File { target: SinkTarget::Path(target) },
        FileWriteFormat::Parquet(parquet_options()),
        UnifiedSinkArgs::default(),
    )
    .and_then(|s| s.collect_with_engine(Engine::Streaming))
    .map_err(|e| stage_error(what, e))?;
    mem_probe(what);
    Ok(())
}

/// A lazy scan of a spool file.
pub fn scan(path: &Path) -> Result<LazyFrame> {
    let p = PlRefPath::try_from_path(path).map_err(|e| anyhow::anyhow!("spool path `{}`: {e}", path.display()))?;
    LazyFrame::scan_parquet(p, ScanArgsParquet::default())
        .map_err(|e| anyhow::anyhow!("scanning spool file `{}`: {e}", path.display()))
}

/// Collects a plan whose result is small (an aggregate, a filtered few rows) with the streaming engine, so that
/// the big input it reads is streamed, not loaded.
pub fn collect(lf: LazyFrame, what: &str) -> Result<DataFrame> {
    let df = lf
        .with_comm_subplan_elim(false)
        .collect_with_engine(Engine::Streaming)
        .map(|r| r.unwrap_single())
        .map_err(|e| stage_error(what, e));
    mem_probe(what);
    df
}

/// Several plans over shared inputs in one streaming run (each input is read once where Polars can share it).
pub fn collect_all(lfs: Vec<LazyFrame>, what: &str) -> Result<Vec<DataFrame>> {
    let plans = lfs.into_iter().map(|lf| lf.logical_plan).collect();
    let out = LazyFrame::collect_all_with_engine(plans, Engine::Streaming, OptFlags::default()).map_err(|e| stage_error(what, e));
    mem_probe(what);
    out
}

fn stage_error(what: &str, e: PolarsError) -> anyhow::Error {
    anyhow::Error::new(pipeline::PipelineError::Invariant { stage: "collect", message: format!("stage `{what}` failed: {e}; nothing was published: run again with `-v` to see the last file and stage, and report it with the inputs named there") })
}

/// Expression (Boolean, all true): fails the plan when a row's `period` is not `period`, naming the table: every
/// row of a table written for a period must belong to it (the period lives in the Hive path, not in the file).
fn period_guard(period: Period, table: &str) -> Expr {
    let want = period.to_string();
    let table = table.to_string();
    col(PERIOD).map(
        move |c: Column| {
            let s = c.cast(&DataType::String)?;
            let ca = s.str()?;
            if let Some(bad) = ca.iter().find(|v| *v != Some(want.as_str())) {
                polars_bail!(ComputeError: "table `{table}` has a row of period `{}` in a write for period {want}; every row must belong to the period written", bad.unwrap_or("null"));
            }
            Ok(BooleanChunked::full("ok".into(), true, ca.len()).into_column())
        },
        |_, _| Ok(Field::new("ok".into(), DataType::Boolean)),
    )
}

/// The Hive partition column.
pub const PERIOD: &str = "period";

/// A spooled table: its file (as it will be published: without the `period` column) and where that column goes
/// back when the table is read.
#[derive(Clone, Debug)]
pub struct SpoolTable {
    pub path: PathBuf,
    pub period_column: Option<usize>,
    pub period: Period,
}

impl SpoolTable {
    /// A scan of the table with its `period` column restored in place.
    pub fn scan(&self) -> Result<LazyFrame> {
        let lf = scan(&self.path)?;
        Ok(match self.period_column {
            None => lf,
            Some(i) => {
                let schema = lf
                    .clone()
                    .collect_schema()
                    .map_err(|e| anyhow::anyhow!("reading the schema of `{}`: {e}", self.path.display()))?;
                let mut cols: Vec<Expr> = schema.iter_names().map(|n| col(n.clone())).collect();
                cols.insert(i.min(cols.len()), lit(self.period.to_string()).alias(PERIOD));
                lf.select(cols)
            }
        })
    }
}

/// Streams a table's plan into the spool file it will be published from: every row checked to belong to
/// `period`, the `period` column dropped (the Hive path carries it).
pub fn sink_table(lf: LazyFrame, path: &Path, table: &str, period: Period) -> Result<SpoolTable> {
    let schema = lf.clone().collect_schema().map_err(|e| stage_error(table, e))?;
    let period_column = schema.index_of(PERIOD);
    let lf = match period_column {
        Some(_) => {
            let keep: Vec<Expr> = schema.iter_names().filter(|n| n.as_str() != PERIOD).map(|n| col(n.clone())).collect();
            lf.filter(period_guard(period, table)).select(keep)
        }
        None => lf,
    };
    sink_parquet(lf, path, table)?;
    Ok(SpoolTable { path: path.to_path_buf(), period_column, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_spool_removes_the_spools_of_runs_that_are_gone_and_keeps_live_ones() {
        let base = tempfile::tempdir().unwrap();
        // A process that has finished: its pid is free (and not reused this quickly).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = base.path().join("cspbill-spool-dead");
        let live = base.path().join("cspbill-spool-live");
        let other = base.path().join("not-a-spool");
        for (d, pid) in [(&dead, dead_pid), (&live, std::process::id()), (&other, dead_pid)] {
            std::fs::create_dir_all(d.join("typed")).unwrap();
            std::fs::write(d.join("pid"), pid.to_string()).unwrap();
        }
        let s = Spool::new(Some(base.path())).unwrap();
        assert!(!dead.exists(), "the dead run's spool is removed");
        assert!(live.exists(), "a live run's spool is kept");
        assert!(other.exists(), "folders that are not spools are left alone");
        assert!(s.dir().join("pid").exists());
        let own = s.dir().to_path_buf();
        drop(s);
        assert!(!own.exists(), "a spool is removed when its run ends");
    }
}
