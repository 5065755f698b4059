//! The command line (DESIGN §7), built with clap.

use std::path::PathBuf;

use anyhow::Result;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pipeline::{Period, RunMode};

use crate::error::Failure;

#[derive(Debug, Parser)]
#[command(name = "cspbill", version, about = "Month-end billing pipeline for Microsoft CSP resellers")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Log format on stderr: `text` for people, `json` for schedulers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log detail (`-v` debug, `-vv` trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options every job over a period takes.
#[derive(Debug, Clone, Args)]
pub struct PeriodArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// Billing period, `YYYY-MM`.
    #[arg(long, value_parser = parse_period)]
    pub period: Period,
    /// Warehouse root URL; overrides the config (`./warehouse`, `s3://b/p`, `az://c/p`, `gs://b/p`).
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// Invoice date (`YYYY-MM-DD`); overrides the config.
    #[arg(long, value_parser = parse_date)]
    pub invoice_date: Option<NaiveDate>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every stage for a period and publish its outputs in one commit.
    Run {
        #[command(flatten)]
        p: PeriodArgs,
        /// `nightly` gives provisional invoices; `close` finalises the period.
        #[arg(long, value_enum, default_value_t = ModeArg::Nightly)]
        mode: ModeArg,
    },
    /// Stage the period's inputs only (raw landing, staged tables, rejects, manifest).
    Ingest(PeriodArgs),
    /// Run up to `int_charges`.
    Charges(PeriodArgs),
    /// Run up to `int_charges_allocated`.
    Allocate(PeriodArgs),
    /// Run up to `int_charges_rated`.
    Rate(PeriodArgs),
    /// Run up to the invoices.
    Invoice(PeriodArgs),
    /// Run up to the FOCUS 1.2 cost-and-usage dataset (`marts/focus_cost_and_usage`) and say where it is.
    Focus(PeriodArgs),
    /// Run the anomaly monitors over the period.
    Anomalies {
        #[command(flatten)]
        p: PeriodArgs,
        /// Exit 1 when an anomaly of this severity or worse is found.
        #[arg(long, value_enum)]
        fail_on: Option<Severity>,
    },
    /// Explain a rated line or an invoice line: sources, rules, FX and arithmetic.
    Explain {
        #[command(flatten)]
        p: PeriodArgs,
        /// A `line_id` or `part_id` of `int_charges_rated`.
        #[arg(long, conflicts_with = "invoice_line", required_unless_present = "invoice_line")]
        line: Option<String>,
        /// An `invoice_line_id` of `fct_invoice_lines`.
        #[arg(long)]
        invoice_line: Option<String>,
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Compare the period's committed invoice lines with a legacy system's (`marts/rpt_parallel_run`).
    Compare(crate::compare::CompareArgs),
    /// Compare the PSA's agreements and the CRM's quotes with what was billed (`marts/rpt_drift`).
    Drift(crate::drift::DriftArgs),
    /// Write a deterministic synthetic Partner Center workspace.
    Generate(crate::generate::GenerateArgs),
    /// Change control of reference files: propose, approve, reject, list, show (`[change_control]`).
    Ref {
        #[command(subcommand)]
        cmd: crate::change_control::RefCommand,
    },
    /// GDPR erasure: pseudonymise a customer's personal data in every period, keeping its invoices.
    Erase(crate::privacy::erase::EraseArgs),
    /// Apply the retention schedule of `[retention]`: aggregate old telemetry, delete expired periods.
    Retention(crate::privacy::retention::RetentionArgs),
    /// Share a customer's invoice and FOCUS bundle of a period as read-only signed URLs that expire.
    Share(crate::privacy::bundles::ShareArgs),
    /// Run a period as shards on a distributed engine: plan, map (one per input), commit (deploy/README.md).
    Shard {
        #[command(subcommand)]
        cmd: crate::shard::ShardCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Nightly,
    Close,
}

impl From<ModeArg> for RunMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Nightly => RunMode::Nightly,
            ModeArg::Close => RunMode::Close,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExplainFormat {
    Text,
    Json,
}

pub(crate) fn parse_period(s: &str) -> Result<Period, String> {
    s.parse::<Period>().map_err(|e| e.to_string())
}

pub(crate) fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("bad date `{s}`: write it as YYYY-MM-DD"))
}

/// Whether stderr carries JSON lines (`--log-format json`): then every line cspbill writes there is JSON.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the tracing subscriber on stderr: `RUST_LOG` wins, else info (`-v` debug, `-vv` trace). Debug
/// events are cspbill's own (per file, per stage, per store call); `-vv` adds the libraries' traces.
pub fn init_logging(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let default = match g.verbose {
        0 => "info",
        1 => "info,cspbill=debug,pipeline=debug",
        _ => "debug,cspbill=trace,pipeline=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match g.log_format {
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            builder.json().flatten_event(true).try_init()
        }
        // Span fields (period, run id) are printed once, in the span prefix; events do not repeat them.
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// One closing line on stderr for the person or scheduler running cspbill: `warning: …` or `error: …` as
/// text, or (under `--log-format json`) one JSON object with `timestamp`, `level`, `message` and `fields`,
/// like the log events, so a scheduler can parse every line.
pub fn report(level: &str, message: &str, fields: serde_json::Value) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        let mut obj = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            // The level names of the log events (`WARN`, `ERROR`), so one filter reads both.
            "level": match level {
                "warning" => "WARN".to_string(),
                other => other.to_ascii_uppercase(),
            },
            "message": message,
        });
        if let (Some(o), serde_json::Value::Object(extra)) = (obj.as_object_mut(), fields) {
            o.extend(extra);
        }
        eprintln!("{obj}");
    } else {
        eprintln!("{level}: {message}");
    }
}

/// Runs the chosen command.
pub fn dispatch(cli: Cli) -> Result<()> {
    use crate::run::{Stop, run_period};
    match cli.command {
        Command::Run { p, mode } => run_period(&p, mode.into(), Stop::All),
        Command::Ingest(p) => run_period(&p, RunMode::Nightly, Stop::Ingest),
        Command::Charges(p) => run_period(&p, RunMode::Nightly, Stop::Charges),
        Command::Allocate(p) => run_period(&p, RunMode::Nightly, Stop::Allocate),
        Command::Rate(p) => run_period(&p, RunMode::Nightly, Stop::Rate),
        Command::Invoice(p) => run_period(&p, RunMode::Nightly, Stop::Invoice),
        Command::Focus(p) => crate::focus::command(&p),
        Command::Anomalies { p, fail_on } => crate::run::anomalies(&p, fail_on),
        Command::Explain { p, line, invoice_line, format } => crate::explain::explain(&p, line, invoice_line, format),
        Command::Compare(a) => crate::compare::command(&a),
        Command::Drift(a) => crate::drift::command(&a),
        Command::Generate(g) => crate::generate::generate(&g),
        Command::Ref { cmd } => crate::change_control::command(cmd),
        Command::Erase(a) => crate::privacy::erase::command(&a),
        Command::Retention(a) => crate::privacy::retention::command(&a),
        Command::Share(a) => crate::privacy::bundles::command(&a),
        Command::Shard { cmd } => crate::shard::command(cmd),
    }
}

/// A usage error for a missing piece of a command.
#[allow(dead_code)]
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Failure::usage(msg).into()
}
