//! Microsoft's own arithmetic as a data check: recompute each staged invoice line's `Subtotal` with
//! Microsoft's documented formulas and count, per charge type, the lines that differ.
//!
//! Formulas (fixtures README, partner-center-formats.md "Rounding / precision"), ROUNDDOWN = toward zero:
//! - usage lines (those with a `MeterDescription`): `ROUNDDOWN(ROUNDDOWN(EUP × BillableQuantity, 2) × PCToBC, 2)`;
//! - other lines (seats, one-time): `ROUNDDOWN(EUP × PCToBC, 2) × BillableQuantity`.
//!
//! The products are exact at scale 18 for the digits Microsoft prints (EUP ≤ 8 places, quantity ≤ 10, rate ≤ 5).
//! Lines missing one of the four amounts (legacy licence-based lines have no effective price) cannot be
//! checked: they are counted in `unchecked`, not in `lines`.

use polars::prelude::*;
use schemas::stg_pc_invoice_lines as il;

/// Per `charge_type`: `lines` checked, `mismatches` among them, `unchecked` (missing amounts). Sorted by
/// charge type.
pub fn microsoft_subtotal_check(invoice_lines: LazyFrame) -> LazyFrame {
    let down2 = |e: Expr| e.round(2, RoundMode::ToZero);
    let eup = col(il::effective_unit_price);
    let bq = col(il::billable_quantity);
    let rate = col(il::pc_to_bc_exchange_rate);
    let usage = col(il::meter_description)
        .str()
        .strip_chars(lit(NULL))
        .neq(lit(""))
        .fill_null(lit(false));
    let expected = when(usage)
        .then(down2(down2(eup.clone() * bq.clone()) * rate.clone()))
        .otherwise(down2(eup.clone() * rate.clone()) * bq.clone());
    let checkable = eup
        .is_not_null()
        .and(bq.is_not_null())
        .and(rate.is_not_null())
        .and(col(il::subtotal).is_not_null());
    invoice_lines
        .select([
            col(il::charge_type),
            checkable.clone().alias("_checkable"),
            checkable.and(expected.neq(col(il::subtotal))).alias("_mismatch"),
        ])
        .group_by([col(il::charge_type)])
        .agg([
            col("_checkable").sum().cast(DataType::Int64).alias("lines"),
            col("_mismatch").sum().cast(DataType::Int64).alias("mismatches"),
            col("_checkable").not().sum().cast(DataType::Int64).alias("unchecked"),
        ])
        .sort([il::charge_type], SortMultipleOptions::default())
}
