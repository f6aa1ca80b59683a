#!/bin/sh
# install-deps.sh - install the Debian 12 packages bkr needs to build, test and run its demo.
# Installs only what is missing; needs root for that (prints the command otherwise).
set -eu
# Every package the build, `make demo` and `make test` use, tests' tools included: a package
# installed by hand on the CI machine hides a missing line here until a new machine fails.
#   build:  gcc make pkg-config liblua5.4-dev libpq-dev zlib1g-dev libssl-dev libyaml-dev
#           libcurl4-openssl-dev (notifications: SMTP and HTTP)
#   run:    lua5.4 lua-filesystem lua-dkjson postgresql postgresql-client
#   tests:  lua-busted lua-cjson (yaml and pg specs), python3 python3-cryptography python3-yaml
#           (independent decrypt and YAML reference), jq (the recovery guide's commands),
#           mount util-linux (tmpfs for full-disk tests; findmnt, dmesg in the guide),
#           faketime (three backups in one frozen second), strace (a signal
#           at a chosen system call), gzip coreutils procps iproute2 time,
#           python3-aiosmtpd (an SMTP server on loopback for notifications),
#           systemd (systemd-analyze verify of generated units), python3-croniter (cron lines
#           parse), libxml2-utils (xmllint: Task Scheduler XML), nodejs npm (PowerShell parse
#           check with tree-sitter; npm only when no npm is on the PATH already),
#           python3-prometheus-client (bkr check --prometheus: the metrics parse as Prometheus reads them)
packages="gcc make pkg-config lua5.4 liblua5.4-dev lua-filesystem lua-dkjson lua-busted lua-cjson
    libpq-dev zlib1g-dev libssl-dev libyaml-dev libcurl4-openssl-dev postgresql postgresql-client
    gzip coreutils util-linux mount procps iproute2 python3 python3-cryptography python3-yaml time jq faketime strace
    python3-aiosmtpd systemd python3-croniter libxml2-utils nodejs python3-prometheus-client"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# npm comes with Node.js from some sources (NodeSource) and as its own package from Debian.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run as root: apt-get install -y$missing" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
