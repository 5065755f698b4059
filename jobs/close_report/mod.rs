//! The month-end close report (issue 19): `marts/reports/period=P/close.html`, one self-contained page for the
//! people who sign off a close, written by every full run (a provisional banner at nightly, final at close) and
//! published in the run's commit like every other file. `data` gathers what it shows from small aggregates
//! (streaming group-bys over the spooled tables, the collected invoice tables, the manifest); `charts` draws
//! the charts as SVG with plotters; `html` writes the page. The page holds no run id or clock time, so the same
//! inputs give the same bytes (re-runs stay byte-identical). The per-customer margin and tag-compliance figures
//! are also recorded in the manifest (`control_totals`), where the run-health metrics (`crate::metrics`) read them.

pub mod charts;
pub mod data;
pub mod html;

use anyhow::{Context, Result};
use pipeline::RunContext;
use pipeline::anomalies::Report;
use serde_json::json;

use crate::config::Config;
use crate::manifest::{Manifest, OutputTable};
use crate::reference::RefFrames;
use crate::stages::Computed;
use crate::warehouse::Txn;

/// `control_totals` key: realised margin against target per customer and invoice currency.
pub const MARGIN_TOTAL: &str = "margin_by_customer";
/// `control_totals` key: tag compliance per customer (source tenant).
pub const TAG_COMPLIANCE_TOTAL: &str = "tag_compliance_by_customer";

/// Where the page of `period` is published, relative to the warehouse root.
pub fn path(period: pipeline::Period) -> String {
    format!("marts/reports/period={period}/close.html")
}

/// Records the report's per-customer figures in the manifest (exact decimal strings).
fn record(d: &data::ReportData, m: &mut Manifest) {
    let s = |v: Option<rust_decimal::Decimal>| v.map(|d| d.normalize().to_string());
    let margins: Vec<_> = d
        .margins
        .iter()
        .map(|x| {
            json!({
                "customer_id": x.customer_id, "customer_name": x.name, "currency": x.currency,
                "priced_spend": x.spend.normalize().to_string(), "margin": x.margin.normalize().to_string(),
                "realised_margin": s(x.realised), "target_margin": s(x.target), "variance_points": s(x.variance_points),
                "status": x.status.as_str(),
            })
        })
        .collect();
    let compliance: Vec<_> = d
        .compliance
        .iter()
        .map(|c| {
            json!({
                "customer_id": c.customer_id, "customer_name": c.name, "azure_cost": c.azure_cost.normalize().to_string(),
                "tag_allocated_cost": c.tagged.normalize().to_string(), "compliance": s(c.ratio), "judged": c.judged,
                "status": c.status.as_str(),
            })
        })
        .collect();
    m.total(MARGIN_TOTAL, margins);
    m.total(TAG_COMPLIANCE_TOTAL, compliance);
}

/// Builds the page of a computed run (every check done, exports written) and adds it to the commit.
pub fn publish(cfg: &Config, ctx: &RunContext, refs: &RefFrames, computed: &Computed, report: Option<&Report>, txn: &mut Txn, m: &mut Manifest) -> Result<()> {
    // Thresholds as the monitors resolve them; their warnings are already in the manifest.
    let mut scratch = Manifest::new("", "", "", "", String::new());
    let thresholds = crate::anomalies::thresholds(cfg, &refs.customers, &mut scratch)?;
    let d = data::gather(ctx, refs, computed, report, m, &thresholds)?;
    record(&d, m);
    let page = html::render(&d)?;
    let local = computed.spool.path("reports/close.html")?;
    std::fs::write(&local, page.as_bytes()).with_context(|| format!("writing `{}`", local.display()))?;
    let target = path(ctx.period);
    let out = txn.put_local_file(&target, &local)?;
    m.outputs.push(OutputTable { table: "close_report".into(), zone: "marts".into(), path: target, rows: 0, bytes: out.bytes, sha256: out.sha256 });
    Ok(())
}
