//! The output frames of the invoice stage, `fct_invoice_lines` and `fct_invoices`, built from the numbered lines,
//! and the DESIGN §6 checks recomputed from those frames.

use super::*;

/// `d` with exactly `dp` places, for text (`100` EUR → `100.00`).
pub(super) fn fixed(d: Decimal, dp: u32) -> String {
    let mut v = d.round_dp(dp);
    v.rescale(dp);
    v.to_string()
}

fn line_id(number: &str, line_no: usize) -> String {
    format!("{number}-{line_no:04}")
}

pub(super) fn fct_invoice_lines(
    lines: &[Line],
    numbers: &BTreeMap<(String, String), String>,
    period: Period,
) -> Result<DataFrame> {
    let n = lines.len();
    let mut ids = Vec::with_capacity(n);
    let mut nums = Vec::with_capacity(n);
    let mut line_nos = Vec::with_capacity(n);
    let mut counter: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines {
        let num = numbers
            .get(&(l.customer_id.clone(), l.currency.clone()))
            .cloned()
            .unwrap_or_default();
        let k = counter
            .entry(
                numbers
                    .get(&(l.customer_id.clone(), l.currency.clone()))
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .or_default();
        *k += 1;
        ids.push(Some(line_id(&num, *k)));
        line_nos.push(*k as i64);
        nums.push(Some(num));
    }
    let st = |f: &dyn Fn(&Line) -> Option<String>| -> Vec<Option<String>> {
        lines.iter().map(f).collect()
    };
    let dc = |f: &dyn Fn(&Line) -> Option<Decimal>| -> Vec<Option<Decimal>> {
        lines.iter().map(f).collect()
    };
    let columns = vec![
        cells::str_column(fl::invoice_line_id, &ids),
        cells::str_column(fl::invoice_number, &nums),
        cells::str_column(fl::period, &vec![Some(period.to_string()); n]),
        cells::str_column(fl::customer_id, &st(&|l| Some(l.customer_id.clone()))),
        cells::str_column(fl::currency, &st(&|l| Some(l.currency.clone()))),
        cells::int_column(fl::line_no, &line_nos),
        cells::str_column(fl::line_type, &st(&|l| Some(l.line_type.clone()))),
        cells::str_column(fl::product_family, &st(&|l| l.product_family.clone())),
        cells::str_column(fl::subscription_id, &st(&|l| l.subscription_id.clone())),
        cells::str_column(fl::group_key, &st(&|l| Some(l.group_key.clone()))),
        cells::str_column(fl::unit_id, &st(&|l| l.unit_id.clone())),
        cells::str_column(fl::unit_path, &st(&|l| l.unit_path.clone())),
        cells::str_column(fl::description, &st(&|l| Some(l.description.clone()))),
        cells::dec_column(fl::quantity, &dc(&|l| Some(l.quantity))),
        cells::str_column(fl::unit, &st(&|l| l.unit.clone())),
        cells::dec_column(fl::unit_price, &dc(&|l| l.unit_price)),
        cells::dec_column(fl::amount_unrounded, &dc(&|l| Some(l.amount_unrounded))),
        cells::dec_column(fl::amount, &dc(&|l| Some(l.amount))),
        cells::dec_column(fl::tax, &dc(&|_| Some(Decimal::ZERO))),
        cells::dec_column(fl::cost, &dc(&|l| Some(l.cost))),
        cells::dec_column(fl::margin, &dc(&|l| Some(l.amount - l.cost))),
        cells::int_column(
            fl::part_count,
            &lines.iter().map(|l| l.part_count).collect::<Vec<_>>(),
        ),
        cells::str_column(fl::corrected_period, &st(&|l| l.corrected_period.clone())),
        cells::str_column(fl::original_line_id, &st(&|l| l.original_line_id.clone())),
    ];
    cells::frame(columns, &fl::schema(), fl::TABLE)
}

pub(super) fn fct_invoices_frame(
    lines: &[Line],
    numbers: &BTreeMap<(String, String), String>,
    customers: &BTreeMap<String, Customer>,
    unpriced: &BTreeMap<String, i64>,
    ctx: &RunContext,
) -> Result<DataFrame> {
    #[derive(Default)]
    struct Totals {
        lines: i64,
        subtotal: Decimal,
        cost: Decimal,
    }
    let mut totals: BTreeMap<&(String, String), Totals> =
        numbers.keys().map(|k| (k, Totals::default())).collect();
    for l in lines {
        if let Some(t) = totals.get_mut(&(l.customer_id.clone(), l.currency.clone())) {
            t.lines += 1;
            t.subtotal += l.amount;
            t.cost += l.cost;
        }
    }
    // Unpriced parts are counted on the customer's invoice in its invoice currency, or its first invoice.
    let mut unpriced_on: BTreeMap<&(String, String), i64> = BTreeMap::new();
    for (customer, count) in unpriced {
        let Some(c) = customers.get(customer) else {
            continue;
        };
        let own = (customer.clone(), c.currency.clone());
        let key = numbers
            .get_key_value(&own)
            .map(|(k, _)| k)
            .or_else(|| numbers.keys().find(|k| &k.0 == customer));
        if let Some(k) = key {
            *unpriced_on.entry(k).or_default() += count;
        }
    }
    let status = if ctx.mode == RunMode::Close {
        "final"
    } else {
        "provisional"
    };
    let invoice_date = ctx.policies.invoice_date;
    let mut cols: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    let mut decs: BTreeMap<&str, Vec<Option<Decimal>>> = BTreeMap::new();
    let (mut line_count, mut unpriced_count, mut due) = (Vec::new(), Vec::new(), Vec::new());
    for (key, t) in &totals {
        let c = customers.get(&key.0);
        let mut push =
            |name: &'static str, v: Option<String>| cols.entry(name).or_default().push(v);
        push(fi::invoice_number, numbers.get(*key).cloned());
        push(fi::period, Some(ctx.period.to_string()));
        push(fi::customer_id, Some(key.0.clone()));
        push(fi::customer_name, c.and_then(|c| c.name.clone()));
        push(fi::currency, Some(key.1.clone()));
        push(fi::template, c.map(|c| c.template.clone()));
        push(fi::status, Some(status.into()));
        push(fi::issuer, Some(ctx.policies.issuer.clone()));
        let mut dpush =
            |name: &'static str, v: Decimal| decs.entry(name).or_default().push(Some(v));
        dpush(fi::subtotal, t.subtotal);
        dpush(fi::tax, Decimal::ZERO);
        dpush(fi::total, t.subtotal);
        dpush(fi::cost, t.cost);
        dpush(fi::margin, t.subtotal - t.cost);
        line_count.push(t.lines);
        unpriced_count.push(unpriced_on.get(key).copied().unwrap_or(0));
        let terms = c.map_or(30, |c| c.payment_terms_days);
        due.push(invoice_date.checked_add_signed(chrono::TimeDelta::days(terms)));
    }
    let n = totals.len();
    let get =
        |m: &BTreeMap<&str, Vec<Option<String>>>, k: &str| m.get(k).cloned().unwrap_or_default();
    let getd =
        |m: &BTreeMap<&str, Vec<Option<Decimal>>>, k: &str| m.get(k).cloned().unwrap_or_default();
    let mut columns = Vec::new();
    for (name, ty) in fi::COLUMNS {
        let c = match (*name, ty) {
            (fi::invoice_date, _) => cells::date_column(name, &vec![Some(invoice_date); n]),
            (fi::due_date, _) => cells::date_column(name, &due),
            (fi::line_count, _) => cells::int_column(name, &line_count),
            (fi::unpriced_charges, _) => cells::int_column(name, &unpriced_count),
            (_, schemas::Ty::Dec) => cells::dec_column(name, &getd(&decs, name)),
            _ => cells::str_column(name, &get(&cols, name)),
        };
        columns.push(c);
    }
    cells::frame(columns, &fi::schema(), fi::TABLE)
}

/// The DESIGN §6 invoice checks, recomputed from the output frames (not from the values used to build them).
pub(super) fn checks(
    invoices: &DataFrame,
    lines: &DataFrame,
    mode: RoundingMode,
) -> Result<Vec<InvoiceCheck>> {
    let mut sums: HashMap<String, (u64, Decimal, Decimal)> = HashMap::new();
    let nums = cells::strs(lines, fl::invoice_number)?;
    let am = cells::decs(lines, fl::amount)?;
    let au = cells::decs(lines, fl::amount_unrounded)?;
    for i in 0..nums.len() {
        let e = sums.entry(nums[i].clone().unwrap_or_default()).or_default();
        e.0 += 1;
        e.1 += am[i].unwrap_or_default();
        e.2 += au[i].unwrap_or_default();
    }
    let inv = cells::strs(invoices, fi::invoice_number)?;
    let ccy = cells::strs(invoices, fi::currency)?;
    let sub = cells::decs(invoices, fi::subtotal)?;
    let mut out = Vec::with_capacity(inv.len());
    for i in 0..inv.len() {
        let number = inv[i].clone().unwrap_or_default();
        let currency = ccy[i].clone().unwrap_or_default();
        let (n, rounded, unrounded) = sums.get(&number).copied().unwrap_or_default();
        let per_line = drift_bound_per_line(&currency, mode).unwrap_or_default();
        out.push(InvoiceCheck {
            invoice_number: number,
            currency,
            lines: n,
            subtotal: sub[i].unwrap_or_default(),
            sum_rounded: rounded,
            sum_unrounded: unrounded,
            bound: per_line * Decimal::from(n),
        });
    }
    Ok(out)
}
