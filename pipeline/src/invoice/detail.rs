//! `fct_invoice_detail` and the other lazy joins of the rated parts with the small lines frame (the FOCUS dataset
//! and the ledger read them). Nothing here materialises the parts: each is a plan the job streams.

use super::*;

/// Every priced rated part (all its columns, plus `signed_q`) with the invoice line its group became, as
/// `m_invoice_line_id` and `m_invoice_number`: a lazy join with the small lines frame, so it streams. Read by
/// `fct_invoice_detail` and by the FOCUS dataset (`crate::focus`).
pub fn line_parts(rated: LazyFrame, lines: &DataFrame) -> LazyFrame {
    let map = lines
        .clone()
        .lazy()
        .filter(
            CHARGE_TYPES
                .iter()
                .fold(lit(false), |acc, t| acc.or(col(fl::line_type).eq(lit(*t)))),
        )
        .select([
            col(fl::customer_id).alias("k_customer"),
            col(fl::currency).alias("k_currency"),
            col(fl::line_type).alias("k_line_type"),
            col(fl::group_key).alias("group_key"),
            col(fl::product_family).fill_null(lit("")).alias("k_family"),
            col(fl::invoice_line_id).alias("m_invoice_line_id"),
            col(fl::invoice_number).alias("m_invoice_number"),
        ]);
    let keys: Vec<Expr> = KEYS.iter().map(|k| col(*k)).collect();
    let mut args = JoinArgs::new(JoinType::Inner);
    args.maintain_order = MaintainOrderJoin::Left;
    keyed(rated)
        .filter(col("priced"))
        .join(map, keys.clone(), keys, args)
}

/// `fct_invoice_detail`: every priced rated part, joined to the invoice line its group became, in the rated
/// parts' order. Given a subset of the parts and the lines of the same customers, it is that subset of the rows
/// (the job builds it per bucket of customers, `cspbill::buckets`).
pub fn fct_invoice_detail(rated: LazyFrame, lines: &DataFrame, period: Period) -> LazyFrame {
    line_parts(rated, lines)
        .select([
            col("m_invoice_line_id").alias(det::invoice_line_id),
            col("m_invoice_number").alias(det::invoice_number),
            lit(period.to_string()).alias(det::period),
            col(r::customer_id).alias(det::customer_id),
            col(r::part_id).alias(det::part_id),
            col(r::line_id).alias(det::line_id),
            col(r::charge_date).alias(det::charge_date),
            col(r::subscription_id).alias(det::subscription_id),
            col(r::resource_group).alias(det::resource_group),
            col(r::resource_uri).alias(det::resource_uri),
            col(r::meter_category).alias(det::meter_category),
            col(r::meter_name).alias(det::meter_name),
            col(r::product_id).alias(det::product_id),
            col(r::sku_id).alias(det::sku_id),
            col("signed_q").alias(det::quantity),
            col(r::cost_ic).alias(det::cost),
            col(r::price).alias(det::price),
            col(r::invoice_currency).alias(det::currency),
            col(r::rate_rule_id).alias(det::rate_rule_id),
            col(r::fx_rate).alias(det::fx_rate),
            col(r::tag_rule_id).alias(det::tag_rule_id),
            col(r::unit_path).alias(det::unit_path),
        ])
}

/// The priced rated parts of `rated` with the `invoice_line_id` and `invoice_number` of the line their group
/// became ([`line_parts`] under the ledger's column names, keeping every rated column). Lazy: the ledger
/// aggregates it with a streaming group-by.
pub fn invoiced_parts(rated: LazyFrame, lines: &DataFrame) -> LazyFrame {
    line_parts(rated, lines).rename(["m_invoice_line_id", "m_invoice_number"], ["invoice_line_id", "invoice_number"], true)
}
