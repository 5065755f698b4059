//! Rating (`int_charges_rated`, DESIGN §5 "Rate"): each allocated part priced by its paying customer's rate
//! card, converted into the customer's invoice currency, with the rule, FX step and policies on the line.
//!
//! The stage is lazy from end to end: customers, rate cards and FX rates are small collected tables turned
//! into lazy frames; rule matching and market FX are resolved on distinct keys and joined back
//! ([`rules`], [`fx`]). Problems only the data reveals (a rule tie, a missing market rate) come out as rows
//! of the errors frame (`code`, `message`), and the lines concerned are kept as `unpriced`: nothing is lost.

pub mod check;
pub mod explain;
pub mod fx;
pub mod rules;

use std::collections::BTreeMap;

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::int_charges_rated as out;
use schemas::stg_customers as cu;

use crate::context::{FxDatePolicy, ProrationPolicy, RunContext};
use crate::decimal::{dec_lit, nonzero, null_dec};
use crate::error::{ConfigError, PipelineError, Result};

pub use check::microsoft_subtotal_check;
pub use rules::validate_rate_cards;

/// The stage's output: the rated parts and the data errors (`code`, `message`) that make the job exit 2.
pub struct Rated {
    /// `int_charges_rated`, one row per allocated part, in the order of the allocated parts.
    pub rated: LazyFrame,
    /// `code`, `message`: `rate_rule_tie` (naming both rules and one line) and `fx_rate_missing` (naming the
    /// currency pair and date).
    pub errors: LazyFrame,
}

/// Collects a plan whose result is small with the streaming engine.
fn streaming(lf: LazyFrame) -> Result<DataFrame> {
    lf.collect_with_engine(Engine::Streaming)
        .map(|r| r.unwrap_single())
        .map_err(PipelineError::polars(STAGE))
}

/// Error code: two rules equally specific for a line.
pub const ERR_TIE: &str = "rate_rule_tie";
/// Error code: no market FX rate for a pair on or before a date.
pub const ERR_FX: &str = "fx_rate_missing";

/// `line_type` values (DESIGN §5 "Invoice").
pub const LINE_TYPES: [&str; 5] = ["credit", "refund", "usage", "license", "one_time"];

/// Where a rated line's FX rate came from (`fx_source`).
pub mod fx_source {
    /// Invoice currency = billing currency: rate 1.
    pub const SAME_CURRENCY: &str = "same_currency";
    /// `1 / PCToBCExchangeRate` (invoice currency = pricing currency, policy `microsoft`).
    pub const MICROSOFT: &str = "microsoft";
    /// `fx_rates.csv` (policy `market`).
    pub const MARKET: &str = "market";
    /// `fx_rates.csv` because policy `microsoft` could not apply (invoice currency neither billing nor pricing).
    pub const MARKET_FALLBACK: &str = "market_fallback";
    /// The customer's `fixed_fx_rate`.
    pub const FIXED: &str = "fixed";
}

/// Where the rate applied to `price_rule_ccy` came from (`price_fx_source`).
pub mod price_fx_source {
    /// The price is already in the invoice currency (a `fixed_unit_price` in it).
    pub const SAME_CURRENCY: &str = "same_currency";
    /// The line's own FX rate (prices computed in billing currency).
    pub const LINE: &str = "line";
    /// `fx_rates.csv` for a `fixed_unit_price` in a third currency.
    pub const MARKET: &str = "market";
}

const STAGE: &str = "rate";
const SAMPLE: &str = "_sample_line";

fn s(v: &str) -> Expr {
    lit(v.to_string())
}

fn left_join_args() -> JoinArgs {
    rules::join_args(JoinType::Left)
}

/// Customers keyed by trimmed, lower-cased `customer_id` (Partner Center ids are GUIDs that a person may
/// type in either case). Two rows whose ids differ only in case are an error: the join would double lines.
fn customers_frame(customers: &DataFrame) -> Result<LazyFrame> {
    let ids = customers
        .column(cu::customer_id)
        .map_err(PipelineError::polars(STAGE))?;
    let lines = customers
        .column(cu::line_number)
        .map_err(PipelineError::polars(STAGE))?;
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut errors = Vec::new();
    for i in 0..customers.height() {
        let id = match ids.get(i).map_err(PipelineError::polars(STAGE))? {
            AnyValue::String(s) => s.trim().to_lowercase(),
            AnyValue::StringOwned(s) => s.trim().to_lowercase(),
            _ => continue,
        };
        let line = lines.get(i).ok().and_then(|v| v.extract::<i64>()).unwrap_or(0);
        if let Some(first) = seen.get(&id) {
            errors.push(ConfigError {
                file: "customers.csv".into(),
                line: line as u64,
                column: cu::customer_id.into(),
                message: format!("customer_id `{id}` is also on line {first} (ids compare case-insensitively); keep one row per customer"),
            });
        } else {
            seen.insert(id, line);
        }
    }
    if !errors.is_empty() {
        return Err(PipelineError::Configs(errors));
    }
    Ok(customers.clone().lazy().select([
        rules::norm(col(cu::customer_id)).alias("_c_key"),
        col(cu::customer_name).alias("_c_name"),
        col(cu::invoice_currency)
            .str()
            .strip_chars(lit(NULL))
            .str()
            .to_uppercase()
            .alias("_ic"),
        col(cu::template).alias("_template"),
        // An empty policy means `microsoft` (DESIGN §5).
        col(cu::fx_policy).fill_null(s("microsoft")).alias("_fx_policy"),
        col(cu::fixed_fx_rate).alias("_fixed_fx_rate"),
        lit(true).alias("_known"),
    ]))
}

/// The `line_type` of a charge (DESIGN §5 "Invoice"): credit, else refund (negative f), else by source and
/// family.
fn line_type() -> Expr {
    when(col("is_credit").fill_null(lit(false)))
        .then(s("credit"))
        .when(col("f").lt(dec_lit(Decimal::ZERO)).fill_null(lit(false)))
        .then(s("refund"))
        .when(
            col("source_kind")
                .eq(s("daily_usage"))
                .or(col("product_family").eq(s("azure_usage")))
                .fill_null(lit(false)),
        )
        .then(s("usage"))
        .when(col("product_family").eq(s("license")).fill_null(lit(false)))
        .then(s("license"))
        .otherwise(s("one_time"))
}

/// Prices every allocated part (DESIGN §5 "Rate"). `rate_cards`, `customers` and `fx_rates` are the staged
/// reference tables (`stg_rate_cards` already checked by [`validate_rate_cards`]). Errs only on a
/// configuration problem it can see in the small tables (two customers whose ids differ only in case).
///
/// Two small tables are collected inside the stage (with the streaming engine, reading `allocated` batch by
/// batch): the winning rule per distinct key and the market rates per distinct (from, to, date). The parts
/// themselves stay a lazy plan that the job streams into its spool.
pub fn int_charges_rated(
    allocated: LazyFrame,
    rate_cards: &DataFrame,
    customers: &DataFrame,
    fx_rates: &DataFrame,
    ctx: &RunContext,
) -> Result<Rated> {
    let one = || dec_lit(Decimal::ONE);
    let zero = || dec_lit(Decimal::ZERO);

    // 1. The paying customer: currency, template, FX policy. Unknown customers stay, `_known` false.
    let base = allocated
        .with_column(rules::norm(col("customer_id")).alias("_c_key"))
        .join(customers_frame(customers)?, [col("_c_key")], [col("_c_key")], {
            // Customer ids never join on null: a line without a customer is unknown, not everyone's.
            let mut a = left_join_args();
            a.nulls_equal = false;
            a
        })
        .with_column(col("_known").fill_null(lit(false)))
        .with_columns(rules::key_columns("_template"))
        .with_column(col("is_credit").fill_null(lit(false)).alias("_credit"));

    // 2. The winning rule per distinct key of the lines that need one (known customer, not a credit).
    let mut key_cols: Vec<Expr> = rules::KEYS.iter().map(|k| col(*k)).collect();
    key_cols.push(col(rules::K_DATE));
    let needs_rule = col("_known").and(col("_credit").not());
    // The distinct keys are few (thousands, not millions): collected here, with the streaming engine, so that
    // the plan below joins a small in-memory table instead of a second copy of the month (a self-join would
    // make Polars cache the whole input).
    let keys = streaming(
        base.clone()
            .filter(needs_rule.clone())
            .select(key_cols.clone())
            .unique(None, UniqueKeepStrategy::Any)
            .with_column(lit(NULL).cast(DataType::String).alias(SAMPLE)),
    )?;
    let mut resolved = streaming(
        rules::resolve(keys.lazy(), rate_cards, SAMPLE).map_err(PipelineError::polars(STAGE))?,
    )?;
    // One line per tied key to name in the error: where a person can find it (the charge's source file and line;
    // the smallest such text). Built only when a tie exists, from the rows of the tied keys alone: building it
    // for every row of the month cost 2 GB of heap at 10M rows.
    let tied = resolved.column("_n_top").map_err(PipelineError::polars(STAGE))?.i64().map_err(PipelineError::polars(STAGE))?.iter().any(|n| n.is_some_and(|n| n > 1));
    if tied {
        let tie_keys = resolved.clone().lazy().filter(col("_n_top").gt(lit(1i64))).select(key_cols.clone());
        let samples = streaming(
            base.clone()
                .filter(needs_rule)
                .join(tie_keys, key_cols.clone(), key_cols.clone(), rules::join_args(JoinType::Semi))
                .group_by(key_cols.clone())
                .agg([concat_str(
                    [
                        s("`"),
                        col("source_file").fill_null(s("?")),
                        s("` line "),
                        col("line_number").cast(DataType::String).fill_null(s("?")),
                        s(" (line_id `"),
                        col("line_id").fill_null(s("")),
                        s("`)"),
                    ],
                    "",
                    false,
                )
                .min()
                .alias(SAMPLE)]),
        )?;
        resolved = streaming(resolved.lazy().drop(cols([SAMPLE])).join(samples.lazy(), key_cols.clone(), key_cols.clone(), rules::join_args(JoinType::Left)))?;
    }
    let resolved = resolved.lazy();
    let rated = base.join(
        resolved.clone().drop(cols([SAMPLE])),
        key_cols.clone(),
        key_cols,
        left_join_args(),
    );

    // 3. Which FX each line needs.
    let fx_date = match ctx.policies.fx_date {
        // `lit(NaiveDate)` is a Datetime literal in Polars 0.55: cast to the Date the columns have.
        FxDatePolicy::PeriodEnd => lit(ctx.period.end()).cast(DataType::Date),
        FxDatePolicy::ChargeDate => col("charge_date"),
    };
    let bc = col("billing_currency")
        .str()
        .strip_chars(lit(NULL))
        .str()
        .to_uppercase();
    let pc = col("pricing_currency")
        .str()
        .strip_chars(lit(NULL))
        .str()
        .to_uppercase();
    let rate_ok = col("pc_to_bc_rate")
        .is_not_null()
        .and(col("pc_to_bc_rate").neq(zero()))
        .fill_null(lit(false));
    // A credit shares its key with charges but never uses their rule (DESIGN: credits pass through at cost).
    let tie = col("_n_top")
        .gt(lit(1i64))
        .fill_null(lit(false))
        .and(col("_credit").not());
    let has_rule = col(rules::R_ID)
        .is_not_null()
        .and(tie.clone().not())
        .and(col("_credit").not());
    let fixed_price = has_rule
        .clone()
        .and(col(rules::R_METHOD).eq(s("fixed_unit_price")))
        .fill_null(lit(false));
    let rated = rated
        .with_columns([
            bc.alias("_bc"),
            pc.alias("_pc"),
            fx_date.alias("_fx_need"),
            tie.alias("_tie"),
            has_rule.alias("_has_rule"),
        ])
        .with_columns([
            when(col("_known").not())
                .then(lit(NULL).cast(DataType::String))
                .when(col("_ic").eq(col("_bc")).fill_null(lit(false)))
                .then(s(fx_source::SAME_CURRENCY))
                .when(col("_fx_policy").eq(s("fixed")))
                .then(s(fx_source::FIXED))
                .when(col("_fx_policy").eq(s("market")))
                .then(s(fx_source::MARKET))
                .when(col("_ic").eq(col("_pc")).fill_null(lit(false)).and(rate_ok))
                .then(s(fx_source::MICROSOFT))
                .otherwise(s(fx_source::MARKET_FALLBACK))
                .alias("_fx_kind"),
            // The currency `price_rule_ccy` is in, and the conversion it needs.
            when(col("_credit"))
                .then(s(price_fx_source::LINE))
                .when(col("_has_rule").not())
                .then(lit(NULL).cast(DataType::String))
                .when(fixed_price.clone().not())
                .then(s(price_fx_source::LINE))
                .when(col(rules::R_CCY).eq(col("_ic")).fill_null(lit(false)))
                .then(s(price_fx_source::SAME_CURRENCY))
                .when(col(rules::R_CCY).eq(col("_bc")).fill_null(lit(false)))
                .then(s(price_fx_source::LINE))
                .otherwise(s(price_fx_source::MARKET))
                .alias("_pfx_kind"),
        ]);

    // 4. Market rates on distinct (from, to, date): for the line, and for fixed prices in a third currency.
    let market_line = col("_fx_kind")
        .eq(s(fx_source::MARKET))
        .or(col("_fx_kind").eq(s(fx_source::MARKET_FALLBACK)))
        .fill_null(lit(false));
    let need = |from: &str, filter: Expr| {
        rated.clone().filter(filter).select([
            col(from).alias(fx::FROM),
            col("_ic").alias(fx::TO),
            col("_fx_need").alias(fx::DATE),
        ])
    };
    let needs = concat(
        [
            need("_bc", market_line.clone()),
            need(
                rules::R_CCY,
                col("_pfx_kind").eq(s(price_fx_source::MARKET)).fill_null(lit(false)),
            ),
        ],
        UnionArgs::default(),
    )
    .map_err(PipelineError::polars(STAGE))?
    .unique(None, UniqueKeepStrategy::Any);
    // Distinct (from, to, date) needs are few: collected, like the rule keys.
    let needs = streaming(needs)?;
    let market = streaming(fx::market_rates(needs.lazy(), fx_rates))?.lazy();
    let renamed = |prefix: &str| {
        market.clone().select([
            col(fx::FROM).alias(format!("{prefix}_from")),
            col(fx::TO).alias(format!("{prefix}_to")),
            col(fx::DATE).alias(format!("{prefix}_date_need")),
            col(fx::RATE).alias(format!("{prefix}_rate")),
            col(fx::RATE_DATE).alias(format!("{prefix}_rate_date")),
            col(fx::INVERTED).alias(format!("{prefix}_inverted")),
        ])
    };
    let rated = rated
        .join(
            renamed("_lm"),
            [col("_bc"), col("_ic"), col("_fx_need")],
            [col("_lm_from"), col("_lm_to"), col("_lm_date_need")],
            left_join_args(),
        )
        .join(
            renamed("_pm"),
            [col(rules::R_CCY), col("_ic"), col("_fx_need")],
            [col("_pm_from"), col("_pm_to"), col("_pm_date_need")],
            left_join_args(),
        );

    // 5. The line's rate into the invoice currency, then the price's.
    let kind = |k: &str| col("_fx_kind").eq(s(k)).fill_null(lit(false));
    let pkind = |k: &str| col("_pfx_kind").eq(s(k)).fill_null(lit(false));
    let rated = rated
        .with_columns([
            when(kind(fx_source::SAME_CURRENCY))
                .then(one())
                .when(kind(fx_source::FIXED))
                .then(col("_fixed_fx_rate"))
                // Every branch is computed on every row: the divisor is guarded here, not by `kind`.
                .when(kind(fx_source::MICROSOFT))
                .then(one() / nonzero(col("pc_to_bc_rate")))
                .when(market_line.clone())
                .then(col("_lm_rate"))
                .otherwise(null_dec())
                .alias(out::fx_rate),
            when(market_line.clone())
                .then(col("_lm_rate_date"))
                .otherwise(lit(NULL).cast(DataType::Date))
                .alias(out::fx_date),
            when(market_line.clone())
                .then(col("_lm_inverted"))
                .when(col("_known"))
                .then(lit(false))
                .otherwise(lit(NULL).cast(DataType::Boolean))
                .alias(out::fx_inverted),
            // The price before FX: in the rule's currency for fixed_unit_price, else in billing currency.
            when(col("_credit"))
                .then(col("cost"))
                .when(col("_has_rule").not())
                .then(null_dec())
                .when(col(rules::R_METHOD).eq(s("markup_on_cost")))
                .then(col("cost") * (one() + col(rules::R_VALUE)))
                .when(col(rules::R_METHOD).eq(s("margin_on_cost")))
                // Also computed for markup rows, where 1 − v may be 0 (a 100 % markup): guard the divisor.
                .then(col("cost") / nonzero(one() - col(rules::R_VALUE)))
                .when(col(rules::R_METHOD).eq(s("discount_off_list")))
                .then(col("list") * (one() - col(rules::R_VALUE)))
                .when(col(rules::R_METHOD).eq(s("markup_on_list")))
                .then(col("list") * (one() + col(rules::R_VALUE)))
                .when(col(rules::R_METHOD).eq(s("fixed_unit_price")))
                .then(col(rules::R_VALUE) * col("q") * col("f"))
                .otherwise(null_dec())
                .alias(out::price_rule_ccy),
        ])
        .with_columns([
            when(pkind(price_fx_source::SAME_CURRENCY))
                .then(one())
                .when(pkind(price_fx_source::LINE))
                .then(col(out::fx_rate))
                .when(pkind(price_fx_source::MARKET))
                .then(col("_pm_rate"))
                .otherwise(null_dec())
                .alias(out::price_fx_rate),
            when(pkind(price_fx_source::LINE))
                .then(col(out::fx_date))
                .when(pkind(price_fx_source::MARKET))
                .then(col("_pm_rate_date"))
                .otherwise(lit(NULL).cast(DataType::Date))
                .alias(out::price_fx_date),
            (col("cost") * col(out::fx_rate)).alias(out::cost_ic),
        ]);

    // 6. Status: the first reason a line cannot be priced, in the order a person would fix them.
    let pair = |from: Expr, date: Expr| {
        concat_str(
            [
                s("no market FX rate for `"),
                from,
                s("`→`"),
                col("_ic"),
                s("` on or before "),
                date.cast(DataType::String),
                s(" in fx_rates.csv (nor the reverse pair to invert); add one"),
            ],
            "",
            false,
        )
    };
    let reason = when(col("_known").not())
        .then(concat_str(
            [
                s("customer `"),
                col("customer_id").fill_null(s("")),
                s("` is not in customers.csv; add it with its invoice currency and template"),
            ],
            "",
            false,
        ))
        .when(col(out::fx_rate).is_null())
        .then(pair(col("_bc"), col("_fx_need")))
        .when(col("_tie"))
        .then(concat_str(
            [
                s("rate rules `"),
                col(rules::R_ID),
                s("` and `"),
                col("_tie_id"),
                s("` are equally specific; make one more specific or end one's validity"),
            ],
            "",
            false,
        ))
        .when(col("_credit").not().and(col("_has_rule").not()))
        .then(concat_str(
            [
                s("no rate rule matches customer `"),
                col("customer_id").fill_null(s("")),
                s("`, family `"),
                col("product_family").fill_null(s("")),
                s("`, product `"),
                col(rules::K_PRODSKU),
                s("`, meter `"),
                col(rules::K_MCAT),
                s("` / `"),
                col(rules::K_MSUB),
                s("` on "),
                col("charge_date")
                    .cast(DataType::String)
                    .fill_null(s("an unknown date")),
                s("; add a rule to rate_cards.csv"),
            ],
            "",
            false,
        ))
        .when(col(out::price_fx_rate).is_null())
        .then(pair(col(rules::R_CCY), col("_fx_need")))
        .otherwise(lit(NULL).cast(DataType::String));
    let rated = rated
        .with_column(reason.alias(out::unpriced_reason))
        .with_column(col(out::unpriced_reason).is_null().alias("_priced"))
        .with_columns([
            when(col("_priced"))
                .then(col(out::price_rule_ccy) * col(out::price_fx_rate))
                .otherwise(null_dec())
                .alias(out::price),
            when(col("_priced"))
                .then(s("priced"))
                .otherwise(s("unpriced"))
                .alias(out::status),
        ])
        .with_column((col(out::price) - col(out::cost_ic)).alias(out::margin));

    // 7. The rule columns, only for a rule that applied.
    let rule = |c: &str| {
        when(col("_has_rule").and(col("_credit").not()))
            .then(col(c))
            .otherwise(lit(NULL))
    };
    let proration = match ctx.policies.proration {
        ProrationPolicy::MirrorMicrosoft => "mirror_microsoft",
        ProrationPolicy::None => "none",
    };
    let select: Vec<Expr> = out::COLUMNS
        .iter()
        .map(|(name, ty)| {
            let e = match *name {
                n if n == out::customer_name => col("_c_name").fill_null(col("customer_name")),
                n if n == out::template => col("_template"),
                n if n == out::line_type => line_type(),
                n if n == out::invoice_currency => col("_ic"),
                n if n == out::rate_rule_id => rule(rules::R_ID),
                n if n == out::rate_rule_line => rule(rules::R_LINE),
                n if n == out::rate_method => when(col("_credit"))
                    .then(s("credit_pass_through"))
                    .otherwise(rule(rules::R_METHOD)),
                n if n == out::rate_value => rule(rules::R_VALUE),
                n if n == out::rate_currency => rule(rules::R_CCY),
                n if n == out::fx_source => col("_fx_kind"),
                n if n == out::fx_policy => when(col("_known")).then(col("_fx_policy")).otherwise(lit(NULL)),
                n if n == out::price_fx_source => col("_pfx_kind"),
                n if n == out::proration_policy => s(proration),
                n => col(n),
            };
            e.cast(ty.dtype()).alias(*name)
        })
        .collect();
    let rated = rated.select(select);

    // 8. Errors: one per tied rule pair (with one line), one per missing market rate (pair and date).
    let ties = resolved
        .filter(col("_n_top").gt(lit(1i64)))
        .group_by([col(rules::R_ID), col(rules::R_LINE), col("_tie_id"), col("_tie_line")])
        .agg([col(SAMPLE).min(), col(rules::K_DATE).min()])
        .select([
            s(ERR_TIE).alias("code"),
            concat_str(
                [
                    s("rate rules `"),
                    col(rules::R_ID),
                    s("` (rate_cards.csv line "),
                    col(rules::R_LINE).cast(DataType::String),
                    s(") and `"),
                    col("_tie_id"),
                    s("` (line "),
                    col("_tie_line").cast(DataType::String),
                    s(") are equally specific for the charge in "),
                    col(SAMPLE),
                    s(" on "),
                    col(rules::K_DATE)
                        .cast(DataType::String)
                        .fill_null(s("an unknown date")),
                    s("; make one more specific, or end one's validity before the other starts"),
                ],
                "",
                false,
            )
            .alias("message"),
        ]);
    let missing = market.filter(col(fx::RATE).is_null()).select([
        s(ERR_FX).alias("code"),
        concat_str(
            [
                s("no market FX rate for `"),
                col(fx::FROM),
                s("`→`"),
                col(fx::TO),
                s("` on or before "),
                col(fx::DATE).cast(DataType::String),
                s(" in fx_rates.csv, nor a `"),
                col(fx::TO),
                s("`→`"),
                col(fx::FROM),
                s("` rate to invert; add one"),
            ],
            "",
            false,
        )
        .alias("message"),
    ]);
    let errors = concat([ties, missing], UnionArgs::default())
        .map_err(PipelineError::polars(STAGE))?
        .sort(["code", "message"], SortMultipleOptions::default());
    Ok(Rated { rated, errors })
}

/// The warning for parts converted at the market rate although the customer's policy is `microsoft`
/// (`fx_source = market_fallback`), naming each customer with its count and currencies, so the MSP knows whose
/// FX policy or invoice currency to look at; None when there are none.
pub fn market_fallback_warning(rated: LazyFrame) -> PolarsResult<Option<String>> {
    let by = rated
        .filter(col(out::fx_source).eq(s(fx_source::MARKET_FALLBACK)).fill_null(lit(false)))
        .group_by([col(out::customer_id), col(out::billing_currency), col(out::invoice_currency)])
        .agg([len().cast(DataType::Int64).alias("parts")])
        .sort(
            [out::customer_id, out::billing_currency, out::invoice_currency],
            SortMultipleOptions::default().with_nulls_last(true),
        )
        .collect_with_engine(Engine::Streaming)?
        .unwrap_single();
    if by.height() == 0 {
        return Ok(None);
    }
    let ids = by.column(out::customer_id)?.str()?.clone();
    let bcs = by.column(out::billing_currency)?.str()?.clone();
    let ics = by.column(out::invoice_currency)?.str()?.clone();
    let parts = by.column("parts")?.i64()?.clone();
    let total: i64 = parts.sum().unwrap_or(0);
    let named: Vec<String> = (0..by.height())
        .map(|i| {
            format!(
                "`{}` ({} part(s) {} → {})",
                ids.get(i).unwrap_or("?"),
                parts.get(i).unwrap_or(0),
                bcs.get(i).unwrap_or("?"),
                ics.get(i).unwrap_or("?")
            )
        })
        .collect();
    Ok(Some(format!(
        "{total} part(s) converted at the market rate (fx_source `market_fallback`) for customer(s) {}: fx_policy `microsoft` but the invoice currency is neither the billing nor the pricing currency, or Microsoft's PCToBCExchangeRate is missing or 0; set the customer's fx_policy in customers.csv (`market` or `fixed`) to make it explicit",
        named.join(", ")
    )))
}

#[cfg(test)]
mod tests;
