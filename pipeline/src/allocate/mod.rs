//! `int_charges_allocated` and `int_tag_compliance`: each charge assigned to the customer and org unit that pays
//! for it by the MSP's tag rules, split by share (DESIGN §5 "Allocate", §4.2 `tag_rules.csv`, `org_units.csv`).
//!
//! How it stays lazy and cheap on millions of charges: rules are matched once per distinct charge key
//! (customer, subscription, resource group, tags text), not per charge. Each distinct tags text is parsed once
//! by a UDF ([`tags::tag_flags`]) into one flag per tag condition of the rules; resource-group globs are UDFs
//! on the same distinct keys. The winning rule per key (lowest priority; a tie between two rule ids is an error
//! row) is joined back to the charges, then to the rule's parts, which explodes a split charge into its parts.
//! A part's amount is `amount × share`, and the last part (file order) takes `amount − Σ other parts` (the
//! other parts' shares ride along on the last part's row, so this stays elementwise), so parts always sum
//! exactly to the whole. Nothing is collected here: the rules, units and customers come in as small
//! collected frames, as DESIGN allows.

pub mod rules;
pub mod tags;

use std::collections::HashMap;

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{
    int_charges as ic, int_charges_allocated as ia, int_tag_compliance as tc, stg_customers as cu,
};

use crate::context::RunContext;
use crate::error::{PipelineError, Result};
pub use rules::validate_tag_rules;
use rules::{TagRule, decimal_column};
use tags::{MALFORMED, TagCondition, flag_name, tag_flags};

const STAGE: &str = "int_charges_allocated";

/// `allocation` of a part routed by a tag rule.
pub const ALLOCATED: &str = "allocated";
/// `allocation` of a charge no rule matches: it stays with its own customer.
pub const UNALLOCATED: &str = "unallocated";
/// `allocation` of a charge two rules claim at the winning priority (an error row names them; exit 2).
pub const CONFLICT: &str = "conflict";

/// Error codes of [`Allocated::errors`].
pub const ERR_RULE_CONFLICT: &str = "tag_rule_conflict";
pub const ERR_UNIT_NOT_OF_CUSTOMER: &str = "unit_not_of_customer";

/// The outputs of the allocation stage.
pub struct Allocated {
    /// `int_charges_allocated`: one row per part.
    pub allocated: LazyFrame,
    /// `int_tag_compliance`: per source customer and Azure subscription.
    pub compliance: LazyFrame,
    /// Problems only the data reveals (`code`, `message`): a non-empty frame is exit 2.
    pub errors: LazyFrame,
    /// Distinct `tags` texts that are not a JSON object (counted as no tags): `tags`, `charges` (how many
    /// charges carry it), `line_id` (one of them). The job counts these as warnings.
    pub malformed_tags: LazyFrame,
    /// Warnings known from the configuration alone (for example a rule routing to a customer missing from
    /// `customers.csv`).
    pub warnings: Vec<String>,
}

/// Columns of [`Allocated::errors`].
pub fn errors_schema() -> Schema {
    schemas::build_schema(&[("code", schemas::Ty::Str), ("message", schemas::Ty::Str)])
}

/// Columns of [`Allocated::malformed_tags`].
pub fn malformed_tags_schema() -> Schema {
    schemas::build_schema(&[
        ("tags", schemas::Ty::Str),
        ("charges", schemas::Ty::Int),
        ("line_id", schemas::Ty::Str),
    ])
}

// Working columns, dropped before output.
const K_CUSTOMER: &str = "__k_customer";
const K_SUB: &str = "__k_sub";
const RULE: &str = "__rule";
const WIN_PRIO: &str = "__win_prio";
const N_WIN: &str = "__n_win";
const CONFLICT_IDS: &str = "__conflict_ids";
const NAMES_TAG: &str = "__names_tag";
const FLAGS: &str = "__flags";
const IS_MALFORMED: &str = "__malformed";
const P_TARGET: &str = "__p_target";
const P_TARGET_NAME: &str = "__p_target_name";
const P_UNIT: &str = "__p_unit";
const P_PATH: &str = "__p_path";
const P_LAST: &str = "__p_last";
const P_SHARE: &str = "__p_share";
const P_NO: &str = "__p_no";
const SRC_CUSTOMER: &str = "__src_customer";

/// The charge columns a rule looks at: the key rules are resolved on.
fn key_columns() -> [&'static str; 4] {
    [K_CUSTOMER, K_SUB, ic::resource_group, ic::tags]
}

/// Allocates `int_charges` by the tag rules. `tag_rules` is `stg_tag_rules`, `org_units` `stg_org_units`,
/// `customers` `stg_customers` (all collected, small); rules and units are validated here too, so the job may
/// call [`validate_tag_rules`] first for messages naming its own file paths.
pub fn int_charges_allocated(
    charges: LazyFrame,
    tag_rules: &DataFrame,
    org_units: &DataFrame,
    customers: &DataFrame,
    _ctx: &RunContext,
) -> Result<Allocated> {
    let units = rules::org_units(org_units, "org_units.csv").map_err(PipelineError::Configs)?;
    let rules =
        rules::tag_rules(tag_rules, &units, "tag_rules.csv").map_err(PipelineError::Configs)?;
    let pe = PipelineError::polars(STAGE);

    // Customer names by lower-cased id, for parts routed to another customer.
    let names: HashMap<String, Option<String>> = match (
        customers.column(cu::customer_id),
        customers.column(cu::customer_name),
    ) {
        (Ok(ids), Ok(nm)) => {
            let ids = ids.str().map_err(PipelineError::polars(STAGE))?;
            let nm = nm.str().map_err(PipelineError::polars(STAGE))?;
            ids.iter()
                .zip(nm.iter())
                .filter_map(|(i, n)| Some((i?.trim().to_lowercase(), n.map(str::to_string))))
                .collect()
        }
        _ => HashMap::new(),
    };
    let mut warnings = Vec::new();
    for r in &rules {
        for p in &r.parts {
            if let Some(t) = &p.target_customer_id
                && !names.contains_key(&t.to_lowercase())
            {
                warnings.push(format!(
                        "tag rule `{}` (line {}) routes charges to customer `{t}`, which is not in customers.csv: its parts will be unpriced until the customer is added",
                        r.rule_id, p.line_number
                    ));
            }
        }
    }

    // Charges with their match keys (customer and subscription compare case-insensitively).
    let charges = charges.with_columns([
        col(ic::customer_id).str().to_lowercase().alias(K_CUSTOMER),
        col(ic::subscription_id).str().to_lowercase().alias(K_SUB),
    ]);
    // The distinct match keys are few next to the charges: collected here with the streaming engine (reading the
    // charges batch by batch) and resolved in memory, so the plan below joins a small table instead of a second
    // copy of the month (a self-join would make Polars cache its whole input).
    let distinct = charges
        .clone()
        .select(key_columns().map(col))
        .unique_stable(None, UniqueKeepStrategy::First)
        .collect_with_engine(Engine::Streaming)
        .map(|r| r.unwrap_single())
        .map_err(PipelineError::polars(STAGE))?;
    let keys = resolve_keys(distinct.lazy(), &rules)
        .and_then(|k| k.collect())
        .map_err(PipelineError::polars(STAGE))?
        .lazy();
    let resolved = charges
        .join_builder()
        .with(keys)
        .on(key_columns().map(col))
        .how(JoinType::Left)
        .join_nulls(true)
        .maintain_order(MaintainOrderJoin::Left)
        .finish();

    let (parts, needs_unit_lookup, others) =
        parts_frame(&rules, &names).map_err(PipelineError::polars(STAGE))?;
    let mut exploded = resolved
        .clone()
        .join_builder()
        .with(parts.lazy())
        .left_on([col(RULE)])
        .right_on([col(RULE)])
        .how(JoinType::Left)
        .maintain_order(MaintainOrderJoin::LeftRight)
        .finish()
        .with_column(col(ic::customer_id).alias(SRC_CUSTOMER))
        .with_column(coalesce(&[col(P_TARGET), col(SRC_CUSTOMER)]).alias(ia::customer_id));
    if needs_unit_lookup {
        // Rules for any customer name a unit that must belong to each charge's own customer.
        let lookup = units_frame(&units).map_err(PipelineError::polars(STAGE))?;
        exploded = exploded
            .with_column(
                col(ia::customer_id)
                    .str()
                    .to_lowercase()
                    .alias("__u_customer"),
            )
            .join_builder()
            .with(lookup.lazy())
            .left_on([col("__u_customer"), col(P_UNIT)])
            .right_on([col("__u_customer"), col("__u_unit")])
            .how(JoinType::Left)
            .maintain_order(MaintainOrderJoin::Left)
            .finish()
            .with_column(coalesce(&[col(P_PATH), col("__u_path")]).alias(P_PATH));
    }
    let exploded = exploded.with_columns([
        coalesce(&[col(P_LAST), lit(true)]).alias(P_LAST),
        coalesce(&[col(P_SHARE), crate::decimal::dec("1")]).alias(P_SHARE),
        coalesce(&[col(P_NO), lit(1i64)]).alias(P_NO),
    ]);

    let allocated = to_allocated(exploded.clone(), others).map_err(PipelineError::polars(STAGE))?;
    let errors = errors_frame(resolved.clone(), exploded, needs_unit_lookup).map_err(pe)?;
    let compliance = compliance_frame(resolved.clone());
    let malformed_tags = resolved
        .filter(col(IS_MALFORMED))
        .group_by_stable([col(ic::tags)])
        .agg([
            len().cast(DataType::Int64).alias("charges"),
            col(ic::line_id).first().alias("line_id"),
        ])
        .select([col(ic::tags), col("charges"), col("line_id")]);
    Ok(Allocated {
        allocated,
        compliance,
        errors,
        malformed_tags,
        warnings,
    })
}

/// Per distinct charge key: the winning rule (`__rule`, null when none or on a conflict), its priority, how
/// many rule ids match at that priority, the conflicting ids, whether the winner names a tag key, and whether
/// the tags text is malformed.
fn resolve_keys(keys: LazyFrame, rules: &[TagRule]) -> PolarsResult<LazyFrame> {
    // Distinct tag conditions and resource-group globs, each evaluated once per key.
    let mut conditions: Vec<(String, Option<String>)> = Vec::new();
    for r in rules {
        if let Some(k) = &r.tag_key {
            let c = (k.clone(), r.tag_value.clone());
            if !conditions.contains(&c) {
                conditions.push(c);
            }
        }
    }
    // Globs were validated with the rules, so compiling them again cannot fail; a failure would be our bug.
    let compiled: Vec<TagCondition> = conditions
        .iter()
        .map(|(k, v)| TagCondition {
            key: k.clone(),
            value: v.as_ref().and_then(|v| rules::glob(v, false).ok()),
        })
        .collect();
    let keys = keys.with_column(tag_flags(col(ic::tags), compiled).alias(FLAGS));

    let mut rg_globs: Vec<String> = Vec::new();
    let mut matches: Vec<Expr> = Vec::new();
    for r in rules {
        let mut m = lit(true);
        if let Some(c) = &r.customer_id {
            m = m.and(col(K_CUSTOMER).eq(lit(c.clone())).fill_null(lit(false)));
        }
        if let Some(s) = &r.subscription_id {
            m = m.and(col(K_SUB).eq(lit(s.clone())).fill_null(lit(false)));
        }
        if let Some(g) = &r.resource_group {
            if !rg_globs.contains(g) {
                rg_globs.push(g.clone());
            }
            let i = rg_globs.iter().position(|x| x == g).unwrap_or(0);
            m = m.and(col(format!("__rg{i}")));
        }
        if let Some(k) = &r.tag_key {
            let i = conditions
                .iter()
                .position(|c| c.0 == *k && c.1 == r.tag_value)
                .unwrap_or(0);
            m = m.and(col(FLAGS).struct_().field_by_name(&flag_name(i)));
        }
        matches.push(m);
    }
    let rg_flags: Vec<Expr> = rg_globs
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let matcher = rules::glob(g, true).ok();
            col(ic::resource_group)
                .map(
                    move |c: Column| {
                        let ca = c.str()?;
                        let out: BooleanChunked = ca
                            .iter()
                            .map(|v| {
                                Some(matches!((v, &matcher), (Some(v), Some(m)) if m.is_match(v)))
                            })
                            .collect();
                        Ok(out.with_name(c.name().clone()).into_series().into_column())
                    },
                    |_, f| Ok(Field::new(f.name().clone(), DataType::Boolean)),
                )
                .alias(format!("__rg{i}"))
        })
        .collect();
    let keys = if rg_flags.is_empty() {
        keys
    } else {
        keys.with_columns(rg_flags)
    };
    let keys = keys.with_columns(
        matches
            .iter()
            .enumerate()
            .map(|(i, m)| m.clone().alias(format!("__m{i}")))
            .collect::<Vec<_>>(),
    );
    let m = |i: usize| col(format!("__m{i}"));

    let resolved = if rules.is_empty() {
        keys.with_columns([
            lit(NULL).cast(DataType::Int64).alias(WIN_PRIO),
            lit(0i64).alias(N_WIN),
            lit(NULL).cast(DataType::String).alias(CONFLICT_IDS),
            lit(NULL).cast(DataType::String).alias(RULE),
            lit(false).alias(NAMES_TAG),
        ])
    } else {
        let prios: Vec<Expr> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                when(m(i))
                    .then(lit(r.priority))
                    .otherwise(lit(NULL).cast(DataType::Int64))
            })
            .collect();
        let at_win = |i: usize, r: &TagRule| m(i).and(lit(r.priority).eq(col(WIN_PRIO)));
        // Rules are in file order: among equals the first is taken, but two ids at the winning priority are
        // an error anyway, so the order never decides an allocation.
        let mut winner = lit(NULL).cast(DataType::String);
        let mut names_tag = lit(false);
        for (i, r) in rules.iter().enumerate().rev() {
            winner = when(at_win(i, r))
                .then(lit(r.rule_id.clone()))
                .otherwise(winner);
            names_tag = when(at_win(i, r))
                .then(lit(r.tag_key.is_some()))
                .otherwise(names_tag);
        }
        let counts: Vec<Expr> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| when(at_win(i, r)).then(lit(1i64)).otherwise(lit(0i64)))
            .collect();
        let ids: Vec<Expr> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                when(at_win(i, r))
                    .then(lit(format!("`{}` ({})", r.rule_id, rule_lines(r))))
                    .otherwise(lit(NULL).cast(DataType::String))
            })
            .collect();
        keys.with_column(polars::lazy::dsl::min_horizontal(prios)?.alias(WIN_PRIO))
            .with_columns([
                polars::lazy::dsl::sum_horizontal(counts, true)?.alias(N_WIN),
                concat_str(ids, ", ", true).alias(CONFLICT_IDS),
                winner.alias("__winner"),
                names_tag.alias(NAMES_TAG),
            ])
            .with_column(
                when(col(N_WIN).eq(lit(1i64)))
                    .then(col("__winner"))
                    .otherwise(lit(NULL).cast(DataType::String))
                    .alias(RULE),
            )
    };
    Ok(resolved.select([
        col(K_CUSTOMER),
        col(K_SUB),
        col(ic::resource_group),
        col(ic::tags),
        col(RULE),
        col(WIN_PRIO),
        col(N_WIN),
        col(CONFLICT_IDS),
        col(NAMES_TAG),
        col(FLAGS)
            .struct_()
            .field_by_name(MALFORMED)
            .alias(IS_MALFORMED),
    ]))
}

/// Where a rule is written: `tag_rules.csv line 4`, or `tag_rules.csv lines 4, 5, 6` for a split.
fn rule_lines(r: &TagRule) -> String {
    let lines: Vec<String> = r.parts.iter().map(|p| p.line_number.to_string()).collect();
    let s = if lines.len() == 1 { "" } else { "s" };
    format!("tag_rules.csv line{s} {}", lines.join(", "))
}

/// The rules' parts as a small frame: rule id, part number, share, target customer (and its name), unit,
/// unit path where known, and whether it is the rule's last part. Also whether any unit must be looked up per
/// charge (rules of any customer naming a unit).
///
/// The last part of a rule also carries the shares of the rule's other parts (`__os0`, `__os1`, ...), so that
/// its remainder `amount − Σ amount × other share` is an elementwise expression: no window over the charge's
/// parts, which would cost a group-by over every charge. Returns the number of such columns too.
fn parts_frame(
    rules: &[TagRule],
    names: &HashMap<String, Option<String>>,
) -> PolarsResult<(DataFrame, bool, usize)> {
    let others = rules
        .iter()
        .map(|r| r.parts.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut other_shares: Vec<Vec<Option<Decimal>>> = vec![Vec::new(); others];
    let mut rule = Vec::new();
    let mut no = Vec::new();
    let mut share: Vec<Option<Decimal>> = Vec::new();
    let mut target = Vec::new();
    let mut target_name = Vec::new();
    let mut unit = Vec::new();
    let mut path = Vec::new();
    let mut last = Vec::new();
    let mut lookup = false;
    for r in rules {
        for p in &r.parts {
            rule.push(Some(r.rule_id.clone()));
            no.push(Some(p.part_no));
            share.push(Some(p.share));
            target.push(p.target_customer_id.clone());
            target_name.push(
                p.target_customer_id
                    .as_ref()
                    .and_then(|t| names.get(&t.to_lowercase()).cloned().flatten()),
            );
            unit.push(p.target_unit_id.clone());
            path.push(p.unit_path.clone());
            last.push(Some(p.is_last));
            lookup |= p.target_unit_id.is_some() && p.unit_path.is_none();
            for (k, col) in other_shares.iter_mut().enumerate() {
                let other = r.parts.get(k).filter(|o| p.is_last && !o.is_last);
                col.push(other.map(|o| o.share));
            }
        }
    }
    let mut columns = vec![
        Column::new(RULE.into(), rule),
        Column::new(P_NO.into(), no),
        decimal_column(P_SHARE, &share),
        Column::new(P_TARGET.into(), target),
        Column::new(P_TARGET_NAME.into(), target_name),
        Column::new(P_UNIT.into(), unit),
        Column::new(P_PATH.into(), path),
        Column::new(P_LAST.into(), last),
    ];
    columns.extend(
        other_shares
            .iter()
            .enumerate()
            .map(|(k, v)| decimal_column(&other_share(k), v)),
    );
    let df = DataFrame::new_infer_height(columns)?;
    // Typed even when there are no rules (an empty column would otherwise be Null-typed).
    let df = df
        .lazy()
        .select(
            [
                col(RULE).cast(DataType::String),
                col(P_NO).cast(DataType::Int64),
                col(P_SHARE).cast(schemas::money()),
                col(P_TARGET).cast(DataType::String),
                col(P_TARGET_NAME).cast(DataType::String),
                col(P_UNIT).cast(DataType::String),
                col(P_PATH).cast(DataType::String),
                col(P_LAST).cast(DataType::Boolean),
            ]
            .into_iter()
            .chain((0..others).map(|k| col(other_share(k)).cast(schemas::money())))
            .collect::<Vec<_>>(),
        )
        .collect()?;
    Ok((df, lookup, others))
}

/// Name of the column holding, on a rule's last part, the share of its part `k + 1`.
fn other_share(k: usize) -> String {
    format!("__os{k}")
}

/// Org units keyed by lower-cased customer id and unit id, for rules of any customer.
fn units_frame(units: &[rules::OrgUnit]) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new(
            "__u_customer".into(),
            units
                .iter()
                .map(|u| u.customer_id.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "__u_unit".into(),
            units.iter().map(|u| u.unit_id.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "__u_path".into(),
            units
                .iter()
                .map(|u| u.unit_path.clone())
                .collect::<Vec<_>>(),
        ),
    ])
}

/// The parts in `int_charges_allocated` columns, amounts split exactly.
fn to_allocated(exploded: LazyFrame, others: usize) -> PolarsResult<LazyFrame> {
    // Every part is `amount × share`, rounded half-even to 18 places, except the last: `amount − Σ` of the
    // other parts, each computed exactly as that part computes itself, so the parts sum to the amount.
    let split = |a: &str| -> PolarsResult<Expr> {
        let own = col(a) * col(P_SHARE);
        let rest: Vec<Expr> = (0..others)
            .map(|k| (col(a) * col(other_share(k))).fill_null(crate::decimal::dec("0")))
            .collect();
        let rest = if rest.is_empty() {
            crate::decimal::dec("0")
        } else {
            polars::lazy::dsl::sum_horizontal(rest, true)?
        };
        Ok(when(col(P_LAST))
            .then(col(a) - rest)
            .otherwise(own)
            .alias(a))
    };
    let routed = col(P_TARGET).is_not_null().and(
        col(ia::customer_id)
            .str()
            .to_lowercase()
            .neq(col(K_CUSTOMER)),
    );
    let allocation = when(col(N_WIN).gt(lit(1i64)))
        .then(lit(CONFLICT))
        .when(col(RULE).is_null())
        .then(lit(UNALLOCATED))
        .otherwise(lit(ALLOCATED));
    let lf = exploded.with_columns([
        split(ic::q)?,
        split(ic::cost)?,
        split(ic::list)?,
        split(ic::pec)?,
        concat_str(
            [col(ic::line_id), lit(":"), col(P_NO).cast(DataType::String)],
            "",
            false,
        )
        .alias(ia::part_id),
        col(P_NO).alias(ia::part_no),
        col(SRC_CUSTOMER).alias(ia::source_customer_id),
        when(routed)
            .then(coalesce(&[col(P_TARGET_NAME), col(ic::customer_name)]))
            .otherwise(col(ic::customer_name))
            .alias("__name"),
        allocation.alias(ia::allocation),
        col(RULE).alias(ia::tag_rule_id),
        col(P_SHARE).alias(ia::share),
        col(P_UNIT).alias(ia::unit_id),
        col(P_PATH).alias(ia::unit_path),
    ]);
    let schema = ia::schema();
    let select: Vec<Expr> = schema
        .iter()
        .map(|(name, dt)| {
            let e = match name.as_str() {
                n if n == ia::customer_name => col("__name"),
                n => col(n),
            };
            e.cast(dt.clone()).alias(name.clone())
        })
        .collect();
    Ok(lf.select(select))
}

/// Where a charge can be looked up: "`FILE` line N (line_id `…`)", the source file and line of the export.
fn charge_location() -> Expr {
    concat_str(
        [
            lit("`"),
            col(ic::source_file).fill_null(lit("?")),
            lit("` line "),
            col(ic::line_number).cast(DataType::String).fill_null(lit("?")),
            lit(" (line_id `"),
            col(ic::line_id).fill_null(lit("")),
            lit("`)"),
        ],
        "",
        false,
    )
}

/// Error rows: conflicting rules (one row per distinct charge key, naming one charge and the count) and units
/// that are not of the charge's customer (rules of any customer).
fn errors_frame(
    resolved: LazyFrame,
    exploded: LazyFrame,
    unit_lookup: bool,
) -> PolarsResult<LazyFrame> {
    let conflicts = resolved
        .filter(col(N_WIN).gt(lit(1i64)))
        .group_by_stable([col(ic::customer_id), col(ic::subscription_id), col(CONFLICT_IDS), col(WIN_PRIO)])
        .agg([charge_location().first().alias("__line"), len().cast(DataType::Int64).alias("__n")])
        .select([
            lit(ERR_RULE_CONFLICT).alias("code"),
            concat_str(
                [
                    lit("the charge in "),
                    col("__line"),
                    lit(" (customer `"),
                    col(ic::customer_id).fill_null(lit("")),
                    lit("`, subscription `"),
                    col(ic::subscription_id).fill_null(lit("")),
                    lit("`) and "),
                    (col("__n") - lit(1i64)).cast(DataType::String),
                    lit(" other charge(s) match tag rules "),
                    col(CONFLICT_IDS),
                    lit(" at priority "),
                    col(WIN_PRIO).cast(DataType::String),
                    lit("; give one rule a lower priority or narrow its conditions in tag_rules.csv"),
                ],
                "",
                false,
            )
            .alias("message"),
        ]);
    if !unit_lookup {
        return Ok(conflicts);
    }
    let units = exploded
        .filter(col(P_UNIT).is_not_null().and(col(P_PATH).is_null()))
        .group_by_stable([col(RULE), col(ia::customer_id), col(P_UNIT)])
        .agg([charge_location().first().alias("__line")])
        .select([
            lit(ERR_UNIT_NOT_OF_CUSTOMER).alias("code"),
            concat_str(
                [
                    lit("tag rule `"),
                    col(RULE),
                    lit("` (tag_rules.csv) sends the charge in "),
                    col("__line"),
                    lit(" to unit `"),
                    col(P_UNIT),
                    lit("`, which is not a unit of its customer `"),
                    col(ia::customer_id),
                    lit("`; name the rule's customer or target customer, or use one of that customer's units"),
                ],
                "",
                false,
            )
            .alias("message"),
        ]);
    concat(
        [conflicts, units],
        UnionArgs {
            maintain_order: true,
            ..Default::default()
        },
    )
}

/// `int_tag_compliance`: per source customer and Azure subscription, Σ cost of daily-usage Azure consumption
/// allocated in full by a rule naming a tag key over Σ cost of that consumption; null when that Σ is not
/// positive.
fn compliance_frame(resolved: LazyFrame) -> LazyFrame {
    let azure = col(ic::source_kind)
        .eq(lit(crate::charges::SOURCE_DAILY_USAGE))
        .and(col(ic::product_family).eq(lit(crate::charges::AZURE_USAGE)))
        .fill_null(lit(false));
    let by_tag = col(RULE)
        .is_not_null()
        .and(col(NAMES_TAG))
        .fill_null(lit(false));
    resolved
        .filter(azure)
        .group_by_stable([
            col(ic::period),
            col(ic::customer_id),
            col(ic::subscription_id),
        ])
        .agg([
            col(ic::cost).sum().alias(tc::azure_cost),
            when(by_tag)
                .then(col(ic::cost))
                .otherwise(crate::decimal::dec("0"))
                .sum()
                .alias(tc::tag_allocated_cost),
        ])
        .with_column(
            // The denominator is null where not positive (never 0: `when` evaluates both branches).
            (col(tc::tag_allocated_cost)
                / when(col(tc::azure_cost).gt(crate::decimal::dec("0")))
                    .then(col(tc::azure_cost))
                    .otherwise(crate::decimal::null_dec()))
            .alias(tc::compliance),
        )
        .select(
            tc::schema()
                .iter()
                .map(|(n, dt)| col(n.clone()).cast(dt.clone()))
                .collect::<Vec<_>>(),
        )
}

/// The DESIGN §6 invariant "Σ cost in `int_charges` = Σ cost allocated, per source file and customer of
/// origin", as a frame for the job: `source_file`, `customer_id` (of origin), `charged_cost`, `allocated_cost`,
/// `difference`, one row per group; the run fails where `difference` is not 0.
pub fn allocation_conservation(charges: LazyFrame, allocated: LazyFrame) -> LazyFrame {
    let keys = [col(ic::source_file), col(ic::customer_id)];
    let charged = charges
        .group_by_stable(keys.clone())
        .agg([col(ic::cost).sum().alias("charged_cost")]);
    let allocated = allocated
        .group_by_stable([
            col(ia::source_file),
            col(ia::source_customer_id).alias(ic::customer_id),
        ])
        .agg([col(ia::cost).sum().alias("allocated_cost")]);
    charged
        .join_builder()
        .with(allocated)
        .on(keys)
        .how(JoinType::Full)
        .join_nulls(true)
        .coalesce(JoinCoalesce::CoalesceColumns)
        .finish()
        .select([
            col(ic::source_file),
            col(ic::customer_id),
            col("charged_cost").fill_null(crate::decimal::dec("0")),
            col("allocated_cost").fill_null(crate::decimal::dec("0")),
        ])
        .with_column((col("charged_cost") - col("allocated_cost")).alias("difference"))
}

#[cfg(test)]
mod tests;
