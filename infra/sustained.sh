#!/usr/bin/env bash
# A sustained run (issue 15): a fresh release server on a file store, one load-generator phase
# for SUSTAINED_SECS (default 1800: 30 minutes), and, every SUSTAINED_EVERY seconds (default
# 60), the server's committed events per second, checkpoint work done (count, seconds, seconds
# shards waited for an upkeep turn, and MB written, all so far), checkpoint PUTs and
# compaction work done, view misses and evictions, view bytes, what upkeep holds (the views
# give way to it), the indexes beside the view
# (`keepsake_view_index_bytes`), how far the process was over its resident limit at the server's
# last reading (`keepsake_resident_excess_bytes`; the views give way by the excesses of the
# readings since it was last within, added up), what the allocator has handed out, holds resident and keeps in
# the threads' own caches, and the
# server's resident memory, from /metrics and /proc; and the cores (CPU seconds a second) the
# server, its upkeep threads and the load generator used in the interval, from /proc.
# At the end, the load generator's own table, with the server's committed events per second in
# each interval of the measured time (read on a schedule from its start: `--sample-every`), and
# the slowest interval against the median (the target: the slowest minute at least 80% of the
# median one), and the server's peak resident memory as the kernel counted it. The rows
# printed during the run are for context: they are read by this script, whose start is up to a
# second off the load's.
#
# The default load is the issue's: pushes over 100,000 users (250 connections, each standing
# for 400 devices of 400 users in turn, `--devices-per-handset`), 10 changes a push, each
# device's items capped at 20 so states stop growing, open loop at 1,000 pushes/s (10,000
# events/s: a rate this 2-core machine holds, so that a falling interval shows the server
# slowing, not a client saturating it).
#
# SUSTAINED_SERVER_ENV: extra server settings, e.g. "KEEPSAKE_VIEW_MEMORY_MB=4096".
# SUSTAINED_LOADGEN_ARGS: the phase instead of the default above.
# SUSTAINED_FEATURES: cargo features of the server's build, e.g. "keepsake/heap-profile" (with
#   SUSTAINED_SERVER_ENV="_RJEM_MALLOC_CONF=prof:true,..." for jemalloc's heap profiles).
# JSON report: $LOADTEST_OUT/sustained.json (default ./loadtest-results).
set -euo pipefail

cargo build --release -p keepsake -p keepsake-loadgen ${SUSTAINED_FEATURES:+--features "$SUSTAINED_FEATURES"}

SECS=${SUSTAINED_SECS:-1800}
EVERY=${SUSTAINED_EVERY:-60}
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
        # Its log again, whole: what it wrote as it stopped (jemalloc's `stats_print:true`) too.
        cp "$WORK/server.log" "$OUT/server.log" 2>/dev/null || true
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
    --label sustained --sample-every "$EVERY" ${SUSTAINED_LOADGEN_ARGS:---handsets 250 --devices-per-handset 400 --users 100000 --push-share 1 --changes-per-push 10 --items-per-handset 20 --rate 1000 --seed 9} \
    --report "$OUT/sustained.json" >"$WORK/loadgen.log" 2>&1 &
LOADGEN_PID=$!

# Sampling starts with the load, once the load generator has registered its devices (100,000
# take a minute or two), and after its 2 s of warm-up.
until grep -q "load starts" "$WORK/loadgen.log" 2>/dev/null; do
    kill -0 "$LOADGEN_PID" 2>/dev/null || { cat "$WORK/loadgen.log" >&2; exit 1; }
    sleep 1
done
grep "load starts" "$WORK/loadgen.log"
sleep 2

metric() { curl -fsS "$URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# The sum of a metric's samples whose labels contain $2 (e.g. cause="checkpoint",op="put").
labelled() { curl -fsS "$URL/metrics" | awk -v m="$1" -v l="$2" 'index($1, m "{") == 1 && index($1, l) { s += $2 } END { print s + 0 }'; }
rss_mib() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0; }
# CPU time (user + system, in clock ticks) of a process or thread's stat file: with it, how many
# of the machine's cores the server, its upkeep thread and the load generator each used in an
# interval (a falling minute on a busy machine: the server's own work per event, or less CPU).
TICKS=$(getconf CLK_TCK)
ticks() {
    local t
    t=$(sed 's/.*) //' "$1" 2>/dev/null | awk '{ print $12 + $13 }')
    echo "${t:-0}"
}
# The upkeep runtime's threads (its own and the blocking threads it starts share the name
# keepsake-upkeep; they come and go), as tid=ticks words: a thread seen in both samples counts
# what it used between them, a new one all it used; one that ended in between is not counted.
# A process that ended within the interval (the load generator at the last row) shows "-".
upkeep_ticks() {
    local f
    for f in $(grep -l '^keepsake-upkeep$' /proc/"$SERVER_PID"/task/*/comm 2>/dev/null); do
        echo "$(basename "$(dirname "$f")")=$(ticks "${f%comm}stat")"
    done | tr '\n' ' '
}
upkeep_cores() {
    awk -v p="$1" -v n="$2" -v s="$3" -v k="$TICKS" 'BEGIN {
        m = split(p, a, " "); for (i = 1; i <= m; i++) { split(a[i], kv, "="); old[kv[1]] = kv[2] }
        m = split(n, b, " "); d = 0
        for (i = 1; i <= m; i++) { split(b[i], kv, "="); u = kv[2] - ((kv[1] in old) ? old[kv[1]] : 0); if (u > 0) d += u }
        printf "%.2f", d / k / s }'
}
cpu_now() { echo "$(ticks /proc/"$SERVER_PID"/stat) $(ticks /proc/"$LOADGEN_PID"/stat)"; }
echo "seconds  events/s  checkpoints  checkpoint_s  turn_wait_s  checkpoint_MB  checkpoint_PUTs  compacted_segments  view_misses  view_evictions  view_MiB  upkeep_MiB  index_MiB  excess_MiB  allocated_MiB  allocator_resident_MiB  thread_cached_MiB  RSS_MiB  server_cores  upkeep_cores  loadgen_cores  allocator_active_MiB  allocator_dirty_MiB"
now_s() { date +%s.%N; }
start=$(now_s)
prev=$(metric keepsake_segment_events_total)
prev_t=$start
prev_cpu=$(cpu_now)
prev_upkeep=$(upkeep_ticks)
for i in $(seq 1 $((SECS / EVERY))); do
    # On a schedule from the start: a pass's reads do not make the next one later.
    sleep "$(awk -v s="$start" -v i="$i" -v e="$EVERY" -v n="$(now_s)" 'BEGIN { w = s + i * e - n; printf "%.3f", (w > 0 ? w : 0) }')"
    now_t=$(now_s)
    now=$(metric keepsake_segment_events_total)
    rate=$(awk -v a="$prev" -v b="$now" -v s="$prev_t" -v t="$now_t" 'BEGIN { printf "%d", (b - a) / (t - s) }')
    now_cpu=$(cpu_now)
    now_upkeep=$(upkeep_ticks)
    interval=$(awk -v s="$prev_t" -v t="$now_t" 'BEGIN { print t - s }')
    cores=$(echo "$prev_cpu $now_cpu" | awk -v i="$interval" -v k="$TICKS" \
        -v u="$(upkeep_cores "$prev_upkeep" "$now_upkeep" "$interval")" \
        'function c(d) { return d < 0 ? "-" : sprintf("%.2f", d / k / i) } { print c($3 - $1), u, c($4 - $2) }')
    printf '%7d  %8d  %11s  %12s  %11s  %13s  %15s  %18s  %11s  %14s  %8d  %8d  %9d  %10d  %13d  %22d  %17d  %7s  %12s  %12s  %13s  %20d  %19d\n' $((i * EVERY)) "$rate" \
        "$(metric keepsake_checkpoints_total)" \
        "$(($(metric keepsake_checkpoint_microseconds_total) / 1000000))" \
        "$(($(metric keepsake_upkeep_turn_wait_microseconds_total) / 1000000))" \
        "$(($(metric keepsake_checkpoint_written_bytes_total) / 1000000))" \
        "$(labelled keepsake_store_requests_by_cause_total 'cause="checkpoint",op="put"')" \
        "$(metric keepsake_compaction_segments_total)" \
        "$(metric keepsake_view_misses_total)" "$(metric keepsake_view_evictions_total)" \
        $(($(metric keepsake_view_bytes) / 1048576)) $(($(metric keepsake_upkeep_held_bytes) / 1048576)) \
        $(($(metric keepsake_view_index_bytes) / 1048576)) \
        $(($(metric keepsake_resident_excess_bytes) / 1048576)) \
        $(($(metric keepsake_allocator_allocated_bytes) / 1048576)) \
        $(($(metric keepsake_allocator_resident_bytes) / 1048576)) \
        $(($(metric keepsake_allocator_thread_cached_bytes) / 1048576)) "$(rss_mib)" $cores \
        $(($(metric keepsake_allocator_active_bytes) / 1048576)) \
        $(($(metric keepsake_allocator_dirty_bytes) / 1048576))
    prev=$now
    prev_cpu=$now_cpu
    prev_upkeep=$now_upkeep
    prev_t=$now_t
done
wait "$LOADGEN_PID" || true
LOADGEN_PID=
tail -n +2 "$WORK/loadgen.log"
# The kernel's own high-water mark: the peak between the samples above, registration included.
awk '/^VmHWM:/ { printf "server peak resident memory (VmHWM, the whole run): %d MiB\n", $2 / 1024 }' \
    "/proc/$SERVER_PID/status"
# What held memory at each new peak over the limit, as the server told it (it logs one when its
# peak passes the last told by 8 MiB): the last ten, and the server's log kept beside the report.
cp "$WORK/server.log" "$OUT/server.log" 2>/dev/null || true
peaks=$(grep -c "new peak over its limit" "$WORK/server.log" 2>/dev/null || true)
echo "new peaks over the limit told by the server: ${peaks:-0} (the last ten below; all in $OUT/server.log)"
grep "new peak over its limit" "$WORK/server.log" 2>/dev/null | tail -n 10 | sed -e 's/^/  /' || true
