//! The close report's charts, drawn as SVG text by plotters (its SVG backend only: no fonts are loaded, the
//! browser lays out the labels), inlined into the page. Amounts become `f64` here for pixel positions only;
//! every number a reader can read on the page is printed beside the chart from the exact decimals.

use anyhow::{Result, anyhow};
use chrono::Datelike;
use plotters::prelude::*;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::data::{Margin, Spend, Status};

const BLUE: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);
const GREEN: RGBColor = RGBColor(0x2e, 0x7d, 0x32);
const AMBER: RGBColor = RGBColor(0xc7, 0x7c, 0x02);
const RED: RGBColor = RGBColor(0xc6, 0x28, 0x28);
const GREY: RGBColor = RGBColor(0x75, 0x75, 0x75);

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a close-report chart: {e:?}")
}

fn colour(s: Status) -> RGBColor {
    match s {
        Status::Ok => GREEN,
        Status::Warning => AMBER,
        Status::Critical => RED,
        Status::NotJudged => GREY,
    }
}

/// Realised margin per customer (bars, coloured by how far they are from target) with each target as a black
/// tick. `rows` are the customers with priced charges.
pub fn margins(rows: &[&Margin]) -> Result<String> {
    let n = rows.len().max(1);
    let pct = |d: Decimal| f(d) * 100.0;
    let values = rows.iter().flat_map(|m| [m.realised.map(pct), m.target.map(pct)]).flatten();
    let (lo, hi) = values.fold((0.0f64, 10.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let names: Vec<String> = rows.iter().map(|m| if m.currency.is_empty() { m.name.clone() } else { format!("{} ({})", m.name, m.currency) }).collect();
    let height = 60 + 32 * n as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(280)
            // `0..k` is inclusive of k in plotters' integer coordinates: n bands are `0..n - 1`.
            .build_cartesian_2d(lo..hi, (0..n.max(2) - 1).into_segmented())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .max_light_lines(1)
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => (n - 1).checked_sub(*i).and_then(|k| names.get(k)).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| format!("{v:.0} %"))
            .x_desc("realised margin (bar) and target (black tick), % of price")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, m)| {
                let v = pct(m.realised?);
                let y = n - 1 - i;
                let mut r = Rectangle::new([(0.0, SegmentValue::Exact(y)), (v, SegmentValue::Exact(y + 1))], colour(m.status).filled());
                r.set_margin(5, 5, 0, 0);
                Some(r)
            }))
            .map_err(err)?;
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, m)| {
                let t = pct(m.target?);
                let y = n - 1 - i;
                Some(PathElement::new(vec![(t, SegmentValue::Exact(y)), (t, SegmentValue::Exact(y + 1))], BLACK.stroke_width(3)))
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Month-to-date consumption of one customer by day (cumulative, solid) against its monthly budget pro rata by
/// day (dashed), when it has one.
pub fn spend(s: &Spend, days_in_month: u32) -> Result<String> {
    let mut cumulative = Vec::new();
    let mut total = Decimal::ZERO;
    let last_day = s.by_day.last().map(|(d, _)| d.day()).unwrap_or(1);
    let mut it = s.by_day.iter().peekable();
    for day in 1..=last_day {
        while let Some((d, v)) = it.peek() {
            if d.day() > day {
                break;
            }
            total += *v;
            it.next();
        }
        cumulative.push((day as f64, f(total)));
    }
    let budget = s.budget.map(f);
    let top = budget.unwrap_or(0.0).max(f(total)).max(1.0) * 1.08;
    let dm = days_in_month as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (400, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..dm, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(7)
            .y_labels(5)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| group(*v))
            .x_desc("day of month")
            .max_light_lines(1)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        if let Some(b) = budget {
            chart.draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (dm, b)], 6, 4, RED.stroke_width(2))).map_err(err)?;
        }
        let mut line = vec![(0.0, 0.0)];
        line.extend(cumulative);
        chart.draw_series(LineSeries::new(line, BLUE.stroke_width(2))).map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// An axis amount with thousands separators and no decimals (axis ticks only).
fn group(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn spend_chart_draws_the_cumulative_line_and_the_budget() {
        let day = |n| NaiveDate::from_ymd_opt(2025, 6, n).unwrap();
        let s = Spend { customer_id: "c".into(), name: "C".into(), currency: "EUR".into(), budget: Some(d("3000")), by_day: vec![(day(1), d("100")), (day(3), d("50.5"))] };
        let svg = spend(&s, 30).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // The budget is dashed: many short segments; the consumption one polyline.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        assert!(svg.contains("day of month"));
        let none = spend(&Spend { budget: None, ..s }, 30).unwrap();
        assert!(none.matches("<polyline").count() < svg.matches("<polyline").count());
    }

    #[test]
    fn axis_amounts_are_grouped() {
        assert_eq!(group(1234567.4), "1,234,567");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(-1500.0), "-1,500");
    }
}
