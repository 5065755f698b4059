//! The close report as one self-contained HTML page: inline CSS, inline SVG charts, no script, no external
//! resource (opening it needs no network). Amounts are the run's exact decimals printed for their currency
//! (ISO 4217 minor unit; values with more digits, such as cost and margin, are rounded half-even for display and
//! carry every digit in `data-exact` and the cell's tooltip). Nothing is computed in the browser. Rows carry
//! `data-*` attributes naming what they show, for readers and tests.

use std::fmt::Write as _;

use anyhow::Result;
use pipeline::anomalies::{money, pct};
use rust_decimal::Decimal;

use super::charts;
use super::data::{ReportData, Status};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A money cell: the amount for its currency, every digit in `data-exact` and the tooltip.
fn amount(field: &str, d: Decimal, currency: &str) -> String {
    let exact = d.normalize().to_string();
    let neg = if d.is_sign_negative() && !d.is_zero() { " neg" } else { "" };
    format!(r#"<td class="num{neg}" data-field="{field}" data-exact="{exact}" title="{exact}">{}</td>"#, esc(&money(d, currency)))
}

/// A decimal cell with all its digits (amounts of mixed or unknown currency, such as Microsoft's billing currency
/// before it is known).
fn exact(field: &str, d: Decimal) -> String {
    let e = d.normalize().to_string();
    format!(r#"<td class="num" data-field="{field}" data-exact="{e}">{e}</td>"#)
}

fn badge(s: Status) -> String {
    let class = match s {
        Status::Ok => "ok",
        Status::Warning => "warn",
        Status::Critical => "crit",
        Status::NotJudged => "na",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, s.as_str())
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2329;background:#f4f6f8;font-size:14px}
header{background:#1f3b57;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;opacity:.9}
main{padding:8px 28px 40px;max-width:1280px}
section{background:#fff;border:1px solid #dde3e8;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px;color:#1f3b57}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid #e6eaee;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.neg{color:#b3261e}
.banner{padding:10px 28px;font-weight:600}
.banner.provisional{background:#fff4ce;color:#6b4e00;border-bottom:2px solid #e0b100}
.banner.final{background:#e3f4e6;color:#1e5a26;border-bottom:2px solid #2e7d32}
tr.pass td:first-child{border-left:6px solid #2e7d32}
tr.fail td:first-child{border-left:6px solid #c62828}
tr.pass{background:#f3fbf4}
tr.fail{background:#fdecec}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#e3f4e6;color:#1e5a26}.badge.warn{background:#fff4ce;color:#6b4e00}
.badge.crit{background:#fdecec;color:#a31515}.badge.na{background:#eceff1;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
figure{margin:0}
figcaption{font-weight:600;margin:4px 0}
svg{max-width:100%;height:auto}
.scroll{overflow-x:auto}
table.compact{font-size:13px}
table.compact th{white-space:normal}
.legend span{display:inline-block;margin-right:16px}
.swatch{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}
.muted{color:#5f6b76}
p.summary{padding:8px 12px;border-radius:6px;margin:14px 0 0}
p.summary.pass{background:#e3f4e6;border-left:6px solid #2e7d32}
p.summary.fail{background:#fdecec;border-left:6px solid #c62828}
code{font-size:12px}
"#;

/// Renders the page.
pub fn render(d: &ReportData) -> Result<String> {
    let mut h = String::new();
    let period_name = d.period.start().format("%B %Y").to_string();
    let state = if d.final_ { "final" } else { "provisional" };
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Close report {p} — {partner}</title><style>{CSS}</style></head>
<body data-period="{p}" data-status="{state}">
<header><h1>Month-end close report: {period_name}</h1><p>{partner} · period <code>{p}</code> · invoice date {inv}{asof}</p></header>
"#,
        p = d.period,
        partner = esc(&d.partner),
        inv = d.invoice_date,
        asof = d.as_of.map(|a| format!(" · data to {a}")).unwrap_or_default(),
    );
    if d.final_ {
        h.push_str(r#"<div class="banner final" id="status">FINAL: this period is closed; its invoices never change. Late data is billed as adjustments on the next open period.</div>"#);
    } else {
        let _ = write!(
            h,
            r#"<div class="banner provisional" id="status">PROVISIONAL: nightly run{}. Invoices and figures change until the period is closed (<code>cspbill run --mode close</code>).</div>"#,
            d.as_of.map(|a| format!(" on data to {a}")).unwrap_or_default()
        );
    }
    let failed = d.checks.iter().filter(|c| !c.ok).count();
    let _ = write!(
        h,
        r##"<main>
<p id="checks-summary" class="{}">Run checks: <b>{} of {} hold</b>{} · <a href="#checks">details</a></p>
"##,
        if failed == 0 { "summary pass" } else { "summary fail" },
        d.checks.len() - failed,
        d.checks.len(),
        if failed == 0 { String::new() } else { format!(", <b>{failed} failed</b>") },
    );
    totals(&mut h, d);
    reconciliation(&mut h, d);
    margins(&mut h, d)?;
    spend(&mut h, d)?;
    anomalies(&mut h, d);
    compliance(&mut h, d);
    unpriced_and_rejects(&mut h, d);
    late(&mut h, d);
    exports(&mut h, d);
    checks(&mut h, d);
    inputs(&mut h, d);
    h.push_str("</main></body></html>\n");
    Ok(h)
}

fn totals(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="totals"><h2>Totals per currency</h2><table><thead><tr><th>currency</th><th class="num">invoices</th><th class="num">billed (subtotal)</th><th class="num">cost</th><th class="num">margin</th><th class="num">margin %</th></tr></thead><tbody>"#);
    for t in &d.totals {
        let m = if t.billed.is_zero() { "–".to_string() } else { pct(t.margin / t.billed) };
        let _ = write!(
            h,
            r#"<tr data-currency="{c}"><td>{c}</td><td class="num" data-field="invoices">{}</td>{}{}{}<td class="num">{}</td></tr>"#,
            t.invoices,
            amount("billed", t.billed, &t.currency),
            amount("cost", t.cost, &t.currency),
            amount("margin", t.margin, &t.currency),
            esc(&m),
            c = esc(&t.currency),
        );
    }
    if d.totals.is_empty() {
        h.push_str(r#"<tr><td colspan="6" class="muted">no invoice this period</td></tr>"#);
    }
    h.push_str("</tbody></table><p class=\"muted\">Invoices are pre-tax. Cost is what Microsoft charged, converted as each invoice line was; margin = billed − cost.</p></section>\n");
}

fn checks(h: &mut String, d: &ReportData) {
    let failed = d.checks.iter().filter(|c| !c.ok).count();
    let _ = write!(
        h,
        r#"<section id="checks"><h2>Run checks ({} passed, {failed} failed)</h2><table><thead><tr><th>check</th><th>result</th><th>numbers</th></tr></thead><tbody>"#,
        d.checks.len() - failed
    );
    for c in &d.checks {
        let (class, word) = if c.ok { ("pass", "holds") } else { ("fail", "FAILED") };
        let _ = write!(h, r#"<tr class="{class}" data-check="{n}"><td>{n}</td><td>{word}</td><td class="muted">{}</td></tr>"#, esc(&c.detail), n = esc(&c.name));
    }
    h.push_str("</tbody></table></section>\n");
}

fn reconciliation(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="reconciliation"><h2>Reconciliation to Microsoft's invoice</h2>"#);
    if let Some(t) = d.microsoft_subtotal {
        let _ = write!(h, r#"<p>Σ Subtotal of Microsoft's invoice files: <b data-field="microsoft_total" data-exact="{e}">{e}</b> (billing currency). Azure consumption is charged from <b>{}</b>.</p>"#, esc(&d.azure_usage_source), e = t.normalize());
    }
    h.push_str(r#"<div class="scroll"><table class="compact"><thead><tr><th>customer</th><th>ccy</th><th class="num">Microsoft Σ Subtotal</th><th class="num">charged: invoice lines</th><th class="num">charged: daily usage</th><th class="num">charged − Microsoft</th><th class="num">of which usage vs summary lines</th><th class="num">unexplained</th></tr></thead><tbody>"#);
    for r in &d.recon {
        let unexplained = r.unexplained();
        let class = if unexplained.is_zero() { "pass" } else { "fail" };
        let _ = write!(
            h,
            r#"<tr class="{class}" data-customer="{id}"><td>{}</td><td>{}</td>{}{}{}{}{}{}</tr>"#,
            esc(&r.name),
            esc(r.currency.as_deref().unwrap_or("")),
            exact("microsoft", r.microsoft),
            exact("from_invoice_lines", r.from_lines),
            exact("from_daily_usage", r.from_usage),
            exact("difference", r.difference()),
            exact("usage_vs_summary", r.usage_vs_summary),
            exact("unexplained", unexplained),
            id = esc(&r.customer_id),
        );
    }
    if d.recon.is_empty() {
        h.push_str(r#"<tr><td colspan="8" class="muted">no Microsoft invoice file in this period's snapshot</td></tr>"#);
    }
    h.push_str("</tbody></table></div><p class=\"muted\">Amounts in Microsoft's billing currency, exact. When Azure is charged from daily usage, Microsoft's metered invoice lines (a per-meter summary of the same consumption) are a control total only: the two files round differently, so the daily usage charged differs from them by a few cents (per subscription in the manifest, <code>azure_control_comparison</code>). A green row is fully explained by that difference.</p></section>\n");
}

fn margins(h: &mut String, d: &ReportData) -> Result<()> {
    h.push_str(r#"<section id="margins"><h2>Margin per customer against target</h2>"#);
    let rows: Vec<_> = d.margins.iter().filter(|m| m.realised.is_some()).collect();
    if !rows.is_empty() {
        let _ = write!(h, r#"<figure class="chart" id="margin-chart">{}</figure>"#, charts::margins(&rows)?);
    }
    h.push_str(r#"<table><thead><tr><th>customer</th><th>currency</th><th class="num">priced charges</th><th class="num">margin</th><th class="num">realised</th><th class="num">target</th><th class="num">variance (points)</th><th>status</th></tr></thead><tbody>"#);
    for m in &d.margins {
        let _ = write!(
            h,
            r#"<tr data-customer="{id}" data-currency="{c}"><td>{}</td><td>{c}</td>{}{}<td class="num" data-field="realised" data-exact="{}">{}</td><td class="num" data-field="target">{}</td><td class="num" data-field="variance_points">{}</td><td title="warning beyond ±{} points, critical beyond ±{}">{}</td></tr>"#,
            esc(&m.name),
            amount("spend", m.spend, &m.currency),
            amount("margin", m.margin, &m.currency),
            m.realised.map(|r| r.normalize().to_string()).unwrap_or_default(),
            m.realised.map(pct).unwrap_or_else(|| "–".into()),
            m.target.map(pct).unwrap_or_else(|| "–".into()),
            m.variance_points.map(|v| format!("{:+}", v.round_dp(1))).unwrap_or_else(|| "–".into()),
            m.warning_points.normalize(),
            m.critical_points.normalize(),
            badge(m.status),
            id = esc(&m.customer_id),
            c = esc(&m.currency),
        );
    }
    h.push_str("</tbody></table><p class=\"muted\">Realised margin = Σ margin / Σ price of the customer's priced Microsoft charges (as the <code>margin_variance</code> monitor judges it); service and manual lines are not in it.</p></section>\n");
    Ok(())
}

fn spend(h: &mut String, d: &ReportData) -> Result<()> {
    h.push_str(r#"<section id="spend"><h2>Azure spend by day</h2><p class="legend"><span><i class="swatch" style="background:#1f5fa8"></i>month-to-date consumption (priced daily usage)</span><span><i class="swatch" style="background:#c62828"></i>monthly budget pro rata by day (dashed)</span></p><div class="grid">"#);
    for s in &d.spend {
        let total: Decimal = s.by_day.iter().map(|(_, v)| *v).sum();
        let budget = s.budget.map(|b| format!(" · budget {}", money(b, &s.currency))).unwrap_or_else(|| " · no budget".into());
        let _ = write!(
            h,
            r#"<figure class="chart" data-customer="{id}" data-currency="{c}"><figcaption>{} · {}{}</figcaption>{}</figure>"#,
            esc(&s.name),
            esc(&money(total, &s.currency)),
            esc(&budget),
            charts::spend(s, d.period.days())?,
            id = esc(&s.customer_id),
            c = esc(&s.currency),
        );
    }
    if d.spend.is_empty() {
        h.push_str(r#"<p class="muted">no daily usage this period</p>"#);
    }
    h.push_str("</div></section>\n");
    Ok(())
}

fn anomalies(h: &mut String, d: &ReportData) {
    let [c, w, s] = d.anomaly_counts;
    let _ = write!(
        h,
        r#"<section id="anomalies"><h2>Top anomalies ({c} critical, {w} warning, {s} skipped)</h2><table><thead><tr><th>severity</th><th>monitor</th><th>customer</th><th>message</th></tr></thead><tbody>"#
    );
    for (a, name) in &d.anomalies {
        let class = if a.severity == pipeline::anomalies::Severity::Critical { "crit" } else { "warn" };
        let _ = write!(
            h,
            r#"<tr data-monitor="{m}" data-severity="{s}" data-customer="{}"><td><span class="badge {class}">{s}</span></td><td>{m}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&a.customer_id),
            esc(name),
            esc(&a.message),
            s = a.severity.as_str(),
            m = esc(a.monitor),
        );
    }
    if d.anomalies.is_empty() {
        h.push_str(r#"<tr><td colspan="4" class="muted">no anomaly fired</td></tr>"#);
    }
    h.push_str("</tbody></table><p class=\"muted\">All rows: <code>marts/rpt_anomalies</code>.</p></section>\n");
}

fn compliance(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="tag-compliance"><h2>Tag compliance per customer</h2><table><thead><tr><th>customer</th><th class="num">Azure cost</th><th class="num">allocated by tag rules</th><th class="num">compliance</th><th>status</th></tr></thead><tbody>"#);
    for c in &d.compliance {
        let _ = write!(
            h,
            r#"<tr data-customer="{id}">
<td>{}</td>{}{}<td class="num" data-field="compliance" data-exact="{}">{}</td><td title="warning below {}, critical below {}">{}</td></tr>"#,
            esc(&c.name),
            exact("azure_cost", c.azure_cost),
            exact("tag_allocated_cost", c.tagged),
            c.ratio.map(|r| r.normalize().to_string()).unwrap_or_default(),
            c.ratio.map(pct).unwrap_or_else(|| "–".into()),
            pct(c.warning),
            pct(c.critical),
            if c.judged { badge(c.status) } else { r#"<span class="badge na">no tag-key rule</span>"#.to_string() },
            id = esc(&c.customer_id),
        );
    }
    if d.compliance.is_empty() {
        h.push_str(r#"<tr><td colspan="5" class="muted">no Azure usage this period</td></tr>"#);
    }
    h.push_str("</tbody></table><p class=\"muted\">Share of each tenant's Azure usage cost (billing currency) allocated by tag rules that name a tag key. Customers without such a rule are not judged.</p></section>\n");
}

fn unpriced_and_rejects(h: &mut String, d: &ReportData) {
    let parts: i64 = d.unpriced.iter().map(|u| u.parts).sum();
    let _ = write!(h, r#"<section id="unpriced"><h2>Unpriced charges ({parts} part(s))</h2><table><thead><tr><th>customer</th><th>reason</th><th class="num">parts</th><th class="num">cost (billing currency)</th></tr></thead><tbody>"#);
    for u in &d.unpriced {
        let _ = write!(
            h,
            r#"<tr class="fail" data-customer="{}"><td>{}</td><td>{}</td><td class="num" data-field="parts">{}</td>{}</tr>"#,
            esc(&u.customer_id),
            esc(&u.name),
            esc(&u.reason),
            u.parts,
            amount("cost", u.cost, &u.currency)
        );
    }
    if d.unpriced.is_empty() {
        h.push_str(r#"<tr class="pass"><td colspan="4">every charge is priced</td></tr>"#);
    }
    h.push_str("</tbody></table><p class=\"muted\">A period with unpriced charges cannot be closed: add a rate rule (rate_cards.csv) or the customer (customers.csv).</p></section>\n");
    let rows: i64 = d.rejects.iter().map(|r| r.rows).sum();
    let _ = write!(h, r#"<section id="rejects"><h2>Rejected rows ({rows})</h2><table><thead><tr><th>source</th><th>file</th><th>reason</th><th>example</th><th class="num">rows</th><th class="num">lines</th><th class="num">cost</th></tr></thead><tbody>"#);
    for r in &d.rejects {
        let _ = write!(
            h,
            r#"<tr class="fail" data-file="{f}" data-reason="{code}"><td>{}</td><td><code>{f}</code></td><td><code>{code}</code>{}</td><td>{}</td><td class="num" data-field="rows">{}</td><td class="num">{}–{}</td>{}</tr>"#,
            r.table,
            if r.column.is_empty() { String::new() } else { format!(" (column <code>{}</code>)", esc(&r.column)) },
            esc(&r.example),
            r.rows,
            r.first_line,
            r.last_line,
            exact("cost", r.cost),
            f = esc(&r.file),
            code = esc(&r.reason_code),
        );
    }
    if d.rejects.is_empty() {
        h.push_str(r#"<tr class="pass"><td colspan="7">no row rejected</td></tr>"#);
    }
    h.push_str("</tbody></table><p class=\"muted\">Every rejected row, with its line and raw text: <code>rejects/rejects_pc_*</code>.</p></section>\n");
}

fn late(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="late-data"><h2>Late-data adjustments</h2><table><thead><tr><th>closed period</th><th>re-stated</th><th class="num">lines</th><th class="num">amount</th><th>note</th></tr></thead><tbody>"#);
    for (p, lines, amount, restated, reason) in &d.late {
        let _ = write!(
            h,
            r#"<tr data-corrected-period="{}"><td>{}</td><td>{}</td><td class="num">{lines}</td><td class="num">{}</td><td class="muted">{}</td></tr>"#,
            esc(p),
            esc(p),
            if *restated { "yes" } else { "no" },
            esc(amount),
            esc(reason)
        );
    }
    if d.late.is_empty() {
        h.push_str(r#"<tr><td colspan="5" class="muted">no closed period in the last three to re-state</td></tr>"#);
    }
    h.push_str("</tbody></table>");
    if !d.adjustments.is_empty() {
        h.push_str(r#"<table><thead><tr><th>invoice</th><th>customer</th><th>corrects</th><th>line</th><th class="num">amount</th></tr></thead><tbody>"#);
        for a in &d.adjustments {
            let _ = write!(
                h,
                r#"<tr data-invoice="{}"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>{}</tr>"#,
                esc(&a.invoice_number),
                esc(&a.invoice_number),
                esc(&a.customer_id),
                esc(&a.corrected_period),
                esc(&a.description),
                amount("amount", a.amount, &a.currency)
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");
}

/// Links relative to the page (`marts/reports/period=P/close.html`), so they work wherever the warehouse is
/// opened from.
fn link(path: &str) -> String {
    let rel = path.strip_prefix("marts/").map(|p| format!("../../{p}")).unwrap_or_else(|| format!("../../../{path}"));
    let name = path.rsplit('/').next().unwrap_or(path);
    format!(r#"<a href="{}">{}</a>"#, esc(&rel), esc(name))
}

fn exports(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="exports"><h2>Invoices and their exports</h2><table><thead><tr><th>invoice</th><th>customer</th><th class="num">subtotal</th><th>files</th></tr></thead><tbody>"#);
    for i in &d.invoices {
        let files: Vec<String> = i.exports.iter().map(|p| link(p)).collect();
        let _ = write!(
            h,
            r#"<tr data-invoice="{n}" data-customer="{}"><td>{n}</td><td>{}</td>{}<td>{}</td></tr>"#,
            esc(&i.customer_id),
            esc(&i.customer_name),
            amount("subtotal", i.subtotal, &i.currency),
            files.join(" · "),
            n = esc(&i.number),
        );
    }
    h.push_str("</tbody></table>");
    if !d.ledger_exports.is_empty() {
        let files: Vec<String> = d.ledger_exports.iter().map(|p| link(p)).collect();
        let _ = write!(h, r#"<p id="ledger-exports">Ledger exports: {}</p>"#, files.join(" · "));
    }
    h.push_str("</section>\n");
}

fn inputs(h: &mut String, d: &ReportData) {
    h.push_str(r#"<section id="inputs"><h2>Partner Center files of this run</h2><table><thead><tr><th>file</th><th>kind</th><th class="num">rows</th><th class="num">staged</th><th class="num">rejected</th><th class="num">duplicates</th><th>SHA-256</th></tr></thead><tbody>"#);
    for f in &d.inputs {
        let _ = write!(
            h,
            r#"<tr><td><code>{}</code></td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><code>{}</code></td></tr>"#,
            esc(&f.name),
            esc(&f.kind),
            f.rows_in,
            f.staged,
            f.rejected,
            f.duplicates,
            esc(&f.sha256)
        );
    }
    h.push_str("</tbody></table><p class=\"muted\">The run's manifest (<code>_runs/</code>) has every check, control total and output checksum.</p></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"<a href="x">O'Neil & Co</a>"#), "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; Co&lt;/a&gt;");
    }

    #[test]
    fn money_cells_show_the_minor_unit_and_keep_every_digit() {
        let d: Decimal = "8418.116740807115750000".parse().unwrap();
        assert_eq!(amount("cost", d, "EUR"), r#"<td class="num" data-field="cost" data-exact="8418.11674080711575" title="8418.11674080711575">EUR 8,418.12</td>"#);
        let y: Decimal = "102379.5".parse().unwrap();
        // JPY has no minor unit; half-even display rounding.
        assert!(amount("cost", y, "JPY").contains(">JPY 102,380<"));
        let n: Decimal = "-95.633572792300000000".parse().unwrap();
        assert!(amount("margin", n, "USD").contains(r#"class="num neg""#) && amount("margin", n, "USD").contains(">USD -95.63<"));
    }

    #[test]
    fn export_links_are_relative_to_the_page() {
        assert_eq!(link("marts/exports/period=2025-06/customer=a/FCP-1.csv"), r#"<a href="../../exports/period=2025-06/customer=a/FCP-1.csv">FCP-1.csv</a>"#);
    }
}
