//! Exact decimals in Polars plans: literals, conversions to and from `rust_decimal`, and the checked parse of
//! decimal text that counts values with more than 18 fractional digits instead of rounding them silently.
//!
//! Every money column is `Decimal(38, 18)` (`schemas::money()`). With both operands at scale 18, Polars'
//! `*` and `/` keep scale 18 and round half-even, exactly as DESIGN §5 asks; never mix in float literals
//! (`lit(1.1)` turns a decimal into Float64) and never use `mean` on money.

use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{MONEY_PRECISION, MONEY_SCALE};

/// A `Decimal(38, 18)` literal.
pub fn dec_lit(d: Decimal) -> Expr {
    lit(Scalar::new_decimal(to_mantissa(d), MONEY_PRECISION, MONEY_SCALE))
}

/// A `Decimal(38, 18)` literal from its text, for constants written in code (`"0.15"`).
///
/// Panics on text that is not a decimal: only for literals in our own code and tests.
pub fn dec(text: &str) -> Expr {
    dec_lit(text.parse::<Decimal>().expect("decimal literal in code"))
}

/// A typed null of the money type.
pub fn null_dec() -> Expr {
    lit(NULL).cast(schemas::money())
}

/// `x` with 0 turned into null, for a divisor: `a / nonzero(b)` is null where `b` is 0 instead of failing the
/// whole plan. Polars evaluates every branch of `when/then/otherwise` on every row and bails on a zero
/// `Decimal` divisor (`division by zero Decimal`), so a division must be guarded inside its own expression,
/// never by the branch condition that selects it (reference/rust-stack.md).
pub fn nonzero(x: Expr) -> Expr {
    when(x.clone().eq(dec("0"))).then(null_dec()).otherwise(x)
}

/// `x` where `|x| ≥ floor`, else null: a divisor that can neither be 0 nor so small that the quotient of a
/// money amount overflows `Decimal(38, 18)` (whose integer part holds 20 digits).
pub fn not_tiny(x: Expr, floor: &str) -> Expr {
    when(x.clone().abs().lt(dec(floor))).then(null_dec()).otherwise(x)
}

/// The mantissa of `d` at scale 18 (what Polars stores for `Decimal(38, 18)`).
pub fn to_mantissa(d: Decimal) -> i128 {
    let scale = d.scale() as i32;
    let m = d.mantissa();
    let shift = MONEY_SCALE as i32 - scale;
    if shift >= 0 { m * 10i128.pow(shift as u32) } else { m / 10i128.pow((-shift) as u32) }
}

/// A `rust_decimal` from a scale-18 mantissa, normalised (trailing zeros dropped).
///
/// `rust_decimal` holds 28 significant digits: a value needing more (never seen in billing data: it would be
/// above 10^10 with all 18 fractional digits used) is rounded half-even to fit.
pub fn from_mantissa(m: i128) -> Decimal {
    let mut m = m;
    let mut scale = MONEY_SCALE as u32;
    // rust_decimal's mantissa is 96 bits: drop fractional digits (half-even) until it fits.
    while m.unsigned_abs() >= (1u128 << 96) && scale > 0 {
        let q = m / 10;
        let r = m % 10;
        m = if r.abs() > 5 || (r.abs() == 5 && q % 2 != 0) { q + r.signum() } else { q };
        scale -= 1;
    }
    Decimal::from_i128_with_scale(m, scale).normalize()
}

/// Reads a `Decimal(38, 18)` value out of an `AnyValue` (null → None).
pub fn any_to_decimal(v: &AnyValue) -> Option<Decimal> {
    match v {
        AnyValue::Decimal(m, _p, s) => {
            let m = *m;
            let s = *s;
            if s == MONEY_SCALE { Some(from_mantissa(m)) } else { Some(Decimal::from_i128_with_scale(m, s as u32).normalize()) }
        }
        AnyValue::Int64(i) => Some(Decimal::from(*i)),
        AnyValue::Int32(i) => Some(Decimal::from(*i)),
        AnyValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Sum of a decimal column of a collected frame, as `rust_decimal` (nulls count 0).
pub fn column_sum(df: &DataFrame, name: &str) -> PolarsResult<Decimal> {
    let s = df.column(name)?.as_materialized_series().sum_reduce()?;
    Ok(any_to_decimal(&s.value().clone()).unwrap_or_default())
}

/// How many fractional digits a decimal text has, ignoring an exponent's effect (`1.5E-3` → 4 after shifting).
/// Used to count values that will be rounded at ingest. Returns 0 for text that is not a plain decimal.
pub fn fractional_digits(text: &str) -> usize {
    let t = text.trim();
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (t, 0),
    };
    let frac = mantissa.split_once('.').map(|(_, f)| f.trim_end_matches('0').len()).unwrap_or(0) as i64;
    (frac - exp).max(0) as usize
}

/// Expression: true where the decimal text in `c` has more fractional digits than the money scale keeps.
/// Plain regex on the text: a value like `0.1999968000511991808131` (22 places) matches; `7.10833E-05` is
/// handled by the caller with [`fractional_digits`] when exponents occur.
pub fn exceeds_scale(c: Expr) -> Expr {
    c.str().contains(lit(format!(r"^\s*[-+]?\d*\.\d{{{},}}", MONEY_SCALE + 1)), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mantissa_round_trip() {
        for s in ["0", "1.5", "-0.000000000000000001", "679793.84", "1234567890.123456789012"] {
            let d: Decimal = s.parse().unwrap();
            assert_eq!(from_mantissa(to_mantissa(d)), d.normalize(), "{s}");
        }
    }

    #[test]
    fn fractional_digit_count() {
        assert_eq!(fractional_digits("0.1999968000511991808131"), 22);
        assert_eq!(fractional_digits("7.10833E-05"), 10);
        assert_eq!(fractional_digits("1.50"), 1);
        assert_eq!(fractional_digits("12"), 0);
        assert_eq!(fractional_digits("1.5E+3"), 0);
    }

    #[test]
    fn decimal_product_keeps_scale_18_and_rounds_half_even() {
        let df = df!("a" => ["1000000.123456789", "0.000000000000000005"], "b" => ["1000000", "0.5"]).unwrap();
        let out = df
            .lazy()
            .select([(col("a").cast(schemas::money()) * col("b").cast(schemas::money())).alias("p")])
            .collect()
            .unwrap();
        assert_eq!(out.column("p").unwrap().dtype(), &schemas::money());
        let v: Vec<Decimal> = (0..2).map(|i| any_to_decimal(&out.column("p").unwrap().get(i).unwrap()).unwrap()).collect();
        assert_eq!(v[0], "1000000123456.789".parse::<Decimal>().unwrap());
        // 5e-18 × 0.5 = 2.5e-18 → half-even at 18 places → 2e-18
        assert_eq!(v[1], "0.000000000000000002".parse::<Decimal>().unwrap());
    }
}
