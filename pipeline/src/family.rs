//! `product_family` of a Partner Center line, derived at ingest by the one rule table of DESIGN §5.
//!
//! The rules are data ([`RULES`]), read top to bottom, first match wins; [`product_family`] turns them into one
//! Polars `when/then` chain over the staged (snake_case) columns. Matching is case-insensitive. A null cell
//! never matches, so a rule about a column a format lacks (legacy lines have no `publisher_name`) just does not
//! fire.

use polars::prelude::*;
use schemas::stg_pc_invoice_lines as inv;

use crate::source::SourceKind;

/// What a rule looks at in one column.
#[derive(Clone, Copy, Debug)]
pub enum Test {
    /// The column contains the text (case-insensitive).
    Contains(&'static str),
    /// The column starts with the text (case-insensitive).
    StartsWith(&'static str),
    /// The column is non-empty and does not start with the text (case-insensitive).
    SetAndNotStartsWith(&'static str),
    /// Always true: the fallback of a source kind.
    Always,
}

/// Which source kinds a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Usage,
    Invoice,
}

/// One row of the table: the family, where it applies, and the columns any of which may satisfy the test.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub family: &'static str,
    pub scope: Scope,
    pub columns: &'static [&'static str],
    pub test: Test,
}

/// DESIGN §5, in order. `ReservationOrderId` is deliberately absent: Microsoft fills it on almost every line.
pub const RULES: &[Rule] = &[
    Rule {
        family: "marketplace",
        scope: Scope::All,
        columns: &[inv::publisher_name],
        test: Test::SetAndNotStartsWith("microsoft"),
    },
    Rule {
        family: "azure_usage",
        scope: Scope::Usage,
        columns: &[],
        test: Test::Always,
    },
    Rule {
        family: "reservation",
        scope: Scope::Invoice,
        columns: &[inv::term_and_billing_cycle, inv::sku_name],
        test: Test::Contains("reservation"),
    },
    Rule {
        family: "reservation",
        scope: Scope::Invoice,
        columns: &[inv::term_and_billing_cycle, inv::sku_name],
        test: Test::Contains("reserved"),
    },
    Rule {
        family: "savings_plan",
        scope: Scope::Invoice,
        columns: &[
            inv::product_name,
            inv::sku_name,
            inv::term_and_billing_cycle,
        ],
        test: Test::Contains("savings plan"),
    },
    Rule {
        family: "azure_usage",
        scope: Scope::Invoice,
        columns: &[inv::product_id],
        test: Test::StartsWith("dzh318z0"),
    },
    Rule {
        family: "software",
        scope: Scope::Invoice,
        columns: &[inv::product_id],
        test: Test::StartsWith("dg7gmgf0"),
    },
    Rule {
        family: "software",
        scope: Scope::Invoice,
        columns: &[inv::term_and_billing_cycle],
        test: Test::Contains("perpetual"),
    },
    Rule {
        family: "license",
        scope: Scope::Invoice,
        columns: &[],
        test: Test::Always,
    },
];

fn condition(rule: &Rule) -> Expr {
    let one = |c: &str| {
        let lower = col(c).str().to_lowercase();
        let e = match rule.test {
            Test::Contains(t) => lower.str().contains_literal(lit(t)),
            Test::StartsWith(t) => lower.str().starts_with(lit(t)),
            Test::SetAndNotStartsWith(t) => col(c)
                .str()
                .len_bytes()
                .gt(lit(0u32))
                .and(lower.str().starts_with(lit(t)).not()),
            Test::Always => lit(true),
        };
        // A null cell is "no match", never null: `when` would treat null as false anyway, but `or` chains must not
        // turn a later match into null.
        e.fill_null(lit(false))
    };
    match rule.test {
        Test::Always => lit(true),
        _ => rule
            .columns
            .iter()
            .map(|c| one(c))
            .reduce(|a, b| a.or(b))
            .unwrap_or(lit(false)),
    }
}

/// The `product_family` expression for staged rows of `kind` (string column, never null).
pub fn product_family(kind: SourceKind) -> Expr {
    let scope_ok = |s: Scope| match (s, kind) {
        (Scope::All, _)
        | (Scope::Usage, SourceKind::DailyUsage)
        | (Scope::Invoice, SourceKind::InvoiceLines) => true,
        _ => false,
    };
    let rules: Vec<&Rule> = RULES.iter().filter(|r| scope_ok(r.scope)).collect();
    // Build the chain from the last rule backwards so that the first rule is the outermost `when`.
    let mut expr: Expr = lit(NULL).cast(DataType::String);
    for r in rules.iter().rev() {
        expr = when(condition(r)).then(lit(r.family)).otherwise(expr);
    }
    expr.alias(inv::product_family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_lines_by_the_table() {
        let df = df!(
            "publisher_name" => [Some("Microsoft Corporation"), Some("SendGrid"), Some("Microsoft"), Some("Microsoft"), None, Some(""), Some("Microsoft")],
            "term_and_billing_cycle" => [Some("One-Year commitment"), None, Some("3 Years Reservation"), Some("1 Compute Hour"), None, Some("Perpetual"), None],
            "sku_name" => [Some("E3"), Some("x"), Some("y"), Some("z"), Some("Reserved VM Instance, B4ms"), None, Some("Savings Plan, 1 year")],
            "product_name" => [Some("Office"), None, None, None, None, None, None],
            "product_id" => [Some("CFQ7TTC0LH0J"), Some("DZH318Z0X"), Some("DZH318Z0X"), Some("DZH318Z0X"), Some("CFQ"), Some("X"), Some("X")],
        )
        .unwrap();
        let out = df
            .lazy()
            .select([product_family(SourceKind::InvoiceLines)])
            .collect()
            .unwrap();
        let got: Vec<&str> = out
            .column("product_family")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(
            got,
            [
                "license",
                "marketplace",
                "reservation",
                "azure_usage",
                "reservation",
                "software",
                "savings_plan"
            ]
        );
    }

    #[test]
    fn usage_rows_are_azure_usage_unless_third_party() {
        let df = df!("publisher_name" => [Some("Microsoft"), Some("Elastic"), None]).unwrap();
        let out = df
            .lazy()
            .select([product_family(SourceKind::DailyUsage)])
            .collect()
            .unwrap();
        let got: Vec<&str> = out
            .column("product_family")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(got, ["azure_usage", "marketplace", "azure_usage"]);
    }
}
