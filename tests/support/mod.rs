//! Helpers shared by the end-to-end tests: running the binary, finding the sample workspace and the real
//! fixtures (in `tests/fixtures/partner-center/`), and reading outputs back with DuckDB or pyarrow through the CI's Python (`CSPBILL_PYTHON`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real Partner Center fixtures, copied into the repository (`tests/fixtures/partner-center/`, with their
/// README of known totals), so a fresh clone runs every test.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/partner-center")
}

/// Runs the `cspbill` binary with `args`, returning its output.
pub fn cspbill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cspbill")).args(args).env("NO_COLOR", "1").output().expect("running cspbill")
}

/// Runs cspbill and asserts the exit code, printing stderr on failure.
pub fn cspbill_ok(args: &[&str]) -> Output {
    let out = cspbill(args);
    assert!(
        out.status.success(),
        "cspbill {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python interpreter with duckdb and pyarrow: `CSPBILL_PYTHON` (set by scripts/test.sh), else `python3`.
/// Returns None when neither has duckdb; under CI (`CI=true`) that is a failure, not a skip.
pub fn python() -> Option<String> {
    let candidates = [std::env::var("CSPBILL_PYTHON").ok(), Some("python3".to_string())];
    for c in candidates.into_iter().flatten() {
        let ok = Command::new(&c).args(["-c", "import duckdb, pyarrow"]).output().map(|o| o.status.success()).unwrap_or(false);
        if ok {
            return Some(c);
        }
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must provide CSPBILL_PYTHON with duckdb and pyarrow");
    eprintln!("skipping the DuckDB read-back: no python with duckdb and pyarrow (run scripts/test.sh, which makes one)");
    None
}

/// Runs a DuckDB SQL query in Python and returns its rows as CSV text (header included).
pub fn duckdb_csv(py: &str, sql: &str) -> String {
    let script = format!(
        "import duckdb,sys\ncon=duckdb.connect()\nrel=con.sql({sql:?})\nimport csv\nw=csv.writer(sys.stdout, lineterminator='\\n')\nw.writerow(rel.columns)\nfor r in rel.fetchall(): w.writerow(r)\n"
    );
    let out = Command::new(py).args(["-c", &script]).output().expect("running python");
    assert!(out.status.success(), "duckdb query failed: {}\n{sql}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 from duckdb")
}

/// Copies a folder recursively (test workspaces are small).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// A copy of `sample_data/` in a fresh temporary folder, without its warehouse: (the folder's guard, the copy).
pub fn sample_workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let ws = tmp.path().join("ws");
    copy_dir(&repo().join("sample_data"), &ws);
    let _ = std::fs::remove_dir_all(ws.join("warehouse"));
    (tmp, ws)
}

/// A CSV file read with Polars, every cell as text (no type inference): what a person sees in the file.
pub fn read_csv_as_text(path: &Path) -> polars::prelude::DataFrame {
    use polars::prelude::*;
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .unwrap_or_else(|e| panic!("opening `{}`: {e}", path.display()))
        .finish()
        .unwrap_or_else(|e| panic!("reading `{}` as CSV: {e}", path.display()))
}

/// Every file below `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A minimal CSV field splitter for one record (quotes, doubled quotes).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut q = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if q && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => q = !q,
            ',' if !q => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Doubles the BillingPreTaxTotal (and PricingPreTaxTotal, Quantity) of the first priced usage row of the
/// period's billed daily-usage file, as a Microsoft restatement would change an amount.
pub fn restate_one_usage_row(dir: &Path) {
    let file = walk(dir).into_iter().find(|p| p.to_string_lossy().contains("Usage")).expect("a usage file in the sample");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    let header: Vec<String> = split_csv(lines[0].trim_end());
    let idx = |n: &str| header.iter().position(|h| h == n).unwrap();
    let (bt, pt, q) = (idx("BillingPreTaxTotal"), idx("PricingPreTaxTotal"), idx("Quantity"));
    for l in lines.iter_mut().skip(1) {
        let end = if l.ends_with("\r\n") { "\r\n" } else if l.ends_with('\n') { "\n" } else { "" };
        let mut f = split_csv(l.trim_end_matches(['\r', '\n']));
        let cost: rust_decimal::Decimal = f[bt].trim_matches('"').parse().unwrap_or_default();
        if cost > rust_decimal::Decimal::ONE {
            for i in [bt, pt, q] {
                let v: rust_decimal::Decimal = f[i].trim_matches('"').parse().unwrap();
                f[i] = (v * rust_decimal::Decimal::TWO).to_string();
            }
            *l = format!("{}{end}", f.iter().map(|x| if x.contains(',') || x.contains('"') { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.clone() }).collect::<Vec<_>>().join(","));
            break;
        }
    }
    std::fs::write(&file, lines.concat()).unwrap();
}

/// Customer C00 of the generated sample (Contoso Holdings AG) and the personal data the privacy tests add to its
/// usage rows (`inject_personal_data`).
pub const C00: &str = "c613ce64-5507-4268-9109-c5bd16c60464";
pub const JANE: &str = "jane.doe@contoso-holdings.example";
pub const MAX: &str = "max.mustermann@contoso-holdings.example";
pub const VM: &str = "vm-jane.doe-04";

/// Adds personal data to customer C00's rows of a generated billed-usage CSV, as real tenants have it: a
/// `createdBy` e-mail tag, a VM named after its owner (and its disk), and an `owner` e-mail on the charges the
/// sample's tag rule routes to another customer (`entity=subsidiary`).
pub fn inject_personal_data(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let out: Vec<String> = text
        .split("\r\n")
        .map(|l| {
            if !l.contains(C00) {
                return l.to_string();
            }
            l.replace(
                r#"{""project"":""erp-reporting"",""environment"":""dev""}"#,
                &format!(r#"{{""project"":""erp-reporting"",""environment"":""dev"",""createdBy"":""{JANE}""}}"#),
            )
            .replace("vm-dev-04", VM)
            .replace(
                r#"{""entity"":""subsidiary"",""environment"":""prod""}"#,
                &format!(r#"{{""entity"":""subsidiary"",""environment"":""prod"",""owner"":""{MAX}""}}"#),
            )
        })
        .collect();
    std::fs::write(file, out.join("\r\n")).unwrap();
}
