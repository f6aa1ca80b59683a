#!/bin/sh
# demo.sh BKR - the main job end to end on a throwaway PostgreSQL:
# create a sample supplier-invoice database, back it up with bkr, verify and list the
# backup, run a recovery drill, restore it WITHOUT bkr (sha256sum -c, gunzip | psql) and
# compare; then an encrypted backup restored with bkr, a backup of an application's
# configuration with its secrets sealed, the schedule bkr would install, and the
# monitoring check.
# Everything stays in ./demo-repo for a look around (bkr.yaml there is a configuration to
# copy); the cluster is removed.
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

demo=$(pwd)/demo-repo
repo=$demo/repo
rm -rf "$demo"
mkdir -p "$demo/app"
config=$demo/bkr.yaml
# An application's configuration, with secrets in it, for the config backup.
printf 'database:\n  host: db1\n  password: demo-s3cret\n' > "$demo/app/app.yaml"
printf 'API_TOKEN=demo-token-123\nMODE=live\n' > "$demo/app/.env"
cat > "$config" <<YAML
# demo configuration (see docs/bkr.example.yaml for every key; docs/first-hour.md for a server)
databases: [invoices]
repository: $repo
compression_level: 6
retention: { daily: 7, weekly: 4, monthly: 0 }
config_backup:
  files: [$demo/app/app.yaml, $demo/app/.env]
YAML

step "bkr init --config $config: the repository, once (every other command refuses a missing one)"
"$bkr" init --config "$config"
step "bkr backup --config $config"
"$bkr" backup --config "$config"
step "bkr verify --latest"
"$bkr" verify --config "$config" --latest
step "bkr list"
"$bkr" list --config "$config"

step "bkr drill: restore the newest backup into a scratch database and prove it table by table"
"$bkr" drill --config "$config"

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

step "an encrypted backup: bkr keygen, then bkr backup --key-file (AES-256-GCM, .sql.gz.enc)"
"$bkr" keygen --out "$demo/backup.key"
"$bkr" backup --config "$config" --key-file "$demo/backup.key" --no-globals
"$bkr" verify --config "$config" --latest --key-file "$demo/backup.key"
step "bkr restore: the newest (encrypted) backup into a new database, checked table by table"
"$bkr" restore --config "$config" --db invoices --latest --into invoices_copy --create --key-file "$demo/backup.key"

step "bkr config backup: the application's files, every secret encrypted field by field"
"$bkr" config backup --config "$config" --key-file "$demo/backup.key"
"$bkr" config list --config "$config"
if grep -rq -e demo-s3cret -e demo-token-123 "$repo/config"; then echo "demo: a secret is in the clear" >&2; exit 1; fi
"$bkr" config restore --config "$config" --latest --to "$demo/app-restored" --key-file "$demo/backup.key"
diff "$demo/app/app.yaml" "$demo/app-restored$demo/app/app.yaml" && echo "app.yaml restored byte for byte"

step "bkr schedule show --cron: the jobs bkr schedule install would set up (systemd timers by default)"
"$bkr" schedule show --cron --config "$config"

step "bkr check: the monitoring check (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"
status=0
"$bkr" check --config "$config" || status=$?
echo "(bkr check exited $status)"
[ "$status" -le 2 ] || { echo "demo: bkr check could not judge the repository" >&2; exit 1; }
step "demo complete: the configuration, key and repository are in $demo"
