use super::*;
use crate::decimal::any_to_decimal;
use rust_decimal::Decimal;

fn dec_of(m: i128) -> Decimal {
    crate::decimal::from_mantissa(m)
}

#[test]
fn decimals_parse_exactly() {
    let d = |s: &str| parse_decimal(s).map(|(m, r)| (dec_of(m), r));
    assert_eq!(
        d("7.10833E-05"),
        Some(("0.0000710833".parse().unwrap(), false))
    );
    assert_eq!(d("0.00E+00"), Some((Decimal::ZERO, false)));
    assert_eq!(d("-25.05"), Some(("-25.05".parse().unwrap(), false)));
    assert_eq!(d("1.5E+3"), Some(("1500".parse().unwrap(), false)));
    assert_eq!(d(".5"), Some(("0.5".parse().unwrap(), false)));
    // 22 places: rounded half-even to 18 and flagged.
    assert_eq!(
        d("0.1999968000511991808131"),
        Some(("0.199996800051199181".parse().unwrap(), true))
    );
    assert_eq!(
        d("0.0000000000000000025"),
        Some(("0.000000000000000002".parse().unwrap(), true))
    );
    assert_eq!(
        d("0.0000000000000000035"),
        Some(("0.000000000000000004".parse().unwrap(), true))
    );
    // Trailing zeros beyond 18 places are not a rounding.
    assert_eq!(
        d("0.0870000000000000000000"),
        Some(("0.087".parse().unwrap(), false))
    );
    for bad in ["", "abc", "1,000.00", "$1.00", "1.2.3", "-", "1e", "12x"] {
        assert_eq!(parse_decimal(bad), None, "{bad}");
    }
    assert_eq!(
        parse_decimal("1".repeat(21).as_str()),
        None,
        "integer part too big for Decimal(38,18)"
    );
}

#[test]
fn dates_in_every_partner_center_spelling() {
    let want = NaiveDate::from_ymd_opt(2021, 6, 1);
    for s in [
        "06/01/2021",
        "6/1/2021",
        "2021-06-01",
        "2021-06-01T00:00:00Z",
        "2021-06-01T09:38:43.4669373Z",
        "6/1/2021 0:00",
    ] {
        assert_eq!(parse_pc_date(s), want, "{s}");
    }
    for s in ["01.06.2021", "2021/06/01", "13/01/2021", "6/1/21", "x"] {
        assert_eq!(parse_pc_date(s), None, "{s}");
    }
}

#[test]
fn header_names_map_in_both_casings() {
    let names: Vec<String> = [
        "PCToBCExchangeRate",
        "pcToBCExchangeRate",
        "resourceUri",
        "unitOfMeasure",
        "PartnerEarnedCreditPercentage",
        "Extra",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let m = map_header(SourceKind::DailyUsage, &names);
    assert_eq!(
        m.columns,
        vec![
            Some("pc_to_bc_exchange_rate"),
            None,
            Some("resource_uri"),
            Some("unit"),
            Some("partner_earned_credit_rate"),
            None
        ]
    );
    assert_eq!(m.percent, vec!["partner_earned_credit_rate"]);
    assert_eq!(
        m.unknown,
        vec!["pcToBCExchangeRate".to_string(), "Extra".to_string()]
    );
    assert_eq!(
        map_column(SourceKind::DailyUsage, "rateOfPartnerEarnedCredit").map(|m| m.percent),
        Some(false)
    );
    assert_eq!(
        map_column(SourceKind::InvoiceLines, "totalForCustomer").map(|m| m.column),
        Some("total")
    );
}

fn raw_usage(rows: &[(&str, &str, &str, &str, &str)]) -> (LazyFrame, StageOptions) {
    // (usage_date, billing_pre_tax_total, sku_id, pec percent, invoice_number)
    let n = rows.len();
    let df = df!(
        "customer_id" => vec!["c1"; n],
        "usage_date" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        "billing_pre_tax_total" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        "billing_currency" => vec!["USD"; n],
        "sku_id" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        "partner_earned_credit_rate" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        "invoice_number" => rows.iter().map(|r| r.4).collect::<Vec<_>>(),
        "source_file" => vec!["f.csv"; n],
        "source_format" => vec!["csv_daily_usage"; n],
        "line_number" => (2..2 + n as i64).collect::<Vec<_>>(),
        "row_problem" => vec![None::<&str>; n],
        "row_problem_reason" => vec![None::<&str>; n],
        "raw" => vec![None::<&str>; n],
    )
    .unwrap();
    let opts = StageOptions {
        kind: SourceKind::DailyUsage,
        period: "2025-11".parse().unwrap(),
        present: [
            "customer_id",
            "usage_date",
            "billing_pre_tax_total",
            "billing_currency",
            "sku_id",
            "partner_earned_credit_rate",
            "invoice_number",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        percent: vec!["partner_earned_credit_rate".into()],
    };
    (df.lazy(), opts)
}

#[test]
fn typing_stages_good_rows_and_rejects_bad_ones() {
    let (raw, opts) = raw_usage(&[
        ("11/02/2025", "7.10833E-05", "3", "15", "G1"),
        ("2025-11-03T00:00:00Z", "1.50", "016X", "", ""),
        ("31/11/2025", "1", "1", "15", "G1"),
        ("11/04/2025", "1,5", "1", "15", "G1"),
        ("11/05/2025", "", "1", "15", "G1"),
        ("11/02/2025", "7.10833E-05", "0003", "15", "G1"),
    ]);
    let out = stg_pc_rows(raw, &opts).unwrap();
    let staged = out.staged.collect().unwrap();
    let rejects = out.rejects.collect().unwrap();
    assert_eq!(
        staged.schema().as_ref(),
        &schemas::stg_pc_daily_usage::schema()
    );
    assert_eq!(
        rejects.schema().as_ref(),
        &schemas::rejects_pc_daily_usage::schema()
    );
    let csv = crate::testing::frame_to_sorted_csv(
        &staged
            .select([
                "line_number",
                "period",
                "sku_id",
                "billing_pre_tax_total",
                "partner_earned_credit_rate",
                "is_billed",
                "product_family",
            ])
            .unwrap(),
    );
    assert_eq!(
        csv,
        "line_number,period,sku_id,billing_pre_tax_total,partner_earned_credit_rate,is_billed,product_family\n\
         2,2025-11,0003,0.000071083300000000,0.150000000000000000,true,azure_usage\n\
         3,2025-11,016X,1.500000000000000000,,false,azure_usage\n\
         7,2025-11,0003,0.000071083300000000,0.150000000000000000,true,azure_usage\n"
    );
    // Lines 2 and 7 are the same typed row (SkuId `3` padded): same key, occurrences 1 and 2, distinct ids.
    let ids: Vec<&str> = staged
        .column("line_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[2] && ids[0] != ids[1]);
    let rej = crate::testing::frame_to_sorted_csv(
        &rejects
            .select([
                "line_number",
                "reason_code",
                "column",
                "billing_pre_tax_total",
            ])
            .unwrap(),
    );
    assert_eq!(
        rej,
        "line_number,reason_code,column,billing_pre_tax_total\n\
         4,bad_date,usage_date,1.000000000000000000\n\
         5,bad_decimal,billing_pre_tax_total,\n\
         6,missing_value,billing_pre_tax_total,\n"
    );
    let reason = rejects
        .column("reason")
        .unwrap()
        .str()
        .unwrap()
        .get(1)
        .unwrap()
        .to_string();
    assert!(
        reason.contains("`usage_date` holds `31/11/2025`")
            || reason.contains("`billing_pre_tax_total` holds `1,5`"),
        "{reason}"
    );
}

#[test]
fn counts_cover_every_row_and_rounded_values() {
    let (raw, opts) = raw_usage(&[
        ("11/02/2025", "0.1999968000511991808131", "3", "15", "G1"),
        ("11/02/2025", "x", "0003", "15", "G1"),
        ("11/02/2025", "2.5", "016X", "15", "G1"),
        ("10/31/2025", "4", "016X", "15", "G1"),
    ]);
    let typed = typed_rows(raw, &opts).unwrap();
    let df = file_counts(typed, opts.kind, opts.period).collect().unwrap();
    let int = |c: &str| df.column(c).unwrap().i64().unwrap().get(0);
    assert_eq!(int("rows_in"), Some(4));
    assert_eq!(int("rounded_values"), Some(1));
    assert_eq!(int("padded_sku_ids"), Some(1));
    assert_eq!(int("rejected"), Some(1));
    assert_eq!(int("other_period"), Some(1));
    let dec_at = |c: &str| any_to_decimal(&df.column(c).unwrap().get(0).unwrap()).unwrap();
    // 0.1999968000511991808131 rounds half-even to 18 places; `x` counts nothing; + 2.5 + 4.
    assert_eq!(dec_at("cost_in"), "6.699996800051199181".parse::<Decimal>().unwrap());
    assert_eq!(dec_at("cost_other_period"), "4".parse::<Decimal>().unwrap());
    assert_eq!(df.column("first_other_period").unwrap().str().unwrap().get(0), Some("2025-10"));
}

#[test]
fn occurrences_number_repeated_keys_in_line_order() {
    let k = |b: u8| [b; 16];
    let mut rows = vec![(k(1), 9), (k(2), 3), (k(1), 4), (k(1), 7), (k(3), 5)];
    let occ = occurrences(&mut rows);
    assert_eq!(occ.len(), 2);
    assert_eq!(occ.get(&7), Some(&2));
    assert_eq!(occ.get(&9), Some(&3));
    assert_eq!(occ.get(&4), None, "the first of a repeated key is occurrence 1");
}

#[test]
fn rows_beyond_the_decimal_range_are_rejected_not_fatal() {
    // Line 2: 10^13 in one cell. Line 3: quantity 1000 × price 1000 × rate 10000 (4 + 4 + 5 integer digits
    // > 12). Line 4: the same with rate 1 (9 digits) is fine.
    let (raw, mut opts) = raw_usage(&[
        ("11/02/2025", "10000000000000", "1", "15", "G1"),
        ("11/02/2025", "1.5", "1", "15", "G1"),
        ("11/02/2025", "1.5", "1", "15", "G1"),
    ]);
    let raw = raw.with_columns([
        lit("1000").alias("quantity"),
        lit("1000").alias("unit_price"),
        when(col("line_number").eq(lit(3i64))).then(lit("10000")).otherwise(lit("1")).alias("pc_to_bc_exchange_rate"),
    ]);
    opts.present.extend(["quantity".to_string(), "unit_price".to_string(), "pc_to_bc_exchange_rate".to_string()]);
    let out = stg_pc_rows(raw, &opts).unwrap();
    let staged = out.staged.collect().unwrap();
    assert_eq!(staged.column("line_number").unwrap().i64().unwrap().get(0), Some(4));
    assert_eq!(staged.height(), 1);
    let rej = out.rejects.collect().unwrap();
    let codes: Vec<&str> = rej.column("reason_code").unwrap().str().unwrap().iter().flatten().collect();
    assert_eq!(codes, ["value_out_of_range", "value_out_of_range"]);
}
