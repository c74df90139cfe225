#!/usr/bin/env bash
# slimserve beside onnxruntime, reproducibly, on one machine:
#   engines  in-process, one thread: `slimserve bench` (tract) and onnxruntime on the same ONNX
#            files, batch 1 and 4, interleaved rounds, medians per round, ratios per variant
#            (plus an f32-weight twin of each int8-weight file, which onnxruntime cannot fold);
#   servers  the same open-loop `loadtest` sweep against slimserve (pinned variant, X-SLA-Ms)
#            and against a FastAPI + uvicorn (--workers 2) + onnxruntime server
#            (ort_server.py), one after the other, merged into one load-test report;
#   cpu      each server alone at a rate both answer in full: its CPU time (process and
#            children) per answered request, and the throughput that bounds on these cores.
#
#   loadtest/peers/run.sh [engines|servers|cpu|all]      (default: all)
#
# Python packages (requirements.txt) go into a venv outside the repository: $PEERS_VENV, by
# default ../peers-venv beside the checkout. Everything is a parameter (environment):
#   SLIMSERVE_BIN, LOADTEST_BIN     prebuilt binaries (default: cargo build --release, nice 19)
#   engines: VARIANTS (all), BATCHES (1,4), ROUNDS (5), CELL_SECONDS (3),
#            TRACT_CONFIGS ("label=extra bench args;label2=..."; default: one, no extra args)
#   servers: VARIANT (full), RATES, DURATION (20s), WARMUP (3s), SLA_MS (150), IMAGES
#            (models/testdata), TIMEOUT (10s), SEED (1), SLIMSERVE_ARGS (--batch-sizes 1,2,4),
#            PEER_WORKERS (2), SLIMSERVE_PORT (18190), PEER_PORT (18192), PRIME_REQUESTS (0:
#            requests sent to slimserve after its warm-up, before the sweep; see start_slimserve)
#   cpu: CPU_RATE (60), CPU_DURATION (20s); VARIANT, IMAGES, SEED, TIMEOUT as for servers
#   OUT (loadtest/peers/report): engines.txt/.json, agreement.txt, servers.txt, cpu.txt and the
#   report
# Not a CI test: it takes ~10 min per part on 2 cores and its figures are only comparable
# within one run on one machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PART=${1:-all}
case "$PART" in engines | servers | cpu | all) ;; *) echo "usage: $0 [engines|servers|cpu|all]" >&2; exit 2 ;; esac

VENV=${PEERS_VENV:-$REPO/../peers-venv}
OUT=${OUT:-$REPO/loadtest/peers/report}
VARIANTS=${VARIANTS:-}
BATCHES=${BATCHES:-1,4}
ROUNDS=${ROUNDS:-5}
CELL_SECONDS=${CELL_SECONDS:-3}
TRACT_CONFIGS=${TRACT_CONFIGS:-}
VARIANT=${VARIANT:-full}
RATES=${RATES:-15,30,45,60,90,120,150,200,250,300}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
SLA_MS=${SLA_MS:-150}
IMAGES=${IMAGES:-$REPO/models/testdata}
TIMEOUT=${TIMEOUT:-10s}
SEED=${SEED:-1}
SLIMSERVE_ARGS=${SLIMSERVE_ARGS:---batch-sizes 1,2,4}
PEER_WORKERS=${PEER_WORKERS:-2}
PRIME_REQUESTS=${PRIME_REQUESTS:-0}
SLIMSERVE_PORT=${SLIMSERVE_PORT:-18190}
PEER_PORT=${PEER_PORT:-18192}
CPU_RATE=${CPU_RATE:-60}
CPU_DURATION=${CPU_DURATION:-20s}
SLIMSERVE_LABEL=slimserve
PEER_LABEL=fastapi-ort

mkdir -p "$OUT"
SCRATCH=$(mktemp -d -t slimserve-peers-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Python: venv outside the repository, pinned packages
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
PY="$VENV/bin/python"

# --- release binaries
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "${SLIMSERVE_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
    (cd "$REPO" && nice -n 19 cargo build --release --locked -p slimserve -p slimserve-loadtest)
fi
SLIMSERVE_BIN=${SLIMSERVE_BIN:-$TARGET_DIR/release/slimserve}
LOADTEST_BIN=${LOADTEST_BIN:-$TARGET_DIR/release/loadtest}

# CPU ticks of a process and its children
tree_ticks() {
    local root=$1 t=0 p f
    for p in "$root" $(pgrep -P "$root" || true); do
        if [ -r "/proc/$p/stat" ]; then
            read -ra f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
            t=$((t + f[11] + f[12]))
        fi
    done
    echo "$t"
}

# resident memory (MB) of a process and its children
tree_rss_mb() {
    local root=$1 kb=0 p v
    for p in "$root" $(pgrep -P "$root" || true); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        kb=$((kb + ${v:-0}))
    done
    echo "$((kb / 1024))"
}

# Wait until the server uses < 0.1 core for 2 s running (a backlog from an overloaded step
# is served to the end even after the client gave up): steps must not inherit work.
wait_idle() {
    local pid=$1 hz quiet=0 a b
    hz=$(getconf CLK_TCK)
    for _ in $(seq 180); do
        a=$(tree_ticks "$pid")
        sleep 1
        b=$(tree_ticks "$pid")
        if [ $((b - a)) -lt $((hz / 10)) ]; then
            quiet=$((quiet + 1))
            [ "$quiet" -ge 2 ] && return 0
        else
            quiet=0
        fi
    done
    echo "warning: server $pid still busy after 180 s" >&2
}

wait_ready() {
    local url=$1 pid=$2
    for _ in $(seq 600); do
        curl -sf -o /dev/null "$url/health/ready" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "server $pid exited before it was ready" >&2; exit 1; }
        sleep 0.5
    done
    echo "$url not ready after 300 s" >&2
    exit 1
}

# start_slimserve [file the warm-up lines are appended to (default servers.txt)]
start_slimserve() {
    local log=${1:-$OUT/servers.txt}
    # shellcheck disable=SC2086 # SLIMSERVE_ARGS is a list of flags
    "$SLIMSERVE_BIN" serve --models "$REPO/models" --variants "$VARIANT" \
        --http-addr "127.0.0.1:$SLIMSERVE_PORT" --grpc-addr "127.0.0.1:$((SLIMSERVE_PORT + 1))" \
        $SLIMSERVE_ARGS >"$SCRATCH/slimserve.log" 2>&1 &
    SLIM_PID=$!
    PIDS+=("$SLIM_PID")
    wait_ready "http://127.0.0.1:$SLIMSERVE_PORT" "$SLIM_PID"
    # the warm-up's latency prediction decides what it admits at a budget: show it
    sed 's/\x1b\[[0-9;]*m//g' "$SCRATCH/slimserve.log" | grep -E ' (warmed|ready) ' |
        sed 's/^.*INFO /slimserve warm-up: /' | tee -a "$log"
    # The warm-up seeds the latency model that admission uses; only executions update it. On a
    # machine busier during the warm-up than during the sweep, the prediction can exceed the
    # budget and every request of the sweep is refused (503 budget_unmeetable) without ever
    # executing, so it stays. PRIME_REQUESTS sequential requests at the server's default budget
    # let it measure the machine as it is before the sweep (off by default: a user's server
    # gets no such help).
    if [ "$PRIME_REQUESTS" -gt 0 ]; then
        local i f imgs=()
        for f in "$IMAGES"/*; do case "${f,,}" in *.png | *.jpg | *.jpeg) imgs+=("$f") ;; esac; done
        for ((i = 0; i < PRIME_REQUESTS; i++)); do
            curl -sf -o /dev/null -H "x-variant: $VARIANT" --data-binary "@${imgs[i % ${#imgs[@]}]}" \
                -H 'content-type: application/octet-stream' "http://127.0.0.1:$SLIMSERVE_PORT/classify" || true
        done
        echo "slimserve: primed with $PRIME_REQUESTS sequential requests at the default budget" |
            tee -a "$log"
    fi
}

start_peer() {
    (cd "$HERE" && exec "$PY" ort_server.py --models "$REPO/models" --variant "$VARIANT" \
        --port "$PEER_PORT" --workers "$PEER_WORKERS") >"$SCRATCH/peer.log" 2>&1 &
    PEER_PID=$!
    PIDS+=("$PEER_PID")
    wait_ready "http://127.0.0.1:$PEER_PORT" "$PEER_PID"
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# One loadtest invocation per rate, with the seed a single sweep would give that step, so both
# servers get the same arrival times; the server is idle before each.
sweep() {
    local label=$1 url=$2 pid=$3 extra=$4 i=0 rate
    IFS=',' read -ra rates <<<"$RATES"
    for rate in "${rates[@]}"; do
        wait_idle "$pid"
        # shellcheck disable=SC2086 # extra is a list of flags
        "$LOADTEST_BIN" --target "$url" --label "$label" --scenario "pinned:$VARIANT" \
            --sla-ms "$SLA_MS" --rates "$rate" --duration "$DURATION" --warmup "$WARMUP" \
            --cooldown 0s --timeout "$TIMEOUT" --seed "$((SEED + i))" --images "$IMAGES" \
            --out "$SCRATCH/$label-$i" $extra 2>"$SCRATCH/$label-$i.log" ||
            { cat "$SCRATCH/$label-$i.log" >&2; exit 1; }
        grep '^step' "$SCRATCH/$label-$i.log" | sed 's/^step *1 //' | tee -a "$OUT/servers.txt"
        echo "$SCRATCH/$label-$i/results.json" >>"$SCRATCH/results.list"
        i=$((i + 1))
    done
    echo "$label: resident memory after the sweep $(tree_rss_mb "$pid") MB (process and children)" |
        tee -a "$OUT/servers.txt"
}

# CPU time per answered request: the server alone at CPU_RATE req/s (no warm-up: every request
# sent is counted), its ticks (process and children) from idle before the run to idle after it,
# over the requests answered 200. Prints "label ms" into $SCRATCH/cpu.list.
cpu_cost() {
    local label=$1 url=$2 pid=$3 extra=$4 a b
    wait_idle "$pid"
    a=$(tree_ticks "$pid")
    # shellcheck disable=SC2086 # extra is a list of flags
    "$LOADTEST_BIN" --target "$url" --label "$label" --scenario "pinned:$VARIANT" \
        --sla-ms "$SLA_MS" --rates "$CPU_RATE" --duration "$CPU_DURATION" --warmup 0s \
        --cooldown 0s --timeout "$TIMEOUT" --seed "$SEED" --images "$IMAGES" \
        --out "$SCRATCH/$label-cpu" $extra 2>"$SCRATCH/$label-cpu.log" ||
        { cat "$SCRATCH/$label-cpu.log" >&2; exit 1; }
    wait_idle "$pid"
    b=$(tree_ticks "$pid")
    "$PY" - "$SCRATCH/$label-cpu/results.json" "$label" "$((b - a))" "$(getconf CLK_TCK)" \
        "$(nproc)" <<'PYEOF' >>"$SCRATCH/cpu.list"
import json, sys
results, label, ticks, hz, cores = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
step = json.load(open(results))["steps"][0]
ok = step["ok"]
ms = ticks / hz * 1e3 / max(ok, 1)
print(f"{label} {ms:.2f} {ok} {step['sent']} {step['latency_ms']['p50']:.1f} {cores * 1e3 / ms:.0f}")
PYEOF
}

if [ "$PART" = engines ] || [ "$PART" = all ]; then
    echo "== engines: slimserve bench vs onnxruntime, 1 thread"
    args=(--slimserve "$SLIMSERVE_BIN" --models "$REPO/models" --batches "$BATCHES"
        --rounds "$ROUNDS" --seconds "$CELL_SECONDS" --twin-dir "$SCRATCH/twins"
        --json "$OUT/engines.json")
    [ -n "$VARIANTS" ] && args+=(--variants "$VARIANTS")
    IFS=';' read -ra configs <<<"$TRACT_CONFIGS"
    for c in "${configs[@]}"; do args+=(--tract "$c"); done
    (cd "$HERE" && "$PY" bench_engines.py "${args[@]}") | tee "$OUT/engines.txt"
fi

if [ "$PART" = servers ] || [ "$PART" = all ]; then
    {
        echo "== servers: the same open-loop sweep, slimserve then the FastAPI + onnxruntime peer"
        echo "CPU: $(cd "$HERE" && "$PY" -c 'import peerlib; print(peerlib.cpu_line())')"
        echo "variant $VARIANT, X-SLA-Ms $SLA_MS, rates $RATES req/s (Poisson), $WARMUP warm-up + $DURATION per rate,"
        echo "images $(ls "$IMAGES" | grep -ciE '\.(png|jpe?g)$') from $IMAGES (raw bodies), timeout $TIMEOUT, seed $SEED"
        echo "slimserve: serve --variants $VARIANT $SLIMSERVE_ARGS; peer: ort_server.py --workers $PEER_WORKERS"
        echo "onnxruntime $("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)'), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$OUT/servers.txt"
    start_slimserve
    start_peer
    (cd "$HERE" && "$PY" compare_top1.py --slimserve "http://127.0.0.1:$SLIMSERVE_PORT" \
        --peer "http://127.0.0.1:$PEER_PORT" --variant "$VARIANT" --images "$IMAGES" \
        --models "$REPO/models") | tee "$OUT/agreement.txt"
    stop "$PEER_PID"
    sweep "$SLIMSERVE_LABEL" "http://127.0.0.1:$SLIMSERVE_PORT" "$SLIM_PID" ""
    stop "$SLIM_PID"
    start_peer
    sweep "$PEER_LABEL" "http://127.0.0.1:$PEER_PORT" "$PEER_PID" "--no-server-api"
    stop "$PEER_PID"
    echo "load average at end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/servers.txt"
    merged=$(paste -sd, "$SCRATCH/results.list")
    "$LOADTEST_BIN" --merge "$merged" --out "$OUT" 2>"$SCRATCH/merge.log" ||
        { cat "$SCRATCH/merge.log" >&2; exit 1; }
    sed -n '/^### Servers side by side/,/^### Every step/p' "$OUT/summary.md" | sed '$d' | tee -a "$OUT/servers.txt"
    echo "report: $OUT/report.html"
fi

if [ "$PART" = cpu ] || [ "$PART" = all ]; then
    {
        echo "== cpu: CPU time per answered request, each server alone at $CPU_RATE req/s for $CPU_DURATION"
        echo "CPU: $(cd "$HERE" && "$PY" -c 'import peerlib; print(peerlib.cpu_line())')"
        echo "variant $VARIANT, images from $IMAGES (raw bodies), Poisson, seed $SEED, no warm-up"
    } | tee "$OUT/cpu.txt"
    : >"$SCRATCH/cpu.list"
    start_slimserve "$OUT/cpu.txt"
    cpu_cost "$SLIMSERVE_LABEL" "http://127.0.0.1:$SLIMSERVE_PORT" "$SLIM_PID" ""
    stop "$SLIM_PID"
    start_peer
    cpu_cost "$PEER_LABEL" "http://127.0.0.1:$PEER_PORT" "$PEER_PID" "--no-server-api"
    stop "$PEER_PID"
    # Both servers do the same work per request (decode, resize, the same model): at equal
    # utilisation of the same cores, the ratio of their CPU per request bounds the ratio of the
    # rates they can sustain.
    awk '{ printf "%-12s %6.2f ms CPU per answered request (%d answered of %d sent, p50 %s ms): at most %d req/s on these cores\n", $1, $2, $3, $4, $5, $6; ms[NR] = $2; n[NR] = $1 }
        END { if (NR == 2) printf "%s ÷ %s CPU per request: %.2f (the most %s can sustain ÷ the most %s can, at equal utilisation)\n", n[2], n[1], ms[2] / ms[1], n[1], n[2] }' \
        "$SCRATCH/cpu.list" | tee -a "$OUT/cpu.txt"
fi
