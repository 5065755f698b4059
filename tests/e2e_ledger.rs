//! End to end for the ledger (issue #15) on `sample_data/`: a close publishes balanced journal entries, revenue
//! schedules, the trial balance (the yen one checked by hand) and the three ERP exports, whose headers are
//! checked against the vendors' documented layouts (written out here, not taken from the code); the next
//! close releases June's schedules from the committed June tables, and June's entries never change; a missing
//! account mapping is exit 2 naming what to add, with nothing published.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rust_decimal::Decimal;
use support::*;

fn workspace() -> (tempfile::TempDir, PathBuf) {
    sample_workspace()
}

fn run(ws: &Path, period: &str, mode: &str) -> std::process::Output {
    let cfg = ws.join("cspbill.toml");
    let wh = ws.join("warehouse");
    cspbill(&["run", "--config", cfg.to_str().unwrap(), "--period", period, "--mode", mode, "--warehouse", wh.to_str().unwrap()])
}

fn run_ok(ws: &Path, period: &str, mode: &str) {
    let out = run(ws, period, mode);
    assert!(out.status.success(), "run {period} failed {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
}

fn part(ws: &Path, zone: &str, table: &str, period: &str) -> PathBuf {
    ws.join("warehouse").join(zone).join(table).join(format!("period={period}")).join("part-0.parquet")
}

fn read(ws: &Path, zone: &str, table: &str, period: &str) -> DataFrame {
    ParquetReader::new(std::fs::File::open(part(ws, zone, table, period)).unwrap()).finish().unwrap()
}

fn strs(df: &DataFrame, c: &str) -> Vec<String> {
    df.column(c).unwrap().str().unwrap().iter().map(|v| v.unwrap_or("").to_string()).collect()
}

fn decs(df: &DataFrame, c: &str) -> Vec<Decimal> {
    let col = df.column(c).unwrap();
    (0..col.len())
        .map(|i| match col.get(i).unwrap() {
            AnyValue::Decimal(m, _, s) => Decimal::from_i128_with_scale(m, s as u32).normalize(),
            AnyValue::Null => Decimal::ZERO,
            other => panic!("{c}: not a decimal: {other:?}"),
        })
        .collect()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A CSV export read back with Polars as text: header and rows.
fn csv(path: &Path) -> (Vec<String>, DataFrame) {
    let df = read_csv_as_text(path);
    (df.get_column_names().iter().map(|s| s.to_string()).collect(), df)
}

fn money(s: &str) -> Decimal {
    if s.is_empty() { Decimal::ZERO } else { d(s) }
}

#[test]
fn close_publishes_balanced_journals_schedules_trial_balance_and_erp_exports() {
    let (_tmp, ws) = workspace();
    run_ok(&ws, "2025-06", "close");
    let j = read(&ws, "marts", "fct_journal_entries", "2025-06");
    assert!(j.height() > 100, "{} journal lines", j.height());

    // Every entry balances per currency, recomputed here from the published rows.
    let (entry, ccy, dr, cr) = (strs(&j, "entry_id"), strs(&j, "currency"), decs(&j, "debit"), decs(&j, "credit"));
    let mut per: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for i in 0..entry.len() {
        assert!(dr[i].is_zero() || cr[i].is_zero(), "line {i} has both sides");
        *per.entry((entry[i].clone(), ccy[i].clone())).or_default() += dr[i] - cr[i];
    }
    assert!(per.values().all(|v| v.is_zero()), "unbalanced entries: {:?}", per.iter().filter(|(_, v)| !v.is_zero()).collect::<Vec<_>>());

    // The yen trial balance, by hand from the one JPY invoice (FCP-202506-0005, Woodgrove Bank):
    //   lines 0001 usage 67,271, 0002 licence 49,743, 0003 licence 1,938 → receivable 1200 debit 118,952;
    //   revenue 4000 (Azure, default row) 67,271; 4100 (licences) 49,743 + 1,938 = 51,681;
    //   cost (Σ cost_ic of the lines, rounded to whole yen per line and rate): usage 56,235.3357 → 56,235 on 5000,
    //   licences 44,413.6 → 44,414 and 1,730.4 → 1,730 on 5100 = 46,144; payable 2100 = 56,235 + 46,144 = 102,379.
    let tb = read(&ws, "marts", "rpt_trial_balance", "2025-06");
    let (acc, tccy, tdr, tcr) = (strs(&tb, "account"), strs(&tb, "currency"), decs(&tb, "debit"), decs(&tb, "credit"));
    let yen: Vec<(String, Decimal, Decimal)> =
        (0..acc.len()).filter(|&i| tccy[i] == "JPY").map(|i| (acc[i].clone(), tdr[i], tcr[i])).collect();
    let hand = [
        ("1200", "118952", "0"),
        ("2100", "0", "102379"),
        ("4000", "0", "67271"),
        ("4100", "0", "51681"),
        ("5000", "56235", "0"),
        ("5100", "46144", "0"),
    ];
    assert_eq!(yen, hand.iter().map(|(a, x, y)| (a.to_string(), d(x), d(y))).collect::<Vec<_>>());
    // Every currency's trial balance balances.
    let mut bal: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in 0..acc.len() {
        *bal.entry(tccy[i].clone()).or_default() += tdr[i] - tcr[i];
    }
    assert_eq!(bal.len(), 4, "{bal:?}");
    assert!(bal.values().all(|v| v.is_zero()), "{bal:?}");

    // Σ revenue + Σ deferred on invoices = Σ invoice subtotals, per currency (DuckDB when available).
    if let Some(py) = python() {
        let root = ws.join("warehouse");
        let q = format!(
            "with j as (select currency, sum(credit - debit) booked from read_parquet('{r}/marts/fct_journal_entries/*/*.parquet') \
             where source = 'invoice' and account_role in ('revenue', 'deferred_revenue') group by 1), \
             i as (select currency, sum(subtotal) billed from read_parquet('{r}/marts/fct_invoices/*/*.parquet') group by 1) \
             select count(*) filter (where booked is distinct from billed) bad, count(*) n from j full join i using (currency)",
            r = root.display()
        );
        assert_eq!(duckdb_csv(&py, &q), "bad,n\n0,4\n");
        // Σ cost booked in billing currency = Σ cost of the priced rated parts, per billing currency.
        let q = format!(
            "with j as (select source_currency c, sum(source_amount) booked from read_parquet('{r}/marts/fct_journal_entries/*/*.parquet') \
             where account_role = 'cost_of_sales' and source = 'cost' group by 1), \
             r as (select billing_currency c, sum(cost) charged from read_parquet('{r}/int/int_charges_rated/*/*.parquet') where status = 'priced' group by 1) \
             select count(*) filter (where booked is distinct from charged) bad, count(*) n from j full join r using (c)",
            r = root.display()
        );
        assert_eq!(duckdb_csv(&py, &q), "bad,n\n0,2\n");
    }

    // Schedules: the annual seat renewed on 20 June and the 1-year reservation bought on 9 June.
    let s = read(&ws, "marts", "fct_revenue_schedule", "2025-06");
    let (sid, month, amt, line) = (strs(&s, "schedule_id"), strs(&s, "month"), decs(&s, "amount"), decs(&s, "line_amount"));
    let ids: std::collections::BTreeSet<&String> = sid.iter().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in &ids {
        let rows: Vec<usize> = (0..sid.len()).filter(|&i| &&sid[i] == id).collect();
        assert_eq!(rows.len(), 13, "{id}: 12 months from mid-June, ending mid-June 2026");
        assert_eq!(rows.iter().map(|&i| amt[i]).sum::<Decimal>(), line[rows[0]], "{id} sums to its line");
    }
    // The reservation: 980.83 EUR over 9 June 2025 – 8 June 2026 (365 days); June earns 22 days:
    // 980.83 × 22 / 365 = 59.1185… → 59.12; July 31 days: 83.3035… → 83.30.
    let res: Vec<usize> = (0..sid.len()).filter(|&i| line[i] == d("980.83")).collect();
    assert_eq!((month[res[0]].as_str(), amt[res[0]]), ("2025-06", d("59.12")));
    assert_eq!((month[res[1]].as_str(), amt[res[1]]), ("2025-07", d("83.3")));

    // ERP exports, read back, against the vendors' documented headers.
    let dir = ws.join("warehouse/marts/exports/period=2025-06/ledger");
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert!(names.contains(&"netsuite_journal_entries.csv".to_string()) && names.contains(&"trial_balance.csv".to_string()), "{names:?}");
    // Xero Central, "Import manual journals": Narration, Date, Description, AccountCode, TaxRate, Amount, then the
    // tracking pairs; up to 300 lines per file; lines with one Narration and Date form one journal, which must balance.
    let xero: Vec<&String> = names.iter().filter(|n| n.starts_with("xero_manual_journals_")).collect();
    assert!(xero.len() >= 4, "{names:?}");
    let mut xero_total: BTreeMap<String, Decimal> = BTreeMap::new();
    for n in &xero {
        let (h, df) = csv(&dir.join(n));
        assert_eq!(h, ["Narration", "Date", "Description", "AccountCode", "TaxRate", "Amount", "TrackingName1", "TrackingOption1"]);
        assert!(df.height() <= 300, "{n}: {} lines", df.height());
        let (nar, date, amount) = (strs(&df, "Narration"), strs(&df, "Date"), strs(&df, "Amount"));
        let mut per: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        for i in 0..nar.len() {
            assert_eq!(date[i], "30/06/2025", "Xero dates are dd/mm/yyyy");
            *per.entry((nar[i].clone(), date[i].clone())).or_default() += money(&amount[i]);
            *xero_total.entry(n[21..24].to_string()).or_default() += money(&amount[i]).abs();
        }
        assert!(per.values().all(|v| v.is_zero()), "{n}: unbalanced journals");
    }
    // QuickBooks Online help, "Import journal entries": Journal No., Journal Date, Account Name, Debits, Credits,
    // Description, Name (Class with class tracking); MM/DD/YYYY; each Journal No. balances.
    for n in names.iter().filter(|n| n.starts_with("quickbooks_journal_entries_")) {
        let (h, df) = csv(&dir.join(n));
        assert_eq!(h, ["Journal No.", "Journal Date", "Account Name", "Debits", "Credits", "Description", "Name", "Class"]);
        let (no, date, qdr, qcr) = (strs(&df, "Journal No."), strs(&df, "Journal Date"), strs(&df, "Debits"), strs(&df, "Credits"));
        let mut per: BTreeMap<String, Decimal> = BTreeMap::new();
        for i in 0..no.len() {
            assert_eq!(date[i], "06/30/2025");
            assert!(no[i].len() <= 21, "QBO keeps 21 characters of a journal number");
            *per.entry(no[i].clone()).or_default() += money(&qdr[i]) - money(&qcr[i]);
        }
        assert!(per.values().all(|v| v.is_zero()), "{n}: unbalanced journal");
        // Debits equal the journal's debits in that currency; Xero's lines carry the same amounts, signed.
        let c = &n[27..30];
        let want: Decimal = (0..ccy.len()).filter(|&i| ccy[i] == c).map(|i| dr[i]).sum();
        let got: Decimal = qdr.iter().map(|s| money(s)).sum();
        assert_eq!(got, want, "{n}");
        assert_eq!(xero_total[c], want * Decimal::TWO, "xero {c}");
    }
    // NetSuite CSV Import Assistant, journal entry header and line fields: External ID, Date, Currency, Memo;
    // Account, Debit, Credit, (line) Memo, Name, Department. Lines of one External ID balance.
    let (h, df) = csv(&dir.join("netsuite_journal_entries.csv"));
    assert_eq!(h, ["External ID", "Date", "Currency", "Memo", "Account", "Debit", "Credit", "Line Memo", "Name", "Department"]);
    assert_eq!(df.height(), j.height());
    let (ext, ndr, ncr) = (strs(&df, "External ID"), strs(&df, "Debit"), strs(&df, "Credit"));
    let mut per: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in 0..ext.len() {
        *per.entry(ext[i].clone()).or_default() += money(&ndr[i]) - money(&ncr[i]);
    }
    assert!(per.values().all(|v| v.is_zero()));
    assert_eq!(ndr.iter().map(|s| money(s)).sum::<Decimal>(), dr.iter().copied().sum::<Decimal>());
    let (h, df) = csv(&dir.join("trial_balance.csv"));
    assert_eq!(h, ["period", "account", "currency", "debit", "credit", "balance", "lines"]);
    assert_eq!(df.height(), tb.height());
}

#[test]
fn the_next_close_releases_june_schedules_and_june_never_changes() {
    let (_tmp, ws) = workspace();
    run_ok(&ws, "2025-06", "close");
    let june = std::fs::read(part(&ws, "marts", "fct_journal_entries", "2025-06")).unwrap();
    std::fs::create_dir_all(ws.join("inputs/2025-07")).unwrap();
    run_ok(&ws, "2025-07", "close");
    assert_eq!(std::fs::read(part(&ws, "marts", "fct_journal_entries", "2025-06")).unwrap(), june, "a closed period's entries never change");
    let j = read(&ws, "marts", "fct_journal_entries", "2025-07");
    let rel: Vec<usize> = (0..j.height()).filter(|&i| strs(&j, "source")[i] == "release").collect();
    // July's slices of June's two schedules, by hand: the reservation 980.83 × 31/365 = 83.30; the annual seat
    // renewed 20 June 2025 – 19 June 2026 for 596.74: 596.74 × 31/365 = 50.68. Each: deferred revenue (2400)
    // debit against the revenue account of its line (4200 reservations, 4100 seats).
    let (acc, dr, cr, line) = (strs(&j, "account"), decs(&j, "debit"), decs(&j, "credit"), strs(&j, "invoice_line"));
    let mut got: Vec<(String, String, Decimal, Decimal)> = rel.iter().map(|&i| (line[i].clone(), acc[i].clone(), dr[i], cr[i])).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("FCP-202506-0007-0034".to_string(), "2400".to_string(), d("50.68"), d("0")),
            ("FCP-202506-0007-0034".to_string(), "4100".to_string(), d("0"), d("50.68")),
            ("FCP-202506-0007-0035".to_string(), "2400".to_string(), d("83.3"), d("0")),
            ("FCP-202506-0007-0035".to_string(), "4200".to_string(), d("0"), d("83.3")),
        ]
    );
}

#[test]
fn a_missing_account_mapping_is_exit_2_naming_the_row_and_publishes_nothing() {
    let (_tmp, ws) = workspace();
    let gl = ws.join("reference/gl_accounts.csv");
    // Keep only the licence row: no default row, so nothing names the receivable or Azure's revenue account.
    let text = std::fs::read_to_string(&gl).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| l.starts_with("line_type") || l.starts_with("license,")).collect();
    std::fs::write(&gl, kept.join("\n") + "\n").unwrap();
    let out = run(&ws, "2025-06", "close");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines().any(|l| l.contains("gl_accounts.csv has no `revenue_account`, `cost_account`, `receivable_account`, `payable_account` for line_type `usage` × product_family `azure_usage`; add a row `usage,azure_usage` with those columns")),
        "{err}"
    );
    assert!(!ws.join("warehouse/marts").exists(), "nothing is published");

    // A bad cell is exit 2 with file, line and column, like every reference file.
    std::fs::write(&gl, "line_type,product_family,revenue_account,cost_account\n*,*,4000,5000\nusgae,*,4000,5000\n").unwrap();
    let out = run(&ws, "2025-06", "close");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("gl_accounts.csv:3: column `line_type`: unknown line_type `usgae`"), "{err}");
}
