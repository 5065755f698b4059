#!/usr/bin/env bash
# Fault injection anyone can run: SIGKILLs a writer at random points of a run, many times, on a local folder and
# (with the servers) on S3 and Azure; checks that no reader ever sees a partial period and that the final output
# equals a clean run's. See tests/storage_fault.rs.
#
#   scripts/fault-inject.sh [ITERATIONS] [SEED]          the warehouse writer (default 200 kills per store)
#   scripts/fault-inject.sh --binary [ITERATIONS] [SEED]  the real `cspbill run` on sample_data/ (local folder)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

if [[ "${1:-}" == --binary ]]; then
  shift
  exec bash "$ROOT/scripts/fault-inject-binary.sh" "$@"
fi

export CSPBILL_FAULT_ITERATIONS="${1:-200}"
export CSPBILL_FAULT_SEED="${2:-$RANDOM}"
echo "fault injection: $CSPBILL_FAULT_ITERATIONS kills per store, seed $CSPBILL_FAULT_SEED (re-run with the same seed to reproduce)"
bash "$ROOT/scripts/test.sh" --test storage_fault -- --nocapture
