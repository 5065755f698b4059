//! The month-end close report and the run-health metrics (issue 19), end to end on `sample_data/`:
//! - the page is rendered in headless Chromium (Debian's `chromium`, driven by `scripts/render_page.cjs` with
//!   playwright-core); a screenshot is taken; `tests/close_report_check.py` checks the DOM against the marts read
//!   independently with DuckDB (totals per currency, invoices and export links, reconciliation, margins, tag
//!   compliance, unpriced and rejected rows), the charts, the absence of console errors and of any request
//!   besides the page itself, and parses the metrics file with `prometheus_client` against the manifest;
//! - the metrics are pushed to a Pushgateway (a local HTTP server on 127.0.0.1 in the test), and a failed run
//!   writes `cspbill_run_success 0` keeping the last success timestamp.
//!
//! Chromium, node with `scripts/node_modules/playwright-core` and the Python with duckdb and prometheus_client are
//! installed by `scripts/test.sh`; without them the browser part is skipped, except under `CI=true`, where it fails.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const PERIOD: &str = "2025-06";

/// A copy of the sample workspace whose config writes the metrics file to `metrics/cspbill_{period}.prom`,
/// plus `extra` config text.
fn workspace(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    let cfg = ws.join("cspbill.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("\n[metrics]\ntextfile = \"metrics/cspbill_{{period}}.prom\"\n{extra}"));
    std::fs::write(&cfg, text).unwrap();
    (tmp, ws)
}

fn run(ws: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    let mut args = vec!["run", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", wh.to_str().unwrap()];
    args.extend_from_slice(extra);
    cspbill(&args)
}

fn run_ok(ws: &Path, extra: &[&str]) -> std::process::Output {
    let out = run(ws, extra);
    assert!(out.status.success(), "run {extra:?} failed {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

fn page(ws: &Path) -> PathBuf {
    ws.join(format!("warehouse/marts/reports/period={PERIOD}/close.html"))
}

fn metrics_file(ws: &Path) -> PathBuf {
    ws.join(format!("metrics/cspbill_{PERIOD}.prom"))
}

fn latest_manifest(ws: &Path) -> serde_json::Value {
    let dir = ws.join("warehouse/_runs");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_str(&std::fs::read_to_string(runs.last().unwrap()).unwrap()).unwrap()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The browser and its driver, or None (skip) outside CI when they are missing.
fn browser() -> Option<PathBuf> {
    let chromium = std::env::var("CSPBILL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = repo().join("scripts/node_modules/playwright-core/package.json");
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let ok = Path::new(&chromium).exists() && driver.exists() && node;
    if !ok {
        assert!(!ci(), "CI must provide chromium ({chromium}), node and scripts/node_modules/playwright-core: run the tests through scripts/test.sh");
        eprintln!("skipping the browser check: chromium, node or playwright-core missing (scripts/test.sh installs them)");
        return None;
    }
    Some(PathBuf::from(chromium))
}

/// Python with duckdb and prometheus_client, or None (skip) outside CI.
fn python_with_prometheus() -> Option<String> {
    let py = python()?;
    let ok = Command::new(&py).args(["-c", "import prometheus_client"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "CI's Python must have prometheus_client (scripts/requirements-ci.txt)");
        eprintln!("skipping the DOM and metrics check: no prometheus_client in {py}");
        return None;
    }
    Some(py)
}

/// Renders the page in Chromium and checks it and the metrics file with the Python checker.
fn render_and_check(ws: &Path, mode: &str) {
    let (Some(_), Some(py)) = (browser(), python_with_prometheus()) else { return };
    let out_dir = ws.join(format!("rendered-{mode}"));
    let r = Command::new("node").arg(repo().join("scripts/render_page.cjs")).arg(page(ws)).arg(&out_dir).output().expect("running node");
    assert!(r.status.success(), "rendering failed:\n{}\n{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    let png = std::fs::read(out_dir.join("screenshot.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 50_000, "screenshot is not a full-page PNG ({} bytes)", png.len());
    let check = Command::new(&py)
        .arg(repo().join("tests/close_report_check.py"))
        .arg(out_dir.join("dom.html"))
        .arg(out_dir.join("report.json"))
        .arg(ws.join("warehouse"))
        .arg(PERIOD)
        .arg(mode)
        .arg(metrics_file(ws))
        .output()
        .expect("running python");
    assert!(
        check.status.success(),
        "the close report or the metrics disagree with the warehouse:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn nightly_and_close_reports_render_in_chromium_and_agree_with_the_marts() {
    let (_t, ws) = workspace("");
    run_ok(&ws, &[]);
    let html = std::fs::read_to_string(page(&ws)).unwrap();
    assert!(html.contains(r#"data-status="provisional""#) && html.contains("PROVISIONAL"));
    // Published with the commit: listed in the manifest with the checksum of the file readers see.
    let m = latest_manifest(&ws);
    let out = m["outputs"].as_array().unwrap().iter().find(|o| o["table"] == "close_report").expect("close_report in the manifest's outputs");
    assert_eq!(out["path"], format!("marts/reports/period={PERIOD}/close.html"));
    assert_eq!(out["sha256"].as_str().unwrap(), cspbill::inputs_sha256(html.as_bytes()));
    render_and_check(&ws, "nightly");

    run_ok(&ws, &["--mode", "close"]);
    let html = std::fs::read_to_string(page(&ws)).unwrap();
    assert!(html.contains(r#"data-status="final""#) && !html.contains("PROVISIONAL"));
    render_and_check(&ws, "close");
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body) and answers `status`.
fn serve_one(listener: TcpListener, status: &'static str) -> std::thread::JoinHandle<(String, Vec<String>, String)> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the end of the headers");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty()).map(str::to_string);
        let request_line = lines.next().unwrap();
        let headers: Vec<String> = lines.collect();
        let len: usize = headers
            .iter()
            .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("a content-length header");
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the end of the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
        s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
        (request_line, headers, body)
    })
}

#[test]
fn metrics_are_pushed_to_the_pushgateway_and_a_failed_push_is_only_a_warning() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve_one(listener, "200 OK");
    let (_t, ws) = workspace(&format!("pushgateway_url = \"http://{addr}/\"\njob = \"cspbill nightly\"\n"));
    let out = run(&ws, &[]);
    if !server.is_finished() {
        // Unblock the server so a missing push fails the assertion below instead of hanging the test.
        let _ = TcpStream::connect(addr).and_then(|mut s| s.write_all(b"X / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (request_line, headers, body) = server.join().unwrap();
    assert_eq!(request_line, "PUT /metrics/job/cspbill%20nightly/period/2025-06 HTTP/1.1");
    assert!(headers.iter().any(|h| h.eq_ignore_ascii_case("content-type: text/plain; version=0.0.4")), "{headers:?}");
    // The same exposition as the textfile.
    assert_eq!(body, std::fs::read_to_string(metrics_file(&ws)).unwrap());
    assert!(body.contains("cspbill_run_success{period=\"2025-06\",mode=\"nightly\"} 1\n"), "{body}");

    // A Pushgateway that refuses: the run still succeeds, with a warning; the textfile is still written.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve_one(listener, "503 Service Unavailable");
    let cfg = ws.join("cspbill.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text.lines().map(|l| if l.starts_with("pushgateway_url") { format!("pushgateway_url = \"http://{addr}\"\n") } else { format!("{l}\n") }).collect();
    std::fs::write(&cfg, text).unwrap();
    std::fs::remove_file(metrics_file(&ws)).unwrap();
    let out = run(&ws, &[]);
    if !server.is_finished() {
        let _ = TcpStream::connect(addr).and_then(|mut s| s.write_all(b"X / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
    }
    let _ = server.join();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics not pushed to the Pushgateway: HTTP 503"), "{stderr}");
    assert!(metrics_file(&ws).exists());
}

#[test]
fn a_failed_run_reports_failure_and_keeps_the_last_success_timestamp() {
    let (_t, ws) = workspace("");
    run_ok(&ws, &[]);
    let first = std::fs::read_to_string(metrics_file(&ws)).unwrap();
    let last_success = |s: &str| s.lines().find(|l| l.starts_with("cspbill_last_success_timestamp_seconds{")).map(str::to_string);
    let before = last_success(&first).expect("a last success timestamp");
    let m = latest_manifest(&ws);
    let finished = chrono::DateTime::parse_from_rfc3339(m["finished_at"].as_str().unwrap()).unwrap();
    assert_eq!(before, format!("cspbill_last_success_timestamp_seconds{{period=\"2025-06\",mode=\"nightly\"}} {}", rust_decimal::Decimal::new(finished.timestamp_millis(), 3).normalize()));

    // A customer listed twice under two names: a configuration error (exit 2) once the config is read.
    let customers = ws.join("reference/customers.csv");
    let text = std::fs::read_to_string(&customers).unwrap();
    let mut cells: Vec<String> = text.lines().nth(1).unwrap().split(',').map(str::to_string).collect();
    cells[1] = "Someone Else Ltd".into();
    let dup = cells.join(",");
    std::fs::write(&customers, format!("{text}{}{dup}\n", if text.ends_with('\n') { "" } else { "\n" })).unwrap();
    let out = run(&ws, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let after = std::fs::read_to_string(metrics_file(&ws)).unwrap();
    assert!(after.lines().any(|l| l == "cspbill_run_success{period=\"2025-06\",mode=\"nightly\"} 0"), "{after}");
    assert!(after.lines().any(|l| l == "cspbill_run_exit_code{period=\"2025-06\",mode=\"nightly\"} 2"), "{after}");
    assert_eq!(last_success(&after), Some(before));
    assert!(!after.contains("cspbill_rows_ingested"), "a failed run must not repeat the last success's counts");
}

#[test]
fn rejected_rows_and_unpriced_charges_are_listed_with_their_reasons() {
    let (_t, ws) = workspace("");
    // One usage row with an impossible date (a reject), one charged to a tenant missing from customers.csv
    // (unpriced). A nightly run publishes both; a close would refuse them.
    let file = ws.join("inputs/2025-06/G107047573_BilledUsage_202506.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let northwind = ",5eddb406-4e06-4586-9b4f-2af187103543,Northwind Traders Inc.,";
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut rows = lines.iter().enumerate().skip(1).filter(|(_, l)| l.contains(northwind)).map(|(i, _)| i);
    let (bad, stranger) = (rows.next().unwrap(), rows.next().unwrap());
    let mut cells: Vec<String> = lines[bad].splitn(22, ',').map(str::to_string).collect();
    assert_eq!(cells[20], "06/01/2025", "UsageDate is the 21st column of the sample's usage file");
    cells[20] = "06/31/2025".into();
    lines[bad] = cells.join(",");
    lines[stranger] = lines[stranger].replacen(northwind, ",00000000-0000-4000-8000-00000000beef,Northwind Traders Inc.,", 1);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    run_ok(&ws, &[]);
    let m = latest_manifest(&ws);
    assert_eq!(m["control_totals"]["rejected_rows"], 1);
    assert_eq!(m["control_totals"]["unpriced_parts"], 1);
    let html = std::fs::read_to_string(page(&ws)).unwrap();
    assert!(html.contains(r#"data-customer="00000000-0000-4000-8000-00000000beef""#));
    render_and_check(&ws, "nightly");
}

#[test]
fn late_data_adjustments_are_listed_on_the_next_periods_report() {
    use polars::prelude::*;
    let (_t, ws) = workspace("");
    run_ok(&ws, &["--mode", "close"]);
    // Microsoft restates June: one usage row's cost doubles.
    let file = ws.join("inputs/2025-06/G107047573_BilledUsage_202506.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let bt = lines[0].split(',').position(|h| h == "BillingPreTaxTotal").unwrap();
    let i = lines.iter().position(|l| l.contains(",5eddb406-4e06-4586-9b4f-2af187103543,Northwind Traders Inc.,")).unwrap();
    let mut cells: Vec<String> = lines[i].splitn(bt + 2, ',').map(str::to_string).collect();
    let cost: rust_decimal::Decimal = cells[bt].parse().unwrap();
    cells[bt] = (cost * rust_decimal::Decimal::TWO).to_string();
    lines[i] = cells.join(",");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    std::fs::create_dir_all(ws.join("inputs/2025-07")).unwrap();
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    cspbill_ok(&["run", "--config", cfg.to_str().unwrap(), "--period", "2025-07", "--warehouse", wh.to_str().unwrap(), "--invoice-date", "2025-08-01"]);

    let html = std::fs::read_to_string(ws.join("warehouse/marts/reports/period=2025-07/close.html")).unwrap();
    let late = &html[html.find(r#"<section id="late-data">"#).unwrap()..];
    let late = &late[..late.find("</section>").unwrap()];
    assert!(late.contains(r#"<tr data-corrected-period="2025-06"><td>2025-06</td><td>yes</td>"#), "{late}");
    let path = ws.join("warehouse/marts/fct_invoice_lines/period=2025-07/part-0.parquet");
    let df = ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
    let adj = df.lazy().filter(col("line_type").eq(lit("adjustment"))).collect().unwrap();
    assert!(adj.height() >= 1);
    let numbers = adj.column("invoice_number").unwrap().str().unwrap().clone();
    let amounts = adj.column("amount").unwrap().clone();
    for r in 0..adj.height() {
        let amount = pipeline::decimal::any_to_decimal(&amounts.get(r).unwrap()).unwrap().normalize();
        let row = format!(r#"<tr data-invoice="{}">"#, numbers.get(r).unwrap());
        let at = late.find(&row).unwrap_or_else(|| panic!("no adjustment row {row} in {late}"));
        let tail = &late[at..];
        let tail = &tail[..tail.find("</tr>").unwrap()];
        assert!(tail.contains(&format!(r#"data-exact="{amount}""#)) && tail.contains("<td>2025-06</td>"), "{tail} vs {amount}");
    }
    assert_eq!(late.matches("<tr data-invoice=").count(), adj.height());
}
