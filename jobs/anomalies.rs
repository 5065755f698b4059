//! The anomaly report of a run (`marts/rpt_anomalies`) and its alerts. The monitors are pure
//! (`pipeline::anomalies`); this module feeds them: it resolves the thresholds of `[anomalies]`, collects the
//! small aggregates of the month's spooled tables with the streaming engine, and after the report is built it
//! finds the anomalies new since the period's last committed run, publishes them as JSON lines beside the report
//! (`marts/rpt_anomalies/period=P/new_anomalies.jsonl`), POSTs them to the optional `[alerts] webhook_url`
//! (a hook that is down is a warning and a count in the manifest, never a failed run), and prints a short summary.
//! `cspbill anomalies --fail-on LEVEL` runs the period and exits 1 when something at that level fired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use pipeline::anomalies::{self as an, Anomaly, Report, Severity, ThresholdSet, Thresholds};
use pipeline::{Period, RunContext};
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::Zone;
use serde_json::{Value, json};
use tracing::warn;

use crate::cli::PeriodArgs;
use crate::config::{self, Config};
use crate::error::Failure;
use crate::manifest::Manifest;
use crate::reference::RefFrames;
use crate::stages::{Computed, TableData};
use crate::warehouse::{Txn, Warehouse};

/// The file of new anomalies, beside the report's Parquet in its partition folder.
pub const NEW_FILE: &str = "new_anomalies.jsonl";

/// Resolves `[anomalies]` into complete thresholds per customer: the built-in defaults of DESIGN §5, then the
/// file's defaults, then each override. Inconsistent levels are exit 2 naming the key; an override for a customer
/// that is not in `customers.csv` is a warning.
pub fn thresholds(cfg: &Config, customers: &DataFrame, m: &mut Manifest) -> Result<ThresholdSet> {
    let a = &cfg.anomalies;
    let defaults = merge(&Thresholds::default(), &a.defaults);
    validate(&defaults, "[anomalies]", cfg)?;
    let known: BTreeSet<String> = pipeline::invoice::cells::strs(customers, schemas::stg_customers::customer_id)?
        .into_iter()
        .flatten()
        .map(|c| c.to_lowercase())
        .collect();
    let mut overrides = BTreeMap::new();
    for (id, o) in &a.overrides {
        let t = merge(&defaults, o);
        validate(&t, &format!("[anomalies.overrides.\"{id}\"]"), cfg)?;
        if !known.contains(&id.to_lowercase()) {
            m.warnings.push(format!(
                "{}: [anomalies.overrides.\"{id}\"] names a customer that is not in customers.csv; it applies to nobody",
                cfg.path.display()
            ));
        }
        overrides.insert(id.to_lowercase(), t);
    }
    Ok(ThresholdSet { defaults, overrides })
}

fn merge(base: &Thresholds, o: &config::Thresholds) -> Thresholds {
    Thresholds {
        budget_warning: o.budget_warning.unwrap_or(base.budget_warning),
        budget_critical: o.budget_critical.unwrap_or(base.budget_critical),
        deployment_factor: o.deployment_factor.unwrap_or(base.deployment_factor),
        license_unused_days: o.license_unused_days.unwrap_or(base.license_unused_days),
        cpu_floor_pct: o.cpu_floor_pct.unwrap_or(base.cpu_floor_pct),
        cpu_days: o.cpu_days.unwrap_or(base.cpu_days),
        tag_compliance_warning: o.tag_compliance_warning.unwrap_or(base.tag_compliance_warning),
        tag_compliance_critical: o.tag_compliance_critical.unwrap_or(base.tag_compliance_critical),
        margin_warning_points: o.margin_warning_points.unwrap_or(base.margin_warning_points),
        margin_critical_points: o.margin_critical_points.unwrap_or(base.margin_critical_points),
        consent_expiring_days: o.consent_expiring_days.unwrap_or(base.consent_expiring_days),
    }
}

fn validate(t: &Thresholds, section: &str, cfg: &Config) -> Result<()> {
    let zero = Decimal::ZERO;
    let problems = [
        (t.budget_warning <= zero, "budget_warning must be above 0 (a fraction: 1.10 = 110 %)"),
        (t.budget_critical < t.budget_warning, "budget_critical must not be below budget_warning"),
        (t.deployment_factor <= zero, "deployment_factor must be above 0"),
        (t.license_unused_days < 0, "license_unused_days must not be negative"),
        (t.cpu_floor_pct <= zero || t.cpu_floor_pct > Decimal::ONE_HUNDRED, "cpu_floor_pct must be a percentage above 0 and at most 100"),
        (t.cpu_days < 1, "cpu_days must be at least 1"),
        (t.tag_compliance_critical > t.tag_compliance_warning, "tag_compliance_critical must not be above tag_compliance_warning"),
        (t.tag_compliance_warning > Decimal::ONE, "tag_compliance_warning is a fraction (0.90 = 90 %): at most 1"),
        (t.margin_warning_points < zero, "margin_warning_points must not be negative"),
        (t.margin_critical_points < t.margin_warning_points, "margin_critical_points must not be below margin_warning_points"),
        (t.consent_expiring_days < 0, "consent_expiring_days must not be negative"),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, what)) => Err(Failure::usage(format!("{}: {section}: {what}; fix the value", cfg.path.display())).into()),
        None => Ok(()),
    }
}

fn spool_scan(computed: &Computed, table: &str) -> Result<Option<LazyFrame>> {
    match computed.tables.iter().find(|(t, _, _)| *t == table) {
        Some((_, _, TableData::Spool(s))) => Ok(Some(s.scan()?)),
        Some((_, _, TableData::Frame(df))) => Ok(Some(df.clone().lazy())),
        None => Ok(None),
    }
}

/// Builds `rpt_anomalies` from a computed run (every stage done), adds it to the run's tables and records what
/// the manifest lists (counts, customers with lapsed consent).
pub fn build(cfg: &Config, ctx: &RunContext, refs: &RefFrames, computed: &mut Computed, m: &mut Manifest) -> Result<Report> {
    let thresholds = thresholds(cfg, &refs.customers, m)?;
    let need = |t: Option<LazyFrame>, name: &str| t.ok_or_else(|| anyhow::anyhow!("internal: `{name}` missing from the run before the anomaly report"));
    let usage = need(spool_scan(computed, schemas::stg_pc_daily_usage::TABLE)?, "stg_pc_daily_usage")?;
    let rated = need(spool_scan(computed, schemas::int_charges_rated::TABLE)?, "int_charges_rated")?;
    let compliance = need(spool_scan(computed, schemas::int_tag_compliance::TABLE)?, "int_tag_compliance")?;
    // Small aggregates of the month, each a streaming group-by over a spool file.
    let collect = crate::spool::collect;
    let daily_spend = collect(an::aggregates::daily_spend(rated.clone()), "anomalies: daily spend")?;
    let subscription_days = collect(an::aggregates::subscription_days(usage.clone()), "anomalies: usage days")?;
    let resources = an::aggregates::collect_resources(usage).map_err(|e| anyhow::anyhow!("stage `anomalies: resources` failed: {e}"))?;
    crate::spool::mem_probe("anomalies: resources");
    let seat_lines = collect(an::aggregates::seat_lines(rated.clone()), "anomalies: seat lines")?;
    let resource_cost = collect(an::aggregates::resource_cost(rated, refs.utilization.clone().lazy()), "anomalies: resource cost")?;
    let tag_compliance = collect(compliance, "anomalies: tag compliance")?;
    let inputs = an::Inputs {
        customers: &refs.customers,
        daily_spend: &daily_spend,
        subscription_days: &subscription_days,
        resources: &resources,
        seat_lines: &seat_lines,
        resource_cost: &resource_cost,
        tag_compliance: &tag_compliance,
        tag_rules: &refs.tag_rules,
        license_activity: &refs.license_activity,
        utilization: &refs.utilization,
    };
    let report = an::rpt_anomalies(&inputs, &thresholds, ctx.period).map_err(crate::stages::config_failure)?;
    let df = an::to_frame(&report.rows, ctx.period)?;
    m.total("anomalies", counts_json(&report.rows, report.window.as_of));
    m.total(
        "consent_lapsed_customers",
        Value::Array(report.consent_lapsed.iter().map(|(id, name)| json!({"customer_id": id, "customer_name": name})).collect()),
    );
    computed.tables.push((schemas::rpt_anomalies::TABLE, Zone::Marts, TableData::Frame(df)));
    Ok(report)
}

fn counts_json(rows: &[Anomaly], as_of: NaiveDate) -> Value {
    let mut by: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for a in rows {
        *by.entry(a.monitor).or_default().entry(a.severity.as_str()).or_default() += 1;
    }
    let count = |s: Severity| rows.iter().filter(|a| a.severity == s).count();
    json!({
        "as_of": as_of.to_string(),
        "critical": count(Severity::Critical),
        "warning": count(Severity::Warning),
        "skipped": count(Severity::Skipped),
        "by_monitor": by,
    })
}

/// What makes an anomaly the same one in two runs: monitor, severity (an escalation is news), customer, subject
/// and the date it was first seen.
type Key = (String, String, String, String, Option<NaiveDate>);

fn key(a: &Anomaly) -> Key {
    (a.monitor.to_string(), a.severity.as_str().to_string(), a.customer_id.clone(), a.subject.clone(), a.first_seen)
}

/// Reads a published `rpt_anomalies` back into rows (no ranking score: 0).
pub fn rows_from_frame(df: &DataFrame) -> Result<Vec<Anomaly>> {
    use pipeline::invoice::cells::{dates, decs, strs};
    use schemas::rpt_anomalies as t;
    let (mon, sev, cust, subj, msg) = (strs(df, t::monitor)?, strs(df, t::severity)?, strs(df, t::customer_id)?, strs(df, t::subject)?, strs(df, t::message)?);
    let (obs, exp, thr) = (decs(df, t::observed)?, decs(df, t::expected)?, decs(df, t::threshold)?);
    let (first, last) = (dates(df, t::first_seen)?, dates(df, t::last_seen)?);
    let mut out = Vec::new();
    for i in 0..df.height() {
        let Some(monitor) = mon[i].as_deref().and_then(|m| an::monitor::ALL.iter().find(|x| **x == m)) else { continue };
        let Some(severity) = sev[i].as_deref().and_then(Severity::parse) else { continue };
        out.push(Anomaly {
            monitor,
            severity,
            customer_id: cust[i].clone().unwrap_or_default(),
            subject: subj[i].clone().unwrap_or_default(),
            observed: obs[i],
            expected: exp[i],
            threshold: thr[i],
            first_seen: first[i],
            last_seen: last[i],
            message: msg[i].clone().unwrap_or_default(),
            score: Decimal::ZERO,
        });
    }
    Ok(out)
}

/// The anomalies of `current` (skipped rows never) not in the previous committed report.
pub fn new_since<'a>(previous: &[Anomaly], current: &'a [Anomaly]) -> Vec<&'a Anomaly> {
    let seen: BTreeSet<Key> = previous.iter().map(key).collect();
    current.iter().filter(|a| a.severity != Severity::Skipped && !seen.contains(&key(a))).collect()
}

/// One anomaly as a JSON object (decimals as exact strings, dates ISO 8601).
pub fn anomaly_json(a: &Anomaly, period: Period) -> Value {
    let dec = |v: Option<Decimal>| v.map(|d| Value::String(d.normalize().to_string())).unwrap_or(Value::Null);
    let dt = |v: Option<NaiveDate>| v.map(|d| Value::String(d.to_string())).unwrap_or(Value::Null);
    json!({
        "period": period.to_string(), "monitor": a.monitor, "severity": a.severity.as_str(), "customer_id": a.customer_id,
        "subject": a.subject, "observed": dec(a.observed), "expected": dec(a.expected), "threshold": dec(a.threshold),
        "first_seen": dt(a.first_seen), "last_seen": dt(a.last_seen), "message": a.message,
    })
}

/// After the tables are written and before the commit: finds the anomalies new since the period's last
/// committed run, writes them beside the report, and POSTs them to the webhook when one is configured.
pub fn publish_new(cfg: &Config, wh: &Warehouse, txn: &mut Txn, report: &Report, run_id: &str, spool_dir: &std::path::Path, m: &mut Manifest) -> Result<usize> {
    let period = report.window.period;
    let previous = match wh.read_table(schemas::rpt_anomalies::TABLE, Zone::Marts, period)? {
        Some(df) => rows_from_frame(&df)?,
        None => Vec::new(),
    };
    let new = new_since(&previous, &report.rows);
    let mut text = String::new();
    for a in &new {
        text.push_str(&anomaly_json(a, period).to_string());
        text.push('\n');
    }
    let local = spool_dir.join(NEW_FILE);
    std::fs::write(&local, &text).with_context(|| format!("writing `{}`", local.display()))?;
    let target = format!("marts/{}/period={period}/{NEW_FILE}", schemas::rpt_anomalies::TABLE);
    let out = txn.put_local_file(&target, &local)?;
    m.outputs.push(crate::manifest::OutputTable {
        table: "new_anomalies".into(),
        zone: "marts".into(),
        path: target,
        rows: new.len() as u64,
        bytes: out.bytes,
        sha256: out.sha256,
    });
    let mut alerts = json!({"new_anomalies": new.len(), "webhook": "not configured", "webhook_failures": 0});
    // `CSPBILL_WEBHOOK_URL` (a secret: incoming-webhook URLs carry their token) wins over `[alerts] webhook_url`.
    let from_env = std::env::var("CSPBILL_WEBHOOK_URL").ok();
    if let Some(url) = from_env.as_deref().or(cfg.alerts.webhook_url.as_deref()).filter(|u| !u.trim().is_empty()) {
        if new.is_empty() {
            alerts["webhook"] = "nothing new to send".into();
        } else {
            let body = json!({
                "text": alert_text(&new, period),
                "period": period.to_string(),
                "run_id": run_id,
                "anomalies": new.iter().map(|a| anomaly_json(a, period)).collect::<Vec<_>>(),
            });
            let timeout = Duration::from_secs(cfg.alerts.timeout_seconds.unwrap_or(10).max(1));
            let retries = cfg.alerts.retries.unwrap_or(2);
            match post(url, &body, timeout, retries) {
                Ok(attempts) => {
                    alerts["webhook"] = "posted".into();
                    alerts["attempts"] = attempts.into();
                }
                Err((attempts, e)) => {
                    let msg = format!(
                        "the alert webhook {} did not accept {} new anomal{} after {attempts} attempt(s): {e}; the run is published, the anomalies are in marts/rpt_anomalies/period={period}/{NEW_FILE}",
                        redact_url(url),
                        new.len(),
                        if new.len() == 1 { "y" } else { "ies" }
                    );
                    warn!("{msg}");
                    m.warnings.push(msg);
                    alerts["webhook"] = "failed".into();
                    alerts["attempts"] = attempts.into();
                    alerts["webhook_failures"] = 1.into();
                }
            }
        }
    }
    m.total("alerts", alerts);
    Ok(new.len())
}

/// The chat message of a webhook POST: one line per new anomaly, worst first.
fn alert_text(new: &[&Anomaly], period: Period) -> String {
    let mut v: Vec<&&Anomaly> = new.iter().collect();
    v.sort_by(|a, b| a.severity.cmp(&b.severity).then(b.score.cmp(&a.score)));
    let mut s = format!("cspbill {period}: {} new anomal{}", new.len(), if new.len() == 1 { "y" } else { "ies" });
    for a in v {
        s.push_str(&format!("\n- {} {}: {}", a.severity.as_str(), a.monitor, a.message));
    }
    s
}

/// The webhook URL without path, query or credentials (incoming-webhook URLs carry their secret in the path).
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}{}/…", u.scheme(), u.host_str().unwrap_or("?"), u.port().map(|p| format!(":{p}")).unwrap_or_default()),
        Err(_) => "(unparseable URL)".into(),
    }
}

/// POSTs `body` as JSON: up to `1 + retries` attempts, each with `timeout`, retrying connection errors,
/// timeouts, 429 and 5xx answers after a short pause. Returns the attempts made, or them and the last error.
pub fn post(url: &str, body: &Value, timeout: Duration, retries: u32) -> std::result::Result<u32, (u32, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| (0, format!("starting the HTTP client: {e}")))?;
    // reqwest arms its timeout when a request is built: inside the runtime.
    let _inside = rt.enter();
    let client = reqwest::Client::builder().timeout(timeout).build().map_err(|e| (0, format!("building the HTTP client: {e}")))?;
    let bytes = body.to_string();
    let mut last = String::new();
    for attempt in 1..=retries + 1 {
        let request = client.post(url).header("content-type", "application/json").body(bytes.clone());
        match rt.block_on(async { request.send().await }) {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => last = format!("HTTP {}", r.status()),
            Ok(r) => return Err((attempt, format!("HTTP {} (not retried: check the webhook URL)", r.status()))),
            Err(e) => last = if e.is_timeout() { format!("no answer within {} s", timeout.as_secs()) } else { format!("{}", error_chain(&e)) },
        }
        if attempt <= retries {
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
    }
    Err((retries + 1, last))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    redact_url_in(&s)
}

/// reqwest puts the URL in its messages; keep the secret path out of logs.
fn redact_url_in(s: &str) -> String {
    s.split(' ').map(|w| if w.starts_with("(http") || w.starts_with("http") { "(url redacted)" } else { w }).collect::<Vec<_>>().join(" ")
}

/// The closing summary of a run: counts per monitor and severity and the worst three.
pub fn summary(rows: &[Anomaly], period: Period, as_of: Option<NaiveDate>, new: Option<usize>) -> String {
    let count = |s: Severity| rows.iter().filter(|a| a.severity == s).count();
    let mut s = format!(
        "anomalies {period}{}: {} critical, {} warning, {} skipped{}",
        as_of.map(|d| format!(" (data to {})", an::day(d))).unwrap_or_default(),
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Skipped),
        new.map(|n| format!("; {n} new since the last committed run")).unwrap_or_default(),
    );
    let mut by: BTreeMap<usize, (&str, [usize; 3])> = BTreeMap::new();
    for a in rows {
        let rank = an::monitor::ALL.iter().position(|m| *m == a.monitor).unwrap_or(usize::MAX);
        let e = by.entry(rank).or_insert((a.monitor, [0; 3]));
        e.1[a.severity as usize] += 1;
    }
    for (m, [c, w, k]) in by.values() {
        let parts: Vec<String> = [(c, "critical"), (w, "warning"), (k, "skipped")].iter().filter(|(n, _)| **n > 0).map(|(n, l)| format!("{n} {l}")).collect();
        s.push_str(&format!("\n  {m:<20} {}", parts.join(", ")));
    }
    let worst = an::worst(rows, 3);
    if !worst.is_empty() {
        s.push_str("\n  worst:");
        for (i, a) in worst.iter().enumerate() {
            s.push_str(&format!("\n  {}. [{}] {}", i + 1, a.severity.as_str(), a.message));
        }
    }
    s
}

/// `cspbill anomalies`: runs the period as a nightly run does (building and publishing the report, alerting),
/// prints the committed report's summary, and with `--fail-on` exits 1 when an anomaly at that level fired.
/// A closed period is not run again: its committed report is read.
pub fn command(p: &PeriodArgs, fail_on: Option<crate::cli::Severity>) -> Result<()> {
    crate::run::run_period(p, pipeline::RunMode::Nightly, crate::stages::Stop::All)?;
    let cfg = config::load(&p.config)?;
    let wh = Warehouse::open(&cfg.warehouse_url(p.warehouse.as_deref()), &cfg.warehouse.options)?;
    let Some(df) = wh.read_table(schemas::rpt_anomalies::TABLE, Zone::Marts, p.period)? else {
        return Err(Failure::usage(format!(
            "period {} has no anomaly report in the warehouse (it was closed before cspbill built one); run an open period",
            p.period
        ))
        .into());
    };
    let rows = rows_from_frame(&df)?;
    if wh.committed(p.period)?.is_some_and(|c| c.closed) {
        // `run` printed only that the period is closed: show its committed report.
        println!("{}", summary(&rows, p.period, None, None));
    }
    let Some(level) = fail_on else { return Ok(()) };
    let level = match level {
        crate::cli::Severity::Warning => Severity::Warning,
        crate::cli::Severity::Critical => Severity::Critical,
    };
    let fired = rows.iter().filter(|a| a.severity.at_least(level)).count();
    if fired > 0 {
        let first = rows.iter().find(|a| a.severity.at_least(level)).map(|a| a.message.clone()).unwrap_or_default();
        return Err(Failure::invariant(format!(
            "{fired} anomal{} at `{}` or worse in {} (--fail-on {}); first: {first}; see marts/rpt_anomalies/period={}",
            if fired == 1 { "y" } else { "ies" },
            level.as_str(),
            p.period,
            level.as_str(),
            p.period
        ))
        .into());
    }
    println!("no anomaly at `{}` or worse in {}", level.as_str(), p.period);
    Ok(())
}
