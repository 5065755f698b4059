//! `int_charges`: every staged daily-usage row and invoice line in one charge model (DESIGN §5 "Charges").
//!
//! The two Partner Center sources are mapped onto one set of columns (`schemas::int_charges`), with the amounts
//! DESIGN defines in billing currency: quantity `q`, the signed line factor `f`, `cost`, `list` and `pec`.
//! Consumption appears in both sources (in detail in daily usage, summarised per meter in the invoice file's
//! metered lines: `azure_usage` lines and any other line with a `MeterDescription`, such as pay-as-you-go
//! marketplace images); it is charged from one of them and the other becomes a control total, compared per
//! customer and Partner Center subscription for the manifest.
//!
//! Everything here is lazy: the stage only builds a plan. Amounts are `Decimal(38, 18)` throughout; every
//! product and quotient is rounded half-even to 18 places by Polars, and a division never sees a zero
//! denominator (zeros are turned into nulls first, because `when/then` evaluates both branches).

use polars::prelude::*;
use schemas::{int_charges as ic, stg_pc_daily_usage as du, stg_pc_invoice_lines as il};

use crate::context::{AzureUsageSource, ProrationPolicy, RunContext};
use crate::decimal::{dec, nonzero, null_dec};
use crate::error::{PipelineError, Result};

const STAGE: &str = "int_charges";

/// `source_kind` of charges built from daily rated usage rows.
pub const SOURCE_DAILY_USAGE: &str = "daily_usage";
/// `source_kind` of charges built from invoice reconciliation lines.
pub const SOURCE_INVOICE_LINE: &str = "invoice_line";
/// `line_kind` of legacy licence-based invoice lines (`LicenseBasedLineItem`).
pub const LINE_KIND_LEGACY: &str = "legacy_license";
/// The product family of Azure consumption.
pub const AZURE_USAGE: &str = "azure_usage";

/// What the job knows about the snapshot that the stage cannot see without collecting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChargesOptions {
    /// Whether the period's snapshot has daily rated usage rows (decides `azure_usage_source = auto`).
    pub has_daily_usage: bool,
}

/// The outputs of the charges stage.
pub struct Charges {
    /// `int_charges`: everything that is charged.
    pub charges: LazyFrame,
    /// Azure consumption of the source not charged from, kept only as a control total (`int_charges` schema).
    pub control_lines: LazyFrame,
    /// Per customer and Partner Center subscription: Azure consumption charged, its control total and the
    /// difference (see [`control_comparison_schema`]); empty when there is no second source to compare with.
    pub control_comparison: LazyFrame,
    /// Which source Azure consumption was charged from (never `Auto`).
    pub source: AzureUsageSource,
}

/// Columns of [`Charges::control_comparison`]. `subscription_id` is the Partner Center `SubscriptionId` of the
/// Azure plan: the only subscription key both sources carry (invoice lines have no `EntitlementId`).
pub fn control_comparison_schema() -> Schema {
    schemas::build_schema(&[
        ("customer_id", schemas::Ty::Str),
        ("subscription_id", schemas::Ty::Str),
        ("charged_cost", schemas::Ty::Dec),
        ("control_cost", schemas::Ty::Dec),
        ("difference", schemas::Ty::Dec),
    ])
}

/// Builds `int_charges` from staged daily usage (`stg_pc_daily_usage`) and invoice lines (`stg_pc_invoice_lines`).
pub fn int_charges(
    usage: LazyFrame,
    invoice: LazyFrame,
    opts: &ChargesOptions,
    ctx: &RunContext,
) -> Result<Charges> {
    let source = match ctx.policies.azure_usage_source {
        AzureUsageSource::Auto if opts.has_daily_usage => AzureUsageSource::DailyUsage,
        AzureUsageSource::Auto => AzureUsageSource::Invoice,
        forced => forced,
    };
    let usage_charges = usage_to_charges(usage);
    let invoice_charges = invoice_to_charges(invoice, ctx.policies.proration);

    // Non-credit metered invoice lines: the invoice file's summary of the consumption daily usage details.
    let invoice_metered = metered().and(col(ic::is_credit).not()).fill_null(lit(false));
    let (charges, control_lines) = match source {
        AzureUsageSource::Invoice => (invoice_charges, usage_charges),
        _ => {
            let kept = invoice_charges.clone().filter(invoice_metered.clone().not());
            let control = invoice_charges.filter(invoice_metered);
            let charges = concat(
                [usage_charges, kept],
                UnionArgs {
                    maintain_order: true,
                    ..Default::default()
                },
            )
            .map_err(PipelineError::polars(STAGE))?;
            (charges, control)
        }
    };

    // A comparison needs a second source: under `invoice` without daily usage there is none.
    let has_control = source == AzureUsageSource::DailyUsage || opts.has_daily_usage;
    let control_comparison = if has_control {
        compare_azure(charges.clone(), control_lines.clone())
    } else {
        DataFrame::empty_with_schema(&control_comparison_schema()).lazy()
    };
    Ok(Charges {
        charges,
        control_lines,
        control_comparison,
        source,
    })
}

/// A metered invoice line (DESIGN §5 "Charges"): an `azure_usage` line, or any other line with a
/// `MeterDescription` (kept as `meter_name` on invoice charges), such as third-party pay-as-you-go marketplace
/// images billed per compute hour, which daily usage details too. Marketplace plans without a meter are not.
fn metered() -> Expr {
    col(ic::product_family).eq(lit(AZURE_USAGE)).fill_null(lit(false)).or(col(ic::meter_name)
        .str()
        .strip_chars(lit(NULL))
        .str()
        .len_bytes()
        .gt(lit(0u32))
        .fill_null(lit(false)))
}

/// Σ cost of consumption (non-credit daily-usage rows and metered invoice lines) per customer and Partner
/// Center subscription, charged versus control, full outer join so that a subscription seen in only one
/// source is reported too.
pub fn compare_azure(charges: LazyFrame, control: LazyFrame) -> LazyFrame {
    let consumption = col(ic::source_kind)
        .eq(lit(SOURCE_DAILY_USAGE))
        .fill_null(lit(false))
        .or(metered())
        .and(col(ic::is_credit).not().fill_null(lit(true)));
    let total = |lf: LazyFrame, name: &str| {
        lf.filter(consumption.clone())
            .group_by_stable([
                col(ic::customer_id),
                col(ic::pc_subscription_id).alias("subscription_id"),
            ])
            .agg([col(ic::cost).sum().alias(name)])
    };
    let charged = total(charges, "charged_cost");
    let control = total(control, "control_cost");
    charged
        .join_builder()
        .with(control)
        .left_on([col(ic::customer_id), col("subscription_id")])
        .right_on([col(ic::customer_id), col("subscription_id")])
        .how(JoinType::Full)
        .join_nulls(true)
        .coalesce(JoinCoalesce::CoalesceColumns)
        .finish()
        .select([
            col(ic::customer_id),
            col("subscription_id"),
            col("charged_cost").fill_null(dec("0")),
            col("control_cost").fill_null(dec("0")),
        ])
        .with_column((col("charged_cost") - col("control_cost")).alias("difference"))
        .sort(
            ["customer_id", "subscription_id"],
            SortMultipleOptions::default()
                .with_nulls_last(true)
                .with_maintain_order(true),
        )
}

/// `when(x < 0) -1 else 1`: the sign DESIGN uses for line factors, where 0 and null count as positive.
fn sign_or_one(x: Expr) -> Expr {
    when(x.lt(dec("0"))).then(dec("-1")).otherwise(dec("1"))
}

/// The PCToBC rate of a line; a missing rate is 1 where pricing and billing currency agree (or pricing is blank).
fn pc_to_bc(rate: &str, pricing_ccy: &str, billing_ccy: &str) -> Expr {
    let same = col(pricing_ccy)
        .is_null()
        .or(col(pricing_ccy).eq(col(billing_ccy)));
    coalesce(&[col(rate), when(same).then(dec("1")).otherwise(null_dec())])
}

fn is_customer_credit(charge_type: &str) -> Expr {
    col(charge_type)
        .str()
        .to_lowercase()
        .eq(lit("customercredit"))
        .fill_null(lit(false))
}

/// Selects `int_charges` columns in table order from `exprs` (name → expression); columns not given are typed
/// nulls. Every column is cast to its declared type so that the output schema is exactly the table's.
fn to_int_charges(lf: LazyFrame, exprs: Vec<(&'static str, Expr)>) -> LazyFrame {
    let schema = ic::schema();
    let select: Vec<Expr> = schema
        .iter()
        .map(|(name, dtype)| {
            let e = exprs
                .iter()
                .find(|(n, _)| *n == name.as_str())
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| lit(NULL));
            e.cast(dtype.clone()).alias(name.clone())
        })
        .collect();
    lf.select(select)
}

/// Daily rated usage rows as charges: `q` = Quantity, `f` = ±1 by the sign of EffectiveUnitPrice,
/// `cost` = BillingPreTaxTotal, PEC only where a partner-earned-credit rate above 0 applies.
fn usage_to_charges(usage: LazyFrame) -> LazyFrame {
    let q = col(du::quantity);
    let up = col(du::unit_price);
    let eup = col(du::effective_unit_price);
    let rate = pc_to_bc(
        du::pc_to_bc_exchange_rate,
        du::pricing_currency,
        du::billing_currency,
    );
    let f = sign_or_one(eup.clone());
    let list = up.clone() * q.clone() * rate.clone() * f.clone();
    let pec = when(
        col(du::partner_earned_credit_rate)
            .gt(dec("0"))
            .fill_null(lit(false)),
    )
    .then((up - eup) * q.clone() * rate.clone())
    .otherwise(dec("0"));
    let same = |c: &'static str| (c, col(c));
    let exprs = vec![
        same(ic::line_id),
        same(ic::period),
        (ic::source_kind, lit(SOURCE_DAILY_USAGE)),
        same(ic::source_file),
        same(ic::line_number),
        same(ic::customer_id),
        same(ic::customer_name),
        (ic::subscription_id, col(du::entitlement_id)),
        (ic::pc_subscription_id, col(du::subscription_id)),
        same(ic::resource_group),
        same(ic::resource_uri),
        same(ic::tags),
        same(ic::product_family),
        same(ic::product_id),
        same(ic::sku_id),
        same(ic::product_name),
        same(ic::sku_name),
        same(ic::meter_category),
        same(ic::meter_subcategory),
        same(ic::meter_name),
        same(ic::unit),
        same(ic::charge_type),
        (ic::is_credit, is_customer_credit(du::charge_type)),
        (ic::charge_date, col(du::usage_date)),
        same(ic::charge_start_date),
        same(ic::charge_end_date),
        same(ic::billing_currency),
        same(ic::pricing_currency),
        (ic::pc_to_bc_rate, rate),
        same(ic::unit_price),
        same(ic::effective_unit_price),
        (ic::q, q),
        (ic::f, f),
        (ic::cost, col(du::billing_pre_tax_total)),
        (ic::list, list),
        (ic::pec, pec),
        same(ic::publisher_name),
    ];
    to_int_charges(usage, exprs)
}

/// The promotion Microsoft names in `PriceAdjustmentDescription` (`80.0% Promotional Discount`), as a fraction
/// (0.8); null when there is none. The text is a JSON array of strings; the first promotion named counts.
fn promotion(description: &str) -> Expr {
    col(description)
        .str()
        .extract(lit(r"(?i)(\d+(?:\.\d+)?)\s*%\s*Promotional\s+Discount"), 1)
        .cast(schemas::money())
        / dec("100")
}

/// Invoice reconciliation lines as charges (DESIGN §5): `q` = BillableQuantity, `f` by product family and
/// proration policy with any promotion divided out, `cost` = Subtotal; legacy licence-based lines by their own
/// rules (`q` = quantity, `f` = amount / (unitPrice × quantity), `cost` = subtotal, `list` = amount, `pec` = 0,
/// PCToBC 1).
fn invoice_to_charges(invoice: LazyFrame, proration: ProrationPolicy) -> LazyFrame {
    let legacy = col(il::line_kind)
        .eq(lit(LINE_KIND_LEGACY))
        .fill_null(lit(false));
    let azure = col(il::product_family)
        .eq(lit(AZURE_USAGE))
        .fill_null(lit(false));
    let up = col(il::unit_price);
    let eup = col(il::effective_unit_price);
    let amount = col(il::amount);

    // BillableQuantity is the charged quantity; Quantity only where it is missing (never seen, but a v1 page
    // without it should not lose the line's quantity).
    let q_nce = coalesce(&[col(il::billable_quantity), col(il::quantity)]);
    let q = when(legacy.clone())
        .then(col(il::quantity))
        .otherwise(q_nce.clone());

    // NCE factor. Microsoft's EffectiveUnitPrice = UnitPrice × proration × (1 − promotion), so under
    // `mirror_microsoft` the promotion is divided out of EUP / UnitPrice; a ±1 factor (Azure usage lines, or the
    // `none` policy) never contained it. A 100 % promotion leaves no proration to recover: the sign is used.
    let s_eup = sign_or_one(eup.clone());
    let promo = promotion(il::price_adjustment_description);
    let divisor = when(promo.clone().is_null())
        .then(dec("1"))
        .when(promo.clone().lt(dec("1")))
        .then(dec("1") - promo)
        .otherwise(null_dec());
    let ratio = eup.clone() / nonzero(up.clone()) / nonzero(divisor);
    let f_nce = match proration {
        ProrationPolicy::MirrorMicrosoft => when(azure.clone())
            .then(s_eup.clone())
            .otherwise(coalesce(&[ratio, s_eup.clone()])),
        ProrationPolicy::None => s_eup.clone(),
    };

    // Legacy factor: amount / (unitPrice × quantity), or the sign of amount (1 when 0) where that is 0.
    let s_amount = sign_or_one(amount.clone());
    let f_legacy = match proration {
        ProrationPolicy::MirrorMicrosoft => coalesce(&[
            amount.clone() / nonzero(up.clone() * col(il::quantity)),
            s_amount.clone(),
        ]),
        ProrationPolicy::None => s_amount,
    };
    let f = when(legacy.clone()).then(f_legacy).otherwise(f_nce);

    let rate = when(legacy.clone()).then(dec("1")).otherwise(pc_to_bc(
        il::pc_to_bc_exchange_rate,
        il::pricing_currency,
        il::currency,
    ));
    let list = when(legacy.clone())
        .then(amount)
        .otherwise(up.clone() * q.clone() * rate.clone() * f.clone());
    let pec_applies = azure
        .and(eup.clone().gt_eq(dec("0")))
        .and(eup.clone().lt(up.clone()))
        .fill_null(lit(false));
    let pec = when(legacy.clone().not().and(pec_applies))
        .then((up - eup) * q.clone() * rate.clone())
        .otherwise(dec("0"));
    let pricing_ccy = when(legacy)
        .then(coalesce(&[col(il::pricing_currency), col(il::currency)]))
        .otherwise(col(il::pricing_currency));
    let is_credit = is_customer_credit(il::charge_type).or(col(il::credit_reason_code)
        .str()
        .strip_chars(lit(NULL))
        .str()
        .len_bytes()
        .gt(lit(0))
        .fill_null(lit(false)));

    let same = |c: &'static str| (c, col(c));
    let exprs = vec![
        same(ic::line_id),
        same(ic::period),
        (ic::source_kind, lit(SOURCE_INVOICE_LINE)),
        same(ic::source_file),
        same(ic::line_number),
        same(ic::customer_id),
        same(ic::customer_name),
        (ic::subscription_id, col(il::subscription_id)),
        (ic::pc_subscription_id, col(il::subscription_id)),
        same(ic::product_family),
        same(ic::product_id),
        same(ic::sku_id),
        same(ic::product_name),
        same(ic::sku_name),
        // Invoice lines have no meter fields; the meter description is kept as the meter name for explanation.
        (ic::meter_name, col(il::meter_description)),
        (ic::unit, col(il::unit_type)),
        same(ic::charge_type),
        (ic::is_credit, is_credit),
        (ic::charge_date, col(il::charge_start_date)),
        same(ic::charge_start_date),
        same(ic::charge_end_date),
        (ic::billing_currency, col(il::currency)),
        (ic::pricing_currency, pricing_ccy),
        (ic::pc_to_bc_rate, rate),
        same(ic::unit_price),
        same(ic::effective_unit_price),
        (ic::q, q),
        (ic::f, f),
        (ic::cost, col(il::subtotal)),
        (ic::list, list),
        (ic::pec, pec),
        same(ic::publisher_name),
        same(ic::reference_id),
    ];
    to_int_charges(invoice, exprs)
}

/// Frames typed like the staged tables, for tests of this stage and of `allocate`.
#[cfg(test)]
pub(crate) mod test_frames {
    use polars::prelude::*;
    use rust_decimal::Decimal;

    /// A lazy frame with exactly `schema`'s columns: the given columns (text, "" = null) cast to their types,
    /// every other column null.
    pub fn staged(schema: &Schema, cols: &[(&str, &[&str])]) -> LazyFrame {
        let height = cols.first().map(|(_, v)| v.len()).unwrap_or(0);
        let text: Vec<Column> = cols
            .iter()
            .map(|(n, v)| {
                assert_eq!(v.len(), height, "column {n} has a different length");
                assert!(schema.contains(n), "no column {n} in the schema");
                Column::new(
                    (*n).into(),
                    v.iter()
                        .map(|s| if s.is_empty() { None } else { Some(*s) })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let mut df = DataFrame::new_infer_height(text).unwrap();
        if df.width() == 0 {
            df = DataFrame::empty();
        }
        let select: Vec<Expr> = schema
            .iter()
            .map(|(name, dt)| {
                let given = cols.iter().any(|(n, _)| *n == name.as_str());
                let e = match (given, dt) {
                    (false, _) => lit(NULL).cast(dt.clone()),
                    (true, DataType::Date) => {
                        col(name.clone()).str().to_date(StrptimeOptions::default())
                    }
                    (true, DataType::Boolean) => col(name.clone()).eq(lit("true")),
                    (true, _) => col(name.clone()).strict_cast(dt.clone()),
                };
                e.alias(name.clone())
            })
            .collect();
        if height == 0 {
            return DataFrame::empty_with_schema(schema).lazy();
        }
        df.lazy().select(select)
    }

    /// The decimal in column `c` of the row whose `key` column equals `id`.
    pub fn value(df: &DataFrame, key: &str, id: &str, c: &str) -> Option<Decimal> {
        let keys = df.column(key).unwrap().str().unwrap();
        let i = keys
            .iter()
            .position(|k| k == Some(id))
            .unwrap_or_else(|| panic!("no row {key} = {id}"));
        crate::decimal::any_to_decimal(&df.column(c).unwrap().get(i).unwrap())
    }

    pub fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_frames::{d, staged, value};
    use super::*;
    use crate::Period;
    use schemas::{stg_pc_daily_usage, stg_pc_invoice_lines};

    fn ctx() -> RunContext {
        RunContext::for_period(Period::new(2021, 6).unwrap())
    }

    fn usage() -> LazyFrame {
        staged(
            &stg_pc_daily_usage::schema(),
            &[
                ("line_id", &["u1", "u2", "u3"]),
                ("customer_id", &["c1", "c1", "c2"]),
                ("subscription_id", &["pc-s1", "pc-s1", "pc-s2"]),
                ("entitlement_id", &["az-1", "az-1", "az-2"]),
                ("usage_date", &["2021-06-18", "2021-06-19", "2021-06-20"]),
                ("charge_type", &["New", "New", "New"]),
                (
                    "product_family",
                    &["azure_usage", "azure_usage", "marketplace"],
                ),
                ("unit_price", &["2.4", "2", "1"]),
                ("effective_unit_price", &["2.03999295377824", "-1.7", "1"]),
                ("quantity", &["0.033336", "3", "4"]),
                ("pc_to_bc_exchange_rate", &["0.818498056067117", "0.5", ""]),
                ("billing_currency", &["EUR", "EUR", "USD"]),
                ("pricing_currency", &["USD", "USD", "USD"]),
                ("billing_pre_tax_total", &["0.0556619946", "-2.55", "4"]),
                ("partner_earned_credit_rate", &["0.15", "", ""]),
            ],
        )
    }

    fn invoice() -> LazyFrame {
        staged(
            &stg_pc_invoice_lines::schema(),
            &[
                (
                    "line_id",
                    &[
                        "lic", "ref", "promo", "az", "credit", "reason", "legacy", "legacy0", "azc",
                    ],
                ),
                (
                    "line_kind",
                    &[
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "legacy_license",
                        "legacy_license",
                        "",
                    ],
                ),
                (
                    "customer_id",
                    &["c1", "c1", "c1", "c1", "c1", "c2", "c2", "c2", "c1"],
                ),
                (
                    "subscription_id",
                    &[
                        "pc-l", "pc-l", "pc-l", "pc-s1", "pc-s1", "pc-s2", "leg", "leg", "pc-s1",
                    ],
                ),
                (
                    "charge_start_date",
                    &[
                        "2021-06-03",
                        "2021-06-03",
                        "2021-06-03",
                        "2021-06-01",
                        "2021-03-01",
                        "2021-06-01",
                        "2021-05-15",
                        "2021-05-15",
                        "2021-04-01",
                    ],
                ),
                (
                    "charge_type",
                    &[
                        "new",
                        "cancelImmediate",
                        "new",
                        "new",
                        "customerCredit",
                        "new",
                        "Cycle fee",
                        "Cycle fee",
                        "CUSTOMERCREDIT",
                    ],
                ),
                (
                    "credit_reason_code",
                    &["", "", "", "", "", "Azure Credit Offer", "", "", ""],
                ),
                (
                    "product_family",
                    &[
                        "license",
                        "license",
                        "license",
                        "azure_usage",
                        "azure_usage",
                        "license",
                        "license",
                        "license",
                        "azure_usage",
                    ],
                ),
                (
                    "price_adjustment_description",
                    &[
                        "",
                        "",
                        "[\"15.0% Partner earned credit for services managed\",\"50.0% Promotional Discount\"]",
                        "[\"15.0% Partner earned credit for services managed\",\"80.0% Promotional Discount\"]",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ],
                ),
                (
                    "unit_price",
                    &["10.08", "10.08", "30", "0.5", "0", "10", "100", "0", "0"],
                ),
                (
                    "effective_unit_price",
                    &["9.408", "-9.408", "14", "0.085", "-5", "10", "", "", "-1"],
                ),
                ("quantity", &["1", "1", "1", "1", "1", "1", "10", "3", "1"]),
                (
                    "billable_quantity",
                    &["5", "5", "2", "5.5766073028", "0", "1", "", "", "2"],
                ),
                (
                    "pc_to_bc_exchange_rate",
                    &[
                        "1", "1", "1.2115", "1.2115", "1.26155", "1", "", "", "1.2115",
                    ],
                ),
                (
                    "currency",
                    &[
                        "CAD", "CAD", "CAD", "CAD", "CAD", "CAD", "INR", "INR", "CAD",
                    ],
                ),
                (
                    "pricing_currency",
                    &["CAD", "CAD", "USD", "USD", "USD", "CAD", "", "", "USD"],
                ),
                (
                    "subtotal",
                    &[
                        "47.04", "-47.04", "33.92", "0.56", "-6.3", "10", "443.34", "0", "-2.42",
                    ],
                ),
                ("amount", &["", "", "", "", "", "", "466.67", "0", ""]),
            ],
        )
    }

    fn run(
        has_usage: bool,
        policy: AzureUsageSource,
        proration: ProrationPolicy,
    ) -> (Charges, DataFrame, DataFrame, DataFrame) {
        let mut c = ctx();
        c.policies.azure_usage_source = policy;
        c.policies.proration = proration;
        let u = if has_usage {
            usage()
        } else {
            staged(&stg_pc_daily_usage::schema(), &[])
        };
        let out = int_charges(
            u,
            invoice(),
            &ChargesOptions {
                has_daily_usage: has_usage,
            },
            &c,
        )
        .unwrap();
        let ch = out.charges.clone().collect().unwrap();
        let ctl = out.control_lines.clone().collect().unwrap();
        let cmp = out.control_comparison.clone().collect().unwrap();
        (out, ch, ctl, cmp)
    }

    fn v(df: &DataFrame, id: &str, c: &str) -> Option<rust_decimal::Decimal> {
        value(df, "line_id", id, c)
    }

    #[test]
    fn usage_rows_q_f_list_pec() {
        let (_, ch, _, _) = run(
            true,
            AzureUsageSource::Auto,
            ProrationPolicy::MirrorMicrosoft,
        );
        // Real row of the 2021 fixture: list = 2.4 × 0.033336 × 0.818498056067117, each product at 18 places.
        assert_eq!(v(&ch, "u1", "q"), Some(d("0.033336")));
        assert_eq!(v(&ch, "u1", "f"), Some(d("1")));
        assert_eq!(v(&ch, "u1", "cost"), Some(d("0.0556619946")));
        assert_eq!(v(&ch, "u1", "list"), Some(d("0.065485082872928190")));
        // (2.4 − 2.03999295377824) × 0.033336 × 0.818498056067117
        assert_eq!(v(&ch, "u1", "pec"), Some(d("0.009822954690279184")));
        // A refund row: negative EUP → f = −1; no PEC rate → pec 0.
        assert_eq!(v(&ch, "u2", "f"), Some(d("-1")));
        assert_eq!(v(&ch, "u2", "list"), Some(d("-3")));
        assert_eq!(v(&ch, "u2", "pec"), Some(d("0")));
        // Missing rate where pricing = billing currency counts as 1.
        assert_eq!(v(&ch, "u3", "pc_to_bc_rate"), Some(d("1")));
        assert_eq!(v(&ch, "u3", "list"), Some(d("4")));
        let u1 = ch
            .column("subscription_id")
            .unwrap()
            .str()
            .unwrap()
            .get(0)
            .unwrap()
            .to_string();
        assert_eq!(u1, "az-1", "usage rows are allocated by EntitlementId");
        let dates = ch
            .column("charge_date")
            .unwrap()
            .date()
            .unwrap()
            .as_date_iter()
            .collect::<Vec<_>>();
        assert_eq!(dates[0], chrono::NaiveDate::from_ymd_opt(2021, 6, 18));
    }

    #[test]
    fn invoice_lines_f_for_each_kind() {
        let (_, ch, ctl, _) = run(
            true,
            AzureUsageSource::Auto,
            ProrationPolicy::MirrorMicrosoft,
        );
        // Prorated seat line: f = 9.408 / 10.08; list = 10.08 × 5 × 1 × f.
        assert_eq!(v(&ch, "lic", "q"), Some(d("5")));
        assert_eq!(v(&ch, "lic", "f"), Some(d("0.933333333333333333")));
        assert_eq!(v(&ch, "lic", "list"), Some(d("47.039999999999999983")));
        assert_eq!(v(&ch, "lic", "pec"), Some(d("0")));
        // Its refund: the sign comes from EffectiveUnitPrice.
        assert_eq!(v(&ch, "ref", "f"), Some(d("-0.933333333333333333")));
        assert_eq!(v(&ch, "ref", "list"), Some(d("-47.039999999999999983")));
        assert_eq!(v(&ch, "ref", "cost"), Some(d("-47.04")));
        // 50 % promotion divided out: (14 / 30) / 0.5.
        assert_eq!(v(&ch, "promo", "f"), Some(d("0.933333333333333334")));
        assert_eq!(v(&ch, "promo", "list"), Some(d("67.844000000000000048")));
        // Credit on an Azure line (kept as a charge, not a control line): UnitPrice 0 → the sign of EUP.
        assert_eq!(v(&ch, "credit", "f"), Some(d("-1")));
        assert_eq!(v(&ch, "credit", "pec"), Some(d("0")));
        assert_eq!(v(&ch, "credit", "cost"), Some(d("-6.3")));
        // Legacy licence line: f = 466.67 / (100 × 10), cost = subtotal, list = amount, pec 0, rate 1.
        assert_eq!(v(&ch, "legacy", "q"), Some(d("10")));
        assert_eq!(v(&ch, "legacy", "f"), Some(d("0.46667")));
        assert_eq!(v(&ch, "legacy", "cost"), Some(d("443.34")));
        assert_eq!(v(&ch, "legacy", "list"), Some(d("466.67")));
        assert_eq!(v(&ch, "legacy", "pec"), Some(d("0")));
        assert_eq!(v(&ch, "legacy", "pc_to_bc_rate"), Some(d("1")));
        assert_eq!(
            v(&ch, "legacy0", "f"),
            Some(d("1")),
            "unit price 0 and amount 0: the sign, 1"
        );
        // The non-credit Azure invoice line is a control line; its amounts as DESIGN defines them.
        assert_eq!(
            v(&ctl, "az", "f"),
            Some(d("1")),
            "a promotion is not divided out of a ±1 factor"
        );
        assert_eq!(v(&ctl, "az", "list"), Some(d("3.378029873671100000")));
        assert_eq!(v(&ctl, "az", "pec"), Some(d("2.803764795147013000")));
        assert_eq!(v(&ctl, "az", "cost"), Some(d("0.56")));

        let credit: Vec<(String, bool)> = ch
            .column("line_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .zip(ch.column("is_credit").unwrap().bool().unwrap().iter())
            .map(|(l, c)| (l.unwrap().to_string(), c.unwrap()))
            .filter(|(_, c)| *c)
            .collect();
        let ids: Vec<&str> = credit.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(ids, vec!["credit", "reason", "azc"]);
    }

    #[test]
    fn proration_none_bills_whole_units() {
        let (_, ch, _, _) = run(true, AzureUsageSource::Auto, ProrationPolicy::None);
        assert_eq!(v(&ch, "lic", "f"), Some(d("1")));
        assert_eq!(v(&ch, "ref", "f"), Some(d("-1")));
        assert_eq!(v(&ch, "promo", "f"), Some(d("1")));
        assert_eq!(v(&ch, "legacy", "f"), Some(d("1")));
        assert_eq!(v(&ch, "ref", "list"), Some(d("-50.4")));
    }

    #[test]
    fn azure_consumption_is_charged_once() {
        let ids = |df: &DataFrame| -> Vec<String> {
            let mut v: Vec<String> = df
                .column("line_id")
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect();
            v.sort();
            v
        };
        // Daily usage present: the invoice's non-credit Azure line is only a control total.
        let (out, ch, ctl, cmp) = run(
            true,
            AzureUsageSource::Auto,
            ProrationPolicy::MirrorMicrosoft,
        );
        assert_eq!(out.source, AzureUsageSource::DailyUsage);
        assert_eq!(ids(&ctl), vec!["az"]);
        assert_eq!(
            ids(&ch),
            vec![
                "azc", "credit", "legacy", "legacy0", "lic", "promo", "reason", "ref", "u1", "u2",
                "u3"
            ]
        );
        // Compared per customer and PC subscription: u1 + u2 (azure_usage) against the invoice line az; u3 (a
        // marketplace meter in daily usage is consumption too) against nothing on the invoice (`reason` is a
        // credit).
        assert_eq!(cmp.height(), 2, "{cmp}");
        assert_eq!(value(&cmp, "subscription_id", "pc-s2", "charged_cost"), Some(d("4")));
        assert_eq!(value(&cmp, "subscription_id", "pc-s2", "control_cost"), Some(d("0")));
        assert_eq!(
            value(&cmp, "subscription_id", "pc-s1", "charged_cost"),
            Some(d("-2.4943380054"))
        );
        assert_eq!(
            value(&cmp, "subscription_id", "pc-s1", "control_cost"),
            Some(d("0.56"))
        );
        assert_eq!(
            value(&cmp, "subscription_id", "pc-s1", "difference"),
            Some(d("-3.0543380054"))
        );

        // No daily usage: the invoice lines are charged, nothing to compare.
        let (out, ch, ctl, cmp) = run(
            false,
            AzureUsageSource::Auto,
            ProrationPolicy::MirrorMicrosoft,
        );
        assert_eq!(out.source, AzureUsageSource::Invoice);
        assert_eq!(ch.height(), 9);
        assert_eq!(ctl.height(), 0);
        assert_eq!(cmp.height(), 0);

        // Forced to the invoice while daily usage exists: the usage rows become the control total.
        let (out, ch, ctl, cmp) = run(
            true,
            AzureUsageSource::Invoice,
            ProrationPolicy::MirrorMicrosoft,
        );
        assert_eq!(out.source, AzureUsageSource::Invoice);
        assert_eq!(ch.height(), 9);
        assert_eq!(ids(&ctl), vec!["u1", "u2", "u3"]);
        assert_eq!(
            value(&cmp, "subscription_id", "pc-s1", "charged_cost"),
            Some(d("0.56"))
        );
        assert_eq!(
            value(&cmp, "subscription_id", "pc-s1", "control_cost"),
            Some(d("-2.4943380054"))
        );
    }

    /// Invoice lines of customer c1, subscription pc-s1: Azure plan usage `az`, a pay-as-you-go marketplace VM
    /// image billed per hour `fw` (a MeterDescription), a marketplace SaaS plan `saas` (no meter), and a credit
    /// on a metered marketplace meter `fwc`.
    fn marketplace_invoice() -> LazyFrame {
        staged(
            &stg_pc_invoice_lines::schema(),
            &[
                ("line_id", &["az", "fw", "saas", "fwc"]),
                ("customer_id", &["c1", "c1", "c1", "c1"]),
                ("subscription_id", &["pc-s1", "pc-s1", "pc-s1", "pc-s1"]),
                ("charge_start_date", &["2021-06-01", "2021-06-01", "2021-06-01", "2021-06-01"]),
                ("charge_type", &["new", "new", "new", "customerCredit"]),
                ("product_family", &["azure_usage", "marketplace", "marketplace", "marketplace"]),
                ("publisher_name", &["Microsoft", "Fortinet", "SendGrid", "Fortinet"]),
                (
                    "meter_description",
                    &[
                        "Virtual Machines Dv3 - D2 v3",
                        "Fortinet FortiGate Next-Generation Firewall (VM) - 1 Compute Hour",
                        "",
                        "Fortinet FortiGate Next-Generation Firewall (VM) - 1 Compute Hour",
                    ],
                ),
                ("unit_price", &["0.5", "0.39", "14.95", "0.39"]),
                ("effective_unit_price", &["0.5", "0.39", "14.95", "-0.39"]),
                ("quantity", &["1", "1", "1", "1"]),
                ("billable_quantity", &["10", "719.933408", "1", "10"]),
                ("pc_to_bc_exchange_rate", &["1", "1", "1", "1"]),
                ("currency", &["USD", "USD", "USD", "USD"]),
                ("pricing_currency", &["USD", "USD", "USD", "USD"]),
                ("subtotal", &["5", "280.77", "14.95", "-3.9"]),
            ],
        )
    }

    #[test]
    fn metered_marketplace_lines_are_consumption() {
        let run = |source: AzureUsageSource, with_usage: bool| {
            let mut c = ctx();
            c.policies.azure_usage_source = source;
            let u = if with_usage { usage() } else { staged(&stg_pc_daily_usage::schema(), &[]) };
            let out = int_charges(u, marketplace_invoice(), &ChargesOptions { has_daily_usage: with_usage }, &c).unwrap();
            let ids = |lf: LazyFrame| -> Vec<String> {
                let df = lf.filter(col("source_kind").eq(lit("invoice_line"))).collect().unwrap();
                let mut v: Vec<String> = df.column("line_id").unwrap().str().unwrap().iter().flatten().map(str::to_string).collect();
                v.sort();
                v
            };
            (ids(out.charges), ids(out.control_lines), out.control_comparison.collect().unwrap())
        };
        // Daily usage present: the Azure line and the metered marketplace line are control totals (DESIGN §5);
        // the SaaS plan and the credit stay charges.
        let (charged, control, cmp) = run(AzureUsageSource::Auto, true);
        assert_eq!(charged, vec!["fwc", "saas"]);
        assert_eq!(control, vec!["az", "fw"]);
        // pc-s1 of c1: daily usage u1 + u2 = 0.0556619946 − 2.55 = −2.4943380054 against az + fw = 5 + 280.77.
        assert_eq!(value(&cmp, "subscription_id", "pc-s1", "control_cost"), Some(d("285.77")));
        assert_eq!(value(&cmp, "subscription_id", "pc-s1", "charged_cost"), Some(d("-2.4943380054")));
        // Forced to the invoice: every invoice line is charged and compared with the daily usage.
        let (charged, control, cmp) = run(AzureUsageSource::Invoice, true);
        assert_eq!(charged, vec!["az", "fw", "fwc", "saas"]);
        assert!(control.is_empty());
        assert_eq!(value(&cmp, "subscription_id", "pc-s1", "charged_cost"), Some(d("285.77")));
        // `daily_usage` forced with no daily usage at all: the metered lines are still only a control total.
        let (charged, control, _) = run(AzureUsageSource::DailyUsage, false);
        assert_eq!(charged, vec!["fwc", "saas"]);
        assert_eq!(control, vec!["az", "fw"]);
    }

    #[test]
    fn conservation_of_cost() {
        // Σ cost staged = Σ cost charged + Σ cost of control lines.
        let staged_cost =
            crate::decimal::column_sum(&usage().collect().unwrap(), "billing_pre_tax_total")
                .unwrap()
                + crate::decimal::column_sum(&invoice().collect().unwrap(), "subtotal").unwrap();
        for src in [
            AzureUsageSource::Auto,
            AzureUsageSource::Invoice,
            AzureUsageSource::DailyUsage,
        ] {
            let (_, ch, ctl, _) = run(true, src, ProrationPolicy::MirrorMicrosoft);
            let total = crate::decimal::column_sum(&ch, "cost").unwrap()
                + crate::decimal::column_sum(&ctl, "cost").unwrap();
            assert_eq!(total, staged_cost, "{src:?}");
        }
    }

    #[test]
    fn the_streaming_engine_gives_the_same_rows() {
        let run = |engine: Engine| {
            let out = int_charges(
                usage(),
                invoice(),
                &ChargesOptions {
                    has_daily_usage: true,
                },
                &ctx(),
            )
            .unwrap();
            [out.charges, out.control_lines, out.control_comparison].map(|lf| {
                crate::testing::frame_to_sorted_csv(
                    &lf.collect_with_engine(engine).unwrap().unwrap_single(),
                )
            })
        };
        let memory = run(Engine::InMemory);
        assert_eq!(run(Engine::Streaming), memory);
        assert_eq!(memory[0].lines().count(), 1 + 11);
    }

    #[test]
    fn schemas_are_the_tables() {
        let out = int_charges(
            staged(&stg_pc_daily_usage::schema(), &[]),
            staged(&stg_pc_invoice_lines::schema(), &[]),
            &ChargesOptions {
                has_daily_usage: true,
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            out.charges.clone().collect_schema().unwrap().as_ref(),
            &schemas::int_charges::schema()
        );
        assert_eq!(
            out.control_lines.clone().collect_schema().unwrap().as_ref(),
            &schemas::int_charges::schema()
        );
        assert_eq!(
            out.control_comparison
                .clone()
                .collect_schema()
                .unwrap()
                .as_ref(),
            &control_comparison_schema()
        );
        assert_eq!(out.charges.collect().unwrap().height(), 0);
    }
}
