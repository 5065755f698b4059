//! The lines that do not come from rated Microsoft charges: PSA time as `service` lines, the clerk's manual lines,
//! and the late-data adjustment lines the job hands over.

use super::*;

/// The org unit owning a PSA project code: unit id, unit path, name.
type ProjectUnit = (String, Option<String>, Option<String>);

/// PSA time entries → `service` lines: billable entries of the period, hours × rate converted to the customer's
/// invoice currency by the market rate on the work date, one line per (customer, project code), mapped to the org
/// unit whose `psa_project_code` it is.
pub(super) fn service_lines(
    psa: &DataFrame,
    org_units: &DataFrame,
    customers: &BTreeMap<String, Customer>,
    rates: &MarketRates,
    period: Period,
    errors: &mut Errors,
) -> Result<Vec<Line>> {
    use schemas::stg_psa_time as p;
    let ids = cells::strs(psa, p::entry_id)?;
    let cust = cells::strs(psa, p::customer_id)?;
    let proj = cells::strs(psa, p::project_code)?;
    let day = cells::dates(psa, p::work_date)?;
    let hours = cells::decs(psa, p::hours)?;
    let rate = cells::decs(psa, p::hourly_rate)?;
    let ccy = cells::strs(psa, p::currency)?;
    let billable = cells::bools(psa, p::billable)?;
    let line_no = cells::ints(psa, p::line_number)?;

    // (customer, project code) → (unit id, unit path, name)
    use schemas::stg_org_units as o;
    let mut units: HashMap<(String, String), ProjectUnit> = HashMap::new();
    let (ou_id, ou_cust, ou_code, ou_path, ou_name) = (
        cells::strs(org_units, o::unit_id)?,
        cells::strs(org_units, o::customer_id)?,
        cells::strs(org_units, o::psa_project_code)?,
        cells::strs(org_units, o::unit_path)?,
        cells::strs(org_units, o::name)?,
    );
    for i in 0..ou_id.len() {
        if let (Some(u), Some(c), Some(code)) = (&ou_id[i], &ou_cust[i], &ou_code[i]) {
            units.insert(
                (c.clone(), code.clone()),
                (u.clone(), ou_path[i].clone(), ou_name[i].clone()),
            );
        }
    }

    struct Acc {
        hours: Decimal,
        amount: Decimal,
        entries: i64,
        first: Option<NaiveDate>,
        last: Option<NaiveDate>,
    }
    let mut groups: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
    for i in 0..ids.len() {
        let Some(d) = day[i] else { continue };
        if Period::of(d) != period || billable[i] != Some(true) {
            continue; // another period's work, or not billable: not on this invoice
        }
        let where_ = format!("psa_time_entries.csv line {}", line_no[i].unwrap_or(0));
        let customer = cust[i].clone().unwrap_or_default();
        let Some(c) = customers.get(&customer) else {
            errors.push(
                "unknown_customer",
                format!("{where_}: customer `{customer}` is not in customers.csv; add the customer or fix the entry"),
            );
            continue;
        };
        let (h, rt) = (hours[i].unwrap_or_default(), rate[i].unwrap_or_default());
        let from = ccy[i].clone().unwrap_or_default();
        let Some(local) = h.checked_mul(rt) else {
            errors.push(
                "overflow",
                format!("{where_}: hours × hourly_rate is too large to compute exactly"),
            );
            continue;
        };
        let amount = if from == c.currency {
            local
        } else {
            match market_rate(rates, &from, &c.currency, d) {
                Some((fx, _)) => match local.checked_mul(fx) {
                    Some(v) => v.round_dp(schemas::MONEY_SCALE as u32),
                    None => {
                        errors.push(
                            "overflow",
                            format!(
                                "{where_}: the converted amount is too large to compute exactly"
                            ),
                        );
                        continue;
                    }
                },
                None => {
                    errors.push(
                        "missing_fx_rate",
                        format!("{where_}: no market rate {from}→{} (or the reverse) on or before {d}; add it to fx_rates.csv", c.currency),
                    );
                    continue;
                }
            }
        };
        let code = proj[i].clone().unwrap_or_default();
        let acc = groups
            .entry((customer, c.currency.clone(), code))
            .or_insert(Acc {
                hours: Decimal::ZERO,
                amount: Decimal::ZERO,
                entries: 0,
                first: None,
                last: None,
            });
        acc.hours += h;
        acc.amount += amount;
        acc.entries += 1;
        acc.first = Some(acc.first.map_or(d, |f| f.min(d)));
        acc.last = Some(acc.last.map_or(d, |l| l.max(d)));
    }
    let mut lines = Vec::new();
    for ((customer, currency, code), acc) in groups {
        let unit = units.get(&(customer.clone(), code.clone()));
        let project = if code.is_empty() {
            "no project".to_string()
        } else {
            format!("project {code}")
        };
        let mut text = format!("Services: {project}");
        if let Some((u, _, name)) = unit {
            text.push_str(&format!(" ({})", name.clone().unwrap_or_else(|| u.clone())));
        }
        text.push_str(&format!(
            ", {} time entr{}",
            acc.entries,
            if acc.entries == 1 { "y" } else { "ies" }
        ));
        text.push_str(&date_range(acc.first, acc.last));
        let unit_price = if acc.hours.is_zero() {
            None
        } else {
            acc.amount
                .checked_div(acc.hours)
                .map(|p| p.round_dp(schemas::MONEY_SCALE as u32))
        };
        lines.push(Line {
            customer_id: customer,
            currency,
            line_type: "service".into(),
            group_key: format!("project={code}"),
            unit_id: unit.map(|u| u.0.clone()),
            unit_path: unit.map(|u| u.1.clone().unwrap_or_else(|| u.0.clone())),
            description: text,
            quantity: acc.hours,
            unit: Some("hours".into()),
            unit_price,
            amount_unrounded: acc.amount,
            part_count: acc.entries,
            ..Line::default()
        });
    }
    Ok(lines)
}

/// Manual lines of the period as they are: quantity × unit price in the line's own currency; `credit` lines are
/// negative whatever sign the clerk wrote.
pub(super) fn manual_lines(
    manual: &DataFrame,
    customers: &BTreeMap<String, Customer>,
    period: Period,
    errors: &mut Errors,
) -> Result<Vec<Line>> {
    use schemas::stg_manual_lines as m;
    let cust = cells::strs(manual, m::customer_id)?;
    let per = cells::strs(manual, m::period)?;
    let desc = cells::strs(manual, m::description)?;
    let qty = cells::decs(manual, m::quantity)?;
    let price = cells::decs(manual, m::unit_price)?;
    let ccy = cells::strs(manual, m::currency)?;
    let kind = cells::strs(manual, m::line_type)?;
    let reference = cells::strs(manual, m::reference)?;
    let line_no = cells::ints(manual, m::line_number)?;
    let mut lines = Vec::new();
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let this = period.to_string();
    for i in 0..cust.len() {
        if per[i].as_deref().map(str::trim) != Some(this.as_str()) {
            continue;
        }
        let where_ = format!("manual_lines.csv line {}", line_no[i].unwrap_or(0));
        let customer = cust[i].clone().unwrap_or_default();
        if !customers.contains_key(&customer) {
            errors.push(
                "unknown_customer",
                format!("{where_}: customer `{customer}` is not in customers.csv; add the customer or fix the line"),
            );
            continue;
        }
        let currency = ccy[i].clone().unwrap_or_default();
        let credit = kind[i].as_deref() == Some("credit");
        let (mut q, mut p) = (qty[i].unwrap_or_default(), price[i].unwrap_or_default());
        if credit {
            q = q.abs();
            p = -p.abs();
        }
        let Some(amount) = q.checked_mul(p) else {
            errors.push(
                "overflow",
                format!("{where_}: quantity × unit_price is too large to compute exactly"),
            );
            continue;
        };
        let description = desc[i]
            .clone()
            .or_else(|| reference[i].clone())
            .unwrap_or_else(|| "Manual line".into());
        // The key names the clerk's reference and text; a repeat gets its occurrence number so keys stay unique.
        let base = format!(
            "manual={}|{}",
            reference[i].clone().unwrap_or_default(),
            description
        );
        let n = seen.entry((customer.clone(), base.clone())).or_default();
        *n += 1;
        let group_key = if *n == 1 { base } else { format!("{base}#{n}") };
        lines.push(Line {
            customer_id: customer,
            currency,
            line_type: "manual".into(),
            group_key,
            description,
            quantity: q,
            unit_price: Some(p),
            amount_unrounded: amount,
            part_count: 1,
            ..Line::default()
        });
    }
    Ok(lines)
}

/// Adjustment lines given by the job (already rounded differences; see [`adjustment_lines`]).
pub(super) fn given_adjustments(
    adj: &DataFrame,
    customers: &BTreeMap<String, Customer>,
    errors: &mut Errors,
) -> Result<Vec<Line>> {
    if adj.height() == 0 {
        return Ok(Vec::new());
    }
    let cust = cells::strs(adj, fl::customer_id)?;
    let ccy = cells::strs(adj, fl::currency)?;
    let fam = cells::strs(adj, fl::product_family)?;
    let sub = cells::strs(adj, fl::subscription_id)?;
    let gk = cells::strs(adj, fl::group_key)?;
    let uid = cells::strs(adj, fl::unit_id)?;
    let upath = cells::strs(adj, fl::unit_path)?;
    let desc = cells::strs(adj, fl::description)?;
    let qty = cells::decs(adj, fl::quantity)?;
    let unit = cells::strs(adj, fl::unit)?;
    let uprice = cells::decs(adj, fl::unit_price)?;
    let au = cells::decs(adj, fl::amount_unrounded)?;
    let am = cells::decs(adj, fl::amount)?;
    let cost = cells::decs(adj, fl::cost)?;
    let parts = cells::ints(adj, fl::part_count)?;
    let corrected = cells::strs(adj, fl::corrected_period)?;
    let original = cells::strs(adj, fl::original_line_id)?;
    let mut lines = Vec::new();
    for i in 0..cust.len() {
        let customer = cust[i].clone().unwrap_or_default();
        if !customers.contains_key(&customer) {
            errors.push(
                "unknown_customer",
                format!(
                    "an adjustment for customer `{customer}` (line `{}`) has no customer in customers.csv to invoice it to; keep the customer until its adjustments are billed",
                    original[i].clone().unwrap_or_default()
                ),
            );
            continue;
        }
        let amount = am[i].unwrap_or_default();
        lines.push(Line {
            customer_id: customer,
            currency: ccy[i].clone().unwrap_or_default(),
            line_type: "adjustment".into(),
            product_family: fam[i].clone(),
            subscription_id: sub[i].clone(),
            group_key: gk[i].clone().unwrap_or_default(),
            unit_id: uid[i].clone(),
            unit_path: upath[i].clone(),
            description: desc[i].clone().unwrap_or_default(),
            quantity: qty[i].unwrap_or_default(),
            unit: unit[i].clone(),
            unit_price: uprice[i],
            amount_unrounded: au[i].unwrap_or(amount),
            amount,
            cost: cost[i].unwrap_or_default(),
            part_count: parts[i].unwrap_or(0),
            corrected_period: corrected[i].clone(),
            original_line_id: original[i].clone(),
        });
    }
    Ok(lines)
}
