#!/usr/bin/env bash
# The sharded run against the single-machine run on the same month, on the same machine (issue 20): it measures
# the sharding's overhead and the per-shard figures, not a speed-up (2 cores here). Writes
# benches/results/shards-<rows>.md (printed too) with every phase's wall time, CPU time and peak RSS, checks that
# the sharded commit published byte for byte what `cspbill run` published, and estimates from the measured
# per-shard figures how long a 300M-row month would take on N workers.
#
#   benches/shards.sh                       1M usage rows, each usage file split into 8 (18 input files)
#   benches/shards.sh --rows 3000000 --split 16 --buckets 8
#   options: --buckets B (`[run] buckets = B` in both runs' config: the sharded run adds a stage and B reduces,
#            the per-invoice tail per bucket of customers; default 1), --work DIR (default /tmp/cspbill-shards), --keep (keep the warehouses), --parallel P (map shards
#            run P at a time; default 1, so that each map's figures are its own)
#
# The month is `cspbill generate --customers 200 --period 2025-06 --seed 7 --usage-rows N` (as benches/compare.sh);
# its two usage CSVs are split into K files of whole records each (Partner Center delivers a large month as many
# files or v2 blobs), so that there are map shards to run. Local-folder warehouses: the object store's transfer
# time is not in these figures. Needs /usr/bin/time (apt `time`) and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS=1000000
SPLIT=8
WORK="${CSPBILL_BENCH_DIR:-/tmp/cspbill-shards}"
KEEP=0
PAR=1
BUCKETS=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) ROWS="$2"; shift ;;
    --split) SPLIT="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --parallel) PAR="$2"; shift ;;
    --buckets) BUCKETS="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ ! -x /usr/bin/time ]]; then
  apt-get install -y -qq time >/dev/null || { echo "need /usr/bin/time: apt-get install time" >&2; exit 2; }
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/cspbill"
mkdir -p "$WORK" benches/results
GEN="$WORK/gen-$ROWS"
WS="$WORK/ws-$ROWS-split$SPLIT"
if [[ ! -f "$GEN/cspbill.toml" ]]; then
  rm -rf "$GEN"
  "$BIN" generate --out "$GEN" --customers 200 --period 2025-06 --seed 7 --usage-rows "$ROWS" >/dev/null
fi
if [[ ! -f "$WS/.split-done" ]]; then
  rm -rf "$WS"
  mkdir -p "$WS/inputs/2025-06"
  cp -r "$GEN/reference" "$GEN/cspbill.toml" "$WS/"
  python3 - "$GEN/inputs/2025-06" "$WS/inputs/2025-06" "$SPLIT" <<'EOF'
import os, sys
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if "Usage" not in name:
        os.link(path, os.path.join(dst, name)) if os.stat(path).st_dev == os.stat(dst).st_dev else __import__("shutil").copy(path, dst)
        continue
    # Whole records: the generated CSV has no newline inside a quoted field (cspbill's pre-scan would reject a
    # ragged record, so a wrong split cannot pass unnoticed).
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.readline()
        stem, ext = os.path.splitext(name)
        for i in range(k):
            target = (i + 1) * size // k
            with open(os.path.join(dst, f"{stem}_part{i:02d}{ext}"), "wb") as out:
                out.write(header)
                while f.tell() < target or i == k - 1:
                    chunk = f.readline()
                    if not chunk:
                        break
                    out.write(chunk)
EOF
  touch "$WS/.split-done"
fi
FILES=$(find "$WS/inputs/2025-06" -type f | wc -l)
BYTES=$(du -sb "$WS/inputs/2025-06" | cut -f1)
WH1="$WORK/wh-single"; WH2="$WORK/wh-sharded"
rm -rf "$WH1" "$WH2"
LOG="$WORK/log"; mkdir -p "$LOG"

# Runs a step under /usr/bin/time -v: appends "name wall_s cpu_s rss_mb" to $LOG/steps.
step() {
  local name="$1"; shift
  /usr/bin/time -v -o "$LOG/$name.time" "$@" >"$LOG/$name.out" 2>"$LOG/$name.err" || { echo "step $name failed:" >&2; tail -20 "$LOG/$name.err" >&2; exit 1; }
  python3 - "$LOG/$name.time" "$name" >>"$LOG/steps" <<'EOF'
import sys, re
t = open(sys.argv[1]).read()
def f(k):
    return re.search(re.escape(k) + r": (.*)", t).group(1).strip()
w = f("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w)))
cpu = float(f("User time (seconds)")) + float(f("System time (seconds)"))
print(sys.argv[2], f"{wall:.2f}", f"{cpu:.2f}", int(f("Maximum resident set size (kbytes)")) // 1024)
EOF
}
: >"$LOG/steps"
CFG="$WS/cspbill.toml"
if [[ "$BUCKETS" != 1 ]]; then
  CFG="$WS/cspbill.buckets$BUCKETS.toml"
  { cat "$WS/cspbill.toml"; printf '\n[run]\nbuckets = %s\n' "$BUCKETS"; } > "$CFG"
fi
step single "$BIN" run --config "$CFG" --period 2025-06 --warehouse "$WH1"
# What the single run published (every committed file's SHA-256 and every raw file's size, and its stage timings),
# kept aside so that its warehouse can go before the sharded run: the disk holds one month's warehouse at a time.
python3 - "$WH1" >"$LOG/single.json" <<'EOF2'
import glob, json, os, sys
wh = sys.argv[1]
m = json.load(open(sorted(glob.glob(os.path.join(wh, "_runs", "*.json")))[-1]))
files = {o["path"]: o["sha256"] for o in m["outputs"]}
for root, _, names in os.walk(os.path.join(wh, "raw")):
    for n in names:
        files[os.path.relpath(os.path.join(root, n), wh)] = os.path.getsize(os.path.join(root, n))
json.dump({"files": files, "timings_ms": m["timings_ms"]}, sys.stdout)
EOF2
if [[ "$KEEP" != 1 ]]; then rm -rf "$WH1"; fi
step plan "$BIN" shard plan --config "$CFG" --period 2025-06 --warehouse "$WH2"
ID=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["plan_id"])' "$LOG/plan.out")
N=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["files"])' "$LOG/plan.out")
export -f step; export BIN CFG WH2 ID LOG
seq 0 $((N - 1)) | xargs -P "$PAR" -I{} bash -c 'step map-{} "$BIN" shard map --config "$CFG" --plan "$ID" --file {} --warehouse "$WH2"'
if [[ "$BUCKETS" != 1 ]]; then
  step stage "$BIN" shard stage --config "$CFG" --plan "$ID" --warehouse "$WH2"
  seq 0 $((BUCKETS - 1)) | xargs -P "$PAR" -I{} bash -c 'step reduce-{} "$BIN" shard reduce --config "$CFG" --plan "$ID" --bucket {} --warehouse "$WH2"'
fi
step commit "$BIN" shard commit --config "$CFG" --plan "$ID" --warehouse "$WH2"

SUFFIX=""; [[ "$BUCKETS" != 1 ]] && SUFFIX="-buckets$BUCKETS"
python3 - "$LOG/steps" "$LOG/single.json" "$WH2" "$ROWS" "$FILES" "$BYTES" "$SPLIT" "$PAR" "$(git rev-parse --short HEAD)" "$BUCKETS" >"benches/results/shards-$ROWS$SUFFIX.md" <<'EOF'
import glob, json, os, sys
steps_file, single_json, wh2, rows, files, nbytes, split, par, rev, buckets = sys.argv[1:]
rows, files, nbytes, par, buckets = int(rows), int(files), int(nbytes), int(par), int(buckets)
steps = {}
for line in open(steps_file):
    n, w, c, r = line.split()
    steps[n] = (float(w), float(c), int(r))
def committed(wh):
    m = json.load(open(sorted(glob.glob(os.path.join(wh, "_runs", "*.json")))[-1]))
    files = {o["path"]: o["sha256"] for o in m["outputs"]}
    for root, _, names in os.walk(os.path.join(wh, "raw")):
        for n in names:
            files[os.path.relpath(os.path.join(root, n), wh)] = os.path.getsize(os.path.join(root, n))
    return files, m
s1 = json.load(open(single_json))
f1, t1 = s1["files"], dict(s1["timings_ms"])
f2, m2 = committed(wh2)
t2 = dict(m2["timings_ms"])
differ = sorted(k for k in set(f1) | set(f2) if f1.get(k) != f2.get(k))
maps = [v for k, v in steps.items() if k.startswith("map-")]
reduces = [v for k, v in steps.items() if k.startswith("reduce-")]
single = steps["single"]
plan, commit = steps["plan"], steps["commit"]
stage = steps.get("stage", (0.0, 0.0, 0))
map_sum, map_cpu = sum(m[0] for m in maps), sum(m[1] for m in maps)
red_sum, red_cpu = sum(r[0] for r in reduces), sum(r[1] for r in reduces)
serial = plan[0] + stage[0] + commit[0]
one_at_a_time = serial + map_sum + red_sum
cpu_all = plan[1] + map_cpu + stage[1] + red_cpu + commit[1]
print(f"# Sharded run vs single-machine run, {rows:,} usage rows, {buckets} bucket(s) ({rev})\n")
print(f"Machine: 2 cores, 24 GiB; one run of `benches/shards.sh --rows {rows} --split {split} --buckets {buckets} --parallel {par}`; "
      f"local-folder warehouses. {files} input files ({nbytes / 1e9:.2f} GB of CSV): the two usage CSVs of the generated month "
      f"each split into {split}, and the two invoice reconciliation files. Both runs use `[run] buckets = {buckets}`.\n")
print(f"**Identical output:** {'yes' if not differ else 'NO'}: {len(f1)} published files (every committed file and every raw file) compared"
      + ("" if not differ else f"; differing: {differ[:10]}") + ".\n")
print("| step | wall s | CPU s | peak RSS MB |\n|---|---:|---:|---:|")
print(f"| `cspbill run` (single machine) | {single[0]:.1f} | {single[1]:.1f} | {single[2]:,} |")
print(f"| `shard plan` (hash + upload the inputs) | {plan[0]:.1f} | {plan[1]:.1f} | {plan[2]:,} |")
print(f"| `shard map` × {len(maps)}, sum | {map_sum:.1f} | {map_cpu:.1f} | max {max(m[2] for m in maps):,} |")
print(f"| `shard map`, each: min / median / max wall | {min(m[0] for m in maps):.1f} / {sorted(m[0] for m in maps)[len(maps)//2]:.1f} / {max(m[0] for m in maps):.1f} | | |")
if reduces:
    print(f"| `shard stage` | {stage[0]:.1f} | {stage[1]:.1f} | {stage[2]:,} |")
    print(f"| `shard reduce` × {len(reduces)}, sum | {red_sum:.1f} | {red_cpu:.1f} | max {max(r[2] for r in reduces):,} |")
    print(f"| `shard reduce`, each: min / median / max wall | {min(r[0] for r in reduces):.1f} / {sorted(r[0] for r in reduces)[len(reduces)//2]:.1f} / {max(r[0] for r in reduces):.1f} | | |")
print(f"| `shard commit` | {commit[0]:.1f} | {commit[1]:.1f} | {commit[2]:,} |")
print(f"| sharded, every task one after another | {one_at_a_time:.1f} | {cpu_all:.1f} | |")
print(f"\n**Overhead:** run one task at a time on this machine, the sharded run took {one_at_a_time / single[0]:.2f}× the single "
      f"run's wall time and {cpu_all / single[1]:.2f}× its CPU time. What stays on one machine (plan, "
      + ("stage, " if reduces else "") + f"commit) is {serial:.1f} s, {serial / single[0]:.0%} of the single run.\n")
print("Stage timings (s, from the manifests: `timings_ms`), the single run's and the commit's:\n")
print("| stage | single run | shard commit |\n|---|---:|---:|")
for key in t1:
    print(f"| {key} | {t1[key] / 1000:.1f} | {t2.get(key, 0) / 1000:.1f} |")
print()
R = 300_000_000
k = R / rows
print(f"## Estimate for a {R // 1_000_000}M-row month on N workers\n")
print(f"Linear in rows from these figures (issue 10 measured cspbill's time growing 8.0× for 9.7× the rows from 1M to 10M), "
      f"scale factor {k:.0f}; the inputs come as at least N files of similar size"
      + (f" and at least N buckets of similar size (this run had {buckets}; the buckets' sizes follow the customers')" if reduces else "")
      + "; each worker as this machine; the object store's transfer time is not included:\n")
formula = f"T(N) = (plan {plan[0]:.1f} s" + (f" + stage {stage[0]:.1f} s" if reduces else "") + f" + commit {commit[0]:.1f} s) × {k:.0f} + (Σ maps {map_sum:.1f} s" + (f" + Σ reduces {red_sum:.1f} s" if reduces else "") + f") × {k:.0f} / N"
print(formula + "\n")
print("| N workers | serial part | parallel part | total | single machine |\n|---:|---:|---:|---:|---:|")
for n in (1, 2, 8, 32, 128):
    fixed = serial * k
    par_part = (map_sum + red_sum) * k / n
    print(f"| {n} | {fixed / 3600:.2f} h | {par_part / 3600:.2f} h | {(fixed + par_part) / 3600:.2f} h | {single[0] * k / 3600:.2f} h |")
print(f"\nThe serial part is the floor: {serial * k / 3600:.2f} h however many workers"
      + (", against a single machine's " + f"{single[0] * k / 3600:.2f} h." if True else "."))
EOF
cat "benches/results/shards-$ROWS$SUFFIX.md"
if [[ "$KEEP" != 1 ]]; then rm -rf "$WH1" "$WH2"; fi
