//! Change control of reference files (issue 16), end to end: the `cspbill` binary on a copy of `sample_data/`
//! with `[change_control]` on (propose → approve × 2 → the run bills with it; self-approval refused; one role
//! missing → not in force; a large price effect needs an executive; a working copy that differs warns at nightly
//! and stops a close; `explain` names the version, the change and its approvers; the audit log read back by
//! DuckDB), and the library's approvals on every store (local, S3 on moto, Azure on Azurite): concurrent
//! approvals, two changes racing for one version, and an audit log that is never rewritten.

use cspbill::warehouse;

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Barrier};

use cspbill::change_control::{self as cc, State};
use warehouse::Warehouse;
use polars::prelude::*;
use support::{copy_dir, duckdb_csv, python, repo};

const PERIOD: &str = "2025-06";

const CC_BLOCK: &str = r#"
[change_control]
enabled = true
executive_threshold = "0.05"

[change_control.roles]
rate_cards = ["finance", "sales_ops"]
tag_rules = ["finance", "sales_ops"]
"#;

/// A copy of the sample workspace (without any warehouse), with change control appended to its config.
fn workspace(enable: bool) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    for d in ["inputs", "reference"] {
        copy_dir(&repo().join("sample_data").join(d), &ws.join(d));
    }
    let mut toml = std::fs::read_to_string(repo().join("sample_data/cspbill.toml")).unwrap();
    if enable {
        toml.push_str(CC_BLOCK);
    }
    std::fs::write(ws.join("cspbill.toml"), toml).unwrap();
    (t, ws)
}

/// Runs cspbill with `CSPBILL_USER` set to `user` (or unset).
fn cspbill(args: &[&str], user: Option<&str>) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cspbill"));
    c.args(args).env("NO_COLOR", "1").env_remove("CSPBILL_WAREHOUSE").env_remove("CSPBILL_USER");
    if let Some(u) = user {
        c.env("CSPBILL_USER", u);
    }
    c.output().expect("running cspbill")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn expect(o: Output, code: i32, what: &str) -> (String, String) {
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{what}: expected exit {code}\nstdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

struct Ws {
    dir: PathBuf,
    config: String,
}

impl Ws {
    fn run(&self, mode: &str) -> Output {
        cspbill(&["run", "--config", &self.config, "--period", PERIOD, "--mode", mode], Some("scheduler@msp"))
    }
    fn propose(&self, file: &Path, by: &str, reason: &str) -> String {
        let (out, _) = expect(
            cspbill(&["ref", "propose", "--config", &self.config, "--file", file.to_str().unwrap(), "--by", by, "--reason", reason], None),
            0,
            "propose",
        );
        let line = out.lines().find(|l| l.starts_with("proposed change ")).unwrap_or_else(|| panic!("no change id in:\n{out}"));
        line.split_whitespace().nth(2).unwrap().trim_end_matches(':').to_string()
    }
    fn approve(&self, change: &str, by: &str, role: &str) -> Output {
        cspbill(&["ref", "approve", change, "--config", &self.config, "--by", by, "--role", role], None)
    }
    fn reference(&self, name: &str) -> PathBuf {
        self.dir.join("reference").join(name)
    }
    fn edit(&self, name: &str, from: &str, to: &str) {
        let p = self.reference(name);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{name} has no `{from}`");
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    }
    /// The manifest of the period's latest committed run.
    fn manifest(&self) -> serde_json::Value {
        let dir = self.dir.join("warehouse/_commits/period=2025-06");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
        v.sort();
        let commit: serde_json::Value = serde_json::from_slice(&std::fs::read(v.last().unwrap()).unwrap()).unwrap();
        commit["manifest_json"].clone()
    }
    /// The distinct `rate_value`s applied by a rule in the published `int_charges_rated`.
    fn rate_values(&self, rule: &str) -> Vec<String> {
        let f = self.dir.join("warehouse/int/int_charges_rated/period=2025-06/part-0.parquet");
        let df = ParquetReader::new(std::fs::File::open(f).unwrap())
            .finish()
            .unwrap()
            .lazy()
            .filter(col("rate_rule_id").eq(lit(rule)))
            .select([col("rate_value").cast(DataType::String)])
            .unique(None, UniqueKeepStrategy::First)
            .collect()
            .unwrap();
        let c = df.column("rate_value").unwrap().str().unwrap().clone();
        let mut v: Vec<String> = (0..c.len()).filter_map(|i| c.get(i)).map(|s| s.trim_end_matches('0').trim_end_matches('.').to_string()).collect();
        v.sort();
        v
    }
    /// A part rated by `rule`.
    fn part(&self, rule: &str) -> String {
        let f = self.dir.join("warehouse/int/int_charges_rated/period=2025-06/part-0.parquet");
        let df = ParquetReader::new(std::fs::File::open(f).unwrap())
            .finish()
            .unwrap()
            .lazy()
            .filter(col("rate_rule_id").eq(lit(rule)))
            .select([col("part_id")])
            .sort(["part_id"], Default::default())
            .limit(1)
            .collect()
            .unwrap();
        df.column("part_id").unwrap().str().unwrap().get(0).unwrap().to_string()
    }
}

fn sha_of(p: &Path) -> String {
    cspbill::inputs_sha256(&std::fs::read(p).unwrap())
}

fn rate_card_entry(m: &serde_json::Value) -> serde_json::Value {
    m["change_control"]["files"].as_array().unwrap().iter().find(|f| f["table"] == "rate_cards").unwrap().clone()
}

#[test]
fn propose_approve_run_close_explain_and_audit_on_sample_data() {
    let (_t, dir) = workspace(true);
    let w = Ws { config: dir.join("cspbill.toml").to_string_lossy().into_owned(), dir };
    let rates = w.reference("rate_cards.csv");
    let tags = w.reference("tag_rules.csv");
    let v1_sha = sha_of(&rates);

    // Nothing approved yet: no run, and the message says how to bootstrap.
    let (_, err) = expect(w.run("nightly"), 2, "run before any approval");
    assert!(err.contains("no version is approved yet") && err.contains("cspbill ref propose"), "{err}");

    // The first versions: every rule added; a proposer cannot approve their own change.
    let a = w.propose(&rates, "alice@msp", "first approved version");
    let t = w.propose(&tags, "alice@msp", "first approved version");
    let (_, err) = expect(w.approve(&a, "alice@msp", "finance"), 2, "self-approval");
    assert!(err.contains("cannot approve"), "{err}");
    let (out, _) = expect(w.approve(&a, "bob@msp", "finance"), 0, "bob approves A");
    assert!(out.contains("pending: needs sales_ops"), "{out}");
    // One role missing: not in force, the run still refuses.
    expect(w.run("nightly"), 2, "run with one role missing");
    let (out, _) = expect(w.approve(&a, "carol@msp", "sales_ops"), 0, "carol approves A");
    assert!(out.contains("in force (version 1)"), "{out}");
    expect(w.approve(&t, "bob@msp", "finance"), 0, "bob approves T");
    expect(w.approve(&t, "carol@msp", "sales_ops"), 0, "carol approves T");

    expect(w.run("nightly"), 0, "nightly with approved versions");
    let rc = rate_card_entry(&w.manifest());
    assert_eq!(rc["approved_version"], 1);
    assert_eq!(rc["sha256"], v1_sha.as_str());
    assert_eq!(rc["change_id"], a.as_str());
    assert_eq!(rc["working_copy_differs"], false);
    let staged = w.manifest()["reference_files"].as_array().unwrap().iter().find(|f| f["table"] == "stg_rate_cards").unwrap().clone();
    assert_eq!(staged["sha256"], v1_sha.as_str());
    assert!(staged["path"].as_str().unwrap().ends_with(&format!("/_reference/rate_cards/sha256={v1_sha}.csv")), "{staged}");
    assert_eq!(w.rate_values("DEF-LICENSE"), vec!["0.12"]);

    // The working copy changes (12 % → 13 % on licences): the run warns and still bills version 1.
    w.edit("rate_cards.csv", "DEF-LICENSE,*,*,license,,,*,markup_on_cost,0.12", "DEF-LICENSE,*,*,license,,,*,markup_on_cost,0.13");
    let (_, err) = expect(w.run("nightly"), 0, "nightly with a changed working copy");
    assert!(err.contains("differs from the approved version 1") && err.contains("no pending change proposes it"), "{err}");
    let b = w.propose(&rates, "alice@msp", "licence margin 13 %");
    let (show, _) = expect(cspbill(&["ref", "show", &b, "--config", &w.config], None), 0, "show B");
    assert!(show.contains("~ DEF-LICENSE: value \"0.12\" → \"0.13\""), "{show}");
    assert!(show.contains("0 rule(s) added, 0 removed, 1 changed"), "{show}");
    let (_, err) = expect(w.run("nightly"), 0, "nightly with a pending change");
    assert!(err.contains(&format!("pending change {b} proposes it")), "{err}");
    assert_eq!(rate_card_entry(&w.manifest())["sha256"], v1_sha.as_str());
    assert_eq!(rate_card_entry(&w.manifest())["pending_change"], b.as_str());
    assert_eq!(w.rate_values("DEF-LICENSE"), vec!["0.12"]);

    // A close refuses while the working copy differs, naming the change, also with one role still missing.
    let (_, err) = expect(w.run("close"), 1, "close with a pending change");
    assert!(err.contains(&b) && err.contains("differs"), "{err}");
    expect(w.approve(&b, "bob@msp", "finance"), 0, "bob approves B");
    let (_, err) = expect(w.run("close"), 1, "close with B half approved");
    assert!(err.contains(&b) && err.contains("needs sales_ops"), "{err}");
    let (out, _) = expect(w.approve(&b, "carol@msp", "sales_ops"), 0, "carol approves B");
    assert!(out.contains("in force (version 2)"), "{out}");

    // 17 % → 25 % on Azure from 16 June: 1.25 / 1.17 − 1 = 6.84 % > 5 %: an executive must approve too.
    w.edit("rate_cards.csv", "DEF-AZURE-H2,*,*,azure_usage,,,*,markup_on_cost,17%", "DEF-AZURE-H2,*,*,azure_usage,,,*,markup_on_cost,25%");
    let c = w.propose(&rates, "alice@msp", "Azure margin review");
    let (show, _) = expect(cspbill(&["ref", "show", &c, "--config", &w.config], None), 0, "show C");
    assert!(show.contains("largest 6.84 %") && show.contains("an executive approval is required"), "{show}");
    expect(w.approve(&c, "bob@msp", "finance"), 0, "bob approves C");
    let (out, _) = expect(w.approve(&c, "carol@msp", "sales_ops"), 0, "carol approves C");
    assert!(out.contains("pending: needs executive"), "{out}");
    let (_, err) = expect(w.approve(&c, "bob@msp", "executive"), 2, "bob in a second role");
    assert!(err.contains("already approved"), "{err}");
    expect(w.run("close"), 1, "close without the executive");
    let (out, _) = expect(w.approve(&c, "dave@msp", "executive"), 0, "dave approves C");
    assert!(out.contains("in force (version 3)"), "{out}");

    // A rejected change never takes effect.
    let spare = w.dir.join("rate_cards_spare.csv");
    std::fs::write(&spare, std::fs::read_to_string(&rates).unwrap().replace("DEF-RESERVATION,*,*,reservation,,,*,markup_on_cost,0.08", "DEF-RESERVATION,*,*,reservation,,,*,markup_on_cost,0.09")).unwrap();
    let d = w.propose(&spare, "alice@msp", "reservations 9 %");
    expect(cspbill(&["ref", "reject", &d, "--config", &w.config, "--by", "bob@msp", "--reason", "not this quarter"], None), 0, "reject D");
    expect(w.approve(&d, "carol@msp", "sales_ops"), 2, "approving a rejected change");

    expect(w.run("close"), 0, "close with everything approved");
    let m = w.manifest();
    let rc = rate_card_entry(&m);
    assert_eq!(rc["approved_version"], 3);
    assert_eq!(rc["sha256"], sha_of(&rates).as_str());
    assert_eq!(rc["change_id"], c.as_str());
    assert_eq!(w.rate_values("DEF-LICENSE"), vec!["0.13"]);
    assert_eq!(w.rate_values("DEF-AZURE-H2"), vec!["0.25"]);
    let (list, _) = expect(cspbill(&["ref", "list", "--config", &w.config], None), 0, "list");
    for (id, state) in [(&a, "superseded (was version 1"), (&b, "superseded (was version 2"), (&c, "in force (version 3)"), (&d, "rejected by bob@msp")] {
        assert!(list.lines().any(|l| l.starts_with(id.as_str()) && l.contains(state)), "{id} {state}:\n{list}");
    }

    // explain names the version, the change behind the winning rule and its approvers.
    let (out, _) = expect(cspbill(&["explain", "--config", &w.config, "--period", PERIOD, "--line", &w.part("DEF-AZURE-H2")], Some("erin@msp")), 0, "explain H2");
    assert!(out.contains(&format!("approved rate card version 3 (sha256 {}, change {c})", sha_of(&rates))), "{out}");
    assert!(out.contains(&format!("rule DEF-AZURE-H2 as billed was introduced by change {c} (version 3), proposed by alice@msp")), "{out}");
    for who in ["bob@msp (finance", "carol@msp (sales_ops", "dave@msp (executive"] {
        assert!(out.contains(who), "{who}:\n{out}");
    }
    let (out, _) = expect(cspbill(&["explain", "--config", &w.config, "--period", PERIOD, "--line", &w.part("DEF-LICENSE"), "--format", "json"], Some("erin@msp")), 0, "explain licence");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["change_control"]["rule_change"]["change_id"], b.as_str());
    assert_eq!(v[0]["change_control"]["rule_change"]["fields"][0]["old"], "0.12");
    let (out, _) = expect(cspbill(&["explain", "--config", &w.config, "--period", PERIOD, "--line", &w.part("DEF-RESERVATION")], Some("erin@msp")), 0, "explain reservation");
    assert!(out.contains(&format!("introduced by change {a} (version 1)")), "{out}");

    // The audit log, read back by DuckDB: one object per event, every event of the story above.
    let Some(py) = python() else { return };
    let root = w.dir.join("warehouse/_audit").to_string_lossy().into_owned();
    let src = format!("read_json('{root}/*/*.jsonl', hive_partitioning = true)");
    let counts = duckdb_csv(&py, &format!("select event, count(*) as n from {src} group by event order by event"));
    // proposals A T B C D; approvals A 2, T 2, B 2, C 3; in force A T B C; runs: 3 nightly; 1 close; 3 explains.
    assert_eq!(counts, "event,n\napproval,9\nclose,1\nexplain,3\nin_force,4\nproposal,5\nrejection,1\nrun,3\n");
    let approvals = duckdb_csv(&py, &format!("select actor, role, reason is null as no_reason from {src} where event = 'approval' and change_id = '{c}' order by role"));
    assert_eq!(approvals, "actor,role,no_reason\ndave@msp,executive,True\nbob@msp,finance,True\ncarol@msp,sales_ops,True\n");
    let changes = duckdb_csv(&py, &format!("select actor, reason, c.rule_id, c.kind, c.field, c.old, c.new from (select actor, reason, unnest(changes) as c from {src} where event = 'proposal' and change_id = '{c}')"));
    assert_eq!(changes, "actor,reason,rule_id,kind,field,old,new\nalice@msp,Azure margin review,DEF-AZURE-H2,changed,value,17%,25%\n");
    let close = duckdb_csv(&py, &format!("select actor, actor_source, period from {src} where event = 'close'"));
    assert_eq!(close, "actor,actor_source,period\nscheduler@msp,CSPBILL_USER,2025-06\n");
    let files = std::fs::read_dir(&root).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap()).count();
    assert_eq!(files, 9 + 1 + 3 + 4 + 5 + 1 + 3, "one object per event");
}

#[test]
fn a_bad_proposal_is_refused_with_file_line_column_and_nothing_is_stored() {
    let (_t, dir) = workspace(true);
    let config = dir.join("cspbill.toml").to_string_lossy().into_owned();
    let bad = dir.join("proposed_rate_cards.csv");
    let good = std::fs::read_to_string(dir.join("reference/rate_cards.csv")).unwrap();
    // Line 3 (header = 1) gets an unknown method.
    std::fs::write(&bad, good.replacen("DEF-AZURE-H2,*,*,azure_usage,,,*,markup_on_cost", "DEF-AZURE-H2,*,*,azure_usage,,,*,markup_on_kost", 1)).unwrap();
    let (_, err) = expect(
        cspbill(&["ref", "propose", "--config", &config, "--file", bad.to_str().unwrap(), "--table", "rate_cards", "--by", "alice@msp", "--reason", "typo"], None),
        2,
        "bad proposal",
    );
    assert!(err.contains("proposed_rate_cards.csv:3: column `method`"), "{err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert!(!dir.join("warehouse").exists() || std::fs::read_dir(dir.join("warehouse")).unwrap().all(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        !["_changes", "_reference", "_approved", "_audit"].contains(&n.as_str())
    }), "nothing stored");
    // No identity: refused before anything else.
    let (_, err) = expect(cspbill(&["ref", "propose", "--config", &config, "--file", bad.to_str().unwrap(), "--reason", "x"], None), 2, "no --by");
    assert!(err.contains("--by"), "{err}");
}

#[test]
fn disabled_change_control_keeps_todays_behaviour_and_says_so() {
    let (_t, dir) = workspace(false);
    let config = dir.join("cspbill.toml").to_string_lossy().into_owned();
    let rates = dir.join("reference/rate_cards.csv");
    let (_, err) = expect(
        cspbill(&["ref", "propose", "--config", &config, "--file", rates.to_str().unwrap(), "--by", "alice@msp", "--reason", "x"], None),
        2,
        "propose with change control off",
    );
    assert!(err.contains("change control is disabled"), "{err}");
    expect(cspbill(&["run", "--config", &config, "--period", PERIOD], None), 0, "run with change control off");
    let w = Ws { config, dir };
    let m = w.manifest();
    assert_eq!(m["change_control"]["enabled"], false);
    let files = m["reference_files"].as_array().unwrap();
    let rc = files.iter().find(|f| f["table"] == "stg_rate_cards").unwrap();
    assert_eq!(rc["sha256"], sha_of(&rates).as_str(), "the working copy is billed");
}

// ---------------------------------------------------------------------------------------------------------------
// The library on every store

fn open(b: &common::Backend) -> Warehouse {
    Warehouse::open(&b.url, &b.options).unwrap_or_else(|e| panic!("opening {} at {}: {e:#}", b.name, b.url))
}

fn edited(ws: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let s = std::fs::read_to_string(ws.join("reference/rate_cards.csv")).unwrap();
    assert!(s.contains(from));
    let p = ws.join(name);
    std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    p
}

#[test]
fn concurrent_approvals_and_racing_changes_on_every_store() {
    let (_t, ws) = workspace(true);
    let cfg = cspbill::config::load(&ws.join("cspbill.toml")).unwrap();
    let rates = ws.join("reference/rate_cards.csv");
    let lic = |v: &str| edited(&ws, &format!("rc_lic_{v}.csv"), "license,,,*,markup_on_cost,0.12", &format!("license,,,*,markup_on_cost,{v}"));
    let (f13, f14, f11) = (lic("0.13"), lic("0.14"), lic("0.11"));
    for b in common::backends("change-control") {
        let wh = open(&b);
        let a = cc::propose(&cfg, &wh, &rates, None, "alice@msp", "first").unwrap();

        // Two roles approved at the same moment by two people: both land, version 1 is created once.
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<anyhow::Result<State>> = std::thread::scope(|s| {
            let hs: Vec<_> = [("bob@msp", "finance"), ("carol@msp", "sales_ops")]
                .into_iter()
                .map(|(by, role)| {
                    let (barrier, cfg, b, id) = (Arc::clone(&barrier), &cfg, &b, a.change_id.clone());
                    s.spawn(move || {
                        let wh = open(b);
                        barrier.wait();
                        cc::approve(cfg, &wh, &id, by, role, None).map(|(_, st)| st)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r.is_ok()), "{}: {:?}", b.name, results.iter().map(|r| r.as_ref().map_err(|e| format!("{e:#}"))).collect::<Vec<_>>());
        assert!(results.iter().any(|r| matches!(r, Ok(State::InForce { version: 1 }))), "{}: {results:?}", b.name);
        let vs = cc::versions(&wh, "rate_cards").unwrap();
        assert_eq!(vs.iter().map(|v| (v.version, v.change_id.clone())).collect::<Vec<_>>(), vec![(1, a.change_id.clone())], "{}", b.name);
        assert_eq!(vs[0].approvals.len(), 2, "{}", b.name);

        // Two people approving one role at once: exactly one approval lands.
        let p13 = cc::propose(&cfg, &wh, &f13, Some("rate_cards"), "alice@msp", "13 %").unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<anyhow::Result<State>> = std::thread::scope(|s| {
            let hs: Vec<_> = ["bob@msp", "erin@msp"]
                .into_iter()
                .map(|by| {
                    let (barrier, cfg, b, id) = (Arc::clone(&barrier), &cfg, &b, p13.change_id.clone());
                    s.spawn(move || {
                        let wh = open(b);
                        barrier.wait();
                        cc::approve(cfg, &wh, &id, by, "finance", None).map(|(_, st)| st)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{}: {results:?}", b.name);
        let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert_eq!(cspbill::error::exit_code(lost), 2, "{}: {lost:#}", b.name);

        // Two changes proposed against version 1, completed at the same moment: exactly one becomes version 2,
        // the other is stale (it would silently undo the first).
        let p14 = cc::propose(&cfg, &wh, &f14, Some("rate_cards"), "alice@msp", "14 %").unwrap();
        cc::approve(&cfg, &wh, &p14.change_id, "bob@msp", "finance", None).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        // The loser either finds the version taken when it completes (stale), or already when it approves (refused).
        let results: Vec<Result<State, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = [p13.change_id.clone(), p14.change_id.clone()]
                .into_iter()
                .zip(["carol@msp", "frank@msp"])
                .map(|(id, by)| {
                    let (barrier, cfg, b) = (Arc::clone(&barrier), &cfg, &b);
                    s.spawn(move || {
                        let wh = open(b);
                        barrier.wait();
                        cc::approve(cfg, &wh, &id, by, "sales_ops", None).map(|(_, st)| st).map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|s| matches!(s, Ok(State::InForce { version: 2 }))).count(), 1, "{}: {results:?}", b.name);
        assert_eq!(
            results.iter().filter(|s| matches!(s, Ok(State::Stale { base: 1, latest: 2 })) || s.as_ref().is_err_and(|e| e.contains("stale (proposed against version 1; version 2 is in force)"))).count(),
            1,
            "{}: {results:?}",
            b.name
        );
        let vs = cc::versions(&wh, "rate_cards").unwrap();
        assert_eq!(vs.len(), 2, "{}", b.name);
        assert!([&p13.change_id, &p14.change_id].contains(&&vs[1].change_id), "{}", b.name);

        // A run reads the version in force from this store; the working copy (version 1) differs: a warning at
        // nightly, exit 1 at close.
        let mut only_rates = cfg.clone();
        only_rates.change_control.roles.remove("tag_rules");
        let mut m = cspbill::manifest::Manifest::new("r", PERIOD, "nightly", &b.url, String::new());
        let (pinned_cfg, pinned) = cc::pin(only_rates.clone(), &wh, pipeline::RunMode::Nightly, &mut m).unwrap();
        assert_eq!(sha_of(Path::new(&pinned_cfg.inputs.rate_cards)), vs[1].sha256, "{}", b.name);
        assert_eq!(m.change_control["files"][0]["approved_version"], 2, "{}", b.name);
        assert_eq!(m.warnings.len(), 1, "{}: {:?}", b.name, m.warnings);
        drop(pinned);
        let mut m = cspbill::manifest::Manifest::new("r", PERIOD, "close", &b.url, String::new());
        let e = cc::pin(only_rates, &wh, pipeline::RunMode::Close, &mut m).err().expect("a close refuses");
        assert_eq!(cspbill::error::exit_code(&e), 1, "{}: {e:#}", b.name);
        assert!(format!("{e:#}").contains("differs from the approved version 2"), "{}: {e:#}", b.name);

        // The next change is diffed against the version in force.
        let p11 = cc::propose(&cfg, &wh, &f11, Some("rate_cards"), "alice@msp", "11 %").unwrap();
        assert_eq!(p11.base_version, 2);
        let was = if vs[1].change_id == p13.change_id { "0.13" } else { "0.14" };
        assert_eq!(p11.diff.len(), 1, "{}", b.name);
        assert_eq!((p11.diff[0].old.as_deref(), p11.diff[0].new.as_deref()), (Some(was), Some("0.11")), "{}", b.name);

        // The audit log: one create-only object per event, never rewritten.
        let paths = wh.list_files("_audit/").unwrap();
        let mut events = std::collections::BTreeMap::<String, usize>::new();
        for p in &paths {
            let bytes = wh.read_file(p).unwrap().unwrap();
            assert_eq!(bytes.iter().filter(|&&c| c == b'\n').count(), 1, "{}: one line per object", b.name);
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            *events.entry(v["event"].as_str().unwrap().to_string()).or_default() += 1;
        }
        // proposals a, 13, 14, 11; approvals: a 2, 13 finance 1 + sales_ops 1, 14 finance 1 + sales_ops 1 unless
        // the race's loser was refused before approving (the other change was in force when it read the state: an
        // error, and no approval to record); in force: a and one of 13/14.
        let loser_approved = results.iter().any(|s| matches!(s, Ok(State::Stale { base: 1, latest: 2 })));
        let approvals = if loser_approved { 6 } else { 5 };
        let want: std::collections::BTreeMap<String, usize> = [("approval", approvals), ("in_force", 2), ("proposal", 4)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(events, want, "{}", b.name);
        assert!(!wh.create_file(&paths[0], bytes::Bytes::from_static(b"{}\n")).unwrap(), "{}: an audit object cannot be overwritten", b.name);
    }
}
