//! The whole `cspbill run` on `sample_data/` against every store the test script started (a local folder always;
//! S3 on moto and Azure Blob on Azurite under `scripts/test.sh`): each run's committed tables are read back and
//! compared with the local-folder run (identical rows), the exports are there, and a second run of the same
//! period against the same store while the first holds it is refused with exit 1.

use cspbill::warehouse;

mod common;

use std::path::PathBuf;

use pipeline::Period;

fn sample_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample_data/cspbill.toml")
}

#[test]
fn sample_month_on_every_store_equals_the_local_run() {
    let period = Period::new(2025, 6).unwrap();
    let backends = common::backends("e2e");
    let local = &backends[0];
    let out = common::run_cspbill(local, &sample_config(), "2025-06", &[]);
    assert!(out.status.success(), "local run: {}", String::from_utf8_lossy(&out.stderr));
    let local_wh = warehouse::Warehouse::open(&local.url, &local.options).unwrap();
    let local_commit = local_wh.committed(period).unwrap().expect("local run committed");
    let exports = local_commit.files.iter().filter(|f| f.path.starts_with("marts/exports/")).count();
    assert!(exports >= 6, "exports of the local run: {exports}");
    for b in &backends[1..] {
        let out = common::run_cspbill(b, &sample_config(), "2025-06", &[]);
        assert!(out.status.success(), "{} run: {}", b.name, String::from_utf8_lossy(&out.stderr));
        let wh = warehouse::Warehouse::open(&b.url, &b.options).unwrap();
        let diff = common::compare_committed(&local_wh, &wh, period, &[]);
        assert!(diff.is_empty(), "{}: {diff:?}", b.name);
        let c = wh.committed(period).unwrap().unwrap();
        assert_eq!(c.files.iter().filter(|f| f.path.starts_with("marts/exports/")).count(), exports, "{}", b.name);
        // Same bytes as the local run for every table file: the Parquet is deterministic.
        for f in c.files.iter().filter(|f| f.table.is_some()) {
            let l = local_commit.files.iter().find(|x| x.path == f.path).unwrap_or_else(|| panic!("{} missing locally", f.path));
            assert_eq!(l.sha256, f.sha256, "{}: {}", b.name, f.path);
        }
    }
}

#[test]
fn a_run_while_another_holds_the_period_exits_1() {
    let period = Period::new(2025, 6).unwrap();
    for b in common::backends("e2e-lock") {
        let wh = warehouse::Warehouse::open(&b.url, &b.options).unwrap();
        let holder = wh.begin(period, "holder-run").unwrap();
        let out = common::run_cspbill(&b, &sample_config(), "2025-06", &[]);
        assert_eq!(out.status.code(), Some(1), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("holder-run"), "{}", String::from_utf8_lossy(&out.stderr));
        drop(holder);
        let out = common::run_cspbill(&b, &sample_config(), "2025-06", &[]);
        assert!(out.status.success(), "{} after release: {}", b.name, String::from_utf8_lossy(&out.stderr));
    }
}
