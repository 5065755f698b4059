//! Where things live in the warehouse (table, raw, run, version, lock paths) and the checks that keep names from
//! escaping their place.

use super::*;

/// `zone/TABLE/period=P/part-0.parquet`.
/// A table name that is a safe path segment, in a zone tables may be written to (`raw/` holds input files only).
pub(super) fn check_table_target(table: &str, zone: Zone) -> Result<()> {
    check_segment("table name", table)?;
    if zone == Zone::Raw {
        return Err(Failure::invariant(format!(
            "table `{table}` cannot be written to `raw/`, which holds input files only: use `land_raw`"
        ))
        .into());
    }
    Ok(())
}

/// `raw/SOURCE/sha256=HEX/NAME`, with every part checked.
pub(super) fn raw_path(source: &str, name: &str, sha256: &str) -> Result<String> {
    check_segment("raw source", source)?;
    check_segment("input file name", name)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Failure::usage(format!("`{sha256}` is not a lower-case hex SHA-256; pass the digest of `{name}`")).into());
    }
    Ok(format!("raw/{source}/sha256={sha256}/{name}"))
}

pub(super) fn table_path(table: &str, zone: Zone, period: Period) -> String {
    format!("{}/{table}/period={period}/{PART_FILE}", zone.dir())
}

pub(super) fn run_prefix(period: Period, run_id: &str) -> String {
    format!("_data/period={period}/{run_id}")
}

pub(super) fn version_path(period: Period, version: u64, ext: &str) -> String {
    format!("_commits/period={period}/v{version:09}.{ext}")
}

pub(super) fn version_dir_file(period: Period, name: &str) -> String {
    format!("_commits/period={period}/{name}")
}

/// `_commits/period=P/current.csv`: one row per file of the published version, for readers that need one
/// consistent version of a period across reads and tables (DuckDB, Polars: see docs/warehouse.md). `data` is the
/// immutable run-unique copy, relative to the warehouse root; it stays until two newer commits exist.
pub(super) fn current_list(commit: &Commit) -> Bytes {
    let mut out = String::from("version,run_id,zone,table_name,path,data,rows,sha256\n");
    for f in &commit.files {
        let q = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            commit.version,
            q(&commit.run_id),
            q(f.zone.as_deref().unwrap_or("")),
            q(f.table.as_deref().unwrap_or("")),
            q(&f.path),
            q(&f.data),
            f.rows.map(|r| r.to_string()).unwrap_or_default(),
            f.sha256
        ));
    }
    Bytes::from(out)
}

pub(super) fn lock_path(period: Period) -> String {
    format!("_locks/period={period}.lock")
}

pub(super) fn store_path(rel: &str) -> Result<StorePath> {
    StorePath::parse(rel.trim_end_matches('/'))
        .map_err(|e| Failure::usage(format!("`{rel}` is not a valid warehouse path: {e}")).into())
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks an identifier that becomes one path segment (table name, run id, customer id, input file name):
/// it can never climb out of its folder or the root, nor hide as an internal file.
pub fn check_segment(what: &str, s: &str) -> Result<()> {
    let reason = if s.is_empty() {
        Some("it is empty")
    } else if s == "." || s == ".." {
        Some("it is a relative folder reference")
    } else if s.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if s.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if s.starts_with(['.', '_']) {
        Some("it starts with `.` or `_`, which readers treat as hidden")
    } else if s.contains(':') {
        Some("it contains `:`")
    } else if s.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(r) => Err(Failure::usage(format!(
            "{what} `{}` cannot be used in a warehouse path: {r}; rename it",
            crate::error::clip(s)
        ))
        .into()),
        None => Ok(()),
    }
}

/// Checks a relative path of several segments. Outside `internal`, paths under `_` folders and `raw/` are refused.
pub(super) fn check_rel_path(rel: &str, internal: bool) -> Result<()> {
    let segs: Vec<&str> = rel.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if internal && i == 0 && s.starts_with('_') {
            check_segment("path segment", &s[1..])?;
            continue;
        }
        check_segment("path segment", s)
            .with_context(|| format!("warehouse path `{}` is refused", crate::error::clip(rel)))?;
    }
    if !internal && segs.first() == Some(&"raw") {
        return Err(Failure::usage(format!(
            "`{rel}` is under `raw/`, which holds input files only; write exports elsewhere"
        ))
        .into());
    }
    Ok(())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether a process of this host is alive. Only Linux (`/proc`) can tell; elsewhere it counts as alive and the
/// lock's TTL decides.
pub(super) fn pid_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    // A zombie (killed, not yet reaped) holds nothing.
    match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
