//! The explanation of one rated line, as a person reads it (`cspbill explain`): where it came from, its raw
//! amounts, who pays it (tag rule and share), which rate rule applied and why it won, the FX step and the
//! arithmetic. Pure: a rated row and the period's rate card in, a value out ([`Explanation`]), rendered as
//! text ([`Explanation::to_text`]) or JSON (`serde_json::to_value`). The job only finds the row.
//!
//! The candidate rules are recomputed with [`super::rules::rule_candidates`], the very code the stage used.

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::int_charges_rated as out;
use serde::Serialize;

use super::rules::{self, LEVELS};
use crate::decimal::any_to_decimal;
use crate::error::{PipelineError, Result};

/// A rate rule that matched the line's fields, valid on its date or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub rule_id: String,
    /// Line in rate_cards.csv.
    pub line: Option<i64>,
    pub method: String,
    pub value: Option<Decimal>,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
    /// Whether `valid_from ≤ charge date < valid_to`.
    pub valid: bool,
    /// The precedence levels the rule names (`product_id:sku` for a `ProductId:SkuId`).
    pub levels: Vec<String>,
    /// The specificity score (one decimal digit per level, most significant first).
    pub score: i64,
    pub won: bool,
}

/// Everything `cspbill explain` says about one rated line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub part_id: String,
    pub line_id: String,
    pub source_kind: String,
    pub source_file: String,
    pub line_number: Option<i64>,
    pub customer_id: String,
    pub source_customer_id: String,
    pub customer_name: String,
    pub template: String,
    pub product_family: String,
    pub product: String,
    pub meter: String,
    pub charge_date: Option<NaiveDate>,
    pub line_type: String,
    pub billing_currency: String,
    pub pricing_currency: String,
    pub invoice_currency: String,
    pub pc_to_bc_rate: Option<Decimal>,
    pub q: Option<Decimal>,
    pub f: Option<Decimal>,
    pub cost: Option<Decimal>,
    pub list: Option<Decimal>,
    pub pec: Option<Decimal>,
    pub allocation: String,
    pub tag_rule_id: String,
    pub share: Option<Decimal>,
    pub unit_path: String,
    pub rate_rule_id: String,
    pub rate_rule_line: Option<i64>,
    pub rate_method: String,
    pub rate_value: Option<Decimal>,
    pub rate_currency: String,
    pub candidates: Vec<Candidate>,
    /// Why the winner won: the first precedence level where it beat the runner-up, in words.
    pub why: String,
    pub fx_policy: String,
    pub fx_source: String,
    pub fx_rate: Option<Decimal>,
    pub fx_date: Option<NaiveDate>,
    pub fx_inverted: Option<bool>,
    pub price_fx_source: String,
    pub price_fx_rate: Option<Decimal>,
    pub price_fx_date: Option<NaiveDate>,
    pub price_rule_ccy: Option<Decimal>,
    pub cost_ic: Option<Decimal>,
    pub price: Option<Decimal>,
    pub margin: Option<Decimal>,
    pub proration_policy: String,
    pub status: String,
    pub unpriced_reason: String,
    /// The arithmetic, one step a line.
    pub arithmetic: Vec<String>,
}

fn value(df: &DataFrame, c: &str) -> AnyValue<'static> {
    df.column(c)
        .ok()
        .and_then(|s| s.get(0).ok())
        .map(|v| v.into_static())
        .unwrap_or(AnyValue::Null)
}

fn text(df: &DataFrame, c: &str) -> String {
    match value(df, c) {
        AnyValue::Null => String::new(),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        v => v.to_string(),
    }
}

fn decimal(df: &DataFrame, c: &str) -> Option<Decimal> {
    any_to_decimal(&value(df, c))
}

fn int(df: &DataFrame, c: &str) -> Option<i64> {
    value(df, c).extract::<i64>()
}

fn date_of(v: AnyValue) -> Option<NaiveDate> {
    match v {
        // Days since 1970-01-01; 719,163 is that day's number counted from 0001-01-01.
        AnyValue::Date(d) => NaiveDate::from_num_days_from_ce_opt(d + 719_163),
        _ => None,
    }
}

fn date(df: &DataFrame, c: &str) -> Option<NaiveDate> {
    date_of(value(df, c))
}

/// Decimal for people: normalised (`115`, not `115.000000000000000000`), `?` when missing.
fn n(d: Option<Decimal>) -> String {
    d.map(|d| d.normalize().to_string()).unwrap_or_else(|| "?".into())
}

/// The levels a score names, most significant first.
fn levels_of(score: i64) -> Vec<String> {
    LEVELS
        .iter()
        .filter_map(|(name, w)| match (score / w) % 10 {
            0 => None,
            2 => Some(format!("{name}:sku")),
            _ => Some(name.to_string()),
        })
        .collect()
}

/// The rules matching `row`'s fields (rated row: one row of `int_charges_rated`), from `rate_cards`.
pub fn candidates(row: &DataFrame, rate_cards: &DataFrame) -> Result<Vec<Candidate>> {
    let err = PipelineError::polars("explain");
    let keys = row.clone().lazy().select(rules::key_columns(out::template));
    let found = rules::rule_candidates(keys, rate_cards)
        .sort([rules::R_LINE], SortMultipleOptions::default())
        .collect()
        .map_err(err)?;
    let winner = text(row, out::rate_rule_id);
    let mut v = Vec::new();
    for i in 0..found.height() {
        let one = found.slice(i as i64, 1);
        let score = int(&one, rules::R_SCORE).unwrap_or(0);
        let rule_id = text(&one, rules::R_ID);
        v.push(Candidate {
            won: !winner.is_empty() && rule_id == winner,
            rule_id,
            line: int(&one, rules::R_LINE),
            method: text(&one, rules::R_METHOD),
            value: decimal(&one, rules::R_VALUE),
            valid_from: date(&one, rules::R_FROM),
            valid_to: date(&one, rules::R_TO),
            valid: matches!(value(&one, rules::R_VALID), AnyValue::Boolean(true)),
            levels: levels_of(score),
            score,
        });
    }
    Ok(v)
}

/// Why the winner beat the other valid candidates, in words.
fn why(cands: &[Candidate], winner: &str) -> String {
    let Some(w) = cands.iter().find(|c| c.won) else {
        return if winner.is_empty() {
            String::new()
        } else {
            format!("rule `{winner}` is no longer in the rate card")
        };
    };
    let mut others: Vec<&Candidate> = cands.iter().filter(|c| c.valid && !c.won).collect();
    others.sort_by_key(|c| -c.score);
    let Some(r) = others.first() else {
        return format!("`{}` is the only rule valid on the charge date", w.rule_id);
    };
    for (name, weight) in LEVELS {
        let (a, b) = ((w.score / weight) % 10, (r.score / weight) % 10);
        if a != b {
            let what = |x: i64| match x {
                0 => "any".to_string(),
                2 => "ProductId:SkuId".to_string(),
                _ if name == "product_id" => "ProductId only".to_string(),
                _ => "a value".to_string(),
            };
            return format!(
                "`{}` beats `{}` at level `{name}` ({} against {}); the levels above it are equal",
                w.rule_id,
                r.rule_id,
                what(a),
                what(b)
            );
        }
    }
    format!("`{}` and `{}` are equally specific (a tie)", w.rule_id, r.rule_id)
}

/// The arithmetic of the line, one step a line, with the stored values.
fn arithmetic(e: &Explanation) -> Vec<String> {
    let bc = &e.billing_currency;
    let ic = &e.invoice_currency;
    let mut v = Vec::new();
    if e.status == "unpriced" && e.price_rule_ccy.is_none() {
        v.push(format!("no price: {}", e.unpriced_reason));
    } else {
        let pv = n(e.price_rule_ccy);
        let r = n(e.rate_value);
        match e.rate_method.as_str() {
            "credit_pass_through" => v.push(format!("price = cost = {pv} {bc} (credits pass through at cost)")),
            "markup_on_cost" => v.push(format!(
                "price = cost × (1 + {r}) = {} × (1 + {r}) = {pv} {bc}",
                n(e.cost)
            )),
            "margin_on_cost" => v.push(format!(
                "price = cost / (1 − {r}) = {} / (1 − {r}) = {pv} {bc}",
                n(e.cost)
            )),
            "discount_off_list" => v.push(format!(
                "price = list × (1 − {r}) = {} × (1 − {r}) = {pv} {bc}",
                n(e.list)
            )),
            "markup_on_list" => v.push(format!(
                "price = list × (1 + {r}) = {} × (1 + {r}) = {pv} {bc}",
                n(e.list)
            )),
            "fixed_unit_price" => v.push(format!(
                "price = unit price × q × f = {r} × {} × {} = {pv} {}",
                n(e.q),
                n(e.f),
                e.rate_currency
            )),
            other => v.push(format!("price before FX = {pv} (method `{other}`)")),
        }
        let from = if e.rate_method == "fixed_unit_price" {
            e.rate_currency.as_str()
        } else {
            bc.as_str()
        };
        match e.price_fx_source.as_str() {
            "same_currency" => v.push(format!("price = {pv} {ic} (already in the invoice currency)")),
            _ => v.push(format!(
                "price = {pv} {from} × {} {ic}/{from} = {} {ic}",
                n(e.price_fx_rate),
                n(e.price)
            )),
        }
    }
    if e.fx_rate.is_some() {
        v.push(format!(
            "cost in {ic} = {} {bc} × {} = {} {ic}",
            n(e.cost),
            n(e.fx_rate),
            n(e.cost_ic)
        ));
    }
    if e.margin.is_some() {
        v.push(format!(
            "margin = price − cost = {} − {} = {} {ic}",
            n(e.price),
            n(e.cost_ic),
            n(e.margin)
        ));
    }
    v
}

/// Builds the explanation of `row` (one row of `int_charges_rated`) against the period's `stg_rate_cards`.
pub fn explain_rated(row: &DataFrame, rate_cards: &DataFrame) -> Result<Explanation> {
    let candidates = candidates(row, rate_cards)?;
    let rate_rule_id = text(row, out::rate_rule_id);
    let product = match (text(row, out::product_id), text(row, out::sku_id)) {
        (p, s) if s.is_empty() => p,
        (p, s) => format!("{p}:{s}"),
    };
    let meter = [
        text(row, out::meter_category),
        text(row, out::meter_subcategory),
        text(row, out::meter_name),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" / ");
    let mut e = Explanation {
        part_id: text(row, out::part_id),
        line_id: text(row, out::line_id),
        source_kind: text(row, out::source_kind),
        source_file: text(row, out::source_file),
        line_number: int(row, out::line_number),
        customer_id: text(row, out::customer_id),
        source_customer_id: text(row, out::source_customer_id),
        customer_name: text(row, out::customer_name),
        template: text(row, out::template),
        product_family: text(row, out::product_family),
        product,
        meter,
        charge_date: date(row, out::charge_date),
        line_type: text(row, out::line_type),
        billing_currency: text(row, out::billing_currency),
        pricing_currency: text(row, out::pricing_currency),
        invoice_currency: text(row, out::invoice_currency),
        pc_to_bc_rate: decimal(row, out::pc_to_bc_rate),
        q: decimal(row, out::q),
        f: decimal(row, out::f),
        cost: decimal(row, out::cost),
        list: decimal(row, out::list),
        pec: decimal(row, out::pec),
        allocation: text(row, out::allocation),
        tag_rule_id: text(row, out::tag_rule_id),
        share: decimal(row, out::share),
        unit_path: text(row, out::unit_path),
        why: why(&candidates, &rate_rule_id),
        rate_rule_id,
        rate_rule_line: int(row, out::rate_rule_line),
        rate_method: text(row, out::rate_method),
        rate_value: decimal(row, out::rate_value),
        rate_currency: text(row, out::rate_currency),
        candidates,
        fx_policy: text(row, out::fx_policy),
        fx_source: text(row, out::fx_source),
        fx_rate: decimal(row, out::fx_rate),
        fx_date: date(row, out::fx_date),
        fx_inverted: match value(row, out::fx_inverted) {
            AnyValue::Boolean(b) => Some(b),
            _ => None,
        },
        price_fx_source: text(row, out::price_fx_source),
        price_fx_rate: decimal(row, out::price_fx_rate),
        price_fx_date: date(row, out::price_fx_date),
        price_rule_ccy: decimal(row, out::price_rule_ccy),
        cost_ic: decimal(row, out::cost_ic),
        price: decimal(row, out::price),
        margin: decimal(row, out::margin),
        proration_policy: text(row, out::proration_policy),
        status: text(row, out::status),
        unpriced_reason: text(row, out::unpriced_reason),
        arithmetic: vec![],
    };
    e.arithmetic = arithmetic(&e);
    Ok(e)
}

impl Explanation {
    /// The explanation as text for a person.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        let bc = &self.billing_currency;
        line(format!(
            "part {} of line {} ({}, {})",
            self.part_id, self.line_id, self.line_type, self.status
        ));
        line(format!(
            "source: {} line {} ({})",
            self.source_file,
            self.line_number.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            self.source_kind
        ));
        line(format!(
            "customer: {} {} (template {}, invoice currency {}); tenant in the export {}",
            self.customer_id, self.customer_name, self.template, self.invoice_currency, self.source_customer_id
        ));
        line(format!(
            "charge: {} {} {}on {}",
            self.product_family,
            self.product,
            if self.meter.is_empty() {
                String::new()
            } else {
                format!("meter {} ", self.meter)
            },
            self.charge_date.map(|d| d.to_string()).unwrap_or_else(|| "?".into())
        ));
        line(format!(
            "raw amounts: q = {}, f = {}, cost = {} {bc}, list = {} {bc}, pec = {} {bc}; pricing currency {}, PCToBC rate {}",
            n(self.q),
            n(self.f),
            n(self.cost),
            n(self.list),
            n(self.pec),
            self.pricing_currency,
            n(self.pc_to_bc_rate)
        ));
        if self.tag_rule_id.is_empty() {
            line(format!(
                "allocation: {} (no tag rule), share {}",
                self.allocation,
                n(self.share)
            ));
        } else {
            line(format!(
                "allocation: tag rule {}, share {}{}",
                self.tag_rule_id,
                n(self.share),
                if self.unit_path.is_empty() {
                    String::new()
                } else {
                    format!(", unit {}", self.unit_path)
                }
            ));
        }
        if self.rate_method == "credit_pass_through" {
            line("rate rule: none, a credit passes through at cost".into());
        } else if self.rate_rule_id.is_empty() {
            line("rate rule: none applied".into());
        } else {
            line(format!(
                "rate rule: {} (rate_cards.csv line {}): {} {}{}",
                self.rate_rule_id,
                self.rate_rule_line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                self.rate_method,
                n(self.rate_value),
                if self.rate_currency.is_empty() {
                    String::new()
                } else {
                    format!(" {}", self.rate_currency)
                }
            ));
        }
        if self.rate_method != "credit_pass_through" {
            line(format!(
                "  candidates ({} matching the line's fields):",
                self.candidates.len()
            ));
            for c in &self.candidates {
                let window = format!(
                    "{} to {}",
                    c.valid_from.map(|d| d.to_string()).unwrap_or_else(|| "open".into()),
                    c.valid_to.map(|d| d.to_string()).unwrap_or_else(|| "open".into())
                );
                line(format!(
                    "    {} (line {}): names [{}], {window}, {}{}",
                    c.rule_id,
                    c.line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                    c.levels.join(", "),
                    if c.valid {
                        "valid"
                    } else {
                        "not valid on the charge date"
                    },
                    if c.won { " ← applied" } else { "" }
                ));
            }
            if !self.why.is_empty() {
                line(format!("  why: {}", self.why));
            }
        }
        let fx = match self.fx_source.as_str() {
            "same_currency" => "invoice currency = billing currency".to_string(),
            "microsoft" => format!("1 / PCToBC rate {} (Microsoft's own rate)", n(self.pc_to_bc_rate)),
            "fixed" => "the customer's fixed_fx_rate".to_string(),
            "market" | "market_fallback" => format!(
                "fx_rates.csv rate of {}{}{}",
                self.fx_date.map(|d| d.to_string()).unwrap_or_else(|| "?".into()),
                if self.fx_inverted == Some(true) {
                    ", reverse pair inverted"
                } else {
                    ""
                },
                if self.fx_source == "market_fallback" {
                    " (policy microsoft, but the invoice currency is neither the billing nor the pricing currency)"
                } else {
                    ""
                }
            ),
            _ => "none".to_string(),
        };
        line(format!(
            "fx: policy {}, rate {} {} per 1 {bc}: {fx}",
            self.fx_policy,
            n(self.fx_rate),
            self.invoice_currency
        ));
        if self.price_fx_source == "market" {
            line(format!(
                "price fx: {} → {} at {} (fx_rates.csv rate of {})",
                self.rate_currency,
                self.invoice_currency,
                n(self.price_fx_rate),
                self.price_fx_date.map(|d| d.to_string()).unwrap_or_else(|| "?".into())
            ));
        }
        line(format!("proration policy: {}", self.proration_policy));
        line("arithmetic:".into());
        for a in &self.arithmetic {
            line(format!("  {a}"));
        }
        if !self.unpriced_reason.is_empty() {
            line(format!("unpriced: {}", self.unpriced_reason));
        }
        t
    }
}
