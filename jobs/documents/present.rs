//! Presentation rules shared by every invoice export (CSV, XLSX, PDF, HTML; issue #14 point 1): what a clerk
//! sees in each column. They change how numbers are *shown*, never the invoice: the amount printed is always the
//! exact, once-rounded `fct_invoice_lines.amount`.
//!
//! - **Quantity and unit** only where they mean something: a line with one unit of measure, or with a unit price
//!   (seats, PSA hours, manual lines). A line mixing meters (hours, GB, requests) shows no quantity; its note
//!   says how many charges it sums instead.
//! - **Unit prices** are rounded for display, half-even, to the currency's minor unit plus
//!   [`UNIT_PRICE_EXTRA_PLACES`] places (EUR 24.5 → `24.5000`, JPY 3,553.088 → `3,553.09`), always with that
//!   many places, so one column has one format.
//! - **Prorated lines** say so: `prorated: 98.2 % of 37 × 24.5000`. The factor is the line's exact amount over
//!   quantity × whole-unit price (Microsoft's own `EffectiveUnitPrice / UnitPrice`, weighted over the line's
//!   charges); it is shown to one decimal place of a percent.
//! - **Quantities** are shown with one number of places per document: the most any shown quantity of the invoice
//!   needs, at most [`QUANTITY_MAX_PLACES`] in documents (rounded half-even for display), exact in the CSV.
//! - **Amounts** with exactly the currency's minor-unit places.
//! - **Locale** (the customer's `locale` in customers.csv) sets the digit grouping, the decimal mark and the date
//!   format of the PDF and HTML documents; the CSV stays machine-readable (`.` decimal mark, no grouping,
//!   ISO dates) and the XLSX carries number formats that Excel shows in the reader's own locale.

use chrono::{Datelike, NaiveDate};
use rust_decimal::{Decimal, RoundingStrategy};

/// Places shown beyond the currency's minor unit in unit prices.
pub const UNIT_PRICE_EXTRA_PLACES: u32 = 2;

/// Most places a quantity is shown with in the PDF and HTML documents.
pub const QUANTITY_MAX_PLACES: u32 = 4;

/// The locales documents are formatted for (`locale` in customers.csv; default `en-US`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Locale {
    #[default]
    EnUs,
    EnGb,
    DeDe,
    FrFr,
    NlNl,
    JaJp,
}

impl Locale {
    /// Every supported locale, by its BCP 47 tag.
    pub const ALL: [(&'static str, Locale); 6] = [
        ("en-US", Locale::EnUs),
        ("en-GB", Locale::EnGb),
        ("de-DE", Locale::DeDe),
        ("fr-FR", Locale::FrFr),
        ("nl-NL", Locale::NlNl),
        ("ja-JP", Locale::JaJp),
    ];

    /// The locale a tag names, case-insensitively, `_` or `-` between language and region.
    pub fn parse(tag: &str) -> Option<Locale> {
        let t = tag.trim().replace('_', "-");
        Self::ALL.iter().find(|(name, _)| name.eq_ignore_ascii_case(&t)).map(|(_, l)| *l)
    }

    /// The BCP 47 tag (also the `lang` of the HTML document).
    pub fn tag(self) -> &'static str {
        Self::ALL.iter().find(|(_, l)| *l == self).map(|(n, _)| *n).unwrap_or("en-US")
    }

    /// (digit group separator, decimal mark), as CLDR has them (French groups with a narrow no-break space).
    fn marks(self) -> (&'static str, &'static str) {
        match self {
            Locale::EnUs | Locale::EnGb | Locale::JaJp => (",", "."),
            Locale::DeDe | Locale::NlNl => (".", ","),
            Locale::FrFr => ("\u{202f}", ","),
        }
    }

    /// A date in the locale's short numeric form.
    pub fn date(self, d: NaiveDate) -> String {
        let (y, m, day) = (d.year(), d.month(), d.day());
        match self {
            Locale::EnUs => format!("{m:02}/{day:02}/{y}"),
            Locale::EnGb | Locale::FrFr => format!("{day:02}/{m:02}/{y}"),
            Locale::DeDe => format!("{day:02}.{m:02}.{y}"),
            Locale::NlNl => format!("{day:02}-{m:02}-{y}"),
            Locale::JaJp => format!("{y}/{m:02}/{day:02}"),
        }
    }

    /// `d` with exactly `places` decimals (rounded half-even when it has more), grouped by thousands.
    pub fn number(self, d: Decimal, places: u32) -> String {
        let (group, mark) = self.marks();
        let text = fixed(d, places);
        let (neg, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let mut grouped = String::with_capacity(int.len() + int.len() / 3 * 3);
        for (i, ch) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                grouped.push_str(group);
            }
            grouped.push(ch);
        }
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        out.push_str(&grouped);
        if !frac.is_empty() {
            out.push_str(mark);
            out.push_str(frac);
        }
        out
    }

    /// An amount with the currency's minor-unit places.
    pub fn money(self, d: Decimal, currency: &str) -> String {
        self.number(d, minor(currency))
    }

    /// An amount with its currency code, placed as the locale writes it (`EUR 1,234.50`, `1.234,50 EUR`).
    pub fn money_code(self, d: Decimal, currency: &str) -> String {
        match self {
            Locale::EnUs | Locale::EnGb | Locale::JaJp => format!("{currency} {}", self.money(d, currency)),
            _ => format!("{} {currency}", self.money(d, currency)),
        }
    }

    /// A fraction as a percent with one decimal place (`0.982` → `98.2 %`).
    pub fn percent(self, fraction: Decimal) -> String {
        let sep = if matches!(self, Locale::EnUs | Locale::EnGb | Locale::JaJp) { "" } else { "\u{a0}" };
        format!("{}{sep}%", self.number(fraction * Decimal::ONE_HUNDRED, 1))
    }
}

/// The currency's ISO 4217 minor unit (2 when unknown).
pub fn minor(currency: &str) -> u32 {
    pipeline::currency::minor_unit(currency).unwrap_or(2)
}

/// `d` rounded half-even to `places` and written with exactly that many decimals (`.` mark, no grouping).
pub fn fixed(d: Decimal, places: u32) -> String {
    let mut v = d.round_dp_with_strategy(places, RoundingStrategy::MidpointNearestEven);
    v.rescale(places);
    v.to_string()
}

/// Places unit prices of `currency` are shown with.
pub fn unit_price_places(currency: &str) -> u32 {
    minor(currency) + UNIT_PRICE_EXTRA_PLACES
}

/// A unit price rounded for display (half-even, to [`unit_price_places`]).
pub fn display_unit_price(p: Decimal, currency: &str) -> Decimal {
    p.round_dp_with_strategy(unit_price_places(currency), RoundingStrategy::MidpointNearestEven)
}

/// Places one column of quantities needs: the most any of them has (trailing zeros aside), at most `cap`.
pub fn quantity_places<'a>(quantities: impl IntoIterator<Item = &'a Decimal>, cap: u32) -> u32 {
    quantities.into_iter().map(|q| q.normalize().scale()).max().unwrap_or(0).min(cap)
}

/// One invoice line as the tables hold it (the columns presentation reads).
#[derive(Clone, Debug, Default)]
pub struct RawLine {
    pub line_no: i64,
    pub line_type: String,
    pub product_family: String,
    pub description: String,
    pub quantity: Option<Decimal>,
    pub unit: String,
    pub unit_price: Option<Decimal>,
    pub amount_unrounded: Option<Decimal>,
    pub amount: Decimal,
    pub part_count: i64,
    pub subscription_id: String,
    pub unit_path: String,
    pub corrected_period: String,
    pub invoice_line_id: String,
}

/// What a line shows in the quantity, unit, unit price and note columns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// The quantity, when the line has one unit of measure or a unit price.
    pub quantity: Option<Decimal>,
    pub unit: String,
    /// The whole-unit price rounded for display.
    pub unit_price: Option<Decimal>,
    /// The proration factor, when the amount is not quantity × unit price.
    pub prorated: Option<Decimal>,
    /// Charges the line sums, when it shows no quantity.
    pub charges: Option<i64>,
}

/// The presentation of one line (the rules at the top of this file).
pub fn shown(l: &RawLine, currency: &str) -> Shown {
    let has_quantity = !l.unit.trim().is_empty() || l.unit_price.is_some();
    let quantity = if has_quantity { l.quantity } else { None };
    let prorated = match (quantity, l.unit_price, l.amount_unrounded) {
        (Some(q), Some(p), Some(a)) if !q.is_zero() && !p.is_zero() => {
            q.checked_mul(p).and_then(|whole| a.checked_div(whole)).filter(|f| *f != Decimal::ONE)
        }
        _ => None,
    };
    Shown {
        quantity,
        unit: if has_quantity { l.unit.clone() } else { String::new() },
        unit_price: l.unit_price.map(|p| display_unit_price(p, currency)),
        prorated,
        charges: if has_quantity || l.part_count == 0 { None } else { Some(l.part_count) },
    }
}

/// The note of a line, in words (`prorated: 98.2% of 37 × 24.5000`, `sums 412 charges, no common unit`),
/// formatted for `loc`.
pub fn note(s: &Shown, currency: &str, qty_places: u32, loc: Locale) -> String {
    if let (Some(f), Some(q), Some(p)) = (s.prorated, s.quantity, s.unit_price) {
        return format!(
            "prorated: {} of {} × {}",
            loc.percent(f),
            loc.number(q, qty_places),
            loc.number(p, unit_price_places(currency))
        );
    }
    match s.charges {
        Some(1) => "1 charge, no unit of measure".into(),
        Some(n) => format!("sums {n} charges, no common unit"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_and_dates_per_locale() {
        // Hand-written from CLDR's patterns for each locale.
        let v = d("-1234567.891");
        let cases = [
            (Locale::EnUs, "-1,234,567.89", "06/30/2025"),
            (Locale::EnGb, "-1,234,567.89", "30/06/2025"),
            (Locale::DeDe, "-1.234.567,89", "30.06.2025"),
            (Locale::FrFr, "-1\u{202f}234\u{202f}567,89", "30/06/2025"),
            (Locale::NlNl, "-1.234.567,89", "30-06-2025"),
            (Locale::JaJp, "-1,234,567.89", "2025/06/30"),
        ];
        let day = NaiveDate::from_ymd_opt(2025, 6, 30).unwrap();
        for (loc, num, date) in cases {
            assert_eq!(loc.number(v, 2), num, "{loc:?}");
            assert_eq!(loc.date(day), date, "{loc:?}");
        }
        assert_eq!(Locale::JaJp.money(d("3553"), "JPY"), "3,553");
        assert_eq!(Locale::EnUs.money(d("0.5"), "KWD"), "0.500");
        assert_eq!(Locale::DeDe.money_code(d("1234.5"), "EUR"), "1.234,50 EUR");
        assert_eq!(Locale::EnGb.money_code(d("999"), "GBP"), "GBP 999.00");
        assert_eq!(Locale::EnUs.number(d("999.5"), 0), "1,000"); // half-even: 999.5 → 1000
        assert_eq!(Locale::EnUs.number(d("998.5"), 0), "998");
        assert_eq!(Locale::EnUs.number(d("12"), 3), "12.000");
        assert_eq!(Locale::EnUs.number(d("123"), 0), "123");
        assert_eq!(Locale::EnUs.percent(d("0.98214")), "98.2%");
        assert_eq!(Locale::FrFr.percent(d("0.5")), "50,0\u{a0}%");
        assert_eq!(Locale::parse("de_de"), Some(Locale::DeDe));
        assert_eq!(Locale::parse("EN-gb"), Some(Locale::EnGb));
        assert_eq!(Locale::parse("pt-BR"), None);
    }

    #[test]
    fn unit_prices_show_the_minor_unit_plus_two_places() {
        assert_eq!(fixed(display_unit_price(d("3553.088"), "JPY"), unit_price_places("JPY")), "3553.09");
        assert_eq!(fixed(display_unit_price(d("32.252248"), "GBP"), unit_price_places("GBP")), "32.2522");
        assert_eq!(fixed(display_unit_price(d("24.5"), "EUR"), unit_price_places("EUR")), "24.5000");
        assert_eq!(fixed(display_unit_price(d("0.00125"), "USD"), unit_price_places("USD")), "0.0012"); // half-even
        assert_eq!(fixed(display_unit_price(d("0.00135"), "USD"), unit_price_places("USD")), "0.0014");
    }

    #[test]
    fn mixed_units_show_no_quantity_and_prorated_seats_say_why() {
        let usage = RawLine {
            quantity: Some(d("6981.77223597")),
            unit: String::new(),
            amount_unrounded: Some(d("812.3456")),
            amount: d("812.35"),
            part_count: 412,
            ..RawLine::default()
        };
        let s = shown(&usage, "USD");
        assert_eq!((s.quantity, s.charges, s.prorated), (None, Some(412), None));
        assert_eq!(note(&s, "USD", 0, Locale::EnUs), "sums 412 charges, no common unit");

        // 37 seats at 24.50, Microsoft's factor 0.982 on every seat: 37 × 24.50 × 0.982 = 906.5 × 0.982 = 890.183.
        let seats = RawLine {
            quantity: Some(d("37")),
            unit: "Licenses".into(),
            unit_price: Some(d("24.5")),
            amount_unrounded: Some(d("890.183")),
            amount: d("890.18"),
            part_count: 2,
            ..RawLine::default()
        };
        let s = shown(&seats, "EUR");
        assert_eq!(s.prorated, Some(d("0.982")));
        assert_eq!(note(&s, "EUR", 0, Locale::EnUs), "prorated: 98.2% of 37 × 24.5000");
        assert_eq!(note(&s, "EUR", 0, Locale::DeDe), "prorated: 98,2\u{a0}% of 37 × 24,5000");

        // A whole month: no note; a manual line without unit still shows its quantity (it has a unit price).
        let whole = RawLine { amount_unrounded: Some(d("906.5")), ..seats.clone() };
        assert_eq!(shown(&whole, "EUR").prorated, None);
        let manual = RawLine { quantity: Some(d("2")), unit_price: Some(d("50")), amount_unrounded: Some(d("100")), ..RawLine::default() };
        assert_eq!(shown(&manual, "EUR").quantity, Some(d("2")));
        assert_eq!(quantity_places([&d("1.50"), &d("2.125"), &d("3")], 4), 3);
        assert_eq!(quantity_places([&d("6981.77223597")], 4), 4);
    }
}
