//! `focus_cost_and_usage` (issue #13, `reference/focus.md`): the customer's invoice as a FOCUS 1.2 Cost and
//! Usage dataset, in which the MSP is the invoice issuer and the provider, Microsoft (or the marketplace
//! publisher) the publisher, and the customer the billing account.
//!
//! Rows:
//! - one row per priced rated part (resource level: `ResourceId`, `SubAccountId` = the Azure subscription,
//!   `Tags` with the org unit), for every line that comes from Microsoft charges (usage, licence, one-time,
//!   credit, refund). These stream: a lazy plan over the rated parts joined with small frames only;
//! - one row per invoice line the MSP makes itself (PSA service, manual, trial spend-cap credit, late-data
//!   adjustment): built from the small lines frame.
//!
//! **BilledCost allocation.** An invoice line is rounded once; its parts carry exact prices. Each part's
//! `BilledCost` is its exact price, and the line's rounding difference (`amount − Σ prices`, at most half a minor
//! unit, one under rounding mode `down`) is added to exactly one part of the line, its *carrier*: the part with the
//! largest absolute price, ties broken by the smallest `part_id` ([`rounding_carriers`]). So Σ BilledCost over a
//! line's rows is the rounded line amount and over an invoice the subtotal, exactly, and every other row keeps
//! its exact price. (A largest-remainder spread in minor units would need a ranking of each line's parts, a sort
//! of the month; the carrier is found with two group-bys on a narrow key, which stream.) The carried amount is
//! in `x_BilledCostRounding`.
//!
//! The MSP's cost, margin and PEC never appear. The mapping of every invoice line type is the table
//! [`LINE_TYPE_MAPPING`] (also in ARCHITECTURE.md).

#[cfg(test)]
mod tests;

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{Ty, fct_invoice_lines as fl, fct_invoices as fi, focus_cost_and_usage as fc, int_charges_rated as r};

use crate::context::{Period, RunContext};
use crate::decimal::{dec, nonzero, not_tiny, null_dec};
use crate::error::{PipelineError, Result};
use crate::invoice::cells;

const STAGE: &str = "focus_cost_and_usage";

/// Tag keys cspbill adds to `Tags` (FOCUS tags are the customer's own keys; these name the org unit the invoice
/// groups the charge under).
pub const TAG_ORG_UNIT: &str = "cspbill-org-unit";
pub const TAG_ORG_UNIT_PATH: &str = "cspbill-org-unit-path";

/// How each invoice line type becomes FOCUS rows: (line type, rows, ChargeCategory, ChargeClass,
/// ChargeFrequency). ARCHITECTURE.md shows the same table.
pub const LINE_TYPE_MAPPING: &[(&str, &str, &str, &str, &str)] = &[
    ("usage", "one per rated part", "Usage", "", "Usage-Based"),
    ("license", "one per rated part", "Purchase", "", "Recurring"),
    ("one_time", "one per rated part", "Purchase", "", "One-Time"),
    ("refund", "one per rated part", "Usage (Azure usage) or Purchase", "Correction when the refunded charge starts before the period", "as the refunded charge"),
    ("credit", "one per rated part", "Credit", "", "One-Time"),
    ("service", "one per invoice line", "Usage", "", "Usage-Based"),
    ("manual", "one per invoice line", "Purchase (Credit when negative)", "", "One-Time"),
    ("spend_cap_credit", "one per invoice line", "Credit", "", "One-Time"),
    ("adjustment", "one per invoice line", "as the corrected line", "Correction", "as the corrected line"),
];

/// FOCUS ServiceCategory and ServiceSubcategory of Azure meter categories (lower case), after the FinOps
/// toolkit's `Services.csv`; anything else is `Other` / `Other (Other)`.
const METER_SERVICES: &[(&str, &str, &str)] = &[
    ("virtual machines", "Compute", "Virtual Machines"),
    ("virtual machines licenses", "Compute", "Virtual Machines"),
    ("functions", "Compute", "Serverless Compute"),
    ("container instances", "Compute", "Containers"),
    ("azure kubernetes service", "Compute", "Containers"),
    ("container registry", "Compute", "Containers"),
    ("azure app service", "Web", "Application Platforms"),
    ("storage", "Storage", "Storage Platforms"),
    ("backup", "Storage", "Backup Storage"),
    ("bandwidth", "Networking", "Network Infrastructure"),
    ("virtual network", "Networking", "Network Infrastructure"),
    ("load balancer", "Networking", "Network Infrastructure"),
    ("vpn gateway", "Networking", "Network Connectivity"),
    ("application gateway", "Networking", "Application Networking"),
    ("azure dns", "Networking", "Network Routing"),
    ("azure firewall", "Networking", "Network Security"),
    ("content delivery network", "Networking", "Content Delivery"),
    ("key vault", "Security", "Secret Management"),
    ("microsoft defender for cloud", "Security", "Security Posture Management"),
    ("log analytics", "Management and Governance", "Observability"),
    ("azure monitor", "Management and Governance", "Observability"),
    ("azure site recovery", "Management and Governance", "Disaster Recovery"),
    ("sql database", "Databases", "Relational Databases"),
    ("azure database for postgresql", "Databases", "Relational Databases"),
    ("azure database for mysql", "Databases", "Relational Databases"),
    ("azure cosmos db", "Databases", "NoSQL Databases"),
    ("redis cache", "Databases", "Caching"),
    ("event hubs", "Integration", "Messaging"),
    ("service bus", "Integration", "Messaging"),
    ("logic apps", "Integration", "Workflow Orchestration"),
    ("api management", "Integration", "API Management"),
    ("cognitive services", "AI and Machine Learning", "AI Platforms"),
    ("azure openai", "AI and Machine Learning", "Generative AI"),
    ("azure synapse analytics", "Analytics", "Analytics Platforms"),
    ("azure data factory v2", "Analytics", "Data Processing"),
];

/// ServiceCategory and ServiceSubcategory of invoice lines by product family (they have no meter).
const FAMILY_SERVICES: &[(&str, &str, &str)] = &[("license", "Business Applications", "Productivity and Collaboration")];

/// Everything the FOCUS stage reads.
pub struct FocusInputs<'a> {
    /// `invoice::line_parts` of the period: the priced rated parts with their invoice line and number.
    pub parts: LazyFrame,
    pub invoices: &'a DataFrame,
    pub lines: &'a DataFrame,
    /// The collected [`rounding_carriers`] of `parts`.
    pub carriers: &'a DataFrame,
    /// The collected [`subscription_names`]: `subscription_id`, `subscription_name`.
    pub subscriptions: &'a DataFrame,
}

fn s(name: &str) -> Expr {
    col(name)
}

fn null_str() -> Expr {
    lit(NULL).cast(DataType::String)
}

/// `e`, with empty text as null.
fn nonblank(e: Expr) -> Expr {
    when(e.clone().eq(lit(""))).then(null_str()).otherwise(e)
}

/// Text in the ASCII the validator accepts for `ChargeDescription` (StringHandling): dashes become `-`, other
/// non-ASCII characters `?`.
pub fn ascii_text(t: &str) -> String {
    t.chars().map(|c| if matches!(c, '\u{2010}'..='\u{2015}') { '-' } else if c.is_ascii() { c } else { '?' }).collect()
}

fn ascii(e: Expr) -> Expr {
    e.str().replace_all(lit("[\u{2010}-\u{2015}]"), lit("-"), false).str().replace_all(lit("[^\x00-\x7F]"), lit("?"), false)
}

/// Partner Center's units in FOCUS UnitFormat: `1/Month` → `Units/Month`, `1 GB/Month` → `GB/Month`, `10K` →
/// `10000 Units`, `hours` → `Hours`; units already in the format (`1 Hour`, `1 GB`) stay; none → `Units`.
pub fn unit_text(u: Option<&str>) -> String {
    let u = u.map(str::trim).filter(|u| !u.is_empty()).unwrap_or("Units");
    if u.eq_ignore_ascii_case("hours") || u.eq_ignore_ascii_case("hour") {
        return "Hours".into();
    }
    if let Some(rest) = u.strip_prefix("1/") {
        return format!("Units/{rest}");
    }
    if let Some(rest) = u.strip_prefix("1 ").filter(|r| r.contains('/')) {
        return rest.to_string();
    }
    if let Some(n) = u.strip_suffix('K').filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) {
        return format!("{n}000 Units");
    }
    u.to_string()
}

fn unit_expr(e: Expr) -> Expr {
    e.map(
        |c: Column| {
            let out: StringChunked = c.str()?.iter().map(|u| Some(unit_text(u))).collect();
            Ok(out.with_name(c.name().clone()).into_column())
        },
        |_, f| Ok(Field::new(f.name().clone(), DataType::String)),
    )
}

const LINE: &str = "m_invoice_line_id";
const NUMBER: &str = "m_invoice_number";
const CARRIER: &str = "carrier_part_id";

/// Days since 1970-01-01 of a date.
fn epoch_days(d: NaiveDate) -> i64 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")).num_days()
}

/// A UTC timestamp (µs) at midnight of a day given as days since the epoch (an Int64 expression).
fn midnight(days: Expr) -> Expr {
    (days.cast(DataType::Int64) * lit(86_400_000_000i64)).cast(Ty::Ts.dtype())
}

fn midnight_lit(d: NaiveDate) -> Expr {
    midnight(lit(epoch_days(d)))
}

/// Per invoice line, the part that carries the line's rounding difference: the largest absolute price, ties
/// broken by the smallest `part_id`. Two group-bys on the line id and a join with the first one's (small)
/// result: streams. The job collects it (one row per line).
pub fn rounding_carriers(parts: LazyFrame) -> LazyFrame {
    let abs_price = when(s(r::price).lt(dec("0"))).then(dec("0") - s(r::price)).otherwise(s(r::price));
    let a = parts.select([s(LINE), s(r::part_id), abs_price.alias("_abs")]);
    let top = a.clone().group_by([s(LINE)]).agg([s("_abs").max().alias("_max")]);
    a.join(top, [s(LINE)], [s(LINE)], JoinArgs::new(JoinType::Inner))
        .filter(s("_abs").eq(s("_max")))
        .group_by([s(LINE)])
        .agg([s(r::part_id).min().alias(CARRIER)])
        .sort([LINE], SortMultipleOptions::default())
}

/// A display name per subscription id: the Azure subscription's `EntitlementDescription` from daily usage, the
/// Partner Center subscription's `SubscriptionDescription` from invoice lines (small: one row per subscription).
pub fn subscription_names(usage: LazyFrame, invoice_lines: LazyFrame) -> Result<LazyFrame> {
    use schemas::{stg_pc_daily_usage as u, stg_pc_invoice_lines as il};
    let both = concat(
        [
            usage.select([s(u::entitlement_id).alias("subscription_id"), s(u::entitlement_description).alias("subscription_name")]),
            invoice_lines.select([s(il::subscription_id).alias("subscription_id"), s(il::subscription_description).alias("subscription_name")]),
        ],
        UnionArgs::default(),
    )
    .map_err(PipelineError::polars(STAGE))?;
    Ok(both
        .filter(s("subscription_id").is_not_null().and(s("subscription_name").is_not_null()))
        .group_by([s("subscription_id")])
        .agg([s("subscription_name").min()])
        .sort(["subscription_id"], SortMultipleOptions::default()))
}

/// The `Tags` JSON object of a row: the resource's own tags (a JSON object, else none) with the org unit added.
pub fn merge_tags(tags: Option<&str>, unit_id: Option<&str>, unit_path: Option<&str>) -> Option<String> {
    let mut map = match tags.map(str::trim).filter(|t| !t.is_empty()).and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(u) = unit_id.filter(|u| !u.is_empty()) {
        map.insert(TAG_ORG_UNIT.into(), u.into());
    }
    if let Some(p) = unit_path.filter(|p| !p.is_empty()) {
        map.insert(TAG_ORG_UNIT_PATH.into(), p.into());
    }
    (!map.is_empty()).then(|| serde_json::Value::Object(map).to_string())
}

/// `Tags` as an expression over the tags, unit id and unit path columns (a batch UDF: one JSON parse per row).
fn tags_expr(tags: Expr, unit_id: Expr, unit_path: Expr) -> Expr {
    as_struct(vec![tags.alias("t"), unit_id.alias("u"), unit_path.alias("p")]).map(
        |c: Column| {
            let st = c.struct_()?;
            let fields = st.fields_as_series();
            let t = fields[0].str()?;
            let u = fields[1].str()?;
            let p = fields[2].str()?;
            let out: StringChunked = t.iter().zip(u.iter()).zip(p.iter()).map(|((t, u), p)| merge_tags(t, u, p)).collect();
            Ok(out.with_name(fc::Tags.into()).into_column())
        },
        |_, _| Ok(Field::new(fc::Tags.into(), DataType::String)),
    )
}

/// A small frame mapping a service key (`meter:<category>` or `family:<family>`) to FOCUS's service category
/// and subcategory.
fn service_map() -> Result<DataFrame> {
    let mut keys = Vec::new();
    let mut cats = Vec::new();
    let mut subs = Vec::new();
    for (k, c, sub) in METER_SERVICES {
        keys.push(format!("meter:{k}"));
        cats.push(*c);
        subs.push(*sub);
    }
    for (k, c, sub) in FAMILY_SERVICES {
        keys.push(format!("family:{k}"));
        cats.push(*c);
        subs.push(*sub);
    }
    DataFrame::new_infer_height(vec![
        Column::new("_svc_key".into(), keys),
        Column::new("_svc_cat".into(), cats),
        Column::new("_svc_sub".into(), subs),
    ])
    .map_err(PipelineError::polars(STAGE))
}

fn left_join(lf: LazyFrame, other: LazyFrame, left: &str, right: &str) -> LazyFrame {
    let mut args = JoinArgs::new(JoinType::Left);
    args.maintain_order = MaintainOrderJoin::Left;
    lf.join(other, [s(left)], [s(right)], args)
}

/// Casts and orders the named expressions into the table's schema, with `period` last (the Hive partition).
fn in_schema(mut cols: std::collections::HashMap<&'static str, Expr>, period: Period) -> Result<Vec<Expr>> {
    let mut out = Vec::with_capacity(fc::COLUMNS.len() + 1);
    for (name, ty) in fc::COLUMNS {
        let e = cols.remove(name).unwrap_or_else(|| lit(NULL));
        out.push(e.cast(ty.dtype()).alias(*name));
    }
    if let Some(extra) = cols.keys().next() {
        return Err(PipelineError::Invariant { stage: STAGE, message: format!("column `{extra}` is not in the FOCUS schema; fix the FOCUS stage") });
    }
    out.push(lit(period.to_string()).alias("period"));
    Ok(out)
}

/// The rows of the parts: one per priced rated part, in the invoice line its group became.
fn part_rows(inputs: &FocusInputs, ctx: &RunContext) -> Result<LazyFrame> {
    let period = ctx.period;
    let issuer = ctx.policies.issuer.clone();
    // The line's rounding difference (amount − Σ prices) and its carrier, per invoice line (small frames).
    let rounding = inputs
        .lines
        .clone()
        .lazy()
        .select([s(fl::invoice_line_id).alias("_r_line"), (s(fl::amount) - s(fl::amount_unrounded)).alias("_line_rounding")]);
    let carriers = inputs.carriers.clone().lazy().select([s(LINE).alias("_c_line"), s(CARRIER)]);
    let subs = inputs.subscriptions.clone().lazy().select([s("subscription_id").alias("_s_id"), s("subscription_name").alias("_s_name")]);
    let names = inputs.invoices.clone().lazy().select([s(fi::invoice_number).alias("_i_number"), s(fi::customer_name).alias("_i_name")]);

    let lt = s(r::line_type);
    let daily = s(r::source_kind).eq(lit("daily_usage")).fill_null(lit(false));
    let usage_like = daily.clone().or(s(r::product_family).eq(lit("azure_usage")).fill_null(lit(false)));
    let category = when(lt.clone().eq(lit("credit")))
        .then(lit("Credit"))
        .when(lt.clone().eq(lit("usage")))
        .then(lit("Usage"))
        .when(lt.clone().eq(lit("refund")).and(usage_like.clone()))
        .then(lit("Usage"))
        .otherwise(lit("Purchase"));
    let period_start = epoch_days(period.start());
    let day = |d: &str| s(d).cast(DataType::Int32).cast(DataType::Int64);
    let start = when(daily.clone())
        .then(day(r::charge_date))
        .otherwise(coalesce(&[day(r::charge_start_date), day(r::charge_date)]))
        .fill_null(lit(period_start));
    let end_raw = when(daily.clone()).then(day(r::charge_date)).otherwise(coalesce(&[day(r::charge_end_date), day(r::charge_date)]));
    let correction = lt.clone().eq(lit("refund")).and(s("_start").lt(lit(period_start)));

    let svc_key = when(daily.clone())
        .then(concat_str([lit("meter:"), s(r::meter_category).str().to_lowercase()], "", false))
        .otherwise(concat_str([lit("family:"), s(r::product_family)], "", false));

    let lf = inputs.parts.clone().with_columns([
        category.alias("_cat"),
        start.alias("_start"),
        end_raw.alias("_end_raw"),
        svc_key.alias("_svc_key"),
        nonblank(s(r::publisher_name)).fill_null(lit("Microsoft")).alias("_publisher"),
    ]);
    let lf = left_join(lf, rounding, LINE, "_r_line");
    let lf = left_join(lf, carriers, LINE, "_c_line");
    let lf = left_join(lf, subs, r::subscription_id, "_s_id");
    let lf = left_join(lf, names, NUMBER, "_i_number");
    let lf = left_join(lf, service_map()?.lazy(), "_svc_key", "_svc_key");
    let lf = lf.with_columns([
        when(s(r::part_id).eq(s(CARRIER)).fill_null(lit(false)))
            .then(s("_line_rounding"))
            .otherwise(dec("0"))
            .alias("_resid"),
        correction.fill_null(lit(false)).alias("_correction"),
        s("_cat").eq(lit("Credit")).alias("_credit"),
    ]);

    let price = s(r::price);
    let billed = price.clone() + s("_resid");
    // A commitment purchase (reservation, savings plan) covers future charges: EffectiveCost 0 (FOCUS 1.2
    // EffectiveCost; CSP exports carry no amortised share to spread it over). Other purchases keep their cost.
    let commitment = s("_cat")
        .eq(lit("Purchase"))
        .and(s(r::product_family).eq(lit("reservation")).or(s(r::product_family).eq(lit("savings_plan"))))
        .fill_null(lit(false));
    let effective = when(commitment).then(dec("0")).otherwise(billed.clone());
    let credit = s("_credit");
    let pq = s(r::q) * s(r::f);
    // IC per unit of the pricing currency: PC → BC (Microsoft's rate) × BC → IC (the line's rate).
    let k = s(r::pc_to_bc_rate) * s(r::fx_rate);
    let lup = s(r::unit_price) * k.clone();
    // The customer's unit price: price / quantity. A quantity below 10^-6 gives none (unless the price is 0):
    // the quotient could pass the 20 integer digits of Decimal(38, 18).
    let tiny = when(pq.clone().lt(dec("0"))).then(dec("0") - pq.clone()).otherwise(pq.clone()).lt(dec("0.000001"));
    let cup = when(tiny)
        .then(when(price.clone().eq(dec("0"))).then(dec("0")).otherwise(null_dec()))
        .otherwise(price.clone() / not_tiny(pq.clone(), "0.000001"));
    let sku = when(nonblank(s(r::sku_id)).is_null())
        .then(nonblank(s(r::product_id)))
        .otherwise(concat_str([s(r::product_id).fill_null(lit("")), s(r::sku_id)], ":", false));
    let body = when(daily.clone())
        .then(concat_str([s(r::meter_category), s(r::meter_name)], " – ", true))
        .otherwise(concat_str([s(r::product_name), s(r::sku_name)], " – ", true));
    let service_name = when(daily.clone())
        .then(nonblank(s(r::meter_category)))
        .otherwise(nonblank(s(r::product_name)))
        .fill_null(s(r::product_family))
        .fill_null(lit("Microsoft cloud"));
    let description = ascii(concat_str(
        [
            when(lt.clone().eq(lit("credit"))).then(lit("Credit: ")).when(lt.clone().eq(lit("refund"))).then(lit("Refund: ")).otherwise(lit("")),
            nonblank(body).fill_null(service_name.clone()),
        ],
        "",
        false,
    ));
    let frequency = when(credit.clone())
        .then(lit("One-Time"))
        .when(s("_cat").eq(lit("Usage")))
        .then(lit("Usage-Based"))
        .when(s(r::product_family).eq(lit("license")).fill_null(lit(false)))
        .then(lit("Recurring"))
        .otherwise(lit("One-Time"));
    let resource = nonblank(s(r::resource_uri));
    let sub_id = nonblank(s(r::subscription_id));

    let mut c: std::collections::HashMap<&'static str, Expr> = std::collections::HashMap::new();
    c.insert(fc::BilledCost, billed.clone());
    c.insert(fc::BillingAccountId, s(r::customer_id));
    c.insert(fc::BillingAccountName, coalesce(&[s("_i_name"), s(r::customer_name)]));
    c.insert(fc::BillingAccountType, lit("Customer"));
    c.insert(fc::BillingCurrency, s(r::invoice_currency));
    c.insert(fc::BillingPeriodEnd, midnight_lit(period.next().start()));
    c.insert(fc::BillingPeriodStart, midnight_lit(period.start()));
    c.insert(fc::ChargeCategory, s("_cat"));
    c.insert(fc::ChargeClass, when(s("_correction")).then(lit("Correction")).otherwise(null_str()));
    c.insert(fc::ChargeDescription, description);
    c.insert(fc::ChargeFrequency, frequency);
    // Exclusive end: the day after the last charged day (Partner Center's end dates are inclusive).
    c.insert(
        fc::ChargePeriodEnd,
        midnight(when(s("_end_raw").is_null().or(s("_end_raw").lt(s("_start")))).then(s("_start")).otherwise(s("_end_raw")) + lit(1i64)),
    );
    c.insert(fc::ChargePeriodStart, midnight(s("_start")));
    c.insert(fc::ConsumedQuantity, when(s("_cat").eq(lit("Usage"))).then(s("signed_q")).otherwise(null_dec()));
    c.insert(fc::ConsumedUnit, when(s("_cat").eq(lit("Usage"))).then(unit_expr(s(r::unit))).otherwise(null_str()));
    c.insert(fc::ContractedCost, when(credit.clone()).then(billed.clone()).otherwise(price.clone()));
    c.insert(fc::ContractedUnitPrice, when(credit.clone()).then(null_dec()).otherwise(cup.clone()));
    c.insert(fc::EffectiveCost, effective.clone());
    c.insert(fc::InvoiceId, s(NUMBER));
    c.insert(fc::InvoiceIssuerName, lit(issuer.clone()));
    c.insert(fc::ListCost, when(credit.clone()).then(billed.clone()).otherwise(coalesce(&[lup.clone() * pq.clone(), price.clone()])));
    c.insert(fc::ListUnitPrice, when(credit.clone()).then(null_dec()).otherwise(lup));
    c.insert(fc::PricingCategory, when(credit.clone()).then(null_str()).otherwise(lit("Standard")));
    c.insert(fc::PricingCurrency, coalesce(&[nonblank(s(r::pricing_currency)), s(r::billing_currency)]));
    c.insert(fc::PricingCurrencyContractedUnitPrice, when(credit.clone()).then(null_dec()).otherwise(cup / nonzero(k.clone())));
    c.insert(fc::PricingCurrencyEffectiveCost, effective / nonzero(k));
    c.insert(fc::PricingCurrencyListUnitPrice, when(credit.clone()).then(null_dec()).otherwise(s(r::unit_price)));
    c.insert(fc::PricingQuantity, when(credit.clone()).then(null_dec()).otherwise(pq));
    c.insert(fc::PricingUnit, when(credit.clone()).then(null_str()).otherwise(unit_expr(s(r::unit))));
    c.insert(fc::ProviderName, lit(issuer));
    c.insert(fc::PublisherName, s("_publisher"));
    c.insert(fc::ResourceId, resource.clone());
    c.insert(fc::ResourceName, resource.clone().str().extract(lit(r"([^/]+)/*$"), 1));
    c.insert(
        fc::ResourceType,
        when(resource.clone().is_null())
            .then(null_str())
            .otherwise(coalesce(&[resource.str().extract(lit(r"(?i)/providers/([^/]+/[^/]+)"), 1), nonblank(s(r::meter_category)), lit("Resource")])),
    );
    c.insert(fc::ServiceCategory, s("_svc_cat").fill_null(lit("Other")));
    c.insert(fc::ServiceName, service_name);
    c.insert(fc::ServiceSubcategory, s("_svc_sub").fill_null(lit("Other (Other)")));
    c.insert(fc::SkuId, sku.clone());
    c.insert(fc::SkuMeter, coalesce(&[nonblank(s(r::meter_name)), nonblank(s(r::sku_name)), nonblank(s(r::product_name))]));
    c.insert(fc::SkuPriceId, sku);
    c.insert(fc::SubAccountId, sub_id.clone());
    c.insert(fc::SubAccountName, when(sub_id.clone().is_null()).then(null_str()).otherwise(coalesce(&[nonblank(s("_s_name")), sub_id.clone()])));
    c.insert(fc::SubAccountType, when(sub_id.is_null()).then(null_str()).otherwise(lit("Subscription")));
    c.insert(fc::Tags, tags_expr(s(r::tags), s(r::unit_id), s(r::unit_path)));
    c.insert(fc::HostProviderName, lit("Microsoft"));
    c.insert(fc::ServiceProviderName, s("_publisher"));
    c.insert(fc::x_InvoiceLineId, s(LINE));
    c.insert(fc::x_InvoiceLineType, lt);
    c.insert(fc::x_BilledCostRounding, s("_resid"));
    c.insert(fc::x_PartId, s(r::part_id));
    c.insert(fc::x_SourceLineId, s(r::line_id));
    c.insert(fc::x_ProductFamily, s(r::product_family));
    c.insert(fc::x_ResourceGroupName, nonblank(s(r::resource_group)));
    c.insert(fc::x_OrgUnitId, nonblank(s(r::unit_id)));
    c.insert(fc::x_OrgUnitPath, nonblank(s(r::unit_path)));
    c.insert(
        fc::x_CorrectedBillingPeriod,
        when(s("_correction")).then(midnight(s("_start")).dt().to_string("%Y-%m")).otherwise(null_str()),
    );
    Ok(lf.select(in_schema(c, period)?))
}

/// A cell of a line row.
enum V {
    S(String),
    D(Decimal),
    T(NaiveDate),
}

/// The rows of the lines the MSP makes itself (service, manual, spend-cap credit, adjustment): one per line.
fn line_rows(inputs: &FocusInputs, ctx: &RunContext) -> Result<DataFrame> {
    use std::collections::HashMap;
    let period = ctx.period;
    let issuer = &ctx.policies.issuer;
    let l = inputs.lines;
    let (id, num, cust, ccy, lt) = (
        cells::strs(l, fl::invoice_line_id)?,
        cells::strs(l, fl::invoice_number)?,
        cells::strs(l, fl::customer_id)?,
        cells::strs(l, fl::currency)?,
        cells::strs(l, fl::line_type)?,
    );
    let (fam, sub, gk, uid, upath, desc, unit) = (
        cells::strs(l, fl::product_family)?,
        cells::strs(l, fl::subscription_id)?,
        cells::strs(l, fl::group_key)?,
        cells::strs(l, fl::unit_id)?,
        cells::strs(l, fl::unit_path)?,
        cells::strs(l, fl::description)?,
        cells::strs(l, fl::unit)?,
    );
    let (qty, uprice, au, am, corrected) = (
        cells::decs(l, fl::quantity)?,
        cells::decs(l, fl::unit_price)?,
        cells::decs(l, fl::amount_unrounded)?,
        cells::decs(l, fl::amount)?,
        cells::strs(l, fl::corrected_period)?,
    );
    let names: HashMap<String, String> = {
        let n = cells::strs(inputs.invoices, fi::invoice_number)?;
        let c = cells::strs(inputs.invoices, fi::customer_name)?;
        n.into_iter().zip(c).filter_map(|(n, c)| Some((n?, c?))).collect()
    };
    let mut rows: Vec<HashMap<&'static str, V>> = Vec::new();
    for i in 0..id.len() {
        let line_type = lt[i].clone().unwrap_or_default();
        if crate::invoice::CHARGE_TYPES.contains(&line_type.as_str()) {
            continue; // rows of the parts
        }
        let amount = am[i].unwrap_or_default();
        let mut row: HashMap<&'static str, V> = HashMap::new();
        let mut put = |k: &'static str, v: V| {
            row.insert(k, v);
        };
        // What the line is, in FOCUS terms (LINE_TYPE_MAPPING).
        let family = fam[i].clone().unwrap_or_default();
        let (mut category, class, mut frequency, service, svc_cat, svc_sub, own) = match line_type.as_str() {
            "service" => ("Usage", None, "Usage-Based", "Professional services".to_string(), "Management and Governance", "Support", true),
            "manual" => ("Purchase", None, "One-Time", desc[i].clone().unwrap_or_else(|| "Manual charge".into()), "Other", "Other (Other)", true),
            "spend_cap_credit" => ("Credit", None, "One-Time", "Trial spend cap".to_string(), "Other", "Other (Other)", true),
            _ => {
                // adjustment: its group key is `CORRECTED|LINE_TYPE|KEY` (invoice::adjustment_lines).
                let original = gk[i].as_deref().and_then(|k| k.split('|').nth(1)).unwrap_or("");
                let usage = original == "usage" || family == "azure_usage";
                let (cat, freq) = match (original, usage) {
                    ("credit", _) => ("Credit", "One-Time"),
                    (_, true) => ("Usage", "Usage-Based"),
                    _ if family == "license" => ("Purchase", "Recurring"),
                    _ => ("Purchase", "One-Time"),
                };
                let (sc, ss) = if family == "license" { ("Business Applications", "Productivity and Collaboration") } else { ("Other", "Other (Other)") };
                (cat, Some("Correction"), freq, desc[i].clone().unwrap_or_else(|| "Adjustment".into()), sc, ss, false)
            }
        };
        if line_type == "manual" && amount < Decimal::ZERO {
            category = "Credit";
            frequency = "One-Time";
        }
        let credit = category == "Credit";
        let priced = !credit && class.is_none();
        put(fc::BilledCost, V::D(amount));
        put(fc::EffectiveCost, V::D(amount));
        let (q, p) = (qty[i].unwrap_or_default(), uprice[i]);
        match p.filter(|_| priced) {
            Some(p) => {
                let cost = (p * q).round_dp(schemas::MONEY_SCALE as u32);
                put(fc::ListUnitPrice, V::D(p));
                put(fc::ContractedUnitPrice, V::D(p));
                put(fc::PricingCurrencyListUnitPrice, V::D(p));
                put(fc::PricingCurrencyContractedUnitPrice, V::D(p));
                put(fc::ListCost, V::D(cost));
                put(fc::ContractedCost, V::D(cost));
                put(fc::PricingQuantity, V::D(q));
                put(fc::PricingUnit, V::S(unit_text(unit[i].as_deref())));
                put(fc::PricingCategory, V::S("Standard".into()));
            }
            None => {
                put(fc::ListCost, V::D(amount));
                put(fc::ContractedCost, V::D(amount));
                if !credit {
                    put(fc::PricingCategory, V::S("Standard".into()));
                }
            }
        }
        if category == "Usage" && class.is_none() {
            put(fc::ConsumedQuantity, V::D(q));
            put(fc::ConsumedUnit, V::S(unit_text(unit[i].as_deref())));
        }
        let number = num[i].clone().unwrap_or_default();
        let currency = ccy[i].clone().unwrap_or_default();
        put(fc::PricingCurrency, V::S(currency.clone()));
        put(fc::PricingCurrencyEffectiveCost, V::D(amount));
        put(fc::BillingCurrency, V::S(currency));
        put(fc::BillingAccountId, V::S(cust[i].clone().unwrap_or_default()));
        if let Some(n) = names.get(&number) {
            put(fc::BillingAccountName, V::S(n.clone()));
        }
        put(fc::BillingAccountType, V::S("Customer".into()));
        put(fc::BillingPeriodStart, V::T(period.start()));
        put(fc::BillingPeriodEnd, V::T(period.next().start()));
        // A correction's charge period is the period it corrects.
        let charged = corrected[i].as_deref().and_then(|c| c.parse::<Period>().ok()).filter(|_| class.is_some()).unwrap_or(period);
        put(fc::ChargePeriodStart, V::T(charged.start()));
        put(fc::ChargePeriodEnd, V::T(charged.next().start()));
        put(fc::ChargeCategory, V::S(category.into()));
        if let Some(c) = class {
            put(fc::ChargeClass, V::S(c.into()));
            put(fc::x_CorrectedBillingPeriod, V::S(charged.to_string()));
        }
        put(fc::ChargeDescription, V::S(ascii_text(&desc[i].clone().unwrap_or_else(|| service.clone()))));
        put(fc::ChargeFrequency, V::S(frequency.into()));
        put(fc::InvoiceId, V::S(number));
        put(fc::InvoiceIssuerName, V::S(issuer.clone()));
        put(fc::ProviderName, V::S(issuer.clone()));
        let (publisher, host) = if own { (issuer.clone(), issuer.clone()) } else { ("Microsoft".to_string(), "Microsoft".to_string()) };
        put(fc::PublisherName, V::S(publisher.clone()));
        put(fc::ServiceProviderName, V::S(publisher));
        put(fc::HostProviderName, V::S(host));
        put(fc::ServiceName, V::S(service));
        put(fc::ServiceCategory, V::S(svc_cat.into()));
        put(fc::ServiceSubcategory, V::S(svc_sub.into()));
        if let Some(sid) = sub[i].clone().filter(|s| !s.is_empty()) {
            put(fc::SubAccountName, V::S(sid.clone()));
            put(fc::SubAccountId, V::S(sid));
            put(fc::SubAccountType, V::S("Subscription".into()));
        }
        if let Some(t) = merge_tags(None, uid[i].as_deref(), upath[i].as_deref()) {
            put(fc::Tags, V::S(t));
        }
        if let Some(u) = uid[i].clone().filter(|u| !u.is_empty()) {
            put(fc::x_OrgUnitId, V::S(u));
        }
        if let Some(u) = upath[i].clone().filter(|u| !u.is_empty()) {
            put(fc::x_OrgUnitPath, V::S(u));
        }
        put(fc::x_InvoiceLineId, V::S(id[i].clone().unwrap_or_default()));
        put(fc::x_InvoiceLineType, V::S(line_type.clone()));
        put(fc::x_BilledCostRounding, V::D(amount - au[i].unwrap_or(amount)));
        if !family.is_empty() {
            put(fc::x_ProductFamily, V::S(family));
        }
        rows.push(row);
    }
    let mut columns = Vec::with_capacity(fc::COLUMNS.len() + 1);
    for (name, ty) in fc::COLUMNS {
        let c = match ty {
            Ty::Dec => cells::dec_column(name, &rows.iter().map(|r| match r.get(name) { Some(V::D(d)) => Some(*d), _ => None }).collect::<Vec<_>>()),
            Ty::Ts => {
                let v: Vec<Option<i64>> = rows.iter().map(|r| match r.get(name) { Some(V::T(d)) => Some(epoch_days(*d) * 86_400_000_000), _ => None }).collect();
                Column::new((*name).into(), v).cast(&ty.dtype()).map_err(PipelineError::polars(STAGE))?
            }
            _ => cells::str_column(name, &rows.iter().map(|r| match r.get(name) { Some(V::S(s)) => Some(s.clone()), _ => None }).collect::<Vec<_>>()),
        };
        columns.push(c);
    }
    let mut df = cells::frame(columns, &fc::schema(), fc::TABLE)?;
    let n = df.height();
    df.with_column(Column::new("period".into(), vec![period.to_string(); n])).map_err(PipelineError::polars(STAGE))?;
    Ok(df)
}

/// The FOCUS dataset of the period as a lazy plan: the parts' rows (streaming) then the lines' rows, in the
/// schema of `focus_cost_and_usage` plus `period` (the Hive partition, dropped when written).
pub fn focus_cost_and_usage(inputs: FocusInputs, ctx: &RunContext) -> Result<LazyFrame> {
    let parts = part_rows(&inputs, ctx)?;
    let lines = line_rows(&inputs, ctx)?;
    concat([parts, lines.lazy()], UnionArgs { maintain_order: true, ..Default::default() }).map_err(PipelineError::polars(STAGE))
}
