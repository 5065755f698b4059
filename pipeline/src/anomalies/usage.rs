//! Monitors of the daily usage itself, per Azure subscription: `unusual_deployment` (resources first seen on a
//! day), `usage_gap` (days without rows) and `tag_compliance` (share of cost allocated by tag rules).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDate};
use polars::prelude::DataFrame;
use rust_decimal::Decimal;

use super::format::{day, days, number, pct};
use super::{Anomaly, Customers, Severity, ThresholdSet, Window, dates, monitor, score};
use crate::context::Period;
use crate::error::Result;
use crate::invoice::cells;

/// Days of the trailing window a day's new resources are compared with.
pub const TRAILING_DAYS: i64 = 7;

/// Usage dates and name of each (customer, subscription).
struct Subscription {
    name: Option<String>,
    days: BTreeSet<NaiveDate>,
}

fn subscriptions(df: &DataFrame) -> Result<BTreeMap<(String, String), Subscription>> {
    let ids = cells::strs(df, "customer_id")?;
    let subs = cells::strs(df, "subscription_id")?;
    let when = cells::dates(df, "usage_date")?;
    let names = cells::strs(df, "subscription_name")?;
    let mut out: BTreeMap<(String, String), Subscription> = BTreeMap::new();
    for i in 0..df.height() {
        let (Some(id), Some(d)) = (ids[i].clone(), when[i]) else { continue };
        let s = out.entry((id, subs[i].clone().unwrap_or_default())).or_insert_with(|| Subscription { name: None, days: BTreeSet::new() });
        s.days.insert(d);
        if s.name.is_none() {
            s.name = names[i].clone();
        }
    }
    Ok(out)
}

/// "subscription Dev/Test (8e74…)" for messages.
fn describe(sub: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if !sub.is_empty() => format!("subscription {n} ({sub})"),
        Some(n) => format!("subscription {n}"),
        None if sub.is_empty() => "usage without a subscription id".into(),
        None => format!("subscription {sub}"),
    }
}

/// The data window: the last usage date of the snapshot (the period's last day without daily usage).
pub fn window(subscription_days: &DataFrame, period: Period) -> Result<Window> {
    let last = cells::dates(subscription_days, "usage_date")?.into_iter().flatten().filter(|d| Period::of(*d) == period).max();
    Ok(Window { period, as_of: last.unwrap_or(period.end()), has_daily_usage: last.is_some() })
}

/// `unusual_deployment`: per subscription, the resources (ResourceURIs) first seen on a day above
/// `deployment_factor` × the trailing norm: the mean number of new resources a day over the 7 days before,
/// counted from the day after the subscription's first usage day (its first day is the baseline: everything is
/// new then), and at least 1, so that one new resource after a quiet week is not a spike.
pub fn unusual_deployment(df: &DataFrame, subscription_days: &DataFrame, cs: &Customers, t: &ThresholdSet, w: &Window) -> Result<Vec<Anomaly>> {
    if !w.has_daily_usage {
        return Ok(vec![Anomaly::skipped(
            monitor::UNUSUAL_DEPLOYMENT,
            "",
            "",
            "unusual_deployment not analysed: the period's snapshot has no daily rated usage (ResourceURIs by day)".into(),
        )]);
    }
    let ids = cells::strs(df, "customer_id")?;
    let subs = cells::strs(df, "subscription_id")?;
    let first = cells::dates(df, "first_seen")?;
    let groups = cells::strs(df, "resource_group")?;
    // (customer, subscription) → day → (new resources, their resource groups)
    let mut new: BTreeMap<(String, String), BTreeMap<NaiveDate, (i64, BTreeSet<String>)>> = BTreeMap::new();
    for i in 0..df.height() {
        let (Some(id), Some(d)) = (ids[i].clone(), first[i]) else { continue };
        let e = new.entry((id, subs[i].clone().unwrap_or_default())).or_default().entry(d).or_default();
        e.0 += 1;
        e.1.insert(groups[i].clone().unwrap_or_default());
    }
    let names = subscriptions(subscription_days)?;
    let mut out = Vec::new();
    for ((id, sub), by_day) in &new {
        let Some(c) = cs.get(id) else { continue };
        let Some(start) = by_day.keys().next().copied() else { continue };
        let factor = t.for_customer(id).deployment_factor;
        let count = |d: NaiveDate| by_day.get(&d).map(|e| e.0).unwrap_or(0);
        for d in dates(start + Duration::days(1), w.as_of) {
            let n = count(d);
            if n == 0 {
                continue;
            }
            let from = (d - Duration::days(TRAILING_DAYS)).max(start + Duration::days(1));
            let trailing: Vec<i64> = dates(from, d - Duration::days(1)).map(count).collect();
            let mean = if trailing.is_empty() {
                Decimal::ZERO
            } else {
                Decimal::from(trailing.iter().sum::<i64>()) / Decimal::from(trailing.len())
            };
            let norm = mean.max(Decimal::ONE);
            let limit = factor * norm;
            if Decimal::from(n) <= limit {
                continue;
            }
            let rgs: Vec<&str> = by_day[&d].1.iter().map(String::as_str).filter(|g| !g.is_empty()).collect();
            out.push(Anomaly {
                monitor: monitor::UNUSUAL_DEPLOYMENT,
                severity: Severity::Warning,
                customer_id: id.clone(),
                subject: sub.clone(),
                observed: Some(Decimal::from(n)),
                expected: Some(norm),
                threshold: Some(factor),
                first_seen: Some(d),
                last_seen: Some(d),
                message: format!(
                    "{}: {n} new resources in {} on {}{}, above {}× the trailing norm of {} a day (mean {} over the {} days before, counted as at least 1)",
                    c.name,
                    describe(sub, names.get(&(id.clone(), sub.clone())).and_then(|s| s.name.as_deref())),
                    day(d),
                    if rgs.is_empty() { String::new() } else { format!(" (resource group {})", rgs.join(", ")) },
                    factor.normalize(),
                    number(norm, 2),
                    number(mean, 2),
                    trailing.len(),
                ),
                score: score(Decimal::from(n), limit),
            });
        }
    }
    Ok(out)
}

/// `usage_gap`: days without any daily-usage row for a subscription between its first usage day in the period
/// and the snapshot's last usage date; one row per run of missing days.
pub fn usage_gap(df: &DataFrame, cs: &Customers, w: &Window) -> Result<Vec<Anomaly>> {
    if !w.has_daily_usage {
        return Ok(vec![Anomaly::skipped(
            monitor::USAGE_GAP,
            "",
            "",
            "usage_gap not analysed: the period's snapshot has no daily rated usage".into(),
        )]);
    }
    let mut out = Vec::new();
    for ((id, sub), s) in subscriptions(df)? {
        let Some(c) = cs.get(&id) else { continue };
        let Some(start) = s.days.iter().copied().find(|d| Period::of(*d) == w.period) else { continue };
        let mut run: Option<(NaiveDate, NaiveDate)> = None;
        let mut runs = Vec::new();
        for d in dates(start, w.as_of) {
            if s.days.contains(&d) {
                runs.extend(run.take());
            } else {
                run = Some(run.map_or((d, d), |(a, _)| (a, d)));
            }
        }
        runs.extend(run);
        for (a, b) in runs {
            let n = (b - a).num_days() + 1;
            out.push(Anomaly {
                monitor: monitor::USAGE_GAP,
                severity: Severity::Warning,
                customer_id: id.clone(),
                subject: sub.clone(),
                observed: Some(Decimal::from(n)),
                expected: Some(Decimal::ZERO),
                threshold: Some(Decimal::ZERO),
                first_seen: Some(a),
                last_seen: Some(b),
                message: format!(
                    "{}: {} has no usage rows on {} ({n} day{}) although it has usage since {} and the export runs to {}; check the export (ask Microsoft for a re-export) or the subscription",
                    c.name,
                    describe(&sub, s.name.as_deref()),
                    days(a, b),
                    if n == 1 { "" } else { "s" },
                    day(start),
                    day(w.as_of),
                ),
                score: Decimal::from(n),
            });
        }
    }
    Ok(out)
}

/// The customers `tag_compliance` judges, as (every customer, lower-cased ids): those with a tag rule naming a
/// `tag_key`; a rule without `customer_id` (or `*`) counts for every customer. The close report judges the same way.
pub fn tag_judged_customers(tag_rules: &DataFrame) -> Result<(bool, BTreeSet<String>)> {
    let rule_customers = cells::strs(tag_rules, schemas::stg_tag_rules::customer_id)?;
    let rule_keys = cells::strs(tag_rules, schemas::stg_tag_rules::tag_key)?;
    let mut everyone = false;
    let mut tagging = BTreeSet::new();
    for (c, k) in rule_customers.iter().zip(&rule_keys) {
        if k.is_none() {
            continue;
        }
        match c.as_deref() {
            None | Some("*") => everyone = true,
            Some(id) => {
                tagging.insert(id.to_lowercase());
            }
        }
    }
    Ok((everyone, tagging))
}

/// `tag_compliance`: per source customer and subscription, the share of its Azure usage cost allocated by a tag
/// rule that names a tag key (`int_tag_compliance`) below `tag_compliance_warning` (critical below
/// `tag_compliance_critical`). Only customers that allocate by tags are judged: those with a tag rule naming a
/// `tag_key` (a rule without `customer_id` counts for every customer).
pub fn tag_compliance(
    df: &DataFrame,
    tag_rules: &DataFrame,
    subscription_days: &DataFrame,
    cs: &Customers,
    t: &ThresholdSet,
    w: &Window,
) -> Result<Vec<Anomaly>> {
    let (everyone, tagging) = tag_judged_customers(tag_rules)?;
    if !everyone && tagging.is_empty() {
        return Ok(vec![Anomaly::skipped(
            monitor::TAG_COMPLIANCE,
            "",
            "",
            "tag_compliance not analysed: no tag rule in tag_rules.csv names a tag_key, so no cost is allocated by tags".into(),
        )]);
    }
    let subs = subscriptions(subscription_days)?;
    let ids = cells::strs(df, "customer_id")?;
    let sub_ids = cells::strs(df, "subscription_id")?;
    let share = cells::decs(df, "compliance")?;
    let mut out = Vec::new();
    for i in 0..df.height() {
        let (Some(id), Some(v)) = (ids[i].clone(), share[i]) else { continue };
        let Some(c) = cs.get(&id) else { continue };
        if !everyone && !tagging.contains(&id.to_lowercase()) {
            continue;
        }
        let th = t.for_customer(&id);
        let (severity, level) = if v < th.tag_compliance_critical {
            (Severity::Critical, th.tag_compliance_critical)
        } else if v < th.tag_compliance_warning {
            (Severity::Warning, th.tag_compliance_warning)
        } else {
            continue;
        };
        let sub = sub_ids[i].clone().unwrap_or_default();
        let info = subs.get(&(id.clone(), sub.clone()));
        let first = info.and_then(|s| s.days.iter().next().copied()).unwrap_or(w.period.start());
        out.push(Anomaly {
            monitor: monitor::TAG_COMPLIANCE,
            severity,
            customer_id: id.clone(),
            subject: sub.clone(),
            observed: Some(v),
            expected: Some(th.tag_compliance_warning),
            threshold: Some(level),
            first_seen: Some(first),
            last_seen: Some(w.as_of),
            message: format!(
                "{}: only {} of the Azure cost of {} to {} is allocated by a tag rule ({} below {}); tag its resources or add tag rules",
                c.name,
                pct(v),
                describe(&sub, info.and_then(|s| s.name.as_deref())),
                day(w.as_of),
                severity.as_str(),
                pct(level),
            ),
            score: score(v, level),
        });
    }
    Ok(out)
}
