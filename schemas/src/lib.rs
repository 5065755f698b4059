//! Every table of the cspbill warehouse, defined once: its name, its column names and its Polars schema.
//!
//! Each table is a module named after the table. Inside it, `TABLE` is the table name (also its folder in the
//! warehouse), `ZONE` its zone, one `&str` constant per column (the constant is the column name, snake_case), and
//! `schema()` returns the Polars `Schema` in column order. Raw Partner Center column names never appear here:
//! they belong to staging in `pipeline::ingest`.
//!
//! Money, quantities, prices and rates are `Decimal(38, 18)` (DESIGN §5); rounded invoice amounts are
//! `Decimal(38, 18)` too, carrying the currency's minor unit in their value, so that every money column in the
//! warehouse has one type and sums never change type.

use polars::prelude::{DataType, Field, Schema, TimeUnit};

/// Precision and scale of every money, quantity, price and rate column (DESIGN §5).
pub const MONEY_PRECISION: usize = 38;
/// Fractional digits kept for money: more are rounded half-even at ingest and counted.
pub const MONEY_SCALE: usize = 18;

/// The one decimal type of money, quantities, prices and rates.
pub fn money() -> DataType {
    DataType::Decimal(MONEY_PRECISION, MONEY_SCALE)
}

/// Column types, short names used by the table definitions below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// UTF-8 text (identifiers stay text: SkuId `0024` is not `24`).
    Str,
    /// Exact decimal (38, 18).
    Dec,
    /// Calendar date (UTC day).
    Date,
    /// UTC timestamp, microseconds.
    Ts,
    /// 64-bit integer (counts, line numbers, ordinals).
    Int,
    /// Boolean flag.
    Bool,
}

impl Ty {
    pub fn dtype(self) -> DataType {
        match self {
            Ty::Str => DataType::String,
            Ty::Dec => money(),
            Ty::Date => DataType::Date,
            Ty::Ts => DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC)),
            Ty::Int => DataType::Int64,
            Ty::Bool => DataType::Boolean,
        }
    }
}

/// Builds a Polars schema from `(name, type)` pairs, in order.
pub fn build_schema(cols: &[(&str, Ty)]) -> Schema {
    cols.iter().map(|(n, t)| Field::new((*n).into(), t.dtype())).collect()
}

/// The warehouse zones (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Raw,
    Staged,
    Rejects,
    Int,
    Marts,
}

impl Zone {
    pub fn dir(self) -> &'static str {
        match self {
            Zone::Raw => "raw",
            Zone::Staged => "staged",
            Zone::Rejects => "rejects",
            Zone::Int => "int",
            Zone::Marts => "marts",
        }
    }
}

/// Defines a table module: `TABLE`, `ZONE`, one lower-case constant per column, `COLUMNS` and `schema()`.
macro_rules! table {
    ($(#[$meta:meta])* $module:ident, $zone:expr, { $($col:ident : $ty:ident),* $(,)? }) => {
        $(#[$meta])*
        #[allow(non_upper_case_globals)]
        pub mod $module {
            use super::*;
            pub const TABLE: &str = stringify!($module);
            pub const ZONE: Zone = $zone;
            $(pub const $col: &str = stringify!($col);)*
            /// Column names and types in table order.
            pub const COLUMNS: &[(&str, Ty)] = &[$((stringify!($col), Ty::$ty)),*];
            /// The table's Polars schema.
            pub fn schema() -> Schema { build_schema(COLUMNS) }
            /// Column names in table order, as Polars expressions select them.
            pub fn names() -> Vec<&'static str> { COLUMNS.iter().map(|(n, _)| *n).collect() }
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Staged Partner Center data
// ---------------------------------------------------------------------------------------------------------------

table!(
    /// New-commerce daily rated usage (billed or unbilled), from CSV, v1 JSON pages / JSON lines or v2 blobs.
    /// Percentages are fractions (15 → 0.15). `source_*` columns say where each row came from.
    stg_pc_daily_usage, Zone::Staged, {
    line_id: Str, period: Str, source_file: Str, source_format: Str, line_number: Int,
    partner_id: Str, partner_name: Str, customer_id: Str, customer_name: Str, customer_domain_name: Str,
    customer_country: Str, mpn_id: Str, tier2_mpn_id: Str, invoice_number: Str, product_id: Str, sku_id: Str,
    availability_id: Str, sku_name: Str, product_name: Str, publisher_name: Str, publisher_id: Str,
    subscription_description: Str, subscription_id: Str, charge_start_date: Date, charge_end_date: Date,
    usage_date: Date, meter_type: Str, meter_category: Str, meter_id: Str, meter_subcategory: Str, meter_name: Str,
    meter_region: Str, unit: Str, resource_location: Str, consumed_service: Str, resource_group: Str,
    resource_uri: Str, charge_type: Str, unit_price: Dec, quantity: Dec, unit_type: Str,
    billing_pre_tax_total: Dec, billing_currency: Str, pricing_pre_tax_total: Dec, pricing_currency: Str,
    service_info1: Str, service_info2: Str, tags: Str, additional_info: Str, effective_unit_price: Dec,
    pc_to_bc_exchange_rate: Dec, pc_to_bc_exchange_rate_date: Date, entitlement_id: Str,
    entitlement_description: Str, partner_earned_credit_rate: Dec, credit_rate: Dec, credit_type: Str,
    benefit_order_id: Str, benefit_id: Str, benefit_type: Str, is_billed: Bool, product_family: Str,
});

table!(
    /// Invoice reconciliation lines: new-commerce (CSV, v1 `OneTimeInvoiceLineItem`, v2) and legacy
    /// licence-based (`LicenseBasedLineItem`, `line_kind = legacy_license`: `product_id` = offerId,
    /// `product_name` = offerName, `amount` and `total_other_discount` set, `effective_unit_price` null).
    stg_pc_invoice_lines, Zone::Staged, {
    line_id: Str, period: Str, source_file: Str, source_format: Str, line_number: Int, line_kind: Str,
    partner_id: Str, customer_id: Str, customer_name: Str, customer_domain_name: Str, customer_country: Str,
    invoice_number: Str, mpn_id: Str, reseller_mpn_id: Str, order_id: Str, order_date: Date, product_id: Str,
    sku_id: Str, availability_id: Str, sku_name: Str, product_name: Str, charge_type: Str, unit_price: Dec,
    quantity: Dec, subtotal: Dec, tax_total: Dec, total: Dec, currency: Str, price_adjustment_description: Str,
    publisher_name: Str, publisher_id: Str, subscription_description: Str, subscription_id: Str,
    charge_start_date: Date, charge_end_date: Date, term_and_billing_cycle: Str, effective_unit_price: Dec,
    unit_type: Str, alternate_id: Str, billable_quantity: Dec, billing_frequency: Str, pricing_currency: Str,
    pc_to_bc_exchange_rate: Dec, pc_to_bc_exchange_rate_date: Date, meter_description: Str,
    reservation_order_id: Str, credit_reason_code: Str, subscription_start_date: Date,
    subscription_end_date: Date, reference_id: Str, product_qualifiers: Str, promotion_id: Str, amount: Dec,
    total_other_discount: Dec, product_family: Str,
});

table!(
    /// Rows of a Partner Center source that could not be staged, with the reason. One table per source:
    /// this one for daily usage; `rejects_pc_invoice_lines` has the same columns.
    rejects_pc_daily_usage, Zone::Rejects, {
    period: Str, source_file: Str, line_number: Int, reason_code: Str, reason: Str, column: Str, raw: Str,
    billing_pre_tax_total: Dec,
});

table!(
    /// Rejected invoice reconciliation rows; columns as `rejects_pc_daily_usage` (`billing_pre_tax_total`
    /// carries the row's `Subtotal` where it could be read, for the conservation of amounts).
    rejects_pc_invoice_lines, Zone::Rejects, {
    period: Str, source_file: Str, line_number: Int, reason_code: Str, reason: Str, column: Str, raw: Str,
    billing_pre_tax_total: Dec,
});

// ---------------------------------------------------------------------------------------------------------------
// Staged reference data (owned by the MSP, DESIGN §4.2)
// ---------------------------------------------------------------------------------------------------------------

table!(stg_customers, Zone::Staged, {
    customer_id: Str, customer_name: Str, invoice_currency: Str, template: Str, fx_policy: Str,
    fixed_fx_rate: Dec, monthly_budget: Dec, spend_cap: Dec, target_margin: Dec, payment_terms_days: Int,
    consent_status: Str, consent_expires_on: Date, billing_address: Str, tax_id: Str, po_number: Str,
    contact_email: Str, locale: Str, line_number: Int,
});

table!(stg_org_units, Zone::Staged, {
    unit_id: Str, customer_id: Str, parent_unit_id: Str, unit_type: Str, name: Str, psa_project_code: Str,
    unit_path: Str, line_number: Int,
});

table!(stg_rate_cards, Zone::Staged, {
    rule_id: Str, customer_id: Str, template: Str, product_family: Str, meter_category: Str,
    meter_subcategory: Str, product_id: Str, method: Str, value: Dec, currency: Str, valid_from: Date,
    valid_to: Date, line_number: Int,
});

table!(stg_tag_rules, Zone::Staged, {
    rule_id: Str, priority: Int, customer_id: Str, subscription_id: Str, resource_group: Str, tag_key: Str,
    tag_value: Str, target_customer_id: Str, target_unit_id: Str, share: Dec, part_no: Int, line_number: Int,
});

table!(stg_fx_rates, Zone::Staged, {
    date: Date, from_currency: Str, to_currency: Str, rate: Dec, line_number: Int,
});

table!(stg_manual_lines, Zone::Staged, {
    customer_id: Str, period: Str, description: Str, quantity: Dec, unit_price: Dec, currency: Str,
    line_type: Str, reference: Str, line_number: Int,
});

table!(stg_psa_time, Zone::Staged, {
    entry_id: Str, customer_id: Str, project_code: Str, work_date: Date, hours: Dec, hourly_rate: Dec,
    currency: Str, billable: Bool, description: Str, line_number: Int,
});

table!(stg_license_activity, Zone::Staged, {
    customer_id: Str, user_key: Str, product_id: Str, last_activity_date: Date, line_number: Int,
});

table!(stg_utilization, Zone::Staged, {
    resource_uri: Str, date: Date, cpu_avg_pct: Dec, line_number: Int,
});

table!(
    /// General-ledger accounts by invoice `line_type` × `product_family` (`*` = any). Empty account cells take
    /// the value of the next less specific row: (type, family) → (type, `*`) → (`*`, family) → (`*`, `*`).
    stg_gl_accounts, Zone::Staged, {
    line_type: Str, product_family: Str, revenue_account: Str, cost_account: Str,
    deferred_revenue_account: Str, receivable_account: Str, payable_account: Str, description: Str,
    line_number: Int,
});

// ---------------------------------------------------------------------------------------------------------------
// Intermediate
// ---------------------------------------------------------------------------------------------------------------

table!(
    /// Every staged usage row and invoice line in one charge model, amounts in billing currency (DESIGN §5).
    /// `subscription_id` is the allocation key: the Azure subscription (`EntitlementId`) on usage rows, the
    /// Partner Center `SubscriptionId` on invoice lines. `source_kind` is `daily_usage` or `invoice_line`.
    int_charges, Zone::Int, {
    line_id: Str, period: Str, source_kind: Str, source_file: Str, line_number: Int, customer_id: Str,
    customer_name: Str, subscription_id: Str, pc_subscription_id: Str, resource_group: Str, resource_uri: Str,
    tags: Str, product_family: Str, product_id: Str, sku_id: Str, product_name: Str, sku_name: Str,
    meter_category: Str, meter_subcategory: Str, meter_name: Str, unit: Str, charge_type: Str, is_credit: Bool,
    charge_date: Date, charge_start_date: Date, charge_end_date: Date, billing_currency: Str,
    pricing_currency: Str, pc_to_bc_rate: Dec, unit_price: Dec, effective_unit_price: Dec, q: Dec, f: Dec,
    cost: Dec, list: Dec, pec: Dec, publisher_name: Str, reference_id: Str,
});

table!(
    /// Each charge assigned to the customer and org unit that pays for it, split by tag-rule shares.
    /// `customer_id` is the paying (target) customer; `source_customer_id` the tenant owner in the export.
    int_charges_allocated, Zone::Int, {
    part_id: Str, part_no: Int, line_id: Str, period: Str, source_kind: Str, source_file: Str, line_number: Int,
    customer_id: Str, source_customer_id: Str, customer_name: Str, subscription_id: Str, pc_subscription_id: Str,
    resource_group: Str, resource_uri: Str, tags: Str, product_family: Str, product_id: Str, sku_id: Str,
    product_name: Str, sku_name: Str, meter_category: Str, meter_subcategory: Str, meter_name: Str, unit: Str,
    charge_type: Str, is_credit: Bool, charge_date: Date, charge_start_date: Date, charge_end_date: Date,
    billing_currency: Str, pricing_currency: Str, pc_to_bc_rate: Dec, unit_price: Dec, effective_unit_price: Dec,
    q: Dec, f: Dec, cost: Dec, list: Dec, pec: Dec, publisher_name: Str, reference_id: Str,
    allocation: Str, tag_rule_id: Str, share: Dec, unit_id: Str, unit_path: Str,
});

table!(
    /// Share of Azure usage cost allocated by rules that name a tag key, per source customer and subscription.
    int_tag_compliance, Zone::Int, {
    period: Str, customer_id: Str, subscription_id: Str, azure_cost: Dec, tag_allocated_cost: Dec,
    compliance: Dec,
});

table!(
    /// Each allocated part priced for its customer in the customer's invoice currency (DESIGN §5 "Rate").
    /// `status` is `priced` or `unpriced` (`unpriced_reason` set, `price` and `margin` null).
    /// `price_rule_ccy` is the price before FX: in `rate_currency` for `fixed_unit_price`, else in billing
    /// currency; `price = price_rule_ccy × price_fx_rate` and `cost_ic = cost × fx_rate` (IC per 1 BC).
    /// `fx_source`: `same_currency`, `microsoft`, `market`, `market_fallback`, `fixed`; `fx_inverted` when the
    /// reverse pair's market rate was inverted. `price_fx_source`: `line` (the line's rate), `same_currency`
    /// (a fixed price already in IC) or `market` (a fixed price in a third currency). `rate_rule_line` is the
    /// rule's line in rate_cards.csv; `rate_method` is `credit_pass_through` on credits. `unit_price`,
    /// `publisher_name` and `tags` pass through from the charge for the FOCUS dataset (list prices, publisher,
    /// resource tags).
    int_charges_rated, Zone::Int, {
    part_id: Str, part_no: Int, line_id: Str, period: Str, source_kind: Str, source_file: Str, line_number: Int,
    customer_id: Str, source_customer_id: Str, customer_name: Str, template: Str, subscription_id: Str,
    pc_subscription_id: Str, resource_group: Str, resource_uri: Str, product_family: Str, product_id: Str,
    sku_id: Str, product_name: Str, sku_name: Str, meter_category: Str, meter_subcategory: Str, meter_name: Str,
    unit: Str, charge_type: Str, is_credit: Bool, line_type: Str, charge_date: Date, charge_start_date: Date,
    charge_end_date: Date, billing_currency: Str, pricing_currency: Str, pc_to_bc_rate: Dec, invoice_currency: Str,
    q: Dec, f: Dec, cost: Dec, list: Dec, pec: Dec, allocation: Str, tag_rule_id: Str, share: Dec, unit_id: Str,
    unit_path: Str, rate_rule_id: Str, rate_rule_line: Int, rate_method: Str, rate_value: Dec, rate_currency: Str,
    price_rule_ccy: Dec, fx_policy: Str, fx_rate: Dec, fx_date: Date, fx_source: Str, fx_inverted: Bool,
    price_fx_rate: Dec, price_fx_date: Date, price_fx_source: Str, cost_ic: Dec, price: Dec, margin: Dec,
    proration_policy: Str, status: Str, unpriced_reason: Str, unit_price: Dec, publisher_name: Str, tags: Str,
});

// ---------------------------------------------------------------------------------------------------------------
// Marts
// ---------------------------------------------------------------------------------------------------------------

table!(
    /// One invoice per customer, period and currency. `status` is `provisional` (nightly) or `final` (close).
    fct_invoices, Zone::Marts, {
    invoice_number: Str, period: Str, customer_id: Str, customer_name: Str, currency: Str, template: Str,
    status: Str, issuer: Str, invoice_date: Date, due_date: Date, line_count: Int, subtotal: Dec, tax: Dec,
    total: Dec, cost: Dec, margin: Dec, unpriced_charges: Int,
});

table!(
    /// Invoice lines, rounded once to the currency's minor unit (`amount`); `amount_unrounded` is Σ price.
    /// `corrected_period` and `original_line_id` are set on `adjustment` lines only.
    fct_invoice_lines, Zone::Marts, {
    invoice_line_id: Str, invoice_number: Str, period: Str, customer_id: Str, currency: Str, line_no: Int,
    line_type: Str, product_family: Str, subscription_id: Str, group_key: Str, unit_id: Str, unit_path: Str,
    description: Str, quantity: Dec, unit: Str, unit_price: Dec, amount_unrounded: Dec, amount: Dec, tax: Dec,
    cost: Dec, margin: Dec, part_count: Int, corrected_period: Str, original_line_id: Str,
});

table!(
    /// Resource-level rows behind enterprise invoice lines (and every other line): one row per rated part.
    fct_invoice_detail, Zone::Marts, {
    invoice_line_id: Str, invoice_number: Str, period: Str, customer_id: Str, part_id: Str, line_id: Str,
    charge_date: Date, subscription_id: Str, resource_group: Str, resource_uri: Str, meter_category: Str,
    meter_name: Str, product_id: Str, sku_id: Str, quantity: Dec, cost: Dec, price: Dec, currency: Str,
    rate_rule_id: Str, fx_rate: Dec, tag_rule_id: Str, unit_path: Str,
});

table!(
    /// Anomaly report (DESIGN §5 "Anomalies").
    rpt_anomalies, Zone::Marts, {
    period: Str, monitor: Str, severity: Str, customer_id: Str, subject: Str, observed: Dec, expected: Dec,
    threshold: Dec, first_seen: Date, last_seen: Date, message: Str,
});

table!(
    /// The parallel run (issue 17, `cspbill compare`): legacy invoice lines against `fct_invoice_lines` of the
    /// committed run `compared_run_id`, matched on (customer, currency, product, line type). `row_kind` is `line`
    /// (one matched key, or one unmatched side) or `customer` (per customer and currency). `difference` =
    /// cspbill − legacy; `difference_pct` in per cent of the legacy amount. `status`: `matched`,
    /// `missing_in_legacy`, `extra_in_legacy` (customer rows: `matched` or `incomplete`). `cause`: `none`,
    /// `proration`, `rounding`, `markup`, `fx`, `missing_line`, `extra_line`, `unexplained` (`summary` on
    /// customer rows with differences).
    rpt_parallel_run, Zone::Marts, {
    period: Str, row_kind: Str, customer_id: Str, customer_name: Str, currency: Str, product: Str, line_type: Str,
    description: Str, legacy_invoice_numbers: Str, cspbill_invoice_numbers: Str, legacy_lines: Int,
    cspbill_lines: Int, legacy_quantity: Dec, cspbill_quantity: Dec, legacy_amount: Dec, cspbill_amount: Dec,
    difference: Dec, difference_pct: Dec, within_tolerance: Bool, lines_outside_tolerance: Int, status: Str,
    cause: Str, explanation: Str, compared_run_id: Str,
});

table!(
    /// Drift between billing and the business systems (issue 17, `cspbill drift`): one row per difference.
    /// `source` `psa` (agreement additions) or `crm` (quotes); `measure` `quantity`, `unit_price`, `amount`,
    /// `margin` (a fraction) or `line` (present on one side only). `business_value` is what the PSA or CRM holds,
    /// `billing_value` what `billing_source` (`partner_center` seats or `cspbill` prices and amounts) holds;
    /// `difference` = billing − business (an absent side counts 0).
    rpt_drift, Zone::Marts, {
    period: Str, source: Str, customer_id: Str, customer_name: Str, product: Str, measure: Str, currency: Str,
    business_system: Str, business_value: Dec, billing_source: Str, billing_value: Dec, difference: Dec,
    message: Str, compared_run_id: Str,
});

table!(
    /// Double-entry journal lines in the invoice currency, one entry per invoice and kind (`source`: `invoice`,
    /// `cost`, `release`). `debit` and `credit` are rounded to the currency's minor unit and never both set.
    /// Cost lines carry what Microsoft charged in billing currency (`source_currency`, `source_amount`) and the
    /// rate that converted it (`fx_rate`); `corrected_period` is set on adjustment lines for late data.
    /// `account_role`: `receivable`, `revenue`, `deferred_revenue`, `cost_of_sales` or `payable`.
    fct_journal_entries, Zone::Marts, {
    entry_id: Str, entry_line: Int, entry_date: Date, period: Str, account: Str, account_role: Str, debit: Dec, credit: Dec,
    currency: Str, customer_id: Str, customer_name: Str, cost_center: Str, invoice_number: Str,
    invoice_line: Str, line_type: Str, memo: Str, source: Str, source_currency: Str, source_amount: Dec,
    fx_rate: Dec, corrected_period: Str,
});

table!(
    /// Revenue earned per month for invoice lines whose charges cover a term longer than a month (straight-line
    /// by days). One row per schedule and month from the invoice's period to the end of the term; the month of
    /// the invoice is recognised on the invoice, later months are released by the close of that month.
    fct_revenue_schedule, Zone::Marts, {
    schedule_id: Str, invoice_number: Str, invoice_line: Str, customer_id: Str, currency: Str,
    opened_period: Str, line_type: Str, revenue_account: Str, deferred_revenue_account: Str, cost_center: Str,
    term_start: Date, term_end: Date, month: Str, days: Int, amount: Dec, line_amount: Dec,
});

table!(
    /// Movements of the period per account and currency: Σ debit, Σ credit and debit − credit.
    rpt_trial_balance, Zone::Marts, {
    period: Str, account: Str, currency: Str, debit: Dec, credit: Dec, balance: Dec, lines: Int,
});

table!(
    /// The customer-facing FOCUS 1.2 Cost and Usage dataset (issue #13, `reference/focus.md`): the MSP is the
    /// invoice issuer and provider, the customer the billing account. The 57 FOCUS 1.2 columns in the order of the
    /// specification's column list, then the FOCUS 1.3 entity columns, then cspbill's own `x_` columns. Column
    /// names are FOCUS's (PascalCase), not snake_case. Money is `Decimal(38, 18)` (a Parquet decimal),
    /// timestamps UTC, `Tags` and `SkuPriceDetails` JSON text. The MSP's cost and PEC never appear. Mapping and
    /// BilledCost allocation: `pipeline::focus`.
    focus_cost_and_usage, Zone::Marts, {
    AvailabilityZone: Str, BilledCost: Dec, BillingAccountId: Str, BillingAccountName: Str,
    BillingAccountType: Str, BillingCurrency: Str, BillingPeriodEnd: Ts, BillingPeriodStart: Ts,
    CapacityReservationId: Str, CapacityReservationStatus: Str, ChargeCategory: Str, ChargeClass: Str,
    ChargeDescription: Str, ChargeFrequency: Str, ChargePeriodEnd: Ts, ChargePeriodStart: Ts,
    CommitmentDiscountCategory: Str, CommitmentDiscountId: Str, CommitmentDiscountName: Str,
    CommitmentDiscountQuantity: Dec, CommitmentDiscountStatus: Str, CommitmentDiscountType: Str,
    CommitmentDiscountUnit: Str, ConsumedQuantity: Dec, ConsumedUnit: Str, ContractedCost: Dec,
    ContractedUnitPrice: Dec, EffectiveCost: Dec, InvoiceId: Str, InvoiceIssuerName: Str, ListCost: Dec,
    ListUnitPrice: Dec, PricingCategory: Str, PricingCurrency: Str, PricingCurrencyContractedUnitPrice: Dec,
    PricingCurrencyEffectiveCost: Dec, PricingCurrencyListUnitPrice: Dec, PricingQuantity: Dec, PricingUnit: Str,
    ProviderName: Str, PublisherName: Str, RegionId: Str, RegionName: Str, ResourceId: Str, ResourceName: Str,
    ResourceType: Str, ServiceCategory: Str, ServiceName: Str, ServiceSubcategory: Str, SkuId: Str,
    SkuMeter: Str, SkuPriceDetails: Str, SkuPriceId: Str, SubAccountId: Str, SubAccountName: Str,
    SubAccountType: Str, Tags: Str,
    HostProviderName: Str, ServiceProviderName: Str,
    x_InvoiceLineId: Str, x_InvoiceLineType: Str, x_BilledCostRounding: Dec, x_PartId: Str, x_SourceLineId: Str,
    x_ProductFamily: Str, x_ResourceGroupName: Str, x_OrgUnitId: Str, x_OrgUnitPath: Str,
    x_CorrectedBillingPeriod: Str,
});

/// The number of FOCUS 1.2 Cost and Usage columns (all of them are in `focus_cost_and_usage`).
pub const FOCUS_1_2_COLUMNS: usize = 57;

/// Every table that a run may write, by name: used by the warehouse to list a period's outputs.
pub const ALL_TABLES: &[(&str, Zone)] = &[
    (stg_pc_daily_usage::TABLE, stg_pc_daily_usage::ZONE),
    (stg_pc_invoice_lines::TABLE, stg_pc_invoice_lines::ZONE),
    (rejects_pc_daily_usage::TABLE, rejects_pc_daily_usage::ZONE),
    (rejects_pc_invoice_lines::TABLE, rejects_pc_invoice_lines::ZONE),
    (stg_customers::TABLE, stg_customers::ZONE),
    (stg_org_units::TABLE, stg_org_units::ZONE),
    (stg_rate_cards::TABLE, stg_rate_cards::ZONE),
    (stg_tag_rules::TABLE, stg_tag_rules::ZONE),
    (stg_fx_rates::TABLE, stg_fx_rates::ZONE),
    (stg_manual_lines::TABLE, stg_manual_lines::ZONE),
    (stg_psa_time::TABLE, stg_psa_time::ZONE),
    (stg_license_activity::TABLE, stg_license_activity::ZONE),
    (stg_utilization::TABLE, stg_utilization::ZONE),
    (stg_gl_accounts::TABLE, stg_gl_accounts::ZONE),
    (int_charges::TABLE, int_charges::ZONE),
    (int_charges_allocated::TABLE, int_charges_allocated::ZONE),
    (int_tag_compliance::TABLE, int_tag_compliance::ZONE),
    (int_charges_rated::TABLE, int_charges_rated::ZONE),
    (fct_invoices::TABLE, fct_invoices::ZONE),
    (fct_invoice_lines::TABLE, fct_invoice_lines::ZONE),
    (fct_invoice_detail::TABLE, fct_invoice_detail::ZONE),
    (rpt_anomalies::TABLE, rpt_anomalies::ZONE),
    (fct_journal_entries::TABLE, fct_journal_entries::ZONE),
    (fct_revenue_schedule::TABLE, fct_revenue_schedule::ZONE),
    (rpt_trial_balance::TABLE, rpt_trial_balance::ZONE),
    (focus_cost_and_usage::TABLE, focus_cost_and_usage::ZONE),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_snake_case_and_unique_per_table() {
        let tables: &[(&str, &[(&str, Ty)])] = &[
            (stg_pc_daily_usage::TABLE, stg_pc_daily_usage::COLUMNS),
            (stg_pc_invoice_lines::TABLE, stg_pc_invoice_lines::COLUMNS),
            (int_charges::TABLE, int_charges::COLUMNS),
            (int_charges_allocated::TABLE, int_charges_allocated::COLUMNS),
            (int_charges_rated::TABLE, int_charges_rated::COLUMNS),
            (fct_invoice_lines::TABLE, fct_invoice_lines::COLUMNS),
        ];
        for (t, cols) in tables {
            let mut seen = std::collections::HashSet::new();
            for (c, _) in *cols {
                assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'), "{t}.{c}");
                assert!(seen.insert(*c), "{t}.{c} twice");
            }
        }
    }

    #[test]
    fn money_is_decimal_38_18() {
        assert_eq!(stg_pc_invoice_lines::schema().get(stg_pc_invoice_lines::subtotal), Some(&DataType::Decimal(38, 18)));
        assert_eq!(int_charges::schema().len(), int_charges::COLUMNS.len());
    }

    #[test]
    fn focus_has_the_57_columns_of_focus_1_2_then_the_1_3_entities_then_x_columns() {
        let names = focus_cost_and_usage::names();
        let focus: Vec<&str> = names.iter().copied().take(FOCUS_1_2_COLUMNS).collect();
        // FOCUS 1.2's column list is alphabetical (reference/focus.md §2): the first 57 are that list.
        let mut sorted = focus.clone();
        sorted.sort();
        assert_eq!(focus, sorted);
        assert!(focus.iter().all(|c| !c.starts_with("x_") && c.chars().next().is_some_and(|ch| ch.is_ascii_uppercase())));
        assert_eq!(&names[FOCUS_1_2_COLUMNS..FOCUS_1_2_COLUMNS + 2], &["HostProviderName", "ServiceProviderName"]);
        assert!(names[FOCUS_1_2_COLUMNS + 2..].iter().all(|c| c.starts_with("x_")), "x_ columns come last, not intermixed");
        let s = focus_cost_and_usage::schema();
        assert_eq!(s.get("BilledCost"), Some(&DataType::Decimal(38, 18)));
        assert_eq!(s.get("ChargePeriodStart"), Some(&Ty::Ts.dtype()));
    }
}
