#!/usr/bin/env bash
# Fault injection on the real binary: `cspbill run` on a billing workspace is SIGKILLed at random points N times
# into one local warehouse while readers poll it (one parses every visible Hive file; one reads the period's file
# list `_commits/period=P/current.csv` and checks every listed data file against its listed SHA-256); then a last
# run completes and its tables must equal a clean run's (DuckDB, rows sorted, run ids left out, exports byte for
# byte, the last commit completely published). Then close runs are killed inside their publish window (right
# after the commit pointer appears), and the next `run --mode close`, which finds the period closed, must still
# complete the publication. Called by `scripts/fault-inject.sh --binary [ITERATIONS] [SEED]`.
#
# Environment: CSPBILL_FAULT_CONFIG (default sample_data/cspbill.toml), CSPBILL_FAULT_PERIOD (default 2025-06),
# CSPBILL_FAULT_ARGS (extra arguments to `cspbill run`, e.g. `--mode close`), CSPBILL_FAULT_CLOSE_KILLS (default 3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/servers.sh"
setup_python

N="${1:-50}"
SEED="${2:-$RANDOM}"
RANDOM="$SEED"
CONFIG="${CSPBILL_FAULT_CONFIG:-sample_data/cspbill.toml}"
PERIOD="${CSPBILL_FAULT_PERIOD:-2025-06}"
WORK="$TMP/fault-binary"
rm -rf "$WORK"; mkdir -p "$WORK"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --quiet --bin cspbill
BIN="$CARGO_TARGET_DIR/debug/cspbill"
# shellcheck disable=SC2086
run() { exec "$BIN" run --config "$CONFIG" --period "$PERIOD" --warehouse "$1" ${CSPBILL_FAULT_ARGS:-}; }

echo "fault injection on \`cspbill run\`: $N kills, seed $SEED"
start=$(date +%s%N)
( run "$WORK/clean" ) > "$WORK/clean.log" 2>&1 || { echo "the clean run failed:"; tail -n 20 "$WORK/clean.log"; exit 1; }
full_ms=$(( ( $(date +%s%N) - start ) / 1000000 ))
echo "a clean run takes ${full_ms} ms"

# The reader: parses every visible Hive file until told to stop; any failure is recorded.
"$PY" - "$WORK/wh" "$WORK/stop" "$WORK/reader.err" <<'PY' &
import glob, os, sys, time
import pyarrow.parquet as pq
root, stop, err = sys.argv[1:4]
n = 0
while not os.path.exists(stop):
    for path in glob.glob(os.path.join(root, "*", "*", "period=*", "*.parquet")):
        try:
            pq.read_table(path)
            n += 1
        except FileNotFoundError:
            pass  # a table the new run no longer has, removed between listing and reading
        except Exception as e:  # a partial or corrupt file
            open(err, "a").write(f"{path}: {e}\n")
    time.sleep(0.01)
print(f"reader: {n} files parsed whole")
PY
reader=$!

# The file-list reader: one consistent version per read, every listed file whole and as listed.
"$PY" - "$WORK/wh" "$WORK/stop" "$WORK/reader.err" "$PERIOD" <<'PY' &
import csv, glob, hashlib, os, sys, time
root, stop, err, period = sys.argv[1:5]
lists = n = 0
while not os.path.exists(stop):
    path = os.path.join(root, "_commits", f"period={period}", "current.csv")
    try:
        rows = list(csv.DictReader(open(path, newline="")))
    except FileNotFoundError:
        time.sleep(0.01); continue
    if len({r["version"] for r in rows}) > 1:
        open(err, "a").write(f"{path}: rows of several versions\n")
    for r in rows:
        try:
            data = open(os.path.join(root, r["data"]), "rb").read()
        except FileNotFoundError:
            continue  # collected once two newer commits exist: a slow reader re-reads the list
        if hashlib.sha256(data).hexdigest() != r["sha256"]:
            open(err, "a").write(f"{r['data']}: bytes differ from the list\n")
        n += 1
    lists += 1
    time.sleep(0.01)
print(f"list reader: {lists} lists, {n} listed files checked")
PY
list_reader=$!

killed=0
for i in $(seq 1 "$N"); do
  run "$WORK/wh" > "$WORK/run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v r="$RANDOM" -v full="$full_ms" 'BEGIN { printf "%.3f", (r / 32767.0) * full * 1.2 / 1000 }')"
  if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
  wait "$pid" 2>/dev/null || true
done
( run "$WORK/wh" ) > "$WORK/final.log" 2>&1 || { echo "the run after the kills failed:"; tail -n 20 "$WORK/final.log"; touch "$WORK/stop"; exit 1; }
touch "$WORK/stop"; wait "$reader"; wait "$list_reader"
echo "$killed of $N runs killed mid-way"
if [[ -s "$WORK/reader.err" ]]; then echo "a reader saw a partial file:"; cat "$WORK/reader.err"; exit 1; fi
"$PY" "$ROOT/scripts/compare_warehouses.py" "$WORK/clean" "$WORK/wh"

# Close runs killed in the publish window: as soon as the commit pointer exists, SIGKILL. The next close run
# finds the period closed and must still complete the publication (tables, exports, manifest, marker, lock).
close() { exec "$BIN" run --config "$CONFIG" --period "$PERIOD" --warehouse "$1" --mode close; }
( close "$WORK/clean-close" ) > "$WORK/clean-close.log" 2>&1 || { echo "the clean close failed:"; tail -n 20 "$WORK/clean-close.log"; exit 1; }
CLOSE_KILLS="${CSPBILL_FAULT_CLOSE_KILLS:-3}"
in_window=0
for i in $(seq 1 "$CLOSE_KILLS"); do
  wh="$WORK/close-$i"
  close "$wh" > "$WORK/close.log" 2>&1 &
  pid=$!
  # Poll for the pointer, then kill after a random 0-20 ms: inside the publish window.
  while kill -0 "$pid" 2>/dev/null && ! compgen -G "$wh/_commits/period=$PERIOD/v*.json" > /dev/null; do sleep 0.002; done
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", (r / 32767.0) * 0.02 }')"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    if ! compgen -G "$wh/_commits/period=$PERIOD/v*.published" > /dev/null; then in_window=$((in_window + 1)); fi
  else
    wait "$pid" 2>/dev/null || true
  fi
  ( close "$wh" ) > "$WORK/close-again.log" 2>&1 || { echo "the close after a kill failed:"; tail -n 20 "$WORK/close-again.log"; exit 1; }
  "$PY" "$ROOT/scripts/compare_warehouses.py" "$WORK/clean-close" "$wh" || { echo "close run $i killed in its publish window was not repaired"; exit 1; }
done
echo "$in_window of $CLOSE_KILLS close runs killed inside their publish window, each repaired by the next close"
