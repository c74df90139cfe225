#!/usr/bin/env bash
# Soak slimserve on loopback: open-loop load at FACTOR x the full variant's
# capacity, mixed budgets, hostile bodies and slow clients, for DURATION
# seconds, with the server under a 1024 open-file limit; then a second run
# with SIGTERM at SIGTERM_AT seconds (every accepted request answered, new
# ones refused, exit 0 within the shutdown timeout) and a restart timed to
# ready. Results: $OUT/run1.json, $OUT/run2.json, $OUT/summary.txt.
#
#   RATE=...        legitimate req/s (default: FACTOR x measured capacity)
#   FACTOR=3 DURATION=600 DURATION2=120 SIGTERM_AT=60 OUT=/tmp/soak PORT=18180
#   SLIMSERVE_BIN=... SOAK_BIN=...  (default: release builds in target/)
set -euo pipefail
cd "$(dirname "$0")/../.."
FACTOR=${FACTOR:-3}
DURATION=${DURATION:-600}
DURATION2=${DURATION2:-120}
SIGTERM_AT=${SIGTERM_AT:-60}
OUT=${OUT:-/tmp/soak}
PORT=${PORT:-18180}
GPORT=$((PORT + 1))
mkdir -p "$OUT"
if [ -z "${SLIMSERVE_BIN:-}" ] || [ -z "${SOAK_BIN:-}" ]; then
  nice -n 19 cargo build --release --locked -p slimserve -p slimserve-loadtest --bin slimserve --bin soak
fi
SLIMSERVE_BIN=${SLIMSERVE_BIN:-target/release/slimserve}
SOAK_BIN=${SOAK_BIN:-target/release/soak}
TARGET=127.0.0.1:$PORT

start_server() { # $1: log file; sets PID (a child of this shell, so `wait` gets its exit code)
  ( ulimit -n 1024; exec "$SLIMSERVE_BIN" serve --models models --http-addr "$TARGET" \
      --grpc-addr "127.0.0.1:$GPORT" --shutdown-timeout-secs 20 >"$1" 2>&1 ) &
  PID=$!
}
wait_ready() { # prints seconds to ready
  local t0; t0=$(date +%s.%N)
  for _ in $(seq 1 600); do
    if curl -fs "http://$TARGET/health/ready" >/dev/null 2>&1; then
      echo "$(date +%s.%N) - $t0" | bc; return 0
    fi
    sleep 0.05
  done
  echo "server not ready" >&2; return 1
}
stop_server() { # $1: pid; sets RC (its exit code) and T (seconds to exit)
  local t0; t0=$(date +%s.%N)
  kill -TERM "$1" 2>/dev/null || true
  RC=0; wait "$1" || RC=$?
  T=$(echo "$(date +%s.%N) - $t0" | bc)
}

start_server "$OUT/server1.log"
trap 'kill $PID 2>/dev/null || true' EXIT
wait_ready >/dev/null
if [ -z "${RATE:-}" ]; then
  CAP=$("$SOAK_BIN" capacity --target "$TARGET" --variant full --concurrency 4 --seconds 15)
  RATE=$(echo "$CAP * $FACTOR" | bc)
  echo "full's capacity: $CAP req/s (closed loop, 4 clients); soak rate: $RATE req/s"
else
  CAP="(given)"
fi
"$SOAK_BIN" run --target "$TARGET" --rate "$RATE" --duration "$DURATION" --pid "$PID" \
  --out "$OUT/run1.json" >/dev/null
stop_server "$PID"; RC1=$RC; T1=$T

start_server "$OUT/server2.log"
wait_ready >/dev/null
"$SOAK_BIN" run --target "$TARGET" --rate "$RATE" --duration "$DURATION2" --pid "$PID" \
  --sigterm-at "$SIGTERM_AT" --out "$OUT/run2.json" >/dev/null
RC2=0; wait "$PID" || RC2=$?
EXIT2=$(grep -o 'stopped' "$OUT/server2.log" | head -1 || true)
start_server "$OUT/server3.log"
READY3=$(wait_ready)
stop_server "$PID"; RC3=$RC; T3=$T
trap - EXIT
{
  echo "capacity(full)=$CAP rate=$RATE factor=$FACTOR"
  echo "run1: ${DURATION}s, server exit $RC1 after SIGTERM at the end (${T1}s)"
  echo "run2: ${DURATION2}s with SIGTERM at ${SIGTERM_AT}s: server exit code $RC2 ($EXIT2)"
  echo "restart to ready: ${READY3}s"
  grep -E 'shutting down|stopped|still running' "$OUT/server2.log" | sed 's/^/  server2: /'
} | tee "$OUT/summary.txt"
