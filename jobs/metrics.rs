//! Run-health metrics for monitoring (issue 19): after every full run (`cspbill run`, `cspbill anomalies`) a
//! Prometheus text-format file in the node_exporter textfile-collector convention (`[metrics] textfile`, written
//! to a temporary file beside it and renamed, so the collector never reads half a file), optionally PUT to a
//! Pushgateway (`[metrics] pushgateway_url`, grouping key `job` and `period`). Every value comes from the run's
//! manifest (`_runs/<run>.json`): the file is a view of it for the monitoring stack, not a second computation. A
//! failed run writes `cspbill_run_success 0` and keeps the last success timestamp of the file it replaces. Neither
//! the file nor the push can fail a run: the run is already published (or already failed); problems are warnings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::manifest::Manifest;

/// `[metrics]` in `cspbill.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// The `.prom` file to write (relative to the config file; `{period}` is replaced by `YYYY-MM`), e.g. in
    /// node_exporter's `--collector.textfile.directory`. No file when absent.
    pub textfile: Option<String>,
    /// A Pushgateway base URL (`http://pushgateway:9091`): the same text is PUT to
    /// `/metrics/job/<job>/period/<period>` after the run. No push when absent.
    pub pushgateway_url: Option<String>,
    /// The `job` of the Pushgateway grouping key (default `cspbill`).
    pub job: Option<String>,
    /// Seconds the push may take (default 10).
    pub timeout_seconds: Option<u64>,
}

impl MetricsSettings {
    fn configured(&self) -> bool {
        self.textfile.as_deref().is_some_and(|t| !t.trim().is_empty()) || self.pushgateway_url.as_deref().is_some_and(|u| !u.trim().is_empty())
    }
}

/// One metric family: `# HELP`, `# TYPE` (all gauges: each value describes the latest run) and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

/// A text exposition under construction, families in the order they are added.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: impl ToString) {
        let value = value.to_string();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, value)),
            None => self.families.push(Family { name, help, samples: vec![(labels, value)] }),
        }
    }

    /// The Prometheus text format 0.0.4: `name{label="value",...} value`, label values escaped.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for f in &self.families {
            let _ = writeln!(s, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(s, "# TYPE {} gauge", f.name);
            for (labels, value) in &f.samples {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                if l.is_empty() {
                    let _ = writeln!(s, "{} {value}", f.name);
                } else {
                    let _ = writeln!(s, "{}{{{}}} {value}", f.name, l.join(","));
                }
            }
        }
        s
    }
}

/// Label values escape backslash, double quote and line feed (the text format's rules).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds(ts: &str) -> Option<Decimal> {
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(Decimal::new(t.timestamp_millis(), 3))
}

fn dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A decimal as the text format writes it: plain notation, no trailing zeros.
fn num(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The metrics of a committed run, from its manifest alone.
pub fn from_manifest(m: &Manifest) -> Exposition {
    let mut e = Exposition::default();
    let p = || ("period", m.period.clone());
    let pm = || vec![("period", m.period.clone()), ("mode", m.mode.clone())];
    e.gauge("cspbill_run_success", "1 when the latest run of the period committed, 0 when it failed", pm(), 1);
    let (start, end) = (seconds(&m.started_at), seconds(&m.finished_at));
    if let (Some(s), Some(f)) = (start, end) {
        e.gauge("cspbill_run_duration_seconds", "wall time of the latest run, from start to commit", pm(), num(f - s));
    }
    if let Some(f) = end {
        e.gauge("cspbill_last_success_timestamp_seconds", "Unix time the period's latest successful run finished", pm(), num(f));
    }
    let mut info = pm();
    info.push(("run_id", m.run_id.clone()));
    info.push(("version", m.cspbill_version.clone()));
    e.gauge("cspbill_run_info", "the latest run: its id (the manifest is _runs/<run_id>.json) and cspbill version", info, 1);

    // Rows per source kind, summed over the snapshot's files.
    let mut rows: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    for f in m.inputs.as_array().into_iter().flatten() {
        let source = match f["kind"].as_str() {
            Some("DailyUsage") => "daily_usage",
            Some("InvoiceLines") => "invoice_lines",
            _ => "other",
        };
        let r = rows.entry(source).or_default();
        r[0] += u(&f["rows_in"]);
        r[1] += u(&f["staged"]);
        r[2] += u(&f["rejected"]);
        r[3] += u(&f["duplicates"]);
        r[4] += u(&f["set_aside"]) + u(&f["other_period"]);
    }
    let families: [(&'static str, &'static str); 5] = [
        ("cspbill_rows_ingested", "Partner Center rows read from the period's snapshot"),
        ("cspbill_rows_staged", "rows staged (typed, in stg_pc_*)"),
        ("cspbill_rows_rejected", "rows rejected (rejects_pc_*, with the reason)"),
        ("cspbill_rows_duplicate", "rows another file of the snapshot already delivered"),
        ("cspbill_rows_set_aside", "rows set aside: unbilled usage beside billed, or dated in another period"),
    ];
    for (i, (name, help)) in families.iter().enumerate() {
        for (source, r) in &rows {
            e.gauge(name, help, vec![p(), ("source", source.to_string())], r[i]);
        }
    }
    let staged: u64 = rows.values().map(|r| r[1]).sum();
    let rejected: u64 = rows.values().map(|r| r[2]).sum();
    let ratio = if staged + rejected == 0 { Decimal::ONE } else { Decimal::from(staged) / Decimal::from(staged + rejected) };
    e.gauge("cspbill_ingest_success_ratio", "staged / (staged + rejected) Partner Center rows (1 = nothing rejected)", vec![p()], num(ratio.round_dp(6)));
    let ct = &m.control_totals;
    let get = |k: &str| ct.get(k).cloned().unwrap_or(Value::Null);
    e.gauge("cspbill_unpriced_parts", "charge parts no rate rule priced (a close refuses any)", vec![p()], u(&get("unpriced_parts")));
    e.gauge("cspbill_invoices", "invoices the run issued for the period", vec![p()], u(&get("invoices")));
    let failed = m.checks.iter().filter(|c| !c.ok).count();
    e.gauge("cspbill_checks", "run invariants checked, by result", vec![p(), ("result", "passed".into())], m.checks.len() - failed);
    e.gauge("cspbill_checks", "run invariants checked, by result", vec![p(), ("result", "failed".into())], failed);
    let anomalies = get("anomalies");
    for s in ["critical", "warning", "skipped"] {
        e.gauge("cspbill_anomalies", "rows of rpt_anomalies by severity", vec![p(), ("severity", s.into())], u(&anomalies[s]));
    }
    e.gauge("cspbill_alert_webhook_failures", "1 when the anomaly webhook did not accept the new anomalies", vec![p()], u(&get("alerts")["webhook_failures"]));
    for c in get(crate::close_report::TAG_COMPLIANCE_TOTAL).as_array().into_iter().flatten() {
        if c["judged"].as_bool() != Some(true) {
            continue;
        }
        if let Some(v) = dec(&c["compliance"]) {
            let l = vec![p(), ("customer", str(&c["customer_id"])), ("customer_name", str(&c["customer_name"]))];
            e.gauge("cspbill_tag_compliance_ratio", "share of the customer's Azure cost allocated by tag rules naming a tag key", l, num(v));
        }
    }
    for c in get(crate::close_report::MARGIN_TOTAL).as_array().into_iter().flatten() {
        let l = || vec![p(), ("customer", str(&c["customer_id"])), ("customer_name", str(&c["customer_name"])), ("currency", str(&c["currency"]))];
        if let Some(v) = dec(&c["realised_margin"]) {
            e.gauge("cspbill_margin_ratio", "realised margin: margin / price of the customer's priced charges", l(), num(v));
        }
        if let Some(v) = dec(&c["target_margin"]) {
            e.gauge("cspbill_margin_target_ratio", "the customer's target_margin (customers.csv)", l(), num(v));
        }
        if let Some(v) = dec(&c["variance_points"]) {
            e.gauge("cspbill_margin_variance_points", "realised minus target margin, in percentage points", l(), num(v));
        }
    }
    e
}

fn str(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The metrics of a failed run: success 0, its duration and exit code, and the last success timestamps of the
/// file it replaces (so an alert on their age keeps working).
pub fn for_failure(period: &str, mode: &str, started: chrono::DateTime<chrono::Utc>, ended: chrono::DateTime<chrono::Utc>, exit_code: i32, previous: &str) -> String {
    let mut e = Exposition::default();
    let pm = || vec![("period", period.to_string()), ("mode", mode.to_string())];
    e.gauge("cspbill_run_success", "1 when the latest run of the period committed, 0 when it failed", pm(), 0);
    e.gauge("cspbill_run_duration_seconds", "wall time of the latest run, from start to commit", pm(), num(Decimal::new((ended - started).num_milliseconds(), 3)));
    e.gauge("cspbill_run_exit_code", "exit status of the latest failed run (1 invariant or commit, 2 usage or input)", pm(), exit_code);
    let mut s = e.render();
    let kept: Vec<&str> = previous.lines().filter(|l| l.starts_with("cspbill_last_success_timestamp_seconds")).collect();
    if !kept.is_empty() {
        s.push_str("# HELP cspbill_last_success_timestamp_seconds Unix time the period's latest successful run finished\n");
        s.push_str("# TYPE cspbill_last_success_timestamp_seconds gauge\n");
        for l in kept {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// Writes `text` to `path` atomically: a temporary file in the same folder (not ending in `.prom`, so the
/// collector ignores it), flushed, then renamed over the target.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "cspbill.prom".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating `{}`", tmp.display()))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing `{}`", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming `{}` to `{}`", tmp.display(), path.display()))
}

fn textfile(cfg: &Config, period: &str) -> Option<PathBuf> {
    let t = cfg.metrics.textfile.as_deref().filter(|t| !t.trim().is_empty())?;
    Some(PathBuf::from(cfg.resolve(&t.replace("{period}", period))))
}

/// PUTs the exposition to the Pushgateway, replacing the group `job/<job>/period/<period>`.
pub fn push(base: &str, job: &str, period: &str, text: &str, timeout: Duration) -> std::result::Result<(), String> {
    let url = format!("{}/metrics/job/{}/period/{}", base.trim_end_matches('/'), encode(job), encode(period));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("starting the HTTP client: {e}"))?;
    let _inside = rt.enter();
    let client = reqwest::Client::builder().timeout(timeout).build().map_err(|e| format!("building the HTTP client: {e}"))?;
    let request = client.put(&url).header("content-type", "text/plain; version=0.0.4").body(text.to_string());
    match rt.block_on(async { request.send().await }) {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {} s", timeout.as_secs())),
        Err(e) => Err(format!("{}", e.without_url())),
    }
}

/// Percent-encodes a grouping-key value for a URL path segment.
fn encode(v: &str) -> String {
    v.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Writes and pushes `text`; problems are warnings (the run's outcome is already decided).
fn deliver(cfg: &Config, period: &str, text: &str) {
    if let Some(path) = textfile(cfg, period) {
        if let Err(e) = write_atomic(&path, text) {
            crate::cli::report("warning", &format!("metrics file not written: {e:#}; check `[metrics] textfile` in {}", cfg.path.display()), Value::Null);
        }
    }
    if let Some(url) = cfg.metrics.pushgateway_url.as_deref().filter(|u| !u.trim().is_empty()) {
        let job = cfg.metrics.job.as_deref().unwrap_or("cspbill");
        let timeout = Duration::from_secs(cfg.metrics.timeout_seconds.unwrap_or(10).max(1));
        if let Err(e) = push(url, job, period, text, timeout) {
            crate::cli::report("warning", &format!("metrics not pushed to the Pushgateway: {e}; check `[metrics] pushgateway_url` in {}", cfg.path.display()), Value::Null);
        }
    }
}

/// After a committed run: the manifest's metrics to the file and the Pushgateway, when configured.
pub fn after_success(cfg: &Config, m: &Manifest) {
    if cfg.metrics.configured() {
        deliver(cfg, &m.period, &from_manifest(m).render());
    }
}

/// After a failed full run: success 0, keeping the last success timestamps of the file it replaces.
pub fn after_failure(config: &Path, period: &str, mode: &str, started: chrono::DateTime<chrono::Utc>, err: &anyhow::Error) {
    let Ok(cfg) = crate::config::load(config) else { return };
    if !cfg.metrics.configured() {
        return;
    }
    let previous = textfile(&cfg, period).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    let text = for_failure(period, mode, started, chrono::Utc::now(), crate::error::exit_code(err), &previous);
    deliver(&cfg, period, &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        let mut e = Exposition::default();
        e.gauge("cspbill_x", "help", vec![("customer_name", "Woodgrove \"Bank\"\\N.A.\nx".into())], 1);
        assert_eq!(e.render(), "# HELP cspbill_x help\n# TYPE cspbill_x gauge\ncspbill_x{customer_name=\"Woodgrove \\\"Bank\\\"\\\\N.A.\\nx\"} 1\n");
    }

    #[test]
    fn a_failure_keeps_the_last_success_timestamp() {
        let previous = "# HELP x\ncspbill_run_success{period=\"2025-06\",mode=\"close\"} 1\ncspbill_last_success_timestamp_seconds{period=\"2025-06\",mode=\"close\"} 1751328000.5\n";
        let t0 = chrono::DateTime::parse_from_rfc3339("2025-07-02T00:00:00Z").unwrap().to_utc();
        let t1 = t0 + chrono::Duration::milliseconds(2500);
        let s = for_failure("2025-06", "close", t0, t1, 1, previous);
        assert!(s.lines().any(|l| l == "cspbill_run_success{period=\"2025-06\",mode=\"close\"} 0"), "{s}");
        assert!(s.lines().any(|l| l == "cspbill_run_duration_seconds{period=\"2025-06\",mode=\"close\"} 2.5"), "{s}");
        assert!(s.lines().any(|l| l == "cspbill_last_success_timestamp_seconds{period=\"2025-06\",mode=\"close\"} 1751328000.5"), "{s}");
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cspbill.prom");
        write_atomic(&path, "a 1\n").unwrap();
        write_atomic(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["cspbill.prom"]);
    }

    #[test]
    fn grouping_key_values_are_percent_encoded() {
        assert_eq!(encode("cspbill nightly/EU"), "cspbill%20nightly%2FEU");
        assert_eq!(encode("2025-06"), "2025-06");
    }
}
