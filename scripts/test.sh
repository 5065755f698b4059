#!/usr/bin/env bash
# The one command that runs every test of cspbill: installs the test tools (a pinned Python venv in .ci/tmp/venv,
# Azurite via npm), starts local S3 (moto) and Azure Blob (Azurite) servers on free loopback ports, exports their
# endpoints (`CSPBILL_TEST_S3`, `CSPBILL_TEST_AZURITE`, `CSPBILL_PYTHON`),
# runs `cargo test --workspace` and stops the servers on exit. Extra arguments go to `cargo test`.
#
#   scripts/test.sh                      everything
#   scripts/test.sh --test storage_warehouse
#   CSPBILL_TEST_SERVERS=0 scripts/test.sh   without the servers (local-folder warehouse only; not allowed with CI=true)
#
# It also installs the official FOCUS validator (scripts/focus-validator.sh: a Python 3.12 venv in
# .ci/tmp/focus-venv) and exports `CSPBILL_FOCUS_VALIDATOR` for tests/e2e_focus.rs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TMP="$ROOT/.ci/tmp"
mkdir -p "$TMP"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR=never

# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

if [[ "${CSPBILL_TEST_SERVERS:-1}" != 0 ]]; then
  trap stop_servers EXIT
  start
  # shellcheck disable=SC1090
  source "$ENV_FILE"
elif [[ "${CI:-}" == true ]]; then
  echo "CSPBILL_TEST_SERVERS=0 is not allowed under CI=true: CI tests every store" >&2
  exit 2
fi

# The official FOCUS validator (focus-validator 2.2.1 in a Python 3.12 venv) for tests/e2e_focus.rs.
# shellcheck source=scripts/focus-validator.sh
source "$ROOT/scripts/focus-validator.sh"
if FOCUS_VALIDATOR="$(setup_focus_validator)"; then
  export CSPBILL_FOCUS_VALIDATOR="$FOCUS_VALIDATOR"
elif [[ "${CI:-}" == true ]]; then
  echo "could not install focus-validator 2.2.1 (needs Python 3.12): CI runs the FOCUS gate" >&2
  exit 2
else
  echo "warning: focus-validator not installed; tests/e2e_focus.rs skips the official FOCUS check" >&2
fi

# Debian packages the tests read outputs with: chromium (the close report, tests/close_report.rs, and the HTML
# invoices, tests/e2e_documents.rs) and poppler-utils (pdftotext, pdftoppm, pdfinfo for the PDF invoices).
# Installed once, quietly; under CI=true a missing tool fails the run.
if ! command -v pdftotext >/dev/null || ! command -v pdftoppm >/dev/null || ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    if ! (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils chromium \
          || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils chromium; }) >"$TMP/apt-packages.log" 2>&1; then
      echo "could not install poppler-utils and chromium (see $TMP/apt-packages.log)" >&2
      if [[ "${CI:-}" == true ]]; then exit 2; fi
    fi
  elif [[ "${CI:-}" == true ]]; then
    echo "poppler-utils and chromium are missing and cannot be installed here (needs apt-get as root)" >&2
    exit 2
  fi
fi
export CSPBILL_CHROMIUM="${CSPBILL_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}"
setup_node   # playwright-core (scripts/package-lock.json), also when the servers are not started

LOG="$TMP/cargo-test.log"
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$LOG" || status=$?

# Fault injection on the real binary: SIGKILL `cspbill run` on sample_data at 20 random points, then a clean
# finish must equal an uninterrupted run and no reader may ever see a partial file (more: scripts/fault-inject.sh).
if [[ $# -eq 0 ]]; then
  if ! bash "$ROOT/scripts/fault-inject.sh" --binary "${CSPBILL_FAULT_KILLS:-20}" 2>&1 | tee "$TMP/fault-binary.log"; then
    echo "fault injection on the binary FAILED (see $TMP/fault-binary.log)"; status=1
  fi
fi

# The summary: one line per test binary, then the total, after the servers' own messages.
if [[ "${CSPBILL_TEST_SERVERS:-1}" != 0 ]]; then stop_servers; trap - EXIT; fi
echo
echo "== summary"
grep -E '^test result:|^\s+Running |^\s+Doc-tests ' "$LOG" | paste - - | sed -E 's/^\s+(Running|Doc-tests) //' || true
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) ig += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, ig }' "$LOG" | tee "$TMP/summary.txt"
exit "$status"
