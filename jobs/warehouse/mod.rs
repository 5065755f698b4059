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

mod paths;
mod store;
mod txn;

pub use paths::check_segment;
use paths::*;
use store::{build_store, local_dir, what_to_check};
pub use txn::CrashPoint;

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

    /// Lands an input file at `raw/SOURCE/sha256=HEX/NAME` by copying an object already in the warehouse (a
    /// sharded run's uploaded input, whose bytes were hashed to `sha256` as they were uploaded); false when it was
    /// already there.
    pub fn land_raw_copy(&self, source: &str, name: &str, sha256: &str, from: &str) -> Result<bool> {
        check_rel_path(from, true)?;
        let path = raw_path(source, name, sha256)?;
        if self.inner.exists(&path)? {
            return Ok(false);
        }
        self.inner.copy(from, &path)?;
        Ok(true)
    }

    /// Streams a local file to any path below the root, internal folders included (multipart when large),
    /// hashing it on the way: (bytes, SHA-256). For a sharded run's work files under `_shards/`.
    pub fn upload_file(&self, rel_path: &str, local: &std::path::Path) -> Result<(u64, String)> {
        check_rel_path(rel_path, true)?;
        self.inner.upload_file(rel_path, local)
    }

    /// Writes a small file to any path below the root, internal folders included, by one PUT (whole or not at
    /// all). For a sharded run's plan and shard records under `_shards/`.
    pub fn put_file(&self, rel_path: &str, bytes: Bytes) -> Result<()> {
        check_rel_path(rel_path, true)?;
        self.inner.put_overwrite(rel_path, bytes)
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
