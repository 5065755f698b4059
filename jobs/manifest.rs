//! The run manifest (`_runs/<run_id>.json`): inputs with checksums, outputs with row counts and checksums,
//! control totals and invariants, timings, versions (DESIGN §3, §6). Built as the run goes, published with the
//! commit; a failed run prints the numbers instead.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

/// One output table written by the run: what the warehouse reported writing.
pub type OutputTable = crate::warehouse::TableOutput;

/// One invariant checked by the run: its name, whether it held, and the numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub run_id: String,
    pub period: String,
    pub mode: String,
    pub status: String,
    pub cspbill_version: String,
    pub polars_version: String,
    pub warehouse: String,
    pub config: BTreeMap<String, String>,
    pub policies: Value,
    pub started_at: String,
    pub finished_at: String,
    /// Milliseconds per stage, in run order.
    pub timings_ms: Vec<(String, u128)>,
    pub inputs: Value,
    pub reference_files: Value,
    /// Which approved version of each controlled reference file the run used (`crate::change_control`), or
    /// that change control was disabled.
    pub change_control: Value,
    pub outputs: Vec<OutputTable>,
    pub control_totals: BTreeMap<String, Value>,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
}

impl Manifest {
    pub fn new(run_id: &str, period: &str, mode: &str, warehouse: &str, started_at: String) -> Self {
        Self {
            run_id: run_id.into(),
            period: period.into(),
            mode: mode.into(),
            status: "running".into(),
            cspbill_version: env!("CARGO_PKG_VERSION").into(),
            polars_version: "0.55.2".into(),
            warehouse: warehouse.into(),
            config: BTreeMap::new(),
            policies: Value::Null,
            started_at,
            finished_at: String::new(),
            timings_ms: Vec::new(),
            inputs: Value::Null,
            reference_files: Value::Null,
            change_control: Value::Null,
            outputs: Vec::new(),
            control_totals: BTreeMap::new(),
            checks: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an invariant; returns whether it held.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check { name: name.into(), ok, detail: detail.into() });
        ok
    }

    /// The invariants that failed, as one message naming the numbers.
    pub fn failures(&self) -> Option<String> {
        let failed: Vec<String> = self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        (!failed.is_empty()).then(|| failed.join("\n  "))
    }

    pub fn total(&mut self, name: &str, v: impl Serialize) {
        self.control_totals.insert(name.into(), serde_json::to_value(v).unwrap_or(Value::Null));
    }
}

/// Times the stages of a run.
pub struct Timer {
    start: Instant,
    pub laps: Vec<(String, u128)>,
    /// Peak resident memory of the process (MiB) when each lap ended: the high-water mark so far, so a rise
    /// between two laps belongs to the stage of the later one.
    pub peak_rss_mib: Vec<(String, u64)>,
    /// Anonymous resident memory (MiB) when each lap ended: the heap, without the pages of files Polars reads
    /// through memory maps (inputs, spool files), which count in the peak RSS but are the kernel's to drop.
    pub rss_anon_mib: Vec<(String, u64)>,
}

impl Timer {
    pub fn new() -> Self {
        Self { start: Instant::now(), laps: Vec::new(), peak_rss_mib: Vec::new(), rss_anon_mib: Vec::new() }
    }
    /// Records the time since the previous lap under `stage`, and the memory high-water mark.
    pub fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        let ms = now.duration_since(self.start).as_millis();
        self.laps.push((stage.into(), ms));
        let rss = peak_rss_mib();
        if let Some(r) = rss {
            self.peak_rss_mib.push((stage.into(), r));
        }
        if let Some(a) = status_mib("RssAnon:") {
            self.rss_anon_mib.push((stage.into(), a));
        }
        tracing::debug!(stage, ms = ms as u64, peak_rss_mib = rss, "stage done");
        self.start = now;
    }
}

/// The process's peak resident set size in MiB (`VmHWM` of `/proc/self/status`; None where there is none).
pub fn peak_rss_mib() -> Option<u64> {
    status_mib("VmHWM:")
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
