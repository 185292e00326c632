# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run).

step() { printf '\n==> %s\n' "$*"; }

require_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
        exit 1
    fi
}

# install_deb COMMAND PACKAGE CONSEQUENCE [APT OPTIONS...]: installs the Debian PACKAGE when
# COMMAND is missing and this machine can (root and apt-get); otherwise says CONSEQUENCE.
install_deb() {
    local cmd=$1 pkg=$2 consequence=$3
    shift 3
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing $cmd (Debian package $pkg)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$pkg" >/dev/null
    else
        echo "$cmd not found and cannot be installed here (needs root and apt-get): $consequence" >&2
    fi
}
