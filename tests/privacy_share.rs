//! Issue 18, isolation and secrets, against the stores `scripts/test.sh` starts (S3 on moto, Azure Blob on
//! Azurite):
//! - `cspbill share`: each signed URL serves exactly the committed file; a customer's bundle holds only its own
//!   rows, and a charge a tag rule routes from Contoso Holdings (C00) to Contoso Logistics (C01) is in C01's
//!   bundle and nowhere in C00's. Azurite checks SAS signatures: a link edited to point at another customer's
//!   file and an expired link are refused (403). moto does not check presigned signatures or expiry (it served
//!   a tampered and an expired URL when tried), so on S3 the test checks the served bytes and the signed expiry.
//!   A local warehouse cannot sign: exit 2.
//! - A storage secret, a webhook URL token and the pseudonym key set in the environment never appear in the
//!   output, the logs (`-v`, JSON), the warehouse's files (manifests, audit log, tables) or the errors of
//!   failing commands.

use cspbill::warehouse;

mod common;
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use pipeline::Period;
use polars::prelude::*;

use support::C00;
const C01: &str = "445b2d07-1b0e-4359-8fa9-d752bd5ef589";

fn sample_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample_data/cspbill.toml")
}

fn cspbill(b: &common::Backend, args: &[&str]) -> Command {
    cspbill_with(b, &sample_config(), args)
}

fn cspbill_with(b: &common::Backend, config: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cspbill"));
    c.args(args).arg("--config").arg(config).args(["--warehouse", &b.url]).envs(common::child_env(b)).env_remove("CSPBILL_WAREHOUSE").env("NO_COLOR", "1");
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (file name, URL) per line of `cspbill share`.
fn links(stdout: &str) -> Vec<(String, String)> {
    stdout.lines().filter_map(|l| l.split_once('\t')).map(|(n, u)| (n.to_string(), u.to_string())).collect()
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new().get(url).send().await.expect("the store answers");
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn shared_bundles_hold_only_the_customers_rows_and_links_expire() {
    let backends = common::backends("share");
    let local = &backends[0];
    let out = cspbill(local, &["share", "--customer", C00, "--period", "2025-06"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signed URLs need an object-store warehouse"));
    let period = Period::new(2025, 6).unwrap();
    // The sample, with personal data in C00's usage (tags, a VM name), some of it on the routed charges.
    let (_tmp, ws) = support::sample_workspace();
    for f in support::walk(&ws.join("inputs")).into_iter().filter(|f| f.to_string_lossy().contains("BilledUsage")) {
        support::inject_personal_data(&f);
    }
    let config = ws.join("cspbill.toml");
    let cspbill = |b: &common::Backend, args: &[&str]| cspbill_with(b, &config, args);
    for b in &backends[1..] {
        ok(common::run_cspbill(b, &config, "2025-06", &[]), "run");
        let wh = warehouse::Warehouse::open(&b.url, &b.options).unwrap();
        let commit = wh.committed(period).unwrap().unwrap();
        let rated = wh.read_table(schemas::int_charges_rated::TABLE, schemas::Zone::Int, period).unwrap().unwrap();
        let routed: BTreeSet<String> = rated
            .lazy()
            .filter(col("source_customer_id").eq(lit(C00)).and(col("customer_id").eq(lit(C01))))
            .select([col("part_id")])
            .collect()
            .unwrap()
            .column("part_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .map(String::from)
            .collect();
        assert!(!routed.is_empty(), "the sample routes C00's `entity=subsidiary` charges to C01");
        let mut parts = std::collections::BTreeMap::new();
        let mut urls = std::collections::BTreeMap::new();
        for cust in [C00, C01] {
            let shared = links(&ok(cspbill(b, &["share", "--customer", &cust.to_uppercase(), "--period", "2025-06", "--expires", "1h"]).output().unwrap(), "share"));
            let dir = format!("marts/exports/period=2025-06/customer={cust}/");
            let expected: BTreeSet<String> = commit.files.iter().filter_map(|f| f.path.strip_prefix(&dir).map(String::from)).collect();
            let names: BTreeSet<String> = shared.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names, expected, "{}: the bundle is the customer's export folder", b.name);
            assert!(names.iter().any(|n| n.ends_with(".focus.parquet")) && names.iter().any(|n| n.ends_with(".pdf")));
            let mut mine = BTreeSet::new();
            for (name, url) in &shared {
                let (status, bytes) = get(url);
                assert_eq!(status, 200, "{}: {name}", b.name);
                let committed = wh.read_file(&format!("{dir}{name}")).unwrap().unwrap();
                assert_eq!(bytes, committed.to_vec(), "{}: {name} served as committed", b.name);
                if name.ends_with(".focus.parquet") {
                    let df = ParquetReader::new(std::io::Cursor::new(bytes)).finish().unwrap();
                    let accounts: BTreeSet<&str> = df.column("BillingAccountId").unwrap().str().unwrap().iter().flatten().collect();
                    assert_eq!(accounts, BTreeSet::from([cust]), "{}: {name} holds only its customer's rows", b.name);
                    mine.extend(df.column("x_PartId").unwrap().str().unwrap().iter().flatten().map(String::from));
                } else if name.ends_with(".csv") {
                    let text = String::from_utf8(bytes).unwrap();
                    let text = text.trim_start_matches('\u{feff}');
                    let mut lines = text.lines();
                    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
                    let at = head.iter().position(|h| *h == "customer_id").unwrap();
                    let ids: BTreeSet<String> = lines.map(|l| support::split_csv(l)[at].clone()).collect();
                    assert_eq!(ids, BTreeSet::from([cust.to_string()]), "{}: {name}", b.name);
                }
                if b.name == "s3" {
                    assert!(url.contains("X-Amz-Expires=3600") && url.contains("X-Amz-Signature="), "{url}");
                }
                assert!(url.replace("%3D", "=").contains(&format!("/_shares/period=2025-06/customer={cust}/")), "{url}");
            }
            parts.insert(cust, mine);
            urls.insert(cust, shared);
        }
        assert!(routed.is_subset(&parts[C01]), "{}: the receiving customer sees the routed parts", b.name);
        assert!(routed.is_disjoint(&parts[C00]), "{}: the source customer sees nothing of them", b.name);
        if b.name == "azure" {
            // A link edited to another customer's file: the SAS signature covers the path.
            let (_, mine) = &urls[C00][0];
            let (_, theirs) = &urls[C01][0];
            let forged = format!("{}?{}", theirs.split_once('?').unwrap().0, mine.split_once('?').unwrap().1);
            assert_eq!(get(&forged).0, 403, "a C00 signature does not open a C01 file");
            // An expired link.
            let short = links(&ok(cspbill(b, &["share", "--customer", C00, "--period", "2025-06", "--expires", "3s"]).output().unwrap(), "share 3s"));
            let (name, url) = &short[short.len() - 1];
            assert_eq!(get(url).0, 200, "{name} right after signing");
            std::thread::sleep(std::time::Duration::from_secs(6));
            assert_eq!(get(url).0, 403, "{name} after its expiry");
        }
        // Erasing C00 deletes the shared copies holding its personal data: C01's FOCUS file carries the routed
        // charges' tags, C00's its own; their links stop working, the invoice documents stay shared.
        let out = cspbill(b, &["erase", "--customer", C00, "--reason", "request 9"]).env("CSPBILL_PSEUDONYM_KEY", "share-test-key-0123456789").output().unwrap();
        let said = ok(out, "erase");
        assert!(said.contains("shared copy"), "{said}");
        for cust in [C00, C01] {
            for (name, url) in &urls[cust] {
                let status = get(url).0;
                if name.ends_with(".focus.parquet") {
                    assert_ne!(status, 200, "{}: {name} of {cust} is deleted with the erasure", b.name);
                } else {
                    assert_eq!(status, 200, "{}: {name} of {cust} (an issued invoice) stays shared", b.name);
                }
            }
        }
        // Retention on the object store: in 2030 the links have expired (their copies are deleted) and June 2025
        // is past the telemetry window (aggregated as a new version), not yet past the financial term.
        let before = wh.committed(period).unwrap().unwrap();
        ok(cspbill(b, &["retention", "--apply", "--as-of", "2030-01-01"]).output().unwrap(), "retention");
        assert_eq!(wh.list_files("_shares/").unwrap(), Vec::<String>::new(), "{}: expired shares deleted", b.name);
        let after = wh.committed(period).unwrap().unwrap();
        assert_eq!(after.version, before.version + 1);
        assert!(after.manifest_json["retention"]["aggregated"].as_array().is_some_and(|a| !a.is_empty()));
    }
}

#[test]
fn secrets_from_the_environment_never_reach_logs_manifests_or_errors() {
    const STORAGE: &str = "S3cr3t-storage-key-4c7e9a1b";
    const TOKEN: &str = "T0ken-webhook-8d2f61aa";
    const KEY: &str = "pseudonym-key-5b3a9e77c1d0f2a4";
    let backends = common::backends("secrets");
    // S3 (moto accepts any secret, so a distinctive one can be used) when the test script started it.
    let b = backends.iter().find(|b| b.name == "s3").unwrap_or(&backends[0]);
    let env = |c: &mut Command| {
        c.env("CSPBILL_WEBHOOK_URL", format!("http://127.0.0.1:9/hooks/{TOKEN}"))
            .env("CSPBILL_PSEUDONYM_KEY", KEY)
            .env("CSPBILL_USER", "ops@msp.example");
        if b.name == "s3" {
            c.env("AWS_SECRET_ACCESS_KEY", STORAGE);
        }
    };
    let mut outputs: Vec<(String, Output)> = Vec::new();
    let mut go = |what: &str, args: &[&str], extra: &dyn Fn(&mut Command)| {
        let mut c = cspbill(b, args);
        env(&mut c);
        extra(&mut c);
        let o = c.output().unwrap();
        outputs.push((what.to_string(), o));
    };
    let none = |_: &mut Command| {};
    go("run", &["-v", "--log-format", "json", "run", "--period", "2025-06"], &none);
    go("run text", &["-v", "run", "--period", "2025-06"], &none);
    go("erase", &["-v", "erase", "--customer", C00, "--reason", "request 7"], &none);
    go("erase unknown customer", &["erase", "--customer", "no-such-customer", "--reason", "request 8"], &none);
    go("run on an unreachable store", &["run", "--period", "2025-06"], &|c: &mut Command| {
        c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    });
    if b.name == "s3" {
        go("share", &["-v", "share", "--customer", C01, "--period", "2025-06"], &none);
        go("share unreachable", &["share", "--customer", C01, "--period", "2025-06"], &|c: &mut Command| {
            c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
        });
    }
    let codes: Vec<(String, Option<i32>)> = outputs.iter().map(|(w, o)| (w.clone(), o.status.code())).collect();
    assert_eq!(codes[0].1, Some(0), "{codes:?}: {}", String::from_utf8_lossy(&outputs[0].1.stderr));
    assert_eq!(codes[2].1, Some(0), "{codes:?}: {}", String::from_utf8_lossy(&outputs[2].1.stderr));
    assert_eq!(codes[3].1, Some(2), "{codes:?}");
    assert_ne!(codes[4].1, Some(0), "{codes:?}");
    let run_log = String::from_utf8_lossy(&outputs[0].1.stderr).into_owned();
    assert!(run_log.contains("127.0.0.1:9/…"), "the webhook failure is logged, its URL without its path: {run_log}");
    for (what, o) in &outputs {
        for s in [STORAGE, TOKEN, KEY] {
            assert!(!String::from_utf8_lossy(&o.stdout).contains(s), "{what}: stdout holds a secret");
            assert!(!String::from_utf8_lossy(&o.stderr).contains(s), "{what}: stderr holds a secret");
        }
    }
    let wh = warehouse::Warehouse::open(&b.url, &b.options).unwrap();
    let files = wh.list_files("").unwrap();
    assert!(files.iter().any(|f| f.starts_with("_runs/")) && files.iter().any(|f| f.starts_with("_audit/")));
    for f in &files {
        let bytes = wh.read_file(f).unwrap().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in [STORAGE, TOKEN, KEY] {
            assert!(!text.contains(s), "{f} holds a secret");
        }
    }
}
