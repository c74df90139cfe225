#!/usr/bin/env bash
# Triton's perf_analyzer against slimserve over HTTP and gRPC (the Open
# Inference Protocol), beside the same closed-loop load through /classify
# (measured with loadtest), at concurrency 1..4, on one release server, and
# the engine's in-process throughput (slimserve bench) for the same workers.
#
#   loadtest/perf_analyzer/run.sh            # writes $OUT/summary.md
#
# Needs: libb64-0d (Debian package: perf_analyzer links it), the release
# binaries (target-release/release/{slimserve,loadtest}, or SLIMSERVE_BIN /
# LOADTEST_BIN). Makes a venv with tritonclient[all]==2.51.0 (the last wheel
# carrying perf_analyzer) and the CUDA runtime library it links
# (nvidia-cuda-runtime-cu12; no GPU is used).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${PA_VENV:-/tmp/slimserve-pa-venv}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-release}
BIN=${SLIMSERVE_BIN:-$TARGET_DIR/release/slimserve}
LOADTEST=${LOADTEST_BIN:-$TARGET_DIR/release/loadtest}
OUT=${OUT:-/tmp/slimserve-perf-analyzer}
VARIANT=${VARIANT:-full}
CONC=${CONCURRENCY:-"1 2 3 4"}
INTERVAL_MS=${INTERVAL_MS:-6000}
IMAGE=${IMAGE:-$ROOT/models/testdata/chelsea.png}

ldconfig -p | grep -q libb64.so.0d || { echo "perf_analyzer needs libb64: apt-get install libb64-0d" >&2; exit 1; }
for b in "$BIN" "$LOADTEST"; do
  [ -x "$b" ] || { echo "missing $b: CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --workspace" >&2; exit 1; }
done
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/interop/requirements.txt" \
  nvidia-cuda-runtime-cu12==12.9.79
PA="$VENV/bin/perf_analyzer"
export LD_LIBRARY_PATH="$("$VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

mkdir -p "$OUT/images"
cp "$IMAGE" "$OUT/images/"
"$VENV/bin/python" - "$IMAGE" "$OUT/image.json" <<'PY'
import base64, json, struct, sys
# "b64" is the tensor's binary form: for BYTES, each element's 4-byte
# little-endian length, then its bytes.
png = open(sys.argv[1], "rb").read()
b = base64.b64encode(struct.pack("<I", len(png)) + png).decode()
json.dump({"data": [{"image": {"content": {"b64": b}, "shape": [1]}}]}, open(sys.argv[2], "w"))
PY

# In-process engine throughput of the same variant and worker count, for the
# server-vs-engine ratio (same run, same machine state).
WORKERS=${WORKERS:-$(nproc)}
"$BIN" bench --models "$ROOT/models" --variants "$VARIANT" --batch-sizes 1 --workers "$WORKERS" \
  --seconds 5 --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GPORT=$(free_port)
"$BIN" serve --models "$ROOT/models" --workers "$WORKERS" --http-addr "127.0.0.1:$PORT" --grpc-addr "127.0.0.1:$GPORT" \
  --default-sla-ms 20000 --max-sla-ms 60000 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done

run_pa() { # protocol url model extra-args...
  local proto=$1 url=$2 model=$3; shift 3
  local range; range="$(echo $CONC | awk '{print $1":"$NF}')"
  "$PA" -m "$model" -i "$proto" -u "$url" --concurrency-range "$range" \
    --measurement-interval "$INTERVAL_MS" --stability-percentage 25 --max-trials 10 \
    --percentile 99 -f "$OUT/pa-$proto-$model.csv" "$@" >"$OUT/pa-$proto-$model.log" 2>&1 \
    || { echo "perf_analyzer $proto $model failed:" >&2; tail -20 "$OUT/pa-$proto-$model.log" >&2; exit 1; }
}
# The encoded photo as BYTES (decode + preprocess + inference, like /classify)...
run_pa http "127.0.0.1:$PORT" "${VARIANT}_image" --input-data "$OUT/image.json"
run_pa grpc "127.0.0.1:$GPORT" "${VARIANT}_image" --input-data "$OUT/image.json"
# ...and a preprocessed FP32 tensor (random data; inference only).
run_pa http "127.0.0.1:$PORT" "$VARIANT"
run_pa grpc "127.0.0.1:$GPORT" "$VARIANT"
# /classify with the same photo, closed loop at the same concurrencies.
"$LOADTEST" --target "http://127.0.0.1:$PORT" --images "$OUT/images" --scenario "pinned:$VARIANT" \
  --sla-ms 20000 --arrival closed --concurrency "$(echo $CONC | tr ' ' ,)" \
  --warmup 2s --duration "$((INTERVAL_MS * 3 / 1000))s" --out "$OUT/classify" >"$OUT/loadtest.log" 2>&1

"$VENV/bin/python" "$HERE/summary.py" "$OUT" "$VARIANT" | tee "$OUT/summary.md"
