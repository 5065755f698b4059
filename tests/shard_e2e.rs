//! Sharded runs (`cspbill shard plan | map | commit`, issue 20) on `sample_data/` against every store the test
//! script started: the commit publishes byte for byte what `cspbill run` publishes (every committed file's
//! SHA-256, the landed raw files, the manifest's per-input counts and checks), also with inputs whose names
//! collide and rows repeated across files; a commit is refused while a map shard is missing and publishes
//! nothing; maps run twice at once, or killed at any point and run again, change nothing; a tampered shard
//! output fails the commit. The cluster itself (Dask, a worker killed mid-task) is `tests/shard_cluster.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cspbill::warehouse;
use warehouse::Warehouse;
use pipeline::Period;

mod common;
mod support;

use common::Backend;

const PERIOD: &str = "2025-06";

fn period() -> Period {
    Period::new(2025, 6).unwrap()
}

fn cspbill(b: &Backend, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(args)
        .args(["--warehouse", &b.url])
        .envs(common::child_env(b))
        .env_remove("CSPBILL_WAREHOUSE")
        .env("NO_COLOR", "1")
        .output()
        .expect("running cspbill")
}

fn ok(b: &Backend, args: &[&str]) -> Output {
    let out = cspbill(b, args);
    assert!(
        out.status.success(),
        "{}: cspbill {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
        b.name,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `shard plan`: (plan id, number of map shards), from the JSON line it prints.
fn plan(b: &Backend, config: &Path) -> (String, usize) {
    let out = ok(b, &["shard", "plan", "--config", &config.to_string_lossy(), "--period", PERIOD]);
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("plan printed `{line}`: {e}"));
    assert_eq!(v["period"], PERIOD);
    (v["plan_id"].as_str().unwrap().to_string(), v["files"].as_u64().unwrap() as usize)
}

fn map(b: &Backend, config: &Path, id: &str, n: usize) -> Output {
    ok(b, &["shard", "map", "--config", &config.to_string_lossy(), "--plan", id, "--file", &n.to_string()])
}

fn commit_args(config: &Path, id: &str) -> Vec<String> {
    ["shard", "commit", "--config", &config.to_string_lossy(), "--plan", id].iter().map(|s| s.to_string()).collect()
}

fn commit(b: &Backend, config: &Path, id: &str) -> Output {
    let args = commit_args(config, id);
    ok(b, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// What a committed period published: every file's path and SHA-256 (the commit's files, the raw landing),
/// and the manifest's per-input figures and checks.
fn published(b: &Backend) -> (BTreeMap<String, String>, serde_json::Value, serde_json::Value) {
    let wh = Warehouse::open(&b.url, &b.options).unwrap();
    let c = wh.committed(period()).unwrap().unwrap_or_else(|| panic!("{}: nothing committed", b.name));
    let mut files: BTreeMap<String, String> = c.files.iter().map(|f| (f.path.clone(), f.sha256.clone())).collect();
    for raw in wh.list_files("raw/").unwrap() {
        let bytes = wh.read_file(&raw).unwrap().unwrap();
        files.insert(raw, cspbill::inputs_sha256(&bytes));
    }
    let m = &c.manifest_json;
    // Names, paths (the same snapshot folder's), digests and every count.
    (files, m["inputs"].clone(), m["checks"].clone())
}

/// A sample workspace whose snapshot also holds a second copy of a usage file, in a subfolder: its name collides
/// (both become `folder/name`) and every row of the copy is a duplicate of the first's. One invoice file is
/// delivered as a v2 export instead: a folder with `manifest.json` and two gzipped JSON-lines blobs (one map
/// shard, two inputs).
fn workspace() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::io::Write;
    let (t, ws) = support::sample_workspace();
    let snap = ws.join("inputs").join(PERIOD);
    let again = snap.join("restated");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::copy(snap.join("G107047573_BilledUsage_202506.csv"), again.join("G107047573_BilledUsage_202506.csv")).unwrap();
    let recon = snap.join("G248241492_InvoiceRecon_202506.csv");
    let df = support::read_csv_as_text(&recon);
    std::fs::remove_file(&recon).unwrap();
    let v2 = snap.join("export-v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("manifest.json"), r#"{"version":"2","dataFormat":"compressedJSON","blobCount":2}"#).unwrap();
    let names: Vec<String> = df.get_column_names().iter().map(|c| c.trim_start_matches('\u{feff}').to_string()).collect();
    let half = df.height() / 2;
    for (i, (from, to)) in [(0, half), (half, df.height())].into_iter().enumerate() {
        let f = std::fs::File::create(v2.join(format!("part{i}.json.gz"))).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        for r in from..to {
            let mut o = serde_json::Map::new();
            for (n, c) in names.iter().zip(df.columns()) {
                let v = c.str().unwrap().get(r);
                o.insert(n.clone(), v.map_or(serde_json::Value::Null, |v| serde_json::Value::String(v.to_string())));
            }
            writeln!(gz, "{}", serde_json::Value::Object(o)).unwrap();
        }
        gz.finish().unwrap();
    }
    (t, ws)
}

fn assert_same(single: &Backend, sharded: &Backend) {
    let (fa, ia, ca) = published(single);
    let (fb, ib, cb) = published(sharded);
    assert!(fa.len() > 20, "{fa:?}");
    let differ: Vec<_> = fa.keys().chain(fb.keys()).filter(|k| fa.get(*k) != fb.get(*k)).collect();
    assert!(differ.is_empty(), "{}: files differ from the single run: {differ:?}", sharded.name);
    assert_eq!(ia, ib, "{}: per-input figures", sharded.name);
    assert_eq!(ca, cb, "{}: checks", sharded.name);
}

#[test]
fn a_sharded_run_publishes_byte_for_byte_what_a_single_run_does() {
    let (_t, ws) = workspace();
    let config = ws.join("cspbill.toml");
    let single = common::local();
    ok(&single, &["run", "--config", &config.to_string_lossy(), "--period", PERIOD]);
    let (_, inputs, _) = published(&single);
    let names: Vec<&str> = inputs.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    // The two files of one name are told apart by their folder, and the copy's rows are all duplicates.
    assert!(names.contains(&"2025-06/G107047573_BilledUsage_202506.csv") && names.contains(&"restated/G107047573_BilledUsage_202506.csv"), "{names:?}");
    let copy = inputs.as_array().unwrap().iter().find(|i| i["name"] == "restated/G107047573_BilledUsage_202506.csv").unwrap();
    assert!(copy["rows_in"].as_u64().unwrap() > 0 && copy["duplicates"] == copy["rows_in"], "{copy}");
    let blobs: Vec<&serde_json::Value> = inputs.as_array().unwrap().iter().filter(|i| i["format"] == "v2_blob").collect();
    assert_eq!(blobs.len(), 2, "{inputs}");
    assert!(blobs.iter().all(|b| b["staged"].as_u64().unwrap() > 0 && b["rejected"] == 0), "{blobs:?}");

    for b in common::backends("shard") {
        let (id, files) = plan(&b, &config);
        assert_eq!(files, 5, "three files, the v2 export folder and the copy");
        // Planning the same inputs again is the same plan.
        assert_eq!(plan(&b, &config), (id.clone(), files));
        // Maps in any order.
        for n in (0..files).rev() {
            map(&b, &config, &id, n);
        }
        let out = commit(&b, &config, &id);
        assert!(String::from_utf8_lossy(&out.stdout).contains("published 2025-06"), "{}", String::from_utf8_lossy(&out.stdout));
        assert_same(&single, &b);
        let wh = Warehouse::open(&b.url, &b.options).unwrap();
        assert_eq!(wh.committed(period()).unwrap().unwrap().manifest_json["config"]["shard_plan"], id.as_str());
    }
}

#[test]
fn a_commit_is_refused_while_a_map_shard_is_missing_and_publishes_nothing() {
    let (_t, ws) = support::sample_workspace();
    let config = ws.join("cspbill.toml");
    let b = common::local();
    let (id, files) = plan(&b, &config);
    assert_eq!(files, 4);
    for n in 0..files - 1 {
        map(&b, &config, &id, n);
    }
    let args = commit_args(&config, &id);
    let out = cspbill(&b, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("--file 3") && err.contains("1 of 4"), "{err}");
    let wh = Warehouse::open(&b.url, &b.options).unwrap();
    assert!(wh.committed(period()).unwrap().is_none());
    assert!(wh.list_files("marts/").unwrap().is_empty() && wh.list_files("raw/").unwrap().is_empty() && wh.list_files("_runs/").unwrap().is_empty());
    let status = |b: &Backend| -> serde_json::Value {
        let out = ok(b, &["shard", "status", "--config", &config.to_string_lossy(), "--plan", &id]);
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
    };
    let st = status(&b);
    assert_eq!((st["missing"].clone(), st["done"].clone()), (serde_json::json!([3]), serde_json::json!([0, 1, 2])), "{st}");
    assert_eq!((st["ready_to_commit"].as_bool(), st["committed"].as_bool()), (Some(false), Some(false)), "{st}");
    map(&b, &config, &id, files - 1);
    commit(&b, &config, &id);
    assert!(wh.committed(period()).unwrap().is_some());
    let st = status(&b);
    assert_eq!((st["ready_to_commit"].as_bool(), st["committed"].as_bool(), st["committed_version"].as_u64()), (Some(true), Some(true), Some(1)), "{st}");

    // `shard clean` deletes the plan's work files and nothing that was published.
    let published_before = published(&b);
    let out = ok(&b, &["shard", "clean", "--config", &config.to_string_lossy(), "--plan", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("deleted plan {id}")));
    assert!(wh.list_files("_shards/").unwrap().is_empty());
    assert_eq!(published(&b), published_before);
    let out = cspbill(&b, &["shard", "commit", "--config", &config.to_string_lossy(), "--plan", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    // Bad numbers and ids are usage errors naming what to pass.
    let (id, _) = plan(&b, &config);
    let out = cspbill(&b, &["shard", "map", "--config", &config.to_string_lossy(), "--plan", &id, "--file", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("numbered 0 to 3"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cspbill(&b, &["shard", "map", "--config", &config.to_string_lossy(), "--plan", "2025-06-0000000000000000", "--file", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard plan"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cspbill(&b, &["shard", "map", "--config", &config.to_string_lossy(), "--plan", "../x", "--file", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

fn spawn(b: &Backend, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(args)
        .args(["--warehouse", &b.url])
        .envs(common::child_env(b))
        .env_remove("CSPBILL_WAREHOUSE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cspbill")
}

#[test]
fn maps_run_twice_at_once_or_killed_anywhere_and_rerun_change_nothing() {
    let (_t, ws) = support::sample_workspace();
    let config = ws.join("cspbill.toml");
    let cfg = config.to_string_lossy().to_string();
    let single = common::local();
    ok(&single, &["run", "--config", &cfg, "--period", PERIOD]);
    let b = common::local();
    let (id, files) = plan(&b, &config);
    let done = |n: usize| Path::new(&b.url).join(format!("_shards/{id}/map/{n:05}/done.json"));

    // Two maps of one input at once: both succeed, one output.
    let args = ["shard", "map", "--config", &cfg, "--plan", &id, "--file", "0"];
    let (c1, c2) = (spawn(&b, &args), spawn(&b, &args));
    for c in [c1, c2] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(done(0).is_file());

    // A map killed at points spread over its run leaves no `done.json` behind, or a whole one; run again it
    // finishes. How long a map takes here is measured first, so the kills land inside it.
    let started = std::time::Instant::now();
    map(&b, &config, &id, 1);
    let took = started.elapsed();
    std::fs::remove_file(done(1)).unwrap();
    let mut killed_before_done = 0;
    for i in 0..6u32 {
        let mut c = spawn(&b, &["shard", "map", "--config", &cfg, "--plan", &id, "--file", "1"]);
        std::thread::sleep(took * i / 6);
        let _ = c.kill();
        let _ = c.wait();
        if !done(1).is_file() {
            killed_before_done += 1;
        } else {
            let d: serde_json::Value = serde_json::from_slice(&std::fs::read(done(1)).unwrap()).expect("a whole done.json");
            assert_eq!(d["units"].as_array().unwrap().len(), 1);
            std::fs::remove_file(done(1)).unwrap();
        }
    }
    assert!(killed_before_done >= 1, "no kill landed before the map finished");
    for n in 1..files {
        map(&b, &config, &id, n);
    }
    // A map already done is a no-op.
    let again = map(&b, &config, &id, 2);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already done"));
    commit(&b, &config, &id);
    assert_same(&single, &b);
}

#[test]
fn a_tampered_shard_output_fails_the_commit_naming_it() {
    let (_t, ws) = support::sample_workspace();
    let config = ws.join("cspbill.toml");
    let single = common::local();
    ok(&single, &["run", "--config", &config.to_string_lossy(), "--period", PERIOD]);
    let b = common::local();
    let (id, files) = plan(&b, &config);
    for n in 0..files {
        map(&b, &config, &id, n);
    }
    let typed = Path::new(&b.url).join(format!("_shards/{id}/map/00002/typed-000.parquet"));
    let mut bytes = std::fs::read(&typed).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&typed, bytes).unwrap();
    let args = commit_args(&config, &id);
    let out = cspbill(&b, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("map shard 2") && err.contains("typed-000.parquet") && err.contains("run the map again"), "{err}");
    assert!(Warehouse::open(&b.url, &b.options).unwrap().committed(period()).unwrap().is_none());


    // A plan is a snapshot: an input changed after planning gives a new plan, and the old plan, its shard
    // mapped again as the message says, still commits what it planned.
    support::restate_one_usage_row(&ws.join("inputs").join(PERIOD));
    let (id2, _) = plan(&b, &config);
    assert_ne!(id, id2);
    std::fs::remove_file(Path::new(&b.url).join(format!("_shards/{id}/map/00002/done.json"))).unwrap();
    map(&b, &config, &id, 2);
    commit(&b, &config, &id);
    assert_same(&single, &b);
}

/// `[run] buckets = 3` in the workspace's config.
fn with_buckets(ws: &Path, n: u32) {
    let cfg = ws.join("cspbill.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("\n[run]\nbuckets = {n}\n"));
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn with_buckets_the_reduces_build_the_invoice_files_and_the_commit_equals_the_single_run() {
    let (_t, ws) = workspace();
    let config = ws.join("cspbill.toml");
    let cfg = config.to_string_lossy().to_string();
    // The same month with one bucket, for the files that must not depend on the bucket count.
    let whole = common::local();
    ok(&whole, &["run", "--config", &cfg, "--period", PERIOD]);
    with_buckets(&ws, 3);
    let single = common::local();
    ok(&single, &["run", "--config", &cfg, "--period", PERIOD]);

    // Bucketed or not, the invoices, their lines, every per-invoice file and every other table are the same
    // bytes; `fct_invoice_detail` and `focus_cost_and_usage` hold the same rows (in bucket order).
    let (fw, _, _) = published(&whole);
    let (fs, _, _) = published(&single);
    let reordered = ["marts/fct_invoice_detail/period=2025-06/part-0.parquet", "marts/focus_cost_and_usage/period=2025-06/part-0.parquet"];
    let differ: Vec<&String> = fw.keys().chain(fs.keys()).filter(|k| fw.get(*k) != fs.get(*k) && !reordered.contains(&k.as_str())).collect();
    assert!(differ.is_empty(), "buckets changed these files: {differ:?}");
    assert!(fs.keys().filter(|k| k.ends_with(".pdf")).count() >= 5);
    let p = period();
    let (a, b) = (Warehouse::open(&whole.url, &whole.options).unwrap(), Warehouse::open(&single.url, &single.options).unwrap());
    assert!(common::compare_committed(&a, &b, p, &[]).is_empty(), "{:?}", common::compare_committed(&a, &b, p, &[]));

    for b in common::backends("shard-buckets") {
        let out = ok(&b, &["shard", "plan", "--config", &cfg, "--period", PERIOD]);
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let (id, files) = (v["plan_id"].as_str().unwrap().to_string(), v["files"].as_u64().unwrap() as usize);
        assert_eq!(v["buckets"], 3, "{v}");
        let run = |args: &[&str]| cspbill(&b, args);
        // Phases in order: a stage before its maps, a reduce before the stage, a commit before the reduces.
        let out = run(&["shard", "stage", "--config", &cfg, "--plan", &id]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        for n in 0..files {
            map(&b, &config, &id, n);
        }
        let out = run(&["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", "0"]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("shard stage"), "{}", String::from_utf8_lossy(&out.stderr));
        ok(&b, &["shard", "stage", "--config", &cfg, "--plan", &id]);
        for k in [2, 0] {
            ok(&b, &["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", &k.to_string()]);
        }
        let out = run(&["shard", "commit", "--config", &cfg, "--plan", &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--bucket 1") && err.contains("1 of 3 reduce"), "{err}");
        assert!(Warehouse::open(&b.url, &b.options).unwrap().committed(p).unwrap().is_none());
        let out = run(&["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", "3"]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        ok(&b, &["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", "1"]);
        // Staged again for another invoice date, every reduce is stale: the commit refuses them until they are
        // run again, and a reduce run again rebuilds rather than reporting "already done".
        ok(&b, &["shard", "stage", "--config", &cfg, "--plan", &id, "--invoice-date", "2025-07-15"]);
        let out = run(&["shard", "commit", "--config", &cfg, "--plan", &id, "--invoice-date", "2025-07-15"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("earlier stage"), "{err}");
        let again = ok(&b, &["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", "0"]);
        assert!(!String::from_utf8_lossy(&again.stdout).contains("already done"));
        // Back to the config's invoice date, and every reduce for it.
        ok(&b, &["shard", "stage", "--config", &cfg, "--plan", &id]);
        for k in 0..3 {
            ok(&b, &["shard", "reduce", "--config", &cfg, "--plan", &id, "--bucket", &k.to_string()]);
        }
        // A commit for another invoice date than the stage's would publish files of other invoices: refused.
        let out = run(&["shard", "commit", "--config", &cfg, "--plan", &id, "--invoice-date", "2025-07-15"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("differ from those the stage numbered"), "{err}");
        commit(&b, &config, &id);
        assert_same(&single, &b);
    }
}
