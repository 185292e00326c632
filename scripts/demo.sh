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

. scripts/lib.sh
require_cargo

step "redis-server (zone leases and snapshots)"
install_deb redis-server redis-server "the demo will run ONE standalone node, not the cluster"
echo "$(redis-server --version 2>/dev/null | cut -d' ' -f1-3 || echo 'redis-server missing')"

step "build (cargo build --release -p equilibrium)"
cargo build --release -p equilibrium

step "equilibrium demo $*"
exec target/release/equilibrium demo "$@"
