#!/usr/bin/env bash
# The ladder under overload, in one run against one server with every rung loaded:
#  1. capacity: the highest rate at which `pinned:full` answers >= 99 % within SLA_MS
#     (loadtest --search), or with CAPACITY=throughput the goodput pinned full
#     sustains when overloaded, unless CAPACITY is given as a rate;
#  2. open loop at OVERLOAD x that rate, SLA_MS budget: pinned:full, then routed;
#  3. mixed budgets: two generators at once, each at half of that rate, routed, one
#     with every request at TIGHT_MS and one at LOOSE_MS.
# Prints, per step, attainment (answers within budget / all requests), goodput,
# accuracy-weighted goodput (answers within budget x their rung's top-1, per second)
# and the mean top-1 served; then the ratio routed / pinned. Also ready time and
# resident memory with every rung loaded, after the load.
#
#   CAPACITY=N (req/s) or CAPACITY=throughput (pinned full's goodput at PROBE_RATE=200 req/s)
#   SLA_MS=150 OVERLOAD=2 TIGHT_MS=60 LOOSE_MS=400 DURATION=20 OUT=/tmp/slimserve-ladder PORT=18380
#   SLIMSERVE_BIN=... LOADTEST_BIN=... (default: release builds in target/)  SERVE_ARGS="" (extra flags)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../ready.sh
source loadtest/ready.sh
SLA_MS=${SLA_MS:-150}
OVERLOAD=${OVERLOAD:-2}
TIGHT_MS=${TIGHT_MS:-60}
LOOSE_MS=${LOOSE_MS:-400}
DURATION=${DURATION:-20}
OUT=${OUT:-/tmp/slimserve-ladder}
PORT=${PORT:-18380}
SLIMSERVE_BIN=${SLIMSERVE_BIN:-target/release/slimserve}
LOADTEST_BIN=${LOADTEST_BIN:-target/release/loadtest}
mkdir -p "$OUT"
TARGET=127.0.0.1:$PORT

t0=$(date +%s.%N)
# shellcheck disable=SC2086
"$SLIMSERVE_BIN" serve --models models --http-addr "$TARGET" \
  --grpc-addr "127.0.0.1:$((PORT + 1))" ${SERVE_ARGS:-} >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
wait_ready "$TARGET" "$OUT/server.log"
ready_s=$(echo "$(date +%s.%N) - $t0" | bc)
rss_ready=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
echo "ready after ${ready_s} s with $(curl -fs "http://$TARGET/v1/variants" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["variants"]))') variants; resident $((rss_ready / 1024)) MB"

lt() { "$LOADTEST_BIN" --target "http://$TARGET" --warmup 3s "$@"; }

if [ "${CAPACITY:-}" = throughput ]; then
  # full's capacity as the goodput pinned full sustains when offered more
  # than it can serve (PROBE_RATE), rather than the highest rate it meets
  # at the 99th percentile
  lt --scenario pinned:full --sla-ms "$SLA_MS" --rates "${PROBE_RATE:-200}" --duration 10s \
    --out "$OUT/capacity" >"$OUT/capacity.log" 2>&1
  CAPACITY=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["steps"][0]["goodput_rps"], 1))' "$OUT/capacity/results.json")
elif [ -z "${CAPACITY:-}" ]; then
  lt --scenario pinned:full --sla-ms "$SLA_MS" --search --search-start 20 --search-steps 6 \
    --duration 8s --out "$OUT/capacity" >"$OUT/capacity.log" 2>&1
  CAPACITY=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["summary"][0]["max_rate_within_sla"] or 0)' "$OUT/capacity/results.json")
fi
RATE=$(python3 -c "print(round($CAPACITY * $OVERLOAD, 1))")
HALF=$(python3 -c "print(round($RATE / 2, 1))")
echo "pinned:full capacity within ${SLA_MS} ms: ${CAPACITY} req/s; overload: ${RATE} req/s"

lt --scenario pinned:full,routed --sla-ms "$SLA_MS" --rates "$RATE" --duration "${DURATION}s" --out "$OUT/overload" >"$OUT/overload.log" 2>&1
lt --scenario routed --sla-ms "$TIGHT_MS" --rates "$HALF" --duration "${DURATION}s" --seed 11 --out "$OUT/mixed-tight" >"$OUT/mixed-tight.log" 2>&1 &
TIGHT=$!
lt --scenario routed --sla-ms "$LOOSE_MS" --rates "$HALF" --duration "${DURATION}s" --seed 12 --out "$OUT/mixed-loose" >"$OUT/mixed-loose.log" 2>&1
wait "$TIGHT"
rss_after=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")

python3 - "$OUT" "$rss_after" <<'EOF'
import json, sys
out, rss = sys.argv[1], int(sys.argv[2])
rows = []
for part in ["overload", "mixed-tight", "mixed-loose"]:
    for s in json.load(open(f"{out}/{part}/results.json"))["steps"]:
        rows.append((part, s))
print(f"{'step':<12} {'scenario':<12} {'SLA ms':>6} {'offered':>8} {'within':>7} {'goodput':>8} {'acc.goodput':>11} {'top-1 served':>12}  mix within budget")
for part, s in rows:
    mix = ", ".join(f"{k} {v}" for k, v in sorted(s.get("variant_mix_within_sla", {}).items(), key=lambda kv: -kv[1]))
    ag = s.get("accuracy_goodput"); t1 = s.get("mean_top1_served")
    print(f"{part:<12} {s['scenario']:<12} {s['sla_ms']:>6.0f} {s['offered_rps']:>8.1f} {s['sla_attainment_pct']:>6.1f}% "
          f"{s['goodput_rps']:>8.1f} {ag if ag is None else round(ag, 1)!s:>11} "
          f"{'–' if t1 is None else f'{100 * t1:.1f}%':>12}  {mix}")
ov = {s["scenario"]: s for p, s in rows if p == "overload"}
p, r = ov.get("pinned:full"), ov.get("routed")
if p and r and p.get("accuracy_goodput"):
    print(f"routed / pinned full: accuracy-weighted goodput x{r['accuracy_goodput'] / p['accuracy_goodput']:.2f}, "
          f"goodput x{r['goodput_rps'] / max(p['goodput_rps'], 1e-9):.2f}; routed within budget {r['sla_attainment_pct']:.1f}%")
print(f"resident memory after the load, every rung loaded: {rss // 1024} MB")
EOF
