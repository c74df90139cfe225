#!/usr/bin/env bash
# Interop check: Triton's Python HTTP client against slimserve's KServe v2
# endpoints. Uses target/debug/slimserve (built by the test command; built
# here if missing) and a venv in /tmp/slimserve-interop-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${SLIMSERVE_INTEROP_VENV:-/tmp/slimserve-interop-venv}
BIN=${SLIMSERVE_BIN:-target/debug/slimserve}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "tritonclient[http]==2.51.0" "numpy==1.26.4" "pillow==13.0.0"

if [ ! -x "$BIN" ]; then
    cargo build --bin slimserve
fi

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/slimserve-interop.XXXXXX.log)
"$BIN" serve --http-addr "127.0.0.1:$PORT" --default-sla-ms 30000 >"$LOG" 2>&1 &
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

if ! "$VENV/bin/python" tests/interop/triton_http.py "127.0.0.1:$PORT"; then
    echo "interop failed; server log:" >&2
    tail -50 "$LOG" >&2
    exit 1
fi
kill -0 "$SERVER" # still up after the malformed requests
rm -f "$LOG"
