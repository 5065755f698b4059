#!/usr/bin/env bash
# The month benchmark: a synthetic distributor month of N daily-usage rows (default 10,000,000) through
# `cspbill ingest`, `cspbill allocate` and `cspbill rate`, each timed with its peak RSS, beside two floors: the time
# Polars takes merely to parse the same CSV as text (benches/parse_floor.rs) and DuckDB reading and summing it.
#
#   benches/month.sh [ROWS] [WORKDIR]      e.g. benches/month.sh 1000000 /tmp/cspbill-bench
#
# Builds in release mode (a long first build). Needs /usr/bin/time; DuckDB from the test venv if present.
# Prints one line per step: step, rows, wall seconds, peak RSS MB. Not a test: figures go to benches/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROWS="${1:-10000000}"
WORK="${2:-/tmp/cspbill-bench-$ROWS}"
PERIOD=2025-06
cd "$ROOT"
cargo build --release --locked --bin cspbill --bench parse_floor >/dev/null 2>&1 || cargo build --release --locked --bin cspbill
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cspbill"
FLOOR="$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/parse_floor-* 2>/dev/null | grep -v '\.d$' | head -1 || true)"

measure() { # name, command...
  local name="$1"; shift
  local out; out="$(mktemp)"
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null 2>"$out.err" || { echo "$name failed:"; cat "$out.err"; return 1; }
  read -r secs kb < <(tail -1 "$out")
  printf '%-12s rows=%-10s wall_s=%-8s peak_rss_mb=%s\n' "$name" "$ROWS" "$secs" "$((kb / 1024))"
}

if [[ ! -f "$WORK/cspbill.toml" ]]; then
  rm -rf "$WORK"
  measure generate "$BIN" generate --out "$WORK" --customers 200 --period "$PERIOD" --seed 7 --usage-rows "$ROWS"
fi
USAGE="$(ls "$WORK/inputs/$PERIOD/"*Usage*.csv | head -1)"
echo "input: $(ls "$WORK/inputs/$PERIOD/"*Usage*.csv | wc -l) usage file(s), $(du -ch "$WORK/inputs/$PERIOD/"*Usage*.csv | tail -1 | cut -f1)"
[[ -n "$FLOOR" ]] && for f in "$WORK/inputs/$PERIOD/"*Usage*.csv; do measure parse_floor "$FLOOR" "$f"; done
PY="$ROOT/.ci/tmp/venv/bin/python"
if [[ -x "$PY" ]] && "$PY" -c 'import duckdb' 2>/dev/null; then
  measure duckdb_sum "$PY" -c "import duckdb,sys; print(duckdb.sql(\"select count(*), sum(BillingPreTaxTotal::DECIMAL(38,18)) from read_csv('$WORK/inputs/$PERIOD/*Usage*.csv', all_varchar=true, header=true)\").fetchall())"
fi
for stage in ingest allocate rate; do
  rm -rf "$WORK/warehouse"
  measure "$stage" "$BIN" "$stage" --config "$WORK/cspbill.toml" --period "$PERIOD" --warehouse "$WORK/warehouse"
done
