#!/usr/bin/env bash
# The demo, from a clean clone on a fresh machine:
#
#   ./scripts/demo.sh [DEMO OPTIONS]      e.g. ./scripts/demo.sh --seconds 60 --out /tmp/report
#
# 1. installs redis-server (Debian package) when it is missing and this machine can
#    (root and apt-get); without it the demo runs ONE standalone node instead of the cluster,
#    and says so loudly;
# 2. builds the binary (`cargo build --release -p equilibrium`; a few minutes the first time);
# 3. runs `target/release/equilibrium demo "$@"`: a local 3-node cluster with Redis, a city
#    replayed against it for 30 s, the SLA report (printed, and report.json + report.svg in
#    ./demo-report/), a look inside the cluster, then every process it started is stopped.
#    `equilibrium demo --help` explains the options.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

step "redis-server (zone leases and snapshots)"
if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing redis-server"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server not found and cannot be installed here (needs root and apt-get):" >&2
        echo "the demo will run ONE standalone node, not the cluster" >&2
    fi
fi
echo "$(redis-server --version 2>/dev/null | cut -d' ' -f1-3 || echo 'redis-server missing')"

step "build (cargo build --release -p equilibrium)"
cargo build --release -p equilibrium

step "equilibrium demo $*"
exec target/release/equilibrium demo "$@"
