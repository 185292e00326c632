#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine of this project's kind.
#
#   ./scripts/test.sh
#
# 1. installs what the tests need and the machine lacks (today: nothing beyond the Rust
#    toolchain; later suites add redis-server and promtool from Debian packages here);
# 2. checks formatting and lints (clippy, warnings are errors);
# 3. runs every test: unit, property, integration (real actor system, real binary), and
#    every criterion benchmark once in test mode, so benchmarks cannot rot.
#
# Everything builds with the release profile once and reuses it (2-core machines are slow).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

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
