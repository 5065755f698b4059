//! Daily rated usage in the 55-column new-commerce layout, streamed day by day to one file per billing
//! currency (one Microsoft invoice each). Amounts follow Microsoft's arithmetic: `EffectiveUnitPrice` is
//! 0.85 × `UnitPrice` on partner-earned-credit rows, `PricingPreTaxTotal` = EUP × Quantity and
//! `BillingPreTaxTotal` = EUP × Quantity × `PCToBCExchangeRate`, both rounded half-even to 10 places.
//!
//! While writing, the rows are summed per customer, meter and price (the invoice file's Azure plan lines) and
//! per customer (budgets), so nothing but those sums is kept in memory.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::{Decimal, RoundingStrategy};

use super::catalog::{METERS, Qty};
use super::csvout::{self, CsvOut};
use super::world::World;
use super::{fmt_dec, mdy};

/// The header of the 2025 real billed file, verbatim (`BenefitId` before `BenefitOrderId`, as Microsoft writes it).
pub const HEADER: [&str; 55] = [
    "PartnerId",
    "PartnerName",
    "CustomerId",
    "CustomerName",
    "CustomerDomainName",
    "CustomerCountry",
    "MpnId",
    "Tier2MpnId",
    "InvoiceNumber",
    "ProductId",
    "SkuId",
    "AvailabilityId",
    "SkuName",
    "ProductName",
    "PublisherName",
    "PublisherId",
    "SubscriptionDescription",
    "SubscriptionId",
    "ChargeStartDate",
    "ChargeEndDate",
    "UsageDate",
    "MeterType",
    "MeterCategory",
    "MeterId",
    "MeterSubCategory",
    "MeterName",
    "MeterRegion",
    "Unit",
    "ResourceLocation",
    "ConsumedService",
    "ResourceGroup",
    "ResourceURI",
    "ChargeType",
    "UnitPrice",
    "Quantity",
    "UnitType",
    "BillingPreTaxTotal",
    "BillingCurrency",
    "PricingPreTaxTotal",
    "PricingCurrency",
    "ServiceInfo1",
    "ServiceInfo2",
    "Tags",
    "AdditionalInfo",
    "EffectiveUnitPrice",
    "PCToBCExchangeRate",
    "PCToBCExchangeRateDate",
    "EntitlementId",
    "EntitlementDescription",
    "PartnerEarnedCreditPercentage",
    "CreditPercentage",
    "CreditType",
    "BenefitId",
    "BenefitOrderId",
    "BenefitType",
];

/// Σ of daily rows for one invoice line: customer, meter, partner-earned credit or not.
#[derive(Default, Clone)]
pub struct MeterSum {
    pub quantity: Decimal,
    pub billing_total: Decimal,
}

/// What the usage writer hands on to the invoice and reference writers.
pub struct UsageSums {
    /// (customer index, meter index, pec) → sums; a BTreeMap so the invoice lines come out in a fixed order.
    pub per_meter: BTreeMap<(usize, usize, bool), MeterSum>,
    /// Σ BillingPreTaxTotal per customer index, in its billing currency.
    pub cost_per_customer: Vec<Decimal>,
    pub rows: u64,
    pub files: Vec<String>,
}

/// Daily rows the world gives with one copy of each resource (used to scale to `--usage-rows`).
pub fn base_rows(world: &World) -> u64 {
    let days = world.period.days();
    let mut n = 0u64;
    for c in &world.customers {
        for e in &c.entitlements {
            for d in 1..=days {
                if e.gap.is_some_and(|(a, b)| (a..=b).contains(&d)) {
                    continue;
                }
                for g in &e.groups {
                    for r in &g.resources {
                        if d >= r.start_day {
                            n += r.kind.meters().len() as u64;
                        }
                    }
                }
            }
        }
    }
    n
}

pub fn write_usage(
    world: &World,
    dir: &Path,
    replicas: u32,
    rng: &mut ChaCha8Rng,
) -> Result<UsageSums> {
    let period = world.period;
    let days = period.days();
    let days_dec = Decimal::from(days);
    let pec_factor = Decimal::new(85, 2);
    let start = mdy(period.start());
    let end = mdy(period.end());
    let rate_date = mdy(period.start());
    let mut sums = UsageSums {
        per_meter: BTreeMap::new(),
        cost_per_customer: vec![Decimal::ZERO; world.customers.len()],
        rows: 0,
        files: vec![],
    };
    // One file per billing currency present, named after its invoice.
    let mut outs: Vec<(&str, CsvOut)> = Vec::new();
    for bc in ["EUR", "USD"] {
        if world.customers.iter().any(|c| c.bc == bc) {
            let name = format!(
                "{}_BilledUsage_{}.csv",
                world.invoice_number(bc),
                period.compact()
            );
            outs.push((
                bc,
                CsvOut::create(&dir.join(&name), &HEADER, csvout::PC_USAGE)?,
            ));
            sums.files.push(name);
        }
    }
    let prices: Vec<Decimal> = METERS
        .iter()
        .map(|m| m.unit_price.parse::<Decimal>())
        .collect::<Result<_, _>>()?;
    let per_month_qty =
        (Decimal::ONE / days_dec).round_dp_with_strategy(9, RoundingStrategy::MidpointNearestEven);

    // A progress bar per day of the month, only when a person is watching (stderr is a terminal).
    let progress = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(u64::from(days)).with_message("usage days")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut uri = String::with_capacity(256);
    for d in 1..=days {
        progress.inc(1);
        let usage_date = mdy(world.day(d));
        for c in &world.customers {
            let out = &mut outs
                .iter_mut()
                .find(|(bc, _)| *bc == c.bc)
                .expect("a file exists for every billing currency in use")
                .1;
            let rate = if c.bc == "EUR" {
                world.usd_eur_rate
            } else {
                Decimal::ONE
            };
            let rate_s = fmt_dec(rate);
            for e in &c.entitlements {
                if e.gap.is_some_and(|(a, b)| (a..=b).contains(&d)) {
                    continue;
                }
                for g in &e.groups {
                    for r in &g.resources {
                        if d < r.start_day {
                            continue;
                        }
                        for rep in 0..replicas {
                            uri.clear();
                            uri.push_str("/subscriptions/");
                            uri.push_str(&e.id);
                            uri.push_str("/resourceGroups/");
                            uri.push_str(&g.name);
                            uri.push_str("/providers/");
                            uri.push_str(r.kind.provider());
                            uri.push('/');
                            uri.push_str(&r.name);
                            if rep > 0 {
                                uri.push_str(&format!("-r{rep}"));
                            }
                            for &mi in r.kind.meters() {
                                let m = &METERS[mi];
                                let q = match m.qty {
                                    Qty::Fixed(v, s) => Decimal::new(v, s),
                                    Qty::Range(lo, hi, s) => {
                                        Decimal::new(rng.random_range(lo..=hi), s)
                                    }
                                    Qty::PerMonth => per_month_qty,
                                    Qty::SizePerMonth(..) => (Decimal::from(r.size_gb) / days_dec)
                                        .round_dp_with_strategy(
                                            9,
                                            RoundingStrategy::MidpointNearestEven,
                                        ),
                                };
                                let price = prices[mi];
                                let eup = if e.pec { price * pec_factor } else { price };
                                let pricing_total = (eup * q).round_dp_with_strategy(
                                    10,
                                    RoundingStrategy::MidpointNearestEven,
                                );
                                let billing_total = (eup * q * rate).round_dp_with_strategy(
                                    10,
                                    RoundingStrategy::MidpointNearestEven,
                                );
                                let s = sums.per_meter.entry((c.idx, mi, e.pec)).or_default();
                                s.quantity += q;
                                s.billing_total += billing_total;
                                sums.cost_per_customer[c.idx] += billing_total;
                                let (pec_pct, credit_type) = if e.pec {
                                    ("15", "Partner Earned Credit Applied")
                                } else {
                                    ("", "Credit Not Applied")
                                };
                                let row: [&str; 55] = [
                                    world.partner.id.as_str(),
                                    world.partner.name,
                                    &c.id,
                                    &c.name,
                                    &c.domain,
                                    c.country,
                                    world.partner.mpn_id,
                                    "",
                                    world.invoice_number(c.bc),
                                    m.product_id,
                                    m.sku_id,
                                    m.availability_id,
                                    m.sku_name,
                                    m.product_name,
                                    "Microsoft",
                                    "",
                                    "",
                                    &c.plan_id,
                                    &start,
                                    &end,
                                    &usage_date,
                                    m.meter_type,
                                    m.category,
                                    m.meter_id,
                                    m.subcategory,
                                    m.name,
                                    if m.category == "Bandwidth" {
                                        "Zone 1"
                                    } else {
                                        c.region.0
                                    },
                                    m.unit,
                                    c.region.1,
                                    r.kind.consumed_service(),
                                    &g.name,
                                    &uri,
                                    "Usage",
                                    m.unit_price,
                                    &fmt_dec(q),
                                    m.unit_type,
                                    &fmt_dec(billing_total),
                                    c.bc,
                                    &fmt_dec(pricing_total),
                                    "USD",
                                    "",
                                    "",
                                    r.tags,
                                    r.kind.additional_info(),
                                    &fmt_dec(eup),
                                    &rate_s,
                                    &rate_date,
                                    &e.id,
                                    e.name,
                                    pec_pct,
                                    pec_pct,
                                    credit_type,
                                    "",
                                    "",
                                    "Charge",
                                ];
                                out.row(&row)?;
                                sums.rows += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    for (_, out) in outs {
        out.finish()?;
    }
    progress.finish_and_clear();
    Ok(sums)
}
