#!/bin/sh
# run-tests.sh BKR [SPEC...] - run the busted specs inside the BKR binary against a throwaway
# PostgreSQL cluster that is started first and always stopped and removed afterwards.
# Ends with the line "N passed, N failed"; exits non-zero if any test failed.
set -eu
cd "$(dirname "$0")/.."
bkr=$(realpath "$1")
shift
[ -x "$bkr" ] || { echo "run-tests: $bkr is not built (make)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/bkr-test.XXXXXX")
chmod 0755 "$work"   # the server runs as postgres and must reach its directory
cleanup() {
    scripts/pg-throwaway.sh stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

eval "$(scripts/pg-throwaway.sh start "$work/pg")"
export BKR_BIN="$bkr" BKR_TEST_TMP="$work" BKR_SOURCE_DIR="$(pwd)"
unset BKR_RECIPE_PATH
[ $# -gt 0 ] || set -- tests
"$bkr" run tests/runner.lua -o tests/support/summary_output.lua --pattern=_spec "$@"
