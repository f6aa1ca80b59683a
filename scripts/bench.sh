#!/bin/sh
# bench.sh BKR - wall time and peak memory of bkr against the shell pipelines it replaces,
# as ratios measured in one run on this machine (never as timed assertions in the tests).
#
# Starts a throwaway PostgreSQL cluster, loads scripts/sample-data.sql with
# BENCH_ROWS (default 1,000,000) invoices, then runs each variant BENCH_RUNS times
# (default 3), interleaved round by round, under GNU time (`/usr/bin/time -f '%e %M %U %S'`):
#
#   pg_dump > /dev/null                       reference: what pg_dump alone costs
#   pg_dump | gzip -6 > FILE                  the cron-line baseline
#   pg_dump | gzip -6 | tee FILE | sha256sum  the baseline that also checksums
#   bkr backup --no-globals --no-rotate       pg_dump + per-table digests + gzip + SHA-256 + atomic file
#   pg_dump | pigz -6 > FILE                  only if pigz is installed
#   psql -c "COPY ..." | gzip -6 > FILE       the 1M-row table, streamed
#   bkr run copy.lua                          the same COPY through gzip and SHA-256 to a file, inside bkr
#
# It reports the median wall time, the median CPU time (user + system of every process of
# the command; the server's work is not in it), the peak RSS (GNU time's %M: the largest
# single process of the command's tree, i.e. max(bkr, pg_dump) for bkr backup), the output
# size and the ratios against the baseline; then bkr's own peak RSS (VmHWM) in a backup, and
# in the COPY stream at the full and at a tenth of its size, to show it does not grow with it.
# Wall times are only as steady as the machine is idle: CPU ratios are the steadier figure. Every output must pass `gzip -t`, and the last run's outputs
# are decompressed and compared (same dump, same COPY data) so broken output is never timed.
# The cluster and every temporary file are removed at the end, whatever happens.
set -eu
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -x "$1" ]; then echo "usage: $0 BKR (build it first: make)" >&2; exit 2; fi
bkr=$(realpath "$1")
ROWS=${BENCH_ROWS:-1000000}
RUNS=${BENCH_RUNS:-3}
DB=bench

# GNU time reports the peak RSS of a command (and of the processes it waited for).
if ! /usr/bin/time -f '%M' true >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench: installing GNU time (Debian package 'time')"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
    else
        echo "bench: needs GNU time: apt-get install time" >&2
        exit 1
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bkr-bench.XXXXXX")
chmod 0755 "$work"   # the server runs as postgres and must reach its directory
cleanup() {
    scripts/pg-throwaway.sh stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$work/out" "$work/res" "$work/cwd"

# The same client programs bkr chooses (the server's major version), not Debian's pg_wrapper.
# shellcheck disable=SC2012
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
PATH="$bindir:$PATH"
export PATH

echo "== machine"
echo "cpus:      $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "memory:    $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "kernel:    $(uname -sr)"
echo "bkr:       $("$bkr" --version)"
echo "pg_dump:   $(pg_dump --version)"
echo "gzip:      $(gzip --version | head -n 1)"
pigz=$(command -v pigz || true)
[ -n "$pigz" ] && echo "pigz:      $("$pigz" --version 2>&1 | head -n 1)"

echo
echo "== data"
eval "$(scripts/pg-throwaway.sh start "$work/pg")"
echo "server:    $(psql -X -A -t -c 'show server_version')"
load_start=$(date +%s)
createdb "$DB"
# The data satisfies its foreign key by construction: skip the per-row checks to load faster.
PGOPTIONS="-c session_replication_role=replica" \
    psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -d "$DB" -f scripts/sample-data.sql
psql -X -q -d "$DB" -c "vacuum analyze" >/dev/null
echo "loaded:    $(psql -X -A -t -d "$DB" -c 'select count(*) from billing.invoices') invoices in $(( $(date +%s) - load_start )) s"
echo "database:  $(psql -X -A -t -d "$DB" -c "select pg_database_size(current_database()) || ' bytes (' || pg_size_pretty(pg_database_size(current_database())) || '), billing.invoices ' || pg_size_pretty(pg_total_relation_size('billing.invoices')) || ' with indexes'")"

# The COPY variant inside bkr: it also reports its own peak RSS and the stream's sizes.
cat > "$work/copy.lua" <<'LUA'
local stream, gzip, hash = require "bkr.stream", require "bkr.gzip", require "bkr.hash"
local path, report, sql = ...
local conn = assert(require("bkr.pg").connect())
local result = stream.run{
  assert(conn:copy_out(sql or "COPY billing.invoices TO STDOUT")),
  gzip.compress{ level = 6 },
  hash.sha256(),
  stream.to_file(path),
}
conn:close()
local status = assert(io.open("/proc/self/status")):read("a")
local f = assert(io.open(report, "w"))
f:write(string.format("%d %d %s %s\n", result.bytes_in, result.bytes_out, result.sha256,
  status:match("VmHWM:%s*(%d+)")))
f:close()
LUA

# `bkr backup` itself, with this process's own peak RSS reported at the end (GNU time's %M
# of `bkr backup` is the larger of bkr and its pg_dump child).
echo 'return 0' > "$work/empty.lua"
cat > "$work/backup-hwm.lua" <<'LUA'
local report = os.getenv("BENCH_HWM")
local recipe
for _, dir in ipairs(bkr.recipe_path) do
  local f = io.open(dir .. "/backup.lua")
  if f then f:close(); recipe = dir .. "/backup.lua"; break end
end
local code = assert(loadfile(recipe))(...)
local status = assert(io.open("/proc/self/status")):read("a")
local f = assert(io.open(report, "w"))
f:write(status:match("VmHWM:%s*(%d+)"), "\n")
f:close()
return code
LUA

variants="dump_null dump_gzip dump_gzip_sha bkr_backup"
[ -n "$pigz" ] && variants="$variants dump_pigz"
variants="$variants copy_gzip bkr_copy"

label() {
    case $1 in
    dump_null) echo "pg_dump > /dev/null (reference)" ;;
    dump_gzip) echo "pg_dump | gzip -6 > file" ;;
    dump_gzip_sha) echo "pg_dump | gzip -6 | tee file | sha256sum" ;;
    bkr_backup) echo "bkr backup (digests+gzip+sha256+atomic)" ;;
    dump_pigz) echo "pg_dump | pigz -6 > file ($(nproc) threads)" ;;
    copy_gzip) echo "psql COPY invoices | gzip -6 > file" ;;
    bkr_copy) echo "bkr run: COPY invoices|gzip|sha256|file" ;;
    esac
}

# run_once VARIANT N: one timed run; appends "seconds rss_kib output_bytes cpu_seconds" to res/VARIANT.
run_once() {
    rv=$1 ri=$2 out=$work/out/$1.$2.gz
    # shellcheck disable=SC2016 # the inner sh expands $1 and $2
    case $rv in
    dump_null) set -- sh -c 'pg_dump -d "$1" > /dev/null' sh "$DB"; out="" ;;
    dump_gzip) set -- sh -c 'pg_dump -d "$1" | gzip -6 > "$2"' sh "$DB" "$out" ;;
    dump_gzip_sha) set -- sh -c 'pg_dump -d "$1" | gzip -6 | tee "$2" | sha256sum > "$2.sum"' sh "$DB" "$out" ;;
    dump_pigz) set -- sh -c 'pg_dump -d "$1" | pigz -6 > "$2"' sh "$DB" "$out" ;;
    bkr_backup) set -- "$bkr" backup --no-globals --no-rotate --repo "$work/out/repo.$ri" --db "$DB" ;;
    copy_gzip) set -- sh -c 'psql -X -d "$1" -c "COPY billing.invoices TO STDOUT" | gzip -6 > "$2"' sh "$DB" "$out" ;;
    bkr_copy) set -- "$bkr" run "$work/copy.lua" "$out" "$work/res/bkr_copy.report" ;;
    esac
    sync
    if ! (cd "$work/cwd" && PGDATABASE=$DB /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" > "$work/log" 2>&1); then
        echo "bench: $(label "$rv") failed:" >&2
        cat "$work/log" "$work/time" >&2
        exit 1
    fi
    if [ "$rv" = bkr_backup ]; then
        out=$(ls "$work/out/repo.$ri"/daily/backup_*_"$DB".sql.gz)
        (cd "$(dirname "$out")" && sha256sum --quiet -c "$(basename "$out").sha256") \
            || { echo "bench: bkr backup's sidecar does not match its file" >&2; exit 1; }
    fi
    bytes=0
    if [ -n "$out" ]; then
        gzip -t "$out" || { echo "bench: $(label "$rv"): output fails gzip -t" >&2; exit 1; }
        bytes=$(stat -c %s "$out")
    fi
    read -r secs rss user sys < "$work/time"
    echo "$secs $rss $bytes $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" >> "$work/res/$rv"
    echo "$out" > "$work/res/$rv.last"
}

echo
echo "== runs ($RUNS rounds, variants interleaved; seconds per run)"
n=1
while [ "$n" -le "$RUNS" ]; do
    for v in $variants; do
        # Keep only the previous round's outputs (for the content checks below).
        rm -rf "$work/out/$v.$((n - 2)).gz" "$work/out/$v.$((n - 2)).gz.sum" "$work/out/repo.$((n - 2))"
        run_once "$v" "$n"
    done
    n=$((n + 1))
done
for v in $variants; do
    printf '%-44s %s\n' "$(label "$v")" "$(awk '{ printf "%s%s", sep, $1; sep = " " }' "$work/res/$v")"
done

# One more bkr backup, to read bkr's own peak RSS (without its pg_dump child).
BENCH_HWM=$work/res/bkr_backup.hwm PGDATABASE=$DB "$bkr" run "$work/backup-hwm.lua" \
    --no-globals --no-rotate --repo "$work/out/repo.hwm" --db "$DB" > "$work/log" 2>&1 \
    || { cat "$work/log" >&2; exit 1; }

# bkr's own footprint, and the COPY stream at a tenth of the rows: a bounded pipeline peaks
# at the same RSS whatever the size of the stream.
/usr/bin/time -f '%M' -o "$work/time" "$bkr" run "$work/empty.lua"
idle_rss=$(cat "$work/time")
PGDATABASE=$DB "$bkr" run "$work/copy.lua" "$work/out/tenth.gz" "$work/res/tenth.report" \
    "COPY (select * from billing.invoices where id % 10 = 0) TO STDOUT"
gzip -t "$work/out/tenth.gz"

echo
echo "== output checks"
# pg_dump (15.14 and later) writes a random \restrict key per dump: compare without it.
plain_sum() { gzip -dc "$1" | grep -v '^\\\(un\)\{0,1\}restrict ' | sha256sum | cut -d' ' -f1; }
ref_dump=$(plain_sum "$(cat "$work/res/dump_gzip.last")")
gzip -dc "$(cat "$work/res/dump_gzip.last")" | tail -c 200 | grep -q "PostgreSQL database dump complete" \
    || { echo "bench: the baseline dump is truncated" >&2; exit 1; }
for v in dump_gzip_sha bkr_backup dump_pigz; do
    [ -f "$work/res/$v.last" ] || continue
    [ "$(plain_sum "$(cat "$work/res/$v.last")")" = "$ref_dump" ] \
        || { echo "bench: $(label "$v") decompresses to a different dump" >&2; exit 1; }
done
ref_copy=$(plain_sum "$(cat "$work/res/copy_gzip.last")")
[ "$(plain_sum "$(cat "$work/res/bkr_copy.last")")" = "$ref_copy" ] \
    || { echo "bench: bkr's COPY output differs from psql's" >&2; exit 1; }
read -r copy_raw copy_stored copy_sha copy_hwm < "$work/res/bkr_copy.report"
[ "$(sha256sum < "$(cat "$work/res/bkr_copy.last")" | cut -d' ' -f1)" = "$copy_sha" ] \
    || { echo "bench: bkr's COPY file does not match the digest it reported" >&2; exit 1; }
echo "every output passes gzip -t; bkr backup's sidecar checks (sha256sum -c);"
echo "the dumps decompress to the same bytes ($(gzip -dc "$(cat "$work/res/dump_gzip.last")" | wc -c) raw), the COPY outputs too ($copy_raw raw)"

# median of column $2 of file $1 (RUNS values), and the max
median() { cut -d' ' -f"$2" "$1" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
peak() { cut -d' ' -f"$2" "$1" | sort -n | tail -n 1; }

baseline_of() {
    case $1 in
    dump_gzip_sha|bkr_backup|dump_pigz) echo dump_gzip ;;
    bkr_copy) echo copy_gzip ;;
    *) echo "" ;;
    esac
}

echo
echo "== results (median of $RUNS runs; CPU s = user + system of every process of the command;"
echo "   peak RSS = largest single process of the command, max over runs;"
echo "   ratios against the baseline of the group: pg_dump | gzip -6 > file, psql COPY | gzip -6 > file)"
echo
printf '%-44s  %8s  %8s  %12s  %12s  %10s  %9s  %9s\n' variant "median s" "CPU s" "peak RSS MiB" "output bytes" "time ratio" "CPU ratio" "RSS ratio"
for v in $variants; do
    t=$(median "$work/res/$v" 1)
    c=$(median "$work/res/$v" 4)
    r=$(peak "$work/res/$v" 2)
    b=$(median "$work/res/$v" 3)
    base=$(baseline_of "$v")
    tr="" cr="" rr=""
    if [ -n "$base" ]; then
        tr=$(awk -v a="$t" -v b="$(median "$work/res/$base" 1)" 'BEGIN { printf "%.2fx", a / b }')
        cr=$(awk -v a="$c" -v b="$(median "$work/res/$base" 4)" 'BEGIN { printf "%.2fx", a / b }')
        rr=$(awk -v a="$r" -v b="$(peak "$work/res/$base" 2)" 'BEGIN { printf "%.2fx", a / b }')
    fi
    [ "$b" = 0 ] && b="-"
    [ -n "$tr" ] || tr="-" cr="-" rr="-"
    printf '%-44s  %8.2f  %8.2f  %12.1f  %12s  %10s  %9s  %9s\n' "$(label "$v")" "$t" "$c" \
        "$(awk -v k="$r" 'BEGIN { print k / 1024 }')" "$b" "$tr" "$cr" "$rr"
done

echo
bkr_t=$(median "$work/res/bkr_backup" 1)
sha_t=$(median "$work/res/dump_gzip_sha" 1)
awk -v a="$bkr_t" -v b="$sha_t" -v c="$(median "$work/res/bkr_backup" 4)" -v d="$(median "$work/res/dump_gzip_sha" 4)" \
    'BEGIN { printf "bkr backup vs pg_dump | gzip -6 | tee file | sha256sum: time ratio %.2fx, CPU ratio %.2fx\n", a / b, c / d }'
awk -v k="$(cat "$work/res/bkr_backup.hwm")" -v p="$(peak "$work/res/dump_null" 2)" \
    'BEGIN { printf "bkr backup, the bkr process alone (VmHWM): %.1f MiB; pg_dump alone: %.1f MiB\n", k / 1024, p / 1024 }'
read -r tenth_raw _ _ tenth_hwm < "$work/res/tenth.report"
awk -v k="$copy_hwm" -v raw="$copy_raw" -v st="$copy_stored" -v idle="$idle_rss" -v tk="$tenth_hwm" -v traw="$tenth_raw" 'BEGIN {
    printf "bkr COPY stream, peak RSS (VmHWM): %.1f MiB for %.1f MiB of COPY data (into a %.1f MiB file),\n", k / 1024, raw / 1048576, st / 1048576
    printf "  %.1f MiB for a tenth of the rows (%.1f MiB of COPY data), %.1f MiB for bkr running an empty script\n", tk / 1024, traw / 1048576, idle / 1024
}'
