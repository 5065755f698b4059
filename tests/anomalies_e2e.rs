//! End to end for the anomaly report: `cspbill run` on `sample_data/` finds every anomaly the generator plants
//! (sample_data/README.md, "Planted on purpose", listed by hand below) and nothing else; DuckDB recomputes some
//! figures from the warehouse's own tables; re-runs give byte-identical reports; the JSON lines of new
//! anomalies; `cspbill anomalies --fail-on`; and the webhook against a tiny HTTP server on 127.0.0.1, including
//! one that fails once, and one that is down.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use support::*;

const PERIOD: &str = "2025-06";

fn workspace(extra_config: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    if !extra_config.is_empty() {
        let cfg = ws.join("cspbill.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}\n{extra_config}\n")).unwrap();
    }
    (tmp, ws)
}

fn args<'a>(cmd: &'a str, ws: &'a Path, cfg: &'a str, wh: &'a str) -> Vec<&'a str> {
    let _ = ws;
    vec![cmd, "--config", cfg, "--period", PERIOD, "--warehouse", wh]
}

fn run(ws: &Path) -> std::process::Output {
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    cspbill_ok(&args("run", ws, cfg.to_str().unwrap(), wh.to_str().unwrap()))
}

fn report_file(ws: &Path) -> PathBuf {
    ws.join(format!("warehouse/marts/rpt_anomalies/period={PERIOD}/part-0.parquet"))
}

fn new_file(ws: &Path) -> String {
    std::fs::read_to_string(ws.join(format!("warehouse/marts/rpt_anomalies/period={PERIOD}/new_anomalies.jsonl"))).unwrap()
}

/// The manifest of the latest committed run.
fn manifest(ws: &Path) -> serde_json::Value {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(ws.join("warehouse/_runs")).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_slice(&std::fs::read(runs.last().unwrap()).unwrap()).unwrap()
}

#[test]
fn sample_data_gives_every_planted_anomaly_and_no_other() {
    let (_tmp, ws) = workspace("");
    let out = run(&ws);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("anomalies 2025-06 (data to 30 June 2025): 4 critical, 5 warning, 2 skipped; 9 new since the last committed run"), "{stdout}");
    assert!(stdout.contains("worst:"), "{stdout}");
    let Some(py) = python() else { return };
    let wh = ws.join("warehouse");
    let w = wh.display();
    // The report, with customer names from customers.csv (not from cspbill), read by DuckDB.
    let got = duckdb_csv(
        &py,
        &format!(
            "select a.monitor, a.severity, c.customer_name, a.subject, a.first_seen, a.last_seen
             from read_parquet('{w}/marts/rpt_anomalies/*/*.parquet', hive_partitioning=true) a
             join read_csv('{}', all_varchar=true) c using (customer_id)
             order by all",
            ws.join("reference/customers.csv").display()
        ),
    );
    let subject_of = |name: &str| {
        let line = got.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no `{name}` row:\n{got}"));
        line.split(',').nth(3).unwrap().to_string()
    };
    // The planted list of sample_data/README.md, by hand. Subjects that are generated ids are checked below.
    let want = [
        "budget_overrun,critical,Tailspin Toys LLC,monthly_budget,2025-06-01,2025-06-30",
        "budget_overrun,warning,Contoso Holdings AG,monthly_budget,2025-06-02,2025-06-30",
        "consent_lapsed,critical,Coho Winery Ltd,consent,2025-06-01,2025-06-30",
        "license_waste,skipped,Coho Winery Ltd,tenant telemetry,,",
        "license_waste,warning,Northwind Traders Inc.,CFQ7TTC0LCHC:0002,2025-06-30,2025-06-30",
        "spend_cap,critical,Tailspin Toys LLC,spend_cap,2025-06-20,2025-06-30",
        "tag_compliance,critical,Contoso Holdings AG,SUB_DEVTEST,2025-06-01,2025-06-30",
        "underutilization,skipped,Coho Winery Ltd,tenant telemetry,,",
        "underutilization,warning,Northwind Traders Inc.,SUB_LEGACY,2025-06-01,2025-06-30",
        "unusual_deployment,warning,\"Woodgrove Bank, N.A.\",SUB_WOODGROVE,2025-06-18,2025-06-18",
        "usage_gap,warning,Fabrikam Fertigung GmbH,SUB_FABRIKAM,2025-06-10,2025-06-12",
    ];
    // The generated subscription ids and the idle VM's ResourceURI, found in the inputs by DuckDB.
    let usage = format!("read_csv('{}/inputs/{PERIOD}/*BilledUsage*.csv', all_varchar=true)", ws.display());
    let one = |sql: &str| duckdb_csv(&py, sql).lines().nth(1).unwrap_or_default().to_string();
    let dev_test = one(&format!("select distinct EntitlementId from {usage} where CustomerName = 'Contoso Holdings AG' and EntitlementDescription = 'Dev/Test'"));
    let legacy = one(&format!("select distinct ResourceURI from {usage} where ResourceURI like '%/vm-legacy-%' and MeterCategory = 'Virtual Machines'"));
    let woodgrove = one(&format!("select distinct EntitlementId from {usage} where ResourceGroup = 'rg-batch'"));
    let fabrikam = one(&format!("select distinct EntitlementId from {usage} where CustomerName = 'Fabrikam Fertigung GmbH'"));
    let want: Vec<String> = want
        .iter()
        .map(|l| l.replace("SUB_DEVTEST", &dev_test).replace("SUB_LEGACY", &legacy).replace("SUB_WOODGROVE", &woodgrove).replace("SUB_FABRIKAM", &fabrikam))
        .collect();
    let mut got_rows: Vec<&str> = got.lines().skip(1).collect();
    got_rows.sort();
    let mut want_sorted: Vec<&str> = want.iter().map(String::as_str).collect();
    want_sorted.sort();
    assert_eq!(got_rows, want_sorted, "the report holds the planted anomalies and nothing else");
    assert_eq!(subject_of("underutilization,warning"), legacy);

    // Figures recomputed by DuckDB from the warehouse's own tables.
    let contoso = "c613ce64-5507-4268-9109-c5bd16c60464";
    let observed = |monitor: &str, customer: &str| {
        one(&format!(
            "select observed from read_parquet('{w}/marts/rpt_anomalies/*/*.parquet') where monitor = '{monitor}' and customer_id = '{customer}' and severity <> 'skipped'"
        ))
    };
    let spend = one(&format!(
        "select sum(price) from read_parquet('{w}/int/int_charges_rated/*/*.parquet') where customer_id = '{contoso}' and source_kind = 'daily_usage' and status = 'priced'"
    ));
    assert_eq!(observed("budget_overrun", contoso), spend, "month-to-date Azure spend, exact");
    let compliance = one(&format!(
        "select sum(tag_allocated_cost) / sum(azure_cost) from read_parquet('{w}/int/int_tag_compliance/*/*.parquet') where subscription_id = '{dev_test}'"
    ));
    let got_compliance: f64 = observed("tag_compliance", contoso).parse().unwrap();
    assert!((got_compliance - compliance.parse::<f64>().unwrap()).abs() < 1e-9, "{got_compliance} vs {compliance}");
    // Tailspin's spend past its cap: every priced part, netted (as its invoice's spend-cap credit counts it).
    let tailspin = "bcd7627a-2cb9-4dd7-9014-0831806f8ba2";
    let total = one(&format!("select sum(price) from read_parquet('{w}/int/int_charges_rated/*/*.parquet') where customer_id = '{tailspin}' and status = 'priced'"));
    assert_eq!(observed("spend_cap", tailspin), total);

    // The manifest lists the customer whose consent lapsed; the new-anomaly file has the 9 firing rows.
    let m = manifest(&ws);
    assert_eq!(m["control_totals"]["consent_lapsed_customers"][0]["customer_name"], "Coho Winery Ltd");
    assert_eq!(m["control_totals"]["anomalies"]["critical"], 4);
    assert_eq!(m["control_totals"]["alerts"]["webhook"], "not configured");
    let new = new_file(&ws);
    assert_eq!(new.lines().count(), 9, "{new}");
    for l in new.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["severity"] == "critical" || v["severity"] == "warning", "{l}");
    }
}

#[test]
fn rerun_gives_the_same_report_bytes_and_nothing_new() {
    let (_tmp, ws) = workspace("");
    run(&ws);
    let first = std::fs::read(report_file(&ws)).unwrap();
    let out = run(&ws);
    assert_eq!(std::fs::read(report_file(&ws)).unwrap(), first, "same inputs, same report bytes");
    assert!(String::from_utf8_lossy(&out.stdout).contains("; 0 new since the last committed run"));
    assert_eq!(new_file(&ws), "", "nothing new on a re-run");
    // A different workspace folder and warehouse: still the same bytes.
    let (_tmp2, ws2) = workspace("");
    run(&ws2);
    assert_eq!(std::fs::read(report_file(&ws2)).unwrap(), first);
}

#[test]
fn fail_on_exits_1_for_schedulers() {
    let (_tmp, ws) = workspace("");
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    let (c, w) = (cfg.to_str().unwrap(), wh.to_str().unwrap());
    let plain = cspbill_ok(&args("anomalies", &ws, c, w));
    assert!(String::from_utf8_lossy(&plain.stdout).contains("4 critical, 5 warning"));
    for level in ["critical", "warning"] {
        let mut a = args("anomalies", &ws, c, w);
        a.extend(["--fail-on", level]);
        let out = cspbill(&a);
        assert_eq!(out.status.code(), Some(1), "--fail-on {level}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        let n = if level == "critical" { "4 anomalies" } else { "9 anomalies" };
        assert!(err.contains(&format!("{n} at `{level}` or worse in 2025-06")), "{err}");
    }
    // A closed period is not run again: its committed report decides.
    let mut close = args("run", &ws, c, w);
    close.extend(["--mode", "close"]);
    cspbill_ok(&close);
    let mut a = args("anomalies", &ws, c, w);
    a.extend(["--fail-on", "critical"]);
    assert_eq!(cspbill(&a).status.code(), Some(1));
    // A bad threshold is exit 2 naming the key.
    let (_tmp2, bad) = workspace("");
    let text = std::fs::read_to_string(bad.join("cspbill.toml")).unwrap().replace("budget_critical = \"1.20\"", "budget_critical = \"1.05\"");
    std::fs::write(bad.join("cspbill.toml"), text).unwrap();
    let out = cspbill(&args("run", &bad, bad.join("cspbill.toml").to_str().unwrap(), bad.join("warehouse").to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[anomalies]: budget_critical must not be below budget_warning"));
}

/// A one-thread HTTP server on 127.0.0.1 answering each request with the next status of `statuses` (then 200),
/// recording the bodies it received.
fn server(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/secret-token", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            seen.lock().unwrap().push(String::from_utf8(body).unwrap());
            let status = statuses.next().unwrap_or(200);
            let _ = stream.write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (url, bodies)
}

#[test]
fn webhook_receives_the_new_anomalies_and_retries_a_failure() {
    let (url, bodies) = server(vec![503]);
    let (_tmp, ws) = workspace(&format!("[alerts]\nwebhook_url = \"{url}\"\ntimeout_seconds = 5\nretries = 2\n"));
    run(&ws);
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 503, then the retry is accepted");
    assert_eq!(got[0], got[1], "the retry sends the same body");
    let v: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(v["period"], "2025-06");
    assert_eq!(v["anomalies"].as_array().unwrap().len(), 9);
    assert!(v["text"].as_str().unwrap().starts_with("cspbill 2025-06: 9 new anomalies\n- critical "));
    let m = manifest(&ws);
    assert_eq!(m["control_totals"]["alerts"]["webhook"], "posted");
    assert_eq!(m["control_totals"]["alerts"]["attempts"], 2);
    // A re-run has nothing new: no POST.
    run(&ws);
    assert_eq!(bodies.lock().unwrap().len(), 2);
    assert_eq!(manifest(&ws)["control_totals"]["alerts"]["webhook"], "nothing new to send");
}

#[test]
fn a_webhook_that_is_down_never_fails_the_billing_run() {
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_tmp, ws) = workspace(&format!("[alerts]\nwebhook_url = \"http://127.0.0.1:{port}/hooks/secret-token\"\ntimeout_seconds = 2\nretries = 1\n"));
    let out = run(&ws);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the alert webhook http://127.0.0.1") && err.contains("did not accept 9 new anomalies after 2 attempt(s)"), "{err}");
    assert!(!err.contains("secret-token"), "the webhook's secret path is not logged: {err}");
    let m = manifest(&ws);
    assert_eq!(m["status"], "committed");
    assert_eq!(m["control_totals"]["alerts"]["webhook"], "failed");
    assert_eq!(m["control_totals"]["alerts"]["webhook_failures"], 1);
    assert_eq!(new_file(&ws).lines().count(), 9, "the new anomalies are still published beside the report");
}
