#!/usr/bin/env bash
# `make dav-profiles`: caldav-server-tester (PyPI) against Keepsake and against Radicale (PyPI),
# each started here on a fresh store and a free 127.0.0.1 port, and stopped after. Writes both
# JSON profiles to docs/dav/ (Keepsake's is the one the e2e test holds the server to) and a
# side-by-side table to docs/dav/PROFILES.md.
set -euo pipefail

: "${CARGO_TARGET_DIR:=$HOME/.cache/keepsake-target}"
V=${KEEPSAKE_DAV_CLIENTS:-$HOME/.cache/keepsake-dav-clients}
ROOT=$(git rev-parse --show-toplevel)
OUT=$ROOT/docs/dav
"$V/bin/python3" -c 'import radicale' 2>/dev/null || "$V/bin/python3" -m pip install --quiet 'radicale>=3.5,<4'
cargo build --release -q -p keepsake

WORK=$(mktemp -d /tmp/keepsake-dav-profiles.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 did not start" >&2; exit 1; }
strip_ts() { "$V/bin/python3" -c 'import json,sys; p=json.load(sys.stdin); p.pop("ts",None); p["url"]="http://127.0.0.1:PORT/"; print(json.dumps(p, indent=2, sort_keys=True))'; }

# Keepsake: the release server, one registered device.
KPORT=$(free_port)
ADMIN=profile-operator-$RANDOM$RANDOM
KEEPSAKE_STORE="$WORK/keepsake" KEEPSAKE_LISTEN=127.0.0.1:$KPORT KEEPSAKE_ADMIN_TOKEN=$ADMIN KEEPSAKE_LOG=warn \
    "$CARGO_TARGET_DIR/release/keepsake" serve 2>"$WORK/keepsake.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$KPORT/readyz"
TOKEN=$(curl -s -X POST "http://127.0.0.1:$KPORT/admin/v1/users/$(python3 -c 'import uuid; print(uuid.uuid4())')/devices" \
    -H "Authorization: Bearer $ADMIN" -d '{"name": "caldav-server-tester"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
"$V/bin/caldav-server-tester" --caldav-url "http://127.0.0.1:$KPORT/" --caldav-username tester \
    --caldav-password "$TOKEN" --format json 2>"$WORK/keepsake-tester.log" \
    | strip_ts >"$OUT/caldav-server-tester.json"

# Radicale: no authentication, a fresh collection root.
RPORT=$(free_port)
"$V/bin/python3" -m radicale --server-hosts "127.0.0.1:$RPORT" --auth-type none \
    --storage-filesystem-folder "$WORK/radicale" --logging-level warning 2>"$WORK/radicale.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$RPORT/"
"$V/bin/caldav-server-tester" --caldav-url "http://127.0.0.1:$RPORT/" --caldav-username tester \
    --caldav-password x --format json 2>"$WORK/radicale-tester.log" | strip_ts >"$OUT/caldav-server-tester-radicale.json"

"$V/bin/python3" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
k = json.load(open(f"{out}/caldav-server-tester.json"))["features"]
r = json.load(open(f"{out}/caldav-server-tester-radicale.json"))["features"]
lines = ["# caldav-server-tester: Keepsake and Radicale side by side", "",
         "Written by `make dav-profiles` (infra/dav_profiles.sh); docs/DAV.md says why Keepsake supports less where it does.",
         "A profile lists what differs from what the tester expects of a server; a feature it does not list is `full`.", "",
         "| feature | Keepsake | Radicale |", "| --- | --- | --- |"]
for f in sorted(set(k) | set(r)):
    a = k.get(f, {}).get("support", "full"); b = r.get(f, {}).get("support", "full")
    lines.append(f"| {f} | {a} | {b} |")
open(f"{out}/PROFILES.md", "w").write("\n".join(lines) + "\n")
count = lambda p, s: sum(1 for v in p.values() if v.get("support") == s)
for name, p in (("keepsake", k), ("radicale", r)):
    print(name, {s: count(p, s) for s in ("full", "quirk", "fragile", "unsupported", "ungraceful", "broken", "unknown")})
PY
