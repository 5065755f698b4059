"""Compares the committed tables of two local warehouse folders as a reader without cspbill sees them:
DuckDB over `ROOT/zone/TABLE/*/*.parquet` with Hive partitioning, rows sorted, columns named in --ignore left out
(run ids differ between runs by design); the published export files byte for byte; and that OTHER's latest
commit is completely published (its `.published` marker, its `_runs/RUN.json`, no lock left).
Exit 0 when identical, 1 with the differences otherwise.

    python scripts/compare_warehouses.py CLEAN_ROOT OTHER_ROOT [--ignore run_id,...]
"""
import argparse
import glob
import json
import os
import sys

import duckdb


def tables(root):
    """zone/TABLE folders holding Hive partitions, skipping internal `_` folders and raw inputs."""
    found = set()
    for path in glob.glob(os.path.join(root, "*", "*", "period=*", "*.parquet")):
        zone, table = os.path.relpath(path, root).split(os.sep)[:2]
        if not zone.startswith("_") and zone != "raw":
            found.add(f"{zone}/{table}")
    return found


def rows(con, root, table, ignore):
    pattern = os.path.join(root, table, "*", "*.parquet")
    cols = [c[0] for c in con.sql(f"describe select * from read_parquet('{pattern}', hive_partitioning=true)").fetchall()]
    keep = ", ".join(f'"{c}"' for c in cols if c not in ignore)
    return con.sql(f"select {keep} from read_parquet('{pattern}', hive_partitioning=true) order by all").fetchall()


def exports(root):
    """The published export files (CSV/XLSX per invoice), path -> bytes."""
    base = os.path.join(root, "marts", "exports")
    out = {}
    for path in glob.glob(os.path.join(base, "**", "*.*"), recursive=True):
        if os.path.isfile(path):
            out[os.path.relpath(path, base)] = open(path, "rb").read()
    return out


def publication_problems(root):
    """The latest commit of every period is published: marker, run manifest, no lock left."""
    problems = []
    for period_dir in glob.glob(os.path.join(root, "_commits", "period=*")):
        versions = sorted(glob.glob(os.path.join(period_dir, "v*.json")))
        if not versions:
            continue
        latest = versions[-1]
        if not os.path.exists(latest[: -len(".json")] + ".published"):
            problems.append(f"{os.path.relpath(latest, root)} is not marked published")
        run_id = json.load(open(latest))["run_id"]
        if not os.path.exists(os.path.join(root, "_runs", f"{run_id}.json")):
            problems.append(f"_runs/{run_id}.json is missing for {os.path.relpath(latest, root)}")
    locks = glob.glob(os.path.join(root, "_locks", "*.lock"))
    if locks:
        problems.append(f"locks left: {locks}")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("clean")
    ap.add_argument("other")
    ap.add_argument("--ignore", default="run_id")
    args = ap.parse_args()
    ignore = set(filter(None, args.ignore.split(",")))
    con = duckdb.connect()
    a, b = tables(args.clean), tables(args.other)
    problems = []
    if a != b:
        problems.append(f"tables differ: only in clean {sorted(a - b)}, only in other {sorted(b - a)}")
    for t in sorted(a & b):
        ra, rb = rows(con, args.clean, t, ignore), rows(con, args.other, t, ignore)
        if ra != rb:
            problems.append(f"{t}: {len(ra)} rows in clean, {len(rb)} in other, first difference "
                            f"{next((x for x in zip(ra, rb) if x[0] != x[1]), None)}")
    ea, eb = exports(args.clean), exports(args.other)
    if ea != eb:
        diff = sorted(k for k in ea.keys() | eb.keys() if ea.get(k) != eb.get(k))
        problems.append(f"exports differ: {diff[:5]}")
    problems.extend(publication_problems(args.other))
    for p in problems:
        print(p, file=sys.stderr)
    print(f"compared {len(a & b)} tables: {'identical' if not problems else f'{len(problems)} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
