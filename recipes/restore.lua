-- Restore a database from a backup: choose, verify, stream into a transaction, compare tables
--
-- The runbook: the steps below, run in order by the last section of this file.
--   choose_backup         the newest, the one taken at a time, the newest before a time, or a file;
--                         from a directory or, read in place, a bucket (s3://BUCKET/PREFIX)
--   verify_backup         sidecar, manifest, SHA-256, before anything touches the target (from a
--                         bucket: sidecar and manifest here, the SHA-256 as the bytes stream in)
--   connect, check_key, check_target
--                         the server, the key of an encrypted backup, whether TARGET may be used
--   restore_globals       with --globals, the roles of the same run first
--   guard_new_database, create_database
--                         --create, --replace: the database this run creates, dropped again
--                         unless it ends up holding the checked restore
--   stream_into_database  file (or object -> SHA-256) -> (decrypt) -> gunzip or zstd -> psql
--                         --single-transaction into (a custom-format archive: pg_restore -j N,
--                         downloaded or decrypted first to a private temporary file when it is
--                         in a bucket or encrypted: lib/restore.lua's with_archive):
--        --create   a new database TARGET (fails if it exists)
--        --replace  a new temporary database, renamed over TARGET only once it is complete and
--                   checked; the old one is kept as TARGET_before_<time>
--        neither    the existing database TARGET
--   apply_properties      the database's recorded settings, owner and privileges
--   compare_tables        every table against the manifest (row count and digest)
--   swap_in               --replace: the new database takes TARGET's name, the old one is kept
--   report                what was done and how long it took (the RTO)
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local keys = require "lib.keys"
local restore = require "lib.restore"
local codec = require "lib.codec"
local logging = require "lib.logging"
local remote = require "lib.remote"
local store = require "lib.store"

local options = cli.parse({ ... }, {
  name = "restore",
  usage = "bkr restore --db NAME (--latest | --at TIME | --before TIME | FILE) --into TARGET\n"
    .. "                   [--create | --replace] [--globals] [--dry-run] [--force] [--no-compare] [--jobs N]\n"
    .. "                   [--repo DIR|s3://BUCKET/PREFIX] [--config FILE] [--key-file K]",
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
    { "--jobs", "N", "parallel pg_restore jobs for a custom-format backup (default: threads, else the online cores)" },
    { "--repo", "REPO", "DIR|s3://BUCKET/PREFIX: a directory, or object storage read in place (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
    { "--key-file", "FILE", "key for encrypted backups (overrides encryption.key_file)" },
  },
  exit_codes = "0 restored and checked, 1 the restore failed (nothing committed), or it was committed\n"
    .. "            but its tables could not be compared (it says so), 2 usage,\n"
    .. "            3 the backup failed verification (target untouched) or the restored tables differ",
  see = "docs/restore.md, docs/RECOVERY_GUIDE.md",
})
if not options then return cli.EXIT_OK end

-- ------------------------------------------------------------------ steps
--
-- Each step reads and fills `job`: options, how, cfg, entry (the backup), run (connection,
-- key, psql), target, exists, stamp, into (the database restored into), created (its guard).
-- A step that fails stops the run with cli.fail and its exit code.

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
  if options.jobs and not (tostring(options.jobs):match("^%d+$") and tonumber(options.jobs) >= 1
      and tonumber(options.jobs) <= 256) then
    cli.usage_error("restore: --jobs must be a whole number from 1 to 256")
  end
  return { at = options.at, before = options.before, file = file, latest = options.latest }
end

local function describe(entry)
  local state = repo.verified(entry) or "never verified"
  local when = entry.manifest and entry.manifest.verification and entry.manifest.verification.time
  return string.format("%s/%s (%s, taken %s, verified: %s%s)", entry.type, entry.file,
    entry.stored_bytes and cli.size(entry.stored_bytes) or "?", repo.iso_time(entry.time), state,
    when and (" at " .. when) or "")
end

-- Stop with a message that says what became of the database this run created.
local function abandon(job, code, fmt, ...)
  local message = string.format(fmt, ...)
  if job.created then
    local _, said = job.created:drop()
    message = message .. "; " .. said
  end
  cli.fail(code, "%s", message)
end

-- The backup: by --latest, --at, --before or FILE; a FILE must be a backup of --db, if given.
-- The repository is a directory or a bucket (lib/store.lua); a FILE is local.
local function choose_backup(job)
  local options, how = job.options, job.how
  local repository = not how.file and store.open(job.cfg, config.repository(job.cfg))
  local entry = restore.choose(repository, options.db or "", how)
  -- a file bkr may not read is a permission problem (exit 1, with the fix), not damage
  if not entry.remote then repo.require_readable(entry) end
  if how.file and not options.db then options.db = entry.database end
  if entry.database ~= options.db then
    cli.usage_error("restore: %s is a backup of %s, not %s", entry.file, entry.database, options.db)
  end
  job.entry = entry
  logging.step("choose_backup", { database = entry.database, file = entry.type .. "/" .. entry.file })
  cli.say("backup:  %s", describe(entry))
  -- bkr verify found this backup damaged (its bytes, not the environment: verify records only
  -- that): it is not restored; an earlier one is chosen with --before (or verify it again)
  if repo.verified(entry) == "failed" and not options.dry_run then
    cli.fail(cli.EXIT_INTEGRITY, "restore: %s failed verification%s, %s left untouched; restore an earlier one "
      .. "with --before %s, or run bkr verify on it again", entry.file,
      entry.manifest.verification.time and (" at " .. entry.manifest.verification.time) or "",
      options.into or "the target", entry.stamp)
  end
end

-- Its checksum against the sidecar and the manifest, before anything is touched. In a bucket
-- the sidecar and the manifest must agree here, and the object's SHA-256 is checked against
-- them as it streams in (before psql may commit, before pg_restore starts).
local function verify_backup(job)
  local problem, unchecked = restore.check_backup(job.entry)
  if unchecked then
    -- the bucket refused or could not be reached: nothing is known about the backup
    cli.fail(cli.EXIT_FAILED, "restore: cannot check %s, %s left untouched: %s", job.entry.file, job.options.into,
      problem)
  end
  if problem then
    cli.fail(cli.EXIT_INTEGRITY, "restore: %s failed verification, %s left untouched: %s", job.entry.file,
      job.options.into, problem)
  end
  logging.step("verify_backup", { result = "passed" })
  if job.entry.remote then
    cli.say("verify:  sidecar and manifest agree; the SHA-256 is checked as the backup streams from the bucket")
  else
    cli.say("verify:  checksum matches the sidecar and the manifest")
  end
end

-- The server, psql, and the key.
local function connect(job)
  job.run = restore.prepare(job.cfg, (keys.load(job.cfg, job.options)))
  job.run.jobs = job.options.jobs and tonumber(job.options.jobs)
  job.target = job.options.into
  logging.step("connect", { target = job.target })
end

-- An encrypted backup needs a key, and the one it was encrypted with.
local function check_key(job)
  local entry = job.entry
  if not entry.encrypted then return end
  if not job.run.key then
    cli.usage_error("restore: %s is encrypted: give --key-file FILE or set encryption.key_file", entry.file)
  end
  local wanted = entry.manifest.encryption and entry.manifest.encryption.key_id
  local given = require("bkr.crypto").key_id(job.run.key)
  if wanted and wanted ~= given then
    cli.fail(cli.EXIT_INTEGRITY, "restore: %s was encrypted with key %s, the key given is %s; %s left untouched",
      entry.file, wanted, given, job.target)
  end
end

-- TARGET exists or not as the options say, and nobody is connected to it (unless --force).
local function check_target(job)
  local options, conn, target = job.options, job.run.conn, job.target
  local current = conn:query("select current_database() as name")[1].name
  if options.replace and target == current then
    cli.usage_error("restore: cannot --replace %s: bkr itself is connected to it; set connection.dbname "
      .. "(or PGDATABASE) to another database, such as template1", target)
  end
  job.exists = restore.database_exists(conn, target)
  if options.create and job.exists then
    cli.fail(cli.EXIT_FAILED, "restore: database %s already exists (--create)", target)
  end
  if not options.create and not options.replace and not job.exists then
    cli.fail(cli.EXIT_FAILED, "restore: database %s does not exist: add --create (or --replace)", target)
  end
  if job.exists and not options.force then
    local active = restore.active_connections(conn, target)
    if active > 0 then
      cli.fail(cli.EXIT_FAILED, "restore: database %s has %s; stop the application or add --force",
        target, cli.plural(active, "active connection", "active connections"))
    end
  end
end

-- --globals: the roles of the same run, before the database that may need them.
local function restore_globals(job)
  if not job.options.globals then return end
  local result, err = restore.globals(job.run, job.entry)
  if not result then cli.fail(cli.EXIT_FAILED, "restore: globals: %s", tostring(err)) end
  if #result.existing > 0 then cli.say("globals: existing roles kept: %s", table.concat(result.existing, ", ")) end
  for _, line in ipairs(result.errors) do cli.report("globals: %s", line) end
  logging.step("restore_globals", { existing_roles = #result.existing, errors = #result.errors })
  cli.say("globals: restored")
end

-- Which database the stream goes into, and, when this run creates it, its guard: returned for
-- the caller to hold as a to-be-closed variable, so that the database goes again on a failure,
-- an error or an interrupt. A drop that fails is said (with the command that removes it) and
-- logged in the repository's bkr.log (a bucket keeps none: logging.file, if set, gets it).
local function guard_new_database(job)
  local options, entry = job.options, job.entry
  job.stamp = repo.stamp(job.started)
  job.into = job.target
  if options.replace and job.exists then job.into = restore.derived_name(job.target, "_bkr_restore_" .. job.stamp) end
  if not (options.create or options.replace) then return nil end
  local repository = entry.repo -- the directory, or the URL (never taken for a directory)
  job.created = restore.new_database(job.run.conn, job.into, {
    label = "restore",
    on_leftover = function(name, reason)
      repo.log(repository, { recipe = "restore", event = "cleanup failed", database = name, result = "failed",
        error = reason, command = restore.drop_command(name) })
    end,
  })
  return job.created
end

-- CREATE DATABASE with the backup's encoding and locale.
local function create_database(job)
  if not job.created then return end
  local ok, err = job.created:create(job.entry.manifest.database_properties)
  if not ok then cli.fail(cli.EXIT_FAILED, "restore: cannot create database %s: %s", job.into, err) end
end

-- The backup into the database, in one transaction: all of it or nothing.
local function stream_into_database(job)
  local ok, result = pcall(restore.stream_into, job.run, job.entry, job.into)
  if not ok then
    -- the backup's own bytes are bad (a size or completion marker that is not the manifest's,
    -- corrupt data): stopped before psql could commit, or before pg_restore started
    -- (a bucket that failed its side of the transfer says nothing about the bytes)
    local from_store = remote.transfer_failed(result)
    if repo.DAMAGE_KINDS[cli.kind(result)] and not from_store and not bkr.interrupted() then
      abandon(job, cli.EXIT_INTEGRITY, "restore: %s failed verification while restoring, nothing was committed: %s",
        job.entry.file, cli.detail(result))
    end
    -- pg_restore with several jobs commits as it goes: only a database this run made (and
    -- drops again) is sure to hold nothing of it
    local parallel = codec.for_entry(job.entry).dump_format == "custom" and restore.jobs(job.run) > 1
    if parallel and not job.created and not from_store then
      abandon(job, cli.EXIT_FAILED, "restore: failed; pg_restore -j %d may have left part of the backup in %s: %s",
        restore.jobs(job.run), job.into, cli.detail(result))
    end
    abandon(job, cli.EXIT_FAILED, "restore: failed, nothing was committed: %s", cli.detail(result))
  end
  logging.step("stream_into_database", { into = job.into, bytes = result.bytes_out, seconds = result.elapsed,
    jobs = result.jobs })
  if result.jobs then
    cli.say("restore: %s archive into %s with pg_restore -j %d in %.1f s", cli.size(result.bytes_out), job.into,
      result.jobs, result.elapsed)
  else
    cli.say("restore: %s of SQL into %s in %.1f s", cli.size(result.sql_bytes), job.into, result.elapsed)
  end
end

-- What a dump without --create leaves out: settings, owner, privileges. What cannot be
-- applied is a warning.
local function apply_properties(job)
  for _, warning in ipairs(restore.apply_properties(job.run.conn, job.into, job.entry.manifest.database_properties,
      job.run.key, job.entry.encrypted)) do
    cli.report("warning: %s", warning)
  end
end

-- Every table's row count and digest against the manifest. A difference stops the run
-- (exit 3): --replace leaves TARGET as it was; otherwise the database is kept for inspection.
local function compare_tables(job)
  if job.options.no_compare then return end
  local differences = 0
  local results, err = restore.compare_tables(job.run, job.into, job.entry.manifest)
  if not results then
    -- The data is committed; only its check could not run. --replace leaves TARGET as it was
    -- (an unchecked database is not swapped in); otherwise the restored database stays, and
    -- the message says it is there, unchecked.
    logging.step("compare_tables", { result = "failed", error = err })
    if job.into ~= job.target then
      abandon(job, cli.EXIT_FAILED, "restore: %s; %s left as it was", err, job.target)
    end
    if job.created then job.created:keep() end
    cli.fail(cli.EXIT_FAILED, "restore: %s was restored and committed, but its tables could not be compared "
      .. "with the backup (%s); compare again with: bkr drill, or restore once more", job.into, err)
  end
  for _, item in ipairs(results) do
    if not item.ok then
      differences = differences + 1
      cli.report("DIFFERS %s: %s", item.table, item.reason)
    end
  end
  cli.say("compare: %d of %d tables match the backup", #results - differences, #results)
  logging.step("compare_tables", { tables = #results, differences = differences, level = differences > 0 and "error" or nil })
  if differences > 0 then
    if job.into ~= job.target then
      abandon(job, cli.EXIT_INTEGRITY, "restore: %s from the backup; %s left as it was",
        cli.plural(differences, "table differs", "tables differ"), job.target)
    end
    if job.created then job.created:keep() end
    cli.fail(cli.EXIT_INTEGRITY, "restore: %s from the backup (kept for inspection: %s)",
      cli.plural(differences, "table differs", "tables differ"), job.into)
  end
end

-- --replace: the new database takes TARGET's name; the old one is kept as TARGET_before_<time>.
local function swap_in(job)
  local options, conn, target, into = job.options, job.run.conn, job.target, job.into
  if into == target then return end
  local active = restore.active_connections(conn, target)
  if active > 0 and not options.force then
    abandon(job, cli.EXIT_FAILED, "restore: %s gained %s during the restore; nothing swapped", target,
      cli.plural(active, "connection", "connections"))
  end
  local old = restore.derived_name(target, "_before_" .. job.stamp)
  if options.force then
    conn:query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
      target)
    for _ = 1, 50 do
      if restore.active_connections(conn, target) == 0 then break end
      if not bkr.sleep(0.1) then break end
    end
  end
  -- Both renames in one transaction: either the new database is in place, or nothing changed.
  -- Interrupted, the guard drops INTO by name: after a committed swap no database has that name.
  local id = function(name) return conn:escape_identifier(name) end
  local swap, err = conn:exec("alter database " .. id(target) .. " rename to " .. id(old) .. "; "
    .. "alter database " .. id(into) .. " rename to " .. id(target))
  if not swap then
    abandon(job, cli.EXIT_FAILED, "restore: could not swap the databases (%s left as it was): %s", target, err)
  end
  job.created:keep()
  logging.step("swap_in", { target = target, previous = old })
  cli.say("replace: %s is the restored database; the previous one is kept as %s (drop it when done)", target, old)
end

-- What was restored, and the time from the check to a usable, checked database (the RTO).
local function report(job)
  logging.step("report", { target = job.target, file = job.entry.file, rto_seconds = bkr.monotonic() - job.clock_start })
  cli.say("done:    %s restored from %s in %.1f s (RTO)", job.target, job.entry.file, bkr.monotonic() - job.clock_start)
  job.run.conn:close()
end

-- ------------------------------------------------------------------ the run

local job = { options = options, how = check_arguments() }
job.cfg = config.load(options, { remote = true })
logging.start()
choose_backup(job)
if options.dry_run then return cli.EXIT_OK end

job.started, job.clock_start = os.time(), bkr.monotonic() -- the RTO counts from here
verify_backup(job)
connect(job)
check_key(job)
check_target(job)
restore_globals(job)
local created <close> = guard_new_database(job)
create_database(job)
stream_into_database(job)
apply_properties(job)
compare_tables(job)
swap_in(job)
if created then created:keep() end -- it holds the checked restore: it stays
report(job)
return cli.EXIT_OK
