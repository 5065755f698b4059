//! Currencies: ISO 4217 minor units from the maintained `iso_currency` table (JPY 0, EUR 2, KWD 3, ...) and the
//! one rounding of an invoice line by the configured mode.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::context::RoundingMode;

/// Digits after the decimal point of a currency's minor unit, or `None` for a code that is not ISO 4217.
/// Codes without a minor unit in the table (funds, metals) count as 2.
pub fn minor_unit(code: &str) -> Option<u32> {
    let c = iso_currency::Currency::from_code(code.trim())?;
    Some(c.exponent().map(u32::from).unwrap_or(2))
}

/// Rounds an amount to `dp` places by the configured mode: half-even, half-up (ties away from zero) or down
/// (toward zero).
pub fn round(amount: Decimal, dp: u32, mode: RoundingMode) -> Decimal {
    let strategy = match mode {
        RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
        RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
        RoundingMode::Down => RoundingStrategy::ToZero,
    };
    amount.round_dp_with_strategy(dp, strategy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn minor_units_come_from_the_table() {
        assert_eq!(minor_unit("JPY"), Some(0));
        assert_eq!(minor_unit("EUR"), Some(2));
        assert_eq!(minor_unit("KWD"), Some(3));
        assert_eq!(minor_unit("BHD"), Some(3));
        assert_eq!(minor_unit("EURO"), None);
    }

    #[test]
    fn rounding_modes_on_ties_and_negatives() {
        assert_eq!(round(d("2.345"), 2, RoundingMode::HalfEven), d("2.34"));
        assert_eq!(round(d("2.345"), 2, RoundingMode::HalfUp), d("2.35"));
        assert_eq!(round(d("-2.345"), 2, RoundingMode::HalfUp), d("-2.35"));
        assert_eq!(round(d("2.349"), 2, RoundingMode::Down), d("2.34"));
        assert_eq!(round(d("-2.349"), 2, RoundingMode::Down), d("-2.34"));
        assert_eq!(round(d("1234.5"), 0, RoundingMode::HalfEven), d("1234"));
    }
}
