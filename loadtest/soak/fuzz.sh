#!/usr/bin/env bash
# The long fuzz run: every target of tests/fuzz_*.rs with CASES cases each
# (default 125000: 8 targets, 1,000,000 cases), in release mode, two test
# binaries at a time. Prints each target's case count and peak memory, and
# the total. CI runs the same targets with a few hundred cases each.
set -euo pipefail
cd "$(dirname "$0")/../.."
CASES=${CASES:-125000}
LOG=${LOG:-/tmp/slimserve-fuzz}
mkdir -p "$LOG"
nice -n 19 cargo build --release --locked --test fuzz_http --test fuzz_wire 2>&1 | tail -1
export SLIMSERVE_FUZZ_CASES=$CASES
t0=$(date +%s)
(nice -n 19 cargo test --release --locked --test fuzz_http -- --nocapture --test-threads 1 >"$LOG/http.log" 2>&1; echo $? >"$LOG/http.rc") &
(nice -n 19 cargo test --release --locked --test fuzz_wire -- --nocapture --test-threads 1 >"$LOG/wire.log" 2>&1; echo $? >"$LOG/wire.rc") &
wait
# With --nocapture a target's line may follow its "test ... " prefix: match anywhere.
grep -ho 'fuzz [a-z_]*: [0-9]* cases, [0-9]* panics.*' "$LOG"/http.log "$LOG"/wire.log
total=$(grep -ho 'fuzz [a-z_]*: [0-9]* cases, 0 panics' "$LOG"/http.log "$LOG"/wire.log | awk '{s += $3} END {print s}')
echo "total: $total cases in $(( $(date +%s) - t0 )) s; exit codes http=$(cat "$LOG/http.rc") wire=$(cat "$LOG/wire.rc")"
[ "$(cat "$LOG/http.rc")" = 0 ] && [ "$(cat "$LOG/wire.rc")" = 0 ]
