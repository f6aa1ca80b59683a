#!/bin/sh
# bench.sh [--size full|small|MB] [--runs N] [--write-doc] BKR
#
# What a user would compare before replacing a backup cron line with bkr: wall time, CPU time,
# stored size and peak memory of `bkr backup` and `bkr restore` against the shell commands
# they replace, on one machine, in one run. Never a timed assertion in the test suite.
#
# Data: a throwaway cluster (scripts/pg-throwaway.sh) with one database `bench`: the pgbench
# tables (`pgbench -i -s N`, about 30x compressible) and `notes`, wide rows of semi-repetitive
# text (scripts/bench/notes.sql, about 3x with gzip -6). --size full (the default) makes a
# plain pg_dump of about 600 MB; --size small about 40 MB; --size MB any other size.
#
# Sections, each a Markdown table (median of --runs runs, default 3; each round runs every
# variant of the section once, in an order that rotates from round to round, so a slow
# moment of the machine does not fall on one variant only):
#   backup   pg_dump > /dev/null (the floor: nothing is faster than pg_dump itself);
#            pg_dump | gzip -6 > f && sha256sum f (the separate steps bkr replaces);
#            pg_dump | pigz -6 > f; pg_dump -Fc -f f;
#            bkr backup with the default config (gzip), compression: zstd, encryption, format: custom
#   restore  createdb t && gunzip -c f | psql -d t   against  bkr restore f --into t --create,
#            with --no-compare (like for like: the targets) and with its table comparison;
#            createdb t && pg_restore -j 2 -d t f.dump against bkr restore of the custom backup
#   memory   bkr's own peak RSS (VmHWM) in a gzip backup of the full database and of one a
#            tenth of its size: a streaming backup peaks at the same RSS whatever the size
# A bkr variant whose config this bkr rejects (exit 2) shows "n/a (this bkr does not support it)".
#
# How to read it: "wall s" is elapsed time, "CPU s" is user + system time of every process of
# the command (bkr's threads and its pg_dump/psql children included; the server's own work is
# not), and "x steps", "x pigz", "x floor" divide the wall time by that of the separate
# steps, of pigz and of the floor: below 1 is faster. bkr's times include what it does more
# (fsync and atomic rename of its files, sidecar and manifest; per-table digests; a restore's
# check of the file and comparison of every table), the shell variants' do not. Wall times
# are only as steady as the machine is idle. The targets of issue 10 follow, each "met" or
# "missed by X%".
#
# Nothing broken is ever timed as valid: every output must pass gzip -t / zstd -t / pg_restore -l,
# decompress to the same dump as a reference pg_dump, and match its .sha256; every restored
# database must hold the same rows as the source (row count and a hash of every row of every
# table, scripts/bench/signature.sql). The cluster and every temporary file are removed at
# the end, whatever happens. --write-doc (or BENCH_WRITE_DOC=1) also writes docs/BENCHMARKS.md.
set -eu
cd "$(dirname "$0")/.."

usage() { sed -n '2p' "$0" | sed 's/^# /usage: /' >&2; exit 2; }
SIZE=${BENCH_SIZE:-full}
RUNS=${BENCH_RUNS:-3}
WRITE_DOC=${BENCH_WRITE_DOC:-0}
bkr=""
while [ $# -gt 0 ]; do
    case $1 in
    --size) [ $# -ge 2 ] || usage; SIZE=$2; shift 2 ;;
    --size=*) SIZE=${1#--size=}; shift ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#--runs=}; shift ;;
    --write-doc) WRITE_DOC=1; shift ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage ;;
    *) [ -z "$bkr" ] || usage; bkr=$1; shift ;;
    esac
done
if [ -z "$bkr" ] || [ ! -x "$bkr" ]; then echo "usage: $0 [--size full|small|MB] [--runs N] [--write-doc] BKR (build it first: make)" >&2; exit 2; fi
bkr=$(realpath "$bkr")
case $SIZE in
full) MB=600 ;;
small) MB=40 ;;
*[!0-9]*|'') echo "bench: --size: full, small or a number of MB, not '$SIZE'" >&2; exit 2 ;;
*) MB=$SIZE ;;
esac
case $RUNS in *[!0-9]*|''|0) echo "bench: --runs: a positive number" >&2; exit 2 ;; esac
# The memory section's second database: a tenth of the size.
SMALL_MB=$(( MB / 10 > 4 ? MB / 10 : 4 ))
DB=bench
say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# The tools the variants need; installed like scripts/install-deps.sh does, when missing.
need() { # COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $2 (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    else
        die "needs $1: apt-get install $2"
    fi
}
/usr/bin/time -f '%M' true >/dev/null 2>&1 || { need /usr/bin/time time; }
need pigz pigz
need zstd zstd

work=$(mktemp -d "${TMPDIR:-/tmp}/bkr-bench.XXXXXX")
chmod 0755 "$work"   # the server runs as postgres and must reach its directory
cleanup() {
    scripts/pg-throwaway.sh stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$work/out" "$work/res" "$work/cwd" "$work/cfg"

# The same client programs bkr chooses (the server's major version), not Debian's pg_wrapper.
# shellcheck disable=SC2012
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/pgbench" ] || die "no pgbench under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
PATH="$bindir:$PATH"
export PATH

# ---------------------------------------------------------------- data

eval "$(scripts/pg-throwaway.sh start "$work/pg")"
export PGDATABASE=postgres

# load_db NAME MB: pgbench tables for about a fifth of MB of plain dump (9.5 MB per scale
# unit), notes for the rest (2.7 KB per row).
load_db() {
    scale=$(awk -v m="$2" 'BEGIN { s = int(m * 0.2 / 9.5 + 0.5); print (s < 1) ? 1 : s }')
    rows=$(awk -v m="$2" 'BEGIN { print int(m * 0.8 * 1000000 / 2700) }')
    createdb "$1"
    pgbench -i -q -s "$scale" "$1" > "$work/log" 2>&1 || { cat "$work/log" >&2; die "pgbench -i failed"; }
    psql -X -q -v ON_ERROR_STOP=1 -v rows="$rows" -d "$1" -f scripts/bench/notes.sql
    psql -X -q -d "$1" -c "vacuum analyze" > /dev/null
    echo "pgbench scale $scale and $rows notes"
}
# signature DB: one line per table (rows, hash of the rows), then the index count.
signature() { psql -X -A -t -q -F ' ' -v ON_ERROR_STOP=1 -d "$1" -f scripts/bench/signature.sql; }
# pg_dump (15.14 and later) writes a random \restrict key per dump: compare without it.
dump_sum() { grep -v '^\\\(un\)\{0,1\}restrict ' | sha256sum | cut -d' ' -f1; }

say "loading about $MB MB of data (--size $SIZE)"
load_start=$(date +%s)
data_desc=$(load_db "$DB" "$MB")
signature "$DB" > "$work/source.sig"
# The reference dumps, which also warm the cache for the first round.
dump_bytes=$(pg_dump -d "$DB" | tee "$work/ref.sql" | wc -c)
ref_plain=$(dump_sum < "$work/ref.sql")
gzip6_bytes=$(gzip -6 < "$work/ref.sql" | wc -c)
rm -f "$work/ref.sql"
ref_custom=$(pg_dump -Fc -d "$DB" | pg_restore -f - | dump_sum)
say "loaded $data_desc in $(( $(date +%s) - load_start )) s: plain dump $dump_bytes bytes"

# A tiny database to try each bkr config on before the rounds.
createdb probe
psql -X -q -d probe -c "create table t as select i, md5(i::text) from generate_series(1, 1000) i"

# ---------------------------------------------------------------- checks

# check_output FILE [probe]: the file must be whole and hold the reference dump (of the
# probe database: only be whole).
# .gz: gzip -t; .zst: zstd -t; .enc: decrypted by `bkr decrypt` (every chunk authenticated)
# then checked as what it holds; anything else must be a pg_dump custom archive (pg_restore -l).
check_output() {
    cf=$1 ref_db=${2:-$DB}
    case $cf in
    *.enc)
        case $cf in *.gz.enc) plain=$work/decrypted.gz ;; *.zst.enc) plain=$work/decrypted.zst ;; *) plain=$work/decrypted.dump ;; esac
        rm -f "$plain"
        "$bkr" decrypt "$cf" --key-file "$work/key" --out "$plain" > "$work/check.log" 2>&1 \
            || { cat "$work/check.log" >&2; return 1; }
        rc=0; (check_output "$plain" "$ref_db") || rc=$?
        rm -f "$plain"; return $rc ;;
    *.gz) gzip -t "$cf" || return 1; got=$(gzip -dc "$cf" | dump_sum); want=plain ;;
    *.zst) zstd -q -t "$cf" || return 1; got=$(zstd -q -dc "$cf" | dump_sum); want=plain ;;
    *)
        [ "$(head -c 5 "$cf")" = PGDMP ] || { echo "$cf: neither .gz, .zst nor a pg_dump custom archive" >&2; return 1; }
        pg_restore -l "$cf" > /dev/null || return 1
        got=$(pg_restore -f - "$cf" | dump_sum); want=custom ;;
    esac
    [ "$ref_db" = "$DB" ] || return 0   # the probe's dump has no reference: whole is enough
    if [ "$want" = plain ]; then [ "$got" = "$ref_plain" ]; else [ "$got" = "$ref_custom" ]; fi \
        || { echo "$cf does not hold the same dump as pg_dump" >&2; return 1; }
}
# bkr_file REPO: the one backup file a bkr run wrote in REPO (not its sidecar or manifest).
bkr_file() {
    for f in "$1"/daily/backup_*; do
        case $f in *.sha256|*.json|*'backup_*') ;; *) echo "$f" ;; esac
    done
}
check_sidecar() { (cd "$(dirname "$1")" && sha256sum --quiet -c "$(basename "$1").sha256"); }

# ---------------------------------------------------------------- bkr configs

"$bkr" keygen --out "$work/key" > /dev/null 2>&1 || die "bkr keygen failed"
: > "$work/cfg/bkr_gzip.yaml"
printf 'compression: zstd\ncompression_level: 3\n' > "$work/cfg/bkr_zstd.yaml"
printf 'encryption:\n  key_file: %s\n' "$work/key" > "$work/cfg/bkr_enc.yaml"
printf 'format: custom\n' > "$work/cfg/bkr_custom.yaml"
: > "$work/cfg/plain.yaml"

# probe VARIANT: a backup of the tiny database with the variant's config; exit 2 means this
# bkr does not know the config (the variant is n/a), any other failure stops the bench.
probe() {
    rm -rf "$work/probe"; mkdir "$work/probe"
    rc=0
    (cd "$work/cwd" && "$bkr" backup --config "$work/cfg/$1.yaml" --no-globals --no-rotate \
        --repo "$work/probe" --db probe) > "$work/log" 2>&1 || rc=$?
    [ "$rc" = 2 ] && return 1
    [ "$rc" = 0 ] || { cat "$work/log" >&2; die "bkr backup with $1's config failed (exit $rc)"; }
    f=$(bkr_file "$work/probe")
    if [ -z "$f" ] || ! check_sidecar "$f" || ! check_output "$f" probe; then
        die "bkr backup with $1's config wrote a broken file"
    fi
}
bkr_variants=""
for v in bkr_gzip bkr_zstd bkr_enc bkr_custom; do
    if probe "$v"; then
        bkr_variants="$bkr_variants $v"
    elif [ "$v" = bkr_zstd ] && printf 'compression: zstd\n' > "$work/cfg/bkr_zstd.yaml" && probe "$v"; then
        bkr_variants="$bkr_variants $v"   # no compression_level for zstd: its default
    else
        [ "$v" != bkr_gzip ] || { cat "$work/log" >&2; die "bkr backup refuses an empty config"; }
        say "$v: n/a, this bkr refuses its config: $(head -n 1 "$work/log")"
        touch "$work/res/$v.na"
    fi
done
zstd_label="level 3"
[ -f "$work/res/bkr_zstd.na" ] || grep -q compression_level "$work/cfg/bkr_zstd.yaml" \
    || zstd_label="bkr's default level"

# shellcheck disable=SC2016 # backquotes are Markdown here
label() {
    case $1 in
    floor) echo '`pg_dump > /dev/null` (floor)' ;;
    steps) echo '`pg_dump \| gzip -6 > f && sha256sum f` (separate steps)' ;;
    pigz) echo "\`pg_dump \\| pigz -6 > f\` ($(nproc) threads)" ;;
    pgcustom) echo '`pg_dump -Fc -f f`' ;;
    bkr_gzip) echo '`bkr backup` (gzip, the default config)' ;;
    bkr_zstd) echo "\`bkr backup\`, \`compression: zstd\`, $zstd_label" ;;
    bkr_enc) echo '`bkr backup`, gzip + `encryption`' ;;
    bkr_custom) echo '`bkr backup`, `format: custom`' ;;
    r_psql) echo '`createdb t && gunzip -c f \| psql -q -d t`' ;;
    r_bkr) echo '`bkr restore f --into t --create` (the gzip backup, then every table compared)' ;;
    r_bkr_nc) echo '`bkr restore f --into t --create --no-compare` (the gzip backup)' ;;
    r_pgrestore) echo '`createdb t && pg_restore -j 2 -d t f.dump`' ;;
    r_bkr_custom) echo '`bkr restore f --into t --create` (the custom backup, then every table compared)' ;;
    r_bkr_custom_nc) echo '`bkr restore f --into t --create --no-compare` (the custom backup)' ;;
    esac
}

# ---------------------------------------------------------------- timing

# timed VARIANT COMMAND...: one run under GNU time, from an empty directory; its figures go
# to $work/time ("wall user system maxrss"). A failed command stops the bench.
timed() {
    tv=$1; shift
    sync
    (cd "$work/cwd" && /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" > "$work/log" 2>&1) \
        || { cat "$work/log" "$work/time" >&2; die "$(label "$tv") failed"; }
}
# record VARIANT BYTES: appends "wall cpu bytes maxrss" to res/VARIANT.
record() {
    read -r w u s m < "$work/time"
    echo "$w $(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }') $2 $m" >> "$work/res/$1"
}

# backup_once VARIANT: one run; its output replaces the previous run's, and must pass the checks.
backup_once() {
    v=$1 out=$work/out/$1
    rm -rf "$out" "$out".*; mkdir "$out"
    # shellcheck disable=SC2016 # the inner sh expands $1 and $2
    case $v in
    floor) timed "$v" sh -c 'pg_dump -d "$1" > /dev/null' sh "$DB"; record "$v" 0; return ;;
    steps) f=$out/dump.sql.gz
        timed "$v" sh -c 'pg_dump -d "$1" | gzip -6 > "$2" && sha256sum "$2" > "$2.sha256"' sh "$DB" "$f"
        (cd "$out" && sha256sum --quiet -c dump.sql.gz.sha256) || die "sha256sum -c fails on its own output" ;;
    pigz) f=$out/dump.sql.gz
        timed "$v" sh -c 'pg_dump -d "$1" | pigz -6 > "$2"' sh "$DB" "$f" ;;
    pgcustom) f=$out/dump.dump
        timed "$v" pg_dump -Fc -d "$DB" -f "$f" ;;
    bkr_*)
        timed "$v" "$bkr" backup --config "$work/cfg/$v.yaml" --no-globals --no-rotate --repo "$out" --db "$DB"
        f=$(bkr_file "$out")
        [ -n "$f" ] || die "$(label "$v") wrote no backup file"
        check_sidecar "$f" || die "$(label "$v"): the file does not match its .sha256 sidecar" ;;
    esac
    check_output "$f" || die "$(label "$v") wrote a broken file: $f"
    echo "$f" > "$work/res/$v.file"
    record "$v" "$(stat -c %s "$f")"
}

# restore_once VARIANT: into a new database t, which must then hold the source's rows.
restore_once() {
    v=$1 target=restored
    dropdb --if-exists "$target" > /dev/null 2>&1 || die "dropdb $target failed"
    # shellcheck disable=SC2016
    case $v in
    r_psql) f=$(cat "$work/res/steps.file")
        timed "$v" sh -c 'createdb "$1" && gunzip -c "$2" | psql -X -q -v ON_ERROR_STOP=1 -d "$1" > /dev/null' sh "$target" "$f" ;;
    r_bkr) f=$(cat "$work/res/bkr_gzip.file")
        timed "$v" "$bkr" restore "$f" --into "$target" --create --config "$work/cfg/plain.yaml" ;;
    r_bkr_nc) f=$(cat "$work/res/bkr_gzip.file")
        timed "$v" "$bkr" restore "$f" --into "$target" --create --no-compare --config "$work/cfg/plain.yaml" ;;
    r_pgrestore) f=$(cat "$work/res/pgcustom.file")
        timed "$v" sh -c 'createdb "$1" && pg_restore -j 2 -d "$1" "$2"' sh "$target" "$f" ;;
    r_bkr_custom) f=$(cat "$work/res/bkr_custom.file")
        timed "$v" "$bkr" restore "$f" --into "$target" --create --config "$work/cfg/plain.yaml" ;;
    r_bkr_custom_nc) f=$(cat "$work/res/bkr_custom.file")
        timed "$v" "$bkr" restore "$f" --into "$target" --create --no-compare --config "$work/cfg/plain.yaml" ;;
    esac
    signature "$target" | cmp -s - "$work/source.sig" \
        || die "$(label "$v"): the restored database differs from the source"
    dropdb "$target"
    record "$v" "$(stat -c %s "$f")"
}

# rounds FUNCTION VARIANT...: RUNS rounds; round n starts at the n-th variant and wraps around.
rounds() {
    fn=$1; shift
    n=0
    while [ "$n" -lt "$RUNS" ]; do
        k=$(( n % $# )) order=""
        i=0
        for v in "$@"; do [ "$i" -ge "$k" ] && order="$order $v"; i=$((i + 1)); done
        i=0
        for v in "$@"; do [ "$i" -lt "$k" ] && order="$order $v"; i=$((i + 1)); done
        say "round $((n + 1))/$RUNS:$order"
        for v in $order; do "$fn" "$v"; done
        n=$((n + 1))
    done
}

# ---------------------------------------------------------------- runs

# shellcheck disable=SC2086
rounds backup_once floor steps pigz pgcustom $bkr_variants
restore_variants="r_psql r_bkr_nc r_bkr r_pgrestore"
[ -f "$work/res/bkr_custom.na" ] || restore_variants="$restore_variants r_bkr_custom_nc r_bkr_custom"
# shellcheck disable=SC2086
rounds restore_once $restore_variants
[ -f "$work/res/bkr_custom.na" ] && touch "$work/res/r_bkr_custom.na" "$work/res/r_bkr_custom_nc.na"

# memory: bkr's own peak RSS, full size and a tenth of it (gzip, the default config).
say "memory: loading a second database of about $SMALL_MB MB"
small_desc=$(load_db bench_small "$SMALL_MB")
for m in "$DB" bench_small; do
    rm -rf "$work/out/mem"; mkdir "$work/out/mem"
    BENCH_HWM=$work/res/hwm.$m; export BENCH_HWM
    timed bkr_gzip "$bkr" run "$(pwd)/scripts/bench/backup-hwm.lua" \
        --config "$work/cfg/bkr_gzip.yaml" --no-globals --no-rotate --repo "$work/out/mem" --db "$m"
    f=$(bkr_file "$work/out/mem")
    gzip -t "$f" || die "the memory run wrote a broken file"
    read -r _ _ _ maxrss < "$work/time"
    echo "$(cat "$work/res/hwm.$m") $maxrss $(pg_dump -d "$m" | wc -c)" > "$work/res/mem.$m"
done

# ---------------------------------------------------------------- report

median() { # FILE COLUMN
    cut -d' ' -f"$2" "$1" | sort -n \
        | awk '{ v[NR] = $1 } END { printf "%.15g\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
has() { [ -s "$work/res/$1" ]; }
wall() { median "$work/res/$1" 1; }
ratio() { # VARIANT BASE: median wall of VARIANT / median wall of BASE, "-" when either is missing
    if has "$1" && has "$2"; then awk -v a="$(wall "$1")" -v b="$(wall "$2")" 'BEGIN { printf "%.2fx", a / b }'; else echo "-"; fi
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
na='n/a (this bkr does not support it)'

table_row() { # VARIANT BASE...: wall, CPU, the ratio to each BASE, output size
    tr=$1; shift
    if [ -f "$work/res/$tr.na" ]; then
        printf '| %s | %s |' "$(label "$tr")" "$na"; for _ in "$@" x x; do printf ' |'; done; echo
        return
    fi
    printf '| %s | %.2f | %.2f |' "$(label "$tr")" "$(wall "$tr")" "$(median "$work/res/$tr" 2)"
    for base in "$@"; do printf ' %s |' "$(ratio "$tr" "$base")"; done
    b=$(median "$work/res/$tr" 3)
    if [ "$b" = 0 ]; then echo " - |"; else echo " $(mib "$b") |"; fi
}

# target TEXT MEASURED LIMIT [UNIT]: "met" when MEASURED <= LIMIT, else by how much it is missed.
target() {
    if [ -z "$2" ]; then echo "| $1 | - | not evaluated: $na |"; return; fi
    awk -v t="$1" -v m="$2" -v l="$3" -v u="${4:-x}" 'BEGIN {
        fmt = (u == "x") ? "%.2fx" : (u == "x3") ? "%.3fx" : "%.1f " u
        got = sprintf(fmt, m); lim = sprintf(fmt, l)
        miss = (m / l - 1) * 100
        if (m <= l) r = "met"; else r = sprintf((miss < 1) ? "missed by %.2f%%" : "missed by %.0f%%", miss)
        printf "| %s | %s (limit %s) | %s |\n", t, got, lim, r
    }'
}
ratio_num() { # VARIANT BASE: the bare ratio, empty when either is missing
    if has "$1" && has "$2"; then awk -v a="$(wall "$1")" -v b="$(wall "$2")" 'BEGIN { print a / b }'; fi
}

{
    echo "# bkr benchmarks"
    echo
    echo "Measured by \`scripts/bench.sh --size $SIZE --runs $RUNS\` on $(date -u '+%Y-%m-%d %H:%M UTC'):"
    [ "$RUNS" = 1 ] && of="one run" || of="the median of $RUNS runs"
    echo "$of, each round running every variant once in a rotating order."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores |"
    echo "| memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| kernel | $(uname -sr) |"
    echo "| bkr | $("$bkr" --version) |"
    echo "| PostgreSQL | $(pg_dump --version), server $(psql -X -A -t -c 'show server_version') |"
    echo "| gzip | $(gzip --version | head -n 1) |"
    echo "| pigz | $(pigz --version 2>&1 | head -n 1) |"
    echo "| zstd | $(zstd --version | head -n 1 | sed 's/^\*\** *//; s/ *\**$//') |"
    echo "| data | $data_desc: plain \`pg_dump\` $dump_bytes bytes ($(mib "$dump_bytes")), \`gzip -6\` $gzip6_bytes bytes ($(awk -v a="$dump_bytes" -v b="$gzip6_bytes" 'BEGIN { printf "%.1fx", a / b }')) |"
    echo
    echo "Wall and CPU in seconds (CPU: user + system of every process of the command, the"
    echo "server's work not included). \`x steps\`, \`x pigz\`, \`x floor\`: the median wall time"
    echo "divided by that of the separate steps, of pigz, of the floor; below 1 is faster."
    echo
    echo "## Backup"
    echo
    echo "| variant | wall s | CPU s | x steps | x pigz | x floor | output size |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for v in floor steps pigz pgcustom bkr_gzip bkr_zstd bkr_enc bkr_custom; do table_row "$v" steps pigz floor; done
    echo
    if has bkr_gzip; then
        g=$(median "$work/res/steps" 3) k=$(median "$work/res/bkr_gzip" 3)
        echo "Stored size: \`gzip -6\` $g bytes, bkr gzip $k bytes ($(awk -v a="$k" -v b="$g" 'BEGIN { printf "%.3fx", a / b }'))."
        echo
    fi
    echo "## Restore"
    echo
    echo "Into a new database, created by the timed command; the CPU column is the client side"
    echo "only (the server does most of a restore's work). \`bkr restore\` also checks the file's"
    echo "SHA-256 first; by default it then reads every table back and compares it with the"
    echo "manifest (the rows marked \"compared\"), which \`--no-compare\` skips: the like-for-like"
    echo "rows, which the targets use. Size: the file restored."
    echo
    echo "| variant | wall s | CPU s | x gunzip\\|psql | x pg_restore -j 2 | file restored |"
    echo "|---|---:|---:|---:|---:|---:|"
    for v in r_psql r_bkr_nc r_bkr r_pgrestore r_bkr_custom_nc r_bkr_custom; do
        table_row "$v" r_psql r_pgrestore
    done
    echo
    echo "## Memory"
    echo
    echo "bkr's own peak RSS (VmHWM: all its threads, not its pg_dump child) in a gzip backup,"
    echo "and GNU time's %M of the same command (the largest single process: bkr or pg_dump)."
    echo
    echo "$DB: $data_desc; bench_small (about a tenth): $small_desc."
    echo
    echo "| database | plain dump size | bkr peak RSS | bkr or pg_dump, %M |"
    echo "|---|---:|---:|---:|"
    for m in "$DB" bench_small; do
        read -r hwm maxrss bytes < "$work/res/mem.$m"
        echo "| $m | $(mib "$bytes") | $(awk -v k="$hwm" 'BEGIN { printf "%.1f MiB", k / 1024 }') | $(awk -v k="$maxrss" 'BEGIN { printf "%.1f MiB", k / 1024 }') |"
    done
    echo
    echo "## Targets (issue 10)"
    echo
    echo "| target | measured | result |"
    echo "|---|---|---|"
    target 'bkr gzip <= 0.35x the separate steps' "$(ratio_num bkr_gzip steps)" 0.35
    target 'bkr gzip <= 0.7x pigz' "$(ratio_num bkr_gzip pigz)" 0.7
    has bkr_gzip && s=$(awk -v a="$(median "$work/res/bkr_gzip" 3)" -v b="$(median "$work/res/steps" 3)" 'BEGIN { print a / b }') || s=""
    target 'bkr gzip stored size <= gzip -6'"'"'s' "$s" 1 x3
    target 'zstd <= 1.6x the floor' "$(ratio_num bkr_zstd floor)" 1.6
    target 'encryption adds <= 5% to bkr gzip' "$(ratio_num bkr_enc bkr_gzip)" 1.05
    read -r hwm_full _ _ < "$work/res/mem.$DB"
    read -r hwm_small _ _ < "$work/res/mem.bench_small"
    target 'bkr peak RSS < 64 MiB' "$(awk -v k="$hwm_full" 'BEGIN { print k / 1024 }')" 64 MiB
    target 'peak RSS flat: full size <= 1.1x the small database'"'"'s' "$(awk -v a="$hwm_full" -v b="$hwm_small" 'BEGIN { print a / b }')" 1.1
    target 'bkr restore plain (--no-compare) <= 1.05x gunzip \| psql' "$(ratio_num r_bkr_nc r_psql)" 1.05
    target 'bkr restore custom (--no-compare) faster than gunzip \| psql' "$(ratio_num r_bkr_custom_nc r_psql)" 1
    echo
    echo "Every output passed gzip -t, zstd -t or pg_restore -l, held the same dump as \`pg_dump\`,"
    echo "and matched its .sha256; every restored database held the source's rows (count and hash"
    echo "of every row of every table)."
} > "$work/report.md"

cat "$work/report.md"
if [ "$WRITE_DOC" = 1 ]; then
    cp "$work/report.md" docs/BENCHMARKS.md
    say "wrote docs/BENCHMARKS.md"
fi
