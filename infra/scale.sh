#!/usr/bin/env bash
# The scale benchmark (issue 15, item 5): `keepsake-loadgen scale` over a new file store in a
# temporary directory, which it deletes at the end (it needs about 20 GB free at a million
# users). The load generator starts, restarts and stops the release server itself.
#
# SCALE_USERS: users at 100% of the fill (default 1000000).
# SCALE_ARGS: further `keepsake-loadgen scale` flags, e.g. "--steps 10,100 --register-all false".
# SCALE_DIR: where the store goes (default: a new directory under /tmp), kept if given.
# JSON report: $LOADTEST_OUT/scale.json (default ./loadtest-results).
set -euo pipefail

cargo build --release -p keepsake -p keepsake-loadgen

OUT=${LOADTEST_OUT:-$PWD/loadtest-results}
mkdir -p "$OUT"
: "${CARGO_TARGET_DIR:=$HOME/.cache/keepsake-target}"
BIN=$CARGO_TARGET_DIR/release
if [ -n "${SCALE_DIR:-}" ]; then
    WORK=$SCALE_DIR
else
    WORK=$(mktemp -d /tmp/keepsake-scale.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi

# shellcheck disable=SC2086 # the flags are words on purpose
"$BIN/keepsake-loadgen" scale --server-bin "$BIN/keepsake" --dir "$WORK" \
    --users "${SCALE_USERS:-1000000}" --report "$OUT/scale.json" ${SCALE_ARGS:-}
