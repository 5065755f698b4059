//! The run's invariants (DESIGN §6) as pure plans: each compares two tables' row counts and Σ amounts per key and
//! returns the rows where they differ. An empty result means the invariant holds; the job fails the run
//! (exit 1) with the numbers otherwise.

use polars::prelude::*;

use crate::decimal::any_to_decimal;

/// Row count and Σ `amount` of `lf` per `keys`, as `rows_<tag>`, `amount_<tag>`.
fn totals(lf: LazyFrame, keys: &[&str], amount: &str, tag: &str) -> LazyFrame {
    let by: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    lf.group_by(by).agg([
        len().cast(DataType::Int64).alias(format!("rows_{tag}")),
        col(amount).sum().alias(format!("amount_{tag}")),
    ])
}

/// Compares rows and Σ amount of `left` and `right` per `keys` (full outer join, missing sides count 0).
/// Returns the keys where rows or amounts differ, with both sides' numbers. `compare_rows = false` compares
/// amounts only (a split makes more parts than charges).
pub fn compare(left: LazyFrame, right: LazyFrame, keys: &[&str], amount: &str, compare_rows: bool) -> LazyFrame {
    let l = totals(left, keys, amount, "left");
    let r = totals(right, keys, amount, "right");
    let on: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    let zero = lit(0i64);
    let joined = l
        .join(r, on.clone(), on, JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns))
        .with_columns([
            col("rows_left").fill_null(zero.clone()),
            col("rows_right").fill_null(zero),
            col("amount_left").fill_null(crate::decimal::dec("0")),
            col("amount_right").fill_null(crate::decimal::dec("0")),
        ]);
    let differs = col("amount_left").neq(col("amount_right"));
    let differs = if compare_rows { differs.or(col("rows_left").neq(col("rows_right"))) } else { differs };
    joined.filter(differs).sort(keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(), Default::default())
}

/// Renders the first rows of a collected comparison for an error message: `key=..: rows a vs b, Σ x vs y`.
pub fn describe(diff: &DataFrame, keys: &[&str], limit: usize) -> String {
    let mut out = Vec::new();
    for i in 0..diff.height().min(limit) {
        let key: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}={}", diff.column(k).ok().and_then(|c| c.get(i).ok()).map(|v| v.str_value().to_string()).unwrap_or_default()))
            .collect();
        let num = |c: &str| diff.column(c).ok().and_then(|c| c.get(i).ok()).map(|v| v.str_value().to_string()).unwrap_or_default();
        let dec = |c: &str| diff.column(c).ok().and_then(|c| c.get(i).ok()).and_then(|v| any_to_decimal(&v)).map(|d| d.to_string()).unwrap_or_default();
        out.push(format!(
            "{}: rows {} vs {}, sum {} vs {}",
            key.join(", "),
            num("rows_left"),
            num("rows_right"),
            dec("amount_left"),
            dec("amount_right")
        ));
    }
    if diff.height() > limit {
        out.push(format!("... and {} more", diff.height() - limit));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(keys: &[&str], amounts: &[&str]) -> LazyFrame {
        df!("k" => keys, "a" => amounts).unwrap().lazy().with_column(col("a").cast(schemas::money()))
    }

    #[test]
    fn equal_totals_give_no_rows() {
        let l = frame(&["x", "x", "y"], &["1.5", "2", "3"]);
        let r = frame(&["x", "y", "y"], &["3.5", "1", "2"]);
        assert_eq!(compare(l.clone(), r.clone(), &["k"], "a", false).collect().unwrap().height(), 0);
        // with rows compared, x has 2 vs 1 and y 1 vs 2
        assert_eq!(compare(l, r, &["k"], "a", true).collect().unwrap().height(), 2);
    }

    #[test]
    fn a_missing_cent_or_key_is_reported() {
        let l = frame(&["x", "z"], &["1.00", "5"]);
        let r = frame(&["x"], &["0.99"]);
        let d = compare(l, r, &["k"], "a", true).collect().unwrap();
        assert_eq!(d.height(), 2);
        let text = describe(&d, &["k"], 5);
        assert_eq!(text, "k=x: rows 1 vs 1, sum 1 vs 0.99; k=z: rows 1 vs 0, sum 5 vs 0");
    }
}
