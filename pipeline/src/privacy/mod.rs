//! Privacy (issue 18): the pure parts of GDPR erasure and telemetry retention, on lazy frames and text.
//!
//! - [`Pseudonyms`]: a map from personal values (user keys, e-mail addresses, personal tag values, resource names
//!   that identify people) to their pseudonyms, applied to every text column of a table (but never to key
//!   columns such as `customer_id` or `invoice_number`) and to raw text. The pseudonyms themselves are made by
//!   the job with a keyed hash (`jobs/privacy/mod.rs`): no key, clock or environment here.
//! - [`find_personal_values`]: which tag values and resource names of a customer's usage identify people.
//! - [`retention::aggregate_rows`]: resource-level rows aggregated to coarser keys with the identifying columns
//!   emptied, amounts summed exactly.

pub mod retention;

use std::collections::BTreeSet;

use polars::prelude::*;

/// Columns never rewritten by a pseudonymisation: identifiers that join tables and the invoice's own numbers.
/// A personal value is never one of them (they are GUIDs and generated numbers), and leaving them alone means a
/// short personal value can never corrupt a key.
pub const PROTECTED_COLUMNS: &[&str] = &[
    "customer_id",
    "source_customer_id",
    "target_customer_id",
    "invoice_number",
    "invoice_line_id",
    "original_line_id",
    "line_id",
    "part_id",
    "period",
    "currency",
    "BillingAccountId",
    "SubAccountId",
    "InvoiceId",
    "x_InvoiceLineId",
    "x_PartId",
    "x_SourceLineId",
    "BillingCurrency",
    "PricingCurrency",
];

/// The shortest value replaced as a substring: shorter ones ("it", "jd") would match inside unrelated text.
pub const MIN_VALUE_CHARS: usize = 4;

/// Personal values and their pseudonyms. Matching is one regular expression over the escaped values, longest
/// first (so a resource name is replaced before an e-mail address it contains would be): the regex crate
/// compiles a literal alternation to Aho-Corasick, one pass over each text whatever the number of values.
#[derive(Debug, Clone, Default)]
pub struct Pseudonyms {
    pairs: Vec<(String, String)>,
    re: Option<regex::Regex>,
    by_value: std::sync::Arc<std::collections::HashMap<String, String>>,
}

impl PartialEq for Pseudonyms {
    fn eq(&self, other: &Self) -> bool {
        self.pairs == other.pairs
    }
}

impl Pseudonyms {
    /// Builds the map from (value, pseudonym) pairs; duplicates and values shorter than [`MIN_VALUE_CHARS`] are
    /// dropped (the caller reports the short ones, see [`too_short`]).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(v, _)| v.chars().count() >= MIN_VALUE_CHARS)
            .collect();
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        pairs.dedup_by(|a, b| a.0 == b.0);
        let re = if pairs.is_empty() {
            None
        } else {
            let alternation: Vec<String> = pairs.iter().map(|(v, _)| regex::escape(v)).collect();
            // Escaped literals only: building cannot fail short of the size limit, raised for long value lists.
            regex::RegexBuilder::new(&alternation.join("|")).size_limit(1 << 28).build().ok()
        };
        let by_value = std::sync::Arc::new(pairs.iter().cloned().collect());
        Self { pairs, re, by_value }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(v, _)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The text with every personal value replaced, and how many replacements were made.
    pub fn apply_text(&self, text: &str) -> (String, usize) {
        let Some(re) = &self.re else {
            return (text.to_string(), 0);
        };
        replace(re, &self.by_value, text)
    }

    /// The text columns of `schema` a pseudonymisation may rewrite.
    pub fn columns(schema: &Schema) -> Vec<PlSmallStr> {
        schema
            .iter()
            .filter(|(n, dt)| **dt == DataType::String && !PROTECTED_COLUMNS.contains(&n.as_str()))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Boolean expression: the row holds a personal value in a rewritable column (None when there is nothing to
    /// look for, or no such column). For counting the rows an erasure changes.
    pub fn touches(&self, schema: &Schema) -> Option<Expr> {
        let re = self.re.clone()?;
        let mut any: Option<Expr> = None;
        for c in Self::columns(schema) {
            let re = re.clone();
            let e = col(c).map(
                move |s: Column| {
                    let ca = s.str()?;
                    let out: BooleanChunked = ca.iter().map(|v| Some(v.is_some_and(|v| re.is_match(v)))).collect();
                    Ok(out.with_name(s.name().clone()).into_column())
                },
                |_, f: &Field| Ok(Field::new(f.name().clone(), DataType::Boolean)),
            );
            any = Some(match any {
                None => e,
                Some(a) => a.or(e),
            });
        }
        any
    }

    /// The frame with every personal value in every rewritable text column replaced by its pseudonym; columns,
    /// types, row order and every other value unchanged.
    pub fn rewrite(&self, lf: LazyFrame, schema: &Schema) -> LazyFrame {
        let Some(re) = self.re.clone() else {
            return lf;
        };
        let exprs: Vec<Expr> = Self::columns(schema)
            .into_iter()
            .map(|c| {
                let (re, map) = (re.clone(), self.by_value.clone());
                col(c.clone())
                    .map(
                        move |s: Column| {
                            let ca = s.str()?;
                            let out: StringChunked = ca
                                .iter()
                                .map(|v| v.map(|v| if re.is_match(v) { replace(&re, &map, v).0 } else { v.to_string() }))
                                .collect();
                            Ok(out.with_name(s.name().clone()).into_column())
                        },
                        |_, f: &Field| Ok(f.clone()),
                    )
                    .alias(c)
            })
            .collect();
        if exprs.is_empty() { lf } else { lf.with_columns(exprs) }
    }
}

fn replace(re: &regex::Regex, map: &std::collections::HashMap<String, String>, text: &str) -> (String, usize) {
    let mut n = 0;
    let out = re.replace_all(text, |c: &regex::Captures| {
        n += 1;
        map.get(&c[0]).cloned().unwrap_or_else(|| c[0].to_string())
    });
    (out.into_owned(), n)
}

/// Whether a value is a pseudonym (`anon-` and 20 lower-case hex digits), as `jobs::privacy::pseudonym` makes them.
pub fn is_pseudonym(v: &str) -> bool {
    v.len() == 25 && v.starts_with("anon-") && v[5..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Values too short to be replaced as substrings (reported, not replaced).
pub fn too_short<'a>(values: impl IntoIterator<Item = &'a String>) -> usize {
    values.into_iter().filter(|v| v.chars().count() < MIN_VALUE_CHARS).count()
}

/// What makes a tag value or a resource name personal.
#[derive(Debug, Clone, Default)]
pub struct PersonalRules {
    /// Tag keys whose values name a person (compared case-insensitively), e.g. `createdBy`, `contact`.
    pub tag_keys: Vec<String>,
    /// Globs over resource names (the last segment of a resource URI) that name people, e.g. `vm-u-*`.
    pub resource_names: Option<globset::GlobSet>,
}

/// The e-mail addresses inside a text.
pub fn emails(text: &str) -> Vec<&str> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+").expect("a valid e-mail pattern")
    });
    re.find_iter(text).map(|m| m.as_str()).collect()
}

/// The name of a resource: the last segment of its URI.
pub fn resource_name(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
}

/// The personal values of one customer's usage: the values of personal tag keys and every tag value holding an
/// e-mail address (whole values: the tag text as written), plus the resource names that identify a person: those
/// containing the local part of one of these addresses or of `known` (user keys, contact addresses), and those
/// matching `rules.resource_names`. `tags` are the distinct `Tags` JSON texts, `uris` the distinct resource URIs.
/// A `Tags` text that is not a JSON object holds no tag values (as in allocation).
pub fn find_personal_values(
    tags: &[&str],
    uris: &[&str],
    known: &BTreeSet<String>,
    rules: &PersonalRules,
) -> BTreeSet<String> {
    let keys: BTreeSet<String> = rules.tag_keys.iter().map(|k| k.to_lowercase()).collect();
    let mut found = BTreeSet::new();
    for t in tags {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(t) else {
            continue;
        };
        for (k, v) in map {
            let serde_json::Value::String(v) = v else { continue };
            if v.is_empty() {
                continue;
            }
            if keys.contains(&k.to_lowercase()) || !emails(&v).is_empty() {
                found.insert(v);
            }
        }
    }
    let mut local_parts: BTreeSet<String> = BTreeSet::new();
    for v in found.iter().chain(known.iter()) {
        for e in emails(v) {
            if let Some((local, _)) = e.split_once('@')
                && local.chars().count() >= 3
            {
                local_parts.insert(local.to_lowercase());
            }
        }
    }
    for u in uris {
        let name = resource_name(u);
        if name.is_empty() {
            continue;
        }
        let lower = name.to_lowercase();
        let by_person = local_parts.iter().any(|l| lower.contains(l.as_str()));
        let by_glob = rules.resource_names.as_ref().is_some_and(|g| g.is_match(name));
        if by_person || by_glob {
            found.insert(name.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame_to_csv;

    fn map() -> Pseudonyms {
        Pseudonyms::new([
            ("jane.doe@contoso.example".to_string(), "anon-1111".to_string()),
            ("vm-jane.doe-01".to_string(), "anon-2222".to_string()),
            ("u-abc123".to_string(), "anon-3333".to_string()),
            ("jd".to_string(), "anon-short".to_string()),
        ])
    }

    #[test]
    fn longest_value_first_and_short_values_left_out() {
        let m = map();
        let vs: Vec<&str> = m.values().collect();
        assert_eq!(vs, vec!["jane.doe@contoso.example", "vm-jane.doe-01", "u-abc123"]);
        assert_eq!(too_short([&"jd".to_string(), &"abcd".to_string()]), 1);
        assert!(is_pseudonym("anon-0123456789abcdef0123"));
        assert!(!is_pseudonym("anon-0123456789abcdef012") && !is_pseudonym("anon-0123456789ABCDEF0123") && !is_pseudonym("jane"));
    }

    #[test]
    fn text_replacement_counts_each_occurrence() {
        let (out, n) = map().apply_text("a,/x/vm-jane.doe-01,\"{\"\"createdBy\"\":\"\"jane.doe@contoso.example\"\"}\",u-abc123,jd\n");
        assert_eq!(out, "a,/x/anon-2222,\"{\"\"createdBy\"\":\"\"anon-1111\"\"}\",anon-3333,jd\n");
        assert_eq!(n, 3);
    }

    #[test]
    fn rewrite_changes_text_columns_only_and_never_keys() {
        let df = df!(
            "customer_id" => ["u-abc123-is-not-a-real-id", "c2"],
            "resource_uri" => ["/subscriptions/s/vm-jane.doe-01", "/subscriptions/s/vm-app"],
            "tags" => [Some(r#"{"createdBy":"jane.doe@contoso.example"}"#), None],
            "user_key" => ["u-abc123", "u-other"],
            "n" => [1i64, 2],
        )
        .unwrap();
        let schema = df.schema().as_ref().clone();
        let lf = map().rewrite(df.lazy(), &schema);
        let mut out = lf.collect().unwrap();
        assert_eq!(
            frame_to_csv(&mut out),
            "customer_id,resource_uri,tags,user_key,n\n\
             u-abc123-is-not-a-real-id,/subscriptions/s/anon-2222,\"{\"\"createdBy\"\":\"\"anon-1111\"\"}\",anon-3333,1\n\
             c2,/subscriptions/s/vm-app,,u-other,2\n"
        );
        let touched = df!("customer_id" => ["x"], "tags" => [r#"{"a":"u-abc123"}"#]).unwrap();
        let schema = touched.schema().as_ref().clone();
        let n = touched.lazy().filter(map().touches(&schema).unwrap()).collect().unwrap().height();
        assert_eq!(n, 1);
    }

    #[test]
    fn personal_values_from_tags_and_resource_names() {
        let tags = [
            r#"{"environment":"dev","createdBy":"Jane Doe"}"#,
            r#"{"owner":"max.mustermann@contoso.example","environment":"prod"}"#,
            r#"{"owner":"platform"}"#,
            "not json",
        ];
        let uris = [
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-max.mustermann-01",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/vm-max.mustermann-01_OsDisk_1",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-app-01",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/desk-u-0042",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/stpayable01",
        ];
        let mut g = globset::GlobSetBuilder::new();
        g.add(globset::Glob::new("desk-u-*").unwrap());
        let rules = PersonalRules { tag_keys: vec!["CreatedBy".into()], resource_names: Some(g.build().unwrap()) };
        let known = BTreeSet::from(["accounts.payable@contoso.example".to_string()]);
        let got: Vec<String> = find_personal_values(&tags, &uris, &known, &rules).into_iter().collect();
        assert_eq!(
            got,
            vec![
                "Jane Doe".to_string(),
                "desk-u-0042".into(),
                "max.mustermann@contoso.example".into(),
                "vm-max.mustermann-01".into(),
                "vm-max.mustermann-01_OsDisk_1".into(),
            ]
        );
    }
}
