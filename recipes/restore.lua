-- Restore a database from a backup: choose, verify, stream into a transaction, compare tables
--
-- The runbook:
--   1. choose the backup: the newest, the one taken at a time, the newest before a time, or a file
--   2. verify it (sidecar, manifest, SHA-256) before anything touches the target
--   3. with --globals, restore the roles of the same run first
--   4. stream file -> (decrypt) -> gunzip -> psql --single-transaction into the target:
--        --create   a new database TARGET (fails if it exists)
--        --replace  a new temporary database, renamed over TARGET only once it is complete and
--                   checked; the old one is kept as TARGET_before_<time>
--        neither    the existing database TARGET
--   5. re-apply the database's recorded settings, owner and privileges
--   6. compare every table with the manifest (row count and digest)
--   7. report what was done and how long it took (the RTO)
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local keys = require "lib.keys"
local restore = require "lib.restore"

local options = cli.parse({ ... }, {
  name = "restore",
  usage = "bkr restore --db NAME (--latest | --at TIME | --before TIME | FILE) --into TARGET\n"
    .. "                   [--create | --replace] [--globals] [--dry-run] [--force] [--repo DIR] [--config F] [--key-file K]",
  summary = "Restore a backup into TARGET in one transaction, after verifying it, then compare every\n"
    .. "table with the backup's manifest. TIME is YYYYMMDD_HHMMSS or ISO 8601 (UTC unless an offset is given).",
  positional = "FILE",
  options = {
    { "--db", "NAME", "the database whose backup to restore" },
    { "--latest", nil, "the newest backup of NAME (default)" },
    { "--at", "TIME", "the backup taken at TIME" },
    { "--before", "TIME", "the newest backup taken before TIME" },
    { "--into", "TARGET", "the database to restore into" },
    { "--create", nil, "create TARGET (it must not exist)" },
    { "--replace", nil, "restore beside TARGET, then swap it in; the old one is kept as TARGET_before_<time>" },
    { "--globals", nil, "first restore roles and tablespaces from the same run (existing roles are reported)" },
    { "--dry-run", nil, "print which backup would be used and its verification state, then stop" },
    { "--force", nil, "restore even though TARGET has active connections (--replace)" },
    { "--no-compare", nil, "skip the table-by-table comparison afterwards" },
    { "--repo", "DIR", "repository directory (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
    { "--key-file", "FILE", "key for encrypted backups (overrides encryption.key_file)" },
  },
  exit_codes = "0 restored and checked, 1 the restore failed (nothing committed), 2 usage,\n"
    .. "            3 the backup failed verification (target untouched) or the restored tables differ",
  see = "docs/restore.md, docs/RECOVERY_GUIDE.md",
})
if not options then return cli.EXIT_OK end

-- ------------------------------------------------------------------ steps

local function say(fmt, ...)
  io.stdout:write(string.format(fmt, ...), "\n")
  io.stdout:flush()
end

local function check_arguments()
  local file = options.args[1]
  if #options.args > 1 then cli.usage_error("restore: one backup file at most") end
  local chosen = 0
  for _, given in ipairs({ options.latest or false, options.at or false, options.before or false, file or false }) do
    if given then chosen = chosen + 1 end
  end
  if chosen > 1 then cli.usage_error("restore: give one of --latest, --at, --before or FILE") end
  if not options.db and not file then cli.usage_error("restore: --db NAME is required (or a backup FILE)") end
  if not options.into and not options.dry_run then cli.usage_error("restore: --into TARGET is required") end
  if options.create and options.replace then cli.usage_error("restore: --create and --replace exclude each other") end
  return { at = options.at, before = options.before, file = file, latest = options.latest }
end

local function describe(entry)
  local state = repo.verified(entry) or "never verified"
  local when = entry.manifest and entry.manifest.verification and entry.manifest.verification.time
  return string.format("%s/%s (%s, taken %s, verified: %s%s)", entry.type, entry.file,
    entry.stored_bytes and cli.size(entry.stored_bytes) or "?", repo.iso_time(entry.time), state,
    when and (" at " .. when) or "")
end

-- ------------------------------------------------------------------ the run

local how = check_arguments()
local cfg = config.load(options)
local dir = how.file and "." or config.repository(cfg)
local entry = restore.choose(dir, options.db or "", how)
if how.file and not options.db then options.db = entry.database end
if entry.database ~= options.db then
  cli.usage_error("restore: %s is a backup of %s, not %s", entry.file, entry.database, options.db)
end

say("backup:  %s", describe(entry))
if options.dry_run then return cli.EXIT_OK end

local started = os.time()
local clock_start = bkr.monotonic()

-- 2. verify before anything is touched
local problem = restore.check_backup(entry)
if problem then
  cli.fail(cli.EXIT_INTEGRITY, "restore: %s failed verification, %s left untouched: %s", entry.file,
    options.into, problem)
end
say("verify:  checksum matches the sidecar and the manifest")

local run = restore.prepare(cfg, (keys.load(cfg, options)))
local target = options.into
if entry.encrypted then
  if not run.key then
    cli.usage_error("restore: %s is encrypted: give --key-file FILE or set encryption.key_file", entry.file)
  end
  local wanted = entry.manifest.encryption and entry.manifest.encryption.key_id
  local given = require("bkr.crypto").key_id(run.key)
  if wanted and wanted ~= given then
    cli.fail(cli.EXIT_INTEGRITY, "restore: %s was encrypted with key %s, the key given is %s; %s left untouched",
      entry.file, wanted, given, target)
  end
end
local current = run.conn:query("select current_database() as name")[1].name
if options.replace and target == current then
  cli.usage_error("restore: cannot --replace %s: bkr itself is connected to it; set connection.dbname "
    .. "(or PGDATABASE) to another database, such as template1", target)
end
local exists = restore.database_exists(run.conn, target)
if options.create and exists then cli.fail(cli.EXIT_FAILED, "restore: database %s already exists (--create)", target) end
if not options.create and not options.replace and not exists then
  cli.fail(cli.EXIT_FAILED, "restore: database %s does not exist: add --create (or --replace)", target)
end
if exists and not options.force then
  local active = restore.active_connections(run.conn, target)
  if active > 0 then
    cli.fail(cli.EXIT_FAILED, "restore: database %s has %d active connection(s); stop the application or add --force",
      target, active)
  end
end

-- 3. roles first
if options.globals then
  local result, err = restore.globals(run, entry)
  if not result then cli.fail(cli.EXIT_FAILED, "restore: globals: %s", tostring(err)) end
  if #result.existing > 0 then say("globals: existing roles kept: %s", table.concat(result.existing, ", ")) end
  for _, line in ipairs(result.errors) do say("globals: %s", line) end
  say("globals: restored")
end

-- 4. the stream, into the right database
local stamp = repo.stamp(started)
local into = target
if options.replace and exists then into = restore.derived_name(target, "_bkr_restore_" .. stamp) end

-- A database this run creates goes again unless it ends up holding the checked restore:
-- dropped on a failure, an error or an interrupt. A drop that fails is said (with the command
-- that removes it) and logged in the repository's bkr.log.
local repository = entry.path:match("^(.*)/[^/]+/[^/]+$")
local created <close> = (options.create or options.replace) and restore.new_database(run.conn, into, {
  label = "restore",
  on_leftover = function(name, reason)
    repo.log(repository, { recipe = "restore", event = "cleanup failed", database = name, result = "failed",
      error = reason, command = restore.drop_command(name) })
  end,
}) or nil
if created then
  local ok, err = created:create(entry.manifest.database_properties)
  if not ok then cli.fail(cli.EXIT_FAILED, "restore: cannot create database %s: %s", into, err) end
end

-- Stop with a message that says what became of the database this run created.
local function abandon(code, fmt, ...)
  local message = string.format(fmt, ...)
  if created then
    local _, said = created:drop()
    message = message .. "; " .. said
  end
  cli.fail(code, "%s", message)
end

local ok, result = pcall(restore.stream_into, run, entry, into)
if not ok then
  local message = cli.detail(result)
  abandon(cli.EXIT_FAILED, "restore: failed, nothing was committed: %s", message)
end
say("restore: %s of SQL into %s in %.1f s", cli.size(result.bytes_out), into, result.elapsed)

-- 5. database properties
for _, warning in ipairs(restore.apply_properties(run.conn, into, entry.manifest.database_properties)) do
  say("warning: %s", warning)
end

-- 6. compare every table
local differences = 0
if not options.no_compare then
  local results = restore.compare_tables(run, into, entry.manifest)
  for _, item in ipairs(results) do
    if not item.ok then
      differences = differences + 1
      say("DIFFERS %s: %s", item.table, item.reason)
    end
  end
  say("compare: %d of %d tables match the backup", #results - differences, #results)
end
if differences > 0 then
  if into ~= target then
    abandon(cli.EXIT_INTEGRITY, "restore: %d tables differ from the backup; %s left as it was", differences, target)
  end
  if created then created:keep() end
  cli.fail(cli.EXIT_INTEGRITY, "restore: %d tables differ from the backup (kept for inspection: %s)", differences, into)
end

-- 4b. --replace: swap the new database in, keep the old one
if into ~= target then
  local active = restore.active_connections(run.conn, target)
  if active > 0 and not options.force then
    abandon(cli.EXIT_FAILED, "restore: %s gained %d connection(s) during the restore; nothing swapped", target, active)
  end
  local old = restore.derived_name(target, "_before_" .. stamp)
  if options.force then
    run.conn:query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
      target)
    for _ = 1, 50 do
      if restore.active_connections(run.conn, target) == 0 then break end
      if not bkr.sleep(0.1) then break end
    end
  end
  -- Both renames in one transaction: either the new database is in place, or nothing changed.
  -- Interrupted, the guard drops INTO by name: after a committed swap no database has that name.
  local id = function(name) return run.conn:escape_identifier(name) end
  local swap, err = run.conn:exec("alter database " .. id(target) .. " rename to " .. id(old) .. "; "
    .. "alter database " .. id(into) .. " rename to " .. id(target))
  if not swap then
    abandon(cli.EXIT_FAILED, "restore: could not swap the databases (%s left as it was): %s", target, err)
  end
  created:keep()
  say("replace: %s is the restored database; the previous one is kept as %s (drop it when done)", target, old)
end
if created then created:keep() end

say("done:    %s restored from %s in %.1f s (RTO)", target, entry.file, bkr.monotonic() - clock_start)
run.conn:close()
return cli.EXIT_OK
