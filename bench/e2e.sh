#!/usr/bin/env bash
# End-to-end load benchmark: node + load generator + baselines on this machine, one run.
#   bench/e2e.sh [--seconds N] [--in-flight N]
# Installs redis-server/redis-benchmark (Debian) for the Redis baseline when missing and
# possible; without them that baseline is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-benchmark >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools) >/dev/null 2>&1 \
        || echo "could not install redis-server; the Redis baseline will be skipped" >&2
fi
cargo build --release -p equilibrium -p bench --bin equilibrium --bin e2e
exec target/release/e2e "$@"
