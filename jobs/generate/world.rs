//! The synthetic MSP of `generate`: the partner, its customers (templates, currencies, FX policies), their
//! Azure subscriptions, resource groups and resources, and their licence subscriptions. Built once from the
//! seed; the files are written from it. Which customer carries which planted anomaly is fixed by position
//! (see [`Plan`]) so the sample data is easy to read.

use chrono::{Datelike, NaiveDate};
use pipeline::Period;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::catalog::{self, Kind, Licence, Qty};

/// A random GUID in the 8-4-4-4-12 shape (version 4).
pub fn guid(rng: &mut ChaCha8Rng) -> String {
    let v: u128 = rng.random();
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `n` random lower-case hex digits.
pub fn hex(rng: &mut ChaCha8Rng, n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        let v: u64 = rng.random();
        s.push_str(&format!("{v:016x}"));
    }
    s.truncate(n);
    s
}

pub struct Partner {
    pub id: String,
    pub name: &'static str,
    pub mpn_id: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    Enterprise,
    Smb,
    Trial,
}

impl Template {
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Enterprise => "enterprise",
            Template::Smb => "smb",
            Template::Trial => "trial",
        }
    }
}

pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub tags: &'static str,
    /// First day of the month (1-based) the resource exists.
    pub start_day: u32,
    /// Size in GB for meters billed per stored GB.
    pub size_gb: i64,
    /// Planted: CPU below 10 % all month.
    pub idle: bool,
}

pub struct ResourceGroup {
    pub name: String,
    pub resources: Vec<Resource>,
}

/// An Azure subscription (`EntitlementId`).
pub struct Entitlement {
    pub id: String,
    pub name: &'static str,
    /// Partner-earned credit applies (the partner holds admin rights).
    pub pec: bool,
    /// Planted usage gap: days (1-based, inclusive) with no rows.
    pub gap: Option<(u32, u32)>,
    pub groups: Vec<ResourceGroup>,
}

/// A seat subscription and what happened to it this month.
pub struct Seats {
    pub licence: Licence,
    pub subscription_id: String,
    pub seats: u32,
    /// Day of month of the subscription's anniversary (its monthly charge cycle starts on it).
    pub anniversary: u32,
    pub event: SeatEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatEvent {
    /// A monthly `cycleCharge` only.
    Cycle,
    /// Annual term billed yearly renews this month (`renew`).
    RenewAnnual,
    /// Bought this month on `anniversary` (`new`), with a promotion of the given percent.
    New { promo_pct: u32 },
    /// Seats added on that day (paired `addQuantity` lines).
    Add { day: u32, delta: u32 },
    /// Seats removed on that day (paired `removeQuantity` lines).
    Remove { day: u32, delta: u32 },
}

pub struct Customer {
    pub idx: usize,
    pub id: String,
    pub name: String,
    pub domain: String,
    pub country: &'static str,
    /// Short code used in unit ids (`C00`).
    pub code: String,
    pub template: Template,
    /// Billing currency Microsoft invoices the partner in for this customer.
    pub bc: &'static str,
    /// The customer's invoice currency.
    pub ic: &'static str,
    pub fx_policy: &'static str,
    pub fixed_fx_rate: &'static str,
    pub target_margin: &'static str,
    pub payment_terms: &'static str,
    /// The Azure plan's Partner Center `SubscriptionId`.
    pub plan_id: String,
    pub entitlements: Vec<Entitlement>,
    pub seats: Vec<Seats>,
    pub region: (&'static str, &'static str),
}

/// Which customer carries which planted feature, by position (wrapping for small `--customers`).
pub struct Plan {
    pub holding: usize,
    pub subsidiary: Option<usize>,
    pub budget_overrun: usize,
    pub idle_vm: usize,
    pub spike: usize,
    pub gap: usize,
    pub low_tags: usize,
    pub fixed_price: usize,
    pub credit: usize,
    pub reservation: usize,
    pub marketplace: usize,
}

impl Plan {
    pub fn new(n: usize) -> Self {
        let at = |i: usize| if i < n { i } else { i % n };
        Plan {
            holding: 0,
            subsidiary: (n > 1).then_some(1),
            budget_overrun: 0,
            idle_vm: at(2),
            spike: at(5),
            gap: at(6),
            low_tags: 0,
            fixed_price: at(2),
            credit: at(5),
            reservation: 0,
            marketplace: at(2),
        }
    }
}

pub struct World {
    pub period: Period,
    pub partner: Partner,
    pub customers: Vec<Customer>,
    pub plan: Plan,
    /// Microsoft's USD→EUR `PCToBCExchangeRate` for the month.
    pub usd_eur_rate: rust_decimal::Decimal,
    /// Invoice numbers by billing currency.
    pub invoice_usd: String,
    pub invoice_eur: String,
}

impl World {
    pub fn invoice_number(&self, bc: &str) -> &str {
        if bc == "EUR" {
            &self.invoice_eur
        } else {
            &self.invoice_usd
        }
    }

    pub fn day(&self, d: u32) -> NaiveDate {
        self.period.start().with_day(d).unwrap_or(self.period.end())
    }
}

/// Per-position profile: template, billing and invoice currency, FX policy, fixed rate, margin, terms.
type Profile = (
    Template,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

fn profile(i: usize) -> Profile {
    use Template::*;
    // Target margins are what the rate cards give each profile (Σ margin / Σ price, within a point): nothing is
    // planted for `margin_variance`, so it must not fire on the sample.
    const P: [Profile; 10] = [
        (Enterprise, "EUR", "EUR", "microsoft", "", "0.10", "30"),
        (Enterprise, "EUR", "GBP", "market", "", "12%", "45"),
        (Smb, "USD", "USD", "microsoft", "", "0.14", "14"),
        (Trial, "USD", "USD", "", "", "", "14"),
        (Smb, "USD", "JPY", "fixed", "144.20", "0.14", "30"),
        (Enterprise, "USD", "EUR", "market", "", "0.11", "60"),
        (Smb, "EUR", "EUR", "microsoft", "", "0.13", ""),
        (Smb, "EUR", "USD", "microsoft", "", "0.07", "30"),
        (Enterprise, "USD", "USD", "microsoft", "", "0.12", "30"),
        (Smb, "USD", "GBP", "market", "", "0.05", "30"),
    ];
    // Beyond the first ten, repeat the plain profiles (no second trial, holding or JPY customer).
    const MORE: [usize; 6] = [5, 6, 7, 8, 9, 2];
    if i < P.len() {
        P[i]
    } else {
        P[MORE[(i - P.len()) % MORE.len()]]
    }
}

fn region(country: &str) -> (&'static str, &'static str) {
    match country {
        "US" | "CA" => ("US East", "eastus"),
        "JP" => ("JA East", "japaneast"),
        "GB" => ("UK South", "uksouth"),
        _ => ("EU West", "westeurope"),
    }
}

const TAG_CC100: &str = r#"{"cost-center":"CC-100","project":"erp-core","environment":"prod"}"#;
const TAG_CC200: &str = r#"{"cost-center":"CC-200","environment":"prod"}"#;
const TAG_SHARED: &str = r#"{"environment":"prod","owner":"platform"}"#;
const TAG_SUBSIDIARY: &str = r#"{"entity":"subsidiary","environment":"prod"}"#;
const TAG_DEV: &str = r#"{"cost-center":"CC-200","environment":"dev"}"#;
const TAG_PROJECT: &str = r#"{"project":"erp-reporting","environment":"dev"}"#;
const TAG_SMB: &str = r#"{"environment":"prod","owner":"it"}"#;

/// Builds the world. Everything random is drawn from `rng` in a fixed order.
pub fn build(rng: &mut ChaCha8Rng, period: Period, n: usize) -> World {
    let plan = Plan::new(n);
    let partner = Partner {
        id: guid(rng),
        name: "Fabrikam Cloud Partners Ltd",
        mpn_id: "6123457",
    };
    let invoice_usd = format!("G{:09}", rng.random_range(100_000_000u32..200_000_000));
    let invoice_eur = format!("G{:09}", rng.random_range(200_000_000u32..300_000_000));
    // Microsoft's monthly USD→EUR rate, printed with 15 decimals as in the real files.
    let usd_eur_rate = rust_decimal::Decimal::new(
        rng.random_range(860_000_000_000_000i64..890_000_000_000_000),
        15,
    );
    let days = period.days();
    let mut customers = Vec::with_capacity(n);
    for idx in 0..n {
        let (base, country) = catalog::COMPANIES[idx % catalog::COMPANIES.len()];
        let name = if idx < catalog::COMPANIES.len() {
            base.to_string()
        } else {
            format!("{base} {}", idx / catalog::COMPANIES.len() + 1)
        };
        let slug: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let (template, bc, ic, fx_policy, fixed_fx_rate, target_margin, payment_terms) =
            profile(idx);
        let id = guid(rng);
        let plan_id = guid(rng);
        let region = region(country);
        let mut entitlements = Vec::new();
        let mut vm_no = 0u32;
        let mut res = |rng: &mut ChaCha8Rng,
                       kind: Kind,
                       tags: &'static str,
                       start_day: u32,
                       idle: bool,
                       label: &str|
         -> Vec<Resource> {
            let size_gb = match catalog::METERS[kind.meters()[0]].qty {
                Qty::SizePerMonth(lo, hi) => rng.random_range(lo..=hi),
                _ => 0,
            };
            let mut v = Vec::new();
            if kind == Kind::Vm {
                vm_no += 1;
                let vm = format!("vm-{label}-{vm_no:02}");
                v.push(Resource {
                    kind,
                    name: vm.clone(),
                    tags,
                    start_day,
                    size_gb,
                    idle,
                });
                v.push(Resource {
                    kind: Kind::Disk,
                    name: format!("{vm}_OsDisk_1_{}", hex(rng, 8)),
                    tags,
                    start_day,
                    size_gb: 0,
                    idle: false,
                });
            } else if kind == Kind::Sql {
                v.push(Resource {
                    kind,
                    name: format!("sql-{label}-{}/appdb", hex(rng, 4)),
                    tags,
                    start_day,
                    size_gb,
                    idle,
                });
            } else {
                // Storage account names allow only lower-case letters and digits.
                let name = if kind == Kind::Storage {
                    format!("st{label}{}", hex(rng, 6))
                } else {
                    format!("{}-{label}-{}", kind.prefix(), hex(rng, 4))
                };
                v.push(Resource {
                    kind,
                    name,
                    tags,
                    start_day,
                    size_gb,
                    idle,
                });
            }
            v
        };
        let growth_day = rng.random_range(5..=days.min(25));
        match template {
            Template::Enterprise => {
                let mut erp = Vec::new();
                erp.extend(res(rng, Kind::Vm, TAG_CC100, 1, false, "erp"));
                erp.extend(res(rng, Kind::Sql, TAG_CC100, 1, false, "erp"));
                erp.extend(res(rng, Kind::Storage, TAG_CC100, 1, false, "erp"));
                let mut web = Vec::new();
                web.extend(res(rng, Kind::AppService, TAG_CC200, 1, false, "web"));
                web.extend(res(rng, Kind::FunctionApp, TAG_CC200, 1, false, "web"));
                web.extend(res(rng, Kind::Storage, TAG_CC200, growth_day, false, "web"));
                let mut shared = Vec::new();
                shared.extend(res(rng, Kind::Vm, TAG_SHARED, 1, false, "hub"));
                shared.extend(res(rng, Kind::KeyVault, TAG_SHARED, 1, false, "hub"));
                shared.extend(res(rng, Kind::Workspace, TAG_SHARED, 1, false, "hub"));
                shared.extend(res(rng, Kind::PublicIp, TAG_SHARED, 1, false, "hub"));
                let mut prod = vec![
                    ResourceGroup {
                        name: "rg-erp-prod".into(),
                        resources: erp,
                    },
                    ResourceGroup {
                        name: "rg-web-prod".into(),
                        resources: web,
                    },
                    ResourceGroup {
                        name: "rg-shared-network".into(),
                        resources: shared,
                    },
                ];
                if idx == plan.holding && plan.subsidiary.is_some() {
                    let mut sub = Vec::new();
                    sub.extend(res(rng, Kind::Vm, TAG_SUBSIDIARY, 1, false, "sub"));
                    sub.extend(res(rng, Kind::Storage, TAG_SUBSIDIARY, 1, false, "sub"));
                    prod.push(ResourceGroup {
                        name: "rg-subsidiary-apps".into(),
                        resources: sub,
                    });
                }
                if idx == plan.spike {
                    // A steady trickle of new build VMs, then a burst on day 18: the `unusual_deployment` case.
                    let mut batch = Vec::new();
                    for d in [4, 9, 13] {
                        batch.extend(res(rng, Kind::Vm, TAG_CC200, d.min(days), false, "build"));
                    }
                    for _ in 0..12 {
                        batch.extend(res(rng, Kind::Vm, TAG_CC200, 18.min(days), false, "batch"));
                    }
                    prod.push(ResourceGroup {
                        name: "rg-batch".into(),
                        resources: batch,
                    });
                }
                let low = idx == plan.low_tags;
                let mut dev = Vec::new();
                // The low-tag-compliance subscription: most dev resources untagged.
                dev.extend(res(
                    rng,
                    Kind::Vm,
                    if low { "" } else { TAG_DEV },
                    1,
                    false,
                    "dev",
                ));
                dev.extend(res(rng, Kind::Vm, TAG_PROJECT, 1, false, "dev"));
                dev.extend(res(
                    rng,
                    Kind::Storage,
                    if low { "" } else { TAG_DEV },
                    1,
                    false,
                    "dev",
                ));
                dev.extend(res(
                    rng,
                    Kind::Sql,
                    if low { "" } else { TAG_DEV },
                    1,
                    false,
                    "dev",
                ));
                entitlements.push(Entitlement {
                    id: guid(rng),
                    name: "Production",
                    pec: true,
                    gap: None,
                    groups: prod,
                });
                entitlements.push(Entitlement {
                    id: guid(rng),
                    name: "Dev/Test",
                    // Admin rights lost on the subsidiary's dev subscription: no partner-earned credit there.
                    pec: Some(idx) != plan.subsidiary,
                    gap: None,
                    groups: vec![ResourceGroup {
                        name: "rg-dev".into(),
                        resources: dev,
                    }],
                });
            }
            Template::Smb | Template::Trial => {
                let mut prod = Vec::new();
                prod.extend(res(rng, Kind::Vm, TAG_SMB, 1, false, "app"));
                if idx == plan.idle_vm && template == Template::Smb {
                    prod.extend(res(rng, Kind::Vm, TAG_SMB, 1, true, "legacy"));
                }
                prod.extend(res(rng, Kind::Storage, TAG_SMB, 1, false, "app"));
                prod.extend(res(rng, Kind::AppService, "", 1, false, "app"));
                let mut backup = Vec::new();
                backup.extend(res(rng, Kind::Storage, "", growth_day, false, "bak"));
                if template == Template::Smb {
                    backup.extend(res(rng, Kind::KeyVault, "", 1, false, "bak"));
                    backup.extend(res(rng, Kind::Workspace, "", 1, false, "mon"));
                }
                let gap = (idx == plan.gap && days >= 12).then_some((10, 12));
                entitlements.push(Entitlement {
                    id: guid(rng),
                    name: "Azure subscription 1",
                    // Two customers whose admin rights (GDAP) lapsed: no partner-earned credit.
                    pec: !matches!(idx % 10, 7 | 9),
                    gap,
                    groups: vec![
                        ResourceGroup {
                            name: "rg-prod".into(),
                            resources: prod,
                        },
                        ResourceGroup {
                            name: "rg-backup".into(),
                            resources: backup,
                        },
                    ],
                });
            }
        }
        // Guarantee the planted idle VM and usage gap exist even when their customer is an enterprise.
        if idx == plan.idle_vm && template != Template::Smb {
            let vm = res(rng, Kind::Vm, "", 1, true, "legacy");
            entitlements[0].groups[0].resources.extend(vm);
        }
        if idx == plan.gap && template != Template::Smb && template != Template::Trial && days >= 12
        {
            entitlements[1].gap = Some((10, 12));
        }

        let mut seats = Vec::new();
        let sub =
            |rng: &mut ChaCha8Rng, licence: Licence, lo: u32, hi: u32, event: SeatEvent| Seats {
                licence,
                subscription_id: guid(rng),
                seats: rng.random_range(lo..=hi),
                anniversary: rng.random_range(1..=28),
                event,
            };
        match template {
            Template::Enterprise => {
                let e3_event = if idx == plan.credit {
                    SeatEvent::Remove { day: 0, delta: 2 }
                } else {
                    SeatEvent::Cycle
                };
                seats.push(sub(rng, catalog::M365_E3, 40, 120, e3_event));
                let ex_event = if idx == plan.holding {
                    SeatEvent::RenewAnnual
                } else {
                    SeatEvent::Cycle
                };
                seats.push(sub(rng, catalog::EXCHANGE_P1, 10, 30, ex_event));
            }
            Template::Smb => {
                let ev = if idx == plan.fixed_price {
                    SeatEvent::Add { day: 12, delta: 3 }
                } else {
                    SeatEvent::Cycle
                };
                seats.push(sub(rng, catalog::BUSINESS_PREMIUM, 5, 25, ev));
                if idx % 10 == 6 {
                    seats.push(sub(
                        rng,
                        catalog::BUSINESS_STANDARD,
                        3,
                        8,
                        SeatEvent::New { promo_pct: 20 },
                    ));
                } else {
                    seats.push(sub(rng, catalog::BUSINESS_BASIC, 2, 10, SeatEvent::Cycle));
                }
            }
            Template::Trial => {}
        }
        // A seat removal is only possible within days of the cycle start (NCE's cancellation window).
        for s in seats.iter_mut() {
            if let SeatEvent::Remove { day, delta } = s.event {
                if day == 0 {
                    s.anniversary = s.anniversary.min(days - 3);
                    s.event = SeatEvent::Remove {
                        day: s.anniversary + 2,
                        delta,
                    };
                }
            }
            if let SeatEvent::Add { day, .. } = s.event {
                // The cycle that holds the add started earlier this month, so this month's `cycleCharge`
                // billed the old seat count and the add is prorated to that cycle's end.
                s.anniversary = s.anniversary.min(day - 1).max(1);
            }
        }

        customers.push(Customer {
            idx,
            id,
            name,
            domain: format!("{slug}.onmicrosoft.com"),
            country,
            code: format!("C{idx:02}"),
            template,
            bc,
            ic,
            fx_policy,
            fixed_fx_rate,
            target_margin,
            payment_terms,
            plan_id,
            entitlements,
            seats,
            region,
        });
    }
    World {
        period,
        partner,
        customers,
        plan,
        usd_eur_rate,
        invoice_usd,
        invoice_eur,
    }
}
