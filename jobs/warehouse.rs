//! The warehouse: one root URL (a local folder, `s3://`, `az://`/`abfs://` or `gs://`) holding Hive-partitioned
//! Parquet tables, raw input files, run manifests and one commit pointer per period (DESIGN §3).
//!
//! Object stores have no atomic rename and no multi-object transaction, so a period is published with this
//! protocol (written up in docs/warehouse.md):
//!
//! 1. `begin` takes the period's lock `_locks/period=P.lock` with a conditional create. A live lock held by
//!    another run is exit 1; a stale one (its process is gone on this host, or it is older than the TTL) is broken.
//! 2. Every file of the run is written under a run-unique prefix `_data/period=P/<run>/<path>`: invisible to
//!    readers (no reader globs `_data/`), never overwritten, garbage when the run dies.
//! 3. `commit` creates **the commit point**: the pointer version `_commits/period=P/v<N+1>.json`, written with a
//!    conditional create (`PutMode::Create`), N being the version `begin` saw. Of two runs that both began at N,
//!    exactly one creates N+1; the other fails with exit 1. The pointer lists every file of the period (path,
//!    data path, rows, bytes, SHA-256) and carries the run manifest.
//! 4. After the commit point the run *publishes* for readers without cspbill: each file is copied to its Hive
//!    path `zone/TABLE/period=P/part-0.parquet` (one object per table and period, replaced by a single atomic
//!    PUT/copy, skipped when its bytes did not change), files of the previous version that the new one lacks are
//!    deleted, the manifest is written to `_runs/<run>.json`, and `_commits/period=P/v<N+1>.published` marks the
//!    step done. A run killed during this step is rolled forward by the next `begin` of the period (under the lock).
//! 5. Data of runs older than the previous committed one is deleted; the lock is released.
//!
//! cspbill itself reads through the pointer (`read_table` opens the immutable run-unique data file), so it sees
//! exactly one committed run. Readers that glob `zone/TABLE/*/*.parquet` never see a partial file or uncommitted
//! data, and never see two versions of one table-period at once; between tables they converge during step 4.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use pipeline::Period;
use polars::prelude::{
    Column, DataFrame, DataType, LazyFrame, ParquetCompression, ParquetReader, ParquetWriter,
    SerReader,
};
use schemas::Zone;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Failure, redact};

/// Default age after which a lock whose holder cannot be checked (another host) counts as stale.
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(6 * 3600);
/// The single data file of a table in one period: a fixed name, so a new run replaces it in one atomic step.
const PART_FILE: &str = "part-0.parquet";
/// The Hive partition column: in the path, never inside the file.
const PERIOD_COLUMN: &str = "period";
/// The file list of the latest published version of a period, for readers that need one consistent version:
/// `_commits/period=P/current.csv` (see `current_list`).
const CURRENT_LIST: &str = "current.csv";

/// A warehouse opened at a root URL. Owns a small tokio runtime and exposes a blocking API.
/// The compression of every Parquet file cspbill writes (tables, spool, per-invoice splits): zstd at level 1.
/// Level 3 (Polars' default) spent a tenth of a 1M-row close compressing, for files a few per cent smaller
/// (issue 10). Here, not in `spool.rs`, because the store-fault tests compile this file on its own.
pub fn parquet_compression() -> ParquetCompression {
    ParquetCompression::Zstd(polars_utils::compression::ZstdLevel::try_new(1).ok())
}

pub struct Warehouse {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    url: String,
    lock_ttl: Duration,
    /// The folder of a local warehouse: staging files a killed write leaves (`NAME#N`, which the local store
    /// neither lists nor deletes) are swept from it under the period's lock.
    local_root: Option<std::path::PathBuf>,
}

/// One committed version of a period: what `_commits/period=P/v<N>.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub period: String,
    /// 1 for the first commit of the period, then +1 per commit.
    pub version: u64,
    pub run_id: String,
    /// The run manifest, relative to the warehouse root (`_runs/<run>.json`), written when the commit is published.
    pub manifest: String,
    /// The manifest itself: carried in the pointer so the commit point is one object and `_runs/` only ever
    /// holds manifests of committed runs.
    pub manifest_json: serde_json::Value,
    /// A closed period is never rewritten: later data becomes adjustments of an open period.
    pub closed: bool,
    /// The run that was committed before this one, if any.
    pub previous_run: Option<String>,
    /// Every file of the period, sorted by `path`.
    pub files: Vec<FileEntry>,
}

/// One file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where readers find it, relative to the root (`marts/fct_invoices/period=2024-01/part-0.parquet`).
    pub path: String,
    /// The immutable run-unique copy (`_data/period=P/<run>/<path>`), what cspbill itself reads.
    pub data: String,
    /// Table name and zone, for tables; `None` for other files (exports).
    pub table: Option<String>,
    pub zone: Option<String>,
    pub rows: Option<u64>,
    pub bytes: u64,
    pub sha256: String,
    /// Position of the `period` column the file was written without, to restore it on read.
    pub period_column: Option<usize>,
}

/// What `write_table` wrote, for the run manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableOutput {
    pub table: String,
    pub zone: String,
    /// Published path relative to the root (Hive layout).
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The content of a period lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockInfo {
    run_id: String,
    host: String,
    pid: u32,
    /// RFC 3339, UTC.
    since: String,
}

/// A run of one period in progress: holds the period's lock until `commit` or drop.
pub struct Txn {
    wh: Arc<Inner>,
    period: Period,
    run_id: String,
    base: Option<Commit>,
    files: BTreeMap<String, FileEntry>,
    finished: bool,
    /// Set just before the commit pointer is written: from then on this run's data may be referenced by a
    /// committed pointer (a write can land although the store reported an error), so it is never deleted by
    /// this run; a later commit's garbage collection removes it if it stayed unreferenced.
    commit_attempted: bool,
    /// Set by `allow_closed_rewrite`: an erasure or a retention pass may write a new version of a closed period
    /// (with the same invoice figures, which they check); nothing else may.
    rewrite_closed: bool,
}

impl fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warehouse")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl fmt::Debug for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Txn")
            .field("period", &self.period)
            .field("run_id", &self.run_id)
            .field("files", &self.files.len())
            .finish()
    }
}

impl Warehouse {
    /// Opens the warehouse at `url` (a local folder or `s3://`, `az://`, `abfs://`, `gs://`) and checks that it is
    /// reachable. `options` are object_store configuration keys (`aws_endpoint_url`, `azure_storage_use_emulator`,
    /// `google_service_account`, `allow_http`, ...), added to the usual credential environment variables.
    /// Any problem is exit 2 naming the URL and what to check, after bounded retries for transient errors.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the warehouse I/O runtime")?;
        let store = build_store(url, options)?;
        let inner = Inner {
            rt,
            store,
            // Every message and log names the warehouse by this: no SAS token or password in it.
            url: redact(url),
            lock_ttl: DEFAULT_LOCK_TTL,
            local_root: local_dir(url).map(std::path::PathBuf::from),
        };
        // Reachability: listing the root fails for a missing bucket or container, bad credentials or a store
        // that is down (after the retries in `retry_config`), and succeeds on an empty warehouse.
        inner
            .rt
            .block_on(inner.store.list_with_delimiter(None))
            .map_err(|e| {
                Failure::usage(redact(&format!(
                    "cannot reach the warehouse `{}`: {e}; {}",
                    inner.url,
                    what_to_check(url)
                )))
            })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// A warehouse over a given store (for tests that wrap a store to inject faults).
    #[doc(hidden)]
    pub fn from_store(store: Arc<dyn ObjectStore>, url: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the warehouse I/O runtime")?;
        Ok(Self {
            inner: Arc::new(Inner {
                rt,
                store,
                url: redact(url),
                lock_ttl: DEFAULT_LOCK_TTL,
                local_root: local_dir(url).map(std::path::PathBuf::from),
            }),
        })
    }

    /// Sets the age after which a lock held by a process this host cannot check counts as stale.
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lock_ttl = ttl;
        }
        self
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Starts a run of a period: takes the period's lock and finishes publishing the last commit if a killed run
    /// left that step half done. Exit 1 when another live run holds the period. A closed period can be begun (to
    /// read it); its `Txn::previous()` says so, and `commit` refuses to rewrite it.
    pub fn begin(&self, period: Period, run_id: &str) -> Result<Txn> {
        check_segment("run id", run_id)?;
        let wh = &self.inner;
        if wh.get_opt(&format!("_runs/{run_id}.json"))?.is_some() {
            return Err(Failure::usage(format!(
                "run id `{run_id}` was used before (`_runs/{run_id}.json` exists in `{}`); give each run a new id",
                wh.url
            ))
            .into());
        }
        if let Some(h) = wh.try_lock(period, run_id)? {
            return Err(Failure::invariant(format!(
                "another run holds period {period} (run `{}`, process {} on `{}`, since {}); wait for it to finish, or if that process is gone, delete `{}` in warehouse `{}`",
                h.run_id, h.pid, h.host, h.since, lock_path(period), wh.url
            ))
            .into());
        }
        let mut txn = Txn {
            wh: Arc::clone(wh),
            period,
            run_id: run_id.to_string(),
            base: None,
            files: BTreeMap::new(),
            finished: false,
            commit_attempted: false,
            rewrite_closed: false,
        };
        // From here on, dropping `txn` on an error releases the lock.
        txn.base = wh.roll_forward(period)?;
        Ok(txn)
    }

    /// Completes what a killed run left of the period's latest commit, under the period's lock: the publication
    /// (Hive copies, `_runs/RUN.json`, the current file list, the `.published` marker) and, when it was killed
    /// after that, the cleanup (old run data, its lock). Every command that touches a period calls this first,
    /// so a killed close is repaired even by a re-run that then stops early because the period is closed, and
    /// `explain` never reads a half-published period. When another live run holds the lock, that run completes
    /// the work itself: nothing is done here. Returns whether anything was repaired.
    pub fn repair(&self, period: Period) -> Result<bool> {
        let wh = &self.inner;
        let latest = wh.latest(period)?;
        let unpublished = matches!(latest, Some((_, false)));
        // A lock left behind (a run killed after publishing, before its cleanup) is a cheap check otherwise.
        if !unpublished && wh.get_opt(&lock_path(period))?.is_none() {
            return Ok(false);
        }
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let run_id = format!("repair-{}-{nanos}", std::process::id());
        if let Some(h) = wh.try_lock(period, &run_id)? {
            if unpublished {
                tracing::warn!(period = %period, holder = %h.run_id, host = %h.host, pid = h.pid, since = %h.since,
                    "the latest commit of the period is not completely published and another run holds its lock: that run (or the first command after its lock goes stale) completes it");
            }
            return Ok(false);
        }
        let done = wh.roll_forward(period).and_then(|c| {
            if let Some(c) = c {
                let mut keep = BTreeSet::from([c.run_id.clone()]);
                keep.extend(c.previous_run.clone());
                wh.collect_garbage(period, &keep)?;
            }
            Ok(())
        });
        wh.release_lock(period, &run_id);
        done.map(|_| true)
    }

    /// The committed pointer of a period, if any.
    pub fn committed(&self, period: Period) -> Result<Option<Commit>> {
        Ok(self.inner.latest(period)?.map(|(c, _)| c))
    }

    /// Reads a committed table of a period (None when the period has no commit or the commit has no such table).
    /// Reads the run-unique file the pointer names, so it never sees a mix of runs.
    pub fn read_table(&self, table: &str, zone: Zone, period: Period) -> Result<Option<DataFrame>> {
        check_segment("table name", table)?;
        let Some(commit) = self.committed(period)? else {
            return Ok(None);
        };
        self.read_commit_table(&commit, table, zone)
    }

    /// Reads a table of one given commit: several tables read through one `Commit` come from one run. The data
    /// of a commit stays readable until two newer commits of the period exist.
    pub fn read_commit_table(
        &self,
        commit: &Commit,
        table: &str,
        zone: Zone,
    ) -> Result<Option<DataFrame>> {
        check_segment("table name", table)?;
        let period: Period = commit
            .period
            .parse()
            .map_err(|e| anyhow::anyhow!("commit pointer has a bad period: {e}"))?;
        let path = table_path(table, zone, period);
        let Some(entry) = commit.files.iter().find(|f| f.path == path) else {
            return Ok(None);
        };
        let bytes = self.inner.get(&entry.data)?;
        let actual = sha256_hex(&bytes);
        if actual != entry.sha256 {
            return Err(Failure::invariant(format!(
                "`{}` in warehouse `{}` has SHA-256 {actual}, but commit {} of period {period} recorded {}; the file was changed outside cspbill: re-run the period",
                entry.data, self.inner.url, commit.version, entry.sha256
            ))
            .into());
        }
        let mut df = ParquetReader::new(std::io::Cursor::new(bytes))
            .finish()
            .with_context(|| {
                format!(
                    "reading `{}` from warehouse `{}`",
                    entry.data, self.inner.url
                )
            })?;
        if let Some(idx) = entry.period_column {
            let col = Column::new(PERIOD_COLUMN.into(), vec![period.to_string(); df.height()]);
            df.insert_column(idx, col)
                .with_context(|| format!("restoring column `period` of `{table}`"))?;
        }
        Ok(Some(df))
    }

    /// Reads any file below the root (a manifest, an export), None when it does not exist.
    pub fn read_file(&self, rel_path: &str) -> Result<Option<Bytes>> {
        check_rel_path(rel_path, true)?;
        self.inner.get_opt(rel_path)
    }

    /// Streams a file below the root into a local file, chunk by chunk (memory stays at one chunk whatever the
    /// file's size); false when it does not exist. For the privacy jobs, which rewrite whole tables and raw files.
    pub fn download_file(&self, rel_path: &str, local: &std::path::Path) -> Result<bool> {
        use tokio::io::AsyncWriteExt;
        check_rel_path(rel_path, true)?;
        let wh = &self.inner;
        let p = store_path(rel_path)?;
        let store = Arc::clone(&wh.store);
        let local_owned = local.to_path_buf();
        let res: std::result::Result<bool, object_store::Error> = wh.block(async move {
            let r = match store.get(&p).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e),
            };
            let io = |e: std::io::Error| object_store::Error::Generic { store: "local", source: Box::new(e) };
            let mut f = tokio::fs::File::create(&local_owned).await.map_err(io)?;
            let mut s = r.into_stream();
            while let Some(chunk) = s.try_next().await? {
                f.write_all(&chunk).await.map_err(io)?;
            }
            f.flush().await.map_err(io)?;
            Ok(true)
        });
        res.map_err(|e| wh.store_err("reading", rel_path, e))
    }

    /// Creates a file below the root only if it does not exist yet (a conditional create, as the commit pointer
    /// is written): false when it already existed. For append-only logs and create-once records.
    pub fn create_file(&self, rel_path: &str, bytes: Bytes) -> Result<bool> {
        check_rel_path(rel_path, true)?;
        self.inner.put_create(rel_path, bytes)
    }

    /// Writes a file outside any commit (not under `_` folders or `raw/`) by one PUT, which object stores and
    /// the local store (a staging file renamed into place) apply atomically: a reader sees the old or the new
    /// file whole. For tables that are their own version, such as the parallel run's report (`jobs/compare.rs`).
    pub fn replace_file(&self, rel_path: &str, bytes: Bytes) -> Result<()> {
        check_rel_path(rel_path, false)?;
        self.inner.put_overwrite(rel_path, bytes)
    }

    /// Deletes a file below the root (nothing when it is absent).
    pub fn delete_file(&self, rel_path: &str) -> Result<()> {
        check_rel_path(rel_path, true)?;
        self.inner.delete(rel_path)
    }

    /// Every file below `prefix` (relative to the root; `""` for all), sorted, as paths relative to the root.
    pub fn list_files(&self, prefix: &str) -> Result<Vec<String>> {
        if !prefix.is_empty() {
            check_rel_path(prefix.trim_end_matches('/'), true)?;
        }
        self.inner.list(prefix)
    }

    /// Lands an input file unchanged at `raw/SOURCE/sha256=HEX/NAME`; false when it was already there.
    pub fn land_raw(&self, source: &str, name: &str, sha256: &str, bytes: Bytes) -> Result<bool> {
        let path = raw_path(source, name, sha256)?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(Failure::invariant(format!(
                "`{name}` has SHA-256 {actual}, not {sha256} as given; the file changed while it was read: re-run"
            ))
            .into());
        }
        self.inner.put_create(&path, bytes)
    }

    /// Lands an input file unchanged at `raw/SOURCE/sha256=HEX/NAME`, streamed from disk (multipart for big
    /// files) and hashed on the way; false when it was already there. A file whose bytes no longer hash to
    /// `sha256` (it changed since it was read) is removed again and fails the run.
    pub fn land_raw_file(&self, source: &str, name: &str, sha256: &str, local: &std::path::Path) -> Result<bool> {
        let path = raw_path(source, name, sha256)?;
        if self.inner.exists(&path)? {
            return Ok(false);
        }
        // Content-addressed: two runs landing the same file at once write the same bytes.
        let (_, actual) = self.inner.upload_file(&path, local)?;
        if actual != sha256 {
            let _ = self.inner.delete(&path);
            return Err(Failure::invariant(format!(
                "`{name}` has SHA-256 {actual}, not {sha256} as when it was read; the file changed during the run: re-run"
            ))
            .into());
        }
        Ok(true)
    }

    /// The manifests of every commit of a period, oldest first (paths relative to the root).
    pub fn list_manifests(&self, period: Period) -> Result<Vec<String>> {
        let wh = &self.inner;
        let mut out = Vec::new();
        for v in wh.versions(period)? {
            if let Some(c) = wh.read_version(period, v)? {
                out.push(c.manifest);
            }
        }
        Ok(out)
    }
}

impl Txn {
    pub fn period(&self) -> Period {
        self.period
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The commit this run builds on (the period's latest), if any; `closed` says the period must not be rewritten.
    pub fn previous(&self) -> Option<&Commit> {
        self.base.as_ref()
    }

    /// Writes one table of the period (zstd Parquet, without the `period` column, which the Hive path carries)
    /// under the run's private prefix. Published by `commit` at `zone/TABLE/period=P/part-0.parquet`.
    pub fn write_table(
        &mut self,
        table: &str,
        zone: Zone,
        df: &mut DataFrame,
    ) -> Result<TableOutput> {
        check_table_target(table, zone)?;
        let period = self.period;
        let period_column = df.get_column_index(PERIOD_COLUMN);
        let mut body = match period_column {
            Some(_) => {
                let values = df.column(PERIOD_COLUMN)?.cast(&DataType::String)?;
                let values = values.str()?;
                let want = period.to_string();
                if let Some(bad) = values.iter().find(|v| *v != Some(want.as_str())) {
                    return Err(Failure::invariant(format!(
                        "table `{table}` has a row of period `{}` in a write for period {period}; every row must belong to the period written",
                        bad.unwrap_or("null")
                    ))
                    .into());
                }
                df.drop(PERIOD_COLUMN)?
            }
            None => df.clone(),
        };
        let rows = body.height() as u64;
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf)
            .with_compression(parquet_compression())
            .finish(&mut body)
            .with_context(|| format!("encoding table `{table}` as Parquet"))?;
        let path = table_path(table, zone, period);
        let entry = self.stage(
            &path,
            Bytes::from(buf),
            Some((table, zone)),
            Some(rows),
            period_column,
        )?;
        Ok(TableOutput {
            table: table.to_string(),
            zone: zone.dir().to_string(),
            path,
            rows,
            bytes: entry.bytes,
            sha256: entry.sha256,
        })
    }

    /// Writes a table given as a lazy plan. The plan is collected in memory: a billing period's tables fit, and
    /// the file must be hashed and written whole anyway.
    pub fn write_table_lazy(
        &mut self,
        table: &str,
        zone: Zone,
        lf: LazyFrame,
    ) -> Result<TableOutput> {
        let mut df = lf
            .collect()
            .with_context(|| format!("computing table `{table}`"))?;
        self.write_table(table, zone, &mut df)
    }

    /// Writes a table spooled as a Parquet file (already without the `period` column, which was at
    /// `period_column`), streaming it to the run's private prefix and hashing it on the way. Published by `commit`
    /// at `zone/TABLE/period=P/part-0.parquet`.
    pub fn write_table_file(
        &mut self,
        table: &str,
        zone: Zone,
        local: &std::path::Path,
        period_column: Option<usize>,
    ) -> Result<TableOutput> {
        check_table_target(table, zone)?;
        let rows = {
            let f = std::fs::File::open(local)
                .with_context(|| format!("opening the spooled table `{}`", local.display()))?;
            ParquetReader::new(f)
                .num_rows()
                .with_context(|| format!("reading the row count of `{}`", local.display()))? as u64
        };
        let path = table_path(table, zone, self.period);
        let data = format!("{}/{path}", run_prefix(self.period, &self.run_id));
        let (bytes, sha256) = self.wh.upload_file(&data, local)?;
        let entry = FileEntry {
            path: path.clone(),
            data,
            table: Some(table.to_string()),
            zone: Some(zone.dir().to_string()),
            rows: Some(rows),
            bytes,
            sha256: sha256.clone(),
            period_column,
        };
        self.files.insert(path.clone(), entry);
        Ok(TableOutput { table: table.to_string(), zone: zone.dir().to_string(), path, rows, bytes, sha256 })
    }

    /// Writes a local file (an export) at `rel_path` below the root, streamed and hashed; published with the
    /// commit.
    pub fn put_local_file(&mut self, rel_path: &str, local: &std::path::Path) -> Result<FileEntry> {
        check_rel_path(rel_path, false)?;
        let data = format!("{}/{rel_path}", run_prefix(self.period, &self.run_id));
        let (bytes, sha256) = self.wh.upload_file(&data, local)?;
        let entry = FileEntry {
            path: rel_path.to_string(),
            data,
            table: None,
            zone: None,
            rows: None,
            bytes,
            sha256,
            period_column: None,
        };
        self.files.insert(rel_path.to_string(), entry.clone());
        Ok(entry)
    }

    /// Lets this run commit a new version of a closed period: for the privacy jobs only (`jobs/privacy/`), which
    /// rewrite personal or expired data and check that every invoice figure stays the same. The new version
    /// stays closed when the caller commits with `close = true`.
    pub fn allow_closed_rewrite(&mut self) {
        self.rewrite_closed = true;
    }

    /// Carries a file of the previous commit into this run unchanged: a server-side copy of its data to this
    /// run's private prefix (the old run's data is collected two commits later), same path, rows and checksum.
    pub fn carry_file(&mut self, entry: &FileEntry) -> Result<()> {
        let data = format!("{}/{}", run_prefix(self.period, &self.run_id), entry.path);
        let (from, to) = (store_path(&entry.data)?, store_path(&data)?);
        self.wh
            .block(self.wh.store.copy(&from, &to))
            .map_err(|e| self.wh.store_err("copying", &entry.data, e))?;
        self.files.insert(entry.path.clone(), FileEntry { data, ..entry.clone() });
        Ok(())
    }

    /// Writes any other file of the run (exports) at `rel_path` below the root, published with the commit.
    /// Every segment is checked: no `..`, no absolute paths, nothing under `_`-prefixed internal folders or `raw/`.
    pub fn put_file(&mut self, rel_path: &str, bytes: Bytes) -> Result<()> {
        check_rel_path(rel_path, false)?;
        self.stage(rel_path, bytes, None, None, None)?;
        Ok(())
    }

    fn stage(
        &mut self,
        path: &str,
        bytes: Bytes,
        table: Option<(&str, Zone)>,
        rows: Option<u64>,
        period_column: Option<usize>,
    ) -> Result<FileEntry> {
        let data = format!("{}/{path}", run_prefix(self.period, &self.run_id));
        let entry = FileEntry {
            path: path.to_string(),
            data: data.clone(),
            table: table.map(|(t, _)| t.to_string()),
            zone: table.map(|(_, z)| z.dir().to_string()),
            rows,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            period_column,
        };
        self.wh.put_overwrite(&data, bytes)?;
        self.files.insert(path.to_string(), entry.clone());
        Ok(entry)
    }

    /// Publishes the run: the commit point (the next pointer version, created
    /// conditionally: exactly one of two concurrent runs wins, the other gets exit 1), then the Hive copies for
    /// readers without cspbill and `_runs/<run>.json`, then cleanup of data two runs old, then the lock is released.
    pub fn commit(self, manifest: serde_json::Value, close: bool) -> Result<Commit> {
        let commit = self.commit_until(manifest, close, None)?;
        commit.ok_or_else(|| {
            anyhow::anyhow!("commit stopped without a crash point (bug in `Txn::commit`)")
        })
    }

    /// `commit`, stopping dead at `crash` as a killed process would (lock and files left as they are). For the
    /// fault-injection tests; returns None when it stopped.
    #[doc(hidden)]
    pub fn commit_until(
        mut self,
        manifest: serde_json::Value,
        close: bool,
        crash: Option<CrashPoint>,
    ) -> Result<Option<Commit>> {
        let wh = Arc::clone(&self.wh);
        let period = self.period;
        if let Some(b) = &self.base
            && b.closed
            && !self.rewrite_closed
        {
            return Err(Failure::invariant(format!(
                "period {period} was closed by run `{}` (commit {}); a closed period is never rewritten: bill late data as adjustments in an open period",
                b.run_id, b.version
            ))
            .into());
        }
        let version = self.base.as_ref().map_or(1, |b| b.version + 1);
        let commit = Commit {
            period: period.to_string(),
            version,
            run_id: self.run_id.clone(),
            manifest: format!("_runs/{}.json", self.run_id),
            manifest_json: manifest,
            closed: close,
            previous_run: self.base.as_ref().map(|b| b.run_id.clone()),
            files: self.files.values().cloned().collect(),
        };
        if crash == Some(CrashPoint::BeforePointer) {
            self.finished = true;
            return Ok(None);
        }
        let pointer = version_path(period, version, "json");
        let text = serde_json::to_vec_pretty(&commit).context("serialising the commit pointer")?;
        // The commit point. From here on this run's data is never deleted by this run (see `commit_attempted`).
        self.commit_attempted = true;
        let created = wh.put_create(&pointer, Bytes::from(text));
        if !matches!(created, Ok(true)) {
            // Lost the race, or an ambiguous answer (a timeout or reset after the write landed, or a retry of our
            // own landed write reporting that it exists): the pointer read back decides.
            let found = wh.read_version(period, version);
            match (&created, found) {
                (_, Ok(Some(c))) if c.run_id == self.run_id => {
                    tracing::warn!(period = %period, version, "the commit pointer write reported a failure but landed; carrying on");
                }
                (Ok(_), Ok(Some(c))) | (Err(_), Ok(Some(c))) => {
                    // Another run owns version N+1 and pointers are create-once: ours can never land, so this
                    // run's data is certainly unreferenced and is removed on drop.
                    self.commit_attempted = false;
                    return Err(Failure::invariant(format!(
                        "another run (`{}`) committed period {period} first as version {version}; this run `{}` published nothing: re-run the period if its inputs changed",
                        c.run_id, self.run_id
                    ))
                    .into());
                }
                (_, found) => {
                    let why = match (&created, &found) {
                        (Err(e), _) => format!("{e:#}"),
                        (_, Err(e)) => format!("{e:#}"),
                        _ => "the store reported that the pointer exists, but it cannot be read".into(),
                    };
                    return Err(Failure::invariant(redact(&format!(
                        "the commit of period {period} (version {version}, run `{}`) could not be confirmed: {why}; its data is kept under `{}` in case the pointer landed: run the period again (the next run completes or supersedes it)",
                        self.run_id,
                        run_prefix(period, &self.run_id)
                    )))
                    .into());
                }
            }
        }
        if crash == Some(CrashPoint::AfterPointer) {
            self.finished = true;
            return Ok(None);
        }
        let copies = match crash {
            Some(CrashPoint::DuringPublish(n)) => Some(n),
            _ => None,
        };
        let published = wh.publish(period, &commit, self.base.as_ref(), copies).map_err(|e| {
            Failure::invariant(redact(&format!(
                "period {period} was committed (version {version}, run `{}`) but publishing it for readers failed: {e:#}; the next command on the period completes it",
                self.run_id
            )))
        })?;
        if !published {
            self.finished = true;
            return Ok(None);
        }
        if crash == Some(CrashPoint::BeforeCleanup) {
            self.finished = true;
            return Ok(None);
        }
        // Keep the data of this run and the previous one (a reader that read the previous pointer a moment ago
        // may still be reading it); anything older of this period is garbage.
        let mut keep = BTreeSet::from([self.run_id.clone()]);
        keep.extend(commit.previous_run.clone());
        if let Err(e) = wh.collect_garbage(period, &keep) {
            tracing::warn!(period = %period, error = %redact(&format!("{e:#}")), "could not remove old run data; the next commit retries");
        }
        self.finished = true;
        wh.release_lock(period, &self.run_id);
        Ok(Some(commit))
    }
}

/// Where `Txn::commit_until` stops, as if the process were killed there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    BeforePointer,
    AfterPointer,
    /// After this many Hive copies or deletions of the publish step.
    DuringPublish(usize),
    BeforeCleanup,
}

impl Drop for Txn {
    /// A run dropped without commit publishes nothing: its private data is removed (best effort: what remains is
    /// unreferenced garbage, removed by a later commit) and the lock is released.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.commit_attempted {
            // The pointer may reference this data (an ambiguous commit): keep it, release the lock only.
            self.wh.release_lock(self.period, &self.run_id);
            return;
        }
        let prefix = run_prefix(self.period, &self.run_id);
        if let Err(e) = self.wh.delete_prefix(&prefix) {
            tracing::warn!(run = %self.run_id, error = %redact(&format!("{e:#}")), "could not remove the data of an abandoned run");
        }
        self.wh.release_lock(self.period, &self.run_id);
    }
}

impl Inner {
    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A store operation that failed after the warehouse was opened: exit 1 (the run ran; its commit or a read
    /// of committed data failed), secrets redacted from the store's message.
    fn store_err(&self, what: &str, path: &str, e: object_store::Error) -> anyhow::Error {
        Failure::invariant(redact(&format!(
            "{what} `{path}` in warehouse `{}` failed: {e}; {}",
            self.url,
            what_to_check(&self.url)
        )))
        .into()
    }

    /// Finishes the publication of the period's latest commit if it was interrupted; returns that commit.
    /// The caller holds the period's lock.
    fn roll_forward(&self, period: Period) -> Result<Option<Commit>> {
        let Some((b, published)) = self.latest(period)? else {
            return Ok(None);
        };
        if !published {
            tracing::warn!(period = %period, run = %b.run_id, version = b.version, "rolling forward the publication of an interrupted commit");
            let before = if b.version > 1 {
                self.read_version(period, b.version - 1)?
            } else {
                None
            };
            self.publish(period, &b, before.as_ref(), None)?;
            self.sweep_staging(period, &b);
        }
        Ok(Some(b))
    }

    /// On a local folder, removes the staging files (`NAME#N`) a killed write or copy left: beside every file
    /// the commit publishes, and anywhere under `_data/period=P/`. Only this period's paths, which no one else
    /// writes while the caller holds the period's lock. Best effort.
    fn sweep_staging(&self, period: Period, commit: &Commit) {
        let Some(root) = &self.local_root else {
            return;
        };
        let is_staging = |name: &str, base: Option<&str>| {
            name.rsplit_once('#').is_some_and(|(b, n)| {
                !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && base.is_none_or(|x| x == b)
            })
        };
        let mut targets: Vec<String> = commit.files.iter().map(|f| f.path.clone()).collect();
        targets.push(commit.manifest.clone());
        targets.push(version_path(period, commit.version, "published"));
        targets.push(version_dir_file(period, CURRENT_LIST));
        for t in targets {
            let path = root.join(&t);
            let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
                continue;
            };
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_str().is_some_and(|n| is_staging(n, Some(base))) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Under `_data/period=P/`: any staging file, then the folders left empty.
        fn walk(dir: &std::path::Path, is_staging: &dyn Fn(&str) -> bool) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, is_staging);
                    let _ = std::fs::remove_dir(&p); // only succeeds when empty
                } else if e.file_name().to_str().is_some_and(is_staging) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        walk(&root.join(format!("_data/period={period}")), &|n| is_staging(n, None));
    }

    fn get_opt(&self, path: &str) -> Result<Option<Bytes>> {
        let p = store_path(path)?;
        tracing::debug!(op = "get", path, "store call");
        match self.block(async { self.store.get(&p).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", path, e)),
        }
    }

    /// An object with its version tag (ETag, else version, else modification time), None when it does not exist.
    fn get_tagged(&self, path: &str) -> Result<Option<(Bytes, String)>> {
        let p = store_path(path)?;
        let got = self.block(async {
            let r = self.store.get(&p).await?;
            let m = r.meta.clone();
            let tag = m.e_tag.or(m.version).unwrap_or_else(|| m.last_modified.to_rfc3339());
            Ok::<_, object_store::Error>((r.bytes().await?, tag))
        });
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", path, e)),
        }
    }

    fn get(&self, path: &str) -> Result<Bytes> {
        self.get_opt(path)?.ok_or_else(|| {
            Failure::invariant(format!(
                "`{path}` is missing from warehouse `{}` although a commit refers to it; re-run the period",
                self.url
            ))
            .into()
        })
    }

    fn put_overwrite(&self, path: &str, bytes: Bytes) -> Result<()> {
        let p = store_path(path)?;
        tracing::debug!(op = "put", path, bytes = bytes.len(), "store call");
        self.block(self.store.put(&p, PutPayload::from_bytes(bytes)))
            .map_err(|e| self.store_err("writing", path, e))?;
        Ok(())
    }

    /// Whether an object exists.
    fn exists(&self, path: &str) -> Result<bool> {
        let p = store_path(path)?;
        match self.block(self.store.head(&p)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err("checking", path, e)),
        }
    }

    /// Streams a local file to `path` (one PUT when small, a multipart upload when large), hashing the bytes as
    /// they pass: returns (bytes, SHA-256 hex). Memory stays at the upload buffer, whatever the file's size.
    fn upload_file(&self, path: &str, local: &std::path::Path) -> Result<(u64, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let p = store_path(path)?;
        let store = Arc::clone(&self.store);
        let res: std::result::Result<(u64, String), std::io::Error> = self.block(async move {
            let mut f = tokio::fs::File::open(local).await?;
            let mut w = object_store::buffered::BufWriter::with_capacity(store, p, 16 << 20);
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 4 << 20];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                w.write_all(&buf[..k]).await?;
                n += k as u64;
            }
            w.shutdown().await?;
            Ok((n, hex::encode(h.finalize())))
        });
        res.map_err(|e| {
            Failure::invariant(redact(&format!(
                "uploading `{}` to `{path}` in warehouse `{}` failed: {e}; {}",
                local.display(),
                self.url,
                what_to_check(&self.url)
            )))
            .into()
        })
    }

    /// Conditional create: false when the object already exists.
    fn put_create(&self, path: &str, bytes: Bytes) -> Result<bool> {
        let p = store_path(path)?;
        tracing::debug!(op = "put_create", path, bytes = bytes.len(), "store call");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.block(self.store.put_opts(&p, PutPayload::from_bytes(bytes), opts)) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.store_err("creating", path, e)),
        }
    }

    fn delete(&self, path: &str) -> Result<()> {
        let p = store_path(path)?;
        tracing::debug!(op = "delete", path, "store call");
        match self.block(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = store_path(prefix)?;
        tracing::debug!(op = "list", prefix, "store call");
        let metas: Vec<_> = self
            .block(self.store.list(Some(&p)).try_collect::<Vec<_>>())
            .map_err(|e| self.store_err("listing", prefix, e))?;
        let mut out: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        out.sort();
        Ok(out)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for path in self.list(prefix)? {
            self.delete(&path)?;
        }
        Ok(())
    }

    /// The committed versions of a period, ascending.
    fn versions(&self, period: Period) -> Result<Vec<u64>> {
        let dir = format!("_commits/period={period}/");
        let mut vs: Vec<u64> = self
            .list(&dir)?
            .iter()
            .filter_map(|p| {
                p.strip_prefix(&dir)?
                    .strip_prefix('v')?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        vs.sort_unstable();
        Ok(vs)
    }

    fn read_version(&self, period: Period, version: u64) -> Result<Option<Commit>> {
        let path = version_path(period, version, "json");
        let Some(bytes) = self.get_opt(&path)? else {
            return Ok(None);
        };
        let c = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::invariant(format!("commit pointer `{path}` in warehouse `{}` is not valid: {e}; restore it from the store's versioning or re-run the period", self.url))
        })?;
        Ok(Some(c))
    }

    /// The latest commit of a period and whether its publication finished.
    fn latest(&self, period: Period) -> Result<Option<(Commit, bool)>> {
        let Some(&v) = self.versions(period)?.last() else {
            return Ok(None);
        };
        let Some(c) = self.read_version(period, v)? else {
            return Ok(None);
        };
        let published = self
            .get_opt(&version_path(period, v, "published"))?
            .is_some();
        Ok(Some((c, published)))
    }

    /// Step 4 of the protocol: make the Hive paths match `commit`. Idempotent, so a killed run is rolled forward by
    /// calling it again. Each table-period is one object replaced in one step; unchanged files are not touched.
    /// `stop_after`: stop (as if killed) after that many copies or deletions; returns false when it stopped.
    fn publish(
        &self,
        period: Period,
        commit: &Commit,
        before: Option<&Commit>,
        stop_after: Option<usize>,
    ) -> Result<bool> {
        let mut budget = stop_after.unwrap_or(usize::MAX);
        // The consistent path for readers switches first: one atomic PUT of the new version's file list.
        self.put_overwrite(&version_dir_file(period, CURRENT_LIST), current_list(commit))?;
        let old: BTreeMap<&str, &FileEntry> = before
            .map(|b| b.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        for f in &commit.files {
            if old
                .get(f.path.as_str())
                .is_some_and(|o| o.sha256 == f.sha256)
            {
                continue;
            }
            if budget == 0 {
                return Ok(false);
            }
            budget -= 1;
            let (from, to) = (store_path(&f.data)?, store_path(&f.path)?);
            tracing::debug!(op = "copy", from = %f.data, to = %f.path, "store call");
            self.block(self.store.copy(&from, &to))
                .map_err(|e| self.store_err("publishing", &f.path, e))?;
        }
        let text = serde_json::to_vec_pretty(&commit.manifest_json)
            .context("serialising the run manifest")?;
        self.put_overwrite(&commit.manifest, Bytes::from(text))?;
        let new: BTreeSet<&str> = commit.files.iter().map(|f| f.path.as_str()).collect();
        for path in old.keys().filter(|p| !new.contains(*p)) {
            if budget == 0 {
                return Ok(false);
            }
            budget -= 1;
            self.delete(path)?;
        }
        if budget == 0 {
            return Ok(false);
        }
        self.put_overwrite(
            &version_path(period, commit.version, "published"),
            Bytes::new(),
        )?;
        Ok(true)
    }

    fn collect_garbage(&self, period: Period, keep: &BTreeSet<String>) -> Result<()> {
        let dir = format!("_data/period={period}/");
        for path in self.list(&dir)? {
            let run = path
                .strip_prefix(&dir)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default();
            if !keep.contains(run) {
                self.delete(&path)?;
            }
        }
        if let Some(c) = self.latest(period)?.map(|(c, _)| c) {
            self.sweep_staging(period, &c);
        }
        Ok(())
    }

    /// Takes the period's lock for `run_id`: None when taken, Some(holder) when another live run holds it.
    ///
    /// A stale lock (see `is_stale`) is broken at most once: the breaker first creates a break token named after
    /// that exact lock (its content and ETag) with a conditional create, and only the run that created the token
    /// deletes the lock. Two runs that both found the same stale lock cannot both delete, so neither can delete
    /// the other's fresh lock; the loser simply retries the create and finds the winner's lock.
    fn try_lock(&self, period: Period, run_id: &str) -> Result<Option<LockInfo>> {
        let path = lock_path(period);
        let me = LockInfo {
            run_id: run_id.to_string(),
            host: hostname(),
            pid: std::process::id(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        let body = Bytes::from(serde_json::to_vec(&me).context("serialising the lock")?);
        // A few attempts: the holder may release, or a stale lock may be broken, between our create and read.
        for _ in 0..5 {
            if self.put_create(&path, body.clone())? {
                return Ok(None);
            }
            let Some((bytes, tag)) = self.get_tagged(&path)? else {
                continue;
            };
            let holder: Option<LockInfo> = serde_json::from_slice(&bytes).ok();
            match holder {
                Some(h) if !self.is_stale(&h) => return Ok(Some(h)),
                h => {
                    let mut id = Sha256::new();
                    id.update(&bytes);
                    id.update(tag.as_bytes());
                    let token = format!("_locks/breaks/period={period}/{}", hex::encode(id.finalize()));
                    if self.put_create(&token, body.clone())? {
                        tracing::warn!(period = %period, holder = ?h, "breaking a stale period lock");
                        self.delete(&path)?;
                    }
                }
            }
        }
        Err(Failure::invariant(format!(
            "could not take the lock of period {period} in warehouse `{}`: other runs keep taking it; retry later",
            self.url
        ))
        .into())
    }

    /// Stale when its process is gone on this host, or (holder elsewhere) it is older than the TTL.
    /// An unreadable lock counts as stale too: only a killed writer leaves one.
    fn is_stale(&self, h: &LockInfo) -> bool {
        if h.host == hostname() && !pid_alive(h.pid) {
            return true;
        }
        match chrono::DateTime::parse_from_rfc3339(&h.since) {
            Ok(since) => {
                let age = chrono::Utc::now().signed_duration_since(since);
                age.to_std().is_ok_and(|a| a >= self.lock_ttl)
            }
            Err(_) => true,
        }
    }

    /// Releases the lock if it is still ours (a stale-lock breaker may have taken it over).
    fn release_lock(&self, period: Period, run_id: &str) {
        let path = lock_path(period);
        let ours = matches!(self.get_opt(&path), Ok(Some(b)) if serde_json::from_slice::<LockInfo>(&b).is_ok_and(|h| h.run_id == run_id));
        if ours && let Err(e) = self.delete(&path) {
            tracing::warn!(period = %period, error = %redact(&format!("{e:#}")), "could not release the period lock");
        }
    }
}

/// Builds the store for a URL or a local folder, rooted at the URL's prefix.
fn build_store(url: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let is_url = url.split_once("://").is_some_and(|(s, _)| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
    });
    if !is_url || url.starts_with("file://") {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::usage(format!(
                "cannot create the warehouse folder `{dir}`: {e}; check the path and its permissions"
            ))
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            Failure::usage(format!(
                "cannot open the warehouse folder `{dir}`: {e}; check the path and its permissions"
            ))
        })?;
        // Deleting a file removes the folders it leaves empty (superseded runs under `_data/`, dropped tables).
        return Ok(Arc::new(fs.with_automatic_cleanup(true)));
    }
    let shown = redact(url);
    let mut parsed = url::Url::parse(url).map_err(|e| Failure::usage(format!("warehouse URL `{shown}` is not valid: {e}; use `s3://bucket/prefix`, `az://container/prefix` or `gs://bucket/prefix`")))?;
    // A query string is a credential (an Azure SAS token `?sv=...&sig=...`), never part of the location.
    let query = parsed.query().map(str::to_string);
    parsed.set_query(None);
    let url = parsed.as_str().to_string();
    let url = url.as_str();
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| {
        Failure::usage(format!(
            "warehouse URL `{shown}` is not supported: {e}; use a folder, `s3://`, `az://`, `abfs://` or `gs://`"
        ))
    })?;
    let bad_key = |k: &str, e: object_store::Error| {
        Failure::usage(redact(&format!(
            "warehouse option `{k}` is not known for `{shown}`: {e}; see the object_store configuration keys of that cloud"
        )))
    };
    let retry = retry_config();
    // Timeouts, unless the environment or the options set them. Not `with_client_options`: that would drop the
    // client settings `from_env` read (`AWS_ALLOW_HTTP`, proxies, ...).
    let timeouts = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "120s"),
    ];
    let truthy = |v: Option<String>| {
        v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "on" | "yes" | "y"))
    };
    // The three clouds' builders differ only in their types: one recipe for all (from the environment, the URL,
    // retries, default timeouts, then the `[warehouse.options]` keys). A plain `http://` endpoint without
    // `allow_http` would fail every request with "builder error": say what to set instead.
    macro_rules! build {
        ($builder:ty, $key:path, $pre:expr, $endpoint:expr, $cloud:literal, $allow_env:literal) => {{
            let mut b = ($pre)(<$builder>::from_env().with_url(url).with_retry(retry));
            for (k, v) in timeouts {
                let k = $key(k);
                if b.get_config_value(&k).is_none() {
                    b = b.with_config(k, v);
                }
            }
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
            }
            let endpoint: Option<String> = ($endpoint)(&b);
            if let Some(ep) = endpoint.filter(|e| e.to_ascii_lowercase().starts_with("http://"))
                && !truthy(b.get_config_value(&$key(ClientConfigKey::AllowHttp)))
            {
                return Err(Failure::usage(format!(
                    "the {} endpoint `{}` is plain HTTP, which is refused unless allowed: set `allow_http = \"true\"` in `[warehouse] options` of cspbill.toml (or the environment variable `{}=true`), or use an https endpoint",
                    $cloud, redact(&ep), $allow_env
                ))
                .into());
            }
            Arc::new(b.build().map_err(|e| {
                Failure::usage(redact(&format!("cannot configure {} for `{shown}`: {e}; {}", $cloud, what_to_check(url))))
            })?)
        }};
    }
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as S3Key};
    use object_store::azure::{AzureConfigKey as AzKey, MicrosoftAzureBuilder};
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => build!(
            AmazonS3Builder,
            S3Key::Client,
            |b: AmazonS3Builder| b,
            |b: &AmazonS3Builder| b.get_config_value(&S3Key::S3Endpoint).or_else(|| b.get_config_value(&S3Key::Endpoint)),
            "S3",
            "AWS_ALLOW_HTTP"
        ),
        ObjectStoreScheme::MicrosoftAzure => {
            // `az://container/prefix?sv=...&sig=...`: the SAS token of the URL, unless the options name one.
            let sas = query.filter(|q| q.contains("sig="));
            build!(
                MicrosoftAzureBuilder,
                AzKey::Client,
                |b: MicrosoftAzureBuilder| match &sas {
                    Some(v) if b.get_config_value(&AzKey::SasKey).is_none() => b.with_config(AzKey::SasKey, v),
                    _ => b,
                },
                |b: &MicrosoftAzureBuilder| {
                    if truthy(b.get_config_value(&AzKey::UseEmulator)) {
                        None
                    } else {
                        b.get_config_value(&AzKey::Endpoint)
                    }
                },
                "Azure",
                "AZURE_ALLOW_HTTP"
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => build!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey::Client,
            |b: object_store::gcp::GoogleCloudStorageBuilder| b,
            |_: &object_store::gcp::GoogleCloudStorageBuilder| None,
            "GCS",
            "GOOGLE_ALLOW_HTTP"
        ),
        other => {
            return Err(Failure::usage(format!("warehouse URL `{shown}` ({other:?}) is not supported; use a folder, `s3://`, `az://`, `abfs://` or `gs://`")).into());
        }
    };
    if prefix.as_ref().is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

/// The folder of a local warehouse URL (a path or `file://`), None for object-store URLs.
fn local_dir(url: &str) -> Option<&str> {
    let is_url = url.split_once("://").is_some_and(|(s, _)| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
    });
    (!is_url || url.starts_with("file://")).then(|| url.strip_prefix("file://").unwrap_or(url))
}

/// Bounded retries with exponential backoff: a store that stays down fails within about half a minute.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(30),
    }
}

fn what_to_check(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s) {
        Some("s3" | "s3a") => {
            "check the URL, that the bucket exists, the credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`) and that the store is up"
        }
        Some("az" | "abfs" | "abfss" | "azure") => {
            "check the URL, that the container exists, the credentials (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` or a SAS / service principal) and that the store is up"
        }
        Some("gs") => {
            "check the URL, that the bucket exists, the credentials (`GOOGLE_SERVICE_ACCOUNT` or `GOOGLE_APPLICATION_CREDENTIALS`) and that the store is up"
        }
        _ => "check the folder exists and is writable",
    }
}

/// `zone/TABLE/period=P/part-0.parquet`.
/// A table name that is a safe path segment, in a zone tables may be written to (`raw/` holds input files only).
fn check_table_target(table: &str, zone: Zone) -> Result<()> {
    check_segment("table name", table)?;
    if zone == Zone::Raw {
        return Err(Failure::invariant(format!(
            "table `{table}` cannot be written to `raw/`, which holds input files only: use `land_raw`"
        ))
        .into());
    }
    Ok(())
}

/// `raw/SOURCE/sha256=HEX/NAME`, with every part checked.
fn raw_path(source: &str, name: &str, sha256: &str) -> Result<String> {
    check_segment("raw source", source)?;
    check_segment("input file name", name)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Failure::usage(format!("`{sha256}` is not a lower-case hex SHA-256; pass the digest of `{name}`")).into());
    }
    Ok(format!("raw/{source}/sha256={sha256}/{name}"))
}

fn table_path(table: &str, zone: Zone, period: Period) -> String {
    format!("{}/{table}/period={period}/{PART_FILE}", zone.dir())
}

fn run_prefix(period: Period, run_id: &str) -> String {
    format!("_data/period={period}/{run_id}")
}

fn version_path(period: Period, version: u64, ext: &str) -> String {
    format!("_commits/period={period}/v{version:09}.{ext}")
}

fn version_dir_file(period: Period, name: &str) -> String {
    format!("_commits/period={period}/{name}")
}

/// `_commits/period=P/current.csv`: one row per file of the published version, for readers that need one
/// consistent version of a period across reads and tables (DuckDB, Polars: see docs/warehouse.md). `data` is the
/// immutable run-unique copy, relative to the warehouse root; it stays until two newer commits exist.
fn current_list(commit: &Commit) -> Bytes {
    let mut out = String::from("version,run_id,zone,table_name,path,data,rows,sha256\n");
    for f in &commit.files {
        let q = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            commit.version,
            q(&commit.run_id),
            q(f.zone.as_deref().unwrap_or("")),
            q(f.table.as_deref().unwrap_or("")),
            q(&f.path),
            q(&f.data),
            f.rows.map(|r| r.to_string()).unwrap_or_default(),
            f.sha256
        ));
    }
    Bytes::from(out)
}

fn lock_path(period: Period) -> String {
    format!("_locks/period={period}.lock")
}

fn store_path(rel: &str) -> Result<StorePath> {
    StorePath::parse(rel.trim_end_matches('/'))
        .map_err(|e| Failure::usage(format!("`{rel}` is not a valid warehouse path: {e}")).into())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks an identifier that becomes one path segment (table name, run id, customer id, input file name):
/// it can never climb out of its folder or the root, nor hide as an internal file.
pub fn check_segment(what: &str, s: &str) -> Result<()> {
    let reason = if s.is_empty() {
        Some("it is empty")
    } else if s == "." || s == ".." {
        Some("it is a relative folder reference")
    } else if s.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if s.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if s.starts_with(['.', '_']) {
        Some("it starts with `.` or `_`, which readers treat as hidden")
    } else if s.contains(':') {
        Some("it contains `:`")
    } else if s.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(r) => Err(Failure::usage(format!(
            "{what} `{}` cannot be used in a warehouse path: {r}; rename it",
            crate::error::clip(s)
        ))
        .into()),
        None => Ok(()),
    }
}

/// Checks a relative path of several segments. Outside `internal`, paths under `_` folders and `raw/` are refused.
fn check_rel_path(rel: &str, internal: bool) -> Result<()> {
    let segs: Vec<&str> = rel.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if internal && i == 0 && s.starts_with('_') {
            check_segment("path segment", &s[1..])?;
            continue;
        }
        check_segment("path segment", s)
            .with_context(|| format!("warehouse path `{}` is refused", crate::error::clip(rel)))?;
    }
    if !internal && segs.first() == Some(&"raw") {
        return Err(Failure::usage(format!(
            "`{rel}` is under `raw/`, which holds input files only; write exports elsewhere"
        ))
        .into());
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether a process of this host is alive. Only Linux (`/proc`) can tell; elsewhere it counts as alive and the
/// lock's TTL decides.
fn pid_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    // A zombie (killed, not yet reaped) holds nothing.
    match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
