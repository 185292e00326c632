#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine of this project's kind.
#
#   ./scripts/test.sh
#
# 1. installs what the tests need and the machine lacks: aioquic from PyPI (Python client
#    test), and from Debian packages redis-server (cluster lease tests) and prometheus, for
#    its promtool (the metrics exposition and the alert rules are checked with it);
# 2. checks formatting and lints (clippy, warnings are errors);
# 3. runs every test: unit, property, integration (real actor system, real node processes
#    over real QUIC, a Python client written from PROTOCOL.md), and
#    every criterion benchmark once in test mode, so benchmarks cannot rot.
#
# Everything builds with the release profile once and reuses it (2-core machines are slow).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
require_cargo

step "test dependencies"
# The Python client test (clients/python) needs aioquic from PyPI.
if command -v python3 >/dev/null 2>&1; then
    if ! python3 -c "import aioquic" >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check aioquic
    fi
    echo "python3 $(python3 -c 'import aioquic; print("with aioquic", aioquic.__version__)')"
else
    echo "python3 not found: the Python client test will fail; install python3 and pip" >&2
fi

# The cluster's Redis tests need redis-server (Debian package), started by the tests themselves.
install_deb redis-server redis-server "the Redis tests will fail"
echo "$(redis-server --version 2>/dev/null | cut -d' ' -f1-3 || echo 'redis-server missing')"

# The metrics tests check a live node's /metrics and configs/alerts.yml with promtool, which the
# Debian package `prometheus` provides. Installing it does not start a Prometheus server
# without an init system (invoke-rc.d declines), and the tests need none.
install_deb promtool prometheus "the promtool checks will be SKIPPED" --no-install-recommends
echo "$(promtool --version 2>/dev/null | head -1 || echo 'promtool missing')"

step "formatting"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "rustfmt not installed; skipping the format check"
fi

step "lints"
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --release -- -D warnings
else
    echo "clippy not installed; skipping lints"
fi

step "tests and benchmarks (test mode)"
cargo test --workspace --release --all-targets
cargo test --workspace --release --doc
