//! Issue 18 end to end on a generated two-period warehouse (May 2025 closed, June 2025 open) whose usage carries
//! personal data put there by the test (a `createdBy` e-mail tag, a VM named after its owner, an `owner` e-mail
//! on charges a tag rule routes to another customer), besides the customers' contact e-mails and user keys:
//! - `cspbill erase`: no original value left in any Parquet, raw, manifest or audit file (only in the issued
//!   invoice documents, kept as issued); every invoice total the same (DuckDB, before and after); other
//!   customers' rows and untouched files equal; the closed period still closed; the pseudonym the keyed hash
//!   computed here; the original raw SHA-256 in the manifest; `--dry-run` and a missing key write nothing.
//! - `cspbill retention`: Σ of every amount conserved exactly (DuckDB), the row count DuckDB's own GROUP BY
//!   gives, resource columns emptied, raw usage of the old period deleted; a period past the financial term
//!   deleted whole.

use cspbill::warehouse;

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pipeline::Period;
use polars::prelude::*;
use support::{duckdb_csv, python, walk};

use support::{C00, JANE, MAX, VM, inject_personal_data as inject};

const KEY: &str = "test-pseudonym-key-0123456789abcdef";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cspbill"));
    c.env("NO_COLOR", "1").env_remove("CSPBILL_WAREHOUSE").env("CSPBILL_USER", "dpo@msp.example");
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ws {
    _tmp: tempfile::TempDir,
    may: PathBuf,
    june: PathBuf,
    wh: PathBuf,
}

/// Two generated workspaces (May and June 2025, one seed: the same customers) writing one warehouse; May is
/// closed, June is run nightly.
fn two_periods() -> Ws {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("warehouse");
    let mut cfgs = Vec::new();
    for p in ["2025-05", "2025-06"] {
        let dir = tmp.path().join(p);
        ok(bin().args(["generate", "--out"]).arg(&dir).args(["--customers", "10", "--period", p, "--seed", "42"]).output().unwrap(), "generate");
        for f in walk(&dir.join("inputs")).into_iter().filter(|f| f.to_string_lossy().contains("BilledUsage")) {
            inject(&f);
        }
        let cfg = dir.join("cspbill.toml");
        let text = std::fs::read_to_string(&cfg).unwrap().replace("url = \"./warehouse\"", &format!("url = {:?}", wh.to_string_lossy()));
        std::fs::write(&cfg, text).unwrap();
        cfgs.push(cfg);
    }
    ok(bin().args(["run", "--mode", "close", "--period", "2025-05", "--config"]).arg(&cfgs[0]).output().unwrap(), "close May");
    ok(bin().args(["run", "--period", "2025-06", "--config"]).arg(&cfgs[1]).output().unwrap(), "run June");
    Ws { may: cfgs.remove(0), june: cfgs.remove(0), wh, _tmp: tmp }
}

/// The personal values, from the test's own injection and the reference files (not from cspbill).
fn personal_values(ws: &Ws) -> Vec<String> {
    let mut v: BTreeSet<String> = [JANE, MAX, VM].map(String::from).into();
    for cfg in [&ws.may, &ws.june] {
        let dir = cfg.parent().unwrap();
        for line in std::fs::read_to_string(dir.join("reference/license_activity.csv")).unwrap().lines() {
            let f = support::split_csv(line);
            if f[0] == C00 {
                v.insert(f[1].clone());
            }
        }
        let text = std::fs::read_to_string(dir.join("reference/customers.csv")).unwrap();
        let mut lines = text.lines();
        let head = support::split_csv(lines.next().unwrap());
        let mail = head.iter().position(|h| h == "contact_email").unwrap();
        for line in lines {
            let f = support::split_csv(line);
            if f[0] == C00 {
                v.insert(f[mail].clone());
            }
        }
    }
    assert!(v.len() > 5, "user keys and a contact e-mail are in the sample: {v:?}");
    v.into_iter().collect()
}

fn read_parquet(p: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(p).unwrap()).finish().unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Every row of a Parquet file as one CSV line.
fn rows(p: &Path) -> Vec<String> {
    let mut df = read_parquet(p);
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(false).finish(&mut df).unwrap();
    String::from_utf8(buf).unwrap().lines().map(String::from).collect()
}

/// Every text cell of a Parquet file.
fn cells(p: &Path) -> Vec<String> {
    let df = read_parquet(p);
    let mut out = Vec::new();
    for c in df.columns() {
        if c.dtype() == &DataType::String {
            out.extend(c.str().unwrap().iter().flatten().map(String::from));
        }
    }
    out
}

fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    walk(dir).into_iter().map(|p| {
        let h = cspbill::inputs_sha256(&std::fs::read(&p).unwrap());
        (p.strip_prefix(dir).unwrap().to_path_buf(), h)
    }).collect()
}

fn is_invoice_document(rel: &str) -> bool {
    rel.contains("marts/exports/") && rel.contains("/customer=") && [".csv", ".xlsx", ".pdf", ".html"].iter().any(|x| rel.ends_with(x))
}

fn hmac_pseudonym(value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    format!("anon-{}", &hex::encode(ring::hmac::sign(&k, value.as_bytes()).as_ref())[..20])
}

fn invoice_totals(py: &str, wh: &Path) -> String {
    duckdb_csv(py, &format!(
        "SELECT period, invoice_number, customer_id, currency, subtotal, tax, total, line_count FROM read_parquet('{}/marts/fct_invoices/*/*.parquet', hive_partitioning=true) ORDER BY ALL",
        wh.display()
    ))
}

fn invoice_lines(py: &str, wh: &Path) -> String {
    duckdb_csv(py, &format!(
        "SELECT invoice_line_id, invoice_number, line_type, quantity, amount_unrounded, amount FROM read_parquet('{}/marts/fct_invoice_lines/*/*.parquet', hive_partitioning=true) ORDER BY ALL",
        wh.display()
    ))
}

#[test]
fn erase_pseudonymises_every_period_and_keeps_every_invoice() {
    let ws = two_periods();
    let values = personal_values(&ws);
    let py = python();
    // A report published outside the commits (as `cspbill compare` publishes `rpt_parallel_run`), here holding
    // personal data: a copy of June's staged usage.
    let report = ws.wh.join("marts/rpt_drift/period=2025-06/part-0.parquet");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::copy(ws.wh.join("staged/stg_pc_daily_usage/period=2025-06/part-0.parquet"), &report).unwrap();
    let before_files = hashes(&ws.wh);
    let snapshot = ws.wh.with_extension("before");
    support::copy_dir(&ws.wh, &snapshot);
    // The personal values are really there before.
    let stg = ws.wh.join("staged/stg_pc_daily_usage/period=2025-05/part-0.parquet");
    assert!(cells(&stg).iter().any(|c| c.contains(JANE)) && cells(&stg).iter().any(|c| c.contains(VM)));
    let totals_before = py.as_deref().map(|py| (invoice_totals(py, &ws.wh), invoice_lines(py, &ws.wh)));

    // Without the key: exit 2, nothing written.
    let out = bin().args(["erase", "--customer", C00, "--reason", "GDPR request 2025-031", "--config"]).arg(&ws.june).env_remove("CSPBILL_PSEUDONYM_KEY").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CSPBILL_PSEUDONYM_KEY"));
    assert_eq!(hashes(&ws.wh), before_files, "a refused erasure writes nothing");

    // Dry run: lists, writes nothing.
    let plan = ok(bin().args(["erase", "--dry-run", "--customer", &C00.to_uppercase(), "--reason", "GDPR request 2025-031", "--config"]).arg(&ws.june).env("CSPBILL_PSEUDONYM_KEY", KEY).output().unwrap(), "dry run");
    assert!(plan.contains("staged/stg_pc_daily_usage/period=2025-05/part-0.parquet") && plan.contains("raw/pc_daily_usage/"), "{plan}");
    for v in &values {
        assert!(!plan.contains(v.as_str()), "the plan never prints a personal value");
    }
    assert_eq!(hashes(&ws.wh), before_files, "a dry run writes nothing");

    let said = ok(bin().args(["erase", "--customer", C00, "--reason", "GDPR request 2025-031", "--config"]).arg(&ws.june).env("CSPBILL_PSEUDONYM_KEY", KEY).output().unwrap(), "erase");
    assert!(said.contains("2025-05: version 2 committed (still closed)"), "{said}");
    assert!(said.contains("report `marts/rpt_drift/period=2025-06/part-0.parquet` (outside the commits)"), "{said}");

    // 1. No original value anywhere: every Parquet file (tables, FOCUS files, every run's data), every raw file,
    //    every other file but the issued invoice documents.
    let files = walk(&ws.wh);
    let mut parquet = 0;
    for p in &files {
        let rel = p.strip_prefix(&ws.wh).unwrap().to_string_lossy().into_owned();
        if rel.ends_with(".parquet") {
            parquet += 1;
            for c in cells(p) {
                for v in &values {
                    assert!(!c.contains(v.as_str()), "`{v}` is still in {rel}: {c}");
                }
            }
        } else if !is_invoice_document(&rel) {
            let bytes = std::fs::read(p).unwrap();
            let text = if rel.ends_with(".gz") { String::new() } else { String::from_utf8_lossy(&bytes).into_owned() };
            for v in &values {
                assert!(!text.contains(v.as_str()), "`{v}` is still in {rel}");
            }
        }
    }
    assert!(parquet > 40, "scanned {parquet} Parquet files");
    assert!(files.iter().any(|p| p.to_string_lossy().contains("/raw/pc_daily_usage/")), "raw files are replaced, not removed");

    // 2. Every invoice total and line the same, read by DuckDB before and after.
    if let (Some(py), Some((t, l))) = (py.as_deref(), totals_before) {
        let t2 = invoice_totals(py, &ws.wh);
        assert_eq!(t, t2);
        assert!(t.lines().count() > 15, "both periods' invoices: {t}");
        assert_eq!(l, invoice_lines(py, &ws.wh));
    }

    // 3. Other customers untouched: each Hive Parquet file's rows that neither belong to C00 nor held a personal
    //    value are the same rows after; a file that held no personal value has the same bytes.
    for (rel, sha) in &before_files {
        let r = rel.to_string_lossy();
        if r.starts_with("_") || r.starts_with("raw/") {
            continue;
        }
        let after = ws.wh.join(rel);
        let before = snapshot.join(rel);
        if r.ends_with(".parquet") {
            let held = rows(&before).iter().any(|row| values.iter().any(|v| row.contains(v.as_str())));
            if !held {
                assert_eq!(&cspbill::inputs_sha256(&std::fs::read(&after).unwrap()), sha, "{r} held no personal value: same bytes");
            }
            let other = |rs: Vec<String>| -> Vec<String> {
                let mut v: Vec<String> = rs.into_iter().filter(|row| !row.contains(C00) && !row.contains("anon-") && !values.iter().any(|v| row.contains(v.as_str()))).collect();
                v.sort();
                v
            };
            let (b, a) = (rows(&before), rows(&after));
            assert_eq!(b.len(), a.len(), "{r}: same number of rows");
            assert_eq!(other(b), other(a), "{r}: other customers' rows unchanged");
        } else if is_invoice_document(&r) {
            assert_eq!(&cspbill::inputs_sha256(&std::fs::read(&after).unwrap()), sha, "{r}: an issued invoice is kept as issued");
        }
    }

    // 4. The same value has the same keyed pseudonym everywhere (joins work): HMAC-SHA256 computed here.
    let jane = hmac_pseudonym(JANE);
    let vm = hmac_pseudonym(VM);
    for p in ["2025-05", "2025-06"] {
        for t in ["staged/stg_pc_daily_usage", "int/int_charges_rated"] {
            let c = cells(&ws.wh.join(format!("{t}/period={p}/part-0.parquet")));
            assert!(c.iter().any(|c| c.contains(&jane)), "{t} {p}: the createdBy tag's pseudonym");
            assert!(c.iter().any(|c| c.ends_with(&format!("/{vm}"))), "{t} {p}: the VM's pseudonymised resource URI");
        }
    }

    // 5. Commits: May still closed, both at version 2; the erasure is in the manifest with the raw file's
    //    original SHA-256 (computed here from the input file), and in the audit log, without values.
    let wh = warehouse::Warehouse::open(&ws.wh.to_string_lossy(), &Default::default()).unwrap();
    let may = wh.committed(Period::new(2025, 5).unwrap()).unwrap().unwrap();
    assert!(may.closed && may.version == 2);
    let june = wh.committed(Period::new(2025, 6).unwrap()).unwrap().unwrap();
    assert!(!june.closed && june.version == 2);
    let input = walk(&ws.may.parent().unwrap().join("inputs")).into_iter().find(|f| f.to_string_lossy().contains("G248241492_BilledUsage")).unwrap();
    let original = cspbill::inputs_sha256(&std::fs::read(&input).unwrap());
    let e = &may.manifest_json["erasures"][0];
    assert_eq!(e["customer_id"], C00);
    assert_eq!(e["reason"], "GDPR request 2025-031");
    let raw: Vec<&str> = e["raw"].as_array().unwrap().iter().map(|r| r["original_sha256"].as_str().unwrap()).collect();
    assert_eq!(raw, vec![original.as_str()]);
    assert!(!ws.wh.join(format!("raw/pc_daily_usage/sha256={original}")).exists(), "the original raw file is gone");
    let audit: Vec<serde_json::Value> = walk(&ws.wh.join("_audit"))
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "erasure")
        .collect();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["actor"], "dpo@msp.example");
    assert!(audit[0]["detail"].as_str().unwrap().contains(&original));

    // 6. A second erasure finds nothing left to erase (pseudonyms are never pseudonymised again) and writes
    //    nothing but its audit event.
    let files_now: BTreeMap<PathBuf, String> = hashes(&ws.wh).into_iter().filter(|(p, _)| !p.starts_with("_audit")).collect();
    let again = ok(bin().args(["erase", "--customer", C00, "--reason", "GDPR request 2025-031, again", "--config"]).arg(&ws.june).env("CSPBILL_PSEUDONYM_KEY", KEY).output().unwrap(), "erase again");
    assert!(again.contains("2025-05: nothing to change (closed)") && again.contains("2025-06: nothing to change"), "{again}");
    assert_eq!(hashes(&ws.wh).into_iter().filter(|(p, _)| !p.starts_with("_audit")).collect::<BTreeMap<_, _>>(), files_now);

    // 7. The periods still work: June runs again on top of the erased version.
    ok(bin().args(["run", "--period", "2025-06", "--config"]).arg(&ws.june).output().unwrap(), "June after the erasure");
}

fn sums(py: &str, file: &Path, cols: &[&str]) -> String {
    let s: Vec<String> = cols.iter().map(|c| format!("sum({c})")).collect();
    duckdb_csv(py, &format!("SELECT count(*), {} FROM read_parquet('{}')", s.join(", "), file.display()))
}

#[test]
fn retention_aggregates_old_usage_exactly_and_deletes_expired_periods() {
    let ws = two_periods();
    let Some(py) = python() else { return };
    let may = |t: &str| ws.wh.join(format!("{t}/period=2025-05/part-0.parquet"));
    let tables: [(&str, &[&str], &[&str]); 5] = [
        ("staged/stg_pc_daily_usage", &["quantity", "billing_pre_tax_total", "pricing_pre_tax_total"],
         &["line_id", "source_file", "line_number", "resource_group", "resource_uri", "tags", "additional_info", "service_info1", "service_info2"]),
        ("int/int_charges", &["q", "cost", "list", "pec"], &[]),
        ("int/int_charges_rated", &["q", "cost", "list", "pec", "cost_ic", "price", "margin"], &[]),
        ("marts/fct_invoice_detail", &["quantity", "cost", "price"], &[]),
        ("marts/focus_cost_and_usage", &["BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ConsumedQuantity"], &[]),
    ];
    let before: Vec<String> = tables.iter().map(|(t, s, _)| sums(&py, &may(t), s)).collect();
    // The row count DuckDB's own GROUP BY gives over the non-identifying, non-summed columns.
    let (t, s, blank) = tables[0];
    let exclude: Vec<&str> = blank.iter().chain(s.iter()).copied().collect();
    let expected_rows = duckdb_csv(&py, &format!("SELECT count(*) FROM (SELECT * EXCLUDE ({}) FROM read_parquet('{}') GROUP BY ALL)", exclude.join(", "), may(t).display()));
    let totals = invoice_totals(&py, &ws.wh);
    let june_files: BTreeMap<PathBuf, String> = hashes(&ws.wh).into_iter().filter(|(p, _)| p.to_string_lossy().contains("period=2025-06/") && !p.starts_with("_")).collect();
    let all = hashes(&ws.wh);

    let plan = ok(bin().args(["retention", "--dry-run", "--as-of", "2025-09-15", "--config"]).arg(&ws.june).output().unwrap(), "dry run");
    assert!(plan.contains("2025-06: kept as it is"), "{plan}");
    assert_eq!(hashes(&ws.wh), all, "a dry run writes nothing");
    ok(bin().args(["retention", "--apply", "--as-of", "2025-09-15", "--config"]).arg(&ws.june).output().unwrap(), "apply");

    for ((t, s, _), b) in tables.iter().zip(&before) {
        let a = sums(&py, &may(t), s);
        let (b_count, b_sums) = b.lines().nth(1).unwrap().split_once(',').unwrap();
        let (a_count, a_sums) = a.lines().nth(1).unwrap().split_once(',').unwrap();
        assert_eq!(b_sums, a_sums, "{t}: Σ conserved exactly");
        assert!(a_count.parse::<u64>().unwrap() < b_count.parse::<u64>().unwrap(), "{t}: fewer rows ({b_count} → {a_count})");
    }
    assert_eq!(expected_rows.lines().nth(1).unwrap(), sums(&py, &may(t), s).lines().nth(1).unwrap().split(',').next().unwrap());
    let left = duckdb_csv(&py, &format!("SELECT count(*) FILTER (resource_uri IS NOT NULL OR tags IS NOT NULL OR line_id IS NOT NULL) FROM read_parquet('{}')", may(t).display()));
    assert_eq!(left.lines().nth(1), Some("0"), "identifying columns emptied");
    assert_eq!(invoice_totals(&py, &ws.wh), totals, "invoices unchanged");
    for (p, h) in &june_files {
        assert_eq!(&cspbill::inputs_sha256(&std::fs::read(ws.wh.join(p)).unwrap()), h, "June is inside the window: {}", p.display());
    }
    let raw: Vec<String> = walk(&ws.wh.join("raw")).iter().map(|p| p.to_string_lossy().into_owned()).collect();
    assert!(!raw.iter().any(|r| r.contains("BilledUsage_202505")) && raw.iter().any(|r| r.contains("BilledUsage_202506")), "{raw:?}");
    let wh = warehouse::Warehouse::open(&ws.wh.to_string_lossy(), &Default::default()).unwrap();
    let c = wh.committed(Period::new(2025, 5).unwrap()).unwrap().unwrap();
    assert!(c.closed && c.version == 2 && c.manifest_json["retention"]["aggregated"].as_array().unwrap().len() >= 5);

    // Past the 7-year term (as of 15 June 2032, May 2025 is; June 2025 is not): May is deleted whole.
    ok(bin().args(["retention", "--apply", "--as-of", "2032-06-15", "--config"]).arg(&ws.june).output().unwrap(), "apply 2032");
    let left: Vec<String> = walk(&ws.wh).iter().map(|p| p.strip_prefix(&ws.wh).unwrap().to_string_lossy().into_owned()).filter(|p| p.contains("period=2025-05") || p.contains("202505")).collect();
    assert!(left.is_empty(), "{left:?}");
    let june_totals = duckdb_csv(&py, &format!("SELECT count(*), sum(total) FROM read_parquet('{}/marts/fct_invoices/*/*.parquet', hive_partitioning=true)", ws.wh.display()));
    let june_before: Vec<&str> = totals.lines().skip(1).filter(|l| l.starts_with("2025-06")).collect();
    assert_eq!(june_totals.lines().nth(1).unwrap().split(',').next().unwrap(), june_before.len().to_string());
}
