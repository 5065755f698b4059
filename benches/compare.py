#!/usr/bin/env python3
"""The side-by-side benchmark of issue 10 (run through benches/compare.sh, which makes the venv and the build).

For each size: generate a workspace (`cspbill generate --customers 200 --period 2025-06 --seed 7 --usage-rows N`),
then one after another on the same files, each under `/usr/bin/time -v`: the Polars parse floor, the DuckDB close
(benches/duckdb_close.py) and `cspbill run --mode close` on a fresh warehouse. Records wall, CPU (user+sys) and peak
RSS, cspbill's per-stage timings from its run manifest, checks that DuckDB's invoice subtotals equal cspbill's
`fct_invoices` to the cent (any mismatch marks the comparison INVALID), and writes a markdown table per size into
benches/results/ (also printed).

A watchdog kills any measured process tree whose resident memory passes --rss-limit-gb (default 20), so a run that
would exhaust the shared machine is recorded as killed instead.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import duckdb

PERIOD = "2025-06"
PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def parse_time_v(path: str) -> dict:
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("Elapsed (wall clock) time"):
                v = line.rsplit(" ", 1)[1]
                parts = [float(x) for x in v.split(":")]
                secs = 0.0
                for p in parts:
                    secs = secs * 60 + p
                out["wall_s"] = secs
            elif line.startswith("User time (seconds)"):
                out["user_s"] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("System time (seconds)"):
                out["sys_s"] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("Maximum resident set size (kbytes)"):
                out["rss_mb"] = int(line.rsplit(" ", 1)[1]) / 1024
            elif line.startswith("Exit status"):
                out["exit"] = int(line.rsplit(" ", 1)[1])
    if "user_s" in out:
        out["cpu_s"] = out["user_s"] + out.get("sys_s", 0.0)
    return out


def measure(name: str, cmd: list[str], logdir: str, rss_limit: int, env: dict | None = None) -> dict:
    """Runs cmd under /usr/bin/time -v; stdout/stderr to logdir/name.{out,err}; kills the tree above rss_limit."""
    tfile = os.path.join(logdir, f"{name}.time")
    out = open(os.path.join(logdir, f"{name}.out"), "w")
    err = open(os.path.join(logdir, f"{name}.err"), "w")
    print(f"  {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", tfile] + cmd, stdout=out, stderr=err,
                            env=env, start_new_session=True)
    peak = [0]
    killed = [False]

    def watch():
        while proc.poll() is None:
            r = tree_rss(proc.pid)
            peak[0] = max(peak[0], r)
            if r > rss_limit:
                killed[0] = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            time.sleep(0.25)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    rc = proc.wait()
    w.join()
    wall = time.perf_counter() - t0
    out.close()
    err.close()
    res = {"name": name, "rc": rc, "killed": killed[0]}
    if os.path.exists(tfile):
        res.update(parse_time_v(tfile))
    res.setdefault("wall_s", wall)
    res.setdefault("rss_mb", peak[0] / 2**20)
    if killed[0]:
        res["note"] = f"killed by the watchdog at {peak[0] / 2**30:.1f} GB RSS after {wall:.0f} s"
    elif rc != 0:
        res["note"] = f"exit {rc}; see {err.name}"
    status = "KILLED" if killed[0] else ("FAILED" if rc else "ok")
    print(f"    {status}: wall {res['wall_s']:.1f} s, cpu {res.get('cpu_s', float('nan')):.1f} s, "
          f"peak RSS {res['rss_mb']:.0f} MB", flush=True)
    return res


def cross_customer_rules(ws: str) -> tuple[int, int]:
    n = routed = 0
    with open(os.path.join(ws, "reference", "tag_rules.csv"), newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            n += 1
            t = (r.get("target_customer_id") or "").strip()
            if t and t not in ("*",) and t.lower() != (r.get("customer_id") or "").strip().lower():
                routed += 1
    return n, routed


def compare_invoices(duck_out: str, wh: str) -> dict:
    """DuckDB's invoice subtotals against cspbill's fct_invoices, to the cent (exact DECIMAL comparison)."""
    con = duckdb.connect()
    files = glob.glob(os.path.join(wh, "marts", "fct_invoices", f"period={PERIOD}", "*.parquet"))
    if not files:
        return {"valid": False, "reason": "cspbill wrote no fct_invoices for the period"}
    rel = "read_csv" if duck_out.endswith(".csv") else "read_parquet"
    rows = con.execute(f"""
      WITH c AS (SELECT customer_id, currency, invoice_number, CAST(subtotal AS DECIMAL(38,18)) AS subtotal
                 FROM read_parquet({files!r})),
           d AS (SELECT customer_id, currency, invoice_number, CAST(subtotal AS DECIMAL(38,18)) AS subtotal
                 FROM {rel}('{duck_out}'))
      SELECT coalesce(c.customer_id, d.customer_id), coalesce(c.currency, d.currency),
             c.invoice_number, d.invoice_number, c.subtotal, d.subtotal
      FROM c FULL OUTER JOIN d ON c.customer_id = d.customer_id AND c.currency = d.currency
      ORDER BY 1, 2
    """).fetchall()
    bad = [r for r in rows if r[4] is None or r[5] is None or r[4] != r[5]]
    numbers = [r for r in rows if r[2] != r[3]]
    tot = con.execute(f"SELECT count(*), sum(subtotal) FROM read_parquet({files!r})").fetchone()
    return {
        "valid": not bad,
        "invoices_cspbill": tot[0],
        "invoices_compared": len(rows),
        "mismatches": [[str(x) for x in r] for r in bad[:20]],
        "mismatch_count": len(bad),
        "invoice_number_differences": len(numbers),
        "reason": "" if not bad else f"{len(bad)} invoice(s) differ",
    }


def fmt(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


def table(size: int, ws_info: dict, results: list[dict], stages: list, cmp: dict, floor_name: str) -> str:
    by = {r["name"]: r for r in results}
    floor = by.get(floor_name)
    duck = by.get("duckdb_close")
    lines = []
    if cmp.get("valid"):
        verdict = ("**valid**: DuckDB's and cspbill's invoice subtotals agree to the cent "
                   f"({cmp.get('invoices_compared')} invoices)")
    elif cmp.get("skipped"):
        verdict = f"No comparison at this size: {cmp.get('reason')}"
    else:
        verdict = f"**INVALID COMPARISON**: {cmp.get('reason')}"
    lines.append(f"### {size:,} usage rows requested\n")
    lines.append(f"Workspace: {ws_info.get('usage_rows', 0):,} daily-usage rows generated, "
                 f"{ws_info['csv_mb']:,.0f} MB of usage CSV in {ws_info['files']} file(s), "
                 f"{ws_info['customers']} customers, {ws_info['tag_rules']} tag-rule rows of which "
                 f"{ws_info['routed']} route to another customer. Machine: {os.cpu_count()} cores, "
                 f"{ws_info['mem_gb']:.0f} GiB. {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.\n")
    lines.append(verdict + "\n")
    lines.append("| step | wall s | CPU s (user+sys) | peak RSS MB | wall / floor | wall / DuckDB | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        wf = r["wall_s"] / floor["wall_s"] if floor and floor.get("wall_s") else None
        wd = r["wall_s"] / duck["wall_s"] if duck and duck.get("wall_s") and not duck.get("rc") else None
        ok = not r.get("rc") and not r.get("killed")
        lines.append(f"| {r['name']} | {fmt(r['wall_s'])} | {fmt(r.get('cpu_s'))} | {fmt(r['rss_mb'], 0)} | "
                     f"{fmt(wf, 2) if ok else '–'} | {fmt(wd, 2) if ok else '–'} | {r.get('note', '')} |")
    if stages:
        lines.append("\ncspbill stages (run manifest `timings_ms`):\n")
        lines.append("| stage | s | share |")
        lines.append("|---|---:|---:|")
        tot = sum(ms for _, ms in stages) or 1
        for name, ms in stages:
            lines.append(f"| {name} | {ms / 1000:.1f} | {100 * ms / tot:.0f} % |")
    if cmp.get("mismatches"):
        lines.append("\nFirst mismatches (customer, currency, cspbill number, DuckDB number, cspbill subtotal, "
                     "DuckDB subtotal):\n")
        for m in cmp["mismatches"]:
            lines.append("    " + " | ".join(m))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int)
    ap.add_argument("--cspbill", required=True)
    ap.add_argument("--floor", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--rss-limit-gb", type=float, default=20.0)
    ap.add_argument("--cspbill-max-rows", type=int, default=0,
                    help="skip cspbill above this many rows (0 = run it at every size)")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces afterwards")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rss_limit = int(args.rss_limit_gb * 2**30)
    os.makedirs(args.results, exist_ok=True)
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    invalid = False
    report = []
    for size in args.sizes:
        print(f"== {size:,} usage rows", flush=True)
        ws = os.path.join(args.work, f"ws-{size}")
        logs = os.path.join(args.work, f"logs-{size}")
        os.makedirs(logs, exist_ok=True)
        stamp = os.path.join(ws, ".generated")
        gen_args = ["generate", "--out", ws, "--customers", "200", "--period", PERIOD, "--seed", "7",
                    "--usage-rows", str(size)]
        results = []
        if not (os.path.exists(stamp) and open(stamp).read() == " ".join(gen_args)):
            shutil.rmtree(ws, ignore_errors=True)
            g = measure("generate", [args.cspbill] + gen_args, logs, rss_limit)
            if g["rc"]:
                print(open(os.path.join(logs, "generate.err")).read())
                return 1
            with open(stamp, "w") as f:
                f.write(" ".join(gen_args))
        inputs = sorted(glob.glob(os.path.join(ws, "inputs", PERIOD, "*")))
        usage = [f for f in inputs if "usage" in os.path.basename(f).lower()]
        n_rules, routed = cross_customer_rules(ws)
        with open(os.path.join(ws, "reference", "customers.csv")) as f:
            customers = sum(1 for _ in f) - 1
        ws_info = {"csv_mb": sum(os.path.getsize(f) for f in usage) / 1e6, "files": len(usage),
                   "customers": customers, "tag_rules": n_rules, "routed": routed, "mem_gb": mem_gb}
        if routed == 0:
            print("  WARNING: the generated tag rules route nothing to another customer", flush=True)
        # warm the page cache the same way for every step
        rows = 0
        for f in inputs:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    if f in usage:
                        rows += chunk.count(b"\n")
        ws_info["usage_rows"] = rows - len(usage)  # minus the headers (records with embedded newlines: none)
        results.append(measure("polars_parse_floor", [args.floor] + usage, logs, rss_limit))
        duck_out = os.path.join(ws, "duckdb_invoices.parquet")
        if os.path.exists(duck_out):
            os.remove(duck_out)
        tmp = os.path.join(ws, "duckdb_tmp")
        results.append(measure("duckdb_close", [sys.executable, os.path.join(here, "duckdb_close.py"),
                                                "--config", os.path.join(ws, "cspbill.toml"), "--period", PERIOD,
                                                "--out", duck_out, "--temp-directory", tmp], logs, rss_limit))
        wh = os.path.join(ws, "wh")
        stages, cmp = [], {"valid": False, "reason": "cspbill not run"}
        run_cspbill = not args.cspbill_max_rows or size <= args.cspbill_max_rows
        cmd = [args.cspbill, "run", "--mode", "close", "--config", os.path.join(ws, "cspbill.toml"),
               "--period", PERIOD, "--warehouse", wh]
        if run_cspbill:
            shutil.rmtree(wh, ignore_errors=True)
            r = measure("cspbill_close", cmd, logs, rss_limit)
            results.append(r)
            manifests = sorted(glob.glob(os.path.join(wh, "_runs", "*.json")))
            if manifests:
                with open(manifests[-1]) as f:
                    stages = [tuple(x) for x in json.load(f).get("timings_ms", [])]
            if r["rc"] == 0 and results[1]["rc"] == 0:
                cmp = compare_invoices(duck_out, wh)
            elif r["rc"]:
                cmp = {"valid": False, "reason": f"cspbill did not finish ({r.get('note', '')})"}
            else:
                cmp = {"valid": False, "reason": "the DuckDB close failed"}
        else:
            results.append({"name": "cspbill_close", "wall_s": float("nan"), "rss_mb": float("nan"), "rc": None,
                            "note": f"not run at this size (--cspbill-max-rows {args.cspbill_max_rows})"})
            cmp = {"valid": False, "skipped": True, "reason": "cspbill not run at this size (--cspbill-max-rows)"}
        if run_cspbill and not cmp.get("valid"):
            invalid = True
            print(f"\n  !!!!!!!! INVALID COMPARISON at {size:,} rows: {cmp.get('reason')} !!!!!!!!\n", flush=True)
        duck_summary = ""
        try:
            duck_summary = open(os.path.join(logs, "duckdb_close.out")).read().strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        md = table(size, ws_info, results, stages, cmp, "polars_parse_floor")
        if duck_summary:
            md += f"\nDuckDB close summary: `{duck_summary}`\n"
        if args.perf and run_cspbill:
            perf_data = os.path.join(logs, "perf.data")
            shutil.rmtree(wh, ignore_errors=True)
            p = subprocess.run(["perf", "record", "-g", "-F", "99", "-o", perf_data, "--"] + cmd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode == 0:
                rep = subprocess.run(f"perf report -i {perf_data} --stdio --no-children --percent-limit 1.5 "
                                     f"--sort dso,symbol -g none 2>/dev/null | grep -v '^$' | head -45",
                                     shell=True, capture_output=True, text=True).stdout
                md += f"\n`perf record -g` of `cspbill run --mode close` (self time by symbol):\n\n```\n{rep}```\n"
            else:
                md += f"\nperf record failed: {p.stderr.strip()[-300:]}\n"
        print("\n" + md, flush=True)
        report.append(md)
        stamp_s = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M")
        with open(os.path.join(args.results, f"compare-{size}.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.results, f"compare-{size}.json"), "w") as f:
            json.dump({"size": size, "when": stamp_s, "workspace": ws_info, "results": results,
                       "cspbill_stages_ms": stages, "comparison": cmp}, f, indent=1, default=str)
        if not args.keep and size >= 10_000_000:
            shutil.rmtree(ws, ignore_errors=True)
    if invalid:
        print("\n!!!!!!!! AT LEAST ONE COMPARISON IS INVALID: DuckDB and cspbill invoices differ (see above) !!!!!!!!")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
