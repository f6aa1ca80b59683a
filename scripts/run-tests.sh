#!/bin/sh
# run-tests.sh [-b BKR]... [SPEC...]  (or: run-tests.sh BKR [SPEC...]) - run the busted specs inside each BKR binary (default
# ./bkr) against one throwaway PostgreSQL cluster, started first and always stopped and
# removed afterwards. Ends with the line "N passed, N failed" (over every binary); exits
# non-zero if any test failed.
set -eu
cd "$(dirname "$0")/.."
binaries=""
while [ $# -gt 0 ] && [ "$1" = "-b" ]; do
    [ -x "$2" ] || { echo "run-tests: $2 is not built (make)" >&2; exit 2; }
    binaries="$binaries $(realpath "$2")"
    shift 2
done
# The short form: run-tests.sh BKR [SPEC...]
if [ -z "$binaries" ] && [ $# -gt 0 ] && [ -f "$1" ] && [ -x "$1" ]; then
    binaries=$(realpath "$1")
    shift
fi
[ -n "$binaries" ] || binaries=$(realpath ./bkr)

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
export BKR_TEST_TMP="$work" BKR_SOURCE_DIR="$(pwd)" BKR_TEST_SUMMARY="$work/summary"
unset BKR_RECIPE_PATH
[ $# -gt 0 ] || set -- tests

passed=0 failed=0 status=0
for bkr in $binaries; do
    echo "=== specs under $(basename "$bkr")"
    : > "$BKR_TEST_SUMMARY"
    # The specs run bkr as postgres too (the documented operating user), and a checkout under
    # /root (mode 0700) is out of its reach: each binary runs from a copy in the test directory,
    # with the built-in recipes beside it, as an installed bkr has them.
    stage="$work/bin-$(basename "$bkr")"
    mkdir -p "$stage" && cp "$bkr" "$stage/bkr" && cp -R recipes "$stage/recipes" && chmod -R a+rX "$stage"
    BKR_BIN="$stage/bkr" "$bkr" run tests/runner.lua -o tests/support/summary_output.lua --pattern=_spec "$@" || status=1
    read -r p f < "$BKR_TEST_SUMMARY" || { p=0; f=1; }
    passed=$((passed + p)) failed=$((failed + f))
done
echo
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
