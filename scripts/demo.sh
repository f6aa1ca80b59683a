#!/bin/sh
# demo.sh BKR - the main job end to end on a throwaway PostgreSQL:
# create a sample supplier-invoice database, back it up with bkr, verify and list the
# backup, run a recovery drill, then restore it WITHOUT bkr (sha256sum -c, gunzip | psql)
# and compare.
# The repository stays in ./demo-repo for a look around; the cluster is removed.
set -eu
cd "$(dirname "$0")/.."
bkr=$(realpath "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/bkr-demo.XXXXXX")
chmod 0755 "$work"
trap 'scripts/pg-throwaway.sh stop "$work/pg" || true; rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n==> %s\n' "$*"; }

step "starting a throwaway PostgreSQL cluster"
eval "$(scripts/pg-throwaway.sh start "$work/pg")"
createdb invoices
psql -X -q -v ON_ERROR_STOP=1 -v rows=200000 -d invoices -f scripts/sample-data.sql

repo=$(pwd)/demo-repo
rm -rf "$repo"
cat > "$work/bkr.yaml" <<YAML
# demo configuration (see docs/bkr.example.yaml for every key)
databases: [invoices]
repository: $repo
compression_level: 6
retention: { daily: 7, weekly: 4, monthly: 0 }
YAML

step "bkr init --config $work/bkr.yaml: the repository, once (every other command refuses a missing one)"
"$bkr" init --config "$work/bkr.yaml"
step "bkr backup --config $work/bkr.yaml"
"$bkr" backup --config "$work/bkr.yaml"
step "bkr verify --latest"
"$bkr" verify --config "$work/bkr.yaml" --latest
step "bkr list"
"$bkr" list --config "$work/bkr.yaml"

step "bkr drill: restore the newest backup into a scratch database and prove it table by table"
"$bkr" drill --config "$work/bkr.yaml" --report "$repo/drills/demo-drill"

step "restore without bkr: sha256sum -c, then gunzip | psql into a new database"
backup=$(ls "$repo"/daily/backup_*_invoices.sql.gz)
(cd "$repo/daily" && sha256sum -c "$(basename "$backup").sha256")
createdb invoices_restored
gunzip -c "$backup" | psql -X -q -v ON_ERROR_STOP=1 -d invoices_restored >/dev/null
original=$(psql -X -A -t -d invoices -c "select count(*), sum(amount) from billing.invoices")
restored=$(psql -X -A -t -d invoices_restored -c "select count(*), sum(amount) from billing.invoices")
echo "original invoices: $original"
echo "restored invoices: $restored"
[ "$original" = "$restored" ] || { echo "demo: restored data differs" >&2; exit 1; }
step "demo complete: backups are in $repo"
