#!/usr/bin/env bash
# Build the slimserve image with podman from locally made base images, run it,
# classify a photo through the published port, and check the SIGTERM drain.
#
#   bash deploy/podman-smoke.sh              # full multi-stage build (default)
#   MODE=prebuilt bash deploy/podman-smoke.sh   # image from target/release/slimserve
#
# Works on a Debian 12 machine with no Docker engine and no registry access
# besides Debian's: podman/buildah/runc come from apt, the runtime base is
# assembled from Debian packages (glibc + libgcc, like distroless cc), the
# builder base is debootstrap'ed Debian 12 + gcc + this machine's Rust
# toolchain (rustup's, copied in; bookworm's rustc is older than rust-version).
# Every build runs with --pull=never. Takes 25-30 minutes on 2 shared cores with
# MODE=build (the release build dominates); ~2 minutes with MODE=prebuilt.
#
# Environment:
#   MODE        build | prebuilt (default build)
#   WORK        scratch folder (default /var/tmp/slimserve-smoke; base rootfs cached there)
#   IMAGE       tag of the image built (default localhost/slimserve:smoke)
#   HTTP_PORT   host port published for 8080 (default 18080); GRPC_PORT for 8081 (18081)
#   CARGO_RUSTFLAGS  passed to the build (default empty: .cargo/config.toml applies)
#   SKIP_BUILD=1     run the checks on an existing $IMAGE (no build)
#   KUBE_PLAY=1      also `podman kube play` the chart's rendered Deployment
# Output: a summary on stdout and in $WORK/result.txt; exit 0 only if every check passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${MODE:-build}"
WORK="${WORK:-/var/tmp/slimserve-smoke}"
IMAGE="${IMAGE:-localhost/slimserve:smoke}"
HTTP_PORT="${HTTP_PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-18081}"
RUNTIME_BASE="localhost/slimserve-runtime-base:bookworm"
CARGO_RUSTFLAGS="${CARGO_RUSTFLAGS:-}"
NAME="slimserve-smoke-$$"
PHOTO="$ROOT/models/testdata/chelsea.png"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$WORK"
RESULT="$WORK/result.txt"
: > "$RESULT"
log() { printf '[smoke] %s\n' "$*" >&2; }
record() { printf '%s\n' "$*" | tee -a "$RESULT"; }
fail() { record "FAIL: $*"; exit 1; }
secs_since() { local d=$(( $(date +%s%N) - $1 )); printf '%d.%03d' $(( d / 1000000000 )) $(( d / 1000000 % 1000 )); }

# --- 1. tools ----------------------------------------------------------------
need=()
for b in podman buildah runc debootstrap curl; do command -v "$b" >/dev/null || need+=("$b"); done
if ((${#need[@]})); then
    log "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman buildah runc debootstrap curl uidmap >/dev/null
fi

# containers.conf of this run only (runc, and ulimits these machines allow).
export CONTAINERS_CONF="$WORK/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# --- 2. runtime base: glibc + libgcc from Debian 12 packages (distroless-cc-like)
if ! podman image exists "$RUNTIME_BASE"; then
    log "making $RUNTIME_BASE from Debian packages"
    rm -rf "$WORK/runtime-debs" "$WORK/runtime-rootfs"
    mkdir -p "$WORK/runtime-debs" "$WORK/runtime-rootfs"
    (cd "$WORK/runtime-debs" && apt-get download -qq libc6 libgcc-s1 base-files netbase tzdata 2>/dev/null)
    for d in "$WORK"/runtime-debs/*.deb; do dpkg-deb -x "$d" "$WORK/runtime-rootfs"; done
    r="$WORK/runtime-rootfs"
    rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/info" "$r/usr/share/lintian" \
           "$r/usr/lib/x86_64-linux-gnu/gconv" "$r/usr/share/locale"
    mkdir -p "$r/tmp" "$r/etc" "$r/home/nonroot" "$r/root"
    chmod 1777 "$r/tmp"
    chown 65532:65532 "$r/home/nonroot"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$r/etc/group"
    tar -C "$r" -c . | podman import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'USER 65532:65532' - "$RUNTIME_BASE" >/dev/null
fi

# --- 3. builder base: debootstrap'ed Debian 12 + gcc + the host's Rust toolchain
RUSTC="$(command -v rustc || echo "$HOME/.cargo/bin/rustc")"
SYSROOT="$("$RUSTC" --print sysroot)"
RUST_VER="$("$SYSROOT/bin/rustc" --version | awk '{print $2}')"
BUILDER="localhost/slimserve-builder:bookworm-rust$RUST_VER"
if [[ "$MODE" == build ]] && ! podman image exists "$BUILDER"; then
    b="$WORK/builder-rootfs"
    if [[ ! -x "$b/usr/bin/gcc" ]]; then
        log "debootstrap bookworm (+gcc) into $b"
        rm -rf "$b"
        debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$b" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    fi
    log "copying Rust $RUST_VER from $SYSROOT into the builder image"
    rm -rf "$b/opt/rust" && mkdir -p "$b/opt/rust"
    cp -a "$SYSROOT/bin" "$SYSROOT/lib" "$b/opt/rust/"
    [[ -d "$SYSROOT/libexec" ]] && cp -a "$SYSROOT/libexec" "$b/opt/rust/"
    # The host's CA bundle: where TLS to crates.io passes an intercepting proxy,
    # its CA is in the host's store, and cargo in the builder needs it too.
    cp /etc/ssl/certs/ca-certificates.crt "$b/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$b/var/cache/apt/archives/"*.deb "$b/var/lib/apt/lists/"*
    tar -C "$b" -c . | podman import \
        --change 'ENV PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' - "$BUILDER" >/dev/null
fi

# --- 4. build the image --------------------------------------------------------
# docker format: the OCI image config has no HEALTHCHECK.
build_args=(--pull=never --format docker --network=host --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE" -t "$IMAGE" -f "$ROOT/Dockerfile")
[[ -n "$CARGO_RUSTFLAGS" ]] && build_args+=(--build-arg "CARGO_RUSTFLAGS=$CARGO_RUSTFLAGS")
if [[ "$MODE" == prebuilt ]]; then
    BIN="${PREBUILT_BIN:-$ROOT/target/release/slimserve}"
    [[ -x "$BIN" ]] || fail "MODE=prebuilt needs $BIN (cargo build --release --locked)"
    mkdir -p "$WORK/prebuilt" && cp "$BIN" "$WORK/prebuilt/slimserve"
    strip --strip-debug "$WORK/prebuilt/slimserve" 2>/dev/null || true
    # BUILDER_IMAGE is never used on this path (the stage is skipped), but FROM needs a local name.
    build_args+=(--target runtime-prebuilt --build-context "prebuilt=$WORK/prebuilt" --build-arg "BUILDER_IMAGE=$RUNTIME_BASE")
else
    build_args+=(--build-arg "BUILDER_IMAGE=$BUILDER")
fi
if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    log "SKIP_BUILD=1: using the existing $IMAGE"
else
log "podman build (${MODE})"
t0=$(date +%s)
set +e
podman build "${build_args[@]}" "$ROOT" > "$WORK/build.log" 2>&1
rc=$?
set -e
grep -E 'STEP|COMMIT|error' "$WORK/build.log" | grep -v '^ ' | cut -c1-160 >&2 || true
((rc == 0)) || { tail -30 "$WORK/build.log"; fail "podman build (exit $rc)"; }
build_s=$(( $(date +%s) - t0 ))
fi
build_s="${build_s:-skipped}"
size_b=$(podman image inspect --format '{{.Size}}' "$IMAGE")
record "image: $IMAGE  mode=$MODE  build_seconds=$build_s  size_bytes=$size_b ($(( size_b / 1024 / 1024 )) MiB)"
record "image user/entrypoint: $(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} ports={{json .Config.ExposedPorts}}' "$IMAGE")"

# --- 5. run, measure start-to-ready -------------------------------------------
cleanup() { podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t0=$(date +%s%N)
podman run -d --name "$NAME" --read-only --tmpfs /tmp:rw,size=64m --cap-drop ALL \
    --security-opt no-new-privileges --cpus 2 --memory 1g \
    -p "127.0.0.1:$HTTP_PORT:8080" -p "127.0.0.1:$GRPC_PORT:8081" "$IMAGE" >/dev/null
ready=""
for _ in $(seq 1 600); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/health/ready" || true)" == 200 ]]; then
        ready=$(secs_since "$t0"); break
    fi
    [[ "$(podman inspect --format '{{.State.Running}}' "$NAME")" == true ]] || { podman logs "$NAME" | tail -20; fail "container exited before ready"; }
    sleep 0.1
done
[[ -n "$ready" ]] || { podman logs "$NAME" | tail -20; fail "not ready within 60 s"; }
record "start_to_ready_seconds: $ready (podman run -> GET /health/ready 200, through the published port)"
record "container user: $(podman exec "$NAME" /usr/local/bin/slimserve --version 2>/dev/null | head -1) uid=$(podman top "$NAME" huser user | tail -1)"
if podman healthcheck run "$NAME" >/dev/null 2>&1; then record "podman healthcheck run: healthy (slimserve healthcheck, no curl)"; else fail "podman healthcheck run"; fi

# --- 6. classify a photo through the published port ---------------------------
body=$(curl -sS --fail --max-time 30 -H 'X-SLA-Ms: 5000' --data-binary @"$PHOTO" "http://127.0.0.1:$HTTP_PORT/classify?top_k=3")
top1=$(printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["predictions"][0]["label"])')
record "classify chelsea.png -> top-1 '$top1'  ($(printf '%s' "$body" | head -c 300))"
case "$top1" in tabby|tiger_cat|Egyptian_cat) record "classify: PASS (a cat)";; *) fail "top-1 '$top1' is not a cat";; esac
rss=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^process_resident_memory_bytes/ {print $2}')
record "process_resident_memory_bytes after one request: $rss"

# --- 7. SIGTERM while requests are in flight ----------------------------------
# One slow upload (curl --limit-rate: ~2.5 s to send the photo) and a burst of
# 16 ordinary requests, then `podman stop -t 30` (SIGTERM, SIGKILL after 30 s).
out="$WORK/drain"; rm -rf "$out"; mkdir -p "$out"
curl -s -o "$out/slow.json" -w '%{http_code}' --limit-rate 100K -H 'X-SLA-Ms: 60000' \
    --data-binary @"$PHOTO" "http://127.0.0.1:$HTTP_PORT/classify" > "$out/slow.code" &
slow_pid=$!
for i in $(seq 1 16); do
    curl -s -o /dev/null -w '%{http_code}' -H 'X-SLA-Ms: 60000' --data-binary @"$PHOTO" \
        "http://127.0.0.1:$HTTP_PORT/classify" > "$out/burst.$i" 2>/dev/null &
done
sleep 1
t0=$(date +%s%N)
podman stop -t 30 "$NAME" >/dev/null
stop_s=$(secs_since "$t0")
wait $slow_pid || true
wait || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
slow=$(cat "$out/slow.code")
ok=0; other=0
for f in "$out"/burst.*; do if [[ "$(cat "$f")" == 200 ]]; then ok=$((ok+1)); else other=$((other+1)); fi; done
podman logs "$NAME" > "$WORK/container.log" 2>&1 || true
record "drain: in-flight slow upload -> HTTP $slow; burst: $ok x 200, $other other; exit code $code; podman stop took ${stop_s}s"
grep -E 'shutting down|stopped' "$WORK/container.log" | sed 's/^/  log: /' | tee -a "$RESULT" || true
[[ "$slow" == 200 ]] || fail "the in-flight request was not answered 200 (got $slow)"
[[ "$code" == 0 ]] || fail "exit code $code after SIGTERM"
record "drain: PASS"

# --- 8. optional: podman kube play of the chart's rendered Deployment -----------
# (KUBE_PLAY=1; needs the venv of deploy/check-chart.sh.) Checks that the
# chart's user, read-only root, /tmp emptyDir and env work with the image.
if [[ "${KUBE_PLAY:-0}" == 1 ]]; then
    venv="${SLIMSERVE_CHART_VENV:-/tmp/slimserve-chart-venv}"
    [[ -x "$venv/bin/python" ]] || bash "$ROOT/deploy/check-chart.sh" -q -k notes >/dev/null
    "$venv/bin/python" - "$ROOT/helm/slimserve" "$IMAGE" > "$WORK/kube-play.yaml" <<'PY'
import sys, yaml, helm_python as helm
chart, image = sys.argv[1], sys.argv[2]
repo, tag = image.rsplit(":", 1)
values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"}, "replicaCount": 1,
          "resources": {"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
          "config": {"workers": 2}, "topologySpread": {"enabled": False}}
with helm.Chart.load(chart) as c:
    out = c.render(values, name="kp", namespace="default")
keep = []
for path, text in sorted(out.items()):
    for d in yaml.safe_load_all(text) if path.endswith(".yaml") else []:
        if d and d["kind"] in ("ConfigMap", "Deployment") and "helm.sh/hook" not in d["metadata"].get("annotations", {}):
            c0 = d["spec"]["template"]["spec"]["containers"][0] if d["kind"] == "Deployment" else None
            if c0:
                c0.pop("lifecycle", None)  # podman has no preStop sleep action
                c0["env"] = [e for e in c0["env"] if "valueFrom" not in e or "fieldRef" not in e["valueFrom"]]
                c0["env"] = [e if "valueFrom" not in e else {"name": e["name"], "value": "2"} for e in c0["env"]]
            keep.append(d)
print(yaml.safe_dump_all(keep, sort_keys=False))
PY
    podman kube play --replace --publish "127.0.0.1:$((HTTP_PORT+2)):8080" "$WORK/kube-play.yaml" > "$WORK/kube-play.log" 2>&1 \
        || { cat "$WORK/kube-play.log"; fail "podman kube play"; }
    kp_ready=""
    for _ in $(seq 1 600); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((HTTP_PORT+2))/health/ready" || true)" == 200 ]]; then kp_ready=1; break; fi
        sleep 0.1
    done
    ctr=$(podman ps --format '{{.Names}}' | grep -- '-slimserve$' | head -1)
    info="$(podman inspect --format 'user={{.Config.User}} readonly={{.HostConfig.ReadonlyRootfs}}' "$ctr" 2>/dev/null || true)"
    kp_top=$(curl -sS --max-time 30 --data-binary @"$PHOTO" "http://127.0.0.1:$((HTTP_PORT+2))/classify?top_k=1" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["predictions"][0]["label"])' || true)
    podman kube down "$WORK/kube-play.yaml" >/dev/null 2>&1 || true
    record "kube play (chart's Deployment + ConfigMap): ready=${kp_ready:-no} $info top-1=$kp_top"
    [[ -n "$kp_ready" && "$info" == *"readonly=true"* ]] || fail "kube play"
fi
record "PASS: podman smoke"
