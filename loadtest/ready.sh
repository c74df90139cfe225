# Sourced by the load scripts: wait_ready HOST:PORT LOG waits up to 60 s for
# /health/ready, and on failure prints LOG and exits 1.
wait_ready() {
  for _ in $(seq 1 1200); do
    curl -fs "http://$1/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  curl -fs "http://$1/health/ready" >/dev/null || { echo "not ready" >&2; cat "$2" >&2; exit 1; }
}
