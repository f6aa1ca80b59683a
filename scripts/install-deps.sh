#!/bin/sh
# install-deps.sh - install the Debian 12 packages bkr needs to build, test and run its demo.
# Installs only what is missing; needs root for that (prints the command otherwise).
set -eu
packages="gcc make pkg-config lua5.4 liblua5.4-dev lua-filesystem lua-dkjson lua-busted
    libpq-dev zlib1g-dev libssl-dev libyaml-dev postgresql postgresql-client
    gzip coreutils util-linux procps iproute2 python3 python3-cryptography python3-yaml time"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
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
