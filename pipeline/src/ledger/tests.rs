//! Tiny-frame tests of the ledger, one per kind of entry, with the expected postings worked out by hand beside
//! each test; and a property test that every entry balances and every schedule sums to its line.

use chrono::NaiveDate;
use polars::prelude::*;
use proptest::prelude::*;
use rust_decimal::Decimal;
use schemas::{fct_invoice_lines as fl, fct_invoices as fi, fct_journal_entries as je, fct_revenue_schedule as rs};

use super::*;
use crate::context::{Period, Policies, RunContext, RunMode};
use crate::invoice::cells;
use crate::reference::{RefTable, stage_reference};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}
fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}
fn p(s: &str) -> Period {
    s.parse().unwrap()
}

const GL: &str = "line_type,product_family,revenue_account,cost_account,deferred_revenue_account,receivable_account,payable_account,description
*,*,4000,5000,2400,1200,2100,default: control accounts and Azure
License,*,4100,5100,,,,seats
one_time,reservation,4200,5200,,,,reservations
refund,*,4100,5100,,,,refunds reverse the sale
credit,*,4900,5900,,,,Microsoft credits passed through
service,*,4300,,,,,PSA time
manual,*,4400,,,,,manual lines
adjustment,*,4500,5500,,,,late data
spend_cap_credit,*,4950,,,,,trial cap";

fn gl(text: &str) -> DataFrame {
    let mut it = text.lines();
    let header: Vec<String> = it.next().unwrap().split(',').map(str::to_string).collect();
    let rows: Vec<(u64, Vec<String>)> = it.enumerate().map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect())).collect();
    stage_reference(RefTable::GlAccounts, "gl_accounts.csv", &header, &rows).unwrap().df
}

/// An invoice line: (id, customer, currency, line_type, family, amount, unrounded, cost, unit, corrected).
struct L(&'static str, &'static str, &'static str, &'static str, Option<&'static str>, &'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>);

fn number(id: &str) -> String {
    id[..id.len() - 5].to_string()
}

fn lines_frame(ls: &[L], period: Period) -> DataFrame {
    let s = |f: &dyn Fn(&L) -> Option<String>| ls.iter().map(f).collect::<Vec<_>>();
    let dc = |f: &dyn Fn(&L) -> Option<Decimal>| ls.iter().map(f).collect::<Vec<_>>();
    let mut cols = Vec::new();
    for (name, ty) in fl::COLUMNS {
        let c = match *name {
            fl::invoice_line_id => cells::str_column(name, &s(&|l| Some(l.0.into()))),
            fl::invoice_number => cells::str_column(name, &s(&|l| Some(number(l.0)))),
            fl::period => cells::str_column(name, &s(&|_| Some(period.to_string()))),
            fl::customer_id => cells::str_column(name, &s(&|l| Some(l.1.into()))),
            fl::currency => cells::str_column(name, &s(&|l| Some(l.2.into()))),
            fl::line_type => cells::str_column(name, &s(&|l| Some(l.3.into()))),
            fl::product_family => cells::str_column(name, &s(&|l| l.4.map(Into::into))),
            fl::description => cells::str_column(name, &s(&|l| Some(format!("{} line", l.3)))),
            fl::unit_id => cells::str_column(name, &s(&|l| l.8.map(Into::into))),
            fl::corrected_period => cells::str_column(name, &s(&|l| l.9.map(Into::into))),
            fl::amount => cells::dec_column(name, &dc(&|l| Some(d(l.5)))),
            fl::amount_unrounded => cells::dec_column(name, &dc(&|l| Some(d(l.6)))),
            fl::cost => cells::dec_column(name, &dc(&|l| Some(d(l.7)))),
            _ => match ty {
                schemas::Ty::Int => cells::int_column(name, &vec![1; ls.len()]),
                schemas::Ty::Dec => cells::dec_column(name, &vec![None; ls.len()]),
                _ => cells::str_column(name, &vec![None; ls.len()]),
            },
        };
        cols.push(c);
    }
    cells::frame(cols, &fl::schema(), fl::TABLE).unwrap()
}

/// Invoices with subtotal = Σ their lines' amounts (what the invoice stage guarantees).
fn invoices_frame(ls: &[L]) -> DataFrame {
    let mut sums: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in ls {
        *sums.entry((number(l.0), l.2.to_string())).or_default() += d(l.5);
    }
    let n = sums.len();
    let mut cols = Vec::new();
    for (name, ty) in fi::COLUMNS {
        let c = match *name {
            fi::invoice_number => cells::str_column(name, &sums.keys().map(|k| Some(k.0.clone())).collect::<Vec<_>>()),
            fi::currency => cells::str_column(name, &sums.keys().map(|k| Some(k.1.clone())).collect::<Vec<_>>()),
            fi::subtotal => cells::dec_column(name, &sums.values().map(|v| Some(*v)).collect::<Vec<_>>()),
            _ => match ty {
                schemas::Ty::Int => cells::int_column(name, &vec![0; n]),
                schemas::Ty::Dec => cells::dec_column(name, &vec![None; n]),
                schemas::Ty::Date => cells::date_column(name, &vec![None; n]),
                _ => cells::str_column(name, &vec![None; n]),
            },
        };
        cols.push(c);
    }
    cells::frame(cols, &fi::schema(), fi::TABLE).unwrap()
}

/// Cost groups: (invoice line id, billing currency, fx rate, Σ cost, Σ cost_ic).
fn groups(gs: &[(&str, &str, &str, &str, &str)]) -> DataFrame {
    df!(
        "invoice_line_id" => gs.iter().map(|g| g.0).collect::<Vec<_>>(),
        "billing_currency" => gs.iter().map(|g| g.1).collect::<Vec<_>>(),
    )
    .unwrap()
    .hstack(&[
        cells::dec_column("fx_rate", &gs.iter().map(|g| Some(d(g.2))).collect::<Vec<_>>()),
        cells::dec_column("cost", &gs.iter().map(|g| Some(d(g.3))).collect::<Vec<_>>()),
        cells::dec_column("cost_ic", &gs.iter().map(|g| Some(d(g.4))).collect::<Vec<_>>()),
    ])
    .unwrap()
}

/// Term parts: (invoice line id, price, start, end).
fn terms(ts: &[(&str, &str, &str, &str)]) -> DataFrame {
    DataFrame::new_infer_height(vec![
        cells::str_column("invoice_line_id", &ts.iter().map(|t| Some(t.0.to_string())).collect::<Vec<_>>()),
        cells::dec_column("price", &ts.iter().map(|t| Some(d(t.1))).collect::<Vec<_>>()),
        cells::date_column("charge_start_date", &ts.iter().map(|t| Some(day(t.2))).collect::<Vec<_>>()),
        cells::date_column("charge_end_date", &ts.iter().map(|t| Some(day(t.3))).collect::<Vec<_>>()),
    ])
    .unwrap()
}

fn customers() -> DataFrame {
    let header: Vec<String> = ["customer_id", "customer_name", "invoice_currency", "template"].iter().map(|s| s.to_string()).collect();
    let rows = vec![
        (2, vec!["C1".into(), "Contoso".into(), "EUR".into(), "smb".into()]),
        (3, vec!["C2".into(), "Tailspin".into(), "JPY".into(), "trial".into()]),
    ];
    stage_reference(RefTable::Customers, "customers.csv", &header, &rows).unwrap().df
}

fn ctx(period: &str) -> RunContext {
    RunContext { period: p(period), run_id: "t".into(), mode: RunMode::Close, policies: Policies::with_invoice_date(p(period).end()) }
}

struct Case {
    ledger: Ledger,
    checks: Vec<LedgerCheck>,
}

fn run(period: &str, ls: &[L], gs: &[(&str, &str, &str, &str, &str)], ts: &[(&str, &str, &str, &str)], open: &DataFrame) -> Case {
    let c = ctx(period);
    let lines = lines_frame(ls, c.period);
    let invoices = invoices_frame(ls);
    let cost_groups = groups(gs);
    let term_parts = terms(ts);
    let gl = gl(GL);
    let customers = customers();
    let ledger = ledger(
        LedgerInputs { invoices: &invoices, lines: &lines, cost_groups: &cost_groups, term_parts: &term_parts, gl_accounts: &gl, customers: &customers, open_schedules: open },
        &c,
    )
    .unwrap();
    assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
    // What was charged = Σ cost of the groups per billing currency (the job reads it from the rated parts).
    let mut charged: BTreeMap<String, Decimal> = BTreeMap::new();
    for g in gs {
        *charged.entry(g.1.to_string()).or_default() += d(g.3);
    }
    let charged = DataFrame::new_infer_height(vec![
        cells::str_column("billing_currency", &charged.keys().map(|k| Some(k.clone())).collect::<Vec<_>>()),
        cells::dec_column("cost", &charged.values().map(|v| Some(*v)).collect::<Vec<_>>()),
    ])
    .unwrap();
    let checks = checks(&ledger, &invoices, &cost_groups, &charged, &c).unwrap();
    Case { ledger, checks }
}

fn no_open() -> DataFrame {
    DataFrame::empty_with_schema(&rs::schema())
}

/// The journal as `entry | account | debit | credit` lines (amounts normalised), in table order.
fn postings(l: &Ledger) -> Vec<String> {
    let e = cells::strs(&l.journal, je::entry_id).unwrap();
    let a = cells::strs(&l.journal, je::account).unwrap();
    let dr = cells::decs(&l.journal, je::debit).unwrap();
    let cr = cells::decs(&l.journal, je::credit).unwrap();
    (0..e.len())
        .map(|i| format!("{} | {} | {} | {}", e[i].clone().unwrap(), a[i].clone().unwrap(), dr[i].unwrap().normalize(), cr[i].unwrap().normalize()))
        .collect()
}

fn all_ok(c: &Case) {
    for ch in &c.checks {
        assert!(ch.ok, "{}: {}", ch.name, ch.detail);
    }
}

#[test]
fn usage_in_a_foreign_billing_currency_posts_revenue_and_converted_cost() {
    // Contoso is invoiced in EUR; Microsoft billed 100.00 USD at 0.92 EUR per USD → 92.00 EUR cost.
    let c = run(
        "2025-06",
        &[L("INV-202506-0001-0001", "C1", "EUR", "usage", Some("azure_usage"), "123.45", "123.4512", "92", None, None)],
        &[("INV-202506-0001-0001", "USD", "0.92", "100.00", "92.0000")],
        &[],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5000 | 92 | 0",
            "COST/INV-202506-0001 | 2100 | 0 | 92",
            "INV/INV-202506-0001 | 1200 | 123.45 | 0",
            "INV/INV-202506-0001 | 4000 | 0 | 123.45",
        ]
    );
    let j = &c.ledger.journal;
    assert_eq!(cells::strs(j, je::source_currency).unwrap()[0].as_deref(), Some("USD"));
    assert_eq!(cells::decs(j, je::source_amount).unwrap()[0], Some(d("100.00")));
    assert_eq!(cells::decs(j, je::fx_rate).unwrap()[0], Some(d("0.92")));
    assert_eq!(cells::strs(j, je::customer_name).unwrap()[0].as_deref(), Some("Contoso"));
    assert_eq!(cells::dates(j, je::entry_date).unwrap()[0], Some(day("2025-06-30")));
    assert_eq!(c.ledger.schedule.height(), 0);
}

#[test]
fn a_monthly_seat_is_earned_in_its_month() {
    // 15 June – 14 July is one month: no deferral, all 50.00 to the seat revenue account 4100.
    let c = run(
        "2025-06",
        &[L("INV-202506-0001-0001", "C1", "EUR", "license", Some("license"), "50.00", "50", "40", None, None)],
        &[("INV-202506-0001-0001", "EUR", "1", "40", "40")],
        &[("INV-202506-0001-0001", "50", "2025-06-15", "2025-07-14")],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5100 | 40 | 0",
            "COST/INV-202506-0001 | 2100 | 0 | 40",
            "INV/INV-202506-0001 | 1200 | 50 | 0",
            "INV/INV-202506-0001 | 4100 | 0 | 50",
        ]
    );
    assert_eq!(c.ledger.schedule.height(), 0);
}

fn annual_seat() -> Case {
    // 365.00 for 15 June 2025 – 14 June 2026 (365 days, 1.00 a day): June earns 16 days = 16.00, 349.00 deferred.
    run(
        "2025-06",
        &[L("INV-202506-0001-0001", "C1", "EUR", "license", Some("license"), "365.00", "365", "300", Some("cc-sales"), None)],
        &[("INV-202506-0001-0001", "EUR", "1", "300", "300")],
        &[("INV-202506-0001-0001", "365", "2025-06-15", "2026-06-14")],
        &no_open(),
    )
}

#[test]
fn an_annual_prepaid_seat_is_deferred_and_scheduled_by_days() {
    let c = annual_seat();
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5100 | 300 | 0",
            "COST/INV-202506-0001 | 2100 | 0 | 300",
            "INV/INV-202506-0001 | 1200 | 365 | 0",
            "INV/INV-202506-0001 | 4100 | 0 | 16",
            "INV/INV-202506-0001 | 2400 | 0 | 349",
        ]
    );
    let s = &c.ledger.schedule;
    assert_eq!(s.height(), 13);
    let months = cells::strs(s, rs::month).unwrap();
    let amounts = cells::decs(s, rs::amount).unwrap();
    assert_eq!((months[0].as_deref(), amounts[0]), (Some("2025-06"), Some(d("16.00"))));
    assert_eq!((months[12].as_deref(), amounts[12]), (Some("2026-06"), Some(d("14.00"))));
    assert_eq!(cells::strs(s, rs::cost_center).unwrap()[0].as_deref(), Some("cc-sales"));
    assert_eq!(cells::strs(s, rs::deferred_revenue_account).unwrap()[0].as_deref(), Some("2400"));
}

#[test]
fn a_three_year_reservation_is_released_over_36_months() {
    // 1,096.00 for 1 June 2025 – 31 May 2028 (365 + 365 + 366 = 1,096 days): 1.00 a day; June 30.00.
    let c = run(
        "2025-06",
        &[L("INV-202506-0001-0001", "C1", "EUR", "one_time", Some("reservation"), "1096.00", "1096", "900", None, None)],
        &[("INV-202506-0001-0001", "USD", "0.9", "1000", "900")],
        &[("INV-202506-0001-0001", "1096", "2025-06-01", "2028-05-31")],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5200 | 900 | 0",
            "COST/INV-202506-0001 | 2100 | 0 | 900",
            "INV/INV-202506-0001 | 1200 | 1096 | 0",
            "INV/INV-202506-0001 | 4200 | 0 | 30",
            "INV/INV-202506-0001 | 2400 | 0 | 1066",
        ]
    );
    let s = &c.ledger.schedule;
    assert_eq!(s.height(), 36);
    let amounts = cells::decs(s, rs::amount).unwrap();
    // February 2028 has 29 days.
    let months = cells::strs(s, rs::month).unwrap();
    let feb = months.iter().position(|m| m.as_deref() == Some("2028-02")).unwrap();
    assert_eq!(amounts[feb], Some(d("29.00")));
    assert_eq!(amounts[35], Some(d("31.00")));
}

#[test]
fn later_closes_release_the_slice_and_a_refund_reverses_the_unreleased_remainder() {
    let june = annual_seat();
    // August: the June schedule releases August's 31.00; the seat is refunded in full with Microsoft's original
    // dates. The refund's own straight line puts June + July + August (16 + 31 + 31 = 78.00) against revenue and
    // the rest, 287.00, against deferred revenue: exactly what is still deferred of the sale after August's
    // release (349 − 31 July − 31 August = 287).
    let c = run(
        "2025-08",
        &[L("INV-202508-0001-0001", "C1", "EUR", "refund", Some("license"), "-365.00", "-365", "-300", Some("cc-sales"), None)],
        &[("INV-202508-0001-0001", "EUR", "1", "-300", "-300")],
        &[("INV-202508-0001-0001", "-365", "2025-06-15", "2026-06-14")],
        &june.ledger.schedule,
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202508-0001 | 5100 | 0 | 300",
            "COST/INV-202508-0001 | 2100 | 300 | 0",
            "INV/INV-202508-0001 | 1200 | 0 | 365",
            "INV/INV-202508-0001 | 4100 | 78 | 0",
            "INV/INV-202508-0001 | 2400 | 287 | 0",
            "REL/2025-08/C1/EUR | 2400 | 31 | 0",
            "REL/2025-08/C1/EUR | 4100 | 0 | 31",
        ]
    );
    // Deferred revenue of the seat after August: 349 − 31 (July) − 31 (August) − 287 = 0.
    assert_eq!(d("349") - d("31") - d("31") - d("287"), Decimal::ZERO);
    // Schedules opened in the period itself are not released again by it.
    let again = run("2025-06", &[], &[], &[], &june.ledger.schedule);
    assert_eq!(again.ledger.journal.height(), 0);
}

#[test]
fn credit_psa_manual_and_spend_cap_lines_go_to_their_own_accounts() {
    let c = run(
        "2025-06",
        &[
            L("INV-202506-0001-0001", "C1", "EUR", "credit", Some("license"), "-50.00", "-50", "-50", None, None),
            L("INV-202506-0001-0002", "C1", "EUR", "service", None, "300.00", "300", "0", Some("cc-eng"), None),
            L("INV-202506-0001-0003", "C1", "EUR", "manual", None, "25.00", "25", "0", None, None),
            L("INV-202506-0001-0004", "C1", "EUR", "spend_cap_credit", None, "-10.00", "-10", "0", None, None),
        ],
        &[("INV-202506-0001-0001", "EUR", "1", "-50", "-50")],
        &[],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5900 | 0 | 50",
            "COST/INV-202506-0001 | 2100 | 50 | 0",
            "INV/INV-202506-0001 | 1200 | 0 | 50",
            "INV/INV-202506-0001 | 4900 | 50 | 0",
            "INV/INV-202506-0001 | 1200 | 300 | 0",
            "INV/INV-202506-0001 | 4300 | 0 | 300",
            "INV/INV-202506-0001 | 1200 | 25 | 0",
            "INV/INV-202506-0001 | 4400 | 0 | 25",
            "INV/INV-202506-0001 | 1200 | 0 | 10",
            "INV/INV-202506-0001 | 4950 | 10 | 0",
        ]
    );
    let cc = cells::strs(&c.ledger.journal, je::cost_center).unwrap();
    assert_eq!(cc[4].as_deref(), Some("cc-eng"));
    assert_eq!(cc[5].as_deref(), Some("cc-eng"));
}

#[test]
fn an_adjustment_posts_in_its_invoice_period_referencing_the_corrected_one() {
    // Late May data billed on the June invoice: +12.34 revenue, cost change 10.005 → 10.00 (half-even).
    let c = run(
        "2025-06",
        &[L("INV-202506-0001-0001", "C1", "EUR", "adjustment", Some("azure_usage"), "12.34", "12.34", "10.005", None, Some("2025-05"))],
        &[],
        &[],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0001 | 5500 | 10 | 0",
            "COST/INV-202506-0001 | 2100 | 0 | 10",
            "INV/INV-202506-0001 | 1200 | 12.34 | 0",
            "INV/INV-202506-0001 | 4500 | 0 | 12.34",
        ]
    );
    let j = &c.ledger.journal;
    assert!(cells::strs(j, je::corrected_period).unwrap().iter().all(|p| p.as_deref() == Some("2025-05")));
    assert_eq!(cells::strs(j, je::period).unwrap()[0].as_deref(), Some("2025-06"));
    assert!(cells::strs(j, je::memo).unwrap()[2].as_deref().unwrap().contains("adjustment for 2025-05"));
}

#[test]
fn a_yen_invoice_rounds_cost_to_whole_yen() {
    // 80.123 USD at 150.5 JPY per USD = 12,058.5115 JPY → 12,059 (no minor unit).
    let c = run(
        "2025-06",
        &[L("INV-202506-0002-0001", "C2", "JPY", "usage", Some("azure_usage"), "14500", "14499.6", "12058.5115", None, None)],
        &[("INV-202506-0002-0001", "USD", "150.5", "80.123", "12058.5115")],
        &[],
        &no_open(),
    );
    all_ok(&c);
    assert_eq!(
        postings(&c.ledger),
        [
            "COST/INV-202506-0002 | 5000 | 12059 | 0",
            "COST/INV-202506-0002 | 2100 | 0 | 12059",
            "INV/INV-202506-0002 | 1200 | 14500 | 0",
            "INV/INV-202506-0002 | 4000 | 0 | 14500",
        ]
    );
    let tb = &c.ledger.trial_balance;
    assert_eq!(tb.height(), 4);
    assert_eq!(cells::strs(tb, "currency").unwrap()[0].as_deref(), Some("JPY"));
}

#[test]
fn a_missing_mapping_names_the_row_to_add() {
    let c = ctx("2025-06");
    let ls = [L("INV-202506-0001-0001", "C1", "EUR", "usage", Some("azure_usage"), "1.00", "1", "0", None, None)];
    let lines = lines_frame(&ls, c.period);
    let invoices = invoices_frame(&ls);
    let only_seats = gl("line_type,product_family,revenue_account,cost_account,receivable_account\nlicense,license,4100,5100,1200");
    let l = ledger(
        LedgerInputs {
            invoices: &invoices,
            lines: &lines,
            cost_groups: &groups(&[]),
            term_parts: &terms(&[]),
            gl_accounts: &only_seats,
            customers: &customers(),
            open_schedules: &no_open(),
        },
        &c,
    )
    .unwrap();
    assert_eq!(
        l.errors,
        ["gl_accounts.csv has no `revenue_account`, `receivable_account` for line_type `usage` × product_family `azure_usage`; add a row `usage,azure_usage` with those columns, or fill them on the default row `*,*`"]
    );
}

#[test]
fn gl_accounts_staging_names_file_line_and_column() {
    let header: Vec<String> = "line_type,product_family,revenue_account,cost_account".split(',').map(str::to_string).collect();
    let rows = vec![
        (2, vec!["usage".into(), "*".into(), "4000".into(), "5000".into()]),
        (3, vec!["usgae".into(), "*".into(), "4000".into(), "5000".into()]),
        (4, vec!["Usage".into(), "*".into(), "4001".into(), "5000".into()]),
    ];
    let errs = stage_reference(RefTable::GlAccounts, "gl_accounts.csv", &header, &rows).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown[0].starts_with("gl_accounts.csv:3: column `line_type`: unknown line_type `usgae`"), "{shown:?}");
    assert_eq!(shown[1], "gl_accounts.csv:4: column `line_type`: a second row for line_type `usage` × product_family `*` (first on line 2); keep one row per pair");
    let missing = stage_reference(RefTable::GlAccounts, "gl_accounts.csv", &header[..3], &[]).unwrap_err();
    assert_eq!(missing[0].column, "cost_account");
}

#[test]
fn a_broken_journal_fails_the_balance_check() {
    let mut c = annual_seat();
    // Move one cent from a credit: the entry no longer balances, and revenue no longer equals the subtotal.
    let credit = cells::decs(&c.ledger.journal, je::credit).unwrap();
    let bumped: Vec<Option<Decimal>> = credit.iter().enumerate().map(|(i, v)| if i == 4 { v.map(|x| x - d("0.01")) } else { *v }).collect();
    c.ledger.journal.with_column(cells::dec_column(je::credit, &bumped)).unwrap();
    let ls = [L("INV-202506-0001-0001", "C1", "EUR", "license", Some("license"), "365.00", "365", "300", None, None)];
    let charged = DataFrame::new_infer_height(vec![cells::str_column("billing_currency", &[Some("EUR".into())]), cells::dec_column("cost", &[Some(d("300"))])]).unwrap();
    let checks = checks(&c.ledger, &invoices_frame(&ls), &groups(&[("INV-202506-0001-0001", "EUR", "1", "300", "300")]), &charged, &ctx("2025-06")).unwrap();
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, ["ledger: every entry balances per currency", "ledger: Σ revenue + Σ deferred = Σ invoice subtotals"]);
    assert!(checks[0].detail.contains("INV/INV-202506-0001"), "{}", checks[0].detail);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any mix of lines, terms and prices: every entry balances, revenue + deferred = subtotals, and every
    /// schedule sums exactly to its line, in EUR and JPY.
    #[test]
    fn entries_balance_and_schedules_sum_exactly(
        items in proptest::collection::vec((1i64..2_000_000, 0i64..40, 0u32..40, prop::bool::ANY, 0usize..4), 1..8),
        yen in prop::bool::ANY,
    ) {
        let ccy = if yen { "JPY" } else { "EUR" };
        let customer = if yen { "C2" } else { "C1" };
        let types = ["license", "one_time", "refund", "usage"];
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        for (i, (cents, start_off, months, long, t)) in items.iter().enumerate() {
            let id = format!("INV-202506-0001-{:04}", i + 1);
            let lt = types[*t];
            let sign = if lt == "refund" { -1 } else { 1 };
            let price = Decimal::new(sign * cents, 3);
            let dp = crate::currency::minor_unit(ccy).unwrap();
            let amount = crate::currency::round(price, dp, crate::RoundingMode::HalfEven);
            let start = day("2025-04-01") + chrono::Days::new(*start_off as u64 * 3);
            let end = if *long { start.checked_add_months(chrono::Months::new(months + 1)).unwrap() } else { start + chrono::Days::new(20) };
            ids.push(id.clone());
            texts.push((id, lt, amount.to_string(), price.to_string(), start.to_string(), end.to_string()));
        }
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let ls: Vec<L> = texts.iter().map(|(id, lt, a, u, _, _)| L(leak(id.clone()), customer, ccy, leak(lt.to_string()), Some("license"), leak(a.clone()), leak(u.clone()), "0", None, None)).collect();
        let ts: Vec<(&str, &str, &str, &str)> = texts.iter().map(|(id, _, _, u, s, e)| (leak(id.clone()), leak(u.clone()), leak(s.clone()), leak(e.clone()))).collect();
        let c = run("2025-06", &ls, &[], &ts, &no_open());
        for ch in &c.checks {
            prop_assert!(ch.ok, "{}: {}", ch.name, ch.detail);
        }
        // Independently of the checks: Σ debit = Σ credit overall, and each schedule's months sum to its line.
        let dr: Decimal = cells::decs(&c.ledger.journal, je::debit).unwrap().into_iter().flatten().sum();
        let cr: Decimal = cells::decs(&c.ledger.journal, je::credit).unwrap().into_iter().flatten().sum();
        prop_assert_eq!(dr, cr);
        let s = &c.ledger.schedule;
        let sid = cells::strs(s, rs::schedule_id).unwrap();
        let amt = cells::decs(s, rs::amount).unwrap();
        for (id, (_, _, a, _, _, _)) in ids.iter().zip(&texts) {
            let rows: Vec<Decimal> = (0..sid.len()).filter(|&i| sid[i].as_deref() == Some(id.as_str())).map(|i| amt[i].unwrap()).collect();
            if !rows.is_empty() {
                prop_assert_eq!(rows.iter().copied().sum::<Decimal>(), d(a));
                let dp = crate::currency::minor_unit(ccy).unwrap();
                for r in &rows {
                    prop_assert!(r.scale() <= dp || r.normalize().scale() <= dp, "{} has more than {} places", r, dp);
                }
            }
        }
    }
}
