//! The two Partner Center sources a row can come from, and what each stages into: its table, schema, columns,
//! the cost column conservation follows and the columns a file and a row must have. Its own module so that
//! `ingest`, `family` and `lineid` depend on it rather than on each other.

use polars::prelude::*;
use schemas::Ty;

/// The two Partner Center sources: daily rated usage and invoice (reconciliation) lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    DailyUsage,
    InvoiceLines,
}

impl SourceKind {
    /// Short tag, used in `line_id` and file statistics.
    pub fn tag(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => "daily_usage",
            SourceKind::InvoiceLines => "invoice_lines",
        }
    }
    /// Staged table columns.
    pub fn columns(self) -> &'static [(&'static str, Ty)] {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::COLUMNS,
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::COLUMNS,
        }
    }
    /// Staged table schema.
    pub fn schema(self) -> Schema {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::schema(),
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::schema(),
        }
    }
    /// Staged table name.
    pub fn table(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::TABLE,
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::TABLE,
        }
    }
    /// Rejects table name.
    pub fn rejects_table(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => schemas::rejects_pc_daily_usage::TABLE,
            SourceKind::InvoiceLines => schemas::rejects_pc_invoice_lines::TABLE,
        }
    }
    /// Rejects table schema.
    pub fn rejects_schema(self) -> Schema {
        match self {
            SourceKind::DailyUsage => schemas::rejects_pc_daily_usage::schema(),
            SourceKind::InvoiceLines => schemas::rejects_pc_invoice_lines::schema(),
        }
    }
    /// The column whose sum is the cost that conservation follows: `BillingPreTaxTotal` or `Subtotal`
    /// (legacy lines' `subtotal` maps to the same column).
    pub fn cost_column(self) -> &'static str {
        match self {
            SourceKind::DailyUsage => schemas::stg_pc_daily_usage::billing_pre_tax_total,
            SourceKind::InvoiceLines => schemas::stg_pc_invoice_lines::subtotal,
        }
    }
    /// Columns that come from the source (everything but provenance and derived columns).
    pub fn source_columns(self) -> Vec<(&'static str, Ty)> {
        self.columns()
            .iter()
            .copied()
            .filter(|(n, _)| !crate::ingest::DERIVED.contains(n))
            .collect()
    }
    /// Source columns a file must have (a missing one is a usage error naming it). `legacy` is for
    /// `LicenseBasedLineItem` lines, which have no effective price, billable quantity or exchange rate.
    pub fn required_columns(self, legacy: bool) -> &'static [&'static str] {
        match (self, legacy) {
            (SourceKind::DailyUsage, _) => &[
                "customer_id",
                "subscription_id",
                "product_id",
                "sku_id",
                "usage_date",
                "quantity",
                "unit_price",
                "effective_unit_price",
                "billing_pre_tax_total",
                "billing_currency",
            ],
            (SourceKind::InvoiceLines, false) => &[
                "customer_id",
                "product_id",
                "charge_type",
                "unit_price",
                "effective_unit_price",
                "billable_quantity",
                "subtotal",
                "currency",
            ],
            (SourceKind::InvoiceLines, true) => &[
                "customer_id",
                "product_id",
                "charge_type",
                "unit_price",
                "quantity",
                "subtotal",
                "currency",
            ],
        }
    }
    /// Cells that must not be empty: a row without one is rejected (`missing_value`).
    pub fn required_values(self) -> &'static [&'static str] {
        match self {
            SourceKind::DailyUsage => &[
                "customer_id",
                "usage_date",
                "billing_pre_tax_total",
                "billing_currency",
            ],
            SourceKind::InvoiceLines => &["customer_id", "charge_type", "subtotal", "currency"],
        }
    }
}

