//! `cspbill share --customer ID --period P --expires 7d`: a customer's bundle (its invoice documents and its
//! per-invoice FOCUS files of the period) shared as read-only signed URLs that expire.
//!
//! The bundle is a copy of the customer's own export folder (`marts/exports/period=P/customer=ID/`), made at
//! `_shares/period=P/customer=ID/<share>/`, so a link keeps serving exactly what was shared even when the period
//! is re-run; the per-invoice files hold only that invoice's rows (tested in tests/privacy_e2e.rs, including a
//! charge routed to another customer by a tag rule). URLs are signed by object_store's `Signer` with the
//! warehouse's credentials: S3 (SigV4 query signature, at most 7 days), Azure (a service SAS with read
//! permission), GCS (V4 signed URL; untested here: no GCS emulator speaks object_store's API). URLs go to
//! standard output only, never to logs, the manifest or the audit log (they are bearer credentials until
//! they expire); the audit log records who shared what with which expiry. `cspbill retention` deletes the copy
//! once its links have expired (`share.json` beside the files says when).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use object_store::path::Path as StorePath;
use object_store::signer::Signer;
use object_store::ObjectStoreScheme;
use pipeline::Period;

use crate::error::{Failure, redact};
use crate::warehouse::Warehouse;

/// `cspbill share`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShareArgs {
    /// The cspbill.toml of the billing workspace.
    #[arg(long)]
    pub config: PathBuf,
    /// The customer whose bundle is shared (`customer_id` as in customers.csv, any case).
    #[arg(long)]
    pub customer: String,
    /// The billing period, `YYYY-MM`.
    #[arg(long, value_parser = |s: &str| s.parse::<Period>().map_err(|e| e.to_string()))]
    pub period: Period,
    /// How long the links work: `30m`, `12h`, `7d` (at most 7 days).
    #[arg(long, default_value = "7d", value_parser = parse_expiry)]
    pub expires: Duration,
    /// Warehouse root URL; overrides the config.
    #[arg(long, env = "CSPBILL_WAREHOUSE")]
    pub warehouse: Option<String>,
}

/// The record beside a shared bundle (not shared itself): customer, period, expiry, files.
pub const SHARE_RECORD: &str = "share.json";

/// The longest expiry: S3's SigV4 limit, and a sensible bound for a bearer link.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `90s`, `30m`, `12h`, `7d` → a duration of at most 7 days.
pub fn parse_expiry(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad expiry `{s}`: write a number and a unit, e.g. 7d, 12h, 30m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad expiry `{s}`: the unit is s, m, h or d (e.g. 7d)")),
    };
    let d = Duration::from_secs(secs);
    if d.is_zero() || d > MAX_EXPIRY {
        return Err(format!("expiry `{s}` must be between 1 second and 7 days"));
    }
    Ok(d)
}

/// The signer of a warehouse URL (object stores only) and the store prefix its paths live under.
fn signer(url: &str, options: &BTreeMap<String, String>) -> Result<(Arc<dyn Signer>, String)> {
    let shown = redact(url);
    let parsed = url::Url::parse(url).map_err(|_| {
        Failure::usage(format!(
            "signed URLs need an object-store warehouse (`s3://`, `az://`, `gs://`), not the folder `{shown}`: share a local warehouse's files another way"
        ))
    })?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
        .map_err(|e| Failure::usage(format!("warehouse URL `{shown}` is not supported for sharing: {e}")))?;
    // Credentials as the warehouse reads them: the cloud's environment variables, then `[warehouse] options`.
    let env_opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let opts: Vec<(String, String)> = env_opts.into_iter().chain(options.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    let signer: Arc<dyn Signer> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = object_store::aws::AmazonS3Builder::new().with_url(url);
            for (k, v) in &opts {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build().map_err(|e| Failure::usage(redact(&format!("cannot configure S3 signing for `{shown}`: {e}"))))?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::new().with_url(url);
            for (k, v) in &opts {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build().map_err(|e| Failure::usage(redact(&format!("cannot configure Azure signing for `{shown}`: {e}"))))?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new().with_url(url);
            for (k, v) in &opts {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build().map_err(|e| Failure::usage(redact(&format!("cannot configure GCS signing for `{shown}`: {e}"))))?)
        }
        _ => {
            return Err(Failure::usage(format!(
                "signed URLs need an object-store warehouse (`s3://`, `az://`, `gs://`), not `{shown}`"
            ))
            .into());
        }
    };
    Ok((signer, prefix.as_ref().to_string()))
}

/// The files of a customer's bundle in a commit: its export folder (invoice documents, per-invoice FOCUS).
pub fn bundle_files(commit: &crate::warehouse::Commit, period: Period, customer: &str) -> Vec<crate::warehouse::FileEntry> {
    let dir = format!("marts/exports/period={period}/customer={customer}/");
    commit.files.iter().filter(|f| f.path.starts_with(&dir) && !f.path[dir.len()..].contains('/')).cloned().collect()
}

pub fn command(a: &ShareArgs) -> Result<()> {
    let cfg = crate::config::load(&a.config)?;
    let url = cfg.warehouse_url(a.warehouse.as_deref());
    // The signer first: a local warehouse cannot sign, which is exit 2 before anything is copied.
    let (signer, prefix) = signer(&url, &cfg.warehouse.options)?;
    let wh = Warehouse::open(&url, &cfg.warehouse.options)?;
    wh.repair(a.period)?;
    let commit = wh.committed(a.period)?.ok_or_else(|| {
        Failure::usage(format!("`{}` has no committed run of period {}; run `cspbill run --period {}` first", wh.url(), a.period, a.period))
    })?;
    let customers = wh
        .read_commit_table(&commit, schemas::stg_customers::TABLE, schemas::stg_customers::ZONE)?
        .context("the period's commit has no `stg_customers`")?;
    let ids = customers.column(schemas::stg_customers::customer_id)?.str()?.clone();
    let Some(customer) = ids.iter().flatten().find(|id| id.eq_ignore_ascii_case(a.customer.trim())).map(str::to_string) else {
        return Err(Failure::usage(format!(
            "customer `{}` is not in the customers of period {}; check the id against customers.csv",
            crate::error::clip(&a.customer),
            a.period
        ))
        .into());
    };
    let files = bundle_files(&commit, a.period, &customer);
    if files.is_empty() {
        return Err(Failure::usage(format!("customer `{customer}` has no invoice in period {}: nothing to share", a.period)).into());
    }
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let share_id = crate::inputs_sha256(format!("{customer}|{}|{nanos}|{}", a.period, std::process::id()).as_bytes())[..20].to_string();
    let dir = format!("_shares/period={}/customer={customer}/{share_id}", a.period);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the signing runtime")?;
    let expires_at = chrono::Utc::now() + chrono::Duration::from_std(a.expires).unwrap_or_default();
    let mut shared = Vec::new();
    for f in &files {
        let bytes = wh.read_file(&f.data)?.ok_or_else(|| Failure::invariant(format!("`{}` is missing from the warehouse; re-run the period", f.data)))?;
        let name = f.path.rsplit('/').next().unwrap_or(&f.path).to_string();
        let rel = format!("{dir}/{name}");
        wh.create_file(&rel, bytes)?;
        let full = if prefix.is_empty() { rel.clone() } else { format!("{}/{rel}", prefix.trim_end_matches('/')) };
        let signed = rt
            .block_on(signer.signed_url(reqwest::Method::GET, &StorePath::from(full.as_str()), a.expires))
            .map_err(|e| Failure::invariant(redact(&format!("signing `{rel}` failed: {e}; check the warehouse credentials (signing needs a key, not an anonymous or SAS-only login)"))))?;
        println!("{name}\t{signed}");
        shared.push(serde_json::json!({"file": name, "sha256": f.sha256, "bytes": f.bytes}));
    }
    // What retention needs to delete the copy once its links have expired.
    let record = serde_json::json!({"customer_id": customer, "period": a.period.to_string(), "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "files": shared});
    wh.create_file(&format!("{dir}/{SHARE_RECORD}"), bytes::Bytes::from(serde_json::to_vec_pretty(&record)?))?;
    eprintln!(
        "shared {} file(s) of customer `{customer}` for {}: links expire at {} (read-only); send them over a channel you trust",
        shared.len(),
        a.period,
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (actor, source) = crate::change_control::actor();
    let mut ev = crate::change_control::Event::new("share", &actor, source);
    ev.period = Some(a.period.to_string());
    ev.run_id = Some(commit.run_id.clone());
    ev.detail = serde_json::json!({"customer_id": customer, "share": dir, "expires_at": expires_at.to_rfc3339(), "files": shared}).to_string();
    crate::change_control::audit(&wh, ev)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_units_and_bounds() {
        assert_eq!(parse_expiry("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_expiry("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_expiry("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_expiry("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_expiry("8d").is_err());
        assert!(parse_expiry("0s").is_err());
        assert!(parse_expiry("7 days").is_err());
        assert!(parse_expiry("d").is_err());
    }
}
