# syntax=docker/dockerfile:1
#
# slimserve container image: multi-stage, non-root, models baked in.
#
#   docker build -t slimserve .                      # or: podman build -t slimserve .
#   docker run --rm -p 8080:8080 -p 8081:8081 slimserve
#
# Build arguments (all optional):
#   BUILDER_IMAGE   image with the Rust toolchain (cargo, rustc >= 1.91) and a C
#                   linker (gcc, libc6-dev). Default: the official Rust image on
#                   Debian 12. Any Debian 12 (glibc 2.36) based toolchain image
#                   works, e.g. one imported locally (deploy/podman-smoke.sh).
#   RUNTIME_IMAGE   minimal glibc base for the runtime stage. Default: distroless
#                   cc (Debian 12, glibc + libgcc, no shell). The runtime stage
#                   runs no RUN step, so any glibc >= 2.36 rootfs works
#                   (debian:bookworm-slim, or a locally made base).
#   CARGO_RUSTFLAGS optional RUSTFLAGS for the build. Empty (default): the
#                   repository's .cargo/config.toml applies (-C target-cpu=x86-64-v3,
#                   AVX2/FMA, the binary refuses to start on older CPUs). For a
#                   portable image:  --build-arg CARGO_RUSTFLAGS="-C target-cpu=x86-64"
#
# Targets:
#   runtime (default, last stage): compiles the binary in the builder stage.
#   runtime-prebuilt: takes an already built binary from the named build
#                   context "prebuilt" instead of compiling (no toolchain image
#                   needed), e.g.
#                     --target runtime-prebuilt --build-context prebuilt=target/release
#                   (docker buildx / podman >= 4.3; see deploy/README.md). The
#                   binary must be built against glibc <= 2.36 (Debian 12).
#
# Layout of the image:
#   /usr/local/bin/slimserve     the binary (ENTRYPOINT, exec form: PID 1, gets SIGTERM)
#   /opt/slimserve/models        variants.toml, labels.txt and the ONNX files
#                                (SLIMSERVE_MODELS); mount a volume here to replace them
#   /tmp                         the only place written to (an emptyDir on Kubernetes)
#   uid/gid 65532 ("nonroot" in distroless)
#
# Ports: 8080 HTTP API + /health/* + /metrics (Prometheus), 8081 gRPC (KServe v2,
# grpc.health.v1). Metrics are served on the HTTP port, so 8080 is the metrics port.

ARG BUILDER_IMAGE=docker.io/library/rust:1.91-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# planner: a copy of the workspace where every .rs file is a stub. Its content
# changes only when a manifest, the lock file or the set of source files
# changes, so the dependency layer below stays cached across code edits.
# Works for any workspace layout (all members' Cargo.toml are kept), with no
# extra tool (cargo-chef) to install.
FROM ${BUILDER_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN set -eu; \
    find . -path ./target -prune -o -type f ! -name Cargo.toml ! -name Cargo.lock \
         ! -path './.cargo/*' ! -name 'rust-toolchain*' ! -name '*.rs' -print | xargs -r rm -f; \
    find . -name '*.rs' -type f | while read -r f; do \
        if grep -q 'fn main' "$f"; then echo 'fn main() {}' > "$f"; else : > "$f"; fi; \
    done; \
    find . -depth -type d -empty -delete

# ---------------------------------------------------------------------------
# builder: dependencies first (cached layer), then the real sources.
FROM ${BUILDER_IMAGE} AS builder
ARG CARGO_RUSTFLAGS=""
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
WORKDIR /build
COPY --from=planner /src/ ./
RUN set -eu; \
    if [ -n "${CARGO_RUSTFLAGS}" ]; then export RUSTFLAGS="${CARGO_RUSTFLAGS}"; fi; \
    cargo build --release --locked --bin slimserve -p slimserve
COPY . .
RUN set -eu; \
    if [ -n "${CARGO_RUSTFLAGS}" ]; then export RUSTFLAGS="${CARGO_RUSTFLAGS}"; fi; \
    find . -path ./target -prune -o -name '*.rs' -type f -exec touch {} +; \
    cargo build --release --locked --bin slimserve -p slimserve; \
    mkdir -p /out; \
    cp target/release/slimserve /out/slimserve; \
    strip --strip-debug /out/slimserve 2>/dev/null || true; \
    /out/slimserve --version

# ---------------------------------------------------------------------------
# runtime-base: everything of the runtime image but the binary. No shell or
# package manager is needed (no RUN step); nothing runs as root.
FROM ${RUNTIME_IMAGE} AS runtime-base
LABEL org.opencontainers.image.title="slimserve" \
      org.opencontainers.image.description="Image classifier served in several variants, routed per request by latency budget" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# Models are read-only data owned by root: the non-root user can read, not change them.
COPY --chown=0:0 --chmod=0644 models/variants.toml models/labels.txt models/*.onnx /opt/slimserve/models/
ENV SLIMSERVE_MODELS=/opt/slimserve/models \
    SLIMSERVE_HTTP_ADDR=0.0.0.0:8080 \
    SLIMSERVE_GRPC_ADDR=0.0.0.0:8081 \
    SLIMSERVE_HEALTHCHECK_ADDR=127.0.0.1:8080 \
    SLIMSERVE_SHUTDOWN_TIMEOUT_SECS=20 \
    RUST_LOG=info \
    TMPDIR=/tmp
USER 65532:65532
WORKDIR /tmp
# 8080: HTTP API, health and /metrics (the metrics port); 8081: gRPC.
EXPOSE 8080/tcp 8081/tcp
# Docker/podman health: the binary probes its own /health/ready (no curl in the image).
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/slimserve", "healthcheck"]
# SIGTERM (docker stop, kubelet) makes slimserve stop accepting, finish the
# requests in flight within SLIMSERVE_SHUTDOWN_TIMEOUT_SECS, and exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/slimserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------
# runtime-prebuilt (opt-in target): a binary built outside, from the named
# build context "prebuilt" (a folder holding `slimserve`).
FROM runtime-base AS runtime-prebuilt
COPY --from=prebuilt --chown=0:0 --chmod=0755 slimserve /usr/local/bin/slimserve

# ---------------------------------------------------------------------------
# runtime (default target): the binary compiled in the builder stage.
FROM runtime-base AS runtime
COPY --from=builder --chown=0:0 --chmod=0755 /out/slimserve /usr/local/bin/slimserve
