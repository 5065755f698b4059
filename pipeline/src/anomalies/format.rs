//! How amounts, percentages and dates read in anomaly messages: `EUR 4,020.00` (the currency's ISO 4217 minor
//! unit, rounded half-even for display only: the report's `observed` and `expected` columns keep every digit),
//! `118.4 %`, `18 June 2025`.

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::currency::minor_unit;

/// An amount in a currency, with thousands separators: `EUR 4,020.00`, `JPY 104,000`.
pub fn money(amount: Decimal, currency: &str) -> String {
    format!("{currency} {}", number(amount, minor_unit(currency).unwrap_or(2)))
}

/// An amount without its currency code (`3,000.00`), for the second amount of a pair.
pub fn number(amount: Decimal, dp: u32) -> String {
    let r = amount.round_dp_with_strategy(dp, RoundingStrategy::MidpointNearestEven);
    let text = format!("{:.*}", dp as usize, r.abs());
    let (int, frac) = text.split_once('.').map(|(i, f)| (i.to_string(), Some(f.to_string()))).unwrap_or((text.clone(), None));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if r.is_sign_negative() && !r.is_zero() { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A fraction as a percentage with at most one decimal: `1.184` → `118.4 %`, `0.9` → `90 %`.
pub fn pct(fraction: Decimal) -> String {
    let p = (fraction * Decimal::ONE_HUNDRED).round_dp_with_strategy(1, RoundingStrategy::MidpointNearestEven).normalize();
    format!("{p} %")
}

/// A data date as people write it: `18 June 2025`.
pub fn day(d: NaiveDate) -> String {
    d.format("%-d %B %Y").to_string()
}

/// A range of dates: `10–12 June 2025`, or one day.
pub fn days(from: NaiveDate, to: NaiveDate) -> String {
    use chrono::Datelike;
    if from == to {
        day(from)
    } else if (from.year(), from.month()) == (to.year(), to.month()) {
        format!("{}–{}", from.day(), day(to))
    } else {
        format!("{} – {}", day(from), day(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn amounts_read_as_people_write_them() {
        assert_eq!(money(d("4020"), "EUR"), "EUR 4,020.00");
        assert_eq!(money(d("1234567.125"), "USD"), "USD 1,234,567.12");
        assert_eq!(money(d("104000.5"), "JPY"), "JPY 104,000");
        assert_eq!(money(d("-0.005"), "EUR"), "EUR 0.00");
        assert_eq!(money(d("-1500.2"), "KWD"), "KWD -1,500.200");
        assert_eq!(money(d("999.999"), "GBP"), "GBP 1,000.00");
        assert_eq!(pct(d("1.1844")), "118.4 %");
        assert_eq!(pct(d("0.9")), "90 %");
        let date = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(day(date("2025-06-08")), "8 June 2025");
        assert_eq!(days(date("2025-06-10"), date("2025-06-12")), "10–12 June 2025");
        assert_eq!(days(date("2025-05-30"), date("2025-06-02")), "30 May 2025 – 2 June 2025");
    }
}
