//! Tag rules and org units as the allocation stage uses them: validated once (DESIGN §4.2, §5 "Allocate"),
//! with every configuration error naming file, line and column, then turned into small Rust values.
//!
//! Checks: rows of one `rule_id` share their conditions; shares are above 0 and sum to 1, or the last row (file
//! order) leaves its share blank and takes the remainder; a `tag_value` needs a `tag_key`; globs compile; a
//! `target_unit_id` is a unit of the target customer (where the rule names that customer; rules for any customer
//! are checked per charge by the stage); org units form a tree per customer (no unknown parent, no parent in
//! another customer, no cycle). Validation fills `stg_tag_rules.part_no` and the blank last share, and
//! `stg_org_units.unit_path` (unit ids from the root joined by `/`).

use std::collections::HashMap;

use globset::{GlobBuilder, GlobMatcher};
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{stg_org_units as ou, stg_tag_rules as tr};

use crate::decimal::{any_to_decimal, to_mantissa};
use crate::error::{ConfigError, PipelineError, Result};

/// One part of a rule: where its share of a charge goes.
#[derive(Clone, Debug, PartialEq)]
pub struct RulePart {
    pub part_no: i64,
    pub share: Decimal,
    pub target_customer_id: Option<String>,
    pub target_unit_id: Option<String>,
    /// The unit's path when the target customer is known from the rule; `None` for rules of any customer.
    pub unit_path: Option<String>,
    pub is_last: bool,
    pub line_number: i64,
}

/// A tag rule: its conditions (lower-cased where compared case-insensitively; `None` = any) and its parts.
#[derive(Clone, Debug)]
pub struct TagRule {
    pub rule_id: String,
    pub priority: i64,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub tag_key: Option<String>,
    pub tag_value: Option<String>,
    pub parts: Vec<RulePart>,
}

impl TagRule {
    /// The customer whose units the rule's parts name, when the rule fixes it.
    fn part_customer(&self, part: &RulePart) -> Option<String> {
        part.target_customer_id
            .clone()
            .or_else(|| self.customer_id.clone())
    }
}

/// A glob matcher for a resource group (case-insensitive) or a tag value (case-sensitive).
pub fn glob(pattern: &str, case_insensitive: bool) -> std::result::Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| {
            format!("`{pattern}` is not a valid glob ({e}); use `*`, `?` and `[...]` only")
        })
}

/// A condition cell: trimmed, empty or `*` = any.
fn condition(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty() && *s != "*")
        .map(str::to_string)
}

fn strings(df: &DataFrame, c: &str) -> Vec<Option<String>> {
    match df.column(c).ok().and_then(|c| c.str().ok().cloned()) {
        Some(ca) => ca.iter().map(|v| v.map(str::to_string)).collect(),
        None => vec![None; df.height()],
    }
}

fn ints(df: &DataFrame, c: &str) -> Vec<Option<i64>> {
    match df.column(c).ok().and_then(|c| c.i64().ok().cloned()) {
        Some(ca) => ca.iter().collect(),
        None => vec![None; df.height()],
    }
}

fn decimals(df: &DataFrame, c: &str) -> Vec<Option<Decimal>> {
    match df.column(c) {
        Ok(col) => (0..col.len())
            .map(|i| col.get(i).ok().and_then(|v| any_to_decimal(&v)))
            .collect(),
        Err(_) => vec![None; df.height()],
    }
}

/// A `Decimal(38, 18)` column from Rust decimals.
pub fn decimal_column(name: &str, values: &[Option<Decimal>]) -> Column {
    Int128Chunked::from_iter_options(name.into(), values.iter().map(|v| v.map(to_mantissa)))
        .into_decimal_unchecked(schemas::MONEY_PRECISION, schemas::MONEY_SCALE)
        .into_series()
        .into_column()
}

/// An org unit with its resolved path.
#[derive(Clone, Debug)]
pub struct OrgUnit {
    pub unit_id: String,
    /// Lower-cased (customer ids compare case-insensitively).
    pub customer_id: String,
    pub unit_path: String,
}

/// Validates org units and computes each unit's path. Returns the units in frame order.
pub fn org_units(
    org_units: &DataFrame,
    file: &str,
) -> std::result::Result<Vec<OrgUnit>, Vec<ConfigError>> {
    let ids = strings(org_units, ou::unit_id);
    let customers: Vec<Option<String>> = strings(org_units, ou::customer_id)
        .into_iter()
        .map(|c| c.map(|c| c.trim().to_lowercase()))
        .collect();
    let parents: Vec<Option<String>> = strings(org_units, ou::parent_unit_id)
        .into_iter()
        .map(|p| condition(p.as_deref()))
        .collect();
    let lines = ints(org_units, ou::line_number);
    let line = |i: usize| lines.get(i).copied().flatten().unwrap_or(0) as u64;
    let err = |i: usize, column: &str, message: String| ConfigError {
        file: file.into(),
        line: line(i),
        column: column.into(),
        message,
    };
    let mut errors = Vec::new();

    // (customer, unit) → row; unit → customers having it (to tell "another customer" from "unknown").
    let mut by_key: HashMap<(String, String), usize> = HashMap::new();
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..org_units.height() {
        let (Some(id), Some(c)) = (ids[i].clone(), customers[i].clone()) else {
            errors.push(err(
                i,
                ou::unit_id,
                "an org unit needs a `unit_id` and a `customer_id`; fill both".into(),
            ));
            continue;
        };
        if let Some(&j) = by_key.get(&(c.clone(), id.clone())) {
            errors.push(err(i, ou::unit_id, format!("unit `{id}` of customer `{c}` appears twice (first on line {}); keep one row per unit", line(j))));
            continue;
        }
        by_key.insert((c.clone(), id.clone()), i);
        owners.entry(id).or_default().push(c);
    }
    // Parent of each row, within its customer.
    let mut parent_row: Vec<Option<usize>> = vec![None; org_units.height()];
    for i in 0..org_units.height() {
        let (Some(id), Some(c), Some(p)) = (&ids[i], &customers[i], &parents[i]) else {
            continue;
        };
        if p == id {
            errors.push(err(
                i,
                ou::parent_unit_id,
                format!("unit `{id}` is its own parent; clear `parent_unit_id` for a root unit"),
            ));
            continue;
        }
        match by_key.get(&(c.clone(), p.clone())) {
            Some(&j) => parent_row[i] = Some(j),
            None => match owners.get(p) {
                Some(others) => errors.push(err(
                    i,
                    ou::parent_unit_id,
                    format!("parent `{p}` of unit `{id}` belongs to customer `{}`, not `{c}`; org units form a tree per customer, pick a parent of the same customer", others[0]),
                )),
                None => errors.push(err(i, ou::parent_unit_id, format!("parent `{p}` of unit `{id}` is not in the file; add it or clear `parent_unit_id`"))),
            },
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Paths from the root; a walk that returns to a row it has seen is a cycle, reported once per cycle.
    let mut paths: Vec<Option<String>> = vec![None; org_units.height()];
    let mut in_cycle = vec![false; org_units.height()];
    for start in 0..org_units.height() {
        let mut chain = vec![start];
        let mut cur = start;
        let mut cycle = false;
        while let Some(p) = parent_row[cur] {
            if let Some(pos) = chain.iter().position(|&r| r == p) {
                let members = &chain[pos..];
                if !members.iter().any(|&r| in_cycle[r]) {
                    let names: Vec<String> = members
                        .iter()
                        .chain(std::iter::once(&p))
                        .map(|&r| format!("`{}`", ids[r].clone().unwrap_or_default()))
                        .collect();
                    let first = *members.iter().min().unwrap_or(&p);
                    errors.push(err(first, ou::parent_unit_id, format!("org units form a cycle: {}; one of them must have another parent or none", names.join(" → "))));
                }
                for &r in members {
                    in_cycle[r] = true;
                }
                cycle = true;
                break;
            }
            chain.push(p);
            cur = p;
        }
        if !cycle {
            let path: Vec<String> = chain
                .iter()
                .rev()
                .map(|&r| ids[r].clone().unwrap_or_default())
                .collect();
            paths[start] = Some(path.join("/"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((0..org_units.height())
        .filter_map(|i| {
            Some(OrgUnit {
                unit_id: ids[i].clone()?,
                customer_id: customers[i].clone()?,
                unit_path: paths[i].clone()?,
            })
        })
        .collect())
}

/// Validates tag rules against the org units; returns the rules in file order of their first row.
pub fn tag_rules(
    tag_rules: &DataFrame,
    units: &[OrgUnit],
    file: &str,
) -> std::result::Result<Vec<TagRule>, Vec<ConfigError>> {
    let n = tag_rules.height();
    let ids = strings(tag_rules, tr::rule_id);
    let prio = ints(tag_rules, tr::priority);
    let cust = strings(tag_rules, tr::customer_id);
    let sub = strings(tag_rules, tr::subscription_id);
    let rg = strings(tag_rules, tr::resource_group);
    let key = strings(tag_rules, tr::tag_key);
    let val = strings(tag_rules, tr::tag_value);
    let tcust = strings(tag_rules, tr::target_customer_id);
    let tunit = strings(tag_rules, tr::target_unit_id);
    let shares = decimals(tag_rules, tr::share);
    let lines = ints(tag_rules, tr::line_number);
    let line = |i: usize| lines[i].unwrap_or(0);
    let err = |i: usize, column: &str, message: String| ConfigError {
        file: file.into(),
        line: line(i) as u64,
        column: column.into(),
        message,
    };
    let mut errors = Vec::new();

    // Rows in file order, grouped by rule id in order of first appearance.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (line(i), i));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for &i in &order {
        let Some(id) = ids[i].clone() else {
            errors.push(err(
                i,
                tr::rule_id,
                "`rule_id` is empty; every row needs one".into(),
            ));
            continue;
        };
        let g = *group_of.entry(id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }

    let lower = |v: &Option<String>| condition(v.as_deref()).map(|s| s.to_lowercase());
    let units_of: HashMap<(String, String), String> = units
        .iter()
        .map(|u| {
            (
                (u.customer_id.clone(), u.unit_id.clone()),
                u.unit_path.clone(),
            )
        })
        .collect();
    let mut rules = Vec::new();
    for rows in &groups {
        let r0 = rows[0];
        let rule_id = ids[r0].clone().unwrap_or_default();
        // Conditions of every row must equal the first row's.
        let conditions = |i: usize| -> [(&'static str, Option<String>); 6] {
            [
                (tr::priority, prio[i].map(|p| p.to_string())),
                (tr::customer_id, lower(&cust[i])),
                (tr::subscription_id, lower(&sub[i])),
                (tr::resource_group, condition(rg[i].as_deref())),
                (tr::tag_key, lower(&key[i])),
                (tr::tag_value, condition(val[i].as_deref())),
            ]
        };
        let first = conditions(r0);
        for &i in &rows[1..] {
            for ((c, a), (_, b)) in first.iter().zip(conditions(i).iter()) {
                if a != b {
                    errors.push(err(
                        i,
                        c,
                        format!(
                            "rows of tag rule `{rule_id}` differ in `{c}` (`{}` on line {}, `{}` here); the rows of one rule share their conditions: align them or give this row another rule_id",
                            a.clone().unwrap_or_default(),
                            line(r0),
                            b.clone().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let Some(priority) = prio[r0] else {
            errors.push(err(
                r0,
                tr::priority,
                format!(
                    "tag rule `{rule_id}` has no `priority`; give it a whole number (lower wins)"
                ),
            ));
            continue;
        };
        let tag_key = lower(&key[r0]);
        let tag_value = condition(val[r0].as_deref());
        if tag_value.is_some() && tag_key.is_none() {
            errors.push(err(r0, tr::tag_value, format!("tag rule `{rule_id}` has a `tag_value` without a `tag_key`; add the tag_key or clear the value")));
        }
        let resource_group = condition(rg[r0].as_deref());
        if let Some(g) = &resource_group
            && let Err(m) = glob(g, true)
        {
            errors.push(err(r0, tr::resource_group, m));
        }
        if let Some(v) = &tag_value
            && let Err(m) = glob(v, false)
        {
            errors.push(err(r0, tr::tag_value, m));
        }

        // Shares: above 0; all but the last given; sum exactly 1, or the blank last takes the remainder.
        let mut parts = Vec::new();
        let mut sum = Decimal::ZERO;
        let mut shares_ok = true;
        for (k, &i) in rows.iter().enumerate() {
            let last = k + 1 == rows.len();
            let share = match shares[i] {
                Some(s) if s <= Decimal::ZERO => {
                    errors.push(err(
                        i,
                        tr::share,
                        format!("share {s} of tag rule `{rule_id}` must be above 0"),
                    ));
                    shares_ok = false;
                    s
                }
                Some(s) => s,
                None if last && rows.len() == 1 => Decimal::ONE,
                None if last => {
                    let rest = Decimal::ONE - sum;
                    if rest <= Decimal::ZERO {
                        errors.push(err(i, tr::share, format!("the shares of tag rule `{rule_id}` before its blank last row already sum to {sum}; they must stay below 1 so that the last row takes the remainder")));
                        shares_ok = false;
                    }
                    rest
                }
                None => {
                    errors.push(err(i, tr::share, format!("only the last row of tag rule `{rule_id}` may leave `share` blank; give this row its share")));
                    shares_ok = false;
                    Decimal::ZERO
                }
            };
            sum += share;
            let target_customer_id = condition(tcust[i].as_deref());
            let target_unit_id = tunit[i]
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            parts.push(RulePart {
                part_no: k as i64 + 1,
                share,
                target_customer_id,
                target_unit_id,
                unit_path: None,
                is_last: last,
                line_number: line(i),
            });
        }
        if shares_ok && sum != Decimal::ONE {
            errors.push(err(*rows.last().unwrap_or(&r0), tr::share, format!("the shares of tag rule `{rule_id}` sum to {sum}, not 1; correct them or leave the last row's share blank to take the remainder")));
        }
        let mut rule = TagRule {
            rule_id,
            priority,
            customer_id: lower(&cust[r0]),
            subscription_id: lower(&sub[r0]),
            resource_group,
            tag_key,
            tag_value,
            parts: Vec::new(),
        };
        // Target units of a known customer are checked here; rules for any customer are checked per charge.
        for (k, part) in parts.iter_mut().enumerate() {
            let (Some(unit), Some(c)) = (part.target_unit_id.clone(), rule.part_customer(part))
            else {
                continue;
            };
            match units_of.get(&(c.to_lowercase(), unit.clone())) {
                Some(path) => part.unit_path = Some(path.clone()),
                None => errors.push(err(
                    rows[k],
                    tr::target_unit_id,
                    format!("target_unit_id `{unit}` is not a unit of customer `{c}` in the org units (unit ids are case-sensitive); add the unit or correct the id"),
                )),
            }
        }
        rule.parts = parts;
        rules.push(rule);
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Validates tag rules and org units (rule groups, shares, globs, target units, the unit tree); returns the
/// completed frames: `stg_tag_rules` with `part_no` and the blank last share filled, `stg_org_units` with
/// `unit_path`. Every problem is a [`ConfigError`] with file, line and column (exit 2).
pub fn validate_tag_rules(
    tag_rules: &DataFrame,
    org_units: &DataFrame,
    tag_rules_file: &str,
    org_units_file: &str,
) -> Result<(DataFrame, DataFrame)> {
    let units = self::org_units(org_units, org_units_file).map_err(PipelineError::Configs)?;
    let rules =
        self::tag_rules(tag_rules, &units, tag_rules_file).map_err(PipelineError::Configs)?;

    // Fill part numbers and shares by line number.
    let by_line: HashMap<i64, (i64, Decimal)> = rules
        .iter()
        .flat_map(|r| {
            r.parts
                .iter()
                .map(|p| (p.line_number, (p.part_no, p.share)))
        })
        .collect();
    let lines = ints(tag_rules, tr::line_number);
    let part_no: Vec<Option<i64>> = lines
        .iter()
        .map(|l| l.and_then(|l| by_line.get(&l)).map(|p| p.0))
        .collect();
    let shares: Vec<Option<Decimal>> = lines
        .iter()
        .map(|l| l.and_then(|l| by_line.get(&l)).map(|p| p.1))
        .collect();
    let mut rules_df = tag_rules.clone();
    let polars_err = PipelineError::polars("int_charges_allocated");
    rules_df
        .with_column(Column::new(tr::part_no.into(), part_no))
        .map_err(polars_err)?;
    rules_df
        .with_column(decimal_column(tr::share, &shares))
        .map_err(PipelineError::polars("int_charges_allocated"))?;

    let paths: HashMap<(String, String), String> = units
        .iter()
        .map(|u| {
            (
                (u.customer_id.clone(), u.unit_id.clone()),
                u.unit_path.clone(),
            )
        })
        .collect();
    let ids = strings(org_units, ou::unit_id);
    let cust = strings(org_units, ou::customer_id);
    let unit_path: Vec<Option<String>> = ids
        .iter()
        .zip(cust.iter())
        .map(|(u, c)| {
            Some(
                paths
                    .get(&(c.as_ref()?.trim().to_lowercase(), u.clone()?))?
                    .clone(),
            )
        })
        .collect();
    let mut units_df = org_units.clone();
    units_df
        .with_column(Column::new(ou::unit_path.into(), unit_path))
        .map_err(PipelineError::polars("int_charges_allocated"))?;
    Ok((rules_df, units_df))
}
