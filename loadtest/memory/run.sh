#!/usr/bin/env bash
# Resident memory of slimserve under load, sampled from /proc every second:
# start the server with SERVE_ARGS, wait for ready, run open-loop load at
# RATE req/s for DURATION s (loadtest, pinned to SCENARIO), then stay idle for
# IDLE s. Prints resident MB at ready, at the end of warm-up load, the maximum
# under load, at the end of the load, and IDLE s after it, with the client's
# p50/p99. Samples: $OUT/rss.csv (seconds since start, phase, resident kB).
#
#   SERVE_ARGS="--variants pruned" (SERVE_ARGS="" serves every variant) SCENARIO=pinned:pruned RATE=60 DURATION=60 IDLE=30
#   SLIMSERVE_BIN=... LOADTEST_BIN=... (default: release builds in target/)
#   OUT=/tmp/slimserve-memory PORT=18280  EXTRA_ENV="MALLOC_ARENA_MAX=2" (env of the server)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../ready.sh
source loadtest/ready.sh
SERVE_ARGS=${SERVE_ARGS---variants pruned}
SCENARIO=${SCENARIO:-pinned:pruned}
RATE=${RATE:-60}
DURATION=${DURATION:-60}
IDLE=${IDLE:-30}
SLA_MS=${SLA_MS:-1000}
OUT=${OUT:-/tmp/slimserve-memory}
PORT=${PORT:-18280}
SLIMSERVE_BIN=${SLIMSERVE_BIN:-target/release/slimserve}
LOADTEST_BIN=${LOADTEST_BIN:-target/release/loadtest}
mkdir -p "$OUT"
TARGET=127.0.0.1:$PORT

# shellcheck disable=SC2086
env ${EXTRA_ENV:-} "$SLIMSERVE_BIN" serve --models models --http-addr "$TARGET" \
  --grpc-addr "127.0.0.1:$((PORT + 1))" $SERVE_ARGS >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
wait_ready "$TARGET" "$OUT/server.log"
ready_s=$(echo "$(date +%s.%N) - $t0" | bc)

phase=ready
echo "$phase" >"$OUT/phase"
: >"$OUT/rss.csv"
(
  while kill -0 "$PID" 2>/dev/null; do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    echo "$(echo "$(date +%s.%N) - $t0" | bc),$(cat "$OUT/phase"),$kb" >>"$OUT/rss.csv"
    sleep 1
  done
) &
SAMPLER=$!
sleep 2
echo load >"$OUT/phase"
"$LOADTEST_BIN" --target "http://$TARGET" --scenario "$SCENARIO" --sla-ms "$SLA_MS" \
  --rates "$RATE" --duration "${DURATION}s" --warmup 2s --out "$OUT/load" >"$OUT/loadtest.log" 2>&1
echo idle >"$OUT/phase"
sleep "$IDLE"
echo end >"$OUT/phase"
sleep 1.5
kill "$SAMPLER" 2>/dev/null || true

mb() { awk -F, -v p="$1" -v how="$2" '$2 == p { v = $3; if (how == "max") { if (v > m) m = v } else if (how == "first") { if (!s) { m = v; s = 1 } } else m = v } END { printf "%.1f", m / 1024 }' "$OUT/rss.csv"; }
lat=$(python3 - "$OUT/load/results.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
l = s["latency_ms"]
print(f"p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms, {s['achieved_rps']:.1f} req/s offered, {s['ok']} of {s['scheduled']} ok")
EOF
)
echo "ready in ${ready_s} s; resident MB: ready $(mb ready first), load max $(mb load max), load end $(mb load last), idle ${IDLE} s after $(mb idle last); $lat"
