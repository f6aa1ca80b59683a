#!/bin/sh
# pg-throwaway.sh - start or stop a throwaway PostgreSQL cluster for tests and the demo.
#
#   eval "$(scripts/pg-throwaway.sh start DIR)"   initdb into DIR, start it on its own port and
#                                                socket directory, print PG* exports for the shell
#   scripts/pg-throwaway.sh stop DIR             stop it and remove DIR
#
# Runs the server as the `postgres` user when started as root (PostgreSQL refuses root).
# The cluster trusts local connections only: it listens on a socket inside DIR, never on TCP.
set -eu

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/initdb" ] || { echo "pg-throwaway: no PostgreSQL server found (apt-get install postgresql)" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$*"
    else
        sh -c "$*"
    fi
}

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    # A free port: the first of a range nobody listens on.
    port=${PGTEST_PORT:-}
    if [ -z "$port" ]; then
        port=55432
        while [ -S "/tmp/.s.PGSQL.$port" ] || ss -ltn 2>/dev/null | grep -q ":$port "; do port=$((port + 1)); done
    fi
    as_owner "'$bindir/initdb' -D '$dir/data' -U postgres -A trust -E UTF8 --locale=C.UTF-8 >'$dir/initdb.log' 2>&1" \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "'$bindir/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -t 60 \
        -o \"-p $port -k $dir -c listen_addresses='' -c fsync=off -c full_page_writes=off\" start >/dev/null" \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" > "$dir/port"
    echo "export PGHOST='$dir' PGPORT='$port' PGUSER=postgres PGDATABASE=postgres"
    ;;
stop)
    [ -d "$dir" ] || exit 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "'$bindir/pg_ctl' -D '$dir/data' -m immediate -w stop >/dev/null 2>&1" || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
