#!/usr/bin/env bash
# `make ab OLD=<rev>`: this checkout against an older revision, interleaved in one run — the only
# fair comparison on a machine whose speed drifts within the hour. Builds both (the old one in a
# git worktree; release binaries copied out, since both share CARGO_TARGET_DIR), then runs, for
# each round, old then new in odd rounds and new then old in even ones (ABBA): the segment codec bench (criterion), the shard writer bench, the
# point-in-time bench, and three load phases of the HTTP load generator (the new one, against
# each side's server on a fresh file store). Raw output in $AB_OUT (default ./ab-results), one
# file per side, bench and round; a summary table of the load phases on stdout.
#
# Then, unless AB_BASELINE=0, the storage baseline of `make loadtest` on Keepsake's side only
# (each side's own `keepsake-loadgen baseline`, which embeds that side's log: durable appends,
# bytes per event, one user's reads; PostgreSQL does not change between the sides).
#
# AB_ROUNDS (default 2), AB_SECS (seconds per load phase, default 15), AB_PIT_USERS (the
# point-in-time bench's fleet, default 2000: its fleet restore dominates its run time),
# AB_BENCHES (default "codec writer point_in_time"), AB_LOAD=0 to skip the load phases,
# AB_BASELINE=0 to skip the baseline, AB_BASELINE_EVENTS (default 500000, as make loadtest),
# AB_KEEP_BINS=1 to keep both sides' binaries in $AB_OUT/old-bin and new-bin.
set -euo pipefail

OLD=${1:-${OLD:-}}
[ -n "$OLD" ] || { echo "usage: infra/ab.sh OLD_REV (or make ab OLD=rev)" >&2; exit 2; }
ROUNDS=${AB_ROUNDS:-2}
SECS=${AB_SECS:-15}
PIT_USERS=${AB_PIT_USERS:-2000}
BENCHES=${AB_BENCHES:-codec writer point_in_time}
LOAD=${AB_LOAD:-1}
BASELINE=${AB_BASELINE:-1}
BASELINE_EVENTS=${AB_BASELINE_EVENTS:-500000}
: "${CARGO_TARGET_DIR:=$HOME/.cache/keepsake-target}"
export CARGO_TARGET_DIR
OUT=${AB_OUT:-$PWD/ab-results}
ROOT=$(git rev-parse --show-toplevel)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keepsake-ab.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    git -C "$ROOT" worktree remove --force "$WORK/old-src" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Both sides share CARGO_TARGET_DIR (the dependencies are built once), but cargo hashes a
# workspace crate by its path inside the workspace, so the two sides' crates share names there:
# each side's crates are cleaned before it builds, and its binaries copied out after.
clean_members() {
    local src=$1
    local members
    members=$(cd "$src" && cargo metadata --no-deps --format-version 1 | jq -r '.packages[].name')
    for m in $members; do
        (cd "$src" && cargo clean --release -q -p "$m")
    done
}

# build SRC DEST: release server and load generator, and the three bench executables.
build() {
    local src=$1 dest=$2
    mkdir -p "$dest"
    clean_members "$src"
    (cd "$src" && cargo build --release -q -p keepsake -p keepsake-loadgen)
    cp "$CARGO_TARGET_DIR/release/keepsake" "$CARGO_TARGET_DIR/release/keepsake-loadgen" "$dest/"
    for spec in keepsake-segment:codec keepsake-log:writer keepsake:point_in_time; do
        local pkg=${spec%%:*} bench=${spec##*:}
        local exe
        exe=$(cd "$src" && cargo bench --no-run -q -p "$pkg" --bench "$bench" --message-format=json 2>/dev/null |
            jq -r "select(.reason == \"compiler-artifact\" and .target.name == \"$bench\" and .executable != null) | .executable" | tail -1)
        [ -n "$exe" ] || { echo "no executable for $pkg --bench $bench in $src" >&2; exit 1; }
        cp "$exe" "$dest/bench-$bench"
    done
    clean_members "$src"
}

echo "== building $OLD (old) in a worktree"
git -C "$ROOT" worktree add --detach -f "$WORK/old-src" "$OLD" >/dev/null
build "$WORK/old-src" "$WORK/old"
echo "== building this checkout (new)"
build "$ROOT" "$WORK/new"
LOADGEN=$WORK/new/keepsake-loadgen
if [ "${AB_KEEP_BINS:-0}" = 1 ]; then
    # Both sides' binaries outlive the run, for a follow-up probe of one bench or server.
    rm -rf "$OUT/old-bin" "$OUT/new-bin"
    cp -r "$WORK/old" "$OUT/old-bin"
    cp -r "$WORK/new" "$OUT/new-bin"
fi

# load SIDE ROUND: a fresh server of that side, three load phases.
load() {
    local side=$1 round=$2 port admin=ab-operator-token-$RANDOM$RANDOM
    port=$(free_port)
    KEEPSAKE_STORE=$WORK/data-$side-$round KEEPSAKE_LISTEN=127.0.0.1:$port KEEPSAKE_ADMIN_TOKEN=$admin \
        KEEPSAKE_LOG=warn "$WORK/$side/keepsake" serve 2>"$OUT/$side-server-$round.log" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local gen=("$LOADGEN" http --url "http://127.0.0.1:$port" --admin-token "$admin" --duration "$SECS" --warmup 2)
    "${gen[@]}" --label push-max --push-share 1 --handsets 32 --users 32 --seed 1 \
        --report "$OUT/$side-push-max-$round.json" >/dev/null
    "${gen[@]}" --label pull-warm --push-share 0.02 --changes-per-push 10 --long-poll-share 0 \
        --handsets 64 --users 32 --seed 3 --report "$OUT/$side-pull-warm-$round.json" >/dev/null
    "${gen[@]}" --label mixed --handsets 64 --users 32 --seed 4 \
        --report "$OUT/$side-mixed-$round.json" >/dev/null
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
    rm -rf "$WORK/data-$side-$round"
}

for round in $(seq 1 "$ROUNDS"); do
    # ABBA: odd rounds run old first, even rounds new first, so that a side that gains from
    # going first (or second: caches, the disk's state) gains in both.
    sides="old new"
    [ $((round % 2)) = 0 ] && sides="new old"
    for side in $sides; do
        echo "== round $round, $side: $(date -u +%H:%M:%S)"
        for bench in $BENCHES; do
            case $bench in
                codec) args=(--bench) ;;
                *) args=() ;;
            esac
            (cd "$WORK" && KEEPSAKE_PIT_USERS=$PIT_USERS "$WORK/$side/bench-$bench" "${args[@]}" \
                >"$OUT/$side-$bench-$round.txt" 2>&1)
        done
        [ "$LOAD" = 0 ] || load "$side" "$round"
        if [ "$BASELINE" != 0 ]; then
            mkdir -p "$WORK/baseline-$side-$round"
            "$WORK/$side/keepsake-loadgen" baseline --dir "$WORK/baseline-$side-$round" \
                --events "$BASELINE_EVENTS" --report "$OUT/$side-baseline-$round.json" \
                >"$OUT/$side-baseline-$round.txt" 2>&1
            rm -rf "$WORK/baseline-$side-$round"
        fi
    done
done

[ "$BASELINE" = 0 ] || python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("baseline (Keepsake side): appends events/s, ack p99 ms, bytes/event, read user p50 ms, as-of p50 ms, per round")
for side in ["old", "new"]:
    cells = []
    for r in range(1, rounds + 1):
        k = json.load(open(f"{out}/{side}-baseline-{r}.json"))["keepsake"]
        cells.append(f"{k['append']['events_per_s']:9.0f} ev/s p99 {k['append']['ack_p99_ms']:6.1f}"
                     f" | {k['bytes_per_event']:6.1f} B/ev | read {k['read_user']['p50_ms']:6.1f}"
                     f" | as-of {k['as_of']['p50_ms']:6.1f}")
    print(f"{side:<4} " + "  ||  ".join(cells))
PY

[ "$LOAD" = 0 ] || python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("load phases: requests/s and changes/s, then p99 ms of each kind of request, per round")
for phase in ["push-max", "pull-warm", "mixed"]:
    for side in ["old", "new"]:
        cells = []
        for r in range(1, rounds + 1):
            rep = json.load(open(f"{out}/{side}-{phase}-{r}.json"))
            p99 = " ".join(f"{k} {v['p99_ms']:.1f}" for k, v in sorted(rep["ops"].items()))
            cells.append(f"{rep['requests_per_s']:8.1f} req/s {rep['changes_per_s']:9.1f} ch/s | {p99}")
        print(f"{phase:<10} {side:<4} " + "  ||  ".join(cells))
PY
echo "raw output in $OUT"
