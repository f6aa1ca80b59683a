#!/bin/sh
# fresh_machine.sh [ROOT] - the README's two commands on a new Debian 12 root, twice in a row.
#
# Builds a new root with the workplace's fresh-machine tool (mmdebstrap: compilers, PostgreSQL
# 15 with its -dev packages, git, python3, little else), clones this repository's committed
# main into it, and runs `make demo` then `make test` as a new user would, as root. Then runs
# both again on the machine the first pass left behind. Any package the build, the demo or
# the tests use but scripts/install-deps.sh does not declare fails here, while a green CI
# on a machine that once had it installed by hand would hide it.
#
# Not part of `make test` (it needs root, mmdebstrap and about 15 minutes). Run it before
# resolving any change that adds a dependency or a tool a test calls; commit first.
#   FRESH_MACHINE_TOOL  the tool (default ../shared/tools/fresh-machine.sh)
#   ROOT                where the root goes (default /tmp/bkr-fresh; removed first)
set -eu
cd "$(dirname "$0")/.."
tool=${FRESH_MACHINE_TOOL:-../shared/tools/fresh-machine.sh}
root=${1:-/tmp/bkr-fresh}
[ -x "$tool" ] || { echo "fresh_machine: no fresh-machine tool at $tool (set FRESH_MACHINE_TOOL)" >&2; exit 2; }
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "fresh_machine: uncommitted changes are not tested (it clones main)" >&2
rm -rf "$root"
"$tool" build "$root"
for pass in 1 2; do
    echo "== pass $pass: make demo, make test"
    log=$root.pass$pass.log
    if "$tool" run "$root" . 'make demo' 'make test' >"$log" 2>&1; then
        echo "pass $pass: $(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)  (log: $log)"
    else
        tail -n 40 "$log"
        echo "pass $pass FAILED (log: $log)" >&2
        exit 1
    fi
done
