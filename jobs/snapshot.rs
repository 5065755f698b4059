//! A period's snapshot staged: every input file parsed once into the run's spool, row keys bucketed for
//! occurrence numbers and cross-file duplicates, staged and rejected rows written as the tables they will be
//! published as, and per-file statistics that balance (DESIGN §4.1, §6). Reading and detecting one file is
//! `crate::inputs`; the typing stage is `pipeline::ingest`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pipeline::Period;
use pipeline::decimal::{any_to_decimal, column_sum};
use pipeline::ingest::{self, StageOptions};
use polars::prelude::*;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::inputs::{FileStats, Loaded, Snapshot, SnapshotPaths, SourceKind, display_name, load};
use crate::spool::{Spool, SpoolTable};

/// Buckets of the row-key spool: the occurrence and duplicate steps load one bucket at a time, so their memory is
/// a sixteenth of the month's keys (28 bytes a row), not the month.
const KEY_BUCKETS: usize = 16;
/// One row-key record: key (16 bytes), input index (u32), line number (i64).
const KEY_RECORD: usize = 28;

/// The row keys of one source kind, spooled to `KEY_BUCKETS` files by the key's first byte.
struct KeySpool {
    writers: Vec<std::io::BufWriter<File>>,
    paths: Vec<PathBuf>,
}

impl KeySpool {
    fn new(spool: &Spool, kind: SourceKind) -> Result<Self> {
        let mut writers = Vec::new();
        let mut paths = Vec::new();
        for b in 0..KEY_BUCKETS {
            let p = spool.path(&format!("keys/{}/{b:02}.bin", kind.tag()))?;
            writers.push(std::io::BufWriter::new(File::create(&p).with_context(|| format!("creating `{}`", p.display()))?));
            paths.push(p);
        }
        Ok(Self { writers, paths })
    }

    /// Streams the (row key, line number) of a file's staged rows into the buckets.
    fn add(this: &Arc<std::sync::Mutex<Self>>, keyed: LazyFrame, input: u32, name: &str) -> Result<()> {
        use std::io::Write;
        let target = Arc::clone(this);
        let sink = keyed
            .select([col(ingest::ROW_KEY), col("line_number")])
            .sink_batches(
                PlanCallback::new(move |df: DataFrame| {
                    let keys = df.column(ingest::ROW_KEY)?.binary()?.clone();
                    let lines = df.column("line_number")?.i64()?.clone();
                    let mut ks = target.lock().map_err(|_| polars_err!(ComputeError: "key spool lock poisoned"))?;
                    for (k, l) in keys.iter().zip(lines.iter()) {
                        let (Some(k), Some(l)) = (k, l) else { continue };
                        if k.len() != 16 {
                            polars_bail!(ComputeError: "row key of {} bytes", k.len());
                        }
                        let w = &mut ks.writers[k[0] as usize % KEY_BUCKETS];
                        let mut rec = [0u8; KEY_RECORD];
                        rec[..16].copy_from_slice(k);
                        rec[16..20].copy_from_slice(&input.to_le_bytes());
                        rec[20..].copy_from_slice(&l.to_le_bytes());
                        w.write_all(&rec).map_err(|e| polars_err!(ComputeError: "writing the key spool: {e}"))?;
                    }
                    Ok(false)
                }),
                true,
                None,
            )
            .map_err(|e| anyhow::anyhow!("reading the row keys of `{name}`: {e}"))?;
        sink.collect_with_engine(Engine::Streaming).map_err(|e| anyhow::anyhow!("reading the row keys of `{name}`: {e}"))?;
        Ok(())
    }

    /// Per input: occurrence numbers of rows whose key repeats in that input (line → occurrence ≥ 2), and the
    /// lines whose `line_id` (key, occurrence) an earlier input already delivered (duplicates). One bucket in
    /// memory at a time.
    fn resolve(self) -> Result<(HashMap<u32, HashMap<i64, i64>>, HashMap<u32, HashSet<i64>>)> {
        use std::io::Write;
        let mut occ: HashMap<u32, HashMap<i64, i64>> = HashMap::new();
        let mut dup: HashMap<u32, HashSet<i64>> = HashMap::new();
        for (mut w, p) in self.writers.into_iter().zip(&self.paths) {
            w.flush().with_context(|| format!("writing `{}`", p.display()))?;
            drop(w);
            let bytes = std::fs::read(p).with_context(|| format!("reading `{}`", p.display()))?;
            let mut rows: Vec<([u8; 16], u32, i64)> = bytes
                .chunks_exact(KEY_RECORD)
                .map(|r| {
                    let mut k = [0u8; 16];
                    k.copy_from_slice(&r[..16]);
                    let mut i = [0u8; 4];
                    i.copy_from_slice(&r[16..20]);
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&r[20..]);
                    (k, u32::from_le_bytes(i), i64::from_le_bytes(l))
                })
                .collect();
            drop(bytes);
            let _ = std::fs::remove_file(p);
            rows.sort_unstable();
            let mut s = 0;
            while s < rows.len() {
                let mut e = s;
                while e < rows.len() && rows[e].0 == rows[s].0 {
                    e += 1;
                }
                // Rows of one key, by input then line: occurrence counts within an input; a (key, occurrence)
                // some earlier input reached is a duplicate.
                let mut most_before = 0i64;
                let mut i = s;
                while i < e {
                    let input = rows[i].1;
                    let mut n = 0i64;
                    while i < e && rows[i].1 == input {
                        n += 1;
                        let line = rows[i].2;
                        if n > 1 {
                            occ.entry(input).or_default().insert(line, n);
                        }
                        if n <= most_before {
                            dup.entry(input).or_default().insert(line);
                        }
                        i += 1;
                    }
                    most_before = most_before.max(n);
                }
                s = e;
            }
        }
        Ok((occ, dup))
    }
}

/// Reads the files of a period's snapshot (from [`list_snapshot`]) into staged and rejected rows, in a spool of
/// its own (see [`read_snapshot_in`]).
pub fn read_snapshot(files: &[PathBuf], period: Period) -> Result<Snapshot> {
    read_snapshot_in(files, period, Spool::new(None)?, None)
}

/// Reads the files of a period's snapshot into staged and rejected rows, streaming file by file through `spool`.
///
/// Each input is parsed once: its typed rows (every staged column, the reject decision, the row key) are sunk to
/// a spool file by Polars' streaming engine. From that file come the per-file counts, the row keys (spooled in
/// buckets, see [`KeySpool`]), the rejects and, once occurrences and duplicates are known, the staged rows with
/// their `line_id`: one Parquet file per source kind. Billed daily usage wins over unbilled: when any usage file
/// is billed, unbilled usage files are set aside (counted, with a warning). Rows whose `line_id` an earlier file
/// (in the given order) already delivered are removed and counted as duplicates; rows dated in another period are
/// set aside and counted. The counts of what was staged and rejected are read back from the written files, so the
/// conservation check compares independent numbers. A file that cannot be read at all is an error naming it
/// (exit 2).
/// With `customers` (`stg_customers`), the staged rows' `customer_id` is written in the spelling of
/// `customers.csv` (matched case-insensitively; `line_id` keeps hashing the export's own text).
pub fn read_snapshot_in(files: &[PathBuf], period: Period, spool: Arc<Spool>, customers: Option<&DataFrame>) -> Result<Snapshot> {
    let units = load_units(files, period)?
        .into_iter()
        .map(|l| {
            let typed = Typed::Plan(ingest::typed_rows(l.raw, &l.opts)?);
            Ok(TypedInput { stats: l.stats, kind: l.kind, opts: l.opts, billed: l.billed, typed })
        })
        .collect::<Result<Vec<_>>>()?;
    stage_inputs(units, period, spool, customers)
}

/// Where a run's Partner Center inputs come from: the period's snapshot folder, or the inputs a sharded run's map
/// shards typed (`crate::shard`), with the snapshot location they were planned from.
pub enum Inputs {
    Folder(PathBuf),
    Typed { location: String, inputs: Vec<TypedInput> },
}

/// The typed rows of one input: a plan still to run (a run reading its snapshot folder), or a Parquet file a
/// map shard already wrote (`crate::shard`), which is the same plan's output.
pub enum Typed {
    Plan(LazyFrame),
    File(PathBuf),
}

/// One input (a file, or one blob of a v2 export) with its typed rows, ready for [`stage_inputs`].
pub struct TypedInput {
    pub stats: FileStats,
    pub kind: SourceKind,
    pub opts: StageOptions,
    /// For usage: whether the file is billed (its first row carries an `InvoiceNumber`).
    pub billed: bool,
    pub typed: Typed,
}

/// Reads the files of a snapshot (pre-scanned in parallel, errors reported in the files' order), each named as
/// its rows' `source_file` will be: the file name, prefixed with its parent folder where two names collide.
pub(crate) fn load_units(files: &[PathBuf], period: Period) -> Result<Vec<Loaded>> {
    // Each file's pre-scan (record boundaries, limits, UTF-8, SHA-256) is a sequential pass over its bytes: the
    // files are pre-scanned in parallel (file-level fan-out), and errors reported in the files' order.
    let by_file: Vec<Result<Vec<Loaded>>> = crate::fanout::map(files, |f| load(f, period));
    let mut loaded: Vec<Loaded> = Vec::new();
    for l in by_file {
        loaded.extend(l?);
    }
    let colliding = colliding_names(loaded.iter().map(|l| l.stats.name.as_str()));
    for l in loaded.iter_mut() {
        rename_if_colliding(l, &colliding);
    }
    Ok(loaded)
}

/// The input names that more than one input of a snapshot carries.
pub(crate) fn colliding_names<'a>(names: impl Iterator<Item = &'a str>) -> HashSet<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for n in names {
        *seen.entry(n).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k.to_string()).collect()
}

/// `source_file` must tell files apart: an input whose name collides is prefixed with its parent folder.
pub(crate) fn rename_if_colliding(l: &mut Loaded, colliding: &HashSet<String>) {
    if colliding.contains(&l.stats.name) {
        let parent = l.stats.path.parent().map(display_name).unwrap_or_default();
        l.stats.name = format!("{parent}/{}", l.stats.name);
        let name = l.stats.name.clone();
        l.raw = l.raw.clone().with_column(lit(name).alias("source_file"));
    }
}

/// Stages typed inputs (in the snapshot's order) into staged and rejected rows, as [`read_snapshot_in`] says;
/// `crate::shard` calls it with the inputs its map shards typed.
pub fn stage_inputs(inputs: Vec<TypedInput>, period: Period, spool: Arc<Spool>, customers: Option<&DataFrame>) -> Result<Snapshot> {
    let loaded = inputs;
    let any_billed = loaded.iter().any(|l| l.kind == SourceKind::DailyUsage && l.billed);
    let mut stats: Vec<FileStats> = Vec::new();
    let mut typed_files: Vec<(u32, SourceKind, PathBuf, StageOptions)> = Vec::new();
    let mut keys: HashMap<SourceKind, Arc<std::sync::Mutex<KeySpool>>> = HashMap::new();
    for (idx, l) in loaded.into_iter().enumerate() {
        let idx = idx as u32;
        let mut st = l.stats;
        let kind = l.kind;
        let set_aside = kind == SourceKind::DailyUsage && !l.billed && any_billed;
        let counts = if set_aside {
            let typed = match l.typed {
                Typed::Plan(lf) => lf,
                Typed::File(p) => crate::spool::scan(&p)?,
            };
            crate::spool::collect(ingest::file_counts(typed, kind, period), "ingest counts")?
        } else {
            let path = match l.typed {
                Typed::Plan(typed) => {
                    let path = spool.path(&format!("typed/{}-{idx:05}.parquet", kind.tag()))?;
                    crate::spool::sink_parquet(typed, &path, &format!("typing `{}`", st.name))?;
                    path
                }
                Typed::File(p) => p,
            };
            let t = crate::spool::scan(&path)?;
            let ks = match keys.get(&kind) {
                Some(k) => Arc::clone(k),
                None => {
                    let k = Arc::new(std::sync::Mutex::new(KeySpool::new(&spool, kind)?));
                    keys.insert(kind, Arc::clone(&k));
                    k
                }
            };
            KeySpool::add(&ks, ingest::staged_rows(t.clone(), kind, period), idx, &st.name)?;
            typed_files.push((idx, kind, path, l.opts.clone()));
            crate::spool::collect(ingest::file_counts(t, kind, period), "ingest counts")?
        };
        let int = |c: &str| -> Result<u64> { Ok(counts.column(c)?.i64()?.get(0).unwrap_or(0) as u64) };
        let dec = |c: &str| -> Result<Decimal> { column_sum(&counts, c).map_err(Into::into) };
        st.rows_in = int("rows_in")?;
        st.cost_in = dec("cost_in")?;
        st.rounded_values = int("rounded_values")?;
        st.padded_sku_ids = int("padded_sku_ids")?;
        if st.rounded_values > 0 {
            st.warnings.push(format!(
                "`{}`: {} value(s) with more than 18 decimal places rounded half-even to 18",
                st.name, st.rounded_values
            ));
        }
        if st.padded_sku_ids > 0 {
            st.warnings.push(format!(
                "`{}`: {} SkuId(s) that a spreadsheet stripped of leading zeros padded to 4 characters",
                st.name, st.padded_sku_ids
            ));
        }
        if !st.unknown_columns.is_empty() {
            st.warnings.push(format!(
                "`{}`: {} column(s) not used: {}",
                st.name,
                st.unknown_columns.len(),
                st.unknown_columns.iter().take(20).map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        if set_aside {
            st.set_aside = st.rows_in;
            st.cost_set_aside = st.cost_in;
            st.warnings.push(format!(
                "`{}`: unbilled daily usage set aside because the snapshot has billed daily usage for the period",
                st.name
            ));
        } else {
            st.other_period = int("other_period")?;
            st.cost_other_period = dec("cost_other_period")?;
            if st.other_period > 0 {
                let first = counts.column("first_other_period")?.str()?.get(0).unwrap_or("?").to_string();
                let last = counts.column("last_other_period")?.str()?.get(0).unwrap_or("?").to_string();
                let range = if first == last { first } else { format!("{first} to {last}") };
                st.warnings.push(format!(
                    "`{}`: {} row(s) dated in another period ({range}) set aside: a daily-usage row belongs to the period of its UsageDate; they are billed by that period's run when its snapshot holds them",
                    st.name, st.other_period
                ));
            }
        }
        tracing::debug!(file = %st.name, rows_in = st.rows_in, set_aside, "input typed");
        stats.push(st);
    }

    let mut frames: HashMap<SourceKind, (LazyFrame, LazyFrame, SpoolTable, SpoolTable)> = HashMap::new();
    for kind in [SourceKind::DailyUsage, SourceKind::InvoiceLines] {
        let (occ, dup) = match keys.remove(&kind) {
            Some(k) => {
                let k = Arc::try_unwrap(k)
                    .map_err(|_| anyhow::anyhow!("key spool still shared"))?
                    .into_inner()
                    .map_err(|_| anyhow::anyhow!("key spool lock poisoned"))?;
                k.resolve()?
            }
            None => Default::default(),
        };
        let mut staged_parts = Vec::new();
        let mut reject_parts = Vec::new();
        for (idx, _, path, opts) in typed_files.iter().filter(|t| t.1 == kind) {
            let t = crate::spool::scan(path)?;
            let o = Arc::new(occ.get(idx).cloned().unwrap_or_default());
            let d = Arc::new(dup.get(idx).cloned().unwrap_or_default());
            if !d.is_empty() {
                // Duplicates: counted from the typed rows they are removed from.
                let lines: Vec<i64> = d.iter().copied().collect();
                let df = crate::spool::collect(
                    ingest::staged_rows(t.clone(), kind, period)
                        .filter(col("line_number").is_in(lit(Series::new("d".into(), lines)).implode(false), false))
                        .select([len().cast(DataType::Int64).alias("n"), col(kind.cost_column()).sum().alias("cost")]),
                    "duplicate counts",
                )?;
                if let Some(st) = stats.get_mut(*idx as usize) {
                    st.duplicates = df.column("n")?.i64()?.get(0).unwrap_or(0) as u64;
                    st.cost_duplicates = column_sum(&df, "cost")?;
                    st.warnings.push(format!(
                        "`{}`: {} row(s) already delivered by an earlier file removed as duplicates",
                        st.name, st.duplicates
                    ));
                }
            }
            staged_parts.push(ingest::with_line_ids(ingest::staged_rows(t.clone(), kind, period), kind, o, d));
            reject_parts.push(ingest::rejected_rows(t, opts));
        }
        let staged_path = spool.path(&format!("staged/{}.parquet", kind.tag()))?;
        let rejects_path = spool.path(&format!("rejects/{}.parquet", kind.tag()))?;
        let mut staged = concat_or_empty(staged_parts, kind.schema())?;
        if let Some(c) = customers {
            staged = pipeline::reference::customer_spelling(staged, c, "customer_id");
        }
        let staged_t = crate::spool::sink_table(staged, &staged_path, kind.table(), period)?;
        let rejects = concat_or_empty(reject_parts, kind.rejects_schema())?;
        let rejects_t = crate::spool::sink_table(rejects, &rejects_path, kind.rejects_table(), period)?;
        // What was written, read back per file: the staged and rejected side of conservation.
        let staged_lf = staged_t.scan()?;
        let rejects_lf = rejects_t.scan()?;
        let written = read_counts(&per_file(staged_lf.clone(), kind.cost_column())?)?;
        let rejected = read_counts(&per_file(rejects_lf.clone(), "billing_pre_tax_total")?)?;
        for st in stats.iter_mut().filter(|s| s.kind == Some(kind)) {
            if let Some((n, c)) = written.get(&st.name) {
                st.staged = *n;
                st.cost_staged = *c;
            }
            if let Some((n, c)) = rejected.get(&st.name) {
                st.rejected = *n;
                st.cost_rejected = *c;
            }
        }
        frames.insert(kind, (staged_lf, rejects_lf, staged_t, rejects_t));
    }
    let (usage, rejects_usage, usage_path, rejects_usage_path) = frames.remove(&SourceKind::DailyUsage).context("daily usage frames")?;
    let (invoice_lines, rejects_invoice, invoice_path, rejects_invoice_path) =
        frames.remove(&SourceKind::InvoiceLines).context("invoice line frames")?;
    tracing::info!(files = stats.len(), "snapshot read");
    Ok(Snapshot {
        usage,
        invoice_lines,
        rejects_usage,
        rejects_invoice,
        files: stats,
        paths: SnapshotPaths { usage: usage_path, invoice_lines: invoice_path, rejects_usage: rejects_usage_path, rejects_invoice: rejects_invoice_path },
        spool,
    })
}

/// SHA-256 of a file, streamed (lower-case hex).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn concat_or_empty(frames: Vec<LazyFrame>, schema: Schema) -> Result<LazyFrame> {
    if frames.is_empty() {
        return Ok(DataFrame::empty_with_schema(&schema).lazy());
    }
    Ok(concat(frames, UnionArgs { parallel: false, rechunk: false, ..Default::default() })?)
}

/// Per `source_file`: (rows, Σ cost) of a frame, collected with the streaming engine.
fn per_file(lf: LazyFrame, cost: &str) -> Result<DataFrame> {
    crate::spool::collect(
        lf.group_by([col("source_file")]).agg([len().cast(DataType::Int64).alias("n"), col(cost).sum().alias("cost")]),
        "per-file counts",
    )
}

fn read_counts(df: &DataFrame) -> Result<BTreeMap<String, (u64, Decimal)>> {
    let files = df.column("source_file")?.str()?.clone();
    let n = df.column("n")?.i64()?.clone();
    let cost = df.column("cost")?;
    let mut out = BTreeMap::new();
    for i in 0..df.height() {
        let f = files.get(i).unwrap_or_default().to_string();
        let c = any_to_decimal(&cost.get(i)?).unwrap_or_default();
        out.insert(f, (n.get(i).unwrap_or(0) as u64, c));
    }
    Ok(out)
}
