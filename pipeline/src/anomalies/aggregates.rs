//! The small frames the monitors read, as lazy group-bys over the month's big tables. Each is a plain group-by
//! on narrow keys (no window, no sort, no cache), so the job's streaming collect reads the month once per
//! aggregate in flat memory and returns per-customer-and-day, per-subscription-and-day, per-resource or
//! per-seat-line rows. Each output layout is declared as a column list here, checked by a schema test.

use polars::prelude::*;
use schemas::Ty;
use schemas::{int_charges_rated as r, stg_pc_daily_usage as u};

/// Spend of a customer on a charge date, in its invoice currency: `usage_spend` counts priced daily-usage
/// parts (consumption, dated by day: the budget's base), `spend` every priced part (the spend cap's base, as on
/// the invoice), `margin` their margin.
pub const DAILY_SPEND: &[(&str, Ty)] = &[
    ("customer_id", Ty::Str),
    ("invoice_currency", Ty::Str),
    ("charge_date", Ty::Date),
    ("usage_spend", Ty::Dec),
    ("spend", Ty::Dec),
    ("margin", Ty::Dec),
];

pub fn daily_spend(rated: LazyFrame) -> LazyFrame {
    let priced = col(r::status).eq(lit("priced"));
    rated.filter(priced).group_by([col(r::customer_id), col(r::invoice_currency), col(r::charge_date)]).agg([
        col(r::price).filter(col(r::source_kind).eq(lit("daily_usage"))).sum().alias("usage_spend"),
        col(r::price).sum().alias("spend"),
        col(r::margin).sum().alias("margin"),
    ])
}

/// Days with daily usage per source customer and Azure subscription (`EntitlementId`), with its name.
pub const SUBSCRIPTION_DAYS: &[(&str, Ty)] = &[
    ("customer_id", Ty::Str),
    ("subscription_id", Ty::Str),
    ("usage_date", Ty::Date),
    ("subscription_name", Ty::Str),
];

pub fn subscription_days(usage: LazyFrame) -> LazyFrame {
    usage
        .filter(col(u::usage_date).is_not_null())
        .group_by([col(u::customer_id), col(u::entitlement_id).alias("subscription_id"), col(u::usage_date)])
        .agg([col(u::entitlement_description).max().alias("subscription_name")])
}

/// Every resource of the daily usage (ResourceURI, compared case-insensitively as Azure does): its source
/// customer, subscription, first usage date in the period and resource group.
pub const RESOURCES: &[(&str, Ty)] = &[
    ("customer_id", Ty::Str),
    ("subscription_id", Ty::Str),
    ("resource_key", Ty::Str),
    ("resource_uri", Ty::Str),
    ("resource_group", Ty::Str),
    ("first_seen", Ty::Date),
];

///
/// Folded batch by batch into a map of the resources (memory grows with the resources, not the rows): Polars'
/// streaming group-by keeps each morsel's partial groups until the end, and here nearly every morsel holds nearly
/// every resource, so a group-by held about as many partial groups as rows (3.2 GB of heap for 253,000 resources
/// on a 10M-row month). [`resources`] is the same aggregate as a plain group-by, the specification this one is
/// tested against.
pub fn collect_resources(usage: LazyFrame) -> PolarsResult<DataFrame> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    type Key = (Option<String>, Option<String>, String);
    // (smallest spelling, smallest resource group, first usage date as days since 1970-01-01)
    type Folded = (String, Option<String>, i32);
    let state: Arc<Mutex<HashMap<Key, Folded>>> = Arc::default();
    let target = Arc::clone(&state);
    let sink = resource_rows(usage).sink_batches(
        PlanCallback::new(move |df: DataFrame| {
            let cust = df.column(u::customer_id)?.str()?.clone();
            let sub = df.column("subscription_id")?.str()?.clone();
            let uri = df.column(u::resource_uri)?.str()?.clone();
            let rg = df.column(u::resource_group)?.str()?.clone();
            let day = df.column(u::usage_date)?.date()?.physical().clone();
            let mut map = target.lock().map_err(|_| polars_err!(ComputeError: "resources: state poisoned"))?;
            for i in 0..df.height() {
                let (Some(uri), Some(day)) = (uri.get(i), day.get(i)) else { continue };
                let key = (cust.get(i).map(str::to_string), sub.get(i).map(str::to_string), uri.to_lowercase());
                let rg = rg.get(i);
                match map.get_mut(&key) {
                    None => {
                        map.insert(key, (uri.to_string(), rg.map(str::to_string), day));
                    }
                    Some((min_uri, min_rg, first)) => {
                        if uri < min_uri.as_str() {
                            *min_uri = uri.to_string();
                        }
                        if let Some(rg) = rg {
                            if min_rg.as_deref().is_none_or(|m| rg < m) {
                                *min_rg = Some(rg.to_string());
                            }
                        }
                        *first = (*first).min(day);
                    }
                }
            }
            Ok(false)
        }),
        false,
        None,
    )?;
    sink.collect_with_engine(Engine::Streaming)?;
    let map = std::mem::take(&mut *state.lock().map_err(|_| polars_err!(ComputeError: "resources: state poisoned"))?);
    let n = map.len();
    let (mut cust, mut sub, mut key, mut uri, mut rg, mut first) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for ((c, s, k), (min_uri, min_rg, day)) in map {
        cust.push(c);
        sub.push(s);
        key.push(k);
        uri.push(min_uri);
        rg.push(min_rg);
        first.push(day);
    }
    DataFrame::new(
        n,
        vec![
            Column::new("customer_id".into(), cust),
            Column::new("subscription_id".into(), sub),
            Column::new("resource_key".into(), key),
            Column::new("resource_uri".into(), uri),
            Column::new("resource_group".into(), rg),
            Column::new("first_seen".into(), first).cast(&DataType::Date)?,
        ],
    )
}

/// The usage rows that are resources: a non-empty ResourceURI and a usage date.
fn resource_rows(usage: LazyFrame) -> LazyFrame {
    usage
        .filter(col(u::resource_uri).is_not_null().and(col(u::resource_uri).neq(lit(""))).and(col(u::usage_date).is_not_null()))
        .select([
            col(u::customer_id),
            col(u::entitlement_id).alias("subscription_id"),
            col(u::resource_uri),
            col(u::resource_group),
            col(u::usage_date),
        ])
}

/// [`collect_resources`] as one group-by: the specification (small inputs; tests compare the two).
pub fn resources(usage: LazyFrame) -> LazyFrame {
    resource_rows(usage)
        .group_by([col(u::customer_id), col("subscription_id"), col(u::resource_uri).str().to_lowercase().alias("resource_key")])
        .agg([
            col(u::resource_uri).min().alias("resource_uri"),
            col(u::resource_group).min().alias("resource_group"),
            col(u::usage_date).min().alias("first_seen"),
        ])
}

/// Licence invoice-line parts per source customer (the tenant whose users hold the seats), paying customer,
/// Partner Center subscription, SKU, charge start date and sign: `q` seats, `seat_cycles` Σ q × f (seats times
/// the share of a billing cycle charged), `price` in the paying customer's currency.
pub const SEAT_LINES: &[(&str, Ty)] = &[
    ("source_customer_id", Ty::Str),
    ("customer_id", Ty::Str),
    ("invoice_currency", Ty::Str),
    ("pc_subscription_id", Ty::Str),
    ("product_id", Ty::Str),
    ("sku_id", Ty::Str),
    ("charge_start_date", Ty::Date),
    ("positive", Ty::Bool),
    ("sku_name", Ty::Str),
    ("q", Ty::Dec),
    ("seat_cycles", Ty::Dec),
    ("price", Ty::Dec),
];

pub fn seat_lines(rated: LazyFrame) -> LazyFrame {
    let licence = col(r::source_kind)
        .eq(lit("invoice_line"))
        .and(col(r::product_family).eq(lit("license")))
        .and(col(r::is_credit).not());
    rated
        .filter(licence)
        .group_by([
            col(r::source_customer_id),
            col(r::customer_id),
            col(r::invoice_currency),
            col(r::pc_subscription_id),
            col(r::product_id),
            col(r::sku_id),
            col(r::charge_start_date),
            col(r::f).gt(crate::decimal::dec("0")).alias("positive"),
        ])
        .agg([
            col(r::sku_name).max().alias("sku_name"),
            col(r::q).sum().alias("q"),
            (col(r::q) * col(r::f)).sum().alias("seat_cycles"),
            col(r::price).sum().alias("price"),
        ])
}

/// What each resource that has utilization data cost this month, per source and paying customer, in the paying
/// customer's currency. `utilization` is the staged `stg_utilization` (small): only its resources are kept.
pub const RESOURCE_COST: &[(&str, Ty)] = &[
    ("source_customer_id", Ty::Str),
    ("customer_id", Ty::Str),
    ("invoice_currency", Ty::Str),
    ("resource_key", Ty::Str),
    ("price", Ty::Dec),
];

pub fn resource_cost(rated: LazyFrame, utilization: LazyFrame) -> LazyFrame {
    let keys = utilization.select([col("resource_uri").str().to_lowercase().alias("resource_key")]).unique(None, UniqueKeepStrategy::Any);
    rated
        .filter(col(r::resource_uri).is_not_null().and(col(r::status).eq(lit("priced"))))
        .with_column(col(r::resource_uri).str().to_lowercase().alias("resource_key"))
        .join(keys, [col("resource_key")], [col("resource_key")], JoinArgs::new(JoinType::Semi))
        .group_by([col(r::source_customer_id), col(r::customer_id), col(r::invoice_currency), col("resource_key")])
        .agg([col(r::price).sum().alias("price")])
}

/// The declared schema of an aggregate.
pub fn schema(cols: &[(&str, Ty)]) -> Schema {
    schemas::build_schema(cols)
}
