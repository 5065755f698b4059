#!/usr/bin/env bash
# Fault injection on the real binary: `cspbill run` on a billing workspace is SIGKILLed at random points N times
# into one local warehouse while a reader parses every visible Hive file; then a last run completes and its
# tables must equal a clean run's (DuckDB, rows sorted, run ids left out). Called by `scripts/fault-inject.sh
# --binary [ITERATIONS] [SEED]`.
#
# Environment: CSPBILL_FAULT_CONFIG (default sample_data/cspbill.toml), CSPBILL_FAULT_PERIOD (default 2025-06),
# CSPBILL_FAULT_ARGS (extra arguments to `cspbill run`, e.g. `--mode close`).
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

killed=0
for i in $(seq 1 "$N"); do
  run "$WORK/wh" > "$WORK/run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v r="$RANDOM" -v full="$full_ms" 'BEGIN { printf "%.3f", (r / 32767.0) * full * 1.2 / 1000 }')"
  if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
  wait "$pid" 2>/dev/null || true
done
( run "$WORK/wh" ) > "$WORK/final.log" 2>&1 || { echo "the run after the kills failed:"; tail -n 20 "$WORK/final.log"; touch "$WORK/stop"; exit 1; }
touch "$WORK/stop"; wait "$reader"
echo "$killed of $N runs killed mid-way"
if [[ -s "$WORK/reader.err" ]]; then echo "a reader saw a partial file:"; cat "$WORK/reader.err"; exit 1; fi
"$PY" "$ROOT/scripts/compare_warehouses.py" "$WORK/clean" "$WORK/wh"
