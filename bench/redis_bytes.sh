#!/usr/bin/env bash
# Redis bytes per zone-group snapshot at `peak`: the sim's event connections as idempotent
# producers (PRODUCER_BATCH, the default) against the plain per-event-id dedupe path
# (`--plain-events`, EVENT_BATCH), each against a fresh 3-node cluster with a real
# redis-server (`equilibrium demo --keep`). Prints, per mode, the group keys
# (`<prefix>:snap:<group>`, one hash per zone group, one field per zone) and their size: Redis's
# MEMORY USAGE of the key and the sum of its fields' payloads (HSTRLEN), median and max, then
# the ratio of the medians.
#
#   bench/redis_bytes.sh [DURATION_S]       (default 60: the plain path's dedupe window)
#
# Needs redis-server and redis-cli. Builds the release binary unless EQ_NO_BUILD is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/equilibrium"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
    || { echo "redis-server and redis-cli are required" >&2; exit 2; }
[ -n "${EQ_NO_BUILD:-}" ] || cargo build --release -p equilibrium --bin equilibrium

# One run: a fresh cluster, the peak scenario with the given extra sim flags, then the
# group keys measured. Prints "mode keys=… memory_usage_median=… …".
run() {
    local mode=$1; shift
    local out; out=$(mktemp -d /tmp/eq-redis-bytes.XXXXXX)
    "$BIN" demo --keep --seconds 3 --users 50 --out "$out" >"$out/demo.log" 2>&1 &
    local demo=$!
    trap 'kill -INT $demo 2>/dev/null || true' RETURN
    for _ in $(seq 1 240); do
        grep -q "keeps running" "$out/demo.log" && break
        kill -0 $demo 2>/dev/null || { cat "$out/demo.log" >&2; return 1; }
        sleep 0.5
    done
    grep -q "keeps running" "$out/demo.log" || { echo "the demo cluster did not start" >&2; return 1; }
    grep -q "THIS IS NOT THE CLUSTER DEMO" "$out/demo.log" && { echo "no Redis: standalone node" >&2; return 1; }
    # The demo prints how to reach it: the tokens and the sim command line.
    eval "$(grep -E '^\s*export EQUILIBRIUM_' "$out/demo.log" | sed 's/^ *//')"
    local sim; sim=$(grep -E '^\s*equilibrium sim run' "$out/demo.log" | sed 's/^ *equilibrium //')
    local redis_pid; redis_pid=$(pgrep -P $demo -x redis-server | head -1)
    # redis-server rewrites its command line to "redis-server HOST:PORT".
    local port; port=$(tr '\0' ' ' </proc/"$redis_pid"/cmdline | grep -oE ':[0-9]+' | head -1 | tr -d :)
    # shellcheck disable=SC2086
    "$BIN" $sim --duration "$DURATION" --quiet "$@" >"$out/sim.log" 2>&1 || { tail -20 "$out/sim.log" >&2; return 1; }
    sleep 3 # a few snapshot intervals: every dirty group is written
    local usage=() payload=() fields=()
    while read -r key; do
        [ -n "$key" ] || continue
        usage+=("$(redis-cli -p "$port" MEMORY USAGE "$key" SAMPLES 0)")
        fields+=("$(redis-cli -p "$port" HLEN "$key")")
        payload+=("$(redis-cli -p "$port" EVAL "local t=0 for _,f in ipairs(redis.call('HKEYS',KEYS[1])) do t=t+redis.call('HSTRLEN',KEYS[1],f) end return t" 1 "$key")")
    done < <(redis-cli -p "$port" --scan --pattern '*:snap:*')
    stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1; s+=$1} END {printf "median=%d max=%d mean=%d", a[int((NR+1)/2)], a[NR], s/NR}'; }
    echo "$mode group_keys=${#usage[@]} memory_usage_bytes[$(stats "${usage[@]}")] payload_bytes[$(stats "${payload[@]}")] zones_per_group[$(stats "${fields[@]}")] sim=[$(grep -E 'events' "$out/sim.log" | head -1 | tr -s ' ')]"
}

producers=$(run producers)
echo "$producers"
plain=$(run plain --plain-events)
echo "$plain"
median() { sed -E "s/.*$1\[median=([0-9]+).*/\1/" <<<"$2"; }
awk -v p="$(median memory_usage_bytes "$producers")" -v q="$(median memory_usage_bytes "$plain")" \
    -v pp="$(median payload_bytes "$producers")" -v qp="$(median payload_bytes "$plain")" \
    'BEGIN {printf "plain/producers: memory_usage median %.1fx, payload median %.1fx\n", q/p, qp/pp}'
