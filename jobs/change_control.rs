//! Change control of the MSP's reference files (issue 16): `cspbill ref propose | approve | reject | list | show`,
//! the approved versions a run bills with, and the append-only audit log `_audit/`.
//!
//! A proposal stores the proposed file content-addressed (`_reference/TABLE/sha256=HEX.csv`) and a change set
//! (`_changes/ID/proposal.json`: who, when, why, the field-by-field diff against the approved version it was
//! proposed against, the price effect and the roles that must approve). Approvals are create-only objects, one per
//! role and one per person (`_changes/ID/approval-ROLE.json`, `_changes/ID/approver-HASH.json`), so of two
//! concurrent approvals in one role exactly one lands. When every required role has approved, the change is put
//! in force by creating the next approved version `_approved/TABLE/vN.json` with a conditional create, N being the
//! version the change was proposed against plus one: the commit pointer's protocol (`jobs/warehouse/`). Two
//! changes proposed against one version cannot both take effect; the second is stale and must be re-proposed
//! against the new version (it would otherwise silently undo the first).
//!
//! A run with `[change_control] enabled = true` reads each controlled file from its latest approved version, never
//! from the working copy, and records the version and SHA-256 in the manifest (`change_control`). A working copy
//! that differs is a warning at nightly and exit 1 at close, naming the pending change that proposes it.
//!
//! Identities come from `--by` or `CSPBILL_USER`: cspbill records them, it does not authenticate them (README).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use pipeline::RunMode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::{Failure, clip};
use crate::manifest::Manifest;
use crate::warehouse::Warehouse;

/// The reference files that can be put under change control: those whose rows are rules with a `rule_id`.
pub const CONTROLLABLE: [&str; 2] = ["rate_cards", "tag_rules"];
/// The extra role a change needs when its price effect exceeds `executive_threshold`.
pub const EXECUTIVE: &str = "executive";

/// `[change_control]` in cspbill.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Off by default: runs read the working copies, as before, and the manifest says so.
    #[serde(default)]
    pub enabled: bool,
    /// Controlled file (`rate_cards`, `tag_rules`) → the roles that must each approve a change, by different
    /// people. Empty: both files, `finance` and `sales_ops`.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// A rate-card change whose price effect on a customer exceeds this fraction (default "0.05", 5 %) also needs
    /// an `executive` approval.
    pub executive_threshold: Option<Decimal>,
}

impl Settings {
    /// The controlled files and their required roles (none when disabled).
    pub fn controlled(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out = BTreeMap::new();
        if !self.enabled {
            return Ok(out);
        }
        if self.roles.is_empty() {
            for t in CONTROLLABLE {
                out.insert(t.to_string(), vec!["finance".to_string(), "sales_ops".to_string()]);
            }
            return Ok(out);
        }
        for (table, roles) in &self.roles {
            if !CONTROLLABLE.contains(&table.as_str()) {
                return Err(Failure::usage(format!(
                    "[change_control.roles] names `{}`; only {} can be controlled: fix cspbill.toml",
                    clip(table),
                    CONTROLLABLE.join(" and ")
                ))
                .into());
            }
            let mut rs = Vec::new();
            for r in roles {
                let r = role_name(r)?;
                if !rs.contains(&r) {
                    rs.push(r);
                }
            }
            if rs.is_empty() {
                return Err(Failure::usage(format!("[change_control.roles] {table} has no role; name at least one (e.g. [\"finance\", \"sales_ops\"])")).into());
            }
            out.insert(table.clone(), rs);
        }
        Ok(out)
    }

    pub fn threshold(&self) -> Decimal {
        self.executive_threshold.unwrap_or(Decimal::new(5, 2))
    }
}

/// A role as stored: lower case, letters, digits, `_` and `-`.
fn role_name(r: &str) -> Result<String> {
    let r = r.trim().to_ascii_lowercase();
    if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Failure::usage(format!("role `{}` is not valid: use letters, digits, `_` or `-` (e.g. finance, sales_ops)", clip(&r))).into());
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------------------------
// Identities

/// Who is acting: `--by`, else `CSPBILL_USER` (clap reads both into `by`). Required for ref commands.
fn required_identity(by: &Option<String>) -> Result<String> {
    match by.as_deref().map(str::trim) {
        Some(b) if !b.is_empty() => Ok(b.to_string()),
        _ => Err(Failure::usage("say who you are: `--by NAME` (for example --by alice@msp) or set CSPBILL_USER; cspbill records it in `_audit/`").into()),
    }
}

/// Who runs a job (runs, explain): `CSPBILL_USER`, else the operating-system user, marked as such.
pub fn actor() -> (String, &'static str) {
    match std::env::var("CSPBILL_USER") {
        Ok(u) if !u.trim().is_empty() => (u.trim().to_string(), "CSPBILL_USER"),
        _ => (format!("os:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())), "os_user"),
    }
}

fn same_person(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

// ---------------------------------------------------------------------------------------------------------------
// Records in the warehouse

/// One field of one rule that a change adds, removes or changes (old → new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The rule (`rule_id`; `ID#n` for the n-th row of a multi-row tag rule).
    pub rule_id: String,
    /// `added`, `removed` or `changed`.
    pub kind: String,
    /// The field for `changed`; none for a whole rule added or removed (then `old`/`new` render the row).
    pub field: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The price effect of one rule change on the customers it applies to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleEffect {
    pub rule_id: String,
    /// The customer (`*` = every customer the rule reaches).
    pub customer_id: String,
    /// Relative change of the price, as a fraction (0.068 = +6.8 %); none when the rule values cannot tell.
    pub effect: Option<Decimal>,
    pub note: String,
}

/// How much a rate-card change moves prices, judged from the rule values (see `price_effect`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceEffect {
    /// The largest |effect| over the changed rules; none when some change cannot be judged (it needs an executive).
    pub largest: Option<Decimal>,
    pub threshold: Decimal,
    pub items: Vec<RuleEffect>,
}

/// A change set: `_changes/ID/proposal.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub change_id: String,
    pub table: String,
    /// The file as given to `propose`.
    pub file: String,
    pub sha256: String,
    pub rules: usize,
    /// The approved version it was proposed against (0: none yet, the first version).
    pub base_version: u64,
    pub base_sha256: Option<String>,
    pub base_change: Option<String>,
    pub proposed_by: String,
    pub proposed_at: String,
    pub reason: String,
    pub required_roles: Vec<String>,
    pub executive_required: bool,
    pub effect: Option<PriceEffect>,
    pub diff: Vec<FieldChange>,
}

/// One approval: `_changes/ID/approval-ROLE.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    pub change_id: String,
    pub role: String,
    pub by: String,
    pub at: String,
    pub reason: Option<String>,
}

/// `_changes/ID/rejection.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejection {
    pub change_id: String,
    pub by: String,
    pub at: String,
    pub reason: String,
}

/// An approved version of a controlled file: `_approved/TABLE/vNNNNNNNNN.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub table: String,
    pub version: u64,
    pub change_id: String,
    pub sha256: String,
    pub in_force_at: String,
    pub proposed_by: String,
    pub approvals: Vec<Approval>,
}

fn file_path(table: &str, sha: &str) -> String {
    format!("_reference/{table}/sha256={sha}.csv")
}
fn change_file(id: &str, name: &str) -> String {
    format!("_changes/{id}/{name}")
}
fn version_path(table: &str, v: u64) -> String {
    format!("_approved/{table}/v{v:09}.json")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn read_json<T: for<'de> Deserialize<'de>>(wh: &Warehouse, path: &str) -> Result<Option<T>> {
    match wh.read_file(path)? {
        None => Ok(None),
        Some(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading `{path}` in warehouse `{}`", wh.url()))?)),
    }
}

fn to_bytes<T: Serialize>(v: &T) -> Result<Bytes> {
    let mut s = serde_json::to_vec_pretty(v)?;
    s.push(b'\n');
    Ok(Bytes::from(s))
}

/// The approved versions of a table, oldest first.
pub fn versions(wh: &Warehouse, table: &str) -> Result<Vec<Version>> {
    let mut out = Vec::new();
    for path in wh.list_files(&format!("_approved/{table}/"))? {
        if path.ends_with(".json") {
            if let Some(v) = read_json::<Version>(wh, &path)? {
                out.push(v);
            }
        }
    }
    out.sort_by_key(|v| v.version);
    Ok(out)
}

/// Every change id in the warehouse.
fn change_ids(wh: &Warehouse) -> Result<BTreeSet<String>> {
    Ok(wh
        .list_files("_changes/")?
        .iter()
        .filter_map(|p| p.strip_prefix("_changes/").and_then(|r| r.split_once('/')).map(|(id, _)| id.to_string()))
        .collect())
}

/// A change by id or by a unique prefix of it (as git takes commits).
fn resolve(wh: &Warehouse, id: &str) -> Result<Proposal> {
    let id = id.trim();
    let ids = change_ids(wh)?;
    let hits: Vec<String> = if ids.contains(id) {
        vec![id.to_string()]
    } else {
        ids.iter().filter(|c| !id.is_empty() && c.starts_with(id)).cloned().collect()
    };
    match hits.as_slice() {
        [one] => read_json::<Proposal>(wh, &change_file(one, "proposal.json"))?
            .ok_or_else(|| Failure::usage(format!("change `{one}` has no proposal.json in warehouse `{}`", wh.url())).into()),
        [] => Err(Failure::usage(format!("no change `{}` in warehouse `{}`; `cspbill ref list` shows them", clip(id), wh.url())).into()),
        many => Err(Failure::usage(format!("`{}` matches {} changes ({}); give more of the id", clip(id), many.len(), many.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", "))).into()),
    }
}

/// The approvals recorded for a change, by role.
fn approvals(wh: &Warehouse, id: &str) -> Result<BTreeMap<String, Approval>> {
    let mut out = BTreeMap::new();
    for path in wh.list_files(&format!("_changes/{id}/"))? {
        let name = path.rsplit('/').next().unwrap_or_default();
        if name.starts_with("approval-") && name.ends_with(".json") {
            if let Some(a) = read_json::<Approval>(wh, &path)? {
                out.insert(a.role.clone(), a);
            }
        }
    }
    Ok(out)
}

/// The roles a change needs: those recorded at proposal and those configured now (the stricter of both).
fn needed_roles(p: &Proposal, cfg: &Config) -> Result<Vec<String>> {
    let mut roles = p.required_roles.clone();
    if let Some(now) = cfg.change_control.controlled()?.get(&p.table) {
        for r in now {
            if !roles.contains(r) {
                roles.push(r.clone());
            }
        }
    }
    if p.executive_required && !roles.iter().any(|r| r == EXECUTIVE) {
        roles.push(EXECUTIVE.to_string());
    }
    Ok(roles)
}

/// Where a change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for these roles.
    Pending { missing: Vec<String> },
    /// The latest approved version of its table.
    InForce { version: u64 },
    /// Was in force as `version`; a later version replaced it.
    Superseded { version: u64, latest: u64 },
    Rejected { by: String, reason: String },
    /// Proposed against a version that is no longer the latest: it can never take effect; re-propose.
    Stale { base: u64, latest: u64 },
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Pending { missing } => write!(f, "pending: needs {}", missing.join(", ")),
            State::InForce { version } => write!(f, "in force (version {version})"),
            State::Superseded { version, latest } => write!(f, "superseded (was version {version}; version {latest} is in force)"),
            State::Rejected { by, .. } => write!(f, "rejected by {by}"),
            State::Stale { base, latest } => write!(f, "stale (proposed against version {base}; version {latest} is in force): re-propose"),
        }
    }
}

fn state(wh: &Warehouse, cfg: &Config, p: &Proposal, vs: &[Version]) -> Result<State> {
    let latest = vs.last().map_or(0, |v| v.version);
    if let Some(v) = vs.iter().find(|v| v.change_id == p.change_id) {
        return Ok(if v.version == latest { State::InForce { version: v.version } } else { State::Superseded { version: v.version, latest } });
    }
    if let Some(r) = read_json::<Rejection>(wh, &change_file(&p.change_id, "rejection.json"))? {
        return Ok(State::Rejected { by: r.by, reason: r.reason });
    }
    if latest != p.base_version {
        return Ok(State::Stale { base: p.base_version, latest });
    }
    let got = approvals(wh, &p.change_id)?;
    let missing = needed_roles(p, cfg)?.into_iter().filter(|r| !got.contains_key(r)).collect();
    Ok(State::Pending { missing })
}

/// Puts a fully approved change in force: creates version base+1 of its table (conditional create). When that
/// version exists already it either is this change (another approver got there first) or another change's, and
/// then this one is stale.
fn put_in_force(wh: &Warehouse, p: &Proposal, by: &str, source: &str) -> Result<State> {
    let version = p.base_version + 1;
    let apps: Vec<Approval> = approvals(wh, &p.change_id)?.into_values().collect();
    let v = Version {
        table: p.table.clone(),
        version,
        change_id: p.change_id.clone(),
        sha256: p.sha256.clone(),
        in_force_at: now(),
        proposed_by: p.proposed_by.clone(),
        approvals: apps.clone(),
    };
    let path = version_path(&p.table, version);
    if wh.create_file(&path, to_bytes(&v)?)? {
        let mut ev = Event::new("in_force", by, source);
        ev.table = Some(p.table.clone());
        ev.change_id = Some(p.change_id.clone());
        ev.old_version = (p.base_version > 0).then_some(p.base_version);
        ev.new_version = Some(version);
        ev.old_sha256 = p.base_sha256.clone();
        ev.new_sha256 = Some(p.sha256.clone());
        ev.detail = format!(
            "{} version {version} in force, approved by {}",
            p.table,
            apps.iter().map(|a| format!("{} ({})", a.by, a.role)).collect::<Vec<_>>().join(", ")
        );
        audit(wh, ev)?;
        return Ok(State::InForce { version });
    }
    match read_json::<Version>(wh, &path)? {
        Some(other) if other.change_id == p.change_id => Ok(State::InForce { version }),
        Some(_) | None => Ok(State::Stale { base: p.base_version, latest: versions(wh, &p.table)?.last().map_or(0, |v| v.version) }),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading, diffing and judging reference files

/// A CSV as text: header and rows of trimmed cells (Polars, no schema inference, as `reference::read_one`).
fn parse_csv(bytes: &[u8], shown: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    use polars::prelude::*;
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(false)
        .into_reader_with_file_handle(std::io::Cursor::new(bytes.to_vec()))
        .finish()
        .map_err(|e| Failure::usage(format!("{shown}: cannot read as CSV: {e}")))?;
    let header: Vec<String> = df.get_column_names().iter().map(|s| s.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    let cols: Vec<&StringChunked> = df.columns().iter().map(|c| c.str()).collect::<PolarsResult<_>>()?;
    let rows = (0..df.height()).map(|r| cols.iter().map(|c| c.get(r).unwrap_or("").trim().to_string()).collect()).collect();
    Ok((header, rows))
}

/// Rows keyed by rule: `rule_id` for rate cards (identical repeated rows count once, as at staging), `ID`, `ID#2`,
/// ... for the rows of a tag rule, in file order.
fn keyed(header: &[String], rows: &[Vec<String>]) -> Vec<(String, BTreeMap<String, String>)> {
    let idx = header.iter().position(|h| h == "rule_id");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for row in rows {
        let map: BTreeMap<String, String> = header.iter().cloned().zip(row.iter().cloned()).collect();
        let id = idx.and_then(|i| row.get(i)).cloned().unwrap_or_default();
        if out.iter().any(|(k, m)| k.split('#').next() == Some(id.as_str()) && *m == map) {
            continue; // an identical repeated row
        }
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        let key = if *n == 1 { id } else { format!("{id}#{n}") };
        out.push((key, map));
    }
    out
}

fn render_row(m: &BTreeMap<String, String>) -> String {
    m.iter().filter(|(k, v)| *k != "rule_id" && !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// The field-by-field diff of two versions of a rule file: rules removed, added, and each changed field old → new.
pub fn diff(old: Option<&[u8]>, new: &[u8]) -> Result<Vec<FieldChange>> {
    let (oh, or) = match old {
        Some(b) => parse_csv(b, "approved version")?,
        None => (Vec::new(), Vec::new()),
    };
    let (nh, nr) = parse_csv(new, "proposed file")?;
    let old_rows = keyed(&oh, &or);
    let new_rows = keyed(&nh, &nr);
    let old_map: BTreeMap<&String, &BTreeMap<String, String>> = old_rows.iter().map(|(k, m)| (k, m)).collect();
    let new_map: BTreeMap<&String, &BTreeMap<String, String>> = new_rows.iter().map(|(k, m)| (k, m)).collect();
    let mut out = Vec::new();
    for (k, m) in &old_rows {
        if !new_map.contains_key(k) {
            out.push(FieldChange { rule_id: k.clone(), kind: "removed".into(), field: None, old: Some(render_row(m)), new: None });
        }
    }
    for (k, m) in &new_rows {
        match old_map.get(k) {
            None => out.push(FieldChange { rule_id: k.clone(), kind: "added".into(), field: None, old: None, new: Some(render_row(m)) }),
            Some(o) => {
                let fields: BTreeSet<&String> = o.keys().chain(m.keys()).filter(|f| *f != "rule_id").collect();
                // In the file's column order where possible.
                let mut ordered: Vec<&String> = nh.iter().filter(|f| fields.contains(f)).collect();
                ordered.extend(fields.iter().filter(|f| !nh.contains(f)));
                for f in ordered {
                    let a = o.get(f).cloned().unwrap_or_default();
                    let b = m.get(f).cloned().unwrap_or_default();
                    if a != b {
                        out.push(FieldChange { rule_id: k.clone(), kind: "changed".into(), field: Some(f.clone()), old: Some(a), new: Some(b) });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A rate-card rule as the effect calculation sees it.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    /// customer_id, template, product_family, meter_category, meter_subcategory, product_id (lower case).
    scope: [String; 6],
    method: String,
    value: Option<Decimal>,
    currency: String,
    from: String,
    to: String,
}

const SCOPE: [&str; 6] = ["customer_id", "template", "product_family", "meter_category", "meter_subcategory", "product_id"];

fn rules(bytes: &[u8]) -> Result<Vec<Rule>> {
    let (h, rows) = parse_csv(bytes, "rate card")?;
    Ok(keyed(&h, &rows)
        .into_iter()
        .map(|(id, m)| {
            let g = |k: &str| m.get(k).cloned().unwrap_or_default();
            Rule {
                id,
                scope: SCOPE.map(|k| g(k).to_ascii_lowercase()),
                method: g("method").to_ascii_lowercase(),
                value: parse_value(&g("value")),
                currency: g("currency").to_ascii_uppercase(),
                from: g("valid_from"),
                to: g("valid_to"),
            }
        })
        .collect())
}

/// A rate value: a fraction, or percent with a trailing `%` (DESIGN §5).
fn parse_value(s: &str) -> Option<Decimal> {
    let s = s.trim();
    match s.strip_suffix('%') {
        Some(p) => Decimal::from_str(p.trim()).ok().map(|v| v / Decimal::ONE_HUNDRED),
        None => Decimal::from_str(s).or_else(|_| Decimal::from_scientific(s)).ok(),
    }
}

fn any(s: &str) -> bool {
    s.is_empty() || s == "*"
}

/// Whether `general`'s scope contains every line `specific`'s scope matches (a bare ProductId contains its SKUs).
fn covers(general: &Rule, specific: &Rule) -> bool {
    general.scope.iter().zip(specific.scope.iter()).enumerate().all(|(i, (g, s))| {
        any(g) || (!any(s) && (g == s || (i == 5 && s.starts_with(&format!("{g}:")))))
    })
}

/// Precedence of DESIGN §5: customer, product (SKU above bare product), meter subcategory, category, family, template.
fn rank(r: &Rule) -> [u8; 6] {
    let named = |i: usize| u8::from(!any(&r.scope[i]));
    let product = if any(&r.scope[5]) { 0 } else if r.scope[5].contains(':') { 2 } else { 1 };
    [named(0), product, named(4), named(3), named(2), named(1)]
}

fn overlaps(a: &Rule, b: &Rule) -> bool {
    let end = |t: &str| if t.is_empty() { "9999-12-31".to_string() } else { t.to_string() };
    a.from < end(&b.to) && b.from < end(&a.to)
}

/// What a method multiplies, and by how much: price = basis × factor.
fn factor(r: &Rule) -> Option<(&'static str, Decimal)> {
    let v = r.value?;
    let one = Decimal::ONE;
    match r.method.as_str() {
        "markup_on_cost" => Some(("cost", one + v)),
        "margin_on_cost" if v < one => Some(("cost", one / (one - v))),
        "discount_off_list" => Some(("list", one - v)),
        "markup_on_list" => Some(("list", one + v)),
        "fixed_unit_price" => Some(("fixed", v)),
        _ => None,
    }
}

/// The relative price change when `new` prices what `old` priced: new factor / old factor − 1, when both
/// multiply the same basis (cost, list, or a unit price in one currency); none otherwise.
fn relative(old: &Rule, new: &Rule) -> Option<Decimal> {
    let (ob, of) = factor(old)?;
    let (nb, nf) = factor(new)?;
    if ob != nb || of.is_zero() || (ob == "fixed" && old.currency != new.currency) {
        return None;
    }
    Some((nf / of - Decimal::ONE).round_dp(6))
}

/// The most specific rules of `pool` (besides `skip`) whose scope contains `r`'s and whose dates overlap it: the
/// rules that priced (or will price) `r`'s lines.
fn displaced<'a>(pool: &'a [Rule], r: &Rule) -> Vec<&'a Rule> {
    let cands: Vec<&Rule> = pool.iter().filter(|o| o.id != r.id && covers(o, r) && overlaps(o, r)).collect();
    let best = cands.iter().map(|o| rank(o)).max();
    cands.into_iter().filter(|o| Some(rank(o)) == best).collect()
}

/// The price effect of a rate-card change, judged from the rule values (the method the README documents): for a
/// changed rule, its new price factor against its old one (cost × (1+v) for markup_on_cost, cost / (1−v) for
/// margin_on_cost, list × (1−v), list × (1+v), v per unit for fixed_unit_price); for an added rule, against the
/// most specific old rules it takes lines from; for a removed rule, the most specific new rules that take its lines
/// over against it. A change of scope, of basis (cost vs list vs fixed), or a removed rule that leaves lines
/// unpriced cannot be judged from values: its effect is unknown, which needs an executive like a large one.
pub fn price_effect(old: Option<&[u8]>, new: &[u8], threshold: Decimal) -> Result<PriceEffect> {
    let old_rules = match old {
        Some(b) => rules(b)?,
        None => Vec::new(),
    };
    let new_rules = rules(new)?;
    let mut items = Vec::new();
    let mut push = |r: &Rule, effect: Option<Decimal>, note: String| {
        items.push(RuleEffect { rule_id: r.id.clone(), customer_id: if any(&r.scope[0]) { "*".into() } else { r.scope[0].clone() }, effect, note });
    };
    for n in &new_rules {
        match old_rules.iter().find(|o| o.id == n.id) {
            Some(o) if o.scope == n.scope && o.method == n.method && o.value == n.value && o.currency == n.currency && o.from == n.from && o.to == n.to => {}
            Some(o) if o.scope != n.scope => push(n, None, "the rule's scope changed: prices move between lines".into()),
            Some(o) => push(n, relative(o, n), format!("{} {} → {} {}", o.method, show(o.value), n.method, show(n.value))),
            None => {
                let before = displaced(&old_rules, n);
                if before.is_empty() {
                    push(n, Some(Decimal::ZERO), "new rule: its lines had no price before".into());
                } else {
                    let e = worst(before.iter().map(|o| relative(o, n)));
                    push(n, e, format!("new rule, replacing {} for its lines", before.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")));
                }
            }
        }
    }
    for o in old_rules.iter().filter(|o| !new_rules.iter().any(|n| n.id == o.id)) {
        let after = displaced(&new_rules, o);
        if after.is_empty() {
            push(o, None, "removed: its lines are left without a price".into());
        } else {
            let e = worst(after.iter().map(|n| relative(o, n)));
            push(o, e, format!("removed: {} prices its lines instead", after.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")));
        }
    }
    let largest = worst(items.iter().map(|i| i.effect)).map(|d| d.abs());
    Ok(PriceEffect { largest: if items.is_empty() { Some(Decimal::ZERO) } else { largest }, threshold, items })
}

/// The effect with the largest magnitude; none when any is unknown.
fn worst(it: impl Iterator<Item = Option<Decimal>>) -> Option<Decimal> {
    let mut best: Option<Decimal> = Some(Decimal::ZERO);
    for e in it {
        match (e, best) {
            (None, _) => return None,
            (Some(e), Some(b)) if e.abs() > b.abs() => best = Some(e),
            _ => {}
        }
    }
    best
}

fn show(v: Option<Decimal>) -> String {
    v.map(|d| d.normalize().to_string()).unwrap_or_else(|| "?".into())
}

fn pct(d: Decimal) -> String {
    format!("{} %", (d * Decimal::ONE_HUNDRED).round_dp(2).normalize())
}

impl PriceEffect {
    pub fn needs_executive(&self) -> bool {
        self.largest.is_none_or(|l| l > self.threshold)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The commands

/// Options every `cspbill ref` command takes.
#[derive(Debug, Clone, Args)]
pub struct RefArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// Warehouse root URL; overrides the config.
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// Who is acting (recorded in `_audit/`, not authenticated); default `CSPBILL_USER`.
    #[arg(long, env = "CSPBILL_USER")]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RefCommand {
    /// Propose a new version of a controlled reference file: validated, stored as a pending change with its diff.
    Propose {
        #[command(flatten)]
        w: RefArgs,
        /// The proposed file (for example an edited reference/rate_cards.csv).
        #[arg(long)]
        file: PathBuf,
        /// Which controlled file it is: `rate_cards` or `tag_rules` (default: from the file's path or name).
        #[arg(long)]
        table: Option<String>,
        /// Why (recorded with the change and in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Approve a change in one role; it takes effect once every required role approved, by different people.
    Approve {
        #[command(flatten)]
        w: RefArgs,
        /// The change id (or a unique prefix).
        change: String,
        /// The role approving (`finance`, `sales_ops`, `executive`, as `[change_control]` requires).
        #[arg(long)]
        role: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a pending change (a proposer may withdraw their own).
    Reject {
        #[command(flatten)]
        w: RefArgs,
        change: String,
        #[arg(long)]
        reason: String,
    },
    /// List the changes and the approved version of each controlled file.
    List {
        #[command(flatten)]
        w: RefArgs,
    },
    /// Show a change: diff, price effect, approvals and state.
    Show {
        #[command(flatten)]
        w: RefArgs,
        change: String,
    },
}

fn open(w: &RefArgs) -> Result<(Config, Warehouse)> {
    let cfg = crate::config::load(&w.config)?;
    let wh = Warehouse::open(&cfg.warehouse_url(w.warehouse.as_deref()), &cfg.warehouse.options)?;
    Ok((cfg, wh))
}

/// Runs a `cspbill ref` command.
pub fn command(cmd: RefCommand) -> Result<()> {
    match cmd {
        RefCommand::Propose { w, file, table, reason } => {
            let (cfg, wh) = open(&w)?;
            let p = propose(&cfg, &wh, &file, table.as_deref(), &required_identity(&w.by)?, &reason)?;
            print!("{}", render(&p, None, &[]));
            let needed = needed_roles(&p, &cfg)?;
            println!("proposed change {}: it takes effect once approved in role(s) {} by people other than {}:", p.change_id, needed.join(", "), p.proposed_by);
            for r in needed {
                println!("  cspbill ref approve {} --config {} --by NAME --role {r}", p.change_id, w.config.display());
            }
            Ok(())
        }
        RefCommand::Approve { w, change, role, reason } => {
            let (cfg, wh) = open(&w)?;
            let (p, s) = approve(&cfg, &wh, &change, &required_identity(&w.by)?, &role, reason.as_deref())?;
            println!("approved change {} ({}) as {}: {s}", p.change_id, p.table, role_name(&role)?);
            Ok(())
        }
        RefCommand::Reject { w, change, reason } => {
            let (cfg, wh) = open(&w)?;
            let p = reject(&cfg, &wh, &change, &required_identity(&w.by)?, &reason)?;
            println!("rejected change {} ({})", p.change_id, p.table);
            Ok(())
        }
        RefCommand::List { w } => {
            let (cfg, wh) = open(&w)?;
            print!("{}", list(&cfg, &wh)?);
            Ok(())
        }
        RefCommand::Show { w, change } => {
            let (cfg, wh) = open(&w)?;
            let p = resolve(&wh, &change)?;
            let vs = versions(&wh, &p.table)?;
            let mut s = state(&wh, &cfg, &p, &vs)?;
            if matches!(&s, State::Pending { missing } if missing.is_empty()) {
                s = put_in_force(&wh, &p, &p.proposed_by, "completion")?;
            }
            let apps: Vec<Approval> = approvals(&wh, &p.change_id)?.into_values().collect();
            print!("{}", render(&p, Some(&s), &apps));
            Ok(())
        }
    }
}

/// Which controlled file a proposed file is: `--table`, else the configured file with the same path, else its name.
fn table_of(cfg: &Config, file: &Path, table: Option<&str>) -> Result<String> {
    if let Some(t) = table {
        return Ok(t.trim().to_ascii_lowercase());
    }
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let given = canon(file);
    for (t, loc) in [("rate_cards", Some(&cfg.inputs.rate_cards)), ("tag_rules", cfg.inputs.tag_rules.as_ref())] {
        if let Some(loc) = loc {
            if given.is_some() && canon(Path::new(&cfg.resolve(loc))) == given {
                return Ok(t.to_string());
            }
        }
    }
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    for t in CONTROLLABLE {
        if name.starts_with(t) {
            return Ok(t.to_string());
        }
    }
    Err(Failure::usage(format!("cannot tell which reference file `{}` is; add `--table rate_cards` or `--table tag_rules`", file.display())).into())
}

/// `cspbill ref propose`: validates the file with the run's own checks, then stores it and its change set.
pub fn propose(cfg: &Config, wh: &Warehouse, file: &Path, table: Option<&str>, by: &str, reason: &str) -> Result<Proposal> {
    let controlled = cfg.change_control.controlled()?;
    if !cfg.change_control.enabled {
        return Err(Failure::usage(format!("change control is disabled in `{}`; set `[change_control] enabled = true` to propose changes (README, \"Change control\")", cfg.path.display())).into());
    }
    let table = table_of(cfg, file, table)?;
    let Some(roles) = controlled.get(&table) else {
        return Err(Failure::usage(format!("`{table}` is not under change control in `{}`; controlled: {}", cfg.path.display(), controlled.keys().cloned().collect::<Vec<_>>().join(", "))).into());
    };
    if reason.trim().is_empty() {
        return Err(Failure::usage("give the reason for the change: --reason \"...\"").into());
    }
    let bytes = std::fs::read(file).map_err(|e| Failure::usage(format!("cannot read `{}`: {e}", file.display())))?;
    validate(cfg, &table, file)?;
    let vs = versions(wh, &table)?;
    let base = vs.last();
    let old = match base {
        Some(v) => Some(wh.read_file(&file_path(&table, &v.sha256))?.ok_or_else(|| {
            Failure::invariant(format!("approved version {} of {table} names `{}`, which is missing from warehouse `{}`", v.version, file_path(&table, &v.sha256), wh.url()))
        })?),
        None => None,
    };
    let sha = crate::inputs_sha256(&bytes);
    if let Some(v) = base.filter(|v| v.sha256 == sha) {
        return Err(Failure::usage(format!("`{}` is identical to the approved version {} of {table} (change {}); nothing to propose", file.display(), v.version, v.change_id)).into());
    }
    let base_version = base.map_or(0, |v| v.version);
    for id in change_ids(wh)? {
        if let Some(other) = read_json::<Proposal>(wh, &change_file(&id, "proposal.json"))? {
            if other.table == table && other.sha256 == sha && other.base_version == base_version && matches!(state(wh, cfg, &other, &vs)?, State::Pending { .. }) {
                return Err(Failure::usage(format!("this file is already proposed as change {id} (by {}); approve that one (`cspbill ref show {id}`)", other.proposed_by)).into());
            }
        }
    }
    let diff = diff(old.as_deref(), &bytes)?;
    let effect = if table == "rate_cards" { Some(price_effect(old.as_deref(), &bytes, cfg.change_control.threshold())?) } else { None };
    let executive_required = effect.as_ref().is_some_and(PriceEffect::needs_executive);
    let at = now();
    let seed = json!({"table": table, "sha256": sha, "base": base.map(|v| v.sha256.clone()), "by": by, "at": at, "reason": reason});
    let prefix = if table == "rate_cards" { "rc" } else { "tr" };
    let change_id = format!("{prefix}-{}", &crate::inputs_sha256(seed.to_string().as_bytes())[..12]);
    let (h, rows) = parse_csv(&bytes, "proposed file")?;
    let p = Proposal {
        change_id: change_id.clone(),
        table: table.clone(),
        file: file.display().to_string(),
        sha256: sha.clone(),
        rules: keyed(&h, &rows).len(),
        base_version,
        base_sha256: base.map(|v| v.sha256.clone()),
        base_change: base.map(|v| v.change_id.clone()),
        proposed_by: by.to_string(),
        proposed_at: at,
        reason: reason.to_string(),
        required_roles: roles.clone(),
        executive_required,
        effect,
        diff,
    };
    // The content first (content-addressed: an existing copy holds the same bytes), then the change set.
    wh.create_file(&file_path(&table, &sha), Bytes::from(bytes))?;
    if !wh.create_file(&change_file(&change_id, "proposal.json"), to_bytes(&p)?)? {
        return Err(Failure::invariant(format!("change {change_id} exists already; propose again")).into());
    }
    let mut ev = Event::new("proposal", by, "--by");
    ev.table = Some(table);
    ev.change_id = Some(change_id);
    ev.old_version = (base_version > 0).then_some(base_version);
    ev.old_sha256 = p.base_sha256.clone();
    ev.new_sha256 = Some(sha);
    ev.reason = Some(reason.to_string());
    ev.changes = p.diff.clone();
    ev.detail = format!("{} rule change(s); {}", p.diff.len(), effect_line(&p));
    audit(wh, ev)?;
    Ok(p)
}

/// Validates a proposed file exactly as a run would: the workspace's reference files with this one in its place,
/// loaded and checked by `run::load_reference` (errors name the proposed file, line and column; exit 2).
fn validate(cfg: &Config, table: &str, file: &Path) -> Result<()> {
    let mut c = cfg.clone();
    let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()).display().to_string();
    match table {
        "rate_cards" => c.inputs.rate_cards = path,
        _ => c.inputs.tag_rules = Some(path),
    }
    let mut m = Manifest::new("validation", "", "", "", String::new());
    let period = pipeline::Period::new(2000, 1).context("period 2000-01")?;
    crate::run::load_reference(&c, period, &mut m).map(|_| ()).with_context(|| format!("`{}` is refused: nothing was stored; fix it and propose again", file.display()))
}

/// `cspbill ref approve`.
pub fn approve(cfg: &Config, wh: &Warehouse, change: &str, by: &str, role: &str, reason: Option<&str>) -> Result<(Proposal, State)> {
    let p = resolve(wh, change)?;
    let role = role_name(role)?;
    let vs = versions(wh, &p.table)?;
    let needed = needed_roles(&p, cfg)?;
    match state(wh, cfg, &p, &vs)? {
        State::Pending { .. } => {}
        s => return Err(Failure::usage(format!("change {} cannot be approved: it is {s}", p.change_id)).into()),
    }
    if same_person(by, &p.proposed_by) {
        return Err(Failure::usage(format!("{by} proposed change {} and cannot approve it: a change needs approvals by other people", p.change_id)).into());
    }
    if !needed.contains(&role) {
        return Err(Failure::usage(format!("change {} does not need a `{role}` approval; it needs {}", p.change_id, needed.join(", "))).into());
    }
    let at = now();
    let a = Approval { change_id: p.change_id.clone(), role: role.clone(), by: by.to_string(), at, reason: reason.map(str::to_string) };
    // One approval per person (create-only marker), then one per role (create-only): concurrent approvals are safe.
    let person = change_file(&p.change_id, &format!("approver-{}.json", &crate::inputs_sha256(by.trim().to_ascii_lowercase().as_bytes())[..16]));
    if !wh.create_file(&person, to_bytes(&a)?)? {
        let prior = read_json::<Approval>(wh, &person)?.map(|x| x.role).unwrap_or_default();
        return Err(Failure::usage(format!("{by} already approved change {} (role {prior}); the other roles need other people", p.change_id)).into());
    }
    if !wh.create_file(&change_file(&p.change_id, &format!("approval-{role}.json")), to_bytes(&a)?)? {
        let _ = wh.delete_file(&person);
        let prior = read_json::<Approval>(wh, &change_file(&p.change_id, &format!("approval-{role}.json")))?;
        return Err(Failure::usage(format!(
            "change {} is already approved as {role} by {}; another role or person is needed",
            p.change_id,
            prior.map(|x| x.by).unwrap_or_default()
        ))
        .into());
    }
    let mut ev = Event::new("approval", by, "--by");
    ev.role = Some(role.clone());
    ev.table = Some(p.table.clone());
    ev.change_id = Some(p.change_id.clone());
    ev.old_version = (p.base_version > 0).then_some(p.base_version);
    ev.old_sha256 = p.base_sha256.clone();
    ev.new_sha256 = Some(p.sha256.clone());
    ev.reason = reason.map(str::to_string);
    ev.changes = p.diff.clone();
    ev.detail = format!("approved as {role}");
    audit(wh, ev)?;
    let s = match state(wh, cfg, &p, &versions(wh, &p.table)?)? {
        State::Pending { missing } if missing.is_empty() => put_in_force(wh, &p, by, "--by")?,
        s => s,
    };
    Ok((p, s))
}

/// `cspbill ref reject`.
pub fn reject(cfg: &Config, wh: &Warehouse, change: &str, by: &str, reason: &str) -> Result<Proposal> {
    let p = resolve(wh, change)?;
    if reason.trim().is_empty() {
        return Err(Failure::usage("give the reason for the rejection: --reason \"...\"").into());
    }
    match state(wh, cfg, &p, &versions(wh, &p.table)?)? {
        State::Pending { .. } | State::Stale { .. } => {}
        s => return Err(Failure::usage(format!("change {} cannot be rejected: it is {s}; to undo a change in force, propose the old file", p.change_id)).into()),
    }
    let r = Rejection { change_id: p.change_id.clone(), by: by.to_string(), at: now(), reason: reason.to_string() };
    if !wh.create_file(&change_file(&p.change_id, "rejection.json"), to_bytes(&r)?)? {
        return Err(Failure::usage(format!("change {} was already rejected", p.change_id)).into());
    }
    let mut ev = Event::new("rejection", by, "--by");
    ev.table = Some(p.table.clone());
    ev.change_id = Some(p.change_id.clone());
    ev.new_sha256 = Some(p.sha256.clone());
    ev.reason = Some(reason.to_string());
    ev.detail = "rejected".into();
    audit(wh, ev)?;
    Ok(p)
}

/// `cspbill ref list`: the approved version of each controlled file, then every change, newest first.
pub fn list(cfg: &Config, wh: &Warehouse) -> Result<String> {
    use std::fmt::Write as _;
    let mut o = String::new();
    let controlled = cfg.change_control.controlled()?;
    if !cfg.change_control.enabled {
        let _ = writeln!(o, "change control is disabled in `{}`: runs read the working copies", cfg.path.display());
    }
    let mut all_versions = BTreeMap::new();
    for t in CONTROLLABLE {
        let vs = versions(wh, t)?;
        match (vs.last(), controlled.get(t)) {
            (Some(v), roles) => {
                let _ = writeln!(o, "{t}: version {} in force (change {}, sha256 {}){}", v.version, v.change_id, &v.sha256[..12], roles.map(|r| format!("; approvals: {}", r.join(", "))).unwrap_or_default());
            }
            (None, Some(_)) => {
                let _ = writeln!(o, "{t}: no approved version yet: runs refuse to start; propose the current file with `cspbill ref propose`");
            }
            (None, None) => {}
        }
        all_versions.insert(t.to_string(), vs);
    }
    let mut props = Vec::new();
    for id in change_ids(wh)? {
        if let Some(p) = read_json::<Proposal>(wh, &change_file(&id, "proposal.json"))? {
            props.push(p);
        }
    }
    props.sort_by(|a, b| b.proposed_at.cmp(&a.proposed_at));
    if !props.is_empty() {
        let _ = writeln!(o, "{:<16} {:<10} {:<20} {:<27} {:<44} reason", "change", "file", "proposed by", "proposed at", "state");
    }
    for p in &props {
        let vs = all_versions.get(&p.table).map(Vec::as_slice).unwrap_or_default();
        let s = state(wh, cfg, p, vs)?;
        let _ = writeln!(o, "{:<16} {:<10} {:<20} {:<27} {:<44} {}", p.change_id, p.table, clip(&p.proposed_by), p.proposed_at, s.to_string(), clip(&p.reason));
    }
    Ok(o)
}

fn effect_line(p: &Proposal) -> String {
    match &p.effect {
        None => "price effect: not computed for tag rules (it depends on where cost lands)".into(),
        Some(e) => match e.largest {
            Some(l) => format!("price effect: largest {} (executive threshold {}){}", pct(l), pct(e.threshold), if p.executive_required { ": an executive approval is required" } else { "" }),
            None => format!("price effect: cannot be judged from the rule values for every rule (see below): an executive approval is required (threshold {})", pct(e.threshold)),
        },
    }
}

/// A change rendered for people: header, diff (old → new), price effect, approvals and state.
pub fn render(p: &Proposal, s: Option<&State>, apps: &[Approval]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let base = if p.base_version == 0 { "no approved version yet (first version)".to_string() } else { format!("approved version {} (change {})", p.base_version, p.base_change.clone().unwrap_or_default()) };
    let _ = writeln!(o, "change {}: {} from `{}` (sha256 {}, {} rules) against {base}", p.change_id, p.table, p.file, &p.sha256[..12], p.rules);
    let _ = writeln!(o, "  proposed by {} at {}: {}", p.proposed_by, p.proposed_at, p.reason);
    if let Some(s) = s {
        let _ = writeln!(o, "  state: {s}");
    }
    let adds = p.diff.iter().filter(|d| d.kind == "added").count();
    let rems = p.diff.iter().filter(|d| d.kind == "removed").count();
    let changed: BTreeSet<&str> = p.diff.iter().filter(|d| d.kind == "changed").map(|d| d.rule_id.as_str()).collect();
    let _ = writeln!(o, "  {adds} rule(s) added, {rems} removed, {} changed:", changed.len());
    for d in p.diff.iter().take(200) {
        let _ = match d.kind.as_str() {
            "added" => writeln!(o, "  + {}: {}", d.rule_id, d.new.clone().unwrap_or_default()),
            "removed" => writeln!(o, "  - {}: {}", d.rule_id, d.old.clone().unwrap_or_default()),
            _ => writeln!(o, "  ~ {}: {} {:?} → {:?}", d.rule_id, d.field.clone().unwrap_or_default(), d.old.clone().unwrap_or_default(), d.new.clone().unwrap_or_default()),
        };
    }
    if p.diff.len() > 200 {
        let _ = writeln!(o, "  ... and {} more (`_changes/{}/proposal.json`)", p.diff.len() - 200, p.change_id);
    }
    let _ = writeln!(o, "  {}", effect_line(p));
    if let Some(e) = &p.effect {
        for i in e.items.iter().filter(|i| i.effect.is_none_or(|x| !x.is_zero())).take(50) {
            let who = if i.customer_id == "*" { "every customer".to_string() } else { format!("customer {}", i.customer_id) };
            let _ = writeln!(o, "    {}: {} for {who} ({})", i.rule_id, i.effect.map(|x| format!("{}{}", if x > Decimal::ZERO { "+" } else { "" }, pct(x))).unwrap_or_else(|| "unknown".into()), i.note);
        }
    }
    for a in apps {
        let _ = writeln!(o, "  approved as {} by {} at {}{}", a.role, a.by, a.at, a.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default());
    }
    o
}

// ---------------------------------------------------------------------------------------------------------------
// Runs

/// The approved files a run reads, kept on local disk for the run's duration.
pub struct Pinned {
    _dir: Option<tempfile::TempDir>,
    /// (local copy, how the manifest names it).
    labels: Vec<(String, String)>,
}

impl Pinned {
    /// Names the approved copies in the manifest's `reference_files` by their warehouse path.
    pub fn relabel(&self, m: &mut Manifest) {
        if let Value::Array(files) = &mut m.reference_files {
            for f in files {
                if let Some((_, label)) = self.labels.iter().find(|(tmp, _)| f["path"].as_str() == Some(tmp.as_str())) {
                    f["path"] = Value::String(label.clone());
                }
            }
        }
    }
}

/// Before a run reads its reference data: with change control on, points each controlled file of `cfg` at a local
/// copy of its latest approved version and records it in the manifest; a working copy that differs is a warning
/// (nightly) or exit 1 (close), naming the pending change. Off: says so in the manifest and changes nothing.
pub fn pin(mut cfg: Config, wh: &Warehouse, mode: RunMode, m: &mut Manifest) -> Result<(Config, Pinned)> {
    let controlled = cfg.change_control.controlled()?;
    if !cfg.change_control.enabled {
        m.change_control = json!({"enabled": false, "note": "[change_control] is disabled: reference files were read from the working copy"});
        return Ok((cfg, Pinned { _dir: None, labels: Vec::new() }));
    }
    let dir = tempfile::Builder::new().prefix("cspbill-approved-").tempdir().context("creating a folder for the approved reference files")?;
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (table, roles) in &controlled {
        let working = match table.as_str() {
            "rate_cards" => Some(cfg.resolve(&cfg.inputs.rate_cards)),
            _ => cfg.inputs.tag_rules.as_deref().map(|p| cfg.resolve(p)),
        };
        let vs = versions(wh, table)?;
        let Some(v) = vs.last() else {
            let shown = working.clone().unwrap_or_else(|| format!("{table}.csv"));
            if working.is_none() {
                continue; // not configured and never approved: nothing to control
            }
            return Err(Failure::usage(format!(
                "change control is on for {table} but no version is approved yet in warehouse `{}`: propose the current file (`cspbill ref propose --config {} --file {shown} --by NAME --reason \"first version\"`) and have it approved as {}",
                wh.url(),
                cfg.path.display(),
                roles.join(", ")
            ))
            .into());
        };
        let path = file_path(table, &v.sha256);
        let bytes = wh.read_file(&path)?.ok_or_else(|| Failure::invariant(format!("approved version {} of {table} names `{path}`, which is missing from warehouse `{}`", v.version, wh.url())))?;
        if crate::inputs_sha256(&bytes) != v.sha256 {
            return Err(Failure::invariant(format!("`{path}` in warehouse `{}` does not hash to its name: it was changed outside cspbill", wh.url())).into());
        }
        let local = dir.path().join(format!("approved-{table}-v{}.csv", v.version));
        std::fs::write(&local, &bytes).with_context(|| format!("writing `{}`", local.display()))?;
        let local_s = local.display().to_string();
        labels.push((local_s.clone(), format!("{}/{path}", wh.url().trim_end_matches('/'))));
        let working_sha = working.as_deref().and_then(|w| std::fs::read(w).ok()).map(|b| crate::inputs_sha256(&b));
        let differs = working_sha.as_deref() != Some(v.sha256.as_str());
        let mut pending = None;
        if differs {
            let shown = working.clone().unwrap_or_default();
            let mut candidates = Vec::new();
            for id in change_ids(wh)? {
                if let Some(p) = read_json::<Proposal>(wh, &change_file(&id, "proposal.json"))? {
                    if p.table == *table && matches!(state(wh, &cfg, &p, &vs)?, State::Pending { .. }) {
                        candidates.push(p);
                    }
                }
            }
            let exact = candidates.iter().find(|p| Some(&p.sha256) == working_sha.as_ref());
            let named = match exact {
                Some(p) => {
                    pending = Some(p.change_id.clone());
                    format!("pending change {} proposes it ({}; `cspbill ref show {}`)", p.change_id, state(wh, &cfg, p, &vs)?, p.change_id)
                }
                None if candidates.is_empty() => format!("no pending change proposes it: propose it with `cspbill ref propose --config {} --file {shown} --by NAME --reason \"...\"`", cfg.path.display()),
                None => format!("no pending change proposes exactly this file (pending for {table}: {})", candidates.iter().map(|p| p.change_id.as_str()).collect::<Vec<_>>().join(", ")),
            };
            let msg = format!(
                "the working copy `{shown}` (sha256 {}) differs from the approved version {} of {table} (change {}, sha256 {}); the run uses the approved version; {named}",
                working_sha.as_deref().map(|s| &s[..12]).unwrap_or("missing"),
                v.version,
                v.change_id,
                &v.sha256[..12]
            );
            if mode == RunMode::Close {
                return Err(Failure::invariant(format!("period not closed: {msg}; a close bills only approved reference data, so approve or reject the change (or restore the file) first")).into());
            }
            tracing::warn!("{msg}");
            m.warnings.push(msg);
        }
        match table.as_str() {
            "rate_cards" => cfg.inputs.rate_cards = local_s,
            _ => cfg.inputs.tag_rules = Some(local_s),
        }
        files.push(json!({
            "table": table, "approved_version": v.version, "sha256": v.sha256, "change_id": v.change_id,
            "path": format!("{}/{path}", wh.url().trim_end_matches('/')),
            "approved_by": v.approvals.iter().map(|a| json!({"by": a.by, "role": a.role, "at": a.at})).collect::<Vec<_>>(),
            "working_copy": working, "working_copy_sha256": working_sha, "working_copy_differs": differs, "pending_change": pending,
        }));
    }
    m.change_control = json!({"enabled": true, "files": files});
    Ok((cfg, Pinned { _dir: Some(dir), labels }))
}

/// After a run committed: one `run` (or `close`) event in the audit log. The commit stands whatever happens here,
/// so a failure is a warning.
pub fn audit_run(wh: &Warehouse, m: &Manifest, close: bool, version: u64, manifest_path: &str) {
    let (who, source) = actor();
    let mut ev = Event::new(if close { "close" } else { "run" }, &who, source);
    ev.period = Some(m.period.clone());
    ev.run_id = Some(m.run_id.clone());
    ev.new_version = Some(version);
    let refs: Vec<String> = match &m.change_control["files"] {
        Value::Array(fs) => fs
            .iter()
            .map(|f| {
                let sha = f["sha256"].as_str().unwrap_or("");
                format!("{} v{} ({})", f["table"].as_str().unwrap_or(""), f["approved_version"], &sha[..12.min(sha.len())])
            })
            .collect(),
        _ => vec!["change control disabled".into()],
    };
    let exports = m.outputs.iter().filter(|o| o.table == "exports").count();
    ev.detail = format!("mode {}; commit version {version}; manifest {manifest_path}; {} output file(s), {exports} export(s); reference: {}", m.mode, m.outputs.len(), refs.join(", "));
    if let Err(e) = audit(wh, ev) {
        crate::cli::report("warning", &format!("the run is published but its audit event was not written: {e:#}"), Value::Null);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Explain

/// For `cspbill explain`: which approved rate-card version the period's committed run used, and for a rule, the
/// change that introduced it (or last changed it) and who approved that change.
pub struct Provenance {
    wh: Option<Warehouse>,
    /// The committed run's `change_control` entry of the manifest.
    cc: Value,
    versions: Vec<Version>,
}

impl Provenance {
    /// Reads the committed manifest of the period and writes an `explain` event (best effort: a read-only
    /// credential can still explain).
    pub fn for_period(p: &crate::cli::PeriodArgs, what: &str) -> Result<Self> {
        let cfg = crate::config::load(&p.config)?;
        let wh = Warehouse::open(&cfg.warehouse_url(p.warehouse.as_deref()), &cfg.warehouse.options)?;
        let (who, source) = actor();
        let mut ev = Event::new("explain", &who, source);
        ev.period = Some(p.period.to_string());
        ev.detail = what.to_string();
        if let Err(e) = audit(&wh, ev) {
            tracing::warn!("explain access not recorded in `_audit/`: {e:#}");
        }
        let cc = wh.committed(p.period)?.map(|c| c.manifest_json["change_control"].clone()).unwrap_or(Value::Null);
        let versions = versions(&wh, "rate_cards")?;
        Ok(Self { wh: Some(wh), cc, versions })
    }

    fn rate_card(&self) -> Option<&Value> {
        self.cc["files"].as_array()?.iter().find(|f| f["table"] == "rate_cards")
    }

    /// The provenance of rule `rule_id` as JSON (null when the run recorded no change control).
    pub fn json(&self, rule_id: &str) -> Value {
        if self.cc["enabled"] == Value::Bool(false) {
            return json!({"enabled": false, "note": "change control was disabled for this run: the working copy was used"});
        }
        let Some(rc) = self.rate_card() else { return Value::Null };
        let version = rc["approved_version"].as_u64().unwrap_or(0);
        let mut out = json!({"enabled": true, "rate_card_version": version, "rate_card_sha256": rc["sha256"], "rate_card_change": rc["change_id"]});
        if let Some((v, p)) = self.introducing(version, rule_id) {
            out["rule_change"] = json!({
                "change_id": p.change_id, "version": v.version, "proposed_by": p.proposed_by, "proposed_at": p.proposed_at, "reason": p.reason,
                "approved_by": v.approvals.iter().map(|a| json!({"by": a.by, "role": a.role, "at": a.at})).collect::<Vec<_>>(),
                "fields": p.diff.iter().filter(|d| d.rule_id == rule_id).map(|d| json!({"kind": d.kind, "field": d.field, "old": d.old, "new": d.new})).collect::<Vec<_>>(),
            });
        }
        out
    }

    /// The lines `explain` adds to a rated line's text.
    pub fn text(&self, rule_id: &str) -> String {
        let j = self.json(rule_id);
        if j.is_null() {
            return String::new();
        }
        if j["enabled"] == Value::Bool(false) {
            return "change control: disabled for this run; the rate card was the working copy\n".into();
        }
        let mut o = format!(
            "change control: approved rate card version {} (sha256 {}, change {})\n",
            j["rate_card_version"],
            j["rate_card_sha256"].as_str().unwrap_or_default(),
            j["rate_card_change"].as_str().unwrap_or_default()
        );
        let c = &j["rule_change"];
        if !c.is_null() && !rule_id.is_empty() {
            let apps: Vec<String> = c["approved_by"].as_array().into_iter().flatten().map(|a| format!("{} ({}, {})", a["by"].as_str().unwrap_or(""), a["role"].as_str().unwrap_or(""), a["at"].as_str().unwrap_or(""))).collect();
            o.push_str(&format!(
                "  rule {rule_id} as billed was introduced by change {} (version {}), proposed by {} at {}: {}\n  approved by {}\n",
                c["change_id"].as_str().unwrap_or(""),
                c["version"],
                c["proposed_by"].as_str().unwrap_or(""),
                c["proposed_at"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
                apps.join(", ")
            ));
        }
        o
    }

    /// The latest approved version up to `version` whose change added or changed `rule_id`, with its proposal.
    fn introducing(&self, version: u64, rule_id: &str) -> Option<(Version, Proposal)> {
        let wh = self.wh.as_ref()?;
        for v in self.versions.iter().rev().filter(|v| v.version <= version) {
            let p = read_json::<Proposal>(wh, &change_file(&v.change_id, "proposal.json")).ok()??;
            if p.diff.iter().any(|d| d.kind != "removed" && d.rule_id.split('#').next() == Some(rule_id)) {
                return Some((v.clone(), p));
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The audit log

/// One audit event: `_audit/date=YYYY-MM-DD/<time>-<event>-<id>.jsonl`, one JSON object on one line, written with
/// a conditional create and never rewritten. Every key is present in every event (null when it does not apply), so
/// DuckDB reads the folder as one table: `read_json('ROOT/_audit/*/*.jsonl', hive_partitioning = true)`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event_id: String,
    /// When, RFC 3339 UTC (not `at`: a keyword in DuckDB's SQL).
    pub occurred_at: String,
    /// `proposal`, `approval`, `rejection`, `in_force`, `run`, `close`, `explain`.
    pub event: String,
    /// Who, as given by `--by` / `CSPBILL_USER` (recorded, not authenticated), or `os:USER`.
    pub actor: String,
    /// Where the identity came from: `--by`, `CSPBILL_USER`, `os_user`.
    pub actor_source: String,
    pub role: Option<String>,
    pub table: Option<String>,
    pub change_id: Option<String>,
    pub period: Option<String>,
    pub run_id: Option<String>,
    pub old_version: Option<u64>,
    pub new_version: Option<u64>,
    pub old_sha256: Option<String>,
    pub new_sha256: Option<String>,
    /// The justification given.
    pub reason: Option<String>,
    /// The old and new values, field by field.
    pub changes: Vec<FieldChange>,
    pub detail: String,
}

impl Event {
    pub fn new(event: &str, actor: &str, source: &str) -> Self {
        Self {
            event_id: String::new(),
            occurred_at: now(),
            event: event.into(),
            actor: actor.into(),
            actor_source: source.into(),
            role: None,
            table: None,
            change_id: None,
            period: None,
            run_id: None,
            old_version: None,
            new_version: None,
            old_sha256: None,
            new_sha256: None,
            reason: None,
            changes: Vec::new(),
            detail: String::new(),
        }
    }
}

/// Appends an event to `_audit/` (create-only); returns its path.
pub fn audit(wh: &Warehouse, mut ev: Event) -> Result<String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    ev.event_id = crate::inputs_sha256(format!("{}|{}|{}|{nanos}|{}|{n}|{}", ev.occurred_at, ev.event, ev.actor, std::process::id(), ev.detail).as_bytes())[..16].to_string();
    let t = chrono::DateTime::parse_from_rfc3339(&ev.occurred_at).map(|d| d.with_timezone(&chrono::Utc)).unwrap_or_else(|_| chrono::Utc::now());
    let path = format!("_audit/date={}/{}-{}-{}.jsonl", t.format("%Y-%m-%d"), t.format("%Y%m%dT%H%M%S%6fZ"), ev.event, ev.event_id);
    let mut line = serde_json::to_vec(&ev)?;
    line.push(b'\n');
    if !wh.create_file(&path, Bytes::from(line))? {
        return Err(Failure::invariant(format!("audit event `{path}` exists already; it is never rewritten")).into());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "rule_id,customer_id,template,product_family,meter_category,meter_subcategory,product_id,method,value,currency,valid_from,valid_to\n\
DEF-AZURE,*,*,azure_usage,,,*,markup_on_cost,15%,,2025-01-01,\n\
DEF-LICENSE,*,*,license,,,*,markup_on_cost,0.12,,2025-01-01,\n\
C1-LIC,c1,*,license,,,*,margin_on_cost,0.20,,2025-01-01,\n";

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn diff_names_each_field_old_to_new_and_rules_added_and_removed() {
        let new = OLD.replace("DEF-LICENSE,*,*,license,,,*,markup_on_cost,0.12", "DEF-LICENSE,*,*,license,,,*,markup_on_list,0.10")
            .replace("C1-LIC,c1,*,license,,,*,margin_on_cost,0.20,,2025-01-01,\n", "")
            + "C2-AZ,c2,*,azure_usage,,,*,markup_on_cost,10%,,2025-01-01,\n";
        let got = diff(Some(OLD.as_bytes()), new.as_bytes()).unwrap();
        let ch = |r: &str, k: &str, f: Option<&str>, o: Option<&str>, n: Option<&str>| FieldChange {
            rule_id: r.into(),
            kind: k.into(),
            field: f.map(Into::into),
            old: o.map(Into::into),
            new: n.map(Into::into),
        };
        assert_eq!(
            got,
            vec![
                ch("C1-LIC", "removed", None, Some("customer_id=c1, method=margin_on_cost, product_family=license, product_id=*, template=*, valid_from=2025-01-01, value=0.20"), None),
                ch("DEF-LICENSE", "changed", Some("method"), Some("markup_on_cost"), Some("markup_on_list")),
                ch("DEF-LICENSE", "changed", Some("value"), Some("0.12"), Some("0.10")),
                ch("C2-AZ", "added", None, None, Some("customer_id=c2, method=markup_on_cost, product_family=azure_usage, product_id=*, template=*, valid_from=2025-01-01, value=10%")),
            ]
        );
    }

    #[test]
    fn tag_rule_rows_are_compared_row_by_row_within_a_rule() {
        let old = "rule_id,priority,customer_id,target_unit_id,share\nT1,10,c1,U1,0.5\nT1,10,c1,U2,\n";
        let new = "rule_id,priority,customer_id,target_unit_id,share\nT1,10,c1,U1,0.6\nT1,10,c1,U2,\n";
        let got = diff(Some(old.as_bytes()), new.as_bytes()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].rule_id.as_str(), got[0].field.as_deref(), got[0].old.as_deref(), got[0].new.as_deref()), ("T1", Some("share"), Some("0.5"), Some("0.6")));
    }

    #[test]
    fn price_effect_from_rule_values() {
        let t = d("0.05");
        // 12 % → 13 % markup: 1.13 / 1.12 − 1 = 0.008929 (rounded to 6 places): below 5 %.
        let small = OLD.replace("markup_on_cost,0.12", "markup_on_cost,0.13");
        let e = price_effect(Some(OLD.as_bytes()), small.as_bytes(), t).unwrap();
        assert_eq!(e.largest, Some(d("0.008929")));
        assert!(!e.needs_executive());
        // 15 % → 25 % markup: 1.25 / 1.15 − 1 = 0.086957: above 5 %.
        let big = OLD.replace("15%", "25%");
        let e = price_effect(Some(OLD.as_bytes()), big.as_bytes(), t).unwrap();
        assert_eq!(e.largest, Some(d("0.086957")));
        assert!(e.needs_executive());
        // margin 20 % → markup 25 % on cost: 1.25 / (1 / 0.8) − 1 = 0.
        let same = OLD.replace("margin_on_cost,0.20", "markup_on_cost,0.25");
        assert_eq!(price_effect(Some(OLD.as_bytes()), same.as_bytes(), t).unwrap().largest, Some(d("0")));
        // cost basis → list basis cannot be judged from values: an executive is needed.
        let basis = OLD.replace("markup_on_cost,0.12", "discount_off_list,0.05");
        let e = price_effect(Some(OLD.as_bytes()), basis.as_bytes(), t).unwrap();
        assert_eq!(e.largest, None);
        assert!(e.needs_executive());
    }

    #[test]
    fn an_added_rule_is_judged_against_the_rules_it_takes_lines_from() {
        let t = d("0.05");
        // A customer rule at 20 % takes c9's Azure lines from DEF-AZURE at 15 %: 1.20 / 1.15 − 1 = 0.043478.
        let new = format!("{OLD}C9-AZ,c9,*,azure_usage,,,*,markup_on_cost,20%,,2025-01-01,\n");
        let e = price_effect(Some(OLD.as_bytes()), new.as_bytes(), t).unwrap();
        assert_eq!(e.largest, Some(d("0.043478")));
        assert_eq!(e.items[0].customer_id, "c9");
        // The first version has no previous prices: nothing moves.
        let first = price_effect(None, OLD.as_bytes(), t).unwrap();
        assert_eq!(first.largest, Some(d("0")));
        // Removing C1-LIC hands c1's licences to DEF-LICENSE: 1.12 / 1.25 − 1 = −0.104.
        let removed = OLD.replace("C1-LIC,c1,*,license,,,*,margin_on_cost,0.20,,2025-01-01,\n", "");
        let e = price_effect(Some(OLD.as_bytes()), removed.as_bytes(), t).unwrap();
        assert_eq!(e.largest, Some(d("0.104")));
        assert_eq!(e.items[0].effect, Some(d("-0.104")));
    }

    #[test]
    fn settings_default_to_both_files_with_finance_and_sales_ops() {
        let s = Settings { enabled: true, ..Default::default() };
        let c = s.controlled().unwrap();
        assert_eq!(c.get("rate_cards").unwrap(), &vec!["finance".to_string(), "sales_ops".to_string()]);
        assert_eq!(c.len(), 2);
        let bad = Settings { enabled: true, roles: BTreeMap::from([("customers".to_string(), vec!["finance".to_string()])]), ..Default::default() };
        assert_eq!(crate::error::exit_code(&bad.controlled().unwrap_err()), 2);
        assert!(Settings::default().controlled().unwrap().is_empty());
    }
}
