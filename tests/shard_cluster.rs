//! A sharded run on a real local Dask cluster (issue 20): `tests/shard_cluster_check.py` starts a scheduler and
//! two workers on 127.0.0.1 as separate processes, runs `deploy/dask/cspbill_dask.py` against the moto S3 server
//! `scripts/test.sh` started, and holds each case to a single-machine `cspbill run` of the same workspace, file by
//! file (SHA-256 of every published object, read back from the store): the driver's run; a Dask worker killed with
//! SIGKILL mid-map (the task is run again elsewhere); one map run twice at once; a commit refused while a map is
//! missing, publishing nothing; a map exiting 1 retried, a commit exiting 1 not. Without the S3 server it skips, except under `CI=true`, where that fails.

mod support;

use std::process::Command;

#[test]
fn sharded_runs_on_a_local_dask_cluster_equal_the_single_run() {
    let s3 = match std::env::var("CSPBILL_TEST_S3") {
        Ok(v) if !v.is_empty() => v,
        _ => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run the cluster test: run it through scripts/test.sh");
            eprintln!("skipping: no CSPBILL_TEST_S3 (run scripts/test.sh, which starts moto)");
            return;
        }
    };
    let Some(py) = support::python() else { return };
    let has_dask = Command::new(&py).args(["-c", "import distributed, boto3"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(has_dask || std::env::var("CI").as_deref() != Ok("true"), "CI's Python must have `distributed` (scripts/requirements-ci.txt)");
    if !has_dask {
        eprintln!("skipping: {py} has no `distributed` (scripts/test.sh installs it)");
        return;
    }
    let (_t, ws) = support::sample_workspace();
    let out = Command::new(&py)
        .arg(support::repo().join("tests/shard_cluster_check.py"))
        .args(["--cspbill", env!("CARGO_BIN_EXE_cspbill"), "--period", "2025-06", "--s3", &s3, "--workspace"])
        .arg(&ws)
        .output()
        .expect("running tests/shard_cluster_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the cluster checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for case in ["identical", "worker_killed", "concurrent", "missing_shard", "retries", "buckets"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("ok {case} "))), "case {case} did not pass:\n{stdout}");
    }
}
