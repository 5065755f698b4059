//! `gl_accounts.csv` resolved for one invoice line: each account (revenue, cost, deferred revenue, receivable,
//! payable) comes from the most specific row that names it, in this order: (line_type, product_family),
//! (line_type, `*`), (`*`, product_family), (`*`, `*`). A default row `*,*` therefore sets the control accounts
//! once, and specific rows only name what differs.

use std::collections::HashMap;

use polars::prelude::DataFrame;
use schemas::stg_gl_accounts as g;

use crate::error::Result;
use crate::invoice::cells;

/// The five accounts of one mapping row; `None` where the row leaves the cell empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounts {
    pub revenue: Option<String>,
    pub cost: Option<String>,
    pub deferred: Option<String>,
    pub receivable: Option<String>,
    pub payable: Option<String>,
}

/// Which account of a mapping an entry needs, for the message naming what to add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Revenue,
    Cost,
    Deferred,
    Receivable,
    Payable,
}

impl Role {
    /// The `gl_accounts.csv` column of the role.
    pub fn column(self) -> &'static str {
        match self {
            Role::Revenue => g::revenue_account,
            Role::Cost => g::cost_account,
            Role::Deferred => g::deferred_revenue_account,
            Role::Receivable => g::receivable_account,
            Role::Payable => g::payable_account,
        }
    }
    /// The value of `account_role` on journal lines (`fct_journal_entries.memo` names it too).
    pub fn label(self) -> &'static str {
        match self {
            Role::Revenue => "revenue",
            Role::Cost => "cost_of_sales",
            Role::Deferred => "deferred_revenue",
            Role::Receivable => "receivable",
            Role::Payable => "payable",
        }
    }
}

/// The staged `gl_accounts.csv`, keyed by (line_type, product_family) in lower case (`*` = any).
#[derive(Clone, Debug, Default)]
pub struct GlAccounts {
    rows: HashMap<(String, String), Accounts>,
}

impl GlAccounts {
    pub fn from_frame(df: &DataFrame) -> Result<Self> {
        let lt = cells::strs(df, g::line_type)?;
        let fam = cells::strs(df, g::product_family)?;
        let rev = cells::strs(df, g::revenue_account)?;
        let cost = cells::strs(df, g::cost_account)?;
        let def = cells::strs(df, g::deferred_revenue_account)?;
        let rec = cells::strs(df, g::receivable_account)?;
        let pay = cells::strs(df, g::payable_account)?;
        let mut rows = HashMap::new();
        for i in 0..lt.len() {
            let key = (lt[i].clone().unwrap_or_else(|| "*".into()), fam[i].clone().unwrap_or_else(|| "*".into()));
            rows.insert(
                key,
                Accounts {
                    revenue: rev[i].clone(),
                    cost: cost[i].clone(),
                    deferred: def[i].clone(),
                    receivable: rec[i].clone(),
                    payable: pay[i].clone(),
                },
            );
        }
        Ok(Self { rows })
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The account for `role` of a line of `line_type` and `family` (`None`: no family, as on service lines), or
    /// the (line_type, product_family) pair a row is missing for.
    pub fn account(&self, role: Role, line_type: &str, family: Option<&str>) -> std::result::Result<String, (String, String)> {
        let fam = family.filter(|f| !f.is_empty()).unwrap_or("*");
        let order = [(line_type, fam), (line_type, "*"), ("*", fam), ("*", "*")];
        for (t, f) in order {
            let Some(row) = self.rows.get(&(t.to_string(), f.to_string())) else { continue };
            let v = match role {
                Role::Revenue => &row.revenue,
                Role::Cost => &row.cost,
                Role::Deferred => &row.deferred,
                Role::Receivable => &row.receivable,
                Role::Payable => &row.payable,
            };
            if let Some(a) = v {
                return Ok(a.clone());
            }
        }
        Err((line_type.to_string(), fam.to_string()))
    }
}

/// The message naming what to add to `gl_accounts.csv` for one (line_type, product_family) pair.
pub fn missing_message(line_type: &str, family: &str, columns: &[&str]) -> String {
    let cols = columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    format!(
        "gl_accounts.csv has no {cols} for line_type `{line_type}` × product_family `{family}`; add a row `{line_type},{family}` with {}, or fill {} on the default row `*,*`",
        if columns.len() == 1 { "that column" } else { "those columns" },
        if columns.len() == 1 { "it" } else { "them" }
    )
}
