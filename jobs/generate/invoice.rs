//! The new-commerce invoice reconciliation file (45 columns, UTF-8 BOM, CRLF, every field quoted, as the real
//! 2021 file), one per billing currency: seat charges (`cycleCharge`, `renew`, `new` with a promotion, paired
//! −/+ `addQuantity` and `removeQuantity` lines sharing one `ReferenceId`), one-time purchases (a reservation,
//! a marketplace SaaS plan), a `customerCredit`, and the Azure plan lines that summarise the daily usage per
//! customer, meter and price.
//!
//! `Subtotal` follows Microsoft's documented formulas (fixtures README): Azure plan lines
//! `ROUNDDOWN(ROUNDDOWN(EUP × BillableQuantity, 2) × PCToBCExchangeRate, 2)`, other lines
//! `ROUNDDOWN(EUP × PCToBCExchangeRate, 2) × BillableQuantity`. Because the daily rows are rounded to 10
//! places each, the Azure plan lines are close to, not equal to, the daily sums, as in real files.

use std::path::Path;

use anyhow::{Result, bail};
use chrono::{Datelike, Months, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::{Decimal, RoundingStrategy};

use super::catalog::{self, METERS};
use super::csvout::{self, CsvOut};
use super::usage::UsageSums;
use super::world::{Customer, SeatEvent, World, guid, hex};
use super::{fmt_dec, mdy};

pub const HEADER: [&str; 45] = [
    "PartnerId",
    "CustomerId",
    "CustomerName",
    "CustomerDomainName",
    "CustomerCountry",
    "InvoiceNumber",
    "MpnId",
    "OrderId",
    "OrderDate",
    "ProductId",
    "SkuId",
    "AvailabilityId",
    "SkuName",
    "ProductName",
    "ChargeType",
    "UnitPrice",
    "Quantity",
    "Subtotal",
    "TaxTotal",
    "Total",
    "Currency",
    "PriceAdjustmentDescription",
    "PublisherName",
    "PublisherId",
    "SubscriptionDescription",
    "SubscriptionId",
    "ChargeStartDate",
    "ChargeEndDate",
    "TermAndBillingCycle",
    "EffectiveUnitPrice",
    "UnitType",
    "AlternateId",
    "BillableQuantity",
    "BillingFrequency",
    "PricingCurrency",
    "PCToBCExchangeRate",
    "PCToBCExchangeRateDate",
    "MeterDescription",
    "ReservationOrderId",
    "CreditReasonCode",
    "SubscriptionStartDate",
    "SubscriptionEndDate",
    "ReferenceId",
    "ProductQualifiers",
    "PromotionId",
];

/// Excel's ROUNDDOWN to cents: toward zero.
pub fn rounddown2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::ToZero)
}

/// Subtotal of an Azure plan (usage) line.
pub fn usage_subtotal(eup: Decimal, bq: Decimal, rate: Decimal) -> Decimal {
    rounddown2(rounddown2(eup * bq) * rate)
}

/// Subtotal of a licence, reservation or marketplace line.
pub fn licence_subtotal(eup: Decimal, bq: Decimal, rate: Decimal) -> Decimal {
    rounddown2(eup * rate) * bq
}

/// One line under construction: cells by header name.
struct Line(Vec<String>);

impl Line {
    fn new(world: &World, c: &Customer) -> Self {
        let mut l = Line(vec![String::new(); HEADER.len()]);
        l.set("PartnerId", &world.partner.id);
        l.set("CustomerId", &c.id);
        l.set("CustomerName", &c.name);
        l.set("CustomerDomainName", &c.domain);
        l.set("CustomerCountry", c.country);
        l.set("InvoiceNumber", world.invoice_number(c.bc));
        l.set("MpnId", world.partner.mpn_id);
        l.set("Currency", c.bc);
        l.set("TaxTotal", "0");
        l
    }

    fn set(&mut self, name: &str, v: &str) {
        // The names are this module's constants; an unknown one is a typo caught by the tests.
        if let Some(i) = HEADER.iter().position(|h| *h == name) {
            self.0[i] = v.to_string();
        }
    }

    /// Sets the amounts: Subtotal, Total (no tax: the partner's invoices are reverse-charged).
    fn amounts(
        &mut self,
        unit_price: Decimal,
        quantity: Decimal,
        eup: Decimal,
        bq: Decimal,
        rate: Decimal,
        subtotal: Decimal,
    ) {
        self.set("UnitPrice", &fmt_dec(unit_price));
        self.set("Quantity", &fmt_dec(quantity));
        self.set("EffectiveUnitPrice", &fmt_dec(eup));
        self.set("BillableQuantity", &fmt_dec(bq));
        self.set("PCToBCExchangeRate", &fmt_dec(rate));
        self.set("Subtotal", &fmt_dec(subtotal));
        self.set("Total", &fmt_dec(subtotal));
    }
}

fn add_months(d: NaiveDate, m: i32) -> NaiveDate {
    if m >= 0 {
        d.checked_add_months(Months::new(m as u32))
    } else {
        d.checked_sub_months(Months::new((-m) as u32))
    }
    .unwrap_or(d)
}

fn on_day(year_month: NaiveDate, day: u32) -> NaiveDate {
    // Anniversaries are days 1..=28, valid in every month.
    NaiveDate::from_ymd_opt(year_month.year(), year_month.month(), day.min(28))
        .unwrap_or(year_month)
}

pub fn write_invoices(
    world: &World,
    dir: &Path,
    sums: &UsageSums,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<String>> {
    let period = world.period;
    let mut files = Vec::new();
    let mut lines_by_bc: Vec<(&str, Vec<Vec<String>>)> = vec![("EUR", vec![]), ("USD", vec![])];
    let pec = Decimal::new(85, 2);
    let order_date = mdy(period.end() + chrono::Duration::days(3));
    for c in &world.customers {
        let mut out: Vec<Vec<String>> = Vec::new();
        let usage_rate = if c.bc == "EUR" {
            world.usd_eur_rate
        } else {
            Decimal::ONE
        };

        // Seats: licence prices are in the billing currency (rate 1), as Microsoft prices seats locally.
        for s in &c.seats {
            let monthly: Decimal = (if c.bc == "EUR" {
                s.licence.eur
            } else {
                s.licence.usd
            })
            .parse()?;
            let ann = on_day(period.start(), s.anniversary);
            let order = hex(rng, 12);
            let seat_line = |charge_type: &str,
                             price: Decimal,
                             qty: u32,
                             eup: Decimal,
                             from: NaiveDate,
                             to: NaiveDate,
                             reference: &str,
                             rng: &mut ChaCha8Rng| {
                let mut l = Line::new(world, c);
                l.set("OrderId", &order);
                l.set("OrderDate", &mdy(from));
                l.set("ProductId", s.licence.product_id);
                l.set("SkuId", s.licence.sku_id);
                l.set("AvailabilityId", s.licence.availability_id);
                l.set("SkuName", s.licence.name);
                l.set("ProductName", s.licence.name);
                l.set("ChargeType", charge_type);
                let q = Decimal::from(qty);
                l.amounts(
                    price,
                    q,
                    eup,
                    q,
                    Decimal::ONE,
                    licence_subtotal(eup, q, Decimal::ONE),
                );
                l.set("PublisherName", "Microsoft Corporation");
                l.set("SubscriptionId", &s.subscription_id);
                l.set("ChargeStartDate", &mdy(from));
                l.set("ChargeEndDate", &mdy(to));
                l.set("AlternateId", &order);
                l.set("PricingCurrency", c.bc);
                l.set("PCToBCExchangeRateDate", &mdy(period.start()));
                l.set("ReservationOrderId", &guid(rng));
                l.set("ReferenceId", reference);
                l
            };
            let term_start = add_months(ann, -(s.anniversary as i32 % 11) - 1);
            let term_end = add_months(term_start, 12).pred_opt().unwrap_or(term_start);
            let cycle_end = add_months(ann, 1).pred_opt().unwrap_or(ann);
            let monthly_term = "One-Year commitment for monthly/yearly billing";
            let finish = |mut l: Line,
                          term: &str,
                          freq: &str,
                          from: NaiveDate,
                          to: NaiveDate,
                          adjust: &str| {
                l.set("TermAndBillingCycle", term);
                l.set("BillingFrequency", freq);
                l.set("SubscriptionStartDate", &mdy(from));
                l.set("SubscriptionEndDate", &mdy(to));
                l.set("PriceAdjustmentDescription", adjust);
                l.0
            };
            let given = r#"["Price for given billing period","Price for given term"]"#;
            match s.event {
                SeatEvent::Cycle => {
                    let l = seat_line(
                        "cycleCharge",
                        monthly,
                        s.seats,
                        monthly,
                        ann,
                        cycle_end,
                        &guid(rng),
                        rng,
                    );
                    out.push(finish(
                        l,
                        monthly_term,
                        "Monthly",
                        term_start,
                        term_end,
                        given,
                    ));
                }
                SeatEvent::RenewAnnual => {
                    let yearly = monthly * Decimal::from(12);
                    let year_end = add_months(ann, 12).pred_opt().unwrap_or(ann);
                    let l = seat_line(
                        "renew",
                        yearly,
                        s.seats,
                        yearly,
                        ann,
                        year_end,
                        &guid(rng),
                        rng,
                    );
                    out.push(finish(
                        l,
                        "One-Year commitment for yearly billing",
                        "Annual",
                        ann,
                        year_end,
                        given,
                    ));
                }
                SeatEvent::New { promo_pct } => {
                    let eup = (monthly * Decimal::from(100 - promo_pct) / Decimal::ONE_HUNDRED)
                        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
                    let mut l = seat_line(
                        "new",
                        monthly,
                        s.seats,
                        eup,
                        ann,
                        cycle_end,
                        &guid(rng),
                        rng,
                    );
                    l.set(
                        "PromotionId",
                        &format!(
                            "{}:{}:{}",
                            s.licence.product_id, s.licence.sku_id, s.licence.availability_id
                        ),
                    );
                    let new_end = add_months(ann, 12).pred_opt().unwrap_or(ann);
                    let adjust = format!(
                        r#"["{promo_pct}.0% Promotional Discount","Price for given term"]"#
                    );
                    out.push(finish(l, monthly_term, "Monthly", ann, new_end, &adjust));
                }
                SeatEvent::Add { day, delta } | SeatEvent::Remove { day, delta } => {
                    let (kind, new_seats) = match s.event {
                        SeatEvent::Add { .. } => ("addQuantity", s.seats + delta),
                        _ => ("removeQuantity", s.seats.saturating_sub(delta)),
                    };
                    // This month's cycle charge billed the old count; the change is prorated to the cycle's end.
                    let l = seat_line(
                        "cycleCharge",
                        monthly,
                        s.seats,
                        monthly,
                        ann,
                        cycle_end,
                        &guid(rng),
                        rng,
                    );
                    out.push(finish(
                        l,
                        monthly_term,
                        "Monthly",
                        term_start,
                        term_end,
                        given,
                    ));
                    let change = on_day(period.start(), day);
                    if change <= ann {
                        bail!(
                            "internal: seat change on {change} is not after its cycle start {ann}"
                        );
                    }
                    let remaining = (cycle_end - change).num_days() + 1;
                    let cycle_days = (cycle_end - ann).num_days() + 1;
                    let eup = (monthly * Decimal::from(remaining) / Decimal::from(cycle_days))
                        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
                    let reference = guid(rng);
                    // Microsoft's refund line carries the original charge's dates; the new line the change date.
                    let l = seat_line(
                        kind, monthly, s.seats, -eup, ann, cycle_end, &reference, rng,
                    );
                    out.push(finish(l, monthly_term, "Monthly", term_start, term_end, ""));
                    let l = seat_line(
                        kind, monthly, new_seats, eup, change, cycle_end, &reference, rng,
                    );
                    out.push(finish(
                        l,
                        monthly_term,
                        "Monthly",
                        term_start,
                        term_end,
                        given,
                    ));
                }
            }
        }

        // One-time: a one-year VM reservation paid upfront, priced in USD.
        if c.idx == world.plan.reservation {
            let price = Decimal::new(51288, 2);
            let qty = Decimal::from(2);
            let day = on_day(period.start(), 9);
            let end = add_months(day, 12).pred_opt().unwrap_or(day);
            let mut l = Line::new(world, c);
            let order = format!("{}{}", hex(rng, 20), hex(rng, 13)).to_ascii_uppercase();
            l.set("OrderId", &order);
            l.set("OrderDate", &mdy(day));
            l.set("ProductId", "DZH318Z0C4P1");
            l.set("SkuId", "00Q2");
            l.set("AvailabilityId", "DZH318Z0C4RD");
            l.set(
                "SkuName",
                &format!(
                    "Reserved VM Instance, Standard_D2s_v5, {}, 1 Year",
                    c.region.0
                ),
            );
            l.set("ProductName", "Virtual Machines Dv5 Series");
            l.set("ChargeType", "new");
            l.amounts(
                price,
                qty,
                price,
                qty,
                usage_rate,
                licence_subtotal(price, qty, usage_rate),
            );
            l.set("PublisherName", "Microsoft");
            l.set("SubscriptionId", &guid(rng));
            l.set("ChargeStartDate", &mdy(day));
            l.set("ChargeEndDate", &mdy(end));
            l.set("TermAndBillingCycle", "1 Year Reservation");
            l.set("UnitType", "1 Hour");
            l.set("AlternateId", &hex(rng, 12));
            l.set("PricingCurrency", "USD");
            l.set("PCToBCExchangeRateDate", &mdy(day));
            l.set("ReservationOrderId", &guid(rng));
            l.set("SubscriptionStartDate", &mdy(day));
            l.set("SubscriptionEndDate", &mdy(end));
            l.set("ReferenceId", &guid(rng));
            out.push(l.0);
        }

        // One-time: a third-party marketplace SaaS plan, monthly term.
        if c.idx == world.plan.marketplace {
            let price = Decimal::new(8995, 2);
            let day = on_day(period.start(), 21);
            let end = add_months(day, 1).pred_opt().unwrap_or(day);
            let mut l = Line::new(world, c);
            l.set("OrderId", &format!("{}{}", hex(rng, 16), hex(rng, 17)));
            l.set("OrderDate", &mdy(day));
            l.set("ProductId", "DZH318Z0BP9F");
            l.set("SkuId", "000B");
            l.set("AvailabilityId", "DZH318Z0C98Z");
            l.set("SkuName", "Pro 100K");
            l.set("ProductName", "SendGrid");
            l.set("ChargeType", "new");
            l.amounts(
                price,
                Decimal::ONE,
                price,
                Decimal::ONE,
                Decimal::ONE,
                licence_subtotal(price, Decimal::ONE, Decimal::ONE),
            );
            l.set("PublisherName", "SendGrid");
            l.set("PublisherId", "18197210");
            l.set("SubscriptionId", &guid(rng));
            l.set("ChargeStartDate", &mdy(day));
            l.set("ChargeEndDate", &mdy(end));
            l.set("TermAndBillingCycle", "1 Month Subscription");
            l.set("AlternateId", &hex(rng, 12));
            l.set("PricingCurrency", c.bc);
            l.set("PCToBCExchangeRateDate", &mdy(period.start()));
            l.set("ReservationOrderId", &guid(rng));
            l.set("SubscriptionStartDate", &mdy(day));
            l.set("SubscriptionEndDate", &mdy(end));
            l.set("ReferenceId", &guid(rng));
            out.push(l.0);
        }

        // A service credit for last month's VM outage: negative EUP, positive UnitPrice and quantity.
        if c.idx == world.plan.credit {
            let prev = period.prev();
            let m = &METERS[catalog::VM_D2SV5];
            let price: Decimal = m.unit_price.parse()?;
            let eup = -(price * pec);
            let bq = Decimal::from(rng.random_range(48..=240));
            let rate = if c.bc == "EUR" {
                world.usd_eur_rate + Decimal::new(rng.random_range(1..20_000), 6)
            } else {
                Decimal::ONE
            };
            let mut l = azure_line(world, c, rng, m, "customerCredit", prev.start(), prev.end());
            l.amounts(
                price,
                Decimal::ONE,
                eup,
                bq,
                rate,
                usage_subtotal(eup, bq, rate),
            );
            l.set("PCToBCExchangeRateDate", &mdy(prev.end()));
            out.push(l.0);
        }

        // Azure plan lines: one per meter and price, summing the month's daily rows.
        for ((_, mi, has_pec), s) in sums
            .per_meter
            .range((c.idx, 0, false)..(c.idx + 1, 0, false))
        {
            let m = &METERS[*mi];
            let price: Decimal = m.unit_price.parse()?;
            let eup = if *has_pec { price * pec } else { price };
            let mut l = azure_line(world, c, rng, m, "new", period.start(), period.end());
            l.set("OrderDate", &order_date);
            l.amounts(
                price,
                Decimal::ONE,
                eup,
                s.quantity,
                usage_rate,
                usage_subtotal(eup, s.quantity, usage_rate),
            );
            if *has_pec {
                l.set(
                    "PriceAdjustmentDescription",
                    r#"["15.0% Partner earned credit for services managed"]"#,
                );
            }
            l.set("PCToBCExchangeRateDate", &mdy(period.end()));
            out.push(l.0);
        }
        if let Some((_, v)) = lines_by_bc.iter_mut().find(|(bc, _)| *bc == c.bc) {
            v.extend(out);
        }
    }
    for (bc, lines) in &lines_by_bc {
        if lines.is_empty() {
            continue;
        }
        let name = format!(
            "{}_InvoiceRecon_{}.csv",
            world.invoice_number(bc),
            period.compact()
        );
        let mut w = CsvOut::create(&dir.join(&name), &HEADER, csvout::PC_INVOICE)?;
        for l in lines {
            w.row(l)?;
        }
        w.finish()?;
        files.push(name);
    }
    Ok(files)
}

/// The common cells of an Azure plan line for a meter.
fn azure_line(
    world: &World,
    c: &Customer,
    rng: &mut ChaCha8Rng,
    m: &catalog::Meter,
    charge_type: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Line {
    let mut l = Line::new(world, c);
    let order: String = format!("{}{}", hex(rng, 17), hex(rng, 16));
    l.set("OrderId", &order);
    l.set("OrderDate", &mdy(to));
    l.set("ProductId", m.product_id);
    l.set("SkuId", m.sku_id);
    l.set("AvailabilityId", m.availability_id);
    l.set(
        "SkuName",
        &format!("{} - {} - {}", m.product_name, m.sku_name, c.region.0),
    );
    l.set("ProductName", m.product_name);
    l.set("ChargeType", charge_type);
    l.set("PublisherName", "Microsoft");
    l.set("SubscriptionDescription", "Azure plan");
    l.set("SubscriptionId", &c.plan_id);
    l.set("ChargeStartDate", &mdy(from));
    l.set("ChargeEndDate", &mdy(to));
    l.set("TermAndBillingCycle", m.term_label);
    l.set("UnitType", m.unit_type);
    l.set("AlternateId", &hex(rng, 12));
    l.set("PricingCurrency", "USD");
    l.set(
        "MeterDescription",
        &format!("{} - {} - {}", m.product_name, m.name, c.region.0),
    );
    l.set("ReservationOrderId", &hex(rng, 64).to_ascii_uppercase());
    l.set("ReferenceId", &guid(rng));
    l
}
