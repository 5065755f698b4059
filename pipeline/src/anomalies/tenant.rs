//! Monitors of the customer's tenant: `license_waste` (seats against licence activity) and `underutilization`
//! (VM CPU from `utilization.csv`), which read tenant telemetry and so run only while the customer's admin
//! consent holds, and `consent_expiring` / `consent_lapsed`, which watch that consent. A customer whose consent
//! lapsed is still billed (the charges are the partner's own data); its telemetry is not analysed, and one
//! `skipped` row per telemetry monitor says so.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDate};
use polars::prelude::DataFrame;
use rust_decimal::Decimal;

use super::format::{day, days, money, number};
use super::{Anomaly, Customer, Customers, Severity, ThresholdSet, Window, monitor, score};
use crate::error::Result;
use crate::invoice::cells;

fn lapsed_row(monitor: &'static str, c: &Customer, what: &str) -> Anomaly {
    let why = match (c.consent_status.as_deref(), c.consent_expires_on) {
        (Some(s), Some(d)) if s != "active" => format!("admin consent is `{s}` (expiry date {})", day(d)),
        (Some(s), None) if s != "active" => format!("admin consent is `{s}`"),
        (_, Some(d)) => format!("admin consent expired on {}", day(d)),
        _ => "admin consent has lapsed".into(),
    };
    Anomaly::skipped(
        monitor,
        &c.id,
        "tenant telemetry",
        format!("{}: no {what} analysis: {why}; its charges are still billed, its tenant telemetry is not analysed until consent is renewed", c.name),
    )
}

/// Seats of one SKU bought by one tenant: the latest seat count per Partner Center subscription, summed.
#[derive(Default)]
struct Seats {
    /// pc subscription → (latest charge start date, seats then, price per seat per billing cycle, currency)
    subs: BTreeMap<String, (NaiveDate, Decimal, Option<Decimal>, String)>,
    name: Option<String>,
}

/// `license_waste`: per tenant and licence SKU (`ProductId:SkuId`), the seats bought — for each Partner Center
/// subscription the quantity of its latest non-refund licence line (a seat change's new line replaces the
/// cycle charge) — against the users of `license_activity.csv` active within `license_unused_days` of the
/// as-of date. Fires when seats > active users; the cost is the unused seats at the latest line's price per
/// seat per billing cycle (price / (q × f), undoing the proration).
pub fn license_waste(seat_lines: &DataFrame, activity: &DataFrame, cs: &Customers, t: &ThresholdSet, w: &Window) -> Result<Vec<Anomaly>> {
    let mut out = Vec::new();
    if activity.height() == 0 {
        out.push(Anomaly::skipped(
            monitor::LICENSE_WASTE,
            "",
            "",
            "license_waste not analysed: license_activity.csv is not configured or has no rows".into(),
        ));
        return Ok(out);
    }
    // (tenant, product:sku) → seats
    let mut bought: BTreeMap<(String, String), Seats> = BTreeMap::new();
    {
        let src = cells::strs(seat_lines, "source_customer_id")?;
        let ccy = cells::strs(seat_lines, "invoice_currency")?;
        let sub = cells::strs(seat_lines, "pc_subscription_id")?;
        let product = cells::strs(seat_lines, "product_id")?;
        let sku = cells::strs(seat_lines, "sku_id")?;
        let start = cells::dates(seat_lines, "charge_start_date")?;
        let positive = cells::bools(seat_lines, "positive")?;
        let name = cells::strs(seat_lines, "sku_name")?;
        let q = cells::decs(seat_lines, "q")?;
        let cycles = cells::decs(seat_lines, "seat_cycles")?;
        let price = cells::decs(seat_lines, "price")?;
        for i in 0..seat_lines.height() {
            let (Some(id), Some(p), Some(d), Some(true), Some(q)) = (src[i].clone(), product[i].clone(), start[i], positive[i], q[i]) else {
                continue;
            };
            let key = match sku[i].as_deref() {
                Some(s) => format!("{p}:{s}"),
                None => p,
            };
            let per_seat = match (price[i], cycles[i]) {
                (Some(pr), Some(c)) if !c.is_zero() => Some(pr / c),
                _ => None,
            };
            let e = bought.entry((id, key)).or_default();
            if e.name.is_none() {
                e.name = name[i].clone();
            }
            let slot = e.subs.entry(sub[i].clone().unwrap_or_default()).or_insert((d, q, per_seat, ccy[i].clone().unwrap_or_default()));
            // The latest line wins; two lines starting the same day: the larger count (a new count, not a refund).
            if d > slot.0 || (d == slot.0 && q > slot.1) {
                *slot = (d, q, per_seat, ccy[i].clone().unwrap_or_default());
            }
        }
    }
    // (tenant, product:sku) → (active users, users); tenants with any activity row.
    let ids = cells::strs(activity, schemas::stg_license_activity::customer_id)?;
    let products = cells::strs(activity, schemas::stg_license_activity::product_id)?;
    let last = cells::dates(activity, schemas::stg_license_activity::last_activity_date)?;
    let mut users: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut with_activity = BTreeSet::new();
    for i in 0..activity.height() {
        let (Some(id), Some(p)) = (ids[i].clone(), products[i].clone()) else { continue };
        with_activity.insert(id.clone());
        let days = t.for_customer(&id).license_unused_days;
        let active = last[i].is_some_and(|d| (w.as_of - d).num_days() <= days);
        let e = users.entry((id, p)).or_default();
        e.0 += i64::from(active);
        e.1 += 1;
    }
    let mut skipped_tenants = BTreeSet::new();
    for ((id, sku), seats) in &bought {
        let Some(c) = cs.get(id) else { continue };
        if c.consent_lapsed(w.as_of) {
            continue; // one skipped row per customer, below
        }
        if !with_activity.contains(id) {
            if skipped_tenants.insert(id.clone()) {
                out.push(Anomaly::skipped(
                    monitor::LICENSE_WASTE,
                    id,
                    "license_activity",
                    format!("{}: no licence-waste analysis: license_activity.csv has no rows for this customer", c.name),
                ));
            }
            continue;
        }
        let purchased: Decimal = seats.subs.values().map(|s| s.1).sum();
        let (active, _) = users.get(&(id.clone(), sku.clone())).copied().unwrap_or((0, 0));
        let active = Decimal::from(active);
        if purchased <= active {
            continue;
        }
        let unused = purchased - active;
        let days = t.for_customer(id).license_unused_days;
        // The cost of the unused seats, at the latest line's price per seat (per subscription's currency).
        let priced: Vec<&(NaiveDate, Decimal, Option<Decimal>, String)> = seats.subs.values().filter(|s| s.2.is_some()).collect();
        let cost = match priced.first() {
            Some(first) if priced.iter().all(|s| s.3 == first.3 && s.2 == first.2) => {
                let per = first.2.unwrap_or_default();
                format!(" ({} per billing cycle at {} a seat)", money(unused * per, &first.3), money(per, &first.3))
            }
            _ => String::new(),
        };
        out.push(Anomaly {
            monitor: monitor::LICENSE_WASTE,
            severity: Severity::Warning,
            customer_id: id.clone(),
            subject: sku.clone(),
            observed: Some(purchased),
            expected: Some(active),
            threshold: Some(Decimal::from(days)),
            first_seen: Some(w.as_of),
            last_seen: Some(w.as_of),
            message: format!(
                "{}: {} of {} {} seats ({sku}) have had no active user in the {days} days to {}{cost}; reassign or reduce them at the next renewal",
                c.name,
                unused.normalize(),
                purchased.normalize(),
                seats.name.as_deref().unwrap_or("licence"),
                day(w.as_of),
            ),
            score: score(purchased, active),
        });
    }
    for c in cs.values().filter(|c| c.consent_lapsed(w.as_of)) {
        out.push(lapsed_row(monitor::LICENSE_WASTE, c, "licence-waste"));
    }
    Ok(out)
}

/// `underutilization`: a resource of `utilization.csv` whose daily average CPU was below `cpu_floor_pct` on at
/// least `cpu_days` consecutive days of the period (the longest such run; the latest of equal runs), with what it
/// cost its tenant's invoice this month. Resources without usage in the period are not billed and not judged.
pub fn underutilization(
    utilization: &DataFrame,
    resources: &DataFrame,
    resource_cost: &DataFrame,
    cs: &Customers,
    t: &ThresholdSet,
    w: &Window,
) -> Result<Vec<Anomaly>> {
    let mut out = Vec::new();
    if utilization.height() == 0 {
        out.push(Anomaly::skipped(
            monitor::UNDERUTILIZATION,
            "",
            "",
            "underutilization not analysed: utilization.csv is not configured or has no rows".into(),
        ));
        return Ok(out);
    }
    // resource key → (tenant, ResourceURI as exported)
    let mut owner: BTreeMap<String, (String, String)> = BTreeMap::new();
    {
        let ids = cells::strs(resources, "customer_id")?;
        let keys = cells::strs(resources, "resource_key")?;
        let uris = cells::strs(resources, "resource_uri")?;
        for i in 0..resources.height() {
            if let (Some(id), Some(k)) = (ids[i].clone(), keys[i].clone()) {
                let uri = uris[i].clone().unwrap_or_else(|| k.clone());
                owner.entry(k).or_insert((id, uri));
            }
        }
    }
    // (resource key, tenant) → Σ price on the tenant's own invoice, with its currency
    let mut cost: BTreeMap<String, (Decimal, String)> = BTreeMap::new();
    {
        let src = cells::strs(resource_cost, "source_customer_id")?;
        let payer = cells::strs(resource_cost, "customer_id")?;
        let ccy = cells::strs(resource_cost, "invoice_currency")?;
        let keys = cells::strs(resource_cost, "resource_key")?;
        let price = cells::decs(resource_cost, "price")?;
        for i in 0..resource_cost.height() {
            if src[i].is_none() || src[i] != payer[i] {
                continue;
            }
            let Some(k) = keys[i].clone() else { continue };
            let e = cost.entry(k).or_insert((Decimal::ZERO, ccy[i].clone().unwrap_or_default()));
            e.0 += price[i].unwrap_or_default();
        }
    }
    // resource key → date → CPU %
    let uris = cells::strs(utilization, schemas::stg_utilization::resource_uri)?;
    let when = cells::dates(utilization, schemas::stg_utilization::date)?;
    let cpu = cells::decs(utilization, schemas::stg_utilization::cpu_avg_pct)?;
    let mut series: BTreeMap<String, BTreeMap<NaiveDate, Decimal>> = BTreeMap::new();
    for i in 0..utilization.height() {
        let (Some(u), Some(d), Some(v)) = (uris[i].as_deref(), when[i], cpu[i]) else { continue };
        if crate::context::Period::of(d) != w.period || d > w.as_of {
            continue;
        }
        series.entry(u.to_lowercase()).or_default().insert(d, v);
    }
    for (key, by_day) in &series {
        let Some((id, uri)) = owner.get(key) else { continue };
        let Some(c) = cs.get(id) else { continue };
        if c.consent_lapsed(w.as_of) {
            continue;
        }
        let th = t.for_customer(id);
        // Longest run of consecutive days below the floor (the latest of equal runs).
        let (mut best, mut cur): (Option<(NaiveDate, NaiveDate, Decimal)>, Option<(NaiveDate, NaiveDate, Decimal)>) = (None, None);
        for (d, v) in by_day {
            if *v < th.cpu_floor_pct {
                cur = match cur {
                    Some((a, b, peak)) if b + Duration::days(1) == *d => Some((a, *d, peak.max(*v))),
                    _ => Some((*d, *d, *v)),
                };
                let len = |r: &(NaiveDate, NaiveDate, Decimal)| (r.1 - r.0).num_days();
                if let Some(r) = cur
                    && best.is_none_or(|b| len(&r) >= len(&b))
                {
                    best = Some(r);
                }
            } else {
                cur = None;
            }
        }
        let Some((a, b, peak)) = best else { continue };
        let n = (b - a).num_days() + 1;
        if n < th.cpu_days {
            continue;
        }
        let name = uri.rsplit('/').next().unwrap_or(uri);
        let cost_text = match cost.get(key) {
            Some((p, ccy)) => format!("; it cost {} this month", money(*p, ccy)),
            None => String::new(),
        };
        out.push(Anomaly {
            monitor: monitor::UNDERUTILIZATION,
            severity: Severity::Warning,
            customer_id: id.clone(),
            subject: uri.clone(),
            observed: Some(peak),
            expected: Some(th.cpu_floor_pct),
            threshold: Some(Decimal::from(th.cpu_days)),
            first_seen: Some(a),
            last_seen: Some(b),
            message: format!(
                "{}: {name} averaged below {} % CPU on {n} consecutive days ({}, highest {} %){cost_text}; resize or shut it down",
                c.name,
                th.cpu_floor_pct.normalize(),
                days(a, b),
                number(peak, 2),
            ),
            score: score(Decimal::from(n), Decimal::from(th.cpu_days)),
        });
    }
    for c in cs.values().filter(|c| c.consent_lapsed(w.as_of)) {
        out.push(lapsed_row(monitor::UNDERUTILIZATION, c, "underutilization"));
    }
    Ok(out)
}

/// `consent_lapsed` (critical): `consent_status` other than `active`, or `consent_expires_on` before the as-of
/// date. `consent_expiring` (warning): active, expiring within `consent_expiring_days` of the as-of date.
/// `observed` is the days from the as-of date to the expiry (negative once past), `threshold` the days of notice.
pub fn consent(cs: &Customers, t: &ThresholdSet, w: &Window) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for c in cs.values() {
        let notice = t.for_customer(&c.id).consent_expiring_days;
        let left = c.consent_expires_on.map(|d| (d - w.as_of).num_days());
        let status = c.consent_status.as_deref();
        let (monitor, severity, first, why) = if status.is_some_and(|s| s != "active") {
            let first = c.consent_expires_on.map(|d| (d + Duration::days(1)).max(w.period.start()).min(w.as_of)).unwrap_or(w.period.start());
            let why = match c.consent_expires_on {
                Some(d) => format!("admin consent is `{}` (expiry date {})", status.unwrap_or_default(), day(d)),
                None => format!("admin consent is `{}`", status.unwrap_or_default()),
            };
            (monitor::CONSENT_LAPSED, Severity::Critical, first, why)
        } else if let (Some(d), Some(n)) = (c.consent_expires_on, left) {
            if n < 0 {
                let first = (d + Duration::days(1)).max(w.period.start());
                (monitor::CONSENT_LAPSED, Severity::Critical, first, format!("admin consent expired on {}", day(d)))
            } else if n <= notice {
                (monitor::CONSENT_EXPIRING, Severity::Warning, w.as_of, format!("admin consent expires on {} ({n} days after {})", day(d), day(w.as_of)))
            } else {
                continue;
            }
        } else {
            continue;
        };
        let action = if severity == Severity::Critical {
            "billing continues; licence and utilization analysis stop until the customer renews consent (GDAP)"
        } else {
            "ask the customer to renew consent (GDAP) before it lapses"
        };
        out.push(Anomaly {
            monitor,
            severity,
            customer_id: c.id.clone(),
            subject: "consent".into(),
            observed: left.map(Decimal::from),
            expected: None,
            threshold: Some(Decimal::from(notice)),
            first_seen: Some(first),
            last_seen: Some(w.as_of),
            message: format!("{}: {why}; {action}", c.name),
            score: left.map(|n| Decimal::from(notice - n)).unwrap_or(Decimal::from(notice)),
        });
    }
    out
}

