//! Stable `line_id` of a staged Partner Center row (DESIGN §5).
//!
//! `line_id` = hex SHA-256 of `"cspbill/line_id/v1"`, the source kind, the row key and the row's occurrence
//! (1, 2, ...) among rows with the same key in its file, where the row key is the first 16 bytes of the SHA-256 of
//! the *typed, normalised* values of a fixed column list:
//! - daily usage: every source column of `stg_pc_daily_usage` ([`USAGE_KEY_COLUMNS`]);
//! - invoice lines: every source column of `stg_pc_invoice_lines` ([`INVOICE_KEY_COLUMNS`]).
//!
//! Provenance (`source_file`, `source_format`, `line_number`, `period`) and derived columns (`is_billed`,
//! `product_family`) are not in the key. Values are hashed typed: a decimal as its scale-18 mantissa (so `1.50`,
//! `1.5` and `1.5E+0` agree), a date as its day number (so `06/01/2021`, `6/1/2021` and `2021-06-01T00:00:00Z`
//! agree), text as its bytes after ingest's normalisation (SkuId padded, empty = null). The same row read from
//! CSV, JSON or an Excel re-save therefore gets the same id; identical rows within one file get distinct ids by
//! their occurrence. The 16-byte key is what the occurrence count groups on, to keep that global step small.

use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::source::SourceKind;

/// Columns whose typed values make the key of a daily-usage row.
pub const USAGE_KEY_COLUMNS: &[&str] = &[
    "partner_id",
    "partner_name",
    "customer_id",
    "customer_name",
    "customer_domain_name",
    "customer_country",
    "mpn_id",
    "tier2_mpn_id",
    "invoice_number",
    "product_id",
    "sku_id",
    "availability_id",
    "sku_name",
    "product_name",
    "publisher_name",
    "publisher_id",
    "subscription_description",
    "subscription_id",
    "charge_start_date",
    "charge_end_date",
    "usage_date",
    "meter_type",
    "meter_category",
    "meter_id",
    "meter_subcategory",
    "meter_name",
    "meter_region",
    "unit",
    "resource_location",
    "consumed_service",
    "resource_group",
    "resource_uri",
    "charge_type",
    "unit_price",
    "quantity",
    "unit_type",
    "billing_pre_tax_total",
    "billing_currency",
    "pricing_pre_tax_total",
    "pricing_currency",
    "service_info1",
    "service_info2",
    "tags",
    "additional_info",
    "effective_unit_price",
    "pc_to_bc_exchange_rate",
    "pc_to_bc_exchange_rate_date",
    "entitlement_id",
    "entitlement_description",
    "partner_earned_credit_rate",
    "credit_rate",
    "credit_type",
    "benefit_order_id",
    "benefit_id",
    "benefit_type",
];

/// Columns whose typed values make the key of an invoice line.
pub const INVOICE_KEY_COLUMNS: &[&str] = &[
    "line_kind",
    "partner_id",
    "customer_id",
    "customer_name",
    "customer_domain_name",
    "customer_country",
    "invoice_number",
    "mpn_id",
    "reseller_mpn_id",
    "order_id",
    "order_date",
    "product_id",
    "sku_id",
    "availability_id",
    "sku_name",
    "product_name",
    "charge_type",
    "unit_price",
    "quantity",
    "subtotal",
    "tax_total",
    "total",
    "currency",
    "price_adjustment_description",
    "publisher_name",
    "publisher_id",
    "subscription_description",
    "subscription_id",
    "charge_start_date",
    "charge_end_date",
    "term_and_billing_cycle",
    "effective_unit_price",
    "unit_type",
    "alternate_id",
    "billable_quantity",
    "billing_frequency",
    "pricing_currency",
    "pc_to_bc_exchange_rate",
    "pc_to_bc_exchange_rate_date",
    "meter_description",
    "reservation_order_id",
    "credit_reason_code",
    "subscription_start_date",
    "subscription_end_date",
    "reference_id",
    "product_qualifiers",
    "promotion_id",
    "amount",
    "total_other_discount",
];

/// Brings every column of a batch-wise UDF's input to the batch's length: a literal argument (`lit(1)`, a column
/// the reader added as a constant) arrives as one value, and zipping it with the others would cut the batch.
pub fn broadcast(columns: &mut [Column]) -> usize {
    let n = columns.iter().map(|c| c.len()).max().unwrap_or(0);
    for c in columns.iter_mut() {
        if c.len() == 1 && n > 1 {
            *c = c.new_from_index(0, n);
        }
    }
    n
}

/// The key columns of a source kind.
pub fn key_columns(kind: SourceKind) -> &'static [&'static str] {
    match kind {
        SourceKind::DailyUsage => USAGE_KEY_COLUMNS,
        SourceKind::InvoiceLines => INVOICE_KEY_COLUMNS,
    }
}

const NULL_TAG: u8 = 0;
const VALUE_TAG: u8 = 1;

fn feed_column(hashers: &mut [Sha256], c: &Column) -> PolarsResult<()> {
    let s = c.as_materialized_series();
    // Each value is framed (tag, length) so that adjacent columns cannot run into each other.
    fn put(h: &mut Sha256, v: Option<&[u8]>) {
        match v {
            None => h.update([NULL_TAG]),
            Some(b) => {
                h.update([VALUE_TAG]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
        }
    }
    match s.dtype() {
        DataType::String => {
            for (h, v) in hashers.iter_mut().zip(s.str()?.iter()) {
                put(h, v.filter(|t| !t.is_empty()).map(str::as_bytes));
            }
        }
        DataType::Decimal(_, _) => {
            for (h, v) in hashers.iter_mut().zip(s.decimal()?.physical().iter()) {
                put(h, v.map(|m| m.to_le_bytes()).as_ref().map(|b| &b[..]));
            }
        }
        DataType::Date => {
            for (h, v) in hashers.iter_mut().zip(s.date()?.physical().iter()) {
                put(h, v.map(|d| d.to_le_bytes()).as_ref().map(|b| &b[..]));
            }
        }
        DataType::Boolean => {
            for (h, v) in hashers.iter_mut().zip(s.bool()?.iter()) {
                put(h, v.map(|b| [b as u8]).as_ref().map(|b| &b[..]));
            }
        }
        DataType::Int64 => {
            for (h, v) in hashers.iter_mut().zip(s.i64()?.iter()) {
                put(h, v.map(|d| d.to_le_bytes()).as_ref().map(|b| &b[..]));
            }
        }
        other => {
            polars_bail!(ComputeError: "line key: column `{}` has unsupported type {other}", s.name())
        }
    }
    Ok(())
}

/// Expression: the 16-byte row key (as `Binary`, 16 bytes: the first half of the SHA-256) of the typed key
/// columns of `kind`. Binary rather than `Int128` so that it survives a Parquet spool file. Batch-wise: one pass
/// per column over the whole batch, no per-row `AnyValue`.
pub fn row_key(kind: SourceKind) -> Expr {
    let cols = key_columns(kind);
    let tag = kind.tag();
    let args: Vec<Expr> = cols[1..].iter().map(|c| col(*c)).collect();
    col(cols[0])
        .map_many(
            move |columns: &mut [Column]| {
                let n = broadcast(columns);
                let mut hashers: Vec<Sha256> = (0..n)
                    .map(|_| {
                        let mut h = Sha256::new();
                        h.update(tag.as_bytes());
                        h
                    })
                    .collect();
                for c in columns.iter() {
                    feed_column(&mut hashers, c)?;
                }
                let digests: Vec<[u8; 16]> = hashers
                    .into_iter()
                    .map(|h| {
                        let d = h.finalize();
                        let mut b = [0u8; 16];
                        b.copy_from_slice(&d[..16]);
                        b
                    })
                    .collect();
                let ca = BinaryChunked::from_iter_values("row_key".into(), digests.iter().map(|b| &b[..]));
                Ok(ca.into_column())
            },
            &args,
            |_, _| Ok(Field::new("row_key".into(), DataType::Binary)),
        )
        .alias("row_key")
}

/// The `line_id` text of a row key and its 1-based occurrence.
pub fn line_id_of(kind: SourceKind, key: i128, occurrence: i64) -> String {
    let mut h = Sha256::new();
    h.update(b"cspbill/line_id/v1");
    h.update(kind.tag().as_bytes());
    h.update(key.to_le_bytes());
    h.update(occurrence.to_le_bytes());
    hex::encode(h.finalize())
}

/// The row key's 16 bytes as the integer [`line_id_of`] hashes (little-endian, as the key was first defined).
pub fn key_of_bytes(b: &[u8]) -> Option<i128> {
    let arr: [u8; 16] = b.try_into().ok()?;
    Some(i128::from_le_bytes(arr))
}

/// Expression: `line_id` from a row-key column (`Binary`, 16 bytes) and an occurrence column (integer, 1-based).
pub fn line_id(kind: SourceKind, key: Expr, occurrence: Expr) -> Expr {
    key.map_many(
        move |columns: &mut [Column]| {
            broadcast(columns);
            let keys = columns[0].as_materialized_series().binary()?.clone();
            let occ = columns[1].cast(&DataType::Int64)?;
            let occ = occ.as_materialized_series().i64()?.clone();
            let ca: StringChunked = keys
                .iter()
                .zip(occ.iter())
                .map(|(k, o)| match (k, o) {
                    (Some(k), Some(o)) => key_of_bytes(k).map(|k| line_id_of(kind, k, o)),
                    _ => None,
                })
                .collect();
            Ok(ca.with_name("line_id".into()).into_column())
        },
        &[occurrence],
        |_, _| Ok(Field::new("line_id".into(), DataType::String)),
    )
    .alias("line_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_id_depends_on_kind_key_and_occurrence() {
        let a = line_id_of(SourceKind::DailyUsage, 7, 1);
        assert_eq!(a.len(), 64);
        assert_ne!(a, line_id_of(SourceKind::DailyUsage, 7, 2));
        assert_ne!(a, line_id_of(SourceKind::DailyUsage, 8, 1));
        assert_ne!(a, line_id_of(SourceKind::InvoiceLines, 7, 1));
        assert_eq!(a, line_id_of(SourceKind::DailyUsage, 7, 1));
    }
}
