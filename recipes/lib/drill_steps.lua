-- The steps of a recovery drill, each a named function, run in `steps.order` for every
-- database. An integrator changes the drill per customer by listing other names in the
-- configuration (drill.steps), or by shadowing this file (BKR_RECIPE_PATH/lib/drill_steps.lua)
-- to add steps, e.g. an application check. docs/drill.md has an example.
--
-- A step is function(drill, db) -> true [, detail] | nil, reason. `drill` holds the run
-- (cfg, run, stamp, targets); `db` holds this database's state (name, backup, scratch,
-- restored, tables, started, ...). A failed step stops the database's drill; the scratch
-- database is dropped whatever happens (steps.cleanup). A drill passes only when a step set
-- db.restored and one set db.tables (restore_scratch and compare_tables do).
local cli = require "lib.cli"
local repo = require "lib.repo"
local restore = require "lib.restore"
local remote = require "lib.remote"

local steps = {}

steps.order = { "pick_backup", "verify_backup", "restore_scratch", "compare_tables", "smoke_queries", "measure" }

-- The newest backup of the database (drill.repository: a directory or a bucket).
function steps.pick_backup(drill, db)
  local backups = drill.repository.scan({ db = { db.name } })
  if #backups == 0 then return nil, "no backup of " .. db.name .. " in " .. drill.repo end
  db.backup = backups[1]
  return true, db.backup.type .. "/" .. db.backup.file
end

-- Checksum against the sidecar and the manifest, before anything is restored. In a bucket,
-- the sidecar and the manifest must agree here; the object's SHA-256 is checked as it streams
-- into the scratch database (restore_scratch), before anything is committed.
function steps.verify_backup(drill, db)
  local problem, unchecked = restore.check_backup(db.backup)
  if problem then
    -- a bucket that could not be read says nothing about the backup
    db.integrity_failed = not unchecked
    return nil, problem
  end
  if db.backup.remote then return true, "the sidecar and the manifest agree; the SHA-256 is checked as it streams" end
  return true, "SHA-256 matches the sidecar and the manifest"
end

local function scratch_name(drill, name)
  local safe = name:lower():gsub("[^%w_]", "_"):sub(1, 30)
  return string.format("bkr_drill_%s_%s", safe, drill.stamp)
end

-- A scratch database with the backup's encoding and locale, the dump streamed into it in one
-- transaction, the recorded database properties re-applied. db.scratch_guard drops the
-- scratch database whatever happens (steps.cleanup, or the drill unwinding past it).
function steps.restore_scratch(drill, db)
  db.scratch = scratch_name(drill, db.name)
  db.scratch_guard = restore.new_database(drill.run.conn, db.scratch, {
    label = "drill",
    on_leftover = function(name, reason)
      repo.log(drill.repo, { recipe = "drill", event = "cleanup failed", database = name, result = "failed",
        error = reason, command = restore.drop_command(name) })
    end,
  })
  local ok, err = db.scratch_guard:create(db.backup.manifest.database_properties)
  if not ok then
    db.scratch, db.scratch_guard = nil, nil
    return nil, err
  end
  local done, result = pcall(restore.stream_into, drill.run, db.backup, db.scratch)
  if not done then
    -- the backup's own bytes are bad (its SHA-256 as it streamed from a bucket, its size, its
    -- completion marker, a chunk or the gzip or zstd stream): an integrity failure, as
    -- verify_backup's; a bucket that failed its side of the transfer is not one
    if repo.DAMAGE_KINDS[cli.kind(result)] and not remote.transfer_failed(result) and not bkr.interrupted() then
      db.integrity_failed = true
    end
    return nil, cli.detail(result)
  end
  local warnings = restore.apply_properties(drill.run.conn, db.scratch, db.backup.manifest.database_properties,
    drill.run.key, db.backup.encrypted)
  db.warnings = warnings
  db.restored = true
  -- a custom-format backup is restored by pg_restore from its archive, not as SQL
  local what = result.jobs and "archive" or "of SQL"
  return true, string.format("%s %s into %s in %.1f s", cli.size(result.sql_bytes or result.bytes_out), what, db.scratch,
    result.elapsed)
end

-- Every table's row count and digest against the manifest.
function steps.compare_tables(drill, db)
  local results, err = restore.compare_tables(drill.run, db.scratch, db.backup.manifest)
  if not results then return false, err end
  db.tables = results
  local bad = {}
  for _, item in ipairs(results) do
    if not item.ok then bad[#bad + 1] = item.table .. ": " .. item.reason end
  end
  if #bad > 0 then
    db.integrity_failed = true
    return nil, table.concat(bad, "; ")
  end
  return true, cli.plural(#results, "table matches", "tables match")
end

-- The configured smoke queries (drill.smoke_queries): each must run and return a row whose
-- first value is true or a non-zero number (`select count(*) > 0 from invoices`,
-- `select count(*) from invoices`). NULL, false, 0 and text fail: say what "works" means.
-- drill.smoke_queries is a list for every database, or a mapping from database name to its own.
-- Every query runs, so the report shows each one with its result (db.smoke_queries).
function steps.smoke_queries(drill, db)
  local configured = drill.cfg.drill and drill.cfg.drill.smoke_queries or {}
  local queries = configured[1] ~= nil and configured or configured[db.name] or {}
  if #queries == 0 then return true, "none configured" end
  local postgres = require "lib.postgres"
  local conn <close> = postgres.connect(drill.cfg, db.scratch)
  db.smoke_queries = {}
  local failures = {}
  for _, sql in ipairs(queries) do
    local record = { query = sql, result = "passed" }
    local rows, columns = conn:query(sql)
    local first = rows and rows[1] and rows[1][columns[1]]
    if not rows then
      record.result, record.detail = "failed", columns
    elseif not (first == true or (type(first) == "number" and first ~= 0)) then
      record.result = "failed"
      record.detail = string.format("returned %s, not true or a non-zero number",
        first == nil and "no row" or first == restore.null and "NULL" or tostring(first))
    else
      record.detail = "returned " .. tostring(first)
    end
    db.smoke_queries[#db.smoke_queries + 1] = record
    if record.result == "failed" then failures[#failures + 1] = sql .. ": " .. record.detail end
  end
  if #failures > 0 then return nil, table.concat(failures, "; ") end
  return true, cli.plural(#queries, "query", "queries") .. " passed"
end

-- RTO: from the start of this database's drill to a usable, checked database.
-- RPO: the age of the backup. Both against the configured targets.
function steps.measure(drill, db)
  db.rto_seconds = math.floor((bkr.monotonic() - db.started) * 10 + 0.5) / 10
  db.rpo_seconds = os.time() - db.backup.time
  local problems = {}
  if db.rto_seconds > drill.targets.rto_seconds then
    problems[#problems + 1] = string.format("RTO %.1f s exceeds the target %d s", db.rto_seconds, drill.targets.rto_seconds)
  end
  if db.rpo_seconds > drill.targets.rpo_seconds then
    problems[#problems + 1] = string.format("RPO %d s exceeds the target %d s (the newest backup is too old)",
      db.rpo_seconds, drill.targets.rpo_seconds)
  end
  if #problems > 0 then return nil, table.concat(problems, "; ") end
  return true, string.format("RTO %.1f s (target %d s), RPO %d s (target %d s)", db.rto_seconds,
    drill.targets.rto_seconds, db.rpo_seconds, drill.targets.rpo_seconds)
end

-- Always run last, whatever failed, after an interrupt too: no scratch database is left behind.
-- A drop that fails says what is left and the command that removes it.
function steps.cleanup(drill, db)
  if not db.scratch_guard then return true, "nothing to drop" end
  return db.scratch_guard:drop()
end

return steps
