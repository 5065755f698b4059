//! Partner Center `Tags` text → (key, value) pairs, and the per-condition match flags the stage joins back.
//!
//! Microsoft writes tags as a JSON object (`{"env":"prod"}`), but the text reaching us varies: empty, `{}`,
//! double-encoded (a JSON string holding the object), quotes escaped with a backslash or doubled as in CSV,
//! the braces left out (`"env": "prod"`), keys in any case. Everything that yields an object is accepted; any
//! other text counts as no tags and is reported as malformed (a counted warning, the charge is kept).
//!
//! Parsing happens once per distinct tags text: the stage applies [`tag_flags`] to the distinct charge keys,
//! never to every charge.

use std::collections::HashMap;
use std::sync::Arc;

use globset::GlobMatcher;
use polars::prelude::*;
use serde_json::Value;

/// What a `Tags` text holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedTags {
    /// No tags (empty text, `{}`, `null`).
    None,
    /// Key (lower-cased: tag keys compare case-insensitively) and value (as written: values are case-sensitive).
    Pairs(Vec<(String, String)>),
    /// Not a JSON object: counts as no tags, with a warning.
    Malformed,
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn from_value(v: Value, depth: u8) -> Option<ParsedTags> {
    match v {
        Value::Object(map) if map.is_empty() => Some(ParsedTags::None),
        Value::Object(map) => Some(ParsedTags::Pairs(
            map.iter()
                .map(|(k, v)| (k.to_lowercase(), value_text(v)))
                .collect(),
        )),
        Value::Null => Some(ParsedTags::None),
        // A double-encoded object: the JSON string holds the object's text.
        Value::String(s) if depth == 0 => Some(parse_tags_at(&s, 1)),
        _ => None,
    }
}

/// Parses one `Tags` text.
pub fn parse_tags(text: &str) -> ParsedTags {
    parse_tags_at(text, 0)
}

fn parse_tags_at(text: &str, depth: u8) -> ParsedTags {
    let t = text.trim();
    if t.is_empty() {
        return ParsedTags::None;
    }
    let attempt = |s: &str| {
        serde_json::from_str::<Value>(s)
            .ok()
            .and_then(|v| from_value(v, depth))
    };
    if let Some(p) = attempt(t) {
        return p;
    }
    // Repairs, in order: CSV-doubled quotes, backslash-escaped quotes, missing braces.
    let undoubled = t.replace("\"\"", "\"");
    let unescaped = t.replace("\\\"", "\"");
    for candidate in [undoubled.as_str(), unescaped.as_str()] {
        if let Some(p) = attempt(candidate) {
            return p;
        }
    }
    for candidate in [t, undoubled.as_str(), unescaped.as_str()] {
        if !candidate.starts_with('{')
            && candidate.contains(':')
            && let Some(p @ ParsedTags::Pairs(_)) = attempt(&format!("{{{candidate}}}"))
        {
            return p;
        }
    }
    ParsedTags::Malformed
}

/// One tag condition of the rules: a key (lower-cased) and an optional case-sensitive value glob.
#[derive(Clone, Debug)]
pub struct TagCondition {
    pub key: String,
    pub value: Option<GlobMatcher>,
}

impl TagCondition {
    pub fn matches(&self, tags: &ParsedTags) -> bool {
        match tags {
            ParsedTags::Pairs(pairs) => pairs
                .iter()
                .any(|(k, v)| *k == self.key && self.value.as_ref().is_none_or(|g| g.is_match(v))),
            _ => false,
        }
    }
}

/// Name of the struct field telling that a tags text is malformed.
pub const MALFORMED: &str = "malformed";

/// Name of the struct field of condition `i`.
pub fn flag_name(i: usize) -> String {
    format!("t{i}")
}

/// Expression: for a `tags` text column, a struct with a boolean `malformed` and one boolean `t{i}` per
/// condition (whether the tags satisfy it). Null tags are no tags. Each distinct text is parsed once per batch.
pub fn tag_flags(tags: Expr, conditions: Vec<TagCondition>) -> Expr {
    let conditions = Arc::new(conditions);
    let n = conditions.len();
    let fields = move || {
        let mut f = vec![Field::new(MALFORMED.into(), DataType::Boolean)];
        f.extend((0..n).map(|i| Field::new(flag_name(i).into(), DataType::Boolean)));
        f
    };
    let out_fields = fields;
    tags.map(
        move |c: Column| {
            let ca = c.str()?;
            let mut cache: HashMap<&str, (bool, Vec<bool>)> = HashMap::new();
            let mut malformed = Vec::with_capacity(ca.len());
            let mut flags: Vec<Vec<bool>> = vec![Vec::with_capacity(ca.len()); n];
            for v in ca.iter() {
                let (m, f) = match v {
                    None => (false, vec![false; n]),
                    Some(text) => cache
                        .entry(text)
                        .or_insert_with(|| {
                            let parsed = parse_tags(text);
                            (
                                parsed == ParsedTags::Malformed,
                                conditions.iter().map(|c| c.matches(&parsed)).collect(),
                            )
                        })
                        .clone(),
                };
                malformed.push(m);
                for (i, b) in f.into_iter().enumerate() {
                    flags[i].push(b);
                }
            }
            let mut columns = vec![Column::new(MALFORMED.into(), malformed)];
            columns.extend(
                flags
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| Column::new(flag_name(i).into(), f)),
            );
            let st = StructChunked::from_columns(c.name().clone(), ca.len(), &columns)?;
            Ok(st.into_series().into_column())
        },
        move |_schema: &Schema, field: &Field| {
            Ok(Field::new(
                field.name().clone(),
                DataType::Struct(out_fields()),
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> ParsedTags {
        ParsedTags::Pairs(
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn tolerated_variants() {
        assert_eq!(parse_tags(""), ParsedTags::None);
        assert_eq!(parse_tags("  "), ParsedTags::None);
        assert_eq!(parse_tags("{}"), ParsedTags::None);
        assert_eq!(parse_tags("null"), ParsedTags::None);
        assert_eq!(
            parse_tags(r#"{"Env":"Prod","CostCenter":"4711"}"#),
            pairs(&[("env", "Prod"), ("costcenter", "4711")])
        );
        assert_eq!(
            parse_tags(r#""{\"env\":\"prod\"}""#),
            pairs(&[("env", "prod")]),
            "double-encoded"
        );
        assert_eq!(
            parse_tags(r#"{\"env\":\"prod\"}"#),
            pairs(&[("env", "prod")]),
            "backslash-escaped"
        );
        assert_eq!(
            parse_tags(r#"{""env"": ""prod""}"#),
            pairs(&[("env", "prod")]),
            "CSV-doubled quotes"
        );
        assert_eq!(
            parse_tags(r#""env": "prod","dept": "IT""#),
            pairs(&[("env", "prod"), ("dept", "IT")]),
            "no braces"
        );
        assert_eq!(
            parse_tags(r#"{"n":1.50,"b":true,"z":null}"#),
            pairs(&[("n", "1.50"), ("b", "true"), ("z", "")])
        );
    }

    #[test]
    fn non_objects_are_malformed() {
        for t in [
            "[1,2]",
            "42",
            "\"just text\"",
            "{\"env\":",
            "env=prod",
            "true",
        ] {
            assert_eq!(parse_tags(t), ParsedTags::Malformed, "{t}");
        }
    }

    #[test]
    fn key_case_insensitive_value_glob_case_sensitive() {
        let c = TagCondition {
            key: "env".into(),
            value: Some(crate::allocate::rules::glob("Prod*", false).unwrap()),
        };
        assert!(c.matches(&parse_tags(r#"{"ENV":"Prod-EU"}"#)));
        assert!(!c.matches(&parse_tags(r#"{"env":"prod-eu"}"#)));
        assert!(!c.matches(&parse_tags(r#"{"envx":"Prod"}"#)));
        let any = TagCondition {
            key: "env".into(),
            value: None,
        };
        assert!(any.matches(&parse_tags(r#"{"Env":""}"#)));
        assert!(!any.matches(&ParsedTags::Malformed));
    }
}
