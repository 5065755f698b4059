//! Test harness for the warehouse: the backends to run each test on (a local folder always; S3, Azurite and
//! fake-gcs-server when `scripts/test.sh` started them and exported their endpoints), each with a fresh prefix.
//!
//! Endpoints come from `CSPBILL_TEST_S3`, `CSPBILL_TEST_AZURITE` (`http://127.0.0.1:PORT`). Under `CI=true` a
//! missing one is a failure, not a skip: CI must test every store it can. `CSPBILL_TEST_GCS` is optional: the
//! GCS emulator on PyPI (fake-gcs-server) rejects object_store's XML-API writes, so GCS is untested by default.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A store to test on.
pub struct Backend {
    pub name: &'static str,
    /// A fresh root URL (a new folder or prefix per call).
    pub url: String,
    pub options: BTreeMap<String, String>,
    /// For the local backend: the folder, removed at the end.
    pub dir: Option<tempfile::TempDir>,
}

pub const S3_BUCKET: &str = "cspbill-test";
pub const AZ_CONTAINER: &str = "cspbill-test";
pub const GCS_BUCKET: &str = "cspbill-test";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A prefix no other test (or earlier run against the same server) uses.
pub fn unique(name: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}-{n}", std::process::id())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn endpoint(var: &str, required_in_ci: bool) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v.trim_end_matches('/').to_string()),
        _ => {
            assert!(
                !(required_in_ci && ci()),
                "`{var}` is not set but CI=true: run the tests through `scripts/test.sh`, which starts the servers"
            );
            None
        }
    }
}

pub fn local() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("warehouse");
    Backend {
        name: "local",
        url: root.to_string_lossy().into_owned(),
        options: BTreeMap::new(),
        dir: Some(dir),
    }
}

pub fn s3_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("aws_endpoint_url", endpoint),
        ("aws_allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn azure_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("azure_storage_account_name", AZURITE_ACCOUNT.to_string()),
        ("azure_storage_account_key", AZURITE_KEY.to_string()),
        (
            "azure_storage_endpoint",
            format!("{endpoint}/{AZURITE_ACCOUNT}"),
        ),
        ("azure_allow_http", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// fake-gcs-server: a service-account JSON pointing the client at it without OAuth, as object_store's CI does.
pub fn gcs_options(endpoint: &str) -> BTreeMap<String, String> {
    let sa = serde_json::json!({
        "gcs_base_url": endpoint,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    });
    BTreeMap::from([
        ("google_service_account_key".to_string(), sa.to_string()),
        ("allow_http".to_string(), "true".to_string()),
    ])
}

/// Every backend available, each at a fresh prefix.
pub fn backends(name: &str) -> Vec<Backend> {
    let mut out = vec![local()];
    let prefix = unique(name);
    if let Some(ep) = endpoint("CSPBILL_TEST_S3", true) {
        out.push(Backend {
            name: "s3",
            url: format!("s3://{S3_BUCKET}/{prefix}"),
            options: s3_options(&ep),
            dir: None,
        });
    }
    if let Some(ep) = endpoint("CSPBILL_TEST_AZURITE", true) {
        out.push(Backend {
            name: "azure",
            url: format!("az://{AZ_CONTAINER}/{prefix}"),
            options: azure_options(&ep),
            dir: None,
        });
    }
    if let Some(ep) = endpoint("CSPBILL_TEST_GCS", false) {
        out.push(Backend {
            name: "gcs",
            url: format!("gs://{GCS_BUCKET}/{prefix}"),
            options: gcs_options(&ep),
            dir: None,
        });
    }
    out
}

/// The environment a child process (the `cspbill` binary) needs to reach a backend without any option in its
/// config: each object_store option as the cloud's usual variable (`aws_endpoint_url` → `AWS_ENDPOINT_URL`).
pub fn child_env(b: &Backend) -> Vec<(String, String)> {
    b.options
        .iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect()
}

/// Differences between the committed tables of a period in two warehouses (rows sorted, `ignore` columns left
/// out): empty when they hold the same tables with the same rows. For comparing a run on a server with a run
/// on a local folder.
pub fn compare_committed(
    a: &crate::warehouse::Warehouse,
    b: &crate::warehouse::Warehouse,
    period: pipeline::Period,
    ignore: &[&str],
) -> Vec<String> {
    use pipeline::testing::frame_to_sorted_csv;
    let (Some(ca), Some(cb)) = (a.committed(period).unwrap(), b.committed(period).unwrap()) else {
        return vec![format!(
            "period {period} is not committed in both warehouses"
        )];
    };
    let tables = |c: &crate::warehouse::Commit| -> Vec<(String, String)> {
        c.files
            .iter()
            .filter_map(|f| Some((f.zone.clone()?, f.table.clone()?)))
            .collect()
    };
    let (ta, tb) = (tables(&ca), tables(&cb));
    if ta != tb {
        return vec![format!("tables differ: {ta:?} vs {tb:?}")];
    }
    let zone = |z: &str| match z {
        "staged" => schemas::Zone::Staged,
        "rejects" => schemas::Zone::Rejects,
        "int" => schemas::Zone::Int,
        _ => schemas::Zone::Marts,
    };
    let mut out = Vec::new();
    for (z, t) in ta {
        let read = |w: &crate::warehouse::Warehouse, c: &crate::warehouse::Commit| {
            let df = w.read_commit_table(c, &t, zone(&z)).unwrap().unwrap();
            let keep: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|s| s.to_string())
                .filter(|n| !ignore.contains(&n.as_str()))
                .collect();
            frame_to_sorted_csv(&df.select(keep).unwrap())
        };
        if read(a, &ca) != read(b, &cb) {
            out.push(format!("{z}/{t}: rows differ"));
        }
    }
    out
}

/// Runs the real `cspbill` binary (`cspbill run --config CONFIG --period P --warehouse URL ARGS...`) against a
/// backend, its options passed as the clouds' usual environment variables. For the end-to-end tests: run on
/// `sample_data/` against each backend, then `compare_committed` with the local-folder run.
pub fn run_cspbill(
    b: &Backend,
    config: &std::path::Path,
    period: &str,
    extra: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--period", period, "--warehouse", &b.url])
        .args(extra)
        .envs(child_env(b))
        .env_remove("CSPBILL_WAREHOUSE")
        .output()
        .expect("running the cspbill binary")
}
