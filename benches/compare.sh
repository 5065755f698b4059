#!/usr/bin/env bash
# The side-by-side benchmark of issue 10, one command from a fresh clone: cspbill's month-end close against the
# same job written plainly in DuckDB SQL (benches/duckdb_close.py) and the Polars parse floor, on the same
# generated months, with a check that both sides' invoice subtotals agree to the cent.
#
#   benches/compare.sh                      1M and 10M usage rows
#   benches/compare.sh --with-30m           … and 30M
#   benches/compare.sh --smoke              20,000 rows only (seconds; the agreement check still counts)
#   benches/compare.sh --rows 20000 --rows 1000000      explicit sizes (also: benches/compare.sh 1000000)
#   options: --perf (perf record -g of the cspbill run), --cspbill-max-rows N (skip cspbill above N rows),
#            --rss-limit-gb G (kill any measured step above G GB, default 20), --work DIR, --keep
#
# Makes its own Python venv (pinned DuckDB) in .ci/tmp/bench-venv, builds cspbill and the floor in release
# (`cargo build --release --locked`), generates the workspaces in $CSPBILL_BENCH_DIR (default /tmp/cspbill-compare;
# `--customers 200 --period 2025-06 --seed 7`), runs each step under /usr/bin/time -v and writes a markdown table
# per size into benches/results/ (printed too). Exit status 3 when any comparison is invalid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIZES=()
EXTRA=()
WORK="${CSPBILL_BENCH_DIR:-/tmp/cspbill-compare}"
WITH30=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-30m) WITH30=1 ;;
    --smoke) SIZES+=(20000) ;;
    --rows) SIZES+=("$2"); shift ;;
    --rows=*) SIZES+=("${1#--rows=}") ;;
    --work) WORK="$2"; shift ;;
    --perf|--keep) EXTRA+=("$1") ;;
    --cspbill-max-rows|--rss-limit-gb) EXTRA+=("$1" "$2"); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    [0-9]*) SIZES+=("$1") ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#SIZES[@]} -eq 0 ]] && SIZES=(1000000 10000000)
[[ $WITH30 == 1 ]] && SIZES+=(30000000)

# Tools: /usr/bin/time (apt `time`), perf only with --perf.
if [[ ! -x /usr/bin/time ]]; then
  echo "installing /usr/bin/time (apt-get install time)" >&2
  apt-get install -y -qq time >/dev/null || { echo "need /usr/bin/time: apt-get install time" >&2; exit 2; }
fi
if [[ " ${EXTRA[*]-} " == *" --perf "* ]] && ! command -v perf >/dev/null; then
  apt-get install -y -qq linux-perf >/dev/null 2>&1 || echo "perf not installable: the profile step will be skipped" >&2
fi

# Python venv with a pinned DuckDB (the same version as the test tools).
VENV="$ROOT/.ci/tmp/bench-venv"
DUCKDB_VERSION="$(sed -n 's/^duckdb==//p' scripts/requirements-ci.txt)"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "duckdb==${DUCKDB_VERSION:-2.0.0}"
fi

# Release build of cspbill and of the parse floor.
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "building cspbill and benches/parse_floor.rs in release (a long first build)…" >&2
cargo build --release --locked --bin cspbill --bench parse_floor >&2
BIN="$TARGET/release/cspbill"
FLOOR="$(ls -t "$TARGET"/release/deps/parse_floor-* | grep -v '\.d$' | head -1)"

mkdir -p "$WORK"
exec "$VENV/bin/python" "$ROOT/benches/compare.py" --cspbill "$BIN" --floor "$FLOOR" --work "$WORK" \
  --results "$ROOT/benches/results" "${EXTRA[@]+"${EXTRA[@]}"}" "${SIZES[@]}"
