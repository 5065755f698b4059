//! Telemetry retention: resource-level rows aggregated to coarser keys once they are older than the telemetry
//! window (issue 18). Pure: the job decides which periods are old and which tables and columns this applies to.

use polars::prelude::*;

/// How one table is aggregated: the columns emptied (identifying: row ids, resource names and URIs, tags,
/// source lines) and the columns summed (quantities and amounts). Every other column is a grouping key, so
/// rows keep their subscription, meter, day, price, rule and invoice line.
#[derive(Debug, Clone, Copy)]
pub struct Aggregation {
    pub table: &'static str,
    pub blank: &'static [&'static str],
    pub sum: &'static [&'static str],
    /// Which rows are resource-level (the others, such as invoice lines in the charge model, are financial
    /// records and pass through unchanged); None = every row.
    pub only: Option<fn() -> Expr>,
}

fn usage_rows() -> Expr {
    col("source_kind").eq(lit("daily_usage")).fill_null(lit(false))
}

fn resource_rows() -> Expr {
    col("resource_uri").is_not_null()
}

/// The aggregation of each resource-level table (subscription × meter × day, keeping every non-identifying
/// attribute as a key).
pub const AGGREGATIONS: &[Aggregation] = &[
    Aggregation {
        table: schemas::stg_pc_daily_usage::TABLE,
        blank: &[
            "line_id", "source_file", "line_number", "resource_group", "resource_uri", "tags", "additional_info",
            "service_info1", "service_info2",
        ],
        sum: &["quantity", "billing_pre_tax_total", "pricing_pre_tax_total"],
        only: None,
    },
    Aggregation {
        table: schemas::int_charges::TABLE,
        blank: &["line_id", "source_file", "line_number", "resource_group", "resource_uri", "tags"],
        sum: &["q", "cost", "list", "pec"],
        only: Some(usage_rows),
    },
    Aggregation {
        table: schemas::int_charges_allocated::TABLE,
        blank: &["line_id", "part_id", "source_file", "line_number", "resource_group", "resource_uri", "tags"],
        sum: &["q", "cost", "list", "pec"],
        only: Some(usage_rows),
    },
    Aggregation {
        table: schemas::int_charges_rated::TABLE,
        blank: &["line_id", "part_id", "source_file", "line_number", "resource_group", "resource_uri", "tags"],
        sum: &["q", "cost", "list", "pec", "cost_ic", "price", "margin"],
        only: Some(usage_rows),
    },
    Aggregation {
        table: schemas::fct_invoice_detail::TABLE,
        blank: &["part_id", "line_id", "resource_group", "resource_uri"],
        sum: &["quantity", "cost", "price"],
        only: Some(resource_rows),
    },
    // Rejected usage rows stay one by one (file, line, reason, amount: the evidence that nothing was lost); only
    // their raw text, which names resources and tags, is emptied.
    Aggregation {
        table: schemas::rejects_pc_daily_usage::TABLE,
        blank: &["raw"],
        sum: &["billing_pre_tax_total"],
        only: None,
    },
    Aggregation {
        table: schemas::focus_cost_and_usage::TABLE,
        blank: &["ResourceId", "ResourceName", "Tags", "x_PartId", "x_SourceLineId", "x_ResourceGroupName"],
        sum: &[
            "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ConsumedQuantity", "PricingQuantity",
            "PricingCurrencyEffectiveCost", "CommitmentDiscountQuantity", "x_BilledCostRounding",
        ],
        only: Some(focus_resource_rows),
    },
];

fn focus_resource_rows() -> Expr {
    col("ResourceId").is_not_null()
}

/// The aggregation of a table, if it is resource-level.
pub fn aggregation(table: &str) -> Option<&'static Aggregation> {
    AGGREGATIONS.iter().find(|a| a.table == table)
}

/// Rows grouped by every column that is neither emptied nor summed; summed columns added up exactly (Decimal
/// sums stay Decimal), emptied columns null of their type. Columns keep their order and types, so the table
/// reads as before with all periods together. Output sorted by the keys (the same rows give the same file).
/// Columns named in `agg` but absent from `schema` are ignored.
pub fn aggregate_rows(lf: LazyFrame, schema: &Schema, agg: &Aggregation) -> PolarsResult<LazyFrame> {
    let names: Vec<PlSmallStr> = schema.iter_names().cloned().collect();
    let keys: Vec<PlSmallStr> = names
        .iter()
        .filter(|n| !agg.blank.contains(&n.as_str()) && !agg.sum.contains(&n.as_str()))
        .cloned()
        .collect();
    let sums: Vec<Expr> = names
        .iter()
        .filter(|n| agg.sum.contains(&n.as_str()))
        .map(|n| col(n.clone()).sum().alias(n.clone()))
        .collect();
    let out: Vec<Expr> = schema
        .iter()
        .map(|(n, dt)| {
            if agg.blank.contains(&n.as_str()) {
                lit(NULL).cast(dt.clone()).alias(n.clone())
            } else {
                col(n.clone()).cast(dt.clone())
            }
        })
        .collect();
    let key_exprs: Vec<Expr> = keys.iter().map(|k| col(k.clone())).collect();
    let (rows, kept) = match agg.only {
        Some(only) => (lf.clone().filter(only()), Some(lf.filter(only().not()))),
        None => (lf, None),
    };
    let aggregated = rows
        .group_by(key_exprs.clone())
        .agg(sums)
        .sort_by_exprs(key_exprs, SortMultipleOptions::default().with_nulls_last(true).with_maintain_order(true))
        .select(out);
    match kept {
        None => Ok(aggregated),
        Some(kept) => concat([kept, aggregated], UnionArgs::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame_to_csv;

    const AGG: Aggregation = Aggregation {
        table: "t",
        blank: &["line_id", "resource_uri", "tags"],
        sum: &["quantity", "cost"],
        only: None,
    };

    #[test]
    fn rows_of_one_subscription_meter_and_day_become_one_with_exact_sums() {
        let dec = |v: &[&str]| Series::new("x".into(), v).cast(&DataType::Decimal(38, 18)).unwrap();
        let df = DataFrame::new_infer_height(vec![
            Column::new("line_id".into(), ["a", "b", "c", "d"]),
            Column::new("subscription_id".into(), ["s1", "s1", "s1", "s2"]),
            Column::new("meter".into(), ["vm", "vm", "vm", "vm"]),
            Column::new("day".into(), ["2025-01-01", "2025-01-01", "2025-01-02", "2025-01-01"]),
            Column::new("resource_uri".into(), ["/r/vm-jane", "/r/vm-max", "/r/vm-jane", "/r/x"]),
            Column::new("tags".into(), [Some("{\"o\":\"jane\"}"), None, None, None]),
            dec(&["0.100000000000000001", "0.2", "1", "5"]).with_name("quantity".into()).into_column(),
            dec(&["1.000000000000000001", "2.000000000000000002", "3", "-4"]).with_name("cost".into()).into_column(),
        ])
        .unwrap();
        let schema = df.schema().as_ref().clone();
        let mut out = aggregate_rows(df.lazy(), &schema, &AGG).unwrap().collect().unwrap();
        assert_eq!(out.schema().as_ref(), &schema, "same columns, same order, same types");
        // By hand: (s1, vm, 01-01) = rows a + b: quantity 0.300000000000000001, cost 3.000000000000000003.
        assert_eq!(
            frame_to_csv(&mut out),
            "line_id,subscription_id,meter,day,resource_uri,tags,quantity,cost\n\
             ,s1,vm,2025-01-01,,,0.300000000000000001,3.000000000000000003\n\
             ,s1,vm,2025-01-02,,,1.000000000000000000,3.000000000000000000\n\
             ,s2,vm,2025-01-01,,,5.000000000000000000,-4.000000000000000000\n"
        );
    }
}

#[cfg(test)]
mod only_tests {
    use super::*;
    use crate::testing::frame_to_csv;

    #[test]
    fn invoice_lines_in_the_charge_model_pass_through_untouched() {
        let dec = |n: &str, v: &[&str]| Series::new(n.into(), v).cast(&DataType::Decimal(38, 18)).unwrap().into_column();
        let df = DataFrame::new_infer_height(vec![
            Column::new("line_id".into(), ["a", "b", "c"]),
            Column::new("source_kind".into(), ["daily_usage", "daily_usage", "invoice_line"]),
            Column::new("resource_uri".into(), [Some("/r/1"), Some("/r/2"), None]),
            dec("cost", &["1.5", "2.25", "10"]),
        ])
        .unwrap();
        let agg = Aggregation { table: "t", blank: &["line_id", "resource_uri"], sum: &["cost"], only: Some(usage_rows) };
        let schema = df.schema().as_ref().clone();
        let mut out = aggregate_rows(df.lazy(), &schema, &agg).unwrap().collect().unwrap();
        assert_eq!(
            frame_to_csv(&mut out),
            "line_id,source_kind,resource_uri,cost\n\
             c,invoice_line,,10.000000000000000000\n\
             ,daily_usage,,3.750000000000000000\n"
        );
    }
}
