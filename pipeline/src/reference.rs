//! Staging of the MSP's reference CSVs (DESIGN §4.2): typing every cell, checking each row's own rules, and
//! naming file, line and column for every bad value (the job turns these into exit 2).
//!
//! Reference files are small (thousands of rows at most), so they are typed cell by cell in Rust with
//! `rust_decimal`, which gives exact values and precise messages. Rules that span rows of one table and belong
//! to a stage (tag-rule shares, rate-rule ties, org-unit trees) are checked by that stage.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use schemas::Ty;

use crate::decimal::to_mantissa;
use crate::error::ConfigError;

/// The reference tables, each with its staged schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefTable {
    Customers,
    OrgUnits,
    RateCards,
    TagRules,
    FxRates,
    ManualLines,
    PsaTime,
    LicenseActivity,
    Utilization,
    GlAccounts,
}

impl RefTable {
    /// The staged table's name.
    pub fn table(self) -> &'static str {
        match self {
            RefTable::Customers => schemas::stg_customers::TABLE,
            RefTable::OrgUnits => schemas::stg_org_units::TABLE,
            RefTable::RateCards => schemas::stg_rate_cards::TABLE,
            RefTable::TagRules => schemas::stg_tag_rules::TABLE,
            RefTable::FxRates => schemas::stg_fx_rates::TABLE,
            RefTable::ManualLines => schemas::stg_manual_lines::TABLE,
            RefTable::PsaTime => schemas::stg_psa_time::TABLE,
            RefTable::LicenseActivity => schemas::stg_license_activity::TABLE,
            RefTable::Utilization => schemas::stg_utilization::TABLE,
            RefTable::GlAccounts => schemas::stg_gl_accounts::TABLE,
        }
    }

    fn columns(self) -> &'static [(&'static str, Ty)] {
        match self {
            RefTable::Customers => schemas::stg_customers::COLUMNS,
            RefTable::OrgUnits => schemas::stg_org_units::COLUMNS,
            RefTable::RateCards => schemas::stg_rate_cards::COLUMNS,
            RefTable::TagRules => schemas::stg_tag_rules::COLUMNS,
            RefTable::FxRates => schemas::stg_fx_rates::COLUMNS,
            RefTable::ManualLines => schemas::stg_manual_lines::COLUMNS,
            RefTable::PsaTime => schemas::stg_psa_time::COLUMNS,
            RefTable::LicenseActivity => schemas::stg_license_activity::COLUMNS,
            RefTable::Utilization => schemas::stg_utilization::COLUMNS,
            RefTable::GlAccounts => schemas::stg_gl_accounts::COLUMNS,
        }
    }

    /// Columns the file must have (a missing one is an error naming it).
    fn required(self) -> &'static [&'static str] {
        match self {
            RefTable::Customers => &["customer_id", "customer_name", "invoice_currency", "template"],
            RefTable::OrgUnits => &["unit_id", "customer_id"],
            RefTable::RateCards => &["rule_id", "method", "value"],
            RefTable::TagRules => &["rule_id", "priority"],
            RefTable::FxRates => &["date", "from_currency", "to_currency", "rate"],
            RefTable::ManualLines => &["customer_id", "period", "description", "quantity", "unit_price", "currency"],
            RefTable::PsaTime => &["entry_id", "customer_id", "work_date", "hours", "hourly_rate", "currency", "billable"],
            RefTable::LicenseActivity => &["customer_id", "user_key", "product_id"],
            RefTable::Utilization => &["resource_uri", "date", "cpu_avg_pct"],
            RefTable::GlAccounts => &["line_type", "product_family", "revenue_account", "cost_account"],
        }
    }

    /// Cells that must not be empty.
    fn non_empty(self) -> &'static [&'static str] {
        match self {
            RefTable::Customers => &["customer_id", "invoice_currency"],
            RefTable::OrgUnits => &["unit_id", "customer_id"],
            RefTable::RateCards => &["rule_id", "method", "value"],
            RefTable::TagRules => &["rule_id", "priority"],
            RefTable::FxRates => &["date", "from_currency", "to_currency", "rate"],
            RefTable::ManualLines => &["customer_id", "period", "quantity", "unit_price", "currency"],
            RefTable::PsaTime => &["entry_id", "customer_id", "work_date", "hours", "hourly_rate", "currency", "billable"],
            RefTable::LicenseActivity => &["customer_id", "user_key", "product_id"],
            RefTable::Utilization => &["resource_uri", "date", "cpu_avg_pct"],
            RefTable::GlAccounts => &["line_type", "product_family"],
        }
    }

    /// Enumeration columns, staged in lower case (DESIGN §4.2). `billable` is a boolean, parsed in any case.
    fn enumerations(self) -> &'static [&'static str] {
        match self {
            RefTable::Customers => &["template", "fx_policy", "consent_status"],
            RefTable::OrgUnits => &["unit_type"],
            RefTable::RateCards => &["template", "product_family", "method"],
            RefTable::ManualLines => &["line_type"],
            RefTable::GlAccounts => &["line_type", "product_family"],
            _ => &[],
        }
    }

    /// ISO 4217 code columns, staged in upper case.
    fn currencies(self) -> &'static [&'static str] {
        match self {
            RefTable::Customers => &["invoice_currency"],
            RefTable::RateCards => &["currency"],
            RefTable::FxRates => &["from_currency", "to_currency"],
            RefTable::ManualLines | RefTable::PsaTime => &["currency"],
            _ => &[],
        }
    }

    /// Decimal columns where a trailing `%` means percent (`15%` = 0.15).
    fn percent_columns(self) -> &'static [&'static str] {
        match self {
            RefTable::Customers => &["target_margin"],
            RefTable::RateCards => &["value"],
            RefTable::TagRules => &["share"],
            _ => &[],
        }
    }
}

/// A staged reference table and the warnings staging counted.
#[derive(Debug, Clone)]
pub struct StagedRef {
    pub df: DataFrame,
    pub warnings: Vec<String>,
    /// Identical rows counted once.
    pub duplicates: u64,
}

/// An empty staged table (for optional files that are absent).
pub fn empty(table: RefTable) -> DataFrame {
    DataFrame::empty_with_schema(&schemas::build_schema(table.columns()))
}

/// Types a reference CSV read as text. `header` is the file's header; `rows` its records, each with its
/// 1-based line number (header = line 1). Returns the staged frame or every error found (file, line, column).
pub fn stage_reference(
    table: RefTable,
    file: &str,
    header: &[String],
    rows: &[(u64, Vec<String>)],
) -> Result<StagedRef, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let err = |line: u64, column: &str, message: String| ConfigError { file: file.into(), line, column: column.into(), message };

    // Map the header by trimmed, lower-cased name.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        let key = h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
        index.insert(key, i);
    }
    for req in table.required() {
        if !index.contains_key(*req) {
            errors.push(err(1, req, format!("the header has no `{req}` column; add it (see DESIGN §4.2 for the columns of this file)")));
        }
    }
    let known: Vec<&str> = table.columns().iter().map(|(n, _)| *n).collect();
    for h in header {
        let key = h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
        if !known.contains(&key.as_str()) && !key.is_empty() {
            warnings.push(format!("{file}: unknown column `{}` ignored", h.trim()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Identical rows (trimmed fields equal) count once.
    let mut seen: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut kept: Vec<(u64, Vec<String>)> = Vec::with_capacity(rows.len());
    let mut duplicates = 0;
    for (line, rec) in rows {
        let trimmed: Vec<String> = rec.iter().map(|s| s.trim().to_string()).collect();
        if trimmed.iter().all(String::is_empty) {
            continue; // blank line
        }
        if let Some(first) = seen.insert(trimmed.clone(), *line) {
            // A repeated tag-rule row would be a second part of the same split: refuse it rather than guess.
            if table == RefTable::TagRules {
                errors.push(err(*line, "rule_id", format!("this row repeats line {first} exactly; a split names each part once, so delete one of them")));
            }
            duplicates += 1;
            continue;
        }
        kept.push((*line, trimmed));
    }

    let cell = |rec: &Vec<String>, name: &str| -> String {
        index.get(name).and_then(|&i| rec.get(i)).cloned().unwrap_or_default()
    };

    let mut builders: Vec<ColumnBuilder> = table.columns().iter().map(|(n, t)| ColumnBuilder::new(n, *t)).collect();
    for (line, rec) in &kept {
        for b in builders.iter_mut() {
            if b.name == "line_number" {
                b.push_int(Some(*line as i64));
                continue;
            }
            if (table == RefTable::OrgUnits && b.name == "unit_path") || (table == RefTable::TagRules && b.name == "part_no") {
                b.push_null(); // filled by the stage that owns the table
                continue;
            }
            let raw = cell(rec, b.name);
            if raw.is_empty() {
                if table.non_empty().contains(&b.name) {
                    errors.push(err(*line, b.name, format!("`{}` is empty; every row needs one", b.name)));
                }
                b.push_null();
                continue;
            }
            let percent = table.percent_columns().contains(&b.name);
            if let Err(m) = b.push_text(&raw, percent) {
                errors.push(err(*line, b.name, m));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let columns: Vec<Column> = builders.into_iter().map(ColumnBuilder::finish).collect();
    let mut df = DataFrame::new_infer_height(columns).map_err(|e| vec![err(0, "", format!("cannot build table: {e}"))])?;
    check_rows(table, file, &mut df, &mut warnings).map_err(|e| e)?;
    Ok(StagedRef { df, warnings, duplicates })
}


/// Locales the invoice documents format numbers and dates for (`customers.csv` `locale`, issue #14).
pub const LOCALES: &[&str] = &["en-US", "en-GB", "de-DE", "fr-FR", "nl-NL", "ja-JP"];

/// Row and table rules of DESIGN §4.2 that do not belong to a stage.
fn check_rows(table: RefTable, file: &str, df: &mut DataFrame, warnings: &mut Vec<String>) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let s = |df: &DataFrame, c: &str| -> Vec<Option<String>> {
        df.column(c).ok().and_then(|c| c.str().ok().map(|ca| ca.iter().map(|v| v.map(str::to_string)).collect())).unwrap_or_default()
    };
    let lines: Vec<i64> = df.column("line_number").map(|c| c.i64().map(|ca| ca.into_no_null_iter().collect()).unwrap_or_default()).unwrap_or_default();
    let err = |i: usize, column: &str, message: String| ConfigError { file: file.into(), line: lines.get(i).copied().unwrap_or(0) as u64, column: column.into(), message };
    let one_of = |errors: &mut Vec<ConfigError>, col: &str, vals: &[Option<String>], allowed: &[&str], allow_empty: bool| {
        for (i, v) in vals.iter().enumerate() {
            match v {
                None if allow_empty => {}
                None => errors.push(err(i, col, format!("`{col}` is empty; use one of {}", allowed.join(", ")))),
                Some(v) if !allowed.contains(&v.as_str()) => {
                    errors.push(err(i, col, format!("unknown {col} `{v}`; use one of {}", allowed.join(", "))))
                }
                _ => {}
            }
        }
    };
    let currency = |errors: &mut Vec<ConfigError>, col: &str, vals: &[Option<String>]| {
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                if crate::currency::minor_unit(v).is_none() {
                    errors.push(err(i, col, format!("`{v}` is not an ISO 4217 currency code; write three letters such as EUR")));
                }
            }
        }
    };
    // Enumerations are staged in lower case and ISO 4217 codes in upper case (DESIGN §4.2: both are
    // case-insensitive), before any check, so `SMB`, `Markup_On_Cost` and `usd` are the values they spell.
    for c in table.enumerations() {
        recase(df, c, false).map_err(|e| vec![err(0, c, e.to_string())])?;
    }
    for c in table.currencies() {
        recase(df, c, true).map_err(|e| vec![err(0, c, e.to_string())])?;
    }
    match table {
        RefTable::Customers => {
            // Ids compare case-insensitively everywhere (Partner Center GUIDs are typed in either case), so two
            // rows differing only in case would be one customer twice.
            let ids = s(df, "customer_id");
            let mut first: HashMap<String, usize> = HashMap::new();
            for (i, id) in ids.iter().enumerate() {
                if let Some(id) = id {
                    if let Some(&j) = first.get(&id.to_lowercase()) {
                        let same = ids[j].as_deref().unwrap_or_default();
                        let how = if same == id { String::new() } else { format!(" as `{same}`: ids compare case-insensitively") };
                        errors.push(err(i, "customer_id", format!("duplicate customer_id `{id}` (first on line {}{how}); keep one row per customer", lines[j])));
                    } else {
                        first.insert(id.to_lowercase(), i);
                    }
                }
            }
            one_of(&mut errors, "template", &s(df, "template"), &["enterprise", "smb", "trial"], false);
            one_of(&mut errors, "fx_policy", &s(df, "fx_policy"), &["microsoft", "market", "fixed"], true);
            one_of(&mut errors, "consent_status", &s(df, "consent_status"), &["active", "expired", "revoked"], true);
            currency(&mut errors, "invoice_currency", &s(df, "invoice_currency"));
            // The document locale (issue #14): number and date formats of the PDF and HTML invoices.
            for (i, v) in s(df, "locale").iter().enumerate() {
                if let Some(v) = v.as_deref().filter(|v| !LOCALES.iter().any(|l| l.eq_ignore_ascii_case(&v.replace('_', "-")))) {
                    errors.push(err(i, "locale", format!("unknown locale `{v}`; use one of {} or leave it empty (en-US)", LOCALES.join(", "))));
                }
            }
            let pol = s(df, "fx_policy");
            let fixed = df.column("fixed_fx_rate").ok().map(|c| c.is_not_null()).map(|m| m.iter().map(|v| v.unwrap_or(false)).collect::<Vec<_>>()).unwrap_or_default();
            for (i, p) in pol.iter().enumerate() {
                if p.as_deref() == Some("fixed") && !fixed.get(i).copied().unwrap_or(false) {
                    errors.push(err(i, "fixed_fx_rate", "fx_policy `fixed` needs a `fixed_fx_rate`; add the rate (invoice-currency units per billing-currency unit)".into()));
                }
            }
            positive(df, "fixed_fx_rate", &err, &mut errors);
            // payment terms default 30.
            if let Ok(c) = df.column("payment_terms_days") {
                let filled = c.as_materialized_series().fill_null(FillNullStrategy::Zero).map_err(|e| vec![err(0, "payment_terms_days", e.to_string())])?;
                let v: Vec<i64> = c.i64().map(|ca| ca.iter().map(|v| v.unwrap_or(30)).collect()).unwrap_or_else(|_| vec![30; filled.len()]);
                let _ = df.with_column(Column::new("payment_terms_days".into(), v));
            }
        }
        RefTable::RateCards => {
            let methods = s(df, "method");
            one_of(&mut errors, "method", &methods, &["markup_on_cost", "margin_on_cost", "discount_off_list", "markup_on_list", "fixed_unit_price"], false);
            one_of(&mut errors, "product_family", &s(df, "product_family"), &["azure_usage", "license", "reservation", "savings_plan", "marketplace", "software", "*"], true);
            one_of(&mut errors, "template", &s(df, "template"), &["enterprise", "smb", "trial", "*"], true);
            let values = decimals(df, "value");
            let ccy = s(df, "currency");
            currency(&mut errors, "currency", &ccy);
            for (i, m) in methods.iter().enumerate() {
                let v = values.get(i).copied().flatten();
                match (m.as_deref(), v) {
                    (Some("margin_on_cost"), Some(v)) if v >= Decimal::ONE => {
                        errors.push(err(i, "value", format!("margin_on_cost of {v} would divide by zero or a negative number; a margin must be below 1 (100%)")))
                    }
                    (Some("fixed_unit_price"), _) if ccy.get(i).cloned().flatten().is_none() => {
                        errors.push(err(i, "currency", "fixed_unit_price needs a `currency`; add the price's ISO 4217 code".into()))
                    }
                    _ => {}
                }
            }
            let from = dates(df, "valid_from");
            let to = dates(df, "valid_to");
            for i in 0..from.len() {
                if let (Some(f), Some(t)) = (from[i], to[i]) {
                    if t <= f {
                        errors.push(err(i, "valid_to", format!("valid_to {t} is not after valid_from {f}; valid_to is exclusive, leave it empty for an open rule")));
                    }
                }
            }
            // SkuIds stripped by Excel: `ProductId:4` → `ProductId:0004`, counted.
            let products = s(df, "product_id");
            let mut padded = 0;
            let fixed: Vec<Option<String>> = products
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| match p.split_once(':') {
                        Some((prod, sku)) if sku.len() < 4 && !sku.is_empty() && sku.chars().all(|c| c.is_ascii_digit()) => {
                            padded += 1;
                            format!("{prod}:{sku:0>4}")
                        }
                        _ => p.clone(),
                    })
                })
                .collect();
            if padded > 0 {
                warnings.push(format!("{file}: {padded} SkuId(s) left-padded to 4 digits (an Excel re-save strips leading zeros)"));
                let _ = df.with_column(Column::new("product_id".into(), fixed));
            }
        }
        RefTable::FxRates => {
            for c in ["from_currency", "to_currency"] {
                currency(&mut errors, c, &s(df, c));
            }
            positive(df, "rate", &err, &mut errors);
            let d = dates(df, "date");
            let f = s(df, "from_currency");
            let t = s(df, "to_currency");
            let r = decimals(df, "rate");
            let mut seen: HashMap<(NaiveDate, String, String), (usize, Option<Decimal>)> = HashMap::new();
            for i in 0..d.len() {
                if let (Some(d), Some(f), Some(t)) = (d[i], f[i].clone(), t[i].clone()) {
                    if let Some((j, rj)) = seen.get(&(d, f.clone(), t.clone())) {
                        if *rj != r[i] {
                            errors.push(err(i, "rate", format!("a second, different rate for {f}→{t} on {d} (first on line {}); keep one", lines[*j])));
                        }
                    } else {
                        seen.insert((d, f, t), (i, r[i]));
                    }
                }
            }
        }
        RefTable::ManualLines => {
            one_of(&mut errors, "line_type", &s(df, "line_type"), &["charge", "credit"], true);
            currency(&mut errors, "currency", &s(df, "currency"));
            for (i, p) in s(df, "period").iter().enumerate() {
                if let Some(p) = p {
                    if p.parse::<crate::Period>().is_err() {
                        errors.push(err(i, "period", format!("bad period `{p}`; write YYYY-MM")));
                    }
                }
            }
        }
        RefTable::PsaTime => currency(&mut errors, "currency", &s(df, "currency")),
        RefTable::OrgUnits => one_of(&mut errors, "unit_type", &s(df, "unit_type"), &["business_unit", "project", "cost_center"], true),
        RefTable::TagRules => {
            let key = s(df, "tag_key");
            let val = s(df, "tag_value");
            for i in 0..key.len() {
                if val[i].is_some() && key[i].is_none() {
                    errors.push(err(i, "tag_value", "a tag_value without a tag_key matches nothing; add the tag_key or clear the value".into()));
                }
            }
        }
        RefTable::GlAccounts => {
            let types = s(df, "line_type");
            let families = s(df, "product_family");
            let mut allowed_types: Vec<&str> = crate::ledger::LINE_TYPES.to_vec();
            allowed_types.push("*");
            one_of(&mut errors, "line_type", &types, &allowed_types, false);
            one_of(&mut errors, "product_family", &families, &["azure_usage", "license", "reservation", "savings_plan", "marketplace", "software", "*"], false);
            // One row per (line_type, product_family): a second, different row would make the mapping ambiguous.
            let mut first: HashMap<(String, String), usize> = HashMap::new();
            for i in 0..types.len() {
                if let (Some(t), Some(f)) = (&types[i], &families[i]) {
                    if let Some(&j) = first.get(&(t.clone(), f.clone())) {
                        errors.push(err(i, "line_type", format!("a second row for line_type `{t}` × product_family `{f}` (first on line {}); keep one row per pair", lines[j])));
                    } else {
                        first.insert((t.clone(), f.clone()), i);
                    }
                }
            }
            // Account codes are identifiers: no surrounding spaces reach an ERP import.
            for c in ["revenue_account", "cost_account", "deferred_revenue_account", "receivable_account", "payable_account"] {
                for (i, v) in s(df, c).iter().enumerate() {
                    if let Some(v) = v {
                        if v.contains(['\n', '\r']) {
                            errors.push(err(i, c, format!("account `{}` spans lines; write the account code on one line", v.replace(['\n', '\r'], " "))));
                        }
                    }
                }
            }
        }
        RefTable::LicenseActivity | RefTable::Utilization => {}
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Replaces a text column by its lower-case (or upper-case) spelling; absent columns are left alone.
fn recase(df: &mut DataFrame, col: &str, upper: bool) -> PolarsResult<()> {
    let Ok(c) = df.column(col) else { return Ok(()) };
    let ca = c.str()?;
    let out: StringChunked = ca
        .iter()
        .map(|v| v.map(|v| if upper { v.to_uppercase() } else { v.to_lowercase() }))
        .collect();
    df.with_column(out.with_name(col.into()).into_column())?;
    Ok(())
}

/// Customer-id columns of each reference table (other than `customers.csv` itself).
pub fn customer_id_columns(table: RefTable) -> &'static [&'static str] {
    match table {
        RefTable::OrgUnits | RefTable::RateCards | RefTable::ManualLines | RefTable::PsaTime | RefTable::LicenseActivity => {
            &["customer_id"]
        }
        RefTable::TagRules => &["customer_id", "target_customer_id"],
        RefTable::Customers | RefTable::FxRates | RefTable::Utilization | RefTable::GlAccounts => &[],
    }
}

/// Lower-cased customer id → its spelling in `customers.csv` (staged, so unique case-insensitively).
fn spellings(customers: &DataFrame) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Ok(ca) = customers.column("customer_id").and_then(|c| c.str().cloned()) {
        for id in ca.iter().flatten() {
            out.entry(id.to_lowercase()).or_insert_with(|| id.to_string());
        }
    }
    out
}

/// Rewrites the customer ids of a staged reference table in the spelling of `customers.csv` (DESIGN §4.2:
/// ids are case-insensitive; outputs use the customers.csv spelling). Ids not in `customers.csv` and `*` stay
/// as written.
pub fn with_customer_spelling(table: RefTable, df: &mut DataFrame, customers: &DataFrame) -> PolarsResult<()> {
    let map = spellings(customers);
    for c in customer_id_columns(table) {
        let Ok(column) = df.column(c) else { continue };
        let ca = column.str()?;
        let out: StringChunked = ca
            .iter()
            .map(|v| v.map(|v| map.get(&v.to_lowercase()).cloned().unwrap_or_else(|| v.to_string())))
            .collect();
        df.with_column(out.with_name((*c).into()).into_column())?;
    }
    Ok(())
}

/// `column` of a Partner Center frame (the export's `CustomerId`) in the spelling of `customers.csv`, matched
/// case-insensitively; ids not in `customers.csv` stay as written. A left join on a small frame: it keeps the
/// rows and their order, and streams.
pub fn customer_spelling(lf: LazyFrame, customers: &DataFrame, column: &str) -> LazyFrame {
    let map = spellings(customers);
    if map.is_empty() {
        return lf;
    }
    let (keys, ids): (Vec<String>, Vec<String>) = map.into_iter().unzip();
    let Ok(table) = DataFrame::new_infer_height(vec![
        Column::new("__spelling_key".into(), keys),
        Column::new("__spelling".into(), ids),
    ]) else {
        return lf;
    };
    let mut args = JoinArgs::new(JoinType::Left);
    args.maintain_order = MaintainOrderJoin::Left;
    lf.with_column(col(column).str().to_lowercase().alias("__spelling_key"))
        .join(table.lazy(), [col("__spelling_key")], [col("__spelling_key")], args)
        .with_column(coalesce(&[col("__spelling"), col(column)]).alias(column))
        .drop(cols(["__spelling_key", "__spelling"]))
}

fn positive(df: &DataFrame, col: &str, err: &dyn Fn(usize, &str, String) -> ConfigError, errors: &mut Vec<ConfigError>) {
    for (i, v) in decimals(df, col).iter().enumerate() {
        if let Some(v) = v {
            if *v <= Decimal::ZERO {
                errors.push(err(i, col, format!("{col} {v} must be above 0")));
            }
        }
    }
}

fn decimals(df: &DataFrame, col: &str) -> Vec<Option<Decimal>> {
    match df.column(col) {
        Ok(c) => (0..c.len()).map(|i| c.get(i).ok().and_then(|v| crate::decimal::any_to_decimal(&v))).collect(),
        Err(_) => vec![],
    }
}

fn dates(df: &DataFrame, col: &str) -> Vec<Option<NaiveDate>> {
    match df.column(col).and_then(|c| c.date().map(|d| d.as_date_iter().collect::<Vec<_>>())) {
        Ok(v) => v,
        Err(_) => vec![None; df.height()],
    }
}

/// Parses a reference-file date: ISO `YYYY-MM-DD` (also `YYYY/MM/DD`).
pub fn parse_ref_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").or_else(|_| NaiveDate::parse_from_str(s, "%Y/%m/%d")).ok()
}

/// Parses a decimal cell exactly; with `percent`, `15%` means 0.15. Thousands separators and currency signs
/// are refused rather than guessed.
pub fn parse_decimal(s: &str, percent: bool) -> Option<Decimal> {
    let t = s.trim();
    if percent {
        if let Some(p) = t.strip_suffix('%') {
            return p.trim().parse::<Decimal>().ok().map(|d| d / Decimal::ONE_HUNDRED);
        }
    }
    if t.contains(['e', 'E']) {
        return Decimal::from_scientific(t).ok();
    }
    t.parse::<Decimal>().ok()
}

/// Parses a boolean cell: true/false, yes/no, 1/0, in any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "y" => Some(true),
        "false" | "no" | "0" | "n" => Some(false),
        _ => None,
    }
}

/// Accumulates one typed column from text cells.
struct ColumnBuilder {
    name: &'static str,
    ty: Ty,
    strs: Vec<Option<String>>,
    decs: Vec<Option<i128>>,
    dates: Vec<Option<i32>>,
    ints: Vec<Option<i64>>,
    bools: Vec<Option<bool>>,
}

impl ColumnBuilder {
    fn new(name: &'static str, ty: Ty) -> Self {
        Self { name, ty, strs: vec![], decs: vec![], dates: vec![], ints: vec![], bools: vec![] }
    }

    fn push_null(&mut self) {
        match self.ty {
            Ty::Str => self.strs.push(None),
            Ty::Dec => self.decs.push(None),
            Ty::Date | Ty::Ts => self.dates.push(None),
            Ty::Int => self.ints.push(None),
            Ty::Bool => self.bools.push(None),
        }
    }

    fn push_int(&mut self, v: Option<i64>) {
        self.ints.push(v);
    }

    fn push_text(&mut self, raw: &str, percent: bool) -> Result<(), String> {
        let name = self.name;
        match self.ty {
            Ty::Str => self.strs.push(Some(raw.to_string())),
            Ty::Dec => {
                let d = parse_decimal(raw, percent).ok_or_else(|| {
                    format!("`{raw}` is not a decimal number; write it with a dot and no thousands separator, e.g. 1234.56{}", if percent { " or 15%" } else { "" })
                })?;
                if d.scale() > schemas::MONEY_SCALE as u32 {
                    return Err(format!("`{raw}` has more than {} decimal places; shorten it", schemas::MONEY_SCALE));
                }
                self.decs.push(Some(to_mantissa(d)));
            }
            Ty::Date | Ty::Ts => {
                let d = parse_ref_date(raw).ok_or_else(|| format!("`{raw}` is not a date; write it as YYYY-MM-DD"))?;
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date");
                self.dates.push(Some((d - epoch).num_days() as i32));
            }
            Ty::Int => {
                let v = raw.trim().parse::<i64>().map_err(|_| format!("`{raw}` is not a whole number in `{name}`"))?;
                self.ints.push(Some(v));
            }
            Ty::Bool => {
                let v = parse_bool(raw).ok_or_else(|| format!("`{raw}` is not a yes/no value; write true/false, yes/no or 1/0"))?;
                self.bools.push(Some(v));
            }
        }
        Ok(())
    }

    fn finish(self) -> Column {
        let name: PlSmallStr = self.name.into();
        match self.ty {
            Ty::Str => Column::new(name, self.strs),
            Ty::Dec => Int128Chunked::from_iter_options(name, self.decs.into_iter())
                .into_decimal_unchecked(schemas::MONEY_PRECISION, schemas::MONEY_SCALE)
                .into_series()
                .into_column(),
            Ty::Date | Ty::Ts => Int32Chunked::from_iter_options(name, self.dates.into_iter()).into_date().into_series().into_column(),
            Ty::Int => Column::new(name, self.ints),
            Ty::Bool => Column::new(name, self.bools),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lines: &[&str]) -> (Vec<String>, Vec<(u64, Vec<String>)>) {
        let header: Vec<String> = lines[0].split(',').map(str::to_string).collect();
        let rows = lines[1..].iter().enumerate().map(|(i, l)| ((i + 2) as u64, l.split(',').map(str::to_string).collect())).collect();
        (header, rows)
    }

    #[test]
    fn customers_stage_with_defaults() {
        let (h, r) = rows(&[
            "customer_id,customer_name,invoice_currency,template,fx_policy,fixed_fx_rate,monthly_budget,spend_cap,target_margin,payment_terms_days",
            "c1,Contoso,EUR,enterprise,market,,1000,,15%,",
            "c2,Fabrikam,USD,trial,,,,200,0.2,14",
        ]);
        let s = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap();
        assert_eq!(s.df.height(), 2);
        let tm = decimals(&s.df, "target_margin");
        assert_eq!(tm, vec![Some("0.15".parse().unwrap()), Some("0.2".parse().unwrap())]);
        let terms: Vec<i64> = s.df.column("payment_terms_days").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(terms, vec![30, 14]);
    }

    #[test]
    fn customers_document_fields_are_optional_and_the_locale_is_checked() {
        let (h, r) = rows(&[
            "customer_id,customer_name,invoice_currency,template,billing_address,tax_id,po_number,contact_email,locale",
            "c1,Contoso,EUR,enterprise,Friedrichstraße 10 Berlin,DE811001000,PO-1,ap@contoso.example,de-DE",
            "c2,Fabrikam,USD,smb,,,,,",
        ]);
        let s = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap();
        let loc: Vec<Option<&str>> = s.df.column("locale").unwrap().str().unwrap().iter().collect();
        assert_eq!(loc, vec![Some("de-DE"), None]);
        let (h, r) = rows(&["customer_id,customer_name,invoice_currency,template,locale", "c1,Contoso,EUR,smb,pt-BR"]);
        let e = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap_err();
        assert_eq!((e[0].line, e[0].column.as_str()), (2, "locale"), "{e:?}");
        assert!(e[0].message.contains("unknown locale `pt-BR`"), "{}", e[0].message);
    }

    #[test]
    fn bad_cells_name_file_line_and_column() {
        let (h, r) = rows(&[
            "customer_id,customer_name,invoice_currency,template,fx_policy",
            "c1,Contoso,EUR,enterprise,market",
            "c1,Again,EUR,gold,weird",
            "c3,Bad,EURO,smb,",
        ]);
        let e = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap_err();
        let found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.column.as_str())).collect();
        assert!(found.contains(&(3, "customer_id")), "{e:?}");
        assert!(found.contains(&(3, "template")), "{e:?}");
        assert!(found.contains(&(3, "fx_policy")), "{e:?}");
        assert!(found.contains(&(4, "invoice_currency")), "{e:?}");
    }

    #[test]
    fn rate_cards_rules_per_row() {
        let (h, r) = rows(&[
            "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to",
            "r1,*,*,azure_usage,,,,markup_on_cost,15%,,2025-01-01,",
            "r2,*,*,license,,,CFQ7TTC0LH0J:1,fixed_unit_price,3.5,,2025-01-01,",
            "r3,*,*,*,,,,margin_on_cost,1,,,",
            "r4,*,*,*,,,,bogus,1,,,",
            "r5,*,*,*,,,,markup_on_cost,abc,,,",
            "r6,*,*,*,,,,markup_on_cost,0.1,,2025-02-01,2025-01-01",
        ]);
        let e = stage_reference(RefTable::RateCards, "rate_cards.csv", &h, &r).unwrap_err();
        let found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.column.as_str())).collect();
        assert_eq!(found, vec![(6, "value")], "value parse error stops before row rules: {e:?}");
        let (h, r) = rows(&[
            "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to",
            "r1,*,*,azure_usage,,,,markup_on_cost,15%,,2025-01-01,",
            "r2,*,*,license,,,CFQ7TTC0LH0J:1,fixed_unit_price,3.5,,2025-01-01,",
            "r3,*,*,*,,,,margin_on_cost,1,,,",
            "r4,*,*,*,,,,bogus,1,,,",
            "r6,*,*,*,,,,markup_on_cost,0.1,,2025-02-01,2025-01-01",
        ]);
        let e = stage_reference(RefTable::RateCards, "rate_cards.csv", &h, &r).unwrap_err();
        let mut found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.column.as_str())).collect();
        found.sort();
        assert_eq!(found, vec![(3, "currency"), (4, "value"), (5, "method"), (6, "valid_to")]);
    }

    #[test]
    fn rate_card_sku_ids_are_padded_and_counted() {
        let (h, r) = rows(&["rule_id,product_id,method,value,currency", "r2,CFQ7TTC0LH0J:1,fixed_unit_price,3.5,EUR"]);
        let s = stage_reference(RefTable::RateCards, "rate_cards.csv", &h, &r).unwrap();
        let p = s.df.column("product_id").unwrap().str().unwrap().get(0).unwrap().to_string();
        assert_eq!(p, "CFQ7TTC0LH0J:0001");
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn fx_conflicts_and_identical_rows() {
        let (h, r) = rows(&[
            "date,from_currency,to_currency,rate",
            "2025-06-30,USD,EUR,0.9",
            "2025-06-30,USD,EUR,0.9",
            "2025-06-30,USD,EUR,0.91",
            "2025-06-30,EUR,USD,0",
        ]);
        let e = stage_reference(RefTable::FxRates, "fx_rates.csv", &h, &r).unwrap_err();
        let mut found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.column.as_str())).collect();
        found.sort();
        assert_eq!(found, vec![(4, "rate"), (5, "rate")]);
    }

    #[test]
    fn a_repeated_tag_rule_row_is_an_error_not_a_silent_merge() {
        let (h, r) = rows(&["rule_id,priority,target_unit_id,share", "split,1,u1,0.5", "split,1,u1,0.5", "split,1,u2,"]);
        let e = stage_reference(RefTable::TagRules, "tag_rules.csv", &h, &r).unwrap_err();
        assert_eq!((e[0].line, e[0].column.as_str()), (3, "rule_id"));
        assert!(e[0].message.contains("repeats line 2"), "{}", e[0].message);
    }

    #[test]
    fn psa_billable_accepts_the_usual_spellings_only() {
        let (h, r) = rows(&[
            "entry_id,customer_id,project_code,work_date,hours,hourly_rate,currency,billable,description",
            "e1,c1,P1,2025-06-03,1.5,120,EUR,Yes,x",
            "e2,c1,P1,2025-06-03,1.5,120,EUR,0,x",
            "e3,c1,P1,2025-06-03,1.5,120,EUR,maybe,x",
        ]);
        let e = stage_reference(RefTable::PsaTime, "psa.csv", &h, &r).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column.as_str()), (4, "billable"));
    }

    fn strs(df: &DataFrame, c: &str) -> Vec<Option<String>> {
        df.column(c).unwrap().str().unwrap().iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn enumerations_and_currency_codes_are_case_insensitive() {
        // DESIGN §4.2: staged enumerations in lower case, currencies in upper case; unknown values still refused.
        let (h, r) = rows(&[
            "customer_id,customer_name,invoice_currency,template,fx_policy,consent_status",
            "c1,Contoso,usd,SMB,Market,Active",
            "c2,Fabrikam,Eur,Enterprise,,",
        ]);
        let c = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap();
        assert_eq!(strs(&c.df, "invoice_currency"), vec![Some("USD".into()), Some("EUR".into())]);
        assert_eq!(strs(&c.df, "template"), vec![Some("smb".into()), Some("enterprise".into())]);
        assert_eq!(strs(&c.df, "fx_policy"), vec![Some("market".into()), None]);
        assert_eq!(strs(&c.df, "consent_status"), vec![Some("active".into()), None]);
        let (h, r) = rows(&[
            "rule_id,template,product_family,method,value,currency",
            "r1,SMB,Azure_Usage,Markup_On_Cost,0.1,",
            "r2,*,LICENSE,FIXED_UNIT_PRICE,3.5,eur",
        ]);
        let rc = stage_reference(RefTable::RateCards, "rate_cards.csv", &h, &r).unwrap();
        assert_eq!(strs(&rc.df, "method"), vec![Some("markup_on_cost".into()), Some("fixed_unit_price".into())]);
        assert_eq!(strs(&rc.df, "product_family"), vec![Some("azure_usage".into()), Some("license".into())]);
        assert_eq!(strs(&rc.df, "template"), vec![Some("smb".into()), Some("*".into())]);
        assert_eq!(strs(&rc.df, "currency"), vec![None, Some("EUR".into())]);
        let (h, r) = rows(&["date,from_currency,to_currency,rate", "2025-06-30,usd,Eur,0.9"]);
        let fx = stage_reference(RefTable::FxRates, "fx_rates.csv", &h, &r).unwrap();
        assert_eq!((strs(&fx.df, "from_currency"), strs(&fx.df, "to_currency")), (vec![Some("USD".into())], vec![Some("EUR".into())]));
        let (h, r) = rows(&["customer_id,period,description,quantity,unit_price,currency,line_type", "c1,2025-06,x,1,2,gbp,Credit"]);
        let ml = stage_reference(RefTable::ManualLines, "manual_lines.csv", &h, &r).unwrap();
        assert_eq!((strs(&ml.df, "currency"), strs(&ml.df, "line_type")), (vec![Some("GBP".into())], vec![Some("credit".into())]));
        let (h, r) = rows(&["unit_id,customer_id,unit_type", "U1,c1,Cost_Center"]);
        let ou = stage_reference(RefTable::OrgUnits, "org_units.csv", &h, &r).unwrap();
        assert_eq!(strs(&ou.df, "unit_type"), vec![Some("cost_center".into())]);
        // Still refused, with file, line and column: an unknown method in any case, a code that is no currency.
        let (h, r) = rows(&["rule_id,method,value,currency", "r1,Markup_On_Kost,0.1,", "r2,markup_on_cost,0.1,euro"]);
        let e = stage_reference(RefTable::RateCards, "rate_cards.csv", &h, &r).unwrap_err();
        let mut found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.column.as_str())).collect();
        found.sort();
        assert_eq!(found, vec![(2, "method"), (3, "currency")]);
        assert!(e.iter().any(|e| e.message.contains("unknown method `markup_on_kost`")), "{e:?}");
    }

    #[test]
    fn customer_ids_differing_only_in_case_are_a_configuration_error() {
        let (h, r) = rows(&[
            "customer_id,customer_name,invoice_currency,template",
            "abcdef01-0000-4000-8000-000000000001,A,EUR,smb",
            "ABCDEF01-0000-4000-8000-000000000001,B,EUR,smb",
        ]);
        let e = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].file.as_str(), e[0].line, e[0].column.as_str()), ("customers.csv", 3, "customer_id"));
        assert_eq!(
            e[0].message,
            "duplicate customer_id `ABCDEF01-0000-4000-8000-000000000001` (first on line 2 as `abcdef01-0000-4000-8000-000000000001`: ids compare case-insensitively); keep one row per customer"
        );
    }

    #[test]
    fn customer_ids_take_the_spelling_of_customers_csv() {
        let (h, r) = rows(&["customer_id,customer_name,invoice_currency,template", "AbC-1,A,EUR,smb", "d-2,D,EUR,smb"]);
        let customers = stage_reference(RefTable::Customers, "customers.csv", &h, &r).unwrap().df;
        let (h, r) = rows(&[
            "rule_id,priority,customer_id,target_customer_id,share",
            "t1,1,abc-1,D-2,",
            "t2,2,ghost,,",
        ]);
        let mut tags = stage_reference(RefTable::TagRules, "tag_rules.csv", &h, &r).unwrap().df;
        with_customer_spelling(RefTable::TagRules, &mut tags, &customers).unwrap();
        assert_eq!(strs(&tags, "customer_id"), vec![Some("AbC-1".into()), Some("ghost".into())]);
        assert_eq!(strs(&tags, "target_customer_id"), vec![Some("d-2".into()), None]);
        // A Partner Center frame: rows and order kept, ids not in customers.csv as written.
        let pc = df!("customer_id" => [Some("ABC-1"), None, Some("x"), Some("D-2"), Some("abc-1")], "n" => [1, 2, 3, 4, 5])
            .unwrap()
            .lazy();
        let out = customer_spelling(pc, &customers, "customer_id").collect().unwrap();
        assert_eq!(
            strs(&out, "customer_id"),
            vec![Some("AbC-1".into()), None, Some("x".into()), Some("d-2".into()), Some("AbC-1".into())]
        );
        assert_eq!(out.column("n").unwrap().i32().unwrap().into_no_null_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(out.get_column_names(), vec!["customer_id", "n"]);
    }
}
