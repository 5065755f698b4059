//! Late data (DESIGN §5 "Invoice", issue #7 point 6): a closed period's invoice never changes; the difference
//! between what was issued and the same period re-rated now becomes `adjustment` lines on a later invoice.
//!
//! Lines are matched on customer, currency, line type, group key and product family: the group key is built
//! from stable identifiers (SKU, subscription, meter category, org unit), so a line and its restated self meet.
//! The difference is taken on the *rounded* amounts: the customer was billed the rounded amount, so the
//! adjustments sum exactly to restated − issued as invoiced, and rounding them again changes nothing.

use std::collections::BTreeMap;

use polars::prelude::DataFrame;
use rust_decimal::Decimal;
use schemas::fct_invoice_lines as fl;

use super::cells;
use crate::context::Period;
use crate::error::{PipelineError, Result};

#[derive(Default, Clone)]
struct Side {
    quantity: Decimal,
    amount: Decimal,
    cost: Decimal,
    parts: i64,
    line_id: Option<String>,
    description: Option<String>,
    subscription_id: Option<String>,
    unit_id: Option<String>,
    unit_path: Option<String>,
    unit: Option<String>,
}

type Key = (String, String, String, String, String);
/// A matched key with its issued and restated sides.
type Row = (Key, Side, Side);

fn sides(df: &DataFrame) -> Result<BTreeMap<Key, Side>> {
    let cust = cells::strs(df, fl::customer_id)?;
    let ccy = cells::strs(df, fl::currency)?;
    let lt = cells::strs(df, fl::line_type)?;
    let gk = cells::strs(df, fl::group_key)?;
    let fam = cells::strs(df, fl::product_family)?;
    let qty = cells::decs(df, fl::quantity)?;
    let am = cells::decs(df, fl::amount)?;
    let cost = cells::decs(df, fl::cost)?;
    let parts = cells::ints(df, fl::part_count)?;
    let id = cells::strs(df, fl::invoice_line_id)?;
    let desc = cells::strs(df, fl::description)?;
    let sub = cells::strs(df, fl::subscription_id)?;
    let uid = cells::strs(df, fl::unit_id)?;
    let upath = cells::strs(df, fl::unit_path)?;
    let unit = cells::strs(df, fl::unit)?;
    let mut out: BTreeMap<Key, Side> = BTreeMap::new();
    for i in 0..cust.len() {
        // Adjustment lines on a period's own invoice correct *earlier* periods: they are not that period's
        // charges, and re-stating it must not reverse them (they are accounted for when the period they correct
        // is re-stated, mapped back to their original lines by the job).
        if lt[i].as_deref() == Some("adjustment") {
            continue;
        }
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let key = (o(&cust[i]), o(&ccy[i]), o(&lt[i]), o(&gk[i]), o(&fam[i]));
        let e = out.entry(key).or_default();
        e.quantity += qty[i].unwrap_or_default();
        e.amount += am[i].unwrap_or_default();
        e.cost += cost[i].unwrap_or_default();
        e.parts += parts[i].unwrap_or(0);
        // A key is one line on a well-formed invoice; should it repeat, the first line names it.
        e.line_id = e.line_id.take().or_else(|| id[i].clone());
        e.description = e.description.take().or_else(|| desc[i].clone());
        e.subscription_id = e.subscription_id.take().or_else(|| sub[i].clone());
        e.unit_id = e.unit_id.take().or_else(|| uid[i].clone());
        e.unit_path = e.unit_path.take().or_else(|| upath[i].clone());
        e.unit = e.unit.take().or_else(|| unit[i].clone());
    }
    Ok(out)
}

/// Late data: the difference between what was issued for a closed period and the same period re-rated now, per
/// invoice line (matched on customer, currency, line type, group key and product family), as `adjustment` lines
/// for `target` (a later period). `issued` and `restated` are `fct_invoice_lines` frames of period `corrected`.
///
/// The returned frame has the `fct_invoice_lines` schema with `invoice_line_id`, `invoice_number` null and
/// `line_no` 0: `fct_invoices` of `target` numbers them. Lines whose quantity, amount and cost are unchanged give
/// no adjustment. `original_line_id` is the issued line (null for a line that is new in the restatement).
pub fn adjustment_lines(
    issued: &DataFrame,
    restated: &DataFrame,
    corrected: Period,
    target: Period,
) -> Result<DataFrame> {
    if corrected >= target {
        return Err(PipelineError::Invariant {
            stage: "adjustment_lines",
            message: format!(
                "adjustments for {corrected} can only go on a later period's invoice, not {target}"
            ),
        });
    }
    let before = sides(issued)?;
    let after = sides(restated)?;
    let mut keys: Vec<&Key> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();

    let mut rows: Vec<Row> = Vec::new();
    for k in keys {
        let b = before.get(k).cloned().unwrap_or_default();
        let a = after.get(k).cloned().unwrap_or_default();
        if a.quantity == b.quantity && a.amount == b.amount && a.cost == b.cost {
            continue;
        }
        rows.push((k.clone(), b, a));
    }
    let n = rows.len();
    let corrected_s = corrected.to_string();
    let st = |f: &dyn Fn(&Row) -> Option<String>| -> Vec<Option<String>> {
        rows.iter().map(f).collect()
    };
    let dc = |f: &dyn Fn(&Row) -> Decimal| -> Vec<Option<Decimal>> {
        rows.iter().map(|r| Some(f(r))).collect()
    };
    let pick = |b: &Option<String>, a: &Option<String>| b.clone().or_else(|| a.clone());
    let columns = vec![
        cells::str_column(fl::invoice_line_id, &vec![None; n]),
        cells::str_column(fl::invoice_number, &vec![None; n]),
        cells::str_column(fl::period, &vec![Some(target.to_string()); n]),
        cells::str_column(fl::customer_id, &st(&|r| Some(r.0.0.clone()))),
        cells::str_column(fl::currency, &st(&|r| Some(r.0.1.clone()))),
        cells::int_column(fl::line_no, &vec![0; n]),
        cells::str_column(fl::line_type, &vec![Some("adjustment".to_string()); n]),
        cells::str_column(
            fl::product_family,
            &st(&|r| Some(r.0.4.clone()).filter(|f| !f.is_empty())),
        ),
        cells::str_column(
            fl::subscription_id,
            &st(&|r| pick(&r.1.subscription_id, &r.2.subscription_id)),
        ),
        cells::str_column(
            fl::group_key,
            &st(&|r| Some(format!("{corrected_s}|{}|{}", r.0.2, r.0.3))),
        ),
        cells::str_column(fl::unit_id, &st(&|r| pick(&r.1.unit_id, &r.2.unit_id))),
        cells::str_column(
            fl::unit_path,
            &st(&|r| pick(&r.1.unit_path, &r.2.unit_path)),
        ),
        cells::str_column(
            fl::description,
            &st(&|r| {
                let what = pick(&r.1.description, &r.2.description).unwrap_or_default();
                Some(match &r.1.line_id {
                    Some(id) => format!("Adjustment to {corrected_s} (line {id}): {what}"),
                    None => format!("Adjustment to {corrected_s} (not invoiced then): {what}"),
                })
            }),
        ),
        cells::dec_column(fl::quantity, &dc(&|r| r.2.quantity - r.1.quantity)),
        cells::str_column(fl::unit, &st(&|r| pick(&r.1.unit, &r.2.unit))),
        cells::dec_column(fl::unit_price, &vec![None; n]),
        cells::dec_column(fl::amount_unrounded, &dc(&|r| r.2.amount - r.1.amount)),
        cells::dec_column(fl::amount, &dc(&|r| r.2.amount - r.1.amount)),
        cells::dec_column(fl::tax, &dc(&|_| Decimal::ZERO)),
        cells::dec_column(fl::cost, &dc(&|r| r.2.cost - r.1.cost)),
        cells::dec_column(
            fl::margin,
            &dc(&|r| (r.2.amount - r.1.amount) - (r.2.cost - r.1.cost)),
        ),
        cells::int_column(
            fl::part_count,
            &rows.iter().map(|r| r.2.parts).collect::<Vec<_>>(),
        ),
        cells::str_column(fl::corrected_period, &vec![Some(corrected_s.clone()); n]),
        cells::str_column(fl::original_line_id, &st(&|r| r.1.line_id.clone())),
    ];
    cells::frame(columns, &fl::schema(), fl::TABLE)
}
