//! `sample_data/` is the output of `cspbill generate` checked in: these tests fail when it is stale, check that
//! its reference CSVs stage cleanly, and check its Partner Center files against Microsoft's layouts and
//! arithmetic independently of the generator (expected headers copied from the real exports, amounts recomputed
//! with the documented formulas).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pipeline::reference::{RefTable, stage_reference};
use rust_decimal::{Decimal, RoundingStrategy};
use support::read_csv_as_text;

/// The command that made `sample_data/` (also in `sample_data/README.md`).
const ARGS: &[&str] = &[
    "generate",
    "--customers",
    "10",
    "--period",
    "2025-06",
    "--seed",
    "42",
];
const REFRESH: &str =
    "cargo run -- generate --out sample_data --customers 10 --period 2025-06 --seed 42";

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data")
}

/// Every file under `dir`, relative, sorted; the README, `.gitattributes` and a local warehouse are not generated.
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "README.md" || rel == ".gitattributes" || rel.starts_with("warehouse") {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out)
            } else {
                out.push(rel)
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn sample_data_is_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(ARGS)
        .arg("--out")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "`cspbill generate` failed");
    let want = files(tmp.path());
    let have = files(&sample());
    assert_eq!(
        have, want,
        "sample_data/ has other files than `generate` writes; refresh it with `{REFRESH}`"
    );
    for f in &want {
        let a = std::fs::read(tmp.path().join(f)).unwrap();
        let b = std::fs::read(sample().join(f)).unwrap();
        assert!(
            a == b,
            "sample_data/{f} is stale (differs from what `generate` writes now); refresh it with `{REFRESH}`"
        );
    }
}

/// Reads a CSV as text cells (no type inference), empty cells as "".
fn read_text(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let df = read_csv_as_text(path);
    let header: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.trim_start_matches('\u{feff}').to_string())
        .collect();
    let cols: Vec<Vec<String>> = df
        .columns()
        .iter()
        .map(|c| {
            c.str()
                .unwrap()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect()
        })
        .collect();
    let rows = (0..df.height())
        .map(|i| cols.iter().map(|c| c[i].clone()).collect())
        .collect();
    (header, rows)
}

#[test]
fn reference_files_stage_cleanly() {
    let tables = [
        ("customers.csv", RefTable::Customers),
        ("org_units.csv", RefTable::OrgUnits),
        ("rate_cards.csv", RefTable::RateCards),
        ("tag_rules.csv", RefTable::TagRules),
        ("fx_rates.csv", RefTable::FxRates),
        ("manual_lines.csv", RefTable::ManualLines),
        ("psa_time_entries.csv", RefTable::PsaTime),
        ("license_activity.csv", RefTable::LicenseActivity),
        ("utilization.csv", RefTable::Utilization),
    ];
    for (name, table) in tables {
        let (header, rows) = read_text(&sample().join("reference").join(name));
        let numbered: Vec<(u64, Vec<String>)> = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 2, r))
            .collect();
        let staged = stage_reference(table, name, &header, &numbered)
            .unwrap_or_else(|e| panic!("{name} does not stage: {e:?}"));
        assert!(staged.warnings.is_empty(), "{name}: {:?}", staged.warnings);
        assert_eq!(staged.duplicates, 0, "{name}");
        assert_eq!(staged.df.height(), numbered.len(), "{name}");
    }
}

#[test]
fn customers_cover_every_template_currency_and_policy() {
    let (h, rows) = read_text(&sample().join("reference/customers.csv"));
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let set = |n: &str| {
        rows.iter()
            .map(|r| r[col(n)].clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(rows.len(), 10);
    assert!(
        ["enterprise", "smb", "trial"]
            .iter()
            .all(|t| set("template").contains(*t))
    );
    assert!(
        ["USD", "EUR", "GBP", "JPY"]
            .iter()
            .all(|t| set("invoice_currency").contains(*t))
    );
    assert!(
        ["microsoft", "market", "fixed"]
            .iter()
            .all(|t| set("fx_policy").contains(*t))
    );
    let trials: Vec<_> = rows
        .iter()
        .filter(|r| r[col("template")] == "trial")
        .collect();
    assert_eq!(trials.len(), 1);
    assert!(!trials[0][col("spend_cap")].is_empty());
}

/// The 55-column header of Microsoft's 2025 billed daily rated usage export (fixture
/// `daily_rated_usage_billed_real_2025-11_55col_slice.csv`).
const USAGE_HEADER: &str = "PartnerId,PartnerName,CustomerId,CustomerName,CustomerDomainName,CustomerCountry,MpnId,Tier2MpnId,InvoiceNumber,ProductId,SkuId,AvailabilityId,SkuName,ProductName,PublisherName,PublisherId,SubscriptionDescription,SubscriptionId,ChargeStartDate,ChargeEndDate,UsageDate,MeterType,MeterCategory,MeterId,MeterSubCategory,MeterName,MeterRegion,Unit,ResourceLocation,ConsumedService,ResourceGroup,ResourceURI,ChargeType,UnitPrice,Quantity,UnitType,BillingPreTaxTotal,BillingCurrency,PricingPreTaxTotal,PricingCurrency,ServiceInfo1,ServiceInfo2,Tags,AdditionalInfo,EffectiveUnitPrice,PCToBCExchangeRate,PCToBCExchangeRateDate,EntitlementId,EntitlementDescription,PartnerEarnedCreditPercentage,CreditPercentage,CreditType,BenefitId,BenefitOrderId,BenefitType";

/// The 45-column header of the real 2021 new-commerce invoice reconciliation file (quoted, after a BOM).
const INVOICE_HEADER: &str = r#""PartnerId","CustomerId","CustomerName","CustomerDomainName","CustomerCountry","InvoiceNumber","MpnId","OrderId","OrderDate","ProductId","SkuId","AvailabilityId","SkuName","ProductName","ChargeType","UnitPrice","Quantity","Subtotal","TaxTotal","Total","Currency","PriceAdjustmentDescription","PublisherName","PublisherId","SubscriptionDescription","SubscriptionId","ChargeStartDate","ChargeEndDate","TermAndBillingCycle","EffectiveUnitPrice","UnitType","AlternateId","BillableQuantity","BillingFrequency","PricingCurrency","PCToBCExchangeRate","PCToBCExchangeRateDate","MeterDescription","ReservationOrderId","CreditReasonCode","SubscriptionStartDate","SubscriptionEndDate","ReferenceId","ProductQualifiers","PromotionId""#;

fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = sample().join("inputs/2025-06");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(kind))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {kind} file in {}", dir.display());
    v
}

fn d(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|_| panic!("`{s}` is not a decimal"))
}

/// Per (customer, ProductId, SkuId, EffectiveUnitPrice): Σ Quantity and Σ BillingPreTaxTotal of daily rows.
type DailySums = BTreeMap<(String, String, String, Decimal), (Decimal, Decimal)>;

fn check_usage() -> DailySums {
    let mut sums = DailySums::new();
    let mut total_rows = 0;
    for path in inputs("BilledUsage") {
        let bytes = std::fs::read(&path).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(&format!("{USAGE_HEADER}\r\n")),
            "{}: header or line ending differs from the real export",
            path.display()
        );
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "{}: a bare LF",
            path.display()
        );
        let (h, rows) = read_text(&path);
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        let mut pec_rows = 0;
        for r in &rows {
            let up = d(&r[col("UnitPrice")]);
            let q = d(&r[col("Quantity")]);
            let eup = d(&r[col("EffectiveUnitPrice")]);
            let rate = d(&r[col("PCToBCExchangeRate")]);
            let bill = d(&r[col("BillingPreTaxTotal")]);
            match r[col("PartnerEarnedCreditPercentage")].as_str() {
                "15" => {
                    pec_rows += 1;
                    assert_eq!(eup, up * d("0.85"));
                    assert_eq!(r[col("CreditType")], "Partner Earned Credit Applied");
                }
                "" => {
                    assert_eq!(eup, up);
                    assert_eq!(r[col("CreditType")], "Credit Not Applied");
                }
                other => panic!("unexpected PEC percentage {other}"),
            }
            let want =
                (eup * q * rate).round_dp_with_strategy(10, RoundingStrategy::MidpointNearestEven);
            assert_eq!(
                bill, want,
                "BillingPreTaxTotal = EUP × Quantity × rate to 10 places"
            );
            assert_eq!(rate == Decimal::ONE, r[col("BillingCurrency")] == "USD");
            let tags = &r[col("Tags")];
            if !tags.is_empty() {
                assert!(
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(tags)
                        .is_ok(),
                    "Tags `{tags}` is a JSON object"
                );
            }
            let key = (
                r[col("CustomerId")].clone(),
                r[col("ProductId")].clone(),
                r[col("SkuId")].clone(),
                eup,
            );
            let e = sums.entry(key).or_default();
            e.0 += q;
            e.1 += bill;
        }
        assert!(
            pec_rows > 0 && pec_rows < rows.len(),
            "{}: both PEC and non-PEC rows",
            path.display()
        );
        total_rows += rows.len();
    }
    assert!(
        (2_000..10_000).contains(&total_rows),
        "a few thousand usage rows, got {total_rows}"
    );
    sums
}

#[test]
fn usage_and_invoice_follow_microsoft_layout_and_arithmetic() {
    let daily = check_usage();
    let rd = |x: Decimal| x.round_dp_with_strategy(2, RoundingStrategy::ToZero);
    let mut charge_types = BTreeMap::<String, usize>::new();
    let (mut azure_subtotal, mut daily_total) = (Decimal::ZERO, Decimal::ZERO);
    let mut azure_lines = 0;
    for path in inputs("InvoiceRecon") {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.starts_with(&[0xEF, 0xBB, 0xBF]),
            "{}: UTF-8 BOM",
            path.display()
        );
        let text = std::str::from_utf8(&bytes[3..]).unwrap();
        assert!(
            text.starts_with(&format!("{INVOICE_HEADER}\r\n")),
            "{}: header",
            path.display()
        );
        for line in text.split_terminator("\r\n") {
            assert!(
                line.starts_with('"') && line.ends_with('"'),
                "every field quoted: {line}"
            );
        }
        let (h, rows) = read_text(&path);
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        for r in &rows {
            let ct = r[col("ChargeType")].clone();
            *charge_types.entry(ct.clone()).or_default() += 1;
            let eup = d(&r[col("EffectiveUnitPrice")]);
            let bq = d(&r[col("BillableQuantity")]);
            let rate = d(&r[col("PCToBCExchangeRate")]);
            let sub = d(&r[col("Subtotal")]);
            assert_eq!(d(&r[col("Total")]), sub + d(&r[col("TaxTotal")]));
            let azure = r[col("SubscriptionDescription")] == "Azure plan";
            let want = if azure {
                rd(rd(eup * bq) * rate)
            } else {
                rd(eup * rate) * bq
            };
            assert_eq!(
                sub, want,
                "Subtotal by Microsoft's formula on {ct} line {r:?}"
            );
            if azure && ct == "new" {
                azure_lines += 1;
                let key = (
                    r[col("CustomerId")].clone(),
                    r[col("ProductId")].clone(),
                    r[col("SkuId")].clone(),
                    eup,
                );
                let (q, bill) = daily
                    .get(&key)
                    .unwrap_or_else(|| panic!("no daily rows behind Azure plan line {key:?}"));
                assert_eq!(bq, *q, "BillableQuantity = Σ daily Quantity for {key:?}");
                azure_subtotal += sub;
                daily_total += *bill;
            }
        }
        // Paired seat changes: one ReferenceId, a negative and a positive line.
        let mut pairs = BTreeMap::<String, Vec<Decimal>>::new();
        for r in rows
            .iter()
            .filter(|r| r[col("ChargeType")].ends_with("Quantity"))
        {
            pairs
                .entry(r[col("ReferenceId")].clone())
                .or_default()
                .push(d(&r[col("EffectiveUnitPrice")]));
        }
        for (reference, eups) in pairs {
            assert_eq!(eups.len(), 2, "{reference}");
            assert_eq!(eups[0], -eups[1], "{reference}");
        }
    }
    assert_eq!(
        azure_lines,
        daily.len(),
        "one Azure plan line per customer, meter and price"
    );
    for ct in [
        "new",
        "cycleCharge",
        "renew",
        "addQuantity",
        "removeQuantity",
        "customerCredit",
    ] {
        assert!(
            charge_types.contains_key(ct),
            "no `{ct}` line: {charge_types:?}"
        );
    }
    // The control total is close to, but (rounded down per line) not equal to, the daily sum.
    assert!(
        azure_subtotal < daily_total,
        "{azure_subtotal} vs {daily_total}"
    );
    assert!(daily_total - azure_subtotal < Decimal::from(azure_lines) * d("0.02") + d("0.01"));
}

#[test]
fn anomalies_are_planted() {
    use std::collections::BTreeSet;
    let period_end = chrono::NaiveDate::from_ymd_opt(2025, 6, 30).unwrap();
    let mdy = |s: &str| chrono::NaiveDate::parse_from_str(s, "%m/%d/%Y").unwrap();
    let mut days_per_sub = BTreeMap::<String, BTreeSet<chrono::NaiveDate>>::new();
    let mut first_seen = BTreeMap::<String, (String, chrono::NaiveDate)>::new();
    let mut cost_per_customer = BTreeMap::<String, Decimal>::new();
    let mut tagged_per_sub = BTreeMap::<String, (Decimal, Decimal)>::new();
    for path in inputs("BilledUsage") {
        let (h, rows) = read_text(&path);
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        for r in &rows {
            let date = mdy(&r[col("UsageDate")]);
            let sub = r[col("EntitlementId")].clone();
            let cost = d(&r[col("BillingPreTaxTotal")]);
            days_per_sub.entry(sub.clone()).or_default().insert(date);
            let e = first_seen
                .entry(r[col("ResourceURI")].clone())
                .or_insert((r[col("CustomerId")].clone(), date));
            e.1 = e.1.min(date);
            *cost_per_customer
                .entry(r[col("CustomerId")].clone())
                .or_default() += cost;
            let t = tagged_per_sub.entry(sub).or_default();
            t.1 += cost;
            if !r[col("Tags")].is_empty() {
                t.0 += cost;
            }
        }
    }
    // Usage gap: a subscription with usage before and after some missing days.
    let gaps = days_per_sub.values().filter(|days| {
        let (a, b) = (*days.first().unwrap(), *days.last().unwrap());
        (b - a).num_days() + 1 > days.len() as i64
    });
    assert_eq!(gaps.count(), 1, "one subscription has a usage gap");
    // Deployment spike: one customer has at least 10 new resources on a day after the 1st.
    let mut new_per_day = BTreeMap::<(String, chrono::NaiveDate), usize>::new();
    for (customer, day) in first_seen
        .values()
        .filter(|(_, d)| d.format("%d").to_string() != "01")
    {
        *new_per_day.entry((customer.clone(), *day)).or_default() += 1;
    }
    assert!(new_per_day.values().any(|n| *n >= 10), "{new_per_day:?}");
    // Low tag compliance: a subscription with less than 75 % of its cost on tagged resources.
    assert!(
        tagged_per_sub
            .values()
            .any(|(tagged, all)| *tagged < *all * d("0.75"))
    );
    // Idle VM: 7 or more consecutive days under 10 % CPU.
    let (h, rows) = read_text(&sample().join("reference/utilization.csv"));
    let (uri, date, cpu) = (
        h.iter().position(|x| x == "resource_uri").unwrap(),
        h.iter().position(|x| x == "date").unwrap(),
        h.iter().position(|x| x == "cpu_avg_pct").unwrap(),
    );
    let mut low_days = BTreeMap::<String, usize>::new();
    for r in &rows {
        assert!(
            first_seen.contains_key(&r[uri]),
            "utilization names a resource of the usage files: {}",
            r[uri]
        );
        assert!(!r[date].is_empty());
        if d(&r[cpu]) < d("10") {
            *low_days.entry(r[uri].clone()).or_default() += 1;
        }
    }
    assert!(low_days.values().any(|n| *n >= 7));
    // Unused seats: activity older than 30 days, or none.
    let (h, rows) = read_text(&sample().join("reference/license_activity.csv"));
    let last = h.iter().position(|x| x == "last_activity_date").unwrap();
    let unused = rows.iter().filter(|r| {
        r[last].is_empty()
            || (period_end - chrono::NaiveDate::parse_from_str(&r[last], "%Y-%m-%d").unwrap())
                .num_days()
                > 30
    });
    assert!(unused.count() >= 3);
    // Budget overrun and spend cap: below the month's cost even before any markup (same currency here).
    let (h, rows) = read_text(&sample().join("reference/customers.csv"));
    let c = |n: &str| h.iter().position(|x| x == n).unwrap();
    let holding = &rows[0];
    assert_eq!(holding[c("invoice_currency")], "EUR");
    assert!(d(&holding[c("monthly_budget")]) < cost_per_customer[&holding[c("customer_id")]]);
    let trial = rows.iter().find(|r| r[c("template")] == "trial").unwrap();
    assert_eq!(trial[c("invoice_currency")], "USD");
    assert!(d(&trial[c("spend_cap")]) < cost_per_customer[&trial[c("customer_id")]]);
}
