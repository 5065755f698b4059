//! `cspbill.toml`: the partner (invoice issuer), the warehouse URL, the input locations and the billing
//! policies (DESIGN §4.3). Paths are relative to the file's folder unless they are URLs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use pipeline::{AzureUsageSource, FxDatePolicy, Period, Policies, ProrationPolicy, RoundingMode};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::error::Failure;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub partner: Partner,
    #[serde(default)]
    pub warehouse: WarehouseConfig,
    pub inputs: Inputs,
    #[serde(default)]
    pub billing: Billing,
    /// How a run uses this machine (`[run]`).
    #[serde(default)]
    pub run: RunSettings,
    /// Bounds on input reading and whether links may leave the input folder (`[limits]`, see `jobs/guard.rs`).
    #[serde(default)]
    pub limits: crate::inputs::guard::Limits,
    /// ERP export settings of the ledger (`[ledger]`, see `jobs/ledger.rs`).
    #[serde(default)]
    pub ledger: crate::ledger::LedgerSettings,
    /// Anomaly thresholds and per-customer overrides (`[anomalies]`, read by `crate::anomalies`).
    #[serde(default)]
    pub anomalies: Anomalies,
    /// Where new anomalies are sent (`[alerts]`).
    #[serde(default)]
    pub alerts: Alerts,
    /// Change control of reference files (`[change_control]`, see `jobs/change_control.rs`); off by default.
    #[serde(default)]
    pub change_control: crate::change_control::Settings,
    /// The parallel run against legacy invoices (`[compare]`, see `jobs/compare.rs`): tolerances, column mapping.
    #[serde(default)]
    pub compare: crate::compare::Settings,
    /// Run-health metrics: a Prometheus textfile and an optional Pushgateway (`[metrics]`, see `jobs/metrics.rs`).
    #[serde(default)]
    pub metrics: crate::metrics::MetricsSettings,
    /// What counts as personal data for `cspbill erase` (`[privacy]`, see `jobs/privacy/`).
    #[serde(default)]
    pub privacy: crate::privacy::PrivacySettings,
    /// The retention schedule (`[retention]`: `telemetry_days`, `financial_years`; `cspbill retention`).
    #[serde(default)]
    pub retention: crate::privacy::RetentionSettings,
    /// The folder the file is in: relative paths resolve against it. Not read from the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file itself, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[run]`: where a run spools the month's tables while it streams them from stage to stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// A local folder for the run's spool (default: `CSPBILL_SPOOL`, else the system temporary folder). It needs
    /// about the size of the month's staged Parquet; it is emptied when the run ends.
    pub spool_dir: Option<String>,
    /// Buckets of paying customers the per-invoice tail (invoice detail, FOCUS, per-invoice files) is built in
    /// (default 1: all at once). A sharded run hands each bucket to a worker (`cspbill shard reduce`); the
    /// number decides the row order of `fct_invoice_detail` and `focus_cost_and_usage`, so a sharded run and
    /// `cspbill run` publish the same bytes when they use the same number.
    pub buckets: Option<u32>,
}

/// The MSP issuing the invoices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tax_id: String,
    #[serde(default)]
    pub email: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// Local folder (relative to the config file) or `s3://`, `az://`, `abfs://`, `gs://` URL.
    #[serde(default = "default_warehouse")]
    pub url: String,
    /// Extra object-store options (`aws_endpoint_url`, `azure_storage_use_emulator`, ...), as object_store keys.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_warehouse() -> String {
    "./warehouse".into()
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        Self { url: default_warehouse(), options: BTreeMap::new() }
    }
}

/// Where inputs are. `partner_center` may contain `{period}`, replaced by `YYYY-MM`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub partner_center: String,
    pub customers: String,
    #[serde(default)]
    pub org_units: Option<String>,
    pub rate_cards: String,
    #[serde(default)]
    pub tag_rules: Option<String>,
    #[serde(default)]
    pub fx_rates: Option<String>,
    #[serde(default)]
    pub manual_lines: Option<String>,
    #[serde(default)]
    pub psa_time_entries: Option<String>,
    #[serde(default)]
    pub license_activity: Option<String>,
    #[serde(default)]
    pub utilization: Option<String>,
    /// General-ledger accounts (`gl_accounts.csv`): when set, every run builds the journal entries, revenue
    /// schedules, trial balance and ERP exports (`crate::ledger`).
    #[serde(default)]
    pub gl_accounts: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Billing {
    #[serde(default)]
    pub rounding: RoundingMode,
    #[serde(default)]
    pub proration: ProrationPolicy,
    #[serde(default)]
    pub fx_date: FxDatePolicy,
    #[serde(default)]
    pub azure_usage_source: AzureUsageSource,
    #[serde(default = "default_prefix")]
    pub invoice_prefix: String,
    /// Fixed invoice date; when absent, the invoice date is the first day after the period (never the clock).
    #[serde(default)]
    pub invoice_date: Option<NaiveDate>,
    #[serde(default)]
    pub max_rejected_rows: u64,
}

fn default_prefix() -> String {
    "INV".into()
}

impl Default for Billing {
    fn default() -> Self {
        Self {
            rounding: RoundingMode::default(),
            proration: ProrationPolicy::default(),
            fx_date: FxDatePolicy::default(),
            azure_usage_source: AzureUsageSource::default(),
            invoice_prefix: default_prefix(),
            invoice_date: None,
            max_rejected_rows: 0,
        }
    }
}

/// Anomaly thresholds (DESIGN §5 "Anomalies"), with per-customer overrides keyed by customer id; resolved
/// into `pipeline::anomalies::ThresholdSet` by `crate::anomalies::thresholds`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomalies {
    #[serde(flatten)]
    pub defaults: Thresholds,
    #[serde(default)]
    pub overrides: BTreeMap<String, Thresholds>,
}

/// Every field optional: an override names only what it changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub budget_warning: Option<Decimal>,
    pub budget_critical: Option<Decimal>,
    pub deployment_factor: Option<Decimal>,
    pub license_unused_days: Option<i64>,
    pub cpu_floor_pct: Option<Decimal>,
    pub cpu_days: Option<i64>,
    pub tag_compliance_warning: Option<Decimal>,
    pub tag_compliance_critical: Option<Decimal>,
    pub margin_warning_points: Option<Decimal>,
    pub margin_critical_points: Option<Decimal>,
    /// Days of notice before `consent_expires_on` (default 14).
    pub consent_expiring_days: Option<i64>,
}

/// `[alerts]`: an optional incoming webhook (Teams/Slack style) that receives the anomalies new since the
/// period's last committed run as one JSON POST. A hook that is down never fails the billing run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    pub webhook_url: Option<String>,
    /// Seconds per attempt (default 10).
    pub timeout_seconds: Option<u64>,
    /// Attempts after the first (default 2), on connection errors, timeouts, 429 and 5xx answers.
    pub retries: Option<u32>,
}

impl Config {
    /// Reads and validates the file; any problem is a usage error (exit 2) naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read config `{}`: {e}; pass --config with the path of your cspbill.toml", path.display())))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| {
            // Where: line and column of the span TOML reports (1-based), then what and what to do.
            let at = e.span().map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
                format!(":{line}:{column}")
            });
            Failure::usage(format!(
                "{}{}: config is not valid: {}; fix it (see sample_data/cspbill.toml for the layout)",
                path.display(),
                at.unwrap_or_default(),
                e.message().trim_end()
            ))
        })?;
        cfg.path = path.to_path_buf();
        crate::inputs::guard::install(&cfg.limits);
        cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if cfg.base_dir.as_os_str().is_empty() {
            cfg.base_dir = PathBuf::from(".");
        }
        Ok(cfg)
    }

    /// Resolves an input location: URLs stay as they are, relative paths resolve against the config's folder.
    pub fn resolve(&self, location: &str) -> String {
        if is_url(location) || Path::new(location).is_absolute() {
            location.to_string()
        } else {
            self.base_dir.join(location.trim_start_matches("./")).to_string_lossy().into_owned()
        }
    }

    /// The folder (or URL prefix) holding the period's Partner Center snapshot.
    pub fn partner_center_location(&self, period: Period) -> String {
        self.resolve(&self.inputs.partner_center.replace("{period}", &period.to_string()))
    }

    /// The billing policies for a run of `period`, with an optional `--invoice-date` override.
    pub fn policies(&self, period: Period, invoice_date: Option<NaiveDate>) -> Policies {
        let b = &self.billing;
        Policies {
            rounding: b.rounding,
            proration: b.proration,
            fx_date: b.fx_date,
            azure_usage_source: b.azure_usage_source,
            invoice_prefix: b.invoice_prefix.clone(),
            invoice_date: invoice_date.or(b.invoice_date).unwrap_or_else(|| period.next().start()),
            issuer: self.partner.name.clone(),
            max_rejected_rows: b.max_rejected_rows,
        }
    }

    /// `[run] buckets` (1 when absent); 0 is a usage error.
    pub fn buckets(&self) -> Result<u32> {
        match self.run.buckets {
            Some(0) => Err(crate::error::Failure::usage(format!(
                "`{}`: `[run] buckets = 0`: write a number of at least 1 (1 builds every invoice's files at once)",
                self.path.display()
            ))
            .into()),
            Some(n) => Ok(n),
            None => Ok(1),
        }
    }

    /// The warehouse URL, from `--warehouse` / `CSPBILL_WAREHOUSE` or the file.
    pub fn warehouse_url(&self, over: Option<&str>) -> String {
        match over {
            Some(u) => u.to_string(),
            None => self.resolve(&self.warehouse.url),
        }
    }
}

/// Whether a location is a URL (`scheme://...`) rather than a local path.
pub fn is_url(location: &str) -> bool {
    location.split_once("://").is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
}

/// Loads a config, with context for the caller.
pub fn load(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading `{}`", path.display()))
}
