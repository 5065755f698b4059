//! The ledger of a run (issue #15): journal entries, revenue schedules and the trial balance
//! (`pipeline::ledger`), their run invariants, and the ERP exports under `marts/exports/period=P/ledger/`.
//!
//! The month's rated parts are read from the run's spool and aggregated with streaming group-bys (per invoice
//! line, billing currency and FX rate; and the few charges with a term longer than a month), so only per-line
//! frames are collected. Schedules opened by earlier periods are read from their committed
//! `fct_revenue_schedule` (closed periods only: a closed period's tables never change).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use pipeline::{Period, RunContext};
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{Zone, fct_journal_entries as je, rpt_trial_balance as tb};
use serde::Deserialize;

use crate::error::Failure;
use crate::exports::{csv_field, csv_text, money_text};
use crate::manifest::Manifest;
use crate::reference::RefFrames;
use crate::stages::{Computed, TableData};
use crate::warehouse::Warehouse;

/// How far back a run looks for schedules opened by closed periods: five years of monthly periods, longer than
/// any Microsoft term (1 and 3 years; 5-year software and savings plans).
pub const SCHEDULE_LOOKBACK_PERIODS: u32 = 60;

/// Xero allows 300 lines per manual-journal import file (Xero Central, "Import manual journals").
pub const XERO_LINES_PER_FILE: usize = 300;

/// `[ledger]` in `cspbill.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// Xero's `TaxRate` column: the full name of a zero tax rate in the organisation's tax settings (journals
    /// are pre-tax): "Tax Exempt" (US), "No VAT" (UK), "BAS Excluded" (AU), "No GST" (NZ).
    #[serde(default = "default_tax_rate")]
    pub xero_tax_rate: String,
    /// Xero tracking category for the org unit (`cost_center`), written as `TrackingName1`.
    #[serde(default = "default_tracking")]
    pub xero_tracking_name: String,
}

fn default_tax_rate() -> String {
    "Tax Exempt".into()
}

fn default_tracking() -> String {
    "Cost Centre".into()
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self { xero_tax_rate: default_tax_rate(), xero_tracking_name: default_tracking() }
    }
}

/// The ledger's tables, once built.
pub struct Built {
    pub journal: DataFrame,
    pub trial_balance: DataFrame,
}

/// Builds the ledger of the run into `computed.tables` and its checks into `m`. `None` when `gl_accounts` is not
/// configured (a warning says so) or the run stopped before invoicing. A missing account mapping is exit 2.
pub fn build(
    gl_configured: bool,
    wh: &Warehouse,
    ctx: &RunContext,
    refs: &RefFrames,
    computed: &mut Computed,
    m: &mut Manifest,
) -> Result<Option<Built>> {
    let Some((invoices, lines, _)) = &computed.invoices else { return Ok(None) };
    if !gl_configured {
        m.warnings.push("no `gl_accounts` in [inputs] of cspbill.toml: no journal entries, revenue schedules or ERP exports were built; add reference/gl_accounts.csv (see README, \"The ledger\")".into());
        return Ok(None);
    }
    let rated = computed
        .tables
        .iter()
        .find_map(|(t, _, d)| match d {
            TableData::Spool(s) if *t == schemas::int_charges_rated::TABLE => Some(s.scan()),
            _ => None,
        })
        .context("the ledger needs `int_charges_rated` in the run's spool")??;
    let parts = pipeline::invoice::invoiced_parts(rated.clone(), lines);
    let cost_groups = crate::spool::collect(pipeline::ledger::cost_groups(parts.clone()), "ledger cost groups")?;
    let term_parts = crate::spool::collect(pipeline::ledger::term_parts(parts), "ledger term parts")?;
    use schemas::int_charges_rated as r;
    let charged = crate::spool::collect(
        rated
            .filter(col(r::status).eq(lit("priced")).fill_null(lit(false)))
            .group_by([col(r::billing_currency)])
            .agg([col(r::cost).sum().alias("cost")])
            .sort([r::billing_currency], Default::default()),
        "ledger cost charged",
    )?;
    let open = open_schedules(wh, ctx.period)?;
    let ledger = pipeline::ledger::ledger(
        pipeline::ledger::LedgerInputs {
            invoices,
            lines,
            cost_groups: &cost_groups,
            term_parts: &term_parts,
            gl_accounts: &refs.gl_accounts,
            customers: &refs.customers,
            open_schedules: &open,
        },
        ctx,
    )?;
    if !ledger.errors.is_empty() {
        return Err(Failure::usage(format!(
            "{} account mapping(s) missing in gl_accounts.csv; add them and run again:\n  {}",
            ledger.errors.len(),
            ledger.errors.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
        ))
        .into());
    }
    for c in pipeline::ledger::checks(&ledger, invoices, &cost_groups, &charged, ctx)? {
        m.check(&c.name, c.ok, c.detail);
    }
    let released = ledger.journal.column(je::source)?.str()?.iter().filter(|s| *s == Some("release")).count();
    m.total(
        "ledger",
        serde_json::json!({
            "journal_lines": ledger.journal.height(),
            "schedule_rows": ledger.schedule.height(),
            "release_lines": released,
            "open_schedule_rows_read": open.height(),
        }),
    );
    computed.tables.push((je::TABLE, Zone::Marts, TableData::Frame(ledger.journal.clone())));
    computed.tables.push((schemas::fct_revenue_schedule::TABLE, Zone::Marts, TableData::Frame(ledger.schedule)));
    computed.tables.push((tb::TABLE, Zone::Marts, TableData::Frame(ledger.trial_balance.clone())));
    Ok(Some(Built { journal: ledger.journal, trial_balance: ledger.trial_balance }))
}

/// `fct_revenue_schedule` of every closed period before `period` (within [`SCHEDULE_LOOKBACK_PERIODS`]) that
/// still has months at or after `period`.
pub fn open_schedules(wh: &Warehouse, period: Period) -> Result<DataFrame> {
    use schemas::fct_revenue_schedule as rs;
    let mut all = DataFrame::empty_with_schema(&rs::schema());
    let mut q = period;
    for _ in 0..SCHEDULE_LOOKBACK_PERIODS {
        q = q.prev();
        let Some(commit) = wh.committed(q)? else { continue };
        if !commit.closed {
            continue;
        }
        let Some(df) = wh.read_commit_table(&commit, rs::TABLE, Zone::Marts)? else { continue };
        let df = df
            .lazy()
            .with_column(lit(q.to_string()).alias(rs::opened_period))
            .filter(col(rs::month).gt_eq(lit(period.to_string())))
            .select(rs::names().into_iter().map(col).collect::<Vec<_>>())
            .collect()?;
        all.vstack_mut(&df)?;
    }
    Ok(all)
}

/// The header of the Xero manual journal import (Xero Central, "Import manual journals": Narration, Date,
/// Description, AccountCode, TaxRate, Amount, then tracking; Amount positive = debit, negative = credit).
pub const XERO_HEADER: &[&str] =
    &["Narration", "Date", "Description", "AccountCode", "TaxRate", "Amount", "TrackingName1", "TrackingOption1"];
/// The header of the QuickBooks Online journal entry import (QuickBooks help, "Import journal entries": Journal
/// No., Journal Date, Account Name, Debits, Credits, Description, Name; Class when class tracking is on).
pub const QBO_HEADER: &[&str] = &["Journal No.", "Journal Date", "Account Name", "Debits", "Credits", "Description", "Name", "Class"];
/// The generic journal CSV, laid out for NetSuite's CSV Import Assistant (NetSuite help, "Journal Entry Header
/// Fields" and "Journal Entry Line-Level Fields": External ID, Date, Currency, Memo; Account, Debit, Credit,
/// line Memo, Name, Department), one row per line, the header fields repeated on each.
pub const NETSUITE_HEADER: &[&str] =
    &["External ID", "Date", "Currency", "Memo", "Account", "Debit", "Credit", "Line Memo", "Name", "Department"];
pub const TRIAL_BALANCE_HEADER: &[&str] = &["period", "account", "currency", "debit", "credit", "balance", "lines"];

struct Row {
    entry: String,
    date: NaiveDate,
    account: String,
    debit: Decimal,
    credit: Decimal,
    currency: String,
    customer: String,
    cost_center: String,
    memo: String,
}

fn rows(journal: &DataFrame) -> Result<Vec<Row>> {
    let s = |c: &str| -> Result<Vec<String>> {
        Ok(journal.column(c)?.str()?.iter().map(|v| v.unwrap_or("").to_string()).collect())
    };
    let d = |c: &str| -> Result<Vec<Decimal>> {
        let col = journal.column(c)?;
        (0..col.len()).map(|i| Ok(pipeline::decimal::any_to_decimal(&col.get(i)?).unwrap_or_default())).collect()
    };
    let (entry, account, currency, name, id, cc, memo) =
        (s(je::entry_id)?, s(je::account)?, s(je::currency)?, s(je::customer_name)?, s(je::customer_id)?, s(je::cost_center)?, s(je::memo)?);
    let (debit, credit) = (d(je::debit)?, d(je::credit)?);
    let dates: Vec<NaiveDate> = pipeline::invoice::cells::dates(journal, je::entry_date)?.into_iter().map(|x| x.unwrap_or_default()).collect();
    Ok((0..entry.len())
        .map(|i| Row {
            entry: entry[i].clone(),
            date: dates[i],
            account: account[i].clone(),
            debit: debit[i],
            credit: credit[i],
            currency: currency[i].clone(),
            customer: if name[i].is_empty() { id[i].clone() } else { name[i].clone() },
            cost_center: cc[i].clone(),
            memo: memo[i].clone(),
        })
        .collect())
}

fn csv_line(cells: &[String]) -> String {
    let mut s = cells.join(",");
    s.push_str("\r\n");
    s
}

fn amount(d: Decimal, ccy: &str) -> String {
    if d.is_zero() { String::new() } else { money_text(d, ccy) }
}

/// Writes the ERP exports of the period's journal under `dir/period=P/ledger/` and returns the files written:
/// per invoice currency (Xero and QuickBooks journals are in one currency each), `xero_manual_journals_CCY_NNN.csv`
/// (at most 300 lines a file, entries never split unless one is longer) and `quickbooks_journal_entries_CCY.csv`;
/// `netsuite_journal_entries.csv` (all currencies) and `trial_balance.csv`.
pub fn write_exports(dir: &Path, period: Period, journal: &DataFrame, trial: &DataFrame, settings: &LedgerSettings) -> Result<Vec<PathBuf>> {
    let out = dir.join(format!("period={period}")).join("ledger");
    std::fs::create_dir_all(&out).with_context(|| format!("creating `{}`", out.display()))?;
    let rows = rows(journal)?;
    let mut written = Vec::new();
    let mut put = |name: String, text: String| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing `{}`", p.display()))?;
        written.push(p);
        Ok(())
    };
    let currencies: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.currency.as_str()).collect();
    for ccy in currencies {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.currency == ccy).collect();
        // Xero: one journal per Narration and Date; files of at most 300 lines, cut between entries.
        let mut files: Vec<String> = Vec::new();
        let mut cur = String::new();
        let (mut n, mut i) = (0usize, 0usize);
        while i < mine.len() {
            let j = (i..mine.len()).find(|&k| mine[k].entry != mine[i].entry).unwrap_or(mine.len());
            if n > 0 && n + (j - i) > XERO_LINES_PER_FILE {
                files.push(std::mem::take(&mut cur));
                n = 0;
            }
            for r in &mine[i..j] {
                let signed = r.debit - r.credit;
                cur.push_str(&csv_line(&[
                    csv_text(&r.entry),
                    r.date.format("%d/%m/%Y").to_string(),
                    csv_text(&r.memo),
                    csv_text(&r.account),
                    csv_text(&settings.xero_tax_rate),
                    money_text(signed, ccy),
                    if r.cost_center.is_empty() { String::new() } else { csv_text(&settings.xero_tracking_name) },
                    csv_text(&r.cost_center),
                ]));
            }
            n += j - i;
            i = j;
        }
        if n > 0 {
            files.push(cur);
        }
        let header = csv_line(&XERO_HEADER.iter().map(|h| csv_field(h)).collect::<Vec<_>>());
        for (k, body) in files.into_iter().enumerate() {
            put(format!("xero_manual_journals_{ccy}_{:03}.csv", k + 1), format!("{header}{body}"))?;
        }
        // QuickBooks Online: Journal No. groups lines; QBO keeps at most 21 characters, so entries are numbered
        // YYYYMM-NNNN in entry order and the entry id leads the description.
        let mut text = csv_line(&QBO_HEADER.iter().map(|h| csv_field(h)).collect::<Vec<_>>());
        let mut no = 0;
        let mut last = "";
        for r in &mine {
            if r.entry != last {
                no += 1;
                last = &r.entry;
            }
            text.push_str(&csv_line(&[
                format!("{}-{no:04}", period.compact()),
                r.date.format("%m/%d/%Y").to_string(),
                csv_text(&r.account),
                amount(r.debit, ccy),
                amount(r.credit, ccy),
                csv_text(&format!("{}: {}", r.entry, r.memo)),
                csv_text(&r.customer),
                csv_text(&r.cost_center),
            ]));
        }
        put(format!("quickbooks_journal_entries_{ccy}.csv"), text)?;
    }
    let mut text = csv_line(&NETSUITE_HEADER.iter().map(|h| csv_field(h)).collect::<Vec<_>>());
    for r in &rows {
        text.push_str(&csv_line(&[
            csv_text(&r.entry),
            r.date.format("%m/%d/%Y").to_string(),
            csv_text(&r.currency),
            csv_text(&format!("cspbill {period} {}", r.entry)),
            csv_text(&r.account),
            amount(r.debit, &r.currency),
            amount(r.credit, &r.currency),
            csv_text(&r.memo),
            csv_text(&r.customer),
            csv_text(&r.cost_center),
        ]));
    }
    put("netsuite_journal_entries.csv".into(), text)?;
    let mut text = csv_line(&TRIAL_BALANCE_HEADER.iter().map(|h| csv_field(h)).collect::<Vec<_>>());
    let acc = trial.column(tb::account)?.str()?.clone();
    let ccy = trial.column(tb::currency)?.str()?.clone();
    let n = trial.column(tb::lines)?.i64()?.clone();
    let dec = |c: &str, i: usize| -> Result<Decimal> { Ok(pipeline::decimal::any_to_decimal(&trial.column(c)?.get(i)?).unwrap_or_default()) };
    for i in 0..trial.height() {
        let c = ccy.get(i).unwrap_or("");
        text.push_str(&csv_line(&[
            period.to_string(),
            csv_text(acc.get(i).unwrap_or("")),
            csv_text(c),
            money_text(dec(tb::debit, i)?, c),
            money_text(dec(tb::credit, i)?, c),
            money_text(dec(tb::balance, i)?, c),
            n.get(i).unwrap_or(0).to_string(),
        ]));
    }
    put("trial_balance.csv".into(), text)?;
    Ok(written)
}
