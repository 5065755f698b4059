//! Revenue schedules: straight-line by days over each charge's term, summed per invoice line and month, rounded
//! to the currency's minor unit with the remainder in the last month, so a schedule sums exactly to its line.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::context::{Period, RoundingMode};
use crate::currency::round;

/// A charge covering more than a month: its price (in invoice currency, unrounded) and its term (inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermPart {
    pub price: Decimal,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// Days of the inclusive range `[start, end]` that fall in `month`.
pub fn days_in(month: Period, start: NaiveDate, end: NaiveDate) -> i64 {
    let a = start.max(month.start());
    let b = end.min(month.end());
    if b < a { 0 } else { (b - a).num_days() + 1 }
}

/// A term is longer than a month when it runs past the day before its monthly anniversary (a 15 June – 14 July
/// seat is one month; 15 June 2025 – 14 June 2026 is twelve).
pub fn longer_than_a_month(start: NaiveDate, end: NaiveDate) -> bool {
    match start.checked_add_months(chrono::Months::new(1)).and_then(|d| d.pred_opt()) {
        Some(one_month) => end > one_month,
        None => false,
    }
}

/// One month of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub month: Period,
    /// Days of the line's term in the month.
    pub days: i64,
    pub amount: Decimal,
}

/// The schedule of one invoice line billed in `period`: `amount` is the line's rounded amount, `unrounded` its
/// Σ price, `parts` the charges behind it that cover more than a month (the rest of the line is earned in
/// `period`). Months before `period` (a term that started earlier) are caught up in `period`. Each part is
/// spread by days (its last month takes what the others leave, so a part sums exactly to its price); the months
/// are rounded to `dp` places by `mode`, except the last, which takes the remainder to `amount`.
/// Returns no slices when everything falls in `period` (nothing to defer).
pub fn straight_line(amount: Decimal, unrounded: Decimal, parts: &[TermPart], period: Period, dp: u32, mode: RoundingMode) -> Vec<Slice> {
    let mut months: BTreeMap<Period, Decimal> = BTreeMap::new();
    let mut now = unrounded;
    for p in parts {
        now -= p.price;
    }
    months.insert(period, now);
    let (mut first, mut last) = (NaiveDate::MAX, NaiveDate::MIN);
    for p in parts {
        let (s, e) = (p.start.min(p.end), p.end.max(p.start));
        first = first.min(s);
        last = last.max(e);
        let total = (e - s).num_days() + 1;
        let mut given = Decimal::ZERO;
        let mut m = Period::of(s);
        let end_month = Period::of(e);
        while m <= end_month {
            let share = if m == end_month {
                p.price - given
            } else {
                p.price * Decimal::from(days_in(m, s, e)) / Decimal::from(total)
            };
            given += share;
            *months.entry(m.max(period)).or_default() += share;
            m = m.next();
        }
    }
    if months.len() < 2 {
        return Vec::new();
    }
    let n = months.len();
    let mut out = Vec::with_capacity(n);
    let mut given = Decimal::ZERO;
    for (i, (m, u)) in months.into_iter().enumerate() {
        let a = if i + 1 == n { amount - given } else { round(u, dp, mode) };
        given += a;
        let days = days_in(m, first, last);
        out.push(Slice { month: m, days, amount: a });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }
    fn p(s: &str) -> Period {
        s.parse().unwrap()
    }

    #[test]
    fn a_month_is_a_month_from_any_day() {
        assert!(!longer_than_a_month(day("2025-06-15"), day("2025-07-14")));
        assert!(!longer_than_a_month(day("2025-01-31"), day("2025-02-27")));
        assert!(!longer_than_a_month(day("2025-06-01"), day("2025-06-30")));
        assert!(longer_than_a_month(day("2025-06-15"), day("2025-07-15")));
        assert!(longer_than_a_month(day("2025-06-15"), day("2026-06-14")));
    }

    #[test]
    fn an_annual_seat_from_the_15th_by_days() {
        // 365.00 over 15 Jun 2025 – 14 Jun 2026 (365 days): 1.00 a day. June 16 days, July 31, ..., June 2026 14.
        let s = straight_line(d("365.00"), d("365"), &[TermPart { price: d("365"), start: day("2025-06-15"), end: day("2026-06-14") }], p("2025-06"), 2, RoundingMode::HalfEven);
        assert_eq!(s.len(), 13);
        assert_eq!((s[0].month, s[0].days, s[0].amount), (p("2025-06"), 16, d("16.00")));
        assert_eq!((s[1].month, s[1].days, s[1].amount), (p("2025-07"), 31, d("31.00")));
        assert_eq!((s[8].month, s[8].days, s[8].amount), (p("2026-02"), 28, d("28.00")));
        assert_eq!((s[12].month, s[12].days, s[12].amount), (p("2026-06"), 14, d("14.00")));
        assert_eq!(s.iter().map(|x| x.amount).sum::<Decimal>(), d("365.00"));
    }

    #[test]
    fn the_remainder_goes_to_the_last_month() {
        // 100.00 over 1 Jul 2025 – 30 Jun 2026 (365 days), billed in July: July 31/365 × 100 = 8.4931... → 8.49.
        let s = straight_line(d("100.00"), d("100"), &[TermPart { price: d("100"), start: day("2025-07-01"), end: day("2026-06-30") }], p("2025-07"), 2, RoundingMode::HalfEven);
        assert_eq!(s[0].amount, d("8.49"));
        // August also 31 days → 8.49; the rounded months before June 2026 sum to 91.76 by hand:
        // Jul 8.49, Aug 8.49, Sep 8.22, Oct 8.49, Nov 8.22, Dec 8.49, Jan 8.49, Feb 7.67, Mar 8.49, Apr 8.22, May 8.49.
        let hand = ["8.49", "8.49", "8.22", "8.49", "8.22", "8.49", "8.49", "7.67", "8.49", "8.22", "8.49"];
        for (i, h) in hand.iter().enumerate() {
            assert_eq!(s[i].amount, d(h), "month {}", s[i].month);
        }
        assert_eq!(s[11].amount, d("100.00") - hand.iter().map(|h| d(h)).sum::<Decimal>());
        assert_eq!(s[11].amount, d("8.24"));
    }

    #[test]
    fn monthly_charges_on_the_line_are_earned_now_and_earlier_months_are_caught_up() {
        // A line of 50 (monthly seats) + 120 (a term 1 May 2025 – 30 Apr 2026 billed late, in June).
        let s = straight_line(d("170.00"), d("170"), &[TermPart { price: d("120"), start: day("2025-05-01"), end: day("2026-04-30") }], p("2025-06"), 2, RoundingMode::HalfEven);
        // June: 50 + May (31/365 × 120 = 10.19...) + June (30/365 × 120 = 9.86...) = 70.05...
        assert_eq!(s[0].month, p("2025-06"));
        assert_eq!(s[0].amount, d("70.05"));
        assert_eq!(s.last().unwrap().month, p("2026-04"));
        assert_eq!(s.iter().map(|x| x.amount).sum::<Decimal>(), d("170.00"));
    }

    #[test]
    fn a_term_already_over_is_not_a_schedule() {
        let s = straight_line(d("10.00"), d("10"), &[TermPart { price: d("10"), start: day("2025-01-01"), end: day("2025-05-31") }], p("2025-06"), 2, RoundingMode::HalfEven);
        assert!(s.is_empty());
    }
}
