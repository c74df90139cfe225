#!/usr/bin/env bash
# Interop check: Triton's own Python clients (tritonclient, HTTP and gRPC)
# against slimserve's Open Inference Protocol endpoints, and the gRPC health
# service. Uses target/debug/slimserve (built by the test command; built here
# if missing) and a venv in /tmp/slimserve-interop-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${SLIMSERVE_INTEROP_VENV:-/tmp/slimserve-interop-venv}
BIN=${SLIMSERVE_BIN:-target/debug/slimserve}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

if [ ! -x "$BIN" ]; then
    cargo build --bin slimserve
fi

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
GRPC_PORT=$(free_port)
LOG=$(mktemp /tmp/slimserve-interop.XXXXXX.log)
"$BIN" serve --http-addr "127.0.0.1:$PORT" --grpc-addr "127.0.0.1:$GRPC_PORT" \
    --default-sla-ms 30000 >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    if "$VENV/bin/python" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=2).status == 200 else 1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "slimserve exited early; log:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.5
done

for t in "triton_http.py 127.0.0.1:$PORT" "triton_grpc.py 127.0.0.1:$PORT 127.0.0.1:$GRPC_PORT"; do
    # shellcheck disable=SC2086
    if ! (cd tests/interop && "$VENV/bin/python" $t); then
        echo "interop failed ($t); server log:" >&2
        tail -50 "$LOG" >&2
        exit 1
    fi
done
kill -0 "$SERVER" # still up after the malformed requests
rm -f "$LOG"
