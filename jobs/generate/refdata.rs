//! The MSP's reference CSVs of DESIGN §4.2, with exactly its columns: customers (budgets sized from the
//! generated usage so the planted overrun and trial cap hold at any scale), org units, rate cards, tag rules,
//! FX rates, manual lines, PSA time entries, licence activity and VM utilisation.

use std::path::Path;

use anyhow::Result;
use chrono::{Datelike, Duration, NaiveDate, Weekday};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::{Decimal, RoundingStrategy};

use super::catalog::{self, Kind};
use super::csvout::{self, write_table};
use super::usage::UsageSums;
use super::world::{Customer, SeatEvent, Template, World, hex};
use super::{fmt_dec, iso};

fn s(v: &str) -> String {
    v.to_string()
}

/// Rough mid-market rates for sizing budgets (not written anywhere): IC units per BC unit.
fn approx_rate(bc: &str, ic: &str) -> Decimal {
    let usd = |c: &str| match c {
        "EUR" => Decimal::new(88, 2),
        "GBP" => Decimal::new(74, 2),
        "JPY" => Decimal::new(14450, 2),
        _ => Decimal::ONE,
    };
    usd(ic) / usd(bc)
}

/// Rounds a budget up to a round number in the currency (1,000 yen, else 100 units).
fn round_budget(v: Decimal, ic: &str) -> Decimal {
    let step = if ic == "JPY" {
        Decimal::from(1000)
    } else {
        Decimal::from(100)
    };
    ((v / step).round_dp_with_strategy(0, RoundingStrategy::AwayFromZero) * step).max(step)
}

pub fn write_reference(
    world: &World,
    dir: &Path,
    sums: &UsageSums,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut put = |name: &str, header: &[&'static str], rows: &[Vec<String>]| -> Result<()> {
        write_table(&dir.join(name), header, rows, csvout::REFERENCE)?;
        files.push(format!("reference/{name}"));
        Ok(())
    };
    put("customers.csv", CUSTOMERS, &customers(world, sums))?;
    put("org_units.csv", ORG_UNITS, &org_units(world))?;
    put("rate_cards.csv", RATE_CARDS, &rate_cards(world))?;
    put("tag_rules.csv", TAG_RULES, &tag_rules(world))?;
    put("fx_rates.csv", FX_RATES, &fx_rates(world, rng))?;
    put("manual_lines.csv", MANUAL_LINES, &manual_lines(world))?;
    put("psa_time_entries.csv", PSA, &psa(world, rng))?;
    put(
        "license_activity.csv",
        LICENSE_ACTIVITY,
        &license_activity(world, rng),
    )?;
    put("utilization.csv", UTILIZATION, &utilization(world, rng))?;
    put("gl_accounts.csv", GL_ACCOUNTS, &gl_accounts())?;
    Ok(files)
}

const CUSTOMERS: &[&str] = &[
    "customer_id",
    "customer_name",
    "invoice_currency",
    "template",
    "fx_policy",
    "fixed_fx_rate",
    "monthly_budget",
    "spend_cap",
    "target_margin",
    "payment_terms_days",
    "consent_status",
    "consent_expires_on",
    "billing_address",
    "tax_id",
    "po_number",
    "contact_email",
    "locale",
];

/// The invoice contact fields of a customer (issue #14), derived from its country and index without drawing
/// from the random stream, so adding them changed no other generated file.
fn contact(c: &Customer) -> [String; 5] {
    let n = 1000 + c.idx as u32 * 37;
    let (address, tax, locale) = match c.country {
        "DE" => (format!("Friedrichstraße {}, 10117 Berlin, Germany", 10 + c.idx), format!("DE{:09}", 811_000_000 + n), "de-DE"),
        "AT" => (format!("Mariahilfer Straße {}, 1070 Wien, Austria", 10 + c.idx), format!("ATU{:08}", 62_000_000 + n), "de-DE"),
        "GB" => (format!("{} King Street, London EC2V 8AU, United Kingdom", 10 + c.idx), format!("GB{:09}", 298_000_000 + n), "en-GB"),
        "NL" => (format!("Keizersgracht {}, 1015 CS Amsterdam, Netherlands", 100 + c.idx), format!("NL{:09}B01", 854_000_000 + n), "nl-NL"),
        "FR" => (format!("{} rue de Rivoli, 75001 Paris, France", 10 + c.idx), format!("FR{:011}", 40_303_000_000u64 + u64::from(n)), "fr-FR"),
        "JP" => (format!("{}-1 Marunouchi, Chiyoda-ku, Tokyo 100-0005, Japan", 1 + c.idx % 9), format!("T{:013}", 1_010_001_000_000u64 + u64::from(n)), "ja-JP"),
        "IE" => (format!("{} Grafton Street, Dublin 2, Ireland", 10 + c.idx), format!("IE{:07}W", 6_300_000 + n), "en-GB"),
        "CA" => (format!("{} Bay Street, Toronto ON M5J 2T3, Canada", 100 + c.idx), format!("{:09}RT0001", 812_000_000 + n), "en-US"),
        _ => (format!("{} Market Street, Seattle WA 98101, USA", 100 + c.idx), format!("{:02}-{:07}", 91, 1_200_000 + n), "en-US"),
    };
    // Every third customer orders with a purchase-order number, as larger customers do.
    let po = if c.idx % 3 == 0 { format!("PO-{}-{:04}", c.code, 4500 + c.idx) } else { String::new() };
    [address, tax, po, format!("accounts.payable@{}", c.domain.replace(".onmicrosoft.com", ".example")), locale.to_string()]
}

fn customers(world: &World, sums: &UsageSums) -> Vec<Vec<String>> {
    let year = world.period.start().year();
    world
        .customers
        .iter()
        .map(|c| {
            // Expected monthly spend at the customer's prices: Azure cost plus a typical 15 % markup.
            let spend =
                sums.cost_per_customer[c.idx] * Decimal::new(115, 2) * approx_rate(c.bc, c.ic);
            let (budget, cap) = if c.idx == world.plan.budget_overrun {
                // Planted `budget_overrun`: the month runs about 40 % over budget.
                (
                    round_budget(spend * Decimal::new(70, 2), c.ic).to_string(),
                    String::new(),
                )
            } else if c.template == Template::Trial {
                // Planted `spend_cap`: the trial's cap is passed around mid-month.
                let cap = round_budget(spend * Decimal::new(50, 2), c.ic);
                (cap.to_string(), cap.to_string())
            } else {
                (
                    round_budget(spend * Decimal::new(160, 2), c.ic).to_string(),
                    String::new(),
                )
            };
            let (consent, expires) = if c.idx % 10 == 9 {
                ("expired", NaiveDate::from_ymd_opt(year, 5, 20))
            } else {
                (
                    "active",
                    NaiveDate::from_ymd_opt(year + 1, (c.idx % 12) as u32 + 1, 15),
                )
            };
            vec![
                c.id.clone(),
                c.name.clone(),
                s(c.ic),
                s(c.template.as_str()),
                s(c.fx_policy),
                s(c.fixed_fx_rate),
                budget,
                cap,
                s(c.target_margin),
                s(c.payment_terms),
                s(consent),
                expires.map(iso).unwrap_or_default(),
            ]
            .into_iter()
            .chain(contact(c))
            .collect()
        })
        .collect()
}

const ORG_UNITS: &[&str] = &[
    "unit_id",
    "customer_id",
    "parent_unit_id",
    "unit_type",
    "name",
    "psa_project_code",
];

/// The project codes PSA time is booked against, by customer.
fn psa_codes(c: &Customer) -> Vec<String> {
    match c.template {
        Template::Enterprise => vec![
            format!("PSA-{}01", 10 + c.idx),
            format!("PSA-{}02", 10 + c.idx),
        ],
        Template::Smb if c.idx == 2 => vec![format!("PSA-{}01", 10 + c.idx)],
        _ => vec![],
    }
}

fn org_units(world: &World) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for c in &world.customers {
        let p = &c.code;
        let unit = |id: &str, parent: &str, kind: &str, name: &str, psa: &str| {
            vec![
                format!("{p}-{id}"),
                c.id.clone(),
                if parent.is_empty() {
                    String::new()
                } else {
                    format!("{p}-{parent}")
                },
                s(kind),
                s(name),
                s(psa),
            ]
        };
        let codes = psa_codes(c);
        match c.template {
            Template::Enterprise => {
                rows.push(unit("OPS", "", "business_unit", "Operations", ""));
                rows.push(unit("SALES", "", "business_unit", "Sales & Marketing", ""));
                rows.push(unit(
                    "CC-100",
                    "OPS",
                    "cost_center",
                    "Cost centre 100 - Finance systems",
                    "",
                ));
                rows.push(unit(
                    "CC-200",
                    "SALES",
                    "cost_center",
                    "Cost centre 200 - Digital",
                    "",
                ));
                rows.push(unit(
                    "PRJ-ERP",
                    "OPS",
                    "project",
                    "ERP programme",
                    &codes[0],
                ));
                rows.push(unit(
                    "PRJ-WEB",
                    "CC-200",
                    "project",
                    "Web shop relaunch",
                    &codes[1],
                ));
            }
            Template::Smb if !codes.is_empty() => rows.push(unit(
                "PRJ-M365",
                "",
                "project",
                "Modern workplace rollout",
                &codes[0],
            )),
            _ => {}
        }
    }
    rows
}

const RATE_CARDS: &[&str] = &[
    "rule_id",
    "customer_id",
    "template",
    "product_family",
    "meter_category",
    "meter_subcategory",
    "product_id",
    "method",
    "value",
    "currency",
    "valid_from",
    "valid_to",
];

fn rate_cards(world: &World) -> Vec<Vec<String>> {
    let y = world.period.start().year();
    let jan = iso(NaiveDate::from_ymd_opt(y, 1, 1).unwrap_or(world.period.start()));
    // The Azure default changes mid-month: valid_to is exclusive, so the 16th is the first day at the new rate.
    let change = iso(world.day(16));
    let r = |id: &str,
             cust: &str,
             tpl: &str,
             fam: &str,
             cat: &str,
             sub: &str,
             prod: &str,
             method: &str,
             v: &str,
             ccy: &str,
             from: &str,
             to: &str| {
        vec![
            s(id),
            s(cust),
            s(tpl),
            s(fam),
            s(cat),
            s(sub),
            s(prod),
            s(method),
            s(v),
            s(ccy),
            s(from),
            s(to),
        ]
    };
    let mut rows = vec![
        r(
            "DEF-AZURE-H1",
            "*",
            "*",
            "azure_usage",
            "",
            "",
            "*",
            "markup_on_cost",
            "15%",
            "",
            &jan,
            &change,
        ),
        r(
            "DEF-AZURE-H2",
            "*",
            "*",
            "azure_usage",
            "",
            "",
            "*",
            "markup_on_cost",
            "17%",
            "",
            &change,
            "",
        ),
        r(
            "DEF-LICENSE",
            "*",
            "*",
            "license",
            "",
            "",
            "*",
            "markup_on_cost",
            "0.12",
            "",
            &jan,
            "",
        ),
        r(
            "DEF-RESERVATION",
            "*",
            "*",
            "reservation",
            "",
            "",
            "*",
            "markup_on_cost",
            "0.08",
            "",
            &jan,
            "",
        ),
        r(
            "DEF-SAVINGS-PLAN",
            "*",
            "*",
            "savings_plan",
            "",
            "",
            "*",
            "markup_on_cost",
            "0.08",
            "",
            &jan,
            "",
        ),
        r(
            "DEF-MARKETPLACE",
            "*",
            "*",
            "marketplace",
            "",
            "",
            "*",
            "margin_on_cost",
            "0.20",
            "",
            &jan,
            "",
        ),
        r(
            "DEF-SOFTWARE",
            "*",
            "*",
            "software",
            "",
            "",
            "*",
            "markup_on_cost",
            "0.10",
            "",
            &jan,
            "",
        ),
        r(
            "SMB-AZURE",
            "*",
            "smb",
            "azure_usage",
            "",
            "",
            "*",
            "markup_on_list",
            "0.03",
            "",
            &jan,
            "",
        ),
        r(
            "TRIAL-AZURE",
            "*",
            "trial",
            "azure_usage",
            "",
            "",
            "*",
            "discount_off_list",
            "0",
            "",
            &jan,
            "",
        ),
        r(
            "CAT-VM",
            "*",
            "*",
            "azure_usage",
            "Virtual Machines",
            "",
            "*",
            "markup_on_cost",
            "0.10",
            "",
            &jan,
            "",
        ),
        r(
            "PROD-SQL",
            "*",
            "*",
            "azure_usage",
            "",
            "",
            catalog::METERS[catalog::SQL_VCORE].product_id,
            "markup_on_cost",
            "0.20",
            "",
            &jan,
            "",
        ),
    ];
    for c in &world.customers {
        if c.idx == world.plan.holding {
            rows.push(r(
                &format!("CUST-{}-AZURE", c.code),
                &c.id,
                "*",
                "azure_usage",
                "",
                "",
                "*",
                "margin_on_cost",
                "0.12",
                "",
                &jan,
                "",
            ));
        }
        if c.idx == 5 {
            rows.push(r(
                &format!("CUST-{}-AZURE", c.code),
                &c.id,
                "*",
                "azure_usage",
                "",
                "",
                "*",
                "discount_off_list",
                "0.05",
                "",
                &jan,
                "",
            ));
        }
        if c.idx == world.plan.fixed_price {
            // A per-seat price agreed with the customer, in its invoice currency.
            let prod = format!(
                "{}:{}",
                catalog::BUSINESS_PREMIUM.product_id,
                catalog::BUSINESS_PREMIUM.sku_id
            );
            rows.push(r(
                &format!("CUST-{}-M365BP", c.code),
                &c.id,
                "*",
                "license",
                "",
                "",
                &prod,
                "fixed_unit_price",
                "24.50",
                c.ic,
                &jan,
                "",
            ));
        }
    }
    rows
}

const TAG_RULES: &[&str] = &[
    "rule_id",
    "priority",
    "customer_id",
    "subscription_id",
    "resource_group",
    "tag_key",
    "tag_value",
    "target_customer_id",
    "target_unit_id",
    "share",
];

fn tag_rules(world: &World) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let r = |id: String,
             prio: &str,
             cust: &str,
             sub: &str,
             rg: &str,
             key: &str,
             val: &str,
             target: &str,
             unit: String,
             share: &str| {
        vec![
            id,
            s(prio),
            s(cust),
            s(sub),
            s(rg),
            s(key),
            s(val),
            s(target),
            unit,
            s(share),
        ]
    };
    for c in world
        .customers
        .iter()
        .filter(|c| c.template == Template::Enterprise)
    {
        let p = &c.code;
        let u = |id: &str| format!("{p}-{id}");
        if c.idx == world.plan.holding {
            if let Some(sub) = world.plan.subsidiary.and_then(|i| world.customers.get(i)) {
                // The holding's resources tagged for the subsidiary are billed to the subsidiary.
                rows.push(r(
                    format!("TR-{p}-TO-{}", sub.code),
                    "5",
                    &c.id,
                    "",
                    "",
                    "entity",
                    "subsidiary",
                    &sub.id,
                    format!("{}-OPS", sub.code),
                    "",
                ));
            }
        }
        // Shared network costs (tagged `owner=platform`) are split 50/30/20; the last share is blank and takes the
        // remainder. The rule names the tag, so this cost counts as allocated by tags (`int_tag_compliance`).
        rows.push(r(
            format!("TR-{p}-SHARED"),
            "10",
            &c.id,
            "",
            "rg-shared-*",
            "owner",
            "platform",
            "",
            u("OPS"),
            "0.5",
        ));
        rows.push(r(
            format!("TR-{p}-SHARED"),
            "10",
            &c.id,
            "",
            "rg-shared-*",
            "owner",
            "platform",
            "",
            u("SALES"),
            "0.3",
        ));
        rows.push(r(
            format!("TR-{p}-SHARED"),
            "10",
            &c.id,
            "",
            "rg-shared-*",
            "owner",
            "platform",
            "",
            u("PRJ-ERP"),
            "",
        ));
        rows.push(r(
            format!("TR-{p}-CC100"),
            "20",
            &c.id,
            "",
            "",
            "cost-center",
            "CC-100",
            "",
            u("CC-100"),
            "",
        ));
        rows.push(r(
            format!("TR-{p}-CC200"),
            "20",
            &c.id,
            "",
            "",
            "Cost-Center",
            "CC-200",
            "",
            u("CC-200"),
            "1",
        ));
        rows.push(r(
            format!("TR-{p}-ERP"),
            "30",
            &c.id,
            "",
            "",
            "project",
            "erp*",
            "",
            u("PRJ-ERP"),
            "",
        ));
        // Whatever else runs in production belongs to Operations.
        if let Some(prod) = c.entitlements.first() {
            rows.push(r(
                format!("TR-{p}-PROD"),
                "90",
                &c.id,
                &prod.id,
                "",
                "",
                "",
                "",
                u("OPS"),
                "",
            ));
        }
    }
    rows
}

const FX_RATES: &[&str] = &["date", "from_currency", "to_currency", "rate"];

/// Business-day market rates from the last week of the previous month to the period's end (weekends have no
/// rate, so "the latest rate on or before" matters), as a small random walk. USD→X pairs and EUR→GBP; other
/// directions come from the reverse pair, inverted.
fn fx_rates(world: &World, rng: &mut ChaCha8Rng) -> Vec<Vec<String>> {
    let mut pairs: Vec<(&str, &str, i64, u32)> = vec![
        ("USD", "EUR", 8800, 4),
        ("USD", "GBP", 7400, 4),
        ("USD", "JPY", 14450, 2),
        ("EUR", "GBP", 8450, 4),
    ];
    let mut rows = Vec::new();
    // Start a week before the period so the last business day of the previous month has a rate.
    let mut d = world.period.prev().end() - Duration::days(6);
    while d <= world.period.end() {
        if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
            for (from, to, m, scale) in pairs.iter_mut() {
                *m += rng.random_range(-25..=25);
                rows.push(vec![
                    iso(d),
                    s(from),
                    s(to),
                    fmt_dec(Decimal::new(*m, *scale)),
                ]);
            }
        }
        d += Duration::days(1);
    }
    rows
}

const MANUAL_LINES: &[&str] = &[
    "customer_id",
    "period",
    "description",
    "quantity",
    "unit_price",
    "currency",
    "line_type",
    "reference",
];

fn manual_lines(world: &World) -> Vec<Vec<String>> {
    let p = world.period.to_string();
    let mut rows = Vec::new();
    if let Some(c) = world.customers.first() {
        rows.push(vec![
            c.id.clone(),
            p.clone(),
            s("Goodwill credit: service desk outage"),
            s("1"),
            s("250.00"),
            s(c.ic),
            s("credit"),
            s("CASE-48213"),
        ]);
    }
    if let Some(c) = world.customers.get(2) {
        rows.push(vec![
            c.id.clone(),
            p,
            s("Onboarding: Intune device enrolment"),
            s("12"),
            s("35.00"),
            s(c.ic),
            s("charge"),
            s("PO-2025-117"),
        ]);
    }
    rows
}

const PSA: &[&str] = &[
    "entry_id",
    "customer_id",
    "project_code",
    "work_date",
    "hours",
    "hourly_rate",
    "currency",
    "billable",
    "description",
];

fn psa(world: &World, rng: &mut ChaCha8Rng) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut entry = 100_200u32;
    let tasks = [
        "Azure landing zone review",
        "Patch management",
        "Licence true-up",
        "Backup restore test",
        "Cost review meeting",
    ];
    for c in &world.customers {
        for (k, code) in psa_codes(c).iter().enumerate() {
            for j in 0..3 {
                entry += 1;
                let day = world.day(rng.random_range(2..=world.period.days().min(27)));
                let hours = Decimal::new(rng.random_range(1..=24) * 25, 2);
                let (rate, ccy) = if c.idx == 8 && k == 0 && j == 0 {
                    // Booked by the European team at its EUR rate: converted at the market rate of the work date.
                    (s("140.00"), "EUR")
                } else {
                    (
                        if c.ic == "JPY" {
                            s("21000")
                        } else {
                            s("150.00")
                        },
                        c.ic,
                    )
                };
                let billable = if j == 2 { "No" } else { "Yes" };
                let task = tasks[(entry as usize) % tasks.len()];
                rows.push(vec![
                    format!("CW-{entry}"),
                    c.id.clone(),
                    code.clone(),
                    iso(day),
                    fmt_dec(hours),
                    rate,
                    s(ccy),
                    s(billable),
                    s(task),
                ]);
            }
        }
    }
    rows
}

const LICENSE_ACTIVITY: &[&str] = &[
    "customer_id",
    "user_key",
    "product_id",
    "last_activity_date",
];

/// One row per purchased seat. Most users were active in the last week of the month; on the fixed-price
/// customer's Business Premium a few have not signed in for 45–90 days (planted `license_waste`), and one seat
/// was never assigned (empty date).
fn license_activity(world: &World, rng: &mut ChaCha8Rng) -> Vec<Vec<String>> {
    let end = world.period.end();
    let mut rows = Vec::new();
    for c in &world.customers {
        for seat in &c.seats {
            let seats = match seat.event {
                SeatEvent::Add { delta, .. } => seat.seats + delta,
                SeatEvent::Remove { delta, .. } => seat.seats.saturating_sub(delta),
                _ => seat.seats,
            };
            let product = format!("{}:{}", seat.licence.product_id, seat.licence.sku_id);
            let waste = c.idx == world.plan.fixed_price
                && seat.licence.product_id == catalog::BUSINESS_PREMIUM.product_id;
            for u in 0..seats {
                let last = if waste && u < 3 {
                    Some(end - Duration::days(rng.random_range(45..=90)))
                } else if waste && u == 3 {
                    None
                } else {
                    Some(end - Duration::days(rng.random_range(0..=6)))
                };
                rows.push(vec![
                    c.id.clone(),
                    format!("u-{}", hex(rng, 16)),
                    product.clone(),
                    last.map(iso).unwrap_or_default(),
                ]);
            }
        }
    }
    rows
}

const UTILIZATION: &[&str] = &["resource_uri", "date", "cpu_avg_pct"];

const GL_ACCOUNTS: &[&str] = &[
    "line_type",
    "product_family",
    "revenue_account",
    "cost_account",
    "deferred_revenue_account",
    "receivable_account",
    "payable_account",
    "description",
];

/// A small chart of accounts in the style of Xero's default codes: the default row names the control accounts
/// (receivable, deferred revenue, payable to Microsoft) and Azure consumption; the other rows split revenue and
/// cost by what was sold, and book credits, refunds, spend-cap credits and adjustments to their own accounts.
fn gl_accounts() -> Vec<Vec<String>> {
    let rows: &[[&str; 8]] = &[
        ["*", "*", "4000", "5000", "2400", "1200", "2100", "default: Azure consumption; control accounts"],
        ["license", "*", "4100", "5100", "", "", "", "Microsoft 365 and other seat licences"],
        ["one_time", "reservation", "4200", "5200", "", "", "", "Azure reservations"],
        ["one_time", "savings_plan", "4200", "5200", "", "", "", "Azure savings plans"],
        ["one_time", "marketplace", "4250", "5250", "", "", "", "Marketplace SaaS and images"],
        ["one_time", "software", "4260", "5260", "", "", "", "Perpetual software"],
        ["refund", "*", "4100", "5100", "", "", "", "refunds reverse the seat or purchase they refund"],
        ["refund", "reservation", "4200", "5200", "", "", "", "reservation refunds"],
        ["credit", "*", "4900", "5900", "", "", "", "Microsoft credits passed through at cost"],
        ["service", "*", "4300", "", "", "", "", "managed services (PSA time)"],
        ["manual", "*", "4400", "", "", "", "", "manual charges and goodwill credits"],
        ["spend_cap_credit", "*", "4950", "", "", "", "", "trial spend-cap credits"],
        ["adjustment", "*", "4500", "5500", "", "", "", "late Microsoft data for closed periods"],
    ];
    rows.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect()
}

/// Daily average CPU of every VM (first copy only when scaled), from the day it exists; the planted idle VM
/// stays below 10 % all month.
fn utilization(world: &World, rng: &mut ChaCha8Rng) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for c in &world.customers {
        for e in &c.entitlements {
            for g in &e.groups {
                for r in g.resources.iter().filter(|r| r.kind == Kind::Vm) {
                    let uri = format!(
                        "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
                        e.id,
                        g.name,
                        r.kind.provider(),
                        r.name
                    );
                    for d in r.start_day..=world.period.days() {
                        if e.gap.is_some_and(|(a, b)| (a..=b).contains(&d)) {
                            continue;
                        }
                        let pct = if r.idle {
                            rng.random_range(80..=850)
                        } else {
                            rng.random_range(1500..=8500)
                        };
                        rows.push(vec![
                            uri.clone(),
                            iso(world.day(d)),
                            fmt_dec(Decimal::new(pct, 2)),
                        ]);
                    }
                }
            }
        }
    }
    rows
}
