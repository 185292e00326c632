#!/usr/bin/env bash
# One hot zone: 5,000 events a second for one zone through a real node (idempotent
# producer), the refusals counted, and the event-batch latency (p50, p99) of the other zones
# of its shard alone and beside it. Runs equilibrium/tests/hot_zone.rs and prints its figures.
#
#   bench/hot_zone.sh [RUNS]     (default 1; each run prints its own two lines)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
for _ in $(seq 1 "$RUNS"); do
    cargo test --release -q -p equilibrium --test hot_zone -- --nocapture 2>&1 \
        | grep -E "^(hot zone|other zones|zones of)|test result|panicked"
done
