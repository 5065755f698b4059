//! Stage tests of rating on tiny frames, every expectation computed by hand in the comments.

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::int_charges_allocated as al;
use schemas::int_charges_rated as out;

use super::*;
use crate::decimal::any_to_decimal;
use crate::reference::{RefTable, stage_reference};
use crate::{Period, RunContext};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// One allocated part; fields not named are null. `key=value` pairs, values as text.
fn part(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Defaults of a daily-usage part of customer c2 on 2025-06-10 in EUR, cost 100, list 120, q 2, f 1.
fn usage(id: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = part(&[
        ("part_id", id),
        ("line_id", id),
        ("customer_id", "c2"),
        ("source_kind", "daily_usage"),
        ("product_family", "azure_usage"),
        ("product_id", "Q"),
        ("sku_id", "0001"),
        ("charge_date", "2025-06-10"),
        ("billing_currency", "EUR"),
        ("pricing_currency", "EUR"),
        ("pc_to_bc_rate", "1"),
        ("q", "2"),
        ("f", "1"),
        ("cost", "100"),
        ("list", "120"),
        ("pec", "0"),
        ("is_credit", "false"),
    ]);
    for (k, v) in extra {
        p.retain(|(n, _)| n != k);
        p.push((k.to_string(), v.to_string()));
    }
    p
}

/// Builds an `int_charges_allocated` frame with its exact schema from text cells.
fn allocated(rows: &[Vec<(String, String)>]) -> LazyFrame {
    let cols: Vec<Column> = al::COLUMNS
        .iter()
        .map(|(name, _)| {
            let vals: Vec<Option<String>> = rows
                .iter()
                .map(|r| r.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
                .collect();
            Column::new((*name).into(), vals)
        })
        .collect();
    let df = DataFrame::new_infer_height(cols).unwrap();
    let exprs: Vec<Expr> = al::COLUMNS
        .iter()
        .map(|(name, ty)| match ty {
            schemas::Ty::Date => col(*name).str().to_date(StrptimeOptions {
                format: Some("%Y-%m-%d".into()),
                ..Default::default()
            }),
            schemas::Ty::Bool => col(*name).eq(lit("true")),
            t => col(*name).cast(t.dtype()),
        })
        .collect();
    df.lazy().select(exprs)
}

fn reference(table: RefTable, file: &str, text: &str) -> DataFrame {
    let mut lines = text.trim().lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    let rows: Vec<(u64, Vec<String>)> = lines
        .enumerate()
        .map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect()))
        .collect();
    stage_reference(table, file, &header, &rows).unwrap().df
}

const CARD_HEADER: &str = "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to";

fn cards(rows: &str) -> DataFrame {
    reference(RefTable::RateCards, "rate_cards.csv", &format!("{CARD_HEADER}\n{rows}"))
}

fn customers() -> DataFrame {
    reference(
        RefTable::Customers,
        "customers.csv",
        "customer_id,customer_name,invoice_currency,template,fx_policy,fixed_fx_rate
c1,One,EUR,smb,,
c2,Two,EUR,smb,,
c3,Three,EUR,enterprise,,
usd_ms,Ms,USD,smb,microsoft,
eur_ms,MsFallback,EUR,smb,,
gbp_mk,Market,GBP,smb,market,
eur_mk,MarketEur,EUR,smb,market,
eur_fx,Fixed,EUR,smb,fixed,1.1
jpy_mk,NoRate,JPY,smb,market,",
    )
}

fn fx_rates() -> DataFrame {
    reference(
        RefTable::FxRates,
        "fx_rates.csv",
        "date,from_currency,to_currency,rate
2025-06-10,CAD,EUR,0.7
2025-06-28,CAD,EUR,0.68
2025-07-01,CAD,EUR,0.5
2025-06-30,GBP,USD,1.25
2025-06-01,USD,EUR,0.9
2025-06-20,USD,EUR,0.92",
    )
}

fn ctx() -> RunContext {
    RunContext::for_period(Period::new(2025, 6).unwrap())
}

/// Rates `rows`; the rated frame is collected by the streaming engine, as the job sinks it.
fn rate(rows: &[Vec<(String, String)>], rate_cards: &DataFrame, ctx: &RunContext) -> (DataFrame, DataFrame) {
    let r = int_charges_rated(allocated(rows), rate_cards, &customers(), &fx_rates(), ctx).unwrap();
    (
        r.rated.collect_with_engine(Engine::Streaming).unwrap().unwrap_single(),
        r.errors.collect().unwrap(),
    )
}

/// The value of `column` on the row whose `part_id` is `id`, as text (decimals normalised, null = "").
fn cell(df: &DataFrame, id: &str, column: &str) -> String {
    let ids = df.column("part_id").unwrap().str().unwrap();
    let i = ids
        .iter()
        .position(|v| v == Some(id))
        .unwrap_or_else(|| panic!("no part {id}"));
    let v = df.column(column).unwrap().get(i).unwrap();
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Decimal(..) => any_to_decimal(&v).unwrap().to_string(),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

#[test]
fn each_method_prices_by_its_formula() {
    let rc = cards(
        "m1,*,*,*,,,P1,markup_on_cost,15%,,,
m2,*,*,*,,,P2,margin_on_cost,0.2,,,
m3,*,*,*,,,P3,discount_off_list,0.1,,,
m4,*,*,*,,,P4,markup_on_list,0.05,,,
m5,*,*,*,,,P5,fixed_unit_price,3.5,EUR,,",
    );
    let rows: Vec<_> = (1..=5)
        .map(|i| usage(&format!("p{i}"), &[("product_id", &format!("P{i}"))]))
        .collect();
    let (df, errors) = rate(&rows, &rc, &ctx());
    assert_eq!(errors.height(), 0);
    // cost 100, list 120, q 2, f 1, EUR → EUR (rate 1):
    // 100 × 1.15 = 115; 100 / 0.8 = 125; 120 × 0.9 = 108; 120 × 1.05 = 126; 3.5 × 2 × 1 = 7.
    for (id, price, margin, rule) in [
        ("p1", "115", "15", "m1"),
        ("p2", "125", "25", "m2"),
        ("p3", "108", "8", "m3"),
        ("p4", "126", "26", "m4"),
        ("p5", "7", "-93", "m5"),
    ] {
        assert_eq!(cell(&df, id, out::price), price, "{id}");
        assert_eq!(cell(&df, id, out::margin), margin, "{id}");
        assert_eq!(cell(&df, id, out::rate_rule_id), rule, "{id}");
        assert_eq!(cell(&df, id, out::status), "priced");
        assert_eq!(cell(&df, id, out::fx_source), "same_currency");
        assert_eq!(cell(&df, id, out::line_type), "usage");
    }
    assert_eq!(cell(&df, "p1", out::rate_value), "0.15");
    assert_eq!(cell(&df, "p5", out::rate_currency), "EUR");
    assert_eq!(cell(&df, "p5", out::price_fx_source), "same_currency");
}

#[test]
fn precedence_level_by_level() {
    let rc = cards(
        "r_cust,c1,*,*,,,,markup_on_cost,0.01,,,
r_prodsku,*,*,*,,,P:0001,markup_on_cost,0.02,,,
r_prod,*,*,*,,,P,markup_on_cost,0.03,,,
r_lower,*,smb,azure_usage,compute,d2,*,markup_on_cost,0.04,,,
r_sub,*,*,*,,d4,,markup_on_cost,0.05,,,
r_cat_fam_tmpl,*,smb,azure_usage,Compute,,,markup_on_cost,0.06,,,
r_cat,*,*,*,Storage,,,markup_on_cost,0.07,,,
r_fam_tmpl,*,smb,azure_usage,,,,markup_on_cost,0.08,,,
r_fam,*,*,license,,,,markup_on_cost,0.09,,,
r_tmpl,*,smb,*,,,,markup_on_cost,0.10,,,
r_any,*,*,*,*,*,*,markup_on_cost,0.11,,,",
    );
    let inv = |id: &str, extra: &[(&str, &str)]| {
        let mut e = vec![("source_kind", "invoice_line")];
        e.extend_from_slice(extra);
        usage(id, &e)
    };
    let rows = vec![
        // customer beats everything below it
        usage(
            "a",
            &[
                ("customer_id", "c1"),
                ("product_id", "P"),
                ("sku_id", "0001"),
                ("meter_category", "Compute"),
                ("meter_subcategory", "D2"),
            ],
        ),
        // ProductId:SkuId beats bare ProductId and all lower levels (r_lower names four of them)
        usage(
            "b",
            &[
                ("product_id", "p"),
                ("sku_id", "0001"),
                ("meter_category", "Compute"),
                ("meter_subcategory", "D2"),
            ],
        ),
        // bare ProductId beats the four lower levels together
        usage(
            "c",
            &[
                ("product_id", "P"),
                ("sku_id", "0002"),
                ("meter_category", "Compute"),
                ("meter_subcategory", "D2"),
            ],
        ),
        // subcategory beats category + family + template
        usage("d", &[("meter_category", "Compute"), ("meter_subcategory", "D4")]),
        // category beats family + template
        usage("e", &[("meter_category", "storage"), ("meter_subcategory", "X")]),
        // an invoice line never matches a rule naming a meter category: family + template decide
        inv("f", &[("meter_category", "Storage")]),
        // family beats template
        inv("g", &[("product_family", "license"), ("product_id", "R")]),
        // template beats a rule naming nothing
        inv("h", &[("product_family", "reservation"), ("product_id", "S")]),
        // enterprise customer: only the rule naming nothing
        inv(
            "i",
            &[
                ("customer_id", "c3"),
                ("product_family", "reservation"),
                ("product_id", "S"),
            ],
        ),
    ];
    let (df, errors) = rate(&rows, &rc, &ctx());
    assert_eq!(errors.height(), 0, "{errors}");
    // cost 100 × (1 + v)
    for (id, rule, price) in [
        ("a", "r_cust", "101"),
        ("b", "r_prodsku", "102"),
        ("c", "r_prod", "103"),
        ("d", "r_sub", "105"),
        ("e", "r_cat", "107"),
        ("f", "r_fam_tmpl", "108"),
        ("g", "r_fam", "109"),
        ("h", "r_tmpl", "110"),
        ("i", "r_any", "111"),
    ] {
        assert_eq!(
            (id, cell(&df, id, out::rate_rule_id), cell(&df, id, out::price)),
            (id, rule.to_string(), price.to_string())
        );
    }
    assert_eq!(cell(&df, "g", out::line_type), "license");
    assert_eq!(cell(&df, "h", out::line_type), "one_time");
    assert_eq!(cell(&df, "f", out::line_type), "usage");
    assert_eq!(cell(&df, "b", out::rate_rule_line), "3");
}

#[test]
fn valid_to_is_exclusive_and_a_mid_month_change_prices_each_day() {
    let rc = cards(
        "early,*,*,*,,,Q,markup_on_cost,0.1,,2025-06-01,2025-06-15
late,*,*,*,,,Q,markup_on_cost,0.2,,2025-06-15,",
    );
    assert!(
        validate_rate_cards(&rc, "rate_cards.csv").is_ok(),
        "touching windows do not overlap"
    );
    let rows = vec![
        usage("d14", &[("charge_date", "2025-06-14")]),
        usage("d15", &[("charge_date", "2025-06-15")]),
        usage("d31", &[("charge_date", "2025-05-31")]),
    ];
    let (df, errors) = rate(&rows, &rc, &ctx());
    assert_eq!(errors.height(), 0);
    assert_eq!(
        (cell(&df, "d14", out::rate_rule_id), cell(&df, "d14", out::price)),
        ("early".into(), "110".into())
    );
    assert_eq!(
        (cell(&df, "d15", out::rate_rule_id), cell(&df, "d15", out::price)),
        ("late".into(), "120".into())
    );
    // No rule is valid before June: kept, unpriced, price and margin null, cost still converted.
    assert_eq!(cell(&df, "d31", out::status), "unpriced");
    assert_eq!(cell(&df, "d31", out::price), "");
    assert_eq!(cell(&df, "d31", out::margin), "");
    assert_eq!(cell(&df, "d31", out::cost_ic), "100");
    assert!(cell(&df, "d31", out::unpriced_reason).starts_with("no rate rule matches customer `c2`"));
}

#[test]
fn fixed_unit_price_under_both_proration_policies() {
    let rc = cards("seat,*,*,license,,,L,fixed_unit_price,10,EUR,,");
    let seat = |id: &str, f: &str| {
        usage(
            id,
            &[
                ("source_kind", "invoice_line"),
                ("product_family", "license"),
                ("product_id", "L"),
                ("q", "3"),
                ("f", f),
            ],
        )
    };
    // mirror_microsoft: Microsoft's factor (half a month: 0.5; a refund of a quarter: -0.25).
    let (df, _) = rate(&[seat("half", "0.5"), seat("refund", "-0.25")], &rc, &ctx());
    assert_eq!(cell(&df, "half", out::price), "15"); // 10 × 3 × 0.5
    assert_eq!(cell(&df, "refund", out::price), "-7.5"); // 10 × 3 × -0.25
    assert_eq!(cell(&df, "refund", out::line_type), "refund");
    assert_eq!(cell(&df, "half", out::proration_policy), "mirror_microsoft");
    // none: whole units, f is the sign.
    let mut c = ctx();
    c.policies.proration = crate::ProrationPolicy::None;
    let (df, _) = rate(&[seat("whole", "1"), seat("removal", "-1")], &rc, &c);
    assert_eq!(cell(&df, "whole", out::price), "30");
    assert_eq!(cell(&df, "removal", out::price), "-30");
    assert_eq!(cell(&df, "whole", out::proration_policy), "none");
}

#[test]
fn fx_policies_and_fallbacks() {
    let rc = cards("all,*,*,*,,,,markup_on_cost,0.1,,,");
    let cad = [
        ("billing_currency", "CAD"),
        ("pricing_currency", "USD"),
        ("pc_to_bc_rate", "1.25"),
    ];
    let with = |id: &str, cust: &str, extra: &[(&str, &str)]| {
        let mut e = vec![("customer_id", cust)];
        e.extend_from_slice(extra);
        usage(id, &e)
    };
    let rows = vec![
        with("ms", "usd_ms", &cad),
        with("fallback", "eur_ms", &cad),
        with(
            "market_inv",
            "gbp_mk",
            &[("billing_currency", "USD"), ("pricing_currency", "USD")],
        ),
        with(
            "market",
            "eur_mk",
            &[
                ("billing_currency", "USD"),
                ("pricing_currency", "USD"),
                ("charge_date", "2025-06-12"),
            ],
        ),
        with(
            "fixed",
            "eur_fx",
            &[("billing_currency", "USD"), ("pricing_currency", "USD")],
        ),
        with(
            "missing",
            "jpy_mk",
            &[("billing_currency", "USD"), ("pricing_currency", "USD")],
        ),
    ];
    let (df, errors) = rate(&rows, &rc, &ctx());
    // microsoft, IC = PC: rate 1 / 1.25 = 0.8; price 110 × 0.8 = 88; cost_ic 80; margin 8.
    assert_eq!(cell(&df, "ms", out::fx_source), "microsoft");
    assert_eq!(cell(&df, "ms", out::fx_rate), "0.8");
    assert_eq!(
        (
            cell(&df, "ms", out::price),
            cell(&df, "ms", out::cost_ic),
            cell(&df, "ms", out::margin)
        ),
        ("88".into(), "80".into(), "8".into())
    );
    // microsoft, IC neither BC nor PC: market CAD→EUR latest on or before 2025-06-30 = 0.68 of 06-28.
    assert_eq!(cell(&df, "fallback", out::fx_source), "market_fallback");
    assert_eq!(cell(&df, "fallback", out::fx_rate), "0.68");
    assert_eq!(cell(&df, "fallback", out::fx_date), "2025-06-28");
    assert_eq!(cell(&df, "fallback", out::price), "74.8"); // 110 × 0.68
    // market, only GBP→USD 1.25 given: USD→GBP = 1 / 1.25 = 0.8, inverted.
    assert_eq!(cell(&df, "market_inv", out::fx_source), "market");
    assert_eq!(cell(&df, "market_inv", out::fx_rate), "0.8");
    assert_eq!(cell(&df, "market_inv", out::fx_inverted), "true");
    // market at period end: USD→EUR 0.92 of 06-20 (the charge date 06-12 does not matter here).
    assert_eq!(cell(&df, "market", out::fx_rate), "0.92");
    assert_eq!(cell(&df, "market", out::fx_inverted), "false");
    assert_eq!(cell(&df, "market", out::price), "101.2"); // 110 × 0.92
    // fixed: 1.1; price 110 × 1.1 = 121; cost_ic 110; margin 11.
    assert_eq!(
        (
            cell(&df, "fixed", out::fx_source),
            cell(&df, "fixed", out::price),
            cell(&df, "fixed", out::margin)
        ),
        ("fixed".into(), "121".into(), "11".into())
    );
    // No USD→JPY nor JPY→USD: the line is kept unpriced and one error names the pair and date.
    assert_eq!(cell(&df, "missing", out::status), "unpriced");
    assert_eq!(cell(&df, "missing", out::price), "");
    let codes: Vec<_> = errors
        .column("code")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    let messages: Vec<_> = errors
        .column("message")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    assert_eq!(codes, vec![ERR_FX.to_string()]);
    assert_eq!(messages, vec!["no market FX rate for `USD`→`JPY` on or before 2025-06-30 in fx_rates.csv, nor a `JPY`→`USD` rate to invert; add one".to_string()]);

    // FX date = charge date: USD→EUR on or before 06-12 is 0.9 of 06-01.
    let mut c = ctx();
    c.policies.fx_date = crate::FxDatePolicy::ChargeDate;
    let (df, _) = rate(&rows[3..4], &rc, &c);
    assert_eq!(
        (cell(&df, "market", out::fx_rate), cell(&df, "market", out::fx_date)),
        ("0.9".into(), "2025-06-01".into())
    );
}

#[test]
fn fixed_unit_price_currency_conversion() {
    // Customer eur_mk (IC EUR, market); lines billed in USD (USD→EUR 0.92 at period end).
    let rc = cards(
        "in_ic,*,*,*,,,A,fixed_unit_price,10,EUR,,
in_bc,*,*,*,,,B,fixed_unit_price,10,USD,,
third,*,*,*,,,C,fixed_unit_price,10,CAD,,",
    );
    let line = |id: &str, p: &str| {
        usage(
            id,
            &[
                ("customer_id", "eur_mk"),
                ("billing_currency", "USD"),
                ("pricing_currency", "USD"),
                ("product_id", p),
                ("q", "1"),
            ],
        )
    };
    let (df, errors) = rate(&[line("a", "A"), line("b", "B"), line("c", "C")], &rc, &ctx());
    assert_eq!(errors.height(), 0, "{errors}");
    assert_eq!(
        (cell(&df, "a", out::price), cell(&df, "a", out::price_fx_source)),
        ("10".into(), "same_currency".into())
    );
    assert_eq!(
        (cell(&df, "b", out::price), cell(&df, "b", out::price_fx_source)),
        ("9.2".into(), "line".into())
    ); // 10 × 0.92
    assert_eq!(
        (cell(&df, "c", out::price), cell(&df, "c", out::price_fx_source)),
        ("6.8".into(), "market".into())
    ); // 10 × 0.68
    assert_eq!(cell(&df, "c", out::price_fx_date), "2025-06-28");
    assert_eq!(cell(&df, "c", out::cost_ic), "92"); // 100 × 0.92, the line's own rate
    assert_eq!(cell(&df, "c", out::margin), "-85.2"); // 6.8 − 92
}

#[test]
fn credits_pass_through_and_unknown_customers_stay_unpriced() {
    let rc = cards("all,*,*,*,,,,markup_on_cost,0.5,,,");
    let rows = vec![
        usage(
            "credit",
            &[
                ("is_credit", "true"),
                ("cost", "-50"),
                ("list", "-60"),
                ("source_kind", "invoice_line"),
            ],
        ),
        usage("charge", &[]),
        usage("stranger", &[("customer_id", "nobody")]),
    ];
    let (df, errors) = rate(&rows, &rc, &ctx());
    assert_eq!(errors.height(), 0);
    assert_eq!(cell(&df, "credit", out::price), "-50");
    assert_eq!(cell(&df, "credit", out::margin), "0");
    assert_eq!(cell(&df, "credit", out::rate_method), "credit_pass_through");
    assert_eq!(cell(&df, "credit", out::rate_rule_id), "");
    assert_eq!(cell(&df, "credit", out::line_type), "credit");
    assert_eq!(cell(&df, "charge", out::price), "150");
    assert_eq!(cell(&df, "stranger", out::status), "unpriced");
    assert_eq!(cell(&df, "stranger", out::price), "");
    assert_eq!(
        cell(&df, "stranger", out::unpriced_reason),
        "customer `nobody` is not in customers.csv; add it with its invoice currency and template"
    );
    // Nothing lost, order kept.
    let ids: Vec<_> = df
        .column("part_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default())
        .collect();
    assert_eq!(ids, vec!["credit", "charge", "stranger"]);
}

#[test]
fn a_tie_is_an_error_naming_both_rules_and_a_line() {
    // Not validated on purpose: the stage must still catch what validate_rate_cards would.
    let rc = cards(
        "x,c2,*,*,,,,markup_on_cost,0.1,,,
y,C2,*,*,,,,markup_on_cost,0.2,,2025-06-01,",
    );
    let at = |line: &'static str| [("source_file", "G1_BilledUsage.csv"), ("line_number", line)];
    let (df, errors) = rate(&[usage("t1", &at("17")), usage("t2", &at("18"))], &rc, &ctx());
    assert_eq!(cell(&df, "t1", out::status), "unpriced");
    assert_eq!(cell(&df, "t1", out::rate_rule_id), "");
    let messages: Vec<_> = errors
        .column("message")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        messages,
        vec!["rate rules `x` (rate_cards.csv line 2) and `y` (line 3) are equally specific for the charge in `G1_BilledUsage.csv` line 17 (line_id `t1`) on 2025-06-10; make one more specific, or end one's validity before the other starts".to_string()]
    );
    let e = validate_rate_cards(&rc, "rate_cards.csv").unwrap_err();
    match e {
        PipelineError::Configs(v) => {
            assert_eq!(v.len(), 1);
            assert_eq!(
                (v[0].file.as_str(), v[0].line, v[0].column.as_str()),
                ("rate_cards.csv", 3, "valid_from")
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn one_rule_id_with_differing_rows_is_an_error_identical_rows_count_once() {
    // `P:4` is padded to `P:0004` at staging, so the two `same` rows become identical.
    let rc = cards(
        "same,*,*,*,,,P:4,markup_on_cost,0.1,,,
same,*,*,*,,,P:0004,markup_on_cost,0.1,,,
diff,*,*,*,,,Z,markup_on_cost,0.1,,,
diff,*,*,*,,,Z,markup_on_cost,0.2,,,",
    );
    let e = validate_rate_cards(&rc, "rate_cards.csv").unwrap_err();
    match e {
        PipelineError::Configs(v) => {
            let found: Vec<_> = v.iter().map(|e| (e.line, e.column.clone())).collect();
            assert_eq!(found, vec![(5, "value".to_string())]);
        }
        other => panic!("{other}"),
    }
    let ok = validate_rate_cards(
        &cards("same,*,*,*,,,P:4,markup_on_cost,0.1,,,\nsame,*,*,*,,,P:0004,markup_on_cost,0.1,,,"),
        "rate_cards.csv",
    )
    .unwrap();
    assert_eq!(ok.height(), 1);
}

#[test]
fn output_schema_is_the_declared_one() {
    let r = int_charges_rated(
        DataFrame::empty_with_schema(&al::schema()).lazy(),
        &crate::reference::empty(RefTable::RateCards),
        &crate::reference::empty(RefTable::Customers),
        &crate::reference::empty(RefTable::FxRates),
        &ctx(),
    )
    .unwrap();
    assert_eq!(r.rated.clone().collect_schema().unwrap().as_ref(), &out::schema());
    assert_eq!(r.rated.collect().unwrap().height(), 0);
    let e = r.errors.collect().unwrap();
    assert_eq!(e.get_column_names(), vec!["code", "message"]);
}

#[test]
fn microsoft_subtotal_check_counts_mismatches_per_charge_type() {
    // Rows of nce_invoice_recon_real_2021-06.csv (EUP, BillableQuantity, PCToBC, Subtotal, MeterDescription).
    let df = df!(
        "charge_type" => ["new", "new", "new", "customerCredit", "cycleCharge"],
        "meter_description" => [Some("SQL Database Single"), Some("Storage"), None, Some("Virtual Machines Dv3"), None],
        "effective_unit_price" => ["12.75", "0.17", "3.06", "-0.203", "3.06"],
        "billable_quantity" => ["39.3333333333", "10", "1", "0", "2"],
        "pc_to_bc_exchange_rate" => ["1.2115", "1.2115", "1.2115", "1.26155", "1.2115"],
        "subtotal" => ["607.56", "2.05", "3.06", "-269.06", "7.40"],
    )
    .unwrap()
    .lazy()
    .with_columns(
        [
            "effective_unit_price",
            "billable_quantity",
            "pc_to_bc_exchange_rate",
            "subtotal",
        ]
        .map(|c| col(c).cast(schemas::money())),
    );
    // usage: ROUNDDOWN(ROUNDDOWN(12.75 × 39.3333333333, 2) = 501.49 × 1.2115, 2) = 607.55 ≠ 607.56;
    //        ROUNDDOWN(ROUNDDOWN(1.70, 2) × 1.2115 = 2.05955, 2) = 2.05 ✓;
    // licence: ROUNDDOWN(3.06 × 1.2115 = 3.70719, 2) × 1 = 3.70 ≠ 3.06 (the reservation exception);
    //          3.70 × 2 = 7.40 ✓; credit with quantity 0: 0 ≠ -269.06.
    let out = microsoft_subtotal_check(df).collect().unwrap();
    let expected = "charge_type,lines,mismatches,unchecked\ncustomerCredit,1,1,0\ncycleCharge,1,0,0\nnew,3,2,0\n";
    assert_eq!(crate::testing::frame_to_sorted_csv(&out), expected);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn price_of(rule: &str, q: Decimal, cost: Decimal) -> Decimal {
        let rc = cards(rule);
        let row = usage("p", &[("q", &q.to_string()), ("cost", &cost.to_string())]);
        let (df, _) = rate(&[row], &rc, &ctx());
        cell(&df, "p", out::price).parse().unwrap()
    }

    proptest! {
        // A fixed seed and no failure file: the same cases every run, nothing written into the repository.
        #![proptest_config(ProptestConfig {
            cases: 16,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fixed_unit_price_is_linear_in_quantity(q in 1i64..1_000_000, k in 1i64..1000, v in 1i64..100_000) {
            let rule = format!("f,*,*,*,,,,fixed_unit_price,{},EUR,,", Decimal::new(v, 2));
            let q = Decimal::new(q, 3);
            let k = Decimal::from(k);
            prop_assert_eq!(price_of(&rule, q * k, d("1")), price_of(&rule, q, d("1")) * k);
        }

        #[test]
        fn markup_is_linear_in_cost(c in -1_000_000_000i64..1_000_000_000, k in 1i64..1000, v in 0i64..10_000) {
            // Costs scale with quantity; with 4-place markups and 6-place costs no product needs rounding.
            let rule = format!("m,*,*,*,,,,markup_on_cost,{},,,", Decimal::new(v, 4));
            let c = Decimal::new(c, 6);
            let k = Decimal::from(k);
            prop_assert_eq!(price_of(&rule, d("1"), c * k), price_of(&rule, d("1"), c) * k);
        }

        #[test]
        fn zero_markup_reproduces_cost_exactly(m in any::<i64>(), scale in 0u32..=18) {
            let cost = Decimal::new(m, scale);
            prop_assert_eq!(price_of("z,*,*,*,,,,markup_on_cost,0%,,,", d("1"), cost), cost);
        }
    }
}

#[test]
fn explain_says_why_the_rule_won_and_shows_the_arithmetic() {
    let rc = cards(
        "any,*,*,*,,,,markup_on_cost,0.5,,,
fam,*,*,azure_usage,,,,markup_on_cost,0.15,,,
old,*,*,azure_usage,Compute,,,markup_on_cost,0.3,,2025-01-01,2025-06-01",
    );
    let row = usage(
        "x",
        &[
            ("customer_id", "eur_mk"),
            ("billing_currency", "USD"),
            ("pricing_currency", "USD"),
            ("meter_category", "Compute"),
            ("source_file", "usage.csv"),
            ("line_number", "7"),
            ("allocation", "tag"),
            ("tag_rule_id", "t1"),
            ("share", "0.5"),
            ("unit_path", "bu/proj"),
            ("source_customer_id", "c2"),
        ],
    );
    let (df, _) = rate(&[row], &rc, &ctx());
    let e = explain::explain_rated(&df, &rc).unwrap();
    let expected = "part x of line x (usage, priced)
source: usage.csv line 7 (daily_usage)
customer: eur_mk MarketEur (template smb, invoice currency EUR); tenant in the export c2
charge: azure_usage Q:0001 meter Compute on 2025-06-10
raw amounts: q = 2, f = 1, cost = 100 USD, list = 120 USD, pec = 0 USD; pricing currency USD, PCToBC rate 1
allocation: tag rule t1, share 0.5, unit bu/proj
rate rule: fam (rate_cards.csv line 3): markup_on_cost 0.15
  candidates (3 matching the line's fields):
    any (line 2): names [], open to open, valid
    fam (line 3): names [product_family], open to open, valid ← applied
    old (line 4): names [meter_category, product_family], 2025-01-01 to 2025-06-01, not valid on the charge date
  why: `fam` beats `any` at level `product_family` (a value against any); the levels above it are equal
fx: policy market, rate 0.92 EUR per 1 USD: fx_rates.csv rate of 2025-06-20
proration policy: mirror_microsoft
arithmetic:
  price = cost × (1 + 0.15) = 100 × (1 + 0.15) = 115 USD
  price = 115 USD × 0.92 EUR/USD = 105.8 EUR
  cost in EUR = 100 USD × 0.92 = 92 EUR
  margin = price − cost = 105.8 − 92 = 13.8 EUR
";
    assert_eq!(e.to_text(), expected);
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["price"], serde_json::json!("105.8"));
    assert_eq!(j["rate_rule_id"], serde_json::json!("fam"));
    assert_eq!(j["candidates"][1]["won"], serde_json::json!(true));
    assert_eq!(j["fx_date"], serde_json::json!("2025-06-20"));
}

#[test]
fn customer_ids_compare_case_insensitively_and_must_be_unique_that_way() {
    let rc = cards("all,*,*,*,,,,markup_on_cost,0.1,,,");
    // `C2` in the export finds customer `c2`.
    let (df, _) = rate(&[usage("u", &[("customer_id", "C2")])], &rc, &ctx());
    assert_eq!(cell(&df, "u", out::price), "110");
    // Two customers differing only in case: refused when customers.csv is staged, and by the stage itself for
    // a table that did not go through staging.
    let (h, rows) = (
        vec!["customer_id".to_string(), "customer_name".into(), "invoice_currency".into(), "template".into()],
        vec![(2u64, vec!["abc".to_string(), "A".into(), "EUR".into(), "smb".into()]), (3, vec!["ABC".to_string(), "B".into(), "EUR".into(), "smb".into()])],
    );
    let e = stage_reference(RefTable::Customers, "customers.csv", &h, &rows).unwrap_err();
    assert_eq!((e[0].line, e[0].column.as_str()), (3, "customer_id"));
    let twice = df!(
        "customer_id" => ["abc", "ABC"],
        "customer_name" => ["A", "B"],
        "invoice_currency" => ["EUR", "EUR"],
        "template" => ["smb", "smb"],
        "line_number" => [2i64, 3],
    )
    .unwrap()
    .lazy()
    .with_columns([
        lit(NULL).cast(DataType::String).alias("fx_policy"),
        lit(NULL).cast(schemas::money()).alias("fixed_fx_rate"),
    ])
    .collect()
    .unwrap();
    let e = int_charges_rated(allocated(&[usage("u", &[])]), &rc, &twice, &fx_rates(), &ctx())
        .err()
        .unwrap();
    match e {
        PipelineError::Configs(v) => assert_eq!((v[0].line, v[0].column.as_str()), (3, "customer_id")),
        other => panic!("{other}"),
    }
}

#[test]
fn a_100_percent_markup_prices_instead_of_dividing_by_zero() {
    // `cost / (1 − v)` of margin_on_cost is computed on every row (when/then evaluates every branch): with a
    // 100 % markup, 1 − v = 0 on the markup's own rows. Price = cost × (1 + 1) = 100 × 2 = 200 EUR.
    let rc = cards("double,*,*,*,,,,markup_on_cost,100%,,,\nlist,*,*,*,,,P2,markup_on_list,1,,,");
    let rows = vec![usage("m", &[]), usage("l", &[("product_id", "P2")])];
    let (df, errors) = rate(&rows, &rc, &ctx());
    assert_eq!(errors.height(), 0);
    assert_eq!((cell(&df, "m", out::price), cell(&df, "m", out::margin)), ("200".into(), "100".into()));
    // markup_on_list 1 (also 100 %): list 120 × 2 = 240.
    assert_eq!(cell(&df, "l", out::price), "240");
}

#[test]
fn a_zero_pc_to_bc_rate_falls_back_to_market() {
    // Customer usd_ms invoices in USD under `microsoft`: IC = PricingCurrency, so 1 / PCToBCExchangeRate would
    // apply, but Microsoft wrote 0 on this row. It falls back to the market rate EUR→USD on or before
    // 2025-06-30: no direct pair, the reverse USD→EUR 0.92 (06-20) inverted = 1 / 0.92 =
    // 1.086956521739130434782… → 1.086956521739130435 at 18 places (half-even). Price 110 × that =
    // 119.56521739130434785 → 119.565217391304347850 at 18 places.
    let rc = cards("all,*,*,*,,,,markup_on_cost,0.1,,,");
    let zero = [("customer_id", "usd_ms"), ("billing_currency", "EUR"), ("pricing_currency", "USD"), ("pc_to_bc_rate", "0")];
    let missing = [("customer_id", "usd_ms"), ("billing_currency", "EUR"), ("pricing_currency", "USD"), ("pc_to_bc_rate", "")];
    let (df, errors) = rate(&[usage("zero", &zero), usage("missing", &missing)], &rc, &ctx());
    assert_eq!(errors.height(), 0);
    for id in ["zero", "missing"] {
        assert_eq!(cell(&df, id, out::fx_source), "market_fallback", "{id}");
        assert_eq!(cell(&df, id, out::fx_rate), "1.086956521739130435", "{id}");
        assert_eq!(cell(&df, id, out::fx_inverted), "true", "{id}");
        assert_eq!(cell(&df, id, out::price), "119.56521739130434785", "{id}");
        assert_eq!(cell(&df, id, out::status), "priced", "{id}");
    }
}

#[test]
fn a_zero_reverse_market_rate_is_no_rate_not_a_crash() {
    // Staging refuses a rate ≤ 0, but the stage must not depend on it: a zero reverse rate next to a direct
    // rate (whose row also computes 1 / reverse) gives the direct rate, and alone gives no rate.
    let fx = df!(
        "date" => ["2025-06-01", "2025-06-01", "2025-06-01"],
        "from_currency" => ["USD", "EUR", "GBP"],
        "to_currency" => ["EUR", "USD", "USD"],
        "rate" => ["0.9", "0", "0"],
    )
    .unwrap()
    .lazy()
    .with_columns([
        col("date").str().to_date(StrptimeOptions::default()),
        col("rate").cast(schemas::money()),
    ])
    .collect()
    .unwrap();
    let needs = df!(
        fx::FROM => ["USD", "USD"],
        fx::TO => ["EUR", "GBP"],
        fx::DATE => ["2025-06-30", "2025-06-30"],
    )
    .unwrap()
    .lazy()
    .with_column(col(fx::DATE).str().to_date(StrptimeOptions::default()));
    let got = fx::market_rates(needs, &fx).sort([fx::TO], Default::default()).collect().unwrap();
    let rates: Vec<Option<Decimal>> =
        (0..got.height()).map(|i| any_to_decimal(&got.column(fx::RATE).unwrap().get(i).unwrap())).collect();
    assert_eq!(rates, vec![Some(d("0.9")), None]);
}

#[test]
fn the_market_fallback_warning_names_the_customers() {
    let rc = cards("all,*,*,*,,,,markup_on_cost,0.1,,,");
    let cad = [("billing_currency", "CAD"), ("pricing_currency", "USD"), ("pc_to_bc_rate", "1.25")];
    let with = |id: &str, cust: &str| {
        let mut e = vec![("customer_id", cust)];
        e.extend_from_slice(&cad);
        usage(id, &e)
    };
    let (df, _) = rate(&[with("a", "eur_ms"), with("b", "eur_ms"), with("c", "usd_ms")], &rc, &ctx());
    assert_eq!(
        market_fallback_warning(df.clone().lazy()).unwrap().unwrap(),
        "2 part(s) converted at the market rate (fx_source `market_fallback`) for customer(s) `eur_ms` (2 part(s) CAD → EUR): fx_policy `microsoft` but the invoice currency is neither the billing nor the pricing currency, or Microsoft's PCToBCExchangeRate is missing or 0; set the customer's fx_policy in customers.csv (`market` or `fixed`) to make it explicit"
    );
    let (df, _) = rate(&[with("c", "usd_ms")], &rc, &ctx());
    assert_eq!(market_fallback_warning(df.clone().lazy()).unwrap(), None);
}
