//! Tests of the FOCUS stage on tiny hand-built frames, through the real invoice stage; every expected value is
//! computed by hand in the comment beside it.

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::{Ty, focus_cost_and_usage as fc, int_charges_rated as r};

use super::*;
use crate::invoice::{InvoiceInputs, fct_invoices, line_parts};
use crate::reference::{RefTable, empty, stage_reference};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// `int_charges_rated` from CSV text (no quoting) naming only the columns a test needs; the others are null.
fn rated(csv: &str) -> LazyFrame {
    let mut it = csv.trim().lines().map(str::trim);
    let h: Vec<&str> = it.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = it.map(|l| l.split(',').collect()).collect();
    let mut columns = Vec::new();
    for (name, ty) in r::COLUMNS {
        let idx = h.iter().position(|c| c == name);
        let cell = |row: &Vec<&str>| idx.map(|i| row[i].to_string()).filter(|s| !s.is_empty());
        let vals: Vec<Option<String>> = rows.iter().map(cell).collect();
        let c = match ty {
            Ty::Str => cells::str_column(name, &vals),
            Ty::Dec => cells::dec_column(name, &vals.iter().map(|v| v.as_ref().map(|s| d(s))).collect::<Vec<_>>()),
            Ty::Date => cells::date_column(
                name,
                &vals.iter().map(|v| v.as_ref().map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())).collect::<Vec<_>>(),
            ),
            Ty::Int => Column::new((*name).into(), vals.iter().map(|v| v.as_ref().map(|s| s.parse::<i64>().unwrap())).collect::<Vec<_>>()),
            Ty::Bool => Column::new((*name).into(), vals.iter().map(|v| v.as_ref().map(|s| s == "true")).collect::<Vec<_>>()),
            Ty::Ts => unreachable!(),
        };
        columns.push(c);
    }
    DataFrame::new_infer_height(columns).unwrap().lazy()
}

const HEADER: &str = "part_id,line_id,customer_id,customer_name,template,invoice_currency,billing_currency,pricing_currency,line_type,product_family,source_kind,product_id,sku_id,product_name,meter_category,meter_name,subscription_id,resource_uri,tags,unit_id,unit_path,unit,q,f,unit_price,pc_to_bc_rate,fx_rate,price,status,charge_date,charge_start_date,charge_end_date";

/// Runs the invoice stage, then the FOCUS stage as the job does (carriers collected), and returns the rows.
fn focus(rows: &[&str]) -> (DataFrame, DataFrame) {
    let csv = format!("{HEADER}\n{}", rows.join("\n"));
    let customers = stage_reference(
        RefTable::Customers,
        "customers.csv",
        &["customer_id", "customer_name", "invoice_currency", "template"].map(String::from),
        &[(2, ["c1", "Contoso", "EUR", "smb"].map(String::from).to_vec())],
    )
    .unwrap()
    .df;
    let mut ctx = RunContext::for_period("2025-06".parse().unwrap());
    ctx.policies.issuer = "Fabrikam MSP".into();
    let inv = fct_invoices(
        InvoiceInputs {
            rated: rated(&csv),
            customers: &customers,
            org_units: &empty(RefTable::OrgUnits),
            psa_time: &empty(RefTable::PsaTime),
            manual_lines: &empty(RefTable::ManualLines),
            fx_rates: &empty(RefTable::FxRates),
            adjustments: DataFrame::empty_with_schema(&schemas::fct_invoice_lines::schema()),
        },
        &ctx,
    )
    .unwrap();
    let parts = line_parts(rated(&csv), &inv.lines);
    let carriers = rounding_carriers(parts.clone()).collect().unwrap();
    let subs = DataFrame::new_infer_height(vec![
        Column::new("subscription_id".into(), ["s1"]),
        Column::new("subscription_name".into(), ["Production"]),
    ])
    .unwrap();
    let lf = focus_cost_and_usage(
        FocusInputs { parts, invoices: &inv.invoices, lines: &inv.lines, carriers: &carriers, subscriptions: &subs },
        &ctx,
    )
    .unwrap();
    let mut want = fc::schema();
    want.with_column("period".into(), DataType::String);
    assert_eq!(lf.clone().collect_schema().unwrap().as_ref(), &want, "the plan's schema is the table's");
    let df = lf.collect().unwrap().sort(["x_PartId"], SortMultipleOptions::default()).unwrap();
    (df, inv.invoices)
}

fn cell(df: &DataFrame, col: &str, i: usize) -> String {
    let v = df.column(col).unwrap().get(i).unwrap();
    match &v {
        AnyValue::Null => "∅".into(),
        AnyValue::Decimal(..) => crate::decimal::any_to_decimal(&v).unwrap().normalize().to_string(),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

#[test]
fn billed_cost_carries_each_lines_rounding_on_its_largest_part_so_invoices_add_up() {
    // Three usage parts of one smb line (family azure_usage): 0.004 + 0.004 + 0.003 = 0.011 EUR, rounded
    // half-even to 0.01; the difference −0.001 goes to the largest part, p1 and p2 tie at 0.004, the smaller
    // part_id p1 carries it: 0.003, 0.004, 0.003 (Σ 0.010). A licence part: 10 seats × f 0.5 at price 50.005 →
    // line 50.00 (half-even), carried by p4 alone: BilledCost 50.00, rounding −0.005.
    let (df, invoices) = focus(&[
        "p1,l1,c1,Contoso,smb,EUR,EUR,USD,usage,azure_usage,daily_usage,DZH318Z0BQ4L,0047,,Storage,LRS Data Stored,s1,/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1,{\"env\":\"prod\"},u1,root/u1,1 GB/Month,2,1,0.0025,0.8,1,0.004,priced,2025-06-03,,",
        "p2,l2,c1,Contoso,smb,EUR,EUR,USD,usage,azure_usage,daily_usage,DZH318Z0BQ4L,0047,,Storage,LRS Data Stored,s1,/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1,,,,1 GB/Month,2,1,0.0025,0.8,1,0.004,priced,2025-06-04,,",
        "p3,l3,c1,Contoso,smb,EUR,EUR,USD,usage,azure_usage,daily_usage,DZH318Z0BQ4L,0047,,Storage,LRS Data Stored,s1,/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1,,,,1 GB/Month,1,1,0.0025,0.8,1,0.003,priced,2025-06-05,,",
        "p4,l4,c1,Contoso,smb,EUR,EUR,EUR,license,license,invoice_line,CFQ7TTC0LH18,0001,Microsoft 365 Business Basic,,,s9,,,,,,10,0.5,12,1,1,50.005,priced,2025-06-16,2025-06-16,2025-07-15",
    ]);
    let col = |c: &str| (0..df.height()).map(|i| cell(&df, c, i)).collect::<Vec<_>>();
    assert_eq!(col("BilledCost"), ["0.003", "0.004", "0.003", "50"]);
    assert_eq!(col("x_BilledCostRounding"), ["-0.001", "0", "0", "-0.005"]);
    let total: Decimal = col("BilledCost").iter().map(|v| d(v)).sum();
    assert_eq!(total, d("50.01"), "0.01 + 50.00");
    assert_eq!(pipeline_subtotal(&invoices), d("50.01"));
    assert_eq!(col("InvoiceId"), vec![cell(&invoices, "invoice_number", 0); 4]);
    // Usage: ListUnitPrice = 0.0025 USD × 0.8 (PC→BC) × 1 (BC→IC) = 0.002; ListCost = 0.002 × 2 = 0.004;
    // ContractedUnitPrice = 0.004 / 2 = 0.002; in the pricing currency 0.002 / 0.8 = 0.0025.
    assert_eq!(col("ListUnitPrice")[0], "0.002");
    assert_eq!(col("ListCost")[0], "0.004");
    assert_eq!(col("ContractedUnitPrice")[0], "0.002");
    assert_eq!(col("PricingCurrencyContractedUnitPrice")[0], "0.0025");
    assert_eq!(col("PricingCurrencyListUnitPrice")[0], "0.0025");
    assert_eq!(col("PricingCurrency")[0], "USD");
    assert_eq!(col("ConsumedQuantity")[0], "2");
    // Licence: PricingQuantity = 10 × 0.5 = 5; ContractedUnitPrice = 50.005 / 5 = 10.001; ListCost 12 × 5 = 60.
    assert_eq!(col("PricingQuantity")[3], "5");
    assert_eq!(col("ContractedUnitPrice")[3], "10.001");
    assert_eq!(col("ContractedCost")[3], "50.005");
    assert_eq!(col("ListCost")[3], "60");
    assert_eq!(col("ConsumedQuantity")[3], "∅", "only usage has a consumed quantity");
    assert_eq!(col("ChargeCategory"), ["Usage", "Usage", "Usage", "Purchase"]);
    assert_eq!(col("ChargeFrequency"), ["Usage-Based", "Usage-Based", "Usage-Based", "Recurring"]);
    assert_eq!(col("ChargeClass"), ["∅", "∅", "∅", "∅"]);
    assert_eq!(col("ServiceCategory"), ["Storage", "Storage", "Storage", "Business Applications"]);
    assert_eq!(col("InvoiceIssuerName")[0], "Fabrikam MSP");
    assert_eq!(col("ProviderName")[3], "Fabrikam MSP");
    assert_eq!(col("PublisherName")[0], "Microsoft");
    assert_eq!(col("SubAccountId")[0], "s1");
    assert_eq!(col("SubAccountName")[0], "Production");
    assert_eq!(col("SubAccountName")[3], "s9", "no name known: the id");
    assert_eq!(col("ResourceName")[0], "st1");
    assert_eq!(col("ResourceType")[0], "Microsoft.Storage/storageAccounts");
    assert_eq!(col("Tags")[0], r#"{"env":"prod","cspbill-org-unit":"u1","cspbill-org-unit-path":"root/u1"}"#);
    assert_eq!(col("Tags")[1], "∅");
    // Charge periods: a usage day [06-03, 06-04); the licence's inclusive end 07-15 → exclusive 07-16.
    assert_eq!(col("ChargePeriodStart")[0], "2025-06-03 00:00:00 UTC");
    assert_eq!(col("ChargePeriodEnd")[0], "2025-06-04 00:00:00 UTC");
    assert_eq!(col("ChargePeriodEnd")[3], "2025-07-16 00:00:00 UTC");
    assert_eq!(col("BillingPeriodEnd")[0], "2025-07-01 00:00:00 UTC");
}

fn pipeline_subtotal(invoices: &DataFrame) -> Decimal {
    crate::decimal::column_sum(invoices, "subtotal").unwrap()
}

#[test]
fn refunds_of_an_earlier_period_are_corrections_and_credits_have_no_unit_prices() {
    // A refund of a seat charged from May (charge start 2025-05-20 < period start): a correction of May, category
    // Purchase (a licence), PricingQuantity 3 × −0.2 = −0.6. A credit: category Credit, no unit prices, all
    // costs = BilledCost.
    let (df, _) = focus(&[
        "p1,l1,c1,Contoso,smb,EUR,EUR,EUR,refund,license,invoice_line,CFQ7TTC0LH18,0001,Microsoft 365 Business Basic,,,s9,,,,,,3,-0.2,6,1,1,-3.6,priced,2025-05-20,2025-05-20,2025-06-19",
        "p2,l2,c1,Contoso,smb,EUR,EUR,EUR,credit,azure_usage,invoice_line,DZH318Z0BQ4L,,Azure credit,,,s9,,,,,,1,-1,10,1,1,-10,priced,2025-06-01,2025-06-01,2025-06-30",
    ]);
    let col = |c: &str| (0..df.height()).map(|i| cell(&df, c, i)).collect::<Vec<_>>();
    assert_eq!(col("ChargeCategory"), ["Purchase", "Credit"]);
    assert_eq!(col("ChargeClass"), ["Correction", "∅"]);
    assert_eq!(col("x_CorrectedBillingPeriod"), ["2025-05", "∅"]);
    assert_eq!(col("PricingQuantity"), ["-0.6", "∅"]);
    // −3.6 / −0.6 = 6 per seat-month.
    assert_eq!(col("ContractedUnitPrice"), ["6", "∅"]);
    assert_eq!(col("ListUnitPrice"), ["6", "∅"]);
    assert_eq!(col("PricingCategory"), ["Standard", "∅"]);
    assert_eq!(col("ListCost")[1], "-10");
    assert_eq!(col("ContractedCost")[1], "-10");
    assert_eq!(col("EffectiveCost")[1], "-10");
    assert_eq!(col("ChargeDescription"), ["Refund: Microsoft 365 Business Basic", "Credit: Azure credit"]);
}

#[test]
fn tags_keep_the_resources_tags_and_add_the_org_unit() {
    assert_eq!(merge_tags(Some(r#"{"a":"1"}"#), Some("u"), None).as_deref(), Some(r#"{"a":"1","cspbill-org-unit":"u"}"#));
    assert_eq!(merge_tags(Some("not json"), Some("u"), Some("r/u")).as_deref(), Some(r#"{"cspbill-org-unit":"u","cspbill-org-unit-path":"r/u"}"#));
    assert_eq!(merge_tags(Some("[1]"), None, None), None, "a tags value that is not an object counts as none");
    assert_eq!(merge_tags(None, Some(""), None), None);
}

#[test]
fn every_invoice_line_type_has_a_mapping() {
    let mapped: Vec<&str> = LINE_TYPE_MAPPING.iter().map(|m| m.0).collect();
    for t in ["usage", "license", "one_time", "credit", "refund", "service", "manual", "spend_cap_credit", "adjustment"] {
        assert!(mapped.contains(&t), "{t} has no FOCUS mapping");
    }
}

#[test]
fn units_follow_focus_unit_format_and_descriptions_are_ascii() {
    assert_eq!(unit_text(Some("1/Month")), "Units/Month");
    assert_eq!(unit_text(Some("1 GB/Month")), "GB/Month");
    assert_eq!(unit_text(Some("10K")), "10000 Units");
    assert_eq!(unit_text(Some("1 Hour")), "1 Hour");
    assert_eq!(unit_text(Some("hours")), "Hours");
    assert_eq!(unit_text(None), "Units");
    assert_eq!(ascii_text("Virtual Machines – D2s v5, Zürich"), "Virtual Machines - D2s v5, Z?rich");
}
