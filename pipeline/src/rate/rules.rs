//! Rate-rule matching (DESIGN §5 "Rule matching, exactly"): which rules of `stg_rate_cards` apply to a charge,
//! how specific each is, and the table-level checks of a rate card (one `rule_id` with differing rows, two
//! rules with the same scope and overlapping validity).
//!
//! Matching runs on the *distinct* rule keys of the charges (customer, template, family, meter category and
//! subcategory, product, SKU, charge date), never on the charges themselves: those keys are a few thousand
//! where the charges are millions. The same [`rule_candidates`] serves the stage and `cspbill explain`, so
//! the explanation is computed by the very code that priced the line.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use polars::prelude::*;
use schemas::stg_rate_cards as rc;

use crate::error::{ConfigError, PipelineError, Result};

// Normalised key columns of a charge (lower-case, trimmed, null → ""): the join keys of rule resolution.
pub const K_CUSTOMER: &str = "_k_customer";
pub const K_TEMPLATE: &str = "_k_template";
pub const K_FAMILY: &str = "_k_family";
pub const K_MCAT: &str = "_k_mcat";
pub const K_MSUB: &str = "_k_msub";
pub const K_PRODUCT: &str = "_k_product";
pub const K_PRODSKU: &str = "_k_prodsku";
/// The charge date column of the keys (a plain `Date`).
pub const K_DATE: &str = "_k_date";

/// The non-date key columns, in order.
pub const KEYS: [&str; 7] = [K_CUSTOMER, K_TEMPLATE, K_FAMILY, K_MCAT, K_MSUB, K_PRODUCT, K_PRODSKU];

// Columns of a candidate rule (prefix `_r_`).
pub const R_ID: &str = "_r_id";
pub const R_LINE: &str = "_r_line";
pub const R_METHOD: &str = "_r_method";
pub const R_VALUE: &str = "_r_value";
pub const R_CCY: &str = "_r_ccy";
pub const R_FROM: &str = "_r_from";
pub const R_TO: &str = "_r_to";
/// Specificity as one integer whose decimal digits are the levels of DESIGN's precedence, most significant
/// first: customer (0/1), product (0 any, 1 `ProductId`, 2 `ProductId:SkuId`), meter subcategory, meter
/// category, product family, template (0/1 each). Comparing the integers compares level by level.
pub const R_SCORE: &str = "_r_score";
/// Whether the rule is valid on the key's charge date (`valid_from ≤ date < valid_to`).
pub const R_VALID: &str = "_r_valid";

/// The precedence levels, most significant first, with the weight of each in [`R_SCORE`].
pub const LEVELS: [(&str, i64); 6] = [
    ("customer_id", 100_000),
    ("product_id", 10_000),
    ("meter_subcategory", 1_000),
    ("meter_category", 100),
    ("product_family", 10),
    ("template", 1),
];

/// Trimmed, lower-cased text with null as "": how ids and categories compare.
pub fn norm(e: Expr) -> Expr {
    e.str().strip_chars(lit(NULL)).str().to_lowercase().fill_null(lit(""))
}

/// A rule field normalised, with `*` meaning "any" like an empty cell.
fn norm_rule(name: &str) -> Expr {
    let n = norm(col(name));
    when(n.clone().eq(lit("*")))
        .then(lit(""))
        .otherwise(n)
        .alias(format!("_r_{name}"))
}

/// The rule key columns of charges (or of a rated line, for `explain`) from their own columns plus the
/// paying customer's `template` column (named `template_col`). Invoice lines have no meter fields: their meter
/// keys are empty, so a rule naming a meter category never matches them.
pub fn key_columns(template_col: &str) -> Vec<Expr> {
    let invoice = col("source_kind").eq(lit("invoice_line")).fill_null(lit(false));
    let meter = |c: &str| when(invoice.clone()).then(lit("")).otherwise(norm(col(c)));
    vec![
        norm(col("customer_id")).alias(K_CUSTOMER),
        norm(col(template_col)).alias(K_TEMPLATE),
        norm(col("product_family")).alias(K_FAMILY),
        meter("meter_category").alias(K_MCAT),
        meter("meter_subcategory").alias(K_MSUB),
        norm(col("product_id")).alias(K_PRODUCT),
        concat_str([norm(col("product_id")), lit(":"), norm(col("sku_id"))], "", false).alias(K_PRODSKU),
        col("charge_date").alias(K_DATE),
    ]
}

/// The rate card as a lazy frame of normalised rules with their specificity.
fn rules_frame(rate_cards: &DataFrame) -> LazyFrame {
    let named = |c: &str| col(&format!("_r_{c}")).neq(lit(""));
    let level = |c: &str, w: i64| when(named(c)).then(lit(w)).otherwise(lit(0i64));
    let product_level = when(col("_r_product_id").str().contains_literal(lit(":")))
        .then(lit(2i64 * 10_000))
        .otherwise(level("product_id", 10_000));
    rate_cards
        .clone()
        .lazy()
        .select([
            col(rc::rule_id).alias(R_ID),
            col(rc::line_number).alias(R_LINE),
            norm(col(rc::method)).alias(R_METHOD),
            col(rc::value).alias(R_VALUE),
            col(rc::currency)
                .str()
                .strip_chars(lit(NULL))
                .str()
                .to_uppercase()
                .alias(R_CCY),
            col(rc::valid_from).alias(R_FROM),
            col(rc::valid_to).alias(R_TO),
            norm_rule(rc::customer_id),
            norm_rule(rc::template),
            norm_rule(rc::product_family),
            norm_rule(rc::meter_category),
            norm_rule(rc::meter_subcategory),
            norm_rule(rc::product_id),
        ])
        .with_column(
            (level("customer_id", 100_000)
                + product_level
                + level("meter_subcategory", 1_000)
                + level("meter_category", 100)
                + level("product_family", 10)
                + level("template", 1))
            .alias(R_SCORE),
        )
}

/// Every rule whose named fields all equal the key's, for each row of `keys` (columns [`KEYS`] and
/// [`K_DATE`], plus anything else, kept), with [`R_SCORE`] and [`R_VALID`]. Rules are matched on the
/// distinct non-date keys (a cross join of two small frames) and joined back to the dated keys.
pub fn rule_candidates(keys: LazyFrame, rate_cards: &DataFrame) -> LazyFrame {
    let any_or = |r: &str, k: &str| col(r).eq(lit("")).or(col(r).eq(col(k)));
    let product = col("_r_product_id")
        .eq(lit(""))
        .or(when(col("_r_product_id").str().contains_literal(lit(":")))
            .then(col("_r_product_id").eq(col(K_PRODSKU)))
            .otherwise(col("_r_product_id").eq(col(K_PRODUCT))));
    let key_cols: Vec<Expr> = KEYS.iter().map(|k| col(*k)).collect();
    let distinct = keys
        .clone()
        .select(key_cols.clone())
        .unique(None, UniqueKeepStrategy::Any);
    let matched = distinct
        .cross_join(rules_frame(rate_cards), None)
        .filter(
            any_or("_r_customer_id", K_CUSTOMER)
                .and(any_or("_r_template", K_TEMPLATE))
                .and(any_or("_r_product_family", K_FAMILY))
                .and(any_or("_r_meter_category", K_MCAT))
                .and(any_or("_r_meter_subcategory", K_MSUB))
                .and(product),
        )
        .select(
            key_cols
                .iter()
                .cloned()
                .chain([R_ID, R_LINE, R_METHOD, R_VALUE, R_CCY, R_FROM, R_TO, R_SCORE].map(col))
                .collect::<Vec<_>>(),
        );
    let valid = col(R_FROM)
        .is_null()
        .or(col(R_FROM).lt_eq(col(K_DATE)))
        .and(col(R_TO).is_null().or(col(K_DATE).lt(col(R_TO))))
        .fill_null(lit(false));
    keys.join(matched, key_cols.clone(), key_cols, join_args(JoinType::Inner))
        .with_column(valid.alias(R_VALID))
}

/// The winning rule per dated key: among the candidates valid on the date, the most specific. Returns one row
/// per key that has a valid candidate: [`KEYS`], [`K_DATE`], the winner's `_r_*` columns, `_n_top` (how many
/// rules share the top specificity: above 1 is a tie) and `_tie_id`, `_tie_line` (the other tied rule).
pub fn resolve(keys: LazyFrame, rate_cards: &DataFrame, sample: &str) -> PolarsResult<LazyFrame> {
    let mut group: Vec<Expr> = KEYS.iter().map(|k| col(*k)).collect();
    group.push(col(K_DATE));
    let by_line = |c: &str| col(c).sort_by([col(R_LINE)], SortMultipleOptions::default());
    let top = col(R_SCORE).max().over(group.clone())?;
    Ok(rule_candidates(keys, rate_cards)
        .filter(col(R_VALID))
        .filter(col(R_SCORE).eq(top))
        .group_by(group)
        .agg([
            len().cast(DataType::Int64).alias("_n_top"),
            by_line(R_ID).first().alias(R_ID),
            by_line(R_LINE).first().alias(R_LINE),
            by_line(R_METHOD).first().alias(R_METHOD),
            by_line(R_VALUE).first().alias(R_VALUE),
            by_line(R_CCY).first().alias(R_CCY),
            by_line(R_SCORE).first().alias(R_SCORE),
            by_line(R_ID).last().alias("_tie_id"),
            by_line(R_LINE).last().alias("_tie_line"),
            col(sample).min().alias(sample),
        ]))
}

/// Join arguments with nulls equal (a missing key field matches a missing one) and the left side's row
/// order kept, so that outputs are deterministic.
pub fn join_args(how: JoinType) -> JoinArgs {
    let mut a = JoinArgs::new(how);
    a.nulls_equal = true;
    a.maintain_order = MaintainOrderJoin::Left;
    a
}

/// One rate-card row as text cells, for the table-level checks.
#[derive(Debug, Clone, PartialEq)]
struct CardRow {
    line: u64,
    rule_id: String,
    /// Every column but `line_number`, rendered, in schema order.
    cells: Vec<(String, String)>,
    /// Normalised scope: customer, template, family, meter category, meter subcategory, product.
    scope: Vec<String>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
}

fn card_rows(rate_cards: &DataFrame) -> Result<Vec<CardRow>> {
    let err = PipelineError::polars("rate");
    let mut rows = Vec::with_capacity(rate_cards.height());
    let cols: Vec<&str> = rc::names().into_iter().filter(|c| *c != rc::line_number).collect();
    let scope_cols = [
        rc::customer_id,
        rc::template,
        rc::product_family,
        rc::meter_category,
        rc::meter_subcategory,
        rc::product_id,
    ];
    let lines = rate_cards
        .column(rc::line_number)
        .and_then(|c| c.cast(&DataType::Int64))
        .map_err(err)?;
    let from = rate_cards
        .column(rc::valid_from)
        .map_err(PipelineError::polars("rate"))?;
    let to = rate_cards.column(rc::valid_to).map_err(PipelineError::polars("rate"))?;
    for i in 0..rate_cards.height() {
        let text = |c: &str| -> String {
            rate_cards
                .column(c)
                .ok()
                .and_then(|s| s.get(i).ok())
                .map(|v| match v {
                    AnyValue::Null => String::new(),
                    AnyValue::String(s) => s.to_string(),
                    AnyValue::StringOwned(s) => s.to_string(),
                    AnyValue::Decimal(..) => crate::decimal::any_to_decimal(&v)
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let date = |c: &Column| match c.get(i) {
            Ok(AnyValue::Date(d)) => NaiveDate::from_num_days_from_ce_opt(d + 719_163),
            _ => None,
        };
        let scope = scope_cols
            .iter()
            .map(|c| {
                let v = text(c).trim().to_lowercase();
                if v == "*" { String::new() } else { v }
            })
            .collect();
        rows.push(CardRow {
            line: lines.get(i).ok().and_then(|v| v.extract::<i64>()).unwrap_or(0) as u64,
            rule_id: text(rc::rule_id),
            cells: cols
                .iter()
                .map(|c| (c.to_string(), text(c).trim().to_string()))
                .collect(),
            scope,
            from: date(from),
            to: date(to),
        });
    }
    Ok(rows)
}

/// Table-level checks of a staged rate card (`file` names it in errors), after the per-row checks of
/// `reference::stage_reference`:
/// - one `rule_id` on rows that differ is an error on the later row, naming the first differing column;
///   identical rows with one `rule_id` count once (the later ones are dropped from the returned frame);
/// - two different rules with the same scope (every level naming the same value, or both any) whose validity
///   windows overlap would tie on every line they both match: an error naming both, on the later row.
///
/// Returns the rate card without repeated rows, or every error found.
pub fn validate_rate_cards(rate_cards: &DataFrame, file: &str) -> Result<DataFrame> {
    let rows = card_rows(rate_cards)?;
    let mut errors = Vec::new();
    let mut keep = vec![true; rows.len()];
    let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        match first_of.get(r.rule_id.as_str()) {
            None => {
                first_of.insert(&r.rule_id, i);
            }
            Some(&j) => {
                keep[i] = false;
                if let Some((c, _)) = r.cells.iter().zip(&rows[j].cells).find(|(a, b)| a != b).map(|(a, _)| a) {
                    errors.push(ConfigError {
                        file: file.into(),
                        line: r.line,
                        column: c.clone(),
                        message: format!(
                            "rule_id `{}` is also on line {} with a different `{c}`; give each rule its own rule_id, or make the rows identical",
                            r.rule_id, rows[j].line
                        ),
                    });
                }
            }
        }
    }
    let kept: Vec<&CardRow> = rows.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| r).collect();
    for (a_i, a) in kept.iter().enumerate() {
        for b in &kept[a_i + 1..] {
            if a.scope != b.scope {
                continue;
            }
            // [from, to) windows, open ends unbounded: they overlap when each starts before the other ends.
            let starts_before_end = |s: Option<NaiveDate>, e: Option<NaiveDate>| match (s, e) {
                (Some(s), Some(e)) => s < e,
                _ => true,
            };
            if starts_before_end(a.from, b.to) && starts_before_end(b.from, a.to) {
                let (first, later) = if a.line <= b.line { (a, b) } else { (b, a) };
                errors.push(ConfigError {
                    file: file.into(),
                    line: later.line,
                    column: rc::valid_from.into(),
                    message: format!(
                        "rules `{}` (line {}) and `{}` have the same scope and overlapping validity, so they would tie on every line they both match; end one with `valid_to` on or before the other's `valid_from`, or narrow one's scope",
                        first.rule_id, first.line, later.rule_id
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column.clone()));
        return Err(PipelineError::Configs(errors));
    }
    let mask = BooleanChunked::from_slice("keep".into(), &keep);
    rate_cards.filter(&mask).map_err(PipelineError::polars("rate"))
}
