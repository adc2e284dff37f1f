#!/usr/bin/env bash
# `make loadtest`: a fresh release server on a file store (fsync on), the load generator in four
# phases, then the storage baseline against PostgreSQL (installed from Debian's packages when
# missing and possible, started on 127.0.0.1 only, stopped and removed afterwards).
#
# Results: one JSON report per phase in $LOADTEST_OUT (default ./loadtest-results), tables on
# stdout. LOADTEST_SECS (measured seconds per phase, default 20), LOADTEST_EVENTS (baseline
# events, default 500000) and LOADTEST_SKIP_PG=1 change the run.
set -euo pipefail

OUT=${LOADTEST_OUT:-$PWD/loadtest-results}
SECS=${LOADTEST_SECS:-20}
EVENTS=${LOADTEST_EVENTS:-500000}
: "${CARGO_TARGET_DIR:=$HOME/.cache/keepsake-target}"
export CARGO_TARGET_DIR
BIN=$CARGO_TARGET_DIR/release
ADMIN=loadtest-operator-token-$(date +%s)-$RANDOM
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keepsake-loadtest.XXXXXX)
SERVER_PID=
PG_CTL=
PGDATA=

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$PG_CTL" ] && [ -n "$PGDATA" ]; then
        as_pg "$PG_CTL" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release -p keepsake -p keepsake-loadgen

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
echo "== server: file store in $WORK/data, $URL"
KEEPSAKE_STORE=$WORK/data KEEPSAKE_LISTEN=127.0.0.1:$PORT KEEPSAKE_ADMIN_TOKEN=$ADMIN \
    KEEPSAKE_LOG=warn,keepsake::server=info "$BIN/keepsake" serve 2>"$OUT/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server stopped; see $OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "$URL/readyz" >/dev/null

LOADGEN=("$BIN/keepsake-loadgen" http --url "$URL" --duration "$SECS" --warmup 2)
export KEEPSAKE_ADMIN_TOKEN=$ADMIN

echo "== phase 1: pushes of 100 changes, closed loop (the most the server sustains)"
"${LOADGEN[@]}" --label push-max --push-share 1 --handsets 32 --users 32 --seed 1 \
    --report "$OUT/push-max.json"

# Half of the sustained change rate, as pushes per second (every push carries 100 changes).
HALF=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["changes_per_s"] / 100 / 2, 1))' "$OUT/push-max.json")
echo "== phase 2: pushes of 100 changes, open loop at half that rate ($HALF pushes/s)"
"${LOADGEN[@]}" --label push-half --push-share 1 --handsets 64 --users 32 --seed 2 --rate "$HALF" \
    --report "$OUT/push-half.json"

echo "== phase 3: warm pulls (two handsets per user; 2% small pushes so that there is news)"
"${LOADGEN[@]}" --label pull-warm --push-share 0.02 --changes-per-push 10 --long-poll-share 0 \
    --handsets 64 --users 32 --seed 3 --report "$OUT/pull-warm.json"

echo "== phase 4: the default mix (pushes with patches, deletes, stale versions and retries; pulls; long polls)"
"${LOADGEN[@]}" --label mixed --handsets 64 --users 32 --seed 4 --report "$OUT/mixed.json"

echo "== phase 5: the bill of a million active users (10 pushes of 3 changes and 50 pulls a day each)"
# --compact false: this store holds the earlier phases' log, which a compaction would fold into
# the run's figures; docs/BENCHMARKS.md ("The bill") measures kept bytes on a store of its own.
"$BIN/keepsake-loadgen" cost --url "$URL" --duration "$SECS" --warmup 2 --store "$WORK/data" \
    --compact false --seed 5 --report "$OUT/cost.json"

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=

if [ "${LOADTEST_SKIP_PG:-0}" = 1 ]; then
    echo "== PostgreSQL baseline skipped (LOADTEST_SKIP_PG=1)"
    "$BIN/keepsake-loadgen" baseline --dir "$WORK" --events "$EVENTS" --report "$OUT/baseline.json"
    exit 0
fi

INITDB=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$INITDB" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing PostgreSQL from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
        INITDB=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)
    fi
fi
if [ -z "$INITDB" ]; then
    echo "== PostgreSQL is not installed and cannot be installed here: Keepsake side only" >&2
    "$BIN/keepsake-loadgen" baseline --dir "$WORK" --events "$EVENTS" --report "$OUT/baseline.json"
    exit 0
fi
PG_CTL=$(dirname "$INITDB")/pg_ctl
PGDATA=$WORK/pg
PGPORT=$(free_port)
mkdir -p "$PGDATA" "$WORK/pgsock"
if [ "$(id -u)" = 0 ]; then chown -R postgres "$WORK"; chmod 755 "$WORK"; fi
echo "== PostgreSQL $("$INITDB" --version | awk '{print $NF}') in $PGDATA on 127.0.0.1:$PGPORT (synchronous_commit = on, fsync = on)"
as_pg "$INITDB" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$PG_CTL" -D "$PGDATA" -l "$WORK/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$WORK/pgsock -c synchronous_commit=on -c fsync=on -c shared_buffers=1GB -c max_wal_size=4GB -c max_connections=600" \
    start >/dev/null
# Keepsake's store goes in the same directory as Postgres's data: the same disk for both.
"$BIN/keepsake-loadgen" baseline --pg "host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres" \
    --dir "$WORK" --events "$EVENTS" --report "$OUT/baseline.json"
