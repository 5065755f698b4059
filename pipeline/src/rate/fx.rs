//! Market FX rates from `stg_fx_rates` (DESIGN §5 "Rate", policy `market`): for each distinct (from, to, date)
//! a rated line needs, the latest direct rate on or before the date, else the reverse pair's latest rate
//! inverted, else nothing (the stage turns that into an error row naming the pair and the date).
//!
//! The needs are resolved on their distinct triples (a handful of currency pairs × at most a month of dates)
//! and joined back, never per charge.

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::stg_fx_rates as fx;

use crate::decimal::{dec_lit, nonzero};

pub const FROM: &str = "_fx_from";
pub const TO: &str = "_fx_to";
pub const DATE: &str = "_fx_need_date";
/// The rate found (units of `TO` per 1 `FROM`), null when none.
pub const RATE: &str = "_fx_rate";
/// The date of the `fx_rates.csv` row used.
pub const RATE_DATE: &str = "_fx_rate_date";
/// True when the reverse pair's rate was inverted.
pub const INVERTED: &str = "_fx_inverted";

/// Resolves `needs` (columns [`FROM`], [`TO`], [`DATE`], distinct) against the staged FX table. Returns the
/// same rows with [`RATE`], [`RATE_DATE`] and [`INVERTED`].
pub fn market_rates(needs: LazyFrame, fx_rates: &DataFrame) -> LazyFrame {
    let table = fx_rates.clone().lazy().select([
        col(fx::from_currency)
            .str()
            .strip_chars(lit(NULL))
            .str()
            .to_uppercase()
            .alias("_t_from"),
        col(fx::to_currency)
            .str()
            .strip_chars(lit(NULL))
            .str()
            .to_uppercase()
            .alias("_t_to"),
        col(fx::date).alias("_t_date"),
        col(fx::rate).alias("_t_rate"),
    ]);
    let need_keys = [col(FROM), col(TO), col(DATE)];
    let latest = |left_on: [Expr; 2], rate: &str, date: &str| {
        needs
            .clone()
            .join(
                table.clone(),
                left_on,
                [col("_t_from"), col("_t_to")],
                JoinArgs::new(JoinType::Inner),
            )
            .filter(col("_t_date").lt_eq(col(DATE)))
            .group_by(need_keys.clone())
            .agg([
                col("_t_rate")
                    .sort_by([col("_t_date")], SortMultipleOptions::default())
                    .last()
                    .alias(rate),
                col("_t_date").max().alias(date),
            ])
    };
    let direct = latest([col(FROM), col(TO)], "_d_rate", "_d_date");
    // The reverse pair: a row TO→FROM read as FROM→TO after inversion.
    let reverse = latest([col(TO), col(FROM)], "_v_rate", "_v_date");
    let left = super::rules::join_args(JoinType::Left);
    needs
        .join(direct, need_keys.clone(), need_keys.clone(), left.clone())
        .join(reverse, need_keys.clone(), need_keys, left)
        .with_columns([
            when(col("_d_rate").is_not_null())
                .then(col("_d_rate"))
                // Computed on rows with a direct rate too: the divisor is guarded in the expression.
                .otherwise(dec_lit(Decimal::ONE) / nonzero(col("_v_rate")))
                .alias(RATE),
            when(col("_d_rate").is_not_null())
                .then(col("_d_date"))
                .otherwise(col("_v_date"))
                .alias(RATE_DATE),
            col("_d_rate")
                .is_null()
                .and(col("_v_rate").is_not_null())
                .alias(INVERTED),
        ])
        .select([col(FROM), col(TO), col(DATE), col(RATE), col(RATE_DATE), col(INVERTED)])
}
