//! Faults and hostile inputs through the real binary on a copy of `sample_data/` (issue 21): a killed close is
//! repaired by the next command; CR-only line ends, special files, links out of the input folder and hostile
//! sizes are exit 2 naming the file, quoting nothing of it, within a memory limit; a cut last line keeps its
//! readable amount; secrets in the warehouse URL never reach the output.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::*;

const PERIOD: &str = "2025-06";
const INVOICE_FILE: &str = "G107047573_InvoiceRecon_202506.csv";

fn workspace() -> (tempfile::TempDir, PathBuf) {
    sample_workspace()
}

fn inputs(ws: &Path) -> PathBuf {
    ws.join("inputs").join(PERIOD)
}

fn args<'a>(cmd: &'a str, ws: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut a = vec![
        cmd.to_string(),
        "--config".into(),
        ws.join("cspbill.toml").to_string_lossy().into_owned(),
        "--period".into(),
        PERIOD.into(),
        "--warehouse".into(),
        ws.join("warehouse").to_string_lossy().into_owned(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(cmd: &str, ws: &Path, extra: &[&str]) -> Output {
    let a = args(cmd, ws, extra);
    cspbill(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

/// Appends a `[limits]` section to the workspace's config.
fn set_limits(ws: &Path, toml: &str) {
    let cfg = ws.join("cspbill.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("\n[limits]\n{toml}\n"));
    std::fs::write(cfg, text).unwrap();
}

/// Runs the binary under an address-space limit (`prlimit --as`), with a watchdog that kills it if it hangs, so
/// a regression fails the test instead of exhausting the machine or blocking the suite.
fn run_bounded(cmd: &str, ws: &Path, mem_bytes: u64) -> Output {
    let a = args(cmd, ws, &[]);
    let child = Command::new("prlimit")
        .arg(format!("--as={mem_bytes}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_cspbill"))
        .args(&a)
        .env("NO_COLOR", "1")
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the binary");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        // Not a speed check: only a bound so that a hang (a FIFO read) fails instead of blocking forever.
        std::thread::sleep(std::time::Duration::from_secs(300));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    drop(watchdog);
    out
}

/// A memory bound that an ordinary run of the sample stays under (checked by the first assertion of the
/// hostile-size test), far below what reading the hostile files whole would take.
const MEMORY_LIMIT: u64 = 3 << 30;

fn published(ws: &Path, rel: &str) -> PathBuf {
    ws.join("warehouse").join(rel)
}

/// Issue 21 item 1: a close killed between its commit point and the end of its publication (marker and Hive
/// file missing, lock left by a dead process) is completed by the next command on the period: a re-run that
/// stops early because the period is closed, a stage command, `explain`.
#[test]
fn a_close_killed_while_publishing_is_repaired_by_every_command() {
    let (_t, ws) = workspace();
    let o = run("run", &ws, &["--mode", "close"]);
    assert_code(&o, 0, "close");
    let hive = published(&ws, "marts/fct_invoices/period=2025-06/part-0.parquet");
    let good = std::fs::read(&hive).unwrap();
    let marker = published(&ws, "_commits/period=2025-06/v000000001.published");
    let runs: Vec<PathBuf> = std::fs::read_dir(published(&ws, "_runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    for cmd in ["run", "ingest", "explain"] {
        // The state a SIGKILL after the commit point leaves.
        std::fs::remove_file(&marker).unwrap();
        std::fs::remove_file(&hive).unwrap();
        std::fs::remove_file(&runs[0]).unwrap();
        let lock = serde_json::json!({"run_id": "killed", "host": host, "pid": dead_pid, "since": "2025-07-01T00:00:00Z"});
        std::fs::create_dir_all(published(&ws, "_locks")).unwrap();
        std::fs::write(published(&ws, "_locks/period=2025-06.lock"), lock.to_string()).unwrap();
        let o = match cmd {
            "run" => run("run", &ws, &["--mode", "close"]),
            "explain" => run("explain", &ws, &["--line", "no-such-line"]),
            _ => run(cmd, &ws, &[]),
        };
        match cmd {
            "explain" => assert_code(&o, 2, cmd), // no such line, but the period was repaired first
            _ => assert_code(&o, 0, cmd),
        }
        if cmd == "run" {
            assert!(String::from_utf8_lossy(&o.stdout).contains("is closed"), "{cmd}");
        }
        assert_eq!(std::fs::read(&hive).ok().as_deref(), Some(&good[..]), "{cmd}: the Hive file is back");
        assert!(marker.exists(), "{cmd}: publication marked complete");
        assert!(runs[0].exists(), "{cmd}: the run manifest is written");
        assert!(!published(&ws, "_locks/period=2025-06.lock").exists(), "{cmd}: no lock left");
    }
}

/// Issue 21 item 2: a CSV saved with CR-only line ends is exit 2 naming the file, not a 0-row file.
#[test]
fn cr_only_line_ends_are_exit_2_naming_the_file() {
    let (_t, ws) = workspace();
    let f = inputs(&ws).join(INVOICE_FILE);
    let text = std::fs::read_to_string(&f).unwrap().replace("\r\n", "\n").replace('\n', "\r");
    std::fs::write(&f, text).unwrap();
    let o = run("run", &ws, &[]);
    assert_code(&o, 2, "CR-only file");
    let e = stderr(&o);
    assert!(e.contains(INVOICE_FILE) && e.contains("line 1") && e.contains("CR-only"), "{e}");
    assert!(!published(&ws, "_commits").exists(), "nothing published");
}

/// Issue 21 item 9: a file cut inside a quoted value of its last line: the cut row is a reject that keeps the
/// amounts that were readable, so cost in = staged + rejected holds with the true amount (374), not 0.
#[test]
fn a_cut_last_line_keeps_its_readable_amount() {
    let (_t, ws) = workspace();
    let f = inputs(&ws).join(INVOICE_FILE);
    let mut text = std::fs::read_to_string(&f).unwrap();
    let line = text.lines().nth(1).unwrap().to_string();
    assert!(line.contains(r#""cycleCharge","22","17","374","0","374","USD""#), "fixture row changed: {line}");
    let cut = &line[..line.find("\"Monthly\"").unwrap() + 4]; // ends inside `"Mon`
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(cut);
    std::fs::write(&f, text).unwrap();
    let o = run("run", &ws, &[]);
    assert_code(&o, 0, "nightly with a cut last line");
    let runs: Vec<PathBuf> = std::fs::read_dir(published(&ws, "_runs")).unwrap().map(|e| e.unwrap().path()).collect();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&runs[0]).unwrap()).unwrap();
    let input = m["inputs"].as_array().unwrap().iter().find(|i| i["name"] == INVOICE_FILE).unwrap();
    assert_eq!(input["rejected"], 1, "{input}");
    assert_eq!(input["cost_rejected"], "374", "the cut row's intact Subtotal counts: {input}");
    let cost = |k: &str| input[k].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap();
    assert_eq!(cost("cost_in"), cost("cost_staged") + cost("cost_rejected") + cost("cost_duplicates") + cost("cost_set_aside"));
}

/// Issue 21 item 5: only regular files are read; links leaving the input folder are refused unless configured;
/// nothing of an unrecognised file is echoed.
#[test]
fn special_files_and_links_out_of_the_input_folder_are_refused() {
    // A FIFO would block a reader forever.
    let (_t, ws) = workspace();
    let fifo = inputs(&ws).join("pipe.csv");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let o = run_bounded("run", &ws, MEMORY_LIMIT);
    assert_code(&o, 2, "FIFO");
    assert!(stderr(&o).contains("pipe.csv") && stderr(&o).contains("named pipe"), "{}", stderr(&o));
    std::fs::remove_file(&fifo).unwrap();

    // A link to a device that never ends.
    std::os::unix::fs::symlink("/dev/zero", inputs(&ws).join("zero.csv")).unwrap();
    let o = run_bounded("run", &ws, MEMORY_LIMIT);
    assert_code(&o, 2, "link to /dev/zero");
    assert!(stderr(&o).contains("zero.csv"), "{}", stderr(&o));
    std::fs::remove_file(inputs(&ws).join("zero.csv")).unwrap();

    // A link to a system file: refused as leaving the folder, and its content never shown.
    std::os::unix::fs::symlink("/etc/passwd", inputs(&ws).join("passwd.csv")).unwrap();
    let o = run("run", &ws, &[]);
    assert_code(&o, 2, "link to /etc/passwd");
    assert!(stderr(&o).contains("passwd.csv") && stderr(&o).contains("follow_symlinks"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("root:"), "{}", stderr(&o));
    std::fs::remove_file(inputs(&ws).join("passwd.csv")).unwrap();

    // The same content as a regular file: not an export, and nothing of it is quoted.
    std::fs::write(inputs(&ws).join("notes.csv"), "root:x:0:0:root:/root:/bin/bash\nsecret,line\n").unwrap();
    let o = run("run", &ws, &[]);
    assert_code(&o, 2, "unrecognised file");
    assert!(stderr(&o).contains("notes.csv") && stderr(&o).contains("not a Partner Center export"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("root:") && !stderr(&o).contains("secret"), "{}", stderr(&o));
    std::fs::remove_file(inputs(&ws).join("notes.csv")).unwrap();

    // A link to an export outside the folder: refused by default, read with `follow_symlinks = true`.
    let outside = ws.join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::rename(inputs(&ws).join(INVOICE_FILE), outside.join(INVOICE_FILE)).unwrap();
    std::os::unix::fs::symlink(outside.join(INVOICE_FILE), inputs(&ws).join(INVOICE_FILE)).unwrap();
    let o = run("run", &ws, &[]);
    assert_code(&o, 2, "link out of the input folder");
    assert!(stderr(&o).contains(INVOICE_FILE) && stderr(&o).contains("leading out of the input folder"), "{}", stderr(&o));
    assert!(!published(&ws, "raw").exists(), "nothing landed");
    set_limits(&ws, "follow_symlinks = true");
    let o = run("run", &ws, &[]);
    assert_code(&o, 0, "link followed when configured");
    // A link inside the folder is always fine.
    let (_t2, ws2) = workspace();
    let inside = inputs(&ws2).join("sub");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::rename(inputs(&ws2).join(INVOICE_FILE), inside.join("real.csv")).unwrap();
    std::os::unix::fs::symlink(inside.join("real.csv"), inputs(&ws2).join(INVOICE_FILE)).unwrap();
    // Both the link and its target are listed: the second is counted as duplicates, nothing is refused.
    assert_code(&run("run", &ws2, &[]), 0, "link inside the folder");
}

/// Issue 21 item 3: hostile sizes are exit 2 naming the file and the limit to raise, under a memory limit, with
/// a short message; the limits come from `[limits]` (small here so the cases stay fast).
#[test]
fn hostile_sizes_are_bounded_by_configured_limits() {
    let limits = "max_record_bytes = 65536\nmax_columns = 200\nmax_json_bytes = 1048576";
    // An ordinary run fits the memory limit (so the limit, not a crash, decides the cases below).
    let (_t, ws) = workspace();
    set_limits(&ws, limits);
    assert_code(&run_bounded("run", &ws, MEMORY_LIMIT), 0, "sample under the memory limit");

    type Case = (&'static str, &'static str, fn(&Path));
    let cases: [Case; 5] = [
        ("a 4 GB single line after the header (sparse file)", "max_record_bytes", |dir| {
            let f = dir.join("huge.csv");
            let header = std::fs::read_to_string(dir.join(INVOICE_FILE)).unwrap();
            let header = header.lines().next().unwrap().to_string() + "\n";
            std::fs::write(&f, header).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.set_len(4 << 30).unwrap();
        }),
        ("a header of 1,000 columns", "max_columns", |dir| {
            let header = (0..1000).map(|i| format!("c{i}")).collect::<Vec<_>>().join(",");
            std::fs::write(dir.join("wide.csv"), format!("UsageDate,Quantity,{header}\n1,2\n")).unwrap();
        }),
        ("a header of a million columns", "max_", |dir| {
            std::fs::write(dir.join("wider.csv"), ",".repeat(1_000_000) + "\n").unwrap();
        }),
        ("a v2 blob inflating to 64 MB", "max_json_bytes", |dir| {
            use std::io::Write;
            let v2 = dir.join("export");
            std::fs::create_dir_all(&v2).unwrap();
            std::fs::write(v2.join("manifest.json"), "{}").unwrap();
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..64 {
                enc.write_all(&chunk).unwrap();
            }
            std::fs::write(v2.join("blob1.json.gz"), enc.finish().unwrap()).unwrap();
        }),
        ("a JSON line of 200 KB", "max_record_bytes", |dir| {
            let line = format!("{{\"usageDate\":\"{}\"}}\n", "x".repeat(200_000));
            std::fs::write(dir.join("lines.json"), line).unwrap();
        }),
    ];
    for (what, key, make) in cases {
        let (_t, ws) = workspace();
        set_limits(&ws, limits);
        make(&inputs(&ws));
        let o = run_bounded("run", &ws, MEMORY_LIMIT);
        assert_code(&o, 2, what);
        let e = stderr(&o);
        assert!(e.contains(key), "{what}: names the limit: {e}");
        assert!(e.len() < 2_000, "{what}: a short message, not the input ({} bytes)", e.len());
    }
}

/// Issue 21 item 7: a SAS token in the warehouse URL never appears in any output; a plain-HTTP endpoint without
/// `allow_http` says what to set.
#[test]
fn secrets_in_the_warehouse_url_are_never_printed() {
    let (_t, ws) = workspace();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = "az://billing/cspbill?sv=2022-11-02&ss=b&srt=co&sp=rwdl&se=2030-01-01&sig=TOPSECRETSIG%3D";
    let cfg = ws.join("cspbill.toml");
    let a = ["run", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", url];
    let o = Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(a)
        .env("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
        .env("AZURE_STORAGE_ENDPOINT", format!("http://127.0.0.1:{port}/devstoreaccount1"))
        .env("AZURE_ALLOW_HTTP", "true")
        .env_remove("CSPBILL_WAREHOUSE")
        .output()
        .unwrap();
    assert_code(&o, 2, "unreachable Azure warehouse");
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!all.contains("TOPSECRET"), "{all}");
    assert!(all.contains("az://billing/cspbill"), "the URL is still named: {all}");

    let a = ["run", "--config", cfg.to_str().unwrap(), "--period", PERIOD, "--warehouse", "s3://b/p"];
    let o = Command::new(env!("CARGO_BIN_EXE_cspbill"))
        .args(a)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ALLOW_HTTP")
        .env_remove("CSPBILL_WAREHOUSE")
        .output()
        .unwrap();
    assert_code(&o, 2, "plain http without allow_http");
    assert!(stderr(&o).contains("allow_http"), "{}", stderr(&o));
}
