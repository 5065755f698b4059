//! Faults around the commit point, injected by a store wrapper (issue 11 items 8, 9; issue 21 items 1, 8):
//! - a pointer write that lands but reports an error (a timeout or reset after the PUT), or whose retry reports
//!   that the object exists: the run reads the version back, carries on, and never deletes data the pointer names;
//! - a pointer write that fails without landing: exit 1, and the run's data is kept (it might have landed);
//! - two runs breaking the same stale lock at the same moment: exactly one holds the period afterwards;
//! - a publish interrupted after the commit point is completed by `Warehouse::repair` (what every command runs);
//! - superseded runs leave no empty folders under `_data/` on a local folder;
//! - readers of the per-period file list (`_commits/period=P/current.csv`) always get one whole version, even
//!   while runs publish, on every store (the Rust reader here is Polars' own Parquet scan over the listed files).

#![allow(dead_code)]

use cspbill::{error, warehouse};

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use pipeline::Period;
use pipeline::testing::frame_to_sorted_csv;
use polars::prelude::*;
use schemas::Zone;

use polars::io::cloud::CloudOptions;
use warehouse::{CrashPoint, Warehouse};

fn period() -> Period {
    Period::new(2024, 2).unwrap()
}

/// A table whose size depends on the writing run, so a mix of two runs cannot pass for one.
fn table(tag: &str, n: usize) -> DataFrame {
    df!(
        "id" => (0..n as i64).collect::<Vec<_>>(),
        "run_tag" => vec![tag; n],
    )
    .unwrap()
}

/// What the wrapper does to the next write of a commit pointer (`_commits/period=P/vN.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PointerFault {
    None,
    /// The PUT lands, then the client sees an error (timeout, connection reset).
    LandThenError,
    /// The PUT lands, the client times out and retries; the retry answers "already exists".
    LandThenRetryExists,
    /// The PUT fails and nothing lands.
    Fail,
}

/// An `ObjectStore` that forwards to a real one and injects faults.
#[derive(Debug)]
struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    pointer: Mutex<PointerFault>,
    /// When set, the first two reads of a lock wait for each other (both runs have seen the stale lock), and a
    /// second delete of the lock waits until a lock was created after the first delete: the interleaving in
    /// which an unconditional breaker deletes the other run's fresh lock.
    lock_race: Option<Arc<LockRace>>,
}

#[derive(Debug)]
struct LockRace {
    both_read: Barrier,
    reads: AtomicUsize,
    state: Mutex<(usize, bool)>, // (deletes, created after the first delete)
    cv: Condvar,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultStore",
        source: format!("injected fault: {what}").into(),
    }
}

fn is_pointer(p: &StorePath) -> bool {
    let s = p.as_ref();
    s.contains("_commits/") && s.ends_with(".json")
}

fn is_lock(p: &StorePath) -> bool {
    p.as_ref().ends_with(".lock")
}

#[async_trait::async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if is_pointer(location) {
            let fault = std::mem::replace(&mut *self.pointer.lock().unwrap(), PointerFault::None);
            match fault {
                PointerFault::None => {}
                PointerFault::Fail => return Err(injected("pointer write failed")),
                PointerFault::LandThenError => {
                    self.inner.put_opts(location, payload, opts).await?;
                    return Err(injected("connection reset after the pointer landed"));
                }
                PointerFault::LandThenRetryExists => {
                    self.inner.put_opts(location, payload.clone(), opts.clone()).await?;
                    return self.inner.put_opts(location, payload, opts).await;
                }
            }
        }
        let created_lock = is_lock(location);
        let r = self.inner.put_opts(location, payload, opts).await;
        if created_lock && r.is_ok() {
            if let Some(race) = &self.lock_race {
                let mut st = race.state.lock().unwrap();
                if st.0 >= 1 {
                    st.1 = true;
                    race.cv.notify_all();
                }
            }
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &StorePath, options: GetOptions) -> object_store::Result<GetResult> {
        if is_lock(location)
            && let Some(race) = &self.lock_race
            && race.reads.fetch_add(1, Ordering::SeqCst) < 2
        {
            race.both_read.wait();
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &StorePath, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        use futures::StreamExt;
        let race = self.lock_race.clone();
        let locations = locations
            .map(move |l| {
                if let (Ok(p), Some(race)) = (&l, &race)
                    && is_lock(p)
                {
                    let mut st = race.state.lock().unwrap();
                    st.0 += 1;
                    if st.0 >= 2 {
                        let _ = race
                            .cv
                            .wait_timeout_while(st, Duration::from_secs(10), |s| !s.1)
                            .unwrap();
                    }
                }
                l
            })
            .boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&StorePath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &StorePath, to: &StorePath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A local-folder warehouse behind a `FaultStore`, and the folder.
fn faulty(lock_race: bool) -> (tempfile::TempDir, Arc<FaultStore>, Warehouse) {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let store = Arc::new(FaultStore {
        inner: Arc::new(fs),
        pointer: Mutex::new(PointerFault::None),
        lock_race: lock_race.then(|| {
            Arc::new(LockRace {
                both_read: Barrier::new(2),
                reads: AtomicUsize::new(0),
                state: Mutex::new((0, false)),
                cv: Condvar::new(),
            })
        }),
    });
    let wh = Warehouse::from_store(store.clone(), &dir.path().to_string_lossy()).unwrap();
    (dir, store, wh)
}

fn write_run(wh: &Warehouse, run_id: &str, n: usize) -> warehouse::Txn {
    let mut txn = wh.begin(period(), run_id).unwrap();
    txn.write_table("fct_t", Zone::Marts, &mut table(run_id, n)).unwrap();
    txn
}

fn read_t(wh: &Warehouse) -> String {
    frame_to_sorted_csv(&wh.read_table("fct_t", Zone::Marts, period()).unwrap().unwrap())
}

#[test]
fn a_pointer_write_that_landed_despite_an_error_is_carried_through() {
    for fault in [PointerFault::LandThenError, PointerFault::LandThenRetryExists] {
        let (_d, store, wh) = faulty(false);
        *store.pointer.lock().unwrap() = fault;
        let c = write_run(&wh, "A", 3)
            .commit(serde_json::json!({}), false)
            .unwrap_or_else(|e| panic!("{fault:?}: the landed commit must be carried through: {e:#}"));
        assert_eq!(c.run_id, "A");
        // The data the pointer names is there and published.
        assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("A", 3)), "{fault:?}");
        assert!(wh.read_file("_runs/A.json").unwrap().is_some(), "{fault:?}");
        assert!(wh.read_file("marts/fct_t/period=2024-02/part-0.parquet").unwrap().is_some());
        // The lock is released: the next run goes.
        write_run(&wh, "B", 2).commit(serde_json::json!({}), false).unwrap();
        assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("B", 2)));
    }
}

#[test]
fn a_failed_pointer_write_is_exit_1_and_keeps_the_data_it_might_name() {
    let (_d, store, wh) = faulty(false);
    write_run(&wh, "A", 3).commit(serde_json::json!({}), false).unwrap();
    *store.pointer.lock().unwrap() = PointerFault::Fail;
    let e = write_run(&wh, "B", 2).commit(serde_json::json!({}), false).unwrap_err();
    assert_eq!(error::exit_code(&e), 1, "a failed commit is exit 1: {e:#}");
    assert!(format!("{e:#}").contains("could not be confirmed"), "{e:#}");
    // Never deleted: had the pointer landed, it would name these files.
    let b_files = wh.list_files("_data/period=2024-02/B").unwrap();
    assert!(!b_files.is_empty(), "the data of an attempted commit is kept");
    // Readers still see A, and the next run commits normally (and collects B's unreferenced data later).
    assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("A", 3)));
    write_run(&wh, "C", 4).commit(serde_json::json!({}), false).unwrap();
    write_run(&wh, "D", 5).commit(serde_json::json!({}), false).unwrap();
    assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("D", 5)));
    assert!(wh.list_files("_data/period=2024-02/B").unwrap().is_empty(), "garbage collected by later commits");
}

#[test]
fn losing_the_commit_race_is_exit_1() {
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap().with_lock_ttl(Duration::ZERO);
    // A begins at version 0 and is overtaken: its lock is taken over as stale (TTL 0) by B, which commits.
    let a = write_run(&wh, "A", 1);
    write_run(&wh, "B", 2).commit(serde_json::json!({}), false).unwrap();
    let e = a.commit(serde_json::json!({}), false).unwrap_err();
    assert_eq!(error::exit_code(&e), 1, "{e:#}");
    assert!(format!("{e:#}").contains("another run (`B`) committed period 2024-02 first"), "{e:#}");
    assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("B", 2)));
    // The version is B's for good (pointers are create-once): A's data can never be named, so it is removed.
    assert!(wh.list_files("_data/period=2024-02/A").unwrap().is_empty());
}

#[test]
fn two_runs_breaking_one_stale_lock_never_both_hold_the_period() {
    let (dir, _store, wh) = faulty(true);
    // A stale lock: a process of this host that is gone.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::create_dir_all(dir.path().join("_locks")).unwrap();
    let lock = serde_json::json!({"run_id": "dead", "host": host, "pid": pid, "since": chrono::Utc::now().to_rfc3339()});
    std::fs::write(dir.path().join("_locks/period=2024-02.lock"), lock.to_string()).unwrap();

    let wh = Arc::new(wh);
    let results: Vec<Result<warehouse::Txn, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|id| {
                let wh = Arc::clone(&wh);
                s.spawn(move || wh.begin(period(), id).map_err(|e| format!("{e:#}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let holders: Vec<&warehouse::Txn> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(holders.len(), 1, "exactly one run holds the period: {:?}", results.iter().map(|r| r.as_ref().map(|t| t.run_id().to_string())).collect::<Vec<_>>());
    let text = std::fs::read_to_string(dir.path().join("_locks/period=2024-02.lock")).unwrap();
    let on_disk: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(on_disk["run_id"], holders[0].run_id(), "the lock on disk is the holder's");
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(loser.contains("another run holds period 2024-02"), "{loser}");
}

#[test]
fn repair_completes_an_interrupted_publish_without_a_new_run() {
    let hive = "marts/fct_t/period=2024-02/part-0.parquet";
    for b in common::backends("repair") {
        for (i, point) in [CrashPoint::AfterPointer, CrashPoint::DuringPublish(0)].into_iter().enumerate() {
            let url = format!("{}/{i}", b.url);
            let wh = Warehouse::open(&url, &b.options).unwrap().with_lock_ttl(Duration::ZERO);
            write_run(&wh, "A", 3).commit(serde_json::json!({"run": "A"}), false).unwrap();
            // A close killed after its commit point: pointer written, Hive files, manifest, marker missing.
            let t = write_run(&wh, "B", 4);
            assert!(t.commit_until(serde_json::json!({"run": "B"}), true, Some(point)).unwrap().is_none());
            assert!(wh.read_file("_runs/B.json").unwrap().is_none());
            assert!(wh.repair(period()).unwrap(), "{} {point:?}: something to repair", b.name);
            let c = wh.committed(period()).unwrap().unwrap();
            assert_eq!((c.run_id.as_str(), c.closed), ("B", true));
            let want = c.files.iter().find(|f| f.path == hive).unwrap().sha256.clone();
            let got = wh.read_file(hive).unwrap().unwrap();
            assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&got)), want, "{} {point:?}", b.name);
            assert!(wh.read_file("_runs/B.json").unwrap().is_some(), "{} {point:?}", b.name);
            let marker = format!("_commits/period=2024-02/v{:09}.published", c.version);
            assert!(wh.read_file(&marker).unwrap().is_some(), "{} {point:?}", b.name);
            assert!(wh.read_file("_locks/period=2024-02.lock").unwrap().is_none(), "{}: lock released", b.name);
            assert!(!wh.repair(period()).unwrap(), "nothing left to repair");
        }
    }
}

/// Killed after publishing, before its cleanup: the lock of the dead run and the data of older runs stay. The
/// next command's repair removes both, even on a closed period that no run will begin again.
#[test]
fn repair_completes_the_cleanup_of_a_run_killed_after_publishing() {
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap().with_lock_ttl(Duration::ZERO);
    for run in ["A", "B"] {
        write_run(&wh, run, 2).commit(serde_json::json!({}), false).unwrap();
    }
    let t = write_run(&wh, "C", 3);
    assert!(t.commit_until(serde_json::json!({}), true, Some(CrashPoint::BeforeCleanup)).unwrap().is_none());
    assert!(wh.read_file("_locks/period=2024-02.lock").unwrap().is_some());
    assert!(!wh.list_files("_data/period=2024-02/A").unwrap().is_empty());
    assert!(wh.repair(period()).unwrap());
    assert!(wh.read_file("_locks/period=2024-02.lock").unwrap().is_none(), "the dead run's lock is gone");
    assert!(wh.list_files("_data/period=2024-02/A").unwrap().is_empty(), "data two runs old is collected");
    assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("C", 3)));
    assert!(!wh.repair(period()).unwrap(), "nothing left");
}

#[test]
fn superseded_runs_leave_no_empty_folders_under_data() {
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap();
    for run in ["A", "B", "C", "D"] {
        write_run(&wh, run, 2).commit(serde_json::json!({}), false).unwrap();
    }
    // A dropped run too.
    drop(write_run(&wh, "E", 2));
    let data = std::path::Path::new(&b.url).join("_data/period=2024-02");
    let mut runs: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(runs, vec!["C", "D"], "only the current and the previous run have folders");
}

/// The per-period file list: what DuckDB and Polars read for one consistent version (docs/warehouse.md).
fn current_list(wh: &Warehouse) -> Option<Vec<BTreeMap<String, String>>> {
    let text = wh.read_file("_commits/period=2024-02/current.csv").unwrap()?;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    Some(
        lines
            .map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect())
            .collect(),
    )
}

/// A reader polls the file list while runs publish, and reads the listed data files with Polars' own Parquet
/// scan (local path or cloud URL): every read is one whole version, the same version for both tables, on every
/// store.
#[test]
fn readers_of_the_file_list_always_see_one_whole_version() {
    for b in common::backends("current") {
        let wh = Arc::new(Warehouse::open(&b.url, &b.options).unwrap());
        let commit = |tag: &str, n: usize| {
            let mut t = wh.begin(period(), tag).unwrap();
            t.write_table("fct_t", Zone::Marts, &mut table(tag, n)).unwrap();
            t.write_table("int_u", Zone::Int, &mut table(tag, n + 1)).unwrap();
            t.commit(serde_json::json!({}), false).unwrap();
        };
        commit("w0", 3);
        let cloud = match CloudScheme::from_path(&b.url) {
            None => None,
            scheme => Some(
                CloudOptions::from_untyped_config(scheme, b.options.iter().map(|(k, v)| (k.as_str(), v.clone())))
                    .unwrap(),
            ),
        };
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (wh, done, root, cloud) = (Arc::clone(&wh), Arc::clone(&done), b.url.clone(), cloud.clone());
            std::thread::spawn(move || {
                let mut reads = 0usize;
                let version = |wh: &Warehouse| wh.committed(period()).ok().flatten().map(|c| c.version).unwrap_or(0);
                'read: while !done.load(Ordering::Relaxed) || reads == 0 {
                    let before = version(&wh);
                    let list = current_list(&wh).expect("a published period has a file list");
                    let mut tags = Vec::new();
                    for row in &list {
                        let url = format!("{root}/{}", row["data"]);
                        let args = ScanArgsParquet {
                            cloud_options: cloud.clone(),
                            hive_options: HiveOptions::new_disabled(),
                            ..Default::default()
                        };
                        let df = match LazyFrame::scan_parquet(PlRefPath::new(url.as_str()), args).and_then(|lf| lf.collect()) {
                            Ok(df) => df,
                            Err(e) => {
                                // A list's files are kept until two newer commits exist (docs/warehouse.md): a
                                // reader slower than that (a loaded machine) is outside the guarantee and reads again.
                                assert!(version(&wh) >= before + 2, "a listed file is readable while fewer than two newer commits exist: {url}: {e}");
                                continue 'read;
                            }
                        };
                        let tag = df.column("run_tag").unwrap().str().unwrap().get(0).unwrap().to_string();
                        let n: usize = tag[1..].parse::<usize>().unwrap() + 3;
                        let want = if row["table_name"] == "fct_t" { n } else { n + 1 };
                        assert_eq!(df.height(), want, "{row:?}: a whole table of its run");
                        assert_eq!(row["rows"], want.to_string());
                        assert_eq!(row["run_id"], tag, "the list names the run that wrote the file");
                        tags.push(tag);
                    }
                    tags.dedup();
                    assert_eq!(tags.len(), 1, "one version across tables: {tags:?}");
                    reads += 1;
                }
                reads
            })
        };
        for i in 1..=5 {
            let tag = format!("w{i}");
            commit(&tag, i + 3);
        }
        done.store(true, Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw one whole version at every read");
        assert!(reads > 0, "{}: the reader ran", b.name);
        // After the last publish the list names exactly the last commit's files.
        let c = wh.committed(period()).unwrap().unwrap();
        let list = current_list(&wh).unwrap();
        let listed: Vec<(String, String)> = list.iter().map(|r| (r["path"].clone(), r["data"].clone())).collect();
        let want: Vec<(String, String)> = c.files.iter().map(|f| (f.path.clone(), f.data.clone())).collect();
        assert_eq!(listed, want, "{}", b.name);
    }
}

/// A kill during a local write or copy leaves a staging file `NAME#N` that the local store neither lists nor
/// deletes: the repair of the period (and every commit's cleanup) sweeps them, and the folders left empty.
#[test]
fn staging_files_of_killed_local_writes_are_swept() {
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap().with_lock_ttl(Duration::ZERO);
    let root = std::path::PathBuf::from(&b.url);
    write_run(&wh, "A", 3).commit(serde_json::json!({}), false).unwrap();
    let t = write_run(&wh, "B", 4);
    assert!(t.commit_until(serde_json::json!({}), false, Some(CrashPoint::AfterPointer)).unwrap().is_none());
    let strays = [
        "marts/fct_t/period=2024-02/part-0.parquet#0",
        "_runs/B.json#1",
        "_data/period=2024-02/B/marts/fct_t/period=2024-02/part-0.parquet#7",
        "_data/period=2024-02/Z/int/u/period=2024-02/part-0.parquet#0",
    ];
    for s in strays {
        let p = root.join(s);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"partial").unwrap();
    }
    // Not a staging file: a name with `#` and letters stays.
    std::fs::write(root.join("marts/fct_t/period=2024-02/notes#a"), b"x").unwrap();
    assert!(wh.repair(period()).unwrap());
    for s in strays {
        assert!(!root.join(s).exists(), "{s} swept");
    }
    assert!(!root.join("_data/period=2024-02/Z").exists(), "empty folders removed");
    assert!(root.join("marts/fct_t/period=2024-02/notes#a").exists());
    assert_eq!(read_t(&wh), frame_to_sorted_csv(&table("B", 4)));
}

/// The DuckDB query docs/warehouse.md and the README give for one consistent version reads exactly the committed
/// run's rows (with `period` from the path), on a local folder.
#[test]
fn the_documented_duckdb_query_over_the_file_list_reads_the_committed_version() {
    let Ok(python) = std::env::var("CSPBILL_PYTHON") else {
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
        assert!(!ci, "`CSPBILL_PYTHON` is not set but CI=true: run scripts/test.sh");
        return;
    };
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap();
    write_run(&wh, "A", 3).commit(serde_json::json!({}), false).unwrap();
    write_run(&wh, "B", 5).commit(serde_json::json!({}), false).unwrap();
    let script = r#"
import duckdb, json, sys
root = sys.argv[1]
con = duckdb.connect()
con.sql(f"SET VARIABLE f = (SELECT list('{root}/' || data) FROM read_csv('{root}/_commits/period=2024-02/current.csv') WHERE table_name = 'fct_t')")
print(json.dumps([list(r) for r in con.sql("SELECT run_tag, period, count(*) FROM read_parquet(getvariable('f')) GROUP BY ALL").fetchall()]))
"#;
    let out = std::process::Command::new(&python).arg("-c").arg(script).arg(&b.url).output().unwrap();
    assert!(out.status.success(), "duckdb: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows, serde_json::json!([["B", "2024-02", 5]]));
}
