//! Exact parsers of Partner Center cells (decimals at scale 18, dates in the export's formats, SKU ids) and the
//! Polars expressions that apply them to a text column without going through `f64`.

use super::*;

/// Parses decimal text (plain or scientific: `-1.5`, `.5`, `7.10833E-05`, `0.00E+00`) to its mantissa at scale 18.
/// Returns the mantissa and whether digits beyond the 18th fractional place were dropped (rounded half-even).
/// `None` for text that is not a number, or whose integer part does not fit `Decimal(38, 18)`.
pub fn parse_decimal(text: &str) -> Option<(i128, bool)> {
    let t = text.trim();
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mant, exp) = match body.find(['e', 'E']) {
        Some(i) => {
            let e = &body[i + 1..];
            let e = e.strip_prefix('+').unwrap_or(e);
            if e.is_empty()
                || e.len() > 4
                || !e
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (&body[..i], e.parse::<i64>().ok()?)
        }
        None => (body, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits as one integer, with `scale` digits after the point.
    let digits: String = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let scale = frac.len() as i64 - exp;
    let target = MONEY_SCALE as i64;
    let mut rounded = false;
    let m: i128 = if digits.is_empty() {
        0
    } else if scale <= target {
        let shift = (target - scale) as usize;
        if digits.len() + shift > MONEY_PRECISION {
            return None;
        }
        digits.parse::<i128>().ok()? * 10i128.pow(shift as u32)
    } else {
        let drop = (scale - target) as usize;
        let (keep, gone) = if drop >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - drop)
        };
        if keep.len() > MONEY_PRECISION {
            return None;
        }
        let mut q: i128 = if keep.is_empty() {
            0
        } else {
            keep.parse().ok()?
        };
        // Half-even on the dropped digits; `gone` may be shorter than `drop` (leading zeros stripped).
        let padded = format!("{:0>width$}", gone, width = drop);
        rounded = padded.bytes().any(|b| b != b'0');
        let first = padded.as_bytes()[0];
        let rest_zero = padded.as_bytes()[1..].iter().all(|b| *b == b'0');
        if first > b'5' || (first == b'5' && (!rest_zero || q % 2 == 1)) {
            q += 1;
        }
        q
    };
    if m.unsigned_abs() >= 10u128.pow(MONEY_PRECISION as u32) {
        return None;
    }
    Some((if neg { -m } else { m }, rounded))
}

/// Parses the dates Partner Center writes: `MM/DD/YYYY`, `M/D/YYYY` (optionally followed by a time, as legacy
/// files do: `2/1/2019 0:00`), and ISO 8601 (`2024-01-02`, `2024-01-02T09:38:43.4669373Z`, `…T00:00:00` with no
/// zone). Microsoft's dates are UTC days, so the date part is taken as written. US order only: MS-USE warns
/// that files saved under another locale are mis-formatted, and those are rejected rather than guessed.
pub fn parse_pc_date(text: &str) -> Option<NaiveDate> {
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
        let rest = &t[10..];
        if !(rest.is_empty() || rest.starts_with('T') || rest.starts_with(' ')) {
            return None;
        }
        let y: i32 = t[..4].parse().ok()?;
        let m: u32 = t[5..7].parse().ok()?;
        let d: u32 = t[8..10].parse().ok()?;
        return NaiveDate::from_ymd_opt(y, m, d);
    }
    let date = t.split(' ').next()?;
    let mut parts = date.split('/');
    let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !(1..=2).contains(&m.len())
        || !(1..=2).contains(&d.len())
        || y.len() != 4
    {
        return None;
    }
    if ![m, d, y]
        .iter()
        .all(|p| p.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// A SkuId Excel stripped of its leading zeros (`4`, `33`): all digits and shorter than 4 characters.
pub fn sku_needs_padding(s: &str) -> bool {
    !s.is_empty() && s.len() < 4 && s.bytes().all(|b| b.is_ascii_digit())
}

fn str_udf<T, F>(e: Expr, name: &'static str, dtype: DataType, f: F) -> Expr
where
    F: Fn(&StringChunked) -> PolarsResult<T> + Send + Sync + 'static,
    T: IntoColumn,
{
    let out = dtype.clone();
    e.map(
        move |c: Column| {
            let name = c.name().clone();
            let s = c.cast(&DataType::String)?;
            let ca = s.as_materialized_series().str()?.clone();
            let mut col = f(&ca)?.into_column();
            col.rename(name);
            Ok(col)
        },
        move |_, field: &Field| Ok(Field::new(field.name().clone(), out.clone())),
    )
    .alias(name)
}

/// Expression: decimal text → `Decimal(38, 18)` (null where the text is empty or not a number).
pub fn decimal_from_text(e: Expr) -> Expr {
    let name = "decimal";
    str_udf(e, name, schemas::money(), |ca| {
        let m: Int128Chunked = ca
            .iter()
            .map(|v| v.and_then(parse_decimal).map(|(m, _)| m))
            .collect();
        Ok(m.into_decimal_unchecked(MONEY_PRECISION, MONEY_SCALE)
            .into_series())
    })
}

/// Expression: whether decimal text has significant digits beyond 18 fractional places (it will be rounded).
pub fn decimal_is_rounded(e: Expr) -> Expr {
    str_udf(e, "rounded", DataType::Boolean, |ca| {
        let b: BooleanChunked = ca
            .iter()
            .map(|v| Some(v.and_then(parse_decimal).map(|(_, r)| r).unwrap_or(false)))
            .collect();
        Ok(b.into_series())
    })
}

/// Expression: date text → `Date` (null where empty or not a date of an accepted form).
pub fn date_from_text(e: Expr) -> Expr {
    str_udf(e, "date", DataType::Date, |ca| {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)
            .map(|d| d.num_days_from_ce())
            .unwrap_or(719_163);
        let d: Int32Chunked = ca
            .iter()
            .map(|v| {
                v.and_then(parse_pc_date)
                    .map(|d| d.num_days_from_ce() - epoch)
            })
            .collect();
        Ok(d.into_date().into_series())
    })
}

/// Expression: SkuId with Excel's stripped leading zeros restored (`4` → `0004`).
pub fn pad_sku_id(e: Expr) -> Expr {
    str_udf(e, "sku_id", DataType::String, |ca| {
        let out: StringChunked = ca
            .iter()
            .map(|v| {
                v.map(|s| {
                    if sku_needs_padding(s) {
                        format!("{s:0>4}")
                    } else {
                        s.to_string()
                    }
                })
            })
            .collect();
        Ok(out.into_series())
    })
}

/// Expression: whether a SkuId cell needs padding (counted as a warning).
pub fn sku_is_padded(e: Expr) -> Expr {
    str_udf(e, "padded", DataType::Boolean, |ca| {
        let b: BooleanChunked = ca
            .iter()
            .map(|v| Some(v.map(sku_needs_padding).unwrap_or(false)))
            .collect();
        Ok(b.into_series())
    })
}
