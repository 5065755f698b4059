//! Reading typed cells out of small collected frames and building typed columns back, for the invoice stage.
//!
//! Invoices and invoice lines are small (thousands of rows), so they are assembled in Rust with `rust_decimal`;
//! these helpers are the only place that converts between Polars columns and Rust values, so a wrong type or a
//! missing column is one clear error instead of a silent null.

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;

use crate::decimal::{any_to_decimal, to_mantissa};
use crate::error::{PipelineError, Result};

const STAGE: &str = "fct_invoices";

fn column<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Column> {
    df.column(name).map_err(PipelineError::polars(STAGE))
}

/// A text column as owned strings; empty text counts as null (reference CSVs write "no value" as empty).
pub fn strs(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let c = column(df, name)?
        .str()
        .map_err(PipelineError::polars(STAGE))?;
    Ok(c.iter()
        .map(|v| v.filter(|s| !s.is_empty()).map(str::to_string))
        .collect())
}

/// A decimal column as `rust_decimal` values.
pub fn decs(df: &DataFrame, name: &str) -> Result<Vec<Option<Decimal>>> {
    let c = column(df, name)?;
    (0..c.len())
        .map(|i| {
            c.get(i)
                .map(|v| any_to_decimal(&v))
                .map_err(PipelineError::polars(STAGE))
        })
        .collect()
}

/// A date column.
pub fn dates(df: &DataFrame, name: &str) -> Result<Vec<Option<NaiveDate>>> {
    let c = column(df, name)?
        .date()
        .map_err(PipelineError::polars(STAGE))?;
    Ok(c.as_date_iter().collect())
}

/// An integer column (any integer width) as i64.
pub fn ints(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    let c = column(df, name)?
        .cast(&DataType::Int64)
        .map_err(PipelineError::polars(STAGE))?;
    Ok(c.i64()
        .map_err(PipelineError::polars(STAGE))?
        .iter()
        .collect())
}

/// A boolean column.
pub fn bools(df: &DataFrame, name: &str) -> Result<Vec<Option<bool>>> {
    let c = column(df, name)?
        .bool()
        .map_err(PipelineError::polars(STAGE))?;
    Ok(c.iter().collect())
}

/// A `Decimal(38, 18)` column. Values are rounded half-even to 18 places first, as Polars would, because
/// `to_mantissa` truncates extra digits.
pub fn dec_column(name: &str, values: &[Option<Decimal>]) -> Column {
    let m = values
        .iter()
        .map(|v| v.map(|d| to_mantissa(d.round_dp(schemas::MONEY_SCALE as u32))));
    Int128Chunked::from_iter_options(name.into(), m)
        .into_decimal_unchecked(schemas::MONEY_PRECISION, schemas::MONEY_SCALE)
        .into_series()
        .into_column()
}

/// A date column.
pub fn date_column(name: &str, values: &[Option<NaiveDate>]) -> Column {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date");
    let days = values
        .iter()
        .map(|v| v.map(|d| (d - epoch).num_days() as i32));
    Int32Chunked::from_iter_options(name.into(), days)
        .into_date()
        .into_series()
        .into_column()
}

/// A text column.
pub fn str_column(name: &str, values: &[Option<String>]) -> Column {
    Column::new(name.into(), values)
}

/// An Int64 column.
pub fn int_column(name: &str, values: &[i64]) -> Column {
    Column::new(name.into(), values)
}

/// Builds a frame from columns and checks it against the table's schema (names, order and types), so that a
/// mistake in the stage is an error here rather than a surprise for the writer.
pub fn frame(columns: Vec<Column>, schema: &Schema, table: &'static str) -> Result<DataFrame> {
    let df =
        if columns.first().is_some_and(|c| c.is_empty()) && columns.iter().all(|c| c.is_empty()) {
            DataFrame::empty_with_schema(schema)
        } else {
            DataFrame::new_infer_height(columns).map_err(PipelineError::polars(STAGE))?
        };
    let got = df.schema();
    if got.as_ref() != schema {
        return Err(PipelineError::Invariant {
            stage: STAGE,
            message: format!(
                "`{table}` was built with columns {:?}, expected {:?}; fix the invoice stage",
                got, schema
            ),
        });
    }
    Ok(df)
}
