//! Each monitor on tiny frames at, just under and just over its threshold, and with a per-customer override.
//! Every expected value is worked out by hand in the comment beside it.

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::Ty;

use super::aggregates as agg;
use super::{Window, Thresholds, ThresholdSet, Severity, Anomaly};
use super::*;
use crate::reference::{RefTable, empty, stage_reference};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn split(csv: &str) -> (Vec<String>, Vec<(u64, Vec<String>)>) {
    let mut it = csv.trim().lines().map(str::trim);
    let header = it.next().unwrap().split(',').map(str::to_string).collect();
    let rows = it.enumerate().map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect())).collect();
    (header, rows)
}

/// A staged reference table from CSV text, through the real staging.
fn stage(table: RefTable, csv: &str) -> DataFrame {
    let (h, rows) = split(csv);
    stage_reference(table, "test.csv", &h, &rows).unwrap().df
}

/// A frame of the given layout from CSV text naming some of its columns (the others null).
fn frame(layout: &[(&str, Ty)], csv: &str) -> DataFrame {
    let (h, rows) = split(csv);
    let mut columns = Vec::new();
    for (name, ty) in layout {
        let idx = h.iter().position(|c| c == name);
        let cell = |row: &Vec<String>| idx.map(|i| row[i].clone()).filter(|s| !s.is_empty());
        let c = match ty {
            Ty::Str => cells::str_column(name, &rows.iter().map(|(_, r)| cell(r)).collect::<Vec<_>>()),
            Ty::Dec => cells::dec_column(name, &rows.iter().map(|(_, r)| cell(r).map(|s| d(&s))).collect::<Vec<_>>()),
            Ty::Date => cells::date_column(name, &rows.iter().map(|(_, r)| cell(r).map(|s| date(&s))).collect::<Vec<_>>()),
            Ty::Int => Column::new((*name).into(), rows.iter().map(|(_, r)| cell(r).map(|s| s.parse::<i64>().unwrap())).collect::<Vec<_>>()),
            Ty::Bool => Column::new((*name).into(), rows.iter().map(|(_, r)| cell(r).map(|s| s == "true")).collect::<Vec<_>>()),
            Ty::Ts => unreachable!(),
        };
        columns.push(c);
    }
    let df = if rows.is_empty() { DataFrame::empty_with_schema(&schemas::build_schema(layout)) } else { DataFrame::new_infer_height(columns).unwrap() };
    assert_eq!(df.schema().as_ref(), &schemas::build_schema(layout));
    df
}

fn june() -> Period {
    "2025-06".parse().unwrap()
}

fn window(as_of: &str) -> Window {
    Window { period: june(), as_of: date(as_of), has_daily_usage: true }
}

fn customers_of(csv: &str) -> Customers {
    customers(&stage(RefTable::Customers, csv)).unwrap()
}

/// Thresholds: the defaults, and customer `o1` with `f` applied.
fn with_override(f: impl FnOnce(&mut Thresholds)) -> ThresholdSet {
    let mut o = Thresholds::default();
    f(&mut o);
    ThresholdSet { defaults: Thresholds::default(), overrides: [("o1".to_string(), o)].into() }
}

/// Rows as `monitor | severity | customer | subject | observed | expected | threshold | first | last`.
fn show(rows: &[Anomaly]) -> Vec<String> {
    let dec = |v: Option<Decimal>| v.map(|x| x.normalize().to_string()).unwrap_or("∅".into());
    let dt = |v: Option<NaiveDate>| v.map(|x| x.to_string()).unwrap_or("∅".into());
    let mut v: Vec<String> = rows
        .iter()
        .map(|a| {
            format!(
                "{} | {} | {} | {} | {} | {} | {} | {} | {}",
                a.monitor,
                a.severity.as_str(),
                a.customer_id,
                a.subject,
                dec(a.observed),
                dec(a.expected),
                dec(a.threshold),
                dt(a.first_seen),
                dt(a.last_seen)
            )
        })
        .collect();
    v.sort();
    v
}

const HEADER: &str = "customer_id,customer_name,invoice_currency,template,monthly_budget,spend_cap,target_margin,consent_status,consent_expires_on";

#[test]
fn budget_overrun_fires_just_over_each_level_and_honours_an_override() {
    // Budget 3000 in a 30-day month: the pro-rata forecast to 10 June is 3000 × 10 / 30 = 1000.00.
    let cs = customers_of(&format!(
        "{HEADER}
at,At 110,EUR,smb,3000,,,,
under,Under,EUR,smb,3000,,,,
over,Over,EUR,smb,3000,,,,
crit_at,Crit At,EUR,smb,3000,,,,
crit_over,Crit Over,EUR,smb,3000,,,,
o1,Override,EUR,smb,3000,,,,
o2,Override Over,EUR,smb,3000,,,,
median,No Budget,USD,smb,,,,,"
    ));
    let t = {
        let mut t = with_override(|o| o.budget_warning = d("1.15"));
        t.overrides.insert("o2".into(), t.overrides["o1"].clone());
        t
    };
    let spend = frame(
        agg::DAILY_SPEND,
        "customer_id,invoice_currency,charge_date,usage_spend
at,EUR,2025-06-10,1100
under,EUR,2025-06-10,1099.99
over,EUR,2025-06-10,1100.01
crit_at,EUR,2025-06-10,1200
crit_over,EUR,2025-06-10,1200.01
o1,EUR,2025-06-10,1150
o2,EUR,2025-06-10,1150.01
median,USD,2025-06-07,10
median,USD,2025-06-08,10
median,USD,2025-06-09,10
median,USD,2025-06-10,40",
    );
    let rows = spend::budget_overrun(&spend, &cs, &t, &window("2025-06-10")).unwrap();
    // 1100 / 1000 = 1.10 is at the warning level: not above it. Without a budget, the median daily spend of
    // 1–10 June (six 0s, three 10s, one 40: median 0) projects 0, so no forecast: nothing fires there.
    assert_eq!(
        show(&rows),
        [
            "budget_overrun | critical | crit_over | monthly_budget | 1200.01 | 1000 | 1.2 | 2025-06-10 | 2025-06-10",
            "budget_overrun | warning | crit_at | monthly_budget | 1200 | 1000 | 1.1 | 2025-06-10 | 2025-06-10",
            "budget_overrun | warning | o2 | monthly_budget | 1150.01 | 1000 | 1.15 | 2025-06-10 | 2025-06-10",
            "budget_overrun | warning | over | monthly_budget | 1100.01 | 1000 | 1.1 | 2025-06-10 | 2025-06-10",
        ]
    );
    let over = rows.iter().find(|a| a.customer_id == "over").unwrap();
    assert_eq!(
        over.message,
        "Over: June 2025 Azure spend to 10 June 2025 is 110 % of its pro-rata budget (EUR 1,100.01 vs 1,000.00; warning above 110 %, over it since 10 June 2025)"
    );
}

#[test]
fn budget_without_a_budget_uses_the_median_daily_spend_and_dates_the_streak() {
    let cs = customers_of(&format!("{HEADER}\nm,Median Co,USD,smb,,,,,"));
    // Daily 10, 10, 10, 40 on 1–4 June. Day 1–3: cum 10k vs median 10 × k: ratio 1. Day 4: median of
    // (10, 10, 10, 40) = 10, forecast 40, cum 70: ratio 1.75 > 1.20 → critical, first seen 4 June.
    let spend = frame(
        agg::DAILY_SPEND,
        "customer_id,invoice_currency,charge_date,usage_spend
m,USD,2025-06-01,10
m,USD,2025-06-02,10
m,USD,2025-06-03,10
m,USD,2025-06-04,40",
    );
    let rows = spend::budget_overrun(&spend, &cs, &ThresholdSet::default(), &window("2025-06-04")).unwrap();
    assert_eq!(show(&rows), ["budget_overrun | critical | m | monthly_budget | 70 | 40 | 1.2 | 2025-06-04 | 2025-06-04"]);
    assert_eq!(spend::median(&[d("1"), d("4"), d("2"), d("3")]), d("2.5"));
}

#[test]
fn spend_cap_fires_only_above_the_cap_of_a_trial() {
    let cs = customers_of(&format!(
        "{HEADER}
t_at,Trial At,USD,trial,200,200,,,
t_over,Trial Over,USD,trial,200,200,,,
smb,Not A Trial,USD,smb,,100,,,"
    ));
    let spend = frame(
        agg::DAILY_SPEND,
        "customer_id,invoice_currency,charge_date,spend
t_at,USD,2025-06-01,150
t_at,USD,2025-06-05,50
t_over,USD,2025-06-01,150
t_over,USD,2025-06-05,50.01
smb,USD,2025-06-01,500",
    );
    let rows = spend::spend_cap(&spend, &cs, &window("2025-06-10")).unwrap();
    // 150 + 50 = 200 is the cap: not past it; 150 + 50.01 = 200.01 passes it on 5 June.
    assert_eq!(show(&rows), ["spend_cap | critical | t_over | spend_cap | 200.01 | 200 | 200 | 2025-06-05 | 2025-06-10"]);
    assert!(rows[0].message.contains("USD 200.01, USD 0.01 (0 %) past its spend cap of USD 200.00, passed on 5 June 2025"), "{}", rows[0].message);
}

#[test]
fn margin_variance_fires_beyond_the_points_either_way() {
    let cs = customers_of(&format!(
        "{HEADER}
at,At,EUR,smb,,,0.20,,
up,Up,EUR,smb,,,0.20,,
down,Down,EUR,smb,,,0.20,,
crit_at,Crit At,EUR,smb,,,0.20,,
crit_over,Crit Over,EUR,smb,,,0.20,,
o1,Override,EUR,smb,,,0.20,,
none,No Target,EUR,smb,,,,,"
    ));
    // Price 100 each: margin 22 → 0.22 (2 points: at the level); 22.01 → 2.01 points above; 17.99 → 2.01
    // below; 25 → 5 points (at critical: warning); 25.01 → critical. The override allows 5 points: 23 is fine.
    let spend = frame(
        agg::DAILY_SPEND,
        "customer_id,invoice_currency,charge_date,spend,margin
at,EUR,2025-06-02,100,22
up,EUR,2025-06-02,100,22.01
down,EUR,2025-06-02,100,17.99
crit_at,EUR,2025-06-02,100,25
crit_over,EUR,2025-06-02,100,25.01
o1,EUR,2025-06-02,100,23
none,EUR,2025-06-02,100,90",
    );
    let t = with_override(|o| o.margin_warning_points = d("5"));
    let rows = spend::margin_variance(&spend, &cs, &t, &window("2025-06-10")).unwrap();
    assert_eq!(
        show(&rows),
        [
            "margin_variance | critical | crit_over | target_margin | 0.2501 | 0.2 | 0.05 | 2025-06-02 | 2025-06-10",
            "margin_variance | warning | crit_at | target_margin | 0.25 | 0.2 | 0.02 | 2025-06-02 | 2025-06-10",
            "margin_variance | warning | down | target_margin | 0.1799 | 0.2 | 0.02 | 2025-06-02 | 2025-06-10",
            "margin_variance | warning | up | target_margin | 0.2201 | 0.2 | 0.02 | 2025-06-02 | 2025-06-10",
        ]
    );
}

#[test]
fn unusual_deployment_compares_a_day_with_the_trailing_norm() {
    let cs = customers_of(&format!("{HEADER}\nc,Contoso,EUR,enterprise,,,,,\no1,Override,EUR,enterprise,,,,,"));
    // Subscription s: 10 resources on 1 June (the baseline), 2 on 4 June, 5 on 9 June, 6 on 12 June.
    // 4 June: trailing 2–3 June mean 0 → norm 1, limit 5: 2 is fine. 9 June: trailing 2–8 June 2/7 → norm 1,
    // limit 5: 5 is at it. 12 June: trailing 5–11 June 5/7 → norm 1, limit 5: 6 fires.
    // Customer o1 (factor 7) has the same history: 6 ≤ 7, nothing.
    let mut csv = String::from("customer_id,subscription_id,resource_key,first_seen,resource_group\n");
    for cust in ["c", "o1"] {
        let mut n = 0;
        for (day, count) in [("01", 10), ("04", 2), ("09", 5), ("12", 6)] {
            for _ in 0..count {
                n += 1;
                csv.push_str(&format!("{cust},s,r{n},2025-06-{day},rg-{day}\n"));
            }
        }
    }
    let res = frame(agg::RESOURCES, &csv);
    let t = with_override(|o| o.deployment_factor = d("7"));
    let rows = usage::unusual_deployment(&res, &frame(agg::SUBSCRIPTION_DAYS, "customer_id"), &cs, &t, &window("2025-06-15")).unwrap();
    assert_eq!(show(&rows), ["unusual_deployment | warning | c | s | 6 | 1 | 5 | 2025-06-12 | 2025-06-12"]);
    assert!(rows[0].message.starts_with("Contoso: 6 new resources in subscription s on 12 June 2025 (resource group rg-12), above 5× the trailing norm of 1.00 a day (mean 0.71 over the 7 days before"), "{}", rows[0].message);
}

#[test]
fn unusual_deployment_norm_above_one() {
    let cs = customers_of(&format!("{HEADER}\nc,Contoso,EUR,enterprise,,,,,"));
    // 1 June baseline; 2 new a day on 2–8 June; 9 June: trailing mean 2, limit 10: 10 is at it (nothing);
    // 10 June: trailing 3–9 June (2×6 + 10) / 7 = 22/7 ≈ 3.142857, limit 15.71: 16 fires.
    let mut csv = String::from("customer_id,subscription_id,resource_key,first_seen\nc,s,base,2025-06-01\n");
    let mut n = 0;
    for (day, count) in [(2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2), (9, 10), (10, 16)] {
        for _ in 0..count {
            n += 1;
            csv.push_str(&format!("c,s,r{n},2025-06-{day:02}\n"));
        }
    }
    let rows = usage::unusual_deployment(&frame(agg::RESOURCES, &csv), &frame(agg::SUBSCRIPTION_DAYS, "customer_id"), &cs, &ThresholdSet::default(), &window("2025-06-10")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].first_seen, Some(date("2025-06-10")));
    assert_eq!(rows[0].expected, Some(Decimal::from(22) / Decimal::from(7)));
}

#[test]
fn usage_gap_reports_each_run_of_missing_days() {
    let cs = customers_of(&format!("{HEADER}\nf,Fabrikam,EUR,smb,,,,,"));
    let mut csv = String::from("customer_id,subscription_id,usage_date,subscription_name\n");
    for day in (1..=9).chain(13..=15) {
        csv.push_str(&format!("f,gap,2025-06-{day:02},Azure subscription 1\n"));
    }
    for day in 1..=15 {
        csv.push_str(&format!("f,full,2025-06-{day:02},Full\n"));
    }
    for day in 5..=15 {
        csv.push_str(&format!("f,late_start,2025-06-{day:02},New\n"));
    }
    for day in 1..=13 {
        csv.push_str(&format!("f,stopped,2025-06-{day:02},Stopped\n"));
    }
    let days = frame(agg::SUBSCRIPTION_DAYS, &csv);
    let w = usage::window(&days, june()).unwrap();
    assert_eq!(w, Window { period: june(), as_of: date("2025-06-15"), has_daily_usage: true });
    let rows = usage::usage_gap(&days, &cs, &w).unwrap();
    assert_eq!(
        show(&rows),
        [
            "usage_gap | warning | f | gap | 3 | 0 | 0 | 2025-06-10 | 2025-06-12",
            "usage_gap | warning | f | stopped | 2 | 0 | 0 | 2025-06-14 | 2025-06-15",
        ]
    );
    let gap = rows.iter().find(|a| a.subject == "gap").unwrap();
    assert!(gap.message.starts_with("Fabrikam: subscription Azure subscription 1 (gap) has no usage rows on 10–12 June 2025 (3 days)"), "{}", gap.message);
}

#[test]
fn tag_compliance_judges_customers_that_allocate_by_tags() {
    let cs = customers_of(&format!("{HEADER}\na,Tagger,EUR,enterprise,,,,,\nb,No Rules,EUR,smb,,,,,\no1,Strict,EUR,enterprise,,,,,"));
    let rules = stage(
        RefTable::TagRules,
        "rule_id,priority,customer_id,subscription_id,resource_group,tag_key,tag_value,target_customer_id,target_unit_id,share
R1,1,a,,,cost-center,*,,,
R2,1,o1,,,cost-center,*,,,
R3,1,b,,rg-*,,,,,",
    );
    let comp = frame(
        schemas::int_tag_compliance::COLUMNS,
        "customer_id,subscription_id,compliance
a,s_at,0.90
a,s_under,0.8999
a,s_crit_at,0.75
a,s_crit,0.7499
a,s_null,
b,s_b,0.10
o1,s_o,0.92",
    );
    let t = with_override(|o| o.tag_compliance_warning = d("0.95"));
    let days = frame(agg::SUBSCRIPTION_DAYS, "customer_id,subscription_id,usage_date\na,s_crit,2025-06-03");
    let rows = usage::tag_compliance(&comp, &rules, &days, &cs, &t, &window("2025-06-10")).unwrap();
    assert_eq!(
        show(&rows),
        [
            "tag_compliance | critical | a | s_crit | 0.7499 | 0.9 | 0.75 | 2025-06-03 | 2025-06-10",
            "tag_compliance | warning | a | s_crit_at | 0.75 | 0.9 | 0.9 | 2025-06-01 | 2025-06-10",
            "tag_compliance | warning | a | s_under | 0.8999 | 0.9 | 0.9 | 2025-06-01 | 2025-06-10",
            "tag_compliance | warning | o1 | s_o | 0.92 | 0.95 | 0.95 | 2025-06-01 | 2025-06-10",
        ]
    );
    // No rule naming a tag key: the monitor says it did not run.
    let none = stage(RefTable::TagRules, "rule_id,priority,customer_id,subscription_id,resource_group,tag_key,tag_value,target_customer_id,target_unit_id,share\nR3,1,b,,rg-*,,,,,");
    let rows = usage::tag_compliance(&comp, &none, &days, &cs, &t, &window("2025-06-10")).unwrap();
    assert_eq!(show(&rows), ["tag_compliance | skipped |  |  | ∅ | ∅ | ∅ | ∅ | ∅"]);
}

const SEATS: &str = "source_customer_id,customer_id,invoice_currency,pc_subscription_id,product_id,sku_id,charge_start_date,positive,sku_name,q,seat_cycles,price";

#[test]
fn license_waste_counts_seats_against_users_active_within_the_days() {
    let cs = customers_of(&format!(
        "{HEADER}
n,Northwind,USD,smb,,,,active,2026-01-01
full,All Used,USD,smb,,,,active,2026-01-01
o1,Override,USD,smb,,,,active,2026-01-01
quiet,No Activity,USD,smb,,,,active,2026-01-01
gone,Lapsed,USD,smb,,,,expired,2025-05-01"
    ));
    // n: cycle charge of 3 seats on 3 June (price 60 = 3 × 20), then a seat add on 12 June: the refund line of
    // the 3 (not positive) and the new line of 5 seats prorated f = 0.6 (price 60 = 5 × 0.6 × 20). Seats: 5.
    let mut seats = format!(
        "{SEATS}
n,n,USD,S1,P,0001,2025-06-03,true,Business Premium,3,3,60
n,n,USD,S1,P,0001,2025-06-03,false,Business Premium,3,-1.8,-36
n,n,USD,S1,P,0001,2025-06-12,true,Business Premium,5,3,60
full,full,USD,S2,P,0001,2025-06-03,true,Business Premium,2,2,40
o1,o1,USD,S3,P,0001,2025-06-03,true,Business Premium,2,2,40
quiet,quiet,USD,S4,P,0001,2025-06-03,true,Business Premium,2,2,40
gone,gone,USD,S5,P,0001,2025-06-03,true,Business Premium,2,2,40"
    );
    seats.push('\n');
    let seats = frame(agg::SEAT_LINES, &seats);
    // As of 30 June with 30 days: 31 May (30 days before) is active, 30 May (31 days) is not, never is not.
    let activity = stage(
        RefTable::LicenseActivity,
        "customer_id,user_key,product_id,last_activity_date
n,u1,P:0001,2025-06-30
n,u2,P:0001,2025-06-20
n,u3,P:0001,2025-05-31
n,u4,P:0001,2025-05-30
n,u5,P:0001,
full,u6,P:0001,2025-06-30
full,u7,P:0001,2025-05-31
o1,u8,P:0001,2025-06-30
o1,u9,P:0001,2025-05-30
gone,u10,P:0001,2025-01-01",
    );
    // o1 counts 31 days: 30 May is active, both seats used.
    let t = with_override(|o| o.license_unused_days = 31);
    let rows = tenant::license_waste(&seats, &activity, &cs, &t, &window("2025-06-30")).unwrap();
    assert_eq!(
        show(&rows),
        [
            "license_waste | skipped | gone | tenant telemetry | ∅ | ∅ | ∅ | ∅ | ∅",
            "license_waste | skipped | quiet | license_activity | ∅ | ∅ | ∅ | ∅ | ∅",
            "license_waste | warning | n | P:0001 | 5 | 3 | 30 | 2025-06-30 | 2025-06-30",
        ]
    );
    let n = rows.iter().find(|a| a.customer_id == "n").unwrap();
    // Unused 2 seats at 60 / (5 × 0.6) = 20.00 a seat: USD 40.00.
    assert!(n.message.contains("2 of 5 Business Premium seats (P:0001) have had no active user in the 30 days to 30 June 2025 (USD 40.00 per billing cycle at USD 20.00 a seat)"), "{}", n.message);
    let gone = rows.iter().find(|a| a.customer_id == "gone").unwrap();
    assert!(gone.message.contains("no licence-waste analysis: admin consent is `expired`"), "{}", gone.message);
}

#[test]
fn underutilization_needs_enough_consecutive_days_below_the_floor() {
    let cs = customers_of(&format!(
        "{HEADER}
n,Northwind,USD,smb,,,,active,
o1,Override,USD,smb,,,,active,
gone,Lapsed,USD,smb,,,,revoked,"
    ));
    let res = frame(
        agg::RESOURCES,
        "customer_id,subscription_id,resource_key,resource_uri
n,s,/x/vm-seven,/X/vm-seven
n,s,/x/vm-six,/X/vm-six
n,s,/x/vm-at-floor,/X/vm-at-floor
o1,s,/x/vm-o,/X/vm-o
gone,s,/x/vm-gone,/X/vm-gone",
    );
    let cost = frame(
        agg::RESOURCE_COST,
        "source_customer_id,customer_id,invoice_currency,resource_key,price
n,n,USD,/x/vm-seven,70.5
n,other,EUR,/x/vm-seven,99",
    );
    // vm-seven: 9.99 % on 1–7 June (7 days: at the default 7), then 50 %. vm-six: 6 days below. vm-at-floor:
    // 10 % is not below 10. vm-o: 7 days, but its customer wants 8.
    let mut csv = String::from("resource_uri,date,cpu_avg_pct\n");
    for day in 1..=10 {
        let low = day <= 7;
        csv.push_str(&format!("/X/VM-SEVEN,2025-06-{day:02},{}\n", if low { "9.99" } else { "50" }));
        csv.push_str(&format!("/X/vm-six,2025-06-{day:02},{}\n", if (2..=7).contains(&day) { "5" } else { "50" }));
        csv.push_str(&format!("/X/vm-at-floor,2025-06-{day:02},10\n"));
        csv.push_str(&format!("/X/vm-o,2025-06-{day:02},{}\n", if low { "1" } else { "50" }));
        csv.push_str(&format!("/X/vm-gone,2025-06-{day:02},1\n"));
    }
    let util = stage(RefTable::Utilization, &csv);
    let t = with_override(|o| o.cpu_days = 8);
    let rows = tenant::underutilization(&util, &res, &cost, &cs, &t, &window("2025-06-10")).unwrap();
    assert_eq!(
        show(&rows),
        [
            "underutilization | skipped | gone | tenant telemetry | ∅ | ∅ | ∅ | ∅ | ∅",
            "underutilization | warning | n | /X/vm-seven | 9.99 | 10 | 7 | 2025-06-01 | 2025-06-07",
        ]
    );
    let seven = rows.iter().find(|a| a.customer_id == "n").unwrap();
    assert_eq!(
        seven.message,
        "Northwind: vm-seven averaged below 10 % CPU on 7 consecutive days (1–7 June 2025, highest 9.99 %); it cost USD 70.50 this month; resize or shut it down"
    );
}

#[test]
fn consent_expiring_within_the_notice_and_lapsed_when_past_or_not_active() {
    let cs = customers_of(&format!(
        "{HEADER}
in14,In 14 Days,EUR,smb,,,,active,2025-07-14
in15,In 15 Days,EUR,smb,,,,active,2025-07-15
today,Today,EUR,smb,,,,active,2025-06-30
past,Past,EUR,smb,,,,active,2025-06-29
revoked,Revoked,EUR,smb,,,,revoked,
o1,Override,EUR,smb,,,,active,2025-07-20"
    ));
    let t = with_override(|o| o.consent_expiring_days = 20);
    let rows = tenant::consent(&cs, &t, &window("2025-06-30"));
    assert_eq!(
        show(&rows),
        [
            "consent_expiring | warning | in14 | consent | 14 | ∅ | 14 | 2025-06-30 | 2025-06-30",
            "consent_expiring | warning | o1 | consent | 20 | ∅ | 20 | 2025-06-30 | 2025-06-30",
            "consent_expiring | warning | today | consent | 0 | ∅ | 14 | 2025-06-30 | 2025-06-30",
            "consent_lapsed | critical | past | consent | -1 | ∅ | 14 | 2025-06-30 | 2025-06-30",
            "consent_lapsed | critical | revoked | consent | ∅ | ∅ | 14 | 2025-06-01 | 2025-06-30",
        ]
    );
}

#[test]
fn monitors_without_their_input_say_so_once() {
    let cs = empty(RefTable::Customers);
    let days = frame(agg::SUBSCRIPTION_DAYS, "customer_id,subscription_id,usage_date");
    let none = |layout| frame(layout, "customer_id");
    let (spend, res, seats, cost) = (none(agg::DAILY_SPEND), none(agg::RESOURCES), none(agg::SEAT_LINES), none(agg::RESOURCE_COST));
    let comp = DataFrame::empty_with_schema(&schemas::int_tag_compliance::schema());
    let (rules, act, util) = (empty(RefTable::TagRules), empty(RefTable::LicenseActivity), empty(RefTable::Utilization));
    let inputs = Inputs {
        customers: &cs,
        daily_spend: &spend,
        subscription_days: &days,
        resources: &res,
        seat_lines: &seats,
        resource_cost: &cost,
        tag_compliance: &comp,
        tag_rules: &rules,
        license_activity: &act,
        utilization: &util,
    };
    let report = rpt_anomalies(&inputs, &ThresholdSet::default(), june()).unwrap();
    assert_eq!(report.window.as_of, date("2025-06-30"));
    let monitors: Vec<&str> = report.rows.iter().map(|a| a.monitor).collect();
    assert_eq!(
        monitors,
        ["budget_overrun", "spend_cap", "margin_variance", "unusual_deployment", "usage_gap", "tag_compliance", "license_waste", "underutilization"]
    );
    assert!(report.rows.iter().all(|a| a.severity == Severity::Skipped));
    let df = to_frame(&report.rows, june()).unwrap();
    assert_eq!(df.schema().as_ref(), &schemas::rpt_anomalies::schema());
    assert_eq!(df.height(), 8);
}

#[test]
fn the_report_is_ordered_and_ranks_the_worst() {
    let row = |m, s, c: &str, score: &str| Anomaly { score: d(score), ..Anomaly { monitor: m, severity: s, ..Anomaly::skipped(m, c, "x", String::new()) } };
    let mut rows = vec![
        row(monitor::USAGE_GAP, Severity::Warning, "a", "3"),
        row(monitor::BUDGET_OVERRUN, Severity::Warning, "b", "0.5"),
        row(monitor::CONSENT_LAPSED, Severity::Critical, "c", "10"),
        row(monitor::LICENSE_WASTE, Severity::Skipped, "d", "0"),
        row(monitor::SPEND_CAP, Severity::Critical, "e", "0.7"),
    ];
    sort(&mut rows);
    let order: Vec<&str> = rows.iter().map(|a| a.customer_id.as_str()).collect();
    assert_eq!(order, ["e", "c", "b", "a", "d"]);
    let w: Vec<&str> = worst(&rows, 3).iter().map(|a| a.customer_id.as_str()).collect();
    assert_eq!(w, ["c", "e", "a"]);
    assert!(Severity::Critical.at_least(Severity::Warning) && Severity::Warning.at_least(Severity::Warning));
    assert!(!Severity::Warning.at_least(Severity::Critical) && !Severity::Skipped.at_least(Severity::Warning));
}

#[test]
fn aggregates_have_their_declared_schemas_and_sum_exactly() {
    let rated = DataFrame::empty_with_schema(&schemas::int_charges_rated::schema()).lazy();
    let usage = DataFrame::empty_with_schema(&schemas::stg_pc_daily_usage::schema()).lazy();
    let util = DataFrame::empty_with_schema(&schemas::stg_utilization::schema()).lazy();
    let check = |mut lf: LazyFrame, layout: &[(&str, Ty)]| {
        assert_eq!(lf.collect_schema().unwrap().as_ref(), &agg::schema(layout));
    };
    check(agg::daily_spend(rated.clone()), agg::DAILY_SPEND);
    check(agg::seat_lines(rated.clone()), agg::SEAT_LINES);
    check(agg::resource_cost(rated.clone(), util), agg::RESOURCE_COST);
    check(agg::subscription_days(usage.clone()), agg::SUBSCRIPTION_DAYS);
    check(agg::resources(usage.clone()), agg::RESOURCES);
    check(agg::collect_resources(usage).unwrap().lazy(), agg::RESOURCES);

    // Two priced daily-usage parts and a licence part of one customer and day, and an unpriced part.
    let (h, rows) = split(
        "customer_id,invoice_currency,charge_date,source_kind,status,price,margin
c,EUR,2025-06-02,daily_usage,priced,0.100000000000000001,0.01
c,EUR,2025-06-02,daily_usage,priced,0.2,0.02
c,EUR,2025-06-02,invoice_line,priced,10,1
c,EUR,2025-06-02,daily_usage,unpriced,,",
    );
    let mut columns = Vec::new();
    for (name, ty) in schemas::int_charges_rated::COLUMNS {
        let vals: Vec<Option<String>> = rows.iter().map(|(_, r)| h.iter().position(|c| c == name).map(|i| r[i].clone()).filter(|s| !s.is_empty())).collect();
        columns.push(match ty {
            Ty::Str => cells::str_column(name, &vals),
            Ty::Dec => cells::dec_column(name, &vals.iter().map(|v| v.as_deref().map(d)).collect::<Vec<_>>()),
            Ty::Date => cells::date_column(name, &vals.iter().map(|v| v.as_deref().map(date)).collect::<Vec<_>>()),
            Ty::Int => Column::new((*name).into(), vec![None::<i64>; rows.len()]),
            Ty::Bool => Column::new((*name).into(), vec![None::<bool>; rows.len()]),
            Ty::Ts => unreachable!(),
        });
    }
    let out = agg::daily_spend(DataFrame::new_infer_height(columns).unwrap().lazy()).collect().unwrap();
    assert_eq!(out.height(), 1);
    // usage 0.100000000000000001 + 0.2 exactly; spend adds the licence's 10.
    assert_eq!(cells::decs(&out, "usage_spend").unwrap()[0], Some(d("0.300000000000000001")));
    assert_eq!(cells::decs(&out, "spend").unwrap()[0], Some(d("10.300000000000000001")));
    assert_eq!(cells::decs(&out, "margin").unwrap()[0], Some(d("1.03")));
}

/// `resources` folds the spellings of a ResourceURI (Azure compares them case-insensitively) per customer and
/// subscription: the smallest spelling and resource group (code-point order; nulls ignored) and the first usage
/// date. Worked by hand beside the rows; empty and missing URIs and undated rows are not resources.
#[test]
fn resources_fold_spellings_of_a_uri_and_keep_the_first_usage_date() {
    let usage = frame(
        schemas::stg_pc_daily_usage::COLUMNS,
        "customer_id,entitlement_id,resource_uri,resource_group,usage_date
c,s1,/subs/S1/rg/VM-1,RG-B,2025-06-09
c,s1,/subs/s1/rg/vm-1,rg-a,2025-06-12
c,s1,/subs/s1/rg/vm-1,,2025-06-03
c,s2,/subs/s1/rg/vm-1,rg-z,2025-06-20
d,s1,/subs/S1/rg/VM-1,RG-B,2025-06-01
c,s1,,rg-a,2025-06-01
c,s1,/subs/s1/rg/undated,rg-a,
c,s1,/subs/s1/rg/vm-2,,2025-06-05",
    );
    let out = sorted_resources(agg::collect_resources(usage.clone().lazy()).unwrap(), false);
    assert!(out.equals_missing(&sorted_resources(agg::resources(usage.lazy()).collect().unwrap(), false)), "the batch fold and the group-by differ");
    let row = |i: usize| {
        [
            cells::strs(&out, "customer_id").unwrap()[i].clone(),
            cells::strs(&out, "subscription_id").unwrap()[i].clone(),
            cells::strs(&out, "resource_key").unwrap()[i].clone(),
            cells::strs(&out, "resource_uri").unwrap()[i].clone(),
            cells::strs(&out, "resource_group").unwrap()[i].clone(),
        ]
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(out.height(), 4, "{out}");
    // c/s1/vm-1: three rows, two spellings ("/subs/S1/..." < "/subs/s1/..."), groups RG-B < rg-a (null ignored),
    // first seen 3 June.
    assert_eq!(row(0), [s("c"), s("s1"), s("/subs/s1/rg/vm-1"), s("/subs/S1/rg/VM-1"), s("RG-B")]);
    assert_eq!(row(1), [s("c"), s("s1"), s("/subs/s1/rg/vm-2"), s("/subs/s1/rg/vm-2"), None]);
    assert_eq!(row(2), [s("c"), s("s2"), s("/subs/s1/rg/vm-1"), s("/subs/s1/rg/vm-1"), s("rg-z")]);
    assert_eq!(row(3), [s("d"), s("s1"), s("/subs/s1/rg/vm-1"), s("/subs/S1/rg/VM-1"), s("RG-B")]);
    let first = cells::dates(&out, "first_seen").unwrap();
    assert_eq!(first, vec![Some(date("2025-06-03")), Some(date("2025-06-05")), Some(date("2025-06-20")), Some(date("2025-06-01"))]);
}

/// The batch fold of `collect_resources` equals the plain group-by `resources` on 20,000 pseudo-random rows
/// (several streaming batches): spellings differing in case, missing resource groups, customers and subscriptions,
/// rows without a URI or a date.
#[test]
fn collect_resources_equals_the_group_by_on_many_rows() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut csv = String::from("customer_id,entitlement_id,resource_uri,resource_group,usage_date\n");
    for _ in 0..20_000 {
        let c = ["", "c1", "c2", "C1"][next(4) as usize];
        let s = ["", "s1", "s2"][next(3) as usize];
        let r = next(300);
        let uri = match next(10) {
            0 => String::new(),
            1 => format!("/subs/S/RG/VM-{r}"),
            2 => format!("/Subs/s/rg/Vm-{r}"),
            _ => format!("/subs/s/rg/vm-{r}"),
        };
        let rg = ["", "rg-a", "RG-A", "rg-b"][next(4) as usize];
        let day = if next(20) == 0 { String::new() } else { format!("2025-06-{:02}", 1 + next(30)) };
        csv.push_str(&format!("{c},{s},{uri},{rg},{day}\n"));
    }
    let usage = frame(schemas::stg_pc_daily_usage::COLUMNS, &csv);
    let fold = sorted_resources(agg::collect_resources(usage.clone().lazy()).unwrap(), true);
    let spec = sorted_resources(agg::resources(usage.lazy()).collect().unwrap(), true);
    assert!(fold.height() > 1_000, "{}", fold.height());
    assert!(fold.equals_missing(&spec), "fold:\n{fold}\nspec:\n{spec}");
}

/// The per-resource aggregate in one order, to compare the batch fold with its group-by spec.
fn sorted_resources(df: DataFrame, nulls_last: bool) -> DataFrame {
    df.lazy()
        .sort(["customer_id", "subscription_id", "resource_key"], SortMultipleOptions::default().with_nulls_last(nulls_last))
        .collect()
        .unwrap()
}
