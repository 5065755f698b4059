//! The ledger (issue #15): balanced journal entries for the ERP (`fct_journal_entries`), revenue recognised
//! over the term (`fct_revenue_schedule`) and the period's trial balance (`rpt_trial_balance`).
//!
//! Entries are in the invoice currency, one per invoice and kind (`source`):
//! - `invoice` (`INV/<invoice>`): per invoice line, receivable against revenue, and against deferred revenue for
//!   the part of a prepaid term not yet earned; credits, refunds, spend-cap credits and negative lines swap sides;
//! - `cost` (`COST/<invoice>`): per invoice line, billing currency and FX rate, cost of sales against the payable
//!   to Microsoft: Σ cost of the rated parts (billing currency, `source_amount`) converted as the invoice line was
//!   (Σ `cost_ic`, the line's `fx_rate`), rounded once to the minor unit; adjustment lines post their cost change;
//! - `release` (`REL/<period>/<customer>/<currency>`): the period's slice of every schedule opened in an earlier
//!   closed period, deferred revenue against revenue.
//!
//! Everything here is small (per invoice line): the job aggregates the month's rated parts with a streaming
//! group-by ([`cost_groups`], [`term_parts`]) and hands the collected frames to [`ledger`].

mod accounts;
pub mod schedule;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{
    fct_invoice_lines as fl, fct_invoices as fi, fct_journal_entries as je, fct_revenue_schedule as rs, int_charges_rated as r,
    rpt_trial_balance as tb,
};

pub use accounts::{Accounts, GlAccounts, Role};
use crate::context::{Period, RunContext};
use crate::currency::{minor_unit, round};
use crate::error::Result;
use crate::invoice::cells;
pub use schedule::{Slice, TermPart, straight_line};

/// Invoice line types, the `line_type` values of `gl_accounts.csv` besides `*`.
pub const LINE_TYPES: &[&str] =
    &["usage", "license", "one_time", "service", "manual", "refund", "credit", "adjustment", "spend_cap_credit"];

/// Line types whose charges may cover a prepaid term (credits pass through as Microsoft dated them).
const TERM_TYPES: &[&str] = &["license", "one_time", "refund"];

/// Per invoice line, billing currency and FX rate: Σ cost (billing currency), Σ cost_ic, parts. `parts` are the
/// rated parts joined to their invoice line (`pipeline::invoice::invoiced_parts`).
pub fn cost_groups(parts: LazyFrame) -> LazyFrame {
    parts
        .group_by([col("invoice_line_id"), col(r::billing_currency), col(r::fx_rate)])
        .agg([
            col(r::cost).sum().alias("cost"),
            col(r::cost_ic).sum().alias("cost_ic"),
            len().cast(DataType::Int64).alias("parts"),
        ])
        .sort(["invoice_line_id", r::billing_currency, r::fx_rate], SortMultipleOptions::default().with_nulls_last(true))
}

/// The invoice-line charges whose term (charge start to end date) is longer than 31 days: the candidates for a
/// revenue schedule. [`schedule::longer_than_a_month`] decides exactly, per part, on this small frame.
pub fn term_parts(parts: LazyFrame) -> LazyFrame {
    let days = col(r::charge_end_date).cast(DataType::Int32) - col(r::charge_start_date).cast(DataType::Int32);
    let typed = TERM_TYPES.iter().fold(lit(false), |acc, t| acc.or(col(r::line_type).eq(lit(*t))));
    parts
        .filter(
            col(r::source_kind)
                .eq(lit("invoice_line"))
                .and(typed)
                .and(col(r::charge_start_date).is_not_null())
                .and(col(r::charge_end_date).is_not_null())
                .and(days.gt_eq(lit(28)))
                .fill_null(lit(false)),
        )
        .select([col("invoice_line_id"), col(r::price), col(r::charge_start_date), col(r::charge_end_date)])
}

/// Everything the ledger reads: the period's invoices, the two aggregates of its rated parts, the accounts, the
/// customers (names for the ERP) and the schedules opened by earlier closed periods.
pub struct LedgerInputs<'a> {
    pub invoices: &'a DataFrame,
    pub lines: &'a DataFrame,
    /// [`cost_groups`], collected.
    pub cost_groups: &'a DataFrame,
    /// [`term_parts`], collected.
    pub term_parts: &'a DataFrame,
    pub gl_accounts: &'a DataFrame,
    pub customers: &'a DataFrame,
    /// `fct_revenue_schedule` rows of earlier closed periods (any months; only this period's are released).
    pub open_schedules: &'a DataFrame,
}

/// The ledger of one period, and what could not be booked.
pub struct Ledger {
    pub journal: DataFrame,
    pub schedule: DataFrame,
    pub trial_balance: DataFrame,
    /// Missing account mappings, one message per (line type, family) naming its missing columns: the job exits 2.
    pub errors: Vec<String>,
}

/// One journal line before it has its entry line number.
#[derive(Clone, Debug, Default)]
struct JLine {
    entry_id: String,
    account: String,
    role: &'static str,
    /// Signed: positive is a debit, negative a credit.
    amount: Decimal,
    currency: String,
    customer_id: String,
    cost_center: Option<String>,
    invoice_number: Option<String>,
    invoice_line: Option<String>,
    line_type: Option<String>,
    memo: String,
    source: &'static str,
    source_currency: Option<String>,
    source_amount: Option<Decimal>,
    fx_rate: Option<Decimal>,
    corrected_period: Option<String>,
}

/// An invoice line as the ledger reads it.
struct InvLine {
    id: String,
    number: String,
    customer: String,
    currency: String,
    line_type: String,
    family: Option<String>,
    unit_id: Option<String>,
    description: String,
    amount: Decimal,
    unrounded: Decimal,
    cost: Decimal,
    corrected: Option<String>,
}

fn invoice_lines(df: &DataFrame) -> Result<Vec<InvLine>> {
    let id = cells::strs(df, fl::invoice_line_id)?;
    let num = cells::strs(df, fl::invoice_number)?;
    let cust = cells::strs(df, fl::customer_id)?;
    let ccy = cells::strs(df, fl::currency)?;
    let lt = cells::strs(df, fl::line_type)?;
    let fam = cells::strs(df, fl::product_family)?;
    let unit = cells::strs(df, fl::unit_id)?;
    let desc = cells::strs(df, fl::description)?;
    let amount = cells::decs(df, fl::amount)?;
    let unrounded = cells::decs(df, fl::amount_unrounded)?;
    let cost = cells::decs(df, fl::cost)?;
    let corrected = cells::strs(df, fl::corrected_period)?;
    Ok((0..id.len())
        .map(|i| InvLine {
            id: id[i].clone().unwrap_or_default(),
            number: num[i].clone().unwrap_or_default(),
            customer: cust[i].clone().unwrap_or_default(),
            currency: ccy[i].clone().unwrap_or_default(),
            line_type: lt[i].clone().unwrap_or_default(),
            family: fam[i].clone(),
            unit_id: unit[i].clone(),
            description: desc[i].clone().unwrap_or_default(),
            amount: amount[i].unwrap_or_default(),
            unrounded: unrounded[i].or(amount[i]).unwrap_or_default(),
            cost: cost[i].unwrap_or_default(),
            corrected: corrected[i].clone(),
        })
        .collect())
}

/// Collects missing-mapping messages once each while resolving accounts.
struct Resolver<'a> {
    gl: &'a GlAccounts,
    /// (line_type, family) → the missing roles, kept in the column order of `gl_accounts.csv`.
    missing: BTreeMap<(String, String), BTreeSet<(u8, &'static str)>>,
}

impl Resolver<'_> {
    fn get(&mut self, role: Role, line_type: &str, family: Option<&str>) -> String {
        match self.gl.account(role, line_type, family) {
            Ok(a) => a,
            Err(pair) => {
                self.missing.entry(pair).or_default().insert((role as u8, role.column()));
                String::new()
            }
        }
    }
}

/// Builds the period's journal entries, revenue schedules and trial balance (see the module comment).
pub fn ledger(inputs: LedgerInputs, ctx: &RunContext) -> Result<Ledger> {
    let period = ctx.period;
    let mode = ctx.policies.rounding;
    let gl = GlAccounts::from_frame(inputs.gl_accounts)?;
    let mut res = Resolver { gl: &gl, missing: BTreeMap::new() };
    let lines = invoice_lines(inputs.lines)?;

    // Term parts per invoice line (exact test of "longer than a month" here, on the small frame).
    let mut terms: HashMap<String, Vec<TermPart>> = HashMap::new();
    {
        let ids = cells::strs(inputs.term_parts, "invoice_line_id")?;
        let price = cells::decs(inputs.term_parts, r::price)?;
        let start = cells::dates(inputs.term_parts, r::charge_start_date)?;
        let end = cells::dates(inputs.term_parts, r::charge_end_date)?;
        for i in 0..ids.len() {
            if let (Some(id), Some(p), Some(s), Some(e)) = (&ids[i], price[i], start[i], end[i]) {
                if schedule::longer_than_a_month(s, e) {
                    terms.entry(id.clone()).or_default().push(TermPart { price: p, start: s, end: e });
                }
            }
        }
    }

    let mut journal: Vec<JLine> = Vec::new();
    let mut sched = ScheduleRows::default();
    for l in &lines {
        let dp = minor_unit(&l.currency).unwrap_or(2);
        let fam = l.family.as_deref();
        let entry = format!("INV/{}", l.number);
        let base = JLine {
            entry_id: entry.clone(),
            currency: l.currency.clone(),
            customer_id: l.customer.clone(),
            cost_center: l.unit_id.clone(),
            invoice_number: Some(l.number.clone()),
            invoice_line: Some(l.id.clone()),
            line_type: Some(l.line_type.clone()),
            memo: match &l.corrected {
                Some(c) => format!("{} (adjustment for {c})", l.description),
                None => l.description.clone(),
            },
            source: "invoice",
            corrected_period: l.corrected.clone(),
            ..JLine::default()
        };
        if !l.amount.is_zero() {
            let slices = match terms.get(&l.id) {
                Some(parts) if TERM_TYPES.contains(&l.line_type.as_str()) => straight_line(l.amount, l.unrounded, parts, period, dp, mode),
                _ => Vec::new(),
            };
            let earned = slices.first().map_or(l.amount, |s| s.amount);
            let deferred = l.amount - earned;
            journal.push(JLine { account: res.get(Role::Receivable, &l.line_type, fam), role: Role::Receivable.label(), amount: l.amount, ..base.clone() });
            if !earned.is_zero() {
                journal.push(JLine { account: res.get(Role::Revenue, &l.line_type, fam), role: Role::Revenue.label(), amount: -earned, ..base.clone() });
            }
            if !slices.is_empty() {
                let revenue = res.get(Role::Revenue, &l.line_type, fam);
                let deferred_account = res.get(Role::Deferred, &l.line_type, fam);
                if !deferred.is_zero() {
                    journal.push(JLine { account: deferred_account.clone(), role: Role::Deferred.label(), amount: -deferred, ..base.clone() });
                }
                sched.push(l, period, &revenue, &deferred_account, &slices, terms.get(&l.id).map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        // Adjustment lines carry the change of cost of the period they correct (no rated parts behind them).
        if l.line_type == "adjustment" && !l.cost.is_zero() {
            let c = round(l.cost, dp, mode);
            if !c.is_zero() {
                let cost = JLine { entry_id: format!("COST/{}", l.number), source: "cost", ..base.clone() };
                journal.push(JLine { account: res.get(Role::Cost, &l.line_type, fam), role: Role::Cost.label(), amount: c, ..cost.clone() });
                journal.push(JLine { account: res.get(Role::Payable, &l.line_type, fam), role: Role::Payable.label(), amount: -c, ..cost });
            }
        }
    }

    // Cost of sales against the payable to Microsoft, per invoice line × billing currency × FX rate.
    let by_id: HashMap<&str, &InvLine> = lines.iter().map(|l| (l.id.as_str(), l)).collect();
    {
        let g = inputs.cost_groups;
        let ids = cells::strs(g, "invoice_line_id")?;
        let bc = cells::strs(g, r::billing_currency)?;
        let fx = cells::decs(g, r::fx_rate)?;
        let cost = cells::decs(g, "cost")?;
        let cost_ic = cells::decs(g, "cost_ic")?;
        for i in 0..ids.len() {
            let Some(l) = ids[i].as_deref().and_then(|id| by_id.get(id)) else { continue };
            let dp = minor_unit(&l.currency).unwrap_or(2);
            let c = round(cost_ic[i].unwrap_or_default(), dp, mode);
            let fam = l.family.as_deref();
            let memo = format!("Microsoft cost of {} ({} {} at {})", l.id, cost[i].unwrap_or_default().normalize(), bc[i].clone().unwrap_or_default(), fx[i].unwrap_or(Decimal::ONE).normalize());
            let base = JLine {
                entry_id: format!("COST/{}", l.number),
                currency: l.currency.clone(),
                customer_id: l.customer.clone(),
                cost_center: l.unit_id.clone(),
                invoice_number: Some(l.number.clone()),
                invoice_line: Some(l.id.clone()),
                line_type: Some(l.line_type.clone()),
                memo,
                source: "cost",
                source_currency: bc[i].clone(),
                source_amount: cost[i],
                fx_rate: fx[i],
                ..JLine::default()
            };
            if c.is_zero() {
                continue;
            }
            journal.push(JLine { account: res.get(Role::Cost, &l.line_type, fam), role: Role::Cost.label(), amount: c, ..base.clone() });
            journal.push(JLine { account: res.get(Role::Payable, &l.line_type, fam), role: Role::Payable.label(), amount: -c, ..base });
        }
    }

    // Releases: this period's slice of every schedule opened in an earlier closed period.
    {
        let o = inputs.open_schedules;
        let month = cells::strs(o, rs::month)?;
        let opened = cells::strs(o, rs::opened_period)?;
        let amount = cells::decs(o, rs::amount)?;
        let cust = cells::strs(o, rs::customer_id)?;
        let ccy = cells::strs(o, rs::currency)?;
        let num = cells::strs(o, rs::invoice_number)?;
        let line = cells::strs(o, rs::invoice_line)?;
        let lt = cells::strs(o, rs::line_type)?;
        let rev = cells::strs(o, rs::revenue_account)?;
        let def = cells::strs(o, rs::deferred_revenue_account)?;
        let cc = cells::strs(o, rs::cost_center)?;
        let this = period.to_string();
        let mut rows: Vec<usize> = (0..month.len())
            .filter(|&i| month[i].as_deref() == Some(this.as_str()) && opened[i].as_deref().is_some_and(|p| p < this.as_str()))
            .collect();
        rows.sort_by(|&a, &b| (&cust[a], &ccy[a], &line[a]).cmp(&(&cust[b], &ccy[b], &line[b])));
        for i in rows {
            let a = amount[i].unwrap_or_default();
            if a.is_zero() {
                continue;
            }
            let (c, cur) = (cust[i].clone().unwrap_or_default(), ccy[i].clone().unwrap_or_default());
            let base = JLine {
                entry_id: format!("REL/{period}/{c}/{cur}"),
                currency: cur,
                customer_id: c,
                cost_center: cc[i].clone(),
                invoice_number: num[i].clone(),
                invoice_line: line[i].clone(),
                line_type: lt[i].clone(),
                memo: format!("revenue earned in {period} on {} (billed in {})", line[i].clone().unwrap_or_default(), opened[i].clone().unwrap_or_default()),
                source: "release",
                ..JLine::default()
            };
            journal.push(JLine { account: def[i].clone().unwrap_or_default(), role: Role::Deferred.label(), amount: a, ..base.clone() });
            journal.push(JLine { account: rev[i].clone().unwrap_or_default(), role: Role::Revenue.label(), amount: -a, ..base });
        }
    }

    let names = customer_names(inputs.customers)?;
    let journal_df = journal_frame(&journal, period, &names)?;
    let trial = trial_balance(&journal_df, period)?;
    Ok(Ledger { journal: journal_df, schedule: sched.frame()?, trial_balance: trial, errors: res
            .missing
            .iter()
            .map(|((t, f), cols)| accounts::missing_message(t, f, &cols.iter().map(|c| c.1).collect::<Vec<_>>()))
            .collect() })
}

fn customer_names(df: &DataFrame) -> Result<HashMap<String, String>> {
    use schemas::stg_customers as c;
    let ids = cells::strs(df, c::customer_id)?;
    let names = cells::strs(df, c::customer_name)?;
    Ok(ids.into_iter().zip(names).filter_map(|(i, n)| Some((i?, n?))).collect())
}

/// The rows of `fct_revenue_schedule` opened by this period.
#[derive(Default)]
struct ScheduleRows {
    s: BTreeMap<&'static str, Vec<Option<String>>>,
    start: Vec<Option<NaiveDate>>,
    end: Vec<Option<NaiveDate>>,
    days: Vec<i64>,
    amount: Vec<Option<Decimal>>,
    line_amount: Vec<Option<Decimal>>,
}

impl ScheduleRows {
    fn push(&mut self, l: &InvLine, period: Period, revenue: &str, deferred: &str, slices: &[Slice], parts: &[TermPart]) {
        let start = parts.iter().map(|p| p.start.min(p.end)).min();
        let end = parts.iter().map(|p| p.end.max(p.start)).max();
        for sl in slices {
            let mut put = |k: &'static str, v: Option<String>| self.s.entry(k).or_default().push(v);
            put(rs::schedule_id, Some(l.id.clone()));
            put(rs::invoice_number, Some(l.number.clone()));
            put(rs::invoice_line, Some(l.id.clone()));
            put(rs::customer_id, Some(l.customer.clone()));
            put(rs::currency, Some(l.currency.clone()));
            put(rs::opened_period, Some(period.to_string()));
            put(rs::line_type, Some(l.line_type.clone()));
            put(rs::revenue_account, Some(revenue.to_string()));
            put(rs::deferred_revenue_account, Some(deferred.to_string()));
            put(rs::cost_center, l.unit_id.clone());
            put(rs::month, Some(sl.month.to_string()));
            self.start.push(start);
            self.end.push(end);
            self.days.push(sl.days);
            self.amount.push(Some(sl.amount));
            self.line_amount.push(Some(l.amount));
        }
    }

    fn frame(&self) -> Result<DataFrame> {
        let mut columns = Vec::new();
        for (name, _) in rs::COLUMNS {
            let c = match *name {
                rs::term_start => cells::date_column(name, &self.start),
                rs::term_end => cells::date_column(name, &self.end),
                rs::days => cells::int_column(name, &self.days),
                rs::amount => cells::dec_column(name, &self.amount),
                rs::line_amount => cells::dec_column(name, &self.line_amount),
                other => cells::str_column(name, &self.s.get(other).cloned().unwrap_or_default()),
            };
            columns.push(c);
        }
        cells::frame(columns, &rs::schema(), rs::TABLE)
    }
}

fn journal_frame(lines: &[JLine], period: Period, names: &HashMap<String, String>) -> Result<DataFrame> {
    let mut order: Vec<&JLine> = lines.iter().collect();
    // Entries in id order; lines keep the order they were made in (stable sort).
    order.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    let mut line_no = Vec::with_capacity(order.len());
    let mut last = "";
    let mut k = 0;
    for l in &order {
        if l.entry_id != last {
            k = 0;
            last = &l.entry_id;
        }
        k += 1;
        line_no.push(k as i64);
    }
    let st = |f: &dyn Fn(&JLine) -> Option<String>| -> Vec<Option<String>> { order.iter().map(|l| f(l)).collect() };
    let dc = |f: &dyn Fn(&JLine) -> Option<Decimal>| -> Vec<Option<Decimal>> { order.iter().map(|l| f(l)).collect() };
    let n = order.len();
    let columns = vec![
        cells::str_column(je::entry_id, &st(&|l| Some(l.entry_id.clone()))),
        cells::int_column(je::entry_line, &line_no),
        cells::date_column(je::entry_date, &vec![Some(period.end()); n]),
        cells::str_column(je::period, &vec![Some(period.to_string()); n]),
        cells::str_column(je::account, &st(&|l| Some(l.account.clone()))),
        cells::str_column(je::account_role, &st(&|l| Some(l.role.to_string()))),
        cells::dec_column(je::debit, &dc(&|l| Some(l.amount.max(Decimal::ZERO)))),
        cells::dec_column(je::credit, &dc(&|l| Some((-l.amount).max(Decimal::ZERO)))),
        cells::str_column(je::currency, &st(&|l| Some(l.currency.clone()))),
        cells::str_column(je::customer_id, &st(&|l| Some(l.customer_id.clone()))),
        cells::str_column(je::customer_name, &st(&|l| names.get(&l.customer_id).cloned())),
        cells::str_column(je::cost_center, &st(&|l| l.cost_center.clone())),
        cells::str_column(je::invoice_number, &st(&|l| l.invoice_number.clone())),
        cells::str_column(je::invoice_line, &st(&|l| l.invoice_line.clone())),
        cells::str_column(je::line_type, &st(&|l| l.line_type.clone())),
        cells::str_column(je::memo, &st(&|l| Some(l.memo.clone()))),
        cells::str_column(je::source, &st(&|l| Some(l.source.to_string()))),
        cells::str_column(je::source_currency, &st(&|l| l.source_currency.clone())),
        cells::dec_column(je::source_amount, &dc(&|l| l.source_amount)),
        cells::dec_column(je::fx_rate, &dc(&|l| l.fx_rate)),
        cells::str_column(je::corrected_period, &st(&|l| l.corrected_period.clone())),
    ];
    cells::frame(columns, &je::schema(), je::TABLE)
}

/// `rpt_trial_balance`: the period's movements per account and currency, from the journal frame.
pub fn trial_balance(journal: &DataFrame, period: Period) -> Result<DataFrame> {
    let acc = cells::strs(journal, je::account)?;
    let ccy = cells::strs(journal, je::currency)?;
    let dr = cells::decs(journal, je::debit)?;
    let cr = cells::decs(journal, je::credit)?;
    let mut sums: BTreeMap<(String, String), (Decimal, Decimal, i64)> = BTreeMap::new();
    for i in 0..acc.len() {
        let e = sums.entry((acc[i].clone().unwrap_or_default(), ccy[i].clone().unwrap_or_default())).or_default();
        e.0 += dr[i].unwrap_or_default();
        e.1 += cr[i].unwrap_or_default();
        e.2 += 1;
    }
    let rows: Vec<_> = sums.into_iter().collect();
    let n = rows.len();
    let columns = vec![
        cells::str_column(tb::period, &vec![Some(period.to_string()); n]),
        cells::str_column(tb::account, &rows.iter().map(|((a, _), _)| Some(a.clone())).collect::<Vec<_>>()),
        cells::str_column(tb::currency, &rows.iter().map(|((_, c), _)| Some(c.clone())).collect::<Vec<_>>()),
        cells::dec_column(tb::debit, &rows.iter().map(|(_, v)| Some(v.0)).collect::<Vec<_>>()),
        cells::dec_column(tb::credit, &rows.iter().map(|(_, v)| Some(v.1)).collect::<Vec<_>>()),
        cells::dec_column(tb::balance, &rows.iter().map(|(_, v)| Some(v.0 - v.1)).collect::<Vec<_>>()),
        cells::int_column(tb::lines, &rows.iter().map(|(_, v)| v.2).collect::<Vec<_>>()),
    ];
    cells::frame(columns, &tb::schema(), tb::TABLE)
}

/// A run invariant of the ledger, with its numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, failures: Vec<String>, holds: String) -> LedgerCheck {
    let ok = failures.is_empty();
    let detail = if ok { holds } else { failures.into_iter().take(5).collect::<Vec<_>>().join("; ") };
    LedgerCheck { name: name.into(), ok, detail }
}

/// The ledger's run invariants, recomputed from the output frames: every entry balances per currency; Σ revenue
/// + Σ deferred booked on invoices = Σ invoice subtotals per currency; Σ cost booked in billing currency = Σ cost
/// of the invoiced rated parts (`charged`: `billing_currency`, `cost`), and in invoice currency within the
/// rounding bound (½ minor unit per cost group; one unit under `down`); every schedule sums exactly to its line;
/// the trial balance balances per currency.
pub fn checks(l: &Ledger, invoices: &DataFrame, cost_groups: &DataFrame, charged: &DataFrame, ctx: &RunContext) -> Result<Vec<LedgerCheck>> {
    let j = &l.journal;
    let id = cells::strs(j, je::entry_id)?;
    let ccy = cells::strs(j, je::currency)?;
    let dr = cells::decs(j, je::debit)?;
    let cr = cells::decs(j, je::credit)?;
    let role = cells::strs(j, je::account_role)?;
    let src = cells::strs(j, je::source)?;
    let sccy = cells::strs(j, je::source_currency)?;
    let samt = cells::decs(j, je::source_amount)?;
    let mut out = Vec::new();

    let mut per_entry: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut revenue: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut cost_bc: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut cost_ic: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut bad_sides = Vec::new();
    for i in 0..id.len() {
        let (d, c) = (dr[i].unwrap_or_default(), cr[i].unwrap_or_default());
        if d < Decimal::ZERO || c < Decimal::ZERO || (!d.is_zero() && !c.is_zero()) {
            bad_sides.push(format!("entry `{}` line {} has debit {d} and credit {c}", id[i].clone().unwrap_or_default(), i + 1));
        }
        let cur = ccy[i].clone().unwrap_or_default();
        *per_entry.entry((id[i].clone().unwrap_or_default(), cur.clone())).or_default() += d - c;
        let r = role[i].as_deref().unwrap_or("");
        let s = src[i].as_deref().unwrap_or("");
        if s == "invoice" && (r == "revenue" || r == "deferred_revenue") {
            *revenue.entry(cur.clone()).or_default() += c - d;
        }
        if s == "cost" && r == "cost_of_sales" {
            if let (Some(bc), Some(a)) = (&sccy[i], samt[i]) {
                *cost_bc.entry(bc.clone()).or_default() += a;
                *cost_ic.entry(cur.clone()).or_default() += d - c;
            }
        }
    }
    let unbalanced: Vec<String> = per_entry
        .iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|((e, c), v)| format!("entry `{e}` ({c}) is off by {v} (Σ debit − Σ credit)"))
        .collect();
    let mut f = unbalanced;
    f.extend(bad_sides);
    out.push(check("ledger: every entry balances per currency", f, format!("{} entries × currencies balance exactly", per_entry.len())));

    let mut subtotals: BTreeMap<String, Decimal> = BTreeMap::new();
    let ic = cells::strs(invoices, fi::currency)?;
    let st = cells::decs(invoices, fi::subtotal)?;
    for i in 0..ic.len() {
        *subtotals.entry(ic[i].clone().unwrap_or_default()).or_default() += st[i].unwrap_or_default();
    }
    let keys: BTreeSet<&String> = subtotals.keys().chain(revenue.keys()).collect();
    let f: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let (a, b) = (revenue.get(*k).copied().unwrap_or_default(), subtotals.get(*k).copied().unwrap_or_default());
            (a != b).then(|| format!("{k}: Σ revenue + Σ deferred {a} vs Σ invoice subtotals {b}"))
        })
        .collect();
    out.push(check("ledger: Σ revenue + Σ deferred = Σ invoice subtotals", f, format!("{} currencies: {:?}", subtotals.len(), subtotals.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>())));

    let mut want: BTreeMap<String, Decimal> = BTreeMap::new();
    let cb = cells::strs(charged, r::billing_currency)?;
    let cc = cells::decs(charged, "cost")?;
    for i in 0..cb.len() {
        *want.entry(cb[i].clone().unwrap_or_default()).or_default() += cc[i].unwrap_or_default();
    }
    let keys: BTreeSet<&String> = want.keys().chain(cost_bc.keys()).collect();
    let mut f: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let (a, b) = (cost_bc.get(*k).copied().unwrap_or_default(), want.get(*k).copied().unwrap_or_default());
            (a != b).then(|| format!("{k}: Σ cost booked {a} vs Σ cost of the invoiced charges {b}"))
        })
        .collect();
    // In invoice currency: Σ booked vs Σ cost_ic, within the rounding bound of the groups.
    let gid = cells::strs(cost_groups, "invoice_line_id")?;
    let gic = cells::decs(cost_groups, "cost_ic")?;
    let line_ccy: HashMap<String, String> = {
        let ids = cells::strs(&l.journal, je::invoice_line)?;
        ids.into_iter().zip(ccy.iter().cloned()).filter_map(|(a, b)| Some((a?, b?))).collect()
    };
    let mut exact: BTreeMap<String, (Decimal, i64)> = BTreeMap::new();
    for i in 0..gid.len() {
        let Some(cur) = gid[i].as_ref().and_then(|g| line_ccy.get(g)) else { continue };
        let e = exact.entry(cur.clone()).or_default();
        e.0 += gic[i].unwrap_or_default();
        e.1 += 1;
    }
    for (cur, (x, n)) in &exact {
        let unit = Decimal::new(1, minor_unit(cur).unwrap_or(2));
        let bound = if ctx.policies.rounding == crate::RoundingMode::Down { unit } else { unit / Decimal::TWO } * Decimal::from(*n);
        let booked = cost_ic.get(cur).copied().unwrap_or_default();
        if (booked - x).abs() > bound {
            f.push(format!("{cur}: Σ cost booked {booked} vs Σ cost converted {x}: off by more than {bound} for {n} group(s)"));
        }
    }
    out.push(check("ledger: Σ cost booked = Σ cost charged", f, format!("billing currencies: {:?}", want.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>())));

    let sid = cells::strs(&l.schedule, rs::schedule_id)?;
    let sa = cells::decs(&l.schedule, rs::amount)?;
    let sl = cells::decs(&l.schedule, rs::line_amount)?;
    let mut sums: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for i in 0..sid.len() {
        let e = sums.entry(sid[i].clone().unwrap_or_default()).or_default();
        e.0 += sa[i].unwrap_or_default();
        e.1 = sl[i].unwrap_or_default();
    }
    let f: Vec<String> = sums.iter().filter(|(_, (a, b))| a != b).map(|(k, (a, b))| format!("schedule `{k}` sums to {a}, its line is {b}")).collect();
    out.push(check("ledger: every revenue schedule sums to its line", f, format!("{} schedule(s)", sums.len())));

    let tc = cells::strs(&l.trial_balance, tb::currency)?;
    let tbal = cells::decs(&l.trial_balance, tb::balance)?;
    let mut per: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in 0..tc.len() {
        *per.entry(tc[i].clone().unwrap_or_default()).or_default() += tbal[i].unwrap_or_default();
    }
    let f: Vec<String> = per.iter().filter(|(_, v)| !v.is_zero()).map(|(k, v)| format!("{k}: trial balance off by {v}")).collect();
    out.push(check("ledger: the trial balance balances per currency", f, format!("{} currencies", per.len())));
    Ok(out)
}
