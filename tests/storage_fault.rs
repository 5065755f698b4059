//! Fault injection: a writer process (this test binary, re-run as a child) is killed with SIGKILL at random
//! points of a run, again and again, while a reader polls the warehouse. Checked: the reader never sees a partial
//! or mixed partition, nor two tables of different runs through one pointer; after each kill the next run's
//! `begin` recovers (stale lock of a dead process broken, interrupted publication rolled forward) so that the
//! Hive files equal the committed pointer exactly; the final run's output is byte-identical to a clean run's.
//!
//! `CSPBILL_FAULT_ITERATIONS` (default 20 per store) and `CSPBILL_FAULT_SEED` (default fixed) steer it;
//! `scripts/fault-inject.sh` runs it with more iterations. Stores: as in `tests/common/mod.rs`.

#![allow(dead_code)]

use cspbill::warehouse;

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipeline::Period;
use pipeline::testing::frame_to_sorted_csv;
use polars::prelude::*;
use rand::{Rng, SeedableRng};
use schemas::Zone;
use serde::{Deserialize, Serialize};
use warehouse::{Commit, Warehouse};

const TABLES: usize = 6;
const CHILD_ENV: &str = "CSPBILL_FAULT_CHILD";

fn period() -> Period {
    Period::new(2024, 3).unwrap()
}

fn table_name(i: usize) -> String {
    format!("t{i}")
}

fn zone(i: usize) -> Zone {
    if i % 2 == 0 { Zone::Marts } else { Zone::Int }
}

/// Table `i` as written by run `tag`: its size depends on the run, so a mix of two runs cannot pass for one.
fn table(i: usize, tag: &str) -> DataFrame {
    let seed: usize = tag.bytes().map(usize::from).sum();
    let n = 20 + (seed * 7 + i * 3) % 40;
    let amounts: Vec<String> = (0..n)
        .map(|k| format!("{k}.{:018}", (k * 37 + seed) % 1000))
        .collect();
    let df = df!(
        "k" => (0..n as i64).collect::<Vec<_>>(),
        "run_tag" => vec![tag; n],
        "amount" => amounts,
    )
    .unwrap();
    df.lazy()
        .with_column(col("amount").cast(schemas::money()))
        .collect()
        .unwrap()
}

#[derive(Serialize, Deserialize)]
struct ChildArgs {
    url: String,
    options: BTreeMap<String, String>,
    run_id: String,
}

/// One run as the real job does it: begin, write every table (spread over time), commit.
fn write_run(wh: &Warehouse, run_id: &str) -> anyhow::Result<Commit> {
    let mut txn = wh.begin(period(), run_id)?;
    for i in 0..TABLES {
        txn.write_table(&table_name(i), zone(i), &mut table(i, run_id))?;
        std::thread::sleep(Duration::from_millis(15));
    }
    txn.commit(serde_json::json!({ "run_id": run_id }), false)
}

/// In a child process (`CSPBILL_FAULT_CHILD` set): one run, to be killed. Otherwise: a whole run commits every
/// table, read back exactly.
#[test]
fn fault_child() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let a: ChildArgs = serde_json::from_str(&args).unwrap();
        // The options arrive as the clouds' usual environment variables, as they would for the real binary.
        let wh = Warehouse::open(&a.url, &BTreeMap::new()).unwrap();
        write_run(&wh, &a.run_id).unwrap();
        return;
    }
    let b = common::local();
    let wh = Warehouse::open(&b.url, &b.options).unwrap();
    let c = write_run(&wh, "whole").unwrap();
    assert_eq!(c.files.len(), TABLES);
    for i in 0..TABLES {
        let back = wh
            .read_table(&table_name(i), zone(i), period())
            .unwrap()
            .unwrap();
        assert_eq!(
            frame_to_sorted_csv(&back),
            frame_to_sorted_csv(&table(i, "whole"))
        );
    }
}

fn spawn_child(b: &common::Backend, run_id: &str) -> std::process::Child {
    let args = ChildArgs {
        url: b.url.clone(),
        options: BTreeMap::new(),
        run_id: run_id.to_string(),
    };
    Command::new(std::env::current_exe().unwrap())
        .envs(common::child_env(b))
        .args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, serde_json::to_string(&args).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The Hive files a reader without cspbill globs, with their SHA-256.
fn glob_view(wh: &Warehouse) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    for path in wh.list_files("").unwrap() {
        let segs: Vec<&str> = path.split('/').collect();
        if segs.len() == 4 && !segs[0].starts_with('_') && segs[3].ends_with(".parquet") {
            if let Some(bytes) = wh.read_file(&path).unwrap() {
                out.insert(path, hex::encode(sha2::Sha256::digest(&bytes)));
            }
        }
    }
    out
}

fn expected_view(c: &Commit) -> BTreeMap<String, String> {
    c.files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect()
}

/// Checks one Hive file is a whole table of one run.
fn check_whole(i: usize, bytes: bytes::Bytes) {
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .expect("a listed Hive file parses whole");
    let tag = df
        .column("run_tag")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap()
        .to_string();
    let mut want = table(i, &tag);
    // The Hive file is written without `period` (there is none here) and exactly as the run produced it.
    assert_eq!(
        frame_to_sorted_csv(&df),
        frame_to_sorted_csv(&mut want),
        "table t{i}: partial or mixed file"
    );
}

/// Reader loop: glob view whole-file checks and pointer consistency, until `stop`.
fn reader(wh: Arc<Warehouse>, stop: Arc<AtomicBool>, checks: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        for i in 0..TABLES {
            let dir = format!("{}/{}", zone(i).dir(), table_name(i));
            for path in wh.list_files(&dir).unwrap() {
                if let Some(bytes) = wh.read_file(&path).unwrap() {
                    check_whole(i, bytes);
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(c) = wh.committed(period()).unwrap() {
            let mut tags = Vec::new();
            for i in 0..TABLES {
                // The data of a commit can be collected once two newer commits exist: then re-read the pointer.
                match wh.read_commit_table(&c, &table_name(i), zone(i)) {
                    Ok(Some(df)) => tags.push(
                        df.column("run_tag")
                            .unwrap()
                            .str()
                            .unwrap()
                            .get(0)
                            .unwrap()
                            .to_string(),
                    ),
                    _ => break,
                }
            }
            assert!(
                tags.iter().all(|t| *t == c.run_id),
                "tables of one pointer from different runs: {tags:?} vs {}",
                c.run_id
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_at_random_points_never_shows_a_partial_period() {
    let iterations: usize = std::env::var("CSPBILL_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CSPBILL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20240301);
    let clean = {
        let b = common::local();
        let wh = Warehouse::open(&b.url, &b.options).unwrap();
        expected_view(&write_run(&wh, "final").unwrap())
    };
    for b in common::backends("fault") {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let wh = Arc::new(Warehouse::open(&b.url, &b.options).unwrap());
        // How long an undisturbed child run takes, to spread the kills over all of it.
        let start = Instant::now();
        let status = spawn_child(&b, "k-base").wait().unwrap();
        assert!(
            status.success(),
            "{}: an undisturbed child run succeeds",
            b.name
        );
        let full = start.elapsed();
        let (stop, checks) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let reader = {
            let (wh, stop, checks) = (Arc::clone(&wh), Arc::clone(&stop), Arc::clone(&checks));
            std::thread::spawn(move || reader(wh, stop, checks))
        };
        let (mut killed, mut finished, mut committed_by_child, mut rolled_forward) = (0, 0, 0, 0);
        for it in 0..iterations {
            let before = wh.committed(period()).unwrap().unwrap();
            let run_id = format!("k{it}");
            let mut child = spawn_child(&b, &run_id);
            let delay = rng.random_range(0..(full.as_millis() as u64 * 6 / 5).max(1));
            std::thread::sleep(Duration::from_millis(delay));
            match child.try_wait().unwrap() {
                Some(_) => finished += 1,
                None => {
                    child.kill().unwrap(); // SIGKILL
                    killed += 1;
                }
            }
            child.wait().unwrap(); // reaped: its pid is gone, so its lock is stale
            // The next run's `begin` recovers; the Hive files then equal the committed pointer exactly. (Read the
            // pointer after `begin`: a request the killed process had already sent may still land on the server.)
            let pre_view = glob_view(&wh);
            let probe = wh
                .begin(period(), &format!("probe{it}"))
                .unwrap_or_else(|e| panic!("{} it {it}: {e:#}", b.name));
            let after = wh.committed(period()).unwrap().unwrap();
            assert!(
                after == before || after.run_id == run_id,
                "{} it {it}: committed run is `{}`",
                b.name,
                after.run_id
            );
            committed_by_child += usize::from(after.run_id == run_id);
            rolled_forward += usize::from(pre_view != expected_view(&after));
            assert_eq!(
                glob_view(&wh),
                expected_view(&after),
                "{} it {it} (delay {delay} ms)",
                b.name
            );
            drop(probe);
        }
        let last = write_run(&wh, "final").unwrap();
        stop.store(true, Ordering::Relaxed);
        reader
            .join()
            .expect("the reader saw only whole tables of one run");
        assert_eq!(
            expected_view(&last),
            clean,
            "{}: the final run equals a clean run",
            b.name
        );
        assert_eq!(glob_view(&wh), clean, "{}", b.name);
        eprintln!(
            "{}: {iterations} runs, {killed} killed, {finished} finished, {committed_by_child} committed, {rolled_forward} rolled forward by the next run, {} reader checks, seed {seed}",
            b.name,
            checks.load(Ordering::Relaxed)
        );
        assert!(
            killed >= iterations / 2,
            "{}: most runs were killed ({killed})",
            b.name
        );
    }
}
