#!/usr/bin/env bash
# The official FOCUS validator (focus-validator 2.2.1) in its own Python 3.12 venv, for the FOCUS 1.2 gate.
#
#   scripts/focus-validator.sh setup            makes .ci/tmp/focus-venv (pins: scripts/requirements-focus.txt)
#                                               and prints the path of its `focus-validator`
#   scripts/focus-validator.sh check FILE XML   validates FILE (Parquet) against FOCUS 1.2 with the applicability
#                                               criteria cspbill's dataset meets, writes the JUnit XML to XML and
#                                               fails on any failed rule but the known false positive
#
# Sourced by scripts/test.sh (setup, then `CSPBILL_FOCUS_VALIDATOR` for tests/e2e_focus.rs, which runs `check`).
# Python 3.12 comes from PATH (`python3.12`), else from pyenv (these machines have 3.12 installed by pyenv, not
# enabled), else Debian's apt when it offers one; none of them is an error under CI.
set -euo pipefail

FV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FV_VENV="$FV_ROOT/.ci/tmp/focus-venv"
FV_PINS="$FV_ROOT/scripts/requirements-focus.txt"

# The applicability criteria cspbill's dataset meets (reference/focus.md §6). Not claimed: REGION and
# AVAILABILITY_ZONE (the charge model carries no region), COMMITMENT_DISCOUNT and CAPACITY_RESERVATION
# (commitments are not amortised), MULTIPLE_* (one pricing category, one account type, one sub-account type),
# VIRTUAL_CURRENCY.
FOCUS_CRITERIA="ACCOUNT_NAMING_SUPPORTED,SUB_ACCOUNT_SUPPORTED,USAGE_MEASUREMENT_SUPPORTED,UNIT_PRICING_SUPPORTED,PUBLIC_PRICE_LIST_SUPPORTED,NEGOTIATED_PRICING_SUPPORTED,BILLING_BASED_ON_PROVISIONED_RESOURCES_SUPPORTED,RESOURCE_TYPE_ASSIGNMENT_SUPPORTED,TAGGING_SUPPORTED,PRICING_BILLING_CURRENCY_DIFFERENCES_SUPPORTED"
# Failures that are defects of the validator, not of the data. InvoiceId-C-004-C: its condition is empty, so every
# populated InvoiceId fails (reference/focus.md §6, defect 1). EffectiveCost-C-005-C: "EffectiveCost MUST be 0 when
# ChargeCategory is Purchase and the purchase is intended to cover future eligible charges" is checked on every
# Purchase row (condition `ChargeCategory = 'Purchase'` only), so a licence seat fails; cspbill sets EffectiveCost
# 0 on the commitment purchases the rule is about (reservations, savings plans), and tests/e2e_focus.rs checks that
# per row.
FOCUS_KNOWN_FALSE_POSITIVES="InvoiceId-C-004-C,EffectiveCost-C-005-C"

fv_log() { printf '[focus-validator] %s\n' "$*" >&2; }

# Prints a Python 3.12 interpreter, or nothing.
find_python312() {
  local c v root
  for c in python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root)"
    for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V -r); do
      if "$root/versions/$v/bin/python3" -c 'import venv' 2>/dev/null; then
        echo "$root/versions/$v/bin/python3"; return 0
      fi
    done
  fi
  for root in "$HOME/.pyenv" /root/.pyenv /usr/local/pyenv; do
    for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V -r); do
      echo "$root/versions/$v/bin/python3"; return 0
    done
  done
  if command -v apt-cache >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] \
     && apt-cache policy python3.12 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    fv_log "installing python3.12 from apt"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.12 python3.12-venv >/dev/null && command -v python3.12 && return 0
  fi
  return 0
}

# Makes the venv (once per pin set) and prints the validator's path.
setup_focus_validator() {
  local stamp="$FV_VENV/.requirements.sha256" want py
  want="$(sha256sum "$FV_PINS" | cut -d' ' -f1)"
  if [[ -x "$FV_VENV/bin/focus-validator" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$FV_VENV/bin/focus-validator"; return 0
  fi
  py="$(find_python312)"
  if [[ -z "$py" ]]; then
    fv_log "no Python 3.12 found (PATH, pyenv, apt): focus-validator 2.2.1 needs it"
    return 1
  fi
  fv_log "creating $FV_VENV with $py"
  rm -rf "$FV_VENV"
  "$py" -m venv "$FV_VENV"
  "$FV_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$FV_PINS"
  echo "$want" > "$stamp"
  echo "$FV_VENV/bin/focus-validator"
}

# Validates one Parquet file; the validator exits 0 even when rules fail, so its JUnit XML is what counts.
check_focus_file() {
  local file="$1" xml="$2" validator="${CSPBILL_FOCUS_VALIDATOR:-$FV_VENV/bin/focus-validator}" work site
  file="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
  xml="$(cd "$(dirname "$xml")" && pwd)/$(basename "$xml")"
  work="$(mktemp -d)"
  # It opens `focus_validator/rules/currency_codes.csv` relative to the working folder (its issue #112), and
  # writes its debug log there.
  site="$(dirname "$validator")/../lib/python3.12/site-packages/focus_validator/rules/currency_codes.csv"
  mkdir -p "$work/focus_validator/rules"
  cp "$site" "$work/focus_validator/rules/"
  (cd "$work" && "$validator" --data-file "$file" --validate-version 1.2 --block-download \
      --applicability-criteria "$FOCUS_CRITERIA" --output-type unittest --output-destination "$xml" >"$work/console.txt" 2>&1) || {
    fv_log "the validator itself failed:"; tail -n 30 "$work/console.txt" >&2; rm -rf "$work"; return 1; }
  rm -rf "$work"
  "$(dirname "$validator")/python" "$FV_ROOT/scripts/focus_junit.py" "$xml" "$FOCUS_KNOWN_FALSE_POSITIVES"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    setup) setup_focus_validator ;;
    check) check_focus_file "$2" "$3" ;;
    *) echo "usage: scripts/focus-validator.sh setup | check FILE XML" >&2; exit 2 ;;
  esac
fi
