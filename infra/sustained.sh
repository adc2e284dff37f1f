#!/usr/bin/env bash
# A sustained run: a fresh release server on a file store, one load-generator phase for
# SUSTAINED_SECS (default 120), and the server's committed events per second, view misses,
# evictions and view bytes sampled from /metrics every 10 s — what the 10 s phases of
# `make loadtest` cannot show (checkpoints, compaction, the view budget filling up).
#
# SUSTAINED_SERVER_ENV: extra server settings, e.g. "KEEPSAKE_VIEW_MEMORY_MB=8192".
# SUSTAINED_LOADGEN_ARGS: the phase (default: the default mix, 64 handsets of 32 users).
# JSON report: $LOADTEST_OUT/sustained.json (default ./loadtest-results).
set -euo pipefail

cargo build --release -p keepsake -p keepsake-loadgen

SECS=${SUSTAINED_SECS:-120}
OUT=${LOADTEST_OUT:-$PWD/loadtest-results}
mkdir -p "$OUT"
: "${CARGO_TARGET_DIR:=$HOME/.cache/keepsake-target}"
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/keepsake-sustained.XXXXXX)
ADMIN=sustained-operator-token-$(date +%s)-$RANDOM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
SERVER_PID=
LOADGEN_PID=
cleanup() {
    [ -n "$LOADGEN_PID" ] && kill "$LOADGEN_PID" 2>/dev/null || true
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # the settings are words on purpose
env ${SUSTAINED_SERVER_ENV:-} KEEPSAKE_STORE="$WORK/data" KEEPSAKE_LISTEN="127.0.0.1:$PORT" \
    KEEPSAKE_ADMIN_TOKEN="$ADMIN" KEEPSAKE_LOG=warn "$BIN/keepsake" serve 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$URL/readyz" >/dev/null

# shellcheck disable=SC2086
KEEPSAKE_ADMIN_TOKEN=$ADMIN "$BIN/keepsake-loadgen" http --url "$URL" --duration "$SECS" --warmup 2 \
    --label sustained ${SUSTAINED_LOADGEN_ARGS:---handsets 64 --users 32 --seed 9} \
    --report "$OUT/sustained.json" >"$WORK/loadgen.log" 2>&1 &
LOADGEN_PID=$!

metric() { curl -fsS "$URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
echo "seconds  events/s  view_misses  view_evictions  view_MiB"
prev=$(metric keepsake_segment_events_total)
for i in $(seq 1 $((SECS / 10))); do
    sleep 10
    now=$(metric keepsake_segment_events_total)
    printf '%7d  %8d  %11s  %14s  %8d\n' $((i * 10)) $(((now - prev) / 10)) \
        "$(metric keepsake_view_misses_total)" "$(metric keepsake_view_evictions_total)" \
        $(($(metric keepsake_view_bytes) / 1048576))
    prev=$now
done
wait "$LOADGEN_PID" || true
LOADGEN_PID=
tail -n +2 "$WORK/loadgen.log"
